//! Svix webhook signature verification, as Clerk's webhooks are signed.
//!
//! Signed content is `{id}.{timestamp}.{raw body}`, HMAC-SHA256 keyed with the base64 part of a
//! `whsec_` secret; `svix-signature` lists `v1,<base64>` entries separated by spaces, and any v1
//! match passes. Timestamps more than five minutes from now either way are refused (replay
//! protection). Each request's work is bounded whatever its headers hold: small header values,
//! few signatures, and at most one MAC per secret. The `svix` crate does this too but cannot be
//! had without an HTTP client and a second TLS stack, so this small module, checked against
//! Svix's published vectors, does it.

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::digest::CtOutput;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;

use crate::webhook_secret::{SecretError, WebhookSecret};

/// How far a timestamp may be from now, either way.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;
/// The id becomes the AMQP `message_id`, a short string.
const MAX_ID_LEN: usize = 255;
/// The largest value of any Svix header: real ones are far smaller (an id, ten digits, a few
/// 47-character signatures), and a larger one only costs parsing time.
pub const MAX_HEADER_BYTES: usize = 4096;
/// The most entries in the signature header: Svix sends one per active secret, a few while
/// secrets rotate.
pub const MAX_SIGNATURES: usize = 16;
/// Seconds since the epoch need ten digits until the year 2286; more is not a timestamp.
const MAX_TIMESTAMP_DIGITS: usize = 10;
/// An HMAC-SHA256 tag, in bytes and as padded base64 (the only spelling `STANDARD` decodes).
const TAG_LEN: usize = 32;
const ENCODED_TAG_LEN: usize = 44;

/// Each Svix header under its branded name, read first, and its unbranded twin.
const ID: (&str, &str) = ("svix-id", "webhook-id");
const TIMESTAMP: (&str, &str) = ("svix-timestamp", "webhook-timestamp");
const SIGNATURE: (&str, &str) = ("svix-signature", "webhook-signature");

type HmacSha256 = Hmac<Sha256>;
/// A computed tag; its `==` is constant-time.
type Tag = CtOutput<HmacSha256>;

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
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::InvalidHeader(_) => "invalid_header",
            Self::TimestampOutOfTolerance => "timestamp_out_of_tolerance",
            Self::NoMatch => "invalid_signature",
        }
    }
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
    /// either way: checked before the body is read, and again by [`Verifier::verify`]. Any pair
    /// of `i64`s compares without overflow.
    pub fn check_timestamp(&self, now: i64) -> Result<(), SignatureError> {
        if now.abs_diff(self.timestamp) > TOLERANCE_SECONDS.unsigned_abs() {
            return Err(SignatureError::TimestampOutOfTolerance);
        }
        Ok(())
    }

    /// Reads the three headers within the limits that keep a request's verification cheap: no
    /// value over [`MAX_HEADER_BYTES`], no more than [`MAX_SIGNATURES`] signatures, a timestamp
    /// of at most ten digits.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, SignatureError> {
        check_sizes(headers)?;
        let id = header(headers, ID)?;
        let timestamp = header(headers, TIMESTAMP)?;
        let signature = header(headers, SIGNATURE)?;
        Ok(Self {
            id: parse_id(id)?,
            timestamp: parse_timestamp(timestamp)?,
            signature: parse_signature(signature)?,
        })
    }
}

/// Refuses an oversized value under any of the six names, before anything else looks at it, so
/// an unbranded header that a branded one shadows is refused too.
fn check_sizes(headers: &HeaderMap) -> Result<(), SignatureError> {
    let names = [ID, TIMESTAMP, SIGNATURE]
        .into_iter()
        .flat_map(|(branded, unbranded)| [branded, unbranded]);
    for name in names {
        if headers
            .get_all(name)
            .iter()
            .any(|value| value.len() > MAX_HEADER_BYTES)
        {
            return Err(SignatureError::InvalidHeader(name));
        }
    }
    Ok(())
}

fn header<'a>(
    headers: &'a HeaderMap,
    (name, unbranded): (&'static str, &'static str),
) -> Result<&'a str, SignatureError> {
    let value = headers
        .get(name)
        .or_else(|| headers.get(unbranded))
        .ok_or(SignatureError::MissingHeader(name))?;
    value
        .to_str()
        .map_err(|_| SignatureError::InvalidHeader(name))
}

