//! Push: what the user staged (the mount's `restore/` folder), or a snapshot, onto a phone.
//!
//! Each file is written under a temporary name next to its place, read back and hashed on the
//! device, given its mtime and mode, made durable, and only then renamed into place: the device
//! never holds a half-written or unverified file under its real name. A journal (one line per verified file)
//! lets an interrupted push resume without redoing finished files; pushed files leave the
//! staging folder unless `--keep`. A file already on the device with the same content is not
//! pushed again; a different one is a conflict, settled by `--on-conflict`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::beneath::{open_beneath, split};
use crate::device::{Device, DeviceError, Found, Hasher};
use crate::origin::{Origin, OriginCheck, Snapshots};
use crate::progress::Progress;
use crate::repo::{RepoError, Repository};
use crate::tree::{self, ChunkRef, Entry, Meta, Node};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConflict {
    /// Leave the device's file alone (and the staged one staged).
    Skip,
    Overwrite,
    /// Push under a free name: `IMG_1.jpg` becomes `IMG_1 (1).jpg`.
    Rename,
}

pub struct PushOptions {
    pub dry_run: bool,
    pub on_conflict: OnConflict,
    /// Leave pushed files in the staging folder.
    pub keep: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// One file could not be pushed; the others go on.
    #[error("{path}: {why}")]
    Item { path: String, why: String },
    #[error("staging folder {path}: {source}")]
    Staging { path: String, source: io::Error },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("push journal {path}: {source}")]
    Journal { path: String, source: io::Error },
    #[error("another push to {device} is running: wait for it to finish (two at once could each take the other's files for its own)")]
    Busy { device: String },
}

impl PushError {
    pub fn is_fatal(&self) -> bool {
        match self {
            PushError::Device(e) => e.is_fatal(),
            PushError::Item { .. } => false,
            _ => true,
        }
    }
}

#[derive(Debug, Default)]
pub struct PushReport {
    pub pushed: u64,
    pub bytes: u64,
    pub dirs: u64,
    /// Files the device already had, byte for byte.
    pub already: u64,
    /// Different files already on the device, left alone (`--on-conflict skip`).
    pub conflicts: Vec<String>,
    pub failed: Vec<(String, String)>,
    /// With `--dry-run`: what would be pushed.
    pub would_push: u64,
    pub would_bytes: u64,
}

/// How a push ended: its report, and the error that stopped it early, if one did.
pub struct PushOutcome {
    pub report: PushReport,
    pub stopped: Option<PushError>,
}

