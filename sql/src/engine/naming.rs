//! Output column names as PostgreSQL chooses them: an alias if given, a column's own name, a
//! function's name (`count`, `upper`), otherwise `?column?`. DataFusion instead names
//! expressions by their full text (`count(*)`, `t.a + Int64(1)`).

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::logical_expr::{Expr, LogicalPlan};

const UNNAMED: &str = "?column?";
/// Prefix of the aliases [`alias_duplicates`] gives; the output name follows the colon.
const DUPLICATE: &str = "__eddy_dup";

/// PostgreSQL allows a select list to name two columns alike (`SELECT nextval('s'),
/// nextval('s')`, `SELECT 1 AS a, 2 AS a`); DataFusion does not. Every repeat of a name in
/// the statement's outer select list gets a unique alias that keeps the name it shows.
pub fn alias_duplicates(statement: &mut datafusion::sql::sqlparser::ast::Statement) {
    use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Ident, SelectItem, SetExpr, Statement};
    let Statement::Query(query) = statement else {
        return;
    };
    let mut body = query.body.as_mut();
    while let SetExpr::SetOperation { left, .. } = body {
        body = left.as_mut();
    }
    let SetExpr::Select(select) = body else {
        return;
    };
    // The name DataFusion gives an unnamed item: a cast is named by what it casts (so
    // `id` and `id::text`, or `1.50::numeric` and `1.5::numeric(10,2)`, collide there).
    fn unnamed_key(e: &SqlExpr) -> String {
        match e {
            SqlExpr::Cast { expr, .. } | SqlExpr::Nested(expr) => unnamed_key(expr),
            SqlExpr::Identifier(i) => super::ddl::ident(i),
            SqlExpr::CompoundIdentifier(parts) => {
                parts.last().map(super::ddl::ident).unwrap_or_default()
            }
            SqlExpr::Value(v) => match &v.value {
                // Numbers are named by their value as DataFusion reads them.
                datafusion::sql::sqlparser::ast::Value::Number(n, _) => n
                    .parse::<f64>()
                    .map_or_else(|_| n.clone(), |f| f.to_string()),
                other => other.to_string(),
            },
            other => other.to_string(),
        }
    }
    let key = |item: &SelectItem| -> Option<String> {
        match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(super::ddl::ident(alias)),
            SelectItem::UnnamedExpr(e) => Some(unnamed_key(e)),
            _ => None,
        }
    };
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    for item in select.projection.iter_mut() {
        let Some(k) = key(item) else { continue };
        if seen.insert(k) {
            continue;
        }
        n += 1;
        let shown = match item {
            SelectItem::ExprWithAlias { alias, .. } => super::ddl::ident(alias),
            SelectItem::UnnamedExpr(SqlExpr::Identifier(i)) => super::ddl::ident(i),
            SelectItem::UnnamedExpr(SqlExpr::CompoundIdentifier(parts)) => {
                parts.last().map(super::ddl::ident).unwrap_or_default()
            }
            _ => String::new(),
        };
        let alias = Ident::with_quote('"', format!("{DUPLICATE}{n}:{shown}"));
        let expr = match std::mem::replace(item, SelectItem::Wildcard(Default::default())) {
            SelectItem::ExprWithAlias { expr, .. } | SelectItem::UnnamedExpr(expr) => expr,
            _ => unreachable!("keyed items only"),
        };
        *item = SelectItem::ExprWithAlias { expr, alias };
    }
}

/// Names for the columns `plan` returns, or `None` to keep DataFusion's.
pub fn output_names(plan: &LogicalPlan) -> Option<Vec<String>> {
    match plan {
        LogicalPlan::Projection(p) => Some(p.expr.iter().map(expr_name).collect()),
        LogicalPlan::Sort(s) => output_names(&s.input),
        LogicalPlan::Limit(l) => output_names(&l.input),
        LogicalPlan::Distinct(d) => output_names(d.input()),
        LogicalPlan::Aggregate(_) | LogicalPlan::Window(_) => Some(
            plan.schema()
                .fields()
                .iter()
                .map(|f| display_name(f.name()))
                .collect(),
        ),
        _ => None,
    }
}

