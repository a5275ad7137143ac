//! `export SNAPSHOT[:PATH] --format tar|ab OUT`: a snapshot (or a folder of it) as a tar
//! stream, or as an Android backup (.ab: version 5, zlib, optionally AES-256) that `adb
//! restore` takes.
//!
//! A snapshot imported from an archive kept the archive's layout (src/extras.rs): its entries
//! are given back in their order with their own header bytes, each file's data from the
//! snapshot, so the export holds the same entries byte for byte. Other snapshots get ustar
//! headers (PAX where needed); in an .ab each app's `_manifest` comes first and its data in the
//! order Android writes it.
//!
//! OUT is written as a private temporary file beside it, made durable, then given its name
//! (never replacing a file): an interrupted export leaves no half-written archive.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use flate2::write::ZlibEncoder;

use super::{is_inside, target, ExportError, ExportReport, FolderCache};
use crate::archive::ab;
use crate::archive::tar::BLOCK;
use crate::archive::tar_writer::{self, HeaderKind};
use crate::cbc_stream::EncryptingWriter;
use crate::extras::{self, LayoutReader, LayoutRecord, OmittedReader};
use crate::progress::Progress;
use crate::repo::lock::{LockKind, RepoLock};
use crate::repo::snapshot::SnapshotInfo;
use crate::repo::Repository;
use crate::tree::{load_tree, ChunkReader, Entry, Node};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    Tar,
    Ab,
}

/// Where the archive goes.
#[derive(Clone, Debug)]
pub enum ArchiveOut {
    Stdout,
    File(PathBuf),
}

impl ArchiveOut {
    fn shown(&self) -> PathBuf {
        match self {
            ArchiveOut::Stdout => PathBuf::from("-"),
            ArchiveOut::File(path) => path.clone(),
        }
    }
}

/// Android writes an app's data in this order, after its manifest (and widget metadata); its
/// restore expects the manifest first.
const ANDROID_ORDER: &[&str] =
    &["_manifest", "_meta", "a", "obb", "r", "f", "db", "sp", "d_r", "d_f", "d_db", "d_sp", "ef", "k"];
/// The package Android files shared storage (`shared/...`) under.
const SHARED_STORAGE_PACKAGE: &[u8] = b"com.android.sharedstoragebackup";

const COPY_BUFFER: usize = 1 << 17;

