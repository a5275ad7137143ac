//! `dir:PATH`: a folder as a push target (a phone mounted over MTP, or any folder).
//!
//! Every path is resolved beneath the folder (see `beneath`), so a symlink on the device (or
//! one swapped in during the push) can never lead a write outside it.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{digest_of, Device, DeviceError, Found, HashKind};
use crate::beneath::{c_string, open_beneath, split};
use crate::tree::Meta;

pub struct DirDevice {
    path: PathBuf,
    root: OwnedFd,
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

impl DirDevice {
    pub fn open(path: &Path) -> Result<DirDevice, DeviceError> {
        let unavailable = |why: String| DeviceError::Unavailable { device: format!("dir:{}", path.display()), why };
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => unavailable("no such folder (is the phone mounted?)".into()),
            _ => unavailable(e.to_string()),
        })?;
        if !meta.is_dir() {
            return Err(unavailable("not a folder".into()));
        }
        let c_path = c_string(path.as_os_str().as_bytes()).map_err(|e| unavailable(e.to_string()))?;
        // SAFETY: `c_path` is NUL-terminated.
        let root = unsafe { libc::open(c_path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if root < 0 {
            return Err(unavailable(io::Error::last_os_error().to_string()));
        }
        // SAFETY: a new descriptor that nothing else owns.
        let root = unsafe { OwnedFd::from_raw_fd(root) };
        // Named by its real path: `dir:/a/./b/` and `dir:/a/b` are one device (one lock, one journal).
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(DirDevice { path, root })
    }

    /// Whether the folder is still there (an unplugged phone's MTP mount errs; a removed
    /// folder has no links left).
    fn still_there(&self) -> bool {
        let Ok(now) = std::fs::metadata(&self.path) else { return false };
        // SAFETY: an all-zero stat is valid; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::fstat(self.root.as_raw_fd(), &mut st) } == 0;
        use std::os::unix::fs::MetadataExt;
        ok && st.st_nlink > 0 && now.ino() == st.st_ino && now.dev() == st.st_dev
    }

    /// The error for `e` at `path`: whole-device conditions stop the push, others are the file's.
    fn fail(&self, path: &Path, e: io::Error) -> DeviceError {
        let device = self.describe();
        let path_text = path.display().to_string();
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => DeviceError::Full { device, path: path_text },
            Some(libc::EROFS) => DeviceError::Unavailable { device, why: "it is read-only".into() },
            // ECONNABORTED: the request in flight when a FUSE daemon (jmtpfs...) died.
            Some(libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV | libc::ENXIO | libc::ESHUTDOWN) => {
                DeviceError::Vanished { device, why: e.to_string() }
            }
            _ if !self.still_there() => DeviceError::Vanished { device, why: e.to_string() },
            Some(libc::ELOOP | libc::EXDEV) => {
                DeviceError::File { path: path_text, why: "a symlink on the device is in the way".into() }
            }
            _ => DeviceError::File { path: path_text, why: e.to_string() },
        }
    }

    fn parent(&self, path: &Path) -> io::Result<(OwnedFd, CString)> {
        let (parent, name) = split(path)?;
        Ok((open_beneath(self.root.as_raw_fd(), parent, libc::O_PATH | libc::O_DIRECTORY, 0)?, name))
    }

