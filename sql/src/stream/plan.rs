//! Planning a continuous query: SQL → DataFusion physical plan → pipeline stages.
//!
//! The query is planned by DataFusion in a context where each source is a table whose scan
//! is a *feed* (a slot the runtime fills with one source batch at a time) and each stream is
//! a view of its own query, so a query over a stream reads the stream's source through the
//! stream's operators. Window table functions are rewritten to subqueries first:
//! `TUMBLE(src, ts, size)` adds `window_start = date_bin(size, ts)` and `window_end =
//! window_start + size`; `HOP(src, ts, slide, size)` gives each event one row per window it
//! falls in, or, for an aggregate that only groups by the windows and writes them on close,
//! one row per event in its pane (`plan/hop.rs`).
//!
//! The physical plan is then cut into stages:
//! - *lower*: the stateless part over the feed (projections, filters, unnest), executed by
//!   DataFusion once per input batch;
//! - *lookup joins* with tables and materialized views (`plan/lookups.rs`), each followed by the
//!   stateless plan above it over a feed of the join's rows;
//! - *OVER* over events (`plan/over.rs`): DataFusion's window operator run by Eddy's operator as
//!   the watermark seals rows, followed by the plan above it;
//! - *MATCH_RECOGNIZE* (`plan/match_recognize.rs`): the clause's node over its input's plan,
//!   cut out before OVER and lookups (which may feed it), followed by the plan above it;
//! - *top-N* (`plan/top.rs`): ranking functions within a bound, or ORDER BY ... LIMIT, over
//!   events or an updating view's rows, followed by the plan above it (changes out);
//! - *aggregate*: at most one grouping aggregation, run by Eddy's own stateful operator with
//!   DataFusion's accumulators;
//! - *upper*: projections and HAVING filters over the aggregate's changed groups, or, with
//!   window functions or ORDER BY ... LIMIT over the aggregate, the whole plan above it: run
//!   over each batch of closed windows (top-N per window), or, when the groups emit on update,
//!   as a top-N over their changes (`AggregatePlan::top`).
//!
//! A join of two sources (`plan/joins.rs`) comes first: each of its inputs is the stateless
//! plan over its source, and the lower plan runs over the join's rows.
//!
//! A query that reads no source or stream reads the materialized views it names
//! ([`ViewInput`]): an appending view's rows in order, an updating view's snapshot and
//! changelog (`changelog.rs`), after which the aggregate retracts, and two views may be joined
//! (`plan/joins.rs::view_join`) or united (UNION ALL), changelog in and out.
//!
//! Anything else (unbounded joins of two streams, LIMIT without ORDER BY, nested aggregates in
//! one query, unbounded OVER frames) is refused with 0A000 naming the operator.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::{TableType, ViewTable};
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, ScalarUDF};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::udaf::AggregateFunctionExpr;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr, displayable};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{
    self, FunctionArg, FunctionArgExpr, ObjectName, Query, SetExpr, Statement, TableFactor, Visit,
    VisitMut, Visitor, VisitorMut,
};
use parking_lot::Mutex;

use super::operators::lookup_join::LookupJoinPlan;
use super::operators::over::OverPlan;
use super::operators::top_n::TopPlan;
pub use hop::HopGroups;
use joins::cut_combined;
pub use joins::{Combine, Combined, InputPlan};
use lookups::cut_lookups;
pub use match_recognize::MatchStage;
use match_recognize::cut_match;
use over::cut_over;
use top::cut_top;

pub mod asof;
mod hop;
mod joins;
mod lookups;
mod match_recognize;
mod over;
mod top;
use crate::catalog::{Catalog, DEFAULT_SCHEMA, TableDef, TableKind};
use crate::engine::Session;
use crate::error::{Error, Result, sqlstate};

/// The slot a source batch is handed to the lower plan through.
#[derive(Debug, Clone, Default)]
pub struct Feed(Arc<Mutex<Option<RecordBatch>>>);

impl Feed {
    pub fn put(&self, batch: RecordBatch) {
        *self.0.lock() = Some(batch);
    }
}

#[derive(Debug)]
struct FeedPartition {
    schema: SchemaRef,
    feed: Feed,
}

impl PartitionStream for FeedPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch = self.feed.0.lock().take();
        let batches = batch.into_iter().collect();
        Box::pin(
            MemoryStream::try_new(batches, self.schema.clone(), None)
                .expect("feed batches have the source schema"),
        )
    }
}

/// A relation as DataFusion sees it while a streaming query is planned: its scan is a feed.
#[derive(Debug)]
struct FeedScan {
    def: Arc<TableDef>,
    role: ScanRole,
}

#[derive(Debug)]
enum ScanRole {
    /// A source: each scan gets a feed the runtime puts each batch it reads in (a source
    /// read twice, as in a self-join, feeds both); `used` lists the scans of sources.
    Source { used: Arc<Mutex<Vec<Scan>>> },
    /// A table (or materialized view) a stream joins by primary key: each scan gets a feed
    /// the lookup join fills with the rows it read.
    Lookup(Arc<Mutex<Vec<Scan>>>),
}

/// One scan of a source or looked-up table in a physical plan.
#[derive(Debug, Clone)]
struct Scan {
    partition: Arc<dyn PartitionStream>,
    def: Arc<TableDef>,
    feed: Feed,
}

#[async_trait::async_trait]
impl TableProvider for FeedScan {
    fn schema(&self) -> SchemaRef {
        self.def.arrow_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if limit.is_some() {
            // A LIMIT pushed into the scan: the rows it would keep are whichever came first.
            return Err(datafusion::error::DataFusionError::External(Box::new(
                not_supported("LIMIT without ORDER BY (which rows it keeps would be arbitrary)"),
            )));
        }
        let (feed, scans) = match &self.role {
            ScanRole::Source { used } => (Feed::default(), used),
            ScanRole::Lookup(scans) => (Feed::default(), scans),
        };
        let partition: Arc<dyn PartitionStream> = Arc::new(FeedPartition {
            schema: self.def.arrow_schema(),
            feed: feed.clone(),
        });
        scans.lock().push(Scan {
            partition: partition.clone(),
            def: self.def.clone(),
            feed,
        });
        Ok(StreamingTableExec::try_new(
            self.def.arrow_schema(),
            vec![partition],
            projection,
            Vec::new(),
            false,
            None,
        )
        .map(Arc::new)?)
    }
}

/// A stateless part of a pipeline after a lookup join: the plan above the join, over a feed
/// of the join's rows.
#[derive(Debug, Clone)]
pub struct Segment {
    pub plan: Arc<dyn ExecutionPlan>,
    pub feed: Feed,
    pub task_ctx: Arc<TaskContext>,
}

impl Segment {
    pub async fn run(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.feed.put(batch);
        let stream = self.plan.execute(0, self.task_ctx.clone())?;
        Ok(datafusion::physical_plan::common::collect(stream).await?)
    }
}

/// A plan cut at a node: the plan above it (over a feed of the node's rows), the feed, and
/// what the node became.
type Cut<T> = (Arc<dyn ExecutionPlan>, Feed, T);

/// Replaces the topmost node for which `find` gives a value by a leaf over a new feed: returns
/// the plan above it (reading that feed), the feed and the value; None if no node matched.
fn cut_first<T>(
    root: &Arc<dyn ExecutionPlan>,
    mut find: impl FnMut(&Arc<dyn ExecutionPlan>) -> Result<Option<T>>,
) -> Result<Option<Cut<T>>> {
    let feed = Feed::default();
    let mut found = None;
    let above = root
        .clone()
        .transform_down(|node| {
            if found.is_some() {
                return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
            }
            let external = |e: Error| datafusion::error::DataFusionError::External(Box::new(e));
            let Some(value) = find(&node).map_err(external)? else {
                return Ok(Transformed::no(node));
            };
            let leaf = feed_exec(node.schema(), feed.clone()).map_err(external)?;
            found = Some(value);
            Ok(Transformed::new(leaf, true, TreeNodeRecursion::Jump))
        })?
        .data;
    Ok(found.map(|value| (above, feed, value)))
}

