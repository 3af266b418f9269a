//! JSON field access: PostgreSQL's `->` and `->>` operators over `jsonb` and `text` values,
//! as the functions `json_get(json, key)` (a JSON value, typed jsonb) and
//! `json_get_text(json, key)` (text). A key is a field name or an array index.
//!
//! Each value is parsed once per call (the per-row work a text JSON column requires); NULL in,
//! NULL out, and a missing field or index is NULL, as in PostgreSQL.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DFSchema, ScalarValue, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::sql::sqlparser::ast::BinaryOperator;

/// Arrow field metadata that marks a text column as PostgreSQL `jsonb` (the engine's
/// convention, see eddy-sql's types module).
const PG_TYPE_KEY: &str = "eddy.pg_type";

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonGet {
    as_text: bool,
    signature: Signature,
}

pub fn json_get(as_text: bool) -> ScalarUDF {
    ScalarUDF::new_from_impl(JsonGet {
        as_text,
        signature: Signature::any(2, Volatility::Immutable),
    })
}

enum Key {
    Field(String),
    Index(i64),
}

fn key_at(keys: &ColumnarValue, row: usize) -> Result<Option<Key>> {
    let scalar = match keys {
        ColumnarValue::Scalar(s) => s.clone(),
        ColumnarValue::Array(a) => ScalarValue::try_from_array(a, row)?,
    };
    Ok(match scalar {
        ScalarValue::Utf8(k) | ScalarValue::LargeUtf8(k) | ScalarValue::Utf8View(k) => {
            k.map(Key::Field)
        }
        ScalarValue::Int64(i) => i.map(Key::Index),
        ScalarValue::Int32(i) => i.map(|i| Key::Index(i as i64)),
        ScalarValue::Int16(i) => i.map(|i| Key::Index(i as i64)),
        ScalarValue::Null => None,
        other => {
            return exec_err!(
                "a JSON key must be text or an integer, not {}",
                other.data_type()
            );
        }
    })
}

fn lookup<'a>(value: &'a serde_json::Value, key: &Key) -> Option<&'a serde_json::Value> {
    match (value, key) {
        (serde_json::Value::Object(m), Key::Field(f)) => m.get(f),
        (serde_json::Value::Array(a), Key::Index(i)) => {
            let i = if *i < 0 { a.len() as i64 + i } else { *i };
            usize::try_from(i).ok().and_then(|i| a.get(i))
        }
        _ => None,
    }
}

impl ScalarUDFImpl for JsonGet {
    fn name(&self) -> &str {
        if self.as_text {
            "json_get_text"
        } else {
            "json_get"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> Result<FieldRef> {
        let field = Field::new(self.name(), DataType::Utf8, true);
        Ok(Arc::new(if self.as_text {
            field
        } else {
            field.with_metadata(HashMap::from([(
                PG_TYPE_KEY.to_string(),
                "jsonb".to_string(),
            )]))
        }))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let docs: ArrayRef = args.args[0].to_array(n)?;
        let docs = match docs.data_type() {
            DataType::Utf8 => docs,
            DataType::Utf8View | DataType::LargeUtf8 => cast(&docs, &DataType::Utf8)?,
            DataType::Null => return Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None))),
            other => return exec_err!("operator -> needs json, jsonb or text, not {other}"),
        };
        let docs = docs.as_string::<i32>();
        let mut out = StringBuilder::with_capacity(n, n * 8);
        for row in 0..n {
            let Some(key) = (!docs.is_null(row))
                .then(|| key_at(&args.args[1], row))
                .transpose()?
                .flatten()
            else {
                out.append_null();
                continue;
            };
            let doc: serde_json::Value = match serde_json::from_str(docs.value(row)) {
                Ok(v) => v,
                Err(e) => return exec_err!("invalid input syntax for type json: {e}"),
            };
            match lookup(&doc, &key) {
                None | Some(serde_json::Value::Null) if self.as_text => out.append_null(),
                None => out.append_null(),
                Some(serde_json::Value::String(s)) if self.as_text => out.append_value(s),
                Some(v) => out.append_value(v.to_string()),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Plans `a -> b` as `json_get(a, b)` and `a ->> b` as `json_get_text(a, b)`.
#[derive(Debug)]
pub struct JsonOperators;

impl ExprPlanner for JsonOperators {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        _schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        let as_text = match expr.op {
            BinaryOperator::Arrow => false,
            BinaryOperator::LongArrow => true,
            _ => return Ok(PlannerResult::Original(expr)),
        };
        Ok(PlannerResult::Planned(Expr::ScalarFunction(
            datafusion::logical_expr::expr::ScalarFunction::new_udf(
                Arc::new(json_get(as_text)),
                vec![expr.left, expr.right],
            ),
        )))
    }
}
