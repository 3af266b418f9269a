//! `json_build_object(key, value, ...)` and `jsonb_build_object`: a JSON object from
//! alternating keys and values, as catalog queries (SQLAlchemy's reflection) and
//! applications build them.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

#[derive(Debug, PartialEq, Eq, Hash)]
struct BuildObject {
    name: &'static str,
    signature: Signature,
}

pub fn register(ctx: &SessionContext) {
    for name in ["json_build_object", "jsonb_build_object"] {
        ctx.register_udf(ScalarUDF::new_from_impl(BuildObject {
            name,
            signature: Signature::variadic_any(Volatility::Immutable),
        }));
    }
}

/// One value as JSON.
fn json_value(v: &ScalarValue) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        v if v.is_null() => J::Null,
        ScalarValue::Boolean(Some(b)) => J::Bool(*b),
        ScalarValue::Int8(Some(i)) => J::from(*i),
        ScalarValue::Int16(Some(i)) => J::from(*i),
        ScalarValue::Int32(Some(i)) => J::from(*i),
        ScalarValue::Int64(Some(i)) => J::from(*i),
        ScalarValue::UInt8(Some(i)) => J::from(*i),
        ScalarValue::UInt16(Some(i)) => J::from(*i),
        ScalarValue::UInt32(Some(i)) => J::from(*i),
        ScalarValue::UInt64(Some(i)) => J::from(*i),
        ScalarValue::Float32(Some(f)) => {
            serde_json::Number::from_f64(*f as f64).map_or(J::Null, J::Number)
        }
        ScalarValue::Float64(Some(f)) => {
            serde_json::Number::from_f64(*f).map_or(J::Null, J::Number)
        }
        ScalarValue::Decimal128(Some(_), _, _) => v
            .to_string()
            .parse::<serde_json::Number>()
            .map_or_else(|_| J::String(v.to_string()), J::Number),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => J::String(s.clone()),
        other => J::String(other.to_string()),
    }
}

impl ScalarUDFImpl for BuildObject {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return Err(DataFusionError::Execution(format!(
                "argument list must have even number of elements (the arguments of {} alternate keys and values)",
                self.name
            )));
        }
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(n.max(1)))
            .collect::<DfResult<_>>()?;
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if scalar { 1 } else { n };
        let mut out = StringBuilder::with_capacity(rows, rows * 32);
        for row in 0..rows {
            let mut object: Vec<(String, serde_json::Value)> = Vec::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                if key.is_null() {
                    return Err(DataFusionError::Execution(
                        "null value not allowed for object key".into(),
                    ));
                }
                let key = match key {
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::LargeUtf8(Some(s))
                    | ScalarValue::Utf8View(Some(s)) => s,
                    other => other.to_string(),
                };
                let value = ScalarValue::try_from_array(&pair[1], row)?;
                object.push((key, json_value(&value)));
            }
            out.append_value(if self.name == "jsonb_build_object" {
                let map: serde_json::Map<String, serde_json::Value> = object.into_iter().collect();
                crate::types::jsonb_canonical(&serde_json::Value::Object(map).to_string())
                    .map_err(crate::error::to_df)?
            } else {
                // json keeps the pairs as given, written as PostgreSQL writes them.
                let pairs: Vec<String> = object
                    .iter()
                    .map(|(k, v)| format!("{} : {v}", serde_json::Value::String(k.clone())))
                    .collect();
                format!("{{{}}}", pairs.join(", "))
            });
        }
        super::pg_functions::result(&args.args, Arc::new(out.finish()))
    }
}
