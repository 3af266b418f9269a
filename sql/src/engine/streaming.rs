//! Execution of Eddy's streaming DDL: CREATE/DROP/SHOW of sources, streams and materialized
//! views, and EXPLAIN of a continuous query.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::physical_plan::expressions::Column;
use datafusion::sql::sqlparser::ast::ColumnOption;
use eddy_connectors::{Options, SourceSpec};

use super::ddl::ident;
use super::session::{CommandTag, QueryOutput, Session, rows, text_rows};
use super::statement::{CreateQuery, CreateSource, EddyStatement, ObjectKind};
use crate::catalog::{
    ColumnDef, DEFAULT_SCHEMA, QueryInfo, SourceInfo, TableDef, TableKind, WatermarkDef,
};
use crate::error::{Error, Result, sqlstate};
use crate::stream::manager::{declared_schema, option_ms, option_u64, watermark_expr};
use crate::stream::plan::{self, PipelinePlan, UpperStage};
use crate::types::SqlType;

pub fn result_schema(statement: &EddyStatement) -> Option<SchemaRef> {
    match statement {
        EddyStatement::Show(ObjectKind::Model) => Some(super::models::catalog_schema()),
        EddyStatement::Show(kind) => Some(show_schema(*kind)),
        EddyStatement::Explain(_) => Some(Arc::new(Schema::new(vec![Field::new(
            "QUERY PLAN",
            DataType::Utf8,
            false,
        )]))),
        _ => None,
    }
}

pub async fn execute(session: &Session, statement: &EddyStatement) -> Result<QueryOutput> {
    Ok(QueryOutput::Command(match statement {
        EddyStatement::Subscribe(s) => return super::subscribe::start(session, s).await,
        EddyStatement::DeclareCursor(d) => return super::cursors::declare(session, d).await,
        EddyStatement::CreateSource(s) => create_source(session, s)?,
        EddyStatement::CreateModel(m) => super::models::create(session, m).await?,
        EddyStatement::Show(ObjectKind::Model) => return super::models::show(session),
        EddyStatement::AlterModel { name, action } => super::models::alter(session, name, *action)?,
        EddyStatement::Drop {
            kind: ObjectKind::Model,
            names,
            if_exists,
            cascade,
        } => {
            for n in names {
                super::models::drop(session, n, *if_exists, *cascade)?;
            }
            CommandTag::new("DROP MODEL")
        }
        EddyStatement::CreateQuery(q) => create_query(session, q).await?,
        EddyStatement::AlterSequence(a) => super::sequences::alter(session, a)?,
        EddyStatement::Drop {
            kind,
            names,
            if_exists,
            cascade,
        } => drop(session, *kind, names, *if_exists, *cascade)?,
        EddyStatement::Show(kind) => return show(session, *kind),
        EddyStatement::Explain(q) => {
            let catalog = session.view().catalog();
            let mut query = q.query.clone();
            super::models::resolve_named_features(&mut query, &catalog)?;
            let models = session.engine().models.source_in(catalog.clone());
            let (_, udfs) = session
                .engine()
                .streams
                .model_functions(&Default::default(), Some(models));
            let plan = plan::plan_with(&catalog, &query, &udfs, &q.options).await?;
            let windowed = plan.aggregate.as_ref().is_some_and(|a| a.window.is_some());
            let emit_on_close = emit_on_close(q, &plan, windowed)?;
            let plan = match emit_on_close {
                true => plan.with_panes()?,
                false => plan,
            };
            let sink = match q.kind {
                ObjectKind::Stream => format!("stream {} (rows keyed by output sequence)", q.name),
                ObjectKind::Sink if plan.updates() && plan.aggregate.is_none() => format!(
                    "sink {} (the view's changes: inserted rows; to a keyed Kafka topic also \
                     deleted rows, as tombstones)",
                    q.name
                ),
                ObjectKind::Sink => format!("sink {}", q.name),
                _ => format!("materialized view {} ({})", q.name, key_description(&plan)),
            };
            let requested = crate::stream::manager::option_parallelism(&q.options)?
                .unwrap_or(session.engine().streams.parallelism());
            let partitions = plan.partitions(requested);
            return text_rows("QUERY PLAN", plan.explain(emit_on_close, &sink, partitions));
        }
    }))
}

fn streaming_schema(schema: &str) -> Result<()> {
    if schema != DEFAULT_SCHEMA {
        return Err(Error::not_supported(
            "sources, streams and materialized views outside schema public",
        ));
    }
    Ok(())
}

fn invalid(message: impl Into<String>) -> Error {
    Error::user(sqlstate::INVALID_PARAMETER_VALUE, message)
}

