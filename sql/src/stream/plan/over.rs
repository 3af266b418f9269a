//! Finding OVER window functions over events in a physical plan and cutting the plan there:
//! the window operator becomes an [`Over`](crate::stream::operators::over::Over) stage and
//! the plan above it a [`Segment`] over a feed of its rows.

use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{WindowFrameBound, WindowFrameUnits};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::window::{StandardWindowExpr, WindowExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec, WindowUDFExpr};

use super::{Feed, Segment, cut_first, feed_exec, interval_us, not_supported};
use crate::catalog::TableDef;
use crate::error::{Error, Result, sqlstate};
use crate::stream::operators::over::OverPlan;

/// An OVER stage with the plan above it.
pub type OverStage = (Arc<OverPlan>, Segment);

/// The plan with its (one) window operator cut out: the plan below it, and the OVER stage
/// with the plan above it.
pub(super) fn cut_over(
    root: &Arc<dyn ExecutionPlan>,
    source: &TableDef,
    ctx: &Arc<TaskContext>,
) -> Result<(Arc<dyn ExecutionPlan>, Option<OverStage>)> {
    let found = cut_first(root, |node| {
        match matches!(node.name(), "BoundedWindowAggExec" | "WindowAggExec") {
            true => over_plan(node, source, ctx).map(Some),
            false => Ok(None),
        }
    })?;
    match found {
        None => Ok((root.clone(), None)),
        Some((above, feed, (over, below))) => Ok((
            below,
            Some((
                Arc::new(over),
                Segment {
                    plan: above,
                    feed,
                    task_ctx: ctx.clone(),
                },
            )),
        )),
    }
}

fn window_exprs(node: &Arc<dyn ExecutionPlan>) -> Vec<Arc<dyn WindowExpr>> {
    if let Some(w) = node.downcast_ref::<BoundedWindowAggExec>() {
        return w.window_expr().to_vec();
    }
    node.downcast_ref::<WindowAggExec>()
        .map(|w| w.window_expr().to_vec())
        .unwrap_or_default()
}

/// The offset of `lag(x, n)` (n rows back); other ranking and offset functions are refused.
fn lag_offset(e: &StandardWindowExpr) -> Result<usize> {
    let refused = || {
        not_supported(
            "ranking and offset functions other than lag (row_number, rank, lead, ...) OVER \
             events; aggregates over a bounded frame and lag(x, n) are supported",
        )
    };
    let udf = e
        .get_standard_func_expr()
        .as_any()
        .downcast_ref::<WindowUDFExpr>()
        .filter(|u| u.fun().name() == "lag")
        .ok_or_else(refused)?;
    let offset = match udf.args().get(1) {
        None => 1,
        Some(arg) => match arg.downcast_ref::<Literal>().map(|l| l.value()) {
            Some(v) => v
                .cast_to(&datafusion::arrow::datatypes::DataType::Int64)
                .ok()
                .and_then(|v| match v {
                    ScalarValue::Int64(Some(n)) => Some(n),
                    _ => None,
                })
                .ok_or_else(refused)?,
            None => return Err(refused()),
        },
    };
    usize::try_from(offset).map_err(|_| {
        unsupported("lag with a negative offset reads later rows (lead), which are not known yet")
    })
}

fn unsupported(message: impl Into<String>) -> Error {
    Error::user(sqlstate::FEATURE_NOT_SUPPORTED, message)
}

/// The OVER stage of a window operator, and the plan below it (its input, unsorted).
fn over_plan(
    node: &Arc<dyn ExecutionPlan>,
    source: &TableDef,
    ctx: &Arc<TaskContext>,
) -> Result<(OverPlan, Arc<dyn ExecutionPlan>)> {
    let Some(watermark) = source.source().and_then(|s| s.watermark.clone()) else {
        return Err(unsupported(format!(
            "OVER in a continuous query needs a WATERMARK on source \"{}\": rows are \
             computed once no earlier event can come",
            source.name
        )));
    };
    let exprs = window_exprs(node);
    let first = exprs
        .first()
        .ok_or_else(|| not_supported("an empty window operator"))?;
    let order = first.order_by();
    let time = match order {
        [one] if !one.options.descending => one.expr.downcast_ref::<Column>().cloned(),
        _ => None,
    };
    let Some(time) = time.filter(|c| c.name() == watermark.column) else {
        return Err(unsupported(format!(
            "OVER in a continuous query must ORDER BY the event time \"{}\" (the WATERMARK \
             column of source \"{}\"), ascending, and nothing else",
            watermark.column, source.name
        )));
    };
    let partition_by = first.partition_by().to_vec();
    let (mut keep_rows, mut keep_us) = (0usize, 0i64);
    for e in &exprs {
        let same_partitions = e.partition_by().len() == partition_by.len()
            && e.partition_by()
                .iter()
                .zip(&partition_by)
                .all(|(a, b)| a.to_string() == b.to_string());
        if !same_partitions || e.order_by().len() != 1 {
            return Err(unsupported(
                "OVER functions of one continuous query must share PARTITION BY and ORDER BY",
            ));
        }
        if let Some(standard) = e.as_any().downcast_ref::<StandardWindowExpr>() {
            // lag(x, n) reads the n rows before: history of n rows; its frame does not matter.
            keep_rows = keep_rows.max(lag_offset(standard)?);
            continue;
        }
        let frame = e.get_window_frame();
        if !matches!(frame.end_bound, WindowFrameBound::CurrentRow) {
            return Err(unsupported(
                "an OVER frame in a continuous query must end at CURRENT ROW (later events \
                 are not known yet)",
            ));
        }
        let bounded = || {
            unsupported(
                "an OVER frame in a continuous query must start a bounded distance back: \
                 ROWS n PRECEDING or RANGE INTERVAL '...' PRECEDING (a frame from UNBOUNDED \
                 PRECEDING would keep every event)",
            )
        };
        let WindowFrameBound::Preceding(start) = &frame.start_bound else {
            return Err(bounded());
        };
        match frame.units {
            WindowFrameUnits::Rows => {
                let n = match start {
                    ScalarValue::UInt64(Some(n)) => *n as usize,
                    _ => return Err(bounded()),
                };
                keep_rows = keep_rows.max(n);
            }
            WindowFrameUnits::Range => {
                let us = interval_us(start).ok_or_else(bounded)?;
                keep_us = keep_us.max(us);
            }
            WindowFrameUnits::Groups => {
                return Err(not_supported("GROUPS frames"));
            }
        }
    }
    let input = node
        .children()
        .first()
        .map(|c| (*c).clone())
        .ok_or_else(|| Error::internal("window operator without input"))?;
    // The window operator sorts its input by partition and time: that sort runs over the
    // rows the OVER stage hands it, and the plan below it becomes the stage's input.
    let Some(sort) = input.downcast_ref::<SortExec>() else {
        return Err(not_supported(format!(
            "{} over unsorted input",
            node.name()
        )));
    };
    let below = sort.input().clone();
    let feed = Feed::default();
    let leaf = feed_exec(below.schema(), feed.clone())?;
    let sort = replace_children_if_necessary(input.clone(), vec![leaf])?;
    let window = replace_children_if_necessary(node.clone(), vec![sort])?;
    let plan = OverPlan {
        window,
        feed,
        task_ctx: ctx.clone(),
        input: below.schema(),
        partition_by,
        time_column: time.index(),
        keep_rows,
        keep_us,
    };
    Ok((plan, below))
}
