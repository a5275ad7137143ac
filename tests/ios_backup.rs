//! `ios-backup:DIR` sources. There is no iPhone here: the tests write backup folders themselves,
//! following the documented format (Manifest.db's Files table, fileID = SHA-1 of
//! `domain-relativePath` kept at `fileID[0:2]/fileID`, MBFile records as NSKeyedArchiver plists).
//! Encrypted backups are encrypted here as iOS does it, with the RustCrypto primitives directly
//! (not phonebak's own code): a keybag of class keys wrapped with the password's PBKDF2 key,
//! AES-256-CBC files under keys wrapped with a class key.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// An iOS backup folder being written; `finish` completes it.
struct Backup {
    dir: PathBuf,
    db: rusqlite::Connection,
    /// Where Manifest.db is written in the clear until `finish` encrypts it.
    plain_db: PathBuf,
    encryption: Option<Encryption>,
}

/// An encrypted backup's keys, made up here as iOS makes them.
#[derive(Clone)]
struct Encryption {
    keybag: Vec<u8>,
    class_keys: std::collections::HashMap<u32, [u8; 32]>,
    manifest_key: [u8; 32],
}

fn tlv(tag: &[u8; 4], value: &[u8]) -> Vec<u8> {
    [&tag[..], &(value.len() as u32).to_be_bytes(), value].concat()
}

impl Encryption {
    fn new(password: &str, dp_iterations: u32, iterations: u32) -> Encryption {
        let (dp_salt, salt): ([u8; 20], [u8; 20]) = (rand::random(), rand::random());
        let mut first = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), &dp_salt, dp_iterations, &mut first);
        let mut passcode_key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha1::Sha1>(&first, &salt, iterations, &mut passcode_key);
        let kek = aes_kw::KekAes256::from(passcode_key);
        let mut keybag = [
            tlv(b"VERS", &4u32.to_be_bytes()),
            tlv(b"TYPE", &1u32.to_be_bytes()),
            tlv(b"UUID", &rand::random::<[u8; 16]>()),
            tlv(b"HMCK", &[0x5a; 40]),
            tlv(b"WRAP", &0u32.to_be_bytes()),
            tlv(b"SALT", &salt),
            tlv(b"ITER", &iterations.to_be_bytes()),
            tlv(b"DPWT", &1u32.to_be_bytes()),
            tlv(b"DPIC", &dp_iterations.to_be_bytes()),
            tlv(b"DPSL", &dp_salt),
        ]
        .concat();
        let mut class_keys = std::collections::HashMap::new();
        for class in 1..=11u32 {
            let key: [u8; 32] = rand::random();
            let mut wrapped = [0u8; 40];
            kek.wrap(&key, &mut wrapped).unwrap();
            keybag.extend(
                [
                    tlv(b"UUID", &rand::random::<[u8; 16]>()),
                    tlv(b"CLAS", &class.to_be_bytes()),
                    tlv(b"WRAP", &2u32.to_be_bytes()),
                    tlv(b"KTYP", &0u32.to_be_bytes()),
                    tlv(b"WPKY", &wrapped),
                ]
                .concat(),
            );
            class_keys.insert(class, key);
        }
        Encryption { keybag, class_keys, manifest_key: rand::random() }
    }

    /// A key as iOS stores it: its protection class (little-endian), then the wrapped key.
    fn stored_key(&self, class: u32, key: &[u8; 32]) -> Vec<u8> {
        let mut wrapped = [0u8; 40];
        aes_kw::KekAes256::from(self.class_keys[&class]).wrap(key, &mut wrapped).unwrap();
        [&class.to_le_bytes()[..], &wrapped].concat()
    }
}

fn cbc_decrypt(key: &[u8; 32], data: &[u8]) -> Vec<u8> {
    use aes::cipher::{BlockDecryptMut, KeyIvInit};
    let mut out = data.to_vec();
    let mut cipher = cbc::Decryptor::<aes::Aes256>::new(key.into(), &[0u8; 16].into());
    for block in out.chunks_exact_mut(16) {
        cipher.decrypt_block_mut(block.into());
    }
    let pad = *out.last().unwrap() as usize;
    out.truncate(out.len() - pad);
    out
}

/// AES-256-CBC, zero IV, PKCS#7: how iOS encrypts a backup's files.
fn cbc_encrypt(key: &[u8; 32], data: &[u8]) -> Vec<u8> {
    use aes::cipher::{BlockEncryptMut, KeyIvInit};
    let pad = 16 - data.len() % 16;
    let mut out = [data, &vec![pad as u8; pad]].concat();
    let mut cipher = cbc::Encryptor::<aes::Aes256>::new(key.into(), &[0u8; 16].into());
    for block in out.chunks_exact_mut(16) {
        cipher.encrypt_block_mut(block.into());
    }
    out
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
    mbfile_with_key(mode, mtime, size, target, None)
}

