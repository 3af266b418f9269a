//! `connector = 'datagen'`: rows for a declared schema, deterministic per (seed, row number).
//!
//! Options: `rows_per_second` (default 10; 0 means as fast as possible), `rows` (stop after
//! this many; default unbounded), `seed`, and per column `fields.<col>.kind` = `sequence` |
//! `random`, `fields.<col>.start` / `end` (sequences wrap from end back to start),
//! `fields.<col>.min` / `max` (random numbers), `fields.<col>.length` (random strings),
//! `fields.<col>.values` (a comma-separated list to pick from). Timestamp columns carry event
//! time: the source's creation time plus `row / rows_per_second` seconds, so replays and
//! restarts produce the same timestamps, and `fields.<col>.max_delay` makes some events late
//! by a random amount up to that duration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array,
    RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::source::{Poll, Positions, Source, SourceBatch, SourceSpec};

#[derive(Debug, Clone)]
enum Gen {
    Sequence { start: i64, end: i64 },
    Int { min: i64, max: i64 },
    Float { min: f64, max: f64 },
    Text { length: usize },
    Choice(Vec<String>),
    Bool,
    EventTime { max_delay_us: i64 },
}

pub struct Datagen {
    schema: SchemaRef,
    generators: Vec<Gen>,
    seed: u64,
    rate: u64,
    limit: Option<u64>,
    created_at_us: i64,
    next: u64,
    opened: Instant,
    first: u64,
}

impl Datagen {
    pub fn open(spec: &SourceSpec, start: &Positions) -> Result<Self> {
        let mut options = spec.options.clone();
        let rate: u64 = options.parse("rows_per_second")?.unwrap_or(10);
        let limit: Option<u64> = options.parse("rows")?;
        let seed: u64 = options.parse("seed")?.unwrap_or(0);
        let mut generators = Vec::new();
        for field in spec.schema.fields() {
            let mut f = options.take_prefixed(&format!("fields.{}.", field.name()));
            let kind = f.remove("kind");
            let num = |f: &mut std::collections::BTreeMap<String, String>, k: &str| {
                f.remove(k)
                    .map(|v| {
                        v.trim().parse::<f64>().map_err(|_| {
                            Error::Options(format!(
                                "invalid value for option \"fields.{}.{k}\": \"{v}\"",
                                field.name()
                            ))
                        })
                    })
                    .transpose()
            };
            let ty = field.data_type();
            let is_int = matches!(ty, DataType::Int16 | DataType::Int32 | DataType::Int64);
            let generator = match (kind.as_deref(), ty) {
                (Some("sequence"), _) if is_int => Gen::Sequence {
                    start: num(&mut f, "start")?.unwrap_or(1.0) as i64,
                    end: num(&mut f, "end")?.unwrap_or(i64::MAX as f64) as i64,
                },
                (None | Some("random"), _) if is_int => Gen::Int {
                    min: num(&mut f, "min")?.unwrap_or(0.0) as i64,
                    max: num(&mut f, "max")?.unwrap_or(1000.0) as i64,
                },
                (None | Some("random"), DataType::Float32 | DataType::Float64) => Gen::Float {
                    min: num(&mut f, "min")?.unwrap_or(0.0),
                    max: num(&mut f, "max")?.unwrap_or(1.0),
                },
                (None | Some("random"), DataType::Utf8) => match f.remove("values") {
                    Some(list) => {
                        Gen::Choice(list.split(',').map(|s| s.trim().to_string()).collect())
                    }
                    None => Gen::Text {
                        length: num(&mut f, "length")?.unwrap_or(8.0) as usize,
                    },
                },
                (None | Some("random"), DataType::Boolean) => Gen::Bool,
                (None | Some("event_time"), DataType::Timestamp(TimeUnit::Microsecond, _)) => {
                    let delay = match f.remove("max_delay") {
                        None => Duration::ZERO,
                        Some(v) => crate::options::parse_duration(&v).ok_or_else(|| {
                            Error::Options(format!(
                                "invalid value for option \"fields.{}.max_delay\": \"{v}\"",
                                field.name()
                            ))
                        })?,
                    };
                    Gen::EventTime {
                        max_delay_us: delay.as_micros() as i64,
                    }
                }
                (kind, ty) => {
                    return Err(Error::Options(format!(
                        "datagen cannot generate column \"{}\" of type {ty}{}",
                        field.name(),
                        kind.map(|k| format!(" with kind \"{k}\""))
                            .unwrap_or_default()
                    )));
                }
            };
            if let Some(k) = f.keys().next() {
                return Err(Error::Options(format!(
                    "unknown option \"fields.{}.{k}\"",
                    field.name()
                )));
            }
            if let Gen::Int { min, max } = &generator
                && min > max
            {
                return Err(Error::Options(format!(
                    "fields.{}.min is greater than max",
                    field.name()
                )));
            }
            generators.push(generator);
        }
        options.finish()?;
        let next = start.get(&0).copied().unwrap_or(0).max(0) as u64;
        Ok(Self {
            schema: spec.schema.clone(),
            generators,
            seed,
            rate,
            limit,
            created_at_us: spec.created_at_ms * 1000,
            next,
            opened: Instant::now(),
            first: next,
        })
    }

