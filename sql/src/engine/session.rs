//! A client session: its settings, its DataFusion context, its open transaction.
//!
//! Statement flow: [`Session::parse`] → [`Session::prepare`] (plans queries and DML through
//! DataFusion, so parameter types and the result schema are known before execution) →
//! [`Session::execute`] (binds parameters, runs, and commits unless inside BEGIN ... COMMIT).
//!
//! Transaction states follow PostgreSQL: idle, in a transaction block, or failed (every
//! statement but COMMIT/ROLLBACK is refused with 25P02 until the block ends).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError, ParserOptions};
use datafusion::sql::sqlparser::tokenizer::Token;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};

use super::Engine;
use super::catalog_provider::{EddyCatalog, SessionView};
use super::functions::{self, SessionInfo};
use super::naming;
use super::point_get::PointGet;
use super::scalar_select::ScalarSelect;
use super::settings::Settings;
pub(super) use super::statement::Stmt;
use super::statement::{EddyStatement, parse_eddy};
use crate::catalog::DEFAULT_SCHEMA;
use crate::error::{Error, Result, sqlstate};
use crate::table::SharedTxn;
use crate::txn::Txn;

/// Deepest expression nesting the parser accepts (deeper input is an error, not a crash).
const PARSER_RECURSION_LIMIT: usize = 200;
pub const CATALOG_NAME: &str = "eddy";
/// How often an autocommit statement is re-run after losing a commit race.
const AUTOCOMMIT_RETRIES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    Idle,
    InTransaction,
    Failed,
}

/// The completion tag of a statement that returns no rows ("INSERT 0 3", "CREATE TABLE").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandTag {
    pub command: String,
    pub rows: Option<usize>,
}

impl CommandTag {
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            rows: None,
        }
    }

    pub fn with_rows(mut self, rows: usize) -> Self {
        self.rows = Some(rows);
        self
    }
}

pub enum QueryOutput {
    Rows {
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
        /// The completion tag when it is not `SELECT n` (`INSERT 0 n` for INSERT ... RETURNING).
        command: Option<CommandTag>,
    },
    Command(CommandTag),
    /// `COPY … FROM STDIN` started: the client sends the rows of this many columns next
    /// ([`Session::copy_data`], [`Session::copy_done`]).
    CopyIn {
        columns: usize,
        /// The data comes in the binary format.
        binary: bool,
    },
    /// `COPY … TO STDOUT`: these rows, written in this format.
    CopyOut {
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
        format: super::copy::CopyFormat,
    },
}

/// A statement ready to execute, with what the extended protocol describes.
#[derive(Clone)]
pub struct Prepared {
    pub statement: Arc<Stmt>,
    plan: Option<LogicalPlan>,
    catalog_version: u64,
    /// Types of `$1..$n` as far as they could be inferred (fields, to keep uuid/jsonb).
    pub param_types: Vec<Option<FieldRef>>,
    /// Columns of the rows it returns; `None` for statements that return no rows.
    pub schema: Option<SchemaRef>,
    /// Set when the statement is a primary-key point read (executed without DataFusion).
    point_get: Option<PointGet>,
    /// Set when the statement is a FROM-less SELECT over parameters (evaluated directly).
    scalar: Option<ScalarSelect>,
    /// Set when the statement is an INSERT of VALUES (rows built without DataFusion).
    fast_insert: Option<super::point_write::FastInsert>,
    /// INSERT / UPDATE / DELETE ... RETURNING: the select list planned over the target table
    /// (its scan is replaced by the written rows at execution).
    returning: Option<LogicalPlan>,
}

impl Prepared {
    pub fn sql(&self) -> String {
        self.statement.to_string()
    }

    /// Whether executions build the rows without DataFusion (an INSERT of VALUES).
    pub fn is_fast_insert(&self) -> bool {
        self.fast_insert.is_some()
    }
}

pub struct Session {
    engine: Arc<Engine>,
    ctx: SessionContext,
    view: Arc<SessionView>,
    info: Arc<SessionInfo>,
    txn: SharedTxn,
    status: Mutex<TxnStatus>,
    /// Set when a row stream of this session failed after its statement returned.
    stream_failed: Arc<AtomicBool>,
    /// MATCH_RECOGNIZE clauses compiled for the statement being planned.
    match_tables: crate::cep::table::Prepared,
    /// The channels it LISTENs on and the notifications waiting for it.
    inbox: Arc<super::notify::Inbox>,
    /// Statements prepared with SQL's PREPARE.
    sql_prepared: super::sql_prepare::SqlPrepared,
    /// The transaction's open cursors.
    cursors: super::cursors::Cursors,
    /// A COPY FROM STDIN in progress, or the error that ended it early.
    copy_in: Mutex<Option<std::result::Result<super::copy::CopyIn, Error>>>,
}

/// A session's advisory locks end with it (the client disconnected).
impl Drop for Session {
    fn drop(&mut self) {
        self.engine.advisory.release(self.info.backend_pid, None);
        self.engine.notifier.unregister(self.info.backend_pid);
    }
}

impl Engine {
    pub fn new_session(self: &Arc<Self>, user: &str, database: &str) -> Session {
        Session::new(self.clone(), user, database)
    }
}

