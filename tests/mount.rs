//! The mount, for real: `phonebak mount` and `mount -t phonebak` on FUSE, read with real `cp`,
//! `rsync`, `find`, `cat` and system calls. fuse3 is installed by scripts/test.sh.

mod common;

use common::*;
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn every_snapshot_is_an_exact_read_only_folder() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "pixel", "--time", "2026-11-21T08:00:00", phone.to_str().unwrap()]);
    let day1 = s.path("day1");
    copy_tree(&phone, &day1);
    write(&phone.join("DCIM/Camera/IMG_0003.jpg"), &bytes(30, 5_000_000, false));
    std::fs::remove_file(phone.join("Documents/notes.txt")).unwrap();
    s.ok(&["backup", "--device", "pixel", "--time", "2026-11-22T08:00:00", phone.to_str().unwrap()]);
    s.ok(&["backup", "--device", "tablet", phone.to_str().unwrap()]);

    let m = Mounted::new(&s, &[]);
    // As root, the daemon raises the kernel's readahead for its mount to 4 MiB.
    let device = Command::new("mountpoint").arg("-d").arg(&m.point).output().unwrap();
    let device = String::from_utf8_lossy(&device.stdout).trim().to_string();
    let readahead = std::fs::read_to_string(format!("/sys/class/bdi/{device}/read_ahead_kb")).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(readahead.trim(), "4096");
    }
    assert_same_tree(&day1, &m.snapshots().join("pixel/2026-11-21T08:00:00"));
    assert_same_tree(&phone, &m.snapshots().join("pixel/2026-11-22T08:00:00"));
    let latest = std::fs::read_link(m.snapshots().join("pixel/latest")).unwrap();
    assert_eq!(latest, PathBuf::from("2026-11-22T08:00:00"));
    assert_same_tree(&phone, &m.snapshots().join("pixel/latest"));
    let mut devices: Vec<_> = std::fs::read_dir(m.snapshots()).unwrap().map(|e| e.unwrap().file_name()).collect();
    devices.sort();
    assert_eq!(devices, ["pixel", "tablet"]);

    // Everything under snapshots/ is read-only.
    let file = m.snapshots().join("pixel/latest/Documents/empty.txt");
    for (what, result) in [
        ("create", std::fs::write(m.snapshots().join("pixel/latest/new.txt"), b"x")),
        ("overwrite", std::fs::write(&file, b"x")),
        ("mkdir", std::fs::create_dir(m.snapshots().join("pixel/latest/newdir"))),
        ("unlink", std::fs::remove_file(&file)),
        ("rename", std::fs::rename(&file, m.snapshots().join("pixel/latest/moved"))),
        ("chmod", std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o777))),
        ("symlink", std::os::unix::fs::symlink("x", m.snapshots().join("pixel/latest/ln"))),
    ] {
        assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EROFS), "{what}");
    }

    // Inode numbers stay the same, even after the kernel forgets them.
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let photo = m.snapshots().join("pixel/2026-11-21T08:00:00/DCIM/Camera/IMG_0001.jpg");
    let before = ino(&photo);
    std::fs::write("/proc/sys/vm/drop_caches", b"2").ok();
    assert_eq!(ino(&photo), before);

    // Extended attributes: none, answered properly.
    let c = CString::new(photo.as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    let got = unsafe { libc::getxattr(c.as_ptr(), c"user.x".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!((got, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EOPNOTSUPP)));
    assert_eq!(unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }, 0);
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    let point = CString::new(m.point.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::statvfs(point.as_ptr(), &mut vfs) }, 0);
    assert!(vfs.f_bavail > 0 && vfs.f_blocks >= vfs.f_bavail);
    // Read-only at the kernel (so it keeps cached attributes after reads and listings).
    assert_ne!(vfs.f_flag & libc::ST_RDONLY, 0);
}

