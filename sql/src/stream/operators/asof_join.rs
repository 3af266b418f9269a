//! ASOF join of two streams in event time: each row of the left input with the latest row of
//! the right input of its key at or before its time (`a ASOF JOIN b MATCH_CONDITION (a.ts >=
//! b.ts) ON a.k = b.k`, or a temporal join `JOIN b FOR SYSTEM_TIME AS OF a.ts`): a reading
//! with the calibration, price or model version in force when it happened.
//!
//! A left row waits until the watermark (the minimum of both inputs') has passed its time: no
//! right row at or before it can arrive after that (the sources drop late events), so the
//! latest one is known and the row is emitted, with NULLs where there is none (the join keeps
//! every left row, as Snowflake's ASOF JOIN does; an INNER temporal join drops them). Of a
//! key's right rows behind the watermark only the latest can still be the answer for a left
//! row (all later left rows are at or after the watermark), so the others leave the state:
//! the state holds the left rows not yet emitted, the right rows ahead of the watermark, and
//! one right row per key.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt32Array, new_null_array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::RowConverter;
use datafusion::common::JoinType;
use datafusion::physical_plan::PhysicalExpr;

use super::interval_join::{
    Held, encode_keys, join_output, key_converter, parse_value, row_converter, state_key,
    state_value,
};
use crate::error::{Error, Result};
use crate::keys::key_group;
use crate::stream::FastMap;
use crate::stream::checkpoint::Barrier;
use crate::stream::operators::micros;
use crate::stream::pipeline::{Message, Operator, push_batches};
use crate::stream::state::StateTable;

/// An ASOF join as planned. Input 0 (left) is the one whose rows are answered, input 1
/// (right) the versions.
#[derive(Debug, Clone)]
pub struct AsofJoinPlan {
    /// LEFT (every left row, NULLs without a version) or INNER.
    pub join_type: JoinType,
    /// Each input's columns.
    pub inputs: [SchemaRef; 2],
    /// Each input's equal key expressions (none: one version for all rows).
    pub keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    /// Each input's event-time column.
    pub time: [usize; 2],
    /// `>` rather than `>=`: the latest version strictly before the row.
    pub strict: bool,
    /// Left columns, then right columns (before `projection`).
    pub schema: SchemaRef,
    pub projection: Option<Vec<usize>>,
}

/// A key's right rows: (time, sequence) → row.
type Versions = BTreeMap<(i64, u64), Vec<u8>>;

pub struct AsofJoin {
    plan: Arc<AsofJoinPlan>,
    state: StateTable,
    rows: [RowConverter; 2],
    keys: RowConverter,
    /// Left rows waiting for the watermark: (time, sequence) → (key, row).
    pending: BTreeMap<(i64, u64), (Vec<u8>, Vec<u8>)>,
    /// Right rows by key, then (time, sequence).
    versions: FastMap<Vec<u8>, Versions>,
    /// Right rows not yet behind the watermark: (time, sequence) → key.
    ahead: BTreeMap<(i64, u64), Vec<u8>>,
    watermark: Option<i64>,
    next_seq: u64,
}

impl AsofJoin {
    /// The join over the rows its state table holds (those of the last checkpoint;
    /// `watermark` is the minimum of its inputs' then).
    pub fn restore(
        plan: Arc<AsofJoinPlan>,
        state: StateTable,
        watermark: Option<i64>,
    ) -> Result<Self> {
        let mut this = Self {
            rows: [
                row_converter(&plan.inputs[0])?,
                row_converter(&plan.inputs[1])?,
            ],
            keys: key_converter(&plan.keys[0], &plan.inputs[0])?,
            plan,
            // Rows live in memory; the table is read only by the scan below.
            state: state.write_through(),
            pending: BTreeMap::new(),
            versions: FastMap::default(),
            ahead: BTreeMap::new(),
            watermark,
            next_seq: 0,
        };
        let mut held = Vec::new();
        this.state.scan(|_, _, v| {
            held.push(parse_value(v).ok_or_else(|| Error::internal("corrupt ASOF join state"))?);
            Ok(())
        })?;
        for (input, key, ts, seq, row) in held {
            this.next_seq = this.next_seq.max(seq + 1);
            match input {
                0 => {
                    this.pending.insert((ts, seq), (key, row.row));
                }
                _ => {
                    this.ahead.insert((ts, seq), key.clone());
                    this.versions
                        .entry(key)
                        .or_default()
                        .insert((ts, seq), row.row);
                }
            }
        }
        Ok(this)
    }

