//! Arrow batches to Postgres rows, in text or binary format.
//!
//! Standard types go through arrow-pg's encoders. `uuid` and `jsonb` columns are Utf8 in Arrow
//! (their field metadata names the Postgres type, see `eddy_sql::types::PG_TYPE_KEY`) and are
//! encoded here, since arrow-pg only knows Arrow types.

use std::error::Error as StdError;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use arrow_pg::datatypes::{field_into_pg_type, into_pg_type};
use bytes::{BufMut, BytesMut};
use eddy_sql::types::PG_TYPE_KEY;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use pgwire::types::ToSqlText;
use pgwire::types::format::FormatOptions;
use postgres_types::{IsNull, ToSql, to_sql_checked};

/// The Postgres type of an Arrow field.
pub fn pg_type(field: &Arc<Field>) -> PgWireResult<Type> {
    match field.metadata().get(PG_TYPE_KEY).map(String::as_str) {
        Some("uuid") => Ok(Type::UUID),
        Some("jsonb") => Ok(Type::JSONB),
        _ => match field.data_type() {
            // Arrow's unsigned and small types have no Postgres twin: widen.
            DataType::Null => Ok(Type::TEXT),
            other if matches!(other, DataType::Dictionary(..)) => field_into_pg_type(field),
            other => into_pg_type(other),
        },
    }
}

pub fn fields(schema: &Schema, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            Ok(FieldInfo::new(
                f.name().clone(),
                None,
                None,
                pg_type(f)?,
                format.format_for(i),
            ))
        })
        .collect()
}

/// Encodes every row of `batch`.
pub fn encode_batch(
    fields: &Arc<Vec<FieldInfo>>,
    batch: &RecordBatch,
) -> Vec<PgWireResult<DataRow>> {
    let mut encoder = DataRowEncoder::new(fields.clone());
    let schema = batch.schema();
    let columns = batch.columns();
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut result = Ok(());
        for (i, array) in columns.iter().enumerate() {
            result = encode_cell(&mut encoder, array, row, schema.field(i), &fields[i]);
            if result.is_err() {
                break;
            }
        }
        rows.push(result.map(|_| encoder.take_row()));
    }
    rows
}

fn encode_cell(
    encoder: &mut DataRowEncoder,
    array: &ArrayRef,
    row: usize,
    field: &Field,
    info: &FieldInfo,
) -> PgWireResult<()> {
    let ty = info.datatype();
    if *ty == Type::UUID || *ty == Type::JSONB {
        let strings = array.as_string::<i32>();
        let value = (!strings.is_null(row)).then(|| TextAs(strings.value(row).to_string()));
        return encoder.encode_field_with_type_and_format(
            &value,
            ty,
            info.format(),
            &FormatOptions::default(),
        );
    }
    arrow_pg::encoder::encode_value(encoder, array, row, field, info)
}

/// A value held as text whose binary form is the Postgres type's own (uuid, jsonb).
#[derive(Debug)]
struct TextAs(String);

impl ToSql for TextAs {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match *ty {
            Type::UUID => {
                let hex: String = self.0.chars().filter(|c| *c != '-').collect();
                if hex.len() != 32 {
                    return Err(format!("invalid uuid {}", self.0).into());
                }
                for i in 0..16 {
                    out.put_u8(u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?);
                }
            }
            Type::JSONB => {
                out.put_u8(1);
                out.put_slice(self.0.as_bytes());
            }
            _ => out.put_slice(self.0.as_bytes()),
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::UUID | Type::JSONB | Type::JSON | Type::TEXT)
    }

    to_sql_checked!();
}

impl ToSqlText for TextAs {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        _format_options: &FormatOptions,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }
}

/// The field format for every column when the client asked for one format for all.
pub fn uniform(format: FieldFormat) -> Format {
    match format {
        FieldFormat::Text => Format::UnifiedText,
        FieldFormat::Binary => Format::UnifiedBinary,
    }
}
