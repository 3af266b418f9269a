//! Bind, Describe and Execute without a flush per message.
//!
//! pgwire's default handlers flush the socket after BindComplete and after CommandComplete,
//! so one prepared-statement round trip (Bind, Execute, Sync) costs three TCP writes and wakes
//! the client three times. The protocol lets the server hold its replies until Sync or Flush
//! (PostgreSQL does): these versions only queue messages, and the ReadyForQuery of Sync (or
//! a Flush message) sends them in one write.

use std::fmt::Debug;
use std::sync::Arc;

use futures::future::{Either, select};
use futures::{FutureExt, Sink, SinkExt, StreamExt};
use pgwire::api::Type;
use pgwire::api::portal::{Portal, PortalExecutionState};
use pgwire::api::query::ExtendedQueryHandler;
use pgwire::api::results::FieldInfo;
use pgwire::api::results::{Response, Tag};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, DEFAULT_NAME, PgWireConnectionState,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::{NoData, ParameterDescription, RowDescription};
use pgwire::messages::extendedquery::{
    Bind, BindComplete, Describe, Execute, PortalSuspended, TARGET_TYPE_BYTE_PORTAL,
    TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::response::EmptyQueryResponse;

use super::errors::user_error;

pub async fn bind<H, C>(client: &mut C, message: Bind) -> PgWireResult<()>
where
    H: ExtendedQueryHandler,
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::PortalStore: PortalStore<Statement = H::Statement>,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let statement_name = message.statement_name.as_deref().unwrap_or(DEFAULT_NAME);
    let portal_name = message.portal_name.as_deref().unwrap_or(DEFAULT_NAME);
    match client.portal_store().get_statement(statement_name) {
        Some(Entry::Value(statement)) => {
            let portal = Portal::try_new(&message, statement)?;
            client.portal_store().put_portal(Arc::new(portal));
        }
        Some(Entry::Empty) if message.parameters.is_empty() => {
            client.portal_store().put_empty_portal(portal_name);
        }
        Some(Entry::Empty) => {
            return Err(user_error(
                "08P01",
                format!(
                    "bind message supplies {} parameters, but prepared statement \"{statement_name}\" requires 0",
                    message.parameters.len()
                ),
            ));
        }
        None => return Err(PgWireError::StatementNotFound(statement_name.to_owned())),
    }
    client
        .feed(PgWireBackendMessage::BindComplete(BindComplete::new()))
        .await?;
    Ok(())
}

pub async fn execute<H, C>(handler: &H, client: &mut C, message: Execute) -> PgWireResult<()>
where
    H: ExtendedQueryHandler,
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::PortalStore: PortalStore<Statement = H::Statement>,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
        return Err(PgWireError::NotReadyForQuery);
    }
    let mut status = client.transaction_status();
    client.set_state(PgWireConnectionState::QueryInProgress);
    let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
    let max_rows = message.max_rows.max(0) as usize;
    let portal = match client.portal_store().get_portal(name) {
        Some(Entry::Value(portal)) => portal,
        Some(Entry::Empty) => {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await?;
            client.set_state(PgWireConnectionState::ReadyForQuery);
            return Ok(());
        }
        None => return Err(PgWireError::PortalNotFound(name.to_owned())),
    };
    let fresh = matches!(*portal.state.lock().await, PortalExecutionState::Initial);
    if fresh {
        let mut cancel = match client.session_extensions().get::<Arc<ConnectionHandle>>() {
            Some(handle) => Some(handle.start_query().await),
            None => None,
        };
        let response = match cancel.as_mut() {
            Some(cancel) => match select(handler.do_query(client, &portal, max_rows), cancel).await
            {
                Either::Left((result, _)) => result?,
                Either::Right(_) => return Err(PgWireError::QueryCanceled),
            },
            None => handler.do_query(client, &portal, max_rows).await?,
        };
        match response {
            // All its rows: sent as they come, not gathered in the portal first (a result
            // that never ends, SUBSCRIBE, reaches the client row by row).
            Response::Query(results) if max_rows == 0 => {
                *portal.state.lock().await = PortalExecutionState::Finished;
                send_rows(client, results, false, cancel.as_mut()).await?;
                client.set_state(PgWireConnectionState::ReadyForQuery);
                client.set_transaction_status(status);
                return Ok(());
            }
            Response::Query(results) => portal.start(results).await,
            Response::CopyOut(copy) => {
                *portal.state.lock().await = PortalExecutionState::Finished;
                let rows = super::handler::copy_rows(client);
                super::copy_out::send(client, copy, &rows).await?;
                client.set_state(PgWireConnectionState::ReadyForQuery);
                client.set_transaction_status(status);
                return Ok(());
            }
            other => {
                status = queue_outcome(client, other, status).await?;
                client.set_state(PgWireConnectionState::ReadyForQuery);
                client.set_transaction_status(status);
                return Ok(());
            }
        }
    }
    let fetched = portal.fetch(max_rows).await?;
    send_rows(client, fetched.response, fetched.suspended, None).await?;
    client.set_state(PgWireConnectionState::ReadyForQuery);
    client.set_transaction_status(status);
    Ok(())
}

