//! Library-level tests: random trees round-trip exactly (proptest), and a phone that vanishes
//! mid-backup leaves no snapshot.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use phonebak::backup::{self, BackupError, BackupOptions, PathFilter};
use phonebak::chunker::ChunkerParams;
use phonebak::repo::crypto::KdfParams;
use phonebak::repo::snapshot;
use phonebak::repo::{InitOptions, Repository, Storage};
use phonebak::source::{DirSource, EntrySink, ListedSource, Listing, Source, SourceError, SourceFile};
use phonebak::tree::{lookup_path, Meta};
use proptest::prelude::*;

fn small_repo(root: &Path) -> Repository {
    let options = InitOptions {
        chunker: ChunkerParams { min_size: 1024, avg_size: 4096, max_size: 16384 },
        kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 },
        pack_size: 256 * 1024,
        ..InitOptions::default()
    };
    Repository::init_folder(root, Some(b"pw"), options).unwrap();
    Repository::open_folder(root, || Ok(b"pw".to_vec())).unwrap()
}

fn options(device: &str) -> BackupOptions {
    BackupOptions { device: device.into(), tags: vec![], filter: PathFilter::default(), time_ns: None, force: false }
}

#[derive(Debug, Clone)]
enum Item {
    File { size: usize, seed: u64, compressible: bool },
    Dir,
    Symlink(Vec<u8>),
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0), 1..12)
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (0usize..60_000, any::<u64>(), any::<bool>()).prop_map(|(size, seed, compressible)| Item::File { size, seed, compressible }),
        1 => Just(Item::Dir),
        1 => name().prop_map(Item::Symlink),
    ]
}

/// (path of up to three names, what it is, mode, mtime)
type Planned = (Vec<Vec<u8>>, Item, u32, (i64, u32));

fn tree() -> impl Strategy<Value = Vec<Planned>> {
    proptest::collection::vec(
        (proptest::collection::vec(name(), 1..4), item(), 0u32..0o7777, (0i64..2_000_000_000, 0u32..1_000_000_000)),
        0..25,
    )
}

fn build(root: &Path, entries: &[Planned]) {
    std::fs::create_dir_all(root).unwrap();
    for (names, item, mode, (sec, nsec)) in entries {
        let path: PathBuf = names.iter().fold(root.to_path_buf(), |p, n| p.join(std::ffi::OsStr::from_bytes(n)));
        // Skip a path whose parent is already a file or symlink, or which exists.
        let parent_ok = path.parent().is_some_and(|p| std::fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(true));
        if !parent_ok || std::fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        let parent = path.parent().unwrap();
        if std::fs::create_dir_all(parent).is_err() {
            continue;
        }
        match item {
            Item::File { size, seed, compressible } => {
                std::fs::write(&path, bytes(*seed, *size, *compressible)).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
            Item::Dir => {
                std::fs::create_dir(&path).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode | 0o700)).unwrap();
            }
            Item::Symlink(target) => std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path).unwrap(),
        }
        set_mtime(&path, *sec, *nsec as i64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip_exactly(entries in tree()) {
        let dir = tempfile::tempdir().unwrap();
        let phone = dir.path().join("phone");
        build(&phone, &entries);
        let repo = small_repo(&dir.path().join("repo"));
        let source = DirSource::new(&phone).unwrap();
        let outcome = backup::run(&repo, &source, &options("p")).unwrap();
        prop_assert!(outcome.unreadable.is_empty());
        let root = lookup_path(&repo, &outcome.snapshot.root, Path::new("")).unwrap();
        let out = dir.path().join("out");
        let report = phonebak::restore::run(&repo, &root, &out, None, false).unwrap();
        prop_assert!(report.failed.is_empty());
        assert_same_tree(&phone, &out);
        let check = phonebak::check::run(&repo, true).unwrap();
        prop_assert!(check.is_ok(), "{:?}", check.errors);
    }
}

