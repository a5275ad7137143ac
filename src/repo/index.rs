//! The index: where each blob lives. Index files are sorted and split into separately sealed
//! pages, with a small header listing each page's first id, so opening the index reads only
//! headers and a lookup reads one page. Layout (docs/FORMAT.md):
//! `PBIDX001` | sealed page* | sealed header | header offset u64 LE | header length u32 LE | `PBIDXEND`.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, RwLock};

use lru::LruCache;
use serde::{Deserialize, Serialize};

use super::crypto::Sealer;
use super::pack::{list_packs, read_footer_in, PackEntry};
use super::storage::{Reuse, Storage, StorageError};
use super::warnings::Warnings;
use super::{children, decode_record, BlobId, BlobKind, Id, PackId, RepoError, Repository, MAX_BLOB, MAX_STORED};

const INDEX_MAGIC: &[u8; 8] = b"PBIDX001";
const INDEX_END: &[u8; 8] = b"PBIDXEND";
pub(crate) const TRAILER_LEN: usize = 20;
const ENTRIES_PER_PAGE: usize = 512;
const HEADER_AAD: &[u8] = b"phonebak index header";
const CACHED_PAGES: usize = 512;

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct IndexEntry {
    pub(crate) id: BlobId,
    pub(crate) kind: BlobKind,
    /// Position in the header's pack list.
    pub(crate) pack: u32,
    pub(crate) offset: u32,
    pub(crate) len: u32,
    pub(crate) raw_len: u32,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) packs: Vec<PackId>,
    pub(crate) pages: Vec<PageRef>,
    pub(crate) entries: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct PageRef {
    pub(crate) first: BlobId,
    pub(crate) offset: u64,
    pub(crate) len: u32,
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
    header: Header,
}

/// How index file `id` is named.
fn file_name(id: &Id) -> String {
    format!("index/{}", id.to_hex())
}

type PageCache = LruCache<(Id, usize), Arc<Vec<IndexEntry>>>;

/// All index files of a repository. New files written by others (a backup while a mount is
/// open) are picked up on the first lookup that misses.
///
/// Index damage is never worse than a slower start: an index file that cannot be read is set
/// aside (and named by `damaged_files`), and the blobs of every pack that no readable index file
/// covers are read from that pack's own footer, on the first lookup that misses and before any
/// walk over all entries.
pub struct Index {
    sealer: Arc<Sealer>,
    storage: Arc<dyn Storage>,
    files: RwLock<Vec<Arc<IndexFile>>>,
    pages: Mutex<PageCache>,
    damaged: Mutex<Vec<(Id, String)>>,
    rebuilt: RwLock<Rebuilt>,
    /// Every pack's own list, read the first time every known copy of some blob failed (and
    /// those of packs written since, on each later failure): an index file names one copy of
    /// each blob (it may be a damaged one while an intact copy lies in another pack), and a
    /// wrong index file may leave out what its packs hold.
    in_every_pack: Mutex<Rebuilt>,
    warnings: Arc<Warnings>,
}

/// Blobs read from the footers of packs no readable index file covers.
#[derive(Default)]
struct Rebuilt {
    /// Packs whose footers were read (or found unreadable), so each is read once.
    scanned: HashSet<PackId>,
    blobs: HashMap<BlobId, Vec<BlobLocation>>,
    /// Packs found on disk whose own footers are unreadable, with why.
    unreadable: Vec<(PackId, String)>,
}

fn page_aad(number: usize) -> Vec<u8> {
    format!("phonebak index page {number}").into_bytes()
}

fn damaged(file: &Id, why: &str) -> RepoError {
    RepoError::Corrupt(format!("index file {file}: {why}"))
}

impl Index {
    pub fn empty(sealer: Arc<Sealer>, storage: Arc<dyn Storage>, warnings: Arc<Warnings>) -> Index {
        Index {
            sealer,
            storage,
            files: RwLock::new(Vec::new()),
            pages: Mutex::new(LruCache::new(NonZeroUsize::new(CACHED_PAGES).expect("nonzero"))),
            damaged: Mutex::new(Vec::new()),
            in_every_pack: Mutex::new(Rebuilt::default()),
            rebuilt: RwLock::new(Rebuilt::default()),
            warnings,
        }
    }

    /// Reads every index file's header (a few bytes per thousand blobs), nothing more.
    pub fn open(repo: &Repository) -> Result<Index, RepoError> {
        let index = Index::empty(repo.sealer_arc(), repo.storage().clone(), repo.warnings().clone());
        index.refresh()?;
        Ok(index)
    }

