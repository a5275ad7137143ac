//! `kill -9` at any moment of a backup leaves a repository that `check` passes, whose earlier
//! snapshots restore exactly, and where a rerun completes.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

fn grow_phone(phone: &Path, round: u64) {
    for i in 0..6 {
        write(&phone.join(format!("DCIM/r{round}/IMG_{i}.jpg")), &bytes(round * 100 + i, 1_500_000, false));
    }
    for i in 0..300 {
        write(
            &phone.join(format!("Android/data/app{}/r{round}/f{i}.json", i % 7)),
            &bytes(round * 1000 + i, 3_000, true),
        );
    }
}

#[test]
fn kill_9_during_backups_never_breaks_the_repository() {
    let s = Scratch::new();
    s.ok(&["init", "--pack-size-mib", "2"]);
    let phone = s.path("phone");
    grow_phone(&phone, 0);
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let first_state = s.path("first-state");
    assert!(std::process::Command::new("cp").arg("-a").arg(&phone).arg(&first_state).status().unwrap().success());
    let first_id = s.json(&["snapshots"])[0]["id"].as_str().unwrap().to_string();

    let mut seed = 0x2545F4914F6CDD1Du64;
    for round in 1..=8u64 {
        grow_phone(&phone, round);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(30 + seed % 600);
        let mut child = s
            .command(&["backup", "--device", "p", phone.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();

        let check = s.run(&["check"]);
        assert!(
            check.status.success(),
            "round {round} (kill after {delay:?}): {}",
            String::from_utf8_lossy(&check.stdout)
        );
        let out = s.path(&format!("restore-{round}"));
        s.ok(&["restore", &first_id[..12], "--target", out.to_str().unwrap()]);
        assert_same_tree(&first_state, &out);
        std::fs::remove_dir_all(&out).unwrap();
    }

    // A rerun completes, reusing what the killed runs stored, and everything verifies.
    let done = s.json(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let total = done["stats"]["bytes"].as_u64().unwrap();
    assert!(done["stats"]["new_bytes"].as_u64().unwrap() < total);
    let check = s.run(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let out = s.path("final");
    s.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&phone, &out);
    s.ok(&["prune"]);
    let check = s.run(&["check", "--read-data"]);
    assert!(check.status.success(), "after prune: {}", String::from_utf8_lossy(&check.stdout));
    assert!(!String::from_utf8_lossy(&check.stdout).contains("not in any index"), "prune removes unindexed packs");
}
