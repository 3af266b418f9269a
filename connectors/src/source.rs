//! The one source trait every connector implements.
//!
//! A source yields Arrow record batches of its declared columns, plus the events it could not
//! decode ([`DeadLetter`]s, which the engine stores in the source's `<name>_errors` table).
//! Its position is a set of per-partition offsets ([`Positions`]): the engine stores them with
//! the checkpoint and reopens the source at exactly those offsets after a restart, so a source
//! never commits offsets anywhere else (Kafka's own offset commit is never used).

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::error::Result;

/// Partition → offset of the next event to read.
pub type Positions = BTreeMap<i32, i64>;

/// An event that could not become a row, kept with its origin and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub error: String,
}

#[derive(Debug, Clone)]
pub struct SourceBatch {
    /// Rows in the source's declared schema.
    pub rows: RecordBatch,
    pub dead_letters: Vec<DeadLetter>,
    /// Partition and offset of each row, in row order (late events are stored under them).
    pub origins: Vec<(i32, i64)>,
}

impl SourceBatch {
    pub fn is_empty(&self) -> bool {
        self.rows.num_rows() == 0 && self.dead_letters.is_empty()
    }
}

#[derive(Debug)]
pub enum Poll {
    Batch(SourceBatch),
    /// Nothing arrived within the timeout.
    Idle,
    /// A bounded source has delivered everything.
    Finished,
}

/// A running source. Blocking: the engine drives it from a dedicated thread.
pub trait Source: Send {
    /// The next batch of at most `max_rows` events, waiting at most `timeout` for data.
    fn poll(&mut self, max_rows: usize, timeout: Duration) -> Result<Poll>;

    /// Where the source stands: the offsets after the last event returned by `poll`.
    fn positions(&self) -> Positions;

    fn schema(&self) -> SchemaRef;

    /// Every partition the source reads, including those that have had no events yet (each
    /// holds the watermark back until it has events, or goes idle).
    fn partitions(&self) -> Vec<i32> {
        self.positions().keys().copied().collect()
    }

    /// Whether event time is tracked per partition. A source whose partitions are read one
    /// after another (files in name order) has one event-time order across them.
    fn watermark_per_partition(&self) -> bool {
        true
    }
}

/// What a connector needs to open a source.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Source name, for messages.
    pub name: String,
    /// Declared columns; a non-nullable field is a NOT NULL column.
    pub schema: SchemaRef,
    pub options: crate::options::Options,
    /// Milliseconds since the epoch when the source was created (generators use it as the
    /// start of event time, so replays produce the same timestamps).
    pub created_at_ms: i64,
}
