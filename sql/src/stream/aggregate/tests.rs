//! The aggregate against DataFusion's batch aggregation of the same events, restored from
//! every checkpoint, with its groups in memory and with every group read back from the state
//! table after each barrier.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::Aggregator;
use crate::Engine;
use crate::catalog::{DEFAULT_SCHEMA, TableDef};
use crate::keys;
use crate::stream::exchange::{Partitioned, Router};
use crate::stream::harness::run_sql as run;
use crate::stream::harness::{
    Chain, EV_SOURCE, Factory, Harness, Input, PIPELINE, Rng, cell, check_rescales, check_restores,
    ev_events, ev_schema, ev_script, sorted_rows,
};
use crate::stream::manager::AGGREGATE_OPERATOR;
use crate::stream::operators::per_window::PerWindow;
use crate::stream::pipeline::{AggregateOp, Message, Operator};
use crate::stream::plan::{self, PipelinePlan};
use crate::stream::view::{DELETED_COLUMN, ViewWriter};

/// Plans `view_sql` over the push source `ev (k int, v bigint, ts timestamp)`.
async fn planned(view_sql: &str) -> (Arc<PipelinePlan>, Arc<TableDef>) {
    planned_as(view_sql, None).await
}

/// [`planned`], with HOP windows in panes or not (`None`: as the view was created).
async fn planned_as(view_sql: &str, panes: Option<bool>) -> (Arc<PipelinePlan>, Arc<TableDef>) {
    let engine = Engine::in_memory();
    let session = engine.new_session("eddy", "eddy");
    run(&session, EV_SOURCE).await;
    run(
        &session,
        &format!("CREATE MATERIALIZED VIEW mv AS {view_sql}"),
    )
    .await;
    let catalog = engine.catalog();
    let def = catalog.table(DEFAULT_SCHEMA, "mv").expect("view");
    let info = def.kind.query().expect("query");
    let query = plan::parse_query(&info.sql).unwrap();
    let plan = plan::plan(&catalog, &query, &[]).await.unwrap();
    // As the manager runs it: HOP windows in panes when the view was created so.
    let plan = match panes.unwrap_or(info.panes) {
        true => plan.with_panes().unwrap(),
        false => plan,
    };
    (Arc::new(plan), def)
}

/// The aggregate in `partitions` (run one after the other, as the exchange would feed them),
/// followed by the plan above it if it has one.
fn factory(
    plan: &Arc<PipelinePlan>,
    def: &Arc<TableDef>,
    emit_on_close: bool,
    sink: bool,
    budget: usize,
    partitions: usize,
) -> Factory {
    let agg = plan.aggregate.clone().expect("an aggregate");
    let def = def.clone();
    Box::new(move |state, record| {
        let view = match sink {
            true => ViewWriter::for_sink(def.clone(), !emit_on_close),
            false => ViewWriter::new(def.clone()),
        };
        let mut parts: Vec<Box<dyn Operator>> = Vec::new();
        for p in 0..partitions {
            parts.push(Box::new(AggregateOp::Groups(
                Aggregator::restore_partition(
                    agg.clone(),
                    state.table(PIPELINE, AGGREGATE_OPERATOR),
                    budget,
                    emit_on_close,
                    record.watermark,
                    view.clone(),
                    keys::partition_groups(p, partitions),
                )?,
            )));
        }
        let op: Box<dyn Operator> = match partitions {
            1 => parts.pop().expect("one"),
            n => Box::new(Partitioned {
                router: Router::new(&agg, n)?,
                partitions: parts,
            }),
        };
        Ok(match agg.upper_segment {
            None => op,
            Some(_) => Box::new(Chain(vec![
                op,
                Box::new(PerWindow::new(&agg, view, partitions)?),
            ])),
        })
    })
}

