//! The planner-free INSERT: `INSERT INTO <table> [(columns)] VALUES (...) [, (...)]
//! [ON CONFLICT [target] DO NOTHING]` whose values are parameters, plain literals, NULL or
//! DEFAULT.
//!
//! Such a statement is planned once when it is prepared (that checks it and gives the
//! parameter types), but each execution builds the rows straight from the bound values and
//! hands them to the table writer, the path COPY takes: no optimizer, no physical plan, no
//! DataFusion stream. Constraints, indexes, foreign keys, defaults and ON CONFLICT behave as
//! in the planned INSERT. A value that does not convert to its column's type sends the
//! execution back to the planned path, before anything is written, so errors read the same.

use std::sync::Arc;

use super::ddl::ident;
use super::session::{CommandTag, Session};
use crate::catalog::{Relation, TableDef, TableKind};
use crate::error::Result;
use crate::types::SqlType;
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    self, Expr as SqlExpr, OnConflictAction, OnInsert, SetExpr, Statement, TableObject,
    UnaryOperator,
};

/// Where one value of a row comes from.
#[derive(Debug, Clone)]
enum Value {
    /// `$n`, zero-based.
    Param(usize),
    /// A literal, already of the column's type.
    Const(ScalarValue),
    /// Any other expression without column references (`$1 * 0.5`, `now()`), as planned:
    /// evaluated on its own with the parameters substituted.
    Expr(Expr),
}

/// How one table column is filled, for every row.
#[derive(Debug, Clone)]
enum Fill {
    /// One value per row.
    Values(Vec<Value>),
    /// The column's default (NULL without one), per row.
    Default(Option<Expr>),
}

#[derive(Debug, Clone)]
pub struct FastInsert {
    def: Arc<TableDef>,
    /// One per table column.
    fills: Vec<Fill>,
    rows: usize,
    conflict: Option<ast::OnConflict>,
}

impl FastInsert {
    /// Recognises the statement shape; `None` for anything else.
    pub fn detect(
        statement: &Statement,
        plan: &LogicalPlan,
        session: &Session,
    ) -> Result<Option<Self>> {
        let Statement::Insert(insert) = statement else {
            return Ok(None);
        };
        let plain = insert.or.is_none()
            && !insert.ignore
            && !insert.overwrite
            && !insert.replace_into
            && insert.table_alias.is_none()
            && insert.assignments.is_empty()
            && insert.partitioned.is_none()
            && insert.after_columns.is_empty()
            && insert.returning.is_none()
            && insert.output.is_none()
            && insert.priority.is_none()
            && insert.insert_alias.is_none()
            && insert.settings.is_none()
            && insert.format_clause.is_none()
            && insert.multi_table_insert_type.is_none();
        let conflict = match &insert.on {
            None => None,
            Some(OnInsert::OnConflict(c)) if matches!(c.action, OnConflictAction::DoNothing) => {
                Some(c.clone())
            }
            Some(_) => return Ok(None),
        };
        let (TableObject::TableName(name), true) = (&insert.table, plain) else {
            return Ok(None);
        };
        let Some(query) = &insert.source else {
            return Ok(None);
        };
        if query.with.is_some()
            || query.order_by.is_some()
            || query.limit_clause.is_some()
            || query.fetch.is_some()
            || !query.locks.is_empty()
        {
            return Ok(None);
        }
        let SetExpr::Values(values) = query.body.as_ref() else {
            return Ok(None);
        };
        let Some((_, _, Relation::Table(def))) = session.resolve(name)? else {
            return Ok(None);
        };
        // A referenced table's writes go through the foreign-key actions of the planned path.
        let catalog = session.view().catalog();
        if def.kind != TableKind::Table
            || !super::constraints::referencing_keys(&catalog, &def).is_empty()
        {
            return Ok(None);
        }
        // The table column each value goes to.
        let targets: Vec<usize> = if insert.columns.is_empty() {
            (0..def.columns.len()).collect()
        } else {
            let mut targets = Vec::with_capacity(insert.columns.len());
            for column in &insert.columns {
                let [part] = column.0.as_slice() else {
                    return Ok(None);
                };
                let Some(i) = part.as_ident().and_then(|i| def.column_index(&ident(i))) else {
                    return Ok(None);
                };
                if targets.contains(&i) {
                    return Ok(None);
                }
                targets.push(i);
            }
            targets
        };
        let rows = values.rows.len();
        let planned = planned_values(plan);
        // Per table column: its values, or `None` while every row so far left it to default.
        let mut given: Vec<Option<Vec<Value>>> = vec![None; def.columns.len()];
        let mut defaulted = vec![false; def.columns.len()];
        let width = values.rows.first().map_or(0, |r| r.content.len());
        for (r, row) in values.rows.iter().enumerate() {
            let row = &row.content;
            // Lists of different lengths, or more (or, with a column list, fewer) values than
            // columns, are errors the planned path reports.
            if row.len() != width
                || row.len() > targets.len()
                || (!insert.columns.is_empty() && row.len() != targets.len())
            {
                return Ok(None);
            }
            for (pos, &col) in targets.iter().enumerate() {
                let item = row.get(pos).map(|e| {
                    value(e, &def.columns[col].ty).or_else(|| {
                        // The planned expression of this item, when it reads no column.
                        let expr = planned?.get(r)?.get(pos)?;
                        (row.len() == planned?[r].len() && !reads_columns(expr))
                            .then(|| Item::Value(Value::Expr(expr.clone())))
                    })
                });
                match item {
                    None | Some(Some(Item::Default)) => defaulted[col] = true,
                    Some(Some(Item::Value(v))) => given[col].get_or_insert_with(Vec::new).push(v),
                    Some(None) => return Ok(None),
                }
            }
        }
        let mut fills = Vec::with_capacity(def.columns.len());
        for (col, values) in given.into_iter().enumerate() {
            fills.push(match values {
                // A column given in some rows and defaulted in others: rare, left to the planner.
                Some(_) if defaulted[col] => return Ok(None),
                Some(values) => Fill::Values(values),
                None => Fill::Default(session.view().column_default(&def, col)?),
            });
        }
        Ok(Some(FastInsert {
            def,
            fills,
            rows,
            conflict,
        }))
    }

