//! End-to-end tests of backup and restore through the real `phonebak` binary on real files.

mod common;

use common::*;

#[test]
fn backup_then_restore_is_byte_and_metadata_exact() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    let out = s.path("out");
    s.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&phone, &out);
}

#[test]
fn restore_of_a_path_and_of_a_single_file() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "pixel", &format!("dir:{}", phone.display())]);
    let camera = s.path("camera");
    s.ok(&["restore", "pixel/latest:DCIM/Camera", "--target", camera.to_str().unwrap()]);
    assert_same_tree(&phone.join("DCIM/Camera"), &camera);
    let single = s.path("single");
    s.ok(&["restore", "latest:Documents/notes.txt", "--target", single.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(single.join("notes.txt")).unwrap(),
        std::fs::read(phone.join("Documents/notes.txt")).unwrap()
    );
    let missing = s.run(&["restore", "latest:No/Such/Thing", "--target", single.to_str().unwrap()]);
    assert_eq!(code(&missing), 1);
    assert!(stderr(&missing).contains("No/Such/Thing is not in the snapshot"), "{}", stderr(&missing));
}

#[test]
fn unchanged_phone_stores_almost_nothing_and_reads_nothing() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    let first = s.json(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    let second = s.json(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    let bytes = first["stats"]["bytes"].as_u64().unwrap();
    let added = second["stats"]["added_bytes"].as_u64().unwrap();
    assert_eq!(second["stats"]["new_bytes"], 0);
    assert!(added * 100 < bytes, "second backup added {added} of {bytes} bytes");
    assert_eq!(second["parent"], first["id"]);
}

/// A real SQLite database, changed in place by SQLite itself: the second backup stores about the
/// changed pages, not the whole file.
#[test]
fn a_database_with_a_few_changed_pages_stores_about_those_pages() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    let db = phone.join("Android/data/com.whatsapp/databases/msgstore.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let sql = |script: &str| {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
            ])
            .arg(&db)
            .arg(script)
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    sql("PRAGMA page_size=4096; CREATE TABLE m (id INTEGER PRIMARY KEY, body BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 60000)
         INSERT INTO m SELECT i, randomblob(500) FROM n;");
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(size > 25 << 20, "a database of {size} bytes");
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    sql("UPDATE m SET body = randomblob(500) WHERE id IN (17, 20000, 41000, 59000);");
    let second = s.json(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    let new = second["stats"]["new_bytes"].as_u64().unwrap();
    // Four rows on four pages (plus the header page): a few 64 KiB chunks, not the 29 MiB file.
    assert!(new > 0 && new <= 8 * 256 * 1024, "{new} new bytes for 4 changed rows of a {size}-byte database");
    let out = s.path("out");
    s.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&phone, &out);
}

#[test]
fn renamed_folder_and_deleted_files_cost_no_new_data() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    std::fs::rename(phone.join("DCIM/Camera"), phone.join("DCIM/Moved")).unwrap();
    std::fs::remove_file(phone.join("Documents/notes.txt")).unwrap();
    let second = s.json(&["backup", "--device", "pixel", phone.to_str().unwrap()]);
    assert_eq!(second["stats"]["new_bytes"], 0);
    let out = s.path("out");
    s.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&phone, &out);
}

#[test]
fn excludes_and_includes_choose_what_is_kept() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "a", "--exclude", "cache", "--exclude", "*.jpg", phone.to_str().unwrap()]);
    let listed = s.ok(&["ls", "a/latest"]);
    assert!(!listed.contains(".jpg") && !listed.contains("/cache"), "{listed}");
    assert!(listed.contains("/Documents/notes.txt"));
    s.ok(&["backup", "--device", "b", "--include", "DCIM/**", phone.to_str().unwrap()]);
    let listed = s.ok(&["ls", "b/latest"]);
    assert!(listed.contains("/DCIM/Camera/IMG_0001.jpg"), "{listed}");
    assert!(!listed.contains("Documents") && !listed.contains("Download"), "{listed}");
}

