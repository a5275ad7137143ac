//! `repair`: put a damaged repository back in order without losing anything that can be saved.
//! Nothing is deleted that holds data: damaged packs and snapshot records are moved aside into
//! `damaged/` (see docs/FORMAT.md), where they stay until the user removes them.
//!
//! - `index`: one new index from the packs' own lists (footers), replacing every index file.
//! - `packs`: reads every pack; the intact blobs of damaged packs are copied to new packs, the
//!   damaged packs moved aside, and the index rebuilt, so that damaged blobs are no longer known
//!   and the next backup of a phone that still has them stores them again.
//! - `snapshots`: damaged snapshot records are moved aside; snapshots that need blobs no pack
//!   holds are rewritten without the files (and folders) that are lost, tagged `repaired`, and
//!   the original record moved aside.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::check::{verify_pack, EXTRAS_SHOWN};
use crate::progress::Progress;
use crate::repo::index::{write_index, BlobLocation};
use crate::repo::lock::{LockKind, RepoLock};
use crate::repo::pack::{read_footer, PackEntry};
use crate::repo::packer::Packer;
use crate::repo::snapshot::{self, Snapshot};
use crate::repo::{BlobId, BlobKind, PackId, RepoError, Repository, SnapshotId};
use crate::tree::{load_tree, Entry, Node, Tree};

pub use crate::repo::DAMAGED_DIR;
/// The tag a rewritten snapshot carries.
pub const REPAIRED_TAG: &str = "repaired";

#[derive(Debug, Default)]
pub struct IndexRepair {
    pub packs_read: u64,
    pub blobs_indexed: u64,
    pub index_files_replaced: u64,
    /// Packs whose own list cannot be read, with why: left in place (`repair packs`).
    pub unreadable_packs: Vec<String>,
}

#[derive(Debug, Default)]
pub struct PackRepair {
    pub packs_checked: u64,
    /// Damaged packs moved aside, each with what was wrong.
    pub moved_aside: Vec<String>,
    pub blobs_salvaged: u64,
    pub blobs_lost: u64,
    pub index: IndexRepair,
}

#[derive(Debug, Default)]
pub struct SnapshotRepair {
    /// Damaged records moved aside, each with why.
    pub records_moved_aside: Vec<String>,
    /// Snapshots rewritten: (old short id, new short id, device, lost paths).
    pub rewritten: Vec<(String, String, String, Vec<String>)>,
    /// Snapshots whose whole root folder is lost: their records are moved aside.
    pub unrecoverable: Vec<String>,
    /// Records that cannot be read but are not shown damaged (permissions, I/O errors): left.
    pub left_unreadable: Vec<String>,
}

pub fn index(repo: &Repository) -> Result<IndexRepair, RepoError> {
    let lock = RepoLock::acquire(repo, LockKind::Exclusive, "repair index")?;
    rebuild_index(repo, &lock, &HashSet::new())
}

/// Writes one index of every pack except `leave_out`, then removes every other index file: the
/// index then says what the packs say. A pack whose own list cannot be read keeps the entries
/// the old index has for it: they are the only way left to the intact blobs in it (`repair
/// packs` copies those out).
fn rebuild_index(repo: &Repository, lock: &RepoLock, leave_out: &HashSet<PackId>) -> Result<IndexRepair, RepoError> {
    let mut report = IndexRepair::default();
    let mut covered: Vec<(PackId, Vec<PackEntry>)> = Vec::new();
    let mut indexed: HashMap<PackId, Vec<PackEntry>> = HashMap::new();
    repo.index().for_each(|l| {
        let entry = PackEntry { id: l.id, kind: l.kind, offset: l.offset, len: l.len, raw_len: l.raw_len };
        indexed.entry(l.pack).or_default().push(entry);
    })?;
    let packs = repo.list_packs()?;
    let progress = Progress::items("repair index", packs.len() as u64);
    for (pack, _) in packs {
        progress.add(1);
        if leave_out.contains(&pack) {
            continue;
        }
        match read_footer(repo, &pack) {
            Ok(entries) => {
                report.packs_read += 1;
                report.blobs_indexed += entries.len() as u64;
                covered.push((pack, entries));
            }
            Err(e) => {
                report.unreadable_packs.push(e.to_string());
                if let Some(mut entries) = indexed.remove(&pack) {
                    entries.sort_by_key(|e| (e.offset, e.id));
                    entries.dedup_by_key(|e| (e.offset, e.id));
                    report.blobs_indexed += entries.len() as u64;
                    covered.push((pack, entries));
                }
            }
        }
    }
    progress.finish();
    lock.ensure_held()?;
    let new = write_index(repo, covered.iter().map(|(p, e)| (p, e.as_slice())))?;
    report.index_files_replaced = repo.remove_index_files_but(&new)?;
    Ok(report)
}

