//! Rewrites of the PostgreSQL syntax client catalog queries use into SQL DataFusion plans,
//! each preserving the query's result:
//!
//! - `datafusion-pg-catalog`'s rules, for every statement: `COLLATE pg_catalog.default` and
//!   `OPERATOR(pg_catalog.~)`, `'name'::regclass` (and regtype, regproc, regnamespace) as a
//!   catalog lookup, `x = ANY(array)`, `pg_catalog.`-qualified function names, unqualified
//!   `pg_*` catalog names, duplicate output names.
//! - Eddy's, for queries that read `pg_catalog` or `information_schema`:
//!   - a query every branch of which inner-joins a catalog that is always empty in Eddy
//!     (policies, publications, inheritance, rules, ...) returns no rows, with its columns;
//!   - `ARRAY(SELECT e FROM ...)` is `(SELECT array_agg(e) FROM ...)`, empty instead of NULL
//!     when no row matches; over `pg_options_to_table(o)` it formats the options directly;
//!   - a scalar subquery in a select list that does not aggregate takes its one row through
//!     `first_value`, which DataFusion can decorrelate (PostgreSQL errors on a second row;
//!     catalog subqueries match one row at most).

use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};

use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, CaseWhen, ExcludeSelectItem, Expr, Function, FunctionArg, FunctionArgExpr,
    FunctionArgumentList, FunctionArguments, GroupByExpr, Ident, ObjectName, OrderBy, OrderByKind,
    Query, Select, SelectItem, SetExpr, Statement, TableAliasColumnDef, TableFactor,
    TableWithJoins, Value, VisitMut, VisitorMut, visit_relations,
};
use datafusion_pg_catalog::sql::rules::{
    AliasDuplicatedProjectionRewrite, PrependUnqualifiedPgTableName, RewriteArrayAnyAllOperation,
    RewritePgCatalogOperator, RewriteRegCastToSubquery, SqlStatementRewriteRule,
    StripCallableQualifier, StripCollate,
};

/// Catalogs that never have rows in Eddy: no policies, extended statistics, publications,
/// subscriptions, inheritance, rules, triggers, event triggers, partitioning or sequences.
pub const ALWAYS_EMPTY: &[&str] = &[
    "pg_policy",
    "pg_statistic_ext",
    "pg_statistic_ext_data",
    "pg_publication",
    "pg_publication_rel",
    "pg_publication_namespace",
    "pg_subscription",
    "pg_subscription_rel",
    "pg_inherits",
    "pg_rewrite",
    "pg_trigger",
    "pg_event_trigger",
    "pg_partitioned_table",
];

fn crate_rules() -> &'static [Arc<dyn SqlStatementRewriteRule>] {
    static RULES: OnceLock<Vec<Arc<dyn SqlStatementRewriteRule>>> = OnceLock::new();
    RULES.get_or_init(|| {
        vec![
            Arc::new(AliasDuplicatedProjectionRewrite),
            Arc::new(RewriteArrayAnyAllOperation),
            Arc::new(PrependUnqualifiedPgTableName),
            Arc::new(StripCallableQualifier),
            Arc::new(StripCollate),
            Arc::new(RewritePgCatalogOperator),
            Arc::new(RewriteRegCastToSubquery::new()),
        ]
    })
}

/// Rewrites a statement before planning (see the module documentation).
pub fn rewrite(statement: Statement) -> Statement {
    let mut statement = statement;
    if reads_catalog(&statement) {
        if let Statement::Query(q) = &statement
            && let Some(columns) = always_empty_columns(q)
        {
            return empty_result(&columns);
        }
        let _ = statement.visit(&mut CatalogQueryRewriter);
    }
    name_reg_casts(&mut statement);
    regclass_of_expressions(&mut statement);
    let _ = statement.visit(&mut TableFunctionColumns);
    for rule in crate_rules() {
        statement = rule.rewrite(statement);
    }
    statement
}

