//! SESSION windows: per key, events closer than the gap share a session; a session closes
//! (and its row is written) when the watermark passes its end.
//!
//! Each event arrives as the interval `[ts, ts + gap]` (`window_start`, `window_end` from the
//! rewritten `SESSION(...)`). Per key (the other GROUP BY columns) the operator keeps disjoint
//! sessions, each with its own accumulators; an event interval that touches sessions merges
//! them (their accumulator states are merged, as DataFusion merges partial aggregates). Rows
//! of a batch are grouped by key and sorted by start, so each run of touching events costs one
//! `update_batch`. State is checkpointed per session, keyed by (key, start).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray, UInt32Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::Accumulator;
use datafusion::scalar::ScalarValue;

use super::aggregate::{
    apply_upper, decode_states, encode_states, eval_groups, eval_inputs, update_accumulators,
};
use super::checkpoint::Barrier;
use super::operators::{time_from_key, time_key};
use super::plan::AggregatePlan;
use super::state::StateTable;
use super::view::{Output, ViewWriter};
use crate::error::{Error, Result};
use crate::keys::key_group;

struct Session {
    start: i64,
    end: i64,
    accs: Vec<Box<dyn Accumulator>>,
}

pub struct SessionAggregator {
    plan: AggregatePlan,
    state: StateTable,
    start_col: usize,
    end_col: usize,
    /// Group columns other than the window bounds: the session key.
    key_cols: Vec<usize>,
    keys: RowConverter,
    states: RowConverter,
    state_types: Vec<DataType>,
    state_widths: Vec<usize>,
    sessions: HashMap<Vec<u8>, Vec<Session>>,
    /// (end, key, start) of every open session, to close them in watermark order.
    by_end: BTreeSet<(i64, Vec<u8>, i64)>,
    unsaved: HashSet<(Vec<u8>, i64)>,
    removed: Vec<(Vec<u8>, i64)>,
    watermark: Option<i64>,
    view: ViewWriter,
}

fn micros(array: &ArrayRef) -> Result<Vec<i64>> {
    let a = cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    let a = a.as_primitive::<TimestampMicrosecondType>();
    if a.null_count() > 0 {
        return Err(Error::user(
            crate::error::sqlstate::NOT_NULL_VIOLATION,
            "a SESSION window's time column is NULL",
        ));
    }
    Ok(a.values().to_vec())
}

/// The state key of a session: key, start (order-preserving); its key group is the key's.
fn state_key(key: &[u8], start: i64) -> Vec<u8> {
    let mut k = key.to_vec();
    k.extend_from_slice(&time_key(start));
    k
}

impl SessionAggregator {
    pub fn restore(
        plan: AggregatePlan,
        state: StateTable,
        watermark: Option<i64>,
        view: ViewWriter,
    ) -> Result<Self> {
        let (start_col, end_col) = plan.session.expect("a session plan");
        let key_cols: Vec<usize> = (0..plan.group_exprs.len())
            .filter(|c| *c != start_col && *c != end_col)
            .collect();
        let fields = key_cols
            .iter()
            .map(|&c| SortField::new(plan.schema.field(c).data_type().clone()))
            .collect();
        let mut state_types = Vec::new();
        let mut state_widths = Vec::new();
        for a in &plan.aggr_exprs {
            let f = a.state_fields()?;
            state_widths.push(f.len());
            state_types.extend(f.iter().map(|f| f.data_type().clone()));
        }
        let states = RowConverter::new(
            state_types
                .iter()
                .map(|t| SortField::new(t.clone()))
                .collect(),
        )?;
        let mut this = Self {
            keys: RowConverter::new(fields)?,
            states,
            state_types,
            state_widths,
            plan,
            state,
            start_col,
            end_col,
            key_cols,
            sessions: HashMap::new(),
            by_end: BTreeSet::new(),
            unsaved: HashSet::new(),
            removed: Vec::new(),
            watermark,
            view,
        };
        this.load()?;
        Ok(this)
    }

