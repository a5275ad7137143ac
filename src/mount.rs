//! Mounting: `-o` options as mount(8) passes them, the checks made before the mount (so their
//! errors reach the user, not a daemon's log), daemonizing, and the FUSE session.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::repo::Repository;
use crate::state::LocalState;
use crate::vfs::fuse::FuseView;
use crate::vfs::{View, ViewOptions};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("unknown mount option {0:?}")]
    UnknownOption(String),
    #[error("mount option {option:?}: {why}")]
    BadValue { option: String, why: String },
    #[error("mountpoint {0}: {1}")]
    Mountpoint(PathBuf, String),
    #[error("staging folder {0}: {1}")]
    Staging(PathBuf, std::io::Error),
    #[error("mounting {0}: {1}")]
    Mount(PathBuf, std::io::Error),
    #[error("the mount daemon failed: {0}")]
    Daemon(String),
}

/// What `-o` can say.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    pub cache_bytes: usize,
    pub password_file: Option<PathBuf>,
    /// The folder `restore/` links to (this user's staging folder for the repository if not given).
    pub staging: Option<PathBuf>,
    /// `ro`: no `restore/` either, nothing in the mount leads to a writable folder.
    pub read_only: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub threads: usize,
    /// A file for the daemon's log lines (damaged data, errors); syslog otherwise.
    pub log: Option<PathBuf>,
    /// An object store's local cache: its folder, and the most bytes it may hold (0: none).
    pub cache_dir: Option<PathBuf>,
    pub disk_cache_bytes: Option<u64>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            cache_bytes: 256 << 20,
            password_file: None,
            staging: None,
            read_only: false,
            allow_other: false,
            allow_root: false,
            uid: None,
            gid: None,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            log: None,
            cache_dir: None,
            disk_cache_bytes: None,
        }
    }
}

/// Options that mount(8) or fstab may pass and that mean nothing here (or are implied).
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "exec",
    "noexec",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "sync",
    "async",
    "silent",
    "loud",
    "comment",
];

fn parse_size(option: &str, text: &str) -> Result<usize, MountError> {
    let bad = |why: &str| MountError::BadValue { option: option.into(), why: why.into() };
    let (digits, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, ""), |at| text.split_at(at));
    let number: usize = digits.parse().map_err(|_| bad("expected a size such as 512M"))?;
    let shift = match unit.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(bad("the unit must be K, M or G")),
    };
    number.checked_mul(1 << shift).filter(|&n| n >= 1 << 20).ok_or_else(|| bad("must be at least 1M"))
}

fn parse_number<T: std::str::FromStr>(option: &str, text: &str) -> Result<T, MountError> {
    text.parse().map_err(|_| MountError::BadValue { option: option.into(), why: format!("{text:?} is not a number") })
}

/// Parses `-o` lists (each may hold several comma-separated options).
pub fn parse_options(lists: &[String]) -> Result<MountOptions, MountError> {
    let mut options = MountOptions::default();
    for item in lists.iter().flat_map(|list| list.split(',')).filter(|s| !s.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let value_of = || value.ok_or_else(|| MountError::BadValue { option: key.into(), why: "needs a value".into() });
        match key {
            "cache_size" => options.cache_bytes = parse_size(key, value_of()?)?,
            "cache_dir" => options.cache_dir = Some(PathBuf::from(value_of()?)),
            "disk_cache_size" => {
                let value = value_of()?;
                options.disk_cache_bytes = Some(if value == "0" { 0 } else { parse_size(key, value)? as u64 });
            }
            "password_file" => options.password_file = Some(PathBuf::from(value_of()?)),
            "staging" => options.staging = Some(PathBuf::from(value_of()?)),
            "log" => options.log = Some(PathBuf::from(value_of()?)),
            "uid" => options.uid = Some(parse_number(key, value_of()?)?),
            "gid" => options.gid = Some(parse_number(key, value_of()?)?),
            "threads" => {
                options.threads = parse_number(key, value_of()?)?;
                if !(1..=64).contains(&options.threads) {
                    return Err(MountError::BadValue { option: key.into(), why: "must be 1 to 64".into() });
                }
            }
            "ro" => options.read_only = true,
            "rw" => options.read_only = false,
            "allow_other" => options.allow_other = true,
            "allow_root" => options.allow_root = true,
            _ if IGNORED.contains(&key) || key.starts_with("x-") => {}
            _ => return Err(MountError::UnknownOption(item.to_string())),
        }
    }
    Ok(options)
}