/// A feed as a leaf of a physical plan.
fn feed_exec(schema: SchemaRef, feed: Feed) -> Result<Arc<dyn ExecutionPlan>> {
    let partition = FeedPartition {
        schema: schema.clone(),
        feed,
    };
    Ok(Arc::new(StreamingTableExec::try_new(
        schema,
        vec![Arc::new(partition)],
        None,
        Vec::new(),
        false,
        None,
    )?))
}

/// One step of the upper stage.
#[derive(Debug, Clone)]
pub enum UpperStage {
    /// Rows failing the predicate are not part of the result (their view rows are deleted).
    Filter(Arc<dyn PhysicalExpr>, Option<Vec<usize>>),
    Project(Vec<Arc<dyn PhysicalExpr>>, SchemaRef),
}

#[derive(Debug, Clone)]
pub struct AggregatePlan {
    pub group_exprs: Vec<(Arc<dyn PhysicalExpr>, String)>,
    pub aggr_exprs: Vec<Arc<AggregateFunctionExpr>>,
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// The aggregate's output: group columns, then one column per aggregate.
    pub schema: SchemaRef,
    /// Applied bottom-up to the aggregate's output.
    pub upper: Vec<UpperStage>,
    /// Instead of `upper`: the plan above the aggregate (window functions over its rows,
    /// e.g. top-N per window), run over each batch of rows the aggregate emits.
    pub upper_segment: Option<Segment>,
    /// The plan above the aggregate as a top-N over its changes, when `upper_segment` ranks
    /// its rows within a bound: how an aggregate that emits on update is ranked.
    pub top: Option<AggregateTop>,
    /// Which group column bounds a window, if the grouping is by window.
    pub window: Option<WindowGroup>,
    /// HOP windows that the aggregate may combine from panes, or does (`hop/panes`).
    pub hop: Option<HopGroups>,
    /// Group columns `window_start` and `window_end` of SESSION windows, which the session
    /// operator merges per key instead of grouping by them.
    pub session: Option<(usize, usize)>,
    /// The input is a changelog (an updating view): accumulators retract deleted rows, and a
    /// group whose rows are all gone is deleted.
    pub retract: bool,
}

impl AggregatePlan {
    /// Its HOP windows, when it combines them from panes.
    pub fn panes(&self) -> Option<&HopGroups> {
        self.hop.as_ref().filter(|h| h.panes)
    }
}

/// A top-N over an aggregate's changed groups: the plan below it (over the groups' changes),
/// the top-N, and the plan above it.
#[derive(Debug, Clone)]
pub struct AggregateTop {
    pub below: Segment,
    pub top: Arc<TopPlan>,
    pub above: Segment,
}

/// How the end of a group's window is found from its group columns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowGroup {
    /// Index of the `window_end` (or `window_start`) group column.
    pub column: usize,
    /// Added to that column's value to get the window's end (0 for `window_end`).
    pub add_us: i64,
}

/// How a pipeline reads a materialized view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewInput {
    /// The view only ever adds rows (no aggregation): its rows are read in order, as a
    /// push source's log is.
    Appends,
    /// The view's rows change (it groups): a snapshot of its rows, then its changelog,
    /// turned into changes (`operators/normalize.rs`).
    Updates,
}

#[derive(Debug, Clone)]
pub struct PipelinePlan {
    /// The source the pipeline reads (with a join of two streams, the join's left input).
    pub source: Arc<TableDef>,
    /// When `source` is a materialized view: how it is read.
    pub view_input: Option<ViewInput>,
    /// A join or union of two sources: its inputs read the sources, and `lower` runs over its
    /// rows.
    pub combined: Option<Combined>,
    /// Where `lower`'s input batches are put: the source's, or with a join the join's.
    pub feed: Feed,
    pub lower: Arc<dyn ExecutionPlan>,
    /// Lookup joins after the lower plan, in order, each followed by the stateless plan
    /// above it.
    pub lookups: Vec<(Arc<LookupJoinPlan>, Segment)>,
    /// OVER functions over the events after the lookups, and the plan above them.
    pub over: Option<(Arc<OverPlan>, Segment)>,
    /// MATCH_RECOGNIZE over the events after the lookups and OVER, and the plan above it.
    pub matcher: Option<MatchStage>,
    /// Top-N (ranked rows within a bound, or ORDER BY ... LIMIT) after the lookups, and the
    /// plan above it: its result updates.
    pub top: Option<(Arc<TopPlan>, Segment)>,
    pub aggregate: Option<AggregatePlan>,
    /// The result's columns with their PostgreSQL-style names.
    pub output: SchemaRef,
    /// The DataFusion plan, for EXPLAIN.
    pub physical: Arc<dyn ExecutionPlan>,
    pub task_ctx: Arc<TaskContext>,
}

fn not_supported(what: impl std::fmt::Display) -> Error {
    Error::user(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!("streaming queries do not support {what} yet"),
    )
}

fn streaming_config() -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_target_partitions(1)
        .with_batch_size(8192)
        .with_repartition_aggregations(false)
        .with_repartition_joins(false)
        .with_repartition_windows(false)
        .with_coalesce_batches(false)
        .with_round_robin_repartition(false);
    config.options_mut().sql_parser.enable_ident_normalization = true;
    // Joins are not executed by DataFusion here (lookup joins are cut out of the plan), so
    // nothing may wait on a filter a join would publish.
    config
        .options_mut()
        .optimizer
        .enable_join_dynamic_filter_pushdown = false;
    config
}

/// Interval literal → microseconds (months are refused: their length varies).
pub(crate) fn interval_us(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(v.days as i64 * 86_400_000_000 + v.nanoseconds / 1000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(v.days as i64 * 86_400_000_000 + v.milliseconds as i64 * 1000)
        }
        _ => None,
    }
}

async fn eval_interval(ctx: &SessionContext, sql: &str) -> Result<i64> {
    let df = ctx.sql(&format!("SELECT {sql}")).await?;
    let batches = df.collect().await?;
    let value = batches
        .first()
        .filter(|b| b.num_rows() == 1)
        .map(|b| ScalarValue::try_from_array(b.column(0), 0))
        .transpose()?;
    value
        .as_ref()
        .and_then(interval_us)
        .filter(|us| *us > 0)
        .ok_or_else(|| {
            Error::user(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("window size {sql} must be a positive interval of days or less"),
            )
        })
}

