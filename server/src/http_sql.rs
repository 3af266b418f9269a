//! The HTTP query API, for services that would otherwise put a REST layer in front of a
//! key-value store:
//!
//! - `POST /v1/sql` runs statements as the request's user. The body is the SQL text, or JSON
//!   `{"sql": "...", "params": [...]}` (parameters `$1..$n` need exactly one statement).
//!   Several statements run as one implicit transaction, as in a simple query. The reply is
//!   JSON by default: one result per statement with its command tag, its columns (name and
//!   PostgreSQL type name) and rows as arrays. `Accept: text/csv` gives the last result's
//!   rows as CSV with a header, `Accept: application/vnd.apache.arrow.stream` as an Arrow IPC
//!   stream.
//! - `GET /v1/views/{name}?<key column>=<value>...` reads one row of a table or materialized
//!   view by its whole primary key from committed state, without planning: a JSON object of
//!   the row, 404 when there is none.
//!
//! Errors are JSON `{"error": message, "sqlstate": code}`: 400 for the client's mistakes,
//! 404 for a missing object or row, 500 for internal failures.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::scalar::ScalarValue;
use eddy_sql::Engine;
use eddy_sql::engine::{QueryOutput, Session};
use eddy_sql::error::{Error, sqlstate};
use futures::TryStreamExt;

/// The user a request was authenticated as (set by [`crate::http_auth::require`]).
#[derive(Debug, Clone)]
pub struct HttpUser(pub String);

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

#[derive(serde::Deserialize)]
struct SqlRequest {
    sql: String,
    #[serde(default)]
    params: Vec<serde_json::Value>,
}

struct StatementResult {
    command: String,
    rows: Option<(SchemaRef, Vec<RecordBatch>)>,
}

/// `POST /v1/sql`.
pub async fn sql(
    State(engine): State<Arc<Engine>>,
    Extension(HttpUser(user)): Extension<HttpUser>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let request = if json_body {
        match serde_json::from_slice::<SqlRequest>(&body) {
            Ok(r) => r,
            Err(e) => {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("the body is not {{\"sql\": ..., \"params\": [...]}}: {e}"),
                );
            }
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(sql) => SqlRequest {
                sql,
                params: Vec::new(),
            },
            Err(_) => {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
                    "the SQL text is not valid UTF-8".into(),
                );
            }
        }
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    // The session has the role's attributes, as a pgwire connection of that role does.
    let Some(role) = crate::pg::auth::login_role(&engine, &user) else {
        return error_reply(
            StatusCode::FORBIDDEN,
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("role \"{user}\" does not exist or cannot log in"),
        );
    };
    let session = engine.new_session(&user, "eddy");
    session.set_superuser(role.superuser);
    let results = match run(&session, request).await {
        Ok(results) => results,
        Err(e) => return sql_error(&e),
    };
    if accept.contains(ARROW_STREAM) {
        arrow_reply(results.last())
    } else if accept.contains("text/csv") {
        csv_reply(results.last())
    } else {
        json_reply(&results)
    }
}

