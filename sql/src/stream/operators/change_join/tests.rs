//! The join of two views against DataFusion's batch join of their final rows: random inserts
//! and deletes on both sides (rows repeat, keys repeat, NULL keys), restored at every
//! checkpoint; the changes it emits, summed, must equal the batch join.

use std::sync::Arc;

use datafusion::arrow::array::{Int32Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::JoinType;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::joins::utils::build_join_schema;
use datafusion::prelude::SessionContext;

use super::{ChangeJoin, ChangeJoinPlan};
use crate::stream::changelog::{self, Op};
use crate::stream::harness::{Factory, Input, PIPELINE, Rng, check_restores, sorted_rows, summed};
use crate::stream::manager::JOIN_OPERATOR;

fn side(value: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int32, true),
        Field::new(value, DataType::Int64, true),
    ]))
}

fn plan(join_type: JoinType) -> Arc<ChangeJoinPlan> {
    let inputs = [side("a"), side("b")];
    let schema = Arc::new(build_join_schema(&inputs[0], &inputs[1], &join_type).0);
    Arc::new(ChangeJoinPlan {
        join_type,
        keys: [
            vec![Arc::new(Column::new("k", 0))],
            vec![Arc::new(Column::new("k", 0))],
        ],
        inputs,
        filter: None,
        schema,
        projection: None,
    })
}

/// Each side's rows: (key, value).
type Sides = [Vec<(Option<i32>, i64)>; 2];

/// Random changes to both sides; returns the script and each side's final rows.
fn script(seed: u64) -> (Vec<Input>, Sides) {
    let mut rng = Rng(seed);
    let mut rows: Sides = Default::default();
    let mut inputs = Vec::new();
    for _ in 0..60 {
        let input = rng.below(2) as usize;
        let mut changes = Vec::new();
        for _ in 0..1 + rng.below(6) {
            let held = &mut rows[input];
            if !held.is_empty() && rng.below(3) == 0 {
                let i = rng.below(held.len() as u64) as usize;
                changes.push((held.swap_remove(i), Op::Delete));
            } else {
                let k = match rng.below(8) {
                    0 => None,
                    k => Some(k as i32),
                };
                let row = (k, rng.below(4) as i64);
                held.push(row);
                changes.push((row, Op::Insert));
            }
        }
        let batch = RecordBatch::try_new(
            side(if input == 0 { "a" } else { "b" }),
            vec![
                Arc::new(changes.iter().map(|c| c.0.0).collect::<Int32Array>()),
                Arc::new(changes.iter().map(|c| c.0.1).collect::<Int64Array>()),
            ],
        )
        .unwrap();
        let ops = changes.iter().map(|c| c.1 as i8).collect();
        inputs.push(Input::ChangesFrom(
            input,
            changelog::with_ops(&batch, ops).unwrap(),
        ));
        if rng.below(4) == 0 {
            inputs.push(Input::Barrier);
        }
    }
    inputs.push(Input::Barrier);
    (inputs, rows)
}

async fn batch_join(rows: &Sides, join: &str) -> Vec<Vec<String>> {
    let ctx = SessionContext::new();
    for (i, name) in ["l", "r"].into_iter().enumerate() {
        let batch = RecordBatch::try_new(
            side(if i == 0 { "a" } else { "b" }),
            vec![
                Arc::new(rows[i].iter().map(|r| r.0).collect::<Int32Array>()),
                Arc::new(rows[i].iter().map(|r| r.1).collect::<Int64Array>()),
            ],
        )
        .unwrap();
        ctx.register_batch(name, batch).unwrap();
    }
    let batches = ctx
        .sql(&format!(
            "SELECT l.k, l.a, r.k, r.b FROM l {join} JOIN r ON l.k = r.k"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    sorted_rows(&batches)
}

#[tokio::test]
async fn joins_of_two_changelogs_equal_the_batch_join_across_restores() {
    for (join_type, sql) in [
        (JoinType::Inner, "INNER"),
        (JoinType::Left, "LEFT"),
        (JoinType::Right, "RIGHT"),
        (JoinType::Full, "FULL"),
    ] {
        for seed in [11u64, 2024, 77_777] {
            eprintln!("{sql}, seed {seed}");
            let (inputs, rows) = script(seed);
            let make = || -> Factory {
                Box::new(move |state, _record| {
                    Ok(Box::new(ChangeJoin::restore(
                        plan(join_type),
                        state.table(PIPELINE, JOIN_OPERATOR),
                    )?))
                })
            };
            let (_, emitted) = check_restores(make, &inputs, &[], 1 << 20).await.unwrap();
            let mut got = summed(&emitted);
            got.sort();
            let expected = batch_join(&rows, sql).await;
            assert!(
                !expected.is_empty(),
                "seed {seed}: the script joins some rows"
            );
            assert_eq!(got, expected, "{sql} join, seed {seed}");
        }
    }
}
