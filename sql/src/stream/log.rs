//! Push sources: events arrive by INSERT or HTTP and are appended, durably and in order, to
//! the source's log (its stored rows, keyed by arrival sequence). Pipelines read the log
//! through [`LogSource`], whose position is the next sequence number.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;
use eddy_connectors::{Poll, Positions, Source, SourceBatch};
use parking_lot::{Condvar, Mutex};

use super::view::{dead_letter_rows, seq_key, sequenced_rows};
use crate::catalog::TableDef;
use crate::codec::row::RowDecoder;
use crate::error::Result;
use crate::storage::{KvStore, prefix_end};

/// Wakes log readers when any push source gets events.
#[derive(Debug, Default)]
pub struct LogSignal {
    appended: Mutex<u64>,
    cv: Condvar,
}

impl LogSignal {
    fn notify(&self) {
        *self.appended.lock() += 1;
        self.cv.notify_all();
    }

    fn wait(&self, seen: u64, timeout: Duration) {
        let mut n = self.appended.lock();
        if *n == seen {
            self.cv.wait_for(&mut n, timeout);
        }
    }

    fn current(&self) -> u64 {
        *self.appended.lock()
    }
}

/// Appends to push-source logs; one writer at a time per engine keeps sequence numbers dense
/// and in commit order, so a reader never passes a number that is filled in later.
#[derive(Debug, Default)]
pub struct LogWriter {
    next: Mutex<std::collections::HashMap<u32, u64>>,
    pub signal: Arc<LogSignal>,
}

impl LogWriter {
    /// Appends `batch` (already in the source's column types) and the dead letters of the
    /// same request (numbered after the rows); returns the first sequence number used.
    pub fn append(
        &self,
        kv: &dyn KvStore,
        def: &TableDef,
        errors: Option<&TableDef>,
        batch: &RecordBatch,
        dead: &mut [eddy_connectors::DeadLetter],
        now_us: i64,
    ) -> Result<u64> {
        let mut next = self.next.lock();
        let first = match next.get(&def.id) {
            Some(n) => *n,
            None => {
                let prefix = def.key_prefix();
                match kv.last_key(&prefix, &prefix_end(&prefix))? {
                    Some(k) if k.len() == prefix.len() + 8 => {
                        u64::from_be_bytes(k[prefix.len()..].try_into().expect("8 bytes")) + 1
                    }
                    _ => 0,
                }
            }
        };
        let mut ops = sequenced_rows(def, batch, first)?;
        let mut seq = first + batch.num_rows() as u64;
        for d in dead.iter_mut() {
            d.partition = 0;
            d.offset = seq as i64;
            seq += 1;
        }
        if let Some(errors) = errors {
            ops.extend(dead_letter_rows(errors, dead, now_us)?);
        }
        if !ops.is_empty() {
            kv.write(ops, true)?;
        }
        next.insert(def.id, seq);
        drop(next);
        self.signal.notify();
        Ok(first)
    }

    pub fn forget(&self, table_id: u32) {
        self.next.lock().remove(&table_id);
    }
}

pub struct LogSource {
    def: Arc<TableDef>,
    schema: SchemaRef,
    kv: Arc<dyn KvStore>,
    signal: Arc<LogSignal>,
    next: u64,
}

impl LogSource {
    pub fn open(
        def: Arc<TableDef>,
        schema: SchemaRef,
        kv: Arc<dyn KvStore>,
        signal: Arc<LogSignal>,
        start: &Positions,
    ) -> Self {
        let next = start.get(&0).copied().unwrap_or(0).max(0) as u64;
        Self {
            def,
            schema,
            kv,
            signal,
            next,
        }
    }
}

impl Source for LogSource {
    fn poll(&mut self, max_rows: usize, timeout: Duration) -> eddy_connectors::Result<Poll> {
        let external = |e: crate::error::Error| eddy_connectors::Error::External(e.to_string());
        let seen = self.signal.current();
        let end = prefix_end(&self.def.key_prefix());
        let mut chunk = self
            .kv
            .scan(&seq_key(&self.def, self.next), &end, max_rows)
            .map_err(external)?;
        if chunk.is_empty() {
            self.signal.wait(seen, timeout);
            chunk = self
                .kv
                .scan(&seq_key(&self.def, self.next), &end, max_rows)
                .map_err(external)?;
            if chunk.is_empty() {
                return Ok(Poll::Idle);
            }
        }
        let mut decoder = RowDecoder::new(&self.def.types(), None, chunk.len());
        for (_, v) in &chunk {
            decoder.append(v).map_err(external)?;
        }
        let columns: Vec<ArrayRef> = decoder.finish().map_err(external)?;
        let options = RecordBatchOptions::new().with_row_count(Some(chunk.len()));
        let rows = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        let prefix_len = self.def.key_prefix().len();
        let seq = |k: &[u8]| u64::from_be_bytes(k[prefix_len..].try_into().expect("8-byte key"));
        let origins: Vec<(i32, i64)> = chunk.iter().map(|(k, _)| (0, seq(k) as i64)).collect();
        self.next = origins.last().expect("not empty").1 as u64 + 1;
        Ok(Poll::Batch(SourceBatch {
            rows,
            dead_letters: Vec::new(),
            origins,
        }))
    }

    fn positions(&self) -> Positions {
        Positions::from([(0, self.next as i64)])
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
