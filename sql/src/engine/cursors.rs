//! Cursors: `DECLARE name CURSOR FOR <query | SUBSCRIBE ...>`, `FETCH [count | ALL | NEXT |
//! FORWARD ...] [FROM | IN] name`, `CLOSE name | ALL`, as PostgreSQL has them inside a
//! transaction block (they end with it; WITH HOLD is refused). Cursors scan forward only.
//!
//! A query's cursor runs the query once and FETCH reads on from where the last one stopped.
//! A subscription's cursor never ends: FETCH waits for at least one row, then returns the
//! rows that have arrived (up to its count), so a client loops on `FETCH ALL` to follow a
//! view (Materialize's and RisingWave's subscription cursors behave alike).

use std::collections::{HashMap, VecDeque};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::sql::sqlparser::ast::{self, CloseCursor, FetchDirection};
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;

use super::ddl::ident;
use super::session::{CommandTag, QueryOutput, Session, TxnStatus};
use super::statement::Stmt;
use crate::error::{Error, Result, sqlstate};

/// What a cursor reads.
#[derive(Debug, Clone, PartialEq)]
pub enum CursorBody {
    Query(Box<ast::Query>),
    Subscribe(super::subscribe::Subscribe),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeclareCursor {
    pub name: ast::Ident,
    pub body: CursorBody,
}

impl std::fmt::Display for DeclareCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.body {
            CursorBody::Query(q) => write!(f, "DECLARE {} CURSOR FOR {q}", self.name),
            CursorBody::Subscribe(s) => write!(f, "DECLARE {} CURSOR FOR {s}", self.name),
        }
    }
}

struct Cursor {
    schema: SchemaRef,
    stream: SendableRecordBatchStream,
    /// Rows read from the stream and not fetched yet.
    buffered: VecDeque<RecordBatch>,
    subscription: bool,
    done: bool,
}

/// A session's open cursors.
#[derive(Default)]
pub struct Cursors {
    open: Mutex<HashMap<String, Cursor>>,
}

impl Cursors {
    /// Closes every cursor (the transaction ended).
    pub fn close_all(&self) {
        self.open.lock().clear();
    }

    fn schema(&self, name: &str) -> Result<SchemaRef> {
        self.open
            .lock()
            .get(name)
            .map(|c| c.schema.clone())
            .ok_or_else(|| missing(name))
    }
}

fn missing(name: &str) -> Error {
    Error::user("34000", format!("cursor \"{name}\" does not exist"))
}

/// Whether the statement is FETCH or CLOSE.
pub fn is_cursor_statement(statement: &ast::Statement) -> bool {
    matches!(
        statement,
        ast::Statement::Fetch { .. } | ast::Statement::Close { .. }
    )
}

/// The rows FETCH returns: its cursor's.
pub fn fetch_schema(session: &Session, statement: &ast::Statement) -> Result<Option<SchemaRef>> {
    match statement {
        ast::Statement::Fetch { name, .. } => session.cursors().schema(&ident(name)).map(Some),
        _ => Ok(None),
    }
}

/// The rows DECLARE's cursor will return (DECLARE itself returns none).
pub fn declared_schema(session: &Session, declare: &DeclareCursor) -> Result<Option<SchemaRef>> {
    match &declare.body {
        CursorBody::Subscribe(s) => Ok(Some(super::subscribe::schema(&*super::subscribe::target(
            session, &s.name,
        )?))),
        CursorBody::Query(_) => Ok(None),
    }
}