    /// The index files stored, by id, with their sizes (None: not a regular file); a missing
    /// `index/` folder holds none.
    fn files_on_disk(&self) -> Result<Vec<(Id, Option<u64>)>, RepoError> {
        Ok(children(&*self.storage, "index")?
            .into_iter()
            .filter_map(|o| Some((Id::from_hex(o.name.strip_prefix("index/")?)?, Some(o.size).filter(|_| o.regular))))
            .collect())
    }

    /// Opens index files that appeared since the last look; says whether there were any. A file
    /// that cannot be read is set aside as damaged.
    pub fn refresh(&self) -> Result<bool, RepoError> {
        let mut known: HashSet<Id> = self.file_ids().into_iter().collect();
        known.extend(self.damaged.lock().expect("index damage lock").iter().map(|(id, _)| *id));
        let mut added = Vec::new();
        for (id, size) in self.files_on_disk()? {
            if known.contains(&id) {
                continue;
            }
            match open_file(&self.sealer, &*self.storage, id, size) {
                Ok(file) => added.push(Arc::new(file)),
                // Removed meanwhile (a prune).
                Err(Gone) => {}
                Err(Damaged(e)) => self.set_aside(id, e.to_string()),
                Err(Failed(e)) => return Err(e),
            }
        }
        let any = !added.is_empty();
        self.files.write().expect("index lock").extend(added);
        Ok(any)
    }

    /// Takes a damaged index file out of use; its packs are then read from their footers.
    fn set_aside(&self, id: Id, why: String) {
        self.files.write().expect("index lock").retain(|f| f.id != id);
        let mut damaged = self.damaged.lock().expect("index damage lock");
        if !damaged.iter().any(|(known, _)| *known == id) {
            self.warnings.warn(&format!(
                "{why}: it is not used; the packs it covered are read from their own lists instead \
                 (`phonebak repair index` writes a new index)"
            ));
            damaged.push((id, why));
        }
    }

    /// Index files that could not be read, with why (`phonebak repair index` replaces them).
    pub fn damaged_files(&self) -> Vec<(Id, String)> {
        self.damaged.lock().expect("index damage lock").clone()
    }

    /// Packs on disk that no readable index file covers and whose own footer cannot be read.
    pub fn unreadable_packs(&self) -> Vec<(PackId, String)> {
        self.rebuilt.read().expect("rebuilt index lock").unreadable.clone()
    }

    /// Takes an index file that was removed (by a prune, perhaps on another machine) out of use.
    fn forget(&self, id: Id) {
        self.files.write().expect("index lock").retain(|f| f.id != id);
    }

    /// Starts over with the index files stored now: a prune (run while this repository is
    /// open, e.g. by a mount) replaces index files and moves blobs to new packs.
    pub fn resync(&self) -> Result<(), RepoError> {
        let on_disk: HashSet<Id> = self.files_on_disk()?.into_iter().map(|(id, _)| id).collect();
        self.files.write().expect("index lock").retain(|file| on_disk.contains(&file.id));
        self.damaged.lock().expect("index damage lock").retain(|(id, _)| on_disk.contains(id));
        *self.rebuilt.write().expect("rebuilt index lock") = Rebuilt::default();
        self.refresh()?;
        Ok(())
    }

    pub fn file_ids(&self) -> Vec<Id> {
        self.files.read().expect("index lock").iter().map(|f| f.id).collect()
    }

    fn current_files(&self) -> Vec<Arc<IndexFile>> {
        self.files.read().expect("index lock").clone()
    }

    /// Where `id` is stored; a miss looks for index files written since (by a concurrent backup),
    /// then in the footers of packs no index file covers, before it answers `None`.
    pub fn get(&self, id: &BlobId) -> Result<Option<BlobLocation>, RepoError> {
        if let Some(first) = self.lookup(id, false).pop() {
            return Ok(Some(first));
        }
        Ok(self.locations(id)?.into_iter().next())
    }

    /// Every stored copy of `id` (usually one), the indexed ones first: a reader that finds one
    /// copy damaged or missing tries the next.
    pub fn locations(&self, id: &BlobId) -> Result<Vec<BlobLocation>, RepoError> {
        let mut found = self.lookup(id, true);
        if found.is_empty() && self.refresh()? {
            found = self.lookup(id, true);
        }
        if found.is_empty() {
            self.cover_all_packs()?;
        }
        if let Some(rebuilt) = self.rebuilt.read().expect("rebuilt index lock").blobs.get(id) {
            found.extend(rebuilt.iter().filter(|r| !found.contains(r)).cloned().collect::<Vec<_>>());
        }
        Ok(found)
    }

