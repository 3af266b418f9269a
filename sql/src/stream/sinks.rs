//! What a `CREATE SINK … WITH (connector = '…', …)` asks for, checked once at CREATE and
//! read again each time the pipeline starts.

use eddy_connectors::Options;
use eddy_connectors::kafka_sink::KafkaSinkConfig;
use eddy_connectors::webhook::WebhookConfig;

use crate::error::{Error, Result, sqlstate};

/// The sink connectors.
pub const CONNECTORS: [&str; 4] = ["parquet", "kafka", "webhook", "notify"];

/// Default size at which a sink's file rolls over (an early checkpoint).
pub const DEFAULT_ROLLOVER_BYTES: u64 = 128 << 20;

/// Default part size of multipart uploads (`upload_part_size`).
pub const DEFAULT_PART_BYTES: u64 = 16 << 20;
const MIN_PART_BYTES: u64 = 5 << 20;
/// Default bound of a remote sink's local spool (`spool_limit`).
pub const DEFAULT_SPOOL_LIMIT_BYTES: u64 = 1 << 30;

fn size_option(o: &mut Options, key: &str) -> Result<Option<u64>> {
    o.take(key)
        .map(|v| {
            eddy_connectors::options::parse_size(&v).ok_or_else(|| {
                invalid(format!(
                    "invalid value for option \"{key}\": \"{v}\" (expected e.g. 64MB)"
                ))
            })
        })
        .transpose()
}

/// Where a Parquet sink writes.
#[derive(Debug, Clone)]
pub enum SinkTarget {
    /// `path = '/dir'` or `'file:///dir'`.
    Local(std::path::PathBuf),
    /// `path = 's3://bucket/prefix'` (or gs://, az://) with the store's settings.
    Remote {
        url: String,
        settings: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone)]
pub struct ParquetSinkConfig {
    pub target: SinkTarget,
    pub rollover_bytes: u64,
    /// `partition_by`: Hive-style directories.
    pub partitioning: eddy_connectors::parquet_sink::Partitioning,
    /// Files of at least this size upload in parts of this size.
    pub part_size: usize,
    /// Committed files waiting for an unreachable store may fill this much local disk; then
    /// the sink waits (its source with it) until uploads make room.
    pub spool_limit: u64,
}

#[derive(Debug, Clone)]
pub enum SinkConfig {
    Parquet(ParquetSinkConfig),
    Kafka(KafkaSinkConfig),
    Webhook(WebhookConfig),
    /// NOTIFY `channel` with each row as JSON, when its checkpoint commits.
    Notify {
        channel: String,
    },
}

fn invalid(message: impl Into<String>) -> Error {
    Error::user(sqlstate::INVALID_PARAMETER_VALUE, message)
}

/// Keys every sink takes, whatever its connector.
const COMMON: [&str; 2] = ["connector", "checkpoint_interval"];

