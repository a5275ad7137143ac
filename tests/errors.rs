//! Bad input gets an exact message and a distinct exit code, and nothing is lost.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn missing_repository_exits_10() {
    let s = Scratch::new();
    let out = s.run(&["snapshots"]);
    assert_eq!(code(&out), 10);
    assert!(stderr(&out).contains("no phonebak repository at"), "{}", stderr(&out));
}

#[test]
fn init_twice_is_refused() {
    let s = Scratch::with_repo();
    let out = s.run(&["init"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("is already a phonebak repository"));
}

#[test]
fn wrong_or_missing_password_exits_12() {
    let s = Scratch::with_repo();
    let out = s.command(&["snapshots"]).env("PHONEBAK_PASSWORD", "wrong").output().unwrap();
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("wrong password"), "{}", stderr(&out));
    let out =
        s.command(&["snapshots"]).env_remove("PHONEBAK_PASSWORD").stdin(std::process::Stdio::null()).output().unwrap();
    assert_eq!(code(&out), 12);
    assert!(stderr(&out).contains("this repository is encrypted"), "{}", stderr(&out));
}

#[test]
fn password_file_works_and_unencrypted_needs_none() {
    let s = Scratch::new();
    let pw = s.path("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let out =
        s.command(&["init", "--password-file", pw.to_str().unwrap()]).env_remove("PHONEBAK_PASSWORD").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    s.ok(&["snapshots"]); // PHONEBAK_PASSWORD is the same password
    let plain = Scratch::new();
    plain.command(&["init", "--no-encryption"]).env_remove("PHONEBAK_PASSWORD").output().unwrap();
    let out = plain.command(&["snapshots"]).env_remove("PHONEBAK_PASSWORD").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn newer_format_is_refused_with_exit_14() {
    let s = Scratch::with_repo();
    let config_path = s.repo.join("config");
    let text =
        std::fs::read_to_string(&config_path).unwrap().replace("\"format_version\": 2", "\"format_version\": 99");
    std::fs::write(&config_path, text).unwrap();
    let out = s.run(&["snapshots"]);
    assert_eq!(code(&out), 14);
    assert!(
        stderr(&out).contains("repository format 99 is newer than this phonebak understands (up to 2)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn damaged_config_is_corruption_not_a_panic() {
    let s = Scratch::with_repo();
    std::fs::write(s.repo.join("config"), b"\x00garbage").unwrap();
    let out = s.run(&["snapshots"]);
    assert_eq!(code(&out), 13);
    assert!(stderr(&out).contains("config is not a phonebak config"), "{}", stderr(&out));
}

/// Writes a lock file as another live process would.
fn fake_lock(s: &Scratch, kind: &str, pid: u32, host: &str) {
    let record = serde_json::json!({"kind": kind, "hostname": host, "pid": pid, "command": "prune", "time": "2026-11-22T00:00:00+00:00"});
    std::fs::write(s.repo.join("locks/other"), record.to_string()).unwrap();
}

fn this_host() -> String {
    String::from_utf8(std::process::Command::new("hostname").output().unwrap().stdout).unwrap().trim().to_string()
}

#[test]
fn locked_repository_exits_11_and_stale_locks_are_removed() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("a.txt"), b"a");
    let mut holder = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    fake_lock(&s, "exclusive", holder.id(), &this_host());
    let out = s.run(&["backup", "--device", "p", phone.to_str().unwrap()]);
    assert_eq!(code(&out), 11);
    assert!(stderr(&out).contains("repository is locked: `prune`"), "{}", stderr(&out));
    assert!(s.json(&["snapshots"]).as_array().unwrap().is_empty(), "no snapshot while locked");

    // A shared lock held by a live backup does not stop another backup, but stops prune.
    fake_lock(&s, "shared", holder.id(), &this_host());
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    assert_eq!(code(&s.run(&["prune"])), 11);

    holder.kill().unwrap();
    holder.wait().unwrap();
    let out = s.run(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("removing stale lock"), "{}", stderr(&out));
}

#[test]
fn a_lock_claiming_pid_0_or_a_huge_pid_on_this_host_locks_nobody_out() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("a.txt"), b"a");
    for pid in [0, u32::MAX] {
        fake_lock(&s, "exclusive", pid, &this_host());
        let out = s.run(&["backup", "--device", "p", phone.to_str().unwrap()]);
        assert!(out.status.success(), "pid {pid}: {}", stderr(&out));
        assert!(stderr(&out).contains("removing stale lock"), "{}", stderr(&out));
    }
}

