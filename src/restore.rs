//! Restore: a snapshot (or a part of it) back into a folder, byte- and metadata-exact.
//!
//! Files are written under a temporary name and renamed when complete and verified, so the
//! target never holds a half-written file under its real name. Names come from validated trees
//! (no `/`, no `..`), and nothing already in the target is followed as a symlink, so nothing is
//! written outside it. A file whose data is damaged is reported and the others are restored.
//!
//! What is already in the target is the user's: by default nothing there that differs from the
//! snapshot is replaced (a file with the snapshot's size, time and bytes counts as the same), and each
//! such path is reported as a conflict. With `overwrite`, files and symlinks in the way are
//! replaced; a folder in the way is never deleted. The target itself may be a symlink to a
//! folder (it is followed); a target that is a file is refused.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::beneath::{open_beneath, split};
use crate::progress::Progress;
use crate::repo::{BlobId, RepoError, Repository, PIECE_MAX};
use crate::tree::{load_tree, Entry, Meta, Node};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target's fault (full, read-only, not allowed), not the repository's: the restore
    /// stops there, since every later write would fail the same way.
    #[error("cannot write to {path}: {cause}; the restore stopped (the repository is not at fault)")]
    Target { path: String, cause: io::Error },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl RestoreError {
    pub fn target_is_full(&self) -> bool {
        matches!(self, RestoreError::Target { cause, .. } if cause.raw_os_error() == Some(libc::ENOSPC))
    }
}

/// Why one file could not be restored.
enum FileFailure {
    /// Its data cannot be read from the repository (damaged, missing): the restore goes on with
    /// the others.
    Damaged(String),
    /// Writing it failed.
    Target(io::Error),
    /// Something appeared where it goes after the walk looked: the user's, left alone.
    InTheWay(String),
}

#[derive(Debug, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Paths that could not be restored (damaged data), with why.
    pub failed: Vec<(String, String)>,
    /// Paths where something else was in the way and was left as it is, with what.
    pub conflicts: Vec<(String, String)>,
    /// Files already there with the snapshot's size, time and bytes: left as they are.
    pub unchanged: u64,
}

struct FileJob {
    dest: PathBuf,
    entry: Entry,
    there: There,
}

/// What the planner found where a file goes.
enum There {
    Nothing,
    /// A file with the snapshot's size and time: left alone if its bytes are the snapshot's too.
    SameSizeAndTime,
    /// Something else, to be replaced (`--overwrite`).
    Other,
}

/// Pieces of packs read at once from an object store.
const REMOTE_WORKERS: usize = 8;

/// Restores `entry` (from `tree::lookup_path`) into `target`: a folder's contents go into
/// `target`, a single file or symlink into `target/<name>`. `total_bytes`, when known, gives the
/// progress bar its end.
///
/// Folders and symlinks are made as the snapshot's trees are walked; files are written after
/// the walk, in the order their chunks lie in the packs, so that neighbouring chunks come in one
/// read (one request on an object store) whichever files they belong to.
pub fn run(
    repo: &Repository,
    entry: &Entry,
    target: &Path,
    total_bytes: Option<u64>,
    overwrite: bool,
) -> Result<RestoreReport, RestoreError> {
    prepare_target(target)?;
    let total = match &entry.node {
        Node::File { size, .. } => Some(*size),
        _ => total_bytes,
    };
    let progress = Progress::bytes("restore", total);
    let report = Mutex::new(RestoreReport::default());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    // An object store answers each request after a round trip: more reads in flight keep it busy.
    let threads = if repo.local_folder().is_some() { cores } else { cores.max(REMOTE_WORKERS) };
    let (mut dirs, mut jobs) = (Vec::new(), Vec::new());
    let mut planner = Planner { repo, jobs: &mut jobs, dirs: &mut dirs, report: &report, overwrite };
    match &entry.node {
        // The target folder keeps its own metadata: it is the user's, not the phone's.
        Node::Dir { tree } => planner.restore_dir(tree, target)?,
        _ => planner.place(entry, &target.join(entry.name_os()))?,
    }
    let files = sort_out_existing(repo, jobs, threads, overwrite, &report);
    // Files are written and folders finished beneath the target opened once: a folder swapped
    // for a symlink meanwhile never leads a write or a chmod outside it.
    let root = std::fs::File::open(target).map(OwnedFd::from).map_err(target_error(target))?;
    let root = Target { fd: root, path: target };
    write_files(repo, &root, files, threads, &progress, &report)?;
    // Folder modes and times last, deepest first: writing into a folder changes its mtime, and
    // a folder stays private (made 0700) until then.
    for (dir, meta) in dirs.iter().rev() {
        root.finish_folder(dir, meta).map_err(target_error(dir))?;
    }
    progress.finish();
    let mut report = report.into_inner().expect("report lock");
    report.failed.sort();
    report.conflicts.sort();
    Ok(report)
}