    /// Keeps a batch's rows: left rows wait, right rows become versions.
    fn on_input_batch(&mut self, input: usize, batch: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let n = batch.num_rows();
        let keys = match self.plan.keys[input].is_empty() {
            true => vec![Some(Vec::new()); n],
            false => encode_keys(
                &self.keys,
                &self.plan.keys,
                &self.plan.inputs[0],
                input,
                batch,
            )?,
        };
        let times = micros(batch.column(self.plan.time[input]).as_ref())?;
        let rows = self.rows[input].convert_columns(batch.columns())?;
        // Left rows with a NULL key or time have no version: answered at once.
        let mut unanswerable = Vec::new();
        for i in 0..n {
            let (Some(key), Some(ts)) = (&keys[i], times[i]) else {
                unanswerable.push(i as u32);
                continue;
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let row = rows.row(i).as_ref().to_vec();
            let held = Held {
                row,
                matched: false,
            };
            self.state.put(
                key_group(key),
                &state_key(input, key, ts, seq),
                state_value(input, key, ts, seq, &held),
            );
            match input {
                0 => {
                    self.pending.insert((ts, seq), (key.clone(), held.row));
                }
                _ => {
                    self.ahead.insert((ts, seq), key.clone());
                    self.versions
                        .entry(key.clone())
                        .or_default()
                        .insert((ts, seq), held.row);
                }
            }
        }
        if input == 1 || unanswerable.is_empty() || self.plan.join_type != JoinType::Left {
            return Ok(Vec::new());
        }
        let indices = UInt32Array::from(unanswerable);
        let left = batch
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let right = self.plan.inputs[1]
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), indices.len()))
            .collect::<Vec<_>>();
        Ok(vec![self.output(left, right, indices.len())?])
    }

    /// Answers the left rows the watermark has passed, then forgets the versions no later
    /// row can need.
    fn advance(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        let mut left_rows = Vec::new();
        let mut found: Vec<Option<u32>> = Vec::new();
        let mut versions: Vec<&[u8]> = Vec::new();
        let mut done = Vec::new();
        while let Some((&(ts, seq), _)) = self.pending.first_key_value() {
            if ts >= watermark {
                break;
            }
            let (key, row) = self.pending.pop_first().expect("non-empty").1;
            let of_key = self.versions.get(&key);
            let latest = of_key.and_then(|m| match self.plan.strict {
                true => m.range(..(ts, 0)).next_back(),
                false => m.range(..=(ts, u64::MAX)).next_back(),
            });
            match latest {
                Some((_, version)) => {
                    found.push(Some(versions.len() as u32));
                    versions.push(version);
                }
                None if self.plan.join_type == JoinType::Left => found.push(None),
                None => {
                    done.push((key, ts, seq));
                    continue;
                }
            }
            left_rows.push(row);
            done.push((key, ts, seq));
        }
        let mut out = Vec::new();
        if !left_rows.is_empty() {
            let parser = self.rows[0].parser();
            let left = self.rows[0].convert_rows(left_rows.iter().map(|b| parser.parse(b)))?;
            let parser = self.rows[1].parser();
            let matched = self.rows[1].convert_rows(versions.iter().map(|b| parser.parse(b)))?;
            let indices = UInt32Array::from(found);
            let right = matched
                .iter()
                .map(|c| take(c.as_ref(), &indices, None))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            out.push(self.output(left, right, left_rows.len())?);
        }
        for (key, ts, seq) in done {
            self.state
                .delete(key_group(&key), &state_key(0, &key, ts, seq));
        }
        // A key's versions behind the watermark: only the latest can still answer a row.
        while let Some((&(ts, seq), _)) = self.ahead.first_key_value() {
            if ts >= watermark {
                break;
            }
            let key = self.ahead.pop_first().expect("non-empty").1;
            let Some(of_key) = self.versions.get_mut(&key) else {
                continue;
            };
            let older: Vec<(i64, u64)> = of_key.range(..(ts, seq)).map(|(at, _)| *at).collect();
            for at in older {
                of_key.remove(&at);
                self.state
                    .delete(key_group(&key), &state_key(1, &key, at.0, at.1));
            }
        }
        Ok(out)
    }

    fn output(
        &self,
        left: Vec<ArrayRef>,
        right: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<RecordBatch> {
        join_output(
            &self.plan.schema,
            self.plan.projection.as_ref(),
            left.into_iter().chain(right).collect(),
            rows,
        )
    }

    /// Left rows waiting and versions kept (for tests).
    pub fn held(&self) -> (usize, usize) {
        (
            self.pending.len(),
            self.versions.values().map(BTreeMap::len).sum(),
        )
    }
}

#[cfg(test)]
mod tests;

#[async_trait::async_trait]
impl Operator for AsofJoin {
    async fn on_input(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        if input > 1 {
            return Err(Error::internal(format!("ASOF join has no input {input}")));
        }
        let batches = self.on_input_batch(input, &batch)?;
        push_batches(out, batches);
        Ok(())
    }

    /// Rows are emitted with times behind the watermark and every waiting row is at or after
    /// it, so the output watermark is the input's.
    async fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        if self.watermark.is_none_or(|w| watermark > w) {
            self.watermark = Some(watermark);
            let batches = self.advance(watermark)?;
            push_batches(out, batches);
        }
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        self.state.flush(barrier);
        Ok(())
    }
}