    /// Loads every open session (sessions close within a gap of their last event, so open
    /// ones are few).
    fn load(&mut self) -> Result<()> {
        let mut entries = Vec::new();
        self.state.scan(|_, k, v| {
            entries.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        let values: Vec<&[u8]> = entries.iter().map(|(_, v)| &v[8..]).collect();
        let restored = decode_states(&self.plan, &self.states, &self.state_widths, &values)?;
        for ((k, v), accs) in entries.iter().zip(restored) {
            let key = k[..k.len() - 8].to_vec();
            let start = time_from_key(k[k.len() - 8..].try_into().expect("8"));
            let end = i64::from_le_bytes(v[..8].try_into().expect("8"));
            self.insert(key, Session { start, end, accs });
        }
        Ok(())
    }

    fn insert(&mut self, key: Vec<u8>, session: Session) {
        self.by_end
            .insert((session.end, key.clone(), session.start));
        let list = self.sessions.entry(key).or_default();
        let at = list.partition_point(|s| s.start < session.start);
        list.insert(at, session);
    }

    pub fn on_batch(&mut self, batch: &RecordBatch) -> Result<Output> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(Output::none());
        }
        let group = eval_groups(&self.plan, batch)?;
        let starts = micros(&group[self.start_col])?;
        let ends = micros(&group[self.end_col])?;
        let key_columns: Vec<ArrayRef> = self.key_cols.iter().map(|&c| group[c].clone()).collect();
        let rows = self.keys.convert_columns(&key_columns)?;
        let mut by_key: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
        for i in 0..n {
            let key: &[u8] = if key_columns.is_empty() {
                &[]
            } else {
                rows.row(i).data()
            };
            by_key.entry(key.to_vec()).or_default().push(i as u32);
        }
        let (args, masks) = eval_inputs(&self.plan, batch)?;
        for (key, mut rows) in by_key {
            rows.sort_by_key(|&r| starts[r as usize]);
            let mut run: Vec<u32> = Vec::new();
            let (mut lo, mut hi) = (0, 0);
            for r in rows {
                let (s, e) = (starts[r as usize], ends[r as usize]);
                if !run.is_empty() && s > hi {
                    self.absorb(&key, lo, hi, &std::mem::take(&mut run), &args, &masks)?;
                }
                if run.is_empty() {
                    (lo, hi) = (s, e);
                } else {
                    hi = hi.max(e);
                }
                run.push(r);
            }
            self.absorb(&key, lo, hi, &run, &args, &masks)?;
        }
        Ok(Output::none())
    }

    /// Adds the events `rows` (spanning `[lo, hi]`) to `key`'s sessions, merging the
    /// sessions they touch.
    fn absorb(
        &mut self,
        key: &[u8],
        lo: i64,
        hi: i64,
        rows: &[u32],
        args: &[Vec<ArrayRef>],
        masks: &[Option<datafusion::arrow::array::BooleanArray>],
    ) -> Result<()> {
        let list = self.sessions.entry(key.to_vec()).or_default();
        let touching: Vec<usize> = (0..list.len())
            .filter(|&i| list[i].start <= hi && lo <= list[i].end)
            .collect();
        let mut merged: Vec<Session> = touching.iter().rev().map(|&i| list.remove(i)).collect();
        merged.reverse();
        let (mut start, mut end) = (lo, hi);
        for s in &merged {
            start = start.min(s.start);
            end = end.max(s.end);
            self.by_end.remove(&(s.end, key.to_vec(), s.start));
            self.unsaved.remove(&(key.to_vec(), s.start));
            self.removed.push((key.to_vec(), s.start));
        }
        let mut accs = match merged.first_mut() {
            Some(first) => std::mem::take(&mut first.accs),
            None => self
                .plan
                .aggr_exprs
                .iter()
                .map(|a| a.create_accumulator())
                .collect::<datafusion::error::Result<Vec<_>>>()?,
        };
        for other in merged.iter_mut().skip(1) {
            for (acc, o) in accs.iter_mut().zip(other.accs.iter_mut()) {
                let state = o
                    .state()?
                    .iter()
                    .map(ScalarValue::to_array)
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                acc.merge_batch(&state)?;
            }
        }
        let indices = UInt32Array::from(rows.to_vec());
        update_accumulators(&mut accs, args, masks, Some(&indices), false)?;
        self.unsaved.insert((key.to_vec(), start));
        self.insert(key.to_vec(), Session { start, end, accs });
        Ok(())
    }

