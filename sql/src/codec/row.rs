//! The value encoding of a stored row.
//!
//! Layout: a format byte (`1`), a null bitmap of `ceil(n / 8)` bytes, then each non-null column
//! in declaration order: fixed-width little-endian for numbers and times, `u32` length +
//! bytes for text and bytea. Decoding appends straight into Arrow builders.

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::IntervalMonthDayNano;

use super::column::{ColumnBuilder, ColumnRef, interval_parts};
use crate::error::{Error, Result};
use crate::types::SqlType;

const FORMAT_V1: u8 = 1;

/// Encodes row `row` of `cols` (all columns of the table, in order).
pub fn encode_row(cols: &[ColumnRef<'_>], row: usize, out: &mut Vec<u8>) {
    out.push(FORMAT_V1);
    let bitmap_at = out.len();
    out.resize(bitmap_at + cols.len().div_ceil(8), 0);
    for (i, col) in cols.iter().enumerate() {
        if col.is_null(row) {
            out[bitmap_at + i / 8] |= 1 << (i % 8);
            continue;
        }
        encode_cell(col, row, out);
    }
}

fn encode_cell(col: &ColumnRef<'_>, row: usize, out: &mut Vec<u8>) {
    match col {
        ColumnRef::Bool(a) => out.push(a.value(row) as u8),
        ColumnRef::I16(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
        ColumnRef::I32(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
        ColumnRef::I64(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
        ColumnRef::F32(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
        ColumnRef::F64(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
        ColumnRef::Dec(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
        ColumnRef::Str(a) => put_bytes(a.value(row).as_bytes(), out),
        ColumnRef::Bin(a) => put_bytes(a.value(row), out),
        ColumnRef::Date(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
        ColumnRef::Ts(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
        ColumnRef::Iv(a) => {
            let (m, d, n) = interval_parts(a.value(row));
            out.extend_from_slice(&m.to_le_bytes());
            out.extend_from_slice(&d.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Decodes encoded rows into Arrow columns, one builder per table column.
pub struct RowDecoder {
    builders: Vec<ColumnBuilder>,
    /// Which table columns to keep (others are skipped while decoding).
    keep: Vec<bool>,
}

impl RowDecoder {
    pub fn new(types: &[SqlType], projection: Option<&[usize]>, capacity: usize) -> Self {
        let keep: Vec<bool> = match projection {
            Some(p) => (0..types.len()).map(|i| p.contains(&i)).collect(),
            None => vec![true; types.len()],
        };
        let builders = types
            .iter()
            .map(|t| ColumnBuilder::new(t, capacity))
            .collect();
        Self { builders, keep }
    }

    pub fn append(&mut self, value: &[u8]) -> Result<()> {
        let n = self.builders.len();
        let corrupt = || Error::Storage("corrupt row encoding".into());
        if value.first() != Some(&FORMAT_V1) || value.len() < 1 + n.div_ceil(8) {
            return Err(corrupt());
        }
        let bitmap = &value[1..1 + n.div_ceil(8)];
        let mut rest = &value[1 + n.div_ceil(8)..];
        for (i, builder) in self.builders.iter_mut().enumerate() {
            if bitmap[i / 8] & (1 << (i % 8)) != 0 {
                if self.keep[i] {
                    builder.append_null();
                }
                continue;
            }
            decode_cell(builder, &mut rest, self.keep[i]).ok_or_else(corrupt)?;
        }
        Ok(())
    }

    /// Finishes the kept columns, in table order.
    pub fn finish(self) -> Result<Vec<ArrayRef>> {
        self.builders
            .into_iter()
            .zip(self.keep)
            .filter(|(_, keep)| *keep)
            .map(|(b, _)| b.finish())
            .collect()
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn fixed<const N: usize>(rest: &mut &[u8]) -> Option<[u8; N]> {
    take(rest, N).map(|b| b.try_into().expect("length checked"))
}

fn var<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_le_bytes(fixed::<4>(rest)?) as usize;
    take(rest, len)
}

fn decode_cell(b: &mut ColumnBuilder, rest: &mut &[u8], keep: bool) -> Option<()> {
    macro_rules! prim {
        ($builder:expr, $t:ty, $n:literal) => {{
            let v = <$t>::from_le_bytes(fixed::<$n>(rest)?);
            if keep {
                $builder.append_value(v);
            }
        }};
    }
    match b {
        ColumnBuilder::Bool(b) => {
            let v = take(rest, 1)?[0] != 0;
            if keep {
                b.append_value(v);
            }
        }
        ColumnBuilder::I16(b) => prim!(b, i16, 2),
        ColumnBuilder::I32(b) => prim!(b, i32, 4),
        ColumnBuilder::I64(b) => prim!(b, i64, 8),
        ColumnBuilder::F32(b) => prim!(b, f32, 4),
        ColumnBuilder::F64(b) => prim!(b, f64, 8),
        ColumnBuilder::Dec(b, _) => prim!(b, i128, 16),
        ColumnBuilder::Date(b) => prim!(b, i32, 4),
        ColumnBuilder::Ts(b, _) => prim!(b, i64, 8),
        ColumnBuilder::Str(b) => {
            let bytes = var(rest)?;
            if keep {
                b.append_value(std::str::from_utf8(bytes).ok()?);
            }
        }
        ColumnBuilder::Bin(b) => {
            let bytes = var(rest)?;
            if keep {
                b.append_value(bytes);
            }
        }
        ColumnBuilder::Iv(b) => {
            let m = i32::from_le_bytes(fixed::<4>(rest)?);
            let d = i32::from_le_bytes(fixed::<4>(rest)?);
            let n = i64::from_le_bytes(fixed::<8>(rest)?);
            if keep {
                b.append_value(IntervalMonthDayNano::new(m, d, n));
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};

    use super::*;

    #[test]
    fn round_trip_with_nulls_and_projection() {
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![1, 2]));
        let names: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None]));
        let types = [SqlType::Int8, SqlType::Text];
        let cols = [
            ColumnRef::new(&ids, &types[0]).unwrap(),
            ColumnRef::new(&names, &types[1]).unwrap(),
        ];
        let mut dec = RowDecoder::new(&types, None, 2);
        let mut only_names = RowDecoder::new(&types, Some(&[1]), 2);
        for row in 0..2 {
            let mut buf = Vec::new();
            encode_row(&cols, row, &mut buf);
            dec.append(&buf).unwrap();
            only_names.append(&buf).unwrap();
        }
        let out = dec.finish().unwrap();
        assert_eq!(out[0].as_ref(), ids.as_ref());
        assert_eq!(out[1].as_ref(), names.as_ref());
        let out = only_names.finish().unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ref(), names.as_ref());
    }

    #[test]
    fn corrupt_rows_are_errors_not_panics() {
        let mut dec = RowDecoder::new(&[SqlType::Int8, SqlType::Text], None, 1);
        assert!(dec.append(&[1, 0, 1, 2]).is_err());
        assert!(dec.append(&[]).is_err());
    }
}
