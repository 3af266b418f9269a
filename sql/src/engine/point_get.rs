//! The point-get fast path: `SELECT <columns> FROM <table> WHERE <pk> = <value> [AND ...]`
//! with every primary-key column fixed by equality and nothing else in the query.
//!
//! Such a statement is still planned by DataFusion when it is prepared (that gives parameter
//! types and the result schema), but each execution reads the one key directly instead of
//! optimizing and running a plan: the key is encoded from the bound values, looked up through
//! the session's transaction, and the row decoded into a one-row batch. The result is the same
//! as the planned query's; the catalog version recorded at prepare time guards against the
//! table changing underneath (the general path is used then).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, Expr as SqlExpr, SelectItem, SetExpr, Statement, TableFactor,
};

use super::ddl::ident;
use super::session::Session;
use crate::catalog::{Relation, TableDef};
use crate::codec::key::encode_scalar;
use crate::codec::row::RowDecoder;
use crate::error::Result;

/// Where one key column's value comes from.
#[derive(Debug, Clone)]
enum KeyValue {
    /// `$n`, zero-based.
    Param(usize),
    Literal(ScalarValue),
}

#[derive(Debug, Clone)]
pub struct PointGet {
    def: Arc<TableDef>,
    /// One per primary-key column, in key order.
    key: Vec<KeyValue>,
    /// Table column of each output column.
    columns: Vec<usize>,
    /// The table's column types, and the distinct columns to decode (sorted).
    types: Vec<crate::types::SqlType>,
    decoded: Vec<usize>,
}

impl PointGet {
    /// Recognises the statement shape; `None` for anything else.
    pub fn detect(statement: &Statement, session: &Session) -> Result<Option<Self>> {
        let Statement::Query(query) = statement else {
            return Ok(None);
        };
        let plain = query.with.is_none()
            && query.order_by.is_none()
            && query.limit_clause.is_none()
            && query.fetch.is_none()
            && query.locks.is_empty();
        let SetExpr::Select(select) = query.body.as_ref() else {
            return Ok(None);
        };
        if !plain
            || select.distinct.is_some()
            || select.from.len() != 1
            || !select.from[0].joins.is_empty()
            || select.having.is_some()
            || select.qualify.is_some()
            || !select.named_window.is_empty()
            || !matches!(&select.group_by, ast::GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty())
        {
            return Ok(None);
        }
        let TableFactor::Table {
            name, args: None, ..
        } = &select.from[0].relation
        else {
            return Ok(None);
        };
        let Some((_, _, Relation::Table(def))) = session.resolve(name)? else {
            return Ok(None);
        };
        if def.primary_key.is_empty() {
            return Ok(None);
        }
        let Some(columns) = output_columns(&select.projection, &def) else {
            return Ok(None);
        };
        let Some(selection) = &select.selection else {
            return Ok(None);
        };
        let mut key: Vec<Option<KeyValue>> = vec![None; def.primary_key.len()];
        if !collect_equalities(selection, &def, &mut key) {
            return Ok(None);
        }
        let Some(key) = key.into_iter().collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        let mut decoded = columns.clone();
        decoded.sort_unstable();
        decoded.dedup();
        let types = def.types();
        Ok(Some(PointGet {
            def,
            key,
            columns,
            types,
            decoded,
        }))
    }

    /// Reads the row for `params` and returns it (or nothing) as a batch of `schema`.
    pub fn execute(
        &self,
        session: &Session,
        params: &[ScalarValue],
        schema: &SchemaRef,
    ) -> Result<RecordBatch> {
        let mut key = self.def.key_prefix();
        let mut found = true;
        for (value, &col) in self.key.iter().zip(&self.def.primary_key) {
            let v = match value {
                KeyValue::Param(i) => params.get(*i).cloned().unwrap_or(ScalarValue::Null),
                KeyValue::Literal(v) => v.clone(),
            };
            found &= encode_scalar(&v, &self.def.columns[col].ty, &mut key)?;
        }
        let value = if found {
            let txn = session.txn().lock();
            match txn.overlay_get(&key) {
                Some(v) => v.map(<[u8]>::to_vec),
                None if txn.is_truncated(self.def.id) => None,
                None => {
                    drop(txn);
                    session.engine().kv().get(&key)?
                }
            }
        } else {
            None
        };
        decode(
            &self.types,
            &self.decoded,
            &self.columns,
            value.as_deref(),
            schema,
        )
    }
}

