//! What a snapshot keeps beside its folders: the layout of the archive it was imported from (so
//! an export gives back the same entries, byte for byte) and the list of files recorded without
//! their content (`--metadata-only`). Both are files of one small tree that the snapshot record
//! names (`extras`); prune, check and repair walk it as they walk the snapshot's own tree, and
//! nothing that shows the snapshot's files ever sees it. `docs/FORMAT.md` gives both streams byte
//! for byte.

use std::io::{self, Read};

use crate::repo::{BlobId, Repository};
use crate::tree::{load_tree, ChunkReader, ChunkRef, Entry, Meta, Node, Tree};

/// The extras tree's file with the archive's layout.
pub const LAYOUT: &str = "archive-layout";
/// The extras tree's file listing the files recorded without content.
pub const OMITTED: &str = "omitted";

const LAYOUT_MAGIC: &[u8; 9] = b"PBLAYOUT1";
const OMITTED_MAGIC: &[u8; 10] = b"PBOMITTED1";
const ENTRY: u8 = 1;
const END: u8 = 2;
/// An entry's header blocks: its GNU long names and PAX headers are bounded by the tar reader
/// (64 KiB and 1 MiB each); global headers before it count too. More is damage.
pub const MAX_HEADER: u32 = crate::archive::tar::MAX_HEADERS as u32;
/// Longer than any path a file system takes.
pub const MAX_PATH: u32 = 64 << 10;
/// Extras are stored in pieces of this size: an import's memory stays bounded however many
/// entries its archive has.
const PIECE: usize = 1 << 20;

/// A stream of records stored as it is written, a piece at a time.
#[derive(Default)]
pub struct PieceWriter {
    pending: Vec<u8>,
    chunks: Vec<ChunkRef>,
    size: u64,
}

/// Stores one piece and says where it went.
pub type StorePiece<'a> = &'a mut dyn FnMut(Vec<u8>) -> io::Result<ChunkRef>;

impl PieceWriter {
    fn push(&mut self, bytes: &[u8], store: StorePiece<'_>) -> io::Result<()> {
        self.pending.extend_from_slice(bytes);
        self.size += bytes.len() as u64;
        while self.pending.len() >= PIECE {
            let rest = self.pending.split_off(PIECE);
            let piece = std::mem::replace(&mut self.pending, rest);
            self.chunks.push(store(piece)?);
        }
        Ok(())
    }

    fn finish(mut self, store: StorePiece<'_>) -> io::Result<Node> {
        if !self.pending.is_empty() {
            self.chunks.push(store(std::mem::take(&mut self.pending))?);
        }
        Ok(Node::File { size: self.size, chunks: self.chunks })
    }
}

/// The layout of an imported archive, written as its entries are taken.
pub struct LayoutWriter {
    pieces: PieceWriter,
    record: Vec<u8>,
}

impl Default for LayoutWriter {
    fn default() -> Self {
        let mut pieces = PieceWriter::default();
        pieces.pending.extend_from_slice(LAYOUT_MAGIC);
        pieces.size = LAYOUT_MAGIC.len() as u64;
        LayoutWriter { pieces, record: Vec::new() }
    }
}

impl LayoutWriter {
    /// An entry the snapshot holds: its header blocks as the archive has them, the path whose
    /// content is its data (in the snapshot's tree) and how many bytes of data follow it.
    pub fn entry(&mut self, header: &[u8], path: &[u8], data_len: u64, store: StorePiece<'_>) -> io::Result<()> {
        self.record.clear();
        self.record.push(ENTRY);
        self.record.extend_from_slice(&(header.len() as u32).to_le_bytes());
        self.record.extend_from_slice(header);
        self.record.extend_from_slice(&(path.len() as u32).to_le_bytes());
        self.record.extend_from_slice(path);
        self.record.extend_from_slice(&data_len.to_le_bytes());
        let record = std::mem::take(&mut self.record);
        let pushed = self.pieces.push(&record, store);
        self.record = record;
        pushed
    }

    /// The archive's end: how many bytes followed its last entry (end-of-archive blocks and
    /// the padding to a record), given back as zeros.
    pub fn finish(mut self, trailer_len: u64, store: StorePiece<'_>) -> io::Result<Node> {
        let mut end = vec![END];
        end.extend_from_slice(&trailer_len.to_le_bytes());
        self.pieces.push(&end, store)?;
        self.pieces.finish(store)
    }
}

