//! Typed access to one Arrow column, and a typed builder, for each [`SqlType`].

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder,
    Date32Array, Date32Builder, Decimal128Array, Decimal128Builder, Float32Array, Float32Builder,
    Float64Array, Float64Builder, Int16Array, Int16Builder, Int32Array, Int32Builder, Int64Array,
    Int64Builder, IntervalMonthDayNanoArray, IntervalMonthDayNanoBuilder, StringArray,
    StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    IntervalMonthDayNano, IntervalMonthDayNanoType, TimestampMicrosecondType,
};

use crate::error::{Error, Result};
use crate::types::SqlType;

/// A column of an Arrow batch, downcast once to its concrete array type.
pub enum ColumnRef<'a> {
    Bool(&'a BooleanArray),
    I16(&'a Int16Array),
    I32(&'a Int32Array),
    I64(&'a Int64Array),
    F32(&'a Float32Array),
    F64(&'a Float64Array),
    Dec(&'a Decimal128Array),
    Str(&'a StringArray),
    Bin(&'a BinaryArray),
    Date(&'a Date32Array),
    Ts(&'a TimestampMicrosecondArray),
    Iv(&'a IntervalMonthDayNanoArray),
}

impl<'a> ColumnRef<'a> {
    /// `array` must already have the Arrow type of `ty` (callers cast first).
    pub fn new(array: &'a ArrayRef, ty: &SqlType) -> Result<Self> {
        let expected = ty.arrow_type();
        if array.data_type() != &expected {
            return Err(Error::internal(format!(
                "column has type {}, expected {expected}",
                array.data_type()
            )));
        }
        Ok(match ty {
            SqlType::Bool => ColumnRef::Bool(array.as_boolean()),
            SqlType::Int2 => ColumnRef::I16(array.as_primitive::<Int16Type>()),
            SqlType::Int4 => ColumnRef::I32(array.as_primitive::<Int32Type>()),
            SqlType::Int8 => ColumnRef::I64(array.as_primitive::<Int64Type>()),
            SqlType::Float4 => ColumnRef::F32(array.as_primitive::<Float32Type>()),
            SqlType::Float8 => ColumnRef::F64(array.as_primitive::<Float64Type>()),
            SqlType::Numeric(_) => ColumnRef::Dec(array.as_primitive::<Decimal128Type>()),
            SqlType::Text | SqlType::Varchar(_) | SqlType::Uuid | SqlType::Jsonb => {
                ColumnRef::Str(array.as_string::<i32>())
            }
            SqlType::Bytea => ColumnRef::Bin(array.as_binary::<i32>()),
            SqlType::Date => ColumnRef::Date(array.as_primitive::<Date32Type>()),
            SqlType::Timestamp | SqlType::Timestamptz => {
                ColumnRef::Ts(array.as_primitive::<TimestampMicrosecondType>())
            }
            SqlType::Interval => ColumnRef::Iv(array.as_primitive::<IntervalMonthDayNanoType>()),
        })
    }

    pub fn is_null(&self, row: usize) -> bool {
        match self {
            ColumnRef::Bool(a) => a.is_null(row),
            ColumnRef::I16(a) => a.is_null(row),
            ColumnRef::I32(a) => a.is_null(row),
            ColumnRef::I64(a) => a.is_null(row),
            ColumnRef::F32(a) => a.is_null(row),
            ColumnRef::F64(a) => a.is_null(row),
            ColumnRef::Dec(a) => a.is_null(row),
            ColumnRef::Str(a) => a.is_null(row),
            ColumnRef::Bin(a) => a.is_null(row),
            ColumnRef::Date(a) => a.is_null(row),
            ColumnRef::Ts(a) => a.is_null(row),
            ColumnRef::Iv(a) => a.is_null(row),
        }
    }
}

/// Builds one Arrow column of a [`SqlType`] from decoded values.
pub enum ColumnBuilder {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Dec(Decimal128Builder, SqlType),
    Str(StringBuilder),
    Bin(BinaryBuilder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder, SqlType),
    Iv(IntervalMonthDayNanoBuilder),
}

impl ColumnBuilder {
    pub fn new(ty: &SqlType, capacity: usize) -> Self {
        match ty {
            SqlType::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(capacity)),
            SqlType::Int2 => ColumnBuilder::I16(Int16Builder::with_capacity(capacity)),
            SqlType::Int4 => ColumnBuilder::I32(Int32Builder::with_capacity(capacity)),
            SqlType::Int8 => ColumnBuilder::I64(Int64Builder::with_capacity(capacity)),
            SqlType::Float4 => ColumnBuilder::F32(Float32Builder::with_capacity(capacity)),
            SqlType::Float8 => ColumnBuilder::F64(Float64Builder::with_capacity(capacity)),
            SqlType::Numeric(_) => {
                ColumnBuilder::Dec(Decimal128Builder::with_capacity(capacity), ty.clone())
            }
            SqlType::Text | SqlType::Varchar(_) | SqlType::Uuid | SqlType::Jsonb => {
                ColumnBuilder::Str(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            SqlType::Bytea => ColumnBuilder::Bin(BinaryBuilder::with_capacity(capacity, 0)),
            SqlType::Date => ColumnBuilder::Date(Date32Builder::with_capacity(capacity)),
            SqlType::Timestamp | SqlType::Timestamptz => ColumnBuilder::Ts(
                TimestampMicrosecondBuilder::with_capacity(capacity),
                ty.clone(),
            ),
            SqlType::Interval => {
                ColumnBuilder::Iv(IntervalMonthDayNanoBuilder::with_capacity(capacity))
            }
        }
    }

    pub fn append_null(&mut self) {
        match self {
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::I16(b) => b.append_null(),
            ColumnBuilder::I32(b) => b.append_null(),
            ColumnBuilder::I64(b) => b.append_null(),
            ColumnBuilder::F32(b) => b.append_null(),
            ColumnBuilder::F64(b) => b.append_null(),
            ColumnBuilder::Dec(b, _) => b.append_null(),
            ColumnBuilder::Str(b) => b.append_null(),
            ColumnBuilder::Bin(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Ts(b, _) => b.append_null(),
            ColumnBuilder::Iv(b) => b.append_null(),
        }
    }

    pub fn finish(self) -> Result<ArrayRef> {
        Ok(match self {
            ColumnBuilder::Bool(mut b) => Arc::new(b.finish()),
            ColumnBuilder::I16(mut b) => Arc::new(b.finish()),
            ColumnBuilder::I32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::I64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::F32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::F64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Dec(mut b, ty) => {
                let datafusion::arrow::datatypes::DataType::Decimal128(p, s) = ty.arrow_type()
                else {
                    return Err(Error::internal("numeric column without decimal type"));
                };
                Arc::new(b.finish().with_precision_and_scale(p, s)?)
            }
            ColumnBuilder::Str(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Bin(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Date(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Ts(mut b, ty) => {
                let array = b.finish();
                match ty {
                    SqlType::Timestamptz => Arc::new(array.with_timezone("+00:00")),
                    _ => Arc::new(array),
                }
            }
            ColumnBuilder::Iv(mut b) => Arc::new(b.finish()),
        })
    }
}

/// Interval parts as stored: months, days, nanoseconds.
pub fn interval_parts(v: IntervalMonthDayNano) -> (i32, i32, i64) {
    (v.months, v.days, v.nanoseconds)
}