fn create_source(session: &Session, s: &CreateSource) -> Result<CommandTag> {
    let tag = CommandTag::new("CREATE SOURCE");
    let (schema, name) = session.qualify(&s.name)?;
    streaming_schema(&schema)?;
    let catalog = session.view().catalog();
    if catalog.relation(&schema, &name).is_some() && s.if_not_exists {
        return Ok(tag);
    }
    let mut options =
        Options::new(s.options.iter().cloned()).map_err(|e| invalid(e.to_string()))?;
    let connector = options.take("connector").map(|c| c.to_ascii_lowercase());
    let keep_late = match options
        .take("late_events")
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("drop") => false,
        Some("table") => true,
        Some(other) => {
            return Err(invalid(format!(
                "invalid value for option \"late_events\": \"{other}\" (expected drop or table)"
            )));
        }
    };
    if keep_late && s.watermark.is_none() {
        return Err(invalid("late_events = 'table' needs a WATERMARK"));
    }
    if let Some(v) = options.take("watermark.idle_timeout") {
        if eddy_connectors::options::parse_duration(&v).is_none_or(|d| d.is_zero()) {
            return Err(invalid(format!(
                "invalid value for option \"watermark.idle_timeout\": \"{v}\" (expected e.g. 10s)"
            )));
        }
        if s.watermark.is_none() {
            return Err(invalid("watermark.idle_timeout needs a WATERMARK"));
        }
    }
    let connector = match connector.as_deref() {
        None | Some("none") | Some("push") => None,
        Some(c) => Some(c.to_string()),
    };
    let mut columns: Vec<ColumnDef> = Vec::new();
    for c in &s.columns {
        let col_name = ident(&c.name);
        if columns.iter().any(|d| d.name == col_name) {
            return Err(Error::user(
                "42701",
                format!("column \"{col_name}\" specified more than once"),
            ));
        }
        let mut def = ColumnDef {
            name: col_name,
            ty: SqlType::from_ast(&c.data_type)?,
            nullable: true,
            default: None,
            identity: None,
            comment: None,
        };
        for opt in &c.options {
            match &opt.option {
                ColumnOption::Null => def.nullable = true,
                ColumnOption::NotNull => def.nullable = false,
                other => {
                    return Err(Error::not_supported(format!(
                        "column constraint {other} on a source"
                    )));
                }
            }
        }
        columns.push(def);
    }
    if columns.is_empty() {
        match connector.as_deref() {
            Some("nexmark") => {
                let table =
                    eddy_connectors::nexmark::parse_table(options.get("table").unwrap_or("bid"))
                        .map_err(|e| invalid(e.to_string()))?;
                for f in eddy_connectors::nexmark::table_schema(table).fields() {
                    columns.push(ColumnDef {
                        name: f.name().clone(),
                        ty: SqlType::from_arrow(f)?,
                        nullable: f.is_nullable(),
                        default: None,
                        identity: None,
                        comment: None,
                    });
                }
            }
            _ => {
                return Err(Error::user(
                    sqlstate::INVALID_TABLE_DEFINITION,
                    format!("source \"{name}\" needs a column list"),
                ));
            }
        }
    }
    let watermark = match &s.watermark {
        None => None,
        Some((col, expr)) => {
            let column = ident(col);
            let c = columns.iter().find(|c| c.name == column).ok_or_else(|| {
                Error::user(
                    sqlstate::UNDEFINED_COLUMN,
                    format!("column \"{column}\" of the WATERMARK does not exist"),
                )
            })?;
            if !matches!(c.ty, SqlType::Timestamp | SqlType::Timestamptz) {
                return Err(Error::user(
                    sqlstate::DATATYPE_MISMATCH,
                    format!(
                        "WATERMARK column \"{column}\" must be a timestamp, not {}",
                        c.ty.pg_name()
                    ),
                ));
            }
            Some(WatermarkDef {
                column,
                expr: expr.to_string(),
            })
        }
    };
    let created_at_ms = chrono::Utc::now().timestamp_millis();
    let probe = TableDef::new(0, schema.clone(), name.clone(), columns.clone(), Vec::new());
    if let Some(w) = &watermark {
        let (expr, _) = watermark_expr(&probe, &w.expr, &w.column)?;
        let ty = expr.data_type(&probe.arrow_schema())?;
        if !matches!(ty, DataType::Timestamp(TimeUnit::Microsecond, _)) {
            return Err(Error::user(
                sqlstate::DATATYPE_MISMATCH,
                format!("WATERMARK expression must give a timestamp, not {ty}"),
            ));
        }
    }
    if let Some(c) = &connector {
        let spec = SourceSpec {
            name: name.clone(),
            schema: declared_schema(&probe),
            options: options.clone(),
            created_at_ms,
        };
        eddy_connectors::validate_source(c, &spec).map_err(|e| match e {
            eddy_connectors::Error::Options(m) => invalid(m),
            other => Error::connector(format_args!("source \"{name}\""), other),
        })?;
    } else {
        let mut o = options.clone();
        o.take("max_event_bytes");
        o.finish().map_err(|e| {
            invalid(format!(
                "{e} (a source without a connector takes no options)"
            ))
        })?;
    }
    let errors_name = format!("{name}_errors");
    let late_name = format!("{name}_late");
    let late_columns: Vec<ColumnDef> = columns
        .iter()
        .map(|c| ColumnDef {
            nullable: true,
            ..c.clone()
        })
        .chain(crate::stream::view::late_event_columns())
        .collect();
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let catalog = txn.catalog_mut(&current);
    if keep_late && catalog.relation(&schema, &late_name).is_some() {
        return Err(Error::user(
            sqlstate::DUPLICATE_TABLE,
            format!(
                "relation \"{late_name}\" already exists (a source keeps its late events there)"
            ),
        ));
    }
    if catalog.relation(&schema, &errors_name).is_some() {
        return Err(Error::user(
            sqlstate::DUPLICATE_TABLE,
            format!(
                "relation \"{errors_name}\" already exists (a source keeps its bad events there)"
            ),
        ));
    }
    let errors_id = catalog.next_id() + 1;
    let info = SourceInfo {
        connector,
        options: s.options.clone(),
        watermark,
        created_at_ms,
        errors_table: errors_id,
    };
    let (_, mut ops) =
        catalog.create_relation(&schema, &name, columns, Vec::new(), TableKind::Source(info))?;
    let (errors, more) = catalog.create_relation(
        &schema,
        &errors_name,
        crate::stream::view::dead_letter_columns(),
        vec![0, 1],
        TableKind::DeadLetters {
            source: name.clone(),
        },
    )?;
    debug_assert_eq!(errors.id, errors_id);
    ops.extend(more);
    if keep_late {
        let n = late_columns.len();
        let (_, more) = catalog.create_relation(
            &schema,
            &late_name,
            late_columns,
            vec![n - 3, n - 2],
            TableKind::LateEvents {
                source: name.clone(),
            },
        )?;
        ops.extend(more);
    }
    txn.push_ops(ops);
    Ok(tag)
}

