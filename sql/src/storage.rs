//! The storage seam: an ordered key-value store with atomic, optionally synced, batches.
//!
//! Everything Eddy persists (catalog entries, table rows) goes through [`KvStore`]. This module
//! does not know RocksDB: [`rocks`] is the one place that opens it, [`memory`] is the
//! in-memory implementation unit tests use. Invariant: a `write` with `sync = true` returns only
//! after its batch is durable, and a batch is applied all-or-nothing.

pub mod memory;
pub mod rocks;

use crate::error::Result;

/// One change inside an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Deletes every key in `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

pub type KvPair = (Vec<u8>, Vec<u8>);

pub trait KvStore: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// Up to `limit` entries with `start <= key < end`, in ascending key order.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>>;

    /// The greatest key in `[start, end)`, if any.
    fn last_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Applies `ops` atomically. With `sync`, returns once the batch is durable on disk;
    /// concurrent synced writers may share one sync (group commit).
    fn write(&self, ops: Vec<WriteOp>, sync: bool) -> Result<()>;

    /// Counters for observability: (name, value).
    fn stats(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

impl std::fmt::Debug for dyn KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvStore")
    }
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// Calls `f` with every key-value pair under `prefix`, a chunk of at most `chunk` pairs at a
/// time, in key order.
pub fn for_each_chunk(
    kv: &dyn KvStore,
    prefix: &[u8],
    chunk: usize,
    mut f: impl FnMut(&[KvPair]) -> crate::error::Result<()>,
) -> crate::error::Result<()> {
    let end = prefix_end(prefix);
    let mut from = prefix.to_vec();
    loop {
        let pairs = kv.scan(&from, &end, chunk)?;
        let Some((last, _)) = pairs.last() else {
            return Ok(());
        };
        from = last.clone();
        from.push(0);
        f(&pairs)?;
    }
}
