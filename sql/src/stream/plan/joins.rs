//! Finding a join (or UNION ALL) of two streams in a physical plan and cutting the plan at it.
//!
//! A `UnionExec` of two inputs that each read one source (or each one materialized view) is a
//! union: each input becomes the stateless plan of its source and the rows of both go on as
//! the union's (as changes when an input is an updating view).
//!
//! A `HashJoinExec` (or, without equal keys, a `NestedLoopJoinExec`) whose inputs read two
//! different sources, each through filters and projections only, is an interval join when its
//! condition bounds the difference of the two sides' event times (their WATERMARK columns)
//! from below and above: `b.ts BETWEEN a.ts - x AND a.ts + y`, or `>=`/`<=` pairs, or
//! `a.ts = b.ts`. The plan above it becomes the pipeline's lower plan over a feed of the join's
//! rows, and each input becomes the stateless plan of its source.
//!
//! A join of two streams without such a bound would keep every row of both forever; it is
//! refused with a hint.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{JoinSide, JoinType, NullEquality};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Operator as BinOp;
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, Literal};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_plan::joins::utils::{JoinFilter, build_join_schema};
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec};
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, JoinConstraint, JoinOperator, Query, SetExpr, TableFactor, TableWithJoins,
};

use super::lookups::{lineage, scan_columns};
use super::{Cut, Scan, Segment, cut_first, interval_us, not_supported};
use crate::catalog::{Catalog, DEFAULT_SCHEMA, TableDef, TableKind};
use crate::error::{Error, Result, sqlstate};
use crate::stream::operators::asof_join::AsofJoinPlan;
use crate::stream::operators::change_join::ChangeJoinPlan;
use crate::stream::operators::interval_join::IntervalJoinPlan;

/// One input of a join or union: its source and the stateless plan over the source's batches.
#[derive(Debug, Clone)]
pub struct InputPlan {
    pub source: Arc<TableDef>,
    pub lower: Segment,
    /// When the source is a materialized view: how it is read.
    pub view: Option<super::ViewInput>,
}

impl InputPlan {
    /// `plan` (an input of the join or union) over the feed of the source `scan` reads.
    fn new(plan: &Arc<dyn ExecutionPlan>, scan: &Scan, ctx: &Arc<TaskContext>) -> Self {
        InputPlan {
            source: scan.def.clone(),
            lower: Segment {
                plan: plan.clone(),
                feed: scan.feed.clone(),
                task_ctx: ctx.clone(),
            },
            view: None,
        }
    }
}

/// How a pipeline's two sources are combined.
#[derive(Debug, Clone)]
pub enum Combine {
    /// An interval join (input 0 its left side).
    Join(Arc<IntervalJoinPlan>),
    /// UNION ALL: both inputs' rows, as the union's columns.
    Union(SchemaRef),
    /// An equi-join of two materialized views (changelog in, changelog out).
    ViewJoin(Arc<ChangeJoinPlan>),
    /// An ASOF (or temporal) join: each left row with the latest right row at or before it.
    Asof(Arc<AsofJoinPlan>),
}

/// Two sources combined at the start of a pipeline, and the plans over each.
#[derive(Debug, Clone)]
pub struct Combined {
    pub op: Combine,
    pub inputs: [InputPlan; 2],
}

impl Combined {
    /// Whether both inputs read the same source (a self-join or self-union): one reader then
    /// feeds both.
    /// Whether the combination's rows change: a join of views, or a union with an updating
    /// view among its inputs.
    pub fn updates(&self) -> bool {
        match self.op {
            Combine::ViewJoin(_) => true,
            Combine::Union(_) => self
                .inputs
                .iter()
                .any(|i| i.view == Some(super::ViewInput::Updates)),
            Combine::Join(_) | Combine::Asof(_) => false,
        }
    }

    pub fn shared(&self) -> bool {
        self.inputs[0].source.id == self.inputs[1].source.id
    }

