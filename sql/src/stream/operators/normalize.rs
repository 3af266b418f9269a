//! Upserts to changes: the first operator of a pipeline that reads an updating view.
//!
//! The view's changelog (`stream/changelog.rs`) says, per row key, what the row is now. This
//! operator keeps the row it last saw for each key in its state table and turns an upsert
//! into the delete of that row and the insert of the new one (nothing when they are equal,
//! only the delete for a tombstone). Its output is a changelog batch over the view's columns.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;

use crate::catalog::TableDef;
use crate::codec::row::RowDecoder;
use crate::error::Result;
use crate::keys::key_group;
use crate::stream::changelog;
use crate::stream::checkpoint::Barrier;
use crate::stream::pipeline::{Message, Operator};
use crate::stream::state::StateTable;

pub struct Normalize {
    view: Arc<TableDef>,
    schema: SchemaRef,
    /// Row key in the view → the stored row last seen.
    state: StateTable,
}

impl Normalize {
    pub fn new(view: Arc<TableDef>, state: StateTable) -> Self {
        Self {
            schema: view.arrow_schema(),
            view,
            state,
        }
    }

    fn rows(&self, values: &[Vec<u8>]) -> Result<RecordBatch> {
        let mut decoder = RowDecoder::new(&self.view.types(), None, values.len());
        for v in values {
            decoder.append(v)?;
        }
        let options = RecordBatchOptions::new().with_row_count(Some(values.len()));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            decoder.finish()?,
            &options,
        )?)
    }
}

#[async_trait]
impl Operator for Normalize {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let keys = batch.column(0).as_binary::<i32>();
        let values = batch.column(1).as_binary::<i32>();
        // Each key's last upsert in the batch, keys in order of first appearance.
        let mut last: HashMap<&[u8], usize> = HashMap::new();
        let mut order: Vec<&[u8]> = Vec::new();
        for i in 0..batch.num_rows() {
            let key = keys.value(i);
            if last.insert(key, i).is_none() {
                order.push(key);
            }
        }
        let wanted: Vec<(u16, &[u8])> = order.iter().map(|k| (key_group(k), *k)).collect();
        let stored = self.state.get_many(&wanted)?;
        let mut retracted = Vec::new();
        let mut inserted = Vec::new();
        for (key, old) in order.into_iter().zip(stored) {
            let i = last[key];
            let new = (!values.is_null(i)).then(|| values.value(i));
            if old.as_deref() == new {
                continue;
            }
            if let Some(old) = old {
                retracted.push(old);
            }
            match new {
                Some(v) => {
                    inserted.push(v.to_vec());
                    self.state.put(key_group(key), key, v.to_vec());
                }
                None => self.state.delete(key_group(key), key),
            }
        }
        let retracted = self.rows(&retracted)?;
        let inserted = self.rows(&inserted)?;
        if let Some(c) = changelog::changes(&[retracted], &[inserted])? {
            out.push(Message::Changes(c));
        }
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        self.state.flush(barrier);
        Ok(())
    }

    fn on_commit(&mut self, epoch: u64) {
        self.state.committed(epoch);
    }
}

#[cfg(test)]
mod tests;
