//! The index: where each blob lives. Index files are sorted and split into separately sealed
//! pages, with a small header listing each page's first id, so opening the index reads only
//! headers and a lookup reads one page. Layout (docs/FORMAT.md):
//! `PBIDX001` | sealed page* | sealed header | header offset u64 LE | header length u32 LE | `PBIDXEND`.

use std::collections::HashSet;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use lru::LruCache;
use serde::{Deserialize, Serialize};

use super::crypto::Sealer;
use super::pack::PackEntry;
use super::{io_error, read_dir_sorted, BlobId, BlobKind, Id, PackId, RepoError, Repository};

const INDEX_MAGIC: &[u8; 8] = b"PBIDX001";
const INDEX_END: &[u8; 8] = b"PBIDXEND";
const TRAILER_LEN: usize = 20;
const ENTRIES_PER_PAGE: usize = 512;
const HEADER_AAD: &[u8] = b"phonebak index header";
const CACHED_PAGES: usize = 512;

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct IndexEntry {
    id: BlobId,
    kind: BlobKind,
    /// Position in the header's pack list.
    pack: u32,
    offset: u32,
    len: u32,
    raw_len: u32,
}

#[derive(Serialize, Deserialize)]
struct Header {
    packs: Vec<PackId>,
    pages: Vec<PageRef>,
    entries: u64,
}

#[derive(Serialize, Deserialize)]
struct PageRef {
    first: BlobId,
    offset: u64,
    len: u32,
}

/// Where a blob is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct BlobLocation {
    pub id: BlobId,
    pub kind: BlobKind,
    pub pack: PackId,
    pub offset: u32,
    pub len: u32,
    pub raw_len: u32,
}

struct IndexFile {
    id: Id,
    file: File,
    header: Header,
}

type PageCache = LruCache<(Id, usize), Arc<Vec<IndexEntry>>>;

/// All index files of a repository. New files written by others (a backup while a mount is
/// open) are picked up on the first lookup that misses.
pub struct Index {
    sealer: Arc<Sealer>,
    dir: PathBuf,
    files: RwLock<Vec<Arc<IndexFile>>>,
    pages: Mutex<PageCache>,
}

fn page_aad(number: usize) -> Vec<u8> {
    format!("phonebak index page {number}").into_bytes()
}

fn damaged(file: &Id, why: &str) -> RepoError {
    RepoError::Corrupt(format!("index file {file}: {why}"))
}

impl Index {
    pub fn empty(sealer: Arc<Sealer>, dir: PathBuf) -> Index {
        Index {
            sealer,
            dir,
            files: RwLock::new(Vec::new()),
            pages: Mutex::new(LruCache::new(NonZeroUsize::new(CACHED_PAGES).expect("nonzero"))),
        }
    }

    /// Reads every index file's header (a few bytes per thousand blobs), nothing more.
    pub fn open(repo: &Repository) -> Result<Index, RepoError> {
        let index = Index::empty(repo.sealer_arc(), repo.path("index"));
        index.refresh()?;
        Ok(index)
    }

    /// Opens index files that appeared since the last look; says whether there were any.
    pub fn refresh(&self) -> Result<bool, RepoError> {
        let known: HashSet<Id> = self.file_ids().into_iter().collect();
        let mut added = Vec::new();
        for path in read_dir_sorted(&self.dir)? {
            let Some(id) = path.file_name().and_then(|n| n.to_str()).and_then(Id::from_hex) else { continue };
            if !known.contains(&id) {
                added.push(Arc::new(open_file(&self.sealer, id, &path)?));
            }
        }
        let any = !added.is_empty();
        self.files.write().expect("index lock").extend(added);
        Ok(any)
    }

    /// Starts over with the index files on disk now: a prune (run while this repository is
    /// open, e.g. by a mount) replaces index files and moves blobs to new packs, and a deleted
    /// index file still reads through the descriptor held open here.
    pub fn resync(&self) -> Result<(), RepoError> {
        let on_disk: HashSet<Id> = read_dir_sorted(&self.dir)?
            .iter()
            .filter_map(|path| path.file_name().and_then(|n| n.to_str()).and_then(Id::from_hex))
            .collect();
        self.files.write().expect("index lock").retain(|file| on_disk.contains(&file.id));
        self.refresh()?;
        Ok(())
    }

