//! `eddy bench`: Nexmark queries through the streaming engine, beside the same query as a
//! DataFusion batch job over the same events (shared/NEXMARK.md, "How to report"), and the
//! JSON decoding rate of the Kafka source's decoder.
//!
//! Streaming runs use a fresh data dir, the in-process Nexmark generator, checkpoints on, and
//! the engine's real pipeline (source thread → DataFusion stateless stage → aggregate → sink).
//! Streams run with `retention_rows = 0` (rows are produced and counted but not stored, like
//! Flink's blackhole sink); materialized views write their rows to RocksDB. CPU time is the
//! whole process's user + system time (getrusage).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use eddy_connectors::format::{EventDecoder, Format, RawEvent};
use eddy_connectors::nexmark::{Nexmark, Table, table_schema};
use eddy_connectors::{Options, Poll, Positions, Source, SourceSpec};
use eddy_sql::stream::checkpoint::{record_key, recover};
use eddy_sql::{Engine, Session};
use futures::StreamExt;

/// The benchmark queries, in Eddy's dialect (the same text runs as the batch job).
pub fn query(name: &str) -> Result<(bool, &'static str)> {
    // (is a materialized view, SELECT)
    Ok(match name {
        "q0" => (
            false,
            "SELECT auction, bidder, price, date_time, extra FROM bid",
        ),
        "q1" => (
            false,
            "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid",
        ),
        "q2" => (
            false,
            "SELECT auction, price FROM bid WHERE auction % 123 = 0",
        ),
        "q14" => (
            false,
            "SELECT auction, bidder, 0.908 * price AS price, \
               CASE WHEN extract(hour FROM date_time) >= 8 AND extract(hour FROM date_time) <= 18 THEN 'dayTime' \
                    WHEN extract(hour FROM date_time) <= 6 OR extract(hour FROM date_time) >= 20 THEN 'nightTime' \
                    ELSE 'otherTime' END AS bid_time_type, \
               date_time, extra, length(extra) - length(replace(extra, 'c', '')) AS c_counts \
             FROM bid WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000",
        ),
        "q15" => (
            true,
            "SELECT date_trunc('day', date_time) AS day, count(*) AS total_bids, \
               count(*) FILTER (WHERE price < 10000) AS rank1_bids, \
               count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids, \
               count(*) FILTER (WHERE price >= 1000000) AS rank3_bids, \
               count(DISTINCT bidder) AS total_bidders, \
               count(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders, \
               count(DISTINCT bidder) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bidders, \
               count(DISTINCT bidder) FILTER (WHERE price >= 1000000) AS rank3_bidders, \
               count(DISTINCT auction) AS total_auctions, \
               count(DISTINCT auction) FILTER (WHERE price < 10000) AS rank1_auctions, \
               count(DISTINCT auction) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_auctions, \
               count(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions \
             FROM bid GROUP BY date_trunc('day', date_time)",
        ),
        "q17" => (
            true,
            "SELECT auction, date_trunc('day', date_time) AS day, count(*) AS total_bids, \
               count(*) FILTER (WHERE price < 10000) AS rank1_bids, \
               count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids, \
               count(*) FILTER (WHERE price >= 1000000) AS rank3_bids, \
               min(price) AS min_price, max(price) AS max_price, avg(price) AS avg_price, \
               sum(price) AS sum_price \
             FROM bid GROUP BY auction, date_trunc('day', date_time)",
        ),
        "q22" => (
            false,
            "SELECT auction, bidder, price, channel, split_part(url, '/', 4) AS dir1, \
               split_part(url, '/', 5) AS dir2, split_part(url, '/', 6) AS dir3 FROM bid",
        ),
        // Joins of two sources: rows within `JOIN_TTL` of event time of each other join (at
        // the standard rate, 10 M events span one second of event time, so every pair does,
        // as in the batch join).
        "q3" => (
            false,
            "SELECT p.name, p.city, p.state, a.id FROM auction a JOIN person p ON a.seller = p.id \
             WHERE a.category = 10 AND (p.state = 'OR' OR p.state = 'ID' OR p.state = 'CA')",
        ),
        "q20" => (
            false,
            "SELECT b.auction, b.bidder, b.price, b.channel, b.url, b.date_time AS bid_time, \
               a.item_name, a.description, a.initial_bid, a.reserve, a.date_time AS auction_time, \
               a.expires, a.seller, a.category \
             FROM bid b JOIN auction a ON b.auction = a.id WHERE a.category = 10",
        ),
        // Hot items: per 10-second window sliding by 2 seconds, the auctions with the most
        // bids (rank 1, so ties are all kept), emitted when each window closes. The HOP
        // windows are spelled out for the batch job; the stream runs `streaming_text`.
        // `q5_windows`: the stream runs this text too, a group per window (no panes).
        "q5" | "q5_windows" => (
            true,
            "SELECT window_start, auction, num FROM ( \
               SELECT window_start, auction, count(*) AS num, \
                 rank() OVER (PARTITION BY window_start ORDER BY count(*) DESC) AS r \
               FROM (SELECT auction, ws AS window_start, ws + INTERVAL '10 seconds' AS window_end \
                 FROM (SELECT auction, unnest(generate_series( \
                   date_bin(INTERVAL '2 seconds', date_time) - INTERVAL '8 seconds', \
                   date_bin(INTERVAL '2 seconds', date_time), INTERVAL '2 seconds')) AS ws \
                   FROM bid) AS hop) AS windows \
               GROUP BY window_start, window_end, auction) AS ranked \
             WHERE r = 1",
        ),
        // New people who opened an auction in the 10-second window they registered in: a
        // window join of person and auction (both sides in the same TUMBLE window, spelled
        // out as Eddy's TUMBLE rewrites it), one row per person and window, written when the
        // window closes.
        "q8" => (
            true,
            "SELECT p.id, p.name, p.window_start AS starttime FROM ( \
               SELECT id, name, date_bin(INTERVAL '10 seconds', date_time) AS window_start \
               FROM person) AS p \
             JOIN (SELECT seller, date_bin(INTERVAL '10 seconds', date_time) AS window_start \
               FROM auction) AS a \
             ON p.id = a.seller AND p.window_start = a.window_start \
             GROUP BY p.id, p.name, p.window_start",
        ),
        // Highest bid per 10-second window: the bids whose price is the window's maximum,
        // written as rank 1 by price within each window (the same rows as the join of bids
        // with each window's max price), updated as higher bids arrive.
        "q7" => (
            true,
            "SELECT auction, price, bidder, date_time FROM ( \
               SELECT auction, price, bidder, date_time, rank() OVER ( \
                 PARTITION BY date_bin(INTERVAL '10 seconds', date_time) ORDER BY price DESC) AS r \
               FROM bid) AS ranked \
             WHERE r = 1",
        ),
        // Winning bids: each auction's highest bid within its lifetime (an interval join kept
        // `JOIN_TTL` of event time, the lifetime a condition on the joined rows), the first
        // such bid on ties, ranked by a top-N over the join's rows.
        "q9" => (
            true,
            "SELECT id, item_name, initial_bid, reserve, auction_time, expires, seller, category, \
               bidder, price, bid_time FROM ( \
               SELECT a.id, a.item_name, a.initial_bid, a.reserve, a.date_time AS auction_time, \
                 a.expires, a.seller, a.category, b.bidder, b.price, b.date_time AS bid_time, \
                 row_number() OVER (PARTITION BY a.id ORDER BY b.price DESC, b.date_time) AS rownum \
               FROM auction a JOIN bid b \
                 ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires) AS joined \
             WHERE rownum <= 1",
        ),
        // Eddy's own (shared/NEXMARK.md): per auction, a bid, two or more rising bids, then a
        // lower one, within 10 seconds.
        "cep1" => (
            false,
            "SELECT * FROM bid MATCH_RECOGNIZE (PARTITION BY auction ORDER BY date_time \
               MEASURES FIRST(A.date_time) AS started, LAST(B.price) AS peak, \
                 COUNT(B.price) AS rises \
               ONE ROW PER MATCH AFTER MATCH SKIP PAST LAST ROW \
               PATTERN (A B{2,} C) WITHIN INTERVAL '10' SECOND \
               DEFINE B AS B.price > PREV(B.price), C AS C.price < PREV(C.price))",
        ),
        other => {
            bail!(
                "unknown query {other} (expected q0, q1, q2, q3, q4, q5, q5_windows, q7, q8, q9, \
                 q14, q15, q17, q20, q22 or cep1)"
            )
        }
    })
}