struct Planner<'a> {
    repo: &'a Repository,
    jobs: &'a mut Vec<FileJob>,
    dirs: &'a mut Vec<(PathBuf, Meta)>,
    report: &'a Mutex<RestoreReport>,
    overwrite: bool,
}

impl Planner<'_> {
    fn restore_dir(&mut self, tree: &crate::repo::BlobId, dest: &Path) -> Result<(), RestoreError> {
        let tree = match load_tree(self.repo, tree) {
            Ok(tree) => tree,
            Err(e) if e.is_corruption() => {
                self.report.lock().expect("report lock").failed.push((dest.display().to_string(), e.to_string()));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        for entry in tree.entries {
            self.place(&entry, &dest.join(entry.name_os()))?;
        }
        Ok(())
    }

    fn place(&mut self, entry: &Entry, dest: &Path) -> Result<(), RestoreError> {
        let existing = std::fs::symlink_metadata(dest).ok();
        let in_the_way = |what: &str| (dest.display().to_string(), what.to_string());
        match (&entry.node, &existing) {
            (_, Some(meta)) if meta.is_dir() && !matches!(entry.node, Node::Dir { .. }) => {
                self.conflict(in_the_way("a folder is there (folders are never deleted)"));
                Ok(())
            }
            (Node::Dir { tree }, existing) => {
                match existing {
                    Some(meta) if meta.is_dir() => {}
                    Some(_) if !self.overwrite => {
                        self.conflict(in_the_way("a file or symlink is there where the snapshot has a folder"));
                        return Ok(());
                    }
                    Some(_) => {
                        std::fs::remove_file(dest).map_err(target_error(dest))?;
                        make_folder(dest).map_err(target_error(dest))?;
                    }
                    None => make_folder(dest).map_err(target_error(dest))?,
                }
                self.dirs.push((dest.to_path_buf(), entry.meta.clone()));
                self.report.lock().expect("report lock").dirs += 1;
                self.restore_dir(tree, dest)
            }
            (Node::Symlink { target }, existing) => {
                if let Some(meta) = existing {
                    let same = meta.file_type().is_symlink()
                        && std::fs::read_link(dest).is_ok_and(|t| t.as_os_str().as_bytes() == target.as_slice());
                    if same {
                        self.report.lock().expect("report lock").symlinks += 1;
                        return Ok(());
                    }
                    if !self.overwrite {
                        self.conflict(in_the_way("something else is there (--overwrite replaces it)"));
                        return Ok(());
                    }
                    std::fs::remove_file(dest).map_err(target_error(dest))?;
                }
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), dest).map_err(target_error(dest))?;
                apply_meta(dest, &entry.meta, true).map_err(target_error(dest))?;
                self.report.lock().expect("report lock").symlinks += 1;
                Ok(())
            }
            (Node::File { size, .. }, existing) => {
                let there = match existing {
                    None => There::Nothing,
                    Some(meta) if meta.is_file() && meta.len() == *size && same_mtime(meta, &entry.meta) => {
                        There::SameSizeAndTime
                    }
                    Some(_) if !self.overwrite => {
                        self.conflict(in_the_way("a different file is there (--overwrite replaces it)"));
                        return Ok(());
                    }
                    Some(_) => There::Other,
                };
                self.jobs.push(FileJob { dest: dest.to_path_buf(), entry: entry.clone(), there });
                Ok(())
            }
        }
    }

    fn conflict(&self, what: (String, String)) {
        self.report.lock().expect("report lock").conflicts.push(what);
    }
}

/// A file to write: `dest`, and whether it replaces one of the user's files.
struct FileToWrite {
    dest: PathBuf,
    entry: Entry,
    replaces: bool,
}

