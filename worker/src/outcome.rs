//! What became of an event, as the `outcome` label of `events_processed_total` and
//! `workspace_provisioning_duration_seconds` and the `outcome` field `worker provision` prints.
//! Dashboards match on these strings, so each is spelled here and only here, by `as_str`.

use serde::{Serialize, Serializer};

/// What applying an event did. Every variant is a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The user's workspace did not exist and now does.
    Created,
    /// Nothing to do: the user and workspace already reflect this event (a duplicate).
    AlreadyExisted,
    /// The user's row changed; the workspace was already there.
    Updated,
    /// The user and, by the cascade, the workspace were removed.
    Deleted,
    /// A deletion for a user that is not there: the goal is met.
    AlreadyDeleted,
    /// The stored row reflects a newer Clerk event; this older one changed nothing.
    Stale,
    /// Applied, but with a stand-in (`<id>@superseded.invalid`, or the derived fallback
    /// username) for a value another user holds as of a later Clerk time: this user gave it up
    /// since, and its own newer event will replace the stand-in.
    Superseded,
    /// Not a user event; nothing to provision.
    Unsupported,
}

impl Outcome {
    /// The stable label for metrics, logs and `worker provision`'s output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::AlreadyExisted => "already_existed",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::AlreadyDeleted => "already_deleted",
            Self::Stale => "stale",
            Self::Superseded => "superseded",
            Self::Unsupported => "unsupported",
        }
    }
}

/// Serialized as its label, so JSON output and metrics cannot spell an outcome differently.
impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An event, or one attempt at it, that provisioned nothing: the outcome labels of failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotProvisioned {
    /// An attempt failed (it may be retried).
    Failed,
    /// The event was sent to the dead-letter queue.
    DeadLettered,
}

impl NotProvisioned {
    /// The stable label for metrics and `worker provision`'s output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_spells_an_outcome_as_its_label() {
        for outcome in [
            Outcome::Created,
            Outcome::AlreadyExisted,
            Outcome::AlreadyDeleted,
        ] {
            assert_eq!(
                serde_json::to_value(outcome).unwrap(),
                serde_json::json!(outcome.as_str())
            );
        }
        assert_eq!(Outcome::AlreadyExisted.as_str(), "already_existed");
    }

    #[test]
    fn failure_labels_are_the_published_ones() {
        assert_eq!(NotProvisioned::Failed.as_str(), "failed");
        assert_eq!(NotProvisioned::DeadLettered.as_str(), "dead_lettered");
    }
}