/// One stored row (or none) as a batch of `schema`, whose columns are the table columns
/// `columns`; `decoded` is their sorted distinct set.
fn decode(
    types: &[crate::types::SqlType],
    decoded: &[usize],
    columns: &[usize],
    value: Option<&[u8]>,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let mut decoder = RowDecoder::new(types, Some(decoded), 1);
    if let Some(v) = value {
        decoder.append(v)?;
    }
    let arrays = decoder.finish()?;
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .map(|c| arrays[decoded.binary_search(c).expect("decoded column")].clone())
        .collect();
    let options = RecordBatchOptions::new().with_row_count(Some(usize::from(value.is_some())));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        arrays,
        &options,
    )?)
}

/// The committed row of a table or materialized view with the primary key `key` (one value
/// per key column, in key order, converted to the column types), as a batch of every column
/// with zero or one row: the HTTP API's point read, which needs no session.
pub fn read_committed(
    engine: &crate::Engine,
    def: &TableDef,
    key: &[ScalarValue],
) -> Result<RecordBatch> {
    if key.len() != def.primary_key.len() {
        return Err(crate::error::Error::internal(
            "a point read needs one value per key column",
        ));
    }
    let mut encoded = def.key_prefix();
    let mut found = true;
    for (value, &col) in key.iter().zip(&def.primary_key) {
        found &= encode_scalar(value, &def.columns[col].ty, &mut encoded)?;
    }
    let value = match found {
        true => engine.kv().get(&encoded)?,
        false => None,
    };
    let columns: Vec<usize> = (0..def.columns.len()).collect();
    decode(
        &def.types(),
        &columns,
        &columns,
        value.as_deref(),
        &def.arrow_schema(),
    )
}

fn output_columns(items: &[SelectItem], def: &TableDef) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for item in items {
        match item {
            SelectItem::Wildcard(opts) if is_plain_wildcard(opts) => {
                out.extend(0..def.columns.len())
            }
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                out.push(column_of(e, def)?)
            }
            _ => return None,
        }
    }
    Some(out)
}

fn is_plain_wildcard(opts: &ast::WildcardAdditionalOptions) -> bool {
    opts.opt_exclude.is_none()
        && opts.opt_except.is_none()
        && opts.opt_replace.is_none()
        && opts.opt_rename.is_none()
        && opts.opt_ilike.is_none()
}

fn column_of(e: &SqlExpr, def: &TableDef) -> Option<usize> {
    match e {
        SqlExpr::Identifier(i) => def.column_index(&ident(i)),
        SqlExpr::CompoundIdentifier(parts) => def.column_index(&ident(parts.last()?)),
        SqlExpr::Nested(inner) => column_of(inner, def),
        _ => None,
    }
}

fn key_value(e: &SqlExpr) -> Option<KeyValue> {
    match e {
        SqlExpr::Value(v) => match &v.value {
            ast::Value::Placeholder(p) => {
                let n: usize = p.strip_prefix('$')?.parse().ok()?;
                n.checked_sub(1).map(KeyValue::Param)
            }
            ast::Value::Number(n, _) => n
                .parse::<i64>()
                .ok()
                .map(|i| KeyValue::Literal(ScalarValue::Int64(Some(i)))),
            ast::Value::SingleQuotedString(s) => {
                Some(KeyValue::Literal(ScalarValue::Utf8(Some(s.clone()))))
            }
            _ => None,
        },
        SqlExpr::Nested(inner) => key_value(inner),
        _ => None,
    }
}

