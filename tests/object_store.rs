//! Issue 17: repositories on S3-compatible object storage, against a real SeaweedFS server
//! (tests/common/seaweed.rs) started by the tests.

mod common;

use common::seaweed::{SeaweedFs, SECRET_KEY};
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn backup(s: &Scratch, phone: &Path, device: &str) -> String {
    s.ok(&["backup", "--device", device, phone.to_str().unwrap()])
}

fn snapshot_count(s: &Scratch) -> usize {
    s.json(&["snapshots"]).as_array().unwrap().len()
}

fn check_clean(s: &Scratch) {
    let out = s.run(&["check", "--read-data"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
}

#[test]
fn a_repository_in_a_bucket_backs_up_restores_checks_forgets_prunes_mounts_and_pushes_exactly() {
    let mut s = Scratch::on_object_store();
    s.repo = common::seaweed::shared().new_bucket_repo("family").into();
    // No bucket yet: said, exit 10; then made on request.
    let out = s.run(&["init"]);
    assert_eq!(code(&out), 10, "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist") && stderr(&out).contains("--create-bucket"), "{}", stderr(&out));
    s.ok(&["init", "--create-bucket"]);
    let again = s.run(&["init", "--create-bucket"]);
    assert_eq!(code(&again), 1, "{}", stderr(&again));
    assert!(stderr(&again).contains("is already a phonebak repository"), "{}", stderr(&again));

    let phone = s.path("phone");
    sample_phone(&phone);
    backup(&s, &phone, "pixel");
    let target = s.path("restored");
    s.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&phone, &target);
    check_clean(&s);

    // A day later: one photo more, one file changed; the old snapshot is forgotten and pruned.
    write(&phone.join("DCIM/Camera/IMG_0003.jpg"), &bytes(33, 2_000_000, false));
    write(&phone.join("Documents/notes.txt"), &bytes(34, 90_000, true));
    backup(&s, &phone, "pixel");
    s.ok(&["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(snapshot_count(&s), 1);
    check_clean(&s);
    let target = s.path("restored-2");
    s.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&phone, &target);

    // The mount reads the bucket; `cp -a` out of it gives the phone back.
    let m = Mounted::new(&s, &[]);
    assert_same_tree(&phone, &m.snapshots().join("pixel/latest"));
    let copied = s.path("copied");
    let cp = Command::new("cp").arg("-a").arg(m.snapshots().join("pixel/latest/.")).arg(&copied).status().unwrap();
    assert!(cp.success());
    assert_same_tree(&phone, &copied);
    // Staged through the mount's restore/ (in this user's state folder), then pushed.
    let cp =
        Command::new("cp").arg("-a").arg(m.snapshots().join("pixel/latest/DCIM")).arg(m.restore()).status().unwrap();
    assert!(cp.success());
    drop(m);
    assert!(s.staging().join("DCIM/Camera/IMG_0003.jpg").exists(), "staged in the state folder");
    let new_phone = s.path("new-phone");
    std::fs::create_dir(&new_phone).unwrap();
    let device = format!("dir:{}", new_phone.display());
    s.ok(&["push", "--device", &device]);
    assert_same_tree_but_owner(&phone.join("DCIM"), &new_phone.join("DCIM"));
    // And straight from the repository.
    let other_phone = s.path("other-phone");
    std::fs::create_dir(&other_phone).unwrap();
    s.ok(&["push", "--device", &format!("dir:{}", other_phone.display()), "--from", "pixel/latest:/Documents"]);
    assert_same_tree_but_owner(&phone.join("Documents"), &other_phone.join("Documents"));
}

#[test]
fn two_machines_backing_up_at_once_and_a_prune_from_a_third_leave_a_repository_check_passes() {
    let s = Scratch::with_object_store_repo();
    let (a, b) = (s.path("phone-a"), s.path("phone-b"));
    for (phone, seed) in [(&a, 100), (&b, 200)] {
        for i in 0..12 {
            write(&phone.join(format!("DCIM/{i}.jpg")), &bytes(seed + i, 600_000, false));
        }
        write(&phone.join("shared.txt"), b"the same on both phones");
    }
    backup(&s, &a, "a");
    s.ok(&["forget", "--keep-last", "1"]);
    // Each "machine" has its own state folder.
    let start = |phone: &Path, device: &str, machine: &str| {
        let mut cmd = s.command(&["backup", "--device", device, phone.to_str().unwrap()]);
        cmd.env("XDG_STATE_HOME", s.path(machine)).stdout(std::process::Stdio::piped());
        cmd.stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let first = start(&a, "a", "machine-a");
    let second = start(&b, "b", "machine-b");
    let prune = s.command(&["prune"]).env("XDG_STATE_HOME", s.path("machine-c")).output().unwrap();
    // Whoever came second of the prune and a backup was told the other holds the repository
    // (exit 11), and nothing else happened to it; a backup so refused is run again.
    for (out, phone, device) in [(first, &a, "a"), (second, &b, "b")] {
        let out = out.wait_with_output().unwrap();
        if code(&out) == 11 {
            assert!(stderr(&out).contains("repository is locked: `prune`"), "{}", stderr(&out));
            backup(&s, phone, device);
        } else {
            assert!(out.status.success(), "{}", stderr(&out));
        }
    }
    assert!(matches!(code(&prune), 0 | 11), "{}", stderr(&prune));
    if code(&prune) == 11 {
        assert!(stderr(&prune).contains("repository is locked: `backup`"), "{}", stderr(&prune));
    }
    check_clean(&s);
    for (phone, device) in [(&a, "a"), (&b, "b")] {
        let target = s.path(&format!("restored-{device}"));
        s.ok(&["restore", &format!("{device}/latest"), "--target", target.to_str().unwrap()]);
        assert_same_tree(phone, &target);
    }
    s.ok(&["prune"]);
    check_clean(&s);
}

#[test]
fn a_store_killed_mid_backup_stops_it_with_exit_21_and_no_snapshot_and_the_rerun_completes() {
    let scratch = tempfile::tempdir().unwrap();
    let mut server = SeaweedFs::start(&scratch.path().join("store"));
    let mut s = Scratch::new();
    s.repo = server.new_repo("family").into();
    s.ok(&["init", "--create-bucket", "--pack-size-mib", "1"]);
    let phone = s.path("phone");
    for i in 0..60 {
        write(&phone.join(format!("DCIM/{i}.jpg")), &bytes(300 + i, 1_000_000, false));
    }
    let mut child = s
        .command(&["backup", "--device", "p", phone.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once some packs are stored: kill -9 of the server.
    let stored = || {
        let out = s.run(&["stats", "--json"]);
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("\"packs\": 0")
    };
    wait_until("some packs to be stored", || stored() || child.try_wait().unwrap().is_some());
    server.kill();
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(120), "gave up in bounded time");
    assert_eq!(code(&out), 21, "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("cannot be reached") && said.contains("run the command again"), "{said}");
    assert!(!said.contains(SECRET_KEY), "{said}");
    server.restart();
    assert_eq!(snapshot_count(&s), 0, "no snapshot from the killed run");
    check_clean(&s);
    backup(&s, &phone, "p");
    check_clean(&s);
    let target = s.path("restored");
    s.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&phone, &target);
}

#[test]
fn refused_credentials_a_store_that_is_down_and_a_bad_address_have_their_own_exit_codes() {
    let s = Scratch::with_object_store_repo();
    let wrong = s.command(&["snapshots"]).env("AWS_SECRET_ACCESS_KEY", "not-the-secret").output().unwrap();
    assert_eq!(code(&wrong), 22, "{}", stderr(&wrong));
    assert!(stderr(&wrong).contains("refused access"), "{}", stderr(&wrong));
    assert!(!stderr(&wrong).contains("not-the-secret"), "{}", stderr(&wrong));

    // Nobody listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = format!("s3:http://127.0.0.1:{port}/bucket/repo");
    let out = s.command(&["snapshots"]).env("PHONEBAK_REPO", &down).output().unwrap();
    assert_eq!(code(&out), 21, "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot be reached"), "{}", stderr(&out));

    // A capitalized scheme or a URL is not taken for a folder name.
    for address in ["S3:http://127.0.0.1:1/bucket/repo", "https://store.example/bucket"] {
        let out = s.command(&["init"]).env("PHONEBAK_REPO", address).current_dir(s.dir.path()).output().unwrap();
        assert_eq!(code(&out), 2, "{address}: {}", stderr(&out));
        assert!(stderr(&out).contains("lowercase s3:"), "{}", stderr(&out));
    }
    let made: Vec<String> =
        names(s.dir.path()).into_iter().filter(|n| n.starts_with("S3:") || n.starts_with("https:")).collect();
    assert!(made.is_empty(), "no folder was made: {made:?}");
    let out = s.command(&["snapshots"]).env("PHONEBAK_REPO", "s3:http://127.0.0.1:8333:9/bucket/x").output().unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let with_secret = "s3:https://AKIA:hunter2@store.example/bucket";
    let out = s.command(&["snapshots"]).env("PHONEBAK_REPO", with_secret).output().unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(!stderr(&out).contains("hunter2") && stderr(&out).contains("AWS_ACCESS_KEY_ID"), "{}", stderr(&out));
}

#[test]
fn a_snapshot_made_on_another_machine_appears_in_a_running_mount() {
    let s = Scratch::with_object_store_repo();
    let phone = s.path("phone");
    write(&phone.join("a.txt"), b"first");
    backup(&s, &phone, "pixel");
    let m = Mounted::new(&s, &[]);
    assert_eq!(names(&m.snapshots()), ["pixel"]);
    let tablet = s.path("tablet");
    write(&tablet.join("b.txt"), b"from the tablet");
    let out = s
        .command(&["backup", "--device", "tablet", tablet.to_str().unwrap()])
        .env("XDG_STATE_HOME", s.path("other"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    wait_until("the tablet to appear", || names(&m.snapshots()).contains(&"tablet".to_string()));
    assert_eq!(std::fs::read(m.snapshots().join("tablet/latest/b.txt")).unwrap(), b"from the tablet");
}

#[test]
fn copy_carries_snapshots_to_the_bucket_and_back_with_other_passwords_reading_only_what_is_new() {
    let s = Scratch::with_object_store_repo();
    let local = s.path("local");
    let local_password = s.path("local-password");
    std::fs::write(&local_password, "another password\n").unwrap();
    let on_local = |args: &[&str]| {
        let mut cmd = s.command(args);
        cmd.env("PHONEBAK_REPO", &local).env_remove("PHONEBAK_PASSWORD").arg("--password-file").arg(&local_password);
        cmd.output().unwrap()
    };
    assert!(on_local(&["init"]).status.success());
    let phone = s.path("phone");
    sample_phone(&phone);
    assert!(on_local(&["backup", "--device", "pixel", phone.to_str().unwrap()]).status.success());
    // `copy --from LOCAL` into the bucket (--repo).
    let copy = |from: &Path| {
        let mut cmd = s.command(&["copy", "--json", "--from"]);
        cmd.arg(from).arg("--from-password-file").arg(&local_password);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // Folder to bucket: everything is read once and stored.
    let first = copy(&local);
    assert_eq!(first["copied"].as_array().unwrap().len(), 1, "{first}");
    check_clean(&s);
    let target = s.path("from-bucket");
    s.ok(&["restore", "pixel/latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&phone, &target);
    // Again: nothing to do.
    let again = copy(&local);
    assert_eq!((again["copied"].as_array().unwrap().len(), again["blobs_read"].as_u64()), (0, Some(0)), "{again}");
    // The next day: one new photo; only its chunks are read.
    write(&phone.join("DCIM/Camera/IMG_0009.jpg"), &bytes(99, 1_500_000, false));
    assert!(on_local(&["backup", "--device", "pixel", phone.to_str().unwrap()]).status.success());
    let next = copy(&local);
    assert_eq!(next["copied"].as_array().unwrap().len(), 1, "{next}");
    let read = next["blobs_read"].as_u64().unwrap();
    assert!((1..=3).contains(&read), "only the new photo's chunks are read: {next}");
    let target = s.path("from-bucket-2");
    s.ok(&["restore", "pixel/latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&phone, &target);

    // Bucket back into a new folder repository (the lake took the laptop).
    let fresh = s.path("fresh");
    let mut init = s.command(&["init"]);
    init.env("PHONEBAK_REPO", &fresh).env("PHONEBAK_PASSWORD", "third");
    assert!(init.output().unwrap().status.success());
    let mut back = s.command(&["copy", "--to"]);
    back.arg(&fresh).env("PHONEBAK_TO_PASSWORD", "third");
    let out = back.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let restored = s.path("from-fresh");
    let mut restore = s.command(&["restore", "pixel/latest", "--target", restored.to_str().unwrap()]);
    restore.env("PHONEBAK_REPO", &fresh).env("PHONEBAK_PASSWORD", "third");
    assert!(restore.output().unwrap().status.success());
    assert_same_tree(&phone, &restored);
    // What came from the bucket is not copied back into it.
    let mut round = s.command(&["copy", "--json", "--from"]);
    round.arg(&fresh).env("PHONEBAK_FROM_PASSWORD", "third");
    let out = round.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let round: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(round["copied"].as_array().unwrap().len(), 0, "{round}");
    assert_eq!(snapshot_count(&s), 2);

    // A wrong destination password: exit 12, nothing copied.
    let mut wrong = s.command(&["copy", "--from"]);
    wrong.arg(&local).arg("--from-password-file").arg(&local_password).env("PHONEBAK_PASSWORD", "wrong");
    assert_eq!(code(&wrong.output().unwrap()), 12);
}

#[test]
fn copy_never_carries_damage_over() {
    let s = Scratch::with_object_store_repo();
    let local = s.path("local");
    let mut init = s.command(&["init"]);
    init.env("PHONEBAK_REPO", &local);
    assert!(init.output().unwrap().status.success());
    let phone = s.path("phone");
    sample_phone(&phone);
    let mut backup = s.command(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    backup.env("PHONEBAK_REPO", &local);
    assert!(backup.output().unwrap().status.success());
    damage_largest_pack(&local, 100_000);
    let mut copy = s.command(&["copy", "--from"]);
    copy.arg(&local);
    let out = copy.output().unwrap();
    assert_eq!(code(&out), 13, "{}", stderr(&out));
    assert_eq!(snapshot_count(&s), 0, "no snapshot that lacks data");
    check_clean(&s);
}

#[test]
fn the_mount_keeps_listings_in_its_disk_cache_and_reads_a_photo_without_its_whole_pack() {
    let s = Scratch::with_object_store_repo();
    let phone = s.path("phone");
    // 36 MB of photos, the first 32 MiB in one pack: reading one costs its own bytes and those
    // of the few files after it that the mount reads ahead, not the pack.
    for i in 0..12 {
        write(&phone.join(format!("DCIM/IMG_{i}.jpg")), &bytes(500 + i, 3_000_000, false));
    }
    backup(&s, &phone, "pixel");
    let cache = s.path("disk-cache");
    let log = s.path("mount.log");
    let options = format!("cache_dir={},disk_cache_size=64M,log={}", cache.display(), log.display());
    // What a mount moved, as its log says at unmount.
    let moved = |extra: &[&str], read: &dyn Fn(&Path)| -> u64 {
        let _ = std::fs::remove_file(&log);
        let mut args = vec!["-o", &options, "-o", "cache_size=16M"];
        args.extend_from_slice(extra);
        let m = Mounted::new(&s, &args);
        read(&m.snapshots().join("pixel/latest/DCIM"));
        drop(m);
        wait_until("the daemon to log its traffic", || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("unmounted; the object store was asked")
        });
        let said = std::fs::read_to_string(&log).unwrap();
        said.split(" bytes in").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap()
    };
    // A look into the middle of a photo (a viewer's seek): about one frame of it.
    let peek = moved(&[], &|dcim| {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 4096];
        std::fs::File::open(dcim.join("IMG_3.jpg")).unwrap().read_exact_at(&mut buf, 1_500_000).unwrap();
        assert_eq!(buf, bytes(503, 3_000_000, false)[1_500_000..1_504_096]);
    });
    // The frame's 1 MiB block, and the index's and listings' 1 MiB windows (kept on disk).
    assert!(peek < 4_000_000, "a seek into a photo reads about a frame, not the pack: {peek} bytes");
    // The whole photo (and what the mount reads ahead of a reader going through a folder).
    let whole =
        moved(&[], &|dcim| assert_eq!(std::fs::read(dcim.join("IMG_3.jpg")).unwrap(), bytes(503, 3_000_000, false)));
    assert!(whole < 32 << 20, "less than its 32 MiB pack: {whole} bytes");
    let cached = files_under(&cache);
    assert!(!cached.is_empty(), "index pages and listings are kept");
    let total: u64 = cached.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    assert!(total < 3_000_000, "photos are not kept on disk: {total}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the cache is private");
    // Served from the cache, a damaged entry is noticed, dropped and fetched again.
    for file in &cached {
        let mut bytes = std::fs::read(file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(file, bytes).unwrap();
    }
    let m = Mounted::new(&s, &["-o", &options]);
    assert_same_tree(&phone, &m.snapshots().join("pixel/latest"));
}

/// Runs `args` killed (SIGKILL) before its first, second, ... request that writes or deletes,
/// until a run gets through; after each, `check --read-data` passes and `verify` holds.
fn killed_at_each_write(s: &Scratch, args: &[&str], verify: &dyn Fn(u64)) {
    use std::os::unix::process::ExitStatusExt;
    for n in 1.. {
        let out = s.command(args).env("PHONEBAK_CRASH_AT", n.to_string()).output().unwrap();
        if out.status.success() {
            assert!(n > 2, "{args:?} was never stopped: built with --features test-hooks?");
            return;
        }
        assert_eq!(out.status.signal(), Some(9), "{args:?} at write {n}: {}", stderr(&out));
        check_clean(s);
        verify(n);
        assert!(n < 500, "{args:?} never completed");
    }
}

#[test]
fn every_prefix_of_a_backup_and_a_prune_on_the_object_store_leaves_a_repository_check_passes() {
    let s = Scratch::with_object_store_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    backup(&s, &phone, "pixel");
    let first = s.path("first");
    s.ok(&["restore", "latest", "--target", first.to_str().unwrap()]);
    for i in 0..5 {
        write(&phone.join(format!("DCIM/new-{i}.jpg")), &bytes(700 + i, 400_000, false));
    }
    std::fs::remove_file(phone.join("DCIM/Camera/IMG_0002.jpg")).unwrap();
    killed_at_each_write(&s, &["backup", "--device", "pixel", phone.to_str().unwrap()], &|n| {
        assert_eq!(snapshot_count(&s), 1, "killed at write {n}: no new snapshot, the old one kept");
    });
    assert_eq!(snapshot_count(&s), 2);
    s.ok(&["forget", "--keep-last", "1"]);
    killed_at_each_write(&s, &["prune"], &|n| {
        let target = s.path(&format!("after-prune-{n}"));
        s.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
        assert_same_tree(&phone, &target);
    });
    check_clean(&s);
}

#[test]
fn copy_refuses_one_repository_under_two_addresses_and_a_round_trip_brings_back_no_duplicate() {
    let s = Scratch::with_object_store_repo();
    let phone = s.path("phone");
    write(&phone.join("a.txt"), b"round and round");
    backup(&s, &phone, "pixel");
    let alias = s.repo.to_str().unwrap().replace("127.0.0.1", "localhost");
    let out = s.command(&["copy", "--from", &alias]).output().unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("the same repository"), "{}", stderr(&out));
    assert_eq!(snapshot_count(&s), 1);

    // The bucket to B, B to C, C back to the bucket: it is the same backup all along.
    let (b, c) = (s.path("b"), s.path("c"));
    for folder in [&b, &c] {
        let out = s.command(&["init"]).env("PHONEBAK_REPO", folder).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let copy = |from: &str, to: &str| {
        let out = s.command(&["copy", "--from", from, "--to", to]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let address = s.repo.to_str().unwrap().to_string();
    copy(&address, b.to_str().unwrap());
    copy(b.to_str().unwrap(), c.to_str().unwrap());
    copy(c.to_str().unwrap(), &address);
    assert_eq!(snapshot_count(&s), 1, "no duplicate came back");
    check_clean(&s);
}

#[test]
fn a_store_with_its_own_certificate_authority_is_trusted_with_s3_ca_file_and_a_profile_gives_the_keys() {
    let scratch = tempfile::tempdir().unwrap();
    let server = SeaweedFs::start_tls(&scratch.path().join("store"));
    let mut s = Scratch::new();
    s.repo = server.new_repo("family").into();
    // Not trusted: said as such, exit 21, nothing made.
    let out = s.run(&["init", "--create-bucket"]);
    assert_eq!(code(&out), 21, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("TLS certificate is not trusted") && stderr(&out).contains("--s3-ca-file"),
        "{}",
        stderr(&out)
    );
    let ca = server.ca_file();
    let ca = ca.to_str().unwrap();
    s.ok(&["init", "--create-bucket", "--s3-ca-file", ca]);
    let phone = s.path("phone");
    write(&phone.join("a.txt"), b"over TLS");
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap(), "--s3-ca-file", ca]);

    // The keys from a profile of ~/.aws/credentials instead of the variables.
    let home = s.path("home");
    write(
        &home.join(".aws/credentials"),
        format!(
            "[family]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            common::seaweed::ACCESS_KEY,
            SECRET_KEY
        )
        .as_bytes(),
    );
    let mut cmd = s.command(&["snapshots", "--json", "--s3-ca-file", ca]);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("HOME", &home)
        .env("AWS_PROFILE", "family");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

#[test]
fn copies_running_at_once_on_several_machines_store_each_snapshot_once() {
    let s = Scratch::with_object_store_repo();
    let local = s.path("local");
    let out = s.command(&["init"]).env("PHONEBAK_REPO", &local).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let phone = s.path("phone");
    for day in 0..3 {
        write(&phone.join(format!("day-{day}.txt")), format!("day {day}").as_bytes());
        let out = s
            .command(&["backup", "--device", "x", phone.to_str().unwrap()])
            .env("PHONEBAK_REPO", &local)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let copies: Vec<_> = (0..4)
        .map(|machine| {
            let mut cmd = s.command(&["copy", "--from", local.to_str().unwrap()]);
            cmd.env("XDG_STATE_HOME", s.path(&format!("machine-{machine}")));
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for copy in copies {
        let out = copy.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(snapshot_count(&s), 3, "one copy of each snapshot, however many copies ran");
    s.ok(&["forget", "--keep-last", "2"]);
    let kept: Vec<String> =
        s.json(&["snapshots"]).as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    check_clean(&s);
}

#[test]
fn a_fifo_or_a_folder_in_place_of_a_disk_cache_entry_is_a_miss_not_a_hang() {
    let s = Scratch::with_object_store_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    backup(&s, &phone, "pixel");
    s.ok(&["ls", "latest"]);
    let cache = s.path("cache/phonebak");
    let entries = files_under(&cache);
    assert!(!entries.is_empty(), "the listings are cached");
    for (n, entry) in entries.iter().enumerate() {
        std::fs::remove_file(entry).unwrap();
        if n % 2 == 0 {
            let made = Command::new("mkfifo").arg(entry).status().unwrap();
            assert!(made.success());
        } else {
            std::fs::create_dir(entry).unwrap();
        }
    }
    let out = run_bounded(&s, &["ls", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let target = s.path("restored");
    let out = run_bounded(&s, &["restore", "latest", "--target", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&phone, &target);
}

/// A restore reads its packs in pieces of megabytes, neighbours together whichever files they
/// belong to: a request per few megabytes, not one per file or chunk, and each byte about once.
/// `restore --json` says what the store was asked.
#[test]
fn a_restore_from_the_bucket_reads_pieces_of_packs_not_a_request_per_file() {
    let s = Scratch::with_object_store_repo();
    let phone = s.path("phone");
    for i in 0..40 {
        write(&phone.join(format!("DCIM/IMG_{i:02}.jpg")), &bytes(600 + i, 400_000, false));
    }
    for i in 0..300 {
        write(&phone.join(format!("Android/data/app/f{i:03}.json")), &bytes(1000 + i, 3_000, true));
    }
    backup(&s, &phone, "pixel");
    let out = s.path("out");
    let said = s.json(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&phone, &out);
    let requests = said["store"]["requests"].as_u64().unwrap();
    let moved = said["store"]["bytes_from_store"].as_u64().unwrap();
    // The config, listings, an index file, the record, the trees, and the 17 MB of data in a
    // few pieces (340 files: one request each was the old way).
    assert!(requests < 20, "{requests} requests for 340 files: {said}");
    assert!(moved < 20_000_000, "{moved} bytes read for 17 MB of files: {said}");
    let folder = Scratch::with_repo();
    let local = folder.json(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    assert!(local["store"].is_null(), "a folder repository has no store traffic: {local}");
}

/// A lock's refresh writes it only over the version it saw (If-Match on the store): a lock that
/// another machine removed as stale stays removed, and its holder learns that it lost it.
#[test]
fn a_lock_refresh_never_brings_back_a_lock_removed_as_stale() {
    use phonebak::repo::storage::{s3::S3Options, RepoLocation};
    use phonebak::repo::StorageError;
    // This process's own client signs with these (the same the tests' commands are given).
    std::env::set_var("AWS_ACCESS_KEY_ID", common::seaweed::ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    let s = Scratch::new();
    let bucket = RepoLocation::parse(std::ffi::OsStr::new(&common::seaweed::shared().new_repo("locks"))).unwrap();
    let folder = RepoLocation::Folder(s.path("folder-repo"));
    for location in [bucket, folder] {
        let storage = location.open(&S3Options::default()).unwrap();
        storage.create(false).unwrap();
        storage.write("locks/0123", b"a lock").unwrap();
        assert!(storage.rewrite_existing("locks/0123", b"a lock").unwrap(), "{location:?}");
        storage.delete("locks/0123").unwrap();
        assert!(!storage.rewrite_existing("locks/0123", b"a lock").unwrap(), "{location:?}");
        assert!(matches!(storage.size("locks/0123"), Err(StorageError::NotFound(_))), "{location:?}: brought back");
    }
}

/// A pack cut short in the bucket (the store answers a range past its end with an error of its
/// own) is damage to the files whose chunks were in the lost part, not a store that is down:
/// those are listed (exit 13) and every other file is restored.
#[test]
fn a_truncated_pack_in_the_bucket_fails_only_the_files_in_its_lost_part() {
    use phonebak::repo::storage::{s3::S3Options, RepoLocation};
    std::env::set_var("AWS_ACCESS_KEY_ID", common::seaweed::ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    let s = Scratch::with_object_store_repo();
    let phone = s.path("phone");
    for i in 0..10 {
        write(&phone.join(format!("DCIM/IMG_{i}.jpg")), &bytes(700 + i, 1_000_000, false));
    }
    backup(&s, &phone, "pixel");
    let storage = RepoLocation::parse(s.repo.as_os_str()).unwrap().open(&S3Options::default()).unwrap();
    let packs = storage.list("data").unwrap();
    let largest = packs.iter().max_by_key(|p| p.size).unwrap();
    let whole = storage.read(&largest.name, u64::MAX).unwrap();
    storage.write(&largest.name, &whole[..whole.len() / 2]).unwrap();
    let out = s.path("out");
    let restore = s.run(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(code(&restore), 13, "{}", stderr(&restore));
    let (mut restored, mut failed) = (0, 0);
    for i in 0..10 {
        let name = format!("DCIM/IMG_{i}.jpg");
        match std::fs::read(out.join(&name)) {
            Ok(data) => {
                assert_eq!(data, bytes(700 + i, 1_000_000, false), "{name}");
                restored += 1;
            }
            Err(_) => {
                assert!(stderr(&restore).contains(&name), "{name} not named: {}", stderr(&restore));
                failed += 1;
            }
        }
    }
    assert!(restored >= 3 && failed >= 3, "{restored} restored, {failed} failed: {}", stderr(&restore));
    let leftovers: Vec<_> =
        files_under(&out).into_iter().filter(|p| p.to_string_lossy().contains(".phonebak-restore")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A mount whose store goes down answers each read that needs the store with an error, at once
/// after the first: a reader going through thousands of files does not wait out every request's
/// retries (about 20 s each) for each file. Once the store is back, reads work again.
#[test]
fn a_mount_whose_store_went_down_fails_reads_at_once_not_each_after_its_retries() {
    let scratch = tempfile::tempdir().unwrap();
    let mut server = SeaweedFs::start(&scratch.path().join("store"));
    let mut s = Scratch::new();
    s.repo = server.new_repo("family").into();
    s.ok(&["init", "--create-bucket"]);
    let phone = s.path("phone");
    for i in 0..20 {
        write(&phone.join(format!("DCIM/{i:02}/IMG.jpg")), &bytes(400 + i, 300_000, false));
    }
    backup(&s, &phone, "p");
    let m = Mounted::new(&s, &[]);
    let latest = m.snapshots().join("p/latest");
    assert!(latest.join("DCIM").is_dir());
    server.kill();
    let started = std::time::Instant::now();
    let mut failed = 0;
    for i in 0..20 {
        if std::fs::read(latest.join(format!("DCIM/{i:02}/IMG.jpg"))).is_err() {
            failed += 1;
        }
    }
    let took = started.elapsed();
    assert!(failed >= 19, "{failed} of 20 reads failed with the store down");
    assert!(took < Duration::from_secs(90), "20 reads with the store down took {took:?}");
    server.restart();
    wait_until_long(|| std::fs::read(latest.join("DCIM/05/IMG.jpg")).is_ok_and(|b| b == bytes(405, 300_000, false)));
}

/// Waits up to 2 minutes (a mount asks a store that was down again after 30 s).
fn wait_until_long(mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(120), "reads did not come back after the store did");
        std::thread::sleep(Duration::from_millis(500));
    }
}
