//! Issue 13: one damaged file never locks every snapshot away, damage is never copied forward
//! or made permanent by prune, and `repair` puts a damaged repository back in order.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    all.sort();
    all
}

fn flip_byte(path: &Path, at: usize) {
    let mut content = std::fs::read(path).unwrap();
    let at = at.min(content.len() - 1);
    content[at] ^= 0x10;
    std::fs::write(path, content).unwrap();
}

fn backup(s: &Scratch, phone: &Path) -> serde_json::Value {
    s.json(&["backup", "--device", "p", phone.to_str().unwrap()])
}

fn snapshot_ids(s: &Scratch) -> Vec<String> {
    s.json(&["snapshots"]).as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_string()).collect()
}

fn restore_ok(s: &Scratch, spec: &str, expected: &Path, name: &str) {
    let out = s.path(name);
    let done = s.run(&["restore", spec, "--target", out.to_str().unwrap()]);
    assert!(done.status.success(), "restore {spec}: {}", stderr(&done));
    assert_same_tree(expected, &out);
    std::fs::remove_dir_all(&out).unwrap();
}

fn check_ok(s: &Scratch, read_data: bool) {
    let args: &[&str] = if read_data { &["check", "--read-data"] } else { &["check"] };
    let out = s.run(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// Two snapshots of a phone, the second with more files; returns copies of both states.
fn two_snapshots(s: &Scratch) -> (PathBuf, PathBuf, PathBuf) {
    let phone = s.path("phone");
    sample_phone(&phone);
    backup(s, &phone);
    let first = s.path("first-state");
    copy_tree(&phone, &first);
    write(&phone.join("DCIM/Camera/IMG_0003.jpg"), &bytes(30, 900_000, false));
    write(&phone.join("Documents/later.txt"), &bytes(31, 20_000, true));
    backup(s, &phone);
    let second = s.path("second-state");
    copy_tree(&phone, &second);
    (phone, first, second)
}

#[test]
fn a_damaged_snapshot_record_is_skipped_by_every_command_and_moved_aside_by_repair() {
    for damage in ["truncate", "flip"] {
        let s = Scratch::with_repo();
        let (phone, _first, second) = two_snapshots(&s);
        let ids = snapshot_ids(&s);
        let (victim, survivor) = (&ids[0], &ids[1]);
        let record = s.repo.join("snapshots").join(victim);
        match damage {
            "truncate" => std::fs::write(&record, b"").unwrap(),
            _ => flip_byte(&record, 40),
        }

        let listed = s.run(&["snapshots", "--json"]);
        assert_eq!(code(&listed), 0, "{damage}: {}", stderr(&listed));
        assert!(stderr(&listed).contains(&format!("snapshot record {victim}")), "named: {}", stderr(&listed));
        let list: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 1);
        assert_eq!(list[0]["id"].as_str().unwrap(), survivor);
        restore_ok(&s, &survivor[..12], &second, "restored");
        let asked = s.run(&["restore", &victim[..12], "--target", s.path("victim").to_str().unwrap()]);
        assert_eq!(code(&asked), 13, "{damage}: {}", stderr(&asked));
        assert!(stderr(&asked).contains(&format!("snapshot record {victim}")), "{}", stderr(&asked));
        s.ok(&["stats"]);
        s.ok(&["ls", "latest"]);
        backup(&s, &phone);
        s.ok(&["forget", "--keep-last", "1"]);

        let prune = s.run(&["prune"]);
        assert_eq!(code(&prune), 13, "prune must not delete what the damaged record may need");
        assert!(stderr(&prune).contains(victim) && stderr(&prune).contains("repair snapshots"), "{}", stderr(&prune));
        let check = s.run(&["check"]);
        assert_eq!(code(&check), 13);
        let report = String::from_utf8_lossy(&check.stdout);
        assert!(report.contains(victim.as_str()) && report.contains("repair: phonebak repair snapshots"), "{report}");

        let repaired = s.ok(&["repair", "snapshots"]);
        assert!(repaired.contains("moved aside"), "{repaired}");
        assert!(s.repo.join("damaged/snapshots").join(victim).exists(), "kept, not deleted");
        check_ok(&s, true);
        s.ok(&["prune"]);
        check_ok(&s, true);
        restore_ok(&s, "latest", &second, "after-prune");
    }
}

#[test]
fn the_mount_shows_the_good_snapshots_and_logs_the_damaged_record() {
    let s = Scratch::with_repo();
    let (_phone, _first, second) = two_snapshots(&s);
    let ids = snapshot_ids(&s);
    std::fs::write(s.repo.join("snapshots").join(&ids[0]), b"").unwrap();
    let log = s.path("mount.log");
    let mounted = Mounted::new(&s, &["-o", &format!("log={}", log.display())]);
    let device = mounted.snapshots().join("p");
    let shown = names(&device);
    assert_eq!(shown.len(), 2, "one snapshot folder and latest: {shown:?}");
    let copy = s.path("copied");
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(device.join("latest/"))
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    assert_same_tree_but_owner(&second, &copy);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains(&format!("snapshot record {}", ids[0])), "logged: {logged}");
}

