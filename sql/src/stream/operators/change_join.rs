//! Equi-join of two materialized views: changelog in, changelog out.
//!
//! Each side's rows are kept by join key, as a multiset (row encoding → copies). A change on
//! one side meets the other side's rows of its key: an inserted row adds a joined row per
//! matching row (and copy), a deleted row takes the same joined rows back. The sides' rows
//! are in memory and in the operator's state table (written at each barrier, read back only
//! by a scan at restore), keyed by (side, join key, row).
//!
//! LEFT, RIGHT and FULL joins pad a preserved row that matches nothing with NULLs, and take
//! the padded row back when its key's first match arrives (and emit it again when the last
//! match leaves).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{filter_record_batch, take};
use datafusion::arrow::datatypes::{Int8Type, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::JoinType;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::physical_plan::joins::utils::JoinFilter;

use super::interval_join::{encode_keys, join_condition, join_output, key_converter};
use crate::error::{Error, Result};
use crate::keys::key_group;
use crate::stream::changelog::{self, OP_COLUMN, Op};
use crate::stream::checkpoint::Barrier;
use crate::stream::pipeline::{Message, Operator};
use crate::stream::state::StateTable;

/// An equi-join of two views as planned.
#[derive(Debug, Clone)]
pub struct ChangeJoinPlan {
    /// INNER, LEFT, RIGHT or FULL (outer joins have no condition beyond the keys).
    pub join_type: JoinType,
    /// The two inputs' columns (without the op column).
    pub inputs: [SchemaRef; 2],
    /// Each input's key expressions, pairwise equal.
    pub keys: [Vec<Arc<dyn PhysicalExpr>>; 2],
    pub filter: Option<JoinFilter>,
    /// Left columns, then right columns (before `projection`).
    pub schema: SchemaRef,
    pub projection: Option<Vec<usize>>,
}

/// One side's rows: join key → row encoding → copies (in row order, so a restored join
/// emits its rows in the order the original did).
type Side = HashMap<Vec<u8>, BTreeMap<Vec<u8>, u64>>;

pub struct ChangeJoin {
    plan: Arc<ChangeJoinPlan>,
    keys: RowConverter,
    rows: [RowConverter; 2],
    sides: [Side; 2],
    state: StateTable,
    /// (side, key, row) changed since the last barrier.
    dirty: BTreeSet<(usize, Vec<u8>, Vec<u8>)>,
}

fn state_key(side: usize, key: &[u8], row: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len() + row.len());
    k.push(side as u8);
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k.extend_from_slice(row);
    k
}

fn parse_key(k: &[u8]) -> Option<(usize, Vec<u8>, Vec<u8>)> {
    let side = *k.first()? as usize;
    let len = u32::from_be_bytes(k.get(1..5)?.try_into().ok()?) as usize;
    let key = k.get(5..5 + len)?.to_vec();
    Some((side, key, k[5 + len..].to_vec()))
}

fn converter(schema: &SchemaRef) -> Result<RowConverter> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    Ok(RowConverter::new(fields)?)
}

impl ChangeJoin {
    /// The join over the rows its state table holds (those of the last checkpoint).
    pub fn restore(plan: Arc<ChangeJoinPlan>, state: StateTable) -> Result<Self> {
        let mut this = Self {
            keys: key_converter(&plan.keys[0], &plan.inputs[0])?,
            rows: [converter(&plan.inputs[0])?, converter(&plan.inputs[1])?],
            plan,
            sides: Default::default(),
            state: state.write_through(),
            dirty: BTreeSet::new(),
        };
        let mut held = Vec::new();
        this.state.scan(|_, k, v| {
            let (side, key, row) =
                parse_key(k).ok_or_else(|| Error::internal("corrupt join state"))?;
            let copies = u64::from_be_bytes(
                v.try_into()
                    .map_err(|_| Error::internal("corrupt join state"))?,
            );
            held.push((side, key, row, copies));
            Ok(())
        })?;
        for (side, key, row, copies) in held {
            let side = this
                .sides
                .get_mut(side)
                .ok_or_else(|| Error::internal("corrupt join state"))?;
            side.entry(key).or_default().insert(row, copies);
        }
        Ok(this)
    }

    /// Each row's join key, row-encoded (None where a key column is NULL: it equals nothing).
    fn keys_of(&self, input: usize, batch: &RecordBatch) -> Result<Vec<Option<Vec<u8>>>> {
        encode_keys(
            &self.keys,
            &self.plan.keys,
            &self.plan.inputs[0],
            input,
            batch,
        )
    }

    /// Whether the join keeps the rows of `side` that match nothing (NULL-padded).
    fn preserves(&self, side: usize) -> bool {
        matches!(
            (self.plan.join_type, side),
            (JoinType::Left, 0) | (JoinType::Right, 1) | (JoinType::Full, _)
        )
    }

    /// Copies of rows `side` holds under `key`.
    fn total(&self, side: usize, key: &[u8]) -> u64 {
        self.sides[side]
            .get(key)
            .map_or(0, |rows| rows.values().sum())
    }

