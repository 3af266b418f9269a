//! Streaming over Kafka, end to end: a real `eddy serve` process reads a topic of librdkafka's
//! mock cluster, which lives in this test process, so killing the server leaves the broker
//! (and its messages) up.
//!
//! - Crash test: 200,000 JSON messages feed a GROUP BY view and a TUMBLE view while the server
//!   is killed with SIGKILL at seeded random moments of its progress (6 kills). After catch-up
//!   both views must equal a DataFusion batch computation over the same messages, exactly.
//!   Set EDDY_CRASH_SEED to replay a run; the seed is printed.
//! - Dead letters: good and malformed messages mixed; every good one is counted once and every
//!   bad one is in `<source>_errors` with its partition, offset and reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::prelude::SessionContext;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::common::{Rng, Server, crash_seed};

const MESSAGES: i64 = 200_000;
const KILLS: usize = 6;
const BASE_MS: i64 = 1_700_000_000_000;
const WATERMARK_DELAY_S: i64 = 60;
const WINDOW_S: i64 = 5;

struct Event {
    id: i64,
    device: i32,
    value: i64,
    ts_ms: i64,
}

fn event(i: i64) -> Event {
    Event {
        id: i,
        device: (i % 97) as i32,
        value: (i * 7919) % 1000,
        ts_ms: BASE_MS + i,
    }
}

