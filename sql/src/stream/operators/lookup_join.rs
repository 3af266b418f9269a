//! Lookup join: each event of a stream meets the row of a table (or materialized view) whose
//! primary key equals the event's join key, as the table is when the event is processed.
//!
//! Semantics are processing time: a change to the table affects the events processed after
//! it, never output already written (the reference-data enrichment of Flink's lookup joins
//! and RisingWave's process-time temporal joins). INNER drops events with no row (or whose
//! row fails the join's other conditions); LEFT keeps them with NULL table columns. The
//! operator holds no state: it reads the committed rows through one `multi_get` per batch.
//!
//! The table side of the join may filter and project the table's rows (conditions on table
//! columns that DataFusion pushes below the join): those run over the looked-up rows, and
//! the equi-join of the event batch with them is done here, by row-encoded key.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, take};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::JoinSide;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use crate::catalog::TableDef;
use crate::codec::column::ColumnRef;
use crate::codec::key;
use crate::codec::row::RowDecoder;
use crate::error::Result;
use crate::storage::KvStore;
use crate::stream::aggregate::null_as_false;
use crate::stream::pipeline::{Message, Operator, Origins};
use crate::stream::plan::Feed;

/// A lookup join as planned.
#[derive(Debug, Clone)]
pub struct LookupJoinPlan {
    pub table: Arc<TableDef>,
    /// The join's table side (the table scan, maybe under filters and projections), run
    /// over the looked-up rows put in `table_feed`.
    pub table_side: Arc<dyn ExecutionPlan>,
    pub table_feed: Feed,
    /// Whether the stream is the join's left input (its columns come first).
    pub stream_is_left: bool,
    /// The stream-side expression giving each primary-key column, in key order.
    pub key_exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// The join's equality pairs: (over the stream, over the table side).
    pub on: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
    pub filter: Option<JoinFilter>,
    /// LEFT (stream preserved): events without a matching row are kept.
    pub outer: bool,
    /// The join's output columns (before `projection`).
    pub schema: SchemaRef,
    pub projection: Option<Vec<usize>>,
    pub task_ctx: Arc<TaskContext>,
}

fn eval(exprs: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
    let n = batch.num_rows();
    Ok(exprs
        .iter()
        .map(|e| e.evaluate(batch)?.into_array(n))
        .collect::<datafusion::error::Result<Vec<_>>>()?)
}

/// Rows where any of `columns` is NULL (they equal nothing).
fn any_null(columns: &[ArrayRef], n: usize) -> Vec<bool> {
    let mut null = vec![false; n];
    for c in columns {
        if c.null_count() > 0 {
            for (i, flag) in null.iter_mut().enumerate() {
                *flag |= c.is_null(i);
            }
        }
    }
    null
}

