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
use datafusion::arrow::datatypes::FieldRef;
use datafusion::common::DFSchema;
use datafusion::common::ScalarValue;
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

/// The data format of a COPY, with its options.
#[derive(Debug, Clone, PartialEq)]
pub enum CopyFormat {
    /// Tab-separated (by default), `\N` for NULL, backslash escapes.
    Text {
        delimiter: char,
        null: String,
        header: bool,
    },
    Csv {
        delimiter: char,
        quote: char,
        escape: char,
        null: String,
        header: bool,
        /// Output columns quoted even when they need not be (`FORCE_QUOTE`).
        force_quote: Vec<String>,
    },
    /// PostgreSQL's binary COPY format (`PGCOPY` header, fields in the types' binary forms).
    Binary,
}

/// A COPY FROM STDIN in progress.
pub struct CopyIn {
    def: Arc<TableDef>,
    /// The table columns the data's fields go to, in order.
    columns: Vec<usize>,
    format: CopyFormat,
    /// Bytes received that do not yet end a row.
    pending: Vec<u8>,
    /// Parsed rows not yet written (field texts; `None` is NULL), and their line numbers.
    rows: Vec<Vec<Option<String>>>,
    row_lines: Vec<usize>,
    /// Lines (binary: tuples) read so far (for error messages and the header).
    line: usize,
    written: usize,
    /// Binary format: the header was read; the end marker was read; decoded values not
    /// yet written, per data column.
    binary_header: bool,
    binary_ended: bool,
    values: Vec<Vec<Option<ScalarValue>>>,
    /// Into a push source: rows are appended to its event log as they are written (outside
    /// the transaction, as INSERT into a source), and a row that does not fit goes to its
    /// dead-letter table with its line instead of failing the COPY. The raw lines of the
    /// rows not yet written, and the rows refused so far.
    events: bool,
    raw: Vec<Vec<u8>>,
    dead: Vec<eddy_connectors::DeadLetter>,
}

/// Decodes one field of binary COPY data in the PostgreSQL binary form of the type the
/// field (a target column, with its PostgreSQL type in the metadata) has.
pub type BinaryDecoder<'a> = &'a dyn Fn(&[u8], &FieldRef) -> Result<ScalarValue>;

/// The first bytes of binary COPY data.
const BINARY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

impl CopyIn {
    pub fn columns(&self) -> usize {
        self.columns.len()
    }

    pub fn is_binary(&self) -> bool {
        self.format == CopyFormat::Binary
    }
}

/// The parts of a COPY statement: its direction, what it copies and how.
struct CopyParts<'a> {
    to: bool,
    source: &'a CopySource,
    format: CopyFormat,
}

fn copy_parts(statement: &ast::Statement) -> Result<CopyParts<'_>> {
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
    match (target, *to) {
        (CopyTarget::Stdin, false) | (CopyTarget::Stdout, true) => {}
        (_, false) => {
            return Err(Error::user(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "COPY from a file is not allowed: use COPY … FROM STDIN (psql's \\copy)",
            ));
        }
        (_, true) => {
            return Err(Error::user(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "COPY to a file is not allowed: use COPY … TO STDOUT (psql's \\copy)",
            ));
        }
    }
    Ok(CopyParts {
        to: *to,
        source,
        format: copy_format(options, legacy_options)?,
    })
}

