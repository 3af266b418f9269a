//! Views over an updating view, in-process: random upserts and deletes of a grouping view's
//! rows go through the normalizer, the stateless plan and a retracting aggregate (or the
//! multiset store), restored at every checkpoint; the stored result must equal DataFusion's
//! batch query over the view's final rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Int32Array, Int64Array, RecordBatch,
};
use datafusion::prelude::SessionContext;

use super::Normalize;
use crate::Engine;
use crate::catalog::{DEFAULT_SCHEMA, TableDef};
use crate::codec::row::RowDecoder;
use crate::keys;
use crate::storage::WriteOp;
use crate::stream::aggregate::Aggregator;
use crate::stream::changelog::upsert_schema;
use crate::stream::harness::run_sql as run;
use crate::stream::harness::{
    EV_SOURCE, Factory, Input, PIPELINE, Rng, check_restores, sorted_rows,
};
use crate::stream::manager::{AGGREGATE_OPERATOR, MATERIALIZE_OPERATOR, NORMALIZE_OPERATOR};
use crate::stream::operators::materialize::Materialize;
use crate::stream::pipeline::{AggregateOp, Operator, Stateless};
use crate::stream::plan::{self, PipelinePlan, ViewInput};
use crate::stream::view::ViewWriter;

const UP: &str = "SELECT k, sum(v) AS s, count(*) AS n FROM ev GROUP BY k";

/// The view `up` and, planned over it, the view `down` of `down_sql`.
async fn planned(down_sql: &str) -> (Arc<TableDef>, Arc<TableDef>, Arc<PipelinePlan>) {
    let engine = Engine::in_memory();
    let session = engine.new_session("eddy", "eddy");
    run(&session, EV_SOURCE).await;
    run(&session, &format!("CREATE MATERIALIZED VIEW up AS {UP}")).await;
    run(
        &session,
        &format!("CREATE MATERIALIZED VIEW down AS {down_sql}"),
    )
    .await;
    let catalog = engine.catalog();
    let up = catalog.table(DEFAULT_SCHEMA, "up").expect("up");
    let down = catalog.table(DEFAULT_SCHEMA, "down").expect("down");
    let query = plan::parse_query(&down.kind.query().expect("query").sql).unwrap();
    let plan = plan::plan(&catalog, &query, &[]).await.unwrap();
    assert_eq!(plan.view_input, Some(ViewInput::Updates));
    (up, down, Arc::new(plan))
}

/// A script of random upserts and deletes of `up`'s rows (k, s, n), as its changelog reads
/// them, with barriers at random; and the rows `up` holds at the end.
fn script(up: &TableDef, seed: u64) -> (Vec<Input>, BTreeMap<i32, (i64, i64)>) {
    let mut rng = Rng(seed);
    let mut current: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let writer = ViewWriter::new(Arc::new(up.clone()));
    let prefix = up.key_prefix();
    let mut inputs = Vec::new();
    for _ in 0..50 {
        let mut rows: Vec<(i32, i64, i64, bool)> = Vec::new();
        for _ in 0..1 + rng.below(8) {
            let k = rng.below(10) as i32;
            match current.get(&k) {
                Some(&(s, n)) if rng.below(5) == 0 => {
                    current.remove(&k);
                    rows.push((k, s, n, false));
                }
                _ => {
                    let (s, n) = (rng.below(400) as i64 - 100, 1 + rng.below(4) as i64);
                    current.insert(k, (s, n));
                    rows.push((k, s, n, true));
                }
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(rows.iter().map(|r| r.0).collect::<Int32Array>()),
            Arc::new(rows.iter().map(|r| r.1).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.2).collect::<Int64Array>()),
        ];
        let keep = BooleanArray::from(rows.iter().map(|r| r.3).collect::<Vec<_>>());
        let rows = RecordBatch::try_new(up.arrow_schema(), columns).unwrap();
        let groups = vec![Vec::new(); rows.num_rows()];
        let ops = writer.rows(&rows, Some(&keep), &groups).unwrap();
        let (keys, values): (Vec<Vec<u8>>, Vec<Option<Vec<u8>>>) = ops
            .into_iter()
            .map(|op| match op {
                WriteOp::Put(k, v) => (k[prefix.len()..].to_vec(), Some(v)),
                WriteOp::Delete(k) => (k[prefix.len()..].to_vec(), None),
                other => panic!("unexpected {other:?}"),
            })
            .unzip();
        let upserts = RecordBatch::try_new(
            upsert_schema(),
            vec![
                Arc::new(BinaryArray::from_iter_values(keys)),
                Arc::new(values.iter().map(|v| v.as_deref()).collect::<BinaryArray>()),
            ],
        )
        .unwrap();
        inputs.push(Input::Batch(upserts));
        if rng.below(3) == 0 {
            inputs.push(Input::Barrier);
        }
    }
    inputs.push(Input::Barrier);
    (inputs, current)
}

