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

/// Encoded rows to retract, and encoded rows to insert.
pub(crate) type RowChanges = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Upserts (a key and its new encoded row, None: deleted) against the rows last seen per key
/// in `state`: returns the rows to retract and the rows to insert (nothing for a key whose
/// row did not change; only a key's last upsert counts), and records the new rows.
pub(crate) fn upserts_to_changes<'a>(
    state: &mut StateTable,
    upserts: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Result<RowChanges> {
    // Each key's last upsert, keys in order of first appearance.
    let mut last: HashMap<&[u8], Option<&[u8]>> = HashMap::new();
    let mut order: Vec<&[u8]> = Vec::new();
    for (key, value) in upserts {
        if last.insert(key, value).is_none() {
            order.push(key);
        }
    }
    let wanted: Vec<(u16, &[u8])> = order.iter().map(|k| (key_group(k), *k)).collect();
    let stored = state.get_many(&wanted)?;
    let (mut retracted, mut inserted) = (Vec::new(), Vec::new());
    for (key, old) in order.into_iter().zip(stored) {
        let new = last[key];
        if old.as_deref() == new {
            continue;
        }
        retracted.extend(old);
        match new {
            Some(v) => {
                inserted.push(v.to_vec());
                state.put(key_group(key), key, v.to_vec());
            }
            None => state.delete(key_group(key), key),
        }
    }
    Ok((retracted, inserted))
}

#[async_trait]
impl Operator for Normalize {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let keys = batch.column(0).as_binary::<i32>();
        let values = batch.column(1).as_binary::<i32>();
        let upserts = (0..batch.num_rows())
            .map(|i| (keys.value(i), (!values.is_null(i)).then(|| values.value(i))));
        let (retracted, inserted) = upserts_to_changes(&mut self.state, upserts)?;
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
