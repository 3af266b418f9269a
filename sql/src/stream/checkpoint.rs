//! The checkpoint protocol: pure (no I/O), so every step can be tested and crashed.
//!
//! A pipeline is a chain source → operators → sink, or two sources joined (or united) by a
//! two-input operator. Each source side numbers epochs and decides when a checkpoint is due
//! ([`Injector`]); it then sends a [`Barrier`] down its channel carrying the source positions
//! and watermark *after* the last event sent before it. A two-input operator waits for the
//! barrier of an epoch on both inputs and merges them ([`Barrier::merge`]): the record then
//! keeps each input's position ([`CheckpointRecord::inputs`]). Each
//! stateful operator adds the writes that bring its persisted state up to the barrier to
//! `barrier.writes`. The sink, which has written every output up to the barrier, turns the
//! barrier into one atomic batch ([`commit_ops`]): the state writes plus the pipeline's
//! [`CheckpointRecord`]. After a crash, [`recover`] reads the last record; operators reload
//! the state committed with it and the source reopens at its positions, so the events after
//! the checkpoint are replayed into exactly the state they were first applied to.
//!
//! Outputs written between checkpoints (view rows, stream rows) are visible before the
//! checkpoint commits. That is safe because they are idempotent: a replay writes the same keys
//! again (view rows are keyed by group, stream rows by an output sequence number that the
//! record restores), so after catch-up the stored result equals an uninterrupted run's. A
//! pipeline that reads an updating view is the exception: its replay may start from a newer
//! snapshot of that view, so its rows go into the checkpoint's batch instead, and an updating
//! view's changelog entries are only ever written there (`changelog.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::WriteOp;
use eddy_connectors::Positions;

/// Partition → watermark (microseconds).
pub type Watermarks = std::collections::BTreeMap<i32, i64>;

/// What one committed checkpoint of a pipeline says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub epoch: u64,
    /// Source positions after the last event included in this checkpoint.
    pub positions: Positions,
    /// Watermark (microseconds) after that event.
    pub watermark: Option<i64>,
    /// Each partition's own watermark; the source's is their minimum.
    #[serde(default)]
    pub partition_watermarks: Watermarks,
    /// Next output sequence number (streams key their rows by it).
    pub next_seq: u64,
    /// The model versions the epochs after this checkpoint score with.
    #[serde(default)]
    pub models: super::models::ModelVersions,
    /// In a pipeline that reads several sources (a join), where each input stood; the fields
    /// above then hold no positions and the minimum watermark.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<usize, InputCheckpoint>,
}

/// Where one input of a pipeline with several sources stood at a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputCheckpoint {
    pub positions: Positions,
    pub watermark: Option<i64>,
    #[serde(default)]
    pub partition_watermarks: Watermarks,
}

impl CheckpointRecord {
    /// Where input `input` resumes: its own entry, or the record itself when the pipeline
    /// reads one source.
    pub fn input(&self, input: usize) -> InputCheckpoint {
        match self.inputs.get(&input) {
            Some(i) => i.clone(),
            None if self.inputs.is_empty() => InputCheckpoint {
                positions: self.positions.clone(),
                watermark: self.watermark,
                partition_watermarks: self.partition_watermarks.clone(),
            },
            None => InputCheckpoint::default(),
        }
    }
}

pub use crate::keys::{checkpoint_key as record_key, previous_checkpoint_key};

/// A checkpoint marker flowing through the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Barrier {
    pub epoch: u64,
    pub positions: Positions,
    pub watermark: Option<i64>,
    pub partition_watermarks: Watermarks,
    /// The model versions of the epochs after this barrier.
    pub models: super::models::ModelVersions,
    /// State writes added by the operators the barrier passed.
    pub writes: Vec<WriteOp>,
    /// Each input's position, in a pipeline with several sources.
    pub inputs: BTreeMap<usize, InputCheckpoint>,
}

