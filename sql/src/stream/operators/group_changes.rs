//! An aggregate's changed groups as changes, for an operator after it that takes a changelog
//! (a top-N over an aggregate that emits on update).
//!
//! The aggregate emits, for each group an input batch changed, the group's row as it is now.
//! This operator keeps the row it last passed on for each group (its state table, keyed by
//! the group columns) and turns each new row into the delete of that row and the insert of
//! the new one (nothing when they are equal).

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};

use crate::error::Result;
use crate::stream::changelog;
use crate::stream::checkpoint::Barrier;
use crate::stream::operators::normalize::upserts_to_changes;
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
        let upserts = (0..batch.num_rows()).map(|i| (key(i), Some(rows.row(i).data())));
        let (retracted, inserted) = upserts_to_changes(&mut self.state, upserts)?;
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
