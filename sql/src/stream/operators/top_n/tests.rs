//! Top-N against DataFusion's batch query over the same rows, restored at every checkpoint:
//! over appending events, and over random inserts and deletes of an updating view's rows
//! (rows repeat, NULLs in partition and order columns). The changes it emits, summed, must
//! equal the batch query's result.

use std::sync::Arc;

use datafusion::arrow::array::{Int32Array, Int64Array, RecordBatch};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::TopN;
use crate::Engine;
use crate::stream::changelog::{self, Op};
use crate::stream::harness::run_sql as run;
use crate::stream::harness::{
    Chain, EV_SOURCE, Factory, Input, PIPELINE, Rng, check_restores, ev_events, ev_script,
    sorted_rows, summed,
};
use crate::stream::manager::TOP_OPERATOR;
use crate::stream::pipeline::{Operator, SegmentOp};
use crate::stream::plan::{self, PipelinePlan};

/// The plan of `sql` over `ev` and the updating view `u (k int, c bigint)`.
async fn planned(sql: &str) -> Arc<PipelinePlan> {
    let engine = Engine::in_memory();
    let session = engine.new_session("eddy", "eddy");
    run(&session, EV_SOURCE).await;
    run(
        &session,
        "CREATE MATERIALIZED VIEW u AS SELECT k, count(*) AS c FROM ev GROUP BY k",
    )
    .await;
    let catalog = engine.catalog();
    let query = plan::parse_query(sql).unwrap();
    Arc::new(
        plan::plan(&catalog, &query, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
    )
}

/// The lower plan (over changes), the top-N and the plan above it, restored from a checkpoint.
fn make(plan: &Arc<PipelinePlan>) -> Factory {
    let plan = plan.clone();
    Box::new(move |state, _record| {
        let (top, above) = plan.top.clone().expect("a top-N stage");
        Ok(Box::new(Chain(vec![
            Box::new(TopN::new(top, state.table(PIPELINE, TOP_OPERATOR))?) as Box<dyn Operator>,
            Box::new(SegmentOp { segment: above }),
        ])))
    })
}

async fn batch_query(sql: &str, name: &str, rows: &[RecordBatch]) -> Vec<Vec<String>> {
    let ctx = SessionContext::new();
    let table = MemTable::try_new(rows[0].schema(), vec![rows.to_vec()]).unwrap();
    ctx.register_table(name, Arc::new(table)).unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    sorted_rows(&batches)
}

#[tokio::test]
async fn top_n_over_events_equals_the_batch_query_across_restores() {
    // Ranks that tie are compared with rank() and dense_rank(); row_number() and LIMIT order
    // by a unique column last (the event time), as ties would be broken differently.
    let cases = [
        "SELECT * FROM (SELECT k, v, ts, rank() OVER (PARTITION BY k ORDER BY v DESC) AS r \
         FROM ev) WHERE r <= 3",
        "SELECT k, v, d FROM (SELECT k, v, dense_rank() OVER (PARTITION BY k ORDER BY v) AS d, \
         row_number() OVER (PARTITION BY k ORDER BY v) AS n FROM ev) WHERE d < 3",
        "SELECT k, v, ts FROM ev ORDER BY v DESC NULLS LAST, ts LIMIT 5",
        "SELECT k, v * 2 AS w FROM ev WHERE v > 0 ORDER BY v, ts LIMIT 4 OFFSET 2",
        "SELECT k, ts, v FROM (SELECT k, ts, v, row_number() OVER (PARTITION BY k ORDER BY ts \
         DESC) AS n FROM ev WHERE v > 0) WHERE n = 1",
        "SELECT * FROM (SELECT k, v, ts, row_number() OVER (ORDER BY v NULLS FIRST, ts) AS n \
         FROM ev) WHERE 3 >= n AND k IS NOT NULL",
    ];
    for sql in cases {
        let plan = planned(sql).await;
        let top = plan.top.as_ref().expect("a top-N stage");
        assert!(!top.0.updates, "{sql}: events append");
        for seed in [5u64, 1234, 424_242] {
            eprintln!("seed {seed}: {sql}");
            let source = ev_events(seed, 25, 4, 1);
            let inputs = ev_script(&plan, &source, &mut Rng(seed ^ 0x5eed), false).await;
            let (_, emitted) = check_restores(|| make(&plan), &inputs, &[], 1 << 20)
                .await
                .unwrap();
            let expected = batch_query(sql, "ev", &source).await;
            assert!(!expected.is_empty(), "seed {seed}: {sql} has rows");
            assert_eq!(summed(&emitted), expected, "seed {seed}: {sql}");
        }
    }
}

/// Random inserts and deletes of `u`'s rows; returns the script and the rows left.
fn changes_script(seed: u64) -> (Vec<Input>, Vec<RecordBatch>) {
    let mut rng = Rng(seed);
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
        datafusion::arrow::datatypes::Field::new(
            "k",
            datafusion::arrow::datatypes::DataType::Int32,
            true,
        ),
        datafusion::arrow::datatypes::Field::new(
            "c",
            datafusion::arrow::datatypes::DataType::Int64,
            true,
        ),
    ]));
    let mut held: Vec<(Option<i32>, Option<i64>)> = Vec::new();
    let mut inputs = Vec::new();
    for _ in 0..80 {
        let mut changes = Vec::new();
        for _ in 0..1 + rng.below(6) {
            if !held.is_empty() && rng.below(5) < 2 {
                let i = rng.below(held.len() as u64) as usize;
                changes.push((held.swap_remove(i), Op::Delete));
            } else {
                let k = (rng.below(7) != 0).then(|| rng.below(6) as i32);
                let c = (rng.below(9) != 0).then(|| rng.below(8) as i64);
                held.push((k, c));
                changes.push(((k, c), Op::Insert));
            }
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(changes.iter().map(|c| c.0.0).collect::<Int32Array>()),
                Arc::new(changes.iter().map(|c| c.0.1).collect::<Int64Array>()),
            ],
        )
        .unwrap();
        let ops = changes.iter().map(|c| c.1 as i8).collect();
        inputs.push(Input::ChangesFrom(
            0,
            changelog::with_ops(&batch, ops).unwrap(),
        ));
        if rng.below(4) == 0 {
            inputs.push(Input::Barrier);
        }
    }
    inputs.push(Input::Barrier);
    let rows = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(held.iter().map(|r| r.0).collect::<Int32Array>()),
            Arc::new(held.iter().map(|r| r.1).collect::<Int64Array>()),
        ],
    )
    .unwrap();
    (inputs, vec![rows])
}

