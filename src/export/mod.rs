//! `export`: gives a snapshot back in a form phone tools take. `ios` writes the iPhone backup
//! folder it was imported from; `archive` writes a tar or an Android backup (.ab), the same
//! entries byte for byte when the snapshot was imported from one.

mod archive;
mod ios;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use archive::{archive, ArchiveFormat, ArchiveOut};
pub use ios::ios_backup;

use crate::repo::{BlobId, RepoError, Repository};
use crate::source::SourceError;
use crate::tree::{load_tree, Entry, Tree};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "{0} did not come from an iPhone backup, so it cannot be given back as one (`restore` gives back its files)"
    )]
    NotIosBackup(String),
    #[error("{}: {why}", path.display())]
    OutUnusable { path: PathBuf, why: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Password(#[from] SourceError),
    /// What the snapshot holds of `what` cannot be read back whole: damage in the repository.
    #[error("the snapshot's {what} is damaged: {why}")]
    Damaged { what: String, why: String },
    #[error("{}: {error}", path.display())]
    Target { path: PathBuf, error: io::Error },
    /// The temporary folder (TMPDIR), where an encrypted backup's catalogue is decrypted for
    /// SQLite, failed: full (exit 15) or not writable.
    #[error("decrypting Manifest.db into the temporary folder {}: {error}", std::env::temp_dir().display())]
    Scratch { error: io::Error },
}

impl ExportError {
    pub fn target_is_full(&self) -> bool {
        matches!(self, ExportError::Target { error, .. } | ExportError::Scratch { error }
            if error.raw_os_error() == Some(libc::ENOSPC))
    }
}

#[derive(Default)]
pub struct ExportReport {
    pub files: u64,
    pub bytes: u64,
    /// What is not given back as it was, with why: an iPhone backup's catalogue rows whose
    /// file the snapshot does not hold (never imported: missing from the backup, or refused),
    /// or held other than its record says; an archive's entries the snapshot no longer has.
    pub missing: Vec<(String, String)>,
    /// Files recorded without content (`--metadata-only`), which an export cannot give back.
    pub omitted: u64,
    /// Where it was written (`-`: standard output).
    pub out: PathBuf,
}

fn target(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |error| ExportError::Target { path: path.to_path_buf(), error }
}

/// Is `path` (which may not exist yet) inside `folder`? Compared by their real paths.
fn is_inside(path: &Path, folder: &Path) -> bool {
    let Ok(folder) = std::fs::canonicalize(folder) else { return false };
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let existing = absolute.ancestors().find_map(|a| std::fs::canonicalize(a).ok().map(|real| (a, real)));
    existing.is_some_and(|(ancestor, real)| {
        let rest = absolute.strip_prefix(ancestor).unwrap_or(Path::new(""));
        let whole = real.join(rest);
        whole.starts_with(&folder) && !rest.components().any(|c| c == std::path::Component::ParentDir)
    })
}

/// Finds entries by path, keeping the last folders loaded (a catalogue or an archive's layout
/// is read in an order where neighbours share them).
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

    /// The entry at `path` (names from the root), if there is one.
    fn entry(&mut self, path: &[&[u8]]) -> Result<Option<Entry>, RepoError> {
        let Some((name, folders)) = path.split_last() else { return Ok(None) };
        let mut current = self.root.clone();
        for folder in folders {
            let Some(crate::tree::Node::Dir { tree }) = current.find(folder).map(|e| &e.node) else {
                return Ok(None);
            };
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
        Ok(current.find(name).cloned())
    }
}
