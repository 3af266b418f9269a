//! The README's CEP walk-through, as a user runs it: telemetry → rolling features (OVER) →
//! PREDICT → a MATCH_RECOGNIZE rule over the scores → a webhook action per match, and the
//! scored history to Parquet; the server is killed with SIGKILL in the middle, and every
//! alert still arrives once (by its idempotency key), none lost.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::common::{Rng, Server, crash_seed};

/// What the receiver got: each request's idempotency key and JSON row.
type Received = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

async fn receiver() -> (String, Received) {
    use axum::http::{HeaderMap, StatusCode};
    let received: Received = Arc::default();
    let state = received.clone();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let row: serde_json::Value = serde_json::from_str(&body).unwrap();
                state.lock().push((key, row));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/alerts"), received)
}

/// Distinct alerts received, by key (a key sent again after the crash is the same alert).
fn distinct(received: &Received) -> BTreeMap<String, serde_json::Value> {
    received.lock().iter().cloned().collect()
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cep_walkthrough_alerts_arrive_once_across_kill9() {
    let seed = crash_seed();
    println!("CEP walk-through seed: {seed} (set EDDY_CRASH_SEED={seed} to replay)");
    let mut rng = Rng(seed);
    let (url, received) = receiver().await;
    let history = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/anomaly_v1.onnx");
    let mut server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE MODEL anomaly FROM '{}' WITH (features = 'temperature, vibration'); \
             CREATE SOURCE telemetry (machine int, temperature real, vibration real, ts timestamptz, \
                 WATERMARK FOR ts AS ts - INTERVAL '1 second') \
               WITH (connector = 'datagen', rows = '8000', rows_per_second = '800', \
                     fields.machine.min = '1', fields.machine.max = '5', \
                     fields.temperature.min = '40', fields.temperature.max = '90', \
                     fields.vibration.min = '0', fields.vibration.max = '4'); \
             CREATE STREAM scores AS \
               SELECT machine, ts, PREDICT('anomaly', temperature => avg_temp, vibration => avg_vib) AS score \
               FROM (SELECT machine, ts, \
                       CAST(avg(temperature) OVER (PARTITION BY machine ORDER BY ts ROWS 4 PRECEDING) AS real) AS avg_temp, \
                       CAST(avg(vibration) OVER (PARTITION BY machine ORDER BY ts ROWS 4 PRECEDING) AS real) AS avg_vib \
                     FROM telemetry); \
             CREATE STREAM alerts AS \
               SELECT * FROM scores MATCH_RECOGNIZE ( \
                 PARTITION BY machine ORDER BY ts \
                 MEASURES FIRST(H.ts) AS started, LAST(H.ts) AS ended, COUNT(H.*) AS readings, \
                          MAX(H.score) AS peak \
                 ONE ROW PER MATCH AFTER MATCH SKIP PAST LAST ROW \
                 PATTERN (H{{3,}} N) WITHIN INTERVAL '30' SECOND \
                 DEFINE H AS H.score > 3.0, N AS N.score <= 3.0); \
             CREATE SINK pager FROM alerts WITH (connector = 'webhook', url = '{url}', \
               checkpoint_interval = '300ms'); \
             CREATE SINK history FROM scores WITH (connector = 'parquet', path = '{}', \
               checkpoint_interval = '500ms')",
            model.display(),
            history.path().display()
        ))
        .await
        .unwrap();
    drop(client);
    // Kill the server once some alerts have arrived, at a seeded point of the 10 seconds.
    let wanted = 10 + rng.below(60) as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while distinct(&received).len() < wanted {
        assert!(Instant::now() < deadline, "no alerts arrived (seed {seed})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("kill -9 after {} alerts", distinct(&received).len());
    server.restart();
    let client = server.connect().await;
    // The source ends after 8,000 rows; the last second of them stays behind the watermark.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let scored = count(&client, "SELECT count(*) FROM scores").await;
        let alerts = count(&client, "SELECT count(*) FROM alerts").await;
        let got = distinct(&received).len() as i64;
        if scored >= 7000 && alerts > 0 && got == alerts {
            // Settled: nothing more may come.
            tokio::time::sleep(Duration::from_secs(2)).await;
            if count(&client, "SELECT count(*) FROM alerts").await == alerts
                && distinct(&received).len() as i64 == alerts
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "alerts did not settle: {got} received, {alerts} in the stream, {scored} scored (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every alert once: the distinct alerts received are the stream's rows, one key each.
    let rows = client
        .query(
            "SELECT machine, CAST(started AS text), readings FROM alerts",
            &[],
        )
        .await
        .unwrap();
    let expected: BTreeSet<(i64, String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.get::<_, i32>(0) as i64,
                r.get::<_, String>(1),
                r.get::<_, i64>(2),
            )
        })
        .collect();
    let got: Vec<(i64, i64)> = distinct(&received)
        .values()
        .map(|r| {
            (
                r["machine"].as_i64().unwrap(),
                r["readings"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        expected.len(),
        rows.len(),
        "an alert is in the stream twice (seed {seed})"
    );
    assert_eq!(
        got.len(),
        expected.len(),
        "alerts lost or repeated (seed {seed})"
    );
    let mut got_counts = got.clone();
    got_counts.sort();
    let mut expected_counts: Vec<(i64, i64)> = expected.iter().map(|(m, _, n)| (*m, *n)).collect();
    expected_counts.sort();
    assert_eq!(
        got_counts, expected_counts,
        "the alerts received differ from the stream's (seed {seed})"
    );
    // The rule itself, checked by a batch query over the scored rows the stream retains
    // (those the watermark passed, as the matcher saw them): the same matches.
    let batch = count(
        &client,
        "SELECT count(*) FROM scores MATCH_RECOGNIZE (PARTITION BY machine ORDER BY ts \
           MEASURES LAST(N.ts) AS closed \
           PATTERN (H{3,} N) WITHIN INTERVAL '30' SECOND \
           DEFINE H AS H.score > 3.0, N AS N.score <= 3.0)",
    )
    .await;
    assert_eq!(
        batch,
        expected.len() as i64,
        "stream and batch disagree (seed {seed})"
    );
    assert!(
        crate::common::has_parquet_files(history.path()),
        "no scored history written"
    );
}
