//! Reading tar streams as phone tools write them (TWRP, busybox, toybox `tar`, GNU tar, Android's
//! own backup writer): ustar, GNU (long names and links, base-256 numbers) and PAX (long names,
//! large sizes, ids, mtimes with fractions; global headers).
//!
//! Written here rather than taken from the `tar` crate because an import needs three things it
//! does not give: each entry's header bytes exactly as the archive holds them (an export gives
//! them back, `docs/FORMAT.md`), a bound on the extension headers it buffers (a crafted GNU long
//! name or PAX header must not make phonebak allocate its declared size), and errors that say
//! where an archive is damaged.

use std::io::{self, Read};

pub const BLOCK: usize = 512;
/// Longer than any path a file system takes (PATH_MAX is 4096): more is damage or an attack.
pub const MAX_LONG_NAME: u64 = 64 << 10;
/// PAX headers hold a few short records; a megabyte is far more than any tool writes.
pub const MAX_PAX: u64 = 1 << 20;
/// All the header blocks of one entry, global headers before it included (what an import
/// keeps of it for an export).
pub const MAX_HEADERS: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The stream ends where more of the archive must follow.
    #[error("the archive is cut short: it ends {0}")]
    Truncated(String),
    #[error("the tar header at byte {offset} is damaged: {why}")]
    BadHeader { offset: u64, why: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TarKind {
    File,
    Dir,
    Symlink,
    HardLink,
    /// Device nodes and FIFOs (the type byte): not phone data.
    Special(u8),
    /// Entries phonebak cannot take as files (sparse files, volume labels, unknown types):
    /// their data is skipped and they are reported.
    Unsupported(String),
}

/// One entry's header, after its GNU and PAX extensions are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarHeader {
    pub path: Vec<u8>,
    pub kind: TarKind,
    /// Bytes of data that follow the header.
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// A symlink's target, or the earlier entry a hard link names.
    pub link: Vec<u8>,
    /// Every block from the entry's first extension header to its main header, as read.
    pub raw: Vec<u8>,
    /// Where `raw` starts in the stream.
    pub offset: u64,
}

/// Reads the entries of a tar stream in order. After `next_entry`, `content` reads that
/// entry's data; whatever of it is not read is skipped by the next `next_entry`.
pub struct TarReader<R> {
    inner: R,
    /// Bytes consumed from `inner`.
    position: u64,
    /// Data (and then padding) of the current entry not yet consumed.
    data_left: u64,
    padding_left: u64,
    current: Option<(Vec<u8>, u64)>,
    global: Vec<(String, Vec<u8>)>,
    ended: bool,
}

