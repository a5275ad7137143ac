//! The backup engine's rule for turning what a source sends into trees, whatever order the
//! entries arrive in: paths are checked, entries sorted by name bytes, duplicates merged, and
//! each folder stored once everything in it is known. Sources (a folder, an iPhone backup, tar
//! and .ab archives, a phone over adb) are not trusted to do any of it.
//!
//! The rules (docs/FORMAT.md, "Trees"): the entry sent last wins, as when an archive is
//! extracted; two folders of one name are one folder holding what both hold. A path is refused
//! when it climbs (`..`), is absolute, holds NUL, or goes through something that is not a folder
//! (a symlink: extracting it would write where the link points). Folders an archive names only
//! as parents get mode 0755 and the time of the first entry inside them.

use std::collections::BTreeMap;

use crate::repo::snapshot::SnapshotStats;
use crate::repo::BlobId;
use crate::tree::{is_valid_name, Entry, Meta, Node, Tree};

/// Why a name cannot be stored as listed.
pub fn invalid_name_reason(name: &[u8]) -> Option<&'static str> {
    if is_valid_name(name) {
        return None;
    }
    Some(if name.is_empty() {
        "empty name"
    } else if name == b"." || name == b".." {
        "the name `.` or `..`"
    } else if name.contains(&0) {
        "a name with a NUL byte"
    } else if name.contains(&b'/') {
        "a name with a `/`"
    } else {
        "a name longer than 255 bytes"
    })
}

