//! The one error taxonomy: every failure is transient (retry) or permanent (dead-letter), and the
//! variant of [`ProvisionError`] says which.
//!
//! What decides the class: [`Rejected`] is permanent by construction (a domain [`Invalid`] becomes
//! one here, with its reason code); a database error is classified by
//! [`ProvisionError::from_db`], which lives with provisioning (`provision::classify`).

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use sea_orm::DbErr;

use crate::domain::Invalid;

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
    /// Another user still held this email when the retry budget ran out.
    EmailConflict,
    /// Another user still held this username (chosen, not derived) when the retry budget ran
    /// out.
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
    pub const fn as_str(self) -> &'static str {
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

/// Why an event is tried again: the `reason` label of `events_retried_total`, as stable as a
/// [`FailureReason`] (alerts match on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// The database cannot serve anyone; says nothing about the event.
    DatabaseUnavailable,
    /// A failure that may pass on the next attempt.
    Transient,
    /// Another user holds a value this event needs: the conflict's own failure reason.
    Conflict(FailureReason),
}

impl RetryReason {
    /// The stable code, as operators see it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::DatabaseUnavailable => "database_unavailable",
            Self::Transient => "transient",
            Self::Conflict(reason) => reason.as_str(),
        }
    }
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Input that can never be provisioned as it is: the reason code, and the error that showed it.
///
/// The source is shared so a parsed-once rejection can be reported by every attempt.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{reason}: {source}")]
pub struct Rejected {
    pub reason: FailureReason,
    source: Arc<dyn Error + Send + Sync>,
}

impl Rejected {
    /// A rejection whose only detail is a message (a field that is missing altogether).
    pub fn new(reason: FailureReason, detail: impl Into<String>) -> Self {
        let message: Box<dyn Error + Send + Sync> = detail.into().into();
        Self {
            reason,
            source: message.into(),
        }
    }

    /// A rejection caused by `source`, kept as this error's source.
    pub fn because(reason: FailureReason, source: impl Error + Send + Sync + 'static) -> Self {
        Self {
            reason,
            source: Arc::new(source),
        }
    }
}

impl From<Invalid> for Rejected {
    fn from(invalid: Invalid) -> Self {
        Self::because(reason_for(&invalid), invalid)
    }
}

/// The code each domain rule reports when an input breaks it.
fn reason_for(invalid: &Invalid) -> FailureReason {
    match invalid {
        Invalid::UserId(_) => FailureReason::InvalidUserId,
        Invalid::Email(_) => FailureReason::InvalidEmail,
        Invalid::Username(_) => FailureReason::InvalidUsername,
        Invalid::WorkspaceName(_) => FailureReason::ConstraintViolation,
        Invalid::ClerkTime(_) => FailureReason::InvalidPayload,
    }
}

/// Why provisioning one event failed, and therefore what the caller must do with it.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The database cannot serve anyone right now (down, restarting, pool exhausted,
    /// misconfigured). Retry for as long as it lasts; it says nothing about this event.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] DbErr),
    /// This event hit a passing condition (serialization failure, deadlock, timeout).
    /// Retry with a bounded budget.
    #[error("transient database error: {0}")]
    Transient(#[source] DbErr),
    /// Another user holds this email or username. Order can explain it (that user's change or
    /// deletion may still be on its way), so it is retried with the event's budget, waiting in
    /// the broker's retry queue rather than in a consumer slot, and dead-lettered with its
    /// reason only when the budget is spent.
    #[error(transparent)]
    Conflict(Rejected),
    /// Retrying cannot help: dead-letter with the reason.
    #[error(transparent)]
    Permanent(#[from] Rejected),
}

impl ProvisionError {
    /// Every reason a retryable error is retried for: what `events_retried_total` is labelled
    /// with (each exported at zero from the start).
    pub const RETRY_REASONS: [RetryReason; 4] = [
        RetryReason::DatabaseUnavailable,
        RetryReason::Transient,
        RetryReason::Conflict(FailureReason::EmailConflict),
        RetryReason::Conflict(FailureReason::UsernameConflict),
    ];

    /// True when the event should be tried again later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Permanent(_))
    }

    /// The stable code for metrics, logs and `worker provision`'s output: the
    /// [`RetryReason`] of a retryable error, the [`FailureReason`] of a permanent one.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => RetryReason::DatabaseUnavailable.as_str(),
            Self::Transient(_) => RetryReason::Transient.as_str(),
            Self::Conflict(rejected) => RetryReason::Conflict(rejected.reason).as_str(),
            Self::Permanent(rejected) => rejected.reason.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_domain_rule_reports_its_reason() {
        let cases = [
            (Invalid::UserId("u 1".into()), "invalid_user_id"),
            (Invalid::Email("a@b".into()), "invalid_email"),
            (Invalid::Username("a.b".into()), "invalid_username"),
            (Invalid::WorkspaceName(" ".into()), "constraint_violation"),
            (Invalid::ClerkTime(-1), "invalid_payload"),
        ];
        for (invalid, code) in cases {
            assert_eq!(
                Rejected::from(invalid.clone()).reason.as_str(),
                code,
                "{invalid}"
            );
        }
    }

    #[test]
    fn a_rejection_says_its_reason_then_its_cause_and_keeps_the_cause() {
        let rejected = Rejected::from(Invalid::Email("a@b".into()));
        assert_eq!(
            rejected.to_string(),
            r#"invalid_email: email "a@b" does not match valid_email"#
        );
        let source = rejected.source().map(ToString::to_string);
        assert_eq!(
            source.as_deref(),
            Some(r#"email "a@b" does not match valid_email"#)
        );
    }

    #[test]
    fn retry_reasons_are_the_published_labels() {
        let labels = ProvisionError::RETRY_REASONS.map(RetryReason::as_str);
        assert_eq!(
            labels,
            [
                "database_unavailable",
                "transient",
                "email_conflict",
                "username_conflict"
            ]
        );
        let unavailable = ProvisionError::Unavailable(DbErr::Custom("down".into()));
        assert_eq!(unavailable.as_str(), "database_unavailable");
    }

    #[test]
    fn database_errors_are_kept_as_the_source() {
        let err = ProvisionError::Transient(DbErr::Custom("deadlock detected".into()));
        assert_eq!(
            err.to_string(),
            "transient database error: Custom Error: deadlock detected"
        );
        assert!(err.source().is_some_and(|s| s.is::<DbErr>()));
    }
}