impl SinkConfig {
    /// Reads the options of sink `name`; unknown keys are errors.
    pub fn from_options(name: &str, options: &[(String, String)]) -> Result<Self> {
        let mut o = Options::new(options.iter().cloned()).map_err(|e| invalid(e.to_string()))?;
        let connector = o
            .take("connector")
            .map(|c| c.to_ascii_lowercase())
            .ok_or_else(|| {
                invalid(format!(
                    "a sink needs connector = '…' (one of {})",
                    CONNECTORS.join(", ")
                ))
            })?;
        for key in COMMON {
            o.take(key);
        }
        let config = match connector.as_str() {
            "parquet" => {
                let rollover_bytes =
                    size_option(&mut o, "rollover_size")?.unwrap_or(DEFAULT_ROLLOVER_BYTES);
                let part_size =
                    size_option(&mut o, "upload_part_size")?.unwrap_or(DEFAULT_PART_BYTES);
                if part_size < MIN_PART_BYTES {
                    return Err(invalid(
                        "upload_part_size must be at least 5MB (object stores refuse smaller parts)",
                    ));
                }
                let spool_limit =
                    size_option(&mut o, "spool_limit")?.unwrap_or(DEFAULT_SPOOL_LIMIT_BYTES);
                let partitioning = match o.take("partition_by") {
                    None => Default::default(),
                    Some(spec) => eddy_connectors::parquet_sink::Partitioning::parse(&spec)
                        .map_err(|e| invalid(e.to_string()))?,
                };
                let target = sink_target(&mut o)?;
                SinkConfig::Parquet(ParquetSinkConfig {
                    target,
                    rollover_bytes,
                    partitioning,
                    part_size: part_size as usize,
                    spool_limit,
                })
            }
            "kafka" => SinkConfig::Kafka(
                KafkaSinkConfig::from_options(&mut o, name).map_err(|e| invalid(e.to_string()))?,
            ),
            "webhook" => SinkConfig::Webhook(
                WebhookConfig::from_options(&mut o).map_err(|e| invalid(e.to_string()))?,
            ),
            "notify" => {
                let channel = o.take("channel").ok_or_else(|| {
                    invalid("a notify sink needs channel = '…' (the channel clients LISTEN on)")
                })?;
                crate::engine::notify::check(&channel, "")?;
                SinkConfig::Notify { channel }
            }
            other => {
                return Err(invalid(format!(
                    "unknown sink connector \"{other}\" (expected one of {})",
                    CONNECTORS.join(", ")
                )));
            }
        };
        o.finish().map_err(|e| invalid(e.to_string()))?;
        Ok(config)
    }

    /// What the sink writes to, for `eddy_catalog.sinks` (never credentials).
    pub fn target(&self) -> String {
        match self {
            SinkConfig::Parquet(p) => match &p.target {
                SinkTarget::Local(dir) => dir.display().to_string(),
                SinkTarget::Remote { url, .. } => url.clone(),
            },
            SinkConfig::Kafka(k) => format!(
                "kafka://{}/{}",
                k.client
                    .get("bootstrap.servers")
                    .map(String::as_str)
                    .unwrap_or(""),
                k.topic
            ),
            SinkConfig::Notify { channel } => format!("notify:{channel}"),
            SinkConfig::Webhook(w) => {
                let mut url = w.url.clone();
                let _ = url.set_password(None);
                let _ = url.set_username("");
                url.set_query(None);
                url.to_string()
            }
        }
    }

    pub fn connector(&self) -> &'static str {
        match self {
            SinkConfig::Parquet(_) => "parquet",
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Webhook(_) => "webhook",
            SinkConfig::Notify { .. } => "notify",
        }
    }
}

/// The target of a Parquet sink: `path`, and for object stores every key left over as the
/// store's settings (the store refuses keys it does not know).
fn sink_target(o: &mut Options) -> Result<SinkTarget> {
    let path = o.take("path").ok_or_else(|| {
        invalid(
            "a parquet sink needs path = '/directory', 'file:///directory' or 's3://bucket/prefix'",
        )
    })?;
    if eddy_connectors::store::scheme(&path).is_some() {
        let settings: Vec<(String, String)> = o
            .all()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, _) in &settings {
            o.take(k);
        }
        return Ok(SinkTarget::Remote {
            url: path,
            settings,
        });
    }
    if path.contains("://") && !path.starts_with("file://") {
        return Err(Error::not_supported(format!(
            "parquet sinks to {path} (use a local directory, s3://, gs:// or az://)"
        )));
    }
    Ok(SinkTarget::Local(std::path::PathBuf::from(
        path.strip_prefix("file://").unwrap_or(&path),
    )))
}

/// Whether an aggregate sends a group's row each time it changes (an upsert stream) rather
/// than once, when its window closes (append-only).
pub fn emits_updates(agg: &super::plan::AggregatePlan, emit_on_close: bool) -> bool {
    agg.session.is_none() && !(agg.window.is_some() && emit_on_close)
}
