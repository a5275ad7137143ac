//! Backup: walk a source, reuse unchanged files from the parent snapshot, store what is new.
//!
//! The calling thread walks, reads, chunks and hashes (every dedup decision is made there, so it
//! needs no locks); worker threads compress and seal; one writer thread packs. Bounded channels
//! between them keep memory flat whatever the phone's size. The snapshot record is written only
//! after every pack and index it needs is durable.

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read};
use std::path::Path;
use std::rc::Rc;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::chunker::{chunks, ChunkerParams};
use crate::extras::{self, LayoutWriter, OmittedFile, OmittedWriter};
use crate::progress::Progress;
use crate::repo::lock::{hostname, LockKind, RepoLock};
use crate::repo::pack::PackEntry;
use crate::repo::packer::{Packer, PackerReport};
use crate::repo::snapshot::{self, Snapshot, SnapshotInfo, SnapshotStats};
use crate::repo::{BlobId, BlobKind, PackId, RepoError, Repository, SnapshotId};
use crate::source::{Content, EntrySink, Source, SourceError, SourceFile, SourceKind, StreamEntry};
use crate::tree::{is_valid_symlink_target, load_tree, ChunkRef, Entry, Meta, Node, Tree};
use crate::tree_builder::{self, TreeBuilder};

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
/// folders leading to them) are kept; files matching a metadata-only pattern (or inside a
/// folder that does) are recorded by name, size and time, without content. A pattern without
/// `/` matches a name at any depth.
#[derive(Default)]
pub struct PathFilter {
    excludes: Option<GlobSet>,
    includes: Option<GlobSet>,
    metadata_only: Option<GlobSet>,
}

