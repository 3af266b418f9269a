//! The plan above a windowed aggregate with window functions (top-N per window): it runs over
//! all the rows of the windows a watermark closes, at once.
//!
//! The aggregate emits a closed window's groups when the watermark passes its end, then the
//! watermark. This operator collects those rows and, when the watermark reaches it, runs the
//! plan over the rows of the windows that end at or before it and writes the result (view
//! rows or sink rows). A parallel aggregate's partitions each emit their share of a window
//! before their watermark passes it, and the runtime forwards the minimum of the partitions'
//! watermarks, so the windows up to it are whole; a partition that is ahead may already have
//! sent rows of later windows, which wait here for the other partitions' share. Rows are
//! ordered as one partition would have emitted them (by window, then by group key), so
//! functions that break ties by arrival order (row_number) give the same answer at every
//! parallelism.
//!
//! It keeps no state across barriers: every partition passes a barrier at the same
//! watermark (the last before the barrier, which all inputs carry in the same order), so by
//! then every window a partition closed is whole here and has been written.

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::compute::{concat_batches, filter_record_batch, take};
use datafusion::arrow::row::{RowConverter, SortField};

use crate::error::{Error, Result};
use crate::stream::checkpoint::Barrier;
use crate::stream::pipeline::{Message, Operator};
use crate::stream::plan::{AggregatePlan, Segment, WindowGroup};
use crate::stream::view::{Output, ViewWriter};

pub struct PerWindow {
    segment: Segment,
    view: ViewWriter,
    /// Columns that order a window's rows: the window column, then every group column.
    order: Vec<usize>,
    /// The aggregate runs in several partitions: their rows arrive interleaved.
    sort: bool,
    /// The window column, and what added to it gives the window's end.
    window: Option<WindowGroup>,
    /// Rows of windows not yet whole.
    pending: Vec<RecordBatch>,
}

impl PerWindow {
    /// The plan above `aggregate` (which has one), writing through `view`.
    pub fn new(aggregate: &AggregatePlan, view: ViewWriter, partitions: usize) -> Result<Self> {
        let segment = aggregate
            .upper_segment
            .clone()
            .ok_or_else(|| Error::internal("no plan above the aggregate"))?;
        let groups = aggregate.group_exprs.len();
        let order = aggregate
            .window
            .map(|w| w.column)
            .into_iter()
            .chain(0..groups)
            .collect();
        Ok(Self {
            segment,
            view,
            order,
            sort: partitions > 1,
            window: aggregate.window,
            pending: Vec::new(),
        })
    }

    /// The rows of windows that end at or before `watermark`, and the others.
    fn closed_by(&self, rows: &RecordBatch, watermark: i64) -> Result<(RecordBatch, RecordBatch)> {
        let Some(window) = self.window else {
            return Ok((rows.clone(), rows.slice(0, 0)));
        };
        let ends = super::micros(rows.column(window.column).as_ref())?;
        let closed: BooleanArray = ends
            .iter()
            .map(|end| Some(end.is_none_or(|e| e + window.add_us <= watermark)))
            .collect();
        let open = not(&closed)?;
        Ok((
            filter_record_batch(rows, &closed)?,
            filter_record_batch(rows, &open)?,
        ))
    }

    fn ordered(&self, rows: RecordBatch) -> Result<RecordBatch> {
        if !self.sort || rows.num_rows() < 2 {
            return Ok(rows);
        }
        let columns: Vec<_> = self.order.iter().map(|&c| rows.column(c).clone()).collect();
        let fields = columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect();
        let encoded = RowConverter::new(fields)?.convert_columns(&columns)?;
        let mut indices: Vec<u32> = (0..rows.num_rows() as u32).collect();
        indices.sort_by(|a, b| encoded.row(*a as usize).cmp(&encoded.row(*b as usize)));
        let indices = datafusion::arrow::array::UInt32Array::from(indices);
        let columns = rows
            .columns()
            .iter()
            .map(|c| take(c, &indices, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(rows.schema(), columns)?)
    }
}

#[async_trait::async_trait]
impl Operator for PerWindow {
    async fn on_batch(&mut self, batch: RecordBatch, _out: &mut Vec<Message>) -> Result<()> {
        if batch.num_rows() > 0 {
            self.pending.push(batch);
        }
        Ok(())
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            let rows = concat_batches(&pending[0].schema(), &pending)?;
            let (rows, later) = self.closed_by(&rows, watermark)?;
            if later.num_rows() > 0 {
                self.pending.push(later);
            }
            if rows.num_rows() == 0 {
                out.push(Message::Watermark(watermark));
                return Ok(());
            }
            let rows = self.ordered(rows)?;
            let batches = self.segment.run(rows).await?;
            let result = concat_batches(&self.segment.plan.schema(), &batches)?;
            match self.view.output_by_row(&result)? {
                Output::Writes(w) if !w.is_empty() => out.push(Message::Writes(w)),
                Output::Rows(b) if b.num_rows() > 0 => out.push(Message::Batch(b)),
                Output::Unfinished(_) => {
                    return Err(Error::internal("unfinished rows above the aggregate"));
                }
                _ => {}
            }
        }
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    fn on_barrier(&mut self, _barrier: &mut Barrier) -> Result<()> {
        match self.pending.is_empty() {
            true => Ok(()),
            false => Err(Error::internal(
                "a barrier arrived between a closed window's rows and its watermark",
            )),
        }
    }
}
