//! The RocksDB [`KvStore`]: the only module that opens RocksDB.
//!
//! Durability: every batch goes through the write-ahead log; a synced write returns after
//! `fsync`. RocksDB's write path batches concurrent writers behind one leader, so synced
//! commits from several sessions share one WAL sync (group commit): the `wal_syncs` counter
//! against `writes` in [`KvStore::stats`] shows how many syncs were shared.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, DB, DBCompressionType, IteratorMode, Options, ReadOptions,
    WriteBatch, WriteOptions, statistics::Ticker,
};

use super::{KvPair, KvStore, WriteOp};
use crate::error::{Error, Result};

/// Block cache for table data, index and filter blocks.
const BLOCK_CACHE_BYTES: usize = 64 << 20;

pub struct RocksStore {
    db: DB,
    options: Options,
}

/// What the OS says when a filesystem is full (ENOSPC), as RocksDB passes it on in its
/// IOError text (the C API gives no status subcode).
const NO_SPACE: &str = "No space left on device";

fn storage_err(e: rocksdb::Error) -> Error {
    let text = e.into_string();
    if text.contains(NO_SPACE) {
        // RocksDB stops writing and resumes by itself once space is free again (its
        // SstFileManager polls for it): the user only has to free space.
        return Error::user(
            crate::error::sqlstate::DISK_FULL,
            "could not write to the data directory: no space left on device",
        )
        .with_detail(format!(
            "Free space on the data directory's filesystem: writes resume by themselves. ({text})"
        ));
    }
    Error::Storage(text)
}

impl RocksStore {
    pub fn open(path: &Path) -> Result<Self> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_compression_type(DBCompressionType::Lz4);
        options.set_bottommost_compression_type(DBCompressionType::Zstd);
        options.set_max_background_jobs(2);
        options.set_bytes_per_sync(1 << 20);
        options.enable_statistics();
        options.set_enable_pipelined_write(true);
        // Writers waiting on a group commit's fsync block instead of spinning for up to
        // 100 us: on a small edge box the spinning took the cores the other sessions needed
        // (single-row INSERTs at 16 clients spent a tenth of their CPU in it).
        options.set_enable_write_thread_adaptive_yield(false);
        // Point reads dominate (key lookups, uniqueness checks on insert): bloom filters in
        // SST files and in the memtable, index and filter blocks cached and pinned for L0.
        // Filters and indexes are partitioned: a whole-file filter of a large file (over a
        // megabyte for a million keys) is bigger than a cache shard, so it was never cached
        // and every lookup read and checksummed it again (a view's point reads ran 10x slower
        // than a table's). Partitions are cached like data blocks; their top level is pinned.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES));
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_top_level_index_and_filter(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        options.set_block_based_table_factory(&table);
        options.set_memtable_whole_key_filtering(true);
        options.set_memtable_prefix_bloom_ratio(0.1);
        options.set_write_buffer_size(32 << 20);
        let db = DB::open(&options, path).map_err(storage_err)?;
        Ok(Self { db, options })
    }
}

impl KvStore for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key).map_err(storage_err)
    }

    fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.db
            .multi_get(keys)
            .into_iter()
            .map(|r| r.map_err(storage_err))
            .collect()
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>> {
        let mut read = ReadOptions::default();
        read.set_iterate_upper_bound(end.to_vec());
        let iter = self
            .db
            .iterator_opt(IteratorMode::From(start, rocksdb::Direction::Forward), read);
        let mut out = Vec::with_capacity(limit.min(8192));
        for item in iter.take(limit) {
            let (k, v) = item.map_err(storage_err)?;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn last_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut read = ReadOptions::default();
        read.set_iterate_lower_bound(start.to_vec());
        let iter = self
            .db
            .iterator_opt(IteratorMode::From(end, rocksdb::Direction::Reverse), read);
        for item in iter {
            let (k, _) = item.map_err(storage_err)?;
            if &*k < end {
                return Ok(Some(k.into_vec()));
            }
        }
        Ok(None)
    }

    fn write(&self, ops: Vec<WriteOp>, sync: bool) -> Result<()> {
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                WriteOp::Put(k, v) => batch.put(k, v),
                WriteOp::Delete(k) => batch.delete(k),
                WriteOp::DeleteRange(start, end) => batch.delete_range(start, end),
            }
        }
        let mut write = WriteOptions::default();
        write.set_sync(sync);
        self.db.write_opt(batch, &write).map_err(storage_err)
    }

    fn stats(&self) -> Vec<(String, u64)> {
        let tick = |t| self.options.get_ticker_count(t);
        vec![
            ("writes_self".into(), tick(Ticker::WriteDoneBySelf)),
            ("writes_by_other".into(), tick(Ticker::WriteDoneByOther)),
            ("wal_syncs".into(), tick(Ticker::WalFileSynced)),
            ("wal_bytes".into(), tick(Ticker::WalFileBytes)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RocksStore::open(dir.path()).unwrap();
            s.write(vec![WriteOp::Put(b"k".to_vec(), b"v".to_vec())], true)
                .unwrap();
        }
        let s = RocksStore::open(dir.path()).unwrap();
        assert_eq!(s.get(b"k").unwrap().unwrap(), b"v");
        assert_eq!(s.last_key(b"a", b"z").unwrap().unwrap(), b"k");
        assert_eq!(s.scan(b"a", b"k", 10).unwrap().len(), 0);
    }
}
