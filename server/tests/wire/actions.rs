//! Sinks that push rows out: a webhook sink against a local HTTP server that fails some
//! requests, across a SIGKILL of the server, and a Kafka sink through librdkafka's mock
//! cluster read by a read_committed consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;

use crate::common::{Rng, Server, crash_seed, error_text, expect_errors, insert_rows};

/// What the test's HTTP server saw: every request's idempotency key and body, in order.
#[derive(Default)]
struct Received {
    requests: Vec<(String, serde_json::Value)>,
    attempts: u64,
    unauthorized: u64,
}

/// A webhook receiver on 127.0.0.1 that answers 503 to every third request, always 500 to a
/// row with v = 666 and, the first time it sees a row with v = 777, answers only after the
/// sink's timeout. Returns its URL and what it received (successful requests only).
async fn start_receiver() -> (String, Arc<Mutex<Received>>) {
    use axum::http::{HeaderMap, StatusCode};
    let received: Arc<Mutex<Received>> = Arc::default();
    let slow_seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let state = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            let slow_seen = slow_seen.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let row: serde_json::Value = serde_json::from_str(&body).unwrap();
                let attempt = {
                    let mut s = state.lock();
                    s.attempts += 1;
                    if headers.get("authorization").and_then(|v| v.to_str().ok())
                        != Some("Bearer s3cret")
                    {
                        s.unauthorized += 1;
                    }
                    s.attempts
                };
                if row["v"] == 666.0 {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                if row["v"] == 777.0 && slow_seen.lock().insert(key.clone()) {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    return StatusCode::OK;
                }
                if attempt % 3 == 0 {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                state.lock().requests.push((key, row));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_alerts_arrive_with_stable_keys_and_failures_become_dead_letters() {
    let seed = crash_seed();
    println!("webhook sink crash test seed: {seed} (set EDDY_CRASH_SEED={seed} to replay)");
    let mut rng = Rng(seed);
    let (url, received) = start_receiver().await;
    let mut server = Server::start();
    let mut client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE readings (id bigint NOT NULL, machine text, v double precision); \
             CREATE SINK alerts FROM (SELECT id, machine, v FROM readings WHERE v > 90) WITH ( \
               connector = 'webhook', url = '{url}', timeout = '500ms', max_retries = 3, \
               retry_backoff = '10ms', headers.authorization = 'Bearer s3cret', \
               checkpoint_interval = '100ms')"
        ))
        .await
        .unwrap();
    // 40 batches of 10 readings; every 7th reading is an alert, some special.
    const BATCHES: i64 = 40;
    let kill_after = 5 + rng.below(30) as i64;
    let mut alerts = BTreeMap::new();
    let mut dead = BTreeSet::new();
    for b in 0..BATCHES {
        let mut values = Vec::new();
        for id in b * 10..b * 10 + 10 {
            let v = match id {
                _ if id % 7 != 0 => (id % 90) as f64,
                _ if id % 70 == 0 => 666.0,
                _ if id % 49 == 0 => 777.0,
                _ => 90.0 + (id % 9) as f64 + 1.0,
            };
            if v > 90.0 {
                if v == 666.0 {
                    dead.insert(id);
                } else {
                    alerts.insert(id, v);
                }
            }
            values.push(format!("({id}, 'm{}', {v})", id % 4));
        }
        insert_rows(&client, "readings", &values).await;
        if b == kill_after {
            println!("SIGKILL after batch {b} (seed {seed})");
            server.restart();
            client = server.connect().await;
        }
    }
    // Wait until every alert arrived and every dead letter is recorded.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ids: BTreeSet<i64> = received
            .lock()
            .requests
            .iter()
            .map(|(_, row)| row["id"].as_i64().unwrap())
            .collect();
        let failed: i64 = client
            .query_one("SELECT count(*) FROM alerts_errors", &[])
            .await
            .unwrap()
            .get(0);
        if (ids.len() == alerts.len() && failed as usize == dead.len()) || Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (requests, unauthorized) = {
        let r = received.lock();
        (r.requests.clone(), r.unauthorized)
    };
    let mut by_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (key, row) in &requests {
        assert!(!key.is_empty(), "every request has an Idempotency-Key");
        by_key
            .entry(key.clone())
            .or_default()
            .insert(row.to_string());
    }
    let delivered: BTreeMap<i64, f64> = requests
        .iter()
        .map(|(_, row)| (row["id"].as_i64().unwrap(), row["v"].as_f64().unwrap()))
        .collect();
    assert_eq!(delivered, alerts, "every alert arrived (seed {seed})");
    assert_eq!(
        by_key.len(),
        alerts.len(),
        "a row posted again (retry or replay after SIGKILL) keeps its key (seed {seed})"
    );
    assert!(
        by_key.values().all(|rows| rows.len() == 1),
        "one key, one row"
    );
    assert_eq!(unauthorized, 0, "headers.* reach every request");
    let rows = client
        .query(
            "SELECT payload, attempts, error FROM alerts_errors ORDER BY key",
            &[],
        )
        .await
        .unwrap();
    let failed_ids: BTreeSet<i64> = rows
        .iter()
        .map(|r| {
            let payload: serde_json::Value = serde_json::from_str(r.get::<_, &str>(0)).unwrap();
            assert_eq!(r.get::<_, i32>(1), 4, "one attempt and three retries");
            assert!(
                r.get::<_, &str>(2).contains("500"),
                "{}",
                r.get::<_, &str>(2)
            );
            payload["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(
        failed_ids, dead,
        "requests that never succeed are dead letters"
    );
    let row = client
        .query_one(
            "SELECT connector, target, failed_rows FROM eddy_catalog.sinks WHERE name = 'alerts'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "webhook");
    assert_eq!(row.get::<_, &str>(1), url);
    let shown = client.simple_query("SHOW SINKS").await.unwrap();
    let text = format!("{shown:?}");
    assert!(
        !text.contains("s3cret"),
        "header secrets never show: {text}"
    );

    expect_errors(
        &client,
        "22023",
        &[
        (
            "CREATE SINK w FROM readings WITH (connector = 'webhook')",
            "\"url\"",
        ),
        (
            "CREATE SINK w FROM readings WITH (connector = 'webhook', url = 'ftp://x')",
            "http",
        ),
        (
            "CREATE SINK w FROM readings WITH (connector = 'webhook', url = 'http://x', idempotency_key = 'nope')",
            "nope",
        ),
        (
            "CREATE SINK w FROM readings WITH (connector = 'smtp')",
            "unknown sink connector",
        ),
        ],
    )
    .await;
    let e = client
        .batch_execute("DROP TABLE alerts_errors")
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42809");
    assert_eq!(
        db.detail(),
        Some("\"alerts_errors\" is the dead-letter table of a sink: use DROP SINK alerts.")
    );
    client.batch_execute("DROP SINK alerts").await.unwrap();
    let e = client
        .query("SELECT * FROM alerts_errors", &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.code().unwrap().code(),
        "42P01",
        "the errors table goes with the sink"
    );
}

/// Every message of `topic` a read_committed consumer sees, once `want` have arrived or
/// after a deadline: (key, payload).
fn consume_committed(bootstrap: &str, topic: &str, want: usize) -> Vec<(String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{topic}"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Past `want`, keep reading a little to catch duplicates.
    let mut quiet_until: Option<Instant> = None;
    while Instant::now() < deadline && quiet_until.is_none_or(|q| Instant::now() < q) {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            let payload = m.payload().map(|p| String::from_utf8_lossy(p).into_owned());
            out.push((key.unwrap_or_default(), payload.unwrap_or_default()));
        }
        if out.len() >= want && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_secs(2));
        }
    }
    out
}

/// The mock cluster implements the transactional producer's protocol but not its effect on
/// consumers (aborted messages stay visible, transactional offsets are not kept), and Tansu
/// 0.6 has no EndTxn: no broker here can show a transaction aborted by a crash, so this test
/// does not kill the server. It shows rows leaving through transactions committed at
/// checkpoints, once each, keyed, as JSON and as CSV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_rows_reach_a_read_committed_consumer_once_each() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("doubled", 2, 1).expect("topic");
    mock.create_topic("doubled_csv", 1, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE readings (id bigint NOT NULL, v double precision); \
             CREATE SINK to_kafka FROM (SELECT id, v * 2 AS v2 FROM readings) WITH ( \
               connector = 'kafka', bootstrap.servers = '{bootstrap}', topic = 'doubled', \
               key = 'id', checkpoint_interval = '100ms'); \
             CREATE SINK to_kafka_csv FROM (SELECT id, v * 2 AS v2 FROM readings) WITH ( \
               connector = 'kafka', bootstrap.servers = '{bootstrap}', topic = 'doubled_csv', \
               format = 'csv', checkpoint_interval = '150ms')"
        ))
        .await
        .unwrap();
    const BATCHES: i64 = 60;
    const ROWS: i64 = 50;
    for b in 0..BATCHES {
        let values: Vec<String> = (b * ROWS..(b + 1) * ROWS)
            .map(|i| format!("({i}, {i})"))
            .collect();
        insert_rows(&client, "readings", &values).await;
    }
    let total = (BATCHES * ROWS) as usize;
    let json = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || consume_committed(&bootstrap, "doubled", total)
    })
    .await
    .unwrap();
    let mut ids = BTreeSet::new();
    for (key, payload) in &json {
        let row: serde_json::Value = serde_json::from_str(payload).unwrap();
        let id = row["id"].as_i64().unwrap();
        assert_eq!(key, &id.to_string(), "the key is the id column");
        assert_eq!(row["v2"].as_f64().unwrap(), 2.0 * id as f64);
        ids.insert(id);
    }
    assert_eq!(
        (json.len(), ids.len()),
        (total, total),
        "messages and distinct ids a read_committed consumer sees"
    );
    let csv =
        tokio::task::spawn_blocking(move || consume_committed(&bootstrap, "doubled_csv", total))
            .await
            .unwrap();
    let lines: BTreeSet<&str> = csv.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!((csv.len(), lines.len()), (total, total), "CSV messages");
    assert!(lines.contains("7,14.0"), "CSV lines are id,v2");
    let row = client
        .query_one(
            "SELECT connector, target, checkpoint_epoch, last_error FROM eddy_catalog.sinks \
             WHERE name = 'to_kafka'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "kafka");
    assert!(row.get::<_, &str>(1).ends_with("/doubled"));
    assert!(
        row.get::<_, i64>(2) > 0,
        "transactions committed at checkpoints"
    );
    assert_eq!(row.get::<_, Option<&str>>(3), None);
    expect_errors(
        &client,
        "22023",
        &[
        (
            "CREATE SINK k FROM readings WITH (connector = 'kafka', topic = 't')",
            "bootstrap.servers",
        ),
        (
            "CREATE SINK k FROM readings WITH (connector = 'kafka', bootstrap.servers = 'x', topic = 't', key = 'nope')",
            "nope",
        ),
        (
            "CREATE SINK k FROM readings WITH (connector = 'kafka', bootstrap.servers = 'x', topic = 't', properties.transactional.id = 'x')",
            "transactional.id",
        ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_from_a_windowed_view_reach_a_webhook_and_parquet_once_per_window() {
    let (url, received) = start_receiver().await;
    let out = tempfile::tempdir().unwrap();
    let server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE readings (machine text, temp double precision, ts timestamptz, \
               WATERMARK FOR ts AS ts - INTERVAL '1 second'); \
             CREATE MATERIALIZED VIEW overheating AS \
               SELECT window_start, machine, count(*) AS hot_readings, max(temp) AS peak \
               FROM TUMBLE(readings, ts, INTERVAL '1 minute') WHERE temp > 90 \
               GROUP BY window_start, machine HAVING count(*) >= 3; \
             CREATE SINK pager FROM overheating WITH (connector = 'webhook', url = '{url}', \
               retry_backoff = '10ms', headers.authorization = 'Bearer s3cret', \
               checkpoint_interval = '100ms'); \
             CREATE SINK history FROM overheating WITH (connector = 'parquet', path = '{}', \
               checkpoint_interval = '100ms')",
            out.path().display()
        ))
        .await
        .unwrap();
    // Ten minutes of readings, one every 5 s per machine; m1 runs hot in minutes 2 and 7
    // (4 hot readings each), m2 has only 2 hot readings in minute 5.
    let mut values = Vec::new();
    for second in (0..600).step_by(5) {
        for machine in ["m1", "m2", "m3"] {
            let minute = second / 60;
            let hot = match machine {
                "m1" => (minute == 2 || minute == 7) && second % 60 < 20,
                "m2" => minute == 5 && second % 60 < 10,
                _ => false,
            };
            let temp = if hot { 95.0 } else { 60.0 };
            values.push(format!(
                "('{machine}', {temp}, TIMESTAMPTZ '2026-11-26 08:00:00+00' + INTERVAL '{second} seconds')"
            ));
        }
    }
    insert_rows(&client, "readings", &values).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows: Vec<serde_json::Value> = received
            .lock()
            .requests
            .iter()
            .map(|(_, r)| r.clone())
            .collect();
        if rows.len() >= 2 || Instant::now() > deadline {
            // Anything more would be a duplicate or a window that is not hot.
            tokio::time::sleep(Duration::from_millis(500)).await;
            break received
                .lock()
                .requests
                .iter()
                .map(|(_, r)| r.clone())
                .collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut got: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["window_start"].as_str().unwrap().to_string(),
                r["machine"].as_str().unwrap().to_string(),
                r["hot_readings"].as_i64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got.len(), 2, "one alert per hot window: {rows:?}");
    assert!(got[0].0.starts_with("2026-11-26T08:02:00"), "{got:?}");
    assert!(got[1].0.starts_with("2026-11-26T08:07:00"), "{got:?}");
    assert!(got.iter().all(|(_, m, n)| m == "m1" && *n == 4), "{got:?}");
    // The same windows in the Parquet history.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let files = std::fs::read_dir(out.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".parquet")
            })
            .count();
        if files > 0 {
            let ctx = datafusion::prelude::SessionContext::new();
            ctx.register_parquet(
                "h",
                out.path().to_str().unwrap(),
                datafusion::prelude::ParquetReadOptions::default(),
            )
            .await
            .unwrap();
            let b = ctx
                .sql("SELECT count(*) FROM h WHERE machine = 'm1' AND hot_readings = 4")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            use datafusion::arrow::array::AsArray;
            let n = b[0]
                .column(0)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .value(0);
            if n == 2 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the windows reach the Parquet sink"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An updating aggregate cannot go to Parquet or a webhook, and a sink reads a view whole.
    client
        .batch_execute("CREATE MATERIALIZED VIEW totals AS SELECT machine, count(*) AS n FROM readings GROUP BY machine")
        .await
        .unwrap();
    for (sql, code, expected) in [
        (
            format!("CREATE SINK t FROM totals WITH (connector = 'parquet', path = '{}')", out.path().display()),
            "0A000",
            "EMIT ON WINDOW CLOSE",
        ),
        (
            "CREATE SINK t FROM (SELECT machine FROM totals) WITH (connector = 'webhook', url = 'http://x')".to_string(),
            "0A000",
            "whole view",
        ),
        (
            "CREATE SINK t FROM totals WITH (connector = 'kafka', bootstrap.servers = 'x', topic = 't')".to_string(),
            "22023",
            "key",
        ),
    ] {
        let e = client.batch_execute(&sql).await.unwrap_err();
        assert_eq!(e.code().unwrap().code(), code, "{sql}: {}", error_text(&e));
        assert!(error_text(&e).contains(expected), "{sql}: {}", error_text(&e));
    }
    let e = client
        .batch_execute("DROP MATERIALIZED VIEW overheating")
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "2BP01", "the sinks read the view");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updating_view_goes_to_a_keyed_kafka_topic_as_upserts() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("totals", 1, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let mut server = Server::start();
    let mut client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE readings (machine text, temp double precision); \
             CREATE MATERIALIZED VIEW totals AS SELECT machine, count(*) AS n FROM readings \
               GROUP BY machine HAVING count(*) < 50; \
             CREATE SINK totals_out FROM totals WITH (connector = 'kafka', \
               bootstrap.servers = '{bootstrap}', topic = 'totals', key = 'machine', \
               checkpoint_interval = '100ms')"
        ))
        .await
        .unwrap();
    // m0: 10 readings, m1: 20, m2: 60 (past the HAVING bound: deleted).
    for b in 0..10 {
        let mut values = vec!["('m0', 1)".to_string()];
        values.extend((0..2).map(|_| "('m1', 1)".to_string()));
        values.extend((0..6).map(|_| "('m2', 1)".to_string()));
        insert_rows(&client, "readings", &values).await;
        if b % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        if b == 4 {
            // Kill and restart once the sink has sent every machine's row (it reads the
            // view's changelog, from a snapshot) and kept a previous checkpoint record: the
            // restarted pipelines must read only their state (the record once sat among an
            // aggregate's groups).
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while sink_rows(&client, "totals_out").await < 3 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the sink sends no rows"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let sent = sink_epoch(&client, "totals_out").await;
            while sink_epoch(&client, "totals_out").await < sent.max(1) + 2 {
                assert!(std::time::Instant::now() < deadline, "no checkpoints");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            server.restart();
            client = server.connect().await;
        }
    }
    let messages = tokio::task::spawn_blocking(move || consume_committed(&bootstrap, "totals", 3))
        .await
        .unwrap();
    // Compacted as a reader of an upsert topic would: the last value per key.
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for (key, payload) in &messages {
        last.insert(key.clone(), payload.clone());
    }
    let n = |m: &str| -> Option<i64> {
        let p = last.get(m)?;
        if p.is_empty() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(p).unwrap();
        v["n"].as_i64()
    };
    assert_eq!(n("m0"), Some(10), "{messages:?}");
    assert_eq!(n("m1"), Some(20), "{messages:?}");
    assert_eq!(
        last.get("m2").map(String::as_str),
        Some(""),
        "a group HAVING removes ends with a tombstone: {messages:?}"
    );
}