/// `SELECT 't'::regclass` is a column named `regclass`, as in PostgreSQL (the cast becomes a
/// catalog subquery, which DataFusion would otherwise name `(<subquery>)` for every one).
fn name_reg_casts(statement: &mut Statement) {
    let Statement::Query(query) = statement else {
        return;
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    for item in &mut select.projection {
        let SelectItem::UnnamedExpr(Expr::Cast {
            expr, data_type, ..
        }) = item
        else {
            continue;
        };
        let ty = data_type.to_string().to_ascii_lowercase();
        let ty = ty.trim_start_matches("pg_catalog.").to_string();
        let literal = matches!(expr.as_ref(), Expr::Value(v) if matches!(v.value, Value::SingleQuotedString(_)));
        if literal
            && matches!(
                ty.as_str(),
                "regclass" | "regtype" | "regproc" | "regnamespace"
            )
        {
            let SelectItem::UnnamedExpr(e) =
                std::mem::replace(item, SelectItem::Wildcard(Default::default()))
            else {
                unreachable!("matched above")
            };
            *item = SelectItem::ExprWithAlias {
                expr: e,
                alias: Ident::new(ty),
            };
        }
    }
}

/// `x::regclass` of a column or expression (not a literal, which becomes a catalog lookup)
/// is `eddy_regclass_oid(x)`, and `x::regclass::text` is `eddy_regclass_text(x)`: the
/// relation's OID or name whether `x` holds a name or an OID.
fn regclass_of_expressions(statement: &mut Statement) {
    use datafusion::sql::sqlparser::ast::DataType;
    // A select list's `x::regclass` shows the relation's name (`conrelid::regclass AS
    // ontable`, as psql lists foreign keys).
    struct Shown;
    impl VisitorMut for Shown {
        type Break = ();
        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            if let SetExpr::Select(select) = query.body.as_mut() {
                for item in &mut select.projection {
                    let Some(e) = item_expr(item) else { continue };
                    if let Expr::Cast {
                        expr, data_type, ..
                    } = e
                        && data_type
                            .to_string()
                            .to_ascii_lowercase()
                            .trim_start_matches("pg_catalog.")
                            == "regclass"
                        && !matches!(expr.as_ref(), Expr::Value(v) if matches!(v.value, Value::SingleQuotedString(_)))
                    {
                        let inner = (**expr).clone();
                        if let SelectItem::UnnamedExpr(_) = item {
                            *item = SelectItem::ExprWithAlias {
                                expr: call("eddy_regclass_text", vec![inner]),
                                alias: Ident::new("regclass"),
                            };
                        } else if let Some(e) = item_expr(item) {
                            *e = call("eddy_regclass_text", vec![inner]);
                        }
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = statement.visit(&mut Shown);
    let type_name = |t: &DataType| {
        let t = t.to_string().to_ascii_lowercase();
        t.trim_start_matches("pg_catalog.").to_string()
    };
    let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(statement, |e| {
        // generate_subscripts(a, 1): the positions of a's items, 1-based.
        if let Expr::Function(f) = e
            && last_name(&f.name) == "generate_subscripts"
            && let FunctionArguments::List(list) = &f.args
            && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(array)), _] = list.args.as_slice()
        {
            let length = call(
                "array_length",
                vec![
                    array.clone(),
                    Expr::Value(Value::Number("1".into(), false).into()),
                ],
            );
            *e = call(
                "unnest",
                vec![call(
                    "generate_series",
                    vec![Expr::Value(Value::Number("1".into(), false).into()), length],
                )],
            );
            return ControlFlow::<()>::Continue(());
        }
        let Expr::Cast {
            expr, data_type, ..
        } = e
        else {
            return ControlFlow::<()>::Continue(());
        };
        let ty = type_name(data_type);
        if ty == "regclass" {
            let literal = matches!(expr.as_ref(), Expr::Value(v) if matches!(v.value, Value::SingleQuotedString(_)));
            if !literal {
                *e = call("eddy_regclass_oid", vec![(**expr).clone()]);
            }
        } else if matches!(
            ty.as_str(),
            "text" | "varchar" | "character varying" | "name"
        ) && let Expr::Function(f) = expr.as_ref()
            && last_name(&f.name) == "eddy_regclass_oid"
            && let FunctionArguments::List(list) = &f.args
            && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(inner))] = list.args.as_slice()
        {
            *e = call("eddy_regclass_text", vec![inner.clone()]);
        }
        ControlFlow::Continue(())
    });
}

fn last_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .unwrap_or_default()
}

