//! `connector = 'nexmark'`: the Nexmark auction-site generator (Flink's definition, see
//! shared/NEXMARK.md), writing straight into Arrow arrays.
//!
//! Event `n` is a person when `n % 50 == 0`, an auction when `n % 50` is 1..=3 and a bid
//! otherwise; its event time is `base_time + n * 1e6 / event_rate` microseconds. The source
//! yields the rows of one table (`table` = bid, auction or person) and its offset is the
//! event number, so a reopened source continues exactly where a checkpoint left it. The random
//! draws are a pure function of (seed, event number): distributions follow Flink's generator
//! (hot auctions, bidders and sellers, log-uniform prices, padding in `extra`), the exact
//! values do not.
//!
//! Options: `table` (default bid), `event_rate` (events per event-time second, default
//! 10,000,000), `events` (stop after this many events; default unbounded),
//! `events_per_second` (throttle emission; default as fast as possible), `base_time` (epoch
//! milliseconds; default 1436918400000), `seed`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::source::{Poll, Positions, Source, SourceBatch, SourceSpec};

const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const TOTAL_PROPORTION: u64 = 50;
const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: u64 = 5;
const NUM_ACTIVE_PEOPLE: u64 = 1000;
const PERSON_ID_LEAD: u64 = 10;
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
const AUCTION_ID_LEAD: u64 = 10;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_BIDDER_RATIO: u64 = 4;
const HOT_SELLER_RATIO: u64 = 4;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const CHANNELS: u64 = 10_000;
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
pub const DEFAULT_BASE_TIME_MS: i64 = 1_436_918_400_000;
const AVG_BID_BYTES: usize = 100;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_PERSON_BYTES: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Person,
    Auction,
    Bid,
}

impl Table {
    fn accepts(self, n: u64) -> bool {
        let k = n % TOTAL_PROPORTION;
        match self {
            Table::Person => k < PERSON_PROPORTION,
            Table::Auction => {
                (PERSON_PROPORTION..PERSON_PROPORTION + AUCTION_PROPORTION).contains(&k)
            }
            Table::Bid => k >= PERSON_PROPORTION + AUCTION_PROPORTION,
        }
    }
}

/// The standard columns of a Nexmark table.
pub fn table_schema(table: Table) -> SchemaRef {
    let ts = || {
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        )
    };
    let i = |n: &str| Field::new(n, DataType::Int64, false);
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(match table {
        Table::Person => vec![
            i("id"),
            s("name"),
            s("email_address"),
            s("credit_card"),
            s("city"),
            s("state"),
            ts(),
            s("extra"),
        ],
        Table::Auction => vec![
            i("id"),
            s("item_name"),
            s("description"),
            i("initial_bid"),
            i("reserve"),
            ts(),
            Field::new(
                "expires",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
            i("seller"),
            i("category"),
            s("extra"),
        ],
        Table::Bid => vec![
            i("auction"),
            i("bidder"),
            i("price"),
            s("channel"),
            s("url"),
            ts(),
            s("extra"),
        ],
    }))
}

pub fn parse_table(name: &str) -> Result<Table> {
    match name.to_ascii_lowercase().as_str() {
        "bid" | "bids" => Ok(Table::Bid),
        "auction" | "auctions" => Ok(Table::Auction),
        "person" | "people" | "persons" => Ok(Table::Person),
        other => Err(Error::Options(format!(
            "unknown nexmark table \"{other}\" (expected bid, auction or person)"
        ))),
    }
}

/// With one person per 50 events, the last person of event `n` is its epoch's (Flink's
/// formula, `epoch * PERSON_PROPORTION + min(n % 50, PERSON_PROPORTION - 1)`, reduces to it).
fn last_base0_person_id(n: u64) -> u64 {
    n / TOTAL_PROPORTION * PERSON_PROPORTION + (PERSON_PROPORTION - 1)
}

fn last_base0_auction_id(n: u64) -> u64 {
    let mut epoch = n / TOTAL_PROPORTION;
    let mut offset = n % TOTAL_PROPORTION;
    if offset < PERSON_PROPORTION {
        epoch = epoch.saturating_sub(1);
        offset = AUCTION_PROPORTION - 1;
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        offset = AUCTION_PROPORTION - 1;
    } else {
        offset -= PERSON_PROPORTION;
    }
    epoch * AUCTION_PROPORTION + offset
}

