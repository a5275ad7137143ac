//! `mount.phonebak REPO MOUNTPOINT [-o OPTIONS]`: what mount(8) runs for `mount -t phonebak`
//! and fstab lines. It turns mount(8)'s arguments into `phonebak mount`. Cargo cannot name a
//! binary with a dot: it is built as `mount_phonebak` and installed as `/sbin/mount.phonebak`
//! by `scripts/install.sh`.

use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut positional: Vec<OsString> = Vec::new();
    let mut options: Vec<OsString> = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-o") => options.extend(args.next()),
            Some(joined) if joined.starts_with("-o") => options.push(joined[2..].into()),
            Some("-t") | Some("-N") => {
                args.next(); // the type (always phonebak) and a namespace: nothing to do
            }
            // mount(8)'s sloppy, fake, no-mtab and verbose flags change nothing here.
            Some(flag) if flag.starts_with('-') && flag.len() > 1 => {}
            _ => positional.push(arg),
        }
    }
    if positional.len() != 2 {
        phonebak::tell!("usage: mount.phonebak REPOSITORY MOUNTPOINT [-o OPTIONS]");
        return ExitCode::from(2);
    }
    let mut command: Vec<OsString> = vec!["phonebak".into(), "mount".into(), "--repo".into(), positional.remove(0)];
    command.push(positional.remove(0));
    for list in options {
        command.push("-o".into());
        command.push(list);
    }
    phonebak::cli::main_with_args(command)
}
