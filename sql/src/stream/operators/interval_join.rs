//! Interval join of two streams in event time: `a JOIN b ON a.k = b.k AND b.ts BETWEEN a.ts -
//! x AND a.ts + y`, INNER, LEFT, RIGHT or FULL.
//!
//! Each input's rows wait in the operator's state, indexed by join key and event time, for
//! rows of the other input that can still match them. A row arriving on one input probes the
//! other input's rows of its key within the time bound, the join's whole condition decides
//! each candidate pair, and the matches are emitted at once; so each pair is found exactly
//! once, by whichever of its two rows arrives second.
//!
//! The watermark (the minimum of both inputs') decides when a row can no longer match: no
//! event behind an input's watermark reaches the join (the sources drop late events), so a
//! left row is done once the watermark passes `a.ts + y` and a right row once it passes
//! `b.ts + x`. Done rows leave the state; in an outer join, a done row of a preserved side that
//! never matched is emitted then, padded with NULLs. That is how "orders with no payment within
//! 5 minutes" is a LEFT JOIN with `WHERE p.id IS NULL`, emitted 5 minutes (of event time)
//! after each order.

use std::collections::BTreeMap;

use datafusion::common::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, UInt32Array, new_null_array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{JoinSide, JoinType};
use datafusion::physical_plan::PhysicalExpr;
use datafusion::physical_plan::joins::utils::JoinFilter;

use crate::error::{Error, Result};
use crate::keys::key_group;
use crate::stream::aggregate::null_as_false;
use crate::stream::checkpoint::Barrier;
use crate::stream::operators::{micros, time_key};
use crate::stream::pipeline::{Message, Operator, push_batches};
use crate::stream::state::StateTable;

/// An interval join as planned. Input 0 is the join's left side, input 1 its right.
#[derive(Debug, Clone)]
pub struct IntervalJoinPlan {
    pub join_type: JoinType,
    /// Each input's columns.
    pub inputs: [SchemaRef; 2],
    /// Each input's equi-join key expressions (pairwise equal; none: only the time bound).
    pub keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    /// Each input's column holding its source's event time plus `time_offset_us`.
    pub time: [usize; 2],
    pub time_offset_us: [i64; 2],
    /// Every match has `right.ts - left.ts` within `[lower_us, upper_us]`.
    pub lower_us: i64,
    pub upper_us: i64,
    /// The join's whole condition beyond the keys (the time bound included).
    pub filter: Option<JoinFilter>,
    /// Left columns, then right columns (before `projection`).
    pub schema: SchemaRef,
    pub projection: Option<Vec<usize>>,
}

impl IntervalJoinPlan {
    /// How far the join's output watermark trails its inputs': a row emitted when the
    /// watermark is `w` has times no earlier than `w` minus this on either side.
    pub fn delay_us(&self) -> i64 {
        self.upper_us.abs().max(self.lower_us.abs())
    }

    /// Whether rows of `input` without a match are emitted (padded with NULLs in an outer
    /// join, as they are in an anti join).
    pub fn preserves(&self, input: usize) -> bool {
        matches!(
            (self.join_type, input),
            (JoinType::Full, _)
                | (JoinType::Left | JoinType::LeftAnti, 0)
                | (JoinType::Right | JoinType::RightAnti, 1)
        )
    }

    /// The input a semi or anti join returns rows of (None: a join that returns pairs).
    pub fn returns(&self) -> Option<usize> {
        match self.join_type {
            JoinType::LeftSemi | JoinType::LeftAnti => Some(0),
            JoinType::RightSemi | JoinType::RightAnti => Some(1),
            _ => None,
        }
    }

    /// A semi join: each row of [`Self::returns`] once, when its first match arrives.
    fn semi(&self) -> bool {
        matches!(self.join_type, JoinType::LeftSemi | JoinType::RightSemi)
    }

    /// A row of `input` at time `ts` can match no row of the other input at or after
    /// watermark `w` once `w` is past this (microseconds).
    fn done_after(&self, input: usize, ts: i64) -> i64 {
        match input {
            0 => ts.saturating_add(self.upper_us),
            _ => ts.saturating_sub(self.lower_us),
        }
    }

