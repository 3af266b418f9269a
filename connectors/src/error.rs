//! Connector errors. The engine maps them to SQLSTATEs: option errors are the user's
//! (22023), connection and broker errors are external (58030 / 08xxx in PostgreSQL terms).

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad WITH option or an option combination that cannot work.
    #[error("{0}")]
    Options(String),
    /// The external system could not be reached (a broker or endpoint down, no route).
    #[error("{0}")]
    Unavailable(String),
    /// What the options name does not exist (a file, a directory, a topic).
    #[error("{0}")]
    NotFound(String),
    /// The external system (broker, object store, file system) failed.
    #[error("{0}")]
    External(String),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}
