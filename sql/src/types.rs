//! Eddy's SQL types and how each maps to an Arrow type.
//!
//! Arrow has no uuid or jsonb: those columns are Utf8 whose field metadata
//! (`eddy.pg_type`) names the Postgres type, so the wire layer reports the right OID.

use std::collections::HashMap;

use datafusion::arrow::datatypes::{DataType, Field, IntervalUnit, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, ExactNumberInfo};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, sqlstate};

/// Field metadata key naming the Postgres type of a column when Arrow cannot tell it.
pub const PG_TYPE_KEY: &str = "eddy.pg_type";

/// Scale used for `numeric` declared without precision.
pub const DEFAULT_NUMERIC_SCALE: i8 = 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SqlType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// `numeric(precision, scale)`; `None` when declared without precision.
    Numeric(Option<(u8, i8)>),
    Text,
    Varchar(Option<u32>),
    Bytea,
    Date,
    Timestamp,
    Timestamptz,
    Interval,
    Uuid,
    Jsonb,
}

impl SqlType {
    pub fn from_ast(t: &ast::DataType) -> Result<Self> {
        use ast::DataType as D;
        Ok(match t {
            D::Bool | D::Boolean => SqlType::Bool,
            D::SmallInt(_) | D::Int2(_) => SqlType::Int2,
            D::Int(_) | D::Integer(_) | D::Int4(_) => SqlType::Int4,
            D::BigInt(_) | D::Int8(_) => SqlType::Int8,
            D::Real | D::Float4 => SqlType::Float4,
            D::Double(_) | D::DoublePrecision | D::Float8 => SqlType::Float8,
            D::Float(info) => match info {
                ExactNumberInfo::Precision(p) | ExactNumberInfo::PrecisionAndScale(p, _)
                    if *p <= 24 =>
                {
                    SqlType::Float4
                }
                _ => SqlType::Float8,
            },
            D::Numeric(info) | D::Decimal(info) | D::Dec(info) => SqlType::Numeric(match info {
                ExactNumberInfo::None => None,
                ExactNumberInfo::Precision(p) => Some((precision(*p)?, 0)),
                ExactNumberInfo::PrecisionAndScale(p, s) => Some((precision(*p)?, *s as i8)),
            }),
            D::Text | D::String(_) => SqlType::Text,
            D::Varchar(len) | D::CharacterVarying(len) | D::CharVarying(len) => {
                SqlType::Varchar(char_len(len))
            }
            D::Char(_) | D::Character(_) => SqlType::Text,
            D::Bytea => SqlType::Bytea,
            D::Date => SqlType::Date,
            D::Timestamp(_, tz) => match tz {
                ast::TimezoneInfo::WithTimeZone | ast::TimezoneInfo::Tz => SqlType::Timestamptz,
                _ => SqlType::Timestamp,
            },
            D::Interval { .. } => SqlType::Interval,
            D::Uuid => SqlType::Uuid,
            D::JSONB | D::JSON => SqlType::Jsonb,
            D::Custom(name, _) => match name.to_string().to_lowercase().as_str() {
                "timestamptz" => SqlType::Timestamptz,
                "int2" => SqlType::Int2,
                "int4" => SqlType::Int4,
                "int8" => SqlType::Int8,
                "float4" => SqlType::Float4,
                "float8" => SqlType::Float8,
                "bool" => SqlType::Bool,
                "jsonb" | "json" => SqlType::Jsonb,
                "uuid" => SqlType::Uuid,
                other => return Err(unknown_type(other)),
            },
            other => return Err(unknown_type(&other.to_string())),
        })
    }

