//! Operator state, owned by the runtime: one [`StateTable`] per operator of a pipeline, keyed
//! by (pipeline, operator, key group, key) in the layout of [`crate::keys`].
//!
//! Operators never open the store. They read through the table, which looks in what they
//! staged since the last barrier, then in what they flushed for checkpoints that have not
//! committed yet, then in the server-wide [`StateCache`] (bounded by `state_cache`), then in
//! the store; so state larger than memory works, at the cost of store
//! reads for cold keys. Writes are staged in the table and leave it only at a barrier
//! ([`StateTable::flush`]), as part of the checkpoint's one synced batch: the store never
//! holds state of an epoch that did not commit, and a restart reads exactly the state of the
//! checkpoint it resumes from.

pub mod cache;
pub mod migrate;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use cache::StateCache;

use super::checkpoint::Barrier;
use crate::error::Result;
use crate::keys;
use crate::storage::{KvStore, WriteOp, prefix_end};

/// The store and the cache every state table of the server goes through.
#[derive(Debug, Clone)]
pub struct StateStore {
    kv: Arc<dyn KvStore>,
    cache: Arc<StateCache>,
}

impl StateStore {
    pub fn new(kv: Arc<dyn KvStore>, cache_bytes: usize) -> Self {
        Self {
            kv,
            cache: Arc::new(StateCache::new(cache_bytes)),
        }
    }

    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    pub fn cache(&self) -> &Arc<StateCache> {
        &self.cache
    }

    /// The state table of `operator` in `pipeline`, as of the last committed checkpoint.
    pub fn table(&self, pipeline: u32, operator: u16) -> StateTable {
        StateTable {
            prefix: keys::operator_state_prefix(pipeline, operator),
            kv: self.kv.clone(),
            cache: self.cache.clone(),
            incarnation: self.cache.incarnation(),
            staged: BTreeMap::new(),
            uncommitted: Vec::new(),
            cached: true,
        }
    }
}

/// One operator's state: values by (key group, key).
pub struct StateTable {
    prefix: Vec<u8>,
    kv: Arc<dyn KvStore>,
    cache: Arc<StateCache>,
    incarnation: u64,
    /// Writes since the last barrier, by store key (`None`: deleted).
    staged: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Whether flushed writes go to the cache (not for operators that hold their state in
    /// memory and read it back only by a scan at restore).
    cached: bool,
    /// Writes flushed into barriers whose checkpoints have not committed yet, by epoch (for
    /// cached tables). The sink commits a checkpoint after the barrier has passed, while the
    /// operator goes on: until then the store does not have them, and reads and scans must
    /// still see them. When the checkpoint commits ([`StateTable::committed`]) they move into
    /// the cache, where the budget may drop them (the store has them by then).
    uncommitted: Vec<(u64, Staged)>,
}

/// Writes by store key (`None`: deleted).
type Staged = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

impl std::fmt::Debug for StateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateTable({} staged)", self.staged.len())
    }
}

impl StateTable {
    /// A table whose writes skip the cache: the operator keeps its state in memory and reads
    /// the table only by a scan when it is restored (joins, OVER), so caching its writes
    /// would hold a second copy.
    pub fn write_through(mut self) -> Self {
        self.cached = false;
        self
    }

    /// The checkpoint `epoch` is durable: its writes are in the store, and go to the cache.
    /// Operators with a cached table call this from their `on_commit`.
    pub fn committed(&mut self, epoch: u64) {
        while self.uncommitted.first().is_some_and(|(e, _)| *e <= epoch) {
            let (_, writes) = self.uncommitted.remove(0);
            for (k, v) in writes {
                self.cache.insert(self.incarnation, k, v);
            }
        }
    }

    /// A flushed write not committed yet, latest first.
    fn uncommitted_value(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.uncommitted
            .iter()
            .rev()
            .find_map(|(_, writes)| writes.get(key).cloned())
    }

    fn store_key(&self, group: u16, key: &[u8]) -> Vec<u8> {
        keys::state_key(&self.prefix, group, key)
    }

