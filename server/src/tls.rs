//! TLS for the Postgres and HTTP listeners (rustls with ring).
//!
//! The certificate chain and key come from the config (`tls_cert`, `tls_key`, PEM). Without
//! them Eddy uses `<data dir>/tls/server.crt` and `server.key`, which it makes on first start:
//! a self-signed certificate for `localhost`, `127.0.0.1`, `::1` and the listen address, so
//! that clients which require TLS by default (Grafana, lib/pq) connect with their defaults,
//! and `sslmode=verify-full` works with `sslrootcert=<data dir>/tls/server.crt`. Clients that
//! do not ask for TLS still connect in the clear (the protocol negotiates it). The HTTP
//! listener answers HTTPS and plain HTTP on the same port, told apart by the first byte.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate and key files to serve: the configured ones, or the data dir's
/// self-signed pair (made now if missing).
pub fn files(
    configured: Option<&(PathBuf, PathBuf)>,
    data_dir: &Path,
    listen: SocketAddr,
) -> Result<(PathBuf, PathBuf)> {
    if let Some((cert, key)) = configured {
        return Ok((cert.clone(), key.clone()));
    }
    let dir = data_dir.join("tls");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ip = listen.ip();
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim().to_string();
        if !host.is_empty() && !names.contains(&host) {
            names.push(host);
        }
    }
    let made = rcgen::generate_simple_self_signed(names)
        .context("cannot make a self-signed certificate")?;
    // After a crash both files are whole, or the certificate is missing and the pair is made
    // again.
    replace_file(&key, made.key_pair.serialize_pem().as_bytes(), 0o600)?;
    replace_file(&cert, made.cert.pem().as_bytes(), 0o644)?;
    tracing::info!(
        "made a self-signed TLS certificate {} (clients verify it with sslrootcert={})",
        cert.display(),
        cert.display()
    );
    Ok((cert, key))
}

/// Puts `bytes` at `path` durably: written under `<path>.tmp` with `mode` and synced, renamed
/// into place, and the directory synced. After a crash the file is whole or absent.
pub(crate) fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let dir = path.parent().unwrap_or(Path::new("."));
    (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })()
    .with_context(|| format!("cannot write {}", path.display()))
}

/// The rustls server configuration for a certificate chain and key (PEM files).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read TLS certificate {}", cert.display()))?
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("invalid TLS certificate {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "no certificate in {} (expected PEM)",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read TLS key {} (expected PEM)", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS certificate and key do not go together")?;
    Ok(Arc::new(config))
}

/// A plain or a TLS connection.
pub type Connection = tokio_util::either::Either<
    tokio::net::TcpStream,
    tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
>;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// How long a client may take to send its first byte and finish a TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Tells a client that opens with a TLS handshake (answered with `tls`, when given) from a
/// plain one, within [`HANDSHAKE_TIMEOUT`]. Run it in the connection's own task, so a slow
/// client never holds up the accept loop.
pub async fn sort_connection(
    socket: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<Connection> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out");
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut first = [0u8; 1];
        let n = socket.peek(&mut first).await?;
        match tls {
            Some(tls) if n == 1 && first[0] == TLS_HANDSHAKE => {
                Ok(tokio_util::either::Either::Right(tls.accept(socket).await?))
            }
            _ => Ok(tokio_util::either::Either::Left(socket)),
        }
    })
    .await
    .map_err(|_| timed_out())?
}

/// The `tls-server-end-point` channel binding of the listener's certificate (SCRAM-SHA-256-PLUS).
pub fn end_point(
    configured: Option<&(PathBuf, PathBuf)>,
    data_dir: &Path,
    listen: SocketAddr,
) -> Result<Vec<u8>> {
    let (cert, _) = files(configured, data_dir, listen)?;
    let leaf = CertificateDer::pem_file_iter(&cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .next()
        .with_context(|| format!("no certificate in {}", cert.display()))?
        .with_context(|| format!("cannot read {}", cert.display()))?;
    Ok(eddy_sql::auth::tls_server_end_point(&leaf))
}

/// The acceptor of the Postgres listener.
pub fn acceptor(
    configured: Option<&(PathBuf, PathBuf)>,
    data_dir: &Path,
    listen: SocketAddr,
) -> Result<tokio_rustls::TlsAcceptor> {
    let (cert, key) = files(configured, data_dir, listen)?;
    Ok(tokio_rustls::TlsAcceptor::from(server_config(&cert, &key)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_is_made_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let (cert, key) = files(None, dir.path(), listen).unwrap();
        let first = std::fs::read(&cert).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only the owner reads the key");
        server_config(&cert, &key).unwrap();
        let (again, _) = files(None, dir.path(), listen).unwrap();
        assert_eq!(std::fs::read(again).unwrap(), first, "kept across restarts");
        let err = server_config(&key, &key).unwrap_err();
        assert!(format!("{err:#}").contains("certificate"), "{err:#}");
    }
}
