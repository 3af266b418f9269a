//! An aggregate's changed groups as changes, for an operator after it that takes a changelog
//! (a top-N over an aggregate that emits on update).
//!
//! The aggregate emits, for each group an input batch changed, the group's row as it is now.
//! This operator keeps the row it last passed on for each group (its state table, keyed by
//! the group columns) and turns each new row into the delete of that row and the insert of
//! the new one (nothing when they are equal).

use std::collections::HashMap;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};

use crate::error::Result;
use crate::keys::key_group;
use crate::stream::changelog;
use crate::stream::checkpoint::Barrier;
use crate::stream::pipeline::{Message, Operator};
use crate::stream::state::StateTable;

pub struct GroupChanges {
    /// The first `groups` columns are the group key.
    groups: usize,
    keys: RowConverter,
    rows: RowConverter,
    schema: SchemaRef,
    /// Group key → the row last passed on.
    state: StateTable,
}

impl GroupChanges {
    pub fn new(schema: SchemaRef, groups: usize, state: StateTable) -> Result<Self> {
        let fields: Vec<SortField> = schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(Self {
            groups,
            keys: RowConverter::new(fields[..groups].to_vec())?,
            rows: RowConverter::new(fields)?,
            schema,
            state,
        })
    }

    fn decode(&self, rows: &[Vec<u8>]) -> Result<RecordBatch> {
        let parser = self.rows.parser();
        let columns = self
            .rows
            .convert_rows(rows.iter().map(|r| parser.parse(r)))?;
        let options =
            datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?)
    }
}

#[async_trait]
impl Operator for GroupChanges {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        // A global aggregate (no GROUP BY) has one group, keyed by no bytes.
        let keys = match self.groups {
            0 => None,
            g => Some(self.keys.convert_columns(&batch.columns()[..g])?),
        };
        let key = |i: usize| keys.as_ref().map_or(&[][..], |k| k.row(i).data());
        let rows = self.rows.convert_columns(batch.columns())?;
        // Each group's last row in the batch, groups in order of first appearance.
        let mut last: HashMap<&[u8], usize> = HashMap::new();
        let mut order: Vec<&[u8]> = Vec::new();
        for i in 0..batch.num_rows() {
            if last.insert(key(i), i).is_none() {
                order.push(key(i));
            }
        }
        let wanted: Vec<(u16, &[u8])> = order.iter().map(|k| (key_group(k), *k)).collect();
        let stored = self.state.get_many(&wanted)?;
        let (mut retracted, mut inserted) = (Vec::new(), Vec::new());
        for (k, old) in order.into_iter().zip(stored) {
            let new = rows.row(last[k]).data();
            if old.as_deref() == Some(new) {
                continue;
            }
            retracted.extend(old);
            inserted.push(new.to_vec());
            self.state.put(key_group(k), k, new.to_vec());
        }
        let retracted = self.decode(&retracted)?;
        let inserted = self.decode(&inserted)?;
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
