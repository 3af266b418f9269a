//! A running pipeline: source threads, operator tasks and a sink task joined by bounded
//! channels (a slow stage fills its input channel and so slows everything before it).
//!
//! ```text
//! source thread ──► stateless ─┐
//!                              ├─► [join | union] ──► stateless ──► … ──► [aggregate] ──► sink
//! source thread ──► stateless ─┘   (run_inputs: input index, aligned barriers, min watermark)
//!   batches, dead letters, watermarks and barriers flow down the same channels
//! ```
//!
//! One-input stages run under [`run_operator`], two-input ones under [`run_inputs`]; a source
//! read by both inputs has one thread whose messages [`run_tee`] copies to both. A keyed stage
//! in several partitions sits between an exchange and a gather (`exchange.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::physical_plan::PhysicalExpr;
use eddy_connectors::{Poll, Source};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::aggregate::Aggregator;
use super::checkpoint::{
    Barrier, CheckpointRecord, Injector, Watermarks, commit_ops, previous_checkpoint_key,
};
use super::models::PinnedModels;
use super::session::SessionAggregator;
use super::view::{Output, dead_letter_rows, late_event_rows, seq_key, sequenced_rows};
use crate::catalog::TableDef;
use crate::error::{Error, Result};
use crate::storage::{KvStore, WriteOp};

/// Messages between stages.
#[derive(Debug)]
pub enum Message {
    Batch(RecordBatch),
    /// Source rows with each row's (partition, offset), so a stage can send a row it
    /// cannot process to the dead-letter table under its origin.
    Events(RecordBatch, Origins),
    /// Event time (microseconds) below which no more events will be accepted.
    Watermark(i64),
    Barrier(Barrier),
    /// Output rows already encoded (view rows, dead letters).
    Writes(Vec<WriteOp>),
    /// Rows that change a result: a changelog batch, whose last column is the operation
    /// (`changelog::OP_COLUMN`).
    Changes(RecordBatch),
}

/// Each row's (partition, offset) in its source.
pub type Origins = Vec<(i32, i64)>;

/// Capacity of each channel between stages.
pub const CHANNEL_CAPACITY: usize = 4;
/// Rows the source reads per poll.
pub const SOURCE_BATCH_ROWS: usize = 8192;

/// Counters of one pipeline, shown by SHOW STREAMS / MATERIALIZED VIEWS.
#[derive(Debug, Default)]
pub struct Metrics {
    pub events: AtomicU64,
    pub rows: AtomicU64,
    pub dead_letters: AtomicU64,
    pub late_events: AtomicU64,
    pub epoch: AtomicU64,
    pub watermark: Mutex<Option<i64>>,
    pub error: Mutex<Option<String>>,
    pub running: AtomicBool,
    pub restarts: AtomicU64,
    /// A remote sink's spool and uploads.
    pub upload: Arc<Mutex<eddy_connectors::parquet_sink::UploadStatus>>,
    /// Set by a stage that wants a checkpoint before the interval is up (a sink whose file
    /// reached its rollover size); the source takes it.
    pub checkpoint_requested: AtomicBool,
}

/// One stage of a pipeline.
#[async_trait]
pub trait Operator: Send {
    /// A batch of an operator's one input. Operators with several inputs (joins, unions)
    /// take batches only by input ([`Operator::on_input`]).
    async fn on_batch(&mut self, _batch: RecordBatch, _out: &mut Vec<Message>) -> Result<()> {
        Err(Error::internal(
            "an operator with several inputs received a batch without its input",
        ))
    }

    /// Source rows with their origins; most stages only need the rows.
    async fn on_events(
        &mut self,
        batch: RecordBatch,
        _origins: Vec<(i32, i64)>,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        self.on_batch(batch, out).await
    }

    /// A batch from input `input` of an operator with several inputs (a join); operators
    /// with one input take it as any batch.
    async fn on_input(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        self.on_batch(batch, out).await
    }

    /// A changelog batch (deletes and inserts) from an updating input. Operators that only
    /// take appends refuse it; the planner keeps them off changelog edges.
    async fn on_changes(&mut self, _changes: RecordBatch, _out: &mut Vec<Message>) -> Result<()> {
        Err(Error::internal(
            "an operator that takes only appends received a changelog",
        ))
    }

    /// A changelog batch from input `input` of an operator with several inputs; operators
    /// whose inputs are alike (partitions, gather) take it as any changelog.
    async fn on_input_changes(
        &mut self,
        _input: usize,
        changes: RecordBatch,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        self.on_changes(changes, out).await
    }