    /// Every copy of `id`, also in the footers of packs no readable index file covers even when
    /// the index names copies: for a reader whose indexed copies all failed (an old index file
    /// naming packs a prune deleted, while the blob lives on in a pack no index covers).
    pub fn locations_everywhere(&self, id: &BlobId) -> Result<Vec<BlobLocation>, RepoError> {
        self.cover_all_packs()?;
        self.locations(id)
    }

    /// Every copy of `id` in every pack's own list, whether or not an index names it. Reads the
    /// footer of every pack not read by an earlier call: it is made only after every known copy
    /// of a blob failed.
    pub fn copies_in_every_pack(&self, id: &BlobId) -> Result<Vec<BlobLocation>, RepoError> {
        let mut all = self.in_every_pack.lock().expect("footer map lock");
        for (pack, _) in list_packs(&*self.storage)? {
            if !all.scanned.insert(pack) {
                continue;
            }
            // Missing (pruned meanwhile) or unreadable footers hold no copy to fall back on.
            if let Ok(entries) = read_footer_in(&self.sealer, &*self.storage, &pack) {
                for e in entries {
                    all.blobs.entry(e.id).or_default().push(e.located_in(&pack));
                }
            }
        }
        Ok(all.blobs.get(id).cloned().unwrap_or_default())
    }

    /// The indexed copies of `id`: the first one found, or with `all` every one.
    fn lookup(&self, id: &BlobId, all: bool) -> Vec<BlobLocation> {
        let mut found = Vec::new();
        for file in self.current_files() {
            let page_number = file.header.pages.partition_point(|p| p.first <= *id);
            if page_number == 0 {
                continue;
            }
            let page = match self.page(&file, page_number - 1) {
                Ok(page) => page,
                Err(Gone) => {
                    self.forget(file.id);
                    continue;
                }
                Err(Damaged(e) | Failed(e)) => {
                    self.set_aside(file.id, e.to_string());
                    continue;
                }
            };
            if let Ok(at) = page.binary_search_by(|e| e.id.cmp(id)) {
                match file.locate(&page[at]) {
                    Ok(location) if !all => return vec![location],
                    Ok(location) => found.push(location),
                    Err(e) => self.set_aside(file.id, e.to_string()),
                }
            }
        }
        found
    }

    fn page(&self, file: &IndexFile, page_number: usize) -> Result<Arc<Vec<IndexEntry>>, FileError> {
        let key = (file.id, page_number);
        if let Some(page) = self.pages.lock().expect("index cache lock").get(&key) {
            return Ok(page.clone());
        }
        let page = Arc::new(file.read_page(&self.sealer, &*self.storage, page_number)?);
        self.pages.lock().expect("index cache lock").put(key, page.clone());
        Ok(page)
    }

    /// Reads the footers of the packs on disk that no readable index file covers (each once).
    fn cover_all_packs(&self) -> Result<(), RepoError> {
        let covered: HashSet<PackId> =
            self.current_files().iter().flat_map(|f| f.header.packs.iter().copied()).collect();
        let scanned = self.rebuilt.read().expect("rebuilt index lock").scanned.clone();
        let mut rebuilt = Rebuilt::default();
        for (pack, _) in list_packs(&*self.storage)? {
            if covered.contains(&pack) || scanned.contains(&pack) {
                continue;
            }
            rebuilt.scanned.insert(pack);
            match read_footer_in(&self.sealer, &*self.storage, &pack) {
                Ok(entries) => {
                    for e in entries {
                        let location = e.located_in(&pack);
                        rebuilt.blobs.entry(e.id).or_default().push(location);
                    }
                }
                // Deleted meanwhile (a prune): nothing to cover.
                Err(RepoError::MissingPack(_)) => {}
                Err(e) => {
                    self.warnings.warn(&format!("{e}: its blobs cannot be found (see `phonebak check`)"));
                    rebuilt.unreadable.push((pack, e.to_string()));
                }
            }
        }
        let mut all = self.rebuilt.write().expect("rebuilt index lock");
        all.scanned.extend(rebuilt.scanned);
        all.unreadable.extend(rebuilt.unreadable);
        for (id, locations) in rebuilt.blobs {
            all.blobs.entry(id).or_default().extend(locations);
        }
        Ok(())
    }