/// Sorts `items` by name, keeps the last of each name, and takes out those whose names cannot
/// be stored (returned with why, in listing order).
pub fn normalize<T>(items: Vec<T>, name: impl Fn(&T) -> &[u8]) -> (Vec<T>, Vec<(T, &'static str)>) {
    let mut rejected = Vec::new();
    let mut kept: Vec<(usize, T)> = Vec::with_capacity(items.len());
    for (position, item) in items.into_iter().enumerate() {
        match invalid_name_reason(name(&item)) {
            Some(why) => rejected.push((item, why)),
            None => kept.push((position, item)),
        }
    }
    // Stable by name, then the later listing first, so that dedup keeps the last one listed.
    kept.sort_by(|(pa, a), (pb, b)| name(a).cmp(name(b)).then(pb.cmp(pa)));
    kept.dedup_by(|later, earlier| name(&later.1) == name(&earlier.1));
    (kept.into_iter().map(|(_, item)| item).collect(), rejected)
}

/// Splits a path a source sent into names. A leading `./` and empty or `.` names (`a//b`,
/// `a/./b`) are dropped, as tar does; `..`, a leading `/` and bad names are refused.
pub fn split_path(path: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if path.first() == Some(&b'/') {
        return Err("an absolute path");
    }
    let mut names = Vec::new();
    for name in path.split(|&b| b == b'/') {
        match name {
            b"" | b"." => {}
            b".." => return Err("a path that climbs out with `..`"),
            _ => {
                if let Some(why) = invalid_name_reason(name) {
                    return Err(why);
                }
                names.push(name);
                // Deeper than a snapshot may nest (and than `check` and repair read): refused,
                // before building it costs a frame per level.
                if names.len() > crate::tree::MAX_DEPTH {
                    return Err("a path nested deeper than phonebak keeps (2048 folders)");
                }
            }
        }
    }
    Ok(names)
}

/// Shows a path for messages.
pub fn shown(names: &[&[u8]]) -> String {
    String::from_utf8_lossy(&names.join(&b'/')).into_owned()
}

type Children = BTreeMap<Vec<u8>, Pending>;

enum Pending {
    Dir {
        meta: Meta,
        /// Kept even when empty (with `--include`, a folder that only leads to wanted paths
        /// is not).
        wanted: bool,
        entries: Children,
    },
    /// A folder already stored.
    Stored {
        meta: Meta,
        tree: BlobId,
    },
    Leaf {
        meta: Meta,
        node: Node,
    },
}

/// Stores a tree and returns its id.
pub type Store<'a> = &'a mut dyn FnMut(&Tree) -> BlobId;

/// The snapshot's tree as it is being sent: what is pending in memory, folders stored when done.
#[derive(Default)]
pub struct TreeBuilder {
    root: Children,
    /// Files, folders (not the top one), symlinks and bytes of what is stored.
    pub stats: SnapshotStats,
}

impl TreeBuilder {
    /// The folder `names` leads to (made, with `implied` metadata, where missing), or why an
    /// entry cannot go there.
    fn folder(&mut self, names: &[&[u8]], implied: &Meta) -> Result<&mut Children, String> {
        let mut children = &mut self.root;
        for (depth, name) in names.iter().enumerate() {
            let next = children.entry(name.to_vec()).or_insert_with(|| Pending::Dir {
                meta: Meta { mode: 0o755, ..implied.clone() },
                wanted: false,
                entries: Children::new(),
            });
            children = match next {
                Pending::Dir { entries, .. } => entries,
                Pending::Stored { .. } => {
                    return Err(format!("its folder {} was complete before it came", shown(&names[..=depth])))
                }
                Pending::Leaf { node: Node::Symlink { .. }, .. } => {
                    return Err(format!("a path through the symlink {}", shown(&names[..=depth])))
                }
                Pending::Leaf { .. } => return Err(format!("a path through the file {}", shown(&names[..=depth]))),
            };
        }
        Ok(children)
    }

    /// Whether an entry may go at `names` (its folders are folders, or not there yet).
    pub fn check(&self, names: &[&[u8]]) -> Result<(), String> {
        let mut children = &self.root;
        for (depth, name) in names[..names.len().saturating_sub(1)].iter().enumerate() {
            children = match children.get(*name) {
                None => return Ok(()),
                Some(Pending::Dir { entries, .. }) => entries,
                Some(Pending::Stored { .. }) => {
                    return Err(format!("its folder {} was complete before it came", shown(&names[..=depth])))
                }
                Some(Pending::Leaf { node: Node::Symlink { .. }, .. }) => {
                    return Err(format!("a path through the symlink {}", shown(&names[..=depth])))
                }
                Some(Pending::Leaf { .. }) => {
                    return Err(format!("a path through the file {}", shown(&names[..=depth])))
                }
            };
        }
        Ok(())
    }

    /// Adds a folder (merged with one already there). Returns a note when it replaces a file.
    pub fn add_dir(&mut self, names: &[&[u8]], meta: Meta, wanted: bool) -> Result<Option<String>, String> {
        let (last, parents) = names.split_last().expect("not the top folder");
        let children = self.folder(parents, &meta)?;
        match children.get_mut(*last) {
            Some(Pending::Dir { meta: old_meta, wanted: old_wanted, .. }) => {
                *old_meta = meta;
                *old_wanted |= wanted;
                Ok(None)
            }
            Some(Pending::Stored { .. }) => Err("a folder sent again after it was complete".into()),
            Some(Pending::Leaf { .. }) | None => {
                let replaced = children.insert(last.to_vec(), Pending::Dir { meta, wanted, entries: Children::new() });
                Ok(replaced.map(|_| "a folder replacing the file of the same name sent before it".into()))
            }
        }
    }

    /// Adds a file or symlink; the last one sent for a path wins. Returns a note when it
    /// replaces a folder.
    pub fn add_leaf(&mut self, names: &[&[u8]], meta: Meta, node: Node) -> Result<Option<String>, String> {
        let (last, parents) = names.split_last().expect("not the top folder");
        let children = self.folder(parents, &meta)?;
        let replaced = children.insert(last.to_vec(), Pending::Leaf { meta, node });
        Ok(match replaced {
            Some(Pending::Dir { .. } | Pending::Stored { .. }) => {
                Some("replaces the folder of the same name sent before it, and what it held".into())
            }
            Some(Pending::Leaf { .. }) => Some("sent again: the last one is kept".into()),
            None => None,
        })
    }

    /// The file at `names`, if one was added (for a hard link to it).
    pub fn file(&self, names: &[&[u8]]) -> Option<&Node> {
        let (last, parents) = names.split_last()?;
        let mut children = &self.root;
        for name in parents {
            match children.get(*name)? {
                Pending::Dir { entries, .. } => children = entries,
                _ => return None,
            }
        }
        match children.get(*last)? {
            Pending::Leaf { node: node @ Node::File { .. }, .. } => Some(node),
            _ => None,
        }
    }

    /// Stores the folder at `names` and what it holds: nothing more will come for it.
    pub fn seal(&mut self, names: &[&[u8]], store: Store) {
        let Some((last, parents)) = names.split_last() else { return };
        let mut children = &mut self.root;
        for name in parents {
            match children.get_mut(*name) {
                Some(Pending::Dir { entries, .. }) => children = entries,
                _ => return,
            }
        }
        let Some(Pending::Dir { .. }) = children.get(*last) else { return };
        let Some(Pending::Dir { meta, wanted, entries }) = children.remove(*last) else { unreachable!() };
        let tree = build(entries, store, &mut self.stats);
        if !tree.entries.is_empty() || wanted {
            self.stats.dirs += 1;
            children.insert(last.to_vec(), Pending::Stored { meta, tree: store(&tree) });
        }
    }

    /// Stores everything still pending and returns the top tree's id.
    pub fn finish(mut self, store: Store) -> (BlobId, SnapshotStats) {
        let tree = build(std::mem::take(&mut self.root), store, &mut self.stats);
        (store(&tree), self.stats)
    }
}

fn build(children: Children, store: Store, stats: &mut SnapshotStats) -> Tree {
    let mut tree = Tree::default();
    for (name, pending) in children {
        let (meta, node) = match pending {
            Pending::Leaf { meta, node } => {
                match &node {
                    Node::File { size, .. } => {
                        stats.files += 1;
                        stats.bytes += size;
                    }
                    Node::Symlink { .. } => stats.symlinks += 1,
                    Node::Dir { .. } => stats.dirs += 1,
                }
                (meta, node)
            }
            Pending::Stored { meta, tree } => (meta, Node::Dir { tree }),
            Pending::Dir { meta, wanted, entries } => {
                let sub = build(entries, store, stats);
                if sub.entries.is_empty() && !wanted {
                    continue;
                }
                stats.dirs += 1;
                (meta, Node::Dir { tree: store(&sub) })
            }
        };
        tree.entries.push(Entry { name, meta, node });
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_unique_last_wins_and_bad_names_taken_out() {
        let items =
            vec![(b"b".to_vec(), 1), (b"a".to_vec(), 2), (b"..".to_vec(), 3), (b"a".to_vec(), 4), (b"x/y".to_vec(), 5)];
        let (kept, rejected) = normalize(items, |(n, _)| n);
        assert_eq!(kept, vec![(b"a".to_vec(), 4), (b"b".to_vec(), 1)]);
        let why: Vec<_> = rejected.iter().map(|(item, why)| (item.1, *why)).collect();
        assert_eq!(why, vec![(3, "the name `.` or `..`"), (5, "a name with a `/`")]);
    }

    #[test]
    fn paths_are_split_and_hostile_ones_refused() {
        assert_eq!(split_path(b"./sdcard//DCIM/./a.jpg").unwrap(), vec![&b"sdcard"[..], b"DCIM", b"a.jpg"]);
        assert_eq!(split_path(b"apps/x/").unwrap(), vec![&b"apps"[..], b"x"]);
        assert!(split_path(b"./").unwrap().is_empty());
        assert_eq!(split_path(b"/etc/passwd"), Err("an absolute path"));
        assert_eq!(split_path(b"a/../../b"), Err("a path that climbs out with `..`"));
        assert_eq!(split_path(b"a/b\0c"), Err("a name with a NUL byte"));
    }

    fn ids() -> impl FnMut(&Tree) -> BlobId {
        |tree: &Tree| crate::repo::Id(*blake3::hash(&tree.encode()).as_bytes())
    }

    #[test]
    fn entries_in_any_order_make_sorted_trees_last_one_winning() {
        let file = |size: u64| Node::File { size, chunks: Vec::new() };
        let mut builder = TreeBuilder::default();
        let mut store = ids();
        let meta = Meta { mode: 0o644, mtime_sec: 7, ..Meta::default() };
        builder.add_leaf(&[b"b", b"x"], meta.clone(), Node::Symlink { target: b"t".to_vec() }).unwrap();
        builder.add_leaf(&[b"a"], meta.clone(), Node::File { size: 0, chunks: Vec::new() }).unwrap();
        builder.add_dir(&[b"b"], Meta { mode: 0o700, ..meta.clone() }, true).unwrap();
        assert!(builder.check(&[b"b", b"x", b"y"]).unwrap_err().contains("symlink b/x"));
        assert!(builder.add_leaf(&[b"a", b"y"], meta.clone(), file(0)).unwrap_err().contains("file a"));
        builder.add_leaf(&[b"a"], meta.clone(), file(0)).unwrap();
        let (_, stats) = builder.finish(&mut store);
        assert_eq!((stats.files, stats.symlinks, stats.dirs), (1, 1, 1));
    }
}