fn arg_expr(arg: &FunctionArg) -> Result<&ast::Expr> {
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
        other => Err(Error::user(
            sqlstate::SYNTAX_ERROR,
            format!("unsupported window function argument: {other}"),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WindowKind {
    Tumble,
    Hop,
    Session,
}

/// Replaces TUMBLE(...), HOP(...) and SESSION(...) in FROM by subqueries; returns the window
/// calls found (with the SQL of their size or gap, evaluated later).
fn rewrite_windows(query: &mut Query, catalog: &Catalog) -> Result<Vec<(String, WindowKind)>> {
    struct Rewriter<'a> {
        catalog: &'a Catalog,
        found: Vec<(String, WindowKind)>,
        error: Option<Error>,
    }
    impl Rewriter<'_> {
        fn rewrite(&mut self, factor: &TableFactor) -> Result<Option<TableFactor>> {
            let TableFactor::Table {
                name,
                alias,
                args: Some(args),
                ..
            } = factor
            else {
                return Ok(None);
            };
            let fname = name.to_string().to_ascii_lowercase();
            let kind = match fname.as_str() {
                "tumble" => WindowKind::Tumble,
                "hop" => WindowKind::Hop,
                "session" => WindowKind::Session,
                _ => return Ok(None),
            };
            let (want, usage) = match kind {
                WindowKind::Tumble => (3, "TUMBLE takes (source, time column, size)"),
                WindowKind::Hop => (4, "HOP takes (source, time column, slide, size)"),
                WindowKind::Session => (3, "SESSION takes (source, time column, gap)"),
            };
            if args.args.len() != want {
                return Err(Error::user(sqlstate::SYNTAX_ERROR, usage));
            }
            let src = arg_expr(&args.args[0])?.to_string();
            let src_name = unqualified(&src);
            let ts = arg_expr(&args.args[1])?.to_string();
            let def = self
                .catalog
                .table(DEFAULT_SCHEMA, &src_name.to_ascii_lowercase())
                .or_else(|| self.catalog.table(DEFAULT_SCHEMA, &src_name))
                .ok_or_else(|| Error::undefined_table(&src_name))?;
            let alias = alias
                .as_ref()
                .map(|a| a.name.to_string())
                .unwrap_or_else(|| format!("\"{}\"", def.name));
            let cols: Vec<String> = def
                .columns
                .iter()
                .map(|c| format!("\"{}\"", c.name.replace('"', "\"\"")))
                .collect();
            let cols = cols.join(", ");
            let table = format!("\"{}\"", def.name.replace('"', "\"\""));
            let sub = if kind == WindowKind::Session {
                // Each event starts as its own session [ts, ts + gap); the session operator
                // merges overlapping ones per key.
                let gap = arg_expr(&args.args[2])?.to_string();
                self.found.push((gap.clone(), kind));
                format!(
                    "SELECT {cols}, {ts} AS window_start, {ts} + {gap} AS window_end FROM {table}"
                )
            } else if kind == WindowKind::Hop {
                let slide = arg_expr(&args.args[2])?.to_string();
                let size = arg_expr(&args.args[3])?.to_string();
                self.found.push((size.clone(), kind));
                self.found.push((slide.clone(), kind));
                format!(
                    "SELECT {cols}, __eddy_w AS window_start, __eddy_w + {size} AS window_end \
                     FROM (SELECT {cols}, unnest({}({ts}, {slide}, {size})) AS __eddy_w \
                     FROM {table}) AS __eddy_hop",
                    hop::HOP_WINDOWS
                )
            } else {
                let size = arg_expr(&args.args[2])?.to_string();
                self.found.push((size.clone(), kind));
                format!(
                    "SELECT {cols}, date_bin({size}, {ts}) AS window_start, \
                     date_bin({size}, {ts}) + {size} AS window_end FROM {table}"
                )
            };
            let wrapped = format!("SELECT * FROM ({sub}) AS {alias}");
            let mut parsed = Session::parse(&wrapped)?;
            let Some(crate::engine::Stmt::Sql(Statement::Query(q))) = parsed.pop() else {
                return Err(Error::internal("window rewrite did not parse"));
            };
            let SetExpr::Select(select) = *q.body else {
                return Err(Error::internal("window rewrite is not a SELECT"));
            };
            Ok(select.from.into_iter().next().map(|t| t.relation))
        }
    }
    impl VisitorMut for Rewriter<'_> {
        type Break = ();
        fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            match self.rewrite(factor) {
                Ok(Some(new)) => *factor = new,
                Ok(None) => {}
                Err(e) => {
                    self.error = Some(e);
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut r = Rewriter {
        catalog,
        found: Vec::new(),
        error: None,
    };
    let _ = query.visit(&mut r);
    match r.error {
        Some(e) => Err(e),
        None => Ok(r.found),
    }
}

/// Names of the relations a query reads (window function arguments included).
pub fn relations(query: &Query) -> Vec<String> {
    struct Names(Vec<String>);
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
            self.0.push(relation.to_string());
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            // MATCH_RECOGNIZE's input is text inside its marker call.
            if let Some((input, _)) = crate::cep::table::marker_args(factor) {
                if let Ok(q) = parse_query(&format!("SELECT * FROM {input}")) {
                    self.0.extend(relations(&q));
                }
                return ControlFlow::Continue(());
            }
            if let TableFactor::Table {
                args: Some(args), ..
            } = factor
                && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) = args.args.first()
            {
                self.0.push(e.to_string());
            }
            ControlFlow::Continue(())
        }
    }
    let mut names = Names(Vec::new());
    let _ = query.visit(&mut names);
    names.0.into_iter().map(|n| unqualified(&n)).collect()
}

/// A relation's name as the catalog knows it: `public.x` (the schema streaming queries read)
/// is `x`.
pub(crate) fn unqualified(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let bare = lower
        .strip_prefix("public.")
        .or_else(|| lower.strip_prefix("\"public\"."))
        .unwrap_or(&lower);
    bare.trim_matches('"').to_string()
}

/// Whether a query reads a SESSION(...) window.
pub fn uses_session_window(query: &Query) -> bool {
    struct Finder(bool);
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table {
                name,
                args: Some(_),
                ..
            } = factor
                && name.to_string().eq_ignore_ascii_case("session")
            {
                self.0 = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut finder = Finder(false);
    let _ = query.visit(&mut finder);
    finder.0
}

/// A planning context where sources are feeds and streams are views of their queries.
struct Planner<'a> {
    catalog: &'a Catalog,
    /// A query that reads no source or stream reads materialized views as its input (their
    /// rows, then their changes); otherwise they are tables it looks rows up in.
    views_as_sources: bool,
    ctx: SessionContext,
    used: Arc<Mutex<Vec<Scan>>>,
    lookups: Arc<Mutex<Vec<Scan>>>,
    windows: Vec<i64>,
    session: bool,
    /// MATCH_RECOGNIZE clauses compiled for the marker function.
    matches: crate::cep::table::Prepared,
}

impl<'a> Planner<'a> {
    fn new(catalog: &'a Catalog, udfs: &[Arc<ScalarUDF>]) -> Result<Self> {
        let mut ctx = SessionContext::new_with_config(streaming_config());
        // A lone COUNT(DISTINCT x) would become a GROUP BY x under another aggregation, which
        // a stream cannot run as one operator; its accumulator keeps the distinct values.
        ctx.remove_optimizer_rule("single_distinct_aggregation_to_group_by");
        eddy_udf::register(&mut ctx)?;
        ctx.register_udf(asof::marker());
        for f in hop::functions() {
            ctx.register_udf(f);
        }
        for udf in udfs {
            ctx.register_udf(udf.as_ref().clone());
        }
        let matches = crate::cep::table::Prepared::default();
        ctx.register_udtf(
            crate::cep::syntax::MARKER,
            Arc::new(crate::cep::table::MarkerFunction {
                prepared: matches.clone(),
            }),
        );
        Ok(Self {
            catalog,
            views_as_sources: false,
            ctx,
            used: Arc::default(),
            lookups: Arc::default(),
            windows: Vec::new(),
            session: false,
            matches,
        })
    }

    /// Registers `name` (a source or stream, recursively what a stream reads).
    fn register<'b>(
        &'b mut self,
        name: &'b str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(async move {
            if self.ctx.table_exist(name)? {
                return Ok(());
            }
            let Some(def) = self.catalog.table(DEFAULT_SCHEMA, name) else {
                // Unknown names are left for DataFusion to report (42P01).
                return Ok(());
            };
            let view = matches!(def.kind, TableKind::MaterializedView(_));
            match &def.kind {
                TableKind::Source(_) | TableKind::MaterializedView(_)
                    if !view || self.views_as_sources =>
                {
                    self.ctx.register_table(
                        name,
                        Arc::new(FeedScan {
                            def: def.clone(),
                            role: ScanRole::Source {
                                used: self.used.clone(),
                            },
                        }),
                    )?;
                }
                TableKind::Stream(q) => {
                    let query = parse_query(&q.sql)?;
                    let plan = self.logical(query).await?;
                    self.ctx.register_table(
                        name,
                        Arc::new(ViewTable::new(plan, Some(q.sql.clone()))),
                    )?;
                }
                TableKind::Table | TableKind::MaterializedView(_) => {
                    self.ctx.register_table(
                        name,
                        Arc::new(FeedScan {
                            def: def.clone(),
                            role: ScanRole::Lookup(self.lookups.clone()),
                        }),
                    )?;
                }
                other => {
                    return Err(Error::user(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "a streaming query reads sources and streams (and joins tables); \
                             \"{name}\" is a {}",
                            other.describe()
                        ),
                    ));
                }
            }
            Ok(())
        })
    }

    async fn logical(&mut self, mut query: Query) -> Result<LogicalPlan> {
        for name in relations(&query) {
            self.register(&name).await?;
        }
        self.prepare_matches(&query).await?;
        asof::rewrite(&mut query, self.catalog)?;
        for (size_sql, kind) in rewrite_windows(&mut query, self.catalog)? {
            let us = eval_interval(&self.ctx, &size_sql).await?;
            self.windows.push(us);
            self.session |= kind == WindowKind::Session;
        }
        let statement = Statement::Query(Box::new(query));
        let plan = self
            .ctx
            .state()
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                statement,
            )))
            .await?;
        Ok(plan)
    }
}

