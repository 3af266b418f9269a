//! Migration tools (dbmate, sqlx-cli, refinery_cli) run a real folder of migrations (scripts/clients/migrations: tables, a
//! view, a source, a materialized view, a model, a stream) against Eddy over TLS with SCRAM:
//! a second run changes nothing, and a failing migration leaves nothing half-applied.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Server, psql_session};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared migrations, numbered 1..n, with the model's path filled in.
fn migrations() -> Vec<(u32, String, String)> {
    let model = repo_root().join("examples/models/anomaly_v1.onnx");
    let dir = repo_root().join("scripts/clients/migrations");
    let mut out: Vec<(u32, String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let file = e.file_name().to_string_lossy().to_string();
            let (n, name) = file.split_once('_').unwrap();
            let sql = std::fs::read_to_string(e.path())
                .unwrap()
                .replace("@MODEL@", &model.display().to_string());
            (
                n.parse().unwrap(),
                name.trim_end_matches(".sql").to_string(),
                sql,
            )
        })
        .collect();
    out.sort();
    out
}

/// A migration that creates things, then fails.
const FAILING: &str = "CREATE TABLE half_done (id int PRIMARY KEY);
CREATE SOURCE half_source (x int);
INSERT INTO no_such_table VALUES (1);
";

fn run(what: &str, command: &mut Command) -> (bool, String) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (scripts/setup.sh installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// What the migrations made, as psql lists it, and the versions the tool recorded.
fn state(server: &Server, versions: &str) -> String {
    psql_session(&server.conn_string(), &format!("\\d\n{versions}"))
}

fn check_migrated(server: &Server, versions: &str, ran: impl Fn() -> (bool, String)) {
    let (ok, out) = ran();
    assert!(ok, "first run: {out}");
    let listing = state(server, versions);
    for object in [
        " devices ",
        " named_devices ",
        " readings ",
        " per_device ",
        " anomaly ",
        " hot ",
        " settings ",
    ] {
        assert!(listing.contains(object), "{object} missing:\n{listing}");
    }
    let rows = psql_session(&server.conn_string(), "SELECT count(*) FROM devices");
    assert!(rows.lines().any(|l| l.trim() == "2"), "{rows}");
    // A second run is a no-op.
    let (ok, out) = ran();
    assert!(ok, "second run: {out}");
    assert_eq!(state(server, versions), listing);
}

fn check_failure_rolled_back(server: &Server, versions: &str, ran: impl Fn() -> (bool, String)) {
    let before = state(server, versions);
    let (ok, out) = ran();
    assert!(!ok, "the failing migration was accepted: {out}");
    assert!(out.contains("no_such_table"), "{out}");
    assert_eq!(
        state(server, versions),
        before,
        "a failed migration left changes"
    );
}

fn write_dbmate(dir: &Path, failing: bool) {
    let folder = dir.join("db/migrations");
    std::fs::create_dir_all(&folder).unwrap();
    let mut all = migrations();
    if failing {
        all.push((all.len() as u32 + 1, "failing".into(), FAILING.into()));
    }
    for (n, name, sql) in all {
        std::fs::write(
            folder.join(format!("2026010100{n:04}_{name}.sql")),
            format!("-- migrate:up\n{sql}\n-- migrate:down\n"),
        )
        .unwrap();
    }
}

#[test]
fn dbmate_runs_a_folder_of_migrations() {
    let server = Server::start_secure();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}?sslmode=require", server.url());
    let dbmate = |dir: &Path| {
        run(
            "dbmate",
            Command::new(repo_root().join(".tools/node/node_modules/.bin/dbmate"))
                .args(["--no-dump-schema", "migrate"])
                .env("DATABASE_URL", &url)
                .current_dir(dir),
        )
    };
    let versions = "SELECT version FROM schema_migrations ORDER BY 1";
    write_dbmate(dir.path(), false);
    check_migrated(&server, versions, || dbmate(dir.path()));
    write_dbmate(dir.path(), true);
    check_failure_rolled_back(&server, versions, || dbmate(dir.path()));
}

fn write_plain(dir: &Path, name: impl Fn(u32, &str) -> String, failing: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let mut all = migrations();
    if failing {
        all.push((all.len() as u32 + 1, "failing".into(), FAILING.into()));
    }
    for (n, description, sql) in all {
        std::fs::write(dir.join(name(n, &description)), sql).unwrap();
    }
}

/// A program `cargo install` put in $CARGO_HOME/bin (scripts/setup.sh installs it).
fn cargo_bin(name: &str) -> PathBuf {
    std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"))
        .join("bin")
        .join(name)
}

/// Runs a tool over the shared migrations laid out with `name`, then over them plus a
/// failing one.
fn check_tool(
    server: &Server,
    versions: &str,
    name: impl Fn(u32, &str) -> String + Copy,
    tool: impl Fn(&Path) -> (bool, String),
) {
    let dir = tempfile::tempdir().unwrap();
    write_plain(dir.path(), name, false);
    check_migrated(server, versions, || tool(dir.path()));
    write_plain(dir.path(), name, true);
    check_failure_rolled_back(server, versions, || tool(dir.path()));
}

/// `sqlx migrate run`: its own advisory lock around the run, each migration in a transaction.
#[test]
fn sqlx_migrate_runs_a_folder_of_migrations() {
    let server = Server::start_secure();
    let url = format!("{}?sslmode=require", server.url());
    check_tool(
        &server,
        "SELECT version, success FROM _sqlx_migrations ORDER BY 1",
        |n, d| format!("{n}_{d}.sql"),
        |dir| {
            run(
                "sqlx",
                Command::new(cargo_bin("sqlx"))
                    .args(["migrate", "run", "--source"])
                    .arg(dir)
                    .args(["--database-url", &url]),
            )
        },
    );
}

/// refinery (refinery_cli; its PostgreSQL driver has no TLS, so SCRAM over a plain
/// connection), one transaction per migration.
#[test]
fn refinery_runs_a_folder_of_migrations() {
    let server = Server::start_secure();
    let url = server.url();
    check_tool(
        &server,
        "SELECT version, name FROM refinery_schema_history ORDER BY 1",
        |n, d| format!("V{n}__{d}.sql"),
        |dir| {
            run(
                "refinery",
                Command::new(cargo_bin("refinery"))
                    .args(["migrate", "-e", "EDDY_TEST_DB_URL", "-p"])
                    .arg(dir)
                    .env("EDDY_TEST_DB_URL", &url),
            )
        },
    );
}
