//! `PREPARE name [(types)] AS statement`, `EXECUTE name [(values)]` and
//! `DEALLOCATE [PREPARE] name | ALL`: prepared statements in SQL, kept per session.
//!
//! A statement prepared in SQL is planned once, like one prepared over the extended protocol;
//! EXECUTE evaluates its argument expressions and runs it with them. The declared types give
//! parameters the planner could not type from the statement itself. As in PostgreSQL the
//! names live until DEALLOCATE or the end of the session (DISCARD ALL forgets them too).
//! DEALLOCATE of a name Eddy does not know succeeds: PostgreSQL shares that namespace with
//! the protocol's named statements, which drivers such as pgx deallocate this way.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::Field;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{self, Statement};
use futures::TryStreamExt;
use parking_lot::Mutex;

use super::ddl::ident;
use super::session::{CommandTag, Prepared, QueryOutput, Session};
use super::statement::Stmt;
use crate::error::{Error, Result, sqlstate};
use crate::types::SqlType;

/// A session's statements prepared in SQL, by name.
#[derive(Default)]
pub struct SqlPrepared {
    statements: Mutex<HashMap<String, Arc<Prepared>>>,
}

impl SqlPrepared {
    pub fn clear(&self) {
        self.statements.lock().clear();
    }

    fn get(&self, name: &str) -> Result<Arc<Prepared>> {
        self.statements.lock().get(name).cloned().ok_or_else(|| {
            Error::user(
                "26000",
                format!("prepared statement \"{name}\" does not exist"),
            )
        })
    }
}

/// Whether the statement is one of the three.
pub fn is_sql_prepare(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::Prepare { .. }
            | Statement::Execute { name: Some(_), .. }
            | Statement::Deallocate { .. }
    )
}

/// The rows EXECUTE returns are those of the statement it runs; `None` for the others.
pub fn result_schema(
    session: &Session,
    statement: &Statement,
) -> Result<Option<datafusion::arrow::datatypes::SchemaRef>> {
    match statement {
        Statement::Execute {
            name: Some(name), ..
        } => Ok(session
            .sql_prepared()
            .get(&object_name(name))?
            .schema
            .clone()),
        _ => Ok(None),
    }
}

pub async fn execute(session: &Session, statement: &Statement) -> Result<QueryOutput> {
    let prepared = session.sql_prepared();
    match statement {
        Statement::Prepare {
            name,
            data_types,
            statement,
        } => {
            let name = ident(name);
            if prepared.statements.lock().contains_key(&name) {
                return Err(Error::user(
                    "42P05",
                    format!("prepared statement \"{name}\" already exists"),
                ));
            }
            let declared = data_types
                .iter()
                .map(SqlType::from_ast)
                .collect::<Result<Vec<_>>>()?;
            let mut inner = session.prepare(Stmt::Sql((**statement).clone())).await?;
            if declared.len() > inner.param_types.len() {
                inner.param_types.resize(declared.len(), None);
            }
            for (i, ty) in declared.iter().enumerate() {
                if inner.param_types[i].is_none() {
                    inner.param_types[i] = Some(Arc::new(Field::new(
                        format!("${}", i + 1),
                        ty.arrow_type(),
                        true,
                    )));
                }
            }
            prepared.statements.lock().insert(name, Arc::new(inner));
            Ok(QueryOutput::Command(CommandTag::new("PREPARE")))
        }
        Statement::Execute {
            name: Some(name),
            parameters,
            ..
        } => {
            let name = object_name(name);
            let inner = prepared.get(&name)?;
            if parameters.len() != inner.param_types.len() {
                return Err(Error::user(
                    sqlstate::SYNTAX_ERROR,
                    format!("wrong number of parameters for prepared statement \"{name}\""),
                )
                .with_detail(format!(
                    "Expected {} parameters but got {}.",
                    inner.param_types.len(),
                    parameters.len()
                )));
            }
            let values = evaluate(session, parameters).await?;
            session.execute_in_txn(&inner, values).await
        }
        Statement::Deallocate { name, .. } => {
            let name_text = ident(name);
            if name.quote_style.is_none() && name_text.eq_ignore_ascii_case("all") {
                prepared.clear();
                return Ok(QueryOutput::Command(CommandTag::new("DEALLOCATE ALL")));
            }
            prepared.statements.lock().remove(&name_text);
            Ok(QueryOutput::Command(CommandTag::new("DEALLOCATE")))
        }
        other => Err(Error::internal(format!(
            "not a prepared-statement command: {other}"
        ))),
    }
}

fn object_name(name: &ast::ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(ident)
        .unwrap_or_default()
}

/// The values of EXECUTE's argument expressions, by running `SELECT <arguments>`.
async fn evaluate(session: &Session, parameters: &[ast::Expr]) -> Result<Vec<ScalarValue>> {
    if parameters.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {}",
        parameters
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let QueryOutput::Rows { stream, .. } = session.run_nested(sql).await? else {
        return Err(Error::internal("EXECUTE's arguments returned no row"));
    };
    let batches: Vec<_> = stream.try_collect().await?;
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| Error::internal("EXECUTE's arguments returned no row"))?;
    batch
        .columns()
        .iter()
        .map(|c| Ok(ScalarValue::try_from_array(c, 0)?))
        .collect()
}
