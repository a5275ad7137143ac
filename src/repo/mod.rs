//! The on-disk repository: config, packs of sealed blobs, the index, snapshot records and
//! locks. It knows nothing about phones, trees or FUSE; see docs/FORMAT.md for the bytes.

mod bulk_read;
pub mod config;
pub mod crypto;
pub use bulk_read::PIECE_MAX;
mod fsutil;
#[cfg(test)]
mod golden;
pub mod index;
pub mod lock;
pub mod pack;
pub mod packer;
pub mod snapshot;
pub mod storage;
pub mod warnings;

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use config::{Config, FORMAT_VERSION};
use crypto::{KdfParams, MasterKeys, Sealer};
pub use fsutil::{crash_point, create_private_dirs, free_space, fsync_dir};
use index::Index;
pub use storage::{Object, Reuse, Storage, StorageError};
use warnings::Warnings;

/// A 32-byte name: of a blob (keyed BLAKE3 of its plain bytes), a pack (BLAKE3 of the file), a
/// snapshot or an index file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Id(pub [u8; 32]);
pub type BlobId = Id;
pub type PackId = Id;
pub type SnapshotId = Id;

impl Id {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
    pub fn from_hex(text: &str) -> Option<Id> {
        let bytes = hex::decode(text).ok()?;
        Some(Id(bytes.try_into().ok()?))
    }
    pub fn random() -> Id {
        Id(crypto::random_bytes())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

/// What a blob holds: file content, or one encoded directory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum BlobKind {
    Data,
    Tree,
}

impl BlobKind {
    fn tag(self) -> u8 {
        match self {
            BlobKind::Data => b'D',
            BlobKind::Tree => b'T',
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no phonebak repository at {0} (create one with `phonebak init`)")]
    NotFound(String),
    #[error("{0} is already a phonebak repository")]
    AlreadyExists(String),
    #[error("--from and --to are the same repository ({0})")]
    SameRepository(String),
    #[error(
        "{0} holds phonebak repository data (packs, index or snapshots) but its config file is missing: \
             without it nothing there can be read. Copy the config back from a backup of the repository; \
             `init` will not create a new repository over this data"
    )]
    ConfigMissing(String),
    #[error("repository format {found} is newer than this phonebak understands (up to {supported}): upgrade phonebak")]
    NewerFormat { found: u32, supported: u32 },
    #[error("wrong password for this repository (or its config's sealed keys are damaged: a config copied from a backup of the repository opens with the right password)")]
    WrongPassword,
    #[error("this repository is encrypted: give its password with PHONEBAK_PASSWORD, --password-file or PHONEBAK_PASSWORD_FILE")]
    PasswordRequired,
    #[error("repository is locked: {0}")]
    Locked(String),
    #[error("repository damaged: {0}")]
    Corrupt(String),
    #[error("repository damaged: blob {0} is not in the index")]
    MissingBlob(BlobId),
    #[error("repository damaged: pack {0} is missing")]
    MissingPack(PackId),
    #[error("no space left on the repository's disk while {0}")]
    NoSpace(String),
    #[error("no space left in the temporary folder {0} (TMPDIR), where packs wait on their way to the object store: free some, or set TMPDIR to a folder with room; nothing was stored half-written")]
    NoTempSpace(std::path::PathBuf),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    /// The store cannot be reached, refuses access, or has no such bucket.
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for RepoError {
    /// What a caller did not handle itself: a missing object reads as a missing file (callers
    /// that care match on it first), an object that cannot be a record as damage.
    fn from(error: StorageError) -> RepoError {
        match error {
            StorageError::NoSpace(context) => RepoError::NoSpace(context),
            StorageError::Io { context, source } => RepoError::Io { context, source },
            StorageError::NotFound(name) => {
                RepoError::Io { context: format!("reading {name}"), source: io::ErrorKind::NotFound.into() }
            }
            StorageError::NotAFile { name, why } => RepoError::Corrupt(format!("{name}: {why}")),
            StorageError::TooLarge { name } => RepoError::Corrupt(format!("{name}: larger than any file of its kind")),
            StorageError::Truncated { name } => RepoError::Corrupt(format!("{name} is truncated")),
            other => RepoError::Storage(other),
        }
    }
}

impl RepoError {
    /// Is this damage to stored data (as opposed to a problem reaching it)?
    pub fn is_corruption(&self) -> bool {
        matches!(self, RepoError::Corrupt(_) | RepoError::MissingBlob(_) | RepoError::MissingPack(_))
    }
}

/// Wraps an io::Error with what was being done; a full disk gets its own variant because users
/// must act on it differently.
pub fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> RepoError {
    move |source| storage::io_error(context)(source).into()
}

/// Settings chosen at `init`.
pub struct InitOptions {
    pub compression_level: i32,
    pub chunker: ChunkerParams,
    pub pack_size: u64,
    pub kdf: KdfParams,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            compression_level: 3,
            chunker: ChunkerParams::default(),
            pack_size: 32 * 1024 * 1024,
            kdf: KdfParams::default(),
        }
    }
}

