//! `WITH (key = 'value', ...)` options of CREATE SOURCE / SINK.
//!
//! Every connector takes the keys it knows; [`Options::finish`] then refuses whatever is left,
//! naming the key, so a typo is an error instead of a silently ignored setting. Values of
//! secret keys (passwords, SASL and TLS key material) never appear in `Debug`, errors or
//! SHOW output: use [`Options::redacted`] to display options.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// Option keys whose values are shown as given: connection targets, formats, sizes and
/// timings. Every other key's value is shown as `***` (a new connector's credential is hidden
/// before anyone thinks of it); URLs among the shown values lose their credentials
/// ([`strip_url_credentials`]).
const SHOWN: &[&str] = &[
    "connector",
    "topic",
    "format",
    "csv.delimiter",
    "csv.header",
    "group.id",
    "startup",
    "startup.timestamp",
    "max_event_bytes",
    "bootstrap.servers",
    "path",
    "watch",
    "partition_by",
    "rollover_size",
    "upload_part_size",
    "spool_limit",
    "checkpoint_interval",
    "retention_rows",
    "key",
    "delivery",
    "transactional.id",
    "url",
    "batch_size",
    "timeout",
    "max_retries",
    "retry_backoff",
    "idempotency_key",
    "rows",
    "rows_per_second",
    "seed",
    "events",
    "event_rate",
    "events_per_second",
    "base_time",
    "fast",
    "late_events",
    "watermark.idle_timeout",
    "table",
    "intra_threads",
    "features",
    "aws_region",
    "aws_endpoint",
    "aws_allow_http",
    "aws_virtual_hosted_style_request",
    "aws_bucket",
    "google_bucket",
    "azure_container_name",
    "azure_storage_account_name",
    "azure_endpoint",
];

/// Key prefixes whose values are shown (datagen's per-field settings).
const SHOWN_PREFIXES: &[&str] = &["fields."];

/// librdkafka settings (`properties.<name>`) whose values are shown.
const SHOWN_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "bootstrap.server",
    "client.id",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.kerberos.service.name",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
    "isolation.level",
    "auto.offset.reset",
    "compression.type",
    "compression.codec",
    "acks",
    "linger.ms",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "message.max.bytes",
    "session.timeout.ms",
    "socket.timeout.ms",
];

/// Whether an option's value may be shown (SHOW, catalogs, errors, logs): only keys known to
/// be harmless; everything else is a possible credential.
pub fn is_shown(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if let Some(property) = key.strip_prefix("properties.") {
        return SHOWN_PROPERTIES.contains(&property);
    }
    SHOWN.contains(&key.as_str()) || SHOWN_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Keys whose values are credentials (or may be): the complement of [`is_shown`].
pub fn is_secret(key: &str) -> bool {
    !is_shown(key)
}

/// An option's value as it may be displayed: `***` for keys not known to be harmless, and
/// URLs without their credentials.
pub fn shown_value(key: &str, value: &str) -> String {
    if is_secret(key) {
        "***".to_string()
    } else {
        strip_url_credentials(value)
    }
}

/// Removes credentials from the URLs in `text`: the password of `user:password@host`
/// (`user:***@host`), and every query parameter's value (`?token=***`: SAS tokens, signed
/// URLs). Text without URLs comes back unchanged.
pub fn strip_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        // The URL runs to the next whitespace, comma or quote.
        let end = rest
            .find(|c: char| c.is_whitespace() || c == ',' || c == '\'' || c == '"')
            .unwrap_or(rest.len());
        let (url, after) = rest.split_at(end);
        let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let (authority, path) = url.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                out.push_str(user);
                if userinfo.contains(':') {
                    out.push_str(":***");
                }
                out.push('@');
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        match path.split_once('?') {
            Some((p, query)) => {
                out.push_str(p);
                out.push('?');
                let (query, fragment) = query.split_once('#').unwrap_or((query, ""));
                let params: Vec<String> = query
                    .split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some((k, _)) => format!("{k}=***"),
                        None => kv.to_string(),
                    })
                    .collect();
                out.push_str(&params.join("&"));
                if !fragment.is_empty() {
                    out.push('#');
                    out.push_str(fragment);
                }
            }
            None => out.push_str(path),
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Options {
    values: BTreeMap<String, String>,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl Options {
    pub fn new(values: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (k, v) in values {
            let k = k.to_ascii_lowercase();
            if map.insert(k.clone(), v).is_some() {
                return Err(Error::Options(format!("option \"{k}\" is given twice")));
            }
        }
        Ok(Self { values: map })
    }

    /// The options as `key = value` pairs with secrets replaced by `'***'`.
    pub fn redacted(&self) -> Vec<(String, String)> {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), shown_value(k, v)))
            .collect()
    }

    pub fn all(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Takes a key out of a working copy (see [`Options::finish`]).
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    pub fn required(&mut self, key: &str) -> Result<String> {
        self.take(key)
            .ok_or_else(|| Error::Options(format!("option \"{key}\" is required")))
    }

    /// Takes every key starting with `prefix`, with the prefix removed.
    pub fn take_prefixed(&mut self, prefix: &str) -> BTreeMap<String, String> {
        let keys: Vec<String> = self
            .values
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.into_iter()
            .map(|k| {
                let v = self.values.remove(&k).expect("key listed");
                (k[prefix.len()..].to_string(), v)
            })
            .collect()
    }

    pub fn parse<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                let shown = shown_value(key, &v);
                Error::Options(format!("invalid value for option \"{key}\": \"{shown}\""))
            }),
        }
    }

    pub fn bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.take(key).map(|v| v.to_ascii_lowercase()) {
            None => Ok(None),
            Some(v) if matches!(v.as_str(), "true" | "on" | "yes" | "1") => Ok(Some(true)),
            Some(v) if matches!(v.as_str(), "false" | "off" | "no" | "0") => Ok(Some(false)),
            Some(v) => Err(Error::Options(format!(
                "invalid value for option \"{key}\": \"{v}\" (expected true or false)"
            ))),
        }
    }

    /// A duration written as `500ms`, `5s`, `2m`, `1h` or a bare number of milliseconds.
    pub fn duration(&mut self, key: &str) -> Result<Option<Duration>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => parse_duration(&v).map(Some).ok_or_else(|| {
                Error::Options(format!(
                    "invalid value for option \"{key}\": \"{v}\" (expected e.g. 500ms, 5s, 2m)"
                ))
            }),
        }
    }

    /// Refuses the keys nobody took.
    pub fn finish(self) -> Result<()> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(k) => Err(Error::Options(format!("unknown option \"{k}\""))),
        }
    }
}

