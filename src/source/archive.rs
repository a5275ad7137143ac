//! `tar:FILE` and `ab:FILE` (`-`: standard input): an archive read once, in order, its entries
//! sent to the engine as they come. An `.ab` is opened (header, password, decryption,
//! decompression) before the backup starts, so a wrong password costs nothing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Read};
use std::path::Path;
use std::sync::Mutex;

use super::{
    ArchiveHeader, ArchivePassword, Content, EntrySink, Source, SourceError, SourceFile, SourceKind, StreamEntry,
};
use crate::archive::ab::{self, AbError, AbHeader, OpenError};
use crate::archive::tar::{TarError, TarHeader, TarKind, TarReader};
use crate::tree::Meta;

/// Archives are read in big pieces: a pipe from `adb` or a file on a USB disk.
const READ_BUFFER: usize = 1 << 20;
/// Tar tools pad an archive to their record size (10 KiB for GNU tar); what follows beyond this
/// is not read.
const MAX_TRAILER: u64 = 1 << 20;

pub struct ArchiveSource {
    /// How it was named: `tar:/abs/path` or `ab:-`.
    spec: String,
    ab: Option<AbHeader>,
    /// The tar stream, read by the one `send_entries`.
    stream: Mutex<Option<Box<dyn Read + Send>>>,
    /// The archive file's length, for a progress bar (a plain tar only).
    length: Option<u64>,
}

/// An archive opened for reading: its bytes, how it is named, and its length if a file.
type Input = (Box<dyn Read + Send>, String, Option<u64>);

fn open_input(path: &str, scheme: &str) -> Result<Input, SourceError> {
    let invalid = |why: String| SourceError::Invalid { spec: format!("{scheme}:{path}"), why };
    if path.is_empty() {
        return Err(invalid(format!("say which archive: {scheme}:FILE, or {scheme}:- for standard input")));
    }
    if path == "-" {
        if io::stdin().is_terminal() {
            return Err(invalid("standard input is a terminal: pipe the archive in".into()));
        }
        return Ok((Box::new(io::stdin()), format!("{scheme}:-"), None));
    }
    let file = File::open(path).map_err(|e| invalid(e.to_string()))?;
    let meta = file.metadata().map_err(|e| invalid(e.to_string()))?;
    if meta.is_dir() {
        return Err(invalid("a folder, not an archive".into()));
    }
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| Path::new(path).to_path_buf());
    let length = meta.is_file().then_some(meta.len());
    Ok((Box::new(file), format!("{scheme}:{}", absolute.display()), length))
}

impl ArchiveSource {
    pub fn tar(path: &str) -> Result<ArchiveSource, SourceError> {
        let (input, spec, length) = open_input(path, "tar")?;
        Ok(ArchiveSource { spec, ab: None, stream: Mutex::new(Some(input)), length })
    }

    pub fn ab(path: &str, password: ArchivePassword) -> Result<ArchiveSource, SourceError> {
        let (input, spec, _) = open_input(path, "ab")?;
        let (header, stream) =
            ab::open(BufReader::with_capacity(READ_BUFFER, input), password).map_err(|e| match e {
                OpenError::Password(e) => e,
                OpenError::Ab(AbError::WrongPassword) => {
                    SourceError::ArchivePassword(format!("{spec}: the password does not open this Android backup"))
                }
                OpenError::Ab(e) => SourceError::Damaged { source_name: spec.clone(), why: e.to_string() },
            })?;
        Ok(ArchiveSource { spec, ab: Some(header), stream: Mutex::new(Some(stream)), length: None })
    }

    fn damaged(&self, why: impl ToString) -> SourceError {
        SourceError::Damaged { source_name: self.spec.clone(), why: why.to_string() }
    }
}

fn meta_of(header: &TarHeader) -> Meta {
    Meta {
        mode: header.mode,
        uid: u32::try_from(header.uid).unwrap_or(u32::MAX),
        gid: u32::try_from(header.gid).unwrap_or(u32::MAX),
        mtime_sec: header.mtime_sec,
        mtime_nsec: header.mtime_nsec,
    }
}

impl Source for ArchiveSource {
    fn describe(&self) -> String {
        self.spec.clone()
    }

    fn trusts_size_and_mtime(&self) -> bool {
        false
    }

    fn expected_bytes(&self, _excluded: &(dyn Fn(&[u8]) -> bool + Sync)) -> Option<u64> {
        self.length
    }

    fn facts(&self) -> BTreeMap<String, String> {
        let mut facts = BTreeMap::new();
        match &self.ab {
            None => {
                facts.insert("kind".into(), "tar".into());
            }
            Some(header) => {
                facts.insert("kind".into(), "ab".into());
                facts.insert("ab-version".into(), header.version.to_string());
                facts.insert("compressed".into(), header.compressed.to_string());
                facts.insert("encrypted".into(), header.encryption.is_some().to_string());
            }
        }
        facts
    }

