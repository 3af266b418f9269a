//! The MATCH_RECOGNIZE clause as text: found in a statement before it is parsed, and parsed
//! here.
//!
//! The PostgreSQL dialect does not parse the clause (and sqlparser's own parser of it lacks
//! WITHIN, SUBSET, reluctant quantifiers and Eddy's timeout extension), so [`rewrite`] turns
//! `<input> MATCH_RECOGNIZE (<body>)` into a table function call the dialect does parse,
//! `__eddy_match_recognize('<input>', '<body>')`, keeping any alias after it. The call carries
//! the clause's text through the parsed statement (and through a stored stream's SQL); the
//! planners find it and parse the body with [`parse_clause`]. [`restore`] turns the call back
//! into the clause for display.

use datafusion::sql::sqlparser::ast::{self, Ident, OrderByExpr};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

use super::pattern::Pattern;
use crate::error::{Error, Result, sqlstate};

/// The table function a clause is carried as.
pub const MARKER: &str = "__eddy_match_recognize";

/// A lexical token of the statement text: its byte range and kind.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tok {
    start: usize,
    end: usize,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Word,
    Quoted,
    Literal,
    Open,
    Close,
    Dot,
    Comma,
    Other,
}

/// Splits SQL text into tokens, skipping whitespace and comments; strings, quoted identifiers
/// and dollar-quoted strings are single tokens.
fn lex(sql: &str) -> Vec<Tok> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let kind = match c {
            _ if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
                continue;
            }
            b'\'' | b'"' => {
                i += 1;
                while i < b.len() {
                    if b[i] == c {
                        if b.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.push(Tok {
                    start,
                    end: i,
                    kind: if c == b'"' {
                        Kind::Quoted
                    } else {
                        Kind::Literal
                    },
                });
                continue;
            }
            b'$' => {
                // $tag$ ... $tag$, or a parameter $1.
                let tag_end = sql[i + 1..]
                    .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                    .map(|e| i + 1 + e);
                match tag_end {
                    Some(e)
                        if b[e] == b'$'
                            && !sql[i + 1..e].starts_with(|c: char| c.is_ascii_digit()) =>
                    {
                        let tag = &sql[i..=e];
                        i = sql[e + 1..]
                            .find(tag)
                            .map_or(b.len(), |x| e + 1 + x + tag.len());
                        Kind::Literal
                    }
                    _ => {
                        i += 1;
                        while i < b.len() && b[i].is_ascii_alphanumeric() {
                            i += 1;
                        }
                        Kind::Other
                    }
                }
            }
            b'(' => {
                i += 1;
                Kind::Open
            }
            b')' => {
                i += 1;
                Kind::Close
            }
            b'.' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i += 1;
                Kind::Dot
            }
            b',' => {
                i += 1;
                Kind::Comma
            }
            _ if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 => {
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80
                        || (b[i] == b'.' && b[start].is_ascii_digit()))
                {
                    i += 1;
                }
                Kind::Word
            }
            _ => {
                i += 1;
                Kind::Other
            }
        };
        out.push(Tok {
            start,
            end: i,
            kind,
        });
    }
    out
}

fn is_word(sql: &str, t: &Tok, w: &str) -> bool {
    t.kind == Kind::Word && sql[t.start..t.end].eq_ignore_ascii_case(w)
}

