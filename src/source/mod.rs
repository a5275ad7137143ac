//! Where a backup reads from. A source lists folders and opens files; it knows nothing about the
//! repository. Today: `dir:PATH` (a phone mounted over MTP, or any folder) and
//! `ios-backup:DIR` (an iPhone's backup folder, read as the phone's folders).

mod dir;
mod ios;

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;

pub use dir::DirSource;
pub use ios::{
    decode_mbfile, info_facts, parse_plist, path_problem, ArchivePassword, CatalogueRow, IosBackupSource, MbFile,
    CATALOGUE_QUERY, OWN_FILES, OWN_FILES_DIR, SECOND_ROW, WRONG_PASSWORD,
};

use crate::tree::Meta;

#[derive(Clone, Debug, PartialEq)]
pub enum SourceKind {
    File {
        size: u64,
    },
    Dir,
    Symlink {
        target: Vec<u8>,
    },
    /// Device nodes, sockets and pipes: not phone data, noted and skipped.
    Special,
}

#[derive(Clone, Debug)]
pub struct SourceEntry {
    pub name: Vec<u8>,
    pub meta: Meta,
    pub kind: SourceKind,
}

/// A folder's listing: what could be read, and the names that could not.
#[derive(Default)]
pub struct Listing {
    pub entries: Vec<SourceEntry>,
    pub unreadable: Vec<(Vec<u8>, io::Error)>,
    /// Names that are imported but not as their source describes them (an iPhone backup's blob
    /// whose length differs from its record): said, not failed.
    pub notes: Vec<(Vec<u8>, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// One file or folder could not be read: the backup skips it, lists it and exits 3.
    #[error("{path}: {source}")]
    Unreadable { path: String, source: io::Error },
    /// The whole source is gone (phone unplugged, MTP mount lost): the backup stops and writes
    /// no snapshot.
    #[error("the source {source_name} disappeared during the backup ({cause})")]
    Vanished { source_name: String, cause: io::Error },
    #[error("cannot use {spec:?} as a source: {why}")]
    Invalid { spec: String, why: String },
    /// The temporary folder (TMPDIR) failed: full (exit 15), or not writable.
    #[error("{doing}: {error}")]
    Scratch { doing: String, error: io::Error },
    /// An encrypted iPhone backup's password is wrong or was not given: nothing is imported.
    #[error("{0}")]
    ArchivePassword(String),
}

/// An open file being backed up, which can tell whether it changed while it was read.
pub trait SourceFile: Read + Send {
    /// Size and mtime now, to compare with what the listing said.
    fn current_state(&self) -> io::Result<(u64, i64, u32)>;
}

pub trait Source: Send + Sync {
    /// What the snapshot records as its source, e.g. `dir:/mnt/phone`.
    fn describe(&self) -> String;
    fn root_meta(&self) -> Result<Meta, SourceError>;
    fn list(&self, dir: &Path) -> Result<Listing, SourceError>;
    fn open(&self, file: &Path) -> Result<Box<dyn SourceFile>, SourceError>;
    /// The device's own name, when the source records one (an iPhone backup's Info.plist).
    fn device_name(&self) -> Option<String> {
        None
    }
    /// When the source's data was taken, when it records that (ns since the epoch).
    fn taken_at_ns(&self) -> Option<i64> {
        None
    }
    /// What the source records of the device (model, OS version, serial...), kept with the
    /// snapshot and shown by `snapshots`.
    fn facts(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
}

/// Parses a SOURCE argument: `dir:PATH`, `ios-backup:DIR` or a plain path. `archive_password`
/// is asked only for an encrypted backup.
pub fn open_source(spec: &str, archive_password: ArchivePassword) -> Result<Box<dyn Source>, SourceError> {
    let invalid = |why: &str| SourceError::Invalid { spec: spec.to_string(), why: why.to_string() };
    if let Some((scheme, _)) = spec.split_once(':') {
        match scheme {
            "dir" => {}
            "ios-backup" => {
                let dir = &spec["ios-backup:".len()..];
                return IosBackupSource::open(Path::new(dir), archive_password).map(|s| Box::new(s) as Box<dyn Source>);
            }
            "adb" | "ab" | "tar" => return Err(invalid(&format!("`{scheme}:` sources are not supported yet"))),
            _ if !Path::new(spec).exists() => return Err(invalid(&format!("unknown source kind `{scheme}:`"))),
            _ => {}
        }
    }
    let path = spec.strip_prefix("dir:").unwrap_or(spec);
    DirSource::new(Path::new(path)).map(|s| Box::new(s) as Box<dyn Source>)
}