/// One record of a layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutRecord {
    Entry { header: Vec<u8>, path: Vec<u8>, data_len: u64 },
    End { trailer_len: u64 },
}

/// Reads a layout's records in order; anything that is not one is damage, said as such.
pub struct LayoutReader<R> {
    inner: R,
    started: bool,
    ended: bool,
}

fn damaged(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("the archive layout is damaged: {}", why.into()))
}

fn read_exact_or(inner: &mut impl Read, buf: &mut [u8], what: &str) -> io::Result<()> {
    inner.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => damaged(format!("it ends inside {what}")),
        _ => e,
    })
}

fn read_u32(inner: &mut impl Read, what: &str) -> io::Result<u32> {
    let mut bytes = [0u8; 4];
    read_exact_or(inner, &mut bytes, what)?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_u64(inner: &mut impl Read, what: &str) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    read_exact_or(inner, &mut bytes, what)?;
    Ok(u64::from_le_bytes(bytes))
}

fn read_bytes(inner: &mut impl Read, len: u32, max: u32, what: &str) -> io::Result<Vec<u8>> {
    if len > max {
        return Err(damaged(format!("{what} of {len} bytes (at most {max})")));
    }
    let mut bytes = vec![0u8; len as usize];
    read_exact_or(inner, &mut bytes, what)?;
    Ok(bytes)
}

impl<R: Read> LayoutReader<R> {
    pub fn new(inner: R) -> Self {
        LayoutReader { inner, started: false, ended: false }
    }

    /// The next record; `None` after the end record.
    pub fn next_record(&mut self) -> io::Result<Option<LayoutRecord>> {
        if self.ended {
            return Ok(None);
        }
        if !self.started {
            let mut magic = [0u8; LAYOUT_MAGIC.len()];
            read_exact_or(&mut self.inner, &mut magic, "its magic")?;
            if &magic != LAYOUT_MAGIC {
                return Err(damaged("it does not start with PBLAYOUT1"));
            }
            self.started = true;
        }
        let mut kind = [0u8];
        read_exact_or(&mut self.inner, &mut kind, "a record (no end record)")?;
        match kind[0] {
            ENTRY => {
                let len = read_u32(&mut self.inner, "a header's length")?;
                let header = read_bytes(&mut self.inner, len, MAX_HEADER, "a header")?;
                if header.is_empty() || header.len() % crate::archive::tar::BLOCK != 0 {
                    return Err(damaged(format!("a header of {} bytes, not whole tar blocks", header.len())));
                }
                let len = read_u32(&mut self.inner, "a path's length")?;
                let path = read_bytes(&mut self.inner, len, MAX_PATH, "a path")?;
                let data_len = read_u64(&mut self.inner, "a data length")?;
                Ok(Some(LayoutRecord::Entry { header, path, data_len }))
            }
            END => {
                let trailer_len = read_u64(&mut self.inner, "the end record")?;
                self.ended = true;
                let mut more = [0u8];
                if self.inner.read(&mut more)? != 0 {
                    return Err(damaged("bytes after its end record"));
                }
                Ok(Some(LayoutRecord::End { trailer_len }))
            }
            other => Err(damaged(format!("a record of unknown kind {other}"))),
        }
    }
}

/// A file recorded by name, size and time only (`--metadata-only`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OmittedFile {
    /// Its path in the snapshot, `/`-separated.
    #[serde(serialize_with = "lossy")]
    pub path: Vec<u8>,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

fn lossy<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(bytes))
}

/// The list of files recorded without content, written as they are met.
pub struct OmittedWriter {
    pieces: PieceWriter,
    pub count: u64,
    /// The sum of their sizes.
    pub bytes: u64,
}

impl Default for OmittedWriter {
    fn default() -> Self {
        let mut pieces = PieceWriter::default();
        pieces.pending.extend_from_slice(OMITTED_MAGIC);
        pieces.size = OMITTED_MAGIC.len() as u64;
        OmittedWriter { pieces, count: 0, bytes: 0 }
    }
}

