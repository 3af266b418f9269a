//! One reader per source: the pipelines that read a source (a connector: Kafka, files,
//! generators; or the log of a push source or an appending view) share one reader.
//!
//! A [`Hub`] owns the connector and a thread that polls it and hands each batch, with the
//! connector's positions after it, to every subscribed pipeline. Each pipeline still keeps its
//! own positions (they are what its checkpoints record) and drops the rows of a batch that lie
//! before them, so pipelines that resumed from different checkpoints share one reader: a
//! source's offsets only grow within a partition, and a row at offset `o` was read by a
//! pipeline whose position there is past `o`.
//!
//! A pipeline joins the hub only where the hub's next batch cannot skip a row it has not read:
//! when its positions are at or past the hub's in every partition the hub reads. Until then it
//! reads on its own connector, from its own positions (a new view over an old topic, a
//! pipeline restored from an older checkpoint), and joins as soon as it has caught up. While
//! no pipeline takes a batch the hub waits (the source goes at its pipelines' pace); a
//! pipeline whose queue stays full while others take the batches (a slow sink, a join waiting
//! for its other input's barrier) is let go and reads on its own again from where it stands,
//! so one pipeline cannot hold back the others (and pipelines that wait for each other's
//! inputs cannot wait in a circle). The hub closes when its last pipeline leaves.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use eddy_connectors::{Error, Poll, Positions, Result, Source, SourceBatch};
use parking_lot::Mutex;

/// Opens the connector of a source at the given positions.
pub type OpenSource = Arc<dyn Fn(&Positions) -> Result<Box<dyn Source>> + Send + Sync>;

/// Batches a pipeline may have waiting before the hub lets it go.
const QUEUE_BATCHES: usize = 16;

/// How long a reader's queue may stay full while other readers take the hub's batches
/// before the hub lets it go.
const LET_GO_AFTER: Duration = Duration::from_millis(200);

/// How long the hub waits for events per poll.
const HUB_POLL: Duration = Duration::from_millis(20);

/// The hubs of the sources being read, by source id.
#[derive(Default)]
pub struct SourceHubs {
    hubs: Mutex<HashMap<u32, Arc<Hub>>>,
}

enum HubMessage {
    Batch(Arc<SourceBatch>, Arc<Positions>),
    Finished,
    Failed(String),
}

/// One source's shared reader.
pub struct Hub {
    state: Mutex<HubState>,
    schema: SchemaRef,
    per_partition: bool,
}

struct Subscriber {
    id: u64,
    tx: SyncSender<HubMessage>,
    /// Alive while the reader is open.
    token: Weak<()>,
}

struct HubState {
    subscribers: Vec<Subscriber>,
    /// The next subscriber's id.
    next_id: u64,
    /// Where the hub's next batch starts.
    positions: Positions,
    partitions: Vec<i32>,
    closed: bool,
}

/// Whether a reader at `own` misses no row by taking the hub's batches from now on: the hub
/// reads `partitions` and its next batch starts at `hub`. A partition the hub has not read
/// yet starts where its connector's startup option says (the end, for `startup = 'latest'`),
/// which may be past the reader, so the reader cannot join before the hub has read it.
fn caught_up(own: &Positions, hub: &Positions, partitions: &[i32]) -> bool {
    hub.iter().all(|(p, h)| own.get(p).is_some_and(|o| o >= h))
        && partitions.iter().all(|p| hub.contains_key(p))
}

impl SourceHubs {
    /// A reader of source `id` from `positions`: on the source's hub when it can join it at
    /// once, else on its own connector until it catches up. Blocking (opens connectors).
    pub fn open(
        self: &Arc<Self>,
        id: u32,
        positions: &Positions,
        open: OpenSource,
    ) -> Result<Box<dyn Source>> {
        let hub = self.hubs.lock().get(&id).cloned();
        let mut reader = SharedSource {
            hubs: self.clone(),
            id,
            open,
            own: positions.clone(),
            hub: None,
            rx: None,
            token: None,
            private: None,
            schema: None,
            per_partition: true,
        };
        if let Some(hub) = hub
            && reader.try_join(&hub, false)
        {
            return Ok(Box::new(reader));
        }
        let private = (reader.open)(positions)?;
        reader.schema = Some(private.schema());
        reader.per_partition = private.watermark_per_partition();
        reader.private = Some(private);
        // Without a hub, this reader's connector becomes one.
        reader.start_hub_if_none();
        Ok(Box::new(reader))
    }

    #[cfg(test)]
    fn hub_count(&self) -> usize {
        self.hubs.lock().len()
    }
}