    /// Writes the rows for `params` into the session's transaction and returns the command
    /// tag; `None` (nothing written) when a value needs the planned path's conversion.
    pub fn execute(&self, session: &Session, params: &[ScalarValue]) -> Result<Option<CommandTag>> {
        // One statement time: every `now()` of the rows reads the same. The session's state
        // is borrowed, not copied (a copy clones every function registry).
        let start = Some(chrono::Utc::now());
        let state = session.ctx().state_ref();
        let state = state.read();
        let mut arrays: Vec<Option<ArrayRef>> = Vec::with_capacity(self.fills.len());
        for (fill, column) in self.fills.iter().zip(&self.def.columns) {
            let Fill::Values(values) = fill else {
                arrays.push(None);
                continue;
            };
            let mut scalars = Vec::with_capacity(values.len());
            for v in values {
                scalars.push(match v {
                    Value::Param(i) => params.get(*i).cloned().unwrap_or(ScalarValue::Null),
                    Value::Const(c) => c.clone(),
                    // An expression that fails is left to the planned path, which reports it.
                    Value::Expr(e) => match evaluate(&state, start, e, params) {
                        Some(v) => v,
                        None => return Ok(None),
                    },
                });
            }
            let Some(array) = column_array(scalars.into_iter(), &column.ty) else {
                return Ok(None);
            };
            arrays.push(Some(array));
        }
        // Defaults last: `nextval` must not run for an execution that goes the planned way.
        let arrays = arrays
            .into_iter()
            .zip(&self.fills)
            .zip(&self.def.columns)
            .map(|((array, fill), column)| match (array, fill) {
                (Some(array), _) => Ok(array),
                (None, Fill::Default(expr)) => super::copy::evaluate_default(
                    &state,
                    start,
                    expr.as_ref(),
                    &column.ty,
                    self.rows,
                ),
                (None, Fill::Values(_)) => unreachable!("values were converted above"),
            })
            .collect::<Result<Vec<_>>>()?;
        drop(state);
        let written = super::dml::insert_rows(session, &self.def, arrays, self.conflict.as_ref())?;
        Ok(Some(CommandTag::new("INSERT 0").with_rows(written)))
    }
}

/// The rows of the VALUES list the planned INSERT reads, as planned expressions.
fn planned_values(plan: &LogicalPlan) -> Option<&Vec<Vec<Expr>>> {
    let mut node = match plan {
        LogicalPlan::Dml(dml) => dml.input.as_ref(),
        _ => return None,
    };
    loop {
        match node {
            LogicalPlan::Values(v) => return Some(&v.values),
            LogicalPlan::Projection(p) => node = p.input.as_ref(),
            LogicalPlan::SubqueryAlias(a) => node = a.input.as_ref(),
            _ => return None,
        }
    }
}