async fn run(session: &Session, request: SqlRequest) -> Result<Vec<StatementResult>, Error> {
    let statements = Session::parse(&request.sql)?;
    if !request.params.is_empty() && statements.len() != 1 {
        return Err(Error::user(
            sqlstate::SYNTAX_ERROR,
            "cannot insert multiple commands into a prepared statement",
        ));
    }
    let params: Vec<ScalarValue> = request.params.iter().map(param).collect();
    let implicit = statements.len() > 1;
    if implicit {
        session.begin_implicit();
    }
    let mut results = Vec::with_capacity(statements.len());
    let mut outcome = Ok(());
    for statement in statements {
        match run_one(session, statement, params.clone()).await {
            Ok(result) => results.push(result),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if implicit {
        session.end_implicit(outcome.is_ok()).await?;
    } else if session.status() != eddy_sql::engine::TxnStatus::Idle {
        // A BEGIN without its COMMIT: the request's session ends here, and so does its work.
        session.end_implicit(false).await?;
    }
    outcome.map(|()| results)
}

async fn run_one(
    session: &Session,
    statement: eddy_sql::engine::Stmt,
    params: Vec<ScalarValue>,
) -> Result<StatementResult, Error> {
    let prepared = session.prepare(statement).await?;
    match session.execute(&prepared, params).await? {
        QueryOutput::Command(tag) => Ok(StatementResult {
            command: tag_text(&tag),
            rows: None,
        }),
        QueryOutput::Rows {
            schema,
            stream,
            command,
        } => {
            let batches: Vec<RecordBatch> = stream.try_collect().await?;
            let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let command = match command {
                Some(tag) => tag_text(&tag),
                None => format!("SELECT {n}"),
            };
            Ok(StatementResult {
                command,
                rows: Some((schema, batches)),
            })
        }
        QueryOutput::CopyOut { .. } => Err(Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "COPY TO STDOUT is not supported over HTTP; send the query with Accept: text/csv",
        )),
        QueryOutput::CopyIn { .. } => {
            // Leave the session's COPY state: nothing was written.
            let _ = session.copy_fail("COPY FROM STDIN over HTTP").await;
            Err(Error::user(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "COPY FROM STDIN is not supported over HTTP; send INSERT statements, or POST \
                 JSON lines to /v1/sources/{name}",
            ))
        }
    }
}

fn tag_text(tag: &eddy_sql::engine::CommandTag) -> String {
    match tag.rows {
        Some(n) => format!("{} {n}", tag.command),
        None => tag.command.clone(),
    }
}

/// A JSON parameter as a value the statement's parameter type is cast from.
fn param(v: &serde_json::Value) -> ScalarValue {
    match v {
        serde_json::Value::Null => ScalarValue::Null,
        serde_json::Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int64(Some(i)),
            None => ScalarValue::Float64(n.as_f64()),
        },
        serde_json::Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
        // Arrays and objects are passed as their JSON text (jsonb parameters).
        other => ScalarValue::Utf8(Some(other.to_string())),
    }
}

/// `GET /v1/views/{name}`.
pub async fn view_row(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let catalog = engine.catalog();
    let (schema, table) = match name.split_once('.') {
        Some((s, t)) => (s, t),
        None => (eddy_sql::catalog::DEFAULT_SCHEMA, name.as_str()),
    };
    let Some(def) = catalog.table(schema, table) else {
        return error_reply(
            StatusCode::NOT_FOUND,
            sqlstate::UNDEFINED_TABLE,
            format!("relation \"{name}\" does not exist"),
        );
    };
    if def.primary_key.is_empty() {
        return error_reply(
            StatusCode::BAD_REQUEST,
            sqlstate::WRONG_OBJECT_TYPE,
            format!("\"{name}\" has no primary key to read by; query it with POST /v1/sql instead"),
        );
    }
    let key_names: Vec<&str> = def
        .primary_key
        .iter()
        .map(|&c| def.columns[c].name.as_str())
        .collect();
    if let Some((unknown, _)) = query.iter().find(|(k, _)| !key_names.contains(&k.as_str())) {
        return error_reply(
            StatusCode::BAD_REQUEST,
            sqlstate::UNDEFINED_COLUMN,
            format!(
                "\"{unknown}\" is not a key column of \"{name}\"; its key is ({})",
                key_names.join(", ")
            ),
        );
    }
    let mut key = Vec::with_capacity(key_names.len());
    for (&col, column) in def.primary_key.iter().zip(&key_names) {
        let mut given = query.iter().filter(|(k, _)| k == column);
        let (Some((_, text)), None) = (given.next(), given.next()) else {
            return error_reply(
                StatusCode::BAD_REQUEST,
                sqlstate::SYNTAX_ERROR,
                format!(
                    "a point read of \"{name}\" needs each key column once: ?{}",
                    key_names
                        .iter()
                        .map(|k| format!("{k}=..."))
                        .collect::<Vec<_>>()
                        .join("&")
                ),
            );
        };
        let ty = &def.columns[col].ty;
        match ScalarValue::Utf8(Some(text.clone())).cast_to(&ty.arrow_type()) {
            Ok(v) if !v.is_null() => key.push(v),
            _ => {
                return error_reply(
                    StatusCode::BAD_REQUEST,
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                    format!("invalid input syntax for type {}: \"{text}\"", ty.pg_name()),
                );
            }
        }
    }
    let batch = match eddy_sql::engine::read_committed(&engine, &def, &key) {
        Ok(b) => b,
        Err(e) => return sql_error(&e),
    };
    if batch.num_rows() == 0 {
        return error_reply(
            StatusCode::NOT_FOUND,
            sqlstate::NO_DATA_FOUND,
            format!("no row of \"{name}\" has that key"),
        );
    }
    let schema = batch.schema();
    let row: serde_json::Map<String, serde_json::Value> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, a)| (f.name().clone(), json_value(a, 0, f)))
        .collect();
    axum::Json(serde_json::Value::Object(row)).into_response()
}

