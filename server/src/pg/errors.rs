//! Engine errors to Postgres ErrorResponses.

use eddy_sql::Error;
use pgwire::error::{ErrorInfo, PgWireError};

pub fn error_info(e: &Error) -> ErrorInfo {
    let mut info = ErrorInfo::new(
        "ERROR".to_string(),
        e.sqlstate().to_string(),
        e.user_message(),
    );
    if let Some(detail) = e.detail() {
        info.detail = Some(detail.to_string());
    }
    if let Some(hint) = e.hint() {
        info.hint = Some(hint.to_string());
    }
    if let Some(object) = e.object() {
        info.schema = object.schema.clone();
        info.table = object.table.clone();
        info.column = object.column.clone();
        info.constraint = object.constraint.clone();
    }
    info
}

pub fn to_pgwire(e: Error) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(&e)))
}

pub fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message.into(),
    )))
}

/// A FATAL error: the server closes the connection after sending it (failed logins, no
/// connection slot left).
pub fn fatal_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        code.to_string(),
        message.into(),
    )))
}
