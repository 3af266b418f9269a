//! `connector = 'kafka'`: reads a topic through librdkafka.
//!
//! Options: `bootstrap.servers` (or `properties.bootstrap.server`), `topic`, `group.id`
//! (default `eddy-<source>`), `startup` = `earliest` (default) | `latest` | `timestamp` with
//! `startup.timestamp` (epoch milliseconds), `format` (json, csv) and its options,
//! `max_event_bytes`, and librdkafka's security and tuning settings as `properties.<name>`
//! (security.protocol, sasl.mechanism, sasl.username, sasl.password, ssl.ca.location, ...;
//! [`ALLOWED_PROPERTIES`]). Settings that load code or run commands in the server
//! (plugin.library.paths, sasl.kerberos.kinit.cmd, ssl.engine.location, ...) are refused.
//!
//! The consumer is assigned every partition of the topic explicitly, at the offsets the
//! engine's last checkpoint recorded (or the startup position for partitions it has none
//! for). Offsets are never committed to Kafka: auto commit and the offset store are off,
//! because the checkpoint owns them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::error::{Error, Result};
use crate::format::{DEFAULT_MAX_EVENT_BYTES, EventDecoder, Format, RawEvent};
use crate::source::{Poll, Positions, Source, SourceSpec};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The librdkafka settings a user may pass as `properties.<name>`: connection, security and
/// tuning. Anything else is refused, because some settings load shared objects into the
/// server (`plugin.library.paths`, `ssl.engine.location`, `ssl.providers`) or run commands
/// (`sasl.kerberos.kinit.cmd`), and a new librdkafka may add more of that kind.
pub const ALLOWED_PROPERTIES: &[&str] = &[
    // Where and who.
    "bootstrap.servers",
    "client.id",
    "client.rack",
    "group.id",
    "group.instance.id",
    "broker.address.family",
    "client.dns.lookup",
    // Security.
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "sasl.kerberos.service.name",
    "sasl.kerberos.principal",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.token.endpoint.url",
    "sasl.oauthbearer.scope",
    "sasl.oauthbearer.extensions",
    "ssl.ca.location",
    "ssl.ca.pem",
    "ssl.certificate.location",
    "ssl.certificate.pem",
    "ssl.key.location",
    "ssl.key.pem",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
    "ssl.cipher.suites",
    "ssl.curves.list",
    "ssl.sigalgs.list",
    // Connections and metadata.
    "socket.timeout.ms",
    "socket.keepalive.enable",
    "socket.nagle.disable",
    "socket.send.buffer.bytes",
    "socket.receive.buffer.bytes",
    "socket.connection.setup.timeout.ms",
    "connections.max.idle.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "retry.backoff.ms",
    "retry.backoff.max.ms",
    "metadata.max.age.ms",
    "topic.metadata.refresh.interval.ms",
    "api.version.request",
    "api.version.request.timeout.ms",
    "api.version.fallback.ms",
    "broker.version.fallback",
    "allow.auto.create.topics",
    "message.max.bytes",
    "receive.message.max.bytes",
    "request.timeout.ms",
    // Consumers.
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "group.protocol",
    "isolation.level",
    "auto.offset.reset",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.wait.max.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.error.backoff.ms",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "check.crcs",
    // Producers.
    "acks",
    "request.required.acks",
    "compression.type",
    "compression.codec",
    "compression.level",
    "linger.ms",
    "queue.buffering.max.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "batch.num.messages",
    "batch.size",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "transaction.timeout.ms",
    "message.send.max.retries",
    "retries",
    "partitioner",
    "sticky.partitioning.linger.ms",
    // Refused later with a message of their own (the checkpoint or the sink owns them).
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.idempotence",
    "transactional.id",
];

