use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};

use super::*;

/// A source of `partitions` partitions whose offsets run up to `available` (shared, so a test
/// can make more events arrive); row value = offset * 10 + partition. Counts the connectors
/// opened.
#[derive(Clone)]
struct Events {
    partitions: i32,
    available: Arc<AtomicI64>,
    opened: Arc<AtomicUsize>,
}

struct EventsSource {
    events: Events,
    next: Positions,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]))
}

impl Source for EventsSource {
    fn poll(&mut self, max_rows: usize, timeout: Duration) -> Result<Poll> {
        let available = self.events.available.load(Ordering::SeqCst);
        let mut values = Vec::new();
        let mut origins = Vec::new();
        for p in 0..self.events.partitions {
            let next = self.next.entry(p).or_insert(0);
            while *next < available && values.len() < max_rows {
                values.push(*next * 10 + p as i64);
                origins.push((p, *next));
                *next += 1;
            }
        }
        if values.is_empty() {
            std::thread::sleep(timeout.min(Duration::from_millis(2)));
            return Ok(Poll::Idle);
        }
        Ok(Poll::Batch(SourceBatch {
            rows: RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values))]).unwrap(),
            dead_letters: Vec::new(),
            origins,
        }))
    }

    fn positions(&self) -> Positions {
        self.next.clone()
    }

    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn partitions(&self) -> Vec<i32> {
        (0..self.events.partitions).collect()
    }
}

