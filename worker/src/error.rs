//! The one error taxonomy: every failure is transient (retry) or permanent (dead-letter).
//!
//! [`ProvisionError::from_db`] is the only place that decides which class a database error belongs
//! to; validation failures are permanent by construction ([`Rejected`]).

use std::fmt;

use sea_orm::{DbErr, RuntimeErr, sqlx};

/// Stable failure codes: they end up in dead-letter headers, metrics labels and alerts, so a
/// variant's string never changes once shipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The body is not JSON, or not the shape Clerk documents.
    InvalidPayload,
    /// The Clerk user id is missing or unusable.
    InvalidUserId,
    /// The user has no email address at all (phone-only or web3 sign-up).
    MissingEmail,
    /// The primary email does not pass the schema's `valid_email` rule.
    InvalidEmail,
    /// The username Clerk sent does not pass `valid_username`.
    InvalidUsername,
    /// Another user already holds this email.
    EmailConflict,
    /// Another user already holds this username.
    UsernameConflict,
    /// Some other CHECK or data rule of the schema refused the row.
    ConstraintViolation,
    /// A transient failure that kept happening until the retry budget ran out.
    RetriesExhausted,
}

impl FailureReason {
    pub const ALL: [FailureReason; 9] = [
        Self::InvalidPayload,
        Self::InvalidUserId,
        Self::MissingEmail,
        Self::InvalidEmail,
        Self::InvalidUsername,
        Self::EmailConflict,
        Self::UsernameConflict,
        Self::ConstraintViolation,
        Self::RetriesExhausted,
    ];

    /// The stable code, as operators see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidPayload => "invalid_payload",
            Self::InvalidUserId => "invalid_user_id",
            Self::MissingEmail => "missing_email",
            Self::InvalidEmail => "invalid_email",
            Self::InvalidUsername => "invalid_username",
            Self::EmailConflict => "email_conflict",
            Self::UsernameConflict => "username_conflict",
            Self::ConstraintViolation => "constraint_violation",
            Self::RetriesExhausted => "retries_exhausted",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Input that can never be provisioned as it is: the reason code plus human detail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejected {
    pub reason: FailureReason,
    pub detail: String,
}

impl Rejected {
    pub fn new(reason: FailureReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Why provisioning one event failed, and therefore what the caller must do with it.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The database cannot serve anyone right now (down, restarting, pool exhausted,
    /// misconfigured). Retry for as long as it lasts; it says nothing about this event.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// This event hit a passing condition (serialization failure, deadlock, timeout).
    /// Retry with a bounded budget.
    #[error("transient database error: {0}")]
    Transient(String),
    /// Retrying cannot help: dead-letter with the reason.
    #[error(transparent)]
    Permanent(#[from] Rejected),
}

impl ProvisionError {
    /// True when the event should be tried again later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Permanent(_))
    }

    /// The stable code for metrics and dead-letter headers.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "database_unavailable",
            Self::Transient(_) => "transient",
            Self::Permanent(rejected) => rejected.reason.as_str(),
        }
    }

    /// Classifies a database error. This is the single place that decides retry vs dead-letter.
    pub fn from_db(err: DbErr) -> Self {
        let detail = err.to_string();
        match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => Self::Unavailable(detail),
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
                classify_sqlx(e, detail)
            }
            _ => Self::Transient(detail),
        }
    }
}

fn classify_sqlx(err: &sqlx::Error, detail: String) -> ProvisionError {
    match err {
        sqlx::Error::Database(db) => {
            classify_sqlstate(db.code().as_deref().unwrap_or(""), db.constraint(), detail)
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ProvisionError::Unavailable(detail),
        _ => ProvisionError::Transient(detail),
    }
}

/// SQLSTATE codes: <https://www.postgresql.org/docs/15/errcodes-appendix.html>.
fn classify_sqlstate(code: &str, constraint: Option<&str>, detail: String) -> ProvisionError {
    let class = code.get(..2).unwrap_or("");
    match (class, code) {
        // Connection exceptions, insufficient resources, bad credentials, missing database, table
        // or function (not migrated yet), server shutting down or starting: nothing to do with
        // the event.
        ("08" | "53" | "28", _)
        | (_, "3D000" | "42P01" | "42883" | "57P01" | "57P02" | "57P03") => {
            ProvisionError::Unavailable(detail)
        }
        (_, "23505") => classify_unique_violation(constraint, detail),
        (_, "23514") => ProvisionError::Permanent(Rejected::new(check_reason(constraint), detail)),
        ("22", _) | (_, "23502") => {
            ProvisionError::Permanent(Rejected::new(FailureReason::ConstraintViolation, detail))
        }
        // 40001 serialization failure, 40P01 deadlock, 55P03 lock timeout, 57014 statement
        // timeout, 23503 (the user vanished under a concurrent delete), and anything unknown.
        _ => ProvisionError::Transient(detail),
    }
}

fn classify_unique_violation(constraint: Option<&str>, detail: String) -> ProvisionError {
    match constraint {
        Some("users_email_key") => {
            ProvisionError::Permanent(Rejected::new(FailureReason::EmailConflict, detail))
        }
        Some("users_username_key") => {
            ProvisionError::Permanent(Rejected::new(FailureReason::UsernameConflict, detail))
        }
        // The primary key or unique_user_workspace: a concurrent copy of the same event won the
        // race; the next attempt sees its row and succeeds.
        _ => ProvisionError::Transient(detail),
    }
}

fn check_reason(constraint: Option<&str>) -> FailureReason {
    match constraint {
        Some("valid_email") => FailureReason::InvalidEmail,
        Some("valid_username") => FailureReason::InvalidUsername,
        _ => FailureReason::ConstraintViolation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(err: ProvisionError) -> &'static str {
        err.reason_code()
    }

    #[test]
    fn connection_and_server_state_errors_mean_the_database_is_unavailable() {
        for code in [
            "08006", "08001", "53300", "28P01", "3D000", "42P01", "42883", "57P01", "57P03",
        ] {
            let err = classify_sqlstate(code, None, String::new());
            assert!(matches!(err, ProvisionError::Unavailable(_)), "{code}");
        }
    }

    #[test]
    fn contention_errors_are_transient() {
        for code in ["40001", "40P01", "55P03", "57014", "23503", "XX000"] {
            let err = classify_sqlstate(code, None, String::new());
            assert!(matches!(err, ProvisionError::Transient(_)), "{code}");
        }
    }

    #[test]
    fn unique_violations_name_the_contested_field() {
        let email = classify_sqlstate("23505", Some("users_email_key"), String::new());
        let username = classify_sqlstate("23505", Some("users_username_key"), String::new());
        let workspace = classify_sqlstate("23505", Some("unique_user_workspace"), String::new());
        assert_eq!(reason(email), "email_conflict");
        assert_eq!(reason(username), "username_conflict");
        assert!(workspace.is_retryable());
    }

    #[test]
    fn check_violations_are_permanent() {
        let email = classify_sqlstate("23514", Some("valid_email"), String::new());
        let name = classify_sqlstate("23514", Some("valid_workspace_name"), String::new());
        assert_eq!(reason(email), "invalid_email");
        assert_eq!(reason(name), "constraint_violation");
    }

    #[test]
    fn pool_exhaustion_is_unavailability() {
        let err = ProvisionError::from_db(DbErr::ConnectionAcquire(
            sea_orm::error::ConnAcquireErr::Timeout,
        ));
        assert!(matches!(err, ProvisionError::Unavailable(_)));
    }
}
