//! Output column names as PostgreSQL chooses them: an alias if given, a column's own name, a
//! function's name (`count`, `upper`), otherwise `?column?`. DataFusion instead names
//! expressions by their full text (`count(*)`, `t.a + Int64(1)`).

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::logical_expr::{Expr, LogicalPlan};

const UNNAMED: &str = "?column?";

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
        Expr::Alias(a) => a.name.clone(),
        Expr::Column(c) => display_name(&c.name),
        Expr::Cast(c) => expr_name(&c.expr),
        Expr::TryCast(c) => expr_name(&c.expr),
        // `a ->> 'b'` is planned as a function call, but PostgreSQL names an operator's
        // result `?column?`.
        Expr::ScalarFunction(f) if matches!(f.func.name(), "json_get" | "json_get_text") => {
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
