//! Statements: PostgreSQL's (parsed by sqlparser) plus Eddy's streaming DDL.
//!
//! Eddy's own statements are recognised by their first words and parsed with sqlparser's
//! primitives (column definitions, expressions, queries), so they share its tokenizer, its
//! error messages and its recursion limit:
//!
//! ```sql
//! CREATE SOURCE [IF NOT EXISTS] name [(col type [NOT NULL], ...,
//!     WATERMARK FOR col AS expr)] [WITH (key = 'value', ...)]
//! CREATE STREAM [IF NOT EXISTS] name [WITH (...)] AS query
//! CREATE SINK [IF NOT EXISTS] name FROM relation | FROM (query) WITH (connector = ..., ...)
//! CREATE MATERIALIZED VIEW [IF NOT EXISTS] name [WITH (...)] AS query
//!     [EMIT ON WINDOW CLOSE | EMIT ON UPDATE]
//! CREATE MODEL [IF NOT EXISTS] name [VERSION n] FROM 'location' [WITH (...)]
//! ALTER MODEL name SET ACTIVE VERSION n | ALTER MODEL name ROLLBACK
//! SHOW SOURCES | STREAMS | MATERIALIZED VIEWS | MODELS | SINKS
//! DROP SOURCE | STREAM | MATERIALIZED VIEW | MODEL | SINK [IF EXISTS] name [, ...] [CASCADE | RESTRICT]
//! EXPLAIN CREATE STREAM ... | EXPLAIN CREATE MATERIALIZED VIEW ...
//! ```

use std::fmt;

use datafusion::sql::sqlparser::ast::{ColumnDef, Expr, Ident, ObjectName, Query, Statement};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

/// One statement of either kind. (Statements are parsed once and moved rarely, so the size
/// difference between the variants does not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    Sql(Statement),
    Eddy(EddyStatement),
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stmt::Sql(s) => s.fmt(f),
            Stmt::Eddy(s) => s.fmt(f),
        }
    }
}

