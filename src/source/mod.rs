//! Where a backup reads from. A source hands the backup engine its entries one by one, in any
//! order, each file with a way to read its content (`Source::send_entries`); the engine decides
//! what it reads and builds the trees (src/tree_builder.rs), so sources are not trusted with
//! names, order or duplicates.
//!
//! - Sources read folder by folder (`ListedSource`: `dir:PATH`, a phone mounted over MTP or any
//!   folder; `ios-backup:DIR`, an iPhone's backup folder) are walked by `walk`.
//! - Archives (`tar:FILE`, `ab:FILE`, `-` for standard input) are read once, in order.
//! - A live phone (`adb[:SERIAL][:/PATH]`) is listed whole, then sends what is wanted as a tar
//!   stream.

mod adb;
mod archive;
mod dir;
mod ios;
pub mod walk;

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;

pub use adb::AdbSource;
pub use archive::ArchiveSource;
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
    /// A second name for a file listed earlier (an archive's hard link), by that file's path:
    /// stored as a file with the same content.
    HardLink {
        target: Vec<u8>,
    },
    /// Device nodes, sockets and pipes: not phone data, noted and skipped.
    Special,
}

/// An entry of a folder's listing: its name, not yet checked.
#[derive(Clone, Debug)]
pub struct SourceEntry {
    pub name: Vec<u8>,
    pub meta: Meta,
    pub kind: SourceKind,
}

/// An entry as a source sends it: its path below the source's root, `/` between names, exactly
/// as the source names it (the engine checks it: `..`, absolute paths and NUL are refused).
#[derive(Clone, Debug)]
pub struct StreamEntry {
    pub path: Vec<u8>,
    pub meta: Meta,
    pub kind: SourceKind,
    /// An archive entry's header blocks exactly as the archive holds them, when they and the
    /// entry's stored content give the entry back whole (src/extras.rs); `None` elsewhere.
    pub archive_header: Option<ArchiveHeader>,
}

/// An archive entry's own header, kept for an export to give it back.
#[derive(Clone, Debug)]
pub struct ArchiveHeader {
    pub blocks: Vec<u8>,
    /// The bytes of data after it in the archive: the content the snapshot stores at the
    /// entry's path (a file's, or a hard link's, which is its target's), or none.
    pub data_len: u64,
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
    /// An archive is cut short or damaged: the backup stops and writes no snapshot.
    #[error("{source_name}: {why}")]
    Damaged { source_name: String, why: String },
    #[error("cannot use {spec:?} as a source: {why}")]
    Invalid { spec: String, why: String },
    /// A phone cannot be used: `adb` missing, no phone or several, not allowed, no such folder.
    #[error("{device}: {why}")]
    Unavailable { device: String, why: String },
    /// The temporary folder (TMPDIR) failed: full (exit 15), or not writable.
    #[error("{doing}: {error}")]
    Scratch { doing: String, error: io::Error },
    /// An encrypted backup's password is wrong or was not given: nothing is imported.
    #[error("{0}")]
    ArchivePassword(String),
    /// The engine stopped taking entries; it reports its own reason.
    #[error("the backup stopped")]
    Stopped,
}

/// An open file being backed up, which can tell whether it changed while it was read.
pub trait SourceFile: Read {
    /// Size and mtime now, to compare with what the listing said.
    fn current_state(&self) -> io::Result<(u64, i64, u32)>;
}

/// A file's content as a source offers it with its entry.
pub trait Content {
    fn open(&mut self) -> Result<Box<dyn SourceFile + '_>, SourceError>;
    /// Whether `open` may be called again, to read a file that changed while it was read.
    fn can_reopen(&self) -> bool {
        false
    }
    /// What a failed read means: this one file (`Unreadable`), or the whole source.
    fn read_failed(&self, error: io::Error) -> SourceError;
}

