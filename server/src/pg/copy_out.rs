//! `COPY … TO STDOUT`: rows as CopyData messages in PostgreSQL's text, CSV and binary
//! formats, one message per row as PostgreSQL sends them (the header in its own message).
//!
//! Values take their PostgreSQL text or binary forms from the DataRow encoder (so a COPY
//! prints a value as a SELECT does); this module adds COPY's framing: text escapes, CSV
//! quoting, the binary header and tuple layout.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::datatypes::SchemaRef;
use bytes::{BufMut, Bytes, BytesMut};
use datafusion::execution::SendableRecordBatchStream;
use eddy_sql::engine::CopyFormat;
use futures::{Sink, SinkExt, StreamExt, stream};
use pgwire::api::results::{CopyResponse, Tag};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyOutResponse};
use pgwire::messages::data::DataRow;

use super::encode;
use super::errors::to_pgwire;

/// The rows of this connection's COPY TO in progress, for its `COPY n` completion.
#[derive(Debug, Default)]
pub struct CopyOutRows(AtomicUsize);

/// The response for a COPY TO: the header and each row as one message; counts the rows
/// into `rows`.
pub fn response(
    schema: &SchemaRef,
    batches: SendableRecordBatchStream,
    format: CopyFormat,
    rows: Arc<CopyOutRows>,
) -> PgWireResult<CopyResponse> {
    rows.0.store(0, Ordering::Relaxed);
    let binary = format == CopyFormat::Binary;
    let fields = Arc::new(encode::fields(
        schema,
        &encode::uniform(if binary {
            pgwire::api::results::FieldFormat::Binary
        } else {
            pgwire::api::results::FieldFormat::Text
        }),
    )?);
    let framing = Framing::new(format, schema)?;
    let header = framing.header(schema);
    let columns = fields.len();
    // PostgreSQL sends the binary header in the first row's message (or with the trailer
    // when there is none), and a text or CSV header line as a message of its own.
    let (first, mut lead) = match binary {
        true => (None, header),
        false => (header, None),
    };
    let unused_lead = Arc::new(parking_lot::Mutex::new(None));
    let leftover = unused_lead.clone();
    let body = batches
        .map(Some)
        .chain(stream::once(async { None }))
        .flat_map(move |batch| {
            let messages: Vec<PgWireResult<CopyData>> = match batch {
                Some(Ok(batch)) => encode::encode_batch(&fields, &batch)
                    .into_iter()
                    .map(|row| {
                        rows.0.fetch_add(1, Ordering::Relaxed);
                        let row = framing.row(&row?);
                        Ok(CopyData::new(match lead.take() {
                            Some(lead) => [lead, row].concat().into(),
                            None => row,
                        }))
                    })
                    .collect(),
                Some(Err(e)) => vec![Err(to_pgwire(eddy_sql::Error::from(e)))],
                None => {
                    *leftover.lock() = lead.take();
                    vec![]
                }
            };
            stream::iter(messages)
        });
    let trailer = stream::once(async move {
        let lead = unused_lead.lock().take();
        Ok(CopyData::new(match lead {
            Some(lead) => [lead, Bytes::from_static(&[0xFF, 0xFF])].concat().into(),
            None => Bytes::from_static(&[0xFF, 0xFF]),
        }))
    })
    .filter(move |_| std::future::ready(binary));
    let stream = stream::iter(first.map(|h| Ok(CopyData::new(h))))
        .chain(body)
        .chain(trailer);
    let mut response = CopyResponse::new(0, columns, stream);
    // The binary trailer is part of the stream above (CopyResponse would add its own).
    response.format = i8::from(binary);
    Ok(response)
}

