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
    /// A batch of one input of a join.
    BatchFrom(usize, RecordBatch),
    /// A changelog batch of one input of a join.
    ChangesFrom(usize, RecordBatch),
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
    /// A barrier that has passed the operator and whose checkpoint is not committed yet: as
    /// the sink does, the harness commits it later, after the operator has taken the next
    /// input, so an operator that reads its state back before its checkpoint lands is tested
    /// for it.
    pending: Option<Barrier>,
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
            pending: None,
            rows: Vec::new(),
        })
    }

    /// Commits the pending barrier's checkpoint, as the sink would.
    fn commit(&mut self) -> Result<()> {
        if let Some(b) = self.pending.take() {
            let (record, ops) = commit_ops(PIPELINE, self.record.epoch, b, 0)?;
            self.kv.write(ops, true)?;
            self.op.on_commit(record.epoch);
            self.record = record;
        }
        Ok(())
    }

    pub async fn push(&mut self, input: &Input) -> Result<()> {
        let mut out = Vec::new();
        match input {
            Input::Batch(b) => self.op.on_batch(b.clone(), &mut out).await?,
            Input::BatchFrom(i, b) => self.op.on_input(*i, b.clone(), &mut out).await?,
            Input::ChangesFrom(i, c) => self.op.on_input_changes(*i, c.clone(), &mut out).await?,
            Input::Watermark(w) => {
                self.watermark = Some(*w);
                self.op.on_watermark(*w, &mut out).await?
            }
            Input::Barrier => {
                // Checkpoints commit in order.
                self.commit()?;
                let mut barrier = Barrier::new(self.record.epoch + 1, self.watermark);
                self.op.on_barrier(&mut barrier)?;
                out.push(Message::Barrier(barrier));
            }
        }
        // The checkpoint of the barrier before this input lands now.
        self.commit()?;
        for message in out {
            match message {
                Message::Batch(b) | Message::Events(b, _) | Message::Changes(b) => {
                    self.rows.push(b)
                }
                Message::Writes(w) => self.kv.write(w, false)?,
                Message::Watermark(_) => {}
                Message::Barrier(b) => self.pending = Some(b),
            }
        }
        Ok(())
    }

    /// Runs the inputs; the last barrier's checkpoint is committed at the end.
    pub async fn run(&mut self, inputs: &[Input]) -> Result<()> {
        for input in inputs {
            self.push(input).await?;
        }
        self.commit()
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

/// For each barrier of `inputs`: the operator built for `before` partitions runs up to it,
/// and one built for `after` partitions is restored from its checkpoint and runs the rest
/// (a restart with another parallelism). Returns the rows each such pair emitted; the
/// caller compares them as a result (the order of rows differs between partitionings).
pub async fn check_rescales(
    make: impl Fn(usize) -> Factory,
    inputs: &[Input],
    cache_bytes: usize,
    before: usize,
    after: usize,
) -> Result<Vec<Vec<RecordBatch>>> {
    let mut runs = Vec::new();
    for (i, _) in inputs
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Input::Barrier))
    {
        let mut first = Harness::new(make(before), cache_bytes)?;
        first.run(&inputs[..=i]).await?;
        let mut rest = Harness::restore(make(after), &first.snapshot(), cache_bytes)?;
        rest.run(&inputs[i + 1..]).await?;
        let mut rows = first.rows;
        rows.extend(rest.rows);
        runs.push(rows);
    }
    Ok(runs)
}

/// A small deterministic generator for random inputs (tests print their seeds).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// One value as text (NULL as `NULL`).
pub fn cell(column: &dyn datafusion::arrow::array::Array, row: usize) -> String {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default().with_null("NULL");
    ArrayFormatter::try_new(column, &options)
        .expect("formattable")
        .value(row)
        .to_string()
}

