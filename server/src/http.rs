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
        .with_state(engine)
}

async fn healthz(State(engine): State<Arc<Engine>>) -> axum::Json<serde_json::Value> {
    let version = engine.catalog().version;
    axum::Json(serde_json::json!({ "status": "ok", "catalog_version": version }))
}

pub async fn serve(listener: TcpListener, engine: Arc<Engine>) -> std::io::Result<()> {
    axum::serve(listener, router(engine)).await
}
