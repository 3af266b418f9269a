//! `PREDICT(model, feature, ...)`, `PREDICT_PROBA(model, feature, ...)` and
//! `PREDICT_VERSION(model)`: score rows with a catalog model, one ONNX Runtime call per Arrow
//! batch.
//!
//! The model name must be a literal, so the model, its feature count and the feature types
//! are checked when the query is planned. A NULL feature gives a NULL prediction. Which
//! version of a model a name means is up to the [`ModelLookup`]: the active version for an
//! ad-hoc query, the version pinned for the current checkpoint epoch inside a continuous
//! query. `PREDICT_VERSION` says which one that is, so an output row can carry the version
//! that scored it.
//!
//! The functions are volatile: a model can change between plan and execution (a new active
//! version), so DataFusion must not fold a call with literal features into a constant.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, ListArray, StringArray,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float32Type};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::onnx::{Model, OutputKind, Predictions};

/// A model as a name resolves to it: the loaded session and the catalog version.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub model: Arc<Model>,
    pub version: u32,
}

/// Finds catalog models by name (the engine implements it: the active version, or the
/// version a running pipeline has pinned).
pub trait ModelLookup: Send + Sync + std::fmt::Debug {
    fn model(&self, name: &str) -> std::result::Result<Resolved, String>;
}

/// A model failed while scoring a batch (bad values for the model, a runtime error). A
/// continuous query sends the rows it cannot score to its dead-letter table.
#[derive(Debug, Clone)]
pub struct ModelRunError {
    pub model: String,
    pub message: String,
}

impl std::fmt::Display for ModelRunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "model \"{}\": {}", self.model, self.message)
    }
}

impl std::error::Error for ModelRunError {}

/// The model failure behind `e`, if that is what it is.
pub fn model_run_error(e: &DataFusionError) -> Option<&ModelRunError> {
    match e.find_root() {
        DataFusionError::External(inner) => inner.downcast_ref::<ModelRunError>(),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Function {
    Predict,
    Proba,
    Version,
}

impl Function {
    fn name(self) -> &'static str {
        match self {
            Function::Predict => "predict",
            Function::Proba => "predict_proba",
            Function::Version => "predict_version",
        }
    }
}

#[derive(Debug)]
struct ModelFunction {
    function: Function,
    lookup: Arc<dyn ModelLookup>,
    signature: Signature,
}

impl PartialEq for ModelFunction {
    fn eq(&self, other: &Self) -> bool {
        self.function == other.function && Arc::ptr_eq(&self.lookup, &other.lookup)
    }
}

impl Eq for ModelFunction {}

impl Hash for ModelFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.function.hash(state);
    }
}

/// PREDICT, PREDICT_PROBA and PREDICT_VERSION over one way of finding models.
pub fn model_udfs(lookup: Arc<dyn ModelLookup>) -> Vec<ScalarUDF> {
    [Function::Predict, Function::Proba, Function::Version]
        .into_iter()
        .map(|function| {
            ScalarUDF::new_from_impl(ModelFunction {
                function,
                lookup: lookup.clone(),
                signature: Signature::variadic_any(Volatility::Volatile),
            })
        })
        .collect()
}

fn model_name(value: Option<&ScalarValue>) -> Option<String> {
    match value? {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

fn proba_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Float64, true)))
}

impl ModelFunction {
    fn resolve(&self, name: &str) -> Result<Resolved> {
        match self.lookup.model(name) {
            Ok(m) => Ok(m),
            Err(e) => plan_err!("{e}"),
        }
    }

    /// The model `name`, checked against `features` features.
    fn model(&self, name: &str, features: usize) -> Result<Resolved> {
        let resolved = self.resolve(name)?;
        let model = &resolved.model;
        match model.feature_count() {
            Ok(n) if n == features => {}
            Ok(n) => return plan_err!("model \"{name}\" takes {n} features, not {features}"),
            Err(e) => return plan_err!("model \"{name}\": {e}"),
        }
        if let Err(e) = model.output_kind() {
            return plan_err!("model \"{name}\": {e}");
        }
        if self.function == Function::Proba && !model.has_probabilities() {
            return plan_err!(
                "model \"{name}\" is not a classifier with class probabilities; use PREDICT"
            );
        }
        Ok(resolved)
    }