/// Whether windows of this query emit only when closed.
fn emit_on_close(q: &CreateQuery, plan: &PipelinePlan, windowed: bool) -> Result<bool> {
    let on_close = emit_mode(q, plan, windowed)?;
    if let Some(agg) = &plan.aggregate
        && let Some(segment) = &agg.upper_segment
    {
        match (on_close, &agg.top) {
            // Closed windows' rows, ranked per window once.
            (true, _) => plan::check_per_window(segment)?,
            // A top-N over the groups' changes.
            (false, Some(_)) => {}
            (false, None) => {
                return Err(Error::user(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "window functions over an aggregation rank its rows within a bound (WHERE \
                     rn <= n around row_number(), rank() or dense_rank(), or ORDER BY ... \
                     LIMIT n), or run over windows emitted once, when they close: GROUP BY \
                     window_start or window_end of TUMBLE or HOP, a WATERMARK, and EMIT ON \
                     WINDOW CLOSE",
                ));
            }
        }
    }
    Ok(on_close)
}

fn emit_mode(q: &CreateQuery, plan: &PipelinePlan, windowed: bool) -> Result<bool> {
    let has_watermark = plan.source.source().is_some_and(|s| s.watermark.is_some());
    let session = plan.aggregate.as_ref().is_some_and(|a| a.session.is_some());
    if session && (q.emit_on_close == Some(false) || !has_watermark) {
        return Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "SESSION windows emit when they close: they need EMIT ON WINDOW CLOSE and a WATERMARK on source \"{}\"",
                plan.source.name
            ),
        ));
    }
    match q.emit_on_close {
        Some(true) if q.kind == ObjectKind::Stream => Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "EMIT ON WINDOW CLOSE applies to materialized views",
        )),
        Some(true) if !windowed => Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "EMIT ON WINDOW CLOSE needs a GROUP BY on window_start or window_end of TUMBLE or HOP",
        )),
        Some(true) if !has_watermark => Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "EMIT ON WINDOW CLOSE needs a WATERMARK on source \"{}\": without one no window ever closes",
                plan.source.name
            ),
        )),
        Some(e) => Ok(e),
        None => Ok(windowed && has_watermark),
    }
}

