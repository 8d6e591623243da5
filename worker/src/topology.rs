//! The broker contract: the default exchange, queue and binding names, the headers a message
//! carries, and the queue arguments. Operators, dashboards and runbooks rely on these exact
//! strings, so each is spelled here and only here; settings and [`Topology`] build on them.

use std::time::Duration;

use crate::domain::event_type;

/// Durable topic exchange Clerk events are published to (routing key = event type).
pub const DEFAULT_EXCHANGE: &str = "clerk.events";
/// Quorum queue the worker consumes.
pub const DEFAULT_QUEUE: &str = "workspace.provisioning";
/// Binding of the queue to the exchange: every user event.
pub const DEFAULT_BINDING_KEY: &str = event_type::ANY_USER_EVENT;
/// Exchange dead letters go to.
pub const DEFAULT_DEAD_LETTER_EXCHANGE: &str = "clerk.events.dlx";
/// Quorum queue holding dead letters for operators.
pub const DEFAULT_DEAD_LETTER_QUEUE: &str = "workspace.provisioning.dlq";
/// Binding of the dead-letter queue: every routing key, so nothing dead-lettered is lost.
pub const DEAD_LETTER_BINDING_KEY: &str = "#";
/// Suffix of the retry queue's name (after the main queue's), and of the fanout exchange that
/// leads into it. Deployments before the delay queues deferred events there, each with its own
/// per-message TTL; it is still declared with its arguments unchanged (declaring it with others
/// is a 406) and still drains into the main queue, but nothing new is sent to it. Each delay
/// queue's name is this suffix, a dot and its wait (`workspace.provisioning.retry.30s`).
pub const RETRY_SUFFIX: &str = ".retry";
/// The delay queues' waits, shortest first, each with the label its queue's name ends with.
/// One fixed per-queue TTL each (`x-message-ttl`), so every message in a delay queue expires in
/// the order it arrived and none waits behind a longer one, as it would behind a longer
/// per-message TTL (expired only at the head of a queue). A fixed list rather than one derived
/// from RETRY_INITIAL_DELAY and RETRY_MAX_DELAY: every process declares the same queues whatever
/// its settings (the ingress has no retry settings), names never change with a setting, and a
/// queue's name always means the same TTL. Steps of about 3x: a deferred retry waits in the
/// queue nearest its delay (see `crate::retry`).
pub const DELAY_QUEUES: [(Duration, &str); 10] = [
    (Duration::from_millis(100), "100ms"),
    (Duration::from_millis(300), "300ms"),
    (Duration::from_secs(1), "1s"),
    (Duration::from_secs(3), "3s"),
    (Duration::from_secs(10), "10s"),
    (Duration::from_secs(30), "30s"),
    (Duration::from_secs(60), "1m"),
    (Duration::from_secs(3 * 60), "3m"),
    (Duration::from_secs(10 * 60), "10m"),
    (Duration::from_secs(30 * 60), "30m"),
];

/// The delay queue wait nearest `delay` among those not above `cap` (the shortest queue's when
/// even that is above it; a tie takes the shorter). A delay queue's TTL is fixed, so a deferred
/// retry's jittered delay is rounded to one. Nearest, not the next shorter: rounding down would
/// halve full jitter's mean wait and never use the queue at the cap, while the nearest keeps the
/// mean near half the ceiling and still spreads a crowd over several queues.
pub fn delay_queue_wait(delay: Duration, cap: Duration) -> Duration {
    let (shortest, _) = DELAY_QUEUES[0];
    let allowed = DELAY_QUEUES
        .iter()
        .map(|&(wait, _)| wait)
        .filter(|&wait| wait <= cap);
    allowed.fold(shortest, |nearest, wait| {
        if wait.abs_diff(delay) < nearest.abs_diff(delay) {
            wait
        } else {
            nearest
        }
    })
}

/// Suffix of the fanout exchange (after the main queue's name) that the retry queue dead-letters
/// expired events to; only the main queue is bound to it, and routing keys stay as they were.
pub const REDELIVER_SUFFIX: &str = ".redeliver";
/// Deliveries of one message before the broker dead-letters it.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 10;