impl PathFilter {
    pub fn new(excludes: &[String], includes: &[String], metadata_only: &[String]) -> Result<PathFilter, BackupError> {
        Ok(PathFilter {
            excludes: build_globs(excludes)?,
            includes: build_globs(includes)?,
            metadata_only: build_globs(metadata_only)?,
        })
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
    let reuse = !options.force && source.trusts_size_and_mtime();
    let parent_root = match (&parent, reuse) {
        (Some(info), true) => match load_tree(repo, &info.snapshot.root) {
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
    if let (Some(info), None, true) = (&parent, &parent_root, reuse) {
        known.remove(&info.snapshot.root); // it could not be read: stored again if unchanged
    }
    let unindexed = repo.index().unindexed_packs();
    let progress = &Progress::bytes("backup", None);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);

    let (walk_result, pack_result) = std::thread::scope(|scope| {
        if progress.is_visible() {
            // Only for the bar's ETA: for a folder, a second listing, worth it on a terminal only.
            scope.spawn(|| {
                let excluded = |path: &[u8]| options.filter.excluded(Path::new(os_name(path)));
                if let Some(total) = source.expected_bytes(&excluded) {
                    progress.set_total(total);
                }
            });
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
        // The walk recurses once per folder level (up to MAX_DEPTH): on a thread with room for it.
        let walker = std::thread::Builder::new()
            .name("phonebak-walk".into())
            .stack_size(WALK_STACK)
            .spawn_scoped(scope, move || {
                let mut engine = Engine {
                    repo,
                    filter: &options.filter,
                    params: repo.config().chunker,
                    seed: repo.chunker_seed(),
                    known,
                    jobs: job_tx,
                    batch: Vec::new(),
                    batch_bytes: 0,
                    builder: TreeBuilder::default(),
                    parent: ParentTrees { repo, root: parent_root.map(Rc::new), dirs: HashMap::new() },
                    reuse,
                    new_bytes: 0,
                    files_seen: 0,
                    unreadable: Vec::new(),
                    skipped: Vec::new(),
                    notes: Vec::new(),
                    progress,
                    writer_stopped: false,
                    failure: None,
                    layout: None,
                    trailer_len: None,
                    omitted: None,
                    omitted_sizes: HashMap::new(),
                };
                let walked = engine.take_all(source);
                let Engine { unreadable, skipped, notes, jobs, new_bytes, .. } = engine;
                drop(jobs); // lets the workers, then the writer, finish
                walked.map(|(root, extras, stats)| (root, extras, stats, new_bytes, unreadable, skipped, notes))
            })
            .expect("a thread for the walk");
        let walked = walker.join().expect("the walk does not panic");
        let packed = writer.join().expect("pack writer does not panic");
        (walked, packed)
    });
    progress.finish();
    // A failed writer makes the walker fail too (its channel closes): report the writer's cause.
    let report = pack_result?;
    let (root, extras, mut stats, new_bytes, unreadable, skipped, notes) = walk_result?;
    stats.new_bytes = new_bytes;
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
        extras,
        copied_from: None,
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
/// The walking thread's stack: a folder 2048 levels deep (`MAX_DEPTH`) takes a frame of the
/// walk and of the tree builder per level. Only what is used is ever mapped.
const WALK_STACK: usize = 256 << 20;

/// The last snapshot's folders, looked up by path as entries arrive (a folder's listing is
/// loaded once while its entries come; order does not matter, only speed).
struct ParentTrees<'a> {
    repo: &'a Repository,
    root: Option<Rc<Tree>>,
    dirs: HashMap<Vec<u8>, Option<Rc<Tree>>>,
}

/// Loaded folders kept at most: a walk needs those on its path, an archive in any order more.
const PARENT_DIRS_KEPT: usize = 4096;

impl ParentTrees<'_> {
    fn dir(&mut self, names: &[&[u8]], known: &mut HashSet<BlobId>) -> Option<Rc<Tree>> {
        let Some((last, parents)) = names.split_last() else { return self.root.clone() };
        let key = names.join(&b'/');
        if let Some(found) = self.dirs.get(&key) {
            return found.clone();
        }
        let found = match self.dir(parents, known)?.find(last).map(|e| &e.node) {
            Some(Node::Dir { tree }) => match load_tree(self.repo, tree) {
                Ok(tree) => Some(Rc::new(tree)),
                Err(_) => {
                    // Its stored copy is damaged or gone: if this folder is unchanged, its
                    // listing is stored again instead of pointing at that copy.
                    known.remove(tree);
                    None
                }
            },
            _ => None,
        };
        if self.dirs.len() >= PARENT_DIRS_KEPT {
            self.dirs.clear();
        }
        self.dirs.insert(key, found.clone());
        found
    }

    fn entry(&mut self, names: &[&[u8]], known: &mut HashSet<BlobId>) -> Option<Entry> {
        let (last, parents) = names.split_last()?;
        self.dir(parents, known)?.find(last).cloned()
    }

    fn forget(&mut self, names: &[&[u8]]) {
        self.dirs.remove(&names.join(&b'/'));
    }
}

/// The backup engine: takes what the source sends, reads what is new, and builds the trees.
struct Engine<'a> {
    repo: &'a Repository,
    filter: &'a PathFilter,
    params: ChunkerParams,
    seed: u64,
    known: HashSet<BlobId>,
    jobs: SyncSender<Vec<Job>>,
    batch: Vec<Job>,
    batch_bytes: usize,
    builder: TreeBuilder,
    parent: ParentTrees<'a>,
    /// Whether files unchanged since the last snapshot are taken from it unread.
    reuse: bool,
    new_bytes: u64,
    files_seen: u64,
    unreadable: Vec<(String, String)>,
    skipped: Vec<String>,
    notes: Vec<(String, String)>,
    progress: &'a Progress,
    writer_stopped: bool,
    /// Why the engine stopped the source, when the reason is its own.
    failure: Option<BackupError>,
    /// An imported archive's layout, as its entries are taken.
    layout: Option<LayoutWriter>,
    /// Bytes after the archive's last entry, once the source has said.
    trailer_len: Option<u64>,
    /// The files recorded without content, and their sizes by path (for hard links to them).
    omitted: Option<OmittedWriter>,
    omitted_sizes: HashMap<Vec<u8>, u64>,
}

impl Engine<'_> {
    /// Takes every entry of `source` and stores the trees: the top tree's id, the extras
    /// tree's (src/extras.rs) and the stats.
    fn take_all(&mut self, source: &dyn Source) -> Result<(BlobId, Option<BlobId>, SnapshotStats), BackupError> {
        let sent = source.send_entries(self);
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        sent?;
        if self.writer_stopped {
            return Err(BackupError::WriterStopped);
        }
        let builder = std::mem::take(&mut self.builder);
        let (root, mut stats) = builder.finish(&mut |tree| self.store_tree(tree));
        let mut files = Vec::new();
        let stopped = |_| BackupError::WriterStopped;
        if let Some(layout) = self.layout.take() {
            // A source that records a layout says where the archive ended; two zero blocks if not.
            let trailer_len = self.trailer_len.unwrap_or(2 * crate::archive::tar::BLOCK as u64);
            files.push((
                extras::LAYOUT,
                layout.finish(trailer_len, &mut |piece| self.store_piece(piece)).map_err(stopped)?,
            ));
        }
        if let Some(omitted) = self.omitted.take() {
            stats.omitted = omitted.count;
            stats.omitted_bytes = omitted.bytes;
            files.push((extras::OMITTED, omitted.finish(&mut |piece| self.store_piece(piece)).map_err(stopped)?));
        }
        let extras = (!files.is_empty()).then(|| self.store_tree(&extras::tree(files)));
        self.flush().map_err(|_| BackupError::WriterStopped)?;
        Ok((root, extras, stats))
    }