/// Output columns that are unchanged copies of the group columns, if all of them are.
fn group_key_columns(plan: &PipelinePlan) -> Option<Vec<usize>> {
    let agg = plan.aggregate.as_ref()?;
    if agg.upper_segment.is_some() {
        // Rows come out of window functions: keyed by the whole row.
        return None;
    }
    let groups = agg.group_exprs.len();
    if groups == 0 {
        return None;
    }
    // copy_of[i] = Some(g): column i is group column g.
    let mut copy_of: Vec<Option<usize>> = (0..agg.schema.fields().len())
        .map(|i| (i < groups).then_some(i))
        .collect();
    for stage in &agg.upper {
        match stage {
            UpperStage::Filter(_, Some(p)) => copy_of = p.iter().map(|&i| copy_of[i]).collect(),
            UpperStage::Filter(_, None) => {}
            UpperStage::Project(exprs, _) => {
                copy_of = exprs
                    .iter()
                    .map(|e| {
                        e.downcast_ref::<Column>()
                            .and_then(|c| copy_of.get(c.index()).copied().flatten())
                    })
                    .collect()
            }
        }
    }
    (0..groups)
        .map(|g| copy_of.iter().position(|c| *c == Some(g)))
        .collect()
}

fn key_description(plan: &PipelinePlan) -> String {
    match (group_key_columns(plan), &plan.aggregate) {
        (Some(cols), _) => {
            let names: Vec<&str> = cols
                .iter()
                .map(|&c| plan.output.field(c).name().as_str())
                .collect();
            format!("primary key ({})", names.join(", "))
        }
        // Ranked rows (per window, or a top-N of groups) are stored by their values.
        (None, Some(a)) if a.upper_segment.is_some() => {
            "rows keyed by their values (a multiset)".into()
        }
        (None, Some(_)) => "rows keyed by group".into(),
        (None, None) if plan.updates() => "rows keyed by their values (a multiset)".into(),
        (None, None) => "rows keyed by output sequence".into(),
    }
}

/// Whether the rows of `view` change after they are written (upserts by the view's key, for
/// a keyed Kafka topic) rather than being appended once (rows of a query over events, or
/// windows written when they close), for a sink that reads the view. Views whose changing rows
/// have no key are refused: a sink could not say which row a change replaces.
async fn view_rows_change(
    catalog: &crate::catalog::Catalog,
    view: &TableDef,
    udfs: &[Arc<datafusion::logical_expr::ScalarUDF>],
) -> Result<bool> {
    let TableKind::MaterializedView(info) = &view.kind else {
        return Ok(false);
    };
    let plan =
        plan::plan_with(catalog, &plan::parse_query(&info.sql)?, udfs, &info.options).await?;
    let changes = match &plan.aggregate {
        Some(agg) => crate::stream::sinks::emits_updates(agg, info.emit_on_close),
        None => plan.updates(),
    };
    if changes && view.primary_key.is_empty() {
        return Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "sinks do not take the rows of \"{}\" yet: they change without a GROUP BY key \
                 (a top-N, or a join or query over an updating view); query the materialized \
                 view instead",
                view.name
            ),
        ));
    }
    Ok(changes)
}

