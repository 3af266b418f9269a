//! Encoding a pipeline's outputs as rows of its stored relation: materialized-view rows keyed
//! by group, stream rows keyed by output sequence, dead letters keyed by (partition, offset).
//! Every key is a pure function of the input, which is what makes replays idempotent.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::row::{RowConverter, SortField};
use eddy_connectors::DeadLetter;

use crate::catalog::TableDef;
use crate::codec::column::ColumnRef;
use crate::codec::{key, row};
use crate::error::{Error, Result};
use crate::storage::WriteOp;

/// Casts result columns to the stored column types.
pub fn conform(def: &TableDef, columns: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
    if columns.len() != def.columns.len() {
        return Err(Error::internal(format!(
            "{} produced {} columns, expected {}",
            def.name,
            columns.len(),
            def.columns.len()
        )));
    }
    columns
        .iter()
        .zip(&def.columns)
        .map(|(a, c)| {
            let want = c.ty.arrow_type();
            Ok(if a.data_type() == &want {
                a.clone()
            } else {
                cast(a, &want)?
            })
        })
        .collect()
}

fn refs<'a>(def: &TableDef, arrays: &'a [ArrayRef]) -> Result<Vec<ColumnRef<'a>>> {
    arrays
        .iter()
        .zip(&def.columns)
        .map(|(a, c)| ColumnRef::new(a, &c.ty))
        .collect()
}

/// What an aggregate's changed groups become.
#[derive(Debug)]
pub enum Output {
    /// A materialized view's stored rows.
    Writes(Vec<WriteOp>),
    /// Rows for a sink.
    Rows(RecordBatch),
    /// The aggregate's rows before the plan above it (window functions), which the
    /// operator runs before they become view rows or sink rows.
    Unfinished(RecordBatch),
}

impl Output {
    pub fn none() -> Self {
        Output::Writes(Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Output::Writes(w) => w.is_empty(),
            Output::Rows(b) | Output::Unfinished(b) => b.num_rows() == 0,
        }
    }
}

pub use eddy_connectors::kafka_sink::DELETED_COLUMN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Stored as the view's rows, keyed by group.
    Store,
    /// Rows for an append-only sink (windows emitted once, when they close): a row HAVING
    /// filters out is not sent.
    Append,
    /// Rows for an upsert sink: each group's current row whenever it changes, with
    /// `__deleted` true where HAVING now filters it out.
    Upsert,
}

/// Writes a materialized view's rows (or hands them to a sink).
#[derive(Debug, Clone)]
pub struct ViewWriter {
    def: Arc<TableDef>,
    mode: Mode,
}

impl ViewWriter {
    pub fn new(def: Arc<TableDef>) -> Self {
        Self {
            def,
            mode: Mode::Store,
        }
    }

    /// A writer that hands rows to the sink `def` instead of storing them.
    pub fn for_sink(def: Arc<TableDef>, upsert: bool) -> Self {
        Self {
            def,
            mode: if upsert { Mode::Upsert } else { Mode::Append },
        }
    }

    /// The rows of `batch` as output: stored view rows, or rows for a sink.
    pub fn output(
        &self,
        batch: &RecordBatch,
        keep: Option<&BooleanArray>,
        group_keys: &[Vec<u8>],
    ) -> Result<Output> {
        if self.mode == Mode::Store {
            return self.rows(batch, keep, group_keys).map(Output::Writes);
        }
        let schema = self.def.arrow_schema();
        let rows = RecordBatch::try_new(schema, conform(&self.def, batch.columns())?)?;
        Ok(Output::Rows(match (self.mode, keep) {
            (Mode::Append, Some(keep)) => {
                datafusion::arrow::compute::filter_record_batch(&rows, keep)?
            }
            (Mode::Upsert, _) => {
                let deleted: BooleanArray = match keep {
                    Some(k) => datafusion::arrow::compute::not(k)?,
                    None => BooleanArray::from(vec![false; rows.num_rows()]),
                };
                let mut fields: Vec<_> = rows.schema().fields().iter().cloned().collect();
                fields.push(Arc::new(datafusion::arrow::datatypes::Field::new(
                    DELETED_COLUMN,
                    datafusion::arrow::datatypes::DataType::Boolean,
                    false,
                )));
                let mut columns = rows.columns().to_vec();
                columns.push(Arc::new(deleted));
                RecordBatch::try_new(
                    Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
                    columns,
                )?
            }
            _ => rows,
        }))
    }

