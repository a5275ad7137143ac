//! The thin adapter from fuser's `Filesystem` to the `View`: type conversions and errno, no
//! logic. Changes are passed on to the staging side (`restore/`); elsewhere they answer EROFS.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};

use super::{is_staged, Attr, AttrChange, Caller, Kind, Staging, VfsError, View};

const BLOCK: u32 = 4096;

type HeldBacking = std::collections::HashMap<u64, (fuser::BackingId, u32)>;

pub struct FuseView {
    view: Arc<View>,
    /// The kernel can do without OPENDIR (and its RELEASEDIR): it then keeps folder listings
    /// cached across opens by itself, and listing a folder costs one round trip less. Cached
    /// listings are dropped when a folder's mtime changes (FUSE_AUTO_INVAL_DATA), which the
    /// folders that list snapshots do with every backup and forget.
    no_opendir: bool,
    /// The same for files (OPEN, RELEASE), except with passthrough: a file the kernel opened
    /// without asking cannot be open at the same time as a passthrough one (EIO), so then
    /// every open is asked for, and every open of a staged file is passthrough.
    no_open: bool,
    /// Files made in `restore/` are read and written by the kernel itself, on the staging
    /// folder's file (FUSE passthrough), instead of through this daemon.
    passthrough: bool,
    /// The kernel's id of each passthrough file and how many opens use it, until released.
    backing: std::sync::Mutex<HeldBacking>,
}

impl FuseView {
    /// `passthrough`: whether staged files may use kernel passthrough (when root).
    pub fn new(view: Arc<View>, passthrough: bool) -> FuseView {
        FuseView { view, no_opendir: false, no_open: false, passthrough, backing: Default::default() }
    }

    /// Opens a staged file: passthrough when possible.
    fn open_staged(&self, ino: u64, reply: ReplyOpen) {
        if self.passthrough {
            let mut held = self.backing.lock().expect("backing lock");
            if let Some((backing, opens)) = self.backing_for(&mut held, ino, |f| reply.open_backing(f)) {
                *opens += 1;
                return reply.opened_passthrough(FileHandle(0), FopenFlags::empty(), backing);
            }
        }
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    /// The kernel's id for staged file `ino`, registered on its first open: every open of one
    /// file must use the same id.
    fn backing_for<'m>(
        &self,
        held: &'m mut HeldBacking,
        ino: u64,
        register: impl FnOnce(&File) -> std::io::Result<fuser::BackingId>,
    ) -> Option<&'m mut (fuser::BackingId, u32)> {
        match held.entry(ino) {
            std::collections::hash_map::Entry::Occupied(known) => Some(known.into_mut()),
            std::collections::hash_map::Entry::Vacant(new) => {
                let file = self.view.staged().ok()?.open_file(ino)?;
                Some(new.insert((register(&file).ok()?, 0)))
            }
        }
    }

    /// Copies into `restore/` at close to local speed. By default the writeback cache: the
    /// kernel gathers writes and sends them 1 MiB at a time (`cp` writes 128 KiB at a time, and
    /// a round trip each made staging a third of local copy speed). With `-o passthrough` (and
    /// root, and a kernel with it), the kernel writes staged files' data straight to the
    /// staging folder instead; the two cannot be combined.
    fn speed_up_staging(&mut self, config: &mut KernelConfig) {
        let Ok(staging) = self.view.staged() else { return };
        if !staging.wants_writeback() {
            return;
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let passthrough = InitFlags::FUSE_PASSTHROUGH;
        let wanted = std::mem::take(&mut self.passthrough);
        if wanted && root && config.capabilities().contains(passthrough) && config.set_max_stack_depth(1).is_ok() {
            self.passthrough = config.add_capabilities(passthrough).is_ok();
        }
        let writeback = InitFlags::FUSE_WRITEBACK_CACHE;
        if !self.passthrough && config.capabilities().contains(writeback) && config.add_capabilities(writeback).is_ok()
        {
            staging.set_writeback();
        }
    }

    /// The staging side, for a change to `ino` (or in folder `ino`): changes elsewhere are
    /// refused, snapshots being read-only.
    fn staging(&self, ino: u64) -> Result<&Staging, VfsError> {
        if is_staged(ino) {
            self.view.staged()
        } else {
            Err(VfsError::ReadOnly)
        }
    }
}