#[test]
fn cp_rsync_and_find_work_on_the_mount() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    for i in 0..200 {
        write(&phone.join(format!("Android/data/app/f{i}.json")), &bytes(i, 2_000 + i as usize * 13, true));
    }
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    let m = Mounted::new(&s, &["-o", "cache_size=16M"]);
    let snap = m.snapshots().join("pixel/latest/");

    let by_cp = s.path("by-cp");
    copy_tree(&snap, &by_cp);
    assert_same_tree(&phone, &by_cp);
    let by_rsync = s.path("by-rsync");
    let rsync = Command::new("rsync").arg("-a").arg(&snap).arg(&by_rsync).status().unwrap();
    assert!(rsync.success());
    // rsync 3.2.7 now and then skips setting the times of folders and symlinks (seen under
    // strace: it read the right time from the mount and never applied it), so those are compared
    // without their mtimes; files are exact, and `cp -a` above is checked exactly throughout.
    let (want, got) = (describe(&phone), describe(&by_rsync));
    assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
    for (path, observed) in &want {
        let found = &got[path];
        if observed.is_file() {
            assert_eq!(observed, found, "{}", path.display());
        } else {
            assert!(observed.same_but_mtime(found), "{}: {observed:?} != {found:?}", path.display());
        }
    }

    // `cp -r` reads a folder in inode order: the mount numbers a folder's entries in name order,
    // the order it loads ahead in.
    let mut by_ino: Vec<(u64, std::ffi::OsString)> = std::fs::read_dir(snap.join("Android/data/app"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.metadata().unwrap().ino(), e.file_name()))
        .collect();
    by_ino.sort();
    let in_ino_order: Vec<_> = by_ino.into_iter().map(|(_, name)| name).collect();
    let mut in_name_order = in_ino_order.clone();
    in_name_order.sort();
    assert_eq!(in_ino_order.len(), 200);
    assert_eq!(in_ino_order, in_name_order);

    let count = |root: &Path| {
        let out = Command::new("find").arg(root).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(count(&snap), count(&phone));
}

#[test]
fn many_concurrent_readers_get_exact_bytes() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    let big = bytes(77, 12 << 20, false);
    write(&phone.join("big.mp4"), &big);
    // Only ever read at random: served frame by frame (64 KiB) instead of by whole chunks.
    let clip = bytes(78, 6 << 20, false);
    write(&phone.join("clip.mp4"), &clip);
    for i in 0..8 {
        write(&phone.join(format!("f{i}.bin")), &bytes(i, 3 << 20, i % 2 == 0));
    }
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let m = Mounted::new(&s, &["-o", "cache_size=8M,threads=4"]);
    let snap = m.snapshots().join("p/latest");
    let expected = blake3::hash(&big);
    std::thread::scope(|scope| {
        for reader in 0..16 {
            let snap = &snap;
            scope.spawn(move || {
                let (path, want) = if reader % 2 == 0 {
                    (snap.join("big.mp4"), expected)
                } else {
                    let i = reader / 2;
                    (snap.join(format!("f{i}.bin")), blake3::hash(&bytes(i, 3 << 20, i % 2 == 0)))
                };
                let mut content = Vec::new();
                std::fs::File::open(&path).unwrap().read_to_end(&mut content).unwrap();
                assert_eq!(blake3::hash(&content), want, "{}", path.display());
            });
        }
        // Random reads in the middle of files, against the source, some across frame edges.
        for (name, content) in [("big.mp4", &big), ("clip.mp4", &clip)] {
            let snap = &snap;
            scope.spawn(move || {
                use std::os::unix::fs::FileExt;
                let file = std::fs::File::open(snap.join(name)).unwrap();
                let mut state = 12345u64;
                let edges = [65536 - 100, 3 * 65536 - 4095, 5 << 20];
                for i in 0..300 {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let at = edges.get(i).copied().unwrap_or((state >> 20) as usize % (content.len() - 4096));
                    let mut buf = [0u8; 4096];
                    file.read_exact_at(&mut buf, at as u64).unwrap();
                    assert_eq!(&buf[..], &content[at..at + 4096], "{name} at {at}");
                }
            });
        }
    });
}

