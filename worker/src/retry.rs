//! The retry policy: what becomes of a delivery after an attempt, and how long to wait.
//!
//! Pure and tested without I/O: [`RetryPolicy::decide`] turns an attempt's result into a
//! [`Fate`]; the consumer's pipeline only carries it out.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::error::{FailureReason, ProvisionError};

/// Retry limits and delays (from [`crate::config::ConsumerSettings`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Attempts allowed for an event-specific error (transient or a conflict), the first one
    /// included.
    pub max_attempts: u32,
}

/// What becomes of a delivery after an attempt: a value, so the decision can be tested apart
/// from the broker and the database that carry it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Provisioned: acknowledge.
    Ack,
    /// Attempt again in this worker after `delay`; the delivery stays unacknowledged meanwhile.
    Retry { delay: Duration },
    /// Attempt again after `delay`, from the broker: the event waits in the retry queue, so the
    /// wait holds no consumer slot and no prefetch (another user's event may be what resolves
    /// it).
    Defer { delay: Duration },
    /// Never going to work: publish to the dead-letter queue with this reason, then acknowledge.
    DeadLetter(FailureReason),
    /// The session ends with the delivery unfinished: hand it back to the queue without blame.
    /// Decided by the session's end, never by an attempt.
    GiveBack,
}

/// How far a delivery has got: counts kept per delivery while it is retried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Every attempt made, for logs and the `x-attempts` header.
    pub made: u32,
    /// Attempts that failed for a reason specific to this event; only these use up the budget.
    /// Carried across deferred retries in the `x-retry-attempts` header.
    pub budgeted: u32,
    /// Attempts made since this worker took the delivery: the in-process backoff grows with
    /// them.
    pub here: u32,
}

impl Attempts {
    /// Counts one more attempt that ended in `result`.
    pub fn after<T>(self, result: &Result<T, ProvisionError>) -> Self {
        let budgeted = matches!(
            result,
            Err(ProvisionError::Transient(_) | ProvisionError::Conflict(_))
        );
        Self {
            made: self.made + 1,
            budgeted: self.budgeted + u32::from(budgeted),
            here: self.here + 1,
        }
    }
}

impl RetryPolicy {
    /// Reconnecting to the broker: quick first tries, and never more than 5 s between tries so
    /// service resumes soon after the broker does.
    pub const RECONNECT: RetryPolicy = RetryPolicy {
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(5),
        max_attempts: u32::MAX,
    };

    /// Decides the fate of a delivery after an attempt that `attempts` already counts.
    ///
    /// The database being unavailable says nothing about the event, so it is retried for as long
    /// as the outage lasts without using up attempts.
    pub fn decide<T>(&self, result: &Result<T, ProvisionError>, attempts: Attempts) -> Fate {
        let Err(err) = result else {
            return Fate::Ack;
        };
        let budget_left = attempts.budgeted < self.max_attempts;
        match err {
            ProvisionError::Permanent(rejected) => Fate::DeadLetter(rejected.reason),
            ProvisionError::Unavailable(_) => Fate::Retry {
                delay: self.delay_before_retry(attempts.here),
            },
            ProvisionError::Transient(_) if budget_left => Fate::Retry {
                delay: self.delay_before_retry(attempts.here),
            },
            ProvisionError::Transient(_) => Fate::DeadLetter(FailureReason::RetriesExhausted),
            ProvisionError::Conflict(_) if budget_left => Fate::Defer {
                delay: self.delay_before_retry(attempts.budgeted),
            },
            ProvisionError::Conflict(rejected) => Fate::DeadLetter(rejected.reason),
        }
    }

    /// The delays between tries, endlessly: each is [`Self::delay_before_retry`] of its turn.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        self.curve().map(full_jitter)
    }

    /// The delay before retry `retry` (the first is 1): exponential from the initial delay up to
    /// the cap, with full jitter (uniform between zero and the exponential value), so a crowd of
    /// deliveries that failed together does not retry together.
    pub fn delay_before_retry(&self, retry: u32) -> Duration {
        // Past 64 doublings every delay is the cap; the bound keeps the walk short.
        let turn = retry.saturating_sub(1).min(64) as usize;
        full_jitter(self.curve().nth(turn).unwrap_or(self.max_delay))
    }

    /// The one backoff curve, before jitter: doubling from the initial delay up to the cap.
    /// backon starts at the initial delay even above the cap, so every value is capped here.
    fn curve(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let cap = self.max_delay;
        ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(cap)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .map(move |delay| delay.min(cap))
    }
}

