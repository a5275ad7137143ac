//! Packs blobs as they come: data and trees in separate packs (so trees load from compact
//! packs), each pack published when full, and an index written every few packs so an
//! interrupted run leaves its work findable by the next one. Full packs are synced on a
//! background thread while the next one fills: the disk and the CPUs work at the same time.

use std::collections::VecDeque;
use std::thread::JoinHandle;

use super::index::write_index;
use super::pack::{FinishedPack, PackEntry, PackWriter};
use super::{BlobId, BlobKind, PackId, RepoError, Repository};

const PACKS_PER_INDEX: usize = 8;
/// Packs being synced at once; more waits, which bounds memory and dirty pages.
const SYNCING_AT_ONCE: usize = 2;

#[derive(Debug, Default, Clone, Copy)]
pub struct PackerReport {
    pub added_bytes: u64,
    pub packs: u64,
    pub blobs: u64,
}

pub struct Packer<'a> {
    repo: &'a Repository,
    data: Option<PackWriter>,
    trees: Option<PackWriter>,
    syncing: VecDeque<JoinHandle<Result<FinishedPack, RepoError>>>,
    unindexed: Vec<FinishedPack>,
    report: PackerReport,
}

impl<'a> Packer<'a> {
    pub fn new(repo: &'a Repository) -> Packer<'a> {
        Packer {
            repo,
            data: None,
            trees: None,
            syncing: VecDeque::new(),
            unindexed: Vec::new(),
            report: PackerReport::default(),
        }
    }

    /// Has the next index file also cover `packs`: complete packs on disk that no index covers
    /// (left by an interrupted run), so their blobs are reused instead of stored again.
    pub fn adopt(&mut self, packs: Vec<(PackId, Vec<PackEntry>)>) {
        self.unindexed.extend(packs.into_iter().map(|(id, entries)| FinishedPack { id, size: 0, entries }));
    }

    pub fn add(&mut self, id: BlobId, kind: BlobKind, stored: &[u8], raw_len: u32) -> Result<(), RepoError> {
        let slot = match kind {
            BlobKind::Data => &mut self.data,
            BlobKind::Tree => &mut self.trees,
        };
        if slot.is_none() {
            *slot = Some(PackWriter::create(self.repo)?);
        }
        let writer = slot.as_mut().expect("just created");
        writer.add(id, kind, stored, raw_len)?;
        self.report.blobs += 1;
        if writer.size() >= self.repo.config().pack_size {
            let full = slot.take().expect("present");
            self.publish(full)?;
        }
        Ok(())
    }

    fn publish(&mut self, writer: PackWriter) -> Result<(), RepoError> {
        let sealed = writer.seal(self.repo)?;
        self.syncing.push_back(std::thread::spawn(move || sealed.publish()));
        while self.syncing.len() > SYNCING_AT_ONCE {
            self.wait_oldest()?;
        }
        if self.unindexed.len() >= PACKS_PER_INDEX {
            self.write_index()?;
        }
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<(), RepoError> {
        let Some(handle) = self.syncing.pop_front() else { return Ok(()) };
        let pack = handle.join().expect("pack sync thread does not panic")?;
        self.report.added_bytes += pack.size;
        self.report.packs += 1;
        self.unindexed.push(pack);
        Ok(())
    }

    /// Indexes every pack published so far; only durable packs are ever indexed.
    fn write_index(&mut self) -> Result<(), RepoError> {
        while !self.syncing.is_empty() {
            self.wait_oldest()?;
        }
        if !self.unindexed.is_empty() {
            write_index(self.repo, self.unindexed.iter().map(|p| (&p.id, p.entries.as_slice())))?;
            self.unindexed.clear();
        }
        Ok(())
    }

    /// Publishes the partly filled packs and indexes everything: after this returns, every
    /// blob added is durable and findable.
    pub fn finish(mut self) -> Result<PackerReport, RepoError> {
        for writer in [self.data.take(), self.trees.take()].into_iter().flatten() {
            if !writer.is_empty() {
                self.publish(writer)?;
            }
        }
        self.write_index()?;
        Ok(self.report)
    }
}

impl Drop for Packer<'_> {
    /// A packer given up on (a failed write) waits for its packs being synced, so that none is
    /// left half-published in `tmp/` when the process exits.
    fn drop(&mut self) {
        for handle in self.syncing.drain(..) {
            let _ = handle.join();
        }
    }
}