    pub fn arrow_type(&self) -> DataType {
        match self {
            SqlType::Bool => DataType::Boolean,
            SqlType::Int2 => DataType::Int16,
            SqlType::Int4 => DataType::Int32,
            SqlType::Int8 => DataType::Int64,
            SqlType::Float4 => DataType::Float32,
            SqlType::Float8 => DataType::Float64,
            SqlType::Numeric(Some((p, s))) => DataType::Decimal128(*p, *s),
            SqlType::Numeric(None) => DataType::Decimal128(38, DEFAULT_NUMERIC_SCALE),
            SqlType::Text | SqlType::Varchar(_) | SqlType::Uuid | SqlType::Jsonb => DataType::Utf8,
            SqlType::Bytea => DataType::Binary,
            SqlType::Date => DataType::Date32,
            SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            SqlType::Timestamptz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
            }
            SqlType::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
        }
    }

    /// The SQL type that stores values of an Arrow type (the columns of a stream's or a
    /// materialized view's result). Types without an exact match are refused.
    pub fn from_arrow(field: &Field) -> Result<Self> {
        if let Some(pg) = field.metadata().get(PG_TYPE_KEY) {
            match pg.as_str() {
                "uuid" => return Ok(SqlType::Uuid),
                "jsonb" => return Ok(SqlType::Jsonb),
                other => {
                    let length = other
                        .strip_prefix("varchar(")
                        .and_then(|n| n.strip_suffix(')'))
                        .and_then(|n| n.parse().ok());
                    if let (Some(n), DataType::Utf8) = (length, field.data_type()) {
                        return Ok(SqlType::Varchar(Some(n)));
                    }
                }
            }
        }
        Ok(match field.data_type() {
            DataType::Boolean => SqlType::Bool,
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => SqlType::Int2,
            DataType::Int32 | DataType::UInt16 => SqlType::Int4,
            DataType::Int64 | DataType::UInt32 => SqlType::Int8,
            DataType::UInt64 => SqlType::Numeric(Some((20, 0))),
            DataType::Float16 | DataType::Float32 => SqlType::Float4,
            DataType::Float64 => SqlType::Float8,
            DataType::Decimal128(p, s) if *p <= 38 => SqlType::Numeric(Some((*p, *s))),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => SqlType::Text,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => SqlType::Bytea,
            DataType::Date32 | DataType::Date64 => SqlType::Date,
            DataType::Timestamp(_, None) => SqlType::Timestamp,
            DataType::Timestamp(_, Some(_)) => SqlType::Timestamptz,
            DataType::Interval(_) => SqlType::Interval,
            other => {
                return Err(Error::user(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "column \"{}\" has type {other}, which a stream or materialized view cannot store",
                        field.name()
                    ),
                ));
            }
        })
    }

    pub fn arrow_field(&self, name: &str, nullable: bool) -> Field {
        let field = Field::new(name, self.arrow_type(), nullable);
        match self {
            SqlType::Uuid | SqlType::Jsonb => {
                field.with_metadata(HashMap::from([(PG_TYPE_KEY.to_string(), self.pg_name())]))
            }
            // The length survives views and streams over the column.
            SqlType::Varchar(Some(n)) => field.with_metadata(HashMap::from([(
                PG_TYPE_KEY.to_string(),
                format!("varchar({n})"),
            )])),
            _ => field,
        }
    }

    pub fn is_integer(&self) -> bool {
        matches!(self, SqlType::Int2 | SqlType::Int4 | SqlType::Int8)
    }

    /// The name PostgreSQL's `format_type` prints.
    pub fn pg_name(&self) -> String {
        match self {
            SqlType::Bool => "boolean".into(),
            SqlType::Int2 => "smallint".into(),
            SqlType::Int4 => "integer".into(),
            SqlType::Int8 => "bigint".into(),
            SqlType::Float4 => "real".into(),
            SqlType::Float8 => "double precision".into(),
            SqlType::Numeric(Some((p, s))) => format!("numeric({p},{s})"),
            SqlType::Numeric(None) => "numeric".into(),
            SqlType::Text => "text".into(),
            SqlType::Varchar(Some(n)) => format!("character varying({n})"),
            SqlType::Varchar(None) => "character varying".into(),
            SqlType::Bytea => "bytea".into(),
            SqlType::Date => "date".into(),
            SqlType::Timestamp => "timestamp without time zone".into(),
            SqlType::Timestamptz => "timestamp with time zone".into(),
            SqlType::Interval => "interval".into(),
            SqlType::Uuid => "uuid".into(),
            SqlType::Jsonb => "jsonb".into(),
        }
    }
}

