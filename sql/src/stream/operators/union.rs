//! UNION ALL of two inputs: each input's rows go on as they come, as the union's columns.
//! The runtime gives it the minimum of its inputs' watermarks and aligned barriers, like any
//! operator with several inputs; it holds no state. When an input is an updating view, the
//! union's output is a changelog: the view's changes go on as they are, and the other input's
//! rows as inserts.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Result;
use crate::stream::changelog;
use crate::stream::pipeline::{Message, Operator};

pub struct Union {
    /// The union's columns (each input's rows have the same types).
    schema: SchemaRef,
    /// With the op column: the union's changes, when an input is an updating view.
    changes: Option<SchemaRef>,
}

impl Union {
    pub fn new(schema: SchemaRef, changes: bool) -> Self {
        let changes = changes.then(|| {
            let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
            fields.push(Arc::new(Field::new(
                changelog::OP_COLUMN,
                DataType::Int8,
                false,
            )));
            Arc::new(Schema::new(fields))
        });
        Self { schema, changes }
    }
}

/// `batch`'s columns as `schema`'s (the union renames its inputs' columns).
fn renamed(schema: &SchemaRef, batch: &RecordBatch) -> Result<RecordBatch> {
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        batch.columns().to_vec(),
        &options,
    )?)
}

#[async_trait::async_trait]
impl Operator for Union {
    async fn on_input(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let rows = renamed(&self.schema, &batch)?;
        out.push(match self.changes {
            None => Message::Batch(rows),
            Some(_) => Message::Changes(changelog::with_ops(
                &rows,
                vec![changelog::Op::Insert as i8; rows.num_rows()],
            )?),
        });
        Ok(())
    }

    async fn on_input_changes(
        &mut self,
        _input: usize,
        changes: RecordBatch,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        let Some(schema) = &self.changes else {
            return Err(crate::error::Error::internal(
                "a union of appends received a changelog",
            ));
        };
        if changes.num_rows() > 0 {
            out.push(Message::Changes(renamed(schema, &changes)?));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::Int64Type;

    use super::*;

    fn rows(name: &str, values: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Int64, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    #[tokio::test]
    async fn an_updating_input_makes_the_union_a_changelog() {
        let mut union = Union::new(rows("x", vec![]).schema(), true);
        let mut out = Vec::new();
        // A view's change (1 replaced by 2) on input 0, appended rows on input 1.
        let change = changelog::changes(&[rows("a", vec![1])], &[rows("a", vec![2])])
            .unwrap()
            .unwrap();
        union.on_input_changes(0, change, &mut out).await.unwrap();
        union
            .on_input(1, rows("b", vec![7, 8]), &mut out)
            .await
            .unwrap();
        let mut got = Vec::new();
        for m in out {
            let Message::Changes(c) = m else {
                panic!("the union of an updating view sends changes");
            };
            assert_eq!(c.schema().field(0).name(), "x", "the union's columns");
            let (gone, added) = changelog::split(&c).unwrap();
            let values = |b: &RecordBatch| -> Vec<i64> {
                b.column(0).as_primitive::<Int64Type>().values().to_vec()
            };
            got.push((values(&gone), values(&added)));
        }
        assert_eq!(got, vec![(vec![1], vec![2]), (vec![], vec![7, 8])]);
    }

    #[tokio::test]
    async fn a_union_of_appends_sends_rows() {
        let mut union = Union::new(rows("x", vec![]).schema(), false);
        let mut out = Vec::new();
        union
            .on_input(0, rows("a", vec![1]), &mut out)
            .await
            .unwrap();
        assert!(matches!(&out[..], [Message::Batch(b)] if b.schema().field(0).name() == "x"));
    }
}