impl Planner<'_> {
    /// Plans the input of each MATCH_RECOGNIZE of `query` (over the sources and streams it
    /// reads) and compiles the clause, for the marker function to return.
    async fn prepare_matches(&mut self, query: &Query) -> Result<()> {
        let statement = Statement::Query(Box::new(query.clone()));
        for (input, body) in crate::cep::table::clauses(&statement) {
            let key = (input.clone(), body.clone());
            if self.matches.lock().contains_key(&key) {
                continue;
            }
            let clause = crate::cep::syntax::parse_clause(&body)?;
            let input_query = parse_query(&format!("SELECT * FROM {input}"))?;
            let mut input_plan = Box::pin(self.logical(input_query)).await?;
            let schema = Arc::new(input_plan.schema().as_arrow().clone());
            let mut compiled = crate::cep::run::MatchPlan::new(&clause, schema, &self.ctx.state())?;
            // Only the columns the clause reads go through the matcher's state.
            if let Some(narrower) = compiled.narrower_input(&input) {
                let query = parse_query(&narrower)?;
                input_plan = Box::pin(self.logical(query)).await?;
                let schema = Arc::new(input_plan.schema().as_arrow().clone());
                compiled = crate::cep::run::MatchPlan::new(&clause, schema, &self.ctx.state())?;
            }
            compiled.check_streaming()?;
            self.matches.lock().insert(
                key,
                Arc::new(crate::cep::table::MatchTable {
                    input: input_plan,
                    plan: Arc::new(compiled),
                }),
            );
        }
        Ok(())
    }
}

pub fn parse_query(sql: &str) -> Result<Query> {
    match Session::parse(sql)?.pop() {
        Some(crate::engine::Stmt::Sql(Statement::Query(q))) => Ok(*q),
        _ => Err(Error::internal(format!("not a query: {sql}"))),
    }
}

/// Plans a continuous query over the catalog's sources and streams; `udfs` are the engine's
/// functions that need more than a DataFusion context (PREDICT).
pub async fn plan(
    catalog: &Catalog,
    query: &Query,
    udfs: &[Arc<ScalarUDF>],
) -> Result<PipelinePlan> {
    plan_with(catalog, query, udfs, &[]).await
}

/// [`plan`] with the pipeline's options (`state_ttl`).
pub async fn plan_with(
    catalog: &Catalog,
    query: &Query,
    udfs: &[Arc<ScalarUDF>],
    options: &[(String, String)],
) -> Result<PipelinePlan> {
    let mut planner = Planner::new(catalog, udfs)?;
    planner.views_as_sources = relations(query).iter().all(|name| {
        !catalog
            .table(DEFAULT_SCHEMA, name)
            .is_some_and(|t| matches!(t.kind, TableKind::Source(_) | TableKind::Stream(_)))
    });
    let mut query = query.clone();
    let ttl = state_ttl(options)?;
    if let Some(ms) = ttl
        && !joins::bound_by_ttl(&mut query, catalog, ms)?
    {
        return Err(Error::user(
            sqlstate::INVALID_PARAMETER_VALUE,
            "state_ttl applies to joins of two sources, and this query has none",
        ));
    }
    let logical = planner.logical(query).await?;
    let names = crate::engine::output_names(&logical);
    let physical = planner.ctx.state().create_physical_plan(&logical).await?;
    let task_ctx = planner.ctx.task_ctx();
    let (lower, mut aggregate) = split(&physical, &planner.windows, &task_ctx)?;
    if planner.session {
        let agg = aggregate.as_mut().ok_or_else(|| {
            Error::user(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "SESSION windows need a GROUP BY window_start, window_end",
            )
        })?;
        let position = |name: &str| agg.group_exprs.iter().position(|(_, n)| n == name);
        match (position("window_start"), position("window_end")) {
            (Some(start), Some(end)) => agg.session = Some((start, end)),
            _ => {
                return Err(Error::user(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "SESSION windows need both window_start and window_end in GROUP BY",
                ));
            }
        }
    }
    if let Some(agg) = aggregate.as_mut() {
        agg.top = aggregate_top(agg, &task_ctx);
    }
    let used = planner.used.lock().clone();
    let mut sources: Vec<Arc<TableDef>> = Vec::new();
    for scan in &used {
        if !sources.iter().any(|d| d.id == scan.def.id) {
            sources.push(scan.def.clone());
        }
    }
    let (lower, feed, join) = match (sources.as_slice(), used.len()) {
        ([], _) => {
            return Err(Error::user(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "a streaming query must read a source or a stream",
            ));
        }
        ([_], 1) => (lower, used[0].feed.clone(), None),
        ([_], 2) | ([_, _], 2) => match cut_combined(&lower, &used, &task_ctx)? {
            Some((above, feed, combined)) => (above, feed, Some(combined)),
            None => {
                return Err(not_supported(
                    "combining two sources, or a source with itself, other than by a join \
                     within a time bound or UNION ALL",
                ));
            }
        },
        _ => return Err(not_supported("joins and unions of more than two sources")),
    };
    let source = match &join {
        Some(j) => j.inputs[0].source.clone(),
        None => sources[0].clone(),
    };
    let view_kind = |def: Arc<TableDef>| async move {
        match &def.kind {
            TableKind::MaterializedView(info) => {
                Ok::<_, Error>(Some(match view_updates(catalog, info, udfs).await? {
                    true => ViewInput::Updates,
                    false => ViewInput::Appends,
                }))
            }
            _ => Ok(None),
        }
    };
    let mut join = join;
    let view_input = match &mut join {
        None => view_kind(source.clone()).await?,
        Some(combined) => {
            for input in combined.inputs.iter_mut() {
                input.view = view_kind(input.source.clone()).await?;
            }
            let views = combined.inputs.iter().filter(|i| i.view.is_some()).count();
            if views > 0 && !matches!(combined.op, Combine::ViewJoin(_) | Combine::Union(_)) {
                return Err(not_supported("joins of a materialized view with a source"));
            }
            None
        }
    };
    if let Some(j) = &join {
        for input in &j.inputs {
            check_stateless(&input.lower.plan)?;
        }
    }
    let view_join = join.as_ref().is_some_and(|c| c.updates());
    let input_updates = view_input == Some(ViewInput::Updates) || view_join;
    // MATCH_RECOGNIZE over events; OVER and lookups may come before it.
    let (lower, matcher) = cut_match(&lower, &task_ctx)?;
    if let Some((m, above)) = &matcher {
        let Some(watermark) = source.source().and_then(|s| s.watermark.clone()) else {
            return Err(not_supported(format!(
                "MATCH_RECOGNIZE over source \"{}\" without a WATERMARK (rows are matched once \
                 no earlier event can come)",
                source.name
            )));
        };
        let time = m.input.field(m.time).name();
        if *time != watermark.column {
            return Err(not_supported(format!(
                "MATCH_RECOGNIZE in a continuous query ordered by \"{time}\": it must ORDER BY the \
                 event time \"{}\" (the WATERMARK column of source \"{}\") first",
                watermark.column, source.name
            )));
        }
        if input_updates {
            return Err(not_supported(
                "MATCH_RECOGNIZE over an updating view (its rows change; patterns match events)",
            ));
        }
        if join.as_ref().is_some_and(|c| c.in_event_time()) {
            return Err(not_supported(
                "MATCH_RECOGNIZE over a join of two streams (make a stream of the join first)",
            ));
        }
        if aggregate
            .as_ref()
            .is_some_and(|a| a.upper_segment.is_some() || a.session.is_some())
        {
            return Err(not_supported(
                "window functions or SESSION windows over MATCH_RECOGNIZE",
            ));
        }
        check_stateless(&above.plan)?;
    }
    // Top-N over events or an updating view's rows (top-N over an aggregate's rows is in
    // `split`'s plan above the aggregate).
    let (lower, top) = match (&aggregate, &matcher) {
        (None, None) => cut_top(&lower, &task_ctx, input_updates)?,
        _ => (lower, None),
    };
    // OVER over events (not over an aggregate's rows, which `split` handled).
    let (lower, over) = match (&aggregate, &matcher) {
        (None, _) | (_, Some(_)) => cut_over(&lower, &source, &task_ctx)?,
        _ => (lower, None),
    };
    if over.is_some() && top.is_some() {
        return Err(not_supported(
            "OVER and a top-N in one query (rank a view of the OVER's rows)",
        ));
    }
    if over.is_some() && join.as_ref().is_some_and(|c| c.in_event_time()) {
        return Err(not_supported("OVER over a join of two streams"));
    }
    let above = over
        .iter()
        .map(|(_, s)| s)
        .chain(top.iter().map(|(_, s)| s));
    for segment in above {
        check_stateless(&segment.plan)?;
    }
    let lookup_scans = planner.lookups.lock().clone();
    let (lower, lookups) = cut_lookups(&lower, &lookup_scans, &task_ctx)?;
    check_stateless(&lower)?;
    for (join, segment) in &lookups {
        check_stateless(&join.table_side)?;
        check_stateless(&segment.plan)?;
    }
    if input_updates {
        check_over_updates(&source, &lookups, over.is_some(), aggregate.as_mut())?;
    }
    let mut output: SchemaRef = physical.schema();
    if let Some(names) = names {
        output = crate::engine::rename(&output, &names);
    }
    Ok(PipelinePlan {
        source,
        view_input,
        combined: join,
        feed,
        lower,
        lookups,
        over,
        matcher,
        top,
        aggregate,
        output,
        physical,
        task_ctx,
    })
}

