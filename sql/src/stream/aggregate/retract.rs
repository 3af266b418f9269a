//! Accumulators that take rows back: an aggregate over an updating view retracts the rows the
//! view deleted.
//!
//! COUNT, SUM, AVG, STDDEV and VARIANCE use DataFusion's retracting accumulators (the ones its
//! sliding window frames use), whose state is complete. MIN and MAX keep every value they
//! were given with its multiplicity, so the extreme is known again after it is retracted
//! (DataFusion's sliding MIN/MAX assume the oldest value leaves first, which a changelog does
//! not promise). Every group also counts its rows: a group whose rows are all retracted is
//! gone from the result, as a batch GROUP BY over the view would have no row for it.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::logical_expr::Accumulator;
use datafusion::physical_plan::udaf::AggregateFunctionExpr;
use datafusion::scalar::ScalarValue;

use crate::error::{Error, Result, sqlstate};

/// The aggregates that can retract, by DataFusion name (MIN and MAX are Eddy's own).
const RETRACTING: &[&str] = &[
    "count",
    "sum",
    "avg",
    "stddev",
    "stddev_pop",
    "var",
    "var_pop",
    "var_samp",
];

/// An accumulator for `aggregate` that can retract rows, or a 0A000 error naming it.
pub fn accumulator(aggregate: &AggregateFunctionExpr) -> Result<Box<dyn Accumulator>> {
    let name = aggregate.fun().name().to_ascii_lowercase();
    let refuse = |what: String| {
        Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "{what} over an updating view is not supported yet (COUNT, SUM, AVG, MIN, MAX, \
                 STDDEV and VARIANCE are)"
            ),
        )
    };
    if aggregate.is_distinct() {
        return Err(refuse(format!("{}(DISTINCT ...)", name.to_uppercase())));
    }
    if name == "min" || name == "max" {
        return Ok(Box::new(Extreme {
            max: name == "max",
            data_type: aggregate.field().data_type().clone(),
            values: BTreeMap::new(),
        }));
    }
    if !RETRACTING.contains(&name.as_str()) {
        return Err(refuse(name.to_uppercase()));
    }
    let acc = aggregate.create_sliding_accumulator()?;
    if !acc.supports_retract_batch() {
        return Err(refuse(name.to_uppercase()));
    }
    Ok(acc)
}

/// Counts a group's rows (any column's length): the group exists while it is above zero.
#[derive(Debug, Default)]
pub struct RowCount(pub i64);

impl Accumulator for RowCount {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        self.0 += values.first().map_or(0, |v| v.len()) as i64;
        Ok(())
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        self.0 -= values.first().map_or(0, |v| v.len()) as i64;
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn evaluate(&mut self) -> datafusion::error::Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(self.0)))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
    }

    fn state(&mut self) -> datafusion::error::Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Int64(Some(self.0))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::error::Result<()> {
        let counts = states[0].as_primitive::<Int64Type>();
        self.0 += counts.iter().flatten().sum::<i64>();
        Ok(())
    }
}

/// A value ordered as SQL orders values of one type.
#[derive(Debug, Clone, PartialEq)]
struct Ordered(ScalarValue);

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0
            .partial_cmp(&other.0)
            .unwrap_or(std::cmp::Ordering::Equal)
    }
}

/// MIN or MAX over a multiset of values.
#[derive(Debug)]
struct Extreme {
    max: bool,
    data_type: DataType,
    /// Value → how many rows hold it.
    values: BTreeMap<Ordered, i64>,
}

impl Extreme {
    fn add(&mut self, values: &ArrayRef, by: i64) -> datafusion::error::Result<()> {
        for i in 0..values.len() {
            if values.is_null(i) {
                continue;
            }
            let v = Ordered(ScalarValue::try_from_array(values, i)?);
            let n = self.values.entry(v.clone()).or_insert(0);
            *n += by;
            if *n <= 0 {
                self.values.remove(&v);
            }
        }
        Ok(())
    }
}

impl Accumulator for Extreme {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        self.add(&values[0], 1)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        self.add(&values[0], -1)
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn evaluate(&mut self) -> datafusion::error::Result<ScalarValue> {
        let extreme = match self.max {
            true => self.values.keys().next_back(),
            false => self.values.keys().next(),
        };
        match extreme {
            Some(v) => Ok(v.0.clone()),
            None => ScalarValue::try_from(&self.data_type),
        }
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.values.keys().map(|k| k.0.size() + 16).sum::<usize>()
    }

    /// The distinct values and their counts, as two lists.
    fn state(&mut self) -> datafusion::error::Result<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> = self.values.keys().map(|k| k.0.clone()).collect();
        let counts: Vec<ScalarValue> = self
            .values
            .values()
            .map(|n| ScalarValue::Int64(Some(*n)))
            .collect();
        Ok(vec![
            ScalarValue::List(ScalarValue::new_list_nullable(&values, &self.data_type)),
            ScalarValue::List(ScalarValue::new_list_nullable(&counts, &DataType::Int64)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::error::Result<()> {
        let values = states[0].as_list::<i32>();
        let counts = states[1].as_list::<i32>();
        for row in 0..values.len() {
            if values.is_null(row) {
                continue;
            }
            let vs = values.value(row);
            let ns = counts.value(row);
            let ns = ns.as_primitive::<Int64Type>();
            for i in 0..vs.len() {
                let v = Ordered(ScalarValue::try_from_array(&vs, i)?);
                *self.values.entry(v).or_insert(0) += ns.value(i);
            }
        }
        Ok(())
    }
}

/// The data types of an accumulator's state, from a fresh one.
pub fn state_types(acc: &mut dyn Accumulator) -> Result<Vec<DataType>> {
    Ok(acc.state()?.iter().map(|v| v.data_type()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use std::sync::Arc;

    #[test]
    fn extremes_come_back_after_retraction_and_restore() {
        let mut max = Extreme {
            max: true,
            data_type: DataType::Int64,
            values: BTreeMap::new(),
        };
        let a = |v: Vec<Option<i64>>| -> ArrayRef { Arc::new(Int64Array::from(v)) };
        max.update_batch(&[a(vec![Some(5), Some(9), None, Some(9), Some(1)])])
            .unwrap();
        assert_eq!(max.evaluate().unwrap(), ScalarValue::Int64(Some(9)));
        max.retract_batch(&[a(vec![Some(9)])]).unwrap();
        assert_eq!(max.evaluate().unwrap(), ScalarValue::Int64(Some(9)));
        max.retract_batch(&[a(vec![Some(9)])]).unwrap();
        assert_eq!(max.evaluate().unwrap(), ScalarValue::Int64(Some(5)));
        // Through its state, as a checkpoint restores it.
        let state: Vec<ArrayRef> = max
            .state()
            .unwrap()
            .iter()
            .map(|s| s.to_array().unwrap())
            .collect();
        let mut back = Extreme {
            max: true,
            data_type: DataType::Int64,
            values: BTreeMap::new(),
        };
        back.merge_batch(&state).unwrap();
        back.retract_batch(&[a(vec![Some(5)])]).unwrap();
        assert_eq!(back.evaluate().unwrap(), ScalarValue::Int64(Some(1)));
        back.retract_batch(&[a(vec![Some(1)])]).unwrap();
        assert_eq!(back.evaluate().unwrap(), ScalarValue::Int64(None));
    }
}