    /// The value of `key` in `group`.
    pub fn get(&self, group: u16, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_many(&[(group, key)])?.pop().flatten())
    }

    /// The values of several keys, with one store read for all those not staged or cached.
    pub fn get_many(&self, wanted: &[(u16, &[u8])]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut values = Vec::with_capacity(wanted.len());
        let mut missing = Vec::new();
        let mut missing_at = Vec::new();
        for (i, (group, key)) in wanted.iter().enumerate() {
            let k = self.store_key(*group, key);
            if let Some(v) = self.staged.get(&k) {
                values.push(v.clone());
            } else if let Some(v) = self.uncommitted_value(&k) {
                values.push(v);
            } else if let Some(v) = self.cache.get(self.incarnation, &k) {
                values.push(v);
            } else {
                values.push(None);
                missing.push(k);
                missing_at.push(i);
            }
        }
        if !missing.is_empty() {
            let found = self.kv.multi_get(&missing)?;
            for ((k, v), i) in missing.into_iter().zip(found).zip(missing_at) {
                self.cache.insert(self.incarnation, k, v.clone());
                values[i] = v;
            }
        }
        Ok(values)
    }

    pub fn put(&mut self, group: u16, key: &[u8], value: Vec<u8>) {
        self.staged.insert(self.store_key(group, key), Some(value));
    }

    pub fn delete(&mut self, group: u16, key: &[u8]) {
        self.staged.insert(self.store_key(group, key), None);
    }

    /// Writes staged since the last barrier.
    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// Calls `f(group, key, value)` for every entry, in (group, key) order, staged writes
    /// included.
    pub fn scan(&self, mut f: impl FnMut(u16, &[u8], &[u8]) -> Result<()>) -> Result<()> {
        let end = prefix_end(&self.prefix);
        self.scan_range(self.prefix.clone(), end, 4096, |g, k, v| {
            f(g, k, v).map(|_| true)
        })
    }

    /// Like [`StateTable::scan`], over the key groups `groups` (a partition's).
    pub fn scan_groups(
        &self,
        groups: std::ops::Range<u16>,
        mut f: impl FnMut(u16, &[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let start = self.store_key(groups.start, &[]);
        let end = match groups.end {
            keys::KEY_GROUPS => prefix_end(&self.prefix),
            end => self.store_key(end, &[]),
        };
        self.scan_range(start, end, 4096, |g, k, v| f(g, k, v).map(|_| true))
    }

    /// Like [`StateTable::scan`], over the keys of `group` that start with `prefix`.
    pub fn scan_prefix(
        &self,
        group: u16,
        prefix: &[u8],
        mut f: impl FnMut(u16, &[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let start = self.store_key(group, prefix);
        let end = prefix_end(&start);
        self.scan_range(start, end, 4096, |g, k, v| f(g, k, v).map(|_| true))
    }

    /// Like [`StateTable::scan_prefix`], until `f` returns false (reading the store in small
    /// chunks, for scans that usually stop early).
    pub fn scan_prefix_until(
        &self,
        group: u16,
        prefix: &[u8],
        f: impl FnMut(u16, &[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let start = self.store_key(group, prefix);
        let end = prefix_end(&start);
        self.scan_range(start, end, 16, f)
    }

    /// Calls `f` on the entries in `start..end` in order while it returns true; reads the
    /// store `chunk` entries at a time at first, doubling up to 4096.
    fn scan_range(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        mut chunk_len: usize,
        mut f: impl FnMut(u16, &[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let split = |k: &[u8]| {
            let g = u16::from_be_bytes([
                k[keys::OPERATOR_PREFIX_LEN],
                k[keys::OPERATOR_PREFIX_LEN + 1],
            ]);
            (g, k[keys::STATE_KEY_PREFIX_LEN..].to_vec())
        };
        // Writes not in the store: those of uncommitted checkpoints, then those staged.
        let mut overlay: Staged = BTreeMap::new();
        for (_, writes) in &self.uncommitted {
            for (k, v) in writes.range(start.clone()..end.clone()) {
                overlay.insert(k.clone(), v.clone());
            }
        }
        let overlay = match overlay.is_empty() {
            true => None,
            false => {
                for (k, v) in self.staged.range(start.clone()..end.clone()) {
                    overlay.insert(k.clone(), v.clone());
                }
                Some(overlay)
            }
        };
        let mut staged = overlay
            .as_ref()
            .unwrap_or(&self.staged)
            .range(start.clone()..end.clone())
            .peekable();
        let mut emit = |k: &[u8], v: &[u8]| {
            let (g, key) = split(k);
            f(g, &key, v)
        };
        let mut from = start;
        loop {
            let chunk = self.kv.scan(&from, &end, chunk_len)?;
            chunk_len = (chunk_len * 2).min(4096);
            let Some((last, _)) = chunk.last() else {
                break;
            };
            from = last.clone();
            from.push(0);
            for (k, v) in &chunk {
                // Staged entries before this key, then this key (staged wins).
                while let Some((sk, sv)) = staged.next_if(|(sk, _)| sk.as_slice() < k.as_slice()) {
                    if let Some(sv) = sv
                        && !emit(sk, sv)?
                    {
                        return Ok(());
                    }
                }
                let go_on = match staged.next_if(|(sk, _)| sk.as_slice() == k.as_slice()) {
                    Some((_, Some(sv))) => emit(k, sv)?,
                    Some((_, None)) => true,
                    None => emit(k, v)?,
                };
                if !go_on {
                    return Ok(());
                }
            }
        }
        for (sk, sv) in staged {
            if let Some(sv) = sv
                && !emit(sk, sv)?
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Moves the staged writes into the barrier's batch (committed with the checkpoint); a
    /// cached table keeps a copy until the checkpoint commits ([`StateTable::committed`]).
    pub fn flush(&mut self, barrier: &mut Barrier) {
        if self.staged.is_empty() {
            return;
        }
        let staged = std::mem::take(&mut self.staged);
        let op = |(k, v): (Vec<u8>, Option<Vec<u8>>)| match v {
            Some(v) => WriteOp::Put(k, v),
            None => WriteOp::Delete(k),
        };
        match self.cached {
            true => {
                barrier
                    .writes
                    .extend(staged.iter().map(|(k, v)| op((k.clone(), v.clone()))));
                self.uncommitted.push((barrier.epoch, staged));
            }
            false => barrier.writes.extend(staged.into_iter().map(op)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    fn barrier() -> Barrier {
        Barrier::new(1, None)
    }

    #[test]
    fn staged_writes_reach_the_store_only_through_the_barrier() {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
        let store = StateStore::new(kv.clone(), 1 << 20);
        let mut table = store.table(1, 2);
        table.put(3, b"a", b"1".to_vec());
        table.put(3, b"b", b"2".to_vec());
        assert_eq!(table.get(3, b"a").unwrap(), Some(b"1".to_vec()));
        assert!(
            kv.scan(&[], &[0xff], 10).unwrap().is_empty(),
            "nothing written"
        );
        let mut b = barrier();
        table.flush(&mut b);
        kv.write(b.writes, true).unwrap();
        // A new run of the operator reads what the checkpoint committed.
        let mut again = store.table(1, 2);
        assert_eq!(again.get(3, b"b").unwrap(), Some(b"2".to_vec()));
        again.delete(3, b"a");
        again.put(0, b"z", b"0".to_vec());
        again.put(3, b"c", b"3".to_vec());
        let mut seen = Vec::new();
        again
            .scan(|g, k, v| {
                seen.push((g, k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        assert_eq!(
            seen,
            vec![
                (0, b"z".to_vec(), b"0".to_vec()),
                (3, b"b".to_vec(), b"2".to_vec()),
                (3, b"c".to_vec(), b"3".to_vec()),
            ]
        );
        // Another operator's state is separate.
        assert_eq!(store.table(1, 3).get(3, b"b").unwrap(), None);
    }

    #[test]
    fn a_restarted_run_does_not_read_uncommitted_state_from_the_cache() {
        let kv: Arc<dyn KvStore> = Arc::new(MemoryStore::new());
        let store = StateStore::new(kv, 1 << 20);
        let mut table = store.table(1, 1);
        table.put(0, b"k", b"uncommitted".to_vec());
        let mut b = barrier();
        table.flush(&mut b);
        // The batch is never written (a crash before the checkpoint committed).
        assert_eq!(table.get(0, b"k").unwrap(), Some(b"uncommitted".to_vec()));
        assert_eq!(store.table(1, 1).get(0, b"k").unwrap(), None);
    }
}
