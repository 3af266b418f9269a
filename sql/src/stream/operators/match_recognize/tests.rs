//! MATCH_RECOGNIZE over events against the batch query over the same events (a table), restored
//! at every checkpoint.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Int32Type, Int64Type, TimestampMicrosecondType};

use super::MatchRecognize;
use crate::Engine;
use crate::catalog::DEFAULT_SCHEMA;
use crate::engine::QueryOutput;
use crate::stream::harness::run_sql as run;
use crate::stream::harness::{
    Chain, EV_SOURCE, Factory, PIPELINE, Rng, check_restores, ev_events, ev_script, sorted_rows,
};
use crate::stream::manager::MATCH_OPERATOR;
use crate::stream::pipeline::SegmentOp;
use crate::stream::plan::{self, PipelinePlan};

async fn planned(engine: &Arc<Engine>, sql: &str) -> Arc<PipelinePlan> {
    let session = engine.new_session("eddy", "eddy");
    run(&session, &format!("CREATE STREAM s AS {sql}")).await;
    let catalog = engine.catalog();
    let def = catalog.table(DEFAULT_SCHEMA, "s").unwrap();
    let query = plan::parse_query(&def.kind.query().unwrap().sql).unwrap();
    let plan = plan::plan(&catalog, &query, &[]).await.unwrap();
    run(&session, "DROP STREAM s").await;
    Arc::new(plan)
}

/// The events as a table `evt`, for the batch query.
async fn table_of(engine: &Arc<Engine>, source: &[RecordBatch]) {
    let session = engine.new_session("eddy", "eddy");
    run(&session, "DROP TABLE IF EXISTS evt").await;
    run(&session, "CREATE TABLE evt (k int, v bigint, ts timestamp)").await;
    for batch in source {
        let k = batch.column(0).as_primitive::<Int32Type>();
        let v = batch.column(1).as_primitive::<Int64Type>();
        let ts = batch.column(2).as_primitive::<TimestampMicrosecondType>();
        let rows: Vec<String> = (0..batch.num_rows())
            .map(|i| {
                let k = match k.is_null(i) {
                    true => "NULL".to_string(),
                    false => k.value(i).to_string(),
                };
                let v = match v.is_null(i) {
                    true => "NULL".to_string(),
                    false => v.value(i).to_string(),
                };
                format!("({k}, {v}, to_timestamp_micros({}))", ts.value(i))
            })
            .collect();
        run(
            &session,
            &format!("INSERT INTO evt VALUES {}", rows.join(", ")),
        )
        .await;
    }
}

async fn batch_query(engine: &Arc<Engine>, sql: &str) -> Vec<RecordBatch> {
    let session = engine.new_session("eddy", "eddy");
    let sql = sql.replace("FROM ev ", "FROM evt ");
    let statement = crate::engine::Session::parse(&sql).unwrap().remove(0);
    match session.run(statement).await.unwrap() {
        QueryOutput::Rows { stream, .. } => {
            use futures::StreamExt;
            let batches: Vec<_> = stream.collect().await;
            batches.into_iter().map(|b| b.unwrap()).collect()
        }
        _ => panic!("not rows: {sql}"),
    }
}

