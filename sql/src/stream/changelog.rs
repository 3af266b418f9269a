//! Changelog edges and a view's changelog.
//!
//! **Changelog batches.** Between operators, rows that change a result travel as Arrow batches
//! whose last column, [`OP_COLUMN`], says what each row does ([`Op`]): insert, delete, or the
//! two halves of an update (the row before and the row after). An operator downstream of an
//! updating view (an aggregate of an aggregate) retracts the deleted rows and adds the
//! inserted ones, so its result is exact.
//!
//! **A view's changelog.** A materialized view that groups writes its rows as they change
//! (ahead of its checkpoint, idempotently). When another pipeline reads the view, the view's
//! sink also appends, in each checkpoint's atomic batch, one entry per row key the epoch
//! changed: the key and its new stored row, or a tombstone (keys `l <view> <seq>`, see
//! `keys.rs`). The log is an upsert log: a reader keeps the view's rows it has seen
//! (`operators/normalize.rs`) and turns each entry into the delete of the old row and the
//! insert of the new one. A reader starts with a snapshot of the view's rows (which may be
//! ahead of its log: replaying an upsert the snapshot already holds changes nothing) and then
//! follows the log from the position it registered ([`subscribe`]); its position is stored
//! with each of its checkpoints (`r <view> <reader>`), and the view drops log entries every
//! reader has passed. Registration and the view's commit take the same lock, so no entry a new
//! reader needs is dropped before its position is recorded.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    ArrayRef, AsArray, BinaryArray, Int8Array, RecordBatch, RecordBatchOptions,
};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use eddy_connectors::{Poll, Positions, Source, SourceBatch};

use crate::catalog::TableDef;
use crate::error::{Error, Result};
use crate::keys::{changelog_key, changelog_prefix, subscription_key, subscription_prefix};
use crate::storage::{KvStore, WriteOp, prefix_end};
use std::sync::atomic::Ordering::SeqCst;

/// The operation column of a changelog batch (always its last column).
pub const OP_COLUMN: &str = "__op";

/// What a row of a changelog batch does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum Op {
    Insert = 0,
    Delete = 1,
    /// The old row of an update.
    UpdateBefore = 2,
    /// The new row of an update.
    UpdateAfter = 3,
}

impl Op {
    /// Whether the row is taken out of the result (a delete or an update's old row).
    pub fn retracts(code: i8) -> bool {
        code == Op::Delete as i8 || code == Op::UpdateBefore as i8
    }
}

/// `rows` with an operation column added.
pub fn with_ops(rows: &RecordBatch, ops: Vec<i8>) -> Result<RecordBatch> {
    let mut fields: Vec<_> = rows.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(OP_COLUMN, DataType::Int8, false)));
    let mut columns = rows.columns().to_vec();
    columns.push(Arc::new(Int8Array::from(ops)));
    let options = RecordBatchOptions::new().with_row_count(Some(rows.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &options,
    )?)
}

/// One changelog batch of `retracted` rows (deletes) followed by `inserted` rows; None if
/// both are empty.
pub fn changes(retracted: &[RecordBatch], inserted: &[RecordBatch]) -> Result<Option<RecordBatch>> {
    let mut parts = Vec::new();
    for (batches, op) in [(retracted, Op::Delete), (inserted, Op::Insert)] {
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            parts.push(with_ops(b, vec![op as i8; b.num_rows()])?);
        }
    }
    match parts.first() {
        None => Ok(None),
        Some(first) => Ok(Some(concat_batches(&first.schema(), &parts)?)),
    }
}

/// A changelog batch as its retracted rows and its added rows (without the op column), each
/// in their order in the batch.
pub fn split(changes: &RecordBatch) -> Result<(RecordBatch, RecordBatch)> {
    let last = changes.num_columns() - 1;
    if changes.schema().field(last).name() != OP_COLUMN {
        return Err(Error::internal("a changelog batch without an op column"));
    }
    let ops = changes
        .column(last)
        .as_primitive::<datafusion::arrow::datatypes::Int8Type>();
    let retract: datafusion::arrow::array::BooleanArray = ops
        .iter()
        .map(|o| Some(o.is_some_and(Op::retracts)))
        .collect();
    let add = datafusion::arrow::compute::not(&retract)?;
    let rows = changes.project(&(0..last).collect::<Vec<_>>())?;
    Ok((
        filter_record_batch(&rows, &retract)?,
        filter_record_batch(&rows, &add)?,
    ))
}