/// The mountpoint must be an existing folder with nothing mounted on it.
pub fn check_mountpoint(path: &Path) -> Result<(), MountError> {
    let fail = |why: String| MountError::Mountpoint(path.to_path_buf(), why);
    let meta = std::fs::metadata(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTCONN) => fail("a mount whose daemon is gone is still there: run `fusermount3 -u` on it".into()),
        _ => fail(e.to_string()),
    })?;
    if !meta.is_dir() {
        return Err(fail("not a folder".into()));
    }
    let parent = std::fs::metadata(path.join("..")).map_err(|e| fail(e.to_string()))?;
    if parent.dev() != meta.dev() || parent.ino() == meta.ino() {
        return Err(fail("something is already mounted there".into()));
    }
    Ok(())
}

/// The staging folder that `restore/` links to, as an absolute path: `-o staging=DIR`, or the
/// user's own for this repository (see `state`; made on first use, mode 0700). Where that
/// cannot be made, the repository is mounted without `restore/`, with a warning; a folder asked
/// for must work. `-o ro` mounts without `restore/`.
pub fn find_staging(state: &LocalState, options: &MountOptions) -> Result<Option<PathBuf>, MountError> {
    if options.read_only {
        return Ok(None);
    }
    if let Some(dir) = &options.staging {
        return usable_staging(dir).map(Some).map_err(|e| MountError::Staging(dir.clone(), e));
    }
    let dir = state.staging();
    match usable_staging(&dir).and_then(|dir| keep_staging_private(&dir).map(|()| dir)) {
        Ok(dir) => Ok(Some(dir)),
        Err(e) => {
            crate::tell!("phonebak: warning: mounting without restore/: staging folder {}: {e}", dir.display());
            Ok(None)
        }
    }
}

/// Puts the repository's own staging folder back to 0700 if something opened it up: `rsync -a`
/// of a snapshot into `restore/` gives it the snapshot folder's mode (0755), and what is staged
/// is the user's private data. A folder named with `-o staging=DIR` keeps the mode it was given.
pub fn keep_staging_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        crate::tell!(
            "phonebak: warning: the staging folder {} was open to others (mode {:o}); made private again (0700)",
            dir.display(),
            mode & 0o777
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// `dir`, made if missing, checked to be a folder this user can write in, and resolved (the
/// link in the mount must not depend on the daemon's working directory).
fn usable_staging(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new().mode(0o700).recursive(true).create(dir)?;
    }
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: `path` is NUL-terminated.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::fs::canonicalize(dir)
}

/// Where the daemon's log lines go.
pub fn logger(foreground: bool, file: Option<PathBuf>) -> Box<dyn Fn(&str) + Send + Sync> {
    if let Some(file) = file {
        return Box::new(move |line| {
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&file) {
                let _ = writeln!(f, "{} {line}", chrono::Local::now().format("%Y-%m-%dT%H:%M:%S"));
            }
        });
    }
    if foreground {
        return Box::new(|line| crate::tell!("{line}"));
    }
    Box::new(|line| {
        if let Ok(text) = CString::new(line.replace('%', "%%")) {
            // SAFETY: both strings are NUL-terminated; the format has one %s for one argument.
            unsafe { libc::syslog(libc::LOG_ERR | libc::LOG_DAEMON, c"%s".as_ptr(), text.as_ptr()) };
        }
    })
}