/// Where damaged files are moved, inside the repository.
pub const DAMAGED_DIR: &str = "damaged";
/// The largest config file read (it is a few hundred bytes).
const MAX_CONFIG: u64 = 1 << 20;
/// Blobs larger than this are first test-compressed on a sample, so photos and videos do not
/// pay for a full zstd pass that cannot shrink them.
const SAMPLE_FIRST_ABOVE: usize = 128 * 1024;
const SAMPLE_LEN: usize = 64 * 1024;
/// Uncompressed blobs longer than this are sealed in frames of this many plain bytes (format 2),
/// so that the mount can answer a small read of a photo or video by reading and opening one
/// frame instead of a whole chunk of about 1 MiB.
pub const FRAME_LEN: usize = 64 * 1024;
/// The largest plain blob any reader accepts: chunks are at most 16 MiB (see `ChunkerParams`),
/// and a tree of a folder with a million files is about 100 MiB. Lengths read from disk are
/// checked against it before anything is allocated.
pub const MAX_BLOB: u32 = 256 << 20;
/// The largest stored (sealed) blob: `MAX_BLOB` plus at most 28 bytes per 64 KiB frame.
pub const MAX_STORED: u32 = MAX_BLOB + MAX_BLOB / 1024;
/// The most bytes a record decoded from disk (tree, index page or header, pack footer) may
/// decode to; length prefixes never preallocate more than serde's cautious 1 MiB either.
const RECORD_LIMIT: usize = 512 << 20;

/// Decodes one bincode record (docs/FORMAT.md: `config::standard()`) that must fill `bytes`
/// exactly, refusing length prefixes beyond `RECORD_LIMIT`.
pub(crate) fn decode_record<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let config = bincode::config::standard().with_limit::<RECORD_LIMIT>();
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(bytes, config).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err("trailing bytes".into());
    }
    Ok(value)
}

/// Where `Repository::open_stored` left a blob's plain bytes.
pub enum Opened {
    /// In the stored bytes, at this range.
    In(std::ops::Range<usize>),
    /// In the buffer given for decompressing.
    Decompressed,
}

/// Compressed blobs up to this size are read into a reused per-thread buffer; larger ones into
/// their own (the allocator maps and unmaps those, so they leave no holes behind).
const SCRATCH_MAX: usize = 256 * 1024;

pub struct Repository {
    storage: Arc<dyn Storage>,
    config: Config,
    keys: MasterKeys,
    sealer: Arc<Sealer>,
    index: Index,
    warnings: Arc<Warnings>,
}

/// The name of pack `pack`: `data/<its first 2 hex digits>/<its 64 hex digits>`.
pub fn pack_name(pack: &PackId) -> String {
    let hex = pack.to_hex();
    format!("data/{}/{hex}", &hex[..2])
}