/// The plan above an aggregate as a top-N over the aggregate's changes, if it is one (ranking
/// functions within a bound, or ORDER BY ... LIMIT, with stateless plans around them).
fn aggregate_top(agg: &AggregatePlan, ctx: &Arc<TaskContext>) -> Option<AggregateTop> {
    let segment = agg.upper_segment.as_ref()?;
    let (below, (top, above)) = match cut_top(&segment.plan, ctx, true) {
        Ok((below, Some(top))) => (below, top),
        _ => return None,
    };
    if check_stateless(&below).is_err() || check_stateless(&above.plan).is_err() {
        return None;
    }
    Some(AggregateTop {
        below: Segment {
            plan: below,
            feed: segment.feed.clone(),
            task_ctx: ctx.clone(),
        },
        top,
        above,
    })
}

/// EXPLAIN lines of a top-N and the plan above it.
fn push_top(lines: &mut Vec<String>, top: &TopPlan, above: &Segment) {
    lines.push(format!("  Top-N: {}", top.describe()));
    lines.push(format!(
        "    state: table {}, {}; changes out (rows whose rank changes are deleted and inserted \
         again)",
        super::manager::TOP_OPERATOR,
        match top.updates {
            true => "every input row by (partition, order) and each partition's top rows",
            false => "each partition's top rows (a row pushed out cannot come back)",
        }
    ));
    lines.push("  Stateless (DataFusion, per batch):".into());
    push_plan(lines, above.plan.as_ref());
}

/// Whether a materialized view's query updates its rows (it aggregates). Boxed: planning
/// a view plans the views it reads.
fn view_updates<'a>(
    catalog: &'a Catalog,
    view: &'a crate::catalog::QueryInfo,
    udfs: &'a [Arc<ScalarUDF>],
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool>> + Send + 'a>> {
    Box::pin(async move {
        let query = parse_query(&view.sql)?;
        let plan = plan_with(catalog, &query, udfs, &view.options).await?;
        Ok(plan.updates())
    })
}

/// What may follow an updating view: stateless operators and one aggregation (no window),
/// whose accumulators must retract.
fn check_over_updates(
    view: &TableDef,
    lookups: &[(Arc<LookupJoinPlan>, Segment)],
    over: bool,
    aggregate: Option<&mut AggregatePlan>,
) -> Result<()> {
    let name = &view.name;
    if !lookups.is_empty() {
        return Err(not_supported(format!(
            "joins of the updating view \"{name}\" (its rows change; a lookup join reads a table \
             as it is when each row arrives)"
        )));
    }
    if over {
        return Err(not_supported(format!(
            "window functions (OVER) over the updating view \"{name}\""
        )));
    }
    // Without an aggregation the changes are stored as they are (`operators/materialize.rs`).
    let Some(aggregate) = aggregate else {
        return Ok(());
    };
    if aggregate.session.is_some() {
        return Err(not_supported(format!(
            "SESSION windows over the updating view \"{name}\" (it has no event time)"
        )));
    }
    // A view's rows carry no watermark: a window column of the view is a plain group column,
    // and its groups update as the view does.
    aggregate.window = None;
    aggregate.hop = None;
    if aggregate.upper_segment.is_some() {
        return Err(not_supported(format!(
            "window functions over an aggregation of the updating view \"{name}\""
        )));
    }
    aggregate.retract = true;
    aggregate.accumulators()?;
    Ok(())
}

/// Whether the node keeps only some rows: a LIMIT, or a sort with a fetch (ORDER BY ... LIMIT).
fn limits(node: &Arc<dyn ExecutionPlan>) -> bool {
    node.downcast_ref::<SortExec>()
        .is_some_and(|s| s.fetch().is_some())
        || matches!(node.name(), "GlobalLimitExec" | "LocalLimitExec")
}

/// Whether the plan under a limit is an aggregate without GROUP BY (one row), through
/// stateless nodes.
fn global_aggregate_below(limit: &Arc<dyn ExecutionPlan>) -> bool {
    let mut node = limit.clone();
    loop {
        let children = node.children();
        let [child] = children.as_slice() else {
            return false;
        };
        if let Some(agg) = child.downcast_ref::<AggregateExec>() {
            return agg.group_expr().is_empty();
        }
        if !matches!(
            child.name(),
            "ProjectionExec" | "CoalescePartitionsExec" | "CoalesceBatchesExec" | "SortExec"
        ) {
            return false;
        }
        node = (*child).clone();
    }
}

/// Whether a limit keeps the first row (no OFFSET, a LIMIT of at least one).
fn one_row_kept(limit: &Arc<dyn ExecutionPlan>) -> bool {
    use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
    if let Some(l) = limit.downcast_ref::<GlobalLimitExec>() {
        return l.skip() == 0 && l.fetch() != Some(0);
    }
    if let Some(l) = limit.downcast_ref::<LocalLimitExec>() {
        return l.fetch() != 0;
    }
    limit
        .downcast_ref::<SortExec>()
        .is_some_and(|s| s.fetch() != Some(0))
}

fn only_child(plan: &Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    match plan.children().as_slice() {
        [one] => Ok((*one).clone()),
        _ => Err(not_supported(plan.name())),
    }
}

fn contains_aggregate(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.is::<AggregateExec>() || plan.children().iter().any(|c| contains_aggregate(c))
}

