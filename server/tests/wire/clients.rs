//! Real client programs against a real server: psql, and the driver suite — psycopg 3,
//! psycopg2, asyncpg, node-postgres and pgjdbc, each run by its own script in
//! scripts/clients/ over TLS with SCRAM-SHA-256 (every supported type in text and binary,
//! parameters, NULLs, errors with SQLSTATE, transactions, driver-specific catalog use).

use std::path::PathBuf;
use std::process::Command;

use crate::common::Server;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn psql(server: &Server, args: &[&str], stdin_sql: &str) -> String {
    let mut all = vec!["-At"];
    all.extend_from_slice(args);
    crate::common::psql_with(&server.conn_string(), &all, stdin_sql)
}

#[test]
fn psql_runs_a_session_with_variables() {
    let server = Server::start();
    let out = psql(
        &server,
        &["-v", "wanted=2", "-v", "label='pear'"],
        "CREATE TABLE fruit (id int PRIMARY KEY, name text);\n\
         INSERT INTO fruit VALUES (1, 'apple'), (2, :label);\n\
         SELECT name FROM fruit WHERE id = :wanted;\n\
         BEGIN;\n\
         UPDATE fruit SET name = upper(name) WHERE id = :wanted;\n\
         COMMIT;\n\
         SELECT id || ':' || name FROM fruit ORDER BY id;\n",
    );
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines,
        vec![
            "CREATE TABLE",
            "INSERT 0 2",
            "pear",
            "BEGIN",
            "UPDATE 1",
            "COMMIT",
            "1:apple",
            "2:PEAR"
        ]
    );
    // An error is reported with its SQLSTATE-backed message and psql's exit code says so.
    let failed = Command::new("psql")
        .arg(server.conn_string())
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", "SELECT * FROM missing"])
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("relation \"missing\" does not exist")
    );
}

#[test]
fn psycopg_3_runs_parameterised_queries() {
    let server = Server::start();
    let script = repo_root().join("scripts/clients/psycopg_check.py");
    let out = Command::new("python3")
        .env("PYTHONPATH", repo_root().join(".tools/python"))
        .arg(script)
        .arg(server.conn_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "psycopg check failed (is psycopg installed? scripts/setup.sh does it):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a driver script; panics with its output unless it succeeds.
fn run_driver(what: &str, mut command: Command) {
    let out = command
        .env("PYTHONPATH", repo_root().join(".tools/python"))
        .env("NODE_PATH", repo_root().join(".tools/node/node_modules"))
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (scripts/setup.sh installs it)"));
    assert!(
        out.status.success(),
        "{what} failed (scripts/setup.sh installs the drivers):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn psycopg_3_and_psycopg2_drivers() {
    let server = Server::start_secure();
    for driver in ["psycopg", "psycopg2"] {
        let mut c = Command::new("python3");
        c.arg(repo_root().join("scripts/clients/dbapi_check.py"))
            .arg(driver)
            .arg(server.conn_string());
        run_driver(driver, c);
    }
}

#[test]
fn asyncpg_driver() {
    let server = Server::start_secure();
    let mut c = Command::new("python3");
    c.arg(repo_root().join("scripts/clients/asyncpg_check.py"))
        .arg(server.url());
    run_driver("asyncpg", c);
}

#[test]
fn node_postgres_driver() {
    let server = Server::start_secure();
    let mut c = Command::new("node");
    c.arg(repo_root().join("scripts/clients/node_pg_check.js"))
        .arg(format!("{}?sslmode=no-verify", server.url()));
    run_driver("node-postgres", c);
}

#[test]
fn pgjdbc_driver() {
    let server = Server::start_secure();
    let mut c = Command::new("java");
    c.args(["-cp", "/usr/share/java/postgresql.jar"])
        .arg(repo_root().join("scripts/clients/PgJdbcCheck.java"))
        .arg(format!(
            "jdbc:postgresql://{}/eddy?sslmode=require",
            server.pg
        ))
        .arg("eddy")
        .arg(server.password.as_deref().unwrap_or_default());
    run_driver("pgjdbc", c);
}
