//! ORMs and their applications, run against Eddy and against a real PostgreSQL 15: what
//! the application prints must be the same on both.

use std::path::PathBuf;
use std::process::Command;

use crate::common::{Postgres, Server};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a client script with `conn` as its argument; its output, or a panic with it.
fn run(what: &str, program: &str, script: &str, conn: &str) -> String {
    let out = Command::new(program)
        .env("PYTHONPATH", repo_root().join(".tools/python"))
        .env("NODE_PATH", repo_root().join(".tools/node/node_modules"))
        .arg(repo_root().join("scripts/clients").join(script))
        .args(
            conn.rsplit_once(" phase=")
                .map_or(vec![conn], |(c, p)| vec![c, p]),
        )
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (scripts/setup.sh installs it)"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn assert_same(what: &str, postgres: &str, eddy: &str) {
    if postgres == eddy {
        return;
    }
    let mut report = String::new();
    for (p, e) in postgres.lines().zip(eddy.lines()) {
        if p != e {
            report.push_str(&format!("postgres: {p}\neddy:     {e}\n"));
        }
    }
    panic!(
        "{what} printed differently on Eddy ({} lines) and PostgreSQL ({} lines):\n{report}\n--- eddy ---\n{eddy}",
        eddy.lines().count(),
        postgres.lines().count()
    );
}

#[test]
fn a_sqlalchemy_application_runs_as_on_postgres() {
    let pg = Postgres::start();
    let eddy = Server::start_secure();
    let on_postgres = run(
        "SQLAlchemy on PostgreSQL",
        "python3",
        "sqlalchemy_app.py",
        &pg.conn_string(),
    );
    let on_eddy = run(
        "SQLAlchemy on Eddy",
        "python3",
        "sqlalchemy_app.py",
        &eddy.conn_string(),
    );
    assert_same("the SQLAlchemy application", &on_postgres, &on_eddy);
    assert!(
        on_eddy.contains("duplicate refused 23505 users_email_key"),
        "{on_eddy}"
    );
    // A second run drops and recreates everything, as test suites do.
    let again = run(
        "SQLAlchemy on Eddy, again",
        "python3",
        "sqlalchemy_app.py",
        &eddy.conn_string(),
    );
    assert_same("the second run", &on_postgres, &again);
}

#[test]
fn alembic_migrations_with_alter_table_run_as_on_postgres() {
    let pg = Postgres::start();
    let eddy = Server::start_secure();
    let on_postgres = run(
        "Alembic on PostgreSQL",
        "python3",
        "alembic_app.py",
        &pg.conn_string(),
    );
    let on_eddy = run(
        "Alembic on Eddy",
        "python3",
        "alembic_app.py",
        &eddy.conn_string(),
    );
    assert_same("the Alembic migrations", &on_postgres, &on_eddy);
    assert!(
        on_eddy.contains("upgrade head version ['0004']"),
        "{on_eddy}"
    );
    assert!(on_eddy.contains("downgrade base tables []"), "{on_eddy}");
}

/// A node-postgres script's output against PostgreSQL and against Eddy, checked equal.
fn node_on_both(what: &str, script: &str) -> String {
    let pg = Postgres::start();
    let eddy = Server::start_secure();
    let pg_url = format!(
        "postgresql://eddy@localhost:{}/postgres?host={}",
        pg.port,
        pg.socket_dir.display()
    );
    let on_postgres = run(&format!("{what} on PostgreSQL"), "node", script, &pg_url);
    let on_eddy = run(
        &format!("{what} on Eddy"),
        "node",
        script,
        &format!("{}?sslmode=no-verify", eddy.url()),
    );
    assert_same(what, &on_postgres, &on_eddy);
    on_eddy
}

