//! Prepared `SELECT expr, ...` with no FROM over parameters and literals, such as single-row
//! scoring (`SELECT predict('m', $1::real, $2::real)`), compiled once into physical
//! expressions over a one-row batch of the parameters. Executing one evaluates the expressions
//! and skips DataFusion's per-execution planning, which costs far more than the expressions.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema};
use datafusion::execution::SessionState;
use datafusion::logical_expr::Volatility;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::PhysicalExpr;
use datafusion::scalar::ScalarValue;

use crate::error::Result;

/// An async function (`pg_advisory_lock`) needs DataFusion's async execution.
fn is_async(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if f.func.as_async().is_some())
}

#[derive(Clone, Debug)]
pub struct ScalarSelect {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// One column per parameter, `$1` first.
    params: SchemaRef,
}

fn param_column(i: usize) -> String {
    format!("__eddy_param_{i}")
}

impl ScalarSelect {
    /// The compiled statement, when `plan` is a projection of one row whose expressions read
    /// nothing but typed parameters and literals.
    pub fn detect(
        plan: &LogicalPlan,
        param_types: &[Option<FieldRef>],
        state: &SessionState,
    ) -> Option<Self> {
        // PostgreSQL's casts, as the analyzer gives a planned query.
        let plan = datafusion::optimizer::AnalyzerRule::analyze(
            &super::pg_casts::PgCasts::new(),
            plan.clone(),
            state.config_options(),
        )
        .ok()?;
        let LogicalPlan::Projection(projection) = &plan else {
            return None;
        };
        let LogicalPlan::EmptyRelation(empty) = projection.input.as_ref() else {
            return None;
        };
        if !empty.produce_one_row {
            return None;
        }
        let fields: Vec<Field> = param_types
            .iter()
            .enumerate()
            .map(|(i, f)| {
                f.as_ref()
                    .map(|f| Field::new(param_column(i + 1), f.data_type().clone(), true))
            })
            .collect::<Option<_>>()?;
        let params = Arc::new(Schema::new(fields));
        let df_schema = DFSchema::try_from(params.as_ref().clone()).ok()?;
        let mut exprs = Vec::with_capacity(projection.expr.len());
        for expr in &projection.expr {
            let nested = expr
                .exists(|e| {
                    Ok(matches!(
                        e,
                        Expr::ScalarSubquery(_)
                            | Expr::Exists(_)
                            | Expr::InSubquery(_)
                            | Expr::OuterReferenceColumn(..)
                            | Expr::Column(_)
                    ) || is_async(e)
                        // now() and friends are replaced by their value when a query is
                        // planned, not evaluated.
                        || matches!(e, Expr::ScalarFunction(f)
                            if f.func.signature().volatility != Volatility::Immutable))
                })
                .ok()?;
            if nested {
                return None;
            }
            let expr = expr
                .clone()
                .transform(|e| {
                    Ok(match e {
                        Expr::Placeholder(p) => {
                            let i: usize = p.id.trim_start_matches('$').parse().unwrap_or(0);
                            Transformed::yes(Expr::Column(Column::from_name(param_column(i))))
                        }
                        other => Transformed::no(other),
                    })
                })
                .ok()?
                .data;
            exprs.push(state.create_physical_expr(expr, &df_schema).ok()?);
        }
        Some(Self { exprs, params })
    }

    /// Evaluates the expressions for bound parameter values (already of the parameters'
    /// types) into one row of `schema`.
    pub fn execute(&self, params: &[ScalarValue], schema: &SchemaRef) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = params
            .iter()
            .map(|p| p.to_array_of_size(1))
            .collect::<std::result::Result<_, _>>()?;
        let input = RecordBatch::try_new_with_options(
            self.params.clone(),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(1)),
        )?;
        let columns: Vec<ArrayRef> = self
            .exprs
            .iter()
            .zip(schema.fields())
            .map(|(e, field)| {
                let array = e.evaluate(&input)?.into_array(1)?;
                Ok(match array.data_type() == field.data_type() {
                    true => array,
                    false => cast(&array, field.data_type())?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}