async fn create_query(session: &Session, q: &CreateQuery) -> Result<CommandTag> {
    let tag = CommandTag::new(format!("CREATE {}", q.kind.sql()));
    let (schema, name) = session.qualify(&q.name)?;
    streaming_schema(&schema)?;
    let catalog = session.view().catalog();
    if catalog.relation(&schema, &name).is_some() && q.if_not_exists {
        return Ok(tag);
    }
    // Named PREDICT features are resolved now, so the stored query keeps this order.
    let mut query = q.query.clone();
    // A sink of a materialized view reads the view: its rows in order, or its changelog.
    let mut sunk_view: Option<Arc<TableDef>> = None;
    if q.kind == ObjectKind::Sink {
        for relation in plan::relations(&query) {
            let Some(view) = catalog.table(&schema, &relation) else {
                continue;
            };
            if !matches!(view.kind, TableKind::MaterializedView(_)) {
                continue;
            }
            if query.to_string() != format!("SELECT * FROM {relation}") {
                return Err(Error::not_supported(format!(
                    "a query over materialized view \"{relation}\" in a sink (sink the whole view: CREATE SINK {name} FROM {relation} WITH (...))"
                )));
            }
            sunk_view = Some(view);
        }
    }
    super::models::resolve_named_features(&mut query, &catalog)?;
    let source = session.engine().models.source_in(catalog.clone());
    let (models, udfs) = session
        .engine()
        .streams
        .model_functions(&Default::default(), Some(source));
    let plan = plan::plan_with(&catalog, &query, &udfs, &q.options).await?;
    let windowed = plan.aggregate.as_ref().is_some_and(|a| a.window.is_some());
    if q.kind == ObjectKind::Stream && plan.top.is_some() {
        return Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "a stream is append-only, and a top-N's rows change (a better row pushes one out): \
             use CREATE MATERIALIZED VIEW, or rank within windows of an aggregate",
        ));
    }
    if q.kind == ObjectKind::Stream && plan.updates() && plan.aggregate.is_none() {
        return Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "a stream is append-only, and \"{}\" is a view whose rows change: use CREATE MATERIALIZED VIEW",
                plan.source.name
            ),
        ));
    }
    // Whether the rows a sink of a view gets change (upserts by the view's key).
    let view_rows_change = match &sunk_view {
        Some(view) => Some(view_rows_change(&catalog, view, &udfs).await?),
        None => None,
    };
    if q.kind == ObjectKind::Sink
        && sunk_view.is_none()
        && plan.updates()
        && plan.aggregate.is_none()
    {
        // Only an aggregate's updates have a key a sink can send them by.
        return Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "sinks do not take rows that change without a GROUP BY key yet (a top-N, or a \
             query over an updating view): query the materialized view instead",
        ));
    }
    if q.kind == ObjectKind::Stream && plan.aggregate.is_some() {
        return Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "a stream is append-only: use CREATE MATERIALIZED VIEW for GROUP BY and aggregates",
        ));
    }
    let emit_on_close = match sunk_view.as_ref().map(|v| &v.kind) {
        Some(TableKind::MaterializedView(info)) => info.emit_on_close,
        _ => emit_on_close(q, &plan, windowed)?,
    };
    let ranks_groups = plan.aggregate.as_ref().is_some_and(|a| a.top.is_some());
    if q.kind == ObjectKind::Sink && ranks_groups && !emit_on_close {
        return Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "sinks do not take a top-N of groups that update yet: query the materialized \
             view instead, or rank windows emitted when they close",
        ));
    }
    let mut options =
        Options::new(q.options.iter().cloned()).map_err(|e| invalid(e.to_string()))?;
    option_ms(&q.options, "checkpoint_interval")?;
    options.take("checkpoint_interval");
    options.take("state_ttl");
    crate::stream::manager::option_parallelism(&q.options)?;
    options.take("parallelism");
    if q.kind == ObjectKind::Stream {
        option_u64(&q.options, "retention_rows")?;
        options.take("retention_rows");
    }
    let mut webhook_errors = None;
    if q.kind == ObjectKind::Sink {
        use crate::stream::sinks::{SinkConfig, SinkTarget};
        // The sink reads all its options; nothing is left for the generic check.
        options = Options::default();
        // An aggregate that updates its rows (not windows emitted when they close) needs a
        // target that can take updates: a keyed Kafka topic.
        let updating = view_rows_change.unwrap_or_else(|| {
            plan.aggregate
                .as_ref()
                .is_some_and(|a| crate::stream::sinks::emits_updates(a, emit_on_close))
        });
        let config = SinkConfig::from_options(&name, &q.options)?;
        if updating && !matches!(config, SinkConfig::Kafka(_)) {
            return Err(Error::not_supported(format!(
                "a {} sink of an aggregate whose rows update: Parquet files and webhooks take rows once; sink windows that emit when they close (EMIT ON WINDOW CLOSE, with a WATERMARK), or use connector = 'kafka' with key = '…'",
                config.connector()
            )));
        }
        match config {
            SinkConfig::Parquet(p) => {
                p.partitioning
                    .check(&plan.output)
                    .map_err(|e| invalid(e.to_string()))?;
                match &p.target {
                    SinkTarget::Local(path) => {
                        // Only a new, empty or already its own directory: recovery lists
                        // and deletes files there.
                        eddy_connectors::parquet_sink::check_directory(path, &name)
                            .map_err(|e| invalid(e.to_string()))?;
                        std::fs::create_dir_all(path).map_err(|e| {
                            invalid(format!(
                                "cannot create the sink directory {}: {e}",
                                path.display()
                            ))
                        })?;
                    }
                    SinkTarget::Remote { url, settings } => {
                        // Checks the settings (unknown keys are errors); credentials stay
                        // in the catalog for the uploads and show as *** in SHOW output.
                        eddy_connectors::store::open(url, settings).map_err(invalid)?;
                    }
                }
            }
            SinkConfig::Kafka(k) => {
                if updating && k.key_column.is_none() {
                    return Err(invalid(
                        "this sink's rows change as the aggregate updates them: name the group column they are keyed by with key = '…' (an upsert topic, deleted rows as tombstones)",
                    ));
                }
                if let Some(c) = &k.key_column
                    && plan.output.field_with_name(c).is_err()
                {
                    return Err(invalid(format!(
                        "key: column \"{c}\" does not exist in the sink's rows"
                    )));
                }
            }
            SinkConfig::Notify { .. } => {}
            SinkConfig::Webhook(w) => {
                if let Some(c) = &w.key_column
                    && plan.output.field_with_name(c).is_err()
                {
                    return Err(invalid(format!(
                        "idempotency_key: column \"{c}\" does not exist in the sink's rows"
                    )));
                }
                let errors_name = format!("{name}_errors");
                if catalog.relation(&schema, &errors_name).is_some() {
                    return Err(Error::user(
                        sqlstate::DUPLICATE_TABLE,
                        format!(
                            "relation \"{errors_name}\" already exists (a webhook sink keeps the requests that failed there)"
                        ),
                    ));
                }
                webhook_errors = Some(errors_name);
            }
        }
    }
    options.finish().map_err(|e| invalid(e.to_string()))?;
    let mut columns: Vec<ColumnDef> = Vec::new();
    for f in plan.output.fields() {
        if columns.iter().any(|c| &c.name == f.name()) {
            return Err(Error::user(
                "42701",
                format!(
                    "column \"{}\" specified more than once (name the columns with AS)",
                    f.name()
                ),
            ));
        }
        columns.push(ColumnDef {
            name: f.name().clone(),
            ty: SqlType::from_arrow(f)?,
            nullable: true,
            default: None,
            identity: None,
            comment: None,
        });
    }
    let primary_key = group_key_columns(&plan).unwrap_or_default();
    let depends_on: Vec<String> = plan::relations(&query)
        .into_iter()
        .filter(|n| {
            catalog.table(DEFAULT_SCHEMA, n).is_some_and(|t| {
                matches!(
                    t.kind,
                    TableKind::Source(_)
                        | TableKind::Stream(_)
                        | TableKind::Table
                        | TableKind::MaterializedView(_)
                )
            })
        })
        .collect();
    let info = QueryInfo {
        sql: query.to_string(),
        depends_on,
        models: models.pinned().into_keys().collect(),
        emit_on_close,
        options: q.options.clone(),
        panes: emit_on_close && plan.allows_panes(),
    };
    let kind = match q.kind {
        ObjectKind::Stream => TableKind::Stream(info),
        ObjectKind::Sink => TableKind::Sink(info),
        _ => TableKind::MaterializedView(info),
    };
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let catalog = txn.catalog_mut(&current);
    let (_, mut ops) = catalog.create_relation(&schema, &name, columns, primary_key, kind)?;
    if let Some(errors_name) = webhook_errors {
        let (_, more) = catalog.create_relation(
            &schema,
            &errors_name,
            crate::stream::view::failed_request_columns(),
            vec![0],
            TableKind::DeadLetters {
                source: name.clone(),
            },
        )?;
        ops.extend(more);
    }
    txn.push_ops(ops);
    Ok(tag)
}

