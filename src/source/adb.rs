//! `adb[:SERIAL][:/PATH]`: a live phone over USB debugging (PATH is /sdcard unless given).
//!
//! The whole tree is listed by one shell command on the phone (its toybox or busybox `find`
//! and `stat`). The files the engine wants (new, or changed since the device's last snapshot)
//! then come in one `tar` stream, from a list of names pushed to the phone first, so the number
//! of adb round trips does not grow with the number of files; the stream goes straight into the
//! chunker, and nothing of the phone is copied to the computer's disk.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Child, Command, Output, Stdio};

use super::archive::TarContent;
use super::{EntrySink, Source, SourceError, SourceKind, StreamEntry};
use crate::archive::tar::{TarKind, TarReader};
use crate::device::adb::{is_gone, parse_spec, quote};
use crate::device::DeviceError;
use crate::tree::Meta;

/// What the listing marks each entry's line with: a name holding a line break goes on over
/// the next lines, which do not start with it.
const TOOLS: [&str; 3] = ["find", "stat", "tar"];

pub struct AdbSource {
    serial: Option<String>,
    root: String,
}

impl AdbSource {
    pub fn open(spec: &str) -> Result<AdbSource, SourceError> {
        let (serial, root) = parse_spec(spec).ok_or_else(|| SourceError::Invalid {
            spec: spec.to_string(),
            why: "an adb source is adb[:SERIAL][:/PATH]".into(),
        })?;
        let root = root.trim_end_matches('/').to_string();
        if !root.starts_with('/') || root.split('/').any(|part| part == "..") {
            return Err(SourceError::Invalid {
                spec: spec.into(),
                why: format!("{root:?} is not an absolute folder on the phone"),
            });
        }
        let source = AdbSource { serial, root };
        source.choose_phone()?;
        Ok(source)
    }

    fn describe_phone(&self) -> String {
        match &self.serial {
            Some(serial) => format!("adb:{serial}:{}", self.root),
            None => format!("adb:{}", self.root),
        }
    }

    fn unavailable(&self, why: impl Into<String>) -> SourceError {
        SourceError::Unavailable { device: self.describe_phone(), why: why.into() }
    }