/// An MBFile record, with an encrypted file's stored key as iOS archives it (NSMutableData).
fn mbfile_with_key(mode: u32, mtime: i64, size: u64, target: Option<&str>, key: Option<Vec<u8>>) -> Vec<u8> {
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
    if let Some(key) = key {
        let at = objects.len() as u64;
        let mut data = Dictionary::new();
        data.insert("NS.data".into(), Value::Data(key));
        data.insert("$class".into(), Value::Uid(Uid::new(at + 1)));
        let mut class = Dictionary::new();
        class.insert("$classname".into(), Value::String("NSMutableData".into()));
        class.insert(
            "$classes".into(),
            Value::Array(["NSMutableData", "NSData", "NSObject"].iter().map(|c| Value::String((*c).into())).collect()),
        );
        objects.push(Value::Dictionary(data));
        objects.push(Value::Dictionary(class));
        root.insert("EncryptionKey".into(), Value::Uid(Uid::new(at)));
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
        Backup::create(dir, None)
    }

    /// An encrypted backup; `finish` encrypts Manifest.db and writes Manifest.plist.
    fn encrypted(dir: &Path, encryption: Encryption) -> Backup {
        Backup::create(dir, Some(encryption))
    }

    fn create(dir: &Path, encryption: Option<Encryption>) -> Backup {
        // Finder and iTunes make the 256 blob folders up front.
        for n in 0..=255u8 {
            std::fs::create_dir_all(dir.join(format!("{n:02x}"))).unwrap();
        }
        let plain_db = match encryption {
            Some(_) => dir.with_extension("plain-manifest.db"),
            None => dir.join("Manifest.db"),
        };
        let _ = std::fs::remove_file(&plain_db);
        let db = rusqlite::Connection::open(&plain_db).unwrap();
        db.execute_batch(
            "CREATE TABLE Files (fileID TEXT PRIMARY KEY, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB);
             CREATE TABLE Properties (key TEXT PRIMARY KEY, value BLOB);",
        )
        .unwrap();
        Backup { dir: dir.to_path_buf(), db, plain_db, encryption }
    }

    /// The same backup folder, for the next day's backup to update in place (as iOS does); an
    /// encrypted one is decrypted again first.
    fn reopen(dir: &Path, encryption: Option<Encryption>) -> Backup {
        let plain_db = match &encryption {
            Some(e) => {
                let path = dir.with_extension("plain-manifest.db");
                let cipher = std::fs::read(dir.join("Manifest.db")).unwrap();
                std::fs::write(&path, cbc_decrypt(&e.manifest_key, &cipher)).unwrap();
                path
            }
            None => dir.join("Manifest.db"),
        };
        let db = rusqlite::Connection::open(&plain_db).unwrap();
        Backup { dir: dir.to_path_buf(), db, plain_db, encryption }
    }

    fn finish(self) {
        let Backup { dir, db, plain_db, encryption } = self;
        drop(db);
        let Some(encryption) = encryption else { return };
        let plain = std::fs::read(&plain_db).unwrap();
        std::fs::write(dir.join("Manifest.db"), cbc_encrypt(&encryption.manifest_key, &plain)).unwrap();
        std::fs::remove_file(&plain_db).unwrap();
        use plist::Value;
        let mut manifest = plist::Dictionary::new();
        manifest.insert("IsEncrypted".into(), Value::Boolean(true));
        manifest.insert("BackupKeyBag".into(), Value::Data(encryption.keybag.clone()));
        let manifest_key = encryption.stored_key(4, &encryption.manifest_key);
        manifest.insert("ManifestKey".into(), Value::Data(manifest_key));
        manifest.insert("Version".into(), Value::String("10.0".into()));
        manifest.insert("WasPasscodeSet".into(), Value::Boolean(true));
        // Keys phonebak does not know are kept as they are.
        manifest.insert("SomethingNewer".into(), Value::Array(vec![Value::Integer(7.into())]));
        Value::Dictionary(manifest).to_file_binary(dir.join("Manifest.plist")).unwrap();
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

    fn file(&self, domain: &str, relative: &str, content: &[u8], mtime: i64) -> PathBuf {
        let size = content.len() as u64;
        let (record, blob) = match &self.encryption {
            None => (mbfile(0o100644, mtime, size, None), content.to_vec()),
            Some(encryption) => {
                let key: [u8; 32] = rand::random();
                let stored = encryption.stored_key(3, &key);
                (mbfile_with_key(0o100644, mtime, size, None, Some(stored)), cbc_encrypt(&key, content))
            }
        };
        let id = self.row(domain, relative, 1, record);
        let path = self.dir.join(&id[..2]).join(&id);
        write(&path, &blob);
        path
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
    // A file row where other rows have a folder: the folder and its rows win, and the file row
    // is named.
    backup.file("MediaDomain", "Photos/below.jpg", b"below", 1);
    backup.file("MediaDomain", "Photos", b"a file", 1);
    backup.finish();
    assert!(!udid.join(&gone[..2]).join(&gone).exists());

    // The folder above the backup, holding one: found.
    let source = format!("ios-backup:{}", s.path("Backup").display());
    let out = s.run(&["backup", "--device", "iphone", &source]);
    assert_said(
        &out,
        3,
        &[
            "HomeDomain-../../etc/evil",
            "HomeDomain-/absolute",
            "HomeDomain-a//b",
            "Home/Domain-c",
            "gone.jpg",
            "MediaDomain-Photos: not imported: a file in the catalogue where other rows have a folder",
        ],
    );

    let target = s.path("restored");
    s.ok(&["restore", "iphone/latest", "--target", target.to_str().unwrap()]);
    let photo_path = target.join("CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.HEIC");
    assert_eq!(std::fs::read(&photo_path).unwrap(), photo);
    let meta = std::fs::metadata(&photo_path).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.mode() & 0o7777, meta.mtime(), meta.uid()), (0o644, 1_700_000_000, 501));
    assert_eq!(std::fs::metadata(target.join("CameraRollDomain/Media")).unwrap().mtime(), 1_690_000_001);
    assert_eq!(std::fs::read(target.join("AppDomain-net.whatsapp.WhatsApp/Documents/chat.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read(target.join("MediaDomain/Photos/below.jpg")).unwrap(), b"below");
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
fn an_encrypted_backup_without_its_keybag_is_refused_and_an_unfinished_one_warned_about() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    let backup = Backup::new(&dir);
    backup.file("HomeDomain", "Library/a.txt", b"a", 1_700_000_000);
    backup.finish();
    let plist_with = |file: &str, key: &str, value: plist::Value| {
        let mut dict = plist::Dictionary::new();
        dict.insert(key.into(), value);
        plist::Value::Dictionary(dict).to_file_xml(dir.join(file)).unwrap();
    };
    let source = format!("ios-backup:{}", dir.display());
    plist_with("Status.plist", "SnapshotState", plist::Value::String("uploading".into()));
    let out = s.run(&["backup", "--device", "iphone", &source]);
    assert_said(&out, 0, &["not finished"]);
    plist_with("Manifest.plist", "IsEncrypted", plist::Value::Boolean(true));
    let out = s.run(&["backup", "--device", "iphone", &source]);
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("an encrypted backup without BackupKeyBag"), "{}", stderr(&out));
    assert_eq!(s.json(&["snapshots"]).as_array().unwrap().len(), 1, "nothing committed");
}

#[test]
fn the_phones_own_name_and_backup_date_are_the_defaults() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    let backup = Backup::new(&dir);
    backup.file("HomeDomain", "Library/a.txt", b"a", 1_700_000_000);
    backup.finish();
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

/// One phone's data, written into `backup`: the same bytes whether it is encrypted or not.
fn phone_data(backup: &Backup) {
    backup.folder("CameraRollDomain", "", 1_690_000_000);
    backup.folder("CameraRollDomain", "Media", 1_690_000_001);
    backup.file("CameraRollDomain", "Media/DCIM/100APPLE/IMG_0001.HEIC", &bytes(1, 700_000, false), 1_700_000_000);
    backup.file("HomeDomain", "Library/SMS/sms.db", &bytes(2, 40_000, true), 1_700_000_100);
    backup.file("AppDomain-net.whatsapp.WhatsApp", "Documents/chat.txt", b"hello", 1_700_000_200);
    backup.file("HomeDomain", "Library/empty", b"", 1_700_000_300);
    backup.file("HomeDomain", "Library/block", &[7u8; 16], 1_700_000_300);
    backup.symlink("HomeDomain", "Library/link", "SMS/sms.db");
}

fn info_plist(dir: &Path, name: &str) {
    use plist::Value;
    let mut info = plist::Dictionary::new();
    info.insert("Device Name".into(), Value::String(name.into()));
    info.insert("Product Type".into(), Value::String("iPhone15,2".into()));
    info.insert("Product Version".into(), Value::String("17.5.1".into()));
    info.insert("Serial Number".into(), Value::String("F2LXK0AAAAAA".into()));
    info.insert("IMEI".into(), Value::String("356789012345678".into()));
    info.insert("Unique Identifier".into(), Value::String("00008030-001A2B3C4D5E802E".into()));
    let date = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_750_000_000);
    info.insert("Last Backup Date".into(), Value::Date(date.into()));
    info.insert("iTunes Version".into(), Value::String("12.13".into()));
    Value::Dictionary(info).to_file_xml(dir.join("Info.plist")).unwrap();
}

/// Runs phonebak with extra environment (the backup's password, a private TMPDIR).
fn run_with(s: &Scratch, env: &[(&str, &Path)], args: &[&str]) -> std::process::Output {
    let mut command = s.command(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

#[test]
fn an_encrypted_backup_is_read_with_its_password_and_shares_its_data_with_a_plain_one() {
    let s = Scratch::with_repo();
    let plain = Backup::new(&s.path("plain/UDID"));
    phone_data(&plain);
    plain.finish();
    let encrypted_dir = s.path("encrypted/UDID");
    let encrypted = Backup::encrypted(&encrypted_dir, Encryption::new("hunter2 ü", 10, 5));
    phone_data(&encrypted);
    encrypted.finish();
    info_plist(&encrypted_dir, "Anna's iPhone");
    // Folders no row describes take Manifest.db's time: the same in both, made at different seconds.
    let made = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_750_000_000);
    for dir in [s.path("plain/UDID"), encrypted_dir.clone()] {
        std::fs::File::options().write(true).open(dir.join("Manifest.db")).unwrap().set_modified(made).unwrap();
    }
    let tmp = s.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    s.ok(&["backup", "--device", "Anna's iPhone", &format!("ios-backup:{}", s.path("plain").display())]);

    let source = format!("ios-backup:{}", encrypted_dir.display());
    // No password, a wrong one, a missing password file: exit 19 and nothing committed.
    let out = run_with(&s, &[("TMPDIR", &tmp)], &["backup", &source]);
    assert_said(&out, 19, &["--archive-password-file"]);
    std::fs::write(s.path("wrong"), "hunter3\n").unwrap();
    let wrong = s.path("wrong");
    let out =
        run_with(&s, &[("TMPDIR", &tmp)], &["backup", "--archive-password-file", wrong.to_str().unwrap(), &source]);
    assert_said(&out, 19, &["wrong password for this encrypted iPhone backup"]);
    let out = run_with(&s, &[], &["backup", "--archive-password-file", s.path("none").to_str().unwrap(), &source]);
    assert_eq!(code(&out), 19, "{}", stderr(&out));
    assert_eq!(s.json(&["snapshots"]).as_array().unwrap().len(), 1, "nothing committed");

    // The right one, from the environment; a password file's final newline is not part of it.
    std::fs::write(s.path("right"), "hunter2 ü\n").unwrap();
    let out = run_with(
        &s,
        &[("TMPDIR", &tmp)],
        &["backup", "--archive-password-file", s.path("right").to_str().unwrap(), "--json", &source],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["device"], "Anna's iPhone");
    // The photo, the database and the rest are stored once: only the backup's own files are new.
    let new_bytes = done["stats"]["new_bytes"].as_u64().unwrap();
    assert!(new_bytes < 60_000, "{done}");
    assert_eq!(names(&tmp), Vec::<String>::new(), "no decrypted copy is left in TMPDIR");

    let (a, b) = (s.path("from-plain"), s.path("from-encrypted"));
    let list = s.json(&["snapshots"]);
    // The encrypted backup's own date (2025) makes it the older snapshot.
    let (encrypted, plain) = (&list[0], &list[1]);
    s.ok(&["restore", plain["id"].as_str().unwrap(), "--target", a.to_str().unwrap()]);
    s.ok(&["restore", encrypted["id"].as_str().unwrap(), "--target", b.to_str().unwrap()]);
    for domain in ["CameraRollDomain", "HomeDomain", "AppDomain-net.whatsapp.WhatsApp"] {
        assert_same_tree(&a.join(domain), &b.join(domain));
    }
    assert_eq!(
        std::fs::read(b.join("CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.HEIC")).unwrap(),
        bytes(1, 700_000, false)
    );
    assert_eq!(std::fs::read(b.join("HomeDomain/Library/block")).unwrap(), [7u8; 16]);
    assert_eq!(std::fs::read(b.join("HomeDomain/Library/empty")).unwrap(), b"");
    // The backup's own files are kept, Manifest.db decrypted (its padding kept), and queryable.
    let own = b.join(".ios-backup");
    assert_eq!(names(&own), ["Info.plist", "Manifest.db", "Manifest.plist"]);
    let db = rusqlite::Connection::open_with_flags(own.join("Manifest.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let rows: i64 = db.query_row("SELECT COUNT(*) FROM Files", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 8);

    // The phone's facts are kept with the snapshot and shown.
    let facts = &encrypted["facts"];
    assert_eq!(facts["product_type"], "iPhone15,2", "{list}");
    assert_eq!(facts["encrypted"], "true", "{list}");
    assert_eq!(facts["serial_number"], "F2LXK0AAAAAA", "{list}");
    assert_eq!(facts["last_backup_date"], "2025-06-15T15:06:40Z", "{list}");
    assert_eq!(plain["facts"]["encrypted"], "false", "{list}");
    let shown = s.ok(&["snapshots"]);
    assert!(shown.contains("product version: 17.5.1") && shown.contains("imei: 356789012345678"), "{shown}");
}

#[test]
fn an_encrypted_backup_made_with_the_real_ios_key_derivation_costs_is_read() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    // iOS 10.2 and later: 10 000 000 rounds of PBKDF2-SHA256, then 10 000 of PBKDF2-SHA1.
    let backup = Backup::encrypted(&dir, Encryption::new("correct horse", 10_000_000, 10_000));
    backup.file("HomeDomain", "Library/Notes/notes.txt", b"remember the milk", 1_700_000_000);
    backup.finish();
    let out = run_with(&s, &[], &["backup", "--device", "iphone", &format!("ios-backup:{}", dir.display())]);
    assert_eq!(code(&out), 19, "{}", stderr(&out));
    let mut command = s.command(&["backup", "--device", "iphone", &format!("ios-backup:{}", dir.display())]);
    let out = command.env("PHONEBAK_ARCHIVE_PASSWORD", "correct horse").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let target = s.path("out");
    s.ok(&["restore", "iphone/latest", "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(target.join("HomeDomain/Library/Notes/notes.txt")).unwrap(), b"remember the milk");
}

#[test]
fn blobs_that_differ_from_their_records_are_imported_and_said() {
    let s = Scratch::with_repo();
    let plain = Backup::new(&s.path("plain"));
    let longer = plain.file("HomeDomain", "Library/longer.txt", b"twelve bytes", 1_700_000_000);
    plain.finish();
    std::fs::write(&longer, b"twelve bytes and more").unwrap();
    let out = s.run(&["backup", "--device", "plain", &format!("ios-backup:{}", s.path("plain").display())]);
    assert_said(&out, 0, &["longer.txt: 21 bytes where its Manifest.db record says 12"]);
    let listed = s.ok(&["ls", "-l", "plain/latest", "HomeDomain/Library"]);
    assert!(listed.contains("21"), "{listed}");

    let dir = s.path("encrypted");
    let backup = Backup::encrypted(&dir, Encryption::new("pw", 10, 5));
    let cut = backup.file("HomeDomain", "Library/cut.bin", &bytes(3, 100, false), 1_700_000_000);
    let flipped = backup.file("HomeDomain", "Library/flipped.bin", &bytes(4, 40, false), 1_700_000_000);
    backup.file("HomeDomain", "Library/fine.bin", &bytes(5, 33, false), 1_700_000_000);
    backup.finish();
    let cipher = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &cipher[..cipher.len() - 5]).unwrap();
    let mut cipher = std::fs::read(&flipped).unwrap();
    // The block before the last: its bit flips the same bit of the padding (0x08 becomes 0x48).
    let at = cipher.len() - 17;
    cipher[at] ^= 0x40;
    std::fs::write(&flipped, &cipher).unwrap();
    let mut command = s.command(&["backup", "--device", "enc", &format!("ios-backup:{}", dir.display())]);
    let out = command.env("PHONEBAK_ARCHIVE_PASSWORD", "pw").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("cut.bin: its encrypted length, 107 bytes, is not whole 16-byte blocks"), "{said}");
    assert!(said.contains("flipped.bin: its padding does not decrypt as PKCS#7"), "{said}");
    assert!(!said.contains("fine.bin"), "{said}");
    let target = s.path("out");
    s.ok(&["restore", "enc/latest", "--target", target.to_str().unwrap()]);
    let library = target.join("HomeDomain/Library");
    assert_eq!(std::fs::read(library.join("fine.bin")).unwrap(), bytes(5, 33, false));
    assert_eq!(std::fs::read(library.join("cut.bin")).unwrap(), bytes(3, 96, false), "the whole blocks");
    let flipped_back = std::fs::read(library.join("flipped.bin")).unwrap();
    assert_eq!(
        (flipped_back.len(), &flipped_back[..16]),
        (48, &bytes(4, 16, false)[..]),
        "all 3 blocks, the first intact"
    );
}

#[test]
fn a_damaged_keybag_manifest_or_plist_is_an_exact_error_and_commits_nothing() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    let backup = Backup::encrypted(&dir, Encryption::new("pw", 10, 5));
    backup.file("HomeDomain", "Library/a.txt", b"a", 1_700_000_000);
    backup.finish();
    let tmp = s.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let source = format!("ios-backup:{}", dir.display());
    let attempt = |expect: &str| {
        let mut command = s.command(&["backup", "--device", "iphone", &source]);
        let out = command.env("PHONEBAK_ARCHIVE_PASSWORD", "pw").env("TMPDIR", &tmp).output().unwrap();
        assert_eq!(code(&out), 1, "{expect}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{expect}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        assert_eq!(names(&tmp), Vec::<String>::new(), "no decrypted copy is left in TMPDIR");
    };
    let manifest_plist = dir.join("Manifest.plist");
    let original = plist::Value::from_file(&manifest_plist).unwrap();
    let with_keybag = |keybag: Vec<u8>| {
        let mut changed = original.as_dictionary().unwrap().clone();
        changed.insert("BackupKeyBag".into(), plist::Value::Data(keybag));
        plist::Value::Dictionary(changed).to_file_binary(&manifest_plist).unwrap();
    };
    let keybag = original.as_dictionary().unwrap()["BackupKeyBag"].as_data().unwrap().to_vec();
    with_keybag(keybag[..keybag.len() - 3].to_vec());
    attempt("the keybag is damaged: record WPKY claims 40 bytes, 37 are left");
    with_keybag([keybag.clone(), tlv(b"DPIC", &u32::MAX.to_be_bytes())].concat());
    attempt("DPIC 4294967295 is beyond any iOS");
    with_keybag(vec![0xff; 100_000]);
    attempt("more than any keybag");
    let mut short_key = keybag.clone();
    let at = short_key.windows(4).rposition(|w| w == b"WPKY").unwrap();
    short_key.truncate(at);
    short_key.extend(tlv(b"WPKY", &[1; 24]));
    with_keybag(short_key);
    attempt("wrapped key is 24 bytes, not 40");
    with_keybag(keybag.clone());

    // A flipped byte early in the encrypted Manifest.db makes it no database.
    let db = dir.join("Manifest.db");
    let good = std::fs::read(&db).unwrap();
    let mut bad = good.clone();
    bad[3] ^= 1;
    std::fs::write(&db, &bad).unwrap();
    attempt("Manifest.db");
    std::fs::write(&db, &good[..good.len() - 7]).unwrap();
    attempt("whole number of 16-byte blocks");
    std::fs::write(&db, &good).unwrap();

    std::fs::write(&manifest_plist, b"<?xml version=\"1.0\"?><plist><dict><key>IsEnc").unwrap();
    attempt("Manifest.plist: not a readable plist");
    assert_eq!(s.json(&["snapshots"]).as_array().unwrap().len(), 0, "nothing committed");
}

#[test]
fn the_mount_shows_an_iphone_backup_as_the_phones_folders() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    let backup = Backup::encrypted(&dir, Encryption::new("pw", 10, 5));
    phone_data(&backup);
    backup.finish();
    info_plist(&dir, "Anna's iPhone");
    let mut command = s.command(&["backup", &format!("ios-backup:{}", dir.display())]);
    let out = command.env("PHONEBAK_ARCHIVE_PASSWORD", "pw").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let m = Mounted::new(&s, &[]);
    let device = m.snapshots().join("Anna's iPhone");
    let snapshot = device.join(&names(&device)[0]);
    let found = Command::new("find").arg(&snapshot).arg("-name").arg("*.HEIC").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&found.stdout).trim(),
        snapshot.join("CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.HEIC").display().to_string()
    );
    let copy = s.path("IMG_0001.HEIC");
    let cp = Command::new("cp")
        .arg("-p")
        .arg(snapshot.join("CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.HEIC"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());
    assert_eq!(std::fs::read(&copy).unwrap(), bytes(1, 700_000, false));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&copy).unwrap().mtime(), 1_700_000_000);
    // Its catalogue answers queries right from the mount.
    let db = rusqlite::Connection::open_with_flags(
        snapshot.join(".ios-backup/Manifest.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let domain: String =
        db.query_row("SELECT domain FROM Files WHERE relativePath LIKE '%.HEIC'", [], |r| r.get(0)).unwrap();
    assert_eq!(domain, "CameraRollDomain");
}

/// Asserts that `out` exited with `expected` and that its messages say each of `lines`.
fn assert_said(out: &std::process::Output, expected: i32, lines: &[&str]) {
    let said = stderr(out);
    assert_eq!(code(out), expected, "{said}");
    for line in lines {
        assert!(said.contains(line), "{line:?} is not said: {said}");
    }
}

/// Every file below `root`, by relative path, with its bytes.
fn contents(root: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    files_under(root)
        .into_iter()
        .map(|p| (p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).unwrap()))
        .collect()
}

