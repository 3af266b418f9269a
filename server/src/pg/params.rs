//! Bound parameter values to DataFusion scalars.
//!
//! Text-format values become Utf8 and are cast to the type the plan inferred when bound (the
//! way PostgreSQL reads an untyped literal). Binary values follow the wire type: big-endian
//! integers and floats, days and microseconds since 2000-01-01 for dates and timestamps, raw
//! bytes for uuid, a version byte before jsonb's text.

use datafusion::arrow::datatypes::IntervalMonthDayNano;
use datafusion::scalar::ScalarValue;
use eddy_sql::Error;
use eddy_sql::error::sqlstate;
use pgwire::api::Type;

/// Days from 1970-01-01 to 2000-01-01, Postgres' epoch.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A binary value that breaks its type's format (PostgreSQL's "incorrect binary data format").
fn invalid(ty: &Type, why: &str) -> Error {
    Error::user(
        sqlstate::INVALID_BINARY_REPRESENTATION,
        format!(
            "incorrect binary data format in parameter of type {}: {why}",
            ty.name()
        ),
    )
}

/// A well-formed binary value outside the range PostgreSQL (or Arrow) can hold.
fn out_of_range(what: &str) -> Error {
    Error::user(
        sqlstate::DATETIME_FIELD_OVERFLOW,
        format!("{what} out of range"),
    )
}

fn fixed<const N: usize>(raw: &[u8], ty: &Type) -> Result<[u8; N], Error> {
    raw.try_into()
        .map_err(|_| invalid(ty, &format!("expected {N} bytes, got {}", raw.len())))
}

pub fn from_text(raw: &[u8], ty: &Type) -> Result<ScalarValue, Error> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| Error::user("22021", "invalid byte sequence for encoding \"UTF8\""))?;
    if *ty == Type::BYTEA {
        return Ok(ScalarValue::Binary(Some(eddy_sql::engine::parse_bytea(
            text,
        )?)));
    }
    if *ty == Type::INTERVAL
        && let Some(iv) = interval_text(text)
    {
        return Ok(ScalarValue::IntervalMonthDayNano(Some(iv)));
    }
    // Arrays in text form (`{a,b}`), as lib/pq and pgjdbc send them: a list of text items,
    // cast to the element type with the other text parameters.
    if matches!(ty.kind(), postgres_types::Kind::Array(_)) {
        let items = eddy_sql::types::array_text_items(text).ok_or_else(|| {
            Error::user(
                sqlstate::INVALID_TEXT_REPRESENTATION,
                format!("malformed array literal: \"{text}\""),
            )
        })?;
        let items: Vec<ScalarValue> = items.into_iter().map(ScalarValue::Utf8).collect();
        return Ok(ScalarValue::List(ScalarValue::new_list_nullable(
            &items,
            &datafusion::arrow::datatypes::DataType::Utf8,
        )));
    }
    Ok(ScalarValue::Utf8(Some(text.to_string())))
}

/// A one-dimensional array in binary form, for the element types clients send arrays of.
fn binary_array(raw: &[u8], ty: &Type) -> Result<ScalarValue, Error> {
    use datafusion::arrow::datatypes::DataType;
    use postgres_types::FromSql;
    fn read<'a, T: FromSql<'a>>(raw: &'a [u8], ty: &Type) -> Result<Vec<Option<T>>, Error> {
        check_array_header(raw, ty)?;
        Vec::<Option<T>>::from_sql(ty, raw).map_err(|e| invalid(ty, &e.to_string()))
    }
    let (values, element): (Vec<ScalarValue>, DataType) = match *ty {
        Type::OID_ARRAY => (
            read::<u32>(raw, ty)?
                .into_iter()
                .map(ScalarValue::UInt32)
                .collect(),
            DataType::UInt32,
        ),
        Type::INT2_ARRAY => (
            read::<i16>(raw, ty)?
                .into_iter()
                .map(ScalarValue::Int16)
                .collect(),
            DataType::Int16,
        ),
        Type::INT4_ARRAY => (
            read::<i32>(raw, ty)?
                .into_iter()
                .map(ScalarValue::Int32)
                .collect(),
            DataType::Int32,
        ),
        Type::INT8_ARRAY => (
            read::<i64>(raw, ty)?
                .into_iter()
                .map(ScalarValue::Int64)
                .collect(),
            DataType::Int64,
        ),
        Type::FLOAT8_ARRAY => (
            read::<f64>(raw, ty)?
                .into_iter()
                .map(ScalarValue::Float64)
                .collect(),
            DataType::Float64,
        ),
        Type::BOOL_ARRAY => (
            read::<bool>(raw, ty)?
                .into_iter()
                .map(ScalarValue::Boolean)
                .collect(),
            DataType::Boolean,
        ),
        Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::NAME_ARRAY => (
            read::<String>(raw, ty)?
                .into_iter()
                .map(ScalarValue::Utf8)
                .collect(),
            DataType::Utf8,
        ),
        _ => {
            return Err(Error::not_supported(format!(
                "binary parameters of type {}",
                ty.name()
            )));
        }
    };
    Ok(ScalarValue::List(ScalarValue::new_list_nullable(
        &values, &element,
    )))
}

