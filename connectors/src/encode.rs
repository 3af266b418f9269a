//! Rows of a record batch as the messages a sink sends: one JSON object or one CSV line per
//! row, encoded column by column (arrow-json's encoders, arrow-csv's writer) into one buffer.

use arrow::array::{Array, AsArray, RecordBatch, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field};
use arrow::json::writer::{EncoderOptions, make_encoder};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::Format;

/// Encoded rows: row `i` is `bytes[ends[i - 1]..ends[i]]`.
#[derive(Debug, Default)]
pub struct Rows {
    pub bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn row(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.row(i))
    }
}

fn external(e: impl std::fmt::Display) -> Error {
    Error::External(format!("cannot encode rows: {e}"))
}

/// Each row as a JSON object (`{"column": value, ...}`, nulls written as null).
pub fn json_rows(batch: &RecordBatch) -> Result<Rows> {
    let rows = StructArray::from(batch.clone());
    let field = Arc::new(Field::new("row", rows.data_type().clone(), false));
    let options = EncoderOptions::default().with_explicit_nulls(true);
    let mut encoder = make_encoder(&field, &rows, &options).map_err(external)?;
    let mut out = Rows {
        bytes: Vec::with_capacity(batch.num_rows() * 64),
        ends: Vec::with_capacity(batch.num_rows()),
    };
    for i in 0..batch.num_rows() {
        encoder.encode(i, &mut out.bytes);
        out.ends.push(out.bytes.len());
    }
    Ok(out)
}

/// Each row as a CSV line without its line end (no header).
pub fn csv_rows(batch: &RecordBatch, delimiter: u8) -> Result<Rows> {
    let mut bytes = Vec::with_capacity(batch.num_rows() * 48);
    {
        let mut writer = arrow::csv::WriterBuilder::new()
            .with_header(false)
            .with_delimiter(delimiter)
            .build(&mut bytes);
        writer.write(batch).map_err(external)?;
    }
    // Lines end at newlines outside quotes (a quoted value may hold one).
    let mut ends = Vec::with_capacity(batch.num_rows());
    let mut quoted = false;
    let mut kept = Vec::with_capacity(bytes.len());
    for &b in &bytes {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => {
                if kept.last() == Some(&b'\r') {
                    kept.pop();
                }
                ends.push(kept.len());
                continue;
            }
            _ => {}
        }
        kept.push(b);
    }
    if ends.len() != batch.num_rows() {
        return Err(external(format!(
            "{} CSV lines for {} rows",
            ends.len(),
            batch.num_rows()
        )));
    }
    Ok(Rows { bytes: kept, ends })
}

/// Each row in `format`.
pub fn rows(batch: &RecordBatch, format: Format) -> Result<Rows> {
    match format {
        Format::Json => json_rows(batch),
        Format::Csv { delimiter } => csv_rows(batch, delimiter),
    }
}

/// A column's values as text (NULL as None), for message keys.
pub fn text_column(batch: &RecordBatch, column: &str) -> Result<Vec<Option<String>>> {
    let index = batch.schema().index_of(column).map_err(|_| {
        Error::Options(format!(
            "column \"{column}\" does not exist in the sink's rows"
        ))
    })?;
    let text = cast(batch.column(index), &DataType::Utf8).map_err(external)?;
    let text = text.as_string::<i32>();
    Ok((0..text.len())
        .map(|i| text.is_valid(i).then(|| text.value(i).to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::Schema;

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![
                    Some("plain"),
                    Some("two\nlines, \"quoted\""),
                    None,
                ])),
                Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-2.0)])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn json_rows_are_objects_with_explicit_nulls() {
        let rows = json_rows(&batch()).unwrap();
        let text: Vec<&str> = rows
            .iter()
            .map(|r| std::str::from_utf8(r).unwrap())
            .collect();
        assert_eq!(
            text,
            vec![
                r#"{"id":1,"note":"plain","v":1.5}"#,
                r#"{"id":2,"note":"two\nlines, \"quoted\"","v":null}"#,
                r#"{"id":3,"note":null,"v":-2.0}"#,
            ]
        );
    }

    #[test]
    fn csv_rows_keep_quoted_newlines_inside_their_row() {
        let rows = csv_rows(&batch(), b',').unwrap();
        let text: Vec<&str> = rows
            .iter()
            .map(|r| std::str::from_utf8(r).unwrap())
            .collect();
        assert_eq!(
            text,
            vec![
                "1,plain,1.5",
                "2,\"two\nlines, \"\"quoted\"\"\",",
                "3,,-2.0"
            ]
        );
    }

    #[test]
    fn key_columns_are_text_and_unknown_ones_are_named() {
        assert_eq!(
            text_column(&batch(), "v").unwrap(),
            vec![Some("1.5".into()), None, Some("-2.0".into())]
        );
        let e = text_column(&batch(), "nope").unwrap_err().to_string();
        assert!(e.contains("\"nope\""), "{e}");
    }
}
