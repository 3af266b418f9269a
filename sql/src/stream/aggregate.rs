//! The grouping aggregation of a materialized view: one set of DataFusion accumulators per
//! group, updated batch by batch, written to the view as rows change, and checkpointed.
//!
//! Groups are identified by their Arrow row encoding (`RowConverter`), which is also their key
//! in the operator's state table (key group: a hash of it). Groups live in memory while they
//! change; a barrier writes the state of those changed since the last one (accumulator state,
//! row-encoded) into the checkpoint, and when the groups in memory hold more than the budget
//! they are dropped and read back from the state table when touched again, so the number of
//! groups is bounded by the disk, not by memory. Windowed groups (grouped by
//! `window_start`/`window_end`) are closed when the watermark passes the window's end: with
//! EMIT ON WINDOW CLOSE their row is written only then; either way their state is deleted
//! once the window is closed. HOP windows written on close may instead be kept as panes, a
//! group per key and slide, merged into each window's row when it closes (`panes.rs`).

use std::collections::BTreeMap;

use crate::stream::{FastMap as HashMap, FastSet as HashSet};
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

use super::checkpoint::Barrier;
use super::plan::{AggregatePlan, UpperStage};
use super::state::StateTable;
use super::view::{Output, ViewWriter};
use crate::error::{Error, Result};
use crate::keys::key_group;

/// A group whose accumulators are in memory.
struct Group {
    accs: Vec<Box<dyn Accumulator>>,
    /// Changed since its row was last written.
    changed: bool,
    /// Changed since the last barrier (its state must be written).
    unsaved: bool,
    /// Bytes its accumulators held when last measured.
    size: usize,
}

pub struct Aggregator {
    plan: AggregatePlan,
    keys: RowConverter,
    states: RowConverter,
    /// Number of state fields of each aggregate.
    state_widths: Vec<usize>,
    state_types: Vec<DataType>,
    /// Every group's accumulator state, by the row encoding of its key.
    state: StateTable,
    /// Groups in memory: those changed since the last barrier, and others until the memory
    /// they hold passes `live_budget` (then they are dropped at the next barrier and read
    /// back from the state table when touched again).
    live: HashMap<Vec<u8>, Group>,
    live_bytes: usize,
    live_budget: usize,
    /// Keys of live groups changed since their row was written.
    changed: Vec<Vec<u8>>,
    /// Keys of live groups changed since the last barrier.
    unsaved: Vec<Vec<u8>>,
    /// Open windows: end → the keys of their groups (live or not).
    windows: BTreeMap<i64, Vec<Vec<u8>>>,
    emit_on_close: bool,
    watermark: Option<i64>,
    view: ViewWriter,
    /// HOP windows combined from panes (`panes.rs`): the groups are panes, keyed with their
    /// window columns last.
    panes: Option<Panes>,
}

/// What one group is assumed to hold before it is measured.
const GROUP_OVERHEAD: usize = 96;

impl Aggregator {
    /// Creates the operator over the state committed with the last checkpoint. Only the keys
    /// of open windows are read now; groups are read from the state table when touched.
    pub fn restore(
        plan: AggregatePlan,
        state: StateTable,
        live_budget: usize,
        emit_on_close: bool,
        watermark: Option<i64>,
        view: ViewWriter,
    ) -> Result<Self> {
        let all = 0..crate::keys::KEY_GROUPS;
        Self::restore_partition(
            plan,
            state,
            live_budget,
            emit_on_close,
            watermark,
            view,
            all,
        )
    }

