//! `ios-backup:DIR` sources. There is no iPhone here: the tests write backup folders themselves,
//! following the documented format (Manifest.db's Files table, fileID = SHA-1 of
//! `domain-relativePath` kept at `fileID[0:2]/fileID`, MBFile records as NSKeyedArchiver plists).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An unencrypted iOS backup folder being written.
struct Backup {
    dir: PathBuf,
    db: rusqlite::Connection,
}

fn sha1_hex(text: &str) -> String {
    let mut child = Command::new("sha1sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..40].to_string()
}

/// An MBFile record as iOS archives it: NSKeyedArchiver, the fields on the root object, a
/// symlink's target a reference into `$objects`.
fn mbfile(mode: u32, mtime: i64, size: u64, target: Option<&str>) -> Vec<u8> {
    use plist::{Dictionary, Uid, Value};
    let mut root = Dictionary::new();
    root.insert("$class".into(), Value::Uid(Uid::new(2)));
    root.insert("Mode".into(), Value::Integer(mode.into()));
    root.insert("UserID".into(), Value::Integer(501.into()));
    root.insert("GroupID".into(), Value::Integer(501.into()));
    root.insert("LastModified".into(), Value::Integer(mtime.into()));
    root.insert("Size".into(), Value::Integer(size.into()));
    root.insert("ProtectionClass".into(), Value::Integer(3.into()));
    let mut class = Dictionary::new();
    class.insert("$classname".into(), Value::String("MBFile".into()));
    class.insert(
        "$classes".into(),
        Value::Array(vec![Value::String("MBFile".into()), Value::String("NSObject".into())]),
    );
    let mut objects =
        vec![Value::String("$null".into()), Value::Dictionary(Dictionary::new()), Value::Dictionary(class)];
    if let Some(target) = target {
        root.insert("Target".into(), Value::Uid(Uid::new(3)));
        objects.push(Value::String(target.into()));
    }
    objects[1] = Value::Dictionary(root);
    let mut top = Dictionary::new();
    top.insert("root".into(), Value::Uid(Uid::new(1)));
    let mut archive = Dictionary::new();
    archive.insert("$version".into(), Value::Integer(100000.into()));
    archive.insert("$archiver".into(), Value::String("NSKeyedArchiver".into()));
    archive.insert("$top".into(), Value::Dictionary(top));
    archive.insert("$objects".into(), Value::Array(objects));
    let mut bytes = Vec::new();
    Value::Dictionary(archive).to_writer_binary(&mut bytes).unwrap();
    bytes
}

impl Backup {
    fn new(dir: &Path) -> Backup {
        std::fs::create_dir_all(dir).unwrap();
        let db = rusqlite::Connection::open(dir.join("Manifest.db")).unwrap();
        db.execute_batch(
            "CREATE TABLE Files (fileID TEXT PRIMARY KEY, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB);",
        )
        .unwrap();
        Backup { dir: dir.to_path_buf(), db }
    }

    fn row(&self, domain: &str, relative: &str, flags: i64, record: Vec<u8>) -> String {
        let id = sha1_hex(&format!("{domain}-{relative}"));
        self.db
            .execute(
                "INSERT OR REPLACE INTO Files VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![id, domain, relative, flags, record],
            )
            .unwrap();
        id
    }

    fn file(&self, domain: &str, relative: &str, content: &[u8], mtime: i64) {
        let id = self.row(domain, relative, 1, mbfile(0o100644, mtime, content.len() as u64, None));
        write(&self.dir.join(&id[..2]).join(&id), content);
    }

    fn folder(&self, domain: &str, relative: &str, mtime: i64) {
        self.row(domain, relative, 2, mbfile(0o40755, mtime, 0, None));
    }

    fn symlink(&self, domain: &str, relative: &str, target: &str) {
        self.row(domain, relative, 4, mbfile(0o120755, 1_600_000_000, 0, Some(target)));
    }
}

#[test]
fn an_ios_backup_is_a_snapshot_of_the_phones_real_paths() {
    let s = Scratch::with_repo();
    let udid = s.path("Backup/00008030-001A2B3C4D5E802E");
    let backup = Backup::new(&udid);
    let photo = bytes(1, 700_000, false);
    backup.folder("CameraRollDomain", "", 1_690_000_000);
    backup.folder("CameraRollDomain", "Media", 1_690_000_001);
    backup.file("CameraRollDomain", "Media/DCIM/100APPLE/IMG_0001.HEIC", &photo, 1_700_000_000);
    backup.file("HomeDomain", "Library/SMS/sms.db", &bytes(2, 40_000, true), 1_700_000_100);
    backup.file("AppDomain-net.whatsapp.WhatsApp", "Documents/chat.txt", b"hello", 1_700_000_200);
    backup.symlink("HomeDomain", "Library/link", "SMS/sms.db");
    // Hostile rows and a missing blob: named, never entries.
    backup.file("HomeDomain", "../../etc/evil", b"x", 1);
    backup.file("HomeDomain", "/absolute", b"x", 1);
    backup.file("HomeDomain", "a//b", b"x", 1);
    backup.file("Home/Domain", "c", b"x", 1);
    let gone = backup.row("HomeDomain", "Library/gone.jpg", 1, mbfile(0o100644, 1, 9, None));
    // A file row where other rows have a folder: what is below it cannot be imported, and says so.
    backup.file("MediaDomain", "Photos/below.jpg", b"below", 1);
    backup.file("MediaDomain", "Photos", b"a file", 1);
    drop(backup);
    assert!(!udid.join(&gone[..2]).join(&gone).exists());

    // The folder above the backup, holding one: found.
    let source = format!("ios-backup:{}", s.path("Backup").display());
    let out = s.run(&["backup", "--device", "iphone", &source]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let said = stderr(&out);
    for hostile in [
        "HomeDomain-../../etc/evil",
        "HomeDomain-/absolute",
        "HomeDomain-a//b",
        "Home/Domain-c",
        "gone.jpg",
        "MediaDomain/Photos",
    ] {
        assert!(said.contains(hostile), "{hostile} is named: {said}");
    }

    let target = s.path("restored");
    s.ok(&["restore", "iphone/latest", "--target", target.to_str().unwrap()]);
    let photo_path = target.join("CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.HEIC");
    assert_eq!(std::fs::read(&photo_path).unwrap(), photo);
    let meta = std::fs::metadata(&photo_path).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.mode() & 0o7777, meta.mtime(), meta.uid()), (0o644, 1_700_000_000, 501));
    assert_eq!(std::fs::metadata(target.join("CameraRollDomain/Media")).unwrap().mtime(), 1_690_000_001);
    assert_eq!(std::fs::read(target.join("AppDomain-net.whatsapp.WhatsApp/Documents/chat.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read_link(target.join("HomeDomain/Library/link")).unwrap(), Path::new("SMS/sms.db"));
    let all: Vec<String> =
        files_under(&target).iter().map(|p| p.strip_prefix(&target).unwrap().display().to_string()).collect();
    assert!(!all.iter().any(|p| p.contains("evil") || p.contains("absolute") || p.contains("gone")), "{all:?}");
    assert!(!s.path("etc").exists());

    // The next day, unchanged: nothing new is stored.
    let again = s.run(&["backup", "--device", "iphone", &source]);
    assert_eq!(code(&again), 3, "{}", stderr(&again));
    let list = s.json(&["snapshots"]);
    assert_eq!(list.as_array().unwrap().last().unwrap()["stats"]["new_bytes"], 0, "{list}");
}

#[test]
fn a_folder_with_several_backups_or_none_is_refused_by_name() {
    let s = Scratch::with_repo();
    Backup::new(&s.path("many/aaaa"));
    Backup::new(&s.path("many/bbbb"));
    let out = s.run(&["backup", "--device", "iphone", &format!("ios-backup:{}", s.path("many").display())]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("holds 2 backups") && stderr(&out).contains("bbbb"), "{}", stderr(&out));
    std::fs::create_dir(s.path("empty")).unwrap();
    let out = s.run(&["backup", "--device", "iphone", &format!("ios-backup:{}", s.path("empty").display())]);
    assert!(stderr(&out).contains("not an iOS backup"), "{}", stderr(&out));
}

#[test]
fn mbfile_records_decode_and_damaged_ones_are_errors() {
    let record = mbfile(0o120755, 1_600_000_000, 0, Some("x/y"));
    let decoded = phonebak::source::decode_mbfile(&record).unwrap();
    assert_eq!((decoded.mode, decoded.mtime, decoded.target.as_deref()), (0o120755, 1_600_000_000, Some(&b"x/y"[..])));
    for cut in [0, 10, record.len() / 2, record.len() - 1] {
        assert!(phonebak::source::decode_mbfile(&record[..cut]).is_err(), "{cut}");
    }
}

#[test]
fn an_encrypted_backup_is_refused_by_name_and_an_unfinished_one_warned_about() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    let backup = Backup::new(&dir);
    backup.file("HomeDomain", "Library/a.txt", b"a", 1_700_000_000);
    drop(backup);
    let plist_with = |file: &str, key: &str, value: plist::Value| {
        let mut dict = plist::Dictionary::new();
        dict.insert(key.into(), value);
        plist::Value::Dictionary(dict).to_file_xml(dir.join(file)).unwrap();
    };
    let source = format!("ios-backup:{}", dir.display());
    plist_with("Status.plist", "SnapshotState", plist::Value::String("uploading".into()));
    let out = s.run(&["backup", "--device", "iphone", &source]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("not finished"), "{}", stderr(&out));
    plist_with("Manifest.plist", "IsEncrypted", plist::Value::Boolean(true));
    let out = s.run(&["backup", "--device", "iphone", &source]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("encrypted backup"), "{}", stderr(&out));
    assert_eq!(s.json(&["snapshots"]).as_array().unwrap().len(), 1, "nothing committed");
}

#[test]
fn the_phones_own_name_and_backup_date_are_the_defaults() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    let backup = Backup::new(&dir);
    backup.file("HomeDomain", "Library/a.txt", b"a", 1_700_000_000);
    drop(backup);
    let mut info = plist::Dictionary::new();
    info.insert("Device Name".into(), plist::Value::String("Anna's iPhone/2".into()));
    let date = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_750_000_000);
    info.insert("Last Backup Date".into(), plist::Value::Date(date.into()));
    plist::Value::Dictionary(info).to_file_binary(dir.join("Info.plist")).unwrap();
    s.ok(&["backup", &format!("ios-backup:{}", dir.display())]);
    let list = s.json(&["snapshots"]);
    let snapshot = &list.as_array().unwrap()[0];
    assert_eq!(snapshot["device"], "Anna's iPhone-2", "{list}");
    let time = chrono::DateTime::parse_from_rfc3339(snapshot["time"].as_str().unwrap()).unwrap();
    assert_eq!(time.timestamp(), 1_750_000_000, "{list}");

    // A folder says no name: --device is asked for.
    let out = s.run(&["backup", s.path("backup").to_str().unwrap()]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("--device is needed"), "{}", stderr(&out));
}