    fn write_file(&self, path: &Path, content: &mut dyn Read) -> io::Result<u64> {
        let (parent, name) = self.parent(path)?;
        // SAFETY: `name` is NUL-terminated; O_NOFOLLOW refuses a symlink put in the file's place.
        let fd = check(unsafe {
            libc::openat(
                parent.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        })?;
        // SAFETY: a new descriptor that nothing else owns.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let mut buffer = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            let n = match content.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("reading what to push: {e}"))),
            };
            file.write_all(&buffer[..n])?;
            written += n as u64;
        }
        Ok(written)
    }

    fn rename_file(&self, from: &Path, to: &Path, replace: bool) -> io::Result<()> {
        let ((from_dir, from_name), (to_dir, to_name)) = (self.parent(from)?, self.parent(to)?);
        let flags = if replace { 0 } else { libc::RENAME_NOREPLACE };
        // SAFETY: both names are NUL-terminated.
        let rename = |flags| unsafe {
            libc::renameat2(from_dir.as_raw_fd(), from_name.as_ptr(), to_dir.as_raw_fd(), to_name.as_ptr(), flags)
        };
        match check(rename(flags)) {
            // No RENAME_NOREPLACE here (some FUSE filesystems): check, then rename.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !replace => {
                if self.stat_at(&to_dir, &to_name)?.is_some() {
                    return Err(io::Error::from_raw_os_error(libc::EEXIST));
                }
                check(rename(0))?;
            }
            other => {
                other?;
            }
        }
        Ok(())
    }

    fn stat_at(&self, dir: &OwnedFd, name: &CString) -> io::Result<Option<Found>> {
        // SAFETY: an all-zero stat is valid; fstatat fills it; `name` is NUL-terminated.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        match check(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }) {
            Ok(_) => Ok(Some(match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => Found::File { size: st.st_size as u64 },
                libc::S_IFDIR => Found::Dir,
                _ => Found::Other,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Device for DirDevice {
    fn describe(&self) -> String {
        format!("dir:{}", self.path.display())
    }

    fn hash_kind(&self) -> HashKind {
        HashKind::Blake3
    }

    fn check(&self) -> Result<(), DeviceError> {
        let c_path = c_string(self.path.as_os_str().as_bytes()).map_err(|e| self.fail(&self.path, e))?;
        // SAFETY: `c_path` is NUL-terminated.
        if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } != 0 {
            let e = io::Error::last_os_error();
            let why = match e.raw_os_error() {
                Some(libc::EROFS) => "it is read-only".to_string(),
                Some(libc::EACCES) => "no permission to write there".to_string(),
                _ => e.to_string(),
            };
            return Err(DeviceError::Unavailable { device: self.describe(), why });
        }
        Ok(())
    }

    fn stat(&self, path: &Path) -> Result<Option<Found>, DeviceError> {
        let found = match self.parent(path) {
            Ok((dir, name)) => self.stat_at(&dir, &name),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
            Err(e) => Err(e),
        };
        found.map_err(|e| self.fail(path, e))
    }

    fn make_dirs(&self, path: &Path) -> Result<(), DeviceError> {
        let mut at = self.root.try_clone().map_err(|e| self.fail(path, e))?;
        for part in path.iter() {
            let name = c_string(part.as_bytes()).map_err(|e| self.fail(path, e))?;
            // SAFETY: `name` is NUL-terminated.
            let made = unsafe { libc::mkdirat(at.as_raw_fd(), name.as_ptr(), 0o755) };
            if made != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                return Err(self.fail(path, io::Error::last_os_error()));
            }
            at = open_beneath(at.as_raw_fd(), Path::new(part), libc::O_PATH | libc::O_DIRECTORY, 0).map_err(
                |e| match e.raw_os_error() {
                    Some(libc::ENOTDIR | libc::ELOOP) => DeviceError::File {
                        path: path.display().to_string(),
                        why: format!("{} on the device is not a folder", part.to_string_lossy()),
                    },
                    _ => self.fail(path, e),
                },
            )?;
        }
        Ok(())
    }

    fn write(&self, path: &Path, content: &mut dyn Read, _local: Option<&Path>) -> Result<u64, DeviceError> {
        self.write_file(path, content).map_err(|e| self.fail(path, e))
    }

    fn digest(&self, path: &Path) -> Result<String, DeviceError> {
        let read = || -> io::Result<String> {
            let file = open_beneath(self.root.as_raw_fd(), path, libc::O_RDONLY | libc::O_NOFOLLOW, 0)?;
            digest_of(HashKind::Blake3, &mut File::from(file))
        };
        read().map_err(|e| self.fail(path, e))
    }

    fn set_meta(&self, path: &Path, meta: &Meta, is_symlink: bool) {
        let Ok((dir, name)) = self.parent(path) else { return };
        let mtime = libc::timespec { tv_sec: meta.mtime_sec as libc::time_t, tv_nsec: meta.mtime_nsec as libc::c_long };
        // SAFETY: `name` is NUL-terminated; `times` holds two timespecs. Failures are fine: not
        // every device keeps modes and times.
        unsafe {
            // The atime too (snapshots do not keep one): some FUSE filesystems (bindfs 1.14)
            // ignore the mtime when the atime is UTIME_OMIT.
            let times = [mtime, mtime];
            if !is_symlink {
                libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), meta.mode & 0o7777, 0);
            }
            libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW);
        }
    }

    fn rename(&self, from: &Path, to: &Path, replace: bool) -> Result<(), DeviceError> {
        self.rename_file(from, to, replace).map_err(|e| self.fail(to, e))
    }

    fn sync(&self) -> Result<(), DeviceError> {
        let sync = || -> io::Result<()> {
            let root = open_beneath(self.root.as_raw_fd(), Path::new(""), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            // SAFETY: `root` is an open descriptor.
            check(unsafe { libc::syncfs(root.as_raw_fd()) }).map(|_| ())
        };
        sync().map_err(|e| self.fail(&self.path, e))
    }

    fn remove(&self, path: &Path) -> Result<(), DeviceError> {
        let (dir, name) = self.parent(path).map_err(|e| self.fail(path, e))?;
        // SAFETY: `name` is NUL-terminated.
        match check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(self.fail(path, e)),
            _ => Ok(()),
        }
    }

    fn symlink(&self, target: &[u8], path: &Path) -> Result<(), DeviceError> {
        let make = || -> io::Result<()> {
            let (dir, name) = self.parent(path)?;
            let target = c_string(target)?;
            // SAFETY: both strings are NUL-terminated.
            check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(|_| ())
        };
        make().map_err(|e| self.fail(path, e))
    }
}