/// The index of the token closing the parenthesis opened at `open`.
fn closing(toks: &[Tok], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t.kind {
            Kind::Open => depth += 1,
            Kind::Close => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Words after which a name is a relation, not an alias.
const BEFORE_RELATION: &[&str] = &["FROM", "JOIN", "LATERAL", "ONLY"];

/// The first token of the relation that ends at token `last` (a name, maybe qualified and
/// aliased, or a parenthesized subquery maybe aliased).
fn relation_start(sql: &str, toks: &[Tok], last: usize) -> Option<usize> {
    let name_like = |t: &Tok| matches!(t.kind, Kind::Word | Kind::Quoted);
    let mut end = last;
    // An alias: `AS x`, or `x` after a name or a subquery.
    if name_like(&toks[end]) && end > 0 {
        let before = &toks[end - 1];
        if is_word(sql, before, "AS") {
            end = end.checked_sub(2)?;
        } else if before.kind == Kind::Close
            || (name_like(before) && !BEFORE_RELATION.iter().any(|w| is_word(sql, before, w)))
        {
            end -= 1;
        }
    }
    match toks[end].kind {
        Kind::Close => {
            let mut depth = 0usize;
            for i in (0..=end).rev() {
                match toks[i].kind {
                    Kind::Close => depth += 1,
                    Kind::Open => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i);
                        }
                    }
                    _ => {}
                }
            }
            None
        }
        Kind::Word | Kind::Quoted => {
            let mut start = end;
            while start >= 2 && toks[start - 1].kind == Kind::Dot && name_like(&toks[start - 2]) {
                start -= 2;
            }
            Some(start)
        }
        _ => None,
    }
}

/// A string literal of `text`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Rewrites every `<input> MATCH_RECOGNIZE (<body>)` of a statement into the marker call;
/// None if the text has none.
pub fn rewrite(sql: &str) -> Result<Option<String>> {
    if !sql.to_ascii_uppercase().contains("MATCH_RECOGNIZE") {
        return Ok(None);
    }
    let toks = lex(sql);
    let mut text = String::new();
    let mut copied = 0;
    let mut found = false;
    let mut i = 0;
    while i < toks.len() {
        if !(is_word(sql, &toks[i], "MATCH_RECOGNIZE")
            && toks.get(i + 1).is_some_and(|t| t.kind == Kind::Open))
        {
            i += 1;
            continue;
        }
        let syntax = |m: &str| Error::user(sqlstate::SYNTAX_ERROR, m.to_string());
        let close =
            closing(&toks, i + 1).ok_or_else(|| syntax("MATCH_RECOGNIZE ( is not closed"))?;
        let input = i
            .checked_sub(1)
            .and_then(|last| relation_start(sql, &toks, last))
            .filter(|s| toks[*s].start >= copied)
            .ok_or_else(|| syntax("MATCH_RECOGNIZE must follow a table, stream or subquery"))?;
        let input_text = &sql[toks[input].start..toks[i - 1].end];
        let body = &sql[toks[i + 1].end..toks[close].start];
        text.push_str(&sql[copied..toks[input].start]);
        text.push_str(&format!("{MARKER}({}, {})", quote(input_text), quote(body)));
        copied = toks[close].end;
        found = true;
        i = close + 1;
    }
    text.push_str(&sql[copied..]);
    Ok(found.then_some(text))
}

