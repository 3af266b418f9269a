//! Stores a changelog as a view's rows: the last operator of a view that filters or projects
//! an updating view without aggregating it.
//!
//! The view's rows are a multiset (two input rows can give equal output rows). Each distinct
//! row is kept as many times as it occurs: copy `i` of a row is stored under the row's
//! encoding followed by `i`, and the operator's state counts the copies. An insert adds the
//! next copy, a delete removes the last one, so equal rows never collide and a delete always
//! finds a row to remove.

use std::collections::HashMap;

use async_trait::async_trait;
use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::row::{RowConverter, SortField};

use crate::error::Result;
use crate::keys::key_group;
use crate::stream::changelog;
use crate::stream::checkpoint::Barrier;
use crate::stream::pipeline::{Message, Operator};
use crate::stream::state::StateTable;
use crate::stream::view::{Output, ViewWriter};

pub struct Materialize {
    view: ViewWriter,
    /// Row encoding → how many copies of the row the view holds.
    state: StateTable,
}

impl Materialize {
    pub fn new(view: ViewWriter, state: StateTable) -> Self {
        Self { view, state }
    }
}

fn count_of(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

#[async_trait]
impl Operator for Materialize {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let changes = changelog::changes(&[], &[batch])?;
        match changes {
            Some(c) => self.on_changes(c, out).await,
            None => Ok(()),
        }
    }

    async fn on_changes(&mut self, changes: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let (retracted, inserted) = changelog::split(&changes)?;
        let rows = concat_batches(&retracted.schema(), [&retracted, &inserted])?;
        let fields = rows
            .columns()
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect();
        let encoded = RowConverter::new(fields)?.convert_columns(rows.columns())?;
        let keys: Vec<&[u8]> = (0..rows.num_rows())
            .map(|i| encoded.row(i).data())
            .collect();
        // Copies of each distinct row, as the batch goes.
        let mut copies: HashMap<&[u8], u64> = HashMap::new();
        let mut distinct: Vec<&[u8]> = Vec::new();
        for k in &keys {
            if !copies.contains_key(k) {
                copies.insert(k, 0);
                distinct.push(k);
            }
        }
        let wanted: Vec<(u16, &[u8])> = distinct.iter().map(|k| (key_group(k), *k)).collect();
        for (k, stored) in distinct.iter().zip(self.state.get_many(&wanted)?) {
            copies.insert(k, count_of(stored.as_deref()));
        }
        let mut keep = Vec::with_capacity(keys.len());
        let mut row_keys = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            let n = copies.get_mut(k).expect("counted");
            let copy = match i < retracted.num_rows() {
                true => {
                    // A retraction of a row the view does not hold cannot come from a
                    // consistent changelog; there is nothing to delete.
                    *n = n.saturating_sub(1);
                    *n
                }
                false => {
                    *n += 1;
                    *n - 1
                }
            };
            let mut key = k.to_vec();
            key.extend_from_slice(&(copy as u32).to_be_bytes());
            row_keys.push(key);
            keep.push(i >= retracted.num_rows());
        }
        for k in distinct {
            let n = copies[k];
            match n {
                0 => self.state.delete(key_group(k), k),
                _ => self.state.put(key_group(k), k, n.to_be_bytes().to_vec()),
            }
        }
        let keep = BooleanArray::from(keep);
        if let Output::Writes(w) = self.view.output(&rows, Some(&keep), &row_keys)?
            && !w.is_empty()
        {
            out.push(Message::Writes(w));
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