/// What is pushed: the staging folder, or (part of) a snapshot.
pub enum Source<'a> {
    /// The snapshots are what staged files are checked against (see `origin`).
    /// Staged files are read and removed beneath `dir` (the staging folder, opened once): a
    /// folder in it swapped for a symlink during the push never leads outside it.
    Staging { root: PathBuf, dir: OwnedFd, snapshots: Snapshots<'a> },
    /// `entry` is at `base` in its snapshot, and goes to the same place on the device.
    Snapshot { repo: &'a Repository, entry: Entry, base: PathBuf, label: String },
}

#[derive(Clone)]
pub enum ItemKind {
    Dir,
    File { size: u64 },
    Symlink(Vec<u8>),
}

/// One thing to push, at `path` relative to the device's root.
#[derive(Clone)]
pub struct Item {
    pub path: PathBuf,
    pub kind: ItemKind,
    pub meta: Meta,
    chunks: Vec<ChunkRef>,
    /// A staged file's: what the snapshots hold at its path (see `origin`).
    origin: Origin,
}

impl Source<'_> {
    fn describe(&self) -> String {
        match self {
            Source::Staging { root, .. } => format!("staging:{}", root.display()),
            Source::Snapshot { label, .. } => format!("snapshot:{label}"),
        }
    }

    /// Everything to push, folders before their contents.
    fn items(&self, failed: &mut Vec<(String, String)>) -> Result<Vec<Item>, PushError> {
        let mut items = Vec::new();
        match self {
            Source::Staging { root, snapshots, .. } => {
                walk_staging(root, Path::new(""), &mut items, failed)?;
                find_origins(snapshots, &mut items);
            }
            Source::Snapshot { repo, entry, base, .. } => {
                if let Node::Dir { tree } = &entry.node {
                    if !base.as_os_str().is_empty() {
                        items.push(item_of(base, entry));
                    }
                    tree::walk(repo, tree, &mut |path: &Path, entry: &Entry| -> Result<(), PushError> {
                        items.push(item_of(&base.join(path), entry));
                        Ok(())
                    })?;
                } else {
                    items.push(item_of(base, entry));
                }
            }
        }
        Ok(items)
    }

    fn open(&self, item: &Item) -> io::Result<Box<dyn Read + '_>> {
        match self {
            Source::Staging { dir, .. } => {
                // Not waiting on a FIFO put in a file's place.
                let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
                let file = File::from(open_beneath(dir.as_raw_fd(), &item.path, flags, 0)?);
                if !file.metadata()?.is_file() {
                    return Err(io::Error::other("it is no longer a regular file"));
                }
                Ok(Box::new(file))
            }
            Source::Snapshot { repo, .. } => Ok(Box::new(tree::ChunkReader::new(repo, item.chunks.clone()))),
        }
    }

    /// A check of a staged file against the snapshots' files at its path, if they have one.
    fn origin_check(&self, item: &Item) -> Option<OriginCheck> {
        let Source::Staging { snapshots, .. } = self else { return None };
        let mtime = crate::origin::nanos(item.meta.mtime_sec, item.meta.mtime_nsec);
        OriginCheck::new(snapshots.repo(), mtime, item.origin.candidates.clone())
    }

    /// Why a staged file that streamed through `check` must stay staged, if it must.
    fn origin_problem(&self, check: OriginCheck) -> Option<String> {
        let Source::Staging { snapshots, .. } = self else { return None };
        check.verdict(snapshots.repo()).reason()
    }

    /// The item as a local file, when it is one (adb pushes it as it is).
    fn local(&self, item: &Item) -> Option<PathBuf> {
        match self {
            Source::Staging { root, .. } => Some(root.join(&item.path)),
            Source::Snapshot { .. } => None,
        }
    }

    /// The item is on the device: it leaves the staging folder, unless it changed meanwhile.
    fn pushed(&self, item: &Item, options: &PushOptions) {
        let Source::Staging { dir, .. } = self else { return };
        if options.keep {
            return;
        }
        let unchanged = |now: &libc::stat| {
            let same_size = !matches!(item.kind, ItemKind::File { size } if size != now.st_size as u64);
            same_size && now.st_mtime == item.meta.mtime_sec && now.st_mtime_nsec == i64::from(item.meta.mtime_nsec)
        };
        let _ = unstage(dir, &item.path, 0, unchanged);
    }

    /// Staged folders emptied by the push go too (deepest first; never the staging folder).
    fn tidy(&self, items: &[Item], options: &PushOptions) {
        let Source::Staging { dir, .. } = self else { return };
        if options.keep {
            return;
        }
        for item in items.iter().rev().filter(|i| matches!(i.kind, ItemKind::Dir)) {
            let _ = unstage(dir, &item.path, libc::AT_REMOVEDIR, |_| true); // fails while anything is left
        }
    }
}

/// Removes `rel` beneath the staging folder (`flags`: `AT_REMOVEDIR` for an empty folder) if
/// `still` finds it is what was pushed, and gives its folder back its mtime: the folder's own
/// time is still to be pushed (by a rerun, if this push stops early).
fn unstage(dir: &OwnedFd, rel: &Path, flags: i32, still: impl FnOnce(&libc::stat) -> bool) -> io::Result<()> {
    let (parent, name) = split(rel)?;
    let folder = File::from(open_beneath(dir.as_raw_fd(), parent, libc::O_RDONLY | libc::O_DIRECTORY, 0)?);
    // SAFETY: an all-zero stat is valid; fstatat fills it; `name` is NUL-terminated.
    let mut now: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatat(folder.as_raw_fd(), name.as_ptr(), &mut now, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if !still(&now) {
        return Ok(());
    }
    let before = folder.metadata()?;
    // SAFETY: `name` is NUL-terminated and `folder` an open folder.
    if unsafe { libc::unlinkat(folder.as_raw_fd(), name.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    folder.set_times(std::fs::FileTimes::new().set_accessed(before.accessed()?).set_modified(before.modified()?))
}

fn item_of(path: &Path, entry: &Entry) -> Item {
    let (kind, chunks) = match &entry.node {
        Node::Dir { .. } => (ItemKind::Dir, Vec::new()),
        Node::File { size, chunks } => (ItemKind::File { size: *size }, chunks.clone()),
        Node::Symlink { target } => (ItemKind::Symlink(target.clone()), Vec::new()),
    };
    Item { path: path.to_path_buf(), kind, meta: entry.meta.clone(), chunks, origin: Origin::default() }
}

fn walk_staging(
    root: &Path,
    rel: &Path,
    items: &mut Vec<Item>,
    failed: &mut Vec<(String, String)>,
) -> Result<(), PushError> {
    let staging_error = |source| PushError::Staging { path: root.join(rel).display().to_string(), source };
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))
        .map_err(staging_error)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(staging_error)?;
    names.sort();
    for name in names {
        let path = rel.join(&name);
        let meta = match std::fs::symlink_metadata(root.join(&path)) {
            Ok(meta) => meta,
            Err(e) => {
                failed.push((path.display().to_string(), e.to_string()));
                continue;
            }
        };
        let kind = if meta.is_dir() {
            ItemKind::Dir
        } else if meta.is_file() {
            ItemKind::File { size: meta.len() }
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(root.join(&path)).map_err(staging_error)?;
            ItemKind::Symlink(target.as_os_str().as_bytes().to_vec())
        } else {
            failed.push((path.display().to_string(), "not a file, folder or symlink".into()));
            continue;
        };
        let is_dir = matches!(kind, ItemKind::Dir);
        items.push(Item {
            path: path.clone(),
            kind,
            meta: Meta::of(&meta),
            chunks: Vec::new(),
            origin: Origin::default(),
        });
        if is_dir {
            walk_staging(root, &path, items, failed)?;
        }
    }
    Ok(())
}

/// Gives each staged file what the snapshots hold at its path, folder by folder.
fn find_origins(snapshots: &Snapshots, items: &mut [Item]) {
    let mut folders: std::collections::BTreeMap<PathBuf, Vec<usize>> = Default::default();
    for (at, item) in items.iter().enumerate().filter(|(_, i)| matches!(i.kind, ItemKind::File { .. })) {
        folders.entry(item.path.parent().unwrap_or(Path::new("")).to_path_buf()).or_default().push(at);
    }
    for (folder, files) in folders {
        let names: Vec<&[u8]> =
            files.iter().map(|&at| items[at].path.file_name().unwrap_or_default().as_bytes()).collect();
        let mut found = snapshots.origins_in(&folder, &names);
        if let Some(first) = found.unreadable.first() {
            crate::tell!(
                "phonebak: warning: staged files in {}/ are not checked against {} snapshot(s) ({first}{}): their folder listings do not load (see `phonebak check`)",
                folder.display(),
                found.unreadable.len(),
                if found.unreadable.len() > 1 { ", ..." } else { "" }
            );
        }
        for at in files {
            let name = items[at].path.file_name().unwrap_or_default().as_bytes();
            items[at].origin = found.by_name.remove(name).unwrap_or_default();
        }
    }
}

/// Hashes what passes through (the digest the device must read back), follows it against the
/// snapshots it may have been copied from, and counts progress.
struct Hashing<'a> {
    inner: Box<dyn Read + 'a>,
    hasher: Option<Hasher>,
    origin: Option<OriginCheck>,
    progress: Option<&'a Progress>,
}

