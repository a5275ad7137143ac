//! Many blobs read in the order they lie in their packs: neighbours come in one read (on an
//! object store, one request), so a restore asks for a few large ranges instead of one per
//! chunk, and the store serves bytes instead of answering requests.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::index::BlobLocation;
use super::storage::Reuse;
use super::{BlobId, BlobKind, Opened, PackId, RepoError, Repository};

thread_local! {
    /// Each reading thread's piece and decompression buffers, reused from piece to piece.
    static BUFFERS: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Blobs this close together in a pack on a local disk are read in one piece (the bytes between
/// them with them); on an object store, where a request costs about as much as a megabyte, the
/// gap may be larger.
const LOCAL_GAP: u64 = 64 << 10;
const REMOTE_GAP: u64 = 1 << 20;
/// The longest piece a restore reads at once (each reading thread holds one).
pub const PIECE_MAX: u64 = 8 << 20;

/// One read: a range of a pack and the wanted blobs in it, in pack order.
struct Piece {
    pack: PackId,
    start: u64,
    end: u64,
    blobs: Vec<BlobLocation>,
}

enum Work {
    Piece(Piece),
    /// A blob the index does not place (or not yet): loaded alone, through every copy known.
    Alone(BlobId),
}

impl Repository {
    /// Loads each blob of `ids` once, verified, and hands it to `each`, on `threads` threads. The
    /// blobs of one pack are read in pack order, several per read of at most `piece_max` bytes
    /// (or one blob), packs in the order `ids` first needs them. A blob whose piece cannot be
    /// read or opened is loaded alone, through every copy the index knows (see `load_blob`);
    /// one that cannot be loaded at all is handed over as its error. The first error `each`
    /// returns stops the reading and is returned.
    pub fn load_blobs_in_pack_order<E: Send>(
        &self,
        ids: &[BlobId],
        threads: usize,
        piece_max: u64,
        each: impl Fn(&BlobId, Result<&[u8], RepoError>) -> Result<(), E> + Sync,
    ) -> Result<(), E> {
        let work = self.plan_pieces(ids, piece_max);
        let next = AtomicUsize::new(0);
        let stopped: Mutex<Option<E>> = Mutex::new(None);
        let worker = || {
            BUFFERS.with(|buffers| {
                let buffers = &mut buffers.borrow_mut();
                loop {
                    if stopped.lock().expect("stop lock").is_some() {
                        break;
                    }
                    let Some(item) = work.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                    let done = match item {
                        Work::Piece(piece) => self.load_piece(piece, buffers, &each),
                        Work::Alone(id) => self.load_alone(id, &each),
                    };
                    if let Err(e) = done {
                        stopped.lock().expect("stop lock").get_or_insert(e);
                        break;
                    }
                }
                // A buffer is not kept past the largest usual piece.
                if buffers.0.capacity() > 2 * PIECE_MAX as usize {
                    buffers.0 = Vec::new();
                }
            })
        };
        match threads.min(work.len()) {
            0 => {}
            1 => worker(),
            n => std::thread::scope(|scope| {
                for _ in 0..n {
                    scope.spawn(worker);
                }
            }),
        }
        match stopped.into_inner().expect("stop lock") {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn plan_pieces(&self, ids: &[BlobId], piece_max: u64) -> Vec<Work> {
        let gap = if self.storage.local_folder().is_some() { LOCAL_GAP } else { REMOTE_GAP };
        let mut seen = HashSet::with_capacity(ids.len());
        let mut by_pack: HashMap<PackId, Vec<BlobLocation>> = HashMap::new();
        let mut pack_order = Vec::new();
        let mut work = Vec::new();
        for id in ids {
            if !seen.insert(*id) {
                continue;
            }
            match self.index.get(id) {
                Ok(Some(location)) => {
                    let blobs = by_pack.entry(location.pack).or_insert_with(|| {
                        pack_order.push(location.pack);
                        Vec::new()
                    });
                    blobs.push(location);
                }
                _ => work.push(Work::Alone(*id)),
            }
        }
        let mut pieces = Vec::new();
        for pack in pack_order {
            let mut blobs = by_pack.remove(&pack).expect("every pack in the order has blobs");
            blobs.sort_by_key(|b| b.offset);
            let mut piece: Option<Piece> = None;
            for blob in blobs {
                let (start, end) = (u64::from(blob.offset), u64::from(blob.offset) + u64::from(blob.len));
                match &mut piece {
                    Some(p) if start >= p.end && start - p.end <= gap && end - p.start <= piece_max => {
                        p.end = end;
                        p.blobs.push(blob);
                    }
                    _ => {
                        pieces.extend(piece.take().map(Work::Piece));
                        piece = Some(Piece { pack, start, end, blobs: vec![blob] });
                    }
                }
            }
            pieces.extend(piece.map(Work::Piece));
        }
        pieces.extend(work);
        pieces
    }

    fn load_piece<E>(
        &self,
        piece: &Piece,
        (buffer, decompressed): &mut (Vec<u8>, Vec<u8>),
        each: &impl Fn(&BlobId, Result<&[u8], RepoError>) -> Result<(), E>,
    ) -> Result<(), E> {
        let len = (piece.end - piece.start) as usize;
        // Folder listings are read again and again (every walk passes through them).
        let reuse = if piece.blobs.iter().all(|b| b.kind == BlobKind::Tree) { Reuse::Again } else { Reuse::Once };
        let Ok(bytes) = self.read_pack(&piece.pack, piece.start, len, reuse, buffer) else {
            // Each blob alone says why it cannot be read (or is found in another copy).
            return piece.blobs.iter().try_for_each(|blob| self.load_alone(&blob.id, each));
        };
        for blob in &piece.blobs {
            let at = bytes.start + (u64::from(blob.offset) - piece.start) as usize;
            let stored = &mut buffer[at..at + blob.len as usize];
            match self.open_stored(blob.kind, &blob.id, blob.raw_len, stored, decompressed) {
                Ok(Opened::In(range)) => each(&blob.id, Ok(&stored[range]))?,
                Ok(Opened::Decompressed) => each(&blob.id, Ok(decompressed))?,
                Err(_) => self.load_alone(&blob.id, each)?,
            }
        }
        Ok(())
    }

    fn load_alone<E>(
        &self,
        id: &BlobId,
        each: &impl Fn(&BlobId, Result<&[u8], RepoError>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut plain = Vec::new();
        match self.load_blob_into(id, &mut plain) {
            Ok(()) => each(id, Ok(&plain)),
            Err(e) => each(id, Err(e)),
        }
    }
}