impl Repository {
    /// Creates a repository in `storage` (and its bucket, if `create_bucket` and it has none).
    pub fn init(
        storage: &dyn Storage,
        password: Option<&[u8]>,
        options: InitOptions,
        create_bucket: bool,
    ) -> Result<(), RepoError> {
        options.chunker.validate().map_err(RepoError::Corrupt)?;
        storage.create(create_bucket)?;
        match storage.size("config") {
            Err(StorageError::NotFound(_)) => {}
            // Something is there by that name (a file, or a folder or FIFO in its place).
            Ok(_) | Err(StorageError::NotAFile { .. }) => return Err(RepoError::AlreadyExists(storage.location())),
            Err(other) => return Err(other.into()),
        }
        if holds_repository_data(storage)? {
            return Err(RepoError::ConfigMissing(storage.location()));
        }
        let keys = MasterKeys::random();
        let config = Config {
            format_version: FORMAT_VERSION,
            repository_id: Id::random().to_hex(),
            created: chrono::Local::now().to_rfc3339(),
            chunker: options.chunker,
            compression_level: options.compression_level,
            pack_size: options.pack_size,
            keys: Config::seal_keys(&keys, password, options.kdf)?,
        };
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        // The config is written last: a place without it is not yet a repository. Two inits at
        // once: the second finds the first's config and stops.
        if !storage.write_new("config", &json)? {
            return Err(RepoError::AlreadyExists(storage.location()));
        }
        Ok(())
    }

    /// Creates a repository in folder `root`.
    pub fn init_folder(root: &Path, password: Option<&[u8]>, options: InitOptions) -> Result<(), RepoError> {
        Self::init(&storage::folder::Folder::new(root.to_path_buf()), password, options, false)
    }

    /// Opens the repository in folder `root`.
    pub fn open_folder(
        root: &Path,
        password: impl FnOnce() -> Result<Vec<u8>, RepoError>,
    ) -> Result<Repository, RepoError> {
        Self::open(Arc::new(storage::folder::Folder::new(root.to_path_buf())), password)
    }

    /// Reads the repository's config (is it encrypted? lets the CLI ask for a password only
    /// when needed).
    pub fn read_config(storage: &dyn Storage) -> Result<Config, RepoError> {
        let bytes = match storage.read("config", MAX_CONFIG) {
            Err(StorageError::NotFound(_)) if holds_repository_data(storage)? => {
                return Err(RepoError::ConfigMissing(storage.location()))
            }
            Err(StorageError::NotFound(_)) => return Err(RepoError::NotFound(storage.location())),
            Err(StorageError::NotAFile { why, .. }) => {
                return Err(RepoError::Corrupt(format!("{}: {why}", in_repository(storage, "config"))))
            }
            other => other?,
        };
        Config::parse(&bytes)
    }

    pub fn open(
        storage: Arc<dyn Storage>,
        password: impl FnOnce() -> Result<Vec<u8>, RepoError>,
    ) -> Result<Repository, RepoError> {
        let config = Self::read_config(&*storage)?;
        let keys = config.open_keys(password)?;
        let sealer = Arc::new(if config.is_encrypted() { Sealer::encrypted(&keys.encryption) } else { Sealer::Plain });
        let warnings = Arc::new(Warnings::default());
        let mut repo = Repository {
            index: Index::empty(sealer.clone(), storage.clone(), warnings.clone()),
            storage,
            config,
            keys,
            sealer,
            warnings,
        };
        repo.reload_index()?;
        Ok(repo)
    }

    /// Starts over with the index files on disk now (after a prune deleted some).
    pub fn reload_index(&mut self) -> Result<(), RepoError> {
        self.index = Index::open(self)?;
        Ok(())
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }
    /// Where the repository is, for messages.
    pub fn location(&self) -> String {
        self.storage.location()
    }
    /// The repository's folder, if it is one.
    pub fn local_folder(&self) -> Option<&Path> {
        self.storage.local_folder()
    }
    /// How an object of the repository is named in a message: its path in a folder repository.
    pub fn describe(&self, name: &str) -> String {
        in_repository(&*self.storage, name)
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn chunker_seed(&self) -> u64 {
        self.keys.chunker_seed
    }
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }
    pub fn sealer_arc(&self) -> Arc<Sealer> {
        self.sealer.clone()
    }
    pub fn index(&self) -> &Index {
        &self.index
    }
    /// Where damage found on the way is said (once each).
    pub fn warnings(&self) -> &Arc<Warnings> {
        &self.warnings
    }

