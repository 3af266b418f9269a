//! Protocol behaviour real clients rely on: parameters and binary results (tokio-postgres),
//! transaction status, cancellation, and hostile input that must not take the server down.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

use crate::common::{Server, error_text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_and_binary_results_round_trip() {
    let server = Server::start();
    let c = server.connect().await;
    c.batch_execute(
        "CREATE TABLE kinds (id bigint PRIMARY KEY, b boolean, i2 smallint, i4 int, f4 real, f8 double precision, \
         n numeric(10,2), t text, v varchar(10), by bytea, d date, ts timestamp, tz timestamptz, u uuid, j jsonb)",
    )
    .await
    .unwrap();
    let ts = chrono::NaiveDate::from_ymd_opt(2024, 2, 29)
        .unwrap()
        .and_hms_micro_opt(12, 34, 56, 789)
        .unwrap();
    let tz = ts.and_utc();
    let u = uuid::Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
    let n = rust_decimal::Decimal::new(12345, 2);
    let j = serde_json::json!({"a": [1, 2]});
    let inserted = c
        .execute(
            "INSERT INTO kinds VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            &[
                &1i64, &true, &7i16, &-42i32, &1.5f32, &2.25f64, &n, &"héllo", &"short",
                &vec![0u8, 1, 255], &ts.date(), &ts, &tz, &u, &j,
            ],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    c.execute("INSERT INTO kinds (id) VALUES ($1)", &[&2i64])
        .await
        .unwrap();
    let row = c
        .query_one("SELECT * FROM kinds WHERE id = $1", &[&1i64])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(1));
    assert_eq!(row.get::<_, i16>(2), 7);
    assert_eq!(row.get::<_, i32>(3), -42);
    assert_eq!(row.get::<_, f32>(4), 1.5);
    assert_eq!(row.get::<_, f64>(5), 2.25);
    assert_eq!(row.get::<_, rust_decimal::Decimal>(6), n);
    assert_eq!(row.get::<_, String>(7), "héllo");
    assert_eq!(row.get::<_, String>(8), "short");
    assert_eq!(row.get::<_, Vec<u8>>(9), vec![0u8, 1, 255]);
    assert_eq!(row.get::<_, chrono::NaiveDate>(10), ts.date());
    assert_eq!(row.get::<_, chrono::NaiveDateTime>(11), ts);
    assert_eq!(row.get::<_, chrono::DateTime<chrono::Utc>>(12), tz);
    assert_eq!(row.get::<_, uuid::Uuid>(13), u);
    assert_eq!(row.get::<_, serde_json::Value>(14), j);
    // NULLs come back as NULL in every column but the key.
    let row = c
        .query_one("SELECT * FROM kinds WHERE id = 2", &[])
        .await
        .unwrap();
    for i in 1..15 {
        assert!(
            row.try_get::<_, Option<String>>(i)
                .map_or(true, |v| v.is_none())
                || i == 0
        );
    }
    let nulls: i64 = c
        .query_one(
            "SELECT count(*) FROM kinds WHERE t IS NULL AND j IS NULL AND u IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nulls, 1);
    // A parameter whose type the client leaves open is typed by the server from its context.
    let stmt = c
        .prepare("SELECT t FROM kinds WHERE id = $1")
        .await
        .unwrap();
    assert_eq!(stmt.params(), &[tokio_postgres::types::Type::INT8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_sqlstate_and_the_session_survives() {
    let server = Server::start();
    let c = server.connect().await;
    let e = c.simple_query("SELECT * FROM nope").await.unwrap_err();
    assert_eq!(error_text(&e), "42P01: relation \"nope\" does not exist");
    let e = c.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42601");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
        .await
        .unwrap();
    c.execute("INSERT INTO t VALUES (1, 'a')", &[])
        .await
        .unwrap();
    let e = c
        .execute("INSERT INTO t VALUES (1, 'b')", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "23505");
    let e = c
        .execute("INSERT INTO t VALUES (2, NULL)", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "23502");
    // Inside a transaction the failure poisons the block until ROLLBACK.
    c.batch_execute("BEGIN").await.unwrap();
    assert!(
        c.batch_execute("INSERT INTO t VALUES (1, 'dup')")
            .await
            .is_err()
    );
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    let rows = c.simple_query("SELECT count(*) FROM t").await.unwrap();
    assert!(matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_query_can_be_cancelled() {
    let server = Server::start();
    let c = server.connect().await;
    let token = c.cancel_token();
    let query = tokio::spawn(async move {
        c.simple_query("SELECT count(*) FROM generate_series(1, 100000000000) a(x) WHERE x % 7 = 3")
            .await
    });
    // Wait until the server is busy with it (not a fixed sleep: poll the query's progress).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            std::time::Instant::now() < deadline,
            "query finished or stalled before cancel"
        );
        if !query.is_finished() {
            break;
        }
    }
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), query)
        .await
        .expect("cancel took effect")
        .unwrap();
    let e = result.expect_err("cancelled query must fail");
    assert_eq!(e.code().unwrap().code(), "57014", "{e}");
    // The server still serves new connections.
    let c = server.connect().await;
    c.simple_query("SELECT 1").await.unwrap();
}

fn raw(server: &Server, bytes: &[u8]) {
    let mut s = TcpStream::connect(server.pg).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 1024];
    let _ = s.read(&mut buf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_does_not_take_the_server_down() {
    let server = Server::start();
    // Garbage instead of a startup packet; a huge declared length; a truncated message.
    raw(&server, b"\x00\x00\x00\x08\xde\xad\xbe\xef");
    raw(&server, &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]);
    raw(&server, &[0, 0, 0, 20, 0, 3, 0, 0, b'u']);
    let c = server.connect().await;
    // Deep nesting and huge strings are errors or answers, never crashes.
    let deep = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let e = c.simple_query(&deep).await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42601");
    let long_sum = format!("SELECT {}", vec!["1"; 20_000].join(" + "));
    let _ = c.simple_query(&long_sum).await;
    let huge = format!("SELECT length('{}')", "x".repeat(8 << 20));
    let rows = c.simple_query(&huge).await.unwrap();
    assert!(matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("8388608")));
    // The session and the server keep working.
    let rows = c.simple_query("SELECT 40 + 2").await.unwrap();
    assert!(matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("42")));
    let c2 = server.connect().await;
    c2.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_queries_and_http_health() {
    let server = Server::start();
    let c = server.connect().await;
    for q in [";", "-- ping", "/* nothing */"] {
        let msgs = c.simple_query(q).await.unwrap();
        assert!(
            msgs.iter()
                .all(|m| !matches!(m, SimpleQueryMessage::Row(_))),
            "{q}"
        );
    }
    let mut s = TcpStream::connect(server.http).unwrap();
    s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    assert!(body.contains("\"status\":\"ok\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_are_never_lost() {
    let server = Server::start();
    let setup = server.connect().await;
    setup
        .batch_execute("CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL); INSERT INTO counter VALUES (1, 0)")
        .await
        .unwrap();
    const CLIENTS: usize = 4;
    const EACH: usize = 50;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let c = server.connect().await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..EACH {
                c.execute("UPDATE counter SET n = n + 1 WHERE id = $1", &[&1i32])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n: i64 = setup
        .query_one("SELECT n FROM counter WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, (CLIENTS * EACH) as i64);
    // Inside explicit transactions the loser of a race gets a serialization failure instead.
    let a = server.connect().await;
    let b = server.connect().await;
    a.batch_execute("BEGIN; UPDATE counter SET n = n + 1 WHERE id = 1")
        .await
        .unwrap();
    b.batch_execute("BEGIN; UPDATE counter SET n = n + 10 WHERE id = 1")
        .await
        .unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    let e = b.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "40001", "{e}");
    let n: i64 = setup
        .query_one("SELECT n FROM counter WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, (CLIENTS * EACH) as i64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_and_portal_row_limits() {
    let server = Server::start();
    let mut c = server.connect().await;
    c.batch_execute("CREATE TABLE nums (n int PRIMARY KEY)")
        .await
        .unwrap();
    c.execute(
        "INSERT INTO nums SELECT value FROM generate_series(1, 100)",
        &[],
    )
    .await
    .unwrap();
    // tokio-postgres pipelines concurrent queries on one connection.
    let stmt = c.prepare("SELECT n FROM nums WHERE n = $1").await.unwrap();
    let keys: Vec<i32> = (1..=20).collect();
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
        keys.iter().map(|i| [i as _]).collect();
    let futures: Vec<_> = params.iter().map(|p| c.query_one(&stmt, p)).collect();
    let rows = futures::future::try_join_all(futures).await.unwrap();
    let got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, (1..=20).collect::<Vec<_>>());
    // Execute with a row limit suspends the portal; later Executes continue it.
    let txn = c.transaction().await.unwrap();
    let stmt = txn
        .prepare("SELECT n FROM nums WHERE n <= $1 ORDER BY n")
        .await
        .unwrap();
    let portal = txn.bind(&stmt, &[&25i32]).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let chunk = txn.query_portal(&portal, 10).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        seen.extend(chunk.iter().map(|r| r.get::<_, i32>(0)));
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    txn.commit().await.unwrap();
}