    /// The watermark moved (for an operator with several inputs, the minimum of theirs).
    async fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    /// Adds the writes that persist this operator's state as of the barrier.
    fn on_barrier(&mut self, _barrier: &mut Barrier) -> Result<()> {
        Ok(())
    }

    /// The checkpoint `epoch` is durable.
    fn on_commit(&mut self, _epoch: u64) {}
}

/// Filters, projections, unnest and PREDICT, through DataFusion, one batch at a time.
///
/// When a model fails on a batch, the batch is split until the rows the model cannot score
/// are found; those go to the source's dead-letter table and the others go on.
pub struct Stateless {
    /// The plan over the source's batches.
    pub lower: super::plan::Segment,
    /// The pipeline's name, for dead-letter reasons.
    pub name: String,
    /// `<source>_errors`.
    pub errors: Option<Arc<TableDef>>,
    pub metrics: Arc<Metrics>,
}

/// Sends the non-empty batches on.
pub(crate) fn push_batches(out: &mut Vec<Message>, batches: Vec<RecordBatch>) {
    out.extend(
        batches
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(Message::Batch),
    );
}

/// Runs a stateless plan over a changelog batch: over its retracted rows and its added rows
/// apart (the plan works row by row, so each output row keeps its input row's sign).
pub(crate) async fn run_changes(
    segment: &super::plan::Segment,
    changes: RecordBatch,
    out: &mut Vec<Message>,
) -> Result<()> {
    let (retracted, inserted) = super::changelog::split(&changes)?;
    let mut parts = [Vec::new(), Vec::new()];
    for (part, rows) in parts.iter_mut().zip([retracted, inserted]) {
        if rows.num_rows() > 0 {
            *part = segment.run(rows).await?;
        }
    }
    if let Some(c) = super::changelog::changes(&parts[0], &parts[1])? {
        out.push(Message::Changes(c));
    }
    Ok(())
}

#[async_trait]
impl Operator for Stateless {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        push_batches(out, self.lower.run(batch).await?);
        Ok(())
    }

    async fn on_changes(&mut self, changes: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        run_changes(&self.lower, changes, out).await
    }

    async fn on_events(
        &mut self,
        batch: RecordBatch,
        origins: Vec<(i32, i64)>,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        // Row ranges still to run, in row order.
        let mut work = std::collections::VecDeque::from([(0, batch.num_rows())]);
        let mut dead = Vec::new();
        while let Some((start, len)) = work.pop_front() {
            let part = batch.slice(start, len);
            let failure = match self.lower.run(part.clone()).await {
                Ok(batches) => {
                    push_batches(out, batches);
                    continue;
                }
                Err(Error::DataFusion(e)) => match eddy_udf::predict::model_run_error(&e) {
                    Some(failure) if self.errors.is_some() => failure.to_string(),
                    _ => return Err(Error::DataFusion(e)),
                },
                Err(e) => return Err(e),
            };
            if len > 1 {
                let half = len / 2;
                work.push_front((start + half, len - half));
                work.push_front((start, half));
                continue;
            }
            let (partition, offset) = origins.get(start).copied().unwrap_or((-1, -1));
            dead.push(eddy_connectors::DeadLetter {
                partition,
                offset,
                payload: row_json(&part)?,
                error: format!("{}: {failure}", self.name),
            });
        }
        if let (Some(errors), false) = (&self.errors, dead.is_empty()) {
            self.metrics
                .dead_letters
                .fetch_add(dead.len() as u64, Ordering::Relaxed);
            out.push(Message::Writes(dead_letter_rows(errors, &dead, now_us())?));
        }
        Ok(())
    }
}

/// A stateless plan after a lookup join, one batch at a time.
pub struct SegmentOp {
    pub segment: super::plan::Segment,
}

#[async_trait]
impl Operator for SegmentOp {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        push_batches(out, self.segment.run(batch).await?);
        Ok(())
    }

    async fn on_changes(&mut self, changes: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        run_changes(&self.segment, changes, out).await
    }
}

/// One row as a JSON object (the payload of a dead letter).
fn row_json(row: &RecordBatch) -> Result<Vec<u8>> {
    let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
    writer.write(row)?;
    writer.finish()?;
    let mut bytes = writer.into_inner();
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Ok(bytes)
}

/// A grouping aggregation: fixed groups (GROUP BY, TUMBLE, HOP) or merging SESSION windows.
pub enum AggregateOp {
    Groups(Aggregator),
    Sessions(SessionAggregator),
}