#[tokio::test]
async fn top_n_over_an_updating_view_equals_the_batch_query_across_restores() {
    let cases = [
        "SELECT * FROM u ORDER BY c DESC, k LIMIT 3",
        "SELECT k, c FROM u ORDER BY c NULLS FIRST, k LIMIT 2 OFFSET 1",
        "SELECT * FROM (SELECT k, c, rank() OVER (PARTITION BY k % 2 ORDER BY c DESC) AS r \
         FROM u) WHERE r <= 2",
        "SELECT * FROM (SELECT k, c, dense_rank() OVER (PARTITION BY k ORDER BY c) AS d \
         FROM u WHERE c IS NOT NULL) WHERE d <= 2",
    ];
    for sql in cases {
        let plan = planned(sql).await;
        let top = plan.top.as_ref().expect("a top-N stage");
        assert!(top.0.updates, "{sql}: the view's rows change");
        for seed in [3u64, 777, 31_337] {
            eprintln!("seed {seed}: {sql}");
            let (script, rows) = changes_script(seed);
            // The lower plan runs over the view's changes before the top-N, as in a pipeline.
            let mut inputs = Vec::new();
            for input in script {
                match input {
                    Input::ChangesFrom(_, c) => {
                        let mut out = Vec::new();
                        crate::stream::pipeline::run_changes(&plan.lower_segment(), c, &mut out)
                            .await
                            .unwrap();
                        for m in out {
                            if let crate::stream::pipeline::Message::Changes(c) = m {
                                inputs.push(Input::ChangesFrom(0, c));
                            }
                        }
                    }
                    other => inputs.push(other),
                }
            }
            let (_, emitted) = check_restores(|| make(&plan), &inputs, &[], 1 << 20)
                .await
                .unwrap();
            let expected = batch_query(sql, "u", &rows).await;
            assert!(!expected.is_empty(), "seed {seed}: {sql} has rows");
            assert_eq!(summed(&emitted), expected, "seed {seed}: {sql}");
        }
    }
}

#[tokio::test]
async fn an_appending_top_n_keeps_only_the_rows_within_its_bound() {
    let sql = "SELECT * FROM (SELECT k, v, ts, row_number() OVER (PARTITION BY k ORDER BY v \
               DESC, ts) AS n FROM ev) WHERE n <= 2";
    let plan = planned(sql).await;
    let source = ev_events(9, 40, 3, 1);
    let inputs = ev_script(&plan, &source, &mut Rng(9), true).await;
    let (stored, _) = check_restores(
        || make(&plan),
        &inputs,
        &crate::keys::operator_state_prefix(PIPELINE, TOP_OPERATOR),
        1 << 20,
    )
    .await
    .unwrap();
    // Keys 0..3 and NULL: one entry per partition, each with at most two rows.
    assert_eq!(stored.len(), 4, "one candidate list per partition");
    for value in stored.values() {
        let list = super::decode_list(value).unwrap();
        assert!(list.iter().map(|e| e.count).sum::<u64>() <= 2);
    }
}

