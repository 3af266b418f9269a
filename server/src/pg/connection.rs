//! One Postgres connection from accept to close: TLS negotiation, the pre-authentication
//! limits, and the message loop that hands each message to pgwire's dispatcher.
//!
//! Before a client has authenticated it may send only small messages (PostgreSQL caps its
//! startup packet at 10,000 bytes and its authentication messages likewise): the bytes read
//! are framed as they arrive ([`PreAuthFraming`]), and a declared length over
//! [`PRE_AUTH_MAX_MESSAGE`], or more than [`PRE_AUTH_MAX_BYTES`] in all, is answered with a
//! FATAL 08P01 and the connection closed, before anything is buffered. While authentication
//! is in progress, any message but a password message is refused the same way. After
//! authentication the limits are lifted (pgwire's own, PostgreSQL's 1 GB, apply).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgwire::api::{ClientInfo, ErrorHandler, NoopHandler, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::response::NotificationResponse;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{
    MaybeTls, PgWireMessageServerCodec, negotiate_tls, process_error, process_message,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedParts};

use eddy_sql::{Session, TxnStatus};

use super::handler::{EddyStatement, Handlers};

/// The largest message a client may send before it has authenticated (PostgreSQL's
/// MAX_STARTUP_PACKET_LENGTH).
pub const PRE_AUTH_MAX_MESSAGE: usize = 10_000;
/// All the bytes a client may send before it has authenticated.
pub const PRE_AUTH_MAX_BYTES: usize = 64 << 10;
/// How long a client has to finish authenticating (PostgreSQL's authentication_timeout).
pub const AUTHENTICATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Frames the bytes a client sends before authentication, to refuse an oversized message from
/// its header alone. The first message (after any SSL or GSS negotiation, which pgwire has
/// read already) has no type byte: a startup packet or a cancel request; every later one has.
#[derive(Debug)]
struct PreAuthFraming {
    /// Header bytes of the message being read.
    header: Vec<u8>,
    /// Body bytes still to skip of the current message.
    body_left: usize,
    /// Whether the next header is the first message's (no type byte).
    untyped: bool,
    total: usize,
}

impl PreAuthFraming {
    fn new() -> Self {
        Self {
            header: Vec::with_capacity(5),
            body_left: 0,
            untyped: true,
            total: 0,
        }
    }

    /// Takes newly read bytes; an error names what is wrong with them.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        self.total += bytes.len();
        if self.total > PRE_AUTH_MAX_BYTES {
            return Err(format!(
                "more than {PRE_AUTH_MAX_BYTES} bytes sent before authentication"
            ));
        }
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let header_len = if self.untyped { 4 } else { 5 };
            let n = (header_len - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() < header_len {
                break;
            }
            let len_bytes: [u8; 4] = self.header[header_len - 4..]
                .try_into()
                .expect("4 length bytes");
            let len = i32::from_be_bytes(len_bytes);
            if len < 4 || len as usize > PRE_AUTH_MAX_MESSAGE {
                return Err(format!(
                    "invalid message length {len} before authentication"
                ));
            }
            self.body_left = len as usize - 4;
            self.untyped = false;
            self.header.clear();
        }
        Ok(())
    }
}

/// The client's stream, framed while it has not authenticated.
pub struct Guarded {
    io: MaybeTls,
    framing: Option<PreAuthFraming>,
}

impl Guarded {
    fn authenticated(&mut self) {
        self.framing = None;
    }
}

/// The error kind that marks a pre-authentication limit, told apart from a broken socket.
fn limit_error(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, PreAuthLimit(message))
}

#[derive(Debug)]
struct PreAuthLimit(String);

