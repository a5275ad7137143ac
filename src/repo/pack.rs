//! Pack files: many sealed blobs in one file, so a phone's hundred thousand small files are not a
//! hundred thousand repository files. Layout (docs/FORMAT.md):
//! `PBPACK01` | blob* | sealed footer (the blob list) | footer length u32 LE | `PBPKEND1`.
//! A pack is named by the BLAKE3 hash of its whole content.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::crypto::Sealer;
use super::storage::{Object, Reuse, Storage, StorageError, Upload};
use super::{pack_error, pack_name, BlobId, BlobKind, Id, PackId, RepoError, Repository, MAX_BLOB, MAX_STORED};

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

/// A pack being written: an upload that takes its name (its hash) when it is complete, and
/// leaves nothing behind if it never is.
pub struct PackWriter {
    upload: Box<dyn Upload>,
    hasher: blake3::Hasher,
    entries: Vec<PackEntry>,
    offset: u64,
}

impl PackWriter {
    pub fn create(repo: &Repository) -> Result<PackWriter, RepoError> {
        let upload = repo.storage().upload()?;
        let mut writer = PackWriter { upload, hasher: blake3::Hasher::new(), entries: Vec::new(), offset: 0 };
        writer.write(PACK_MAGIC)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), RepoError> {
        self.upload.write_all(bytes).map_err(|e| match (e.raw_os_error(), self.upload.waits_in()) {
            (Some(libc::ENOSPC) | Some(libc::EDQUOT), Some(folder)) => RepoError::NoTempSpace(folder),
            _ => super::io_error("writing a pack file")(e),
        })?;
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
        let id = Id(*self.hasher.finalize().as_bytes());
        Ok(SealedPack { upload: self.upload, pack: FinishedPack { id, size: self.offset, entries: self.entries } })
    }
}

/// A complete pack, waiting to be made durable and put in place under its name. Publishing is
/// kept apart so that it can run on another thread while the next pack is written. Dropped
/// unpublished (full disk, error), it leaves nothing behind.
pub struct SealedPack {
    upload: Box<dyn Upload>,
    pack: FinishedPack,
}

impl SealedPack {
    pub fn publish(self) -> Result<FinishedPack, RepoError> {
        self.upload.finish(&pack_name(&self.pack.id))?;
        Ok(self.pack)
    }
}

/// Reads a pack's own list of its blobs (used by `check` and to rebuild lost indexes).
pub fn read_footer(repo: &Repository, pack: &PackId) -> Result<Vec<PackEntry>, RepoError> {
    read_footer_in(repo.sealer(), &**repo.storage(), pack)
}

/// How much of a pack's end is read at once: its trailer and, mostly, its whole footer (an
/// object store answers one request where three would do).
const TAIL_READ: u64 = 64 * 1024;

/// Reads the footer of pack `pack` in `storage`, checking its magic numbers and bounds, and
/// that every blob it lists lies inside the pack.
pub fn read_footer_in(sealer: &Sealer, storage: &dyn Storage, pack: &PackId) -> Result<Vec<PackEntry>, RepoError> {
    let damaged = |why: &str| RepoError::Corrupt(format!("pack {pack}: {why}"));
    let name = pack_name(pack);
    let read = |offset: u64, len: u64| -> Result<Vec<u8>, RepoError> {
        let mut out = Vec::new();
        let at =
            storage.read_range(&name, offset, len as usize, Reuse::Once, &mut out).map_err(|e| pack_error(pack, e))?;
        out.truncate(at.end);
        out.drain(..at.start);
        Ok(out)
    };
    let size = storage.size(&name).map_err(|e| pack_error(pack, e))?;
    if size < (PACK_MAGIC.len() + TRAILER_LEN) as u64 {
        return Err(damaged("too short"));
    }
    let tail_at = size.saturating_sub(TAIL_READ);
    let tail = read(tail_at, size - tail_at)?;
    let trailer: &[u8; TRAILER_LEN] = tail[tail.len() - TRAILER_LEN..].try_into().expect("trailer length");
    let footer_len = parse_trailer(trailer, size).map_err(damaged)? as u64;
    let magic = if tail_at == 0 { tail[..PACK_MAGIC.len()].to_vec() } else { read(0, PACK_MAGIC.len() as u64)? };
    if magic != PACK_MAGIC {
        return Err(damaged("not a pack file (wrong magic number)"));
    }
    let footer_at = size - TRAILER_LEN as u64 - footer_len;
    let footer = if footer_at >= tail_at {
        tail[(footer_at - tail_at) as usize..tail.len() - TRAILER_LEN].to_vec()
    } else {
        read(footer_at, footer_len)?
    };
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

/// Every pack in `storage`, with its size.
pub fn list_packs(storage: &dyn Storage) -> Result<Vec<(PackId, u64)>, RepoError> {
    Ok(scan_packs(storage)?.0)
}

/// Objects named like packs that are not where a pack of that name lives (another `data/xx/`
/// folder) or are not regular files: no command uses them; `check` names them.
pub fn misplaced_packs(storage: &dyn Storage) -> Result<Vec<Object>, RepoError> {
    Ok(scan_packs(storage)?.1)
}

/// The packs with their sizes, and the misplaced objects named like packs.
type PackScan = (Vec<(PackId, u64)>, Vec<Object>);

fn scan_packs(storage: &dyn Storage) -> Result<PackScan, RepoError> {
    let (mut packs, mut misplaced) = (Vec::new(), Vec::new());
    let objects = match storage.list("data") {
        Err(StorageError::NotFound(_)) => return Ok((packs, misplaced)),
        other => other?,
    };
    // Only `data/<2 hex digits>/<64 hex digits>` is a pack: anything else a user or a sync tool
    // left there (a file, `.DS_Store`) is no reason to refuse the whole repository.
    for object in objects {
        let parts: Vec<&str> = object.name.split('/').collect();
        let [_, prefix, last] = parts[..] else { continue };
        let is_prefix = prefix.len() == 2 && prefix.bytes().all(|b| b.is_ascii_hexdigit());
        let Some(id) = Id::from_hex(last).filter(|_| is_prefix) else { continue };
        if !object.regular || object.name != pack_name(&id) {
            misplaced.push(object);
            continue;
        }
        packs.push((id, object.size));
    }
    Ok((packs, misplaced))
}
