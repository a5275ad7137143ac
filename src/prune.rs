//! `prune`: delete the data no snapshot needs. Packs with nothing used are deleted, packs mostly
//! unused are repacked, and the index is rewritten as one file. The order makes every crash
//! safe: new packs and the new index are durable before any old index or pack is deleted.

use std::collections::{HashMap, HashSet};

use crate::check::tree_problems;
use crate::progress::Progress;
use crate::repo::index::{write_index, BlobLocation};
use crate::repo::lock::{LockKind, RepoLock};
use crate::repo::pack::{read_footer, PackEntry};
use crate::repo::packer::Packer;
use crate::repo::snapshot::{self, Snapshot};
use crate::repo::{BlobId, PackId, RepoError, Repository, SnapshotId};
use crate::tree::{load_tree, Node};

/// Repack a pack when more than this share of its bytes is unused.
const REPACK_UNUSED_SHARE: f64 = 0.2;

#[derive(Debug, Default)]
pub struct PruneReport {
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub bytes_freed: i64,
    pub blobs_kept: u64,
    pub blobs_removed: u64,
}

pub fn run(repo: &Repository) -> Result<PruneReport, RepoError> {
    let lock = RepoLock::acquire(repo, LockKind::Exclusive, "prune")?;
    let (snapshots, damaged_records) = snapshot::load_all(repo)?;
    if !damaged_records.is_empty() {
        let named: Vec<String> = damaged_records.iter().map(|r| r.why.clone()).collect();
        return Err(RepoError::Corrupt(format!(
            "{} snapshot record(s) cannot be read, and pruning now could delete the data they need: {}. \
             `phonebak repair snapshots` moves them aside; then prune again. Nothing was pruned",
            damaged_records.len(),
            named.join("; ")
        )));
    }
    let (used, unreadable_trees) = used_blobs(repo, &snapshots)?;
    refuse_if_lost(repo, &snapshots, &unreadable_trees, "are folder listings that cannot be read")?;
    let on_disk: HashMap<PackId, u64> = repo.list_packs()?.into_iter().collect();
    // What each pack holds, from its own list (the index may be stale or wrong, and deleting a
    // pack on its word could lose the only copy); from the index only where that list cannot be
    // read, and then the pack is never deleted.
    let mut index_entries: HashMap<PackId, Vec<BlobLocation>> = HashMap::new();
    repo.index().for_each(|loc| index_entries.entry(loc.pack).or_default().push(loc))?;
    let mut unreadable: HashSet<PackId> = HashSet::new();
    let mut by_pack: HashMap<PackId, Vec<BlobLocation>> = HashMap::new();
    for pack in on_disk.keys() {
        let entries = match read_footer(repo, pack) {
            Ok(footer) => footer.into_iter().map(|e| e.located_in(pack)).collect(),
            Err(e) if e.is_corruption() => {
                unreadable.insert(*pack);
                index_entries.remove(pack).unwrap_or_default()
            }
            Err(e) => return Err(e),
        };
        by_pack.insert(*pack, entries);
    }
    let mut copies: HashMap<BlobId, Vec<BlobLocation>> = HashMap::new();
    for entries in by_pack.values_mut() {
        entries.sort_by_key(|e| (e.offset, e.id));
        entries.dedup_by_key(|e| (e.offset, e.id));
        for entry in entries.iter() {
            copies.entry(entry.id).or_default().push(entry.clone());
        }
    }
    // Copies in packs whose own list reads come first: a pack known only from the index is kept
    // whatever happens, and the copy chosen must not be one whose pack may be the next to go.
    for found in copies.values_mut() {
        found.sort_by_key(|c| (unreadable.contains(&c.pack), c.pack));
    }
    let lost: HashSet<BlobId> = used.iter().filter(|id| !copies.contains_key(id)).copied().collect();
    refuse_if_lost(repo, &snapshots, &lost, "are not stored in any pack")?;

    // Each used blob keeps one copy. Where there are several, the first that verifies: the one
    // kept must not be a damaged one while an intact one is deleted.
    let mut chosen: HashMap<BlobId, PackId> = HashMap::new();
    let mut no_good_copy = HashSet::new();
    for id in &used {
        let found = &copies[id];
        let pick = if found.len() == 1 { Some(&found[0]) } else { verified_copy(repo, found)?.map(|(_, c)| c) };
        match pick {
            Some(copy) => {
                chosen.insert(*id, copy.pack);
            }
            None => {
                no_good_copy.insert(*id);
            }
        }
    }
    refuse_if_lost(repo, &snapshots, &no_good_copy, "have no copy that is intact")?;
    let mut report = PruneReport::default();
    let mut keep_packs: HashSet<PackId> = HashSet::new();
    let mut drop_packs: Vec<PackId> = Vec::new();
    let mut to_repack: Vec<BlobLocation> = Vec::new();
    for (pack, entries) in &by_pack {
        let is_live = |e: &&BlobLocation| chosen.get(&e.id) == Some(pack);
        let live: Vec<&BlobLocation> = entries.iter().filter(is_live).collect();
        let total: u64 = entries.iter().map(|e| e.len as u64).sum();
        let live_bytes: u64 = live.iter().map(|e| e.len as u64).sum();
        report.blobs_kept += live.len() as u64;
        report.blobs_removed += (entries.len() - live.len()) as u64;
        if unreadable.contains(pack) {
            keep_packs.insert(*pack); // what it holds is not known for sure: never deleted
        } else if live.is_empty() {
            drop_packs.push(*pack);
        } else if (total - live_bytes) as f64 > total as f64 * REPACK_UNUSED_SHARE {
            to_repack.extend(live.into_iter().cloned());
            drop_packs.push(*pack);
            report.packs_repacked += 1;
        } else {
            keep_packs.insert(*pack);
        }
    }

    let progress = Progress::items("prune", to_repack.len() as u64);
    let mut packer = Packer::new(repo);
    let mut damaged = HashSet::new();
    for blob in &to_repack {
        // Never copy damage into a new pack: the first copy that verifies is the one kept.
        match verified_copy(repo, &copies[&blob.id])? {
            Some((stored, location)) => packer.add(blob.id, blob.kind, &stored, location.raw_len)?,
            None => {
                damaged.insert(blob.id);
            }
        }
        progress.add(1);
    }
    let packed = packer.finish()?;
    progress.finish();
    refuse_if_lost(repo, &snapshots, &damaged, "have no copy that is intact")?;

    // One index for everything that stays, then the old index files, then the old packs.
    let mut kept_entries: HashMap<PackId, Vec<PackEntry>> = HashMap::new();
    for pack in &keep_packs {
        // A used blob is indexed at the copy chosen above: the other may be the damaged one.
        let indexed = |l: &&BlobLocation| chosen.get(&l.id).is_none_or(|p| p == pack);
        let entries = by_pack[pack].iter().filter(indexed).map(|l| PackEntry {
            id: l.id,
            kind: l.kind,
            offset: l.offset,
            len: l.len,
            raw_len: l.raw_len,
        });
        kept_entries.insert(*pack, entries.collect());
    }
    // The new packs the repacked blobs went to: those on disk now that were not before.
    for (pack, _) in repo.list_packs()? {
        if !on_disk.contains_key(&pack) {
            kept_entries.insert(pack, read_footer(repo, &pack)?);
        }
    }
    lock.ensure_held()?;
    let new_index = write_index(repo, kept_entries.iter().map(|(p, e)| (p, e.as_slice())))?;
    // The old index files must be gone for good (synced) before the packs they name are: after
    // a power cut, an index naming deleted packs would be damage.
    repo.remove_index_files_but(&new_index)?;
    for pack in &drop_packs {
        lock.ensure_held()?;
        repo.remove(&crate::repo::pack_name(pack))?;
        report.packs_deleted += 1;
    }
    report.bytes_freed = drop_packs.iter().map(|p| on_disk[p] as i64).sum::<i64>() - packed.added_bytes as i64;
    remove_temp_files(repo)?;
    Ok(report)
}

