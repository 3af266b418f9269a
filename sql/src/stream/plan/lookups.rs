//! Finding lookup joins in a physical plan and cutting the plan at them.
//!
//! A `HashJoinExec` one of whose inputs is a table (or materialized view) scan, maybe under
//! filters and projections, joined on exactly the table's primary key, is a lookup join: the
//! plan above it becomes a [`Segment`] over a feed of the join's rows, and the stream side
//! below it is cut again (a stream can be enriched by several tables in turn).

use std::sync::Arc;

use datafusion::common::{JoinType, NullEquality};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::joins::utils::build_join_schema;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion::physical_plan::unnest::UnnestExec;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use super::{Scan, Segment, cut_first, not_supported};
use crate::error::{Error, Result, sqlstate};
use crate::stream::operators::lookup_join::LookupJoinPlan;

/// Lookup joins in pipeline order, each with the stateless plan above it.
pub type LookupChain = Vec<(Arc<LookupJoinPlan>, Segment)>;

/// The plan with its topmost lookup join cut out (recursively below it): the lower plan
/// over the source feed, and the lookup joins with the plans above each, bottom-up.
pub(super) fn cut_lookups(
    root: &Arc<dyn ExecutionPlan>,
    scans: &[Scan],
    ctx: &Arc<TaskContext>,
) -> Result<(Arc<dyn ExecutionPlan>, LookupChain)> {
    if scans.is_empty() {
        return Ok((root.clone(), Vec::new()));
    }
    let found = cut_first(root, |node| match node.downcast_ref::<HashJoinExec>() {
        Some(join) => lookup_join(join, scans, ctx),
        None => Ok(None),
    })?;
    let Some((above, feed, (join, stream_side))) = found else {
        return Ok((root.clone(), Vec::new()));
    };
    let (lower, mut chain) = cut_lookups(&stream_side, scans, ctx)?;
    chain.push((
        Arc::new(join),
        Segment {
            plan: above,
            feed,
            task_ctx: ctx.clone(),
        },
    ));
    Ok((lower, chain))
}

/// The scan under one input of a join (through filters and projections)
/// and, for each output column of that input, the scanned column it is (if it is one).
pub(super) fn scan_columns(
    plan: &Arc<dyn ExecutionPlan>,
    scans: &[Scan],
) -> Option<(Scan, Vec<Option<usize>>)> {
    let leaf = |scan: &StreamingTableExec| {
        let partition = scan.partitions().first()?;
        let source = scans
            .iter()
            .find(|s| Arc::ptr_eq(&s.partition, partition))?
            .clone();
        let columns = match scan.projection() {
            Some(p) => p.iter().map(|c| Some(*c)).collect(),
            None => (0..source.def.columns.len()).map(Some).collect(),
        };
        Some((source, columns))
    };
    let column = |e: &Arc<dyn PhysicalExpr>, below: &[Option<usize>]| {
        let c = e.downcast_ref::<Column>()?;
        below.get(c.index()).copied().flatten()
    };
    lineage(plan, &leaf, &column, &|_| None, &|_, _| true)
}

/// What a scan's columns are, for [`lineage`] (and which scan it is).
pub(super) type LeafColumns<'a, L, T> =
    dyn Fn(&StreamingTableExec) -> Option<(L, Vec<Option<T>>)> + 'a;
/// What a projected expression is, given what the columns below are.
pub(super) type ExprColumn<'a, T> = dyn Fn(&Arc<dyn PhysicalExpr>, &[Option<T>]) -> Option<T> + 'a;

/// Whether a filter whose predicate reads columns with the given values may stand.
pub(super) type FilterAllowed<'a, T> = dyn Fn(&Arc<dyn PhysicalExpr>, &[Option<T>]) -> bool + 'a;

/// Follows columns from a scan up through filters, projections and unnests (and nodes that
/// pass rows through unchanged): `leaf` gives the scan's columns a value (and says which scan
/// it is), `expr` gives a projected expression one from the values of the columns below, and
/// `unnest` gives an element of an unnested list column one from the list's, and `filter` says
/// whether a filter with a predicate over the columns below may stand. None if the plan holds
/// any other node, or a filter that may not.
pub(super) fn lineage<L, T: Clone>(
    plan: &Arc<dyn ExecutionPlan>,
    leaf: &LeafColumns<'_, L, T>,
    expr: &ExprColumn<'_, T>,
    unnest: &dyn Fn(&T) -> Option<T>,
    filter: &FilterAllowed<'_, T>,
) -> Option<(L, Vec<Option<T>>)> {
    if let Some(scan) = plan.downcast_ref::<StreamingTableExec>() {
        return leaf(scan);
    }
    let children = plan.children();
    let [child] = children.as_slice() else {
        return None;
    };
    let (found, below) = lineage(child, leaf, expr, unnest, filter)?;
    let columns = if let Some(u) = plan.downcast_ref::<UnnestExec>() {
        let lists = unnested_lists(u, below.len())?;
        below
            .iter()
            .enumerate()
            .map(|(i, value)| match lists.contains(&i) {
                true => value.as_ref().and_then(unnest),
                false => value.clone(),
            })
            .collect()
    } else if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        p.expr().iter().map(|e| expr(&e.expr, &below)).collect()
    } else if let Some(f) = plan.downcast_ref::<FilterExec>() {
        if !filter(f.predicate(), &below) {
            return None;
        }
        match f.projection() {
            Some(p) => p.iter().map(|i| below.get(*i).cloned().flatten()).collect(),
            None => below,
        }
    } else {
        match plan.name() {
            "CoalesceBatchesExec"
            | "RepartitionExec"
            | "CoalescePartitionsExec"
            | "CooperativeExec" => below,
            _ => return None,
        }
    };
    Some((found, columns))
}

