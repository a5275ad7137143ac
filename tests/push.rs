//! `phonebak push`: staged files (copied into a real mount's `restore/`) or a snapshot onto a
//! device, checked byte for byte and mtime for mtime. There is no phone here: `dir:` devices
//! are local folders (small tmpfs mounts for a full or read-only device), and the adb backend
//! runs against tests/fake-adb/adb, a stand-in for `adb` written for these tests that works on
//! a local folder.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A repository with the sample phone backed up, mounted.
fn mounted_phone(s: &Scratch) -> (PathBuf, Mounted) {
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    let m = Mounted::new(s, &[]);
    (phone, m)
}

fn cp_a(from: &Path, to: &Path) {
    assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
}

fn push(s: &Scratch, device: &Path, extra: &[&str]) -> std::process::Output {
    let spec = format!("dir:{}", device.display());
    let mut args = vec!["push", "--device", spec.as_str()];
    args.extend_from_slice(extra);
    s.run(&args)
}

/// Files anywhere below `dir` whose name is a push's temporary name.
fn leftovers(dir: &Path) -> Vec<String> {
    let out = Command::new("find").arg(dir).arg("-name").arg(".phonebak-part-*").output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn staged_files_reach_a_dir_device_exactly_and_leave_staging() {
    let s = Scratch::with_repo();
    let (phone, m) = mounted_phone(&s);
    let latest = m.snapshots().join("pixel/latest");
    for folder in ["DCIM", "Documents", "Download"] {
        cp_a(&latest.join(folder), &m.restore());
    }
    let device = s.path("new-phone");
    std::fs::create_dir(&device).unwrap();

    let dry = push(&s, &device, &["--dry-run"]);
    assert_eq!(code(&dry), 0, "{}", stderr(&dry));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would push 7 files"), "{dry:?}");
    assert!(names(&device).is_empty(), "a dry run writes nothing");

    let out = push(&s, &device, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("pushed 7 files"), "{said}");
    for folder in ["DCIM", "Documents", "Download"] {
        assert_same_tree_but_owner(&phone.join(folder), &device.join(folder));
    }
    assert!(leftovers(&device).is_empty());
    // Pushed files left the staging folder, seen through the mount too.
    assert!(names(&s.staging()).is_empty(), "{:?}", names(&s.staging()));
    assert!(names(&m.restore()).is_empty());
    let journals: Vec<String> = names(&s.journals()).into_iter().filter(|n| n.ends_with(".journal")).collect();
    assert!(journals.is_empty(), "a finished push leaves no journal: {journals:?}");

    // The same files staged again are already there: not pushed again, and unstaged.
    cp_a(&latest.join("DCIM"), &m.restore());
    let again = push(&s, &device, &["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!((report["pushed"].as_u64(), report["already_there"].as_u64()), (Some(0), Some(2)), "{report}");
    assert!(names(&m.restore()).is_empty());

    // --keep leaves them staged.
    cp_a(&latest.join("Documents"), &m.restore());
    std::fs::remove_dir_all(device.join("Documents")).unwrap();
    assert_eq!(code(&push(&s, &device, &["--keep"])), 0);
    assert_same_tree_but_owner(&phone.join("Documents"), &device.join("Documents"));
    assert_same_tree(&phone.join("Documents"), &m.restore().join("Documents"));
}

#[test]
fn a_different_file_on_the_device_is_skipped_renamed_or_overwritten() {
    let s = Scratch::with_repo();
    let (_phone, m) = mounted_phone(&s);
    let device = s.path("phone-now");
    write(&device.join("Documents/notes.txt"), b"edited on the phone since");
    let staged = m.restore().join("Documents/notes.txt");
    write(&staged, b"the backed up version");

    let skipped = push(&s, &device, &[]);
    assert_eq!(code(&skipped), 3, "a skipped file is not pushed: said as restore says it");
    assert!(stderr(&skipped).contains("skipped Documents/notes.txt"), "{}", stderr(&skipped));
    assert_eq!(std::fs::read(device.join("Documents/notes.txt")).unwrap(), b"edited on the phone since");
    assert_eq!(std::fs::read(&staged).unwrap(), b"the backed up version", "still staged");

    assert_eq!(code(&push(&s, &device, &["--on-conflict", "rename", "--keep"])), 0);
    assert_eq!(std::fs::read(device.join("Documents/notes (1).txt")).unwrap(), b"the backed up version");
    assert_eq!(std::fs::read(device.join("Documents/notes.txt")).unwrap(), b"edited on the phone since");

    assert_eq!(code(&push(&s, &device, &["--on-conflict", "overwrite"])), 0);
    assert_eq!(std::fs::read(device.join("Documents/notes.txt")).unwrap(), b"the backed up version");
    assert!(!staged.exists());
    assert!(leftovers(&device).is_empty());
}

#[test]
fn a_whole_snapshot_or_one_folder_of_it_goes_straight_to_a_new_phone() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);

    let new_phone = s.path("new-phone");
    std::fs::create_dir(&new_phone).unwrap();
    let out = push(&s, &new_phone, &["--from", "pixel/latest"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_same_tree_but_owner(&phone, &new_phone);

    // SNAPSHOT:PATH goes to the same place on the device.
    let other = s.path("other-phone");
    std::fs::create_dir(&other).unwrap();
    assert_eq!(code(&push(&s, &other, &["--from", "latest:DCIM/Camera"])), 0);
    assert_eq!(names(&other), ["DCIM"]);
    assert_same_tree_but_owner(&phone.join("DCIM/Camera"), &other.join("DCIM/Camera"));
}

#[test]
fn an_interrupted_push_resumes_and_nothing_staged_is_lost() {
    let s = Scratch::with_repo();
    let (_phone, m) = mounted_phone(&s);
    let originals = stage_600_photos(&s, &m);
    let device = s.path("device");
    std::fs::create_dir(&device).unwrap();

    let spec = format!("dir:{}", device.display());
    let mut child = s.command(&["push", "--device", &spec]).spawn().unwrap();
    wait_for_journal_lines(&s, &mut child, 40);
    child.kill().unwrap(); // SIGKILL, mid-push
    child.wait().unwrap();

    // Every file is still staged, or on the device whole under its real name; none is lost.
    let mut on_device = 0;
    for i in 0..600u64 {
        let rel = format!("DCIM/{:02}/IMG_{i:04}.jpg", i % 7);
        let want = std::fs::read(originals.join(&rel)).unwrap();
        let staged = std::fs::read(s.staging().join(&rel)).ok();
        let pushed = std::fs::read(device.join(&rel)).ok();
        assert!(staged.as_ref() == Some(&want) || pushed.as_ref() == Some(&want), "{rel} lost");
        if let Some(pushed) = pushed {
            assert_eq!(pushed, want, "{rel} is on the device, whole");
            on_device += 1;
        }
    }
    assert!((40..600).contains(&on_device), "interrupted mid-way: {on_device}");

    let resumed = s.run(&["push", "--device", &spec, "--json"]);
    assert_eq!(code(&resumed), 0, "{}", stderr(&resumed));
    let report: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    let (pushed, already) = (report["pushed"].as_u64().unwrap(), report["already_there"].as_u64().unwrap());
    assert!(pushed + already + on_device as u64 >= 600 && pushed < 600 - 39, "{report}");
    assert_same_tree_but_owner(&originals.join("DCIM"), &device.join("DCIM"));
    assert!(leftovers(&device).is_empty(), "{:?}", leftovers(&device));
    assert!(names(&m.restore()).is_empty());
}

/// 600 photos of 20-50 KB in seven folders, copied into the mount's restore/ folder; returns
/// where the originals are.
fn stage_600_photos(s: &Scratch, m: &Mounted) -> PathBuf {
    let originals = s.path("originals");
    for i in 0..600u64 {
        let rel = format!("DCIM/{:02}/IMG_{i:04}.jpg", i % 7);
        write(&originals.join(rel), &bytes(i, 20_000 + (i as usize * 977) % 30_000, false));
    }
    cp_a(&originals.join("DCIM"), &m.restore());
    originals
}

/// Waits until the running push has journaled `lines` files: mid-push, the moment to break it.
fn wait_for_journal_lines(s: &Scratch, push: &mut std::process::Child, lines: usize) {
    let start = Instant::now();
    let journaled = || -> usize {
        let Ok(dir) = std::fs::read_dir(s.journals()) else { return 0 };
        // A finished file's line has four fields.
        let finished = |line: &&[u8]| line.iter().filter(|b| **b == b'\t').count() == 3;
        dir.flatten()
            .map(|e| std::fs::read(e.path()).unwrap_or_default().split(|b| *b == b'\n').filter(finished).count())
            .sum()
    };
    while journaled() < lines {
        assert!(push.try_wait().unwrap().is_none(), "the push ended before it could be interrupted");
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn new(path: PathBuf, options: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(&path).status().unwrap();
        assert!(status.success());
        SmallDisk(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_or_unusable_device_fails_cleanly_and_keeps_everything_staged() {
    let s = Scratch::with_repo();
    let (_phone, m) = mounted_phone(&s);
    write(&m.restore().join("a.txt"), &bytes(1, 10_000, true));
    write(&m.restore().join("b-video.mp4"), &bytes(2, 3_000_000, false));
    write(&m.restore().join("c.txt"), &bytes(3, 10_000, true));

    let missing = push(&s, &s.path("unplugged"), &[]);
    assert_eq!(code(&missing), 17);
    assert!(stderr(&missing).contains("no such folder (is the phone mounted?)"), "{}", stderr(&missing));
    let not_a_folder = push(&s, &m.restore().join("a.txt"), &[]);
    assert_eq!(code(&not_a_folder), 17);
    assert!(stderr(&not_a_folder).contains("not a folder"), "{}", stderr(&not_a_folder));
    let adb_missing = s.command(&["push", "--device", "adb"]).env("PATH", "/nonexistent").output().unwrap();
    assert_eq!(code(&adb_missing), 17);
    assert!(stderr(&adb_missing).contains("apt install adb"), "{}", stderr(&adb_missing));
    let nothing =
        s.command(&["push", "--device", "dir:/tmp"]).env("PHONEBAK_REPO", s.path("no-repo")).output().unwrap();
    assert_eq!(code(&nothing), 10, "{}", stderr(&nothing));

    assert!(is_root(), "needs root to mount the small and read-only tmpfs devices (the CI runs as root)");
    let read_only = SmallDisk::new(s.path("read-only"), "ro,size=1m");
    let refused = push(&s, &read_only.0, &[]);
    assert_eq!(code(&refused), 17);
    assert!(stderr(&refused).contains("read-only"), "{}", stderr(&refused));

    let small = SmallDisk::new(s.path("small"), "size=1m");
    let full = push(&s, &small.0, &[]);
    assert_eq!(code(&full), 15, "{}", stderr(&full));
    assert!(stderr(&full).contains("is full: b-video.mp4 did not fit"), "{}", stderr(&full));
    assert_eq!(names(&small.0), ["a.txt"], "no partial file, no temporary file");
    assert_eq!(names(&m.restore()), ["b-video.mp4", "c.txt"], "what was not pushed stays staged");
    assert_eq!(std::fs::read(m.restore().join("b-video.mp4")).unwrap(), bytes(2, 3_000_000, false));
}

fn fake_adb(s: &Scratch, args: &[&str], phone: &Path) -> std::process::Output {
    let path = format!("{}/tests/fake-adb:{}", env!("CARGO_MANIFEST_DIR"), std::env::var("PATH").unwrap());
    s.command(args).env("PATH", path).env("FAKE_ADB_ROOT", phone).output().unwrap()
}

#[test]
fn the_adb_backend_pushes_verifies_and_resumes_after_an_unplug() {
    // tests/fake-adb/adb stands in for adb: there is no phone here.
    let s = Scratch::with_repo();
    let (phone, m) = mounted_phone(&s);
    let latest = m.snapshots().join("pixel/latest");
    cp_a(&latest.join("DCIM"), &m.restore());
    cp_a(&latest.join("Documents"), &m.restore());
    write(&m.restore().join("Documents/meeting 10:30.txt"), b"minutes");
    let fake = s.path("fake-phone");
    std::fs::create_dir_all(fake.join("sdcard")).unwrap();

    let wrong = fake_adb(&s, &["push", "--device", "adb:NOSUCH"], &fake);
    assert_eq!(code(&wrong), 17);
    assert!(stderr(&wrong).contains("device 'NOSUCH' not found"), "{}", stderr(&wrong));

    // Unplugged after two files: the push stops, and a rerun finishes the job.
    std::fs::write(fake.join(".pushes-left"), "2").unwrap();
    let cut = fake_adb(&s, &["push", "--device", "adb:FAKE0001"], &fake);
    assert_eq!(code(&cut), 17, "{}", stderr(&cut));
    assert!(stderr(&cut).contains("went away during the push"), "{}", stderr(&cut));
    std::fs::remove_file(fake.join(".unplugged")).unwrap();
    std::fs::remove_file(fake.join(".pushes-left")).unwrap();
    let resumed = fake_adb(&s, &["push", "--device", "adb:FAKE0001:/sdcard"], &fake);
    // The name the phone refuses is reported (exit 3, partial), and stays staged.
    assert_eq!(code(&resumed), 3, "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("1 path(s) could not be pushed"), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("Documents/meeting 10:30.txt: "), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("Invalid argument"), "{}", stderr(&resumed));
    assert_eq!(names(&m.restore()), ["Documents"]);
    assert_eq!(names(&m.restore().join("Documents")), ["meeting 10:30.txt"]);
    std::fs::remove_file(m.restore().join("Documents/meeting 10:30.txt")).unwrap();

    let sdcard = fake.join("sdcard");
    for folder in ["DCIM", "Documents"] {
        let (want, got) = (describe(&phone.join(folder)), describe(&sdcard.join(folder)));
        assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
        for (path, observed) in &want {
            // Android's storage keeps content and mtime, not modes or owners.
            let there = &got[path];
            assert_eq!(observed.content_and_mtime(), there.content_and_mtime(), "{}", path.display());
        }
    }
    assert!(leftovers(&fake).is_empty());
    assert!(names(&m.restore().join("Documents")).is_empty(), "only the refused file was left");
}

#[test]
fn a_file_that_reads_back_wrong_keeps_its_name_free_and_stays_staged() {
    // tests/fake-adb/adb stands in for adb: there is no phone here. It stores one file damaged.
    let s = Scratch::with_repo();
    let (phone, m) = mounted_phone(&s);
    cp_a(&m.snapshots().join("pixel/latest/Documents"), &m.restore());
    let fake = s.path("fake-phone");
    std::fs::create_dir_all(fake.join("sdcard")).unwrap();
    std::fs::write(fake.join(".flip-next"), "").unwrap();

    let first = fake_adb(&s, &["push", "--device", "adb:FAKE0001"], &fake);
    assert_eq!(code(&first), 3, "{}", stderr(&first));
    assert!(stderr(&first).contains("what the device holds differs from what was sent"), "{}", stderr(&first));
    let staged = names(&m.restore().join("Documents"));
    assert_eq!(staged.len(), 1, "only the damaged file stays staged: {staged:?}");
    assert!(!fake.join("sdcard/Documents").join(&staged[0]).exists(), "a damaged file got its real name");
    assert!(leftovers(&fake).is_empty());

    let rerun = fake_adb(&s, &["push", "--device", "adb:FAKE0001"], &fake);
    assert_eq!(code(&rerun), 0, "{}", stderr(&rerun));
    let (want, got) = (describe(&phone.join("Documents")), describe(&fake.join("sdcard/Documents")));
    assert_eq!(want.len(), got.len());
    for (path, observed) in &want {
        assert_eq!(observed.content_and_mtime(), got[path].content_and_mtime(), "{}", path.display());
    }
}

#[test]
fn a_phone_mount_that_dies_mid_push_stops_it_and_a_rerun_finishes() {
    // The device is a FUSE mount, like a phone over MTP (jmtpfs and simple-mtpfs are FUSE):
    // here bindfs over a local folder, whose daemon is killed mid-push as an unplug kills jmtpfs.
    let s = Scratch::with_repo();
    let (_phone, m) = mounted_phone(&s);
    let originals = stage_600_photos(&s, &m);
    let storage = s.path("phone-storage");
    std::fs::create_dir(&storage).unwrap();
    let phone = FuseFolder::new(&storage, &s.path("phone-mount"));

    let spec = format!("dir:{}", phone.point.display());
    let mut child = s.command(&["push", "--device", &spec]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_for_journal_lines(&s, &mut child, 40);
    let daemon = processes_mentioning(&phone.point)[0];
    assert!(Command::new("kill").arg("-KILL").arg(daemon.to_string()).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 17, "{}", stderr(&out));
    assert!(!stderr(&out).contains("cannot push"), "no file is blamed: {}", stderr(&out));
    assert!(stderr(&out).contains("went away during the push"), "{}", stderr(&out));

    // Plugged in again: the rerun finishes, and everything is there exactly.
    let _ = Command::new("fusermount3").arg("-u").arg(&phone.point).status();
    let phone = FuseFolder::new(&storage, &phone.point);
    let resumed = s.run(&["push", "--device", &spec]);
    assert_eq!(code(&resumed), 0, "{}", stderr(&resumed));
    assert_same_tree_but_owner(&originals.join("DCIM"), &phone.point.join("DCIM"));
    assert!(leftovers(&phone.point).is_empty());
    assert!(names(&m.restore()).is_empty());
}

/// A local folder seen through bindfs, a FUSE filesystem; unmounted when dropped.
struct FuseFolder {
    point: PathBuf,
}

impl FuseFolder {
    fn new(folder: &Path, point: &Path) -> FuseFolder {
        std::fs::create_dir_all(point).unwrap();
        let status =
            Command::new("bindfs").arg(folder).arg(point).status().expect("bindfs (scripts/test.sh installs it)");
        assert!(status.success(), "bindfs: {status}");
        FuseFolder { point: point.to_path_buf() }
    }
}

impl Drop for FuseFolder {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.point).stderr(std::process::Stdio::null()).status();
    }
}

#[test]
fn a_renamed_file_never_takes_the_name_of_another_staged_file() {
    let s = Scratch::with_repo();
    let (_phone, m) = mounted_phone(&s);
    let device = s.path("phone-now");
    write(&device.join("DCIM/IMG_1.jpg"), b"a different photo on the phone");
    let first = bytes(71, 4_000_000, false);
    let second = bytes(72, 300_000, false);
    write(&m.restore().join("DCIM/IMG_1.jpg"), &first);
    write(&m.restore().join("DCIM/IMG_1 (1).jpg"), &second);
    let out = push(&s, &device, &["--on-conflict", "rename"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut on_device: Vec<Vec<u8>> =
        std::fs::read_dir(device.join("DCIM")).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    on_device.sort();
    let mut expected = vec![b"a different photo on the phone".to_vec(), first, second];
    expected.sort();
    assert!(on_device == expected, "every staged file arrives whole, under a name of its own");
    assert_eq!(std::fs::read(device.join("DCIM/IMG_1 (1).jpg")).unwrap(), bytes(72, 300_000, false));
    assert!(leftovers(&device).is_empty());
}

#[test]
fn the_staging_folder_is_made_private_again_after_rsync_opens_it() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::with_repo();
    let (_phone, m) = mounted_phone(&s);
    let staging = s.staging();
    assert_eq!(std::fs::metadata(&staging).unwrap().permissions().mode() & 0o777, 0o700);
    // rsync -a of a snapshot folder into restore/ gives the staging folder the snapshot's mode.
    let snapshot = m.snapshots().join("pixel/latest/Download/");
    let restore = format!("{}/", m.restore().display());
    assert!(Command::new("rsync").arg("-a").arg(&snapshot).arg(&restore).status().unwrap().success());
    assert_ne!(std::fs::metadata(&staging).unwrap().permissions().mode() & 0o077, 0, "rsync opened it");
    let device = s.path("phone-now");
    std::fs::create_dir(&device).unwrap();
    let out = push(&s, &device, &["--keep"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("made private again"), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&staging).unwrap().permissions().mode() & 0o777, 0o700);
}

/// Staged copies are checked against the snapshots' files at their paths: a copy that is the
/// start of one (cut short), or has one's time but not its bytes (damaged), stays staged and is
/// named; an exact copy, an edit and a file of the user's own go to the phone.
#[test]
fn staged_copies_that_are_not_what_their_snapshot_holds_stay_staged() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    let img = |n: u64| phone.join(format!("DCIM/IMG_{n}.jpg"));
    write(&img(1), &bytes(91, 700_000, false));
    write(&img(2), &bytes(92, 700_000, false));
    write(&img(4), &bytes(94, 3_000_000, false));
    write(&img(5), &bytes(95, 10_000, false));
    write(&phone.join("Documents/notes.txt"), &bytes(96, 50_000, true));
    set_mtime(&img(1), 1_700_000_001, 5);
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    // IMG_4 is only in the older snapshot.
    std::fs::remove_file(img(4)).unwrap();
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    let m = Mounted::new(&s, &[]);
    let latest = m.snapshots().join("pixel/latest");
    let staged = m.restore();
    std::fs::create_dir_all(staged.join("DCIM")).unwrap();
    std::fs::create_dir_all(staged.join("Documents")).unwrap();

    // cp -a, then one byte changed with the time kept.
    cp_a(&latest.join("DCIM/IMG_1.jpg"), &staged.join("DCIM"));
    let mut damaged = std::fs::read(staged.join("DCIM/IMG_1.jpg")).unwrap();
    damaged[400_000] ^= 1;
    std::fs::write(staged.join("DCIM/IMG_1.jpg"), &damaged).unwrap();
    set_mtime(&staged.join("DCIM/IMG_1.jpg"), 1_700_000_001, 5);
    // A plain cp (new time), whole.
    assert!(Command::new("cp").arg(latest.join("DCIM/IMG_2.jpg")).arg(staged.join("DCIM")).status().unwrap().success());
    // The user's own photo, and an edit of a snapshot's file.
    write(&staged.join("DCIM/IMG_3.jpg"), &bytes(93, 200_000, false));
    let mut edited = bytes(96, 50_000, true);
    edited.extend_from_slice(b"a line added on the computer\n");
    write(&staged.join("Documents/notes.txt"), &edited);
    // Cut short across chunk boundaries, from the older snapshot; and nothing of IMG_5 at all.
    write(&staged.join("DCIM/IMG_4.jpg"), &bytes(94, 3_000_000, false)[..2_000_001]);
    write(&staged.join("DCIM/IMG_5.jpg"), b"");

    let device = s.path("new-phone");
    std::fs::create_dir(&device).unwrap();
    let dry = push(&s, &device, &["--dry-run"]);
    assert_eq!(code(&dry), 3, "{}", stderr(&dry));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would push 3 files"), "{dry:?}");
    assert!(names(&device).is_empty());

    let out = push(&s, &device, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("DCIM/IMG_1.jpg: it has the time of pixel/"), "{said}");
    assert!(said.contains("DCIM/IMG_4.jpg: cut short: its 2000001 bytes are the start of pixel/"), "{said}");
    assert!(said.contains("DCIM/IMG_5.jpg: cut short: its 0 bytes"), "{said}");
    assert_eq!(names(&device.join("DCIM")), ["IMG_2.jpg", "IMG_3.jpg"], "nothing half-good reaches the phone");
    assert_eq!(std::fs::read(device.join("DCIM/IMG_2.jpg")).unwrap(), bytes(92, 700_000, false));
    assert_eq!(std::fs::read(device.join("Documents/notes.txt")).unwrap(), edited);
    assert_eq!(names(&staged.join("DCIM")), ["IMG_1.jpg", "IMG_4.jpg", "IMG_5.jpg"], "kept staged");
    assert_eq!(std::fs::read(staged.join("DCIM/IMG_1.jpg")).unwrap(), damaged);
    assert!(leftovers(&device).is_empty());
}

/// The real way copies get cut short: `cp -a` of a snapshot's photos into a staging folder on a
/// disk that runs full (a small tmpfs, in a private mount namespace that ends with the test).
#[test]
fn photos_cut_short_by_a_full_staging_disk_stay_staged_and_the_full_disk_is_said() {
    assert!(is_root(), "the small staging disk is a tmpfs mounted in a private mount namespace");
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    let photo = |n: u64| bytes(100 + n, 700_000, false);
    for n in 1..=4 {
        write(&phone.join(format!("DCIM/IMG_{n}.jpg")), &photo(n));
    }
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    let m = Mounted::new(&s, &[]);
    let (small_disk, device) = (s.path("small-disk"), s.path("new-phone"));
    std::fs::create_dir(&small_disk).unwrap();
    std::fs::create_dir(&device).unwrap();
    let script = r#"
        mount -t tmpfs -o size=1200k phonebak-test "$STAGE" || exit 90
        if cp -a "$FROM" "$STAGE/"; then exit 91; fi
        "$PHONEBAK" push --device "dir:$DEVICE" --staging "$STAGE"
        echo "push exit $?"
        cd "$STAGE" && find . -type f -printf 'staged %s %p\n'
    "#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("STAGE", &small_disk)
        .env("FROM", m.snapshots().join("pixel/latest/DCIM"))
        .env("DEVICE", &device)
        .env("PHONEBAK", env!("CARGO_BIN_EXE_phonebak"))
        .env("PHONEBAK_REPO", &s.repo)
        .env("PHONEBAK_PASSWORD", PASSWORD)
        .env("XDG_STATE_HOME", s.path("state"))
        .env("XDG_CACHE_HOME", s.path("cache"))
        .output()
        .unwrap();
    let (said, errors) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(said.contains("push exit 3"), "{said}\n{errors}");
    assert!(errors.contains("is full: copies into it may have been cut short"), "{errors}");
    let staged: Vec<(u64, String)> = said
        .lines()
        .filter_map(|line| line.strip_prefix("staged "))
        .map(|line| {
            let (size, path) = line.split_once(' ').unwrap();
            (size.parse().unwrap(), path.trim_start_matches("./").to_string())
        })
        .collect();
    assert!(!staged.is_empty() && staged.iter().all(|(size, _)| *size < 700_000), "{said}");
    for (_, path) in &staged {
        assert!(errors.contains(&format!("{path}: cut short")), "{path} is named: {errors}");
    }
    let pushed = files_under(&device);
    assert_eq!(pushed.len() + staged.len(), 4, "each photo is on the phone or still staged: {said}");
    for file in pushed {
        let n: u64 = file.file_stem().unwrap().to_str().unwrap()[4..].parse().unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), photo(n), "{} arrived whole", file.display());
    }
}

fn push_staging(s: &Scratch, device: &Path, staged: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--staging", staged.to_str().unwrap()];
    args.extend_from_slice(extra);
    push(s, device, &args)
}

/// Found by an adversary: a cut-short copy of the oldest of many versions (only the 16 newest
/// were compared), a copy whose data never reached the disk (its start, then zeros to its full
/// size), and copies that cannot be checked because no snapshot's listing of their folder loads.
#[test]
fn copies_of_old_versions_zero_filled_ones_and_unverifiable_ones_stay_staged() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    let version = |n: u64| bytes(200 + n, 300_000, false);
    write(&phone.join("DCIM/b.jpg"), &bytes(300, 3_000_000, false));
    for n in 0..20 {
        write(&phone.join("DCIM/a.jpg"), &version(n));
        set_mtime(&phone.join("DCIM/a.jpg"), 1_700_000_000 + n as i64, 0);
        s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    }
    let (staged, device) = (s.path("staged"), s.path("new-phone"));
    std::fs::create_dir(&device).unwrap();
    write(&staged.join("DCIM/a.jpg"), &version(0)[..100_000]);
    let mut zeroed = bytes(300, 3_000_000, false);
    zeroed[1 << 20..].fill(0);
    write(&staged.join("DCIM/b.jpg"), &zeroed);

    let out = push_staging(&s, &device, &staged, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("DCIM/a.jpg: cut short: its 100000 bytes are the start of pixel/"), "{said}");
    assert!(said.contains("DCIM/b.jpg: zeros from byte 1048576 on where pixel/"), "{said}");
    assert!(!device.join("DCIM/a.jpg").exists() && !device.join("DCIM/b.jpg").exists());
    assert_eq!(std::fs::read(staged.join("DCIM/b.jpg")).unwrap(), zeroed, "kept staged");

    // The folder listings' pack gone: nothing can be checked, so nothing is pushed as good.
    // Each backup put its new listings in a small pack of their own; its photos are larger.
    std::fs::create_dir(s.path("moved-away")).unwrap();
    for pack in pack_files(&s.repo).into_iter().filter(|p| std::fs::metadata(p).unwrap().len() < 50_000) {
        std::fs::rename(&pack, s.path("moved-away").join(pack.file_name().unwrap())).unwrap();
    }
    let out = push_staging(&s, &device, &staged, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("are not checked against 20 snapshot(s)"), "{said}");
    assert!(said.contains("DCIM/a.jpg: cannot be checked: no snapshot that can be read has it"), "{said}");
    assert!(names(&device.join("DCIM")).is_empty(), "{:?}", names(&device.join("DCIM")));
    assert_eq!(names(&staged.join("DCIM")), ["a.jpg", "b.jpg"]);
}

/// Found by an adversary: two pushes at once to one phone of different files at the same paths
/// wrote one temporary file and renamed each other's bytes into place, deleting staged files
/// whose bytes never reached the phone. Now one waits its turn (exit 11) when both come from one
/// repository, and each has temporary files of its own when they do not.
#[test]
fn two_pushes_at_once_to_one_phone_lose_nothing() {
    let (s, other) = (Scratch::with_repo(), Scratch::with_repo());
    let device = s.path("phone");
    std::fs::create_dir(&device).unwrap();
    let stage = |scratch: &Scratch, name: &str, seed: u64| {
        let dir = scratch.path(name);
        for n in 0..150 {
            write(&dir.join(format!("D/f{n}")), &bytes(seed + n, 100_000, false));
        }
        dir
    };
    let (a, b, c) = (stage(&s, "a", 1_000), stage(&s, "b", 2_000), stage(&other, "c", 3_000));
    let spawn = |scratch: &Scratch, staged: &Path| {
        let spec = format!("dir:{}", device.display());
        scratch
            .command(&["push", "--device", &spec, "--staging", staged.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let runs = [spawn(&s, &a), spawn(&s, &b), spawn(&other, &c)];
    let outs: Vec<_> = runs.into_iter().map(|run| run.wait_with_output().unwrap()).collect();
    for out in &outs {
        assert!([0, 3, 11].contains(&code(out)), "{}", stderr(out));
        if code(out) == 11 {
            assert!(stderr(out).contains("another push to"), "{}", stderr(out));
        }
    }
    let mut pushed = 0;
    for (staged, seed) in [(&a, 1_000), (&b, 2_000), (&c, 3_000)] {
        for n in 0..150 {
            let path = format!("D/f{n}");
            if !staged.join(&path).exists() {
                let on_phone = std::fs::read(device.join(&path)).unwrap();
                assert!(on_phone == bytes(seed + n, 100_000, false), "{path} left staging, the phone has other bytes");
                pushed += 1;
            }
        }
    }
    assert!(pushed >= 150, "{pushed} pushed");
    assert!(leftovers(&device).is_empty(), "{:?}", leftovers(&device));
}

/// Found by an adversary: a rerun that found a file in its journal took the phone's copy for it
/// by size alone, and deleted the staged file though the phone's had been edited since.
#[test]
fn a_journaled_file_edited_on_the_phone_since_is_pushed_again() {
    let s = Scratch::with_repo();
    let (staged, device) = (s.path("staged"), s.path("phone"));
    write(&staged.join("DCIM/a.jpg"), b"original photo 1");
    write(&staged.join("DCIM/b.jpg"), b"x");
    std::fs::create_dir_all(device.join("DCIM/b.jpg")).unwrap(); // in the way: the journal stays
    let first = push_staging(&s, &device, &staged, &["--keep", "--on-conflict", "overwrite"]);
    assert_eq!(code(&first), 3, "{}", stderr(&first));
    std::fs::write(device.join("DCIM/a.jpg"), b"EDITED photo 1!!").unwrap();
    let again = push_staging(&s, &device, &staged, &["--on-conflict", "overwrite"]);
    assert_eq!(code(&again), 3, "{}", stderr(&again));
    assert_eq!(std::fs::read(device.join("DCIM/a.jpg")).unwrap(), b"original photo 1");
}

/// Found by an adversary: pushing a snapshot over adb copied each file, decrypted, into the
/// temporary folder readable by everyone, and `kill -9` left it there.
#[test]
fn a_snapshot_pushed_over_adb_is_never_readable_by_others_on_the_way() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("DCIM/a.jpg"), b"secret photo");
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    // An adb that waits before each push, so that the push is killed with its copy made.
    let (bin, tmp, new_phone) = (s.path("bin"), s.path("tmp"), s.path("new-phone"));
    std::fs::create_dir_all(new_phone.join("sdcard")).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let fake = format!("{}/tests/fake-adb/adb", env!("CARGO_MANIFEST_DIR"));
    write(&bin.join("adb"), format!("#!/bin/sh\n[ \"$1\" = push ] && sleep 30\nexec {fake} \"$@\"\n").as_bytes());
    std::fs::set_permissions(bin.join("adb"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut shell = Command::new("sh");
    shell.args(["-c", "umask 022 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_phonebak")]);
    shell.args(["push", "--device", "adb", "--from", "pixel/latest"]);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    shell.env("PHONEBAK_REPO", &s.repo).env("PHONEBAK_PASSWORD", PASSWORD).env("PATH", path);
    shell.env("FAKE_ADB_ROOT", &new_phone).env("TMPDIR", &tmp);
    s.isolate(&mut shell);
    // Its own process group: `kill -9` of the push and the adb it runs, as a crash would.
    std::os::unix::process::CommandExt::process_group(&mut shell, 0);
    let mut push = shell.spawn().unwrap();
    wait_until("the decrypted copy", || names(&tmp).iter().any(|n| n.starts_with("phonebak-push-")));
    unsafe { libc::kill(-(push.id() as i32), libc::SIGKILL) };
    push.wait().unwrap();
    for name in names(&tmp) {
        let mode = std::fs::metadata(tmp.join(&name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    assert!(!names(&tmp).is_empty(), "the copy was there to check");
}

/// `pixel/latest:/DCIM` means the snapshot's DCIM, as `pixel/latest:DCIM` does.
#[test]
fn a_snapshot_path_may_start_with_a_slash() {
    let s = Scratch::with_repo();
    let (_phone, _m) = mounted_phone(&s);
    let device = s.path("new-phone");
    std::fs::create_dir(&device).unwrap();
    let out = push(&s, &device, &["--from", "pixel/latest:/DCIM"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(device.join("DCIM/Camera/IMG_0001.jpg").is_file());
}

/// Found by an adversary: a journal line naming a temporary file made a rerun delete whatever
/// it named, a real photo on the phone included. Only this tool's temporary names go.
#[test]
fn a_push_journal_never_makes_a_rerun_delete_a_real_file() {
    let s = Scratch::with_repo();
    let (staged, device) = (s.path("staged"), s.path("phone"));
    write(&staged.join("DCIM/a.jpg"), b"mine");
    write(&device.join("DCIM/a.jpg"), b"the phone's own"); // a conflict: the journal stays
    write(&device.join("DCIM/keep.jpg"), b"a photo on the phone");
    assert_eq!(code(&push_staging(&s, &device, &staged, &[])), 3);
    let journal = std::fs::read_dir(s.journals())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "journal"))
        .unwrap();
    let mut lines = std::fs::OpenOptions::new().append(true).open(&journal).unwrap();
    for name in ["DCIM/keep.jpg", "../outside.txt"] {
        std::io::Write::write_all(&mut lines, format!("T\t{}\n", hex(name.as_bytes())).as_bytes()).unwrap();
    }
    write(&s.path("outside.txt"), b"not the phone's");
    assert_eq!(code(&push_staging(&s, &device, &staged, &[])), 3);
    assert_eq!(std::fs::read(device.join("DCIM/keep.jpg")).unwrap(), b"a photo on the phone");
    assert!(s.path("outside.txt").exists());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Found by an adversary: with one device's snapshot unreadable and another device's without
/// the folder, a cut-short copy was taken for the user's own file and pushed.
#[test]
fn a_file_only_an_unreadable_snapshot_could_have_is_kept_staged() {
    let s = Scratch::with_repo();
    let (pixel, tablet) = (s.path("pixel"), s.path("tablet"));
    write(&pixel.join("DCIM/Camera/a.jpg"), &bytes(5, 3_000_000, false));
    s.ok(&["backup", "--device", "pixel", pixel.to_str().unwrap()]);
    let before: Vec<PathBuf> = pack_files(&s.repo);
    write(&tablet.join("Documents/n.txt"), b"notes");
    s.ok(&["backup", "--device", "tablet", tablet.to_str().unwrap()]);
    // Pixel's folder listings: its small pack.
    let listings = before.iter().min_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    std::fs::rename(listings, s.path("moved-away")).unwrap();
    let (staged, device) = (s.path("staged"), s.path("new-phone"));
    std::fs::create_dir(&device).unwrap();
    write(&staged.join("DCIM/Camera/a.jpg"), &bytes(5, 3_000_000, false)[..1 << 20]);
    let out = push_staging(&s, &device, &staged, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("a.jpg: cannot be checked"), "{}", stderr(&out));
    assert!(!device.join("DCIM/Camera/a.jpg").exists());
    assert!(staged.join("DCIM/Camera/a.jpg").exists());
}

/// Found by an adversary: a staged folder swapped for a symlink during a push led it to push
/// and then delete the files the link pointed to, and a FIFO put in a file's place hung it.
/// An adb that waits in its first push gives the moment to swap them.
#[test]
fn a_staging_folder_changed_during_a_push_never_leads_outside_it() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::with_repo();
    let (staged, victim, bin, new_phone) = (s.path("staged"), s.path("victim"), s.path("bin"), s.path("new-phone"));
    for name in ["a.txt", "b.txt"] {
        write(&staged.join("DCIM").join(name), b"staged file ");
        write(&victim.join(name), b"SECRET file ");
        set_mtime(&staged.join("DCIM").join(name), 1_700_000_000, 0);
        set_mtime(&victim.join(name), 1_700_000_000, 0);
    }
    write(&staged.join("Music/c.txt"), b"a song");
    std::fs::create_dir_all(new_phone.join("sdcard")).unwrap();
    let (waiting, go) = (s.path("adb-waiting"), s.path("adb-go"));
    let fake = format!("{}/tests/fake-adb/adb", env!("CARGO_MANIFEST_DIR"));
    let wrapper = format!(
        "#!/bin/sh\nif [ \"$1\" = push ] && [ ! -e {w} ]; then touch {w}; while [ ! -e {g} ]; do sleep 0.05; done; fi\nexec {fake} \"$@\"\n",
        w = waiting.display(),
        g = go.display()
    );
    write(&bin.join("adb"), wrapper.as_bytes());
    std::fs::set_permissions(bin.join("adb"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let push = s
        .command(&["push", "--device", "adb", "--staging", staged.to_str().unwrap()])
        .env("PATH", path)
        .env("FAKE_ADB_ROOT", &new_phone)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the first adb push", || waiting.exists());
    std::fs::rename(staged.join("DCIM"), s.path("DCIM-moved")).unwrap();
    std::os::unix::fs::symlink(&victim, staged.join("DCIM")).unwrap();
    std::fs::remove_file(staged.join("Music/c.txt")).unwrap();
    assert!(Command::new("mkfifo").arg(staged.join("Music/c.txt")).status().unwrap().success());
    write(&go, b"");
    let started = Instant::now();
    let out = push.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(30), "no hang on a FIFO");
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    for name in ["a.txt", "b.txt"] {
        assert_eq!(std::fs::read(victim.join(name)).unwrap(), b"SECRET file ", "{name} is where it was");
    }
    for file in files_under(&new_phone) {
        assert_ne!(std::fs::read(&file).unwrap(), b"SECRET file ", "{} came from outside staging", file.display());
    }
}

#[test]
fn staging_and_journals_an_earlier_version_kept_in_the_repository_folder_are_still_used() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    // What an earlier version left: REPO/staging/ with staged files, REPO/push-journal/.
    let legacy = s.repo.join("staging");
    std::fs::create_dir(&legacy).unwrap();
    cp_a(&phone.join("Documents"), &legacy);
    std::fs::create_dir(s.repo.join("push-journal")).unwrap();
    let m = Mounted::new(&s, &[]);
    assert_eq!(std::fs::read_link(m.restore()).unwrap(), std::fs::canonicalize(&legacy).unwrap());
    drop(m);
    let device = s.path("new-phone");
    std::fs::create_dir(&device).unwrap();
    let out = push(&s, &device, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_same_tree_but_owner(&phone.join("Documents"), &device.join("Documents"));
    assert!(names(&legacy).is_empty(), "pushed out of the old staging folder");
    assert!(!s.state_dir().join("staging").exists(), "no second staging folder was made");
}

#[test]
fn a_link_planted_as_the_old_staging_folder_of_a_folder_repository_is_not_followed() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::with_repo();
    let elsewhere = s.path("someone-elses");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, s.repo.join("staging")).unwrap();
    let m = Mounted::new(&s, &[]);
    assert_eq!(std::fs::read_link(m.restore()).unwrap(), std::fs::canonicalize(s.staging()).unwrap());
    std::fs::write(m.restore().join("mine.txt"), b"private").unwrap();
    drop(m);
    assert!(names(&elsewhere).is_empty(), "nothing went through the link");
    assert_eq!(std::fs::metadata(&elsewhere).unwrap().permissions().mode() & 0o777, 0o755, "its mode untouched");
}