/// The stored bytes of the first of `copies` that decodes and verifies.
/// A copy that could not be reached (a store that is down) stops the prune: it is no verdict
/// that the copy is damaged.
fn verified_copy<'a>(
    repo: &Repository,
    copies: &'a [BlobLocation],
) -> Result<Option<(Vec<u8>, &'a BlobLocation)>, RepoError> {
    for copy in copies {
        let stored = match repo.read_pack_range(&copy.pack, copy.offset as u64, copy.len as usize) {
            Ok(stored) => stored,
            Err(e) if e.is_corruption() => continue,
            Err(e) => return Err(e),
        };
        if repo.decode_blob(copy.kind, &copy.id, copy.raw_len, &mut stored.clone()).is_ok() {
            return Ok(Some((stored, copy)));
        }
    }
    Ok(None)
}

/// Stops the prune, before anything is deleted, when blobs some snapshot needs `why`: names the
/// snapshots and files they belong to.
fn refuse_if_lost(
    repo: &Repository,
    snapshots: &[(SnapshotId, Snapshot)],
    lost: &HashSet<BlobId>,
    why: &str,
) -> Result<(), RepoError> {
    if lost.is_empty() {
        return Ok(());
    }
    let named = tree_problems(repo, snapshots, &|id, _| !lost.contains(id), &HashSet::new())?;
    let mut shown: Vec<String> = named.iter().take(10).map(|p| p.line.clone()).collect();
    if named.len() > 10 {
        shown.push(format!("and {} more", named.len() - 10));
    }
    Err(RepoError::Corrupt(format!(
        "{} blob(s) that snapshots need {why}, so nothing was pruned (pruning could delete the last \
         trace of them): {}. See `phonebak check --read-data`",
        lost.len(),
        shown.join("; ")
    )))
}

/// Every tree and chunk some snapshot needs, and the trees that cannot be read: those stop the
/// prune, since what they reference is unknown and deleting it could lose data.
fn used_blobs(
    repo: &Repository,
    snapshots: &[(SnapshotId, Snapshot)],
) -> Result<(HashSet<BlobId>, HashSet<BlobId>), RepoError> {
    let mut used = HashSet::new();
    let mut unreadable = HashSet::new();
    let mut pending: Vec<BlobId> = snapshots.iter().flat_map(|(_, s)| s.trees()).collect();
    while let Some(tree_id) = pending.pop() {
        if !used.insert(tree_id) {
            continue;
        }
        let tree = match load_tree(repo, &tree_id) {
            Ok(tree) => tree,
            Err(e) if e.is_corruption() => {
                unreadable.insert(tree_id);
                continue;
            }
            Err(e) => return Err(e),
        };
        for entry in tree.entries {
            match entry.node {
                Node::Dir { tree } => pending.push(tree),
                Node::File { chunks, .. } => used.extend(chunks.iter().map(|c| c.id)),
                Node::Symlink { .. } => {}
            }
        }
    }
    Ok((used, unreadable))
}

fn remove_temp_files(repo: &Repository) -> Result<(), RepoError> {
    // Prune holds the repository alone: every temporary file is left by an interrupted run.
    for name in repo.list_temp_files()? {
        repo.remove(&name)?;
    }
    Ok(())
}