    /// Stops the source for a reason of the engine's own.
    fn stop(&mut self, error: BackupError) -> SourceError {
        self.failure.get_or_insert(error);
        SourceError::Stopped
    }

    fn excluded(&self, names: &[&[u8]]) -> bool {
        self.filter.excludes.is_some() && (1..=names.len()).any(|n| self.filter.excluded(&joined(&names[..n])))
    }

    /// Wanted for itself, or inside a folder that is (with `--include`).
    fn wanted(&self, names: &[&[u8]]) -> bool {
        self.filter.includes.is_none() || (1..=names.len()).any(|n| self.filter.included(&joined(&names[..n]), false))
    }

    fn refuse(&mut self, path: &[u8], why: impl std::fmt::Display) {
        let path = String::from_utf8_lossy(path).into_owned();
        let why = format!("{why}: not stored");
        self.progress.note(&format!("phonebak: cannot take {path}: {why}"));
        self.unreadable.push((path, why));
    }

    fn noted(&mut self, names: &[&[u8]], note: Option<String>) {
        if let Some(why) = note {
            let path = tree_builder::shown(names);
            self.progress.note(&format!("phonebak: note: {path}: {why}"));
            self.notes.push((path, why));
        }
    }

    /// The last snapshot's file at `names`, if unchanged in size and mtime and all its chunks
    /// are still stored.
    fn unchanged(&mut self, names: &[&[u8]], meta: &Meta, size: u64) -> Option<Vec<ChunkRef>> {
        if !self.reuse {
            return None;
        }
        match self.parent.entry(names, &mut self.known)? {
            Entry { meta: old, node: Node::File { size: old_size, chunks }, .. }
                if old_size == size && same_mtime(&old, meta) && chunks.iter().all(|c| self.known.contains(&c.id)) =>
            {
                Some(chunks)
            }
            _ => None,
        }
    }

    fn file_node(
        &mut self,
        names: &[&[u8]],
        entry: &StreamEntry,
        size: u64,
        content: Option<&mut dyn Content>,
    ) -> Result<Option<Node>, SourceError> {
        if let Some(chunks) = self.unchanged(names, &entry.meta, size) {
            self.count_file(size);
            return Ok(Some(Node::File { size, chunks }));
        }
        let Some(content) = content else {
            self.refuse(&entry.path, "the source did not send its content");
            return Ok(None);
        };
        let read = self.read_file(&entry.path, &entry.meta, size, content)?;
        Ok(read.map(|(chunks, size)| {
            self.count_file(size);
            Node::File { size, chunks }
        }))
    }

    fn count_file(&mut self, size: u64) {
        self.files_seen += 1;
        self.progress.add(size);
        self.progress.message(format!("{} files", self.files_seen));
    }

    /// Reads a file; if it changes while being read (and the source can open it again), reads
    /// it again, and in the end records exactly the bytes that were read, so size and content
    /// always agree. `None`: unreadable, reported.
    fn read_file(
        &mut self,
        path: &[u8],
        meta: &Meta,
        size: u64,
        content: &mut dyn Content,
    ) -> Result<Option<(Vec<ChunkRef>, u64)>, SourceError> {
        let attempts = if content.can_reopen() { 3 } else { 1 };
        let mut last = None;
        for _attempt in 0..attempts {
            let read = match content.open() {
                Ok(file) => self.chunk_file(file, size),
                Err(SourceError::Unreadable { source, .. }) => {
                    self.refuse(path, source);
                    return Ok(None);
                }
                Err(other) => return Err(other),
            };
            match read {
                Ok((chunks, read, state_after)) => {
                    let stable = state_after == (size, meta.mtime_sec, meta.mtime_nsec) && read == size;
                    last = Some((chunks, read));
                    if stable {
                        break;
                    }
                }
                Err(_) if self.writer_stopped => return Err(self.stop(BackupError::WriterStopped)),
                Err(error) => match content.read_failed(error) {
                    SourceError::Unreadable { source, .. } => {
                        self.refuse(path, source);
                        return Ok(None);
                    }
                    other => return Err(other),
                },
            }
        }
        Ok(last)
    }