fn damaged(offset: u64, why: impl Into<String>) -> TarError {
    TarError::BadHeader { offset, why: why.into() }
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> TarReader<R> {
        TarReader { inner, position: 0, data_left: 0, padding_left: 0, current: None, global: Vec::new(), ended: false }
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads as much of `buf` as the stream has; fewer bytes only at its end.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.position += done as u64;
        Ok(done)
    }

    fn skip(&mut self, mut count: u64, what: &str) -> Result<(), TarError> {
        let mut scratch = [0u8; 8192];
        while count > 0 {
            let want = count.min(scratch.len() as u64) as usize;
            let got = self.fill(&mut scratch[..want])?;
            if got == 0 {
                return Err(TarError::Truncated(format!("inside {what} ({count} more bytes were due)")));
            }
            count -= got as u64;
        }
        Ok(())
    }

    fn current_name(&self) -> String {
        self.current.as_ref().map(|(path, _)| String::from_utf8_lossy(path).into_owned()).unwrap_or_default()
    }

    /// The next entry, or `None` after the end-of-archive block.
    pub fn next_entry(&mut self) -> Result<Option<TarHeader>, TarError> {
        if self.ended {
            return Ok(None);
        }
        let name = self.current_name();
        let (data, padding) = (self.data_left, self.padding_left);
        self.skip(data, &format!("the data of {name}"))?;
        self.skip(padding, &format!("the padding after {name}"))?;
        self.data_left = 0;
        self.padding_left = 0;
        self.current = None;

        let offset = self.position;
        let mut raw = Vec::with_capacity(BLOCK);
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<(String, Vec<u8>)>> = None;
        // Global headers before the entry stay in its `raw` (an export gives them back), but
        // do not make an entry of their own.
        let mut global_len = 0;
        loop {
            let at = self.position;
            let mut block = [0u8; BLOCK];
            let got = self.fill(&mut block)?;
            if got == 0 && raw.is_empty() {
                return Err(TarError::Truncated(format!(
                    "at byte {at} without the end-of-archive blocks (whole entries may be missing)"
                )));
            }
            if got < BLOCK {
                return Err(TarError::Truncated(format!("inside the header at byte {at}")));
            }
            if block.iter().all(|&b| b == 0) {
                if raw.len() > global_len {
                    return Err(damaged(at, "extension headers with no entry after them"));
                }
                // The end: one zero block is enough (some writers stop there); a second, if
                // present, is consumed by whoever reads on.
                self.ended = true;
                return Ok(None);
            }
            verify_checksum(&block, at)?;
            raw.extend_from_slice(&block);
            let type_flag = block[156];
            let size = parse_number(&block[124..136]).ok_or_else(|| damaged(at, "its size field is not a number"))?;
            let size = u64::try_from(size).map_err(|_| damaged(at, "a negative size"))?;
            match type_flag {
                b'L' | b'K' | b'x' | b'g' => {
                    let limit = if matches!(type_flag, b'L' | b'K') { MAX_LONG_NAME } else { MAX_PAX };
                    if size > limit {
                        return Err(damaged(at, format!("an extension header of {size} bytes (at most {limit})")));
                    }
                    let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
                    if raw.len() as u64 + padded > MAX_HEADERS {
                        return Err(damaged(
                            at,
                            format!("extension headers of more than {MAX_HEADERS} bytes before one entry"),
                        ));
                    }
                    let start = raw.len();
                    raw.resize(start + padded as usize, 0);
                    let got = self.fill(&mut raw[start..])?;
                    if got < padded as usize {
                        return Err(TarError::Truncated(format!("inside the extension header at byte {at}")));
                    }
                    let body = &raw[start..start + size as usize];
                    match type_flag {
                        b'L' => set_once(&mut long_name, until_nul(body).to_vec(), at)?,
                        b'K' => set_once(&mut long_link, until_nul(body).to_vec(), at)?,
                        b'x' => set_once(&mut pax, parse_pax(body).map_err(|why| damaged(at, why))?, at)?,
                        _ => {
                            // A global header is an entry of its own: its records hold for
                            // every later entry.
                            for (key, value) in parse_pax(body).map_err(|why| damaged(at, why))? {
                                self.global.retain(|(k, _)| *k != key);
                                self.global.push((key, value));
                            }
                            let held: usize = self.global.iter().map(|(k, v)| k.len() + v.len()).sum();
                            if held as u64 > MAX_PAX {
                                return Err(damaged(at, format!("global headers holding more than {MAX_PAX} bytes")));
                            }
                            if long_name.is_some() || long_link.is_some() || pax.is_some() {
                                return Err(damaged(at, "a global header between an entry's own headers"));
                            }
                            global_len = raw.len();
                            continue;
                        }
                    }
                    continue;
                }
                _ => {}
            }
            let header = self.header(&block, at, offset, size, long_name, long_link, pax.unwrap_or_default(), raw)?;
            let padded = header
                .size
                .checked_next_multiple_of(BLOCK as u64)
                .ok_or_else(|| damaged(at, format!("a size of {} bytes, more than any archive holds", header.size)))?;
            self.data_left = header.size;
            self.padding_left = padded - header.size;
            self.current = Some((header.path.clone(), header.size));
            return Ok(Some(header));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &self,
        block: &[u8; BLOCK],
        at: u64,
        offset: u64,
        size: u64,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        pax: Vec<(String, Vec<u8>)>,
        raw: Vec<u8>,
    ) -> Result<TarHeader, TarError> {
        let is_ustar = &block[257..263] == b"ustar\0";
        let number = |range: std::ops::Range<usize>, what: &str| {
            parse_number(&block[range]).ok_or_else(|| damaged(at, format!("its {what} field is not a number")))
        };
        let mut path = until_nul(&block[0..100]).to_vec();
        if is_ustar && block[345] != 0 {
            // POSIX ustar: a prefix (GNU tar uses these bytes for other things, and says
            // "ustar  \0" instead).
            let mut full = until_nul(&block[345..500]).to_vec();
            full.push(b'/');
            full.extend_from_slice(&path);
            path = full;
        }
        let mut header = TarHeader {
            path: long_name.unwrap_or(path),
            kind: TarKind::File,
            size,
            mode: (number(100..108, "mode")? & 0o7777) as u32,
            uid: u64::try_from(number(108..116, "uid")?).unwrap_or(0),
            gid: u64::try_from(number(116..124, "gid")?).unwrap_or(0),
            mtime_sec: i64::try_from(number(136..148, "mtime")?).map_err(|_| damaged(at, "an mtime out of range"))?,
            mtime_nsec: 0,
            link: long_link.unwrap_or_else(|| until_nul(&block[157..257]).to_vec()),
            raw,
            offset,
        };
        let records = self.global.iter().chain(pax.iter());
        for (key, value) in records {
            let text = || std::str::from_utf8(value).ok().map(str::trim);
            let bad = || damaged(at, format!("its PAX record {key} is not valid"));
            match key.as_str() {
                "path" => header.path = value.clone(),
                "linkpath" => header.link = value.clone(),
                "size" => header.size = text().and_then(|t| t.parse().ok()).ok_or_else(bad)?,
                "uid" => header.uid = text().and_then(|t| t.parse().ok()).ok_or_else(bad)?,
                "gid" => header.gid = text().and_then(|t| t.parse().ok()).ok_or_else(bad)?,
                "mtime" => {
                    (header.mtime_sec, header.mtime_nsec) = text().and_then(parse_pax_time).ok_or_else(bad)?;
                }
                key if key.starts_with("GNU.sparse.") => {
                    header.kind = TarKind::Unsupported("a sparse file (GNU PAX format)".into());
                }
                _ => {}
            }
        }
        if !matches!(header.kind, TarKind::Unsupported(_)) {
            header.kind = match block[156] {
                b'0' | 0 | b'7' => TarKind::File,
                b'1' => TarKind::HardLink,
                b'2' => TarKind::Symlink,
                b'5' | b'D' => TarKind::Dir,
                flag @ (b'3' | b'4' | b'6') => TarKind::Special(flag),
                b'S' => TarKind::Unsupported("a sparse file (old GNU format)".into()),
                b'V' => TarKind::Unsupported("a volume label".into()),
                b'M' => TarKind::Unsupported("the continuation of a file from another volume".into()),
                flag => TarKind::Unsupported(format!("an entry of unknown type {:?}", flag as char)),
            };
        }
        Ok(header)
    }

    /// After the end-of-archive block: how many bytes the stream still holds (the second zero
    /// block, a tool's padding to its record size), counting the end block itself. They must
    /// be zeros: anything else is a header that was zeroed, with entries after it that would
    /// otherwise be lost without a word. More than `max` bytes is an error too (an endless
    /// stream of zeros must not hold an import), unless `to_end`: then the stream is read to
    /// its end, and what is counted stops at `max`.
    pub fn rest_len(&mut self, max: u64, to_end: bool) -> Result<u64, TarError> {
        let mut scratch = [0u8; 8192];
        let mut rest = BLOCK as u64;
        loop {
            let want = if to_end || rest < max { scratch.len() } else { 1 };
            let at = self.position;
            let got = self.fill(&mut scratch[..want])?;
            if got == 0 {
                break;
            }
            if let Some(first) = scratch[..got].iter().position(|&b| b != 0) {
                return Err(damaged(
                    at + first as u64,
                    "data after the end-of-archive block: a header zeroed by damage, with entries after it",
                ));
            }
            if !to_end && rest >= max {
                // Not read on: an endless stream of zeros must not hold the import.
                return Err(damaged(at, format!("more than {max} bytes after the end-of-archive block, not read")));
            }
            rest += got as u64;
        }
        Ok(rest.min(max.max(BLOCK as u64)))
    }

    /// The current entry's data, up to its size; ending early is an error naming the entry.
    pub fn content(&mut self) -> Content<'_, R> {
        Content { reader: self }
    }
}