fn status_plist(dir: &Path) {
    let mut status = plist::Dictionary::new();
    status.insert("SnapshotState".into(), plist::Value::String("finished".into()));
    status.insert("IsFullBackup".into(), plist::Value::Boolean(false));
    status.insert("UUID".into(), plist::Value::String("4D8F6A2E-0000-4000-8000-00000000ABCD".into()));
    plist::Value::Dictionary(status).to_file_binary(dir.join("Status.plist")).unwrap();
}

#[test]
fn an_exported_backup_is_byte_for_byte_the_one_imported_plain_or_encrypted() {
    let s = Scratch::with_repo();
    let plain_dir = s.path("plain/UDID");
    let plain = Backup::new(&plain_dir);
    phone_data(&plain);
    plain.finish();
    info_plist(&plain_dir, "plain");
    status_plist(&plain_dir);
    let mut manifest = plist::Dictionary::new();
    manifest.insert("IsEncrypted".into(), plist::Value::Boolean(false));
    plist::Value::Dictionary(manifest).to_file_binary(plain_dir.join("Manifest.plist")).unwrap();
    let encrypted_dir = s.path("encrypted/UDID");
    let encrypted = Backup::encrypted(&encrypted_dir, Encryption::new("pw", 10, 5));
    phone_data(&encrypted);
    encrypted.finish();
    info_plist(&encrypted_dir, "encrypted");
    status_plist(&encrypted_dir);
    s.ok(&["backup", &format!("ios-backup:{}", plain_dir.display())]);
    let mut import = s.command(&["backup", &format!("ios-backup:{}", encrypted_dir.display())]);
    assert!(import.env("PHONEBAK_ARCHIVE_PASSWORD", "pw").output().unwrap().status.success());

    let out = s.path("exports/plain");
    let said = s.ok(&["export", "plain/latest", "--format", "ios-backup", out.to_str().unwrap()]);
    assert!(said.contains("5 files"), "{said}");
    assert_eq!(contents(&out), contents(&plain_dir));
    assert_eq!(names(&out), names(&plain_dir), "the 256 blob folders, empty ones included");

    // The encrypted one needs its password again: the same keys give the same ciphertext.
    let out = s.path("exports/encrypted");
    let refused = s.run(&["export", "encrypted/latest", "--format", "ios-backup", out.to_str().unwrap()]);
    assert_eq!(code(&refused), 19, "{}", stderr(&refused));
    std::fs::write(s.path("wrong"), "not it").unwrap();
    let wrong_file = s.path("wrong");
    let args = ["export", "encrypted/latest", "--format", "ios-backup", "--archive-password-file"];
    let refused = s.run(&[&args[..], &[wrong_file.to_str().unwrap(), out.to_str().unwrap()]].concat());
    assert_said(&refused, 19, &["wrong password"]);
    assert!(!out.exists());
    // Into an empty folder that is there, under umask 022: nothing in it readable by others.
    std::fs::create_dir_all(&out).unwrap();
    let mut export = s.command(&["export", "encrypted/latest", "--format", "ios-backup", out.to_str().unwrap()]);
    let done = export.env("PHONEBAK_ARCHIVE_PASSWORD", "pw").output().unwrap();
    assert_eq!(code(&done), 0, "{}", stderr(&done));
    assert_eq!(contents(&out), contents(&encrypted_dir));
    use std::os::unix::fs::MetadataExt;
    // The folder export made is private; one the user made keeps its mode, its contents not.
    let made = s.path("exports/plain");
    for path in files_under(&out).iter().chain([&out.join(names(&out)[0].as_str()), &made]) {
        assert_eq!(std::fs::metadata(path).unwrap().mode() & 0o077, 0, "{}", path.display());
    }
    assert_eq!(names(&s.path("exports")), ["encrypted", "plain"], "no temporary folder is left");

    // OUT holding something is refused and left alone; a folder snapshot is not an iPhone backup.
    let refused = s.run(&["export", "plain/latest", "--format", "ios-backup", out.to_str().unwrap()]);
    assert_said(&refused, 18, &["not empty: name a new or empty folder"]);
    assert_eq!(contents(&out), contents(&encrypted_dir));
    std::fs::create_dir(s.path("folder")).unwrap();
    write(&s.path("folder/a.txt"), b"a");
    s.ok(&["backup", "--device", "folder", s.path("folder").to_str().unwrap()]);
    let refused = s.run(&["export", "folder/latest", "--format", "ios-backup", s.path("x").to_str().unwrap()]);
    assert_said(&refused, 1, &["did not come from an iPhone backup"]);
    assert!(!s.path("x").exists());
}