    fn command(&self, args: &[&[u8]]) -> Command {
        use std::os::unix::ffi::OsStrExt;
        let mut command = Command::new("adb");
        if let Some(serial) = &self.serial {
            command.arg("-s").arg(serial);
        }
        command.args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)));
        command
    }

    fn spawn_error(&self, error: io::Error) -> SourceError {
        match error.kind() {
            io::ErrorKind::NotFound => self.unavailable(DeviceError::AdbMissing.to_string()),
            _ => self.unavailable(format!("cannot run adb: {error}")),
        }
    }

    fn run(&self, args: &[&[u8]]) -> Result<Output, SourceError> {
        self.command(args).stdin(Stdio::null()).output().map_err(|e| self.spawn_error(e))
    }

    /// The error for an adb command that failed: the phone gone, or something else.
    fn failed(&self, doing: &str, output: &Output) -> SourceError {
        let text = format!("{}{}", String::from_utf8_lossy(&output.stderr), String::from_utf8_lossy(&output.stdout));
        let text = text.trim().to_string();
        if is_gone(&text) {
            SourceError::Vanished { source_name: self.describe_phone(), cause: io::Error::other(text) }
        } else {
            self.unavailable(format!("{doing}: {}", if text.is_empty() { "adb failed".into() } else { text }))
        }
    }

    /// Makes sure one phone is meant: the one named, or the only one connected.
    fn choose_phone(&self) -> Result<(), SourceError> {
        let out = self.command(&[b"devices"]).stdin(Stdio::null()).output().map_err(|e| self.spawn_error(e))?;
        if !out.status.success() {
            return Err(self.failed("listing the connected phones", &out));
        }
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        let phones: Vec<(&str, &str)> = listed
            .lines()
            .skip_while(|line| !line.starts_with("List of devices"))
            .skip(1)
            .filter_map(|line| line.split_once(char::is_whitespace))
            .map(|(serial, state)| (serial, state.trim()))
            .collect();
        let serials = || phones.iter().map(|(s, state)| format!("{s} ({state})")).collect::<Vec<_>>().join(", ");
        let state = match &self.serial {
            Some(serial) => match phones.iter().find(|(s, _)| s == serial) {
                Some((_, state)) => *state,
                None if phones.is_empty() => return Err(self.unavailable("no phone is connected")),
                None => return Err(self.unavailable(format!("it is not connected; connected: {}", serials()))),
            },
            None => match phones.as_slice() {
                [] => {
                    return Err(
                        self.unavailable("no phone is connected (is USB debugging on, and the computer allowed?)")
                    )
                }
                [(_, state)] => state,
                _ => {
                    return Err(self.unavailable(format!(
                        "{} phones are connected: say which with adb:SERIAL[:/PATH]; connected: {}",
                        phones.len(),
                        serials()
                    )))
                }
            },
        };
        match state {
            "device" => Ok(()),
            "unauthorized" => {
                Err(self.unavailable("the phone has not allowed this computer: answer its USB debugging prompt"))
            }
            other => Err(self.unavailable(format!("the phone is {other:?}, not ready"))),
        }
    }

    /// Lists everything below the root: the tools missing first, else every entry.
    fn list(&self) -> Result<Listing, SourceError> {
        // The listing's own lines carry a tag made for this run: a file on the phone whose name
        // holds a line break cannot pass for one of them.
        let tag = format!("phonebak-{:016x}", rand::random::<u64>());
        let root = quote(self.root.as_bytes());
        let mut script = b"cd ".to_vec();
        script.extend_from_slice(&root);
        script.extend_from_slice(format!(" || {{ echo {tag}-no-root; exit 0; }}; for t in ").as_bytes());
        script.extend_from_slice(TOOLS.join(" ").as_bytes());
        script.extend_from_slice(
            format!("; do command -v $t >/dev/null 2>&1 || echo {tag}-missing:$t; done; ").as_bytes(),
        );
        script.extend_from_slice(
            format!("find . -exec stat -c '{tag}-entry %f %s %Y %u %g %n' {{}} +; echo {tag}-status:$?").as_bytes(),
        );
        let out = self.run(&[b"shell", &script])?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (status, no_root, missing) =
            (format!("{tag}-status:"), format!("{tag}-no-root"), format!("{tag}-missing:"));
        if !stdout.contains(&status) && !stdout.contains(&no_root) {
            return Err(self.failed("listing the phone", &out));
        }
        if stdout.lines().any(|l| l == no_root) {
            return Err(self.unavailable(format!("the phone has no folder {}", self.root)));
        }
        let missing: Vec<&str> = stdout.lines().filter_map(|l| l.strip_prefix(missing.as_str())).collect();
        if !missing.is_empty() {
            return Err(self.unavailable(format!(
                "the phone's shell has no {} (toybox or busybox provides them)",
                missing.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(parse_listing(&out.stdout, &out.stderr, &tag))
    }

    /// Starts the phone's `tar` on the files in `names` (pushed to the phone as a list).
    fn fetch(&self, names: &[Vec<u8>]) -> Result<Child, SourceError> {
        let id: u64 = rand::random();
        let local = std::env::temp_dir().join(format!("phonebak-adb-list-{id:016x}"));
        let remote = format!("/data/local/tmp/phonebak-list-{id:016x}");
        let written = (|| -> io::Result<()> {
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&local)?;
            for name in names {
                file.write_all(b"./")?;
                file.write_all(name)?;
                file.write_all(b"\n")?;
            }
            Ok(())
        })();
        let pushed = written
            .map_err(|e| SourceError::Scratch { doing: format!("writing {}", local.display()), error: e })
            .and_then(|()| {
                let out = self.run(&[b"push", local.as_os_str().as_encoded_bytes(), remote.as_bytes()])?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(self.failed("sending the list of files to fetch", &out))
                }
            });
        let _ = std::fs::remove_file(&local);
        pushed?;
        // The phone's stderr would be mixed into the stream by `exec-out`: it is dropped, and
        // what does not come is reported by name.
        let mut script = b"cd ".to_vec();
        script.extend_from_slice(&quote(self.root.as_bytes()));
        script.extend_from_slice(b" && tar -cf - -T ");
        script.extend_from_slice(remote.as_bytes());
        script.extend_from_slice(b" 2>/dev/null; rm -f ");
        script.extend_from_slice(remote.as_bytes());
        self.command(&[b"exec-out", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))
    }

    /// The stream broke: the phone is gone (or adb with it).
    fn broken(&self, child: &mut Child, why: String) -> SourceError {
        let _ = child.kill();
        let _ = child.wait();
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        let cause = if stderr.trim().is_empty() { why } else { format!("{why}; adb said: {}", stderr.trim()) };
        SourceError::Vanished { source_name: self.describe_phone(), cause: io::Error::other(cause) }
    }
}

/// One entry of the phone's listing.
struct Listed {
    path: Vec<u8>,
    meta: Meta,
    kind: SourceKind,
}

struct Listing {
    entries: Vec<Listed>,
    /// What `find` could not read (Android keeps other apps' folders from the shell).
    unreadable: Vec<(Vec<u8>, String)>,
}

fn parse_listing(stdout: &[u8], stderr: &[u8], tag: &str) -> Listing {
    let mut entries: Vec<Listed> = Vec::new();
    let stdout = stdout.strip_suffix(b"\n").unwrap_or(stdout);
    let entry = format!("{tag}-entry ");
    for line in stdout.split(|&b| b == b'\n') {
        if let Some(record) = line.strip_prefix(entry.as_bytes()) {
            if let Some(listed) = parse_record(record) {
                entries.push(listed);
            }
        } else if line.starts_with(tag.as_bytes()) {
        } else if let Some(last) = entries.last_mut() {
            // A name with a line break in it.
            last.path.push(b'\n');
            last.path.extend_from_slice(line);
        }
    }
    let unreadable = String::from_utf8_lossy(stderr)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (path, why) = line.strip_prefix("find: ").and_then(|l| l.rsplit_once(": ")).unwrap_or(("", line));
            let path = path.trim_matches(|c| c == '\'' || c == '‘' || c == '’').trim_start_matches("./");
            (path.as_bytes().to_vec(), format!("the phone did not list it: {why}"))
        })
        .collect();
    Listing { entries, unreadable }
}