    pub fn join(&self) -> Option<&Arc<IntervalJoinPlan>> {
        match &self.op {
            Combine::Join(j) => Some(j),
            Combine::Union(_) | Combine::ViewJoin(_) | Combine::Asof(_) => None,
        }
    }

    /// Whether the combination emits rows as the watermark passes them (an interval or ASOF
    /// join), so events behind it are late.
    pub fn in_event_time(&self) -> bool {
        matches!(self.op, Combine::Join(_) | Combine::Asof(_))
    }
}

/// Equal pairs of a join: (over the left input, over the right).
type EquiKeys = [(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)];

/// `right time - left time` within `[lower, upper]`, and each input's time column with the
/// constant added to its source time (column, constant).
type TimeBounds = (i64, i64, [(usize, i64); 2]);

/// The plan above the topmost join (or UNION ALL) of two sources, over the returned feed of its
/// rows, and the join; None if the plan combines no two sources.
pub(super) fn cut_combined(
    root: &Arc<dyn ExecutionPlan>,
    sources: &[Scan],
    ctx: &Arc<TaskContext>,
) -> Result<Option<Cut<Combined>>> {
    cut_first(root, |node| match union(node, sources, ctx)? {
        Some(u) => Ok(Some(u)),
        None => stream_join(node, sources, ctx),
    })
}

/// The parts of a join node the interval join needs.
pub(super) struct JoinParts<'a> {
    pub(super) left: &'a Arc<dyn ExecutionPlan>,
    pub(super) right: &'a Arc<dyn ExecutionPlan>,
    pub(super) join_type: JoinType,
    pub(super) on: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
    pub(super) filter: Option<&'a JoinFilter>,
    pub(super) projection: Option<Vec<usize>>,
    /// NOT IN: no row passes once the other side has a NULL.
    null_aware: bool,
}

impl JoinParts<'_> {
    /// The join's output columns (left, then right), and each side's key expressions.
    pub(super) fn schema_and_keys(&self) -> (SchemaRef, [Vec<Arc<dyn PhysicalExpr>>; 2]) {
        let schema =
            build_join_schema(&self.left.schema(), &self.right.schema(), &self.join_type).0;
        let (left_keys, right_keys) = self.on.iter().cloned().unzip();
        (Arc::new(schema), [left_keys, right_keys])
    }
}

fn join_parts(node: &Arc<dyn ExecutionPlan>) -> Result<Option<JoinParts<'_>>> {
    if let Some(join) = node.downcast_ref::<HashJoinExec>() {
        if join.null_equality() == NullEquality::NullEqualsNull {
            return Err(not_supported("joins where NULL equals NULL"));
        }
        return Ok(Some(JoinParts {
            left: join.left(),
            right: join.right(),
            join_type: *join.join_type(),
            on: join.on().to_vec(),
            filter: join.filter(),
            projection: join.projection.as_ref().map(|p| p.to_vec()),
            null_aware: join.null_aware,
        }));
    }
    if let Some(join) = node.downcast_ref::<NestedLoopJoinExec>() {
        return Ok(Some(JoinParts {
            left: join.left(),
            right: join.right(),
            join_type: *join.join_type(),
            on: Vec::new(),
            filter: join.filter(),
            projection: join.projection().as_ref().map(|p| p.to_vec()),
            null_aware: false,
        }));
    }
    Ok(None)
}

/// A UNION ALL of two inputs that each read one source.
fn union(
    node: &Arc<dyn ExecutionPlan>,
    sources: &[Scan],
    ctx: &Arc<TaskContext>,
) -> Result<Option<Combined>> {
    if node.name() != "UnionExec" {
        return Ok(None);
    }
    let children = node.children();
    let [left, right] = children.as_slice() else {
        return Err(not_supported("UNION ALL of more than two sources"));
    };
    let (Some(l), Some(r)) = (read_source(left, sources), read_source(right, sources)) else {
        return Ok(None);
    };
    Ok(Some(Combined {
        op: Combine::Union(node.schema()),
        inputs: [
            InputPlan::new(left, &l, ctx),
            InputPlan::new(right, &r, ctx),
        ],
    }))
}

