//! Where a staged file came from. A file copied out of the mount into `restore/` should hold
//! exactly what a snapshot holds at the same path; `cp` into a staging disk that runs full
//! leaves the start of the file under its real name (with a fresh mtime), a power cut can leave
//! a file whose data never reached the disk (zeros), and neither may reach the phone as if it
//! were the photo.
//!
//! A staged file is compared, as it streams past during a push, with every distinct file the
//! snapshots hold at its path: cut at each one's chunk boundaries, its pieces must hash to that
//! file's chunk ids. A piece is hashed once for all the versions that share it (versions of one
//! file share most boundaries), and no chunk is read from the repository, except one to settle
//! a last piece.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::rc::Rc;

use lru::LruCache;

use crate::repo::{snapshot, BlobId, RepoError, Repository};
use crate::tree::{self, ChunkRef, Entry, Node, Tree};

/// Distinct versions followed per staged file: a bound against crafted repositories, far above
/// a file changed in every one of a year of daily snapshots.
const MAX_CANDIDATES: usize = 1024;
/// Zeros at the end of a staged file that, after bytes of a snapshot's file, mean its data was lost.
const ZERO_TAIL: u64 = 64 * 1024;
/// Folders kept on the way down to staged folders.
const CACHED_TREES: usize = 256;

/// One distinct content a snapshot holds at a staged file's path.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// `DEVICE/SNAPSHOT:PATH` of the newest snapshot holding it, as users name it.
    pub label: String,
    pub size: u64,
    /// Every mtime (ns since the epoch) it had in the snapshots.
    pub mtimes: Vec<i128>,
    pub chunks: Vec<ChunkRef>,
}

/// What a staged file can be checked against.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    pub candidates: Vec<Candidate>,
    /// Why it cannot be checked: no readable snapshot has it, and some snapshot's listing of its
    /// folder does not load.
    pub unknowable: Option<String>,
}

/// What the snapshots hold in one folder, for the staged files in it.
pub struct FolderOrigins {
    pub by_name: HashMap<Vec<u8>, Origin>,
    /// Snapshots whose listing of the folder (or of a folder above it) does not load.
    pub unreadable: Vec<String>,
}

/// A time in nanoseconds since the epoch.
pub fn nanos(sec: i64, nsec: u32) -> i128 {
    sec as i128 * 1_000_000_000 + nsec as i128
}

/// Whether a staged file has a snapshot file's time: `cp -a` and `rsync -a` keep it to the
/// nanosecond, file managers to the microsecond.
fn same_time(a: i128, b: i128) -> bool {
    a.abs_diff(b) < 1_000
}

/// Every snapshot's root, and the trees on the way to the folders staged files are in.
pub struct Snapshots<'a> {
    repo: &'a Repository,
    /// Each snapshot's name (`DEVICE/TIME`) and root tree, newest first.
    roots: Vec<(String, BlobId)>,
    /// Folders above the staged ones (`None`: the listing does not load). Bounded: a year of
    /// daily snapshots has a root each.
    trees: RefCell<LruCache<BlobId, Option<Rc<Tree>>>>,
}

impl<'a> Snapshots<'a> {
    pub fn open(repo: &'a Repository) -> Result<Snapshots<'a>, RepoError> {
        let roots = snapshot::list(repo)?
            .into_iter()
            .rev()
            .map(|info| (format!("{}/{}", info.snapshot.device, info.name), info.snapshot.root))
            .collect();
        let trees = RefCell::new(LruCache::new(NonZeroUsize::new(CACHED_TREES).expect("nonzero")));
        Ok(Snapshots { repo, roots, trees })
    }

    pub fn repo(&self) -> &'a Repository {
        self.repo
    }

    /// For each of `names` in `folder` (relative to the device's root), the distinct files the
    /// snapshots hold there, newest first. Each version of the folder is loaded once, and
    /// dropped before the next: a Camera folder of 10,000 photos in each of 365 snapshots.
    pub fn origins_in(&self, folder: &Path, names: &[&[u8]]) -> FolderOrigins {
        let mut by_name: HashMap<Vec<u8>, Origin> = HashMap::new();
        let mut unreadable = Vec::new();
        let mut seen = HashSet::new();
        for (snapshot, root) in &self.roots {
            let id = match self.folder_tree(root, folder) {
                Ok(Some(id)) => id,
                Ok(None) => continue,
                Err(()) => {
                    unreadable.push(snapshot.clone());
                    continue;
                }
            };
            if !seen.insert(id) {
                continue; // the same folder as in a newer snapshot
            }
            let Ok(tree) = tree::load_tree(self.repo, &id) else {
                unreadable.push(snapshot.clone());
                continue;
            };
            for name in names {
                let Some(Entry { meta, node: Node::File { size, chunks }, .. }) = tree.find(name) else { continue };
                let versions = &mut by_name.entry(name.to_vec()).or_default().candidates;
                let mtime = nanos(meta.mtime_sec, meta.mtime_nsec);
                let full = versions.len() >= MAX_CANDIDATES;
                match versions.iter_mut().find(|c| c.size == *size && c.chunks == *chunks) {
                    Some(known) => known.mtimes.push(mtime),
                    None if !full => {
                        let path = folder.join(std::ffi::OsStr::from_bytes(name));
                        let label = format!("{snapshot}:{}", path.display());
                        versions.push(Candidate { label, size: *size, mtimes: vec![mtime], chunks: chunks.clone() });
                    }
                    None => {}
                }
            }
        }
        // A file no readable listing has may be a copy from one that does not load.
        if let Some(first) = unreadable.first() {
            let why = format!(
                "cannot be checked: no snapshot that can be read has it, and the listing of its folder in {first}{} does not load (see `phonebak check`); kept staged",
                if unreadable.len() > 1 { format!(" and {} more", unreadable.len() - 1) } else { String::new() }
            );
            for name in names {
                let origin = by_name.entry(name.to_vec()).or_default();
                if origin.candidates.is_empty() {
                    origin.unknowable = Some(why.clone());
                }
            }
        }
        FolderOrigins { by_name, unreadable }
    }