    /// Like [`Aggregator::restore`], for the partition of a parallel aggregate that owns the
    /// key groups `groups` (the exchange before it sends it only their rows).
    pub fn restore_partition(
        plan: AggregatePlan,
        state: StateTable,
        live_budget: usize,
        emit_on_close: bool,
        watermark: Option<i64>,
        view: ViewWriter,
        groups: std::ops::Range<u16>,
    ) -> Result<Self> {
        let input = plan.schema.clone();
        let group_types: Vec<DataType> = (0..plan.group_exprs.len())
            .map(|i| input.field(i).data_type().clone())
            .collect();
        let panes = match plan.panes() {
            Some(_) if !emit_on_close => {
                return Err(Error::internal(
                    "HOP windows in panes are written when they close",
                ));
            }
            Some(hop) => Some(Panes::new(hop, &group_types)?),
            None => None,
        };
        let key_fields = match &panes {
            Some(p) => p.order.iter().map(|&c| group_types[c].clone()).collect(),
            None => group_types,
        }
        .into_iter()
        .map(SortField::new)
        .collect();
        let (state_widths, state_types) = plan.state_layout()?;
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
            state,
            live: HashMap::default(),
            live_bytes: 0,
            live_budget,
            changed: Vec::new(),
            unsaved: Vec::new(),
            windows: BTreeMap::new(),
            emit_on_close,
            watermark,
            view,
            panes,
        };
        agg.load_windows(groups)?;
        Ok(agg)
    }

    /// Groups in memory now, and the bytes they are estimated to hold.
    pub fn live_groups(&self) -> usize {
        self.live.len()
    }

    pub fn live_bytes(&self) -> usize {
        self.live_bytes
    }

    /// The keys of groups with GROUP BY columns `columns`.
    fn encode_keys(&self, columns: &[ArrayRef]) -> Result<datafusion::arrow::row::Rows> {
        Ok(match &self.panes {
            None => self.keys.convert_columns(columns)?,
            Some(p) => {
                let ordered: Vec<ArrayRef> = p.order.iter().map(|&c| columns[c].clone()).collect();
                self.keys.convert_columns(&ordered)?
            }
        })
    }

    /// The GROUP BY columns of the groups `keys`.
    fn decode_keys(&self, keys: &[Vec<u8>]) -> Result<Vec<ArrayRef>> {
        let parser = self.keys.parser();
        let columns = self
            .keys
            .convert_rows(keys.iter().map(|k| parser.parse(k)))?;
        Ok(match &self.panes {
            None => columns,
            Some(p) => p.unordered(columns),
        })
    }

    /// The key group of a group's key: its hash, or for a pane the hash of its columns
    /// other than the window's, so all panes of a window share one.
    fn group_of(&self, key: &[u8]) -> u16 {
        match &self.panes {
            None => key_group(key),
            Some(p) => p.group_of(key),
        }
    }

    /// Rebuilds the index of open windows from the keys of `groups` in the state table.
    fn load_windows(&mut self, groups: std::ops::Range<u16>) -> Result<()> {
        if self.plan.window.is_none() {
            return Ok(());
        }
        let mut keys = Vec::new();
        self.state.scan_groups(groups, |_, k, _| {
            keys.push(k.to_vec());
            Ok(())
        })?;
        for chunk in keys.chunks(4096) {
            let columns = self.decode_keys(chunk)?;
            let ends = self.window_ends(&columns)?;
            for (i, key) in chunk.iter().enumerate() {
                if let Some(end) = self.window_end(ends.as_ref(), i) {
                    self.windows.entry(end).or_default().push(key.clone());
                }
            }
        }
        Ok(())
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

    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.plan.accumulators()
    }

    /// Brings the groups `keys` into memory from the state table; returns, for each, whether
    /// it existed (a group that did not is created empty).
    fn make_live(&mut self, keys: &[&[u8]]) -> Result<Vec<bool>> {
        let missing: Vec<&[u8]> = keys
            .iter()
            .copied()
            .filter(|k| !self.live.contains_key(*k))
            .collect();
        let mut existed = HashMap::default();
        if !missing.is_empty() {
            let wanted: Vec<(u16, &[u8])> =
                missing.iter().map(|k| (self.group_of(k), *k)).collect();
            let stored = self.state.get_many(&wanted)?;
            let values: Vec<&[u8]> = stored.iter().flatten().map(|v| v.as_slice()).collect();
            let mut restored =
                decode_states(&self.plan, &self.states, &self.state_widths, &values)?.into_iter();
            for (key, value) in missing.into_iter().zip(&stored) {
                let accs = match value {
                    Some(_) => restored.next().expect("one state per stored value"),
                    None => self.new_accumulators()?,
                };
                existed.insert(key, value.is_some());
                let size =
                    GROUP_OVERHEAD + key.len() + accs.iter().map(|a| a.size()).sum::<usize>();
                self.live_bytes += size;
                let group = Group {
                    accs,
                    changed: false,
                    unsaved: false,
                    size,
                };
                self.live.insert(key.to_vec(), group);
            }
        }
        Ok(keys
            .iter()
            .map(|k| existed.get(k).copied().unwrap_or(true))
            .collect())
    }

    /// Applies one batch of the lower stage's output; returns the view writes it causes.
    pub fn on_batch(&mut self, batch: &RecordBatch) -> Result<Output> {
        self.apply(batch, false)?;
        self.emit_changed()
    }

    /// Applies a changelog batch (the aggregate of an updating view): retracts its deleted
    /// rows and adds its inserted ones; returns the view writes it causes.
    pub fn on_changes(&mut self, changes: &RecordBatch) -> Result<Output> {
        if !self.plan.retract {
            return Err(Error::internal(
                "a changelog reached an appending aggregate",
            ));
        }
        let (retracted, inserted) = super::changelog::split(changes)?;
        self.apply(&retracted, true)?;
        self.apply(&inserted, false)?;
        self.emit_changed()
    }

    /// The rows of groups changed since they were last written, unless they are written
    /// when their window closes.
    fn emit_changed(&mut self) -> Result<Output> {
        if self.plan.window.is_some() && self.emit_on_close {
            return Ok(Output::none());
        }
        let changed = std::mem::take(&mut self.changed);
        self.emit(&changed)
    }

    /// Adds (or with `retract`, takes back) the rows of `batch` in their groups.
    fn apply(&mut self, batch: &RecordBatch, retract: bool) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let key_columns = eval_groups(&self.plan, batch)?;
        let rows = self.encode_keys(&key_columns)?;
        let global = key_columns.is_empty();
        let ends = self.window_ends(&key_columns)?;
        // The distinct groups of the batch in order of first appearance, with their rows.
        let mut distinct: Vec<(&[u8], Vec<u32>, usize)> = Vec::new();
        let mut position: HashMap<&[u8], usize> = HashMap::default();
        for i in 0..n {
            let key: &[u8] = if global { &[] } else { rows.row(i).data() };
            match position.get(key) {
                Some(p) => distinct[*p].1.push(i as u32),
                None => {
                    position.insert(key, distinct.len());
                    distinct.push((key, vec![i as u32], i));
                }
            }
        }
        let keys: Vec<&[u8]> = distinct.iter().map(|(k, _, _)| *k).collect();
        let existed = self.make_live(&keys)?;
        let (mut args, mut masks) = eval_inputs(&self.plan, batch)?;
        if self.plan.retract {
            // The group's row count.
            args.push(vec![datafusion::arrow::array::new_null_array(
                &DataType::Null,
                n,
            )]);
            masks.push(None);
        }
        let whole = distinct.len() == 1 && distinct[0].1.len() == n;
        // With EMIT ON WINDOW CLOSE rows are written when windows close, not as they change.
        let on_update = !(self.plan.window.is_some() && self.emit_on_close);
        for ((key, idx, first), existed) in distinct.into_iter().zip(existed) {
            if !existed {
                let end = self.window_end(ends.as_ref(), first);
                if let (Some(end), Some(wm)) = (end, self.watermark)
                    && end <= wm
                {
                    // The window already closed: the events are late for it.
                    let group = self.live.remove(key).expect("made live");
                    self.live_bytes -= group.size;
                    continue;
                }
                if let Some(end) = end {
                    self.windows.entry(end).or_default().push(key.to_vec());
                }
            }
            let indices = (!whole).then(|| UInt32Array::from(idx));
            let group = self.live.get_mut(key).expect("made live");
            update_accumulators(&mut group.accs, &args, &masks, indices.as_ref(), retract)?;
            if on_update && !group.changed {
                group.changed = true;
                self.changed.push(key.to_vec());
            }
            if !group.unsaved {
                group.unsaved = true;
                self.unsaved.push(key.to_vec());
            }
        }
        Ok(())
    }

    /// Closes the windows that end at or before `watermark`.
    pub fn on_watermark(&mut self, watermark: i64) -> Result<Output> {
        let previous = self.watermark.replace(watermark);
        if self.panes.is_some() {
            return self.close_panes(previous, watermark);
        }
        let still_open = self.windows.split_off(&(watermark + 1));
        let closed = std::mem::replace(&mut self.windows, still_open);
        // Window by window, groups in key order: the same order after a restore.
        let keys: Vec<Vec<u8>> = closed
            .into_values()
            .flat_map(|mut keys| {
                keys.sort_unstable();
                keys
            })
            .collect();
        if keys.is_empty() {
            return Ok(Output::none());
        }
        let writes = if self.emit_on_close {
            let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
            self.make_live(&refs)?;
            self.emit(&keys)?
        } else {
            Output::none()
        };
        for key in keys {
            if let Some(group) = self.live.remove(&key) {
                self.live_bytes -= group.size;
            }
            self.state.delete(self.group_of(&key), &key);
        }
        // Keys of removed groups left in `changed` and `unsaved` are skipped.
        Ok(writes)
    }

    /// Adds the state writes that make the checkpoint hold every group as it is now.
    /// The checkpoint `epoch` is durable (its state writes go to the cache).
    pub fn committed(&mut self, epoch: u64) {
        self.state.committed(epoch);
    }

    pub fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        // A key can be listed twice (a group of an updating view's aggregate deleted and made
        // again in one epoch): the first takes the group.
        let mut groups: Vec<(Vec<u8>, Group)> = Vec::new();
        for k in std::mem::take(&mut self.unsaved) {
            if self.live.get(&k).is_some_and(|g| g.unsaved) {
                let g = self.live.remove(&k).expect("live");
                groups.push((k, g));
            }
        }
        let values = encode_states(
            &self.states,
            &self.state_types,
            &self.state_widths,
            groups.iter_mut().map(|(_, g)| &mut g.accs),
        )?;
        let touched: HashSet<Vec<u8>> = match self.live_bytes > self.live_budget {
            true => groups.iter().map(|(k, _)| k.clone()).collect(),
            false => HashSet::default(),
        };
        for ((key, mut group), value) in groups.into_iter().zip(values) {
            self.state.put(self.group_of(&key), &key, value);
            let size =
                GROUP_OVERHEAD + key.len() + group.accs.iter().map(|a| a.size()).sum::<usize>();
            self.live_bytes = self.live_bytes + size - group.size;
            group.size = size;
            group.unsaved = false;
            self.live.insert(key, group);
        }
        self.state.flush(barrier);
        if self.live_bytes > self.live_budget && self.changed.is_empty() {
            // Every group is saved, so memory can be given back: first the groups this epoch
            // did not touch, then, if those it touched still hold too much, all. Groups
            // touched again are read back from the state table (through the state cache).
            let mut freed = 0;
            self.live.retain(|k, g| {
                let keep = touched.contains(k);
                if !keep {
                    freed += g.size;
                }
                keep
            });
            self.live_bytes -= freed;
            if self.live_bytes > self.live_budget {
                self.live = HashMap::default();
                self.live_bytes = 0;
            }
        }
        Ok(())
    }

    /// The view writes for the groups `keys` (live): their current result rows (or deletes
    /// where HAVING now filters them out).
    fn emit(&mut self, keys: &[Vec<u8>]) -> Result<Output> {
        // A key is listed twice only when a group of an updating view's aggregate was
        // deleted and made again since its row was last written.
        let mut listed = HashSet::default();
        let keys: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| self.live.contains_key(*k) && (!self.plan.retract || listed.insert(*k)))
            .cloned()
            .collect();
        if keys.is_empty() {
            return Ok(Output::none());
        }
        let live = &mut self.live;
        let values = evaluate(&self.plan, keys.len(), |i, a| {
            live.get_mut(&keys[i]).expect("live").accs[a].evaluate()
        })?;
        for k in &keys {
            self.live.get_mut(k).expect("live").changed = false;
        }
        let alive = match self.plan.retract {
            true => Some(self.retract_empty(&keys)?),
            false => None,
        };
        self.write(&keys, values, alive)
    }

    /// Groups whose rows were all retracted are gone: their state is deleted, and false in
    /// the result marks their rows for deletion.
    fn retract_empty(&mut self, keys: &[Vec<u8>]) -> Result<BooleanArray> {
        let rows = self.plan.aggr_exprs.len();
        let mut alive = Vec::with_capacity(keys.len());
        for k in keys {
            let count = self.live.get_mut(k).expect("live").accs[rows].evaluate()?;
            alive.push(!matches!(count, ScalarValue::Int64(Some(n)) if n <= 0));
        }
        for (k, _) in keys.iter().zip(&alive).filter(|(_, a)| !**a) {
            if let Some(group) = self.live.remove(k) {
                self.live_bytes -= group.size;
            }
            self.state.delete(self.group_of(k), k);
        }
        Ok(BooleanArray::from(alive))
    }

    /// The view writes for the groups `keys` with aggregate columns `values`: their result
    /// rows, deleted where HAVING filters them out or `alive` is false.
    fn write(
        &self,
        keys: &[Vec<u8>],
        values: Vec<ArrayRef>,
        alive: Option<BooleanArray>,
    ) -> Result<Output> {
        let mut columns = match self.plan.group_exprs.is_empty() {
            true => Vec::new(),
            false => self.decode_keys(keys)?,
        };
        columns.extend(values);
        if self.plan.upper_segment.is_some() {
            let (batch, _) = apply_upper(&[], self.plan.schema.clone(), columns)?;
            return Ok(Output::Unfinished(batch));
        }
        let (batch, mut keep) = apply_upper(&self.plan.upper, self.plan.schema.clone(), columns)?;
        if let Some(alive) = alive {
            keep = Some(match keep {
                Some(k) => datafusion::arrow::compute::and(&k, &alive)?,
                None => alive,
            });
        }
        self.view.output(&batch, keep.as_ref(), keys)
    }
}