    /// The other input's times a row of `input` at `ts` can match.
    fn partner_times(&self, input: usize, ts: i64) -> (i64, i64) {
        match input {
            0 => (
                ts.saturating_add(self.lower_us),
                ts.saturating_add(self.upper_us),
            ),
            _ => (
                ts.saturating_sub(self.upper_us),
                ts.saturating_sub(self.lower_us),
            ),
        }
    }
}

/// A buffered row.
pub(crate) struct Held {
    pub(crate) row: Vec<u8>,
    pub(crate) matched: bool,
}

/// One input's buffered rows.
#[derive(Default)]
struct Buffer {
    /// By join key, then (time, sequence).
    by_key: HashMap<Vec<u8>, BTreeMap<(i64, u64), Held>>,
    /// (time, sequence) → join key, to find done rows in time order.
    by_time: BTreeMap<(i64, u64), Vec<u8>>,
}

pub struct IntervalJoin {
    plan: Arc<IntervalJoinPlan>,
    state: StateTable,
    rows: [RowConverter; 2],
    keys: RowConverter,
    buffers: [Buffer; 2],
    watermark: Option<i64>,
    next_seq: u64,
}

/// State key of a row: input, join key, time (order-preserving), sequence.
pub(crate) fn state_key(input: usize, key: &[u8], ts: i64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len() + 16);
    k.push(input as u8);
    k.extend_from_slice(key);
    k.extend_from_slice(&time_key(ts));
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// State value of a row: input, matched, key length, key, time, sequence, row.
pub(crate) fn state_value(input: usize, key: &[u8], ts: i64, seq: u64, held: &Held) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + 4 + key.len() + 16 + held.row.len());
    v.push(input as u8);
    v.push(held.matched as u8);
    v.extend_from_slice(&(key.len() as u32).to_le_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(&ts.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&held.row);
    v
}

pub(crate) type Parsed = (usize, Vec<u8>, i64, u64, Held);