#[async_trait]
impl Operator for AggregateOp {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let output = match self {
            AggregateOp::Groups(a) => a.on_batch(&batch)?,
            AggregateOp::Sessions(s) => s.on_batch(&batch)?,
        };
        self.push_output(out, output).await
    }

    async fn on_changes(&mut self, changes: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let output = match self {
            AggregateOp::Groups(a) => a.on_changes(&changes)?,
            AggregateOp::Sessions(_) => {
                return Err(Error::internal("session windows over a changelog"));
            }
        };
        self.push_output(out, output).await
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        let output = match self {
            AggregateOp::Groups(a) => a.on_watermark(watermark)?,
            AggregateOp::Sessions(s) => s.on_watermark(watermark)?,
        };
        self.push_output(out, output).await?;
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        match self {
            AggregateOp::Groups(a) => a.on_barrier(barrier),
            AggregateOp::Sessions(s) => s.on_barrier(barrier),
        }
    }

    fn on_commit(&mut self, epoch: u64) {
        match self {
            AggregateOp::Groups(a) => a.committed(epoch),
            AggregateOp::Sessions(s) => s.committed(epoch),
        }
    }
}

impl AggregateOp {
    /// Sends the aggregate's output on. Rows still to go through the plan above the aggregate
    /// (window functions over closed windows) go on as a batch to the operator that runs it
    /// (`operators/per_window.rs`).
    async fn push_output(&self, out: &mut Vec<Message>, output: Output) -> Result<()> {
        if output.is_empty() {
            return Ok(());
        }
        out.push(match output {
            Output::Writes(w) => Message::Writes(w),
            Output::Rows(b) | Output::Unfinished(b) => Message::Batch(b),
        });
        Ok(())
    }
}

fn closed() -> Error {
    Error::internal("pipeline stage stopped")
}

/// Runs one operator until its input closes.
pub async fn run_operator(
    mut op: Box<dyn Operator>,
    mut rx: mpsc::Receiver<Message>,
    tx: mpsc::Sender<Message>,
    mut committed: tokio::sync::watch::Receiver<u64>,
) -> Result<()> {
    while let Some(message) = rx.recv().await {
        if committed.has_changed().unwrap_or(false) {
            op.on_commit(*committed.borrow_and_update());
        }
        let mut out = Vec::new();
        match message {
            Message::Batch(b) => op.on_batch(b, &mut out).await?,
            Message::Events(b, origins) => op.on_events(b, origins, &mut out).await?,
            Message::Changes(c) => op.on_changes(c, &mut out).await?,
            Message::Watermark(w) => op.on_watermark(w, &mut out).await?,
            Message::Barrier(mut b) => {
                op.on_barrier(&mut b)?;
                out.push(Message::Barrier(b));
            }
            Message::Writes(w) => out.push(Message::Writes(w)),
        }
        for m in out {
            tx.send(m).await.map_err(|_| closed())?;
        }
    }
    Ok(())
}

/// Runs an operator with several inputs (a join) until every input closes.
///
/// Batches are handed over with their input's index. Each input's watermark is tracked and
/// the operator sees the minimum once every input has one. Barriers are aligned: after an
/// input delivers the barrier of an epoch it is not read again until every input has
/// delivered it; the operator then takes the merged barrier (`merge`: every input's position
/// for a join, [`Barrier::merge`]; one position for copies that passed the partitions of a
/// parallel stage, [`Barrier::merge_copies`]), so its state at the barrier holds exactly the
/// rows before it on every input.
pub async fn run_inputs(
    mut op: Box<dyn Operator>,
    mut inputs: Vec<mpsc::Receiver<Message>>,
    tx: mpsc::Sender<Message>,
    mut committed: tokio::sync::watch::Receiver<u64>,
    restored: Vec<Option<i64>>,
    merge: fn(Vec<Barrier>) -> Result<Barrier>,
) -> Result<()> {
    let n = inputs.len();
    let mut watermarks = restored;
    watermarks.resize(n, None);
    let mut current = min_watermark(&watermarks);
    let mut waiting: Vec<Option<Barrier>> = vec![None; n];
    let mut first = 0;
    loop {
        let next = std::future::poll_fn(|cx| {
            let mut closed = 0;
            for k in 0..n {
                let i = (first + k) % n;
                if waiting[i].is_some() {
                    continue;
                }
                match inputs[i].poll_recv(cx) {
                    std::task::Poll::Ready(Some(m)) => return std::task::Poll::Ready(Some((i, m))),
                    std::task::Poll::Ready(None) => closed += 1,
                    std::task::Poll::Pending => {}
                }
            }
            match closed > 0 {
                // One input ended: the pipeline is stopping.
                true => std::task::Poll::Ready(None),
                false => std::task::Poll::Pending,
            }
        })
        .await;
        let Some((input, message)) = next else {
            return Ok(());
        };
        // Take turns, so a busy input does not starve the others.
        first = (input + 1) % n;
        if committed.has_changed().unwrap_or(false) {
            op.on_commit(*committed.borrow_and_update());
        }
        let mut out = Vec::new();
        match message {
            Message::Batch(b) | Message::Events(b, _) => op.on_input(input, b, &mut out).await?,
            Message::Changes(c) => op.on_input_changes(input, c, &mut out).await?,
            Message::Watermark(w) => {
                watermarks[input] = Some(w);
                let min = min_watermark(&watermarks);
                if min > current {
                    current = min;
                    if let Some(w) = min {
                        op.on_watermark(w, &mut out).await?;
                    }
                }
            }
            Message::Barrier(b) => {
                waiting[input] = Some(b);
                if waiting.iter().all(Option::is_some) {
                    let barriers = waiting.iter_mut().filter_map(Option::take).collect();
                    let mut merged = merge(barriers)?;
                    op.on_barrier(&mut merged)?;
                    out.push(Message::Barrier(merged));
                }
            }
            Message::Writes(w) => out.push(Message::Writes(w)),
        }
        for m in out {
            tx.send(m).await.map_err(|_| closed())?;
        }
    }
}