/// The format from `WITH (FORMAT csv, HEADER, …)` or the old `CSV HEADER …` options.
fn copy_format(options: &[CopyOption], legacy: &[ast::CopyLegacyOption]) -> Result<CopyFormat> {
    use ast::{CopyLegacyCsvOption as CsvOption, CopyLegacyOption as Legacy};
    let (mut csv, mut binary, mut header) = (false, false, false);
    let (mut delimiter, mut quote, mut escape, mut null) = (None, None, None, None);
    let mut force_quote = Vec::new();
    let names = |columns: &[ast::Ident]| -> Vec<String> {
        columns.iter().map(super::ddl::ident).collect::<Vec<_>>()
    };
    for o in legacy {
        match o {
            Legacy::Binary => binary = true,
            Legacy::Header => header = true,
            Legacy::Delimiter(c) => delimiter = Some(*c),
            Legacy::Null(s) => null = Some(s.clone()),
            Legacy::Csv(csv_options) => {
                csv = true;
                for c in csv_options {
                    match c {
                        CsvOption::Header => header = true,
                        CsvOption::Quote(c) => quote = Some(*c),
                        CsvOption::Escape(c) => escape = Some(*c),
                        CsvOption::ForceQuote(columns) => force_quote.extend(names(columns)),
                        CsvOption::ForceNotNull(_) => {
                            return Err(Error::not_supported("COPY option FORCE NOT NULL"));
                        }
                    }
                }
            }
            other => return Err(Error::not_supported(format!("COPY option {other}"))),
        }
    }
    for o in options {
        match o {
            CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                "csv" => (csv, binary) = (true, false),
                "text" => (csv, binary) = (false, false),
                "binary" => (csv, binary) = (false, true),
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
            CopyOption::Quote(c) => quote = Some(*c),
            CopyOption::Escape(c) => escape = Some(*c),
            CopyOption::ForceQuote(columns) => force_quote.extend(names(columns)),
            CopyOption::Encoding(e)
                if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            CopyOption::Freeze(_) => {}
            other => return Err(Error::not_supported(format!("COPY option {other}"))),
        }
    }
    let only_csv = |what: &str| {
        Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("COPY {what} requires CSV mode"),
        )
    };
    if !csv {
        if quote.is_some() {
            return Err(only_csv("quote"));
        }
        if escape.is_some() {
            return Err(only_csv("escape"));
        }
        if !force_quote.is_empty() {
            return Err(only_csv("force quote"));
        }
    }
    if binary {
        let cannot = |what: &str| {
            Error::user(
                sqlstate::SYNTAX_ERROR,
                format!("cannot specify {what} in BINARY mode"),
            )
        };
        if delimiter.is_some() {
            return Err(cannot("DELIMITER"));
        }
        if null.is_some() {
            return Err(cannot("NULL"));
        }
        if header {
            return Err(cannot("HEADER"));
        }
        return Ok(CopyFormat::Binary);
    }
    if csv {
        let quote = quote.unwrap_or('"');
        Ok(CopyFormat::Csv {
            delimiter: delimiter.unwrap_or(','),
            quote,
            escape: escape.unwrap_or(quote),
            null: null.unwrap_or_default(),
            header,
            force_quote,
        })
    } else {
        Ok(CopyFormat::Text {
            delimiter: delimiter.unwrap_or('\t'),
            null: null.unwrap_or_else(|| "\\N".to_string()),
            header,
        })
    }
}

/// Starts `COPY … FROM STDIN`: checks the target and options.
pub fn start(session: &Session, statement: &ast::Statement) -> Result<CopyIn> {
    let CopyParts { to, source, format } = copy_parts(statement)?;
    if to {
        return Err(Error::internal("COPY TO is not a COPY FROM"));
    }
    let CopySource::Table {
        table_name,
        columns,
    } = source
    else {
        return Err(Error::user(
            sqlstate::SYNTAX_ERROR,
            "COPY (query) FROM is not possible: a query can only be copied TO",
        ));
    };
    let Some((_, name, Relation::Table(def))) = session.resolve(table_name)? else {
        return Err(Error::undefined_table(
            super::ddl::name_parts(table_name).pop().unwrap_or_default(),
        ));
    };
    let events = match &def.kind {
        TableKind::Table => false,
        TableKind::Source(info) if info.connector.is_none() => true,
        TableKind::Source(info) => {
            return Err(Error::user(
                sqlstate::WRONG_OBJECT_TYPE,
                format!(
                    "cannot copy into source \"{name}\": it reads from {}",
                    info.connector.as_deref().unwrap_or_default()
                ),
            )
            .with_detail("Only sources created without a connector accept COPY."));
        }
        other => {
            return Err(Error::user(
                sqlstate::WRONG_OBJECT_TYPE,
                format!(
                    "cannot copy into {} \"{name}\": COPY goes into tables and push sources",
                    other.describe()
                ),
            ));
        }
    };
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
    let values = vec![Vec::new(); columns.len()];
    Ok(CopyIn {
        def,
        columns,
        format,
        pending: Vec::new(),
        rows: Vec::new(),
        row_lines: Vec::new(),
        line: 0,
        written: 0,
        binary_header: false,
        binary_ended: false,
        values,
        events,
        raw: Vec::new(),
        dead: Vec::new(),
    })
}