/// Message headers: those the product sets, and those the broker sets that it reads.
pub mod header {
    /// When the ingress received the event, in milliseconds since the epoch (the AMQP
    /// `timestamp` property only has seconds). `event_lag_seconds` starts there.
    pub const RECEIVED_AT_MS: &str = "x-received-at-ms";
    /// The ingress's receive time of a replayed letter, kept when a replay resets
    /// [`RECEIVED_AT_MS`] (so `event_lag_seconds` measures the replay, not the wait).
    pub const ORIGINAL_RECEIVED_AT_MS: &str = "x-original-received-at-ms";
    /// A dead letter's failure reason code.
    pub const FAILURE_REASON: &str = "x-failure-reason";
    /// A dead letter's failure, in words.
    pub const FAILURE_DETAIL: &str = "x-failure-detail";
    /// Attempts made before the event was dead-lettered.
    pub const ATTEMPTS: &str = "x-attempts";
    pub const FIRST_FAILED_AT: &str = "x-first-failed-at";
    pub const LAST_FAILED_AT: &str = "x-last-failed-at";
    /// When the event's current run of failures began (its first failed attempt since the
    /// ingress received it or a replay republished it), in milliseconds since the epoch. Carried
    /// across deferred retries: CONFLICT_RETRY_WINDOW is measured from it. Not
    /// [`FIRST_FAILED_AT`], which a dead letter keeps through replays (for operators), while a
    /// replay must start a whole new window.
    pub const FAILING_SINCE_MS: &str = "x-failing-since-ms";
    /// How many times a dead letter was replayed.
    pub const REPLAY_COUNT: &str = "x-replay-count";
    /// Failed attempts of an event for a reason of its own (transient or conflict), carried
    /// across deferred retries (the delay queues): a deferred retry's delay grows with them. A
    /// replay starts without it.
    pub const RETRY_ATTEMPTS: &str = "x-retry-attempts";
    /// Set by quorum queues: earlier deliveries of this message.
    pub const DELIVERY_COUNT: &str = "x-delivery-count";
    /// Set by RabbitMQ 4.3 quorum queues: every time the message was handed out, returns
    /// without blame (`basic.nack`) included. Logged only.
    pub const ACQUIRED_COUNT: &str = "x-acquired-count";
    /// Set by the broker on a message it dead-lettered itself: a list of tables.
    pub const DEATH: &str = "x-death";
    /// The field of a [`DEATH`] table saying why (e.g. `delivery_limit`).
    pub const DEATH_REASON: &str = "reason";
    /// The field of a [`DEATH`] table saying when (an AMQP timestamp, in seconds).
    pub const DEATH_TIME: &str = "time";
}

/// Queue arguments (`x-arguments`) and their values.
pub mod argument {
    pub const QUEUE_TYPE: &str = "x-queue-type";
    pub const QUORUM: &str = "quorum";
    pub const DEAD_LETTER_EXCHANGE: &str = "x-dead-letter-exchange";
    pub const DEAD_LETTER_STRATEGY: &str = "x-dead-letter-strategy";
    pub const AT_LEAST_ONCE: &str = "at-least-once";
    pub const OVERFLOW: &str = "x-overflow";
    pub const REJECT_PUBLISH: &str = "reject-publish";
    pub const DELIVERY_LIMIT: &str = "x-delivery-limit";
    pub const QUORUM_INITIAL_GROUP_SIZE: &str = "x-quorum-initial-group-size";
    /// A queue's per-queue message TTL, in milliseconds (quorum queues: RabbitMQ >= 3.10).
    pub const MESSAGE_TTL: &str = "x-message-ttl";
}

/// Where deferred retries go: into the fanout exchange of one of [`Self::delays`], wait in the
/// quorum queue of the same name for its TTL, then leave through [`Self::redeliver_exchange`]
/// into the main queue. [`Self::exchange`] and [`Self::queue`] are the retry queue of earlier
/// deployments, declared and drained the same way so what they left there comes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryRoute {
    pub delays: [DelayQueue; DELAY_QUEUES.len()],
    pub exchange: String,
    pub queue: String,
    pub redeliver_exchange: String,
}