    fn return_type_of(&self, model: &Model) -> Result<DataType> {
        Ok(match self.function {
            Function::Version => DataType::Int32,
            Function::Proba => proba_type(),
            Function::Predict => match model.output_kind() {
                Ok(OutputKind::Number) => DataType::Float64,
                Ok(OutputKind::IntLabel) => DataType::Int64,
                Ok(OutputKind::TextLabel) => DataType::Utf8,
                Err(e) => return plan_err!("{e}"),
            },
        })
    }
}

impl ScalarUDFImpl for ModelFunction {
    fn name(&self) -> &str {
        self.function.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        // Only reached without the literal model name (return_field_from_args decides).
        Ok(DataType::Float64)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let upper = self.function.name().to_uppercase();
        let Some(name) = args.scalar_arguments.first().and_then(|v| model_name(*v)) else {
            return plan_err!(
                "{upper}'s first argument must be a model name, e.g. {upper}('my_model'{})",
                if self.function == Function::Version {
                    ""
                } else {
                    ", a, b"
                }
            );
        };
        let features = &args.arg_fields[1..];
        if self.function == Function::Version {
            if !features.is_empty() {
                return plan_err!("PREDICT_VERSION takes only the model name");
            }
            self.resolve(&name)?;
            return Ok(Arc::new(Field::new(self.name(), DataType::Int32, false)));
        }
        let resolved = self.model(&name, features.len())?;
        for f in features {
            if !f.data_type().is_numeric() && f.data_type() != &DataType::Null {
                return plan_err!(
                    "{upper} features must be numbers; \"{}\" is {}",
                    f.name(),
                    f.data_type()
                );
            }
        }
        let ty = self.return_type_of(&resolved.model)?;
        Ok(Arc::new(Field::new(self.name(), ty, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let upper = self.function.name().to_uppercase();
        let ColumnarValue::Scalar(name) = &args.args[0] else {
            return exec_err!("{upper}'s model name must be a literal");
        };
        let Some(name) = model_name(Some(name)) else {
            return exec_err!("{upper}'s model name must be text");
        };
        if self.function == Function::Version {
            let version = self.resolve(&name)?.version as i32;
            return Ok(ColumnarValue::Array(Arc::new(Int32Array::from(vec![
                version;
                n
            ]))));
        }
        let resolved = self.model(&name, args.args.len() - 1)?;
        if self.return_type_of(&resolved.model)? != *args.return_field.data_type() {
            return exec_err!(
                "model \"{name}\" changed its output type since the query was planned"
            );
        }
        let columns: Vec<ArrayRef> = args.args[1..]
            .iter()
            .map(|c| Ok(cast(&c.to_array(n)?, &DataType::Float32)?))
            .collect::<Result<_>>()?;
        let values: Vec<&[f32]> = columns
            .iter()
            .map(|c| c.as_primitive::<Float32Type>().values().as_ref())
            .collect();
        // A row with a NULL feature gets a NULL prediction.
        let nulls = columns.iter().fold(None, |acc: Option<NullBuffer>, c| {
            NullBuffer::union(acc.as_ref(), c.logical_nulls().as_ref())
        });
        let failed = |e: crate::onnx::OnnxError| {
            DataFusionError::External(Box::new(ModelRunError {
                model: name.clone(),
                message: e.0,
            }))
        };
        let out: ArrayRef = if self.function == Function::Proba {
            let probs = resolved.model.predict_proba(&values, n).map_err(failed)?;
            let items = Float64Array::from_iter_values(probs.values.iter().map(|v| *v as f64));
            let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(probs.classes, n));
            Arc::new(ListArray::try_new(
                Arc::new(Field::new("item", DataType::Float64, true)),
                offsets,
                Arc::new(items),
                nulls,
            )?)
        } else {
            match resolved.model.predict(&values, n).map_err(failed)? {
                Predictions::Numbers(v) => Arc::new(Float64Array::new(v.into(), nulls)),
                Predictions::IntLabels(v) => Arc::new(Int64Array::new(v.into(), nulls)),
                Predictions::TextLabels(v) => {
                    Arc::new(StringArray::from_iter(v.into_iter().enumerate().map(
                        |(i, s)| nulls.as_ref().is_none_or(|b| b.is_valid(i)).then_some(s),
                    )))
                }
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}
