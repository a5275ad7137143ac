//! Repository locks: backups share the repository, `prune` and `forget` need it alone. A lock is
//! a small file in `locks/`, refreshed while held; one left by a dead process on this host, or
//! not refreshed for half an hour, is stale and is removed with a note.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{read_dir_sorted, Id, RepoError, Repository};

const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Shared,
    Exclusive,
}

#[derive(Debug, Serialize, Deserialize)]
struct LockRecord {
    kind: LockKind,
    hostname: String,
    pid: u32,
    command: String,
    time: String,
}

/// Held while alive; removed on drop.
pub struct RepoLock {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// Set when a refresh found the lock file gone: another process took it as stale.
    lost: Arc<AtomicBool>,
    refresher: Option<JoinHandle<()>>,
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates within it on success.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl RepoLock {
    pub fn acquire(repo: &Repository, kind: LockKind, command: &str) -> Result<RepoLock, RepoError> {
        let record = LockRecord {
            kind,
            hostname: hostname(),
            pid: std::process::id(),
            command: command.to_string(),
            time: chrono::Local::now().to_rfc3339(),
        };
        let own_name = Id::random().to_hex();
        repo.write_file_atomic(&format!("locks/{own_name}"), &serde_json::to_vec(&record).expect("lock serializes"))?;
        let path = repo.path(&format!("locks/{own_name}"));
        let lock = RepoLock { path, stop: Arc::default(), lost: Arc::default(), refresher: None };
        // Written first, checked second: of two racing lockers at least one sees the other.
        if let Some(conflict) = find_conflict(repo, kind, &own_name)? {
            return Err(RepoError::Locked(conflict)); // `lock` drops here and removes our file
        }
        Ok(lock.start_refreshing())
    }

    fn start_refreshing(mut self) -> RepoLock {
        let path = self.path.clone();
        let (stop, lost) = (self.stop.clone(), self.lost.clone());
        self.refresher = Some(std::thread::spawn(move || {
            let mut waited = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                waited += Duration::from_millis(200);
                if waited >= REFRESH_EVERY {
                    waited = Duration::ZERO;
                    match std::fs::File::options().write(true).open(&path) {
                        Ok(file) => {
                            let _ = file.set_modified(SystemTime::now());
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => lost.store(true, Ordering::Relaxed),
                        Err(_) => {}
                    }
                }
            }
        }));
        self
    }

    /// Fails if this lock was taken away (another process, perhaps on another machine, removed
    /// it as stale): what the lock protects may have changed meanwhile, so the holder must stop
    /// before it writes anything that relies on it (a snapshot record, a deletion).
    pub fn ensure_held(&self) -> Result<(), RepoError> {
        if self.lost.load(Ordering::Relaxed) || !self.path.exists() {
            self.lost.store(true, Ordering::Relaxed);
            return Err(RepoError::Locked(format!(
                "this command's lock {} was removed by another process (taken as stale); stopped before \
                 changing anything it protects: run the command again",
                self.path.display()
            )));
        }
        Ok(())
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.refresher.take() {
            let _ = handle.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn find_conflict(repo: &Repository, kind: LockKind, own_name: &str) -> Result<Option<String>, RepoError> {
    let this_host = hostname();
    for path in read_dir_sorted(&repo.path("locks"))? {
        if path.file_name().and_then(|n| n.to_str()) == Some(own_name) {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        }; // removed meanwhile
        let age =
            std::fs::metadata(&path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).unwrap_or_default();
        let Ok(other) = serde_json::from_slice::<LockRecord>(&bytes) else {
            if age > Duration::from_secs(60) {
                crate::tell!("phonebak: removing unreadable lock file {}", path.display());
                repo.remove_file(&path)?;
            }
            continue;
        };
        let dead = other.hostname == this_host && !process_alive(other.pid);
        if dead || age > STALE_AFTER {
            let why = if dead { "its process is gone" } else { "it has not been refreshed for 30 minutes" };
            crate::tell!(
                "phonebak: removing stale lock of `{}` (pid {} on {}, since {}): {why}",
                other.command,
                other.pid,
                other.hostname,
                other.time
            );
            repo.remove_file(&path)?;
            continue;
        }
        if kind == LockKind::Exclusive || other.kind == LockKind::Exclusive {
            return Ok(Some(format!(
                "`{}` (pid {} on {}) has held a{} lock since {}; try again when it has finished",
                other.command,
                other.pid,
                other.hostname,
                if other.kind == LockKind::Exclusive { "n exclusive" } else { " shared" },
                other.time
            )));
        }
    }
    Ok(None)
}
