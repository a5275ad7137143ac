//! `restore/`: the mount's one writable folder, a passthrough to the staging folder on disk
//! (`REPO/staging/` or `-o staging=DIR`). Whatever is copied there is an ordinary file on disk
//! at once, so it survives an unmount, a killed daemon and a reboot; `phonebak push` takes it
//! from there to a phone.
//!
//! Each inode the kernel knows holds an `O_PATH` descriptor of its file on disk (as virtiofsd
//! and libfuse's passthrough_hp do): a rename elsewhere or an unlink of an open file does not
//! lose it, and its inode number cannot be reused while the kernel still knows it. Reads and
//! writes that reach this daemon are stateless per inode, because without passthrough the
//! kernel opens files without telling us (the mount's no-open mode is connection-wide): a
//! descriptor is kept from the create or first write until the file is closed (FLUSH). With
//! passthrough (see `fuse.rs`) the kernel reads and writes staged files itself.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Attr, Kind, VfsError};

/// The inode number of `restore/` itself.
pub const RESTORE_INO: u64 = 3;
/// Staged inode numbers are the files' own on disk with this bit set: they never meet the
/// snapshot side's numbers (derived from hashes shifted right by one).
const STAGED_BIT: u64 = 1 << 63;
/// The kernel may not cache what it is told about staged files: `phonebak push` removes them
/// behind the mount's back, and the mount must show that at once, as a local folder would.
const TTL: Duration = Duration::ZERO;

pub fn is_staged(ino: u64) -> bool {
    ino == RESTORE_INO || ino & STAGED_BIT != 0
}

/// A file's open descriptor for reading and writing, kept between requests.
struct Io {
    file: Arc<File>,
    readable: bool,
    writable: bool,
}

struct StagedInode {
    /// `O_PATH | O_NOFOLLOW`: names the file, grants no access.
    path_fd: OwnedFd,
    kind: Kind,
    lookups: u64,
    io: Option<Io>,
}

/// Who asked: new files, folders and links get this owner when the daemon runs as root (as
/// they would on a local disk).
#[derive(Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// A row of a staged folder's listing.
pub struct StagedRow {
    pub ino: u64,
    pub name: Vec<u8>,
    pub kind: Kind,
    /// The offset that continues the listing after this row.
    pub next: u64,
}

pub struct Staging {
    inodes: Mutex<HashMap<u64, StagedInode>>,
    /// With the kernel's writeback cache, writes reach us late (when pages are flushed, up to
    /// 1 MiB at a time) and the kernel keeps files' mtimes itself, sending them as SETATTR: a
    /// late write must not move the file's mtime on disk (`cp -a` set it before closing).
    kernel_keeps_mtime: std::sync::atomic::AtomicBool,
    root_dev: u64,
    read_only: bool,
    as_root: bool,
}

fn os_error(e: std::io::Error) -> VfsError {
    VfsError::Os(e.raw_os_error().unwrap_or(libc::EIO))
}

fn last_error() -> VfsError {
    os_error(std::io::Error::last_os_error())
}

fn check(result: libc::c_int) -> Result<libc::c_int, VfsError> {
    if result < 0 {
        Err(last_error())
    } else {
        Ok(result)
    }
}

fn c_name(name: &[u8]) -> Result<CString, VfsError> {
    CString::new(name).map_err(|_| VfsError::Os(libc::EINVAL))
}

/// A name inside a folder: never `.`, `..` or a path (the kernel sends none, and one must not
/// lead outside the staging folder).
fn entry_name(name: &[u8]) -> Result<CString, VfsError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(VfsError::Os(libc::EINVAL));
    }
    c_name(name)
}

fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

fn fstat(fd: RawFd) -> Result<libc::stat, VfsError> {
    // SAFETY: an all-zero `stat` is valid; fstatat fills it, with AT_EMPTY_PATH on `fd` itself.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstatat(fd, c"".as_ptr(), &mut st, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn kind_of_mode(mode: u32) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::File,
    }
}

