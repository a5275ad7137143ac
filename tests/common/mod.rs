//! Helpers shared by the integration tests: a scratch folder with a repository, the real
//! `phonebak` binary, and exact tree comparison.
#![allow(dead_code)]

pub mod seaweed;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
}

impl Scratch {
    /// A scratch folder, and where its repository goes: `repo/` in it, or, when the suite runs
    /// against the object store (PHONEBAK_TEST_STORE=s3, as scripts/test.sh does for the suites
    /// that apply to both), a prefix of its own in the test server's bucket.
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = match std::env::var("PHONEBAK_TEST_STORE").as_deref() {
            Ok("s3") => PathBuf::from(seaweed::shared().new_repo("repo")),
            Ok(other) if !other.is_empty() && other != "folder" => panic!("PHONEBAK_TEST_STORE={other}: s3 or folder"),
            _ => dir.path().join("repo"),
        };
        Scratch { dir, repo }
    }

    /// A scratch folder with an encrypted repository in it.
    pub fn with_repo() -> Scratch {
        let s = Scratch::new();
        s.ok(&["init"]);
        s
    }

    /// A scratch folder for a repository in a new bucket of the test process's SeaweedFS
    /// server (not made yet: `init --create-bucket` makes it).
    pub fn on_object_store() -> Scratch {
        let dir = tempfile::tempdir().expect("temp dir");
        Scratch { dir, repo: PathBuf::from(seaweed::shared().new_repo("family")) }
    }

    /// An encrypted repository in a new bucket of the test process's SeaweedFS server.
    pub fn with_object_store_repo() -> Scratch {
        let s = Scratch::on_object_store();
        s.ok(&["init", "--create-bucket"]);
        s
    }

    /// Is the repository in an object store?
    pub fn on_s3(&self) -> bool {
        self.repo.to_str().is_some_and(|r| r.starts_with("s3:"))
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_phonebak"));
        cmd.args(args)
            .env("PHONEBAK_REPO", &self.repo)
            .env("PHONEBAK_PASSWORD", PASSWORD)
            .env_remove("PHONEBAK_PASSWORD_FILE");
        self.isolate(&mut cmd);
        cmd.env("AWS_ACCESS_KEY_ID", seaweed::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", seaweed::SECRET_KEY)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE");
        cmd
    }

    /// Points `cmd`'s per-user state and cache folders (XDG) into this scratch folder: a test
    /// never writes to the user's own.
    pub fn isolate<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("XDG_STATE_HOME", self.path("state")).env("XDG_CACHE_HOME", self.path("cache"))
    }

    /// This user's state folder for the scratch repository (staging, push journals).
    pub fn state_dir(&self) -> PathBuf {
        if self.on_s3() {
            let made = std::fs::read_dir(self.path("state/phonebak")).map(|d| d.flatten().map(|e| e.path()).collect());
            let made: Vec<PathBuf> = made.unwrap_or_default();
            assert!(made.len() <= 1, "one repository's state: {made:?}");
            // None made yet: a folder that does not exist.
            return made.first().cloned().unwrap_or_else(|| self.path("state/phonebak/not-made-yet"));
        }
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.repo.join("config")).expect("a repository config")).unwrap();
        self.path("state/phonebak").join(config["repository_id"].as_str().expect("a repository id"))
    }

    /// The staging folder behind the mount's `restore/`.
    pub fn staging(&self) -> PathBuf {
        self.state_dir().join("staging")
    }

    /// Where push journals and push locks are.
    pub fn journals(&self) -> PathBuf {
        self.state_dir().join("push-journal")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("phonebak runs")
    }

    /// Runs and insists on exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "phonebak {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).expect("valid json")
    }
}

pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Everything observable about one path: type, mode, owner, size, mtime (ns), link target and
/// a hash of the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    target: Option<OsString>,
    content: Option<[u8; 32]>,
}

impl Observed {
    pub fn is_file(&self) -> bool {
        self.kind == 'f'
    }

