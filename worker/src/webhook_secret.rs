//! The webhook signing secret, `CLERK_WEBHOOK_SECRET`, decoded in one place: the settings check
//! refuses a bad one at start, and the ingress verifies signatures with the keys decoded here.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::SecretSlice;

/// The prefix of the secrets Clerk's dashboard shows; optional, as in Svix's libraries.
const SECRET_PREFIX: &str = "whsec_";

/// The decoded keys of `CLERK_WEBHOOK_SECRET`: one, or several while secrets rotate. Never
/// empty. The keys are secrets: their `Debug` is redacted.
#[derive(Clone, Debug)]
pub struct WebhookSecret {
    keys: Vec<SecretSlice<u8>>,
}

impl WebhookSecret {
    /// Decodes space-separated `whsec_<base64>` secrets (the prefix may be left out).
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
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

    /// The keys in the order given; a signature made with any of them is valid.
    pub fn keys(&self) -> &[SecretSlice<u8>] {
        &self.keys
    }
}

/// A `CLERK_WEBHOOK_SECRET` value that cannot be used: the service refuses to start. The
/// messages name the setting and never quote it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "CLERK_WEBHOOK_SECRET is empty: set it to the signing secret (whsec_...) from Clerk's dashboard"
    )]
    Missing,
    #[error("CLERK_WEBHOOK_SECRET entry {position} is not a whsec_ secret with a base64 key")]
    Undecodable { position: usize },
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn each_secret_decodes_with_or_without_its_prefix() {
        let with = WebhookSecret::parse(SECRET_A).unwrap();
        let without = WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            with.keys()[0].expose_secret(),
            without.keys()[0].expose_secret()
        );
        let rotating = WebhookSecret::parse(&format!("{SECRET_A}  {SECRET_A}")).unwrap();
        assert_eq!(rotating.keys().len(), 2);
    }

    #[test]
    fn empty_and_undecodable_secrets_refuse_to_start() {
        let parse = |raw: &str| WebhookSecret::parse(raw).map(|secret| secret.keys().len());
        assert_eq!(parse(""), Err(SecretError::Missing));
        assert_eq!(parse("   "), Err(SecretError::Missing));
        assert_eq!(
            parse("whsec_"),
            Err(SecretError::Undecodable { position: 1 })
        );
        assert_eq!(
            parse(&format!("{SECRET_A} whsec_not*base64")),
            Err(SecretError::Undecodable { position: 2 })
        );
    }

    #[test]
    fn neither_the_error_nor_the_debug_shows_the_secret() {
        let err = WebhookSecret::parse("whsec_not*base64").unwrap_err();
        assert!(!err.to_string().contains("not*base64"));
        let secret = WebhookSecret::parse(SECRET_A).unwrap();
        assert!(!format!("{secret:?}").contains("MfKQ9r8G"));
    }
}
