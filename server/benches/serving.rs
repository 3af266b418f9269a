//! Model serving: single-row PREDICT through a prepared statement over pgwire, and REST
//! predict latency. Starts a real `eddy serve`, registers the test models of
//! scripts/models/build_models.py and drives it from this process:
//!
//! - prepared: `SELECT predict('m', $1::real, ...)` one row at a time, on 1 connection and on 8
//!   at once; predictions per second of wall time and per CPU second of the server process
//!   (from /proc/<pid>/stat), median of 5 runs.
//! - REST: `POST /v1/models/{name}/predict` with 1 and 100 rows on one keep-alive connection;
//!   p50 and p99 latency over all requests of 3 runs.
//!
//! Run: `cargo bench -p eddy --bench serving` (after scripts/setup.sh).

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SINGLE_ROWS: usize = 10_000;
const RUNS: usize = 5;
const REQUESTS: usize = 2_000;

/// CPU seconds the process `pid` has used (user + system).
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `SINGLE_ROWS` single-row predictions on one connection.
async fn score_rows(client: &tokio_postgres::Client, model: &str, width: usize) {
    let params: Vec<String> = (1..=width).map(|j| format!("${j}::real")).collect();
    let statement = client
        .prepare(&format!("SELECT predict('{model}', {})", params.join(", ")))
        .await
        .unwrap();
    for i in 0..SINGLE_ROWS {
        let values: Vec<f32> = (0..width).map(|j| ((i + j) % 17) as f32).collect();
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let row = client.query_one(&statement, &refs).await.unwrap();
        let _: f64 = row.get(0);
    }
}

/// Single-row prepared PREDICT from `connections` connections at once.
async fn prepared(pg: u16, pid: u32, model: &str, width: usize, connections: usize) {
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(std::sync::Arc::new(common::connect(pg).await));
    }
    let mut per_cpu = Vec::new();
    let mut per_wall = Vec::new();
    for run in 0..=RUNS {
        let cpu0 = process_cpu(pid);
        let wall0 = Instant::now();
        let tasks: Vec<_> = clients
            .iter()
            .map(|c| {
                let (c, model) = (c.clone(), model.to_string());
                tokio::spawn(async move { score_rows(&c, &model, width).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let n = (SINGLE_ROWS * connections) as f64;
        // The first run warms up.
        if run > 0 {
            per_cpu.push(n / (process_cpu(pid) - cpu0));
            per_wall.push(n / wall0.elapsed().as_secs_f64());
        }
    }
    println!(
        "prepared model={model} connections={connections} predictions={} runs={RUNS} \
         predictions_per_server_cpu_second={:.0} predictions_per_wall_second={:.0}",
        SINGLE_ROWS * connections,
        median(per_cpu),
        median(per_wall)
    );
}

fn rest(http: u16, model: &str, width: usize) {
    let stream = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    for rows in [1usize, 100] {
        let body_rows: Vec<String> = (0..rows)
            .map(|i| {
                let cells: Vec<String> = (0..width).map(|j| ((i + j) % 17).to_string()).collect();
                format!("[{}]", cells.join(", "))
            })
            .collect();
        let body = format!("{{\"rows\": [{}]}}", body_rows.join(", "));
        let request = format!(
            "POST /v1/models/{model}/predict HTTP/1.1\r\nHost: eddy\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut latencies = Vec::new();
        for run in 0..=3 {
            for _ in 0..REQUESTS {
                let start = Instant::now();
                writer.write_all(request.as_bytes()).unwrap();
                let mut status = String::new();
                reader.read_line(&mut status).unwrap();
                assert!(status.contains(" 200 "), "REST predict answered {status}");
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut reply = vec![0; length];
                reader.read_exact(&mut reply).unwrap();
                if run > 0 {
                    latencies.push(start.elapsed());
                }
            }
        }
        latencies.sort();
        println!(
            "rest model={model} rows_per_request={rows} requests={} p50_us={} p99_us={}",
            latencies.len(),
            percentile(&latencies, 0.50).as_micros(),
            percentile(&latencies, 0.99).as_micros()
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let models = tempfile::tempdir().unwrap();
    let status = Command::new("python3")
        .arg(root.join("scripts/models/build_models.py"))
        .arg(models.path())
        .env("PYTHONPATH", root.join(".tools/onnx"))
        .stdout(Stdio::null())
        .status()
        .expect("python3 runs");
    assert!(
        status.success(),
        "build_models.py failed: run scripts/setup.sh first"
    );
    let eddy = common::start();
    let (pg, http) = (eddy.pg, eddy.http);
    let client = common::connect(pg).await;
    println!(
        "serving benchmark, revision {}",
        option_env!("EDDY_GIT_REVISION").unwrap_or("see git log")
    );
    for (model, width) in [("linear", 3), ("mlp", 4), ("gbt", 5)] {
        client
            .batch_execute(&format!(
                "CREATE MODEL {model} FROM '{}'",
                models.path().join(format!("{model}.onnx")).display()
            ))
            .await
            .unwrap();
        for connections in [1, 8] {
            prepared(pg, eddy.child.id(), model, width, connections).await;
        }
        rest(http, model, width);
    }
    drop(eddy);
}
