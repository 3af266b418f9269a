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

pub fn router(engine: Arc<Engine>, auth: Arc<crate::http_auth::HttpAuth>) -> Router {
    let token = Router::new()
        .route("/v1/auth/token", post(crate::http_auth::issue_token))
        .with_state(auth.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/storage", get(storage))
        .route("/v1/sources/{name}", post(ingest))
        .route("/v1/models", get(crate::inference::list_models))
        .route("/v1/models/{name}/predict", post(crate::inference::predict))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(engine)
        .merge(token)
        .layer(axum::middleware::from_fn_with_state(
            auth,
            crate::http_auth::require,
        ))
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

pub(crate) type Reply = (StatusCode, axum::Json<serde_json::Value>);

/// Largest request body accepted (ingestion and inference).
const MAX_BODY_BYTES: usize = 16 << 20;

pub(crate) fn reply_error(status: StatusCode, message: String) -> Reply {
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

/// Serves the API on `listener`: HTTPS to clients that open with a TLS handshake (when `tls`
/// is given), plain HTTP to the others, on the same port.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Arc<crate::pg::handler::Authentication>,
) -> std::io::Result<()> {
    let router = router(
        engine.clone(),
        Arc::new(crate::http_auth::HttpAuth::new(engine, auth)),
    );
    match tls {
        None => axum::serve(listener, router).await,
        Some(tls) => axum::serve(crate::tls::EitherListener::new(listener, tls), router).await,
    }
}