impl Session {
    fn new(engine: Arc<Engine>, user: &str, database: &str) -> Self {
        let config = SessionConfig::new()
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG_NAME, DEFAULT_SCHEMA)
            .with_target_partitions(2)
            .set_str("datafusion.sql_parser.dialect", "PostgreSQL")
            // `x::text` is Utf8, the string type of every table column and catalog.
            .set_bool("datafusion.sql_parser.map_string_types_to_utf8view", false)
            // Sessions run in UTC: now() is a timestamptz.
            .set_str("datafusion.execution.time_zone", "+00:00")
            .set_bool("datafusion.execution.parquet.pushdown_filters", true);
        let pool = super::memory::SessionPool::new(
            engine.query_memory.clone(),
            engine.limits.session_memory_bytes,
        );
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_pool(pool)
            .build_arc()
            .expect("a runtime with a memory pool builds");
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_type_planner(Arc::new(crate::types::PgTypePlanner))
            .with_analyzer_rule(Arc::new(super::pg_casts::PgCasts::new()))
            .build();
        let mut ctx = SessionContext::new_with_state(state);
        eddy_udf::register(&mut ctx).expect("Eddy's functions register");
        super::pg_functions::register(&mut ctx).expect("PostgreSQL's functions register");
        let txn: SharedTxn = Arc::new(Mutex::new(Txn::default()));
        let view = Arc::new(SessionView {
            engine: engine.clone(),
            txn: txn.clone(),
            dml_target: Mutex::new(None),
            state: Mutex::new(ctx.state_weak_ref()),
            database: database.to_string(),
            info: Mutex::new(std::sync::Weak::new()),
            pg_objects: Mutex::new(None),
        });
        let models = engine.models.session_lookup(Arc::downgrade(&view));
        for udf in eddy_udf::predict::model_udfs(models) {
            ctx.register_udf(udf);
        }
        ctx.register_catalog(CATALOG_NAME, Arc::new(EddyCatalog { view: view.clone() }));
        let exists_view = view.clone();
        let info = Arc::new(SessionInfo {
            user: user.to_string(),
            database: database.to_string(),
            backend_pid: engine.next_backend_pid(),
            settings: RwLock::new(Settings::default()),
            schema_exists: Box::new(move |s| exists_view.catalog().schema_exists(s)),
            superuser: std::sync::atomic::AtomicBool::new(true),
        });
        *view.info.lock() = Arc::downgrade(&info);
        functions::register(&ctx, info.clone());
        super::json_build::register(&ctx);
        super::sequences::register(&ctx, &view, info.clone());
        super::notify::register(&ctx, &view);
        let inbox = Arc::new(super::notify::Inbox::default());
        engine.notifier.register(info.backend_pid, &inbox);
        super::pg_catalog::register(&ctx, view.clone(), info.clone());
        super::advisory::register(&ctx, engine.advisory.clone(), info.backend_pid);
        let match_tables = crate::cep::table::Prepared::default();
        ctx.register_udtf(
            crate::cep::syntax::MARKER,
            Arc::new(crate::cep::table::MarkerFunction {
                prepared: match_tables.clone(),
            }),
        );
        Self {
            engine,
            ctx,
            view,
            info,
            txn,
            status: Mutex::new(TxnStatus::Idle),
            stream_failed: Arc::new(AtomicBool::new(false)),
            sql_prepared: Default::default(),
            cursors: Default::default(),
            match_tables,
            inbox,
            copy_in: Mutex::new(None),
        }
    }

    /// Sets whether the session's user is a superuser (from its role, once authenticated).
    pub fn set_superuser(&self, superuser: bool) {
        self.info.superuser.store(superuser, Ordering::Relaxed);
        let value = if superuser { "on" } else { "off" };
        self.info
            .settings
            .write()
            .set_startup("is_superuser", value.to_string());
    }

    pub fn backend_pid(&self) -> i32 {
        self.info.backend_pid
    }

    /// Starts `COPY … FROM STDIN`.
    pub(super) fn start_copy(&self, statement: &Statement) -> Result<QueryOutput> {
        let copy = super::copy::start(self, statement)?;
        let columns = copy.columns();
        let binary = copy.is_binary();
        *self.copy_in.lock() = Some(Ok(copy));
        Ok(QueryOutput::CopyIn { columns, binary })
    }

    /// `COPY … TO STDOUT`: runs the table scan or query whose rows are copied out.
    pub(super) async fn copy_out(&self, statement: &Statement) -> Result<QueryOutput> {
        let (query, format, table) = super::copy::copy_out_query(statement)?;
        match self.run_nested(query).await? {
            QueryOutput::Rows { schema, stream, .. } => {
                if let super::copy::CopyFormat::Csv { force_quote, .. } = &format
                    && let Some(missing) = force_quote
                        .iter()
                        .find(|c| schema.fields().iter().all(|f| f.name() != *c))
                {
                    return Err(match table {
                        Some(table) => Error::user(
                            sqlstate::UNDEFINED_COLUMN,
                            format!("column \"{missing}\" of relation \"{table}\" does not exist"),
                        ),
                        None => Error::user(
                            "42P10",
                            format!("FORCE_QUOTE column \"{missing}\" not referenced by COPY"),
                        ),
                    });
                }
                Ok(QueryOutput::CopyOut {
                    schema,
                    stream,
                    format,
                })
            }
            _ => Err(Error::user(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "COPY query must have a RETURNING clause",
            )),
        }
    }

    /// A chunk of COPY data. An error ends the COPY: later data is ignored and
    /// [`Session::copy_done`] reports it, as PostgreSQL does.
    /// Binary COPY data is decoded field by field with `decode`.
    pub fn copy_data(&self, bytes: &[u8], decode: super::copy::BinaryDecoder<'_>) {
        let mut state = self.copy_in.lock();
        if let Some(Ok(copy)) = state.as_mut()
            && let Err(e) = copy.data(self, bytes, decode)
        {
            *state = Some(Err(e));
        }
    }

    /// The end of the COPY data: the rows are written, and commit unless a transaction
    /// block is open. Returns how many rows were copied.
    pub async fn copy_done(&self) -> Result<usize> {
        let state = self.copy_in.lock().take();
        let result = match state {
            None => Err(Error::user(
                sqlstate::PROTOCOL_VIOLATION,
                "COPY data without a COPY FROM STDIN",
            )),
            Some(Err(e)) => Err(e),
            Some(Ok(copy)) => copy.finish(self),
        };
        self.end_statement(result).await
    }

    /// The client gave up the COPY (CopyFail).
    pub async fn copy_fail(&self, message: &str) -> Error {
        self.copy_in.lock().take();
        let error = || {
            Error::user(
                sqlstate::QUERY_CANCELED,
                format!("COPY from stdin failed: {message}"),
            )
        };
        let _ = self.end_statement::<()>(Err(error())).await;
        error()
    }

    /// Ends a statement that ran outside [`Session::execute`]: commits (autocommit) or
    /// rolls back, or marks an open block failed.
    async fn end_statement<T>(&self, result: Result<T>) -> Result<T> {
        let status = self.status();
        match (&result, status) {
            (Ok(_), TxnStatus::Idle) => self.commit_txn().await.map(|()| result.expect("ok")),
            (Err(_), TxnStatus::Idle) => {
                self.discard_txn();
                result
            }
            (Err(_), _) => {
                *self.status.lock() = TxnStatus::Failed;
                result
            }
            (Ok(_), _) => result,
        }
    }

    /// The notifications waiting for this session (the wire layer sends them while idle).
    pub fn inbox(&self) -> &Arc<super::notify::Inbox> {
        &self.inbox
    }

    pub fn settings(&self) -> parking_lot::RwLockReadGuard<'_, Settings> {
        self.info.settings.read()
    }

    /// A setting the client gave at connection start (RESET returns to it).
    pub fn set_startup_setting(&self, name: &str, value: String) {
        self.info.settings.write().set_startup(name, value);
    }

    pub fn set_setting(&self, name: &str, value: String) {
        self.info.settings.write().set(name, value);
        if name.eq_ignore_ascii_case("search_path") {
            self.sync_default_schema();
        }
    }

    pub fn status(&self) -> TxnStatus {
        let mut status = self.status.lock();
        if self.stream_failed.swap(false, Ordering::SeqCst) && *status == TxnStatus::InTransaction {
            *status = TxnStatus::Failed;
        }
        *status
    }

    /// Records that a statement failed outside [`Session::execute`] (for example while
    /// parsing): inside a transaction block, the block is now failed.
    pub fn note_error(&self) {
        let mut status = self.status.lock();
        if *status == TxnStatus::InTransaction {
            *status = TxnStatus::Failed;
        }
    }

    pub(super) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub(super) fn view(&self) -> &Arc<SessionView> {
        &self.view
    }

    pub(super) fn txn(&self) -> &SharedTxn {
        &self.txn
    }

    pub(super) fn ctx(&self) -> &SessionContext {
        &self.ctx
    }

    /// Splits and parses a query string. An empty or comment-only string gives no statements.
    pub fn parse(sql: &str) -> Result<Vec<Stmt>> {
        // MATCH_RECOGNIZE, which this dialect does not parse, as a marker table function.
        let rewritten = crate::cep::syntax::rewrite(sql)?;
        let sql = rewritten.as_deref().unwrap_or(sql);
        // Identity options in any order, as PostgreSQL takes them.
        let ordered = super::sequences::order_identity_options(sql);
        let sql = ordered.as_deref().unwrap_or(sql);
        let dialect = PostgreSqlDialect {};
        // Temporal joins' `FOR SYSTEM_TIME AS OF`, which this dialect does not parse.
        let temporal = super::system_time::strip(sql);
        let text = temporal.as_ref().map_or(sql, |(text, _)| text.as_str());
        Parser::new(&dialect)
            .with_recursion_limit(PARSER_RECURSION_LIMIT)
            .with_options(ParserOptions::new().with_trailing_commas(false))
            .try_with_sql(text)
            .and_then(|mut p| parse_statements(&mut p))
            .map_err(|e| Error::user(sqlstate::SYNTAX_ERROR, syntax_message(&e.to_string())))
            .and_then(|mut statements| {
                let mut placed = 0;
                for s in statements.iter_mut() {
                    if let Some((_, clauses)) = &temporal {
                        placed += match s {
                            Stmt::Sql(s) => super::system_time::restore(s, clauses),
                            Stmt::Eddy(
                                EddyStatement::CreateQuery(q) | EddyStatement::Explain(q),
                            ) => super::system_time::restore(&mut q.query, clauses),
                            Stmt::Eddy(_) => 0,
                        };
                    }
                    if let Stmt::Sql(s) = s {
                        check_depth(s)?;
                    }
                }
                if temporal.as_ref().is_some_and(|(_, c)| placed < c.len()) {
                    return Err(Error::user(
                        sqlstate::SYNTAX_ERROR,
                        "FOR SYSTEM_TIME AS OF <column> must follow a table's name or alias",
                    ));
                }
                Ok(statements)
            })
    }

    /// Plans a statement without running it.
    pub async fn prepare(&self, statement: impl Into<Stmt>) -> Result<Prepared> {
        let catalog_version = self.view.catalog().version;
        let stmt = Arc::new(statement.into());
        // Statements Eddy executes itself are not planned: only their row shape is known.
        let unplanned_schema = match stmt.as_ref() {
            Stmt::Sql(s) if super::sql_prepare::is_sql_prepare(s) => {
                Some(super::sql_prepare::result_schema(self, s)?)
            }
            Stmt::Sql(s) if is_planned(s) => None,
            Stmt::Sql(s) if super::cursors::is_cursor_statement(s) => {
                Some(super::cursors::fetch_schema(self, s)?)
            }
            Stmt::Sql(s) => Some(super::ddl::result_schema(s, &self.info.settings.read())),
            Stmt::Eddy(super::statement::EddyStatement::DeclareCursor(d)) => {
                // DECLARE returns no rows; a subscription's target is checked here.
                super::cursors::declared_schema(self, d)?;
                Some(None)
            }
            Stmt::Eddy(super::statement::EddyStatement::Subscribe(s)) => Some(Some(
                super::subscribe::schema(&*super::subscribe::target(self, &s.name)?),
            )),
            Stmt::Eddy(e) => Some(super::streaming::result_schema(e)),
        };
        if let Some(schema) = unplanned_schema {
            return Ok(Prepared {
                statement: stmt,
                plan: None,
                catalog_version,
                param_types: Vec::new(),
                schema,
                point_get: None,
                scalar: None,
                fast_insert: None,
                returning: None,
            });
        }
        let Stmt::Sql(statement) = stmt.as_ref() else {
            unreachable!("Eddy's statements returned above")
        };
        if let Some(reason) = refuse_in_failed_txn(self.status(), &stmt) {
            return Err(reason);
        }
        super::system_time::check_batch(statement)?;
        let plan = self.plan(statement).await?;
        let returning = match super::returning::query(statement)? {
            Some(query) => Some(self.plan(&query).await?),
            None => None,
        };
        let param_types = parameter_types(&plan)?;
        let output_schema = |plan: &LogicalPlan| -> SchemaRef {
            let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
            match naming::output_names(plan) {
                Some(names) => naming::rename(&schema, &names),
                None => schema,
            }
        };
        let schema = match (&plan, &returning) {
            (LogicalPlan::Dml(_), Some(r)) => Some(output_schema(r)),
            (LogicalPlan::Dml(_), None) => None,
            (plan, _) => Some(output_schema(plan)),
        };
        let point_get = match (&schema, &returning) {
            (Some(_), None) => PointGet::detect(statement, self)?,
            _ => None,
        };
        let scalar = match (&schema, &point_get, &returning) {
            (Some(_), None, None) => ScalarSelect::detect(&plan, &param_types, &self.ctx.state()),
            _ => None,
        };
        let fast_insert = match (&plan, &returning) {
            (LogicalPlan::Dml(_), None) => {
                super::point_write::FastInsert::detect(statement, &plan, self)?
            }
            _ => None,
        };
        Ok(Prepared {
            statement: stmt.clone(),
            plan: Some(plan),
            catalog_version,
            param_types,
            schema,
            point_get,
            scalar,
            fast_insert,
            returning,
        })
    }

    pub(super) async fn plan(&self, statement: &Statement) -> Result<LogicalPlan> {
        let (statement, target) = super::dml::prepare_statement(statement, self)?;
        let mut statement = super::pg_catalog::rewrite(statement);
        super::pg_functions::rewrite_like_escapes(&mut statement);
        naming::alias_duplicates(&mut statement);
        super::models::resolve_named_features(&mut statement, &self.view.catalog())?;
        let clauses = crate::cep::table::clauses(&statement);
        if !clauses.is_empty() {
            super::match_recognize::prepare(self, &statement, &self.match_tables).await?;
        }
        *self.view.dml_target.lock() = target;
        let state = self.ctx.state();
        let planned = state
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await;
        *self.view.dml_target.lock() = None;
        let mut prepared = self.match_tables.lock();
        for clause in &clauses {
            prepared.remove(clause);
        }
        drop(prepared);
        let plan = super::dml::pg_literal_casts(planned?)?;
        int4_literal_outputs(plan)
    }

    /// Parses, plans and runs one statement with no parameters.
    pub async fn run(&self, statement: impl Into<Stmt>) -> Result<QueryOutput> {
        let prepared = self.prepare(statement).await?;
        self.execute(&prepared, Vec::new()).await
    }

    /// Runs a prepared statement with its parameter values, inside the session's transaction
    /// rules: autocommit outside a block, 25P02 in a failed block.
    pub async fn execute(
        &self,
        prepared: &Prepared,
        params: Vec<ScalarValue>,
    ) -> Result<QueryOutput> {
        let statement = prepared.statement.as_ref();
        if let Some(tag) = self.transaction_control(statement).await? {
            return Ok(QueryOutput::Command(tag));
        }
        let status = self.status();
        if status == TxnStatus::Idle {
            // Rows stream after their statement commits: a transaction-scoped lock taken while
            // they did belongs to that finished statement.
            self.end_xact_locks();
        }
        if let Some(reason) = refuse_in_failed_txn(status, statement) {
            return Err(reason);
        }
        if status == TxnStatus::InTransaction {
            let result = self.execute_statement(prepared, params).await;
            if result.is_err() {
                *self.status.lock() = TxnStatus::Failed;
            }
            return result;
        }
        // Autocommit: a statement that lost a race at commit (another commit changed a row it
        // read) is run again from the start, as PostgreSQL re-evaluates a row it waited for.
        let mut attempt = 0;
        loop {
            let result = self.execute_statement(prepared, params.clone()).await;
            if result.is_err() {
                self.discard_txn();
                return result;
            }
            match self.commit_txn().await {
                Ok(()) => return result,
                Err(e)
                    if e.sqlstate() == sqlstate::SERIALIZATION_FAILURE
                        && attempt < AUTOCOMMIT_RETRIES =>
                {
                    attempt += 1;
                    tokio::task::yield_now().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A prepared point read (primary-key lookup) run at once, outside any future: what
    /// [`Session::execute`] would give for it, or `None` when the statement is not one (or
    /// its plan is stale, or the transaction failed) and must go through `execute`. Point
    /// reads are the hot path of a key-value workload; `execute`'s future holds every kind of
    /// statement and costs more to create and move than the read itself.
    pub fn execute_point_read(
        &self,
        prepared: &Prepared,
        params: &[ScalarValue],
    ) -> Option<Result<RecordBatch>> {
        if prepared.point_get.is_none() || prepared.catalog_version != self.view.catalog().version {
            return None;
        }
        let status = self.status();
        match status {
            TxnStatus::Failed => return None,
            TxnStatus::Idle => self.end_xact_locks(),
            TxnStatus::InTransaction => {}
        }
        let result = self.point_read(prepared, params.to_vec())?;
        match status {
            // Autocommit: the read wrote nothing, so its transaction ends without a commit.
            TxnStatus::Idle => self.discard_txn(),
            _ if result.is_err() => *self.status.lock() = TxnStatus::Failed,
            _ => {}
        }
        Some(result)
    }

    /// The row of a prepared point read with its plan current, read in the transaction;
    /// `None` for other statements.
    fn point_read(
        &self,
        prepared: &Prepared,
        params: Vec<ScalarValue>,
    ) -> Option<Result<RecordBatch>> {
        let (Some(point_get), Some(schema)) = (&prepared.point_get, &prepared.schema) else {
            return None;
        };
        Some(
            bind_values(&prepared.param_types, params)
                .and_then(|params| point_get.execute(self, &params, schema)),
        )
    }

    /// Starts the implicit transaction PostgreSQL wraps around a multi-statement simple query:
    /// the statements commit together at the end, or none of them does.
    pub fn begin_implicit(&self) {
        let mut status = self.status.lock();
        if *status == TxnStatus::Idle {
            *status = TxnStatus::InTransaction;
        }
    }

    /// Ends the implicit transaction: commits if every statement succeeded.
    pub async fn end_implicit(&self, success: bool) -> Result<()> {
        *self.status.lock() = TxnStatus::Idle;
        if success {
            self.commit_txn().await
        } else {
            self.discard_txn();
            Ok(())
        }
    }

    /// BEGIN, COMMIT, ROLLBACK; `None` for every other statement.
    async fn transaction_control(&self, statement: &Stmt) -> Result<Option<CommandTag>> {
        let status = self.status();
        let Stmt::Sql(statement) = statement else {
            return Ok(None);
        };
        Ok(Some(match statement {
            Statement::StartTransaction { .. } => {
                if status == TxnStatus::Idle {
                    *self.status.lock() = TxnStatus::InTransaction;
                }
                CommandTag::new("BEGIN")
            }
            Statement::Commit { .. } => {
                *self.status.lock() = TxnStatus::Idle;
                match status {
                    TxnStatus::Failed => {
                        self.discard_txn();
                        CommandTag::new("ROLLBACK")
                    }
                    _ => {
                        self.commit_txn().await?;
                        CommandTag::new("COMMIT")
                    }
                }
            }
            Statement::Rollback {
                savepoint: None, ..
            } => {
                *self.status.lock() = TxnStatus::Idle;
                self.discard_txn();
                CommandTag::new("ROLLBACK")
            }
            Statement::Savepoint { name } => {
                require_block(status, "SAVEPOINT")?;
                if let Some(reason) = refuse_in_failed_txn(status, &Stmt::Sql(statement.clone())) {
                    return Err(reason);
                }
                self.txn.lock().savepoint(super::ddl::ident(name));
                CommandTag::new("SAVEPOINT")
            }
            Statement::ReleaseSavepoint { name } => {
                require_block(status, "RELEASE SAVEPOINT")?;
                if let Some(reason) = refuse_in_failed_txn(status, &Stmt::Sql(statement.clone())) {
                    return Err(reason);
                }
                let released = self.txn.lock().release_savepoint(&super::ddl::ident(name));
                if released.is_err() {
                    *self.status.lock() = TxnStatus::Failed;
                }
                released?;
                CommandTag::new("RELEASE")
            }
            Statement::Rollback {
                savepoint: Some(name),
                ..
            } => {
                require_block(status, "ROLLBACK TO SAVEPOINT")?;
                // Returning to a savepoint ends a failed state: the failure came after it.
                let restored = self
                    .txn
                    .lock()
                    .rollback_to_savepoint(&super::ddl::ident(name));
                *self.status.lock() = match restored {
                    Ok(()) => TxnStatus::InTransaction,
                    Err(_) => TxnStatus::Failed,
                };
                restored?;
                CommandTag::new("ROLLBACK")
            }
            _ => return Ok(None),
        }))
    }

    fn discard_txn(&self) {
        *self.txn.lock() = Txn::default();
        self.cursors.close_all();
        self.end_xact_locks();
    }

    /// Transaction-scoped advisory locks end with the transaction.
    fn end_xact_locks(&self) {
        let (locks, pid) = (&self.engine.advisory, self.info.backend_pid);
        if locks.holds(pid, super::advisory::Scope::Transaction) {
            locks.release(pid, Some(super::advisory::Scope::Transaction));
        }
    }

    async fn commit_txn(&self) -> Result<()> {
        self.end_xact_locks();
        self.cursors.close_all();
        let mut txn = std::mem::take(&mut *self.txn.lock());
        let notes = txn.take_notifications();
        if !txn.is_empty() {
            let engine = self.engine.clone();
            tokio::task::spawn_blocking(move || engine.commit(txn))
                .await
                .map_err(|e| Error::internal(format!("commit task failed: {e}")))??;
        }
        self.engine.notifier.publish(self.info.backend_pid, notes);
        Ok(())
    }

    async fn execute_statement(
        &self,
        prepared: &Prepared,
        params: Vec<ScalarValue>,
    ) -> Result<QueryOutput> {
        let statement = match prepared.statement.as_ref() {
            Stmt::Eddy(e) => return Box::pin(super::streaming::execute(self, e)).await,
            Stmt::Sql(s) if super::sql_prepare::is_sql_prepare(s) => {
                return Box::pin(super::sql_prepare::execute(self, s)).await;
            }
            Stmt::Sql(s) if super::cursors::is_cursor_statement(s) => {
                return Box::pin(super::cursors::run(self, s)).await;
            }
            Stmt::Sql(s) => s,
        };
        let Some(plan) = &prepared.plan else {
            return Box::pin(super::ddl::execute(self, statement)).await;
        };
        let current = prepared.catalog_version == self.view.catalog().version;
        if current
            && prepared.point_get.is_some()
            && let (Some(batch), Some(schema)) =
                (self.point_read(prepared, params.clone()), &prepared.schema)
        {
            return rows(schema.clone(), vec![batch?]);
        }
        if let (Some(insert), true) = (&prepared.fast_insert, current) {
            let bound = bind_values(&prepared.param_types, params.clone())?;
            if let Some(tag) = insert.execute(self, &bound)? {
                return Ok(QueryOutput::Command(tag));
            }
        }
        // A FROM-less SELECT reads no relation, so catalog changes leave it valid (models are
        // looked up when it runs: after ALTER MODEL it scores with the new active version).
        if let (Some(scalar), Some(schema)) = (&prepared.scalar, &prepared.schema) {
            let params = bind_values(&prepared.param_types, params)?;
            let batch = scalar.execute(&params, schema)?;
            return rows(schema.clone(), vec![batch]);
        }
        // Boxed, as the other kinds of statement above: the fast paths keep this future small.
        Box::pin(self.execute_planned(statement, prepared, plan, params, current)).await
    }

    /// A statement through DataFusion's plan: a query, or DML.
    async fn execute_planned(
        &self,
        statement: &Statement,
        prepared: &Prepared,
        plan: &LogicalPlan,
        params: Vec<ScalarValue>,
        current: bool,
    ) -> Result<QueryOutput> {
        // A plan made before a catalog change may name dropped objects: plan again.
        let plan = if !current {
            self.plan(statement).await?
        } else {
            plan.clone()
        };
        let plan = if prepared.param_types.is_empty() && params.is_empty() {
            plan
        } else {
            bind(plan, &prepared.param_types, params.clone())?
        };
        match plan {
            LogicalPlan::Dml(dml) => {
                let returning = match (&prepared.returning, current) {
                    (Some(plan), true) => Some(plan.clone()),
                    (Some(_), false) => match super::returning::query(statement)? {
                        Some(query) => Some(self.plan(&query).await?),
                        None => None,
                    },
                    (None, _) => None,
                };
                let items = super::returning::items(statement);
                let output = super::dml::execute(self, &dml, statement, items).await?;
                match returning {
                    None => Ok(QueryOutput::Command(output.tag)),
                    Some(plan) => {
                        let plan = if prepared.param_types.is_empty() {
                            plan
                        } else {
                            bind(plan, &prepared.param_types, params.clone())?
                        };
                        super::returning::output(self, plan, output).await
                    }
                }
            }
            plan => {
                let names = naming::output_names(&plan);
                let df = DataFrame::new(self.ctx.state(), plan);
                let mut schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                if let Some(names) = names {
                    schema = naming::rename(&schema, &names);
                }
                let stream = df.execute_stream().await?;
                Ok(QueryOutput::Rows {
                    schema: schema.clone(),
                    stream: self.watch(schema, stream),
                    command: None,
                })
            }
        }
    }

    /// The transaction's open cursors.
    pub(super) fn cursors(&self) -> &super::cursors::Cursors {
        &self.cursors
    }

    /// Statements prepared with SQL's PREPARE.
    pub(super) fn sql_prepared(&self) -> &super::sql_prepare::SqlPrepared {
        &self.sql_prepared
    }

    /// Runs a statement inside the current transaction, without autocommit or transaction
    /// control: a statement prepared with SQL's PREPARE (inside its EXECUTE), a cursor's query
    /// (its rows are read as FETCH asks).
    pub(super) fn execute_in_txn<'a>(
        &'a self,
        prepared: &'a Prepared,
        params: Vec<ScalarValue>,
    ) -> futures::future::BoxFuture<'a, Result<QueryOutput>> {
        Box::pin(self.execute_statement(prepared, params))
    }

    /// Runs one statement inside the current transaction, without autocommit or transaction
    /// control: the actions a foreign key takes on referencing rows.
    pub(super) fn run_nested(
        &self,
        sql: String,
    ) -> futures::future::BoxFuture<'_, Result<QueryOutput>> {
        Box::pin(async move {
            let statement = Self::parse(&sql)?
                .pop()
                .ok_or_else(|| Error::internal("an empty nested statement"))?;
            let prepared = self.prepare(statement).await?;
            self.execute_statement(&prepared, Vec::new()).await
        })
    }

    /// Gives the batches the output names, and marks the transaction failed if the stream
    /// fails after the statement returned.
    fn watch(
        &self,
        schema: SchemaRef,
        stream: SendableRecordBatchStream,
    ) -> SendableRecordBatchStream {
        let flag = self.stream_failed.clone();
        let named = schema.clone();
        // In autocommit the statement's transaction ends with its rows: so do its
        // transaction-scoped advisory locks.
        let autocommit = (*self.status.lock() == TxnStatus::Idle)
            .then(|| (self.engine.advisory.clone(), self.info.backend_pid));
        let end = futures::stream::once(async move {
            if let Some((locks, pid)) = autocommit {
                locks.release(pid, Some(super::advisory::Scope::Transaction));
            }
        })
        .filter_map(|()| async { None });
        let stream = stream.chain(end).map(move |item| {
            if item.is_err() {
                flag.store(true, Ordering::SeqCst);
            }
            let batch = item?;
            let options = datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(batch.num_rows()));
            Ok(RecordBatch::try_new_with_options(
                named.clone(),
                batch.columns().to_vec(),
                &options,
            )?)
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, stream))
    }

    pub(super) fn sync_default_schema(&self) {
        let schema = self
            .info
            .current_schema()
            .unwrap_or_else(|| DEFAULT_SCHEMA.to_string());
        let state = self.ctx.state_ref();
        state
            .write()
            .config_mut()
            .options_mut()
            .catalog
            .default_schema = schema;
    }

    pub(super) fn info(&self) -> &Arc<SessionInfo> {
        &self.info
    }
}

