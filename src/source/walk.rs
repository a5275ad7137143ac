//! The one walker of sources read folder by folder: each folder is listed only when the engine
//! wants it, sent before what it holds, and marked done after, so the engine can store it and
//! forget it (memory stays that of the open folders, whatever the phone's size).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Content, EntrySink, ListedSource, Listing, SourceError, SourceFile, SourceKind, StreamEntry};
use crate::tree_builder::{invalid_name_reason, normalize};

/// Sends every entry of `source` to `sink`.
pub fn send(source: &dyn ListedSource, sink: &mut dyn EntrySink) -> Result<(), SourceError> {
    source.root_meta()?;
    // A top folder that cannot be listed is an empty snapshot, with the reason listed.
    match source.list(Path::new("")) {
        Ok(listing) => send_listing(source, Path::new(""), listing, sink),
        Err(SourceError::Unreadable { path, source: error }) => {
            report(source, sink, path.as_bytes(), error.to_string())
        }
        Err(other) => Err(other),
    }
}

fn send_listing(
    source: &dyn ListedSource,
    dir: &Path,
    listing: Listing,
    sink: &mut dyn EntrySink,
) -> Result<(), SourceError> {
    for (name, error) in listing.unreadable {
        report(source, sink, dir.join(OsStr::from_bytes(&name)).as_os_str().as_bytes(), error.to_string())?;
    }
    for (name, why) in listing.notes {
        sink.note(dir.join(OsStr::from_bytes(&name)).as_os_str().as_bytes(), why);
    }
    // One entry per name, the last listed (a folder is read once, so a name listed twice is
    // the source's slip, not two versions), and names checked before they become paths.
    let (entries, rejected) = normalize(listing.entries, |e| &e.name);
    for (item, why) in rejected {
        let shown = dir.join(String::from_utf8_lossy(&item.name).as_ref());
        report(source, sink, shown.as_os_str().as_bytes(), format!("{why} cannot be stored"))?;
    }
    for item in entries {
        let path = dir.join(OsStr::from_bytes(&item.name));
        let entry = StreamEntry {
            path: path.as_os_str().as_bytes().to_vec(),
            meta: item.meta,
            kind: item.kind,
            archive_header: None,
        };
        match &entry.kind {
            SourceKind::Dir => {
                if !sink.wants_dir(&entry.path) {
                    continue;
                }
                // Listed before it is sent: a folder that cannot be listed is left out and
                // reported, not stored as if it were empty.
                match source.list(&path) {
                    Ok(listing) => {
                        let done = entry.path.clone();
                        sink.entry(entry, None)?;
                        send_listing(source, &path, listing, sink)?;
                        sink.dir_done(&done)?;
                    }
                    Err(SourceError::Unreadable { path, source: error }) => {
                        report(source, sink, path.as_bytes(), error.to_string())?
                    }
                    Err(other) => return Err(other),
                }
            }
            SourceKind::File { .. } => sink.entry(entry, Some(&mut Listed { source, path }))?,
            _ => sink.entry(entry, None)?,
        }
    }
    Ok(())
}

/// Reports a path that could not be read, unless the whole source has gone, which ends the
/// backup without a snapshot.
fn report(source: &dyn ListedSource, sink: &mut dyn EntrySink, path: &[u8], why: String) -> Result<(), SourceError> {
    source.root_meta()?;
    sink.unreadable(path, why)
}

/// A listed file's content: opened by path, as often as the engine needs.
struct Listed<'a> {
    source: &'a dyn ListedSource,
    path: PathBuf,
}

impl Listed<'_> {
    /// A file that cannot be read may mean the whole source has gone.
    fn unless_gone(&self, error: SourceError) -> SourceError {
        match (&error, self.source.root_meta()) {
            (SourceError::Unreadable { .. }, Err(gone)) => gone,
            _ => error,
        }
    }
}

impl Content for Listed<'_> {
    fn open(&mut self) -> Result<Box<dyn SourceFile + '_>, SourceError> {
        self.source.open(&self.path).map_err(|e| self.unless_gone(e))
    }

    fn can_reopen(&self) -> bool {
        true
    }

    fn read_failed(&self, error: std::io::Error) -> SourceError {
        self.unless_gone(self.source.read_failed(&self.path, error))
    }
}

/// Bytes of files below `dir` that are not excluded (unreadable parts count as nothing).
pub fn total_size(source: &dyn ListedSource, excluded: &(dyn Fn(&[u8]) -> bool + Sync), dir: &Path) -> u64 {
    let Ok(listing) = source.list(dir) else { return 0 };
    let mut total = 0;
    for entry in listing.entries {
        let path = dir.join(OsStr::from_bytes(&entry.name));
        if invalid_name_reason(&entry.name).is_some() || excluded(path.as_os_str().as_bytes()) {
            continue;
        }
        total += match entry.kind {
            SourceKind::File { size } => size,
            SourceKind::Dir => total_size(source, excluded, &path),
            _ => 0,
        };
    }
    total
}