/// Stands in for a phone that is unplugged mid-backup (there is no phone here): a real folder
/// whose source reports the device gone after a few files, as an MTP mount does.
struct VanishingPhone {
    inner: DirSource,
    opened: std::sync::atomic::AtomicUsize,
}

impl Source for VanishingPhone {
    fn describe(&self) -> String {
        "vanishing phone".into()
    }
    fn send_entries(&self, sink: &mut dyn EntrySink) -> Result<(), SourceError> {
        phonebak::source::walk::send(self, sink)
    }
}

impl ListedSource for VanishingPhone {
    fn root_meta(&self) -> Result<Meta, SourceError> {
        if self.opened.load(std::sync::atomic::Ordering::SeqCst) >= 3 {
            return Err(SourceError::Vanished {
                source_name: "phone".into(),
                cause: std::io::Error::from_raw_os_error(libc::ENOTCONN),
            });
        }
        self.inner.root_meta()
    }
    fn list(&self, dir: &Path) -> Result<Listing, SourceError> {
        self.inner.list(dir)
    }
    fn open(&self, file: &Path) -> Result<Box<dyn SourceFile>, SourceError> {
        if self.opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 3 {
            return Err(SourceError::Unreadable {
                path: file.display().to_string(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        self.inner.open(file)
    }
}

#[test]
fn a_phone_that_vanishes_mid_backup_leaves_no_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let phone = dir.path().join("phone");
    for i in 0..10 {
        write(&phone.join(format!("f{i}.txt")), &bytes(i, 5000, true));
    }
    let repo = small_repo(&dir.path().join("repo"));
    let source = VanishingPhone { inner: DirSource::new(&phone).unwrap(), opened: Default::default() };
    let result = backup::run(&repo, &source, &options("p"));
    assert!(matches!(result, Err(BackupError::Source(SourceError::Vanished { .. }))), "{:?}", result.err());
    let err = anyhow::Error::from(result.err().unwrap());
    assert_eq!(phonebak::exit::for_error(&err), phonebak::exit::SOURCE_VANISHED);
    assert!(err.to_string().contains("disappeared during the backup"));
    assert!(snapshot::list(&repo).unwrap().is_empty(), "no partial snapshot");
    assert!(phonebak::check::run(&repo, true).unwrap().is_ok());
}

/// The file's chunk ids, from the latest snapshot of a one-file backup.
fn chunks_of(repo: &Repository, phone: &Path, file: &str) -> Vec<phonebak::repo::BlobId> {
    let outcome = backup::run(repo, &DirSource::new(phone).unwrap(), &options("p")).unwrap();
    match lookup_path(repo, &outcome.snapshot.root, Path::new(file)).unwrap().node {
        phonebak::tree::Node::File { chunks, .. } => chunks.iter().map(|c| c.id).collect(),
        _ => panic!("{file} is not a file"),
    }
}

/// Format 2 seals big uncompressed chunks in 64 KiB frames that open one by one (the mount's
/// random reads); a damaged frame fails alone, and the whole chunk then fails too. Encrypted
/// (AES-GCM per frame) and unencrypted (a BLAKE3 checksum per frame) alike.
#[test]
fn big_raw_chunks_are_framed_and_frames_fail_alone() {
    for (password, overhead) in [(Some(b"pw".as_slice()), 28), (None, 16)] {
        let dir = tempfile::tempdir().unwrap();
        let phone = dir.path().join("phone");
        // Under the chunker's 256 KiB minimum, so one chunk whatever the repository's seed.
        let photo = bytes(9, 250_000, false);
        write(&phone.join("photo.jpg"), &photo);
        let kdf = KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 };
        Repository::init_folder(&dir.path().join("repo"), password, InitOptions { kdf, ..Default::default() }).unwrap();
        let repo =
            Repository::open_folder(&dir.path().join("repo"), || Ok(password.unwrap_or_default().to_vec())).unwrap();
        let ids = chunks_of(&repo, &phone, "photo.jpg");
        assert_eq!(ids.len(), 1, "one chunk: the file is under the minimum chunk size");
        let id = ids[0];
        assert_eq!(repo.frames_of(&id).unwrap(), Some(4));
        let mut joined = Vec::new();
        for number in 0..4 {
            let mut frame = Vec::new();
            repo.load_frame(&id, number, &mut frame).unwrap();
            joined.extend_from_slice(&frame);
        }
        assert_eq!(joined, photo);
        assert_eq!(repo.load_blob(&id).unwrap(), photo);
        assert!(repo.load_frame(&id, 4, &mut Vec::new()).is_err());

        // Flip one byte in the middle of frame 2.
        let location = repo.index().get(&id).unwrap().unwrap();
        let pack = repo.local_folder().unwrap().join(phonebak::repo::pack_name(&location.pack));
        let mut stored = std::fs::read(&pack).unwrap();
        stored[location.offset as usize + 2 * (64 * 1024 + overhead) + 1000] ^= 1;
        std::fs::write(&pack, stored).unwrap();
        for number in [0, 1, 3] {
            repo.load_frame(&id, number, &mut Vec::new()).unwrap();
        }
        assert!(repo.load_frame(&id, 2, &mut Vec::new()).unwrap_err().is_corruption());
        assert!(repo.load_blob(&id).unwrap_err().is_corruption());
        assert!(!phonebak::check::run(&repo, true).unwrap().is_ok());
    }
}

/// A format 1 repository (made before frames) is read and written as format 1: whole chunks.
#[test]
fn format_1_repositories_keep_whole_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let phone = dir.path().join("phone");
    let photo = bytes(3, 250_000, false); // one chunk: under the chunker's minimum
    write(&phone.join("photo.jpg"), &photo);
    let root = dir.path().join("repo");
    let options =
        InitOptions { kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 }, ..Default::default() };
    Repository::init_folder(&root, None, options).unwrap();
    let config = std::fs::read_to_string(root.join("config")).unwrap();
    std::fs::write(root.join("config"), config.replace("\"format_version\": 2", "\"format_version\": 1")).unwrap();
    let repo = Repository::open_folder(&root, || Ok(Vec::new())).unwrap();
    assert_eq!(repo.config().format_version, 1);
    let ids = chunks_of(&repo, &phone, "photo.jpg");
    assert_eq!(repo.frames_of(&ids[0]).unwrap(), None);
    assert_eq!(repo.load_blob(&ids[0]).unwrap(), photo);
    assert!(phonebak::check::run(&repo, true).unwrap().is_ok());
}