/// The result a sink's rows describe: each key's last row, unless it was deleted.
fn upserted(rows: &[RecordBatch], key_columns: usize) -> Vec<Vec<String>> {
    let mut result: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    for b in rows {
        let deleted = b.schema().index_of(DELETED_COLUMN).ok();
        for r in 0..b.num_rows() {
            let values: Vec<String> = (0..b.num_columns())
                .filter(|c| Some(*c) != deleted)
                .map(|c| cell(b.column(c).as_ref(), r))
                .collect();
            let key = values[..key_columns].to_vec();
            let gone = deleted.is_some_and(|d| cell(b.column(d).as_ref(), r) == "true");
            match gone {
                true => result.remove(&key),
                false => result.insert(key, values),
            };
        }
    }
    result.into_values().collect()
}

/// What DataFusion computes over all the events at once.
async fn batch_result(source: &[RecordBatch], sql: &str) -> Vec<Vec<String>> {
    let ctx = SessionContext::new();
    let table = MemTable::try_new(source[0].schema(), vec![source.to_vec()]).unwrap();
    ctx.register_table("ev", Arc::new(table)).unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    sorted_rows(&batches)
}

async fn compare(view_sql: &str, batch_sql: &str, keys: usize, emit_on_close: bool) {
    let (plan, def) = planned(view_sql).await;
    compare_plan(&plan, &def, view_sql, batch_sql, keys, emit_on_close).await;
}

async fn compare_plan(
    plan: &Arc<PipelinePlan>,
    def: &Arc<TableDef>,
    view_sql: &str,
    batch_sql: &str,
    keys: usize,
    emit_on_close: bool,
) {
    let (plan, def) = (plan.clone(), def.clone());
    for seed in [7u64, 1234, 987_654_321] {
        eprintln!("seed {seed}: {view_sql}");
        let source = ev_events(seed, 40, 12, 0);
        let inputs = ev_script(&plan, &source, &mut Rng(seed ^ 0x5eed), true).await;
        let expected = batch_result(&source, batch_sql).await;
        // Groups kept in memory, and every group dropped and read back after each barrier;
        // in one partition and in three.
        let mut stored_by_partitions = Vec::new();
        for (budget, partitions) in [(64 << 20, 1), (0, 1), (64 << 20, 3), (0, 3)] {
            let make = || factory(&plan, &def, emit_on_close, true, budget, partitions);
            let (_, rows) = check_restores(make, &inputs, &[], 1 << 20).await.unwrap();
            assert_eq!(
                upserted(&rows, keys),
                expected,
                "seed {seed}, budget {budget}, {partitions} partitions"
            );
            // Stored as the view's rows, restored at every barrier.
            let make = || factory(&plan, &def, emit_on_close, false, budget, partitions);
            let prefix = keys::table_prefix(def.id);
            let (stored, _) = check_restores(make, &inputs, &prefix, 0).await.unwrap();
            assert!(!stored.is_empty() || expected.is_empty());
            stored_by_partitions.push(stored);
        }
        assert!(
            stored_by_partitions.windows(2).all(|w| w[0] == w[1]),
            "seed {seed}: the view's rows are the same in one partition and in three"
        );
        // A checkpoint of three partitions restored into two, and of one into three.
        for (before, after) in [(3, 2), (1, 3)] {
            let make = |n| factory(&plan, &def, emit_on_close, true, 64 << 20, n);
            for rows in check_rescales(make, &inputs, 1 << 20, before, after)
                .await
                .unwrap()
            {
                assert_eq!(
                    upserted(&rows, keys),
                    expected,
                    "seed {seed}: {before} partitions restored as {after}"
                );
            }
        }
    }
}

#[tokio::test]
async fn group_by_equals_the_batch_query_across_restores() {
    compare(
        "SELECT k, sum(v) AS s, count(*) AS n, min(v) AS lo, max(v) AS hi FROM ev GROUP BY k",
        "SELECT k, sum(v), count(*), min(v), max(v) FROM ev GROUP BY k",
        1,
        false,
    )
    .await;
}

#[tokio::test]
async fn having_deletes_groups_it_filters_out() {
    compare(
        "SELECT k, count(*) AS n, sum(v) AS s FROM ev GROUP BY k HAVING sum(v) > 500",
        "SELECT k, count(*), sum(v) FROM ev GROUP BY k HAVING sum(v) > 500",
        1,
        false,
    )
    .await;
}

