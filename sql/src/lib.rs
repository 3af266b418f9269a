//! Eddy's engine: SQL dialect and DDL, catalog, planning through DataFusion, storage,
//! transactions.
//!
//! Layers, bottom up: [`storage`] (the KV seam; RocksDB lives only in `storage::rocks`),
//! [`keys`] (the layout of every key in the store),
//! [`codec`] (key and row encodings), [`catalog`], [`txn`] (overlay + validated commit),
//! [`table`] (stored tables as DataFusion tables), [`engine`] (sessions and statements).

pub mod auth;
pub mod catalog;
pub mod cep;
pub mod codec;
pub mod engine;
pub mod error;
pub mod keys;
pub mod limits;
pub mod storage;
pub mod stream;
pub mod table;
pub mod txn;
pub mod types;

/// Models as the engine runs them (REST inference uses the same sessions as PREDICT).
pub use eddy_udf::onnx;
pub use engine::{CommandTag, Engine, Prepared, QueryOutput, Session, TxnStatus};
pub use error::{Error, Result};