fn kind_matches(kind: ObjectKind, t: &TableKind) -> bool {
    matches!(
        (kind, t),
        (ObjectKind::Source, TableKind::Source(_))
            | (ObjectKind::Stream, TableKind::Stream(_))
            | (ObjectKind::MaterializedView, TableKind::MaterializedView(_))
            | (ObjectKind::Sink, TableKind::Sink(_))
    )
}

fn drop(
    session: &Session,
    kind: ObjectKind,
    names: &[datafusion::sql::sqlparser::ast::ObjectName],
    if_exists: bool,
    cascade: bool,
) -> Result<CommandTag> {
    for n in names {
        let (schema, name) = session.qualify(n)?;
        let current = session.engine().catalog();
        let mut txn = session.txn().lock();
        let catalog = txn.catalog_mut(&current);
        let Some(def) = catalog.table(&schema, &name) else {
            if if_exists {
                continue;
            }
            return Err(Error::user(
                sqlstate::UNDEFINED_OBJECT,
                format!("{} \"{name}\" does not exist", kind.sql().to_lowercase()),
            ));
        };
        if !kind_matches(kind, &def.kind) {
            return Err(Error::user(
                sqlstate::WRONG_OBJECT_TYPE,
                format!("\"{name}\" is not a {}", kind.sql().to_lowercase()),
            )
            .with_detail(format!("\"{name}\" is a {}", def.kind.describe())));
        }
        let what = format!("{} {name}", kind.sql().to_lowercase());
        let readers = catalog.views_mentioning(&name);
        let mut ops = drop_dependents(catalog, &schema, readers, &what, "depends on", cascade)?;
        for owned in catalog.owned_by(&def) {
            ops.extend(catalog.drop_relation(&schema, &owned.name)?);
            session.engine().log.forget(owned.id);
        }
        ops.extend(catalog.drop_relation(&schema, &name)?);
        session.engine().log.forget(def.id);
        txn.push_ops(ops);
    }
    Ok(CommandTag::new(format!("DROP {}", kind.sql())))
}