/// Sends a COPY TO: CopyOutResponse, the data, CopyDone and `COPY n`. An error while the
/// rows are computed ends the COPY with it (the caller reports it).
pub async fn send<C>(client: &mut C, response: CopyResponse, rows: &CopyOutRows) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let formats = response.column_formats();
    let CopyResponse {
        format,
        columns,
        mut data_stream,
        ..
    } = response;
    client
        .feed(PgWireBackendMessage::CopyOutResponse(CopyOutResponse::new(
            format,
            columns as i16,
            formats,
        )))
        .await?;
    while let Some(data) = data_stream.next().await {
        client.feed(PgWireBackendMessage::CopyData(data?)).await?;
    }
    client
        .feed(PgWireBackendMessage::CopyDone(CopyDone::new()))
        .await?;
    let tag = Tag::new("COPY").with_rows(rows.0.load(Ordering::Relaxed));
    client
        .feed(PgWireBackendMessage::CommandComplete(tag.into()))
        .await?;
    Ok(())
}

/// How one row's values are framed.
enum Framing {
    Text {
        delimiter: u8,
        null: Vec<u8>,
        header: bool,
    },
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: Vec<u8>,
        header: bool,
        /// Per output column: quoted even when it need not be.
        force: Vec<bool>,
    },
    Binary,
}

impl Framing {
    fn new(format: CopyFormat, schema: &SchemaRef) -> PgWireResult<Self> {
        let single_byte = |c: char, what: &str| -> PgWireResult<u8> {
            u8::try_from(c as u32)
                .ok()
                .filter(u8::is_ascii)
                .ok_or_else(|| {
                    to_pgwire(eddy_sql::Error::user(
                        eddy_sql::error::sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("COPY {what} must be a single one-byte character"),
                    ))
                })
        };
        Ok(match format {
            CopyFormat::Text {
                delimiter,
                null,
                header,
            } => Framing::Text {
                delimiter: single_byte(delimiter, "delimiter")?,
                null: null.into_bytes(),
                header,
            },
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                null,
                header,
                force_quote,
            } => {
                // (Names that are not columns were refused with the statement.)
                let force = schema
                    .fields()
                    .iter()
                    .map(|f| force_quote.contains(f.name()))
                    .collect();
                Framing::Csv {
                    delimiter: single_byte(delimiter, "delimiter")?,
                    quote: single_byte(quote, "quote")?,
                    escape: single_byte(escape, "escape")?,
                    null: null.into_bytes(),
                    header,
                    force,
                }
            }
            CopyFormat::Binary => Framing::Binary,
        })
    }

    /// The message before the rows: the binary signature, or the column names' line.
    fn header(&self, schema: &SchemaRef) -> Option<Bytes> {
        let names = || schema.fields().iter().map(|f| Some(f.name().as_bytes()));
        let mut out = BytesMut::new();
        match self {
            Framing::Binary => {
                out.put_slice(b"PGCOPY\n\xff\r\n\0");
                out.put_i32(0); // flags: no OIDs
                out.put_i32(0); // no header extension
            }
            Framing::Text { header: true, .. } | Framing::Csv { header: true, .. } => {
                self.line(names(), &mut out, true);
            }
            _ => return None,
        }
        Some(out.freeze())
    }

    /// A row encoded for a DataRow (text or binary values) as a COPY row.
    fn row(&self, row: &DataRow) -> Bytes {
        let mut out = BytesMut::with_capacity(row.data.len() + 8);
        if let Framing::Binary = self {
            // The tuple layout is the DataRow's: a field count, then each length and value.
            out.put_i16(row.field_count);
            out.put_slice(&row.data);
        } else {
            self.line(values(row), &mut out, false);
        }
        out.freeze()
    }

    /// One text or CSV line of values (`None` is NULL).
    fn line<'a>(
        &self,
        values: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
        out: &mut BytesMut,
        header: bool,
    ) {
        let single = values.len() == 1;
        for (i, value) in values.enumerate() {
            match self {
                Framing::Text {
                    delimiter, null, ..
                } => {
                    if i > 0 {
                        out.put_u8(*delimiter);
                    }
                    match value {
                        None => out.put_slice(null),
                        Some(v) => text_escaped(v, *delimiter, out),
                    }
                }
                Framing::Csv {
                    delimiter,
                    quote,
                    escape,
                    null,
                    force,
                    ..
                } => {
                    if i > 0 {
                        out.put_u8(*delimiter);
                    }
                    let Some(v) = value else {
                        out.put_slice(null);
                        continue;
                    };
                    // As PostgreSQL: quoted when forced, when it holds a special character,
                    // when it reads as the NULL string, or when it is the end marker `\.`
                    // alone on its line.
                    let needs = (!header && force[i])
                        || v == null.as_slice()
                        || (single && v == b"\\.")
                        || v.iter()
                            .any(|&b| b == *delimiter || b == *quote || b == b'\n' || b == b'\r');
                    if !needs {
                        out.put_slice(v);
                        continue;
                    }
                    out.put_u8(*quote);
                    for &b in v {
                        if b == *quote || b == *escape {
                            out.put_u8(*escape);
                        }
                        out.put_u8(b);
                    }
                    out.put_u8(*quote);
                }
                Framing::Binary => {}
            }
        }
        out.put_u8(b'\n');
    }
}

