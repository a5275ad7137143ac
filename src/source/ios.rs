//! `ios-backup:DIR`: a backup folder as Finder, iTunes and `idevicebackup2` write it, read as the
//! phone's own folders, `<Domain>/<relativePath>`. Its catalogue, Manifest.db, has a row per
//! file (fileID = SHA-1 of `domain-relativePath`, kept at `fileID[0:2]/fileID`, and an MBFile
//! record: an NSKeyedArchiver plist with the mode, owner, times, size and link target).
//!
//! The rows are copied once into an index by folder: a private temporary SQLite file, so that a
//! backup of any size is listed with a bounded amount of memory. Rows whose paths cannot be
//! stored (`..`, a leading `/`, an empty component, NUL) never become entries: they are listed
//! as unreadable at the top, with why.
//!
//! Not yet: encrypted backups (refused by name), Info.plist facts, export (issue 15 goes on).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{Listing, Source, SourceEntry, SourceError, SourceFile, SourceKind};
use crate::tree::Meta;
use crate::tree_builder::invalid_name_reason;

const FLAG_FILE: i64 = 1;
const FLAG_DIR: i64 = 2;
const FLAG_SYMLINK: i64 = 4;

pub struct IosBackupSource {
    /// The folder holding Manifest.db and the blobs.
    dir: PathBuf,
    index: Mutex<Connection>,
    /// Rows that cannot be stored: (the row's domain-relativePath, why).
    rejected: Vec<(Vec<u8>, String)>,
    root_meta: Meta,
}

/// What an MBFile record says of a file.
#[derive(Debug, Default, PartialEq)]
pub struct MbFile {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
    pub target: Option<Vec<u8>>,
}

/// Decodes an MBFile record: an NSKeyedArchiver plist whose root object holds the fields, and
/// whose `Target` (a symlink's) is a reference to a string in `$objects`.
pub fn decode_mbfile(bytes: &[u8]) -> Result<MbFile, String> {
    let value = plist::Value::from_reader(io::Cursor::new(bytes)).map_err(|e| format!("not a plist: {e}"))?;
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
    let mtime = i64::try_from(number("LastModified")?).map_err(|_| "LastModified is out of range".to_string())?;
    let target = match root.get("Target").and_then(object) {
        None => None,
        Some(plist::Value::String(text)) => Some(text.as_bytes().to_vec()),
        Some(_) => return Err("Target is not a string".into()),
    };
    Ok(MbFile {
        mode: small("Mode")?,
        uid: small("UserID")?,
        gid: small("GroupID")?,
        mtime,
        size: number("Size")?,
        target,
    })
}