/// A delay queue: the quorum queue and the fanout exchange into it share [`Self::name`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelayQueue {
    /// Its `x-message-ttl`: how long every message waits in it.
    pub wait: Duration,
    pub name: String,
}

impl RetryRoute {
    /// The retry route of the main queue named `queue`: its names are the queue's and a suffix.
    pub fn for_queue(queue: &str) -> Self {
        let delays = DELAY_QUEUES.map(|(wait, label)| DelayQueue {
            wait,
            name: format!("{queue}{RETRY_SUFFIX}.{label}"),
        });
        Self {
            delays,
            exchange: format!("{queue}{RETRY_SUFFIX}"),
            queue: format!("{queue}{RETRY_SUFFIX}"),
            redeliver_exchange: format!("{queue}{REDELIVER_SUFFIX}"),
        }
    }

    /// The delay queue whose wait is nearest `delay` (the shorter of two equally near).
    pub fn delay_queue(&self, delay: Duration) -> &DelayQueue {
        let wait = delay_queue_wait(delay, Duration::MAX);
        let by_wait = self.delays.iter().find(|queue| queue.wait == wait);
        by_wait.unwrap_or(&self.delays[0])
    }
}

/// The names the product's exchanges and queues go by, with the prefix applied. Built from the
/// settings by `Topology::from_settings` (in [`crate::config`], so this contract needs nothing
/// from the settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub binding_key: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub retry: RetryRoute,
    pub delivery_limit: u32,
    /// Sent as `x-quorum-initial-group-size` only when set.
    pub quorum_initial_group_size: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_the_published_ones() {
        let names = [
            header::RECEIVED_AT_MS,
            header::ORIGINAL_RECEIVED_AT_MS,
            header::FAILURE_REASON,
            header::FAILURE_DETAIL,
            header::ATTEMPTS,
            header::FIRST_FAILED_AT,
            header::LAST_FAILED_AT,
            header::FAILING_SINCE_MS,
            header::REPLAY_COUNT,
            header::RETRY_ATTEMPTS,
            header::DELIVERY_COUNT,
            header::DEATH,
        ];
        assert_eq!(
            names,
            [
                "x-received-at-ms",
                "x-original-received-at-ms",
                "x-failure-reason",
                "x-failure-detail",
                "x-attempts",
                "x-first-failed-at",
                "x-last-failed-at",
                "x-failing-since-ms",
                "x-replay-count",
                "x-retry-attempts",
                "x-delivery-count",
                "x-death",
            ]
        );
    }

    #[test]
    fn each_delay_queue_is_named_after_its_wait_and_none_after_the_old_retry_queue() {
        let route = RetryRoute::for_queue("p.workspace.provisioning");
        let names: Vec<&str> = route.delays.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "p.workspace.provisioning.retry.100ms",
                "p.workspace.provisioning.retry.300ms",
                "p.workspace.provisioning.retry.1s",
                "p.workspace.provisioning.retry.3s",
                "p.workspace.provisioning.retry.10s",
                "p.workspace.provisioning.retry.30s",
                "p.workspace.provisioning.retry.1m",
                "p.workspace.provisioning.retry.3m",
                "p.workspace.provisioning.retry.10m",
                "p.workspace.provisioning.retry.30m",
            ]
        );
        let label_means_wait = |label: &str| humantime::parse_duration(label).ok();
        for (wait, label) in DELAY_QUEUES {
            assert_eq!(label_means_wait(label), Some(wait), "{label}");
        }
        assert!(DELAY_QUEUES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(route.queue, "p.workspace.provisioning.retry");
    }

    #[test]
    fn a_delay_goes_to_the_queue_whose_wait_is_nearest() {
        let route = RetryRoute::for_queue("q");
        let queue_for = |ms: u64| route.delay_queue(Duration::from_millis(ms)).name.as_str();
        assert_eq!(queue_for(0), "q.retry.100ms");
        assert_eq!(queue_for(200), "q.retry.100ms", "a tie takes the shorter");
        assert_eq!(queue_for(201), "q.retry.300ms");
        assert_eq!(queue_for(30_000), "q.retry.30s");
        assert_eq!(queue_for(24 * 3_600_000), "q.retry.30m");
    }
}