/// The one source scan under a plan, if it reads exactly one.
fn read_source(plan: &Arc<dyn ExecutionPlan>, sources: &[Scan]) -> Option<Scan> {
    let mut found: Vec<Scan> = Vec::new();
    let mut stack = vec![plan.clone()];
    while let Some(node) = stack.pop() {
        if let Some(scan) = node.downcast_ref::<StreamingTableExec>()
            && let Some(partition) = scan.partitions().first()
            && let Some(s) = sources
                .iter()
                .find(|s| Arc::ptr_eq(&s.partition, partition))
        {
            found.push(s.clone());
        }
        stack.extend(node.children().into_iter().cloned());
    }
    match found.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// The join as an interval join, if both its inputs read sources.
fn stream_join(
    node: &Arc<dyn ExecutionPlan>,
    sources: &[Scan],
    ctx: &Arc<TaskContext>,
) -> Result<Option<Combined>> {
    let Some(parts) = join_parts(node)? else {
        return Ok(None);
    };
    let (Some(left), Some(right)) = (
        scan_columns(parts.left, sources),
        scan_columns(parts.right, sources),
    ) else {
        return Ok(None);
    };
    let view = |d: &TableDef| matches!(d.kind, TableKind::MaterializedView(_));
    let asof = super::asof::is_asof(parts.filter);
    if asof && (view(&left.0.def) || view(&right.0.def)) {
        return Err(not_supported(
            "ASOF and temporal joins of materialized views (they join two sources)",
        ));
    }
    if view(&left.0.def) && view(&right.0.def) {
        return view_join(&parts, &left.0, &right.0, ctx).map(Some);
    }
    match parts.join_type {
        JoinType::Inner
        | JoinType::Left
        | JoinType::Right
        | JoinType::Full
        | JoinType::LeftSemi
        | JoinType::RightSemi
        | JoinType::LeftAnti
        | JoinType::RightAnti => {}
        other => {
            return Err(not_supported(format!(
                "{other} joins of two streams (a subquery over a stream in a condition)"
            )));
        }
    }
    if parts.null_aware {
        return Err(not_supported(
            "NOT IN over a stream (its answer changes when a NULL arrives); write NOT EXISTS",
        ));
    }
    // Which input columns are each source's event time (plus a constant).
    let mut offsets: [Vec<Option<Timed>>; 2] = Default::default();
    for (i, (input, scan)) in [(parts.left, &left.0), (parts.right, &right.0)]
        .into_iter()
        .enumerate()
    {
        let def = &scan.def;
        let Some(watermark) = def.source().and_then(|s| s.watermark.as_ref()) else {
            return Err(Error::user(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "a join of two streams needs a WATERMARK on source \"{}\": the join keeps \
                     each side's rows until the watermark says no partner can still come",
                    def.name
                ),
            ));
        };
        let column = def
            .column_index(&watermark.column)
            .ok_or_else(|| Error::internal("watermark column missing"))?;
        offsets[i] = timed_columns(input, column).unwrap_or_default();
    }
    if asof {
        let exact = offsets
            .clone()
            .map(|columns| columns.iter().map(|t| *t == Some(Timed::EXACT)).collect());
        let plan = super::asof::plan(&parts, &exact)?;
        return Ok(Some(Combined {
            op: Combine::Asof(Arc::new(plan)),
            inputs: [
                InputPlan::new(parts.left, &left.0, ctx),
                InputPlan::new(parts.right, &right.0, ctx),
            ],
        }));
    }
    let bounds = time_bounds(parts.filter, &parts.on, &offsets);
    let Some((lower_us, upper_us, time)) = bounds else {
        let time_name = |def: &TableDef| {
            def.source()
                .and_then(|s| s.watermark.as_ref())
                .map_or("ts".to_string(), |w| w.column.clone())
        };
        return Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "a join of streams \"{}\" and \"{}\" needs a bound on their event times \
                 (WATERMARK columns), or it would keep every row of both forever",
                left.0.def.name, right.0.def.name
            ),
        )
        .with_hint(format!(
            "join within an interval, e.g. ON ... AND {r}.{rt} BETWEEN {l}.{lt} - INTERVAL \
             '1 minute' AND {l}.{lt} + INTERVAL '5 minutes', or keep rows for a while of event \
             time: WITH (state_ttl = '1h') joins rows whose times are within it",
            l = left.0.def.name,
            r = right.0.def.name,
            lt = time_name(&left.0.def),
            rt = time_name(&right.0.def),
        )));
    };
    if lower_us > upper_us {
        return Err(Error::user(
            sqlstate::INVALID_PARAMETER_VALUE,
            "the join's time bound is empty: no pair of rows can match",
        ));
    }
    let (schema, keys) = parts.schema_and_keys();
    let plan = IntervalJoinPlan {
        join_type: parts.join_type,
        inputs: [parts.left.schema(), parts.right.schema()],
        keys,
        time: [time[0].0, time[1].0],
        time_offset_us: [time[0].1, time[1].1],
        lower_us,
        upper_us,
        filter: parts.filter.cloned(),
        schema,
        projection: parts.projection,
    };
    Ok(Some(Combined {
        op: Combine::Join(Arc::new(plan)),
        inputs: [
            InputPlan::new(parts.left, &left.0, ctx),
            InputPlan::new(parts.right, &right.0, ctx),
        ],
    }))
}