/// Sends what one source reads to every input that reads it (a self-join): batches,
/// watermarks and barriers to each; writes (dead letters, late events) once.
pub async fn run_tee(
    mut rx: mpsc::Receiver<Message>,
    outputs: Vec<mpsc::Sender<Message>>,
) -> Result<()> {
    while let Some(message) = rx.recv().await {
        let (last, rest) = outputs.split_last().ok_or_else(closed)?;
        for tx in rest {
            let copy = match &message {
                Message::Batch(b) => Message::Batch(b.clone()),
                Message::Events(b, o) => Message::Events(b.clone(), o.clone()),
                Message::Changes(c) => Message::Changes(c.clone()),
                Message::Watermark(w) => Message::Watermark(*w),
                Message::Barrier(b) => Message::Barrier(b.clone()),
                Message::Writes(_) => continue,
            };
            tx.send(copy).await.map_err(|_| closed())?;
        }
        last.send(message).await.map_err(|_| closed())?;
    }
    Ok(())
}

/// The minimum of the inputs' watermarks; none until every input has one.
pub(crate) fn min_watermark(watermarks: &[Option<i64>]) -> Option<i64> {
    watermarks
        .iter()
        .copied()
        .collect::<Option<Vec<i64>>>()
        .and_then(|w| w.into_iter().min())
}

/// Where a pipeline's results go.
pub enum SinkKind {
    /// View rows arrive encoded; the sink only writes them.
    View,
    /// Stream rows are numbered and kept up to `retention_rows` (0: none are kept).
    Stream { retention_rows: u64 },
    /// Rows leave as Parquet files, one per epoch, visible once the epoch commits; a file
    /// that reaches `rollover_bytes` asks for an early checkpoint.
    Parquet {
        files: Box<eddy_connectors::parquet_sink::ParquetFiles>,
        rollover_bytes: u64,
        /// A remote sink's spool and its bound: at a barrier, the sink waits while the
        /// spool is over it (the store is unreachable and the disk must not fill).
        spool_limit: Option<(std::path::PathBuf, u64)>,
    },
    /// Rows leave as Kafka messages, one transaction per epoch committed after the
    /// checkpoint (see `eddy_connectors::kafka_sink`).
    Kafka(Box<eddy_connectors::kafka_sink::KafkaSink>),
    /// Rows leave as HTTP POSTs; requests that never succeed go to `errors`.
    Webhook {
        hook: Box<eddy_connectors::webhook::Webhook>,
        errors: Arc<TableDef>,
    },
    /// NOTIFY: each row as JSON on `channel`, sent once its checkpoint commits.
    Notify {
        channel: String,
        notifier: Arc<crate::engine::notify::Notifier>,
        pending: Vec<(String, String)>,
    },
}

pub struct Sink {
    pub pipeline: u32,
    pub def: Arc<TableDef>,
    pub kind: SinkKind,
    pub kv: Arc<dyn KvStore>,
    pub record: CheckpointRecord,
    pub metrics: Arc<Metrics>,
    pub committed: tokio::sync::watch::Sender<u64>,
    /// A grouping view's changelog, for the pipelines that read the view.
    pub log: Option<super::changelog::ViewLog>,
    /// The updating views whose changelogs this pipeline reads, with the input each feeds
    /// (None: the pipeline's one source): its position there is stored with each checkpoint,
    /// and its own rows are written with each checkpoint (not ahead of it).
    pub reads_views: Vec<(u32, Option<usize>)>,
    /// The view's rows are written with each checkpoint, not ahead of it: they are a multiset
    /// (`operators/materialize.rs`) whose row keys depend on the order of the changes, and a
    /// replay after a crash may order them differently (Kafka partitions interleave, batches
    /// split elsewhere), so a row written ahead could never be taken back.
    pub defer_writes: bool,
}

