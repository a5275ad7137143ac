//! `forget`: which snapshots a retention policy keeps, per device. Removing a snapshot record
//! frees nothing by itself; `prune` then deletes the data no snapshot needs.

use std::collections::{BTreeMap, HashSet};

use crate::repo::lock::{LockKind, RepoLock};
use crate::repo::snapshot::{self, SnapshotInfo};
use crate::repo::{RepoError, Repository, SnapshotId};

#[derive(Clone, Copy, Debug, Default)]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
    }
}

/// One snapshot's fate and why.
#[derive(Debug)]
pub struct Decision {
    pub info: SnapshotInfo,
    pub keep: bool,
    pub reasons: Vec<&'static str>,
}

/// Applies `policy` to each device's snapshots separately, newest first: `keep_last` keeps the
/// newest N; `keep_daily` the newest snapshot of each of the N most recent days that have one;
/// likewise weekly (ISO weeks) and monthly.
pub fn plan(snapshots: &[SnapshotInfo], policy: &Policy) -> Vec<Decision> {
    let mut by_device: BTreeMap<&str, Vec<&SnapshotInfo>> = BTreeMap::new();
    for info in snapshots {
        by_device.entry(&info.snapshot.device).or_default().push(info);
    }
    let mut decisions = Vec::new();
    for (_, mut list) in by_device {
        list.sort_by_key(|s| std::cmp::Reverse((s.snapshot.time_ns, s.id)));
        type Bucket = fn(&SnapshotInfo) -> String;
        let rules: [(&'static str, Option<u32>, Bucket); 4] = [
            ("last", policy.keep_last, |s| s.id.to_hex()),
            ("daily", policy.keep_daily, |s| s.snapshot.local_time().format("%Y-%m-%d").to_string()),
            ("weekly", policy.keep_weekly, |s| s.snapshot.local_time().format("%G-W%V").to_string()),
            ("monthly", policy.keep_monthly, |s| s.snapshot.local_time().format("%Y-%m").to_string()),
        ];
        let mut kept: Vec<Vec<&'static str>> = vec![Vec::new(); list.len()];
        for (reason, limit, bucket) in rules {
            let Some(limit) = limit else { continue };
            let mut seen = HashSet::new();
            for (position, info) in list.iter().enumerate() {
                if seen.len() as u32 >= limit {
                    break;
                }
                if seen.insert(bucket(info)) {
                    kept[position].push(reason);
                }
            }
        }
        for (info, reasons) in list.into_iter().zip(kept) {
            decisions.push(Decision { info: info.clone(), keep: !reasons.is_empty(), reasons });
        }
    }
    decisions
}

/// Removes the snapshots `policy` does not keep (unless `dry_run`); returns every decision.
pub fn run(
    repo: &Repository,
    policy: &Policy,
    device: Option<&str>,
    dry_run: bool,
) -> Result<Vec<Decision>, RepoError> {
    let lock = RepoLock::acquire(repo, LockKind::Exclusive, "forget")?;
    let all = snapshot::list(repo)?;
    let chosen: Vec<SnapshotInfo> = all.into_iter().filter(|s| device.is_none_or(|d| s.snapshot.device == d)).collect();
    let decisions = plan(&chosen, policy);
    if !dry_run {
        let doomed: Vec<SnapshotId> = decisions.iter().filter(|d| !d.keep).map(|d| d.info.id).collect();
        for id in doomed {
            lock.ensure_held()?;
            snapshot::remove(repo, &id)?;
        }
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::snapshot::{name_snapshots, Snapshot, SnapshotStats};
    use crate::repo::Id;

    fn at(device: &str, n: u8, day: i64, hour: i64) -> (Id, Snapshot) {
        let time_ns = ((day * 24 + hour) * 3600) * 1_000_000_000 + 1_700_000_000 * 1_000_000_000;
        let snapshot = Snapshot {
            device: device.into(),
            time_ns,
            hostname: "h".into(),
            tags: vec![],
            source: "s".into(),
            parent: None,
            root: Id([0; 32]),
            stats: SnapshotStats::default(),
            facts: Default::default(),
            extras: None,
            copied_from: None,
        };
        (Id([n; 32]), snapshot)
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_per_device() {
        let list = name_snapshots(vec![
            at("a", 1, 0, 1),
            at("a", 2, 0, 5),
            at("a", 3, 1, 1),
            at("a", 4, 2, 1),
            at("b", 5, 0, 1),
        ]);
        let decisions = plan(&list, &Policy { keep_daily: Some(2), ..Policy::default() });
        let kept: HashSet<u8> = decisions.iter().filter(|d| d.keep).map(|d| d.info.id.0[0]).collect();
        assert_eq!(kept, HashSet::from([3, 4, 5]));
    }

    #[test]
    fn keep_last_and_monthly_combine() {
        let list = name_snapshots((0..10).map(|i| at("a", i, i as i64 * 10, 0)).collect());
        let decisions = plan(&list, &Policy { keep_last: Some(2), keep_monthly: Some(3), ..Policy::default() });
        let kept: Vec<u8> = decisions.iter().filter(|d| d.keep).map(|d| d.info.id.0[0]).collect();
        assert!(kept.contains(&9) && kept.contains(&8));
        assert!(kept.len() <= 5 && kept.len() >= 3, "{kept:?}");
    }
}
