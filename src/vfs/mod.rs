//! The mounted view of a repository, without FUSE types (`fuse.rs` adapts it):
//!
//! ```text
//! /snapshots/<device>/<time>/...   every snapshot, read-only, exact metadata
//! /snapshots/<device>/latest       a symlink to the newest
//! /snapshots/<device>/<time>.omitted.txt   the files that snapshot recorded without content
//! ```
//!
//! Nothing proportional to the repository is loaded up front: the snapshot list is re-read when
//! the repository's `snapshots/` folder changes, a folder's tree is decoded when first looked
//! up, and file chunks are read when first read, through the byte-bounded chunk cache.
//! Inode numbers are derived from (parent inode, name), so they stay the same for the life of a
//! mount even after the kernel forgets an inode and looks it up again.

pub mod cache;
pub mod fuse;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;

use crate::repo::snapshot::{self, SnapshotInfo};
use crate::repo::{BlobId, RepoError, Repository, FRAME_LEN};
use crate::tree::{Entry, Node as TreeNode, Tree};
use cache::ChunkCache;

pub const ROOT_INO: u64 = 1;
/// What a snapshot's listing of files kept without content is called, after its name.
pub const OMITTED_SUFFIX: &str = ".omitted.txt";
/// `.omitted.txt` listings kept made (`ls -l` of a device folder sizes every one).
const OMITTED_TEXTS: usize = 32;
const OMITTED_HEADING: &str =
    "# Files this snapshot recorded by name, size and time only (backup --metadata-only): size, time, path\n";
const SNAPSHOTS_INO: u64 = 2;
/// Decoded trees kept for lookups and listings (shared between snapshots: an unchanged folder
/// is one tree).
const CACHED_TREES: usize = 4096;
/// How long the kernel may keep what a snapshot's or a device's name means: a backup, forget or
/// prune made while mounted may rename or remove it.
/// How often the mount looks for new snapshot records, at most (only while it is being used):
/// on a folder, and on an object store (a listing request each time, so that a snapshot made on
/// another machine shows within a second there too).
const LOOK_EVERY_LOCAL: Duration = Duration::from_millis(200);
const LOOK_EVERY_REMOTE: Duration = Duration::from_millis(400);
const SNAPSHOT_NAMES_TTL: Duration = Duration::from_millis(500);
/// What is read ahead of a sequential reader, from its file and the next files of its folder:
/// `READAHEAD_BYTES` (at most a quarter of the cache), in at most `READAHEAD_CHUNKS` chunks (a
/// folder of small files) of at most `FILES_AHEAD` files.
const READAHEAD_BYTES: usize = 16 << 20;
const READAHEAD_CHUNKS: usize = 256;
const FILES_AHEAD: usize = 256;
/// Threads loading chunks ahead. They mostly wait for the disk (chunks are read past the page
/// cache, so no kernel readahead keeps it busy): eight keep a few reads in flight, which a cold
/// copy of photos out of the mount needed to read at close to disk speed (4 MiB ahead on 2
/// threads left the disk idle a third of the time).
const PREFETCH_THREADS: usize = 8;
/// Files up to this size are pushed into the kernel's page cache when their folder is listed
/// (see `push_contents`), at most `PUSH_PER_LISTING` bytes per listing.
const PUSH_FILES_UP_TO: u64 = 64 * 1024;
const PUSH_PER_LISTING: u64 = 4 << 20;

/// Puts a file's content into the kernel's page cache (FUSE_NOTIFY_STORE).
pub type Pusher = Box<dyn Fn(u64, &[u8]) + Send + Sync>;

/// A small file to push: (inode, its one chunk, its size).
pub struct PushJob(u64, BlobId, u64);

#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    #[error("no such file or folder")]
    NotFound,
    #[error("not a folder")]
    NotDir,
    #[error("not a symlink")]
    NotSymlink,
    #[error("is a folder")]
    IsDir,
    #[error("snapshots are read-only")]
    ReadOnly,
    #[error("unknown file handle")]
    BadHandle,
    #[error("{0}")]
    Damaged(String),
    #[error("{0}")]
    Io(String),
}

impl VfsError {
    pub fn errno(&self) -> i32 {
        match self {
            VfsError::NotFound => libc::ENOENT,
            VfsError::NotDir => libc::ENOTDIR,
            VfsError::NotSymlink => libc::EINVAL,
            VfsError::IsDir => libc::EISDIR,
            VfsError::ReadOnly => libc::EROFS,
            VfsError::BadHandle => libc::EBADF,
            VfsError::Damaged(_) | VfsError::Io(_) => libc::EIO,
        }
    }
}

impl From<cache::LoadError> for VfsError {
    fn from(e: cache::LoadError) -> VfsError {
        if e.damaged {
            VfsError::Damaged(e.message)
        } else {
            VfsError::Io(e.message)
        }
    }
}

