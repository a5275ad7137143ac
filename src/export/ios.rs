//! `export SNAPSHOT --format ios-backup OUT`: gives a snapshot of an iPhone backup back as the
//! backup folder it was (Info.plist, Manifest.plist, Status.plist, Manifest.db and the
//! `<xx>/<fileID>` blobs), byte for byte, so that Finder or `idevicebackup2 restore` can put it
//! on a phone. An encrypted backup is encrypted again with its own keys (its password unlocks
//! them), which gives the same ciphertext.
//!
//! Everything is written into a private folder inside OUT (the same disk, even when OUT is an
//! empty disk's mount point), made durable, and only then moved into OUT, Manifest.db last: an
//! interrupted export never leaves a folder that looks like a whole backup, and a rerun clears
//! what it left.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;

use rusqlite::Connection;

use super::{is_inside, target, ExportError, ExportReport, FolderCache};
use crate::cbc_stream::EncryptingReader;
use crate::ios_crypto::{self, ClassKeys, Scratch, UnlockError, ZERO_IV};
use crate::progress::Progress;
use crate::repo::snapshot::SnapshotInfo;
use crate::repo::{RepoError, Repository};
use crate::source::{decode_mbfile, CatalogueRow, SourceError, CATALOGUE_QUERY, OWN_FILES, OWN_FILES_DIR, SECOND_ROW};
use crate::tree::{load_tree, ChunkReader, ChunkRef, Node, Tree};

/// One blob to write: its content, where, and the key to encrypt it with.
struct Job {
    chunks: Vec<ChunkRef>,
    size: u64,
    dest: PathBuf,
    key: Option<[u8; 32]>,
    /// The catalogue's `domain-relativePath`, for messages.
    shown: String,
}

pub fn ios_backup(
    repo: &Repository,
    info: &SnapshotInfo,
    out: &Path,
    password: impl FnOnce() -> Result<Vec<u8>, SourceError>,
) -> Result<ExportReport, ExportError> {
    let label = format!("{}/{}", info.snapshot.device, info.name);
    let root = load_tree(repo, &info.snapshot.root)?;
    let own = match root.find(OWN_FILES_DIR.as_bytes()).map(|e| &e.node) {
        Some(Node::Dir { tree }) if info.snapshot.source.starts_with("ios-backup:") => load_tree(repo, tree)?,
        _ => return Err(ExportError::NotIosBackup(label)),
    };
    let own_file = |name: &str| match own.find(name.as_bytes()).map(|e| &e.node) {
        Some(Node::File { chunks, size }) => Some((chunks.clone(), *size)),
        _ => None,
    };
    let Some((manifest_db, _)) = own_file("Manifest.db") else {
        return Err(ExportError::NotIosBackup(label));
    };
    let keys = match own_file("Manifest.plist") {
        Some((chunks, size)) => unlock(repo, chunks, size, password)?,
        None => None,
    };

    if repo.local_folder().is_some_and(|root| is_inside(out, root)) {
        let why = "inside the repository folder: name a folder outside it";
        return Err(ExportError::OutUnusable { path: out.to_path_buf(), why: why.into() });
    }
    let (temp, made_out, _lock) = prepare_out(out)?;
    let finished = write_backup(repo, &root, &own, &manifest_db, keys.as_ref(), &temp)
        .and_then(|report| move_into_place(&temp, out).map(|()| report));
    match finished {
        Ok(report) => Ok(ExportReport { out: out.to_path_buf(), ..report }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&temp);
            if made_out {
                let _ = std::fs::remove_dir(out);
            }
            Err(e)
        }
    }
}

const TEMP_PREFIX: &str = ".phonebak-export-";

