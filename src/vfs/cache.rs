//! The mount's chunk cache: decoded, verified chunks kept in an LRU bounded in bytes. Concurrent
//! requests for one chunk load it once; the others wait for that load.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use lru::LruCache;

use crate::repo::{BlobId, Repository};

pub type Chunk = Arc<Vec<u8>>;

const TRIM_EVERY: usize = 32 << 20;

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
    chunks: LruCache<BlobId, Chunk>,
    bytes: usize,
    /// Bytes evicted since the allocator last gave freed memory back (see `insert`).
    evicted_since_trim: usize,
    loading: HashMap<BlobId, Arc<Loading>>,
}

pub struct ChunkCache {
    repo: Arc<Repository>,
    capacity: usize,
    state: Mutex<State>,
}

impl ChunkCache {
    pub fn new(repo: Arc<Repository>, capacity: usize) -> ChunkCache {
        let state = State { chunks: LruCache::unbounded(), bytes: 0, evicted_since_trim: 0, loading: HashMap::new() };
        ChunkCache { repo, capacity, state: Mutex::new(state) }
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        let state = self.state.lock().expect("cache lock");
        state.chunks.contains(id) || state.loading.contains_key(id)
    }

    pub fn get(&self, id: &BlobId) -> Result<Chunk, LoadError> {
        let (loading, is_loader) = {
            let mut state = self.state.lock().expect("cache lock");
            if let Some(chunk) = state.chunks.get(id) {
                return Ok(chunk.clone());
            }
            match state.loading.get(id) {
                Some(loading) => (loading.clone(), false),
                None => {
                    let loading = Arc::new(Loading::default());
                    state.loading.insert(*id, loading.clone());
                    (loading, true)
                }
            }
        };
        if !is_loader {
            let mut result = loading.result.lock().expect("load lock");
            while result.is_none() {
                result = loading.done.wait(result).expect("load lock");
            }
            return result.clone().expect("set before notify");
        }
        let result = self
            .repo
            .load_blob(id)
            .map(Arc::new)
            .map_err(|e| LoadError { damaged: e.is_corruption(), message: e.to_string() });
        {
            let mut state = self.state.lock().expect("cache lock");
            state.loading.remove(id);
            if let Ok(chunk) = &result {
                self.insert(&mut state, *id, chunk.clone());
            }
        }
        *loading.result.lock().expect("load lock") = Some(result.clone());
        loading.done.notify_all();
        result
    }

    fn insert(&self, state: &mut State, id: BlobId, chunk: Chunk) {
        state.bytes += memory_of(&chunk);
        if let Some(old) = state.chunks.put(id, chunk) {
            state.bytes -= memory_of(&old);
        }
        while state.bytes > self.capacity {
            match state.chunks.pop_lru() {
                Some((_, evicted)) => {
                    state.bytes -= memory_of(&evicted);
                    state.evicted_since_trim += memory_of(&evicted);
                }
                None => break,
            }
        }
        // Small chunks live in the allocator's heap, where evicted ones leave holes that it
        // keeps: without this the daemon grows to about twice `cache_size`.
        if state.evicted_since_trim > TRIM_EVERY {
            state.evicted_since_trim = 0;
            // SAFETY: malloc_trim only returns free memory to the system.
            unsafe { libc::malloc_trim(0) };
        }
    }
}

/// What a chunk really costs: the daemon has the allocator map every buffer of a page or more
/// on its own pages (see `mount`), so sizes count in whole pages.
fn memory_of(chunk: &Chunk) -> usize {
    chunk.len().next_multiple_of(4096)
}
