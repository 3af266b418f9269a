//! INSERT, UPDATE and DELETE: DataFusion plans them (typing parameters, casting values to the
//! column types, filling defaults, pushing key predicates into the scan); Eddy executes the
//! write itself, into the session's transaction, batch by batch.
//!
//! UPDATE and DELETE are planned against the target table with its hidden storage columns, so
//! each affected row arrives with its key and the bytes that were read: the transaction
//! records those bytes and commit verifies nobody changed the row meanwhile.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, UInt32Type};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::{DFSchema, TableReference};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{
    DmlStatement, Expr, ExprSchemable, LogicalPlan, Projection, WriteOp,
};
use datafusion::sql::sqlparser::ast::{
    self, AssignmentTarget, OnConflictAction, OnInsert, Statement,
};
use futures::StreamExt;

use super::constraints;
use super::ddl::ident;
use super::session::{CommandTag, Session};
use crate::catalog::{TableDef, TableKind};
use crate::codec::{ColumnRef, key, row};
use crate::error::{Error, Result, sqlstate, to_df};
use crate::table::KvTable;
use crate::types::SqlType;

/// The statement DataFusion plans, and the table whose storage columns it needs.
///
/// ON CONFLICT is taken off (Eddy applies it); an INSERT whose VALUES rows are shorter than
/// the table gets the leading columns named, so the rest take their defaults as in Postgres.
pub fn prepare_statement(
    statement: &Statement,
    session: &Session,
) -> Result<(Statement, Option<(String, String)>)> {
    let target = |name: &ast::ObjectName| session.qualify(name).ok();
    let mut stripped;
    let statement = if super::returning::items(statement).is_some() {
        stripped = statement.clone();
        super::returning::strip(&mut stripped);
        &stripped
    } else {
        statement
    };
    Ok(match statement {
        Statement::Insert(insert) => {
            let mut insert = insert.clone();
            insert.on = None;
            name_short_values(&mut insert, session)?;
            fill_default_keywords(&mut insert, session)?;
            nested_values_as_selects(&mut insert);
            (Statement::Insert(insert), None)
        }
        Statement::Update(update) => {
            let target = match &update.table.relation {
                ast::TableFactor::Table { name, .. } => target(name),
                _ => None,
            };
            (statement.clone(), target)
        }
        Statement::Delete(delete) => {
            let tables = match &delete.from {
                ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
            };
            let target = tables.first().and_then(|t| match &t.relation {
                ast::TableFactor::Table { name, .. } => target(name),
                _ => None,
            });
            (statement.clone(), target)
        }
        other => (other.clone(), None),
    })
}

