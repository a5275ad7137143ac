//! `ios-backup:DIR`: a backup folder as Finder, iTunes and `idevicebackup2` write it, read as the
//! phone's own folders, `<Domain>/<relativePath>`. Its catalogue, Manifest.db, has a row per
//! file (fileID = SHA-1 of `domain-relativePath`, kept at `fileID[0:2]/fileID`, and an MBFile
//! record: an NSKeyedArchiver plist with the mode, owner, times, size and link target).
//!
//! The rows are copied once into an index by folder: a private temporary SQLite file, so that a
//! backup of any size is listed with a bounded amount of memory. Rows whose paths cannot be
//! stored (`..`, a leading `/`, an empty component, NUL, not UTF-8 text) never become entries,
//! nor does a second row for one path, or a file row where other rows have a folder (the folder
//! and its rows win): they are listed as unreadable at the top, with why.
//!
//! An encrypted backup is read with its password (`crate::ios_crypto`): Manifest.db is decrypted
//! into a temporary file that never has a name (nothing decrypted stays on disk, even after
//! `kill -9`), each blob through its own key as it is read. Blobs and the backup's own files are
//! read only if they are regular files: never through a symlink, never waiting on a FIFO.
//!
//! The backup's own files (Info.plist, Manifest.plist, Status.plist and Manifest.db, decrypted)
//! become the folder `.ios-backup/` of the snapshot, so that `export --format ios-backup` can give
//! the backup back byte for byte, and its catalogue can be queried from the mount.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use super::{walk, EntrySink, ListedSource, Listing, Source, SourceEntry, SourceError, SourceFile, SourceKind};
use crate::beneath::{open_regular_nofollow, regular_file_len};
use crate::cbc_stream::DecryptingReader;
use crate::ios_crypto::{self, ClassKeys, Scratch, UnlockError, ZERO_IV};
use crate::tree::Meta;
use crate::tree_builder::invalid_name_reason;

const FLAG_FILE: i64 = 1;
const FLAG_DIR: i64 = 2;
const FLAG_SYMLINK: i64 = 4;

/// The snapshot folder that holds the backup's own files.
pub const OWN_FILES_DIR: &str = ".ios-backup";
/// The backup's own files, in the order export writes them.
pub const OWN_FILES: [&str; 4] = ["Info.plist", "Manifest.plist", "Status.plist", "Manifest.db"];
/// Times a file system can hold (ext4: 1901 to 2446): a record's time beyond them is kept as 0.
const MIN_TIME: i64 = -(1 << 31);
const MAX_TIME: i64 = 15_032_385_535;
/// Plists in a backup are at most a few MiB (Info.plist can carry app data); a larger one is
/// not read whole.
const MAX_PLIST: u64 = 64 << 20;

