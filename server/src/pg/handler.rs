//! The pgwire handlers: startup (ParameterStatus, backend key for cancellation), the simple
//! query protocol, and the extended protocol (Parse/Bind/Describe/Execute).
//!
//! Each connection owns one [`Session`], kept in the connection's session extensions. Engine
//! errors become ErrorResponses with their SQLSTATE; a panic inside a statement is caught and
//! reported as XX000, and the connection and server go on.

use std::fmt::Debug;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::scalar::ScalarValue;
use eddy_sql::auth::{ScramError, ScramExchange};
use eddy_sql::catalog::RoleDef;
use eddy_sql::engine::is_transaction_control;
use eddy_sql::error::sqlstate;
use eddy_sql::{CommandTag, Engine, Error, Prepared, QueryOutput, Session, TxnStatus};
use futures::{FutureExt, Sink, SinkExt, StreamExt, stream};
use parking_lot::Mutex;
use pgwire::api::auth::{
    ServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, ConnectionManager, METADATA_DATABASE,
    METADATA_USER, PgWireConnectionState, PgWireServerHandlers, Type,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::extendedquery::{Bind, Describe, Execute};
use pgwire::messages::startup::{Authentication as AuthRequest, SecretKey};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::auth::{Method, Pending, PendingAuth, Throttle};
use super::copy_out::{self, CopyOutRows};
use super::encode;
use super::errors::{error_info, fatal_error, to_pgwire, user_error};

pub struct EddyHandler {
    engine: Arc<Engine>,
    manager: Arc<ConnectionManager>,
    parser: Arc<EddyParser>,
    auth: Arc<Authentication>,
    slots: Arc<super::slots::Slots>,
}

/// How the listener authenticates clients.
pub struct Authentication {
    pub method: Method,
    /// The `tls-server-end-point` channel binding of the listener's certificate.
    pub end_point: Option<Vec<u8>>,
    pub throttle: Throttle,
    /// The server's secret for the mock salts of unknown roles (kept in the data dir, so a
    /// role that does not exist gets the same salt across restarts, as a real one does).
    pub mock_nonce: Vec<u8>,
}

impl EddyHandler {
    pub fn new(
        engine: Arc<Engine>,
        manager: Arc<ConnectionManager>,
        auth: Arc<Authentication>,
        slots: Arc<super::slots::Slots>,
    ) -> Self {
        Self {
            engine,
            manager,
            parser: Arc::new(EddyParser),
            auth,
            slots,
        }
    }
}

/// A statement parsed and planned by Parse, with the parameter types we describe.
#[derive(Clone)]
pub struct EddyStatement {
    prepared: Arc<Prepared>,
    param_types: Vec<Type>,
}

fn session<C: ClientInfo + ?Sized>(client: &C) -> PgWireResult<Arc<Session>> {
    client.session_extensions().get::<Session>().ok_or_else(|| {
        user_error(
            sqlstate::PROTOCOL_VIOLATION,
            "no session: startup not finished",
        )
    })
}

/// Runs a statement future, turning a panic into an internal error.
async fn guarded<T>(
    fut: impl std::future::Future<Output = eddy_sql::Result<T>>,
) -> eddy_sql::Result<T> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            tracing::error!("statement panicked: {what}");
            Err(Error::internal(format!(
                "statement failed unexpectedly: {what}"
            )))
        }
    }
}

/// When the statement starting now must be done (`statement_timeout`), if there is a limit.
fn statement_deadline(session: &Session) -> Option<tokio::time::Instant> {
    let timeout = session.settings().timeout("statement_timeout")?;
    Some(tokio::time::Instant::now() + timeout)
}

fn statement_timed_out() -> Error {
    Error::user(
        sqlstate::QUERY_CANCELED,
        "canceling statement due to statement timeout",
    )
}

/// Runs a statement future until its deadline: past it, the statement is dropped (as a
/// cancel does) and fails with 57014.
async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    fut: impl std::future::Future<Output = eddy_sql::Result<T>>,
) -> eddy_sql::Result<T> {
    match deadline {
        None => fut.await,
        Some(at) => tokio::time::timeout_at(at, fut)
            .await
            .unwrap_or_else(|_| Err(statement_timed_out())),
    }
}

fn command_response(tag: CommandTag) -> Response {
    let pg_tag = match tag.rows {
        Some(n) => Tag::new(&tag.command).with_rows(n),
        None => Tag::new(&tag.command),
    };
    match tag.command.as_str() {
        "BEGIN" => Response::TransactionStart(pg_tag),
        "COMMIT" | "ROLLBACK" => Response::TransactionEnd(pg_tag),
        _ => Response::Execution(pg_tag),
    }
}