/// The backup engine, as sources see it. Methods that return an error stop the source, which
/// returns `SourceError::Stopped`.
pub trait EntrySink {
    /// Whether the folder at `path` is wanted (a source that lists folders one by one does not
    /// list the others).
    fn wants_dir(&mut self, path: &[u8]) -> bool;
    /// Whether the engine would read this file's content (not when excluded, or when the last
    /// snapshot has it unchanged): a source that fetches content in batches asks first.
    fn wants_content(&mut self, entry: &StreamEntry) -> bool;
    /// An entry; a file's content, when the source can give it, comes along.
    fn entry(&mut self, entry: StreamEntry, content: Option<&mut dyn Content>) -> Result<(), SourceError>;
    /// A path the source could not read or will not give: left out and reported.
    fn unreadable(&mut self, path: &[u8], why: String) -> Result<(), SourceError>;
    /// A path stored, but not as the source describes it.
    fn note(&mut self, path: &[u8], why: String);
    /// Everything below the folder `path` has been sent.
    fn dir_done(&mut self, path: &[u8]) -> Result<(), SourceError>;
    /// An archive whose entries came with their headers has ended: `trailer_len` bytes
    /// (end-of-archive blocks, padding) followed its last entry.
    fn archive_end(&mut self, trailer_len: u64);
}

pub trait Source: Send + Sync {
    /// What the snapshot records as its source, e.g. `dir:/mnt/phone`.
    fn describe(&self) -> String;
    /// Sends every entry to `sink`. An error ends the backup without a snapshot.
    fn send_entries(&self, sink: &mut dyn EntrySink) -> Result<(), SourceError>;
    /// About how many bytes of files the backup will see, for a progress bar's estimate, when
    /// that is cheap to know. `excluded` says which paths the backup leaves out.
    fn expected_bytes(&self, _excluded: &(dyn Fn(&[u8]) -> bool + Sync)) -> Option<u64> {
        None
    }
    /// Whether a file whose size and mtime equal the last snapshot's may be taken from it
    /// unread. Archives say no: their bytes go by anyway, and hashing them is the check.
    fn trusts_size_and_mtime(&self) -> bool {
        true
    }
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

/// A source read folder by folder, by path; `walk::send` makes its entries.
pub trait ListedSource: Send + Sync {
    fn root_meta(&self) -> Result<Meta, SourceError>;
    fn list(&self, dir: &Path) -> Result<Listing, SourceError>;
    fn open(&self, file: &Path) -> Result<Box<dyn SourceFile>, SourceError>;
    /// What a failed read of `file` means: that file, or the whole source.
    fn read_failed(&self, file: &Path, error: io::Error) -> SourceError {
        SourceError::Unreadable { path: file.display().to_string(), source: error }
    }
}

/// Parses a SOURCE argument: `dir:PATH`, `ios-backup:DIR`, `tar:FILE`, `ab:FILE` (`-` for
/// standard input) or a plain path. `archive_password` is asked only for an encrypted backup.
pub fn open_source(spec: &str, archive_password: ArchivePassword) -> Result<Box<dyn Source>, SourceError> {
    let invalid = |why: &str| SourceError::Invalid { spec: spec.to_string(), why: why.to_string() };
    if spec == "adb" {
        return AdbSource::open(spec).map(|s| Box::new(s) as Box<dyn Source>);
    }
    if let Some((scheme, rest)) = spec.split_once(':') {
        match scheme {
            "dir" => {}
            "ios-backup" => {
                return IosBackupSource::open(Path::new(rest), archive_password)
                    .map(|s| Box::new(s) as Box<dyn Source>);
            }
            "tar" => return ArchiveSource::tar(rest).map(|s| Box::new(s) as Box<dyn Source>),
            "ab" => return ArchiveSource::ab(rest, archive_password).map(|s| Box::new(s) as Box<dyn Source>),
            "adb" => return AdbSource::open(spec).map(|s| Box::new(s) as Box<dyn Source>),
            _ if !Path::new(spec).exists() => return Err(invalid(&format!("unknown source kind `{scheme}:`"))),
            _ => {}
        }
    }
    let path = spec.strip_prefix("dir:").unwrap_or(spec);
    DirSource::new(Path::new(path)).map(|s| Box::new(s) as Box<dyn Source>)
}
