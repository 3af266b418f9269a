//! The Eddy server: configuration, the Postgres wire front end, the HTTP API, start-up and
//! shutdown.

pub mod bench;
pub mod config;
pub mod http;
pub mod http_auth;
pub mod http_sql;
pub mod inference;
pub mod pg;
pub mod tls;

use std::sync::Arc;

use anyhow::{Context, Result};
use eddy_sql::Engine;
use tokio::net::TcpListener;

use config::Config;

/// Creates the bootstrap superuser, and checks that someone can log in when authentication
/// is on.
async fn authentication(
    engine: &Arc<Engine>,
    config: &Config,
) -> Result<Arc<pg::handler::Authentication>> {
    use pg::auth::Method;
    engine.md5_passwords.store(
        config.auth == Method::Md5,
        std::sync::atomic::Ordering::Relaxed,
    );
    let session = engine.new_session(&config.admin_user, "eddy");
    let password = config.admin_password.as_ref().map(|p| p.0.as_str());
    eddy_sql::engine::bootstrap_admin(&session, &config.admin_user, password)
        .await
        .context("cannot create the bootstrap superuser")?;
    drop(session);
    let catalog = engine.catalog();
    let usable = |r: &&Arc<eddy_sql::catalog::RoleDef>| {
        r.login
            && match config.auth {
                Method::Md5 => r.md5.is_some(),
                _ => r.scram.is_some(),
            }
    };
    if config.auth != Method::Trust && !catalog.roles().any(|r| usable(&r)) {
        anyhow::bail!(
            "authentication is on ({:?}) but no role has a password to log in with: set the \
             bootstrap superuser's with EDDY_ADMIN_PASSWORD",
            config.auth
        );
    }
    let end_point = tls::end_point(config.tls.as_ref(), &config.data_dir, config.pg_listen)?;
    Ok(Arc::new(pg::handler::Authentication {
        method: config.auth,
        end_point: Some(end_point),
        throttle: Default::default(),
        mock_nonce: mock_nonce(&config.data_dir)?,
    }))
}

/// The server's secret for unknown roles' mock SCRAM salts: 32 random bytes made on first
/// start and kept (owner-only) in the data dir.
fn mock_nonce(data_dir: &std::path::Path) -> Result<Vec<u8>> {
    let path = data_dir.join("mock_auth_nonce");
    if let Ok(bytes) = std::fs::read(&path)
        && bytes.len() == 32
    {
        return Ok(bytes);
    }
    let mut bytes = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    tls::replace_file(&path, &bytes, 0o600)?;
    Ok(bytes)
}

/// Opens the database, binds both listeners, prints the ready line, and serves until `stop`
/// resolves.
pub async fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    eddy_connectors::store::set_use_environment(config.object_store_environment);
    let engine = Engine::open_with_limits(&config.data_dir, config.limits.engine.clone())
        .with_context(|| format!("cannot open data dir {}", config.data_dir.display()))?;
    let pg = TcpListener::bind(config.pg_listen)
        .await
        .with_context(|| format!("cannot listen on {} (pg)", config.pg_listen))?;
    let http = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (http)", config.http_listen))?;
    let tls = tls::acceptor(config.tls.as_ref(), &config.data_dir, config.pg_listen)?;
    let auth = authentication(&engine, &config).await?;
    engine.start_streams(tokio::runtime::Handle::current());
    println!(
        "eddy ready: postgres on {}, http on {}, data in {}",
        pg.local_addr()?,
        http.local_addr()?,
        config.data_dir.display()
    );
    use std::io::Write;
    std::io::stdout().flush()?;
    let slots = pg::slots::Slots::new(
        config.limits.max_connections,
        config.limits.superuser_reserved_connections,
    );
    let pg_task = tokio::spawn(pg::serve(
        pg,
        engine.clone(),
        Some(tls.clone()),
        auth.clone(),
        slots,
    ));
    let http_task = tokio::spawn(http::serve(
        http,
        engine.clone(),
        Some(tls),
        auth,
        http::HttpLimits::from(&config.limits),
        config.admin_user.clone(),
    ));
    stop.await;
    tracing::info!("shutting down");
    pg_task.abort();
    http_task.abort();
    let _ = pg_task.await;
    let _ = http_task.await;
    drop(Arc::try_unwrap(engine).ok());
    Ok(())
}