/// Checks that OUT is new, or an empty folder (but for what an interrupted export left, which
/// goes), takes it for this export alone, and makes the private folder inside it that is
/// written first. Says whether OUT was made here, and gives the lock to hold.
fn prepare_out(out: &Path) -> Result<(PathBuf, bool, File), ExportError> {
    let unusable = |why: &str| ExportError::OutUnusable { path: out.to_path_buf(), why: why.into() };
    let mut lock = None;
    let made_out = match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(target(parent))?;
            }
            std::fs::DirBuilder::new().mode(0o700).create(out).map_err(target(out))?;
            true
        }
        Err(e) => return Err(target(out)(e)),
        Ok(meta) if meta.file_type().is_symlink() => return Err(unusable("a symlink: name the folder itself")),
        Ok(meta) if !meta.is_dir() => return Err(unusable("not a folder: name a new or empty folder to export into")),
        Ok(_) => {
            lock = Some(lock_out(out)?);
            let (mut leftovers, mut others) = (Vec::new(), 0);
            for entry in std::fs::read_dir(out).map_err(target(out))? {
                let entry = entry.map_err(target(out))?;
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                match is_dir && entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    true => leftovers.push(entry.path()),
                    false => others += 1,
                }
            }
            match (leftovers.is_empty(), others) {
                (_, 0) => {}
                (true, _) => return Err(unusable("not empty: name a new or empty folder to export into")),
                // Stopped while its files were being moved in: what is there is not whole.
                (false, _) => return Err(unusable("holds part of an interrupted export: empty it and export again")),
            }
            for leftover in leftovers {
                std::fs::remove_dir_all(&leftover).map_err(target(&leftover))?;
            }
            false
        }
    };
    let lock = match lock {
        Some(lock) => lock,
        None => lock_out(out)?,
    };
    let temp = out.join(format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>()));
    std::fs::DirBuilder::new().mode(0o700).create(&temp).map_err(target(&temp))?;
    Ok((temp, made_out, lock))
}

/// Takes OUT for this export alone (a lock on the folder, held until the export ends): another
/// export starting into it would take the folder it is writing for an interrupted one's.
fn lock_out(out: &Path) -> Result<File, ExportError> {
    let folder = File::open(out).map_err(target(out))?;
    // SAFETY: the descriptor is open for the call; flock only takes an advisory lock.
    if unsafe { libc::flock(folder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let why = "another phonebak export is writing into it now";
            return Err(ExportError::OutUnusable { path: out.to_path_buf(), why: why.into() });
        }
        return Err(target(out)(error));
    }
    Ok(folder)
}

/// Moves the finished, synced backup from `temp` into OUT, Manifest.db last (a folder without
/// it is no backup to any tool), and makes the moves durable.
fn move_into_place(temp: &Path, out: &Path) -> Result<(), ExportError> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(temp)
        .map_err(target(temp))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(target(temp))?;
    names.sort_by_key(|n| n == "Manifest.db");
    for name in names {
        let (from, to) = (temp.join(&name), out.join(&name));
        std::fs::rename(&from, &to).map_err(target(&to))?;
    }
    std::fs::remove_dir(temp).map_err(target(temp))?;
    crate::repo::fsync_dir(out).map_err(target(out))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    crate::repo::fsync_dir(&parent).map_err(target(&parent))
}

/// Reads the snapshot's Manifest.plist; for an encrypted backup, unlocks its keys.
fn unlock(
    repo: &Repository,
    chunks: Vec<ChunkRef>,
    size: u64,
    password: impl FnOnce() -> Result<Vec<u8>, SourceError>,
) -> Result<Option<ios_crypto::BackupKeys>, ExportError> {
    let damaged = |why: String| ExportError::Damaged { what: "copy of the backup's Manifest.plist".into(), why };
    if size > 64 << 20 {
        return Err(damaged(format!("{size} bytes, more than a backup's plist holds")));
    }
    let mut bytes = Vec::new();
    ChunkReader::new(repo, chunks).read_to_end(&mut bytes).map_err(|e| damaged(e.to_string()))?;
    let manifest = match plist::Value::from_reader(io::Cursor::new(bytes)) {
        Ok(plist::Value::Dictionary(top)) => top,
        // Imported as it was; without a readable Manifest.plist the backup is plain.
        _ => return Ok(None),
    };
    if manifest.get("IsEncrypted").and_then(|v| v.as_boolean()) != Some(true) {
        return Ok(None);
    }
    ios_crypto::unlock_backup(&manifest, password).map(Some).map_err(|e| match e {
        UnlockError::Password(e) => e.into(),
        UnlockError::WrongPassword => SourceError::ArchivePassword(crate::source::WRONG_PASSWORD.into()).into(),
        UnlockError::Damaged(why) => damaged(why),
    })
}

