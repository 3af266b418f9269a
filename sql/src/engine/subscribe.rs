//! `SUBSCRIBE [TO] <materialized view> [WITH (snapshot = true|false, progress = true|false)]`:
//! the view's rows, then each change to them as its checkpoint commits, pushed to the client
//! for as long as it reads (an unending result; psycopg's `cursor.stream()`, or a cursor:
//! `DECLARE c CURSOR FOR SUBSCRIBE ...` then `FETCH`).
//!
//! Each row is `(eddy_epoch, eddy_op, <the view's columns>)`: `eddy_epoch` is the view's
//! checkpoint epoch that committed it, `eddy_op` is `insert` (a new row key), `update` (the
//! row of a key changed: its new values), `delete` (the row that went) or, with
//! `progress = true`, `progress`: every change up to that epoch has been sent (its columns
//! are NULL). The snapshot's rows are inserts at the epoch it was read at.
//!
//! A subscriber is a reader of the view's changelog (`stream/changelog.rs`), like a
//! pipeline that reads the view: it registers from the view's next entry, waits for the
//! view's next checkpoint, reads the rows (the snapshot), then follows the log, moving its
//! position forward so the view can drop the entries it has passed. Its registration ends
//! with the subscription; ones a crash left behind are removed when the server starts.
//! It keeps the view's rows by key (to tell inserts from updates and to show what a delete
//! removed), so it holds as much memory as the view's rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast::ObjectName;

use super::session::{QueryOutput, Session};
use crate::catalog::{Relation, TableDef, TableKind};
use crate::codec::row::RowDecoder;
use crate::error::{Error, Result, sqlstate};
use crate::keys::{changelog_key, subscription_key};
use crate::storage::{KvStore, WriteOp, prefix_end};

/// Changelog readers numbered from here are subscriptions (pipelines are numbered by their
/// table ids, far below).
pub const FIRST_SESSION_READER: u32 = 0xF000_0000;

static NEXT_READER: AtomicU32 = AtomicU32::new(0);

/// Rows read from the store per step (snapshot and log).
const CHUNK: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub name: ObjectName,
    pub snapshot: bool,
    pub progress: bool,
}

impl std::fmt::Display for Subscribe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SUBSCRIBE TO {} WITH (snapshot = {}, progress = {})",
            self.name, self.snapshot, self.progress
        )
    }
}

/// The rows a subscription returns for a view.
pub fn schema(def: &TableDef) -> SchemaRef {
    let mut fields = vec![
        Field::new("eddy_epoch", DataType::Int64, false),
        Field::new("eddy_op", DataType::Utf8, false),
    ];
    fields.extend(def.columns.iter().map(|c| c.ty.arrow_field(&c.name, true)));
    Arc::new(Schema::new(fields))
}

/// The materialized view a SUBSCRIBE names, or the error that says why it cannot be.
pub fn target(session: &Session, name: &ObjectName) -> Result<Arc<TableDef>> {
    match session.resolve(name)? {
        Some((_, _, Relation::Table(def)))
            if matches!(def.kind, TableKind::MaterializedView(_)) =>
        {
            Ok(def)
        }
        Some((_, _, Relation::Table(def))) => Err(Error::user(
            sqlstate::WRONG_OBJECT_TYPE,
            format!(
                "cannot subscribe to {} \"{}\"",
                def.kind.describe(),
                def.name
            ),
        )
        .with_hint("SUBSCRIBE follows materialized views; create one over it to follow it.")),
        Some(_) => Err(Error::user(
            sqlstate::WRONG_OBJECT_TYPE,
            format!("cannot subscribe to view \"{name}\""),
        )
        .with_hint("SUBSCRIBE follows materialized views.")),
        None => Err(Error::user(
            sqlstate::UNDEFINED_TABLE,
            format!("relation \"{name}\" does not exist"),
        )),
    }
}

/// Starts a subscription: its rows arrive as the returned stream is read, and it ends when
/// the stream is dropped (the client went away, or closed its cursor).
pub async fn start(session: &Session, subscribe: &Subscribe) -> Result<QueryOutput> {
    let def = target(session, &subscribe.name)?;
    let engine = session.engine().clone();
    let kv = engine.kv().clone();
    let reader = FIRST_SESSION_READER + NEXT_READER.fetch_add(1, Ordering::Relaxed) % 0x0FFF_FFFF;
    let shared = engine.streams.view_log(def.id);
    let registered = {
        let (kv, view) = (kv.clone(), def.id);
        tokio::task::spawn_blocking(move || {
            crate::stream::changelog::subscribe(kv.as_ref(), &shared, view, reader)
        })
        .await
        .map_err(|e| Error::internal(format!("subscription: {e}")))??
    };
    let registration = Registration {
        kv: kv.clone(),
        key: subscription_key(def.id, reader),
    };
    let schema = schema(&def);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let follower = Follower {
        engine: engine.clone(),
        def: def.clone(),
        kv,
        reader,
        next: registered,
        rows: HashMap::new(),
        schema: schema.clone(),
        snapshot: subscribe.snapshot,
        progress: subscribe.progress,
        _registration: registration,
    };
    tokio::spawn(follower.run(tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(QueryOutput::Rows {
        schema: schema.clone(),
        stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)),
        command: None,
    })
}