/// Splits the plan at its aggregation, if any.
fn split(
    root: &Arc<dyn ExecutionPlan>,
    windows: &[i64],
    task_ctx: &Arc<TaskContext>,
) -> Result<(Arc<dyn ExecutionPlan>, Option<AggregatePlan>)> {
    if !contains_aggregate(root) {
        return Ok((root.clone(), None));
    }
    let mut upper = Vec::new();
    let mut node = root.clone();
    // Window functions over the aggregate's rows (top-N per window): the plan above the
    // aggregate runs as a whole over each batch of rows it emits.
    let mut over = false;
    let agg = loop {
        if let Some(agg) = node.downcast_ref::<AggregateExec>() {
            break agg;
        }
        // An aggregate without GROUP BY has one row: ORDER BY ... LIMIT n (n >= 1) keeps it.
        if limits(&node) && global_aggregate_below(&node) {
            if one_row_kept(&node) {
                node = only_child(&node)?;
                continue;
            }
            return Err(not_supported(
                "OFFSET or LIMIT 0 over an aggregate without GROUP BY (its one row would \
                 never be kept)",
            ));
        }
        // A top-N (ORDER BY ... LIMIT) over the aggregate's rows also runs as the plan above.
        if limits(&node) || matches!(node.name(), "BoundedWindowAggExec" | "WindowAggExec") {
            over = true;
            node = only_child(&node)?;
            continue;
        }
        if let Some(p) = node.downcast_ref::<ProjectionExec>() {
            upper.push(UpperStage::Project(
                p.expr().iter().map(|e| e.expr.clone()).collect(),
                p.schema(),
            ));
        } else if let Some(f) = node.downcast_ref::<FilterExec>() {
            let projection = f.projection().as_ref().map(|p| p.iter().copied().collect());
            upper.push(UpperStage::Filter(f.predicate().clone(), projection));
        } else {
            match node.name() {
                "CoalesceBatchesExec"
                | "CoalescePartitionsExec"
                | "RepartitionExec"
                | "SortExec"
                | "SortPreservingMergeExec"
                | "CooperativeExec" => {}
                other => return Err(not_supported(format!("{other} above an aggregation"))),
            }
        }
        node = only_child(&node)?;
    };
    upper.reverse();
    let schema = agg.schema();
    let upper_segment = match over {
        false => None,
        true => {
            upper.clear();
            let feed = Feed::default();
            let leaf = feed_exec(schema.clone(), feed.clone())?;
            let plan = root
                .clone()
                .transform_down(|n| {
                    Ok(match Arc::ptr_eq(&n, &node) {
                        true => Transformed::new(leaf.clone(), true, TreeNodeRecursion::Jump),
                        false => Transformed::no(n),
                    })
                })?
                .data;
            check_upper_segment(&plan)?;
            Some(Segment {
                plan,
                feed,
                task_ctx: task_ctx.clone(),
            })
        }
    };
    // A Final aggregation over a Partial one: the Partial holds the expressions over the input.
    let (group, aggr, filters, input) = match agg.mode() {
        AggregateMode::Single | AggregateMode::SinglePartitioned => (
            agg.group_expr().clone(),
            agg.aggr_expr().to_vec(),
            agg.filter_expr().to_vec(),
            agg.input().clone(),
        ),
        _ => {
            let mut below = agg.input().clone();
            while !below.is::<AggregateExec>() {
                below = only_child(&below)?;
            }
            let partial = below.downcast_ref::<AggregateExec>().expect("checked");
            (
                partial.group_expr().clone(),
                partial.aggr_expr().to_vec(),
                partial.filter_expr().to_vec(),
                partial.input().clone(),
            )
        }
    };
    if !group.is_single() {
        return Err(not_supported("GROUPING SETS, CUBE and ROLLUP"));
    }
    if contains_aggregate(&input) {
        return Err(not_supported("aggregations over aggregations"));
    }
    let group_exprs = group.expr().to_vec();
    let window = group_exprs
        .iter()
        .position(|(_, n)| n == "window_end")
        .map(|column| WindowGroup { column, add_us: 0 })
        .or_else(|| {
            let column = group_exprs.iter().position(|(_, n)| n == "window_start")?;
            let size = *windows.first()?;
            Some(WindowGroup {
                column,
                add_us: size,
            })
        });
    let hop = window.and_then(|w| {
        let groups: Vec<_> = group_exprs.iter().map(|(e, _)| e.clone()).collect();
        let args: Vec<_> = aggr
            .iter()
            .flat_map(|a| a.expressions())
            .chain(filters.iter().flatten().cloned())
            .collect();
        hop::panes(&input, &groups, &args, (w.column, w.add_us))
    });
    Ok((
        input,
        Some(AggregatePlan {
            group_exprs,
            aggr_exprs: aggr,
            filters,
            schema,
            upper,
            upper_segment,
            top: None,
            window,
            hop,
            session: None,
            retract: false,
        }),
    ))
}

/// The plan above an aggregate with window functions runs over each batch the aggregate
/// emits: window functions, sorts, filters and projections only.
fn check_upper_segment(plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
    match plan.name() {
        "BoundedWindowAggExec"
        | "WindowAggExec"
        | "SortExec"
        | "SortPreservingMergeExec"
        | "ProjectionExec"
        | "FilterExec"
        | "CoalesceBatchesExec"
        | "CoalescePartitionsExec"
        | "RepartitionExec"
        | "CooperativeExec"
        | "GlobalLimitExec"
        | "LocalLimitExec"
        | "SortExec(TopK)"
        | "StreamingTableExec" => {}
        other => return Err(not_supported(format!("{other} above an aggregation"))),
    }
    for child in plan.children() {
        check_upper_segment(child)?;
    }
    Ok(())
}

/// The window functions above an aggregate each rank within a window (PARTITION BY
/// window_start or window_end): the rows of a window are emitted together when it closes,
/// so each emission holds every row a function needs.
pub fn check_per_window(segment: &Segment) -> Result<()> {
    fn visit(plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
        if limits(plan) {
            return Err(Error::user(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "ORDER BY ... LIMIT over windows emitted when they close would apply to each \
                 batch of closed windows: rank within each window instead (row_number() OVER \
                 (PARTITION BY window_start ORDER BY ...) <= n), or add EMIT ON UPDATE to rank \
                 all groups as they change",
            ));
        }
        let partitions: Option<Vec<Vec<String>>> =
            if let Some(w) = plan.downcast_ref::<BoundedWindowAggExec>() {
                Some(
                    w.window_expr()
                        .iter()
                        .map(|e| names(e.partition_by()))
                        .collect(),
                )
            } else {
                plan.downcast_ref::<WindowAggExec>().map(|w| {
                    w.window_expr()
                        .iter()
                        .map(|e| names(e.partition_by()))
                        .collect()
                })
            };
        for parts in partitions.into_iter().flatten() {
            if !parts
                .iter()
                .any(|n| n == "window_start" || n == "window_end")
            {
                return Err(Error::user(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "window functions over an aggregation must PARTITION BY window_start or \
                     window_end (ranking within each window); across windows, rows already \
                     written would need retracting",
                ));
            }
        }
        for child in plan.children() {
            visit(child)?;
        }
        Ok(())
    }
    fn names(exprs: &[Arc<dyn PhysicalExpr>]) -> Vec<String> {
        exprs
            .iter()
            .filter_map(|e| e.downcast_ref::<Column>().map(|c| c.name().to_string()))
            .collect()
    }
    visit(&segment.plan)
}

