//! HOP windows combined from panes (planned in `plan/hop.rs`).
//!
//! Each event reaches the aggregate once, with the window columns holding its pane: the
//! `slide`-long slice it falls in. A group is a pane of a key, indexed in `windows` by the end
//! of the last window the pane is part of (pane start + size), which is also when it is
//! deleted. When the watermark passes a window's end, the `size / slide` panes of each key
//! in that window are merged (DataFusion's accumulator states, as a parallel aggregate's
//! final step merges partial ones) into the window's row.
//!
//! Keys put the window columns last, so a pane's key group is the hash of its other columns:
//! every pane of a key is in the same partition of a parallel aggregate (the exchange routes
//! by those columns too), and a restore with another number of partitions finds them
//! together.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
    TimestampSecondArray, new_null_array,
};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::Accumulator;
use datafusion::scalar::ScalarValue;

use super::{Aggregator, evaluate};
use crate::error::{Error, Result};
use crate::keys::key_group;
use crate::stream::plan::HopGroups;
use crate::stream::view::Output;

/// One group's accumulators.
type Accumulators = Vec<Box<dyn Accumulator>>;

pub(super) struct Panes {
    slide: i64,
    size: i64,
    /// Group columns holding a window's start plus an offset (microseconds).
    columns: Vec<(usize, i64)>,
    /// The group columns in the order keys encode them: the others, then the window's.
    pub(super) order: Vec<usize>,
    /// Bytes the window columns take at the end of a key.
    suffix: usize,
}

impl Panes {
    pub(super) fn new(hop: &HopGroups, types: &[DataType]) -> Result<Self> {
        let order = hop.key_order(types.len());
        let window = &order[types.len() - hop.columns.len()..];
        // Timestamps encode at a fixed width, NULL or not.
        let fields = window
            .iter()
            .map(|&c| SortField::new(types[c].clone()))
            .collect();
        let converter = RowConverter::new(fields)?;
        let nulls: Vec<ArrayRef> = window
            .iter()
            .map(|&c| new_null_array(&types[c], 1))
            .collect();
        let values = window
            .iter()
            .map(|&c| timestamps(0, 1, &types[c]))
            .collect::<Result<Vec<_>>>()?;
        let widths: Vec<usize> = [nulls, values]
            .iter()
            .map(|columns| Ok(converter.convert_columns(columns)?.row(0).as_ref().len()))
            .collect::<Result<_>>()?;
        if widths[0] != widths[1] {
            return Err(Error::internal("window columns of varying width in a key"));
        }
        Ok(Self {
            slide: hop.slide,
            size: hop.size,
            columns: hop.columns.clone(),
            order,
            suffix: widths[0],
        })
    }

    /// The key group of a pane: the hash of its columns other than the window's.
    pub(super) fn group_of(&self, key: &[u8]) -> u16 {
        key_group(&key[..key.len().saturating_sub(self.suffix)])
    }

    /// Decoded key columns (in key order) back in GROUP BY order.
    pub(super) fn unordered(&self, columns: Vec<ArrayRef>) -> Vec<ArrayRef> {
        let mut out: Vec<Option<ArrayRef>> = vec![None; columns.len()];
        for (column, &c) in columns.into_iter().zip(&self.order) {
            out[c] = Some(column);
        }
        out.into_iter()
            .map(|c| c.expect("every column placed"))
            .collect()
    }

    /// The ends of the windows closing when the watermark moves from `after` to `up_to` that
    /// hold one of the panes whose last windows end at `lasts` (ascending).
    fn closing(&self, lasts: impl Iterator<Item = i64>, after: i64, up_to: i64) -> Vec<i64> {
        let mut ends = BTreeSet::new();
        for last in lasts {
            let first = last - self.size + self.slide;
            if first > up_to {
                break;
            }
            let mut end = first;
            while end <= last.min(up_to) {
                if end > after {
                    ends.insert(end);
                }
                end += self.slide;
            }
        }
        ends.into_iter().collect()
    }
}

/// `n` copies of a time (microseconds) as a timestamp column of type `ty`.
fn timestamps(us: i64, n: usize, ty: &DataType) -> Result<ArrayRef> {
    let DataType::Timestamp(unit, tz) = ty else {
        return Err(Error::internal(format!("a window column of type {ty}")));
    };
    let tz = tz.clone();
    Ok(match unit {
        TimeUnit::Second => Arc::new(
            TimestampSecondArray::from_value(us.div_euclid(1_000_000), n).with_timezone_opt(tz),
        ),
        TimeUnit::Millisecond => Arc::new(
            TimestampMillisecondArray::from_value(us.div_euclid(1000), n).with_timezone_opt(tz),
        ),
        TimeUnit::Microsecond => {
            Arc::new(TimestampMicrosecondArray::from_value(us, n).with_timezone_opt(tz))
        }
        TimeUnit::Nanosecond => Arc::new(
            TimestampNanosecondArray::from_value(us.saturating_mul(1000), n).with_timezone_opt(tz),
        ),
    })
}

