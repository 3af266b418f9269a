//! Byte encodings of table rows.
//!
//! * [`key`]: the order-preserving ("memcomparable") encoding of primary-key values, so that
//!   RocksDB's byte order is the SQL order of keys and a key range predicate becomes a key
//!   range scan.
//! * [`row`]: the compact value encoding of a whole row.
//!
//! Both read Arrow arrays through [`ColumnRef`] (one downcast per column, not per cell) and
//! decode straight into Arrow builders.

pub mod column;
pub mod key;
pub mod row;

pub use column::{ColumnBuilder, ColumnRef};