/// The index files, newest layout first.
fn index_files(s: &Scratch) -> Vec<PathBuf> {
    files_in(&s.repo.join("index"))
}

#[test]
fn index_damage_is_never_worse_than_a_slower_start() {
    for damage in ["truncate-one", "flip-a-page", "delete-folder", "delete-all"] {
        let s = Scratch::with_repo();
        let (phone, first, second) = two_snapshots(&s);
        let ids = snapshot_ids(&s);
        match damage {
            "truncate-one" => {
                let victim = &index_files(&s)[0];
                let len = std::fs::metadata(victim).unwrap().len();
                std::fs::OpenOptions::new().write(true).open(victim).unwrap().set_len(len / 2).unwrap();
            }
            // Just past the magic number: inside the first sealed page.
            "flip-a-page" => index_files(&s).iter().for_each(|f| flip_byte(f, 30)),
            "delete-folder" => std::fs::remove_dir_all(s.repo.join("index")).unwrap(),
            _ => index_files(&s).iter().for_each(|f| std::fs::remove_file(f).unwrap()),
        }
        restore_ok(&s, &ids[0][..12], &first, "first");
        restore_ok(&s, &ids[1][..12], &second, "second");
        s.ok(&["ls", "latest"]);
        s.ok(&["stats"]);
        let again = backup(&s, &phone);
        assert_eq!(again["stats"]["new_bytes"], 0, "{damage}: nothing is stored again");
        let check = s.run(&["check"]);
        let report = String::from_utf8_lossy(&check.stdout).to_string();
        assert!(!report.contains("prune` removes them"), "{damage}: check must not advise deleting data: {report}");
        if damage.starts_with("delete") {
            // The backup above indexed what no index covered: nothing is damaged any more.
            assert!(check.status.success(), "{damage}: {report}");
        } else {
            assert_eq!(code(&check), 13, "{damage}: {report}");
            assert!(report.contains("repair: phonebak repair index"), "{damage}: {report}");
            s.ok(&["repair", "index"]);
            check_ok(&s, true);
        }
        s.ok(&["prune"]);
        check_ok(&s, true);
        restore_ok(&s, &ids[0][..12], &first, "first-after-prune");
        restore_ok(&s, "latest", &second, "latest-after-prune");
    }
}

/// Stores the phone's blobs twice, in two packs (as two backups racing would), and returns the
/// data packs of the first and second copy.
fn stored_twice(s: &Scratch, phone: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    backup(s, phone);
    let first_packs = pack_files(&s.repo);
    let aside = s.path("index-aside");
    std::fs::create_dir_all(&aside).unwrap();
    for file in index_files(s) {
        std::fs::rename(&file, aside.join(file.file_name().unwrap())).unwrap();
    }
    // Packs unknown to any index are read from their footers: hide them too.
    let packs_aside = s.path("packs-aside");
    std::fs::create_dir_all(&packs_aside).unwrap();
    for pack in &first_packs {
        std::fs::rename(pack, packs_aside.join(pack.file_name().unwrap())).unwrap();
    }
    s.ok(&["backup", "--device", "p", "--force", phone.to_str().unwrap()]);
    let second_packs: Vec<PathBuf> = pack_files(&s.repo);
    for pack in &first_packs {
        std::fs::rename(packs_aside.join(pack.file_name().unwrap()), pack).unwrap();
    }
    for file in files_in(&aside) {
        std::fs::rename(&file, s.repo.join("index").join(file.file_name().unwrap())).unwrap();
    }
    (first_packs, second_packs)
}