/// The lower plan runs once per batch, so it may hold no state across batches.
fn check_stateless(plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
    match plan.name() {
        "ProjectionExec"
        | "FilterExec"
        | "UnnestExec"
        | "CoalesceBatchesExec"
        | "StreamingTableExec"
        | "RepartitionExec"
        | "CoalescePartitionsExec"
        | "CooperativeExec" => {}
        "SortExec" | "SortPreservingMergeExec" => {
            return Err(not_supported(
                "ORDER BY without LIMIT (a stream has no end to sort to; ORDER BY ... LIMIT n \
                 in a materialized view keeps the first n rows)",
            ));
        }
        "GlobalLimitExec" | "LocalLimitExec" => {
            return Err(not_supported(
                "LIMIT without ORDER BY (which rows it keeps would be arbitrary)",
            ));
        }
        "HashJoinExec" | "NestedLoopJoinExec" | "SortMergeJoinExec" | "CrossJoinExec" => {
            return Err(not_supported(
                "joins other than with a table or materialized view on its whole primary key, \
                 or of two streams within a time bound",
            ));
        }
        "BoundedWindowAggExec" | "WindowAggExec" => {
            return Err(not_supported("window functions (OVER)"));
        }
        "UnionExec" | "InterleaveExec" => {
            return Err(not_supported(
                "UNION ALL other than of two sources or streams, or of two materialized views \
                 (a view and a source: make a view of the source's rows first)",
            ));
        }
        other => return Err(not_supported(other)),
    }
    for child in plan.children() {
        check_stateless(child)?;
    }
    Ok(())
}

/// The `state_ttl` option, in milliseconds.
pub fn state_ttl(options: &[(String, String)]) -> Result<Option<u64>> {
    let Some((_, v)) = options.iter().find(|(k, _)| k == "state_ttl") else {
        return Ok(None);
    };
    eddy_connectors::options::parse_duration(v)
        .map(|d| d.as_millis() as u64)
        .filter(|ms| *ms > 0)
        .map(Some)
        .ok_or_else(|| {
            Error::user(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("invalid value for option \"state_ttl\": \"{v}\" (expected e.g. 10m, 1h)"),
            )
        })
}

/// Microseconds as seconds, for EXPLAIN.
fn seconds(us: i64) -> String {
    format!("{} s", us as f64 / 1e6)
}

/// A join's equal keys for EXPLAIN: `l = r, ...`.
fn equal_keys(keys: &[Vec<Arc<dyn PhysicalExpr>>; 2]) -> String {
    let pairs: Vec<String> = keys[0]
        .iter()
        .zip(&keys[1])
        .map(|(l, r)| format!("{l} = {r}"))
        .collect();
    pairs.join(", ")
}

/// A source's event-time column for EXPLAIN: `source.column`.
fn event_time(source: &TableDef) -> String {
    let column = source
        .source()
        .and_then(|s| s.watermark.as_ref())
        .map_or("?", |w| w.column.as_str());
    format!("{}.{column}", source.name)
}

/// A physical plan's lines, indented, for EXPLAIN.
fn push_plan(lines: &mut Vec<String>, plan: &dyn ExecutionPlan) {
    for l in displayable(plan).indent(true).to_string().lines() {
        lines.push(format!("    {l}"));
    }
}

impl PipelinePlan {
    /// The partitions its keyed stage runs in when `requested` are asked for: a grouping by
    /// key is partitioned by its key, OVER (in a pipeline without an aggregate) by its
    /// PARTITION BY key; a global aggregate (one group), SESSION windows (their partition key
    /// leaves out the session columns; not routed yet) and OVER without PARTITION BY run in
    /// one.
    pub fn partitions(&self, requested: usize) -> usize {
        let keyed = match (&self.aggregate, &self.over) {
            // MATCH_RECOGNIZE runs in one partition (for now).
            _ if self.matcher.is_some() => false,
            (Some(a), _) => a.session.is_none() && !a.group_exprs.is_empty(),
            (None, Some((over, _))) => !over.partition_by.is_empty(),
            (None, None) => false,
        };
        match keyed {
            true => requested.clamp(1, crate::limits::MAX_PARALLELISM),
            false => 1,
        }
    }

    /// Whether its aggregate of HOP windows may combine them from panes (`plan/hop.rs`).
    pub fn allows_panes(&self) -> bool {
        self.aggregate.as_ref().is_some_and(|a| a.hop.is_some())
    }

    /// The plan with its aggregate of HOP windows combining them from panes, one row per
    /// event instead of one per window (for windows written when they close). Unchanged if
    /// it has none, or [`PipelinePlan::allows_panes`] is false.
    pub fn with_panes(&self) -> Result<PipelinePlan> {
        let mut plan = self.clone();
        if let Some(hop) = plan.aggregate.as_mut().and_then(|a| a.hop.as_mut())
            && !hop.panes
        {
            plan.lower = hop::to_panes(&plan.lower)?;
            hop.panes = true;
        }
        Ok(plan)
    }

    /// Whether the result's rows change after they are written (it aggregates, or reads an
    /// updating view): readers of such a view read its changelog.
    pub fn updates(&self) -> bool {
        self.aggregate.is_some()
            || self.top.is_some()
            || self.view_input == Some(ViewInput::Updates)
            || self.combined.as_ref().is_some_and(|c| c.updates())
    }

    /// The updating views the pipeline reads the changelogs of, with the input each feeds
    /// (None: the pipeline's one source). A view read by both inputs of a join has one reader.
    pub fn reads_views(&self) -> Vec<(u32, Option<usize>)> {
        match &self.combined {
            None if self.view_input == Some(ViewInput::Updates) => vec![(self.source.id, None)],
            None => Vec::new(),
            Some(c) => c
                .inputs
                .iter()
                .enumerate()
                .filter(|(i, input)| {
                    input.view == Some(ViewInput::Updates) && (*i == 0 || !c.shared())
                })
                .map(|(i, input)| (input.source.id, Some(i)))
                .collect(),
        }
    }

    /// The lower plan as a stage over `feed`.
    pub fn lower_segment(&self) -> Segment {
        Segment {
            plan: self.lower.clone(),
            feed: self.feed.clone(),
            task_ctx: self.task_ctx.clone(),
        }
    }

    /// Every source the pipeline reads (once), the join's inputs in order.
    pub fn sources(&self) -> Vec<Arc<TableDef>> {
        match &self.combined {
            Some(c) if !c.shared() => c.inputs.iter().map(|i| i.source.clone()).collect(),
            _ => vec![self.source.clone()],
        }
    }

    /// Runs the lower plan over one source batch.
    pub async fn run_lower(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        self.feed.put(batch);
        let stream = self.lower.execute(0, self.task_ctx.clone())?;
        Ok(datafusion::physical_plan::common::collect(stream).await?)
    }