fn full_jitter(ceiling: Duration) -> Duration {
    ceiling.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Rejected;

    const POLICY: RetryPolicy = RetryPolicy {
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(30),
        max_attempts: 8,
    };

    #[test]
    fn no_delay_exceeds_the_cap_even_when_the_initial_delay_does() {
        let inverted = RetryPolicy {
            initial_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(1),
            max_attempts: 8,
        };
        for retry in 1..5 {
            assert!(inverted.delay_before_retry(retry) <= inverted.max_delay);
        }
        assert!(inverted.delays().take(5).all(|d| d <= inverted.max_delay));
    }

    fn transient() -> Result<(), ProvisionError> {
        Err(ProvisionError::Transient(sea_orm::DbErr::Custom(
            "deadlock detected".into(),
        )))
    }

    fn unavailable() -> Result<(), ProvisionError> {
        Err(ProvisionError::Unavailable(sea_orm::DbErr::Custom(
            "connection refused".into(),
        )))
    }

    fn conflict() -> Result<(), ProvisionError> {
        Err(ProvisionError::Conflict(Rejected::new(
            FailureReason::EmailConflict,
            "held by user_2",
        )))
    }

    fn after(n: u32, result: &Result<(), ProvisionError>) -> Attempts {
        (0..n).fold(Attempts::default(), |a, _| a.after(result))
    }

    fn is_retry_here(fate: Fate) -> bool {
        matches!(fate, Fate::Retry { .. })
    }

    #[test]
    fn a_success_is_acked_and_uses_no_budget() {
        let ok = Ok::<(), ProvisionError>(());
        let attempts = Attempts::default().after(&ok);
        assert_eq!(
            attempts,
            Attempts {
                made: 1,
                budgeted: 0,
                here: 1
            }
        );
        assert_eq!(POLICY.decide(&ok, attempts), Fate::Ack);
    }

    #[test]
    fn permanent_failures_are_dead_lettered_at_once_with_their_reason() {
        let result: Result<(), _> =
            Err(Rejected::new(FailureReason::MissingEmail, "no email").into());
        let attempts = Attempts::default().after(&result);
        assert_eq!(
            POLICY.decide(&result, attempts),
            Fate::DeadLetter(FailureReason::MissingEmail)
        );
    }

    #[test]
    fn transient_failures_are_retried_here_until_the_budget_is_spent() {
        let result = transient();
        for n in 1..8 {
            let fate = POLICY.decide(&result, after(n, &result));
            assert!(is_retry_here(fate), "attempt {n}: {fate:?}");
        }
        assert_eq!(
            POLICY.decide(&result, after(8, &result)),
            Fate::DeadLetter(FailureReason::RetriesExhausted)
        );
    }

    #[test]
    fn conflicts_wait_in_the_broker_and_keep_their_reason_when_the_budget_is_spent() {
        let result = conflict();
        for n in 1..8 {
            let fate = POLICY.decide(&result, after(n, &result));
            assert!(matches!(fate, Fate::Defer { .. }), "attempt {n}: {fate:?}");
        }
        assert_eq!(
            POLICY.decide(&result, after(8, &result)),
            Fate::DeadLetter(FailureReason::EmailConflict)
        );
    }

    #[test]
    fn a_deferred_conflict_waits_along_the_same_curve_as_its_budget() {
        let result = conflict();
        for n in 1..8 {
            let ceiling = Duration::from_millis(100 << (n - 1));
            for _ in 0..50 {
                let Fate::Defer { delay } = POLICY.decide(&result, after(n, &result)) else {
                    panic!("attempt {n} is not deferred");
                };
                assert!(delay <= ceiling, "attempt {n}: {delay:?} > {ceiling:?}");
            }
        }
    }

    #[test]
    fn an_unavailable_database_never_uses_up_the_budget() {
        let result = unavailable();
        let attempts = after(10_000, &result);
        assert_eq!(attempts.made, 10_000);
        assert_eq!(attempts.budgeted, 0);
        assert!(is_retry_here(POLICY.decide(&result, attempts)));
    }

    #[test]
    fn an_outage_then_an_event_error_still_gets_the_whole_budget() {
        let outage = after(50, &unavailable());
        let transient = transient();
        let attempts = outage.after(&transient);
        assert_eq!(attempts.budgeted, 1);
        assert!(is_retry_here(POLICY.decide(&transient, attempts)));
    }

    #[test]
    fn a_redelivered_event_backs_off_from_the_start_in_its_new_worker() {
        let redelivered = Attempts {
            made: 5,
            budgeted: 5,
            here: 0,
        };
        for _ in 0..50 {
            let Fate::Retry { delay } =
                POLICY.decide(&transient(), redelivered.after(&transient()))
            else {
                panic!("not retried here");
            };
            assert!(delay <= Duration::from_millis(100), "{delay:?}");
        }
    }

    #[test]
    fn delays_grow_exponentially_under_full_jitter_and_stop_at_the_cap() {
        let ceilings = [
            100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000,
        ];
        for _ in 0..200 {
            for (delay, ceiling) in POLICY.delays().zip(ceilings) {
                assert!(
                    delay <= Duration::from_millis(ceiling),
                    "{delay:?} > {ceiling} ms"
                );
            }
            for (retry, ceiling) in (1..).zip(ceilings) {
                let delay = POLICY.delay_before_retry(retry);
                assert!(delay <= Duration::from_millis(ceiling), "retry {retry}");
            }
        }
        assert!(POLICY.delay_before_retry(u32::MAX) <= POLICY.max_delay);
    }

    #[test]
    fn delays_are_jittered_not_fixed() {
        let firsts: std::collections::HashSet<Duration> =
            (0..50).filter_map(|_| POLICY.delays().next()).collect();
        assert!(
            firsts.len() > 40,
            "only {} distinct first delays",
            firsts.len()
        );
    }

    #[test]
    fn the_delays_never_end() {
        assert_eq!(POLICY.delays().take(1000).count(), 1000);
    }
}