/// One upsert of a view's changelog: a row key of the view and its new stored row (None: the
/// row was deleted).
fn encode_entry(key: &[u8], value: Option<&[u8]>) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + key.len() + value.map_or(0, |v| v.len()));
    v.push(value.is_some() as u8);
    v.extend_from_slice(&(key.len() as u32).to_be_bytes());
    v.extend_from_slice(key);
    if let Some(value) = value {
        v.extend_from_slice(value);
    }
    v
}

pub fn decode_entry(entry: &[u8]) -> Result<(&[u8], Option<&[u8]>)> {
    let corrupt = || Error::internal("corrupt changelog entry");
    let len = u32::from_be_bytes(entry.get(1..5).ok_or_else(corrupt)?.try_into().expect("4"));
    let key = entry.get(5..5 + len as usize).ok_or_else(corrupt)?;
    let value = (entry[0] == 1).then(|| &entry[5 + len as usize..]);
    Ok((key, value))
}

/// What a view's sink and the pipelines that start reading the view share.
#[derive(Debug, Default)]
pub struct LogShared {
    /// Held while a checkpoint decides which entries to write and keep, and while a reader
    /// registers.
    lock: parking_lot::Mutex<()>,
    /// Whether the view has readers: only then does its sink keep each epoch's changes.
    readers: std::sync::atomic::AtomicBool,
}

/// The sink side of a view's changelog: the row keys an epoch changed, appended to the log
/// at the checkpoint when the view has readers.
#[derive(Debug)]
pub struct ViewLog {
    view: u32,
    /// The view's row key prefix (writes to other tables, such as dead letters, are not
    /// part of the log).
    prefix: Vec<u8>,
    shared: Arc<LogShared>,
    /// Row key (after the prefix) → its stored row now (None: deleted), for this epoch.
    pending: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The entries that may exist in the store: `[start, end)`.
    start: u64,
    end: u64,
}

impl ViewLog {
    pub fn new(def: &TableDef, shared: Arc<LogShared>, kv: &dyn KvStore) -> Result<Self> {
        let subs = subscription_prefix(def.id);
        if !kv.scan(&subs, &prefix_end(&subs), 1)?.is_empty() {
            shared.readers.store(true, SeqCst);
        }
        let prefix = changelog_prefix(def.id);
        let end = prefix_end(&prefix);
        let (start, end) = match kv.scan(&prefix, &end, 1)?.first() {
            Some((first, _)) => {
                let last = kv.last_key(&prefix, &end)?.unwrap_or_else(|| first.clone());
                (seq_of(first), seq_of(&last) + 1)
            }
            None => (0, 0),
        };
        Ok(Self {
            view: def.id,
            prefix: def.key_prefix(),
            shared,
            pending: Default::default(),
            start,
            end,
        })
    }

    /// Notes the view rows among `ops` (written already) if the view has readers. A reader
    /// that registers after this check reads the rows in its snapshot, which it takes once
    /// this epoch has committed.
    pub fn record(&mut self, ops: &[WriteOp]) {
        if !self.shared.readers.load(SeqCst) {
            return;
        }
        for op in ops {
            match op {
                WriteOp::Put(k, v) if k.starts_with(&self.prefix) => {
                    self.pending
                        .insert(k[self.prefix.len()..].to_vec(), Some(v.clone()));
                }
                WriteOp::Delete(k) if k.starts_with(&self.prefix) => {
                    self.pending.insert(k[self.prefix.len()..].to_vec(), None);
                }
                _ => {}
            }
        }
    }

    /// Entries this epoch appends (the sequence numbers it uses, whether or not the view has
    /// readers to write them for).
    pub fn pending(&self) -> u64 {
        self.pending.len() as u64
    }

    /// Takes this epoch's entries, numbered from `first_seq`, for the checkpoint to write.
    pub fn take(&mut self, first_seq: u64) -> LogCommit {
        LogCommit {
            view: self.view,
            shared: self.shared.clone(),
            entries: std::mem::take(&mut self.pending),
            first_seq,
            start: self.start,
            end: self.end,
        }
    }

    /// The checkpoint that took the entries was written: `[start, end)` may exist now.
    pub fn committed(&mut self, (start, end): (u64, u64)) {
        (self.start, self.end) = (start, end);
    }
}

/// One epoch's changelog entries, written with the checkpoint.
#[derive(Debug)]
pub struct LogCommit {
    view: u32,
    shared: Arc<LogShared>,
    entries: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    first_seq: u64,
    start: u64,
    end: u64,
}