impl Aggregator {
    /// Writes the windows that end after `previous` and at or before `watermark` (window by
    /// window, keys in order), and deletes the panes whose last window is among them.
    pub(super) fn close_panes(&mut self, previous: Option<i64>, watermark: i64) -> Result<Output> {
        let panes = self.panes.as_ref().expect("in panes");
        let (slide, size) = (panes.slide, panes.size);
        let ends = panes.closing(
            self.windows.keys().copied(),
            previous.unwrap_or(i64::MIN),
            watermark,
        );
        let mut keys = Vec::new();
        let mut accs = Vec::new();
        for end in ends {
            // The panes of this window: those whose last window ends within a size after it.
            let members: Vec<Vec<u8>> = self
                .windows
                .range(end..=end + size - slide)
                .flat_map(|(_, keys)| keys.iter().cloned())
                .collect();
            if members.is_empty() {
                continue;
            }
            let refs: Vec<&[u8]> = members.iter().map(|k| k.as_slice()).collect();
            self.make_live(&refs)?;
            let (k, a) = self.combine(&members, end - size)?;
            keys.extend(k);
            accs.extend(a);
        }
        let open = self.windows.split_off(&(watermark + 1));
        let done = std::mem::replace(&mut self.windows, open);
        for key in done.into_values().flatten() {
            if let Some(group) = self.live.remove(&key) {
                self.live_bytes -= group.size;
            }
            self.state.delete(self.group_of(&key), &key);
        }
        if keys.is_empty() {
            return Ok(Output::none());
        }
        let values = evaluate(&self.plan, keys.len(), |i, a| accs[i][a].evaluate())?;
        self.write(&keys, values, None)
    }

    /// The groups of the window starting at `start` (microseconds) made from the live panes
    /// `members`: their keys, in order, and accumulators merged from the panes' states.
    fn combine(
        &mut self,
        members: &[Vec<u8>],
        start: i64,
    ) -> Result<(Vec<Vec<u8>>, Vec<Accumulators>)> {
        let mut columns = self.decode_keys(members)?;
        let panes = self.panes.as_ref().expect("in panes");
        for &(c, offset) in &panes.columns {
            let ty = columns[c].data_type().clone();
            columns[c] = timestamps(start + offset, members.len(), &ty)?;
        }
        let rows = self.encode_keys(&columns)?;
        let mut windows: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
        for i in 0..members.len() {
            windows.entry(rows.row(i).data()).or_default().push(i);
        }
        let mut keys = Vec::with_capacity(windows.len());
        let mut merged = Vec::with_capacity(windows.len());
        for (key, panes) in windows {
            let mut accs = self.plan.accumulators()?;
            for (a, acc) in accs.iter_mut().enumerate() {
                let mut states: Vec<Vec<ScalarValue>> =
                    vec![Vec::with_capacity(panes.len()); self.state_widths[a]];
                for &p in &panes {
                    let group = self.live.get_mut(&members[p]).expect("made live");
                    for (field, value) in states.iter_mut().zip(group.accs[a].state()?) {
                        field.push(value);
                    }
                }
                let states = states
                    .into_iter()
                    .map(ScalarValue::iter_to_array)
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                acc.merge_batch(&states)?;
            }
            keys.push(key.to_vec());
            merged.push(accs);
        }
        Ok((keys, merged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panes(slide: i64, size: i64) -> Panes {
        Panes {
            slide,
            size,
            columns: Vec::new(),
            order: Vec::new(),
            suffix: 0,
        }
    }

    #[test]
    fn windows_close_once_each_and_only_those_holding_a_pane() {
        // Windows of 10 sliding by 2; a pane starting at 6 is in the windows ending 8..=16
        // (its last window ends at 16).
        let p = panes(2, 10);
        assert_eq!(
            p.closing([16].into_iter(), i64::MIN, 100),
            vec![8, 10, 12, 14, 16]
        );
        assert_eq!(p.closing([16].into_iter(), 10, 13), vec![12]);
        assert_eq!(p.closing([16].into_iter(), 16, 100), Vec::<i64>::new());
        // Two panes far apart: no window between them.
        assert_eq!(
            p.closing([16, 116].into_iter(), i64::MIN, 110),
            vec![8, 10, 12, 14, 16, 108, 110]
        );
    }
}
