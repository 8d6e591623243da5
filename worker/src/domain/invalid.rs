//! The one error of the domain's constructors.

/// A value a domain constructor refused, because the schema would refuse it too. It names the
/// rule broken and keeps the offending input; [`crate::error`] decides what that costs the event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("user id {0:?} is not a Clerk id")]
    UserId(String),
    #[error("email {0:?} does not match valid_email")]
    Email(String),
    #[error("username {0:?} is not 3-30 of [A-Za-z0-9_]")]
    Username(String),
    #[error("workspace name {0:?} must be 1-100 characters")]
    WorkspaceName(String),
    #[error("timestamp {0} is not a time in milliseconds")]
    ClerkTime(i64),
}
