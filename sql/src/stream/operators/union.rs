//! UNION ALL of two sources: each input's rows go on as they come, as the union's columns.
//! The runtime gives it the minimum of its inputs' watermarks and aligned barriers, like any
//! operator with several inputs; it holds no state.

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;

use crate::error::Result;
use crate::stream::pipeline::{Message, Operator};

pub struct Union {
    /// The union's columns (each input's rows have the same types).
    pub schema: SchemaRef,
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
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        out.push(Message::Batch(RecordBatch::try_new_with_options(
            self.schema.clone(),
            batch.columns().to_vec(),
            &options,
        )?));
        Ok(())
    }
}
