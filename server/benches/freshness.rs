//! Freshness: how long from an event's arrival to its visibility in a materialized view, read
//! over pgwire. Starts a real `eddy serve`, creates a push source and a view, measures the
//! sustainable ingest rate (INSERT batches as fast as the view keeps up), then sends at half
//! that rate and times each batch from just before its INSERT to the first SELECT over
//! pgwire that sees it. Run: `cargo bench -p eddy --bench freshness`.

#[path = "common/mod.rs"]
mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BATCH: i64 = 50;

fn insert_sql(first: i64, n: i64) -> String {
    let rows: Vec<String> = (first..first + n)
        .map(|s| format!("({s}, now())"))
        .collect();
    format!("INSERT INTO ev VALUES {}", rows.join(", "))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let eddy = common::start();
    let pg = eddy.pg;
    let client = common::connect(pg).await;
    client
        .batch_execute(
            "CREATE SOURCE ev (seq bigint NOT NULL, ts timestamptz); \
             CREATE MATERIALIZED VIEW latest AS SELECT max(seq) AS seq, count(*) AS n FROM ev",
        )
        .await
        .unwrap();
    // The reader polls the view over pgwire; a batch is visible at the first poll that sees
    // its last sequence number.
    let seen = Arc::new(AtomicI64::new(-1));
    let pending: Arc<Mutex<VecDeque<(i64, Instant)>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let reader = {
        let (seen, pending, latencies) = (seen.clone(), pending.clone(), latencies.clone());
        let client = common::connect(pg).await;
        let stmt = client.prepare("SELECT seq FROM latest").await.unwrap();
        tokio::spawn(async move {
            loop {
                if let Ok(rows) = client.query(&stmt, &[]).await
                    && let Some(v) = rows.first().and_then(|r| r.get::<_, Option<i64>>(0))
                {
                    seen.store(v, Ordering::SeqCst);
                    let mut p = pending.lock().unwrap();
                    while p.front().is_some_and(|(last, _)| *last <= v) {
                        let (_, at) = p.pop_front().unwrap();
                        latencies
                            .lock()
                            .unwrap()
                            .push(at.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                tokio::task::yield_now().await;
            }
        })
    };
    // Phase 1: the sustainable rate, sending as fast as INSERTs are acknowledged.
    let mut next = 0i64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        client.batch_execute(&insert_sql(next, 500)).await.unwrap();
        next += 500;
    }
    while seen.load(Ordering::SeqCst) < next - 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let sustainable = next as f64 / start.elapsed().as_secs_f64();
    // Phase 2: half that rate, in batches of BATCH.
    let rate = sustainable / 2.0;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(BATCH as f64 / rate));
    let phase = Instant::now();
    while phase.elapsed() < Duration::from_secs(10) {
        tick.tick().await;
        let sent = Instant::now();
        client
            .batch_execute(&insert_sql(next, BATCH))
            .await
            .unwrap();
        next += BATCH;
        pending.lock().unwrap().push_back((next - 1, sent));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pending.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    reader.abort();
    drop(eddy);
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "freshness batches={} rate={:.0} sustainable={:.0} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        latencies.len(),
        rate,
        sustainable,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
}