    /// Calls `visit` with every entry of every readable index file and of every pack no readable
    /// index file covers (duplicates included), reading each page once without caching it: for
    /// backup, check and prune, which need them all. An index file with an unreadable page is
    /// set aside whole, and its packs are read from their footers instead.
    pub fn for_each(&self, mut visit: impl FnMut(BlobLocation)) -> Result<(), RepoError> {
        for file in self.current_files() {
            // Read whole before any entry is visited: a file found damaged half-way is set aside
            // whole, and its packs come from their footers below.
            match file.read_all(&self.sealer, &*self.storage) {
                Ok(locations) => locations.into_iter().for_each(&mut visit),
                Err(Gone) => self.forget(file.id),
                Err(Damaged(e)) => self.set_aside(file.id, e.to_string()),
                Err(Failed(e)) => return Err(e),
            }
        }
        self.cover_all_packs()?;
        let covered = self.indexed_packs();
        for locations in self.rebuilt.read().expect("rebuilt index lock").blobs.values() {
            for location in locations.iter().filter(|l| !covered.contains(&l.pack)) {
                visit(location.clone());
            }
        }
        Ok(())
    }

    /// Every blob with a copy in a pack that exists: a blob whose only pack is gone is not
    /// known, so the next backup of the phone stores it again.
    pub fn known_blobs(&self) -> Result<HashSet<BlobId>, RepoError> {
        let on_disk: HashSet<PackId> = list_packs(&*self.storage)?.into_iter().map(|(id, _)| id).collect();
        let mut known = HashSet::new();
        self.for_each(|location| {
            if on_disk.contains(&location.pack) {
                known.insert(location.id);
            }
        })?;
        Ok(known)
    }

    /// The packs on disk that no readable index file covers and whose own lists were read (by
    /// `for_each` or a lookup that missed), with those lists: a backup indexes them, so that
    /// the work of an interrupted run is found by index from then on.
    pub fn unindexed_packs(&self) -> Vec<(PackId, Vec<PackEntry>)> {
        let covered = self.indexed_packs();
        let mut packs: HashMap<PackId, Vec<PackEntry>> = HashMap::new();
        for locations in self.rebuilt.read().expect("rebuilt index lock").blobs.values() {
            for l in locations.iter().filter(|l| !covered.contains(&l.pack)) {
                let entry = PackEntry { id: l.id, kind: l.kind, offset: l.offset, len: l.len, raw_len: l.raw_len };
                packs.entry(l.pack).or_default().push(entry);
            }
        }
        let mut packs: Vec<_> = packs.into_iter().collect();
        packs.sort_by_key(|(id, _)| *id);
        packs
    }

    /// Packs covered by a readable index file.
    pub fn indexed_packs(&self) -> HashSet<PackId> {
        self.current_files().iter().flat_map(|f| f.header.packs.iter().copied()).collect()
    }
}

/// Why an index file could not be read: it is gone (a prune removed it), its bytes are wrong
/// (it is set aside), or it could not be reached (the command stops: nothing is judged damaged
/// because a store was down).
enum FileError {
    Gone,
    Damaged(RepoError),
    Failed(RepoError),
}
use FileError::{Damaged, Failed, Gone};

impl From<StorageError> for FileError {
    fn from(error: StorageError) -> FileError {
        match error {
            StorageError::NotFound(_) => Gone,
            e @ (StorageError::Truncated { .. } | StorageError::NotAFile { .. } | StorageError::TooLarge { .. }) => {
                Damaged(e.into())
            }
            other => Failed(other.into()),
        }
    }
}

impl From<RepoError> for FileError {
    fn from(error: RepoError) -> FileError {
        if error.is_corruption() {
            Damaged(error)
        } else {
            Failed(error)
        }
    }
}

/// Reads `len` bytes at `offset` of object `name`, to be read again (index pages, headers).
fn read_at(storage: &dyn Storage, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    let at = storage.read_range(name, offset, len, Reuse::Again, &mut out)?;
    out.truncate(at.end);
    out.drain(..at.start);
    Ok(out)
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

    fn read_all(&self, sealer: &Sealer, storage: &dyn Storage) -> Result<Vec<BlobLocation>, FileError> {
        let mut all = Vec::new();
        for page_number in 0..self.header.pages.len() {
            for entry in self.read_page(sealer, storage, page_number)? {
                all.push(self.locate(&entry)?);
            }
        }
        Ok(all)
    }

    fn read_page(&self, sealer: &Sealer, storage: &dyn Storage, number: usize) -> Result<Vec<IndexEntry>, FileError> {
        let page_ref = &self.header.pages[number];
        let sealed = match read_at(storage, &file_name(&self.id), page_ref.offset, page_ref.len as usize) {
            Err(StorageError::Truncated { .. }) => {
                return Err(Damaged(damaged(&self.id, &format!("page {number} cannot be read"))))
            }
            other => other?,
        };
        let plain =
            sealer.open(&sealed, &page_aad(number)).map_err(|e| damaged(&self.id, &format!("page {number}: {e}")))?;
        Ok(parse_page(&plain, &page_ref.first, self.header.packs.len())
            .map_err(|why| damaged(&self.id, &format!("page {number} {why}")))?)
    }
}

