//! Snapshot records: one small sealed file per backup, written last, so a snapshot either exists
//! whole or not at all. Also how users name snapshots (`latest`, `DEVICE/latest`,
//! `DEVICE/TIMESTAMP`, an id prefix).

use std::collections::{BTreeMap, HashMap};

use chrono::{Local, TimeZone};
use serde::{Deserialize, Serialize};

use super::storage::StorageError;
use super::{children, BlobId, Id, RepoError, Repository, SnapshotId};

const SNAPSHOT_AAD: &[u8] = b"phonebak snapshot";
/// How a snapshot's time is shown, and its folder name in the mount.
pub const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sum of the sizes of all files in the snapshot.
    pub bytes: u64,
    /// Bytes of file content this backup found new (before compression).
    pub new_bytes: u64,
    /// Bytes this backup added to the repository (packs, after compression and sealing).
    pub added_bytes: u64,
    pub unreadable: u64,
    pub duration_ms: u64,
    /// Files recorded by name, size and time only (`--metadata-only`), and their sizes' sum.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub device: String,
    /// Nanoseconds since the Unix epoch, UTC.
    pub time_ns: i64,
    pub hostname: String,
    pub tags: Vec<String>,
    pub source: String,
    pub parent: Option<SnapshotId>,
    pub root: BlobId,
    pub stats: SnapshotStats,
    /// What the source recorded of the device (an iPhone backup's Info.plist: model, iOS
    /// version, serial...). Left out of the record when there is nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
    /// A tree of what the snapshot keeps beside its folders (src/extras.rs): an imported
    /// archive's layout, the files recorded without content. Left out when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extras: Option<BlobId>,
    /// Set by `copy`: the repository and snapshot this one is a copy of. Left out otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<CopiedFrom>,
}

/// Where a copied snapshot came from: `copy` skips what it copied before, and learns from the
/// pair which blobs it needs not read again.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CopiedFrom {
    /// The source repository's id (its config's `repository_id`).
    pub repository: String,
    pub snapshot: SnapshotId,
}

impl Snapshot {
    /// The trees a snapshot needs: its folders' and its extras'.
    pub fn trees(&self) -> impl Iterator<Item = BlobId> {
        std::iter::once(self.root).chain(self.extras)
    }
}

/// A stored snapshot with its id and its name within its device (unique even when two backups
/// fall in the same second).
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    pub name: String,
    pub snapshot: Snapshot,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("no snapshot matches {0:?}")]
    NotFound(String),
    #[error("{0:?} matches more than one snapshot: give more of the id")]
    Ambiguous(String),
}

impl Snapshot {
    pub fn local_time(&self) -> chrono::DateTime<Local> {
        Local.timestamp_nanos(self.time_ns)
    }
}

/// A device name becomes a folder name in the mount: it must be one.
pub fn validate_device_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') || name.len() > 255 {
        return Err(format!(
            "{name:?} is not a usable device name (it becomes a folder name: no '/', not '.' or '..')"
        ));
    }
    Ok(())
}

pub fn save(repo: &Repository, snapshot: &Snapshot) -> Result<SnapshotId, RepoError> {
    let plain = serde_json::to_vec(snapshot).expect("snapshot serializes");
    let id = Id::random();
    repo.write_file_atomic(&format!("snapshots/{}", id.to_hex()), &repo.sealer().seal(&plain, SNAPSHOT_AAD))?;
    Ok(id)
}

/// Saves a copy of a snapshot under the id its original gives it, unless a record of that id
/// exists: of copies of one snapshot running at once (on several machines), one writes it.
/// Returns the id, and whether this call wrote it.
pub fn save_copy(
    repo: &Repository,
    snapshot: &Snapshot,
    original: &CopiedFrom,
) -> Result<(SnapshotId, bool), RepoError> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"phonebak copy\0");
    hasher.update(original.repository.as_bytes());
    hasher.update(b"\0");
    hasher.update(&original.snapshot.0);
    let id = Id(*hasher.finalize().as_bytes());
    let plain = serde_json::to_vec(snapshot).expect("snapshot serializes");
    let name = format!("snapshots/{}", id.to_hex());
    let written = repo.storage().write_new(&name, &repo.sealer().seal(&plain, SNAPSHOT_AAD))?;
    Ok((id, written))
}

/// Snapshot records are a few hundred bytes; a larger file is damage, not something to read.
const MAX_RECORD: u64 = 1 << 20;