    /// The EXPLAIN text of the pipeline.
    pub fn explain(&self, emit_on_close: bool, sink: &str, partitions: usize) -> Vec<String> {
        let mut lines = Vec::new();
        let inputs = match &self.combined {
            Some(j) => j
                .inputs
                .iter()
                .map(|i| (i.source.clone(), i.lower.plan.clone(), i.view))
                .collect(),
            None => vec![(self.source.clone(), self.lower.clone(), self.view_input)],
        };
        for (i, (source, lower, view_input)) in inputs.into_iter().enumerate() {
            let (connector, watermark) = match &source.kind {
                TableKind::Source(s) => (
                    s.connector
                        .clone()
                        .unwrap_or_else(|| "push (INSERT / HTTP)".into()),
                    s.watermark
                        .as_ref()
                        .map(|w| format!("watermark {} = {}", w.column, w.expr))
                        .unwrap_or_else(|| "no watermark".into()),
                ),
                _ => (String::new(), String::new()),
            };
            match view_input {
                Some(ViewInput::Updates) => {
                    lines.push(format!(
                        "View: {} (updating: a snapshot of its rows, then its changelog; no watermark)",
                        source.name
                    ));
                    lines.push(format!(
                        "  Changes: upserts to deletes and inserts; state: table {}, the view's rows last seen by key",
                        super::manager::NORMALIZE_OPERATORS[i]
                    ));
                }
                Some(ViewInput::Appends) => lines.push(format!(
                    "View: {} (appending: its rows in order; no watermark)",
                    source.name
                )),
                None => lines.push(format!(
                    "Source: {} (connector: {connector}; {watermark})",
                    source.name
                )),
            }
            lines.push("  Stateless (DataFusion, per batch):".into());
            push_plan(&mut lines, lower.as_ref());
        }
        if let Some(Combined {
            op: Combine::Union(_),
            inputs,
        }) = &self.combined
        {
            lines.push(format!(
                "Union all of {} and {}: rows of both inputs as they come; watermark the minimum of both",
                inputs[0].source.name, inputs[1].source.name
            ));
            lines.push("  Stateless (DataFusion, per batch):".into());
            push_plan(&mut lines, self.lower.as_ref());
        }
        if let Some(Combined {
            op: Combine::ViewJoin(plan),
            inputs,
        }) = &self.combined
        {
            let keys = equal_keys(&plan.keys);
            lines.push(format!(
                "Join (INNER) of views {} and {} on [{}]: changes in, changes out",
                inputs[0].source.name, inputs[1].source.name, keys
            ));
            lines.push(format!(
                "  state: table {}, each side's rows by join key (a multiset), in memory and written at each checkpoint",
                super::manager::JOIN_OPERATOR
            ));
            lines.push("  Stateless (DataFusion, per batch):".into());
            push_plan(&mut lines, self.lower.as_ref());
        }
        if let Some(Combined {
            op: Combine::Asof(plan),
            inputs,
        }) = &self.combined
        {
            let keys = equal_keys(&plan.keys);
            let time = |i: usize| event_time(&inputs[i].source);
            lines.push(format!(
                "ASOF join ({}) of {} and {} on [{}]: each {} row with the latest {} row at {} {}",
                plan.join_type.to_string().to_uppercase(),
                inputs[0].source.name,
                inputs[1].source.name,
                keys,
                inputs[0].source.name,
                inputs[1].source.name,
                if plan.strict { "<" } else { "<=" },
                time(0),
            ));
            lines.push(format!(
                "  state: table {}, left rows until the watermark (the minimum of both inputs') \
                 passes them, right rows ahead of it and the latest behind it per key",
                super::manager::JOIN_OPERATOR,
            ));
            lines.push("  Stateless (DataFusion, per batch):".into());
            push_plan(&mut lines, self.lower.as_ref());
        }
        if let Some((join, plan)) = self.combined.as_ref().and_then(|c| Some((c, c.join()?))) {
            let keys = equal_keys(&plan.keys);
            let time = |i: usize| event_time(&join.inputs[i].source);
            lines.push(format!(
                "Interval join ({}) of {} and {} on [{}]: {} - {} within [{}, {}]",
                plan.join_type.to_string().to_uppercase(),
                join.inputs[0].source.name,
                join.inputs[1].source.name,
                keys,
                time(1),
                time(0),
                seconds(plan.lower_us),
                seconds(plan.upper_us),
            ));
            lines.push(format!(
                "  state: table {}, rows of both inputs by (key, time) until the watermark (the \
                 minimum of both inputs') passes their bound, when unmatched outer rows are \
                 emitted; output watermark {} behind",
                super::manager::JOIN_OPERATOR,
                seconds(plan.delay_us()),
            ));
            lines.push("  Stateless (DataFusion, per batch):".into());
            push_plan(&mut lines, self.lower.as_ref());
        }
        for (join, segment) in &self.lookups {
            let key: Vec<String> = join
                .table
                .primary_key
                .iter()
                .zip(&join.key_exprs)
                .map(|(&c, e)| format!("{} = {e}", join.table.columns[c].name))
                .collect();
            lines.push(format!(
                "  Lookup join ({}): {} by primary key ({}), read per batch at processing time; no state",
                if join.outer { "LEFT" } else { "INNER" },
                join.table.name,
                key.join(", ")
            ));
            lines.push("  Stateless (DataFusion, per batch):".into());
            push_plan(&mut lines, segment.plan.as_ref());
        }
        if let Some((over, segment)) = &self.over {
            let keys: Vec<String> = over.partition_by.iter().map(|e| e.to_string()).collect();
            lines.push(format!(
                "  Over: partition by [{}], order by {} (event time); rows are emitted once the watermark passes them",
                keys.join(", "),
                over.input.field(over.time_column).name()
            ));
            lines.push(format!(
                "    state: table {}, rows per partition: pending ones and history (last {} rows, {} µs)",
                super::manager::OVER_OPERATOR,
                over.keep_rows,
                over.keep_us
            ));
            if partitions > 1 && self.aggregate.is_none() {
                lines.push(format!(
                    "    partitions: {partitions} (rows exchanged by a hash of the PARTITION BY key; \
                     each partition also runs the plan after it)"
                ));
            }
            push_plan(&mut lines, over.window.as_ref());
            lines.push("  Stateless (DataFusion, per batch):".into());
            push_plan(&mut lines, segment.plan.as_ref());
        }
        if let Some((m, segment)) = &self.matcher {
            lines.push(format!("  MatchRecognize: {}", m.describe()));
            lines.push(format!(
                "    state: table {}, rows the watermark has not passed, and per partition its \
                 open match attempts and the rows they read; timers on the watermark",
                super::manager::MATCH_OPERATOR
            ));
            lines.push("  Stateless (DataFusion, per batch):".into());
            push_plan(&mut lines, segment.plan.as_ref());
        }
        if let Some((top, segment)) = &self.top {
            push_top(&mut lines, top, segment);
        }
        if let Some(agg) = &self.aggregate {
            let groups: Vec<&str> = agg.group_exprs.iter().map(|(_, n)| n.as_str()).collect();
            let aggs: Vec<&str> = agg.aggr_exprs.iter().map(|a| a.name()).collect();
            lines.push(format!(
                "  Aggregate: group by [{}]; aggregates [{}]",
                groups.join(", "),
                aggs.join(", ")
            ));
            lines.push(format!(
                "    state: table {}, accumulators by group key (in memory while they change; \
                 past state_cache, read back from RocksDB)",
                super::manager::AGGREGATE_OPERATOR
            ));
            if let Some(hop) = agg.panes() {
                lines.push(format!(
                    "    panes: a group per key and {} s slide of event time; each window of \
                     {} s is merged from its {} panes when it closes",
                    hop.slide as f64 / 1e6,
                    hop.size as f64 / 1e6,
                    hop.size / hop.slide
                ));
            }
            if partitions > 1 {
                let key = match agg.panes().is_some() {
                    true => "the group key without the window",
                    false => "the group key",
                };
                lines.push(format!(
                    "    partitions: {partitions} (rows exchanged by a hash of {key}; \
                     each partition owns a range of its key groups)"
                ));
            }
            if agg.retract {
                lines.push(
                    "    retracts: deleted input rows are taken back (MIN/MAX keep their values); \
                     a group with no rows left is deleted"
                        .into(),
                );
            }
            match (&agg.window, emit_on_close) {
                (Some(_), true) => lines.push(
                    "    emit: on window close (a window's row is written when the watermark passes its end)".into(),
                ),
                (Some(_), false) => lines.push("    emit: on update (windows update until they close)".into()),
                (None, _) => lines.push("    emit: on update".into()),
            }
            match (&agg.top, emit_on_close) {
                (Some(top), false) => {
                    lines.push(format!(
                        "  Group changes: each changed group's old row deleted, its new row \
                         inserted; state: table {}, each group's row last passed on",
                        super::manager::GROUP_CHANGES_OPERATOR
                    ));
                    lines.push("  Stateless (DataFusion, per batch):".into());
                    push_plan(&mut lines, top.below.plan.as_ref());
                    push_top(&mut lines, &top.top, &top.above);
                }
                _ => {
                    if let Some(segment) = &agg.upper_segment {
                        lines.push(
                            "  Window functions over each closed window's rows (DataFusion):"
                                .into(),
                        );
                        push_plan(&mut lines, segment.plan.as_ref());
                    }
                }
            }
            for stage in &agg.upper {
                match stage {
                    UpperStage::Filter(p, _) => lines.push(format!("  Filter: {p}")),
                    UpperStage::Project(exprs, _) => {
                        let e: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
                        lines.push(format!("  Project: {}", e.join(", ")))
                    }
                }
            }
        }
        lines.push(format!("  Sink: {sink}"));
        lines.push(
            "  Checkpoint: state + source offsets + watermark in one RocksDB batch per epoch"
                .into(),
        );
        lines
    }
}