/// An equi-join of two materialized views.
fn view_join(
    parts: &JoinParts<'_>,
    left: &Scan,
    right: &Scan,
    ctx: &Arc<TaskContext>,
) -> Result<Combined> {
    let names = format!("\"{}\" and \"{}\"", left.def.name, right.def.name);
    match parts.join_type {
        JoinType::Inner => {}
        JoinType::Left | JoinType::Right | JoinType::Full if parts.filter.is_none() => {}
        JoinType::Left | JoinType::Right | JoinType::Full => {
            return Err(not_supported(format!(
                "{} joins of materialized views {names} with conditions other than equal \
                 columns (filter the views first, or join INNER)",
                parts.join_type
            )));
        }
        other => {
            return Err(not_supported(format!(
                "{other} joins of materialized views {names} (EXISTS / IN subqueries)"
            )));
        }
    }
    if parts.on.is_empty() {
        return Err(not_supported(format!(
            "joins of materialized views {names} without an equality of their columns"
        )));
    }
    let (schema, keys) = parts.schema_and_keys();
    let plan = ChangeJoinPlan {
        join_type: parts.join_type,
        inputs: [parts.left.schema(), parts.right.schema()],
        keys,
        filter: parts.filter.cloned(),
        schema,
        projection: parts.projection.clone(),
    };
    Ok(Combined {
        op: Combine::ViewJoin(Arc::new(plan)),
        inputs: [
            InputPlan::new(parts.left, left, ctx),
            InputPlan::new(parts.right, right, ctx),
        ],
    })
}

/// A column computed from its source's event time `ts`: its value lies in `[ts + offset -
/// width, ts + offset]`. The time itself has width 0, `ts + INTERVAL '5 seconds'` offset 5 s;
/// a window's start (`date_bin(size, ts)`, or each start HOP unnests) lies within its size
/// before `ts`, so it has the size as width. `list`: a list each of whose elements does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timed {
    offset: i64,
    width: i64,
    list: bool,
}

impl Timed {
    /// The event time itself.
    const EXACT: Timed = Timed {
        offset: 0,
        width: 0,
        list: false,
    };

    fn shifted(self, by: i64) -> Option<Timed> {
        Some(Timed {
            offset: self.offset.checked_add(by)?,
            ..self
        })
    }
}

