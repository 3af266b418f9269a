//! Order-preserving encoding of primary keys.
//!
//! Invariant: for two key tuples `a < b` in SQL order, `encode(a) < encode(b)` in byte order.
//! Integers are big-endian with the sign bit flipped; floats use the IEEE total-order trick;
//! strings and bytes escape `0x00` as `0x00 0xff` and end with `0x00 0x01`, so a shorter
//! string sorts before any longer one that extends it. Keys never hold NULL (primary-key
//! columns are NOT NULL).

use datafusion::arrow::array::Array;
use datafusion::scalar::ScalarValue;

use super::column::{ColumnRef, interval_parts};
use crate::error::{Error, Result};
use crate::types::SqlType;

pub use crate::keys::table_prefix;

/// Appends the key encoding of `col[row]`.
pub fn encode_value(col: &ColumnRef<'_>, row: usize, out: &mut Vec<u8>) {
    match col {
        ColumnRef::Bool(a) => out.push(a.value(row) as u8),
        ColumnRef::I16(a) => out.extend_from_slice(&((a.value(row) as u16) ^ 0x8000).to_be_bytes()),
        ColumnRef::I32(a) => {
            out.extend_from_slice(&((a.value(row) as u32) ^ 0x8000_0000).to_be_bytes())
        }
        ColumnRef::I64(a) => encode_i64(a.value(row), out),
        ColumnRef::F32(a) => {
            let bits = normalize_f32(a.value(row)).to_bits();
            let ordered = if bits >> 31 == 1 {
                !bits
            } else {
                bits ^ (1 << 31)
            };
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        ColumnRef::F64(a) => {
            let bits = normalize_f64(a.value(row)).to_bits();
            let ordered = if bits >> 63 == 1 {
                !bits
            } else {
                bits ^ (1 << 63)
            };
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        ColumnRef::Dec(a) => {
            out.extend_from_slice(&((a.value(row) as u128) ^ (1 << 127)).to_be_bytes())
        }
        ColumnRef::Str(a) => encode_bytes(a.value(row).as_bytes(), out),
        ColumnRef::Bin(a) => encode_bytes(a.value(row), out),
        ColumnRef::Date(a) => {
            out.extend_from_slice(&((a.value(row) as u32) ^ 0x8000_0000).to_be_bytes())
        }
        ColumnRef::Ts(a) => encode_i64(a.value(row), out),
        ColumnRef::Iv(a) => {
            let (m, d, n) = interval_parts(a.value(row));
            out.extend_from_slice(&((m as u32) ^ 0x8000_0000).to_be_bytes());
            out.extend_from_slice(&((d as u32) ^ 0x8000_0000).to_be_bytes());
            encode_i64(n, out);
        }
    }
}

/// Appends the key encoding of a literal, cast to the column's type first.
/// Returns `Ok(false)` when the literal is NULL or cannot be represented in the column's type
/// (such a literal matches no key).
pub fn encode_scalar(value: &ScalarValue, ty: &SqlType, out: &mut Vec<u8>) -> Result<bool> {
    if value.is_null() {
        return Ok(false);
    }
    let target = ty.arrow_type();
    let cast = if value.data_type() == target {
        value.clone()
    } else {
        match value.cast_to(&target) {
            Ok(cast) => cast,
            Err(_) => return Ok(false),
        }
    };
    let array = cast.to_array().map_err(Error::from)?;
    if array.is_null(0) {
        return Ok(false);
    }
    encode_value(&ColumnRef::new(&array, ty)?, 0, out);
    Ok(true)
}

fn encode_i64(v: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
}

fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

fn normalize_f32(v: f32) -> f32 {
    if v == 0.0 {
        0.0
    } else if v.is_nan() {
        f32::NAN
    } else {
        v
    }
}

fn normalize_f64(v: f64) -> f64 {
    if v == 0.0 {
        0.0
    } else if v.is_nan() {
        f64::NAN
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Float64Array, Int32Array, StringArray};

    use super::*;

    fn keys(array: ArrayRef, ty: &SqlType) -> Vec<Vec<u8>> {
        let col = ColumnRef::new(&array, ty).unwrap();
        (0..array.len())
            .map(|i| {
                let mut k = Vec::new();
                encode_value(&col, i, &mut k);
                k
            })
            .collect()
    }

    fn assert_sorted(k: &[Vec<u8>]) {
        for w in k.windows(2) {
            assert!(w[0] < w[1], "{:?} !< {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn integers_sort_like_sql() {
        let a: ArrayRef = Arc::new(Int32Array::from(vec![i32::MIN, -5, -1, 0, 1, 7, i32::MAX]));
        assert_sorted(&keys(a, &SqlType::Int4));
    }

    #[test]
    fn floats_sort_like_sql() {
        let a: ArrayRef = Arc::new(Float64Array::from(vec![
            f64::NEG_INFINITY,
            -2.5,
            -0.0001,
            0.0,
            1e-9,
            3.0,
            f64::INFINITY,
        ]));
        assert_sorted(&keys(a, &SqlType::Float8));
    }

    #[test]
    fn strings_sort_like_sql_even_with_nul_and_prefixes() {
        let a: ArrayRef = Arc::new(StringArray::from(vec!["", "a", "a\0", "a\0b", "ab", "b"]));
        assert_sorted(&keys(a, &SqlType::Text));
    }

    #[test]
    fn scalar_literal_encodes_like_the_column() {
        let a: ArrayRef = Arc::new(Int32Array::from(vec![42]));
        let from_col = keys(a, &SqlType::Int4).remove(0);
        let mut from_lit = Vec::new();
        assert!(
            encode_scalar(&ScalarValue::Int64(Some(42)), &SqlType::Int4, &mut from_lit).unwrap()
        );
        assert_eq!(from_col, from_lit);
        assert!(!encode_scalar(&ScalarValue::Int64(None), &SqlType::Int4, &mut from_lit).unwrap());
    }
}
