//! sqllogictest over the wire: every `.slt` file under `sqllogictest/` runs against a real
//! server, in the simple and in the extended query protocol. A `statement ok` whose SQL is
//! `--@restart` kills the server with SIGKILL and starts it again on the same data dir.

use std::sync::Arc;

use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use tokio::sync::Mutex;
use tokio_postgres::types::Type;

use super::Server;

pub const RESTART: &str = "--@restart";

#[derive(Debug)]
pub struct DbError(pub String, pub Option<String>);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DbError {}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError(
            super::error_text(&e),
            e.code().map(|c| c.code().to_string()),
        )
    }
}

pub struct EddyDb {
    pub client: tokio_postgres::Client,
    pub server: Arc<Mutex<Server>>,
    pub extended: bool,
}

#[async_trait]
impl AsyncDB for EddyDb {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        if sql.trim() == RESTART {
            let mut server = self.server.lock().await;
            server.restart();
            self.client = server.connect().await;
            return Ok(DBOutput::StatementComplete(0));
        }
        if self.extended {
            self.run_extended(sql).await
        } else {
            self.run_simple(sql).await
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        if self.extended {
            "eddy-extended"
        } else {
            "eddy-simple"
        }
    }

    fn error_sql_state(err: &DbError) -> Option<String> {
        err.1.clone()
    }
}

impl EddyDb {
    async fn run_simple(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        use tokio_postgres::SimpleQueryMessage as M;
        let messages = self.client.simple_query(sql).await?;
        let mut rows = Vec::new();
        let mut types = Vec::new();
        let mut is_query = false;
        let mut count = 0;
        for m in messages {
            match m {
                M::RowDescription(cols) => {
                    is_query = true;
                    types = vec![DefaultColumnType::Any; cols.len()];
                }
                M::Row(row) => {
                    is_query = true;
                    types = vec![DefaultColumnType::Any; row.len()];
                    rows.push((0..row.len()).map(|i| format_text(row.get(i))).collect());
                }
                M::CommandComplete(n) => count = n,
                _ => {}
            }
        }
        Ok(if is_query {
            DBOutput::Rows { types, rows }
        } else {
            DBOutput::StatementComplete(count)
        })
    }

    async fn run_extended(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let stmt = self.client.prepare(sql).await?;
        if stmt.columns().is_empty() {
            let n = self.client.execute(&stmt, &[]).await?;
            return Ok(DBOutput::StatementComplete(n));
        }
        let result = self.client.query(&stmt, &[]).await?;
        let types = vec![DefaultColumnType::Any; stmt.columns().len()];
        let rows = result
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| format_binary(row, i, stmt.columns()[i].type_()))
                    .collect()
            })
            .collect();
        Ok(DBOutput::Rows { types, rows })
    }
}

fn format_text(v: Option<&str>) -> String {
    match v {
        None => "NULL".into(),
        Some("") => "(empty)".into(),
        Some(s) => s.to_string(),
    }
}

/// A value received in binary format, printed as Postgres prints it in text format.
fn format_binary(row: &tokio_postgres::Row, i: usize, ty: &Type) -> String {
    fn show<T: ToString>(v: Option<T>) -> String {
        format_text(v.map(|v| v.to_string()).as_deref())
    }
    match *ty {
        Type::BOOL => show(
            row.get::<_, Option<bool>>(i)
                .map(|b| if b { "t" } else { "f" }),
        ),
        Type::INT2 => show(row.get::<_, Option<i16>>(i)),
        Type::INT4 => show(row.get::<_, Option<i32>>(i)),
        Type::INT8 => show(row.get::<_, Option<i64>>(i)),
        Type::FLOAT4 => show(row.get::<_, Option<f32>>(i)),
        Type::FLOAT8 => show(row.get::<_, Option<f64>>(i)),
        Type::NUMERIC => show(row.get::<_, Option<rust_decimal::Decimal>>(i)),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
            show(row.get::<_, Option<String>>(i))
        }
        Type::BYTEA => show(row.get::<_, Option<Vec<u8>>>(i).map(|b| {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("\\x{hex}")
        })),
        Type::DATE => show(row.get::<_, Option<chrono::NaiveDate>>(i)),
        Type::TIMESTAMP => show(row.get::<_, Option<chrono::NaiveDateTime>>(i)),
        Type::TIMESTAMPTZ => show(
            row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)
                .map(|t| t.naive_utc().to_string() + "+00"),
        ),
        Type::UUID => show(row.get::<_, Option<uuid::Uuid>>(i)),
        Type::JSONB | Type::JSON => show(
            row.get::<_, Option<serde_json::Value>>(i)
                .map(|j| eddy_sql::types::jsonb_canonical(&j.to_string()).expect("valid json")),
        ),
        Type::TEXT_ARRAY => show(row.get::<_, Option<Vec<Option<String>>>>(i).map(|items| {
            let items: Vec<String> = items
                .into_iter()
                .map(|v| v.unwrap_or_else(|| "NULL".into()))
                .collect();
            format!("{{{}}}", items.join(","))
        })),
        Type::INTERVAL => show(row.get::<_, Option<Interval>>(i).map(|v| v.0)),
        _ => format!("<binary {ty}>"),
    }
}

/// An interval received in binary, printed as Postgres prints it (IntervalStyle postgres).
struct Interval(String);

impl<'a> tokio_postgres::types::FromSql<'a> for Interval {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let micros = i64::from_be_bytes(raw[0..8].try_into()?);
        let days = i32::from_be_bytes(raw[8..12].try_into()?);
        let months = i32::from_be_bytes(raw[12..16].try_into()?);
        let mut parts = Vec::new();
        let plural = |n: i64, one: &str, many: &str| {
            format!("{n} {}", if n.abs() == 1 { one } else { many })
        };
        if months / 12 != 0 {
            parts.push(plural((months / 12) as i64, "year", "years"));
        }
        if months % 12 != 0 {
            parts.push(plural((months % 12) as i64, "mon", "mons"));
        }
        if days != 0 {
            parts.push(plural(days as i64, "day", "days"));
        }
        if micros != 0 || parts.is_empty() {
            let secs = micros.abs() / 1_000_000;
            let mut t = format!(
                "{}{:02}:{:02}:{:02}",
                if micros < 0 { "-" } else { "" },
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            );
            let frac = micros.abs() % 1_000_000;
            if frac != 0 {
                t.push_str(format!(".{frac:06}").trim_end_matches('0'));
            }
            parts.push(t);
        }
        Ok(Interval(parts.join(" ")))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}
