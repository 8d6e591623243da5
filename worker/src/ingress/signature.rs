//! Svix webhook signature verification, as Clerk's webhooks are signed.
//!
//! Signed content is `{id}.{timestamp}.{raw body}`, HMAC-SHA256 keyed with the base64 part of a
//! `whsec_` secret; `svix-signature` lists `v1,<base64>` entries separated by spaces, and any v1
//! match passes. Timestamps more than five minutes from now either way are refused (replay
//! protection). The `svix` crate does this too but cannot be had without an HTTP client and a
//! second TLS stack, so this small module, checked against Svix's published vectors, does it.

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

/// How far a timestamp may be from now, either way.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;
const SECRET_PREFIX: &str = "whsec_";
/// The id becomes the AMQP `message_id`, a short string.
const MAX_ID_LEN: usize = 255;

/// Why a request's signature was not accepted. None of them reveal the secret or the expected
/// signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    #[error("header {0} is not valid")]
    InvalidHeader(&'static str),
    #[error("timestamp is more than five minutes from now")]
    TimestampOutOfTolerance,
    #[error("no signature matches")]
    NoMatch,
}

impl SignatureError {
    /// The stable code in the 401 body and the logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::InvalidHeader(_) => "invalid_header",
            Self::TimestampOutOfTolerance => "timestamp_out_of_tolerance",
            Self::NoMatch => "invalid_signature",
        }
    }
}

/// A `CLERK_WEBHOOK_SECRET` value that cannot be used: the service refuses to start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "CLERK_WEBHOOK_SECRET is empty: set it to the signing secret (whsec_...) from Clerk's dashboard"
    )]
    Missing,
    #[error("CLERK_WEBHOOK_SECRET entry {position} is not a whsec_ secret with a base64 key")]
    Undecodable { position: usize },
}

/// The three Svix headers of one request (or their unbranded `webhook-*` twins).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
}

impl SignedHeaders {
    /// Refuses a timestamp more than [`TOLERANCE_SECONDS`] from `now` (seconds since the epoch),
    /// either way: checked before the body is read, and again by [`Verifier::verify`].
    pub fn check_timestamp(&self, now: i64) -> Result<(), SignatureError> {
        if (now - self.timestamp).abs() > TOLERANCE_SECONDS {
            return Err(SignatureError::TimestampOutOfTolerance);
        }
        Ok(())
    }

    pub fn from_headers(headers: &HeaderMap) -> Result<Self, SignatureError> {
        let id = header(headers, "svix-id", "webhook-id")?;
        let timestamp = header(headers, "svix-timestamp", "webhook-timestamp")?;
        let signature = header(headers, "svix-signature", "webhook-signature")?;
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(SignatureError::InvalidHeader("svix-id"));
        }
        let timestamp = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::InvalidHeader("svix-timestamp"))?;
        Ok(Self {
            id: id.to_owned(),
            timestamp,
            signature: signature.to_owned(),
        })
    }
}

fn header<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    unbranded: &'static str,
) -> Result<&'a str, SignatureError> {
    let value = headers
        .get(name)
        .or_else(|| headers.get(unbranded))
        .ok_or(SignatureError::MissingHeader(name))?;
    value
        .to_str()
        .map_err(|_| SignatureError::InvalidHeader(name))
}

/// Verifies signatures against every configured secret, so secrets rotate without downtime.
/// The keys are secrets: their `Debug` is redacted.
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: Vec<SecretSlice<u8>>,
}

impl Verifier {
    /// Parses space-separated `whsec_<base64>` secrets (the prefix is optional, as in Svix's
    /// libraries).
    pub fn from_secrets(raw: &str) -> Result<Self, SecretError> {
        let keys = raw
            .split_whitespace()
            .enumerate()
            .map(|(index, secret)| {
                let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
                STANDARD
                    .decode(encoded)
                    .ok()
                    .filter(|key| !key.is_empty())
                    .map(SecretSlice::from)
                    .ok_or(SecretError::Undecodable {
                        position: index + 1,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(SecretError::Missing);
        }
        Ok(Self { keys })
    }

    /// Accepts the request if its timestamp is within tolerance of `now` (seconds since the
    /// epoch) and any `v1` signature matches any secret; comparisons are constant-time.
    pub fn verify(
        &self,
        headers: &SignedHeaders,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        headers.check_timestamp(now)?;
        let candidates: Vec<Vec<u8>> = headers
            .signature
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|encoded| STANDARD.decode(encoded).ok())
            .collect();
        let matches = self.keys.iter().any(|key| {
            candidates
                .iter()
                .any(|candidate| self::matches(key.expose_secret(), headers, body, candidate))
        });
        if matches {
            Ok(())
        } else {
            Err(SignatureError::NoMatch)
        }
    }
}

fn matches(key: &[u8], headers: &SignedHeaders, body: &[u8], candidate: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(headers.id.as_bytes());
    mac.update(b".");
    mac.update(headers.timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(candidate).is_ok()
}

/// Signs like Svix does: for tests, benchmarks and tools that need to send a valid webhook.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SecretError> {
    let verifier = Verifier::from_secrets(secret)?;
    let key = verifier.keys.first().ok_or(SecretError::Missing)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.expose_secret()).map_err(|_| SecretError::Missing)?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[cfg(test)]
mod tests;