/// Whether an expression reads a column or a subquery (it then cannot be evaluated alone).
fn reads_columns(expr: &Expr) -> bool {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut reads = false;
    let _ = expr.apply(|e| {
        if matches!(
            e,
            Expr::Column(_)
                | Expr::OuterReferenceColumn(..)
                | Expr::ScalarSubquery(_)
                | Expr::Exists(_)
                | Expr::InSubquery(_)
                | Expr::AggregateFunction(_)
                | Expr::WindowFunction(_)
        ) {
            reads = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    reads
}

/// One expression's value with the parameters bound; `None` when it fails.
fn evaluate(
    state: &datafusion::execution::SessionState,
    start: super::copy::StatementStart,
    expr: &Expr,
    params: &[ScalarValue],
) -> Option<ScalarValue> {
    use datafusion::common::tree_node::Transformed;
    let bound = expr
        .clone()
        .transform(|e| match &e {
            Expr::Placeholder(p) => {
                let v = p
                    .id
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| params.get(n.checked_sub(1)?))
                    .ok_or_else(|| {
                        datafusion::error::DataFusionError::Plan(format!("no value for {}", p.id))
                    })?;
                Ok(Transformed::yes(Expr::Literal(v.clone(), None)))
            }
            _ => Ok(Transformed::no(e)),
        })
        .ok()?
        .data;
    let value = super::copy::evaluate_standalone(state, start, bound, 1).ok()?;
    ScalarValue::try_from_array(&value, 0).ok()
}

enum Item {
    Value(Value),
    Default,
}

/// One VALUES item, if it is a parameter, DEFAULT, or a literal of the column's type.
fn value(e: &SqlExpr, ty: &SqlType) -> Option<Item> {
    let literal = |v: ScalarValue| {
        let converted = column_array(std::iter::once(v), ty)?;
        ScalarValue::try_from_array(&converted, 0)
            .ok()
            .map(|c| Item::Value(Value::Const(c)))
    };
    match e {
        SqlExpr::Identifier(i)
            if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") =>
        {
            Some(Item::Default)
        }
        SqlExpr::Nested(inner) => value(inner, ty),
        SqlExpr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            SqlExpr::Value(v) => match &v.value {
                ast::Value::Number(n, _) => literal(number(&format!("-{n}"))?),
                _ => None,
            },
            _ => None,
        },
        SqlExpr::Value(v) => match &v.value {
            ast::Value::Placeholder(p) => {
                let n: usize = p.strip_prefix('$')?.parse().ok()?;
                n.checked_sub(1).map(|i| Item::Value(Value::Param(i)))
            }
            ast::Value::Null => literal(ScalarValue::Null),
            ast::Value::Boolean(b) if *ty == SqlType::Bool => {
                literal(ScalarValue::Boolean(Some(*b)))
            }
            ast::Value::Number(n, _) if is_number(ty) => literal(number(n)?),
            // Text literals only into text columns: other types read text in PostgreSQL's
            // formats, which the planned path's casts implement.
            ast::Value::SingleQuotedString(s)
                if matches!(ty, SqlType::Text | SqlType::Varchar(_)) =>
            {
                literal(ScalarValue::Utf8(Some(s.clone())))
            }
            _ => None,
        },
        _ => None,
    }
}

fn is_number(ty: &SqlType) -> bool {
    matches!(
        ty,
        SqlType::Int2 | SqlType::Int4 | SqlType::Int8 | SqlType::Float4 | SqlType::Float8
    )
}

fn number(n: &str) -> Option<ScalarValue> {
    match n.parse::<i64>() {
        Ok(i) => Some(ScalarValue::Int64(Some(i))),
        Err(_) => n.parse::<f64>().ok().map(|f| ScalarValue::Float64(Some(f))),
    }
}

/// The values as an array the table writer takes for a column of `ty` (text for bytea, jsonb
/// and uuid, which it reads itself); `None` when a value does not convert exactly.
fn column_array(values: impl Iterator<Item = ScalarValue>, ty: &SqlType) -> Option<ArrayRef> {
    let target = match ty {
        SqlType::Jsonb | SqlType::Uuid => DataType::Utf8,
        other => other.arrow_type(),
    };
    let values: Vec<ScalarValue> = values.collect();
    let typed = values
        .iter()
        .find(|v| !v.is_null())
        .map_or(target.clone(), ScalarValue::data_type);
    let values = values
        .into_iter()
        .map(|v| match v.is_null() {
            true => ScalarValue::try_from(&typed),
            false => Ok(v),
        })
        .collect::<datafusion::error::Result<Vec<_>>>()
        .ok()?;
    let array = ScalarValue::iter_to_array(values).ok()?;
    if array.data_type() == &target {
        return Some(array);
    }
    // bytea given as text is read by the writer (`\x...` escapes).
    if *ty == SqlType::Bytea && array.data_type() == &DataType::Utf8 {
        return Some(array);
    }
    if !matches!(
        (array.data_type(), ty),
        (
            DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::Float32
                | DataType::Float64
                | DataType::Null,
            _
        ) | (
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8,
            SqlType::Text | SqlType::Varchar(_) | SqlType::Jsonb | SqlType::Uuid
        )
    ) {
        return None;
    }
    // Fractions into integer columns round in PostgreSQL, truncate in arrow: planned path.
    if matches!(array.data_type(), DataType::Float32 | DataType::Float64)
        && matches!(ty, SqlType::Int2 | SqlType::Int4 | SqlType::Int8)
    {
        return None;
    }
    super::copy::strict_cast(&array, &target).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Engine;
    use crate::engine::QueryOutput;

    async fn fast(session: &Session, sql: &str) -> bool {
        let prepared = session
            .prepare(Session::parse(sql).unwrap().remove(0))
            .await
            .unwrap();
        prepared.is_fast_insert()
    }

    #[tokio::test]
    async fn plain_inserts_of_values_skip_the_planner() {
        let engine = Engine::in_memory();
        let session = engine.new_session("eddy", "eddy");
        for sql in [
            "CREATE TABLE t (id serial PRIMARY KEY, v text, n int DEFAULT 3)",
            "CREATE TABLE parent (k int PRIMARY KEY)",
            "CREATE TABLE child (k int REFERENCES parent (k))",
            "CREATE SOURCE s (a int)",
        ] {
            session
                .run(Session::parse(sql).unwrap().remove(0))
                .await
                .unwrap();
        }
        for sql in [
            "INSERT INTO t (v, n) VALUES ($1, $2)",
            "INSERT INTO t (v) VALUES ($1), ('x')",
            "INSERT INTO t VALUES (DEFAULT, $1)",
            "INSERT INTO t (v, n) VALUES (upper($1), $2 * 2)",
            "INSERT INTO t (v) VALUES ($1) ON CONFLICT DO NOTHING",
            "INSERT INTO child VALUES ($1)",
        ] {
            assert!(fast(&session, sql).await, "{sql}");
        }
        for sql in [
            "INSERT INTO t (v) VALUES ($1) RETURNING id",
            "INSERT INTO t (v) SELECT 'a'",
            "INSERT INTO t (id, v) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = 'y'",
            "INSERT INTO t (v, n) VALUES ($1, DEFAULT), ($2, 4)",
            "INSERT INTO parent VALUES ($1)",
            "INSERT INTO s VALUES ($1)",
        ] {
            assert!(!fast(&session, sql).await, "{sql}");
        }
        // The fast path writes what the planned one would.
        let prepared = session
            .prepare(
                Session::parse("INSERT INTO t (v) VALUES ($1), (lower($2))")
                    .unwrap()
                    .remove(0),
            )
            .await
            .unwrap();
        for (a, b) in [("a", "B"), ("c", "D")] {
            session
                .execute(
                    &prepared,
                    vec![
                        ScalarValue::Utf8(Some(a.into())),
                        ScalarValue::Utf8(Some(b.into())),
                    ],
                )
                .await
                .unwrap();
        }
        let out = session
            .run(
                Session::parse("SELECT id, v, n FROM t ORDER BY id")
                    .unwrap()
                    .remove(0),
            )
            .await
            .unwrap();
        let QueryOutput::Rows { stream, .. } = out else {
            panic!("rows")
        };
        let batches: Vec<_> = futures::TryStreamExt::try_collect(stream).await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert_eq!(
            text,
            "+----+---+---+\n| id | v | n |\n+----+---+---+\n| 1  | a | 3 |\n| 2  | b | 3 |\n\
             | 3  | c | 3 |\n| 4  | d | 3 |\n+----+---+---+"
        );
    }
}