impl LogCommit {
    /// Writes the checkpoint batch `ops` with the entries if the view has readers, dropping
    /// the entries every reader has passed; returns where the log now starts. Runs under the
    /// log's lock, so a reader registering meanwhile sees the batch either whole or not at
    /// all. Returns the range of entries that may exist now.
    pub fn write(self, kv: &dyn KvStore, mut ops: Vec<WriteOp>) -> Result<(u64, u64)> {
        let _guard = self.shared.lock.lock();
        let subs = subscription_prefix(self.view);
        let positions: Vec<u64> = kv
            .scan(&subs, &prefix_end(&subs), usize::MAX)?
            .iter()
            .filter_map(|(_, v)| Some(u64::from_be_bytes(v.as_slice().try_into().ok()?)))
            .collect();
        let next = self.first_seq + self.entries.len() as u64;
        let (mut start, mut end) = (self.start, self.end);
        if !positions.is_empty() && !self.entries.is_empty() {
            if start >= end {
                start = self.first_seq;
            }
            end = next;
            for (seq, (key, value)) in (self.first_seq..).zip(&self.entries) {
                ops.push(WriteOp::Put(
                    changelog_key(self.view, seq),
                    encode_entry(key, value.as_deref()),
                ));
            }
        }
        let keep_from = positions.iter().copied().min().unwrap_or(next).min(next);
        if keep_from > start && start < end {
            ops.push(WriteOp::DeleteRange(
                changelog_key(self.view, start),
                changelog_key(self.view, keep_from.min(end)),
            ));
            start = keep_from.min(end);
        }
        kv.write(ops, true)?;
        self.shared.readers.store(!positions.is_empty(), SeqCst);
        Ok((start, end))
    }
}

fn seq_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8-byte sequence"))
}

/// Registers pipeline `reader` as a reader of the view's changelog from the view's next entry
/// (its last checkpoint's `next_seq`); returns that position.
pub fn subscribe(kv: &dyn KvStore, shared: &LogShared, view: u32, reader: u32) -> Result<u64> {
    let _guard = shared.lock.lock();
    shared.readers.store(true, SeqCst);
    let record =
        super::checkpoint::recover(kv.get(&super::checkpoint::record_key(view))?.as_deref())?;
    kv.write(
        vec![WriteOp::Put(
            subscription_key(view, reader),
            record.next_seq.to_be_bytes().to_vec(),
        )],
        true,
    )?;
    Ok(record.next_seq)
}

/// The stored position of a reader, written with each of its checkpoints.
pub fn position_write(view: u32, reader: u32, position: u64) -> WriteOp {
    WriteOp::Put(
        subscription_key(view, reader),
        position.to_be_bytes().to_vec(),
    )
}

/// Columns a view's changelog is read as: each row's key in the view and its stored row
/// (NULL where it was deleted).
pub fn upsert_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, false),
        Field::new("row", DataType::Binary, true),
    ]))
}

/// Reads a view as upserts: first a snapshot of its rows, then its changelog.
///
/// Positions: partition 0 is the next log entry; partition 1 is 1 once the snapshot has been
/// read. A reader restarted before its snapshot was complete reads it again (from its start:
/// the upserts it repeats change nothing). The snapshot is read once the view has committed
/// a checkpoint after the reader opened: the view's sink keeps changes for the log only from
/// when it learns of the reader, and rows it wrote before are in the table by then.
pub struct ViewLogSource {
    view: Arc<TableDef>,
    kv: Arc<dyn KvStore>,
    next: u64,
    /// Where the snapshot continues (a row key), while it is being read.
    snapshot: Option<Vec<u8>>,
    /// The view's checkpoint epoch when the reader opened, until one after it is seen.
    wait_past: Option<u64>,
}

fn committed_epoch(kv: &dyn KvStore, view: u32) -> Result<u64> {
    let record =
        super::checkpoint::recover(kv.get(&super::checkpoint::record_key(view))?.as_deref())?;
    Ok(record.epoch)
}

impl ViewLogSource {
    pub fn open(view: Arc<TableDef>, kv: Arc<dyn KvStore>, start: &Positions) -> Result<Self> {
        let next = start.get(&0).copied().unwrap_or(0).max(0) as u64;
        let snapshot_done = start.get(&1).copied().unwrap_or(0) == 1;
        let snapshot = (!snapshot_done).then(|| view.key_prefix());
        let wait_past = match snapshot_done {
            true => None,
            false => Some(committed_epoch(kv.as_ref(), view.id)?),
        };
        Ok(Self {
            view,
            kv,
            next,
            snapshot,
            wait_past,
        })
    }

