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

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;

use crate::progress::Progress;
use crate::repo::{RepoError, Repository};
use crate::tree::{load_tree, Entry, Meta, Node};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target's fault (full, read-only, not allowed), not the repository's: the restore
    /// stops there, since every later write would fail the same way.
    #[error("cannot write to {path}: {source}; the restore stopped (the repository is not at fault)")]
    Target { path: String, source: io::Error },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl RestoreError {
    pub fn target_is_full(&self) -> bool {
        matches!(self, RestoreError::Target { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}

/// Why one file could not be restored.
enum FileFailure {
    /// Its data cannot be read from the repository (damaged, missing): the restore goes on with
    /// the others.
    Damaged(String),
    /// Writing it failed.
    Target(io::Error),
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

/// Restores `entry` (from `tree::lookup_path`) into `target`: a folder's contents go into
/// `target`, a single file or symlink into `target/<name>`. `total_bytes`, when known, gives the
/// progress bar its end.
/// Files restored at once from an object store.
const REMOTE_WORKERS: usize = 8;

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
    let target_failed: Mutex<Option<RestoreError>> = Mutex::new(None);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    // An object store answers each request after a round trip: more files in flight keep it busy.
    let workers = if repo.local_folder().is_some() { cores } else { cores.max(REMOTE_WORKERS) };
    let mut dirs = Vec::new();
    let (tx, rx) = sync_channel::<FileJob>(workers * 64);
    let rx = Mutex::new(rx);
    let walked = std::thread::scope(|scope| {
        let rx = &rx;
        let (report, progress, target_failed) = (&report, &progress, &target_failed);
        let conflict = move |dest: &Path, why: String| {
            report.lock().expect("report lock").conflicts.push((dest.display().to_string(), why));
        };
        for _ in 0..workers {
            scope.spawn(move || loop {
                let Ok(job) = rx.lock().expect("restore queue lock").recv() else {
                    return;
                };
                if target_failed.lock().expect("target failure lock").is_some() {
                    continue; // drained: the restore has stopped
                }
                let outcome = match job.there {
                    There::Nothing => restore_file(repo, &job.entry, &job.dest, false, progress),
                    There::Other => restore_file(repo, &job.entry, &job.dest, true, progress),
                    There::SameSizeAndTime => match same_bytes(repo, &job.entry, &job.dest) {
                        Ok(true) => {
                            report.lock().expect("report lock").unchanged += 1;
                            continue;
                        }
                        Ok(false) if overwrite => restore_file(repo, &job.entry, &job.dest, true, progress),
                        Ok(false) => {
                            let why = "a file with the snapshot's size and time but other bytes is there (--overwrite replaces it)";
                            conflict(&job.dest, why.into());
                            continue;
                        }
                        Err(e) => {
                            conflict(&job.dest, format!("a file with the snapshot's size and time is there, and cannot be read to compare: {e}"));
                            continue;
                        }
                    },
                };
                let mut report = report.lock().expect("report lock");
                match outcome {
                    Ok(bytes) => {
                        report.files += 1;
                        report.bytes += bytes;
                    }
                    Err(FileFailure::Damaged(why)) => {
                        progress.note(&format!("phonebak: cannot restore {}: {why}", job.dest.display()));
                        report.failed.push((job.dest.display().to_string(), why));
                    }
                    Err(FileFailure::Target(e)) => {
                        target_failed.lock().expect("target failure lock").get_or_insert(target_error(&job.dest)(e));
                    }
                }
            });
        }
        let mut planner = Planner { repo, jobs: tx, dirs: &mut dirs, report, target_failed, overwrite };
        match &entry.node {
            // The target folder keeps its own metadata: it is the user's, not the phone's.
            Node::Dir { tree } => planner.restore_dir(tree, target),
            _ => planner.place(entry, &target.join(entry.name_os())),
        }
    });
    if let Some(failed) = target_failed.into_inner().expect("target failure lock") {
        return Err(failed);
    }
    walked?;
    // Folder times last, deepest first: writing into a folder changes its mtime.
    for (dir, meta) in dirs.iter().rev() {
        apply_meta(dir, meta, false).map_err(target_error(dir))?;
    }
    progress.finish();
    let mut report = report.into_inner().expect("report lock");
    report.failed.sort();
    report.conflicts.sort();
    Ok(report)
}

struct Planner<'a> {
    repo: &'a Repository,
    jobs: std::sync::mpsc::SyncSender<FileJob>,
    dirs: &'a mut Vec<(PathBuf, Meta)>,
    report: &'a Mutex<RestoreReport>,
    target_failed: &'a Mutex<Option<RestoreError>>,
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
        if self.target_failed.lock().expect("target failure lock").is_some() {
            return Ok(()); // a worker could not write: run() reports why
        }
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
                        self.conflict(in_the_way("a file is there where the snapshot has a folder"));
                        return Ok(());
                    }
                    Some(_) => {
                        std::fs::remove_file(dest).map_err(target_error(dest))?;
                        std::fs::create_dir(dest).map_err(target_error(dest))?;
                    }
                    None => std::fs::create_dir(dest).map_err(target_error(dest))?,
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
                let job = FileJob { dest: dest.to_path_buf(), entry: entry.clone(), there };
                self.jobs.send(job).map_err(|_| target_error(dest)(io::Error::other("restore workers stopped")))
            }
        }
    }

    fn conflict(&self, what: (String, String)) {
        self.report.lock().expect("report lock").conflicts.push(what);
    }
}