/// A source that lists a folder in whatever order (and with whatever duplicates and hostile
/// names) it was given: the engine must build valid trees from it.
struct UnorderedSource {
    root: Vec<(Vec<u8>, UnorderedKind)>,
}

#[derive(Debug, Clone)]
enum UnorderedKind {
    File(u64, usize),
    Dir,
    Symlink(Vec<u8>),
}

struct MemoryFile {
    data: std::io::Cursor<Vec<u8>>,
}

impl std::io::Read for MemoryFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.data.read(buf)
    }
}

impl SourceFile for MemoryFile {
    fn current_state(&self) -> std::io::Result<(u64, i64, u32)> {
        Ok((self.data.get_ref().len() as u64, 1_700_000_000, 0))
    }
}

impl UnorderedSource {
    /// What the entry named `name` is: the last one listed of that name.
    fn last(&self, name: &[u8]) -> Option<&UnorderedKind> {
        self.root.iter().rev().find(|(n, _)| n == name).map(|(_, k)| k)
    }
}

impl Source for UnorderedSource {
    fn describe(&self) -> String {
        "unordered".into()
    }
    fn send_entries(&self, sink: &mut dyn EntrySink) -> Result<(), SourceError> {
        phonebak::source::walk::send(self, sink)
    }
}

impl ListedSource for UnorderedSource {
    fn root_meta(&self) -> Result<Meta, SourceError> {
        Ok(Meta { mode: 0o755, ..Meta::default() })
    }
    fn list(&self, dir: &Path) -> Result<Listing, SourceError> {
        let meta = Meta { mode: 0o644, mtime_sec: 1_700_000_000, ..Meta::default() };
        let entry = |name: &[u8], kind: &UnorderedKind| phonebak::source::SourceEntry {
            name: name.to_vec(),
            meta: meta.clone(),
            kind: match kind {
                UnorderedKind::File(_, len) => phonebak::source::SourceKind::File { size: *len as u64 },
                UnorderedKind::Dir => phonebak::source::SourceKind::Dir,
                UnorderedKind::Symlink(target) => phonebak::source::SourceKind::Symlink { target: target.clone() },
            },
        };
        let entries = if dir.as_os_str().is_empty() {
            self.root.iter().map(|(name, kind)| entry(name, kind)).collect()
        } else {
            // Every folder holds the same two files, listed backwards and one of them twice.
            vec![
                entry(b"z", &UnorderedKind::File(7, 10)),
                entry(b"a", &UnorderedKind::File(8, 5)),
                entry(b"z", &UnorderedKind::File(7, 10)),
            ]
        };
        Ok(Listing { entries, ..Listing::default() })
    }
    fn open(&self, file: &Path) -> Result<Box<dyn SourceFile>, SourceError> {
        let name = file.as_os_str().as_bytes();
        let (seed, len) = match file.parent().map(|p| p.as_os_str().is_empty()) {
            Some(true) => match self.last(name) {
                Some(UnorderedKind::File(seed, len)) => (*seed, *len),
                _ => unreachable!("only files are opened"),
            },
            _ if file.ends_with("z") => (7, 10),
            _ => (8, 5),
        };
        Ok(Box::new(MemoryFile { data: std::io::Cursor::new(bytes(seed, len, false)) }))
    }
}

