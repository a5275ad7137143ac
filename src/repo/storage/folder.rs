//! A repository in a folder: every write is a private temp file in `tmp/`, fsync, rename (or
//! link, for a write that must not replace), and an fsync of the folder.

use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::file_reads::FileReads;
use super::{io_error, Object, Reuse, Storage, StorageError, Upload};
use crate::repo::fsutil::{self, crash_point, fsync_dir};

/// The folders a repository has from `init` on.
const SUBDIRS: [&str; 5] = ["data", "index", "snapshots", "locks", "tmp"];

pub struct Folder {
    root: PathBuf,
    reads: FileReads,
}

impl Folder {
    pub fn new(root: PathBuf) -> Folder {
        Folder { reads: FileReads::new(root.clone()), root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn temp_path(&self, suffix: &str) -> PathBuf {
        self.path("tmp").join(format!("{}.{suffix}", crate::repo::Id::random().to_hex()))
    }
}

/// Opens a repository file for reading, refusing what is not a regular file: a FIFO put where a
/// record was would block every command forever, a device would never end.
pub(super) fn open_regular(path: &Path, name: &str) -> Result<std::fs::File, StorageError> {
    fsutil::open_regular(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound if std::fs::symlink_metadata(path).is_ok() => {
            StorageError::NotAFile { name: name.to_string(), why: "a link to nothing" }
        }
        io::ErrorKind::NotFound => StorageError::NotFound(name.to_string()),
        io::ErrorKind::InvalidData => StorageError::NotAFile {
            name: name.to_string(),
            why: "not a regular file (something else is in its place)",
        },
        _ => io_error(format!("opening {}", path.display()))(e),
    })
}

impl Storage for Folder {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn local_folder(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, StorageError> {
        let path = self.path(name);
        let file = open_regular(&path, name)?;
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, limit.saturating_add(1)), &mut bytes)
            .map_err(io_error(format!("reading {}", path.display())))?;
        if bytes.len() as u64 > limit {
            return Err(StorageError::TooLarge { name: name.to_string() });
        }
        Ok(bytes)
    }

    fn read_range(
        &self,
        name: &str,
        offset: u64,
        len: usize,
        _reuse: Reuse,
        out: &mut Vec<u8>,
    ) -> Result<Range<usize>, StorageError> {
        self.reads.read(name, offset, len, out)
    }

    fn size(&self, name: &str) -> Result<u64, StorageError> {
        let path = self.path(name);
        let file = open_regular(&path, name)?;
        Ok(file.metadata().map_err(io_error(format!("reading {}", path.display())))?.len())
    }

    fn list(&self, dir: &str) -> Result<Vec<Object>, StorageError> {
        let mut found = Vec::new();
        list_into(&self.path(dir), dir, &mut found, true)?;
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let target = self.path(name);
        fsutil::write_atomic(&self.path("tmp"), &target, bytes)
            .map_err(io_error(format!("writing {}", target.display())))
    }

    fn write_new(&self, name: &str, bytes: &[u8]) -> Result<bool, StorageError> {
        let target = self.path(name);
        let tmp = self.temp_path("tmp");
        let result = (|| {
            let mut file = fsutil::create_private(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            crash_point("sync", &tmp);
            // A link fails where a file of that name exists: written whole, or not at all.
            let linked = match std::fs::hard_link(&tmp, &target) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                other => other.map(|()| true)?,
            };
            std::fs::remove_file(&tmp)?;
            fsync_dir(target.parent().expect("repository files live in a folder"))?;
            Ok(linked)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io_error(format!("writing {}", target.display())))
    }

    fn upload(&self) -> Result<Box<dyn Upload>, StorageError> {
        let tmp = self.temp_path("pack");
        let file = fsutil::create_private(&tmp).map_err(io_error("creating a pack file"))?;
        Ok(Box::new(FolderUpload {
            file: Some(io::BufWriter::with_capacity(1 << 20, file)),
            tmp,
            root: self.root.clone(),
        }))
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        let path = self.path(name);
        crash_point("remove", &path);
        self.reads.forget(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(format!("removing {}", path.display()))(e)),
            _ => Ok(()),
        }
    }

    fn sync_deletions(&self, dir: &str) -> Result<(), StorageError> {
        let path = self.path(dir);
        fsync_dir(&path).map_err(io_error(format!("syncing {}", path.display())))
    }

    fn set_aside(&self, name: &str, to: &str) -> Result<(), StorageError> {
        let (from, dest) = (self.path(name), self.path(to));
        let dir = dest.parent().expect("a place to set aside is in a folder");
        fsutil::create_private_dirs(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        crash_point("rename", &from);
        self.reads.forget(name);
        std::fs::rename(&from, &dest).map_err(io_error(format!("moving {} aside", from.display())))?;
        fsync_dir(dir).map_err(io_error(format!("syncing {}", dir.display())))?;
        let parent = from.parent().expect("repository files live in folders");
        fsync_dir(parent).map_err(io_error(format!("syncing {}", parent.display())))
    }

    fn free_space(&self) -> Option<u64> {
        fsutil::free_space(&self.root)
    }

    fn read_directly(&self) {
        self.reads.read_directly();
    }

    fn create(&self, _create_bucket: bool) -> Result<(), StorageError> {
        for dir in SUBDIRS {
            let path = self.path(dir);
            fsutil::create_private_dirs(&path).map_err(io_error(format!("creating {}", path.display())))?;
        }
        Ok(())
    }
}

/// Lists `dir` (named `name`) into `found`: files, and what is neither a file nor a folder
/// (not regular); folders are gone into, and named too (not regular) below the top.
fn list_into(dir: &Path, name: &str, found: &mut Vec<Object>, top: bool) -> Result<(), StorageError> {
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && top => return Ok(()),
        other => other.map_err(io_error(format!("listing {}", dir.display())))?,
    };
    for entry in entries {
        let entry = entry.map_err(io_error(format!("listing {}", dir.display())))?;
        let Some(file_name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let child = format!("{name}/{file_name}");
        let path = entry.path();
        // Links are followed, as reads follow them.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                found.push(Object { name: child.clone(), size: 0, regular: false, modified: None });
                list_into(&path, &child, found, false)?;
            }
            Ok(meta) => {
                let modified = meta.modified().ok();
                found.push(Object { name: child, size: meta.len(), regular: meta.is_file(), modified })
            }
            Err(_) => found.push(Object { name: child, size: 0, regular: false, modified: None }),
        }
    }
    Ok(())
}

/// A pack being written to `tmp/`, renamed into place when complete.
struct FolderUpload {
    file: Option<io::BufWriter<std::fs::File>>,
    tmp: PathBuf,
    root: PathBuf,
}

impl Write for FolderUpload {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("upload used after finish").write(bytes)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("upload used after finish").flush()
    }
}

impl Upload for FolderUpload {
    fn finish(mut self: Box<Self>, name: &str) -> Result<(), StorageError> {
        let file = self.file.take().expect("upload finished once");
        let file = file.into_inner().map_err(|e| io_error("writing a pack file")(e.into_error()))?;
        file.sync_all().map_err(io_error("syncing a pack file"))?;
        crash_point("sync", &self.tmp);
        fsutil::publish(&self.tmp, &self.root.join(name)).map_err(io_error("storing a pack file"))?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for FolderUpload {
    /// An abandoned pack (error, interrupted backup, full disk) leaves no temp file behind.
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
