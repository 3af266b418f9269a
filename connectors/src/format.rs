//! Event formats: JSON objects and CSV lines, decoded into Arrow batches.
//!
//! Decoding is vectorised: the payloads of a whole poll are decoded by one arrow-json or
//! arrow-csv decoder. Only when that fails (or a payload is structurally not one value) are
//! the payloads decoded one by one, to tell the good events from the bad; each bad one becomes
//! a [`DeadLetter`] with the decoder's reason. Rows missing a NOT NULL column become dead
//! letters too, so a batch handed to the engine always satisfies the declared schema.
//!
//! Columns named `_key`, `_partition`, `_offset` and `_timestamp` are not read from the
//! payload: they are filled from the event's metadata (Kafka message key, partition, offset
//! and timestamp). A `_payload` column (text or jsonb) holds the whole event, for JSON
//! access (`_payload ->> 'field'`) to fields the declared columns do not name.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::{filter_record_batch, is_not_null};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{Error, Result};
use crate::options::Options;
use crate::source::{DeadLetter, SourceBatch};

/// Default limit on one event's size; larger events are dead letters.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv { delimiter: u8 },
}

impl Format {
    /// Reads `format` (json, csv) and its options.
    pub fn from_options(options: &mut Options) -> Result<Self> {
        let format = options
            .take("format")
            .unwrap_or_else(|| "json".into())
            .to_ascii_lowercase();
        match format.as_str() {
            "json" => Ok(Format::Json),
            "csv" => {
                let delimiter = match options.take("csv.delimiter") {
                    None => b',',
                    Some(d) if d.len() == 1 => d.as_bytes()[0],
                    Some(d) if d == "\\t" => b'\t',
                    Some(d) => {
                        return Err(Error::Options(format!(
                            "csv.delimiter must be one character, not \"{d}\""
                        )));
                    }
                };
                Ok(Format::Csv { delimiter })
            }
            other => Err(Error::Options(format!(
                "unknown format \"{other}\" (expected json or csv)"
            ))),
        }
    }
}

/// One raw event with its metadata.
#[derive(Debug, Clone, Copy)]
pub struct RawEvent<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    /// Milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meta {
    Payload,
    Key,
    Partition,
    Offset,
    Timestamp,
}

impl Meta {
    fn of(field: &Field) -> Result<Option<Meta>> {
        let (meta, ok) = match field.name().as_str() {
            "_key" => (Meta::Key, matches!(field.data_type(), DataType::Utf8)),
            "_payload" => (Meta::Payload, matches!(field.data_type(), DataType::Utf8)),
            "_partition" => (
                Meta::Partition,
                matches!(field.data_type(), DataType::Int32),
            ),
            "_offset" => (Meta::Offset, matches!(field.data_type(), DataType::Int64)),
            "_timestamp" => (
                Meta::Timestamp,
                matches!(
                    field.data_type(),
                    DataType::Timestamp(TimeUnit::Microsecond, _)
                ),
            ),
            _ => return Ok(None),
        };
        if !ok {
            let want = match meta {
                Meta::Key | Meta::Payload => "text",
                Meta::Partition => "int4",
                Meta::Offset => "int8",
                Meta::Timestamp => "timestamptz",
            };
            return Err(Error::Options(format!(
                "metadata column \"{}\" must have type {want}",
                field.name()
            )));
        }
        Ok(Some(meta))
    }
}

/// Decodes raw events of one format into batches of a declared schema.
pub struct EventDecoder {
    format: Format,
    schema: SchemaRef,
    /// The payload part of the schema, all nullable (NOT NULL is checked after decoding).
    payload_schema: SchemaRef,
    /// For each declared column: metadata it is filled from, or its index in the payload.
    columns: Vec<Result<usize, Meta>>,
    max_event_bytes: usize,
}

