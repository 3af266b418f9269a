//! Row pattern recognition (SQL:2016 MATCH_RECOGNIZE): the pattern compiler, the incremental
//! matcher the streaming operator and batch queries run, and the reference matcher it is
//! tested against.
//!
//! - `pattern.rs`: the PATTERN as written ([`Pattern`]) and the program it compiles to.
//! - `matcher.rs`: the incremental matcher over one partition's rows in order, whose open
//!   match attempts are plain data ([`Partition`]) an operator stores in its state table.
//! - `reference.rs`: the standard's definition (backtracking over the pattern as written), for
//!   tests.

pub mod exec;
pub mod expr;
pub mod matcher;
pub mod pattern;
pub mod reference;
pub mod run;
pub mod syntax;
pub mod table;

pub use matcher::{Define, Found, MatchConfig, Matcher, Partition, Path, Skip};
pub use pattern::{Pattern, Program, Var};

#[cfg(test)]
mod tests;