impl Events {
    fn new(partitions: i32, available: i64) -> Self {
        Self {
            partitions,
            available: Arc::new(AtomicI64::new(available)),
            opened: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn opener(&self) -> OpenSource {
        let events = self.clone();
        Arc::new(move |start: &Positions| {
            events.opened.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(EventsSource {
                events: events.clone(),
                next: start.clone(),
            }) as Box<dyn Source>)
        })
    }
}

/// Polls `reader` until it has read up to `until` in every partition (or the deadline),
/// returning the values it read per partition, in order.
fn read(reader: &mut dyn Source, partitions: i32, until: i64) -> BTreeMap<i32, Vec<i64>> {
    let mut got: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (0..partitions).any(|p| reader.positions().get(&p).copied().unwrap_or(0) < until) {
        assert!(
            std::time::Instant::now() < deadline,
            "the reader stalls at {:?}",
            reader.positions()
        );
        if let Poll::Batch(b) = reader.poll(64, Duration::from_millis(20)).unwrap() {
            let values = b.rows.column(0).as_primitive::<Int64Type>();
            for (i, (p, o)) in b.origins.iter().enumerate() {
                assert_eq!(
                    values.value(i),
                    o * 10 + *p as i64,
                    "rows and origins agree"
                );
                got.entry(*p).or_default().push(*o);
            }
        }
    }
    got
}

fn offsets(from: i64, to: i64) -> Vec<i64> {
    (from..to).collect()
}

#[test]
fn readers_at_different_positions_share_one_connector_and_read_each_row_once() {
    let events = Events::new(2, 300);
    let hubs = Arc::new(SourceHubs::default());
    // The first reader's connector becomes the hub; the second is ahead of it and joins.
    let mut a = hubs
        .open(7, &Positions::from([(0, 0), (1, 0)]), events.opener())
        .unwrap();
    let mut b = hubs
        .open(7, &Positions::from([(0, 120), (1, 40)]), events.opener())
        .unwrap();
    assert_eq!(events.opened.load(Ordering::SeqCst), 1, "one connector");
    assert_eq!(hubs.hub_count(), 1);
    let got_b = read(b.as_mut(), 2, 300);
    let got_a = read(a.as_mut(), 2, 300);
    assert_eq!(got_a[&0], offsets(0, 300));
    assert_eq!(got_a[&1], offsets(0, 300));
    assert_eq!(got_b[&0], offsets(120, 300));
    assert_eq!(got_b[&1], offsets(40, 300));
    assert_eq!(
        events.opened.load(Ordering::SeqCst),
        1,
        "still one connector"
    );
    drop((a, b));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hubs.hub_count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the hub closes without readers"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_reader_behind_the_hub_catches_up_on_its_own_then_joins() {
    let events = Events::new(3, 200);
    let hubs = Arc::new(SourceHubs::default());
    let mut ahead = hubs.open(1, &Positions::new(), events.opener()).unwrap();
    read(ahead.as_mut(), 3, 200);
    // A new reader from the start cannot take the hub's batches (they start at 200).
    let mut behind = hubs.open(1, &Positions::new(), events.opener()).unwrap();
    assert_eq!(
        events.opened.load(Ordering::SeqCst),
        2,
        "the new reader reads on its own"
    );
    let got = read(behind.as_mut(), 3, 200);
    for p in 0..3 {
        assert_eq!(got[&p], offsets(0, 200));
    }
    // More events: both read them, the late reader now from the hub.
    events.available.store(500, Ordering::SeqCst);
    let got_behind = read(behind.as_mut(), 3, 500);
    let got_ahead = read(ahead.as_mut(), 3, 500);
    for p in 0..3 {
        assert_eq!(got_behind[&p], offsets(200, 500), "partition {p}");
        assert_eq!(got_ahead[&p], offsets(200, 500), "partition {p}");
    }
    let shared = behind_is_on_hub(&hubs, 1);
    assert!(shared, "the caught-up reader joined the hub");
}

fn behind_is_on_hub(hubs: &SourceHubs, id: u32) -> bool {
    hubs.hubs
        .lock()
        .get(&id)
        .is_some_and(|h| h.state.lock().subscribers.len() == 2)
}

#[test]
fn a_reader_that_falls_behind_is_let_go_and_misses_nothing() {
    let events = Events::new(1, 0);
    let hubs = Arc::new(SourceHubs::default());
    let mut fast = hubs
        .open(2, &Positions::from([(0, 0)]), events.opener())
        .unwrap();
    let mut slow = hubs
        .open(2, &Positions::from([(0, 0)]), events.opener())
        .unwrap();
    // Many batches arrive while the slow reader does not poll: its queue fills up and the
    // hub lets it go.
    let total = (QUEUE_BATCHES as i64 + 8) * crate::stream::pipeline::SOURCE_BATCH_ROWS as i64;
    events.available.store(total, Ordering::SeqCst);
    let got_fast = read(fast.as_mut(), 1, total);
    assert_eq!(got_fast[&0], offsets(0, total));
    let got_slow = read(slow.as_mut(), 1, total);
    assert_eq!(got_slow[&0], offsets(0, total), "every row once, in order");
    assert!(
        events.opened.load(Ordering::SeqCst) >= 2,
        "the slow reader read on its own connector"
    );
}

#[test]
fn a_partition_the_hub_has_not_read_keeps_a_new_reader_apart() {
    // The hub's connector has no position yet for partition 1 (as a Kafka source opened at
    // 'latest' before any event): a reader cannot know it would miss nothing there.
    let events = Events::new(2, 0);
    let hubs = Arc::new(SourceHubs::default());
    let _first = hubs.open(3, &Positions::new(), events.opener()).unwrap();
    let _second = hubs
        .open(3, &Positions::from([(0, 0), (1, 0)]), events.opener())
        .unwrap();
    assert_eq!(events.opened.load(Ordering::SeqCst), 2);
}

#[test]
fn a_failing_connector_fails_its_readers() {
    struct Broken;
    impl Source for Broken {
        fn poll(&mut self, _: usize, _: Duration) -> Result<Poll> {
            Err(Error::External("broker unreachable".into()))
        }
        fn positions(&self) -> Positions {
            Positions::from([(0, 0)])
        }
        fn schema(&self) -> SchemaRef {
            schema()
        }
    }
    let hubs = Arc::new(SourceHubs::default());
    let open: OpenSource = Arc::new(|_: &Positions| Ok(Box::new(Broken) as Box<dyn Source>));
    let mut reader = hubs.open(4, &Positions::from([(0, 0)]), open).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match reader.poll(10, Duration::from_millis(20)) {
            Err(e) => {
                assert!(e.to_string().contains("broker unreachable"), "{e}");
                break;
            }
            Ok(_) => assert!(std::time::Instant::now() < deadline, "no error"),
        }
    }
}

#[test]
fn a_lone_slow_reader_holds_the_source_back_instead_of_reading_on_its_own() {
    let events = Events::new(1, 0);
    let hubs = Arc::new(SourceHubs::default());
    let mut only = hubs
        .open(5, &Positions::from([(0, 0)]), events.opener())
        .unwrap();
    let total = (QUEUE_BATCHES as i64 + 8) * crate::stream::pipeline::SOURCE_BATCH_ROWS as i64;
    events.available.store(total, Ordering::SeqCst);
    // The reader's queue fills and stays full longer than LET_GO_AFTER: with no other
    // reader to serve, the hub waits for it (backpressure).
    std::thread::sleep(LET_GO_AFTER * 2);
    let got = read(only.as_mut(), 1, total);
    assert_eq!(got[&0], offsets(0, total));
    assert_eq!(
        events.opened.load(Ordering::SeqCst),
        1,
        "one connector throughout"
    );
}
