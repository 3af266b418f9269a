//! The Postgres wire protocol front end (pgwire).

pub mod auth;
pub mod connection;
pub mod copy_out;
pub mod encode;
pub mod errors;
pub mod execute;
pub mod handler;
pub mod params;
pub mod slots;

use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_sql::Engine;
use pgwire::api::ConnectionManager;
use pgwire::api::cancel::DefaultCancelHandler;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use handler::{EddyHandler, Handlers};

/// Accepts Postgres connections until the task is dropped; with `tls`, a client's SSLRequest
/// is answered with a TLS handshake. At most twice `max_connections` sockets are open at once
/// (sessions plus clients still logging in); past that a client is told so and closed.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    auth: Arc<handler::Authentication>,
    slots: Arc<slots::Slots>,
) {
    let manager = Arc::new(ConnectionManager::new());
    let max_sockets = slots.max() * 2;
    let handlers = Arc::new(Handlers {
        handler: Arc::new(EddyHandler::new(engine, manager.clone(), auth, slots)),
        cancel: Arc::new(DefaultCancelHandler::new(manager)),
    });
    let sockets = Arc::new(tokio::sync::Semaphore::new(max_sockets));
    let mut backoff = AcceptBackoff::default();
    loop {
        let (mut socket, peer) = backoff.accept(&listener).await;
        let Ok(open) = sockets.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = socket.write_all(&too_many_clients()).await;
                let _ = socket.shutdown().await;
            });
            continue;
        };
        let _ = socket.set_nodelay(true);
        let handlers = handlers.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(e) = connection::serve(socket, tls, handlers).await {
                tracing::debug!("connection from {peer} ended: {e}");
            }
            drop(open);
        });
    }
}

/// FATAL 53300 as a raw ErrorResponse, for a client turned away before it said anything.
fn too_many_clients() -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "53300"),
        (b'M', "sorry, too many clients already"),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    message.extend_from_slice(&body);
    message
}

/// Waits after a failed accept (out of file descriptors, memory): doubling from 10 ms to 1 s,
/// and logging once per [`AcceptBackoff::LOG_EVERY`] with the count of failures in between,
/// so a full descriptor table neither spins a core nor floods the log. Sessions already open
/// keep being served meanwhile.
#[derive(Default)]
pub struct AcceptBackoff {
    delay: Duration,
    suppressed: u64,
    last_log: Option<Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    pub fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// The wait after one more failure; logs when it is time to.
    pub fn next_delay(&mut self, e: &std::io::Error) -> Duration {
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MAX);
        let now = Instant::now();
        match self.last_log {
            Some(at) if now.duration_since(at) < Self::LOG_EVERY => self.suppressed += 1,
            _ => {
                tracing::warn!(
                    "accept failed: {e} ({} more failures since the last report); backing off",
                    self.suppressed
                );
                self.suppressed = 0;
                self.last_log = Some(now);
            }
        }
        self.delay
    }

    /// The next connection; failures are waited out as above.
    pub async fn accept(
        &mut self,
        listener: &TcpListener,
    ) -> (tokio::net::TcpStream, std::net::SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(accepted) => {
                    self.reset();
                    return accepted;
                }
                Err(e) => tokio::time::sleep(self.next_delay(&e)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_and_reset() {
        let mut b = AcceptBackoff::default();
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay(&e)).collect();
        assert_eq!(delays[0], Duration::from_millis(10));
        assert_eq!(delays[1], Duration::from_millis(20));
        assert_eq!(delays[9], Duration::from_secs(1));
        assert_eq!(b.suppressed, 9);
        b.reset();
        assert_eq!(b.next_delay(&e), Duration::from_millis(10));
    }

    #[test]
    fn too_many_clients_is_a_well_formed_error_response() {
        let m = too_many_clients();
        assert_eq!(m[0], b'E');
        assert_eq!(
            i32::from_be_bytes(m[1..5].try_into().unwrap()) as usize,
            m.len() - 1
        );
        assert!(m.ends_with(b"\0\0"));
    }
}
