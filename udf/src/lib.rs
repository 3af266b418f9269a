//! Eddy's SQL functions: JSON access, PostgreSQL's limits on one value (`limits`), and ONNX models run in-process (`onnx`), the base of
//! PREDICT and the model registry.

pub mod json;
pub mod limits;
pub mod onnx;
pub mod predict;

use std::sync::Arc;

use datafusion::error::Result;
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::SessionContext;

/// Registers Eddy's functions and operators on a DataFusion context.
pub fn register(ctx: &mut SessionContext) -> Result<()> {
    ctx.register_udf(Arc::new(json::json_get(false)))?;
    ctx.register_udf(Arc::new(json::json_get(true)))?;
    ctx.register_expr_planner(Arc::new(json::JsonOperators))?;
    limits::register(ctx);
    Ok(())
}