/// DataFusion plans every VALUES list inside an INSERT's query with the target table's
/// columns, so `INSERT INTO t (a, b) SELECT p0, p1 FROM (VALUES (.., .., 0)) AS v(p0, p1, n)`
/// (SQLAlchemy's insertmanyvalues) fails on the list's third column. A VALUES list below the
/// top of the query becomes the equivalent `SELECT .. UNION ALL SELECT ..`; so does the top
/// list when an item is a subquery (DataFusion cannot run a subquery inside VALUES).
fn nested_values_as_selects(insert: &mut ast::Insert) {
    use ast::{SetExpr, VisitMut, VisitorMut};
    use std::ops::ControlFlow;
    let Some(source) = insert.source.as_mut() else {
        return;
    };
    if let SetExpr::Values(values) = source.body.as_ref() {
        let subquery = ast::visit_expressions(values, |e| match e {
            ast::Expr::Subquery(_) | ast::Expr::Exists { .. } | ast::Expr::InSubquery { .. } => {
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        });
        if subquery.is_continue() {
            return;
        }
    }
    struct Convert;
    impl VisitorMut for Convert {
        type Break = ();
        fn post_visit_query(&mut self, query: &mut ast::Query) -> ControlFlow<()> {
            let SetExpr::Values(values) = query.body.as_ref() else {
                return ControlFlow::Continue(());
            };
            let selects = values.rows.iter().map(|row| {
                let items = row
                    .content
                    .iter()
                    .enumerate()
                    .map(|(i, e)| ast::SelectItem::ExprWithAlias {
                        expr: e.clone(),
                        alias: ast::Ident::new(format!("column{}", i + 1)),
                    })
                    .collect::<Vec<_>>();
                let sql = format!(
                    "SELECT {}",
                    items
                        .iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
                datafusion::sql::sqlparser::parser::Parser::new(&dialect)
                    .try_with_sql(&sql)
                    .and_then(|mut p| p.parse_query())
                    .map(|q| *q.body)
            });
            let mut body: Option<SetExpr> = None;
            for select in selects {
                let Ok(select) = select else {
                    return ControlFlow::Continue(());
                };
                body = Some(match body {
                    None => select,
                    Some(left) => SetExpr::SetOperation {
                        op: ast::SetOperator::Union,
                        set_quantifier: ast::SetQuantifier::All,
                        left: Box::new(left),
                        right: Box::new(select),
                    },
                });
            }
            if let Some(body) = body {
                *query.body = body;
            }
            ControlFlow::Continue(())
        }
    }
    let _ = source.visit(&mut Convert);
}

/// `DEFAULT` in a VALUES list (what knex and ORMs send for a column one row of a multi-row
/// insert leaves out) is the column's default, or NULL; an identity column GENERATED ALWAYS
/// takes nothing else.
fn fill_default_keywords(insert: &mut ast::Insert, session: &Session) -> Result<()> {
    let ast::TableObject::TableName(name) = &insert.table else {
        return Ok(());
    };
    let Some(source) = insert.source.as_mut() else {
        return Ok(());
    };
    let ast::SetExpr::Values(values) = source.body.as_mut() else {
        return Ok(());
    };
    let Some((_, _, crate::catalog::Relation::Table(def))) = session.resolve(name)? else {
        return Ok(());
    };
    let is_default = |e: &ast::Expr| matches!(e, ast::Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"));
    let always = def
        .columns
        .iter()
        .any(|c| c.identity == Some(crate::catalog::Identity::Always));
    if !always && !values.rows.iter().any(|r| r.content.iter().any(is_default)) {
        return Ok(());
    }
    let columns: Vec<Option<usize>> = if insert.columns.is_empty() {
        (0..def.columns.len()).map(Some).collect()
    } else {
        insert
            .columns
            .iter()
            .map(|c| {
                super::ddl::name_parts(c)
                    .pop()
                    .and_then(|n| def.column_index(&n))
            })
            .collect()
    };
    let catalog = session.view().catalog();
    for row in &mut values.rows {
        for (i, e) in row.content.iter_mut().enumerate() {
            let Some(Some(at)) = columns.get(i) else {
                continue;
            };
            let column = &def.columns[*at];
            if !is_default(e) {
                if column.identity == Some(crate::catalog::Identity::Always) {
                    return Err(Error::user(
                        "428C9",
                        format!(
                            "cannot insert a non-DEFAULT value into column \"{}\"",
                            column.name
                        ),
                    )
                    .with_detail(format!(
                        "Column \"{}\" is an identity column defined as GENERATED ALWAYS.",
                        column.name
                    )));
                }
                continue;
            }
            let text = match column.identity {
                Some(_) => super::sequences::owned_sequence(&catalog, &def, &column.name)
                    .map(|s| super::sequences::nextval_default(&s.schema, &s.name)),
                None => column.default.clone(),
            };
            *e = match text {
                Some(sql) => {
                    super::ddl::parse_sql_expr(&super::sequences::plain_regclass_literals(&sql))
                        .map_err(|err| Error::internal(format!("stored default {sql}: {err}")))?
                }
                None => ast::Expr::value(ast::Value::Null),
            };
        }
    }
    Ok(())
}

fn name_short_values(insert: &mut ast::Insert, session: &Session) -> Result<()> {
    let (ast::TableObject::TableName(name), true) = (&insert.table, insert.columns.is_empty())
    else {
        return Ok(());
    };
    let Some(source) = &insert.source else {
        return Ok(());
    };
    let ast::SetExpr::Values(values) = source.body.as_ref() else {
        return Ok(());
    };
    let Some(width) = values.rows.iter().map(|r| r.len()).max() else {
        return Ok(());
    };
    let Some((_, _, crate::catalog::Relation::Table(def))) = session.resolve(name)? else {
        return Ok(());
    };
    if width < def.columns.len() {
        insert.columns = def.columns[..width]
            .iter()
            .map(|c| ast::ObjectName::from(vec![ast::Ident::with_quote('"', c.name.clone())]))
            .collect();
    }
    Ok(())
}

/// Casts of text literals to bytea, jsonb and uuid, read the way PostgreSQL reads them:
/// `'\\x00ff'::bytea` is two bytes (DataFusion would take the text's own bytes), jsonb is
/// validated and stored canonically, uuid validated and lower-cased.
pub fn pg_literal_casts(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::common::metadata::FieldMetadata;
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::scalar::ScalarValue;
    let rewrite = |e: Expr| -> datafusion::error::Result<Transformed<Expr>> {
        e.transform_up(|e| {
            let Expr::Cast(c) = &e else {
                return Ok(Transformed::no(e));
            };
            let Expr::Literal(ScalarValue::Utf8(Some(text)), _) = c.expr.as_ref() else {
                return Ok(Transformed::no(e));
            };
            let pg_type = c
                .field
                .metadata()
                .get(crate::types::PG_TYPE_KEY)
                .map(String::as_str);
            let value = match (c.field.data_type(), pg_type) {
                // '{a,b}'::text[]: PostgreSQL's array text.
                (DataType::List(item), _) => {
                    let items = crate::types::array_text_items(text).ok_or_else(|| {
                        to_df(crate::error::Error::user(
                            crate::error::sqlstate::INVALID_TEXT_REPRESENTATION,
                            format!("malformed array literal: \"{text}\""),
                        ))
                    })?;
                    let strings: Vec<ScalarValue> =
                        items.into_iter().map(ScalarValue::Utf8).collect();
                    let list = ScalarValue::new_list_nullable(&strings, &DataType::Utf8);
                    let array = datafusion::arrow::compute::cast(
                        &(list as datafusion::arrow::array::ArrayRef),
                        &DataType::List(item.clone()),
                    )?;
                    ScalarValue::try_from_array(&array, 0)?
                }
                (DataType::Binary, _) => {
                    ScalarValue::Binary(Some(parse_bytea(text).map_err(to_df)?))
                }
                (DataType::Utf8, Some("jsonb")) => {
                    ScalarValue::Utf8(Some(crate::types::jsonb_canonical(text).map_err(to_df)?))
                }
                (DataType::Utf8, Some("uuid")) => {
                    ScalarValue::Utf8(Some(crate::types::uuid_canonical(text).map_err(to_df)?))
                }
                _ => return Ok(Transformed::no(e)),
            };
            let metadata =
                (!c.field.metadata().is_empty()).then(|| FieldMetadata::from(c.field.metadata()));
            Ok(Transformed::yes(Expr::Literal(value, metadata)))
        })
    };
    let plan = plan
        .transform_up_with_subqueries(|p| p.map_expressions(rewrite))?
        .data;
    pg_text_casts(plan)
}

/// Casts of timestamps and floats to text print what PostgreSQL prints
/// (`2024-05-01 12:30:15.25`, `1e+20`), not Arrow's RFC 3339 and Rust float forms: they
/// become calls of `eddy_pg_text`.
fn pg_text_casts(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::ExprSchemable;
    let udf = super::pg_catalog::pg_text_udf();
    Ok(plan
        .transform_up_with_subqueries(|p| {
            let Some(schema) = p.inputs().first().map(|i| i.schema().clone()) else {
                return Ok(Transformed::no(p));
            };
            p.map_expressions(|e| {
                e.transform_up(|e| {
                    let Expr::Cast(c) = &e else {
                        return Ok(Transformed::no(e));
                    };
                    if !matches!(c.field.data_type(), DataType::Utf8 | DataType::Utf8View) {
                        return Ok(Transformed::no(e));
                    }
                    let from = c.expr.get_type(&schema).ok();
                    if !matches!(
                        from,
                        Some(DataType::Timestamp(..) | DataType::Float32 | DataType::Float64)
                    ) {
                        return Ok(Transformed::no(e));
                    }
                    let call = udf.call(vec![c.expr.as_ref().clone()]);
                    Ok(Transformed::yes(match c.field.data_type() {
                        DataType::Utf8 => call,
                        other => Expr::Cast(datafusion::logical_expr::Cast::new(
                            Box::new(call),
                            other.clone(),
                        )),
                    }))
                })
            })
        })?
        .data)
}

fn conflict_clause(statement: &Statement) -> Option<&ast::OnConflict> {
    match statement {
        Statement::Insert(ast::Insert {
            on: Some(OnInsert::OnConflict(c)),
            ..
        }) => Some(c),
        _ => None,
    }
}

pub async fn execute(
    session: &Session,
    dml: &DmlStatement,
    statement: &Statement,
    returning: Option<&[ast::SelectItem]>,
) -> Result<DmlOutput> {
    let provider = source_as_provider(&dml.target)?;
    let table = provider
        .downcast_ref::<KvTable>()
        .ok_or_else(|| Error::not_supported(format!("writing to {}", dml.table_name)))?;
    let def = table.def().clone();
    match (&def.kind, &dml.op) {
        (TableKind::Table, _) => {}
        (TableKind::Source(info), WriteOp::Insert(_)) => {
            if let Some(c) = &info.connector {
                return Err(Error::user(
                    sqlstate::WRONG_OBJECT_TYPE,
                    format!(
                        "cannot insert into source \"{}\": it reads from {c}",
                        def.name
                    ),
                )
                .with_detail("Only sources created without a connector accept INSERT."));
            }
            if returning.is_some() {
                return Err(Error::not_supported("INSERT ... RETURNING into a source"));
            }
            let tag = insert_events(session, &def, dml).await?;
            return Ok(DmlOutput {
                tag,
                schema: def.arrow_schema(),
                rows: Vec::new(),
            });
        }
        (TableKind::DeadLetters { .. } | TableKind::LateEvents { .. }, WriteOp::Delete) => {}
        (kind, op) => {
            return Err(Error::user(
                sqlstate::WRONG_OBJECT_TYPE,
                format!(
                    "cannot {} {} \"{}\"",
                    op.name().to_lowercase(),
                    kind.describe(),
                    def.name
                ),
            ));
        }
    }
    let input = match &dml.op {
        WriteOp::Insert(_) => keep_text_for_bytea(&dml.input, &def)?,
        _ => (*dml.input).clone(),
    };
    let df = DataFrame::new(session.ctx().state(), input);
    let mut stream = df.execute_stream().await?;
    let mut affected = 0;
    let catalog = session.view().catalog();
    let writer = Writer {
        session,
        def: &def,
        catalog: &catalog,
    };
    let referenced = !super::constraints::referencing_keys(&catalog, &def).is_empty();
    // The rows the statement wrote (or deleted), when RETURNING or a foreign key needs them.
    let keep = returning.is_some() || referenced;
    let mut written: Vec<Written> = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let out = match &dml.op {
            WriteOp::Insert(_) => {
                writer.insert(&batch, conflict_clause(statement), &dml.table_name)?
            }
            WriteOp::Update => writer.update(&batch)?,
            WriteOp::Delete => writer.delete(&batch)?,
            other => return Err(Error::not_supported(other.name())),
        };
        affected += out.rows();
        if keep {
            written.push(out);
        }
    }
    if referenced {
        for w in &written {
            super::constraints_actions::parent_changed(session, &catalog, &def, w).await?;
        }
    }
    let tag = match &dml.op {
        WriteOp::Insert(_) => CommandTag::new("INSERT 0").with_rows(affected),
        WriteOp::Update => CommandTag::new("UPDATE").with_rows(affected),
        _ => CommandTag::new("DELETE").with_rows(affected),
    };
    Ok(DmlOutput {
        tag,
        schema: def.arrow_schema(),
        rows: written.into_iter().filter_map(|w| w.returned()).collect(),
    })
}

/// What a DML statement did: its tag, and (for RETURNING) the rows it wrote or deleted, with
/// the table's columns.
pub struct DmlOutput {
    pub tag: CommandTag,
    /// The table's columns.
    pub schema: datafusion::arrow::datatypes::SchemaRef,
    pub rows: Vec<RecordBatch>,
}

/// The rows one batch of a statement changed.
pub struct Written {
    /// Previous values of updated or deleted rows (table columns).
    pub old: Option<RecordBatch>,
    /// New values of inserted or updated rows (table columns).
    pub new: Option<RecordBatch>,
}

impl Written {
    fn rows(&self) -> usize {
        self.new
            .as_ref()
            .or(self.old.as_ref())
            .map_or(0, |b| b.num_rows())
    }

    /// The rows RETURNING reads: new values, or the old ones of a DELETE.
    fn returned(self) -> Option<RecordBatch> {
        self.new.or(self.old)
    }
}

/// INSERT INTO a push source: the rows are appended to its event log at once (durably, in
/// arrival order), outside the session's transaction, like a sequence's nextval.
async fn insert_events(
    session: &Session,
    def: &Arc<TableDef>,
    dml: &DmlStatement,
) -> Result<CommandTag> {
    let input = keep_text_for_bytea(&dml.input, def)?;
    let df = DataFrame::new(session.ctx().state(), input);
    let mut stream = df.execute_stream().await?;
    let catalog = session.view().catalog();
    let writer = Writer {
        session,
        def,
        catalog: &catalog,
    };
    let mut appended = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let arrays = writer.table_columns(&batch)?;
        let options = datafusion::arrow::array::RecordBatchOptions::new()
            .with_row_count(Some(batch.num_rows()));
        let rows = RecordBatch::try_new_with_options(def.arrow_schema(), arrays, &options)?;
        let engine = session.engine().clone();
        let source = def.clone();
        tokio::task::spawn_blocking(move || engine.append_events(&source, &rows, &mut []))
            .await
            .map_err(|e| Error::internal(format!("append task: {e}")))??;
        appended += batch.num_rows();
    }
    Ok(CommandTag::new("INSERT 0").with_rows(appended))
}

struct Writer<'a> {
    session: &'a Session,
    def: &'a Arc<TableDef>,
    catalog: &'a crate::catalog::Catalog,
}