/// `MODE(hex) SIZE MTIME UID GID ./PATH`
fn parse_record(record: &[u8]) -> Option<Listed> {
    let mut fields = record.splitn(6, |&b| b == b' ');
    let mut number =
        |radix: u32| -> Option<u64> { u64::from_str_radix(std::str::from_utf8(fields.next()?).ok()?, radix).ok() };
    let (mode, size, mtime, uid, gid) = (number(16)?, number(10)?, number(10)?, number(10)?, number(10)?);
    let name = fields.next()?;
    let path = name.strip_prefix(b"./").unwrap_or(if name == b"." { b"" } else { name }).to_vec();
    let kind = match mode & 0o170000 {
        0o040000 => SourceKind::Dir,
        0o100000 => SourceKind::File { size },
        0o120000 => SourceKind::Symlink { target: Vec::new() },
        _ => SourceKind::Special,
    };
    let meta = Meta {
        mode: (mode & 0o7777) as u32,
        uid: u32::try_from(uid).ok()?,
        gid: u32::try_from(gid).ok()?,
        mtime_sec: i64::try_from(mtime).ok()?,
        mtime_nsec: 0,
    };
    Some(Listed { path, meta, kind })
}

impl Source for AdbSource {
    fn describe(&self) -> String {
        self.describe_phone()
    }

    fn facts(&self) -> std::collections::BTreeMap<String, String> {
        let mut facts: std::collections::BTreeMap<String, String> =
            [("kind".to_string(), "adb".to_string()), ("root".to_string(), self.root.clone())].into();
        if let Some(serial) = &self.serial {
            facts.insert("serial".into(), serial.clone());
        }
        facts
    }

