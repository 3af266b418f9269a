//! The HTTP listener: health, storage counters, event ingestion into push sources
//! (`POST /v1/sources/{name}` with JSON lines, for devices that cannot speak Kafka), and
//! on-demand inference (`GET /v1/models`, `POST /v1/models/{name}/predict`), and the query
//! API (`POST /v1/sql`, `GET /v1/views/{name}`, see [`crate::http_sql`]).

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
        .route("/v1/sql", post(crate::http_sql::sql))
        .route("/v1/views/{name}", get(crate::http_sql::view_row))
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

/// The HTTP listener's limits (from [`crate::config::Limits`]).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub header_timeout: std::time::Duration,
    pub body_timeout: std::time::Duration,
}

impl From<&crate::config::Limits> for HttpLimits {
    fn from(l: &crate::config::Limits) -> Self {
        Self {
            max_connections: l.http_max_connections,
            max_connections_per_client: l.http_max_connections_per_client,
            header_timeout: l.http_header_timeout,
            body_timeout: l.http_body_timeout,
        }
    }
}

/// Open HTTP connections per client address; a client's entry is removed with its last one.
#[derive(Default)]
struct PerClient(parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// A connection counted against its client's cap while it lives.
struct ClientSlot(Arc<PerClient>, std::net::IpAddr);

impl PerClient {
    fn claim(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<ClientSlot> {
        let mut open = self.0.lock();
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot(self.clone(), ip))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = (self.0).0.lock();
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// What a client over a connection cap is told before the connection closes.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: 32\r\n\r\n{\"error\":\"too many connections\"}";

/// Reads the whole request body within the body timeout (and the size limit) before the
/// handlers run, so a client that trickles its body is cut off (408) instead of holding a
/// connection and a buffer forever.
async fn read_body_in_time(
    State(timeout): State<std::time::Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => {
            let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            next.run(request).await
        }
        Ok(Err(_)) => reply_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY_BYTES} bytes or broken"),
        )
        .into_response(),
        Err(_) => reply_error(
            StatusCode::REQUEST_TIMEOUT,
            format!("request body not received within {timeout:?}"),
        )
        .into_response(),
    }
}

/// Serves the API on `listener`: HTTPS to clients that open with a TLS handshake (when `tls`
/// is given), plain HTTP to the others, on the same port. At most `limits.max_connections`
/// connections at once and `limits.max_connections_per_client` from one address (others get
/// a 503 and are closed); a request head must arrive within `limits.header_timeout` and its
/// body within `limits.body_timeout`.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    auth: Arc<crate::pg::handler::Authentication>,
    limits: HttpLimits,
    default_user: String,
) -> std::io::Result<()> {
    let router = router(
        engine.clone(),
        Arc::new(crate::http_auth::HttpAuth::new(engine, auth).with_default_user(default_user)),
    )
    .layer(axum::middleware::from_fn_with_state(
        limits.body_timeout,
        read_body_in_time,
    ));
    let total = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient::default());
    let mut backoff = crate::pg::AcceptBackoff::default();
    loop {
        let (mut socket, peer) = backoff.accept(&listener).await;
        let slots = total
            .clone()
            .try_acquire_owned()
            .ok()
            .zip(per_client.claim(peer.ip(), limits.max_connections_per_client));
        let Some(slots) = slots else {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                    let _ = socket.write_all(BUSY).await;
                    let _ = socket.shutdown().await;
                })
                .await;
            });
            continue;
        };
        // Replies go out whole at once: without this, Nagle's algorithm holds a small
        // response back until the client's delayed ACK (tens of milliseconds per request).
        let _ = socket.set_nodelay(true);
        let (router, tls, header_timeout) = (router.clone(), tls.clone(), limits.header_timeout);
        tokio::spawn(async move {
            let _slots = slots;
            let connection = match crate::tls::sort_connection(socket, tls).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("http connection from {peer}: {e}");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(connection), service)
                .await;
            if let Err(e) = served {
                tracing::debug!("http connection from {peer}: {e}");
            }
        });
    }
}
