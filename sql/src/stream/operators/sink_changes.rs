//! A view's changes as the rows a sink sends: the last operator of a sink that reads an
//! updating view's changelog.
//!
//! - To an upsert target (a Kafka topic keyed by `key`), each inserted row is sent, and a
//!   deleted row is sent as a deletion (a tombstone) unless a row with the same key is
//!   inserted in the same batch: that is an update, and its new row replaces the old one. A
//!   batch comes from one step of `Normalize`, which turns each changed row key into the
//!   delete of its old row and the insert of its new one, together.
//! - To a target that takes rows once (Parquet files, webhooks), only inserted rows are sent.
//!   The views such a sink may read (`CREATE SINK` checks) only ever insert rows: windows
//!   written when they close, sessions, rows of a query over events.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};

use crate::catalog::TableDef;
use crate::error::Result;
use crate::stream::changelog;
use crate::stream::pipeline::{Message, Operator};
use crate::stream::view::{DELETED_COLUMN, conform};

pub struct SinkChanges {
    sink: Arc<TableDef>,
    /// The column an upsert target is keyed by; None: only inserts are sent.
    upsert_key: Option<usize>,
    /// The sink's columns and, for upserts, the deletion flag.
    schema: SchemaRef,
}

impl SinkChanges {
    pub fn new(sink: Arc<TableDef>, upsert_key: Option<usize>) -> Self {
        let mut fields: Vec<_> = sink.arrow_schema().fields().iter().cloned().collect();
        if upsert_key.is_some() {
            fields.push(Arc::new(Field::new(
                DELETED_COLUMN,
                DataType::Boolean,
                false,
            )));
        }
        Self {
            schema: Arc::new(Schema::new(fields)),
            sink,
            upsert_key,
        }
    }

    fn rows(&self, rows: &RecordBatch, deleted: bool) -> Result<RecordBatch> {
        let mut columns = conform(&self.sink, rows.columns())?;
        if self.upsert_key.is_some() {
            columns.push(Arc::new(BooleanArray::from(vec![deleted; rows.num_rows()])));
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// The deleted rows whose key no inserted row of the batch has.
    fn lone_deletes(
        &self,
        key: usize,
        deleted: &RecordBatch,
        inserted: &RecordBatch,
    ) -> Result<RecordBatch> {
        if deleted.num_rows() == 0 || inserted.num_rows() == 0 {
            return Ok(deleted.clone());
        }
        let converter = RowConverter::new(vec![SortField::new(
            deleted.column(key).data_type().clone(),
        )])?;
        let new_keys = converter.convert_columns(&[inserted.column(key).clone()])?;
        let replaced: HashSet<&[u8]> = new_keys.iter().map(|r| r.data()).collect();
        let old_keys = converter.convert_columns(&[deleted.column(key).clone()])?;
        let keep: BooleanArray = old_keys
            .iter()
            .map(|r| Some(!replaced.contains(r.as_ref())))
            .collect();
        Ok(filter_record_batch(deleted, &keep)?)
    }
}

#[async_trait::async_trait]
impl Operator for SinkChanges {
    async fn on_changes(&mut self, changes: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let (deleted, inserted) = changelog::split(&changes)?;
        let mut parts = Vec::new();
        if let Some(key) = self.upsert_key {
            let gone = self.lone_deletes(key, &deleted, &inserted)?;
            if gone.num_rows() > 0 {
                parts.push(self.rows(&gone, true)?);
            }
        }
        if inserted.num_rows() > 0 {
            parts.push(self.rows(&inserted, false)?);
        }
        if !parts.is_empty() {
            out.push(Message::Batch(concat_batches(&self.schema, &parts)?));
        }
        Ok(())
    }

    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        // Rows that only append (a view's snapshot read as rows) are inserts.
        if batch.num_rows() > 0 {
            out.push(Message::Batch(self.rows(&batch, false)?));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ColumnDef;
    use crate::types::SqlType;
    use datafusion::arrow::array::{AsArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Int64Type;

    fn sink() -> Arc<TableDef> {
        let column = |name: &str, ty| ColumnDef {
            name: name.into(),
            ty,
            nullable: true,
            default: None,
            identity: None,
            comment: None,
        };
        Arc::new(TableDef::new(
            1,
            "public".into(),
            "out".into(),
            vec![column("k", SqlType::Text), column("n", SqlType::Int8)],
            vec![],
        ))
    }

    fn rows(keys: &[&str], ns: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            sink().arrow_schema(),
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(ns.to_vec())),
            ],
        )
        .unwrap()
    }

    async fn run(op: &mut SinkChanges, deleted: RecordBatch, inserted: RecordBatch) -> RecordBatch {
        let changes = changelog::changes(&[deleted], &[inserted])
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        op.on_changes(changes, &mut out).await.unwrap();
        match out.pop() {
            Some(Message::Batch(b)) => b,
            None => RecordBatch::new_empty(op.schema.clone()),
            _ => panic!("not a batch"),
        }
    }

    #[tokio::test]
    async fn updates_are_new_rows_and_lone_deletes_are_tombstones() {
        let mut op = SinkChanges::new(sink(), Some(0));
        // a: updated (1 -> 2), b: deleted, c: new.
        let out = run(
            &mut op,
            rows(&["a", "b"], &[1, 5]),
            rows(&["a", "c"], &[2, 7]),
        )
        .await;
        let keys: Vec<&str> = out.column(0).as_string::<i32>().iter().flatten().collect();
        let ns: Vec<i64> = out.column(1).as_primitive::<Int64Type>().values().to_vec();
        let deleted: Vec<bool> = out.column(2).as_boolean().iter().flatten().collect();
        assert_eq!(keys, ["b", "a", "c"]);
        assert_eq!(ns, [5, 2, 7]);
        assert_eq!(deleted, [true, false, false]);
    }

    #[tokio::test]
    async fn a_target_that_takes_rows_once_gets_the_inserts() {
        let mut op = SinkChanges::new(sink(), None);
        let out = run(&mut op, rows(&["a"], &[1]), rows(&["a", "c"], &[2, 7])).await;
        assert_eq!(out.num_columns(), 2);
        let ns: Vec<i64> = out.column(1).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(ns, [2, 7]);
    }
}