impl Sink {
    pub async fn run(mut self, mut rx: mpsc::Receiver<Message>) -> Result<()> {
        let mut next_seq = self.record.next_seq;
        let mut last_epoch = self.record.epoch;
        let mut previous = self.record.clone();
        // Rows held until the checkpoint (see `reads_views` and `defer_writes`).
        let mut deferred: Vec<WriteOp> = Vec::new();
        let defer = self.defer_writes || !self.reads_views.is_empty();
        while let Some(message) = rx.recv().await {
            match message {
                Message::Batch(b) | Message::Events(b, _) => {
                    self.metrics
                        .rows
                        .fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                    match &mut self.kind {
                        SinkKind::Parquet {
                            files,
                            rollover_bytes,
                            ..
                        } => {
                            tokio::task::block_in_place(|| files.write(&b, last_epoch + 1))
                                .map_err(|e| sink_error(&self.def, e))?;
                            if files.current_size() >= *rollover_bytes {
                                self.metrics
                                    .checkpoint_requested
                                    .store(true, Ordering::Relaxed);
                            }
                        }
                        SinkKind::Kafka(kafka) => {
                            tokio::task::block_in_place(|| kafka.write(&b))
                                .map_err(|e| sink_error(&self.def, e))?;
                        }
                        SinkKind::Notify {
                            channel, pending, ..
                        } => {
                            let rows = eddy_connectors::encode::json_rows(&b)
                                .map_err(|e| sink_error(&self.def, e))?;
                            for row in rows.iter() {
                                let payload = String::from_utf8_lossy(row).to_string();
                                pending.push((channel.clone(), payload));
                            }
                        }
                        SinkKind::Webhook { hook, errors } => {
                            let failed =
                                hook.send(&b).await.map_err(|e| sink_error(&self.def, e))?;
                            self.metrics.upload.lock().last_error = hook.last_error();
                            if !failed.is_empty() {
                                self.metrics
                                    .dead_letters
                                    .fetch_add(failed.len() as u64, Ordering::Relaxed);
                                let ops =
                                    super::view::failed_request_rows(errors, &failed, now_us())?;
                                self.kv.write(ops, false)?;
                            }
                        }
                        _ => {}
                    }
                    if let SinkKind::Stream { retention_rows } = self.kind {
                        if retention_rows > 0 {
                            let ops = sequenced_rows(&self.def, &b, next_seq)?;
                            self.kv.write(ops, false)?;
                        }
                        next_seq += b.num_rows() as u64;
                    }
                }
                Message::Changes(_) => {
                    return Err(Error::internal("a changelog reached the sink"));
                }
                Message::Writes(ops) => {
                    if let Some(log) = &mut self.log {
                        log.record(&ops);
                    }
                    if matches!(self.kind, SinkKind::View) {
                        self.metrics
                            .rows
                            .fetch_add(ops.len() as u64, Ordering::Relaxed);
                    }
                    match defer {
                        false => self.kv.write(ops, false)?,
                        // A replay of an updating view's changelog may start from another
                        // snapshot and touch other rows than the run it repeats: its rows are
                        // written with the checkpoint, never ahead of it.
                        true => deferred.extend(ops),
                    }
                }
                Message::Watermark(w) => *self.metrics.watermark.lock() = Some(w),
                Message::Barrier(barrier) => {
                    if let SinkKind::Parquet {
                        spool_limit: Some((spool, limit)),
                        ..
                    } = &self.kind
                    {
                        wait_for_spool(spool, *limit, &self.def).await;
                    }
                    let pending = match &mut self.kind {
                        SinkKind::Parquet { files, .. } => {
                            let epoch = barrier.epoch;
                            Some(
                                tokio::task::block_in_place(|| files.finish(epoch))
                                    .map_err(|e| sink_error(&self.def, e))?,
                            )
                        }
                        SinkKind::Kafka(kafka) => {
                            tokio::task::block_in_place(|| kafka.flush())
                                .map_err(|e| sink_error(&self.def, e))?;
                            None
                        }
                        _ => None,
                    };
                    let read_positions: Vec<(u32, i64)> = self
                        .reads_views
                        .iter()
                        .filter_map(|&(view, input)| {
                            let positions = match input {
                                None => &barrier.positions,
                                Some(i) => &barrier.inputs.get(&i)?.positions,
                            };
                            Some((view, *positions.get(&0)?))
                        })
                        .collect();
                    // The view's changelog entries of this epoch take the next numbers.
                    let log_commit = self.log.as_mut().map(|log| {
                        let first = next_seq;
                        next_seq += log.pending();
                        log.take(first)
                    });
                    let (record, mut ops) =
                        commit_ops(self.pipeline, last_epoch, barrier, next_seq)?;
                    ops.append(&mut deferred);
                    for (view, position) in read_positions {
                        ops.push(super::changelog::position_write(
                            view,
                            self.pipeline,
                            position.max(0) as u64,
                        ));
                    }
                    if matches!(self.kind, SinkKind::Kafka(_)) {
                        // Kafka commits after this checkpoint: until it has, a restart
                        // resumes from the one before (see `eddy_connectors::kafka_sink`).
                        let bytes = serde_json::to_vec(&previous)
                            .map_err(|e| Error::internal(format!("checkpoint encode: {e}")))?;
                        ops.push(WriteOp::Put(previous_checkpoint_key(self.pipeline), bytes));
                    }
                    if let SinkKind::Stream { retention_rows } = self.kind
                        && next_seq > retention_rows
                        && retention_rows > 0
                    {
                        ops.push(WriteOp::DeleteRange(
                            seq_key(&self.def, 0),
                            seq_key(&self.def, next_seq - retention_rows),
                        ));
                    }
                    let kv = self.kv.clone();
                    let written = tokio::task::spawn_blocking(move || match log_commit {
                        Some(commit) => commit.write(kv.as_ref(), ops).map(Some),
                        None => kv.write(ops, true).map(|()| None),
                    })
                    .await
                    .map_err(|e| Error::internal(format!("checkpoint task: {e}")))??;
                    if let (Some(log), Some(range)) = (&mut self.log, written) {
                        log.committed(range);
                    }
                    match (&mut self.kind, pending) {
                        (SinkKind::Parquet { files, .. }, Some(pending)) => {
                            tokio::task::block_in_place(|| files.publish(pending))
                                .map_err(|e| sink_error(&self.def, e))?;
                        }
                        (SinkKind::Kafka(kafka), _) => {
                            let epoch = record.epoch;
                            tokio::task::block_in_place(|| kafka.commit(epoch))
                                .map_err(|e| sink_error(&self.def, e))?;
                        }
                        // The epoch's rows go to the listeners once it is committed (a replay
                        // after a crash sends an uncommitted epoch's rows again).
                        (
                            SinkKind::Notify {
                                notifier, pending, ..
                            },
                            _,
                        ) => notifier.publish(0, std::mem::take(pending)),
                        _ => {}
                    }
                    last_epoch = record.epoch;
                    self.metrics.epoch.store(record.epoch, Ordering::Relaxed);
                    let _ = self.committed.send(record.epoch);
                    previous = record;
                }
            }
        }
        Ok(())
    }
}