fn json(e: &Event) -> String {
    let ts = chrono::DateTime::from_timestamp_millis(e.ts_ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ");
    format!(
        r#"{{"id": {}, "device": {}, "value": {}, "ts": "{ts}"}}"#,
        e.id, e.device, e.value
    )
}

fn producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Sends `payloads` (to `partition` if given, else by key) and waits until all are delivered.
fn produce(p: &BaseProducer, topic: &str, partition: Option<i32>, payloads: &[(String, String)]) {
    for (key, payload) in payloads {
        loop {
            let mut record = BaseRecord::to(topic).key(key).payload(payload);
            if let Some(part) = partition {
                record = record.partition(part);
            }
            match p.send(record) {
                Ok(()) => break,
                Err((e, _)) => {
                    assert!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "produce failed: {e}"
                    );
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60))
        .expect("messages delivered");
}

/// Payments of orders (events): none for every third, else one `i % 5 * 700` ms after the
/// order, so with a 2-second bound those with `i % 5` of 3 or 4 come too late.
const PAID: &str = "SELECT e.device, count(*) AS n, sum(p.amount) AS total \
     FROM events e JOIN payments p \
       ON p.order_id = e.id AND p.ts BETWEEN e.ts AND e.ts + INTERVAL '2 seconds' \
     GROUP BY e.device";
const UNPAID: &str = "SELECT e.id FROM events e LEFT JOIN payments p \
       ON p.order_id = e.id AND p.ts BETWEEN e.ts AND e.ts + INTERVAL '2 seconds' \
     WHERE p.order_id IS NULL";

/// A self-join (one reader feeds both sides): each event with the device's next one, 97 ms
/// later (devices take turns), so every event but the last 97 has exactly one.
const SELF_JOIN: &str = "SELECT count(*) AS n, sum(b.id - a.id) AS gaps FROM events a JOIN events b \
       ON a.device = b.device AND b.ts > a.ts AND b.ts <= a.ts + INTERVAL '100 milliseconds'";

/// An ASOF join: each event (of the first `ROLLING_IDS`) with the latest payment at or before
/// it among its device's orders (order_id % 97 = device), counted and summed.
fn latest_payment_sql() -> String {
    format!(
        "SELECT count(*) AS n, count(p.amount) AS matched, sum(p.amount) AS total \
         FROM events e ASOF JOIN payments p MATCH_CONDITION (e.ts >= p.ts) \
           ON e.device = p.order_id % 97 \
         WHERE e.id < {ROLLING_IDS}"
    )
}

/// A window join: payments in the same 5-second window as their order (of the first
/// `ROLLING_IDS`).
fn same_window_sql() -> String {
    format!(
        "SELECT count(*) AS n, sum(p.amount) AS total \
         FROM TUMBLE(events, ts, INTERVAL '{WINDOW_S} seconds') e \
         JOIN TUMBLE(payments, ts, INTERVAL '{WINDOW_S} seconds') p \
           ON p.order_id = e.id AND p.window_start = e.window_start \
         WHERE e.id < {ROLLING_IDS}"
    )
}

/// [`latest_payment_sql`] and [`same_window_sql`] computed directly: "n,matched,total" and
/// "n,total".
fn asof_and_window_reference() -> (String, String) {
    let payments: Vec<(i64, i64, i64)> = (0..MESSAGES).filter_map(payment).collect();
    // Per device, its orders' payments by time.
    let mut by_device: Vec<Vec<(i64, i64)>> = vec![Vec::new(); 97];
    for &(order, amount, ts) in &payments {
        by_device[(order % 97) as usize].push((ts, amount));
    }
    for list in by_device.iter_mut() {
        list.sort();
    }
    let (mut matched, mut total) = (0i64, 0i64);
    for i in 0..ROLLING_IDS {
        let e = event(i);
        let list = &by_device[e.device as usize];
        let before = list.partition_point(|(ts, _)| *ts <= e.ts_ms);
        if before > 0 {
            matched += 1;
            total += list[before - 1].1;
        }
    }
    let window = |ms: i64| ms.div_euclid(WINDOW_S * 1000);
    let same: Vec<i64> = payments
        .iter()
        .filter(|(order, _, ts)| *order < ROLLING_IDS && window(*ts) == window(event(*order).ts_ms))
        .map(|(_, amount, _)| *amount)
        .collect();
    (
        format!("{ROLLING_IDS},{matched},{total}"),
        format!("{},{}", same.len(), same.iter().sum::<i64>()),
    )
}

fn payment(i: i64) -> Option<(i64, i64, i64)> {
    (i % 3 != 0).then(|| (i, i % 100, BASE_MS + i + (i % 5) * 700))
}

fn payment_payloads(range: std::ops::Range<i64>) -> Vec<(String, String)> {
    range
        .filter_map(payment)
        .map(|(order, amount, ts_ms)| {
            let ts = chrono::DateTime::from_timestamp_millis(ts_ms)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ");
            (
                order.to_string(),
                format!(r#"{{"order_id": {order}, "amount": {amount}, "ts": "{ts}"}}"#),
            )
        })
        .collect()
}

fn payloads(range: std::ops::Range<i64>) -> Vec<(String, String)> {
    range
        .map(|i| {
            let e = event(i);
            (e.device.to_string(), json(&e))
        })
        .collect()
}

async fn scalar_i64(client: &tokio_postgres::Client, sql: &str) -> i64 {
    match client.query_one(sql, &[]).await {
        Ok(row) => row.get::<_, Option<i64>>(0).unwrap_or(0),
        Err(_) => -1,
    }
}

/// Polls `sql` (one bigint) until `done` holds, failing after `deadline`.
async fn wait_for(
    server: &Server,
    sql: &str,
    deadline: Duration,
    what: &str,
    done: impl Fn(i64) -> bool,
) -> i64 {
    let start = Instant::now();
    let mut last = -1;
    loop {
        if let Ok((client, conn)) =
            tokio_postgres::connect(&server.conn_string(), tokio_postgres::NoTls).await
        {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            last = scalar_i64(&client, sql).await;
            if done(last) {
                return last;
            }
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: not reached within {deadline:?} (last value {last})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reference_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, r).unwrap())
                .collect();
            rows.push(cells.join(","));
        }
    }
    rows
}

async fn eddy_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .expect("query views")
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| {
                    match row.columns()[i].type_().name() {
                        "int4" => row.get::<_, Option<i32>>(i).map(|v| v.to_string()),
                        "text" | "varchar" => row.get::<_, Option<String>>(i),
                        _ => row.get::<_, Option<i64>>(i).map(|v| v.to_string()),
                    }
                    .unwrap_or_default()
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

const BY_DEVICE: &str = "SELECT device, count(*) AS n, sum(value) AS total, min(value) AS lo, \
     max(value) AS hi, count(DISTINCT value % 10) AS digits FROM events GROUP BY device";
const PER_WINDOW: &str = "SELECT window_start, window_end, count(*) AS n, sum(value) AS total \
     FROM TUMBLE(events, ts, INTERVAL '5 seconds') GROUP BY window_start, window_end";

/// Views over views: how many devices have each count (an aggregate of an aggregate, whose
/// groups move as devices count up), and the devices' counts by last digit (a filter of an
/// updating view, stored as a multiset).
const DEVICE_HISTOGRAM: &str = "SELECT n, count(*) AS devices, sum(total) AS total, max(hi) AS hi \
     FROM by_device GROUP BY n";
const DIGIT_COUNTS: &str = "SELECT device % 10 AS digit, n FROM by_device WHERE total > 0";
/// A join of two updating views (each device with its bucket of the histogram), aggregated.
const BUCKET_SIZES: &str = "SELECT h.n, count(*) AS devices, max(h.devices) AS bucket \
     FROM by_device d JOIN device_histogram h ON d.n = h.n GROUP BY h.n";

/// Top-N that updates: the five devices with the highest totals (ranked as the groups change),
/// and each device's two highest values, the latest first on ties (over events).
const TOP_DEVICES: &str = "SELECT device, sum(value) AS total FROM events GROUP BY device \
     ORDER BY total DESC, device LIMIT 5";
const HIGHEST: &str = "SELECT device, id, value FROM (SELECT device, id, value, \
       row_number() OVER (PARTITION BY device ORDER BY value DESC, id DESC) AS n FROM events) \
     WHERE n <= 2";

/// [`TOP_DEVICES`] and [`HIGHEST`] by DataFusion as batch jobs, rows sorted.
async fn top_n_reference() -> (Vec<String>, Vec<String>) {
    let ctx = SessionContext::new();
    ctx.register_batch("events", events_batch()).unwrap();
    let mut results = Vec::new();
    for sql in [TOP_DEVICES, HIGHEST] {
        let batches = ctx
            .sql(&format!("SELECT * FROM ({sql}) ORDER BY 1, 2"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        results.push(reference_rows(&batches));
    }
    let highest = results.pop().unwrap();
    (results.pop().unwrap(), highest)
}

/// The rows of `sql` over the Parquet files in `dir` as table `t` (none before the first).
async fn parquet_rows(dir: &std::path::Path, sql: &str) -> Vec<String> {
    if !crate::common::has_parquet_files(dir) {
        return Vec::new();
    }
    let ctx = SessionContext::new();
    ctx.register_parquet("t", dir.to_str().unwrap(), Default::default())
        .await
        .unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    reference_rows(&batches)
}

/// Polls `sql` until its rows equal `want`, failing after `deadline` with the last rows.
async fn wait_for_rows(server: &Server, sql: &str, want: &[String], deadline: Duration) {
    let start = Instant::now();
    let mut last = Vec::new();
    loop {
        if let Ok((client, conn)) =
            tokio_postgres::connect(&server.conn_string(), tokio_postgres::NoTls).await
        {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            if let Ok(rows) = client.query(sql, &[]).await
                && !rows.is_empty()
            {
                last = eddy_rows(&client, sql).await;
                if last == want {
                    return;
                }
            }
        }
        assert!(
            start.elapsed() < deadline,
            "{sql}: rows not equal to the batch query's within {deadline:?}: got {last:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The three devices with the highest total in each closed window (top-N per window).
const TOP3: &str = "SELECT * FROM (SELECT window_start, device, sum(value) AS total, \
       row_number() OVER (PARTITION BY window_start ORDER BY sum(value) DESC, device) AS pos \
     FROM TUMBLE(events, ts, INTERVAL '5 seconds') GROUP BY window_start, window_end, device) \
     WHERE pos <= 3";

/// The two devices with the highest total in each HOP window of 6 s sliding by 2 s (the
/// aggregate combines each window from its three 2-second panes).
const HOP_TOP2: &str = "SELECT * FROM (SELECT window_start, device, count(*) AS n, \
       sum(value) AS total, \
       row_number() OVER (PARTITION BY window_start ORDER BY sum(value) DESC, device) AS pos \
     FROM HOP(events, ts, INTERVAL '2 seconds', INTERVAL '6 seconds') \
     GROUP BY window_start, window_end, device) WHERE pos <= 2";
/// The HOP windows compared: those that end a second or more before the final watermark.
const HOP_LAST_START_S: i64 =
    (BASE_MS + MESSAGES - 1 - (WATERMARK_DELAY_S + 1) * 1000 - 6000) / 1000;
const HOP_ROWS: &str = "SELECT CAST(to_unixtime(window_start) AS BIGINT) AS ws, device, n, total, \
     CAST(pos AS BIGINT) FROM hop_top2";

/// [`HOP_TOP2`] by DataFusion as one batch job, from the definition of the windows: an event
/// is in the windows starting at its 2-second slice and at the two slices before it.
async fn hop_reference() -> Vec<String> {
    let ctx = SessionContext::new();
    ctx.register_batch("events", events_batch()).unwrap();
    let pane = "date_bin(INTERVAL '2 seconds', ts)";
    let sql = format!(
        "SELECT CAST(to_unixtime(ws) AS BIGINT) AS s, device, n, total, CAST(pos AS BIGINT) FROM ( \
           SELECT ws, device, n, total, \
             row_number() OVER (PARTITION BY ws ORDER BY total DESC, device) AS pos FROM ( \
               SELECT ws, device, count(*) AS n, sum(value) AS total FROM ( \
                 SELECT device, value, {pane} AS ws FROM events \
                 UNION ALL SELECT device, value, {pane} - INTERVAL '2 seconds' FROM events \
                 UNION ALL SELECT device, value, {pane} - INTERVAL '4 seconds' FROM events) \
               GROUP BY 1, 2)) \
         WHERE pos <= 2 AND CAST(to_unixtime(ws) AS BIGINT) <= {HOP_LAST_START_S} \
         ORDER BY 1, 5"
    );
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    reference_rows(&batches)
}

/// Events enriched by a lookup join with a table (devices 90 and up have no site).
const BY_SITE: &str = "SELECT s.site, count(*) AS n, sum(e.value) AS total \
     FROM events e JOIN sites s ON s.device = e.device GROUP BY s.site";
const SITES: i32 = 90;
/// A rolling feature over each device's last 4 events (OVER), emitted as the watermark passes.
/// Rolling rows compared: those whose time is well before the final watermark (the slowest
/// partition's last event, less the delay; with 8 partitions it is behind the last event).
const ROLLING_IDS: i64 = MESSAGES - WATERMARK_DELAY_S * 1000 - 30_000;
const ROLLING_REF: &str = "SELECT id, ts, sum(value) OVER (PARTITION BY device ORDER BY ts \
     ROWS 3 PRECEDING) AS s FROM events";
const ROLLING: &str = "SELECT id, sum(value) OVER (PARTITION BY device ORDER BY ts ROWS 3 PRECEDING) \
     AS s FROM events";

/// MATCH_RECOGNIZE: per device, a value, two or more rises, then a fall, within 2 seconds
/// (each device's values rise by 143 and wrap at 1,000).
const RISES_CLAUSE: &str = "PARTITION BY device ORDER BY ts \
     MEASURES FIRST(A.id) AS id, LAST(B.value) AS peak, COUNT(B.*) AS n \
     ONE ROW PER MATCH AFTER MATCH SKIP PAST LAST ROW \
     PATTERN (A B{2,} C) WITHIN INTERVAL '2' SECOND \
     DEFINE B AS B.value > PREV(B.value), C AS C.value < PREV(C.value)";

/// The matches of [`RISES_CLAUSE`] over all messages, as Eddy's batch matcher finds them
/// (checked against the backtracking reference matcher in eddy-sql's tests): "id,peak,n".
fn rises_reference() -> Vec<String> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    let batch = events_batch();
    let clause = eddy_sql::cep::syntax::parse_clause(RISES_CLAUSE).unwrap();
    let plan =
        eddy_sql::cep::run::MatchPlan::new(&clause, batch.schema(), &SessionContext::new().state())
            .unwrap();
    let out = eddy_sql::cep::run::run_batch(Arc::new(plan), &[batch]).unwrap();
    let column = |name: &str| {
        out.column_by_name(name)
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone()
    };
    let (id, peak, n) = (column("id"), column("peak"), column("n"));
    let mut rows: Vec<(i64, String)> = (0..out.num_rows())
        .filter(|r| id.value(*r) < ROLLING_IDS)
        .map(|r| {
            let row = format!("{},{},{}", id.value(r), peak.value(r), n.value(r));
            (id.value(r), row)
        })
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, r)| r).collect()
}

fn site(device: i32) -> String {
    format!("site-{}", device % 7)
}

/// All messages as one batch (id, device, value, ts).
fn events_batch() -> RecordBatch {
    let events: Vec<Event> = (0..MESSAGES).map(event).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("device", DataType::Int32, false),
        Field::new("value", DataType::Int64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            false,
        ),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(events.iter().map(|e| e.id).collect::<Int64Array>()),
            Arc::new(events.iter().map(|e| e.device).collect::<Int32Array>()),
            Arc::new(events.iter().map(|e| e.value).collect::<Int64Array>()),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(events.iter().map(|e| e.ts_ms * 1000))
                    .with_timezone("+00:00"),
            ),
        ],
    )
    .unwrap()
}

/// The same results, computed by DataFusion as one batch job over all messages.
async fn reference() -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
    let batch = events_batch();
    let ctx = SessionContext::new();
    ctx.register_batch("events", batch).unwrap();
    let sites = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("device", DataType::Int32, false),
            Field::new("site", DataType::Utf8, false),
        ])),
        vec![
            Arc::new((0..SITES).collect::<Int32Array>()),
            Arc::new(
                (0..SITES)
                    .map(|d| Some(site(d)))
                    .collect::<datafusion::arrow::array::StringArray>(),
            ),
        ],
    )
    .unwrap();
    ctx.register_batch("sites", sites).unwrap();
    let by_site = ctx
        .sql(&format!("{BY_SITE} ORDER BY 1"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let rolling = ctx
        .sql(&format!(
            "SELECT id, s FROM ({ROLLING_REF}) WHERE id < {ROLLING_IDS} ORDER BY id"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let by_device = ctx
        .sql(&format!("{BY_DEVICE} ORDER BY device"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    // Windows the final watermark (max(ts) - delay) has closed.
    let windows = ctx
        .sql(&format!(
            "SELECT CAST(to_unixtime(ws) AS BIGINT), n, total FROM ( \
               SELECT date_bin(INTERVAL '{WINDOW_S} seconds', ts) AS ws, count(*) AS n, sum(value) AS total \
               FROM events GROUP BY 1) \
             WHERE ws + INTERVAL '{WINDOW_S} seconds' <= (SELECT max(ts) - INTERVAL '{WATERMARK_DELAY_S} seconds' FROM events) \
             ORDER BY 1"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    (
        reference_rows(&by_device),
        reference_rows(&windows),
        reference_rows(&by_site),
        reference_rows(&rolling),
    )
}

/// The top 3 devices of each window the final watermark has closed, by DataFusion as one
/// batch job.
async fn top3_reference() -> Vec<String> {
    let batch = events_batch();
    let ctx = SessionContext::new();
    ctx.register_batch("events", batch).unwrap();
    let sql = format!(
        "SELECT CAST(to_unixtime(ws) AS BIGINT), device, total, CAST(pos AS BIGINT) FROM ( \
           SELECT ws, device, total, \
             row_number() OVER (PARTITION BY ws ORDER BY total DESC, device) AS pos FROM ( \
               SELECT date_bin(INTERVAL '{WINDOW_S} seconds', ts) AS ws, device, sum(value) AS total \
               FROM events GROUP BY 1, 2)) \
         WHERE pos <= 3 AND ws + INTERVAL '{WINDOW_S} seconds' <= \
           (SELECT max(ts) - INTERVAL '{WATERMARK_DELAY_S} seconds' FROM events) \
         ORDER BY 1, 4"
    );
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    reference_rows(&batches)
}

/// The views over `by_device`, by DataFusion as one batch job: the histogram of counts, the
/// counts by digit, and the sum of those counts.
async fn views_over_views_reference() -> (Vec<String>, Vec<String>, i64) {
    let ctx = SessionContext::new();
    ctx.register_batch("events", events_batch()).unwrap();
    let run = |sql: String| {
        let ctx = ctx.clone();
        async move { ctx.sql(&sql).await.unwrap().collect().await.unwrap() }
    };
    let histogram = run(format!(
        "SELECT n, count(*) AS devices, sum(total) AS total, max(hi) AS hi \
         FROM ({BY_DEVICE}) GROUP BY n ORDER BY n"
    ))
    .await;
    let digits = run(format!(
        "SELECT device % 10 AS digit, n FROM ({BY_DEVICE}) WHERE total > 0 ORDER BY 1, 2"
    ))
    .await;
    let total = run(format!(
        "SELECT CAST(sum(n) AS BIGINT) FROM ({BY_DEVICE}) WHERE total > 0"
    ))
    .await;
    let total = reference_rows(&total)[0].parse().unwrap();
    (reference_rows(&histogram), reference_rows(&digits), total)
}

/// The interval-join results, computed by DataFusion as one batch job: the paid view, and
/// the unpaid orders the final watermark has decided (ids below `ROLLING_IDS`).
async fn join_reference() -> (Vec<String>, Vec<String>) {
    let payments: Vec<(i64, i64, i64)> = (0..MESSAGES).filter_map(payment).collect();
    let ts_type = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
    let times = |ms: Vec<i64>| {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(ms.into_iter().map(|t| t * 1000))
                .with_timezone("+00:00"),
        )
    };
    let payments = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("order_id", DataType::Int64, false),
            Field::new("amount", DataType::Int64, true),
            Field::new("ts", ts_type, false),
        ])),
        vec![
            Arc::new(payments.iter().map(|p| p.0).collect::<Int64Array>()),
            Arc::new(payments.iter().map(|p| p.1).collect::<Int64Array>()),
            times(payments.iter().map(|p| p.2).collect()),
        ],
    )
    .unwrap();
    let ctx = SessionContext::new();
    ctx.register_batch("events", events_batch()).unwrap();
    ctx.register_batch("payments", payments).unwrap();
    let mut results = Vec::new();
    for sql in [
        format!("{PAID} ORDER BY device"),
        format!("SELECT id FROM ({UNPAID}) WHERE id < {ROLLING_IDS} ORDER BY id"),
    ] {
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        results.push(reference_rows(&batches));
    }
    let unpaid = results.pop().unwrap();
    (results.pop().unwrap(), unpaid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_views_after_sigkills_equal_a_batch_run() {
    let seed = crash_seed();
    println!("crash test seed: {seed} (set EDDY_CRASH_SEED={seed} to replay)");
    let mut rng = Rng(seed);
    let mock = MockCluster::new(1).expect("mock cluster");
    // librdkafka's mock broker keeps at most 5 MB per partition and deletes older messages
    // past that: 200,000 messages (about 20 MB) over 8 partitions stay within it, so a
    // consumer that lags on a loaded machine never finds its offset deleted (with 3
    // partitions it could, and then reset to the end: "Offset out of range").
    mock.create_topic("events", 8, 1).expect("topic");
    mock.create_topic("payments", 4, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let p = producer(&bootstrap);
    produce(&p, "events", None, &payloads(0..MESSAGES / 2));
    produce(&p, "payments", None, &payment_payloads(0..MESSAGES / 2));

    let mut server = Server::start();
    let client = server.connect().await;
    // A sink of the windowed view reads the view's changelog: each closed window reaches
    // the Parquet files once, across the kills.
    let windows_out = tempfile::tempdir().unwrap();
    let sites: Vec<String> = (0..SITES)
        .map(|d| format!("({d}, '{}')", site(d)))
        .collect();
    client
        .batch_execute(&format!(
            "CREATE TABLE sites (device int PRIMARY KEY, site text NOT NULL); \
             INSERT INTO sites VALUES {}; \
             CREATE SOURCE events (id bigint NOT NULL, device int NOT NULL, value bigint, \
               ts timestamptz NOT NULL, WATERMARK FOR ts AS ts - INTERVAL '{WATERMARK_DELAY_S} seconds') \
             WITH (connector = 'kafka', bootstrap.servers = '{bootstrap}', topic = 'events', \
               properties.max.partition.fetch.bytes = '65536'); \
             CREATE MATERIALIZED VIEW by_device WITH (checkpoint_interval = '200ms') AS {BY_DEVICE}; \
             CREATE MATERIALIZED VIEW device_histogram WITH (checkpoint_interval = '230ms') AS {DEVICE_HISTOGRAM}; \
             CREATE MATERIALIZED VIEW digit_counts WITH (checkpoint_interval = '260ms') AS {DIGIT_COUNTS}; \
             CREATE MATERIALIZED VIEW bucket_sizes WITH (checkpoint_interval = '280ms') AS {BUCKET_SIZES}; \
             CREATE MATERIALIZED VIEW per_window WITH (checkpoint_interval = '300ms') AS {PER_WINDOW}; \
             CREATE MATERIALIZED VIEW top3 WITH (checkpoint_interval = '310ms') AS {TOP3}; \
             CREATE MATERIALIZED VIEW hop_top2 WITH (checkpoint_interval = '320ms') AS {HOP_TOP2}; \
             CREATE MATERIALIZED VIEW by_site WITH (checkpoint_interval = '250ms') AS {BY_SITE}; \
             CREATE STREAM rolling WITH (checkpoint_interval = '350ms', retention_rows = 300000) \
               AS {ROLLING}; \
             CREATE SOURCE payments (order_id bigint NOT NULL, amount bigint, ts timestamptz NOT NULL, \
               WATERMARK FOR ts AS ts - INTERVAL '{WATERMARK_DELAY_S} seconds') \
             WITH (connector = 'kafka', bootstrap.servers = '{bootstrap}', topic = 'payments', \
               properties.max.partition.fetch.bytes = '65536'); \
             CREATE MATERIALIZED VIEW paid WITH (checkpoint_interval = '270ms') AS {PAID}; \
             CREATE MATERIALIZED VIEW next_of_device WITH (checkpoint_interval = '290ms') AS {SELF_JOIN}; \
             CREATE STREAM unpaid WITH (checkpoint_interval = '330ms', retention_rows = 300000) \
               AS {UNPAID}; \
             CREATE STREAM rises WITH (checkpoint_interval = '385ms', retention_rows = 300000) \
               AS SELECT * FROM events MATCH_RECOGNIZE ({RISES_CLAUSE}); \
             CREATE MATERIALIZED VIEW latest_payment WITH (checkpoint_interval = '340ms') AS {}; \
             CREATE MATERIALIZED VIEW same_window WITH (checkpoint_interval = '360ms') AS {}; \
             CREATE MATERIALIZED VIEW top_devices WITH (checkpoint_interval = '370ms') AS {TOP_DEVICES}; \
             CREATE MATERIALIZED VIEW highest WITH (checkpoint_interval = '380ms') AS {HIGHEST}; \
             CREATE SINK windows_out FROM per_window WITH (connector = 'parquet', path = '{}', \
               checkpoint_interval = '390ms');",
            sites.join(", "),
            latest_payment_sql(),
            same_window_sql(),
            windows_out.path().display(),
        ))
        .await
        .expect("create source and views");
    drop(client);

    let mut targets: Vec<i64> = (0..KILLS)
        .map(|_| 1 + (rng.next() % (MESSAGES as u64 - 1)) as i64)
        .collect();
    targets.sort();
    let progress = "SELECT sum(n) FROM by_device";
    let mut produced_all = false;
    for (k, target) in targets.iter().enumerate() {
        if *target >= MESSAGES / 2 && !produced_all {
            produce(&p, "events", None, &payloads(MESSAGES / 2..MESSAGES));
            produce(
                &p,
                "payments",
                None,
                &payment_payloads(MESSAGES / 2..MESSAGES),
            );
            produced_all = true;
        }
        let seen = wait_for(
            &server,
            progress,
            Duration::from_secs(180),
            "progress",
            |n| n >= *target,
        )
        .await;
        // Each run takes its own parallelism: a restart restores every partition's groups
        // from a checkpoint written by another number of partitions.
        let parallelism = (1 + rng.next() % 3).to_string();
        println!(
            "kill {} at {seen} events counted (target {target}); restart with parallelism {parallelism}",
            k + 1
        );
        server.restart_with(&[("EDDY_PARALLELISM", &parallelism)]);
    }
    if !produced_all {
        produce(&p, "events", None, &payloads(MESSAGES / 2..MESSAGES));
        produce(
            &p,
            "payments",
            None,
            &payment_payloads(MESSAGES / 2..MESSAGES),
        );
    }
    let (by_device, windows, by_site, rolling) = reference().await;
    let (paid, unpaid) = join_reference().await;
    let top3 = top3_reference().await;
    let hop_top2 = hop_reference().await;
    let (latest_payment, same_window) = asof_and_window_reference();
    let (top_devices, highest) = top_n_reference().await;
    let rises = rises_reference();
    assert!(
        rises.len() > 1000,
        "only {} matches to compare",
        rises.len()
    );
    let (histogram, digits, digits_total) = views_over_views_reference().await;
    let deadline = Duration::from_secs(300);
    let enriched = (0..MESSAGES).filter(|i| event(*i).device < SITES).count() as i64;
    let paid_total = (0..MESSAGES)
        .filter_map(payment)
        .filter(|(order, _, ts)| *ts <= BASE_MS + order + 2000)
        .count() as i64;
    let pairs = MESSAGES - 97;
    // Each view has caught up once its count reaches the batch result's.
    let same_window_n: i64 = same_window.split(',').next().unwrap().parse().unwrap();
    let caught_up: [(String, &str, i64); 15] = [
        (
            format!("SELECT count(*) FROM rises WHERE id < {ROLLING_IDS}"),
            "all MATCH_RECOGNIZE matches",
            rises.len() as i64,
        ),
        (
            "SELECT n FROM latest_payment".into(),
            "all events answered by the ASOF join",
            ROLLING_IDS,
        ),
        (
            "SELECT n FROM same_window".into(),
            "all window-join pairs",
            same_window_n,
        ),
        (progress.to_string(), "all events counted", MESSAGES),
        (
            "SELECT sum(n * devices) FROM device_histogram".into(),
            "all events in the histogram of counts",
            MESSAGES,
        ),
        (
            "SELECT sum(n) FROM digit_counts".into(),
            "all counts by digit",
            digits_total,
        ),
        (
            "SELECT sum(n * devices) FROM bucket_sizes".into(),
            "all events in the join of two views",
            MESSAGES,
        ),
        (
            "SELECT count(*) FROM per_window".into(),
            "all closed windows",
            windows.len() as i64,
        ),
        (
            "SELECT sum(n) FROM by_site".into(),
            "all enriched events counted",
            enriched,
        ),
        (
            format!("SELECT count(*) FROM rolling WHERE id < {ROLLING_IDS}"),
            "all rolling rows",
            rolling.len() as i64,
        ),
        (
            "SELECT sum(n) FROM paid".into(),
            "all payments joined",
            paid_total,
        ),
        (
            format!("SELECT count(*) FROM unpaid WHERE id < {ROLLING_IDS}"),
            "all unpaid orders",
            unpaid.len() as i64,
        ),
        (
            "SELECT count(*) FROM top3".into(),
            "all closed windows' top 3",
            top3.len() as i64,
        ),
        (
            format!("SELECT count(*) FROM ({HOP_ROWS}) WHERE ws <= {HOP_LAST_START_S}"),
            "all closed HOP windows' top 2",
            hop_top2.len() as i64,
        ),
        (
            "SELECT n FROM next_of_device".into(),
            "all self-join pairs",
            pairs,
        ),
    ];
    for (sql, what, want) in &caught_up {
        wait_for(&server, sql, deadline, what, |n| n >= *want).await;
    }
    // The top-N views update until their last row is in: they must settle on the batch
    // result (a state that equals it cannot change again: later rows could only be better).
    wait_for_rows(
        &server,
        "SELECT device, total FROM top_devices ORDER BY 1, 2",
        &top_devices,
        deadline,
    )
    .await;
    wait_for_rows(
        &server,
        "SELECT device, id, value FROM highest ORDER BY 1, 2",
        &highest,
        deadline,
    )
    .await;
    // The sink's files hold each closed window once.
    let sunk_sql = "SELECT CAST(to_unixtime(window_start) AS BIGINT), n, total FROM t \
                    ORDER BY window_start";
    let start = Instant::now();
    loop {
        let sunk = parquet_rows(windows_out.path(), sunk_sql).await;
        if sunk.len() >= windows.len() {
            assert_eq!(
                sunk, windows,
                "Parquet sink of the TUMBLE view differs (seed {seed})"
            );
            break;
        }
        assert!(
            start.elapsed() < deadline,
            "the sink of the TUMBLE view wrote {} of {} windows (seed {seed})",
            sunk.len(),
            windows.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = server.connect().await;
    let got_histogram = eddy_rows(
        &client,
        "SELECT n, devices, total, hi FROM device_histogram ORDER BY n",
    )
    .await;
    assert_eq!(
        got_histogram, histogram,
        "view over a view (aggregate of an aggregate) differs (seed {seed})"
    );
    let got_buckets = eddy_rows(
        &client,
        "SELECT n, devices, bucket FROM bucket_sizes ORDER BY n",
    )
    .await;
    let buckets: Vec<String> = histogram
        .iter()
        .map(|row| {
            let cells: Vec<&str> = row.split(',').collect();
            format!("{},{},{}", cells[0], cells[1], cells[1])
        })
        .collect();
    assert_eq!(
        got_buckets, buckets,
        "join of two updating views differs (seed {seed})"
    );
    let got_digits = eddy_rows(&client, "SELECT digit, n FROM digit_counts ORDER BY 1, 2").await;
    assert_eq!(
        got_digits, digits,
        "filter of an updating view differs (seed {seed})"
    );
    let got_pairs = eddy_rows(&client, "SELECT n, gaps FROM next_of_device").await;
    assert_eq!(
        got_pairs,
        vec![format!("{pairs},{}", pairs * 97)],
        "self-join view differs (seed {seed})"
    );
    let got_top3 = eddy_rows(
        &client,
        "SELECT CAST(to_unixtime(window_start) AS BIGINT), device, total, CAST(pos AS BIGINT) \
         FROM top3 ORDER BY 1, 4",
    )
    .await;
    assert_eq!(got_top3, top3, "top-N per window differs (seed {seed})");
    let got_paid = eddy_rows(&client, "SELECT device, n, total FROM paid ORDER BY device").await;
    assert_eq!(got_paid, paid, "interval-join view differs (seed {seed})");
    let got_unpaid = eddy_rows(
        &client,
        &format!("SELECT id FROM unpaid WHERE id < {ROLLING_IDS} ORDER BY id"),
    )
    .await;
    assert_eq!(
        got_unpaid.len(),
        unpaid.len(),
        "unpaid (interval LEFT JOIN) row count (seed {seed})"
    );
    assert!(
        got_unpaid == unpaid,
        "unpaid orders differ from the batch query (seed {seed})"
    );
    let got_rolling = eddy_rows(
        &client,
        &format!("SELECT id, s FROM rolling WHERE id < {ROLLING_IDS} ORDER BY id"),
    )
    .await;
    assert_eq!(
        got_rolling.len(),
        rolling.len(),
        "OVER stream row count (seed {seed})"
    );
    assert!(
        got_rolling == rolling,
        "OVER stream differs from the batch query (seed {seed})"
    );
    let got_rises = eddy_rows(
        &client,
        &format!("SELECT id, peak, n FROM rises WHERE id < {ROLLING_IDS} ORDER BY id"),
    )
    .await;
    assert_eq!(
        got_rises.len(),
        rises.len(),
        "MATCH_RECOGNIZE stream row count: a match lost or repeated (seed {seed})"
    );
    assert!(
        got_rises == rises,
        "MATCH_RECOGNIZE stream differs from the batch matcher (seed {seed})"
    );
    let got_latest = eddy_rows(&client, "SELECT n, matched, total FROM latest_payment").await;
    assert_eq!(
        got_latest,
        vec![latest_payment],
        "ASOF-join view differs (seed {seed})"
    );
    let got_same = eddy_rows(&client, "SELECT n, total FROM same_window").await;
    assert_eq!(
        got_same,
        vec![same_window],
        "window-join view differs (seed {seed})"
    );
    let got_sites = eddy_rows(&client, "SELECT site, n, total FROM by_site ORDER BY site").await;
    assert_eq!(got_sites, by_site, "lookup-join view differs (seed {seed})");
    let got_devices = eddy_rows(
        &client,
        "SELECT device, n, total, lo, hi, digits FROM by_device ORDER BY device",
    )
    .await;
    assert_eq!(
        got_devices, by_device,
        "GROUP BY view differs (seed {seed})"
    );
    let got_windows = eddy_rows(
        &client,
        "SELECT CAST(to_unixtime(window_start) AS BIGINT), n, total FROM per_window ORDER BY window_start",
    )
    .await;
    assert_eq!(got_windows, windows, "TUMBLE view differs (seed {seed})");
    let got_hop = eddy_rows(
        &client,
        &format!("SELECT * FROM ({HOP_ROWS}) WHERE ws <= {HOP_LAST_START_S} ORDER BY 1, 5"),
    )
    .await;
    assert_eq!(
        got_hop, hop_top2,
        "HOP view (windows from panes, top 2 of each) differs (seed {seed})"
    );
    let late = client
        .query_one("SELECT count(*) FROM events_errors", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(late, 0, "no message is malformed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_kafka_messages_become_dead_letters() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("mixed", 1, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let mut messages = Vec::new();
    let mut bad = Vec::new();
    let mut good_values = 0i64;
    for i in 0..2000i64 {
        let e = event(i);
        let payload = match i % 11 {
            3 => r#"{"id": 1, "device": "#.to_string(),
            5 => {
                format!(r#"{{"id": {i}, "device": "not a number", "ts": "2024-01-01T00:00:00Z"}}"#)
            }
            7 => format!(r#"{{"id": {i}, "value": 1, "ts": "2024-01-01T00:00:00Z"}}"#),
            9 => format!(
                r#"{{"id": {i}, "device": 1, "ts": "2024-01-01T00:00:00Z", "pad": "{}"}}"#,
                "x".repeat(600)
            ),
            10 if i % 2 == 0 => "[1, 2, 3]".to_string(),
            _ => {
                good_values += e.value;
                json(&e)
            }
        };
        if payload != json(&e) {
            bad.push(i);
        }
        messages.push((i.to_string(), payload));
    }
    produce(&producer(&bootstrap), "mixed", Some(0), &messages);

    let server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE mixed (id bigint NOT NULL, device int NOT NULL, value bigint, ts timestamptz) \
             WITH (connector = 'kafka', bootstrap.servers = '{bootstrap}', topic = 'mixed', \
               max_event_bytes = 512); \
             CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(value) AS total FROM mixed"
        ))
        .await
        .expect("create");
    let good = messages.len() as i64 - bad.len() as i64;
    wait_for(
        &server,
        "SELECT n FROM totals",
        Duration::from_secs(60),
        "good events",
        |n| n >= good,
    )
    .await;
    wait_for(
        &server,
        "SELECT count(*) FROM mixed_errors",
        Duration::from_secs(60),
        "dead letters",
        |n| n >= bad.len() as i64,
    )
    .await;
    let row = client
        .query_one("SELECT n, total FROM totals", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        good,
        "every good message counted once"
    );
    assert_eq!(row.get::<_, i64>(1), good_values);
    let offsets: Vec<i64> = client
        .query(
            "SELECT \"offset\" FROM mixed_errors WHERE partition = 0 ORDER BY \"offset\"",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        offsets, bad,
        "every bad message is a dead letter, at its offset"
    );
    let reasons: Vec<String> = client
        .query(
            "SELECT error FROM mixed_errors WHERE \"offset\" IN (3, 5, 7, 9)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(reasons[0].contains("invalid JSON"), "{reasons:?}");
    assert!(reasons[2].contains("not-null"), "{reasons:?}");
    assert!(reasons[3].contains("exceeds"), "{reasons:?}");
    let payload: String = client
        .query_one("SELECT payload FROM mixed_errors WHERE \"offset\" = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(payload, r#"{"id": 1, "device": "#);
    let shown = client
        .simple_query("SHOW MATERIALIZED VIEWS")
        .await
        .unwrap();
    let dead_col = shown
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("dead_letters").map(String::from),
            _ => None,
        })
        .unwrap();
    assert_eq!(dead_col, bad.len().to_string(), "dead letters are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_source_watches_a_directory_exactly_once() {
    let input = tempfile::tempdir().unwrap();
    let write = |name: &str, ids: std::ops::Range<i64>| {
        let lines: Vec<String> = ids.map(|i| json(&event(i))).collect();
        std::fs::write(input.path().join(name), lines.join("\n") + "\n").unwrap();
    };
    write("0001.jsonl", 0..1000);
    std::fs::write(
        input.path().join("0002.jsonl"),
        "{\"id\": 5000, \"device\": 1}\nnot json\n",
    )
    .unwrap();
    let mut server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE files (id bigint NOT NULL, device int NOT NULL, value bigint, ts timestamptz) \
             WITH (connector = 'file', path = '{}/*.jsonl', watch = 'true'); \
             CREATE MATERIALIZED VIEW file_totals AS SELECT count(*) AS n, sum(id) AS ids FROM files",
            input.path().display()
        ))
        .await
        .expect("create");
    let n = "SELECT n FROM file_totals";
    wait_for(&server, n, Duration::from_secs(60), "first files", |n| {
        n >= 1001
    })
    .await;
    write("0003.jsonl", 1000..3000);
    wait_for(&server, n, Duration::from_secs(60), "a new file", |n| {
        n >= 3001
    })
    .await;
    server.restart();
    write("0004.jsonl", 3000..3500);
    wait_for(&server, n, Duration::from_secs(60), "after restart", |n| {
        n >= 3501
    })
    .await;
    let client = server.connect().await;
    let row = client
        .query_one("SELECT n, ids FROM file_totals", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 3501, "every line once");
    assert_eq!(row.get::<_, i64>(1), (0..3500).sum::<i64>() + 5000);
    let bad: i64 = client
        .query_one(
            "SELECT count(*) FROM files_errors WHERE payload = 'not json'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_broker_tansu_feeds_a_view_across_a_restart() {
    let (_broker, bootstrap) = crate::common::Tansu::start(&[("readings", 2)]).await;
    let p = producer(&bootstrap);
    produce(&p, "readings", None, &payloads(0..5000));

    let mut server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE readings (id bigint NOT NULL, device int NOT NULL, value bigint, ts timestamptz) \
             WITH (connector = 'kafka', bootstrap.servers = '{bootstrap}', topic = 'readings'); \
             CREATE MATERIALIZED VIEW tansu_totals AS SELECT count(*) AS n, sum(id) AS ids FROM readings"
        ))
        .await
        .expect("create");
    let n = "SELECT n FROM tansu_totals";
    wait_for(&server, n, Duration::from_secs(60), "first messages", |n| {
        n >= 5000
    })
    .await;
    server.restart();
    produce(&p, "readings", None, &payloads(5000..8000));
    wait_for(&server, n, Duration::from_secs(60), "after restart", |n| {
        n >= 8000
    })
    .await;
    let client = server.connect().await;
    let row = client
        .query_one("SELECT n, ids FROM tansu_totals", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 8000, "every message once");
    assert_eq!(row.get::<_, i64>(1), (0..8000).sum::<i64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partition_holds_windows_back_unless_an_idle_timeout_is_set() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("quiet", 2, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let p = producer(&bootstrap);
    // Partition 1 gets one early event and then nothing; partition 0 runs 20 s ahead.
    produce(&p, "quiet", Some(1), &payloads(0..1));
    let busy: Vec<(String, String)> = (0..20)
        .map(|s| {
            let e = event(s * 1000);
            (e.device.to_string(), json(&e))
        })
        .collect();
    produce(&p, "quiet", Some(0), &busy);
    let server = Server::start();
    let client = server.connect().await;
    let source = |name: &str, extra: &str| {
        format!(
            "CREATE SOURCE {name} (id bigint, device int, value bigint, ts timestamptz, \
               WATERMARK FOR ts AS ts - INTERVAL '1 second') \
             WITH (connector = 'kafka', bootstrap.servers = '{bootstrap}', topic = 'quiet'{extra}); \
             CREATE MATERIALIZED VIEW {name}_w AS SELECT window_start, count(*) AS n \
               FROM TUMBLE({name}, ts, INTERVAL '5 seconds') GROUP BY window_start, window_end;"
        )
    };
    client
        .batch_execute(
            &(source("strict", "") + &source("lively", ", watermark.idle_timeout = '1s'")),
        )
        .await
        .expect("create");
    // Windows ending by 00:19 (watermark 00:19 - 1 s = 00:18): [0,5), [5,10), [10,15).
    wait_for(
        &server,
        "SELECT count(*) FROM lively_w",
        Duration::from_secs(60),
        "windows past the idle partition",
        |n| n >= 3,
    )
    .await;
    let strict: i64 = client
        .query_one("SELECT count(*) FROM strict_w", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        strict, 0,
        "without a timeout the idle partition holds the watermark"
    );
    let first: i64 = client
        .query_one("SELECT n FROM lively_w ORDER BY window_start LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        first, 6,
        "00:00-00:05 holds the partition-1 event and 5 partition-0 events"
    );
}

/// A checkpointed offset the broker has since deleted (retention) fails the source loudly:
/// the pipeline does not jump to the end of the partition and lose the events in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_offset_the_broker_deleted_fails_the_source() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("short", 1, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let p = producer(&bootstrap);
    produce(&p, "short", Some(0), &payloads(0..1000));
    let mut server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE short_ev (id bigint NOT NULL, device int NOT NULL, value bigint, \
               ts timestamptz NOT NULL) \
             WITH (connector = 'kafka', bootstrap.servers = '{bootstrap}', topic = 'short'); \
             CREATE MATERIALIZED VIEW short_n WITH (checkpoint_interval = '100ms') AS \
               SELECT count(*) AS n FROM short_ev"
        ))
        .await
        .unwrap();
    wait_for(
        &server,
        "SELECT n FROM short_n",
        Duration::from_secs(60),
        "events",
        |n| n >= 1000,
    )
    .await;
    // A checkpoint after the last event holds offset 1000: wait for two more.
    let epoch = || show_field(&client, "short_n", "checkpoint_epoch");
    let first: i64 = epoch().await.parse().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while epoch().await.parse::<i64>().unwrap_or(0) < first + 2 {
        assert!(Instant::now() < deadline, "no checkpoints");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(client);
    server.kill9();
    // Past the mock broker's 5 MB a partition: the oldest messages, offset 1000 among them,
    // are deleted.
    let pad = "x".repeat(2000);
    let big: Vec<(String, String)> = (0..6000)
        .map(|i| ("k".to_string(), format!(r#"{{"id": {i}, "pad": "{pad}"}}"#)))
        .collect();
    produce(&p, "short", Some(0), &big);
    server.restart();
    let client = server.connect().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = show_field(&client, "short_n", "status").await;
        if status.starts_with("failed") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the source never failed: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.contains("no longer on the broker"), "{status}");
    let n: i64 = client
        .query_one("SELECT n FROM short_n", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000, "no event after the deleted offset was counted");
}

/// One field of a materialized view's row in SHOW MATERIALIZED VIEWS.
async fn show_field(client: &tokio_postgres::Client, view: &str, field: &str) -> String {
    let rows = client
        .simple_query("SHOW MATERIALIZED VIEWS")
        .await
        .unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get("name") == Some(view) => {
                r.get(field).map(String::from)
            }
            _ => None,
        })
        .unwrap_or_default()
}

/// Views over one Kafka source share its reader: a view created after the first has read
/// the topic reads it from the start on its own, catches up, and both count every message
/// once, including those produced after, across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_created_later_over_a_kafka_source_count_every_message_once() {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("shared", 3, 1).expect("topic");
    let bootstrap = mock.bootstrap_servers();
    let p = producer(&bootstrap);
    produce(&p, "shared", None, &payloads(0..3000));
    let mut server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE events (id bigint NOT NULL, device int NOT NULL, value bigint, \
               ts timestamptz NOT NULL) \
             WITH (connector = 'kafka', bootstrap.servers = '{bootstrap}', topic = 'shared'); \
             CREATE MATERIALIZED VIEW first_count AS SELECT count(*) AS n, sum(value) AS total FROM events"
        ))
        .await
        .unwrap();
    let deadline = Duration::from_secs(120);
    wait_for(
        &server,
        "SELECT n FROM first_count",
        deadline,
        "first view",
        |n| n >= 3000,
    )
    .await;
    client
        .batch_execute(
            "CREATE MATERIALIZED VIEW second_count AS SELECT count(*) AS n, sum(value) AS total FROM events; \
             CREATE MATERIALIZED VIEW per_device AS SELECT device, count(*) AS n FROM events GROUP BY device",
        )
        .await
        .unwrap();
    produce(&p, "shared", None, &payloads(3000..6000));
    wait_for(
        &server,
        "SELECT n FROM second_count",
        deadline,
        "second view",
        |n| n >= 6000,
    )
    .await;
    server.restart();
    produce(&p, "shared", None, &payloads(6000..9000));
    let want_total: i64 = (0..9000).map(|i| event(i).value).sum();
    for view in ["first_count", "second_count"] {
        wait_for(
            &server,
            &format!("SELECT n FROM {view}"),
            deadline,
            view,
            |n| n >= 9000,
        )
        .await;
        let client = server.connect().await;
        let row = client
            .query_one(&format!("SELECT n, total FROM {view}"), &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 9000, "{view}: every message once");
        assert_eq!(
            row.get::<_, i64>(1),
            want_total,
            "{view}: the same messages"
        );
    }
    wait_for(
        &server,
        "SELECT sum(n) FROM per_device",
        deadline,
        "per device",
        |n| n >= 9000,
    )
    .await;
    let client = server.connect().await;
    let n: i64 = client
        .query_one("SELECT sum(n) FROM per_device", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 9000, "the grouped view counts every message once");
}
