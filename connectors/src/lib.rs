//! Eddy's connectors: sources, sinks and formats.
//!
//! Every source implements [`source::Source`] and yields Arrow record batches; [`open_source`]
//! picks the connector named by `connector = '...'` in CREATE SOURCE's WITH options.

pub mod datagen;
pub mod encode;
pub mod error;
pub mod file;
pub mod format;
pub mod kafka;
pub mod kafka_sink;
pub mod nexmark;
pub mod options;
pub mod parquet_sink;
mod rng;
pub mod source;
pub mod store;
pub mod webhook;

pub use error::{Error, Result};
pub use options::Options;
pub use source::{DeadLetter, Poll, Positions, Source, SourceBatch, SourceSpec};

/// Connectors that read from outside; `None` means events are pushed (INSERT, HTTP).
pub const CONNECTORS: [&str; 4] = ["kafka", "nexmark", "datagen", "file"];

/// Checks a source's options without connecting (CREATE SOURCE runs this).
pub fn validate_source(connector: &str, spec: &SourceSpec) -> Result<()> {
    match connector {
        "kafka" => kafka::KafkaConfig::from_spec(spec).map(|_| ()),
        "nexmark" => nexmark::Nexmark::open(spec, &Positions::new()).map(|_| ()),
        "datagen" => datagen::Datagen::open(spec, &Positions::new()).map(|_| ()),
        "file" => file::FileConfig::from_spec(spec)?.check_exists(),
        other => Err(Error::Options(format!(
            "unknown connector \"{other}\" (expected one of {})",
            CONNECTORS.join(", ")
        ))),
    }
}

/// Opens a source at `start` (empty: the connector's configured start).
pub fn open_source(
    connector: &str,
    spec: &SourceSpec,
    start: &Positions,
) -> Result<Box<dyn Source>> {
    Ok(match connector {
        "kafka" => Box::new(kafka::KafkaSource::open(spec, start)?),
        "nexmark" => Box::new(nexmark::Nexmark::open(spec, start)?),
        "datagen" => Box::new(datagen::Datagen::open(spec, start)?),
        "file" => Box::new(file::FileSource::open(spec, start)?),
        other => {
            return Err(Error::Options(format!("unknown connector \"{other}\"")));
        }
    })
}
