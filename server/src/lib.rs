//! The Eddy server: configuration, the Postgres wire front end, the HTTP API, start-up and
//! shutdown.

pub mod bench;
pub mod config;
pub mod http;
pub mod inference;
pub mod pg;
pub mod tls;

use std::sync::Arc;

use anyhow::{Context, Result};
use eddy_sql::Engine;
use tokio::net::TcpListener;

use config::Config;

/// Opens the database, binds both listeners, prints the ready line, and serves until `stop`
/// resolves.
pub async fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    let engine = Engine::open(&config.data_dir)
        .with_context(|| format!("cannot open data dir {}", config.data_dir.display()))?;
    let pg = TcpListener::bind(config.pg_listen)
        .await
        .with_context(|| format!("cannot listen on {} (pg)", config.pg_listen))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (http)", config.http_listen))?;
    let tls = tls::acceptor(config.tls.as_ref(), &config.data_dir, config.pg_listen)?;
    engine.start_streams(tokio::runtime::Handle::current());
    println!(
        "eddy ready: postgres on {}, http on {}, data in {}",
        pg.local_addr()?,
        http.local_addr()?,
        config.data_dir.display()
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    let pg_task = tokio::spawn(pg::serve(pg, engine.clone(), Some(tls.clone())));
    let http_task = tokio::spawn(http::serve(http, engine.clone(), Some(tls)));
    stop.await;
    tracing::info!("shutting down");
    pg_task.abort();
    http_task.abort();
    let _ = pg_task.await;
    let _ = http_task.await;
    drop(Arc::try_unwrap(engine).ok());
    Ok(())
}
