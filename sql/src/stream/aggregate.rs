//! The grouping aggregation of a materialized view: one set of DataFusion accumulators per
//! group, updated batch by batch, written to the view as rows change, and checkpointed.
//!
//! Groups are identified by their Arrow row encoding (`RowConverter`), which is also the key
//! of their checkpointed state. Between checkpoints the operator remembers which groups
//! changed; a barrier turns them into state writes (accumulator state, row-encoded). Windowed
//! groups (grouped by `window_start`/`window_end`) are closed when the watermark passes the
//! window's end: with EMIT ON WINDOW CLOSE their row is written only then; either way their
//! state is dropped once the window is closed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array,
};
use datafusion::arrow::compute::{cast, filter, take};
use datafusion::arrow::datatypes::{
    DataType, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::Accumulator;
use datafusion::scalar::ScalarValue;

use super::checkpoint::{Barrier, state_prefix};
use super::plan::{AggregatePlan, UpperStage};
use super::view::{Output, ViewWriter};
use crate::error::{Error, Result};
use crate::storage::{KvStore, WriteOp, for_each_chunk};

struct Group {
    key: Vec<u8>,
    accs: Vec<Box<dyn Accumulator>>,
    changed: bool,
}

pub struct Aggregator {
    plan: AggregatePlan,
    pipeline: u32,
    keys: RowConverter,
    states: RowConverter,
    /// Number of state fields of each aggregate.
    state_widths: Vec<usize>,
    state_types: Vec<DataType>,
    index: HashMap<Vec<u8>, usize>,
    slots: Vec<Option<Group>>,
    free: Vec<usize>,
    /// Groups changed since the last barrier (their state must be written).
    unsaved: HashSet<usize>,
    /// Groups changed since their row was last written.
    changed: Vec<usize>,
    /// Keys of groups removed since the last barrier (their state must be deleted).
    removed: Vec<Vec<u8>>,
    /// Open windows: end → groups.
    windows: BTreeMap<i64, Vec<usize>>,
    emit_on_close: bool,
    watermark: Option<i64>,
    view: ViewWriter,
}

impl Aggregator {
    /// Creates the operator and loads the state committed with the last checkpoint.
    pub fn restore(
        plan: AggregatePlan,
        pipeline: u32,
        emit_on_close: bool,
        watermark: Option<i64>,
        view: ViewWriter,
        kv: &dyn KvStore,
    ) -> Result<Self> {
        let input = plan.schema.clone();
        let key_fields = (0..plan.group_exprs.len())
            .map(|i| SortField::new(input.field(i).data_type().clone()))
            .collect();
        let mut state_types = Vec::new();
        let mut state_widths = Vec::new();
        for a in &plan.aggr_exprs {
            let fields = a.state_fields()?;
            state_widths.push(fields.len());
            state_types.extend(fields.iter().map(|f| f.data_type().clone()));
        }
        let state_fields = state_types
            .iter()
            .map(|t| SortField::new(t.clone()))
            .collect();
        let window_ok = plan
            .window
            .is_some_and(|w| matches!(input.field(w.column).data_type(), DataType::Timestamp(..)));
        let mut plan = plan;
        if !window_ok {
            plan.window = None;
        }
        let mut agg = Self {
            keys: RowConverter::new(key_fields)?,
            states: RowConverter::new(state_fields)?,
            state_widths,
            state_types,
            plan,
            pipeline,
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            unsaved: HashSet::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            windows: BTreeMap::new(),
            emit_on_close,
            watermark,
            view,
        };
        agg.load(kv)?;
        Ok(agg)
    }

    pub fn group_count(&self) -> usize {
        self.index.len()
    }

    fn load(&mut self, kv: &dyn KvStore) -> Result<()> {
        let prefix = state_prefix(self.pipeline);
        for_each_chunk(kv, &prefix, 4096, |chunk| {
            let values: Vec<&[u8]> = chunk.iter().map(|(_, v)| v.as_slice()).collect();
            let mut restored =
                decode_states(&self.plan, &self.states, &self.state_widths, &values)?.into_iter();
            let key_columns = if self.plan.group_exprs.is_empty() {
                Vec::new()
            } else {
                let key_parser = self.keys.parser();
                let key_rows: Vec<_> = chunk
                    .iter()
                    .map(|(k, _)| key_parser.parse(&k[prefix.len()..]))
                    .collect();
                self.keys.convert_rows(key_rows)?
            };
            let ends = self.window_ends(&key_columns)?;
            for (i, (k, _)) in chunk.iter().enumerate() {
                let key = k[prefix.len()..].to_vec();
                let window_end = self.window_end(ends.as_ref(), i);
                let slot = self.create(key, window_end)?;
                let group = self.slots[slot].as_mut().expect("just created");
                group.accs = restored.next().expect("one state per row");
                group.changed = false;
            }
            Ok(())
        })
    }

    /// The window end (microseconds) of each row, when grouping by window.
    fn window_ends(&self, key_columns: &[ArrayRef]) -> Result<Option<ArrayRef>> {
        let Some(w) = self.plan.window else {
            return Ok(None);
        };
        let micros = cast(
            &key_columns[w.column],
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        )?;
        Ok(Some(micros))
    }

    fn window_end(&self, ends: Option<&ArrayRef>, row: usize) -> Option<i64> {
        let w = self.plan.window?;
        let col = ends?.as_primitive::<TimestampMicrosecondType>();
        (!col.is_null(row)).then(|| col.value(row) + w.add_us)
    }

    fn create(&mut self, key: Vec<u8>, window_end: Option<i64>) -> Result<usize> {
        let accs = self
            .plan
            .aggr_exprs
            .iter()
            .map(|a| a.create_accumulator())
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let group = Group {
            key: key.clone(),
            accs,
            changed: false,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(group);
                s
            }
            None => {
                self.slots.push(Some(group));
                self.slots.len() - 1
            }
        };
        if let Some(end) = window_end {
            self.windows.entry(end).or_default().push(slot);
        }
        self.index.insert(key, slot);
        Ok(slot)
    }

    /// Applies one batch of the lower stage's output; returns the view writes it causes.
    pub fn on_batch(&mut self, batch: &RecordBatch) -> Result<Output> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(Output::none());
        }
        let key_columns = eval_groups(&self.plan, batch)?;
        let rows = self.keys.convert_columns(&key_columns)?;
        let global = key_columns.is_empty();
        let ends = self.window_ends(&key_columns)?;
        // Row indices of each touched group, in order of first appearance.
        let mut touched: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut position: HashMap<usize, usize> = HashMap::new();
        for i in 0..n {
            let key: &[u8] = if global { &[] } else { rows.row(i).data() };
            let slot = match self.index.get(key) {
                Some(s) => *s,
                None => {
                    let end = self.window_end(ends.as_ref(), i);
                    if let (Some(end), Some(wm)) = (end, self.watermark)
                        && end <= wm
                    {
                        // The window already closed: the event is late for it.
                        continue;
                    }
                    self.create(key.to_vec(), end)?
                }
            };
            match position.get(&slot) {
                Some(p) => touched[*p].1.push(i as u32),
                None => {
                    position.insert(slot, touched.len());
                    touched.push((slot, vec![i as u32]));
                }
            }
        }
        let (args, masks) = eval_inputs(&self.plan, batch)?;
        let whole = touched.len() == 1 && touched[0].1.len() == n;
        // With EMIT ON WINDOW CLOSE rows are written when windows close, not as they change.
        let on_update = !(self.plan.window.is_some() && self.emit_on_close);
        for (slot, idx) in touched {
            let indices = (!whole).then(|| UInt32Array::from(idx));
            let group = self.slots[slot].as_mut().expect("live group");
            update_accumulators(&mut group.accs, &args, &masks, indices.as_ref())?;
            if on_update && !group.changed {
                group.changed = true;
                self.changed.push(slot);
            }
            self.unsaved.insert(slot);
        }
        if !on_update {
            return Ok(Output::none());
        }
        let changed = std::mem::take(&mut self.changed);
        self.emit(&changed)
    }

    /// Closes the windows that end at or before `watermark`.
    pub fn on_watermark(&mut self, watermark: i64) -> Result<Output> {
        self.watermark = Some(watermark);
        let still_open = self.windows.split_off(&(watermark + 1));
        let closed = std::mem::replace(&mut self.windows, still_open);
        let slots: Vec<usize> = closed.into_values().flatten().collect();
        if slots.is_empty() {
            return Ok(Output::none());
        }
        let writes = if self.emit_on_close {
            self.emit(&slots)?
        } else {
            Output::none()
        };
        if !self.changed.is_empty() {
            let closed: HashSet<usize> = slots.iter().copied().collect();
            self.changed.retain(|s| !closed.contains(s));
        }
        for slot in slots {
            let group = self.slots[slot].take().expect("open window group");
            self.index.remove(&group.key);
            self.unsaved.remove(&slot);
            self.removed.push(group.key);
            self.free.push(slot);
        }
        Ok(writes)
    }

    /// Adds the state writes that make the checkpoint hold every group as it is now.
    pub fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        let prefix = state_prefix(self.pipeline);
        for key in self.removed.drain(..) {
            let mut k = prefix.clone();
            k.extend_from_slice(&key);
            barrier.writes.push(WriteOp::Delete(k));
        }
        if self.unsaved.is_empty() {
            return Ok(());
        }
        let mut slots: Vec<usize> = self.unsaved.drain().collect();
        slots.sort_unstable();
        let wanted: HashSet<usize> = slots.iter().copied().collect();
        let values = encode_states(
            &self.states,
            &self.state_types,
            &self.state_widths,
            self.slots
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| wanted.contains(i))
                .map(|(_, g)| &mut g.as_mut().expect("live group").accs),
        )?;
        for (slot, value) in slots.iter().zip(values) {
            let group = self.slots[*slot].as_ref().expect("live group");
            let mut k = prefix.clone();
            k.extend_from_slice(&group.key);
            barrier.writes.push(WriteOp::Put(k, value));
        }
        Ok(())
    }

    /// The view writes for `slots`: their current result rows (or deletes where HAVING now
    /// filters them out).
    fn emit(&mut self, slots: &[usize]) -> Result<Output> {
        if slots.is_empty() {
            return Ok(Output::none());
        }
        let mut columns = if self.plan.group_exprs.is_empty() {
            Vec::new()
        } else {
            let parser = self.keys.parser();
            let key_rows: Vec<_> = slots
                .iter()
                .map(|&s| parser.parse(&self.slots[s].as_ref().expect("live").key))
                .collect();
            self.keys.convert_rows(key_rows)?
        };
        for a in 0..self.plan.aggr_exprs.len() {
            let values = slots
                .iter()
                .map(|&s| self.slots[s].as_mut().expect("live").accs[a].evaluate())
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let array = ScalarValue::iter_to_array(values)?;
            let field = self.plan.schema.field(self.plan.group_exprs.len() + a);
            let array = if array.data_type() != field.data_type() {
                cast(&array, field.data_type())?
            } else {
                array
            };
            columns.push(array);
        }
        for &s in slots {
            self.slots[s].as_mut().expect("live").changed = false;
        }
        let keys: Vec<Vec<u8>> = slots
            .iter()
            .map(|&s| self.slots[s].as_ref().expect("live").key.clone())
            .collect();
        let (batch, keep) = apply_upper(&self.plan.upper, self.plan.schema.clone(), columns)?;
        self.view.output(&batch, keep.as_ref(), &keys)
    }
}