#[test]
fn reads_and_prune_use_the_copy_that_exists_and_prune_refuses_when_none_does() {
    for lost_copy in [0, 1] {
        let s = Scratch::with_repo();
        let phone = s.path("phone");
        sample_phone(&phone);
        let copies = stored_twice(&s, &phone);
        let doomed = if lost_copy == 0 { &copies.0 } else { &copies.1 };
        for pack in doomed {
            std::fs::remove_file(pack).unwrap();
        }
        restore_ok(&s, "latest", &phone, "restored");
        s.ok(&["prune"]);
        check_ok(&s, true);
        restore_ok(&s, "latest", &phone, "after-prune");
        assert!(!pack_files(&s.repo).is_empty());
    }

    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    let (first, second) = stored_twice(&s, &phone);
    for pack in first.iter().chain(&second) {
        std::fs::remove_file(pack).unwrap();
    }
    let prune = s.run(&["prune"]);
    assert_eq!(code(&prune), 13, "{}", stderr(&prune));
    let said = stderr(&prune);
    assert!(said.contains("nothing was pruned") && said.contains("(p): /"), "names snapshots and files: {said}");
}

/// A phone with a photo and a text file, backed up; then a bit of the photo's pack flipped.
fn backed_up_then_a_photo_damaged() -> (Scratch, PathBuf) {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("DCIM/victim.jpg"), &bytes(1, 2_000_000, false));
    write(&phone.join("Documents/fine.txt"), &bytes(2, 10_000, true));
    backup(&s, &phone);
    damage_largest_pack(&s.repo, 1_000_000);
    (s, phone)
}

#[test]
fn a_flipped_bit_heals_after_repair_packs_and_the_next_backup() {
    let (s, phone) = backed_up_then_a_photo_damaged();
    // A mount open all along answers EIO for the damaged photo, then, with no remount, the
    // photo healed.
    let mounted = Mounted::new(&s, &[]);
    let device = mounted.snapshots().join("p");
    let first = names(&device).into_iter().find(|n| n != "latest").unwrap();
    let victim = device.join(first).join("DCIM/victim.jpg");
    let unreadable = std::fs::read(&victim).unwrap_err();
    assert_eq!(unreadable.raw_os_error(), Some(libc::EIO), "{unreadable}");

    let check = s.run(&["check", "--read-data"]);
    assert_eq!(code(&check), 13);
    assert!(String::from_utf8_lossy(&check.stdout).contains("repair: phonebak repair packs"));

    let repaired = s.ok(&["repair", "packs"]);
    assert!(repaired.contains("moved aside"), "{repaired}");
    assert!(repaired.contains(", 1 lost"), "one chunk has no other copy: {repaired}");
    assert_eq!(files_in(&s.repo.join("damaged/data")).len(), 1, "the damaged pack is kept aside");
    let check = s.run(&["check"]);
    assert_eq!(code(&check), 13, "the snapshot still lacks the photo's damaged chunk");
    assert!(String::from_utf8_lossy(&check.stdout).contains("DCIM/victim.jpg"));

    // The phone still has the photo: the next backup stores the damaged chunk again.
    let healed = backup(&s, &phone);
    assert!(healed["stats"]["new_bytes"].as_u64().unwrap() > 0, "{healed}");
    check_ok(&s, true);
    let ids = snapshot_ids(&s);
    restore_ok(&s, &ids[0][..12], &phone, "old-snapshot-whole-again");
    assert!(std::fs::read(&victim).unwrap() == std::fs::read(phone.join("DCIM/victim.jpg")).unwrap());
}