fn next_base0_person_id(n: u64, rng: &mut Rng) -> u64 {
    let people = last_base0_person_id(n) + 1;
    let active = people.min(NUM_ACTIVE_PEOPLE);
    people - active + rng.below(active + PERSON_ID_LEAD)
}

fn next_base0_auction_id(n: u64, rng: &mut Rng) -> u64 {
    let max = last_base0_auction_id(n);
    let min = max.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
    min + rng.below(max - min + 1 + AUCTION_ID_LEAD)
}

fn next_price(rng: &mut Rng) -> i64 {
    (10f64.powf(rng.unit() * 6.0) * 100.0).round() as i64
}

fn push_string(buf: &mut String, rng: &mut Rng, len: usize) {
    for _ in 0..len {
        let c = rng.below(27);
        buf.push(if c == 26 {
            ' '
        } else {
            (b'a' + c as u8) as char
        });
    }
}

fn push_extra(buf: &mut String, rng: &mut Rng, current: usize, average: usize) {
    if current >= average {
        return;
    }
    let want = average - current;
    let len = (want * 9 / 10) + rng.below((want / 5) as u64 + 1) as usize;
    push_string(buf, rng, len);
}

/// The 4 hot URLs every hot channel uses.
fn hot_url(i: usize) -> String {
    let mut rng = Rng::for_event(0xB1D, i as u64);
    let mut s = String::from("https://www.nexmark.com/");
    for _ in 0..3 {
        push_string(&mut s, &mut rng, 5);
        s.push('/');
    }
    s.push_str("item.htm?query=1");
    s.replace(' ', "_")
}

pub struct Nexmark {
    table: Table,
    schema: SchemaRef,
    /// For each declared column, its index in the table's standard schema.
    columns: Vec<usize>,
    event_rate: u64,
    limit: Option<u64>,
    throttle: Option<u64>,
    base_time_us: i64,
    seed: u64,
    next: u64,
    first: u64,
    opened: Instant,
    hot_urls: Vec<String>,
}

impl Nexmark {
    pub fn open(spec: &SourceSpec, start: &Positions) -> Result<Self> {
        let mut options = spec.options.clone();
        let table = parse_table(&options.take("table").unwrap_or_else(|| "bid".into()))?;
        let event_rate: u64 = options.parse("event_rate")?.unwrap_or(10_000_000);
        if event_rate == 0 {
            return Err(Error::Options("event_rate must be positive".into()));
        }
        let limit = options.parse("events")?;
        let throttle = options.parse("events_per_second")?;
        let base_time_ms: i64 = options.parse("base_time")?.unwrap_or(DEFAULT_BASE_TIME_MS);
        let seed = options.parse("seed")?.unwrap_or(0);
        options.finish()?;
        let standard = table_schema(table);
        let columns = spec
            .schema
            .fields()
            .iter()
            .map(|f| {
                let (i, std) = standard.column_with_name(f.name()).ok_or_else(|| {
                    Error::Options(format!(
                        "nexmark table {table:?} has no column \"{}\"",
                        f.name()
                    ))
                })?;
                let compatible = match (std.data_type(), f.data_type()) {
                    (DataType::Timestamp(..), DataType::Timestamp(..)) => true,
                    (a, b) => a == b,
                };
                if !compatible {
                    return Err(Error::Options(format!(
                        "nexmark column \"{}\" has type {}, not {}",
                        f.name(),
                        std.data_type(),
                        f.data_type()
                    )));
                }
                Ok(i)
            })
            .collect::<Result<Vec<_>>>()?;
        let next = start.get(&0).copied().unwrap_or(0).max(0) as u64;
        Ok(Self {
            table,
            schema: spec.schema.clone(),
            columns,
            event_rate,
            limit,
            throttle,
            base_time_us: base_time_ms * 1000,
            seed,
            next,
            first: next,
            opened: Instant::now(),
            hot_urls: (0..4).map(hot_url).collect(),
        })
    }

    fn timestamp(&self, n: u64) -> i64 {
        self.base_time_us + (n as u128 * 1_000_000 / self.event_rate as u128) as i64
    }