fn json_reply(results: &[StatementResult]) -> Response {
    let results: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let mut out = serde_json::Map::new();
            out.insert("command".into(), r.command.clone().into());
            if let Some((schema, batches)) = &r.rows {
                let columns: Vec<serde_json::Value> = schema
                    .fields()
                    .iter()
                    .map(|f| serde_json::json!({ "name": f.name(), "type": type_name(f) }))
                    .collect();
                let mut rows = Vec::new();
                for batch in batches {
                    for i in 0..batch.num_rows() {
                        rows.push(serde_json::Value::Array(
                            batch
                                .columns()
                                .iter()
                                .zip(schema.fields())
                                .map(|(a, f)| json_value(a, i, f))
                                .collect(),
                        ));
                    }
                }
                out.insert("columns".into(), columns.into());
                out.insert("rows".into(), rows.into());
            }
            serde_json::Value::Object(out)
        })
        .collect();
    axum::Json(serde_json::json!({ "results": results })).into_response()
}

fn csv_reply(result: Option<&StatementResult>) -> Response {
    let Some((schema, batches)) = result.and_then(|r| r.rows.as_ref()) else {
        return no_rows_reply();
    };
    let mut out = String::new();
    let header: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| csv_field(f.name()))
        .collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for batch in batches {
        for i in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(a, f)| text_value(a, i, f).map_or_else(String::new, |t| csv_field(&t)))
                .collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
    }
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response()
}

/// RFC 4180 quoting, as PostgreSQL's CSV output does it (quoted only when needed).
fn csv_field(s: &str) -> String {
    if s.is_empty() || s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn arrow_reply(result: Option<&StatementResult>) -> Response {
    let Some((schema, batches)) = result.and_then(|r| r.rows.as_ref()) else {
        return no_rows_reply();
    };
    let mut out = Vec::new();
    let written = (|| -> Result<(), datafusion::arrow::error::ArrowError> {
        let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()
    })();
    match written {
        Ok(()) => ([(header::CONTENT_TYPE, ARROW_STREAM)], out).into_response(),
        Err(e) => error_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            sqlstate::INTERNAL_ERROR,
            e.to_string(),
        ),
    }
}

fn no_rows_reply() -> Response {
    error_reply(
        StatusCode::NOT_ACCEPTABLE,
        sqlstate::FEATURE_NOT_SUPPORTED,
        "the last statement returns no rows; CSV and Arrow replies need a query".into(),
    )
}

/// The PostgreSQL type name of a result column.
fn type_name(field: &Arc<Field>) -> String {
    crate::pg::encode::pg_type(field)
        .map(|t| t.name().to_string())
        .unwrap_or_else(|_| field.data_type().to_string())
}

