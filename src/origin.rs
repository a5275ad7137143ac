//! Where a staged file came from. A file copied out of the mount into `restore/` should hold
//! exactly what a snapshot holds at the same path; `cp` into a staging disk that runs full
//! leaves the start of the file under its real name (with a fresh mtime), and that must not
//! reach the phone as if it were the photo.
//!
//! A staged file is compared, as it streams past during a push, with the distinct files the
//! snapshots hold at its path: cut at each one's chunk boundaries, its pieces must hash to that
//! file's chunk ids. No chunk is read from the repository, except one to settle a last piece.

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

/// Versions followed per staged file, newest first: every photo has one, and a file that
/// changed in every snapshot must not cost a hash pass per snapshot.
const MAX_CANDIDATES: usize = 16;
/// Folders kept on the way down to staged folders.
const CACHED_TREES: usize = 256;

/// A file a snapshot holds at a staged file's path.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// `DEVICE/SNAPSHOT:PATH`, as users name it.
    pub label: String,
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime: i128,
    pub chunks: Vec<ChunkRef>,
}

/// A time in nanoseconds since the epoch.
pub fn nanos(sec: i64, nsec: u32) -> i128 {
    sec as i128 * 1_000_000_000 + nsec as i128
}

/// Whether a staged file has a snapshot file's time: `cp -a` and `rsync -a` keep it to the
/// nanosecond, file managers to the microsecond.
fn same_time(a: i128, b: i128) -> bool {
    (a - b).abs() < 1_000
}

/// Every snapshot's root, and the trees on the way to the folders staged files are in.
pub struct Snapshots<'a> {
    repo: &'a Repository,
    /// Each snapshot's name (`DEVICE/TIME`) and root tree, newest first.
    roots: Vec<(String, BlobId)>,
    /// Folders above the staged ones (`None`: damaged, or pruned meanwhile; that snapshot then
    /// offers nothing below it). Bounded: a year of daily snapshots has a root each.
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
    pub fn candidates_in(&self, folder: &Path, names: &[&[u8]]) -> HashMap<Vec<u8>, Vec<Candidate>> {
        let mut found: HashMap<Vec<u8>, Vec<Candidate>> = HashMap::new();
        let mut seen = HashSet::new();
        for (snapshot, root) in &self.roots {
            let Some(id) = self.folder_tree(root, folder) else { continue };
            if !seen.insert(id) {
                continue; // the same folder as in a newer snapshot
            }
            let Ok(tree) = tree::load_tree(self.repo, &id) else { continue };
            for name in names {
                let Some(Entry { meta, node: Node::File { size, chunks }, .. }) = tree.find(name) else { continue };
                let versions = found.entry(name.to_vec()).or_default();
                let mtime = nanos(meta.mtime_sec, meta.mtime_nsec);
                let known = versions.iter().any(|c| c.size == *size && c.mtime == mtime && c.chunks == *chunks);
                if !known && versions.len() < MAX_CANDIDATES {
                    let path = folder.join(std::ffi::OsStr::from_bytes(name));
                    let label = format!("{snapshot}:{}", path.display());
                    versions.push(Candidate { label, size: *size, mtime, chunks: chunks.clone() });
                }
            }
        }
        found
    }

    /// The id of the tree that lists `folder` in the snapshot whose root is `root`.
    fn folder_tree(&self, root: &BlobId, folder: &Path) -> Option<BlobId> {
        let mut id = *root;
        for component in folder.components() {
            let Component::Normal(name) = component else { return None };
            let entry = self.tree(&id)?.find(name.as_bytes()).map(|e| e.node.clone())?;
            let Node::Dir { tree } = entry else { return None };
            id = tree;
        }
        Some(id)
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
        }
    }
}

/// Follows a staged file's bytes against the snapshots' files at its path.
pub struct OriginCheck {
    staged_mtime: i128,
    read: u64,
    blank: blake3::Hasher,
    followers: Vec<Follower>,
}

/// One candidate, followed piece by piece while the staged bytes agree with it.
struct Follower {
    candidate: Candidate,
    /// The chunk the next staged byte belongs to, and how many of its bytes came already.
    chunk: usize,
    into_chunk: u64,
    hasher: blake3::Hasher,
    /// A piece differed, or the staged file went on past the candidate's end.
    parted: bool,
}