impl std::fmt::Display for PreAuthLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PreAuthLimit {}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Some(framing) = &mut this.framing
                    && let Err(why) = framing.feed(&buf.filled()[before..])
                {
                    return Poll::Ready(Err(limit_error(why)));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

type Socket = Framed<Guarded, PgWireMessageServerCodec<EddyStatement>>;

fn fatal(code: &str, message: String) -> PgWireBackendMessage {
    PgWireBackendMessage::ErrorResponse(
        ErrorInfo::new("FATAL".to_string(), code.to_string(), message).into(),
    )
}

/// Sends a FATAL error and closes: the end of a connection that broke the protocol.
async fn refuse(socket: &mut Socket, message: String) {
    tracing::debug!(
        "closing connection from {}: {message}",
        socket.socket_addr()
    );
    let _ = socket.send(fatal("08P01", message)).await;
    let _ = socket.close().await;
}

fn is_pre_auth(state: PgWireConnectionState) -> bool {
    matches!(
        state,
        PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress
    )
}

/// What a client may send in each pre-authentication state; None when `message` is fine.
fn unexpected(state: PgWireConnectionState, message: &PgWireFrontendMessage) -> Option<String> {
    match (state, message) {
        (PgWireConnectionState::AwaitingStartup, PgWireFrontendMessage::Startup(_))
        | (PgWireConnectionState::AwaitingStartup, PgWireFrontendMessage::CancelRequest(_))
        | (
            PgWireConnectionState::AuthenticationInProgress,
            PgWireFrontendMessage::PasswordMessageFamily(_),
        ) => None,
        (PgWireConnectionState::AuthenticationInProgress, _) => {
            Some("expected password response".to_string())
        }
        _ => Some("expected startup message".to_string()),
    }
}

/// Serves one client until it disconnects, breaks the protocol or is refused.
pub async fn serve(
    tcp: TcpStream,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    handlers: Arc<Handlers>,
) -> io::Result<()> {
    let deadline = tokio::time::sleep(AUTHENTICATION_TIMEOUT);
    tokio::pin!(deadline);
    let negotiated = tokio::select! {
        _ = &mut deadline => return Ok(()),
        s = negotiate_tls::<EddyStatement>(tcp, tls) => s?,
    };
    let Some(socket) = negotiated else {
        return Ok(());
    };
    let parts = socket.into_parts();
    let mut framing = PreAuthFraming::new();
    if let Err(why) = framing.feed(&parts.read_buf) {
        return Err(limit_error(why));
    }
    let mut guarded = FramedParts::new(
        Guarded {
            io: parts.io,
            framing: Some(framing),
        },
        parts.codec,
    );
    guarded.read_buf = parts.read_buf;
    guarded.write_buf = parts.write_buf;
    let mut socket = Framed::from_parts(guarded);
    run(&mut socket, &mut deadline, handlers.as_ref()).await
}

/// How long the client may stay idle before the server closes the connection, as
/// PostgreSQL's `idle_in_transaction_session_timeout` (25P03: the open transaction is rolled
/// back) and `idle_session_timeout` (57P05) say; with the error to close it with.
fn idle_limit(socket: &Socket) -> Option<(Duration, &'static str, &'static str)> {
    if !matches!(socket.state(), PgWireConnectionState::ReadyForQuery) {
        return None;
    }
    let session = socket.session_extensions().get::<Session>()?;
    let settings = session.settings();
    match session.status() {
        TxnStatus::Idle => settings.timeout("idle_session_timeout").map(|t| {
            (
                t,
                "57P05",
                "terminating connection due to idle-session timeout",
            )
        }),
        TxnStatus::InTransaction | TxnStatus::Failed => settings
            .timeout("idle_in_transaction_session_timeout")
            .map(|t| {
                (
                    t,
                    "25P03",
                    "terminating connection due to idle-in-transaction timeout",
                )
            }),
    }
}

/// The session's inbox when it is idle between transactions (notifications wait while a
/// transaction is open, as in PostgreSQL).
fn idle_inbox(socket: &Socket) -> Option<Arc<eddy_sql::engine::notify::Inbox>> {
    if !matches!(socket.state(), PgWireConnectionState::ReadyForQuery) {
        return None;
    }
    let session = socket.session_extensions().get::<Session>()?;
    (session.status() == TxnStatus::Idle).then(|| session.inbox().clone())
}

async fn run(
    socket: &mut Socket,
    deadline: &mut Pin<&mut tokio::time::Sleep>,
    handlers: &Handlers,
) -> io::Result<()> {
    let handler = handlers.handler.clone();
    let cancel = handlers.cancel.clone();
    let errors = NoopHandler;
    loop {
        let state = socket.state();
        let pre_auth = is_pre_auth(state);
        if !pre_auth {
            socket.get_mut().authenticated();
        }
        // Between transactions, the notifications of the channels it LISTENs on.
        let inbox = match pre_auth {
            true => None,
            false => idle_inbox(socket),
        };
        if let Some(inbox) = &inbox {
            for n in inbox.take() {
                let message = PgWireBackendMessage::NotificationResponse(
                    NotificationResponse::new(n.pid, n.channel, n.payload),
                );
                socket.send(message).await?;
            }
        }
        let arrived = async {
            match &inbox {
                Some(inbox) => inbox.arrived.notified().await,
                None => std::future::pending().await,
            }
        };
        let next = if pre_auth {
            tokio::select! {
                _ = &mut *deadline => {
                    refuse(socket, "authentication timed out".into()).await;
                    return Ok(());
                }
                m = socket.next() => m,
            }
        } else {
            let limit = idle_limit(socket);
            let wait = async {
                match limit {
                    None => Ok(socket.next().await),
                    Some((limit, _, _)) => tokio::time::timeout(limit, socket.next()).await,
                }
            };
            tokio::select! {
                m = wait => match m {
                    Ok(m) => m,
                    Err(_) => {
                        let (_, code, why) = limit.expect("timed out under a limit");
                        let _ = socket.send(fatal(code, why.to_string())).await;
                        let _ = socket.close().await;
                        return Ok(());
                    }
                },
                () = arrived => continue,
            }
        };
        let message = match next {
            None => return Ok(()),
            Some(Ok(m)) => m,
            Some(Err(PgWireError::IoError(e))) => {
                if let Some(limit) = e.get_ref().and_then(|i| i.downcast_ref::<PreAuthLimit>()) {
                    refuse(socket, limit.0.clone()).await;
                    return Ok(());
                }
                return Err(e);
            }
            Some(Err(e)) => {
                refuse(socket, format!("invalid message: {e}")).await;
                return Ok(());
            }
        };
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            return Ok(());
        }
        if pre_auth && let Some(why) = unexpected(state, &message) {
            refuse(socket, why).await;
            return Ok(());
        }
        let is_extended = match state {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        if let Err(mut e) = process_message(
            message,
            socket,
            handler.clone(),
            handler.clone(),
            handler.clone(),
            handler.clone(),
            cancel.clone(),
        )
        .await
        {
            errors.on_error(socket, &mut e);
            process_error(socket, e, is_extended).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(kind: u8, len: i32) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend(len.to_be_bytes());
        v.resize(1 + len as usize, 0);
        v
    }

    #[test]
    fn small_startup_and_password_messages_pass_byte_by_byte() {
        let mut f = PreAuthFraming::new();
        let mut bytes = 40i32.to_be_bytes().to_vec();
        bytes.extend([0u8; 36]); // startup packet
        bytes.extend(typed(b'p', 200));
        for b in &bytes {
            f.feed(std::slice::from_ref(b)).unwrap();
        }
    }

    #[test]
    fn an_oversized_header_is_refused_before_its_body_arrives() {
        let mut f = PreAuthFraming::new();
        let mut bytes = 40i32.to_be_bytes().to_vec();
        bytes.extend([0u8; 36]);
        f.feed(&bytes).unwrap();
        let mut q = vec![b'Q'];
        q.extend((1i32 << 30).to_be_bytes());
        assert!(f.feed(&q).unwrap_err().contains("invalid message length"));
        // A startup packet declaring a huge length, and a negative one.
        assert!(
            PreAuthFraming::new()
                .feed(&0x7fff_ffffi32.to_be_bytes())
                .is_err()
        );
        assert!(PreAuthFraming::new().feed(&(-5i32).to_be_bytes()).is_err());
    }

    #[test]
    fn many_small_messages_hit_the_total() {
        let mut f = PreAuthFraming::new();
        f.feed(&typed(0, 8)[1..]).unwrap();
        let msg = typed(b'p', 1000);
        let result = (0..100).try_for_each(|_| f.feed(&msg));
        assert!(result.unwrap_err().contains("before authentication"));
    }
}