fn any_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(0xff), Just(b'.')], 1..3),
        1 => Just(Vec::new()),
        1 => Just(b"..".to_vec()),
        1 => Just(b"a/b".to_vec()),
        1 => Just(b"nul\0".to_vec()),
        1 => Just(vec![b'x'; 256]),
    ]
}

fn any_kind() -> impl Strategy<Value = UnorderedKind> {
    prop_oneof![
        3 => (any::<u64>(), 0usize..5000).prop_map(|(seed, len)| UnorderedKind::File(seed, len)),
        1 => Just(UnorderedKind::Dir),
        1 => any_name().prop_map(UnorderedKind::Symlink),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, .. ProptestConfig::default() })]

    /// Whatever order, duplicates or names a source lists, the snapshot decodes, restores, and
    /// holds exactly the last-listed entry of each storable name.
    #[test]
    fn any_listing_gives_a_snapshot_that_decodes_and_restores(root in proptest::collection::vec((any_name(), any_kind()), 0..20)) {
        let dir = tempfile::tempdir().unwrap();
        let repo = small_repo(&dir.path().join("repo"));
        let source = UnorderedSource { root };
        let outcome = backup::run(&repo, &source, &options("p")).unwrap();
        let tree = phonebak::tree::load_tree(&repo, &outcome.snapshot.root).unwrap();
        let mut valid: Vec<Vec<u8>> = source.root.iter().map(|(n, _)| n.clone()).filter(|n| phonebak::tree::is_valid_name(n)).collect();
        valid.sort();
        valid.dedup();
        let bad_link = |n: &Vec<u8>| matches!(source.last(n), Some(UnorderedKind::Symlink(t)) if !phonebak::tree::is_valid_symlink_target(t));
        let expected: Vec<Vec<u8>> = valid.iter().filter(|n| !bad_link(n)).cloned().collect();
        let names: Vec<Vec<u8>> = tree.entries.iter().map(|e| e.name.clone()).collect();
        prop_assert_eq!(&names, &expected);
        let rejected = source.root.iter().filter(|(n, _)| !phonebak::tree::is_valid_name(n)).count();
        prop_assert_eq!(outcome.unreadable.len(), rejected + valid.iter().filter(|n| bad_link(n)).count());

        let out = dir.path().join("out");
        let start = lookup_path(&repo, &outcome.snapshot.root, Path::new("")).unwrap();
        let report = phonebak::restore::run(&repo, &start, &out, None, false).unwrap();
        prop_assert!(report.failed.is_empty());
        for name in &valid {
            let path = out.join(std::ffi::OsStr::from_bytes(name));
            match source.last(name).unwrap() {
                UnorderedKind::File(seed, len) => prop_assert_eq!(std::fs::read(&path).unwrap(), bytes(*seed, *len, false)),
                UnorderedKind::Dir => {
                    prop_assert_eq!(std::fs::read(path.join("a")).unwrap(), bytes(8, 5, false));
                    prop_assert_eq!(std::fs::read(path.join("z")).unwrap(), bytes(7, 10, false));
                }
                UnorderedKind::Symlink(target) if phonebak::tree::is_valid_symlink_target(target) => {
                    let read = std::fs::read_link(&path).unwrap();
                    prop_assert_eq!(read.as_os_str().as_bytes(), &target[..]);
                }
                UnorderedKind::Symlink(_) => prop_assert!(std::fs::symlink_metadata(&path).is_err()),
            }
        }
    }
}