/// Decodes and validates one opened index page: at most `ENTRIES_PER_PAGE` entries sorted by id
/// starting at `first`, each naming one of `packs` packs, with bounded lengths.
pub(crate) fn parse_page(plain: &[u8], first: &BlobId, packs: usize) -> Result<Vec<IndexEntry>, &'static str> {
    let entries: Vec<IndexEntry> = decode_record(plain).map_err(|_| "does not decode")?;
    let sorted = entries.windows(2).all(|w| w[0].id < w[1].id);
    if entries.first().map(|e| e.id) != Some(*first) || !sorted || entries.len() > ENTRIES_PER_PAGE {
        return Err("is out of order");
    }
    let out_of_range = |e: &IndexEntry| e.pack as usize >= packs || e.raw_len > MAX_BLOB || e.len > MAX_STORED;
    if entries.iter().any(out_of_range) {
        return Err("has an entry out of range");
    }
    Ok(entries)
}

/// Reads an index file's trailer (its last `TRAILER_LEN` bytes, of a file of `size` bytes):
/// where its header lies.
pub(crate) fn parse_trailer(trailer: &[u8; TRAILER_LEN], size: u64) -> Result<(u64, u32), &'static str> {
    if size < (INDEX_MAGIC.len() + TRAILER_LEN) as u64 {
        return Err("too short");
    }
    if &trailer[12..] != INDEX_END {
        return Err("no end marker (truncated?)");
    }
    let offset = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(trailer[8..12].try_into().expect("4 bytes"));
    if offset < INDEX_MAGIC.len() as u64
        || offset.checked_add(len as u64).is_none_or(|end| end > size - TRAILER_LEN as u64)
    {
        return Err("header out of range");
    }
    Ok((offset, len))
}

/// Decodes and validates an opened index header whose file's header starts at `header_at`:
/// pages lie between the magic number and the header, one after another, sorted by first id.
pub(crate) fn parse_header(plain: &[u8], header_at: u64) -> Result<Header, &'static str> {
    let header: Header = decode_record(plain).map_err(|_| "header does not decode")?;
    let pages_in_range = header
        .pages
        .iter()
        .all(|p| p.offset >= INDEX_MAGIC.len() as u64 && p.offset.saturating_add(p.len as u64) <= header_at);
    let pages_in_order = header
        .pages
        .windows(2)
        .all(|w| w[0].first < w[1].first && w[0].offset.saturating_add(w[0].len as u64) <= w[1].offset);
    if !pages_in_range || !pages_in_order {
        return Err("page out of range or out of order");
    }
    Ok(header)
}

/// Opens index file `id` of `size` bytes (as listed): reads its header, nothing more.
fn open_file(sealer: &Sealer, storage: &dyn Storage, id: Id, size: Option<u64>) -> Result<IndexFile, FileError> {
    let name = file_name(&id);
    let size = size.ok_or_else(|| Damaged(damaged(&id, "not a regular file")))?;
    if size < (INDEX_MAGIC.len() + TRAILER_LEN) as u64 {
        return Err(Damaged(damaged(&id, "too short")));
    }
    let trailer = read_at(storage, &name, size - TRAILER_LEN as u64, TRAILER_LEN)?;
    let trailer: &[u8; TRAILER_LEN] = trailer[..].try_into().expect("trailer length");
    let (offset, len) = parse_trailer(trailer, size).map_err(|why| damaged(&id, why))?;
    let magic = read_at(storage, &name, 0, INDEX_MAGIC.len())?;
    if magic != INDEX_MAGIC {
        return Err(Damaged(damaged(&id, "not an index file (wrong magic number)")));
    }
    let sealed = read_at(storage, &name, offset, len as usize)?;
    let plain = sealer.open(&sealed, HEADER_AAD).map_err(|e| damaged(&id, &format!("header: {e}")))?;
    let header = parse_header(&plain, offset).map_err(|why| damaged(&id, why))?;
    Ok(IndexFile { id, header })
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