/// Exports `entry`, found at `path` in the snapshot `info`, to `out`. `password` encrypts an .ab.
pub fn archive(
    repo: &Repository,
    info: &SnapshotInfo,
    path: &Path,
    entry: &Entry,
    format: ArchiveFormat,
    password: Option<Vec<u8>>,
    out: &ArchiveOut,
) -> Result<ExportReport, ExportError> {
    // Held while the archive is read: a prune (which may delete what a forgotten snapshot
    // needed) refuses to start meanwhile, instead of making it fail halfway as if the
    // repository were damaged. A repository that cannot take a lock (read-only) is read without.
    let _lock = match RepoLock::acquire(repo, LockKind::Shared, "export") {
        Ok(lock) => Some(lock),
        Err(locked @ crate::repo::RepoError::Locked(_)) => return Err(locked.into()),
        Err(_) => None,
    };
    let shown = out.shown();
    let unusable = |why: &str| ExportError::OutUnusable { path: shown.clone(), why: why.into() };
    let destination = match out {
        ArchiveOut::Stdout if io::stdout().is_terminal() => {
            return Err(unusable("standard output is a terminal: redirect it to a file or a pipe"))
        }
        ArchiveOut::Stdout => None,
        ArchiveOut::File(file) => {
            if repo.local_folder().is_some_and(|root| is_inside(file, root)) {
                return Err(unusable("inside the repository folder: name a file outside it"));
            }
            match std::fs::symlink_metadata(file) {
                Ok(meta) if meta.is_dir() => return Err(unusable("a folder: name a new file to export into")),
                Ok(_) => return Err(unusable("already exists: phonebak never replaces a file; name a new one")),
                Err(_) => {}
            }
            Some(TempFile::create(file)?)
        }
    };
    // `DCIM/`, `./DCIM` and `DCIM` are one folder.
    let base = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(name) => Some(name.as_bytes()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(&b'/');
    let whole = base.is_empty().then_some(info.snapshot.stats.bytes);
    let progress = Progress::bytes("export", whole);
    let written = (|| {
        let raw: Box<dyn Write> = match &destination {
            Some(temp) => Box::new(temp.file.try_clone().map_err(target(&temp.shown))?),
            None => Box::new(io::stdout().lock()),
        };
        let out_path = destination.as_ref().map_or_else(|| PathBuf::from("standard output"), |t| t.shown.clone());
        let mut sink = Sink::new(BufWriter::with_capacity(COPY_BUFFER, raw), format, password.as_deref(), &out_path)?;
        let mut writer = Writer { repo, sink: &mut sink, progress: &progress, report: ExportReport::default() };
        let omitted = omitted_paths(repo, info, &base)?;
        match layout_reader(repo, info)? {
            Some(layout) => {
                let sent_twice = sent_twice(layout, &base)?;
                let layout = layout_reader(repo, info)?.ok_or_else(|| layout_damaged("gone while it was read"))?;
                writer.write_from_layout(info, &base, layout, &omitted, sent_twice)?
            }
            None => writer.write_generated(&base, entry, format)?,
        }
        writer.report.omitted = omitted.len() as u64;
        let report = std::mem::take(&mut writer.report);
        sink.finish()?;
        Ok(report)
    })();
    progress.finish();
    let mut report = match written {
        Ok(report) => report,
        Err(e) => {
            if let Some(temp) = destination {
                temp.discard();
            }
            return Err(e);
        }
    };
    if let (Some(temp), ArchiveOut::File(file)) = (destination, out) {
        temp.keep_as(file)?;
    }
    report.out = shown;
    Ok(report)
}

fn layout_damaged(e: impl ToString) -> ExportError {
    ExportError::Damaged { what: "archive layout".into(), why: e.to_string() }
}

/// The layout of the archive the snapshot was imported from, if it was.
fn layout_reader<'r>(
    repo: &'r Repository,
    info: &SnapshotInfo,
) -> Result<Option<LayoutReader<ChunkReader<'r>>>, ExportError> {
    match extras::open(repo, info.snapshot.extras.as_ref(), extras::LAYOUT) {
        Ok(layout) => Ok(layout.map(LayoutReader::new)),
        Err(e) if e.is_corruption() => Err(layout_damaged(e)),
        Err(e) => Err(e.into()),
    }
}

/// The file a hard link's header names, if the header is a hard link's.
fn hard_link_target(header: &[u8]) -> Option<Vec<u8>> {
    let main = header.len().checked_sub(BLOCK).map(|at| &header[at..])?;
    if main[156] != b'1' {
        return None;
    }
    let mut reader = crate::archive::tar::TarReader::new(header.chain(&tar_writer::END[..]));
    reader.next_entry().ok().flatten().map(|entry| entry.link)
}

/// A path's hash: what is counted of each file path of a layout (16 bytes, not the path).
fn path_key(path: &[u8]) -> u128 {
    u128::from_le_bytes(blake3::hash(path).as_bytes()[..16].try_into().expect("16 bytes"))
}

/// Whether a record's entry is a folder (a folder sent twice is one folder: both headers are
/// given back).
fn is_folder(header: &[u8]) -> bool {
    matches!(crate::archive::tar::entry_type(header), Some(b'5'))
}

/// How many times each path below `base` that the archive held more than once (not as a
/// folder) came in it: the snapshot kept the last one only.
fn sent_twice(mut layout: LayoutReader<ChunkReader<'_>>, base: &[u8]) -> Result<HashMap<u128, u32>, ExportError> {
    let mut counts: HashMap<u128, u32> = HashMap::new();
    while let Some(record) = layout.next_record().map_err(layout_damaged)? {
        if let LayoutRecord::Entry { header, path, .. } = record {
            if !path.is_empty() && !is_folder(&header) && is_under(&path, base) {
                *counts.entry(path_key(&path)).or_default() += 1;
            }
        }
    }
    counts.retain(|_, n| *n > 1);
    Ok(counts)
}