/// What the source thread needs.
pub struct SourceLoop {
    pub open: Box<dyn FnOnce() -> eddy_connectors::Result<Box<dyn Source>> + Send>,
    pub tx: mpsc::Sender<Message>,
    pub injector: Injector,
    pub watermark: Option<i64>,
    /// Each partition's watermark; the source's watermark is their minimum, so a partition
    /// that runs ahead does not make a slower one's events late.
    pub marks: Watermarks,
    /// Partitions without events for this long do not hold the watermark back.
    pub idle_timeout: Option<Duration>,
    /// When each partition last had an event (for the idle timeout).
    pub last_event: std::collections::HashMap<i32, Instant>,
    /// Set from the source when it opens (see `Source::watermark_per_partition`).
    pub per_partition: bool,
    /// The watermark expression and the event-time column it bounds.
    pub watermark_expr: Option<(Arc<dyn PhysicalExpr>, usize)>,
    pub drop_late: bool,
    pub errors: Option<Arc<TableDef>>,
    /// `<source>_late`, when late events are kept.
    pub late: Option<Arc<TableDef>>,
    pub stop: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// The model versions the pipeline scores with (switched at checkpoints).
    pub models: Arc<PinnedModels>,
    /// The last committed checkpoint epoch (the sink's).
    pub committed: tokio::sync::watch::Receiver<u64>,
    /// Which input of a join this source feeds (its barriers then carry its position as
    /// that input's).
    pub input: Option<usize>,
}