#[test]
fn an_export_lists_what_the_import_could_not_take_and_a_full_disk_leaves_nothing() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    let backup = Backup::new(&dir);
    backup.file("CameraRollDomain", "Media/DCIM/100APPLE/IMG_0002.JPG", &bytes(9, 300_000, false), 1_700_000_000);
    backup.file("HomeDomain", "../escape", b"x", 1);
    let gone = backup.row("HomeDomain", "Library/gone.jpg", 1, mbfile(0o100644, 1, 9, None));
    backup.finish();
    assert_eq!(code(&s.run(&["backup", "--device", "phone", &format!("ios-backup:{}", dir.display())])), 3);
    let out = s.path("out");
    let listed = s.run(&["export", "phone/latest", "--format", "ios-backup", out.to_str().unwrap()]);
    assert_eq!(code(&listed), 3, "{}", stderr(&listed));
    let said = stderr(&listed);
    assert!(
        said.contains("HomeDomain-../escape: not imported") && said.contains("HomeDomain-Library/gone.jpg"),
        "{said}"
    );
    assert!(!out.join(&gone[..2]).join(&gone).exists());
    assert!(!s.path("escape").exists() && !out.join("escape").exists());

    // A disk that fills: the exact error, exit 15, and no folder that looks like a backup.
    let disk = SmallDisk::mount(&s.path("small"), "200k");
    let full = s.run(&["export", "phone/latest", "--format", "ios-backup", s.path("small/out").to_str().unwrap()]);
    assert_said(&full, 15, &["No space left on device"]);
    assert_eq!(names(&s.path("small")), Vec::<String>::new(), "the partial export is removed");
    drop(disk);
}

