//! The mount's chunk cache: decoded, verified chunks kept in an LRU bounded in bytes. Concurrent
//! requests for one chunk load it once; the others wait for that load. The buffers of evicted
//! chunks are loaded into again: fresh memory for every chunk cost more CPU (page faults, zeroing,
//! unmapping) than decrypting and verifying it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

use lru::LruCache;

use crate::repo::{BlobId, Repository};
use crate::tree::ChunkRef;

pub type Chunk = Arc<Vec<u8>>;

/// A whole chunk, or one frame of a framed chunk (see `repo::FRAME_LEN`).
type Key = (BlobId, u32);
const WHOLE: u32 = u32::MAX;

const TRIM_EVERY: usize = 32 << 20;
/// What the daemon may hold beyond `cache_size` (code, threads, trees, index pages, loads in
/// flight, the allocator's slack) before the cache gives up room to stay within it.
const HEADROOM: usize = 40 << 20;
/// How often (in bytes inserted) the daemon's resident memory is looked at.
const MEASURE_EVERY: usize = 8 << 20;
/// Buffers of evicted chunks kept for the next loads (they count against the capacity).
const SPARE_BUFFERS: usize = 8;
/// Buffers from this size up come from their own mapping (see `mount`) and are worth keeping.
const REUSED_FROM: usize = 128 * 1024;
/// Chunks read to their end by a sequential reader that stay cached, for the kernel's readahead
/// requests that arrive late.
const CONSUMED_KEPT: usize = 8;

/// The longest piece of a pack a prefetch reads at once (each prefetching thread holds one).
const PREFETCH_PIECE_MAX: u64 = 8 << 20;

fn unexpected(id: &BlobId) -> LoadError {
    LoadError { damaged: false, message: format!("loading chunk {id} failed unexpectedly") }
}

/// Why a chunk could not be had. Kept as text: one failure is handed to every waiter.
#[derive(Clone, Debug)]
pub struct LoadError {
    pub message: String,
    pub damaged: bool,
}

#[derive(Default)]
struct Loading {
    result: Mutex<Option<Result<Chunk, LoadError>>>,
    done: Condvar,
}

struct State {
    chunks: LruCache<Key, Chunk>,
    bytes: usize,
    /// Bytes evicted since the allocator last gave freed memory back (see `insert`).
    evicted_since_trim: usize,
    loading: HashMap<Key, Arc<Loading>>,
    spare: Vec<Vec<u8>>,
    /// Chunks a sequential reader has read to their end, oldest first (see `consumed`).
    consumed: VecDeque<Key>,
    /// What the cache may hold now: `capacity`, less what the allocator keeps of freed small
    /// chunks (heap holes it cannot return), measured from the process's resident memory.
    budget: usize,
    inserted_since_measure: usize,
}

pub struct ChunkCache {
    repo: Arc<Repository>,
    capacity: usize,
    state: Mutex<State>,
}

impl ChunkCache {
    pub fn new(repo: Arc<Repository>, capacity: usize) -> ChunkCache {
        let state = State {
            chunks: LruCache::unbounded(),
            bytes: 0,
            evicted_since_trim: 0,
            loading: HashMap::new(),
            spare: Vec::new(),
            consumed: VecDeque::new(),
            budget: capacity,
            inserted_since_measure: 0,
        };
        ChunkCache { repo, capacity, state: Mutex::new(state) }
    }

    /// Is the whole chunk cached or being loaded?
    pub fn contains(&self, id: &BlobId) -> bool {
        let state = self.state.lock().expect("cache lock");
        state.chunks.contains(&(*id, WHOLE)) || state.loading.contains_key(&(*id, WHOLE))
    }

    /// The whole chunk, verified against its id.
    /// Those of `chunks` neither cached nor loading as whole chunks.
    pub fn missing(&self, mut chunks: Vec<ChunkRef>) -> Vec<ChunkRef> {
        let state = self.state.lock().expect("cache lock");
        chunks.retain(|c| !state.chunks.contains(&(c.id, WHOLE)) && !state.loading.contains_key(&(c.id, WHOLE)));
        chunks
    }

    pub fn get(&self, id: &BlobId) -> Result<Chunk, LoadError> {
        self.get_key((*id, WHOLE))
    }

    /// Frame `number` of a framed chunk, authenticated as that frame.
    pub fn get_frame(&self, id: &BlobId, number: u32) -> Result<Chunk, LoadError> {
        self.get_key((*id, number))
    }

