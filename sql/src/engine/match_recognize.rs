//! MATCH_RECOGNIZE in queries over tables and retained streams (batch semantics).
//!
//! A clause arrives as the marker table function `cep::syntax` rewrote it to. Before
//! DataFusion plans a statement, [`prepare`] plans each clause's input (`SELECT * FROM
//! <input>`, through the session, so it reads what the session sees) and compiles the clause
//! against the input's columns; the marker function then returns that table
//! ([`MatchTable`]), whose scan runs the input, sorts each partition by the ORDER BY and runs
//! the matcher to each partition's end.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableFunctionArgs;
use datafusion::catalog::{Session as DfSession, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast::{
    FunctionArg, FunctionArgExpr, Statement, TableFactor, Visit, Visitor,
};
use parking_lot::Mutex;

use super::{Session, Stmt};
use crate::cep::run::{MatchPlan, run_batch};
use crate::cep::syntax::{MARKER, parse_clause};
use crate::error::{Error, Result};

/// Clauses compiled for the statement being planned, by (input text, body text).
pub type Prepared = Arc<Mutex<HashMap<(String, String), Arc<MatchTable>>>>;

/// The marker table function: returns the table [`prepare`] compiled for its arguments.
#[derive(Debug)]
pub struct MarkerFunction {
    pub prepared: Prepared,
}

fn literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Literal(ScalarValue::Utf8(Some(s)), _) => Some(s.clone()),
        _ => None,
    }
}

impl TableFunctionImpl for MarkerFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let key = match args.exprs() {
            [input, body] => literal(input).zip(literal(body)),
            _ => None,
        };
        let table = key.and_then(|k| self.prepared.lock().get(&k).cloned());
        match table {
            Some(t) => Ok(t),
            None => Err(crate::error::to_df(Error::internal(
                "a MATCH_RECOGNIZE clause was not prepared",
            ))),
        }
    }
}

/// The marker calls of a statement: (input, body) texts.
pub fn clauses(statement: &Statement) -> Vec<(String, String)> {
    struct Find(Vec<(String, String)>);
    impl Visitor for Find {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            if let Some(texts) = marker_args(factor) {
                self.0.push(texts);
            }
            ControlFlow::Continue(())
        }
    }
    let mut find = Find(Vec::new());
    let _ = statement.visit(&mut find);
    find.0
}

/// The (input, body) texts of a marker call.
pub fn marker_args(factor: &TableFactor) -> Option<(String, String)> {
    let TableFactor::Table {
        name,
        args: Some(args),
        ..
    } = factor
    else {
        return None;
    };
    if !name.to_string().eq_ignore_ascii_case(MARKER) {
        return None;
    }
    let text = |a: &FunctionArg| match a {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => match e {
            datafusion::sql::sqlparser::ast::Expr::Value(v) => match &v.value {
                datafusion::sql::sqlparser::ast::Value::SingleQuotedString(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    match args.args.as_slice() {
        [input, body] => Some((text(input)?, text(body)?)),
        _ => None,
    }
}

/// Plans the input and compiles the clause of every marker call in `statement`.
pub async fn prepare(session: &Session, statement: &Statement, prepared: &Prepared) -> Result<()> {
    for (input, body) in clauses(statement) {
        if prepared.lock().contains_key(&(input.clone(), body.clone())) {
            continue;
        }
        let clause = parse_clause(&body)?;
        let mut parsed = Session::parse(&format!("SELECT * FROM {input}"))?;
        let Some(Stmt::Sql(input_statement)) = parsed.pop() else {
            return Err(Error::internal("MATCH_RECOGNIZE input did not parse"));
        };
        let plan = Box::pin(session.plan(&input_statement)).await?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let compiled = MatchPlan::new(&clause, schema, &session.ctx().state())?;
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

/// A MATCH_RECOGNIZE over its input's rows.
#[derive(Debug)]
pub struct MatchTable {
    input: LogicalPlan,
    plan: Arc<MatchPlan>,
}

#[async_trait::async_trait]
impl TableProvider for MatchTable {
    fn schema(&self) -> SchemaRef {
        self.plan.output.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = state.create_physical_plan(&self.input).await?;
        let batches = datafusion::physical_plan::collect(input, state.task_ctx()).await?;
        let out = run_batch(self.plan.clone(), &batches).map_err(crate::error::to_df)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![out]],
            self.plan.output.clone(),
            projection.cloned(),
        )?)
    }
}