    /// Closes and writes the sessions that end before `watermark`. (Strictly before: an
    /// event at the watermark is not late, and may still touch a session ending there.)
    pub fn on_watermark(&mut self, watermark: i64) -> Result<Output> {
        self.watermark = Some(watermark);
        let mut closed = Vec::new();
        while let Some(first) = self.by_end.first() {
            if first.0 >= watermark {
                break;
            }
            let (_, key, start) = self.by_end.pop_first().expect("checked");
            let list = self.sessions.get_mut(&key).expect("indexed session");
            let at = list
                .iter()
                .position(|s| s.start == start)
                .expect("indexed session");
            let session = list.remove(at);
            if list.is_empty() {
                self.sessions.remove(&key);
            }
            self.unsaved.remove(&(key.clone(), start));
            self.removed.push((key.clone(), start));
            closed.push((key, session));
        }
        self.emit(closed)
    }

    fn emit(&mut self, mut closed: Vec<(Vec<u8>, Session)>) -> Result<Output> {
        if closed.is_empty() {
            return Ok(Output::none());
        }
        let key_columns = if self.key_cols.is_empty() {
            Vec::new()
        } else {
            let parser = self.keys.parser();
            self.keys
                .convert_rows(closed.iter().map(|(k, _)| parser.parse(k)))?
        };
        let bound = |values: Vec<i64>, col: usize| -> Result<ArrayRef> {
            let a: ArrayRef = Arc::new(TimestampMicrosecondArray::from(values));
            let want = self.plan.schema.field(col).data_type();
            let a = match want {
                DataType::Timestamp(_, Some(tz)) => cast(
                    &a,
                    &DataType::Timestamp(TimeUnit::Microsecond, Some(tz.clone())),
                )?,
                _ => a,
            };
            Ok(cast(&a, want)?)
        };
        let starts = bound(
            closed.iter().map(|(_, s)| s.start).collect(),
            self.start_col,
        )?;
        let ends = bound(closed.iter().map(|(_, s)| s.end).collect(), self.end_col)?;
        let mut columns = Vec::new();
        let mut next_key = key_columns.into_iter();
        for c in 0..self.plan.group_exprs.len() {
            columns.push(if c == self.start_col {
                starts.clone()
            } else if c == self.end_col {
                ends.clone()
            } else {
                next_key.next().expect("a key column")
            });
        }
        for a in 0..self.plan.aggr_exprs.len() {
            let values = closed
                .iter_mut()
                .map(|(_, s)| s.accs[a].evaluate())
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let array = ScalarValue::iter_to_array(values)?;
            let field = self.plan.schema.field(self.plan.group_exprs.len() + a);
            columns.push(match array.data_type() == field.data_type() {
                true => array,
                false => cast(&array, field.data_type())?,
            });
        }
        let keys: Vec<Vec<u8>> = closed.iter().map(|(k, s)| state_key(k, s.start)).collect();
        let (batch, keep) = apply_upper(&self.plan.upper, self.plan.schema.clone(), columns)?;
        self.view.output(&batch, keep.as_ref(), &keys)
    }

    /// The checkpoint `epoch` is durable (its state writes go to the cache).
    pub fn committed(&mut self, epoch: u64) {
        self.state.committed(epoch);
    }

    pub fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        for (key, start) in self.removed.drain(..) {
            self.state.delete(key_group(&key), &state_key(&key, start));
        }
        let unsaved: Vec<(Vec<u8>, i64)> = self.unsaved.drain().collect();
        let mut order = Vec::new();
        let mut accs = Vec::new();
        for (key, start) in unsaved {
            let Some(list) = self.sessions.get_mut(&key) else {
                continue;
            };
            let Some(s) = list.iter_mut().find(|s| s.start == start) else {
                continue;
            };
            order.push((key.clone(), start, s.end));
            accs.push(std::mem::take(&mut s.accs));
        }
        let values = encode_states(
            &self.states,
            &self.state_types,
            &self.state_widths,
            accs.iter_mut(),
        )?;
        for ((key, start, end), (value, a)) in order.into_iter().zip(values.into_iter().zip(accs)) {
            let list = self.sessions.get_mut(&key).expect("session");
            let s = list.iter_mut().find(|s| s.start == start).expect("session");
            s.accs = a;
            let mut v = end.to_le_bytes().to_vec();
            v.extend_from_slice(&value);
            self.state.put(key_group(&key), &state_key(&key, start), v);
        }
        self.state.flush(barrier);
        Ok(())
    }
}