    fn get_key(&self, key: Key) -> Result<Chunk, LoadError> {
        let (loading, buffer) = {
            let mut state = self.state.lock().expect("cache lock");
            if let Some(chunk) = state.chunks.get(&key) {
                return Ok(chunk.clone());
            }
            match state.loading.get(&key) {
                Some(loading) => (loading.clone(), None),
                None => {
                    let loading = Arc::new(Loading::default());
                    state.loading.insert(key, loading.clone());
                    let buffer = if key.1 == WHOLE { state.spare.pop().unwrap_or_default() } else { Vec::new() };
                    state.bytes -= buffer.capacity().next_multiple_of(4096);
                    (loading, Some(buffer))
                }
            }
        };
        let Some(mut buffer) = buffer else {
            let mut result = loading.result.lock().expect("load lock");
            while result.is_none() {
                result = loading.done.wait(result).expect("load lock");
            }
            return result.clone().expect("set before notify");
        };
        let (id, frame) = key;
        // A load that panics must still answer its waiters, or they would wait forever.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match frame {
                WHOLE => self.repo.load_blob_into(&id, &mut buffer),
                number => self.repo.load_frame(&id, number, &mut buffer),
            }
            .map(|()| buffer)
        }));
        let result = match loaded {
            Ok(Ok(buffer)) => Ok(Arc::new(buffer)),
            Ok(Err(e)) => Err(LoadError { damaged: e.is_corruption(), message: e.to_string() }),
            Err(_) => Err(unexpected(&id)),
        };
        self.settle(key, &loading, result.clone());
        result
    }

    /// Loads those of `ids` neither cached nor loading as whole chunks, neighbours in a pack in
    /// one read (see `Repository::load_blobs_in_pack_order`): a reader going through files
    /// costs the store a request per few megabytes, not one per chunk.
    pub fn prefetch(&self, ids: &[BlobId]) {
        let claimed: Vec<(BlobId, Arc<Loading>)> = {
            let mut state = self.state.lock().expect("cache lock");
            let mut claimed = Vec::new();
            for id in ids {
                let key = (*id, WHOLE);
                if !state.chunks.contains(&key) && !state.loading.contains_key(&key) {
                    let loading = Arc::new(Loading::default());
                    state.loading.insert(key, loading.clone());
                    claimed.push((*id, loading));
                }
            }
            claimed
        };
        if claimed.is_empty() {
            return;
        }
        let wanted: Vec<BlobId> = claimed.iter().map(|(id, _)| *id).collect();
        let loading_of = |id: &BlobId| claimed.iter().find(|(c, _)| c == id).map(|(_, l)| l);
        // As in `get_key`: a panic must not leave waiters waiting.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.repo.load_blobs_in_pack_order::<()>(&wanted, 1, PREFETCH_PIECE_MAX, |id, plain| {
                let result = match plain {
                    Ok(plain) => {
                        let mut buffer = {
                            let mut state = self.state.lock().expect("cache lock");
                            let buffer = state.spare.pop().unwrap_or_default();
                            state.bytes -= buffer.capacity().next_multiple_of(4096);
                            buffer
                        };
                        buffer.clear();
                        buffer.extend_from_slice(plain);
                        Ok(Arc::new(buffer))
                    }
                    Err(e) => Err(LoadError { damaged: e.is_corruption(), message: e.to_string() }),
                };
                if let Some(loading) = loading_of(id) {
                    self.settle((*id, WHOLE), loading, result);
                }
                Ok(())
            })
        }));
        for (id, loading) in &claimed {
            if loading.result.lock().expect("load lock").is_none() {
                self.settle((*id, WHOLE), loading, Err(unexpected(id)));
            }
        }
    }

    /// Ends the load of `key`: keeps what was loaded and wakes whoever waits for it.
    fn settle(&self, key: Key, loading: &Loading, result: Result<Chunk, LoadError>) {
        {
            let mut state = self.state.lock().expect("cache lock");
            state.loading.remove(&key);
            if let Ok(chunk) = &result {
                self.insert(&mut state, key, chunk.clone());
            }
        }
        *loading.result.lock().expect("load lock") = Some(result);
        loading.done.notify_all();
    }

    /// Chunk `id` was read to its end by a sequential reader. The kernel keeps what it read, so
    /// the chunk will hardly be asked for again: after a few more chunks its buffer is loaded
    /// into again. Kept in the cache, a streamed gigabyte filled it with fresh memory, whose page
    /// faults and zeroing took about a tenth of the daemon's time.
    pub fn consumed(&self, id: &BlobId) {
        let mut state = self.state.lock().expect("cache lock");
        let key = (*id, WHOLE);
        if state.consumed.contains(&key) {
            return;
        }
        state.consumed.push_back(key);
        if state.consumed.len() > CONSUMED_KEPT {
            let Some(oldest) = state.consumed.pop_front() else { return };
            if let Some(chunk) = state.chunks.pop(&oldest) {
                state.bytes -= memory_of(&chunk);
                recycle(&mut state, chunk);
            }
        }
    }

    fn insert(&self, state: &mut State, key: Key, chunk: Chunk) {
        state.bytes += memory_of(&chunk);
        state.inserted_since_measure += memory_of(&chunk);
        if let Some(old) = state.chunks.put(key, chunk) {
            state.bytes -= memory_of(&old);
        }
        if state.inserted_since_measure >= MEASURE_EVERY {
            state.inserted_since_measure = 0;
            self.adjust_budget(state);
        }
        while state.bytes > state.budget {
            let Some((_, evicted)) = state.chunks.pop_lru() else {
                match state.spare.pop() {
                    Some(buffer) => state.bytes -= buffer.capacity().next_multiple_of(4096),
                    None => break,
                }
                continue;
            };
            state.bytes -= memory_of(&evicted);
            recycle(state, evicted);
        }
        // Small chunks live in the allocator's heap, where evicted ones leave holes that it
        // keeps: without this the daemon grows to about twice `cache_size`.
        if state.evicted_since_trim > TRIM_EVERY {
            state.evicted_since_trim = 0;
            // SAFETY: malloc_trim only returns free memory to the system.
            unsafe { libc::malloc_trim(0) };
        }
    }

    /// Shrinks the budget when the daemon holds more than `capacity + HEADROOM`, and lets it grow
    /// back slowly when it holds less: the allocator's holes are real memory that users counted
    /// in `cache_size`.
    fn adjust_budget(&self, state: &mut State) {
        let Some(resident) = resident_bytes() else { return };
        let limit = self.capacity + HEADROOM;
        if resident > limit {
            let floor = self.capacity / 2;
            state.budget = state.budget.saturating_sub(resident - limit + MEASURE_EVERY).max(floor);
            state.evicted_since_trim = TRIM_EVERY + 1; // trim after this round of evictions
        } else if resident + 2 * MEASURE_EVERY < limit {
            state.budget = (state.budget + MEASURE_EVERY / 2).min(self.capacity);
        }
    }
}