    pub fn blob_id(&self, plain: &[u8]) -> BlobId {
        Id(*blake3::keyed_hash(&self.keys.blob_id, plain).as_bytes())
    }

    /// A hasher whose result is `blob_id` of what it is fed, for data that comes in pieces.
    pub fn blob_id_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.keys.blob_id)
    }

    /// Writes `bytes` to `name` so that it either appears whole or not at all.
    pub fn write_file_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), RepoError> {
        Ok(self.storage.write(name, bytes)?)
    }

    /// Reads `len` bytes at `offset` of pack `pack` into `out`; returns where they lie in it.
    fn read_pack(
        &self,
        pack: &PackId,
        offset: u64,
        len: usize,
        reuse: Reuse,
        out: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>, RepoError> {
        self.storage.read_range(&pack_name(pack), offset, len, reuse, out).map_err(|e| pack_error(pack, e))
    }

    /// Compresses (when that helps) and seals one blob for a pack.
    pub fn encode_blob(&self, kind: BlobKind, id: &BlobId, plain: &[u8]) -> Vec<u8> {
        let level = self.config.compression_level;
        let compressed = if level > 0 && worth_compressing(plain) {
            COMPRESSOR.with(|c| c.borrow_mut().compress(level, plain))
        } else {
            None
        };
        let aad = blob_aad(kind, id);
        match compressed {
            Some(compressed) if compressed.len() < plain.len() => self.sealer.seal_parts(&[&[1], &compressed], &aad),
            _ if self.config.format_version >= 2 && plain.len() > FRAME_LEN => {
                let frames = plain.len().div_ceil(FRAME_LEN);
                let mut out = Vec::with_capacity(plain.len() + frames * self.sealer.overhead());
                for (number, frame) in plain.chunks(FRAME_LEN).enumerate() {
                    self.sealer.seal_into(&mut out, &[frame], &frame_aad(kind, id, number));
                }
                out
            }
            _ => self.sealer.seal_parts(&[&[0], plain], &aad),
        }
    }

    /// How a blob of `raw_len` plain bytes stored in `len` bytes is laid out: the lengths (both in
    /// the index and in pack footers) tell, because each layout adds a different overhead.
    pub fn layout(&self, len: u32, raw_len: u32) -> Layout {
        let (len, raw_len, overhead) = (len as usize, raw_len as usize, self.sealer.overhead());
        let frames = raw_len.div_ceil(FRAME_LEN);
        if frames > 1 && len == raw_len + frames * overhead {
            Layout::Framed { frames: frames as u32 }
        } else {
            Layout::Whole { raw: len == raw_len + 1 + overhead }
        }
    }

    /// Opens, decompresses and verifies one stored blob: the bytes returned are exactly the ones
    /// whose keyed hash is `id`, or an error. `stored` is decrypted where it lies.
    pub fn decode_blob(
        &self,
        kind: BlobKind,
        id: &BlobId,
        raw_len: u32,
        stored: &mut [u8],
    ) -> Result<Vec<u8>, RepoError> {
        let mut decompressed = Vec::new();
        match self.open_stored(kind, id, raw_len, stored, &mut decompressed)? {
            Opened::In(range) => Ok(stored[range].to_vec()),
            Opened::Decompressed => Ok(decompressed),
        }
    }

    /// Opens and verifies one stored blob where it lies: an uncompressed blob's plain bytes are
    /// gathered at the front of `stored` and their range returned; a compressed one is
    /// decompressed into `decompressed`.
    pub fn open_stored(
        &self,
        kind: BlobKind,
        id: &BlobId,
        raw_len: u32,
        stored: &mut [u8],
        decompressed: &mut Vec<u8>,
    ) -> Result<Opened, RepoError> {
        let opened = if let Layout::Framed { .. } = self.layout(stored.len() as u32, raw_len) {
            let whole = 0..stored.len();
            Opened::In(0..self.open_frames_in_place(kind, id, 0, stored, whole)?)
        } else {
            let range = self.open_blob(kind, id, stored)?;
            match stored[range.clone()].split_first() {
                Some((0, _)) => Opened::In(range.start + 1..range.end),
                _ => {
                    self.decompress_blob(id, &stored[range], raw_len, decompressed)?;
                    Opened::Decompressed
                }
            }
        };
        let plain = match &opened {
            Opened::In(range) => &stored[range.clone()],
            Opened::Decompressed => &decompressed[..],
        };
        self.verify_blob(id, raw_len, plain)?;
        Ok(opened)
    }

    /// Loads a blob by id through the index into `out` (replacing what it held, reusing its
    /// memory), verified like `decode_blob`. A blob stored uncompressed is read straight into
    /// `out` and opened there, so it costs no other buffer and no copy between buffers; this is
    /// what lets the mount recycle its cache's buffers instead of mapping fresh memory per chunk.
    pub fn load_blob_into(&self, id: &BlobId, out: &mut Vec<u8>) -> Result<(), RepoError> {
        self.at_location(id, |location| self.load_from(id, location, out))
    }

    /// Calls `read` with where blob `id` is stored; if that copy is missing or damaged, with
    /// each other copy the index knows in turn. If every copy failed, the index is read again
    /// and the new copies tried: while this repository is open (by a mount), a prune moves live
    /// blobs to new packs before it deletes the old ones, and `repair packs` and a backup store
    /// a damaged blob again. Last come copies no index names, from every pack's own list: an
    /// index names one copy per blob.
    fn at_location<T>(
        &self,
        id: &BlobId,
        mut read: impl FnMut(&index::BlobLocation) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        let mut first_error = None;
        let mut tried = Vec::new();
        for attempt in 0..4 {
            let locations = match attempt {
                0 => self.index.get(id)?.into_iter().collect(),
                1 => self.index.locations(id)?,
                2 => {
                    self.index.resync()?;
                    self.index.locations_everywhere(id)?
                }
                _ => self.index.copies_in_every_pack(id)?,
            };
            for location in locations {
                if tried.contains(&location) {
                    continue;
                }
                match read(&location) {
                    Ok(value) => return Ok(value),
                    Err(e) if first_error.is_none() => first_error = Some(e),
                    Err(_) => {}
                }
                tried.push(location);
            }
        }
        Err(first_error.unwrap_or(RepoError::MissingBlob(*id)))
    }

    fn load_from(&self, id: &BlobId, location: &index::BlobLocation, out: &mut Vec<u8>) -> Result<(), RepoError> {
        let (pack, offset, len) = (&location.pack, location.offset as u64, location.len as usize);
        // Folder listings are read again and again (every walk passes through them).
        let reuse = if location.kind == BlobKind::Tree { Reuse::Again } else { Reuse::Once };
        match self.layout(location.len, location.raw_len) {
            Layout::Whole { raw: false } => {
                let mut read_compressed = |stored: &mut Vec<u8>| -> Result<(), RepoError> {
                    let bytes = self.read_pack(pack, offset, len, reuse, stored)?;
                    let at = bytes.start;
                    let range = self.open_blob(location.kind, id, &mut stored[bytes])?;
                    self.decompress_blob(id, &stored[at + range.start..at + range.end], location.raw_len, out)
                };
                if len > SCRATCH_MAX {
                    read_compressed(&mut Vec::new())?;
                } else {
                    SCRATCH.with(|scratch| read_compressed(&mut scratch.borrow_mut()))?;
                }
            }
            Layout::Whole { raw: true } => {
                let bytes = self.read_pack(pack, offset, len, reuse, out)?;
                let at = bytes.start;
                let range = self.open_blob(location.kind, id, &mut out[bytes])?;
                if out[at + range.start] != 0 {
                    return Err(RepoError::Corrupt(format!("blob {id}: encoding does not match its size")));
                }
                out.copy_within(at + range.start + 1..at + range.end, 0);
                out.truncate(range.len() - 1);
            }
            Layout::Framed { .. } => {
                let bytes = self.read_pack(pack, offset, len, reuse, out)?;
                let plain = self.open_frames_in_place(location.kind, id, 0, out, bytes)?;
                out.truncate(plain);
            }
        }
        self.verify_blob(id, location.raw_len, out)
    }

    /// How many frames blob `id` is stored in, if it is framed (see `FRAME_LEN`).
    pub fn frames_of(&self, id: &BlobId) -> Result<Option<u32>, RepoError> {
        let location = self.index.get(id)?.ok_or(RepoError::MissingBlob(*id))?;
        Ok(match self.layout(location.len, location.raw_len) {
            Layout::Framed { frames } => Some(frames),
            Layout::Whole { .. } => None,
        })
    }

    /// Loads frame `number` of a framed blob (its plain bytes from `number * FRAME_LEN` on) into
    /// `out`. The frame's envelope authenticates it as that frame of that blob; the hash of the
    /// whole blob is checked when the whole blob is loaded (and by `check --read-data`).
    pub fn load_frame(&self, id: &BlobId, number: u32, out: &mut Vec<u8>) -> Result<(), RepoError> {
        self.at_location(id, |location| self.frame_from(id, location, number, out))
    }

    fn frame_from(
        &self,
        id: &BlobId,
        location: &index::BlobLocation,
        number: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), RepoError> {
        let Layout::Framed { frames } = self.layout(location.len, location.raw_len) else {
            return Err(RepoError::Corrupt(format!("blob {id} is not stored in frames")));
        };
        if number >= frames {
            return Err(RepoError::Corrupt(format!("blob {id} has no frame {number}")));
        }
        let step = FRAME_LEN + self.sealer.overhead();
        let start = number as usize * step;
        let len = step.min(location.len as usize - start);
        let bytes = self.read_pack(&location.pack, location.offset as u64 + start as u64, len, Reuse::Once, out)?;
        let plain = self.open_frames_in_place(location.kind, id, number as usize, out, bytes)?;
        out.truncate(plain);
        let expected = FRAME_LEN.min(location.raw_len as usize - number as usize * FRAME_LEN);
        if out.len() != expected {
            return Err(RepoError::Corrupt(format!("blob {id}: frame {number} has the wrong length")));
        }
        Ok(())
    }

    /// Opens consecutive frames (the first being frame `first`) where they lie, in
    /// `buffer[stored]`, and moves their plain bytes together to the front of `buffer`; returns
    /// how many there are.
    fn open_frames_in_place(
        &self,
        kind: BlobKind,
        id: &BlobId,
        first: usize,
        buffer: &mut [u8],
        stored: std::ops::Range<usize>,
    ) -> Result<usize, RepoError> {
        let step = FRAME_LEN + self.sealer.overhead();
        let mut plain_end = 0;
        for (at, number) in stored.clone().step_by(step).zip(first..) {
            let end = (at + step).min(stored.end);
            let range = self.open_frame(kind, id, number, &mut buffer[at..end])?;
            buffer.copy_within(at + range.start..at + range.end, plain_end);
            plain_end += range.len();
        }
        Ok(plain_end)
    }

    fn open_frame(
        &self,
        kind: BlobKind,
        id: &BlobId,
        number: usize,
        frame: &mut [u8],
    ) -> Result<std::ops::Range<usize>, RepoError> {
        self.sealer
            .open_in_place(frame, &frame_aad(kind, id, number))
            .map_err(|e| RepoError::Corrupt(format!("blob {id}, frame {number}: {e}")))
    }

    /// Loads a blob by id through the index.
    pub fn load_blob(&self, id: &BlobId) -> Result<Vec<u8>, RepoError> {
        let mut plain = Vec::new();
        self.load_blob_into(id, &mut plain)?;
        Ok(plain)
    }

    fn open_blob(&self, kind: BlobKind, id: &BlobId, stored: &mut [u8]) -> Result<std::ops::Range<usize>, RepoError> {
        self.sealer
            .open_in_place(stored, &blob_aad(kind, id))
            .map_err(|e| RepoError::Corrupt(format!("blob {id}: {e}")))
    }

    /// Decompresses an opened blob (encoding byte first) into `out`.
    fn decompress_blob(&self, id: &BlobId, opened: &[u8], raw_len: u32, out: &mut Vec<u8>) -> Result<(), RepoError> {
        let Some((1, compressed)) = opened.split_first() else {
            return Err(RepoError::Corrupt(format!("blob {id}: unknown encoding")));
        };
        out.clear();
        out.reserve(raw_len as usize);
        DECOMPRESSOR
            .with(|d| d.borrow_mut().decompress_to_buffer(compressed, out))
            .map_err(|e| RepoError::Corrupt(format!("blob {id}: cannot decompress: {e}")))?;
        Ok(())
    }

    fn verify_blob(&self, id: &BlobId, raw_len: u32, plain: &[u8]) -> Result<(), RepoError> {
        if plain.len() != raw_len as usize || self.blob_id(plain) != *id {
            return Err(RepoError::Corrupt(format!("blob {id}: content does not match its hash")));
        }
        Ok(())
    }

    /// Read whole chunks past the page cache (a folder's; see `storage::file_reads`): for the
    /// mount, which keeps what it reads in its own cache.
    pub fn read_chunks_directly(&self) {
        self.storage.read_directly();
    }

    pub fn read_pack_range(&self, pack: &PackId, offset: u64, len: usize) -> Result<Vec<u8>, RepoError> {
        let mut buf = Vec::new();
        let bytes = self.read_pack(pack, offset, len, Reuse::Once, &mut buf)?;
        buf.truncate(bytes.end);
        buf.drain(..bytes.start);
        Ok(buf)
    }

    /// A whole pack (for `check --read-data`).
    pub fn read_whole_pack(&self, pack: &PackId) -> Result<Vec<u8>, RepoError> {
        self.storage
            .read(&pack_name(pack), config::MAX_PACK_SIZE + MAX_STORED as u64 + (1 << 20))
            .map_err(|e| pack_error(pack, e))
    }

    /// Every pack present, with its size.
    pub fn list_packs(&self) -> Result<Vec<(PackId, u64)>, RepoError> {
        pack::list_packs(&*self.storage)
    }

    /// Objects named like packs in the wrong `data/xx/` folder, or not regular files.
    pub fn misplaced_packs(&self) -> Result<Vec<Object>, RepoError> {
        pack::misplaced_packs(&*self.storage)
    }

    /// Names in `tmp/`: leftovers of interrupted writes, harmless and removed by `prune`.
    pub fn list_temp_files(&self) -> Result<Vec<String>, RepoError> {
        Ok(children(&*self.storage, "tmp")?.into_iter().map(|o| o.name).collect())
    }

    /// Removes object `name`; one already gone is no error.
    pub fn remove(&self, name: &str) -> Result<(), RepoError> {
        Ok(self.storage.delete(name)?)
    }

    /// Moves `name` (a file of the repository) to `damaged/<kind>/<its last name>`, durably:
    /// damaged files are kept for the user, never deleted.
    pub fn move_aside(&self, name: &str, kind: &str) -> Result<(), RepoError> {
        let last = name.rsplit('/').next().expect("names have a last part");
        Ok(self.storage.set_aside(name, &format!("{DAMAGED_DIR}/{kind}/{last}"))?)
    }

    /// Removes every index file but `keep` (what is not a file there is moved aside), then makes
    /// the removals durable before anything they named is deleted. Returns how many it removed.
    pub fn remove_index_files_but(&self, keep: &Id) -> Result<u64, RepoError> {
        let keep = format!("index/{}", keep.to_hex());
        let mut removed = 0;
        for object in children(&*self.storage, "index")? {
            let is_index = object.name.strip_prefix("index/").and_then(Id::from_hex).is_some();
            // What is not named like an index file is not one: left for the user.
            if object.name == keep || !is_index {
                continue;
            }
            if object.regular {
                self.remove(&object.name)?;
            } else {
                self.move_aside(&object.name, "index")?;
            }
            removed += 1;
        }
        self.storage.sync_deletions("index")?;
        Ok(removed)
    }

    /// Bytes free where the repository is stored, where that is known.
    pub fn free_space(&self) -> Option<u64> {
        self.storage.free_space()
    }

    /// What this process has asked of an object store so far (None for a folder).
    pub fn traffic(&self) -> Option<storage::Traffic> {
        self.storage.traffic()
    }
}