/// `COPY table [(columns)] TO STDOUT` and `COPY (query) TO STDOUT`: the query whose rows
/// are copied out, and the format.
/// The table it names, if any (for error messages).
pub fn copy_out_query(statement: &ast::Statement) -> Result<(String, CopyFormat, Option<String>)> {
    let CopyParts { to, source, format } = copy_parts(statement)?;
    if !to {
        return Err(Error::internal("COPY FROM is not a COPY TO"));
    }
    let mut table = None;
    let query = match source {
        CopySource::Query(query) => query.to_string(),
        CopySource::Table {
            table_name,
            columns,
        } => {
            let columns = if columns.is_empty() {
                "*".to_string()
            } else {
                columns
                    .iter()
                    .map(|c| format!("\"{}\"", super::ddl::ident(c).replace('"', "\"\"")))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            table = super::ddl::name_parts(table_name).pop();
            format!("SELECT {columns} FROM {table_name}")
        }
    };
    Ok((query, format, table))
}

impl CopyIn {
    /// Takes a chunk of data; writes complete batches.
    pub fn data(
        &mut self,
        session: &Session,
        bytes: &[u8],
        decode: BinaryDecoder<'_>,
    ) -> Result<()> {
        if self.is_binary() {
            return self.binary_data(session, bytes, decode);
        }
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
        if self.is_binary() {
            if !self.pending.is_empty() {
                return Err(bad_copy("unexpected EOF in COPY data"));
            }
            self.flush_binary(session)?;
            return Ok(self.written);
        }
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
            CopyFormat::Csv { quote, .. } => Some(*quote as u8),
            CopyFormat::Text { .. } | CopyFormat::Binary => None,
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
            CopyFormat::Text {
                delimiter,
                null,
                header,
            } => {
                if *header && self.line == 1 {
                    return Ok(());
                }
                if text == "\\." {
                    return Ok(()); // the old end-of-data marker
                }
                text_fields(text, *delimiter, null)
            }
            CopyFormat::Binary => return Err(Error::internal("binary COPY data as text")),
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                header,
                ..
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
        if fields.len() != self.columns.len() && self.events {
            let error = format!(
                "{} fields where {} columns are copied",
                fields.len(),
                self.columns.len()
            );
            self.dead_letter(self.line, record.to_vec(), error);
            return Ok(());
        }
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
        if self.events {
            self.raw.push(record.to_vec());
        }
        Ok(())
    }

    /// A row that does not fit the source: to its dead-letter table, with its line.
    fn dead_letter(&mut self, line: usize, payload: Vec<u8>, error: String) {
        self.dead.push(eddy_connectors::DeadLetter {
            partition: 0,
            offset: line as i64,
            payload,
            error: format!("COPY line {line}: {error}"),
        });
    }

    /// Writes the parsed rows into the transaction.
    fn flush(&mut self, session: &Session) -> Result<()> {
        let mut data = self.typed_columns();
        if self.events && self.refuse_misfits(&data) {
            data = self.typed_columns();
        }
        let rows = std::mem::take(&mut self.rows);
        let lines = std::mem::take(&mut self.row_lines);
        let def = &self.def;
        let mut arrays = Vec::with_capacity(data.len());
        for ((field, &at), typed) in self.columns.iter().enumerate().zip(data) {
            let column = &def.columns[at];
            let Err(e) = typed else {
                arrays.extend(typed);
                continue;
            };
            // Name the value and line that failed, as PostgreSQL does.
            let bad = rows
                .iter()
                .enumerate()
                .find(|(_, r)| !fits(r[field].as_deref(), &column.ty));
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
        self.write(session, arrays, rows.len())
    }

    /// The parsed rows' values of each data column as the column's type.
    fn typed_columns(&self) -> Vec<Result<ArrayRef>> {
        self.columns
            .iter()
            .enumerate()
            .map(|(field, &at)| {
                let texts: StringArray = self.rows.iter().map(|r| r[field].as_deref()).collect();
                typed(&texts, &self.def.columns[at].ty)
            })
            .collect()
    }

    /// Into a source: moves the rows whose values do not convert to their columns' types
    /// (in the columns whose conversion failed, `typed`), or are NULL for a NOT NULL
    /// column, to the dead letters. Returns whether it moved any.
    fn refuse_misfits(&mut self, typed: &[Result<ArrayRef>]) -> bool {
        let mut errors: Vec<Option<String>> = vec![None; self.rows.len()];
        for ((field, &at), typed) in self.columns.iter().enumerate().zip(typed) {
            let column = &self.def.columns[at];
            for (i, row) in self.rows.iter().enumerate() {
                if errors[i].is_some() {
                    continue;
                }
                let value = row[field].as_deref();
                if value.is_none() && !column.nullable {
                    errors[i] = Some(format!(
                        "null value in column \"{}\" violates not-null constraint",
                        column.name
                    ));
                } else if typed.is_err() && !fits(value, &column.ty) {
                    errors[i] = Some(format!(
                        "invalid input syntax for type {} in column \"{}\": \"{}\"",
                        column.ty.pg_name(),
                        column.name,
                        value.unwrap_or_default()
                    ));
                }
            }
        }
        if errors.iter().all(Option::is_none) {
            return false;
        }
        let rows = std::mem::take(&mut self.rows);
        let lines = std::mem::take(&mut self.row_lines);
        let raw = std::mem::take(&mut self.raw);
        for (((row, line), raw), error) in rows.into_iter().zip(lines).zip(raw).zip(errors) {
            match error {
                None => {
                    self.rows.push(row);
                    self.row_lines.push(line);
                    self.raw.push(raw);
                }
                Some(error) => self.dead_letter(line, raw, error),
            }
        }
        true
    }

    /// Writes `n` rows of the data columns (in the COPY's column order) into the
    /// transaction, with the defaults of the other columns; into a source, appends them and
    /// the dead letters to its log.
    fn write(&mut self, session: &Session, data: Vec<ArrayRef>, n: usize) -> Result<()> {
        if n == 0 && self.dead.is_empty() {
            return Ok(());
        }
        let def = self.def.clone();
        let mut data: Vec<Option<ArrayRef>> = data.into_iter().map(Some).collect();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(def.columns.len());
        for (at, column) in def.columns.iter().enumerate() {
            arrays.push(match self.columns.iter().position(|&c| c == at) {
                // Only dead letters to append: no rows.
                _ if n == 0 => datafusion::arrow::array::new_empty_array(&column.ty.arrow_type()),
                Some(field) => data[field].take().expect("each data column once"),
                None => default_values(session, &def, at, n)?,
            });
        }
        if self.events {
            self.raw.clear();
            let mut dead = std::mem::take(&mut self.dead);
            // In line order (the log numbers them after the rows of this batch).
            dead.sort_by_key(|d| d.offset);
            super::dml::append_to_source(session, &def, arrays, n, &mut dead)?;
            self.written += n;
            return Ok(());
        }
        if n == 0 {
            return Ok(());
        }
        self.written += super::dml::insert_rows(session, &def, arrays, None)?;
        Ok(())
    }

    /// Binary COPY data: the signature and header, then tuples (a field count, then each
    /// field's length, -1 for NULL, and bytes), then -1.
    fn binary_data(
        &mut self,
        session: &Session,
        bytes: &[u8],
        decode: BinaryDecoder<'_>,
    ) -> Result<()> {
        self.pending.extend_from_slice(bytes);
        let schema = self.def.arrow_schema();
        let fields: Vec<FieldRef> = self
            .columns
            .iter()
            .map(|&c| schema.fields()[c].clone())
            .collect();
        let mut at = 0;
        loop {
            let rest = &self.pending[at..];
            if !self.binary_header {
                if rest.len() < 19 {
                    break;
                }
                if &rest[..11] != BINARY_SIGNATURE {
                    return Err(bad_copy("COPY file signature not recognized"));
                }
                let flags = i32::from_be_bytes(rest[11..15].try_into().expect("4 bytes"));
                if flags & (1 << 16) != 0 {
                    return Err(bad_copy("COPY with OIDs is not supported"));
                }
                let extension = i32::from_be_bytes(rest[15..19].try_into().expect("4 bytes"));
                let Ok(extension) = usize::try_from(extension) else {
                    return Err(bad_copy("invalid COPY file header (missing length)"));
                };
                if rest.len() < 19 + extension {
                    break;
                }
                at += 19 + extension;
                self.binary_header = true;
                continue;
            }
            if rest.is_empty() {
                break;
            }
            if self.binary_ended {
                return Err(bad_copy("received copy data after EOF marker"));
            }
            let Some(tuple) = binary_tuple(rest)? else {
                break;
            };
            let Some(tuple) = tuple else {
                self.binary_ended = true;
                at += 2;
                continue;
            };
            self.line += 1;
            if tuple.fields.len() != fields.len() {
                return Err(bad_copy(format!(
                    "row field count is {}, expected {}",
                    tuple.fields.len(),
                    fields.len()
                ))
                .with_detail(format!("COPY {}, line {}", self.def.name, self.line)));
            }
            let decoded: Result<Vec<Option<ScalarValue>>> = tuple
                .fields
                .iter()
                .enumerate()
                .map(|(i, raw)| {
                    raw.map(|raw| {
                        decode(raw, &fields[i]).map_err(|e| {
                            e.with_detail(format!(
                                "COPY {}, line {}, column {}",
                                self.def.name, self.line, self.def.columns[self.columns[i]].name
                            ))
                        })
                    })
                    .transpose()
                })
                .collect();
            let len = tuple.len;
            match decoded {
                Ok(values) => {
                    for (i, value) in values.into_iter().enumerate() {
                        self.values[i].push(value);
                    }
                }
                Err(e) if self.events => {
                    let payload = self.pending[at..at + len].to_vec();
                    self.dead_letter(self.line, payload, e.to_string());
                }
                Err(e) => return Err(e),
            }
            at += len;
            if self.values.first().map_or(0, Vec::len) >= BATCH_ROWS {
                self.pending.drain(..at);
                at = 0;
                self.flush_binary(session)?;
            }
        }
        self.pending.drain(..at);
        Ok(())
    }

    fn flush_binary(&mut self, session: &Session) -> Result<()> {
        let n = self.values.first().map_or(0, Vec::len);
        if n == 0 {
            return self.write(session, Vec::new(), 0);
        }
        let mut data = Vec::with_capacity(self.columns.len());
        for (i, values) in self.values.iter_mut().enumerate() {
            let column = &self.def.columns[self.columns[i]];
            let target = column.ty.arrow_type();
            // NULLs take the type the decoder gives the others (numeric arrives as text).
            let decoded = match values.iter().flatten().next() {
                Some(v) => v.data_type(),
                None => target.clone(),
            };
            let null = ScalarValue::try_from(&decoded)?;
            let array = ScalarValue::iter_to_array(
                std::mem::take(values)
                    .into_iter()
                    .map(|v| v.unwrap_or_else(|| null.clone())),
            )?;
            let array = if array.data_type() == &target {
                array
            } else {
                strict_cast(&array, &target).map_err(|e| {
                    Error::user(
                        sqlstate::INVALID_BINARY_REPRESENTATION,
                        format!(
                            "incorrect binary data format for column \"{}\" ({}): {e}",
                            column.name,
                            column.ty.pg_name()
                        ),
                    )
                })?
            };
            data.push(array);
        }
        self.write(session, data, n)
    }
}

/// One binary tuple at the start of `bytes`: `None` while it has not all arrived,
/// `Some(None)` for the end marker.
struct BinaryTuple<'a> {
    fields: Vec<Option<&'a [u8]>>,
    /// Its length in bytes.
    len: usize,
}

fn binary_tuple(bytes: &[u8]) -> Result<Option<Option<BinaryTuple<'_>>>> {
    let Some(count) = bytes.get(..2) else {
        return Ok(None);
    };
    let count = i16::from_be_bytes(count.try_into().expect("2 bytes"));
    if count == -1 {
        return Ok(Some(None));
    }
    let Ok(count) = usize::try_from(count) else {
        return Err(bad_copy(format!(
            "invalid field count {count} in binary COPY data"
        )));
    };
    let mut fields = Vec::with_capacity(count);
    let mut at = 2;
    for _ in 0..count {
        let Some(len) = bytes.get(at..at + 4) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes(len.try_into().expect("4 bytes"));
        at += 4;
        if len == -1 {
            fields.push(None);
            continue;
        }
        let Ok(len) = usize::try_from(len) else {
            return Err(bad_copy("invalid field size"));
        };
        let Some(value) = bytes.get(at..at + len) else {
            return Ok(None);
        };
        fields.push(Some(value));
        at += len;
    }
    Ok(Some(Some(BinaryTuple { fields, len: at })))
}

