//! `connector = 'webhook'`: rows leave as HTTP POSTs of JSON, the way alerts and actions
//! reach operators and machines.
//!
//! Options: `url` (http or https, required); `batch_size` (default 1: each request carries
//! one row as a JSON object; above 1, a JSON array of up to that many rows); `timeout` per
//! request (default 5s); `max_retries` (default 5) and `retry_backoff` (default 200ms, doubled
//! after each failure up to 10s; a 429's `Retry-After` is honoured up to 30s);
//! `idempotency_key` (a column whose value keys the row; default: a hash of the sink's name
//! and the row's JSON, so a row replayed after a crash has the key it had before); and any
//! request header as `headers.<name>` (for example `headers.authorization`).
//!
//! Every request has an `Idempotency-Key` header: the row's key, or for a batch a hash of its
//! rows' keys, with the rows' keys in `Eddy-Row-Keys`. Connection failures, timeouts, 408,
//! 429 and 5xx are retried; other answers are final. A request that never succeeds is
//! returned as failed rows, which the engine writes to the sink's dead-letter table.
//!
//! Delivery is at least once: rows after the last checkpoint are posted again after a
//! crash, with the same keys, so a receiver that remembers keys sees each row once.

use std::time::Duration;

use arrow::array::RecordBatch;
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use crate::encode;
use crate::error::{Error, Result};
use crate::options::Options;

/// An error and its causes, `outer: inner: innermost`.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Keys of a webhook sink's options (besides `headers.*`).
pub const OPTIONS: [&str; 6] = [
    "url",
    "batch_size",
    "timeout",
    "max_retries",
    "retry_backoff",
    "idempotency_key",
];

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: reqwest::Url,
    pub batch_size: usize,
    pub timeout: Duration,
    pub max_retries: u32,
    pub backoff: Duration,
    pub key_column: Option<String>,
    pub headers: HeaderMap,
}

impl WebhookConfig {
    /// Takes the webhook's options out of `o`.
    pub fn from_options(o: &mut Options) -> Result<Self> {
        let url = o.required("url")?;
        let url = reqwest::Url::parse(&url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                Error::Options(format!(
                    "invalid value for option \"url\": \"{url}\" (expected http://… or https://…)"
                ))
            })?;
        let batch_size: usize = o.parse("batch_size")?.unwrap_or(1);
        if batch_size == 0 {
            return Err(Error::Options("batch_size must be at least 1".into()));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in o.take_prefixed("headers.") {
            let header = HeaderName::try_from(name.as_str())
                .map_err(|_| Error::Options(format!("invalid header name \"{name}\"")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| Error::Options(format!("invalid value for header \"{name}\"")))?;
            headers.insert(header, value);
        }
        Ok(Self {
            url,
            batch_size,
            timeout: o.duration("timeout")?.unwrap_or(Duration::from_secs(5)),
            max_retries: o.parse("max_retries")?.unwrap_or(5),
            backoff: o
                .duration("retry_backoff")?
                .unwrap_or(Duration::from_millis(200)),
            key_column: o.take("idempotency_key"),
            headers,
        })
    }
}

/// Rows of a request that never succeeded.
#[derive(Debug, Clone)]
pub struct Failed {
    pub key: String,
    /// The row as JSON.
    pub row: String,
    pub error: String,
    pub attempts: u32,
}

pub struct Webhook {
    config: WebhookConfig,
    client: reqwest::Client,
    /// Hashed into default keys, so two sinks of the same rows key them apart.
    sink: String,
    /// The last failed attempt's error, until a request succeeds.
    last_error: Mutex<Option<String>>,
}

/// Why one attempt failed, and whether another may succeed.
struct AttemptError {
    message: String,
    retry: bool,
    wait: Option<Duration>,
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Webhook {
    pub fn new(config: WebhookConfig, sink: &str) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| Error::External(format!("webhook: {e}")))?;
        Ok(Self {
            config,
            client,
            sink: sink.to_string(),
            last_error: Mutex::default(),
        })
    }