    fn send_entries(&self, sink: &mut dyn EntrySink) -> Result<(), SourceError> {
        let listing = self.list()?;
        for (path, why) in listing.unreadable {
            sink.unreadable(&path, why)?;
        }
        let mut left_out: Vec<Vec<u8>> = Vec::new();
        let mut wanted: HashMap<Vec<u8>, Listed> = HashMap::new();
        let mut names = Vec::new();
        for listed in listing.entries {
            if listed.path.is_empty() || left_out.iter().any(|dir| listed.path.starts_with(dir)) {
                continue;
            }
            let entry = StreamEntry {
                path: listed.path.clone(),
                meta: listed.meta.clone(),
                kind: listed.kind.clone(),
                archive_header: None,
            };
            match &listed.kind {
                SourceKind::Dir if !sink.wants_dir(&listed.path) => left_out.push([&listed.path[..], b"/"].concat()),
                SourceKind::File { .. } if sink.wants_content(&entry) => {
                    names.push(listed.path.clone());
                    wanted.insert(listed.path.clone(), listed);
                }
                // A symlink's target comes with the stream.
                SourceKind::Symlink { .. } => {
                    names.push(listed.path.clone());
                    wanted.insert(listed.path.clone(), listed);
                }
                _ => sink.entry(entry, None)?,
            }
        }
        // tar's list holds one name a line.
        let (names, unlisted): (Vec<_>, Vec<_>) = names.into_iter().partition(|n| !n.contains(&b'\n'));
        for name in unlisted {
            wanted.remove(&name);
            sink.unreadable(&name, "a name with a line break, which the phone's tar cannot be asked for".into())?;
        }
        if !names.is_empty() {
            self.receive(&names, &mut wanted, sink)?;
        }
        let mut missing: Vec<_> = wanted.into_keys().collect();
        missing.sort();
        for path in missing {
            sink.unreadable(
                &path,
                "the phone did not send it (unreadable to adb's shell, or gone since it was listed)".into(),
            )?;
        }
        Ok(())
    }
}

impl AdbSource {
    /// Takes the stream of the files asked for, handing each to the engine as it comes.
    fn receive(
        &self,
        names: &[Vec<u8>],
        wanted: &mut HashMap<Vec<u8>, Listed>,
        sink: &mut dyn EntrySink,
    ) -> Result<(), SourceError> {
        let mut child = self.fetch(names)?;
        let stdout = child.stdout.take().expect("piped");
        let mut tar = TarReader::new(BufReader::with_capacity(1 << 20, stdout));
        let spec = self.describe_phone();
        loop {
            let header = match tar.next_entry() {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(e) => return Err(self.broken(&mut child, format!("the transfer stopped: {e}"))),
            };
            let path = header.path.strip_prefix(b"./").unwrap_or(&header.path).to_vec();
            let Some(listed) = wanted.remove(&path) else { continue };
            let sent = match (&header.kind, &listed.kind) {
                (TarKind::File, SourceKind::File { .. }) => {
                    let entry = StreamEntry {
                        path,
                        meta: listed.meta.clone(),
                        kind: SourceKind::File { size: header.size },
                        archive_header: None,
                    };
                    let mtime = (listed.meta.mtime_sec, 0);
                    let mut content = TarContent::new(&mut tar, header.size, mtime, &spec);
                    sink.entry(entry, Some(&mut content))
                }
                (TarKind::Symlink, SourceKind::Symlink { .. }) => {
                    let entry = StreamEntry {
                        path,
                        meta: listed.meta.clone(),
                        kind: SourceKind::Symlink { target: header.link },
                        archive_header: None,
                    };
                    sink.entry(entry, None)
                }
                _ => sink.unreadable(&path, "it changed kind while it was read".into()),
            };
            match sent {
                Err(SourceError::Damaged { why, .. }) => {
                    return Err(self.broken(&mut child, format!("the transfer stopped: {why}")))
                }
                other => other?,
            }
        }
        let _ = child.wait();
        Ok(())
    }
}