pub struct IosBackupSource {
    /// The folder holding Manifest.db and the blobs.
    dir: PathBuf,
    index: Mutex<Connection>,
    rejected: Rejected,
    root_meta: Meta,
    /// An encrypted backup's class keys, unlocked with its password.
    keys: Option<ClassKeys>,
    /// The backup's own files that are there: name, metadata, size, how to read it.
    own_files: Vec<(&'static str, Meta, u64, OwnFile)>,
    info: Option<plist::Dictionary>,
}

/// Where one of the backup's own files is read from.
#[derive(Clone)]
enum OwnFile {
    Path(PathBuf),
    /// Manifest.db of an encrypted backup, decrypted into a temporary file without a name.
    Decrypted(Arc<File>),
}

/// How a caller supplies an encrypted backup's password (asked only when one is needed).
pub type ArchivePassword<'a> = &'a mut dyn FnMut() -> Result<Vec<u8>, SourceError>;

/// What an MBFile record says of a file.
#[derive(Debug, Default, PartialEq)]
pub struct MbFile {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
    pub target: Option<Vec<u8>>,
    /// An encrypted backup's wrapped file key: 4 bytes of class, then 40 bytes.
    pub encryption_key: Option<Vec<u8>>,
}

/// Decodes an MBFile record: an NSKeyedArchiver plist whose root object holds the fields, and
/// whose `Target` (a symlink's) is a reference to a string in `$objects`.
pub fn decode_mbfile(bytes: &[u8]) -> Result<MbFile, String> {
    let value = plist::Value::from_reader(io::Cursor::new(bytes))
        .map_err(|_| "not a readable plist (damaged or cut short)".to_string())?;
    let archive = value.as_dictionary().ok_or("not a keyed archive")?;
    let objects = archive.get("$objects").and_then(|o| o.as_array()).ok_or("no $objects")?;
    fn object<'a>(objects: &'a [plist::Value], v: &'a plist::Value) -> Option<&'a plist::Value> {
        match v {
            plist::Value::Uid(uid) => objects.get(uid.get() as usize),
            other => Some(other),
        }
    }
    let object = |v| object(objects, v);
    let top = archive.get("$top").and_then(|t| t.as_dictionary()).ok_or("no $top")?;
    let root = top.get("root").and_then(object).and_then(|r| r.as_dictionary()).ok_or("no root object")?;
    let number = |key: &str| -> Result<u64, String> {
        let value = root.get(key).and_then(object);
        match value {
            None => Ok(0),
            Some(v) => v.as_unsigned_integer().ok_or(format!("{key} is not a number")),
        }
    };
    let small = |key: &str| -> Result<u32, String> {
        u32::try_from(number(key)?).map_err(|_| format!("{key} is out of range"))
    };
    // Signed: a file can be older than 1970.
    let mtime = match root.get("LastModified").and_then(object) {
        None => 0,
        Some(v) => v.as_signed_integer().ok_or("LastModified is not a number or out of range")?,
    };
    let target = match root.get("Target").and_then(object) {
        None => None,
        Some(plist::Value::String(text)) => Some(text.as_bytes().to_vec()),
        Some(_) => return Err("Target is not a string".into()),
    };
    let encryption_key = match root.get("EncryptionKey").and_then(object) {
        None => None,
        Some(plist::Value::Data(bytes)) => Some(bytes.clone()),
        // NSMutableData archives as an object whose `NS.data` holds the bytes.
        Some(plist::Value::Dictionary(data)) => match data.get("NS.data").and_then(object) {
            Some(plist::Value::Data(bytes)) => Some(bytes.clone()),
            _ => return Err("EncryptionKey has no NS.data".into()),
        },
        Some(_) => return Err("EncryptionKey is not data".into()),
    };
    Ok(MbFile {
        encryption_key,
        mode: small("Mode")?,
        uid: small("UserID")?,
        gid: small("GroupID")?,
        mtime,
        size: number("Size")?,
        target,
    })
}

/// Why a catalogue path cannot become entries, if it cannot.
pub fn path_problem(domain: &str, relative: &str) -> Option<String> {
    if relative.starts_with('/') {
        return Some("a relativePath that starts with `/`".into());
    }
    if domain == OWN_FILES_DIR {
        return Some(format!("the domain {OWN_FILES_DIR}, which is where the backup's own files are kept"));
    }
    let components = std::iter::once(domain).chain(relative.split('/').filter(|_| !relative.is_empty()));
    for component in components {
        if let Some(why) = invalid_name_reason(component.as_bytes()) {
            return Some(format!("{why} in its path"));
        }
    }
    None
}

impl IosBackupSource {
    pub fn open(spec_dir: &Path, password: ArchivePassword) -> Result<IosBackupSource, SourceError> {
        let invalid = |why: String| SourceError::Invalid { spec: format!("ios-backup:{}", spec_dir.display()), why };
        let dir = find_backup(spec_dir).map_err(invalid)?;
        let read_plist = |name: &str| read_plist(&dir.join(name)).map_err(|why| invalid(format!("{name}: {why}")));
        let manifest_plist = read_plist("Manifest.plist")?;
        let info = read_plist("Info.plist")?;
        let status = read_plist("Status.plist")?;
        if let Some(state) = status.as_ref().and_then(|s| text_of(s, "SnapshotState")).filter(|s| s != "finished") {
            crate::tell!(
                "phonebak: warning: {} says the backup is not finished (SnapshotState {state:?}): what it holds now is imported",
                dir.join("Status.plist").display()
            );
        }
        let manifest = dir.join("Manifest.db");
        if std::fs::metadata(dir.join("Manifest.db-wal")).is_ok_and(|m| m.len() > 0) {
            crate::tell!(
                "phonebak: warning: {} is there: the backup was not closed, and what its log holds is not imported (Manifest.db as it is, is)",
                dir.join("Manifest.db-wal").display()
            );
        }
        let encrypted = manifest_plist.as_ref().and_then(|m| m.get("IsEncrypted")).and_then(|v| v.as_boolean());
        let (keys, decrypted) = if encrypted == Some(true) {
            let manifest_plist = manifest_plist.as_ref().expect("it said IsEncrypted");
            let keys = ios_crypto::unlock_backup(manifest_plist, password).map_err(|e| match e {
                UnlockError::Password(e) => e,
                UnlockError::WrongPassword => SourceError::ArchivePassword(WRONG_PASSWORD.into()),
                UnlockError::Damaged(why) => invalid(format!("Manifest.plist: {why}")),
            })?;
            let key = keys.manifest_key;
            // Padding kept, so that encrypting it again gives the same bytes.
            let encrypted_db = open_regular_nofollow(&manifest).map_err(|e| invalid(format!("Manifest.db: {e}")))?;
            let plain = Scratch::copy_of(DecryptingReader::new(encrypted_db, &key, &ZERO_IV, false)).map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData {
                    invalid(format!("Manifest.db: {e}"))
                } else {
                    scratch_error("decrypting Manifest.db into", e)
                }
            })?;
            (Some(keys.class_keys), Some(plain))
        } else {
            (None, None)
        };
        let plain_catalogue = match &decrypted {
            Some(_) => None,
            None => Some(ios_crypto::open_catalogue(&manifest).map_err(|e| invalid(format!("Manifest.db: {e}")))?),
        };
        let catalogue = match (&plain_catalogue, &decrypted) {
            (Some(opened), _) => opened,
            (None, Some(scratch)) => scratch.catalogue(),
            (None, None) => unreachable!("one of the two is made above"),
        };
        let (index, rejected) = build_index(catalogue).map_err(|e| match e {
            IndexError::Catalogue(e) if e.sqlite_error_code() != Some(rusqlite::ErrorCode::DiskFull) => {
                invalid(format!("Manifest.db: {e}"))
            }
            IndexError::Catalogue(e) | IndexError::Scratch(e) => {
                let full = e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull);
                let e = if full { io::Error::from_raw_os_error(libc::ENOSPC) } else { io::Error::other(e) };
                scratch_error("indexing the backup in", e)
            }
        })?;
        let root_meta = std::fs::metadata(&manifest)
            .map(|m| Meta { mode: 0o755, ..Meta::of(&m) })
            .map_err(|e| invalid(format!("Manifest.db: {e}")))?;
        let decrypted = decrypted.map(|scratch| Arc::new(scratch.into_file()));
        let own_files = own_files(&dir, decrypted).map_err(|e| invalid(format!("the backup's own files: {e}")))?;
        Ok(IosBackupSource { dir, index: Mutex::new(index), rejected, root_meta, keys, own_files, info })
    }

    /// A blob's size as the snapshot keeps it (an encrypted one's plaintext, from its last
    /// block), and what is odd about it.
    fn blob_size(&self, blob: &Path, mb: &MbFile) -> io::Result<BlobSize> {
        // A plain blob's size is its length: looked at, not opened, for each of thousands of files.
        let Some(keys) = &self.keys else {
            let on_disk = regular_file_len(blob)?;
            let note = (on_disk != mb.size).then(|| size_note(on_disk, mb.size));
            return Ok(BlobSize { plain: on_disk, on_disk, key: None, unpadded: false, note });
        };
        let stored = mb.encryption_key.as_deref().ok_or_else(|| io::Error::other("no EncryptionKey in its record"))?;
        let key = keys.unwrap_key(stored).map_err(io::Error::other)?;
        let blob = open_regular_nofollow(blob)?;
        let on_disk = blob.metadata()?.len();
        let whole = on_disk / 16 * 16;
        if whole != on_disk {
            let note = format!(
                "its encrypted length, {on_disk} bytes, is not whole 16-byte blocks: the last {} bytes cannot be decrypted and are left out",
                on_disk - whole
            );
            return Ok(BlobSize { plain: whole, on_disk, key: Some(key), unpadded: false, note: Some(note) });
        }
        let tail_len = whole.min(32);
        let mut tail = vec![0u8; tail_len as usize];
        blob.read_exact_at(&mut tail, whole - tail_len)?;
        Ok(match ios_crypto::plain_len(&key, whole, &tail) {
            Some(plain) => {
                let note = (plain != mb.size).then(|| size_note(plain, mb.size));
                BlobSize { plain, on_disk, key: Some(key), unpadded: true, note }
            }
            None if whole == 0 => BlobSize { plain: 0, on_disk, key: Some(key), unpadded: false, note: None },
            None => {
                let note = "its padding does not decrypt as PKCS#7 (damage, or not this file's key): every decrypted byte is kept".to_string();
                BlobSize { plain: whole, on_disk, key: Some(key), unpadded: false, note: Some(note) }
            }
        })
    }

    fn blob_path(&self, file_id: &str) -> Option<PathBuf> {
        let valid = file_id.len() >= 2 && file_id.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| self.dir.join(&file_id[..2]).join(file_id))
    }

    /// The entry of an index row, and a note when its blob is not what its record says.
    fn entry(
        &self,
        name: Vec<u8>,
        flags: i64,
        file_id: Option<String>,
        record: Option<Vec<u8>>,
    ) -> io::Result<(SourceEntry, Option<String>)> {
        let (mb, made_up) = match &record {
            Some(bytes) => {
                (decode_mbfile(bytes).map_err(|why| io::Error::other(format!("its MBFile record: {why}")))?, false)
            }
            // A folder no row describes, made for the rows below it: the backup's own owner and time.
            None => {
                let root = &self.root_meta;
                (
                    MbFile { mode: 0o40755, uid: root.uid, gid: root.gid, mtime: root.mtime_sec, ..MbFile::default() },
                    true,
                )
            }
        };
        let mut notes = Vec::new();
        let mut meta = Meta { mode: mb.mode & 0o7777, uid: mb.uid, gid: mb.gid, mtime_sec: mb.mtime, mtime_nsec: 0 };
        if meta.mode & 0o6000 != 0 {
            // Nothing on a phone needs them, and a crafted backup could plant a set-id program.
            meta.mode &= !0o6000;
            notes.push("its set-user-id or set-group-id bit is dropped".to_string());
        }
        if !made_up && !(MIN_TIME..=MAX_TIME).contains(&meta.mtime_sec) {
            notes.push(format!(
                "its time ({} s from 1970) is beyond any file system's: kept as 1970-01-01",
                meta.mtime_sec
            ));
            meta.mtime_sec = 0;
        }
        let kind = match flags {
            FLAG_DIR => SourceKind::Dir,
            FLAG_SYMLINK => SourceKind::Symlink {
                target: mb.target.clone().ok_or_else(|| io::Error::other("a symlink without a target"))?,
            },
            _ => {
                let blob = file_id
                    .as_deref()
                    .and_then(|id| self.blob_path(id))
                    .ok_or_else(|| io::Error::other("no valid fileID"))?;
                let size = self.blob_size(&blob, &mb)?;
                notes.extend(size.note);
                SourceKind::File { size: size.plain }
            }
        };
        let note = (!notes.is_empty()).then(|| notes.join("; "));
        Ok((SourceEntry { name, meta, kind }, note))
    }
}

