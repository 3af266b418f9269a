//! Session settings: what SET, SHOW, RESET, `current_setting` and `set_config` read and write.
//!
//! Any name is accepted and remembered for the session (migration files start with
//! `SET lock_timeout = ...`); the well-known ones have PostgreSQL's defaults.

use std::collections::BTreeMap;

/// The PostgreSQL version Eddy reports; keep `server_version_num` in step.
pub const SERVER_VERSION: &str = "16.6";
pub const SERVER_VERSION_NUM: &str = "160006";

/// (canonical name, default value)
const DEFAULTS: &[(&str, &str)] = &[
    ("server_version", SERVER_VERSION),
    ("server_version_num", SERVER_VERSION_NUM),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("search_path", "\"$user\", public"),
    ("application_name", ""),
    ("is_superuser", "on"),
    ("transaction_isolation", "read committed"),
    ("default_transaction_isolation", "read committed"),
    ("transaction_read_only", "off"),
    ("default_transaction_read_only", "off"),
    ("in_hot_standby", "off"),
    ("statement_timeout", "0"),
    ("lock_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
    ("idle_session_timeout", "0"),
    ("max_identifier_length", "63"),
    ("client_min_messages", "notice"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("max_connections", "100"),
    ("block_size", "8192"),
    ("lc_messages", "C"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
];

#[derive(Debug, Clone)]
pub struct Settings {
    /// Keyed by lower-cased name: (name as first spelled, value).
    values: BTreeMap<String, (String, String)>,
    /// Values the client gave at connection start (`application_name`, …): what RESET goes
    /// back to, as in PostgreSQL.
    startup: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        let values = DEFAULTS
            .iter()
            .map(|(k, v)| (k.to_lowercase(), (k.to_string(), v.to_string())))
            .collect();
        Self {
            values,
            startup: BTreeMap::new(),
        }
    }
}

impl Settings {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(&name.to_lowercase())
            .map(|(_, v)| v.as_str())
    }

    /// The name as PostgreSQL spells it in SHOW's column header.
    pub fn display_name(&self, name: &str) -> String {
        self.values
            .get(&name.to_lowercase())
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| name.to_lowercase())
    }

    pub fn set(&mut self, name: &str, value: String) {
        let key = name.to_lowercase();
        let display = DEFAULTS
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map_or(key.clone(), |(k, _)| k.to_string());
        self.values.insert(key, (display, value));
    }

    /// Sets a value given at connection start, which RESET returns to.
    pub fn set_startup(&mut self, name: &str, value: String) {
        self.startup.insert(name.to_lowercase(), value.clone());
        self.set(name, value);
    }

    pub fn reset(&mut self, name: &str) {
        let key = name.to_lowercase();
        if let Some(v) = self.startup.get(&key).cloned() {
            self.set(name, v);
            return;
        }
        match DEFAULTS.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Some((k, v)) => {
                self.values.insert(key, (k.to_string(), v.to_string()));
            }
            None => {
                self.values.remove(&key);
            }
        }
    }

    pub fn reset_all(&mut self) {
        let startup = std::mem::take(&mut self.startup);
        *self = Settings::default();
        for (k, v) in &startup {
            self.set(k, v.clone());
        }
        self.startup = startup;
    }

    /// A timeout setting (`statement_timeout`, `idle_in_transaction_session_timeout`, ...) as
    /// PostgreSQL reads it: a number of milliseconds, or a number with a unit (us, ms, s, min,
    /// h, d); None when it is 0 (off) or unreadable.
    pub fn timeout(&self, name: &str) -> Option<std::time::Duration> {
        parse_timeout(self.get(name)?)
    }

    pub fn all(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.values().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The schemas of `search_path`, `$user` expanded, quotes removed.
    pub fn search_path(&self, user: &str) -> Vec<String> {
        self.get("search_path")
            .unwrap_or("public")
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .map(|s| if s == "$user" { user.to_string() } else { s })
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// See [`Settings::timeout`].
pub fn parse_timeout(text: &str) -> Option<std::time::Duration> {
    let t = text.trim().trim_matches('\'');
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n.parse().ok()?;
    let ms = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => n,
        "us" => n / 1000.0,
        "s" => n * 1e3,
        "min" => n * 60e3,
        "h" => n * 3600e3,
        "d" => n * 86_400e3,
        _ => return None,
    };
    (ms >= 1.0 && ms.is_finite()).then(|| std::time::Duration::from_micros((ms * 1000.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_as_postgresql_reads_them() {
        use std::time::Duration;
        assert_eq!(parse_timeout("0"), None);
        assert_eq!(parse_timeout("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_timeout("2min"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout("'250ms'"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("soon"), None);
    }

    #[test]
    fn unknown_settings_are_remembered_and_names_are_case_insensitive() {
        let mut s = Settings::default();
        s.set("lock_timeout", "5s".into());
        s.set("my.custom", "x".into());
        assert_eq!(s.get("LOCK_TIMEOUT"), Some("5s"));
        assert_eq!(s.get("my.custom"), Some("x"));
        assert_eq!(s.display_name("datestyle"), "DateStyle");
        s.reset("lock_timeout");
        assert_eq!(s.get("lock_timeout"), Some("0"));
        s.reset_all();
        assert_eq!(s.get("my.custom"), None);
    }

    #[test]
    fn search_path_expands_user() {
        let s = Settings::default();
        assert_eq!(
            s.search_path("bob"),
            vec!["bob".to_string(), "public".to_string()]
        );
    }
}