pub fn packs(repo: &Repository) -> Result<PackRepair, RepoError> {
    let lock = RepoLock::acquire(repo, LockKind::Exclusive, "repair packs")?;
    let mut report = PackRepair::default();
    let on_disk: HashMap<PackId, u64> = repo.list_packs()?.into_iter().collect();
    let mut by_pack: HashMap<PackId, Vec<BlobLocation>> = HashMap::new();
    repo.index().for_each(|loc| by_pack.entry(loc.pack).or_default().push(loc))?;
    let unreadable: HashSet<PackId> = repo.index().unreadable_packs().into_iter().map(|(p, _)| p).collect();

    let progress = Progress::items("repair packs", on_disk.len() as u64);
    let mut damaged: Vec<(PackId, String, Vec<BlobLocation>)> = Vec::new();
    let (mut intact_somewhere, mut damaged_somewhere) = (HashSet::new(), HashSet::new());
    for pack in on_disk.keys() {
        progress.add(1);
        report.packs_checked += 1;
        // The pack's own list is the truth; the index's entries serve when it cannot be read.
        let footer = match read_footer(repo, pack) {
            Ok(footer) => Some(footer).filter(|_| !unreadable.contains(pack)),
            Err(e) if e.is_corruption() => None,
            // Not reached (a store that is down): no verdict, nothing is set aside.
            Err(e) => return Err(e),
        };
        let footer_ok = footer.is_some();
        let mut entries = match footer {
            Some(footer) => footer.into_iter().map(|e| e.located_in(pack)).collect(),
            None => by_pack.remove(pack).unwrap_or_default(),
        };
        entries.sort_by_key(|e| (e.offset, e.id));
        entries.dedup_by_key(|e| (e.offset, e.id));
        let (bad, error) = verify_pack(repo, pack, &entries)?;
        intact_somewhere.extend(entries.iter().map(|e| e.id).filter(|id| !bad.contains(id)));
        damaged_somewhere.extend(bad.iter().copied());
        match error {
            Some(why) => damaged.push((*pack, why, entries.into_iter().filter(|e| !bad.contains(&e.id)).collect())),
            None if !footer_ok => damaged.push((*pack, format!("pack {pack}: its own list is damaged"), entries)),
            None => {}
        }
    }
    progress.finish();

    // Intact blobs of damaged packs go to new packs first; they are indexed when it finishes.
    let mut packer = Packer::new(repo);
    let mut salvaged: HashSet<BlobId> = HashSet::new();
    for (pack, _, intact) in &damaged {
        for blob in intact {
            if !salvaged.insert(blob.id) {
                continue;
            }
            let stored = repo.read_pack_range(pack, blob.offset as u64, blob.len as usize)?;
            packer.add(blob.id, blob.kind, &stored, blob.raw_len)?;
            report.blobs_salvaged += 1;
        }
    }
    packer.finish()?;
    let leave_out: HashSet<PackId> = damaged.iter().map(|(p, _, _)| *p).collect();
    report.index = rebuild_index(repo, &lock, &leave_out)?;
    // Lost: damaged here, and with no intact copy in any pack.
    report.blobs_lost = damaged_somewhere.difference(&intact_somewhere).count() as u64;
    for (pack, why, _) in damaged {
        lock.ensure_held()?;
        repo.move_aside(&crate::repo::pack_name(&pack), "data")?;
        report.moved_aside.push(why);
    }
    Ok(report)
}

pub fn snapshots(repo: &Repository) -> Result<SnapshotRepair, RepoError> {
    let lock = RepoLock::acquire(repo, LockKind::Exclusive, "repair snapshots")?;
    let mut report = SnapshotRepair::default();
    let (snapshots, damaged) = snapshot::load_all(repo)?;
    for record in damaged {
        if !record.corrupt {
            // Unreadable for now (permissions, a failing disk): moving it aside would let a
            // prune delete what it needs.
            report.left_unreadable.push(record.why);
            continue;
        }
        lock.ensure_held()?;
        repo.move_aside(&format!("snapshots/{}", record.id.to_hex()), "snapshots")?;
        report.records_moved_aside.push(record.why);
    }
    let on_disk: HashSet<PackId> = repo.list_packs()?.into_iter().map(|(p, _)| p).collect();
    let mut present: HashSet<BlobId> = HashSet::new();
    repo.index().for_each(|loc| {
        if on_disk.contains(&loc.pack) {
            present.insert(loc.id);
        }
    })?;

    let mut packer = Packer::new(repo);
    let mut rewriter =
        Rewriter { repo, present: &present, packer: &mut packer, memo: HashMap::new(), written: HashSet::new() };
    // Per snapshot to rewrite: its new folders' tree (none: lost), its new extras, what is lost.
    type Plan = (SnapshotId, Snapshot, Option<BlobId>, Option<BlobId>, Vec<String>);
    let mut plans: Vec<Plan> = Vec::new();
    for (id, snapshot) in snapshots {
        let mut lost = Vec::new();
        let root = rewriter.rewrite(&snapshot.root, Path::new(""), 0, &mut lost)?;
        // What is lost beside the folders (an archive's layout, the omitted list) goes; the
        // folders stay whole.
        let extras = match &snapshot.extras {
            Some(extras) => rewriter.rewrite(extras, Path::new(EXTRAS_SHOWN), 0, &mut lost)?,
            None => None,
        };
        if root == Some(snapshot.root) && extras == snapshot.extras {
            continue;
        }
        plans.push((id, snapshot, root, extras, lost));
    }
    packer.finish()?;
    for (id, snapshot, root, extras, lost) in plans {
        lock.ensure_held()?;
        let old = format!("snapshots/{}", id.to_hex());
        match root {
            Some(root) => {
                let mut repaired = Snapshot { root, extras, ..snapshot.clone() };
                if !repaired.tags.iter().any(|t| t == REPAIRED_TAG) {
                    repaired.tags.push(REPAIRED_TAG.into());
                }
                // The new record is durable before the old one moves: a crash leaves both.
                let new_id = snapshot::save(repo, &repaired)?;
                repo.move_aside(&old, "snapshots")?;
                report.rewritten.push((id.short(), new_id.short(), snapshot.device.clone(), lost));
            }
            None => {
                repo.move_aside(&old, "snapshots")?;
                report.unrecoverable.push(format!("{} ({})", id.short(), snapshot.device));
            }
        }
    }
    Ok(report)
}