/// How object `name` is named in a message: a path in a folder repository, else its location
/// and name.
pub fn in_repository(storage: &dyn Storage, name: &str) -> String {
    match storage.local_folder() {
        Some(root) => root.join(name).display().to_string(),
        None => format!("{}/{name}", storage.location()),
    }
}

/// A pack read's failure, said of the pack.
fn pack_error(pack: &PackId, error: StorageError) -> RepoError {
    match error {
        StorageError::NotFound(_) => RepoError::MissingPack(*pack),
        StorageError::Truncated { .. } => RepoError::Corrupt(format!("pack {pack} is truncated")),
        StorageError::NotAFile { why, .. } => RepoError::Corrupt(format!("pack {pack}: {why}")),
        other => other.into(),
    }
}

/// The objects right inside `dir/` (not in folders below it).
pub(crate) fn children(storage: &dyn Storage, dir: &str) -> Result<Vec<Object>, RepoError> {
    let depth = dir.matches('/').count() + 1;
    Ok(storage.list(dir)?.into_iter().filter(|o| o.name.matches('/').count() == depth).collect())
}

/// Does `storage` hold packs, index files or snapshot records (of a repository whose config is
/// gone)?
fn holds_repository_data(storage: &dyn Storage) -> Result<bool, RepoError> {
    for dir in ["data", "index", "snapshots"] {
        if !storage.list(dir)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn blob_aad(kind: BlobKind, id: &BlobId) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[0] = kind.tag();
    aad[1..].copy_from_slice(&id.0);
    aad
}

/// A frame's associated data: the blob's, then the frame number, so that frames cannot be
/// swapped, moved to another blob or passed off as a whole blob.
fn frame_aad(kind: BlobKind, id: &BlobId, number: usize) -> [u8; 37] {
    let mut aad = [0u8; 37];
    aad[..33].copy_from_slice(&blob_aad(kind, id));
    aad[33..].copy_from_slice(&(number as u32).to_le_bytes());
    aad
}

/// How a stored blob is laid out (see docs/FORMAT.md, "Blobs").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Layout {
    /// One envelope: an encoding byte (0 stored as is, 1 zstd) and the payload.
    Whole { raw: bool },
    /// `frames` envelopes of `FRAME_LEN` plain bytes each (the last one shorter).
    Framed { frames: u32 },
}