/// The paths (below `base`) of the files the snapshot recorded without content.
fn omitted_paths(repo: &Repository, info: &SnapshotInfo, base: &[u8]) -> Result<HashSet<Vec<u8>>, ExportError> {
    let damaged =
        |e: io::Error| ExportError::Damaged { what: "list of files kept without content".into(), why: e.to_string() };
    let Some(list) = extras::open(repo, info.snapshot.extras.as_ref(), extras::OMITTED)? else {
        return Ok(HashSet::new());
    };
    let mut reader = OmittedReader::new(list);
    let mut paths = HashSet::new();
    while let Some(file) = reader.next_file().map_err(damaged)? {
        if is_under(&file.path, base) {
            paths.insert(file.path);
        }
    }
    Ok(paths)
}

/// Is `path` the folder `base` (empty: the top) or below it?
fn is_under(path: &[u8], base: &[u8]) -> bool {
    base.is_empty() || path == base || (path.starts_with(base) && path.get(base.len()) == Some(&b'/'))
}

fn names(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&b| b == b'/').filter(|n| !n.is_empty()).collect()
}

struct Writer<'a, 's> {
    repo: &'a Repository,
    sink: &'s mut Sink,
    progress: &'a Progress,
    report: ExportReport,
}

impl Writer<'_, '_> {
    fn write_from_layout(
        &mut self,
        info: &SnapshotInfo,
        base: &[u8],
        mut layout: LayoutReader<ChunkReader<'_>>,
        omitted: &HashSet<Vec<u8>>,
        mut sent_twice: HashMap<u128, u32>,
    ) -> Result<(), ExportError> {
        let damaged = layout_damaged;
        let root = load_tree(self.repo, &info.snapshot.root)?;
        let mut folders = FolderCache::new(self.repo, &root);
        let mut trailer_len = tar_writer::END.len() as u64;
        // The files written so far, by path: a hard link to one of them stays a link.
        let mut written: HashSet<u128> = HashSet::new();
        while let Some(record) = layout.next_record().map_err(damaged)? {
            let (header, path, data_len) = match record {
                LayoutRecord::Entry { header, path, data_len } => (header, path, data_len),
                LayoutRecord::End { trailer_len: len } => {
                    trailer_len = len;
                    break;
                }
            };
            let key = path_key(&path);
            let replaced = match sent_twice.get_mut(&key).filter(|_| !is_folder(&header)) {
                Some(left) => {
                    *left -= 1;
                    *left > 0
                }
                None => false,
            };
            if !is_under(&path, base) || omitted.contains(&path) || replaced {
                if replaced && is_under(&path, base) {
                    let why = "the archive has it again further on, and the snapshot kept only that one";
                    self.report.missing.push((String::from_utf8_lossy(&path).into_owned(), why.into()));
                }
                // Its global headers hold for the entries after it: they go without it.
                self.sink.write(crate::archive::tar::leading_global_headers(&header))?;
                continue;
            }
            let shown = String::from_utf8_lossy(&path).into_owned();
            if let Some(target) = hard_link_target(&header) {
                let target_key = crate::tree_builder::split_path(&target).ok().map(|t| path_key(&t.join(&b'/')));
                if !target_key.is_some_and(|key| written.contains(&key)) {
                    // Its target is not in this export (another folder, or left out): the link
                    // is given as the file it is, with the content the snapshot holds for it.
                    self.sink.write(crate::archive::tar::leading_global_headers(&header))?;
                    match folders.entry(&names(&path))? {
                        Some(Entry { meta, node: Node::File { size, chunks }, .. }) => {
                            self.sink.write(&tar_writer::header(&path, HeaderKind::File, &meta, size))?;
                            self.copy(&shown, ChunkReader::new(self.repo, chunks), size)?;
                            written.insert(key);
                        }
                        _ => {
                            let target = String::from_utf8_lossy(&target);
                            let why = format!(
                                "a hard link to {target}, which is not in the export, and not a file in the snapshot"
                            );
                            self.report.missing.push((shown, why));
                        }
                    }
                    continue;
                }
            }
            if data_len == 0 {
                self.sink.write(&header)?;
                if matches!(crate::archive::tar::entry_type(&header), Some(b'0' | 0 | b'7' | b'1')) {
                    written.insert(key);
                }
                continue;
            }
            match folders.entry(&names(&path))? {
                Some(Entry { node: Node::File { size, chunks }, .. }) if size == data_len => {
                    self.sink.write(&header)?;
                    self.copy(&shown, ChunkReader::new(self.repo, chunks), size)?;
                    written.insert(key);
                }
                Some(Entry { node: Node::File { size, .. }, .. }) => {
                    self.sink.write(crate::archive::tar::leading_global_headers(&header))?;
                    let why = format!("the snapshot holds {size} bytes for it, the archive's entry {data_len}");
                    self.report.missing.push((shown, why));
                }
                _ => {
                    self.sink.write(crate::archive::tar::leading_global_headers(&header))?;
                    let why = "not a file in the snapshot: a later entry of the same name took its place, or a repair took it out";
                    self.report.missing.push((shown, why.into()));
                }
            }
        }
        self.sink.write_zeros(trailer_len)
    }