/// PostgreSQL's limit on array dimensions (MAXDIM).
const MAX_ARRAY_DIMENSIONS: i32 = 6;

/// Checks a binary array's header before anything is decoded or allocated: the number of
/// dimensions, the flags, the element type, and that the declared element count could fit in
/// the bytes sent (each element takes at least its 4-byte length).
fn check_array_header(raw: &[u8], ty: &Type) -> Result<(), Error> {
    let int = |at: usize| -> Result<i32, Error> {
        raw.get(at..at + 4)
            .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| invalid(ty, "array header is truncated"))
    };
    let ndim = int(0)?;
    if !(0..=MAX_ARRAY_DIMENSIONS).contains(&ndim) {
        return Err(invalid(
            ty,
            &format!("invalid number of dimensions: {ndim}"),
        ));
    }
    let flags = int(4)?;
    if flags != 0 && flags != 1 {
        return Err(invalid(ty, "invalid array flags"));
    }
    let element = int(8)? as u32;
    if let postgres_types::Kind::Array(expected) = ty.kind()
        && element != expected.oid()
    {
        return Err(Error::user(
            sqlstate::DATATYPE_MISMATCH,
            format!(
                "binary data has array element type {element} instead of expected {}",
                expected.name()
            ),
        ));
    }
    let mut count: u64 = if ndim == 0 { 0 } else { 1 };
    for d in 0..ndim as usize {
        let len = int(12 + 8 * d)?;
        let lower = int(16 + 8 * d)?;
        if len < 0 || lower.checked_add(len).is_none() {
            return Err(invalid(ty, "array dimension is out of range"));
        }
        count = count.saturating_mul(len as u64);
    }
    let body = raw.len().saturating_sub(12 + 8 * ndim as usize) as u64;
    if count.saturating_mul(4) > body {
        return Err(invalid(
            ty,
            &format!("array declares {count} elements but carries {body} bytes"),
        ));
    }
    Ok(())
}

/// PostgreSQL's interval output (`1 year 2 mons 3 days 04:05:06.5`, `-00:00:01`), which
/// drivers send back as text and Arrow's parser does not read; None for anything else.
fn interval_text(text: &str) -> Option<IntervalMonthDayNano> {
    let (mut months, mut days, mut nanos) = (0i64, 0i64, 0i64);
    let mut words = text.split_whitespace().peekable();
    while let Some(word) = words.next() {
        if word.contains(':') {
            let (sign, clock) = match word.strip_prefix('-') {
                Some(rest) => (-1, rest),
                None => (1, word.trim_start_matches('+')),
            };
            let mut parts = clock.split(':');
            let hours: i64 = parts.next()?.parse().ok()?;
            let minutes: i64 = parts.next()?.parse().ok()?;
            let seconds: f64 = parts.next().unwrap_or("0").parse().ok()?;
            if parts.next().is_some() {
                return None;
            }
            let whole = (hours * 3600 + minutes * 60) as f64 + seconds;
            nanos += sign * (whole * 1e9).round() as i64;
            continue;
        }
        let n: i64 = word.parse().ok()?;
        let unit = words.next()?.to_ascii_lowercase();
        match unit.trim_end_matches('s') {
            "year" => months += 12 * n,
            "mon" | "month" => months += n,
            "week" => days += 7 * n,
            "day" => days += n,
            "hour" => nanos += n * 3_600_000_000_000,
            "min" | "minute" => nanos += n * 60_000_000_000,
            "sec" | "second" => nanos += n * 1_000_000_000,
            _ => return None,
        }
    }
    Some(IntervalMonthDayNano::new(
        i32::try_from(months).ok()?,
        i32::try_from(days).ok()?,
        nanos,
    ))
}