/// Rows from a list of batches, as a statement result.
pub(super) fn rows(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<QueryOutput> {
    let stream = MemoryStream::try_new(batches, schema.clone(), None)?;
    Ok(QueryOutput::Rows {
        schema,
        stream: Box::pin(stream),
        command: None,
    })
}

/// A single-column text result (SHOW).
pub(super) fn text_rows(column: &str, values: Vec<String>) -> Result<QueryOutput> {
    let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, true)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(values))])?;
    rows(schema, vec![batch])
}

/// Whether a statement begins or ends a transaction block.
pub fn is_transaction_control(statement: &Stmt) -> bool {
    let Stmt::Sql(statement) = statement else {
        return false;
    };
    matches!(
        statement,
        Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
    )
}

fn is_planned(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::Query(_)
            | Statement::Insert(_)
            | Statement::Update { .. }
            | Statement::Delete(_)
            | Statement::Explain { .. }
    )
}

/// Savepoints exist only inside a transaction block (25P01 outside one, as in PostgreSQL).
fn require_block(status: TxnStatus, what: &str) -> Result<()> {
    if status == TxnStatus::Idle {
        return Err(Error::user(
            sqlstate::NO_ACTIVE_SQL_TRANSACTION,
            format!("{what} can only be used in transaction blocks"),
        ));
    }
    Ok(())
}