fn write_backup(
    repo: &Repository,
    root: &Tree,
    own: &Tree,
    manifest_db: &[ChunkRef],
    keys: Option<&ios_crypto::BackupKeys>,
    temp: &Path,
) -> Result<ExportReport, ExportError> {
    let mut report = ExportReport::default();
    for name in OWN_FILES.iter().filter(|n| **n != "Manifest.db") {
        if let Some(Node::File { chunks, .. }) = own.find(name.as_bytes()).map(|e| &e.node) {
            let dest = temp.join(name);
            write_file(&dest, name, &mut ChunkReader::new(repo, chunks.clone()), &mut vec![0; WRITE_BUFFER])?;
        }
    }
    let plain_db = ChunkReader::new(repo, manifest_db.to_vec());
    let dest_db = temp.join("Manifest.db");
    // The catalogue is read by SQLite from a file: for a plain backup the one just written, for
    // an encrypted one a decrypted copy that has no name.
    let (plain_catalogue, scratch) = match keys {
        None => {
            write_file(&dest_db, "Manifest.db", &mut { plain_db }, &mut vec![0; WRITE_BUFFER])?;
            let opened = ios_crypto::open_catalogue(&dest_db).map_err(|e| ExportError::Damaged {
                what: "copy of the backup's Manifest.db".into(),
                why: e.to_string(),
            })?;
            (Some(opened), None)
        }
        Some(keys) => {
            let scratch =
                Scratch::copy_of(plain_db).map_err(|e| match e.get_ref().is_some_and(|e| e.is::<RepoError>()) {
                    true => {
                        ExportError::Damaged { what: "copy of the backup's Manifest.db".into(), why: e.to_string() }
                    }
                    false => ExportError::Scratch { error: e },
                })?;
            let plain = ReadAt { file: scratch.file(), at: 0 };
            let mut encrypted = EncryptingReader::new(plain, &keys.manifest_key, &ZERO_IV, false);
            write_file(&dest_db, "Manifest.db", &mut encrypted, &mut vec![0; WRITE_BUFFER])?;
            (None, Some(scratch))
        }
    };
    let catalogue = match (&plain_catalogue, &scratch) {
        (Some(opened), _) => opened,
        (None, Some(scratch)) => scratch.catalogue(),
        (None, None) => unreachable!("one of the two is made above"),
    };

    let class_keys = keys.map(|k| &k.class_keys);
    let progress = Progress::bytes("export", None);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let (tx, rx) = sync_channel::<Job>(workers * 16);
    let rx = Mutex::new(rx);
    let failed: Mutex<Option<ExportError>> = Mutex::new(None);
    let totals = Mutex::new((0u64, 0u64));
    let planned = std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                // Kept from file to file: large buffers made anew for each file cost a page fault
                // for every page, every time.
                let (mut chunk_buffer, mut write_buffer) = (Vec::new(), vec![0u8; WRITE_BUFFER]);
                loop {
                    let Ok(job) = rx.lock().expect("export queue lock").recv() else { return };
                    if failed.lock().expect("failure lock").is_some() {
                        continue; // drained: the export has stopped
                    }
                    let mut content = ChunkReader::with_buffer(repo, job.chunks, std::mem::take(&mut chunk_buffer));
                    let written = match job.key {
                        None => write_file(&job.dest, &job.shown, &mut content, &mut write_buffer),
                        Some(key) => {
                            let mut encrypted = EncryptingReader::new(&mut content, &key, &ZERO_IV, true);
                            write_file(&job.dest, &job.shown, &mut encrypted, &mut write_buffer)
                        }
                    };
                    chunk_buffer = content.into_buffer();
                    match written {
                        Ok(()) => {
                            let mut totals = totals.lock().expect("totals lock");
                            totals.0 += 1;
                            totals.1 += job.size;
                            progress.add(job.size);
                        }
                        Err(e) => {
                            failed.lock().expect("failure lock").get_or_insert(e);
                        }
                    }
                }
            });
        }
        let planned = plan_blobs(repo, root, catalogue, class_keys, temp, &tx, &mut report);
        drop(tx);
        planned
    });
    progress.finish();
    if let Some(e) = failed.into_inner().expect("failure lock") {
        return Err(e);
    }
    planned?;
    (report.files, report.bytes) = totals.into_inner().expect("totals lock");
    // One flush of the whole file system before the rename, instead of a sync per blob.
    let folder = File::open(temp).map_err(target(temp))?;
    if unsafe { libc::syncfs(folder.as_raw_fd()) } != 0 {
        return Err(target(temp)(io::Error::last_os_error()));
    }
    Ok(report)
}

