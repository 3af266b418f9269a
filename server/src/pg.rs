//! The Postgres wire protocol front end (pgwire).

pub mod auth;
pub mod encode;
pub mod errors;
pub mod execute;
pub mod handler;
pub mod params;

use std::sync::Arc;

use eddy_sql::Engine;
use pgwire::api::ConnectionManager;
use pgwire::api::cancel::DefaultCancelHandler;
use tokio::net::TcpListener;

use handler::{EddyHandler, Handlers};

/// Accepts Postgres connections until the task is dropped; with `tls`, a client's SSLRequest
/// is answered with a TLS handshake.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    auth: Arc<handler::Authentication>,
) {
    let manager = Arc::new(ConnectionManager::new());
    let handlers = Arc::new(Handlers {
        handler: Arc::new(EddyHandler::new(engine, manager.clone(), auth)),
        cancel: Arc::new(DefaultCancelHandler::new(manager)),
    });
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let handlers = handlers.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                tracing::debug!("connection from {peer} ended: {e}");
            }
        });
    }
}
