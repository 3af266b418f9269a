//! Finding top-N in a physical plan and cutting the plan there: a ranking window operator
//! under a filter that bounds its rank (`WHERE rn <= n`), or a sort with a fetch (`ORDER BY
//! ... LIMIT n [OFFSET m]`), becomes a [`TopN`](crate::stream::operators::top_n::TopN) stage
//! and the plan above it a [`Segment`] over a feed of its rows.

use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Operator as BinaryOp;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_expr::window::{StandardWindowExpr, WindowExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::limit::GlobalLimitExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec, WindowUDFExpr};

use super::{Segment, cut_first, not_supported};
use crate::error::{Error, Result, sqlstate};
use crate::stream::operators::top_n::{Rank, TopPlan};

/// A top-N stage with the plan above it.
pub type TopStage = (Arc<TopPlan>, Segment);

/// The plan with its (topmost) top-N cut out: the plan below it, and the stage with the plan
/// above it. `updates`: the rows below are a changelog.
pub(super) fn cut_top(
    root: &Arc<dyn ExecutionPlan>,
    ctx: &Arc<TaskContext>,
    updates: bool,
) -> Result<(Arc<dyn ExecutionPlan>, Option<TopStage>)> {
    let mut bounds = Vec::new();
    find_bounds(root, &mut bounds)?;
    let found = cut_first(root, |node| top_plan(node, &bounds, updates))?;
    match found {
        None => Ok((root.clone(), None)),
        Some((above, feed, (top, below))) => Ok((
            below,
            Some((
                Arc::new(top),
                Segment {
                    plan: above,
                    feed,
                    task_ctx: ctx.clone(),
                },
            )),
        )),
    }
}

fn window_exprs(node: &Arc<dyn ExecutionPlan>) -> Option<Vec<Arc<dyn WindowExpr>>> {
    if let Some(w) = node.downcast_ref::<BoundedWindowAggExec>() {
        return Some(w.window_expr().to_vec());
    }
    node.downcast_ref::<WindowAggExec>()
        .map(|w| w.window_expr().to_vec())
}

/// The ranking function of each window expression; None if one is not a ranking function.
fn ranks(exprs: &[Arc<dyn WindowExpr>]) -> Option<Vec<Rank>> {
    exprs
        .iter()
        .map(|e| {
            let standard = e.as_any().downcast_ref::<StandardWindowExpr>()?;
            let udf = standard
                .get_standard_func_expr()
                .as_any()
                .downcast_ref::<WindowUDFExpr>()?;
            Rank::from_name(udf.fun().name())
        })
        .collect()
}

/// Window operators of ranking functions under a filter that bounds one of them: the
/// operator, the bounded function's index and the largest rank it lets through.
fn find_bounds(
    node: &Arc<dyn ExecutionPlan>,
    found: &mut Vec<(Arc<dyn ExecutionPlan>, usize, u64)>,
) -> Result<()> {
    if let Some(filter) = node.downcast_ref::<FilterExec>()
        && let window = filter.input()
        && let Some(exprs) = window_exprs(window)
        && ranks(&exprs).is_some()
    {
        let first = window.schema().fields().len() - exprs.len();
        let mut best: Option<(usize, u64)> = None;
        for conjunct in conjuncts(filter.predicate()) {
            if let Some((column, bound)) = rank_bound(&conjunct)
                && column >= first
                && best.is_none_or(|(_, b)| bound < b)
            {
                best = Some((column - first, bound));
            }
        }
        if let Some((i, bound)) = best {
            found.push((window.clone(), i, bound));
        }
    }
    for child in node.children() {
        find_bounds(child, found)?;
    }
    Ok(())
}

fn conjuncts(
    e: &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
) -> Vec<Arc<dyn datafusion::physical_plan::PhysicalExpr>> {
    match e.downcast_ref::<BinaryExpr>() {
        Some(b) if *b.op() == BinaryOp::And => {
            let mut all = conjuncts(b.left());
            all.extend(conjuncts(b.right()));
            all
        }
        _ => vec![e.clone()],
    }
}

/// `column <= n` (or `<`, `=`, and the mirrored forms): the column and the largest value
/// it lets through.
fn rank_bound(e: &Arc<dyn datafusion::physical_plan::PhysicalExpr>) -> Option<(usize, u64)> {
    let b = e.downcast_ref::<BinaryExpr>()?;
    let value = |e: &Arc<dyn datafusion::physical_plan::PhysicalExpr>| {
        let v = e
            .downcast_ref::<Literal>()?
            .value()
            .cast_to(&datafusion::arrow::datatypes::DataType::Int64)
            .ok()?;
        match v {
            ScalarValue::Int64(Some(n)) => Some(n),
            _ => None,
        }
    };
    let column = |e: &Arc<dyn datafusion::physical_plan::PhysicalExpr>| {
        e.downcast_ref::<Column>().map(|c| c.index())
    };
    let (c, op, n) = match (column(b.left()), value(b.right())) {
        (Some(c), Some(n)) => (c, *b.op(), n),
        _ => {
            let c = column(b.right())?;
            let n = value(b.left())?;
            let mirrored = match b.op() {
                BinaryOp::GtEq => BinaryOp::LtEq,
                BinaryOp::Gt => BinaryOp::Lt,
                BinaryOp::Eq => BinaryOp::Eq,
                _ => return None,
            };
            (c, mirrored, n)
        }
    };
    let bound = match op {
        BinaryOp::LtEq | BinaryOp::Eq => n,
        BinaryOp::Lt => n - 1,
        _ => return None,
    };
    Some((c, bound.max(0) as u64))
}