/// Decides about each file that has the snapshot's size and time already (reading them on
/// `threads` threads): the same bytes are left alone, others are a conflict or, with
/// `overwrite`, replaced. Returns the files to write, in the walk's order.
fn sort_out_existing(
    repo: &Repository,
    jobs: Vec<FileJob>,
    threads: usize,
    overwrite: bool,
    report: &Mutex<RestoreReport>,
) -> Vec<FileToWrite> {
    let next = AtomicUsize::new(0);
    let decided: Vec<Mutex<Option<bool>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    let to_compare = jobs.iter().filter(|job| matches!(job.there, There::SameSizeAndTime)).count();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(to_compare) {
            scope.spawn(|| loop {
                let at = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(at) else { return };
                if !matches!(job.there, There::SameSizeAndTime) {
                    continue;
                }
                let write = match same_bytes(repo, &job.entry, &job.dest) {
                    Ok(true) => {
                        report.lock().expect("report lock").unchanged += 1;
                        false
                    }
                    Ok(false) if overwrite => true,
                    Ok(false) => {
                        let why = "a file with the snapshot's size and time but other bytes is there (--overwrite replaces it)";
                        report.lock().expect("report lock").conflicts.push((job.dest.display().to_string(), why.into()));
                        false
                    }
                    Err(_) if overwrite => true,
                    Err(e) => {
                        let why = format!("a file with the snapshot's size and time is there, and cannot be read to compare: {e}");
                        report.lock().expect("report lock").conflicts.push((job.dest.display().to_string(), why));
                        false
                    }
                };
                *decided[at].lock().expect("decision lock") = Some(write);
            });
        }
    });
    jobs.into_iter()
        .zip(decided)
        .filter_map(|(job, decided)| {
            let replaces = match job.there {
                There::Nothing => false,
                There::Other => true,
                There::SameSizeAndTime => match decided.into_inner().expect("decision lock") {
                    Some(true) => true,
                    _ => return None,
                },
            };
            Some(FileToWrite { dest: job.dest, entry: job.entry, replaces })
        })
        .collect()
}

/// Where one chunk goes: file `file` of the files being written, at `offset`.
struct Place {
    file: usize,
    offset: u64,
    len: u32,
}

/// Writes `files`, their chunks in pack order (see `Repository::load_blobs_in_pack_order`): each
/// file under a temporary name, renamed into place once its last chunk is written. A file
/// whose data is damaged is reported and the others are written; the target failing, or the
/// store, stops the restore, and every file not yet complete is removed.
fn write_files(
    repo: &Repository,
    target: &Target,
    files: Vec<FileToWrite>,
    threads: usize,
    progress: &Progress,
    report: &Mutex<RestoreReport>,
) -> Result<(), RestoreError> {
    let files: Vec<PendingFile> = files.into_iter().map(PendingFile::new).collect();
    let mut places: HashMap<BlobId, Vec<Place>> = HashMap::new();
    let mut order = Vec::new();
    for (index, file) in files.iter().enumerate() {
        let Node::File { chunks, .. } = &file.entry.node else { unreachable!("only files are written") };
        let mut offset = 0;
        for chunk in chunks {
            let wanted = places.entry(chunk.id).or_insert_with(|| {
                order.push(chunk.id);
                Vec::new()
            });
            wanted.push(Place { file: index, offset, len: chunk.len });
            offset += u64::from(chunk.len);
        }
    }
    let finished = |file: &PendingFile| -> Result<(), RestoreError> {
        let outcome = file.finish(target);
        let mut report = report.lock().expect("report lock");
        match outcome {
            Ok(size) => {
                report.files += 1;
                report.bytes += size;
            }
            Err(FileFailure::Damaged(why)) => {
                progress.note(&format!("phonebak: cannot restore {}: {why}", file.dest.display()));
                report.failed.push((file.dest.display().to_string(), why));
            }
            Err(FileFailure::InTheWay(why)) => report.conflicts.push((file.dest.display().to_string(), why)),
            Err(FileFailure::Target(e)) => return Err(target_error(&file.dest)(e)),
        }
        Ok(())
    };
    let written = (|| {
        for file in files.iter().filter(|file| file.chunks_left.load(Ordering::Relaxed) == 0) {
            finished(file)?;
        }
        repo.load_blobs_in_pack_order(&order, threads, PIECE_MAX, |id, plain| {
            let plain = match plain {
                Ok(plain) => Ok(plain),
                // The store is down or refuses: every other file would fail the same way.
                Err(RepoError::Storage(e)) if e.store_is_unusable() => {
                    return Err(RestoreError::Repo(RepoError::Storage(e)))
                }
                Err(e) => Err(e.to_string()),
            };
            for place in &places[id] {
                let file = &files[place.file];
                match &plain {
                    Ok(data) if data.len() == place.len as usize => {
                        file.write(target, place.offset, data).map_err(target_error(&file.dest))?;
                        progress.add(data.len() as u64);
                    }
                    Ok(data) => file.damaged(format!(
                        "repository damaged: chunk {id} has {} bytes where the folder listing says {}",
                        data.len(),
                        place.len
                    )),
                    Err(why) => file.damaged(why.clone()),
                }
                if file.chunks_left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    finished(file)?;
                }
            }
            Ok(())
        })
    })();
    if written.is_err() {
        for file in &files {
            file.abandon(target);
        }
    }
    written
}