#[test]
fn a_damaged_chunk_is_eio_for_its_file_only_and_logged() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("DCIM/victim.jpg"), &bytes(1, 2_000_000, false));
    write(&phone.join("Documents/fine.txt"), &bytes(2, 10_000, true));
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    damage_largest_pack(&s.repo, 1_000_000);

    let log = s.path("mount.log");
    let m = Mounted::new(&s, &["-o", &format!("log={}", log.display())]);
    let snap = m.snapshots().join("p/latest");
    let err = std::fs::read(snap.join("DCIM/victim.jpg")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(std::fs::read(snap.join("Documents/fine.txt")).unwrap(), bytes(2, 10_000, true));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("/snapshots/p/") && logged.contains("DCIM/victim.jpg"), "{logged}");
}

#[test]
fn snapshots_made_or_forgotten_while_mounted_show_up() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("a.txt"), b"first");
    s.ok(&["backup", "--device", "p", "--time", "2026-11-21T08:00:00", phone.to_str().unwrap()]);
    let m = Mounted::new(&s, &[]);
    let device = m.snapshots().join("p");
    assert_eq!(std::fs::read_dir(&device).unwrap().count(), 2); // one snapshot and latest
    write(&phone.join("a.txt"), b"second");
    s.ok(&["backup", "--device", "p", "--time", "2026-11-22T08:00:00", phone.to_str().unwrap()]);
    s.ok(&["backup", "--device", "newphone", phone.to_str().unwrap()]);
    wait_until("the new snapshot", || device.join("2026-11-22T08:00:00").exists());
    assert_eq!(std::fs::read(device.join("latest/a.txt")).unwrap(), b"second");
    wait_until("the new device", || m.snapshots().join("newphone/latest/a.txt").exists());
    s.ok(&["forget", "--device", "p", "--keep-last", "1"]);
    wait_until("the forgotten snapshot to go", || !device.join("2026-11-21T08:00:00").exists());
    let names: Vec<_> = std::fs::read_dir(&device).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn unmount_ends_the_daemon_and_errors_come_before_the_mount() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("a.txt"), b"a");
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let point = s.path("mnt");
    std::fs::create_dir(&point).unwrap();

    let wrong = s.command(&["mount", point.to_str().unwrap()]).env("PHONEBAK_PASSWORD", "nope").output().unwrap();
    assert_eq!(code(&wrong), 12, "{}", stderr(&wrong));
    let nothing = s.command(&["mount", point.to_str().unwrap()]).env("PHONEBAK_REPO", s.path("none")).output().unwrap();
    assert_eq!(code(&nothing), 10);
    let missing = s.run(&["mount", s.path("no-such-dir").to_str().unwrap()]);
    assert!(stderr(&missing).contains("no-such-dir"), "{}", stderr(&missing));
    let bad_option = s.run(&["mount", point.to_str().unwrap(), "-o", "cache_size=huge"]);
    assert!(stderr(&bad_option).contains("mount option \"cache_size\""), "{}", stderr(&bad_option));

    s.ok(&["mount", point.to_str().unwrap()]);
    let daemons = processes_mentioning(&point);
    assert_eq!(daemons.len(), 1, "one daemon: {daemons:?}");
    let busy = s.run(&["mount", point.to_str().unwrap()]);
    assert_eq!(code(&busy), 1);
    assert!(stderr(&busy).contains("something is already mounted there"), "{}", stderr(&busy));

    assert!(Command::new("fusermount3").arg("-u").arg(&point).status().unwrap().success());
    wait_until("the daemon to exit", || processes_mentioning(&point).is_empty());
    assert_eq!(std::fs::read_dir(&point).unwrap().count(), 0, "unmounted");

    // SIGTERM (a shutdown) unmounts too, instead of leaving a dead mount behind.
    s.ok(&["mount", point.to_str().unwrap()]);
    let daemon = processes_mentioning(&point)[0];
    assert!(Command::new("kill").arg("-TERM").arg(daemon.to_string()).status().unwrap().success());
    wait_until("the daemon to exit", || processes_mentioning(&point).is_empty());
    assert_eq!(std::fs::read_dir(&point).unwrap().count(), 0, "unmounted");
}