#[test]
fn the_next_days_backup_reads_only_what_changed_and_stores_only_that() {
    for encrypted in [false, true] {
        let s = Scratch::with_repo();
        let dir = s.path("backup");
        let keys = Encryption::new("pw", 10, 5);
        let backup = Backup::create(&dir, encrypted.then(|| keys.clone()));
        let sms = bytes(2, 2_000_000, true);
        let photo = backup.file(
            "CameraRollDomain",
            "Media/DCIM/100APPLE/IMG_0001.HEIC",
            &bytes(1, 700_000, false),
            1_700_000_000,
        );
        backup.file(
            "HomeDomain",
            "Library/SMS/sms.db",
            &[b"SQLite format 3\0".as_slice(), &sms].concat(),
            1_700_000_100,
        );
        let backup_run = |s: &Scratch| {
            let mut command =
                s.command(&["backup", "--device", "phone", "--json", &format!("ios-backup:{}", dir.display())]);
            let out = command.env("PHONEBAK_ARCHIVE_PASSWORD", "pw").output().unwrap();
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        };
        let photo_record = backup
            .db
            .query_row("SELECT file FROM Files WHERE relativePath LIKE '%HEIC'", [], |r| r.get::<_, Vec<u8>>(0))
            .unwrap();
        backup.finish();
        backup_run(&s);

        // The next day: a new photo, a few pages of sms.db changed; the old photo's blob is
        // rewritten with other bytes of its size, under an unchanged record. Reused, not read.
        let backup = Backup::reopen(&dir, encrypted.then(|| keys.clone()));
        let mut sms2 = sms.clone();
        sms2[8192..8192 + 100].copy_from_slice(&[0xEE; 100]);
        backup.file(
            "HomeDomain",
            "Library/SMS/sms.db",
            &[b"SQLite format 3\0".as_slice(), &sms2].concat(),
            1_700_086_500,
        );
        backup.file("CameraRollDomain", "Media/DCIM/100APPLE/IMG_0002.HEIC", &bytes(3, 500_000, false), 1_700_086_400);
        backup.finish();
        let other = match encrypted {
            false => bytes(4, 700_000, false),
            true => {
                let stored = phonebak::source::decode_mbfile(&photo_record).unwrap().encryption_key.unwrap();
                let wrapped_key = &stored[4..];
                let mut key = [0u8; 32];
                aes_kw::KekAes256::from(keys.class_keys[&3]).unwrap(wrapped_key, &mut key).unwrap();
                cbc_encrypt(&key, &bytes(4, 700_000, false))
            }
        };
        std::fs::write(&photo, other).unwrap();
        let day2 = backup_run(&s);
        let new_bytes = day2["stats"]["new_bytes"].as_u64().unwrap();
        // The new photo, the chunks of sms.db around its changed pages (at most 2 of 256 KiB)
        // and the new Manifest.db: not the 700 kB photo, nor the 2 MB sms.db, again.
        assert!((500_000..1_100_000).contains(&new_bytes), "encrypted {encrypted}: {day2}");
        let target = s.path("day2");
        s.ok(&["restore", "phone/latest", "--target", target.to_str().unwrap()]);
        let camera = target.join("CameraRollDomain/Media/DCIM/100APPLE");
        assert_eq!(std::fs::read(camera.join("IMG_0001.HEIC")).unwrap(), bytes(1, 700_000, false), "reused");
        assert_eq!(std::fs::read(camera.join("IMG_0002.HEIC")).unwrap(), bytes(3, 500_000, false));
        assert_eq!(std::fs::read(target.join("HomeDomain/Library/SMS/sms.db")).unwrap()[16..], sms2[..]);
    }
}