/// Every pattern is bounded by WITHIN: the last watermark then decides every attempt, as the
/// end of a table does (without it, an attempt that can still grow stays open in a stream,
/// and holds back the matches after it in its partition).
#[tokio::test]
async fn matches_equal_the_batch_query_across_restores() {
    let cases = [
        // cep1's shape: a rise of two or more, then a fall, within 2 s.
        "SELECT * FROM ev MATCH_RECOGNIZE (PARTITION BY k ORDER BY ts \
           MEASURES FIRST(A.ts) AS started, LAST(B.v) AS peak, COUNT(B.v) AS rises \
           ONE ROW PER MATCH AFTER MATCH SKIP PAST LAST ROW \
           PATTERN (A B{2,} C) WITHIN INTERVAL '2' SECOND \
           DEFINE B AS B.v > PREV(B.v), C AS C.v < PREV(C.v))",
        // Running measures on every row, a reluctant loop, a condition on the path.
        "SELECT * FROM ev MATCH_RECOGNIZE (PARTITION BY k ORDER BY ts \
           MEASURES CLASSIFIER() AS c, SUM(A.v) AS s, MATCH_NUMBER() AS n, COUNT(*) AS len \
           ALL ROWS PER MATCH AFTER MATCH SKIP TO NEXT ROW \
           PATTERN (A+? B) WITHIN INTERVAL '3' SECOND \
           DEFINE A AS A.v > 0, B AS B.v < FIRST(A.v))",
        // A not followed by B within a second: timed-out attempts are rows too.
        "SELECT * FROM ev MATCH_RECOGNIZE (PARTITION BY k ORDER BY ts \
           MEASURES FIRST(A.ts) AS started, LAST(X.v) AS last_x, TIMED_OUT() AS timed_out, \
             count(X.*) AS xs \
           PATTERN (A X*? B) WITHIN INTERVAL '1' SECOND EMIT TIMEOUTS \
           DEFINE A AS A.v > 500, B AS B.v < 0) WHERE started IS NOT NULL",
        // No partitions; PREV reaching before the match; alternation and an optional part.
        "SELECT * FROM ev MATCH_RECOGNIZE (ORDER BY ts \
           MEASURES FIRST(A.v) AS a, PREV(FIRST(A.v), 2) AS before_a, LAST(C.ts) AS c_ts \
           AFTER MATCH SKIP TO LAST A \
           PATTERN ((A | B) C? A) WITHIN INTERVAL '5' SECOND \
           DEFINE A AS A.v > PREV(A.v, 2), B AS B.v IS NULL, C AS C.v < 0)",
    ];
    for sql in cases {
        let engine = Engine::in_memory();
        run(&engine.new_session("eddy", "eddy"), EV_SOURCE).await;
        let plan = planned(&engine, sql).await;
        let (matcher, segment) = plan.matcher.clone().expect("a MATCH_RECOGNIZE stage");
        for seed in [7u64, 2025, 31_337] {
            eprintln!("seed {seed}: {sql}");
            let source = ev_events(seed, 30, 3, 1);
            let inputs = ev_script(&plan, &source, &mut Rng(seed ^ 0x5eed), false).await;
            let make = || -> Factory {
                let matcher = matcher.clone();
                let segment = segment.clone();
                Box::new(move |state, record| {
                    Ok(Box::new(Chain(vec![
                        Box::new(MatchRecognize::restore(
                            matcher.clone(),
                            state.table(PIPELINE, MATCH_OPERATOR),
                            record.watermark,
                        )?),
                        Box::new(SegmentOp {
                            segment: segment.clone(),
                        }),
                    ])))
                })
            };
            let (_, rows) = check_restores(make, &inputs, &[], 1 << 20).await.unwrap();
            table_of(&engine, &source).await;
            let expected = batch_query(&engine, sql).await;
            let expected_rows = sorted_rows(&expected);
            assert!(
                !expected_rows.is_empty(),
                "seed {seed}: no matches to compare: {sql}"
            );
            let actual_rows = sorted_rows(&rows);
            if actual_rows != expected_rows {
                let missing: Vec<_> = expected_rows
                    .iter()
                    .filter(|r| !actual_rows.contains(r))
                    .take(5)
                    .collect();
                let extra: Vec<_> = actual_rows
                    .iter()
                    .filter(|r| !expected_rows.contains(r))
                    .take(5)
                    .collect();
                panic!(
                    "seed {seed}: {sql}\n{} rows streamed, {} in batch; missing {missing:?}; extra {extra:?}",
                    actual_rows.len(),
                    expected_rows.len()
                );
            }
        }
    }
}

/// The vectorised batch matcher against the reference matcher (backtracking over the pattern
/// as written, every DEFINE evaluated per row and path) over the same events.
#[tokio::test]
async fn batch_matcher_equals_the_reference_matcher() {
    let clauses = [
        "PARTITION BY k ORDER BY ts MEASURES COUNT(*) AS n \
           PATTERN (A B{2,} C) WITHIN INTERVAL '2' SECOND \
           DEFINE B AS B.v > PREV(B.v), C AS C.v < PREV(C.v)",
        "PARTITION BY k ORDER BY ts MEASURES COUNT(*) AS n AFTER MATCH SKIP TO NEXT ROW \
           PATTERN (A+? B) DEFINE A AS A.v > 0, B AS B.v < FIRST(A.v)",
        "PARTITION BY k ORDER BY ts MEASURES COUNT(*) AS n \
           PATTERN (A X*? B) WITHIN INTERVAL '1' SECOND EMIT TIMEOUTS \
           DEFINE A AS A.v > 500, B AS B.v < 0",
        "ORDER BY ts MEASURES COUNT(*) AS n AFTER MATCH SKIP TO LAST A \
           PATTERN ((A | B) C? A) DEFINE A AS A.v > PREV(A.v, 2), B AS B.v IS NULL, C AS C.v < 0",
        "PARTITION BY k ORDER BY ts MEASURES COUNT(*) AS n \
           PATTERN (PERMUTE(A, B, C) D*) \
           DEFINE A AS A.v > 100, B AS B.v < SUM(A.v), C AS C.v > AVG(B.v), D AS D.v > LAST(C.v)",
    ];
    let state = datafusion::prelude::SessionContext::new().state();
    for clause in clauses {
        for seed in [3u64, 77, 4096] {
            let source = ev_events(seed, 20, 3, 1);
            let parsed = crate::cep::syntax::parse_clause(clause).unwrap();
            let plan = Arc::new(
                crate::cep::run::MatchPlan::new(&parsed, source[0].schema(), &state).unwrap(),
            );
            let (_, fast) = crate::cep::run::batch_matches(plan.clone(), &source).unwrap();
            let mut slow = crate::cep::run::reference_matches(plan, &source).unwrap();
            slow.sort_by(|a, b| (&a.0, a.1.number).cmp(&(&b.0, b.1.number)));
            assert!(!slow.is_empty(), "seed {seed}: no matches: {clause}");
            assert_eq!(fast, slow, "seed {seed}: {clause}");
        }
    }
}
