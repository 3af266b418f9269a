//! `COPY table [(columns)] FROM STDIN` in PostgreSQL's text and CSV formats, as psql's
//! `\copy` and the drivers' copy APIs send it.
//!
//! The data arrives in chunks (CopyData messages) that split rows anywhere; complete rows are
//! parsed as they arrive and written in batches into the session's transaction, so a large
//! COPY never holds its whole input. The rows commit together at the end (all or nothing) —
//! or with the enclosing transaction block.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::common::DFSchema;
use datafusion::execution::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::sqlparser::ast::{self, CopyOption, CopySource, CopyTarget};

use super::session::Session;
use crate::catalog::{Relation, TableDef, TableKind};
use crate::error::{Error, Result, sqlstate};
use crate::types::SqlType;

/// Rows parsed before they are written as one batch.
const BATCH_ROWS: usize = 8192;

#[derive(Debug, Clone, PartialEq)]
enum Format {
    /// Tab-separated (by default), `\N` for NULL, backslash escapes.
    Text { delimiter: char, null: String },
    Csv {
        delimiter: char,
        quote: char,
        escape: char,
        null: String,
        header: bool,
    },
}

/// A COPY FROM STDIN in progress.
pub struct CopyIn {
    def: Arc<TableDef>,
    /// The table columns the data's fields go to, in order.
    columns: Vec<usize>,
    format: Format,
    /// Bytes received that do not yet end a row.
    pending: Vec<u8>,
    /// Parsed rows not yet written (field texts; `None` is NULL), and their line numbers.
    rows: Vec<Vec<Option<String>>>,
    row_lines: Vec<usize>,
    /// Lines read so far (for error messages and the header).
    line: usize,
    written: usize,
}

impl CopyIn {
    pub fn columns(&self) -> usize {
        self.columns.len()
    }
}