pub struct Content<'a, R> {
    reader: &'a mut TarReader<R>,
}

impl<R: Read> Read for Content<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.reader.data_left;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(left.min(usize::MAX as u64) as usize);
        let got = loop {
            match self.reader.inner.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        if got == 0 {
            let (name, size) = self.reader.current.clone().unwrap_or_default();
            let why = format!("inside {} ({left} of its {size} bytes are missing)", String::from_utf8_lossy(&name));
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, TarError::Truncated(why)));
        }
        self.reader.position += got as u64;
        self.reader.data_left -= got as u64;
        Ok(got)
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, at: u64) -> Result<(), TarError> {
    if slot.is_some() {
        return Err(damaged(at, "two extension headers of one kind for one entry"));
    }
    *slot = Some(value);
    Ok(())
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())]
}

/// The header's checksum: the sum of its bytes with the checksum field read as spaces.
/// Some old writers summed signed bytes: both are accepted.
fn verify_checksum(block: &[u8; BLOCK], at: u64) -> Result<(), TarError> {
    let stored = parse_number(&block[148..156]).ok_or_else(|| damaged(at, "its checksum field is not a number"))?;
    let field = 148..156;
    let (mut unsigned, mut signed) = (0i128, 0i128);
    for (i, &b) in block.iter().enumerate() {
        let b = if field.contains(&i) { b' ' } else { b };
        unsigned += b as i128;
        signed += b as i8 as i128;
    }
    if stored != unsigned && stored != signed {
        return Err(damaged(at, format!("bad checksum (it says {stored}, its bytes sum to {unsigned})")));
    }
    Ok(())
}