#[tokio::test]
async fn tumbling_windows_emitted_on_close_equal_the_batch_query() {
    compare(
        "SELECT k, window_start, count(*) AS n, avg(v) AS a \
         FROM TUMBLE(ev, ts, INTERVAL '5 seconds') GROUP BY k, window_start, window_end \
         EMIT ON WINDOW CLOSE",
        "SELECT k, date_bin(INTERVAL '5 seconds', ts) AS w, count(*), avg(v) FROM ev \
         GROUP BY k, w",
        2,
        true,
    )
    .await;
}

/// `HOP(ev, ts, 2 s, 6 s)` written out for DataFusion from its definition: every window
/// starting at a multiple of 2 s whose 6 s hold the event (a join with all window starts).
const HOP_BATCH: &str = "(SELECT ev.k, ev.v, ev.ts, w.ws AS window_start, \
       w.ws + INTERVAL '6 seconds' AS window_end \
     FROM ev JOIN (SELECT unnest(generate_series( \
         date_bin(INTERVAL '2 seconds', min(ts)) - INTERVAL '6 seconds', max(ts), \
         INTERVAL '2 seconds')) AS ws FROM ev) AS w \
       ON ev.ts >= w.ws AND ev.ts < w.ws + INTERVAL '6 seconds') AS hop";

#[tokio::test]
async fn hop_windows_from_panes_equal_the_batch_query() {
    let view = "SELECT k, window_start, window_end, count(*) AS n, sum(v) AS s, min(v) AS lo, \
           max(v) AS hi, avg(v) AS a, count(DISTINCT v % 7) AS d, \
           count(*) FILTER (WHERE v > 100) AS big \
         FROM HOP(ev, ts, INTERVAL '2 seconds', INTERVAL '6 seconds') \
         GROUP BY k, window_start, window_end EMIT ON WINDOW CLOSE";
    let batch = format!(
        "SELECT k, window_start, window_end, count(*), sum(v), min(v), max(v), avg(v), \
           count(DISTINCT v % 7), count(*) FILTER (WHERE v > 100) \
         FROM {HOP_BATCH} GROUP BY k, window_start, window_end"
    );
    let (plan, def) = planned(view).await;
    let hop = plan.aggregate.as_ref().and_then(|a| a.hop.clone());
    assert!(hop.is_some_and(|h| h.panes), "the view runs in panes");
    compare_plan(&plan, &def, view, &batch, 3, true).await;
    // The same view with a group per window, as views created before panes run.
    let (plain, def) = planned_as(view, Some(false)).await;
    assert!(
        plain
            .aggregate
            .as_ref()
            .unwrap()
            .hop
            .as_ref()
            .is_some_and(|h| !h.panes)
    );
    compare_plan(&plain, &def, view, &batch, 3, true).await;
}

#[tokio::test]
async fn hop_windows_per_window_equal_the_batch_query() {
    // Windows read below the aggregate (a filter on the window, a window in an expression)
    // or emitted on update keep a group per window.
    let batch = format!(
        "SELECT k, window_start, count(*), sum(v) FROM {HOP_BATCH} \
         WHERE window_start >= TIMESTAMP '2023-11-14 22:14:00' GROUP BY k, window_start"
    );
    let view = "SELECT k, window_start, count(*) AS n, sum(v) AS s \
         FROM HOP(ev, ts, INTERVAL '2 seconds', INTERVAL '6 seconds') \
         WHERE window_start >= TIMESTAMP '2023-11-14 22:14:00' \
         GROUP BY k, window_start, window_end EMIT ON WINDOW CLOSE";
    let (plan, def) = planned(view).await;
    assert!(plan.aggregate.as_ref().unwrap().hop.is_none());
    compare_plan(&plan, &def, view, &batch, 2, true).await;
    let batch = format!(
        "SELECT k, window_start, count(*), sum(v) FROM {HOP_BATCH} GROUP BY k, window_start"
    );
    let view = "SELECT k, window_start, count(*) AS n, sum(v) AS s \
         FROM HOP(ev, ts, INTERVAL '2 seconds', INTERVAL '6 seconds') \
         GROUP BY k, window_start, window_end EMIT ON UPDATE";
    let (plan, def) = planned(view).await;
    assert!(!plan.aggregate.as_ref().unwrap().hop.as_ref().unwrap().panes);
    compare_plan(&plan, &def, view, &batch, 2, false).await;
}