#[test]
fn hostile_catalogue_rows_are_named_and_never_cost_other_files() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    let backup = Backup::new(&dir);
    backup.folder("HomeDomain", "", 1_600_000_000);
    for i in 0..3 {
        backup.file("HomeDomain", &format!("Library/photo{i}.jpg"), format!("precious {i}").as_bytes(), 1_700_000_000);
    }
    let record = mbfile(0o100644, 1_700_000_000, 4, None);
    // A relativePath that is not UTF-8 text, and one that is NULL: named, never "" (the domain).
    backup
        .db
        .execute(
            "INSERT INTO Files VALUES ('aa01', 'HomeDomain', CAST(?1 AS TEXT), 1, ?2)",
            rusqlite::params![b"Library/caf\xe9.txt".to_vec(), record],
        )
        .unwrap();
    backup.db.execute("INSERT INTO Files VALUES ('aa02', 'HomeDomain', NULL, 1, ?1)", [&record]).unwrap();
    // Two rows for one path: the smaller fileID is imported, the other named.
    let dup = |id: &str, content: &[u8]| {
        let record = mbfile(0o100644, 1_700_000_000, content.len() as u64, None);
        backup
            .db
            .execute(
                "INSERT INTO Files VALUES (?1, 'HomeDomain', 'Library/dup.txt', 1, ?2)",
                rusqlite::params![id, record],
            )
            .unwrap();
        write(&dir.join(&id[..2]).join(id), content);
    };
    dup("bb01", b"first copy");
    dup("bb02", b"second copy!!");
    // Before 1970.
    backup.row("HomeDomain", "Library/old.txt", 1, mbfile(0o100644, -86_400, 3, None));
    let old = dir.join(&sha1_hex("HomeDomain-Library/old.txt")[..2]).join(sha1_hex("HomeDomain-Library/old.txt"));
    write(&old, b"old");
    // A blob that is a symlink to a file of this machine, and one that is a FIFO.
    write(&s.path("secret"), b"this machine's secret");
    let linked = backup.file("HomeDomain", "Library/linked", b"x", 1_700_000_000);
    std::fs::remove_file(&linked).unwrap();
    std::os::unix::fs::symlink(s.path("secret"), &linked).unwrap();
    let fifo = backup.file("HomeDomain", "Library/fifo", b"x", 1_700_000_000);
    std::fs::remove_file(&fifo).unwrap();
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    backup.finish();
    // Two rows sharing one fileID (a catalogue without its primary key).
    let db = rusqlite::Connection::open(dir.join("Manifest.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE F2 AS SELECT * FROM Files; DROP TABLE Files; ALTER TABLE F2 RENAME TO Files;
         INSERT INTO Files SELECT fileID, domain, 'Library/same-id.jpg', flags, file FROM Files
             WHERE relativePath = 'Library/photo0.jpg';",
    )
    .unwrap();
    drop(db);

    let out = run_bounded(&s, &["backup", "--device", "phone", &format!("ios-backup:{}", dir.display())]);
    assert_said(
        &out,
        3,
        &[
            "HomeDomain-Library/caf\u{fffd}.txt: not imported: a relativePath that is not UTF-8 text",
            "HomeDomain-: not imported: no relativePath",
            "HomeDomain-Library/dup.txt: not imported: a second row for the same path",
            "Library/linked: a symlink, not a file: not read",
            "Library/fifo: not a regular file",
        ],
    );
    let target = s.path("out");
    let restore = s.command(&["restore", "phone/latest", "--target", target.to_str().unwrap()]);
    let restored = run_with_umask(restore, 0o022);
    assert_eq!(code(&restored), 0, "{}", stderr(&restored));
    let library = target.join("HomeDomain/Library");
    for i in 0..3 {
        assert_eq!(std::fs::read(library.join(format!("photo{i}.jpg"))).unwrap(), format!("precious {i}").as_bytes());
    }
    assert_eq!(std::fs::read(library.join("same-id.jpg")).unwrap(), b"precious 0");
    assert_eq!(std::fs::read(library.join("dup.txt")).unwrap(), b"first copy");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(library.join("old.txt")).unwrap().mtime(), -86_400);
    assert!(!library.join("linked").exists() && !library.join("fifo").exists());
    // The catalogue and the phone's identity stay private, even restored on their own.
    let alone = s.path("alone");
    let restore = s.command(&["restore", "phone/latest:.ios-backup/Manifest.db", "--target", alone.to_str().unwrap()]);
    assert_eq!(code(&run_with_umask(restore, 0o022)), 0);
    assert_eq!(std::fs::metadata(alone.join("Manifest.db")).unwrap().mode() & 0o777, 0o600);

    // Export settles the rows as the import did: the second row's blob is not written with the
    // first's content, a shared fileID is written once, and both are listed.
    let exported = s.path("exported");
    let out = run_bounded(&s, &["export", "phone/latest", "--format", "ios-backup", exported.to_str().unwrap()]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("HomeDomain-Library/dup.txt: not imported: a second row"), "{said}");
    assert!(said.contains("another row has the same fileID"), "{said}");
    assert_eq!(std::fs::read(exported.join("bb/bb01")).unwrap(), b"first copy");
    assert!(!exported.join("bb/bb02").exists());
}

