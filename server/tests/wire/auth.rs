//! Authentication: SCRAM-SHA-256 (with channel binding over TLS) and MD5 logins by real
//! clients, roles managed with CREATE/ALTER/DROP ROLE, passwords never stored in clear,
//! failed logins slowed down, the HTTP API behind the same users, and the server refusing to
//! serve the network without authentication.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{ADMIN_PASSWORD, Server, connect_result, error_text, psql_session};

fn login(server: &Server, user: &str, password: &str, options: &str) -> std::process::Output {
    Command::new("psql")
        .arg(format!(
            "host={} port={} user={user} dbname=eddy {options}",
            server.pg.ip(),
            server.pg.port()
        ))
        .args(["-X", "-At", "-c", "SELECT current_user"])
        .env("PGPASSWORD", password)
        .output()
        .expect("psql runs")
}

async fn connect_as(server: &Server, user: &str, password: &str) -> tokio_postgres::Client {
    connect_result(server, user, Some(password)).await.unwrap()
}

/// Logs in and checks whom as.
async fn try_connect(server: &Server, user: &str, password: &str) -> Result<(), String> {
    let client = connect_result(server, user, Some(password)).await?;
    let row = client.query_one("SELECT current_user", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), user);
    Ok(())
}

/// Every file under `dir`, read whole.
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_logins_for_roles_created_with_sql() {
    let mut server = Server::start_secure();
    // psql over TLS, binding the SCRAM exchange to the server's certificate (-PLUS).
    let out = login(
        &server,
        "eddy",
        ADMIN_PASSWORD,
        "sslmode=require channel_binding=require",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "eddy\n");
    // tokio-postgres without TLS: plain SCRAM-SHA-256.
    try_connect(&server, "eddy", ADMIN_PASSWORD).await.unwrap();
    let refused = "28P01: password authentication failed for user";
    let wrong = try_connect(&server, "eddy", "guess").await.unwrap_err();
    assert!(wrong.starts_with(refused), "{wrong}");
    let nobody = try_connect(&server, "nobody", "guess").await.unwrap_err();
    assert!(nobody.starts_with(refused), "{nobody}");

    let admin = server.connect().await;
    admin
        .batch_execute(
            "CREATE USER app WITH PASSWORD 'app-secret-1';
             CREATE ROLE reader LOGIN PASSWORD 'reader-secret';
             CREATE ROLE nologin PASSWORD 'x-secret';
             CREATE ROLE manager LOGIN CREATEROLE PASSWORD 'manager-secret';",
        )
        .await
        .unwrap();
    try_connect(&server, "app", "app-secret-1").await.unwrap();
    try_connect(&server, "reader", "reader-secret")
        .await
        .unwrap();
    assert!(try_connect(&server, "nologin", "x-secret").await.is_err());
    let duplicate = admin.batch_execute("CREATE ROLE app").await.unwrap_err();
    assert_eq!(error_text(&duplicate), "42710: role \"app\" already exists");

    // Only superusers and CREATEROLE roles manage roles; only superusers manage superusers.
    let app = connect_as(&server, "app", "app-secret-1").await;
    let denied = app.batch_execute("CREATE ROLE other").await.unwrap_err();
    assert!(error_text(&denied).starts_with("42501:"), "{denied}");
    // Anyone changes their own password.
    app.batch_execute("ALTER USER app PASSWORD 'app-secret-2'")
        .await
        .unwrap();
    assert!(try_connect(&server, "app", "app-secret-1").await.is_err());
    try_connect(&server, "app", "app-secret-2").await.unwrap();
    let manager = connect_as(&server, "manager", "manager-secret").await;
    manager
        .batch_execute("CREATE ROLE helper LOGIN PASSWORD 'helper-secret'")
        .await
        .unwrap();
    let escalate = manager
        .batch_execute("CREATE ROLE boss SUPERUSER")
        .await
        .unwrap_err();
    assert!(error_text(&escalate).starts_with("42501:"), "{escalate}");
    let escalate = manager
        .batch_execute("ALTER ROLE helper SUPERUSER")
        .await
        .unwrap_err();
    assert!(error_text(&escalate).starts_with("42501:"), "{escalate}");

    // psql's \du lists them as PostgreSQL does; passwords never show.
    let roles = psql_session(&server.conn_string(), "\\du");
    assert!(roles.contains(" nologin   | Cannot login "), "{roles}");
    assert!(roles.contains(" manager   | Create role "), "{roles}");
    let shown = psql_session(
        &server.conn_string(),
        "SELECT DISTINCT rolpassword FROM pg_catalog.pg_authid",
    );
    assert!(
        shown.contains("********") && !shown.contains("SCRAM"),
        "{shown}"
    );

    admin.batch_execute("DROP ROLE reader").await.unwrap();
    assert!(
        try_connect(&server, "reader", "reader-secret")
            .await
            .is_err()
    );
    let bootstrap = admin.batch_execute("DROP ROLE eddy").await.unwrap_err();
    assert!(error_text(&bootstrap).starts_with("2BP01:"), "{bootstrap}");

    // Roles survive a crash; passwords are nowhere on disk in clear.
    drop((admin, app, manager));
    server.restart();
    try_connect(&server, "app", "app-secret-2").await.unwrap();
    let disk = all_bytes(&server.data_dir);
    for secret in [
        "app-secret-1",
        "app-secret-2",
        "manager-secret",
        ADMIN_PASSWORD,
    ] {
        assert!(
            !disk.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} is stored in clear"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_counted_and_slowed_down() {
    let server = Server::start_secure();
    let mut last = Duration::ZERO;
    for _ in 0..6 {
        let started = Instant::now();
        assert!(try_connect(&server, "eddy", "wrong").await.is_err());
        last = started.elapsed();
    }
    // The sixth failure in a row waits at least a second before it is answered.
    assert!(last >= Duration::from_secs(1), "{last:?}");
    // The right password still gets in, and clears the count.
    try_connect(&server, "eddy", ADMIN_PASSWORD).await.unwrap();
    let started = Instant::now();
    assert!(try_connect(&server, "eddy", "wrong").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn md5_for_legacy_clients() {
    let server = Server::start_with_env(&[("EDDY_AUTH", "md5"), ("EDDY_ADMIN_PASSWORD", "md5-pw")]);
    let out = login(&server, "eddy", "md5-pw", "sslmode=disable");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = login(&server, "eddy", "nope", "sslmode=disable");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_http_api_takes_the_same_users() {
    let server = Server::start_secure();
    let url = |path: &str| format!("http://{}{path}", server.http);
    let curl = |args: &[&str]| -> (String, String) {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl runs");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    assert_eq!(curl(&[&url("/healthz")]).0, "200");
    assert_eq!(curl(&[&url("/v1/models")]).0, "401");
    let admin = format!("eddy:{ADMIN_PASSWORD}");
    assert_eq!(curl(&["-u", &admin, &url("/v1/models")]).0, "200");
    assert_eq!(curl(&["-u", "eddy:wrong", &url("/v1/models")]).0, "401");
    let (code, body) = curl(&["-X", "POST", "-u", &admin, &url("/v1/auth/token")]);
    assert_eq!(code, "200");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bearer = format!("Authorization: Bearer {}", token["token"].as_str().unwrap());
    assert_eq!(curl(&["-H", &bearer, &url("/v1/models")]).0, "200");
    let forged = "Authorization: Bearer not-a-token";
    assert_eq!(curl(&["-H", forged, &url("/v1/models")]).0, "401");
}

/// `eddy serve` with these arguments exits before it is ready; returns what it printed.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("serve")
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(args)
        .envs(env.iter().copied())
        .env_remove("EDDY_AUTH")
        .stdin(Stdio::null())
        .output()
        .expect("eddy runs");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn the_network_is_not_served_without_authentication() {
    let remote = ["--pg-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0"];
    let message = refused(&[&remote[..], &["--auth", "trust"]].concat(), &[]);
    assert!(
        message.contains("refusing to listen on 0.0.0.0:0"),
        "{message}"
    );
    // Authentication is on by default there, and needs someone to log in as.
    let message = refused(&remote, &[]);
    assert!(message.contains("EDDY_ADMIN_PASSWORD"), "{message}");
    // The explicit opt-out starts.
    let dir = tempfile::tempdir().unwrap();
    let (mut child, line) = crate::common::spawn(
        &[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--pg-listen",
            "0.0.0.0:0",
            "--http-listen",
            "127.0.0.1:0",
            "--auth",
            "trust",
            "--insecure-allow-remote-trust",
        ],
        &[],
    );
    assert!(line.starts_with("eddy ready"));
    let _ = child.kill();
    let _ = child.wait();
}