fn reads_catalog(statement: &Statement) -> bool {
    let mut found = false;
    let _ = visit_relations(statement, |name| {
        let first = name
            .0
            .first()
            .and_then(|p| p.as_ident())
            .map(|i| i.value.to_ascii_lowercase())
            .unwrap_or_default();
        if first == "pg_catalog"
            || first == "information_schema"
            || (name.0.len() == 1 && first.starts_with("pg_"))
        {
            found = true;
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// Whether a FROM item is (or inner-joins) an always-empty catalog.
fn joins_empty_catalog(from: &[TableWithJoins]) -> bool {
    let empty = |factor: &TableFactor| match factor {
        TableFactor::Table {
            name, args: None, ..
        } => ALWAYS_EMPTY.contains(&last_name(name).as_str()),
        _ => false,
    };
    from.iter().any(|t| {
        empty(&t.relation)
            || t.joins.iter().any(|j| {
                use datafusion::sql::sqlparser::ast::JoinOperator as J;
                matches!(j.join_operator, J::Join(_) | J::Inner(_) | J::CrossJoin(_))
                    && empty(&j.relation)
            })
    })
}

fn select_is_empty(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(s) => joins_empty_catalog(&s.from),
        SetExpr::SetOperation { left, right, .. } => {
            select_is_empty(left) && select_is_empty(right)
        }
        SetExpr::Query(q) => select_is_empty(&q.body),
        _ => false,
    }
}

fn first_select(body: &SetExpr) -> Option<&Select> {
    match body {
        SetExpr::Select(s) => Some(s),
        SetExpr::SetOperation { left, .. } => first_select(left),
        SetExpr::Query(q) => first_select(&q.body),
        _ => None,
    }
}

/// The output names of a query that returns no rows in Eddy.
fn always_empty_columns(query: &Query) -> Option<Vec<String>> {
    if query.with.is_some() || !select_is_empty(&query.body) {
        return None;
    }
    first_select(&query.body)?
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
            SelectItem::UnnamedExpr(e) => Some(match e {
                Expr::Identifier(i) => i.value.clone(),
                Expr::CompoundIdentifier(parts) => parts.last()?.value.clone(),
                Expr::Function(f) => last_name(&f.name),
                Expr::Cast { expr, .. } => match expr.as_ref() {
                    Expr::Identifier(i) => i.value.clone(),
                    Expr::CompoundIdentifier(parts) => parts.last()?.value.clone(),
                    _ => "?column?".to_string(),
                },
                _ => "?column?".to_string(),
            }),
            _ => None,
        })
        .collect()
}

fn empty_result(columns: &[String]) -> Statement {
    let mut seen = std::collections::HashSet::new();
    let items: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            // DataFusion needs distinct output names where PostgreSQL does not.
            let c = match seen.insert(c.clone()) {
                true => c.clone(),
                false => format!("{c}_{i}"),
            };
            format!("CAST(NULL AS TEXT) AS \"{}\"", c.replace('"', "\"\""))
        })
        .collect();
    let sql = format!("SELECT {} WHERE false", items.join(", "));
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, &sql)
        .expect("an empty result parses")
        .remove(0)
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "first_value",
    "last_value",
];

fn is_aggregate(expr: &Expr) -> bool {
    matches!(expr, Expr::Function(f) if f.over.is_none() && AGGREGATES.contains(&last_name(&f.name).as_str()))
}

/// The single select of a subquery, if it projects one plain expression.
fn single_select(query: &mut Query) -> Option<&mut Select> {
    if query.limit_clause.is_some() || query.fetch.is_some() || query.with.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let no_grouping = matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    (select.projection.len() == 1 && no_grouping && select.having.is_none())
        .then_some(select.as_mut())
}

fn item_expr(item: &mut SelectItem) -> Option<&mut Expr> {
    match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
        _ => None,
    }
}

/// `ARRAY(SELECT quote_ident(option_name) || ' ' || quote_literal(option_value) FROM
/// pg_options_to_table(o))`, as psql writes it.
fn options_array(select: &mut Select) -> Option<Expr> {
    let [from] = select.from.as_slice() else {
        return None;
    };
    let TableFactor::Table {
        name,
        args: Some(args),
        ..
    } = &from.relation
    else {
        return None;
    };
    if last_name(name) != "pg_options_to_table" || !from.joins.is_empty() {
        return None;
    }
    let text = select.projection[0].to_string().to_ascii_lowercase();
    if !(text.contains("quote_ident(option_name)") && text.contains("quote_literal(option_value)"))
    {
        return None;
    }
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(options))] = args.args.as_slice() else {
        return None;
    };
    Some(call("eddy_format_options", vec![options.clone()]))
}

/// The names a select's FROM binds (aliases, or table names without one).
fn bound_names(select: &Select) -> Vec<String> {
    let name = |factor: &TableFactor| match factor {
        TableFactor::Table { name, alias, .. } => Some(
            alias
                .as_ref()
                .map(|a| a.name.value.to_ascii_lowercase())
                .unwrap_or_else(|| last_name(name)),
        ),
        TableFactor::Derived { alias, .. } | TableFactor::UNNEST { alias, .. } => {
            alias.as_ref().map(|a| a.name.value.to_ascii_lowercase())
        }
        _ => None,
    };
    select
        .from
        .iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)))
        .filter_map(name)
        .collect()
}

