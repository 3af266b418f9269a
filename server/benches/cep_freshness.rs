//! MATCH_RECOGNIZE freshness: how long from the watermark passing a match's last row to the
//! match being visible over pgwire. Starts a real `eddy serve` with a push source whose
//! watermark is its event time, and a stream of the matches of `A B` per key. Each round
//! sends a match's two rows, then (timed from just before it) one later row that moves the
//! watermark past them, and polls the stream until the match is there. Run:
//! `cargo bench -p eddy --bench cep_freshness`.

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let eddy = common::start();
    let client = common::connect(eddy.pg).await;
    client
        .batch_execute(
            "CREATE SOURCE ev (k int NOT NULL, v int NOT NULL, ts timestamptz NOT NULL, \
               WATERMARK FOR ts AS ts); \
             CREATE STREAM m AS SELECT * FROM ev MATCH_RECOGNIZE (PARTITION BY k ORDER BY ts \
               MEASURES FIRST(A.ts) AS started, LAST(B.ts) AS ended \
               PATTERN (A B) WITHIN INTERVAL '1' SECOND DEFINE A AS A.v = 1, B AS B.v = 2)",
        )
        .await
        .unwrap();
    let count = client.prepare("SELECT count(*) FROM m").await.unwrap();
    let mut latencies = Vec::new();
    let base = 1_700_000_000_000i64;
    for round in 0..300i64 {
        let t = base + round * 10;
        let at = |ms: i64| format!("to_timestamp_millis({})", t + ms);
        client
            .batch_execute(&format!(
                "INSERT INTO ev VALUES ({round}, 1, {}), ({round}, 2, {})",
                at(0),
                at(1)
            ))
            .await
            .unwrap();
        let sent = Instant::now();
        client
            .batch_execute(&format!("INSERT INTO ev VALUES (-1, 0, {})", at(2)))
            .await
            .unwrap();
        loop {
            let n: i64 = client.query_one(&count, &[]).await.unwrap().get(0);
            if n > round {
                break;
            }
            tokio::task::yield_now().await;
        }
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    drop(eddy);
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "cep_freshness matches={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
}