/// The streaming text of queries whose batch job spells out what Eddy's window functions
/// do: q5's HOP windows (as `generate_series`, the windows an event falls in, for the batch
/// job; as `HOP`, which Eddy aggregates in panes, for the stream).
pub fn streaming_text(name: &str) -> Option<&'static str> {
    match name {
        "q5" => Some(
            "SELECT window_start, auction, num FROM ( \
               SELECT window_start, auction, count(*) AS num, \
                 rank() OVER (PARTITION BY window_start ORDER BY count(*) DESC) AS r \
               FROM HOP(bid, date_time, INTERVAL '2 seconds', INTERVAL '10 seconds') \
               GROUP BY window_start, window_end, auction) AS ranked \
             WHERE r = 1",
        ),
        _ => None,
    }
}

/// Queries written as a view over a view: (the first view's SELECT, the SELECT over it,
/// which reads the first as `winning`, and the whole query as one batch job).
pub fn stacked(name: &str) -> Option<(&'static str, &'static str, &'static str)> {
    match name {
        // Average closing price per category: the highest bid of each auction within its
        // lifetime (an interval join kept `JOIN_TTL` of event time, the lifetime a condition
        // on the joined rows), then the average of those per category, as a view over the
        // view whose maxima keep rising.
        "q4" => Some((
            "SELECT a.id, a.category, max(b.price) AS final FROM auction a JOIN bid b \
               ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires \
             GROUP BY a.id, a.category",
            "SELECT category, avg(final) AS avg_final FROM winning GROUP BY category",
            "SELECT category, avg(final) AS avg_final FROM ( \
               SELECT a.id, a.category, max(b.price) AS final FROM auction a JOIN bid b \
                 ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires \
               GROUP BY a.id, a.category) AS winning \
             GROUP BY category",
        )),
        _ => None,
    }
}