/// Small blobs are always worth a try; big ones only when a sample of them shrinks.
fn worth_compressing(plain: &[u8]) -> bool {
    if plain.len() <= SAMPLE_FIRST_ABOVE {
        return true;
    }
    let sample = &plain[..SAMPLE_LEN];
    match COMPRESSOR.with(|c| c.borrow_mut().compress(1, sample)) {
        Some(out) => out.len() < sample.len() * 97 / 100,
        None => false,
    }
}

/// zstd contexts are costly to create; one per thread serves every blob it handles.
struct CachedCompressor {
    level: i32,
    inner: Option<zstd::bulk::Compressor<'static>>,
}

impl CachedCompressor {
    fn compress(&mut self, level: i32, data: &[u8]) -> Option<Vec<u8>> {
        if self.inner.is_none() || self.level != level {
            self.inner = zstd::bulk::Compressor::new(level).ok();
            self.level = level;
        }
        self.inner.as_mut()?.compress(data).ok()
    }
}

thread_local! {
    /// Where `load_blob` reads sealed blobs; reused, so loading allocates only the result.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static COMPRESSOR: RefCell<CachedCompressor> = const { RefCell::new(CachedCompressor { level: 0, inner: None }) };
    static DECOMPRESSOR: RefCell<zstd::bulk::Decompressor<'static>> =
        RefCell::new(zstd::bulk::Decompressor::new().expect("zstd decompressor"));
}