    /// The output of rows that carry no group key (after window functions): each is keyed
    /// by its primary-key columns, or by the encoding of the whole row.
    pub fn output_by_row(&self, batch: &RecordBatch) -> Result<Output> {
        let fields = batch
            .columns()
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect();
        let rows = RowConverter::new(fields)?.convert_columns(batch.columns())?;
        let keys: Vec<Vec<u8>> = (0..batch.num_rows())
            .map(|i| rows.row(i).as_ref().to_vec())
            .collect();
        self.output(batch, None, &keys)
    }

    /// Puts row `i` of `batch` (or deletes it where `keep` is false). Rows are keyed by the
    /// view's primary key (its group columns) when it has one, else by the group's encoding.
    pub fn rows(
        &self,
        batch: &RecordBatch,
        keep: Option<&BooleanArray>,
        group_keys: &[Vec<u8>],
    ) -> Result<Vec<WriteOp>> {
        let arrays = conform(&self.def, batch.columns())?;
        let cols = refs(&self.def, &arrays)?;
        let prefix = self.def.key_prefix();
        let mut ops = Vec::with_capacity(batch.num_rows());
        for (i, group) in group_keys.iter().enumerate() {
            let mut k = prefix.clone();
            let pk = &self.def.primary_key;
            if !pk.is_empty() && pk.iter().all(|&c| !arrays[c].is_null(i)) {
                for &c in pk {
                    key::encode_value(&cols[c], i, &mut k);
                }
            } else {
                // No key columns, or a NULL group value: key by the group itself, after
                // every key-encoded row (0xff never starts a UTF-8 or small-number key).
                if !pk.is_empty() {
                    k.extend_from_slice(&[0xff, 0xff]);
                }
                k.extend_from_slice(group);
            }
            if keep.is_some_and(|m| !m.value(i)) {
                ops.push(WriteOp::Delete(k));
            } else {
                let mut v = Vec::with_capacity(64);
                row::encode_row(&cols, i, &mut v);
                ops.push(WriteOp::Put(k, v));
            }
        }
        Ok(ops)
    }
}

