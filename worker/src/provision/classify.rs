//! The database-error classifier: which failures of a provisioning statement are worth retrying.
//!
//! [`ProvisionError::from_db`] is the only place that puts a [`DbErr`] into a class of the
//! taxonomy; it keeps the error itself as the source, so nothing is lost to a string copy.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{DbErr, RuntimeErr, sqlx};

use super::contract::constraint;
use crate::error::{FailureReason, ProvisionError, Rejected};

impl ProvisionError {
    /// Classifies a database error. This is the single place that decides retry vs dead-letter.
    pub fn from_db(err: DbErr) -> Self {
        let cause = match &err {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return Self::Unavailable(err),
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
                Arc::clone(e)
            }
            _ => return Self::Transient(err),
        };
        classify_sqlx(&cause, err)
    }
}

impl ProvisionError {
    /// An attempt that ran past its client-side `deadline`: a database that still `answers`
    /// was slow for this event (retry with the budget); one that does not is unavailable.
    pub fn overran(deadline: Duration, answers: bool) -> Self {
        let what = match answers {
            true => "the attempt did not finish",
            false => "the database did not answer",
        };
        let err = DbErr::Custom(format!("{what} within {deadline:?}"));
        match answers {
            true => Self::Transient(err),
            false => Self::Unavailable(err),
        }
    }
}

/// `err` is the error as reported; `cause` is the driver's error inside it.
fn classify_sqlx(cause: &sqlx::Error, err: DbErr) -> ProvisionError {
    match cause {
        sqlx::Error::Database(db) => {
            classify_sqlstate(db.code().as_deref().unwrap_or(""), db.constraint(), err)
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ProvisionError::Unavailable(err),
        _ => ProvisionError::Transient(err),
    }
}

/// SQLSTATE codes: <https://www.postgresql.org/docs/15/errcodes-appendix.html>.
fn classify_sqlstate(code: &str, constraint: Option<&str>, err: DbErr) -> ProvisionError {
    let class = code.get(..2).unwrap_or("");
    match (class, code) {
        // Connection exceptions, insufficient resources, bad credentials, missing database, table
        // or function (not migrated yet), server shutting down or starting: nothing to do with
        // the event.
        ("08" | "53" | "28", _)
        | (_, "3D000" | "42P01" | "42883" | "57P01" | "57P02" | "57P03") => {
            ProvisionError::Unavailable(err)
        }
        (_, "23505") => classify_unique_violation(constraint, err),
        (_, "23514") => Rejected::because(check_reason(constraint), err).into(),
        ("22", _) | (_, "23502") => {
            Rejected::because(FailureReason::ConstraintViolation, err).into()
        }
        // 40001 serialization failure, 40P01 deadlock, 55P03 lock timeout, 57014 statement
        // timeout, 23503 (the user vanished under a concurrent delete), and anything unknown.
        _ => ProvisionError::Transient(err),
    }
}

fn classify_unique_violation(constraint: Option<&str>, err: DbErr) -> ProvisionError {
    match constraint {
        Some(constraint::USERS_EMAIL_KEY) => {
            ProvisionError::Conflict(Rejected::because(FailureReason::EmailConflict, err))
        }
        Some(constraint::USERS_USERNAME_KEY) => {
            ProvisionError::Conflict(Rejected::because(FailureReason::UsernameConflict, err))
        }
        // The primary key or unique_user_workspace: a concurrent copy of the same event won the
        // race; the next attempt sees its row and succeeds.
        _ => ProvisionError::Transient(err),
    }
}

fn check_reason(constraint: Option<&str>) -> FailureReason {
    match constraint {
        Some(constraint::VALID_EMAIL) => FailureReason::InvalidEmail,
        Some(constraint::VALID_USERNAME) => FailureReason::InvalidUsername,
        _ => FailureReason::ConstraintViolation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQLSTATE decides; the error itself only rides along.
    fn classify(code: &str, constraint: Option<&str>) -> ProvisionError {
        classify_sqlstate(code, constraint, DbErr::Custom(format!("sqlstate {code}")))
    }

    #[test]
    fn connection_and_server_state_errors_mean_the_database_is_unavailable() {
        for code in [
            "08006", "08001", "53300", "28P01", "3D000", "42P01", "42883", "57P01", "57P03",
        ] {
            let err = classify(code, None);
            assert!(matches!(err, ProvisionError::Unavailable(_)), "{code}");
        }
    }

    #[test]
    fn contention_errors_are_transient() {
        for code in ["40001", "40P01", "55P03", "57014", "23503", "XX000"] {
            let err = classify(code, None);
            assert!(matches!(err, ProvisionError::Transient(_)), "{code}");
        }
    }

    #[test]
    fn unique_violations_name_the_contested_field() {
        let email = classify("23505", Some(constraint::USERS_EMAIL_KEY));
        let username = classify("23505", Some(constraint::USERS_USERNAME_KEY));
        let workspace = classify("23505", Some(constraint::UNIQUE_USER_WORKSPACE));
        assert_eq!(email.as_str(), "email_conflict");
        assert_eq!(username.as_str(), "username_conflict");
        assert!(matches!(email, ProvisionError::Conflict(_)));
        assert!(matches!(username, ProvisionError::Conflict(_)));
        assert!(email.is_retryable() && username.is_retryable());
        assert!(workspace.is_retryable());
    }

    #[test]
    fn check_violations_are_permanent() {
        let email = classify("23514", Some(constraint::VALID_EMAIL));
        let name = classify("23514", Some("valid_workspace_name"));
        assert_eq!(email.as_str(), "invalid_email");
        assert_eq!(name.as_str(), "constraint_violation");
    }

    #[test]
    fn an_overrun_attempt_is_transient_while_the_database_answers_and_unavailable_otherwise() {
        let deadline = Duration::from_secs(20);
        let slow = ProvisionError::overran(deadline, true);
        let silent = ProvisionError::overran(deadline, false);
        assert_eq!(slow.as_str(), "transient");
        assert_eq!(silent.as_str(), "database_unavailable");
        assert!(silent.to_string().contains("did not answer within 20s"));
    }

    #[test]
    fn pool_exhaustion_is_unavailability() {
        let err = ProvisionError::from_db(DbErr::ConnectionAcquire(
            sea_orm::error::ConnAcquireErr::Timeout,
        ));
        assert!(matches!(err, ProvisionError::Unavailable(_)));
    }

    #[test]
    fn the_database_error_is_the_source_and_its_text_the_detail() {
        let err = classify("23505", Some(constraint::USERS_EMAIL_KEY));
        assert_eq!(
            err.to_string(),
            "email_conflict: Custom Error: sqlstate 23505"
        );
        let err = classify("40P01", None);
        assert_eq!(
            err.to_string(),
            "transient database error: Custom Error: sqlstate 40P01"
        );
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("Custom Error: sqlstate 40P01"));
    }
}