impl Barrier {
    /// A barrier with no positions, pins or writes yet (operator tests).
    pub fn new(epoch: u64, watermark: Option<i64>) -> Self {
        Barrier {
            epoch,
            positions: Positions::new(),
            watermark,
            partition_watermarks: Watermarks::new(),
            models: Default::default(),
            writes: Vec::new(),
            inputs: BTreeMap::new(),
        }
    }

    /// The barrier without the writes operators added to it (a copy for another partition).
    pub fn clone_without_writes(&self) -> Barrier {
        Barrier {
            epoch: self.epoch,
            positions: self.positions.clone(),
            watermark: self.watermark,
            partition_watermarks: self.partition_watermarks.clone(),
            models: self.models.clone(),
            writes: Vec::new(),
            inputs: self.inputs.clone(),
        }
    }

    /// Merges the copies of one barrier that passed the partitions of a parallel operator:
    /// the positions once, the writes of every partition.
    pub fn merge_copies(copies: Vec<Barrier>) -> Result<Barrier> {
        let mut copies = copies.into_iter();
        let mut merged = copies
            .next()
            .ok_or_else(|| Error::internal("no barrier to merge"))?;
        for b in copies {
            if b.epoch != merged.epoch {
                return Err(Error::internal(format!(
                    "partitions sent barriers of epochs {} and {}",
                    merged.epoch, b.epoch
                )));
            }
            merged.writes.extend(b.writes);
        }
        Ok(merged)
    }

    /// The one barrier of an epoch that arrived on every input of a join: every input's
    /// position, the minimum watermark, and the writes of every operator before the join.
    pub fn merge(barriers: Vec<Barrier>) -> Result<Barrier> {
        let mut barriers = barriers.into_iter();
        let mut merged = barriers
            .next()
            .ok_or_else(|| Error::internal("no barrier to merge"))?;
        for b in barriers {
            if b.epoch != merged.epoch {
                return Err(Error::internal(format!(
                    "inputs sent barriers of epochs {} and {}",
                    merged.epoch, b.epoch
                )));
            }
            merged.watermark = match (merged.watermark, b.watermark) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            };
            merged.inputs.extend(b.inputs);
            merged.writes.extend(b.writes);
            for (model, version) in b.models {
                merged.models.entry(model).or_insert(version);
            }
        }
        merged.positions.clear();
        merged.partition_watermarks.clear();
        Ok(merged)
    }
}

/// The source side: numbers epochs and spaces checkpoints `interval_ms` apart.
#[derive(Debug, Clone)]
pub struct Injector {
    interval_ms: u64,
    last_epoch: u64,
    last_at_ms: u64,
}

impl Injector {
    /// Continues after the recovered record's epoch.
    pub fn new(interval_ms: u64, recovered: &CheckpointRecord, now_ms: u64) -> Self {
        Self {
            interval_ms,
            last_epoch: recovered.epoch,
            last_at_ms: now_ms,
        }
    }

    pub fn due(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_at_ms) >= self.interval_ms
    }

    /// The next barrier, for the position reached now.
    pub fn inject(
        &mut self,
        now_ms: u64,
        positions: Positions,
        watermark: Option<i64>,
        partition_watermarks: Watermarks,
    ) -> Barrier {
        self.last_epoch += 1;
        self.last_at_ms = now_ms;
        Barrier {
            epoch: self.last_epoch,
            positions,
            watermark,
            partition_watermarks,
            models: Default::default(),
            writes: Vec::new(),
            inputs: BTreeMap::new(),
        }
    }
}

