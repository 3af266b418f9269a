//! The HTTP query API (`POST /v1/sql`, `GET /v1/views/{name}`) driven with curl, as a
//! service or a shell script would call it.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::Server;

/// `curl` with `args`; the reply's status code and body.
fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let mut body = out.stdout;
    let split = body.iter().rposition(|&b| b == b'\n').expect("status line");
    let status = std::str::from_utf8(&body[split + 1..])
        .unwrap()
        .parse()
        .unwrap();
    body.truncate(split);
    (status, body)
}

fn json_of(reply: (u16, Vec<u8>)) -> (u16, Value) {
    let body = serde_json::from_slice(&reply.1)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&reply.1)));
    (reply.0, body)
}

fn post_sql(server: &Server, body: &Value) -> (u16, Value) {
    let url = format!("http://{}/v1/sql", server.http);
    json_of(curl(&[
        "-H",
        "content-type: application/json",
        "--data-binary",
        &body.to_string(),
        &url,
    ]))
}

fn post_text(server: &Server, sql: &str, extra: &[&str]) -> (u16, Vec<u8>) {
    let url = format!("http://{}/v1/sql", server.http);
    let mut args = vec!["--data-binary", sql];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

fn get_view(server: &Server, path: &str) -> (u16, Value) {
    json_of(curl(&[&format!("http://{}/v1/views/{path}", server.http)]))
}

#[test]
fn sql_over_http_runs_statements_with_parameters_and_typed_results() {
    let server = Server::start();
    let (status, reply) = post_sql(
        &server,
        &json!({ "sql": "CREATE TABLE readings (device text PRIMARY KEY, temp float8, seen timestamp, tags jsonb, ok bool)" }),
    );
    assert_eq!(
        (status, &reply["results"][0]["command"]),
        (200, &json!("CREATE TABLE"))
    );
    for (device, temp, tags) in [
        ("d1", json!(21.5), json!({"site": "north"})),
        ("d2", json!(null), json!(["a", "b"])),
    ] {
        let (status, reply) = post_sql(
            &server,
            &json!({
                "sql": "INSERT INTO readings VALUES ($1, $2, '2026-01-02 03:04:05', $3, true)",
                "params": [device, temp, tags],
            }),
        );
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["results"][0]["command"], "INSERT 0 1");
    }
    let (status, reply) = post_sql(
        &server,
        &json!({
            "sql": "SELECT device, temp, seen, tags, ok, 1.50::numeric(4,2) AS n, NULL AS nothing \
                    FROM readings WHERE device = $1",
            "params": ["d1"],
        }),
    );
    assert_eq!(status, 200, "{reply}");
    let result = &reply["results"][0];
    assert_eq!(result["command"], "SELECT 1");
    let types: Vec<(&str, &str)> = result["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        types,
        [
            ("device", "text"),
            ("temp", "float8"),
            ("seen", "timestamp"),
            ("tags", "jsonb"),
            ("ok", "bool"),
            ("n", "numeric"),
            ("nothing", "text"),
        ]
    );
    assert_eq!(
        result["rows"],
        json!([["d1", 21.5, "2026-01-02 03:04:05", {"site": "north"}, true, "1.50", null]])
    );

    // Several statements are one implicit transaction: a failure undoes the earlier ones.
    let (status, reply) = json_of(post_text(
        &server,
        "INSERT INTO readings VALUES ('d3', 1, NULL, NULL, false); SELECT 1/0",
        &[],
    ));
    assert_eq!(status, 400);
    assert_eq!(
        reply,
        json!({"error": "division by zero", "sqlstate": "22012"})
    );
    let (_, reply) = json_of(post_text(&server, "SELECT count(*) FROM readings", &[]));
    assert_eq!(reply["results"][0]["rows"], json!([[2]]));

    // Errors carry the SQLSTATE; a missing relation is 404, a constraint 400.
    let (status, reply) = json_of(post_text(&server, "SELECT * FROM nowhere", &[]));
    assert_eq!(
        (status, reply),
        (
            404,
            json!({"error": "relation \"nowhere\" does not exist", "sqlstate": "42P01"})
        )
    );
    let (status, reply) = post_sql(
        &server,
        &json!({"sql": "INSERT INTO readings (device) VALUES ($1)", "params": ["d1"]}),
    );
    assert_eq!((status, reply["sqlstate"].as_str()), (400, Some("23505")));
    let (status, reply) = post_sql(
        &server,
        &json!({"sql": "SELECT $1; SELECT 2", "params": [1]}),
    );
    assert_eq!((status, reply["sqlstate"].as_str()), (400, Some("42601")));
    let (status, reply) = json_of(curl(&[
        "-H",
        "content-type: application/json",
        "--data-binary",
        "{\"query\": 1}",
        &format!("http://{}/v1/sql", server.http),
    ]));
    assert_eq!((status, reply["sqlstate"].as_str()), (400, Some("08P01")));

    // The server is still up and the table intact.
    let (_, reply) = json_of(post_text(
        &server,
        "SELECT device FROM readings ORDER BY 1",
        &[],
    ));
    assert_eq!(reply["results"][0]["rows"], json!([["d1"], ["d2"]]));
}

