//! MATCH_RECOGNIZE in queries over tables and retained streams (batch semantics).
//!
//! Before DataFusion plans a statement, [`prepare`] plans each clause's input (`SELECT * FROM
//! <input>`, through the session, so it reads what the session sees) and compiles the clause
//! against the input's columns, for the marker table function (`cep/table.rs`) to return;
//! the table's scan runs the input, sorts each partition by the ORDER BY and runs the matcher
//! to each partition's end.

use std::sync::Arc;

use datafusion::sql::sqlparser::ast::Statement;

use super::{Session, Stmt};
use crate::cep::run::MatchPlan;
use crate::cep::syntax::parse_clause;
use crate::cep::table::{MatchTable, Prepared, clauses};
use crate::error::{Error, Result};

/// Plans an input query and compiles the clause over its rows.
async fn compile(
    session: &Session,
    clause: &crate::cep::syntax::Clause,
    input: &str,
) -> Result<(datafusion::logical_expr::LogicalPlan, MatchPlan)> {
    let mut parsed = Session::parse(input)?;
    let Some(Stmt::Sql(statement)) = parsed.pop() else {
        return Err(Error::internal("MATCH_RECOGNIZE input did not parse"));
    };
    let plan = Box::pin(session.plan(&statement)).await?;
    let schema = Arc::new(plan.schema().as_arrow().clone());
    let compiled = MatchPlan::new(clause, schema, &session.ctx().state())?;
    Ok((plan, compiled))
}

/// Plans the input and compiles the clause of every marker call in `statement`.
pub async fn prepare(session: &Session, statement: &Statement, prepared: &Prepared) -> Result<()> {
    for (input, body) in clauses(statement) {
        if prepared.lock().contains_key(&(input.clone(), body.clone())) {
            continue;
        }
        let clause = parse_clause(&body)?;
        let (mut plan, mut compiled) =
            compile(session, &clause, &format!("SELECT * FROM {input}")).await?;
        // Only the columns the clause reads go through the matcher.
        if let Some(narrower) = compiled.narrower_input(&input) {
            (plan, compiled) = compile(session, &clause, &narrower).await?;
        }
        prepared.lock().insert(
            (input, body),
            Arc::new(MatchTable {
                input: plan,
                plan: Arc::new(compiled),
            }),
        );
    }
    Ok(())
}
