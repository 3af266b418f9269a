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
    /// `[limits]`: see [`Limits`].
    pub limits: Option<std::collections::BTreeMap<String, toml::Value>>,
    /// `statement` (the default) or `environment`: see [`Config::object_store_environment`].
    pub object_store_credentials: Option<String>,
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
    pub limits: Limits,
    /// Whether object stores (models, sinks) may use the server's own environment and
    /// instance credentials (`object_store_credentials = 'environment'`,
    /// EDDY_OBJECT_STORE_CREDENTIALS). Off by default: only credentials a statement gives.
    pub object_store_environment: bool,
}

/// What clients may make the server spend. Each limit is a key of the config file's
/// `[limits]` table and an `EDDY_<KEY>` environment variable (which wins); sizes take `kB`,
/// `MB`, `GB` suffixes, durations `ms`, `s`, `min`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Postgres sessions at once (PostgreSQL's `max_connections`).
    pub max_connections: usize,
    /// Of those, the ones only superusers may take.
    pub superuser_reserved_connections: usize,
    /// HTTP connections at once, and from one client address.
    pub http_max_connections: usize,
    pub http_max_connections_per_client: usize,
    /// How long an HTTP client may take to send its request head, and its body.
    pub http_header_timeout: std::time::Duration,
    pub http_body_timeout: std::time::Duration,
    /// The engine's: `max_model_size`, `query_memory_limit`, `work_mem_limit`, `state_cache`,
    /// `parallelism`.
    pub engine: eddy_sql::limits::Limits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100,
            superuser_reserved_connections: 3,
            http_max_connections: 256,
            http_max_connections_per_client: 32,
            http_header_timeout: std::time::Duration::from_secs(10),
            http_body_timeout: std::time::Duration::from_secs(60),
            engine: eddy_sql::limits::Limits::default(),
        }
    }
}

const LIMIT_KEYS: &[&str] = &[
    "max_connections",
    "superuser_reserved_connections",
    "http_max_connections",
    "http_max_connections_per_client",
    "http_header_timeout",
    "http_body_timeout",
    "max_model_size",
    "query_memory_limit",
    "work_mem_limit",
    "state_cache",
    "parallelism",
];

/// `512MB`, `1GB`, `64kB`, or a number of bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// `500ms`, `10s`, `2min`, or a number of seconds.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => n,
        "" | "s" => n.checked_mul(1000)?,
        "min" => n.checked_mul(60_000)?,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(ms))
}

impl Limits {
    /// The defaults, then the file's `[limits]`, then `EDDY_<KEY>` variables from `env`.
    fn resolve(
        file: Option<std::collections::BTreeMap<String, toml::Value>>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let mut values: std::collections::BTreeMap<String, String> = Default::default();
        for (k, v) in file.unwrap_or_default() {
            if !LIMIT_KEYS.contains(&k.as_str()) {
                anyhow::bail!(
                    "unknown key {k:?} in [limits] (known: {})",
                    LIMIT_KEYS.join(", ")
                );
            }
            let text = match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            values.insert(k, text);
        }
        for k in LIMIT_KEYS {
            if let Some(v) = env(&format!("EDDY_{}", k.to_ascii_uppercase())) {
                values.insert(k.to_string(), v);
            }
        }
        let mut l = Limits::default();
        for (k, v) in &values {
            let bad = || anyhow::anyhow!("invalid value {v:?} for limit {k}");
            let count = || v.trim().parse::<usize>().map_err(|_| bad());
            let size = || parse_size(v).ok_or_else(bad);
            let duration = || parse_duration(v).ok_or_else(bad);
            match k.as_str() {
                "max_connections" => l.max_connections = count()?,
                "superuser_reserved_connections" => l.superuser_reserved_connections = count()?,
                "http_max_connections" => l.http_max_connections = count()?,
                "http_max_connections_per_client" => l.http_max_connections_per_client = count()?,
                "http_header_timeout" => l.http_header_timeout = duration()?,
                "http_body_timeout" => l.http_body_timeout = duration()?,
                "max_model_size" => l.engine.max_model_bytes = size()?,
                "query_memory_limit" => l.engine.query_memory_bytes = size()? as usize,
                "work_mem_limit" => l.engine.session_memory_bytes = size()? as usize,
                "state_cache" => l.engine.state_cache_bytes = size()? as usize,
                "parallelism" => match count()? {
                    n @ 1..=eddy_sql::limits::MAX_PARALLELISM => l.engine.parallelism = n,
                    _ => anyhow::bail!(
                        "parallelism must be between 1 and {}",
                        eddy_sql::limits::MAX_PARALLELISM
                    ),
                },
                _ => unreachable!("keys were checked"),
            }
        }
        if l.max_connections == 0 || l.superuser_reserved_connections >= l.max_connections {
            anyhow::bail!(
                "superuser_reserved_connections ({}) must be less than max_connections ({})",
                l.superuser_reserved_connections,
                l.max_connections
            );
        }
        if l.http_max_connections == 0 || l.http_max_connections_per_client == 0 {
            anyhow::bail!(
                "http_max_connections and http_max_connections_per_client must be positive"
            );
        }
        Ok(l)
    }
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
            limits: Limits::resolve(file.limits, |k| std::env::var(k).ok())?,
            object_store_environment: match std::env::var("EDDY_OBJECT_STORE_CREDENTIALS")
                .ok()
                .or(file.object_store_credentials)
                .as_deref()
            {
                None | Some("statement") => false,
                Some("environment") => true,
                Some(other) => anyhow::bail!(
                    "object_store_credentials must be 'statement' or 'environment', got {other:?}"
                ),
            },
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
    fn limits_come_from_the_file_and_the_environment() {
        let file: FileConfig = toml::from_str(
            "[limits]\nmax_connections = 20\nmax_model_size = \"64MB\"\nhttp_header_timeout = \"500ms\"\n",
        )
        .unwrap();
        let env = |k: &str| (k == "EDDY_MAX_CONNECTIONS").then(|| "30".to_string());
        let l = Limits::resolve(file.limits, env).unwrap();
        assert_eq!(l.max_connections, 30);
        assert_eq!(l.engine.max_model_bytes, 64 << 20);
        assert_eq!(l.http_header_timeout, std::time::Duration::from_millis(500));
        let file: FileConfig = toml::from_str("[limits]\nmax_conections = 20\n").unwrap();
        let err = Limits::resolve(file.limits, |_| None).unwrap_err();
        assert!(format!("{err:#}").contains("max_conections"), "{err:#}");
        let env = |k: &str| (k == "EDDY_QUERY_MEMORY_LIMIT").then(|| "lots".to_string());
        assert!(Limits::resolve(None, env).is_err());
        let env = |k: &str| (k == "EDDY_SUPERUSER_RESERVED_CONNECTIONS").then(|| "100".to_string());
        assert!(Limits::resolve(None, env).is_err());
    }

    #[test]
    fn parallelism_defaults_to_the_cores_and_is_bounded() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            Limits::resolve(None, |_| None).unwrap().engine.parallelism,
            cores
        );
        let file: FileConfig = toml::from_str("[limits]\nparallelism = 3\n").unwrap();
        assert_eq!(
            Limits::resolve(file.limits, |_| None)
                .unwrap()
                .engine
                .parallelism,
            3
        );
        for bad in ["0", "257", "two"] {
            let env = |k: &str| (k == "EDDY_PARALLELISM").then(|| bad.to_string());
            let err = Limits::resolve(None, env).unwrap_err();
            assert!(format!("{err:#}").contains("parallelism"), "{bad}: {err:#}");
        }
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
