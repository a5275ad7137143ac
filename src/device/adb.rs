//! `adb[:SERIAL][:/ROOT]`: a phone reached with Android's `adb` program, over USB or the
//! network. Files go with `adb push`; everything else is a short shell command on the phone
//! (toybox: `stat`, `mkdir -p`, `sha256sum`, `touch`, `mv`, `rm`, `ln`), with every path quoted
//! for the phone's shell.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{Device, DeviceError, Found, HashKind};
use crate::tree::Meta;

pub struct AdbDevice {
    serial: Option<String>,
    root: String,
}

/// Splits `adb[:SERIAL][:/ROOT]` into the serial (none: the one phone connected) and the root
/// folder on the phone (`/sdcard` by default).
pub fn parse_spec(spec: &str) -> Option<(Option<String>, String)> {
    if spec != "adb" && !spec.starts_with("adb:") {
        return None;
    }
    let rest = spec.strip_prefix("adb").unwrap_or_default().trim_start_matches(':');
    let (serial, root) = match rest.split_once(':') {
        Some((serial, root)) => (serial, root),
        None if rest.starts_with('/') => ("", rest),
        None => (rest, ""),
    };
    let root = if root.is_empty() { "/sdcard" } else { root };
    Some(((!serial.is_empty()).then(|| serial.to_string()), root.to_string()))
}

/// A path quoted for a POSIX shell: inside single quotes, each `'` becomes `'\''`.
pub fn quote(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![b'\''];
    for &b in bytes {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// What `adb` prints when the phone is gone (unplugged, rebooting, adb server restarted).
pub fn is_gone(text: &str) -> bool {
    ["no devices", "error: device", "device offline", "error: closed", "protocol fault", "device not found"]
        .iter()
        .any(|sign| text.contains(sign))
}

impl AdbDevice {
    pub fn new(serial: Option<String>, root: &str) -> Result<AdbDevice, DeviceError> {
        let root = root.trim_end_matches('/');
        if !root.starts_with('/') || root.split('/').any(|part| part == "..") {
            return Err(DeviceError::Unavailable {
                device: format!("adb:{}", serial.unwrap_or_default()),
                why: format!("{root:?} is not an absolute folder on the phone"),
            });
        }
        Ok(AdbDevice { serial, root: root.to_string() })
    }

    fn adb(&self, args: &[&OsStr]) -> Result<Output, DeviceError> {
        let mut command = Command::new("adb");
        if let Some(serial) = &self.serial {
            command.arg("-s").arg(serial);
        }
        command.args(args).stdin(Stdio::null());
        command.output().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DeviceError::AdbMissing,
            _ => DeviceError::Unavailable { device: self.describe(), why: format!("cannot run adb: {e}") },
        })
    }

    fn remote(&self, rel: &Path) -> Vec<u8> {
        let mut path = self.root.clone().into_bytes();
        if !rel.as_os_str().is_empty() {
            path.push(b'/');
            path.extend_from_slice(rel.as_os_str().as_bytes());
        }
        path
    }

    /// Runs `script` in the phone's shell; returns its output if it exited 0. The exit status
    /// is echoed by the script itself: old adb versions do not pass it on.
    fn shell(&self, path: &Path, script: &[u8]) -> Result<String, DeviceError> {
        let mut full = script.to_vec();
        full.extend_from_slice(b"; echo phonebak-status:$?");
        let out = self.adb(&[OsStr::new("shell"), OsStr::from_bytes(&full)])?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let Some((before, status)) = stdout.trim_end().rsplit_once("phonebak-status:") else {
            return Err(self.failure(path, &format!("{stderr}{stdout}")));
        };
        if status.trim() != "0" {
            return Err(self.failure(path, &format!("{stderr}{before}")));
        }
        Ok(before.to_string())
    }

    /// The error for a failed command about `path`.
    fn failure(&self, path: &Path, text: &str) -> DeviceError {
        let text = text.trim().to_string();
        if is_gone(&text) {
            DeviceError::Vanished { device: self.describe(), why: text }
        } else if text.contains("No space left") {
            DeviceError::Full { device: self.describe(), path: path.display().to_string() }
        } else {
            let why = if text.is_empty() { "the phone refused it".to_string() } else { text };
            DeviceError::File { path: path.display().to_string(), why }
        }
    }

    fn push_local(&self, local: &Path, path: &Path) -> Result<(), DeviceError> {
        let remote = self.remote(path);
        let out = self.adb(&[OsStr::new("push"), local.as_os_str(), OsStr::from_bytes(&remote)])?;
        if !out.status.success() {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
            return Err(self.failure(path, &text));
        }
        Ok(())
    }
}

/// A local copy of content that exists only as a stream (a file of a snapshot), for `adb push`.
struct LocalCopy(PathBuf);

impl Drop for LocalCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Device for AdbDevice {
    fn describe(&self) -> String {
        match &self.serial {
            Some(serial) => format!("adb:{serial}:{}", self.root),
            None => format!("adb:{}", self.root),
        }
    }

