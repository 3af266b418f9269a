//! The engine's one error type.
//!
//! Every error carries a SQLSTATE so the pgwire boundary can answer with the code a Postgres
//! client expects. User mistakes (bad SQL, missing tables, constraint violations) are built
//! with [`Error::user`]; storage failures and our own bugs become `XX000`. DataFusion errors
//! are classified once, here, in [`Error::sqlstate`] and [`Error::user_message`].

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// SQLSTATE codes Eddy reports (a subset of PostgreSQL's).
pub mod sqlstate {
    pub const SUCCESSFUL_COMPLETION: &str = "00000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    pub const INVALID_BINARY_REPRESENTATION: &str = "22P03";
    pub const DATETIME_FIELD_OVERFLOW: &str = "22008";
    pub const DIVISION_BY_ZERO: &str = "22012";
    pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    pub const STRING_DATA_RIGHT_TRUNCATION: &str = "22001";
    pub const DATA_EXCEPTION: &str = "22000";
    pub const NOT_NULL_VIOLATION: &str = "23502";
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const ACTIVE_SQL_TRANSACTION: &str = "25001";
    pub const NO_ACTIVE_SQL_TRANSACTION: &str = "25P01";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const INVALID_SAVEPOINT_SPECIFICATION: &str = "3B001";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const UNDEFINED_COLUMN: &str = "42703";
    pub const UNDEFINED_FUNCTION: &str = "42883";
    pub const UNDEFINED_TABLE: &str = "42P01";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const DUPLICATE_TABLE: &str = "42P07";
    pub const DUPLICATE_SCHEMA: &str = "42P06";
    pub const INVALID_SCHEMA_NAME: &str = "3F000";
    pub const DATATYPE_MISMATCH: &str = "42804";
    pub const WRONG_OBJECT_TYPE: &str = "42809";
    pub const INVALID_NAME: &str = "42602";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const BAD_COPY_FORMAT: &str = "22P04";
    pub const INVALID_TABLE_DEFINITION: &str = "42P16";
    pub const DEPENDENT_OBJECTS_STILL_EXIST: &str = "2BP01";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const QUERY_CANCELED: &str = "57014";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const OUT_OF_MEMORY: &str = "53200";
    pub const DISK_FULL: &str = "53100";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const IO_ERROR: &str = "58030";
    pub const UNDEFINED_FILE: &str = "58P01";
    pub const NO_DATA_FOUND: &str = "P0002";
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A failure the user can act on, with its SQLSTATE.
    #[error("{message}")]
    User {
        code: &'static str,
        message: String,
        detail: Option<String>,
        /// What the user can do instead (PostgreSQL's HINT field).
        hint: Option<String>,
        /// The object the error is about (PostgreSQL's schema, table, column and constraint
        /// fields, which drivers expose: psycopg's `diag.constraint_name`).
        object: Option<Box<ErrorObject>>,
    },
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error("storage: {0}")]
    Storage(String),
    /// A bug in Eddy, not the user's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The database object an error is about.
#[derive(Debug, Clone, Default)]
pub struct ErrorObject {
    pub schema: Option<String>,
    pub table: Option<String>,
    pub column: Option<String>,
    pub constraint: Option<String>,
}

impl From<ArrowError> for Error {
    fn from(e: ArrowError) -> Self {
        Error::DataFusion(DataFusionError::ArrowError(Box::new(e), None))
    }
}

impl Error {
    pub fn user(code: &'static str, message: impl Into<String>) -> Self {
        Error::User {
            code,
            message: message.into(),
            detail: None,
            hint: None,
            object: None,
        }
    }

    /// The error concerns `constraint` of `schema.table`.
    pub fn with_constraint(mut self, schema: &str, table: &str, constraint: &str) -> Self {
        if let Error::User { object, .. } = &mut self {
            *object = Some(Box::new(ErrorObject {
                schema: Some(schema.to_string()),
                table: Some(table.to_string()),
                column: None,
                constraint: Some(constraint.to_string()),
            }));
        }
        self
    }

    /// The error concerns `column` of `schema.table`.
    pub fn with_column(mut self, schema: &str, table: &str, column: &str) -> Self {
        if let Error::User { object, .. } = &mut self {
            *object = Some(Box::new(ErrorObject {
                schema: Some(schema.to_string()),
                table: Some(table.to_string()),
                column: Some(column.to_string()),
                constraint: None,
            }));
        }
        self
    }

    pub fn object(&self) -> Option<&ErrorObject> {
        match self {
            Error::User { object, .. } => object.as_deref(),
            Error::DataFusion(e) => match root(e) {
                DataFusionError::External(inner) => {
                    inner.downcast_ref::<Error>().and_then(|e| e.object())
                }
                _ => None,
            },
            _ => None,
        }
    }

