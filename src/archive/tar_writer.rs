//! Writing tar headers for snapshots that did not come from an archive: POSIX ustar, with a PAX
//! extended header for what ustar cannot hold (names over 100 bytes, sizes of 8 GiB and more,
//! ids over 2 097 151, times before 1970, after 2242 or with a fraction), as GNU tar, busybox
//! and Android's restore read them.

use super::tar::BLOCK;
use crate::tree::Meta;

/// What a header describes.
#[derive(Clone, Copy, Debug)]
pub enum HeaderKind<'a> {
    File,
    Dir,
    Symlink(&'a [u8]),
}

const NAME_LEN: usize = 100;
/// The largest number an octal field of `len` bytes holds (one byte is its NUL).
fn octal_max(len: usize) -> u64 {
    (1u64 << (3 * (len - 1))) - 1
}

/// The header blocks of one entry (a PAX header first when needed), ready to be followed by
/// `size` bytes of data and their padding.
pub fn header(path: &[u8], kind: HeaderKind, meta: &Meta, size: u64) -> Vec<u8> {
    let mut name = path.to_vec();
    if matches!(kind, HeaderKind::Dir) {
        name.push(b'/');
    }
    let (type_flag, link): (u8, &[u8]) = match kind {
        HeaderKind::File => (b'0', b""),
        HeaderKind::Dir => (b'5', b""),
        HeaderKind::Symlink(target) => (b'2', target),
    };
    let size = if matches!(kind, HeaderKind::File) { size } else { 0 };
    let mut pax = Vec::new();
    if name.len() > NAME_LEN {
        pax_record(&mut pax, "path", &name);
    }
    if link.len() > NAME_LEN {
        pax_record(&mut pax, "linkpath", link);
    }
    if size > octal_max(12) {
        pax_record(&mut pax, "size", size.to_string().as_bytes());
    }
    for (key, id) in [("uid", meta.uid), ("gid", meta.gid)] {
        if id as u64 > octal_max(8) {
            pax_record(&mut pax, key, id.to_string().as_bytes());
        }
    }
    let plain_time = meta.mtime_nsec == 0 && (0..=octal_max(12) as i64).contains(&meta.mtime_sec);
    if !plain_time {
        pax_record(&mut pax, "mtime", pax_time(meta.mtime_sec, meta.mtime_nsec).as_bytes());
    }
    let mtime = meta.mtime_sec.clamp(0, octal_max(12) as i64) as u64;
    let mut out = Vec::with_capacity(BLOCK * 2);
    if !pax.is_empty() {
        let base = name.rsplit(|&b| b == b'/').find(|n| !n.is_empty()).unwrap_or(b"entry");
        let mut pax_name = b"PaxHeaders/".to_vec();
        pax_name.extend_from_slice(base);
        let fields = Fields {
            name: &pax_name,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: pax.len() as u64,
            mtime,
            type_flag: b'x',
            link: b"",
        };
        out.extend_from_slice(&fields.block());
        let padded = pax.len().div_ceil(BLOCK) * BLOCK;
        pax.resize(padded, 0);
        out.extend_from_slice(&pax);
    }
    let fields = Fields {
        name: &name,
        mode: meta.mode & 0o7777,
        uid: (meta.uid as u64).min(octal_max(8)),
        gid: (meta.gid as u64).min(octal_max(8)),
        size: size.min(octal_max(12)),
        mtime,
        type_flag,
        link,
    };
    out.extend_from_slice(&fields.block());
    out
}

/// The zeros after `size` bytes of data, to the next block.
pub fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// The end of an archive: two zero blocks.
pub const END: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// `LEN KEY=VALUE\n`, LEN counting the whole record, its own digits included.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // space, `=`, newline
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Seconds with a fraction, negative ones counting down from the epoch (-1.5 is 1.5 s before).
fn pax_time(sec: i64, nsec: u32) -> String {
    match (sec < 0, nsec) {
        (_, 0) => sec.to_string(),
        (false, nsec) => format!("{sec}.{nsec:09}"),
        (true, nsec) => format!("-{}.{:09}", -(sec + 1), 1_000_000_000 - nsec),
    }
}

struct Fields<'a> {
    name: &'a [u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    type_flag: u8,
    link: &'a [u8],
}