#[test]
fn a_deleted_pack_heals_with_the_next_backup() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    backup(&s, &phone);
    let data_pack = pack_files(&s.repo).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    std::fs::remove_file(&data_pack).unwrap();
    let healed = backup(&s, &phone);
    assert!(healed["stats"]["new_bytes"].as_u64().unwrap() > 3_000_000, "{healed}");
    restore_ok(&s, "latest", &phone, "restored");
    s.ok(&["repair", "index"]);
    check_ok(&s, true);
}

#[test]
fn repair_snapshots_rewrites_a_snapshot_without_its_lost_files() {
    let (s, _phone) = backed_up_then_a_photo_damaged();
    s.ok(&["repair", "packs"]);
    let old = snapshot_ids(&s)[0].clone();
    let out = s.ok(&["repair", "snapshots"]);
    assert!(out.contains("DCIM/victim.jpg") && out.contains("repaired"), "{out}");
    let list = s.json(&["snapshots"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(list[0]["tags"].as_array().unwrap().iter().any(|t| t == "repaired"));
    assert!(s.repo.join("damaged/snapshots").join(&old).exists(), "the original record is kept aside");
    check_ok(&s, true);
    let restored = s.path("restored");
    s.ok(&["restore", "latest", "--target", restored.to_str().unwrap()]);
    assert!(!restored.join("DCIM/victim.jpg").exists());
    assert_eq!(std::fs::read(restored.join("Documents/fine.txt")).unwrap(), bytes(2, 10_000, true));
    s.ok(&["prune"]);
    check_ok(&s, true);
}

/// Starts `args`, which stops itself (SIGSTOP, a `test-hooks` crash point) once its lock file is
/// durable; removes that lock as a stale-lock cleaner on another machine would, and lets it go on.
/// Runs `args`, stopped at its durable step `at` (1: its lock file is synced, 2: the lock's
/// folder is); there its lock is removed, as another machine that took it for stale would.
/// Nothing if the command ended before that step (threads cut packs a little differently from
/// run to run, so the last steps may not come).
fn lose_lock_at(s: &Scratch, args: &[&str], at: u64) -> Option<std::process::Output> {
    let mut child = s
        .command(args)
        .env("PHONEBAK_STOP_AT", at.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let started = std::time::Instant::now();
    let stopped = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit(") ").next().is_some_and(|rest| rest.starts_with('T'))
    };
    while !stopped() {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{args:?} never stopped: built with test-hooks?"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let locks = files_in(&s.repo.join("locks"));
    assert_eq!(locks.len(), 1, "{locks:?}");
    std::fs::remove_file(&locks[0]).unwrap();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    Some(child.wait_with_output().unwrap())
}

fn lose_lock_of(s: &Scratch, args: &[&str]) -> std::process::Output {
    lose_lock_at(s, args, 2).expect("every command takes its lock in two steps")
}

/// How many durable steps `args` takes from the repository as it is now (run on a copy).
fn durable_steps(s: &Scratch, args: &[&str]) -> u64 {
    let copy = s.path("step-count-repo");
    let _ = std::fs::remove_dir_all(&copy);
    copy_tree(&s.repo, &copy);
    let log = s.path("step-count");
    let _ = std::fs::remove_file(&log);
    let out = s.command(args).env("PHONEBAK_REPO", &copy).env("PHONEBAK_CRASH_COUNT", &log).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let steps = std::fs::read_to_string(&log).unwrap();
    // The last step releases the lock: the command's work is done by then.
    let last = steps.lines().last().unwrap();
    assert!(last.contains("\tremove\t") && last.contains("/locks/"), "{steps}");
    steps.lines().count() as u64 - 1
}

#[test]
fn a_backup_or_prune_whose_lock_was_taken_away_stops_cleanly() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    backup(&s, &phone);
    for i in 0..40 {
        write(&phone.join(format!("big/{i}.bin")), &bytes(1000 + i, 500_000, false));
    }
    // At whichever step the lock goes, up to the record's last sync, no snapshot is left.
    let args = ["backup", "--device", "p", phone.to_str().unwrap()];
    let pristine = s.path("pristine");
    copy_tree(&s.repo, &pristine);
    let steps = durable_steps(&s, &args);
    for at in 2..=steps {
        std::fs::remove_dir_all(&s.repo).unwrap();
        copy_tree(&pristine, &s.repo);
        let Some(out) = lose_lock_at(&s, &args, at) else {
            assert!(at + 2 >= steps, "the backup ended before step {at} of {steps}");
            continue;
        };
        assert_eq!(code(&out), 11, "lock lost at step {at} of {steps}: {}", stderr(&out));
        assert!(stderr(&out).contains("was removed by another process"), "{}", stderr(&out));
        assert_eq!(snapshot_ids(&s).len(), 1, "lock lost at step {at} of {steps}: a snapshot was written");
        check_ok(&s, false);
    }

    backup(&s, &phone);
    s.ok(&["forget", "--keep-last", "1"]);
    let before = pack_files(&s.repo);
    let out = lose_lock_of(&s, &["prune"]);
    assert_eq!(code(&out), 11, "{}", stderr(&out));
    assert_eq!(pack_files(&s.repo), before, "nothing deleted without the lock");
    check_ok(&s, true);
    // Later, it stops before its next deletion; whatever it did stays consistent.
    let pristine = s.path("pristine-prune");
    copy_tree(&s.repo, &pristine);
    let steps = durable_steps(&s, &["prune"]);
    for at in 3..=steps {
        std::fs::remove_dir_all(&s.repo).unwrap();
        copy_tree(&pristine, &s.repo);
        let Some(out) = lose_lock_at(&s, &["prune"], at) else {
            assert!(at + 2 >= steps, "prune ended before step {at} of {steps}");
            check_ok(&s, true);
            continue;
        };
        assert!(matches!(code(&out), 0 | 11), "lock lost at step {at} of {steps}: {}", stderr(&out));
        check_ok(&s, true);
        restore_ok(&s, "latest", &phone, "after-prune");
    }
}

#[test]
fn hostile_configs_are_refused_quickly_with_exit_13() {
    let s = Scratch::with_repo();
    let config_path = s.repo.join("config");
    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    for (field, value) in [
        ("memory_kib", serde_json::json!(4_000_000_000u64)),
        ("iterations", serde_json::json!(4_000_000)),
        ("parallelism", serde_json::json!(0)),
    ] {
        let mut config = original.clone();
        config["keys"]["kdf"][field] = value;
        std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
        let started = std::time::Instant::now();
        let out = s.run(&["snapshots"]);
        assert_eq!(code(&out), 13, "{field}: {}", stderr(&out));
        assert!(stderr(&out).contains("argon2 costs out of range"), "{}", stderr(&out));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
    let mut config = original.clone();
    config["pack_size"] = serde_json::json!(u64::MAX);
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    assert_eq!(code(&s.run(&["snapshots"])), 13);

    // Damaged sealed keys cannot be told from a wrong password: both are said.
    let mut config = original.clone();
    let sealed = config["keys"]["sealed_keys"].as_str().unwrap().to_string();
    let flipped = format!("{}{}", if sealed.starts_with('0') { "1" } else { "0" }, &sealed[1..]);
    config["keys"]["sealed_keys"] = serde_json::json!(flipped);
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let out = s.run(&["snapshots"]);
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("sealed keys are damaged"), "{}", stderr(&out));
}

#[test]
fn init_never_writes_a_new_repository_over_one_whose_config_is_gone() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    backup(&s, &phone);
    std::fs::remove_file(s.repo.join("config")).unwrap();
    let out = s.run(&["snapshots"]);
    assert_eq!(code(&out), 13);
    assert!(stderr(&out).contains("config file is missing"), "{}", stderr(&out));
    let out = s.run(&["init"]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("will not create a new repository over this data"), "{}", stderr(&out));
    assert!(!s.repo.join("config").exists());
}

#[test]
fn stray_files_left_by_users_or_sync_tools_block_nothing() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    backup(&s, &phone);
    std::fs::write(s.repo.join("data/README"), b"x").unwrap();
    std::fs::create_dir_all(s.repo.join("data/.stfolder")).unwrap();
    std::fs::write(s.repo.join("data/.DS_Store"), b"x").unwrap();
    let some_prefix =
        files_in(&s.repo.join("data")).into_iter().find(|p| p.is_dir() && p.file_name().unwrap().len() == 2).unwrap();
    std::fs::write(some_prefix.join("notes.txt"), b"x").unwrap();
    std::fs::write(s.repo.join("index/.DS_Store"), b"x").unwrap();
    std::fs::write(s.repo.join("snapshots/Thumbs.db"), b"x").unwrap();
    restore_ok(&s, "latest", &phone, "restored");
    backup(&s, &phone);
    check_ok(&s, true);
    s.ok(&["prune"]);
    check_ok(&s, true);
    assert!(s.repo.join("data/README").exists(), "prune deletes packs only");
    // A temporary pack a killed run left a moment ago: prune holds the repository alone, so it
    // is a leftover whatever its age.
    std::fs::write(s.repo.join("tmp/0123456789abcdef.pack"), b"half a pack").unwrap();
    let check = s.ok(&["check"]);
    assert!(check.contains("leftover temporary file"), "{check}");
    s.ok(&["prune"]);
    assert!(files_in(&s.repo.join("tmp")).is_empty(), "{:?}", files_in(&s.repo.join("tmp")));
}

