//! Sinks over the wire: a Parquet sink killed with SIGKILL at seeded random moments of an
//! export, whose visible files, read back with DataFusion, hold every row exactly once.

use std::path::Path;
use std::time::{Duration, Instant};

use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::common::{Rng, S3Server, Server, crash_seed, error_text, insert_rows};

/// (rows, distinct ids, rows whose v2 is not 2 * id) over the visible Parquet files of `dir`.
async fn exported(dir: &Path) -> (i64, i64, i64) {
    if !crate::common::has_parquet_files(dir) {
        return (0, 0, 0);
    }
    let ctx = SessionContext::new();
    ctx.register_parquet("t", dir.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    let batches = ctx
        .sql("SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE v2 <> 2 * id) FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    let col = |i: usize| batches[0].column(i).as_primitive::<Int64Type>().value(0);
    (col(0), col(1), col(2))
}

/// What `exported` finds in the objects under `exports/prefix`, once they hold `total` rows
/// or after a deadline of 3 minutes.
async fn bucket_rows(s3: &S3Server, prefix: &str, total: i64) -> (i64, i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let dir = tempfile::tempdir().unwrap();
        s3.download("exports", prefix, dir.path());
        let got = exported(dir.path()).await;
        if got.0 >= total || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `INSERT INTO readings` of the rows `(i, i)` for `i` in `from..from + n`.
fn insert_sql(from: i64, n: i64) -> String {
    let values: Vec<String> = (from..from + n).map(|i| format!("({i}, {i})")).collect();
    format!("INSERT INTO readings VALUES {}", values.join(", "))
}

/// Inserts `batches` batches of `rows` rows `(i, i)` into `readings`, killing the server with
/// SIGKILL and restarting it after each batch in `kills`; returns a connection to the server.
async fn insert_killing(
    server: &mut Server,
    mut client: tokio_postgres::Client,
    batches: i64,
    rows: i64,
    kills: &[i64],
    seed: u64,
) -> tokio_postgres::Client {
    for b in 0..batches {
        client
            .batch_execute(&insert_sql(b * rows, rows))
            .await
            .unwrap();
        if kills.contains(&b) {
            println!("SIGKILL after batch {b} (seed {seed})");
            server.restart();
            client = server.connect().await;
        }
    }
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_sink_exports_every_row_exactly_once_across_sigkills() {
    let seed = crash_seed();
    println!("parquet sink crash test seed: {seed} (set EDDY_CRASH_SEED={seed} to replay)");
    let mut rng = Rng(seed);
    const BATCHES: i64 = 80;
    const ROWS: i64 = 50;
    let mut kills: Vec<i64> = (0..3)
        .map(|_| 1 + rng.below(BATCHES as u64 - 1) as i64)
        .collect();
    kills.sort();
    let out = tempfile::tempdir().unwrap();
    let mut server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE readings (id bigint NOT NULL, v double precision); \
             CREATE STREAM doubled AS SELECT id, v * 2 AS v2 FROM readings; \
             CREATE SINK export FROM doubled \
               WITH (connector = 'parquet', path = '{}', checkpoint_interval = '100ms')",
            out.path().display()
        ))
        .await
        .unwrap();
    let client = insert_killing(&mut server, client, BATCHES, ROWS, &kills, seed).await;
    let total = BATCHES * ROWS;
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        let got = exported(out.path()).await;
        if got.0 >= total || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        got,
        (total, total, 0),
        "rows, distinct ids, wrong values in the visible files (seed {seed})"
    );

    // The sink is listed, stores no rows, and refuses what it does not support yet.
    let shown = client.simple_query("SHOW SINKS").await.unwrap();
    let names: Vec<String> = shown
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("name").map(String::from),
            _ => None,
        })
        .collect();
    assert_eq!(names, vec!["export"]);
    let e = client.query("SELECT * FROM export", &[]).await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "0A000", "{}", error_text(&e));
    for (sql, expected) in [
        (
            "CREATE SINK k FROM doubled WITH (connector = 'kafka')",
            "\"bootstrap.servers\" is required",
        ),
        (
            "CREATE SINK k FROM doubled WITH (connector = 'parquet')",
            "needs path",
        ),
        (
            "CREATE SINK k FROM doubled WITH (connector = 'parquet', path = '/tmp/x', colour = 'red')",
            "colour",
        ),
        (
            "CREATE SINK k FROM (SELECT count(*) FROM readings) WITH (connector = 'parquet', path = '/tmp/x')",
            "aggregate",
        ),
    ] {
        let e = client.batch_execute(sql).await.unwrap_err();
        assert!(
            error_text(&e).contains(expected),
            "{sql}: {}",
            error_text(&e)
        );
    }
    let e = client
        .batch_execute("DROP STREAM doubled")
        .await
        .unwrap_err();
    assert_eq!(
        e.code().unwrap().code(),
        "2BP01",
        "the sink reads the stream"
    );
    client.batch_execute("DROP SINK export").await.unwrap();
    client.batch_execute("DROP STREAM doubled").await.unwrap();
    // The files stay: they are the user's data.
    assert_eq!(exported(out.path()).await.0, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_sink_to_s3_exports_every_row_exactly_once_across_a_sigkill() {
    let seed = crash_seed();
    println!("S3 sink crash test seed: {seed} (set EDDY_CRASH_SEED={seed} to replay)");
    let mut rng = Rng(seed);
    const BATCHES: i64 = 40;
    const ROWS: i64 = 50;
    let kill_at = 1 + rng.below(BATCHES as u64 - 2) as i64;
    let s3 = S3Server::start();
    s3.put("/exports", b"");
    let mut server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE readings (id bigint NOT NULL, v double precision); \
             CREATE STREAM doubled AS SELECT id, v * 2 AS v2 FROM readings; \
             CREATE SINK export FROM doubled WITH (connector = 'parquet', \
               path = 's3://exports/doubled', checkpoint_interval = '100ms', \
               aws_endpoint = 'http://127.0.0.1:{}', aws_allow_http = 'true', \
               aws_region = 'us-east-1', aws_access_key_id = 'k', \
               aws_secret_access_key = 'very-secret')",
            s3.port
        ))
        .await
        .unwrap();
    let client = insert_killing(&mut server, client, BATCHES, ROWS, &[kill_at], seed).await;
    let total = BATCHES * ROWS;
    let got = bucket_rows(&s3, "doubled/", total).await;
    assert_eq!(
        got,
        (total, total, 0),
        "rows, distinct ids, wrong values in the bucket (seed {seed})"
    );
    let row = client
        .query_one(
            "SELECT target, uploaded_files, last_error FROM eddy_catalog.sinks WHERE name = 'export'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "s3://exports/doubled");
    assert!(row.get::<_, i64>(1) > 0, "uploads are counted");
    assert_eq!(row.get::<_, Option<String>>(2), None);
    let e = client
        .batch_execute(&format!(
            "CREATE SINK bad FROM doubled WITH (connector = 'parquet', path = 's3://exports/x', \
             aws_endpoint = 'http://127.0.0.1:{}', colour = 'red')",
            s3.port
        ))
        .await
        .unwrap_err();
    assert!(
        error_text(&e).contains("unknown option \"colour\""),
        "{}",
        error_text(&e)
    );
}