impl Read for Hashing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        if let Some(origin) = &mut self.origin {
            origin.update(&buf[..n]);
        }
        if let Some(progress) = self.progress {
            progress.add(n as u64);
        }
        Ok(n)
    }
}

/// One line per verified file: where it went and what it was, so that a rerun skips it.
pub(crate) struct Journal {
    path: PathBuf,
    done: HashMap<Vec<u8>, Done>,
    /// Each staged folder's mtime as the first run saw it.
    folders: HashMap<Vec<u8>, (i64, u32)>,
    /// Temporary names earlier runs wrote under, to be removed from the device.
    temps: Vec<PathBuf>,
    file: File,
}

pub(crate) enum Line {
    File(Vec<u8>, Done),
    Folder(Vec<u8>, (i64, u32)),
    /// A temporary name a run wrote under: gone if the run finished the file, a leftover on
    /// the device if it was killed.
    Temp(PathBuf),
}

pub(crate) struct Done {
    dest: PathBuf,
    size: u64,
    mtime: (i64, u32),
}

impl Journal {
    fn open(dir: &Path, key: &str) -> Result<Journal, PushError> {
        let path = dir.join(format!("{key}.journal"));
        let error = |source| PushError::Journal { path: path.display().to_string(), source };
        crate::repo::create_private_dirs(dir).map_err(error)?;
        let (mut done, mut folders, mut temps) = (HashMap::new(), HashMap::new(), Vec::new());
        if let Ok(existing) = File::open(&path) {
            // A line torn by a crash does not parse and is ignored: that file is pushed again.
            for line in io::BufReader::new(existing).split(b'\n').map_while(Result::ok) {
                match Self::parse(&line) {
                    Some(Line::File(path, entry)) => {
                        done.insert(path, entry);
                    }
                    Some(Line::Folder(path, time)) => {
                        folders.entry(path).or_insert(time);
                    }
                    Some(Line::Temp(temp)) => temps.push(temp),
                    None => {}
                }
            }
        }
        // Private: it names the user's files.
        let mut file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(error)?;
        // A torn last line ends here, so that the next line does not join it.
        if std::fs::read(&path).map_err(error)?.last().is_some_and(|&b| b != b'\n') {
            file.write_all(b"\n").map_err(error)?;
        }
        Ok(Journal { path, done, folders, temps, file })
    }