#[test]
fn sql_over_http_answers_in_csv_and_arrow() {
    let server = Server::start();
    post_text(
        &server,
        "CREATE TABLE t (id int PRIMARY KEY, name text); \
         INSERT INTO t VALUES (1, 'plain'), (2, 'has, comma'), (3, NULL)",
        &[],
    );
    let (status, csv) = post_text(
        &server,
        "SELECT id, name FROM t ORDER BY id",
        &["-H", "accept: text/csv"],
    );
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(csv).unwrap(),
        "id,name\n1,plain\n2,\"has, comma\"\n3,\n"
    );
    let (status, ipc) = post_text(
        &server,
        "SELECT id, name FROM t ORDER BY id",
        &["-H", "accept: application/vnd.apache.arrow.stream"],
    );
    assert_eq!(status, 200);
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
            .unwrap();
    let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert_eq!(
        text,
        "+----+------------+\n| id | name       |\n+----+------------+\n| 1  | plain      |\n\
         | 2  | has, comma |\n| 3  |            |\n+----+------------+"
    );
    let (status, _) = post_text(
        &server,
        "CREATE TABLE u (a int)",
        &["-H", "accept: text/csv"],
    );
    assert_eq!(status, 406);
}

#[test]
fn point_reads_over_http_by_primary_key_of_tables_and_views() {
    let server = Server::start();
    post_text(
        &server,
        "CREATE TABLE kv (region text, id int, v text, PRIMARY KEY (region, id)); \
         INSERT INTO kv VALUES ('eu', 1, 'one'), ('us', 1, 'uno'); \
         CREATE SOURCE clicks (page text, ms int); \
         CREATE MATERIALIZED VIEW per_page AS SELECT page, count(*) AS n, sum(ms) AS total \
         FROM clicks GROUP BY page; \
         INSERT INTO clicks VALUES ('/a', 10), ('/a', 30), ('/b', 5)",
        &[],
    );
    assert_eq!(
        get_view(&server, "kv?region=us&id=1"),
        (200, json!({"region": "us", "id": 1, "v": "uno"}))
    );
    assert_eq!(
        get_view(&server, "kv?id=1&region=eu"),
        (200, json!({"region": "eu", "id": 1, "v": "one"}))
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, row) = get_view(&server, "per_page?page=/a");
        if status == 200 && row["n"] == 2 {
            assert_eq!(row, json!({"page": "/a", "n": 2, "total": 40}));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the view never counted /a: {row}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, reply) = get_view(&server, "kv?region=eu&id=2");
    assert_eq!((status, reply["sqlstate"].as_str()), (404, Some("P0002")));
    let (status, reply) = get_view(&server, "kv?region=eu");
    assert_eq!(status, 400);
    assert_eq!(
        reply["error"],
        "a point read of \"kv\" needs each key column once: ?region=...&id=..."
    );
    let (status, reply) = get_view(&server, "kv?region=eu&id=x");
    assert_eq!(
        (status, reply["error"].as_str()),
        (400, Some("invalid input syntax for type integer: \"x\""))
    );
    let (status, reply) = get_view(&server, "kv?region=eu&id=1&v=one");
    assert_eq!((status, reply["sqlstate"].as_str()), (400, Some("42703")));
    let (status, reply) = get_view(&server, "nothing?id=1");
    assert_eq!((status, reply["sqlstate"].as_str()), (404, Some("42P01")));
    let (status, reply) = get_view(&server, "clicks?page=/a");
    assert_eq!((status, reply["sqlstate"].as_str()), (400, Some("42809")));
}

#[test]
fn sql_over_http_runs_as_the_authenticated_user() {
    let server = Server::start_secure();
    let url = format!("http://{}/v1/sql", server.http);
    let admin = format!("eddy:{}", server.password.as_deref().unwrap());
    let (status, _) = curl(&["--data-binary", "SELECT 1", &url]);
    assert_eq!(status, 401);
    let (status, reply) = json_of(curl(&[
        "-u",
        &admin,
        "--data-binary",
        "CREATE ROLE reader LOGIN PASSWORD 'pw'",
        &url,
    ]));
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = json_of(curl(&[
        "-u",
        "reader:pw",
        "--data-binary",
        "SELECT current_user",
        &url,
    ]));
    assert_eq!(
        (status, &reply["results"][0]["rows"]),
        (200, &json!([["reader"]]))
    );
    // An ordinary role cannot manage roles over HTTP either.
    let (status, reply) = json_of(curl(&[
        "-u",
        "reader:pw",
        "--data-binary",
        "CREATE ROLE other",
        &url,
    ]));
    assert_eq!((status, reply["sqlstate"].as_str()), (403, Some("42501")));
}