impl From<RepoError> for VfsError {
    fn from(e: RepoError) -> VfsError {
        if e.is_corruption() {
            VfsError::Damaged(e.to_string())
        } else {
            VfsError::Io(e.to_string())
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// How long the kernel may trust this: long inside snapshots (they never change), short for
    /// the folders that list snapshots.
    pub ttl: Duration,
}

/// What an inode is.
#[derive(Clone)]
enum Node {
    Root,
    Snapshots,
    /// `restore/`: a link to the staging folder, where copies land at local disk speed and
    /// with the local filesystem's full behaviour.
    Restore,
    Device(String),
    Latest(String),
    Snapshot {
        name: String,
        root: BlobId,
        time_ns: i64,
    },
    /// Entry `index` of `tree` (the tree is kept alive with it).
    Entry {
        tree: Arc<Tree>,
        index: u32,
    },
    /// `<time>.omitted.txt`: the listing of the files a snapshot recorded without content
    /// (`--metadata-only`), from its extras tree.
    OmittedList {
        name: String,
        extras: BlobId,
        time_ns: i64,
    },
}

impl Node {
    /// False when both are snapshot folders of different snapshots.
    fn same_snapshot(&self, other: &Node) -> bool {
        match (self, other) {
            (Node::Snapshot { root: a, time_ns: t, .. }, Node::Snapshot { root: b, time_ns: u, .. })
            | (Node::OmittedList { extras: a, time_ns: t, .. }, Node::OmittedList { extras: b, time_ns: u, .. }) => {
                a == b && t == u
            }
            _ => true,
        }
    }

    fn name(&self) -> &[u8] {
        match self {
            Node::Root => b"",
            Node::Snapshots => b"snapshots",
            Node::Restore => b"restore",
            Node::Device(name) => name.as_bytes(),
            Node::Latest(_) => b"latest",
            Node::Snapshot { name, .. } | Node::OmittedList { name, .. } => name.as_bytes(),
            Node::Entry { tree, index } => &tree.entries[*index as usize].name,
        }
    }

    fn entry(&self) -> Option<&Entry> {
        match self {
            Node::Entry { tree, index } => Some(&tree.entries[*index as usize]),
            _ => None,
        }
    }
}

struct Inode {
    parent: u64,
    node: Node,
    lookups: u64,
}

/// One listing row: the caller decides whether the kernel took it (`remember`).
pub struct Child {
    pub ino: u64,
    pub name: Vec<u8>,
    pub attr: Attr,
    node: Node,
}

pub struct ViewOptions {
    pub cache_bytes: usize,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The staging folder (absolute) that `restore/` links to; without it there is no `restore/`.
    pub staging: Option<PathBuf>,
}

struct SnapshotList {
    /// Modification time of the repository's `snapshots/` folder: it changes with every backup
    /// and every forget, and is the mtime of the folders that list snapshots, so that the
    /// kernel's cached listings of them are dropped when it changes.
    /// When the list last changed (the mount's time until a change is seen).
    stamp: Option<SystemTime>,
    /// The record names listed when it was last read.
    names: Vec<String>,
    checked: Option<Instant>,
    list: Arc<Vec<SnapshotInfo>>,
}

/// What reading one file needs, made on its first read and kept while the kernel holds the
/// inode. Reads are stateless per inode: the kernel need not open files (no-open mode).
struct FileReader {
    tree: Arc<Tree>,
    index: u32,
    /// Start offset of each chunk, for a binary search per read.
    offsets: Vec<u64>,
    path: String,
    /// Where the last read ended, and how many bytes in a row were read sequentially: readahead
    /// starts only for a real sequential reader, not for the kernel's own readahead around a
    /// random read.
    next_offset: AtomicU64,
    streak: AtomicU64,
}

/// The low bits of an entry's inode number that hold its place in its folder (see `ino_for`).
const ENTRY_BITS: u32 = 24;
/// Sequential bytes after which the next chunks are loaded ahead.
const STREAK_FOR_READAHEAD: u64 = 512 * 1024;
/// How far from the end of the last read a read still counts as sequential.
const NEAR: u64 = 2 << 20;

pub struct View {
    repo: Arc<Repository>,
    options: ViewOptions,
    owner: (u32, u32),
    mounted_at: i64,
    inodes: Mutex<HashMap<u64, Inode>>,
    trees: Mutex<LruCache<BlobId, Arc<Tree>>>,
    snapshots: Mutex<SnapshotList>,
    chunks: Arc<ChunkCache>,
    readers: Mutex<HashMap<u64, Arc<FileReader>>>,
    prefetch: SyncSender<Vec<BlobId>>,
    push: SyncSender<Vec<PushJob>>,
    pusher: Arc<std::sync::OnceLock<Pusher>>,
    /// When a file was last read (ms since `started`): listings are pushed only while someone
    /// reads files, not for `find` or `ls -l` alone.
    last_read_ms: AtomicU64,
    started: Instant,
    stored_bytes: Mutex<Option<(Instant, u64)>>,
    /// The last `.omitted.txt` listings made, by extras tree.
    omitted_texts: Mutex<LruCache<BlobId, Arc<Vec<u8>>>>,
    log: Box<dyn Fn(&str) + Send + Sync>,
}

impl View {
    pub fn new(repo: Arc<Repository>, options: ViewOptions, log: Box<dyn Fn(&str) + Send + Sync>) -> View {
        // The cache keeps what it loads: whole chunks need not pass through the page cache too.
        repo.read_chunks_directly();
        let chunks = Arc::new(ChunkCache::new(repo.clone(), options.cache_bytes));
        let (prefetch, queue) = sync_channel::<Vec<BlobId>>(2 * PREFETCH_THREADS);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..PREFETCH_THREADS {
            let (queue, chunks) = (queue.clone(), chunks.clone());
            std::thread::spawn(move || loop {
                let next = queue.lock().expect("prefetch queue lock").recv();
                match next {
                    // A failure is reported when the reader gets there.
                    Ok(ids) => chunks.prefetch(&ids),
                    Err(_) => return,
                }
            });
        }
        let pusher = Arc::new(std::sync::OnceLock::<Pusher>::new());
        let (push, pushes) = sync_channel::<Vec<PushJob>>(256);
        let (push_chunks, push_to) = (chunks.clone(), pusher.clone());
        std::thread::spawn(move || {
            for jobs in pushes {
                // The kernel sets up a listing's inodes after it has the reply, and drops a push
                // for an inode it does not know yet: give it a moment.
                std::thread::sleep(Duration::from_millis(2));
                // Neighbours in a pack in one read, not a request per small file.
                push_chunks.prefetch(&jobs.iter().map(|PushJob(_, id, _)| *id).collect::<Vec<_>>());
                for PushJob(ino, id, size) in jobs {
                    if let (Some(push), Ok(chunk)) = (push_to.get(), push_chunks.get(&id)) {
                        push(ino, &chunk[..(size as usize).min(chunk.len())]);
                    }
                }
            }
        });
        let mut inodes = HashMap::new();
        inodes.insert(ROOT_INO, Inode { parent: ROOT_INO, node: Node::Root, lookups: 1 });
        inodes.insert(SNAPSHOTS_INO, Inode { parent: ROOT_INO, node: Node::Snapshots, lookups: 1 });
        // SAFETY: getuid and getgid have no preconditions.
        let owner = unsafe { (libc::getuid(), libc::getgid()) };
        View {
            repo,
            owner: (options.uid.unwrap_or(owner.0), options.gid.unwrap_or(owner.1)),
            options,
            mounted_at: chrono::Utc::now().timestamp(),
            inodes: Mutex::new(inodes),
            trees: Mutex::new(LruCache::new(NonZeroUsize::new(CACHED_TREES).expect("nonzero"))),
            snapshots: Mutex::new(SnapshotList {
                stamp: None,
                names: Vec::new(),
                checked: None,
                list: Arc::new(Vec::new()),
            }),
            chunks,
            readers: Mutex::new(HashMap::new()),
            prefetch,
            push,
            pusher,
            last_read_ms: AtomicU64::new(0),
            started: Instant::now(),
            stored_bytes: Mutex::new(None),
            omitted_texts: Mutex::new(LruCache::new(NonZeroUsize::new(OMITTED_TEXTS).expect("nonzero"))),
            log,
        }
    }

    /// The snapshot list, re-read when the records listed in `snapshots/` change (looked at
    /// most every 200 ms on a folder, 400 ms on an object store, where a listing is a
    /// request), so that backups made while mounted, here or on another machine, appear.
    /// Records read before are not read again.
    fn snapshot_list(&self) -> Result<Arc<Vec<SnapshotInfo>>, VfsError> {
        let mut cached = self.snapshots.lock().expect("snapshot list lock");
        let every = if self.repo.local_folder().is_some() { LOOK_EVERY_LOCAL } else { LOOK_EVERY_REMOTE };
        if cached.checked.is_some_and(|t| t.elapsed() < every) {
            return Ok(cached.list.clone());
        }
        let names = match snapshot::list_names(&self.repo) {
            Ok(names) => names,
            // The store is down: what was listed before is still what there is to show.
            Err(e) if cached.checked.is_some() => {
                (self.log)(&format!("phonebak: cannot look for new snapshots (showing those known): {e}"));
                cached.checked = Some(Instant::now());
                return Ok(cached.list.clone());
            }
            Err(e) => return Err(e.into()),
        };
        if cached.checked.is_none() || names != cached.names {
            cached.list = Arc::new(snapshot::list_reusing(&self.repo, &cached.list)?);
            if cached.checked.is_some() {
                cached.stamp = Some(SystemTime::now());
            }
            cached.names = names;
        }
        cached.checked = Some(Instant::now());
        Ok(cached.list.clone())
    }

    /// When the snapshot list last changed, in ns since the epoch (the mount time if unknown).
    fn snapshots_changed_ns(&self) -> i64 {
        let stamp = self.snapshots.lock().expect("snapshot list lock").stamp;
        stamp
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(self.mounted_at * 1_000_000_000)
    }

    fn tree(&self, id: &BlobId) -> Result<Arc<Tree>, VfsError> {
        if let Some(tree) = self.trees.lock().expect("tree cache lock").get(id) {
            return Ok(tree.clone());
        }
        // Through the chunk cache, so that trees loaded ahead (see `readdir`) are found there.
        let bytes = self.chunks.get(id)?;
        let tree = Tree::decode(&bytes).map_err(|why| VfsError::Damaged(format!("tree {id}: {why}")))?;
        let tree = Arc::new(tree);
        self.trees.lock().expect("tree cache lock").put(*id, tree.clone());
        Ok(tree)
    }

    /// Loads the trees of the subfolders of a folder being listed, in the background: whoever
    /// lists a folder (`find`, `cp -r`, a file manager) usually opens its subfolders next.
    fn load_subtrees_ahead(&self, children: &[(Vec<u8>, Node)]) {
        let trees = self.trees.lock().expect("tree cache lock");
        let wanted: Vec<BlobId> = children
            .iter()
            .filter_map(|(_, child)| match child.entry().map(|e| &e.node) {
                Some(TreeNode::Dir { tree }) if !trees.contains(tree) && !self.chunks.contains(tree) => Some(*tree),
                _ => None,
            })
            .collect();
        drop(trees);
        if !wanted.is_empty() {
            let _ = self.prefetch.try_send(wanted); // the prefetchers are busy: it is read when listed
        }
    }

    fn node(&self, ino: u64) -> Result<(u64, Node), VfsError> {
        let inodes = self.inodes.lock().expect("inode lock");
        inodes.get(&ino).map(|i| (i.parent, i.node.clone())).ok_or(VfsError::NotFound)
    }

    /// The tree a folder node lists, if it is a tree-backed folder.
    fn dir_tree(&self, node: &Node) -> Result<Option<Arc<Tree>>, VfsError> {
        match node {
            Node::Snapshot { root, .. } => self.tree(root).map(Some),
            Node::Entry { .. } => match &node.entry().expect("entry node").node {
                TreeNode::Dir { tree } => self.tree(tree).map(Some),
                _ => Err(VfsError::NotDir),
            },
            _ => Ok(None),
        }
    }

    /// Everything in a folder, in listing order.
    fn children(&self, node: &Node) -> Result<Vec<(Vec<u8>, Node)>, VfsError> {
        if let Some(tree) = self.dir_tree(node)? {
            let count = tree.entries.len() as u32;
            return Ok((0..count)
                .map(|index| (tree.entries[index as usize].name.clone(), Node::Entry { tree: tree.clone(), index }))
                .collect());
        }
        let list = self.snapshot_list()?;
        Ok(match node {
            Node::Root if self.options.staging.is_some() => {
                vec![(b"restore".to_vec(), Node::Restore), (b"snapshots".to_vec(), Node::Snapshots)]
            }
            Node::Root => vec![(b"snapshots".to_vec(), Node::Snapshots)],
            Node::Snapshots => {
                let mut devices: Vec<&str> = list.iter().map(|s| s.snapshot.device.as_str()).collect();
                devices.sort();
                devices.dedup();
                devices.into_iter().map(|d| (d.as_bytes().to_vec(), Node::Device(d.to_string()))).collect()
            }
            Node::Device(device) => {
                let mut rows: Vec<(Vec<u8>, Node)> = list
                    .iter()
                    .filter(|s| &s.snapshot.device == device)
                    .flat_map(|s| {
                        let node =
                            Node::Snapshot { name: s.name.clone(), root: s.snapshot.root, time_ns: s.snapshot.time_ns };
                        let omitted = s.snapshot.extras.filter(|_| s.snapshot.stats.omitted > 0).map(|extras| {
                            let name = format!("{}{OMITTED_SUFFIX}", s.name);
                            (name.clone().into_bytes(), Node::OmittedList { name, extras, time_ns: s.snapshot.time_ns })
                        });
                        std::iter::once((s.name.as_bytes().to_vec(), node)).chain(omitted)
                    })
                    .collect();
                if !rows.is_empty() {
                    rows.push((b"latest".to_vec(), Node::Latest(device.clone())));
                }
                rows
            }
            _ => return Err(VfsError::NotDir),
        })
    }

    fn find_child(&self, node: &Node, name: &[u8]) -> Result<Node, VfsError> {
        if let Some(tree) = self.dir_tree(node)? {
            let index =
                tree.entries.binary_search_by(|e| e.name.as_slice().cmp(name)).map_err(|_| VfsError::NotFound)?;
            return Ok(Node::Entry { tree, index: index as u32 });
        }
        let children = self.children(node)?;
        children.into_iter().find(|(n, _)| n == name).map(|(_, node)| node).ok_or(VfsError::NotFound)
    }

    /// The inode number for `name` (which is `node`) in `parent`: stable, derived from both,
    /// probing past the (unlikely) collision with another live inode. The entries of a
    /// snapshot's folder get numbers that rise in the folder's order: `cp -r` reads a folder in
    /// inode order, and loading ahead across files follows the folder's order. With numbers in
    /// hash order, `cp -a` of 1 GB of photos loaded most chunks twice.
    ///
    /// A number is the one `node` already has, or a free one taken at once (under the caller's
    /// lock), so that two listings running together whose hashes collide never give two nodes
    /// one number. A name that now means another snapshot
    /// (a forget renamed a same-second one) gets a new number: the kernel then drops what it
    /// cached for the old one.
    fn ino_for(&self, inodes: &mut HashMap<u64, Inode>, parent: u64, name: &[u8], node: &Node) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let hashed = match node {
            Node::Entry { index, .. } if u64::from(*index) < 1 << ENTRY_BITS => {
                parent.hash(&mut hasher);
                (hasher.finish() >> (ENTRY_BITS + 1) << ENTRY_BITS) | u64::from(*index)
            }
            _ => {
                (parent, name).hash(&mut hasher);
                hasher.finish() >> 1
            }
        };
        let mut ino = hashed.max(16);
        while let Some(existing) = inodes.get(&ino) {
            if existing.parent == parent && existing.node.name() == name && existing.node.same_snapshot(node) {
                return ino;
            }
            ino = ino.wrapping_add(1).max(16);
        }
        inodes.insert(ino, Inode { parent, node: node.clone(), lookups: 0 });
        ino
    }

    fn attr(&self, ino: u64, node: &Node) -> Result<Attr, VfsError> {
        let (uid, gid) = self.owner;
        let synthetic_dir = |mtime_ns: i64, nlink: u32| Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            perm: 0o555,
            nlink,
            uid,
            gid,
            mtime_sec: mtime_ns.div_euclid(1_000_000_000),
            mtime_nsec: mtime_ns.rem_euclid(1_000_000_000) as u32,
            // With the list re-read at most 200 ms late, a change shows within a second.
            ttl: SNAPSHOT_NAMES_TTL,
        };
        let list = self.snapshot_list()?;
        let changed_ns = self.snapshots_changed_ns();
        let devices = || {
            let mut names: Vec<&str> = list.iter().map(|s| s.snapshot.device.as_str()).collect();
            names.sort();
            names.dedup();
            names.len() as u32
        };
        Ok(match node {
            Node::Root => synthetic_dir(changed_ns, 3),
            Node::Restore => {
                let target = self.restore_target().len();
                Attr { kind: Kind::Symlink, size: target as u64, perm: 0o777, nlink: 1, ..synthetic_dir(changed_ns, 1) }
            }
            Node::Snapshots => synthetic_dir(changed_ns, 2 + devices()),
            Node::Device(d) => {
                let snapshots = list.iter().filter(|s| &s.snapshot.device == d).count() as u32;
                synthetic_dir(changed_ns, 2 + snapshots)
            }
            Node::Latest(d) => {
                let target = list.iter().rfind(|s| &s.snapshot.device == d).map(|s| s.name.len()).unwrap_or(0);
                Attr { kind: Kind::Symlink, size: target as u64, perm: 0o777, nlink: 1, ..synthetic_dir(changed_ns, 1) }
            }
            Node::Snapshot { root, time_ns, .. } => {
                let subdirs =
                    self.tree(root)?.entries.iter().filter(|e| matches!(e.node, TreeNode::Dir { .. })).count();
                // Short-lived like its listing folder: a forgotten snapshot must go away.
                Attr { perm: 0o755, ..synthetic_dir(*time_ns, 2 + subdirs as u32) }
            }
            Node::Entry { .. } => self.entry_attr(ino, node.entry().expect("entry node"))?,
            Node::OmittedList { extras, time_ns, .. } => Attr {
                kind: Kind::File,
                size: self.omitted_text(extras)?.len() as u64,
                perm: 0o444,
                nlink: 1,
                ..synthetic_dir(*time_ns, 1)
            },
        })
    }

