//! `FOR SYSTEM_TIME AS OF <column>` after a table name (a temporal join, as Flink SQL writes
//! it). The PostgreSQL dialect does not parse table versions, so the clause is blanked out of
//! the text before parsing (with spaces, so every position stays where it was) and put back
//! into the parsed table reference it followed, found by the position of its name's last
//! part or its alias (PostgreSQL's order, `rates AS r FOR SYSTEM_TIME AS OF o.ts`, is what the
//! parsed statement prints; Flink's is `rates FOR SYSTEM_TIME AS OF o.ts AS r`).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, JoinOperator, ObjectNamePart, Query, SetExpr, Statement, TableFactor, TableVersion,
    Visit, VisitMut, Visitor, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::error::{Error, Result, sqlstate};

/// The clauses found: (where the word before each starts, the AS OF expression).
pub(super) type Clauses = Vec<(Location, Expr)>;

/// The text with each `FOR SYSTEM_TIME AS OF a.b` blanked out, and the clauses; None if the
/// text has none.
pub(super) fn strip(sql: &str) -> Option<(String, Clauses)> {
    if !sql.to_ascii_uppercase().contains("SYSTEM_TIME") {
        return None;
    }
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .ok()?;
    // Indices of the tokens that are not whitespace.
    let solid: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect();
    let word = |i: usize, w: &str| matches!(&tokens[i].token, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w));
    let mut text = sql.to_string();
    let mut clauses = Vec::new();
    let mut at = 0;
    while at + 4 < solid.len() {
        let [f, s, a, o] = [solid[at], solid[at + 1], solid[at + 2], solid[at + 3]];
        if !(word(f, "FOR") && word(s, "SYSTEM_TIME") && word(a, "AS") && word(o, "OF")) {
            at += 1;
            continue;
        }
        // The expression: a column, maybe qualified (`o.ts`).
        let mut end = at + 4;
        if !matches!(tokens[solid[end]].token, Token::Word(_)) {
            return None;
        }
        // Parts joined by periods with no space between (`o. ON` is not a column).
        while end + 2 < solid.len()
            && solid[end + 2] == solid[end] + 2
            && tokens[solid[end + 1]].token == Token::Period
            && matches!(tokens[solid[end + 2]].token, Token::Word(_))
        {
            end += 2;
        }
        let expr_text: String = tokens[solid[at + 4]..=solid[end]]
            .iter()
            .map(|t| t.token.to_string())
            .collect();
        let expr = Parser::new(&dialect)
            .try_with_sql(&expr_text)
            .and_then(|mut p| p.parse_expr())
            .ok()?;
        // The word before it: the table name's last part, or its alias.
        let before = solid[at.checked_sub(1)?];
        if !matches!(tokens[before].token, Token::Word(_)) {
            return None;
        }
        clauses.push((tokens[before].span.start, expr));
        blank(&mut text, sql, &tokens[solid[at]], &tokens[solid[end]]);
        at = end + 1;
    }
    Some((text, clauses))
}

/// Replaces the text from `first`'s start to `last`'s end with spaces.
fn blank(text: &mut String, sql: &str, first: &TokenWithSpan, last: &TokenWithSpan) {
    let (Some(from), Some(to)) = (offset(sql, first.span.start), offset(sql, last.span.end)) else {
        return;
    };
    let spaces: String = sql[from..to]
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    // Multi-byte characters become one space each: pad so later byte offsets stay put.
    let pad = (to - from).saturating_sub(spaces.len());
    text.replace_range(from..to, &(spaces + &" ".repeat(pad)));
}

/// The byte offset of a line and column (both from 1, columns in characters).
fn offset(sql: &str, at: Location) -> Option<usize> {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in sql.char_indices() {
        if line == at.line && column == at.column {
            return Some(i);
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line == at.line && column == at.column).then_some(sql.len())
}

/// Puts the clauses back into the table references whose names start where they did;
/// returns how many it placed.
pub(super) fn restore<T: VisitMut>(node: &mut T, clauses: &Clauses) -> usize {
    struct Restore<'a>(&'a Clauses, usize);
    impl VisitorMut for Restore<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table {
                name,
                alias,
                version,
                ..
            } = factor
            {
                let last = match name.0.last() {
                    Some(ObjectNamePart::Identifier(last)) => Some(last.span.start),
                    _ => None,
                };
                let alias = alias.as_ref().map(|a| a.name.span.start);
                let Some((_, expr)) = self
                    .0
                    .iter()
                    .find(|(at, _)| Some(*at) == last || Some(*at) == alias)
                else {
                    return ControlFlow::Continue(());
                };
                *version = Some(TableVersion::ForSystemTimeAsOf(expr.clone()));
                self.1 += 1;
            }
            ControlFlow::Continue(())
        }
    }
    let mut restore = Restore(clauses, 0);
    let _ = node.visit(&mut restore);
    restore.1
}

