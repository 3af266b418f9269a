//! Interval joins against DataFusion's batch join of the same events: INNER, LEFT (the
//! "no payment within" form), RIGHT, FULL, a join on time alone, EXISTS / NOT EXISTS / IN
//! (semi and anti joins) and window joins (TUMBLE, HOP), with batches of the two inputs
//! interleaved at random and restored at every checkpoint.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::TimestampMicrosecondType;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::IntervalJoin;
use crate::Engine;
use crate::error::Error;
use crate::stream::harness::run_sql as run;
use crate::stream::harness::{
    Chain, Factory, Input, PIPELINE, Rng, check_restores, ev_events, sorted_rows,
};
use crate::stream::manager::JOIN_OPERATOR;
use crate::stream::pipeline::{Operator, SegmentOp};
use crate::stream::plan::{self, PipelinePlan, Segment};
use crate::stream::state::StateTable;

const SOURCES: [&str; 2] = [
    "CREATE SOURCE orders (k int, v bigint, ts timestamp, \
     WATERMARK FOR ts AS ts - INTERVAL '1 second')",
    "CREATE SOURCE payments (k int, v bigint, ts timestamp, \
     WATERMARK FOR ts AS ts - INTERVAL '1 second')",
];

async fn planned(sql: &str) -> std::result::Result<Arc<PipelinePlan>, Error> {
    planned_with(sql, &[]).await
}

pub(crate) async fn planned_with(
    sql: &str,
    options: &[(String, String)],
) -> std::result::Result<Arc<PipelinePlan>, Error> {
    let engine = Engine::in_memory();
    let session = engine.new_session("eddy", "eddy");
    for source in SOURCES {
        run(&session, source).await;
    }
    let catalog = engine.catalog();
    let query = plan::parse_query(sql)?;
    Ok(Arc::new(
        plan::plan_with(&catalog, &query, &[], options).await?,
    ))
}

fn first_ts(batch: &RecordBatch) -> i64 {
    batch
        .column(2)
        .as_primitive::<TimestampMicrosecondType>()
        .value(0)
}

/// Both sources' batches through their inputs' plans, interleaved at random; after each
/// batch the input's watermark (a second behind its next batch) and, once both inputs have
/// one, their minimum as the join's; barriers at random.
pub(crate) async fn script(
    plan: &PipelinePlan,
    sources: [&[RecordBatch]; 2],
    rng: &mut Rng,
) -> Vec<Input> {
    let join = plan.combined.as_ref().expect("a join");
    let mut next = [0usize; 2];
    let mut marks: [Option<i64>; 2] = [None, None];
    let mut sent = None;
    let mut inputs = Vec::new();
    while next[0] < sources[0].len() || next[1] < sources[1].len() {
        let i = match (next[0] < sources[0].len(), next[1] < sources[1].len()) {
            (true, true) => rng.below(2) as usize,
            (true, false) => 0,
            _ => 1,
        };
        let batch = &sources[i][next[i]];
        next[i] += 1;
        for lowered in join.inputs[i].lower.run(batch.clone()).await.unwrap() {
            inputs.push(Input::BatchFrom(i, lowered));
        }
        marks[i] = Some(match sources[i].get(next[i]) {
            Some(b) => first_ts(b) - 1_000_000,
            None => i64::MAX / 2,
        });
        if let [Some(a), Some(b)] = marks {
            let w = a.min(b);
            if sent.is_none_or(|s| w > s) && rng.below(3) != 0 {
                inputs.push(Input::Watermark(w));
                sent = Some(w);
            }
        }
        if rng.below(4) == 0 {
            inputs.push(Input::Barrier);
        }
    }
    inputs.push(Input::Watermark(i64::MAX / 2));
    inputs.push(Input::Barrier);
    inputs
}