pub(crate) fn parse_value(v: &[u8]) -> Option<Parsed> {
    let input = *v.first()? as usize;
    let matched = *v.get(1)? != 0;
    let len = u32::from_le_bytes(v.get(2..6)?.try_into().ok()?) as usize;
    let key = v.get(6..6 + len)?.to_vec();
    let at = 6 + len;
    let ts = i64::from_le_bytes(v.get(at..at + 8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(v.get(at + 8..at + 16)?.try_into().ok()?);
    let row = v.get(at + 16..)?.to_vec();
    Some((input, key, ts, seq, Held { row, matched }))
}

pub(crate) fn row_converter(schema: &SchemaRef) -> Result<RowConverter> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    Ok(RowConverter::new(fields)?)
}

impl IntervalJoin {
    /// The join over the rows its state table holds (those of the last checkpoint; `watermark`
    /// is the minimum of its inputs' then).
    pub fn restore(
        plan: Arc<IntervalJoinPlan>,
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
            // Rows live in `buffers`; the table is read only by the scan below.
            state: state.write_through(),
            buffers: Default::default(),
            watermark,
            next_seq: 0,
        };
        let mut held = Vec::new();
        this.state.scan(|_, _, v| {
            held.push(parse_value(v).ok_or_else(|| Error::internal("corrupt join state"))?);
            Ok(())
        })?;
        for (input, key, ts, seq, row) in held {
            this.next_seq = this.next_seq.max(seq + 1);
            let buffer = this
                .buffers
                .get_mut(input)
                .ok_or_else(|| Error::internal("corrupt join state"))?;
            buffer.by_time.insert((ts, seq), key.clone());
            buffer.by_key.entry(key).or_default().insert((ts, seq), row);
        }
        Ok(this)
    }

    /// Each row's join key, row-encoded (None where a key column is NULL: it equals nothing).
    fn keys_of(&self, input: usize, batch: &RecordBatch) -> Result<Vec<Option<Vec<u8>>>> {
        if self.plan.keys[input].is_empty() {
            return Ok(vec![Some(Vec::new()); batch.num_rows()]);
        }
        encode_keys(
            &self.keys,
            &self.plan.keys,
            &self.plan.inputs[0],
            input,
            batch,
        )
    }

    /// Joins a batch of `input` with the other input's buffered rows, then buffers it.
    fn on_input_batch(&mut self, input: usize, batch: &RecordBatch) -> Result<Vec<RecordBatch>> {
        let other = 1 - input;
        let n = batch.num_rows();
        let keys = self.keys_of(input, batch)?;
        // The source's event times.
        let offset = self.plan.time_offset_us[input];
        let times: Vec<Option<i64>> = micros(batch.column(self.plan.time[input]).as_ref())?
            .into_iter()
            .map(|t| t.map(|t| t.saturating_sub(offset)))
            .collect();
        // Candidate pairs: (row of the batch, time and sequence of a buffered row of the
        // other input with the same key), and the buffered rows decoded.
        let mut probe = Vec::new();
        let mut found: Vec<(i64, u64)> = Vec::new();
        let mut partners = None;
        {
            let mut encoded: Vec<&[u8]> = Vec::new();
            for i in 0..n {
                let (Some(key), Some(ts)) = (&keys[i], times[i]) else {
                    continue;
                };
                let Some(held) = self.buffers[other].by_key.get(key) else {
                    continue;
                };
                let (from, to) = self.plan.partner_times(input, ts);
                for (at, h) in held.range((from, 0)..=(to, u64::MAX)) {
                    probe.push(i as u32);
                    found.push(*at);
                    encoded.push(&h.row);
                }
            }
            if !encoded.is_empty() {
                let parser = self.rows[other].parser();
                partners =
                    Some(self.rows[other].convert_rows(encoded.iter().map(|b| parser.parse(b)))?);
            }
        }
        let mut matched_here = vec![false; n];
        let mut out = Vec::new();
        // Semi join: buffered rows of the returned input that matched for the first time.
        let mut first_matches: Vec<(Vec<u8>, (i64, u64))> = Vec::new();
        if let Some(partners) = partners {
            let probe = UInt32Array::from(probe);
            let here: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .map(|c| take(c.as_ref(), &probe, None))
                .collect::<std::result::Result<_, _>>()?;
            let (left, right) = match input {
                0 => (here, partners),
                _ => (partners, here),
            };
            let pairs = probe.len();
            let passed = self.condition(&left, &right, pairs)?;
            let keep: Vec<u32> = (0..pairs as u32).filter(|&p| passed[p as usize]).collect();
            for &p in &keep {
                let row = probe.value(p as usize) as usize;
                matched_here[row] = true;
                let at = &found[p as usize];
                let key = keys[row].as_ref().expect("a probing row has a key");
                let held = self.buffers[other]
                    .by_key
                    .get_mut(key)
                    .and_then(|m| m.get_mut(at))
                    .expect("candidate is buffered");
                if !held.matched {
                    held.matched = true;
                    if self.plan.semi() && self.plan.returns() == Some(other) {
                        first_matches.push((key.clone(), *at));
                    } else if self.plan.preserves(other) {
                        let value = state_value(other, key, at.0, at.1, held);
                        self.state
                            .put(key_group(key), &state_key(other, key, at.0, at.1), value);
                    }
                }
            }
            if !keep.is_empty() && self.plan.returns().is_none() {
                let keep = UInt32Array::from(keep);
                let columns = left
                    .iter()
                    .chain(right.iter())
                    .map(|c| take(c.as_ref(), &keep, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                out.push(self.output(columns, keep.len())?);
            }
        }
        match self.plan.returns() {
            // A semi join returns each row once, at its first match: the batch's rows that
            // matched, and the buffered ones that did now (which are done with).
            Some(r) if self.plan.semi() => {
                if r == input {
                    let matched: Vec<u32> = (0..n as u32)
                        .filter(|&i| matched_here[i as usize])
                        .collect();
                    if !matched.is_empty() {
                        out.push(self.rows_of(input, batch, matched)?);
                    }
                } else if !first_matches.is_empty() {
                    let mut rows = Vec::with_capacity(first_matches.len());
                    for (key, at) in &first_matches {
                        rows.push(self.remove(other, key, *at).row);
                    }
                    let parser = self.rows[other].parser();
                    let columns =
                        self.rows[other].convert_rows(rows.iter().map(|b| parser.parse(b)))?;
                    out.push(self.output(columns, rows.len())?);
                }
            }
            _ => {}
        }
        // Rows that can never match: emitted now on a preserved side, dropped otherwise. A row
        // of the returned input of a semi or anti join that matched needs no keeping either.
        let done_if_matched = self.plan.returns() == Some(input);
        let mut unmatchable = Vec::new();
        let rows = self.rows[input].convert_columns(batch.columns())?;
        for i in 0..n {
            let (Some(key), Some(ts)) = (&keys[i], times[i]) else {
                unmatchable.push(i as u32);
                continue;
            };
            if done_if_matched && matched_here[i] {
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let held = Held {
                row: rows.row(i).as_ref().to_vec(),
                matched: matched_here[i],
            };
            self.state.put(
                key_group(key),
                &state_key(input, key, ts, seq),
                state_value(input, key, ts, seq, &held),
            );
            let buffer = &mut self.buffers[input];
            buffer.by_time.insert((ts, seq), key.clone());
            buffer
                .by_key
                .entry(key.clone())
                .or_default()
                .insert((ts, seq), held);
        }
        if self.plan.preserves(input) && !unmatchable.is_empty() {
            out.push(self.rows_of(input, batch, unmatchable)?);
        }
        Ok(out)
    }

    /// Rows `indices` of a batch of `input`, as output rows without a partner.
    fn rows_of(&self, input: usize, batch: &RecordBatch, indices: Vec<u32>) -> Result<RecordBatch> {
        let indices = UInt32Array::from(indices);
        let columns = batch
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.padded(input, columns, indices.len())
    }

    /// Takes a buffered row out of the join's buffers and state.
    fn remove(&mut self, input: usize, key: &[u8], at: (i64, u64)) -> Held {
        let buffer = &mut self.buffers[input];
        buffer.by_time.remove(&at);
        let rows = buffer.by_key.get_mut(key).expect("indexed");
        let held = rows.remove(&at).expect("indexed");
        if rows.is_empty() {
            buffer.by_key.remove(key);
        }
        self.state
            .delete(key_group(key), &state_key(input, key, at.0, at.1));
        held
    }

    /// Which candidate pairs satisfy the join's condition.
    fn condition(&self, left: &[ArrayRef], right: &[ArrayRef], pairs: usize) -> Result<Vec<bool>> {
        join_condition(self.plan.filter.as_ref(), left, right, pairs)
    }

    /// Rows of the join's output schema, with its projection.
    fn output(&self, columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
        join_output(
            &self.plan.schema,
            self.plan.projection.as_ref(),
            columns,
            rows,
        )
    }

    /// Rows of `input` without a match, the other input's columns NULL (a semi or anti
    /// join's rows have only their own input's columns).
    fn padded(&self, input: usize, columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
        if self.plan.returns().is_some() {
            return self.output(columns, rows);
        }
        let nulls: Vec<ArrayRef> = self.plan.inputs[1 - input]
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), rows))
            .collect();
        let all = match input {
            0 => columns.into_iter().chain(nulls).collect(),
            _ => nulls.into_iter().chain(columns).collect(),
        };
        self.output(all, rows)
    }

    /// Drops the rows the watermark made done; returns the unmatched ones of preserved sides.
    fn expire(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for input in 0..2 {
            let mut unmatched = Vec::new();
            while let Some((&(ts, seq), _)) = self.buffers[input].by_time.first_key_value() {
                if self.plan.done_after(input, ts) >= watermark {
                    break;
                }
                let key = self.buffers[input].by_time[&(ts, seq)].clone();
                let held = self.remove(input, &key, (ts, seq));
                if !held.matched && self.plan.preserves(input) {
                    unmatched.push(held.row);
                }
            }
            if unmatched.is_empty() {
                continue;
            }
            let parser = self.rows[input].parser();
            let columns =
                self.rows[input].convert_rows(unmatched.iter().map(|b| parser.parse(b)))?;
            out.push(self.padded(input, columns, unmatched.len())?);
        }
        Ok(out)
    }

    /// Rows buffered per input (for tests and EXPLAIN ANALYZE-like checks).
    pub fn buffered(&self) -> [usize; 2] {
        [self.buffers[0].by_time.len(), self.buffers[1].by_time.len()]
    }
}

