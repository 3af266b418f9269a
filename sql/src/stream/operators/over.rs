//! OVER window functions over events, in event time: `avg(x) OVER (PARTITION BY k ORDER BY
//! ts ROWS n PRECEDING)` or `RANGE INTERVAL '…' PRECEDING` (rolling features).
//!
//! Rows wait per partition until the watermark passes their time (no event at or before it
//! can still come, the source drops late ones); then DataFusion's window operator runs over
//! each such partition's history plus its sealed rows, in time order, and the sealed rows'
//! results are emitted, so each row gets exactly what a batch query over all the events
//! computes. History is what the frames can reach: the last n rows (ROWS) and the rows within
//! the interval of the newest (RANGE). Buffered rows live in the operator's state table, keyed
//! by (partition, time, sequence), so a restore resumes with the same history and pending
//! rows.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::{and, filter_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use crate::error::{Error, Result};
use crate::keys::key_group;
use crate::stream::checkpoint::Barrier;
use crate::stream::operators::{micros, time_key};
use crate::stream::pipeline::{Message, Operator};
use crate::stream::plan::Feed;
use crate::stream::state::StateTable;

/// OVER functions as planned.
#[derive(Debug, Clone)]
pub struct OverPlan {
    /// The window operator (over a sort of `feed`) DataFusion planned.
    pub window: Arc<dyn ExecutionPlan>,
    pub feed: Feed,
    pub task_ctx: Arc<TaskContext>,
    /// The rows the operator buffers.
    pub input: SchemaRef,
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// The ORDER BY (event-time) column, in the input and in the output.
    pub time_column: usize,
    /// History the frames reach: rows (ROWS n PRECEDING) and microseconds (RANGE).
    pub keep_rows: usize,
    pub keep_us: i64,
}