pub fn from_binary(raw: &[u8], ty: &Type) -> Result<ScalarValue, Error> {
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(Some(fixed::<1>(raw, ty)?[0] != 0)),
        Type::INT2 => ScalarValue::Int16(Some(i16::from_be_bytes(fixed(raw, ty)?))),
        Type::INT4 => ScalarValue::Int32(Some(i32::from_be_bytes(fixed(raw, ty)?))),
        Type::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(fixed(raw, ty)?))),
        Type::OID => ScalarValue::Int64(Some(u32::from_be_bytes(fixed(raw, ty)?) as i64)),
        Type::FLOAT4 => ScalarValue::Float32(Some(f32::from_be_bytes(fixed(raw, ty)?))),
        Type::FLOAT8 => ScalarValue::Float64(Some(f64::from_be_bytes(fixed(raw, ty)?))),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            from_text(raw, &Type::TEXT)?
        }
        Type::JSONB => match raw.split_first() {
            Some((1, json)) => from_text(json, &Type::TEXT)?,
            _ => return Err(invalid(ty, "unsupported jsonb version")),
        },
        Type::BYTEA => ScalarValue::Binary(Some(raw.to_vec())),
        Type::UUID => {
            let b = fixed::<16>(raw, ty)?;
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            ScalarValue::Utf8(Some(format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            )))
        }
        Type::DATE => ScalarValue::Date32(Some(date(i32::from_be_bytes(fixed(raw, ty)?))?)),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            Some(timestamp(i64::from_be_bytes(fixed(raw, ty)?))?),
            None,
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            Some(timestamp(i64::from_be_bytes(fixed(raw, ty)?))?),
            Some("+00:00".into()),
        ),
        Type::INTERVAL => {
            let b = fixed::<16>(raw, ty)?;
            let micros = i64::from_be_bytes(b[0..8].try_into().expect("8 bytes"));
            let days = i32::from_be_bytes(b[8..12].try_into().expect("4 bytes"));
            let months = i32::from_be_bytes(b[12..16].try_into().expect("4 bytes"));
            let nanos = micros
                .checked_mul(1000)
                .ok_or_else(|| out_of_range("interval"))?;
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(months, days, nanos)))
        }
        Type::NUMERIC => ScalarValue::Utf8(Some(numeric_text(raw, ty)?)),
        _ if matches!(ty.kind(), postgres_types::Kind::Array(_)) => binary_array(raw, ty)?,
        _ => {
            return Err(Error::not_supported(format!(
                "binary parameters of type {}",
                ty.name()
            )));
        }
    })
}

/// Days since 2000-01-01 (PostgreSQL) to days since 1970-01-01 (Arrow), within PostgreSQL's
/// date range (4714-11-24 BC to 5874897 AD); infinities are refused.
fn date(pg_days: i32) -> Result<i32, Error> {
    const MIN: i32 = -2_451_545;
    const END: i32 = 2_147_483_494 - 2_451_545;
    if !(MIN..END).contains(&pg_days) {
        return Err(out_of_range("date"));
    }
    pg_days
        .checked_add(PG_EPOCH_DAYS)
        .ok_or_else(|| out_of_range("date"))
}

/// Microseconds since 2000-01-01 to microseconds since 1970-01-01, within PostgreSQL's
/// timestamp range and Arrow's; infinities are refused.
fn timestamp(pg_micros: i64) -> Result<i64, Error> {
    const MIN: i64 = -211_813_488_000_000_000;
    const END: i64 = 9_223_371_331_200_000_000;
    if !(MIN..END).contains(&pg_micros) {
        return Err(out_of_range("timestamp"));
    }
    pg_micros
        .checked_add(PG_EPOCH_MICROS)
        .ok_or_else(|| out_of_range("timestamp"))
}