/// Rewrites trees without what is lost, each distinct tree once.
struct Rewriter<'a, 'p> {
    repo: &'a Repository,
    present: &'a HashSet<BlobId>,
    packer: &'a mut Packer<'p>,
    /// Tree id -> its rewritten id (None: the tree itself is lost), the lost paths below it, and
    /// the levels of folders the rewritten tree holds: it holds wherever those levels stay
    /// within `MAX_DEPTH` (a rewrite that stopped for depth holds at one depth only: not kept).
    memo: HashMap<BlobId, (Option<BlobId>, Vec<String>, usize)>,
    written: HashSet<BlobId>,
}

impl Rewriter<'_, '_> {
    fn rewrite(
        &mut self,
        tree_id: &BlobId,
        at: &Path,
        depth: usize,
        lost: &mut Vec<String>,
    ) -> Result<Option<BlobId>, RepoError> {
        Ok(self.rewrite_with_height(tree_id, at, depth, lost)?.0)
    }

    /// The rewritten tree, and its height (`None`: it was cut for depth below).
    fn rewrite_with_height(
        &mut self,
        tree_id: &BlobId,
        at: &Path,
        depth: usize,
        lost: &mut Vec<String>,
    ) -> Result<(Option<BlobId>, Option<usize>), RepoError> {
        if depth > crate::tree::MAX_DEPTH {
            return Ok((None, None)); // damage: the folder is dropped from the rewritten snapshot
        }
        if let Some((new, below, height)) =
            self.memo.get(tree_id).filter(|(_, _, height)| depth + height <= crate::tree::MAX_DEPTH)
        {
            lost.extend(below.iter().map(|p| at.join(p).display().to_string()));
            return Ok((*new, Some(*height)));
        }
        let mut below = Vec::new();
        let (new, height) = self.rewrite_uncached(tree_id, depth, &mut below)?;
        lost.extend(below.iter().map(|p| at.join(p).display().to_string()));
        if let Some(height) = height {
            self.memo.insert(*tree_id, (new, below, height));
        }
        Ok((new, height))
    }

    fn rewrite_uncached(
        &mut self,
        tree_id: &BlobId,
        depth: usize,
        lost: &mut Vec<String>,
    ) -> Result<(Option<BlobId>, Option<usize>), RepoError> {
        if !self.present.contains(tree_id) {
            return Ok((None, Some(0)));
        }
        let tree = match load_tree(self.repo, tree_id) {
            Ok(tree) => tree,
            Err(e) if e.is_corruption() => return Ok((None, Some(0))),
            Err(e) => return Err(e),
        };
        let mut kept = Tree::default();
        let mut height = Some(0);
        for entry in tree.entries {
            let name = PathBuf::from(entry.name_os());
            match &entry.node {
                Node::Dir { tree } => {
                    let (new, below) = self.rewrite_with_height(tree, &name, depth + 1, lost)?;
                    height = height.zip(below).map(|(h, b)| h.max(b + 1));
                    match new {
                        Some(new) => kept.entries.push(Entry { node: Node::Dir { tree: new }, ..entry }),
                        None => lost.push(format!("{}/", name.display())),
                    }
                }
                Node::File { chunks, .. } if chunks.iter().any(|c| !self.present.contains(&c.id)) => {
                    lost.push(name.display().to_string());
                }
                _ => kept.entries.push(entry),
            }
        }
        let plain = kept.encode();
        let id = self.repo.blob_id(&plain);
        if id != *tree_id && !self.present.contains(&id) && self.written.insert(id) {
            let stored = self.repo.encode_blob(BlobKind::Tree, &id, &plain);
            self.packer.add(id, BlobKind::Tree, &stored, plain.len() as u32)?;
        }
        Ok((Some(id), height))
    }
}