/// Mounts and serves until unmounted (`umount`, `fusermount3 -u`, or SIGINT/SIGTERM/SIGHUP).
/// `ready` is told once the mount exists, or why it could not be made.
pub fn serve(
    repo: Repository,
    staging: Option<PathBuf>,
    mountpoint: &Path,
    options: &MountOptions,
    log: Box<dyn Fn(&str) + Send + Sync>,
    ready: impl FnOnce(Result<(), String>),
) -> Result<(), MountError> {
    limit_allocator_caching();
    // Before any thread starts (the view's prefetchers too): every thread inherits the mask, so
    // only the waiting thread below ever receives these signals.
    block_stop_signals();
    let source = match repo.local_folder() {
        Some(root) => std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()).display().to_string(),
        None => repo.location(),
    };
    // Resolved before mounting: once mounted, looking at the mountpoint may wait for this daemon.
    let mountpoint_resolved = mountpoint.canonicalize().unwrap_or_else(|_| mountpoint.to_path_buf());
    let view_options = ViewOptions { cache_bytes: options.cache_bytes, uid: options.uid, gid: options.gid, staging };
    // Damage met while serving (a skipped snapshot record, an index file set aside) is logged.
    let log: Arc<dyn Fn(&str) + Send + Sync> = Arc::from(log);
    let warn_log = log.clone();
    let (storage, end_log) = (repo.storage().clone(), log.clone());
    repo.warnings().send_to(Box::new(move |line| warn_log(&format!("warning: {line}"))));
    let view = Arc::new(View::new(Arc::new(repo), view_options, Box::new(move |line| log(line))));
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(source),
        fuser::MountOption::Subtype("phonebak".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        // Read-only at the kernel: besides refusing changes itself, the kernel then keeps
        // cached attributes after reads and listings (on a writable FUSE mount it drops each
        // inode's atime and asks again on the next stat, which made `find` 2.4x slower).
        fuser::MountOption::RO,
    ];
    config.acl = if options.allow_other {
        fuser::SessionACL::All
    } else if options.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    config.n_threads = Some(options.threads);
    config.clone_fd = true;
    let mut session = match fuser::Session::new(FuseView::new(view.clone()), mountpoint, &config) {
        Ok(session) => session,
        Err(e) => {
            ready(Err(e.to_string()));
            return Err(MountError::Mount(mountpoint.to_path_buf(), e));
        }
    };
    raise_kernel_readahead(&mountpoint_resolved);
    let notifier = session.notifier();
    // A push that fails (the kernel does not know the inode) only means a read as usual.
    view.set_pusher(Box::new(move |ino, data| {
        let _ = notifier.store(fuser::INodeNo(ino), 0, data);
    }));
    let mut unmounter = session.unmount_callable();
    std::thread::spawn(move || {
        wait_for_stop_signal();
        let _ = unmounter.unmount();
    });
    ready(Ok(()));
    let served = session.run().map_err(|e| MountError::Mount(mountpoint.to_path_buf(), e));
    if let Some(t) = storage.traffic() {
        end_log(&format!(
            "unmounted; the object store was asked {} requests, {} bytes in, {} bytes out",
            t.requests, t.bytes_in, t.bytes_out
        ));
    }
    served
}

/// The kernel reads ahead of a sequential reader by at most its `read_ahead_kb` for this mount
/// (128 KiB by default for FUSE), whatever `max_readahead` says. 4 MiB keeps a few 1 MiB read
/// requests in flight per file, which read photos and videos about 15% faster here. Writing
/// the setting needs root; without it the default stays. The mount's device numbers come from
/// /proc/self/mountinfo because a stat of the mountpoint would wait for this very daemon.
/// `mountpoint` is the resolved path (mountinfo lists those).
fn raise_kernel_readahead(mountpoint: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let device = info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.len() > 4 && Path::new(fields[4]) == mountpoint).then(|| fields[2].to_string())
    });
    if let Some(device) = device {
        let _ = std::fs::write(format!("/sys/class/bdi/{device}/read_ahead_kb"), "4096");
    }
}