pub fn load(repo: &Repository, id: &SnapshotId) -> Result<Snapshot, RepoError> {
    let damaged = |why: String| RepoError::Corrupt(format!("snapshot record {id}: {why}"));
    let sealed = match repo.storage().read(&format!("snapshots/{}", id.to_hex()), MAX_RECORD) {
        Err(StorageError::NotAFile { why, .. }) => return Err(damaged(why.into())),
        Err(StorageError::TooLarge { .. }) => return Err(damaged("larger than any snapshot record".into())),
        other => other?,
    };
    let plain = repo.sealer().open(&sealed, SNAPSHOT_AAD).map_err(|e| damaged(e.to_string()))?;
    parse_record(&plain).map_err(damaged)
}

/// Decodes and validates an opened snapshot record (JSON).
pub(crate) fn parse_record(plain: &[u8]) -> Result<Snapshot, String> {
    let snapshot: Snapshot = serde_json::from_slice(plain).map_err(|e| e.to_string())?;
    validate_device_name(&snapshot.device)?;
    Ok(snapshot)
}

/// A snapshot record that could not be read: skipped by every command, named by `check`, moved
/// aside by `repair snapshots`.
#[derive(Clone, Debug)]
pub struct DamagedRecord {
    pub id: SnapshotId,
    pub why: String,
    /// The bytes are there and wrong (as opposed to unreadable: permissions, I/O errors), so
    /// moving the record aside loses nothing.
    pub corrupt: bool,
}

/// Snapshot records that loaded, by id.
pub type Loaded = Vec<(SnapshotId, Snapshot)>;

/// Every snapshot record: the ones that load, and the ones that do not.
pub fn load_all(repo: &Repository) -> Result<(Loaded, Vec<DamagedRecord>), RepoError> {
    let (mut good, mut damaged) = (Vec::new(), Vec::new());
    for id in list_ids(repo)? {
        match load(repo, &id) {
            Ok(snapshot) => good.push((id, snapshot)),
            // Removed meanwhile (a forget): not damage.
            Err(RepoError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            // A store that is down says nothing about the record.
            Err(e @ RepoError::Storage(_)) => return Err(e),
            Err(e) => damaged.push(DamagedRecord { id, why: e.to_string(), corrupt: e.is_corruption() }),
        }
    }
    Ok((good, damaged))
}

pub fn remove(repo: &Repository, id: &SnapshotId) -> Result<(), RepoError> {
    repo.remove(&format!("snapshots/{}", id.to_hex()))?;
    Ok(repo.storage().sync_deletions("snapshots")?)
}

pub fn list_ids(repo: &Repository) -> Result<Vec<SnapshotId>, RepoError> {
    let objects = children(&**repo.storage(), "snapshots")?;
    Ok(objects.iter().filter_map(|o| o.name.strip_prefix("snapshots/").and_then(Id::from_hex)).collect())
}

/// The names of the snapshot records stored now (cheap: one listing).
pub fn list_names(repo: &Repository) -> Result<Vec<String>, RepoError> {
    Ok(children(&**repo.storage(), "snapshots")?.into_iter().map(|o| o.name).collect())
}

/// As `list`, reading only the records that `known` does not hold (records never change).
pub fn list_reusing(repo: &Repository, known: &[SnapshotInfo]) -> Result<Vec<SnapshotInfo>, RepoError> {
    let known: HashMap<SnapshotId, &Snapshot> = known.iter().map(|i| (i.id, &i.snapshot)).collect();
    let mut good = Vec::new();
    for id in list_ids(repo)? {
        match known.get(&id) {
            Some(snapshot) => good.push((id, (*snapshot).clone())),
            None => match load(repo, &id) {
                Ok(snapshot) => good.push((id, snapshot)),
                Err(RepoError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => repo.warnings().warn(&format!("{e}: skipped (`phonebak repair snapshots` moves it aside)")),
            },
        }
    }
    Ok(name_snapshots(good))
}

/// Every snapshot that can be read, oldest first. A damaged record is skipped, and said (once)
/// through the repository's warnings: one damaged file must not lock every snapshot away.
pub fn list(repo: &Repository) -> Result<Vec<SnapshotInfo>, RepoError> {
    let (good, damaged) = load_all(repo)?;
    for record in damaged {
        repo.warnings().warn(&format!("{}: skipped (`phonebak repair snapshots` moves it aside)", record.why));
    }
    Ok(name_snapshots(good))
}

/// Orders snapshots by time and gives each its display name; a second snapshot of a device in
/// the same second gets a `.2` suffix, and so on.
pub fn name_snapshots(mut loaded: Vec<(SnapshotId, Snapshot)>) -> Vec<SnapshotInfo> {
    loaded.sort_by_key(|(id, s)| (s.time_ns, *id));
    let mut seen: HashMap<(String, String), u32> = HashMap::new();
    loaded
        .into_iter()
        .map(|(id, snapshot)| {
            let base = snapshot.local_time().format(TIME_FORMAT).to_string();
            let count = seen.entry((snapshot.device.clone(), base.clone())).or_insert(0);
            *count += 1;
            let name = if *count == 1 { base } else { format!("{base}.{count}") };
            SnapshotInfo { id, name, snapshot }
        })
        .collect()
}

/// Resolves what a user typed to one snapshot.
pub fn select<'a>(snapshots: &'a [SnapshotInfo], spec: &str) -> Result<&'a SnapshotInfo, SelectError> {
    let not_found = || SelectError::NotFound(spec.to_string());
    if spec == "latest" {
        return snapshots.last().ok_or_else(not_found);
    }
    if let Some((device, when)) = spec.split_once('/') {
        let mut of_device = snapshots.iter().filter(|s| s.snapshot.device == device);
        return if when == "latest" { of_device.next_back() } else { of_device.rfind(|s| s.name == when) }
            .ok_or_else(not_found);
    }
    let prefix = spec.to_ascii_lowercase();
    if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let mut matches = snapshots.iter().filter(|s| s.id.to_hex().starts_with(&prefix));
    match (matches.next(), matches.next()) {
        (Some(one), None) => Ok(one),
        (Some(_), Some(_)) => Err(SelectError::Ambiguous(spec.to_string())),
        _ => Err(not_found()),
    }
}