/// A subscription's place among the view's changelog readers, given up when it ends.
struct Registration {
    kv: Arc<dyn KvStore>,
    key: Vec<u8>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Err(e) = self
            .kv
            .write(vec![WriteOp::Delete(self.key.clone())], false)
        {
            tracing::warn!("ending a subscription: {e}");
        }
    }
}

/// Removes the registrations of subscriptions that a crash ended (at start-up).
pub fn remove_stale(kv: &dyn KvStore) -> Result<()> {
    let prefix = crate::keys::subscriptions_prefix();
    let stale: Vec<WriteOp> = kv
        .scan(&prefix, &prefix_end(&prefix), usize::MAX)?
        .into_iter()
        .filter(|(k, _)| crate::keys::subscriber_of(k).is_some_and(|r| r >= FIRST_SESSION_READER))
        .map(|(k, _)| WriteOp::Delete(k))
        .collect();
    if !stale.is_empty() {
        kv.write(stale, true)?;
    }
    Ok(())
}

type Item = datafusion::error::Result<RecordBatch>;

struct Follower {
    engine: Arc<crate::Engine>,
    def: Arc<TableDef>,
    kv: Arc<dyn KvStore>,
    reader: u32,
    /// The next changelog entry to read.
    next: u64,
    /// The view's rows as last sent, by row key (after the table prefix).
    rows: HashMap<Vec<u8>, Vec<u8>>,
    schema: SchemaRef,
    snapshot: bool,
    progress: bool,
    _registration: Registration,
}

