//! The mount's writable `restore/` folder, for real: `cp -a`, `rsync -a`, `mv`, `rm -r` and
//! system calls through a FUSE mount's `restore/` (a link to the staging folder), checked
//! against the staging folder on disk and across unmounts, a killed daemon and remounts.

mod common;

use common::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn backed_up_phone(s: &Scratch) -> std::path::PathBuf {
    let phone = s.path("phone");
    sample_phone(&phone);
    // mtimes from an earlier second, as on a real phone: rsync does not fix a folder's or a
    // symlink's mtime that is in the same second as the moment it made it (its protocol's
    // one-second rounding), on any destination.
    let found =
        Command::new("find").arg(&phone).args(["-mindepth", "1", "-newermt", "-1 hour", "-print0"]).output().unwrap();
    for (i, path) in found.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()).enumerate() {
        set_mtime(Path::new(std::ffi::OsStr::from_bytes(path)), 1_700_000_000 + i as i64, 1000 * i as i64 + 7);
    }
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    phone
}

fn run(program: &str, args: &[&Path]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// `restore/` is a link to the staging folder: copies land on the local disk, and nothing the
/// daemon does (or a kill of it) can lose them. `cp -a` and `rsync -a` follow the link whether
/// or not the destination ends with a slash.
#[test]
fn cp_a_and_rsync_a_into_restore_survive_unmount_a_killed_daemon_and_remount() {
    let s = Scratch::with_repo();
    let phone = backed_up_phone(&s);
    let m = Mounted::new(&s, &[]);
    let staging = s.staging();
    assert_eq!(std::fs::read_link(m.restore()).unwrap(), staging.canonicalize().unwrap());
    let latest = m.snapshots().join("pixel/latest");
    run("cp", &[Path::new("-a"), &latest.join("DCIM"), &m.restore()]);
    run("rsync", &[Path::new("-a"), &latest.join("Documents"), &m.restore().join("docs-by-rsync")]);
    run("rsync", &[Path::new("-a"), &latest.join("."), &m.restore().join("whole")]);
    run("rsync", &[Path::new("-a"), &latest.join("Android"), &m.restore()]);
    let check = |restore: &Path| {
        assert_same_tree(&phone.join("DCIM"), &restore.join("DCIM"));
        assert_same_tree(&phone.join("Documents"), &restore.join("docs-by-rsync/Documents"));
        assert_same_tree(&phone, &restore.join("whole"));
        assert_same_tree(&phone.join("Android"), &restore.join("Android"));
    };
    check(&m.restore());
    // What is staged is plain files in the repository's staging folder, mode 0700.
    check(&staging);
    assert_eq!(std::fs::metadata(&staging).unwrap().mode() & 0o777, 0o700);
    drop(m);

    let m = Mounted::new(&s, &[]);
    check(&m.restore());
    let daemon = processes_mentioning(&m.point)[0];
    run("kill", &[Path::new("-KILL"), Path::new(&daemon.to_string())]);
    wait_until("the daemon to die", || processes_mentioning(&m.point).is_empty());
    // The dead mount is still there unless fuse's own helper already removed it.
    let _ = Command::new("fusermount3").arg("-u").arg(&m.point).status();
    let m = Mounted::new(&s, &[]);
    check(&m.restore());
    // The repository itself is untouched by staging.
    s.ok(&["check", "--read-data"]);
}

#[test]
fn restore_behaves_like_a_local_folder() {
    let s = Scratch::with_repo();
    backed_up_phone(&s);
    let m = Mounted::new(&s, &[]);
    let r = m.restore();

    // mkdir -p, rename of a folder with contents, rename over an existing file.
    std::fs::create_dir_all(r.join("a/b/c")).unwrap();
    std::fs::write(r.join("a/b/c/f.txt"), b"first").unwrap();
    std::fs::rename(r.join("a/b"), r.join("moved")).unwrap();
    assert_eq!(std::fs::read(r.join("moved/c/f.txt")).unwrap(), b"first");
    assert!(!r.join("a/b").exists());
    std::fs::write(r.join("other.txt"), b"other").unwrap();
    std::fs::rename(r.join("other.txt"), r.join("moved/c/f.txt")).unwrap();
    assert_eq!(std::fs::read(r.join("moved/c/f.txt")).unwrap(), b"other");
    assert!(!r.join("other.txt").exists());

    // Overwrite with shorter content, truncate up and down, write past the end.
    let f = r.join("moved/c/f.txt");
    std::fs::write(&f, b"xy").unwrap();
    assert_eq!(std::fs::read(&f).unwrap(), b"xy");
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(10_000).unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 10_000);
    file.set_len(1).unwrap();
    file.write_all_at(b"z", 5).unwrap();
    drop(file);
    assert_eq!(std::fs::read(&f).unwrap(), b"x\0\0\0\0z");
    let mut appending = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
    appending.write_all(b"!").unwrap();
    drop(appending);
    assert_eq!(std::fs::read(&f).unwrap(), b"x\0\0\0\0z!");

    // chmod, utimens with nanoseconds, symlinks, hard links.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    set_mtime(&f, 1_234_567_890, 987_654_321);
    let meta = std::fs::metadata(&f).unwrap();
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_234_567_890, 987_654_321));
    std::os::unix::fs::symlink("c/f.txt", r.join("moved/link")).unwrap();
    assert_eq!(std::fs::read_link(r.join("moved/link")).unwrap(), Path::new("c/f.txt"));
    assert_eq!(std::fs::read(r.join("moved/link")).unwrap(), b"x\0\0\0\0z!");
    std::fs::hard_link(&f, r.join("hard")).unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().nlink(), 2);
    assert_eq!(std::fs::metadata(r.join("hard")).unwrap().ino(), std::fs::metadata(&f).unwrap().ino());

    // An unlinked file stays readable and writable while open.
    let mut open =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(r.join("tmp")).unwrap();
    open.write_all(b"still here").unwrap();
    std::fs::remove_file(r.join("tmp")).unwrap();
    assert!(!r.join("tmp").exists());
    open.write_all(b"!").unwrap();
    open.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    open.read_to_string(&mut back).unwrap();
    assert_eq!(back, "still here!");

    // Not allowed: renaming out of restore/, linking a snapshot's file, an existing name.
    let photo = m.snapshots().join("pixel/latest/DCIM/Camera/IMG_0001.jpg");
    let out = std::fs::rename(&f, m.snapshots().join("pixel/latest/f.txt")).unwrap_err();
    assert_eq!(out.raw_os_error(), Some(libc::EXDEV));
    assert_eq!(std::fs::hard_link(&photo, r.join("photo")).unwrap_err().raw_os_error(), Some(libc::EXDEV));
    assert_eq!(std::fs::create_dir(r.join("moved")).unwrap_err().raw_os_error(), Some(libc::EEXIST));
    assert_eq!(std::fs::remove_dir(r.join("moved")).unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));

    // rm -r, and the listing agrees with the staging folder at every step.
    assert_eq!(names(&r), names(&s.staging()));
    run("rm", &[Path::new("-r"), &r.join("moved"), &r.join("a")]);
    assert_eq!(names(&r), ["hard"]);
    assert_eq!(names(&s.staging()), ["hard"]);

    // A folder of many files lists whole across several requests, and rm -r empties it.
    for i in 0..3000 {
        std::fs::write(r.join(format!("many/{i:05}-with-a-rather-long-name-to-fill-buffers")).as_path(), b"x")
            .or_else(|_| {
                std::fs::create_dir(r.join("many"))?;
                std::fs::write(r.join(format!("many/{i:05}-with-a-rather-long-name-to-fill-buffers")), b"x")
            })
            .unwrap();
    }
    assert_eq!(names(&r.join("many")).len(), 3000);
    let found = Command::new("find").arg(r.join("many")).arg("-type").arg("f").output().unwrap();
    assert_eq!(found.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(), 3000);
    run("rm", &[Path::new("-r"), &r.join("many")]);
    assert!(!s.staging().join("many").exists());

    // Free space of restore/ is the staging folder's disk.
    let df = Command::new("df").arg("--output=avail").arg(&r).output().unwrap();
    assert!(df.status.success());
}