async fn sink_rows(client: &tokio_postgres::Client, name: &str) -> i64 {
    client
        .query_one(
            "SELECT rows FROM eddy_catalog.sinks WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

async fn sink_epoch(client: &tokio_postgres::Client, name: &str) -> i64 {
    client
        .query_one(
            "SELECT checkpoint_epoch FROM eddy_catalog.sinks WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0)
}

/// Tansu (a real Kafka-compatible broker) has no transactions: the default exactly-once sink
/// says so, and `delivery = 'at_least_once'` delivers every row across a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_least_once_kafka_sink_delivers_every_row_to_tansu_across_a_sigkill() {
    let seed = crash_seed();
    println!("kafka at-least-once crash test seed: {seed} (set EDDY_CRASH_SEED={seed} to replay)");
    let mut rng = Rng(seed);
    let (_broker, bootstrap) = crate::common::Tansu::start(&[("out", 1), ("strict", 1)]).await;
    let mut server = Server::start();
    let mut client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE readings (id bigint NOT NULL, v double precision); \
             CREATE SINK to_tansu FROM readings WITH (connector = 'kafka', \
               bootstrap.servers = '{bootstrap}', topic = 'out', key = 'id', \
               delivery = 'at_least_once', checkpoint_interval = '100ms'); \
             CREATE SINK strict FROM readings WITH (connector = 'kafka', \
               bootstrap.servers = '{bootstrap}', topic = 'strict')"
        ))
        .await
        .unwrap();
    const BATCHES: i64 = 30;
    const ROWS: i64 = 40;
    let kill_after = 5 + rng.below(20) as i64;
    for b in 0..BATCHES {
        let rows: Vec<String> = (b * ROWS..(b + 1) * ROWS)
            .map(|i| format!("({i}, {i})"))
            .collect();
        insert_rows(&client, "readings", &rows).await;
        if b == kill_after {
            println!("SIGKILL after batch {b} (seed {seed})");
            server.restart();
            client = server.connect().await;
        }
    }
    let total = (BATCHES * ROWS) as usize;
    let messages = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || consume_committed(&bootstrap, "out", total)
    })
    .await
    .unwrap();
    let ids: BTreeSet<i64> = messages
        .iter()
        .map(|(key, payload)| {
            let row: serde_json::Value = serde_json::from_str(payload).unwrap();
            assert_eq!(key, &row["id"].as_i64().unwrap().to_string());
            row["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), total, "every row at least once (seed {seed})");
    assert!(messages.len() >= total);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let error: Option<String> = client
            .query_one(
                "SELECT last_error FROM eddy_catalog.sinks WHERE name = 'strict'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if let Some(e) = error {
            assert!(e.contains("kafka sink"), "{e}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the transactional sink reports that the broker lacks transactions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
