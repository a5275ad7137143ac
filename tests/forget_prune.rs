//! Retention and space reclamation: `forget` by policy per device, `prune` deletes only what
//! no snapshot needs, and the repository stays whole.

mod common;

use common::*;

fn du(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("du").args(["-sb"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn forget_keeps_the_policy_per_device_and_prune_frees_space() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("keep.txt"), b"always here");
    let mut states = Vec::new();
    for day in 1..=5 {
        // Each day a new big photo, and the previous day's one deleted.
        if day > 1 {
            std::fs::remove_file(phone.join(format!("DCIM/day{}.jpg", day - 1))).unwrap();
        }
        write(&phone.join(format!("DCIM/day{day}.jpg")), &bytes(day, 3_000_000, false));
        let time = format!("2026-11-{:02}T09:00:00", 10 + day);
        s.ok(&["backup", "--device", "pixel", "--time", &time, phone.to_str().unwrap()]);
        let copy = s.path(&format!("state{day}"));
        assert!(std::process::Command::new("cp").arg("-a").arg(&phone).arg(&copy).status().unwrap().success());
        states.push(copy);
    }
    s.ok(&["backup", "--device", "tablet", "--time", "2026-11-01T09:00:00", phone.to_str().unwrap()]);

    let dry = s.json(&["forget", "--keep-daily", "2", "--device", "pixel", "--dry-run"]);
    assert_eq!(dry["snapshots"].as_array().unwrap().iter().filter(|d| d["keep"] == false).count(), 3);
    assert_eq!(s.json(&["snapshots"]).as_array().unwrap().len(), 6, "dry run removes nothing");

    let before = du(&s.repo);
    s.ok(&["forget", "--keep-last", "2", "--prune"]);
    let after = du(&s.repo);
    let left = s.json(&["snapshots"]);
    let left = left.as_array().unwrap();
    let names: Vec<String> =
        left.iter().map(|s| format!("{}/{}", s["device"].as_str().unwrap(), s["name"].as_str().unwrap())).collect();
    assert_eq!(names, ["tablet/2026-11-01T09:00:00", "pixel/2026-11-14T09:00:00", "pixel/2026-11-15T09:00:00"]);
    assert!(after + 6_000_000 < before, "three unique photos freed: {before} -> {after}");

    let check = s.run(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    for (name, state) in [("pixel/2026-11-14T09:00:00", &states[3]), ("pixel/latest", &states[4])] {
        let out = s.path(&format!("out-{}", name.replace(['/', ':'], "_")));
        s.ok(&["restore", name, "--target", out.to_str().unwrap()]);
        assert_same_tree(state, &out);
    }
}

#[test]
fn prune_repacks_partly_used_packs() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    for i in 0..10 {
        write(&phone.join(format!("f{i}.bin")), &bytes(i, 500_000, false));
    }
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    for i in 0..8 {
        std::fs::remove_file(phone.join(format!("f{i}.bin"))).unwrap();
    }
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    s.ok(&["forget", "--keep-last", "1"]);
    let report = s.json(&["prune"]);
    assert_eq!(report["packs_repacked"], 1, "{report}");
    assert!(report["bytes_freed"].as_i64().unwrap() > 3_500_000, "{report}");
    assert!(s.run(&["check", "--read-data"]).status.success());
    let out = s.path("out");
    s.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&phone, &out);
    assert_eq!(std::fs::read_dir(s.repo.join("index")).unwrap().count(), 1, "prune leaves one index file");
}

#[test]
fn concurrent_backups_to_one_repository_are_safe() {
    let s = Scratch::with_repo();
    for (n, device) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let phone = s.path(device);
        for i in 0..20 {
            write(&phone.join(format!("DCIM/{i}.jpg")), &bytes(i + n as u64 * 1000, 300_000, false));
            write(&phone.join(format!("shared/{i}.txt")), &bytes(i + 500, 20_000, true));
            // the same in every phone
        }
    }
    let mut handles = Vec::new();
    for device in ["alice", "bob", "carol"] {
        let phone = s.path(device);
        handles.push(s.command(&["backup", "--device", device, phone.to_str().unwrap()]).spawn().unwrap());
    }
    for mut h in handles {
        assert!(h.wait().unwrap().success());
    }
    assert_eq!(s.json(&["snapshots"]).as_array().unwrap().len(), 3);
    assert!(s.run(&["check", "--read-data"]).status.success());
    let stats = s.json(&["stats"]);
    assert_eq!(stats["unique_bytes"], 3 * 20 * 300_000 + 20 * 20_000, "shared files stored once: {stats}");
    for device in ["alice", "bob", "carol"] {
        let out = s.path(&format!("out-{device}"));
        s.ok(&["restore", &format!("{device}/latest"), "--target", out.to_str().unwrap()]);
        assert_same_tree(&s.path(device), &out);
    }
}