fn refuse_in_failed_txn(status: TxnStatus, statement: &Stmt) -> Option<Error> {
    let ends_block = matches!(
        statement,
        Stmt::Sql(Statement::Commit { .. } | Statement::Rollback { .. })
    );
    (status == TxnStatus::Failed && !ends_block).then(|| {
        Error::user(
            sqlstate::IN_FAILED_SQL_TRANSACTION,
            "current transaction is aborted, commands ignored until end of transaction block",
        )
    })
}

/// `SELECT 1` returns an integer (int4), as in PostgreSQL, not DataFusion's bigint (which
/// node-postgres hands to applications as a string): the select list's integer literals
/// that fit are int4.
fn int4_literal_outputs(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::logical_expr::{Expr, Projection};
    let LogicalPlan::Projection(p) = &plan else {
        return Ok(plan);
    };
    let narrow = |e: &Expr| -> Option<Expr> {
        let (value, alias) = match e {
            Expr::Literal(ScalarValue::Int64(Some(v)), _) => (*v, None),
            Expr::Alias(a) => match a.expr.as_ref() {
                Expr::Literal(ScalarValue::Int64(Some(v)), _) => (*v, Some(a.name.clone())),
                _ => return None,
            },
            _ => return None,
        };
        let v = i32::try_from(value).ok()?;
        let literal = Expr::Literal(ScalarValue::Int32(Some(v)), None);
        Some(match alias {
            Some(name) => literal.alias(name),
            None => literal,
        })
    };
    if !p.expr.iter().any(|e| narrow(e).is_some()) {
        return Ok(plan);
    }
    let exprs = p
        .expr
        .iter()
        .map(|e| narrow(e).unwrap_or_else(|| e.clone()))
        .collect();
    Ok(LogicalPlan::Projection(Projection::try_new(
        exprs,
        p.input.clone(),
    )?))
}

