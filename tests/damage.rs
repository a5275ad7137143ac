//! Damage is found, named and contained: `check --read-data` names the damaged blobs' snapshots
//! and files, and `restore` fails loudly for those files and restores the others.

mod common;

use common::*;

#[test]
fn a_flipped_byte_in_a_pack_is_found_and_contained() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    write(&phone.join("DCIM/victim.jpg"), &bytes(1, 2_000_000, false));
    write(&phone.join("Documents/fine.txt"), &bytes(2, 10_000, true));
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    assert!(s.run(&["check", "--read-data"]).status.success());

    // The data pack is the big one; flip a bit in the middle of the photo's blob.
    damage_largest_pack(&s.repo, 1_000_000);

    let quick = s.run(&["check"]);
    assert!(quick.status.success(), "structure is intact: {}", String::from_utf8_lossy(&quick.stdout));
    let check = s.run(&["check", "--read-data"]);
    assert_eq!(code(&check), 13);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains("1 damaged blob(s)") && report.contains("damaged blob "), "{report}");
    assert!(report.contains("DCIM/victim.jpg: 1 chunk(s) damaged"), "{report}");
    assert!(!report.contains("fine.txt"), "{report}");

    let out = s.path("out");
    let restore = s.run(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(code(&restore), 13);
    assert!(stderr(&restore).contains("victim.jpg"), "{}", stderr(&restore));
    assert!(!out.join("DCIM/victim.jpg").exists(), "no wrong bytes under the real name");
    assert_eq!(std::fs::read_dir(out.join("DCIM")).unwrap().count(), 0, "no temp file left");
    assert_eq!(std::fs::read(out.join("Documents/fine.txt")).unwrap(), bytes(2, 10_000, true));
}

#[test]
fn a_truncated_pack_or_index_is_reported_not_a_panic() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    for pack in pack_files(&s.repo) {
        let len = std::fs::metadata(&pack).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&pack).unwrap().set_len(len / 2).unwrap();
    }
    let check = s.run(&["check"]);
    assert_eq!(code(&check), 13);
    assert!(String::from_utf8_lossy(&check.stdout).contains("no end marker (truncated?)"));
    let index = std::fs::read_dir(s.repo.join("index")).unwrap().next().unwrap().unwrap().path();
    std::fs::write(&index, b"PBIDX001 short").unwrap();
    // A damaged index file is set aside with a warning; listing snapshots needs no pack.
    let out = s.run(&["snapshots"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("repository damaged: index file"), "{}", stderr(&out));
    let check = s.run(&["check"]);
    assert_eq!(code(&check), 13);
}

#[test]
fn a_missing_pack_is_named_by_check() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    sample_phone(&phone);
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    for pack in pack_files(&s.repo) {
        std::fs::remove_file(pack).unwrap();
    }
    let check = s.run(&["check"]);
    assert_eq!(code(&check), 13);
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains("is missing"), "{report}");
    assert!(report.contains("(p): /: folder listing is missing"), "the snapshot is named: {report}");
    assert!(report.contains("repair: phonebak repair index"), "the fitting repair is named: {report}");
}

/// A damaged chunk that several files share fails each of them, and only them: the restore
/// writes chunks in pack order to every file that needs them, and gives up a file (its
/// temporary file removed) as soon as one of its chunks cannot be had.
#[test]
fn a_damaged_chunk_shared_by_several_files_fails_each_of_them_and_no_other() {
    let s = Scratch::with_repo();
    let phone = s.path("phone");
    let photo = bytes(80, 2_000_000, false);
    for name in ["DCIM/a.jpg", "DCIM/b.jpg", "Pictures/c.jpg"] {
        write(&phone.join(name), &photo);
    }
    write(&phone.join("Documents/fine.txt"), &bytes(81, 10_000, true));
    s.ok(&["backup", "--device", "p", phone.to_str().unwrap()]);
    damage_largest_pack(&s.repo, 1_000_000);
    let out = s.path("out");
    let restore = s.run(&["restore", "latest", "--target", out.to_str().unwrap()]);
    assert_eq!(code(&restore), 13, "{}", stderr(&restore));
    for name in ["DCIM/a.jpg", "DCIM/b.jpg", "Pictures/c.jpg"] {
        assert!(stderr(&restore).contains(name), "{name} not named: {}", stderr(&restore));
        assert!(!out.join(name).exists(), "no wrong bytes under the real name {name}");
    }
    assert_eq!(std::fs::read(out.join("Documents/fine.txt")).unwrap(), bytes(81, 10_000, true));
    let leftovers: Vec<_> =
        files_under(&out).into_iter().filter(|p| p.to_string_lossy().contains(".phonebak-restore")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