    /// What any device keeps: type, size, mtime, content, link target (not mode or owner).
    pub fn content_and_mtime(&self) -> Observed {
        Observed { mode: 0, uid: 0, gid: 0, ..self.clone() }
    }

    /// As a format that keeps whole seconds (ustar, GNU tar) keeps it.
    pub fn in_whole_seconds(&self) -> Observed {
        Observed { mtime: (self.mtime.0, 0), ..self.clone() }
    }

    pub fn same_but_mtime(&self, other: &Observed) -> bool {
        Observed { mtime: other.mtime, ..self.clone() } == *other
    }
}

/// Describes a tree exactly; the root folder's own metadata is left out (a restore target keeps
/// its own).
pub fn describe(root: &Path) -> BTreeMap<PathBuf, Observed> {
    let mut out = BTreeMap::new();
    describe_into(root, Path::new(""), &mut out);
    out
}

fn describe_into(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Observed>) {
    let mut names: Vec<_> =
        std::fs::read_dir(root.join(rel)).expect("readable").map(|e| e.unwrap().file_name()).collect();
    names.sort();
    for name in names {
        let path = rel.join(&name);
        let full = root.join(&path);
        let meta = std::fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("lstat {}: {e}", full.display()));
        let kind = if meta.is_dir() {
            'd'
        } else if meta.file_type().is_symlink() {
            'l'
        } else {
            'f'
        };
        let observed = Observed {
            kind,
            mode: if kind == 'l' { 0 } else { meta.permissions().mode() & 0o7777 },
            uid: meta.uid(),
            gid: meta.gid(),
            size: if kind == 'f' { meta.len() } else { 0 },
            mtime: (meta.mtime(), meta.mtime_nsec()),
            target: (kind == 'l').then(|| std::fs::read_link(&full).unwrap().into_os_string()),
            content: (kind == 'f').then(|| *blake3::hash(&std::fs::read(&full).unwrap()).as_bytes()),
        };
        out.insert(path.clone(), observed);
        if kind == 'd' {
            describe_into(root, &path, out);
        }
    }
}

pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let (a, b) = (describe(expected), describe(actual));
    for (path, want) in &a {
        assert_eq!(b.get(path), Some(want), "{} differs", path.display());
    }
    assert_eq!(a.len(), b.len(), "extra paths in {}", actual.display());
}

/// Like `assert_same_tree`, but owners may differ (a phone's files belong to the phone).
pub fn assert_same_tree_but_owner(expected: &Path, actual: &Path) {
    let (a, b) = (describe(expected), describe(actual));
    for (path, want) in &a {
        let got = b.get(path).unwrap_or_else(|| panic!("{} is missing from {}", path.display(), actual.display()));
        assert_eq!(Observed { uid: want.uid, gid: want.gid, ..got.clone() }, *want, "{} differs", path.display());
    }
    assert_eq!(a.len(), b.len(), "extra paths in {}", actual.display());
}

pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec { tv_sec: sec, tv_nsec: nsec };
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0);
}

/// Deterministic bytes: `compressible` ones are text-like, the others look random.
pub fn bytes(seed: u64, len: usize, compressible: bool) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if compressible {
                b"phonebak keeps every photo "[(i + (state as usize % 3)) % 27]
            } else {
                state as u8
            }
        })
        .collect()
}

