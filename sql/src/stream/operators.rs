//! Streaming operators, one per file (the aggregates move here as the runtime becomes a
//! graph).
//!
//! - [`interval_join`]: two streams joined within a time bound, in event time.
//! - [`lookup_join`]: events joined with a table's row by primary key, at processing time.
//! - [`union`]: UNION ALL of two sources.
//! - [`over`]: OVER window functions over events, emitted as the watermark passes them.

pub mod interval_join;
pub mod lookup_join;
pub mod over;
pub mod union;
