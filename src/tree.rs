//! One directory = one tree blob: its entries sorted by name, each a file (size and chunk list), a
//! directory (the id of its own tree) or a symlink, with exact metadata. An unchanged directory
//! encodes to the same bytes and so costs nothing in the next snapshot.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::repo::{BlobId, RepoError, Repository};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Permission bits (`st_mode & 0o7777`); the type is the `Node`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

impl Meta {
    /// The metadata a tree keeps of a local file, folder or symlink.
    pub fn of(meta: &std::fs::Metadata) -> Meta {
        use std::os::unix::fs::MetadataExt;
        Meta {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec() as u32,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: BlobId,
    pub len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    File { size: u64, chunks: Vec<ChunkRef> },
    Dir { tree: BlobId },
    Symlink { target: Vec<u8> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The name's bytes exactly as the source gave them (not necessarily UTF-8).
    pub name: Vec<u8>,
    pub meta: Meta,
    pub node: Node,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

/// A name that is safe to create inside a folder: never `..`, never a path, never NUL.
pub fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
        && name.len() <= 255
}

/// A symlink target that a file system can hold: not empty, no NUL, at most PATH_MAX bytes.
pub fn is_valid_symlink_target(target: &[u8]) -> bool {
    !target.is_empty() && !target.contains(&0) && target.len() < 4096
}

impl Entry {
    pub fn name_os(&self) -> &OsStr {
        OsStr::from_bytes(&self.name)
    }
}

impl Tree {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).expect("trees serialize")
    }

    /// Decodes and validates: names unique, sorted and safe; file sizes equal to their chunks.
    /// A tree that fails this is damage (or an attack), never something to act on.
    pub fn decode(bytes: &[u8]) -> Result<Tree, String> {
        let tree: Tree = crate::repo::decode_record(bytes)?;
        for entry in &tree.entries {
            if !is_valid_name(&entry.name) {
                return Err(format!("unsafe name {:?}", String::from_utf8_lossy(&entry.name)));
            }
            if entry.meta.mode > 0o7777 || entry.meta.mtime_nsec >= 1_000_000_000 {
                return Err(format!("{:?}: mode or time out of range", String::from_utf8_lossy(&entry.name)));
            }
            if let Node::Symlink { target } = &entry.node {
                if !is_valid_symlink_target(target) {
                    return Err(format!("{:?}: unusable symlink target", String::from_utf8_lossy(&entry.name)));
                }
            }
            if let Node::File { size, chunks } = &entry.node {
                if chunks.iter().any(|c| c.len > crate::repo::MAX_BLOB)
                    || chunks.iter().map(|c| c.len as u64).sum::<u64>() != *size
                {
                    return Err(format!("{:?}: size does not match its chunks", String::from_utf8_lossy(&entry.name)));
                }
            }
        }
        if !tree.entries.windows(2).all(|w| w[0].name < w[1].name) {
            return Err("entries out of order or duplicated".into());
        }
        Ok(tree)
    }

    pub fn find(&self, name: &[u8]) -> Option<&Entry> {
        self.entries.binary_search_by(|e| e.name.as_slice().cmp(name)).ok().map(|at| &self.entries[at])
    }
}

pub fn load_tree(repo: &Repository, id: &BlobId) -> Result<Tree, RepoError> {
    let bytes = repo.load_blob(id)?;
    Tree::decode(&bytes).map_err(|why| RepoError::Corrupt(format!("tree {id}: {why}")))
}

/// A snapshot's file as a stream, chunk by chunk, each verified as it is loaded.
pub struct ChunkReader<'a> {
    repo: &'a Repository,
    chunks: Vec<ChunkRef>,
    next: usize,
    current: Vec<u8>,
    at: usize,
}

