//! `export SNAPSHOT --format ios-backup OUT`: gives a snapshot of an iPhone backup back as the
//! backup folder it was (Info.plist, Manifest.plist, Status.plist, Manifest.db and the
//! `<xx>/<fileID>` blobs), byte for byte, so that Finder or `idevicebackup2 restore` can put it
//! on a phone. An encrypted backup is encrypted again with its own keys (its password unlocks
//! them), which gives the same ciphertext.
//!
//! Everything is written into a new private folder next to OUT, made durable, and only then
//! renamed to OUT: an interrupted export never leaves a folder that looks like a whole backup.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};

use crate::ios_crypto::{self, ClassKeys, EncryptingReader, UnlockError};
use crate::progress::Progress;
use crate::repo::snapshot::SnapshotInfo;
use crate::repo::{BlobId, RepoError, Repository};
use crate::source::{decode_mbfile, path_problem, SourceError, OWN_FILES, OWN_FILES_DIR};
use crate::tree::{load_tree, ChunkReader, ChunkRef, Node, Tree};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "{0} did not come from an iPhone backup, so it cannot be given back as one (`restore` gives back its files)"
    )]
    NotIosBackup(String),
    #[error("{0} is there and is not an empty folder: name a new folder to export into")]
    OutExists(PathBuf),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Password(#[from] SourceError),
    #[error("the snapshot's copy of the backup's {what} is damaged: {why}")]
    Damaged { what: String, why: String },
    #[error("{}: {source}", path.display())]
    Target { path: PathBuf, source: io::Error },
}

impl ExportError {
    pub fn target_is_full(&self) -> bool {
        matches!(self, ExportError::Target { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}

#[derive(Default)]
pub struct ExportReport {
    pub files: u64,
    pub bytes: u64,
    /// Catalogue rows whose file the snapshot does not hold (never imported: missing from the
    /// backup, or refused), with why: the exported backup lacks their blobs as the original did.
    pub missing: Vec<(String, String)>,
    /// The folder written.
    pub out: PathBuf,
}

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

    let temp = prepare_out(out)?;
    let written = write_backup(repo, &root, &own, &manifest_db, keys.as_ref(), &temp);
    let report = match written {
        Ok(report) => report,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&temp);
            return Err(e);
        }
    };
    // Renaming over an empty folder replaces it; over anything else fails, and nothing is lost.
    std::fs::rename(&temp, out).map_err(|e| {
        let _ = std::fs::remove_dir_all(&temp);
        target(out)(e)
    })?;
    let parent = parent_of(out);
    crate::repo::fsync_dir(&parent).map_err(target(&parent))?;
    Ok(ExportReport { out: out.to_path_buf(), ..report })
}

fn target(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Target { path: path.to_path_buf(), source }
}

fn parent_of(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Checks that OUT is new (or an empty folder) and makes the private folder written first.
fn prepare_out(out: &Path) -> Result<PathBuf, ExportError> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(target(out)(e)),
        Ok(meta) if meta.is_dir() && std::fs::read_dir(out).map_err(target(out))?.next().is_none() => {}
        Ok(_) => return Err(ExportError::OutExists(out.to_path_buf())),
    }
    let parent = parent_of(out);
    std::fs::create_dir_all(&parent).map_err(target(&parent))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "backup".into());
    let temp = parent.join(format!(".{name}.phonebak-export-{:016x}", rand::random::<u64>()));
    std::fs::DirBuilder::new().mode(0o700).create(&temp).map_err(target(&temp))?;
    Ok(temp)
}