#[test]
fn prune_keeps_the_intact_copy_when_the_other_is_damaged() {
    for damaged_copy in [0, 1] {
        let s = Scratch::with_repo();
        let phone = s.path("phone");
        sample_phone(&phone);
        let copies = stored_twice(&s, &phone);
        let packs = if damaged_copy == 0 { &copies.0 } else { &copies.1 };
        let data_pack = packs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
        flip_byte(data_pack, 100_000);
        restore_ok(&s, "latest", &phone, "before-prune");
        s.ok(&["prune"]);
        restore_ok(&s, "latest", &phone, "after-prune");
        check_ok(&s, false);
    }
}

#[test]
fn reads_find_an_intact_copy_the_index_does_not_name() {
    // `repair index` names one copy of each blob, the first pack listed: in one of the two
    // rounds that is the damaged one.
    for damaged_copy in [0, 1] {
        let s = Scratch::with_repo();
        let phone = s.path("phone");
        sample_phone(&phone);
        let copies = stored_twice(&s, &phone);
        let packs = if damaged_copy == 0 { &copies.0 } else { &copies.1 };
        let data_pack = packs.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
        flip_byte(data_pack, 100_000);
        s.ok(&["repair", "index"]);
        restore_ok(&s, "latest", &phone, "after-repair");
        s.ok(&["prune"]);
        restore_ok(&s, "latest", &phone, "after-prune");
        check_ok(&s, false);
        let repaired = s.ok(&["repair", "packs"]);
        assert!(repaired.contains(", 0 lost"), "the damaged blob has an intact copy: {repaired}");
        check_ok(&s, true);
    }
}

