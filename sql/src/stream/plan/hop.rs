//! HOP windows, and aggregating them in panes.
//!
//! `HOP(src, ts, slide, size)` gives each event one row per window it falls in: the rewrite
//! unnests `eddy_hop_windows(ts, slide, size)`, the starts of those windows (multiples of
//! `slide` in `(ts - size, ts]`). An aggregate over them updates `size / slide` groups per
//! event.
//!
//! When the windows are only grouped by (their `window_start` / `window_end` are bare GROUP
//! BY columns, read nowhere else below the aggregate) and are written when they close, the
//! aggregate can instead keep one group per *pane* (the `slide`-long slice an event falls in)
//! and combine the `size / slide` panes of a window when it closes, as Flink's sliced windows
//! and Arroyo's sliding windows do. [`panes`] checks that a plan allows it;
//! [`to_panes`] swaps the function for `eddy_hop_pane(ts, slide, size)`, which lists only the
//! event's pane start, so every event gives one row and the window columns of a group hold
//! its pane. The aggregate (`aggregate.rs`) knows from [`HopGroups`] to combine them.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, ListArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, TimeUnit};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use super::interval_us;
use crate::error::Result;

/// The starts of the windows an event falls in.
pub const HOP_WINDOWS: &str = "eddy_hop_windows";
/// The start of the pane an event falls in, as a list of one.
pub const HOP_PANE: &str = "eddy_hop_pane";

/// `eddy_hop_windows(ts, slide, size)` or, with `pane`, `eddy_hop_pane(ts, slide, size)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct HopStarts {
    signature: Signature,
    pane: bool,
}

