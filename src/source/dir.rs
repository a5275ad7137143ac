//! A folder as a source: a phone mounted over MTP (jmtpfs, simple-mtpfs, gvfs), or a copy.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{walk, EntrySink, ListedSource, Listing, Source, SourceEntry, SourceError, SourceFile, SourceKind};
use crate::tree::Meta;

pub struct DirSource {
    root: PathBuf,
}

impl DirSource {
    pub fn new(root: &Path) -> Result<DirSource, SourceError> {
        let invalid = |why: String| SourceError::Invalid { spec: root.display().to_string(), why };
        let meta = std::fs::metadata(root).map_err(|e| invalid(e.to_string()))?;
        if !meta.is_dir() {
            return Err(invalid("not a folder".into()));
        }
        Ok(DirSource { root: root.to_path_buf() })
    }

    /// Sorts an error into "this one file" or "the whole phone is gone".
    fn classify(&self, rel: &Path, error: io::Error) -> SourceError {
        let gone = matches!(error.raw_os_error(), Some(libc::ENOTCONN) | Some(libc::ENODEV) | Some(libc::ENXIO))
            || std::fs::symlink_metadata(&self.root).is_err();
        if gone {
            SourceError::Vanished { source_name: self.root.display().to_string(), cause: error }
        } else {
            SourceError::Unreadable { path: rel.display().to_string(), source: error }
        }
    }
}

fn kind_of(path: &Path, meta: &Metadata) -> io::Result<SourceKind> {
    let file_type = meta.file_type();
    Ok(if file_type.is_file() {
        SourceKind::File { size: meta.len() }
    } else if file_type.is_dir() {
        SourceKind::Dir
    } else if file_type.is_symlink() {
        SourceKind::Symlink { target: std::fs::read_link(path)?.as_os_str().as_bytes().to_vec() }
    } else {
        SourceKind::Special
    })
}

impl Source for DirSource {
    fn describe(&self) -> String {
        let absolute = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        format!("dir:{}", absolute.display())
    }

    fn send_entries(&self, sink: &mut dyn EntrySink) -> Result<(), SourceError> {
        walk::send(self, sink)
    }

    fn expected_bytes(&self, excluded: &(dyn Fn(&[u8]) -> bool + Sync)) -> Option<u64> {
        Some(walk::total_size(self, excluded, Path::new("")))
    }
}

impl ListedSource for DirSource {
    fn root_meta(&self) -> Result<Meta, SourceError> {
        std::fs::metadata(&self.root).map(|m| Meta::of(&m)).map_err(|e| self.classify(Path::new(""), e))
    }

    fn list(&self, dir: &Path) -> Result<Listing, SourceError> {
        let full = self.root.join(dir);
        let reader = std::fs::read_dir(&full).map_err(|e| self.classify(dir, e))?;
        let mut listing = Listing::default();
        for item in reader {
            let item = item.map_err(|e| self.classify(dir, e))?;
            let name = item.file_name().as_bytes().to_vec();
            let path = item.path();
            match item.metadata().and_then(|meta| Ok((Meta::of(&meta), kind_of(&path, &meta)?))) {
                Ok((meta, kind)) => listing.entries.push(SourceEntry { name, meta, kind }),
                Err(error) => match self.classify(&dir.join(item.file_name()), error) {
                    SourceError::Unreadable { source, .. } => listing.unreadable.push((name, source)),
                    other => return Err(other),
                },
            }
        }
        listing.entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listing)
    }

    fn open(&self, file: &Path) -> Result<Box<dyn SourceFile>, SourceError> {
        File::open(self.root.join(file))
            .map(|f| Box::new(OpenFile { file: f }) as Box<dyn SourceFile>)
            .map_err(|e| self.classify(file, e))
    }

    fn read_failed(&self, file: &Path, error: io::Error) -> SourceError {
        self.classify(file, error)
    }
}

struct OpenFile {
    file: File,
}

impl Read for OpenFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl SourceFile for OpenFile {
    fn current_state(&self) -> io::Result<(u64, i64, u32)> {
        let meta = self.file.metadata()?;
        Ok((meta.len(), meta.mtime(), meta.mtime_nsec() as u32))
    }
}