impl Writer<'_> {
    /// The table's columns from the first `n` columns of `batch`, cast to the column types and
    /// checked against NOT NULL and length limits.
    fn table_columns(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        let def = self.def;
        if batch.num_columns() < def.columns.len() {
            return Err(Error::internal("DML input lacks table columns"));
        }
        def.columns
            .iter()
            .zip(batch.columns())
            .map(|(c, array)| {
                let array = if c.ty == SqlType::Bytea
                    && matches!(array.data_type(), DataType::Utf8 | DataType::Utf8View)
                {
                    bytea_from_text(&cast(array, &DataType::Utf8)?)?
                } else if c.ty == SqlType::Bytea && array.data_type() == &DataType::Utf8 {
                    bytea_from_text(array)?
                } else if array.data_type() != &c.ty.arrow_type() {
                    cast(array, &c.ty.arrow_type())?
                } else {
                    array.clone()
                };
                if !c.nullable && array.null_count() > 0 {
                    return Err(Error::user(
                        sqlstate::NOT_NULL_VIOLATION,
                        format!(
                            "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                            c.name, def.name
                        ),
                    )
                    .with_column(&def.schema, &def.name, &c.name));
                }
                check_length(&c.ty, &array)?;
                match c.ty {
                    SqlType::Jsonb => return canonical_text(&array, crate::types::jsonb_canonical),
                    SqlType::Uuid => return canonical_text(&array, crate::types::uuid_canonical),
                    _ => {}
                }
                Ok(array)
            })
            .collect()
    }

    fn column_refs<'b>(&self, arrays: &'b [ArrayRef]) -> Result<Vec<ColumnRef<'b>>> {
        arrays
            .iter()
            .zip(&self.def.columns)
            .map(|(a, c)| ColumnRef::new(a, &c.ty))
            .collect()
    }

    /// The stored bytes of each row.
    fn encode_values(&self, arrays: &[ArrayRef]) -> Result<Vec<Vec<u8>>> {
        let cols = self.column_refs(arrays)?;
        let n = arrays.first().map_or(0, |a| a.len());
        Ok((0..n)
            .map(|i| {
                let mut v = Vec::with_capacity(64);
                row::encode_row(&cols, i, &mut v);
                v
            })
            .collect())
    }

    /// The storage key of each row: its primary key, or a fresh hidden row id.
    fn encode_keys(&self, arrays: &[ArrayRef]) -> Result<Vec<Vec<u8>>> {
        let cols = self.column_refs(arrays)?;
        let n = arrays.first().map_or(0, |a| a.len());
        let prefix = self.def.key_prefix();
        if self.def.primary_key.is_empty() {
            let first = self.session.engine().allocate_row_ids(self.def, n as u64)?;
            return Ok((0..n as u64)
                .map(|i| {
                    let mut k = prefix.clone();
                    k.extend_from_slice(&(first + i).to_be_bytes());
                    k
                })
                .collect());
        }
        Ok((0..n)
            .map(|i| {
                let mut k = prefix.clone();
                for &pk in &self.def.primary_key {
                    key::encode_value(&cols[pk], i, &mut k);
                }
                k
            })
            .collect())
    }

    /// Committed values of `keys` (ignoring this transaction's writes).
    fn committed(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        if self.session.txn().lock().is_truncated(self.def.id) {
            return Ok(vec![None; keys.len()]);
        }
        self.session.engine().kv().multi_get(keys)
    }

    fn duplicate_key(&self, arrays: &[ArrayRef], row: usize) -> Error {
        let names: Vec<&str> = self
            .def
            .primary_key
            .iter()
            .map(|&k| self.def.columns[k].name.as_str())
            .collect();
        let values: Vec<String> = self
            .def
            .primary_key
            .iter()
            .map(|&k| array_value_to_string(&arrays[k], row).unwrap_or_default())
            .collect();
        Error::user(
            sqlstate::UNIQUE_VIOLATION,
            format!(
                "duplicate key value violates unique constraint \"{}\"",
                self.def.pkey_name()
            ),
        )
        .with_detail(format!(
            "Key ({})=({}) already exists.",
            names.join(", "),
            values.join(", ")
        ))
        .with_constraint(&self.def.schema, &self.def.name, &self.def.pkey_name())
    }

    /// CHECK constraints and foreign keys of rows about to be written.
    fn check_new(&self, arrays: &[ArrayRef]) -> Result<()> {
        constraints::check_rows(self.session, self.def, arrays)?;
        constraints::check_references(self.session, self.catalog, self.def, arrays)
    }

    /// Index entries of rows written (and of the rows they replace).
    fn index(
        &self,
        old: Option<(&[ArrayRef], &[Vec<u8>])>,
        new: Option<(&[ArrayRef], &[Vec<u8>])>,
    ) -> Result<()> {
        if self.def.indexes.is_empty() {
            return Ok(());
        }
        let kv = self.session.engine().kv().clone();
        let mut txn = self.session.txn().lock();
        constraints::write_index_entries(kv.as_ref(), &mut txn, self.def, old, new)
    }

    fn batch(&self, arrays: Vec<ArrayRef>) -> Result<RecordBatch> {
        let options = datafusion::arrow::array::RecordBatchOptions::new()
            .with_row_count(Some(arrays.first().map_or(0, |a| a.len())));
        Ok(RecordBatch::try_new_with_options(
            self.def.arrow_schema(),
            arrays,
            &options,
        )?)
    }

    /// The existing row a proposed row collides with: by primary key, else by a unique index.
    /// Returns the row's storage key and bytes, and the index (None: the primary key).
    fn collision(
        &self,
        txn: &crate::txn::Txn,
        arrays: &[ArrayRef],
        row: usize,
        key: &[u8],
        committed: &Option<Vec<u8>>,
    ) -> Result<Option<Collision>> {
        let by_key = match txn.overlay_get(key) {
            Some(v) => v.map(|v| v.to_vec()),
            None => committed.clone(),
        };
        if let Some(bytes) = by_key {
            return Ok(Some((key.to_vec(), bytes, None)));
        }
        let kv = self.session.engine().kv();
        for (i, index) in self.def.indexes.iter().enumerate() {
            if !index.unique {
                continue;
            }
            if let Some(owner) =
                constraints::unique_owner(kv.as_ref(), txn, self.def, index, arrays, row)?
            {
                let bytes = match txn.overlay_get(&owner) {
                    Some(v) => v.map(|v| v.to_vec()),
                    None => kv.get(&owner)?,
                };
                if let Some(bytes) = bytes {
                    return Ok(Some((owner, bytes, Some(i))));
                }
            }
        }
        Ok(None)
    }

    /// Which collisions an ON CONFLICT clause handles.
    fn arbiter(&self, conflict: &ast::OnConflict) -> Result<Arbiter> {
        let no_match = || {
            Error::user(
                "42P10",
                "there is no unique or exclusion constraint matching the ON CONFLICT specification",
            )
        };
        match &conflict.conflict_target {
            None => match conflict.action {
                OnConflictAction::DoNothing => Ok(Arbiter::Any),
                OnConflictAction::DoUpdate(_) => Err(Error::user(
                    sqlstate::SYNTAX_ERROR,
                    "ON CONFLICT DO UPDATE requires inference specification or constraint name",
                )
                .with_hint("For example, ON CONFLICT (column_name).")),
            },
            Some(ast::ConflictTarget::Columns(cols)) => {
                let mut positions = cols
                    .iter()
                    .map(|c| self.def.column_index(&ident(c)).ok_or_else(no_match))
                    .collect::<Result<Vec<usize>>>()?;
                positions.sort_unstable();
                let same = |cols: &[usize]| {
                    let mut c = cols.to_vec();
                    c.sort_unstable();
                    c == positions
                };
                if !self.def.primary_key.is_empty() && same(&self.def.primary_key) {
                    return Ok(Arbiter::PrimaryKey);
                }
                self.def
                    .indexes
                    .iter()
                    .position(|i| i.unique && same(&i.columns))
                    .map(Arbiter::Index)
                    .ok_or_else(no_match)
            }
            Some(ast::ConflictTarget::OnConstraint(name)) => {
                let name = name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(ident)
                    .unwrap_or_default();
                if name == self.def.pkey_name() && !self.def.primary_key.is_empty() {
                    return Ok(Arbiter::PrimaryKey);
                }
                self.def
                    .indexes
                    .iter()
                    .position(|i| i.unique && i.name == name)
                    .map(Arbiter::Index)
                    .ok_or_else(|| {
                        Error::user(
                            sqlstate::UNDEFINED_OBJECT,
                            format!(
                                "constraint \"{name}\" for table \"{}\" does not exist",
                                self.def.name
                            ),
                        )
                    })
            }
        }
    }

    fn insert(
        &self,
        batch: &RecordBatch,
        conflict: Option<&ast::OnConflict>,
        table: &TableReference,
    ) -> Result<Written> {
        self.note_layout();
        let arrays = self.table_columns(batch)?;
        self.check_new(&arrays)?;
        let keys = self.encode_keys(&arrays)?;
        let values = self.encode_values(&arrays)?;
        let committed = self.committed(&keys)?;
        let arbiter = conflict.map(|c| self.arbiter(c)).transpose()?;
        let mut conflicts: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut inserted: Vec<u32> = Vec::new();
        let kv = self.session.engine().kv().clone();
        {
            let mut txn = self.session.txn().lock();
            for (i, (k, v)) in keys.iter().zip(values).enumerate() {
                if let Some((_, existing, by)) =
                    self.collision(&txn, &arrays, i, k, &committed[i])?
                {
                    let handled = match &arbiter {
                        None => false,
                        Some(Arbiter::Any) => true,
                        Some(Arbiter::PrimaryKey) => by.is_none(),
                        Some(Arbiter::Index(a)) => by == Some(*a),
                    };
                    if !handled {
                        return Err(match by {
                            None => self.duplicate_key(&arrays, i),
                            Some(b) => constraints::unique_violation(
                                self.def,
                                &self.def.indexes[b],
                                &arrays,
                                i,
                            ),
                        });
                    }
                    if let Some(OnConflictAction::DoUpdate(_)) = conflict.map(|c| &c.action) {
                        conflicts.push((i as u32, existing));
                    }
                    continue;
                }
                txn.write(self.def.id, k.clone(), committed[i].clone(), Some(v));
                if !self.def.indexes.is_empty() {
                    let one = take_rows(&arrays, &[i as u32])?;
                    constraints::write_index_entries(
                        kv.as_ref(),
                        &mut txn,
                        self.def,
                        None,
                        Some((&one, std::slice::from_ref(k))),
                    )?;
                }
                inserted.push(i as u32);
            }
        }
        let mut new = self.batch(take_rows(&arrays, &inserted)?)?;
        if let Some(OnConflictAction::DoUpdate(update)) = conflict.map(|c| &c.action)
            && !conflicts.is_empty()
        {
            let updated = self.upsert(&arrays, conflicts, update, table)?;
            new = datafusion::arrow::compute::concat_batches(&new.schema(), [&new, &updated])?;
        }
        Ok(Written {
            old: None,
            new: Some(new),
        })
    }

    /// ON CONFLICT DO UPDATE for the rows that hit an existing key, evaluated as one batch over
    /// the existing rows (qualified by the table name) and the proposed ones (`excluded`).
    fn upsert(
        &self,
        proposed: &[ArrayRef],
        conflicts: Vec<(u32, Vec<u8>)>,
        update: &ast::DoUpdate,
        table: &TableReference,
    ) -> Result<RecordBatch> {
        let def = self.def;
        let rows: ArrayRef = Arc::new(datafusion::arrow::array::UInt32Array::from(
            conflicts.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        ));
        let existing = self.decode_rows(conflicts.iter().map(|(_, b)| b.as_slice()))?;
        let excluded: Vec<ArrayRef> = proposed
            .iter()
            .map(|a| take(a, rows.as_primitive::<UInt32Type>(), None))
            .collect::<std::result::Result<_, _>>()?;
        let table_schema = def.arrow_schema();
        let qualified: Vec<(Option<TableReference>, Arc<Field>)> = table_schema
            .fields()
            .iter()
            .map(|f| (Some(TableReference::bare(table.table())), f.clone()))
            .chain(
                table_schema
                    .fields()
                    .iter()
                    .map(|f| (Some(TableReference::bare("excluded")), f.clone())),
            )
            .collect();
        let df_schema = DFSchema::new_with_metadata(qualified, HashMap::new())?;
        let arrow_schema = Arc::new(Schema::new(
            df_schema.fields().iter().cloned().collect::<Vec<_>>(),
        ));
        let combined = RecordBatch::try_new(
            arrow_schema,
            existing.iter().chain(excluded.iter()).cloned().collect(),
        )?;
        let state = self.session.ctx().state();
        let n = conflicts.len();
        let mut new_columns = existing.clone();
        for a in &update.assignments {
            let AssignmentTarget::ColumnName(name) = &a.target else {
                return Err(Error::not_supported("tuple assignment in ON CONFLICT"));
            };
            let col = name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(ident)
                .unwrap_or_default();
            let idx = def.column_index(&col).ok_or_else(|| {
                Error::user(
                    sqlstate::UNDEFINED_COLUMN,
                    format!(
                        "column \"{col}\" of relation \"{}\" does not exist",
                        def.name
                    ),
                )
            })?;
            let expr = state.create_logical_expr(&a.value.to_string(), &df_schema)?;
            let expr = expr.cast_to(&def.columns[idx].ty.arrow_type(), &df_schema)?;
            let physical = state.create_physical_expr(expr, &df_schema)?;
            new_columns[idx] = physical.evaluate(&combined)?.into_array(n)?;
        }
        let mut keep: Option<datafusion::arrow::array::BooleanArray> = None;
        if let Some(selection) = &update.selection {
            let expr = state.create_logical_expr(&selection.to_string(), &df_schema)?;
            let physical = state.create_physical_expr(expr, &df_schema)?;
            let mask = physical.evaluate(&combined)?.into_array(n)?;
            keep = Some(mask.as_boolean().clone());
        }
        let updated = RecordBatch::try_new(table_schema.clone(), new_columns)?;
        let old_batch = RecordBatch::try_new(table_schema, existing)?;
        let (updated, old_batch, old) = match &keep {
            Some(mask) => {
                // A NULL condition keeps the existing row, like false.
                let mask = if mask.null_count() > 0 {
                    datafusion::arrow::compute::prep_null_mask_filter(mask)
                } else {
                    mask.clone()
                };
                let old: Vec<Vec<u8>> = conflicts
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask.value(*i))
                    .map(|(_, (_, b))| b.clone())
                    .collect();
                (
                    filter_record_batch(&updated, &mask)?,
                    filter_record_batch(&old_batch, &mask)?,
                    old,
                )
            }
            None => (
                updated,
                old_batch,
                conflicts.into_iter().map(|(_, b)| b).collect(),
            ),
        };
        let arrays = self.table_columns(&updated)?;
        self.check_new(&arrays)?;
        let keys = self.encode_keys(&arrays)?;
        let old_keys = self.encode_keys(old_batch.columns())?;
        let values = self.encode_values(&arrays)?;
        {
            let mut txn = self.session.txn().lock();
            for ((k, v), observed) in keys.iter().zip(values).zip(old) {
                txn.write(def.id, k.clone(), Some(observed), Some(v));
            }
        }
        self.index(
            Some((old_batch.columns(), &old_keys)),
            Some((&arrays, &keys)),
        )?;
        self.batch(arrays)
    }

    /// Decodes stored rows into the table's columns.
    fn decode_rows<'b>(&self, rows: impl Iterator<Item = &'b [u8]>) -> Result<Vec<ArrayRef>> {
        let mut decoder = row::RowDecoder::new(&self.def.types(), None, 16);
        for bytes in rows {
            decoder.append(bytes)?;
        }
        decoder.finish()
    }

    fn storage_columns<'b>(&self, batch: &'b RecordBatch) -> Result<(&'b ArrayRef, &'b ArrayRef)> {
        let n = self.def.columns.len();
        if batch.num_columns() != n + 2 {
            return Err(Error::internal("DML input lacks storage columns"));
        }
        Ok((batch.column(n), batch.column(n + 1)))
    }

    /// The rows written are in the table's current layout (see `Engine::commit`).
    fn note_layout(&self) {
        self.session
            .txn()
            .lock()
            .note_layout(self.def.id, self.def.layout);
    }

    fn update(&self, batch: &RecordBatch) -> Result<Written> {
        self.note_layout();
        let (old_keys, old_rows) = self.storage_columns(batch)?;
        let (old_keys, old_rows) = (old_keys.as_binary::<i32>(), old_rows.as_binary::<i32>());
        let arrays = self.table_columns(batch)?;
        self.check_new(&arrays)?;
        let values = self.encode_values(&arrays)?;
        let mut keys = if self.def.primary_key.is_empty() {
            // Rows without a primary key keep their hidden row id.
            (0..batch.num_rows())
                .map(|i| old_keys.value(i).to_vec())
                .collect()
        } else {
            self.encode_keys(&arrays)?
        };
        let old = self.decode_rows((0..batch.num_rows()).map(|i| old_rows.value(i)))?;
        let old_key_list: Vec<Vec<u8>> = (0..batch.num_rows())
            .map(|i| old_keys.value(i).to_vec())
            .collect();
        let moved: Vec<Vec<u8>> = keys
            .iter()
            .enumerate()
            .filter(|(i, k)| k.as_slice() != old_keys.value(*i))
            .map(|(_, k)| k.clone())
            .collect();
        let committed_moved = self.committed(&moved)?;
        let mut committed_moved = moved
            .into_iter()
            .zip(committed_moved)
            .collect::<HashMap<_, _>>();
        {
            let mut txn = self.session.txn().lock();
            // Moved rows leave their old keys first, so keys can swap within one statement.
            for (i, key) in keys.iter().enumerate() {
                if key.as_slice() != old_keys.value(i) {
                    txn.write(
                        self.def.id,
                        old_keys.value(i).to_vec(),
                        Some(old_rows.value(i).to_vec()),
                        None,
                    );
                }
            }
            for (i, v) in values.into_iter().enumerate() {
                let old_key = old_keys.value(i);
                let new_key = keys[i].clone();
                if new_key.as_slice() != old_key {
                    let committed = committed_moved.remove(&new_key).flatten();
                    let exists = match txn.overlay_get(&new_key) {
                        Some(v) => v.is_some(),
                        None => committed.is_some(),
                    };
                    if exists {
                        return Err(self.duplicate_key(&arrays, i));
                    }
                    txn.write(self.def.id, new_key, committed, Some(v));
                } else {
                    txn.write(
                        self.def.id,
                        new_key,
                        Some(old_rows.value(i).to_vec()),
                        Some(v),
                    );
                }
            }
        }
        let keys_now = std::mem::take(&mut keys);
        self.index(Some((&old, &old_key_list)), Some((&arrays, &keys_now)))?;
        Ok(Written {
            old: Some(self.batch(old)?),
            new: Some(self.batch(arrays)?),
        })
    }

    fn delete(&self, batch: &RecordBatch) -> Result<Written> {
        self.note_layout();
        let (keys, rows) = self.storage_columns(batch)?;
        let (keys, rows) = (keys.as_binary::<i32>(), rows.as_binary::<i32>());
        let old = self.decode_rows((0..batch.num_rows()).map(|i| rows.value(i)))?;
        let key_list: Vec<Vec<u8>> = (0..batch.num_rows())
            .map(|i| keys.value(i).to_vec())
            .collect();
        {
            let mut txn = self.session.txn().lock();
            for (i, k) in key_list.iter().enumerate() {
                txn.write(self.def.id, k.clone(), Some(rows.value(i).to_vec()), None);
            }
        }
        self.index(Some((&old, &key_list)), None)?;
        Ok(Written {
            old: Some(self.batch(old)?),
            new: None,
        })
    }
}