/// The aggregate columns of `n` groups: `value(i, a)` is aggregate `a` of group `i`, cast to
/// the aggregate's output type.
fn evaluate(
    plan: &AggregatePlan,
    n: usize,
    mut value: impl FnMut(usize, usize) -> datafusion::error::Result<ScalarValue>,
) -> Result<Vec<ArrayRef>> {
    let mut columns = Vec::with_capacity(plan.aggr_exprs.len());
    for a in 0..plan.aggr_exprs.len() {
        let values = (0..n)
            .map(|i| value(i, a))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let array = ScalarValue::iter_to_array(values)?;
        let field = plan.schema.field(plan.group_exprs.len() + a);
        columns.push(match array.data_type() != field.data_type() {
            true => cast(&array, field.data_type())?,
            false => array,
        });
    }
    Ok(columns)
}

impl AggregatePlan {
    /// Fresh accumulators for one group: DataFusion's, or for the aggregate of an updating
    /// view ones that retract, followed by the group's row count.
    pub fn accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        if !self.retract {
            return Ok(self
                .aggr_exprs
                .iter()
                .map(|a| a.create_accumulator())
                .collect::<datafusion::error::Result<Vec<_>>>()?);
        }
        let mut accs = self
            .aggr_exprs
            .iter()
            .map(|a| retract::accumulator(a))
            .collect::<Result<Vec<_>>>()?;
        accs.push(Box::new(retract::RowCount::default()));
        Ok(accs)
    }

    /// How many state fields each accumulator has, and all their types in order.
    pub fn state_layout(&self) -> Result<(Vec<usize>, Vec<DataType>)> {
        let mut widths = Vec::new();
        let mut types = Vec::new();
        if self.retract {
            for mut acc in self.accumulators()? {
                let t = retract::state_types(acc.as_mut())?;
                widths.push(t.len());
                types.extend(t);
            }
            return Ok((widths, types));
        }
        for a in &self.aggr_exprs {
            let fields = a.state_fields()?;
            widths.push(fields.len());
            types.extend(fields.iter().map(|f| f.data_type().clone()));
        }
        Ok((widths, types))
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

/// Feeds rows `indices` (all rows when `None`) of the inputs to one group's accumulators
/// (with `retract`, takes them back).
pub(super) fn update_accumulators(
    accs: &mut [Box<dyn Accumulator>],
    args: &[Vec<ArrayRef>],
    masks: &[Option<BooleanArray>],
    indices: Option<&UInt32Array>,
    retract: bool,
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
        match retract {
            true => acc.retract_batch(&values)?,
            false => acc.update_batch(&values)?,
        }
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
    if types.is_empty() {
        // GROUP BY without aggregates (DISTINCT): a group has no state beyond its key.
        return Ok(vec![Vec::new(); count]);
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
    if values.is_empty() || widths.iter().all(|w| *w == 0) {
        return (0..values.len()).map(|_| plan.accumulators()).collect();
    }
    let parser = converter.parser();
    let columns = converter.convert_rows(values.iter().map(|v| parser.parse(v)))?;
    (0..values.len())
        .map(|i| {
            let mut accs = plan.accumulators()?;
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
pub(crate) fn null_as_false(mask: &BooleanArray) -> BooleanArray {
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

mod panes;
mod retract;
#[cfg(test)]
mod tests;

use panes::Panes;

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aggregator({} groups in memory)", self.live.len())
    }
}