/// The marker calls of a text turned back into MATCH_RECOGNIZE clauses (for display).
pub fn restore(sql: &str) -> String {
    if !sql.contains(MARKER) {
        return sql.to_string();
    }
    let toks = lex(sql);
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    let unquote = |t: &Tok| sql[t.start + 1..t.end - 1].replace("''", "'");
    while i + 5 < toks.len() {
        let t = &toks[i];
        let call = is_word(sql, t, MARKER)
            && toks[i + 1].kind == Kind::Open
            && toks[i + 2].kind == Kind::Literal
            && toks[i + 3].kind == Kind::Comma
            && toks[i + 4].kind == Kind::Literal
            && toks[i + 5].kind == Kind::Close;
        if call {
            out.push_str(&sql[copied..t.start]);
            out.push_str(&format!(
                "{} MATCH_RECOGNIZE ({})",
                unquote(&toks[i + 2]),
                unquote(&toks[i + 4])
            ));
            copied = toks[i + 5].end;
            i += 6;
        } else {
            i += 1;
        }
    }
    out.push_str(&sql[copied..]);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsPerMatch {
    One,
    All,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SkipTo {
    PastLastRow,
    ToNextRow,
    ToFirst(Ident),
    ToLast(Ident),
}

/// The clause as written.
#[derive(Debug, Clone)]
pub struct Clause {
    pub partition_by: Vec<ast::Expr>,
    pub order_by: Vec<OrderByExpr>,
    pub measures: Vec<(ast::Expr, Ident)>,
    pub rows: RowsPerMatch,
    pub skip: SkipTo,
    /// The pattern over variable numbers, and the variables' names by number (in order of
    /// first appearance, as first written: CLASSIFIER() returns them).
    pub pattern: Pattern,
    pub vars: Vec<String>,
    pub within: Option<ast::Expr>,
    /// `EMIT TIMEOUTS` after WITHIN: attempts that time out are reported too.
    pub timeouts: bool,
    /// SUBSET name = (vars), as variable bit sets.
    pub subsets: Vec<(String, u64)>,
    pub defines: Vec<(usize, ast::Expr)>,
}

fn syntax(message: impl Into<String>) -> Error {
    Error::user(sqlstate::SYNTAX_ERROR, message.into())
}

fn unsupported(message: impl Into<String>) -> Error {
    Error::user(sqlstate::FEATURE_NOT_SUPPORTED, message.into())
}

/// Parses a MATCH_RECOGNIZE body (the text between its parentheses).
pub fn parse_clause(body: &str) -> Result<Clause> {
    // The pattern is parsed here; the rest by sqlparser with the pattern blanked out.
    let toks = lex(body);
    let at = toks
        .iter()
        .position(|t| is_word(body, t, "PATTERN"))
        .filter(|i| toks.get(i + 1).is_some_and(|t| t.kind == Kind::Open))
        .ok_or_else(|| syntax("MATCH_RECOGNIZE needs a PATTERN (...)"))?;
    let close = closing(&toks, at + 1).ok_or_else(|| syntax("PATTERN ( is not closed"))?;
    let pattern_text = &body[toks[at + 1].end..toks[close].start];
    let mut rest = body.to_string();
    rest.replace_range(
        toks[at + 1].end..toks[close].start,
        &" ".repeat(pattern_text.len()),
    );
    let mut vars = Vec::new();
    let pattern = PatternParser::new(pattern_text, &mut vars)?.parse()?;
    let mut clause = parse_rest(&rest, pattern, vars)?;
    check(&mut clause)?;
    Ok(clause)
}

fn parser(text: &str) -> Result<Parser<'static>> {
    static DIALECT: PostgreSqlDialect = PostgreSqlDialect {};
    Parser::new(&DIALECT)
        .try_with_sql(text)
        .map_err(|e| syntax(format!("in MATCH_RECOGNIZE: {e}")))
}

fn parse_rest(text: &str, pattern: Pattern, vars: Vec<String>) -> Result<Clause> {
    let mut p = parser(text)?;
    let err = |e: datafusion::sql::sqlparser::parser::ParserError| {
        syntax(format!("in MATCH_RECOGNIZE: {e}"))
    };
    let partition_by = match p.parse_keywords(&[Keyword::PARTITION, Keyword::BY]) {
        true => p.parse_comma_separated(Parser::parse_expr).map_err(err)?,
        false => Vec::new(),
    };
    let order_by = match p.parse_keywords(&[Keyword::ORDER, Keyword::BY]) {
        true => p
            .parse_comma_separated(Parser::parse_order_by_expr)
            .map_err(err)?,
        false => Vec::new(),
    };
    let measures = match p.parse_keyword(Keyword::MEASURES) {
        true => p
            .parse_comma_separated(|p| {
                let expr = p.parse_expr()?;
                let _ = p.parse_keyword(Keyword::AS);
                Ok((expr, p.parse_identifier()?))
            })
            .map_err(err)?,
        false => Vec::new(),
    };
    let rows = if p.parse_keywords(&[Keyword::ONE, Keyword::ROW, Keyword::PER, Keyword::MATCH]) {
        RowsPerMatch::One
    } else if p.parse_keywords(&[Keyword::ALL, Keyword::ROWS, Keyword::PER, Keyword::MATCH]) {
        if p.parse_keywords(&[Keyword::SHOW, Keyword::EMPTY, Keyword::MATCHES])
            || p.parse_keywords(&[Keyword::WITH, Keyword::UNMATCHED, Keyword::ROWS])
        {
            return Err(unsupported(
                "ALL ROWS PER MATCH SHOW EMPTY MATCHES and WITH UNMATCHED ROWS are not \
                 supported (empty matches output no rows)",
            ));
        }
        let _ = p.parse_keywords(&[Keyword::OMIT, Keyword::EMPTY, Keyword::MATCHES]);
        RowsPerMatch::All
    } else {
        RowsPerMatch::One
    };
    let skip = if p.parse_keywords(&[Keyword::AFTER, Keyword::MATCH, Keyword::SKIP]) {
        if p.parse_keywords(&[Keyword::PAST, Keyword::LAST, Keyword::ROW]) {
            SkipTo::PastLastRow
        } else if p.parse_keywords(&[Keyword::TO, Keyword::NEXT, Keyword::ROW]) {
            SkipTo::ToNextRow
        } else if p.parse_keywords(&[Keyword::TO, Keyword::FIRST]) {
            SkipTo::ToFirst(p.parse_identifier().map_err(err)?)
        } else if p.parse_keywords(&[Keyword::TO, Keyword::LAST]) {
            SkipTo::ToLast(p.parse_identifier().map_err(err)?)
        } else if p.parse_keyword(Keyword::TO) {
            // `SKIP TO var` is `SKIP TO LAST var`.
            SkipTo::ToLast(p.parse_identifier().map_err(err)?)
        } else {
            return Err(syntax(
                "AFTER MATCH SKIP takes PAST LAST ROW, TO NEXT ROW, TO FIRST var or TO LAST var",
            ));
        }
    } else {
        SkipTo::PastLastRow
    };
    if !p.parse_keyword(Keyword::PATTERN) {
        return Err(syntax(format!(
            "in MATCH_RECOGNIZE: expected PATTERN, found {}",
            p.peek_token()
        )));
    }
    p.expect_token(&Token::LParen).map_err(err)?;
    p.expect_token(&Token::RParen).map_err(err)?;
    let (within, timeouts) = match p.parse_keyword(Keyword::WITHIN) {
        true => {
            let within = p.parse_expr().map_err(err)?;
            let timeouts = match parse_word(&mut p, "EMIT") {
                true => match p.next_token().token {
                    Token::Word(w) if w.value.eq_ignore_ascii_case("TIMEOUTS") => true,
                    other => {
                        return Err(syntax(format!(
                            "in MATCH_RECOGNIZE: expected TIMEOUTS after EMIT, found {other}"
                        )));
                    }
                },
                false => false,
            };
            (Some(within), timeouts)
        }
        false => (None, false),
    };
    let mut subsets = Vec::new();
    if parse_word(&mut p, "SUBSET") {
        subsets = p
            .parse_comma_separated(|p| {
                let name = p.parse_identifier()?;
                p.expect_token(&Token::Eq)?;
                p.expect_token(&Token::LParen)?;
                let members = p.parse_comma_separated(Parser::parse_identifier)?;
                p.expect_token(&Token::RParen)?;
                Ok((name, members))
            })
            .map_err(err)?
            .into_iter()
            .map(|(name, members)| {
                let mut set = 0u64;
                for m in members {
                    let v = var_index(&vars, &m.value).ok_or_else(|| {
                        syntax(format!(
                            "SUBSET {name} names \"{}\", which is not a variable of the PATTERN",
                            m.value
                        ))
                    })?;
                    set |= 1 << v;
                }
                Ok((name.value.to_ascii_lowercase(), set))
            })
            .collect::<Result<Vec<_>>>()?;
    }
    let mut defines = Vec::new();
    if p.parse_keyword(Keyword::DEFINE) {
        for (name, expr) in p
            .parse_comma_separated(|p| {
                let name = p.parse_identifier()?;
                p.expect_keyword_is(Keyword::AS)?;
                Ok((name, p.parse_expr()?))
            })
            .map_err(err)?
        {
            let v = var_index(&vars, &name.value).ok_or_else(|| {
                syntax(format!(
                    "DEFINE {} names a variable that is not in the PATTERN",
                    name.value
                ))
            })?;
            if defines.iter().any(|(d, _)| *d == v) {
                return Err(syntax(format!("DEFINE {} is given twice", name.value)));
            }
            defines.push((v, expr));
        }
    }
    if p.peek_token().token != Token::EOF {
        return Err(syntax(format!(
            "in MATCH_RECOGNIZE: unexpected {} (clauses go in the order PARTITION BY, ORDER BY, \
             MEASURES, ROWS PER MATCH, AFTER MATCH SKIP, PATTERN, WITHIN, SUBSET, DEFINE)",
            p.peek_token()
        )));
    }
    Ok(Clause {
        partition_by,
        order_by,
        measures,
        rows,
        skip,
        pattern,
        vars,
        within,
        timeouts,
        subsets,
        defines,
    })
}

/// Consumes the next token if it is the (unquoted) word `w`.
fn parse_word(p: &mut Parser<'_>, w: &str) -> bool {
    match &p.peek_token().token {
        Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w) => {
            p.next_token();
            true
        }
        _ => false,
    }
}