/// The top-N of `node`, and the plan below it (its input, unsorted).
fn top_plan(
    node: &Arc<dyn ExecutionPlan>,
    bounds: &[(Arc<dyn ExecutionPlan>, usize, u64)],
    updates: bool,
) -> Result<Option<(TopPlan, Arc<dyn ExecutionPlan>)>> {
    if let Some(limit) = node.downcast_ref::<GlobalLimitExec>() {
        let Some(sort) = limit.input().downcast_ref::<SortExec>() else {
            return Err(no_order());
        };
        let skip = limit.skip() as u64;
        let fetch = limit
            .fetch()
            .or(sort.fetch())
            .map(|f| f as u64 + skip)
            .ok_or_else(|| not_supported("OFFSET without LIMIT"))?;
        return Ok(Some(sorted_top(sort, fetch, skip, updates)));
    }
    if let Some(sort) = node.downcast_ref::<SortExec>() {
        // A sort without a fetch is a window operator's input, or refused with the other
        // stateful operators (`check_stateless`).
        return Ok(sort
            .fetch()
            .map(|fetch| sorted_top(sort, fetch as u64, 0, updates)));
    }
    let Some(exprs) = window_exprs(node) else {
        return Ok(None);
    };
    let Some(ranks) = ranks(&exprs) else {
        return Ok(None);
    };
    let Some((_, by, limit)) = bounds.iter().find(|(w, _, _)| Arc::ptr_eq(w, node)) else {
        return Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "row_number(), rank() and dense_rank() in a continuous query need a bound: \
             filter their result in the query around them (WHERE rn <= n) to keep the top n",
        ));
    };
    let first = &exprs[0];
    for e in &exprs {
        let same = |a: &[Arc<dyn datafusion::physical_plan::PhysicalExpr>],
                    b: &[Arc<dyn datafusion::physical_plan::PhysicalExpr>]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_string() == y.to_string())
        };
        let same_order = e.order_by().len() == first.order_by().len()
            && e.order_by()
                .iter()
                .zip(first.order_by())
                .all(|(x, y)| x.to_string() == y.to_string());
        if !same(e.partition_by(), first.partition_by()) || !same_order {
            return Err(not_supported(
                "ranking functions with different PARTITION BY or ORDER BY in one top-N",
            ));
        }
    }
    if first.order_by().is_empty() {
        return Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "a top-N needs ORDER BY in its OVER clause (which rows are first)",
        ));
    }
    let input = node
        .children()
        .first()
        .map(|c| (*c).clone())
        .ok_or_else(|| Error::internal("window operator without input"))?;
    let below = without_sorts(input)?;
    let plan = TopPlan {
        input: below.schema(),
        partition_by: first.partition_by().to_vec(),
        order_by: first.order_by().to_vec(),
        by: ranks[*by],
        ranks,
        output: node.schema(),
        limit: *limit,
        skip: 0,
        updates,
    };
    Ok(Some((plan, below)))
}

fn sorted_top(
    sort: &SortExec,
    limit: u64,
    skip: u64,
    updates: bool,
) -> (TopPlan, Arc<dyn ExecutionPlan>) {
    let below = sort.input().clone();
    let plan = TopPlan {
        input: below.schema(),
        partition_by: Vec::new(),
        order_by: sort.expr().iter().cloned().collect(),
        ranks: Vec::new(),
        output: below.schema(),
        by: Rank::RowNumber,
        limit,
        skip,
        updates,
    };
    (plan, below)
}

/// The plan without the sorts that order a window operator's input (a top-N needs no order
/// in its input; they may sit under projections).
fn without_sorts(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(plan
        .transform_up(|node| {
            let unsorted = match node.downcast_ref::<SortExec>() {
                Some(sort) if sort.fetch().is_none() => Some(sort.input().clone()),
                _ => node
                    .downcast_ref::<SortPreservingMergeExec>()
                    .filter(|m| m.fetch().is_none())
                    .map(|m| m.input().clone()),
            };
            Ok(match unsorted {
                Some(input) => Transformed::yes(input),
                None => Transformed::no(node),
            })
        })?
        .data)
}

fn no_order() -> Error {
    not_supported("LIMIT without ORDER BY (which rows it keeps would be arbitrary)")
}