impl<'a> ChunkReader<'a> {
    pub fn new(repo: &'a Repository, chunks: Vec<ChunkRef>) -> ChunkReader<'a> {
        Self::with_buffer(repo, chunks, Vec::new())
    }

    /// Reads into `buffer` (one kept from file to file, so its pages stay mapped).
    pub fn with_buffer(repo: &'a Repository, chunks: Vec<ChunkRef>, mut buffer: Vec<u8>) -> ChunkReader<'a> {
        buffer.clear();
        ChunkReader { repo, chunks, next: 0, current: buffer, at: 0 }
    }

    pub fn into_buffer(self) -> Vec<u8> {
        self.current
    }
}

impl std::io::Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            let Some(chunk) = self.chunks.get(self.next) else { return Ok(0) };
            self.repo.load_blob_into(&chunk.id, &mut self.current).map_err(std::io::Error::other)?;
            if self.current.len() != chunk.len as usize {
                return Err(std::io::Error::other(RepoError::Corrupt(format!(
                    "chunk {} has {} bytes where the folder listing says {}",
                    chunk.id,
                    self.current.len(),
                    chunk.len
                ))));
            }
            self.next += 1;
            self.at = 0;
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("{0} is not in the snapshot")]
    NotFound(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Finds `path` (relative, `/`-separated; empty for the root) under the root tree. The root is
/// returned as a directory entry with an empty name.
pub fn lookup_path(repo: &Repository, root: &BlobId, path: &Path) -> Result<Entry, PathError> {
    let mut current =
        Entry { name: Vec::new(), meta: Meta { mode: 0o755, ..Meta::default() }, node: Node::Dir { tree: *root } };
    for component in path.components() {
        use std::path::Component;
        let name = match component {
            Component::Normal(name) => name.as_bytes(),
            Component::RootDir | Component::CurDir => continue,
            _ => return Err(PathError::NotFound(path.display().to_string())),
        };
        let Node::Dir { tree } = &current.node else {
            return Err(PathError::NotFound(path.display().to_string()));
        };
        let tree = load_tree(repo, tree)?;
        current = tree.find(name).cloned().ok_or_else(|| PathError::NotFound(path.display().to_string()))?;
    }
    Ok(current)
}

/// How deep folders may nest: deeper than a real file system's paths (PATH_MAX is 4096 bytes)
/// can go. A deeper tree is damage, refused before a recursive walk runs out of stack.
pub const MAX_DEPTH: usize = 2048;

pub fn too_deep() -> RepoError {
    RepoError::Corrupt(format!("folders nested deeper than {MAX_DEPTH} levels"))
}

/// Visits every entry below `tree` depth-first, parents before children, with its path relative
/// to the walk's start.
pub fn walk<E: From<RepoError>>(
    repo: &Repository,
    tree: &BlobId,
    visit: &mut impl FnMut(&Path, &Entry) -> Result<(), E>,
) -> Result<(), E> {
    walk_below(repo, tree, &mut PathBuf::new(), 0, visit)
}

fn walk_below<E: From<RepoError>>(
    repo: &Repository,
    tree: &BlobId,
    path: &mut PathBuf,
    depth: usize,
    visit: &mut impl FnMut(&Path, &Entry) -> Result<(), E>,
) -> Result<(), E> {
    if depth > MAX_DEPTH {
        return Err(too_deep().into());
    }
    for entry in load_tree(repo, tree)?.entries {
        path.push(entry.name_os());
        visit(path, &entry)?;
        if let Node::Dir { tree } = &entry.node {
            walk_below(repo, tree, path, depth + 1, visit)?;
        }
        path.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::Id;

    fn file(name: &[u8], len: u32) -> Entry {
        Entry {
            name: name.to_vec(),
            meta: Meta::default(),
            node: Node::File { size: len as u64, chunks: vec![ChunkRef { id: Id([1; 32]), len }] },
        }
    }

    #[test]
    fn round_trip_keeps_non_utf8_names() {
        let tree = Tree { entries: vec![file(b"a", 3), file(b"\xff\xfename", 5)] };
        assert_eq!(Tree::decode(&tree.encode()).unwrap(), tree);
    }

    #[test]
    fn hostile_trees_are_refused() {
        for bad in [&b".."[..], b"a/b", b"", b"x\0y", b"."] {
            let tree = Tree { entries: vec![file(bad, 1)] };
            assert!(Tree::decode(&tree.encode()).is_err(), "{bad:?}");
        }
        let unsorted = Tree { entries: vec![file(b"b", 1), file(b"a", 1)] };
        assert!(Tree::decode(&unsorted.encode()).is_err());
        let mut lying = file(b"a", 1);
        lying.node = Node::File { size: 99, chunks: vec![] };
        assert!(Tree::decode(&Tree { entries: vec![lying] }.encode()).is_err());
        assert!(Tree::decode(b"\xff\xff\xff").is_err());
    }
}