fn parse_id(raw: &str) -> Result<String, SignatureError> {
    if raw.is_empty() || raw.len() > MAX_ID_LEN {
        return Err(SignatureError::InvalidHeader(ID.0));
    }
    Ok(raw.to_owned())
}

/// One to ten ASCII digits, nothing else: no sign, and no surrounding whitespace, which HTTP
/// strips from every value (HTTP/1 parsers drop it, HTTP/2 forbids it), so a value still carrying
/// some was not sent by Svix.
fn parse_timestamp(raw: &str) -> Result<i64, SignatureError> {
    let invalid = SignatureError::InvalidHeader(TIMESTAMP.0);
    let digits = (1..=MAX_TIMESTAMP_DIGITS).contains(&raw.len())
        && raw.bytes().all(|byte| byte.is_ascii_digit());
    if !digits {
        return Err(invalid);
    }
    raw.parse().map_err(|_| invalid)
}

fn parse_signature(raw: &str) -> Result<String, SignatureError> {
    if entries(raw).nth(MAX_SIGNATURES).is_some() {
        return Err(SignatureError::InvalidHeader(SIGNATURE.0));
    }
    Ok(raw.to_owned())
}

/// The signature header's entries (`v1,<base64>`, or other versions), separated by spaces.
fn entries(signature: &str) -> impl Iterator<Item = &str> {
    signature.split_whitespace()
}

/// The `v1` entries that can be an HMAC-SHA256 tag, decoded; any other entry is skipped without
/// being decoded, let alone hashed.
fn v1_tags(signature: &str) -> impl Iterator<Item = [u8; TAG_LEN]> {
    entries(signature)
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter(|encoded| encoded.len() == ENCODED_TAG_LEN)
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .filter_map(|decoded| <[u8; TAG_LEN]>::try_from(decoded).ok())
}

/// Verifies signatures against every key of the webhook secret, so secrets rotate without
/// downtime.
#[derive(Clone, Debug)]
pub struct Verifier {
    secret: WebhookSecret,
}

impl Verifier {
    /// A verifier of signatures made with any key of `secret` (decoded by the settings check).
    pub fn new(secret: WebhookSecret) -> Self {
        Self { secret }
    }

    /// Accepts the request if its timestamp is within tolerance of `now` (seconds since the
    /// epoch) and any `v1` signature matches any secret. The work is bounded whatever the header
    /// holds: the signed content is MACed at most once per secret, and not at all when no entry
    /// can be a tag; each tag is compared with the candidates in constant time.
    pub fn verify(
        &self,
        headers: &SignedHeaders,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        headers.check_timestamp(now)?;
        let candidates: Vec<Tag> = v1_tags(&headers.signature)
            .map(|bytes| Tag::new(bytes.into()))
            .collect();
        if candidates.is_empty() {
            return Err(SignatureError::NoMatch);
        }
        let matches = self.secret.keys().iter().any(|key| {
            mac(key.expose_secret(), &headers.id, headers.timestamp, body)
                .is_some_and(|tag| candidates.contains(&tag))
        });
        if matches {
            Ok(())
        } else {
            Err(SignatureError::NoMatch)
        }
    }
}

/// The one place the signed content, `{id}.{timestamp}.{body}`, is MACed: the costly step,
/// which the tests count through here.
fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Option<Tag> {
    #[cfg(test)]
    mac_count::record();
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac.finalize())
}

/// Signs like Svix does: for tests, benchmarks and tools that need to send a valid webhook.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SecretError> {
    let secret = WebhookSecret::parse(secret)?;
    let key = secret.keys().first().ok_or(SecretError::Missing)?;
    let tag = mac(key.expose_secret(), id, timestamp, body).ok_or(SecretError::Missing)?;
    Ok(format!("v1,{}", STANDARD.encode(tag.into_bytes())))
}

/// Counts [`mac`] calls on this thread, so tests can prove the per-request bound; not part of
/// the service's build.
#[cfg(test)]
mod mac_count {
    use std::cell::Cell;

    thread_local! {
        static CALLS: Cell<usize> = const { Cell::new(0) };
    }

    pub fn record() {
        CALLS.with(|calls| calls.set(calls.get() + 1));
    }

    /// What `work` returned, and how many MACs it computed.
    pub fn during<T>(work: impl FnOnce() -> T) -> (T, usize) {
        let before = CALLS.with(Cell::get);
        let result = work();
        (result, CALLS.with(Cell::get) - before)
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