async fn sink_epoch(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT checkpoint_epoch FROM eddy_catalog.sinks WHERE name = 'export'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_spools_files_and_everything_arrives_when_it_returns() {
    const BATCHES: i64 = 20;
    const ROWS: i64 = 50;
    let (s3, _server, client) = s3_export(
        "SELECT id, v * 2 AS v2 FROM readings",
        "outage",
        "checkpoint_interval = '100ms',",
    )
    .await;
    // The store stops answering (SIGSTOP: connections hang, as behind a dead link).
    s3.pause(true);
    // One batch per checkpoint, so that several files are committed while the store is away.
    for b in 0..BATCHES {
        client
            .batch_execute(&insert_sql(b * ROWS, ROWS))
            .await
            .unwrap();
        // The sink has the batch; then one more checkpoint closes the epoch holding it, so
        // the next batch lands in a later one (on a loaded machine the pipeline may lag).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rows: i64 = client
                .query_one(
                    "SELECT rows FROM eddy_catalog.sinks WHERE name = 'export'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if rows == (b + 1) * ROWS {
                break;
            }
            assert!(Instant::now() < deadline, "the sink did not take batch {b}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = sink_epoch(&client).await;
        while sink_epoch(&client).await <= before {
            assert!(
                Instant::now() < deadline,
                "no checkpoint while the store is away"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Ingestion and the pipeline go on; committed files wait in the spool.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = client
            .query_one(
                "SELECT rows, spooled_files, upload_lag_ms FROM eddy_catalog.sinks WHERE name = 'export'",
                &[],
            )
            .await
            .unwrap();
        let (rows, spooled, lag): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if rows == BATCHES * ROWS && spooled >= BATCHES - 1 {
            // The first file has waited at least as long as the later checkpoints took.
            assert!(lag >= 100 * (BATCHES - 2), "upload lag {lag} ms");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink did not keep going while the store was away: {rows} rows, {spooled} spooled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = client
        .query_one("SELECT count(*) FROM readings", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), BATCHES * ROWS, "queries still answer");
    s3.pause(false);
    let total = BATCHES * ROWS;
    let got = bucket_rows(&s3, "outage/", total).await;
    assert_eq!(
        got,
        (total, total, 0),
        "everything arrived once the store returned"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = client
            .query_one(
                "SELECT spooled_files, upload_lag_ms FROM eddy_catalog.sinks WHERE name = 'export'",
                &[],
            )
            .await
            .unwrap();
        let (spooled, lag): (i64, i64) = (row.get(0), row.get(1));
        if (spooled, lag) == (0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spool empties: {spooled} files, lag {lag} ms"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_reaches_its_rollover_size_is_published_without_waiting_for_the_interval() {
    let out = tempfile::tempdir().unwrap();
    let server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE readings (id bigint NOT NULL, v double precision); \
             CREATE SINK export FROM (SELECT id, v * 2 AS v2 FROM readings) WITH ( \
               connector = 'parquet', path = '{}', checkpoint_interval = '1h', \
               rollover_size = '4KB')",
            out.path().display()
        ))
        .await
        .unwrap();
    let e = client
        .batch_execute(
            "CREATE SINK bad FROM readings WITH (connector = 'parquet', path = '/tmp/x', \
             rollover_size = 'huge')",
        )
        .await
        .unwrap_err();
    assert!(
        error_text(&e).contains("rollover_size"),
        "{}",
        error_text(&e)
    );
    let files = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.starts_with("part-") && name.ends_with(".parquet")
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut b = 0;
    // With an hour between timed checkpoints, files appear only by size.
    while files(out.path()) < 3 {
        assert!(Instant::now() < deadline, "no file rolled over by size");
        client
            .batch_execute(&insert_sql(b * 500, 500))
            .await
            .unwrap();
        b += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (rows, distinct, wrong) = exported(out.path()).await;
    assert!(
        rows > 0 && rows == distinct && wrong == 0,
        "{rows} {distinct} {wrong}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_by_writes_hive_directories_by_event_day_and_column() {
    let out = tempfile::tempdir().unwrap();
    let server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE readings (id bigint NOT NULL, machine text, ts timestamptz); \
             CREATE SINK export FROM readings WITH (connector = 'parquet', path = '{}', \
               partition_by = 'hour(ts), machine', checkpoint_interval = '100ms')",
            out.path().display()
        ))
        .await
        .unwrap();
    // 300 rows over 3 machines and 5 hours of 2026-11-25/26, one machine NULL now and then.
    let values: Vec<String> = (0..300)
        .map(|i| {
            let machine = if i % 50 == 0 {
                "NULL".to_string()
            } else {
                format!("'m{}'", i % 3)
            };
            format!(
                "({i}, {machine}, TIMESTAMPTZ '2026-11-25 22:00:00+00' + INTERVAL '{} minutes')",
                i
            )
        })
        .collect();
    insert_rows(&client, "readings", &values).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let files = loop {
        let files: Vec<std::path::PathBuf> = walk(out.path())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        let mut rows = 0;
        for f in &files {
            rows += file_rows(f, "SELECT count(*) FROM t").await[0].0;
        }
        if rows >= 300 || Instant::now() > deadline {
            assert_eq!(rows, 300, "every row in one file");
            break files;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut dirs = std::collections::BTreeSet::new();
    for f in &files {
        let rel = f.parent().unwrap().strip_prefix(out.path()).unwrap();
        let rel = rel.to_str().unwrap().to_string();
        dirs.insert(rel.clone());
        let parts: Vec<&str> = rel.split('/').collect();
        assert_eq!(parts.len(), 3, "{rel}");
        // Every row of the file is in the file's hour and machine.
        let rows = file_rows(
            f,
            "SELECT count(*), min(to_char(ts, '%Y-%m-%d/%H')), max(to_char(ts, '%Y-%m-%d/%H')) FROM t",
        )
        .await;
        let (_, lo, hi) = &rows[0];
        assert_eq!(lo, hi, "one hour per file: {rel}");
        let (day, hour) = lo.split_once('/').unwrap();
        assert_eq!(parts[0], format!("dt={day}"));
        assert_eq!(parts[1], format!("hour={hour}"));
        assert!(
            parts[2].starts_with("machine=m") || parts[2] == "machine=__HIVE_DEFAULT_PARTITION__",
            "{rel}"
        );
        let columns = file_columns(f).await;
        assert_eq!(
            columns,
            vec!["id", "ts"],
            "the partition column leaves the file"
        );
    }
    assert!(
        dirs.contains("dt=2026-11-25/hour=22/machine=m1"),
        "{dirs:?}"
    );
    assert!(
        dirs.contains("dt=2026-11-26/hour=02/machine=m0"),
        "{dirs:?}"
    );
    let e = client
        .batch_execute(&format!(
            "CREATE SINK bad FROM readings WITH (connector = 'parquet', path = '{}', partition_by = 'hour(id)')",
            out.path().display()
        ))
        .await
        .unwrap_err();
    assert!(error_text(&e).contains("timestamp"), "{}", error_text(&e));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `sql` over one Parquet file registered as `t`: (count, text, text) of each row.
async fn file_rows(file: &Path, sql: &str) -> Vec<(i64, String, String)> {
    let ctx = SessionContext::new();
    ctx.register_parquet("t", file.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let text = |c: usize| {
                if c < b.num_columns() {
                    let t = datafusion::arrow::compute::cast(
                        b.column(c),
                        &datafusion::arrow::datatypes::DataType::Utf8,
                    )
                    .unwrap();
                    t.as_string::<i32>().value(i).to_string()
                } else {
                    String::new()
                }
            };
            out.push((
                b.column(0).as_primitive::<Int64Type>().value(i),
                text(1),
                text(2),
            ));
        }
    }
    out
}

async fn file_columns(file: &Path) -> Vec<String> {
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(file.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    df.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// `CREATE SOURCE readings` and a sink `name` of `query` to `s3://exports/<prefix>` on `s3`,
/// with `extra` options.
fn s3_sink_sql(s3: &S3Server, name: &str, query: &str, prefix: &str, extra: &str) -> String {
    format!(
        "CREATE SINK {name} FROM ({query}) WITH ( \
           connector = 'parquet', path = 's3://exports/{prefix}', {extra} \
           aws_endpoint = 'http://127.0.0.1:{}', aws_allow_http = 'true', \
           aws_region = 'us-east-1', aws_access_key_id = 'k', aws_secret_access_key = 's')",
        s3.port
    )
}

/// moto with a bucket `exports`, a server, and a source `readings (id, v)` whose `query` a
/// sink `export` writes to `s3://exports/<prefix>` with `extra` options.
async fn s3_export(
    query: &str,
    prefix: &str,
    extra: &str,
) -> (S3Server, Server, tokio_postgres::Client) {
    let s3 = S3Server::start();
    s3.put("/exports", b"");
    let server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE readings (id bigint NOT NULL, v double precision); {}",
            s3_sink_sql(&s3, "export", query, prefix, extra)
        ))
        .await
        .unwrap();
    (s3, server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_holds_the_sink_back_while_ingestion_goes_on() {
    const BATCHES: i64 = 10;
    const ROWS: i64 = 50;
    let (s3, _server, client) = s3_export(
        "SELECT id, v * 2 AS v2 FROM readings",
        "bounded",
        "checkpoint_interval = '100ms', spool_limit = '1KB',",
    )
    .await;
    s3.pause(true);
    for b in 0..BATCHES {
        client
            .batch_execute(&insert_sql(b * ROWS, ROWS))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let row = client
        .query_one("SELECT count(*) FROM readings", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        BATCHES * ROWS,
        "ingestion goes on into the source's log"
    );
    let row = client
        .query_one(
            "SELECT spooled_files, checkpoint_epoch FROM eddy_catalog.sinks WHERE name = 'export'",
            &[],
        )
        .await
        .unwrap();
    let (spooled, epoch): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        spooled <= 1,
        "the spool stops at its limit ({spooled} files, epoch {epoch})"
    );
    s3.pause(false);
    let total = BATCHES * ROWS;
    let got = bucket_rows(&s3, "bounded/", total).await;
    assert_eq!(got, (total, total, 0), "everything arrived afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_uploads_in_parts() {
    // About 400 000 rows of incompressible text: one file of well over 5 MB.
    const TOTAL: i64 = 400_000;
    let (s3, _server, client) = s3_export(
        "SELECT id, v * 2 AS v2, md5(CAST(id AS text)) || md5(CAST(v AS text)) AS noise FROM readings",
        "large",
        "checkpoint_interval = '10s', upload_part_size = '5MB',",
    )
    .await;
    client
        .batch_execute(&format!(
            "INSERT INTO readings SELECT value AS id, value AS v FROM generate_series(0, {})",
            TOTAL - 1
        ))
        .await
        .unwrap();
    let got = bucket_rows(&s3, "large/", TOTAL).await;
    assert_eq!(
        got,
        (TOTAL, TOTAL, 0),
        "every row, in a file uploaded in parts"
    );
    let dir = tempfile::tempdir().unwrap();
    s3.download("exports", "large/", dir.path());
    let biggest = walk(dir.path())
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .max()
        .unwrap();
    assert!(biggest > 5 << 20, "a file over one part: {biggest} bytes");
    let e = client
        .batch_execute(&s3_sink_sql(
            &s3,
            "bad",
            "SELECT id FROM readings",
            "x",
            "upload_part_size = '1MB',",
        ))
        .await
        .unwrap_err();
    assert!(error_text(&e).contains("5MB"), "{}", error_text(&e));
}