/// Streams the rows of a result; the first batch is computed before returning, so that the
/// query's heavy work happens while cancellation can still interrupt it.
async fn rows_response(
    fields: Arc<Vec<FieldInfo>>,
    mut batches: SendableRecordBatchStream,
    materialize: bool,
    deadline: Option<tokio::time::Instant>,
) -> eddy_sql::Result<Response> {
    let first = batches.next().await.transpose()?;
    let mut ready = Vec::new();
    if let Some(b) = &first {
        ready.extend(encode::encode_batch(&fields, b));
    }
    if materialize {
        while let Some(b) = batches.next().await {
            ready.extend(encode::encode_batch(&fields, &b?));
        }
        return Ok(Response::Query(QueryResponse::new(
            fields,
            stream::iter(ready),
        )));
    }
    let rest_fields = fields.clone();
    let rest = batches.flat_map(move |b| {
        let rows = match b {
            Ok(b) => encode::encode_batch(&rest_fields, &b),
            Err(e) => vec![Err(to_pgwire(Error::from(e)))],
        };
        stream::iter(rows)
    });
    let rest = match deadline {
        None => rest.boxed(),
        // The rows still to compute stop at the statement's deadline, with its error.
        Some(at) => stream::unfold(
            (rest.boxed(), Box::pin(tokio::time::sleep_until(at)), false),
            |(mut rest, mut sleep, done)| async move {
                if done {
                    return None;
                }
                tokio::select! {
                    row = rest.next() => row.map(|r| (r, (rest, sleep, false))),
                    _ = &mut sleep => Some((Err(to_pgwire(statement_timed_out())), (rest, sleep, true))),
                }
            },
        )
        .boxed(),
    };
    Ok(Response::Query(QueryResponse::new(
        fields,
        stream::iter(ready).chain(rest),
    )))
}

/// The row count of this connection's COPY TO.
pub(super) fn copy_rows<C: ClientInfo>(client: &C) -> Arc<CopyOutRows> {
    client
        .session_extensions()
        .get_or_insert_with(CopyOutRows::default)
}

async fn output_response(
    output: QueryOutput,
    format: &Format,
    materialize: bool,
    deadline: Option<tokio::time::Instant>,
    copy_rows: Arc<CopyOutRows>,
) -> eddy_sql::Result<Response> {
    match output {
        QueryOutput::CopyOut {
            schema,
            stream,
            format,
        } => copy_out::response(&schema, stream, format, copy_rows)
            .map(Response::CopyOut)
            .map_err(|e| Error::internal(format!("cannot copy out: {e}"))),
        QueryOutput::Command(tag) => Ok(command_response(tag)),
        QueryOutput::CopyIn { columns, binary } => Ok(Response::CopyIn(CopyResponse::new(
            i8::from(binary),
            columns,
            futures::stream::empty(),
        ))),
        QueryOutput::Rows {
            schema,
            stream,
            command,
        } => {
            let fields = encode::fields(&schema, format)
                .map_err(|e| Error::internal(format!("cannot describe result: {e}")))?;
            let mut response =
                rows_response(Arc::new(fields), stream, materialize, deadline).await?;
            if let (Some(tag), Response::Query(q)) = (command, &mut response) {
                q.set_command_tag(&tag.command);
            }
            Ok(response)
        }
    }
}

/// COPY FROM STDIN: the data goes to the session, which writes it as it arrives.
#[async_trait]
impl CopyHandler for EddyHandler {
    async fn on_copy_data<C>(
        &self,
        client: &mut C,
        copy_data: pgwire::messages::copy::CopyData,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(client)?;
        let decode = |raw: &[u8], field: &arrow::datatypes::FieldRef| {
            let ty = encode::pg_type(field)
                .map_err(|e| Error::internal(format!("no PostgreSQL type: {e}")))?;
            super::params::from_binary(raw, &ty)
        };
        tokio::task::block_in_place(|| session.copy_data(&copy_data.data, &decode));
        Ok(())
    }