/// Fills `key` from `a = b AND c = d ...`; false if anything else appears.
fn collect_equalities(e: &SqlExpr, def: &TableDef, key: &mut [Option<KeyValue>]) -> bool {
    match e {
        SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => collect_equalities(left, def, key) && collect_equalities(right, def, key),
        SqlExpr::Nested(inner) => collect_equalities(inner, def, key),
        SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let (col, value) = match (column_of(left, def), key_value(right)) {
                (Some(c), Some(v)) => (c, v),
                _ => match (column_of(right, def), key_value(left)) {
                    (Some(c), Some(v)) => (c, v),
                    _ => return false,
                },
            };
            let Some(pos) = def.primary_key.iter().position(|&k| k == col) else {
                return false;
            };
            if key[pos].is_some() {
                return false;
            }
            key[pos] = Some(value);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Engine;

    async fn detect(session: &Session, sql: &str) -> bool {
        let crate::engine::Stmt::Sql(statement) = Session::parse(sql).unwrap().remove(0) else {
            panic!("not a SQL statement: {sql}")
        };
        PointGet::detect(&statement, session).unwrap().is_some()
    }

    #[tokio::test]
    async fn only_whole_key_equalities_take_the_fast_path() {
        let engine = Engine::in_memory();
        let session = engine.new_session("eddy", "eddy");
        for sql in [
            "CREATE TABLE t (a int, b text, v int, PRIMARY KEY (a, b))",
            "CREATE TABLE nokey (a int)",
        ] {
            session
                .run(Session::parse(sql).unwrap().remove(0))
                .await
                .unwrap();
        }
        assert!(detect(&session, "SELECT v FROM t WHERE a = $1 AND b = $2").await);
        assert!(detect(&session, "SELECT * FROM t WHERE b = 'x' AND a = 1").await);
        assert!(
            detect(
                &session,
                "SELECT v AS value, a FROM public.t WHERE (a = $1) AND b = $2"
            )
            .await
        );
        assert!(
            !detect(&session, "SELECT v FROM t WHERE a = $1").await,
            "partial key"
        );
        assert!(
            !detect(
                &session,
                "SELECT v FROM t WHERE a = $1 AND b = $2 AND v = 3"
            )
            .await
        );
        assert!(!detect(&session, "SELECT v + 1 FROM t WHERE a = 1 AND b = 'x'").await);
        assert!(!detect(&session, "SELECT count(*) FROM t WHERE a = 1 AND b = 'x'").await);
        assert!(!detect(&session, "SELECT v FROM t WHERE a = 1 AND b = 'x' LIMIT 1").await);
        assert!(!detect(&session, "SELECT a FROM nokey WHERE a = 1").await);
        assert!(!detect(&session, "SELECT v FROM t WHERE a = 1 OR b = 'x'").await);
    }
}

#[cfg(test)]
mod view_tests {
    use super::*;
    use crate::Engine;

    #[tokio::test]
    async fn a_grouping_views_key_takes_the_fast_path() {
        let engine = Engine::in_memory();
        let session = engine.new_session("eddy", "eddy");
        for sql in [
            "CREATE SOURCE ev (k int, x int)",
            "CREATE MATERIALIZED VIEW agg AS SELECT k, count(*) AS n, sum(x) AS s FROM ev GROUP BY k",
        ] {
            session
                .run(Session::parse(sql).unwrap().remove(0))
                .await
                .unwrap();
        }
        let crate::engine::Stmt::Sql(statement) =
            Session::parse("SELECT n, s FROM agg WHERE k = $1")
                .unwrap()
                .remove(0)
        else {
            panic!()
        };
        let Some((_, _, Relation::Table(def))) = session
            .resolve(&datafusion::sql::sqlparser::ast::ObjectName::from(vec![
                ast::Ident::new("agg"),
            ]))
            .unwrap()
        else {
            panic!("agg")
        };
        assert_eq!(def.primary_key, vec![0]);
        assert!(PointGet::detect(&statement, &session).unwrap().is_some());
    }
}