#[test]
fn unreadable_files_are_skipped_listed_and_exit_3() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("ok.txt"), b"fine");
    write(&phone.join("secret/locked.txt"), b"no");
    write(&phone.join("private.db"), b"no");
    std::fs::set_permissions(phone.join("private.db"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(phone.join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = s.command(&["backup", "--device", "p", phone.to_str().unwrap()]);
    if is_root() {
        // root reads everything: run as nobody so the permissions bite.
        for dir in [s.dir.path(), phone.as_path(), s.repo.as_path()] {
            std::process::Command::new("chmod").args(["-R", "a+rwX"]).arg(dir).status().unwrap();
        }
        std::fs::set_permissions(phone.join("private.db"), std::fs::Permissions::from_mode(0o000)).unwrap();
        std::fs::set_permissions(phone.join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
        let mut wrapped = std::process::Command::new("setpriv");
        wrapped.args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_phonebak")]);
        wrapped.args(["backup", "--device", "p", phone.to_str().unwrap()]);
        wrapped.env("PHONEBAK_REPO", &s.repo).env("PHONEBAK_PASSWORD", PASSWORD);
        s.isolate(&mut wrapped);
        cmd = wrapped;
    }
    let out = cmd.output().unwrap();
    std::fs::set_permissions(phone.join("secret"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("2 path(s) could not be read"), "{err}");
    assert!(err.contains("private.db: Permission denied"), "{err}");
    assert!(err.contains("secret: Permission denied"), "{err}");
    let listed = s.ok(&["ls", "latest"]);
    assert!(listed.contains("/ok.txt") && !listed.contains("private.db"), "{listed}");
    // A folder that could not be listed is left out, not stored as if it had been empty.
    assert!(!listed.contains("secret"), "{listed}");
    let snaps = s.json(&["snapshots"]);
    assert_eq!(snaps[0]["stats"]["unreadable"], 2);
}

fn temp_files(repo: &std::path::Path) -> Vec<String> {
    names(&repo.join("tmp"))
}

#[test]
fn a_full_disk_exits_15_leaves_nothing_behind_and_a_rerun_reuses_what_was_stored() {
    let s = Scratch::new();
    let disk = SmallDisk::mount(&s.repo, "12m");
    s.ok(&["init", "--pack-size-mib", "2"]);
    let phone = s.path("phone");
    write(&phone.join("small.txt"), b"small");
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    // Many files: the walker must not block on a pipeline whose writer has stopped.
    for i in 0..30 {
        write(&phone.join(format!("DCIM/IMG_{i}.jpg")), &bytes(100 + i, 1_000_000, false));
    }
    let out = run_bounded(&s, &["backup", "--device", "p", phone.to_str().unwrap()]);
    assert_eq!(code(&out), 15, "{}", stderr(&out));
    assert!(stderr(&out).contains("no space left on the repository's disk"), "{}", stderr(&out));
    assert_eq!(s.json(&["snapshots"]).as_array().unwrap().len(), 1, "no partial snapshot");
    assert_eq!(temp_files(&s.repo), Vec::<String>::new(), "temp files left behind");
    assert!(names(&s.repo.join("locks")).is_empty(), "the lock is released");
    let check = s.run(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));

    // With only a few KB free, the first pack write fails.
    let filler = s.repo.join("filler");
    let free = free_bytes(&s.repo);
    std::fs::write(&filler, vec![0u8; (free - 8192) as usize]).unwrap_or(());
    let out = run_bounded(&s, &["backup", "--device", "p", phone.to_str().unwrap()]);
    assert_eq!(code(&out), 15, "{}", stderr(&out));
    assert_eq!(temp_files(&s.repo), Vec::<String>::new(), "temp files left behind");
    std::fs::remove_file(&filler).unwrap();

    // Room again: the rerun completes and does not store again what the first try stored.
    disk.resize("100m");
    let done = s.json(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let stats = &done["stats"];
    assert!(stats["added_bytes"].as_u64().unwrap() < 27_000_000, "packs of the failed run are reused: {stats}");
    let check = s.run(&["check", "--read-data"]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let restored = s.path("restored");
    s.ok(&["restore", "latest", "--target", restored.to_str().unwrap()]);
    assert_same_tree(&phone, &restored);
}

fn free_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut stat) }, 0);
    stat.f_bavail * stat.f_frsize
}

#[test]
fn bad_arguments_are_usage_errors() {
    let s = Scratch::with_repo();
    assert_eq!(code(&s.run(&["backup", "--device", "p"])), 2);
    let out = s.run(&["backup", "--device", "a/b", "."]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("is not a usable device name"), "{}", stderr(&out));
    let out = s.run(&["backup", "--device", "p", "/no/such/folder"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("cannot use \"/no/such/folder\" as a source"), "{}", stderr(&out));
    let out = s.run(&["backup", "--device", "p", "--exclude", "a[", "."]);
    assert!(stderr(&out).contains("invalid pattern"), "{}", stderr(&out));
    let out = s.run(&["forget"]);
    assert!(stderr(&out).contains("nothing to forget by"), "{}", stderr(&out));
    let out = s.run(&["backup", "--device", "p", "--time", "yesterday", "."]);
    assert!(stderr(&out).contains("cannot read the time"), "{}", stderr(&out));
}

/// Runs `args` with standard output a pipe whose reader is gone (`| head -0` at its most abrupt).
fn with_closed_stdout(s: &Scratch, args: &[&str]) -> std::process::Output {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two descriptors, which are then owned here.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (reader, writer) = unsafe {
        use std::os::fd::FromRawFd;
        (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1]))
    };
    drop(reader);
    s.command(args).stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap()
}