    async fn on_copy_done<C>(
        &self,
        client: &mut C,
        _done: pgwire::messages::copy::CopyDone,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(client)?;
        let rows = session.copy_done().await.map_err(to_pgwire)?;
        let tag = Tag::new("COPY").with_rows(rows);
        client
            .send(PgWireBackendMessage::CommandComplete(tag.into()))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(
        &self,
        client: &mut C,
        fail: pgwire::messages::copy::CopyFail,
    ) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match session(client) {
            Ok(session) => to_pgwire(session.copy_fail(&fail.message).await),
            Err(e) => e,
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for EddyHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(client)?;
        let statements = match Session::parse(query) {
            Ok(s) => s,
            Err(e) => {
                session.note_error();
                return Ok(vec![Response::Error(Box::new(error_info(&e)))]);
            }
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let count = statements.len();
        let mut responses = Vec::with_capacity(count);
        // Several statements outside a transaction block run as one implicit transaction,
        // unless the string manages transactions itself.
        let implicit = count > 1
            && session.status() == TxnStatus::Idle
            && !statements.iter().any(is_transaction_control);
        if implicit {
            session.begin_implicit();
        }
        let mut failed = false;
        let copy_rows = copy_rows(client);
        for (i, statement) in statements.into_iter().enumerate() {
            // Later statements must not run before earlier results are read.
            let materialize = i + 1 < count;
            let deadline = statement_deadline(&session);
            let result = within(
                deadline,
                guarded(async {
                    let output = session.run(statement).await?;
                    output_response(
                        output,
                        &Format::UnifiedText,
                        materialize,
                        deadline,
                        copy_rows.clone(),
                    )
                    .await
                }),
            )
            .await;
            match result {
                // A first statement's COPY TO goes out now, with its exact `COPY n` (pgwire
                // would count the header as a row).
                Ok(Response::CopyOut(copy)) if i == 0 => {
                    if let Err(e) = copy_out::send(client, copy, &copy_rows).await {
                        let PgWireError::UserError(info) = e else {
                            return Err(e);
                        };
                        session.note_error();
                        responses.push(Response::Error(info));
                        failed = true;
                        break;
                    }
                }
                Ok(r) => responses.push(r),
                Err(e) => {
                    session.note_error();
                    responses.push(Response::Error(Box::new(error_info(&e))));
                    failed = true;
                    break;
                }
            }
        }
        if implicit && let Err(e) = session.end_implicit(!failed).await {
            responses.push(Response::Error(Box::new(error_info(&e))));
        }
        Ok(responses)
    }
}

pub struct EddyParser;

#[async_trait]
impl QueryParser for EddyParser {
    type Statement = EddyStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<EddyStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = session(client)?;
        let mut statements = Session::parse(sql).map_err(|e| {
            session.note_error();
            to_pgwire(e)
        })?;
        if statements.is_empty() {
            return Ok(None);
        }
        if statements.len() > 1 {
            return Err(user_error(
                sqlstate::SYNTAX_ERROR,
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let prepared = guarded(session.prepare(statements.remove(0)))
            .await
            .map_err(|e| {
                session.note_error();
                to_pgwire(e)
            })?;
        let n = prepared.param_types.len().max(types.len());
        let param_types = (0..n)
            .map(|i| match types.get(i).cloned().flatten() {
                Some(t) if t != Type::UNKNOWN => t,
                _ => prepared
                    .param_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .and_then(|f| encode::pg_type(&f).ok())
                    .unwrap_or(Type::TEXT),
            })
            .collect();
        Ok(Some(EddyStatement {
            prepared: Arc::new(prepared),
            param_types,
        }))
    }

    fn get_parameter_types(&self, stmt: &EddyStatement) -> PgWireResult<Vec<Type>> {
        Ok(stmt.param_types.clone())
    }

    fn get_result_schema(
        &self,
        stmt: &EddyStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.prepared.schema {
            Some(schema) => encode::fields(schema, format.unwrap_or(&Format::UnifiedText)),
            None => Ok(Vec::new()),
        }
    }
}

/// Decodes the bound parameters. Text-format values stay text and are cast to the inferred
/// type when bound; binary values are read by the type Parse described.
fn parameters(portal: &Portal<EddyStatement>) -> PgWireResult<Vec<ScalarValue>> {
    let types = &portal.statement.statement.param_types;
    (0..portal.parameter_len())
        .map(|i| {
            let ty = types.get(i).unwrap_or(&Type::UNKNOWN);
            let Some(raw) = &portal.parameters[i] else {
                return Ok(ScalarValue::Null);
            };
            if portal.parameter_format.is_binary(i) {
                super::params::from_binary(raw, ty)
            } else {
                super::params::from_text(raw, ty)
            }
            .map_err(to_pgwire)
        })
        .collect()
}

#[async_trait]
impl ExtendedQueryHandler for EddyHandler {
    type Statement = EddyStatement;
    type QueryParser = EddyParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        super::execute::bind::<Self, C>(client, message).await
    }

    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        super::execute::describe(self, client, message).await
    }

    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        super::execute::execute(self, client, message).await
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<EddyStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session(client)?;
        let params = parameters(portal).inspect_err(|_| session.note_error())?;
        let prepared = portal.statement.statement.prepared.clone();
        let format = portal.result_column_format.clone();
        if let Some(response) = point_read(&session, &prepared, &params, &format) {
            return response;
        }
        let deadline = statement_deadline(&session);
        // Boxed: the future of a statement of any kind is large, and moving it inline would
        // cost every execution, the point reads above too.
        let result = Box::pin(within(
            deadline,
            guarded(async {
                let output = session.execute(&prepared, params).await?;
                output_response(output, &format, false, deadline, copy_rows(client)).await
            }),
        ))
        .await;
        result.map_err(|e| {
            session.note_error();
            to_pgwire(e)
        })
    }
}

/// A prepared point read answered at once (see [`Session::execute_point_read`]); `None` for
/// any other statement.
fn point_read(
    session: &Session,
    prepared: &Prepared,
    params: &[ScalarValue],
    format: &Format,
) -> Option<PgWireResult<Response>> {
    let schema = prepared.schema.as_ref()?;
    let read = std::panic::catch_unwind(AssertUnwindSafe(|| {
        session.execute_point_read(prepared, params)
    }))
    .unwrap_or_else(|_| Some(Err(Error::internal("a point read panicked"))))?;
    let response = read.and_then(|batch| {
        let fields = Arc::new(
            encode::fields(schema, format)
                .map_err(|e| Error::internal(format!("cannot describe result: {e}")))?,
        );
        let rows = encode::encode_batch(&fields, &batch);
        Ok(Response::Query(QueryResponse::new(
            fields,
            stream::iter(rows),
        )))
    });
    Some(response.map_err(|e| {
        session.note_error();
        to_pgwire(e)
    }))
}

/// Under trust, the role a connection logs in as: an unknown role or one without LOGIN is
/// refused with 28000, as PostgreSQL does.
fn trusted_role(engine: &Engine, user: &str) -> PgWireResult<Arc<RoleDef>> {
    match engine.catalog().role(user) {
        None => Err(fatal_error(
            "28000",
            format!("role \"{user}\" does not exist"),
        )),
        Some(role) if !role.login => Err(fatal_error(
            "28000",
            format!("role \"{user}\" is not permitted to log in"),
        )),
        Some(role) => Ok(role),
    }
}

/// The ParameterStatus values sent at startup (shared/CLIENTS.md, item 1).
struct StartupParameters {
    application_name: String,
    user: String,
    superuser: bool,
}

impl ServerParameterProvider for StartupParameters {
    fn server_parameters<C: ClientInfo>(
        &self,
        _client: &C,
    ) -> Option<std::collections::HashMap<String, String>> {
        let pairs = [
            ("server_version", eddy_sql::engine::SERVER_VERSION),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("IntervalStyle", "postgres"),
            ("TimeZone", "UTC"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
            ("is_superuser", if self.superuser { "on" } else { "off" }),
            ("default_transaction_read_only", "off"),
            ("in_hot_standby", "off"),
            ("application_name", self.application_name.as_str()),
            ("session_authorization", self.user.as_str()),
        ];
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

#[async_trait]
impl StartupHandler for EddyHandler {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(startup) => {
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                let request = match self.auth.method {
                    Method::Trust => {
                        let user = client
                            .metadata()
                            .get(METADATA_USER)
                            .cloned()
                            .unwrap_or_default();
                        let role = trusted_role(&self.engine, &user)?;
                        return self.start_session(client, &role).await;
                    }
                    Method::ScramSha256 => {
                        let mut mechanisms = vec!["SCRAM-SHA-256".to_string()];
                        if client.is_secure() && self.auth.end_point.is_some() {
                            mechanisms.insert(0, "SCRAM-SHA-256-PLUS".to_string());
                        }
                        client
                            .session_extensions()
                            .insert(PendingAuth(Mutex::new(Some(Pending::ScramStart))));
                        AuthRequest::SASL(mechanisms)
                    }
                    Method::Md5 => {
                        let salt: [u8; 4] = rand::random();
                        client
                            .session_extensions()
                            .insert(PendingAuth(Mutex::new(Some(Pending::Md5(salt)))));
                        AuthRequest::MD5Password(salt.to_vec())
                    }
                };
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(request))
                    .await?;
                client.flush().await?;
                Ok(())
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let pending = client
                    .session_extensions()
                    .get::<PendingAuth>()
                    .and_then(|p| p.0.lock().take());
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                let outcome = match pending {
                    Some(Pending::ScramStart) => {
                        let initial = message.into_sasl_initial_response()?;
                        let binding = match client.is_secure() {
                            true => self.auth.end_point.as_deref(),
                            false => None,
                        };
                        let secret = super::auth::scram_secret(&self.engine, &user);
                        let mock_salt =
                            eddy_sql::auth::ScramSecret::mock_salt(&self.auth.mock_nonce, &user);
                        let data = initial.data.unwrap_or_default();
                        match ScramExchange::start(
                            &initial.auth_method,
                            &data,
                            secret.as_ref(),
                            &mock_salt,
                            binding,
                        ) {
                            Ok((exchange, server_first)) => {
                                client
                                    .session_extensions()
                                    .insert(PendingAuth(Mutex::new(Some(Pending::ScramFinal(
                                        Box::new(exchange),
                                    )))));
                                client
                                    .send(PgWireBackendMessage::Authentication(
                                        AuthRequest::SASLContinue(server_first.into()),
                                    ))
                                    .await?;
                                client.flush().await?;
                                return Ok(());
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Some(Pending::ScramFinal(exchange)) => {
                        let response = message.into_sasl_response()?;
                        match exchange.finish(&response.data) {
                            Ok(server_final) => {
                                client
                                    .send(PgWireBackendMessage::Authentication(
                                        AuthRequest::SASLFinal(server_final.into()),
                                    ))
                                    .await?;
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Some(Pending::Md5(salt)) => {
                        let password = message.into_password()?.password;
                        match super::auth::md5_matches(&self.engine, &user, salt, &password) {
                            true => Ok(()),
                            false => Err(ScramError::Rejected),
                        }
                    }
                    None => Err(ScramError::Protocol(
                        "unexpected password message".to_string(),
                    )),
                };
                let ip = client.socket_addr().ip().to_string();
                match outcome {
                    Ok(()) => {
                        self.auth.throttle.succeeded(&ip);
                        // Dropped or NOLOGIN since the exchange began: refused as a wrong
                        // password would be.
                        let role =
                            super::auth::login_role(&self.engine, &user).ok_or_else(|| {
                                fatal_error(
                                    "28P01",
                                    format!("password authentication failed for user \"{user}\""),
                                )
                            })?;
                        self.start_session(client, &role).await
                    }
                    Err(e) => {
                        let (failures, delay) = self.auth.throttle.failed(&ip);
                        tracing::warn!(
                            "failed login for user {user:?} from {ip} ({failures} in a row): {e:?}"
                        );
                        tokio::time::sleep(delay).await;
                        let (code, message) = match e {
                            ScramError::Protocol(m) => ("08P01", m),
                            ScramError::Rejected => (
                                "28P01",
                                format!("password authentication failed for user \"{user}\""),
                            ),
                        };
                        Err(fatal_error(code, message))
                    }
                }
            }
            _ => Ok(()),
        }
    }
}

impl EddyHandler {
    /// Opens the session of a connection authenticated as `role` and tells the client it is
    /// ready, if a connection slot is left for it.
    async fn start_session<C>(&self, client: &mut C, role: &RoleDef) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let meta = client.metadata();
        let user = role.name.clone();
        let superuser = role.superuser;
        let database = meta
            .get(METADATA_DATABASE)
            .cloned()
            .unwrap_or_else(|| user.clone());
        let application_name = meta.get("application_name").cloned().unwrap_or_default();
        let slot = self
            .slots
            .claim(&user, superuser, role.connection_limit)
            .map_err(|super::slots::TooMany(message)| fatal_error("53300", message))?;
        client.session_extensions().insert(Arc::new(slot));
        let session = self.engine.new_session(&user, &database);
        session.set_startup_setting("max_connections", self.slots.max().to_string());
        session.set_superuser(superuser);
        session.set_startup_setting("application_name", application_name.clone());
        let pid = session.backend_pid();
        let secret = SecretKey::I32(rand::random::<i32>());
        client.set_pid_and_secret_key(pid, secret.clone());
        let (handle, guard) = self.manager.register(pid, secret);
        client
            .session_extensions()
            .insert::<Arc<ConnectionHandle>>(handle);
        client.session_extensions().insert(guard);
        client.session_extensions().insert(session);
        let params = StartupParameters {
            application_name,
            user,
            superuser,
        };
        finish_authentication(client, &params).await?;
        client.flush().await?;
        Ok(())
    }
}

/// Hands pgwire the handlers of one server.
pub struct Handlers {
    pub handler: Arc<EddyHandler>,
    pub cancel: Arc<pgwire::api::cancel::DefaultCancelHandler>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.handler.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.handler.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.handler.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.cancel.clone()
    }
}