#[tokio::test]
async fn hop_windows_whose_size_is_not_a_multiple_of_the_slide_start_at_multiples_of_it() {
    let batch = "SELECT k, w.ws, count(*), sum(v) FROM ev JOIN (SELECT unnest(generate_series( \
           date_bin(INTERVAL '2 seconds', min(ts)) - INTERVAL '6 seconds', max(ts), \
           INTERVAL '2 seconds')) AS ws FROM ev) AS w \
         ON ev.ts >= w.ws AND ev.ts < w.ws + INTERVAL '5 seconds' GROUP BY k, w.ws";
    let view = "SELECT k, window_start, count(*) AS n, sum(v) AS s \
         FROM HOP(ev, ts, INTERVAL '2 seconds', INTERVAL '5 seconds') \
         GROUP BY k, window_start, window_end EMIT ON WINDOW CLOSE";
    let (plan, def) = planned(view).await;
    assert!(plan.aggregate.as_ref().unwrap().hop.is_none(), "no panes");
    compare_plan(&plan, &def, view, batch, 2, true).await;
}

#[tokio::test]
async fn the_top_2_of_each_hop_window_from_panes_equal_the_batch_query() {
    let view = "SELECT * FROM (SELECT k, window_start, count(*) AS n, \
           row_number() OVER (PARTITION BY window_start ORDER BY count(*) DESC, k) AS rn \
         FROM HOP(ev, ts, INTERVAL '2 seconds', INTERVAL '6 seconds') \
         GROUP BY k, window_start, window_end) WHERE rn <= 2 EMIT ON WINDOW CLOSE";
    let batch = format!(
        "SELECT * FROM (SELECT k, window_start, count(*) AS n, \
           row_number() OVER (PARTITION BY window_start ORDER BY count(*) DESC, k) AS rn \
         FROM {HOP_BATCH} GROUP BY k, window_start) WHERE rn <= 2"
    );
    let (plan, def) = planned(view).await;
    assert!(
        plan.aggregate
            .as_ref()
            .unwrap()
            .hop
            .as_ref()
            .is_some_and(|h| h.panes)
    );
    compare_plan(&plan, &def, view, &batch, 2, true).await;
}

#[tokio::test]
async fn the_top_3_of_each_window_equal_the_batch_query() {
    compare(
        "SELECT * FROM (SELECT k, window_start, count(*) AS n, \
           row_number() OVER (PARTITION BY window_start ORDER BY count(*) DESC, k) AS rn \
         FROM TUMBLE(ev, ts, INTERVAL '5 seconds') GROUP BY k, window_start, window_end) \
         WHERE rn <= 3 EMIT ON WINDOW CLOSE",
        "SELECT * FROM (SELECT k, date_bin(INTERVAL '5 seconds', ts) AS w, count(*) AS n, \
           row_number() OVER (PARTITION BY date_bin(INTERVAL '5 seconds', ts) \
             ORDER BY count(*) DESC, k) AS rn \
         FROM ev GROUP BY k, w) WHERE rn <= 3",
        2,
        true,
    )
    .await;
}

#[tokio::test]
async fn a_global_aggregate_survives_restores() {
    compare(
        "SELECT count(*) AS n, sum(v) AS s FROM ev",
        "SELECT count(*), sum(v) FROM ev",
        0,
        false,
    )
    .await;
}

