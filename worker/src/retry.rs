//! The retry policy: what becomes of a delivery after an attempt, and how long to wait.
//!
//! Pure and tested without I/O: [`RetryPolicy::decide`] turns an attempt's result into a
//! [`Fate`]; the consumer's pipeline only carries it out.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::error::{FailureReason, ProvisionError};
use crate::topology::delay_queue_wait;

/// Retry limits and delays (from [`crate::config::ConsumerSettings`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Attempts allowed for a transient error since the worker took the delivery, the first
    /// one included.
    pub max_attempts: u32,
    /// How long after its first failure a conflict is still retried. Its own limit rather than
    /// attempts: what frees the value is another user's event, which comes when it comes (behind
    /// a backlog, or a webhook Svix retries minutes or hours later), not after so many tries.
    pub conflict_window: Duration,
}

/// What becomes of a delivery after an attempt: a value, so the decision can be tested apart
/// from the broker and the database that carry it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Provisioned: acknowledge.
    Ack,
    /// Attempt again in this worker after `delay`; the delivery stays unacknowledged meanwhile.
    Retry { delay: Duration },
    /// Attempt again after `delay`, from the broker: the event waits in the delay queue whose
    /// wait is `delay`, so the wait holds no consumer slot and no prefetch (another user's
    /// event may be what resolves it).
    Defer { delay: Duration },
    /// Never going to work: publish to the dead-letter queue with this reason, then acknowledge.
    DeadLetter(FailureReason),
    /// The session ends with the delivery unfinished: hand it back to the queue without blame.
    /// Decided by the session's end, never by an attempt.
    GiveBack,
}

impl Fate {
    /// What a delivery's span says became of it when it did not end provisioned.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ack => "acked",
            Self::Retry { .. } => "retrying",
            Self::Defer { .. } => "deferred",
            Self::DeadLetter(_) => crate::outcome::NotProvisioned::DeadLettered.as_str(),
            Self::GiveBack => "given_back",
        }
    }
}

/// How far a delivery has got: counts kept per delivery while it is retried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Every attempt made, for logs and the `x-attempts` header.
    pub made: u32,
    /// Attempts that failed for a reason of this event's own (transient or a conflict): a
    /// deferred retry's delay grows with them. Carried across deferred retries in the
    /// `x-retry-attempts` header.
    pub failed: u32,
    /// Transient failures since this worker took the delivery: only these use up
    /// `max_attempts`. A conflict sends the delivery to a delay queue, so they are transient
    /// failures in a row.
    pub transient: u32,
    /// Attempts made since this worker took the delivery: the in-process backoff grows with
    /// them.
    pub here: u32,
}