    /// The text of a snapshot's `.omitted.txt`, made from its list on first use.
    fn omitted_text(&self, extras: &BlobId) -> Result<Arc<Vec<u8>>, VfsError> {
        if let Some(text) = self.omitted_texts.lock().expect("omitted text lock").get(extras) {
            return Ok(text.clone());
        }
        let mut text = OMITTED_HEADING.as_bytes().to_vec();
        if let Some(list) = crate::extras::open(&self.repo, Some(extras), crate::extras::OMITTED)? {
            let mut reader = crate::extras::OmittedReader::new(list);
            while let Some(file) = reader.next_file().map_err(|e| VfsError::Damaged(e.to_string()))? {
                text.extend_from_slice(&crate::extras::omitted_line(&file));
            }
        }
        let text = Arc::new(text);
        self.omitted_texts.lock().expect("omitted text lock").put(*extras, text.clone());
        Ok(text)
    }

    /// Reads a file that is not in a snapshot's folders: a `.omitted.txt` listing.
    fn read_text(&self, ino: u64, offset: u64, size: u32) -> Result<ReadData, VfsError> {
        let (_, Node::OmittedList { extras, .. }) = self.node(ino)? else { return Err(VfsError::IsDir) };
        let text = self.omitted_text(&extras)?;
        let start = (offset as usize).min(text.len());
        let end = start.saturating_add(size as usize).min(text.len());
        Ok(ReadData::Copied(text[start..end].to_vec()))
    }