/// Whether an expression reads the subquery's own tables, and whether it reads the outer
/// query's (columns qualified by a name the subquery does not bind).
fn references(expr: &Expr, inner: &[String]) -> (bool, bool) {
    let (mut has_inner, mut has_outer) = (false, false);
    let _ = datafusion::sql::sqlparser::ast::visit_expressions(expr, |e| {
        match e {
            Expr::Identifier(_) => has_inner = true,
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let qualifier = parts[parts.len() - 2].value.to_ascii_lowercase();
                match inner.contains(&qualifier) {
                    true => has_inner = true,
                    false => has_outer = true,
                }
            }
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                has_inner = true;
                has_outer = true;
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    (has_inner, has_outer)
}

fn conjuncts(expr: Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(*left, out);
            conjuncts(*right, out);
        }
        Expr::Nested(e)
            if matches!(
                e.as_ref(),
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            conjuncts(*e, out)
        }
        e => out.push(e),
    }
}

fn and_all(exprs: Vec<Expr>) -> Option<Expr> {
    exprs.into_iter().reduce(|a, b| Expr::BinaryOp {
        left: Box::new(a),
        op: BinaryOperator::And,
        right: Box::new(b),
    })
}

/// Reshapes a correlated subquery's WHERE into what DataFusion decorrelates: conditions on
/// the outer row alone are returned (to guard the subquery from outside), and in conditions
/// mixing outer and inner columns other than equalities, an outer expression the WHERE
/// equates with an inner one is replaced by it (`c.oid = a.x AND a.x <> t.y` reads
/// `c.oid <> t.y`).
fn decorrelate_filter(select: &mut Select) -> Option<Expr> {
    let inner = bound_names(select);
    let mut parts = Vec::new();
    conjuncts(select.selection.take()?, &mut parts);
    let mut equal: Vec<(Expr, Expr)> = Vec::new();
    for p in &parts {
        if let Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = p
        {
            match (references(left, &inner), references(right, &inner)) {
                ((false, true), (true, false)) => equal.push((*left.clone(), *right.clone())),
                ((true, false), (false, true)) => equal.push((*right.clone(), *left.clone())),
                _ => {}
            }
        }
    }
    let (mut kept, mut outer_only) = (Vec::new(), Vec::new());
    for mut p in parts {
        match references(&p, &inner) {
            (false, true) => outer_only.push(p),
            (true, true)
                if !matches!(
                    p,
                    Expr::BinaryOp {
                        op: BinaryOperator::Eq,
                        ..
                    }
                ) =>
            {
                let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(&mut p, |e| {
                    if let Some((_, inner)) = equal.iter().find(|(outer, _)| outer == e) {
                        *e = inner.clone();
                    }
                    ControlFlow::<()>::Continue(())
                });
                kept.push(p);
            }
            _ => kept.push(p),
        }
    }
    select.selection = and_all(kept);
    and_all(outer_only)
}

/// `ARRAY(SELECT 'prefix' || x FROM unnest(a) x)`, as psql writes it for toast options.
fn prefixed_array(select: &mut Select) -> Option<Expr> {
    let [from] = select.from.as_slice() else {
        return None;
    };
    let TableFactor::Table {
        name,
        args: Some(args),
        alias: Some(alias),
        ..
    } = &from.relation
    else {
        return None;
    };
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(array))] = args.args.as_slice() else {
        return None;
    };
    let Some(Expr::BinaryOp {
        left,
        op: BinaryOperator::StringConcat,
        right,
    }) = item_expr(&mut select.projection[0])
    else {
        return None;
    };
    let is_item = matches!(right.as_ref(), Expr::Identifier(i) if i.value == alias.name.value);
    (last_name(name) == "unnest" && from.joins.is_empty() && is_item)
        .then(|| call("eddy_prefix_items", vec![*left.clone(), array.clone()]))
}