/// What `expr` is in terms of event time, given what the columns it reads are.
fn timed(expr: &Arc<dyn PhysicalExpr>, column: &dyn Fn(&Column) -> Option<Timed>) -> Option<Timed> {
    let constant = |e: &Arc<dyn PhysicalExpr>| -> Option<i64> {
        interval_us(e.downcast_ref::<Literal>()?.value())
    };
    if let Some(c) = expr.downcast_ref::<Column>() {
        return column(c);
    }
    if let Some(c) = expr.downcast_ref::<CastExpr>() {
        return timed(c.expr(), column);
    }
    if let Some(f) = expr.downcast_ref::<ScalarFunctionExpr>() {
        let args = f.args();
        return match (f.name(), args) {
            // Within `stride` at or before the time, whatever the origin.
            ("date_bin", [stride, time, ..]) => {
                let stride = constant(stride).filter(|s| *s > 0)?;
                let t = timed(time, column).filter(|t| !t.list)?;
                Some(Timed {
                    width: t.width.checked_add(stride)?,
                    ..t
                })
            }
            // Each window's start lies within its size at or before the time.
            (super::hop::HOP_WINDOWS, [time, _slide, size]) => {
                let size = constant(size).filter(|s| *s > 0)?;
                let t = timed(time, column).filter(|t| !t.list)?;
                Some(Timed {
                    width: t.width.checked_add(size)?,
                    list: true,
                    ..t
                })
            }
            // Every element lies between the first and the last.
            ("generate_series" | "range", [first, last, _step]) => {
                let (a, b) = (timed(first, column)?, timed(last, column)?);
                if a.list || b.list {
                    return None;
                }
                let high = a.offset.max(b.offset);
                let low = (a.offset.checked_sub(a.width)?).min(b.offset.checked_sub(b.width)?);
                Some(Timed {
                    offset: high,
                    width: high.checked_sub(low)?,
                    list: true,
                })
            }
            _ => None,
        };
    }
    let b = expr.downcast_ref::<BinaryExpr>()?;
    match b.op() {
        BinOp::Plus => match constant(b.right()) {
            Some(k) => timed(b.left(), column)?.shifted(k),
            None => timed(b.right(), column)?.shifted(constant(b.left())?),
        },
        BinOp::Minus => timed(b.left(), column)?.shifted(constant(b.right())?.checked_neg()?),
        _ => None,
    }
}

/// For each output column of an input (a source scan under projections, filters and
/// unnests): what it is in terms of the source's event time (column `time`), if anything.
fn timed_columns(plan: &Arc<dyn ExecutionPlan>, time: usize) -> Option<Vec<Option<Timed>>> {
    let leaf = |scan: &StreamingTableExec| {
        let width = scan.partitions().first()?.schema().fields().len();
        let columns: Vec<usize> = match scan.projection() {
            Some(p) => p.to_vec(),
            None => (0..width).collect(),
        };
        let exact = Timed {
            offset: 0,
            width: 0,
            list: false,
        };
        Some((
            (),
            columns
                .iter()
                .map(|&c| (c == time).then_some(exact))
                .collect(),
        ))
    };
    let expr = |e: &Arc<dyn PhysicalExpr>, below: &[Option<Timed>]| {
        timed(e, &|c: &Column| below.get(c.index()).copied().flatten())
    };
    let unnest = |t: &Timed| t.list.then_some(Timed { list: false, ..*t });
    lineage(plan, &leaf, &expr, &unnest, &|_, _| true).map(|(_, columns)| columns)
}

pub(super) fn conjuncts<'a>(
    expr: &'a Arc<dyn PhysicalExpr>,
    out: &mut Vec<&'a Arc<dyn PhysicalExpr>>,
) {
    match expr.downcast_ref::<BinaryExpr>() {
        Some(b) if *b.op() == BinOp::And => {
            conjuncts(b.left(), out);
            conjuncts(b.right(), out);
        }
        _ => out.push(expr),
    }
}

/// Bounds on `right time - left time` (the sources' event times), narrowed by conditions.
#[derive(Default)]
struct Bounds {
    lower: Option<i64>,
    upper: Option<i64>,
}

