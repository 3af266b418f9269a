//! The server-wide cache of operator state: encoded values by store key, bounded in bytes
//! (`state_cache`), shared by every operator of every pipeline.
//!
//! Approximate LRU in two generations: entries go into the young generation; when it holds
//! half the budget it becomes the old one (the previous old one is dropped) and a new young
//! generation starts. A hit in the old generation moves the entry to the young one. So
//! recently used entries survive and the cache never holds more than the budget.
//!
//! Entries are valid only within one run of an operator ([`StateCache::incarnation`] is part
//! of every key): values a run staged for a checkpoint that never committed must not be seen
//! by the run that restarts from the checkpoint before.

use crate::stream::FastMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// A value as cached: `None` records that the key is absent from the store.
type Cached = Option<Vec<u8>>;

#[derive(Default)]
struct Generation {
    map: HashMap<(u64, Vec<u8>), Cached>,
    bytes: usize,
}

fn entry_bytes(key: &[u8], value: &Cached) -> usize {
    // The key twice (map key and hash), the value, and the map's per-entry overhead.
    key.len() + value.as_ref().map_or(0, |v| v.len()) + 64
}

impl Generation {
    fn insert(&mut self, key: (u64, Vec<u8>), value: Cached) {
        let size = entry_bytes(&key.1, &value);
        if let Some(old) = self.map.insert(key.clone(), value) {
            self.bytes -= entry_bytes(&key.1, &old);
        }
        self.bytes += size;
    }

    fn remove(&mut self, key: &(u64, Vec<u8>)) -> Option<Cached> {
        let old = self.map.remove(key)?;
        self.bytes -= entry_bytes(&key.1, &old);
        Some(old)
    }
}

#[derive(Default)]
struct Generations {
    young: Generation,
    old: Generation,
}

pub struct StateCache {
    budget: usize,
    inner: Mutex<Generations>,
    next_incarnation: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for StateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateCache({} bytes)", self.budget)
    }
}

impl StateCache {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::default(),
            next_incarnation: AtomicU64::new(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// A number no other run of any operator shares.
    pub fn incarnation(&self) -> u64 {
        self.next_incarnation.fetch_add(1, Ordering::Relaxed)
    }

    /// The cached value of `key`: `Some(None)` when it is known to be absent.
    pub fn get(&self, incarnation: u64, key: &[u8]) -> Option<Cached> {
        let k = (incarnation, key.to_vec());
        let mut g = self.inner.lock();
        if let Some(v) = g.young.map.get(&k) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(v.clone());
        }
        match g.old.remove(&k) {
            Some(v) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                self.insert_locked(&mut g, k, v.clone());
                Some(v)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    pub fn insert(&self, incarnation: u64, key: Vec<u8>, value: Cached) {
        if self.budget == 0 {
            return;
        }
        let mut g = self.inner.lock();
        let k = (incarnation, key);
        g.old.remove(&k);
        self.insert_locked(&mut g, k, value);
    }

    fn insert_locked(&self, g: &mut Generations, key: (u64, Vec<u8>), value: Cached) {
        g.young.insert(key, value);
        if g.young.bytes >= self.budget / 2 {
            g.old = std::mem::take(&mut g.young);
        }
    }

    /// Bytes held now (at most the budget).
    pub fn bytes(&self) -> usize {
        let g = self.inner.lock();
        g.young.bytes + g.old.bytes
    }

    /// (hits, misses) since the server started.
    pub fn hit_counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::StateCache;

    #[test]
    fn the_cache_stays_within_its_budget_and_keeps_recent_entries() {
        let cache = StateCache::new(64 * 1024);
        let run = cache.incarnation();
        for i in 0..100_000u32 {
            cache.insert(run, i.to_be_bytes().to_vec(), Some(vec![0; 100]));
            // One hot key, read all the time, is never evicted.
            cache.insert(run, b"hot".to_vec(), Some(vec![1]));
            assert!(cache.bytes() <= cache.budget());
        }
        assert_eq!(cache.get(run, b"hot"), Some(Some(vec![1])));
        assert_eq!(cache.get(run, &0u32.to_be_bytes()), None, "evicted");
        assert_eq!(
            cache.get(run, &99_999u32.to_be_bytes()),
            Some(Some(vec![0; 100]))
        );
        // Another run of the operator does not see this run's entries.
        assert_eq!(cache.get(cache.incarnation(), b"hot"), None);
    }
}
