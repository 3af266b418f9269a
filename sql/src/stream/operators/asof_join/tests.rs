//! ASOF joins against a batch query of the same events (the latest payment of the order's key
//! at or before it, found by max(ts) and joined back), with the two inputs' batches
//! interleaved at random and restored at every checkpoint.

use std::sync::Arc;

use super::AsofJoin;
use crate::stream::harness::{PIPELINE, Rng, check_restores, ev_events, sorted_rows};
use crate::stream::manager::JOIN_OPERATOR;
use crate::stream::operators::interval_join::tests::{
    batch_rows, join_then_lower, planned_with, script,
};
use crate::stream::pipeline::Operator;
use crate::stream::plan::Combine;

/// The latest payment (of the order's key, when `keyed`) at or before each order (`<`
/// when strict), as a batch query: the time found by max, the payment joined back by it.
fn reference(keyed: bool, strict: bool, outer: bool) -> String {
    let key = |a: &str, b: &str| match keyed {
        true => format!("{a}.k = {b}.k AND "),
        false => String::new(),
    };
    format!(
        "WITH latest AS (SELECT o.k, o.v, o.ts, max(p.ts) AS pts FROM orders o \
           LEFT JOIN payments p ON {}p.ts {} o.ts GROUP BY o.k, o.v, o.ts) \
         SELECT l.k, l.v, l.ts, p.v AS pv, p.ts AS pts FROM latest l {} JOIN payments p \
           ON {}p.ts = l.pts",
        key("p", "o"),
        if strict { "<" } else { "<=" },
        if outer { "LEFT" } else { "INNER" },
        key("p", "l"),
    )
}

#[tokio::test]
async fn asof_joins_equal_the_batch_query_across_restores() {
    let select = "SELECT o.k, o.v, o.ts, p.v AS pv, p.ts AS pts";
    let cases = [
        (
            format!(
                "{select} FROM orders o ASOF JOIN payments p MATCH_CONDITION (o.ts >= p.ts) \
                 ON o.k = p.k"
            ),
            reference(true, false, true),
        ),
        (
            format!(
                "{select} FROM orders o ASOF JOIN payments p MATCH_CONDITION (p.ts < o.ts) \
                 ON o.k = p.k"
            ),
            reference(true, true, true),
        ),
        (
            format!("{select} FROM orders o ASOF JOIN payments p MATCH_CONDITION (o.ts >= p.ts)"),
            reference(false, false, true),
        ),
        // A temporal join: the payment "version" in force at the order's time.
        (
            format!(
                "{select} FROM orders o JOIN payments FOR SYSTEM_TIME AS OF o.ts AS p \
                 ON o.k = p.k"
            ),
            reference(true, false, false),
        ),
        (
            format!(
                "{select} FROM orders o LEFT JOIN payments AS p FOR SYSTEM_TIME AS OF o.ts \
                 ON o.k = p.k"
            ),
            reference(true, false, true),
        ),
    ];
    for (sql, batch_sql) in cases {
        let plan = planned_with(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let combined = plan.combined.clone().expect("a join of two streams");
        let Combine::Asof(join) = &combined.op else {
            panic!("{sql}: not an ASOF join");
        };
        for seed in [3u64, 77, 4242] {
            eprintln!("seed {seed}: {sql}");
            let orders = ev_events(seed, 20, 4, 1);
            // Payments at the orders' very times tell `<` from `<=`.
            let payments = match sql.contains("p.ts < o.ts") {
                true => ev_events(seed, 20, 4, 1),
                false => ev_events(seed ^ 0xfeed, 12, 4, 1),
            };
            let inputs = script(&plan, [&orders, &payments], &mut Rng(seed ^ 0x51)).await;
            let lower = plan.lower_segment();
            let make = || {
                let join = join.clone();
                join_then_lower(
                    move |state, watermark| {
                        Ok(Box::new(AsofJoin::restore(join.clone(), state, watermark)?)
                            as Box<dyn Operator>)
                    },
                    lower.clone(),
                )
            };
            let (_, rows) = check_restores(make, &inputs, &[], 1 << 20).await.unwrap();
            let expected_rows = batch_rows(&batch_sql, &orders, &payments).await;
            assert!(
                expected_rows.iter().any(|r| r[3] != "NULL"),
                "seed {seed}: {sql} matches nothing"
            );
            assert_eq!(sorted_rows(&rows), expected_rows, "seed {seed}: {sql}");
        }
    }
}

#[tokio::test]
async fn the_state_keeps_one_version_per_key_behind_the_watermark() {
    let sql = "SELECT o.v, p.v AS pv FROM orders o ASOF JOIN payments p \
               MATCH_CONDITION (o.ts >= p.ts) ON o.k = p.k";
    let plan = planned_with(sql, &[]).await.unwrap();
    let Combine::Asof(join) = &plan.combined.as_ref().unwrap().op else {
        panic!("not an ASOF join");
    };
    let state = crate::stream::state::StateStore::new(
        Arc::new(crate::storage::memory::MemoryStore::new()),
        1 << 20,
    );
    let mut op =
        AsofJoin::restore(join.clone(), state.table(PIPELINE, JOIN_OPERATOR), None).unwrap();
    let orders = ev_events(9, 10, 4, 1);
    let payments = ev_events(10, 10, 4, 1);
    let mut out = Vec::new();
    for (o, p) in orders.iter().zip(&payments) {
        op.on_input(0, o.clone(), &mut out).await.unwrap();
        op.on_input(1, p.clone(), &mut out).await.unwrap();
    }
    let keyed = |batches: &[datafusion::arrow::array::RecordBatch]| {
        batches
            .iter()
            .map(|b| b.num_rows() - b.column(0).null_count())
            .sum::<usize>()
    };
    assert_eq!(op.held(), (keyed(&orders), keyed(&payments)));
    op.on_watermark(i64::MAX / 2, &mut out).await.unwrap();
    let (waiting, versions) = op.held();
    assert_eq!(waiting, 0, "every order is answered");
    assert!(versions <= 4, "one payment per key stays, not {versions}");
}