#[test]
fn mount_t_phonebak_and_an_fstab_line_work() {
    assert!(is_root(), "needs root to run mount(8) in a private mount namespace (the CI runs as root)");
    // All of it in a private mount namespace, so that nothing outside the test sees its mounts.
    std::thread::spawn(mount_t_phonebak_in_a_private_namespace).join().unwrap();
}

/// Run by a thread of its own: `unshare(CLONE_NEWNS)` moves only the calling thread (and the
/// programs it starts) into the new namespace.
fn mount_t_phonebak_in_a_private_namespace() {
    // SAFETY: plain system calls with valid, NUL-terminated arguments.
    unsafe {
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare: {}", std::io::Error::last_os_error());
        let root = c"/";
        let private = libc::MS_REC | libc::MS_PRIVATE;
        let made_private = libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), private, std::ptr::null());
        assert_eq!(made_private, 0, "making / private: {}", std::io::Error::last_os_error());
    }
    let s = Scratch::with_repo();
    // mount(8) looks for /sbin/mount.<type>: in this namespace only, a read-only overlay on /sbin
    // adds this build's helper (scripts/install.sh installs the release build there for real use).
    let helpers = s.path("helpers");
    std::fs::create_dir(&helpers).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mount_phonebak"), helpers.join("mount.phonebak")).unwrap();
    let sbin = std::fs::canonicalize("/sbin").unwrap();
    let overlay = format!("lowerdir={}:{}", helpers.display(), sbin.display());
    let status = Command::new("mount").args(["-t", "overlay", "overlay", "-o", &overlay]).arg(&sbin).status().unwrap();
    assert!(status.success(), "overlay on {}", sbin.display());
    assert!(sbin.join("mount.phonebak").exists(), "seen in this namespace only");

    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    let password_file = s.path("pw");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let point = s.path("mnt");
    std::fs::create_dir(&point).unwrap();

    let options =
        format!("noauto,cache_size=64M,password_file={},x-systemd.automount,_netdev", password_file.display());
    let mounted = Command::new("mount")
        .args(["-t", "phonebak", "-o", &options])
        .arg(&s.repo)
        .arg(&point)
        .env_remove("PHONEBAK_PASSWORD")
        .env("XDG_STATE_HOME", s.path("state"))
        .env("XDG_CACHE_HOME", s.path("cache"))
        .output()
        .unwrap();
    assert!(mounted.status.success(), "{}", stderr(&mounted));
    assert_same_tree(&phone, &point.join("snapshots/pixel/latest"));
    // This thread's mounts (/proc/self is the main thread's, outside the namespace).
    let mounts = std::fs::read_to_string("/proc/thread-self/mounts").unwrap();
    let repo = std::fs::canonicalize(&s.repo).unwrap();
    let line = format!("{} {} fuse", repo.display(), point.display());
    assert!(mounts.lines().any(|l| l.starts_with(&line)), "the repository is the mount's source: {mounts}");
    assert!(Command::new("umount").arg(&point).status().unwrap().success());
    wait_until("the daemon to exit", || processes_mentioning(&point).is_empty());

    // The same through an fstab line.
    let fstab = s.path("fstab");
    std::fs::write(
        &fstab,
        format!(
            "{} {} phonebak noauto,password_file={} 0 0\n",
            s.repo.display(),
            point.display(),
            password_file.display()
        ),
    )
    .unwrap();
    let mounted = s
        .isolate(Command::new("mount").arg("-T").arg(&fstab).arg(&point).env_remove("PHONEBAK_PASSWORD"))
        .output()
        .unwrap();
    assert!(mounted.status.success(), "{}", stderr(&mounted));
    assert!(point.join("snapshots/pixel/latest/DCIM/Camera/IMG_0001.jpg").exists());
    assert!(Command::new("umount").arg(&point).status().unwrap().success());
    wait_until("the daemon to exit", || processes_mentioning(&point).is_empty());
    assert!(Command::new("umount").arg(&sbin).status().unwrap().success());
}

