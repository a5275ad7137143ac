//! Backup: walk a source, reuse unchanged files from the parent snapshot, store what is new.
//!
//! The calling thread walks, reads, chunks and hashes (every dedup decision is made there, so it
//! needs no locks); worker threads compress and seal; one writer thread packs. Bounded channels
//! between them keep memory flat whatever the phone's size. The snapshot record is written only
//! after every pack and index it needs is durable.

use std::collections::HashSet;
use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::chunker::{chunks, ChunkerParams};
use crate::progress::Progress;
use crate::repo::lock::{hostname, LockKind, RepoLock};
use crate::repo::pack::PackEntry;
use crate::repo::packer::{Packer, PackerReport};
use crate::repo::snapshot::{self, Snapshot, SnapshotInfo, SnapshotStats};
use crate::repo::{BlobId, BlobKind, PackId, RepoError, Repository, SnapshotId};
use crate::source::{Source, SourceEntry, SourceError, SourceFile, SourceKind};
use crate::tree::{is_valid_symlink_target, load_tree, ChunkRef, Entry, Meta, Node, Tree};
use crate::tree_builder;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("invalid pattern {pattern:?}: {why}")]
    Pattern { pattern: String, why: String },
    #[error("{0}")]
    Device(String),
    /// The packing threads stopped; their own error is what gets reported.
    #[error("the repository writer stopped")]
    WriterStopped,
}

/// Which paths a backup takes: excludes win; with includes, only matching paths (and the
/// folders leading to them) are kept. A pattern without `/` matches a name at any depth.
#[derive(Default)]
pub struct PathFilter {
    excludes: Option<GlobSet>,
    includes: Option<GlobSet>,
}

impl PathFilter {
    pub fn new(excludes: &[String], includes: &[String]) -> Result<PathFilter, BackupError> {
        Ok(PathFilter { excludes: build_globs(excludes)?, includes: build_globs(includes)? })
    }

    fn matches(set: &GlobSet, path: &Path) -> bool {
        set.is_match(path) || path.file_name().is_some_and(|name| set.is_match(name))
    }

    fn excluded(&self, path: &Path) -> bool {
        self.excludes.as_ref().is_some_and(|set| Self::matches(set, path))
    }

    /// Is `path` wanted for itself (not only as a way to something wanted below it)?
    fn included(&self, path: &Path, inside_included: bool) -> bool {
        inside_included || self.includes.as_ref().is_none_or(|set| Self::matches(set, path))
    }
}

fn build_globs(patterns: &[String]) -> Result<Option<GlobSet>, BackupError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern.trim_end_matches('/'))
            .map_err(|e| BackupError::Pattern { pattern: pattern.clone(), why: e.to_string() })?;
        builder.add(glob);
    }
    builder.build().map(Some).map_err(|e| BackupError::Pattern { pattern: patterns.join(" "), why: e.to_string() })
}

pub struct BackupOptions {
    pub device: String,
    pub tags: Vec<String>,
    pub filter: PathFilter,
    /// Nanoseconds since the epoch; now when `None`.
    pub time_ns: Option<i64>,
    /// Read every file even when the parent snapshot has it unchanged.
    pub force: bool,
}

pub struct BackupOutcome {
    pub id: SnapshotId,
    pub snapshot: Snapshot,
    pub parent: Option<SnapshotInfo>,
    /// Paths that could not be read, with why; the snapshot lacks them.
    pub unreadable: Vec<(String, String)>,
    /// Device nodes, sockets and pipes, which are not backed up.
    pub skipped: Vec<String>,
    /// Paths stored, but not as their source describes them, with why.
    pub notes: Vec<(String, String)>,
}

/// Size and mtime (seconds, nanoseconds) of a file.
type FileState = (u64, i64, u32);

struct Job {
    id: BlobId,
    kind: BlobKind,
    plain: Vec<u8>,
}

struct Encoded {
    id: BlobId,
    kind: BlobKind,
    stored: Vec<u8>,
    raw_len: u32,
}

