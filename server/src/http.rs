//! The HTTP listener: health for now; the REST APIs of later features mount here.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use eddy_sql::Engine;
use tokio::net::TcpListener;

pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/storage", get(storage))
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

pub async fn serve(listener: TcpListener, engine: Arc<Engine>) -> std::io::Result<()> {
    axum::serve(listener, router(engine)).await
}