/// The PAX global headers (`g`, with their records) an entry's header blocks start with, as
/// `TarHeader::raw` keeps them: they hold for every later entry, so they go wherever the entry
/// goes, and alone where it does not.
pub fn leading_global_headers(raw: &[u8]) -> &[u8] {
    let mut at = 0;
    while let Some(block) = raw.get(at..at + BLOCK) {
        if block[156] != b'g' {
            break;
        }
        let Some(size) = parse_number(&block[124..136]).and_then(|n| u64::try_from(n).ok()) else { break };
        let end = at as u64 + BLOCK as u64 + size.div_ceil(BLOCK as u64) * BLOCK as u64;
        if end > raw.len() as u64 {
            break;
        }
        at = end as usize;
    }
    &raw[..at]
}

/// The type of the entry whose header blocks `raw` are (its main header is the last block).
pub fn entry_type(raw: &[u8]) -> Option<u8> {
    raw.len().checked_sub(BLOCK).map(|at| raw[at + 156])
}

/// A numeric field: octal digits (spaces and NULs around them), or GNU's base-256 (the first
/// byte's top bit set; 0xff for negative numbers).
pub fn parse_number(field: &[u8]) -> Option<i128> {
    match field.first() {
        Some(&first) if first & 0x80 != 0 => {
            // Big-endian, the marker bit cleared; the next bit set means negative (two's
            // complement over the field's width).
            let mut value: i128 = (first & 0x7f) as i128;
            for &b in &field[1..] {
                value = value.checked_mul(256)?.checked_add(b as i128)?;
            }
            let width = 8 * field.len() as u32 - 1;
            if width >= 120 {
                return None;
            }
            Some(if first & 0x40 != 0 { value - (1i128 << width) } else { value })
        }
        _ => {
            let text = field.iter().skip_while(|&&b| b == b' ' || b == 0);
            let mut value: i128 = 0;
            let mut digits = 0;
            let mut ended = false;
            for &b in text {
                match b {
                    b'0'..=b'7' if !ended => {
                        value = value * 8 + (b - b'0') as i128;
                        digits += 1;
                        if digits > 24 {
                            return None;
                        }
                    }
                    b' ' | 0 => ended = true,
                    _ => return None,
                }
            }
            Some(value)
        }
    }
}

/// PAX records: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn parse_pax(mut body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut records = Vec::new();
    while !body.is_empty() {
        if body.iter().all(|&b| b == 0) {
            break; // padding some writers leave
        }
        let space = body.iter().position(|&b| b == b' ').ok_or("a PAX record without a length")?;
        let len: usize = std::str::from_utf8(&body[..space])
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or("a PAX record whose length is not a number")?;
        if len <= space + 1 || len > body.len() || body[len - 1] != b'\n' {
            return Err("a PAX record whose length does not fit".into());
        }
        let record = &body[space + 1..len - 1];
        let equals = record.iter().position(|&b| b == b'=').ok_or("a PAX record without `=`")?;
        let key = String::from_utf8(record[..equals].to_vec()).map_err(|_| "a PAX key that is not text")?;
        records.push((key, record[equals + 1..].to_vec()));
        body = &body[len..];
    }
    Ok(records)
}

/// A PAX time: seconds, maybe negative, maybe with a fraction (`1700000000.123456789`).
fn parse_pax_time(text: &str) -> Option<(i64, u32)> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, b) in fraction.bytes().take(9).enumerate() {
        nanos += (b - b'0') as u32 * 10u32.pow(8 - i as u32);
    }
    Some(if !negative {
        (secs, nanos)
    } else if nanos == 0 {
        (-secs, 0)
    } else {
        (-secs - 1, 1_000_000_000 - nanos)
    })
}