/// PostgreSQL's float output: the shortest exact digits, in exponent form when the decimal
/// exponent is below -4 or at least `precision` (15 for float8, 6 for float4).
pub fn float_text(v: f64, precision: i32) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let shortest = if precision <= 6 {
        format!("{:e}", v as f32)
    } else {
        format!("{v:e}")
    };
    let (mantissa, exp) = shortest.split_once('e').expect("exponent form");
    let exp: i32 = exp.parse().expect("exponent");
    if exp < -4 || exp >= precision {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else if precision <= 6 {
        format!("{}", v as f32)
    } else {
        format!("{v}")
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` with trailing zeros of the fraction dropped, and `+00` for
/// timestamptz (sessions run in UTC).
pub fn timestamp_text(micros: i64, with_zone: bool) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_micros(micros) else {
        return micros.to_string();
    };
    let mut s = t.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string();
    let frac = micros.rem_euclid(1_000_000);
    if frac != 0 {
        let digits = format!("{frac:06}");
        s.push('.');
        s.push_str(digits.trim_end_matches('0'));
    }
    if with_zone {
        s.push_str("+00");
    }
    s
}

/// The items of PostgreSQL's text form of a one-dimensional array (`{a,"b c",NULL}`); None
/// when the text is not one.
pub fn array_text_items(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.trim().is_empty() {
        return Some(items);
    }
    let mut current = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut chars = inner.chars();
    let finish = |current: &mut String, was_quoted: &mut bool| {
        let item = std::mem::take(current);
        let item = match *was_quoted {
            true => Some(item),
            false => {
                let t = item.trim();
                (!t.eq_ignore_ascii_case("NULL")).then(|| t.to_string())
            }
        };
        *was_quoted = false;
        item
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            '\\' => current.push(chars.next()?),
            ',' if !quoted => items.push(finish(&mut current, &mut was_quoted)),
            '{' | '}' if !quoted => return None,
            c => current.push(c),
        }
    }
    if quoted {
        return None;
    }
    items.push(finish(&mut current, &mut was_quoted));
    Some(items)
}

/// The canonical text of a jsonb value, as PostgreSQL prints it: object keys sorted (shorter
/// first, then bytewise), duplicates keeping the last, `", "` and `": "` separators.
pub fn jsonb_canonical(text: &str) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        Error::user(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!("invalid input syntax for type json: {e}"),
        )
    })?;
    let mut out = String::with_capacity(text.len());
    write_jsonb(&value, &mut out);
    Ok(out)
}

/// The canonical text of a uuid: validated, lower case, hyphenated.
pub fn uuid_canonical(text: &str) -> Result<String> {
    uuid::Uuid::parse_str(text.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| {
            Error::user(
                sqlstate::INVALID_TEXT_REPRESENTATION,
                format!("invalid input syntax for type uuid: \"{text}\""),
            )
        })
}

fn write_jsonb(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_jsonb(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_jsonb(&map[k], out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Lets DataFusion's planner understand the Postgres types it does not know itself
/// (`'...'::jsonb`, `CAST(x AS uuid)`): they plan as Utf8 fields that carry the Postgres type
/// in their metadata, as table columns of those types do.
#[derive(Debug)]
pub struct PgTypePlanner;

impl datafusion::logical_expr::planner::TypePlanner for PgTypePlanner {
    fn plan_type_field(
        &self,
        sql_type: &ast::DataType,
    ) -> datafusion::error::Result<Option<datafusion::arrow::datatypes::FieldRef>> {
        use ast::DataType as D;
        let custom = |name: &ast::ObjectName| name.to_string().to_lowercase();
        let ty = match sql_type {
            D::JSONB | D::JSON => SqlType::Jsonb,
            // `'x'::character varying`, as PostgreSQL prints varchar defaults.
            D::CharacterVarying(_) | D::CharVarying(_) | D::Character(_) | D::Char(_) => {
                SqlType::Text
            }
            D::Uuid => SqlType::Uuid,
            D::Custom(name, _) if matches!(custom(name).as_str(), "jsonb" | "json") => {
                SqlType::Jsonb
            }
            D::Custom(name, _) if custom(name) == "uuid" => SqlType::Uuid,
            // Casts to timestamptz give what a timestamptz column holds (microseconds, UTC),
            // which the wire layer prints with its offset.
            D::Timestamp(_, ast::TimezoneInfo::WithTimeZone | ast::TimezoneInfo::Tz) => {
                SqlType::Timestamptz
            }
            D::Custom(name, _) if custom(name) == "timestamptz" => SqlType::Timestamptz,
            // oid: unsigned, reported to clients as oid (26) and oid[] (1028).
            D::Custom(name, args)
                if args.is_empty() && matches!(custom(name).as_str(), "oid" | "pg_catalog.oid") =>
            {
                return Ok(Some(std::sync::Arc::new(
                    datafusion::arrow::datatypes::Field::new("", DataType::UInt32, true),
                )));
            }
            // regclass, oid, pg_catalog.text, ...
            _ => {
                return datafusion_pg_catalog::pg_catalog::oid_type_planner::PgOidTypePlanner
                    .plan_type_field(sql_type);
            }
        };
        Ok(Some(std::sync::Arc::new(ty.arrow_field("", true))))
    }
}

fn precision(p: u64) -> Result<u8> {
    if (1..=38).contains(&p) {
        Ok(p as u8)
    } else {
        Err(Error::user(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("NUMERIC precision {p} must be between 1 and 38"),
        ))
    }
}

fn char_len(len: &Option<ast::CharacterLength>) -> Option<u32> {
    match len {
        Some(ast::CharacterLength::IntegerLength { length, .. }) => Some(*length as u32),
        _ => None,
    }
}

fn unknown_type(name: &str) -> Error {
    Error::user(
        sqlstate::UNDEFINED_OBJECT,
        format!("type \"{}\" does not exist", name.to_lowercase()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::{dialect::PostgreSqlDialect, parser::Parser};

    fn parse_type(sql: &str) -> SqlType {
        let stmt = Parser::parse_sql(&PostgreSqlDialect {}, &format!("CREATE TABLE t (c {sql})"))
            .unwrap()
            .remove(0);
        let ast::Statement::CreateTable(ct) = stmt else {
            panic!("not a create table")
        };
        SqlType::from_ast(&ct.columns[0].data_type).unwrap()
    }

    #[test]
    fn jsonb_is_canonical() {
        assert_eq!(
            jsonb_canonical(r#"{"bb":1,"a":[1,{"y":2,"x":null}],"c":"s"}"#).unwrap(),
            r#"{"a": [1, {"x": null, "y": 2}], "c": "s", "bb": 1}"#
        );
        assert_eq!(
            jsonb_canonical("{not json").unwrap_err().sqlstate(),
            "22P02"
        );
    }

    #[test]
    fn postgres_type_names_map() {
        assert_eq!(parse_type("int"), SqlType::Int4);
        assert_eq!(parse_type("bigint"), SqlType::Int8);
        assert_eq!(parse_type("timestamptz"), SqlType::Timestamptz);
        assert_eq!(parse_type("timestamp with time zone"), SqlType::Timestamptz);
        assert_eq!(parse_type("numeric(10,2)"), SqlType::Numeric(Some((10, 2))));
        assert_eq!(parse_type("varchar(20)"), SqlType::Varchar(Some(20)));
        assert_eq!(parse_type("jsonb"), SqlType::Jsonb);
        assert_eq!(parse_type("uuid"), SqlType::Uuid);
        assert_eq!(parse_type("double precision"), SqlType::Float8);
    }
}
