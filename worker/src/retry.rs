//! The retry policy: what to do with a delivery after an attempt, and how long to wait.
//!
//! Pure and tested without I/O. The consumer loop only carries the decision out.

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

/// What the consumer does with a delivery whose attempt failed (a success is simply acked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try again after waiting; the delivery stays unacknowledged meanwhile.
    Retry,
    /// Try again after this delay, from the broker: the event waits in the retry queue, so the
    /// wait holds no consumer slot and no prefetch (another user's event may be what resolves
    /// it).
    Defer(Duration),
    /// Never going to work: publish to the dead-letter queue with this reason, then acknowledge.
    DeadLetter(FailureReason),
}

/// How far a delivery has got: counts kept per delivery while it is retried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Every attempt made, for logs and the `x-attempts` header.
    pub made: u32,
    /// Attempts that failed for a reason specific to this event; only these use up the budget.
    /// Carried across deferred retries in the `x-retry-attempts` header.
    pub budgeted: u32,
}

impl RetryPolicy {
    /// Reconnecting to the broker: quick first tries, and never more than 5 s between tries so
    /// service resumes soon after the broker does.
    pub const RECONNECT: RetryPolicy = RetryPolicy {
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(5),
        max_attempts: u32::MAX,
    };

    /// Decides the fate of a delivery after a failed attempt that `attempts` already counts.
    ///
    /// The database being unavailable says nothing about the event, so it is retried for as long
    /// as the outage lasts without using up attempts.
    pub fn decide(&self, err: &ProvisionError, attempts: Attempts) -> Decision {
        match err {
            ProvisionError::Permanent(rejected) => Decision::DeadLetter(rejected.reason),
            ProvisionError::Unavailable(_) => Decision::Retry,
            ProvisionError::Transient(_) if attempts.budgeted < self.max_attempts => {
                Decision::Retry
            }
            ProvisionError::Transient(_) => Decision::DeadLetter(FailureReason::RetriesExhausted),
            ProvisionError::Conflict(_) if attempts.budgeted < self.max_attempts => {
                Decision::Defer(self.delay_before(attempts.budgeted + 1))
            }
            ProvisionError::Conflict(rejected) => Decision::DeadLetter(rejected.reason),
        }
    }

    /// Counts one more attempt that ended in `result`.
    pub fn count<T>(result: &Result<T, ProvisionError>, attempts: Attempts) -> Attempts {
        let budgeted = matches!(
            result,
            Err(ProvisionError::Transient(_) | ProvisionError::Conflict(_))
        );
        Attempts {
            made: attempts.made + 1,
            budgeted: attempts.budgeted + u32::from(budgeted),
        }
    }

    /// The delays between attempts: exponential from the initial delay up to the cap, each with
    /// full jitter (uniform between zero and the exponential value), so a crowd of deliveries
    /// that failed together does not retry together.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .without_max_times()
            .build()
            .map(full_jitter)
    }
}

impl RetryPolicy {
    /// The delay before budgeted attempt `attempt` (the first is 1): the same curve as
    /// [`Self::delays`], for a retry that lives in the broker rather than in a loop.
    pub fn delay_before(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(2).min(31);
        let ceiling = self
            .initial_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay);
        full_jitter(ceiling)
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

    fn decide(result: &Result<(), ProvisionError>, attempts: Attempts) -> Decision {
        POLICY.decide(result.as_ref().unwrap_err(), attempts)
    }

    fn after(n: u32, result: &Result<(), ProvisionError>) -> Attempts {
        (0..n).fold(Attempts::default(), |a, _| RetryPolicy::count(result, a))
    }

    #[test]
    fn a_success_uses_no_budget() {
        let attempts = RetryPolicy::count(&Ok::<(), ProvisionError>(()), Attempts::default());
        assert_eq!(
            attempts,
            Attempts {
                made: 1,
                budgeted: 0
            }
        );
    }

    #[test]
    fn permanent_failures_are_dead_lettered_at_once_with_their_reason() {
        let result: Result<(), _> =
            Err(Rejected::new(FailureReason::MissingEmail, "no email").into());
        let attempts = RetryPolicy::count(&result, Attempts::default());
        assert_eq!(
            decide(&result, attempts),
            Decision::DeadLetter(FailureReason::MissingEmail)
        );
    }

    #[test]
    fn transient_failures_are_retried_until_the_budget_is_spent() {
        let result = transient();
        for n in 1..8 {
            assert_eq!(
                decide(&result, after(n, &result)),
                Decision::Retry,
                "attempt {n}"
            );
        }
        assert_eq!(
            decide(&result, after(8, &result)),
            Decision::DeadLetter(FailureReason::RetriesExhausted)
        );
    }

    #[test]
    fn an_unavailable_database_never_uses_up_the_budget() {
        let result = unavailable();
        let attempts = after(10_000, &result);
        assert_eq!(attempts.made, 10_000);
        assert_eq!(attempts.budgeted, 0);
        assert_eq!(decide(&result, attempts), Decision::Retry);
    }

    #[test]
    fn an_outage_then_an_event_error_still_gets_the_whole_budget() {
        let outage = after(50, &unavailable());
        let transient = transient();
        let attempts = RetryPolicy::count(&transient, outage);
        assert_eq!(attempts.budgeted, 1);
        assert_eq!(decide(&transient, attempts), Decision::Retry);
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
        }
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