    /// The id of the tree that lists `folder` in the snapshot whose root is `root` (`None`: the
    /// snapshot has no such folder; `Err`: a listing on the way does not load).
    fn folder_tree(&self, root: &BlobId, folder: &Path) -> Result<Option<BlobId>, ()> {
        let mut id = *root;
        for component in folder.components() {
            let Component::Normal(name) = component else { return Ok(None) };
            let tree = self.tree(&id).ok_or(())?;
            match tree.find(name.as_bytes()).map(|e| &e.node) {
                Some(Node::Dir { tree }) => id = *tree,
                _ => return Ok(None),
            }
        }
        Ok(Some(id))
    }

    fn tree(&self, id: &BlobId) -> Option<Rc<Tree>> {
        if let Some(known) = self.trees.borrow_mut().get(id) {
            return known.clone();
        }
        let loaded = tree::load_tree(self.repo, id).ok().map(Rc::new);
        self.trees.borrow_mut().put(*id, loaded.clone());
        loaded
    }
}

/// What a staged file turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// One of the snapshots' files byte for byte, or none of them at all (the user's own).
    Fine,
    /// It has the time of a snapshot's file (so it was copied with `cp -a` or `rsync -a`) but
    /// not its bytes.
    Differs { label: String },
    /// Its bytes are the start of a snapshot's file: a copy that stopped.
    CutShort { label: String, have: u64, want: u64 },
    /// The start of a snapshot's file, then zeros where that file has data: a copy whose data
    /// never reached the disk.
    ZerosFrom { label: String, from: u64 },
}

impl Verdict {
    /// Why the file is kept staged, for the push report.
    pub fn reason(&self) -> Option<String> {
        match self {
            Verdict::Fine => None,
            Verdict::Differs { label } => Some(format!(
                "it has the time of {label} but not its bytes (damaged or cut short while staged); kept staged: copy it again"
            )),
            Verdict::CutShort { label, have, want } => Some(format!(
                "cut short: its {have} bytes are the start of {label} ({want} bytes), as when the staging disk runs full; kept staged: copy it again"
            )),
            Verdict::ZerosFrom { label, from } => Some(format!(
                "zeros from byte {from} on where {label} has data (a copy whose data never reached the disk); kept staged: copy it again"
            )),
        }
    }
}

/// Follows a staged file's bytes against the snapshots' files at its path.
pub struct OriginCheck {
    staged_mtime: i128,
    read: u64,
    /// Just past the last byte read that was not zero.
    data_end: u64,
    blank: blake3::Hasher,
    /// Pieces being hashed, by (start, length), each for every follower that needs it. Every
    /// one holds the position reached: a piece is added when a follower gets to its start.
    pieces: HashMap<(u64, u64), blake3::Hasher>,
    followers: Vec<Follower>,
}

/// One candidate, followed chunk by chunk while the staged bytes agree with it.
struct Follower {
    candidate: Candidate,
    /// The chunk the staged bytes are in, and where it starts.
    chunk: usize,
    start: u64,
    /// That chunk's piece of the staged file hashed to something else.
    differed: bool,
}

impl Follower {
    fn piece(&self) -> Option<(u64, u64)> {
        let chunk = self.candidate.chunks.get(self.chunk)?;
        Some((self.start, u64::from(chunk.len)))
    }
}

impl OriginCheck {
    /// `None` when no snapshot has a file at the staged file's path: nothing to compare with.
    pub fn new(repo: &Repository, staged_mtime: i128, candidates: Vec<Candidate>) -> Option<OriginCheck> {
        if candidates.is_empty() {
            return None;
        }
        let mut check = OriginCheck {
            staged_mtime,
            read: 0,
            data_end: 0,
            blank: repo.blob_id_hasher(),
            pieces: HashMap::new(),
            followers: Vec::new(),
        };
        for candidate in candidates {
            let mut follower = Follower { candidate, chunk: 0, start: 0, differed: false };
            check.need(&mut follower);
            check.followers.push(follower);
        }
        Some(check)
    }

