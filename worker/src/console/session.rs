//! Who is at the console: the operator's name from a signed session cookie (set by the login
//! form), or a script sending the token as `Authorization: Bearer`. The name is what the audit
//! records for each replay and discard.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ConsoleState;
use super::page::Refusal;

/// The session cookie's name.
pub const COOKIE: &str = "console_session";
/// The actor recorded for a script that sent the token.
pub const BEARER_ACTOR: &str = "bearer-token";
/// Longest operator name kept.
pub const MAX_NAME: usize = 64;
/// How long a session lasts: a shift, not for ever (a cookie that leaks stops working).
pub const LIFETIME_SECS: i64 = 12 * 3600;

type HmacSha256 = Hmac<Sha256>;

/// Signs session cookies. Derived from the token when there is one, so every replica accepts
/// every replica's sessions and a restart logs nobody out; random per process otherwise.
pub struct SessionKey {
    key: [u8; 32],
    token: Option<String>,
}

impl SessionKey {
    pub fn new(token: Option<&str>) -> Self {
        let key = match token {
            Some(token) => Sha256::new()
                .chain_update(b"worker console session key\0")
                .chain_update(token.as_bytes())
                .finalize()
                .into(),
            None => std::array::from_fn(|_| fastrand::u8(..)),
        };
        Self {
            key,
            token: token.map(str::to_owned),
        }
    }

    /// Whether a login must give the token.
    pub fn needs_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `given` is the token, in constant time (digests compared, so not even the
    /// length shows); true when there is none to give.
    pub fn accepts(&self, given: &str) -> bool {
        match &self.token {
            Some(token) => {
                let digest = |text: &str| Sha256::digest(text.as_bytes());
                bool::from(digest(token).ct_eq(&digest(given)))
            }
            None => true,
        }
    }

    /// The cookie value naming `operator`, issued now.
    pub fn seal(&self, operator: &str) -> String {
        self.seal_at(operator, chrono::Utc::now().timestamp())
    }

    fn seal_at(&self, operator: &str, issued: i64) -> String {
        let signed = format!("{}.{issued}", URL_SAFE_NO_PAD.encode(operator.as_bytes()));
        let tag = URL_SAFE_NO_PAD.encode(self.tag(&signed));
        format!("{signed}.{tag}")
    }

    /// The operator a cookie value names, if this key signed it less than [`LIFETIME_SECS`]
    /// ago.
    pub fn open(&self, sealed: &str) -> Option<String> {
        self.open_at(sealed, chrono::Utc::now().timestamp())
    }

    fn open_at(&self, sealed: &str, now: i64) -> Option<String> {
        let (signed, tag) = sealed.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = HmacSha256::new_from_slice(&self.key).ok()?;
        mac.update(signed.as_bytes());
        mac.verify_slice(&tag).ok()?;
        let (name, issued) = signed.split_once('.')?;
        let age = now - issued.parse::<i64>().ok()?;
        if !(0..LIFETIME_SECS).contains(&age) {
            return None;
        }
        String::from_utf8(URL_SAFE_NO_PAD.decode(name).ok()?).ok()
    }

    fn tag(&self, name: &str) -> Vec<u8> {
        match HmacSha256::new_from_slice(&self.key) {
            Ok(mut mac) => {
                mac.update(name.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            // HMAC takes keys of any length: unreachable, and an empty tag never verifies.
            Err(_) => Vec::new(),
        }
    }
}

/// The operator behind a request; extracting it refuses anyone else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
}

impl FromRequestParts<ConsoleState> for Operator {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(token) = bearer(&parts.headers) {
            return match state.key.needs_token() && state.key.accepts(token) {
                true => Ok(Self {
                    name: BEARER_ACTOR.to_owned(),
                }),
                false => Err(Refusal::Unauthorized),
            };
        }
        cookie(&parts.headers, COOKIE)
            .and_then(|sealed| state.key.open(sealed))
            .map(|name| Self { name })
            .ok_or(Refusal::LogIn)
    }
}

/// An operator who may act: logged in, on a console that is not read-only. Every action's
/// handler takes one, so none can forget CONSOLE_READ_ONLY.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActingOperator(pub Operator);

impl FromRequestParts<ConsoleState> for ActingOperator {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let operator = Operator::from_request_parts(parts, state).await?;
        if state.read_only {
            return Err(Refusal::ReadOnly);
        }
        Ok(Self(operator))
    }
}

/// The `Authorization: Bearer` token, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The value of cookie `name`, if the request carries it.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value of a session for `sealed`: HttpOnly, SameSite=Strict, and Secure when
/// the console is reachable beyond this machine (where it belongs behind TLS).
pub fn set_cookie(sealed: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={sealed}; Path=/; Max-Age={LIFETIME_SECS}; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that ends a session.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}")
}

/// An operator's name as typed at the login form, if it is one: at most [`MAX_NAME`]
/// characters of letters, digits, spaces and `.-_@'` (no invisible or direction-changing
/// characters to make one name look like another, no parentheses to fake a source), and not the
/// name recorded for scripts.
pub fn operator_name(typed: &str) -> Option<String> {
    let name = typed.trim();
    let allowed = |c: char| c.is_alphanumeric() || " .-_@'".contains(c);
    let fits = !name.is_empty() && name.chars().count() <= MAX_NAME && name.chars().all(allowed);
    Some(name.to_owned()).filter(|name| fits && name != BEARER_ACTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_name_opens_only_with_its_key_and_unchanged() {
        let key = SessionKey::new(Some("t0ken"));
        let sealed = key.seal("alice");
        assert_eq!(key.open(&sealed), Some("alice".into()));
        assert_eq!(SessionKey::new(Some("other")).open(&sealed), None);
        let forged = sealed.replacen(
            &URL_SAFE_NO_PAD.encode("alice"),
            &URL_SAFE_NO_PAD.encode("bob"),
            1,
        );
        assert_eq!(key.open(&forged), None);
        assert_eq!(key.open("garbage"), None);
    }

    #[test]
    fn a_session_ends_after_its_lifetime() {
        let key = SessionKey::new(Some("t0ken"));
        let sealed = key.seal_at("alice", 1_000);
        assert_eq!(
            key.open_at(&sealed, 1_000 + LIFETIME_SECS - 1),
            Some("alice".into())
        );
        assert_eq!(key.open_at(&sealed, 1_000 + LIFETIME_SECS), None);
        assert_eq!(key.open_at(&sealed, 999), None, "issued in the future");
    }

    #[test]
    fn replicas_with_one_token_share_sessions() {
        let sealed = SessionKey::new(Some("t0ken")).seal("alice");
        assert_eq!(
            SessionKey::new(Some("t0ken")).open(&sealed),
            Some("alice".into())
        );
    }

    #[test]
    fn the_token_is_required_only_when_set() {
        assert!(SessionKey::new(None).accepts(""));
        let key = SessionKey::new(Some("t0ken"));
        assert!(key.accepts("t0ken"));
        assert!(!key.accepts("t0ke"));
        assert!(!key.accepts(""));
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(operator_name("  alice \n"), Some("alice".into()));
        assert_eq!(operator_name("Zoë O'Brien"), Some("Zoë O'Brien".into()));
        assert_eq!(operator_name(" \t "), None);
        assert_eq!(operator_name(&"x".repeat(100)), None);
        assert_eq!(operator_name("ali\u{202e}ce"), None, "direction-changing");
        assert_eq!(operator_name("alice (cli)"), None, "a faked source");
        assert_eq!(operator_name(BEARER_ACTOR), None, "the scripts' name");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; console_session=v.t; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("v.t"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