/// A source of three files whose mtimes are the extremes a crafted archive could carry.
struct ExtremeTimes;

impl Source for ExtremeTimes {
    fn describe(&self) -> String {
        "extreme".into()
    }
    fn send_entries(&self, sink: &mut dyn EntrySink) -> Result<(), SourceError> {
        phonebak::source::walk::send(self, sink)
    }
}

impl ListedSource for ExtremeTimes {
    fn root_meta(&self) -> Result<Meta, SourceError> {
        Ok(Meta { mode: 0o755, ..Meta::default() })
    }
    fn list(&self, _dir: &Path) -> Result<Listing, SourceError> {
        let entry = |name: &str, mtime_sec: i64| phonebak::source::SourceEntry {
            name: name.as_bytes().to_vec(),
            meta: Meta { mode: 0o644, mtime_sec, mtime_nsec: 999_999_999, ..Meta::default() },
            kind: phonebak::source::SourceKind::File { size: 3 },
        };
        let entries = vec![entry("max", i64::MAX), entry("min", i64::MIN), entry("now", 1_700_000_000)];
        Ok(Listing { entries, ..Listing::default() })
    }
    fn open(&self, _file: &Path) -> Result<Box<dyn SourceFile>, SourceError> {
        Ok(Box::new(MemoryFile { data: std::io::Cursor::new(b"abc".to_vec()) }))
    }
}

#[test]
fn the_mount_shows_extreme_times_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let repo = small_repo(&dir.path().join("repo"));
    backup::run(&repo, &ExtremeTimes, &options("p")).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let phonebak = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_phonebak"))
            .args(args)
            .env("PHONEBAK_REPO", dir.path().join("repo"))
            .env("PHONEBAK_PASSWORD", "pw")
            .env("XDG_STATE_HOME", dir.path().join("state"))
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .output()
            .unwrap()
    };
    let mounted = phonebak(&["mount", mnt.to_str().unwrap()]);
    assert!(mounted.status.success(), "{}", String::from_utf8_lossy(&mounted.stderr));
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    let latest = mnt.join("snapshots/p/latest");
    for name in ["max", "min", "now"] {
        assert_eq!(std::fs::read(latest.join(name)).unwrap(), b"abc", "{name}");
        std::fs::metadata(latest.join(name)).unwrap().modified().unwrap();
    }
    let listed = std::process::Command::new("ls").arg("-l").arg(&latest).output().unwrap();
    assert!(listed.status.success());
    // The daemon is still there: a panic would have taken the mount down.
    assert_eq!(std::fs::read(latest.join("now")).unwrap(), b"abc");
    // A restore sets what times the file system can hold, and does not panic on the others.
    let root = lookup_path(&repo, &snapshot::list(&repo).unwrap()[0].snapshot.root, Path::new("")).unwrap();
    let _ = phonebak::restore::run(&repo, &root, &dir.path().join("out"), None, false);
    assert_eq!(std::fs::read(dir.path().join("out/now")).unwrap(), b"abc");
}