    /// Generates events `from..to` and returns the table's rows among them.
    fn generate(&self, from: u64, to: u64) -> Result<RecordBatch> {
        let standard = table_schema(self.table);
        let capacity = ((to - from) as usize * 47).div_ceil(50);
        let mut ints: Vec<Int64Builder> = Vec::new();
        let mut strings: Vec<StringBuilder> = Vec::new();
        let mut times: Vec<TimestampMicrosecondBuilder> = Vec::new();
        for f in standard.fields() {
            match f.data_type() {
                DataType::Int64 => ints.push(Int64Builder::with_capacity(capacity)),
                DataType::Utf8 => {
                    strings.push(StringBuilder::with_capacity(capacity, capacity * 16))
                }
                _ => times.push(TimestampMicrosecondBuilder::with_capacity(capacity)),
            }
        }
        let mut s = String::with_capacity(256);
        for n in from..to {
            if !self.table.accepts(n) {
                continue;
            }
            let mut rng = Rng::for_event(self.seed, n);
            let ts = self.timestamp(n);
            match self.table {
                Table::Bid => {
                    let auction = if rng.below(HOT_AUCTION_RATIO) > 0 {
                        (last_base0_auction_id(n) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
                    } else {
                        next_base0_auction_id(n, &mut rng)
                    };
                    let bidder = if rng.below(HOT_BIDDER_RATIO) > 0 {
                        (last_base0_person_id(n) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
                    } else {
                        next_base0_person_id(n, &mut rng)
                    };
                    ints[0].append_value(auction as i64 + FIRST_AUCTION_ID);
                    ints[1].append_value(bidder as i64 + FIRST_PERSON_ID);
                    ints[2].append_value(next_price(&mut rng));
                    s.clear();
                    if rng.below(2) > 0 {
                        let i = rng.below(4) as usize;
                        strings[0].append_value(HOT_CHANNELS[i]);
                        strings[1].append_value(&self.hot_urls[i]);
                    } else {
                        let c = rng.below(CHANNELS) as u32;
                        s.push_str("channel-");
                        s.push_str(itoa(c as u64, &mut [0u8; 20]));
                        strings[0].append_value(&s);
                        s.clear();
                        s.push_str("https://www.nexmark.com/");
                        for _ in 0..3 {
                            push_string(&mut s, &mut rng, 5);
                            s.push('/');
                        }
                        s.push_str("item.htm?query=1&channel_id=");
                        s.push_str(itoa(c.reverse_bits() as u64 & 0x7fff_ffff, &mut [0u8; 20]));
                        strings[1].append_value(&s);
                    }
                    times[0].append_value(ts);
                    s.clear();
                    push_extra(&mut s, &mut rng, 32, AVG_BID_BYTES);
                    strings[2].append_value(&s);
                }
                Table::Auction => {
                    let id = last_base0_auction_id(n) as i64 + FIRST_AUCTION_ID;
                    let seller = if rng.below(HOT_SELLER_RATIO) > 0 {
                        (last_base0_person_id(n) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
                    } else {
                        next_base0_person_id(n, &mut rng)
                    } as i64
                        + FIRST_PERSON_ID;
                    let initial = next_price(&mut rng);
                    ints[0].append_value(id);
                    s.clear();
                    push_string(&mut s, &mut rng, 20);
                    strings[0].append_value(&s);
                    s.clear();
                    push_string(&mut s, &mut rng, 100);
                    strings[1].append_value(&s);
                    ints[1].append_value(initial);
                    ints[2].append_value(initial + next_price(&mut rng));
                    times[0].append_value(ts);
                    let length_us = (rng.below(20) as i64 + 1) * 1_000_000;
                    times[1].append_value(ts + length_us);
                    ints[3].append_value(seller);
                    ints[4].append_value(FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES) as i64);
                    s.clear();
                    push_extra(&mut s, &mut rng, 160, AVG_AUCTION_BYTES);
                    strings[2].append_value(&s);
                }
                Table::Person => {
                    let id = last_base0_person_id(n) as i64 + FIRST_PERSON_ID;
                    ints[0].append_value(id);
                    s.clear();
                    s.push_str(FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize]);
                    s.push(' ');
                    s.push_str(LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize]);
                    strings[0].append_value(&s);
                    s.clear();
                    push_string(&mut s, &mut rng, 7);
                    s.push('@');
                    push_string(&mut s, &mut rng, 5);
                    s.push_str(".com");
                    strings[1].append_value(&s);
                    s.clear();
                    for g in 0..4 {
                        if g > 0 {
                            s.push(' ');
                        }
                        s.push_str(&format!("{:04}", rng.below(10_000)));
                    }
                    strings[2].append_value(&s);
                    strings[3].append_value(US_CITIES[rng.below(US_CITIES.len() as u64) as usize]);
                    strings[4].append_value(US_STATES[rng.below(US_STATES.len() as u64) as usize]);
                    times[0].append_value(ts);
                    s.clear();
                    push_extra(&mut s, &mut rng, 64, AVG_PERSON_BYTES);
                    strings[5].append_value(&s);
                }
            }
        }
        let (mut ii, mut si, mut ti) = (0, 0, 0);
        let mut all: Vec<ArrayRef> = Vec::new();
        for f in standard.fields() {
            match f.data_type() {
                DataType::Int64 => {
                    all.push(Arc::new(ints[ii].finish()));
                    ii += 1;
                }
                DataType::Utf8 => {
                    all.push(Arc::new(strings[si].finish()));
                    si += 1;
                }
                _ => {
                    all.push(Arc::new(times[ti].finish()));
                    ti += 1;
                }
            }
        }
        let columns = self
            .columns
            .iter()
            .zip(self.schema.fields())
            .map(|(&i, f)| match f.data_type() {
                DataType::Timestamp(_, Some(tz)) => {
                    let a = all[i]
                        .as_any()
                        .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
                        .expect("timestamp column");
                    Arc::new(a.clone().with_timezone(tz.clone())) as ArrayRef
                }
                _ => all[i].clone(),
            })
            .collect();
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// Formats `v` without allocating.
fn itoa(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("digits")
}

impl Source for Nexmark {
    fn poll(&mut self, max_rows: usize, timeout: Duration) -> Result<Poll> {
        // `max_rows` counts table rows; bids are 46 of every 50 events.
        let share = match self.table {
            Table::Bid => 46,
            Table::Auction => 3,
            Table::Person => 1,
        };
        let mut end = self.next + (max_rows as u64 * TOTAL_PROPORTION).div_ceil(share);
        if let Some(limit) = self.limit {
            if self.next >= limit {
                return Ok(Poll::Finished);
            }
            end = end.min(limit);
        }
        if let Some(rate) = self.throttle.filter(|r| *r > 0) {
            let due = |s: &Self| s.first + (s.opened.elapsed().as_secs_f64() * rate as f64) as u64;
            if due(self) <= self.next {
                std::thread::sleep(timeout.min(Duration::from_millis(5)));
            }
            let due = due(self);
            if due <= self.next {
                return Ok(Poll::Idle);
            }
            end = end.min(due);
        }
        let batch = self.generate(self.next, end)?;
        let origins = (self.next..end)
            .filter(|n| self.table.accepts(*n))
            .map(|n| (0, n as i64))
            .collect();
        self.next = end;
        Ok(Poll::Batch(SourceBatch {
            rows: batch,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;

    fn open(events: u64, start: i64) -> Nexmark {
        let spec = SourceSpec {
            name: "bid".into(),
            schema: table_schema(Table::Bid),
            options: Options::new([("events".to_string(), events.to_string())]).unwrap(),
            created_at_ms: 0,
        };
        Nexmark::open(&spec, &Positions::from([(0, start)])).unwrap()
    }

    fn drain(mut n: Nexmark) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        while let Poll::Batch(b) = n.poll(1000, Duration::ZERO).unwrap() {
            out.push(b.rows);
        }
        out
    }

    #[test]
    fn bids_are_46_of_50_and_reopening_continues_exactly() {
        let all = arrow::compute::concat_batches(&table_schema(Table::Bid), &drain(open(5000, 0)))
            .unwrap();
        assert_eq!(all.num_rows(), 4600);
        let head = drain(open(2500, 0));
        let tail = drain(open(5000, 2500));
        let joined = arrow::compute::concat_batches(
            &table_schema(Table::Bid),
            head.iter().chain(tail.iter()),
        )
        .unwrap();
        assert_eq!(joined, all);
        let auctions = all.column(0).as_primitive::<Int64Type>();
        assert!(auctions.values().iter().all(|a| *a >= FIRST_AUCTION_ID));
        let prices = all.column(2).as_primitive::<Int64Type>();
        assert!(
            prices
                .values()
                .iter()
                .all(|p| (100..=100_000_000).contains(p))
        );
    }
}
