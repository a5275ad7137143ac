//! The thin adapter from fuser's `Filesystem` to the `View`: type conversions and errno, no
//! logic. The kernel mount is read-only, so no change ever reaches the daemon (the kernel
//! answers EROFS itself), and the kernel caches attributes as long as they say.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::{Attr, Kind, VfsError, View};

const BLOCK: u32 = 4096;

pub struct FuseView {
    view: Arc<View>,
    /// The kernel can do without OPENDIR (and its RELEASEDIR): it then keeps folder listings
    /// cached across opens by itself, and listing a folder costs one round trip less. Cached
    /// listings are dropped when a folder's mtime changes (FUSE_AUTO_INVAL_DATA), which the
    /// folders that list snapshots do with every backup and forget.
    no_opendir: bool,
    /// The same for files (OPEN, RELEASE): the kernel keeps their pages across opens.
    no_open: bool,
}

impl FuseView {
    pub fn new(view: Arc<View>) -> FuseView {
        FuseView { view, no_opendir: false, no_open: false }
    }
}

fn errno(e: &VfsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// A stored time as the kernel's; one the platform cannot represent shows as the epoch.
fn system_time(sec: i64, nsec: u32) -> SystemTime {
    let nsec = Duration::from_nanos(nsec.min(999_999_999) as u64);
    let time = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    time.and_then(|t| t.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

fn file_attr(attr: &Attr) -> FileAttr {
    let time = system_time(attr.mtime_sec, attr.mtime_nsec);
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: BLOCK,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

impl Filesystem for FuseView {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(nearest);
        }
        if let Err(nearest) = config.set_max_write(1 << 20) {
            let _ = config.set_max_write(nearest);
        }
        // Not FUSE_CACHE_SYMLINKS: the kernel would keep `latest`'s old target after a backup.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        let _ = config.add_capabilities(wanted & config.capabilities());
        let caps = config.capabilities();
        self.no_opendir = caps.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT | InitFlags::FUSE_AUTO_INVAL_DATA);
        self.no_open = caps.contains(InitFlags::FUSE_NO_OPEN_SUPPORT | InitFlags::FUSE_AUTO_INVAL_DATA);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.view.lookup(parent.0, name.as_bytes()) {
            Ok(attr) => reply.entry(&attr.ttl, &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.view.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.view.getattr(ino.0) {
            Ok(attr) => reply.attr(&attr.ttl, &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.view.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        match self.view.open(ino.0, write) {
            // From now on the kernel opens files without asking.
            Ok(()) if self.no_open => reply.error(Errno::ENOSYS),
            // Snapshot files never change: the kernel may keep their pages across opens. Closing
            // one needs no FLUSH round trip (nothing was written).
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.view.read(ino.0, offset, size) {
            Ok(data) => reply.data(data.bytes()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            reply.error(Errno::ENOSYS);
            return;
        }
        // A snapshot's folders never change: the kernel may cache their listings across opens.
        let flags = if self.view.is_immutable(ino.0) {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(0), flags);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.view.readdir(ino.0, offset as usize, false) {
            Ok(rows) => {
                for (position, row) in rows.iter().enumerate() {
                    let next = offset + position as u64 + 1;
                    if reply.add(INodeNo(row.ino), next, file_type(row.attr.kind), OsStr::from_bytes(&row.name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        match self.view.readdir(ino.0, offset as usize, true) {
            Ok(rows) => {
                let mut pushes = Vec::new();
                for (position, row) in rows.into_iter().enumerate() {
                    let next = offset + position as u64 + 1;
                    let attr = file_attr(&row.attr);
                    if reply.add(
                        INodeNo(row.ino),
                        next,
                        OsStr::from_bytes(&row.name),
                        &row.attr.ttl,
                        &attr,
                        Generation(0),
                    ) {
                        break;
                    }
                    // The kernel holds a reference to every row it took, except `.` and `..`.
                    if row.name != b"." && row.name != b".." {
                        pushes.extend(self.view.push_job(&row));
                        self.view.remember(ino.0, row);
                    }
                }
                reply.ok();
                self.view.push_contents(pushes);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (stored, free) = self.view.space();
        let blocks = (stored + free) / BLOCK as u64;
        let free_blocks = free / BLOCK as u64;
        reply.statfs(blocks, free_blocks, free_blocks, 0, 0, BLOCK, 255, BLOCK);
    }

    /// No extended attributes anywhere: ENOSYS tells the kernel once for all, and it answers
    /// "not supported" itself from then on. Otherwise `ls -l` asks for `security.selinux` (and
    /// `cp -a` for ACLs) on every file, a round trip each.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.view.getattr(ino.0) {
            Ok(_) if size == 0 => reply.size(0),
            Ok(_) => reply.data(&[]),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.view.getattr(ino.0) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
