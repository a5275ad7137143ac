//! Pack files: many sealed blobs in one file, so a phone's hundred thousand small files are not a
//! hundred thousand repository files. Layout (docs/FORMAT.md):
//! `PBPACK01` | blob* | sealed footer (the blob list) | footer length u32 LE | `PBPKEND1`.
//! A pack is named by the BLAKE3 hash of its whole content.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::crypto::Sealer;
use super::packfiles::pack_path;
use super::{
    fsutil, io_error, read_dir_sorted, BlobId, BlobKind, Id, PackId, RepoError, Repository, MAX_BLOB, MAX_STORED,
};

pub const PACK_MAGIC: &[u8; 8] = b"PBPACK01";
const PACK_END: &[u8; 8] = b"PBPKEND1";
const FOOTER_AAD: &[u8] = b"phonebak pack footer";
pub(crate) const TRAILER_LEN: usize = 12;

/// Where one blob sits in its pack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackEntry {
    pub id: BlobId,
    pub kind: BlobKind,
    pub offset: u32,
    pub len: u32,
    pub raw_len: u32,
}

impl PackEntry {
    /// Where this entry of pack `pack`'s own list says its blob is.
    pub fn located_in(&self, pack: &PackId) -> super::index::BlobLocation {
        super::index::BlobLocation {
            id: self.id,
            kind: self.kind,
            pack: *pack,
            offset: self.offset,
            len: self.len,
            raw_len: self.raw_len,
        }
    }
}