/// Starts `COPY … FROM STDIN`: checks the target and options.
pub fn start(session: &Session, statement: &ast::Statement) -> Result<CopyIn> {
    let ast::Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        ..
    } = statement
    else {
        return Err(Error::internal("not a COPY"));
    };
    if *to {
        return Err(Error::not_supported("COPY … TO (copy out)"));
    }
    if !matches!(target, CopyTarget::Stdin) {
        return Err(Error::user(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "COPY from a file is not allowed: use COPY … FROM STDIN (psql's \\copy)",
        ));
    }
    let CopySource::Table {
        table_name,
        columns,
    } = source
    else {
        return Err(Error::not_supported("COPY (query) FROM"));
    };
    let Some((_, name, Relation::Table(def))) = session.resolve(table_name)? else {
        return Err(Error::undefined_table(
            super::ddl::name_parts(table_name).pop().unwrap_or_default(),
        ));
    };
    if def.kind != TableKind::Table {
        return Err(Error::not_supported(format!(
            "COPY into {} \"{name}\" (COPY goes into tables)",
            def.kind.describe()
        )));
    }
    let columns = if columns.is_empty() {
        (0..def.columns.len()).collect()
    } else {
        columns
            .iter()
            .map(|c| {
                let n = super::ddl::ident(c);
                def.column_index(&n).ok_or_else(|| {
                    Error::user(
                        sqlstate::UNDEFINED_COLUMN,
                        format!("column \"{n}\" of relation \"{name}\" does not exist"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    if !legacy_options.is_empty() {
        let csv = legacy_options.iter().all(|o| {
            matches!(
                o,
                ast::CopyLegacyOption::Csv(_) | ast::CopyLegacyOption::Header
            )
        });
        if !csv {
            return Err(Error::not_supported("these COPY options"));
        }
    }
    let mut csv = legacy_options
        .iter()
        .any(|o| matches!(o, ast::CopyLegacyOption::Csv(_)));
    let mut header = legacy_options
        .iter()
        .any(|o| matches!(o, ast::CopyLegacyOption::Header));
    let (mut delimiter, mut quote, mut escape, mut null) = (None, '"', None, None);
    for o in options {
        match o {
            CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                "csv" => csv = true,
                "text" => csv = false,
                "binary" => return Err(Error::not_supported("COPY … (FORMAT binary)")),
                other => {
                    return Err(Error::user(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("COPY format \"{other}\" not recognized"),
                    ));
                }
            },
            CopyOption::Delimiter(c) => delimiter = Some(*c),
            CopyOption::Null(s) => null = Some(s.clone()),
            CopyOption::Header(h) => header = *h,
            CopyOption::Quote(c) => quote = *c,
            CopyOption::Escape(c) => escape = Some(*c),
            CopyOption::Encoding(e)
                if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            CopyOption::Freeze(_) => {}
            other => return Err(Error::not_supported(format!("COPY option {other}"))),
        }
    }
    let format = if csv {
        Format::Csv {
            delimiter: delimiter.unwrap_or(','),
            quote,
            escape: escape.unwrap_or(quote),
            null: null.unwrap_or_default(),
            header,
        }
    } else {
        if header {
            return Err(Error::user(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "cannot specify HEADER in TEXT mode",
            ));
        }
        Format::Text {
            delimiter: delimiter.unwrap_or('\t'),
            null: null.unwrap_or_else(|| "\\N".to_string()),
        }
    };
    Ok(CopyIn {
        def,
        columns,
        format,
        pending: Vec::new(),
        rows: Vec::new(),
        row_lines: Vec::new(),
        line: 0,
        written: 0,
    })
}

impl CopyIn {
    /// Takes a chunk of data; writes complete batches.
    pub fn data(&mut self, session: &Session, bytes: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(end) = self.record_end(start) {
            let record = self.pending[start..end].to_vec();
            start = end + 1;
            self.take_record(&record)?;
            if self.rows.len() >= BATCH_ROWS {
                self.flush(session)?;
            }
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// The end of the data: the last row, then the count of rows written.
    pub fn finish(mut self, session: &Session) -> Result<usize> {
        if !self.pending.is_empty() {
            let mut record = std::mem::take(&mut self.pending);
            if record.last() == Some(&b'\r') {
                record.pop();
            }
            self.take_record(&record)?;
        }
        self.flush(session)?;
        Ok(self.written)
    }

    /// Where the record starting at `from` ends (its newline), if it has arrived: in CSV a
    /// quoted field may hold newlines.
    fn record_end(&self, from: usize) -> Option<usize> {
        let quote = match &self.format {
            Format::Csv { quote, .. } => Some(*quote as u8),
            Format::Text { .. } => None,
        };
        let mut quoted = false;
        for (i, &b) in self.pending[from..].iter().enumerate() {
            if Some(b) == quote {
                quoted = !quoted;
            } else if b == b'\n' && !quoted {
                return Some(from + i);
            }
        }
        None
    }

    fn take_record(&mut self, record: &[u8]) -> Result<()> {
        self.line += 1;
        let mut text = std::str::from_utf8(record).map_err(|_| {
            Error::user(
                "22021",
                format!(
                    "invalid byte sequence for encoding \"UTF8\" (COPY line {})",
                    self.line
                ),
            )
        })?;
        if let Some(t) = text.strip_suffix('\r') {
            text = t;
        }
        let fields = match &self.format {
            Format::Text { delimiter, null } => {
                if text == "\\." {
                    return Ok(()); // the old end-of-data marker
                }
                text_fields(text, *delimiter, null)
            }
            Format::Csv {
                delimiter,
                quote,
                escape,
                null,
                header,
            } => {
                if *header && self.line == 1 {
                    return Ok(());
                }
                if text == "\\." {
                    return Ok(());
                }
                csv_fields(text, *delimiter, *quote, *escape, null)
            }
        };
        if fields.len() != self.columns.len() {
            let what = if fields.len() < self.columns.len() {
                "missing data for column"
            } else {
                "extra data after last expected column"
            };
            return Err(Error::user(
                sqlstate::BAD_COPY_FORMAT,
                match fields.len() < self.columns.len() {
                    true => format!(
                        "{what} \"{}\"",
                        self.def.columns[self.columns[fields.len()]].name
                    ),
                    false => what.to_string(),
                },
            )
            .with_detail(format!("COPY {}, line {}", self.def.name, self.line)));
        }
        self.rows.push(fields);
        self.row_lines.push(self.line);
        Ok(())
    }

    /// Writes the parsed rows into the transaction.
    fn flush(&mut self, session: &Session) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let lines = std::mem::take(&mut self.row_lines);
        let n = rows.len();
        let def = &self.def;
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(def.columns.len());
        for (at, column) in def.columns.iter().enumerate() {
            let array = match self.columns.iter().position(|&c| c == at) {
                Some(field) => {
                    let texts: StringArray = rows.iter().map(|r| r[field].as_deref()).collect();
                    match typed(&texts, &column.ty) {
                        Ok(array) => array,
                        Err(e) => {
                            // Name the value and line that failed, as PostgreSQL does.
                            let bad = rows.iter().enumerate().find(|(_, r)| {
                                let one: StringArray = [r[field].as_deref()].into_iter().collect();
                                typed(&one, &column.ty).is_err()
                            });
                            return Err(match bad {
                                Some((i, r)) => {
                                    let value = r[field].clone().unwrap_or_default();
                                    Error::user(
                                        sqlstate::INVALID_TEXT_REPRESENTATION,
                                        format!(
                                            "invalid input syntax for type {}: \"{value}\"",
                                            column.ty.pg_name()
                                        ),
                                    )
                                    .with_detail(format!(
                                        "COPY {}, line {}, column {}: \"{value}\"",
                                        def.name, lines[i], column.name
                                    ))
                                }
                                None => e,
                            });
                        }
                    }
                }
                None => default_values(session, def, at, n)?,
            };
            arrays.push(array);
        }
        self.written += super::dml::insert_rows(session, def, arrays, None)?;
        Ok(())
    }
}

/// Text fields to the column's type, refusing what does not parse (never NULL for it).
fn typed(texts: &StringArray, ty: &SqlType) -> Result<ArrayRef> {
    let array: ArrayRef = Arc::new(texts.clone());
    match ty {
        // bytea, jsonb and uuid are read from text by the writer, as INSERT reads them.
        SqlType::Bytea | SqlType::Jsonb | SqlType::Uuid | SqlType::Text | SqlType::Varchar(_) => {
            return Ok(array);
        }
        SqlType::Bool => {
            let values = texts
                .iter()
                .map(|v| v.map(parse_bool).transpose())
                .collect::<Result<Vec<Option<bool>>>>()?;
            return Ok(Arc::new(datafusion::arrow::array::BooleanArray::from(
                values,
            )));
        }
        _ => {}
    }
    strict_cast(&array, &ty.arrow_type()).map_err(|e| {
        Error::user(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!("invalid input syntax for type {}: {e}", ty.pg_name()),
        )
    })
}

/// A cast that fails on a value it cannot convert (instead of making it NULL).
pub(super) fn strict_cast(
    array: &ArrayRef,
    target: &datafusion::arrow::datatypes::DataType,
) -> std::result::Result<ArrayRef, datafusion::arrow::error::ArrowError> {
    cast_with_options(
        array,
        target,
        &CastOptions {
            safe: false,
            ..Default::default()
        },
    )
}

fn parse_bool(s: &str) -> Result<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Ok(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Ok(false),
        _ => Err(Error::user(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!("invalid input syntax for type boolean: \"{s}\""),
        )),
    }
}

/// A column's default for `n` rows (volatile defaults, `nextval`, are evaluated per row), or
/// NULLs: what COPY gives the columns it does not fill and ADD COLUMN gives existing rows.
pub(super) fn default_values(
    session: &Session,
    def: &TableDef,
    at: usize,
    n: usize,
) -> Result<ArrayRef> {
    let expr = session.view().column_default(def, at)?;
    evaluate_default(
        &session.ctx().state(),
        expr.as_ref(),
        &def.columns[at].ty,
        n,
    )
}

/// `n` rows of a column default (NULLs for none), as the column's type.
pub(super) fn evaluate_default(
    state: &SessionState,
    expr: Option<&Expr>,
    ty: &SqlType,
    n: usize,
) -> Result<ArrayRef> {
    let ty = ty.arrow_type();
    let Some(expr) = expr else {
        return Ok(new_null_array(&ty, n));
    };
    let values = evaluate_standalone(state, expr.clone(), n)?;
    Ok(datafusion::arrow::compute::cast(&values, &ty)?)
}

/// `n` rows of an expression that reads no columns (see [`standalone_expr`]).
pub(super) fn evaluate_standalone(state: &SessionState, expr: Expr, n: usize) -> Result<ArrayRef> {
    let physical = standalone_expr(state, expr)?;
    let batch = RecordBatch::try_new_with_options(
        Arc::new(datafusion::arrow::datatypes::Schema::empty()),
        vec![],
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
    )?;
    Ok(physical.evaluate(&batch)?.into_array(n)?)
}

/// An expression that reads no columns, ready to evaluate now: simplified first, as the
/// optimizer would (`now()` becomes the time `state` was taken at, the statement's; it
/// cannot run unsimplified).
pub(super) fn standalone_expr(state: &SessionState, expr: Expr) -> Result<Arc<dyn PhysicalExpr>> {
    use datafusion::logical_expr::simplify::SimplifyContext;
    use datafusion::optimizer::simplify_expressions::ExprSimplifier;
    let schema = Arc::new(DFSchema::empty());
    let context = SimplifyContext::builder()
        .with_schema(schema.clone())
        .with_config_options(Arc::clone(state.config_options()))
        .with_query_execution_start_time(state.execution_props().query_execution_start_time)
        .build();
    let simplifier = ExprSimplifier::new(context);
    let expr = simplifier.simplify(simplifier.coerce(expr, &schema)?)?;
    Ok(state.create_physical_expr(expr, &schema)?)
}

/// PostgreSQL's text format: fields split at the delimiter, `null` (`\N`) is NULL, and
/// backslash escapes (`\t`, `\n`, `\\`, octal, `\x` hex) stand for their characters.
fn text_fields(line: &str, delimiter: char, null: &str) -> Vec<Option<String>> {
    let mut fields = Vec::new();
    let mut raw = String::new();
    let mut chars = line.chars().peekable();
    let mut field_raw = String::new();
    let finish = |raw: &mut String, field_raw: &mut String, fields: &mut Vec<Option<String>>| {
        if field_raw == null {
            fields.push(None);
        } else {
            fields.push(Some(std::mem::take(raw)));
        }
        raw.clear();
        field_raw.clear();
    };
    while let Some(c) = chars.next() {
        if c == delimiter {
            finish(&mut raw, &mut field_raw, &mut fields);
            continue;
        }
        field_raw.push(c);
        if c != '\\' {
            raw.push(c);
            continue;
        }
        let Some(e) = chars.next() else {
            break;
        };
        field_raw.push(e);
        match e {
            'b' => raw.push('\u{8}'),
            'f' => raw.push('\u{c}'),
            'n' => raw.push('\n'),
            'r' => raw.push('\r'),
            't' => raw.push('\t'),
            'v' => raw.push('\u{b}'),
            'x' => {
                let mut hex = String::new();
                while hex.len() < 2 && chars.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                    let h = chars.next().expect("peeked");
                    field_raw.push(h);
                    hex.push(h);
                }
                match u8::from_str_radix(&hex, 16) {
                    Ok(b) => raw.push(b as char),
                    Err(_) => raw.push('x'),
                }
            }
            '0'..='7' => {
                let mut oct = e.to_string();
                while oct.len() < 3 && chars.peek().is_some_and(|c| ('0'..='7').contains(c)) {
                    let o = chars.next().expect("peeked");
                    field_raw.push(o);
                    oct.push(o);
                }
                raw.push(u8::from_str_radix(&oct, 8).unwrap_or(0) as char);
            }
            other => raw.push(other),
        }
    }
    finish(&mut raw, &mut field_raw, &mut fields);
    fields
}

/// PostgreSQL's CSV: quoted fields may hold the delimiter, newlines and doubled (escaped)
/// quotes; an unquoted field equal to `null` (empty by default) is NULL, a quoted one never.
fn csv_fields(
    line: &str,
    delimiter: char,
    quote: char,
    escape: char,
    null: &str,
) -> Vec<Option<String>> {
    let mut fields = Vec::new();
    let mut value = String::new();
    let mut quoted_field = false;
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_quotes {
            // An escaped quote (doubled, by default) is one quote; a single one closes.
            if c == escape && chars.peek() == Some(&quote) {
                chars.next();
                value.push(quote);
                continue;
            }
            if c == quote {
                in_quotes = false;
                continue;
            }
            value.push(c);
            continue;
        }
        if c == quote {
            in_quotes = true;
            quoted_field = true;
            continue;
        }
        if c == delimiter {
            fields.push(csv_value(std::mem::take(&mut value), quoted_field, null));
            quoted_field = false;
            continue;
        }
        value.push(c);
    }
    fields.push(csv_value(value, quoted_field, null));
    fields
}

fn csv_value(value: String, quoted: bool, null: &str) -> Option<String> {
    (quoted || value != null).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_fields_escapes_and_null() {
        assert_eq!(
            text_fields("1\ta\\tb\t\\N\tx\\\\y", '\t', "\\N"),
            vec![
                Some("1".into()),
                Some("a\tb".into()),
                None,
                Some("x\\y".into())
            ]
        );
        assert_eq!(text_fields("", '\t', "\\N"), vec![Some(String::new())]);
    }

    #[test]
    fn csv_quotes_delimiters_and_nulls() {
        assert_eq!(
            csv_fields(r#"1,"a,b","say ""hi""",,"""#, ',', '"', '"', ""),
            vec![
                Some("1".into()),
                Some("a,b".into()),
                Some(r#"say "hi""#.into()),
                None,
                Some(String::new())
            ]
        );
        assert_eq!(
            csv_fields("1;NULL;x", ';', '"', '"', "NULL"),
            vec![Some("1".into()), None, Some("x".into())]
        );
    }
}
