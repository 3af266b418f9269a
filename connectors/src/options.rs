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

/// Keys whose values are credentials.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "credential",
        "jaas",
        "key.pem",
        "keystore",
        "api_key",
        "access_key",
        "authorization",
    ]
    .iter()
    .any(|s| key.contains(s))
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
            .map(|(k, v)| {
                let v = if is_secret(k) {
                    "***".to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
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
                let shown = if is_secret(key) { "***" } else { v.as_str() };
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
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("100"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("fast"), None);
    }
}
