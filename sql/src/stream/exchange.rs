//! Parallel pipelines: the stages that spread rows over the partitions of a keyed operator
//! and gather them again.
//!
//! ```text
//!                 ┌─► stateless ─► exchange ─┬─► aggregate 0 ─┐
//! source ─► spread┤                          ╳                ├─► gather ─► … ─► sink
//!                 └─► stateless ─► exchange ─┴─► aggregate 1 ─┘
//! ```
//!
//! - [`run_spread`] deals the source's batches out in turn to copies of the stateless stage
//!   (appending inputs only: the order of an updating view's changes must hold per key).
//! - [`run_exchange`] sends each row to the partition that owns its key: the row encoding of
//!   the GROUP BY columns, hashed to a key group ([`crate::keys::key_group`]), owned by one
//!   partition ([`crate::keys::partition_of`]). It is the group's key in the aggregate's state
//!   table too, so a partition reads and writes only keys of its own groups, and a restart
//!   with another number of partitions finds every group where its new owner looks.
//! - The partitions and the gather stage run under [`super::pipeline::run_inputs`] with
//!   [`Barrier::merge_copies`]: each takes a barrier once every input has delivered it, so the
//!   state each partition writes with a checkpoint holds exactly the rows before the barrier,
//!   and its watermark is the minimum of its inputs'.
//!
//! Watermarks and barriers go to every output; a barrier's writes (and other writes, such as
//! dead letters) go to the first only, so they are committed once.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_plan::PhysicalExpr;
use tokio::sync::mpsc;

use super::checkpoint::Barrier;
use super::pipeline::{Message, Operator};
use super::plan::AggregatePlan;
use crate::error::{Error, Result};
use crate::keys::{key_group, partition_of};

/// Which partition each row of a batch goes to.
pub struct Router {
    /// The partitioning key (no expression: every row has the empty key).
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    keys: RowConverter,
    partitions: usize,
}

impl Router {
    /// Routes the input rows of `plan` by its group key over `partitions` (HOP windows in
    /// panes: by the key's other columns, so every pane of a window meets in one partition).
    pub fn new(plan: &AggregatePlan, partitions: usize) -> Result<Self> {
        let groups = plan.group_exprs.len();
        let columns: Vec<usize> = match plan.panes() {
            Some(hop) => hop.key_order(groups)[..groups - hop.columns.len()].to_vec(),
            None => (0..groups).collect(),
        };
        let exprs = columns
            .iter()
            .map(|&i| plan.group_exprs[i].0.clone())
            .collect();
        let types = columns
            .iter()
            .map(|&i| plan.schema.field(i).data_type().clone())
            .collect();
        Self::by(exprs, types, partitions)
    }

    /// Routes rows by the values of `exprs` (of types `types`), encoded as the operator
    /// behind the exchange encodes its keys.
    pub fn by(
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        types: Vec<DataType>,
        partitions: usize,
    ) -> Result<Self> {
        let fields = types.into_iter().map(SortField::new).collect();
        Ok(Self {
            exprs,
            keys: RowConverter::new(fields)?,
            partitions,
        })
    }

    /// `batch` split by partition (None where a partition gets no row).
    pub fn split(&self, batch: &RecordBatch) -> Result<Vec<Option<RecordBatch>>> {
        let mut parts: Vec<Option<RecordBatch>> = vec![None; self.partitions];
        let n = batch.num_rows();
        if n == 0 {
            return Ok(parts);
        }
        if self.exprs.is_empty() {
            // One group, keyed by no bytes.
            parts[partition_of(key_group(&[]), self.partitions)] = Some(batch.clone());
            return Ok(parts);
        }
        let columns = self
            .exprs
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(n))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let rows = self.keys.convert_columns(&columns)?;
        let mut indices: Vec<Vec<u32>> = vec![Vec::new(); self.partitions];
        for i in 0..n {
            let p = partition_of(key_group(rows.row(i).data()), self.partitions);
            indices[p].push(i as u32);
        }
        for (p, idx) in indices.into_iter().enumerate() {
            parts[p] = match idx.len() {
                0 => None,
                len if len == n => Some(batch.clone()),
                _ => Some(take_record_batch(batch, &UInt32Array::from(idx))?),
            };
        }
        Ok(parts)
    }
}

fn closed() -> Error {
    Error::internal("pipeline stage stopped")
}