    /// Joins a changelog batch of `input` with the other side's rows, then applies it to its
    /// own side; returns the joined changes.
    ///
    /// Outer joins: a preserved row without a match goes out padded with NULLs; when the first
    /// row of its key arrives on the other side the padded row is taken back (and the joined
    /// rows added), and when the last one leaves the padded row comes back.
    fn apply(&mut self, input: usize, changes: &RecordBatch) -> Result<Option<RecordBatch>> {
        let last = changes.num_columns() - 1;
        if changes.schema().field(last).name() != OP_COLUMN {
            return Err(Error::internal("a join input without an op column"));
        }
        let ops = changes.column(last).as_primitive::<Int8Type>().clone();
        let rows = changes.project(&(0..last).collect::<Vec<_>>())?;
        let keys = self.keys_of(input, &rows)?;
        let encoded = self.rows[input].convert_columns(rows.columns())?;
        let other = 1 - input;
        // Output rows: this batch's row (None: NULLs), the other side's row (None: NULLs),
        // and the op.
        let mut out: Vec<(Option<u32>, Option<Vec<u8>>, i8)> = Vec::new();
        let sign = |retract: bool| match retract {
            true => Op::Delete as i8,
            false => Op::Insert as i8,
        };
        for (i, key) in keys.iter().enumerate() {
            let retract = Op::retracts(ops.value(i));
            let Some(key) = key else {
                // A NULL key equals nothing: the row is only ever padded.
                if self.preserves(input) {
                    out.push((Some(i as u32), None, sign(retract)));
                }
                continue;
            };
            let matches: Vec<(Vec<u8>, u64)> = self.sides[other]
                .get(key)
                .map(|m| m.iter().map(|(r, c)| (r.clone(), *c)).collect())
                .unwrap_or_default();
            if matches.is_empty() && self.preserves(input) {
                out.push((Some(i as u32), None, sign(retract)));
            }
            for (row, copies) in &matches {
                for _ in 0..*copies {
                    out.push((Some(i as u32), Some(row.clone()), sign(retract)));
                }
            }
            let before = self.total(input, key);
            let row = encoded.row(i).as_ref().to_vec();
            let side = self.sides[input].entry(key.clone()).or_default();
            let copies = side.entry(row.clone()).or_insert(0);
            match retract {
                true => *copies = copies.saturating_sub(1),
                false => *copies += 1,
            }
            if *copies == 0 {
                side.remove(&row);
                if side.is_empty() {
                    self.sides[input].remove(key);
                }
            }
            self.dirty.insert((input, key.clone(), row));
            let after = self.total(input, key);
            if self.preserves(other) && (before == 0) != (after == 0) {
                // The other side's rows of this key lose (or regain) their padded rows.
                for (row, copies) in &matches {
                    for _ in 0..*copies {
                        out.push((None, Some(row.clone()), sign(before == 0)));
                    }
                }
            }
        }
        if out.is_empty() {
            return Ok(None);
        }
        let rows_out = out.len();
        let indices: UInt32Array = out.iter().map(|o| o.0).collect();
        let out_ops: Vec<i8> = out.iter().map(|o| o.2).collect();
        let theirs: Vec<Option<Vec<u8>>> = out.into_iter().map(|o| o.1).collect();
        let this_columns: Vec<ArrayRef> = rows
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<std::result::Result<_, _>>()?;
        // The other side's rows, decoded once each place they are used.
        let present: Vec<&Vec<u8>> = theirs.iter().flatten().collect();
        let parser = self.rows[other].parser();
        let decoded = self.rows[other].convert_rows(present.iter().map(|r| parser.parse(r)))?;
        let mut next = 0u32;
        let other_indices: UInt32Array = theirs
            .iter()
            .map(|r| {
                r.as_ref().map(|_| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        let other_columns: Vec<ArrayRef> = decoded
            .iter()
            .map(|c| take(c.as_ref(), &other_indices, None))
            .collect::<std::result::Result<_, _>>()?;
        let (left, right) = match input {
            0 => (this_columns, other_columns),
            _ => (other_columns, this_columns),
        };
        let passed = join_condition(self.plan.filter.as_ref(), &left, &right, rows_out)?;
        let all: Vec<ArrayRef> = left.into_iter().chain(right).collect();
        let joined = join_output(
            &self.plan.schema,
            self.plan.projection.as_ref(),
            all,
            rows_out,
        )?;
        let joined = changelog::with_ops(&joined, out_ops)?;
        let passed = datafusion::arrow::array::BooleanArray::from(passed);
        let joined = filter_record_batch(&joined, &passed)?;
        Ok((joined.num_rows() > 0).then_some(joined))
    }

    /// Rows held per side.
    pub fn held(&self) -> [usize; 2] {
        [0, 1].map(|s| {
            self.sides[s]
                .values()
                .flat_map(|m| m.values())
                .map(|c| *c as usize)
                .sum()
        })
    }
}

#[async_trait]
impl Operator for ChangeJoin {
    async fn on_input(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        // An appending view's rows: inserts.
        let n = batch.num_rows();
        let changes = changelog::with_ops(&batch, vec![Op::Insert as i8; n])?;
        self.on_input_changes(input, changes, out).await
    }

    async fn on_input_changes(
        &mut self,
        input: usize,
        changes: RecordBatch,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        if let Some(joined) = self.apply(input, &changes)? {
            out.push(Message::Changes(joined));
        }
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        for (side, key, row) in std::mem::take(&mut self.dirty) {
            let k = state_key(side, &key, &row);
            match self.sides[side].get(&key).and_then(|m| m.get(&row)) {
                Some(copies) => self
                    .state
                    .put(key_group(&key), &k, copies.to_be_bytes().to_vec()),
                None => self.state.delete(key_group(&key), &k),
            }
        }
        self.state.flush(barrier);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