/// How long joined sources keep rows (`state_ttl`) in the join queries.
const JOIN_TTL: &str = "10s";

/// The Nexmark tables a query reads.
fn tables(select: &str) -> Vec<Table> {
    let mut tables = Vec::new();
    for (name, table) in [
        ("bid", Table::Bid),
        ("auction", Table::Auction),
        ("person", Table::Person),
    ] {
        if select.contains(&format!("FROM {name} "))
            || select.contains(&format!("JOIN {name} "))
            || select.contains(&format!("FROM {name})"))
            || select.contains(&format!("HOP({name},"))
            || select.ends_with(&format!("FROM {name}"))
        {
            tables.push(table);
        }
    }
    tables
}

fn table_name(table: Table) -> &'static str {
    match table {
        Table::Bid => "bid",
        Table::Auction => "auction",
        Table::Person => "person",
    }
}

/// User + system CPU seconds of this process so far.
pub mod predict;
pub mod sink;

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

pub struct NexmarkArgs {
    pub query: String,
    pub events: u64,
    pub rate: u64,
    pub checkpoint_interval_ms: u64,
    /// Partitions of keyed operators (None: the server's default, the machine's cores).
    pub parallelism: Option<usize>,
}

impl NexmarkArgs {
    /// The WITH options every pipeline of the run gets.
    fn options(&self) -> String {
        let mut o = format!("checkpoint_interval = '{}ms'", self.checkpoint_interval_ms);
        if let Some(n) = self.parallelism {
            o.push_str(&format!(", parallelism = {n}"));
        }
        o
    }
}

async fn run_sql(session: &Session, sql: &str) -> Result<()> {
    for statement in Session::parse(sql)? {
        match session.run(statement).await? {
            eddy_sql::QueryOutput::Command(_) | eddy_sql::QueryOutput::CopyIn { .. } => {}
            eddy_sql::QueryOutput::Rows { mut stream, .. }
            | eddy_sql::QueryOutput::CopyOut { mut stream, .. } => {
                while let Some(b) = stream.next().await {
                    b?;
                }
            }
        }
    }
    Ok(())
}

/// Runs the query as a continuous query until the source is exhausted and its end is
/// checkpointed; returns (CPU seconds, wall seconds).
async fn streaming(args: &NexmarkArgs, mv: bool, select: &str) -> Result<(f64, f64)> {
    let tables = tables(select);
    // Joins without windows keep rows `JOIN_TTL`; a window join is bounded by its windows.
    let windowed = select.contains("window_start");
    let ttl = match tables.len() {
        2 if !windowed => format!(", state_ttl = '{JOIN_TTL}'"),
        _ => String::new(),
    };
    let ddl = if mv {
        format!(
            "CREATE MATERIALIZED VIEW {} WITH ({}{ttl}) AS {select}",
            args.query,
            args.options()
        )
    } else {
        format!(
            "CREATE STREAM {} WITH ({}, retention_rows = 0{ttl}) AS {select}",
            args.query,
            args.options()
        )
    };
    // Windows close (and top-N per window is emitted, patterns are matched) as the watermark
    // passes them.
    let watermark = tables.len() > 1 || windowed || select.contains("MATCH_RECOGNIZE");
    run_pipeline(
        args.events,
        args.rate,
        &tables,
        &args.query,
        &ddl,
        watermark,
        None,
    )
    .await
}

