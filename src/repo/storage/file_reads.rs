//! Reading ranges of a folder repository's files (packs, index files): a table of open files,
//! readahead for small reads, and direct reads (O_DIRECT) of whole chunks for the mount.
//!
//! A mount streaming a gigabyte of photos reads each chunk once and keeps it decoded in its own
//! cache: through the page cache, every chunk cost the kernel a page allocation, a copy out and
//! a reclaim, about a third of the daemon's CPU time. Read directly, the disk writes straight
//! into the chunk's buffer. Reads land in a buffer's spare capacity, so nothing is zeroed first.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::{io_error, StorageError};

/// Whole chunks from this size up are read directly when direct reads are on (smaller reads,
/// trees and frames, are read again and stay in the page cache).
pub const DIRECT_FROM: usize = 256 * 1024;
/// O_DIRECT wants offsets, lengths and memory aligned to the device's blocks: 4 KiB serves all.
const ALIGN: usize = 4096;
/// How far the kernel is asked to read ahead of a small read.
const READ_AHEAD: u64 = 4 << 20;
/// The same once whole chunks are read directly: less than one whole chunk, which would be read
/// from disk again (directly) and its cached pages never given back. A photo whose last chunk
/// is small would otherwise have its next 4 MiB read twice.
const READ_AHEAD_DIRECT: u64 = DIRECT_FROM as u64;
/// Open descriptors kept (reopening is cheap).
const KEPT_OPEN: usize = 256;

pub struct FileReads {
    root: PathBuf,
    open: Mutex<HashMap<String, Arc<OpenPack>>>,
    /// Set by the mount; cleared for good when the file system refuses O_DIRECT.
    direct: AtomicBool,
}

/// An open pack file. Blobs were packed in the order a backup walked the phone, which is the
/// order a restore or a `cp -r` of the mount reads them in: small reads ask the kernel to read
/// the next few MiB ahead, so that thousands of small files cost a few large disk reads.
struct OpenPack {
    file: File,
    /// The same file opened with O_DIRECT, on first use (None where that is refused).
    direct: OnceLock<Option<File>>,
    advised_until: AtomicU64,
}

impl FileReads {
    pub fn new(root: PathBuf) -> FileReads {
        FileReads { root, open: Mutex::new(HashMap::new()), direct: AtomicBool::new(false) }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Read whole chunks of `DIRECT_FROM` bytes and more past the page cache from now on.
    pub fn read_directly(&self) {
        self.direct.store(true, Ordering::Relaxed);
    }

    /// Reads `len` bytes at `offset` of file `name` into `out` (replacing what it held) and
    /// returns where in `out` they lie: from 0, or from a few bytes in for a direct read, whose
    /// buffer must start on an aligned address and block.
    pub fn read(&self, name: &str, offset: u64, len: usize, out: &mut Vec<u8>) -> Result<Range<usize>, StorageError> {
        let open = self.open(name)?;
        let fail = |e: io::Error| match e.kind() {
            io::ErrorKind::UnexpectedEof => StorageError::Truncated { name: name.to_string() },
            _ => io_error(format!("reading {}", self.path(name).display()))(e),
        };
        if len >= DIRECT_FROM && self.direct.load(Ordering::Relaxed) {
            if let Some(direct) = open.direct(|| self.path(name)) {
                match read_aligned(direct, offset, len, out) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct.store(false, Ordering::Relaxed),
                    done => {
                        // Pages a backup just wrote are still cached: they go too.
                        open.drop_pages_of(offset, len);
                        return done.map(|at| at..at + len).map_err(fail);
                    }
                }
            }
        }
        let ahead = if self.direct.load(Ordering::Relaxed) { READ_AHEAD_DIRECT } else { READ_AHEAD };
        open.read_ahead_of(offset, len, ahead);
        out.clear();
        read_spare(&open.file, offset, len, out, 0, 1).map_err(fail)?;
        open.drop_pages_of(offset, len);
        Ok(0..len)
    }

    fn open(&self, name: &str) -> Result<Arc<OpenPack>, StorageError> {
        let mut open = self.open.lock().expect("file table lock");
        if let Some(file) = open.get(name) {
            return Ok(file.clone());
        }
        let file = super::folder::open_regular(&self.path(name), name)?;
        if open.len() >= KEPT_OPEN {
            open.clear();
        }
        let file = Arc::new(OpenPack { file, direct: OnceLock::new(), advised_until: AtomicU64::new(0) });
        open.insert(name.to_string(), file.clone());
        Ok(file)
    }

    /// Forgets an open file (removed or moved): a later read opens what is there then.
    pub fn forget(&self, name: &str) {
        self.open.lock().expect("file table lock").remove(name);
    }
}