pub fn run(repo: &Repository, source: &dyn Source, options: &BackupOptions) -> Result<BackupOutcome, BackupError> {
    snapshot::validate_device_name(&options.device).map_err(BackupError::Device)?;
    let lock = RepoLock::acquire(repo, LockKind::Shared, "backup")?;
    let started = Instant::now();
    let snapshots = snapshot::list(repo)?;
    let mut time_ns = options.time_ns.unwrap_or_else(|| chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0));
    // Two snapshots of a device at one time (a backup imported again with its own date) would be
    // ordered by their random ids, not by when they were made: `latest` could be the older one
    // and names would change. The later one is a nanosecond later.
    while snapshots.iter().any(|s| s.snapshot.device == options.device && s.snapshot.time_ns == time_ns) {
        time_ns += 1;
    }
    let parent = snapshots.into_iter().rfind(|s| s.snapshot.device == options.device);
    let parent_root = match (&parent, options.force) {
        (Some(info), false) => match load_tree(repo, &info.snapshot.root) {
            Ok(tree) => Some(tree),
            // Damage to the last snapshot must not stop the next one: it only costs reading.
            Err(e) if e.is_corruption() => {
                repo.warnings().warn(&format!("{e}: the last snapshot cannot be compared against; every file is read"));
                None
            }
            Err(e) => return Err(e.into()),
        },
        _ => None,
    };
    let mut known = repo.index().known_blobs()?;
    if let (Some(info), None, false) = (&parent, &parent_root, options.force) {
        known.remove(&info.snapshot.root); // it could not be read: stored again if unchanged
    }
    let unindexed = repo.index().unindexed_packs();
    let progress = Progress::bytes("backup", None);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);

    let (walk_result, pack_result) = std::thread::scope(|scope| {
        if progress.is_visible() {
            // Only for the bar's ETA: a second listing, worth it on a terminal only.
            scope.spawn(|| progress.set_total(total_size(source, &options.filter, Path::new(""))));
        }
        let (job_tx, job_rx) = sync_channel::<Vec<Job>>(workers * 2);
        let (enc_tx, enc_rx) = sync_channel::<Vec<Encoded>>(workers * 2);
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        for _ in 0..workers {
            let (job_rx, enc_tx) = (job_rx.clone(), enc_tx.clone());
            scope.spawn(move || encode_blobs(repo, &job_rx, enc_tx));
        }
        // Only the encoders may hold the job queue's receiver: when they all stop (the writer
        // failed), the walker's next send must fail instead of waiting forever.
        drop(job_rx);
        drop(enc_tx);
        let writer = scope.spawn(move || pack_blobs(repo, enc_rx, unindexed));
        let mut walker = Walker {
            repo,
            source,
            filter: &options.filter,
            params: repo.config().chunker,
            seed: repo.chunker_seed(),
            known,
            jobs: job_tx,
            batch: Vec::new(),
            batch_bytes: 0,
            stats: SnapshotStats::default(),
            unreadable: Vec::new(),
            skipped: Vec::new(),
            notes: Vec::new(),
            progress: &progress,
            writer_stopped: false,
        };
        let walked = walker.walk_root(parent_root.as_ref()).and_then(|root| {
            walker.flush().map_err(|_| BackupError::WriterStopped)?;
            Ok(root)
        });
        let Walker { stats, unreadable, skipped, notes, jobs, .. } = walker;
        drop(jobs); // lets the workers, then the writer, finish
        let packed = writer.join().expect("pack writer does not panic");
        (walked.map(|root| (root, stats, unreadable, skipped, notes)), packed)
    });
    progress.finish();
    // A failed writer makes the walker fail too (its channel closes): report the writer's cause.
    let report = pack_result?;
    let (root, mut stats, unreadable, skipped, notes) = walk_result?;
    stats.added_bytes = report.added_bytes;
    stats.unreadable = unreadable.len() as u64;
    stats.duration_ms = started.elapsed().as_millis() as u64;
    let snapshot = Snapshot {
        device: options.device.clone(),
        time_ns,
        hostname: hostname(),
        tags: options.tags.clone(),
        source: source.describe(),
        parent: parent.as_ref().map(|p| p.id),
        root,
        stats,
        facts: source.facts(),
    };
    lock.ensure_held()?;
    let id = snapshot::save(repo, &snapshot)?;
    if let Err(lost) = lock.ensure_held() {
        // Taken away while the record was written: a prune may have deleted data it needs, so
        // it is withdrawn (what it needs stays for the rerun to reuse).
        snapshot::remove(repo, &id)?;
        return Err(lost.into());
    }
    Ok(BackupOutcome { id, snapshot, parent, unreadable, skipped, notes })
}