/// Inserts rows given as the table's columns (COPY FROM, planner-free INSERT): text for
/// bytea, jsonb and uuid columns, the column types for the rest. Constraints, indexes and
/// foreign keys apply as for INSERT, and `conflict` as its ON CONFLICT clause. Returns how
/// many rows were written.
/// One array per column of `def` as a batch (of `n` rows, for a table without columns),
/// named by the columns, typed as given.
fn rows_of(def: &TableDef, arrays: Vec<ArrayRef>, n: Option<usize>) -> Result<RecordBatch> {
    let fields: Vec<Field> = def
        .columns
        .iter()
        .zip(&arrays)
        .map(|(c, a)| Field::new(&c.name, a.data_type().clone(), true))
        .collect();
    let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(n);
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        arrays,
        &options,
    )?)
}

/// Appends rows (arrays of a push source's columns) to its event log, with rows refused by
/// their parser as dead letters; checked and converted as INSERT does.
pub(super) fn append_to_source(
    session: &Session,
    def: &Arc<TableDef>,
    arrays: Vec<ArrayRef>,
    n: usize,
    dead: &mut [eddy_connectors::DeadLetter],
) -> Result<()> {
    let catalog = session.view().catalog();
    let writer = Writer {
        session,
        def,
        catalog: &catalog,
    };
    let batch = rows_of(def, arrays, Some(n))?;
    let columns = writer.table_columns(&batch)?;
    let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(n));
    let rows = RecordBatch::try_new_with_options(def.arrow_schema(), columns, &options)?;
    session.engine().append_events(def, &rows, dead)?;
    Ok(())
}