    pub(crate) fn parse(line: &[u8]) -> Option<Line> {
        let text = std::str::from_utf8(line).ok()?;
        let fields: Vec<&str> = text.split('\t').collect();
        if let ["T", temp] = fields[..] {
            return Some(Line::Temp(PathBuf::from(std::ffi::OsStr::from_bytes(&hex::decode(temp).ok()?))));
        }
        let path = hex::decode(fields.first()?).ok()?;
        let time = |text: &str| -> Option<(i64, u32)> {
            let (sec, nsec) = text.split_once('.')?;
            Some((sec.parse().ok()?, nsec.parse().ok().filter(|n| *n < 1_000_000_000)?))
        };
        match fields[..] {
            [_, mtime] => Some(Line::Folder(path, time(mtime)?)),
            [_, dest, size, mtime] => {
                let dest = PathBuf::from(std::ffi::OsStr::from_bytes(&hex::decode(dest).ok()?));
                Some(Line::File(path, Done { dest, size: size.parse().ok()?, mtime: time(mtime)? }))
            }
            _ => None,
        }
    }

    /// A staged folder's mtime as the first run of this push saw it: pushing files out of a
    /// folder changes its mtime, and a rerun after a `kill -9` (which can come between removing
    /// a file and putting the folder's time back) must not give that time to the phone.
    fn folder_time(&mut self, item: &Item) -> Result<(i64, u32), PushError> {
        let key = item.path.as_os_str().as_bytes();
        if let Some(time) = self.folders.get(key) {
            return Ok(*time);
        }
        let time = (item.meta.mtime_sec, item.meta.mtime_nsec);
        let line = format!("{}\t{}.{}\n", hex::encode(key), time.0, time.1);
        self.file.write_all(line.as_bytes()).map_err(|source| self.error(source))?;
        self.folders.insert(key.to_vec(), time);
        Ok(time)
    }

    fn error(&self, source: io::Error) -> PushError {
        PushError::Journal { path: self.path.display().to_string(), source }
    }

    fn record(&mut self, item: &Item, dest: &Path, size: u64) -> Result<(), PushError> {
        let line = format!(
            "{}\t{}\t{size}\t{}.{}\n",
            hex::encode(item.path.as_os_str().as_bytes()),
            hex::encode(dest.as_os_str().as_bytes()),
            item.meta.mtime_sec,
            item.meta.mtime_nsec
        );
        self.file.write_all(line.as_bytes()).map_err(|source| self.error(source))
    }

    /// Notes a temporary name before anything is written under it (not synced: it only saves
    /// a leftover hidden file on the device from staying after a power cut).
    fn writing(&mut self, temp: &Path) -> Result<(), PushError> {
        let line = format!("T\t{}\n", hex::encode(temp.as_os_str().as_bytes()));
        self.file.write_all(line.as_bytes()).map_err(|source| self.error(source))
    }

    /// Where an earlier run put this very file (same size and mtime), if it did.
    fn earlier(&self, item: &Item, size: u64) -> Option<&Path> {
        let done = self.done.get(item.path.as_os_str().as_bytes())?;
        (done.size == size && done.mtime == (item.meta.mtime_sec, item.meta.mtime_nsec)).then_some(done.dest.as_path())
    }
}

/// Whether `path` is one of a run's temporary names, below the device's root: all a leftover
/// may be (a journal is a file that can be damaged or edited).
fn is_temp_name(path: &Path) -> bool {
    let below = path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    below && path.file_name().is_some_and(|name| name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()))
}

const TEMP_PREFIX: &str = ".phonebak-part-";

/// Takes the lock on pushing to `device` (a file in the journal folder, held until the process
/// ends, even by `kill -9`): two pushes at once to one phone would each count the other's files.
fn lock_device(journal_dir: &Path, device: &dyn Device) -> Result<File, PushError> {
    let key = blake3::hash(device.describe().as_bytes()).to_hex();
    let path = journal_dir.join(format!("{}.lock", &key[..16]));
    let error = |source| PushError::Journal { path: path.display().to_string(), source };
    crate::repo::create_private_dirs(journal_dir).map_err(error)?;
    let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(error)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(PushError::Busy { device: device.describe() });
        }
        return Err(error(e));
    }
    Ok(file)
}

/// The temporary name a file is written under, next to its place: hidden (Android's media
/// scanner skips it), and this run's own (two pushes to one phone wrote one temporary file and
/// renamed each other's bytes into place). A rerun removes a killed run's (see `Journal::writing`).
fn temp_name(dest: &Path, run: u64) -> PathBuf {
    let hash = blake3::hash(dest.as_os_str().as_bytes()).to_hex();
    dest.with_file_name(format!("{TEMP_PREFIX}{}-{run:016x}", &hash[..16]))
}

/// A file written and verified under its temporary name, waiting for its batch's commit.
struct Written {
    item: Item,
    temp: PathBuf,
    dest: PathBuf,
    replace: bool,
    size: u64,
}

const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 256 << 20;