fn encode_blobs(repo: &Repository, jobs: &std::sync::Mutex<Receiver<Vec<Job>>>, out: SyncSender<Vec<Encoded>>) {
    loop {
        let batch = match jobs.lock().expect("job queue lock").recv() {
            Ok(batch) => batch,
            Err(_) => return,
        };
        let encoded = batch
            .into_iter()
            .map(|job| Encoded {
                stored: repo.encode_blob(job.kind, &job.id, &job.plain),
                id: job.id,
                kind: job.kind,
                raw_len: job.plain.len() as u32,
            })
            .collect();
        if out.send(encoded).is_err() {
            return; // the writer failed; it reports why
        }
    }
}

fn pack_blobs(
    repo: &Repository,
    batches: Receiver<Vec<Encoded>>,
    unindexed: Vec<(PackId, Vec<PackEntry>)>,
) -> Result<PackerReport, RepoError> {
    let mut packer = Packer::new(repo);
    packer.adopt(unindexed);
    for blob in batches.into_iter().flatten() {
        packer.add(blob.id, blob.kind, &blob.stored, blob.raw_len)?;
    }
    packer.finish()
}

/// Small blobs travel in batches of about this many bytes: one hand-over per blob cost more
/// than compressing a small file.
const BATCH_BYTES: usize = 1 << 20;

struct Walker<'a> {
    repo: &'a Repository,
    source: &'a dyn Source,
    filter: &'a PathFilter,
    params: ChunkerParams,
    seed: u64,
    known: HashSet<BlobId>,
    jobs: SyncSender<Vec<Job>>,
    batch: Vec<Job>,
    batch_bytes: usize,
    stats: SnapshotStats,
    unreadable: Vec<(String, String)>,
    skipped: Vec<String>,
    notes: Vec<(String, String)>,
    progress: &'a Progress,
    writer_stopped: bool,
}

/// How a file's content was obtained.
enum Content {
    Read { chunks: Vec<ChunkRef>, size: u64 },
    Unreadable,
}

