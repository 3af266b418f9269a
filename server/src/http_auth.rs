//! Authentication on the HTTP API, with the same roles as the Postgres listener: HTTP basic
//! authentication (`user:password`), or a bearer token from `POST /v1/auth/token` (itself
//! called with basic authentication), valid for an hour. `/healthz` stays open for probes.
//! With authentication off (trust) every request passes.
//!
//! A remembered login (a verified password for a minute, a token for an hour) lasts only while
//! the role exists, may log in and keeps the same password. Password checks run after the
//! client's throttle delay, on blocking threads, at most [`VERIFY_SLOTS`] at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use eddy_sql::Engine;
use parking_lot::Mutex;

use crate::pg::auth::{Method, credential_stamp, password_matches};
use crate::pg::handler::Authentication;

const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// A verified password is remembered this long, so that every request does not pay for
/// PBKDF2's 4096 rounds.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Password checks (PBKDF2) running at once; more wait, up to [`VERIFY_WAIT`].
const VERIFY_SLOTS: usize = 2;
const VERIFY_WAIT: Duration = Duration::from_secs(10);
/// Tokens kept at most; issuing one more drops the one that expires first.
const MAX_TOKENS: usize = 10_000;
/// Verified passwords remembered at most.
const MAX_VERIFIED: usize = 10_000;

/// (user, SHA-256 of the password) of a verified login; remembered with when it was verified
/// and the credential stamp it was verified under.
type Login = (String, Vec<u8>);

/// A bearer token's user, expiry, and the credential stamp it was issued under.
struct Token {
    user: String,
    expires: Instant,
    stamp: Vec<u8>,
}

pub struct HttpAuth {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authentication>,
    tokens: Mutex<HashMap<String, Token>>,
    verified: Mutex<HashMap<Login, (Instant, Vec<u8>)>>,
    verify_slots: tokio::sync::Semaphore,
    /// Who a request runs as when authentication is off and it names no user.
    default_user: String,
}

impl HttpAuth {
    pub fn new(engine: Arc<Engine>, auth: Arc<Authentication>) -> Self {
        Self {
            engine,
            auth,
            tokens: Mutex::default(),
            verified: Mutex::default(),
            verify_slots: tokio::sync::Semaphore::new(VERIFY_SLOTS),
            default_user: crate::config::DEFAULT_ADMIN_USER.to_string(),
        }
    }

    pub fn with_default_user(mut self, user: String) -> Self {
        self.default_user = user;
        self
    }

