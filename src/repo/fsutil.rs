//! The one way the repository writes a file: temp file, fsync, rename, fsync the folder. Its
//! files and folders are created private (0600, 0700) whatever the umask: an unencrypted
//! repository holds the phone's data in the clear, and an encrypted one's config invites offline
//! password guessing.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Creates a new file of the repository, readable and writable by its owner only.
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

/// Creates a folder of the repository (and any missing parents), open to its owner only.
pub fn create_private_dirs(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

pub fn write_atomic(tmp_dir: &Path, target: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_dir.join(format!("{}.tmp", super::Id::random().to_hex()));
    let result = (|| {
        let mut file = create_private(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        crash_point("sync", &tmp);
        publish(&tmp, target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Renames a complete, synced temp file into place and makes the rename durable.
pub fn publish(tmp: &Path, target: &Path) -> io::Result<()> {
    let dir = target.parent().expect("repository files live in a folder");
    if !dir.exists() {
        create_private_dirs(dir)?;
        if let Some(grandparent) = dir.parent() {
            fsync_dir(grandparent)?;
        }
    }
    std::fs::rename(tmp, target)?;
    fsync_dir(dir)
}

/// Opens a file of the repository for reading, refusing what is not a regular file: a FIFO put
/// where a record was would block every command forever, a device would never end.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
    }
    Ok(file)
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    crash_point("sync-dir", dir);
    Ok(())
}

/// A durable step of a write (`sync` of a file, `sync-dir`), or a `remove` or `rename` about to
/// happen to `path`. In a build with the `test-hooks` feature, `PHONEBAK_CRASH_AT=N` kills the
/// process (SIGKILL) at the Nth such point, `PHONEBAK_STOP_AT=N` stops it (SIGSTOP) there, and
/// `PHONEBAK_CRASH_COUNT=FILE` appends
/// `N TAB step TAB path` per point, so that a test can stop a command after every prefix of its
/// writes, and also undo what a power cut would (removals whose folder was not synced since).
#[cfg(feature = "test-hooks")]
pub fn crash_point(step: &str, path: &Path) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static REACHED: AtomicU64 = AtomicU64::new(0);
    let n = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(log) = std::env::var_os("PHONEBAK_CRASH_COUNT") {
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(file, "{n}\t{step}\t{}", path.display());
        }
    }
    // Stops (SIGSTOP) at the Nth point, for a test to act while this process waits there.
    if std::env::var("PHONEBAK_STOP_AT").ok().and_then(|v| v.parse::<u64>().ok()) == Some(n) {
        // SAFETY: stops this process until a SIGCONT.
        unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
    }
    if std::env::var("PHONEBAK_CRASH_AT").ok().and_then(|v| v.parse::<u64>().ok()) == Some(n) {
        // SAFETY: sends SIGKILL to this process: nothing after this point runs.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn crash_point(_step: &str, _path: &Path) {}

pub fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}