#[cfg(test)]
pub(crate) mod tests;

#[async_trait::async_trait]
impl Operator for IntervalJoin {
    async fn on_input(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        if input > 1 {
            return Err(Error::internal(format!(
                "interval join has no input {input}"
            )));
        }
        let batches = self.on_input_batch(input, &batch)?;
        push_batches(out, batches);
        Ok(())
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        if self.watermark.is_none_or(|w| watermark > w) {
            self.watermark = Some(watermark);
            let batches = self.expire(watermark)?;
            push_batches(out, batches);
        }
        out.push(Message::Watermark(
            watermark.saturating_sub(self.plan.delay_us()),
        ));
        Ok(())
    }

    /// The checkpoint's watermark becomes the join's output watermark (what the operators
    /// after it restore with); the inputs' own are in the barrier's input positions.
    fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        self.state.flush(barrier);
        barrier.watermark = barrier
            .watermark
            .map(|w| w.saturating_sub(self.plan.delay_us()));
        Ok(())
    }
}

/// Which candidate pairs (left and right columns, row by row) satisfy a join's condition.
pub(crate) fn join_condition(
    filter: Option<&JoinFilter>,
    left: &[ArrayRef],
    right: &[ArrayRef],
    pairs: usize,
) -> Result<Vec<bool>> {
    let Some(filter) = filter else {
        return Ok(vec![true; pairs]);
    };
    let columns = filter
        .column_indices()
        .iter()
        .map(|c| match c.side {
            JoinSide::Left => left[c.index].clone(),
            _ => right[c.index].clone(),
        })
        .collect();
    let options = RecordBatchOptions::new().with_row_count(Some(pairs));
    let intermediate =
        RecordBatch::try_new_with_options(filter.schema().clone(), columns, &options)?;
    let passed = filter
        .expression()
        .evaluate(&intermediate)?
        .into_array(pairs)?;
    let passed = null_as_false(passed.as_boolean());
    Ok((0..pairs).map(|i| passed.value(i)).collect())
}