/// PostgreSQL's limits on binary numerics (numeric_recv): at most this many base-10000 digits,
/// a display scale within NUMERIC_DSCALE_MASK, digits below NBASE.
const NUMERIC_MAX_DIGITS: usize = 1000 + 2000;
const NUMERIC_DSCALE_MASK: usize = 0x3FFF;
const NBASE: i32 = 10_000;
const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// Decodes Postgres' binary numeric (base-10000 digits) to its decimal text.
fn numeric_text(raw: &[u8], ty: &Type) -> Result<String, Error> {
    if raw.len() < 8 {
        return Err(invalid(ty, "short numeric"));
    }
    let word = |i: usize| i16::from_be_bytes([raw[2 * i], raw[2 * i + 1]]);
    let uword = |i: usize| u16::from_be_bytes([raw[2 * i], raw[2 * i + 1]]);
    let (ndigits, weight, sign, dscale) = (
        uword(0) as usize,
        word(1) as i32,
        uword(2),
        uword(3) as usize,
    );
    if ndigits > NUMERIC_MAX_DIGITS || raw.len() != 8 + 2 * ndigits {
        return Err(invalid(ty, "invalid length in numeric value"));
    }
    if dscale & NUMERIC_DSCALE_MASK != dscale {
        return Err(invalid(ty, "invalid scale in numeric value"));
    }
    match sign {
        NUMERIC_POS | NUMERIC_NEG => {}
        NUMERIC_NAN => return Ok("NaN".into()),
        NUMERIC_PINF => return Ok("Infinity".into()),
        NUMERIC_NINF => return Ok("-Infinity".into()),
        _ => return Err(invalid(ty, "invalid sign in numeric value")),
    }
    if (0..ndigits).any(|i| !(0..NBASE).contains(&(word(4 + i) as i32))) {
        return Err(invalid(ty, "invalid digit in numeric value"));
    }
    let digits: Vec<i32> = (0..ndigits).map(|i| word(4 + i) as i32).collect();
    let mut int_part = String::new();
    for w in 0..=weight.max(-1) {
        let d = digits.get(w as usize).copied().unwrap_or(0);
        if int_part.is_empty() {
            if d != 0 {
                int_part = d.to_string();
            }
        } else {
            int_part.push_str(&format!("{d:04}"));
        }
    }
    if int_part.is_empty() {
        int_part.push('0');
    }
    let mut frac = String::new();
    let mut pos = weight + 1;
    while frac.len() < dscale {
        let d = if pos < 0 {
            0
        } else {
            digits.get(pos as usize).copied().unwrap_or(0)
        };
        frac.push_str(&format!("{d:04}"));
        pos += 1;
    }
    frac.truncate(dscale);
    let mut s = String::new();
    if sign == NUMERIC_NEG {
        s.push('-');
    }
    s.push_str(&int_part);
    if dscale > 0 {
        s.push('.');
        s.push_str(&frac);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_interval_text_reads() {
        let iv = |m, d, n| Some(IntervalMonthDayNano::new(m, d, n));
        assert_eq!(
            interval_text("3 days 04:05:06"),
            iv(0, 3, 14_706_000_000_000)
        );
        assert_eq!(interval_text("1 year 2 mons"), iv(14, 0, 0));
        assert_eq!(interval_text("-00:00:01.5"), iv(0, 0, -1_500_000_000));
        assert_eq!(interval_text("PT1S"), None);
    }

    #[test]
    fn binary_numeric_decodes() {
        // 123.45: ndigits 2, weight 0, positive, dscale 2, digits [123, 4500]
        let raw = [0, 2, 0, 0, 0, 0, 0, 2, 0, 123, 0x11, 0x94];
        assert_eq!(numeric_text(&raw, &Type::NUMERIC).unwrap(), "123.45");
        // -0.5: weight -1, digits [5000]
        let raw = [0, 1, 0xff, 0xff, 0x40, 0, 0, 1, 0x13, 0x88];
        assert_eq!(numeric_text(&raw, &Type::NUMERIC).unwrap(), "-0.5");
    }

    fn code(e: Error) -> String {
        match e {
            Error::User { code, .. } => code.to_string(),
            other => format!("not a user error: {other}"),
        }
    }

    #[test]
    fn binary_numeric_outside_postgres_limits_is_refused() {
        // dscale 0xFFFF: once read as a scale of 65535 zeros and more.
        let raw = [0, 1, 0, 0, 0, 0, 0xff, 0xff, 0, 1];
        assert_eq!(
            code(numeric_text(&raw, &Type::NUMERIC).unwrap_err()),
            "22P03"
        );
        // A digit of 10000 or more, a sign that is none of PostgreSQL's, ndigits as -1.
        let raw = [0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10];
        assert_eq!(
            code(numeric_text(&raw, &Type::NUMERIC).unwrap_err()),
            "22P03"
        );
        let raw = [0, 1, 0, 0, 0x12, 0x34, 0, 0, 0, 1];
        assert_eq!(
            code(numeric_text(&raw, &Type::NUMERIC).unwrap_err()),
            "22P03"
        );
        let raw = [0xff, 0xff, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            code(numeric_text(&raw, &Type::NUMERIC).unwrap_err()),
            "22P03"
        );
        // The largest scale PostgreSQL allows is fine, and bounded.
        let raw = [0, 0, 0, 0, 0, 0, 0x3f, 0xff];
        assert_eq!(
            numeric_text(&raw, &Type::NUMERIC).unwrap().len(),
            2 + 0x3fff
        );
        let raw = [0, 0, 0, 0, 0xd0, 0, 0, 0];
        assert_eq!(numeric_text(&raw, &Type::NUMERIC).unwrap(), "Infinity");
    }

    #[test]
    fn binary_datetimes_outside_the_range_are_errors_not_overflows() {
        let infinity = i64::MAX.to_be_bytes();
        assert_eq!(
            code(from_binary(&infinity, &Type::TIMESTAMP).unwrap_err()),
            "22008"
        );
        let minus_infinity = i64::MIN.to_be_bytes();
        assert_eq!(
            code(from_binary(&minus_infinity, &Type::TIMESTAMPTZ).unwrap_err()),
            "22008"
        );
        assert_eq!(
            code(from_binary(&i32::MAX.to_be_bytes(), &Type::DATE).unwrap_err()),
            "22008"
        );
        let mut interval = i64::MAX.to_be_bytes().to_vec();
        interval.extend([0; 8]);
        assert_eq!(
            code(from_binary(&interval, &Type::INTERVAL).unwrap_err()),
            "22008"
        );
    }

    #[test]
    fn binary_arrays_are_checked_before_they_are_allocated() {
        let header = |ndim: i32, elem: u32, dims: &[(i32, i32)]| {
            let mut v = Vec::new();
            v.extend(ndim.to_be_bytes());
            v.extend(0i32.to_be_bytes());
            v.extend(elem.to_be_bytes());
            for (len, lower) in dims {
                v.extend(len.to_be_bytes());
                v.extend(lower.to_be_bytes());
            }
            v
        };
        // Two billion elements declared, none sent.
        let raw = header(1, Type::INT4.oid(), &[(i32::MAX, 1)]);
        assert_eq!(
            code(from_binary(&raw, &Type::INT4_ARRAY).unwrap_err()),
            "22P03"
        );
        let raw = header(7, Type::INT4.oid(), &[(1, 1); 7]);
        assert_eq!(
            code(from_binary(&raw, &Type::INT4_ARRAY).unwrap_err()),
            "22P03"
        );
        let raw = header(1, Type::TEXT.oid(), &[(0, 1)]);
        assert_eq!(
            code(from_binary(&raw, &Type::INT4_ARRAY).unwrap_err()),
            "42804"
        );
        let mut raw = header(1, Type::INT4.oid(), &[(1, 1)]);
        raw.extend(4i32.to_be_bytes());
        raw.extend(7i32.to_be_bytes());
        assert_eq!(
            from_binary(&raw, &Type::INT4_ARRAY).unwrap(),
            ScalarValue::List(ScalarValue::new_list_nullable(
                &[ScalarValue::Int32(Some(7))],
                &datafusion::arrow::datatypes::DataType::Int32
            ))
        );
    }

    #[test]
    fn binary_uuid_and_dates() {
        let raw: Vec<u8> = (0..16).collect();
        assert_eq!(
            from_binary(&raw, &Type::UUID).unwrap(),
            ScalarValue::Utf8(Some("00010203-0405-0607-0809-0a0b0c0d0e0f".into()))
        );
        assert_eq!(
            from_binary(&0i32.to_be_bytes(), &Type::DATE).unwrap(),
            ScalarValue::Date32(Some(10_957))
        );
        assert!(from_binary(&[1, 2], &Type::INT4).is_err());
    }
}