impl OmittedWriter {
    pub fn add(&mut self, file: &OmittedFile, store: StorePiece<'_>) -> io::Result<()> {
        let mut record = Vec::with_capacity(file.path.len() + 24);
        record.extend_from_slice(&(file.path.len() as u32).to_le_bytes());
        record.extend_from_slice(&file.path);
        record.extend_from_slice(&file.size.to_le_bytes());
        record.extend_from_slice(&file.mtime_sec.to_le_bytes());
        record.extend_from_slice(&file.mtime_nsec.to_le_bytes());
        self.count += 1;
        self.bytes += file.size;
        self.pieces.push(&record, store)
    }

    pub fn finish(self, store: StorePiece<'_>) -> io::Result<Node> {
        self.pieces.finish(store)
    }
}

/// Reads the files of an omitted list in order.
pub struct OmittedReader<R> {
    inner: R,
    started: bool,
}

impl<R: Read> OmittedReader<R> {
    pub fn new(inner: R) -> Self {
        OmittedReader { inner, started: false }
    }

    pub fn next_file(&mut self) -> io::Result<Option<OmittedFile>> {
        let damaged = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the list of files kept without content is damaged: {why}"),
            )
        };
        if !self.started {
            let mut magic = [0u8; OMITTED_MAGIC.len()];
            self.inner.read_exact(&mut magic).map_err(|_| damaged("no magic"))?;
            if &magic != OMITTED_MAGIC {
                return Err(damaged("it does not start with PBOMITTED1"));
            }
            self.started = true;
        }
        let mut len = [0u8; 4];
        match self.inner.read(&mut len[..1])? {
            0 => return Ok(None),
            _ => self.inner.read_exact(&mut len[1..]).map_err(|_| damaged("cut short"))?,
        }
        let len = u32::from_le_bytes(len);
        if len == 0 || len > MAX_PATH {
            return Err(damaged(&format!("a path of {len} bytes")));
        }
        let mut path = vec![0u8; len as usize];
        let mut numbers = [0u8; 20];
        self.inner.read_exact(&mut path).map_err(|_| damaged("cut short"))?;
        self.inner.read_exact(&mut numbers).map_err(|_| damaged("cut short"))?;
        let mtime_nsec = u32::from_le_bytes(numbers[16..20].try_into().expect("4 bytes"));
        if mtime_nsec >= 1_000_000_000 {
            return Err(damaged("a time's nanoseconds out of range"));
        }
        Ok(Some(OmittedFile {
            path,
            size: u64::from_le_bytes(numbers[..8].try_into().expect("8 bytes")),
            mtime_sec: i64::from_le_bytes(numbers[8..16].try_into().expect("8 bytes")),
            mtime_nsec,
        }))
    }
}

/// One line of the listing of files kept without content (`ls --omitted`, the mount's
/// `<time>.omitted.txt`): size, time, path from the snapshot's top.
pub fn omitted_line(file: &OmittedFile) -> Vec<u8> {
    let time = chrono::DateTime::from_timestamp(file.mtime_sec, file.mtime_nsec).unwrap_or_default();
    let time = time.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S");
    let mut line = format!("{:>12} {time} /", file.size).into_bytes();
    // One line per file, shown as it is, whatever its name holds: line breaks and other
    // controls (C1 ones too, which terminals obey), bytes that are not UTF-8 and the backslash
    // are escaped, so that two names never show alike.
    for chunk in file.path.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => line.extend_from_slice(b"\\\\"),
                '\n' => line.extend_from_slice(b"\\n"),
                c if c.is_control() => line.extend_from_slice(format!("\\u{{{:x}}}", c as u32).as_bytes()),
                c => line.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        for b in chunk.invalid() {
            line.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        }
    }
    line.push(b'\n');
    line
}

