//! Password authentication on the Postgres listener: SCRAM-SHA-256 (and SCRAM-SHA-256-PLUS,
//! bound to the TLS certificate, on TLS connections), MD5 when configured, or none (trust).
//!
//! Roles and their verifiers live in the catalog ([`eddy_sql::catalog::RoleDef`]). An unknown
//! user, a role without LOGIN or without a password goes through the same exchange as a wrong
//! password and gets the same error, so the server does not tell which users exist. Failed
//! logins are counted per client address and answered ever more slowly ([`Throttle`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use eddy_sql::Engine;
use eddy_sql::auth::{ScramExchange, ScramSecret, md5_verify};
use parking_lot::Mutex;

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// No password: anyone who can connect logs in as any existing role with LOGIN
    /// (PostgreSQL's `trust`).
    Trust,
    ScramSha256,
    Md5,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "trust" | "none" | "off" => Ok(Method::Trust),
            "scram-sha-256" | "scram" => Ok(Method::ScramSha256),
            "md5" => Ok(Method::Md5),
            other => Err(format!(
                "unknown authentication method {other:?}: use scram-sha-256, md5 or trust"
            )),
        }
    }
}

/// Where a connection's authentication stands (kept in the connection's extensions).
pub enum Pending {
    /// AuthenticationSASL sent; waiting for SASLInitialResponse.
    ScramStart,
    /// The server's first message sent; waiting for the client's final one.
    ScramFinal(Box<ScramExchange>),
    /// AuthenticationMD5Password sent with this salt.
    Md5([u8; 4]),
}

pub struct PendingAuth(pub Mutex<Option<Pending>>);

/// The role a login names, if it may log in.
pub fn login_role(
    engine: &Engine,
    user: &str,
) -> Option<std::sync::Arc<eddy_sql::catalog::RoleDef>> {
    engine.catalog().role(user).filter(|r| r.login)
}

pub fn scram_secret(engine: &Engine, user: &str) -> Option<ScramSecret> {
    login_role(engine, user).and_then(|r| r.scram.clone())
}

/// Whether `password` is the user's (HTTP basic authentication), by whichever verifier the
/// role has. A user that cannot log in costs the same PBKDF2 rounds as one that can, so the
/// answer's timing does not tell which users exist.
pub fn password_matches(engine: &Engine, user: &str, password: &str) -> bool {
    static DECOY: std::sync::OnceLock<ScramSecret> = std::sync::OnceLock::new();
    let role = login_role(engine, user);
    match role.as_deref().map(|r| (&r.scram, &r.md5)) {
        Some((Some(scram), _)) => scram.verify(password),
        Some((None, Some(md5))) => *md5 == eddy_sql::auth::md5_secret(user, password),
        _ => {
            let decoy = DECOY.get_or_init(|| ScramSecret::new("no role has this password"));
            let _ = decoy.verify(password);
            false
        }
    }
}

/// What a remembered login (a verified password, a bearer token) depends on: the role still
/// exists, may log in, and has the same password verifier. None when the user cannot log in.
pub fn credential_stamp(engine: &Engine, user: &str) -> Option<Vec<u8>> {
    let role = login_role(engine, user)?;
    match (&role.scram, &role.md5) {
        (Some(scram), _) => Some(scram.stored_key.clone()),
        (None, Some(md5)) => Some(md5.as_bytes().to_vec()),
        (None, None) => None,
    }
}

pub fn md5_matches(engine: &Engine, user: &str, salt: [u8; 4], response: &str) -> bool {
    login_role(engine, user)
        .and_then(|r| r.md5.clone())
        .is_some_and(|stored| md5_verify(&stored, salt, response))
}

/// Failed logins per client (address, or user name for HTTP): after the first few, each answer waits twice as long
/// as the one before (up to 10 s), so guessing passwords is slow; a success clears the count.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

const FREE_FAILURES: u32 = 3;
const MAX_DELAY: Duration = Duration::from_secs(10);
/// At most this many clients' counts are kept.
const MAX_TRACKED: usize = 10_000;
/// A count older than this is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The wait after `n` failures in a row.
fn delay_after(n: u32) -> Duration {
    match n.checked_sub(FREE_FAILURES) {
        None | Some(0) => Duration::ZERO,
        Some(k) => (Duration::from_millis(250) * 2u32.saturating_pow(k - 1)).min(MAX_DELAY),
    }
}

impl Throttle {
    /// Records a failed login and returns how long to wait before answering it.
    pub fn failed(&self, client: &str) -> (u32, Duration) {
        let mut failures = self.failures.lock();
        let now = Instant::now();
        failures.retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
        if failures.len() >= MAX_TRACKED && !failures.contains_key(client) {
            // Many distinct names at once: forget the oldest count, not memory.
            if let Some(oldest) = failures
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
            {
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(client.to_string()).or_insert((0, now));
        entry.0 += 1;
        entry.1 = now;
        let n = entry.0;
        (n, delay_after(n))
    }

    /// How long the next answer to `client` waits already, from its earlier failures; a
    /// login is checked only after that wait, so a flood of guesses costs no CPU.
    pub fn pending_delay(&self, client: &str) -> Duration {
        let failures = self.failures.lock();
        match failures.get(client) {
            Some((n, at)) if at.elapsed() < FORGET_AFTER => {
                delay_after(*n).saturating_sub(at.elapsed())
            }
            _ => Duration::ZERO,
        }
    }

    pub fn succeeded(&self, client: &str) {
        self.failures.lock().remove(client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The median time of `n` password checks.
    fn median_check(engine: &Engine, user: &str, n: usize) -> Duration {
        let mut times: Vec<Duration> = (0..n)
            .map(|_| {
                let started = Instant::now();
                assert!(!password_matches(engine, user, "wrong"));
                started.elapsed()
            })
            .collect();
        times.sort();
        times[n / 2]
    }

    #[tokio::test]
    async fn unknown_users_cost_as_much_as_wrong_passwords() {
        let engine = Engine::in_memory();
        let session = engine.new_session("admin", "eddy");
        eddy_sql::engine::bootstrap_admin(&session, "admin", Some("right"))
            .await
            .unwrap();
        assert!(password_matches(&engine, "admin", "right"));
        let _ = median_check(&engine, "ghost", 1);
        let real = median_check(&engine, "admin", 5);
        let ghost = median_check(&engine, "ghost", 5);
        // Both run PBKDF2's 4096 rounds; without the decoy an unknown user answers at once.
        assert!(
            ghost * 3 > real && real * 3 > ghost,
            "a wrong password takes {real:?}, an unknown user {ghost:?}"
        );
    }

    #[test]
    fn failures_are_slowed_down_more_and_more_and_success_resets() {
        let t = Throttle::default();
        let ip = "10.0.0.1";
        let delays: Vec<Duration> = (0..8).map(|_| t.failed(ip).1).collect();
        assert_eq!(delays[..3], [Duration::ZERO; 3]);
        assert_eq!(delays[3], Duration::from_millis(250));
        assert_eq!(delays[4], Duration::from_millis(500));
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert!(delays[7] <= MAX_DELAY);
        assert_eq!(t.failed("10.0.0.2").1, Duration::ZERO);
        t.succeeded(ip);
        assert_eq!(t.failed(ip), (1, Duration::ZERO));
    }
}
