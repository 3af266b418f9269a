//! OVER over events against DataFusion's batch query over the same events, restored at every
//! checkpoint.

use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::Over;
use crate::Engine;
use crate::catalog::DEFAULT_SCHEMA;
use crate::keys;
use crate::stream::exchange::Partitioned;
use crate::stream::harness::run_sql as run;
use crate::stream::harness::{
    Chain, EV_SOURCE, Factory, PIPELINE, Rng, check_rescales, check_restores, ev_events, ev_script,
    sorted_rows,
};
use crate::stream::manager::OVER_OPERATOR;
use crate::stream::pipeline::{Operator, SegmentOp};
use crate::stream::plan::{self, PipelinePlan};

async fn planned(sql: &str) -> Arc<PipelinePlan> {
    let engine = Engine::in_memory();
    let session = engine.new_session("eddy", "eddy");
    run(&session, EV_SOURCE).await;
    run(&session, &format!("CREATE STREAM s AS {sql}")).await;
    let catalog = engine.catalog();
    let def = catalog.table(DEFAULT_SCHEMA, "s").unwrap();
    let query = plan::parse_query(&def.kind.query().unwrap().sql).unwrap();
    Arc::new(plan::plan(&catalog, &query, &[]).await.unwrap())
}

#[tokio::test]
async fn rolling_aggregates_equal_the_batch_query_across_restores() {
    let cases = [
        "SELECT k, ts, v, avg(v) OVER (PARTITION BY k ORDER BY ts ROWS 2 PRECEDING) AS a \
         FROM ev",
        "SELECT k, ts, sum(v) OVER (PARTITION BY k ORDER BY ts \
           RANGE BETWEEN INTERVAL '1 second' PRECEDING AND CURRENT ROW) AS s, \
         count(v) OVER (PARTITION BY k ORDER BY ts ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS c \
         FROM ev WHERE v IS NULL OR v > 10",
        "SELECT ts, max(v) OVER (ORDER BY ts ROWS 4 PRECEDING) AS m, v * 2 AS d FROM ev",
        "SELECT k, ts, v, lag(v) OVER (PARTITION BY k ORDER BY ts) AS prev, \
           v - lag(v, 3) OVER (PARTITION BY k ORDER BY ts) AS d3, \
           avg(v) OVER (PARTITION BY k ORDER BY ts ROWS 2 PRECEDING) AS a \
         FROM ev",
    ];
    for sql in cases {
        let plan = planned(sql).await;
        let (over, segment) = plan.over.clone().expect("an OVER stage");
        for seed in [11u64, 2024, 99_999] {
            eprintln!("seed {seed}: {sql}");
            let source = ev_events(seed, 30, 4, 1);
            let inputs = ev_script(&plan, &source, &mut Rng(seed ^ 0xabc), false).await;
            // In one partition, and (with PARTITION BY) in three, each running the plan over
            // its results, as the runtime runs them.
            let partitionings: &[usize] = match over.partition_by.is_empty() {
                true => &[1],
                false => &[1, 3],
            };
            let make = |n: usize| -> Factory {
                let over = over.clone();
                let segment = segment.clone();
                Box::new(move |state, record| {
                    let mut parts: Vec<Box<dyn Operator>> = Vec::new();
                    for p in 0..n {
                        parts.push(Box::new(Chain(vec![
                            Box::new(Over::restore_partition(
                                over.clone(),
                                state.table(PIPELINE, OVER_OPERATOR),
                                record.watermark,
                                keys::partition_groups(p, n),
                            )?),
                            Box::new(SegmentOp {
                                segment: segment.clone(),
                            }),
                        ])));
                    }
                    Ok(match n {
                        1 => parts.pop().expect("one"),
                        n => Box::new(Partitioned {
                            router: Over::router(&over, n)?,
                            partitions: parts,
                        }),
                    })
                })
            };
            let mut results = Vec::new();
            for &n in partitionings {
                let (_, rows) = check_restores(|| make(n), &inputs, &[], 1 << 20)
                    .await
                    .unwrap();
                results.push((n, rows));
            }
            if partitionings.len() > 1 {
                for (before, after) in [(3, 2), (1, 3)] {
                    for rows in check_rescales(&make, &inputs, 1 << 20, before, after)
                        .await
                        .unwrap()
                    {
                        results.push((after, rows));
                    }
                }
            }
            let ctx = SessionContext::new();
            let table = MemTable::try_new(source[0].schema(), vec![source.clone()]).unwrap();
            ctx.register_table("ev", Arc::new(table)).unwrap();
            let expected = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            for (n, rows) in results {
                assert_eq!(
                    sorted_rows(&rows),
                    sorted_rows(&expected),
                    "seed {seed}, {n} partitions: {sql}"
                );
            }
        }
    }
}
