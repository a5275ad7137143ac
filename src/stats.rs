//! `stats`: what the repository holds and what deduplication and compression save.

use serde::Serialize;

use crate::repo::snapshot;
use crate::repo::{BlobKind, RepoError, Repository};

#[derive(Debug, Default, Serialize)]
pub struct RepoStats {
    pub snapshots: u64,
    pub devices: u64,
    /// Sum of the sizes of every file in every snapshot: what the backups would take as copies.
    pub raw_bytes: u64,
    /// File content after deduplication, before compression.
    pub unique_bytes: u64,
    /// Size of all pack files on disk.
    pub stored_bytes: u64,
    pub data_blobs: u64,
    pub tree_blobs: u64,
    pub packs: u64,
    /// raw_bytes / unique_bytes.
    pub dedup_ratio: f64,
    /// unique_bytes / stored bytes of those blobs.
    pub compression_ratio: f64,
}

pub fn run(repo: &Repository) -> Result<RepoStats, RepoError> {
    let mut stats = RepoStats::default();
    let snapshots = snapshot::list(repo)?;
    stats.snapshots = snapshots.len() as u64;
    let mut devices: Vec<&str> = snapshots.iter().map(|s| s.snapshot.device.as_str()).collect();
    devices.sort();
    devices.dedup();
    stats.devices = devices.len() as u64;
    stats.raw_bytes = snapshots.iter().map(|s| s.snapshot.stats.bytes).sum();
    let mut seen = std::collections::HashSet::new();
    let mut data_stored = 0u64;
    repo.index().for_each(|loc| {
        if seen.insert(loc.id) {
            match loc.kind {
                BlobKind::Data => {
                    stats.data_blobs += 1;
                    stats.unique_bytes += loc.raw_len as u64;
                    data_stored += loc.len as u64;
                }
                BlobKind::Tree => stats.tree_blobs += 1,
            }
        }
    })?;
    let packs = repo.list_packs()?;
    stats.packs = packs.len() as u64;
    stats.stored_bytes = packs.iter().map(|(_, size)| size).sum();
    stats.dedup_ratio = ratio(stats.raw_bytes, stats.unique_bytes);
    stats.compression_ratio = ratio(stats.unique_bytes, data_stored);
    Ok(stats)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}
