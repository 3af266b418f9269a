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
use eddy_sql::types::{PG_TYPE_KEY, float_text, timestamp_text};
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
        Some("int2vector") => Ok(Type::INT2_VECTOR),
        Some("oidvector") => Ok(Type::OID_VECTOR),
        _ => match field.data_type() {
            DataType::Null => Ok(Type::TEXT),
            // Eddy's `oid` type (see eddy_sql::types::PgTypePlanner).
            DataType::UInt32 => Ok(Type::OID),
            DataType::List(item) if item.data_type() == &DataType::UInt32 => Ok(Type::OID_ARRAY),
            DataType::Dictionary(..) => field_into_pg_type(field),
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
    // NULL is NULL whatever the type (arrow-pg writes a zero interval for a NULL one).
    if array.is_null(row) {
        return encoder.encode_field_with_type_and_format(
            &None::<i32>,
            ty,
            info.format(),
            &FormatOptions::default(),
        );
    }
    if *ty == Type::UUID || *ty == Type::JSONB {
        let value = TextAs(array.as_string::<i32>().value(row).to_string());
        return encoder.encode_field_with_type_and_format(
            &value,
            ty,
            info.format(),
            &FormatOptions::default(),
        );
    }
    // int2vector (pg_index.indkey): space-separated numbers in text, an int2 array in binary.
    if (ty == &Type::INT2_VECTOR || ty == &Type::OID_VECTOR)
        && let DataType::List(_) = array.data_type()
    {
        let list = array.as_list::<i32>().value(row);
        let list = arrow::compute::cast(&list, &DataType::Int64)
            .map_err(|e| pgwire::error::PgWireError::ApiError(Box::new(e)))?;
        let items: Vec<Option<i64>> = list
            .as_primitive::<arrow::datatypes::Int64Type>()
            .iter()
            .collect();
        if info.format() == FieldFormat::Binary {
            if ty == &Type::INT2_VECTOR {
                let items: Vec<Option<i16>> = items.iter().map(|i| i.map(|i| i as i16)).collect();
                return encoder.encode_field_with_type_and_format(
                    &items,
                    &Type::INT2_ARRAY,
                    FieldFormat::Binary,
                    &FormatOptions::default(),
                );
            }
            let items: Vec<Option<u32>> = items.iter().map(|i| i.map(|i| i as u32)).collect();
            return encoder.encode_field_with_type_and_format(
                &items,
                &Type::OID_ARRAY,
                FieldFormat::Binary,
                &FormatOptions::default(),
            );
        }
        let text: Vec<String> = items
            .iter()
            .map(|i| i.map(|i| i.to_string()).unwrap_or_default())
            .collect();
        return encoder.encode_field_with_type_and_format(
            &text.join(" "),
            &Type::TEXT,
            FieldFormat::Text,
            &FormatOptions::default(),
        );
    }
    // oid and oid[]: arrow-pg would write them as int8.
    match array.data_type() {
        DataType::UInt32 => {
            let a = array.as_primitive::<arrow::datatypes::UInt32Type>();
            return encoder.encode_field_with_type_and_format(
                &a.value(row),
                ty,
                info.format(),
                &FormatOptions::default(),
            );
        }
        DataType::List(item) if item.data_type() == &DataType::UInt32 => {
            let list = array.as_list::<i32>().value(row);
            let items: Vec<Option<u32>> = list
                .as_primitive::<arrow::datatypes::UInt32Type>()
                .iter()
                .collect();
            return encoder.encode_field_with_type_and_format(
                &items,
                ty,
                info.format(),
                &FormatOptions::default(),
            );
        }
        _ => {}
    }
    if info.format() == FieldFormat::Binary
        && let DataType::Decimal128(_, scale) = array.data_type()
    {
        let a = array.as_primitive::<arrow::datatypes::Decimal128Type>();
        return encoder.encode_field_with_type_and_format(
            &Numeric(a.value(row), *scale),
            ty,
            FieldFormat::Binary,
            &FormatOptions::default(),
        );
    }
    if info.format() == FieldFormat::Text
        && let Some(text) = postgres_text(array, row)
    {
        return encoder.encode_field_with_type_and_format(
            &TextAs(text),
            ty,
            FieldFormat::Text,
            &FormatOptions::default(),
        );
    }
    arrow_pg::encoder::encode_value(encoder, array, row, field, info)
}