fn bad_copy(message: impl Into<String>) -> Error {
    Error::user(sqlstate::BAD_COPY_FORMAT, message)
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

/// Whether one text value converts to the type.
fn fits(value: Option<&str>, ty: &SqlType) -> bool {
    let one: StringArray = [value].into_iter().collect();
    typed(&one, ty).is_ok()
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
    let state = session.ctx().state();
    let start = state.execution_props().query_execution_start_time;
    evaluate_default(&state, start, expr.as_ref(), &def.columns[at].ty, n)
}

/// When the statement started: `now()` and friends read it.
pub(super) type StatementStart = Option<chrono::DateTime<chrono::Utc>>;

/// `n` rows of a column default (NULLs for none), as the column's type.
pub(super) fn evaluate_default(
    state: &SessionState,
    start: StatementStart,
    expr: Option<&Expr>,
    ty: &SqlType,
    n: usize,
) -> Result<ArrayRef> {
    let ty = ty.arrow_type();
    let Some(expr) = expr else {
        return Ok(new_null_array(&ty, n));
    };
    let values = evaluate_standalone(state, start, expr.clone(), n)?;
    Ok(datafusion::arrow::compute::cast(&values, &ty)?)
}

/// `n` rows of an expression that reads no columns (see [`standalone_expr`]).
pub(super) fn evaluate_standalone(
    state: &SessionState,
    start: StatementStart,
    expr: Expr,
    n: usize,
) -> Result<ArrayRef> {
    let physical = standalone_expr(state, expr, start)?;
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
pub(super) fn standalone_expr(
    state: &SessionState,
    expr: Expr,
    start: StatementStart,
) -> Result<Arc<dyn PhysicalExpr>> {
    use datafusion::logical_expr::simplify::SimplifyContext;
    use datafusion::optimizer::simplify_expressions::ExprSimplifier;
    let schema = Arc::new(DFSchema::empty());
    let context = SimplifyContext::builder()
        .with_schema(schema.clone())
        .with_config_options(Arc::clone(state.config_options()))
        .with_query_execution_start_time(start)
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
