//! Any prefix of a command's writes leaves a repository that `check` passes and that has lost
//! no snapshot: each command is stopped (SIGKILL) at each of its durable steps in turn, which
//! is also what a power cut right after that step leaves (everything written after the last
//! sync is gone). Needs the `test-hooks` feature (scripts/test.sh builds with it).

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

fn snapshot_ids(s: &Scratch) -> BTreeSet<String> {
    s.json(&["snapshots"]).as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_string()).collect()
}

fn replace_repo(s: &Scratch, from: &Path) {
    if s.repo.exists() {
        std::fs::remove_dir_all(&s.repo).unwrap();
    }
    copy_tree(from, &s.repo);
}

/// How many crash points `args` passes through on the repository as it is now.
fn count_points(s: &Scratch, args: &[&str]) -> u64 {
    let counter = s.path("points");
    let _ = std::fs::remove_file(&counter);
    let out = s.command(args).env("PHONEBAK_CRASH_COUNT", &counter).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    let counted = std::fs::read_to_string(&counter).unwrap_or_default().lines().count() as u64;
    assert!(counted > 0, "no crash point was reached: is phonebak built with --features test-hooks?");
    counted
}

/// The removals (or renames away) a power cut at point `n` may undo: those made after an
/// earlier point from a folder not synced since, by folder.
fn unsynced_removals(log: &str, n: u64) -> BTreeMap<PathBuf, Vec<PathBuf>> {
    let steps: Vec<(u64, String, PathBuf)> = log
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, '\t');
            Some((parts.next()?.parse().ok()?, parts.next()?.to_string(), PathBuf::from(parts.next()?)))
        })
        .filter(|(m, _, _)| *m <= n)
        .collect();
    let mut by_folder: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for (m, step, path) in &steps {
        // The removal after point m ran only if the process went past m.
        if !(step == "remove" || step == "rename") || *m >= n {
            continue;
        }
        let parent = path.parent().unwrap();
        let synced = steps.iter().any(|(k, st, p)| k > m && st == "sync-dir" && p == parent);
        if !synced {
            by_folder.entry(parent.to_path_buf()).or_default().push(path.clone());
        }
    }
    by_folder
}

/// Puts back (from `pristine`) the files a power cut undid the removal of.
fn undo(s: &Scratch, pristine: &Path, removed: &[PathBuf]) {
    for path in removed {
        let rel = path.strip_prefix(&s.repo).unwrap();
        if pristine.join(rel).exists() && !path.exists() {
            std::fs::copy(pristine.join(rel), path).unwrap();
        }
    }
}

/// Runs `args` from `pristine` once per crash point, killed there; after each, `verify` judges
/// the repository as the kill left it and as a power cut could (unsynced removals undone: all
/// of them, and those of each one folder alone, since a file system may persist them in any
/// order), and a rerun of the command completes.
fn at_every_point(s: &Scratch, pristine: &Path, args: &[&str], verify: &dyn Fn(&Scratch, u64)) {
    replace_repo(s, pristine);
    let points = count_points(s, args);
    let log_path = s.path("crash-log");
    for n in 1..=points {
        replace_repo(s, pristine);
        let _ = std::fs::remove_file(&log_path);
        let out = s
            .command(args)
            .env("PHONEBAK_CRASH_AT", n.to_string())
            .env("PHONEBAK_CRASH_COUNT", &log_path)
            .output()
            .unwrap();
        // Threads may cut packs a little differently from run to run: the last points may not
        // be reached, and then the command completes.
        let died = out.status.signal() == Some(9);
        assert!(
            died || (out.status.success() && n + 2 >= points),
            "{args:?} at point {n} of {points}: {}",
            stderr(&out)
        );
        verify(s, n);
        let unsynced = unsynced_removals(&std::fs::read_to_string(&log_path).unwrap_or_default(), n);
        if !unsynced.is_empty() {
            let killed = s.path("killed-state");
            let _ = std::fs::remove_dir_all(&killed);
            copy_tree(&s.repo, &killed);
            let all: Vec<PathBuf> = unsynced.values().flatten().cloned().collect();
            for undone in std::iter::once(all).chain(unsynced.values().cloned()) {
                replace_repo(s, &killed);
                undo(s, pristine, &undone);
                verify(s, n);
            }
        }
        let rerun = s.run(args);
        assert!(rerun.status.success(), "{args:?} rerun after point {n}: {}", stderr(&rerun));
        verify(s, n);
    }
}