#[test]
fn forget_whose_lock_was_taken_away_removes_nothing() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    for _ in 0..3 {
        backup(&s, &phone);
    }
    let before = snapshot_ids(&s);
    let out = lose_lock_of(&s, &["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(code(&out), 11, "{}", stderr(&out));
    assert_eq!(snapshot_ids(&s), before);
}

#[test]
fn an_old_index_naming_pruned_packs_does_not_hide_the_repacked_copy() {
    let s = Scratch::new();
    s.ok(&["init", "--pack-size-mib", "1"]);
    let phone = s.path("phone");
    for i in 0..3 {
        write(&phone.join(format!("DCIM/{i}.jpg")), &bytes(50 + i, 300_000, false));
    }
    backup(&s, &phone);
    std::fs::remove_file(phone.join("DCIM/0.jpg")).unwrap();
    backup(&s, &phone);
    s.ok(&["forget", "--keep-last", "1"]);
    let old_index = s.path("old-index");
    copy_tree(&s.repo.join("index"), &old_index);
    let pruned = s.json(&["prune"]);
    assert!(pruned["packs_repacked"].as_u64().unwrap() > 0, "the scenario needs a repack: {pruned}");
    std::fs::remove_dir_all(s.repo.join("index")).unwrap();
    copy_tree(&old_index, &s.repo.join("index"));
    restore_ok(&s, "latest", &phone, "restored");
}

#[test]
fn odd_things_in_place_of_repository_files_neither_hang_nor_block() {
    let s = Scratch::with_repo();
    let (phone, _first, second) = two_snapshots(&s);
    let ids = snapshot_ids(&s);
    // A FIFO where a record was: opening it must not wait for a writer forever.
    let fifo = s.repo.join("snapshots").join(&ids[0]);
    std::fs::remove_file(&fifo).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let out = run_bounded(&s, &["snapshots"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("not a regular file"), "{}", stderr(&out));
    // A dangling link where the other was: damage, not a record removed meanwhile.
    let link = s.repo.join("snapshots").join(&ids[1]);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/nonexistent/record", &link).unwrap();
    let out = run_bounded(&s, &["prune"]);
    assert_eq!(code(&out), 13, "prune refuses: {}", stderr(&out));
    assert!(stderr(&out).contains("a link to nothing"), "{}", stderr(&out));
    s.ok(&["repair", "snapshots"]);
    // A folder where an index file was.
    let index = index_files(&s)[0].clone();
    std::fs::remove_file(&index).unwrap();
    std::fs::create_dir(&index).unwrap();
    s.ok(&["repair", "index"]);
    check_ok(&s, false);
    backup(&s, &phone);
    restore_ok(&s, "latest", &second, "restored");
    check_ok(&s, true);
    // A FIFO, a folder or a link to a device where the config was: damage (exit 13), no hang.
    let config = s.repo.join("config");
    let kept = s.path("config-kept");
    std::fs::rename(&config, &kept).unwrap();
    for odd in ["fifo", "folder", "device"] {
        match odd {
            "fifo" => assert!(std::process::Command::new("mkfifo").arg(&config).status().unwrap().success()),
            "folder" => std::fs::create_dir(&config).unwrap(),
            _ => std::os::unix::fs::symlink("/dev/zero", &config).unwrap(),
        }
        let out = run_bounded(&s, &["snapshots"]);
        assert_eq!(code(&out), 13, "{odd}: {}", stderr(&out));
        assert!(stderr(&out).contains("config: not a regular file"), "{odd}: {}", stderr(&out));
        let _ = std::fs::remove_file(&config).or_else(|_| std::fs::remove_dir(&config));
    }
    std::fs::rename(&kept, &config).unwrap();
    check_ok(&s, false);
}

#[test]
fn a_config_claiming_format_0_is_damage() {
    let s = Scratch::with_repo();
    let path = s.repo.join("config");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["format_version"] = serde_json::json!(0);
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    assert_eq!(code(&s.run(&["snapshots"])), 13);
}

/// The files of `phone` that `restore latest` gives back whole.
fn files_restored_whole(s: &Scratch, phone: &Path, name: &str) -> Vec<String> {
    let out = s.path(name);
    let _ = s.run(&["restore", "latest", "--target", out.to_str().unwrap()]);
    let mut whole = Vec::new();
    for file in files_in(phone) {
        let rel = file.strip_prefix(phone).unwrap();
        if std::fs::read(out.join(rel)).ok() == Some(std::fs::read(&file).unwrap()) {
            whole.push(rel.to_string_lossy().into_owned());
        }
    }
    whole
}

#[test]
fn a_pack_cut_short_keeps_its_intact_blobs_through_repair_index_prune_and_repair_packs() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        write(&phone.join(name), &bytes(10 + i as u64, 700_000, false));
    }
    backup(&s, &phone);
    let pack = pack_files(&s.repo).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    std::fs::File::options().write(true).open(&pack).unwrap().set_len(2_500_000).unwrap();
    let whole = files_restored_whole(&s, &phone, "before");
    assert_eq!(whole.len(), 3, "the cut loses one file: {whole:?}");
    // The pack's own list (at its end) is gone: the index is the only way to a, b and c.
    s.ok(&["repair", "index"]);
    assert_eq!(files_restored_whole(&s, &phone, "after-repair-index"), whole);
    s.ok(&["prune"]);
    assert!(pack.exists(), "a pack whose own list cannot be read is never deleted");
    assert_eq!(files_restored_whole(&s, &phone, "after-prune"), whole);
    s.ok(&["repair", "packs"]);
    assert_eq!(files_restored_whole(&s, &phone, "after-repair-packs"), whole);
    // The phone still has every file: the next backup makes the snapshot whole again.
    backup(&s, &phone);
    check_ok(&s, true);
    restore_ok(&s, "latest", &phone, "healed");
}

