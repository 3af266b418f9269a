//! Password secrets and the server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL
//! speaks it, with `tls-server-end-point` channel binding for SCRAM-SHA-256-PLUS; MD5 for
//! legacy clients.
//!
//! A role's password is never stored: only its SCRAM verifier (salt, iteration count,
//! StoredKey, ServerKey), which proves a client knows the password without allowing anyone
//! who reads it to log in, and, when MD5 is enabled, PostgreSQL's `md5(password || user)`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest, Md5};
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use serde::{Deserialize, Serialize};

/// PostgreSQL's default (`scram_iterations`).
pub const SCRAM_ITERATIONS: u32 = 4096;
/// The most PBKDF2 rounds a verifier may ask for. HTTP basic authentication computes them for
/// every attempt that names the role, so a pre-hashed verifier with a huge count would cost
/// minutes of CPU per unauthenticated request; a million rounds is about a second.
pub const MAX_SCRAM_ITERATIONS: u32 = 1_000_000;
/// Length of the salts Eddy makes (PostgreSQL's SCRAM_DEFAULT_SALT_LEN).
pub const SCRAM_SALT_LEN: usize = 16;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    bytes
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    tag.as_ref().try_into().expect("HMAC-SHA-256 is 32 bytes")
}

/// Equality in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn sha256(data: &[u8]) -> [u8; 32] {
    digest::digest(&digest::SHA256, data)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// A role's SCRAM-SHA-256 verifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramSecret {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramSecret {
    /// The verifier of a password, with a fresh random salt.
    pub fn new(password: &str) -> Self {
        Self::with_salt(password, &random_bytes::<16>(), SCRAM_ITERATIONS)
    }

    fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = Self::salted_password(password, salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Self {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key).to_vec(),
            server_key: hmac_sha256(&salted, b"Server Key").to_vec(),
        }
    }

    fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut out = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(iterations.max(1)).expect("positive"),
            salt,
            password.as_bytes(),
            &mut out,
        );
        out
    }

    /// Whether `password` is the one this verifier was made from (HTTP basic auth). A
    /// verifier whose iteration count is out of range never matches (and costs nothing).
    pub fn verify(&self, password: &str) -> bool {
        if !(1..=MAX_SCRAM_ITERATIONS).contains(&self.iterations) {
            return false;
        }
        let again = Self::with_salt(password, &self.salt, self.iterations);
        same(&again.stored_key, &self.stored_key)
    }

    /// PostgreSQL's text form, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`,
    /// which `CREATE ROLE … PASSWORD` also accepts as an already-hashed password.
    pub fn to_pg_text(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.stored_key),
            B64.encode(&self.server_key)
        )
    }

    /// A verifier whose keys match no password: what an exchange for an unknown role runs on,
    /// with the role's deterministic mock salt, so its answer looks like a real role's.
    pub fn mock(salt: &[u8]) -> Self {
        Self {
            iterations: SCRAM_ITERATIONS,
            salt: salt.to_vec(),
            stored_key: random_bytes::<32>().to_vec(),
            server_key: random_bytes::<32>().to_vec(),
        }
    }

    /// The salt an unknown role gets, the same on every attempt (PostgreSQL's
    /// scram_mock_salt): SHA-256 of the server's secret nonce and the user name.
    pub fn mock_salt(nonce: &[u8], user: &str) -> Vec<u8> {
        let mut input = nonce.to_vec();
        input.extend_from_slice(user.as_bytes());
        sha256(&input)[..SCRAM_SALT_LEN].to_vec()
    }

    /// Whether this verifier's iteration count is within what Eddy accepts.
    pub fn iterations_allowed(&self) -> bool {
        (1..=MAX_SCRAM_ITERATIONS).contains(&self.iterations)
    }

    pub fn parse_pg_text(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let secret = Self {
            iterations: iterations.parse().ok()?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?,
            server_key: B64.decode(server).ok()?,
        };
        (secret.stored_key.len() == 32 && secret.server_key.len() == 32).then_some(secret)
    }
}

