//! The aggregate against DataFusion's batch aggregation of the same events, restored from
//! every checkpoint, with its groups in memory and with every group read back from the state
//! table after each barrier.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::Aggregator;
use crate::Engine;
use crate::catalog::{DEFAULT_SCHEMA, TableDef};
use crate::engine::Session;
use crate::keys;
use crate::stream::harness::{Factory, Harness, Input, PIPELINE, check_restores};
use crate::stream::manager::AGGREGATE_OPERATOR;
use crate::stream::pipeline::AggregateOp;
use crate::stream::plan::{self, PipelinePlan};
use crate::stream::view::{DELETED_COLUMN, ViewWriter};

/// A small deterministic generator (the seed is printed by the tests that use it).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn run(session: &Session, sql: &str) {
    session
        .run(Session::parse(sql).unwrap().remove(0))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Plans `view_sql` over the push source `ev (k int, v bigint, ts timestamp)`.
async fn planned(view_sql: &str) -> (Arc<PipelinePlan>, Arc<TableDef>) {
    let engine = Engine::in_memory();
    let session = engine.new_session("eddy", "eddy");
    run(
        &session,
        "CREATE SOURCE ev (k int, v bigint, ts timestamp, \
         WATERMARK FOR ts AS ts - INTERVAL '1 second')",
    )
    .await;
    run(
        &session,
        &format!("CREATE MATERIALIZED VIEW mv AS {view_sql}"),
    )
    .await;
    let catalog = engine.catalog();
    let def = catalog.table(DEFAULT_SCHEMA, "mv").expect("view");
    let query = plan::parse_query(&def.kind.query().expect("query").sql).unwrap();
    let plan = plan::plan(&catalog, &query, &[]).await.unwrap();
    (Arc::new(plan), def)
}

/// The columns of the source `ev`.
fn ev_schema() -> datafusion::arrow::datatypes::SchemaRef {
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int32, true),
        Field::new("v", DataType::Int64, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
    ]))
}

/// Random events in event-time order (so none is late), `batches` batches of up to 50.
fn events(seed: u64, batches: usize, keys: u64) -> Vec<RecordBatch> {
    let mut rng = Rng(seed);
    let schema = ev_schema();
    let mut ts = 1_700_000_000_000_000i64;
    (0..batches)
        .map(|_| {
            let n = 1 + rng.below(50) as usize;
            let mut k = Vec::new();
            let mut v = Vec::new();
            let mut t = Vec::new();
            for _ in 0..n {
                ts += rng.below(400_000) as i64;
                k.push((rng.below(5) != 0).then(|| rng.below(keys) as i32));
                v.push((rng.below(10) != 0).then(|| rng.below(1000) as i64 - 300));
                t.push(Some(ts));
            }
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int32Array::from(k)),
                Arc::new(Int64Array::from(v)),
                Arc::new(TimestampMicrosecondArray::from(t)),
            ];
            RecordBatch::try_new(schema.clone(), columns).unwrap()
        })
        .collect()
}

/// The input script: each source batch through the lower plan, with a watermark after it
/// (the least event time to come, less a second) and a barrier every few batches.
async fn script(plan: &PipelinePlan, source: &[RecordBatch], rng: &mut Rng) -> Vec<Input> {
    let mut inputs = Vec::new();
    for (i, batch) in source.iter().enumerate() {
        for lowered in plan.run_lower(batch.clone()).await.unwrap() {
            inputs.push(Input::Batch(lowered));
        }
        let next = source.get(i + 1).map(|b| {
            let ts = b
                .column(2)
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            ts.value(0)
        });
        inputs.push(Input::Watermark(
            next.map_or(i64::MAX / 2, |t| t - 1_000_000),
        ));
        if rng.below(3) == 0 {
            inputs.push(Input::Barrier);
        }
    }
    inputs.push(Input::Barrier);
    inputs
}