/// Reads the snapshot's Manifest.plist; for an encrypted backup, unlocks its keys.
fn unlock(
    repo: &Repository,
    chunks: Vec<ChunkRef>,
    size: u64,
    password: impl FnOnce() -> Result<Vec<u8>, SourceError>,
) -> Result<Option<ios_crypto::BackupKeys>, ExportError> {
    let damaged = |why: String| ExportError::Damaged { what: "Manifest.plist".into(), why };
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
            write_file(&dest, name, ChunkReader::new(repo, chunks.clone()))?;
        }
    }
    let plain_db = ChunkReader::new(repo, manifest_db.to_vec());
    let dest_db = temp.join("Manifest.db");
    // The catalogue is read by SQLite from a file: for a plain backup the one just written,
    // for an encrypted one a decrypted copy whose name is gone once SQLite has it open.
    let catalogue = match keys {
        None => {
            write_file(&dest_db, "Manifest.db", plain_db)?;
            Connection::open_with_flags(&dest_db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        }
        Some(keys) => {
            let damaged = |e: io::Error| ExportError::Damaged { what: "Manifest.db".into(), why: e.to_string() };
            let (scratch, path) = ios_crypto::scratch_copy(plain_db).map_err(damaged)?;
            let opened = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY);
            let _ = std::fs::remove_file(&path);
            let plain = ReadAt { file: scratch, at: 0 };
            write_file(&dest_db, "Manifest.db", EncryptingReader::new(plain, &keys.manifest_key, false))?;
            opened
        }
    }
    .map_err(|e| ExportError::Damaged { what: "Manifest.db".into(), why: e.to_string() })?;

    let class_keys = keys.map(|k| &k.class_keys);
    let progress = Progress::bytes("export", None);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let (tx, rx) = sync_channel::<Job>(workers * 16);
    let rx = Mutex::new(rx);
    let failed: Mutex<Option<ExportError>> = Mutex::new(None);
    let totals = Mutex::new((0u64, 0u64));
    let planned = std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Ok(job) = rx.lock().expect("export queue lock").recv() else { return };
                if failed.lock().expect("failure lock").is_some() {
                    continue; // drained: the export has stopped
                }
                let content = ChunkReader::new(repo, job.chunks);
                let written = match job.key {
                    None => write_file(&job.dest, &job.shown, content),
                    Some(key) => write_file(&job.dest, &job.shown, EncryptingReader::new(content, &key, true)),
                };
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
            });
        }
        let planned = plan_blobs(repo, root, &catalogue, class_keys, temp, &tx, &mut report);
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
    let damaged = |e: rusqlite::Error| ExportError::Damaged { what: "Manifest.db".into(), why: e.to_string() };
    let mut rows = catalogue
        .prepare("SELECT fileID, domain, relativePath, file FROM Files WHERE flags = 1 ORDER BY domain, relativePath")
        .map_err(damaged)?;
    let mut found = rows.query([]).map_err(damaged)?;
    let mut folders = FolderCache::new(repo, root);
    // Finder and iTunes make the 256 blob folders up front, empty ones included.
    for n in 0..=255u8 {
        let subfolder = temp.join(format!("{n:02x}"));
        std::fs::DirBuilder::new().mode(0o700).create(&subfolder).map_err(target(&subfolder))?;
    }
    while let Some(row) = found.next().map_err(damaged)? {
        let text = |at: usize| row.get::<_, Option<String>>(at).ok().flatten().unwrap_or_default();
        let (file_id, domain, relative) = (text(0), text(1), text(2));
        let record: Option<Vec<u8>> = row.get(3).ok().flatten();
        let shown = format!("{domain}-{relative}");
        // The same names the import took: anything else was never imported.
        if let Some(why) = path_problem(&domain, &relative) {
            report.missing.push((shown, format!("not imported: {why}")));
            continue;
        }
        if file_id.len() < 2 || !file_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            report.missing.push((shown, "no valid fileID".into()));
            continue;
        }
        let path: Vec<&str> =
            std::iter::once(domain.as_str()).chain(relative.split('/').filter(|c| !c.is_empty())).collect();
        let Some((chunks, size)) = folders.file(&path)? else {
            report.missing.push((shown, "not in the snapshot (its blob was missing or unreadable at import)".into()));
            continue;
        };
        let key = match class_keys {
            None => None,
            Some(keys) => {
                let stored = record.as_deref().and_then(|r| decode_mbfile(r).ok()).and_then(|mb| mb.encryption_key);
                match stored.map(|s| keys.unwrap_key(&s)) {
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
        let job = Job { chunks, size, dest: subfolder.join(&file_id), key, shown };
        if jobs.send(job).is_err() {
            break; // the writers stopped; their error is reported
        }
    }
    Ok(())
}

/// Finds files by path, keeping the last folders loaded (the catalogue is read in path order,
/// so neighbours share them).
struct FolderCache<'a> {
    repo: &'a Repository,
    root: Arc<Tree>,
    folders: lru::LruCache<BlobId, Arc<Tree>>,
}

impl<'a> FolderCache<'a> {
    fn new(repo: &'a Repository, root: &Tree) -> FolderCache<'a> {
        let folders = lru::LruCache::new(std::num::NonZeroUsize::new(256).expect("not zero"));
        FolderCache { repo, root: Arc::new(root.clone()), folders }
    }

    fn file(&mut self, path: &[&str]) -> Result<Option<(Vec<ChunkRef>, u64)>, ExportError> {
        let Some((name, folders)) = path.split_last() else { return Ok(None) };
        let mut current = self.root.clone();
        for folder in folders {
            let Some(Node::Dir { tree }) = current.find(folder.as_bytes()).map(|e| &e.node) else { return Ok(None) };
            let id = *tree;
            current = match self.folders.get(&id) {
                Some(tree) => tree.clone(),
                None => {
                    let tree = Arc::new(load_tree(self.repo, &id)?);
                    self.folders.put(id, tree.clone());
                    tree
                }
            };
        }
        Ok(current.find(name.as_bytes()).and_then(|e| match &e.node {
            Node::File { chunks, size } => Some((chunks.clone(), *size)),
            _ => None,
        }))
    }
}

/// Writes a new private file from `content`. A damaged chunk is the repository's fault, said as
/// such; anything else is the target's.
fn write_file(dest: &Path, what: &str, mut content: impl Read) -> Result<(), ExportError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(dest)
        .map_err(target(dest))?;
    let mut buf = vec![0u8; 1 << 17];
    loop {
        let n = match content.read(&mut buf) {
            Ok(0) => {
                // Starts writing it out now, so the one sync at the end has little left to wait for.
                // SAFETY: the descriptor is open for the call, which only schedules writeback.
                unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ExportError::Damaged { what: what.to_string(), why: e.to_string() }),
        };
        file.write_all(&buf[..n]).map_err(target(dest))?;
    }
}

/// A file read from its start with positioned reads (its name may be gone).
struct ReadAt {
    file: File,
    at: u64,
}

impl Read for ReadAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}