    pub fn file_ids(&self) -> Vec<Id> {
        self.files.read().expect("index lock").iter().map(|f| f.id).collect()
    }

    fn current_files(&self) -> Vec<Arc<IndexFile>> {
        self.files.read().expect("index lock").clone()
    }

    /// Where `id` is stored; a miss looks for index files written since (by a concurrent backup)
    /// before it answers `None`.
    pub fn get(&self, id: &BlobId) -> Result<Option<BlobLocation>, RepoError> {
        if let Some(found) = self.lookup(id)? {
            return Ok(Some(found));
        }
        if self.refresh()? {
            return self.lookup(id);
        }
        Ok(None)
    }

    fn lookup(&self, id: &BlobId) -> Result<Option<BlobLocation>, RepoError> {
        for file in self.current_files() {
            let page_number = file.header.pages.partition_point(|p| p.first <= *id);
            if page_number == 0 {
                continue;
            }
            let page = self.page(&file, page_number - 1)?;
            if let Ok(at) = page.binary_search_by(|e| e.id.cmp(id)) {
                return file.locate(&page[at]).map(Some);
            }
        }
        Ok(None)
    }

    fn page(&self, file: &IndexFile, page_number: usize) -> Result<Arc<Vec<IndexEntry>>, RepoError> {
        let key = (file.id, page_number);
        if let Some(page) = self.pages.lock().expect("index cache lock").get(&key) {
            return Ok(page.clone());
        }
        let page = Arc::new(file.read_page(&self.sealer, page_number)?);
        self.pages.lock().expect("index cache lock").put(key, page.clone());
        Ok(page)
    }

    /// Calls `visit` with every entry of every index file (duplicates included), reading each
    /// page once without caching it: for backup, check and prune, which need them all.
    pub fn for_each(&self, mut visit: impl FnMut(BlobLocation)) -> Result<(), RepoError> {
        for file in self.current_files() {
            for page_number in 0..file.header.pages.len() {
                for entry in file.read_page(&self.sealer, page_number)? {
                    visit(file.locate(&entry)?);
                }
            }
        }
        Ok(())
    }

    pub fn known_blobs(&self) -> Result<HashSet<BlobId>, RepoError> {
        let mut known = HashSet::new();
        self.for_each(|location| {
            known.insert(location.id);
        })?;
        Ok(known)
    }
}

impl IndexFile {
    fn locate(&self, entry: &IndexEntry) -> Result<BlobLocation, RepoError> {
        let pack =
            *self.header.packs.get(entry.pack as usize).ok_or_else(|| damaged(&self.id, "pack number out of range"))?;
        Ok(BlobLocation {
            id: entry.id,
            kind: entry.kind,
            pack,
            offset: entry.offset,
            len: entry.len,
            raw_len: entry.raw_len,
        })
    }

    fn read_page(&self, sealer: &Sealer, number: usize) -> Result<Vec<IndexEntry>, RepoError> {
        let page_ref = &self.header.pages[number];
        let mut sealed = vec![0u8; page_ref.len as usize];
        self.file
            .read_exact_at(&mut sealed, page_ref.offset)
            .map_err(|_| damaged(&self.id, &format!("page {number} cannot be read")))?;
        let plain =
            sealer.open(&sealed, &page_aad(number)).map_err(|e| damaged(&self.id, &format!("page {number}: {e}")))?;
        let (entries, _): (Vec<IndexEntry>, usize) =
            bincode::serde::decode_from_slice(&plain, bincode::config::standard())
                .map_err(|_| damaged(&self.id, &format!("page {number} does not decode")))?;
        let sorted = entries.windows(2).all(|w| w[0].id < w[1].id);
        if entries.first().map(|e| e.id) != Some(page_ref.first) || !sorted {
            return Err(damaged(&self.id, &format!("page {number} is out of order")));
        }
        Ok(entries)
    }
}