/// A variable's number: names compare as SQL identifiers (unquoted ones case-insensitively,
/// as they are folded to lower case).
pub fn var_index(vars: &[String], name: &str) -> Option<usize> {
    vars.iter().position(|v| v.eq_ignore_ascii_case(name))
}

fn check(clause: &mut Clause) -> Result<()> {
    if clause.order_by.is_empty() {
        return Err(syntax(
            "MATCH_RECOGNIZE needs ORDER BY the event time (rows are matched in time order)",
        ));
    }
    for (name, _) in &clause.subsets {
        if var_index(&clause.vars, name).is_some() {
            return Err(syntax(format!(
                "SUBSET {name} has the name of a PATTERN variable"
            )));
        }
    }
    let skip_var = match &clause.skip {
        SkipTo::ToFirst(v) | SkipTo::ToLast(v) => Some(v),
        _ => None,
    };
    if let Some(v) = skip_var
        && var_index(&clause.vars, &v.value).is_none()
        && !clause
            .subsets
            .iter()
            .any(|(s, _)| s.eq_ignore_ascii_case(&v.value))
    {
        return Err(syntax(format!(
            "AFTER MATCH SKIP TO {} names no PATTERN variable or SUBSET",
            v.value
        )));
    }
    if clause.vars.len() > 63 {
        return Err(unsupported("a PATTERN may have at most 63 variables"));
    }
    Ok(())
}