/// Runs a command under `umask`, as a user's shell would.
fn run_with_umask(mut command: Command, umask: u32) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask is async-signal-safe and only changes the child's own mask.
    unsafe {
        command.pre_exec(move || {
            libc::umask(umask);
            Ok(())
        });
    }
    command.output().unwrap()
}

#[test]
fn nothing_decrypted_ever_has_a_name_and_a_full_tmpdir_is_said() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    let backup = Backup::encrypted(&dir, Encryption::new("pw", 10, 5));
    backup.file("HomeDomain", "Library/secret.txt", b"top secret", 1_700_000_000);
    // A catalogue of some size, so that decrypting it takes a while.
    backup.db.execute("INSERT INTO Properties VALUES ('pad', ?1)", [bytes(7, 30_000_000, true)]).unwrap();
    backup.finish();
    let tmp = s.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let source = format!("ios-backup:{}", dir.display());
    let watch = |child: &mut std::process::Child, kill_after: Option<Duration>| {
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            // A name may exist for an instant, for an empty file: never for a byte of the catalogue.
            for file in files_under(&tmp) {
                let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                assert_eq!(len, 0, "{} has a name and {len} bytes", file.display());
            }
            if kill_after.is_some_and(|after| started.elapsed() > after) {
                child.kill().unwrap();
            }
        }
    };
    let mut command = s.command(&["backup", "--device", "phone", &source]);
    command.env("PHONEBAK_ARCHIVE_PASSWORD", "pw").env("TMPDIR", &tmp).stderr(std::process::Stdio::null());
    let mut child = command.spawn().unwrap();
    watch(&mut child, None);
    assert!(child.wait().unwrap().success());
    // kill -9 while it decrypts: nothing decrypted is left.
    let mut child = command.spawn().unwrap();
    watch(&mut child, Some(Duration::from_millis(150)));
    assert!(files_under(&tmp).iter().all(|f| std::fs::metadata(f).unwrap().len() == 0));
    assert_eq!(s.json(&["snapshots"]).as_array().unwrap().len(), 1);

    // A TMPDIR too small for the catalogue: the disk is named, exit 15, nothing stored.
    let small = SmallDisk::mount(&s.path("small"), "2m");
    let mut command = s.command(&["backup", "--device", "phone", &source]);
    let out = command.env("PHONEBAK_ARCHIVE_PASSWORD", "pw").env("TMPDIR", &small.0).output().unwrap();
    assert_eq!(code(&out), 15, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the temporary folder") && stderr(&out).contains("No space left"),
        "{}",
        stderr(&out)
    );
    let mut command = s.command(&["export", "phone/latest", "--format", "ios-backup", s.path("x").to_str().unwrap()]);
    let out = command.env("PHONEBAK_ARCHIVE_PASSWORD", "pw").env("TMPDIR", &small.0).output().unwrap();
    assert_eq!(code(&out), 15, "{}", stderr(&out));
    assert!(!s.path("x").exists(), "no partial export");
    assert_eq!(s.json(&["snapshots"]).as_array().unwrap().len(), 1);
}

#[test]
fn a_closed_stderr_never_stops_a_backup() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    let backup = Backup::new(&dir);
    backup.file("HomeDomain", "Library/a.txt", b"a", 1_700_000_000);
    for i in 0..50 {
        backup.row("HomeDomain", &format!("Library/gone{i}.jpg"), 1, mbfile(0o100644, 1, 9, None));
    }
    backup.finish();
    let mut child = s
        .command(&["backup", "--device", "phone", &format!("ios-backup:{}", dir.display())])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take()); // the reader went away (`2>&1 | head -1`)
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    assert_eq!(s.json(&["snapshots"]).as_array().unwrap().len(), 1);
}