fn check_passes(s: &Scratch, what: &str) {
    let out = s.run(&["check"]);
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stdout));
}

fn grow(phone: &Path, round: u64) {
    for i in 0..3 {
        write(&phone.join(format!("DCIM/r{round}/IMG_{i}.jpg")), &bytes(round * 10 + i, 1_200_000, false));
    }
    for i in 0..40 {
        write(&phone.join(format!("Android/r{round}/f{i}.json")), &bytes(round * 100 + i, 2_000, true));
    }
}

#[test]
fn every_prefix_of_backup_forget_prune_and_repair_leaves_a_repository_check_passes() {
    let s = Scratch::new();
    s.ok(&["init", "--pack-size-mib", "1"]);
    let phone = s.path("phone");
    grow(&phone, 0);
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let first_state = s.path("first-state");
    copy_tree(&phone, &first_state);
    let first = snapshot_ids(&s).into_iter().next().unwrap();
    let first_intact = |s: &Scratch, what: &str| {
        assert!(snapshot_ids(s).contains(&first), "{what}: the first snapshot is lost");
        let out = s.path("restored");
        let _ = std::fs::remove_dir_all(&out);
        s.ok(&["restore", &first[..12], "--target", out.to_str().unwrap()]);
        assert_same_tree(&first_state, &out);
    };

    // backup: packs, index files, the snapshot record last.
    grow(&phone, 1);
    let before_backup = s.path("before-backup");
    copy_tree(&s.repo, &before_backup);
    at_every_point(&s, &before_backup, &["backup", "--device", "p", phone.to_str().unwrap()], &|s, n| {
        check_passes(s, &format!("backup killed at point {n}"));
        first_intact(s, &format!("backup killed at point {n}"));
    });

    // forget, then prune with repacking (round 1's small files leave packs mostly unused).
    let before_forget = s.path("before-forget");
    copy_tree(&s.repo, &before_forget);
    let newest = s.json(&["snapshots"]).as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_string();
    let kept = BTreeSet::from([newest]);
    at_every_point(&s, &before_forget, &["forget", "--keep-last", "1"], &|s, n| {
        check_passes(s, &format!("forget killed at point {n}"));
        assert!(snapshot_ids(s).is_superset(&kept), "forget killed at point {n} lost a kept snapshot");
    });
    // Round 1's photos go (their packs are deleted) and its small files (their packs repacked).
    std::fs::remove_dir_all(phone.join("DCIM/r1")).unwrap();
    std::fs::remove_dir_all(phone.join("Android/r1")).unwrap();
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    s.ok(&["forget", "--keep-last", "1"]);
    let before_prune = s.path("before-prune");
    copy_tree(&s.repo, &before_prune);
    let latest = snapshot_ids(&s);
    let latest_state = s.path("latest-state");
    copy_tree(&phone, &latest_state);
    let prune_check = |s: &Scratch, n: u64| {
        check_passes(s, &format!("prune killed at point {n}"));
        assert_eq!(snapshot_ids(s), latest);
        let out = s.path("restored");
        let _ = std::fs::remove_dir_all(&out);
        s.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
        assert_same_tree(&latest_state, &out);
    };
    at_every_point(&s, &before_prune, &["prune"], &prune_check);

    // A power cut can also undo deletions made after the last sync: packs prune deleted come
    // back unindexed, which is harmless.
    replace_repo(&s, &before_prune);
    s.ok(&["prune"]);
    for pack in pack_files(&before_prune) {
        let back = s.repo.join(pack.strip_prefix(&before_prune).unwrap());
        if !back.exists() {
            std::fs::copy(&pack, &back).unwrap();
        }
    }
    prune_check(&s, 0);

    // repair index, with one index file damaged.
    replace_repo(&s, &before_prune);
    let index = std::fs::read_dir(s.repo.join("index")).unwrap().next().unwrap().unwrap().path();
    std::fs::write(&index, b"damaged").unwrap();
    let damaged_index = s.path("damaged-index");
    copy_tree(&s.repo, &damaged_index);
    at_every_point(&s, &damaged_index, &["repair", "index"], &|s, n| {
        assert_eq!(snapshot_ids(s), latest, "repair index killed at point {n}");
        let out = s.path("restored");
        let _ = std::fs::remove_dir_all(&out);
        s.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
        assert_same_tree(&latest_state, &out);
    });
    check_passes(&s, "after repair index");

    // repair snapshots, with one record damaged: moved aside at any point, never lost.
    replace_repo(&s, &before_prune);
    let victim = snapshot_ids(&s).into_iter().next().unwrap();
    std::fs::write(s.repo.join("snapshots").join(&victim), b"damaged").unwrap();
    let damaged_record = s.path("damaged-record");
    copy_tree(&s.repo, &damaged_record);
    let others: BTreeSet<String> = latest.iter().filter(|id| **id != victim).cloned().collect();
    at_every_point(&s, &damaged_record, &["repair", "snapshots"], &|s, n| {
        let out = s.run(&["check"]);
        let report = String::from_utf8_lossy(&out.stdout).to_string();
        let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("error:")).collect();
        assert!(errors.iter().all(|e| e.contains(&victim)), "repair snapshots killed at point {n}: {report}");
        assert!(snapshot_ids(s).is_superset(&others), "repair snapshots killed at point {n} lost a snapshot");
        let aside = s.repo.join("damaged/snapshots").join(&victim);
        assert!(aside.exists() || s.repo.join("snapshots").join(&victim).exists(), "the damaged record is kept");
    });
    check_passes(&s, "after repair snapshots");

    // repair packs, with one pack damaged: its intact blobs are salvaged into new packs and it
    // goes to damaged/data; at any point the pack is kept (in one place or the other) and every
    // file the damage did not touch restores.
    // (Pruned first: every pack then holds data the latest snapshot needs.)
    replace_repo(&s, &before_prune);
    s.ok(&["prune"]);
    damage_largest_pack(&s.repo, 500_000);
    let damaged_pack = s.path("damaged-pack");
    copy_tree(&s.repo, &damaged_pack);
    let intact_files = |s: &Scratch| -> BTreeSet<PathBuf> {
        let out = s.path("restored");
        let _ = std::fs::remove_dir_all(&out);
        let _ = s.run(&["restore", "latest", "--target", out.to_str().unwrap()]);
        let mut same = BTreeSet::new();
        for file in files_under(&latest_state) {
            let rel = file.strip_prefix(&latest_state).unwrap().to_path_buf();
            if std::fs::read(out.join(&rel)).ok() == Some(std::fs::read(&file).unwrap()) {
                same.insert(rel);
            }
        }
        same
    };
    let intact_before = intact_files(&s);
    assert!(intact_before.len() < files_under(&latest_state).len(), "the damage hits a file");
    let damaged_name = pack_files(&s.repo).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let damaged_name = damaged_name.file_name().unwrap().to_owned();
    at_every_point(&s, &damaged_pack, &["repair", "packs"], &|s, n| {
        let kept = pack_files(&s.repo).iter().any(|p| p.file_name().unwrap() == damaged_name)
            || s.repo.join("damaged/data").join(&damaged_name).exists();
        assert!(kept, "repair packs killed at point {n} lost the damaged pack");
        assert_eq!(snapshot_ids(s), latest, "repair packs killed at point {n}");
        let intact = intact_files(s);
        assert!(intact.is_superset(&intact_before), "repair packs killed at point {n} lost an intact file");
    });
}
