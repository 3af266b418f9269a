//! PostgreSQL expressions DataFusion lacks or reads differently:
//!
//! - `pg_typeof(x)`: the PostgreSQL name of an expression's type.
//! - `x LIKE p ESCAPE 'c'` with any escape character (DataFusion takes only the backslash):
//!   the pattern is rewritten to backslash escapes by `eddy_like_pattern(p, 'c')`.
//! - `number * interval`, `interval * number` and `interval / number`, which time-series
//!   queries write (`now() - g * INTERVAL '1 second'`): planned as `eddy_interval_mul`, with
//!   PostgreSQL's carrying of fractional months into days and days into time.
//! - `pg_size_pretty(bigint)`: a byte count in bytes, kB, MB, GB, TB or PB, rounded as
//!   PostgreSQL rounds it.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, IntervalMonthDayNanoArray, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, IntervalMonthDayNano, IntervalUnit};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{self, BinaryOperator, VisitMut, VisitorMut};

use crate::types::SqlType;

pub fn register(ctx: &mut SessionContext) -> DfResult<()> {
    ctx.register_udf(ScalarUDF::new_from_impl(PgTypeof::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(LikePattern::new()));
    ctx.register_udf(interval_mul());
    ctx.register_udf(ScalarUDF::new_from_impl(SizePretty::new()));
    datafusion::execution::FunctionRegistry::register_expr_planner(
        ctx,
        Arc::new(IntervalArithmetic),
    )
}

fn interval_mul() -> ScalarUDF {
    ScalarUDF::new_from_impl(IntervalMul::new())
}

/// Rewrites `LIKE ... ESCAPE 'c'` (and ILIKE) whose escape is not the backslash.
pub fn rewrite_like_escapes(statement: &mut ast::Statement) {
    struct Escapes;
    impl VisitorMut for Escapes {
        type Break = ();
        fn post_visit_expr(&mut self, e: &mut ast::Expr) -> ControlFlow<()> {
            let (ast::Expr::Like {
                pattern,
                escape_char,
                ..
            }
            | ast::Expr::ILike {
                pattern,
                escape_char,
                ..
            }) = e
            else {
                return ControlFlow::Continue(());
            };
            let Some(escape) = escape_char.as_ref().and_then(|v| match &v.value {
                ast::Value::SingleQuotedString(s) => Some(s.clone()),
                _ => None,
            }) else {
                return ControlFlow::Continue(());
            };
            if escape == "\\" {
                return ControlFlow::Continue(());
            }
            let args = vec![
                (**pattern).clone(),
                ast::Expr::value(ast::Value::SingleQuotedString(escape)),
            ];
            **pattern = ast::Expr::Function(ast::Function {
                name: ast::ObjectName::from(vec![ast::Ident::new("eddy_like_pattern")]),
                uses_odbc_syntax: false,
                parameters: ast::FunctionArguments::None,
                args: ast::FunctionArguments::List(ast::FunctionArgumentList {
                    duplicate_treatment: None,
                    args: args
                        .into_iter()
                        .map(|a| ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(a)))
                        .collect(),
                    clauses: vec![],
                }),
                filter: None,
                null_treatment: None,
                over: None,
                within_group: vec![],
            });
            *escape_char = None;
            ControlFlow::Continue(())
        }
    }
    let _ = statement.visit(&mut Escapes);
}

/// A function's values for its arguments: one value when every argument was one.
pub(super) fn result(args: &[ColumnarValue], values: ArrayRef) -> DfResult<ColumnarValue> {
    Ok(
        match args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
            true => ColumnarValue::Scalar(ScalarValue::try_from_array(&values, 0)?),
            false => ColumnarValue::Array(values),
        },
    )
}

/// A pattern with escape character `escape` (none when empty) as one with backslash escapes.
fn backslash_pattern(pattern: &str, escape: Option<char>) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            out.push('\\');
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct LikePattern {
    signature: Signature,
}