    fn column(
        &self,
        col: usize,
        generator: &Gen,
        ty: &DataType,
        rows: std::ops::Range<u64>,
    ) -> ArrayRef {
        let seed = self.seed ^ ((col as u64 + 1) << 56);
        let rng = |n: u64| Rng::for_event(seed, n);
        match generator {
            Gen::Sequence { start, end } => {
                let span = (*end as i128 - *start as i128 + 1).max(1);
                let v = rows.map(|n| (*start as i128 + (n as i128 % span)) as i64);
                int_array(ty, v)
            }
            Gen::Int { min, max } => {
                let span = (*max - *min) as u64 + 1;
                int_array(ty, rows.map(|n| *min + rng(n).below(span) as i64))
            }
            Gen::Float { min, max } => {
                let v = rows.map(|n| min + rng(n).unit() * (max - min));
                match ty {
                    DataType::Float32 => Arc::new(v.map(|x| x as f32).collect::<Float32Array>()),
                    _ => Arc::new(v.collect::<Float64Array>()),
                }
            }
            Gen::Text { length } => Arc::new(
                rows.map(|n| {
                    let mut r = rng(n);
                    (0..*length)
                        .map(|_| (b'a' + r.below(26) as u8) as char)
                        .collect::<String>()
                })
                .map(Some)
                .collect::<StringArray>(),
            ),
            Gen::Choice(values) => Arc::new(
                rows.map(|n| Some(values[rng(n).below(values.len() as u64) as usize].as_str()))
                    .collect::<StringArray>(),
            ),
            Gen::Bool => Arc::new(
                rows.map(|n| Some(rng(n).below(2) == 1))
                    .collect::<BooleanArray>(),
            ),
            Gen::EventTime { max_delay_us } => {
                let DataType::Timestamp(_, tz) = ty else {
                    unreachable!("checked at open")
                };
                let step = if self.rate == 0 {
                    1
                } else {
                    1_000_000 / self.rate as i64
                };
                let v = rows.map(|n| {
                    let delay = match *max_delay_us {
                        0 => 0,
                        d => rng(n).below(d as u64 + 1) as i64,
                    };
                    self.created_at_us + n as i64 * step - delay
                });
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(v).with_timezone_opt(tz.clone()),
                )
            }
        }
    }
}

fn int_array(ty: &DataType, v: impl Iterator<Item = i64>) -> ArrayRef {
    match ty {
        DataType::Int16 => Arc::new(v.map(|x| x as i16).collect::<Int16Array>()),
        DataType::Int32 => Arc::new(v.map(|x| x as i32).collect::<Int32Array>()),
        _ => Arc::new(v.collect::<Int64Array>()),
    }
}

impl Source for Datagen {
    fn poll(&mut self, max_rows: usize, timeout: Duration) -> Result<Poll> {
        let mut end = self.next + max_rows as u64;
        if let Some(limit) = self.limit {
            if self.next >= limit {
                return Ok(Poll::Finished);
            }
            end = end.min(limit);
        }
        if self.rate > 0 {
            // Rows due by now at the configured rate since the source was opened.
            let due_by = |t: Duration| self.first + (t.as_secs_f64() * self.rate as f64) as u64;
            let mut due = due_by(self.opened.elapsed());
            if due <= self.next {
                std::thread::sleep(timeout.min(Duration::from_secs_f64(1.0 / self.rate as f64)));
                due = due_by(self.opened.elapsed());
            }
            if due <= self.next {
                return Ok(Poll::Idle);
            }
            end = end.min(due);
        }
        let rows = self.next..end;
        let columns = self
            .generators
            .iter()
            .zip(self.schema.fields())
            .enumerate()
            .map(|(i, (generator, f))| self.column(i, generator, f.data_type(), rows.clone()))
            .collect();
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.next = end;
        Ok(Poll::Batch(SourceBatch {
            rows: batch,
            dead_letters: Vec::new(),
            origins: rows.map(|n| (0, n as i64)).collect(),
        }))
    }

    fn positions(&self) -> Positions {
        Positions::from([(0, self.next as i64)])
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