/// A thread that runs one kind of device job after another while the pusher goes on: syncs (the
/// next batch is written while the disk makes the last one durable) and read-back checks (a
/// file is read back and hashed while the next one is written: pushing took about a third less
/// time in side-by-side runs here). Results come back in the order the jobs were sent.
struct Worker<J, R> {
    jobs: std::sync::mpsc::Sender<J>,
    results: std::sync::mpsc::Receiver<R>,
    pending: usize,
    device: String,
    what: &'static str,
}

impl<J: Send, R: Send> Worker<J, R> {
    fn spawn<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        device: &dyn Device,
        what: &'static str,
        mut work: impl FnMut(J) -> R + Send + 'scope,
    ) -> Self
    where
        J: 'scope,
        R: 'scope,
    {
        let (jobs, asked) = std::sync::mpsc::channel::<J>();
        let (answer, results) = std::sync::mpsc::channel();
        scope.spawn(move || {
            for job in asked {
                if answer.send(work(job)).is_err() {
                    break;
                }
            }
        });
        Worker { jobs, results, pending: 0, device: device.describe(), what }
    }

    fn send(&mut self, job: J) {
        // A stopped thread is found out by `next`.
        self.pending += 1;
        let _ = self.jobs.send(job);
    }

    /// The result of the oldest job not yet answered, if one is pending.
    fn next(&mut self) -> Option<Result<R, DeviceError>> {
        if self.pending == 0 {
            return None;
        }
        self.pending -= 1;
        let stopped =
            || DeviceError::Vanished { device: self.device.clone(), why: format!("its {} thread stopped", self.what) };
        Some(self.results.recv().map_err(|_| stopped()))
    }
}

/// Device syncs.
type Syncer = Worker<(), Result<(), DeviceError>>;
/// Read-back checks: the temporary name and the digest sent; answers whether the device holds it.
type Checker = Worker<(PathBuf, String), Result<bool, DeviceError>>;

impl Syncer {
    /// Waits for the sync in flight, if there is one.
    fn wait(&mut self) -> Result<(), DeviceError> {
        self.next().unwrap_or(Ok(Ok(()))).and_then(|synced| synced)
    }
}

impl Checker {
    /// Whether the oldest file sent for checking reads back as sent (a file never sent does not).
    fn verdict(&mut self) -> Result<bool, DeviceError> {
        self.next().unwrap_or(Ok(Ok(false))).and_then(|held| held)
    }
}

struct Pusher<'a> {
    source: &'a Source<'a>,
    /// Files of the batch being written under their temporary names (their read-back checks sent).
    written: Vec<Written>,
    /// The last batch: its data is being made durable by the sync in flight.
    syncing: Vec<Written>,
    /// The batch before: renamed, the renames being made durable by the sync in flight.
    renamed: Vec<Written>,
    syncer: Syncer,
    checker: Checker,
    batch_bytes: u64,
    device: &'a dyn Device,
    options: &'a PushOptions,
    journal: Option<Journal>,
    progress: Progress,
    report: PushReport,
    /// Names this run gives or will give: every item's own, and each free name chosen for a
    /// conflict. A free name must be none of them: `IMG_1 (1).jpg` chosen for a renamed
    /// `IMG_1.jpg` while a staged `IMG_1 (1).jpg` waits to be pushed made both one file.
    reserved: std::collections::HashSet<PathBuf>,
    /// This run's part of every temporary name.
    run: u64,
    /// Held while pushing: one push at a time to a device.
    _lock: Option<File>,
}

/// Pushes `source` onto `device`. The journal of an unfinished push lives in `journal_dir`.
pub fn run(source: &Source, device: &dyn Device, journal_dir: &Path, options: &PushOptions) -> PushOutcome {
    std::thread::scope(|scope| {
        let syncer = Worker::spawn(scope, device, "sync", |()| device.sync());
        let checker = Worker::spawn(scope, device, "read-back", |(temp, sent): (PathBuf, String)| {
            device.digest(&temp).map(|held| held == sent)
        });
        push_with(source, device, (syncer, checker), journal_dir, options)
    })
}

fn push_with(
    source: &Source,
    device: &dyn Device,
    (syncer, checker): (Syncer, Checker),
    journal_dir: &Path,
    options: &PushOptions,
) -> PushOutcome {
    let progress = Progress::bytes("push", None);
    let mut pusher = Pusher {
        source,
        written: Vec::new(),
        syncing: Vec::new(),
        renamed: Vec::new(),
        syncer,
        checker,
        batch_bytes: 0,
        device,
        options,
        journal: None,
        progress,
        report: PushReport::default(),
        reserved: Default::default(),
        run: rand::random(),
        _lock: None,
    };
    let stopped = pusher.push_all(journal_dir).err();
    pusher.progress.finish();
    if let Some(journal) = pusher.journal.take() {
        let _ = journal.file.sync_all();
        let complete = stopped.is_none() && pusher.report.failed.is_empty() && pusher.report.conflicts.is_empty();
        if complete {
            let _ = std::fs::remove_file(&journal.path);
        }
    }
    let mut report = pusher.report;
    report.failed.sort();
    PushOutcome { report, stopped }
}