impl Hub {
    /// Runs the hub's connector until it fails, finishes or has no readers left.
    fn run(self: Arc<Self>, hubs: Arc<SourceHubs>, id: u32, mut source: Box<dyn Source>) {
        loop {
            let message = match source.poll(super::pipeline::SOURCE_BATCH_ROWS, HUB_POLL) {
                Ok(Poll::Batch(batch)) => Some(HubMessage::Batch(
                    Arc::new(batch),
                    Arc::new(source.positions()),
                )),
                Ok(Poll::Idle) => None,
                Ok(Poll::Finished) => Some(HubMessage::Finished),
                Err(e) => Some(HubMessage::Failed(e.to_string())),
            };
            let ends = matches!(message, Some(HubMessage::Finished | HubMessage::Failed(_)));
            if let Some(message) = message {
                self.deliver(&message, source.as_ref());
            }
            let mut state = self.state.lock();
            // Readers that closed leave (an idle hub sends nothing that would notice).
            state.subscribers.retain(|s| s.token.strong_count() > 0);
            if ends || state.subscribers.is_empty() {
                state.closed = true;
                state.subscribers.clear();
                drop(state);
                let mut hubs = hubs.hubs.lock();
                if hubs.get(&id).is_some_and(|h| Arc::ptr_eq(h, &self)) {
                    hubs.remove(&id);
                }
                return;
            }
        }
    }

