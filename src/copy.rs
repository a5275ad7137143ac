//! `copy`: snapshots from one repository into another (a folder and an object store, with
//! different passwords), storing only the data the destination does not have, so that a user
//! can keep a local repository for speed and a remote one for the lake (the 3-2-1 rule).
//!
//! Repositories made apart name blobs with different keys (and cut files at different
//! places): a blob a copied snapshot needs is read from the source, verified, named with the
//! destination's key and stored there unless it is already. Folder listings are written anew
//! with the new names; a listing shared by several snapshots is translated once. What an
//! earlier copy of the same device already carried over is learnt from the two copies of that
//! snapshot, side by side, without reading any file: a nightly copy reads only what is new.

use std::collections::{HashMap, HashSet};

use crate::repo::lock::{LockKind, RepoLock};
use crate::repo::packer::Packer;
use crate::repo::snapshot::{self, CopiedFrom, Snapshot, SnapshotInfo};
use crate::repo::{BlobId, BlobKind, RepoError, Repository, SnapshotId};
use crate::tree::{load_tree, too_deep, ChunkRef, Entry, Node, Tree, MAX_DEPTH};

#[derive(Debug, Default)]
pub struct CopyReport {
    /// (source snapshot, new snapshot in the destination, device/name).
    pub copied: Vec<(SnapshotId, SnapshotId, String)>,
    /// Snapshots the destination already had (copied there before, or copied from there).
    pub already_there: Vec<String>,
    pub blobs_stored: u64,
    pub bytes_stored: u64,
    pub blobs_already_there: u64,
    /// File chunks read from the source (those the destination could not be known to have).
    pub blobs_read: u64,
}

/// Which backup a snapshot is, wherever it was copied: the snapshot it is a copy of (a copy of
/// a copy names the first), or itself.
fn original(repo: &Repository, id: &SnapshotId, snapshot: &Snapshot) -> CopiedFrom {
    snapshot
        .copied_from
        .clone()
        .unwrap_or_else(|| CopiedFrom { repository: repo.config().repository_id.clone(), snapshot: *id })
}

/// The snapshot of `to` that is the same backup as `info` (of `from`): a copy of it, the one it
/// is a copy of, or another copy of the same one (a round trip through other repositories).
fn twin_in<'s>(
    from: &Repository,
    to: &Repository,
    info: &SnapshotInfo,
    existing: &'s [(SnapshotId, Snapshot)],
) -> Option<&'s Snapshot> {
    let wanted = original(from, &info.id, &info.snapshot);
    existing.iter().find(|(id, s)| original(to, id, s) == wanted).map(|(_, s)| s)
}

/// Copies `chosen` (snapshots of `from`) into `to`. Each snapshot's record is written last,
/// after everything it needs is stored and indexed: an interrupted copy leaves data a rerun
/// reuses, and no snapshot that lacks any of it.
pub fn run(from: &Repository, to: &Repository, chosen: &[SnapshotInfo]) -> Result<CopyReport, RepoError> {
    let reading = RepoLock::acquire(from, LockKind::Shared, "copy (reading)")?;
    let writing = RepoLock::acquire(to, LockKind::Shared, "copy")?;
    // The same repository under two addresses (a host name and its IP, a link to a folder):
    // the lock just taken through one is seen through the other.
    if crate::repo::children(&**to.storage(), "locks")?.iter().any(|l| l.name == reading.name()) {
        return Err(RepoError::SameRepository(to.location()));
    }
    let existing = snapshot::load_all(to)?.0;
    let all_sources = snapshot::list(from)?;
    let mut report = CopyReport::default();
    let mut translator = Translator {
        from,
        to,
        same_names: from.blob_id(b"phonebak copy probe") == to.blob_id(b"phonebak copy probe"),
        known: to.index().known_blobs()?,
        trees: HashMap::new(),
        blobs: HashMap::new(),
        compared: HashSet::new(),
        packer: Packer::new(to),
        report: &mut report,
    };
    // The latest snapshot of each device already in both: what it shares with the ones to copy
    // needs no reading.
    let mut learnt: HashSet<String> = HashSet::new();
    for info in chosen.iter().filter(|i| twin_in(from, to, i, &existing).is_none()) {
        if !learnt.insert(info.snapshot.device.clone()) {
            continue;
        }
        let mut copied_before = all_sources.iter().rev().filter(|s| s.snapshot.device == info.snapshot.device);
        let pair = copied_before.find_map(|s| Some((s, twin_in(from, to, s, &existing)?)));
        if let Some((source, copy)) = pair {
            translator.learn(&source.snapshot.root, &copy.root, 0)?;
        }
    }
    let mut records = Vec::new();
    for info in chosen {
        let shown = format!("{}/{}", info.snapshot.device, info.name);
        if twin_in(from, to, info, &existing).is_some() {
            translator.report.already_there.push(shown);
            continue;
        }
        let root = translator.tree(&info.snapshot.root, 0)?;
        let extras = match &info.snapshot.extras {
            Some(extras) => Some(translator.tree(extras, 0)?),
            None => None,
        };
        let copied_from = Some(original(from, &info.id, &info.snapshot));
        let copy = Snapshot { root, extras, parent: None, copied_from, ..info.snapshot.clone() };
        records.push((info.id, copy, shown));
    }
    let Translator { packer, .. } = translator;
    packer.finish()?;
    for (source_id, copy, shown) in records {
        writing.ensure_held()?;
        // Another copy of the same snapshots that ran meanwhile (on another machine) wrote the
        // record under the same name: this one is then not written.
        let original = copy.copied_from.clone().expect("set above");
        let (id, written) = snapshot::save_copy(to, &copy, &original)?;
        if !written {
            report.already_there.push(shown);
            continue;
        }
        if let Err(lost) = writing.ensure_held() {
            // As in a backup: a prune that took the lock may have deleted what it needs.
            snapshot::remove(to, &id)?;
            return Err(lost);
        }
        report.copied.push((source_id, id, shown));
    }
    Ok(report)
}