/// `$1..$n` in order, with the types DataFusion inferred for them.
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<Option<FieldRef>>> {
    let types = plan.get_parameter_fields()?;
    let mut indexed: Vec<(usize, Option<FieldRef>)> = Vec::with_capacity(types.len());
    for (name, ty) in types {
        let idx = name
            .trim_start_matches('$')
            .parse::<usize>()
            .map_err(|_| Error::not_supported(format!("parameter name {name}")))?;
        indexed.push((idx, ty));
    }
    let n = indexed.iter().map(|(i, _)| *i).max().unwrap_or(0);
    let mut out = vec![None; n];
    for (i, ty) in indexed {
        if i >= 1 {
            out[i - 1] = ty;
        }
    }
    // LIMIT $1 / OFFSET $2: bigints (node-postgres sends every parameter untyped).
    if out.iter().any(Option::is_none) {
        use datafusion::common::tree_node::TreeNodeRecursion;
        use datafusion::logical_expr::Expr;
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::Limit(limit) = node {
                for e in [&limit.skip, &limit.fetch].into_iter().flatten() {
                    if let Expr::Placeholder(p) = e.as_ref()
                        && let Some(slot) =
                            p.id.trim_start_matches('$')
                                .parse::<usize>()
                                .ok()
                                .and_then(|i| i.checked_sub(1))
                                .and_then(|i| out.get_mut(i))
                        && slot.is_none()
                    {
                        *slot = Some(Arc::new(Field::new(&p.id, DataType::Int64, true)));
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
    }
    // `$1::real` (or CAST($1 AS real)) with nothing else to go by: the parameter is a real,
    // as PostgreSQL infers it, so drivers send it as one.
    if out.iter().any(Option::is_none) {
        for (id, ty) in cast_placeholders(plan)? {
            if let Some(slot) = id
                .trim_start_matches('$')
                .parse::<usize>()
                .ok()
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| out.get_mut(i))
                && slot.is_none()
            {
                *slot = Some(Arc::new(Field::new(id, ty, true)));
            }
        }
    }
    Ok(out)
}

/// Untyped placeholders whose type the statement implies, with that type: the direct operand
/// of a cast (`$1::real`), or an argument of a function whose signature names one type for
/// its position (`pg_advisory_lock($1)` takes a bigint).
fn cast_placeholders(plan: &LogicalPlan) -> Result<Vec<(String, DataType)>> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Cast, Expr, TryCast};
    let untyped = |e: &Expr| match e {
        Expr::Placeholder(p) if p.field.is_none() => Some(p.id.clone()),
        _ => None,
    };
    let mut found = Vec::new();
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                match e {
                    Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field }) => {
                        if let Some(id) = untyped(expr) {
                            found.push((id, field.data_type().clone()));
                        }
                    }
                    Expr::ScalarFunction(f) => {
                        let types =
                            signature_types(&f.func.signature().type_signature, f.args.len());
                        for (arg, ty) in f.args.iter().zip(types.unwrap_or_default()) {
                            if let Some(id) = untyped(arg) {
                                found.push((id, ty));
                            }
                        }
                    }
                    _ => {}
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(found)
}