/// Goes through the catalogue's file rows, finds each in the snapshot and queues its blob.
fn plan_blobs(
    repo: &Repository,
    root: &Tree,
    catalogue: &Connection,
    class_keys: Option<&ClassKeys>,
    temp: &Path,
    jobs: &std::sync::mpsc::SyncSender<Job>,
    report: &mut ExportReport,
) -> Result<(), ExportError> {
    let damaged = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => {
            ExportError::Scratch { error: io::Error::from_raw_os_error(libc::ENOSPC) }
        }
        _ => ExportError::Damaged { what: "copy of the backup's Manifest.db".into(), why: e.to_string() },
    };
    let mut rows = catalogue.prepare(CATALOGUE_QUERY).map_err(damaged)?;
    let mut found = rows.query([]).map_err(damaged)?;
    let mut folders = FolderCache::new(repo, root);
    // Finder and iTunes make the 256 blob folders up front, empty ones included.
    for n in 0..=255u8 {
        let subfolder = temp.join(format!("{n:02x}"));
        std::fs::DirBuilder::new().mode(0o700).create(&subfolder).map_err(target(&subfolder))?;
    }
    let mut previous_path: Option<(String, String)> = None;
    let mut written = std::collections::HashSet::new();
    while let Some(row) = found.next().map_err(damaged)? {
        // The rows the import took, read and settled as it read and settled them.
        let (shown, read) = CatalogueRow::read(row);
        let shown = String::from_utf8_lossy(&shown).into_owned();
        let row = match read {
            Ok(row) => row,
            Err(why) => {
                report.missing.push((shown, format!("not imported: {why}")));
                continue;
            }
        };
        let same_path = previous_path.as_ref().is_some_and(|(d, r)| *d == row.domain && *r == row.relative);
        previous_path = Some((row.domain.clone(), row.relative.clone()));
        if row.flags != 1 {
            continue;
        }
        if same_path {
            report.missing.push((shown, format!("not imported: {SECOND_ROW}")));
            continue;
        }
        let file_id = &row.file_id;
        if file_id.len() < 2 || !file_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            report.missing.push((shown, "no valid fileID".into()));
            continue;
        }
        if !written.insert(file_id.clone()) {
            report.missing.push((shown, "another row has the same fileID: its blob is written once".into()));
            continue;
        }
        let Some((chunks, size)) = folders.file(&row.path())? else {
            report.missing.push((shown, "not in the snapshot (the import did not take it: see its report)".into()));
            continue;
        };
        let record = row.record;
        let key = match class_keys {
            None => None,
            Some(keys) => {
                let mb = record.as_deref().and_then(|r| decode_mbfile(r).ok());
                if mb.as_ref().is_some_and(|mb| mb.size != size) {
                    // The import kept what its damaged encryption gave: encrypting that again
                    // cannot be told to give the original bytes.
                    let why = "its blob did not decrypt to its recorded size at import: written, but not as it was";
                    report.missing.push((shown.clone(), why.into()));
                }
                match mb.and_then(|mb| mb.encryption_key).map(|s| keys.unwrap_key(&s)) {
                    Some(Ok(key)) => Some(key),
                    Some(Err(e)) => {
                        report.missing.push((shown, format!("its key: {e}")));
                        continue;
                    }
                    None => {
                        report.missing.push((shown, "no EncryptionKey in its record".into()));
                        continue;
                    }
                }
            }
        };
        let subfolder = temp.join(&file_id[..2]);
        if !file_id[..2].bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()) {
            // Not one of the 256 folders made below (an uppercase fileID): made when first met.
            match std::fs::DirBuilder::new().mode(0o700).create(&subfolder) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(target(&subfolder)(e)),
                _ => {}
            }
        }
        let job = Job { chunks, size, dest: subfolder.join(file_id), key, shown };
        if jobs.send(job).is_err() {
            break; // the writers stopped; their error is reported
        }
    }
    Ok(())
}

impl FolderCache<'_> {
    /// The file at a catalogue row's path (domain, then the relative path's names).
    fn file(&mut self, path: &[&str]) -> Result<Option<(Vec<ChunkRef>, u64)>, ExportError> {
        let names: Vec<&[u8]> = path.iter().map(|name| name.as_bytes()).collect();
        Ok(self.entry(&names)?.and_then(|e| match e.node {
            Node::File { chunks, size } => Some((chunks, size)),
            _ => None,
        }))
    }
}

/// Writes a new private file from `content`. A damaged chunk is the repository's fault, said as
/// such; anything else is the target's.
const WRITE_BUFFER: usize = 1 << 17;

fn write_file(dest: &Path, what: &str, content: &mut dyn Read, buf: &mut [u8]) -> Result<(), ExportError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(dest)
        .map_err(target(dest))?;
    loop {
        let n = match content.read(buf) {
            Ok(0) => {
                // Starts writing it out now, so the one sync at the end has little left to wait for.
                // SAFETY: the descriptor is open for the call, which only schedules writeback.
                unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ExportError::Damaged { what: format!("copy of the backup's {what}"), why: e.to_string() })
            }
        };
        file.write_all(&buf[..n]).map_err(target(dest))?;
    }
}

/// A file read from its start with positioned reads (its name may be gone).
struct ReadAt<'a> {
    file: &'a File,
    at: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}