#[test]
fn an_export_goes_onto_an_empty_disk_clears_an_interrupted_one_and_lists_what_it_cannot_give_back() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    let backup = Backup::encrypted(&dir, Encryption::new("pw", 10, 5));
    backup.file("HomeDomain", "Library/fine.txt", b"fine", 1_700_000_000);
    let cut = backup.file("HomeDomain", "Library/cut.bin", &bytes(3, 100, false), 1_700_000_000);
    backup.finish();
    let mut command = s.command(&["backup", "--device", "phone", &format!("ios-backup:{}", dir.display())]);
    assert!(command.env("PHONEBAK_ARCHIVE_PASSWORD", "pw").output().unwrap().status.success());
    let export = |out: &Path| {
        let mut command = s.command(&["export", "phone/latest", "--format", "ios-backup", out.to_str().unwrap()]);
        command.env("PHONEBAK_ARCHIVE_PASSWORD", "pw").output().unwrap()
    };
    // The root of an empty disk (a mount point cannot be renamed over).
    let disk = SmallDisk::mount(&s.path("usb"), "20m");
    let done = export(&disk.0);
    assert_eq!(code(&done), 0, "{}", stderr(&done));
    assert_eq!(contents(&disk.0), contents(&dir));
    // What an interrupted export left inside OUT goes; anything else in OUT is refused.
    let out = s.path("again");
    write(&out.join(".phonebak-export-0123456789abcdef/Manifest.db"), b"half");
    let done = export(&out);
    assert_eq!(code(&done), 0, "{}", stderr(&done));
    assert_eq!(contents(&out), contents(&dir));
    // Stopped while moving its files in: what is there is not whole, and said so.
    let partial = s.path("partial");
    write(&partial.join(".phonebak-export-00000000000000aa/Manifest.db"), b"half");
    std::fs::create_dir(partial.join("00")).unwrap();
    let refused = export(&partial);
    assert_said(&refused, 18, &["holds part of an interrupted export"]);
    std::os::unix::fs::symlink(&out, s.path("link")).unwrap();
    let refused = export(&s.path("link"));
    assert_said(&refused, 18, &["a symlink: name the folder itself"]);

    // A blob whose encryption was damaged at import is written, and listed as not as it was.
    let cipher = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &cipher[..cipher.len() - 5]).unwrap();
    let mut command = s.command(&["backup", "--device", "phone", &format!("ios-backup:{}", dir.display())]);
    assert!(command.env("PHONEBAK_ARCHIVE_PASSWORD", "pw").output().unwrap().status.success());
    let listed = export(&s.path("damaged"));
    assert_eq!(code(&listed), 3, "{}", stderr(&listed));
    assert!(
        stderr(&listed).contains("HomeDomain-Library/cut.bin: its blob did not decrypt to its recorded size"),
        "{}",
        stderr(&listed)
    );
    drop(disk);
}

#[test]
fn a_backup_imported_again_is_the_latest_and_no_name_changes() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    let backup = Backup::new(&dir);
    backup.file("HomeDomain", "Library/a.txt", b"a", 1_700_000_000);
    backup.finish();
    info_plist(&dir, "phone");
    let mut ids = Vec::new();
    let mut names_seen: Vec<Vec<String>> = Vec::new();
    for _ in 0..3 {
        let out = s.json(&["backup", &format!("ios-backup:{}", dir.display())]);
        ids.push(out["id"].as_str().unwrap().to_string());
        let list = s.json(&["snapshots"]);
        names_seen.push(list.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap().to_string()).collect());
    }
    // Each import keeps its name; the last one made is `latest`, and the parent of nothing older.
    assert_eq!(names_seen[2][..2], names_seen[1][..], "{names_seen:?}");
    assert_eq!(names_seen[1][..1], names_seen[0][..], "{names_seen:?}");
    let list = s.json(&["snapshots"]);
    assert_eq!(list.as_array().unwrap().last().unwrap()["id"], ids[2].as_str());
    assert_eq!(list.as_array().unwrap()[2]["parent"], ids[1].as_str());
    let plan = s.json(&["forget", "--keep-last", "1", "--dry-run"]);
    let kept: Vec<&str> = plan["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["keep"] == true)
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [ids[2].as_str()], "{plan}");
}

#[test]
fn odd_records_a_wal_catalogue_and_a_busy_or_unfit_export_folder() {
    let s = Scratch::with_repo();
    let dir = s.path("backup");
    let backup = Backup::new(&dir);
    backup.file("HomeDomain", "Library/a.txt", b"a", 1_700_000_000);
    backup.row("HomeDomain", "Library/setuid", 1, mbfile(0o106755, 1_700_000_000, 2, None));
    write(&dir.join(&sha1_hex("HomeDomain-Library/setuid")[..2]).join(sha1_hex("HomeDomain-Library/setuid")), b"#!");
    backup.row("HomeDomain", "Library/future", 1, mbfile(0o100644, 1 << 62, 1, None));
    write(&dir.join(&sha1_hex("HomeDomain-Library/future")[..2]).join(sha1_hex("HomeDomain-Library/future")), b"f");
    backup.db.execute("INSERT INTO Files VALUES ('cc01', 'HomeDomain', 'Library/norecord', 1, NULL)", []).unwrap();
    write(&dir.join("cc/cc01"), b"n");
    // A catalogue left in WAL mode with a row only in its log (a backup that was not closed).
    backup.db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;").unwrap();
    backup.file("HomeDomain", "Library/in-the-log.txt", b"log", 1_700_000_000);
    std::mem::forget(backup.db); // keeps the log as a crash would
    let before = names(&dir);
    let out = s.run(&["backup", "--device", "phone", &format!("ios-backup:{}", dir.display())]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("Manifest.db-wal is there: the backup was not closed"), "{said}");
    assert!(said.contains("Library/setuid: its set-user-id or set-group-id bit is dropped"), "{said}");
    assert!(said.contains("Library/future: its time") && said.contains("kept as 1970-01-01"), "{said}");
    assert!(said.contains("HomeDomain-Library/norecord: not imported: no MBFile record"), "{said}");
    assert_eq!(names(&dir), before, "nothing is written into the backup folder");
    let target = s.path("out");
    s.run(&["restore", "phone/latest", "--target", target.to_str().unwrap()]);
    use std::os::unix::fs::MetadataExt;
    let library = target.join("HomeDomain/Library");
    assert_eq!(std::fs::metadata(library.join("setuid")).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::metadata(library.join("future")).unwrap().mtime(), 0);
    // The tree and .ios-backup/Manifest.db agree: both without the log's row.
    assert!(!library.join("in-the-log.txt").exists());

    // An export adds nothing of SQLite's to OUT.
    let exported = s.path("exported");
    let out = s.run(&["export", "phone/latest", "--format", "ios-backup", exported.to_str().unwrap()]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(!exported.join("Manifest.db-wal").exists() && !exported.join("Manifest.db-shm").exists());

    // A folder another export holds, a file of the export's name pattern, the repository itself.
    let busy = s.path("busy");
    std::fs::create_dir(&busy).unwrap();
    let held = std::fs::File::open(&busy).unwrap();
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) }, 0);
    let refused = s.run(&["export", "phone/latest", "--format", "ios-backup", busy.to_str().unwrap()]);
    assert_said(&refused, 18, &["another phonebak export is writing into it now"]);
    drop(held);
    let odd = s.path("odd");
    write(&odd.join(".phonebak-export-cccc"), b"mine");
    let refused = s.run(&["export", "phone/latest", "--format", "ios-backup", odd.to_str().unwrap()]);
    assert!(stderr(&refused).contains("not empty"), "{}", stderr(&refused));
    assert_eq!(std::fs::read(odd.join(".phonebak-export-cccc")).unwrap(), b"mine");
    let inside = s.repo.join("exported");
    let refused = s.run(&["export", "phone/latest", "--format", "ios-backup", inside.to_str().unwrap()]);
    assert_said(&refused, 18, &["inside the repository folder"]);
    assert!(!inside.exists());
}
