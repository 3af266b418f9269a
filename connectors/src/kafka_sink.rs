//! `connector = 'kafka'` sinks: rows as JSON or CSV messages through a transactional
//! producer whose transactions follow Eddy's checkpoints.
//!
//! Options: `bootstrap.servers`, `topic`, `format` (json, default, or csv with
//! `csv.delimiter`), `key` (a column whose value is each message's key; default none),
//! `transactional.id` (default `eddy-sink-<sink>`) and any librdkafka setting as
//! `properties.<name>`.
//!
//! One transaction per epoch. At the barrier the producer flushes, the engine writes its
//! checkpoint, and then the transaction commits together with the epoch's number, stored as
//! the committed offset of partition 0 of the topic for the consumer group named by the
//! transactional id. That offset commits atomically with the rows, so after a crash Kafka
//! tells which epoch it holds: if the checkpoint is one epoch ahead (the crash came between
//! the checkpoint and the commit), the open transaction was aborted when the new producer
//! started, and the engine replays that epoch from the checkpoint before it. A
//! `read_committed` consumer therefore sees every row exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::encode;
use crate::error::{Error, Result};
use crate::format::Format;
use crate::options::Options;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The last column of an upsert sink's rows (a sink of a view that updates its rows): true
/// where the row is gone, which the sink writes as a tombstone (the key, no value).
pub const DELETED_COLUMN: &str = "__deleted";

#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    pub topic: String,
    pub format: Format,
    pub key_column: Option<String>,
    pub transactional_id: String,
    /// `delivery = 'exactly_once'` (transactions, the default) or `'at_least_once'` (for
    /// brokers without transactions: flushed at each checkpoint, rows after the last one
    /// sent again after a crash).
    pub exactly_once: bool,
    /// librdkafka settings.
    pub client: BTreeMap<String, String>,
}

impl KafkaSinkConfig {
    /// Takes the sink's options out of `o`.
    pub fn from_options(o: &mut Options, sink: &str) -> Result<Self> {
        let mut client = o.take_prefixed("properties.");
        crate::kafka::check_properties(&client)?;
        if let Some(servers) = o.take("bootstrap.servers") {
            client.insert("bootstrap.servers".into(), servers);
        }
        if !client.contains_key("bootstrap.servers") {
            return Err(Error::Options(
                "option \"bootstrap.servers\" is required".into(),
            ));
        }
        let exactly_once = match o
            .take("delivery")
            .map(|d| d.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("exactly_once") => true,
            Some("at_least_once") => false,
            Some(other) => {
                return Err(Error::Options(format!(
                    "invalid value for option \"delivery\": \"{other}\" (expected exactly_once or at_least_once)"
                )));
            }
        };
        let own: &[&str] = if exactly_once {
            &["transactional.id", "enable.idempotence", "group.id"]
        } else {
            &["transactional.id", "group.id"]
        };
        for key in own {
            if client.contains_key(*key) {
                return Err(Error::Options(format!(
                    "option \"properties.{key}\" cannot be set: the sink sets its own"
                )));
            }
        }
        let topic = o.required("topic")?;
        let format = Format::from_options(o)?;
        Ok(Self {
            topic,
            format,
            key_column: o.take("key"),
            transactional_id: o
                .take("transactional.id")
                .unwrap_or_else(|| format!("eddy-sink-{sink}")),
            exactly_once,
            client,
        })
    }
}

fn external(context: &str, e: impl std::fmt::Display) -> Error {
    Error::External(format!("kafka sink: {context}: {e}"))
}

pub struct KafkaSink {
    config: KafkaSinkConfig,
    producer: BaseProducer,
    /// Only for the group metadata the epoch is committed under (exactly once).
    group: Option<BaseConsumer>,
    in_transaction: bool,
}

