//! What Rust knows of the schema and of `provision_user` (migration `sql/provision_user_v3.sql`):
//! the function's arguments, the per-user lock key, and the constraint names errors are read by.
//! This is the one place they are written; statements are built from it and a test compares it
//! with the migrated database. The function's result columns are [`ProvisionUserRow`]'s fields.
//!
//! [`ProvisionUserRow`]: super::answer::ProvisionUserRow

use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::Value;
use serde::{Serialize, Serializer};

/// The function that applies one user's change, whole.
pub const FUNCTION: &str = "provision_user";

/// `provision_user`'s arguments in order: each name (declared with a `p_` prefix) and its SQL
/// type. [`Arguments`] has the same fields, in the same order (a unit test holds them together).
pub const ARGUMENTS: [(&str, &str); 12] = [
    ("id", "text"),
    ("email", "text"),
    ("username", "text"),
    ("fallback", "text"),
    ("derived", "boolean"),
    ("first_name", "text"),
    ("last_name", "text"),
    ("avatar_url", "text"),
    ("updated_at", "timestamptz"),
    ("event_at", "timestamptz"),
    ("digest", "bytea"),
    ("workspace_name", "text"),
];

/// The prefix the function's declaration gives each argument name.
pub const ARGUMENT_PREFIX: &str = "p_";

/// One call's arguments, sent as one JSON object (a batch is an array of them).
#[derive(Clone, Debug, Serialize)]
pub struct Arguments<'a> {
    pub id: &'a str,
    pub email: &'a str,
    /// The chosen username, or the preferred derived one.
    pub username: &'a str,
    /// The derived fallback: taken when a derived name is held, or as a chosen name's stand-in.
    pub fallback: &'a str,
    pub derived: bool,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
    pub avatar_url: Option<&'a str>,
    /// Clerk's `updated_at`, then the envelope time, then the digest: the ordering key.
    #[serde(serialize_with = "timestamp")]
    pub updated_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp")]
    pub event_at: DateTime<Utc>,
    #[serde(serialize_with = "bytea")]
    pub digest: &'a [u8],
    pub workspace_name: &'a str,
}

impl Arguments<'_> {
    /// The arguments as positional statement values, in [`ARGUMENTS`]' order: one event's call
    /// binds them directly, cheaper for PostgreSQL than a one-row JSON recordset.
    pub fn values(&self) -> [Value; ARGUMENTS.len()] {
        [
            self.id.into(),
            self.email.into(),
            self.username.into(),
            self.fallback.into(),
            self.derived.into(),
            self.first_name.map(str::to_owned).into(),
            self.last_name.map(str::to_owned).into(),
            self.avatar_url.map(str::to_owned).into(),
            self.updated_at.into(),
            self.event_at.into(),
            self.digest.to_vec().into(),
            self.workspace_name.into(),
        ]
    }
}

/// The per-user advisory lock key of `expression` (a user id): every transaction that touches a
/// user takes `pg_advisory_xact_lock` on it, `provision_user` included.
pub fn lock_key(expression: &str) -> String {
    format!("hashtextextended({expression}, 0)")
}

/// The constraints whose violations mean something to the worker, by name.
pub mod constraint {
    /// `users.email` is unique: two users claim one email.
    pub const USERS_EMAIL_KEY: &str = "users_email_key";
    /// `users.username` is unique.
    pub const USERS_USERNAME_KEY: &str = "users_username_key";
    /// The CHECK on `users.email`'s shape.
    pub const VALID_EMAIL: &str = "valid_email";
    /// The CHECK on `users.username`'s shape.
    pub const VALID_USERNAME: &str = "valid_username";
    /// One workspace per user: without it the product's core promise is not enforced.
    pub const UNIQUE_USER_WORKSPACE: &str = "unique_user_workspace";
}

/// Microseconds, PostgreSQL's precision, so a value round-trips exactly.
fn timestamp<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// PostgreSQL's hex input form of `bytea` (`\x0a1b...`).
fn bytea<S: Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    serializer.serialize_str(&format!("\\x{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Arguments<'static> {
        Arguments {
            id: "user_1",
            email: "a@example.com",
            username: "alice",
            fallback: "alice_1",
            derived: false,
            first_name: None,
            last_name: Some("A"),
            avatar_url: None,
            updated_at: DateTime::UNIX_EPOCH,
            event_at: DateTime::UNIX_EPOCH,
            digest: &[0x0a, 0xff],
            workspace_name: "My Workspace",
        }
    }

    #[test]
    fn the_arguments_serialize_with_the_declared_names_in_order() {
        let arguments = sample();
        let json = serde_json::to_string(&arguments).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut declared: Vec<&str> = ARGUMENTS.iter().map(|(name, _)| *name).collect();
        let mut in_json_order = keys.clone();
        declared.sort_unstable();
        in_json_order.sort_unstable();
        assert_eq!(in_json_order, declared);
        let field_order: Vec<usize> = ARGUMENTS
            .iter()
            .map(|(name, _)| json.find(&format!("\"{name}\":")).unwrap())
            .collect();
        assert!(
            field_order.is_sorted(),
            "fields out of the declared order: {json}"
        );
        assert_eq!(value["digest"], "\\x0aff");
        assert_eq!(value["updated_at"], "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn the_positional_values_have_the_declared_types_in_order() {
        let arguments = sample();
        let types: Vec<&str> = arguments
            .values()
            .iter()
            .map(|value| match value {
                Value::String(_) => "text",
                Value::Bool(_) => "boolean",
                Value::ChronoDateTimeUtc(_) => "timestamptz",
                Value::Bytes(_) => "bytea",
                other => panic!("unexpected value {other:?}"),
            })
            .collect();
        let declared: Vec<&str> = ARGUMENTS.iter().map(|(_, sql_type)| *sql_type).collect();
        assert_eq!(types, declared);
        assert_eq!(arguments.values()[2], Value::from("alice"));
        assert_eq!(arguments.values()[3], Value::from("alice_1"));
    }

    #[test]
    fn the_lock_key_is_the_functions_own() {
        assert_eq!(lock_key("$1"), "hashtextextended($1, 0)");
        let function = include_str!("../../../migration/src/sql/provision_user_v3.sql");
        assert!(
            function.contains(&lock_key("p_id")),
            "provision_user locks differently"
        );
    }
}