impl LikePattern {
    fn new() -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::Utf8],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for LikePattern {
    fn name(&self) -> &str {
        "eddy_like_pattern"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let (patterns, escapes) = (arrays[0].as_string::<i32>(), arrays[1].as_string::<i32>());
        let mut out = Vec::with_capacity(n);
        for i in 0..patterns.len() {
            if patterns.is_null(i) || escapes.is_null(i) {
                out.push(None);
                continue;
            }
            let escape = escapes.value(i);
            let mut chars = escape.chars();
            let escape = match (chars.next(), chars.next()) {
                (None, _) => None,
                (Some(c), None) => Some(c),
                _ => {
                    return Err(DataFusionError::External(Box::new(
                        crate::error::Error::user("22025", "invalid escape string")
                            .with_hint("Escape string must be empty or one character."),
                    )));
                }
            };
            out.push(Some(backslash_pattern(patterns.value(i), escape)));
        }
        result(&args.args, Arc::new(StringArray::from(out)))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SizePretty {
    signature: Signature,
}

impl SizePretty {
    fn new() -> Self {
        Self {
            signature: Signature::uniform(1, vec![DataType::Int64], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for SizePretty {
    fn name(&self) -> &str {
        "pg_size_pretty"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let sizes = args.args[0].to_array(args.number_rows)?;
        let texts: StringArray = sizes
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .iter()
            .map(|s| s.map(size_pretty))
            .collect();
        result(&args.args, Arc::new(texts))
    }
}

/// PostgreSQL's `pg_size_pretty`: each unit is used below its limit; going to the next
/// divides by 1024, keeping one more bit where the next unit rounds its last half.
fn size_pretty(mut size: i64) -> String {
    // (name, limit, rounds, bits of the unit)
    const UNITS: [(&str, i64, bool, u32); 6] = [
        ("bytes", 10 * 1024, false, 0),
        ("kB", 20 * 1024 - 1, true, 10),
        ("MB", 20 * 1024 - 1, true, 20),
        ("GB", 20 * 1024 - 1, true, 30),
        ("TB", 20 * 1024 - 1, true, 40),
        ("PB", 20 * 1024 - 1, true, 50),
    ];
    for (i, &(name, limit, round, bits)) in UNITS.iter().enumerate() {
        let Some(&(_, _, next_round, next_bits)) = UNITS.get(i + 1) else {
            break;
        };
        if size.abs() < limit {
            if round {
                size = (size + if size < 0 { -1 } else { 1 }) / 2;
            }
            return format!("{size} {name}");
        }
        let shift = next_bits - bits - u32::from(next_round) + u32::from(round);
        size /= 1i64 << shift;
    }
    // Past the last limit: in the last unit.
    format!("{} PB", (size + if size < 0 { -1 } else { 1 }) / 2)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PgTypeof {
    signature: Signature,
}

impl PgTypeof {
    fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

/// The name `pg_typeof` prints for a field's type.
fn type_name(field: &Field) -> String {
    match field.data_type() {
        DataType::Null => "unknown".into(),
        DataType::List(item) | DataType::LargeList(item) => format!("{}[]", type_name(item)),
        _ => match SqlType::from_arrow(field) {
            Ok(SqlType::Numeric(_)) => "numeric".into(),
            Ok(SqlType::Varchar(_)) => "character varying".into(),
            Ok(t) => t.pg_name(),
            Err(_) => field.data_type().to_string(),
        },
    }
}

impl ScalarUDFImpl for PgTypeof {
    fn name(&self) -> &str {
        "pg_typeof"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let name = type_name(&args.arg_fields[0]);
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct IntervalMul {
    signature: Signature,
}

impl IntervalMul {
    fn new() -> Self {
        Self {
            signature: Signature::exact(
                vec![
                    DataType::Interval(IntervalUnit::MonthDayNano),
                    DataType::Float64,
                ],
                Volatility::Immutable,
            ),
        }
    }
}

/// An interval times a factor, as PostgreSQL computes it: fractional months carry into days
/// (30 per month), fractional days into time (24 hours per day).
fn scale_interval(v: IntervalMonthDayNano, factor: f64) -> Option<IntervalMonthDayNano> {
    let months = v.months as f64 * factor;
    let whole_months = months.trunc();
    let days = v.days as f64 * factor + (months - whole_months) * 30.0;
    let whole_days = days.trunc();
    let nanos = v.nanoseconds as f64 * factor + (days - whole_days) * 86_400e9;
    // PostgreSQL keeps microseconds.
    let nanos = (nanos / 1_000.0).round() * 1_000.0;
    let fits = |x: f64, max: f64| x.is_finite() && x.abs() <= max;
    (fits(whole_months, i32::MAX as f64)
        && fits(whole_days, i32::MAX as f64)
        && fits(nanos, i64::MAX as f64))
    .then(|| IntervalMonthDayNano::new(whole_months as i32, whole_days as i32, nanos as i64))
}

impl ScalarUDFImpl for IntervalMul {
    fn name(&self) -> &str {
        "eddy_interval_mul"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Interval(IntervalUnit::MonthDayNano))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let intervals =
            arrays[0].as_primitive::<datafusion::arrow::datatypes::IntervalMonthDayNanoType>();
        let factors = arrays[1].as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        let mut out = Vec::with_capacity(intervals.len());
        for i in 0..intervals.len() {
            if intervals.is_null(i) || factors.is_null(i) {
                out.push(None);
                continue;
            }
            let scaled = scale_interval(intervals.value(i), factors.value(i)).ok_or_else(|| {
                DataFusionError::External(Box::new(crate::error::Error::user(
                    "22008",
                    "interval out of range",
                )))
            })?;
            out.push(Some(scaled));
        }
        result(&args.args, Arc::new(IntervalMonthDayNanoArray::from(out)))
    }
}

/// Plans `number * interval`, `interval * number` and `interval / number`.
#[derive(Debug)]
struct IntervalArithmetic;

impl ExprPlanner for IntervalArithmetic {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> DfResult<PlannerResult<RawBinaryExpr>> {
        let is_interval = |e: &Expr| matches!(e.get_type(schema), Ok(DataType::Interval(_)));
        let is_number = |e: &Expr| e.get_type(schema).is_ok_and(|t| t.is_numeric());
        let (interval, factor) = match expr.op {
            BinaryOperator::Multiply if is_interval(&expr.left) && is_number(&expr.right) => {
                (expr.left.clone(), expr.right.clone())
            }
            BinaryOperator::Multiply if is_number(&expr.left) && is_interval(&expr.right) => {
                (expr.right.clone(), expr.left.clone())
            }
            BinaryOperator::Divide if is_interval(&expr.left) && is_number(&expr.right) => {
                let divisor = expr.right.clone().cast_to(&DataType::Float64, schema)?;
                let reciprocal = Expr::Literal(ScalarValue::Float64(Some(1.0)), None) / divisor;
                (expr.left.clone(), reciprocal)
            }
            _ => return Ok(PlannerResult::Original(expr)),
        };
        let interval = interval.cast_to(&DataType::Interval(IntervalUnit::MonthDayNano), schema)?;
        let factor = factor.cast_to(&DataType::Float64, schema)?;
        Ok(PlannerResult::Planned(Expr::ScalarFunction(
            ScalarFunction::new_udf(Arc::new(interval_mul()), vec![interval, factor]),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_postgres_prints_them() {
        // PostgreSQL 15's pg_size_pretty of the same values.
        let cases = [
            (0, "0 bytes"),
            (10239, "10239 bytes"),
            (10240, "10 kB"),
            (-10240, "-10 kB"),
            (123_456_789, "118 MB"),
            (10_737_418_240, "10 GB"),
            (20_971_520, "20 MB"),
            (1_000_000_000_000_000_000, "888 PB"),
            (i64::MAX, "8192 PB"),
            (1536, "1536 bytes"),
            (20479 * 1024, "20 MB"),
        ];
        for (size, text) in cases {
            assert_eq!(size_pretty(size), text, "{size}");
        }
    }

    #[test]
    fn patterns_with_other_escapes_become_backslash_patterns() {
        assert_eq!(backslash_pattern("a!_c", Some('!')), "a\\_c");
        assert_eq!(backslash_pattern("50#%", Some('#')), "50\\%");
        assert_eq!(backslash_pattern("a\\b%", Some('!')), "a\\\\b%");
        assert_eq!(backslash_pattern("a!!b", Some('!')), "a\\!b");
        assert_eq!(backslash_pattern("a\\_", None), "a\\\\_");
    }

    #[test]
    fn intervals_scale_as_in_postgres() {
        let i = |m, d, us: i64| IntervalMonthDayNano::new(m, d, us * 1_000);
        // 1 month * 1.5 = 1 mon 15 days; 1 day / 4 = 06:00:00; 1 s * 3 = 3 s.
        assert_eq!(scale_interval(i(1, 0, 0), 1.5), Some(i(1, 15, 0)));
        assert_eq!(
            scale_interval(i(0, 1, 0), 0.25),
            Some(i(0, 0, 21_600_000_000))
        );
        assert_eq!(
            scale_interval(i(0, 0, 1_000_000), 3.0),
            Some(i(0, 0, 3_000_000))
        );
        assert_eq!(
            scale_interval(i(0, 0, 1_000_000), -2.0),
            Some(i(0, 0, -2_000_000))
        );
        assert_eq!(scale_interval(i(i32::MAX, 0, 0), 2.0), None);
    }
}