/// The folder restored into, opened once: files are opened, renamed and removed, and folders
/// finished, beneath it, never through a symlink (see `beneath::open_beneath`).
struct Target<'a> {
    fd: OwnedFd,
    path: &'a Path,
}

impl Target<'_> {
    fn relative<'p>(&self, path: &'p Path) -> &'p Path {
        path.strip_prefix(self.path).unwrap_or(path)
    }

    fn open(&self, path: &Path, flags: i32, mode: u32) -> io::Result<File> {
        open_beneath(self.fd.as_raw_fd(), self.relative(path), flags, mode).map(File::from)
    }

    /// The folder holding `path`, and `path`'s name in it.
    fn parent_of(&self, path: &Path) -> io::Result<(OwnedFd, std::ffi::CString)> {
        let (parent, name) = split(self.relative(path))?;
        Ok((open_beneath(self.fd.as_raw_fd(), parent, libc::O_DIRECTORY | libc::O_RDONLY, 0)?, name))
    }

    /// Renames `from` to `to` (in one folder); unless `replace`, never over anything there
    /// (something that appeared since the walk looked is the user's: `EEXIST`).
    fn rename(&self, from: &Path, to: &Path, replace: bool) -> io::Result<()> {
        let (dir, from_name) = self.parent_of(from)?;
        let (_, to_name) = split(self.relative(to))?;
        let flags = if replace { 0 } else { libc::RENAME_NOREPLACE };
        let dir = dir.as_raw_fd();
        // SAFETY: both names are NUL-terminated and the folder's descriptor is open.
        if unsafe { libc::renameat2(dir, from_name.as_ptr(), dir, to_name.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if flags != 0 && error.raw_os_error() == Some(libc::EINVAL) {
            // A file system without RENAME_NOREPLACE: looked at, then renamed.
            // SAFETY: as above; `stat` is written by the call.
            let mut stat: libc::stat = unsafe { std::mem::zeroed() };
            if unsafe { libc::fstatat(dir, to_name.as_ptr(), &mut stat, libc::AT_SYMLINK_NOFOLLOW) } == 0 {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            // SAFETY: as above.
            if unsafe { libc::renameat(dir, from_name.as_ptr(), dir, to_name.as_ptr()) } == 0 {
                return Ok(());
            }
            return Err(io::Error::last_os_error());
        }
        Err(error)
    }

    fn remove(&self, path: &Path) {
        if let Ok((dir, name)) = self.parent_of(path) {
            // SAFETY: the name is NUL-terminated and the folder's descriptor is open.
            unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
        }
    }

    /// Gives a folder made by the walk its snapshot's owner, mode and time.
    fn finish_folder(&self, path: &Path, meta: &Meta) -> io::Result<()> {
        apply_file_meta(&self.open(path, libc::O_DIRECTORY | libc::O_RDONLY, 0)?, meta)
    }
}

/// A folder made by the walk: private (0700) until it is finished, so that nothing in it is
/// readable by others while it is restored, or after a restore that stopped early.
fn make_folder(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        // Another restore into the same target made it first.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && std::fs::symlink_metadata(path)?.is_dir() => Ok(()),
        other => other,
    }
}

/// A file being written under a temporary name.
struct PendingFile {
    dest: PathBuf,
    entry: Entry,
    replaces: bool,
    // Not derived from the name: names are bytes (two can look alike as text) of up to 255,
    // and a longer temporary name would not fit.
    tmp: PathBuf,
    chunks_left: AtomicUsize,
    state: Mutex<PendingState>,
}

#[derive(Default)]
struct PendingState {
    created: bool,
    /// Renamed into place, or given up.
    settled: bool,
    damaged: Option<String>,
}

impl PendingFile {
    fn new(file: FileToWrite) -> PendingFile {
        let Node::File { chunks, .. } = &file.entry.node else { unreachable!("only files are written") };
        PendingFile {
            tmp: file.dest.with_file_name(format!(".phonebak-restore-{:016x}", rand::random::<u64>())),
            chunks_left: AtomicUsize::new(chunks.len()),
            dest: file.dest,
            entry: file.entry,
            replaces: file.replaces,
            state: Mutex::new(PendingState::default()),
        }
    }

    /// The temporary file, made on first use (files are reopened per chunk: thousands may be
    /// in progress at once, more than a process may hold open).
    fn open(&self, target: &Target) -> io::Result<File> {
        let mut state = self.state.lock().expect("pending file lock");
        if !state.created {
            target.remove(&self.tmp);
            let file = target.open(&self.tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o600)?;
            state.created = true;
            return Ok(file);
        }
        target.open(&self.tmp, libc::O_WRONLY, 0)
    }

    fn write(&self, target: &Target, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.state.lock().expect("pending file lock").damaged.is_some() {
            return Ok(());
        }
        let file = self.open(target)?;
        // A chunk of zeros is left a hole: a sparse file (a disk image, a database) restores
        // sparse instead of taking its full size on disk.
        if data.iter().all(|&b| b == 0) {
            return Ok(());
        }
        file.write_all_at(data, offset)
    }

    fn damaged(&self, why: String) {
        self.state.lock().expect("pending file lock").damaged.get_or_insert(why);
    }

    /// Called once every chunk is written: sets the file's size and metadata and renames it
    /// into place (a file that replaces one of the user's is made durable first: a power loss
    /// must not leave an empty file where the user's was). Returns its size.
    fn finish(&self, target: &Target) -> Result<u64, FileFailure> {
        let Node::File { size, .. } = &self.entry.node else { unreachable!("only files are written") };
        let damaged = self.state.lock().expect("pending file lock").damaged.clone();
        if let Some(why) = damaged {
            self.abandon(target);
            return Err(FileFailure::Damaged(why));
        }
        let complete = || -> io::Result<()> {
            let file = self.open(target)?;
            file.set_len(*size)?;
            apply_file_meta(&file, &self.entry.meta)?;
            if self.replaces {
                file.sync_all()?;
            }
            drop(file);
            // Replaces a file or symlink there only if the planner decided it may; never a folder.
            target.rename(&self.tmp, &self.dest, self.replaces)
        };
        let done = complete();
        match done {
            Ok(()) => {
                self.state.lock().expect("pending file lock").settled = true;
                Ok(*size)
            }
            Err(e) => {
                self.abandon(target);
                match e.raw_os_error() {
                    Some(libc::EEXIST) => Err(FileFailure::InTheWay(
                        "something appeared there during the restore and is left as it is (--overwrite replaces it)"
                            .into(),
                    )),
                    _ => Err(FileFailure::Target(e)),
                }
            }
        }
    }

    /// Removes the temporary file of a file that will not be completed.
    fn abandon(&self, target: &Target) {
        let mut state = self.state.lock().expect("pending file lock");
        if state.created && !state.settled {
            target.remove(&self.tmp);
        }
        state.settled = true;
    }
}

fn same_mtime(meta: &std::fs::Metadata, stored: &Meta) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() == stored.mtime_sec && meta.mtime_nsec() == stored.mtime_nsec as i64
}