/// A barrier for each of `n` outputs: the first keeps its writes, the others carry none.
fn barrier_copies(barrier: Barrier, n: usize) -> Vec<Barrier> {
    let mut copies: Vec<Barrier> = (1..n).map(|_| barrier.clone_without_writes()).collect();
    copies.insert(0, barrier);
    copies
}

/// Sends watermarks and barriers to every output, writes to the first.
async fn broadcast(message: Message, outputs: &[mpsc::Sender<Message>]) -> Result<()> {
    match message {
        Message::Watermark(w) => {
            for tx in outputs {
                tx.send(Message::Watermark(w)).await.map_err(|_| closed())?;
            }
        }
        Message::Barrier(b) => {
            for (tx, b) in outputs.iter().zip(barrier_copies(b, outputs.len())) {
                tx.send(Message::Barrier(b)).await.map_err(|_| closed())?;
            }
        }
        other => outputs[0].send(other).await.map_err(|_| closed())?,
    }
    Ok(())
}

/// Sends each batch of rows to the partitions that own them.
pub async fn run_exchange(
    mut rx: mpsc::Receiver<Message>,
    router: Router,
    outputs: Vec<mpsc::Sender<Message>>,
) -> Result<()> {
    while let Some(message) = rx.recv().await {
        let (batch, changes) = match message {
            Message::Batch(b) | Message::Events(b, _) => (b, false),
            Message::Changes(c) => (c, true),
            other => {
                broadcast(other, &outputs).await?;
                continue;
            }
        };
        for (tx, part) in outputs.iter().zip(router.split(&batch)?) {
            if let Some(part) = part {
                let m = match changes {
                    true => Message::Changes(part),
                    false => Message::Batch(part),
                };
                tx.send(m).await.map_err(|_| closed())?;
            }
        }
    }
    Ok(())
}

/// Deals the source's batches out to the outputs in turn (copies of a stateless stage).
pub async fn run_spread(
    mut rx: mpsc::Receiver<Message>,
    outputs: Vec<mpsc::Sender<Message>>,
) -> Result<()> {
    let mut next = 0;
    while let Some(message) = rx.recv().await {
        match message {
            m @ (Message::Batch(_) | Message::Events(..)) => {
                outputs[next].send(m).await.map_err(|_| closed())?;
                next = (next + 1) % outputs.len();
            }
            Message::Changes(_) => {
                return Err(Error::internal("a changelog was spread over partitions"));
            }
            other => broadcast(other, &outputs).await?,
        }
    }
    Ok(())
}

/// The partitions' outputs as one stream (under `run_inputs`, which aligns their barriers and
/// forwards the minimum of their watermarks).
pub struct Gather;

#[async_trait::async_trait]
impl Operator for Gather {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Batch(batch));
        Ok(())
    }

    async fn on_changes(&mut self, changes: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Changes(changes));
        Ok(())
    }
}

/// Runs partitions of a keyed operator one after the other in one operator: what the
/// runtime does with tasks and channels, for operator tests in the harness.
#[cfg(test)]
pub struct Partitioned {
    pub router: Router,
    pub partitions: Vec<Box<dyn Operator>>,
}

#[cfg(test)]
#[async_trait::async_trait]
impl Operator for Partitioned {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        for (op, part) in self.partitions.iter_mut().zip(self.router.split(&batch)?) {
            if let Some(part) = part {
                op.on_batch(part, out).await?;
            }
        }
        Ok(())
    }

    async fn on_changes(&mut self, changes: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        for (op, part) in self.partitions.iter_mut().zip(self.router.split(&changes)?) {
            if let Some(part) = part {
                op.on_changes(part, out).await?;
            }
        }
        Ok(())
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        for op in &mut self.partitions {
            let mut emitted = Vec::new();
            op.on_watermark(watermark, &mut emitted).await?;
            out.extend(
                emitted
                    .into_iter()
                    .filter(|m| !matches!(m, Message::Watermark(_))),
            );
        }
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        let n = self.partitions.len();
        let copies = barrier_copies(barrier.clone_without_writes(), n);
        let mut done = Vec::with_capacity(n);
        for (op, mut copy) in self.partitions.iter_mut().zip(copies) {
            op.on_barrier(&mut copy)?;
            done.push(copy);
        }
        let merged = Barrier::merge_copies(done)?;
        barrier.writes.extend(merged.writes);
        Ok(())
    }

    fn on_commit(&mut self, epoch: u64) {
        for op in &mut self.partitions {
            op.on_commit(epoch);
        }
    }
}