pub(super) fn insert_rows(
    session: &Session,
    def: &Arc<TableDef>,
    arrays: Vec<ArrayRef>,
    conflict: Option<&ast::OnConflict>,
) -> Result<usize> {
    let catalog = session.view().catalog();
    let writer = Writer {
        session,
        def,
        catalog: &catalog,
    };
    let batch = rows_of(def, arrays, None)?;
    let written = writer.insert(&batch, conflict, &TableReference::bare(def.name.clone()))?;
    Ok(written.rows())
}

/// An existing row a proposed one collides with: its storage key, its stored bytes, and the
/// unique index it collides on (`None`: the primary key).
type Collision = (Vec<u8>, Vec<u8>, Option<usize>);

/// The collisions an ON CONFLICT clause handles.
enum Arbiter {
    /// DO NOTHING without a target: every unique constraint.
    Any,
    PrimaryKey,
    /// The unique index at this position of the table's indexes.
    Index(usize),
}

/// The rows at `rows` of each array.
fn take_rows(arrays: &[ArrayRef], rows: &[u32]) -> Result<Vec<ArrayRef>> {
    let idx = datafusion::arrow::array::UInt32Array::from(rows.to_vec());
    Ok(arrays
        .iter()
        .map(|a| take(a, &idx, None))
        .collect::<std::result::Result<_, _>>()?)
}

