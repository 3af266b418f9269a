//! The multi-input driver: batches keep their input index, barriers are aligned, the
//! watermark is the inputs' minimum.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Int32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use eddy_connectors::Positions;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{Message, Operator, run_inputs};
use crate::error::Result;
use crate::stream::checkpoint::{Barrier, InputCheckpoint};

/// Records what it is given.
struct Recorder(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl Operator for Recorder {
    async fn on_batch(&mut self, _batch: RecordBatch, _out: &mut Vec<Message>) -> Result<()> {
        unreachable!("batches come by input")
    }

    async fn on_input(
        &mut self,
        input: usize,
        batch: RecordBatch,
        _out: &mut Vec<Message>,
    ) -> Result<()> {
        let v = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int32Array>()
            .unwrap();
        self.0.lock().push(format!("batch {input}:{}", v.value(0)));
        Ok(())
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        self.0.lock().push(format!("watermark {watermark}"));
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        let inputs: Vec<String> = barrier
            .inputs
            .iter()
            .map(|(i, c)| format!("{i}@{:?}", c.positions.get(&0)))
            .collect();
        self.0.lock().push(format!(
            "barrier {} watermark {:?} inputs {}",
            barrier.epoch,
            barrier.watermark,
            inputs.join(" ")
        ));
        Ok(())
    }
}

fn batch(v: i32) -> Message {
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int32, false)]));
    Message::Batch(RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![v]))]).unwrap())
}

fn barrier(epoch: u64, input: usize, offset: i64, watermark: Option<i64>) -> Message {
    let mut b = Barrier::new(epoch, watermark);
    b.inputs.insert(
        input,
        InputCheckpoint {
            positions: Positions::from([(0, offset)]),
            watermark,
            partition_watermarks: Default::default(),
        },
    );
    Message::Barrier(b)
}

#[tokio::test]
async fn barriers_are_aligned_and_the_watermark_is_the_minimum() {
    let (tx0, rx0) = mpsc::channel(16);
    let (tx1, rx1) = mpsc::channel(16);
    let (out_tx, mut out_rx) = mpsc::channel(64);
    let (_committed_tx, committed_rx) = tokio::sync::watch::channel(0);
    let log = Arc::new(Mutex::new(Vec::new()));
    // Input 0 runs ahead: its barrier and the batch after it arrive before input 1's.
    for m in [
        Message::Watermark(50),
        batch(1),
        barrier(1, 0, 10, Some(50)),
        batch(2),
        Message::Watermark(90),
    ] {
        tx0.send(m).await.unwrap();
    }
    for m in [
        batch(100),
        Message::Watermark(30),
        batch(101),
        barrier(1, 1, 20, Some(30)),
        Message::Watermark(70),
        batch(102),
    ] {
        tx1.send(m).await.unwrap();
    }
    drop((tx0, tx1));
    let op = Box::new(Recorder(log.clone()));
    run_inputs(
        op,
        vec![rx0, rx1],
        out_tx,
        committed_rx,
        vec![None, None],
        Barrier::merge,
    )
    .await
    .unwrap();
    let log = log.lock().clone();
    let at = |s: &str| {
        log.iter()
            .position(|l| l == s)
            .unwrap_or_else(|| panic!("{s} not in {log:?}"))
    };
    let barrier = at("barrier 1 watermark Some(30) inputs 0@Some(10) 1@Some(20)");
    // Everything before each input's barrier is before the merged barrier, nothing after.
    for before in ["batch 0:1", "batch 1:100", "batch 1:101", "watermark 30"] {
        assert!(at(before) < barrier, "{before} before the barrier: {log:?}");
    }
    for after in ["batch 0:2", "batch 1:102", "watermark 70"] {
        assert!(at(after) > barrier, "{after} after the barrier: {log:?}");
    }
    // The watermark waits for both inputs, then follows the slower one, never backwards.
    let marks: Vec<i64> = log
        .iter()
        .filter_map(|l| l.strip_prefix("watermark ")?.parse().ok())
        .collect();
    assert_eq!(marks.first(), Some(&30), "{log:?}");
    assert_eq!(marks.last(), Some(&70), "{log:?}");
    assert!(marks.windows(2).all(|w| w[0] < w[1]), "{log:?}");
    let mut out = Vec::new();
    while let Ok(m) = out_rx.try_recv() {
        out.push(m);
    }
    let barriers: Vec<u64> = out
        .iter()
        .filter_map(|m| match m {
            Message::Barrier(b) => Some(b.epoch),
            _ => None,
        })
        .collect();
    assert_eq!(barriers, vec![1], "one merged barrier goes on");
}