/// A query stacked as two views (see [`stacked`]): `winning` over the sources, the query's view
/// over `winning`; runs until the second has read all of the first's changes.
async fn streaming_stacked(args: &NexmarkArgs, first: &str, second: &str) -> Result<(f64, f64)> {
    let tables = tables(first);
    let ddl = format!(
        "CREATE MATERIALIZED VIEW winning WITH ({}, state_ttl = '{JOIN_TTL}') AS {first}",
        args.options()
    );
    let over = format!(
        "CREATE MATERIALIZED VIEW {} WITH ({}) AS {second}",
        args.query,
        args.options()
    );
    run_pipeline(
        args.events,
        args.rate,
        &tables,
        "winning",
        &ddl,
        true,
        Some((args.query.as_str(), over.as_str())),
    )
    .await
}

/// Creates a Nexmark source per table of `events` events in a fresh engine (with Flink's
/// 4-second watermark when `watermark`: joins and windows), then the pipeline `name` with
/// `ddl` (and the view `reader` over it, if given), and runs it until every source's end is
/// checkpointed (and the reader has read all of its changes); returns (CPU seconds, wall
/// seconds) from the pipeline's creation.
async fn run_pipeline(
    events: u64,
    rate: u64,
    tables: &[Table],
    name: &str,
    ddl: &str,
    watermark: bool,
    reader: Option<(&str, &str)>,
) -> Result<(f64, f64)> {
    // A pipeline of an earlier run may still hold its engine's files for a moment.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("eddy-bench-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let engine = Engine::open(&dir).context("open bench data dir")?;
    engine.start_streams(tokio::runtime::Handle::current());
    let session = engine.new_session("eddy", "eddy");
    for table in tables {
        let table = table_name(*table);
        let watermark = match watermark {
            false => "",
            true => "(WATERMARK FOR date_time AS date_time - INTERVAL '4 seconds') ",
        };
        run_sql(
            &session,
            &format!(
                "CREATE SOURCE {table} {watermark}WITH (connector = 'nexmark', table = '{table}', \
                 events = '{events}', event_rate = '{rate}')"
            ),
        )
        .await?;
    }
    let cpu0 = cpu_seconds();
    let wall0 = Instant::now();
    run_sql(&session, ddl).await?;
    if let Some((_, over)) = reader {
        run_sql(&session, over).await?;
    }
    let id = engine
        .catalog()
        .table("public", name)
        .context("pipeline created")?
        .id;
    loop {
        let record = recover(engine.kv().get(&record_key(id))?.as_deref())?;
        let done = (0..tables.len())
            .all(|i| record.input(i).positions.get(&0).copied().unwrap_or(0) as u64 >= events);
        if done && reader.is_none() {
            break;
        }
        if done && let Some((reader, _)) = reader {
            // The reader's position in the view's changelog, against the view's last entry.
            let reader_id = engine
                .catalog()
                .table("public", reader)
                .context("reader created")?
                .id;
            let read = recover(engine.kv().get(&record_key(reader_id))?.as_deref())?;
            let position = |p: i32| read.positions.get(&p).copied().unwrap_or(0) as u64;
            if position(1) == 1 && position(0) >= record.next_seq {
                break;
            }
            if let Some(e) = engine
                .streams
                .metrics(reader_id)
                .and_then(|m| m.error.lock().clone())
            {
                bail!("pipeline {reader} failed: {e}");
            }
        }
        if let Some(e) = engine
            .streams
            .metrics(id)
            .and_then(|m| m.error.lock().clone())
        {
            bail!("pipeline failed: {e}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    for name in std::iter::once(name).chain(reader.map(|r| r.0)) {
        let id = engine.catalog().table("public", name).map(|t| t.id);
        if let Some(m) = id.and_then(|id| engine.streams.metrics(id)) {
            let rows = m.rows.load(std::sync::atomic::Ordering::Relaxed);
            println!("{name}: the pipeline wrote {rows} rows");
        }
        let view = engine
            .catalog()
            .table("public", name)
            .is_some_and(|t| matches!(t.kind, eddy_sql::catalog::TableKind::MaterializedView(_)));
        if view {
            let held = view_rows(&session, name).await?;
            println!("{name}: the view holds {held} rows");
        }
    }
    // Stop the pipeline, so that it costs nothing while later runs are measured.
    for table in tables {
        run_sql(
            &session,
            &format!("DROP SOURCE {} CASCADE", table_name(*table)),
        )
        .await?;
    }
    drop(session);
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((cpu, wall))
}

/// How many rows the materialized view `name` holds.
async fn view_rows(session: &Session, name: &str) -> Result<u64> {
    let mut statements = Session::parse(&format!("SELECT count(*) FROM {name}"))?;
    let mut held = 0u64;
    if let eddy_sql::QueryOutput::Rows { mut stream, .. } =
        session.run(statements.remove(0)).await?
    {
        while let Some(b) = stream.next().await {
            let b = b?;
            let counts = datafusion::arrow::compute::cast(
                b.column(0),
                &datafusion::arrow::datatypes::DataType::UInt64,
            )?;
            held += counts
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                .map_or(0, |a| a.iter().flatten().sum());
        }
    }
    Ok(held)
}

/// The same events in memory as Arrow batches (bids).
fn generate(events: u64, rate: u64) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
    generate_table(Table::Bid, events, rate)
}

fn generate_table(
    table: Table,
    events: u64,
    rate: u64,
) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
    let mut batches = Vec::new();
    generate_with(table, events, rate, |b| batches.push(b))?;
    Ok(batches)
}