/// Queues a result's rows and its completion (PortalSuspended when `suspended`). Rows are
/// sent whenever the next one is not ready yet; a cancel request ends a result that is
/// still arriving.
async fn send_rows<C>(
    client: &mut C,
    mut response: pgwire::api::results::QueryResponse,
    suspended: bool,
    mut cancel: Option<&mut futures::channel::oneshot::Receiver<()>>,
) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let command = response.command_tag().to_owned();
    let mut rows = 0;
    let data = response.data_rows();
    loop {
        let next = match data.next().now_or_never() {
            Some(next) => next,
            None => {
                client.flush().await?;
                match cancel.as_mut() {
                    Some(cancel) => match select(data.next(), &mut **cancel).await {
                        Either::Left((next, _)) => next,
                        Either::Right(_) => return Err(PgWireError::QueryCanceled),
                    },
                    None => data.next().await,
                }
            }
        };
        let Some(row) = next else { break };
        client.feed(PgWireBackendMessage::DataRow(row?)).await?;
        rows += 1;
    }
    let done = if suspended {
        PgWireBackendMessage::PortalSuspended(PortalSuspended::new())
    } else {
        PgWireBackendMessage::CommandComplete(Tag::new(&command).with_rows(rows).into())
    };
    client.feed(done).await?;
    Ok(())
}

pub async fn describe<H, C>(handler: &H, client: &mut C, message: Describe) -> PgWireResult<()>
where
    H: ExtendedQueryHandler,
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::PortalStore: PortalStore<Statement = H::Statement>,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
    match message.target_type {
        TARGET_TYPE_BYTE_STATEMENT => match client.portal_store().get_statement(name) {
            Some(Entry::Value(statement)) => {
                let described = handler.do_describe_statement(client, &statement).await?;
                queue_description(client, Some(&described.parameters), &described.fields).await
            }
            Some(Entry::Empty) => queue_description(client, Some(&[]), &[]).await,
            None => Err(PgWireError::StatementNotFound(name.to_owned())),
        },
        TARGET_TYPE_BYTE_PORTAL => match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal)) => {
                let described = handler.do_describe_portal(client, &portal).await?;
                queue_description(client, None, &described.fields).await
            }
            Some(Entry::Empty) => queue_description(client, None, &[]).await,
            None => Err(PgWireError::PortalNotFound(name.to_owned())),
        },
        other => Err(PgWireError::InvalidTargetType(other)),
    }
}

/// ParameterDescription (statements only), then RowDescription or NoData.
async fn queue_description<C>(
    client: &mut C,
    parameters: Option<&[Type]>,
    fields: &[FieldInfo],
) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    if let Some(parameters) = parameters {
        let types = parameters.iter().map(|t| t.oid()).collect();
        client
            .feed(PgWireBackendMessage::ParameterDescription(
                ParameterDescription::new(types),
            ))
            .await?;
    }
    let message = if fields.is_empty() {
        PgWireBackendMessage::NoData(NoData::new())
    } else {
        PgWireBackendMessage::RowDescription(RowDescription::new(
            fields.iter().map(Into::into).collect(),
        ))
    };
    client.feed(message).await?;
    Ok(())
}

/// Queues the messages for a statement that returned no rows; returns the new status.
async fn queue_outcome<C>(
    client: &mut C,
    response: Response,
    status: pgwire::messages::response::TransactionStatus,
) -> PgWireResult<pgwire::messages::response::TransactionStatus>
where
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let (message, status) = match response {
        Response::EmptyQuery => (
            PgWireBackendMessage::EmptyQueryResponse(EmptyQueryResponse::new()),
            status,
        ),
        Response::Execution(tag) => (PgWireBackendMessage::CommandComplete(tag.into()), status),
        Response::TransactionStart(tag) => (
            PgWireBackendMessage::CommandComplete(tag.into()),
            status.to_in_transaction_state(),
        ),
        Response::TransactionEnd(tag) => (
            PgWireBackendMessage::CommandComplete(tag.into()),
            status.to_idle_state(),
        ),
        Response::Error(e) => (
            PgWireBackendMessage::ErrorResponse((*e).into()),
            status.to_error_state(),
        ),
        Response::Query(_) | Response::CopyIn(_) | Response::CopyOut(_) | Response::CopyBoth(_) => {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "0A000".into(),
                "COPY is not supported".into(),
            ))));
        }
    };
    client.feed(message).await?;
    Ok(status)
}