/// Why a catalogue path cannot become entries, if it cannot.
fn path_problem(domain: &str, relative: &str) -> Option<String> {
    if relative.starts_with('/') {
        return Some("a relativePath that starts with `/`".into());
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
    pub fn open(spec_dir: &Path) -> Result<IosBackupSource, SourceError> {
        let invalid = |why: String| SourceError::Invalid { spec: format!("ios-backup:{}", spec_dir.display()), why };
        let dir = find_backup(spec_dir).map_err(invalid)?;
        if plist_flag(&dir.join("Manifest.plist"), "IsEncrypted") == Some(true) {
            return Err(invalid("it is an encrypted backup, which phonebak cannot read yet".into()));
        }
        if let Some(state) = plist_text(&dir.join("Status.plist"), "SnapshotState").filter(|s| s != "finished") {
            eprintln!(
                "phonebak: warning: {} says the backup is not finished (SnapshotState {state:?}): what it holds now is imported",
                dir.join("Status.plist").display()
            );
        }
        let manifest = dir.join("Manifest.db");
        let catalogue = Connection::open_with_flags(&manifest, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| invalid(format!("Manifest.db: {e}")))?;
        // A private temporary file, deleted when closed.
        let index = Connection::open("").map_err(|e| invalid(format!("an index of the backup: {e}")))?;
        // A scratch copy, rebuilt on every run: no journal, no syncs, one transaction.
        index
            .execute_batch(
                "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
                 CREATE TABLE entries (parent BLOB NOT NULL, name BLOB NOT NULL, flags INTEGER NOT NULL,
                     file_id TEXT, record BLOB, PRIMARY KEY (parent, name)) WITHOUT ROWID;
                 BEGIN;",
            )
            .map_err(|e| invalid(format!("an index of the backup: {e}")))?;
        let mut rejected = Vec::new();
        {
            let mut rows = catalogue
                .prepare("SELECT fileID, domain, relativePath, flags, file FROM Files")
                .map_err(|e| invalid(format!("Manifest.db has no readable Files table: {e}")))?;
            let mut insert = index
                .prepare("INSERT OR REPLACE INTO entries VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(|e| invalid(e.to_string()))?;
            let mut folder = index
                .prepare("INSERT OR IGNORE INTO entries VALUES (?1, ?2, 2, NULL, NULL)")
                .map_err(|e| invalid(e.to_string()))?;
            let mut found = rows.query([]).map_err(|e| invalid(format!("Manifest.db: {e}")))?;
            while let Some(row) = found.next().map_err(|e| invalid(format!("Manifest.db: {e}")))? {
                let text = |at: usize| row.get::<_, Option<String>>(at).ok().flatten().unwrap_or_default();
                let (file_id, domain, relative) = (text(0), text(1), text(2));
                let flags: i64 = row.get(3).unwrap_or(0);
                let record: Option<Vec<u8>> = row.get(4).ok().flatten();
                let shown = format!("{domain}-{relative}").into_bytes();
                if let Some(why) = path_problem(&domain, &relative) {
                    rejected.push((shown, why));
                    continue;
                }
                if ![FLAG_FILE, FLAG_DIR, FLAG_SYMLINK].contains(&flags) {
                    rejected.push((shown, format!("unknown flags {flags}")));
                    continue;
                }
                let path: Vec<&str> =
                    std::iter::once(domain.as_str()).chain(relative.split('/').filter(|c| !c.is_empty())).collect();
                for depth in 1..path.len() {
                    let parent = path[..depth - 1].join("/");
                    folder
                        .execute(params![parent.as_bytes(), path[depth - 1].as_bytes()])
                        .map_err(|e| invalid(e.to_string()))?;
                }
                let (name, parent) = (path[path.len() - 1], path[..path.len() - 1].join("/"));
                insert
                    .execute(params![parent.as_bytes(), name.as_bytes(), flags, file_id, record])
                    .map_err(|e| invalid(e.to_string()))?;
            }
        }
        index.execute_batch("COMMIT;").map_err(|e| invalid(format!("an index of the backup: {e}")))?;
        rejected.extend(files_over_folders(&index).map_err(|e| invalid(format!("an index of the backup: {e}")))?);
        let root_meta = std::fs::metadata(&manifest)
            .map(|m| Meta { mode: 0o755, ..Meta::of(&m) })
            .map_err(|e| invalid(format!("Manifest.db: {e}")))?;
        Ok(IosBackupSource { dir, index: Mutex::new(index), rejected, root_meta })
    }

    fn blob_path(&self, file_id: &str) -> Option<PathBuf> {
        let valid = file_id.len() >= 2 && file_id.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| self.dir.join(&file_id[..2]).join(file_id))
    }

    fn entry(
        &self,
        name: Vec<u8>,
        flags: i64,
        file_id: Option<String>,
        record: Option<Vec<u8>>,
    ) -> io::Result<SourceEntry> {
        let mb = match &record {
            Some(bytes) => decode_mbfile(bytes).map_err(|why| io::Error::other(format!("its MBFile record: {why}")))?,
            None => MbFile { mode: 0o40755, ..MbFile::default() },
        };
        let meta = Meta { mode: mb.mode & 0o7777, uid: mb.uid, gid: mb.gid, mtime_sec: mb.mtime, mtime_nsec: 0 };
        let kind = match flags {
            FLAG_DIR => SourceKind::Dir,
            FLAG_SYMLINK => {
                SourceKind::Symlink { target: mb.target.ok_or_else(|| io::Error::other("a symlink without a target"))? }
            }
            _ => {
                let blob = file_id
                    .as_deref()
                    .and_then(|id| self.blob_path(id))
                    .ok_or_else(|| io::Error::other("no valid fileID"))?;
                SourceKind::File { size: std::fs::metadata(blob)?.len() }
            }
        };
        Ok(SourceEntry { name, meta, kind })
    }
}

/// Files or symlinks in the catalogue at a path where other rows have a folder: the rows below
/// them cannot be reached in a tree, and are named instead of silently missing.
fn files_over_folders(index: &Connection) -> rusqlite::Result<Vec<(Vec<u8>, String)>> {
    let mut entries = index.prepare("SELECT parent, name FROM entries WHERE flags != 2")?;
    let mut below = index.prepare("SELECT 1 FROM entries WHERE parent = ?1 LIMIT 1")?;
    let mut found = Vec::new();
    let rows: Vec<(Vec<u8>, Vec<u8>)> =
        entries.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
    for (parent, name) in rows {
        let path = if parent.is_empty() { name } else { [parent.as_slice(), b"/", name.as_slice()].concat() };
        if below.exists(params![path])? {
            let why = "a file in the catalogue where other rows have a folder: the rows below it are not imported";
            found.push((path, why.to_string()));
        }
    }
    Ok(found)
}

/// A top-level value of a plist file, if the file reads and has it (a hand-made copy of a
/// backup may have neither Manifest.plist nor Status.plist).
fn plist_value(path: &Path, key: &str) -> Option<plist::Value> {
    let value = plist::Value::from_file(path).ok()?;
    value.as_dictionary()?.get(key).cloned()
}

fn plist_flag(path: &Path, key: &str) -> Option<bool> {
    plist_value(path, key)?.as_boolean()
}

fn plist_text(path: &Path, key: &str) -> Option<String> {
    plist_value(path, key)?.as_string().map(str::to_string)
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
        usable_device_name(&plist_text(&self.dir.join("Info.plist"), "Device Name")?)
    }

    fn taken_at_ns(&self) -> Option<i64> {
        let date = plist_value(&self.dir.join("Info.plist"), "Last Backup Date")?.as_date()?;
        let since = std::time::SystemTime::from(date).duration_since(std::time::UNIX_EPOCH).ok()?;
        i64::try_from(since.as_nanos()).ok()
    }

    fn describe(&self) -> String {
        let absolute = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        format!("ios-backup:{}", absolute.display())
    }

    fn root_meta(&self) -> Result<Meta, SourceError> {
        Ok(self.root_meta.clone())
    }

    fn list(&self, dir: &Path) -> Result<Listing, SourceError> {
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
                Ok(entry) => listing.entries.push(entry),
                Err(e) => listing.unreadable.push((name, e)),
            }
        }
        if dir.as_os_str().is_empty() {
            for (path, why) in &self.rejected {
                listing.unreadable.push((path.clone(), io::Error::other(format!("not imported: {why}"))));
            }
        }
        Ok(listing)
    }

    fn open(&self, file: &Path) -> Result<Box<dyn SourceFile>, SourceError> {
        let unreadable = |source: io::Error| SourceError::Unreadable { path: file.display().to_string(), source };
        let (parent, name) = (file.parent().unwrap_or(Path::new("")), file.file_name().unwrap_or_default());
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
        let mtime = record.as_deref().and_then(|r| decode_mbfile(r).ok()).map_or(0, |mb| mb.mtime);
        let file = File::open(blob).map_err(unreadable)?;
        Ok(Box::new(Blob { file, mtime }))
    }
}

/// A row of the index: name, flags, fileID, MBFile record.
type IndexRow = (Vec<u8>, i64, Option<String>, Option<Vec<u8>>);

struct Blob {
    file: File,
    mtime: i64,
}

impl Read for Blob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl SourceFile for Blob {
    fn current_state(&self) -> io::Result<(u64, i64, u32)> {
        Ok((self.file.metadata()?.len(), self.mtime, 0))
    }
}