fn generate_with(
    table: Table,
    events: u64,
    rate: u64,
    mut each: impl FnMut(datafusion::arrow::array::RecordBatch),
) -> Result<()> {
    let spec = SourceSpec {
        name: table_name(table).into(),
        schema: table_schema(table),
        options: Options::new([
            ("events".to_string(), events.to_string()),
            ("event_rate".to_string(), rate.to_string()),
            ("table".to_string(), table_name(table).to_string()),
        ])?,
        created_at_ms: 0,
    };
    let mut source = Nexmark::open(&spec, &Positions::new())?;
    loop {
        match source.poll(8192, Duration::ZERO)? {
            Poll::Batch(b) => each(b.rows),
            Poll::Idle => continue,
            Poll::Finished => return Ok(()),
        }
    }
}

/// The query as a DataFusion batch job over each table's batches; returns CPU seconds.
async fn batch(
    select: &str,
    tables: Vec<(Table, Vec<datafusion::arrow::array::RecordBatch>)>,
) -> Result<(f64, u64)> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    for (table, batches) in tables {
        let schema = batches[0].schema();
        let mut partitions = vec![Vec::new(), Vec::new()];
        for (i, b) in batches.into_iter().enumerate() {
            partitions[i % 2].push(b);
        }
        ctx.register_table(
            table_name(table),
            Arc::new(MemTable::try_new(schema, partitions)?),
        )?;
    }
    let cpu0 = cpu_seconds();
    let mut stream = ctx.sql(select).await?.execute_stream().await?;
    let mut rows = 0u64;
    while let Some(b) = stream.next().await {
        rows += b?.num_rows() as u64;
    }
    Ok((cpu_seconds() - cpu0, rows))
}

pub async fn nexmark(args: NexmarkArgs) -> Result<()> {
    let stacked = stacked(&args.query);
    let (mv, select) = match stacked {
        Some((_, _, batch)) => (true, batch),
        None => query(&args.query)?,
    };
    println!(
        "nexmark {}: {} events, event rate {}/s, checkpoint interval {} ms, parallelism {}, revision {}",
        args.query,
        args.events,
        args.rate,
        args.checkpoint_interval_ms,
        args.parallelism
            .map_or_else(|| "default (cores)".to_string(), |n| n.to_string()),
        option_env!("EDDY_GIT_REVISION").unwrap_or("unknown")
    );
    let (cpu, wall) = match stacked {
        Some((first, second, _)) => streaming_stacked(&args, first, second).await?,
        None => {
            let text = streaming_text(&args.query).unwrap_or(select);
            streaming(&args, mv, text).await?
        }
    };
    // What producing the events costs by itself (batches dropped as they come).
    let generate_cpu0 = cpu_seconds();
    for table in tables(select) {
        generate_with(table, args.events, args.rate, |_| {})?;
    }
    let generate_cpu = cpu_seconds() - generate_cpu0;
    let data = tables(select)
        .into_iter()
        .map(|t| Ok((t, generate_table(t, args.events, args.rate)?)))
        .collect::<Result<Vec<_>>>()?;
    let (batch_cpu, batch_rows) = match select.contains("MATCH_RECOGNIZE") {
        // DataFusion has no MATCH_RECOGNIZE: Eddy's batch matcher, and the reference.
        true => cep_batch(select, data)?,
        false => batch(select, data).await?,
    };
    let events = args.events as f64;
    println!(
        "streaming: cpu {cpu:.2} s (generating the events alone: {generate_cpu:.2} s), wall {wall:.2} s; \
         batch over the generated events: cpu {batch_cpu:.2} s, {batch_rows} result rows"
    );
    println!(
        "query={} events={} events_per_cpu_second={:.0} wall_events_per_second={:.0} batch_events_per_cpu_second={:.0}",
        args.query,
        args.events,
        events / cpu,
        events / wall,
        events / batch_cpu
    );
    Ok(())
}