/// Rows of a join's output schema (left columns, then right), with its projection.
pub(crate) fn join_output(
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
    columns: Vec<ArrayRef>,
    rows: usize,
) -> Result<RecordBatch> {
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    let batch = RecordBatch::try_new_with_options(schema.clone(), columns, &options)?;
    Ok(match projection {
        Some(p) => batch.project(p)?,
        None => batch,
    })
}

/// A converter for a join's keys, typed as the left input's key expressions.
pub(crate) fn key_converter(
    keys: &[Arc<dyn PhysicalExpr>],
    left: &SchemaRef,
) -> Result<RowConverter> {
    let fields = keys
        .iter()
        .map(|e| Ok(SortField::new(e.data_type(left)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(RowConverter::new(fields)?)
}

/// Each row's join key on `input` (cast to the left input's key types), row-encoded; None
/// where a key column is NULL (it equals nothing).
pub(crate) fn encode_keys(
    converter: &RowConverter,
    keys: &[Vec<Arc<dyn PhysicalExpr>>; 2],
    left: &SchemaRef,
    input: usize,
    batch: &RecordBatch,
) -> Result<Vec<Option<Vec<u8>>>> {
    let n = batch.num_rows();
    let mut columns = Vec::with_capacity(keys[input].len());
    for (expr, left_expr) in keys[input].iter().zip(&keys[0]) {
        let mut column = expr.evaluate(batch)?.into_array(n)?;
        let want = left_expr.data_type(left)?;
        if column.data_type() != &want {
            column = cast(&column, &want)?;
        }
        columns.push(column);
    }
    let encoded = converter.convert_columns(&columns)?;
    Ok((0..n)
        .map(|i| {
            let null = columns.iter().any(|c| c.is_null(i));
            (!null).then(|| encoded.row(i).as_ref().to_vec())
        })
        .collect())
}