/// Every row of `batches` as text, sorted (results compared as bags of rows).
pub fn sorted_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows())
                .map(|r| {
                    (0..b.num_columns())
                        .map(|c| cell(b.column(c).as_ref(), r))
                        .collect()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort();
    rows
}

/// Changelog batches summed: each row as many times as it is in the result, sorted. Panics
/// if a row is retracted more often than it was added.
pub fn summed(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int8Type;
    let mut counts: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for b in batches {
        let last = b.num_columns() - 1;
        let ops = b.column(last).as_primitive::<Int8Type>();
        for r in 0..b.num_rows() {
            let row: Vec<String> = (0..last).map(|c| cell(b.column(c).as_ref(), r)).collect();
            let n = counts.entry(row).or_default();
            *n += match super::changelog::Op::retracts(ops.value(r)) {
                true => -1,
                false => 1,
            };
        }
    }
    let mut out = Vec::new();
    for (row, n) in counts {
        assert!(n >= 0, "a row was retracted more often than added: {row:?}");
        for _ in 0..n {
            out.push(row.clone());
        }
    }
    out
}

/// Operators run one after the other as one (a pipeline's stages, for a test).
pub struct Chain(pub Vec<Box<dyn Operator>>);

impl Chain {
    async fn pass(&mut self, first: Message, out: &mut Vec<Message>) -> Result<()> {
        self.pass_from(0, vec![first], out).await
    }

    /// Passes messages from stage `from` on.
    async fn pass_from(
        &mut self,
        from: usize,
        mut current: Vec<Message>,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        for op in self.0.iter_mut().skip(from) {
            let mut next = Vec::new();
            for m in current {
                match m {
                    Message::Batch(b) => op.on_batch(b, &mut next).await?,
                    Message::Events(b, o) => op.on_events(b, o, &mut next).await?,
                    Message::Changes(c) => op.on_changes(c, &mut next).await?,
                    Message::Watermark(w) => op.on_watermark(w, &mut next).await?,
                    other => next.push(other),
                }
            }
            current = next;
        }
        out.extend(current);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Operator for Chain {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        self.pass(Message::Batch(batch), out).await
    }

    async fn on_input(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        let mut first = Vec::new();
        if let Some(op) = self.0.first_mut() {
            op.on_input(input, batch, &mut first).await?;
        }
        self.pass_from(1, first, out).await
    }

    async fn on_changes(&mut self, changes: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        self.pass(Message::Changes(changes), out).await
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        self.pass(Message::Watermark(watermark), out).await
    }

    fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        for op in self.0.iter_mut() {
            op.on_barrier(barrier)?;
        }
        Ok(())
    }

    fn on_commit(&mut self, epoch: u64) {
        for op in self.0.iter_mut() {
            op.on_commit(epoch);
        }
    }
}

/// Runs one SQL statement in a test's engine, panicking with the statement on failure.
pub async fn run_sql(session: &crate::engine::Session, sql: &str) {
    session
        .run(crate::engine::Session::parse(sql).unwrap().remove(0))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The push source the operator tests plan their queries over.
pub const EV_SOURCE: &str = "CREATE SOURCE ev (k int, v bigint, ts timestamp, \
     WATERMARK FOR ts AS ts - INTERVAL '1 second')";

/// The columns of `ev`.
pub fn ev_schema() -> datafusion::arrow::datatypes::SchemaRef {
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int32, true),
        Field::new("v", DataType::Int64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
    ]))
}

/// Random `ev` events in event-time order (none is late): `batches` batches of up to 50,
/// keys below `keys` (and NULLs), times `min_step` µs or more apart (1: no ties).
pub fn ev_events(seed: u64, batches: usize, keys: u64, min_step: i64) -> Vec<RecordBatch> {
    use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, TimestampMicrosecondArray};
    let mut rng = Rng(seed);
    let mut ts = 1_700_000_000_000_000i64;
    (0..batches)
        .map(|_| {
            let n = 1 + rng.below(50) as usize;
            let (mut k, mut v, mut t) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..n {
                ts += min_step + rng.below(400_000) as i64;
                k.push((rng.below(5) != 0).then(|| rng.below(keys) as i32));
                v.push((rng.below(10) != 0).then(|| rng.below(1000) as i64 - 300));
                t.push(Some(ts));
            }
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int32Array::from(k)),
                Arc::new(Int64Array::from(v)),
                Arc::new(TimestampMicrosecondArray::from(t)),
            ];
            RecordBatch::try_new(ev_schema(), columns).expect("ev columns")
        })
        .collect()
}

/// The input script of `ev` events: each batch through the pipeline's lower plan, then (always,
/// or at random) a watermark a second behind the next batch's first event, a barrier every few
/// batches, and at the end a watermark past every event and a last barrier.
pub async fn ev_script(
    plan: &super::plan::PipelinePlan,
    source: &[RecordBatch],
    rng: &mut Rng,
    every_watermark: bool,
) -> Vec<Input> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::TimestampMicrosecondType;
    let mut inputs = Vec::new();
    for (i, batch) in source.iter().enumerate() {
        for lowered in plan.run_lower(batch.clone()).await.expect("lower plan") {
            inputs.push(Input::Batch(lowered));
        }
        match source.get(i + 1) {
            Some(next) => {
                let ts = next.column(2).as_primitive::<TimestampMicrosecondType>();
                if every_watermark || rng.below(2) == 0 {
                    inputs.push(Input::Watermark(ts.value(0) - 1_000_000));
                }
            }
            None => inputs.push(Input::Watermark(i64::MAX / 2)),
        }
        if rng.below(3) == 0 {
            inputs.push(Input::Barrier);
        }
    }
    inputs.push(Input::Barrier);
    inputs
}