/// A MATCH_RECOGNIZE query over the events in memory: Eddy's batch matcher over all of them
/// (returns its CPU seconds and matches), and the reference matcher (backtracking, every
/// DEFINE evaluated per row and path) over the first million, reported beside it.
fn cep_batch(
    select: &str,
    tables: Vec<(Table, Vec<datafusion::arrow::array::RecordBatch>)>,
) -> Result<(f64, u64)> {
    use eddy_sql::cep::run::{MatchPlan, batch_matches, reference_matches};
    let (_, batches) = tables.into_iter().next().context("a table")?;
    let body = select
        .split_once("MATCH_RECOGNIZE (")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .context("a MATCH_RECOGNIZE clause")?;
    let clause = eddy_sql::cep::syntax::parse_clause(body)?;
    let state = SessionContext::new().state();
    let plan = Arc::new(MatchPlan::new(&clause, batches[0].schema(), &state)?);
    let cpu0 = cpu_seconds();
    let (_, found) = batch_matches(plan.clone(), &batches)?;
    let cpu = cpu_seconds() - cpu0;
    let mut prefix = Vec::new();
    let mut n = 0;
    for b in &batches {
        if n >= 1_000_000 {
            break;
        }
        n += b.num_rows();
        prefix.push(b.clone());
    }
    let cpu0 = cpu_seconds();
    let slow = reference_matches(plan.clone(), &prefix)?;
    let slow_cpu = cpu_seconds() - cpu0;
    let (_, fast_prefix) = batch_matches(plan, &prefix)?;
    println!(
        "reference matcher: {n} events in {slow_cpu:.2} s cpu ({:.0} events/cpu-s), {} matches; \
         the batch matcher finds {} over the same events ({})",
        n as f64 / slow_cpu,
        slow.len(),
        fast_prefix.len(),
        if fast_prefix.len() == slow.len() {
            "equal counts"
        } else {
            "COUNTS DIFFER"
        }
    );
    Ok((cpu, found.len() as u64))
}

/// Decodes `rows` Nexmark bids as JSON messages with the Kafka source's decoder.
pub fn json_decode(rows: u64) -> Result<()> {
    let batches = generate(rows * 50 / 46 + 1, 10_000_000)?;
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for b in &batches {
        let mut w = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
        w.write(b)?;
        w.finish()?;
        let buf = w.into_inner();
        lines.extend(
            buf.split(|c| *c == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| l.to_vec()),
        );
    }
    lines.truncate(rows as usize);
    let decoder = EventDecoder::new(table_schema(Table::Bid), Format::Json, 1 << 20)?;
    let cpu0 = cpu_seconds();
    let wall0 = Instant::now();
    let mut decoded = 0;
    for (i, chunk) in lines.chunks(8192).enumerate() {
        let events: Vec<RawEvent<'_>> = chunk
            .iter()
            .enumerate()
            .map(|(j, l)| RawEvent {
                partition: 0,
                offset: (i * 8192 + j) as i64,
                key: None,
                timestamp_ms: None,
                payload: l,
            })
            .collect();
        let out = decoder.decode(&events)?;
        if !out.dead_letters.is_empty() {
            bail!("unexpected dead letter: {:?}", out.dead_letters[0].error);
        }
        decoded += out.rows.num_rows();
    }
    let cpu = cpu_seconds() - cpu0;
    println!(
        "json_decode rows={decoded} rows_per_cpu_second={:.0} wall_rows_per_second={:.0}",
        decoded as f64 / cpu,
        decoded as f64 / wall0.elapsed().as_secs_f64()
    );
    Ok(())
}