    /// The last failed attempt's error, until a request succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// Each row's idempotency key.
    fn keys(&self, batch: &RecordBatch, rows: &encode::Rows) -> Result<Vec<String>> {
        if let Some(column) = &self.config.key_column {
            let values = encode::text_column(batch, column)?;
            return Ok(values
                .into_iter()
                .zip(rows.iter())
                .map(|(v, row)| v.unwrap_or_else(|| self.content_key(row)))
                .collect());
        }
        Ok(rows.iter().map(|row| self.content_key(row)).collect())
    }

    fn content_key(&self, row: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(self.sink.as_bytes());
        h.update([0]);
        h.update(row);
        hex(&h.finalize()[..16])
    }

    /// Posts the rows of `batch`, `batch_size` per request, each request retried until it
    /// succeeds or its retries run out; returns the rows of requests that never succeeded.
    pub async fn send(&self, batch: &RecordBatch) -> Result<Vec<Failed>> {
        let rows = encode::json_rows(batch)?;
        let keys = self.keys(batch, &rows)?;
        let mut failed = Vec::new();
        let mut start = 0;
        while start < rows.len() {
            let end = (start + self.config.batch_size).min(rows.len());
            let (body, key, row_keys) = if self.config.batch_size == 1 {
                (rows.row(start).to_vec(), keys[start].clone(), None)
            } else {
                let mut body = Vec::with_capacity(rows.bytes.len() / rows.len() * (end - start));
                body.push(b'[');
                for i in start..end {
                    if i > start {
                        body.push(b',');
                    }
                    body.extend_from_slice(rows.row(i));
                }
                body.push(b']');
                let mut h = Sha256::new();
                for k in &keys[start..end] {
                    h.update(k.as_bytes());
                    h.update([0]);
                }
                (
                    body,
                    hex(&h.finalize()[..16]),
                    Some(keys[start..end].join(",")),
                )
            };
            if let Err((error, attempts)) = self.post(body, &key, row_keys.as_deref()).await {
                for (i, key) in keys.iter().enumerate().take(end).skip(start) {
                    failed.push(Failed {
                        key: key.clone(),
                        row: String::from_utf8_lossy(rows.row(i)).into_owned(),
                        error: error.clone(),
                        attempts,
                    });
                }
            }
            start = end;
        }
        Ok(failed)
    }

    /// One request with its retries; on failure, the last error and the attempts made.
    async fn post(
        &self,
        body: Vec<u8>,
        key: &str,
        row_keys: Option<&str>,
    ) -> std::result::Result<(), (String, u32)> {
        let mut pause = self.config.backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match self.attempt(body.clone(), key, row_keys).await {
                Ok(()) => {
                    *self.last_error.lock() = None;
                    return Ok(());
                }
                Err(e) => e,
            };
            *self.last_error.lock() = Some(error.message.clone());
            if !error.retry || attempts > self.config.max_retries {
                tracing::warn!(
                    "webhook sink {}: giving up on a request after {attempts} attempts: {}",
                    self.sink,
                    error.message
                );
                return Err((error.message, attempts));
            }
            let wait = error.wait.map_or(pause, |w| w.max(pause));
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }

    async fn attempt(
        &self,
        body: Vec<u8>,
        key: &str,
        row_keys: Option<&str>,
    ) -> std::result::Result<(), AttemptError> {
        let mut request = self
            .client
            .post(self.config.url.clone())
            .headers(self.config.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(body);
        if let Some(keys) = row_keys {
            request = request.header("Eddy-Row-Keys", keys);
        }
        let response = request.send().await.map_err(|e| AttemptError {
            message: if e.is_timeout() {
                format!("no answer within {:?}", self.config.timeout)
            } else {
                // Without the URL: it may carry credentials (user:password@, ?token=).
                format!("request failed: {}", with_causes(&e.without_url()))
            },
            retry: true,
            wait: None,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let wait = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(30)));
        let text = response.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        Err(AttemptError {
            message: format!("HTTP {status}: {}", text.trim()),
            retry: status.is_server_error()
                || status == reqwest::StatusCode::REQUEST_TIMEOUT
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS,
            wait,
        })
    }
}