/// Refuses librdkafka settings outside [`ALLOWED_PROPERTIES`] (22023, naming the key).
pub fn check_properties(client: &BTreeMap<String, String>) -> Result<()> {
    match client
        .keys()
        .find(|k| !ALLOWED_PROPERTIES.contains(&k.as_str()))
    {
        None => Ok(()),
        Some(key) => Err(Error::Options(format!(
            "option \"properties.{key}\" is not allowed: Eddy passes only librdkafka's connection, security and tuning settings"
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Earliest,
    Latest,
    Timestamp(i64),
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub topic: String,
    pub startup: Startup,
    pub format: Format,
    pub max_event_bytes: usize,
    /// librdkafka settings (bootstrap.servers, group.id, security, ...).
    pub client: BTreeMap<String, String>,
}

impl KafkaConfig {
    pub fn from_spec(spec: &SourceSpec) -> Result<Self> {
        let mut o = spec.options.clone();
        let mut client = o.take_prefixed("properties.");
        if let Some(servers) = client.remove("bootstrap.server") {
            client.insert("bootstrap.servers".into(), servers);
        }
        check_properties(&client)?;
        if let Some(servers) = o.take("bootstrap.servers") {
            client.insert("bootstrap.servers".into(), servers);
        }
        let group = o
            .take("group.id")
            .unwrap_or_else(|| format!("eddy-{}", spec.name));
        client.insert("group.id".into(), group);
        let topic = o.take("topic");
        let startup = match o.take("startup").map(|s| s.to_ascii_lowercase()).as_deref() {
            None | Some("earliest") => Startup::Earliest,
            Some("latest") => Startup::Latest,
            Some("timestamp") => {
                Startup::Timestamp(o.parse("startup.timestamp")?.ok_or_else(|| {
                    Error::Options("startup = 'timestamp' needs \"startup.timestamp\"".into())
                })?)
            }
            Some(other) => {
                return Err(Error::Options(format!(
                    "invalid value for option \"startup\": \"{other}\" (expected earliest, latest or timestamp)"
                )));
            }
        };
        let format = Format::from_options(&mut o)?;
        let max_event_bytes = o
            .parse("max_event_bytes")?
            .unwrap_or(DEFAULT_MAX_EVENT_BYTES);
        // Unknown keys first: a misspelt required key is reported as what it is.
        o.finish()?;
        if !client.contains_key("bootstrap.servers") {
            return Err(Error::Options(
                "option \"bootstrap.servers\" is required".into(),
            ));
        }
        let topic = topic.ok_or_else(|| Error::Options("option \"topic\" is required".into()))?;
        for key in ["enable.auto.commit", "enable.auto.offset.store"] {
            if client.contains_key(key) {
                return Err(Error::Options(format!(
                    "option \"properties.{key}\" cannot be set: offsets belong to Eddy's checkpoints"
                )));
            }
        }
        Ok(Self {
            topic,
            startup,
            format,
            max_event_bytes,
            client,
        })
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.client {
            c.set(k, v);
        }
        c.set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        if !self.client.contains_key("auto.offset.reset") {
            // An offset the broker no longer has (retention deleted it) is an error, not a
            // silent jump to the end of the partition: the events in between would be lost.
            c.set("auto.offset.reset", "error");
        }
        c
    }
}

/// Kafka errors carry broker addresses but never configuration values, so they are safe to
/// show; still, strip anything that looks like a credential setting.
fn external(context: &str, e: impl std::fmt::Display) -> Error {
    Error::External(format!("kafka: {context}: {e}"))
}

pub struct KafkaSource {
    consumer: BaseConsumer,
    partitions: Vec<i32>,
    decoder: EventDecoder,
    positions: Positions,
}

impl KafkaSource {
    pub fn open(spec: &SourceSpec, start: &Positions) -> Result<Self> {
        let config = KafkaConfig::from_spec(spec)?;
        let consumer: BaseConsumer = config
            .client_config()
            .create()
            .map_err(|e| external("cannot create consumer", e))?;
        let metadata = consumer
            .fetch_metadata(Some(&config.topic), METADATA_TIMEOUT)
            .map_err(|e| {
                Error::Unavailable(format!(
                    "kafka: cannot read metadata of topic {}: {e}",
                    config.topic
                ))
            })?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == config.topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .ok_or_else(|| {
                Error::NotFound(format!("kafka: topic \"{}\" does not exist", config.topic))
            })?;
        let mut assignment = TopicPartitionList::new();
        let mut positions = Positions::new();
        for p in topic.partitions() {
            let id = p.id();
            let offset = match (start.get(&id), &config.startup) {
                (Some(o), _) => Offset::Offset(*o),
                (None, Startup::Earliest) => Offset::Beginning,
                (None, Startup::Latest) => Offset::End,
                (None, Startup::Timestamp(ts)) => {
                    let mut q = TopicPartitionList::new();
                    q.add_partition_offset(&config.topic, id, Offset::Offset(*ts))
                        .map_err(|e| external("offset lookup", e))?;
                    let found = consumer
                        .offsets_for_times(q, METADATA_TIMEOUT)
                        .map_err(|e| external("offset lookup by timestamp", e))?;
                    found
                        .find_partition(&config.topic, id)
                        .map(|e| e.offset())
                        .unwrap_or(Offset::End)
                }
            };
            if let Offset::Offset(o) = offset {
                positions.insert(id, o);
            }
            assignment
                .add_partition_offset(&config.topic, id, offset)
                .map_err(|e| external("assign", e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| external("assign", e))?;
        let decoder =
            EventDecoder::new(spec.schema.clone(), config.format, config.max_event_bytes)?;
        let partitions = topic.partitions().iter().map(|p| p.id()).collect();
        Ok(Self {
            consumer,
            partitions,
            decoder,
            positions,
        })
    }
}

impl Source for KafkaSource {
    fn poll(&mut self, max_rows: usize, timeout: Duration) -> Result<Poll> {
        let deadline = Instant::now() + timeout;
        let mut messages = Vec::with_capacity(max_rows.min(4096));
        while messages.len() < max_rows {
            let wait = if messages.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => messages.push(m),
                Some(Err(e))
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) =>
                {
                    return Err(Error::External(format!(
                        "kafka: a partition's checkpointed offset is no longer on the broker \
                         (deleted by retention?), so events after the checkpoint are lost; \
                         positions: {:?}. To accept the loss, set \
                         properties.auto.offset.reset = 'earliest' on the source",
                        self.positions
                    )));
                }
                Some(Err(e)) => {
                    tracing::warn!("kafka: {e}");
                    if messages.is_empty() && Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        if messages.is_empty() {
            return Ok(Poll::Idle);
        }
        let events: Vec<RawEvent<'_>> = messages
            .iter()
            .map(|m| RawEvent {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key(),
                timestamp_ms: m.timestamp().to_millis(),
                payload: m.payload().unwrap_or_default(),
            })
            .collect();
        let batch = self.decoder.decode(&events)?;
        for m in &messages {
            self.positions.insert(m.partition(), m.offset() + 1);
        }
        Ok(Poll::Batch(batch))
    }

    fn positions(&self) -> Positions {
        self.positions.clone()
    }

    fn schema(&self) -> SchemaRef {
        self.decoder.schema().clone()
    }

    fn partitions(&self) -> Vec<i32> {
        self.partitions.clone()
    }
}