impl OriginCheck {
    /// `None` when no snapshot has a file at the staged file's path: nothing to compare with.
    pub fn new(repo: &Repository, staged_mtime: i128, candidates: Vec<Candidate>) -> Option<OriginCheck> {
        if candidates.is_empty() {
            return None;
        }
        let blank = repo.blob_id_hasher();
        let followers = candidates.into_iter().map(|candidate| Follower::new(candidate, &blank)).collect();
        Some(OriginCheck { staged_mtime, read: 0, blank, followers })
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.read += bytes.len() as u64;
        for follower in self.followers.iter_mut().filter(|f| !f.parted) {
            follower.feed(bytes, &self.blank);
        }
    }

    pub fn verdict(self, repo: &Repository) -> Verdict {
        if self.followers.iter().any(Follower::is_whole) {
            return Verdict::Fine;
        }
        if let Some(f) = self.followers.iter().find(|f| same_time(f.candidate.mtime, self.staged_mtime)) {
            return Verdict::Differs { label: f.candidate.label.clone() };
        }
        for f in self.followers.iter().filter(|f| !f.parted && self.read < f.candidate.size) {
            if f.into_chunk == 0 || f.last_piece_matches(repo) {
                let (label, want) = (f.candidate.label.clone(), f.candidate.size);
                return Verdict::CutShort { label, have: self.read, want };
            }
        }
        Verdict::Fine
    }
}

impl Follower {
    fn new(candidate: Candidate, blank: &blake3::Hasher) -> Follower {
        Follower { candidate, chunk: 0, into_chunk: 0, hasher: blank.clone(), parted: false }
    }

    /// Everything fed so far is the candidate, whole.
    fn is_whole(&self) -> bool {
        !self.parted && self.chunk == self.candidate.chunks.len() && self.into_chunk == 0
    }

    fn feed(&mut self, mut bytes: &[u8], blank: &blake3::Hasher) {
        while !bytes.is_empty() {
            let Some(chunk) = self.candidate.chunks.get(self.chunk) else {
                self.parted = true;
                return;
            };
            let n = (chunk.len as u64 - self.into_chunk).min(bytes.len() as u64) as usize;
            self.hasher.update(&bytes[..n]);
            self.into_chunk += n as u64;
            bytes = &bytes[n..];
            if self.into_chunk == chunk.len as u64 {
                if *self.hasher.finalize().as_bytes() != chunk.id.0 {
                    self.parted = true;
                    return;
                }
                self.chunk += 1;
                self.into_chunk = 0;
                self.hasher = blank.clone();
            }
        }
    }

    /// Whether the staged file's last, partial piece is the start of the candidate's chunk. A
    /// chunk that does not load counts as a match: keeping a good file staged loses nothing.
    fn last_piece_matches(&self, repo: &Repository) -> bool {
        let Some(chunk) = self.candidate.chunks.get(self.chunk) else { return false };
        let Ok(plain) = repo.load_blob(&chunk.id) else { return true };
        let Some(start) = plain.get(..self.into_chunk as usize) else { return false };
        let mut hasher = repo.blob_id_hasher();
        hasher.update(start);
        hasher.finalize() == self.hasher.finalize()
    }
}

/// Whether `content` is, byte for byte, the file made of `chunks`: hashed at its chunk
/// boundaries, so nothing is read from the repository.
pub fn holds_exactly(repo: &Repository, content: &mut impl Read, chunks: &[ChunkRef]) -> io::Result<bool> {
    let size = chunks.iter().map(|c| u64::from(c.len)).sum();
    let blank = repo.blob_id_hasher();
    let candidate = Candidate { label: String::new(), size, mtime: 0, chunks: chunks.to_vec() };
    let mut follower = Follower::new(candidate, &blank);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = match content.read(&mut buffer) {
            Ok(0) => return Ok(follower.is_whole()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        follower.feed(&buffer[..n], &blank);
        if follower.parted {
            return Ok(false);
        }
    }
}