/// The catalogue's rows in the one order import and export both read them, so that both settle
/// two rows of one path alike (the smaller fileID is the one imported).
pub const CATALOGUE_QUERY: &str =
    "SELECT fileID, domain, relativePath, flags, file FROM Files ORDER BY domain, relativePath, fileID";

/// A row of Manifest.db's Files table, as read.
pub struct CatalogueRow {
    pub file_id: String,
    pub domain: String,
    pub relative: String,
    pub flags: i64,
    pub record: Option<Vec<u8>>,
}

impl CatalogueRow {
    /// Reads a row of `CATALOGUE_QUERY`: its name for messages (`domain-relativePath`), and the
    /// row, or why it cannot be imported (a path that is not text: NULL, a blob, not UTF-8).
    pub fn read(row: &rusqlite::Row) -> (Vec<u8>, Result<CatalogueRow, String>) {
        use rusqlite::types::ValueRef;
        let text = |at: usize, what: &str| -> Result<String, String> {
            match row.get_ref(at) {
                Ok(ValueRef::Text(bytes)) => {
                    String::from_utf8(bytes.to_vec()).map_err(|_| format!("a {what} that is not UTF-8 text"))
                }
                Ok(ValueRef::Null) => Err(format!("no {what}")),
                _ => Err(format!("a {what} that is not text")),
            }
        };
        let lossy = |at: usize| match row.get_ref(at) {
            Ok(ValueRef::Text(bytes) | ValueRef::Blob(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            _ => String::new(),
        };
        let shown = format!("{}-{}", lossy(1), lossy(2)).into_bytes();
        let read = || -> Result<CatalogueRow, String> {
            let (domain, relative) = (text(1, "domain")?, text(2, "relativePath")?);
            let file_id = text(0, "fileID").unwrap_or_default();
            let flags = match row.get_ref(3) {
                Ok(ValueRef::Integer(flags)) => flags,
                _ => return Err("flags that are not a number".into()),
            };
            let record = match row.get_ref(4) {
                Ok(ValueRef::Blob(bytes)) => Some(bytes.to_vec()),
                _ => return Err("no MBFile record".into()),
            };
            if let Some(why) = path_problem(&domain, &relative) {
                return Err(why);
            }
            if ![FLAG_FILE, FLAG_DIR, FLAG_SYMLINK].contains(&flags) {
                return Err(format!("unknown flags {flags}"));
            }
            Ok(CatalogueRow { file_id, domain, relative, flags, record })
        };
        (shown, read())
    }

    /// The tree path: the domain, then relativePath's components (none for the domain itself).
    pub fn path(&self) -> Vec<&str> {
        std::iter::once(self.domain.as_str()).chain(self.relative.split('/').filter(|c| !c.is_empty())).collect()
    }
}

/// A row imported where another has the same path already.
pub const SECOND_ROW: &str = "a second row for the same path (the row with the smaller fileID is imported)";
/// A file row where other rows have a folder: the folder, with everything below it, wins.
const FILE_OVER_FOLDER: &str = "a file in the catalogue where other rows have a folder (those rows are imported)";

/// Rows that cannot be entries: `domain-relativePath`, and why.
type Rejected = Vec<(Vec<u8>, String)>;

enum IndexError {
    Catalogue(rusqlite::Error),
    Scratch(rusqlite::Error),
}

/// Copies the catalogue into an index by folder (a private temporary SQLite file), and names
/// every row that cannot become an entry, with why.
fn build_index(catalogue: &Connection) -> Result<(Connection, Rejected), IndexError> {
    let scratch = IndexError::Scratch;
    // A private temporary file, deleted when closed; a scratch copy rebuilt on every run: no
    // journal, no syncs, one transaction.
    let index = Connection::open("").map_err(scratch)?;
    index
        .execute_batch(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
             CREATE TABLE entries (parent BLOB NOT NULL, name BLOB NOT NULL, flags INTEGER NOT NULL,
                 file_id TEXT, record BLOB, shown BLOB, PRIMARY KEY (parent, name)) WITHOUT ROWID;
             BEGIN;",
        )
        .map_err(scratch)?;
    let mut rejected = Vec::new();
    {
        let mut rows = catalogue.prepare(CATALOGUE_QUERY).map_err(IndexError::Catalogue)?;
        let mut found = rows.query([]).map_err(IndexError::Catalogue)?;
        let mut existing = index
            .prepare("SELECT flags, file_id, shown FROM entries WHERE parent = ?1 AND name = ?2")
            .map_err(scratch)?;
        let mut insert = index.prepare("INSERT INTO entries VALUES (?1, ?2, ?3, ?4, ?5, ?6)").map_err(scratch)?;
        let mut remove = index.prepare("DELETE FROM entries WHERE parent = ?1 AND name = ?2").map_err(scratch)?;
        let mut describe = index
            .prepare("UPDATE entries SET file_id = ?3, record = ?4, shown = ?5 WHERE parent = ?1 AND name = ?2")
            .map_err(scratch)?;
        while let Some(row) = found.next().map_err(IndexError::Catalogue)? {
            let (shown, read) = CatalogueRow::read(row);
            let row = match read {
                Ok(row) => row,
                Err(why) => {
                    rejected.push((shown, why));
                    continue;
                }
            };
            let path = row.path();
            // The folders leading to it: one made up where no row has it, a file in the way
            // given up (the folder and what is below it win).
            for depth in 1..path.len() {
                let (parent, name) = (path[..depth - 1].join("/"), path[depth - 1]);
                let key = params![parent.as_bytes(), name.as_bytes()];
                let there: Option<(i64, Option<String>, Option<Vec<u8>>)> =
                    existing.query_row(key, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional().map_err(scratch)?;
                match there {
                    Some((FLAG_DIR, ..)) => continue,
                    Some((_, _, file_shown)) => {
                        remove.execute(key).map_err(scratch)?;
                        rejected.push((file_shown.unwrap_or_default(), FILE_OVER_FOLDER.into()));
                    }
                    None => {}
                }
                insert
                    .execute(params![
                        parent.as_bytes(),
                        name.as_bytes(),
                        FLAG_DIR,
                        None::<String>,
                        None::<Vec<u8>>,
                        None::<Vec<u8>>
                    ])
                    .map_err(scratch)?;
            }
            let (parent, name) = (path[..path.len() - 1].join("/"), path[path.len() - 1]);
            let key = params![parent.as_bytes(), name.as_bytes()];
            let there: Option<(i64, Option<String>, Option<Vec<u8>>)> =
                existing.query_row(key, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional().map_err(scratch)?;
            match there {
                None => {
                    insert
                        .execute(params![parent.as_bytes(), name.as_bytes(), row.flags, row.file_id, row.record, shown])
                        .map_err(scratch)?;
                }
                // A folder made up for the rows below it: this row describes it.
                Some((FLAG_DIR, _, None)) if row.flags == FLAG_DIR => {
                    describe
                        .execute(params![parent.as_bytes(), name.as_bytes(), row.file_id, row.record, shown])
                        .map_err(scratch)?;
                }
                Some((FLAG_DIR, _, None)) => rejected.push((shown, FILE_OVER_FOLDER.into())),
                Some(_) => rejected.push((shown, SECOND_ROW.into())),
            }
        }
    }
    index.execute_batch("COMMIT;").map_err(scratch)?;
    Ok((index, rejected))
}

/// A failure in the temporary folder (TMPDIR), where the index and a decrypted Manifest.db go:
/// said as such, and a full one is a full disk (exit 15).
fn scratch_error(doing: &str, e: io::Error) -> SourceError {
    SourceError::Scratch { doing: format!("{doing} the temporary folder {}", std::env::temp_dir().display()), error: e }
}

/// A plist file's top dictionary; `None` if the file is not there (a hand-made copy of a backup
/// may have only Manifest.db and the blobs). Damage is an error: guessing could import wrongly.
fn read_plist(path: &Path) -> Result<Option<plist::Dictionary>, String> {
    let file = match open_regular_nofollow(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        other => other.map_err(|e| e.to_string())?,
    };
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len > MAX_PLIST {
        return Err(format!("{len} bytes, more than a backup's plist holds"));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_PLIST).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    parse_plist(&bytes).map(Some)
}

/// A backup's plist (XML or binary): its top dictionary.
pub fn parse_plist(bytes: &[u8]) -> Result<plist::Dictionary, String> {
    // The plist crate's errors are its internal state, not words for a user.
    let value = plist::Value::from_reader(io::Cursor::new(bytes));
    match value.map_err(|_| "not a readable plist (damaged or cut short)".to_string())? {
        plist::Value::Dictionary(top) => Ok(top),
        _ => Err("not a dictionary of keys".into()),
    }
}

/// What Info.plist says of the phone, as the snapshot keeps it.
pub fn info_facts(info: &plist::Dictionary) -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    for (key, name) in [
        ("device_name", "Device Name"),
        ("product_type", "Product Type"),
        ("product_version", "Product Version"),
        ("build_version", "Build Version"),
        ("serial_number", "Serial Number"),
        ("imei", "IMEI"),
        ("udid", "Unique Identifier"),
    ] {
        if let Some(value) = text_of(info, name).filter(|v| !v.is_empty()) {
            facts.insert(key.into(), value);
        }
    }
    if let Some(date) = info.get("Last Backup Date").and_then(|d| d.as_date()) {
        facts.insert("last_backup_date".into(), date.to_xml_format());
    }
    facts
}

fn text_of(dict: &plist::Dictionary, key: &str) -> Option<String> {
    dict.get(key)?.as_string().map(str::to_string)
}

/// What the user is told for a wrong password, on import and export alike.
pub const WRONG_PASSWORD: &str =
    "wrong password for this encrypted iPhone backup (the one set in Finder, iTunes or idevicebackup2)";

/// The backup's own files that are there, as the snapshot's `.ios-backup/` keeps them.
fn own_files(dir: &Path, decrypted: Option<Arc<File>>) -> io::Result<Vec<(&'static str, Meta, u64, OwnFile)>> {
    let mut found = Vec::new();
    for name in OWN_FILES {
        let path = dir.join(name);
        let meta = match open_regular_nofollow(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            other => other?.metadata()?,
        };
        let (size, read) = match (&decrypted, name) {
            (Some(file), "Manifest.db") => (file.metadata()?.len(), OwnFile::Decrypted(file.clone())),
            _ => (meta.len(), OwnFile::Path(path)),
        };
        // Private whatever the backup folder's modes: the phone's identity, its decrypted catalogue.
        found.push((name, Meta { mode: 0o600, ..Meta::of(&meta) }, size, read));
    }
    Ok(found)
}

fn size_note(found: u64, recorded: u64) -> String {
    format!("{found} bytes where its Manifest.db record says {recorded}: imported as it is")
}

/// A blob's size: its plaintext, the file's, the key that decrypts it, and whether a valid
/// PKCS#7 padding comes off its end.
struct BlobSize {
    plain: u64,
    on_disk: u64,
    key: Option<[u8; 32]>,
    unpadded: bool,
    note: Option<String>,
}

/// The folder holding Manifest.db: `dir` itself, or its one `<UDID>/` subfolder that has one.
fn find_backup(dir: &Path) -> Result<PathBuf, String> {
    if dir.join("Manifest.db").is_file() {
        return Ok(dir.to_path_buf());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
    let mut found: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.join("Manifest.db").is_file()).collect();
    found.sort();
    match found.len() {
        0 => Err("no Manifest.db in it or in a folder in it: not an iOS backup".into()),
        1 => Ok(found.remove(0)),
        _ => Err(format!(
            "it holds {} backups; name one: {}",
            found.len(),
            found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// A usable device name (a folder name in the mount) made of the phone's own: `Anna's iPhone`
/// stays, a `/` or NUL becomes `-`.
fn usable_device_name(name: &str) -> Option<String> {
    let mut cleaned: String = name.trim().chars().map(|c| if c == '/' || c == '\0' { '-' } else { c }).collect();
    while cleaned.len() > 255 {
        cleaned.pop();
    }
    (!cleaned.is_empty() && cleaned != "." && cleaned != "..").then_some(cleaned)
}

impl Source for IosBackupSource {
    fn device_name(&self) -> Option<String> {
        usable_device_name(&text_of(self.info.as_ref()?, "Device Name")?)
    }

    fn taken_at_ns(&self) -> Option<i64> {
        let date = self.info.as_ref()?.get("Last Backup Date")?.as_date()?;
        let since = std::time::SystemTime::from(date).duration_since(std::time::UNIX_EPOCH).ok()?;
        i64::try_from(since.as_nanos()).ok()
    }

    fn facts(&self) -> BTreeMap<String, String> {
        let mut facts = self.info.as_ref().map(info_facts).unwrap_or_default();
        facts.insert("kind".into(), "ios-backup".into());
        facts.insert("encrypted".into(), self.keys.is_some().to_string());
        facts
    }

    fn describe(&self) -> String {
        let absolute = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        format!("ios-backup:{}", absolute.display())
    }

    fn send_entries(&self, sink: &mut dyn EntrySink) -> Result<(), SourceError> {
        walk::send(self, sink)
    }

    fn expected_bytes(&self, excluded: &(dyn Fn(&[u8]) -> bool + Sync)) -> Option<u64> {
        Some(walk::total_size(self, excluded, Path::new("")))
    }
}

impl ListedSource for IosBackupSource {
    fn root_meta(&self) -> Result<Meta, SourceError> {
        Ok(self.root_meta.clone())
    }

    fn list(&self, dir: &Path) -> Result<Listing, SourceError> {
        if dir == Path::new(OWN_FILES_DIR) {
            let entries = self.own_files.iter().map(|(name, meta, size, _)| SourceEntry {
                name: name.as_bytes().to_vec(),
                meta: meta.clone(),
                kind: SourceKind::File { size: *size },
            });
            return Ok(Listing { entries: entries.collect(), ..Listing::default() });
        }
        let error = |e: rusqlite::Error| SourceError::Unreadable {
            path: dir.display().to_string(),
            source: io::Error::other(e),
        };
        let parent = std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()).to_vec();
        let index = self.index.lock().expect("index lock");
        let mut rows = index
            .prepare_cached("SELECT name, flags, file_id, record FROM entries WHERE parent = ?1")
            .map_err(error)?;
        let found: Vec<IndexRow> = rows
            .query_map(params![parent], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(error)?
            .collect::<Result<_, _>>()
            .map_err(error)?;
        drop(rows);
        drop(index);
        let mut listing = Listing::default();
        for (name, flags, file_id, record) in found {
            match self.entry(name.clone(), flags, file_id, record) {
                Ok((entry, note)) => {
                    if let Some(note) = note {
                        listing.notes.push((name, note));
                    }
                    listing.entries.push(entry);
                }
                Err(e) => listing.unreadable.push((name, e)),
            }
        }
        if dir.as_os_str().is_empty() {
            if !self.own_files.is_empty() {
                listing.entries.push(SourceEntry {
                    name: OWN_FILES_DIR.as_bytes().to_vec(),
                    meta: Meta { mode: 0o700, ..self.root_meta.clone() },
                    kind: SourceKind::Dir,
                });
            }
            for (path, why) in &self.rejected {
                listing.unreadable.push((path.clone(), io::Error::other(format!("not imported: {why}"))));
            }
        }
        Ok(listing)
    }

    fn open(&self, file: &Path) -> Result<Box<dyn SourceFile>, SourceError> {
        let unreadable = |source: io::Error| SourceError::Unreadable { path: file.display().to_string(), source };
        let (parent, name) = (file.parent().unwrap_or(Path::new("")), file.file_name().unwrap_or_default());
        if parent == Path::new(OWN_FILES_DIR) {
            let (_, meta, _, own) = self
                .own_files
                .iter()
                .find(|(n, ..)| n.as_bytes() == std::os::unix::ffi::OsStrExt::as_bytes(name))
                .ok_or_else(|| unreadable(io::Error::from(io::ErrorKind::NotFound)))?;
            let file = match own {
                OwnFile::Path(path) => Arc::new(open_regular_nofollow(path).map_err(unreadable)?),
                OwnFile::Decrypted(file) => file.clone(),
            };
            return Ok(Box::new(OwnFileReader { file, at: 0, mtime: meta.mtime_sec, mtime_nsec: meta.mtime_nsec }));
        }
        let as_bytes = |p: &std::ffi::OsStr| std::os::unix::ffi::OsStrExt::as_bytes(p).to_vec();
        let row: Option<(Option<String>, Option<Vec<u8>>)> = {
            let index = self.index.lock().expect("index lock");
            index
                .query_row(
                    "SELECT file_id, record FROM entries WHERE parent = ?1 AND name = ?2",
                    params![as_bytes(parent.as_os_str()), as_bytes(name)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|e| unreadable(io::Error::other(e)))?
        };
        let (file_id, record) = row.ok_or_else(|| unreadable(io::Error::from(io::ErrorKind::NotFound)))?;
        let blob = file_id
            .as_deref()
            .and_then(|id| self.blob_path(id))
            .ok_or_else(|| unreadable(io::Error::other("no valid fileID")))?;
        let mb = match record.as_deref() {
            Some(bytes) => decode_mbfile(bytes).map_err(|why| unreadable(io::Error::other(why)))?,
            None => MbFile::default(),
        };
        let file = open_regular_nofollow(&blob).map_err(unreadable)?;
        let size = self.blob_size(&blob, &mb).map_err(unreadable)?;
        let reader: Box<dyn Read + Send> = match size.key {
            None => Box::new(file.try_clone().map_err(unreadable)?),
            Some(key) => {
                let whole = file.try_clone().map_err(unreadable)?.take(size.on_disk / 16 * 16);
                Box::new(DecryptingReader::new(whole, &key, &ZERO_IV, size.unpadded))
            }
        };
        Ok(Box::new(Blob { reader, file, mtime: mb.mtime, on_disk: size.on_disk, plain: size.plain }))
    }
}

/// A row of the index: name, flags, fileID, MBFile record.
type IndexRow = (Vec<u8>, i64, Option<String>, Option<Vec<u8>>);

/// A blob being read: its plaintext, and the file itself to tell whether it changed meanwhile.
struct Blob {
    reader: Box<dyn Read + Send>,
    file: File,
    mtime: i64,
    on_disk: u64,
    plain: u64,
}

impl Read for Blob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl SourceFile for Blob {
    fn current_state(&self) -> io::Result<(u64, i64, u32)> {
        // A blob whose length changed since it was opened no longer has the size it had.
        let now = self.file.metadata()?.len();
        Ok((if now == self.on_disk { self.plain } else { now }, self.mtime, 0))
    }
}

/// One of the backup's own files, read at its own offset (the decrypted Manifest.db is one
/// shared file with no name left to open again).
struct OwnFileReader {
    file: Arc<File>,
    at: u64,
    mtime: i64,
    mtime_nsec: u32,
}

impl Read for OwnFileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl SourceFile for OwnFileReader {
    fn current_state(&self) -> io::Result<(u64, i64, u32)> {
        Ok((self.file.metadata()?.len(), self.mtime, self.mtime_nsec))
    }
}