impl Pusher<'_> {
    fn push_all(&mut self, journal_dir: &Path) -> Result<(), PushError> {
        self.device.check()?;
        let mut items = self.source.items(&mut self.report.failed)?;
        self.reserved = items.iter().map(|i| i.path.clone()).collect();
        let total = items.iter().map(|i| if let ItemKind::File { size } = i.kind { size } else { 0 }).sum();
        self.progress.set_total(total);
        if !self.options.dry_run {
            let key =
                blake3::hash(format!("{}\n{}", self.device.describe(), self.source.describe()).as_bytes()).to_hex();
            self._lock = Some(lock_device(journal_dir, self.device)?);
            let mut journal = Journal::open(journal_dir, &key[..16])?;
            for leftover in std::mem::take(&mut journal.temps).into_iter().filter(|t| is_temp_name(t)) {
                let _ = self.device.remove(&leftover);
            }
            for folder in items.iter_mut().filter(|i| matches!(i.kind, ItemKind::Dir)) {
                (folder.meta.mtime_sec, folder.meta.mtime_nsec) = journal.folder_time(folder)?;
            }
            journal.file.sync_data().map_err(|source| journal.error(source))?;
            self.journal = Some(journal);
        }
        for item in &items {
            let done = match &item.kind {
                ItemKind::Dir => self.push_dir(item),
                ItemKind::File { size } => self.push_file(item, *size),
                ItemKind::Symlink(target) => self.push_symlink(item, target),
            };
            match done {
                Err(e) if e.is_fatal() => {
                    // What was written before still gets its name if the device allows (full);
                    // if not, its temporary files go (a rerun would replace them anyway).
                    let temps: Vec<PathBuf> =
                        self.written.iter().chain(&self.syncing).map(|file| file.temp.clone()).collect();
                    if self.commit_all().is_err() {
                        for temp in temps {
                            let _ = self.device.remove(&temp);
                        }
                    }
                    return Err(e);
                }
                Err(e) => self.note_failure(item, e),
                Ok(()) => {}
            }
        }
        self.commit_all()?;
        if !self.options.dry_run {
            // Folder times last, deepest first: writing into a folder changes its mtime.
            for item in items.iter().rev().filter(|i| matches!(i.kind, ItemKind::Dir)) {
                self.device.set_meta(&item.path, &item.meta, false);
            }
            self.source.tidy(&items, self.options);
        }
        Ok(())
    }

    fn push_dir(&mut self, item: &Item) -> Result<(), PushError> {
        if !self.options.dry_run {
            self.device.make_dirs(&item.path)?;
        }
        self.report.dirs += 1;
        Ok(())
    }

    fn push_file(&mut self, item: &Item, size: u64) -> Result<(), PushError> {
        self.progress.message(item.path.display().to_string());
        if let Some(why) = &item.origin.unknowable {
            return Err(self.item_error(item, why));
        }
        let journal = self.journal.as_ref();
        if let Some(dest) = journal.and_then(|j| j.earlier(item, size)).map(Path::to_path_buf) {
            // Compared, not just sized: the phone's copy may have been edited since.
            if self.device.stat(&dest)? == Some(Found::File { size }) && self.same_content(item, &dest)? {
                return self.already_there(item, size);
            }
        }
        let mut dest = item.path.clone();
        let mut replace = false;
        match self.device.stat(&dest)? {
            None => {}
            Some(Found::File { size: there }) if there == size && self.same_content(item, &dest)? => {
                self.journal_record(item, &dest, size)?;
                return self.already_there(item, size);
            }
            Some(found) => match self.options.on_conflict {
                OnConflict::Skip => {
                    self.report.conflicts.push(item.path.display().to_string());
                    self.progress.add(size);
                    return Ok(());
                }
                OnConflict::Overwrite if matches!(found, Found::File { .. }) => replace = true,
                OnConflict::Overwrite => return Err(self.item_error(item, "a folder on the device is in the way")),
                OnConflict::Rename => {
                    dest = self.free_name(&dest)?;
                    self.reserved.insert(dest.clone());
                }
            },
        }
        if self.options.dry_run {
            self.check_origin_only(item)?;
            self.report.would_push += 1;
            self.report.would_bytes += size;
            return Ok(());
        }
        let temp = temp_name(&dest, self.run);
        self.journal_writing(&temp)?;
        if let Err(e) = self.write_checked(item, size, &temp) {
            let _ = self.device.remove(&temp);
            return Err(match e {
                // Name the file, not its temporary name.
                PushError::Device(DeviceError::Full { device, .. }) => {
                    PushError::Device(DeviceError::Full { device, path: item.path.display().to_string() })
                }
                other => other,
            });
        }
        self.batch_bytes += size;
        self.written.push(Written { item: item.clone(), temp, dest, replace, size });
        if self.written.len() >= BATCH_FILES || self.batch_bytes >= BATCH_BYTES {
            self.commit()?;
        }
        Ok(())
    }

    /// Moves every batch one step on. A file's data is durable before it gets its real name,
    /// and its name is durable before it is journaled and its staged copy goes; each device
    /// sync serves two batches (the data of one, the names of the one before), and runs while
    /// the next batch is written. A sync per file made pushing 4x slower.
    fn commit(&mut self) -> Result<(), PushError> {
        self.syncer.wait()?;
        for file in std::mem::take(&mut self.renamed) {
            self.journal_record(&file.item, &file.dest, file.size)?;
            self.report.pushed += 1;
            self.report.bytes += file.size;
            self.source.pushed(&file.item, self.options);
        }
        for file in std::mem::take(&mut self.syncing) {
            // Checks answer in order: the oldest unanswered one is this file's.
            let renamed = match self.checker.verdict() {
                Ok(true) => self.device.rename(&file.temp, &file.dest, file.replace).map_err(PushError::from),
                Ok(false) => Err(self.item_error(&file.item, "what the device holds differs from what was sent")),
                Err(e) => Err(e.into()),
            };
            match renamed {
                Ok(()) => self.renamed.push(file),
                Err(e) if !e.is_fatal() => {
                    let _ = self.device.remove(&file.temp);
                    self.note_failure(&file.item, e);
                }
                Err(e) => return Err(e),
            }
        }
        self.syncing = std::mem::take(&mut self.written);
        self.batch_bytes = 0;
        if !self.syncing.is_empty() || !self.renamed.is_empty() {
            self.syncer.send(());
        }
        Ok(())
    }

    /// Commits until every written file is journaled.
    fn commit_all(&mut self) -> Result<(), PushError> {
        while !(self.written.is_empty() && self.syncing.is_empty() && self.renamed.is_empty()) {
            self.commit()?;
        }
        self.syncer.wait().map_err(PushError::from)
    }

    fn note_failure(&mut self, item: &Item, e: PushError) {
        self.progress.note(&format!("phonebak: cannot push {e}"));
        self.report.failed.push((item.path.display().to_string(), failure_reason(e)));
    }

    /// Writes the file as `temp` and sets its times; reading it back on the device to compare is
    /// left to the checker, whose verdict `commit` waits for before the rename.
    fn write_checked(&mut self, item: &Item, size: u64, temp: &Path) -> Result<(), PushError> {
        let inner = self.source.open(item).map_err(|e| self.item_error(item, &format!("cannot read it: {e}")))?;
        let hasher = Some(Hasher::new(self.device.hash_kind()));
        let origin = self.source.origin_check(item);
        let mut reader = Hashing { inner, hasher, origin, progress: Some(&self.progress) };
        let written = self.device.write(temp, &mut reader, self.source.local(item).as_deref())?;
        let sent = reader.hasher.take().expect("hashing").finish();
        if written != size {
            return Err(
                self.item_error(item, &format!("it changed while being pushed ({written} bytes, {size} listed)"))
            );
        }
        if let Some(why) = reader.origin.take().and_then(|check| self.source.origin_problem(check)) {
            return Err(self.item_error(item, &why));
        }
        self.device.set_meta(temp, &item.meta, false);
        self.checker.send((temp.to_path_buf(), sent));
        Ok(())
    }

    /// What a dry run reads of a staged file: enough to say it would be kept staged.
    fn check_origin_only(&self, item: &Item) -> Result<(), PushError> {
        let Some(origin) = self.source.origin_check(item) else { return Ok(()) };
        let cannot_read = |e: io::Error| self.item_error(item, &format!("cannot read it: {e}"));
        let inner = self.source.open(item).map_err(cannot_read)?;
        let mut reader = Hashing { inner, hasher: None, origin: Some(origin), progress: None };
        io::copy(&mut reader, &mut io::sink()).map_err(cannot_read)?;
        match reader.origin.take().and_then(|check| self.source.origin_problem(check)) {
            Some(why) => Err(self.item_error(item, &why)),
            None => Ok(()),
        }
    }

    fn push_symlink(&mut self, item: &Item, target: &[u8]) -> Result<(), PushError> {
        if self.device.stat(&item.path)?.is_some() {
            self.report.conflicts.push(item.path.display().to_string());
            return Ok(());
        }
        if self.options.dry_run {
            self.report.would_push += 1;
            return Ok(());
        }
        let temp = temp_name(&item.path, self.run);
        self.journal_writing(&temp)?;
        self.device.symlink(target, &temp)?;
        self.device.set_meta(&temp, &item.meta, true);
        self.device.rename(&temp, &item.path, false)?;
        self.report.pushed += 1;
        self.source.pushed(item, self.options);
        Ok(())
    }

    fn same_content(&self, item: &Item, dest: &Path) -> Result<bool, PushError> {
        let kind = self.device.hash_kind();
        let mut content = self.source.open(item).map_err(|e| self.item_error(item, &format!("cannot read it: {e}")))?;
        let ours = crate::device::digest_of(kind, &mut content)
            .map_err(|e| self.item_error(item, &format!("cannot read it: {e}")))?;
        Ok(self.device.digest(dest)? == ours)
    }

    fn already_there(&mut self, item: &Item, size: u64) -> Result<(), PushError> {
        self.report.already += 1;
        self.progress.add(size);
        self.source.pushed(item, self.options);
        Ok(())
    }

    fn journal_writing(&mut self, temp: &Path) -> Result<(), PushError> {
        match &mut self.journal {
            Some(journal) => journal.writing(temp),
            None => Ok(()),
        }
    }

    fn journal_record(&mut self, item: &Item, dest: &Path, size: u64) -> Result<(), PushError> {
        match &mut self.journal {
            Some(journal) => journal.record(item, dest, size),
            None => Ok(()),
        }
    }

    /// `NAME (N).EXT` with the first N taken neither on the device nor by this run.
    fn free_name(&self, dest: &Path) -> Result<PathBuf, PushError> {
        let name = dest.file_name().unwrap_or_default().as_bytes();
        let (stem, ext) = match name.iter().rposition(|&b| b == b'.') {
            Some(dot) if dot > 0 => name.split_at(dot),
            _ => (name, &b""[..]),
        };
        for n in 1.. {
            let candidate = [stem, format!(" ({n})").as_bytes(), ext].concat();
            let candidate = dest.with_file_name(std::ffi::OsStr::from_bytes(&candidate));
            if !self.reserved.contains(&candidate) && self.device.stat(&candidate)?.is_none() {
                return Ok(candidate);
            }
        }
        unreachable!("some number is free")
    }

    fn item_error(&self, item: &Item, why: &str) -> PushError {
        PushError::Item { path: item.path.display().to_string(), why: why.to_string() }
    }
}