#[tokio::test]
async fn a_checkpoint_record_beside_the_state_is_not_read_as_a_group() {
    // The defect this layout fixes: a Kafka sink's previous checkpoint record lived under the
    // aggregate's state prefix and was decoded as a group on restart.
    let (plan, def) = planned(
        "SELECT k, window_start, count(*) AS n FROM TUMBLE(ev, ts, INTERVAL '5 seconds') \
         GROUP BY k, window_start, window_end EMIT ON WINDOW CLOSE",
    )
    .await;
    let source = ev_events(42, 10, 4, 0);
    let inputs = ev_script(&plan, &source, &mut Rng(42), true).await;
    let mut first = Harness::new(factory(&plan, &def, true, true, 1 << 20, 1), 1 << 20).unwrap();
    first.run(&inputs[..inputs.len() / 2]).await.unwrap();
    first.run(&[Input::Barrier]).await.unwrap();
    let mut snapshot = first.snapshot();
    snapshot.insert(
        crate::stream::checkpoint::previous_checkpoint_key(PIPELINE),
        br#"{"epoch":1,"positions":{},"watermark":null,"next_seq":0}"#.to_vec(),
    );
    let mut rest = Harness::restore(
        factory(&plan, &def, true, true, 1 << 20, 1),
        &snapshot,
        1 << 20,
    )
    .unwrap();
    rest.run(&inputs[inputs.len() / 2..]).await.unwrap();
    let mut rows = first.rows;
    rows.extend(rest.rows);
    let expected = batch_result(
        &source,
        "SELECT k, date_bin(INTERVAL '5 seconds', ts) AS w, count(*) FROM ev GROUP BY k, w",
    )
    .await;
    assert_eq!(upserted(&rows, 2), expected);
}

#[tokio::test]
async fn groups_beyond_the_budget_leave_memory_at_the_barrier_and_come_back_from_state() {
    let (plan, def) = planned("SELECT k, count(*) AS n, sum(v) AS s FROM ev GROUP BY k").await;
    let kv: Arc<dyn crate::storage::KvStore> = Arc::new(crate::storage::memory::MemoryStore::new());
    let state = crate::stream::state::StateStore::new(kv.clone(), 1 << 16);
    let make = |budget| {
        Aggregator::restore(
            plan.aggregate.clone().unwrap(),
            state.table(PIPELINE, AGGREGATE_OPERATOR),
            budget,
            false,
            None,
            ViewWriter::for_sink(def.clone(), true),
        )
        .unwrap()
    };
    let mut agg = make(64 << 10);
    let keys = 20_000;
    let batch = |offset: i32| {
        let schema = Arc::new(ev_schema().project(&[0, 1]).unwrap());
        let k: Vec<i32> = (0..keys).map(|i| i + offset).collect();
        let v: Vec<i64> = (0..keys).map(|i| i as i64).collect();
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int32Array::from(k)), Arc::new(Int64Array::from(v))],
        )
        .unwrap()
    };
    let input = plan.run_lower(source_like(&batch(0))).await.unwrap();
    let barrier = |agg: &mut Aggregator| {
        let mut b = crate::stream::checkpoint::Barrier::new(1, None);
        agg.on_barrier(&mut b).unwrap();
        kv.write(b.writes, true).unwrap();
    };
    for b in &input {
        agg.on_batch(b).unwrap();
    }
    assert_eq!(agg.live_groups(), keys as usize);
    barrier(&mut agg);
    assert_eq!(
        agg.live_groups(),
        0,
        "over the budget: every saved group leaves memory"
    );
    // The same keys again: each is read back from the state table and counts 2.
    let mut last = None;
    for b in &input {
        last = Some(agg.on_batch(b).unwrap());
    }
    let Some(super::Output::Rows(rows)) = last else {
        panic!("rows for a sink")
    };
    let n = rows
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert!(
        n.iter().all(|c| c == Some(2)),
        "counts carried over from state"
    );
    barrier(&mut agg);
    // Within the budget, groups stay.
    let mut roomy = make(1 << 30);
    for b in &input {
        roomy.on_batch(b).unwrap();
    }
    barrier(&mut roomy);
    assert_eq!(roomy.live_groups(), keys as usize);
    // Over it, the groups the last epoch did not touch go first.
    let mut tight = make(roomy.live_bytes() * 3 / 2);
    for b in &input {
        tight.on_batch(b).unwrap();
    }
    barrier(&mut tight);
    assert_eq!(tight.live_groups(), keys as usize, "within the budget");
    let others = plan.run_lower(source_like(&batch(keys))).await.unwrap();
    for b in &others {
        tight.on_batch(b).unwrap();
    }
    barrier(&mut tight);
    assert_eq!(
        tight.live_groups(),
        keys as usize,
        "the groups of the first epoch left, those of the second stayed"
    );
}

