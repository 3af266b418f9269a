//! The scan of one stored table: reads a [`KeyPlan`] in chunks of `batch_size` rows, merges
//! the transaction's uncommitted writes, and decodes into Arrow batches.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BinaryBuilder, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;

use super::pushdown::KeyPlan;
use crate::catalog::TableDef;
use crate::codec::row::RowDecoder;
use crate::error::{Result, to_df};
use crate::storage::{KvPair, KvStore};
use crate::txn::{OverlayEntry, Txn, merge_chunk};

/// What the transaction says about one point key, captured when the scan was planned.
#[derive(Debug, Clone)]
enum PointState {
    /// Not written by the transaction: read the committed value.
    Committed,
    /// Written by the transaction (`None`: deleted).
    Overlay(Option<Vec<u8>>),
}

#[derive(Debug, Clone)]
pub struct ScanPartition {
    def: Arc<TableDef>,
    kv: Arc<dyn KvStore>,
    plan: KeyPlan,
    points: Vec<PointState>,
    overlay: Vec<OverlayEntry>,
    truncated: bool,
    projection: Vec<usize>,
    schema: SchemaRef,
    with_storage_columns: bool,
    limit: Option<usize>,
}

impl ScanPartition {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        def: Arc<TableDef>,
        kv: Arc<dyn KvStore>,
        txn: &Txn,
        plan: KeyPlan,
        projection: Vec<usize>,
        schema: SchemaRef,
        with_storage_columns: bool,
        limit: Option<usize>,
    ) -> Self {
        let (points, overlay) = match &plan {
            KeyPlan::Points(keys) => (
                keys.iter()
                    .map(|k| match txn.overlay_get(k) {
                        Some(v) => PointState::Overlay(v.map(|v| v.to_vec())),
                        None => PointState::Committed,
                    })
                    .collect(),
                Vec::new(),
            ),
            KeyPlan::Range(start, end) => (Vec::new(), txn.overlay_range(start, end)),
        };
        Self {
            truncated: txn.is_truncated(def.id),
            def,
            kv,
            plan,
            points,
            overlay,
            projection,
            schema,
            with_storage_columns,
            limit,
        }
    }

    fn read_points(&self) -> Result<Vec<KvPair>> {
        let KeyPlan::Points(keys) = &self.plan else {
            return Ok(Vec::new());
        };
        let committed_keys: Vec<Vec<u8>> = keys
            .iter()
            .zip(&self.points)
            .filter(|(_, s)| matches!(s, PointState::Committed))
            .map(|(k, _)| k.clone())
            .collect();
        let mut committed = if self.truncated || committed_keys.is_empty() {
            Vec::new()
        } else {
            self.kv.multi_get(&committed_keys)?
        }
        .into_iter();
        let mut out = Vec::new();
        for (k, state) in keys.iter().zip(&self.points) {
            let value = match state {
                PointState::Overlay(v) => v.clone(),
                PointState::Committed if self.truncated => None,
                PointState::Committed => committed.next().flatten(),
            };
            if let Some(v) = value {
                out.push((k.clone(), v));
            }
        }
        Ok(out)
    }

    /// Reads the next chunk of a range scan starting at `start`.
    fn read_range(
        &self,
        start: &[u8],
        end: &[u8],
        batch: usize,
    ) -> Result<(Vec<KvPair>, Option<Vec<u8>>)> {
        let committed = if self.truncated {
            Vec::new()
        } else {
            self.kv.scan(start, end, batch)?
        };
        let exhausted = committed.len() < batch;
        let from = self.overlay.partition_point(|(k, _)| k.as_slice() < start);
        let (pairs, resume) = merge_chunk(committed, &self.overlay[from..], exhausted);
        Ok((pairs, resume))
    }

    fn decode(&self, pairs: &[KvPair]) -> Result<RecordBatch> {
        let ncols = self.def.columns.len();
        let table_cols: Vec<usize> = self
            .projection
            .iter()
            .copied()
            .filter(|&p| p < ncols)
            .collect();
        let mut decoder = RowDecoder::new(&self.def.types(), Some(&table_cols), pairs.len());
        for (_, v) in pairs {
            decoder.append(v)?;
        }
        let mut sorted = table_cols.clone();
        sorted.sort_unstable();
        let decoded = decoder.finish()?;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.projection.len());
        for &p in &self.projection {
            if p < ncols {
                let at = sorted.binary_search(&p).expect("projected column decoded");
                columns.push(decoded[at].clone());
            } else if self.with_storage_columns {
                let mut b = BinaryBuilder::with_capacity(pairs.len(), 0);
                for (k, v) in pairs {
                    b.append_value(if p == ncols { k } else { v });
                }
                columns.push(Arc::new(b.finish()));
            }
        }
        let options = RecordBatchOptions::new().with_row_count(Some(pairs.len()));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?)
    }
}

struct Cursor {
    next: Option<Vec<u8>>,
    emitted: usize,
    points_done: bool,
}

impl PartitionStream for ScanPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch_size = ctx.session_config().batch_size().max(1);
        let this = Arc::new(self.clone());
        let start = match &this.plan {
            KeyPlan::Range(s, _) => Some(s.clone()),
            KeyPlan::Points(_) => None,
        };
        let cursor = Cursor {
            next: start,
            emitted: 0,
            points_done: false,
        };
        let stream = futures::stream::unfold((this, cursor), move |(this, mut cur)| async move {
            if this.limit.is_some_and(|l| cur.emitted >= l) {
                return None;
            }
            let pairs = match &this.plan {
                KeyPlan::Points(_) => {
                    if cur.points_done {
                        return None;
                    }
                    cur.points_done = true;
                    this.read_points()
                }
                KeyPlan::Range(_, end) => {
                    let start = cur.next.take()?;
                    this.read_range(&start, end, batch_size)
                        .map(|(pairs, resume)| {
                            cur.next = resume;
                            pairs
                        })
                }
            };
            let batch = pairs.and_then(|p| {
                cur.emitted += p.len();
                this.decode(&p)
            });
            Some((batch.map_err(to_df), (this, cur)))
        });
        let stream = futures::StreamExt::filter(stream, |b: &DfResult<RecordBatch>| {
            futures::future::ready(b.as_ref().map_or(true, |b| b.num_rows() > 0))
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}
