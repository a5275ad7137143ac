//! Where a repository's files live: a folder on a disk, or a bucket of an S3-compatible object
//! store. Everything above this seam speaks of named objects (`config`, `data/ab/ab12…`,
//! `index/…`, `snapshots/…`, `locks/…`), never of paths; each backend keeps the promise that an
//! object appears whole or not at all.

mod disk_cache;
mod file_reads;
pub mod folder;
pub mod s3;

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One stored object, as a listing gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// Its name from the repository's root, `/`-separated.
    pub name: String,
    pub size: u64,
    /// A regular file (folder backend) or an object (S3); folders, FIFOs and devices that a
    /// user left in a repository folder are listed as not regular, for `check` to name.
    pub regular: bool,
    /// When it was last written, on the clock of the machine or store that keeps it.
    pub modified: Option<std::time::SystemTime>,
}

/// Whether a read is likely to be asked for again (index pages, folder listings): a backend
/// with a local cache keeps those.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reuse {
    Once,
    Again,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{name}: {why}")]
    NotAFile { name: String, why: &'static str },
    #[error("{name}: larger than any file of its kind")]
    TooLarge { name: String },
    #[error("{name} is shorter than expected (truncated?)")]
    Truncated { name: String },
    #[error("no space left on the repository's disk while {0}")]
    NoSpace(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    /// The store did not answer (down, unreachable, timing out), also after retries.
    #[error("the object store at {location} cannot be reached ({why}); nothing was changed by this request: check the address and that the store is up, then run the command again")]
    Unreachable { location: String, why: String },
    /// The store refused the credentials or the request.
    #[error("the object store at {location} refused access ({why}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's permissions")]
    Denied { location: String, why: String },
    #[error("bucket {bucket} does not exist at {location} (`phonebak init --create-bucket` creates it)")]
    NoBucket { location: String, bucket: String },
    #[error("the object store at {location} failed to {action} {name}: {why}")]
    Store { location: String, action: &'static str, name: String, why: String },
    #[error("{0}")]
    BadLocation(String),
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound(_))
    }
}

/// Wraps an io::Error with what was being done; a full disk gets its own variant because users
/// must act on it differently.
pub fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> StorageError {
    move |source| {
        let context = context.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::NoSpace(context),
            _ => StorageError::Io { context, source },
        }
    }
}

impl StorageError {
    /// Whether the store as a whole cannot be used now (down, refusing, no bucket), as opposed
    /// to one object being wrong: every other read would fail the same way.
    pub fn store_is_unusable(&self) -> bool {
        matches!(self, StorageError::Unreachable { .. } | StorageError::Denied { .. } | StorageError::NoBucket { .. })
    }
}

/// A repository's storage. Names are `/`-separated and relative to the repository's root.
pub trait Storage: Send + Sync {
    /// Where the repository is, for messages: a path, or `s3:ENDPOINT/BUCKET/PREFIX` (never
    /// credentials).
    fn location(&self) -> String;
    /// The repository's folder, for a folder repository.
    fn local_folder(&self) -> Option<&Path> {
        None
    }
    /// The whole object; refuses one longer than `limit` bytes (a record never is).
    fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, StorageError>;
    /// `len` bytes from `offset` into `out` (replacing what it held); returns where in `out`
    /// they lie (a direct read of a folder may need them a few bytes in).
    fn read_range(
        &self,
        name: &str,
        offset: u64,
        len: usize,
        reuse: Reuse,
        out: &mut Vec<u8>,
    ) -> Result<Range<usize>, StorageError>;
    fn size(&self, name: &str) -> Result<u64, StorageError>;
    /// Every object under `dir/` (at any depth), sorted by name; nothing if there is no such
    /// folder.
    fn list(&self, dir: &str) -> Result<Vec<Object>, StorageError>;
    /// Writes a whole object, replacing any of that name: it appears whole or not at all, and
    /// is durable when this returns.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError>;
    /// Writes a whole object unless one of that name exists; says whether it wrote it.
    fn write_new(&self, name: &str, bytes: &[u8]) -> Result<bool, StorageError>;
    /// Writes a whole object only if one of that name is still there; says whether it was (a
    /// lock's refresh: a lock removed as stale by another machine must stay removed). A folder
    /// looks, then writes: its locks are judged stale by whether their process lives, and a
    /// live process's lock is never removed.
    fn rewrite_existing(&self, name: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        match self.size(name) {
            Ok(_) => self.write(name, bytes).map(|()| true),
            Err(StorageError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
    /// A new object written in pieces (a pack), named when it is complete.
    fn upload(&self) -> Result<Box<dyn Upload>, StorageError>;
    /// Removes an object; one already gone is no error.
    fn delete(&self, name: &str) -> Result<(), StorageError>;
    /// Makes the deletions in `dir/` durable (a folder's fsync; an object store's are at once).
    fn sync_deletions(&self, _dir: &str) -> Result<(), StorageError> {
        Ok(())
    }
    /// Moves `name` to `to`, durably (damaged files are kept for the user, never deleted).
    fn set_aside(&self, name: &str, to: &str) -> Result<(), StorageError>;
    /// Bytes free where the repository is stored, where that is known.
    fn free_space(&self) -> Option<u64> {
        None
    }
    /// Read large ranges past the page cache from now on (the mount keeps them itself).
    fn read_directly(&self) {}
    /// Creates the repository's place (folders; or checks the bucket, creating it if asked).
    fn create(&self, create_bucket: bool) -> Result<(), StorageError>;
    /// Requests made and bytes moved so far (object stores; for `--stats` and the benchmark).
    fn traffic(&self) -> Option<Traffic> {
        None
    }
}

/// What a backend sent and received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A new object being written: appears under its name at `finish`, or never (dropped unfinished).
pub trait Upload: io::Write + Send {
    fn finish(self: Box<Self>, name: &str) -> Result<(), StorageError>;
    /// The local folder the bytes wait in before they are stored elsewhere (an object store's
    /// uploads wait in TMPDIR): a full disk there is said as such.
    fn waits_in(&self) -> Option<PathBuf> {
        None
    }
}

/// What `--repo` names: a folder, or a bucket (and prefix) of an S3-compatible store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoLocation {
    Folder(PathBuf),
    S3(s3::S3Location),
}

impl RepoLocation {
    /// `s3:https://HOST[:PORT]/BUCKET[/PREFIX]` (or `s3:HOST/BUCKET`, https), anything else a
    /// folder.
    pub fn parse(text: &std::ffi::OsStr) -> Result<RepoLocation, StorageError> {
        let Some(text) = text.to_str() else { return Ok(RepoLocation::Folder(PathBuf::from(text))) };
        if let Some(rest) = text.strip_prefix("s3:") {
            return Ok(RepoLocation::S3(s3::S3Location::parse(rest)?));
        }
        // `S3:...`, `https://...`: an address meant for a store, never a folder to make.
        let scheme = text.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
        if scheme.as_deref() == Some("s3") || text.contains("://") {
            return Err(StorageError::BadLocation(format!(
                "{text:?} is neither a folder nor an object store address: write s3:https://HOST[:PORT]/BUCKET[/PREFIX] \
                 (lowercase s3:) for an object store"
            )));
        }
        Ok(RepoLocation::Folder(PathBuf::from(text)))
    }

    pub fn open(&self, options: &s3::S3Options) -> Result<Arc<dyn Storage>, StorageError> {
        Ok(match self {
            RepoLocation::Folder(path) => Arc::new(folder::Folder::new(path.clone())),
            RepoLocation::S3(location) => Arc::new(s3::S3::open(location.clone(), options)?),
        })
    }
}