impl Walker<'_> {
    fn walk_root(&mut self, parent: Option<&Tree>) -> Result<BlobId, BackupError> {
        self.source.root_meta()?;
        // A top folder that cannot be listed is an empty snapshot, with the reason listed.
        let tree = match self.walk_dir(Path::new(""), parent, false)? {
            Some((tree, _)) => tree,
            None => self.store_tree(&Tree::default()),
        };
        Ok(tree)
    }

    /// Stores the tree of `dir` and returns its id and how many entries it kept; nothing if
    /// `dir` cannot be listed (it is reported, and left out rather than stored as an empty
    /// folder, which a restore would give back as if it had been empty).
    fn walk_dir(
        &mut self,
        dir: &Path,
        parent: Option<&Tree>,
        inside_included: bool,
    ) -> Result<Option<(BlobId, usize)>, BackupError> {
        let listing = match self.source.list(dir) {
            Ok(listing) => listing,
            Err(SourceError::Unreadable { path, source }) => {
                self.note_unreadable(path, source.to_string())?;
                return Ok(None);
            }
            Err(other) => return Err(other.into()),
        };
        for (name, error) in listing.unreadable {
            self.note_unreadable(dir.join(os_name(&name)).display().to_string(), error.to_string())?;
        }
        for (name, why) in listing.notes {
            let path = dir.join(os_name(&name)).display().to_string();
            self.progress.note(&format!("phonebak: note: {path}: {why}"));
            self.notes.push((path, why));
        }
        let (entries, rejected) = tree_builder::normalize(listing.entries, |e| &e.name);
        for (item, why) in rejected {
            let shown = dir.join(String::from_utf8_lossy(&item.name).as_ref()).display().to_string();
            self.note_unreadable(shown, format!("{why} cannot be stored"))?;
        }
        let mut tree = Tree::default();
        for item in entries {
            if self.writer_stopped {
                return Err(BackupError::WriterStopped);
            }
            let path = dir.join(os_name(&item.name));
            if self.filter.excluded(&path) {
                continue;
            }
            let wanted = self.filter.included(&path, inside_included);
            let previous = parent.and_then(|p| p.find(&item.name));
            let node = match &item.kind {
                SourceKind::Dir => self.dir_node(&path, previous, wanted)?,
                _ if !wanted => None,
                SourceKind::File { size } => self.file_node(&path, &item, *size, previous)?,
                SourceKind::Symlink { target } if !is_valid_symlink_target(target) => {
                    self.note_unreadable(path.display().to_string(), "a symlink whose target cannot be stored".into())?;
                    None
                }
                SourceKind::Symlink { target } => {
                    self.stats.symlinks += 1;
                    Some(Node::Symlink { target: target.clone() })
                }
                SourceKind::Special => {
                    self.skipped.push(path.display().to_string());
                    None
                }
            };
            if let Some(node) = node {
                tree.entries.push(Entry { name: item.name, meta: item.meta, node });
            }
        }
        let kept = tree.entries.len();
        Ok(Some((self.store_tree(&tree), kept)))
    }

    fn dir_node(&mut self, path: &Path, previous: Option<&Entry>, wanted: bool) -> Result<Option<Node>, BackupError> {
        let parent_tree = match previous.map(|e| &e.node) {
            Some(Node::Dir { tree }) => {
                let loaded = load_tree(self.repo, tree);
                if loaded.is_err() {
                    // The listing's stored copy is damaged or gone: if this folder is unchanged,
                    // its listing is stored again instead of pointing at that copy.
                    self.known.remove(tree);
                }
                loaded.ok()
            }
            _ => None,
        };
        let inside = wanted && self.filter.includes.is_some();
        let Some((tree, kept)) = self.walk_dir(path, parent_tree.as_ref(), inside)? else {
            return Ok(None);
        };
        if kept == 0 && !wanted {
            return Ok(None);
        }
        self.stats.dirs += 1;
        Ok(Some(Node::Dir { tree }))
    }

    fn file_node(
        &mut self,
        path: &Path,
        item: &SourceEntry,
        size: u64,
        previous: Option<&Entry>,
    ) -> Result<Option<Node>, BackupError> {
        if let Some(Entry { meta, node: Node::File { size: old_size, chunks }, .. }) = previous {
            let unchanged = *old_size == size && same_mtime(meta, &item.meta);
            if unchanged && chunks.iter().all(|c| self.known.contains(&c.id)) {
                self.count_file(size);
                return Ok(Some(Node::File { size, chunks: chunks.clone() }));
            }
        }
        match self.read_file(path, item, size)? {
            Content::Read { chunks, size } => {
                self.count_file(size);
                Ok(Some(Node::File { size, chunks }))
            }
            Content::Unreadable => Ok(None),
        }
    }

    fn count_file(&mut self, size: u64) {
        self.stats.files += 1;
        self.stats.bytes += size;
        self.progress.add(size);
        self.progress.message(format!("{} files", self.stats.files));
    }

    /// Reads a file; if it changes while being read, reads it again, and in the end records
    /// exactly the bytes that were read, so size and content always agree.
    fn read_file(&mut self, path: &Path, item: &SourceEntry, size: u64) -> Result<Content, BackupError> {
        let mut last = None;
        for _attempt in 0..3 {
            let result = self.source.open(path).and_then(|file| {
                self.chunk_file(file, size)
                    .map_err(|e| SourceError::Unreadable { path: path.display().to_string(), source: e })
            });
            match result {
                Ok((chunks, read, state_after)) => {
                    let stable = state_after == (size, item.meta.mtime_sec, item.meta.mtime_nsec) && read == size;
                    last = Some(Content::Read { chunks, size: read });
                    if stable {
                        break;
                    }
                }
                Err(_) if self.writer_stopped => return Err(BackupError::WriterStopped),
                Err(SourceError::Unreadable { path, source }) => {
                    self.note_unreadable(path, source.to_string())?;
                    return Ok(Content::Unreadable);
                }
                Err(other) => return Err(other.into()),
            }
        }
        Ok(last.expect("at least one attempt"))
    }

    fn chunk_file(
        &mut self,
        mut file: Box<dyn SourceFile>,
        size: u64,
    ) -> std::io::Result<(Vec<ChunkRef>, u64, FileState)> {
        let mut refs = Vec::new();
        let mut read = 0u64;
        // Most phone files are smaller than one chunk: read them in one go, without the chunker's
        // max-size buffer. The head also tells databases apart.
        let head_len = self.params.min_size as u64 + 1;
        let mut head = Vec::with_capacity(size.min(head_len) as usize);
        (&mut file).take(head_len).read_to_end(&mut head)?;
        let params = if is_database(&head) { ChunkerParams::DATABASE } else { self.params };
        if head.len() <= params.min_size as usize {
            if !head.is_empty() {
                read = head.len() as u64;
                refs.push(self.store_chunk(head)?);
            }
        } else {
            for chunk in chunks(Cursor::new(head).chain(&mut file), params, self.seed) {
                let chunk = chunk?;
                read += chunk.len() as u64;
                refs.push(self.store_chunk(chunk)?);
            }
        }
        Ok((refs, read, file.current_state()?))
    }

    fn store_chunk(&mut self, plain: Vec<u8>) -> std::io::Result<ChunkRef> {
        let id = self.repo.blob_id(&plain);
        let len = plain.len() as u32;
        if self.known.insert(id) {
            self.stats.new_bytes += len as u64;
            self.send(Job { id, kind: BlobKind::Data, plain })?;
        }
        Ok(ChunkRef { id, len })
    }

    fn store_tree(&mut self, tree: &Tree) -> BlobId {
        let plain = tree.encode();
        let id = self.repo.blob_id(&plain);
        if self.known.insert(id) {
            // A closed pipeline is reported by the writer's own error once the walk ends.
            let _ = self.send(Job { id, kind: BlobKind::Tree, plain });
        }
        id
    }

    fn send(&mut self, job: Job) -> std::io::Result<()> {
        self.batch_bytes += job.plain.len();
        self.batch.push(job);
        if self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch_bytes = 0;
        self.jobs.send(std::mem::take(&mut self.batch)).map_err(|_| {
            self.writer_stopped = true;
            std::io::Error::other("the repository writer stopped")
        })
    }

    /// Records a path that could not be read, unless the whole source has gone, which ends the
    /// backup without a snapshot.
    fn note_unreadable(&mut self, path: String, why: String) -> Result<(), BackupError> {
        self.source.root_meta()?;
        self.progress.note(&format!("phonebak: cannot read {path}: {why} (skipped)"));
        self.unreadable.push((path, why));
        Ok(())
    }
}

fn os_name(name: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(name)
}

/// Bytes below `dir` that a backup would take (unreadable parts count as nothing).
fn total_size(source: &dyn Source, filter: &PathFilter, dir: &Path) -> u64 {
    let Ok(listing) = source.list(dir) else { return 0 };
    let mut total = 0;
    for entry in listing.entries {
        let path = dir.join(os_name(&entry.name));
        if filter.excluded(&path) {
            continue;
        }
        total += match entry.kind {
            SourceKind::File { size } => size,
            SourceKind::Dir => total_size(source, filter, &path),
            _ => 0,
        };
    }
    total
}

/// SQLite databases (messages, contacts, app state) change a few pages in place between
/// backups; small chunks let a backup store about those pages instead of the whole file.
fn is_database(head: &[u8]) -> bool {
    head.starts_with(b"SQLite format 3\0")
}

fn same_mtime(a: &Meta, b: &Meta) -> bool {
    a.mtime_sec == b.mtime_sec && a.mtime_nsec == b.mtime_nsec
}