fn expr_name(e: &Expr) -> String {
    match e {
        Expr::Alias(a) if a.name.starts_with(DUPLICATE) => match a.name.split_once(':') {
            Some((_, shown)) if !shown.is_empty() => shown.to_string(),
            _ => expr_name(&a.expr),
        },
        // DataFusion's own alias of an aggregate's column (`count(Int64(1)) AS count(*)`).
        Expr::Alias(a)
            if a.name.contains('(')
                && matches!(a.expr.as_ref(), Expr::Column(c) if c.name.contains('(')) =>
        {
            display_name(&a.name)
        }
        Expr::Alias(a) => a.name.clone(),
        Expr::Column(c) => display_name(&c.name),
        // A cast is named by what it casts, or, when that has no name (a constant, an
        // operator), by the type it casts to: `2.5::int` is `int4`, as in PostgreSQL.
        Expr::Cast(datafusion::logical_expr::Cast { expr, field })
        | Expr::TryCast(datafusion::logical_expr::TryCast { expr, field }) => {
            match expr_name(expr) {
                name if name == UNNAMED => cast_name(field).unwrap_or(name),
                name => name,
            }
        }
        // PostgreSQL's casts (see pg_casts) are named like the cast they belong to.
        Expr::ScalarFunction(f)
            if matches!(
                f.func.name(),
                "eddy_round_half_away" | "eddy_timestamp_text"
            ) =>
        {
            expr_name(&f.args[0])
        }
        // `a ->> 'b'` and `n * interval` are planned as function calls, but PostgreSQL names an
        // operator's
        // result `?column?`.
        Expr::ScalarFunction(f)
            if matches!(
                f.func.name(),
                "json_get" | "json_get_text" | "eddy_interval_mul"
            ) =>
        {
            UNNAMED.to_string()
        }
        // A cast to text written as a call (see dml::pg_text_casts): named like the cast.
        Expr::ScalarFunction(f) if f.func.name() == "eddy_pg_text" => expr_name(&f.args[0]),
        Expr::ScalarFunction(f) => f.func.name().to_string(),
        Expr::AggregateFunction(f) => f.func.name().to_string(),
        Expr::Literal(..) => UNNAMED.to_string(),
        other => display_name(&other.schema_name().to_string()),
    }
}

/// PostgreSQL's internal name of the type a cast gives, which names the column of an
/// unnamed cast expression.
fn cast_name(field: &datafusion::arrow::datatypes::FieldRef) -> Option<String> {
    use datafusion::arrow::datatypes::DataType as T;
    if let Some(pg) = field.metadata().get(crate::types::PG_TYPE_KEY) {
        return Some(pg.clone());
    }
    Some(
        match field.data_type() {
            T::Boolean => "bool",
            T::Int16 => "int2",
            T::Int32 => "int4",
            T::Int64 => "int8",
            T::Float32 => "float4",
            T::Float64 => "float8",
            T::Decimal128(..) => "numeric",
            T::Utf8 | T::Utf8View | T::LargeUtf8 => "text",
            T::Binary => "bytea",
            T::Date32 => "date",
            T::Timestamp(_, None) => "timestamp",
            T::Timestamp(_, Some(_)) => "timestamptz",
            T::Interval(_) => "interval",
            _ => return None,
        }
        .to_string(),
    )
}

/// The Postgres name for a column DataFusion named after an expression's text.
fn display_name(name: &str) -> String {
    let is_ident = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| c.is_alphanumeric() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    if is_ident(name) {
        return name.to_string();
    }
    if let Some(open) = name.find('(') {
        let func = &name[..open];
        let is_call = is_ident(func)
            && !func.eq_ignore_ascii_case("cast")
            && !func.eq_ignore_ascii_case("try_cast")
            && call_ends_name(&name[open..]);
        return if is_call {
            func.to_lowercase()
        } else {
            UNNAMED.to_string()
        };
    }
    if !name.contains(' ')
        && let Some(last) = name.rsplit('.').next()
        && is_ident(last)
    {
        return last.to_string();
    }
    UNNAMED.to_string()
}

/// Whether the parenthesised argument list at the start of `rest` is the end of the
/// expression (a function call), allowing a window or filter clause after it.
fn call_ends_name(rest: &str) -> bool {
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    let after = rest[i + 1..].trim_start();
                    return after.is_empty()
                        || ["ORDER BY", "PARTITION BY", "ROWS", "RANGE", "FILTER"]
                            .iter()
                            .any(|k| after.starts_with(k));
                }
            }
            _ => {}
        }
    }
    false
}

/// `schema` with its fields renamed (types and metadata kept).
pub fn rename(schema: &SchemaRef, names: &[String]) -> SchemaRef {
    if names.len() != schema.fields().len() {
        return schema.clone();
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(names)
        .map(|(f, n)| f.as_ref().clone().with_name(n))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

#[cfg(test)]
mod tests {
    use super::display_name;

    #[test]
    fn names_follow_postgres() {
        assert_eq!(display_name("count(*)"), "count");
        assert_eq!(display_name("sum(e.salary)"), "sum");
        assert_eq!(display_name("t.ts IS NOT NULL"), "?column?");
        assert_eq!(display_name("name"), "name");
        assert_eq!(display_name("CAST(x AS Int32)"), "?column?");
        assert_eq!(display_name("Int64(10) / Int64(4)"), "?column?");
        assert_eq!(display_name("upper(t.name) || Utf8(\"x\")"), "?column?");
        assert_eq!(
            display_name("rank() ORDER BY [t.a DESC NULLS FIRST]"),
            "rank"
        );
    }
}
