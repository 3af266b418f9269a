//! The HTTP listener: health, storage counters, event ingestion into push sources
//! (`POST /v1/sources/{name}` with JSON lines, for devices that cannot speak Kafka), and
//! on-demand inference (`GET /v1/models`, `POST /v1/models/{name}/predict`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use eddy_connectors::format::{DEFAULT_MAX_EVENT_BYTES, EventDecoder, Format, RawEvent};
use eddy_sql::Engine;
use tokio::net::TcpListener;

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/storage", get(storage))
        .route("/v1/sources/{name}", post(ingest))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{name}/predict", post(predict))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(engine)
}

async fn healthz(State(engine): State<Arc<Engine>>) -> axum::Json<serde_json::Value> {
    let version = engine.catalog().version;
    axum::Json(serde_json::json!({ "status": "ok", "catalog_version": version }))
}

/// Storage counters: commits that wrote the WAL themselves versus those whose write (and
/// sync) another commit's leader did for them, and WAL syncs — group commit at work.
async fn storage(State(engine): State<Arc<Engine>>) -> axum::Json<serde_json::Value> {
    let stats: serde_json::Map<String, serde_json::Value> = engine
        .storage_stats()
        .into_iter()
        .map(|(k, v)| (k, serde_json::Value::from(v)))
        .collect();
    axum::Json(serde_json::Value::Object(stats))
}

type Reply = (StatusCode, axum::Json<serde_json::Value>);

/// Largest request body accepted (ingestion and inference).
const MAX_BODY_BYTES: usize = 16 << 20;
/// Most rows one predict request may carry.
const MAX_PREDICT_ROWS: usize = 100_000;

/// `GET /v1/models`: every model with its inputs and outputs.
async fn list_models(State(engine): State<Arc<Engine>>) -> Reply {
    let catalog = engine.catalog();
    let tensors = |t: &[eddy_sql::catalog::ModelTensor]| -> Vec<serde_json::Value> {
        t.iter()
            .map(|t| serde_json::json!({ "name": t.name, "type": t.element, "shape": t.shape }))
            .collect()
    };
    let models: Vec<serde_json::Value> = catalog
        .models()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "sha256": m.sha256,
                "inputs": tensors(&m.inputs),
                "outputs": tensors(&m.outputs),
            })
        })
        .collect();
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "models": models })),
    )
}

/// `POST /v1/models/{name}/predict` with `{"rows": [[f1, f2, ...], ...]}`: the model's first
/// output for each row, scored in one batch; `null` features give a `null` prediction.
async fn predict(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Reply {
    let request: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return reply_error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let Some(rows) = request.get("rows").and_then(|r| r.as_array()) else {
        return reply_error(
            StatusCode::BAD_REQUEST,
            "expected {\"rows\": [[feature, ...], ...]}".into(),
        );
    };
    if rows.len() > MAX_PREDICT_ROWS {
        return reply_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_PREDICT_ROWS} rows per request"),
        );
    }
    let Some(def) = engine
        .catalog()
        .model(eddy_sql::catalog::DEFAULT_SCHEMA, &name)
    else {
        return reply_error(
            StatusCode::NOT_FOUND,
            format!("model \"{name}\" does not exist"),
        );
    };
    let model = match engine.models.get(&def) {
        Ok(m) => m,
        Err(e) => return reply_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let width = match model.feature_count() {
        Ok(n) => n,
        Err(e) => return reply_error(StatusCode::UNPROCESSABLE_ENTITY, e.0),
    };
    let mut columns = vec![Vec::with_capacity(rows.len()); width];
    let mut valid = vec![true; rows.len()];
    for (i, row) in rows.iter().enumerate() {
        let Some(values) = row.as_array().filter(|v| v.len() == width) else {
            return reply_error(
                StatusCode::BAD_REQUEST,
                format!("row {i}: model \"{name}\" takes {width} features"),
            );
        };
        for (j, v) in values.iter().enumerate() {
            match v {
                serde_json::Value::Null => {
                    valid[i] = false;
                    columns[j].push(0.0);
                }
                v => match v.as_f64() {
                    Some(x) => columns[j].push(x as f32),
                    None => {
                        return reply_error(
                            StatusCode::BAD_REQUEST,
                            format!("row {i}, feature {j}: expected a number, got {v}"),
                        );
                    }
                },
            }
        }
    }
    let n = rows.len();
    let result = tokio::task::spawn_blocking(move || {
        let slices: Vec<&[f32]> = columns.iter().map(|c| c.as_slice()).collect();
        model.predict(&slices, n)
    })
    .await;
    match result {
        Ok(Ok(scores)) => {
            let predictions: Vec<serde_json::Value> = scores
                .iter()
                .zip(&valid)
                .map(|(s, ok)| {
                    if *ok {
                        serde_json::json!(*s as f64)
                    } else {
                        serde_json::Value::Null
                    }
                })
                .collect();
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({ "model": name, "predictions": predictions })),
            )
        }
        Ok(Err(e)) => reply_error(StatusCode::INTERNAL_SERVER_ERROR, e.0),
        Err(e) => reply_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn reply_error(status: StatusCode, message: String) -> Reply {
    (status, axum::Json(serde_json::json!({ "error": message })))
}

/// Appends the JSON lines of the body to a push source. Good lines become events; each bad
/// line goes to `<source>_errors` and is reported (the first 20) in the response.
async fn ingest(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Reply {
    let catalog = engine.catalog();
    let Some(def) = catalog.table(eddy_sql::catalog::DEFAULT_SCHEMA, &name) else {
        return reply_error(
            StatusCode::NOT_FOUND,
            format!("source \"{name}\" does not exist"),
        );
    };
    let Some(info) = def.source() else {
        return reply_error(StatusCode::NOT_FOUND, format!("\"{name}\" is not a source"));
    };
    if let Some(c) = &info.connector {
        return reply_error(
            StatusCode::CONFLICT,
            format!(
                "source \"{name}\" reads from {c}; only sources without a connector accept events"
            ),
        );
    }
    let max_bytes = info
        .options
        .iter()
        .find(|(k, _)| k == "max_event_bytes")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_EVENT_BYTES);
    let schema = eddy_sql::stream::manager::declared_schema(&def);
    let decoder = match EventDecoder::new(schema, Format::Json, max_bytes) {
        Ok(d) => d,
        Err(e) => return reply_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let events: Vec<RawEvent<'_>> = body
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.trim_ascii().is_empty())
        .map(|(i, line)| RawEvent {
            partition: 0,
            offset: i as i64 + 1,
            key: None,
            timestamp_ms: None,
            payload: line,
        })
        .collect();
    let decoded = match decoder.decode(&events) {
        Ok(d) => d,
        Err(e) => return reply_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let errors: Vec<serde_json::Value> = decoded
        .dead_letters
        .iter()
        .take(20)
        .map(|d| serde_json::json!({ "line": d.offset, "error": d.error }))
        .collect();
    let accepted = decoded.rows.num_rows();
    let rejected = decoded.dead_letters.len();
    let result = tokio::task::spawn_blocking(move || {
        let mut dead = decoded.dead_letters;
        engine.append_events(&def, &decoded.rows, &mut dead)
    })
    .await;
    match result {
        Ok(Ok(_)) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({
                "accepted": accepted,
                "rejected": rejected,
                "errors": errors,
            })),
        ),
        Ok(Err(e)) => reply_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => reply_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub async fn serve(listener: TcpListener, engine: Arc<Engine>) -> std::io::Result<()> {
    axum::serve(listener, router(engine)).await
}