/// The writes that drop `readers` and everything that reads them, transitively, in drop
/// order; without CASCADE, error 2BP01 naming the first (`"{kind} {first} {relation}
/// {what}"`, e.g. "stream s scores with model m").
pub(super) fn drop_dependents(
    catalog: &mut crate::catalog::Catalog,
    schema: &str,
    readers: Vec<String>,
    what: &str,
    relation: &str,
    cascade: bool,
) -> Result<Vec<crate::storage::WriteOp>> {
    let mut doomed: Vec<String> = Vec::new();
    let mut queue = readers;
    while let Some(n) = queue.pop() {
        if doomed.contains(&n) {
            continue;
        }
        queue.extend(catalog.views_mentioning(&n));
        doomed.push(n);
    }
    if let Some(first) = doomed.first()
        && !cascade
    {
        let kind = catalog
            .table(schema, first)
            .map(|t| t.kind.describe())
            .unwrap_or("view");
        return Err(Error::user(
            sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
            format!("cannot drop {what} because other objects depend on it"),
        )
        .with_detail(format!(
            "{kind} {first} {relation} {what}. Use DROP ... CASCADE to drop the dependent objects too."
        )));
    }
    let mut ops = Vec::new();
    for d in doomed.iter().rev() {
        if catalog.relation(schema, d).is_some() {
            ops.extend(catalog.drop_relation(schema, d)?);
        }
    }
    Ok(ops)
}

/// `eddy_catalog.sinks`: each sink's connector and target, its last checkpoint, for
/// object-store targets the local spool of committed files not uploaded yet and how long the
/// oldest has waited, for webhooks the rows whose requests never succeeded, and the last
/// error.
pub fn sinks_batch(
    engine: &super::Engine,
    catalog: &crate::catalog::Catalog,
) -> Result<RecordBatch> {
    let int = |n: &str| Field::new(n, DataType::Int64, true);
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    let schema = Arc::new(Schema::new(vec![
        text("name"),
        text("connector"),
        text("target"),
        int("rows"),
        int("checkpoint_epoch"),
        int("spooled_files"),
        int("spooled_bytes"),
        int("upload_lag_ms"),
        int("uploaded_files"),
        int("failed_rows"),
        text("last_error"),
    ]));
    let mut sinks: Vec<&Arc<TableDef>> = catalog
        .tables()
        .filter(|t| matches!(t.kind, TableKind::Sink(_)))
        .collect();
    sinks.sort_by(|a, b| a.name.cmp(&b.name));
    let mut texts: [Vec<Option<String>>; 3] = Default::default();
    let mut nums: [Vec<Option<i64>>; 7] = Default::default();
    let mut errors = Vec::new();
    for d in sinks {
        let q = d.kind.query().expect("a sink is a query");
        let config = crate::stream::sinks::SinkConfig::from_options(&d.name, &q.options).ok();
        texts[0].push(Some(d.name.clone()));
        texts[1].push(config.as_ref().map(|c| c.connector().to_string()));
        texts[2].push(config.as_ref().map(|c| c.target()));
        let metrics = engine.streams.metrics(d.id);
        let remote = matches!(
            config,
            Some(crate::stream::sinks::SinkConfig::Parquet(ref p))
                if matches!(p.target, crate::stream::sinks::SinkTarget::Remote { .. })
        );
        let upload = metrics.as_ref().map(|m| m.upload.lock().clone());
        // The spool as it is now (the uploader's own count is as of its last pass).
        let spool = remote
            .then(|| eddy_connectors::parquet_sink::spool_usage(&engine.streams.spool_dir(d.id)));
        let load = |f: fn(&crate::stream::pipeline::Metrics) -> i64| metrics.as_deref().map(f);
        nums[0].push(load(|m| m.rows.load(Ordering::Relaxed) as i64));
        nums[1].push(load(|m| m.epoch.load(Ordering::Relaxed) as i64));
        nums[2].push(spool.map(|s| s.files as i64));
        nums[3].push(spool.map(|s| s.bytes as i64));
        nums[4].push(spool.map(|s| s.oldest.as_millis() as i64));
        nums[5].push(
            upload
                .as_ref()
                .filter(|_| remote)
                .map(|u| u.uploaded_files as i64),
        );
        nums[6].push(load(|m| m.dead_letters.load(Ordering::Relaxed) as i64));
        let failed = metrics.as_ref().and_then(|m| m.error.lock().clone());
        errors.push(failed.or(upload.and_then(|u| u.last_error)));
    }
    let mut columns: Vec<datafusion::arrow::array::ArrayRef> = Vec::new();
    for v in texts {
        columns.push(Arc::new(StringArray::from(v)));
    }
    for v in nums {
        columns.push(Arc::new(Int64Array::from(v)));
    }
    columns.push(Arc::new(StringArray::from(errors)));
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn show_schema(kind: ObjectKind) -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    let int = |n: &str| Field::new(n, DataType::Int64, true);
    Arc::new(Schema::new(match kind {
        ObjectKind::Source => vec![
            text("name"),
            text("connector"),
            text("columns"),
            text("watermark"),
            text("options"),
        ],
        _ => vec![
            text("name"),
            text("definition"),
            text("status"),
            int("events"),
            int("rows"),
            int("dead_letters"),
            int("late_events"),
            int("checkpoint_epoch"),
            text("watermark"),
        ],
    }))
}