/// The GROUP BY columns of a batch.
pub(super) fn eval_groups(plan: &AggregatePlan, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    let n = batch.num_rows();
    Ok(plan
        .group_exprs
        .iter()
        .map(|(e, _)| e.evaluate(batch)?.into_array(n))
        .collect::<datafusion::error::Result<Vec<_>>>()?)
}

/// The aggregates' argument columns and FILTER masks over a batch.
pub(super) type Inputs = (Vec<Vec<ArrayRef>>, Vec<Option<BooleanArray>>);

pub(super) fn eval_inputs(plan: &AggregatePlan, batch: &RecordBatch) -> Result<Inputs> {
    let n = batch.num_rows();
    let args = plan
        .aggr_exprs
        .iter()
        .map(|a| {
            a.expressions()
                .iter()
                .map(|e| e.evaluate(batch)?.into_array(n))
                .collect::<datafusion::error::Result<Vec<_>>>()
        })
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let masks = plan
        .filters
        .iter()
        .map(|f| {
            f.as_ref()
                .map(|f| -> Result<BooleanArray> {
                    let a = f.evaluate(batch)?.into_array(n)?;
                    Ok(a.as_boolean().clone())
                })
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((args, masks))
}

/// Feeds rows `indices` (all rows when `None`) of the inputs to one group's accumulators.
pub(super) fn update_accumulators(
    accs: &mut [Box<dyn Accumulator>],
    args: &[Vec<ArrayRef>],
    masks: &[Option<BooleanArray>],
    indices: Option<&UInt32Array>,
) -> Result<()> {
    for (a, acc) in accs.iter_mut().enumerate() {
        let mut values: Vec<ArrayRef> = match indices {
            None => args[a].clone(),
            Some(ix) => args[a]
                .iter()
                .map(|c| take(c.as_ref(), ix, None))
                .collect::<std::result::Result<_, _>>()?,
        };
        if let Some(mask) = &masks[a] {
            let mask = match indices {
                None => mask.clone(),
                Some(ix) => take(mask, ix, None)?.as_boolean().clone(),
            };
            let mask = null_as_false(&mask);
            values = values
                .iter()
                .map(|v| filter(v.as_ref(), &mask))
                .collect::<std::result::Result<_, _>>()?;
        }
        acc.update_batch(&values)?;
    }
    Ok(())
}

/// Accumulator states of several groups as one row-encoded value per group.
pub(super) fn encode_states<'a>(
    converter: &RowConverter,
    types: &[DataType],
    widths: &[usize],
    groups: impl Iterator<Item = &'a mut Vec<Box<dyn Accumulator>>>,
) -> Result<Vec<Vec<u8>>> {
    let mut columns: Vec<Vec<ScalarValue>> = (0..types.len()).map(|_| Vec::new()).collect();
    let mut count = 0;
    for accs in groups {
        count += 1;
        let mut at = 0;
        for (a, acc) in accs.iter_mut().enumerate() {
            let state = acc.state()?;
            if state.len() != widths[a] {
                return Err(Error::internal("accumulator state width changed"));
            }
            for (j, v) in state.into_iter().enumerate() {
                columns[at + j].push(v);
            }
            at += widths[a];
        }
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    let arrays = columns
        .into_iter()
        .zip(types)
        .map(|(values, ty)| -> Result<ArrayRef> {
            let array = ScalarValue::iter_to_array(values)?;
            Ok(match array.data_type() == ty {
                true => array,
                false => cast(&array, ty)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let rows = converter.convert_columns(&arrays)?;
    Ok((0..count).map(|i| rows.row(i).as_ref().to_vec()).collect())
}

/// Loads row-encoded states (see [`encode_states`]) into fresh accumulators.
pub(super) fn decode_states(
    plan: &AggregatePlan,
    converter: &RowConverter,
    widths: &[usize],
    values: &[&[u8]],
) -> Result<Vec<Vec<Box<dyn Accumulator>>>> {
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let parser = converter.parser();
    let columns = converter.convert_rows(values.iter().map(|v| parser.parse(v)))?;
    (0..values.len())
        .map(|i| {
            let mut accs = plan
                .aggr_exprs
                .iter()
                .map(|a| a.create_accumulator())
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let mut at = 0;
            for (a, acc) in accs.iter_mut().enumerate() {
                let state: Vec<ArrayRef> = columns[at..at + widths[a]]
                    .iter()
                    .map(|c| c.slice(i, 1))
                    .collect();
                acc.merge_batch(&state)?;
                at += widths[a];
            }
            Ok(accs)
        })
        .collect()
}

/// A filter mask where NULL means "no".
fn null_as_false(mask: &BooleanArray) -> BooleanArray {
    match mask.nulls() {
        None => mask.clone(),
        Some(nulls) => BooleanArray::new(mask.values() & nulls.inner(), None),
    }
}

/// Runs the upper stages over all rows (never dropping any, so row `i` stays group `i`);
/// returns the result and which rows pass the filters.
pub(super) fn apply_upper(
    stages: &[UpperStage],
    schema: SchemaRef,
    columns: Vec<ArrayRef>,
) -> Result<(RecordBatch, Option<BooleanArray>)> {
    let n = columns.first().map_or(0, |c| c.len());
    let options = RecordBatchOptions::new().with_row_count(Some(n));
    let relaxed = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let mut batch = RecordBatch::try_new_with_options(relaxed, columns, &options)?;
    let mut keep: Option<BooleanArray> = None;
    for stage in stages {
        match stage {
            UpperStage::Filter(predicate, projection) => {
                let passed = predicate.evaluate(&batch)?.into_array(n)?;
                let passed = null_as_false(passed.as_boolean());
                keep = Some(match keep {
                    None => passed,
                    Some(k) => datafusion::arrow::compute::and(&k, &passed)?,
                });
                if let Some(p) = projection {
                    batch = batch.project(p)?;
                }
            }
            UpperStage::Project(exprs, schema) => {
                let columns = exprs
                    .iter()
                    .map(|e| e.evaluate(&batch)?.into_array(n))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                let relaxed = Arc::new(Schema::new(
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.as_ref().clone().with_nullable(true))
                        .collect::<Vec<_>>(),
                ));
                batch = RecordBatch::try_new_with_options(relaxed, columns, &options)?;
            }
        }
    }
    Ok((batch, keep))
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aggregator({} groups)", self.index.len())
    }
}