pub fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A phone-like tree with every kind of entry the format must keep exactly.
pub fn sample_phone(root: &Path) {
    write(&root.join("DCIM/Camera/IMG_0001.jpg"), &bytes(1, 3_000_000, false));
    write(&root.join("DCIM/Camera/IMG_0002.jpg"), &bytes(2, 700_000, false));
    write(&root.join("Documents/notes.txt"), &bytes(3, 120_000, true));
    write(&root.join("Documents/empty.txt"), b"");
    write(&root.join("Android/data/com.app/cache/a.json"), &bytes(4, 5_000, true));
    std::fs::create_dir_all(root.join("Download/empty-folder")).unwrap();
    let odd = std::ffi::OsStr::from_bytes_lossless(b"caf\xe9 \xff.txt");
    write(&root.join("Documents").join(odd), b"latin-1 name");
    std::os::unix::fs::symlink("../DCIM/Camera", root.join("Download/camera")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("Download/dangling")).unwrap();
    std::fs::set_permissions(root.join("Documents/notes.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(root.join("DCIM/Camera/IMG_0002.jpg"), std::fs::Permissions::from_mode(0o4751)).unwrap();
    set_mtime(&root.join("DCIM/Camera/IMG_0001.jpg"), 1_700_000_000, 123_456_789);
    set_mtime(&root.join("Download/camera"), 1_600_000_000, 5);
    set_mtime(&root.join("Download/empty-folder"), 1_650_000_000, 999_999_999);
    if is_root() {
        std::os::unix::fs::lchown(root.join("Documents/empty.txt"), Some(1234), Some(5678)).unwrap();
    }
}

trait FromBytesLossless {
    fn from_bytes_lossless(bytes: &[u8]) -> &std::ffi::OsStr;
}

impl FromBytesLossless for std::ffi::OsStr {
    fn from_bytes_lossless(bytes: &[u8]) -> &std::ffi::OsStr {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(bytes)
    }
}

/// Every pack file of a repository, sorted.
pub fn pack_files(repo: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for sub in std::fs::read_dir(repo.join("data")).unwrap() {
        for pack in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            all.push(pack.unwrap().path());
        }
    }
    all.sort();
    all
}

/// Flips one bit in the middle of the repository's largest pack (its data pack).
pub fn damage_largest_pack(repo: &Path, at: usize) {
    let pack = pack_files(repo).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut content = std::fs::read(&pack).unwrap();
    content[at] ^= 0x40;
    std::fs::write(&pack, content).unwrap();
}

/// A mounted repository, unmounted (and its daemon checked gone) on drop.
pub struct Mounted {
    pub point: PathBuf,
}

impl Mounted {
    pub fn new(s: &Scratch, extra: &[&str]) -> Mounted {
        let point = s.path("mnt");
        std::fs::create_dir_all(&point).unwrap();
        let mut args = vec!["mount", point.to_str().unwrap()];
        args.extend_from_slice(extra);
        s.ok(&args);
        Mounted { point }
    }

    pub fn snapshots(&self) -> PathBuf {
        self.point.join("snapshots")
    }

    pub fn restore(&self) -> PathBuf {
        self.point.join("restore")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.point).status();
    }
}

/// The names in folder `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut all: Vec<_> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    all.sort();
    all
}

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if cmdline.split(|b| *b == 0).any(|arg| arg == needle.as_os_str().as_bytes()) && pid != std::process::id() {
                found.push(pid);
            }
        }
    }
    found
}

pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn copy_tree(from: &Path, to: &Path) {
    assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
}

/// Runs `phonebak` and fails the test if it has not ended within a minute (a hang).
pub fn run_bounded(s: &Scratch, args: &[&str]) -> Output {
    let mut child =
        s.command(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("phonebak {args:?} hung for a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Every file (not folder) anywhere under `root`. A folder removed while it is listed (by the
/// program a test watches) holds nothing.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return all,
        other => other.unwrap(),
    };
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        if path.is_dir() {
            all.extend(files_under(&path));
        } else {
            all.push(path);
        }
    }
    all
}

/// A small tmpfs mounted on a scratch folder, unmounted on drop.
pub struct SmallDisk(pub std::path::PathBuf);

impl SmallDisk {
    pub fn mount(at: &std::path::Path, size: &str) -> SmallDisk {
        assert!(is_root(), "needs root to mount a small tmpfs (CI runs as root)");
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success());
        SmallDisk(at.to_path_buf())
    }

    pub fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