/// Drops the kernel's page, dentry and inode caches (as root); false if it cannot.
fn drop_caches() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Pages of `path` in the kernel's page cache, from `fincore` (util-linux).
fn cached_pages(path: &Path) -> u64 {
    let out = Command::new("fincore").args(["-n", "-b", "-o", "PAGES"]).arg(path).output().unwrap();
    assert!(out.status.success(), "fincore: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// While files are being read, listing a folder pushes its small files into the kernel's page
/// cache (so reading them costs no round trip), with exactly the right bytes; `find` or `ls`
/// alone (nobody reading) pushes nothing.
#[test]
fn small_files_of_a_listed_folder_are_pushed_while_someone_reads() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("start.txt"), &bytes(1, 5000, true));
    for i in 0..20 {
        write(&phone.join(format!("idle/f{i}.json")), &bytes(100 + i, 3000 + i as usize * 100, true));
        write(&phone.join(format!("busy/f{i}.json")), &bytes(200 + i, 3000 + i as usize * 100, true));
    }
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let m = Mounted::new(&s, &[]);
    let snap = m.snapshots().join("p/latest");

    assert_eq!(Command::new("ls").arg("-l").arg(snap.join("idle")).output().unwrap().status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cached_pages(&snap.join("idle/f3.json")), 0, "listing alone pushes nothing");

    // Pushing is best effort (a push that beats the kernel's own setup of the inode is dropped),
    // so on a busy machine a listing may need another try: caches are dropped between tries.
    let pushed = |i: u64| cached_pages(&snap.join(format!("busy/f{i}.json"))) > 0;
    let mut all_pushed = false;
    for _attempt in 0..5 {
        assert_eq!(std::fs::read(snap.join("start.txt")).unwrap(), bytes(1, 5000, true));
        assert_eq!(Command::new("ls").arg("-l").arg(snap.join("busy")).output().unwrap().status.code(), Some(0));
        let deadline = Instant::now() + Duration::from_secs(2);
        while !(0..20).all(pushed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        all_pushed = (0..20).all(pushed);
        if all_pushed || !drop_caches() {
            break;
        }
    }
    assert!(all_pushed, "listed while reading: pushed");
    for i in 0..20u64 {
        let got = std::fs::read(snap.join(format!("busy/f{i}.json"))).unwrap();
        assert_eq!(got, bytes(200 + i, 3000 + i as usize * 100, true), "busy/f{i}.json");
    }
}

/// A file read through the mount leaves its chunks' pages of the pack out of the page cache: the
/// kernel keeps the file's own pages, and pages given back at once are reused warm.
#[test]
fn whole_chunks_read_give_their_pack_pages_back() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("DCIM/clip.mp4"), &bytes(7, 6_000_000, false));
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let pack = pack_files(&s.repo).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let m = Mounted::new(&s, &[]);
    assert_eq!(std::fs::read(m.snapshots().join("p/latest/DCIM/clip.mp4")).unwrap(), bytes(7, 6_000_000, false));
    let (cached, pages) = (cached_pages(&pack), std::fs::metadata(&pack).unwrap().len() / 4096);
    assert!(cached * 10 < pages, "{cached} of the pack's {pages} pages are still cached");
}

