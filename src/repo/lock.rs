//! Repository locks: backups share the repository, `prune` and `forget` need it alone. A lock is
//! a small object in `locks/` carrying its command, host, process and time, written again every
//! few minutes while held. One left by a dead process on this host, or not written again for
//! half an hour, is stale and is removed with a note. Ages are measured on the store's own
//! clock (a lock's modification time against that of the lock just written), so machines whose
//! clocks disagree do not take each other's live locks for stale ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::storage::{Storage, StorageError};
use super::{children, Id, RepoError, Repository};

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

/// The locks this process holds now (by name): a lock of this process that is not among them
/// was left behind by one it could not remove.
static HELD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// A lock record is a few hundred bytes: anything larger is not one.
const MAX_RECORD: u64 = 64 * 1024;

/// Held while alive; removed on drop.
pub struct RepoLock {
    storage: Arc<dyn Storage>,
    name: String,
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
    // 0 and numbers past i32 would ask about a process group or every process: no lock's.
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl RepoLock {
    /// The lock's object name (`locks/<id>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn acquire(repo: &Repository, kind: LockKind, command: &str) -> Result<RepoLock, RepoError> {
        let record = LockRecord {
            kind,
            hostname: hostname(),
            pid: std::process::id(),
            command: command.to_string(),
            time: chrono::Local::now().to_rfc3339(),
        };
        let name = format!("locks/{}", Id::random().to_hex());
        let bytes = serde_json::to_vec(&record).expect("lock serializes");
        repo.storage().write(&name, &bytes)?;
        let storage = repo.storage().clone();
        HELD.lock().expect("held locks").push(name.clone());
        let lock = RepoLock { storage, name, stop: Arc::default(), lost: Arc::default(), refresher: None };
        // Written first, checked second: of two racing lockers at least one sees the other.
        if let Some(conflict) = find_conflict(repo, kind, &lock.name)? {
            return Err(RepoError::Locked(conflict)); // `lock` drops here and removes our file
        }
        Ok(lock.start_refreshing(bytes))
    }

    /// Writes the lock again every `REFRESH_EVERY`, which renews its time on the store's clock;
    /// finding it gone, notes that it was lost.
    fn start_refreshing(mut self, bytes: Vec<u8>) -> RepoLock {
        let (storage, name) = (self.storage.clone(), self.name.clone());
        let (stop, lost) = (self.stop.clone(), self.lost.clone());
        self.refresher = Some(std::thread::spawn(move || {
            let mut waited = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                waited += Duration::from_millis(200);
                if waited >= REFRESH_EVERY {
                    waited = Duration::ZERO;
                    match storage.rewrite_existing(&name, &bytes) {
                        Ok(true) => {}
                        Ok(false) => lost.store(true, Ordering::Relaxed),
                        // A store that is down now may be up at the next refresh.
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
        let gone = match self.storage.size(&self.name) {
            Err(StorageError::NotFound(_)) => true,
            other => other.map(|_| false)?,
        };
        if self.lost.load(Ordering::Relaxed) || gone {
            self.lost.store(true, Ordering::Relaxed);
            return Err(RepoError::Locked(format!(
                "this command's lock {} was removed by another process (taken as stale); stopped before \
                 changing anything it protects: run the command again",
                super::in_repository(&*self.storage, &self.name)
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
        let _ = self.storage.delete(&self.name);
        HELD.lock().expect("held locks").retain(|n| *n != self.name);
    }
}

fn find_conflict(repo: &Repository, kind: LockKind, own_name: &str) -> Result<Option<String>, RepoError> {
    let this_host = hostname();
    let locks = children(&**repo.storage(), "locks")?;
    // "Now" on the store's clock: when our own lock was written, a moment ago.
    let now = locks.iter().find(|l| l.name == own_name).and_then(|l| l.modified).unwrap_or_else(SystemTime::now);
    for object in locks.iter().filter(|l| l.name != own_name) {
        let shown = repo.describe(&object.name);
        let bytes = match repo.storage().read(&object.name, MAX_RECORD) {
            // Released meanwhile; or something no lock can be (a folder, a FIFO, a huge file).
            Err(StorageError::NotFound(_) | StorageError::NotAFile { .. } | StorageError::TooLarge { .. }) => continue,
            other => other?,
        };
        let age = object.modified.and_then(|t| now.duration_since(t).ok()).unwrap_or_default();
        let Ok(other) = serde_json::from_slice::<LockRecord>(&bytes) else {
            // Locks are written whole: one that does not read is not being written, it is junk
            // (unless it is brand new, from a newer phonebak).
            if age > Duration::from_secs(60) {
                crate::tell!("phonebak: removing unreadable lock file {shown}");
                repo.remove(&object.name)?;
            }
            continue;
        };
        let ours = other.hostname == this_host
            && other.pid == std::process::id()
            && !HELD.lock().expect("held locks").contains(&object.name);
        let dead = other.hostname == this_host && !process_alive(other.pid);
        if ours || dead || age > STALE_AFTER {
            let why = if ours {
                "this process took it earlier and could not remove it (the store did not answer)"
            } else if dead {
                "its process is gone"
            } else {
                "it has not been refreshed for 30 minutes"
            };
            crate::tell!(
                "phonebak: removing stale lock of `{}` (pid {} on {}, taken at {} by its own account): {why}",
                other.command,
                other.pid,
                other.hostname,
                other.time
            );
            repo.remove(&object.name)?;
            continue;
        }
        if kind == LockKind::Exclusive || other.kind == LockKind::Exclusive {
            return Ok(Some(format!(
                "`{}` (pid {} on {}) holds a{} lock (taken at {} by its own account); try again when it has finished",
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