struct Row {
    ts: i64,
    seq: u64,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Partition {
    /// Rows already emitted that frames may still reach, in time order.
    history: VecDeque<Row>,
    /// Rows the watermark has not passed yet, by (time, sequence).
    pending: BTreeMap<(i64, u64), Vec<u8>>,
}

pub struct Over {
    plan: Arc<OverPlan>,
    state: StateTable,
    rows: RowConverter,
    keys: RowConverter,
    partitions: HashMap<Vec<u8>, Partition>,
    /// The watermark of the last emission: rows before it have been emitted.
    emitted_to: Option<i64>,
    next_seq: u64,
}

/// State key of a row: partition, time (order-preserving), sequence.
fn state_key(partition: &[u8], ts: i64, seq: u64) -> Vec<u8> {
    let mut k = partition.to_vec();
    k.extend_from_slice(&time_key(ts));
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// State value of a row: partition length, partition, time, sequence, row.
fn state_value(partition: &[u8], ts: i64, seq: u64, row: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + partition.len() + 16 + row.len());
    v.extend_from_slice(&(partition.len() as u32).to_le_bytes());
    v.extend_from_slice(partition);
    v.extend_from_slice(&ts.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(row);
    v
}

fn parse_value(v: &[u8]) -> Option<(Vec<u8>, i64, u64, Vec<u8>)> {
    let len = u32::from_le_bytes(v.get(..4)?.try_into().ok()?) as usize;
    let partition = v.get(4..4 + len)?.to_vec();
    let at = 4 + len;
    let ts = i64::from_le_bytes(v.get(at..at + 8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(v.get(at + 8..at + 16)?.try_into().ok()?);
    Some((partition, ts, seq, v.get(at + 16..)?.to_vec()))
}

impl Over {
    /// The operator over the rows its state table holds (those of the last checkpoint, whose
    /// watermark is `watermark`).
    pub fn restore(plan: Arc<OverPlan>, state: StateTable, watermark: Option<i64>) -> Result<Self> {
        Self::restore_partition(plan, state, watermark, 0..crate::keys::KEY_GROUPS)
    }

    /// Like [`Over::restore`], for the partition of a parallel OVER that owns the key groups
    /// `groups` of its PARTITION BY key (the exchange before it sends it only their rows).
    pub fn restore_partition(
        plan: Arc<OverPlan>,
        state: StateTable,
        watermark: Option<i64>,
        groups: std::ops::Range<u16>,
    ) -> Result<Self> {
        let fields = plan
            .input
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        let key_fields = plan
            .partition_by
            .iter()
            .map(|e| Ok(SortField::new(e.data_type(&plan.input)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut this = Self {
            rows: RowConverter::new(fields)?,
            keys: RowConverter::new(key_fields)?,
            plan,
            // Rows live in `partitions`; the table is read only by the scan below.
            state: state.write_through(),
            partitions: HashMap::new(),
            emitted_to: watermark,
            next_seq: 0,
        };
        let mut rows = Vec::new();
        // Sequences only order the rows of one PARTITION BY key, which belongs to one
        // partition: the largest of its own rows keeps them increasing after a rescale.
        this.state.scan_groups(groups, |_, _, v| {
            rows.push(parse_value(v).ok_or_else(|| Error::internal("corrupt OVER state"))?);
            Ok(())
        })?;
        for (partition, ts, seq, bytes) in rows {
            this.next_seq = this.next_seq.max(seq + 1);
            let p = this.partitions.entry(partition).or_default();
            match watermark.is_some_and(|w| ts < w) {
                true => p.history.push_back(Row { ts, seq, bytes }),
                false => {
                    p.pending.insert((ts, seq), bytes);
                }
            }
        }
        for p in this.partitions.values_mut() {
            p.history.make_contiguous().sort_by_key(|r| (r.ts, r.seq));
        }
        Ok(this)
    }

    fn buffer(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        let keys = self
            .plan
            .partition_by
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(n))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        // Without PARTITION BY every row is in the one partition (empty key).
        let keys = match keys.is_empty() {
            true => None,
            false => Some(self.keys.convert_columns(&keys)?),
        };
        let rows = self.rows.convert_columns(batch.columns())?;
        let times = micros(batch.column(self.plan.time_column).as_ref())?;
        for (i, ts) in times.into_iter().enumerate() {
            // The source drops events behind the watermark; a NULL time has no place.
            let Some(ts) = ts.filter(|t| self.emitted_to.is_none_or(|w| *t >= w)) else {
                continue;
            };
            let key = keys.as_ref().map(|k| k.row(i));
            let encoded = rows.row(i);
            let partition: &[u8] = key.as_ref().map_or(&[], |k| k.as_ref());
            let row = encoded.as_ref();
            let seq = self.next_seq;
            self.next_seq += 1;
            self.state.put(
                key_group(partition),
                &state_key(partition, ts, seq),
                state_value(partition, ts, seq, row),
            );
            self.partitions
                .entry(partition.to_vec())
                .or_default()
                .pending
                .insert((ts, seq), row.to_vec());
        }
        Ok(())
    }

    /// The router that sends each row to the partition that owns its PARTITION BY key.
    pub fn router(plan: &OverPlan, partitions: usize) -> Result<crate::stream::exchange::Router> {
        let types = plan
            .partition_by
            .iter()
            .map(|e| Ok(e.data_type(&plan.input)?))
            .collect::<Result<Vec<_>>>()?;
        crate::stream::exchange::Router::by(plan.partition_by.clone(), types, partitions)
    }

    /// Emits the rows the watermark has passed; returns their results.
    async fn seal(&mut self, watermark: i64) -> Result<Option<RecordBatch>> {
        let from = self.emitted_to.unwrap_or(i64::MIN);
        if watermark <= from {
            return Ok(None);
        }
        let mut encoded: Vec<Vec<u8>> = Vec::new();
        for (partition, p) in self.partitions.iter_mut() {
            let still = p.pending.split_off(&(watermark, 0));
            let sealed = std::mem::replace(&mut p.pending, still);
            if sealed.is_empty() {
                continue;
            }
            encoded.extend(p.history.iter().map(|r| r.bytes.clone()));
            for ((ts, seq), bytes) in sealed {
                encoded.push(bytes.clone());
                p.history.push_back(Row { ts, seq, bytes });
            }
            // Drop what no frame can reach any more.
            let newest = p.history.back().map_or(i64::MIN, |r| r.ts);
            while p.history.len() > self.plan.keep_rows
                && p.history
                    .front()
                    .is_some_and(|r| r.ts < newest.saturating_sub(self.plan.keep_us))
            {
                let r = p.history.pop_front().expect("non-empty");
                self.state
                    .delete(key_group(partition), &state_key(partition, r.ts, r.seq));
            }
        }
        self.emitted_to = Some(watermark);
        if encoded.is_empty() {
            return Ok(None);
        }
        let parser = self.rows.parser();
        let columns = self
            .rows
            .convert_rows(encoded.iter().map(|b| parser.parse(b)))?;
        let input = RecordBatch::try_new(self.plan.input.clone(), columns)?;
        self.plan.feed.put(input);
        let stream = self.plan.window.execute(0, self.plan.task_ctx.clone())?;
        let batches = datafusion::physical_plan::common::collect(stream).await?;
        let out = datafusion::arrow::compute::concat_batches(&self.plan.window.schema(), &batches)?;
        // History rows were emitted before (their time is before `from`).
        let times = micros(out.column(self.plan.time_column).as_ref())?;
        let after: BooleanArray = times
            .iter()
            .map(|t| Some(t.is_some_and(|t| t >= from)))
            .collect();
        let before: BooleanArray = times
            .iter()
            .map(|t| Some(t.is_some_and(|t| t < watermark)))
            .collect();
        Ok(Some(filter_record_batch(&out, &and(&after, &before)?)?))
    }
}

#[cfg(test)]
mod tests;

#[async_trait::async_trait]
impl Operator for Over {
    async fn on_batch(&mut self, batch: RecordBatch, _out: &mut Vec<Message>) -> Result<()> {
        self.buffer(&batch)
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        if let Some(rows) = self.seal(watermark).await?
            && rows.num_rows() > 0
        {
            out.push(Message::Batch(rows));
        }
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        self.state.flush(barrier);
        Ok(())
    }
}