/// The argument types a signature fixes for `n` arguments: an exact list of that length (the
/// first, among alternatives).
fn signature_types(
    signature: &datafusion::logical_expr::TypeSignature,
    n: usize,
) -> Option<Vec<DataType>> {
    use datafusion::logical_expr::TypeSignature;
    match signature {
        TypeSignature::Exact(types) if types.len() == n => Some(types.clone()),
        TypeSignature::OneOf(all) => all.iter().find_map(|s| signature_types(s, n)),
        _ => None,
    }
}

/// Substitutes parameter values, cast to the types the plan expects.
fn bind(
    plan: LogicalPlan,
    types: &[Option<FieldRef>],
    params: Vec<ScalarValue>,
) -> Result<LogicalPlan> {
    let values = bind_values(types, params)?;
    Ok(plan.with_param_values(ParamValues::from(values))?)
}

/// Parameter values cast to the types the plan expects.
fn bind_values(types: &[Option<FieldRef>], params: Vec<ScalarValue>) -> Result<Vec<ScalarValue>> {
    if params.len() != types.len() {
        return Err(Error::user(
            sqlstate::PROTOCOL_VIOLATION,
            format!(
                "bind message supplies {} parameters, but prepared statement requires {}",
                params.len(),
                types.len()
            ),
        ));
    }
    params
        .into_iter()
        .zip(types)
        .map(|(v, field)| match field.as_ref().map(|f| f.data_type()) {
            Some(ty) if v.data_type() != *ty => v.cast_to(ty).map_err(|e| {
                let range = match ty {
                    DataType::Int16 => Some("smallint"),
                    DataType::Int32 => Some("integer"),
                    DataType::Int64 => Some("bigint"),
                    _ => None,
                };
                // A number too large for the parameter's integer type.
                if let (Some(name), true) = (range, v.data_type().is_numeric()) {
                    return Error::user(
                        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                        format!("{name} out of range"),
                    );
                }
                Error::user(
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                    format!("invalid input for parameter of type {ty}: {e}"),
                )
            }),
            _ => Ok(v),
        })
        .collect::<Result<Vec<_>>>()
}