#[test]
fn a_closed_output_pipe_ends_the_report_not_the_command() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    let count = |s: &Scratch| s.json(&["snapshots"]).as_array().unwrap().len();
    for args in [
        vec!["backup", "--device", "p", phone.to_str().unwrap()],
        vec!["--json", "backup", "--device", "p", phone.to_str().unwrap()],
        vec!["snapshots"],
        vec!["--json", "snapshots"],
        vec!["ls", "latest"],
        vec!["ls", "-l", "latest"],
        vec!["check"],
        vec!["stats"],
        vec!["forget", "--keep-last", "5"],
    ] {
        let before = count(&s);
        let out = with_closed_stdout(&s, &args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{args:?}: {}", stderr(&out));
        if args.contains(&"backup") {
            assert_eq!(count(&s), before + 1, "{args:?}: the snapshot is saved");
        }
    }
    // A report that cannot be written for another reason is said, with its own exit code.
    let full = s.command(&["snapshots"]).stdout(std::fs::File::create("/dev/full").unwrap()).output().unwrap();
    assert_eq!(code(&full), 15);
    assert!(stderr(&full).contains("report could not be written"), "{}", stderr(&full));
    for ls in [&["ls", "latest"][..], &["ls", "latest", "--json"]] {
        let full = s.command(ls).stdout(std::fs::File::create("/dev/full").unwrap()).output().unwrap();
        assert_eq!(code(&full), 15, "{ls:?}: {}", stderr(&full));
    }
}

/// Runs `args` under `umask` (022 is the usual one, which leaves new files readable by everyone).
fn under_umask(s: &Scratch, umask: &str, args: &[&str]) -> std::process::Output {
    let mut shell = std::process::Command::new("sh");
    let script = format!("umask {umask} && exec \"$0\" \"$@\"");
    shell.args(["-c", &script, env!("CARGO_BIN_EXE_phonebak")]).args(args);
    shell.env("PHONEBAK_REPO", &s.repo).env("PHONEBAK_PASSWORD", PASSWORD);
    s.isolate(&mut shell);
    shell.output().unwrap()
}