/// `EXISTS (SELECT ...)` in a select list is `(SELECT count(*) ...) > 0`, a scalar subquery
/// DataFusion decorrelates (it supports EXISTS only in WHERE).
/// `x IN (SELECT e ...)` likewise, as `(SELECT count(*) ... WHERE e = x) > 0`.
fn exists_as_count(expr: &mut Expr) {
    let (mut query, negated) = match expr {
        Expr::Exists { subquery, negated } => (subquery.as_ref().clone(), *negated),
        Expr::InSubquery {
            expr: needle,
            subquery,
            negated,
        } => {
            let mut query = subquery.as_ref().clone();
            let Some(select) = single_select(&mut query) else {
                return;
            };
            let Some(e) = item_expr(&mut select.projection[0]).cloned() else {
                return;
            };
            let inner = bound_names(select);
            let correlated = references(&e, &inner).1
                || select
                    .selection
                    .as_ref()
                    .is_some_and(|w| references(w, &inner).1);
            if !correlated {
                // Uncorrelated: membership in the subquery's values, gathered once.
                select.projection[0] = SelectItem::UnnamedExpr(call("array_agg", vec![e]));
                let values = call("eddy_empty_if_null", vec![Expr::Subquery(Box::new(query))]);
                let has = call("array_has", vec![values, needle.as_ref().clone()]);
                *expr = match negated {
                    true => Expr::UnaryOp {
                        op: datafusion::sql::sqlparser::ast::UnaryOperator::Not,
                        expr: Box::new(has),
                    },
                    false => has,
                };
                return;
            }
            let equal = Expr::BinaryOp {
                left: Box::new(Expr::Nested(Box::new(e))),
                op: BinaryOperator::Eq,
                right: Box::new(Expr::Nested(needle.clone())),
            };
            select.selection =
                and_all(select.selection.take().into_iter().chain([equal]).collect());
            (query, *negated)
        }
        _ => return,
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    select.projection = vec![SelectItem::UnnamedExpr(call(
        "count",
        vec![Expr::Value(Value::Number("1".into(), false).into())],
    ))];
    *expr = Expr::BinaryOp {
        left: Box::new(Expr::Subquery(Box::new(query))),
        op: match negated {
            true => BinaryOperator::Eq,
            false => BinaryOperator::Gt,
        },
        right: Box::new(Expr::Value(Value::Number("0".into(), false).into())),
    };
}

/// Functions that return rows; any other function in FROM returns one value.
const TABLE_FUNCTIONS: &[&str] = &[
    "generate_series",
    "range",
    "unnest",
    "pg_options_to_table",
    "pg_get_keywords",
    "generate_subscripts",
    // Eddy's windows.
    "tumble",
    "hop",
    "session",
];

/// A function returning one column, in FROM with an alias, names its column after the alias
/// (`generate_series(1, 3) AS i` has column i), as in PostgreSQL.
struct TableFunctionColumns;

impl VisitorMut for TableFunctionColumns {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name,
            args: Some(_),
            alias: Some(alias),
            ..
        } = factor
            && alias.columns.is_empty()
            && matches!(
                last_name(name).as_str(),
                "generate_series" | "range" | "unnest" | "generate_subscripts"
            )
        {
            alias.columns = vec![TableAliasColumnDef {
                name: alias.name.clone(),
                data_type: None,
            }];
        }
        if let TableFactor::UNNEST {
            alias: Some(alias),
            array_exprs,
            with_offset: false,
            ..
        } = factor
            && alias.columns.is_empty()
            && array_exprs.len() == 1
        {
            alias.columns = vec![TableAliasColumnDef {
                name: alias.name.clone(),
                data_type: None,
            }];
        }
        ControlFlow::Continue(())
    }
}

/// A scalar function in FROM (`FROM string_to_array(x, ',') s`) is a one-row table whose
/// column has the alias's name, as in PostgreSQL.
fn scalar_function_table(factor: &mut TableFactor) {
    let TableFactor::Table {
        name,
        args: Some(args),
        alias: Some(alias),
        ..
    } = factor
    else {
        return;
    };
    if !alias.columns.is_empty() || TABLE_FUNCTIONS.contains(&last_name(name).as_str()) {
        return;
    }
    let list: Vec<String> = args.args.iter().map(|a| a.to_string()).collect();
    let sql = format!("SELECT {name}({}) AS {}", list.join(", "), alias.name);
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    let Ok(mut statements) = datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, &sql)
    else {
        return;
    };
    let Statement::Query(subquery) = statements.remove(0) else {
        return;
    };
    *factor = TableFactor::Derived {
        lateral: false,
        subquery,
        alias: Some(alias.clone()),
        sample: None,
    };
}