/// Stores `plain` as a blob of `kind` and returns its id.
fn store(
    repo: &Repository,
    packer: &mut phonebak::repo::packer::Packer,
    kind: phonebak::repo::BlobKind,
    plain: &[u8],
) -> phonebak::repo::BlobId {
    let id = repo.blob_id(plain);
    packer.add(id, kind, &repo.encode_blob(kind, &id, plain), plain.len() as u32).unwrap();
    id
}

fn save_snapshot(repo: &Repository, root: phonebak::repo::BlobId) {
    save_snapshot_as(repo, "crafted", 1_700_000_000, root);
}

fn save_snapshot_as(repo: &Repository, device: &str, time_s: i64, root: phonebak::repo::BlobId) {
    let snapshot = phonebak::repo::snapshot::Snapshot {
        device: device.into(),
        time_ns: time_s * 1_000_000_000,
        hostname: "h".into(),
        tags: vec![],
        source: "crafted".into(),
        parent: None,
        root,
        stats: Default::default(),
        facts: Default::default(),
        extras: None,
        copied_from: None,
    };
    snapshot::save(repo, &snapshot).unwrap();
}

#[test]
fn crafted_trees_too_deep_or_with_lying_chunk_lengths_are_damage_not_crashes() {
    use phonebak::repo::BlobKind;
    use phonebak::tree::{ChunkRef, Entry, Node, Tree};
    let dir = tempfile::tempdir().unwrap();
    let repo = small_repo(&dir.path().join("repo"));
    let mut packer = phonebak::repo::packer::Packer::new(&repo);
    // Folders nested 30 000 deep: deeper than any file system's paths.
    let mut tree = store(&repo, &mut packer, BlobKind::Tree, &Tree::default().encode());
    for _ in 0..30_000 {
        let entry =
            Entry { name: b"d".to_vec(), meta: Meta { mode: 0o755, ..Meta::default() }, node: Node::Dir { tree } };
        tree = store(&repo, &mut packer, BlobKind::Tree, &Tree { entries: vec![entry] }.encode());
    }
    let deep = tree;
    // A 3-byte chunk that a listing says is 12 bytes long.
    let chunk = store(&repo, &mut packer, BlobKind::Data, b"abc");
    let lying = Entry {
        name: b"lying.txt".to_vec(),
        meta: Meta { mode: 0o644, ..Meta::default() },
        node: Node::File { size: 12, chunks: vec![ChunkRef { id: chunk, len: 12 }] },
    };
    let lying_root = store(&repo, &mut packer, BlobKind::Tree, &Tree { entries: vec![lying] }.encode());
    packer.finish().unwrap();
    save_snapshot(&repo, deep);
    save_snapshot(&repo, lying_root);

    let report = phonebak::check::run(&repo, true).unwrap();
    let all = report.errors.join("\n");
    assert!(all.contains("nested deeper than"), "{all}");
    assert!(all.contains("lying.txt: 1 chunk(s) missing from the repository (or not of the length"), "{all}");

    let start = lookup_path(&repo, &lying_root, Path::new("")).unwrap();
    let restored = phonebak::restore::run(&repo, &start, &dir.path().join("out"), None, false).unwrap();
    assert_eq!(restored.failed.len(), 1, "{:?}", restored.failed);
    assert!(restored.failed[0].1.contains("folder listing says 12"), "{:?}", restored.failed);
    assert!(!dir.path().join("out/lying.txt").exists());

    let mut listed = 0;
    let walked = phonebak::tree::walk(&repo, &deep, &mut |_: &Path,
                                                          _: &phonebak::tree::Entry|
     -> Result<(), phonebak::repo::RepoError> {
        listed += 1;
        Ok(())
    });
    assert!(walked.is_err() && listed <= phonebak::tree::MAX_DEPTH + 1);
    let repaired = phonebak::repair::snapshots(&repo).unwrap();
    assert_eq!(
        repaired.rewritten.len() + repaired.unrecoverable.len(),
        1,
        "the deep one is rewritten without its deep folder"
    );
}