/// A factory for check_restores: the join `restore` makes from the pipeline's join state and
/// the restored watermark, then the stateless plan above the join.
pub(crate) fn join_then_lower<J>(restore: J, lower: Segment) -> Factory
where
    J: Fn(StateTable, Option<i64>) -> crate::error::Result<Box<dyn Operator>> + Clone + 'static,
{
    Box::new(move |state, record| {
        Ok(Box::new(Chain(vec![
            restore(state.table(PIPELINE, JOIN_OPERATOR), record.watermark)?,
            Box::new(SegmentOp {
                segment: lower.clone(),
            }),
        ])))
    })
}

/// `sql` as a DataFusion batch query over the orders and payments events, its rows sorted.
pub(crate) async fn batch_rows(
    sql: &str,
    orders: &[RecordBatch],
    payments: &[RecordBatch],
) -> Vec<Vec<String>> {
    let ctx = SessionContext::new();
    for (name, batches) in [("orders", orders), ("payments", payments)] {
        let table = MemTable::try_new(batches[0].schema(), vec![batches.to_vec()]).unwrap();
        ctx.register_table(name, Arc::new(table)).unwrap();
    }
    let expected = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    sorted_rows(&expected)
}

/// A case: the streaming query, the batch query it must equal, its WITH options.
type Case = (String, String, Vec<(String, String)>);

