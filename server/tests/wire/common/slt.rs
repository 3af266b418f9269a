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
        _ => format!("<binary {ty}>"),
    }
}