fn factory(
    plan: &Arc<PipelinePlan>,
    def: &Arc<TableDef>,
    emit_on_close: bool,
    sink: bool,
    budget: usize,
) -> Factory {
    let agg = plan.aggregate.clone().expect("an aggregate");
    let def = def.clone();
    Box::new(move |state, record| {
        let view = match sink {
            true => ViewWriter::for_sink(def.clone(), !emit_on_close),
            false => ViewWriter::new(def.clone()),
        };
        Ok(Box::new(AggregateOp::Groups(Aggregator::restore(
            agg.clone(),
            state.table(PIPELINE, AGGREGATE_OPERATOR),
            budget,
            emit_on_close,
            record.watermark,
            view,
        )?)))
    })
}

fn cells(column: &dyn Array, row: usize) -> String {
    let options = FormatOptions::default().with_null("NULL");
    ArrayFormatter::try_new(column, &options)
        .unwrap()
        .value(row)
        .to_string()
}

/// The result a sink's rows describe: each key's last row, unless it was deleted.
fn upserted(rows: &[RecordBatch], key_columns: usize) -> Vec<Vec<String>> {
    let mut result: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    for b in rows {
        let deleted = b.schema().index_of(DELETED_COLUMN).ok();
        for r in 0..b.num_rows() {
            let values: Vec<String> = (0..b.num_columns())
                .filter(|c| Some(*c) != deleted)
                .map(|c| cells(b.column(c).as_ref(), r))
                .collect();
            let key = values[..key_columns].to_vec();
            let gone = deleted.is_some_and(|d| cells(b.column(d).as_ref(), r) == "true");
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
    let mut rows: Vec<Vec<String>> = batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows())
                .map(|r| {
                    (0..b.num_columns())
                        .map(|c| cells(b.column(c).as_ref(), r))
                        .collect()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort();
    rows
}

async fn compare(view_sql: &str, batch_sql: &str, keys: usize, emit_on_close: bool) {
    let (plan, def) = planned(view_sql).await;
    for seed in [7u64, 1234, 987_654_321] {
        eprintln!("seed {seed}: {view_sql}");
        let source = events(seed, 40, 12);
        let inputs = script(&plan, &source, &mut Rng(seed ^ 0x5eed)).await;
        let expected = batch_result(&source, batch_sql).await;
        // Groups kept in memory, and every group dropped and read back after each barrier.
        for budget in [64 << 20, 0] {
            let make = || factory(&plan, &def, emit_on_close, true, budget);
            let (_, rows) = check_restores(make, &inputs, &[], 1 << 20).await.unwrap();
            assert_eq!(
                upserted(&rows, keys),
                expected,
                "seed {seed}, budget {budget}"
            );
            // Stored as the view's rows, restored at every barrier.
            let make = || factory(&plan, &def, emit_on_close, false, budget);
            let prefix = keys::table_prefix(def.id);
            let (stored, _) = check_restores(make, &inputs, &prefix, 0).await.unwrap();
            assert!(!stored.is_empty() || expected.is_empty());
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
    let source = events(42, 10, 4);
    let inputs = script(&plan, &source, &mut Rng(42)).await;
    let mut first = Harness::new(factory(&plan, &def, true, true, 1 << 20), 1 << 20).unwrap();
    first.run(&inputs[..inputs.len() / 2]).await.unwrap();
    first.run(&[Input::Barrier]).await.unwrap();
    let mut snapshot = first.snapshot();
    snapshot.insert(
        crate::stream::checkpoint::previous_checkpoint_key(PIPELINE),
        br#"{"epoch":1,"positions":{},"watermark":null,"next_seq":0}"#.to_vec(),
    );
    let mut rest = Harness::restore(
        factory(&plan, &def, true, true, 1 << 20),
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
}

/// A batch of (k, v) as the source `ev` delivers it (with a `ts` column).
fn source_like(kv: &RecordBatch) -> RecordBatch {
    let n = kv.num_rows();
    let ts: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![Some(0i64); n]));
    let mut columns = kv.columns().to_vec();
    columns.push(ts);
    RecordBatch::try_new(ev_schema(), columns).unwrap()
}