/// Resolves `SNAPSHOT[:PATH]`. Snapshot names contain `:` themselves
/// (`pixel/2026-11-21T08:00:00`), so the longest prefix that names a snapshot wins.
pub fn select_with_path<'a, 's>(
    snapshots: &'a [SnapshotInfo],
    spec: &'s str,
) -> Result<(&'a SnapshotInfo, &'s str), SelectError> {
    let first_error = match select(snapshots, spec) {
        Ok(info) => return Ok((info, "")),
        Err(e) => e,
    };
    for (at, _) in spec.rmatch_indices(':') {
        if let Ok(info) = select(snapshots, &spec[..at]) {
            return Ok((info, &spec[at + 1..]));
        }
    }
    match spec.split_once(':') {
        Some((head, _)) => select(snapshots, head).map(|info| (info, "")).map_err(|_| first_error),
        None => Err(first_error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(device: &str, time_s: i64) -> Snapshot {
        Snapshot {
            device: device.into(),
            time_ns: time_s * 1_000_000_000,
            hostname: "h".into(),
            tags: vec![],
            source: "s".into(),
            parent: None,
            root: Id([0; 32]),
            stats: SnapshotStats::default(),
            facts: Default::default(),
            extras: None,
            copied_from: None,
        }
    }

    #[test]
    fn names_are_unique_and_selection_works() {
        let a = Id([0xaa; 32]);
        let b = Id([0xab; 32]);
        let c = Id([0xcc; 32]);
        let list = name_snapshots(vec![(c, snap("tab", 50)), (a, snap("pixel", 100)), (b, snap("pixel", 100))]);
        assert_eq!(list[1].name, list[2].name.trim_end_matches(".2"));
        assert!(list[2].name.ends_with(".2"));
        assert_eq!(select(&list, "latest").unwrap().id, b);
        assert_eq!(select(&list, "tab/latest").unwrap().id, c);
        assert_eq!(select(&list, &format!("pixel/{}", list[1].name)).unwrap().id, a);
        assert_eq!(select(&list, "cccc").unwrap().id, c);
        assert!(select(&list, "aaaa").is_ok());
        let name = format!("pixel/{}", list[1].name);
        assert_eq!(select_with_path(&list, &name).unwrap(), (&list[1], ""));
        let with_path = format!("{name}:DCIM/a:b");
        let (found, path) = select_with_path(&list, &with_path).unwrap();
        assert_eq!((found.id, path), (a, "DCIM/a:b"));
        assert_eq!(select_with_path(&list, "latest:x").unwrap().1, "x");
        assert!(select_with_path(&list, "nope:x").is_err());
        assert!(matches!(select(&list, "aa"), Err(SelectError::NotFound(_))));
        assert!(matches!(select(&list, "nope/latest"), Err(SelectError::NotFound(_))));
        let ambiguous = name_snapshots(vec![(Id([0xab; 32]), snap("x", 1)), (Id([0xab; 32]), snap("x", 2))]);
        assert!(matches!(select(&ambiguous, "abab"), Err(SelectError::Ambiguous(_))));
    }

    #[test]
    fn device_names_must_be_folder_names() {
        assert!(validate_device_name("pixel-7").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(validate_device_name(bad).is_err(), "{bad:?}");
        }
    }
}