    fn chunk_file(
        &mut self,
        mut file: Box<dyn SourceFile + '_>,
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
            self.new_bytes += len as u64;
            self.send(Job { id, kind: BlobKind::Data, plain })?;
        }
        Ok(ChunkRef { id, len })
    }

    /// Stores a piece of the snapshot's extras (not file content: not counted as new bytes).
    fn store_piece(&mut self, plain: Vec<u8>) -> std::io::Result<ChunkRef> {
        let id = self.repo.blob_id(&plain);
        let len = plain.len() as u32;
        if self.known.insert(id) {
            self.send(Job { id, kind: BlobKind::Data, plain })?;
        }
        Ok(ChunkRef { id, len })
    }

    /// Records an entry the snapshot took in the archive's layout.
    fn record_layout(&mut self, header: &[u8], names: &[&[u8]], data_len: u64) -> Result<(), SourceError> {
        let path = names.join(&b'/');
        let mut layout = self.layout.take().unwrap_or_default();
        let written = layout.entry(header, &path, data_len, &mut |piece| self.store_piece(piece));
        self.layout = Some(layout);
        written.map_err(|_| self.stop(BackupError::WriterStopped))
    }

    /// Records a file by name, size and time only.
    fn record_omitted(&mut self, names: &[&[u8]], meta: &Meta, size: u64) -> Result<(), SourceError> {
        let file =
            OmittedFile { path: names.join(&b'/'), size, mtime_sec: meta.mtime_sec, mtime_nsec: meta.mtime_nsec };
        self.omitted_sizes.insert(file.path.clone(), size);
        let mut omitted = self.omitted.take().unwrap_or_default();
        let written = omitted.add(&file, &mut |piece| self.store_piece(piece));
        self.omitted = Some(omitted);
        written.map_err(|_| self.stop(BackupError::WriterStopped))
    }

    fn metadata_only(&self, names: &[&[u8]]) -> bool {
        self.filter
            .metadata_only
            .as_ref()
            .is_some_and(|set| (1..=names.len()).any(|n| PathFilter::matches(set, &joined(&names[..n]))))
    }

    /// Takes one entry into the snapshot (or not: excluded, refused, unreadable). Says whether
    /// the snapshot now holds it (stored, recorded without content, or a special file left out
    /// by kind), which is when an archive's layout records it.
    fn take_entry(
        &mut self,
        names: &[&[u8]],
        entry: &StreamEntry,
        content: Option<&mut dyn Content>,
    ) -> Result<bool, SourceError> {
        if names.is_empty() {
            // The top folder itself (an archive's `./`): the snapshot is that folder.
            if entry.kind != SourceKind::Dir {
                self.refuse(&entry.path, "an entry with no name");
                return Ok(false);
            }
            return Ok(true);
        }
        if self.excluded(names) {
            return Ok(false);
        }
        let wanted = self.wanted(names);
        let added = match &entry.kind {
            SourceKind::Dir => {
                if self.reuse {
                    self.parent.dir(names, &mut self.known);
                }
                self.builder.add_dir(names, entry.meta.clone(), wanted)
            }
            _ if !wanted => return Ok(false),
            SourceKind::File { size } => {
                if let Err(why) = self.builder.check(names) {
                    self.refuse(&entry.path, why);
                    return Ok(false);
                }
                if self.metadata_only(names) {
                    self.record_omitted(names, &entry.meta, *size)?;
                    return Ok(true);
                }
                match self.file_node(names, entry, *size, content)? {
                    Some(node) => self.builder.add_leaf(names, entry.meta.clone(), node),
                    None => return Ok(false),
                }
            }
            SourceKind::Symlink { target } if !is_valid_symlink_target(target) => {
                self.refuse(&entry.path, "a symlink whose target cannot be stored");
                return Ok(false);
            }
            SourceKind::Symlink { target } => {
                self.builder.add_leaf(names, entry.meta.clone(), Node::Symlink { target: target.clone() })
            }
            SourceKind::HardLink { target } => {
                let target_names = tree_builder::split_path(target).ok();
                let linked = target_names.as_ref().and_then(|t| self.builder.file(t).cloned());
                // A link to a file recorded without content is recorded so too, and so is a
                // link whose own name says so.
                let omitted_size = target_names.as_ref().and_then(|t| self.omitted_sizes.get(&t.join(&b'/')).copied());
                let omitted = match (&linked, omitted_size) {
                    (None, Some(size)) => Some(size),
                    (Some(Node::File { size, .. }), _) if self.metadata_only(names) => Some(*size),
                    _ => None,
                };
                if let Some(size) = omitted {
                    self.record_omitted(names, &entry.meta, size)?;
                    return Ok(true);
                }
                let left_out = target_names.as_ref().is_some_and(|t| self.excluded(t) || !self.wanted(t));
                match linked {
                    Some(node) => {
                        if let Node::File { size, .. } = &node {
                            self.count_file(*size);
                        }
                        self.builder.add_leaf(names, entry.meta.clone(), node)
                    }
                    None => {
                        let target = String::from_utf8_lossy(target);
                        let why = if left_out {
                            format!("a hard link to {target}, which --exclude or --include leaves out (its content is read only under that name)")
                        } else {
                            format!("a hard link to {target}, which is not a file sent before it")
                        };
                        self.refuse(&entry.path, why);
                        return Ok(false);
                    }
                }
            }
            SourceKind::Special => {
                self.skipped.push(tree_builder::shown(names));
                // Not stored, but its header alone gives it back in an export.
                return Ok(true);
            }
        };
        match added {
            Ok(note) => {
                self.noted(names, note);
                Ok(true)
            }
            Err(why) => {
                self.refuse(&entry.path, why);
                Ok(false)
            }
        }
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
}