/// Opens `name` in folder `dir` (or `dir` itself for an empty name) with `flags`.
fn open_at(dir: RawFd, name: &[u8], flags: libc::c_int, mode: libc::mode_t) -> Result<OwnedFd, VfsError> {
    let name = c_name(name)?;
    // SAFETY: `name` is NUL-terminated; the returned descriptor is owned by the OwnedFd.
    let fd = check(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Staging {
    /// Staging in `dir`, which is made (mode 0700) if missing.
    pub fn at(dir: &Path, read_only: bool) -> std::io::Result<Staging> {
        if !dir.exists() && !read_only {
            std::fs::DirBuilder::new().mode(0o700).recursive(true).create(dir)?;
        }
        let root = File::open(dir)?;
        if !root.metadata()?.is_dir() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let path_fd = OwnedFd::from(File::open(format!("/proc/self/fd/{}", root.as_raw_fd()))?);
        let root_dev = root.metadata()?.dev();
        let mut inodes = HashMap::new();
        inodes.insert(RESTORE_INO, StagedInode { path_fd, kind: Kind::Dir, lookups: 1, io: None });
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let kernel_keeps_mtime = std::sync::atomic::AtomicBool::new(false);
        Ok(Staging { inodes: Mutex::new(inodes), kernel_keeps_mtime, root_dev, read_only, as_root })
    }

    /// Runs `f` with the descriptor that names inode `ino`.
    fn with_fd<T>(&self, ino: u64, f: impl FnOnce(RawFd, Kind) -> Result<T, VfsError>) -> Result<T, VfsError> {
        let fd = {
            let inodes = self.inodes.lock().expect("staging lock");
            let inode = inodes.get(&ino).ok_or(VfsError::NotFound)?;
            // A duplicate, so that the lock is not held during the call.
            (inode.path_fd.try_clone().map_err(os_error)?, inode.kind)
        };
        f(fd.0.as_raw_fd(), fd.1)
    }

    fn writable(&self) -> Result<(), VfsError> {
        if self.read_only {
            Err(VfsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn ino_of(&self, st: &libc::stat) -> u64 {
        if st.st_dev == self.root_dev {
            STAGED_BIT | st.st_ino
        } else {
            // Another filesystem mounted inside the staging folder: its numbers may repeat ours.
            STAGED_BIT | (st.st_ino ^ st.st_dev.rotate_left(40)) | 1 << 62
        }
    }

    fn attr(&self, ino: u64, st: &libc::stat) -> Attr {
        Attr {
            ino,
            kind: kind_of_mode(st.st_mode),
            size: st.st_size as u64,
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            ttl: TTL,
        }
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, VfsError> {
        self.with_fd(ino, |fd, _| Ok(self.attr(ino, &fstat(fd)?)))
    }

    /// Looks `name` up in folder `parent` and counts one kernel reference to it.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, VfsError> {
        entry_name(name)?;
        let fd = self.with_fd(parent, |dir, _| open_at(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0))?;
        self.adopt(fd, None)
    }

    /// Counts a reference to the file `path_fd` names, kept as its inode unless one exists.
    fn adopt(&self, path_fd: OwnedFd, io: Option<Io>) -> Result<Attr, VfsError> {
        let st = fstat(path_fd.as_raw_fd())?;
        let ino = self.ino_of(&st);
        let kind = kind_of_mode(st.st_mode);
        let mut inodes = self.inodes.lock().expect("staging lock");
        let inode = inodes.entry(ino).or_insert(StagedInode { path_fd, kind, lookups: 0, io: None });
        inode.lookups += 1;
        if io.is_some() {
            inode.io = io;
        }
        Ok(self.attr(ino, &st))
    }

    pub fn forget(&self, ino: u64, count: u64) {
        if ino == RESTORE_INO {
            return;
        }
        let mut inodes = self.inodes.lock().expect("staging lock");
        if let Some(inode) = inodes.get_mut(&ino) {
            inode.lookups = inode.lookups.saturating_sub(count);
            if inode.lookups == 0 {
                inodes.remove(&ino);
            }
        }
    }

    /// Gives new things the caller's ownership when the daemon runs as root.
    fn own(&self, dir: RawFd, name: &CString, caller: Caller) {
        if self.as_root && (caller.uid != 0 || caller.gid != 0) {
            // SAFETY: `name` is NUL-terminated. A failure leaves root as owner, which is safe.
            unsafe { libc::fchownat(dir, name.as_ptr(), caller.uid, caller.gid, libc::AT_SYMLINK_NOFOLLOW) };
        }
    }

    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, caller: Caller) -> Result<Attr, VfsError> {
        self.writable()?;
        let c = entry_name(name)?;
        self.with_fd(parent, |dir, _| {
            // SAFETY: `c` is NUL-terminated.
            check(unsafe { libc::mkdirat(dir, c.as_ptr(), mode as libc::mode_t) })?;
            self.own(dir, &c, caller);
            Ok(())
        })?;
        self.lookup(parent, name)
    }

    pub fn mknod(&self, parent: u64, name: &[u8], mode: u32, rdev: u32, caller: Caller) -> Result<Attr, VfsError> {
        self.writable()?;
        let c = entry_name(name)?;
        self.with_fd(parent, |dir, _| {
            // SAFETY: `c` is NUL-terminated.
            check(unsafe { libc::mknodat(dir, c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) })?;
            self.own(dir, &c, caller);
            Ok(())
        })?;
        self.lookup(parent, name)
    }

    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], caller: Caller) -> Result<Attr, VfsError> {
        self.writable()?;
        let (c, target) = (entry_name(name)?, c_name(target)?);
        self.with_fd(parent, |dir, _| {
            // SAFETY: both strings are NUL-terminated.
            check(unsafe { libc::symlinkat(target.as_ptr(), dir, c.as_ptr()) })?;
            self.own(dir, &c, caller);
            Ok(())
        })?;
        self.lookup(parent, name)
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<Attr, VfsError> {
        self.writable()?;
        let c = entry_name(new_name)?;
        self.with_fd(ino, |fd, _| {
            self.with_fd(new_parent, |dir, _| {
                let from = proc_path(fd);
                // SAFETY: both strings are NUL-terminated; following the /proc link names the
                // file itself (hard links of folders are refused by the kernel anyway).
                check(unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), dir, c.as_ptr(), libc::AT_SYMLINK_FOLLOW) })
            })
        })?;
        self.lookup(new_parent, new_name)
    }

    /// Creates and opens a file; the descriptor is kept for the writes that follow.
    pub fn create(&self, parent: u64, name: &[u8], mode: u32, flags: i32, caller: Caller) -> Result<Attr, VfsError> {
        self.writable()?;
        let c = entry_name(name)?;
        let flags = flags & (libc::O_ACCMODE | libc::O_EXCL | libc::O_TRUNC | libc::O_APPEND) | libc::O_CREAT;
        let (file, path_fd) = self.with_fd(parent, |dir, _| {
            // Made here, or (lost a race) opened as it is, never following a symlink; only a
            // file made here gets the caller as owner.
            let flags = (flags | libc::O_NOFOLLOW) & !libc::O_APPEND;
            let file = match open_at(dir, name, flags | libc::O_EXCL, mode as libc::mode_t) {
                Ok(file) => {
                    self.own(dir, &c, caller);
                    file
                }
                Err(VfsError::Os(libc::EEXIST)) if flags & libc::O_EXCL == 0 => {
                    open_at(dir, name, flags & !libc::O_CREAT, 0)?
                }
                Err(e) => return Err(e),
            };
            let path_fd = open_at(libc::AT_FDCWD, proc_path(file.as_raw_fd()).as_bytes(), libc::O_PATH, 0)?;
            Ok((File::from(file), path_fd))
        })?;
        let access = flags & libc::O_ACCMODE;
        let io = Io { file: Arc::new(file), readable: access != libc::O_WRONLY, writable: access != libc::O_RDONLY };
        self.adopt(path_fd, Some(io))
    }

    /// The kept descriptor of file `ino` if it allows `write` (or reading), else a new one.
    fn io(&self, ino: u64, write: bool) -> Result<Arc<File>, VfsError> {
        if let Some(io) = self.inodes.lock().expect("staging lock").get(&ino).and_then(|i| i.io.as_ref()) {
            if (write && io.writable) || (!write && io.readable) {
                return Ok(io.file.clone());
            }
        }
        let file = self.with_fd(ino, |fd, kind| {
            if kind == Kind::Dir {
                return Err(VfsError::IsDir);
            }
            let path = proc_path(fd);
            let open = |flags| open_at(libc::AT_FDCWD, path.as_bytes(), flags, 0);
            // Read and write if allowed, so that one descriptor serves both.
            let (file, readable, writable) = match open(libc::O_RDWR) {
                Ok(file) => (file, true, true),
                Err(_) if write => (open(libc::O_WRONLY)?, false, true),
                Err(_) => (open(libc::O_RDONLY)?, true, false),
            };
            Ok(Io { file: Arc::new(File::from(file)), readable, writable })
        })?;
        let shared = file.file.clone();
        if let Some(inode) = self.inodes.lock().expect("staging lock").get_mut(&ino) {
            inode.io = Some(file);
        }
        Ok(shared)
    }

    /// The descriptor kept for file `ino` since its creation, if any.
    pub fn open_file(&self, ino: u64) -> Option<Arc<File>> {
        self.inodes.lock().expect("staging lock").get(&ino).and_then(|i| i.io.as_ref()).map(|io| io.file.clone())
    }

    /// Checks that `ino` may be opened as asked.
    pub fn open(&self, ino: u64, write: bool) -> Result<(), VfsError> {
        if write {
            self.writable()?;
        }
        self.io(ino, write).map(|_| ())
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, VfsError> {
        let file = self.io(ino, false)?;
        let mut buffer = vec![0; size as usize];
        let mut done = 0;
        while done < buffer.len() {
            match file.read_at(&mut buffer[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(os_error(e)),
            }
        }
        buffer.truncate(done);
        Ok(buffer)
    }

    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<u32, VfsError> {
        self.writable()?;
        let file = self.io(ino, true)?;
        let keep_mtime = self.kernel_keeps_mtime.load(std::sync::atomic::Ordering::Relaxed);
        let mtime = if keep_mtime { Some(fstat(file.as_raw_fd())?) } else { None };
        file.write_all_at(data, offset).map_err(os_error)?;
        if let Some(before) = mtime {
            let omit = libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT };
            let mtime = libc::timespec { tv_sec: before.st_mtime, tv_nsec: before.st_mtime_nsec };
            // SAFETY: `file` is open; `times` holds two timespecs.
            check(unsafe { libc::futimens(file.as_raw_fd(), [omit, mtime].as_ptr()) })?;
        }
        Ok(data.len() as u32)
    }

    /// Whether changes may be cached by the kernel (writeback): not on a read-only mount.
    pub fn wants_writeback(&self) -> bool {
        !self.read_only
    }

    /// The kernel caches writes and keeps mtimes (see `kernel_keeps_mtime`).
    pub fn set_writeback(&self) {
        self.kernel_keeps_mtime.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A file was closed: its kept descriptor goes (the next request opens a new one).
    pub fn flush(&self, ino: u64) {
        if let Some(inode) = self.inodes.lock().expect("staging lock").get_mut(&ino) {
            inode.io = None;
        }
    }

    pub fn fsync(&self, ino: u64, data_only: bool) -> Result<(), VfsError> {
        let file = self.with_fd(ino, |fd, _| {
            open_at(libc::AT_FDCWD, proc_path(fd).as_bytes(), libc::O_RDONLY, 0).map(File::from)
        })?;
        if data_only { file.sync_data() } else { file.sync_all() }.map_err(os_error)
    }

    pub fn setattr(&self, ino: u64, change: &AttrChange) -> Result<Attr, VfsError> {
        self.writable()?;
        self.with_fd(ino, |fd, kind| {
            let path = proc_path(fd);
            if let Some(mode) = change.mode.filter(|_| kind != Kind::Symlink) {
                // SAFETY: `path` is NUL-terminated; it names the inode through /proc.
                check(unsafe { libc::chmod(path.as_ptr(), mode as libc::mode_t & 0o7777) })?;
            }
            if change.uid.is_some() || change.gid.is_some() {
                let (uid, gid) = (change.uid.unwrap_or(u32::MAX), change.gid.unwrap_or(u32::MAX));
                // SAFETY: an empty path with AT_EMPTY_PATH means `fd` itself.
                check(unsafe {
                    libc::fchownat(fd, c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
                })?;
            }
            if let Some(size) = change.size {
                self.io(ino, true)?.set_len(size).map_err(os_error)?;
            }
            if change.atime.is_some() || change.mtime.is_some() {
                let omit = libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT };
                let times = [change.atime.unwrap_or(omit), change.mtime.unwrap_or(omit)];
                // SAFETY: `times` holds two timespecs; AT_EMPTY_PATH means `fd` itself.
                check(unsafe {
                    libc::utimensat(fd, c"".as_ptr(), times.as_ptr(), libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
                })?;
            }
            Ok(self.attr(ino, &fstat(fd)?))
        })
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, VfsError> {
        self.with_fd(ino, |fd, _| {
            let mut buffer = vec![0u8; libc::PATH_MAX as usize];
            // SAFETY: the buffer is as long as said; an empty path with an O_PATH descriptor
            // reads the link itself.
            let n = unsafe { libc::readlinkat(fd, c"".as_ptr(), buffer.as_mut_ptr().cast(), buffer.len()) };
            if n < 0 {
                return Err(last_error());
            }
            buffer.truncate(n as usize);
            Ok(buffer)
        })
    }

    pub fn unlink(&self, parent: u64, name: &[u8], folder: bool) -> Result<(), VfsError> {
        self.writable()?;
        let c = entry_name(name)?;
        let flags = if folder { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: `c` is NUL-terminated.
        self.with_fd(parent, |dir, _| check(unsafe { libc::unlinkat(dir, c.as_ptr(), flags) }).map(|_| ()))
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), VfsError> {
        self.writable()?;
        let (from, to) = (entry_name(name)?, entry_name(new_name)?);
        self.with_fd(parent, |old_dir, _| {
            self.with_fd(new_parent, |new_dir, _| {
                // SAFETY: both names are NUL-terminated.
                check(unsafe { libc::renameat2(old_dir, from.as_ptr(), new_dir, to.as_ptr(), flags) }).map(|_| ())
            })
        })
    }

    /// Rows of folder `ino` after `offset` (0: from the start; else a row's `next`). Offsets
    /// are the filesystem's own, so a listing interleaved with deletions (`rm -r`) misses
    /// nothing.
    pub fn readdir(&self, ino: u64, offset: u64, mut take: impl FnMut(StagedRow) -> bool) -> Result<(), VfsError> {
        let dir_fd = self.with_fd(ino, |fd, _| open_at(fd, b".", libc::O_RDONLY | libc::O_DIRECTORY, 0))?;
        // SAFETY: fdopendir takes ownership of the descriptor (closed by closedir below).
        let dir = unsafe { libc::fdopendir(dir_fd.as_raw_fd()) };
        if dir.is_null() {
            return Err(last_error());
        }
        std::mem::forget(dir_fd);
        let result = (|| {
            if offset != 0 {
                // SAFETY: `dir` is a valid stream.
                unsafe { libc::seekdir(dir, offset as libc::c_long) };
            }
            loop {
                // SAFETY: `dir` is valid; the entry stays valid until the next readdir call.
                let entry = unsafe { libc::readdir64(dir) };
                if entry.is_null() {
                    return Ok(());
                }
                // SAFETY: `entry` points at a valid dirent64 with a NUL-terminated name.
                let (name, d_ino, d_type, next) = unsafe {
                    let e = &*entry;
                    (std::ffi::CStr::from_ptr(e.d_name.as_ptr()).to_bytes().to_vec(), e.d_ino, e.d_type, e.d_off)
                };
                let kind = match d_type {
                    libc::DT_DIR => Kind::Dir,
                    libc::DT_LNK => Kind::Symlink,
                    _ => Kind::File,
                };
                let row_ino = if name == b"." || name == b".." { ino } else { STAGED_BIT | d_ino };
                if take(StagedRow { ino: row_ino, name, kind, next: next as u64 }) {
                    return Ok(());
                }
            }
        })();
        // SAFETY: `dir` is valid and not used after this.
        unsafe { libc::closedir(dir) };
        result
    }

    /// (used, free) bytes of the staging folder's filesystem.
    pub fn space(&self) -> Result<(u64, u64), VfsError> {
        self.with_fd(RESTORE_INO, |fd, _| {
            let file = open_at(fd, b".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            // SAFETY: an all-zero statvfs is valid; fstatvfs fills it.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            check(unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) })?;
            Ok(((st.f_blocks - st.f_bfree) * st.f_frsize, st.f_bavail * st.f_frsize))
        })
    }

    /// Writes everything staged through to the disk (at unmount).
    pub fn sync(&self) {
        let _ = self.with_fd(RESTORE_INO, |fd, _| {
            let file = open_at(fd, b".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            // SAFETY: `file` is an open descriptor.
            check(unsafe { libc::syncfs(file.as_raw_fd()) })
        });
    }
}

/// What a SETATTR changes.
#[derive(Default)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    /// As `utimensat` takes them (UTIME_NOW for "now").
    pub atime: Option<libc::timespec>,
    pub mtime: Option<libc::timespec>,
}