    fn hash_kind(&self) -> HashKind {
        HashKind::Sha256
    }

    fn check(&self) -> Result<(), DeviceError> {
        let out = self.adb(&[OsStr::new("get-state")])?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || state != "device" {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let why = if why.is_empty() { format!("the phone is {state:?}, not ready") } else { why };
            return Err(DeviceError::Unavailable { device: self.describe(), why });
        }
        let root = quote(self.root.as_bytes());
        let script = [b"test -d ".as_slice(), &root, b" && test -w ", &root].concat();
        self.shell(Path::new(""), &script).map(|_| ()).map_err(|e| match e {
            DeviceError::File { .. } => DeviceError::Unavailable {
                device: self.describe(),
                why: format!("{} is not a folder the phone lets us write to", self.root),
            },
            other => other,
        })
    }

    fn stat(&self, path: &Path) -> Result<Option<Found>, DeviceError> {
        let p = quote(&self.remote(path));
        let script = [
            b"if [ -e ".as_slice(),
            &p,
            b" ] || [ -L ",
            &p,
            b" ]; then stat -c '%s %F' ",
            &p,
            b"; else echo missing; fi",
        ]
        .concat();
        let out = self.shell(path, &script)?;
        let out = out.trim();
        if out == "missing" {
            return Ok(None);
        }
        let (size, kind) = out.split_once(' ').unwrap_or((out, ""));
        Ok(Some(match kind {
            "regular file" | "regular empty file" => Found::File { size: size.parse().unwrap_or(0) },
            "directory" => Found::Dir,
            _ => Found::Other,
        }))
    }

    fn make_dirs(&self, path: &Path) -> Result<(), DeviceError> {
        self.shell(path, &[b"mkdir -p ".as_slice(), &quote(&self.remote(path))].concat()).map(|_| ())
    }

    fn write(&self, path: &Path, content: &mut dyn Read, local: Option<&Path>) -> Result<u64, DeviceError> {
        let read_error = |e: io::Error| DeviceError::File { path: path.display().to_string(), why: e.to_string() };
        let (source, _copy, size) = match local {
            // The pusher hashes as it reads: the stream is read through even when adb sends the file.
            Some(local) => (local.to_path_buf(), None, io::copy(content, &mut io::sink()).map_err(read_error)?),
            None => {
                let copy =
                    LocalCopy(std::env::temp_dir().join(format!("phonebak-push-{:016x}", rand::random::<u64>())));
                // Private: a snapshot's file, decrypted.
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&copy.0)
                    .map_err(read_error)?;
                let size = io::copy(content, &mut file).map_err(read_error)?;
                (copy.0.clone(), Some(copy), size)
            }
        };
        self.push_local(&source, path)?;
        Ok(size)
    }

    fn digest(&self, path: &Path) -> Result<String, DeviceError> {
        let out = self.shell(path, &[b"sha256sum ".as_slice(), &quote(&self.remote(path))].concat())?;
        let hex = out.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
        if hex.len() != 64 {
            return Err(DeviceError::File { path: path.display().to_string(), why: format!("sha256sum said {out:?}") });
        }
        Ok(hex)
    }

    fn set_meta(&self, path: &Path, meta: &Meta, _is_symlink: bool) {
        // Android's shared storage keeps no modes; mtimes it does. -h: a symlink itself.
        let when = format!("touch -h -m -d @{}.{:09} ", meta.mtime_sec, meta.mtime_nsec);
        let _ = self.shell(path, &[when.as_bytes(), &quote(&self.remote(path))].concat());
    }

    fn rename(&self, from: &Path, to: &Path, replace: bool) -> Result<(), DeviceError> {
        let (f, t) = (quote(&self.remote(from)), quote(&self.remote(to)));
        let script = if replace {
            [b"mv -f ".as_slice(), &f, b" ", &t].concat()
        } else {
            [
                b"if [ -e ".as_slice(),
                &t,
                b" ] || [ -L ",
                &t,
                b" ]; then echo 'already exists' >&2; false; else mv ",
                &f,
                b" ",
                &t,
                b"; fi",
            ]
            .concat()
        };
        self.shell(to, &script).map(|_| ())
    }

    fn sync(&self) -> Result<(), DeviceError> {
        self.shell(Path::new(""), b"sync").map(|_| ())
    }

    fn remove(&self, path: &Path) -> Result<(), DeviceError> {
        self.shell(path, &[b"rm -f ".as_slice(), &quote(&self.remote(path))].concat()).map(|_| ())
    }

    fn symlink(&self, target: &[u8], path: &Path) -> Result<(), DeviceError> {
        self.shell(path, &[b"ln -s ".as_slice(), &quote(target), b" ", &quote(&self.remote(path))].concat()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(quote(b"it's"), b"'it'\\''s'".to_vec());
        assert!(AdbDevice::new(None, "relative").is_err());
        assert!(AdbDevice::new(None, "/sdcard/../etc").is_err());
    }
}