    fn send_entries(&self, sink: &mut dyn EntrySink) -> Result<(), SourceError> {
        let stream = self.stream.lock().expect("archive lock").take().ok_or_else(|| self.damaged("read already"))?;
        let mut tar = TarReader::new(BufReader::with_capacity(READ_BUFFER, stream));
        while let Some(header) = tar.next_entry().map_err(|e| self.tar_error(e))? {
            let meta = meta_of(&header);
            let kind = match header.kind {
                TarKind::File => SourceKind::File { size: header.size },
                TarKind::Dir => SourceKind::Dir,
                TarKind::Symlink => SourceKind::Symlink { target: header.link.clone() },
                // A hard link that carries data (POSIX allows it; star writes it) is kept with
                // its own bytes, as the file it is.
                TarKind::HardLink if header.size > 0 => SourceKind::File { size: header.size },
                TarKind::HardLink => SourceKind::HardLink { target: header.link.clone() },
                TarKind::Special(_) => SourceKind::Special,
                TarKind::Unsupported(why) => {
                    sink.unreadable(&header.path, format!("{why}, which phonebak does not take"))?;
                    continue;
                }
            };
            let size = header.size;
            // Data only a file's stored content gives back: other entries are kept by their
            // header alone, when they have no data.
            let whole = matches!(kind, SourceKind::File { .. }) || size == 0;
            if !whole {
                let why =
                    format!("its entry carries {size} bytes of data, which are not kept (an export leaves it out)");
                sink.note(&header.path, why);
            }
            let archive_header = whole.then_some(ArchiveHeader { blocks: header.raw, data_len: size });
            let entry = StreamEntry { path: header.path, meta, kind, archive_header };
            if matches!(entry.kind, SourceKind::File { .. }) {
                let mtime = (entry.meta.mtime_sec, entry.meta.mtime_nsec);
                let mut content = TarContent::new(&mut tar, size, mtime, &self.spec);
                sink.entry(entry, Some(&mut content))?;
            } else {
                sink.entry(entry, None)?;
            }
        }
        // What follows the end is read (zeros only, or damage) for an export to give back its length.
        // An .ab is read to its end: zlib's checksum is there.
        let trailer_len = tar.rest_len(MAX_TRAILER, self.ab.is_some()).map_err(|e| self.tar_error(e))?;
        sink.archive_end(trailer_len);
        Ok(())
    }
}

impl ArchiveSource {
    fn tar_error(&self, error: TarError) -> SourceError {
        match error {
            TarError::Io(e) => self.damaged(read_error(e)),
            other => self.damaged(other),
        }
    }
}

/// An error from the layers under the tar stream (the file, zlib, the cipher), said as what it
/// means.
fn read_error(error: io::Error) -> String {
    match error.kind() {
        io::ErrorKind::UnexpectedEof => format!("the archive is cut short ({error})"),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => format!("the archive's data is damaged ({error})"),
        _ => format!("reading the archive: {error}"),
    }
}

/// The data of the entry just read, read once, as the stream goes by.
pub(super) struct TarContent<'a, R> {
    tar: &'a mut TarReader<R>,
    size: u64,
    mtime: (i64, u32),
    spec: &'a str,
}

impl<'a, R> TarContent<'a, R> {
    pub(super) fn new(tar: &'a mut TarReader<R>, size: u64, mtime: (i64, u32), spec: &'a str) -> Self {
        TarContent { tar, size, mtime, spec }
    }
}

impl<R: Read> Content for TarContent<'_, R> {
    fn open(&mut self) -> Result<Box<dyn SourceFile + '_>, SourceError> {
        Ok(Box::new(TarFile { content: self.tar.content(), size: self.size, mtime: self.mtime }))
    }

    fn read_failed(&self, error: io::Error) -> SourceError {
        // The tar reader's own errors say what is wrong; those of the layers below it are said here.
        let why = match error.get_ref() {
            Some(own) if own.is::<TarError>() => own.to_string(),
            _ => read_error(error),
        };
        SourceError::Damaged { source_name: self.spec.to_string(), why }
    }
}

struct TarFile<'a, R> {
    content: crate::archive::tar::Content<'a, R>,
    size: u64,
    mtime: (i64, u32),
}

impl<R: Read> Read for TarFile<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.content.read(buf)
    }
}

impl<R: Read> SourceFile for TarFile<'_, R> {
    fn current_state(&self) -> io::Result<(u64, i64, u32)> {
        // An archive's entry cannot change while it is read: a short one is an error instead.
        Ok((self.size, self.mtime.0, self.mtime.1))
    }
}