    pub fn with_detail(mut self, text: impl Into<String>) -> Self {
        if let Error::User { detail, .. } = &mut self {
            *detail = Some(text.into());
        }
        self
    }

    pub fn with_hint(mut self, text: impl Into<String>) -> Self {
        if let Error::User { hint, .. } = &mut self {
            *hint = Some(text.into());
        }
        self
    }

    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::User { hint, .. } => hint.as_deref(),
            Error::DataFusion(e) => match root(e) {
                DataFusionError::External(inner) => {
                    inner.downcast_ref::<Error>().and_then(|e| e.hint())
                }
                _ => None,
            },
            _ => None,
        }
    }

    pub fn not_supported(what: impl std::fmt::Display) -> Self {
        Error::user(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("{what} is not supported"),
        )
    }

    pub fn undefined_table(name: impl std::fmt::Display) -> Self {
        Error::user(
            sqlstate::UNDEFINED_TABLE,
            format!("relation \"{name}\" does not exist"),
        )
    }

    /// A connector's failure, in the class of its cause: bad options 22023, a missing file
    /// or topic 58P01, an unreachable system 08006, another external failure 58030.
    pub fn connector(context: impl std::fmt::Display, e: eddy_connectors::Error) -> Self {
        use eddy_connectors::Error as C;
        let code = match &e {
            C::Options(_) => sqlstate::INVALID_PARAMETER_VALUE,
            C::NotFound(_) => sqlstate::UNDEFINED_FILE,
            C::Unavailable(_) => sqlstate::CONNECTION_FAILURE,
            C::External(_) => sqlstate::IO_ERROR,
            C::Arrow(_) => sqlstate::INTERNAL_ERROR,
        };
        Error::user(code, format!("{context}: {e}"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    pub fn detail(&self) -> Option<&str> {
        match self {
            Error::User { detail, .. } => detail.as_deref(),
            Error::DataFusion(e) => match root(e) {
                DataFusionError::External(inner) => {
                    inner.downcast_ref::<Error>().and_then(|e| e.detail())
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The SQLSTATE a Postgres client sees for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Error::User { code, .. } => code,
            Error::DataFusion(e) => classify(e).0,
            Error::Storage(_) | Error::Internal(_) => sqlstate::INTERNAL_ERROR,
        }
    }

    /// The message a Postgres client sees: DataFusion's wording is rewritten into the
    /// PostgreSQL wording users know where we recognise it, and its cause chain is kept.
    pub fn user_message(&self) -> String {
        match self {
            Error::DataFusion(e) => classify(e).1,
            other => other.to_string(),
        }
    }
}

/// Strips DataFusion's context and shared wrappers down to the error that says what happened.
fn root(e: &DataFusionError) -> &DataFusionError {
    match e {
        DataFusionError::Context(_, inner) => root(inner),
        DataFusionError::Shared(inner) => root(inner),
        DataFusionError::Diagnostic(_, inner) => root(inner),
        DataFusionError::Collection(errs) if !errs.is_empty() => root(&errs[0]),
        other => other,
    }
}

fn classify(e: &DataFusionError) -> (&'static str, String) {
    use sqlstate::*;
    let e = root(e);
    match e {
        DataFusionError::SQL(err, _) => (SYNTAX_ERROR, strip_prefixes(&err.to_string())),
        DataFusionError::NotImplemented(msg) => (FEATURE_NOT_SUPPORTED, msg.clone()),
        DataFusionError::ArrowError(err, _) => classify_arrow(err),
        DataFusionError::SchemaError(err, _) => {
            let msg = strip_prefixes(&err.to_string());
            let code = if msg.contains("No field named") || msg.contains("not found") {
                UNDEFINED_COLUMN
            } else {
                SYNTAX_ERROR
            };
            (code, rewrite_column_message(&msg))
        }
        DataFusionError::External(inner) => {
            if let Some(ours) = inner.downcast_ref::<Error>() {
                (ours.sqlstate(), ours.user_message())
            } else if let Some(arrow) = inner.downcast_ref::<ArrowError>() {
                classify_arrow(arrow)
            } else if let Some(limit) = inner.downcast_ref::<eddy_udf::limits::LimitExceeded>() {
                (PROGRAM_LIMIT_EXCEEDED, limit.to_string())
            } else if let Some(model) = inner.downcast_ref::<eddy_udf::predict::ModelRunError>() {
                // PostgreSQL's class for failures inside a called routine.
                ("38000", model.to_string())
            } else {
                (INTERNAL_ERROR, inner.to_string())
            }
        }
        DataFusionError::Plan(msg) => classify_plan(msg),
        DataFusionError::Execution(msg) => classify_execution(msg),
        DataFusionError::ResourcesExhausted(msg) => (OUT_OF_MEMORY, msg.clone()),
        other => (INTERNAL_ERROR, strip_prefixes(&other.to_string())),
    }
}

fn classify_arrow(err: &ArrowError) -> (&'static str, String) {
    use sqlstate::*;
    match err {
        ArrowError::DivideByZero => (DIVISION_BY_ZERO, "division by zero".into()),
        ArrowError::CastError(msg) | ArrowError::ParseError(msg) => {
            (INVALID_TEXT_REPRESENTATION, msg.clone())
        }
        ArrowError::ComputeError(msg) if msg.contains("overflow") => {
            (NUMERIC_VALUE_OUT_OF_RANGE, msg.clone())
        }
        ArrowError::ArithmeticOverflow(msg) => (NUMERIC_VALUE_OUT_OF_RANGE, msg.clone()),
        ArrowError::InvalidArgumentError(msg) => (DATA_EXCEPTION, msg.clone()),
        ArrowError::ExternalError(inner) => match inner.downcast_ref::<Error>() {
            Some(ours) => (ours.sqlstate(), ours.user_message()),
            None => (INTERNAL_ERROR, inner.to_string()),
        },
        other => (INTERNAL_ERROR, other.to_string()),
    }
}

fn classify_plan(msg: &str) -> (&'static str, String) {
    use sqlstate::*;
    if let Some(name) = between(msg, "table '", "' not found") {
        let short = name.rsplit('.').next().unwrap_or(name);
        return (
            UNDEFINED_TABLE,
            format!("relation \"{short}\" does not exist"),
        );
    }
    if msg.contains("Invalid function") || msg.contains("Unknown function") {
        return (UNDEFINED_FUNCTION, msg.to_string());
    }
    if msg.contains("No field named") {
        return (UNDEFINED_COLUMN, rewrite_column_message(msg));
    }
    if msg.contains("Unsupported SQL type") || msg.contains("not supported") {
        return (FEATURE_NOT_SUPPORTED, msg.to_string());
    }
    if msg.contains("Cannot infer common argument type")
        || msg.contains("does not support")
        || msg.contains("Failed to coerce")
        || msg.contains("There isn't a common type")
    {
        return (DATATYPE_MISMATCH, msg.to_string());
    }
    (SYNTAX_ERROR, msg.to_string())
}

fn classify_execution(msg: &str) -> (&'static str, String) {
    use sqlstate::*;
    if msg.contains("Divide by zero") || msg.contains("division by zero") {
        return (DIVISION_BY_ZERO, "division by zero".into());
    }
    if msg.contains("Cannot cast") || msg.contains("Error parsing") || msg.contains("invalid") {
        return (INVALID_TEXT_REPRESENTATION, msg.to_string());
    }
    if msg.contains("overflow") {
        return (NUMERIC_VALUE_OUT_OF_RANGE, msg.to_string());
    }
    (INTERNAL_ERROR, msg.to_string())
}

/// "Schema error: No field named foo. Valid fields are t.a, t.b." -> `column "foo" does not exist`
fn rewrite_column_message(msg: &str) -> String {
    match between(msg, "No field named ", ".") {
        Some(col) => {
            let col = col.trim_matches('"');
            let col = col.rsplit('.').next().unwrap_or(col).trim_matches('"');
            format!("column \"{col}\" does not exist")
        }
        None => msg.to_string(),
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let to = s[from..].find(end)? + from;
    Some(&s[from..to])
}

fn strip_prefixes(msg: &str) -> String {
    let mut m = msg;
    for p in [
        "sql parser error: ",
        "SQL error: ",
        "ParserError(\"",
        "Schema error: ",
    ] {
        if let Some(rest) = m.strip_prefix(p) {
            m = rest;
        }
    }
    m.trim_end_matches("\")").to_string()
}

/// Turns an engine error into a DataFusion error without losing its SQLSTATE.
pub fn to_df(e: Error) -> DataFusionError {
    match e {
        Error::DataFusion(e) => e,
        other => DataFusionError::External(Box::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_table_reads_like_postgres() {
        let e = Error::DataFusion(DataFusionError::Plan(
            "table 'eddy.public.nope' not found".into(),
        ));
        assert_eq!(e.sqlstate(), sqlstate::UNDEFINED_TABLE);
        assert_eq!(e.user_message(), "relation \"nope\" does not exist");
    }

    #[test]
    fn our_errors_survive_a_trip_through_datafusion() {
        let e = Error::DataFusion(to_df(Error::user(sqlstate::UNIQUE_VIOLATION, "dup")));
        assert_eq!(e.sqlstate(), sqlstate::UNIQUE_VIOLATION);
        assert_eq!(e.user_message(), "dup");
    }
}