#[test]
fn concurrent_writers_each_get_their_bytes() {
    let s = Scratch::with_repo();
    backed_up_phone(&s);
    let m = Mounted::new(&s, &[]);
    let r = m.restore();
    std::fs::create_dir(r.join("shared")).unwrap();
    let big = std::fs::File::create(r.join("shared/big.bin")).unwrap();
    big.set_len(8 << 20).unwrap();
    std::thread::scope(|scope| {
        for writer in 0..8u64 {
            let r = &r;
            scope.spawn(move || {
                for i in 0..20u64 {
                    let data = bytes(writer * 100 + i, 1000 + (i as usize * 37_123) % 400_000, false);
                    std::fs::write(r.join(format!("shared/w{writer}-{i}")), &data).unwrap();
                }
                // Each writer fills its own 1 MiB region of one shared file.
                let file = std::fs::OpenOptions::new().write(true).open(r.join("shared/big.bin")).unwrap();
                file.write_all_at(&bytes(1000 + writer, 1 << 20, false), writer << 20).unwrap();
            });
        }
    });
    let staged = s.staging().join("shared");
    for writer in 0..8u64 {
        for i in 0..20u64 {
            let want = bytes(writer * 100 + i, 1000 + (i as usize * 37_123) % 400_000, false);
            assert_eq!(std::fs::read(r.join(format!("shared/w{writer}-{i}"))).unwrap(), want);
            assert_eq!(std::fs::read(staged.join(format!("w{writer}-{i}"))).unwrap(), want);
        }
    }
    let big = std::fs::read(staged.join("big.bin")).unwrap();
    for writer in 0..8u64 {
        let region = &big[(writer << 20) as usize..((writer + 1) << 20) as usize];
        assert!(region == bytes(1000 + writer, 1 << 20, false), "region {writer}");
    }
}

#[test]
fn staging_folder_option_and_a_read_only_mount() {
    let s = Scratch::with_repo();
    backed_up_phone(&s);
    let elsewhere = s.path("elsewhere/staged");
    let option = format!("staging={}", elsewhere.display());
    let m = Mounted::new(&s, &["-o", &option]);
    std::fs::write(m.restore().join("kept.txt"), b"kept").unwrap();
    assert_eq!(std::fs::read(elsewhere.join("kept.txt")).unwrap(), b"kept");
    assert!(!s.staging().exists(), "the default staging folder is not made");
    drop(m);

    // `ro`: nothing in the mount leads to a writable folder, so there is no restore/.
    let m = Mounted::new(&s, &["-o", &format!("ro,{option}")]);
    assert!(std::fs::symlink_metadata(m.restore()).is_err());
    assert_eq!(names(&m.point), ["snapshots"]);
    drop(m);

    // A staging folder that cannot be used is an error before mounting.
    std::fs::write(s.path("a-file"), b"").unwrap();
    let point = s.path("mnt");
    let out = s.run(&["mount", point.to_str().unwrap(), "-o", &format!("staging={}", s.path("a-file").display())]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("staging folder"), "{}", stderr(&out));
}