    /// Makes sure the piece `follower` is in is being hashed.
    fn need(&mut self, follower: &mut Follower) {
        match follower.piece() {
            // A chunk of no bytes is no copy's: a damaged listing.
            Some((_, 0)) => follower.differed = true,
            Some(piece) => {
                self.pieces.entry(piece).or_insert_with(|| self.blank.clone());
            }
            None => {}
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            // Up to the nearest end of a piece, so that the next piece starts at the right byte.
            let until_end = self.pieces.keys().map(|(start, len)| start + len - self.read).min();
            let take = until_end.map_or(bytes.len(), |n| (n as usize).min(bytes.len()));
            let (now, rest) = bytes.split_at(take);
            for hasher in self.pieces.values_mut() {
                hasher.update(now);
            }
            if now.last().is_some_and(|&b| b != 0) {
                self.data_end = self.read + now.len() as u64;
            } else if let Some(last) = now.iter().rposition(|&b| b != 0) {
                self.data_end = self.read + last as u64 + 1;
            }
            self.read += now.len() as u64;
            bytes = rest;
            self.settle();
        }
    }

    /// Compares the pieces that end here with the chunks their followers expect there.
    fn settle(&mut self) {
        let here = self.read;
        let ended: Vec<(u64, u64)> = self.pieces.keys().filter(|(start, len)| start + len == here).copied().collect();
        if ended.is_empty() {
            return;
        }
        let hashes: HashMap<(u64, u64), [u8; 32]> = ended
            .iter()
            .map(|piece| (*piece, *self.pieces.remove(piece).expect("an ended piece").finalize().as_bytes()))
            .collect();
        let mut followers = std::mem::take(&mut self.followers);
        for follower in followers.iter_mut().filter(|f| !f.differed) {
            let Some(piece) = follower.piece() else { continue };
            let Some(hash) = hashes.get(&piece) else { continue };
            if *hash != follower.candidate.chunks[follower.chunk].id.0 {
                follower.differed = true;
                continue;
            }
            follower.chunk += 1;
            follower.start = here;
            self.need(follower);
        }
        self.followers = followers;
    }

    pub fn verdict(self, repo: &Repository) -> Verdict {
        let read = self.read;
        let following = |f: &&Follower| !f.differed;
        if self.followers.iter().filter(following).any(|f| f.piece().is_none() && read == f.candidate.size) {
            return Verdict::Fine;
        }
        let timed = |c: &Candidate| c.mtimes.iter().any(|&t| same_time(t, self.staged_mtime));
        if let Some(f) = self.followers.iter().find(|f| timed(&f.candidate)) {
            return Verdict::Differs { label: f.candidate.label.clone() };
        }
        for f in self.followers.iter().filter(following).filter(|f| read < f.candidate.size) {
            if f.start == read || self.last_piece_matches(f, repo) {
                let (label, want) = (f.candidate.label.clone(), f.candidate.size);
                return Verdict::CutShort { label, have: read, want };
            }
        }
        // Agreed up to a piece, and nothing but zeros after that piece: zeros of a file's own
        // (a database's free pages) are shorter than what a lost write leaves.
        let zero_tail = read - self.data_end >= ZERO_TAIL || (self.data_end == 0 && read > 0);
        for f in self.followers.iter().filter(|f| f.differed && zero_tail) {
            let (start, len) = f.piece().expect("a follower differs in a piece");
            if self.data_end <= start + len {
                return Verdict::ZerosFrom { label: f.candidate.label.clone(), from: self.data_end };
            }
        }
        Verdict::Fine
    }

    /// Whether the staged file's last, partial piece is the start of the follower's chunk. A
    /// chunk that does not load counts as a match: keeping a good file staged loses nothing.
    fn last_piece_matches(&self, follower: &Follower, repo: &Repository) -> bool {
        let Some(piece) = follower.piece() else { return false };
        let Some(hasher) = self.pieces.get(&piece) else { return false };
        let chunk = &follower.candidate.chunks[follower.chunk];
        let Ok(plain) = repo.load_blob(&chunk.id) else { return true };
        let Some(start) = plain.get(..(self.read - follower.start) as usize) else { return false };
        let mut whole = repo.blob_id_hasher();
        whole.update(start);
        whole.finalize() == hasher.finalize()
    }
}

/// Whether `content` is, byte for byte, the file made of `chunks`: hashed at its chunk
/// boundaries, so nothing is read from the repository.
pub fn holds_exactly(repo: &Repository, content: &mut impl Read, chunks: &[ChunkRef]) -> io::Result<bool> {
    let size = chunks.iter().map(|c| u64::from(c.len)).sum();
    let candidate = Candidate { label: String::new(), size, mtimes: Vec::new(), chunks: chunks.to_vec() };
    let mut check = OriginCheck::new(repo, i128::MIN, vec![candidate]).expect("one candidate");
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = match content.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        check.update(&buffer[..n]);
        if check.followers[0].differed || check.read > size {
            return Ok(false);
        }
    }
    let f = &check.followers[0];
    Ok(!f.differed && f.piece().is_none() && check.read == size)
}