impl KafkaSink {
    /// Starts the transactional producer, which aborts whatever transaction a previous
    /// incarnation left open, and returns it with the last epoch Kafka committed (None: no
    /// epoch is recorded, because none was committed yet, the group's offsets expired, or the
    /// broker does not keep transactional offsets).
    pub fn open(config: KafkaSinkConfig) -> Result<(Self, Option<u64>)> {
        let mut c = ClientConfig::new();
        for (k, v) in &config.client {
            c.set(k, v);
        }
        if !config.exactly_once {
            let producer: BaseProducer = c
                .create()
                .map_err(|e| external("cannot create the producer", e))?;
            let sink = Self {
                config,
                producer,
                group: None,
                in_transaction: false,
            };
            return Ok((sink, None));
        }
        let producer: BaseProducer = c
            .clone()
            .set("transactional.id", &config.transactional_id)
            .set("enable.idempotence", "true")
            .create()
            .map_err(|e| external("cannot create the producer", e))?;
        producer
            .init_transactions(TIMEOUT)
            .map_err(|e| external("cannot start transactions", e))?;
        let group: BaseConsumer = c
            .set("group.id", &config.transactional_id)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| external("cannot create the offset reader", e))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&config.topic, 0);
        let committed = group
            .committed_offsets(tpl, TIMEOUT)
            .map_err(|e| external("cannot read the committed epoch", e))?;
        let epoch = committed.elements().first().and_then(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o as u64),
            _ => None,
        });
        Ok((
            Self {
                config,
                producer,
                group: Some(group),
                in_transaction: false,
            },
            epoch,
        ))
    }

    fn begin(&mut self) -> Result<()> {
        if self.config.exactly_once && !self.in_transaction {
            self.producer
                .begin_transaction()
                .map_err(|e| external("cannot begin a transaction", e))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Produces the rows of `batch` in the current epoch's transaction.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.begin()?;
        // An upsert sink's rows say which are deletions.
        let schema = batch.schema();
        let (batch, deleted) = match schema.fields().last() {
            Some(f) if f.name() == DELETED_COLUMN => {
                let n = batch.num_columns() - 1;
                let deleted = batch.column(n).as_boolean().clone();
                (
                    batch
                        .project(&(0..n).collect::<Vec<_>>())
                        .map_err(|e| external("rows", e))?,
                    Some(deleted),
                )
            }
            _ => (batch.clone(), None),
        };
        let batch = &batch;
        let rows = encode::rows(batch, self.config.format)?;
        let keys = match &self.config.key_column {
            Some(c) => Some(encode::text_column(batch, c)?),
            None => None,
        };
        for (i, payload) in rows.iter().enumerate() {
            let key = keys.as_ref().and_then(|k| k[i].as_deref());
            let mut record = BaseRecord::<str, [u8]>::to(&self.config.topic);
            if !deleted.as_ref().is_some_and(|d| d.value(i)) {
                record = record.payload(payload);
            }
            if let Some(key) = key {
                record = record.key(key);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        self.producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(external("cannot produce", e)),
                }
            }
        }
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Waits until every message of the epoch is acknowledged (before the checkpoint).
    pub fn flush(&mut self) -> Result<()> {
        self.producer
            .flush(TIMEOUT)
            .map_err(|e| external("cannot deliver the epoch's messages", e))
    }

    /// Commits the epoch's transaction with the epoch's number (after the checkpoint).
    pub fn commit(&mut self, epoch: u64) -> Result<()> {
        let Some(group) = &self.group else {
            // At least once: the flush before the checkpoint was the commit.
            return Ok(());
        };
        let metadata = group
            .group_metadata()
            .ok_or_else(|| external("cannot record the epoch", "no group metadata"))?;
        self.begin()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.config.topic, 0, Offset::Offset(epoch as i64))
            .map_err(|e| external("cannot record the epoch", e))?;
        self.producer
            .send_offsets_to_transaction(&tpl, &metadata, TIMEOUT)
            .map_err(|e| external("cannot record the epoch", e))?;
        self.producer
            .commit_transaction(TIMEOUT)
            .map_err(|e| external("cannot commit the transaction", e))?;
        self.in_transaction = false;
        Ok(())
    }
}