fn now_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl SourceLoop {
    /// Runs on a blocking thread until stopped or the pipeline closes.
    pub fn run(mut self) -> Result<()> {
        let open = std::mem::replace(
            &mut self.open,
            Box::new(|| {
                Err(eddy_connectors::Error::External(
                    "source already opened".into(),
                ))
            }),
        );
        let mut source = open().map_err(connector_error)?;
        self.per_partition = source.watermark_per_partition();
        if self.per_partition {
            for p in source.partitions() {
                self.marks.entry(p).or_insert(i64::MIN);
                self.last_event.insert(p, Instant::now());
            }
        }
        let start = Instant::now();
        let mut finished = false;
        let send =
            |tx: &mpsc::Sender<Message>, m: Message| tx.blocking_send(m).map_err(|_| closed());
        while !self.stop.load(Ordering::Relaxed) && !self.tx.is_closed() {
            let poll = if finished {
                std::thread::sleep(Duration::from_millis(50));
                Poll::Idle
            } else {
                source
                    .poll(SOURCE_BATCH_ROWS, Duration::from_millis(20))
                    .map_err(connector_error)?
            };
            match poll {
                Poll::Batch(batch) => {
                    let events = batch.rows.num_rows() + batch.dead_letters.len();
                    self.metrics
                        .events
                        .fetch_add(events as u64, Ordering::Relaxed);
                    if !batch.dead_letters.is_empty() {
                        self.metrics
                            .dead_letters
                            .fetch_add(batch.dead_letters.len() as u64, Ordering::Relaxed);
                        if let Some(errors) = &self.errors {
                            let ops = dead_letter_rows(errors, &batch.dead_letters, now_us())?;
                            send(&self.tx, Message::Writes(ops))?;
                        }
                    }
                    let (rows, origins, mut advanced) =
                        self.apply_watermark(batch.rows, batch.origins)?;
                    if let Some(w) = self.advance_past_idle() {
                        advanced = Some(w);
                    }
                    if rows.num_rows() > 0 {
                        send(&self.tx, Message::Events(rows, origins))?;
                    }
                    if let Some(w) = advanced {
                        send(&self.tx, Message::Watermark(w))?;
                    }
                }
                Poll::Idle => {
                    if let Some(w) = self.advance_past_idle() {
                        send(&self.tx, Message::Watermark(w))?;
                    }
                }
                Poll::Finished => {
                    finished = true;
                    self.checkpoint(source.as_ref(), now_ms(start))?;
                    continue;
                }
            }
            let requested = self
                .metrics
                .checkpoint_requested
                .swap(false, Ordering::Relaxed);
            if requested || self.injector.due(now_ms(start)) {
                self.checkpoint(source.as_ref(), now_ms(start))?;
            }
        }
        Ok(())
    }

    /// Sends the next barrier. When a model's active version has moved, the barrier carries
    /// the new versions and the source waits for that checkpoint to commit before switching:
    /// every row before the barrier is scored by the old version, every row after by the new.
    fn checkpoint(&mut self, source: &dyn Source, now_ms: u64) -> Result<()> {
        let mut barrier = self.injector.inject(
            now_ms,
            source.positions(),
            self.watermark,
            self.marks.clone(),
        );
        if let Some(input) = self.input {
            let position = super::checkpoint::InputCheckpoint {
                positions: std::mem::take(&mut barrier.positions),
                watermark: barrier.watermark,
                partition_watermarks: std::mem::take(&mut barrier.partition_watermarks),
            };
            barrier.inputs.insert(input, position);
        }
        let pinned = self.models.pinned();
        let wanted = self.models.wanted();
        let epoch = barrier.epoch;
        barrier.models = wanted.clone();
        self.tx
            .blocking_send(Message::Barrier(barrier))
            .map_err(|_| closed())?;
        if wanted == pinned {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::current();
        loop {
            if self.stop.load(Ordering::Relaxed) || self.tx.is_closed() {
                return Ok(());
            }
            let committed = runtime.block_on(async {
                tokio::time::timeout(
                    Duration::from_millis(100),
                    self.committed.wait_for(|e| *e >= epoch),
                )
                .await
            });
            match committed {
                Ok(Ok(_)) => break,
                Ok(Err(_)) => return Err(closed()),
                Err(_) => continue,
            }
        }
        tracing::info!("pipeline switches models at epoch {epoch}: {pinned:?} -> {wanted:?}");
        self.models.set(wanted);
        Ok(())
    }

    /// The minimum watermark over the partitions that count: all of them, or with an idle
    /// timeout those that had an event within it (all idle: the maximum).
    fn slowest_active(&self) -> Option<i64> {
        match self.idle_timeout {
            None => self.marks.values().min().copied(),
            Some(timeout) => {
                let active = self
                    .marks
                    .iter()
                    .filter(|(p, _)| {
                        self.last_event
                            .get(p)
                            .is_some_and(|t| t.elapsed() < timeout)
                    })
                    .map(|(_, m)| *m)
                    .min();
                // When every partition is idle the source has delivered all it has: its
                // watermark is the furthest any partition got.
                active.or_else(|| self.marks.values().max().copied())
            }
        }
    }

    /// With an idle timeout, moves the watermark past partitions that went quiet (a trade
    /// of exactness for liveness, as Flink's `withIdleness`: which events count as late then
    /// depends on timing).
    fn advance_past_idle(&mut self) -> Option<i64> {
        self.idle_timeout?;
        let slowest = self.slowest_active()?;
        if self.watermark.is_some_and(|w| w >= slowest) {
            return None;
        }
        self.watermark = Some(slowest);
        Some(slowest)
    }

    /// Advances the watermark event by event (so a replay in different batches decides
    /// lateness exactly as the first run did) and, in windowed pipelines, drops the events
    /// behind it. Returns the kept rows, their origins and the new watermark if it moved.
    fn apply_watermark(
        &mut self,
        rows: RecordBatch,
        origins: Origins,
    ) -> Result<(RecordBatch, Origins, Option<i64>)> {
        let Some((expr, column)) = &self.watermark_expr else {
            return Ok((rows, origins, None));
        };
        let n = rows.num_rows();
        if n == 0 {
            return Ok((rows, origins, None));
        }
        let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
        let marks = cast(&expr.evaluate(&rows)?.into_array(n)?, &micros)?;
        let marks = marks.as_primitive::<TimestampMicrosecondType>();
        let times = cast(rows.column(*column), &micros)?;
        let times = times.as_primitive::<TimestampMicrosecondType>();
        let mut running = self.watermark;
        let mut keep = Vec::with_capacity(n);
        for i in 0..n {
            let late =
                self.drop_late && !times.is_null(i) && running.is_some_and(|w| times.value(i) < w);
            keep.push(!late);
            if !late && !marks.is_null(i) {
                let m = marks.value(i);
                let partition = match self.per_partition {
                    true => origins.get(i).map_or(0, |o| o.0),
                    false => 0,
                };
                if self.idle_timeout.is_some() {
                    self.last_event.insert(partition, Instant::now());
                }
                let mark = self.marks.entry(partition).or_insert(i64::MIN);
                if m > *mark {
                    *mark = m;
                    // Never backwards: a partition seen for the first time with older
                    // events holds the watermark where it is.
                    let slowest = self.slowest_active();
                    running = running.max(slowest);
                }
            }
        }
        let late = keep.iter().filter(|k| !**k).count();
        let (rows, origins) = if late > 0 {
            self.metrics
                .late_events
                .fetch_add(late as u64, Ordering::Relaxed);
            if let Some(table) = &self.late {
                let dropped: BooleanArray = keep.iter().map(|k| Some(!k)).collect();
                let late_rows = filter_record_batch(&rows, &dropped)?;
                let late_origins: Vec<(i32, i64)> = origins
                    .iter()
                    .zip(&keep)
                    .filter(|(_, k)| !**k)
                    .map(|(o, _)| *o)
                    .collect();
                if late_origins.len() == late_rows.num_rows() {
                    let ops = late_event_rows(table, &late_rows, &late_origins, now_us())?;
                    self.tx
                        .blocking_send(Message::Writes(ops))
                        .map_err(|_| closed())?;
                }
            }
            let kept_origins = match origins.len() == n {
                true => origins
                    .iter()
                    .zip(&keep)
                    .filter(|(_, k)| **k)
                    .map(|(o, _)| *o)
                    .collect(),
                false => Vec::new(),
            };
            (
                filter_record_batch(&rows, &BooleanArray::from(keep))?,
                kept_origins,
            )
        } else {
            (rows, origins)
        };
        let advanced = (running != self.watermark).then_some(running).flatten();
        self.watermark = running;
        Ok((rows, origins, advanced))
    }
}

/// Waits while a remote sink's spool holds more than `limit` bytes.
async fn wait_for_spool(spool: &std::path::Path, limit: u64, def: &TableDef) {
    let mut warned = false;
    loop {
        let bytes =
            tokio::task::block_in_place(|| eddy_connectors::parquet_sink::spool_usage(spool).bytes);
        if bytes <= limit {
            return;
        }
        if !warned {
            tracing::warn!(
                "sink {}: the spool holds {bytes} bytes, over its limit of {limit}: waiting for uploads",
                def.name
            );
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sink_error(def: &TableDef, e: eddy_connectors::Error) -> Error {
    Error::connector(format_args!("sink {}", def.name), e)
}

fn connector_error(e: eddy_connectors::Error) -> Error {
    Error::connector("source", e)
}

#[cfg(test)]
mod tests;