/// Chunks are megabytes each and come and go all the time: with glibc's defaults, freed ones
/// linger in per-thread arenas and the daemon's memory grows far past `cache_size`. Large
/// buffers are mapped and unmapped instead, and arenas kept few.
fn limit_allocator_caching() {
    // SAFETY: mallopt only tunes the allocator; called before the daemon's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocked in every thread, so only the waiting thread receives them.
fn block_stop_signals() {
    let set = stop_signals();
    // SAFETY: `set` is a valid signal set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

fn wait_for_stop_signal() {
    let set = stop_signals();
    let mut signal = 0;
    // SAFETY: `set` is valid and `signal` a valid out-pointer.
    unsafe { libc::sigwait(&set, &mut signal) };
}

/// Forks: the parent waits until the child reports the mount ready (or why not) and returns;
/// the child detaches and runs `work`, which must call its `ready` argument.
/// Call before any thread is started: only the calling thread survives a fork.
pub fn daemonize<W>(work: W) -> Result<(), MountError>
where
    W: FnOnce(Box<dyn FnOnce(Result<(), String>)>) -> Result<(), MountError>,
{
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(MountError::Daemon(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other threads exist yet (see above); the child only continues this thread.
    match unsafe { libc::fork() } {
        -1 => Err(MountError::Daemon(std::io::Error::last_os_error().to_string())),
        0 => {
            drop(reader);
            // SAFETY: setsid has no preconditions; it detaches from the terminal's session.
            unsafe { libc::setsid() };
            let mut writer = Some(std::fs::File::from(writer));
            let ready = Box::new(move |outcome: Result<(), String>| {
                if let Some(mut pipe) = writer.take() {
                    let _ = pipe.write_all(
                        match &outcome {
                            Ok(()) => b"ok".to_vec(),
                            Err(why) => why.as_bytes().to_vec(),
                        }
                        .as_slice(),
                    );
                }
                if outcome.is_ok() {
                    detach_stdio();
                }
            });
            let code = if work(ready).is_ok() { 0 } else { 1 };
            std::process::exit(code);
        }
        _child => {
            drop(writer);
            let mut answer = String::new();
            let _ = std::fs::File::from(reader).read_to_string(&mut answer);
            match answer.as_str() {
                "ok" => Ok(()),
                "" => Err(MountError::Daemon("it exited before the mount was ready".into())),
                why => Err(MountError::Daemon(why.to_string())),
            }
        }
    }
}

fn detach_stdio() {
    let null = CString::new(Path::new("/dev/null").as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: opening /dev/null and duplicating it over 0, 1 and 2 is always valid.
    unsafe {
        let fd = libc::open(null.as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            for target in 0..3 {
                libc::dup2(fd, target);
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_as_mount_passes_them() {
        let o = parse_options(&[
            "rw,noauto,cache_size=512M,password_file=/etc/p.pw,uid=1000,x-systemd.automount".into(),
            "threads=4".into(),
        ])
        .unwrap();
        assert_eq!(o.cache_bytes, 512 << 20);
        assert_eq!(o.password_file, Some(PathBuf::from("/etc/p.pw")));
        assert_eq!((o.uid, o.threads), (Some(1000), 4));
        assert_eq!(parse_options(&["cache_size=2G".into()]).unwrap().cache_bytes, 2 << 30);
        assert!(matches!(parse_options(&["frobnicate".into()]), Err(MountError::UnknownOption(_))));
        assert!(matches!(parse_options(&["cache_size=lots".into()]), Err(MountError::BadValue { .. })));
        assert!(matches!(parse_options(&["cache_size=10K".into()]), Err(MountError::BadValue { .. })));
        assert!(matches!(parse_options(&["uid".into()]), Err(MountError::BadValue { .. })));
        assert!(matches!(parse_options(&["threads=0".into()]), Err(MountError::BadValue { .. })));
    }

    #[test]
    fn mountpoints_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_mountpoint(dir.path()).is_ok());
        assert!(check_mountpoint(&dir.path().join("missing")).is_err());
        std::fs::write(dir.path().join("file"), b"").unwrap();
        assert!(check_mountpoint(&dir.path().join("file")).is_err());
        assert!(check_mountpoint(Path::new("/proc")).is_err(), "/proc is a mount");
    }
}
