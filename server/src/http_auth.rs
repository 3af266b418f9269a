//! Authentication on the HTTP API, with the same roles as the Postgres listener: HTTP basic
//! authentication (`user:password`), or a bearer token from `POST /v1/auth/token` (itself
//! called with basic authentication), valid for an hour. `/healthz` stays open for probes.
//! With authentication off (trust) every request passes.

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

use crate::pg::auth::{Method, password_matches};
use crate::pg::handler::Authentication;

const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// A verified password is remembered this long, so that every request does not pay for
/// PBKDF2's 4096 rounds.
const VERIFIED_FOR: Duration = Duration::from_secs(60);

pub struct HttpAuth {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authentication>,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    verified: Mutex<HashMap<(String, Vec<u8>), Instant>>,
}

impl HttpAuth {
    pub fn new(engine: Arc<Engine>, auth: Arc<Authentication>) -> Self {
        Self {
            engine,
            auth,
            tokens: Mutex::default(),
            verified: Mutex::default(),
        }
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
        {
            let mut verified = self.verified.lock();
            verified.retain(|_, at| now.duration_since(*at) < VERIFIED_FOR);
            if verified.contains_key(&key) {
                return Ok(Some(user.to_string()));
            }
        }
        let (engine, u, p) = (self.engine.clone(), user.to_string(), password.to_string());
        let ok = tokio::task::spawn_blocking(move || password_matches(&engine, &u, &p))
            .await
            .unwrap_or(false);
        let client = format!("http:{user}");
        if !ok {
            let (failures, delay) = self.auth.throttle.failed(&client);
            tracing::warn!("failed HTTP login for user {user:?} ({failures} in a row)");
            tokio::time::sleep(delay).await;
            return Err(unauthorized(&format!(
                "password authentication failed for user \"{user}\""
            )));
        }
        self.auth.throttle.succeeded(&client);
        self.verified.lock().insert(key, now);
        Ok(Some(user.to_string()))
    }

    fn token_user(&self, headers: &HeaderMap) -> Option<String> {
        let token = authorization(headers, "Bearer ")?;
        let mut tokens = self.tokens.lock();
        let now = Instant::now();
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.get(token).map(|(user, _)| user.clone())
    }
}

fn authorization<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value
        .get(..scheme.len())
        .filter(|s| s.eq_ignore_ascii_case(scheme))
        .map(|_| value[scheme.len()..].trim())
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
pub async fn require(State(auth): State<Arc<HttpAuth>>, request: Request, next: Next) -> Response {
    if auth.auth.method == Method::Trust || request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    if auth.token_user(request.headers()).is_some() {
        return next.run(request).await;
    }
    match auth.basic_user(request.headers()).await {
        Ok(Some(_)) => next.run(request).await,
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
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source works");
    let token = URL_SAFE_NO_PAD.encode(bytes);
    auth.tokens
        .lock()
        .insert(token.clone(), (user, Instant::now() + TOKEN_LIFETIME));
    axum::Json(serde_json::json!({
        "token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME.as_secs(),
    }))
    .into_response()
}