    /// The user a request's basic credentials name, unchecked (authentication off).
    fn named_user(&self, headers: &HeaderMap) -> String {
        authorization(headers, "Basic ")
            .and_then(|encoded| STANDARD.decode(encoded).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|d| d.split_once(':').map(|(u, _)| u.to_string()))
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| self.default_user.clone())
    }

    /// The user a request's basic credentials name, when the password is right.
    async fn basic_user(&self, headers: &HeaderMap) -> Result<Option<String>, Response> {
        let Some(encoded) = authorization(headers, "Basic ") else {
            return Ok(None);
        };
        let decoded = STANDARD
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| unauthorized("malformed basic credentials"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| unauthorized("malformed basic credentials"))?;
        let fingerprint = ring::digest::digest(&ring::digest::SHA256, password.as_bytes())
            .as_ref()
            .to_vec();
        let key = (user.to_string(), fingerprint);
        let now = Instant::now();
        let stamp = credential_stamp(&self.engine, user);
        {
            let mut verified = self.verified.lock();
            verified.retain(|_, (at, _)| now.duration_since(*at) < VERIFIED_FOR);
            match (verified.get(&key), &stamp) {
                (Some((_, was)), Some(is)) if was == is => return Ok(Some(user.to_string())),
                (Some(_), _) => {
                    verified.remove(&key);
                }
                (None, _) => {}
            }
        }
        let client = format!("http:{user}");
        // A client that keeps failing waits before its password is even checked.
        tokio::time::sleep(self.auth.throttle.pending_delay(&client)).await;
        let ok = match tokio::time::timeout(VERIFY_WAIT, self.verify_slots.acquire()).await {
            Ok(Ok(_permit)) => {
                let (engine, u, p) = (self.engine.clone(), user.to_string(), password.to_string());
                tokio::task::spawn_blocking(move || password_matches(&engine, &u, &p))
                    .await
                    .unwrap_or(false)
            }
            _ => return Err(busy()),
        };
        if !ok {
            let (failures, delay) = self.auth.throttle.failed(&client);
            tracing::warn!("failed HTTP login for user {user:?} ({failures} in a row)");
            tokio::time::sleep(delay).await;
            return Err(unauthorized(&format!(
                "password authentication failed for user \"{user}\""
            )));
        }
        self.auth.throttle.succeeded(&client);
        if let Some(stamp) = stamp {
            let mut verified = self.verified.lock();
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
            verified.insert(key, (now, stamp));
        }
        Ok(Some(user.to_string()))
    }

    /// The user of a bearer token, while it has not expired and its role can still log in
    /// with the password it was issued under (a token outlives neither DROP ROLE, NOLOGIN nor
    /// a new password).
    fn token_user(&self, headers: &HeaderMap) -> Option<String> {
        let token = authorization(headers, "Bearer ")?;
        let mut tokens = self.tokens.lock();
        let now = Instant::now();
        tokens.retain(|_, t| t.expires > now);
        let t = tokens.get(token)?;
        if credential_stamp(&self.engine, &t.user).as_ref() != Some(&t.stamp) {
            tokens.remove(token);
            return None;
        }
        Some(t.user.clone())
    }

    fn issue(&self, user: String, stamp: Vec<u8>) -> String {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .expect("the system's random source works");
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let mut tokens = self.tokens.lock();
        tokens.retain(|_, t| t.expires > now);
        if tokens.len() >= MAX_TOKENS
            && let Some(first) = tokens
                .iter()
                .min_by_key(|(_, t)| t.expires)
                .map(|(k, _)| k.clone())
        {
            tokens.remove(&first);
        }
        tokens.insert(
            token.clone(),
            Token {
                user,
                expires: now + TOKEN_LIFETIME,
                stamp,
            },
        );
        token
    }
}

fn authorization<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value
        .get(..scheme.len())
        .filter(|s| s.eq_ignore_ascii_case(scheme))
        .map(|_| value[scheme.len()..].trim())
}

fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        axum::Json(serde_json::json!({ "error": "too many logins in progress; try again" })),
    )
        .into_response()
}

fn unauthorized(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"eddy\", charset=\"UTF-8\"",
        )],
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// Lets a request through when its credentials check out (or authentication is off).
/// The request carries its user ([`crate::http_sql::HttpUser`]) on to the handlers.
pub async fn require(
    State(auth): State<Arc<HttpAuth>>,
    mut request: Request,
    next: Next,
) -> Response {
    use crate::http_sql::HttpUser;
    if auth.auth.method == Method::Trust || request.uri().path() == "/healthz" {
        let user = auth.named_user(request.headers());
        request.extensions_mut().insert(HttpUser(user));
        return next.run(request).await;
    }
    if let Some(user) = auth.token_user(request.headers()) {
        request.extensions_mut().insert(HttpUser(user));
        return next.run(request).await;
    }
    match auth.basic_user(request.headers()).await {
        Ok(Some(user)) => {
            request.extensions_mut().insert(HttpUser(user));
            next.run(request).await
        }
        Ok(None) => unauthorized("authentication required: basic credentials or a bearer token"),
        Err(response) => response,
    }
}

/// `POST /v1/auth/token`: a bearer token for the user of the basic credentials.
pub async fn issue_token(State(auth): State<Arc<HttpAuth>>, headers: HeaderMap) -> Response {
    let user = match auth.basic_user(&headers).await {
        Ok(Some(user)) => user,
        Ok(None) => return unauthorized("POST /v1/auth/token needs basic credentials"),
        Err(response) => return response,
    };
    let Some(stamp) = credential_stamp(&auth.engine, &user) else {
        return unauthorized(&format!("role \"{user}\" cannot log in"));
    };
    let token = auth.issue(user, stamp);
    axum::Json(serde_json::json!({
        "token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME.as_secs(),
    }))
    .into_response()
}