impl From<Statement> for Stmt {
    fn from(s: Statement) -> Self {
        Stmt::Sql(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Source,
    Stream,
    MaterializedView,
    Model,
    Sink,
}

impl ObjectKind {
    pub fn sql(self) -> &'static str {
        match self {
            ObjectKind::Model => "MODEL",
            ObjectKind::Sink => "SINK",
            ObjectKind::Source => "SOURCE",
            ObjectKind::Stream => "STREAM",
            ObjectKind::MaterializedView => "MATERIALIZED VIEW",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateSource {
    pub name: ObjectName,
    pub if_not_exists: bool,
    pub columns: Vec<ColumnDef>,
    /// `WATERMARK FOR column AS expr`.
    pub watermark: Option<(Ident, Expr)>,
    pub options: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateQuery {
    pub kind: ObjectKind,
    pub name: ObjectName,
    pub if_not_exists: bool,
    pub query: Box<Query>,
    pub options: Vec<(String, String)>,
    /// `Some(true)`: EMIT ON WINDOW CLOSE; `Some(false)`: EMIT ON UPDATE.
    pub emit_on_close: Option<bool>,
}

/// `CREATE MODEL name [VERSION n] FROM 'location' [WITH (...)]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateModel {
    pub name: ObjectName,
    pub if_not_exists: bool,
    /// `VERSION n`: adds a version to an existing model (or starts a new one at n).
    pub version: Option<u32>,
    pub location: String,
    pub options: Vec<(String, String)>,
}

/// `ALTER MODEL name SET ACTIVE VERSION n | ROLLBACK`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlterModel {
    SetActive(u32),
    Rollback,
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum EddyStatement {
    CreateSource(CreateSource),
    CreateModel(CreateModel),
    AlterModel {
        name: ObjectName,
        action: AlterModel,
    },
    CreateQuery(CreateQuery),
    Show(ObjectKind),
    Drop {
        kind: ObjectKind,
        names: Vec<ObjectName>,
        if_exists: bool,
        cascade: bool,
    },
    Explain(CreateQuery),
    /// `ALTER SEQUENCE`, which sqlparser does not parse.
    AlterSequence(super::sequences::AlterSequence),
    Subscribe(super::subscribe::Subscribe),
    DeclareCursor(super::cursors::DeclareCursor),
}

fn options_sql(options: &[(String, String)]) -> String {
    if options.is_empty() {
        return String::new();
    }
    let items: Vec<String> = options
        .iter()
        .map(|(k, v)| {
            let v = eddy_connectors::options::shown_value(k, v).replace('\'', "''");
            format!("{k} = '{v}'")
        })
        .collect();
    format!(" WITH ({})", items.join(", "))
}

impl fmt::Display for CreateQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CREATE {} {}{} AS {}",
            self.kind.sql(),
            self.name,
            options_sql(&self.options),
            self.query
        )?;
        match self.emit_on_close {
            Some(true) => write!(f, " EMIT ON WINDOW CLOSE"),
            Some(false) => write!(f, " EMIT ON UPDATE"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for EddyStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EddyStatement::CreateSource(s) => {
                write!(f, "CREATE SOURCE {}", s.name)?;
                let mut items: Vec<String> = s.columns.iter().map(|c| c.to_string()).collect();
                if let Some((col, expr)) = &s.watermark {
                    items.push(format!("WATERMARK FOR {col} AS {expr}"));
                }
                if !items.is_empty() {
                    write!(f, " ({})", items.join(", "))?;
                }
                write!(f, "{}", options_sql(&s.options))
            }
            EddyStatement::CreateQuery(q) => q.fmt(f),
            EddyStatement::CreateModel(m) => write!(
                f,
                "CREATE MODEL {}{} FROM '{}'{}",
                m.name,
                m.version
                    .map(|v| format!(" VERSION {v}"))
                    .unwrap_or_default(),
                m.location.replace('\'', "''"),
                options_sql(&m.options)
            ),
            EddyStatement::AlterModel { name, action } => match action {
                AlterModel::SetActive(v) => write!(f, "ALTER MODEL {name} SET ACTIVE VERSION {v}"),
                AlterModel::Rollback => write!(f, "ALTER MODEL {name} ROLLBACK"),
            },
            EddyStatement::Show(kind) => write!(f, "SHOW {}S", kind.sql()),
            EddyStatement::Drop { kind, names, .. } => {
                let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                write!(f, "DROP {} {}", kind.sql(), names.join(", "))
            }
            EddyStatement::Explain(q) => write!(f, "EXPLAIN {q}"),
            EddyStatement::AlterSequence(a) => a.fmt(f),
            EddyStatement::Subscribe(s) => s.fmt(f),
            EddyStatement::DeclareCursor(d) => d.fmt(f),
        }
    }
}

fn word(parser: &Parser<'_>, n: usize) -> Option<String> {
    match parser.peek_nth_token(n).token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

/// What kind of object the words at `at` name (`SOURCE`, `STREAM`, `MATERIALIZED VIEW`),
/// and how many words that took.
fn object_kind(parser: &Parser<'_>, at: usize) -> Option<(ObjectKind, usize)> {
    match word(parser, at).as_deref() {
        Some("SOURCE") => Some((ObjectKind::Source, 1)),
        Some("STREAM") => Some((ObjectKind::Stream, 1)),
        Some("MODEL") => Some((ObjectKind::Model, 1)),
        Some("SINK") => Some((ObjectKind::Sink, 1)),
        Some("MATERIALIZED") if word(parser, at + 1).as_deref() == Some("VIEW") => {
            Some((ObjectKind::MaterializedView, 2))
        }
        _ => None,
    }
}

fn plural_kind(parser: &Parser<'_>, at: usize) -> Option<ObjectKind> {
    match word(parser, at).as_deref() {
        Some("SOURCES") => Some(ObjectKind::Source),
        Some("STREAMS") => Some(ObjectKind::Stream),
        Some("MODELS") => Some(ObjectKind::Model),
        Some("SINKS") => Some(ObjectKind::Sink),
        Some("MATERIALIZED") if word(parser, at + 1).as_deref() == Some("VIEWS") => {
            Some(ObjectKind::MaterializedView)
        }
        _ => None,
    }
}

fn skip(parser: &mut Parser<'_>, n: usize) {
    for _ in 0..n {
        parser.next_token();
    }
}

/// Parses one of Eddy's statements if the next tokens start one.
/// PostgreSQL's `CREATE USER` (a role that can log in) and `ALTER USER`, which sqlparser
/// reads in other dialects' forms.
pub fn parse_user_statement(parser: &mut Parser<'_>) -> Result<Option<Statement>, ParserError> {
    if word(parser, 1).as_deref() != Some("USER") {
        return Ok(None);
    }
    match word(parser, 0).as_deref() {
        Some("CREATE") => {
            skip(parser, 2);
            let mut role = parser.parse_create_role()?;
            role.login.get_or_insert(true);
            Ok(Some(Statement::CreateRole(role)))
        }
        Some("ALTER") => {
            skip(parser, 2);
            parser.parse_alter_role().map(Some)
        }
        _ => Ok(None),
    }
}

/// `FETCH [ALL | NEXT | count | FORWARD [count | ALL]] name`: PostgreSQL's `FROM` / `IN` is
/// optional, sqlparser requires it (statements with it are left to sqlparser).
pub fn parse_fetch_without_from(parser: &mut Parser<'_>) -> Result<Option<Statement>, ParserError> {
    use datafusion::sql::sqlparser::ast::{FetchDirection, FetchPosition, Value};
    if word(parser, 0).as_deref() != Some("FETCH") {
        return Ok(None);
    }
    for n in 1.. {
        match parser.peek_nth_token(n).token {
            Token::EOF | Token::SemiColon => break,
            Token::Word(w) if matches!(w.keyword, Keyword::FROM | Keyword::IN) => {
                return Ok(None);
            }
            _ => {}
        }
    }
    parser.next_token();
    let count = |parser: &mut Parser<'_>| match parser.peek_token().token {
        Token::Number(n, _) => {
            parser.next_token();
            Some(Value::Number(n, false).with_empty_span())
        }
        _ => None,
    };
    let direction = match word(parser, 0).as_deref() {
        Some("ALL") => {
            parser.next_token();
            FetchDirection::All
        }
        Some("NEXT") => {
            parser.next_token();
            FetchDirection::Next
        }
        Some("FORWARD") => {
            parser.next_token();
            if word(parser, 0).as_deref() == Some("ALL") {
                parser.next_token();
                FetchDirection::ForwardAll
            } else {
                FetchDirection::Forward {
                    limit: count(parser),
                }
            }
        }
        _ => match count(parser) {
            Some(limit) => FetchDirection::Count { limit },
            None => FetchDirection::Next,
        },
    };
    let name = parser.parse_identifier()?;
    Ok(Some(Statement::Fetch {
        name,
        direction,
        position: FetchPosition::From,
        into: None,
    }))
}

/// `SUBSCRIBE [TO] name [WITH (snapshot = bool, progress = bool)]`.
fn parse_subscribe(parser: &mut Parser<'_>) -> Result<super::subscribe::Subscribe, ParserError> {
    parser.next_token();
    if word(parser, 0).as_deref() == Some("TO") {
        parser.next_token();
    }
    let name = parser.parse_object_name(false)?;
    let mut subscribe = super::subscribe::Subscribe {
        name,
        snapshot: true,
        progress: false,
    };
    for (key, value) in with_options(parser)? {
        let flag = match value.to_ascii_lowercase().as_str() {
            "true" | "on" | "1" => true,
            "false" | "off" | "0" => false,
            _ => {
                return Err(ParserError::ParserError(format!(
                    "SUBSCRIBE option {key} takes true or false, not \"{value}\""
                )));
            }
        };
        match key.as_str() {
            "snapshot" => subscribe.snapshot = flag,
            "progress" => subscribe.progress = flag,
            _ => {
                return Err(ParserError::ParserError(format!(
                    "unknown SUBSCRIBE option \"{key}\" (snapshot, progress)"
                )));
            }
        }
    }
    Ok(subscribe)
}

/// `DECLARE name [ASENSITIVE | INSENSITIVE] [NO SCROLL] CURSOR [WITHOUT HOLD] FOR
/// <query | SUBSCRIBE ...>`.
fn parse_declare(parser: &mut Parser<'_>) -> Result<super::cursors::DeclareCursor, ParserError> {
    parser.next_token();
    let name = parser.parse_identifier()?;
    loop {
        match word(parser, 0).as_deref() {
            Some("ASENSITIVE" | "INSENSITIVE") => {
                parser.next_token();
            }
            Some("NO") if word(parser, 1).as_deref() == Some("SCROLL") => skip(parser, 2),
            Some("SCROLL") => {
                return Err(ParserError::ParserError(
                    "SCROLL cursors are not supported: Eddy's cursors scan forward".into(),
                ));
            }
            Some("BINARY") => {
                return Err(ParserError::ParserError(
                    "BINARY cursors are not supported".into(),
                ));
            }
            _ => break,
        }
    }
    if word(parser, 0).as_deref() != Some("CURSOR") {
        return parser.expected("CURSOR", parser.peek_token());
    }
    parser.next_token();
    match (word(parser, 0).as_deref(), word(parser, 1).as_deref()) {
        (Some("WITHOUT"), Some("HOLD")) => skip(parser, 2),
        (Some("WITH"), Some("HOLD")) => {
            return Err(ParserError::ParserError(
                "WITH HOLD cursors are not supported: a cursor ends with its transaction".into(),
            ));
        }
        _ => {}
    }
    parser.expect_keyword_is(Keyword::FOR)?;
    let body = match word(parser, 0).as_deref() {
        Some("SUBSCRIBE") => super::cursors::CursorBody::Subscribe(parse_subscribe(parser)?),
        _ => super::cursors::CursorBody::Query(parser.parse_query()?),
    };
    Ok(super::cursors::DeclareCursor { name, body })
}

pub fn parse_eddy(parser: &mut Parser<'_>) -> Result<Option<EddyStatement>, ParserError> {
    let first = word(parser, 0);
    Ok(Some(match first.as_deref() {
        Some("CREATE") => match object_kind(parser, 1) {
            Some((kind, n)) => {
                skip(parser, 1 + n);
                create(parser, kind)?
            }
            None => return Ok(None),
        },
        Some("EXPLAIN") if word(parser, 1).as_deref() == Some("CREATE") => {
            match object_kind(parser, 2) {
                Some((kind, n)) if !matches!(kind, ObjectKind::Source | ObjectKind::Model) => {
                    skip(parser, 2 + n);
                    match create(parser, kind)? {
                        EddyStatement::CreateQuery(q) => EddyStatement::Explain(q),
                        _ => unreachable!("queries only"),
                    }
                }
                _ => return Ok(None),
            }
        }
        Some("SUBSCRIBE") => EddyStatement::Subscribe(parse_subscribe(parser)?),
        Some("DECLARE") => EddyStatement::DeclareCursor(parse_declare(parser)?),
        Some("ALTER") if word(parser, 1).as_deref() == Some("SEQUENCE") => {
            skip(parser, 2);
            EddyStatement::AlterSequence(super::sequences::parse_alter(parser)?)
        }
        Some("ALTER") if word(parser, 1).as_deref() == Some("MODEL") => {
            skip(parser, 2);
            let name = parser.parse_object_name(false)?;
            let action = if word(parser, 0).as_deref() == Some("ROLLBACK") {
                parser.next_token();
                AlterModel::Rollback
            } else {
                parser.expect_keyword_is(Keyword::SET)?;
                if word(parser, 0).as_deref() != Some("ACTIVE") {
                    return parser.expected("ACTIVE VERSION n or ROLLBACK", parser.peek_token());
                }
                parser.next_token();
                parser.expect_keyword_is(Keyword::VERSION)?;
                AlterModel::SetActive(version_number(parser)?)
            };
            EddyStatement::AlterModel { name, action }
        }
        Some("SHOW") => match plural_kind(parser, 1) {
            Some(kind) => {
                skip(
                    parser,
                    if kind == ObjectKind::MaterializedView {
                        3
                    } else {
                        2
                    },
                );
                EddyStatement::Show(kind)
            }
            None => return Ok(None),
        },
        Some("DROP") => match object_kind(parser, 1) {
            Some((kind, n)) => {
                skip(parser, 1 + n);
                let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
                let names = parser.parse_comma_separated(|p| p.parse_object_name(false))?;
                let cascade = parser.parse_keyword(Keyword::CASCADE);
                let _restrict = !cascade && parser.parse_keyword(Keyword::RESTRICT);
                EddyStatement::Drop {
                    kind,
                    names,
                    if_exists,
                    cascade,
                }
            }
            None => return Ok(None),
        },
        _ => return Ok(None),
    }))
}

/// A model version number: a positive integer.
fn version_number(parser: &mut Parser<'_>) -> Result<u32, ParserError> {
    let n = parser.parse_literal_uint()?;
    u32::try_from(n).ok().filter(|v| *v > 0).ok_or_else(|| {
        ParserError::ParserError(format!(
            "invalid model version {n} (expected 1 to {})",
            u32::MAX
        ))
    })
}

fn create(parser: &mut Parser<'_>, kind: ObjectKind) -> Result<EddyStatement, ParserError> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    if kind == ObjectKind::Model {
        let version = match parser.parse_keyword(Keyword::VERSION) {
            true => Some(version_number(parser)?),
            false => None,
        };
        parser.expect_keyword_is(Keyword::FROM)?;
        let location = parser.parse_literal_string()?;
        let options = with_options(parser)?;
        return Ok(EddyStatement::CreateModel(CreateModel {
            name,
            if_not_exists,
            version,
            location,
            options,
        }));
    }
    if kind == ObjectKind::Sink {
        // FROM relation | FROM (query): a sink of a relation exports all its columns.
        parser.expect_keyword_is(Keyword::FROM)?;
        let query = if parser.consume_token(&Token::LParen) {
            let q = parser.parse_query()?;
            parser.expect_token(&Token::RParen)?;
            q
        } else {
            let relation = parser.parse_object_name(false)?;
            let sql = format!("SELECT * FROM {relation}");
            Parser::new(&datafusion::sql::sqlparser::dialect::PostgreSqlDialect {})
                .try_with_sql(&sql)?
                .parse_query()?
        };
        let options = with_options(parser)?;
        return Ok(EddyStatement::CreateQuery(CreateQuery {
            kind,
            name,
            if_not_exists,
            query,
            options,
            emit_on_close: None,
        }));
    }
    if kind == ObjectKind::Source {
        let mut columns = Vec::new();
        let mut watermark = None;
        if parser.consume_token(&Token::LParen) {
            loop {
                if word(parser, 0).as_deref() == Some("WATERMARK") {
                    parser.next_token();
                    parser.expect_keyword_is(Keyword::FOR)?;
                    let column = parser.parse_identifier()?;
                    parser.expect_keyword_is(Keyword::AS)?;
                    let expr = parser.parse_expr()?;
                    if watermark.replace((column, expr)).is_some() {
                        return Err(ParserError::ParserError(
                            "a source can have only one WATERMARK".into(),
                        ));
                    }
                } else {
                    columns.push(parser.parse_column_def()?);
                }
                if !parser.consume_token(&Token::Comma) {
                    break;
                }
            }
            parser.expect_token(&Token::RParen)?;
        }
        let options = with_options(parser)?;
        return Ok(EddyStatement::CreateSource(CreateSource {
            name,
            if_not_exists,
            columns,
            watermark,
            options,
        }));
    }
    let options = with_options(parser)?;
    parser.expect_keyword_is(Keyword::AS)?;
    let mut query = parser.parse_query()?;
    // `FROM src EMIT ON ...`: sqlparser reads EMIT as the alias of `src`.
    let alias_emit = word(parser, 0).as_deref() == Some("ON") && take_emit_alias(&mut query);
    let emit_on_close = if alias_emit || word(parser, 0).as_deref() == Some("EMIT") {
        if !alias_emit {
            parser.next_token();
        }
        parser.expect_keyword_is(Keyword::ON)?;
        if parser.parse_keyword(Keyword::UPDATE) {
            Some(false)
        } else if parser.parse_keyword(Keyword::WINDOW) {
            parser.expect_keyword_is(Keyword::CLOSE)?;
            Some(true)
        } else {
            return parser.expected("WINDOW CLOSE or UPDATE after EMIT ON", parser.peek_token());
        }
    } else {
        None
    };
    Ok(EddyStatement::CreateQuery(CreateQuery {
        kind,
        name,
        if_not_exists,
        query,
        options,
        emit_on_close,
    }))
}

/// Removes an unquoted alias `EMIT` from the last relation of the query's FROM clause.
fn take_emit_alias(query: &mut Query) -> bool {
    use datafusion::sql::sqlparser::ast::{SetExpr, TableFactor};
    let SetExpr::Select(select) = query.body.as_mut() else {
        return false;
    };
    let Some(last) = select.from.last_mut() else {
        return false;
    };
    let relation = match last.joins.last_mut() {
        Some(j) => &mut j.relation,
        None => &mut last.relation,
    };
    let alias = match relation {
        TableFactor::Table { alias, .. } | TableFactor::Derived { alias, .. } => alias,
        _ => return false,
    };
    match alias {
        Some(a) if a.name.quote_style.is_none() && a.name.value.eq_ignore_ascii_case("emit") => {
            *alias = None;
            true
        }
        _ => false,
    }
}

/// `WITH (key = value, ...)`: keys may be dotted (`properties.bootstrap.servers`) or quoted;
/// values are strings, numbers, booleans or bare words.
fn with_options(parser: &mut Parser<'_>) -> Result<Vec<(String, String)>, ParserError> {
    let mut options = Vec::new();
    if !parser.parse_keyword(Keyword::WITH) {
        return Ok(options);
    }
    parser.expect_token(&Token::LParen)?;
    if parser.consume_token(&Token::RParen) {
        return Ok(options);
    }
    loop {
        let mut key = String::new();
        loop {
            let t = parser.next_token();
            match t.token {
                Token::Word(w) => key.push_str(&w.value.to_ascii_lowercase()),
                Token::SingleQuotedString(s) => key.push_str(&s),
                _ => return parser.expected("an option name", t),
            }
            if !parser.consume_token(&Token::Period) {
                break;
            }
            key.push('.');
        }
        parser.expect_token(&Token::Eq)?;
        let t = parser.next_token();
        let value = match t.token {
            Token::SingleQuotedString(s) => s,
            Token::Number(n, _) => n,
            Token::Word(w) => w.value,
            Token::Minus => match parser.next_token().token {
                Token::Number(n, _) => format!("-{n}"),
                _ => return parser.expected("a number", parser.peek_token()),
            },
            _ => return parser.expected("an option value", t),
        };
        options.push((key, value));
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen)?;
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Session;

    fn one(sql: &str) -> EddyStatement {
        match Session::parse(sql).unwrap().remove(0) {
            Stmt::Eddy(s) => s,
            other => panic!("not an Eddy statement: {other:?}"),
        }
    }

    #[test]
    fn create_source_with_watermark_and_dotted_options() {
        let EddyStatement::CreateSource(s) = one(
            "CREATE SOURCE bids (auction BIGINT NOT NULL, ts TIMESTAMPTZ, \
             WATERMARK FOR ts AS ts - INTERVAL '5 seconds') \
             WITH (connector = 'kafka', properties.bootstrap.server = 'localhost:9092', max_event_bytes = 100)",
        ) else {
            panic!()
        };
        assert_eq!(s.columns.len(), 2);
        assert_eq!(s.watermark.as_ref().unwrap().0.value, "ts");
        assert_eq!(
            s.options,
            vec![
                ("connector".into(), "kafka".into()),
                (
                    "properties.bootstrap.server".into(),
                    "localhost:9092".into()
                ),
                ("max_event_bytes".into(), "100".into()),
            ]
        );
    }

    #[test]
    fn materialized_view_with_emit_and_mixed_statements() {
        let all = Session::parse(
            "CREATE MATERIALIZED VIEW v AS SELECT count(*) FROM s EMIT ON WINDOW CLOSE; SELECT 1; SHOW SOURCES",
        )
        .unwrap();
        assert_eq!(all.len(), 3);
        let Stmt::Eddy(EddyStatement::CreateQuery(q)) = &all[0] else {
            panic!()
        };
        assert_eq!(q.emit_on_close, Some(true));
        assert!(matches!(all[1], Stmt::Sql(_)));
        assert_eq!(all[2], Stmt::Eddy(EddyStatement::Show(ObjectKind::Source)));
    }

    #[test]
    fn drop_and_errors() {
        let EddyStatement::Drop {
            kind,
            cascade,
            if_exists,
            ..
        } = one("DROP MATERIALIZED VIEW IF EXISTS a, b CASCADE")
        else {
            panic!()
        };
        assert_eq!(kind, ObjectKind::MaterializedView);
        assert!(cascade && if_exists);
        assert!(Session::parse("CREATE STREAM s AS SELECT 1 x y z").is_err());
        assert!(Session::parse("CREATE SOURCE s WITH (a 'x')").is_err());
    }
}
