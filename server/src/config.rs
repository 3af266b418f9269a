//! Server settings: command-line flags win over EDDY_* environment variables, which win over
//! the TOML config file, which wins over the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

pub use crate::pg::auth::Method;

pub const DEFAULT_DATA_DIR: &str = "./eddy-data";
pub const DEFAULT_PG_LISTEN: &str = "127.0.0.1:5432";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";

/// The settings as the config file spells them; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub pg_listen: Option<String>,
    pub http_listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub auth: Option<String>,
    pub admin_user: Option<String>,
    pub admin_password: Option<String>,
    pub insecure_allow_remote_trust: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub pg_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// The TLS certificate chain and private key (PEM); None: a self-signed pair in the data
    /// dir, made on first start.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How Postgres and HTTP clients authenticate.
    pub auth: Method,
    /// The bootstrap superuser, created on first start (with its password, when given).
    pub admin_user: String,
    pub admin_password: Option<Secret>,
}

/// A password from the configuration: never printed.
#[derive(Clone, PartialEq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// What flags and environment said (clap merges those two).
#[derive(Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub pg_listen: Option<String>,
    pub http_listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub auth: Option<String>,
    pub admin_user: Option<String>,
    pub admin_password: Option<String>,
    pub insecure_allow_remote_trust: bool,
}

/// The bootstrap superuser's name when none is configured.
pub const DEFAULT_ADMIN_USER: &str = "eddy";

impl Config {
    pub fn resolve(overrides: Overrides) -> Result<Self> {
        let file = match &overrides.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let pick = |flag: Option<String>,
                    file: Option<String>,
                    default: &str,
                    what: &str|
         -> Result<SocketAddr> {
            let text = flag.or(file).unwrap_or_else(|| default.to_string());
            text.parse()
                .with_context(|| format!("{what} must be HOST:PORT, got {text:?}"))
        };
        let tls = match (
            overrides.tls_cert.or(file.tls_cert),
            overrides.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => anyhow::bail!("tls_cert and tls_key go together: give both or neither"),
        };
        let pg_listen = pick(
            overrides.pg_listen,
            file.pg_listen,
            DEFAULT_PG_LISTEN,
            "pg_listen",
        )?;
        let http_listen = pick(
            overrides.http_listen,
            file.http_listen,
            DEFAULT_HTTP_LISTEN,
            "http_listen",
        )?;
        let loopback = pg_listen.ip().is_loopback() && http_listen.ip().is_loopback();
        let auth = match overrides.auth.or(file.auth) {
            Some(text) => text.parse::<Method>().map_err(anyhow::Error::msg)?,
            // PostgreSQL's development default: no passwords on a loopback-only server.
            None if loopback => Method::Trust,
            None => Method::ScramSha256,
        };
        let allow_remote_trust =
            overrides.insecure_allow_remote_trust || file.insecure_allow_remote_trust == Some(true);
        if auth == Method::Trust && !loopback && !allow_remote_trust {
            anyhow::bail!(
                "refusing to listen on {pg_listen} (pg) and {http_listen} (http) without authentication: \
                 anyone who reaches them would be a superuser. Set auth = \"scram-sha-256\" \
                 (EDDY_AUTH) with an admin password (EDDY_ADMIN_PASSWORD), or pass \
                 --insecure-allow-remote-trust if the network is yours alone"
            );
        }
        let admin_password = overrides
            .admin_password
            .or(file.admin_password)
            .filter(|p| !p.is_empty())
            .map(Secret);
        Ok(Config {
            tls,
            auth,
            admin_user: overrides
                .admin_user
                .or(file.admin_user)
                .unwrap_or_else(|| DEFAULT_ADMIN_USER.to_string()),
            admin_password,
            data_dir: overrides
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            pg_listen,
            http_listen,
        })
    }
}

fn load_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback() {
        let c = Config::resolve(Overrides::default()).unwrap();
        assert_eq!(c.pg_listen.to_string(), DEFAULT_PG_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eddy.toml");
        std::fs::write(
            &path,
            "data_dir = \"/from/file\"\npg_listen = \"127.0.0.1:7000\"\n",
        )
        .unwrap();
        let c = Config::resolve(Overrides {
            config: Some(path.clone()),
            pg_listen: Some("127.0.0.1:7001".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.pg_listen.port(), 7001);
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
    }

    #[test]
    fn unknown_keys_and_bad_addresses_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eddy.toml");
        std::fs::write(&path, "data_dri = \"x\"\n").unwrap();
        let err = Config::resolve(Overrides {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("data_dri"));
        let err = Config::resolve(Overrides {
            pg_listen: Some("nope".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("HOST:PORT"));
        let err = Config::resolve(Overrides {
            tls_cert: Some("/c.pem".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("tls_key"));
    }

    #[test]
    fn authentication_is_off_only_on_loopback_unless_allowed() {
        let c = Config::resolve(Overrides::default()).unwrap();
        assert_eq!(c.auth, Method::Trust);
        let remote = || Overrides {
            pg_listen: Some("0.0.0.0:5432".into()),
            ..Default::default()
        };
        assert_eq!(Config::resolve(remote()).unwrap().auth, Method::ScramSha256);
        let err = Config::resolve(Overrides {
            auth: Some("trust".into()),
            ..remote()
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("without authentication"),
            "{err:#}"
        );
        let allowed = Config::resolve(Overrides {
            auth: Some("trust".into()),
            insecure_allow_remote_trust: true,
            ..remote()
        })
        .unwrap();
        assert_eq!(allowed.auth, Method::Trust);
        let err = Config::resolve(Overrides {
            auth: Some("ldap".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("scram-sha-256"), "{err:#}");
    }
}