#[test]
fn snapshots_ls_and_selection() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "pixel", "--tag", "weekly", "--time", "2026-11-21T08:00:00", phone.to_str().unwrap()]);
    s.ok(&["backup", "--device", "pixel", "--time", "2026-11-22T08:00:00", phone.to_str().unwrap()]);
    s.ok(&["backup", "--device", "tablet", "--time", "2026-11-20T08:00:00", phone.to_str().unwrap()]);
    let list = s.json(&["snapshots"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["device"], "tablet");
    assert_eq!(list[1]["name"], "2026-11-21T08:00:00");
    assert_eq!(list[1]["tags"][0], "weekly");
    let only_pixel = s.json(&["snapshots", "--device", "pixel"]);
    assert_eq!(only_pixel.as_array().unwrap().len(), 2);
    let by_time = s.ok(&["ls", "pixel/2026-11-21T08:00:00", "Documents"]);
    assert!(by_time.contains("/Documents/notes.txt"));
    let prefix = &list[0]["id"].as_str().unwrap()[..8];
    let long = s.ok(&["ls", "-l", prefix, "Download"]);
    assert!(long.contains("/Download/camera -> ../DCIM/Camera"), "{long}");
    let bad = s.run(&["ls", "nosuchdevice/latest"]);
    assert_eq!(code(&bad), 1);
    assert!(stderr(&bad).contains("no snapshot matches"), "{}", stderr(&bad));
}

#[test]
fn a_file_growing_during_backup_is_recorded_with_the_bytes_read() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    let log = phone.join("log.txt");
    write(&log, &bytes(1, 1 << 20, true));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                file.write_all(&bytes(9, 64 * 1024, true)).unwrap();
            }
        })
    };
    for _ in 0..3 {
        s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let final_content = std::fs::read(&log).unwrap();
    let out = s.path("out");
    s.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    let restored = std::fs::read(out.join("log.txt")).unwrap();
    let listed = s.ok(&["ls", "-l", "latest", "log.txt"]);
    assert!(listed.contains(&format!(" {} ", restored.len())), "recorded size must be the restored size: {listed}");
    assert!(final_content.starts_with(&restored), "the snapshot holds bytes the file never had");
}

#[test]
fn restore_never_writes_through_a_symlink_in_the_target() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("DCIM/photo.jpg"), b"photo");
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let outside = s.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let target = s.path("target");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("DCIM")).unwrap();
    // By default the link is the user's and stays; with --overwrite it is replaced by a folder.
    let kept = s.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(code(&kept), 3, "{}", stderr(&kept));
    assert!(std::fs::symlink_metadata(target.join("DCIM")).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "restore wrote outside its target");
    s.ok(&["restore", "latest", "--target", target.to_str().unwrap(), "--overwrite"]);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "restore wrote outside its target");
    assert!(std::fs::symlink_metadata(target.join("DCIM")).unwrap().is_dir());
    assert_eq!(std::fs::read(target.join("DCIM/photo.jpg")).unwrap(), b"photo");
}

#[test]
fn restore_overwrites_an_existing_target_exactly_only_when_asked() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let out = s.path("out");
    write(&out.join("Documents/notes.txt"), b"stale");
    let kept = s.run(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(code(&kept), 3, "{}", stderr(&kept));
    assert_eq!(std::fs::read(out.join("Documents/notes.txt")).unwrap(), b"stale");
    s.ok(&["restore", "latest", "--target", out.to_str().unwrap(), "--overwrite"]);
    assert_same_tree(&phone, &out);
    let leftovers = std::fs::read_dir(out.join("Documents"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".phonebak-restore"));
    assert_eq!(leftovers.count(), 0, "no temporary file left behind");
}

/// Names are bytes: many that are not UTF-8 look the same as text. Restoring them together
/// (in parallel) once collided on a temporary name derived from that text.
#[test]
fn names_that_look_alike_as_text_restore_side_by_side() {
    use std::os::unix::ffi::OsStrExt;
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    for second in 0x80u8..0xb0 {
        let name = std::ffi::OsStr::from_bytes(&[0xff, second]).to_os_string();
        write(&phone.join(name), &bytes(second as u64, 200_000, false));
    }
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let out = s.path("out");
    s.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&phone, &out);
}

