//! Lookup joins against DataFusion's batch join of the same events and table rows: INNER and
//! LEFT, a two-column key, NULL and missing keys, conditions on the table side and across
//! both sides.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::LookupJoin;
use crate::Engine;
use crate::catalog::DEFAULT_SCHEMA;
use crate::stream::harness::run_sql as run;
use crate::stream::harness::{Rng, sorted_rows};
use crate::stream::pipeline::{Message, Operator, SegmentOp};
use crate::stream::plan;

const LETTERS: [&str; 3] = ["x", "y", "z"];

/// Random table rows (a, b, label, score): keys (0..8, x|y|z), some missing.
fn dim_rows(rng: &mut Rng) -> Vec<(i32, &'static str, String, Option<i32>)> {
    let mut rows = Vec::new();
    for a in 0..8 {
        for b in LETTERS {
            if rng.below(4) != 0 {
                let score = (rng.below(6) != 0).then(|| rng.below(100) as i32);
                rows.push((a, b, format!("l{}", rng.below(1000)), score));
            }
        }
    }
    rows
}

fn dim_batch(rows: &[(i32, &'static str, String, Option<i32>)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int32, false),
        Field::new("b", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, true),
        Field::new("score", DataType::Int32, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| r.0).collect::<Int32Array>()),
        Arc::new(rows.iter().map(|r| Some(r.1)).collect::<StringArray>()),
        Arc::new(
            rows.iter()
                .map(|r| Some(r.2.clone()))
                .collect::<StringArray>(),
        ),
        Arc::new(rows.iter().map(|r| r.3).collect::<Int32Array>()),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

/// Random event batches (k, kb, v): keys hit, miss (a = 9) or are NULL.
fn event_batches(rng: &mut Rng) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int32, true),
        Field::new("kb", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
    ]));
    (0..12)
        .map(|_| {
            let n = 1 + rng.below(40) as usize;
            let mut k = Vec::new();
            let mut kb = Vec::new();
            let mut v = Vec::new();
            for _ in 0..n {
                k.push((rng.below(8) != 0).then(|| rng.below(10) as i32));
                kb.push((rng.below(8) != 0).then(|| LETTERS[rng.below(3) as usize]));
                v.push((rng.below(8) != 0).then(|| rng.below(100) as i64));
            }
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int32Array::from(k)),
                Arc::new(StringArray::from(kb)),
                Arc::new(Int64Array::from(v)),
            ];
            RecordBatch::try_new(schema.clone(), columns).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn lookup_joins_equal_the_batch_join() {
    let queries = [
        "SELECT e.k, e.kb, e.v, d.label, d.score FROM ev e JOIN dim d ON d.a = e.k AND d.b = e.kb",
        "SELECT e.k, e.kb, e.v, d.label FROM ev e LEFT JOIN dim d ON e.kb = d.b AND e.k = d.a",
        "SELECT e.v, d.label FROM ev e JOIN dim d ON d.a = e.k AND d.b = e.kb \
         WHERE d.score > 50 AND e.v < 80",
        "SELECT e.k, e.v, d.label, d.score FROM ev e LEFT JOIN dim d \
         ON d.a = e.k AND d.b = e.kb AND d.score > e.v",
        "SELECT d.label, e.v + d.score AS s FROM dim d JOIN ev e ON d.a = e.k AND d.b = e.kb",
    ];
    for seed in [3u64, 77, 4242] {
        eprintln!("seed {seed}");
        let mut rng = Rng(seed);
        let dim = dim_rows(&mut rng);
        let events = event_batches(&mut rng);
        let engine = Engine::in_memory();
        let session = engine.new_session("eddy", "eddy");
        run(
            &session,
            "CREATE TABLE dim (a int, b text, label text, score int, PRIMARY KEY (a, b))",
        )
        .await;
        let values: Vec<String> = dim
            .iter()
            .map(|(a, b, l, s)| {
                let s = s.map_or("NULL".to_string(), |s| s.to_string());
                format!("({a}, '{b}', '{l}', {s})")
            })
            .collect();
        run(
            &session,
            &format!("INSERT INTO dim VALUES {}", values.join(", ")),
        )
        .await;
        run(&session, "CREATE SOURCE ev (k int, kb text, v bigint)").await;
        let ctx = SessionContext::new();
        let ev = MemTable::try_new(events[0].schema(), vec![events.clone()]).unwrap();
        ctx.register_table("ev", Arc::new(ev)).unwrap();
        ctx.register_batch("dim", dim_batch(&dim)).unwrap();
        for (i, sql) in queries.iter().enumerate() {
            run(&session, &format!("CREATE STREAM s{i} AS {sql}")).await;
            let catalog = engine.catalog();
            let def = catalog.table(DEFAULT_SCHEMA, &format!("s{i}")).unwrap();
            let query = plan::parse_query(&def.kind.query().unwrap().sql).unwrap();
            let plan = plan::plan(&catalog, &query, &[]).await.unwrap();
            assert_eq!(plan.lookups.len(), 1, "{sql}");
            let mut stages: Vec<Box<dyn Operator>> = Vec::new();
            for (join, segment) in &plan.lookups {
                stages.push(Box::new(LookupJoin {
                    plan: join.clone(),
                    kv: engine.kv().clone(),
                }));
                stages.push(Box::new(SegmentOp {
                    segment: segment.clone(),
                }));
            }
            let mut got = Vec::new();
            for batch in &events {
                let mut batches = plan.run_lower(batch.clone()).await.unwrap();
                for stage in stages.iter_mut() {
                    let mut out = Vec::new();
                    for b in batches {
                        stage.on_batch(b, &mut out).await.unwrap();
                    }
                    batches = out
                        .into_iter()
                        .filter_map(|m| match m {
                            Message::Batch(b) | Message::Events(b, _) => Some(b),
                            _ => None,
                        })
                        .collect();
                }
                got.extend(batches);
            }
            let expected = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            assert_eq!(
                sorted_rows(&got),
                sorted_rows(&expected),
                "seed {seed}: {sql}"
            );
        }
    }
}
