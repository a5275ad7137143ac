//! A bounded local cache of what an object store is asked for again and again: index pages and
//! headers, folder listings, snapshot records. Entries are the stored bytes as they are (sealed
//! in an encrypted repository), under a private folder, each with its BLAKE3 hash in front: a
//! damaged or cut entry is noticed, removed and fetched again. Only objects that never change
//! once written are cached (packs and index files are named by content or at random, snapshot
//! records at random).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

const HASH_LEN: usize = 32;

pub struct DiskCache {
    dir: PathBuf,
    limit: u64,
    /// Bytes the entries take, counted at start and on each write (other processes sharing the
    /// folder are counted at the next start; each keeps the sum near the limit).
    used: Mutex<u64>,
}

impl DiskCache {
    /// A cache in `dir` (made private if missing) of at most about `limit` bytes; None where
    /// the folder cannot be made (the store is then asked every time).
    pub fn open(dir: &Path, limit: u64) -> Option<DiskCache> {
        // Absolute: the mount's daemon changes its working folder after this.
        let dir = &std::path::absolute(dir).ok()?;
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).ok()?;
        let used = entries(dir).iter().map(|(_, size, _)| size).sum();
        Some(DiskCache { dir: dir.to_path_buf(), limit, used: Mutex::new(used) })
    }

    fn path(&self, key: &str) -> PathBuf {
        let hash = blake3::hash(key.as_bytes()).to_hex();
        self.dir.join(&hash[..2]).join(&hash[2..])
    }

    /// The bytes kept under `key`, if they are there and intact.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let path = self.path(key);
        // A regular file of at most an entry's size: a FIFO put in its place would block, a
        // device never end.
        let file = crate::repo::fsutil::open_regular(&path).ok()?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, self.limit / 8 + HASH_LEN as u64 + 1), &mut bytes)
            .ok()?;
        if bytes.len() < HASH_LEN || blake3::hash(&bytes[HASH_LEN..]).as_bytes() != &bytes[..HASH_LEN] {
            let _ = fs::remove_file(&path);
            return None;
        }
        // Recently used entries are the last to go.
        let _ = fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        bytes.drain(..HASH_LEN);
        Some(bytes)
    }

    /// Keeps `bytes` under `key`; a full or read-only disk only means no caching.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        if bytes.len() as u64 > self.limit / 8 {
            return;
        }
        let path = self.path(key);
        let Some(folder) = path.parent() else { return };
        let tmp = folder.join(format!(".{}.tmp", crate::repo::Id::random().short()));
        let written = (|| {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(folder)?;
            let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            file.write_all(blake3::hash(bytes).as_bytes())?;
            file.write_all(bytes)?;
            fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
            return;
        }
        let mut used = self.used.lock().expect("cache size lock");
        *used += (bytes.len() + HASH_LEN) as u64;
        if *used > self.limit {
            *used = self.shrink();
        }
    }

    /// Removes the least recently used entries down to three quarters of the limit; returns
    /// the bytes left.
    fn shrink(&self) -> u64 {
        let mut all = entries(&self.dir);
        all.sort_by_key(|(_, _, used)| *used);
        let mut left: u64 = all.iter().map(|(_, size, _)| size).sum();
        for (path, size, _) in all {
            if left <= self.limit / 4 * 3 {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                left -= size;
            }
        }
        left
    }
}

/// Every entry of the cache in `dir`: its path, size and when it was last used.
fn entries(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut all = Vec::new();
    for sub in fs::read_dir(dir).into_iter().flatten().flatten() {
        for entry in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
            if let Ok(meta) = entry.metadata() {
                if meta.is_file() {
                    all.push((entry.path(), meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                }
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_back_intact_damage_is_dropped_and_the_size_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 80_000).unwrap();
        cache.put("index/a@0+5", b"hello");
        assert_eq!(cache.get("index/a@0+5").as_deref(), Some(&b"hello"[..]));
        assert_eq!(cache.get("index/b@0+5"), None);
        // A flipped byte on disk: not given back, and gone.
        let path = cache.path("index/a@0+5");
        let mut bytes = fs::read(&path).unwrap();
        bytes[HASH_LEN] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(cache.get("index/a@0+5"), None);
        assert!(!path.exists());
        for n in 0..100 {
            cache.put(&format!("k{n}"), &[n as u8; 5_000]);
        }
        let used: u64 = entries(dir.path()).iter().map(|(_, size, _)| size).sum();
        assert!(used <= 80_000, "{used}");
        assert_eq!(cache.get("k99").as_deref(), Some(&[99u8; 5_000][..]), "the newest stays");
    }
}
