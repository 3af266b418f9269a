//! PostgreSQL's limits on one value, for the functions that make a large value out of a small
//! query: `repeat`, `lpad`, `rpad` (a string of at most 1 GB, MaxAllocSize) and `array_repeat`
//! (at most 134,217,727 elements, MaxArraySize). One `SELECT repeat('x', 1500000000)` used to
//! take 3 GB of the server's memory outside any query pool; past the limit it now fails with
//! 54000 before anything is allocated. DataFusion's own functions do the work; [`Bounded`]
//! checks their arguments first.

use std::hash::Hash;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// The largest single value PostgreSQL allocates (MaxAllocSize).
pub const MAX_VALUE_BYTES: u64 = (1 << 30) - 1;
/// The most elements of one array (MaxArraySize).
pub const MAX_ARRAY_ELEMENTS: u64 = MAX_VALUE_BYTES / 8;

/// A value past PostgreSQL's limits (SQLSTATE 54000).
#[derive(Debug)]
pub struct LimitExceeded(pub String);

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitExceeded {}

fn exceeded(message: String) -> DataFusionError {
    DataFusionError::External(Box::new(LimitExceeded(message)))
}

/// Which limit a wrapped function keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Limit {
    /// `repeat(text, n)`: the length of the text times n.
    Repeat,
    /// `lpad` / `rpad(text, n [, fill])`: n characters of up to 4 bytes each.
    Pad,
    /// `array_repeat(value, n)`: n elements.
    ArrayRepeat,
}

/// The largest count an argument holds in this batch (a scalar or an integer column).
fn max_count(v: &ColumnarValue) -> Option<i64> {
    match v {
        ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(n) => n,
            _ => None,
        },
        ColumnarValue::Array(a) => {
            let a = datafusion::arrow::compute::cast(a, &DataType::Int64).ok()?;
            datafusion::arrow::compute::max(a.as_primitive::<Int64Type>())
        }
    }
}

/// The byte length of each text in an array (Utf8, LargeUtf8, Utf8View), from its offsets or
/// views; None for other types.
fn text_lengths(a: &dyn Array) -> Option<Vec<u64>> {
    Some(match a.data_type() {
        DataType::Utf8 => a
            .as_string::<i32>()
            .offsets()
            .lengths()
            .map(|n| n as u64)
            .collect(),
        DataType::LargeUtf8 => a
            .as_string::<i64>()
            .offsets()
            .lengths()
            .map(|n| n as u64)
            .collect(),
        DataType::Utf8View => a
            .as_string_view()
            .views()
            .iter()
            .map(|v| *v as u32 as u64)
            .collect(),
        _ => return None,
    })
}

/// The longest text an argument holds in this batch, in bytes.
fn max_text_bytes(v: &ColumnarValue) -> u64 {
    let longest = |a: &dyn Array| {
        text_lengths(a)
            .and_then(|l| l.into_iter().max())
            .unwrap_or(0)
    };
    match v {
        ColumnarValue::Scalar(s) => s.to_array().map(|a| longest(a.as_ref())).unwrap_or(0),
        ColumnarValue::Array(a) => longest(a.as_ref()),
    }
}

/// Whether some row's `repeat(text, n)` passes [`MAX_VALUE_BYTES`], row by row (run only when
/// the batch's longest text times its largest count does).
fn some_repeat_too_long(args: &[ColumnarValue], rows: usize) -> Result<bool> {
    let (Some(text), Some(count)) = (args.first(), args.get(1)) else {
        return Ok(false);
    };
    let text = text.to_array(rows)?;
    let count = datafusion::arrow::compute::cast(&count.to_array(rows)?, &DataType::Int64)?;
    let Some(lengths) = text_lengths(text.as_ref()) else {
        return Ok(false);
    };
    let counts = count.as_primitive::<Int64Type>();
    Ok(lengths
        .iter()
        .zip(counts.iter())
        .any(|(len, n)| len.saturating_mul(n.unwrap_or(0).max(0) as u64) > MAX_VALUE_BYTES))
}

impl Limit {
    fn check(self, args: &[ColumnarValue], rows: usize) -> Result<()> {
        let count = args.get(1).and_then(max_count).unwrap_or(0).max(0) as u64;
        match self {
            Limit::Repeat => {
                // The batch's bound first; rows one by one only when it is passed.
                let text = args.first().map(max_text_bytes).unwrap_or(0);
                if text.saturating_mul(count) > MAX_VALUE_BYTES && some_repeat_too_long(args, rows)?
                {
                    return Err(exceeded("requested length too large".into()));
                }
            }
            Limit::Pad => {
                if count.saturating_mul(4) > MAX_VALUE_BYTES {
                    return Err(exceeded("requested length too large".into()));
                }
            }
            Limit::ArrayRepeat => {
                if count > MAX_ARRAY_ELEMENTS {
                    return Err(exceeded(format!(
                        "array size exceeds the maximum allowed ({MAX_ARRAY_ELEMENTS})"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A DataFusion function whose arguments are checked against [`Limit`] before it runs; in
/// everything else it is the function it wraps.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Bounded {
    inner: ScalarUDF,
    limit: Limit,
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.limit.check(&args.args, args.number_rows)?;
        self.inner.inner().invoke_with_args(args)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.inner().simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.inner().short_circuits()
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.inner().output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().preserves_lex_ordering(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }
}

/// Wraps the context's `repeat`, `lpad`, `rpad` and `array_repeat` in [`Bounded`].
pub fn register(ctx: &mut SessionContext) {
    let wrapped = [
        ("repeat", Limit::Repeat),
        ("lpad", Limit::Pad),
        ("rpad", Limit::Pad),
        ("array_repeat", Limit::ArrayRepeat),
    ];
    for (name, limit) in wrapped {
        if let Some(inner) = ctx.state().scalar_functions().get(name).cloned() {
            let bounded = Bounded {
                inner: inner.as_ref().clone(),
                limit,
            };
            ctx.register_udf(ScalarUDF::new_from_impl(bounded));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(sql: &str) -> std::result::Result<(), String> {
        let mut ctx = SessionContext::new();
        register(&mut ctx);
        let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
        df.collect().await.map(|_| ()).map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn huge_values_are_refused_before_they_are_made() {
        let e = run("SELECT length(repeat('x', 1500000000))")
            .await
            .unwrap_err();
        assert!(e.contains("requested length too large"), "{e}");
        let e = run("SELECT repeat(s, 2000000) FROM (VALUES ('a'), (repeat('b', 1000))) t(s)")
            .await
            .unwrap_err();
        assert!(e.contains("requested length too large"), "{e}");
        let e = run("SELECT lpad('x', 300000000)").await.unwrap_err();
        assert!(e.contains("requested length too large"), "{e}");
        let e = run("SELECT array_repeat(1, 200000000)").await.unwrap_err();
        assert!(e.contains("array size exceeds"), "{e}");
        // Checked row by row: a long text repeated a little and a short one repeated a lot
        // are each well under 1 GB.
        run("SELECT length(repeat(s, n)) FROM (VALUES (repeat('a', 1000), 2), ('b', 600000)) t(s, n)")
            .await
            .unwrap();
        // Ordinary calls are the functions they wrap.
        run("SELECT repeat('ab', 3), lpad('7', 3, '0'), rpad('x', 2), array_repeat(1, 3)")
            .await
            .unwrap();
    }
}