/// The pattern grammar: alternation of concatenations of quantified primaries.
struct PatternParser<'a> {
    text: &'a str,
    at: usize,
    vars: &'a mut Vec<String>,
    depth: usize,
}

impl<'a> PatternParser<'a> {
    fn new(text: &'a str, vars: &'a mut Vec<String>) -> Result<Self> {
        Ok(Self {
            text,
            at: 0,
            vars,
            depth: 0,
        })
    }

    fn parse(mut self) -> Result<Pattern> {
        let p = self.alternation()?;
        self.space();
        if self.at < self.text.len() {
            return Err(self.error("unexpected"));
        }
        Ok(p)
    }

    fn error(&self, what: &str) -> Error {
        let near: String = self.text[self.at..].chars().take(12).collect();
        match near.is_empty() {
            true => syntax(format!("in PATTERN: {what} end of pattern")),
            false => syntax(format!("in PATTERN: {what} \"{near}\"")),
        }
    }

    fn space(&mut self) {
        while self.text[self.at..].starts_with(char::is_whitespace) {
            self.at += self.text[self.at..]
                .chars()
                .next()
                .map_or(1, char::len_utf8);
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.space();
        self.text[self.at..].chars().next()
    }

    fn eat(&mut self, s: &str) -> bool {
        self.space();
        if self.text[self.at..].starts_with(s) {
            self.at += s.len();
            true
        } else {
            false
        }
    }

    fn alternation(&mut self) -> Result<Pattern> {
        self.depth += 1;
        if self.depth > 64 {
            return Err(syntax("PATTERN is nested too deeply"));
        }
        let mut items = vec![self.concatenation()?];
        while self.eat("|") {
            items.push(self.concatenation()?);
        }
        self.depth -= 1;
        Ok(match items.len() {
            1 => items.pop().expect("one item"),
            _ => Pattern::Alt(items),
        })
    }

    fn concatenation(&mut self) -> Result<Pattern> {
        let mut items = Vec::new();
        while !matches!(self.peek(), None | Some('|') | Some(')') | Some(',')) {
            if self.text[self.at..].starts_with("-}") {
                break;
            }
            items.push(self.quantified()?);
        }
        Ok(match items.len() {
            1 => items.pop().expect("one item"),
            _ => Pattern::Concat(items),
        })
    }

    fn number(&mut self) -> Option<u32> {
        self.space();
        let digits: String = self.text[self.at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if digits.is_empty() {
            return None;
        }
        self.at += digits.len();
        digits.parse().ok()
    }

    fn quantified(&mut self) -> Result<Pattern> {
        let mut p = self.primary()?;
        loop {
            let (min, max) = if self.eat("*") {
                (0, None)
            } else if self.eat("+") {
                (1, None)
            } else if self.eat("?") {
                (0, Some(1))
            } else if self.text[self.at..].trim_start().starts_with('{')
                && !self.text[self.at..].trim_start().starts_with("{-")
            {
                self.eat("{");
                let min = self.number();
                let max = if self.eat(",") {
                    self.number()
                } else {
                    Some(min.ok_or_else(|| self.error("expected a number at"))?)
                };
                if !self.eat("}") {
                    return Err(self.error("expected } at"));
                }
                let min = min.unwrap_or(0);
                if max.is_some_and(|m| m < min) {
                    return Err(syntax(format!(
                        "in PATTERN: quantifier {{{min},{}}} has its maximum below its minimum",
                        max.unwrap_or(0)
                    )));
                }
                (min, max)
            } else {
                return Ok(p);
            };
            // A `?` right after a quantifier makes it reluctant.
            let greedy = !self.text[self.at..].starts_with('?');
            if !greedy {
                self.at += 1;
            }
            p = Pattern::Repeat {
                inner: Box::new(p),
                min,
                max,
                greedy,
            };
        }
    }

    fn primary(&mut self) -> Result<Pattern> {
        if self.eat("(") {
            let p = match self.peek() {
                Some(')') => Pattern::Concat(Vec::new()),
                _ => self.alternation()?,
            };
            if !self.eat(")") {
                return Err(self.error("expected ) at"));
            }
            return Ok(p);
        }
        if self.eat("{-") {
            let p = self.alternation()?;
            if !self.eat("-}") {
                return Err(self.error("expected -} at"));
            }
            return Ok(Pattern::Exclude(Box::new(p)));
        }
        if self.eat("^") {
            return Ok(Pattern::Start);
        }
        if self.eat("$") {
            return Ok(Pattern::End);
        }
        let name = self.identifier()?;
        if name.eq_ignore_ascii_case("PERMUTE") && self.eat("(") {
            let mut items = vec![self.alternation()?];
            while self.eat(",") {
                items.push(self.alternation()?);
            }
            if !self.eat(")") {
                return Err(self.error("expected ) at"));
            }
            return Pattern::permute(items);
        }
        let var = match var_index(self.vars, &name) {
            Some(v) => v,
            None => {
                self.vars.push(name);
                self.vars.len() - 1
            }
        };
        Ok(Pattern::Var(var as u16))
    }

    fn identifier(&mut self) -> Result<String> {
        self.space();
        let rest = &self.text[self.at..];
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted
                .find('"')
                .ok_or_else(|| self.error("unterminated name at"))?;
            self.at += end + 2;
            return Ok(quoted[..end].to_string());
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(self.error("expected a pattern variable at"));
        }
        self.at += name.len();
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_and_restore_round_trip() {
        let sql = "SELECT * FROM bids MATCH_RECOGNIZE (PARTITION BY auction ORDER BY ts \
                   PATTERN (A B+? C) DEFINE B AS B.price > PREV(B.price)) AS m WHERE x = ')'";
        let out = rewrite(sql).unwrap().unwrap();
        assert!(
            out.starts_with("SELECT * FROM __eddy_match_recognize('bids', "),
            "{out}"
        );
        assert!(out.ends_with(") AS m WHERE x = ')'"), "{out}");
        assert_eq!(restore(&out), sql);
        // A subquery with an alias, and a qualified name.
        let sql = "SELECT * FROM (SELECT * FROM t WHERE s = '(') q MATCH_RECOGNIZE (ORDER BY ts \
                   PATTERN (A) DEFINE A AS true) m";
        let out = rewrite(sql).unwrap().unwrap();
        assert!(
            out.starts_with(
                "SELECT * FROM __eddy_match_recognize('(SELECT * FROM t WHERE s = ''('') q'"
            ),
            "{out}"
        );
        assert_eq!(restore(&out), sql);
        assert!(rewrite("SELECT 1").unwrap().is_none());
    }

    #[test]
    fn clause_parses_every_part() {
        let c = parse_clause(
            "PARTITION BY auction ORDER BY date_time MEASURES FIRST(A.date_time) AS started, \
             LAST(B.price) AS peak, COUNT(B.price) rises ONE ROW PER MATCH AFTER MATCH SKIP \
             TO LAST b PATTERN (^ A {- B{2,}? -} (C | D)* PERMUTE(E, F) $) WITHIN INTERVAL '10' \
             SECOND EMIT TIMEOUTS SUBSET BC = (B, C) DEFINE B AS B.price > PREV(B.price), C AS \
             C.price < PREV(C.price)",
        )
        .unwrap();
        assert_eq!(c.vars, ["A", "B", "C", "D", "E", "F"]);
        assert_eq!(c.measures.len(), 3);
        assert_eq!(c.skip, SkipTo::ToLast(Ident::new("b")));
        assert!(c.timeouts && c.within.is_some());
        assert_eq!(c.subsets, vec![("bc".to_string(), 0b110)]);
        let Pattern::Concat(items) = &c.pattern else {
            panic!("{:?}", c.pattern)
        };
        assert_eq!(items[0], Pattern::Start);
        assert_eq!(
            items[2],
            Pattern::Exclude(Box::new(Pattern::Repeat {
                inner: Box::new(Pattern::Var(1)),
                min: 2,
                max: None,
                greedy: false
            }))
        );
        assert!(matches!(&items[4], Pattern::Alt(a) if a.len() == 2));
        assert_eq!(items[5], Pattern::End);
    }

    #[test]
    fn clause_errors_name_the_problem() {
        let e = |body: &str| parse_clause(body).unwrap_err().to_string();
        assert!(e("PATTERN (A) DEFINE A AS true").contains("ORDER BY"));
        assert!(e("ORDER BY ts PATTERN (A) DEFINE B AS true").contains("DEFINE B names"));
        assert!(e("ORDER BY ts PATTERN (A{3,1}) DEFINE A AS true").contains("maximum"));
        assert!(
            e("ORDER BY ts PATTERN (A) WITHIN INTERVAL '1' SECOND EMIT ROWS").contains("TIMEOUTS")
        );
    }
}