impl Bounds {
    /// Narrows by `right op left`, the right expression a value `r` and the left one `l`.
    fn narrow(&mut self, op: BinOp, r: Timed, l: Timed) -> Option<()> {
        // r in [ts_r + r.offset - r.width, ts_r + r.offset], l likewise, so `r >= l` means
        // ts_r - ts_l >= l.offset - l.width - r.offset, and `r <= l` means
        // ts_r - ts_l <= l.offset - r.offset + r.width.
        let base = l.offset.checked_sub(r.offset)?;
        let lower = base.checked_sub(l.width)?;
        let upper = base.checked_add(r.width)?;
        let (at_least, at_most) = match op {
            BinOp::Gt | BinOp::GtEq => (true, false),
            BinOp::Lt | BinOp::LtEq => (false, true),
            BinOp::Eq => (true, true),
            _ => return None,
        };
        if at_least {
            self.lower = Some(self.lower.map_or(lower, |b| b.max(lower)));
        }
        if at_most {
            self.upper = Some(self.upper.map_or(upper, |b| b.min(upper)));
        }
        Some(())
    }
}

/// The bounds `[lower, upper]` the condition puts on `right time - left time` (the sources'
/// event times), if it bounds both ways; and for each input a column holding its time plus a
/// constant (the column, the constant). Where an input has only columns near its time (a
/// window's start), the bounds are widened to hold for them.
fn time_bounds(
    filter: Option<&JoinFilter>,
    on: &EquiKeys,
    offsets: &[Vec<Option<Timed>>; 2],
) -> Option<TimeBounds> {
    let mut bounds = Bounds::default();
    let at = |input: usize| move |c: &Column| offsets[input].get(c.index()).copied().flatten();
    // Equal keys that are both times (`a.ts = b.ts`, `a.window_start = b.window_start`).
    for (l, r) in on {
        if let (Some(l), Some(r)) = (timed(l, &at(0)), timed(r, &at(1)))
            && !l.list
            && !r.list
        {
            bounds.narrow(BinOp::Eq, r, l);
        }
    }
    let mut all = Vec::new();
    if let Some(filter) = filter {
        conjuncts(filter.expression(), &mut all);
    }
    // The input a filter expression reads (only one), and what it is in terms of time.
    let side = |e: &Arc<dyn PhysicalExpr>| -> Option<(usize, Timed)> {
        let filter = filter?;
        let mut input = None;
        for c in collect_columns(e) {
            let side = match filter.column_indices().get(c.index())?.side {
                JoinSide::Left => 0,
                JoinSide::Right => 1,
                JoinSide::None => return None,
            };
            if *input.get_or_insert(side) != side {
                return None;
            }
        }
        let input = input?;
        let column = |c: &Column| {
            let index = filter.column_indices().get(c.index())?;
            offsets[input].get(index.index).copied().flatten()
        };
        Some((input, timed(e, &column).filter(|t| !t.list)?))
    };
    for expr in all {
        let Some(b) = expr.downcast_ref::<BinaryExpr>() else {
            continue;
        };
        let (Some((a, p)), Some((c, q))) = (side(b.left()), side(b.right())) else {
            continue;
        };
        // As `right op left`.
        match (a, c) {
            (1, 0) => bounds.narrow(*b.op(), p, q),
            (0, 1) => b.op().swap().and_then(|op| bounds.narrow(op, q, p)),
            _ => None,
        };
    }
    let (lower, upper) = (bounds.lower?, bounds.upper?);
    // Each input's closest column to its time.
    let mut time = [(
        0,
        Timed {
            offset: 0,
            width: 0,
            list: false,
        },
    ); 2];
    for (input, columns) in offsets.iter().enumerate() {
        time[input] = columns
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((i, (*t)?)))
            .filter(|(_, t)| !t.list)
            .min_by_key(|(_, t)| t.width)?;
    }
    // The operator takes `column - offset` as a row's time, up to the column's width before
    // the real one: widen the bounds to hold for those times.
    let [(left, l), (right, r)] = time;
    if lower > upper {
        return Some((lower, upper, [(left, l.offset), (right, r.offset)]));
    }
    Some((
        lower.checked_sub(r.width)?,
        upper.checked_add(l.width)?,
        [(left, l.offset), (right, r.offset)],
    ))
}