fn target_error(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |cause| RestoreError::Target { path: path.display().to_string(), cause }
}

/// The folder to restore into: made if missing; a symlink to a folder is followed (the user
/// chose it); a file is refused, never replaced.
fn prepare_target(path: &Path) -> Result<(), RestoreError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(target_error(path)(io::Error::new(io::ErrorKind::AlreadyExists, "it is a file, not a folder"))),
        Err(_) => std::fs::create_dir_all(path).map_err(target_error(path)),
    }
}

/// Whether the file at `dest` holds the snapshot file's bytes (a restore cut off by a power
/// loss can leave a file of the right size and time whose data never reached the disk).
fn same_bytes(repo: &Repository, entry: &Entry, dest: &Path) -> io::Result<bool> {
    let Node::File { chunks, .. } = &entry.node else { return Ok(false) };
    // Not waiting on a FIFO put in the file's place since it was looked at.
    let mut file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(dest)?;
    if !file.metadata()?.is_file() {
        return Ok(false);
    }
    crate::origin::holds_exactly(repo, &mut file, chunks)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn timespecs(meta: &Meta) -> [libc::timespec; 2] {
    let time = libc::timespec { tv_sec: meta.mtime_sec as libc::time_t, tv_nsec: meta.mtime_nsec as libc::c_long };
    [time, time]
}

fn apply_file_meta(file: &File, meta: &Meta) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if is_root() {
        std::os::unix::fs::fchown(file, Some(meta.uid), Some(meta.gid))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(meta.mode))?;
    let times = timespecs(meta);
    // SAFETY: the fd is open for the call's duration and `times` holds two valid timespecs.
    if unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets owner (when root), mode (not on symlinks) and mtime of a folder or symlink.
pub fn apply_meta(path: &Path, meta: &Meta, is_symlink: bool) -> io::Result<()> {
    if is_root() {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))?;
    }
    if !is_symlink {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode))?;
    }
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let times = timespecs(meta);
    // SAFETY: c_path is NUL-terminated and `times` holds two valid timespecs.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c_path.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