/// A batch of (k, v) as the source `ev` delivers it (with a `ts` column).
fn source_like(kv: &RecordBatch) -> RecordBatch {
    let n = kv.num_rows();
    let ts: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![Some(0i64); n]));
    let mut columns = kv.columns().to_vec();
    columns.push(ts);
    RecordBatch::try_new(ev_schema(), columns).unwrap()
}

#[tokio::test]
async fn windows_that_partitions_close_at_different_watermarks_are_ranked_whole() {
    // In a pipeline, partitions read several exchanges and may pass a watermark at different
    // moments: one partition can send a window's rows while another still holds its share.
    // The plan above the aggregate must rank only windows every partition has closed.
    let view = "SELECT * FROM (SELECT k, window_start, count(*) AS n, \
           row_number() OVER (PARTITION BY window_start ORDER BY count(*) DESC, k) AS rn \
         FROM TUMBLE(ev, ts, INTERVAL '2 seconds') GROUP BY k, window_start, window_end) \
         WHERE rn <= 2 EMIT ON WINDOW CLOSE";
    let batch = "SELECT * FROM (SELECT k, date_bin(INTERVAL '2 seconds', ts) AS w, \
           count(*) AS n, row_number() OVER (PARTITION BY date_bin(INTERVAL '2 seconds', ts) \
             ORDER BY count(*) DESC, k) AS rn \
         FROM ev GROUP BY k, w) WHERE rn <= 2";
    let (plan, def) = planned(view).await;
    let agg = plan.aggregate.clone().unwrap();
    for seed in [3u64, 77, 4242] {
        let source = ev_events(seed, 30, 9, 0);
        let expected = batch_result(&source, batch).await;
        let state = crate::stream::state::StateStore::new(
            Arc::new(crate::storage::memory::MemoryStore::new()),
            1 << 20,
        );
        let writer = ViewWriter::for_sink(def.clone(), false);
        let mut parts: Vec<AggregateOp> = (0..2)
            .map(|p| {
                AggregateOp::Groups(
                    Aggregator::restore_partition(
                        agg.clone(),
                        state.table(PIPELINE, AGGREGATE_OPERATOR),
                        1 << 20,
                        true,
                        None,
                        writer.clone(),
                        keys::partition_groups(p, 2),
                    )
                    .unwrap(),
                )
            })
            .collect();
        let router = Router::new(&agg, 2).unwrap();
        let mut upper = PerWindow::new(&agg, writer, 2).unwrap();
        let mut times = Vec::new();
        for b in &source {
            let ts = b.column(2).as_primitive::<TimestampMicrosecondType>();
            times.extend(ts.values().iter().copied());
            for lowered in plan.run_lower(b.clone()).await.unwrap() {
                for (op, part) in parts.iter_mut().zip(router.split(&lowered).unwrap()) {
                    if let Some(part) = part {
                        op.on_batch(part, &mut Vec::new()).await.unwrap();
                    }
                }
            }
        }
        // Partition 0 passes the last watermark before partition 1 passes the middle one.
        let middle = times[times.len() / 2];
        let last = i64::MAX / 2;
        let mut early = Vec::new();
        parts[0].on_watermark(last, &mut early).await.unwrap();
        parts[1].on_watermark(middle, &mut early).await.unwrap();
        let mut late = Vec::new();
        parts[1].on_watermark(last, &mut late).await.unwrap();
        // What the gather stage forwards: the rows, and the minimum of the partitions'
        // watermarks (the middle one, then the last).
        let mut out = Vec::new();
        for b in batches(early) {
            upper.on_batch(b, &mut out).await.unwrap();
        }
        upper.on_watermark(middle, &mut out).await.unwrap();
        for b in batches(late) {
            upper.on_batch(b, &mut out).await.unwrap();
        }
        upper.on_watermark(last, &mut out).await.unwrap();
        assert_eq!(upserted(&batches(out), 4), expected, "seed {seed}");
    }
}

fn batches(messages: Vec<Message>) -> Vec<RecordBatch> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            Message::Batch(b) => Some(b),
            _ => None,
        })
        .collect()
}