fn contains_subquery(expr: &Expr) -> bool {
    let mut found = false;
    let _ = datafusion::sql::sqlparser::ast::visit_expressions(expr, |e| {
        if matches!(
            e,
            Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. }
        ) {
            found = true;
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// ORDER BY items with subqueries (DataFusion plans those only in select lists) become hidden
/// columns of a derived table the outer query sorts by and leaves out.
fn hoist_order_by_subqueries(query: &mut Query) {
    let Some(OrderByKind::Expressions(items)) = query.order_by.as_ref().map(|o| &o.kind) else {
        return;
    };
    if !items.iter().any(|i| contains_subquery(&i.expr))
        || !matches!(query.body.as_ref(), SetExpr::Select(_))
    {
        return;
    }
    let mut items = items.clone();
    let mut inner = query.clone();
    inner.order_by = None;
    inner.limit_clause = None;
    inner.fetch = None;
    let SetExpr::Select(select) = inner.body.as_mut() else {
        return;
    };
    let mut hidden = Vec::new();
    for (i, item) in items.iter_mut().enumerate() {
        if contains_subquery(&item.expr) {
            let name = Ident::new(format!("__eddy_sort_{i}"));
            select.projection.push(SelectItem::ExprWithAlias {
                expr: item.expr.clone(),
                alias: name.clone(),
            });
            item.expr = Expr::Identifier(name.clone());
            hidden.push(ObjectName::from(vec![name]));
        }
    }
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    let Ok(mut parsed) = datafusion::sql::sqlparser::parser::Parser::parse_sql(
        &dialect,
        "SELECT * FROM (SELECT 1) AS __eddy_sorted",
    ) else {
        return;
    };
    let Statement::Query(mut outer) = parsed.remove(0) else {
        return;
    };
    let SetExpr::Select(outer_select) = outer.body.as_mut() else {
        return;
    };
    if let TableFactor::Derived { subquery, .. } = &mut outer_select.from[0].relation {
        **subquery = inner;
    }
    if let SelectItem::Wildcard(options) = &mut outer_select.projection[0] {
        options.opt_exclude = Some(ExcludeSelectItem::Multiple(hidden));
    }
    outer.order_by = Some(OrderBy {
        kind: OrderByKind::Expressions(items),
        interpolate: None,
    });
    outer.limit_clause = query.limit_clause.take();
    outer.fetch = query.fetch.take();
    *query = *outer;
}

/// Every name a query binds: its tables' aliases (or names) and its CTEs, at any depth.
fn all_bound_names(query: &Query) -> std::collections::HashSet<String> {
    let mut names = std::collections::HashSet::new();
    struct Collect<'a>(&'a mut std::collections::HashSet<String>);
    impl datafusion::sql::sqlparser::ast::Visitor for Collect<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            match factor {
                TableFactor::Table { name, alias, .. } => {
                    self.0.insert(last_name(name));
                    if let Some(a) = alias {
                        self.0.insert(a.name.value.to_ascii_lowercase());
                    }
                }
                TableFactor::Derived { alias: Some(a), .. }
                | TableFactor::UNNEST { alias: Some(a), .. } => {
                    self.0.insert(a.name.value.to_ascii_lowercase());
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if let Some(with) = &query.with {
                for cte in &with.cte_tables {
                    self.0.insert(cte.alias.name.value.to_ascii_lowercase());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = datafusion::sql::sqlparser::ast::Visit::visit(query, &mut Collect(&mut names));
    names
}

/// A scalar subquery with a recursive CTE that reads the outer row becomes a call of
/// `eddy_subquery`, which runs it per row (see `subquery.rs`).
fn recursive_subquery_as_call(expr: &mut Expr) {
    let Expr::Subquery(query) = expr else {
        return;
    };
    if !query.with.as_ref().is_some_and(|w| w.recursive) {
        return;
    }
    let inner = all_bound_names(query);
    let mut outer: Vec<Expr> = Vec::new();
    let mut body = query.as_ref().clone();
    let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(&mut body, |e| {
        if let Expr::CompoundIdentifier(parts) = e
            && parts.len() >= 2
            && !inner.contains(&parts[parts.len() - 2].value.to_ascii_lowercase())
        {
            let n = match outer.iter().position(|o| o == e) {
                Some(i) => i + 1,
                None => {
                    outer.push(e.clone());
                    outer.len()
                }
            };
            *e = Expr::Value(Value::Placeholder(format!("${n}")).into());
        }
        ControlFlow::<()>::Continue(())
    });
    if outer.is_empty() {
        return;
    }
    let mut args = vec![Expr::Value(
        Value::SingleQuotedString(body.to_string()).into(),
    )];
    args.extend(outer);
    *expr = call(super::subquery::NAME, args);
}

struct CatalogQueryRewriter;

impl VisitorMut for CatalogQueryRewriter {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        scalar_function_table(factor);
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        // ARRAY(SELECT e FROM ...)
        if let Expr::Function(f) = expr
            && last_name(&f.name) == "array"
            && let FunctionArguments::Subquery(query) = &mut f.args
        {
            let mut query = query.as_ref().clone();
            let order_by = query.order_by.take();
            if let Some(select) = single_select(&mut query) {
                if let Some(formatted) = options_array(select).or_else(|| prefixed_array(select)) {
                    *expr = formatted;
                    return ControlFlow::Continue(());
                }
                let item = item_expr(&mut select.projection[0]).cloned();
                if let Some(item) = item {
                    let mut agg = call("array_agg", vec![item.clone()]);
                    if let (Expr::Function(f), Some(order_by)) = (&mut agg, order_by)
                        && let FunctionArguments::List(list) = &mut f.args
                        && let OrderByKind::Expressions(mut exprs) = order_by.kind
                    {
                        for e in &mut exprs {
                            // ORDER BY 1: the projected expression.
                            if matches!(&e.expr, Expr::Value(v) if matches!(v.value, Value::Number(_, _)))
                            {
                                e.expr = item.clone();
                            }
                        }
                        list.clauses.push(
                            datafusion::sql::sqlparser::ast::FunctionArgumentClause::OrderBy(exprs),
                        );
                    }
                    select.projection[0] = SelectItem::UnnamedExpr(agg);
                    *expr = call("eddy_empty_if_null", vec![Expr::Subquery(Box::new(query))]);
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        hoist_order_by_subqueries(query);
        // Scalar subqueries in this query's select list.
        if let SetExpr::Select(select) = query.body.as_mut() {
            for item in &mut select.projection {
                let Some(expr) = item_expr(item) else {
                    continue;
                };
                let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(expr, |e| {
                    exists_as_count(e);
                    recursive_subquery_as_call(e);
                    ControlFlow::<()>::Continue(())
                });
                // Scalar subqueries anywhere in the item (`CASE WHEN (SELECT ...) ...`).
                let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(expr, |e| {
                    first_row_subquery(e);
                    ControlFlow::<()>::Continue(())
                });
            }
        }
        ControlFlow::Continue(())
    }
}

/// A scalar subquery that does not aggregate takes its one row through `first_value`, and
/// its filter's conditions on the outer row alone move out of it.
fn first_row_subquery(expr: &mut Expr) {
    if split_outer_projection(expr) {
        return;
    }
    let Expr::Subquery(sub) = expr else {
        return;
    };
    let Some(inner) = single_select(sub) else {
        return;
    };
    if let Some(e) = item_expr(&mut inner.projection[0])
        && !is_aggregate(e)
    {
        *e = call("first_value", vec![e.clone()]);
    }
    if let Some(outer_only) = decorrelate_filter(inner) {
        *expr = Expr::Case {
            case_token: AttachedToken::empty(),
            end_token: AttachedToken::empty(),
            operand: None,
            conditions: vec![CaseWhen {
                condition: outer_only,
                result: expr.clone(),
            }],
            else_result: None,
        };
    }
}

/// DataFusion cannot decorrelate a subquery whose select list reads the outer row
/// (`(SELECT json_build_object('always', a.attidentity = 'a', 'start', s.seqstart) FROM
/// pg_sequence s WHERE ...)`, as SQLAlchemy reflects identity columns). When that list is a
/// function call, the call moves out and each argument that reads the subquery's rows
/// becomes a subquery of its own; the call is made only when the subquery has a row:
/// `CASE WHEN (SELECT count(*) ...) > 0 THEN f(outer, (SELECT inner ...)) END`.
fn split_outer_projection(expr: &mut Expr) -> bool {
    let Expr::Subquery(sub) = expr else {
        return false;
    };
    let template = sub.as_ref().clone();
    let Some(select) = single_select(sub) else {
        return false;
    };
    let bound = bound_names(select);
    let Some(Expr::Function(f)) = item_expr(&mut select.projection[0]).cloned() else {
        return false;
    };
    if !references(&Expr::Function(f.clone()), &bound).1 {
        return false;
    }
    let FunctionArguments::List(list) = &f.args else {
        return false;
    };
    let mut call_args = Vec::with_capacity(list.args.len());
    for arg in &list.args {
        let FunctionArg::Unnamed(FunctionArgExpr::Expr(a)) = arg else {
            return false;
        };
        let (reads_inner, reads_outer) = references(a, &bound);
        if reads_inner && reads_outer {
            return false;
        }
        if !reads_inner {
            call_args.push(a.clone());
            continue;
        }
        let mut piece = template.clone();
        if let SetExpr::Select(s) = piece.body.as_mut() {
            s.projection[0] = SelectItem::UnnamedExpr(a.clone());
        }
        let mut piece = Expr::Subquery(Box::new(piece));
        first_row_subquery(&mut piece);
        call_args.push(piece);
    }
    let mut count = template;
    if let SetExpr::Select(s) = count.body.as_mut() {
        s.projection[0] = SelectItem::UnnamedExpr(call(
            "count",
            vec![Expr::Value(Value::Number("1".into(), false).into())],
        ));
    }
    let mut count = Expr::Subquery(Box::new(count));
    if let Expr::Subquery(q) = &mut count
        && let Some(s) = single_select(q)
        && let Some(outer_only) = decorrelate_filter(s)
    {
        count = Expr::Case {
            case_token: AttachedToken::empty(),
            end_token: AttachedToken::empty(),
            operand: None,
            conditions: vec![CaseWhen {
                condition: outer_only,
                result: count.clone(),
            }],
            else_result: None,
        };
    }
    let mut outer_call = f.clone();
    if let FunctionArguments::List(list) = &mut outer_call.args {
        list.args = call_args
            .into_iter()
            .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
            .collect();
    }
    *expr = Expr::Case {
        case_token: AttachedToken::empty(),
        end_token: AttachedToken::empty(),
        operand: None,
        conditions: vec![CaseWhen {
            condition: Expr::BinaryOp {
                left: Box::new(count),
                op: BinaryOperator::Gt,
                right: Box::new(Expr::Value(Value::Number("0".into(), false).into())),
            },
            result: Expr::Function(outer_call),
        }],
        else_result: None,
    };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
        let s = datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql)
            .unwrap()
            .remove(0);
        rewrite(s).to_string()
    }

    #[test]
    fn queries_over_always_empty_catalogs_return_their_columns() {
        assert_eq!(
            rewritten(
                "SELECT pol.polname, pol.polpermissive AS p, pg_catalog.pg_get_expr(pol.polqual, pol.polrelid) \
                 FROM pg_catalog.pg_policy pol WHERE pol.polrelid = '1' ORDER BY 1"
            ),
            "SELECT CAST(NULL AS TEXT) AS \"polname\", CAST(NULL AS TEXT) AS \"p\", CAST(NULL AS TEXT) AS \"pg_get_expr\" WHERE false"
        );
        // A LEFT JOIN to an empty catalog keeps the rows of the other side.
        assert!(
            rewritten(
                "SELECT c.relname FROM pg_class c LEFT JOIN pg_inherits i ON c.oid = i.inhrelid"
            )
            .contains("LEFT JOIN")
        );
    }

    #[test]
    fn array_subqueries_aggregate() {
        let sql = rewritten(
            "SELECT ARRAY(SELECT b.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) WHERE m.member = r.oid) FROM pg_catalog.pg_roles r",
        );
        assert!(
            sql.starts_with("SELECT eddy_empty_if_null((SELECT array_agg(b.rolname) FROM"),
            "{sql}"
        );
        let sql = rewritten(
            "SELECT array_to_string(ARRAY(SELECT pg_catalog.quote_ident(option_name) || ' ' || pg_catalog.quote_literal(option_value) FROM pg_catalog.pg_options_to_table(ftoptions)), ', ') FROM pg_catalog.pg_foreign_table",
        );
        assert_eq!(
            sql,
            "SELECT array_to_string(eddy_format_options(ftoptions), ', ') FROM pg_catalog.pg_foreign_table"
        );
    }

    #[test]
    fn scalar_subqueries_in_select_lists_take_one_row() {
        let sql = rewritten(
            "SELECT a.attname, (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true) FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) FROM pg_catalog.pg_attribute a",
        );
        assert!(
            sql.contains("(SELECT first_value(pg_get_expr(d.adbin, d.adrelid, true))"),
            "{sql}"
        );
        // Aggregating subqueries are left alone.
        let sql = rewritten("SELECT (SELECT count(*) FROM pg_class) FROM pg_namespace");
        assert!(
            sql.contains("(SELECT count(*) FROM pg_catalog.pg_class)"),
            "{sql}"
        );
    }
}
