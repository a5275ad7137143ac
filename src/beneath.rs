//! Paths resolved beneath a folder with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: a
//! symlink put anywhere on the way (a phone's folder, a staging folder swapped for a link
//! during a push) never leads a read, write or delete outside the folder.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Opens `path` for reading only if it is a regular file: never through a symlink (a backup
/// folder received from elsewhere could point one at /etc/shadow), never waiting on a FIFO.
pub fn open_regular_nofollow(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(
            |e| match e.raw_os_error() {
                Some(libc::ELOOP) => not_regular(true),
                _ => e,
            },
        )?;
    if !opened.metadata()?.is_file() {
        return Err(not_regular(false));
    }
    Ok(opened)
}

/// The length of `path` if it is a regular file (not through a symlink): what
/// `open_regular_nofollow` would open, looked at without opening it.
pub fn regular_file_len(path: &Path) -> io::Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    match meta.file_type() {
        t if t.is_file() => Ok(meta.len()),
        t => Err(not_regular(t.is_symlink())),
    }
}

fn not_regular(symlink: bool) -> io::Error {
    let why =
        if symlink { "a symlink, not a file: not read" } else { "not a regular file (a FIFO, a device...): not read" };
    io::Error::new(io::ErrorKind::InvalidData, why)
}

pub fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens `rel` beneath `dir` without following any symlink, with `flags`.
pub fn open_beneath(dir: RawFd, rel: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let name = c_string(rel.as_os_str().as_bytes())?;
    // SAFETY: open_how is plain data; all-zero is valid and the fields are set below.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 { mode as u64 } else { 0 };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `name` is NUL-terminated and `how` is a valid open_how of the size passed.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, dir, name.as_ptr(), &how as *const libc::open_how, size_of::<libc::open_how>())
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// (parent folder, file name) of a relative path.
pub fn split(path: &Path) -> io::Result<(&Path, CString)> {
    let name = path.file_name().ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok((path.parent().unwrap_or(Path::new("")), c_string(name.as_bytes())?))
}