/// `"12.5 kb"` → (12.5, "kb"): the leading number and the lower-case unit after it.
fn number_and_unit(text: &str) -> Option<(f64, String)> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    Some((num.parse().ok()?, unit.trim().to_string()))
}

pub fn parse_duration(text: &str) -> Option<Duration> {
    let (n, unit) = number_and_unit(text)?;
    let ms = match unit.as_str() {
        "" | "ms" => n,
        "s" | "sec" | "second" | "seconds" => n * 1e3,
        "m" | "min" | "minute" | "minutes" => n * 60e3,
        "h" | "hour" | "hours" => n * 3600e3,
        _ => return None,
    };
    (ms >= 0.0 && ms.is_finite()).then(|| Duration::from_micros((ms * 1e3) as u64))
}

/// A size such as `128MB`, `64 KiB`, `1GB` or `4096` (bytes); units are powers of 1024.
pub fn parse_size(text: &str) -> Option<u64> {
    let (n, unit) = number_and_unit(text)?;
    let factor = match unit.as_str() {
        "" | "b" => 1.0,
        "kb" | "kib" | "k" => 1024.0,
        "mb" | "mib" | "m" => 1024.0 * 1024.0,
        "gb" | "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = n * factor;
    (bytes >= 1.0 && bytes.is_finite()).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("128MB"), Some(128 << 20));
        assert_eq!(parse_size("20 KiB"), Some(20 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }

    fn opts(pairs: &[(&str, &str)]) -> Options {
        Options::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn unknown_keys_are_named() {
        let mut o = opts(&[("topic", "t"), ("tpoic", "x")]);
        assert_eq!(o.take("topic").as_deref(), Some("t"));
        let err = o.finish().unwrap_err().to_string();
        assert!(err.contains("\"tpoic\""), "{err}");
    }

    #[test]
    fn secrets_never_show() {
        let o = opts(&[("properties.sasl.password", "hunter2"), ("topic", "t")]);
        let shown = format!("{o:?} {:?}", o.redacted());
        assert!(!shown.contains("hunter2"), "{shown}");
        let mut o = o;
        let err = o.parse::<u32>("properties.sasl.password").unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn only_harmless_options_show_and_urls_lose_their_credentials() {
        let o = opts(&[
            ("azure_storage_account_key", "AZKEY"),
            ("google_service_account_key", "GKEY"),
            ("headers.x-api-key", "APIKEY"),
            ("headers.cookie", "session=COOKIE"),
            (
                "url",
                "https://bob:HUNTER2@hooks.example/alert?token=TOKEN&v=1",
            ),
            ("bootstrap.servers", "broker:9092"),
            ("properties.security.protocol", "SASL_SSL"),
            ("fields.device.kind", "sequence"),
        ]);
        let shown = format!("{:?}", o.redacted());
        for secret in ["AZKEY", "GKEY", "APIKEY", "COOKIE", "HUNTER2", "TOKEN"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        for visible in [
            "broker:9092",
            "SASL_SSL",
            "sequence",
            "https://bob:***@hooks.example/alert?token=***&v=***",
        ] {
            assert!(shown.contains(visible), "{visible} not in {shown}");
        }
        assert_eq!(
            strip_url_credentials("s3://bucket/path and http://u:p@h:1/x, done"),
            "s3://bucket/path and http://u:***@h:1/x, done"
        );
        assert_eq!(strip_url_credentials("no urls here"), "no urls here");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("100"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("fast"), None);
    }
}