#[test]
fn a_folder_met_too_deep_in_one_snapshot_is_still_whole_in_another() {
    // Met first deep, then near the top; and the other way round.
    for deep_first in [true, false] {
        a_folder_met_too_deep_and_near_the_top(deep_first);
    }
}

fn a_folder_met_too_deep_and_near_the_top(deep_first: bool) {
    use phonebak::repo::BlobKind;
    use phonebak::tree::{ChunkRef, Entry, Node, Tree};
    let dir = tempfile::tempdir().unwrap();
    let repo = small_repo(&dir.path().join("repo"));
    let mut packer = phonebak::repo::packer::Packer::new(&repo);
    let data = store(&repo, &mut packer, BlobKind::Data, b"precious photo");
    let photo = Entry {
        name: b"IMG_1.jpg".to_vec(),
        meta: Meta { mode: 0o644, ..Meta::default() },
        node: Node::File { size: 14, chunks: vec![ChunkRef { id: data, len: 14 }] },
    };
    let camera_tree = store(&repo, &mut packer, BlobKind::Tree, &Tree { entries: vec![photo] }.encode());
    let folder = |name: &[u8], tree| Entry {
        name: name.to_vec(),
        meta: Meta { mode: 0o755, ..Meta::default() },
        node: Node::Dir { tree },
    };
    let dcim_tree =
        store(&repo, &mut packer, BlobKind::Tree, &Tree { entries: vec![folder(b"Camera", camera_tree)] }.encode());
    // The same folder at the deepest a snapshot may nest (what it holds is deeper)...
    let mut deep = dcim_tree;
    for _ in 0..phonebak::tree::MAX_DEPTH {
        deep = store(&repo, &mut packer, BlobKind::Tree, &Tree { entries: vec![folder(b"a", deep)] }.encode());
    }
    // ...and near the top of a phone's snapshot.
    let phone = store(&repo, &mut packer, BlobKind::Tree, &Tree { entries: vec![folder(b"DCIM", dcim_tree)] }.encode());
    packer.finish().unwrap();
    let (deep_time, phone_time) =
        if deep_first { (1_600_000_000i64, 1_700_000_000) } else { (1_700_000_000, 1_600_000_000) };
    save_snapshot_as(&repo, "deep", deep_time, deep);
    save_snapshot_as(&repo, "phone", phone_time, phone);
    let report = phonebak::check::run(&repo, true).unwrap();
    let all = report.errors.join("\n");
    assert!(all.contains("(deep)") && all.contains("nested deeper than"), "{all}");
    assert!(!all.contains("(phone)"), "the phone's snapshot is whole: {all}");
    let repaired = phonebak::repair::snapshots(&repo).unwrap();
    assert!(repaired.rewritten.iter().all(|r| r.2 == "deep"), "{:?}", repaired.rewritten);
    let list = snapshot::list(&repo).unwrap();
    let kept = list.iter().find(|s| s.snapshot.device == "phone").unwrap();
    assert_eq!(kept.snapshot.root, phone, "the phone's snapshot is left as it was");
    let after = phonebak::check::run(&repo, false).unwrap();
    assert!(after.errors.is_empty(), "the deep one is within bounds once repaired: {:?}", after.errors);
}