    /// Hands `message` to every reader subscribed now. A reader whose queue is full is
    /// waited for while no reader has taken the message (the source's pace is then the
    /// pipelines'), and let go once it has stayed full for `LET_GO_AFTER` while others took
    /// it: it then reads on its own from where it stands.
    fn deliver(&self, message: &HubMessage, source: &dyn Source) {
        let copy = || match message {
            HubMessage::Batch(b, p) => HubMessage::Batch(b.clone(), p.clone()),
            HubMessage::Finished => HubMessage::Finished,
            HubMessage::Failed(e) => HubMessage::Failed(e.clone()),
        };
        let audience = {
            let mut state = self.state.lock();
            if let HubMessage::Batch(_, positions) = message {
                // Readers that join from now on start after this batch.
                state.positions = (**positions).clone();
                state.partitions = source.partitions();
            }
            state.next_id
        };
        let mut delivered: Vec<u64> = Vec::new();
        let mut full_since: Option<std::time::Instant> = None;
        loop {
            let mut state = self.state.lock();
            let mut full = Vec::new();
            state.subscribers.retain(|s| {
                if s.id >= audience || delivered.contains(&s.id) {
                    return true;
                }
                match s.tx.try_send(copy()) {
                    Ok(()) => {
                        delivered.push(s.id);
                        true
                    }
                    Err(TrySendError::Full(_)) => {
                        full.push(s.id);
                        true
                    }
                    Err(TrySendError::Disconnected(_)) => false,
                }
            });
            if full.is_empty() {
                return;
            }
            let since = *full_since.get_or_insert_with(std::time::Instant::now);
            if !delivered.is_empty() && since.elapsed() >= LET_GO_AFTER {
                state.subscribers.retain(|s| !full.contains(&s.id));
                return;
            }
            drop(state);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A pipeline's reader of a shared source.
struct SharedSource {
    hubs: Arc<SourceHubs>,
    id: u32,
    open: OpenSource,
    /// Where this reader stands (what its checkpoints record).
    own: Positions,
    hub: Option<Arc<Hub>>,
    rx: Option<Receiver<HubMessage>>,
    /// Held while subscribed: the hub drops readers whose token is gone.
    token: Option<Arc<()>>,
    /// The reader's own connector, while it reads apart from the hub.
    private: Option<Box<dyn Source>>,
    schema: Option<SchemaRef>,
    per_partition: bool,
}

impl SharedSource {
    /// Subscribes to `hub` if this reader has caught up with it (or `first`: the hub starts
    /// where this reader stands).
    fn try_join(&mut self, hub: &Arc<Hub>, first: bool) -> bool {
        let mut state = hub.state.lock();
        if state.closed || !(first || caught_up(&self.own, &state.positions, &state.partitions)) {
            return false;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_BATCHES);
        let token = Arc::new(());
        let id = state.next_id;
        state.next_id += 1;
        state.subscribers.push(Subscriber {
            id,
            tx,
            token: Arc::downgrade(&token),
        });
        self.token = Some(token);
        drop(state);
        self.schema = Some(hub.schema.clone());
        self.per_partition = hub.per_partition;
        self.hub = Some(hub.clone());
        self.rx = Some(rx);
        if self.private.take().is_some() {
            tracing::debug!(
                "source {}: a reader caught up and shares its reader",
                self.id
            );
        }
        true
    }

    /// Turns this reader's own connector into the source's hub if the source has none.
    fn start_hub_if_none(&mut self) {
        let mut hubs = self.hubs.hubs.lock();
        if hubs.contains_key(&self.id) {
            return;
        }
        let Some(source) = self.private.take() else {
            return;
        };
        let hub = Arc::new(Hub {
            schema: source.schema(),
            per_partition: source.watermark_per_partition(),
            state: Mutex::new(HubState {
                subscribers: Vec::new(),
                next_id: 0,
                positions: source.positions(),
                partitions: source.partitions(),
                closed: false,
            }),
        });
        hubs.insert(self.id, hub.clone());
        drop(hubs);
        self.try_join(&hub, true);
        let (hubs, id) = (self.hubs.clone(), self.id);
        let runner = hub.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("source-hub-{id}"))
            .spawn(move || runner.run(hubs, id, source));
        if spawned.is_err() {
            // No thread: the hub never runs; this reader reads on its own connector.
            hub.state.lock().closed = true;
            self.hubs.hubs.lock().remove(&self.id);
            self.hub = None;
            self.rx = None;
            self.token = None;
        }
    }

    /// The reader was let go by its hub (or the hub closed): it reads on its own again.
    fn leave_hub(&mut self) -> Result<()> {
        tracing::debug!(
            "source {}: a reader reads on its own from {:?}",
            self.id,
            self.own
        );
        self.rx = None;
        self.token = None;
        self.hub = None;
        self.private = Some((self.open)(&self.own)?);
        self.start_hub_if_none();
        Ok(())
    }

    /// The rows of a hub batch this reader has not read yet.
    fn unread(&self, batch: Arc<SourceBatch>) -> Result<SourceBatch> {
        // Rows of one partition come together: look each partition's position up once.
        let mut last: Option<(i32, Option<i64>)> = None;
        let mut fresh = |&(p, o): &(i32, i64)| {
            let own = match last {
                Some((q, own)) if q == p => own,
                _ => {
                    let own = self.own.get(&p).copied();
                    last = Some((p, own));
                    own
                }
            };
            own.is_none_or(|own| o >= own)
        };
        let keep: Vec<bool> = batch.origins.iter().map(&mut fresh).collect();
        let dead_fresh: Vec<bool> = batch
            .dead_letters
            .iter()
            .map(|d| fresh(&(d.partition, d.offset)))
            .collect();
        // The last reader to get a batch takes it without a copy.
        let batch = Arc::try_unwrap(batch).unwrap_or_else(|shared| SourceBatch {
            rows: shared.rows.clone(),
            dead_letters: shared.dead_letters.clone(),
            origins: shared.origins.clone(),
        });
        let mut dead = dead_fresh.into_iter();
        let dead_letters = batch
            .dead_letters
            .into_iter()
            .filter(|_| dead.next().unwrap_or(true))
            .collect();
        if keep.iter().all(|k| *k) {
            return Ok(SourceBatch {
                rows: batch.rows,
                dead_letters,
                origins: batch.origins,
            });
        }
        let mask: BooleanArray = keep.iter().map(|k| Some(*k)).collect();
        let mut flags = keep.into_iter();
        Ok(SourceBatch {
            rows: filter_record_batch(&batch.rows, &mask)
                .map_err(|e| Error::External(e.to_string()))?,
            dead_letters,
            origins: batch
                .origins
                .into_iter()
                .filter(|_| flags.next().unwrap_or(false))
                .collect(),
        })
    }

    fn advance(&mut self, to: &Positions) {
        for (p, o) in to {
            let own = self.own.entry(*p).or_insert(*o);
            *own = (*own).max(*o);
        }
    }
}

impl Source for SharedSource {
    fn poll(&mut self, max_rows: usize, timeout: Duration) -> Result<Poll> {
        if let Some(private) = &mut self.private {
            let poll = private.poll(max_rows, timeout)?;
            self.own = private.positions();
            // Caught up with the hub: take its batches from now on.
            let hub = self.hubs.hubs.lock().get(&self.id).cloned();
            match hub {
                Some(hub) => {
                    self.try_join(&hub, false);
                }
                None => self.start_hub_if_none(),
            }
            return Ok(poll);
        }
        let Some(rx) = &self.rx else {
            self.leave_hub()?;
            return Ok(Poll::Idle);
        };
        match rx.recv_timeout(timeout) {
            Ok(HubMessage::Batch(batch, positions)) => {
                let unread = self.unread(batch)?;
                self.advance(&positions);
                Ok(Poll::Batch(unread))
            }
            Ok(HubMessage::Finished) => Ok(Poll::Finished),
            Ok(HubMessage::Failed(e)) => Err(Error::External(e)),
            Err(RecvTimeoutError::Timeout) => Ok(Poll::Idle),
            Err(RecvTimeoutError::Disconnected) => {
                self.leave_hub()?;
                Ok(Poll::Idle)
            }
        }
    }

    fn positions(&self) -> Positions {
        self.own.clone()
    }

    fn schema(&self) -> SchemaRef {
        match (&self.schema, &self.hub) {
            (Some(s), _) => s.clone(),
            (None, Some(h)) => h.schema.clone(),
            (None, None) => unreachable!("a reader has a schema once open"),
        }
    }

    fn partitions(&self) -> Vec<i32> {
        match (&self.private, &self.hub) {
            (Some(p), _) => p.partitions(),
            (None, Some(h)) => {
                let mut partitions = h.state.lock().partitions.clone();
                for p in self.own.keys() {
                    if !partitions.contains(p) {
                        partitions.push(*p);
                    }
                }
                partitions
            }
            (None, None) => self.own.keys().copied().collect(),
        }
    }

    fn watermark_per_partition(&self) -> bool {
        self.per_partition
    }
}

#[cfg(test)]
mod tests;
