//! Casts as PostgreSQL makes them, where Arrow's differ (an analyzer rule, after DataFusion's
//! type coercion has made every cast explicit):
//!
//! - a fraction to an integer rounds (half away from zero) instead of truncating:
//!   `2.7::int` and `INSERT INTO t (i) VALUES (2.7)` give 3;
//! - text to a timestamp or date accepts a time without seconds (`'2024-01-01 12:00'`),
//!   which Arrow's parser refuses; the text is completed before Arrow reads it.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float32Type, Float64Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result as DfResult};
use datafusion::logical_expr::expr::{Cast, ScalarFunction, TryCast};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// The analyzer rule; add it after DataFusion's own rules.
#[derive(Debug)]
pub struct PgCasts {
    round: Arc<ScalarUDF>,
    timestamp_text: Arc<ScalarUDF>,
}

impl PgCasts {
    pub fn new() -> Self {
        Self {
            round: Arc::new(ScalarUDF::new_from_impl(RoundHalfAway::new())),
            timestamp_text: Arc::new(ScalarUDF::new_from_impl(TimestampText::new())),
        }
    }

    /// The cast of `inner` to `to`, rewritten when PostgreSQL's differs.
    fn rewrite(&self, inner: &Expr, to: &DataType, schema: &DFSchema) -> Option<Expr> {
        let from = inner.get_type(schema).ok()?;
        let call = |udf: &Arc<ScalarUDF>| {
            Expr::ScalarFunction(ScalarFunction::new_udf(udf.clone(), vec![inner.clone()]))
        };
        let integer = matches!(
            to,
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64
        );
        let fraction = matches!(
            from,
            DataType::Float32 | DataType::Float64 | DataType::Decimal128(..)
        );
        let text = matches!(from, DataType::Utf8);
        let time = matches!(to, DataType::Timestamp(..) | DataType::Date32);
        match () {
            _ if integer && fraction => Some(call(&self.round)),
            _ if text && time => Some(call(&self.timestamp_text)),
            _ => None,
        }
    }
}

impl AnalyzerRule for PgCasts {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| {
            let mut schema = DFSchema::empty();
            for input in plan.inputs() {
                schema.merge(input.schema());
            }
            // Output names stay those of the expressions as written.
            let names = NamePreserver::new(&plan);
            plan.map_expressions(|e| {
                let name = names.save(&e);
                let rewritten = e.transform_up(|e| {
                    let rewritten = match &e {
                        Expr::Cast(Cast { expr, field }) => {
                            self.rewrite(expr, field.data_type(), &schema).map(|inner| {
                                Expr::Cast(Cast {
                                    expr: Box::new(inner),
                                    field: field.clone(),
                                })
                            })
                        }
                        Expr::TryCast(TryCast { expr, field }) => {
                            self.rewrite(expr, field.data_type(), &schema).map(|inner| {
                                Expr::TryCast(TryCast {
                                    expr: Box::new(inner),
                                    field: field.clone(),
                                })
                            })
                        }
                        _ => None,
                    };
                    Ok(match rewritten {
                        Some(e) => Transformed::yes(e),
                        None => Transformed::no(e),
                    })
                })?;
                Ok(rewritten.update_data(|e| name.restore(e)))
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "eddy_pg_casts"
    }
}

/// Rounds to a whole number, half away from zero, keeping the type (PostgreSQL's rounding of
/// a numeric to an integer).
#[derive(Debug, PartialEq, Eq, Hash)]
struct RoundHalfAway {
    signature: Signature,
}

impl RoundHalfAway {
    fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for RoundHalfAway {
    fn name(&self) -> &str {
        "eddy_round_half_away"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        Ok(args[0].clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let array = args.args[0].to_array(n)?;
        let rounded: ArrayRef = match array.data_type() {
            DataType::Float64 => Arc::new(
                array
                    .as_primitive::<Float64Type>()
                    .unary::<_, Float64Type>(f64::round),
            ),
            DataType::Float32 => Arc::new(
                array
                    .as_primitive::<Float32Type>()
                    .unary::<_, Float32Type>(f32::round),
            ),
            DataType::Decimal128(precision, scale) if *scale > 0 => {
                let unit = 10i128.pow(*scale as u32);
                let half = unit / 2;
                let values: Decimal128Array = array
                    .as_primitive::<Decimal128Type>()
                    .unary::<_, Decimal128Type>(|v| {
                        let whole = v / unit;
                        let rest = v % unit;
                        let whole = match rest {
                            r if r >= half => whole + 1,
                            r if r <= -half => whole - 1,
                            _ => whole,
                        };
                        whole * unit
                    });
                Arc::new(values.with_precision_and_scale(*precision, *scale)?)
            }
            _ => array,
        };
        super::pg_functions::result(&args.args, rounded)
    }
}

/// Text for Arrow's timestamp parser: a time of hours and minutes gets its seconds
/// (`2024-01-01 12:00` reads as `2024-01-01 12:00:00`); other text passes unchanged.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TimestampText {
    signature: Signature,
}

impl TimestampText {
    fn new() -> Self {
        Self {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for TimestampText {
    fn name(&self) -> &str {
        "eddy_timestamp_text"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let array = args.args[0].to_array(n)?;
        let texts = array.as_string::<i32>();
        // Most text needs nothing: it is passed on as it is.
        if !texts.iter().flatten().any(|t| with_seconds(t).is_some()) {
            return super::pg_functions::result(&args.args, array);
        }
        let completed: StringArray = texts
            .iter()
            .map(|t| t.map(|t| with_seconds(t).unwrap_or_else(|| t.to_string())))
            .collect();
        super::pg_functions::result(&args.args, Arc::new(completed))
    }
}

/// `date[ T]HH:MM[zone]` with `:00` seconds added, or `None` when the text has no such time.
fn with_seconds(text: &str) -> Option<String> {
    let trimmed = text.trim();
    let b = trimmed.as_bytes();
    // The date: YYYY-MM-DD, then a space or T.
    if b.len() < 15 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T' | b't') {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !digits(0..4) || !digits(5..7) || !digits(8..10) {
        return None;
    }
    // The time: H:MM or HH:MM, not followed by a seconds field.
    let time = &trimmed[11..];
    let tb = time.as_bytes();
    let colon = tb.iter().position(|&c| c == b':')?;
    if !(1..=2).contains(&colon) || !tb[..colon].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let minutes_end = colon + 3;
    if tb.len() < minutes_end || !tb[colon + 1..minutes_end].iter().all(u8::is_ascii_digit) {
        return None;
    }
    if tb.get(minutes_end) == Some(&b':') {
        return None;
    }
    let hours = if colon == 1 {
        format!("0{}", &time[..colon])
    } else {
        time[..colon].to_string()
    };
    Some(format!(
        "{} {hours}:{}:00{}",
        &trimmed[..10],
        &time[colon + 1..minutes_end],
        &time[minutes_end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_without_seconds_get_them() {
        assert_eq!(
            with_seconds("2024-01-01 12:00").as_deref(),
            Some("2024-01-01 12:00:00")
        );
        assert_eq!(
            with_seconds("2024-01-01T9:05+02:00").as_deref(),
            Some("2024-01-01 09:05:00+02:00")
        );
        assert_eq!(with_seconds("2024-01-01 12:00:30"), None);
        assert_eq!(with_seconds("2024-01-01"), None);
        assert_eq!(with_seconds("not a time at all"), None);
    }
}