fn open_file(sealer: &Sealer, id: Id, path: &Path) -> Result<IndexFile, RepoError> {
    let file = File::open(path).map_err(io_error(format!("opening {}", path.display())))?;
    let header = read_header(sealer, &id, &file)?;
    Ok(IndexFile { id, file, header })
}

fn read_header(sealer: &Sealer, id: &Id, file: &File) -> Result<Header, RepoError> {
    let size = file.metadata().map_err(io_error(format!("reading index file {id}")))?.len();
    if size < (INDEX_MAGIC.len() + TRAILER_LEN) as u64 {
        return Err(damaged(id, "too short"));
    }
    let mut trailer = [0u8; TRAILER_LEN];
    file.read_exact_at(&mut trailer, size - TRAILER_LEN as u64)
        .map_err(io_error(format!("reading index file {id}")))?;
    if &trailer[12..] != INDEX_END {
        return Err(damaged(id, "no end marker (truncated?)"));
    }
    let offset = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(trailer[8..12].try_into().expect("4 bytes")) as u64;
    if offset.checked_add(len).is_none_or(|end| end > size - TRAILER_LEN as u64) {
        return Err(damaged(id, "header out of range"));
    }
    let mut sealed = vec![0u8; len as usize];
    file.read_exact_at(&mut sealed, offset).map_err(io_error(format!("reading index file {id}")))?;
    let plain = sealer.open(&sealed, HEADER_AAD).map_err(|e| damaged(id, &format!("header: {e}")))?;
    let (header, _): (Header, usize) = bincode::serde::decode_from_slice(&plain, bincode::config::standard())
        .map_err(|_| damaged(id, "header does not decode"))?;
    let pages_in_range = header.pages.iter().all(|p| p.offset.saturating_add(p.len as u64) <= offset);
    if !pages_in_range {
        return Err(damaged(id, "page out of range"));
    }
    Ok(header)
}

/// Writes one index file covering `packs` and returns its id. Blobs stored twice (two backups
/// racing) keep one entry.
pub fn write_index<'a>(
    repo: &Repository,
    packs: impl IntoIterator<Item = (&'a PackId, &'a [PackEntry])>,
) -> Result<Id, RepoError> {
    let mut header = Header { packs: Vec::new(), pages: Vec::new(), entries: 0 };
    let mut entries = Vec::new();
    for (pack, pack_entries) in packs {
        let number = header.packs.len() as u32;
        header.packs.push(*pack);
        entries.extend(pack_entries.iter().map(|e| IndexEntry {
            id: e.id,
            kind: e.kind,
            pack: number,
            offset: e.offset,
            len: e.len,
            raw_len: e.raw_len,
        }));
    }
    entries.sort_by_key(|e| e.id);
    entries.dedup_by(|a, b| a.id == b.id);
    header.entries = entries.len() as u64;

    let mut bytes = INDEX_MAGIC.to_vec();
    for (number, page) in entries.chunks(ENTRIES_PER_PAGE).enumerate() {
        let plain = bincode::serde::encode_to_vec(page, bincode::config::standard()).expect("index entries serialize");
        let sealed = repo.sealer().seal(&plain, &page_aad(number));
        header.pages.push(PageRef { first: page[0].id, offset: bytes.len() as u64, len: sealed.len() as u32 });
        bytes.extend_from_slice(&sealed);
    }
    let header_plain =
        bincode::serde::encode_to_vec(&header, bincode::config::standard()).expect("index header serializes");
    let header_sealed = repo.sealer().seal(&header_plain, HEADER_AAD);
    let header_offset = bytes.len() as u64;
    bytes.extend_from_slice(&header_sealed);
    bytes.extend_from_slice(&header_offset.to_le_bytes());
    bytes.extend_from_slice(&(header_sealed.len() as u32).to_le_bytes());
    bytes.extend_from_slice(INDEX_END);

    let id = Id::random();
    repo.write_file_atomic(&format!("index/{}", id.to_hex()), &bytes)?;
    Ok(id)
}