impl LookupJoinPlan {
    /// The table's committed rows for the stream rows' keys (each distinct key read once),
    /// through the table side's filters and projections.
    async fn lookup(&self, kv: &dyn KvStore, events: &RecordBatch) -> Result<RecordBatch> {
        let n = events.num_rows();
        let mut keys = eval(&self.key_exprs, events)?;
        for (k, &col) in keys.iter_mut().zip(&self.table.primary_key) {
            let want = self.table.columns[col].ty.arrow_type();
            if k.data_type() != &want {
                *k = cast(k, &want)?;
            }
        }
        let null = any_null(&keys, n);
        let refs = keys
            .iter()
            .zip(&self.table.primary_key)
            .map(|(a, &c)| ColumnRef::new(a, &self.table.columns[c].ty))
            .collect::<Result<Vec<_>>>()?;
        let prefix = self.table.key_prefix();
        let mut wanted: Vec<Vec<u8>> = Vec::new();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        for (i, is_null) in null.iter().enumerate() {
            if *is_null {
                continue;
            }
            let mut k = prefix.clone();
            for r in &refs {
                key::encode_value(r, i, &mut k);
            }
            if seen.insert(k.clone()) {
                wanted.push(k);
            }
        }
        let found = kv.multi_get(&wanted)?;
        let types: Vec<_> = self.table.columns.iter().map(|c| c.ty.clone()).collect();
        let mut decoder = RowDecoder::new(&types, None, found.len());
        let mut rows = 0;
        for v in found.iter().flatten() {
            decoder.append(v)?;
            rows += 1;
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        let table_rows = RecordBatch::try_new_with_options(
            self.table.arrow_schema(),
            decoder.finish()?,
            &options,
        )?;
        self.table_feed.put(table_rows);
        let stream = self.table_side.execute(0, self.task_ctx.clone())?;
        let batches = datafusion::physical_plan::common::collect(stream).await?;
        Ok(concat_batches(&self.table_side.schema(), &batches)?)
    }

    /// For each event, the index of its table-side row (None: no row).
    fn probe(&self, events: &RecordBatch, table: &RecordBatch) -> Result<Vec<Option<u32>>> {
        let n = events.num_rows();
        let (stream_exprs, table_exprs): (Vec<_>, Vec<_>) = self.on.iter().cloned().unzip();
        let table_keys = eval(&table_exprs, table)?;
        let mut stream_keys = eval(&stream_exprs, events)?;
        for (s, t) in stream_keys.iter_mut().zip(&table_keys) {
            if s.data_type() != t.data_type() {
                *s = cast(s, t.data_type())?;
            }
        }
        let fields = table_keys
            .iter()
            .map(|a| SortField::new(a.data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields)?;
        let table_rows = converter.convert_columns(&table_keys)?;
        let table_null = any_null(&table_keys, table.num_rows());
        let mut index: HashMap<&[u8], u32> = HashMap::with_capacity(table.num_rows());
        for (i, null) in table_null.iter().enumerate() {
            if !null {
                index.insert(table_rows.row(i).data(), i as u32);
            }
        }
        let stream_rows = converter.convert_columns(&stream_keys)?;
        let stream_null = any_null(&stream_keys, n);
        Ok((0..n)
            .map(|i| match stream_null[i] {
                true => None,
                false => index.get(stream_rows.row(i).data()).copied(),
            })
            .collect())
    }

    /// The join's rows for `events` (in event order), with the join's projection applied;
    /// the second value says which events they come from (one row per kept event).
    pub async fn join(
        &self,
        kv: &dyn KvStore,
        events: &RecordBatch,
    ) -> Result<(RecordBatch, BooleanArray)> {
        let table = self.lookup(kv, events).await?;
        let matches = self.probe(events, &table)?;
        let mut indices = UInt32Array::from(matches);
        let aligned = |indices: &UInt32Array| -> Result<Vec<ArrayRef>> {
            Ok(table
                .columns()
                .iter()
                .map(|c| take(c.as_ref(), indices, None))
                .collect::<std::result::Result<_, _>>()?)
        };
        let mut table_columns = aligned(&indices)?;
        if let Some(filter) = &self.filter {
            let columns = filter
                .column_indices()
                .iter()
                .map(|c| {
                    let stream_side = (c.side == JoinSide::Left) == self.stream_is_left;
                    match stream_side {
                        true => events.column(c.index).clone(),
                        false => table_columns[c.index].clone(),
                    }
                })
                .collect();
            let options = RecordBatchOptions::new().with_row_count(Some(events.num_rows()));
            let intermediate =
                RecordBatch::try_new_with_options(filter.schema().clone(), columns, &options)?;
            let passed = filter
                .expression()
                .evaluate(&intermediate)?
                .into_array(events.num_rows())?;
            let passed = null_as_false(passed.as_boolean());
            // A row that fails the condition is no match.
            indices = indices
                .iter()
                .zip(passed.iter())
                .map(|(i, ok)| i.filter(|_| ok == Some(true)))
                .collect();
            table_columns = aligned(&indices)?;
        }
        let matched: BooleanArray = indices.iter().map(|i| Some(i.is_some())).collect();
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        match self.stream_is_left {
            true => {
                columns.extend(events.columns().iter().cloned());
                columns.extend(table_columns);
            }
            false => {
                columns.extend(table_columns);
                columns.extend(events.columns().iter().cloned());
            }
        }
        let options = RecordBatchOptions::new().with_row_count(Some(events.num_rows()));
        let joined = RecordBatch::try_new_with_options(self.relaxed_schema(), columns, &options)?;
        let (joined, kept) = match self.outer {
            true => (joined, BooleanArray::from(vec![true; events.num_rows()])),
            false => (filter_record_batch(&joined, &matched)?, matched),
        };
        let joined = RecordBatch::try_new_with_options(
            self.schema.clone(),
            joined.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(joined.num_rows())),
        )?;
        let joined = match &self.projection {
            Some(p) => joined.project(p)?,
            None => joined,
        };
        Ok((joined, kept))
    }

    /// The output schema with every column nullable (before unmatched rows are dropped).
    fn relaxed_schema(&self) -> SchemaRef {
        Arc::new(datafusion::arrow::datatypes::Schema::new(
            self.schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ))
    }
}

#[cfg(test)]
mod tests;

/// The lookup join as a pipeline stage.
pub struct LookupJoin {
    pub plan: Arc<LookupJoinPlan>,
    pub kv: Arc<dyn KvStore>,
}

#[async_trait::async_trait]
impl Operator for LookupJoin {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let (joined, _) = self.plan.join(self.kv.as_ref(), &batch).await?;
        if joined.num_rows() > 0 {
            out.push(Message::Batch(joined));
        }
        Ok(())
    }

    async fn on_events(
        &mut self,
        batch: RecordBatch,
        origins: Origins,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        let (joined, kept) = self.plan.join(self.kv.as_ref(), &batch).await?;
        let origins = match origins.len() == batch.num_rows() {
            true => origins
                .into_iter()
                .zip(kept.iter())
                .filter(|(_, k)| *k == Some(true))
                .map(|(o, _)| o)
                .collect(),
            false => Vec::new(),
        };
        if joined.num_rows() > 0 {
            out.push(Message::Events(joined, origins));
        }
        Ok(())
    }
}