/// The list columns an unnest replaces by their elements, if it unnests lists one level deep
/// (which keeps the columns in place) and nothing else; `columns`: its input's width.
fn unnested_lists(unnest: &UnnestExec, columns: usize) -> Option<Vec<usize>> {
    let lists = unnest.list_column_indices();
    let one_level = lists.iter().all(|l| l.depth == 1)
        && unnest.struct_column_indices().is_empty()
        && unnest.schema().fields().len() == columns;
    one_level.then(|| lists.iter().map(|l| l.index_in_input_schema).collect())
}

/// The join as a lookup join, with its stream side, if one input is a looked-up table.
fn lookup_join(
    join: &HashJoinExec,
    scans: &[Scan],
    ctx: &Arc<TaskContext>,
) -> Result<Option<(LookupJoinPlan, Arc<dyn ExecutionPlan>)>> {
    let (stream_is_left, (source, columns)) = match (
        scan_columns(join.left(), scans),
        scan_columns(join.right(), scans),
    ) {
        (None, Some(t)) => (true, t),
        (Some(t), None) => (false, t),
        _ => return Ok(None),
    };
    let table = &source.def;
    if super::asof::is_asof(join.filter()) {
        return Err(not_supported(format!(
            "ASOF and temporal joins with {} \"{}\" (they join two sources; a stream looks \
             a table's or view's rows up by primary key as they are when each event is processed)",
            table.kind.describe(),
            table.name
        )));
    }
    let outer = match (join.join_type(), stream_is_left) {
        (JoinType::Inner, _) => false,
        (JoinType::Left, true) | (JoinType::Right, false) => true,
        (other, _) => {
            return Err(not_supported(format!(
                "a {other} join with table \"{}\" (a stream joins a table with INNER or LEFT \
                 JOIN, the stream on the left)",
                table.name
            )));
        }
    };
    if join.null_equality() == NullEquality::NullEqualsNull {
        return Err(not_supported("joins where NULL equals NULL"));
    }
    let on: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)> = join
        .on()
        .iter()
        .map(|(l, r)| match stream_is_left {
            true => (l.clone(), r.clone()),
            false => (r.clone(), l.clone()),
        })
        .collect();
    // Each primary-key column must be equated with a stream expression.
    let mut key_exprs = Vec::new();
    for &pk in &table.primary_key {
        let stream_expr = on.iter().find_map(|(s, t)| {
            let c = t.downcast_ref::<Column>()?;
            (columns.get(c.index()).copied().flatten() == Some(pk)).then(|| s.clone())
        });
        match stream_expr {
            Some(e) => key_exprs.push(e),
            None => {
                let key: Vec<&str> = table
                    .primary_key
                    .iter()
                    .map(|&c| table.columns[c].name.as_str())
                    .collect();
                return Err(Error::user(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "a stream joins table \"{}\" only on its whole primary key ({}), which \
                         is read for each event; the join does not equate column \"{}\"",
                        table.name,
                        key.join(", "),
                        table.columns[pk].name
                    ),
                ));
            }
        }
    }
    if table.primary_key.is_empty() {
        return Err(not_supported(format!(
            "joins with \"{}\", which has no primary key to look rows up by",
            table.name
        )));
    }
    let (table_plan, stream_side) = match stream_is_left {
        true => (join.right().clone(), join.left().clone()),
        false => (join.left().clone(), join.right().clone()),
    };
    let schema = Arc::new(
        build_join_schema(
            &join.left().schema(),
            &join.right().schema(),
            join.join_type(),
        )
        .0,
    );
    let plan = LookupJoinPlan {
        table: table.clone(),
        table_side: table_plan,
        table_feed: source.feed.clone(),
        stream_is_left,
        key_exprs,
        on,
        filter: join.filter().cloned(),
        outer,
        schema,
        projection: join.projection.as_ref().map(|p| p.to_vec()),
        task_ctx: ctx.clone(),
    };
    Ok(Some((plan, stream_side)))
}
