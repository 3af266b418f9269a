//! Streaming operators, one per file (the aggregates move here as the runtime becomes a
//! graph).
//!
//! - [`change_join`]: equi-join of two materialized views, changelog in and out.
//! - [`group_changes`]: an aggregate's changed groups as changes (for a top-N after it).
//! - [`interval_join`]: two streams joined within a time bound, in event time.
//! - [`lookup_join`]: events joined with a table's row by primary key, at processing time.
//! - [`union`]: UNION ALL of two sources.
//! - [`over`]: OVER window functions over events, emitted as the watermark passes them.
//! - [`materialize`]: a changelog stored as a view's rows (a multiset).
//! - [`normalize`]: a view's upserts as changes (deletes of old rows, inserts of new ones).
//! - [`sink_changes`]: an updating view's changes as the rows a sink sends.
//! - [`per_window`]: window functions over the rows of closed windows (top-N per window).
//! - [`top_n`]: ranked rows within a bound, or ORDER BY ... LIMIT, changes out.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};

use crate::error::Result;

pub mod asof_join;
pub mod change_join;
pub mod group_changes;
pub mod interval_join;
pub mod lookup_join;
pub mod match_recognize;
pub mod materialize;
pub mod normalize;
pub mod over;
pub mod per_window;
pub mod sink_changes;
pub mod top_n;
pub mod union;

/// A time column as microseconds (NULL stays None).
pub(crate) fn micros(array: &dyn Array) -> Result<Vec<Option<i64>>> {
    let a = cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    Ok(a.as_primitive::<TimestampMicrosecondType>()
        .iter()
        .collect())
}

/// A time (microseconds) as 8 key bytes that sort as the times do.
pub(crate) fn time_key(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

/// The time [`time_key`] encoded.
pub(crate) fn time_from_key(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}