/// One row to send: its epoch, operation and stored row (None: a progress row).
type Out = (u64, &'static str, Option<Vec<u8>>);

impl Follower {
    async fn run(mut self, tx: tokio::sync::mpsc::Sender<Item>) {
        if let Err(e) = self.follow(&tx).await {
            let _ = tx
                .send(Err(datafusion::error::DataFusionError::External(Box::new(
                    e,
                ))))
                .await;
        }
    }

    fn record(&self) -> Result<crate::stream::checkpoint::CheckpointRecord> {
        crate::stream::checkpoint::recover(
            self.kv
                .get(&crate::stream::checkpoint::record_key(self.def.id))?
                .as_deref(),
        )
    }

    /// Waits for the view's next checkpoint after `epoch`; false when the subscriber left
    /// or the view was dropped.
    async fn wait_past(&self, epoch: u64, tx: &tokio::sync::mpsc::Sender<Item>) -> Result<bool> {
        loop {
            if tx.is_closed() {
                return Ok(false);
            }
            if self.engine.catalog().table_by_id(self.def.id).is_none() {
                return Err(Error::user(
                    sqlstate::UNDEFINED_TABLE,
                    format!("materialized view \"{}\" was dropped", self.def.name),
                ));
            }
            if self.record()?.epoch > epoch {
                return Ok(true);
            }
            // A commit wakes the subscriber at once; the timeout notices a view or a
            // subscriber gone, and a pipeline that restarted (a new channel).
            match self.engine.streams.committed(self.def.id) {
                Some(mut committed) => {
                    let _ = tokio::time::timeout(Duration::from_millis(200), async {
                        while *committed.borrow_and_update() <= epoch {
                            if committed.changed().await.is_err() {
                                break;
                            }
                        }
                    })
                    .await;
                }
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn follow(&mut self, tx: &tokio::sync::mpsc::Sender<Item>) -> Result<()> {
        // Rows the view wrote before its sink learnt of this reader are in the table once it
        // commits its next checkpoint: the snapshot is read after that.
        let start = self.record()?.epoch;
        if !self.wait_past(start, tx).await? {
            return Ok(());
        }
        let at = self.record()?.epoch;
        let prefix = self.def.key_prefix();
        let mut from = prefix.clone();
        loop {
            let (kv, end) = (self.kv.clone(), prefix_end(&prefix));
            let begin = from.clone();
            let chunk = tokio::task::spawn_blocking(move || kv.scan(&begin, &end, CHUNK))
                .await
                .map_err(|e| Error::internal(format!("subscription: {e}")))??;
            let mut out = Vec::with_capacity(chunk.len());
            for (k, v) in &chunk {
                self.rows.insert(k[prefix.len()..].to_vec(), v.clone());
                if self.snapshot {
                    out.push((at, "insert", Some(v.clone())));
                }
            }
            if !self.send(tx, out).await {
                return Ok(());
            }
            match chunk.last() {
                Some((last, _)) if chunk.len() == CHUNK => {
                    from = last.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        if self.progress && !self.send(tx, vec![(at, "progress", None)]).await {
            return Ok(());
        }
        let mut sent_epoch = at;
        loop {
            let record = self.record()?;
            if record.next_seq > self.next {
                let out = self.changes(record.epoch, record.next_seq).await?;
                if !self.send(tx, out).await {
                    return Ok(());
                }
                self.kv.write(
                    vec![crate::stream::changelog::position_write(
                        self.def.id,
                        self.reader,
                        self.next,
                    )],
                    false,
                )?;
            }
            if record.epoch > sent_epoch {
                if self.progress && !self.send(tx, vec![(record.epoch, "progress", None)]).await {
                    return Ok(());
                }
                sent_epoch = record.epoch;
            }
            if !self.wait_past(sent_epoch, tx).await? {
                return Ok(());
            }
        }
    }

    /// The changes of the log entries up to `end` (committed by `epoch`), in order.
    async fn changes(&mut self, epoch: u64, end: u64) -> Result<Vec<Out>> {
        let mut out = Vec::new();
        while self.next < end {
            let (kv, view, from) = (self.kv.clone(), self.def.id, self.next);
            let chunk = tokio::task::spawn_blocking(move || {
                kv.scan(&changelog_key(view, from), &changelog_key(view, end), CHUNK)
            })
            .await
            .map_err(|e| Error::internal(format!("subscription: {e}")))??;
            if chunk.is_empty() {
                // Numbers an epoch took without writing entries (no reader yet).
                self.next = end;
                break;
            }
            for (k, v) in &chunk {
                let (key, row) = crate::stream::changelog::decode_entry(v)?;
                match (row, self.rows.get(key)) {
                    (Some(new), Some(old)) if old.as_slice() == new => {}
                    (Some(new), Some(_)) => {
                        out.push((epoch, "update", Some(new.to_vec())));
                        self.rows.insert(key.to_vec(), new.to_vec());
                    }
                    (Some(new), None) => {
                        out.push((epoch, "insert", Some(new.to_vec())));
                        self.rows.insert(key.to_vec(), new.to_vec());
                    }
                    (None, Some(_)) => {
                        let old = self.rows.remove(key).expect("present");
                        out.push((epoch, "delete", Some(old)));
                    }
                    (None, None) => {}
                }
                self.next = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes")) + 1;
            }
        }
        Ok(out)
    }

    /// Sends rows as one batch; false when the subscriber has gone.
    async fn send(&self, tx: &tokio::sync::mpsc::Sender<Item>, rows: Vec<Out>) -> bool {
        if rows.is_empty() {
            return !tx.is_closed();
        }
        let batch = match self.batch(rows) {
            Ok(b) => Ok(b),
            Err(e) => Err(datafusion::error::DataFusionError::External(Box::new(e))),
        };
        tx.send(batch).await.is_ok()
    }

    fn batch(&self, rows: Vec<Out>) -> Result<RecordBatch> {
        let n = rows.len();
        let epochs = Int64Array::from_iter_values(rows.iter().map(|(e, _, _)| *e as i64));
        let ops = StringArray::from_iter_values(rows.iter().map(|(_, op, _)| *op));
        let types = self.def.types();
        let mut decoder = RowDecoder::new(&types, None, n);
        let data: Vec<&[u8]> = rows.iter().filter_map(|(_, _, r)| r.as_deref()).collect();
        let columns: Vec<ArrayRef> = if data.len() == n {
            for r in &data {
                decoder.append(r)?;
            }
            decoder.finish()?
        } else if data.is_empty() {
            types
                .iter()
                .map(|t| new_null_array(&t.arrow_type(), n))
                .collect()
        } else {
            // Progress rows travel in batches of their own (see `send`'s callers).
            return Err(Error::internal(
                "a subscription batch mixed rows and progress",
            ));
        };
        let mut all: Vec<ArrayRef> = vec![Arc::new(epochs), Arc::new(ops)];
        all.extend(columns);
        Ok(RecordBatch::try_new(self.schema.clone(), all)?)
    }
}
