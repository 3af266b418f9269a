//! A running pipeline: a source thread, operator tasks and a sink task joined by bounded
//! channels (a slow stage fills its input channel and so slows everything before it).
//!
//! ```text
//! source thread ──► stateless (DataFusion) ──► [aggregate] ──► sink (RocksDB)
//!   batches, dead letters, watermarks and barriers flow down the same channel
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::{filter_record_batch, max};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use datafusion::physical_plan::PhysicalExpr;
use eddy_connectors::{Poll, Source};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::aggregate::Aggregator;
use super::checkpoint::{Barrier, CheckpointRecord, Injector, commit_ops};
use super::plan::PipelinePlan;
use super::view::{dead_letter_rows, seq_key, sequenced_rows};
use crate::catalog::TableDef;
use crate::error::{Error, Result};
use crate::storage::{KvStore, WriteOp};

/// Messages between stages.
#[derive(Debug)]
pub enum Message {
    Batch(RecordBatch),
    /// Event time (microseconds) below which no more events will be accepted.
    Watermark(i64),
    Barrier(Barrier),
    /// Output rows already encoded (view rows, dead letters).
    Writes(Vec<WriteOp>),
}

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
}

/// One stage of a pipeline.
#[async_trait]
pub trait Operator: Send {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()>;

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
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

/// Filters, projections and unnest, through DataFusion, one batch at a time.
pub struct Stateless {
    pub plan: Arc<PipelinePlan>,
}

#[async_trait]
impl Operator for Stateless {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        for b in self.plan.run_lower(batch).await? {
            if b.num_rows() > 0 {
                out.push(Message::Batch(b));
            }
        }
        Ok(())
    }
}

pub struct AggregateOp {
    pub aggregator: Aggregator,
}

#[async_trait]
impl Operator for AggregateOp {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let writes = self.aggregator.on_batch(&batch)?;
        if !writes.is_empty() {
            out.push(Message::Writes(writes));
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        let writes = self.aggregator.on_watermark(watermark)?;
        if !writes.is_empty() {
            out.push(Message::Writes(writes));
        }
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        self.aggregator.on_barrier(barrier)
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
            Message::Watermark(w) => op.on_watermark(w, &mut out)?,
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

/// Where a pipeline's results go.
pub enum SinkKind {
    /// View rows arrive encoded; the sink only writes them.
    View,
    /// Stream rows are numbered and kept up to `retention_rows` (0: none are kept).
    Stream { retention_rows: u64 },
}

pub struct Sink {
    pub pipeline: u32,
    pub def: Arc<TableDef>,
    pub kind: SinkKind,
    pub kv: Arc<dyn KvStore>,
    pub record: CheckpointRecord,
    pub metrics: Arc<Metrics>,
    pub committed: tokio::sync::watch::Sender<u64>,
}

impl Sink {
    pub async fn run(self, mut rx: mpsc::Receiver<Message>) -> Result<()> {
        let mut next_seq = self.record.next_seq;
        let mut last_epoch = self.record.epoch;
        while let Some(message) = rx.recv().await {
            match message {
                Message::Batch(b) => {
                    self.metrics
                        .rows
                        .fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                    if let SinkKind::Stream { retention_rows } = self.kind {
                        if retention_rows > 0 {
                            let ops = sequenced_rows(&self.def, &b, next_seq)?;
                            self.kv.write(ops, false)?;
                        }
                        next_seq += b.num_rows() as u64;
                    }
                }
                Message::Writes(ops) => {
                    if matches!(self.kind, SinkKind::View) {
                        self.metrics
                            .rows
                            .fetch_add(ops.len() as u64, Ordering::Relaxed);
                    }
                    self.kv.write(ops, false)?;
                }
                Message::Watermark(w) => *self.metrics.watermark.lock() = Some(w),
                Message::Barrier(barrier) => {
                    let (record, mut ops) =
                        commit_ops(self.pipeline, last_epoch, barrier, next_seq)?;
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
                    tokio::task::spawn_blocking(move || kv.write(ops, true))
                        .await
                        .map_err(|e| Error::internal(format!("checkpoint task: {e}")))??;
                    last_epoch = record.epoch;
                    self.metrics.epoch.store(record.epoch, Ordering::Relaxed);
                    let _ = self.committed.send(record.epoch);
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
    /// The watermark expression and the event-time column it bounds.
    pub watermark_expr: Option<(Arc<dyn PhysicalExpr>, usize)>,
    pub drop_late: bool,
    pub errors: Option<Arc<TableDef>>,
    pub stop: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
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
                    let rows = self.drop_late_rows(batch.rows)?;
                    let candidate = self.watermark_of(&rows)?;
                    if rows.num_rows() > 0 {
                        send(&self.tx, Message::Batch(rows))?;
                    }
                    if let Some(c) = candidate
                        && self.watermark.is_none_or(|w| c > w)
                    {
                        self.watermark = Some(c);
                        send(&self.tx, Message::Watermark(c))?;
                    }
                }
                Poll::Idle => {}
                Poll::Finished => {
                    finished = true;
                    let b = self
                        .injector
                        .inject(now_ms(start), source.positions(), self.watermark);
                    send(&self.tx, Message::Barrier(b))?;
                    continue;
                }
            }
            if self.injector.due(now_ms(start)) {
                let b = self
                    .injector
                    .inject(now_ms(start), source.positions(), self.watermark);
                send(&self.tx, Message::Barrier(b))?;
            }
        }
        Ok(())
    }

    fn drop_late_rows(&self, rows: RecordBatch) -> Result<RecordBatch> {
        let (Some((_, column)), Some(wm), true) =
            (&self.watermark_expr, self.watermark, self.drop_late)
        else {
            return Ok(rows);
        };
        let ts = rows
            .column(*column)
            .as_primitive::<TimestampMicrosecondType>();
        if ts.null_count() == 0 && datafusion::arrow::compute::min(ts).is_none_or(|m| m >= wm) {
            return Ok(rows);
        }
        let keep: datafusion::arrow::array::BooleanArray =
            ts.iter().map(|t| Some(t.is_none_or(|t| t >= wm))).collect();
        let kept = filter_record_batch(&rows, &keep)?;
        let late = rows.num_rows() - kept.num_rows();
        self.metrics
            .late_events
            .fetch_add(late as u64, Ordering::Relaxed);
        Ok(kept)
    }

    fn watermark_of(&self, rows: &RecordBatch) -> Result<Option<i64>> {
        let Some((expr, _)) = &self.watermark_expr else {
            return Ok(None);
        };
        if rows.num_rows() == 0 {
            return Ok(None);
        }
        let values = expr.evaluate(rows)?.into_array(rows.num_rows())?;
        let values = datafusion::arrow::compute::cast(
            &values,
            &datafusion::arrow::datatypes::DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Microsecond,
                None,
            ),
        )?;
        Ok(max(values.as_primitive::<TimestampMicrosecondType>()))
    }
}

fn connector_error(e: eddy_connectors::Error) -> Error {
    Error::user(
        crate::error::sqlstate::INVALID_PARAMETER_VALUE,
        format!("source: {e}"),
    )
}
