//! The broker contract: the default exchange, queue and binding names, the headers a message
//! carries, and the queue arguments. Operators, dashboards and runbooks rely on these exact
//! strings, so each is spelled here and only here; settings and [`Topology`] build on them.

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
/// Suffix of the retry queue's name (after the main queue's): events whose conflict may resolve
/// wait there, each for its own delay (per-message TTL), then go back to the main queue. Also
/// the name of the fanout exchange that leads into it.
pub const RETRY_SUFFIX: &str = ".retry";
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
    /// How many times a dead letter was replayed.
    pub const REPLAY_COUNT: &str = "x-replay-count";
    /// Attempts of an event that used up retry budget, carried across deferred retries (the
    /// retry queue); a replay starts without it, with the whole budget.
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
}

/// Where deferred retries go: into [`Self::exchange`], wait in [`Self::queue`] for their
/// per-message TTL, then leave through [`Self::redeliver_exchange`] into the main queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryRoute {
    pub exchange: String,
    pub queue: String,
    pub redeliver_exchange: String,
}

impl RetryRoute {
    /// The retry route of the main queue named `queue`: its names are the queue's and a suffix.
    pub fn for_queue(queue: &str) -> Self {
        Self {
            exchange: format!("{queue}{RETRY_SUFFIX}"),
            queue: format!("{queue}{RETRY_SUFFIX}"),
            redeliver_exchange: format!("{queue}{REDELIVER_SUFFIX}"),
        }
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
                "x-replay-count",
                "x-retry-attempts",
                "x-delivery-count",
                "x-death",
            ]
        );
    }
}