/// A folder repository whose packs cannot be reached, as a store that went down (or refuses
/// access) after the command read the index: the network fault stands in for what a test
/// cannot time (check, prune and repair against a real store are in tests/object_store.rs).
struct PacksUnreachable(phonebak::repo::storage::folder::Folder);

impl phonebak::repo::Storage for PacksUnreachable {
    fn location(&self) -> String {
        self.0.location()
    }
    fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, phonebak::repo::StorageError> {
        self.refuse(name)?;
        self.0.read(name, limit)
    }
    fn read_range(
        &self,
        name: &str,
        offset: u64,
        len: usize,
        reuse: phonebak::repo::Reuse,
        out: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>, phonebak::repo::StorageError> {
        self.refuse(name)?;
        self.0.read_range(name, offset, len, reuse, out)
    }
    fn size(&self, name: &str) -> Result<u64, phonebak::repo::StorageError> {
        self.0.size(name)
    }
    fn list(&self, dir: &str) -> Result<Vec<phonebak::repo::Object>, phonebak::repo::StorageError> {
        self.0.list(dir)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), phonebak::repo::StorageError> {
        self.0.write(name, bytes)
    }
    fn write_new(&self, name: &str, bytes: &[u8]) -> Result<bool, phonebak::repo::StorageError> {
        self.0.write_new(name, bytes)
    }
    fn upload(&self) -> Result<Box<dyn phonebak::repo::storage::Upload>, phonebak::repo::StorageError> {
        self.0.upload()
    }
    fn delete(&self, name: &str) -> Result<(), phonebak::repo::StorageError> {
        self.0.delete(name)
    }
    fn set_aside(&self, name: &str, to: &str) -> Result<(), phonebak::repo::StorageError> {
        self.0.set_aside(name, to)
    }
    fn create(&self, create_bucket: bool) -> Result<(), phonebak::repo::StorageError> {
        self.0.create(create_bucket)
    }
}

impl PacksUnreachable {
    fn refuse(&self, name: &str) -> Result<(), phonebak::repo::StorageError> {
        if name.starts_with("data/") {
            let why = "connection refused".to_string();
            return Err(phonebak::repo::StorageError::Unreachable { location: self.0.location(), why });
        }
        Ok(())
    }
}

#[test]
fn packs_that_cannot_be_reached_are_never_judged_damaged_nor_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = small_repo(&root);
    let phone = dir.path().join("phone");
    sample_phone(&phone);
    backup::run(&repo, &DirSource::new(&phone).unwrap(), &options("p")).unwrap();
    let packs_before = pack_files(&root);
    let unreachable = std::sync::Arc::new(PacksUnreachable(phonebak::repo::storage::folder::Folder::new(root.clone())));
    let repo = Repository::open(unreachable, || Ok(b"pw".to_vec())).unwrap();
    let said = |e: phonebak::repo::RepoError| {
        assert!(!e.is_corruption(), "{e}");
        assert_eq!(phonebak::exit::for_repo_error(&e), 21, "{e}");
    };
    said(phonebak::check::run(&repo, true).map(|_| ()).unwrap_err());
    said(phonebak::repair::packs(&repo).map(|_| ()).unwrap_err());
    said(phonebak::prune::run(&repo).map(|_| ()).unwrap_err());
    assert_eq!(pack_files(&root), packs_before, "no pack moved aside or deleted");
    assert!(!root.join("damaged").exists());
    let repo = Repository::open_folder(&root, || Ok(b"pw".to_vec())).unwrap();
    assert!(phonebak::check::run(&repo, true).unwrap().errors.is_empty());
}