fn under_umask_022(s: &Scratch, args: &[&str]) {
    let out = under_umask(s, "022", args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
}

#[test]
fn repository_files_and_folders_are_private_whatever_the_umask() {
    let s = Scratch::new();
    let phone = s.path("phone");
    sample_phone(&phone);
    under_umask_022(&s, &["init", "--no-encryption"]);
    under_umask_022(&s, &["backup", "--device", "p", phone.to_str().unwrap()]);
    damage_largest_pack(&s.repo, 1000);
    under_umask_022(&s, &["repair", "packs"]);
    // A push whose journal stays (a conflict): the journal names the user's files.
    let (staged, device) = (s.path("staged"), s.path("device"));
    write(&staged.join("a.txt"), b"mine");
    write(&device.join("a.txt"), b"the phone's");
    let device_spec = format!("dir:{}", device.display());
    let push = ["push", "--device", &device_spec, "--staging", staged.to_str().unwrap()];
    assert_eq!(code(&under_umask(&s, "000", &push)), 3);
    assert!(std::fs::read_dir(s.journals()).unwrap().count() >= 2, "a journal and a lock");
    let mut seen = 0;
    let mut stack = vec![s.repo.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        seen += 1;
    }
    assert!(s.repo.join("damaged/data").is_dir() && seen > 10, "{seen} entries");
}

#[test]
fn restore_blames_a_full_or_read_only_target_not_the_repository() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    // A private folder whose files do not fit: folders stay private (0700) until they are
    // finished, so a restore that stops leaves nothing in one readable by others.
    write(&phone.join("Private/big.bin"), &bytes(90, 2_000_000, false));
    std::fs::set_permissions(phone.join("Private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let disk = SmallDisk::mount(&s.path("small"), "1m");
    let full = s.run(&["restore", "latest", "--target", disk.0.join("out").to_str().unwrap()]);
    assert_eq!(code(&full), 15, "{}", stderr(&full));
    assert!(stderr(&full).contains("No space left on device"), "{}", stderr(&full));
    assert_eq!(stderr(&full).matches("No space left on device").count(), 1, "said once: {}", stderr(&full));
    for dir in [disk.0.join("out/Private"), disk.0.join("out/DCIM")] {
        if let Ok(meta) = std::fs::metadata(&dir) {
            assert_eq!(meta.permissions().mode() & 0o077, 0, "{} readable by others", dir.display());
        }
    }
    assert!(stderr(&full).contains("the repository is not at fault"), "{}", stderr(&full));
    assert!(!stderr(&full).contains("damaged"), "{}", stderr(&full));
    let leftovers: Vec<_> =
        files_under(&disk.0).into_iter().filter(|p| p.to_string_lossy().contains(".phonebak-restore-")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let status = std::process::Command::new("mount").args(["-o", "remount,ro"]).arg(&disk.0).status().unwrap();
    assert!(status.success());
    let read_only = s.run(&["restore", "latest", "--target", disk.0.join("other").to_str().unwrap()]);
    assert_eq!(code(&read_only), 18, "{}", stderr(&read_only));
    assert!(stderr(&read_only).contains("Read-only file system"), "{}", stderr(&read_only));
    assert!(!stderr(&read_only).contains("damaged"), "{}", stderr(&read_only));
}
#[test]
fn restore_never_destroys_what_is_in_the_way_and_overwrite_replaces_only_files() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let restore = |target: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["restore", "latest", "--target", target.to_str().unwrap()];
        args.extend_from_slice(extra);
        s.run(&args)
    };

    // A target that is a file is refused and kept.
    let file_target = s.path("a-file");
    write(&file_target, b"mine");
    let out = restore(&file_target, &[]);
    assert_eq!(code(&out), 18, "{}", stderr(&out));
    assert_eq!(std::fs::read(&file_target).unwrap(), b"mine");

    // A target that is a symlink to a folder is followed: the files land in that folder.
    let real = s.path("real-folder");
    std::fs::create_dir(&real).unwrap();
    let link = s.path("link-to-folder");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = restore(&link, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_same_tree(&phone, &real);

    // The user's things in the way: a folder where the snapshot has a file, a changed file.
    let target = s.path("target");
    std::fs::create_dir(&target).unwrap();
    write(&target.join("Documents/notes.txt/keep.txt"), b"keep me");
    write(&target.join("DCIM/Camera/IMG_0002.jpg"), b"my edit");
    write(&target.join("Documents/mine.txt"), b"not in the snapshot");
    let out = restore(&target, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("were in the way"), "{}", stderr(&out));
    assert_eq!(std::fs::read(target.join("Documents/notes.txt/keep.txt")).unwrap(), b"keep me");
    assert_eq!(std::fs::read(target.join("DCIM/Camera/IMG_0002.jpg")).unwrap(), b"my edit");
    assert_eq!(std::fs::read(target.join("Documents/mine.txt")).unwrap(), b"not in the snapshot");
    assert_eq!(
        std::fs::read(target.join("DCIM/Camera/IMG_0001.jpg")).unwrap(),
        std::fs::read(phone.join("DCIM/Camera/IMG_0001.jpg")).unwrap()
    );

    // --overwrite replaces the changed file, never the folder.
    let out = restore(&target, &["--overwrite"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("folders are never deleted"), "{}", stderr(&out));
    assert_eq!(std::fs::read(target.join("Documents/notes.txt/keep.txt")).unwrap(), b"keep me");
    assert_eq!(
        std::fs::read(target.join("DCIM/Camera/IMG_0002.jpg")).unwrap(),
        std::fs::read(phone.join("DCIM/Camera/IMG_0002.jpg")).unwrap()
    );
    assert_eq!(std::fs::read(target.join("Documents/mine.txt")).unwrap(), b"not in the snapshot");

    // A second restore into a complete copy finds everything already there.
    let again = restore(&real, &[]);
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already there"));
}

/// A restore cut off by a power loss can leave files of the right size and time whose data
/// never reached the disk (zeros): a rerun must not take them for "already there".
#[test]
fn a_rerun_of_restore_compares_bytes_not_just_size_and_time() {
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let target = s.path("target");
    s.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let photo = target.join("DCIM/Camera/IMG_0001.jpg");
    let before = std::fs::metadata(&photo).unwrap();
    std::fs::write(&photo, vec![0u8; before.len() as usize]).unwrap();
    set_mtime(&photo, before.mtime(), before.mtime_nsec());

    let out = s.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("IMG_0001.jpg"), "{}", stderr(&out));
    assert!(stderr(&out).contains("other bytes"), "{}", stderr(&out));
    let out = s.run(&["restore", "latest", "--target", target.to_str().unwrap(), "--overwrite"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_same_tree(&phone, &target);
}

#[test]
fn a_folder_as_deep_as_a_snapshot_may_nest_is_backed_up_without_running_out_of_stack() {
    let s = Scratch::with_repo();
    let top = s.path("deep");
    std::fs::create_dir(&top).unwrap();
    // 2047 folders in one another (deeper than PATH_MAX allows to name from the top), made
    // one level at a time.
    let c = |p: &str| std::ffi::CString::new(p).unwrap();
    let top_c = std::ffi::CString::new(top.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid strings; every descriptor opened is closed.
    unsafe {
        let mut fd = libc::open(top_c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        assert!(fd >= 0);
        for _ in 0..2047 {
            assert_eq!(libc::mkdirat(fd, c("d").as_ptr(), 0o755), 0);
            let next = libc::openat(fd, c("d").as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            libc::close(fd);
            assert!(next >= 0);
            fd = next;
        }
        libc::close(fd);
    }
    let out = s.run(&["backup", "--device", "deep", top.to_str().unwrap()]);
    assert!(!stderr(&out).contains("overflow"), "{}", stderr(&out));
    // The deepest folders cannot be named from the top (PATH_MAX): said, the rest is stored.
    assert!([0, 3].contains(&code(&out)), "{}", stderr(&out));
    let report = s.json(&["snapshots"]);
    assert!(report[0]["stats"]["dirs"].as_u64().unwrap() > 2000, "{report}");
}