/// The values of a DataRow: each field's length (-1 for NULL) and bytes.
fn values(row: &DataRow) -> impl ExactSizeIterator<Item = Option<&[u8]>> {
    let mut data: &[u8] = &row.data;
    (0..row.field_count).map(move |_| {
        let (len, rest) = data.split_at(4);
        let len = i32::from_be_bytes(len.try_into().expect("four bytes"));
        if len < 0 {
            data = rest;
            return None;
        }
        let (value, rest) = rest.split_at(len as usize);
        data = rest;
        Some(value)
    })
}

/// A value in COPY's text format: backslash, the delimiter and control characters escaped.
fn text_escaped(value: &[u8], delimiter: u8, out: &mut BytesMut) {
    for &b in value {
        let escape = match b {
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0x0b => b'v',
            _ if b == delimiter => b,
            _ => {
                out.put_u8(b);
                continue;
            }
        };
        out.put_u8(b'\\');
        out.put_u8(escape);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_row(values: &[Option<&str>]) -> DataRow {
        let mut data = BytesMut::new();
        for v in values {
            match v {
                None => data.put_i32(-1),
                Some(v) => {
                    data.put_i32(v.len() as i32);
                    data.put_slice(v.as_bytes());
                }
            }
        }
        DataRow::new(data, values.len() as i16)
    }

    fn csv(force: Vec<bool>) -> Framing {
        Framing::Csv {
            delimiter: b',',
            quote: b'"',
            escape: b'"',
            null: Vec::new(),
            header: false,
            force,
        }
    }

    #[test]
    fn text_rows_escape_specials_and_print_null() {
        let framing = Framing::Text {
            delimiter: b'\t',
            null: b"\\N".to_vec(),
            header: false,
        };
        let row = data_row(&[Some("a\tb\\c\nd"), None, Some("")]);
        assert_eq!(&framing.row(&row)[..], b"a\\tb\\\\c\\nd\t\\N\t\n");
    }

    #[test]
    fn csv_quotes_what_postgres_quotes() {
        let row = data_row(&[
            Some("plain"),
            Some("a,b"),
            Some("say \"hi\""),
            Some(""),
            None,
        ]);
        assert_eq!(
            &csv(vec![false; 5]).row(&row)[..],
            b"plain,\"a,b\",\"say \"\"hi\"\"\",\"\",\n"
        );
        let row = data_row(&[Some("x"), Some("\\.")]);
        assert_eq!(&csv(vec![true, false]).row(&row)[..], b"\"x\",\\.\n");
        let row = data_row(&[Some("\\.")]);
        assert_eq!(&csv(vec![false]).row(&row)[..], b"\"\\.\"\n");
    }
}