fn errno(e: &VfsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn system_time(sec: i64, nsec: u32) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
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

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid() }
}

fn timespec(time: TimeOrNow) -> libc::timespec {
    match time {
        TimeOrNow::Now => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        TimeOrNow::SpecificTime(time) => {
            let (sec, nsec) = match time.duration_since(UNIX_EPOCH) {
                Ok(after) => (after.as_secs() as i64, after.subsec_nanos()),
                Err(before) => {
                    let before = before.duration();
                    let sec = -(before.as_secs() as i64);
                    if before.subsec_nanos() == 0 {
                        (sec, 0)
                    } else {
                        (sec - 1, 1_000_000_000 - before.subsec_nanos())
                    }
                }
            };
            libc::timespec { tv_sec: sec, tv_nsec: nsec as libc::c_long }
        }
    }
}

fn entry(reply: ReplyEntry, made: Result<Attr, VfsError>) {
    match made {
        Ok(attr) => reply.entry(&attr.ttl, &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn empty_dir(reply: ReplyDirectory, done: Result<(), VfsError>) {
    match done {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn empty(reply: ReplyEmpty, done: Result<(), VfsError>) {
    match done {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
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
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        let _ = config.add_capabilities(wanted & config.capabilities());
        self.speed_up_staging(config);
        let caps = config.capabilities();
        self.no_opendir = caps.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT | InitFlags::FUSE_AUTO_INVAL_DATA);
        self.no_open =
            caps.contains(InitFlags::FUSE_NO_OPEN_SUPPORT | InitFlags::FUSE_AUTO_INVAL_DATA) && !self.passthrough;
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
            // From now on the kernel opens files without asking (writes still get EROFS).
            Ok(()) if self.no_open => reply.error(Errno::ENOSYS),
            Ok(()) if is_staged(ino.0) => self.open_staged(ino.0, reply),
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
        if is_staged(ino.0) {
            let listed = self.view.staged().and_then(|staging| {
                staging.readdir(ino.0, offset, |row| {
                    reply.add(INodeNo(row.ino), row.next, file_type(row.kind), OsStr::from_bytes(&row.name))
                })
            });
            return empty_dir(reply, listed);
        }
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
        if is_staged(ino.0) {
            let listed = self.view.staged().and_then(|staging| {
                staging.readdir(ino.0, offset, |row| {
                    let dot = row.name == b"." || row.name == b"..";
                    // Every other row the kernel takes counts as a lookup.
                    let found = if dot { staging.getattr(ino.0) } else { staging.lookup(ino.0, &row.name) };
                    let Ok(attr) = found else { return false }; // gone since the listing: skip it
                    let full = reply.add(
                        INodeNo(attr.ino),
                        row.next,
                        OsStr::from_bytes(&row.name),
                        &attr.ttl,
                        &file_attr(&attr),
                        Generation(0),
                    );
                    if full && !dot {
                        staging.forget(attr.ino, 1);
                    }
                    full
                })
            });
            return match listed {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            };
        }
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

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let (stored, free) = self.view.space(ino.0);
        let blocks = (stored + free) / BLOCK as u64;
        let free_blocks = free / BLOCK as u64;
        reply.statfs(blocks, free_blocks, free_blocks, 0, 0, BLOCK, 255, BLOCK);
    }

    /// No extended attributes anywhere: ENOSYS tells the kernel once for all, and it answers
    /// "not supported" itself from then on. Otherwise it asks for `security.capability` before
    /// every write (and `ls -l` for `security.selinux` on every file), a round trip each.
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
            Ok(_) if mask.contains(AccessFlags::W_OK) && !is_staged(ino.0) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    // Changes: passed on to the staging folder inside `restore/`, refused in snapshots.

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = AttrChange { mode, uid, gid, size, atime: atime.map(timespec), mtime: mtime.map(timespec) };
        match self.staging(ino.0).and_then(|s| s.setattr(ino.0, &change)) {
            Ok(attr) => reply.attr(&attr.ttl, &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let made =
            self.staging(parent.0).and_then(|s| s.mknod(parent.0, name.as_bytes(), mode & !umask, rdev, caller(req)));
        entry(reply, made);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        entry(
            reply,
            self.staging(parent.0).and_then(|s| s.mkdir(parent.0, name.as_bytes(), mode & !umask, caller(req))),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.staging(parent.0).and_then(|s| s.unlink(parent.0, name.as_bytes(), false)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.staging(parent.0).and_then(|s| s.unlink(parent.0, name.as_bytes(), true)));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &std::path::Path, reply: ReplyEntry) {
        let target = target.as_os_str().as_bytes();
        entry(
            reply,
            self.staging(parent.0).and_then(|s| s.symlink(parent.0, link_name.as_bytes(), target, caller(req))),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let renamed = self.staging(parent.0).and_then(|s| {
            if !is_staged(new_parent.0) {
                return Err(VfsError::Os(libc::EXDEV)); // out of restore/ into a snapshot
            }
            s.rename(parent.0, name.as_bytes(), new_parent.0, new_name.as_bytes(), flags.bits())
        });
        empty(reply, renamed);
    }

    fn link(&self, _req: &Request, ino: INodeNo, new_parent: INodeNo, new_name: &OsStr, reply: ReplyEntry) {
        let linked = self.staging(new_parent.0).and_then(|s| {
            if !is_staged(ino.0) {
                return Err(VfsError::Os(libc::EXDEV)); // a snapshot's file: copy it instead
            }
            s.link(ino.0, new_parent.0, new_name.as_bytes())
        });
        entry(reply, linked);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.staging(ino.0).and_then(|s| s.write(ino.0, offset, data)) {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        if let Ok(staging) = self.staging(ino.0) {
            staging.flush(ino.0);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        match self.staging(ino.0) {
            Ok(staging) => empty(reply, staging.fsync(ino.0, datasync)),
            Err(_) => reply.ok(), // snapshots are always on disk
        }
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        self.fsync(req, ino, fh, datasync, reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let made =
            self.staging(parent.0).and_then(|s| s.create(parent.0, name.as_bytes(), mode & !umask, flags, caller(req)));
        let attr = match made {
            Ok(attr) => attr,
            Err(e) => return reply.error(errno(&e)),
        };
        let (ttl, fuse_attr) = (attr.ttl, file_attr(&attr));
        if self.passthrough {
            let mut held = self.backing.lock().expect("backing lock");
            if let Some((backing, opens)) = self.backing_for(&mut held, attr.ino, |f| reply.open_backing(f)) {
                *opens += 1;
                return reply.created_passthrough(
                    &ttl,
                    &fuse_attr,
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::empty(),
                    backing,
                );
            }
        }
        reply.created(&ttl, &fuse_attr, Generation(0), FileHandle(0), FopenFlags::empty());
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut held = self.backing.lock().expect("backing lock");
        if let Some((_, opens)) = held.get_mut(&ino.0) {
            *opens -= 1;
            if *opens == 0 {
                held.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn destroy(&mut self) {
        if let Ok(staging) = self.view.staged() {
            staging.sync();
        }
    }

    /// Extended attributes are not kept: phones' storage has none to give back.
    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.staging(ino.0) {
            Ok(_) => reply.error(Errno::EOPNOTSUPP),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        match self.staging(ino.0) {
            Ok(_) => reply.error(Errno::ENODATA),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