fn same_mtime(meta: &std::fs::Metadata, stored: &Meta) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() == stored.mtime_sec && meta.mtime_nsec() == stored.mtime_nsec as i64
}

fn target_error(path: &Path) -> impl FnOnce(io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Target { path: path.display().to_string(), source }
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

/// Writes one file under a temporary name, then renames it into place. Returns its size, or why
/// it could not be restored. A file that `replaces` one of the user's is made durable first: a
/// power loss must not leave an empty file where the user's was.
fn restore_file(
    repo: &Repository,
    entry: &Entry,
    dest: &Path,
    replaces: bool,
    progress: &Progress,
) -> Result<u64, FileFailure> {
    let Node::File { size, chunks } = &entry.node else { unreachable!("only files are queued") };
    // Not derived from the name: names are bytes (two can look alike as text) of up to 255,
    // and a longer temporary name would not fit.
    let tmp = dest.with_file_name(format!(".phonebak-restore-{:016x}", rand::random::<u64>()));
    let write = || -> Result<(), FileFailure> {
        let _ = std::fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)
            .map_err(FileFailure::Target)?;
        for chunk in chunks {
            let data = repo.load_blob(&chunk.id).map_err(|e| FileFailure::Damaged(e.to_string()))?;
            if data.len() != chunk.len as usize {
                return Err(FileFailure::Damaged(format!(
                    "repository damaged: chunk {} has {} bytes where the folder listing says {}",
                    chunk.id,
                    data.len(),
                    chunk.len
                )));
            }
            // A chunk of zeros becomes a hole: a sparse file (a disk image, a database) restores
            // sparse instead of taking its full size on disk.
            if data.iter().all(|&b| b == 0) {
                file.seek(io::SeekFrom::Current(data.len() as i64)).map_err(FileFailure::Target)?;
            } else {
                file.write_all(&data).map_err(FileFailure::Target)?;
            }
            progress.add(data.len() as u64);
        }
        file.set_len(*size).map_err(FileFailure::Target)?;
        file.flush().map_err(FileFailure::Target)?;
        apply_file_meta(&file, &entry.meta).map_err(FileFailure::Target)?;
        if replaces {
            file.sync_all().map_err(FileFailure::Target)?;
        }
        drop(file);
        // Replaces a file or symlink there (the planner decided it may); never a folder.
        std::fs::rename(&tmp, dest).map_err(FileFailure::Target)
    };
    match write() {
        Ok(()) => Ok(*size),
        Err(why) => {
            let _ = std::fs::remove_file(&tmp);
            Err(why)
        }
    }
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