impl EntrySink for Engine<'_> {
    fn wants_dir(&mut self, path: &[u8]) -> bool {
        // A path that cannot be split is taken, to be refused (and reported) as an entry.
        tree_builder::split_path(path).map_or(true, |names| !self.excluded(&names))
    }

    fn wants_content(&mut self, entry: &StreamEntry) -> bool {
        let (Ok(names), SourceKind::File { size }) = (tree_builder::split_path(&entry.path), &entry.kind) else {
            return false;
        };
        !names.is_empty()
            && !self.excluded(&names)
            && self.wanted(&names)
            && !self.metadata_only(&names)
            && self.unchanged(&names, &entry.meta, *size).is_none()
    }

    fn entry(&mut self, mut entry: StreamEntry, content: Option<&mut dyn Content>) -> Result<(), SourceError> {
        if self.writer_stopped {
            return Err(self.stop(BackupError::WriterStopped));
        }
        let header = entry.archive_header.take();
        let names = match tree_builder::split_path(&entry.path) {
            Ok(names) => Some(names),
            Err(why) => {
                self.refuse(&entry.path, why);
                None
            }
        };
        let kept = match &names {
            Some(names) => self.take_entry(names, &entry, content)?,
            None => false,
        };
        if let Some(header) = header {
            if let (Some(names), true) = (&names, kept) {
                self.record_layout(&header.blocks, names, header.data_len)?;
            } else {
                // Left out, but the global headers before it hold for the entries after it.
                let globals = crate::archive::tar::leading_global_headers(&header.blocks);
                if !globals.is_empty() {
                    self.record_layout(globals, &[], 0)?;
                }
            }
        }
        Ok(())
    }

    fn archive_end(&mut self, trailer_len: u64) {
        self.trailer_len = Some(trailer_len);
    }

    fn unreadable(&mut self, path: &[u8], why: String) -> Result<(), SourceError> {
        let path = String::from_utf8_lossy(path).into_owned();
        self.progress.note(&format!("phonebak: cannot read {path}: {why} (skipped)"));
        self.unreadable.push((path, why));
        Ok(())
    }

    fn note(&mut self, path: &[u8], why: String) {
        let path = String::from_utf8_lossy(path).into_owned();
        self.progress.note(&format!("phonebak: note: {path}: {why}"));
        self.notes.push((path, why));
    }

    fn dir_done(&mut self, path: &[u8]) -> Result<(), SourceError> {
        let Ok(names) = tree_builder::split_path(path) else { return Ok(()) };
        self.parent.forget(&names);
        let mut builder = std::mem::take(&mut self.builder);
        builder.seal(&names, &mut |tree| self.store_tree(tree));
        self.builder = builder;
        if self.writer_stopped {
            return Err(self.stop(BackupError::WriterStopped));
        }
        Ok(())
    }
}

fn os_name(name: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(name)
}

fn joined(names: &[&[u8]]) -> std::path::PathBuf {
    Path::new(os_name(&names.join(&b'/'))).to_path_buf()
}

/// SQLite databases (messages, contacts, app state) change a few pages in place between
/// backups; small chunks let a backup store about those pages instead of the whole file.
fn is_database(head: &[u8]) -> bool {
    head.starts_with(b"SQLite format 3\0")
}

fn same_mtime(a: &Meta, b: &Meta) -> bool {
    a.mtime_sec == b.mtime_sec && a.mtime_nsec == b.mtime_nsec
}
