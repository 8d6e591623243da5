//! Usernames: the one a user chose, or the pair derived for a user without one.

use super::{Email, Invalid, UserId};

/// A username the `valid_username` constraint accepts: 3 to 30 of `[A-Za-z0-9_]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    const MIN_LEN: usize = 3;
    const MAX_LEN: usize = 30;

    /// Accepts a username exactly as given; anything else is the user's data, not ours to change.
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if is_valid(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(Invalid::Username(raw.to_owned()))
        }
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn is_valid(raw: &str) -> bool {
    (Username::MIN_LEN..=Username::MAX_LEN).contains(&raw.len())
        && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The username for a user Clerk sent without one: the email's local part made valid, and a
/// fallback with a suffix from the Clerk id for when another user already holds the first.
///
/// Both are pure functions of the email and the id, so every retry derives the same pair; the
/// provisioning transaction picks one only when the user has no username yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivedUsername {
    pub preferred: Username,
    pub fallback: Username,
}

impl DerivedUsername {
    const SUFFIX_LEN: usize = 8;

    pub fn derive(email: &Email, user_id: &UserId) -> Self {
        let base = sanitize(email.local_part());
        let suffix = id_suffix(user_id);
        let keep = Username::MAX_LEN - 1 - suffix.len();
        let fallback = format!("{}_{suffix}", truncate(&base, keep));
        Self {
            preferred: Username(truncate(&base, Username::MAX_LEN).to_owned()),
            fallback: Username(fallback),
        }
    }
}

/// Maps every character outside `[A-Za-z0-9_]` to `_` and pads short results to the minimum.
fn sanitize(local_part: &str) -> String {
    let mapped: String = local_part
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let trimmed = mapped.trim_matches('_');
    match trimmed.len() {
        0 => "user".to_owned(),
        n if n < Username::MIN_LEN => format!("{trimmed}_user"),
        _ => trimmed.to_owned(),
    }
}

/// The last alphanumeric characters of the Clerk id: unique per user, stable across retries.
fn id_suffix(user_id: &UserId) -> String {
    let alnum: Vec<char> = user_id
        .as_ref()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let start = alnum.len().saturating_sub(DerivedUsername::SUFFIX_LEN);
    alnum[start..].iter().collect()
}

/// ASCII-only input, so byte and character positions agree.
fn truncate(s: &str, max: usize) -> &str {
    &s[..s.len().min(max)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derive(email: &str, id: &str) -> DerivedUsername {
        DerivedUsername::derive(&Email::parse(email).unwrap(), &UserId::parse(id).unwrap())
    }

    #[test]
    fn valid_usernames_are_accepted_as_given() {
        for raw in ["abc", "marta_lopez", "A1_", &"x".repeat(30)] {
            assert_eq!(Username::parse(raw).unwrap().as_ref(), raw);
        }
    }

    #[test]
    fn invalid_usernames_are_rejected() {
        for raw in [
            "",
            "ab",
            "marta.lopez",
            "with space",
            "ñandú",
            &"x".repeat(31),
        ] {
            let err = Username::parse(raw).unwrap_err();
            assert_eq!(err, Invalid::Username(raw.to_owned()), "{raw}");
        }
    }

    #[test]
    fn derived_username_comes_from_the_email_local_part() {
        let derived = derive(
            "kenji+signup@example.org",
            "user_3IUHw5u6kOqRgyTUEVE6dSQYtQE",
        );
        assert_eq!(derived.preferred.as_ref(), "kenji_signup");
        assert_eq!(derived.fallback.as_ref(), "kenji_signup_6dSQYtQE");
    }

    #[test]
    fn derivation_is_deterministic() {
        let a = derive(
            "kenji+signup@example.org",
            "user_3IUHw5u6kOqRgyTUEVE6dSQYtQE",
        );
        let b = derive(
            "kenji+signup@example.org",
            "user_3IUHw5u6kOqRgyTUEVE6dSQYtQE",
        );
        assert_eq!(a, b);
    }

    #[test]
    fn short_odd_and_long_local_parts_still_give_valid_usernames() {
        for email in [
            "a@x.io",
            "..@x.io",
            "%+-@x.io",
            &format!("{}@x.io", "long".repeat(20)),
        ] {
            let derived = derive(email, "user_2abcDEF");
            assert!(is_valid(derived.preferred.as_ref()), "{email}: {derived:?}");
            assert!(is_valid(derived.fallback.as_ref()), "{email}: {derived:?}");
            assert_ne!(derived.preferred, derived.fallback);
        }
    }

    #[test]
    fn users_with_the_same_local_part_get_different_fallbacks() {
        let a = derive("sam@x.io", "user_2aaaaaaaaaaa");
        let b = derive("sam@y.io", "user_2bbbbbbbbbbb");
        assert_eq!(a.preferred, b.preferred);
        assert_ne!(a.fallback, b.fallback);
    }
}
