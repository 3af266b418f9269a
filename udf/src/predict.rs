//! `PREDICT(model, feature, ...)`: scores rows with a catalog model, one ONNX Runtime call per
//! Arrow batch. The model name must be a literal, so the model and its feature count are
//! checked when the query is planned; a NULL feature gives a NULL prediction.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float32Type};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::onnx::Model;

/// Finds catalog models by name (the engine implements it).
pub trait ModelLookup: Send + Sync + std::fmt::Debug {
    fn model(&self, name: &str) -> std::result::Result<Arc<Model>, String>;
}

#[derive(Debug)]
struct Predict {
    lookup: Arc<dyn ModelLookup>,
    signature: Signature,
}

impl PartialEq for Predict {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.lookup, &other.lookup)
    }
}

impl Eq for Predict {}

impl Hash for Predict {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "predict".hash(state);
    }
}

pub fn predict_udf(lookup: Arc<dyn ModelLookup>) -> ScalarUDF {
    ScalarUDF::new_from_impl(Predict {
        lookup,
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

fn model_name(value: Option<&ScalarValue>) -> Option<String> {
    match value? {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

impl Predict {
    fn model(&self, name: &str, features: usize) -> Result<Arc<Model>> {
        let model = match self.lookup.model(name) {
            Ok(m) => m,
            Err(e) => return plan_err!("{e}"),
        };
        match model.feature_count() {
            Ok(n) if n == features => Ok(model),
            Ok(n) => plan_err!("model \"{name}\" takes {n} features, not {features}"),
            Err(e) => plan_err!("model \"{name}\": {e}"),
        }
    }
}

impl ScalarUDFImpl for Predict {
    fn name(&self) -> &str {
        "predict"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let Some(name) = args.scalar_arguments.first().and_then(|v| model_name(*v)) else {
            return plan_err!(
                "PREDICT's first argument must be a model name, e.g. PREDICT('my_model', a, b)"
            );
        };
        let features = &args.arg_fields[1..];
        self.model(&name, features.len())?;
        for f in features {
            if !f.data_type().is_numeric() && f.data_type() != &DataType::Null {
                return plan_err!(
                    "PREDICT features must be numbers; \"{}\" is {}",
                    f.name(),
                    f.data_type()
                );
            }
        }
        Ok(Arc::new(Field::new("predict", DataType::Float64, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let ColumnarValue::Scalar(name) = &args.args[0] else {
            return exec_err!("PREDICT's model name must be a literal");
        };
        let Some(name) = model_name(Some(name)) else {
            return exec_err!("PREDICT's model name must be text");
        };
        let model = self.model(&name, args.args.len() - 1)?;
        let columns: Vec<ArrayRef> = args.args[1..]
            .iter()
            .map(|c| Ok(cast(&c.to_array(n)?, &DataType::Float32)?))
            .collect::<Result<_>>()?;
        let values: Vec<&[f32]> = columns
            .iter()
            .map(|c| c.as_primitive::<Float32Type>().values().as_ref())
            .collect();
        let scores = model
            .predict(&values, n)
            .map_err(|e| datafusion::error::DataFusionError::Execution(e.0))?;
        let valid = |row: usize| columns.iter().all(|c| c.is_valid(row));
        let out: Float64Array = (0..n).map(|i| valid(i).then(|| scores[i] as f64)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
