//! `prune`: delete the data no snapshot needs. Packs with nothing used are deleted, packs mostly
//! unused are repacked, and the index is rewritten as one file. The order makes every crash
//! safe: new packs and the new index are durable before any old index or pack is deleted.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::progress::Progress;
use crate::repo::index::{write_index, BlobLocation, Index};
use crate::repo::lock::{LockKind, RepoLock};
use crate::repo::pack::PackEntry;
use crate::repo::packer::Packer;
use crate::repo::snapshot;
use crate::repo::{BlobId, PackId, RepoError, Repository};
use crate::tree::{load_tree, Node};

/// Repack a pack when more than this share of its bytes is unused.
const REPACK_UNUSED_SHARE: f64 = 0.2;
const TEMP_FILE_MIN_AGE: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
pub struct PruneReport {
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub bytes_freed: i64,
    pub blobs_kept: u64,
    pub blobs_removed: u64,
}

pub fn run(repo: &Repository) -> Result<PruneReport, RepoError> {
    let _lock = RepoLock::acquire(repo, LockKind::Exclusive, "prune")?;
    let used = used_blobs(repo)?;
    let mut by_pack: HashMap<PackId, Vec<BlobLocation>> = HashMap::new();
    let mut chosen: HashMap<BlobId, PackId> = HashMap::new();
    repo.index().for_each(|loc| {
        chosen.entry(loc.id).or_insert(loc.pack);
        by_pack.entry(loc.pack).or_default().push(loc);
    })?;
    let on_disk: HashMap<PackId, u64> = repo.list_packs()?.into_iter().collect();
    let missing: Vec<String> = used.iter().filter(|id| !chosen.contains_key(id)).map(|id| id.short()).take(5).collect();
    if !missing.is_empty() {
        return Err(RepoError::Corrupt(format!(
            "snapshots need blobs that are not stored ({}...): run `phonebak check`; nothing was pruned",
            missing.join(", ")
        )));
    }

    let mut report = PruneReport::default();
    let mut keep_packs: HashSet<PackId> = HashSet::new();
    let mut drop_packs: Vec<PackId> = on_disk.keys().filter(|p| !by_pack.contains_key(p)).copied().collect();
    let mut to_repack: Vec<BlobLocation> = Vec::new();
    for (pack, entries) in &by_pack {
        let is_live = |e: &&BlobLocation| used.contains(&e.id) && chosen.get(&e.id) == Some(pack);
        let live: Vec<&BlobLocation> = entries.iter().filter(is_live).collect();
        let total: u64 = entries.iter().map(|e| e.len as u64).sum();
        let live_bytes: u64 = live.iter().map(|e| e.len as u64).sum();
        report.blobs_kept += live.len() as u64;
        report.blobs_removed += (entries.len() - live.len()) as u64;
        if !on_disk.contains_key(pack) {
            continue; // missing pack: `check` reports it; its entries disappear with the old index
        }
        if live.is_empty() {
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
    for blob in &to_repack {
        let stored = repo.read_pack_range(&blob.pack, blob.offset as u64, blob.len as usize)?;
        // Never copy damage into a new pack.
        repo.decode_blob(blob.kind, &blob.id, blob.raw_len, &mut stored.clone())?;
        packer.add(blob.id, blob.kind, &stored, blob.raw_len)?;
        progress.add(1);
    }
    let packed = packer.finish()?;
    progress.finish();

    // One index for everything that stays, then the old index files, then the old packs.
    let old_indexes = repo.index().file_ids();
    let fresh = Index::open(repo)?;
    let mut kept_entries: HashMap<PackId, Vec<PackEntry>> = HashMap::new();
    fresh.for_each(|loc| {
        let from_repack = !by_pack.contains_key(&loc.pack);
        if keep_packs.contains(&loc.pack) || from_repack {
            let entry =
                PackEntry { id: loc.id, kind: loc.kind, offset: loc.offset, len: loc.len, raw_len: loc.raw_len };
            kept_entries.entry(loc.pack).or_default().push(entry);
        }
    })?;
    let new_index = write_index(repo, kept_entries.iter().map(|(p, e)| (p, e.as_slice())))?;
    for id in fresh.file_ids().into_iter().chain(old_indexes) {
        if id != new_index {
            repo.remove_file(&repo.path(&format!("index/{}", id.to_hex())))?;
        }
    }
    for pack in &drop_packs {
        repo.remove_file(&repo.pack_path(pack))?;
        report.packs_deleted += 1;
    }
    report.bytes_freed = drop_packs.iter().map(|p| on_disk[p] as i64).sum::<i64>() - packed.added_bytes as i64;
    remove_old_temp_files(repo)?;
    Ok(report)
}

/// Every tree and chunk some snapshot needs. A tree that cannot be read stops the prune: what
/// it references is unknown, and deleting it could lose data.
fn used_blobs(repo: &Repository) -> Result<HashSet<BlobId>, RepoError> {
    let mut used = HashSet::new();
    let mut pending: Vec<BlobId> = snapshot::list(repo)?.iter().map(|s| s.snapshot.root).collect();
    while let Some(tree_id) = pending.pop() {
        if !used.insert(tree_id) {
            continue;
        }
        for entry in load_tree(repo, &tree_id)?.entries {
            match entry.node {
                Node::Dir { tree } => pending.push(tree),
                Node::File { chunks, .. } => used.extend(chunks.iter().map(|c| c.id)),
                Node::Symlink { .. } => {}
            }
        }
    }
    Ok(used)
}

fn remove_old_temp_files(repo: &Repository) -> Result<(), RepoError> {
    for path in repo.list_temp_files()? {
        let old = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > TEMP_FILE_MIN_AGE);
        if old {
            repo.remove_file(&path)?;
        }
    }
    Ok(())
}
