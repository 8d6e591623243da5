//! Clerk's user id, the key every row of a user hangs from.

use std::fmt;

use super::Invalid;

/// A Clerk user id (`user_...`), the primary key of `users`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    const MAX_LEN: usize = 128;

    /// Accepts ids made of ASCII letters, digits, `_` and `-`, as Clerk issues them: anything else
    /// would end up in logs, headers and URLs unescaped.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let valid = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(Invalid::UserId(raw.to_owned()))
        }
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clerk_ids_are_accepted() {
        assert!(UserId::parse("user_39BL7AjFtiageEwS3wHL0KvAXLh").is_ok());
    }

    #[test]
    fn empty_long_or_odd_ids_are_rejected() {
        for raw in ["", "user 1", "user_1;drop", "ü", &"a".repeat(129)] {
            let err = UserId::parse(raw).unwrap_err();
            assert_eq!(err, Invalid::UserId(raw.to_owned()), "{raw}");
        }
    }
}
