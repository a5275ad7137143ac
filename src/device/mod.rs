//! Push targets: where `phonebak push` puts files back. A device is addressed by paths relative
//! to its root (validated names, never `..` or absolute), and offers the few operations a
//! verified, crash-safe push needs: write under a temporary name, hash what it holds, rename.
//!
//! - `dir:PATH`: any folder, such as a phone mounted over MTP (jmtpfs, simple-mtpfs, gvfs).
//! - `adb[:SERIAL][:/ROOT]`: a phone reached with the `adb` program (root `/sdcard` by default).

pub mod adb;
pub mod dir;

use std::io::Read;
use std::path::Path;

use crate::tree::Meta;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device cannot be used at all: missing, not a folder, read-only, not connected.
    #[error("device {device}: {why}")]
    Unavailable { device: String, why: String },
    #[error(
        "the `adb` program is not installed: install Android's platform tools (Debian and Ubuntu: \
         `apt install adb`; Fedora: `dnf install android-tools`; Arch: `pacman -S android-tools`)"
    )]
    AdbMissing,
    #[error("device {device} is full: {path} did not fit")]
    Full { device: String, path: String },
    #[error("device {device} went away during the push: {why}")]
    Vanished { device: String, why: String },
    /// One file failed (a name the device refuses, a read-back that differs): the push goes on.
    #[error("{path}: {why}")]
    File { path: String, why: String },
}

impl DeviceError {
    /// Whether the push must stop (nothing else could succeed either).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, DeviceError::File { .. })
    }
}

/// Which hash a device can compute over what it holds (to verify a write by reading it back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKind {
    Blake3,
    /// What Android's toybox offers (`sha256sum`).
    Sha256,
}

/// A hasher of either kind, fed with the bytes pushed.
pub enum Hasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub fn new(kind: HashKind) -> Hasher {
        match kind {
            HashKind::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
            HashKind::Sha256 => Hasher::Sha256(sha2::Digest::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Blake3(h) => {
                h.update(bytes);
            }
            Hasher::Sha256(h) => sha2::Digest::update(h, bytes),
        }
    }

    /// The digest in lowercase hex (as `sha256sum` prints it).
    pub fn finish(self) -> String {
        match self {
            Hasher::Blake3(h) => h.finalize().to_hex().to_string(),
            Hasher::Sha256(h) => hex::encode(sha2::Digest::finalize(h)),
        }
    }
}

/// The digest of everything `reader` yields.
pub fn digest_of(kind: HashKind, reader: &mut dyn Read) -> std::io::Result<String> {
    let mut hasher = Hasher::new(kind);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What is at a path on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    File { size: u64 },
    Dir,
    Other,
}

pub trait Device: Send + Sync {
    /// How the user named it (`dir:/media/phone`), for messages and the push journal.
    fn describe(&self) -> String;
    fn hash_kind(&self) -> HashKind;
    /// Fails unless the device is there and writable.
    fn check(&self) -> Result<(), DeviceError>;
    fn stat(&self, path: &Path) -> Result<Option<Found>, DeviceError>;
    /// Makes a folder and its missing parents.
    fn make_dirs(&self, path: &Path) -> Result<(), DeviceError>;
    /// Writes `content` to `path` (replacing what is there). `local` is the same content as a
    /// local file, when there is one. Returns the bytes written.
    fn write(&self, path: &Path, content: &mut dyn Read, local: Option<&Path>) -> Result<u64, DeviceError>;
    /// Reads `path` back and hashes it (`hash_kind`).
    fn digest(&self, path: &Path) -> Result<String, DeviceError>;
    /// Sets mtime and mode (not on a symlink: that would change its target) where the device
    /// allows (MTP and Android's shared storage keep neither exactly): best effort, never an
    /// error for that reason.
    fn set_meta(&self, path: &Path, meta: &Meta, is_symlink: bool);
    /// Renames `from` to `to`; without `replace`, an existing `to` is an error.
    fn rename(&self, from: &Path, to: &Path, replace: bool) -> Result<(), DeviceError>;
    /// Makes everything written and renamed so far durable.
    fn sync(&self) -> Result<(), DeviceError>;
    fn remove(&self, path: &Path) -> Result<(), DeviceError>;
    fn symlink(&self, target: &[u8], path: &Path) -> Result<(), DeviceError>;
}

/// Opens a device named as on the command line: `dir:PATH` (or a plain path) or
/// `adb[:SERIAL][:/ROOT]`.
pub fn open(spec: &str) -> Result<Box<dyn Device>, DeviceError> {
    if let Some((serial, root)) = adb::parse_spec(spec) {
        return adb::AdbDevice::new(serial, &root).map(|d| Box::new(d) as _);
    }
    let path = match spec.strip_prefix("dir:") {
        Some(path) => path,
        // A plain path may hold a colon, but `adbb:` or `mtp:` naming no folder is a mistyped kind.
        None => match spec.split_once(':') {
            Some((kind, _)) if !kind.contains('/') && !Path::new(spec).exists() => {
                let why = format!(
                    "no device kind {kind:?} and no such folder (devices are dir:PATH or adb[:SERIAL][:/ROOT])"
                );
                return Err(DeviceError::Unavailable { device: spec.to_string(), why });
            }
            _ => spec,
        },
    };
    dir::DirDevice::open(Path::new(path)).map(|d| Box::new(d) as _)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_the_usual_tools() {
        let mut sha = Hasher::new(HashKind::Sha256);
        sha.update(b"abc");
        assert_eq!(sha.finish(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let mut b3 = Hasher::new(HashKind::Blake3);
        b3.update(b"abc");
        assert_eq!(b3.finish(), blake3::hash(b"abc").to_hex().to_string());
    }

    #[test]
    fn device_names() {
        let missing = open("dir:/no/such/phone").err().unwrap();
        assert!(matches!(missing, DeviceError::Unavailable { .. }), "{missing}");
        assert!(missing.to_string().contains("/no/such/phone"));
        let mistyped = open("adbb:R5CT1234").err().unwrap().to_string();
        assert!(mistyped.contains("no device kind \"adbb\"") && mistyped.contains("adb[:SERIAL]"), "{mistyped}");
        let folder = tempfile::tempdir().unwrap();
        let with_colon = folder.path().join("phone:1");
        std::fs::create_dir(&with_colon).unwrap();
        assert!(open(with_colon.to_str().unwrap()).is_ok(), "a folder whose name has a colon is a folder");
    }
}