#[test]
fn a_copy_in_a_pack_cut_short_costs_no_snapshot_through_prune_and_every_repair() {
    for cut_copy in [0, 1] {
        let s = Scratch::with_repo();
        let phone = s.path("phone");
        sample_phone(&phone);
        let copies = stored_twice(&s, &phone);
        let packs = if cut_copy == 0 { &copies.0 } else { &copies.1 };
        // The smallest pack holds the folder listings; cut it short of its own list.
        let listings = packs.iter().min_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
        std::fs::File::options().write(true).open(listings).unwrap().set_len(400).unwrap();
        let before = snapshot_ids(&s);
        s.ok(&["prune"]);
        for repair in ["index", "packs", "snapshots"] {
            s.ok(&["repair", repair]);
        }
        assert_eq!(snapshot_ids(&s), before, "round {cut_copy}");
        restore_ok(&s, "latest", &phone, "after-repairs");
        check_ok(&s, true);
    }
}

#[test]
fn a_damaged_folder_listing_is_stored_again_by_the_next_backup_and_check_names_repair_packs() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("big.bin"), &bytes(1, 3_000_000, false));
    write(&phone.join("d/a.txt"), &bytes(2, 5_000, true));
    write(&phone.join("d/small.bin"), &bytes(3, 20_000, false));
    backup(&s, &phone);
    // The smallest pack holds the folder listings: damage its first blob.
    let listings = pack_files(&s.repo).into_iter().min_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    flip_byte(&listings, 20);
    let check = s.run(&["check"]);
    assert_eq!(code(&check), 13);
    let report = String::from_utf8_lossy(&check.stdout).to_string();
    let packs_at = report.find("repair: phonebak repair packs").expect(&report);
    assert!(report.find("repair: phonebak repair snapshots").is_none_or(|at| at > packs_at), "{report}");
    // Whatever the user runs first, the next backup of the unchanged phone stores the damaged
    // listing again instead of pointing the new snapshot at the damaged copy.
    backup(&s, &phone);
    restore_ok(&s, "latest", &phone, "next");
    s.ok(&["repair", "packs"]);
    restore_ok(&s, "latest", &phone, "after-repair-packs");
    backup(&s, &phone);
    check_ok(&s, true);
}