#[tokio::test]
async fn interval_joins_equal_the_batch_join_across_restores() {
    let cases = [
        "SELECT o.k, o.v, p.v AS pv, o.ts, p.ts AS pts FROM orders o JOIN payments p \
         ON p.k = o.k AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '2 seconds'",
        "SELECT o.k, o.v, o.ts FROM orders o LEFT JOIN payments p \
         ON p.k = o.k AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '2 seconds' WHERE p.k IS NULL",
        "SELECT o.v, p.k, p.v, p.ts FROM orders o RIGHT JOIN payments p ON o.k = p.k \
         AND o.ts >= p.ts - INTERVAL '1 second' AND o.ts < p.ts + INTERVAL '500 milliseconds' \
         AND p.v > o.v",
        "SELECT o.v, p.v AS pv, o.k, p.k AS pk FROM orders o FULL JOIN payments p ON o.k = p.k \
         AND o.ts BETWEEN p.ts - INTERVAL '1 second' AND p.ts + INTERVAL '1 second'",
        "SELECT o.v, p.v AS pv FROM orders o JOIN payments p \
         ON p.ts BETWEEN o.ts + INTERVAL '100 milliseconds' AND o.ts + INTERVAL '700 milliseconds'",
        "SELECT o.v, p.v AS pv FROM payments p JOIN orders o \
         ON o.k = p.k AND o.ts = p.ts - INTERVAL '0 seconds' WHERE o.v > 0",
        // A self-join: the next order of the same key within a second.
        "SELECT a.v, b.v AS bv, a.ts FROM orders a LEFT JOIN orders b ON a.k = b.k \
         AND b.ts BETWEEN a.ts + INTERVAL '1 millisecond' AND a.ts + INTERVAL '1 second'",
    ];
    // Window joins: both rows in the same window (the batch query spells the windows out as
    // TUMBLE and HOP are rewritten).
    let tumble = |t: &str| {
        format!("(SELECT k, v, date_bin(INTERVAL '2 seconds', ts) AS window_start FROM {t})")
    };
    let hop = |t: &str| {
        format!(
            "(SELECT k, v, unnest(generate_series(date_bin(INTERVAL '1 second', ts) - \
             INTERVAL '2 seconds', date_bin(INTERVAL '1 second', ts), INTERVAL '1 second')) \
             AS window_start FROM {t})"
        )
    };
    let windowed = [
        (
            "SELECT o.k, o.v, p.v AS pv, o.window_start FROM TUMBLE(orders, ts, INTERVAL '2 \
             seconds') o JOIN TUMBLE(payments, ts, INTERVAL '2 seconds') p \
             ON o.k = p.k AND o.window_start = p.window_start"
                .to_string(),
            format!(
                "SELECT o.k, o.v, p.v AS pv, o.window_start FROM {} o JOIN {} p \
                 ON o.k = p.k AND o.window_start = p.window_start",
                tumble("orders"),
                tumble("payments")
            ),
        ),
        (
            "SELECT o.k, o.v, p.v AS pv, o.window_start, p.window_start AS pw \
             FROM HOP(orders, ts, INTERVAL '1 second', INTERVAL '3 seconds') o \
             FULL JOIN HOP(payments, ts, INTERVAL '1 second', INTERVAL '3 seconds') p \
             ON o.k = p.k AND o.window_start = p.window_start"
                .to_string(),
            format!(
                "SELECT o.k, o.v, p.v AS pv, o.window_start, p.window_start AS pw FROM {} o \
                 FULL JOIN {} p ON o.k = p.k AND o.window_start = p.window_start",
                hop("orders"),
                hop("payments")
            ),
        ),
        // Orders with no payment of their key in their window.
        (
            "SELECT o.k, o.v, o.window_start FROM TUMBLE(orders, ts, INTERVAL '2 seconds') o \
             WHERE NOT EXISTS (SELECT 1 FROM TUMBLE(payments, ts, INTERVAL '2 seconds') p \
             WHERE p.k = o.k AND p.window_start = o.window_start)"
                .to_string(),
            format!(
                "SELECT o.k, o.v, o.window_start FROM {} o WHERE NOT EXISTS (SELECT 1 FROM {} p \
                 WHERE p.k = o.k AND p.window_start = o.window_start)",
                tumble("orders"),
                tumble("payments")
            ),
        ),
    ];
    // Semi and anti joins: EXISTS and NOT EXISTS within an interval.
    let semi = [
        "SELECT o.k, o.v, o.ts FROM orders o WHERE EXISTS (SELECT 1 FROM payments p \
         WHERE p.k = o.k AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '2 seconds')",
        "SELECT o.k, o.v, o.ts FROM orders o WHERE NOT EXISTS (SELECT 1 FROM payments p \
         WHERE p.k = o.k AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '2 seconds' AND p.v > o.v)",
        "SELECT p.k, p.v FROM payments p WHERE p.k IN (SELECT o.k FROM orders o \
         WHERE o.ts BETWEEN p.ts - INTERVAL '1 second' AND p.ts)",
    ];
    let cases: Vec<Case> = cases
        .iter()
        .chain(&semi)
        .map(|sql| (sql.to_string(), sql.to_string(), Vec::new()))
        .chain(windowed.into_iter().map(|(s, b)| (s, b, Vec::new())))
        .collect();
    // With state_ttl, a join without a time bound joins rows within the TTL of each other.
    let ttl = "SELECT o.v, p.v AS pv, o.k FROM orders o LEFT JOIN payments p ON o.k = p.k";
    let ttl_batch = "SELECT o.v, p.v AS pv, o.k FROM orders o LEFT JOIN payments p ON o.k = p.k \
         AND p.ts BETWEEN o.ts - INTERVAL '1500 milliseconds' AND o.ts + INTERVAL '1500 milliseconds'";
    let cases = cases.into_iter().chain([(
        ttl.to_string(),
        ttl_batch.to_string(),
        vec![("state_ttl".to_string(), "1500ms".to_string())],
    )]);
    for (sql, batch_sql, options) in cases {
        let (sql, batch_sql) = (sql.as_str(), batch_sql.as_str());
        let plan = planned_with(sql, &options)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let join = plan.combined.clone().expect("a join of two streams");
        for seed in [5u64, 808, 31_337] {
            eprintln!("seed {seed}: {sql}");
            let orders = ev_events(seed, 20, 4, 1);
            // Ties with the orders' times make the `=` bound meet rows.
            let payments = match sql.contains("o.ts = p.ts") {
                true => ev_events(seed, 20, 4, 1),
                false => ev_events(seed ^ 0x5eed, 20, 4, 1),
            };
            // Each input reads its source's events (a self-join the orders on both).
            let events = |i: usize| match join.inputs[i].source.name.as_str() {
                "orders" => &orders,
                _ => &payments,
            };
            let inputs = script(&plan, [events(0), events(1)], &mut Rng(seed ^ 0xabc)).await;
            let lower = plan.lower_segment();
            let join = join.join().expect("a join").clone();
            let make = || {
                let join = join.clone();
                join_then_lower(
                    move |state, watermark| {
                        Ok(
                            Box::new(IntervalJoin::restore(join.clone(), state, watermark)?)
                                as Box<dyn Operator>,
                        )
                    },
                    lower.clone(),
                )
            };
            let (_, rows) = check_restores(make, &inputs, &[], 1 << 20).await.unwrap();
            let expected_rows = batch_rows(batch_sql, &orders, &payments).await;
            assert!(
                !expected_rows.is_empty(),
                "seed {seed}: {sql} matches nothing"
            );
            assert_eq!(sorted_rows(&rows), expected_rows, "seed {seed}: {sql}");
        }
    }
}

