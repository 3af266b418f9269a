//! Building catalog rows by column name: a row names the columns it knows, and every other
//! column takes PostgreSQL's "nothing here" value (0, false, or NULL for text and arrays).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, new_null_array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::error::Result;

/// One value of a catalog row.
#[derive(Debug, Clone)]
pub enum V {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
    Char(char),
    /// A text array.
    List(Vec<String>),
    Null,
}

impl From<&str> for V {
    fn from(s: &str) -> Self {
        V::Text(s.to_string())
    }
}
impl From<String> for V {
    fn from(s: String) -> Self {
        V::Text(s)
    }
}
impl From<i32> for V {
    fn from(i: i32) -> Self {
        V::Int(i as i64)
    }
}
impl From<bool> for V {
    fn from(b: bool) -> Self {
        V::Bool(b)
    }
}
impl From<char> for V {
    fn from(c: char) -> Self {
        V::Char(c)
    }
}
impl<T: Into<V>> From<Option<T>> for V {
    fn from(v: Option<T>) -> Self {
        v.map_or(V::Null, Into::into)
    }
}

pub type Row = Vec<(&'static str, V)>;

/// Arrays are stored as PostgreSQL's text form (`{a,b}`) where the column is text.
fn array_text(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| {
            if s.is_empty() || s.contains([',', '{', '}', '"', '\\', ' ']) {
                format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
            } else {
                s.clone()
            }
        })
        .collect();
    format!("{{{}}}", quoted.join(","))
}

fn scalar(field: &Field, value: Option<&V>) -> Result<ScalarValue> {
    let ty = field.data_type();
    let value = match value {
        Some(v) => v.clone(),
        None => match ty {
            DataType::Boolean => V::Bool(false),
            DataType::Int16 | DataType::Int32 | DataType::Int64 => V::Int(0),
            DataType::Float32 | DataType::Float64 => V::Float(0.0),
            _ => V::Null,
        },
    };
    let text = match value {
        V::Null => return ScalarValue::try_from(ty),
        V::Text(s) => s,
        V::Char(c) => c.to_string(),
        V::List(items) => {
            if let DataType::List(_) = ty {
                let values: Vec<ScalarValue> = items
                    .into_iter()
                    .map(|s| ScalarValue::Utf8(Some(s)))
                    .collect();
                return ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Utf8))
                    .cast_to(ty);
            }
            array_text(&items)
        }
        V::Int(i) => return ScalarValue::Int64(Some(i)).cast_to(ty),
        V::Float(f) => return ScalarValue::Float64(Some(f)).cast_to(ty),
        V::Bool(b) => return ScalarValue::Boolean(Some(b)).cast_to(ty),
    };
    ScalarValue::Utf8(Some(text)).cast_to(ty)
}

/// A batch of `schema` from rows that name their columns.
pub fn batch(schema: &SchemaRef, rows: &[Row]) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| -> Result<ArrayRef> {
            if rows.is_empty() {
                return Ok(new_null_array(field.data_type(), 0));
            }
            let values = rows
                .iter()
                .map(|row| {
                    let v = row
                        .iter()
                        .find(|(name, _)| *name == field.name())
                        .map(|(_, v)| v);
                    scalar(field, v)
                })
                .collect::<Result<Vec<_>>>()?;
            ScalarValue::iter_to_array(values)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// A schema of nullable columns.
pub fn schema(fields: &[(&str, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// `schema` with more columns at the end (columns psql 15 reads that the shipped PostgreSQL
/// catalog export no longer has).
pub fn with_columns(schema: &SchemaRef, extra: &[(&str, DataType)]) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for (n, t) in extra {
        if schema.field_with_name(n).is_err() {
            fields.push(Field::new(*n, t.clone(), true));
        }
    }
    Arc::new(Schema::new(fields))
}

/// The smallint list type of `conkey` and `indkey` (`int2vector` when `vector`: printed
/// `1 2` rather than `{1,2}`).
pub fn int2_list(vector: bool) -> Field {
    number_list(DataType::Int16, vector.then_some("int2vector"))
}

/// The oid list type of `indclass` (`oidvector`).
pub fn oid_vector() -> Field {
    number_list(DataType::UInt32, Some("oidvector"))
}

fn number_list(item: DataType, pg_type: Option<&str>) -> Field {
    let field = Field::new(
        "",
        DataType::List(Arc::new(Field::new_list_field(item, true))),
        true,
    );
    match pg_type {
        Some(t) => {
            field.with_metadata([(crate::types::PG_TYPE_KEY.to_string(), t.to_string())].into())
        }
        None => field,
    }
}

/// `(schema, batches)` with a text column of number lists (`{1,2}` or `1 2`, as the
/// shipped catalog export holds them) turned into `field`'s smallint list type.
pub fn int2_lists(
    (schema, batches): (SchemaRef, Vec<RecordBatch>),
    column: &str,
    field: Field,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    use datafusion::arrow::array::{Array, AsArray, Int16Builder, ListBuilder};
    let Ok(at) = schema.index_of(column) else {
        return Ok((schema, batches));
    };
    let field = field.with_name(column);
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[at] = field;
    let new_schema = Arc::new(Schema::new(fields));
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let mut columns = batch.columns().to_vec();
        let text = datafusion::arrow::compute::cast(&columns[at], &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let mut b = ListBuilder::new(Int16Builder::new());
        for i in 0..text.len() {
            if text.is_null(i) {
                b.append(false);
                continue;
            }
            for n in text
                .value(i)
                .trim_matches(|c| c == '{' || c == '}')
                .split([',', ' '])
                .filter_map(|n| n.trim().parse::<i16>().ok())
            {
                b.values().append_value(n);
            }
            b.append(true);
        }
        let list: ArrayRef = Arc::new(b.finish());
        columns[at] = datafusion::arrow::compute::cast(&list, new_schema.field(at).data_type())?;
        out.push(RecordBatch::try_new(new_schema.clone(), columns)?);
    }
    Ok((new_schema, out))
}

/// `schema` with one column's type changed.
pub fn with_type(schema: &SchemaRef, column: &str, ty: DataType) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| match f.name() == column {
                true => Field::new(f.name(), ty.clone(), true),
                false => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    ))
}