/// The extras tree of the files given (names sorted, as every tree's).
pub fn tree(files: Vec<(&str, Node)>) -> Tree {
    let mut entries: Vec<Entry> = files
        .into_iter()
        .map(|(name, node)| Entry {
            name: name.as_bytes().to_vec(),
            meta: Meta { mode: 0o600, ..Meta::default() },
            node,
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Tree { entries }
}

/// One file of a snapshot's extras as a stream, or `None` when the snapshot has none.
pub fn open<'r>(
    repo: &'r Repository,
    extras: Option<&BlobId>,
    name: &str,
) -> Result<Option<ChunkReader<'r>>, crate::repo::RepoError> {
    let Some(id) = extras else { return Ok(None) };
    let tree = load_tree(repo, id)?;
    Ok(match tree.find(name.as_bytes()).map(|e| &e.node) {
        Some(Node::File { chunks, .. }) => Some(ChunkReader::new(repo, chunks.clone())),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::Id;

    /// Pieces kept in order, to read back.
    fn keep(all: &mut Vec<u8>) -> impl FnMut(Vec<u8>) -> io::Result<ChunkRef> + '_ {
        move |piece: Vec<u8>| {
            all.extend_from_slice(&piece);
            Ok(ChunkRef { id: Id([0; 32]), len: piece.len() as u32 })
        }
    }

    #[test]
    fn a_layout_reads_back_as_written_across_pieces() {
        let mut all = Vec::new();
        let mut writer = LayoutWriter::default();
        let mut store = keep(&mut all);
        let mut expected = Vec::new();
        for i in 0..3000u64 {
            let header = vec![(i % 251) as u8; 512 * (1 + (i % 3) as usize)];
            let path = format!("apps/p{i}/f/file").into_bytes();
            writer.entry(&header, &path, i * 7, &mut store).unwrap();
            expected.push(LayoutRecord::Entry { header, path, data_len: i * 7 });
        }
        let node = writer.finish(10240, &mut store).unwrap();
        let Node::File { size, chunks } = node else { panic!() };
        assert!(chunks.len() > 2, "more than one piece");
        drop(store);
        assert_eq!(size, all.len() as u64);
        expected.push(LayoutRecord::End { trailer_len: 10240 });
        let mut reader = LayoutReader::new(&all[..]);
        let mut got = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            got.push(record);
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn a_damaged_layout_is_an_error_never_a_panic_or_a_huge_allocation() {
        let mut all = Vec::new();
        let mut writer = LayoutWriter::default();
        let mut store = keep(&mut all);
        writer.entry(&[1u8; 512], b"a", 3, &mut store).unwrap();
        writer.finish(1024, &mut store).unwrap();
        drop(store);
        let read_all = |bytes: &[u8]| -> io::Result<()> {
            let mut reader = LayoutReader::new(bytes);
            while reader.next_record()?.is_some() {}
            Ok(())
        };
        read_all(&all).unwrap();
        for cut in 0..all.len() {
            assert!(read_all(&all[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = all.clone();
        huge[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_all(&huge).unwrap_err().to_string().contains("at most"));
        let mut odd = LAYOUT_MAGIC.to_vec();
        odd.push(ENTRY);
        odd.extend_from_slice(&100u32.to_le_bytes());
        odd.extend_from_slice(&[0; 100]);
        assert!(read_all(&odd).unwrap_err().to_string().contains("not whole tar blocks"));
        let mut extra = all.clone();
        extra.push(0);
        assert!(read_all(&extra).is_err());
    }

    #[test]
    fn omitted_files_read_back_and_damage_is_said() {
        let mut all = Vec::new();
        let mut writer = OmittedWriter::default();
        let files: Vec<OmittedFile> = (0..10)
            .map(|i| OmittedFile { path: format!("Music/{i}.mp3").into_bytes(), size: i, mtime_sec: -5, mtime_nsec: 7 })
            .collect();
        {
            let mut keep = keep(&mut all);
            for file in &files {
                writer.add(file, &mut keep).unwrap();
            }
            writer.finish(&mut keep).unwrap();
        }
        let mut reader = OmittedReader::new(&all[..]);
        let mut got = Vec::new();
        while let Some(file) = reader.next_file().unwrap() {
            got.push(file);
        }
        assert_eq!(got, files);
        for cut in 1..all.len() - 1 {
            let mut reader = OmittedReader::new(&all[..cut]);
            let result = (|| -> io::Result<usize> {
                let mut n = 0;
                while reader.next_file()?.is_some() {
                    n += 1;
                }
                Ok(n)
            })();
            // A cut between records reads as a shorter list only at a record boundary.
            if let Ok(n) = result {
                assert!(n < files.len(), "cut at {cut}");
            }
        }
    }
}