/// With `state_ttl`: adds to each join of two sources (with WATERMARKs) the bound that their
/// event times are within the TTL of each other, so the join keeps each row that long (in
/// event time). Returns whether there was such a join.
pub(super) fn bound_by_ttl(query: &mut Query, catalog: &Catalog, ttl_ms: u64) -> Result<bool> {
    let mut found = false;
    bound_query(query, catalog, ttl_ms, &mut found)?;
    Ok(found)
}

fn bound_query(query: &mut Query, catalog: &Catalog, ttl_ms: u64, found: &mut bool) -> Result<()> {
    bound_set(&mut query.body, catalog, ttl_ms, found)
}

fn bound_set(body: &mut SetExpr, catalog: &Catalog, ttl_ms: u64, found: &mut bool) -> Result<()> {
    match body {
        SetExpr::Select(select) => {
            for from in select.from.iter_mut() {
                bound_joins(from, catalog, ttl_ms, found)?;
            }
        }
        SetExpr::Query(q) => bound_query(q, catalog, ttl_ms, found)?,
        SetExpr::SetOperation { left, right, .. } => {
            bound_set(left, catalog, ttl_ms, found)?;
            bound_set(right, catalog, ttl_ms, found)?;
        }
        _ => {}
    }
    Ok(())
}

/// `(qualifier, event-time column)` of a FROM item that is a source with a WATERMARK.
fn timed_source(factor: &TableFactor, catalog: &Catalog) -> Option<(String, String)> {
    let TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    } = factor
    else {
        return None;
    };
    let table = super::unqualified(&name.to_string());
    let def = catalog.table(DEFAULT_SCHEMA, &table)?;
    let TableKind::Source(info) = &def.kind else {
        return None;
    };
    let column = info.watermark.as_ref()?.column.clone();
    let qualifier = alias
        .as_ref()
        .map(|a| a.name.to_string())
        .unwrap_or_else(|| name.to_string());
    Some((qualifier, format!("\"{}\"", column.replace('"', "\"\""))))
}

fn bound_joins(
    from: &mut TableWithJoins,
    catalog: &Catalog,
    ttl_ms: u64,
    found: &mut bool,
) -> Result<()> {
    if let TableFactor::Derived { subquery, .. } = &mut from.relation {
        bound_query(subquery, catalog, ttl_ms, found)?;
    }
    let left = timed_source(&from.relation, catalog);
    for join in from.joins.iter_mut() {
        if let TableFactor::Derived { subquery, .. } = &mut join.relation {
            bound_query(subquery, catalog, ttl_ms, found)?;
        }
        let (Some((l, lt)), Some((r, rt))) = (&left, timed_source(&join.relation, catalog)) else {
            continue;
        };
        let constraint = match &mut join.join_operator {
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c)
            | JoinOperator::Right(c)
            | JoinOperator::RightOuter(c)
            | JoinOperator::FullOuter(c) => c,
            _ => continue,
        };
        let JoinConstraint::On(on) = constraint else {
            continue;
        };
        let bound = format!(
            "{r}.{rt} BETWEEN {l}.{lt} - INTERVAL '{ttl_ms} milliseconds' \
             AND {l}.{lt} + INTERVAL '{ttl_ms} milliseconds'"
        );
        let parsed = super::parse_query(&format!("SELECT 1 WHERE {bound}"))?;
        let SetExpr::Select(select) = *parsed.body else {
            return Err(Error::internal("state_ttl bound is not a SELECT"));
        };
        let bound = select
            .selection
            .ok_or_else(|| Error::internal("state_ttl bound has no WHERE"))?;
        let original = std::mem::replace(
            on,
            SqlExpr::value(datafusion::sql::sqlparser::ast::Value::Null),
        );
        *on = SqlExpr::BinaryOp {
            left: Box::new(SqlExpr::Nested(Box::new(original))),
            op: datafusion::sql::sqlparser::ast::BinaryOperator::And,
            right: Box::new(bound),
        };
        *found = true;
    }
    Ok(())
}