/// Keeps the buffer of a chunk that left the cache for a coming load: if nothing else holds it
/// (it is not still being sent to the kernel) and it is big. A kept buffer still counts.
fn recycle(state: &mut State, chunk: Chunk) {
    match Arc::try_unwrap(chunk) {
        Ok(buffer) if buffer.capacity() >= REUSED_FROM && state.spare.len() < SPARE_BUFFERS => {
            state.bytes += buffer.capacity().next_multiple_of(4096);
            state.spare.push(buffer);
        }
        Ok(buffer) if buffer.capacity() < REUSED_FROM => state.evicted_since_trim += buffer.capacity(),
        _ => {}
    }
}

/// The process's resident memory, from /proc/self/statm.
fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// What a chunk really costs: the daemon has the allocator map every big buffer on its own pages
/// (see `mount`), so sizes count in whole pages, and a reused buffer counts all it holds.
fn memory_of(chunk: &Chunk) -> usize {
    chunk.capacity().next_multiple_of(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::packer::Packer;
    use crate::repo::{BlobKind, InitOptions};

    /// A repository holding `count` incompressible blobs of 256 KiB; returns it with their ids and contents.
    fn repo_with_blobs(dir: &std::path::Path, count: u8) -> (Arc<Repository>, Vec<(BlobId, Vec<u8>)>) {
        let kdf = crate::repo::crypto::KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 };
        Repository::init_folder(dir, Some(b"pw"), InitOptions { kdf, ..Default::default() }).unwrap();
        let repo = Repository::open_folder(dir, || Ok(b"pw".to_vec())).unwrap();
        let mut packer = Packer::new(&repo);
        let mut blobs = Vec::new();
        for n in 0..count {
            let mut content = vec![0u8; 256 * 1024];
            let mut state = u64::from(n) + 1;
            for byte in content.iter_mut() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                *byte = (state >> 56) as u8;
            }
            let id = repo.blob_id(&content);
            packer
                .add(id, BlobKind::Data, &repo.encode_blob(BlobKind::Data, &id, &content), content.len() as u32)
                .unwrap();
            blobs.push((id, content));
        }
        packer.finish().unwrap();
        let repo = Repository::open_folder(dir, || Ok(b"pw".to_vec())).unwrap();
        (Arc::new(repo), blobs)
    }

    #[test]
    fn chunks_read_to_their_end_give_their_buffers_to_the_next_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, blobs) = repo_with_blobs(dir.path(), 24);
        let cache = ChunkCache::new(repo, 64 << 20);
        for (id, content) in &blobs {
            assert_eq!(&cache.get(id).unwrap()[..], &content[..]);
            cache.consumed(id);
        }
        let state = cache.state.lock().unwrap();
        assert_eq!(state.chunks.len(), CONSUMED_KEPT, "only the last chunks read to their end stay");
        assert!(!state.spare.is_empty(), "the buffers of the others were not kept for the next loads");
        drop(state);
        // A chunk that left is loaded again when asked for, intact.
        let (first, content) = &blobs[0];
        assert!(!cache.contains(first));
        assert_eq!(&cache.get(first).unwrap()[..], &content[..]);
    }
}