impl Attempts {
    /// Counts one more attempt that ended in `result`.
    pub fn after<T>(self, result: &Result<T, ProvisionError>) -> Self {
        let transient = matches!(result, Err(ProvisionError::Transient(_)));
        let failed = transient || matches!(result, Err(ProvisionError::Conflict(_)));
        Self {
            made: self.made + 1,
            failed: self.failed + u32::from(failed),
            transient: self.transient + u32::from(transient),
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
        conflict_window: Duration::ZERO,
    };

    /// Decides the fate of a delivery after an attempt that `attempts` already counts, the
    /// event having failed for `failing_for` since its first failure (zero after a success).
    ///
    /// The database being unavailable says nothing about the event, so it is retried for as long
    /// as the outage lasts without using up attempts. A conflict waits in the broker until
    /// [`Self::conflict_window`] has passed since the first failure, however many attempts that
    /// takes; a transient error is retried here `max_attempts` times.
    pub fn decide<T>(
        &self,
        result: &Result<T, ProvisionError>,
        attempts: Attempts,
        failing_for: Duration,
    ) -> Fate {
        let Err(err) = result else {
            return Fate::Ack;
        };
        match err {
            ProvisionError::Permanent(rejected) => Fate::DeadLetter(rejected.reason),
            ProvisionError::Unavailable(_) => Fate::Retry {
                delay: self.delay_before_retry(attempts.here),
            },
            ProvisionError::Transient(_) if attempts.transient < self.max_attempts => Fate::Retry {
                delay: self.delay_before_retry(attempts.here),
            },
            ProvisionError::Transient(_) => Fate::DeadLetter(FailureReason::RetriesExhausted),
            ProvisionError::Conflict(_) if failing_for < self.conflict_window => Fate::Defer {
                delay: self.deferred_delay(attempts.failed),
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

    /// The wait before deferred retry `retry`: [`Self::delay_before_retry`] rounded to a delay
    /// queue's wait (see [`delay_queue_wait`]).
    pub fn deferred_delay(&self, retry: u32) -> Duration {
        delay_queue_wait(self.delay_before_retry(retry), self.max_delay)
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
    use crate::topology::DELAY_QUEUES;

    const POLICY: RetryPolicy = RetryPolicy {
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(30),
        max_attempts: 8,
        conflict_window: Duration::from_secs(3 * 3600),
    };

    /// No time has passed since the first failure.
    const AT_ONCE: Duration = Duration::ZERO;

    #[test]
    fn no_delay_exceeds_the_cap_even_when_the_initial_delay_does() {
        let inverted = RetryPolicy {
            initial_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(1),
            max_attempts: 8,
            conflict_window: Duration::ZERO,
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
                failed: 0,
                transient: 0,
                here: 1
            }
        );
        assert_eq!(POLICY.decide(&ok, attempts, AT_ONCE), Fate::Ack);
    }

    #[test]
    fn permanent_failures_are_dead_lettered_at_once_with_their_reason() {
        let result: Result<(), _> =
            Err(Rejected::new(FailureReason::MissingEmail, "no email").into());
        let attempts = Attempts::default().after(&result);
        assert_eq!(
            POLICY.decide(&result, attempts, AT_ONCE),
            Fate::DeadLetter(FailureReason::MissingEmail)
        );
    }

    #[test]
    fn transient_failures_are_retried_here_until_the_budget_is_spent() {
        let result = transient();
        let long_after = Duration::from_secs(24 * 3600);
        for n in 1..8 {
            let fate = POLICY.decide(&result, after(n, &result), long_after);
            assert!(is_retry_here(fate), "attempt {n}: {fate:?}");
        }
        assert_eq!(
            POLICY.decide(&result, after(8, &result), AT_ONCE),
            Fate::DeadLetter(FailureReason::RetriesExhausted)
        );
    }

    #[test]
    fn conflicts_do_not_use_up_the_transient_budget() {
        let waited = after(500, &conflict());
        assert_eq!((waited.failed, waited.transient), (500, 0));
        let deadlock = transient();
        let fate = POLICY.decide(&deadlock, waited.after(&deadlock), Duration::from_secs(60));
        assert!(is_retry_here(fate), "{fate:?}");
    }

    #[test]
    fn a_conflict_waits_in_the_broker_however_many_attempts_within_the_window() {
        let result = conflict();
        let inside = [
            AT_ONCE,
            Duration::from_secs(60),
            Duration::from_secs(3 * 3600 - 1),
        ];
        for (n, failing_for) in [1, 8, 9, 10_000].into_iter().zip(inside.iter().cycle()) {
            let fate = POLICY.decide(&result, after(n, &result), *failing_for);
            assert!(matches!(fate, Fate::Defer { .. }), "attempt {n}: {fate:?}");
        }
    }

    #[test]
    fn a_conflict_past_the_window_is_dead_lettered_with_its_reason() {
        let result = conflict();
        for failing_for in [3 * 3600, 3 * 3600 + 1, 48 * 3600] {
            assert_eq!(
                POLICY.decide(&result, after(2, &result), Duration::from_secs(failing_for)),
                Fate::DeadLetter(FailureReason::EmailConflict),
                "failing for {failing_for} s"
            );
        }
    }

    #[test]
    fn a_window_of_zero_dead_letters_a_conflict_at_once() {
        let no_window = RetryPolicy {
            conflict_window: Duration::ZERO,
            ..POLICY
        };
        let username = Err::<(), _>(ProvisionError::Conflict(Rejected::new(
            FailureReason::UsernameConflict,
            "held by user_2",
        )));
        assert_eq!(
            no_window.decide(&username, after(1, &username), AT_ONCE),
            Fate::DeadLetter(FailureReason::UsernameConflict)
        );
    }

    #[test]
    fn a_deferred_conflict_waits_in_a_delay_queue_near_its_curve_and_never_above_the_cap() {
        let result = conflict();
        let waits: Vec<Duration> = DELAY_QUEUES.iter().map(|&(wait, _)| wait).collect();
        for n in 1..20 {
            let ceiling = Duration::from_millis(100u64 << (n - 1)).min(POLICY.max_delay);
            // The shortest delay queue that the ceiling does not exceed bounds the rounding.
            let bound = waits.iter().find(|&&w| w >= ceiling).copied();
            for _ in 0..50 {
                let Fate::Defer { delay } =
                    POLICY.decide(&result, after(n, &result), Duration::from_secs(1))
                else {
                    panic!("attempt {n} is not deferred");
                };
                assert!(waits.contains(&delay), "{delay:?} is no delay queue's wait");
                assert!(delay <= POLICY.max_delay, "attempt {n}: {delay:?}");
                assert!(bound.is_none_or(|b| delay <= b), "attempt {n}: {delay:?}");
            }
        }
    }

    #[test]
    fn an_unavailable_database_never_uses_up_the_budget() {
        let result = unavailable();
        let attempts = after(10_000, &result);
        assert_eq!(attempts.made, 10_000);
        assert_eq!((attempts.failed, attempts.transient), (0, 0));
        assert!(is_retry_here(POLICY.decide(&result, attempts, AT_ONCE)));
    }

    #[test]
    fn an_outage_then_an_event_error_still_gets_the_whole_budget() {
        let outage = after(50, &unavailable());
        let transient = transient();
        let attempts = outage.after(&transient);
        assert_eq!(attempts.transient, 1);
        assert!(is_retry_here(POLICY.decide(&transient, attempts, AT_ONCE)));
    }

    #[test]
    fn a_redelivered_event_backs_off_from_the_start_in_its_new_worker() {
        let redelivered = Attempts {
            made: 5,
            failed: 5,
            transient: 0,
            here: 0,
        };
        for _ in 0..50 {
            let Fate::Retry { delay } =
                POLICY.decide(&transient(), redelivered.after(&transient()), AT_ONCE)
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

    #[test]
    fn a_delay_rounds_to_the_nearest_delay_queue_not_above_the_cap() {
        let wait = |delay_ms: u64, cap_ms: u64| {
            delay_queue_wait(
                Duration::from_millis(delay_ms),
                Duration::from_millis(cap_ms),
            )
            .as_millis()
        };
        assert_eq!(wait(0, 30_000), 100);
        assert_eq!(wait(190, 30_000), 100, "nearer 100 ms than 300 ms");
        assert_eq!(wait(210, 30_000), 300);
        assert_eq!(wait(21_000, 30_000), 30_000);
        assert_eq!(wait(19_000, 30_000), 10_000);
        assert_eq!(
            wait(49_000, 50_000),
            30_000,
            "1 min is nearer but above the cap"
        );
        assert_eq!(wait(5_000, 2_000), 1_000);
        assert_eq!(wait(50, 10), 100, "the shortest queue even above the cap");
        assert_eq!(
            wait(7_200_000, 7_200_000),
            1_800_000,
            "the longest queue waits 30 min"
        );
    }

    #[test]
    fn rounding_to_delay_queues_keeps_the_mean_wait_of_full_jitter() {
        let at_cap = (0..20_000).map(|_| POLICY.deferred_delay(64).as_secs_f64());
        let mean = at_cap.sum::<f64>() / 20_000.0;
        // Full jitter's mean at the 30 s cap is 15 s; rounding down would give about 7.5 s.
        assert!((12.0..18.0).contains(&mean), "mean wait {mean} s");
    }
}