/// PostgreSQL's MD5 password hash: `md5` followed by hex(md5(password || user)).
pub fn md5_secret(user: &str, password: &str) -> String {
    format!("md5{}", md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// Checks the response to an AuthenticationMD5Password challenge:
/// `md5` + hex(md5(hex-of-stored-hash || salt)).
pub fn md5_verify(stored: &str, salt: [u8; 4], response: &str) -> bool {
    let Some(hash) = stored.strip_prefix("md5") else {
        return false;
    };
    let expected = format!("md5{}", md5_hex(&[hash.as_bytes(), &salt]));
    same(expected.as_bytes(), response.as_bytes())
}

/// Why a SCRAM exchange failed (the client is told only that authentication failed).
#[derive(Debug, PartialEq, Eq)]
pub enum ScramError {
    /// The messages do not follow the protocol.
    Protocol(String),
    /// Wrong password, unknown user, or a channel binding that does not match.
    Rejected,
}

/// A SCRAM exchange after the server's first message, waiting for the client's final one.
pub struct ScramExchange {
    secret: ScramSecret,
    /// False when the role does not exist or has no password: the exchange runs on a made-up
    /// verifier (so the server does not reveal which users exist) and is then refused.
    real: bool,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// The GS2 header and channel-binding data the client's final message must echo.
    expected_binding: Vec<u8>,
}

impl ScramExchange {
    /// Handles the client's first message. `secret` is the role's verifier (None when there
    /// is none: then the exchange runs on a mock verifier with `mock_salt`); `channel_binding` is the `tls-server-end-point` data of this connection, if
    /// it is TLS. Returns the exchange and the server's first message.
    pub fn start(
        mechanism: &str,
        client_first: &[u8],
        secret: Option<&ScramSecret>,
        mock_salt: &[u8],
        channel_binding: Option<&[u8]>,
    ) -> Result<(Self, String), ScramError> {
        let text = std::str::from_utf8(client_first)
            .map_err(|_| ScramError::Protocol("client-first-message is not UTF-8".into()))?;
        // gs2-header: "n,,", "y,,", or "p=tls-server-end-point,,"
        let mut parts = text.splitn(3, ',');
        let cbind_flag = parts.next().unwrap_or_default();
        let authzid = parts
            .next()
            .ok_or_else(|| ScramError::Protocol("malformed client-first-message".into()))?;
        let bare = parts
            .next()
            .ok_or_else(|| ScramError::Protocol("malformed client-first-message".into()))?;
        if !authzid.is_empty() {
            return Err(ScramError::Protocol(
                "authorization identities are not supported".into(),
            ));
        }
        let plus = mechanism == "SCRAM-SHA-256-PLUS";
        let header = format!("{cbind_flag},,");
        let expected_binding = match (cbind_flag, plus) {
            ("p=tls-server-end-point", true) => {
                let data = channel_binding.ok_or_else(|| {
                    ScramError::Protocol("channel binding needs a TLS connection".into())
                })?;
                let mut v = header.into_bytes();
                v.extend_from_slice(data);
                v
            }
            ("n", false) => header.into_bytes(),
            // The client could bind but believes the server cannot: a downgrade when the
            // connection is TLS (the server offers PLUS there).
            ("y", false) if channel_binding.is_none() => header.into_bytes(),
            ("y", false) => return Err(ScramError::Rejected),
            _ => {
                return Err(ScramError::Protocol(format!(
                    "unexpected channel binding flag {cbind_flag:?} for {mechanism}"
                )));
            }
        };
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ScramError::Protocol("client-first-message has no nonce".into()))?;
        let (secret, real) = match secret {
            Some(s) => (s.clone(), true),
            None => (ScramSecret::mock(mock_salt), false),
        };
        let nonce = format!("{client_nonce}{}", B64.encode(random_bytes::<18>()));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        Ok((
            Self {
                secret,
                real,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
                expected_binding,
            },
            server_first,
        ))
    }

    /// Checks the client's final message; returns the server's final message on success.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(client_final)
            .map_err(|_| ScramError::Protocol("client-final-message is not UTF-8".into()))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or_else(|| ScramError::Protocol("client-final-message has no proof".into()))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                binding = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let binding = B64
            .decode(binding.unwrap_or_default())
            .map_err(|_| ScramError::Protocol("malformed channel binding".into()))?;
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Protocol("nonce mismatch".into()));
        }
        if binding != self.expected_binding {
            return Err(ScramError::Rejected);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Protocol("malformed proof".into()))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac_sha256(&self.secret.stored_key, auth_message.as_bytes());
        if proof.len() != 32 {
            return Err(ScramError::Rejected);
        }
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let matches = same(&sha256(&client_key), &self.secret.stored_key);
        if !(matches && self.real) {
            return Err(ScramError::Rejected);
        }
        let server_signature = hmac_sha256(&self.secret.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// The `tls-server-end-point` channel binding of a certificate (RFC 5929): its SHA-256 hash,
/// for certificates signed with SHA-256 or a weaker hash (Eddy's own are ECDSA P-256/SHA-256).
pub fn tls_server_end_point(certificate_der: &[u8]) -> Vec<u8> {
    sha256(certificate_der).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example exchange (user "user", password "pencil").
    #[test]
    fn rfc7677_exchange() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let secret = ScramSecret::with_salt("pencil", &salt, 4096);
        let client_first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let (mut exchange, _) =
            ScramExchange::start("SCRAM-SHA-256", client_first, Some(&secret), &[], None).unwrap();
        // Replay the RFC's server nonce.
        exchange.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        exchange.server_first = format!("r={},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", exchange.nonce);
        let final_message = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(
            exchange.finish(final_message).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn wrong_proofs_and_unknown_users_are_rejected() {
        let secret = ScramSecret::new("right");
        let (exchange, server_first) =
            ScramExchange::start("SCRAM-SHA-256", b"n,,n=,r=abc", Some(&secret), &[], None)
                .unwrap();
        let nonce = server_first.split(',').next().unwrap();
        let forged = format!("c=biws,{nonce},p={}", B64.encode([7u8; 32]));
        assert_eq!(
            exchange.finish(forged.as_bytes()),
            Err(ScramError::Rejected)
        );
        // No such user: the exchange runs, then fails.
        let (exchange, server_first) = ScramExchange::start(
            "SCRAM-SHA-256",
            b"n,,n=,r=abc",
            None,
            b"0123456789abcdef",
            None,
        )
        .unwrap();
        assert!(
            server_first.contains(",s=MDEyMzQ1Njc4OWFiY2RlZg==,i=4096"),
            "{server_first}"
        );
        let nonce = server_first.split(',').next().unwrap();
        let forged = format!("c=biws,{nonce},p={}", B64.encode([7u8; 32]));
        assert_eq!(
            exchange.finish(forged.as_bytes()),
            Err(ScramError::Rejected)
        );
    }

    #[test]
    fn unknown_roles_get_the_same_salt_on_every_attempt() {
        let nonce = [9u8; 32];
        let salt = ScramSecret::mock_salt(&nonce, "mallory");
        assert_eq!(salt, ScramSecret::mock_salt(&nonce, "mallory"));
        assert_ne!(salt, ScramSecret::mock_salt(&nonce, "alice"));
        assert_ne!(salt, ScramSecret::mock_salt(&[8u8; 32], "mallory"));
        assert_eq!(salt.len(), SCRAM_SALT_LEN);
    }

    #[test]
    fn verifiers_with_too_many_rounds_never_match_and_cost_nothing() {
        let mut secret = ScramSecret::with_salt("pw", b"salt", 1);
        assert!(secret.verify("pw"));
        secret.iterations = 1_000_000_000;
        let started = std::time::Instant::now();
        assert!(!secret.verify("pw"));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(!secret.iterations_allowed());
    }

    #[test]
    fn secrets_round_trip_and_verify() {
        let secret = ScramSecret::new("s3cret");
        assert!(secret.verify("s3cret") && !secret.verify("s3cret "));
        assert_eq!(
            ScramSecret::parse_pg_text(&secret.to_pg_text()),
            Some(secret)
        );
        assert_eq!(
            md5_secret("eddy", "pw"),
            format!("md5{}", md5_hex(&[b"pw", b"eddy"]))
        );
        let stored = md5_secret("eddy", "pw");
        let salt = [1, 2, 3, 4];
        let response = format!("md5{}", md5_hex(&[&stored.as_bytes()[3..], &salt]));
        assert!(md5_verify(&stored, salt, &response));
        assert!(!md5_verify(&stored, [0, 0, 0, 0], &response));
    }
}
