//! The user's primary email address, as the schema's `valid_email` check accepts it.

use std::sync::LazyLock;

use regex::Regex;

use super::Invalid;

/// The schema's `valid_email` CHECK, as a Rust regex (`~*` is case-insensitive).
static VALID_EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
        .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
});

/// An email address the `valid_email` constraint accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Same rule as the database, so a bad address is refused before a transaction starts.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let trimmed = raw.trim();
        if VALID_EMAIL.is_match(trimmed) {
            Ok(Self(trimmed.to_owned()))
        } else {
            Err(Invalid::Email(raw.to_owned()))
        }
    }

    /// The part before the `@`, the seed of a derived username.
    pub fn local_part(&self) -> &str {
        self.0.split('@').next().unwrap_or_default()
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_addresses_are_accepted() {
        for raw in [
            "marta.lopez@example.com",
            "kenji+signup@example.org",
            "A_B%c@x.co",
        ] {
            assert_eq!(Email::parse(raw).unwrap().as_ref(), raw);
        }
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        assert_eq!(Email::parse(" a@b.io ").unwrap().as_ref(), "a@b.io");
    }

    #[test]
    fn addresses_the_database_would_refuse_are_rejected() {
        for raw in [
            "",
            "no-at.example.com",
            "a@b",
            "a@b.c",
            "a b@c.io",
            "ü@x.io",
            "a@@b.io",
        ] {
            let err = Email::parse(raw).unwrap_err();
            assert_eq!(err, Invalid::Email(raw.to_owned()), "{raw:?}");
        }
    }

    #[test]
    fn local_part_is_before_the_at() {
        assert_eq!(
            Email::parse("kenji+signup@example.org")
                .unwrap()
                .local_part(),
            "kenji+signup"
        );
    }
}