pub async fn declare(session: &Session, declare: &DeclareCursor) -> Result<QueryOutput> {
    if session.status() == TxnStatus::Idle {
        return Err(Error::user(
            sqlstate::NO_ACTIVE_SQL_TRANSACTION,
            "DECLARE CURSOR can only be used in transaction blocks",
        ));
    }
    let name = ident(&declare.name);
    if session.cursors().open.lock().contains_key(&name) {
        return Err(Error::user(
            "42P03",
            format!("cursor \"{name}\" already exists"),
        ));
    }
    let (output, subscription) = match &declare.body {
        CursorBody::Subscribe(s) => (super::subscribe::start(session, s).await?, true),
        CursorBody::Query(q) => {
            let prepared = session
                .prepare(Stmt::Sql(ast::Statement::Query(q.clone())))
                .await?;
            (session.execute_in_txn(&prepared, Vec::new()).await?, false)
        }
    };
    let QueryOutput::Rows { schema, stream, .. } = output else {
        return Err(Error::user(
            sqlstate::SYNTAX_ERROR,
            "a cursor's statement must return rows",
        ));
    };
    session.cursors().open.lock().insert(
        name,
        Cursor {
            schema,
            stream,
            buffered: VecDeque::new(),
            subscription,
            done: false,
        },
    );
    Ok(QueryOutput::Command(CommandTag::new("DECLARE CURSOR")))
}

/// How many rows a FETCH asks for (`None`: all).
fn count(direction: &FetchDirection) -> Result<Option<usize>> {
    let number = |v: &ast::ValueWithSpan| -> Result<usize> {
        match &v.value {
            ast::Value::Number(n, _) => n.parse::<usize>().map_err(|_| {
                Error::user("55000", "cursor can only scan forward")
                    .with_hint("Declare it with SCROLL option to enable backward scan.")
            }),
            _ => Err(Error::user(
                sqlstate::SYNTAX_ERROR,
                "FETCH takes a row count",
            )),
        }
    };
    match direction {
        FetchDirection::Next => Ok(Some(1)),
        FetchDirection::Count { limit } => number(limit).map(Some),
        FetchDirection::Forward { limit: None } => Ok(Some(1)),
        FetchDirection::Forward { limit: Some(l) } => number(l).map(Some),
        FetchDirection::All | FetchDirection::ForwardAll => Ok(None),
        _ => Err(Error::user("55000", "cursor can only scan forward")
            .with_hint("Declare it with SCROLL option to enable backward scan.")),
    }
}

pub async fn run(session: &Session, statement: &ast::Statement) -> Result<QueryOutput> {
    match statement {
        ast::Statement::Close { cursor } => {
            match cursor {
                CloseCursor::All => session.cursors().close_all(),
                CloseCursor::Specific { name } => {
                    let name = ident(name);
                    if session.cursors().open.lock().remove(&name).is_none() {
                        return Err(missing(&name));
                    }
                }
            }
            Ok(QueryOutput::Command(CommandTag::new("CLOSE CURSOR")))
        }
        ast::Statement::Fetch {
            name, direction, ..
        } => {
            let name = ident(name);
            let want = count(direction)?;
            // The cursor leaves the map while it is read (a FETCH may wait for rows).
            let mut cursor = session
                .cursors()
                .open
                .lock()
                .remove(&name)
                .ok_or_else(|| missing(&name))?;
            let fetched = fetch(&mut cursor, want).await;
            let schema = cursor.schema.clone();
            session.cursors().open.lock().insert(name, cursor);
            let batches = fetched?;
            let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
            let stream = MemoryStream::try_new(batches, schema.clone(), None)?;
            Ok(QueryOutput::Rows {
                schema,
                stream: Box::pin(stream),
                command: Some(CommandTag::new("FETCH").with_rows(n)),
            })
        }
        other => Err(Error::internal(format!("not a cursor statement: {other}"))),
    }
}

async fn fetch(cursor: &mut Cursor, want: Option<usize>) -> Result<Vec<RecordBatch>> {
    let limit = want.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let mut n = 0;
    while n < limit {
        if let Some(batch) = cursor.buffered.pop_front() {
            let take = (limit - n).min(batch.num_rows());
            if take < batch.num_rows() {
                cursor
                    .buffered
                    .push_front(batch.slice(take, batch.num_rows() - take));
            }
            n += take;
            out.push(batch.slice(0, take));
            continue;
        }
        if cursor.done {
            break;
        }
        // A subscription waits only for its first rows, then takes what has arrived.
        let next = if cursor.subscription && n > 0 {
            match cursor.stream.next().now_or_never() {
                Some(next) => next,
                None => break,
            }
        } else {
            cursor.stream.next().await
        };
        match next {
            Some(batch) => cursor.buffered.push_back(batch?),
            None => cursor.done = true,
        }
    }
    Ok(out)
}