#[test]
fn a_pack_in_the_wrong_folder_is_named_by_check_and_blocks_no_repair() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    backup(&s, &phone);
    let pack = pack_files(&s.repo).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let prefix = pack.parent().unwrap().file_name().unwrap().to_str().unwrap().to_string();
    let other = s.repo.join("data").join(if prefix == "00" { "01" } else { "00" });
    std::fs::create_dir_all(&other).unwrap();
    let moved = other.join(pack.file_name().unwrap());
    std::fs::rename(&pack, &moved).unwrap();
    let check = s.run(&["check"]);
    assert_eq!(code(&check), 13);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains("is in the wrong folder for its name"), "{report}");
    for repair in ["packs", "index"] {
        let out = s.run(&["repair", repair]);
        assert!(out.status.success(), "repair {repair}: {}", stderr(&out));
    }
    assert!(moved.exists(), "nothing deletes it");
    std::fs::rename(&moved, &pack).unwrap();
    restore_ok(&s, "latest", &phone, "back-in-place");
    // A FIFO with a pack's name is named too, and never waited on.
    let fifo = s.repo.join("data").join(&prefix).join(format!("{prefix}{}", "0".repeat(62)));
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let check = run_bounded(&s, &["check"]);
    assert_eq!(code(&check), 13);
    assert!(String::from_utf8_lossy(&check.stdout).contains("is not a regular file"));
    for repair in ["packs", "index"] {
        let out = run_bounded(&s, &["repair", repair]);
        assert!(out.status.success(), "repair {repair}: {}", stderr(&out));
    }
}