/// The text PostgreSQL prints for a non-NULL value of the types whose text form arrow-pg
/// writes differently (floats, timestamps); `None` for the others.
pub(crate) fn postgres_text(array: &ArrayRef, row: usize) -> Option<String> {
    use arrow::datatypes::{
        Float32Type, Float64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
        TimestampNanosecondType, TimestampSecondType,
    };
    Some(match array.data_type() {
        DataType::Float64 => float_text(array.as_primitive::<Float64Type>().value(row), 15),
        DataType::Float32 => float_text(array.as_primitive::<Float32Type>().value(row) as f64, 6),
        // PostgreSQL keeps microseconds (now() and DataFusion's own timestamps are in
        // nanoseconds).
        DataType::Timestamp(unit, tz) => {
            let micros = match unit {
                TimeUnit::Second => {
                    array.as_primitive::<TimestampSecondType>().value(row) * 1_000_000
                }
                TimeUnit::Millisecond => {
                    array.as_primitive::<TimestampMillisecondType>().value(row) * 1_000
                }
                TimeUnit::Microsecond => {
                    array.as_primitive::<TimestampMicrosecondType>().value(row)
                }
                TimeUnit::Nanosecond => array
                    .as_primitive::<TimestampNanosecondType>()
                    .value(row)
                    .div_euclid(1_000),
            };
            timestamp_text(micros, tz.is_some())
        }
        _ => return None,
    })
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

/// A decimal in Postgres' binary numeric form (base-10000 digits), keeping its scale even
/// for zero (0.00 stays 0.00).
#[derive(Debug)]
struct Numeric(i128, i8);

impl ToSql for Numeric {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let scale = self.1.max(0) as usize;
        let abs = self.0.unsigned_abs();
        let pow = 10u128.pow(scale as u32);
        let int_digits = (abs / pow).to_string();
        let mut frac_digits = format!("{:0width$}", abs % pow, width = scale);
        if scale == 0 {
            frac_digits.clear();
        }
        let int_pad = (4 - int_digits.len() % 4) % 4;
        let int_str = format!("{}{int_digits}", "0".repeat(int_pad));
        let frac_pad = (4 - frac_digits.len() % 4) % 4;
        let frac_str = format!("{frac_digits}{}", "0".repeat(frac_pad));
        let group = |s: &str| -> Vec<i16> {
            s.as_bytes()
                .chunks(4)
                .map(|c| {
                    std::str::from_utf8(c)
                        .expect("ascii")
                        .parse()
                        .expect("digits")
                })
                .collect()
        };
        let int_groups = group(&int_str);
        let mut weight = int_groups.len() as i16 - 1;
        let mut digits: Vec<i16> = int_groups.into_iter().chain(group(&frac_str)).collect();
        while digits.first() == Some(&0) {
            digits.remove(0);
            weight -= 1;
        }
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            weight = 0;
        }
        out.put_i16(digits.len() as i16);
        out.put_i16(weight);
        out.put_u16(if self.0 < 0 { 0x4000 } else { 0 });
        out.put_u16(scale as u16);
        for d in digits {
            out.put_i16(d);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

impl ToSqlText for Numeric {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
        _format_options: &FormatOptions,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_slice(
            rust_decimal::Decimal::from_i128_with_scale(self.0, self.1.max(0) as u32)
                .to_string()
                .as_bytes(),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_binary_keeps_scale() {
        let mut out = BytesMut::new();
        Numeric(0, 2).to_sql(&Type::NUMERIC, &mut out).unwrap();
        assert_eq!(&out[..], &[0, 0, 0, 0, 0, 0, 0, 2]);
        let mut out = BytesMut::new();
        Numeric(-12345, 2).to_sql(&Type::NUMERIC, &mut out).unwrap();
        // -123.45 = -(123 + 4500/10000): 2 digits, weight 0, negative, scale 2.
        assert_eq!(&out[..], &[0, 2, 0, 0, 0x40, 0, 0, 2, 0, 123, 0x11, 0x94]);
    }

    #[test]
    fn floats_print_like_postgres() {
        assert_eq!(float_text(90.0, 15), "90");
        assert_eq!(float_text(1.5, 15), "1.5");
        assert_eq!(float_text(1e20, 15), "1e+20");
        assert_eq!(float_text(1.5e-7, 15), "1.5e-07");
        assert_eq!(float_text(0.1, 15), "0.1");
        assert_eq!(float_text(0.1f32 as f64, 6), "0.1");
        assert_eq!(float_text(f64::NAN, 15), "NaN");
    }

    #[test]
    fn timestamps_print_like_postgres() {
        assert_eq!(timestamp_text(0, false), "1970-01-01 00:00:00");
        assert_eq!(timestamp_text(1_500_000, true), "1970-01-01 00:00:01.5+00");
    }
}