/// Every row of `def` the session sees (its transaction's writes included), in key order:
/// each chunk's columns and storage keys.
pub async fn read_rows(
    session: &Session,
    def: &TableDef,
) -> Result<Vec<(Vec<ArrayRef>, Vec<Vec<u8>>)>> {
    let prefix = def.key_prefix();
    let end = crate::storage::prefix_end(&prefix);
    let kv = session.engine().kv().clone();
    let (overlay, truncated) = {
        let txn = session.txn().lock();
        (txn.overlay_range(&prefix, &end), txn.is_truncated(def.id))
    };
    let mut out = Vec::new();
    let mut start = prefix.clone();
    loop {
        const CHUNK: usize = 4096;
        let committed = if truncated {
            Vec::new()
        } else {
            kv.scan(&start, &end, CHUNK)?
        };
        let exhausted = committed.len() < CHUNK;
        let (pairs, resume) = crate::txn::merge_chunk(committed, &overlay, exhausted);
        let pairs: Vec<_> = pairs.into_iter().filter(|(k, _)| *k >= start).collect();
        if !pairs.is_empty() {
            let mut decoder = row::RowDecoder::new(&def.types(), None, pairs.len());
            for (_, v) in &pairs {
                decoder.append(v)?;
            }
            out.push((
                decoder.finish()?,
                pairs.into_iter().map(|(k, _)| k).collect(),
            ));
        }
        match resume {
            Some(r) => start = r,
            None => break,
        }
    }
    Ok(out)
}