impl Fields<'_> {
    fn block(&self) -> [u8; BLOCK] {
        let mut block = [0u8; BLOCK];
        let name = &self.name[..self.name.len().min(NAME_LEN)];
        block[..name.len()].copy_from_slice(name);
        octal(&mut block[100..108], self.mode as u64);
        octal(&mut block[108..116], self.uid);
        octal(&mut block[116..124], self.gid);
        octal(&mut block[124..136], self.size);
        octal(&mut block[136..148], self.mtime);
        block[156] = self.type_flag;
        let link = &self.link[..self.link.len().min(NAME_LEN)];
        block[157..157 + link.len()].copy_from_slice(link);
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| b as u32).sum();
        block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        block
    }
}

/// A zero-padded octal number and its NUL, filling the field.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    field[..digits].copy_from_slice(format!("{value:0digits$o}").as_bytes());
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tar::{TarKind, TarReader};

    fn read_back(blocks: &[u8], data: &[u8]) -> crate::archive::tar::TarHeader {
        let mut archive = blocks.to_vec();
        archive.extend_from_slice(data);
        archive.resize(archive.len() + padding(data.len() as u64), 0);
        archive.extend_from_slice(&END);
        let mut reader = TarReader::new(&archive[..]);
        let header = reader.next_entry().unwrap().unwrap();
        assert!(reader.next_entry().unwrap().is_none());
        header
    }

    #[test]
    fn what_ustar_holds_is_written_plainly_and_the_rest_in_pax() {
        let meta = Meta { mode: 0o640, uid: 10_123, gid: 1_015, mtime_sec: 1_700_000_000, mtime_nsec: 0 };
        let blocks = header(b"apps/com.x/f/a.txt", HeaderKind::File, &meta, 3);
        assert_eq!(blocks.len(), BLOCK, "no PAX header needed");
        let got = read_back(&blocks, b"abc");
        assert_eq!((got.path.as_slice(), got.size, got.mode, got.uid), (&b"apps/com.x/f/a.txt"[..], 3, 0o640, 10_123));
        assert_eq!(got.kind, TarKind::File);

        let long = vec![b'n'; 300];
        let odd = Meta { mode: 0o755, uid: 3_000_000, gid: 5, mtime_sec: -5, mtime_nsec: 250_000_000 };
        let got = read_back(&header(&long, HeaderKind::Dir, &odd, 99), b"");
        let mut dir = long.clone();
        dir.push(b'/');
        assert_eq!(got.path, dir);
        assert_eq!(
            (got.kind, got.size, got.uid, got.mtime_sec, got.mtime_nsec),
            (TarKind::Dir, 0, 3_000_000, -5, 250_000_000)
        );

        let target = vec![b't'; 150];
        let got = read_back(&header(b"l", HeaderKind::Symlink(&target), &meta, 0), b"");
        assert_eq!((got.kind, got.link), (TarKind::Symlink, target));
        let late = Meta { mtime_sec: 1_700_000_000, mtime_nsec: 999_999_999, ..meta };
        let got = read_back(&header(b"f", HeaderKind::File, &late, 0), b"");
        assert_eq!((got.mtime_sec, got.mtime_nsec), (1_700_000_000, 999_999_999));
    }

    #[test]
    fn pax_record_lengths_count_their_own_digits() {
        for value_len in 0..300 {
            let mut out = Vec::new();
            pax_record(&mut out, "path", &vec![b'a'; value_len]);
            let space = out.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..space]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "value of {value_len} bytes");
        }
    }

    #[test]
    fn gnu_tar_reads_what_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta { mode: 0o644, uid: 0, gid: 0, mtime_sec: 1_600_000_000, mtime_nsec: 5 };
        let long = format!("{}/file.txt", "d".repeat(150));
        let mut archive = header(long.as_bytes(), HeaderKind::File, &meta, 5);
        archive.extend_from_slice(b"hello");
        archive.resize(archive.len() + padding(5), 0);
        archive.extend_from_slice(&END);
        let path = dir.path().join("a.tar");
        std::fs::write(&path, &archive).unwrap();
        let out = std::process::Command::new("tar").arg("-tvf").arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains(&long) && listing.contains(" 5 "), "{listing}");
    }
}
