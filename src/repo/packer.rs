//! Packs blobs as they come: data and trees in separate packs (so trees load from compact
//! packs), each pack published when full, and an index written every few packs so an
//! interrupted run leaves its work findable by the next one.

use super::index::write_index;
use super::pack::{FinishedPack, PackWriter};
use super::{BlobId, BlobKind, RepoError, Repository};

const PACKS_PER_INDEX: usize = 8;

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
    unindexed: Vec<FinishedPack>,
    report: PackerReport,
}

impl<'a> Packer<'a> {
    pub fn new(repo: &'a Repository) -> Packer<'a> {
        Packer { repo, data: None, trees: None, unindexed: Vec::new(), report: PackerReport::default() }
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
        let pack = writer.finish(self.repo)?;
        self.report.added_bytes += pack.size;
        self.report.packs += 1;
        self.unindexed.push(pack);
        if self.unindexed.len() >= PACKS_PER_INDEX {
            self.write_index()?;
        }
        Ok(())
    }

    fn write_index(&mut self) -> Result<(), RepoError> {
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