/// Refuses ASOF and temporal joins outside continuous queries (they are planned only over
/// sources, in event time), rather than letting a table version be ignored.
pub(super) fn check_batch(statement: &Statement) -> Result<()> {
    fn asof(body: &SetExpr) -> bool {
        match body {
            SetExpr::Select(select) => select.from.iter().any(|from| {
                from.joins
                    .iter()
                    .any(|j| matches!(j.join_operator, JoinOperator::AsOf { .. }))
            }),
            SetExpr::SetOperation { left, right, .. } => asof(left) || asof(right),
            SetExpr::Query(q) => asof(&q.body),
            _ => false,
        }
    }
    struct Find;
    impl Visitor for Find {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            match asof(&query.body) {
                true => ControlFlow::Break(()),
                false => ControlFlow::Continue(()),
            }
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            match factor {
                TableFactor::Table {
                    version: Some(_), ..
                } => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    match statement.visit(&mut Find) {
        ControlFlow::Break(()) => Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "ASOF and temporal (FOR SYSTEM_TIME AS OF) joins run in streams and materialized \
             views over sources; queries over tables do not support them yet",
        )),
        ControlFlow::Continue(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::Session;
    use crate::engine::statement::{EddyStatement, Stmt};
    use datafusion::sql::sqlparser::ast::{SetExpr, Statement, TableFactor, TableVersion};

    /// The AS OF expression of each joined table of a parsed SELECT or CREATE STREAM.
    fn versions(sql: &str) -> Vec<Option<String>> {
        let statement = Session::parse(sql).unwrap().remove(0);
        let query = match statement {
            Stmt::Sql(Statement::Query(q)) => q,
            Stmt::Eddy(EddyStatement::CreateQuery(q)) => q.query,
            other => panic!("{other:?}"),
        };
        let SetExpr::Select(select) = *query.body else {
            panic!("not a SELECT");
        };
        select.from[0]
            .joins
            .iter()
            .map(|j| match &j.relation {
                TableFactor::Table {
                    version: Some(TableVersion::ForSystemTimeAsOf(e)),
                    ..
                } => Some(e.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_clause_goes_back_to_the_table_it_followed() {
        // Flink's order, PostgreSQL's order, an unaliased table, two temporal joins and a plain
        // one, over lines.
        assert_eq!(
            versions("SELECT 1 FROM o JOIN r FOR SYSTEM_TIME AS OF o.ts AS x ON x.k = o.k"),
            vec![Some("o.ts".to_string())]
        );
        assert_eq!(
            versions("SELECT 1 FROM o JOIN r AS x FOR SYSTEM_TIME AS OF o.ts ON x.k = o.k"),
            vec![Some("o.ts".to_string())]
        );
        assert_eq!(
            versions(
                "CREATE STREAM s AS SELECT 1 FROM o\n  JOIN public.r FOR system_time as of o.ts\n  \
                 ON r.k = o.k JOIN t ON t.k = o.k\n  LEFT JOIN u FOR SYSTEM_TIME AS OF o.\"Ts\" \
                 ON u.k = o.k"
            ),
            vec![Some("o.ts".to_string()), None, Some("o.\"Ts\"".to_string())]
        );
        // Inside a string it is text.
        assert_eq!(
            versions("SELECT 'r FOR SYSTEM_TIME AS OF o.ts' FROM o JOIN r ON r.k = o.k"),
            vec![None]
        );
    }

    #[test]
    fn a_clause_without_its_parts_is_a_syntax_error() {
        for sql in [
            "FOR SYSTEM_TIME AS OF o.ts",
            "SELECT 1 FROM o JOIN r FOR SYSTEM_TIME AS OF",
            "SELECT 1 FROM o JOIN r FOR SYSTEM_TIME AS OF 3 ON true",
            "SELECT 1 FROM o JOIN (SELECT 1) FOR SYSTEM_TIME AS OF o.ts ON true",
            "SELECT 1 FROM o JOIN r FOR SYSTEM_TIME AS OF o. ON true",
        ] {
            let e = Session::parse(sql).expect_err(sql);
            assert_eq!(e.sqlstate(), "42601", "{sql}: {e}");
        }
    }
}