    fn write_generated(&mut self, base: &[u8], entry: &Entry, format: ArchiveFormat) -> Result<(), ExportError> {
        let mut path = base.to_vec();
        self.emit(&mut path, entry, format, None)?;
        self.sink.write(&tar_writer::END)
    }

    /// Writes `entry` (at `path`; the top folder itself has no entry) and what is below it.
    /// `shared` is the snapshot's `shared` folder, written after Android's shared storage
    /// package when the whole snapshot goes into an .ab.
    fn emit(
        &mut self,
        path: &mut Vec<u8>,
        entry: &Entry,
        format: ArchiveFormat,
        shared: Option<&Entry>,
    ) -> Result<(), ExportError> {
        let shown = || String::from_utf8_lossy(path).into_owned();
        match &entry.node {
            Node::File { size, chunks } => {
                self.sink.write(&tar_writer::header(path, HeaderKind::File, &entry.meta, *size))?;
                let chunks = chunks.clone();
                self.copy(&shown(), ChunkReader::new(self.repo, chunks), *size)?;
                return Ok(());
            }
            Node::Symlink { target } => {
                return self.sink.write(&tar_writer::header(path, HeaderKind::Symlink(target), &entry.meta, 0));
            }
            Node::Dir { tree } => {
                // In an .ab an app's manifest is its first entry: no folder entries before it.
                let app_folder = path.as_slice() == b"apps" || (names(path).len() == 2 && path.starts_with(b"apps/"));
                let no_entry = path.is_empty() || (format == ArchiveFormat::Ab && app_folder);
                if !no_entry {
                    self.sink.write(&tar_writer::header(path, HeaderKind::Dir, &entry.meta, 0))?;
                }
                let mut children = load_tree(self.repo, tree)?.entries;
                let top = path.is_empty();
                let mut shared_here = None;
                if format == ArchiveFormat::Ab {
                    if names(path).len() == 2 && path.starts_with(b"apps/") {
                        children.sort_by_key(|child| {
                            let rank = ANDROID_ORDER.iter().position(|n| n.as_bytes() == child.name);
                            (rank.unwrap_or(ANDROID_ORDER.len()), child.name.clone())
                        });
                    }
                    // Shared storage belongs to its package: it follows that package's manifest.
                    let has_package = children.iter().any(|c| c.name == b"apps" && has_shared_package(self.repo, c));
                    if top && has_package {
                        if let Some(at) = children.iter().position(|c| c.name == b"shared") {
                            shared_here = Some(children.remove(at));
                        }
                    }
                }
                let after_package = if path.as_slice() == b"apps" { shared } else { None };
                for child in &children {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push(b'/');
                    }
                    path.extend_from_slice(&child.name);
                    self.emit(path, child, format, if top { shared_here.as_ref() } else { shared })?;
                    path.truncate(len);
                    if let Some(shared) = after_package.filter(|_| child.name == SHARED_STORAGE_PACKAGE) {
                        self.emit(&mut b"shared".to_vec(), shared, format, None)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Copies a file's `size` bytes from the repository, then its padding.
    fn copy(&mut self, shown: &str, mut content: ChunkReader<'_>, size: u64) -> Result<(), ExportError> {
        let mut buf = vec![0u8; COPY_BUFFER];
        let mut copied = 0u64;
        loop {
            let n = match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ExportError::Damaged { what: format!("file {shown}"), why: e.to_string() }),
            };
            self.sink.write(&buf[..n])?;
            copied += n as u64;
            self.progress.add(n as u64);
        }
        if copied != size {
            let why = format!("{copied} bytes where its listing says {size}");
            return Err(ExportError::Damaged { what: format!("file {shown}"), why });
        }
        self.report.files += 1;
        self.report.bytes += size;
        self.sink.write_zeros(tar_writer::padding(size) as u64)
    }
}

/// Does the `apps` folder hold Android's shared storage package (after which `shared` went)?
fn has_shared_package(repo: &Repository, apps: &Entry) -> bool {
    match &apps.node {
        Node::Dir { tree } => load_tree(repo, tree).is_ok_and(|t| t.find(SHARED_STORAGE_PACKAGE).is_some()),
        _ => false,
    }
}

/// The layers the tar stream goes through: none (tar), zlib (.ab), zlib then AES (.ab with a
/// password).
enum Layers {
    Tar(Out),
    Zlib(ZlibEncoder<Out>),
    ZlibAes(Box<ZlibEncoder<EncryptingWriter<Out>>>),
}

/// The file or standard output, buffered.
type Out = BufWriter<Box<dyn Write>>;

struct Sink {
    layers: Layers,
    /// Where the bytes go, for messages.
    path: PathBuf,
}

impl Sink {
    fn new(mut out: Out, format: ArchiveFormat, password: Option<&[u8]>, path: &Path) -> Result<Sink, ExportError> {
        let layers = match format {
            ArchiveFormat::Tar => Layers::Tar(out),
            ArchiveFormat::Ab => {
                let (header, key) = ab::new_header(password);
                out.write_all(&header).map_err(target(path))?;
                let level = flate2::Compression::fast();
                match key {
                    None => Layers::Zlib(ZlibEncoder::new(out, level)),
                    Some(key) => Layers::ZlibAes(Box::new(ZlibEncoder::new(
                        EncryptingWriter::new(out, &key.key, &key.iv),
                        level,
                    ))),
                }
            }
        };
        Ok(Sink { layers, path: path.to_path_buf() })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        let written = match &mut self.layers {
            Layers::Tar(out) => out.write_all(bytes),
            Layers::Zlib(out) => out.write_all(bytes),
            Layers::ZlibAes(out) => out.write_all(bytes),
        };
        written.map_err(target(&self.path))
    }

    fn write_zeros(&mut self, mut count: u64) -> Result<(), ExportError> {
        let zeros = [0u8; BLOCK * 8];
        while count > 0 {
            let n = count.min(zeros.len() as u64) as usize;
            self.write(&zeros[..n])?;
            count -= n as u64;
        }
        Ok(())
    }

    fn finish(self) -> Result<(), ExportError> {
        let path = self.path;
        let finished = match self.layers {
            Layers::Tar(out) => Ok(out),
            Layers::Zlib(out) => out.finish(),
            Layers::ZlibAes(out) => (*out).finish().and_then(EncryptingWriter::finish),
        };
        finished.and_then(|mut out| out.flush()).map_err(target(&path))
    }
}

/// The private file (mode 0600) an archive is written into before it takes its name. Where the
/// file system can, it has no name at all until it is complete (O_TMPFILE), so even `kill -9`
/// leaves nothing; elsewhere it is `.<OUT>.phonebak-<random>`, locked while written, and an
/// export to the same OUT removes those whose writer is gone.
struct TempFile {
    file: File,
    /// The temporary name, when the file has one.
    path: Option<PathBuf>,
    /// Where it is written, for messages: OUT's folder or the temporary name.
    shown: PathBuf,
}

const TEMP_MARK: &str = ".phonebak-";

/// In a build with test hooks, `PHONEBAK_NAMED_TEMP=1` makes exports use the named temporary
/// file of file systems without O_TMPFILE, for the tests to reach it.
#[cfg(feature = "test-hooks")]
fn named_only() -> bool {
    std::env::var_os("PHONEBAK_NAMED_TEMP").is_some()
}

#[cfg(not(feature = "test-hooks"))]
fn named_only() -> bool {
    false
}

fn folder_of(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl TempFile {
    fn create(out: &Path) -> Result<TempFile, ExportError> {
        let name = out
            .file_name()
            .ok_or_else(|| ExportError::OutUnusable { path: out.to_path_buf(), why: "not a file name".into() })?;
        let folder = folder_of(out);
        let nameless = match named_only() {
            true => Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
            false => OpenOptions::new().write(true).custom_flags(libc::O_TMPFILE).mode(0o600).open(&folder),
        };
        match nameless {
            Ok(file) => return Ok(TempFile { file, path: None, shown: out.to_path_buf() }),
            // Not supported here (vfat, exfat, some network file systems): a named one instead.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {}
            Err(e) => return Err(target(&folder)(e)),
        }
        let mut prefix = std::ffi::OsString::from(".");
        prefix.push(name);
        prefix.push(TEMP_MARK);
        remove_abandoned(&folder, prefix.as_bytes());
        let mut temp_name = prefix;
        temp_name.push(format!("{:016x}", rand::random::<u64>()));
        let path = out.with_file_name(temp_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&path)
            .map_err(target(&path))?;
        // SAFETY: the descriptor is open for the call; flock only takes an advisory lock.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok(TempFile { file, shown: path.clone(), path: Some(path) })
    }

    fn discard(self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Makes the archive durable and gives it its name, never replacing a file that took the
    /// name meanwhile.
    fn keep_as(self, out: &Path) -> Result<(), ExportError> {
        let kept = (|| {
            self.file.sync_all().map_err(target(&self.shown))?;
            crate::repo::crash_point("sync", &self.shown);
            match &self.path {
                Some(path) => rename_new(path, out)?,
                None => link_nameless(&self.file, out)?,
            }
            let folder = folder_of(out);
            crate::repo::fsync_dir(&folder).map_err(target(&folder))
        })();
        if kept.is_err() {
            self.discard();
        }
        kept
    }
}

/// Removes the temporary files (`prefix` and a random part) that exports to the same file left
/// when they were killed: those no running export holds locked.
fn remove_abandoned(folder: &Path, prefix: &[u8]) {
    let Ok(entries) = std::fs::read_dir(folder) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.as_bytes().starts_with(prefix) {
            continue;
        }
        let path = entry.path();
        // Only regular files (never waits on a FIFO someone put there), never through a link.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
        let Ok(file) = OpenOptions::new().read(true).custom_flags(flags).open(&path) else { continue };
        // SAFETY: the descriptor is open for the call; flock only takes an advisory lock.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn appeared(out: &Path) -> ExportError {
    ExportError::OutUnusable {
        path: out.to_path_buf(),
        why: "appeared while the archive was written: phonebak never replaces a file; name a new one".into(),
    }
}

fn c_path(path: &Path) -> Result<std::ffi::CString, ExportError> {
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| target(path)(io::Error::from(io::ErrorKind::InvalidInput)))
}

/// Gives a nameless file its name (linkat through /proc, which fails if the name exists).
fn link_nameless(file: &File, out: &Path) -> Result<(), ExportError> {
    let proc_path = c_path(Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())))?;
    let to = c_path(out)?;
    // SAFETY: both strings are NUL-terminated and live for the call.
    let done = unsafe {
        libc::linkat(libc::AT_FDCWD, proc_path.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW)
    };
    if done == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EEXIST) => Err(appeared(out)),
        _ => Err(target(out)(error)),
    }
}

/// Renames `from` to `to` unless `to` exists (where the file system cannot say, a check just
/// before the rename).
fn rename_new(from: &Path, to: &Path) -> Result<(), ExportError> {
    let (c_from, c_to) = (c_path(from)?, c_path(to)?);
    // SAFETY: both strings are NUL-terminated and live for the call.
    let done = unsafe {
        libc::renameat2(libc::AT_FDCWD, c_from.as_ptr(), libc::AT_FDCWD, c_to.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if done == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EEXIST) => Err(appeared(to)),
        Some(libc::EINVAL | libc::ENOSYS) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(appeared(to));
            }
            std::fs::rename(from, to).map_err(target(to))
        }
        _ => Err(target(to)(error)),
    }
}