/// Deepest expression tree a statement may have. Operator chains (`1 + 1 + ...`) parse
/// without recursion but plan recursively: past this depth a statement is refused rather
/// than risking the planner's stack.
const MAX_EXPR_DEPTH: usize = 256;

/// sqlparser's statement loop, with Eddy's own statements tried first.
fn parse_statements(parser: &mut Parser<'_>) -> std::result::Result<Vec<Stmt>, ParserError> {
    let mut statements = Vec::new();
    loop {
        let mut delimited = statements.is_empty();
        while parser.consume_token(&Token::SemiColon) {
            delimited = true;
        }
        if parser.peek_token().token == Token::EOF {
            break;
        }
        if !delimited {
            return parser.expected("end of statement", parser.peek_token());
        }
        if let Some(s) = super::statement::parse_user_statement(parser)? {
            statements.push(Stmt::Sql(s));
            continue;
        }
        if let Some(s) = super::statement::parse_fetch_without_from(parser)? {
            statements.push(Stmt::Sql(s));
            continue;
        }
        if let Some(s) = super::sequences::parse_create(parser)? {
            statements.push(Stmt::Sql(s));
            continue;
        }
        statements.push(match parse_eddy(parser)? {
            Some(s) => Stmt::Eddy(s),
            None => Stmt::Sql(parser.parse_statement()?),
        });
    }
    Ok(statements)
}

fn check_depth(statement: &Statement) -> Result<()> {
    use datafusion::sql::sqlparser::ast::{Expr, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Depth(usize);
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.0 += 1;
            if self.0 > MAX_EXPR_DEPTH {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.0 -= 1;
            ControlFlow::Continue(())
        }
    }
    match statement.visit(&mut Depth(0)) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(Error::user(
            "54001",
            format!(
                "statement is too complex: expressions nested deeper than {MAX_EXPR_DEPTH} levels"
            ),
        )),
    }
}

fn syntax_message(msg: &str) -> String {
    let msg = msg.strip_prefix("sql parser error: ").unwrap_or(msg);
    format!("syntax error: {msg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_comment_only_strings_have_no_statements() {
        assert!(Session::parse(";").unwrap().is_empty());
        assert!(Session::parse("-- ping").unwrap().is_empty());
        assert!(Session::parse("/* x */ ;").unwrap().is_empty());
        assert_eq!(Session::parse("select 1; select 2").unwrap().len(), 2);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let sql = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        let err = Session::parse(&sql).unwrap_err();
        assert_eq!(err.sqlstate(), sqlstate::SYNTAX_ERROR);
    }
}