struct Translator<'a, 'r> {
    from: &'a Repository,
    to: &'a Repository,
    /// Both repositories name blobs with the same key: names carry over unchanged.
    same_names: bool,
    /// Blobs the destination holds (and those stored by this copy).
    known: HashSet<BlobId>,
    trees: HashMap<BlobId, BlobId>,
    blobs: HashMap<BlobId, BlobId>,
    /// Listing pairs already compared by `learn`.
    compared: HashSet<(BlobId, BlobId)>,
    packer: Packer<'a>,
    report: &'r mut CopyReport,
}

impl Translator<'_, '_> {
    /// Learns the destination's names of the source's blobs from source listing `from` and its
    /// copy `to` (entries of the same name and kind, files cut into as many chunks of the same
    /// lengths). Only names the destination still holds are kept; the rest is read as new.
    fn learn(&mut self, from: &BlobId, to: &BlobId, depth: usize) -> Result<(), RepoError> {
        if depth > MAX_DEPTH || !self.compared.insert((*from, *to)) {
            return Ok(());
        }
        let (source, copy) = match (load_tree(self.from, from), load_tree(self.to, to)) {
            (Ok(source), Ok(copy)) => (source, copy),
            // A listing that cannot be read teaches nothing: its files are read as new.
            (Err(e), _) | (_, Err(e)) if e.is_corruption() => return Ok(()),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        for entry in &source.entries {
            let Some(twin) = copy.find(&entry.name) else { continue };
            match (&entry.node, &twin.node) {
                (Node::Dir { tree: a }, Node::Dir { tree: b }) => self.learn(a, b, depth + 1)?,
                (Node::File { chunks: a, .. }, Node::File { chunks: b, .. })
                    if a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.len == y.len) =>
                {
                    for (x, y) in a.iter().zip(b) {
                        if self.known.contains(&y.id) {
                            self.blobs.insert(x.id, y.id);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The destination's name of source folder listing `id`, stored there with everything below.
    fn tree(&mut self, id: &BlobId, depth: usize) -> Result<BlobId, RepoError> {
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        if let Some(done) = self.trees.get(id) {
            return Ok(*done);
        }
        // Walked even where the destination has this listing: what it names may not all be
        // there (a prune keeps a pack's unused listing while deleting what it named elsewhere).
        let tree = load_tree(self.from, id)?;
        let mut copied = Tree::default();
        for entry in tree.entries {
            let node = match entry.node {
                Node::Dir { tree } => Node::Dir { tree: self.tree(&tree, depth + 1)? },
                Node::File { size, chunks } => {
                    let mut new = Vec::with_capacity(chunks.len());
                    for chunk in chunks {
                        new.push(ChunkRef { id: self.blob(&chunk.id)?, len: chunk.len });
                    }
                    Node::File { size, chunks: new }
                }
                link @ Node::Symlink { .. } => link,
            };
            copied.entries.push(Entry { node, ..entry });
        }
        let plain = copied.encode();
        let new_id = self.store(BlobKind::Tree, &plain)?;
        self.trees.insert(*id, new_id);
        Ok(new_id)
    }

    /// The destination's name of source data blob `id`, stored there if it is not yet.
    fn blob(&mut self, id: &BlobId) -> Result<BlobId, RepoError> {
        if let Some(done) = self.blobs.get(id) {
            return Ok(*done);
        }
        let new_id = if self.same_names && self.known.contains(id) {
            self.report.blobs_already_there += 1;
            *id
        } else {
            // Loading verifies it: damage in the source is never copied.
            let plain = self.from.load_blob(id)?;
            self.report.blobs_read += 1;
            self.store(BlobKind::Data, &plain)?
        };
        self.blobs.insert(*id, new_id);
        Ok(new_id)
    }

    /// Names `plain` with the destination's key and stores it there unless it is already.
    fn store(&mut self, kind: BlobKind, plain: &[u8]) -> Result<BlobId, RepoError> {
        let id = self.to.blob_id(plain);
        if self.known.insert(id) {
            let stored = self.to.encode_blob(kind, &id, plain);
            self.packer.add(id, kind, &stored, plain.len() as u32)?;
            self.report.blobs_stored += 1;
            self.report.bytes_stored += stored.len() as u64;
        } else {
            self.report.blobs_already_there += 1;
        }
        Ok(id)
    }
}
