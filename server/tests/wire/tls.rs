//! TLS on the Postgres listener, driven with the real psql (libpq): the self-signed
//! certificate Eddy makes on first start, `sslmode=require` and `verify-full`, a configured
//! certificate, and clients that do not ask for TLS; and HTTPS beside HTTP on the HTTP
//! listener, driven with curl.

use std::process::Command;

use crate::common::Server;

/// Runs a client command; (success, stdout followed by stderr).
fn run(command: &mut Command) -> (bool, String) {
    let out = command.output().expect("run the client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `SELECT 'ok'` and `\conninfo` through psql with `conninfo`.
fn psql(conninfo: &str) -> (bool, String) {
    run(Command::new("psql").arg(conninfo).args([
        "-X",
        "-At",
        "-c",
        "SELECT 'ok'",
        "-c",
        "\\conninfo",
    ]))
}

fn conninfo(server: &Server, host: &str, extra: &str) -> String {
    format!(
        "host={host} hostaddr={} port={} user=eddy dbname=eddy {extra}",
        server.pg.ip(),
        server.pg.port()
    )
}

#[test]
fn psql_connects_over_tls_with_the_certificate_eddy_made() {
    let server = Server::start();
    let cert = server.data_dir.join("tls/server.crt");
    assert!(cert.exists(), "a self-signed certificate on first start");

    let (ok, out) = psql(&conninfo(&server, "localhost", "sslmode=require"));
    assert!(
        ok && out.contains("SSL connection (protocol: TLSv1.3"),
        "{out}"
    );
    let (ok, out) = psql(&conninfo(
        &server,
        "localhost",
        &format!("sslmode=verify-full sslrootcert={}", cert.display()),
    ));
    assert!(
        ok && out.starts_with("ok\n"),
        "verify-full with Eddy's certificate: {out}"
    );
    let (ok, out) = psql(&conninfo(
        &server,
        "127.0.0.1",
        &format!("sslmode=verify-full sslrootcert={}", cert.display()),
    ));
    assert!(ok, "the certificate names 127.0.0.1 too: {out}");
    let (ok, out) = psql(&conninfo(
        &server,
        "eddy.example.com",
        &format!("sslmode=verify-full sslrootcert={}", cert.display()),
    ));
    assert!(
        !ok && out.contains("eddy.example.com"),
        "a name it does not hold: {out}"
    );
    let (ok, out) = psql(&conninfo(
        &server,
        "localhost",
        "sslmode=verify-full sslrootcert=/etc/ssl/certs/ca-certificates.crt",
    ));
    assert!(!ok && out.contains("certificate verify failed"), "{out}");
    let (ok, out) = psql(&conninfo(&server, "localhost", "sslmode=disable"));
    assert!(
        ok && !out.contains("SSL connection"),
        "plain connections still work: {out}"
    );
}

#[test]
fn a_configured_certificate_is_served_and_none_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["db.local".to_string()]).unwrap();
    let cert = dir.path().join("db.crt");
    let key = dir.path().join("db.key");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let server = Server::start_with_env(&[
        ("EDDY_TLS_CERT", cert.to_str().unwrap()),
        ("EDDY_TLS_KEY", key.to_str().unwrap()),
    ]);
    assert!(!server.data_dir.join("tls").exists(), "no self-signed pair");
    let (ok, out) = psql(&conninfo(
        &server,
        "db.local",
        &format!("sslmode=verify-full sslrootcert={}", cert.display()),
    ));
    assert!(ok && out.contains("SSL connection"), "{out}");
}

/// `curl` of `url` with extra arguments; (success, body).
fn curl(url: &str, args: &[&str]) -> (bool, String) {
    run(Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .arg(url))
}

#[test]
fn the_http_api_answers_https_and_plain_http_on_one_port() {
    let server = Server::start();
    let cert = server.data_dir.join("tls/server.crt");
    let port = server.http.port();
    let (ok, out) = curl(&format!("http://127.0.0.1:{port}/healthz"), &[]);
    assert!(ok && out.contains("\"ok\""), "plain HTTP: {out}");
    let (ok, out) = curl(
        &format!("https://localhost:{port}/healthz"),
        &["--cacert", cert.to_str().unwrap()],
    );
    assert!(ok && out.contains("\"ok\""), "HTTPS, verified: {out}");
    let (ok, out) = curl(&format!("https://localhost:{port}/healthz"), &[]);
    assert!(!ok, "an unknown issuer is refused by default: {out}");
    // A client that connects and says nothing does not hold up the others.
    let _idle = std::net::TcpStream::connect(server.http).unwrap();
    let (ok, out) = curl(
        &format!("https://127.0.0.1:{port}/v1/models"),
        &["--cacert", cert.to_str().unwrap()],
    );
    assert!(ok && out.contains("models"), "{out}");
}