#[test]
fn a_knex_service_with_migrations_runs_as_on_postgres() {
    let out = node_on_both("the knex service", "knex_app.js");
    assert!(out.contains(r#""one" [{"one":1}]"#), "{out}");
}

#[test]
fn a_node_postgres_service_receives_alerts_through_listen() {
    let out = node_on_both("the LISTEN service", "node_listen.js");
    assert!(out.contains(r#""Other Channel" "last" true"#), "{out}");
}

#[test]
fn a_notify_sink_pushes_a_streams_alerts_to_listeners() {
    let eddy = Server::start_secure();
    let out = run(
        "notify sink",
        "node",
        "node_notify_sink.js",
        &format!("{}?sslmode=no-verify", eddy.url()),
    );
    assert_eq!(
        out.lines().take(3).collect::<Vec<_>>(),
        vec![
            r#"["alerts",{"device":2,"temp":95.5}]"#,
            r#"["alerts",{"device":3,"temp":99}]"#,
            r#"["alerts",{"device":4,"temp":91}]"#,
        ],
        "{out}"
    );
}

/// psql running a script (errors do not stop it): stdout and stderr together.
fn psql_script(conn: &str, script: &std::path::Path) -> String {
    let out = Command::new("psql")
        .arg(conn)
        .args(["-X", "-f"])
        .arg(script)
        .output()
        .expect("psql (scripts/setup.sh installs it)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn psql_copy_loads_csv_and_text_as_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("people.csv");
    let mut data = String::from("id,name,email,score,active,joined\n");
    let names = ["Ada", "Bob", "Cy", "Dee, Jr.", "Eve \"\"E\"\""];
    for i in 1..=5000u32 {
        data.push_str(&format!(
            "{i},\"{}\",u{i}@x.org,{}.{:02},{},2024-01-{:02} 10:00:00\n",
            names[(i % 5) as usize],
            i % 100,
            i % 97,
            if i % 3 == 0 { "t" } else { "f" },
            (i % 28) + 1
        ));
    }
    std::fs::write(&csv, data).unwrap();
    let script = dir.path().join("copy.sql");
    std::fs::write(
        &script,
        format!(
            r#"CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, email varchar(100) UNIQUE, score numeric(6,2), active boolean, joined timestamp, note text DEFAULT 'none', seq serial);
\copy people (id, name, email, score, active, joined) from '{csv}' with (format csv, header)
SELECT count(*), sum(score), count(*) FILTER (WHERE active), min(joined), max(seq) FROM people;
SELECT id, name, note FROM people WHERE name LIKE '%"%' OR name LIKE '%,%' ORDER BY id LIMIT 4;
\copy people (id, name, email, score, active, joined) from '{csv}' with (format csv, header)
SELECT count(*) FROM people;
CREATE TABLE t2 (a int, b text, c date);
COPY t2 FROM STDIN;
1	hello world	2024-01-01
2	\N	2024-02-29
3	tab\there	\N
\.
SELECT * FROM t2 ORDER BY a;
COPY t2 FROM STDIN WITH (FORMAT csv);
4,"x,y",2024-03-01
5,bad,notadate
\.
SELECT count(*) FROM t2;
BEGIN;
COPY t2 FROM STDIN (FORMAT csv, NULL 'NULL');
6,NULL,2024-03-02
\.
SELECT * FROM t2 WHERE a = 6;
ROLLBACK;
SELECT count(*) FROM t2;
"#,
            csv = csv.display()
        ),
    )
    .unwrap();
    let pg = Postgres::start();
    let eddy = Server::start_secure();
    let on_postgres = psql_script(&pg.conn_string(), &script);
    let on_eddy = psql_script(&eddy.conn_string(), &script);
    // PostgreSQL reports where a COPY failed in a CONTEXT line, Eddy in the DETAIL.
    let without_context = |s: &str| -> String {
        s.lines()
            .filter(|l| !l.starts_with("CONTEXT:") && !l.starts_with("DETAIL:"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert_same(
        "psql's \\copy and COPY FROM STDIN",
        &without_context(&on_postgres),
        &without_context(&on_eddy),
    );
    assert!(on_eddy.contains("COPY 5000"), "{on_eddy}");
}

#[test]
fn copy_to_stdout_and_psql_copy_out_write_what_postgres_writes() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.csv");
    let script = dir.path().join("copy_out.sql");
    std::fs::write(
        &script,
        format!(
            r#"CREATE TABLE ex (id int PRIMARY KEY, name text, score numeric(6,2), at timestamp, ok boolean, day date, ratio float8, raw bytea, doc jsonb);
INSERT INTO ex VALUES
  (1, 'plain', 1.50, '2024-01-01 10:00:00', true, '2024-01-01', 0.1, '\x00ff', '{{"a": [1, 2]}}'),
  (2, E'tab\there, new\nline \\ back', -3.00, '2024-02-29 23:59:59.5', false, '2024-02-29', 1e300, '\x', '"s"'),
  (3, 'say "hi", ok', NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (4, '', 0, '2000-01-01 00:00:00', true, '1999-12-31', -0.25, 'abc', 'null'),
  (5, '\.', 12.34, '2030-06-15 08:30:00', false, '2030-06-15', 3, NULL, '[]');
COPY ex TO STDOUT;
COPY ex TO STDOUT WITH (FORMAT csv, HEADER);
COPY ex (name, id, score) TO STDOUT (DELIMITER '|', NULL 'nil');
COPY ex (id, name) TO STDOUT (FORMAT csv, NULL 'plain', QUOTE '''', ESCAPE '\');
COPY (SELECT id, name, id * 2 AS twice FROM ex WHERE id > 1 ORDER BY id DESC) TO STDOUT (FORMAT csv, FORCE_QUOTE (twice, name));
COPY (SELECT 1 WHERE false) TO STDOUT;
COPY ex TO STDOUT CSV HEADER;
\copy ex to '{out}' with (format csv, header)
CREATE TABLE ex2 (LIKE ex);
\copy ex2 from '{out}' with (format csv, header)
SELECT count(*), sum(score), string_agg(name, '/' ORDER BY id) FROM ex2;
\copy (SELECT id FROM ex ORDER BY id) to stdout
COPY ex TO STDOUT (FORMAT csv, FORCE_QUOTE (missing));
COPY nosuch TO STDOUT;
SELECT 'still connected';
"#,
            out = out_file.display()
        ),
    )
    .unwrap();
    let pg = Postgres::start();
    let eddy = Server::start_secure();
    let on_postgres = psql_script(&pg.conn_string(), &script);
    let file_on_postgres = std::fs::read_to_string(&out_file).unwrap();
    std::fs::remove_file(&out_file).unwrap();
    let on_eddy = psql_script(&eddy.conn_string(), &script);
    let file_on_eddy = std::fs::read_to_string(&out_file).unwrap();
    assert_same("COPY TO STDOUT", &on_postgres, &on_eddy);
    assert_same("psql's \\copy to a file", &file_on_postgres, &file_on_eddy);
    assert!(
        on_eddy.contains("id,name,score,at,ok,day,ratio,raw,doc"),
        "{on_eddy}"
    );
}

#[test]
fn psycopg_copies_text_and_binary_both_ways_as_on_postgres() {
    let pg = Postgres::start();
    let eddy = Server::start();
    let on_postgres = run(
        "psycopg's copy API on PostgreSQL",
        "python3",
        "psycopg_copy.py",
        &pg.conn_string(),
    );
    let on_eddy = run(
        "psycopg's copy API on Eddy",
        "python3",
        "psycopg_copy.py",
        &eddy.conn_string(),
    );
    assert_same("psycopg's copy API", &on_postgres, &on_eddy);
    assert!(on_eddy.contains("ok  binary write_row 3"), "{on_eddy}");
}

#[test]
fn copy_into_a_push_source_sends_bad_rows_to_its_dead_letter_table() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("copy_source.sql");
    std::fs::write(
        &script,
        r#"CREATE SOURCE readings (device int NOT NULL, temp float8, at timestamp) WITH (connector = 'push');
COPY readings FROM STDIN (FORMAT csv);
1,20.5,2024-01-01 10:00:00
2,abc,2024-01-01 10:00:01
,21,2024-01-01 10:00:02
3,22.5
4,23.5,2024-01-01 10:00:03
\.
COPY readings (device, temp) FROM STDIN;
9	1.5
\.
SELECT device, temp, at FROM readings ORDER BY device;
SELECT payload, error FROM readings_errors ORDER BY "offset";
"#,
    )
    .unwrap();
    let eddy = Server::start();
    let out = psql_script(&eddy.conn_string(), &script);
    let expected = [
        "COPY 2",
        "COPY 1",
        "      1 | 20.5 | 2024-01-01 10:00:00",
        "      4 | 23.5 | 2024-01-01 10:00:03",
        "      9 |  1.5 | ",
        " 2,abc,2024-01-01 10:00:01 | COPY line 2: invalid input syntax for type double precision in column \"temp\": \"abc\"",
        " ,21,2024-01-01 10:00:02   | COPY line 3: null value in column \"device\" violates not-null constraint",
        " 3,22.5                    | COPY line 4: 2 fields where 3 columns are copied",
    ];
    for line in expected {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }
}

#[test]
fn a_node_postgres_service_receives_notify_sink_alerts_across_a_restart() {
    let mut eddy = Server::start_secure();
    let url = |eddy: &Server| format!("{}?sslmode=no-verify phase=", eddy.url());
    let setup = run(
        "LISTEN to a notify sink through node-postgres",
        "node",
        "node_notify_restart.js",
        &format!("{}setup", url(&eddy)),
    );
    assert_eq!(
        setup,
        "[\"setup\",[{\"device\":2,\"temp\":95.5},{\"device\":3,\"temp\":99}]]\n"
    );
    eddy.restart();
    let again = run(
        "LISTEN to a notify sink through node-postgres after a restart",
        "node",
        "node_notify_restart.js",
        &format!("{}again", url(&eddy)),
    );
    assert_eq!(
        again,
        "[\"again\",[{\"device\":4,\"temp\":91},{\"device\":6,\"temp\":93.25}]]\n"
    );
}

#[test]
fn prepared_inserts_take_the_planner_free_path_with_postgres_results() {
    let pg = Postgres::start();
    let eddy = Server::start();
    let on_postgres = run(
        "prepared INSERTs on PostgreSQL",
        "python3",
        "psycopg_inserts.py",
        &pg.conn_string(),
    );
    let on_eddy = run(
        "prepared INSERTs on Eddy",
        "python3",
        "psycopg_inserts.py",
        &eddy.conn_string(),
    );
    assert_same("the prepared INSERTs", &on_postgres, &on_eddy);
    assert!(
        on_eddy.contains("ON CONFLICT (name) DO NOTHING ('d', 2) INSERT 0 1"),
        "{on_eddy}"
    );
}

#[test]
fn a_psycopg_service_follows_a_view_with_subscribe_across_a_restart() {
    let mut eddy = Server::start();
    let setup = run(
        "SUBSCRIBE through psycopg",
        "python3",
        "psycopg_subscribe.py",
        &format!("{} phase=setup", eddy.conn_string()),
    );
    let expected = "\
snapshot [('insert', '/a', 1), ('insert', '/b', 1)]
changes [('update', '/a', 2), ('insert', '/c', 1), ('delete', '/a', 2)]
progress epochs increase True
cursor snapshot [('insert', '/b', 1), ('insert', '/c', 1)]
cursor change [('insert', '/d', 1)]
cursor columns ['eddy_epoch', 'eddy_op', 'page', 'n']
after commit 34000 cursor \"follow\" does not exist
refused 42809 cannot subscribe to source \"clicks\"
refused 42P01 relation \"nowhere\" does not exist
refused 42601 syntax error: SUBSCRIBE option snapshot takes true or false, not \"maybe\"
outside a block 25P01 DECLARE CURSOR can only be used in transaction blocks
";
    assert_eq!(setup, expected);
    // A crash ends every subscription; a new one starts from the view as it is.
    eddy.restart();
    let again = run(
        "SUBSCRIBE through psycopg after a restart",
        "python3",
        "psycopg_subscribe.py",
        &format!("{} phase=again", eddy.conn_string()),
    );
    assert_eq!(
        again,
        "after restart ('insert', '/b', 1)\nafter restart ('insert', '/c', 1)\nafter restart ('insert', '/d', 1)\n"
    );
}

#[test]
fn a_node_postgres_service_follows_a_view_through_a_cursor_across_a_restart() {
    let mut eddy = Server::start_secure();
    let url = |eddy: &Server| format!("{}?sslmode=no-verify phase=", eddy.url());
    let setup = run(
        "SUBSCRIBE through node-postgres",
        "node",
        "node_subscribe.js",
        &format!("{}setup", url(&eddy)),
    );
    assert_eq!(
        setup,
        r#""setup" "snapshot" [["insert",1,1],["insert",3,1]]
"setup" "columns" ["eddy_epoch","eddy_op","device","alerts"]
"setup" "changes" [["insert",4,1],["update",1,2]]
"#
    );
    eddy.restart();
    let again = run(
        "SUBSCRIBE through node-postgres after a restart",
        "node",
        "node_subscribe.js",
        &format!("{}again", url(&eddy)),
    );
    assert_eq!(
        again,
        r#""again" "snapshot" [["insert",1,2],["insert",3,1],["insert",4,1]]
"again" "columns" ["eddy_epoch","eddy_op","device","alerts"]
"again" "changes" [["update",1,3],["update",4,2]]
"#
    );
}
