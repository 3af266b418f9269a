//! Drives one operator in-process, without a server: feeds it batches, watermarks and
//! barriers, commits each barrier's writes with a checkpoint record into an in-memory store
//! as the sink would, and restores the operator from any committed checkpoint.
//!
//! [`check_restores`] is the test every stateful operator gets: for each barrier of an input
//! script, a run that stops right after that checkpoint and a run restored from it must
//! together produce exactly what one uninterrupted run produces.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;

use super::checkpoint::{Barrier, CheckpointRecord, commit_ops, record_key, recover};
use super::pipeline::{Message, Operator};
use super::state::StateStore;
use crate::error::Result;
use crate::storage::memory::MemoryStore;
use crate::storage::{KvStore, WriteOp};

/// The pipeline id operators under test run as.
pub const PIPELINE: u32 = 1;

/// Builds the operator over a state store, as of a committed checkpoint record.
pub type Factory = Box<dyn Fn(&StateStore, &CheckpointRecord) -> Result<Box<dyn Operator>>>;

/// One step of an input script.
#[derive(Debug, Clone)]
pub enum Input {
    Batch(RecordBatch),
    Watermark(i64),
    Barrier,
}

/// Everything in a store, to restore from.
pub type Snapshot = BTreeMap<Vec<u8>, Vec<u8>>;

pub struct Harness {
    kv: Arc<MemoryStore>,
    op: Box<dyn Operator>,
    record: CheckpointRecord,
    watermark: Option<i64>,
    /// Rows the operator emitted, in order.
    pub rows: Vec<RecordBatch>,
}

impl Harness {
    /// The operator over an empty store.
    pub fn new(make: Factory, cache_bytes: usize) -> Result<Self> {
        Self::restore(make, &Snapshot::new(), cache_bytes)
    }

    /// The operator restored from the checkpoint a snapshot holds.
    pub fn restore(make: Factory, snapshot: &Snapshot, cache_bytes: usize) -> Result<Self> {
        let kv = Arc::new(MemoryStore::new());
        let ops = snapshot
            .iter()
            .map(|(k, v)| WriteOp::Put(k.clone(), v.clone()))
            .collect();
        kv.write(ops, true)?;
        let record = recover(kv.get(&record_key(PIPELINE))?.as_deref())?;
        let state = StateStore::new(kv.clone(), cache_bytes);
        let op = make(&state, &record)?;
        Ok(Self {
            kv,
            op,
            watermark: record.watermark,
            record,
            rows: Vec::new(),
        })
    }

    pub async fn push(&mut self, input: &Input) -> Result<()> {
        let mut out = Vec::new();
        match input {
            Input::Batch(b) => self.op.on_batch(b.clone(), &mut out).await?,
            Input::Watermark(w) => {
                self.watermark = Some(*w);
                self.op.on_watermark(*w, &mut out)?
            }
            Input::Barrier => {
                let mut barrier = Barrier::new(self.record.epoch + 1, self.watermark);
                self.op.on_barrier(&mut barrier)?;
                out.push(Message::Barrier(barrier));
            }
        }
        for message in out {
            match message {
                Message::Batch(b) | Message::Events(b, _) => self.rows.push(b),
                Message::Writes(w) => self.kv.write(w, false)?,
                Message::Watermark(_) => {}
                Message::Barrier(b) => {
                    let (record, ops) = commit_ops(PIPELINE, self.record.epoch, b, 0)?;
                    self.kv.write(ops, true)?;
                    self.op.on_commit(record.epoch);
                    self.record = record;
                }
            }
        }
        Ok(())
    }

    pub async fn run(&mut self, inputs: &[Input]) -> Result<()> {
        for input in inputs {
            self.push(input).await?;
        }
        Ok(())
    }

    /// Everything the store holds now.
    pub fn snapshot(&self) -> Snapshot {
        self.kv
            .scan(&[], &[0xff; 8], usize::MAX)
            .expect("memory scan")
            .into_iter()
            .collect()
    }

    /// The store's entries under `prefix` (a table's rows).
    pub fn entries(&self, prefix: &[u8]) -> Snapshot {
        let end = crate::storage::prefix_end(prefix);
        self.kv
            .scan(prefix, &end, usize::MAX)
            .expect("memory scan")
            .into_iter()
            .collect()
    }
}

/// What a run produced: the store entries under `prefix` and the rows emitted.
pub type Produced = (Snapshot, Vec<RecordBatch>);

/// Runs `inputs` once uninterrupted, then once per barrier stopped right after it and
/// restored; each restored run's output (entries under `prefix`; rows emitted before the
/// barrier plus rows after the restore) must equal the uninterrupted one's. Returns the
/// uninterrupted run's output.
pub async fn check_restores(
    make: impl Fn() -> Factory,
    inputs: &[Input],
    prefix: &[u8],
    cache_bytes: usize,
) -> Result<Produced> {
    let mut whole = Harness::new(make(), cache_bytes)?;
    whole.run(inputs).await?;
    let expected = (whole.entries(prefix), whole.rows.clone());
    for (i, _) in inputs
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Input::Barrier))
    {
        let mut first = Harness::new(make(), cache_bytes)?;
        first.run(&inputs[..=i]).await?;
        let snapshot = first.snapshot();
        let mut rest = Harness::restore(make(), &snapshot, cache_bytes)?;
        rest.run(&inputs[i + 1..]).await?;
        let mut rows = first.rows;
        rows.extend(rest.rows.iter().cloned());
        assert_eq!(
            rest.entries(prefix),
            expected.0,
            "stored rows after a restore from the checkpoint at step {i}"
        );
        assert_eq!(
            rows, expected.1,
            "rows emitted around a restore from the checkpoint at step {i}"
        );
    }
    Ok(expected)
}