impl EventDecoder {
    pub fn new(schema: SchemaRef, format: Format, max_event_bytes: usize) -> Result<Self> {
        let mut payload_fields = Vec::new();
        let mut columns = Vec::new();
        for field in schema.fields() {
            match Meta::of(field)? {
                Some(meta) => columns.push(Err(meta)),
                None => {
                    columns.push(Ok(payload_fields.len()));
                    payload_fields.push(field.as_ref().clone().with_nullable(true));
                }
            }
        }
        Ok(Self {
            format,
            schema,
            payload_schema: Arc::new(Schema::new(payload_fields)),
            columns,
            max_event_bytes,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes `events`; every event ends up as exactly one row or one dead letter.
    pub fn decode(&self, events: &[RawEvent<'_>]) -> Result<SourceBatch> {
        let mut dead = Vec::new();
        let mut good: Vec<&RawEvent<'_>> = Vec::with_capacity(events.len());
        for e in events {
            match self.precheck(e.payload) {
                Ok(()) => good.push(e),
                Err(reason) => dead.push(dead_letter(e, reason)),
            }
        }
        let payload = match self.decode_payloads(&good) {
            Ok(batch) if batch.num_rows() == good.len() => batch,
            // Something in the batch is bad: find it event by event.
            _ => {
                let mut kept = Vec::with_capacity(good.len());
                for e in good {
                    match self.decode_payloads(&[e]) {
                        Ok(b) if b.num_rows() == 1 => kept.push(e),
                        Ok(b) => dead.push(dead_letter(
                            e,
                            format!("expected one record, found {}", b.num_rows()),
                        )),
                        Err(err) => dead.push(dead_letter(e, clean_error(&err))),
                    }
                }
                good = kept;
                self.decode_payloads(&good)?
            }
        };
        let batch = self.assemble(&good, payload)?;
        let (batch, keep) = self.check_not_null(batch, &good, &mut dead)?;
        dead.sort_by_key(|d| (d.partition, d.offset));
        let origins = good
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.as_ref().is_none_or(|k| k.value(*i)))
            .map(|(_, e)| (e.partition, e.offset))
            .collect();
        Ok(SourceBatch {
            rows: batch,
            dead_letters: dead,
            origins,
        })
    }

    fn precheck(&self, payload: &[u8]) -> Result<(), String> {
        if payload.len() > self.max_event_bytes {
            return Err(format!(
                "event of {} bytes exceeds the limit of {} bytes",
                payload.len(),
                self.max_event_bytes
            ));
        }
        let text = payload.trim_ascii();
        if text.is_empty() {
            return Err("empty event".into());
        }
        match self.format {
            Format::Json => match one_json_object(text) {
                true => Ok(()),
                false => Err(json_error(text)),
            },
            Format::Csv { .. } if text.contains(&b'\n') => {
                Err("a CSV event must be one line".into())
            }
            Format::Csv { .. } => Ok(()),
        }
    }

    fn decode_payloads(&self, events: &[&RawEvent<'_>]) -> Result<RecordBatch> {
        if self.payload_schema.fields().is_empty() {
            // Only metadata columns: nothing to decode, but JSON must still be valid.
            if self.format == Format::Json {
                for e in events {
                    serde_json::from_slice::<serde::de::IgnoredAny>(e.payload)
                        .map_err(|err| Error::Options(format!("invalid JSON: {err}")))?;
                }
            }
            let options =
                arrow::array::RecordBatchOptions::new().with_row_count(Some(events.len()));
            return Ok(RecordBatch::try_new_with_options(
                self.payload_schema.clone(),
                Vec::new(),
                &options,
            )?);
        }
        let mut buf = Vec::with_capacity(events.iter().map(|e| e.payload.len() + 1).sum());
        for e in events {
            buf.extend_from_slice(e.payload.trim_ascii());
            buf.push(b'\n');
        }
        let rows = events.len().max(1);
        let batch = match self.format {
            Format::Json => {
                let mut decoder = arrow::json::ReaderBuilder::new(self.payload_schema.clone())
                    .with_batch_size(rows)
                    .build_decoder()?;
                feed(&buf, |b| decoder.decode(b))?;
                decoder.flush()?
            }
            Format::Csv { delimiter } => {
                let mut decoder = arrow::csv::ReaderBuilder::new(self.payload_schema.clone())
                    .with_delimiter(delimiter)
                    .with_batch_size(rows)
                    .build_decoder();
                feed(&buf, |b| decoder.decode(b))?;
                decoder.decode(&[])?;
                decoder.flush()?
            }
        };
        Ok(batch.unwrap_or_else(|| RecordBatch::new_empty(self.payload_schema.clone())))
    }

    /// Declared columns from the payload columns and the events' metadata.
    fn assemble(&self, events: &[&RawEvent<'_>], payload: RecordBatch) -> Result<RecordBatch> {
        let columns = self
            .columns
            .iter()
            .zip(self.schema.fields())
            .map(|(source, field)| -> Result<ArrayRef> {
                Ok(match source {
                    Ok(i) => payload.column(*i).clone(),
                    Err(Meta::Payload) => Arc::new(
                        events
                            .iter()
                            .map(|e| Some(String::from_utf8_lossy(e.payload)))
                            .collect::<StringArray>(),
                    ),
                    Err(Meta::Key) => Arc::new(
                        events
                            .iter()
                            .map(|e| e.key.map(String::from_utf8_lossy))
                            .collect::<StringArray>(),
                    ),
                    Err(Meta::Partition) => {
                        Arc::new(events.iter().map(|e| e.partition).collect::<Int32Array>())
                    }
                    Err(Meta::Offset) => {
                        Arc::new(events.iter().map(|e| e.offset).collect::<Int64Array>())
                    }
                    Err(Meta::Timestamp) => {
                        let DataType::Timestamp(_, tz) = field.data_type() else {
                            unreachable!("checked in Meta::of")
                        };
                        Arc::new(
                            events
                                .iter()
                                .map(|e| e.timestamp_ms.map(|ms| ms * 1000))
                                .collect::<TimestampMicrosecondArray>()
                                .with_timezone_opt(tz.clone()),
                        )
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let all_nullable = Arc::new(Schema::new(
            self.schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(events.len()));
        Ok(RecordBatch::try_new_with_options(
            all_nullable,
            columns,
            &options,
        )?)
    }

    /// Moves rows with a null in a NOT NULL column to the dead letters.
    fn check_not_null(
        &self,
        batch: RecordBatch,
        events: &[&RawEvent<'_>],
        dead: &mut Vec<DeadLetter>,
    ) -> Result<(RecordBatch, Option<BooleanArray>)> {
        let mut keep: Option<BooleanArray> = None;
        for (i, field) in self.schema.fields().iter().enumerate() {
            if field.is_nullable() || batch.column(i).null_count() == 0 {
                continue;
            }
            let valid = is_not_null(batch.column(i))?;
            for (row, ok) in valid.iter().enumerate() {
                let already_dead = keep.as_ref().is_some_and(|k| !k.value(row));
                if ok == Some(false) && !already_dead {
                    dead.push(dead_letter(
                        events[row],
                        format!(
                            "null value in column \"{}\" violates not-null constraint",
                            field.name()
                        ),
                    ));
                }
            }
            keep = Some(match keep {
                None => valid,
                Some(k) => arrow::compute::and(&k, &valid)?,
            });
        }
        let batch = match &keep {
            None => batch,
            Some(k) => filter_record_batch(&batch, k)?,
        };
        let options =
            arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            batch.columns().to_vec(),
            &options,
        )?;
        Ok((batch, keep))
    }
}

/// Hands `buf` to a push decoder until it takes no more.
fn feed(
    buf: &[u8],
    mut decode: impl FnMut(&[u8]) -> std::result::Result<usize, arrow::error::ArrowError>,
) -> Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let n = decode(&buf[at..])?;
        if n == 0 {
            break;
        }
        at += n;
    }
    Ok(())
}

fn dead_letter(e: &RawEvent<'_>, error: String) -> DeadLetter {
    DeadLetter {
        partition: e.partition,
        offset: e.offset,
        payload: e.payload.to_vec(),
        error,
    }
}

/// The decoder's message without arrow's "Json error: " style prefixes.
fn clean_error(err: &Error) -> String {
    let text = err.to_string();
    for prefix in [
        "Json error: ",
        "Parser error: ",
        "Csv error: ",
        "Cast error: ",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    text
}

fn json_error(text: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(text) {
        Err(e) => format!("invalid JSON: {e}"),
        Ok(v) if !v.is_object() => "a JSON event must be an object".into(),
        Ok(_) => "invalid JSON".into(),
    }
}

/// Whether `text` (trimmed) is exactly one JSON object, judged by its braces: a cheap
/// structural check that keeps one event from merging with the next in a batch decode.
fn one_json_object(text: &[u8]) -> bool {
    if text.first() != Some(&b'{') || text.last() != Some(&b'}') {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0i64, false, false);
    for (i, &b) in text.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 && i + 1 != text.len() {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0 && !in_string
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("_offset", DataType::Int64, true),
        ]))
    }

    fn events(payloads: &[&'static str]) -> Vec<RawEvent<'static>> {
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawEvent {
                partition: 0,
                offset: i as i64,
                key: None,
                timestamp_ms: None,
                payload: p.as_bytes(),
            })
            .collect()
    }

    #[test]
    fn good_json_decodes_in_one_pass() {
        let d = EventDecoder::new(schema(), Format::Json, 1000).unwrap();
        let b = d
            .decode(&events(&[r#"{"id": 1, "name": "a"}"#, r#"{"id": 2}"#]))
            .unwrap();
        assert!(b.dead_letters.is_empty());
        assert_eq!(b.rows.num_rows(), 2);
        let offsets = b.rows.column(2).as_primitive::<Int64Type>();
        assert_eq!(offsets.values().to_vec(), vec![0, 1]);
    }

    #[test]
    fn every_bad_event_is_a_dead_letter_and_good_ones_survive() {
        let d = EventDecoder::new(schema(), Format::Json, 40).unwrap();
        let b = d
            .decode(&events(&[
                r#"{"id": 1}"#,
                r#"{"id": "#,
                r#"{"id": "x"}"#,
                r#"{"name": "no id"}"#,
                "",
                r#"[1, 2]"#,
                r#"{"id": 1}{"id": 2}"#,
                r#"{"id": 7, "name": "this one is far too long for the limit"}"#,
                r#"{"id": 9}"#,
            ]))
            .unwrap();
        let ids = b.rows.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![1, 9]);
        let dead: Vec<i64> = b.dead_letters.iter().map(|d| d.offset).collect();
        assert_eq!(dead, vec![1, 2, 3, 4, 5, 6, 7]);
        assert!(
            b.dead_letters[2].error.contains("not-null"),
            "{:?}",
            b.dead_letters[2]
        );
        assert!(b.dead_letters[6].error.contains("exceeds"));
    }

    #[test]
    fn csv_events() {
        let d = EventDecoder::new(schema(), Format::Csv { delimiter: b',' }, 100).unwrap();
        let b = d
            .decode(&events(&["1,a", "2,b,extra", "x,c", "3,"]))
            .unwrap();
        let ids = b.rows.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), vec![1, 3]);
        assert_eq!(b.dead_letters.len(), 2);
    }
}