/// The aggregate (in `partitions` partitions), its groups' changes, and the top-N over them,
/// as a view that emits on update runs them.
fn make_over_aggregate(
    plan: &Arc<PipelinePlan>,
    def: &Arc<crate::catalog::TableDef>,
    partitions: usize,
) -> Factory {
    use crate::stream::aggregate::Aggregator;
    use crate::stream::exchange::{Partitioned, Router};
    use crate::stream::manager::{AGGREGATE_OPERATOR, GROUP_CHANGES_OPERATOR};
    use crate::stream::operators::group_changes::GroupChanges;
    use crate::stream::pipeline::AggregateOp;
    use crate::stream::view::ViewWriter;
    let agg = plan.aggregate.clone().expect("an aggregate");
    let def = def.clone();
    Box::new(move |state, record| {
        let top = agg.top.clone().expect("a top-N over the aggregate");
        let mut parts: Vec<Box<dyn Operator>> = Vec::new();
        for p in 0..partitions {
            parts.push(Box::new(AggregateOp::Groups(
                Aggregator::restore_partition(
                    agg.clone(),
                    state.table(PIPELINE, AGGREGATE_OPERATOR),
                    1 << 20,
                    false,
                    record.watermark,
                    ViewWriter::new(def.clone()),
                    crate::keys::partition_groups(p, partitions),
                )?,
            )));
        }
        let aggregate: Box<dyn Operator> = match partitions {
            1 => parts.pop().expect("one"),
            n => Box::new(Partitioned {
                router: Router::new(&agg, n)?,
                partitions: parts,
            }),
        };
        Ok(Box::new(Chain(vec![
            aggregate,
            Box::new(GroupChanges::new(
                agg.schema.clone(),
                agg.group_exprs.len(),
                state.table(PIPELINE, GROUP_CHANGES_OPERATOR),
            )?),
            Box::new(SegmentOp { segment: top.below }),
            Box::new(TopN::new(top.top, state.table(PIPELINE, TOP_OPERATOR))?),
            Box::new(SegmentOp { segment: top.above }),
        ])))
    })
}

#[tokio::test]
async fn top_n_over_an_aggregate_equals_the_batch_query_across_restores() {
    let cases = [
        "SELECT k, count(*) AS c, max(v) AS m FROM ev GROUP BY k ORDER BY c DESC, k LIMIT 2",
        "SELECT * FROM (SELECT k, sum(v) AS s, rank() OVER (ORDER BY sum(v) DESC) AS r \
         FROM ev GROUP BY k) WHERE r <= 3",
        "SELECT k, count(*) AS c FROM ev GROUP BY k HAVING count(*) > 2 \
         ORDER BY count(*), k LIMIT 3 OFFSET 1",
        "SELECT * FROM (SELECT k % 3 AS g, k, count(v) AS c, dense_rank() OVER \
         (PARTITION BY k % 3 ORDER BY count(v) DESC) AS d FROM ev GROUP BY k) WHERE d = 1",
    ];
    for sql in cases {
        let engine = Engine::in_memory();
        let session = engine.new_session("eddy", "eddy");
        run(&session, EV_SOURCE).await;
        run(&session, &format!("CREATE MATERIALIZED VIEW t AS {sql}")).await;
        let catalog = engine.catalog();
        let def = catalog
            .table(crate::catalog::DEFAULT_SCHEMA, "t")
            .expect("the view");
        let query = plan::parse_query(&def.kind.query().unwrap().sql).unwrap();
        let plan = Arc::new(plan::plan(&catalog, &query, &[]).await.unwrap());
        for seed in [8u64, 4321] {
            let source = ev_events(seed, 30, 9, 1);
            let inputs = ev_script(&plan, &source, &mut Rng(seed ^ 0xa99), false).await;
            let expected = batch_query(sql, "ev", &source).await;
            assert!(!expected.is_empty(), "seed {seed}: {sql} has rows");
            for partitions in [1, 2] {
                eprintln!("seed {seed}, {partitions} partitions: {sql}");
                let (_, emitted) = check_restores(
                    || make_over_aggregate(&plan, &def, partitions),
                    &inputs,
                    &[],
                    1 << 20,
                )
                .await
                .unwrap();
                assert_eq!(summed(&emitted), expected, "seed {seed}: {sql}");
            }
        }
    }
}