fn show(session: &Session, kind: ObjectKind) -> Result<QueryOutput> {
    let catalog = session.view().catalog();
    let schema = show_schema(kind);
    let mut defs: Vec<&Arc<TableDef>> = catalog
        .tables()
        .filter(|t| kind_matches(kind, &t.kind))
        .collect();
    defs.sort_by(|a, b| a.name.cmp(&b.name));
    let text = |v: Vec<Option<String>>| Arc::new(StringArray::from(v)) as _;
    let batch = match kind {
        ObjectKind::Source => {
            let mut cols: [Vec<Option<String>>; 5] = Default::default();
            for d in &defs {
                let info = d.source().expect("a source");
                cols[0].push(Some(d.name.clone()));
                cols[1].push(Some(
                    info.connector.clone().unwrap_or_else(|| "push".into()),
                ));
                let c: Vec<String> = d
                    .columns
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.ty.pg_name()))
                    .collect();
                cols[2].push(Some(c.join(", ")));
                cols[3].push(
                    info.watermark
                        .as_ref()
                        .map(|w| format!("{} AS {}", w.column, w.expr)),
                );
                let options = Options::new(info.options.iter().cloned())
                    .map(|o| {
                        o.redacted()
                            .into_iter()
                            .map(|(k, v)| format!("{k} = '{v}'"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                cols[4].push(Some(options));
            }
            RecordBatch::try_new(schema.clone(), cols.into_iter().map(text).collect())?
        }
        _ => {
            let mut names = Vec::new();
            let mut sqls = Vec::new();
            let mut status = Vec::new();
            let mut nums: [Vec<Option<i64>>; 5] = Default::default();
            let mut watermarks = Vec::new();
            for d in &defs {
                let q = d.kind.query().expect("a query");
                names.push(Some(d.name.clone()));
                sqls.push(Some(crate::cep::syntax::restore(&q.sql)));
                let m = session.engine().streams.metrics(d.id);
                let st = match &m {
                    None => "stopped".to_string(),
                    Some(m) => match (m.running.load(Ordering::Relaxed), m.error.lock().clone()) {
                        (_, Some(e)) => format!("failed: {e}"),
                        (true, None) => "running".into(),
                        (false, None) => "starting".into(),
                    },
                };
                status.push(Some(st));
                let get = |f: fn(&crate::stream::pipeline::Metrics) -> u64| {
                    m.as_ref().map(|m| f(m) as i64)
                };
                nums[0].push(get(|m| m.events.load(Ordering::Relaxed)));
                nums[1].push(get(|m| m.rows.load(Ordering::Relaxed)));
                nums[2].push(get(|m| m.dead_letters.load(Ordering::Relaxed)));
                nums[3].push(get(|m| m.late_events.load(Ordering::Relaxed)));
                nums[4].push(get(|m| m.epoch.load(Ordering::Relaxed)));
                watermarks.push(m.as_ref().and_then(|m| *m.watermark.lock()).map(|w| {
                    chrono::DateTime::from_timestamp_micros(w)
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
                        .unwrap_or_default()
                }));
            }
            let mut columns = vec![text(names), text(sqls), text(status)];
            for n in nums {
                columns.push(Arc::new(Int64Array::from(n)) as _);
            }
            columns.push(text(watermarks));
            RecordBatch::try_new(schema.clone(), columns)?
        }
    };
    rows(schema, vec![batch])
}