/// A prune while mounted moves the files still in use to new packs and deletes the old packs
/// and index files: the mount reads the index again and follows them, instead of failing.
#[test]
fn reads_follow_a_prune_made_while_mounted() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    let keep = bytes(5, 3 << 20, false);
    write(&phone.join("keep.mp4"), &keep);
    write(&phone.join("gone.mp4"), &bytes(6, 6 << 20, false));
    s.ok(&["backup", "--device", "p", "--time", "2026-11-21T08:00:00", phone.to_str().unwrap()]);
    std::fs::remove_file(phone.join("gone.mp4")).unwrap();
    s.ok(&["backup", "--device", "p", "--time", "2026-11-22T08:00:00", phone.to_str().unwrap()]);
    let m = Mounted::new(&s, &[]);
    let file = m.snapshots().join("p/2026-11-22T08:00:00/keep.mp4");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), keep.len() as u64);

    s.ok(&["forget", "--keep-last", "1"]);
    let report = s.json(&["prune"]);
    assert_eq!(report["packs_repacked"], 1, "{report}");
    assert_eq!(std::fs::read(&file).unwrap(), keep);
}

#[test]
fn a_mount_whose_daemon_was_killed_says_how_to_clean_up() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    let point = s.path("mnt");
    std::fs::create_dir(&point).unwrap();
    s.ok(&["mount", point.to_str().unwrap()]);
    for pid in processes_mentioning(&point) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    wait_until("the daemon to die", || processes_mentioning(&point).is_empty());
    let again = s.run(&["mount", point.to_str().unwrap()]);
    assert_ne!(code(&again), 0);
    assert!(stderr(&again).contains("run `fusermount3 -u` on it"), "{}", stderr(&again));
    assert!(Command::new("fusermount3").arg("-u").arg(&point).status().unwrap().success());
    s.ok(&["mount", point.to_str().unwrap()]);
    assert!(point.join("snapshots/pixel/latest/DCIM/Camera/IMG_0001.jpg").exists());
    assert!(Command::new("umount").arg(&point).status().unwrap().success());
}

#[test]
fn an_open_mount_follows_new_snapshots_and_renamed_ones_without_stale_bytes() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    let backup_at = |content: &[u8], time: &str| {
        write(&phone.join("note.txt"), content);
        s.ok(&["backup", "--device", "p", "--time", time, phone.to_str().unwrap()]);
    };
    // Two snapshots in one second: named T and T.2.
    backup_at(b"first", "2026-01-01T10:00:00");
    backup_at(b"second", "2026-01-01T10:00:00.5+00:00");
    let m = Mounted::new(&s, &[]);
    let device = m.snapshots().join("p");
    let mut names: Vec<String> = names(&device).into_iter().filter(|n| n != "latest").collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    let first_name = names[0].clone();
    assert_eq!(std::fs::read(device.join(&first_name).join("note.txt")).unwrap(), b"first");
    assert_eq!(std::fs::read(device.join("latest/note.txt")).unwrap(), b"second");

    // A backup while mounted: `latest` moves to it.
    backup_at(b"third", "2026-01-02T10:00:00");
    wait_until("latest to name the new snapshot", || {
        std::fs::read(device.join("latest/note.txt")).ok().as_deref() == Some(b"third".as_slice())
    });

    // Forgetting the first of the two same-second snapshots gives the second its name: that
    // folder must now show the second's bytes, never the forgotten one's.
    let list = s.json(&["snapshots"]);
    let first_id = list.as_array().unwrap()[0]["id"].as_str().unwrap().to_string();
    s.ok(&["forget", "--keep-last", "2"]);
    assert!(!s.json(&["snapshots"]).as_array().unwrap().iter().any(|v| v["id"] == first_id.as_str()));
    wait_until("the renamed snapshot to show its own bytes", || {
        std::fs::read(device.join(&first_name).join("note.txt")).ok().as_deref() == Some(b"second".as_slice())
    });
}