fn is_jsonb(field: &Field) -> bool {
    field
        .metadata()
        .get(eddy_sql::types::PG_TYPE_KEY)
        .is_some_and(|t| t == "jsonb")
}

/// A value as JSON: booleans and finite numbers as themselves, jsonb as its document, lists
/// as arrays, NULL as null, everything else as the text PostgreSQL prints.
fn json_value(array: &ArrayRef, row: usize, field: &Field) -> serde_json::Value {
    use datafusion::arrow::datatypes as t;
    use serde_json::Value as J;
    if is_null(array, row) {
        return J::Null;
    }
    match array.data_type() {
        DataType::Boolean => J::Bool(array.as_boolean().value(row)),
        DataType::Int8 => array.as_primitive::<t::Int8Type>().value(row).into(),
        DataType::Int16 => array.as_primitive::<t::Int16Type>().value(row).into(),
        DataType::Int32 => array.as_primitive::<t::Int32Type>().value(row).into(),
        DataType::Int64 => array.as_primitive::<t::Int64Type>().value(row).into(),
        DataType::UInt32 => array.as_primitive::<t::UInt32Type>().value(row).into(),
        DataType::UInt64 => array.as_primitive::<t::UInt64Type>().value(row).into(),
        DataType::Float32 | DataType::Float64 => {
            let v = match array.data_type() {
                DataType::Float32 => array.as_primitive::<t::Float32Type>().value(row) as f64,
                _ => array.as_primitive::<t::Float64Type>().value(row),
            };
            serde_json::Number::from_f64(v)
                .map(J::Number)
                .unwrap_or_else(|| J::String(text_value(array, row, field).unwrap_or_default()))
        }
        DataType::List(item) => {
            let list = array.as_list::<i32>().value(row);
            J::Array(
                (0..list.len())
                    .map(|i| json_value(&list, i, item))
                    .collect(),
            )
        }
        _ if is_jsonb(field) => {
            let text = text_value(array, row, field).unwrap_or_default();
            serde_json::from_str(&text).unwrap_or(J::String(text))
        }
        _ => text_value(array, row, field).map_or(J::Null, J::String),
    }
}

/// The text PostgreSQL prints for a value; `None` for NULL.
fn text_value(array: &ArrayRef, row: usize, _field: &Field) -> Option<String> {
    if is_null(array, row) {
        return None;
    }
    if let Some(text) = crate::pg::encode::postgres_text(array, row) {
        return Some(text);
    }
    match array.data_type() {
        DataType::Boolean => Some(
            if array.as_boolean().value(row) {
                "t"
            } else {
                "f"
            }
            .into(),
        ),
        DataType::Binary => {
            let bytes = array.as_binary::<i32>().value(row);
            let mut s = String::with_capacity(2 + bytes.len() * 2);
            s.push_str("\\x");
            for b in bytes {
                s.push_str(&format!("{b:02x}"));
            }
            Some(s)
        }
        _ => {
            let formatter =
                ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()).ok()?;
            Some(formatter.value(row).to_string())
        }
    }
}

/// NULL, including every value of an untyped NULL column (which has no validity bitmap).
fn is_null(array: &ArrayRef, row: usize) -> bool {
    array.data_type() == &DataType::Null || array.is_null(row)
}

fn sql_error(e: &Error) -> Response {
    let code = e.sqlstate();
    let status = match code {
        sqlstate::INTERNAL_ERROR => StatusCode::INTERNAL_SERVER_ERROR,
        c if c.starts_with("28") || c == "42501" => StatusCode::FORBIDDEN,
        "42P01" | "42704" | "3D000" => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut body = serde_json::json!({ "error": e.user_message(), "sqlstate": code });
    if let Some(detail) = e.detail() {
        body["detail"] = detail.into();
    }
    if let Some(hint) = e.hint() {
        body["hint"] = hint.into();
    }
    (status, axum::Json(body)).into_response()
}

fn error_reply(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message, "sqlstate": code })),
    )
        .into_response()
}
