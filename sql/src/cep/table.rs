//! A MATCH_RECOGNIZE clause as a table DataFusion plans: the marker table function
//! `syntax.rs` rewrote the clause to returns the [`MatchTable`] its planner compiled before
//! DataFusion planned the statement (a session's for queries over tables, the streaming
//! planner's for streams and views), by the clause's texts. The table's scan is a
//! [`MatchRecognizeExec`] over the input's plan.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableFunctionArgs;
use datafusion::catalog::{Session as DfSession, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast::{
    FunctionArg, FunctionArgExpr, Statement, TableFactor, Visit, Visitor,
};
use parking_lot::Mutex;

use super::exec::MatchRecognizeExec;
use super::run::MatchPlan;
use super::syntax::MARKER;
use crate::error::Error;

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
        FunctionArg::Unnamed(FunctionArgExpr::Expr(
            datafusion::sql::sqlparser::ast::Expr::Value(v),
        )) => match &v.value {
            datafusion::sql::sqlparser::ast::Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    match args.args.as_slice() {
        [input, body] => Some((text(input)?, text(body)?)),
        _ => None,
    }
}

/// A MATCH_RECOGNIZE over its input's rows.
#[derive(Debug)]
pub struct MatchTable {
    pub input: LogicalPlan,
    pub plan: Arc<MatchPlan>,
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
        let exec: Arc<dyn ExecutionPlan> =
            Arc::new(MatchRecognizeExec::new(input, self.plan.clone()));
        match projection {
            None => Ok(exec),
            Some(columns) => {
                let schema = exec.schema();
                let exprs = columns
                    .iter()
                    .map(|i| {
                        let name = schema.field(*i).name().clone();
                        let col: Arc<dyn datafusion::physical_plan::PhysicalExpr> = Arc::new(
                            datafusion::physical_expr::expressions::Column::new(&name, *i),
                        );
                        (col, name)
                    })
                    .collect::<Vec<_>>();
                Ok(Arc::new(
                    datafusion::physical_plan::projection::ProjectionExec::try_new(exprs, exec)?,
                ))
            }
        }
    }
}