/// Key of output row `seq` of a stream (and of event `seq` of a push source's log).
pub fn seq_key(def: &TableDef, seq: u64) -> Vec<u8> {
    let mut k = def.key_prefix();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// A stream's output rows, numbered from `first_seq`.
pub fn sequenced_rows(def: &TableDef, batch: &RecordBatch, first_seq: u64) -> Result<Vec<WriteOp>> {
    let arrays = conform(def, batch.columns())?;
    let cols = refs(def, &arrays)?;
    Ok((0..batch.num_rows())
        .map(|i| {
            let mut v = Vec::with_capacity(64);
            row::encode_row(&cols, i, &mut v);
            WriteOp::Put(seq_key(def, first_seq + i as u64), v)
        })
        .collect())
}

/// Columns of a `<source>_errors` table.
pub fn dead_letter_columns() -> Vec<crate::catalog::ColumnDef> {
    use crate::types::SqlType;
    let col = |name: &str, ty: SqlType, nullable: bool| crate::catalog::ColumnDef {
        name: name.into(),
        ty,
        nullable,
        default: None,
        identity: None,
        comment: None,
    };
    vec![
        col("partition", SqlType::Int4, false),
        col("offset", SqlType::Int8, false),
        col("payload", SqlType::Text, true),
        col("error", SqlType::Text, false),
        col("arrived_at", SqlType::Timestamptz, false),
    ]
}

/// Columns of a webhook sink's `<sink>_errors`: the rows of requests that never succeeded,
/// keyed by their idempotency key.
pub fn failed_request_columns() -> Vec<crate::catalog::ColumnDef> {
    use crate::types::SqlType;
    let col = |name: &str, ty: SqlType| crate::catalog::ColumnDef {
        name: name.into(),
        ty,
        nullable: false,
        default: None,
        identity: None,
        comment: None,
    };
    vec![
        col("key", SqlType::Text),
        col("payload", SqlType::Text),
        col("error", SqlType::Text),
        col("attempts", SqlType::Int4),
        col("failed_at", SqlType::Timestamptz),
    ]
}

/// `<sink>_errors` rows for requests that never succeeded.
pub fn failed_request_rows(
    def: &TableDef,
    failed: &[eddy_connectors::webhook::Failed],
    failed_us: i64,
) -> Result<Vec<WriteOp>> {
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(
            failed
                .iter()
                .map(|f| Some(f.key.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            failed
                .iter()
                .map(|f| Some(f.row.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            failed
                .iter()
                .map(|f| Some(f.error.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            failed
                .iter()
                .map(|f| f.attempts as i32)
                .collect::<Int32Array>(),
        ),
        Arc::new(
            TimestampMicrosecondArray::from(vec![failed_us; failed.len()]).with_timezone("+00:00"),
        ),
    ];
    keyed_rows(def, &arrays)
}

/// Columns a `<source>_late` table adds to the source's own.
pub fn late_event_columns() -> Vec<crate::catalog::ColumnDef> {
    use crate::types::SqlType;
    let col = |name: &str, ty: SqlType| crate::catalog::ColumnDef {
        name: name.into(),
        ty,
        nullable: false,
        default: None,
        identity: None,
        comment: None,
    };
    vec![
        col("late_partition", SqlType::Int4),
        col("late_offset", SqlType::Int8),
        col("late_at", SqlType::Timestamptz),
    ]
}

/// Late events as rows of the late table, keyed by their (partition, offset).
pub fn late_event_rows(
    def: &TableDef,
    rows: &RecordBatch,
    origins: &[(i32, i64)],
    now_us: i64,
) -> Result<Vec<WriteOp>> {
    let mut arrays: Vec<ArrayRef> = rows.columns().to_vec();
    arrays.push(Arc::new(
        origins.iter().map(|o| o.0).collect::<Int32Array>(),
    ));
    arrays.push(Arc::new(
        origins.iter().map(|o| o.1).collect::<Int64Array>(),
    ));
    arrays.push(Arc::new(
        TimestampMicrosecondArray::from(vec![now_us; origins.len()]).with_timezone("+00:00"),
    ));
    keyed_rows(def, &conform(def, &arrays)?)
}

/// Puts of every row of `arrays` (the table's columns, in its types) under its primary key.
fn keyed_rows(def: &TableDef, arrays: &[ArrayRef]) -> Result<Vec<WriteOp>> {
    let cols = refs(def, arrays)?;
    let prefix = def.key_prefix();
    let n = arrays.first().map_or(0, |a| a.len());
    Ok((0..n)
        .map(|i| {
            let mut k = prefix.clone();
            for &c in &def.primary_key {
                key::encode_value(&cols[c], i, &mut k);
            }
            let mut v = Vec::with_capacity(64);
            row::encode_row(&cols, i, &mut v);
            WriteOp::Put(k, v)
        })
        .collect())
}

/// Dead letters as rows of the errors table, keyed by (partition, offset).
pub fn dead_letter_rows(
    def: &TableDef,
    dead: &[DeadLetter],
    arrived_us: i64,
) -> Result<Vec<WriteOp>> {
    if dead.is_empty() {
        return Ok(Vec::new());
    }
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(dead.iter().map(|d| d.partition).collect::<Int32Array>()),
        Arc::new(dead.iter().map(|d| d.offset).collect::<Int64Array>()),
        Arc::new(
            dead.iter()
                .map(|d| Some(String::from_utf8_lossy(&d.payload).into_owned()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            dead.iter()
                .map(|d| Some(d.error.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            TimestampMicrosecondArray::from(vec![arrived_us; dead.len()]).with_timezone("+00:00"),
        ),
    ];
    keyed_rows(def, &arrays)
}