#[test]
fn a_sparse_file_restores_sparse() {
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    let image = phone.join("disk.img");
    write(&image, b"start");
    let file = std::fs::File::options().write(true).open(&image).unwrap();
    file.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"end", (64 << 20) - 3).unwrap();
    drop(file);
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let out = s.path("out");
    s.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&phone, &out);
    let allocated = std::fs::metadata(out.join("disk.img")).unwrap().blocks() * 512;
    assert!(allocated < 16 << 20, "{allocated} bytes allocated for 64 MiB of mostly holes");
}

/// Files are written in the order their chunks lie in the packs, each chunk to every place that
/// needs it: one chunk in many files, one file whose chunks repeat, a file that shares its
/// middle with another, and empty files all come back exact.
#[test]
fn chunks_shared_between_files_and_within_one_restore_into_every_place() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    let photo = bytes(70, 3_000_000, false);
    for i in 0..20 {
        write(&phone.join(format!("DCIM/copy-{i:02}.jpg")), &photo);
        write(&phone.join(format!("Documents/empty-{i}.txt")), b"");
        write(&phone.join(format!("Documents/same-{i}.txt")), b"the same small note");
    }
    let block = bytes(71, 2_000_000, false);
    let repeated: Vec<u8> = (0..4).flat_map(|_| block.iter().copied()).collect();
    write(&phone.join("Movies/repeated.bin"), &repeated);
    let mut framed = bytes(72, 1_500_000, false);
    framed.extend_from_slice(&photo);
    framed.extend_from_slice(&bytes(73, 1_500_000, false));
    write(&phone.join("Movies/framed.bin"), &framed);
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    let out = s.path("out");
    s.ok(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_same_tree(&phone, &out);
    let leftovers: Vec<_> =
        files_under(&out).into_iter().filter(|p| p.to_string_lossy().contains(".phonebak-restore")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Files are written well after the walk made their folders, so the target can change in
/// between. Caught mid-restore (stopped once the walk made the folders): a folder swapped for a
/// symlink to elsewhere never leads a write there, and a file that appeared where one goes is
/// the user's and stays (exit 3).
#[test]
fn a_target_changed_during_the_restore_is_never_written_through_or_over() {
    use std::os::unix::process::ExitStatusExt;
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("DCIM/video.mp4"), &bytes(95, 120_000_000, false));
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    // Runs a restore into `target`, stops it once the walk made `DCIM`, lets `meddle` change
    // the target, and lets it finish.
    let restore_meddled = |target: &std::path::Path, meddle: &dyn Fn()| {
        let mut child = s.command(&["restore", "latest", "--target", target.to_str().unwrap()]).spawn().unwrap();
        let pid = child.id() as i32;
        // The walk has made `DCIM`; its 120 MB file is not written yet or under way. Looked for
        // every millisecond: the restore must not finish in between.
        while !target.join("DCIM").is_dir() {
            assert!(child.try_wait().unwrap().is_none(), "the restore ended before making its folders");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        meddle();
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let status = child.wait().unwrap();
        assert!(status.signal().is_none(), "{status:?}");
        status.code().unwrap()
    };
    // The folder (with the file under way in it, if it is) moved elsewhere and a symlink to it
    // left in its place: the restore must not follow it to write the file there.
    let outside = s.path("outside");
    let swapped = s.path("swapped");
    let code = restore_meddled(&swapped, &|| {
        std::fs::rename(swapped.join("DCIM"), &outside).unwrap();
        std::os::unix::fs::symlink(&outside, swapped.join("DCIM")).unwrap();
    });
    assert_ne!(code, 0, "a restore whose folder was swapped for a symlink went on as if nothing happened");
    assert!(!outside.join("video.mp4").exists(), "restore wrote through the swapped-in symlink");
    let raced = s.path("raced");
    let code = restore_meddled(&raced, &|| write(&raced.join("DCIM/video.mp4"), b"the user's own video"));
    assert_eq!(code, 3, "the file that appeared is reported as in the way");
    assert_eq!(std::fs::read(raced.join("DCIM/video.mp4")).unwrap(), b"the user's own video");
}