/// What DataFusion computes over `up`'s final rows.
async fn batch_result(rows: &BTreeMap<i32, (i64, i64)>, sql: &str) -> Vec<Vec<String>> {
    let ctx = SessionContext::new();
    let up = RecordBatch::try_new(
        Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new(
                "k",
                datafusion::arrow::datatypes::DataType::Int32,
                true,
            ),
            datafusion::arrow::datatypes::Field::new(
                "s",
                datafusion::arrow::datatypes::DataType::Int64,
                true,
            ),
            datafusion::arrow::datatypes::Field::new(
                "n",
                datafusion::arrow::datatypes::DataType::Int64,
                true,
            ),
        ])),
        vec![
            Arc::new(rows.keys().copied().collect::<Int32Array>()),
            Arc::new(rows.values().map(|r| r.0).collect::<Int64Array>()),
            Arc::new(rows.values().map(|r| r.1).collect::<Int64Array>()),
        ],
    )
    .unwrap();
    ctx.register_batch("up", up).unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    sorted_rows(&batches)
}

/// The rows stored under a view's prefix.
fn stored_rows(def: &TableDef, entries: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<Vec<String>> {
    let mut decoder = RowDecoder::new(&def.types(), None, entries.len());
    for v in entries.values() {
        decoder.append(v).unwrap();
    }
    let batch = RecordBatch::try_new(def.arrow_schema(), decoder.finish().unwrap()).unwrap();
    sorted_rows(&[batch])
}

/// Normalize, the stateless plan, then `last` (the aggregate or the multiset store).
fn chain(
    up: &Arc<TableDef>,
    plan: &Arc<PipelinePlan>,
    last: impl Fn(&crate::stream::state::StateStore) -> Result<Box<dyn Operator>, crate::error::Error>
    + 'static,
) -> Factory {
    let (up, plan) = (up.clone(), plan.clone());
    Box::new(move |state, _record| {
        let stages: Vec<Box<dyn Operator>> = vec![
            Box::new(Normalize::new(
                up.clone(),
                state.table(PIPELINE, NORMALIZE_OPERATOR),
            )),
            Box::new(Stateless {
                lower: plan.lower_segment(),
                name: "down".into(),
                errors: None,
                metrics: Default::default(),
            }),
            last(state)?,
        ];
        Ok(Box::new(crate::stream::harness::Chain(stages)))
    })
}

#[tokio::test]
async fn aggregates_of_an_updating_view_equal_the_batch_query_across_restores() {
    let sql =
        "SELECT n, count(*) AS c, sum(s) AS total, min(s) AS lo, max(s) AS hi FROM up GROUP BY n";
    let (up, down, plan) = planned(sql).await;
    for seed in [3u64, 77, 4242] {
        eprintln!("seed {seed}");
        let (inputs, current) = script(&up, seed);
        let expected = batch_result(&current, sql).await;
        // Groups kept in memory, and every group read back from its state after each barrier.
        for budget in [64 << 20, 0] {
            let agg = plan.aggregate.clone().expect("an aggregate");
            assert!(agg.retract);
            let view = down.clone();
            let make = || {
                let (agg, view) = (agg.clone(), view.clone());
                chain(&up, &plan, move |state| {
                    Ok(Box::new(AggregateOp::Groups(Aggregator::restore(
                        agg.clone(),
                        state.table(PIPELINE, AGGREGATE_OPERATOR),
                        budget,
                        false,
                        None,
                        ViewWriter::new(view.clone()),
                    )?)))
                })
            };
            let prefix = keys::table_prefix(down.id);
            let (stored, _) = check_restores(make, &inputs, &prefix, 1 << 10)
                .await
                .unwrap();
            assert_eq!(
                stored_rows(&down, &stored),
                expected,
                "seed {seed}, budget {budget}"
            );
        }
    }
}

#[tokio::test]
async fn a_filter_of_an_updating_view_stores_its_rows_as_a_multiset() {
    let sql = "SELECT n, s FROM up WHERE s > 100";
    let (up, down, plan) = planned(sql).await;
    assert!(plan.aggregate.is_none());
    for seed in [5u64, 99, 31337] {
        eprintln!("seed {seed}");
        let (inputs, current) = script(&up, seed);
        let expected = batch_result(&current, sql).await;
        let view = down.clone();
        let make = || {
            let view = view.clone();
            chain(&up, &plan, move |state| {
                Ok(Box::new(Materialize::new(
                    ViewWriter::new(view.clone()),
                    state.table(PIPELINE, MATERIALIZE_OPERATOR),
                )))
            })
        };
        let prefix = keys::table_prefix(down.id);
        let (stored, _) = check_restores(make, &inputs, &prefix, 1 << 10)
            .await
            .unwrap();
        assert_eq!(stored_rows(&down, &stored), expected, "seed {seed}");
    }
}