impl OpenPack {
    /// `path` is asked for only on the first direct read. From then on the pack's chunks are
    /// read past the page cache, so what it holds of the pack (what a backup wrote) goes at
    /// once, as a whole: the kernel gives back only page groups (folios, up to megabytes) that
    /// lie wholly in the range it is given, and one chunk's range never covers a group that
    /// starts before its first page or reaches into the next chunk.
    fn direct(&self, path: impl FnOnce() -> PathBuf) -> Option<&File> {
        self.direct
            .get_or_init(|| {
                let direct = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path()).ok()?;
                // SAFETY: the descriptor is open for the call; fadvise only drops clean cached pages.
                unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                Some(direct)
            })
            .as_ref()
    }

    fn read_ahead_of(&self, offset: u64, len: usize, ahead: u64) {
        let end = offset + len as u64;
        let advised = self.advised_until.load(Ordering::Relaxed);
        if len as u64 >= ahead || (offset < advised && end + ahead / 2 <= advised) {
            return;
        }
        self.advised_until.store(end + ahead, Ordering::Relaxed);
        // SAFETY: the descriptor is open for the call; fadvise only schedules reads.
        unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), end as i64, ahead as i64, libc::POSIX_FADV_WILLNEED);
        }
    }

    /// Gives back the page cache that a whole chunk read through it held (its whole pages): the
    /// chunk is decoded and kept by whoever asked for it, and pages freed at once are reused
    /// warm for the next reads. Small reads (frames, trees) keep their pages: they are read again.
    fn drop_pages_of(&self, offset: u64, len: usize) {
        if len < DIRECT_FROM {
            return;
        }
        let (start, end) = (offset.next_multiple_of(4096), (offset + len as u64) / 4096 * 4096);
        // SAFETY: the descriptor is open for the call; fadvise only drops clean cached pages.
        unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), start as i64, (end - start) as i64, libc::POSIX_FADV_DONTNEED);
        }
    }
}

/// Reads `len` bytes at `offset` through an O_DIRECT descriptor: the aligned blocks around
/// them, into an aligned place in `out`. Returns where the bytes asked for start.
fn read_aligned(file: &File, offset: u64, len: usize, out: &mut Vec<u8>) -> io::Result<usize> {
    let start = offset & !(ALIGN as u64 - 1);
    let span = (offset + len as u64).next_multiple_of(ALIGN as u64) - start;
    out.clear();
    out.reserve(span as usize + ALIGN);
    let pad = out.as_ptr().align_offset(ALIGN);
    let read = read_spare(file, start, span as usize, out, pad, ALIGN);
    let skip = pad + (offset - start) as usize;
    match read {
        // The last block of a pack is short: what was asked for is there all the same.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && out.len() >= skip + len => {}
        other => other?,
    }
    Ok(skip)
}

/// Reads `len` bytes at `offset` into `out`'s spare capacity from `at` on (`out` must be
/// empty), with `out` ending where the read did. Nothing is zeroed beforehand: the memory is
/// handed to the kernel as it is, and only what it filled becomes part of `out`. A read of
/// `block`-aligned pieces (direct) that ends off a block boundary has met the end of the file.
fn read_spare(file: &File, offset: u64, len: usize, out: &mut Vec<u8>, at: usize, block: usize) -> io::Result<()> {
    debug_assert!(out.is_empty());
    out.reserve(at + len);
    let base = out.as_mut_ptr();
    let mut got = 0;
    let result = loop {
        if got == len {
            break Ok(());
        }
        // SAFETY: `base + at + got .. base + at + len` lies within `out`'s allocation (reserved
        // above); the kernel writes at most `len - got` bytes there.
        let n = unsafe {
            libc::pread(file.as_raw_fd(), base.add(at + got).cast(), len - got, (offset + got as u64) as libc::off_t)
        };
        match n {
            0 => break Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            n if n > 0 => got += n as usize,
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => {}
                e => break Err(e),
            },
        }
        if got % block != 0 && got < len {
            break Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
    };
    if at > 0 {
        // The bytes before `at` were never written: fill them so that `out` holds only
        // initialized memory (at most one block).
        // SAFETY: within the reservation.
        unsafe { std::ptr::write_bytes(base, 0, at) };
    }
    // SAFETY: bytes `0..at` were just zeroed and `at..at + got` were written by the kernel.
    unsafe { out.set_len(at + got) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct reads at offsets and lengths off every block boundary, and up to the pack's last
    /// (short) block, give exactly the bytes that buffered reads give.
    #[test]
    fn direct_reads_give_the_bytes_buffered_reads_give() {
        let dir = tempfile::tempdir().unwrap();
        let files = FileReads::new(dir.path().to_path_buf());
        let pack = "data/07/0707";
        let content: Vec<u8> = (0..(3 << 20) + 1234u32).map(|n| (n.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::create_dir_all(files.path(pack).parent().unwrap()).unwrap();
        std::fs::write(files.path(pack), &content).unwrap();
        let reads = [
            (0, 1 << 20),
            (4095, DIRECT_FROM),
            (5000, (1 << 20) + 3),
            (content.len() - DIRECT_FROM - 7, DIRECT_FROM + 7),
        ];

        let mut buffered = Vec::new();
        for (offset, len) in reads {
            assert_eq!(files.read(pack, offset as u64, len, &mut buffered).unwrap(), 0..len);
            assert_eq!(buffered, &content[offset..offset + len]);
        }
        files.read_directly();
        let mut out = vec![1u8; 10]; // what a buffer held before is replaced
        for (offset, len) in reads {
            let bytes = files.read(pack, offset as u64, len, &mut out).unwrap();
            assert_eq!(&out[bytes], &content[offset..offset + len], "at {offset}, {len} bytes");
        }
        assert!(files.direct.load(Ordering::Relaxed), "this file system takes O_DIRECT reads");
        let past_the_end = files.read(pack, content.len() as u64 - DIRECT_FROM as u64 + 1, DIRECT_FROM, &mut out);
        assert!(matches!(past_the_end, Err(StorageError::Truncated { .. })), "a read past the end is a truncated file");
    }
}