/// The reason alone (the path is listed beside it).
fn failure_reason(e: PushError) -> String {
    match e {
        PushError::Item { why, .. } | PushError::Device(DeviceError::File { why, .. }) => why,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(path: &str, mtime_sec: i64) -> Item {
        let meta = Meta { mode: 0o755, uid: 0, gid: 0, mtime_sec, mtime_nsec: 7 };
        Item { path: PathBuf::from(path), kind: ItemKind::Dir, meta, chunks: Vec::new(), origin: Origin::default() }
    }

    #[test]
    fn only_temporary_names_below_the_device_root_are_removed_as_leftovers() {
        assert!(is_temp_name(&temp_name(Path::new("DCIM/IMG_1.jpg"), 7)));
        for other in ["DCIM/IMG_1.jpg", "/.phonebak-part-1", "../.phonebak-part-1", "DCIM/../.phonebak-part-1", ""] {
            assert!(!is_temp_name(Path::new(other)), "{other}");
        }
    }

    #[test]
    fn a_rerun_keeps_the_folder_times_the_first_run_saw() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Journal::open(dir.path(), "k").unwrap();
        assert_eq!(first.folder_time(&folder("DCIM", 1_700_000_000)).unwrap(), (1_700_000_000, 7));
        first.record(&folder("DCIM/a.jpg", 5), Path::new("DCIM/a (1).jpg"), 42).unwrap();
        drop(first);
        // Killed mid-line; meanwhile the staged folder's mtime moved.
        let mut journal = std::fs::OpenOptions::new().append(true).open(dir.path().join("k.journal")).unwrap();
        journal.write_all(b"torn\t12").unwrap();
        let mut second = Journal::open(dir.path(), "k").unwrap();
        assert_eq!(second.folder_time(&folder("DCIM", 1_800_000_000)).unwrap(), (1_700_000_000, 7));
        assert_eq!(second.earlier(&folder("DCIM/a.jpg", 5), 42), Some(Path::new("DCIM/a (1).jpg")));
        assert_eq!(second.earlier(&folder("DCIM/a.jpg", 6), 42), None, "changed since");
        second.record(&folder("DCIM/b.jpg", 5), Path::new("DCIM/b.jpg"), 1).unwrap();
        drop(second);
        let third = Journal::open(dir.path(), "k").unwrap();
        assert_eq!(third.earlier(&folder("DCIM/b.jpg", 5), 1), Some(Path::new("DCIM/b.jpg")), "after a torn line");
    }
}