fn check_length(ty: &SqlType, array: &ArrayRef) -> Result<()> {
    let SqlType::Varchar(Some(limit)) = ty else {
        return Ok(());
    };
    let strings = array.as_string::<i32>();
    for s in strings.iter().flatten() {
        if s.chars().count() > *limit as usize {
            return Err(Error::user(
                sqlstate::STRING_DATA_RIGHT_TRUNCATION,
                format!("value too long for type character varying({limit})"),
            ));
        }
    }
    Ok(())
}

/// Validates text values of a jsonb or uuid column and puts them in canonical form.
fn canonical_text(array: &ArrayRef, canonical: fn(&str) -> Result<String>) -> Result<ArrayRef> {
    let strings = array.as_string::<i32>();
    let canonical: Vec<Option<String>> = strings
        .iter()
        .map(|s| s.map(canonical).transpose())
        .collect::<Result<_>>()?;
    Ok(Arc::new(datafusion::arrow::array::StringArray::from(
        canonical,
    )))
}

/// The INSERT input with text kept as text for bytea columns: DataFusion would cast it to
/// bytes as they are, where PostgreSQL reads the bytea text format (`\x00ff`).
fn keep_text_for_bytea(input: &LogicalPlan, def: &TableDef) -> Result<LogicalPlan> {
    let LogicalPlan::Projection(p) = input else {
        return Ok(input.clone());
    };
    let mut changed = false;
    let exprs: Vec<Expr> = p
        .expr
        .iter()
        .zip(&def.columns)
        .map(|(e, c)| {
            if c.ty != SqlType::Bytea {
                return e.clone();
            }
            let Expr::Alias(alias) = e else {
                return e.clone();
            };
            let Expr::Cast(cast) = alias.expr.as_ref() else {
                return e.clone();
            };
            let is_text = cast.expr.get_type(p.input.schema()).is_ok_and(|t| {
                matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
            });
            if !is_text {
                return e.clone();
            }
            changed = true;
            cast.expr.as_ref().clone().alias(alias.name.clone())
        })
        .collect();
    if !changed {
        return Ok(input.clone());
    }
    Ok(LogicalPlan::Projection(Projection::try_new(
        exprs,
        p.input.clone(),
    )?))
}

