//! Correlated subqueries DataFusion cannot decorrelate (a recursive CTE that reads the outer
//! row, as asyncpg's type introspection has), run the way PostgreSQL runs every correlated
//! subquery: once per outer row, with the outer values as parameters.
//!
//! The rewrite turns `(WITH RECURSIVE … t.oid …)` into `eddy_subquery('<the subquery with
//! $1 for t.oid>', t.oid)`. The function plans the subquery once per statement and runs it
//! for each row; more than one row is PostgreSQL's error 21000.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::async_udf::{AsyncScalarUDF, AsyncScalarUDFImpl};
use datafusion::logical_expr::{
    ColumnarValue, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use parking_lot::Mutex;

use crate::engine::catalog_provider::SessionView;

pub const NAME: &str = "eddy_subquery";

struct Subquery {
    view: Arc<SessionView>,
    signature: Signature,
    plans: Mutex<HashMap<String, LogicalPlan>>,
}

impl std::fmt::Debug for Subquery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(NAME)
    }
}

impl PartialEq for Subquery {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.view, &other.view)
    }
}
impl Eq for Subquery {}
impl std::hash::Hash for Subquery {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        NAME.hash(state)
    }
}

pub fn register(ctx: &SessionContext, view: Arc<SessionView>) {
    let f = Subquery {
        view,
        signature: Signature::variadic_any(Volatility::Volatile),
        plans: Mutex::default(),
    };
    ctx.register_udf(AsyncScalarUDF::new(Arc::new(f)).into_scalar_udf());
}

impl Subquery {
    /// The subquery's plan, planned once per text.
    async fn plan(&self, sql: &str) -> DfResult<LogicalPlan> {
        if let Some(plan) = self.plans.lock().get(sql) {
            return Ok(plan.clone());
        }
        let state = self
            .view
            .state()
            .ok_or_else(|| DataFusionError::Internal("session closed".into()))?;
        let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
        let statement = datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql)
            .map_err(|e| DataFusionError::Plan(e.to_string()))?
            .pop()
            .ok_or_else(|| DataFusionError::Plan("empty subquery".into()))?;
        // The same PostgreSQL forms as the statement it came from.
        let statement = super::rewrite(statement);
        let plan = state
            .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                statement,
            )))
            .await?;
        self.plans.lock().insert(sql.to_string(), plan.clone());
        Ok(plan)
    }
}

fn sql_argument(value: Option<&ScalarValue>) -> DfResult<String> {
    match value {
        Some(ScalarValue::Utf8(Some(s))) => Ok(s.clone()),
        _ => Err(DataFusionError::Plan(format!(
            "{NAME} takes the subquery's text as its first argument"
        ))),
    }
}

impl ScalarUDFImpl for Subquery {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Err(DataFusionError::Internal(format!(
            "{NAME}'s type comes from its subquery"
        )))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let sql = sql_argument(args.scalar_arguments.first().copied().flatten())?;
        // Planning reads only the session's catalog: nothing here waits on I/O.
        let plan = futures::executor::block_on(self.plan(&sql))?;
        let field = plan.schema().field(0);
        Ok(Arc::new(Field::new(NAME, field.data_type().clone(), true)))
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Err(DataFusionError::Internal(format!(
            "{NAME} runs asynchronously"
        )))
    }
}

#[async_trait]
impl AsyncScalarUDFImpl for Subquery {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let ColumnarValue::Scalar(ScalarValue::Utf8(Some(sql))) = &args.args[0] else {
            return Err(DataFusionError::Plan(format!(
                "{NAME} takes the subquery's text as its first argument"
            )));
        };
        let plan = self.plan(sql).await?;
        let types = plan.get_parameter_types()?;
        let state = self
            .view
            .state()
            .ok_or_else(|| DataFusionError::Internal("session closed".into()))?;
        let rows = args.number_rows;
        let arrays = args.args[1..]
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<DfResult<Vec<_>>>()?;
        let out_type = args.return_field.data_type().clone();
        let mut values = Vec::with_capacity(rows);
        for row in 0..rows {
            let params = arrays
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let v = ScalarValue::try_from_array(a, row)?;
                    match types.get(&format!("${}", i + 1)).cloned().flatten() {
                        Some(t) if t != v.data_type() => v.cast_to(&t),
                        _ => Ok(v),
                    }
                })
                .collect::<DfResult<Vec<_>>>()?;
            let bound = plan.clone().with_param_values(params)?;
            let batches = datafusion::prelude::DataFrame::new(state.clone(), bound)
                .collect()
                .await?;
            let found: usize = batches.iter().map(|b| b.num_rows()).sum();
            if found > 1 {
                return Err(crate::error::to_df(crate::error::Error::user(
                    "21000",
                    "more than one row returned by a subquery used as an expression",
                )));
            }
            let value = match batches.iter().find(|b| b.num_rows() > 0) {
                Some(b) => ScalarValue::try_from_array(b.column(0), 0)?.cast_to(&out_type)?,
                None => ScalarValue::try_from(&out_type)?,
            };
            values.push(value);
        }
        if values.is_empty() {
            return Ok(ColumnarValue::Array(
                datafusion::arrow::array::new_empty_array(&out_type),
            ));
        }
        Ok(ColumnarValue::Array(ScalarValue::iter_to_array(values)?))
    }
}