/// The sink side: the one atomic batch that commits `barrier`, given the sink's next output
/// sequence number. Epochs must arrive in order.
pub fn commit_ops(
    pipeline: u32,
    last_committed: u64,
    barrier: Barrier,
    next_seq: u64,
) -> Result<(CheckpointRecord, Vec<WriteOp>)> {
    if barrier.epoch <= last_committed {
        return Err(Error::internal(format!(
            "checkpoint epoch {} arrived after epoch {last_committed} was committed",
            barrier.epoch
        )));
    }
    let record = CheckpointRecord {
        epoch: barrier.epoch,
        positions: barrier.positions,
        watermark: barrier.watermark,
        partition_watermarks: barrier.partition_watermarks,
        next_seq,
        models: barrier.models,
        inputs: barrier.inputs,
    };
    let mut ops = barrier.writes;
    let bytes = serde_json::to_vec(&record)
        .map_err(|e| Error::internal(format!("checkpoint encode: {e}")))?;
    ops.push(WriteOp::Put(record_key(pipeline), bytes));
    Ok((record, ops))
}

/// The record to resume from (a fresh pipeline starts from the default: epoch 0, no
/// positions, which makes each source use its configured start).
pub fn recover(stored: Option<&[u8]>) -> Result<CheckpointRecord> {
    match stored {
        None => Ok(CheckpointRecord::default()),
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|e| Error::Storage(format!("corrupt checkpoint record: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    //! A model pipeline driven step by step through the protocol: a source of numbered events,
    //! a keyed running-sum operator (state + idempotent view rows) and a stream-like output
    //! keyed by sequence. It is crashed after every step, with and without losing the writes
    //! that were never synced, and must always end equal to the uninterrupted run.
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    type Store = BTreeMap<Vec<u8>, Vec<u8>>;

    fn apply(store: &mut Store, ops: &[WriteOp]) {
        for op in ops {
            match op {
                WriteOp::Put(k, v) => {
                    store.insert(k.clone(), v.clone());
                }
                WriteOp::Delete(k) => {
                    store.remove(k);
                }
                WriteOp::DeleteRange(a, b) => store.retain(|k, _| k < a || k >= b),
            }
        }
    }

    const EVENTS: i64 = 60;
    const BATCH: i64 = 4;
    const ID: u32 = 7;

    fn view_key(k: i64) -> Vec<u8> {
        format!("v{k}").into_bytes()
    }
    fn stream_key(seq: u64) -> Vec<u8> {
        let mut k = b"o".to_vec();
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }
    fn state_key(k: i64) -> Vec<u8> {
        let mut p = crate::keys::pipeline_state_prefix(ID);
        p.extend_from_slice(&k.to_be_bytes());
        p
    }

    /// Everything the model pipeline holds in memory (lost on a crash).
    struct Running {
        next_event: i64,
        sums: HashMap<i64, i64>,
        dirty: Vec<i64>,
        seq: u64,
        committed: u64,
        injector: Injector,
        clock: u64,
    }

    impl Running {
        fn recover(store: &Store) -> Self {
            let record = recover(store.get(&record_key(ID)).map(|v| v.as_slice())).unwrap();
            let prefix = crate::keys::pipeline_state_prefix(ID);
            let sums = store
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| {
                    let key = i64::from_be_bytes(k[prefix.len()..].try_into().unwrap());
                    (key, i64::from_be_bytes(v.as_slice().try_into().unwrap()))
                })
                .collect();
            Running {
                next_event: record.positions.get(&0).copied().unwrap_or(0),
                sums,
                dirty: Vec::new(),
                seq: record.next_seq,
                committed: record.epoch,
                injector: Injector::new(3, &record, 0),
                clock: 0,
            }
        }

        /// One step; returns false when the source is exhausted and the last checkpoint is
        /// committed. `synced` collects ops that were synced, `unsynced` the others.
        fn step(&mut self, synced: &mut Vec<WriteOp>, unsynced: &mut Vec<WriteOp>) -> bool {
            self.clock += 1;
            if self.next_event >= EVENTS && self.injector.last_epoch == self.committed {
                // Final barrier so the end position is committed.
                if self.dirty.is_empty() && self.committed > 0 {
                    return false;
                }
            }
            if self.injector.due(self.clock) || self.next_event >= EVENTS {
                let mut barrier = self.injector.inject(
                    self.clock,
                    Positions::from([(0, self.next_event)]),
                    None,
                    Watermarks::new(),
                );
                for k in self.dirty.drain(..) {
                    barrier.writes.push(WriteOp::Put(
                        state_key(k),
                        self.sums[&k].to_be_bytes().to_vec(),
                    ));
                }
                let (record, ops) = commit_ops(ID, self.committed, barrier, self.seq).unwrap();
                self.committed = record.epoch;
                synced.extend(ops);
                return self.next_event < EVENTS;
            }
            let end = (self.next_event + BATCH).min(EVENTS);
            for e in self.next_event..end {
                let k = e % 3;
                *self.sums.entry(k).or_default() += e;
                if !self.dirty.contains(&k) {
                    self.dirty.push(k);
                }
                unsynced.push(WriteOp::Put(
                    view_key(k),
                    self.sums[&k].to_string().into_bytes(),
                ));
                unsynced.push(WriteOp::Put(
                    stream_key(self.seq),
                    e.to_string().into_bytes(),
                ));
                self.seq += 1;
            }
            self.next_event = end;
            true
        }
    }

    fn outputs(store: &Store) -> Store {
        store
            .iter()
            .filter(|(k, _)| k[0] == b'v' || k[0] == b'o')
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Runs until the end or a crash after `crash_after` steps. Without `keep_unsynced` the
    /// crash is a power loss: the store falls back to its state at the last synced batch (a
    /// synced write makes every earlier write durable too, as RocksDB's WAL does).
    fn run(store: &mut Store, crash_after: Option<usize>, keep_unsynced: bool) -> usize {
        let mut p = Running::recover(store);
        let mut durable = store.clone();
        let mut steps = 0;
        loop {
            let (mut synced, mut unsynced) = (Vec::new(), Vec::new());
            let more = p.step(&mut synced, &mut unsynced);
            apply(store, &unsynced);
            if !synced.is_empty() {
                apply(store, &synced);
                durable = store.clone();
            }
            steps += 1;
            if Some(steps) == crash_after {
                if !keep_unsynced {
                    *store = durable;
                }
                return steps;
            }
            if !more {
                return steps;
            }
        }
    }

    #[test]
    fn crashing_after_any_step_ends_equal_to_an_uninterrupted_run() {
        let mut clean = Store::new();
        let total = run(&mut clean, None, true);
        let expected = outputs(&clean);
        assert_eq!(expected.len(), 3 + EVENTS as usize);
        for crash in 1..=total {
            for keep_unsynced in [true, false] {
                let mut store = Store::new();
                run(&mut store, Some(crash), keep_unsynced);
                // A second crash a few steps into the recovery, then run to the end.
                run(&mut store, Some(2), keep_unsynced);
                run(&mut store, None, true);
                assert_eq!(
                    outputs(&store),
                    expected,
                    "crash after step {crash} (unsynced writes kept: {keep_unsynced})"
                );
            }
        }
    }

    #[test]
    fn epochs_must_increase() {
        let barrier = Barrier {
            epoch: 3,
            positions: Positions::new(),
            watermark: None,
            partition_watermarks: Watermarks::new(),
            models: [("m".to_string(), 2)].into(),
            writes: Vec::new(),
            inputs: BTreeMap::new(),
        };
        assert!(commit_ops(1, 3, barrier.clone(), 0).is_err());
        let (record, ops) = commit_ops(1, 2, barrier, 5).unwrap();
        assert_eq!(record.next_seq, 5);
        assert_eq!(record.models.get("m"), Some(&2), "the pins are committed");
        assert_eq!(ops.len(), 1);
        let WriteOp::Put(k, v) = &ops[0] else {
            panic!()
        };
        assert_eq!(k, &record_key(1));
        assert_eq!(recover(Some(v)).unwrap(), record);
    }
}