/// Text to bytea the way PostgreSQL reads it: `\x` followed by hex digits, or the escape
/// format where `\\` is a backslash and `\nnn` an octal byte.
fn bytea_from_text(array: &ArrayRef) -> Result<ArrayRef> {
    let strings = array.as_string::<i32>();
    let mut out = datafusion::arrow::array::BinaryBuilder::with_capacity(strings.len(), 0);
    for s in strings.iter() {
        match s {
            None => out.append_null(),
            Some(s) => out.append_value(parse_bytea(s)?),
        }
    }
    Ok(Arc::new(out.finish()))
}

pub fn parse_bytea(s: &str) -> Result<Vec<u8>> {
    let bad = || {
        Error::user(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!("invalid input syntax for type bytea: \"{s}\""),
        )
    };
    if let Some(hex) = s.strip_prefix("\\x") {
        let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if !digits.len().is_multiple_of(2) {
            return Err(bad());
        }
        return digits
            .chunks(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .ok_or_else(bad)
            })
            .collect();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let oct = s.get(i + 1..i + 4).ok_or_else(bad)?;
            out.push(u8::from_str_radix(oct, 8).map_err(|_| bad())?);
            i += 4;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_bytea;

    #[test]
    fn bytea_text_formats() {
        assert_eq!(parse_bytea("\\x00ff").unwrap(), vec![0, 255]);
        assert_eq!(parse_bytea("a\\\\b\\001").unwrap(), b"a\\b\x01".to_vec());
        assert!(parse_bytea("\\x0").is_err());
    }
}