    fn batch(pairs: Vec<(Vec<u8>, Option<Vec<u8>>)>, origins: Vec<(i32, i64)>) -> Result<Poll> {
        let keys = BinaryArray::from_iter_values(pairs.iter().map(|(k, _)| k.as_slice()));
        let rows: BinaryArray = pairs.iter().map(|(_, v)| v.as_deref()).collect();
        let columns: Vec<ArrayRef> = vec![Arc::new(keys), Arc::new(rows)];
        Ok(Poll::Batch(SourceBatch {
            rows: RecordBatch::try_new(upsert_schema(), columns)?,
            dead_letters: Vec::new(),
            origins,
        }))
    }

    fn poll_inner(&mut self, max_rows: usize, timeout: Duration) -> Result<Poll> {
        if let Some(epoch) = self.wait_past {
            if committed_epoch(self.kv.as_ref(), self.view.id)? <= epoch {
                std::thread::sleep(timeout.min(Duration::from_millis(20)));
                return Ok(Poll::Idle);
            }
            self.wait_past = None;
        }
        let prefix = self.view.key_prefix();
        if let Some(from) = self.snapshot.take() {
            let chunk = self.kv.scan(&from, &prefix_end(&prefix), max_rows)?;
            if chunk.len() == max_rows {
                let mut after = chunk.last().expect("not empty").0.clone();
                after.push(0);
                self.snapshot = Some(after);
            }
            if !chunk.is_empty() {
                let origins = (0..chunk.len()).map(|i| (1, i as i64)).collect();
                let pairs = chunk
                    .into_iter()
                    .map(|(k, v)| (k[prefix.len()..].to_vec(), Some(v)))
                    .collect();
                return Self::batch(pairs, origins);
            }
        }
        let log = changelog_prefix(self.view.id);
        let mut chunk = Vec::new();
        let deadline = std::time::Instant::now() + timeout;
        while chunk.is_empty() {
            chunk = self.kv.scan(
                &changelog_key(self.view.id, self.next),
                &prefix_end(&log),
                max_rows,
            )?;
            if chunk.is_empty() {
                let now = std::time::Instant::now();
                if now >= deadline {
                    return Ok(Poll::Idle);
                }
                std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
            }
        }
        let mut pairs = Vec::with_capacity(chunk.len());
        let mut origins = Vec::with_capacity(chunk.len());
        for (k, v) in &chunk {
            let (key, row) = decode_entry(v)?;
            pairs.push((key.to_vec(), row.map(|r| r.to_vec())));
            origins.push((0, seq_of(k) as i64));
        }
        self.next = seq_of(&chunk.last().expect("not empty").0) + 1;
        Self::batch(pairs, origins)
    }
}

impl Source for ViewLogSource {
    fn poll(&mut self, max_rows: usize, timeout: Duration) -> eddy_connectors::Result<Poll> {
        self.poll_inner(max_rows, timeout)
            .map_err(|e| eddy_connectors::Error::External(e.to_string()))
    }

    fn positions(&self) -> Positions {
        Positions::from([(0, self.next as i64), (1, self.snapshot.is_none() as i64)])
    }

    fn schema(&self) -> SchemaRef {
        upsert_schema()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let e = encode_entry(b"k1", Some(b"row"));
        assert_eq!(decode_entry(&e).unwrap(), (&b"k1"[..], Some(&b"row"[..])));
        let e = encode_entry(b"k2", None);
        assert_eq!(decode_entry(&e).unwrap(), (&b"k2"[..], None));
        let e = encode_entry(b"", Some(b""));
        assert_eq!(decode_entry(&e).unwrap(), (&b""[..], Some(&b""[..])));
    }

    #[test]
    fn changes_split_back_into_their_parts() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let b = |v: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(datafusion::arrow::array::Int64Array::from(v))],
            )
            .unwrap()
        };
        let c = changes(&[b(vec![1, 2])], &[b(vec![3])]).unwrap().unwrap();
        assert_eq!(c.num_columns(), 2);
        let (retracted, inserted) = split(&c).unwrap();
        assert_eq!(retracted, b(vec![1, 2]));
        assert_eq!(inserted, b(vec![3]));
        assert!(changes(&[b(vec![])], &[]).unwrap().is_none());
    }
}