#[tokio::test]
async fn the_state_holds_only_rows_that_can_still_match() {
    let sql = "SELECT o.v, p.v AS pv FROM orders o LEFT JOIN payments p \
               ON p.k = o.k AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '2 seconds'";
    let plan = planned(sql).await.unwrap();
    let join = plan.combined.clone().unwrap();
    let state = crate::stream::state::StateStore::new(
        Arc::new(crate::storage::memory::MemoryStore::new()),
        1 << 20,
    );
    let mut op = IntervalJoin::restore(
        join.join().unwrap().clone(),
        state.table(PIPELINE, JOIN_OPERATOR),
        None,
    )
    .unwrap();
    let orders = ev_events(9, 10, 4, 1);
    let payments = ev_events(10, 10, 4, 1);
    let mut out = Vec::new();
    use crate::stream::pipeline::Operator;
    for (o, p) in orders.iter().zip(&payments) {
        op.on_input(0, o.clone(), &mut out).await.unwrap();
        op.on_input(1, p.clone(), &mut out).await.unwrap();
    }
    // Orders with a NULL key can match nothing: they leave at once, padded.
    let keyed = orders
        .iter()
        .map(|b| b.num_rows() - b.column(0).null_count())
        .sum::<usize>();
    assert_eq!(op.buffered()[0], keyed, "orders wait for payments");
    // Past the last order's bound: every order is done (and each unmatched one emitted).
    let last = orders.iter().flat_map(|b| {
        b.column(2)
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec()
    });
    let w = last.max().unwrap() + 2_000_001;
    op.on_watermark(w, &mut out).await.unwrap();
    assert_eq!(op.buffered()[0], 0, "no order can still match at {w}");
}

#[tokio::test]
async fn joins_of_two_streams_without_a_time_bound_are_refused_with_a_hint() {
    for (sql, message) in [
        (
            "SELECT o.v FROM orders o JOIN payments p ON p.k = o.k",
            "needs a bound on their event times",
        ),
        (
            "SELECT o.v FROM orders o JOIN payments p ON p.k = o.k AND p.ts >= o.ts",
            "needs a bound on their event times",
        ),
        (
            "SELECT o.v FROM orders o JOIN payments p ON p.k = o.k \
             AND p.ts BETWEEN o.ts + INTERVAL '2 seconds' AND o.ts",
            "the join's time bound is empty",
        ),
    ] {
        let e = planned(sql).await.expect_err(sql);
        assert!(e.to_string().contains(message), "{sql}: {e}");
        if message.contains("bound on") {
            // Accepted with a TTL.
            let ttl = [("state_ttl".to_string(), "1h".to_string())];
            planned_with(sql, &ttl).await.unwrap();
        }
        if message.contains("bound on") {
            assert_eq!(e.sqlstate(), "0A000");
            assert!(e.hint().is_some_and(|h| h.contains("BETWEEN")), "{e:?}");
        }
    }
}