    fn entry_attr(&self, ino: u64, entry: &Entry) -> Result<Attr, VfsError> {
        let (kind, size, nlink) = match &entry.node {
            TreeNode::File { size, .. } => (Kind::File, *size, 1),
            TreeNode::Symlink { target } => (Kind::Symlink, target.len() as u64, 1),
            TreeNode::Dir { tree } => {
                let subdirs =
                    self.tree(tree)?.entries.iter().filter(|e| matches!(e.node, TreeNode::Dir { .. })).count();
                (Kind::Dir, 4096, 2 + subdirs as u32)
            }
        };
        Ok(Attr {
            ino,
            kind,
            size,
            perm: if kind == Kind::Symlink { 0o777 } else { entry.meta.mode as u16 },
            nlink,
            uid: self.options.uid.unwrap_or(entry.meta.uid),
            gid: self.options.gid.unwrap_or(entry.meta.gid),
            mtime_sec: entry.meta.mtime_sec,
            mtime_nsec: entry.meta.mtime_nsec,
            ttl: Duration::from_secs(3600),
        })
    }

    /// Looks `name` up in `parent` and counts one kernel reference to the result.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, VfsError> {
        let (_, parent_node) = self.node(parent)?;
        let node = self.find_child(&parent_node, name)?;
        let mut attr = self.attr(0, &node)?;
        // Numbered and counted under one lock: a forget or another lookup cannot come between.
        let mut inodes = self.inodes.lock().expect("inode lock");
        attr.ino = self.ino_for(&mut inodes, parent, name, &node);
        inodes.get_mut(&attr.ino).expect("numbered just now").lookups += 1;
        Ok(attr)
    }

    fn remember_node(&self, parent: u64, ino: u64, node: Node) {
        let mut inodes = self.inodes.lock().expect("inode lock");
        inodes.entry(ino).or_insert(Inode { parent, node, lookups: 0 }).lookups += 1;
    }

    /// Lets the view push file contents into the kernel's page cache (set once the session runs).
    pub fn set_pusher(&self, pusher: Pusher) {
        let _ = self.pusher.set(pusher);
    }

    /// Whether a listed row is a small file worth pushing (see `push_contents`).
    pub fn push_job(&self, child: &Child) -> Option<PushJob> {
        match child.node.entry().map(|e| &e.node) {
            Some(TreeNode::File { size, chunks }) if *size > 0 && *size <= PUSH_FILES_UP_TO && chunks.len() == 1 => {
                Some(PushJob(child.ino, chunks[0].id, *size))
            }
            _ => None,
        }
    }

    /// Pushes the contents of small files just listed into the kernel's page cache, in the
    /// background. Whoever lists a folder of small files (`tar`, `cp -r`, `rsync`, a file
    /// manager making previews) usually reads them next, and each read would otherwise be a
    /// round trip to this daemon; pushed, it is a page-cache hit. Best effort: a push that loses
    /// the race with the kernel only leaves that file to be read as usual.
    pub fn push_contents(&self, mut jobs: Vec<PushJob>) {
        let last_read = self.last_read_ms.load(Ordering::Relaxed);
        if self.pusher.get().is_none() || last_read == 0 || self.now_ms().saturating_sub(last_read) > 1000 {
            return;
        }
        let mut total = 0;
        jobs.retain(|PushJob(_, _, size)| {
            total += size;
            total <= PUSH_PER_LISTING
        });
        if !jobs.is_empty() {
            let _ = self.push.try_send(jobs);
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Counts a kernel reference to a row it took from `readdir_plus`.
    pub fn remember(&self, parent: u64, child: Child) {
        self.remember_node(parent, child.ino, child.node);
    }

    /// The kernel dropped `count` references: an inode nobody holds is dropped too (its number
    /// comes back the same if it is looked up again).
    pub fn forget(&self, ino: u64, count: u64) {
        if ino == ROOT_INO || ino == SNAPSHOTS_INO {
            return;
        }
        let mut inodes = self.inodes.lock().expect("inode lock");
        if let Some(inode) = inodes.get_mut(&ino) {
            inode.lookups = inode.lookups.saturating_sub(count);
            if inode.lookups == 0 {
                inodes.remove(&ino);
                self.readers.lock().expect("reader lock").remove(&ino);
            }
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, VfsError> {
        let (_, node) = self.node(ino)?;
        self.attr(ino, &node)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, VfsError> {
        match self.node(ino)?.1 {
            Node::Latest(device) => {
                let list = self.snapshot_list()?;
                list.iter()
                    .rfind(|s| s.snapshot.device == device)
                    .map(|s| s.name.clone().into_bytes())
                    .ok_or(VfsError::NotFound)
            }
            Node::Restore => Ok(self.restore_target().to_vec()),
            node @ Node::Entry { .. } => match &node.entry().expect("entry node").node {
                TreeNode::Symlink { target } => Ok(target.clone()),
                _ => Err(VfsError::NotSymlink),
            },
            _ => Err(VfsError::NotSymlink),
        }
    }

    /// The rows of folder `ino` from position `offset` on (`.` and `..` first). With `plus`,
    /// each row carries its attributes, and the caller must `remember` the rows the kernel took.
    pub fn readdir(&self, ino: u64, offset: usize, plus: bool) -> Result<Vec<Child>, VfsError> {
        let (parent, node) = self.node(ino)?;
        let mut rows = Vec::new();
        let dots = [(b".".to_vec(), ino, node.clone()), (b"..".to_vec(), parent, node.clone())];
        for (position, (name, dot_ino, dot_node)) in dots.into_iter().enumerate() {
            if position >= offset {
                let attr = if plus { self.attr(ino, &dot_node)? } else { placeholder_attr(dot_ino, Kind::Dir) };
                rows.push(Child { ino: dot_ino, name, attr, node: dot_node });
            }
        }
        let children = self.children(&node)?;
        if offset == 0 {
            self.load_subtrees_ahead(&children);
        }
        let mut inodes = self.inodes.lock().expect("inode lock");
        let numbered: Vec<(u64, Vec<u8>, Node)> = children
            .into_iter()
            .skip(offset.saturating_sub(2))
            .map(|(name, child)| (self.ino_for(&mut inodes, ino, &name, &child), name, child))
            .collect();
        drop(inodes);
        for (child_ino, name, child) in numbered {
            let attr = if plus { self.attr(child_ino, &child)? } else { placeholder_attr(child_ino, kind_of(&child)) };
            rows.push(Child { ino: child_ino, name, attr, node: child });
        }
        Ok(rows)
    }

    /// Checks that `ino` can be opened (a file; for reading only).
    pub fn open(&self, ino: u64, write: bool) -> Result<(), VfsError> {
        match kind_of(&self.node(ino)?.1) {
            Kind::File if write => Err(VfsError::ReadOnly),
            Kind::File => Ok(()),
            _ => Err(VfsError::IsDir),
        }
    }

    fn reader(&self, ino: u64) -> Result<Arc<FileReader>, VfsError> {
        if let Some(reader) = self.readers.lock().expect("reader lock").get(&ino) {
            return Ok(reader.clone());
        }
        let (_, node) = self.node(ino)?;
        let Node::Entry { tree, index } = &node else { return Err(VfsError::IsDir) };
        let TreeNode::File { chunks, .. } = &tree.entries[*index as usize].node else {
            return Err(VfsError::IsDir);
        };
        let mut offsets = Vec::with_capacity(chunks.len());
        let mut at = 0u64;
        for chunk in chunks {
            offsets.push(at);
            at += chunk.len as u64;
        }
        let reader = Arc::new(FileReader {
            tree: tree.clone(),
            index: *index,
            offsets,
            path: self.path_of(ino),
            next_offset: AtomicU64::new(0),
            streak: AtomicU64::new(0),
        });
        self.readers.lock().expect("reader lock").insert(ino, reader.clone());
        Ok(reader)
    }

    /// The mount-relative path of an inode, for log lines.
    fn path_of(&self, mut ino: u64) -> String {
        let inodes = self.inodes.lock().expect("inode lock");
        let mut parts = Vec::new();
        while ino != ROOT_INO {
            let Some(inode) = inodes.get(&ino) else { break };
            parts.push(String::from_utf8_lossy(inode.node.name()).into_owned());
            ino = inode.parent;
        }
        parts.reverse();
        PathBuf::from("/").join(parts.join("/")).display().to_string()
    }

    /// Reads up to `size` bytes at `offset` of file `ino`. Each chunk is located by binary
    /// search, served from the cache or loaded and verified; a sequential reader gets the next
    /// chunks loaded ahead.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<ReadData, VfsError> {
        self.last_read_ms.store(self.now_ms(), Ordering::Relaxed);
        let file = match self.reader(ino) {
            Ok(file) => file,
            Err(VfsError::IsDir) => return self.read_text(ino, offset, size),
            Err(e) => return Err(e),
        };
        let TreeNode::File { size: file_size, chunks } = &file.tree.entries[file.index as usize].node else {
            return Err(VfsError::IsDir);
        };
        if offset >= *file_size || size == 0 {
            return Ok(ReadData::Copied(Vec::new()));
        }
        let want = (size as u64).min(file_size - offset) as usize;
        let mut out = Vec::new();
        let mut single = None;
        let mut index = 0;
        // A reader that starts at the beginning of a file is taken to read on: most do.
        let streak = if offset == 0 {
            file.streak.store(STREAK_FOR_READAHEAD, Ordering::Relaxed);
            file.next_offset.store(want as u64, Ordering::Relaxed);
            STREAK_FOR_READAHEAD
        } else if file.next_offset.swap(offset + want as u64, Ordering::Relaxed).abs_diff(offset) <= NEAR {
            // Near the last read, not only right after it: the kernel's readahead requests
            // arrive on several threads, slightly out of order.
            file.streak.fetch_add(want as u64, Ordering::Relaxed) + want as u64
        } else {
            file.streak.store(want as u64, Ordering::Relaxed);
            want as u64
        };
        let mut done = 0;
        while done < want {
            let at = offset + done as u64;
            index = file.offsets.partition_point(|&start| start <= at) - 1;
            let in_chunk = (at - file.offsets[index]) as usize;
            let (piece, piece_start) = self.piece(&chunks[index].id, in_chunk, streak).map_err(|e| {
                (self.log)(&format!("phonebak: cannot read {}: {e}", file.path));
                e
            })?;
            let start = in_chunk - piece_start;
            let take = piece.len().saturating_sub(start).min(want - done);
            if take == 0 {
                return Err(VfsError::Damaged(format!("{}: a chunk is shorter than its file says", file.path)));
            }
            if streak >= STREAK_FOR_READAHEAD && piece_start == 0 && start + take == piece.len() {
                self.chunks.consumed(&chunks[index].id);
            }
            if done == 0 && take == want {
                single = Some((piece, start..start + take)); // the common case: no copy here
            } else {
                if out.capacity() == 0 {
                    out = gathering_buffer(); // only now: a read inside one chunk needs none
                }
                out.extend_from_slice(&piece[start..start + take]);
            }
            done += take;
        }
        if streak >= STREAK_FOR_READAHEAD {
            // The next chunks of this file, then (near its end) the first ones of the files after
            // it in its folder: `tar`, `cp -r` and `rsync` read folders file by file, in order.
            let following = file.tree.entries[file.index as usize + 1..].iter().take(FILES_AHEAD);
            let next_files = following.filter_map(|e| match &e.node {
                TreeNode::File { chunks, .. } => Some(chunks.iter()),
                _ => None,
            });
            let budget = READAHEAD_BYTES.min(self.options.cache_bytes / 4) as u64;
            let (mut ahead, mut ahead_bytes) = (Vec::new(), 0);
            for chunk in chunks[index + 1..].iter().chain(next_files.flatten()) {
                if ahead.len() == READAHEAD_CHUNKS || ahead_bytes >= budget {
                    break;
                }
                ahead.push(*chunk);
                ahead_bytes += u64::from(chunk.len);
            }
            let missing = self.chunks.missing(ahead);
            // Asked for by the half window, not chunk by chunk: neighbours in a pack then come
            // in one read.
            if missing.iter().map(|c| u64::from(c.len)).sum::<u64>() * 2 >= ahead_bytes && !missing.is_empty() {
                let ids = missing.into_iter().map(|c| c.id).collect();
                let _ = self.prefetch.try_send(ids); // the prefetchers are busy: they are ahead enough
            }
        }
        Ok(match single {
            Some((chunk, range)) => ReadData::InChunk(chunk, range),
            None => ReadData::Copied(out),
        })
    }

    /// What serves a read at `in_chunk` of chunk `id`: the whole chunk, or for a random read of a
    /// framed chunk not in the cache just the frame holding it (64 KiB read and opened instead of
    /// about 1 MiB). Returns the piece and where in the chunk it starts.
    fn piece(&self, id: &BlobId, in_chunk: usize, streak: u64) -> Result<(cache::Chunk, usize), VfsError> {
        if streak < STREAK_FOR_READAHEAD && !self.chunks.contains(id) && self.repo.frames_of(id)?.is_some() {
            let number = in_chunk / FRAME_LEN;
            return Ok((self.chunks.get_frame(id, number as u32)?, number * FRAME_LEN));
        }
        Ok((self.chunks.get(id)?, 0))
    }

    /// (total bytes of the repository's packs, free bytes on its disk); the first is recounted
    /// at most every 10 s.
    pub fn space(&self) -> (u64, u64) {
        let mut cached = self.stored_bytes.lock().expect("space lock");
        let stored = match *cached {
            Some((when, bytes)) if when.elapsed() < Duration::from_secs(10) => bytes,
            _ => {
                let bytes = self.repo.list_packs().map(|p| p.iter().map(|(_, s)| s).sum()).unwrap_or(0);
                *cached = Some((Instant::now(), bytes));
                bytes
            }
        };
        (stored, self.repo.free_space().unwrap_or(0))
    }

    /// Where `restore/` leads: the staging folder.
    fn restore_target(&self) -> &[u8] {
        self.options.staging.as_ref().map_or(&[][..], |dir| dir.as_os_str().as_bytes())
    }

    /// Whether `ino` lies inside a snapshot (everything the kernel may cache for long).
    pub fn is_immutable(&self, ino: u64) -> bool {
        matches!(self.node(ino), Ok((_, Node::Entry { .. } | Node::Snapshot { .. })))
    }
}

/// What a read returns: usually a slice of one cached chunk (no copy), or bytes gathered from
/// several chunks.
pub enum ReadData {
    InChunk(cache::Chunk, std::ops::Range<usize>),
    Copied(Vec<u8>),
}

impl ReadData {
    pub fn bytes(&self) -> &[u8] {
        match self {
            ReadData::InChunk(chunk, range) => &chunk[range.clone()],
            ReadData::Copied(bytes) => bytes,
        }
    }
}

impl Drop for ReadData {
    /// Gives the gathering buffer back to this thread for its next read: replies of 1 MiB
    /// gathered into fresh memory each time cost more (page faults, zeroing) than the copy.
    fn drop(&mut self) {
        if let ReadData::Copied(bytes) = self {
            let bytes = std::mem::take(bytes);
            GATHERED.with(|buffer| {
                let mut buffer = buffer.borrow_mut();
                if bytes.capacity() > buffer.capacity() {
                    *buffer = bytes;
                }
            });
        }
    }
}

/// This thread's buffer for gathering a read that spans chunks (or frames), emptied.
fn gathering_buffer() -> Vec<u8> {
    let mut buffer = GATHERED.with(|buffer| std::mem::take(&mut *buffer.borrow_mut()));
    buffer.clear();
    buffer
}

thread_local! {
    /// Where a read spanning several chunks (or frames) is gathered; see `ReadData::drop`.
    static GATHERED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn kind_of(node: &Node) -> Kind {
    match node {
        Node::Latest(_) | Node::Restore => Kind::Symlink,
        Node::OmittedList { .. } => Kind::File,
        Node::Entry { .. } => match &node.entry().expect("entry node").node {
            TreeNode::File { .. } => Kind::File,
            TreeNode::Dir { .. } => Kind::Dir,
            TreeNode::Symlink { .. } => Kind::Symlink,
        },
        _ => Kind::Dir,
    }
}

fn placeholder_attr(ino: u64, kind: Kind) -> Attr {
    Attr { ino, kind, size: 0, perm: 0, nlink: 1, uid: 0, gid: 0, mtime_sec: 0, mtime_nsec: 0, ttl: Duration::ZERO }
}