impl ScalarUDFImpl for HopStarts {
    fn name(&self) -> &str {
        match self.pane {
            true => HOP_PANE,
            false => HOP_WINDOWS,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match args.first() {
            Some(t @ DataType::Timestamp(..)) => Ok(DataType::List(Arc::new(
                Field::new_list_field(t.clone(), true),
            ))),
            other => datafusion::common::plan_err!(
                "HOP needs a timestamp column as its time, not {}",
                other.map(|t| t.to_string()).unwrap_or_default()
            ),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let [time, slide, size] = args.args.as_slice() else {
            return datafusion::common::exec_err!("{} takes three arguments", self.name());
        };
        let time = time.to_array(n)?;
        let DataType::Timestamp(unit, _) = time.data_type() else {
            return datafusion::common::exec_err!("HOP needs a timestamp column as its time");
        };
        let (slide, size) = (ticks(slide, *unit)?, ticks(size, *unit)?);
        let times = cast(&time, &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        let mut offsets = Vec::with_capacity(n + 1);
        let mut starts = Vec::with_capacity(match self.pane {
            true => n,
            false => n * (size / slide).max(1) as usize,
        });
        offsets.push(0i32);
        for i in 0..n {
            // An event without a time is in no window.
            if times.is_valid(i) {
                let t = times.value(i);
                let last = bin(t, slide);
                match self.pane {
                    true => starts.push(last),
                    false => {
                        let mut start = bin(t.saturating_sub(size), slide).saturating_add(slide);
                        while start <= last {
                            starts.push(start);
                            start += slide;
                        }
                    }
                }
            }
            offsets.push(i32::try_from(starts.len()).map_err(|_| {
                datafusion::error::DataFusionError::Execution(
                    "too many HOP windows in one batch".into(),
                )
            })?);
        }
        let values = cast(&Int64Array::from(starts), time.data_type())?;
        let list = ListArray::try_new(
            Arc::new(Field::new_list_field(time.data_type().clone(), true)),
            OffsetBuffer::new(offsets.into()),
            values,
            None,
        )?;
        Ok(ColumnarValue::Array(Arc::new(list) as ArrayRef))
    }
}

/// `t` rounded down to a multiple of `step` (as `date_bin(step, t)` from the Unix epoch).
fn bin(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

/// An interval argument in ticks of `unit`.
fn ticks(value: &ColumnarValue, unit: TimeUnit) -> DfResult<i64> {
    let us = match value {
        ColumnarValue::Scalar(s) => interval_us(s),
        ColumnarValue::Array(a) if !a.is_empty() => {
            interval_us(&ScalarValue::try_from_array(a, 0)?)
        }
        ColumnarValue::Array(_) => None,
    }
    .filter(|us| *us > 0);
    let Some(us) = us else {
        return datafusion::common::exec_err!(
            "HOP's slide and size must be positive intervals of days or less"
        );
    };
    Ok(match unit {
        TimeUnit::Second => (us / 1_000_000).max(1),
        TimeUnit::Millisecond => (us / 1000).max(1),
        TimeUnit::Microsecond => us,
        TimeUnit::Nanosecond => us.saturating_mul(1000),
    })
}

/// The window starts function, and the pane start function, to register.
pub fn functions() -> [ScalarUDF; 2] {
    [false, true].map(|pane| {
        ScalarUDF::new_from_impl(HopStarts {
            signature: Signature::any(3, Volatility::Immutable),
            pane,
        })
    })
}

/// A HOP window aggregate that may run in panes: the windows' slide and size (microseconds),
/// and which group columns hold a window's start plus what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopGroups {
    pub slide: i64,
    pub size: i64,
    /// (group column, offset): the column holds the window's start + offset (0 for
    /// `window_start`, the size for `window_end`).
    pub columns: Vec<(usize, i64)>,
    /// The aggregate runs in panes ([`to_panes`] was applied to the plan below it).
    pub panes: bool,
}

impl HopGroups {
    /// The order a pane's key holds the `groups` group columns in: the others, then the
    /// window's (so a key's group, the hash of the others, is the hash of a prefix).
    pub fn key_order(&self, groups: usize) -> Vec<usize> {
        let window = |c: &usize| self.columns.iter().any(|(w, _)| w == c);
        let (mut order, windows): (Vec<usize>, Vec<usize>) = (0..groups).partition(|c| !window(c));
        order.extend(windows);
        order
    }
}

/// What a column below the aggregate is in terms of the HOP windows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Lineage {
    /// Does not depend on the windows.
    Plain,
    /// The list of window starts (before the unnest).
    Starts(i64, i64),
    /// A window's start plus an offset: (slide, size, offset).
    Start(i64, i64, i64),
    /// Anything else computed from the windows.
    Other,
}

/// What each output column of `plan` is, following columns up from the scan through
/// projections, filters and unnests. None if a filter reads the windows (it would filter
/// panes, not windows) or the plan holds any other node.
fn columns(plan: &Arc<dyn ExecutionPlan>) -> Option<Vec<Option<Lineage>>> {
    let leaf = |scan: &StreamingTableExec| {
        Some(((), vec![Some(Lineage::Plain); scan.schema().fields().len()]))
    };
    let expr = |e: &Arc<dyn PhysicalExpr>, below: &[Option<Lineage>]| Some(lineage(e, below));
    let unnest = |list: &Lineage| {
        Some(match *list {
            Lineage::Starts(slide, size) => Lineage::Start(slide, size, 0),
            Lineage::Plain => Lineage::Plain,
            _ => Lineage::Other,
        })
    };
    let filter = |predicate: &Arc<dyn PhysicalExpr>, below: &[Option<Lineage>]| {
        lineage(predicate, below) == Lineage::Plain
    };
    super::lookups::lineage(plan, &leaf, &expr, &unnest, &filter).map(|(_, columns)| columns)
}

/// What `expr` is, given what the columns it reads are.
fn lineage(expr: &Arc<dyn PhysicalExpr>, below: &[Option<Lineage>]) -> Lineage {
    let column = |c: &Column| below.get(c.index()).copied().flatten();
    let interval = |e: &Arc<dyn PhysicalExpr>| interval_us(e.downcast_ref::<Literal>()?.value());
    if let Some(f) = expr.downcast_ref::<ScalarFunctionExpr>()
        && f.name() == HOP_WINDOWS
        && let [time, slide, size] = f.args()
        && lineage(time, below) == Lineage::Plain
        && let (Some(slide), Some(size)) = (interval(slide), interval(size))
    {
        return Lineage::Starts(slide, size);
    }
    if let Some(c) = expr.downcast_ref::<Column>() {
        return column(c).unwrap_or(Lineage::Other);
    }
    if collect_columns(expr)
        .iter()
        .all(|c| column(c) == Some(Lineage::Plain))
    {
        return Lineage::Plain;
    }
    // A window's start plus or minus a constant (`window_end`).
    if let Some(b) = expr.downcast_ref::<BinaryExpr>() {
        use datafusion::logical_expr::Operator;
        let shift = match b.op() {
            Operator::Plus => interval(b.right()),
            Operator::Minus => interval(b.right()).and_then(i64::checked_neg),
            _ => None,
        };
        if let (Lineage::Start(slide, size, offset), Some(shift)) =
            (lineage(b.left(), below), shift)
            && let Some(offset) = offset.checked_add(shift)
        {
            return Lineage::Start(slide, size, offset);
        }
    }
    Lineage::Other
}

/// Whether the aggregate over `input` (grouping by `group_exprs`, aggregating the
/// expressions `args`, with the window end found from group column `window_column` plus
/// `window_add`) may run in panes: its HOP windows are read only as bare group columns
/// holding a window's start or end, and their size is a multiple of their slide.
pub(super) fn panes(
    input: &Arc<dyn ExecutionPlan>,
    group_exprs: &[Arc<dyn PhysicalExpr>],
    args: &[Arc<dyn PhysicalExpr>],
    (window_column, window_add): (usize, i64),
) -> Option<HopGroups> {
    let below = columns(input)?;
    if args.iter().any(|e| lineage(e, &below) != Lineage::Plain) {
        return None;
    }
    let mut hop: Option<(i64, i64)> = None;
    let mut window_columns = Vec::new();
    for (i, e) in group_exprs.iter().enumerate() {
        match lineage(e, &below) {
            Lineage::Plain => {}
            Lineage::Start(slide, size, offset) if e.downcast_ref::<Column>().is_some() => {
                if hop.is_some_and(|h| h != (slide, size)) {
                    return None;
                }
                hop = Some((slide, size));
                window_columns.push((i, offset));
            }
            _ => return None,
        }
    }
    let (slide, size) = hop?;
    let aligned = size % slide == 0
        && window_columns
            .iter()
            .all(|&(_, offset)| offset == 0 || offset == size);
    // The aggregate closes a group's window when the watermark passes column + add: for a
    // pane, the end of the last window it is part of.
    let closes = window_columns
        .iter()
        .any(|&(c, offset)| c == window_column && offset + window_add == size);
    (aligned && closes).then_some(HopGroups {
        slide,
        size,
        columns: window_columns,
        panes: false,
    })
}

/// `plan` with each event's window starts replaced by its pane start.
pub(super) fn to_panes(plan: &Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let pane = Arc::new(functions()[1].clone());
    let swapped = plan.clone().transform_up(|node| {
        let Some(p) = node.downcast_ref::<ProjectionExec>() else {
            return Ok(Transformed::no(node));
        };
        let mut changed = false;
        let mut exprs = Vec::new();
        for e in p.expr() {
            let expr = e.expr.clone().transform_up(|x| {
                let Some(f) = x.downcast_ref::<ScalarFunctionExpr>() else {
                    return Ok(Transformed::no(x));
                };
                if f.name() != HOP_WINDOWS {
                    return Ok(Transformed::no(x));
                }
                let field = Arc::new(Field::new(HOP_PANE, f.return_type().clone(), true));
                Ok(Transformed::yes(Arc::new(ScalarFunctionExpr::new(
                    HOP_PANE,
                    pane.clone(),
                    f.args().to_vec(),
                    field,
                    Arc::new(f.config_options().clone()),
                ))
                    as Arc<dyn PhysicalExpr>))
            })?;
            changed |= expr.transformed;
            exprs.push(ProjectionExpr {
                expr: expr.data,
                alias: e.alias.clone(),
            });
        }
        if !changed {
            return Ok(Transformed::no(node));
        }
        let input = p.input().clone();
        Ok(Transformed::yes(
            Arc::new(ProjectionExec::try_new(exprs, input)?) as Arc<dyn ExecutionPlan>,
        ))
    })?;
    if !swapped.transformed {
        return Err(crate::error::Error::internal(
            "a HOP aggregate in panes without HOP windows below it",
        ));
    }
    Ok(swapped.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(pane: bool, times: &[i64], slide: i64, size: i64) -> Vec<Vec<i64>> {
        let f = &functions()[pane as usize];
        let time: ArrayRef = Arc::new(datafusion::arrow::array::TimestampMicrosecondArray::from(
            times.to_vec(),
        ));
        let interval =
            |us: i64| ColumnarValue::Scalar(ScalarValue::new_interval_mdn(0, 0, us * 1000));
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Array(time.clone()),
                interval(slide),
                interval(size),
            ],
            arg_fields: vec![
                Arc::new(Field::new("t", time.data_type().clone(), true)),
                Arc::new(Field::new(
                    "s",
                    DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano),
                    false,
                )),
                Arc::new(Field::new(
                    "z",
                    DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano),
                    false,
                )),
            ],
            number_rows: times.len(),
            return_field: Arc::new(Field::new(
                "r",
                f.return_type(&[time.data_type().clone()]).unwrap(),
                true,
            )),
            config_options: Arc::default(),
        };
        let ColumnarValue::Array(out) = f.invoke_with_args(args).unwrap() else {
            panic!("an array")
        };
        let list = out.as_list::<i32>();
        (0..list.len())
            .map(|i| {
                let v = cast(&list.value(i), &DataType::Int64).unwrap();
                v.as_primitive::<Int64Type>().values().to_vec()
            })
            .collect()
    }

    #[test]
    fn an_event_is_in_every_window_that_starts_within_a_size_before_it() {
        // Windows of 10 sliding by 2: [t-8..t] rounded to multiples of 2.
        assert_eq!(starts(false, &[7], 2, 10), vec![vec![-2, 0, 2, 4, 6]]);
        assert_eq!(starts(false, &[8], 2, 10), vec![vec![0, 2, 4, 6, 8]]);
        // A size that is not a multiple of the slide: windows still start at multiples of
        // the slide, and each holds the event ([4, 9) and [6, 11) hold 7).
        assert_eq!(starts(false, &[7], 2, 5), vec![vec![4, 6]]);
        assert_eq!(starts(false, &[8], 2, 5), vec![vec![4, 6, 8]]);
        // Before the epoch.
        assert_eq!(starts(false, &[-3], 2, 4), vec![vec![-6, -4]]);
        // A gap between windows shorter than their slide holds no window.
        assert_eq!(starts(false, &[3, 4], 4, 2), vec![vec![], vec![4]]);
        // Panes: the start of the slide the event falls in.
        assert_eq!(
            starts(true, &[7, 8, -3], 2, 10),
            vec![vec![6], vec![8], vec![-4]]
        );
    }
}