/// A pack that is complete, synced and in place.
pub struct FinishedPack {
    pub id: PackId,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

pub struct PackWriter {
    tmp_path: PathBuf,
    file: Option<BufWriter<File>>,
    hasher: blake3::Hasher,
    entries: Vec<PackEntry>,
    offset: u64,
}

impl PackWriter {
    pub fn create(repo: &Repository) -> Result<PackWriter, RepoError> {
        let tmp_path = repo.path("tmp").join(format!("{}.pack", Id::random().to_hex()));
        let file = fsutil::create_private(&tmp_path).map_err(io_error("creating a pack file"))?;
        let mut writer = PackWriter {
            tmp_path,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            hasher: blake3::Hasher::new(),
            entries: Vec::new(),
            offset: 0,
        };
        writer.write(PACK_MAGIC)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), RepoError> {
        let file = self.file.as_mut().expect("pack writer used after finish");
        file.write_all(bytes).map_err(io_error("writing a pack file"))?;
        self.hasher.update(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    pub fn add(&mut self, id: BlobId, kind: BlobKind, stored: &[u8], raw_len: u32) -> Result<(), RepoError> {
        let entry = PackEntry { id, kind, offset: self.offset as u32, len: stored.len() as u32, raw_len };
        self.write(stored)?;
        self.entries.push(entry);
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the footer and flushes; the pack is complete but not yet durable nor in place.
    pub fn seal(mut self, repo: &Repository) -> Result<SealedPack, RepoError> {
        let footer_plain =
            bincode::serde::encode_to_vec(&self.entries, bincode::config::standard()).expect("pack entries serialize");
        let footer = repo.sealer().seal(&footer_plain, FOOTER_AAD);
        self.write(&footer)?;
        let mut trailer = [0u8; TRAILER_LEN];
        trailer[..4].copy_from_slice(&(footer.len() as u32).to_le_bytes());
        trailer[4..].copy_from_slice(PACK_END);
        self.write(&trailer)?;
        let file = self.file.take().expect("pack writer used after finish");
        let file = file.into_inner().map_err(|e| io_error("writing a pack file")(e.into_error()))?;
        let id = Id(*self.hasher.finalize().as_bytes());
        Ok(SealedPack {
            file,
            tmp_path: std::mem::take(&mut self.tmp_path),
            final_path: repo.pack_path(&id),
            pack: FinishedPack { id, size: self.offset, entries: std::mem::take(&mut self.entries) },
        })
    }
}

impl Drop for PackWriter {
    /// An abandoned pack (error, interrupted backup) leaves no temp file behind; a sealed one has
    /// handed its path on.
    fn drop(&mut self) {
        remove_temp(&self.tmp_path);
    }
}

fn remove_temp(path: &std::path::Path) {
    if !path.as_os_str().is_empty() {
        let _ = std::fs::remove_file(path);
    }
}

/// A complete pack in `tmp/`, waiting to be synced and renamed into place. Publishing is kept
/// apart so that it can run on another thread while the next pack is written.
pub struct SealedPack {
    file: File,
    tmp_path: PathBuf,
    final_path: PathBuf,
    pack: FinishedPack,
}

impl SealedPack {
    pub fn publish(mut self) -> Result<FinishedPack, RepoError> {
        self.file.sync_all().map_err(io_error("syncing a pack file"))?;
        fsutil::crash_point("sync", &self.tmp_path);
        fsutil::publish(&self.tmp_path, &self.final_path).map_err(io_error("storing a pack file"))?;
        self.tmp_path = PathBuf::new();
        Ok(FinishedPack { id: self.pack.id, size: self.pack.size, entries: std::mem::take(&mut self.pack.entries) })
    }
}

impl Drop for SealedPack {
    /// A pack that could not be synced or renamed (full disk) leaves no temp file behind.
    fn drop(&mut self) {
        remove_temp(&self.tmp_path);
    }
}

/// Reads a pack's own list of its blobs (used by `check` and to rebuild lost indexes).
pub fn read_footer(repo: &Repository, pack: &PackId) -> Result<Vec<PackEntry>, RepoError> {
    read_footer_at(repo.sealer(), &repo.pack_path(pack), pack)
}

/// Reads the footer of the pack file at `path`, checking its magic numbers and bounds, and
/// that every blob it lists lies inside the pack.
pub fn read_footer_at(sealer: &Sealer, path: &Path, pack: &PackId) -> Result<Vec<PackEntry>, RepoError> {
    let damaged = |why: &str| RepoError::Corrupt(format!("pack {pack}: {why}"));
    let file = fsutil::open_regular(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => RepoError::MissingPack(*pack),
        std::io::ErrorKind::InvalidData => damaged("not a regular file"),
        _ => io_error(format!("opening {}", path.display()))(e),
    })?;
    let size = file.metadata().map_err(io_error(format!("reading {}", path.display())))?.len();
    if size < (PACK_MAGIC.len() + TRAILER_LEN) as u64 {
        return Err(damaged("too short"));
    }
    let mut trailer = [0u8; TRAILER_LEN];
    file.read_exact_at(&mut trailer, size - TRAILER_LEN as u64)
        .map_err(io_error(format!("reading {}", path.display())))?;
    let footer_len = parse_trailer(&trailer, size).map_err(damaged)? as u64;
    let mut magic = [0u8; 8];
    file.read_exact_at(&mut magic, 0).map_err(io_error(format!("reading {}", path.display())))?;
    if &magic != PACK_MAGIC {
        return Err(damaged("not a pack file (wrong magic number)"));
    }
    let mut footer = vec![0u8; footer_len as usize];
    let footer_at = size - TRAILER_LEN as u64 - footer_len;
    file.read_exact_at(&mut footer, footer_at).map_err(io_error(format!("reading {}", path.display())))?;
    let plain = sealer.open(&footer, FOOTER_AAD).map_err(|e| damaged(&format!("footer: {e}")))?;
    parse_footer(&plain, footer_at).map_err(damaged)
}

/// Reads a pack's trailer (its last `TRAILER_LEN` bytes, of a file of `size` bytes): the
/// footer's length.
pub(crate) fn parse_trailer(trailer: &[u8; TRAILER_LEN], size: u64) -> Result<u32, &'static str> {
    if size < (PACK_MAGIC.len() + TRAILER_LEN) as u64 {
        return Err("too short");
    }
    if &trailer[4..] != PACK_END {
        return Err("no end marker (truncated?)");
    }
    let footer_len = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
    if footer_len as u64 + (TRAILER_LEN + PACK_MAGIC.len()) as u64 > size {
        return Err("footer length out of range");
    }
    Ok(footer_len)
}

/// Decodes and validates an opened pack footer whose footer starts at `footer_at`: every blob
/// lies between the magic number and the footer, with bounded lengths.
pub(crate) fn parse_footer(plain: &[u8], footer_at: u64) -> Result<Vec<PackEntry>, &'static str> {
    let entries: Vec<PackEntry> = super::decode_record(plain).map_err(|_| "footer does not decode")?;
    let inside = entries.iter().all(|e| {
        e.offset as u64 >= PACK_MAGIC.len() as u64
            && e.offset as u64 + e.len as u64 <= footer_at
            && e.raw_len <= MAX_BLOB
            && e.len <= MAX_STORED
    });
    if !inside {
        return Err("footer lists a blob outside the pack");
    }
    Ok(entries)
}

/// Every pack file under `data` (the repository's `data/` folder), with its size.
pub fn list_packs(data: &Path) -> Result<Vec<(PackId, u64)>, RepoError> {
    Ok(scan_packs(data)?.0)
}

/// Files named like packs that are not where a pack of that name lives (another `data/xx/`
/// folder) or are not regular files: no command uses them; `check` names them.
pub fn misplaced_packs(data: &Path) -> Result<Vec<PathBuf>, RepoError> {
    Ok(scan_packs(data)?.1)
}

/// The packs in `data` with their sizes, and the misplaced files named like packs.
type PackScan = (Vec<(PackId, u64)>, Vec<PathBuf>);

fn scan_packs(data: &Path) -> Result<PackScan, RepoError> {
    let (mut packs, mut misplaced) = (Vec::new(), Vec::new());
    let subs = match read_dir_sorted(data) {
        Err(RepoError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok((packs, misplaced))
        }
        other => other?,
    };
    // Only `<2 hex digits>/<64 hex digits>` is a pack: anything else a user or a sync tool left
    // there (a file, `.DS_Store`) is no reason to refuse the whole repository.
    let is_prefix = |p: &PathBuf| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit()) && p.is_dir()
    };
    for sub in subs.into_iter().filter(is_prefix) {
        for file in read_dir_sorted(&sub)? {
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let Some(id) = Id::from_hex(name) else { continue };
            if !file.is_file() || file != pack_path(data, &id) {
                misplaced.push(file);
                continue;
            }
            let size = std::fs::metadata(&file).map_err(io_error(format!("reading {}", file.display())))?.len();
            packs.push((id, size));
        }
    }
    Ok((packs, misplaced))
}
