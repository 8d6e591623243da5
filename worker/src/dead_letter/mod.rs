//! Dead letters: events that can never be provisioned, kept byte for byte with why they failed,
//! for operators to find, read, replay or discard.
//!
//! The consumer writes them to the dead-letter queue ([`publish`], with the [`Failure`] as
//! headers), which is only their durable landing: the worker's [`Keeper`] moves each into the
//! [`store`] in PostgreSQL, acknowledging it once its row is committed, and the `worker dlq`
//! commands first [`move_waiting`] letters themselves, so they work with no worker running.
//! Everything operators do reads and writes the store: [`list`], [`show`], [`replay`] (each
//! letter marked replayed only after the broker confirmed its copy) and [`discard`], each
//! action recorded with who did it. No letter is ever browsed in the queue, so looking costs the
//! broker nothing and never counts as a redelivery.

mod amqp_json;
mod discard;
mod failure;
mod keeper;
mod letter;
mod list;
mod replay;
pub mod report;
mod show;
pub mod store;

use crate::broker;

pub use amqp_json::headers_from_json;
pub use discard::{DiscardSummary, discard, discard_ids};
pub use failure::{Failure, publish, timestamp};
pub use keeper::{Keeper, move_waiting};
pub use letter::{Arrival, DeadLetter, Filter, Status};
pub use list::{Listing, list};
pub use replay::{ReplayPlan, ReplaySummary, Replayed, replay, replay_ids};
pub use show::{LetterView, show};

/// Why a dead-letter command or the keeper could not finish.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("republishing failed: {0}")]
    Publish(#[from] broker::PublishError),
    #[error("broker: the dead-letter queue's consumer was cancelled")]
    ConsumerEnded,
    /// The request itself cannot be carried out (a usage error).
    #[error("{0}")]
    Refused(&'static str),
}

impl DlqError {
    /// A stable code for the failure, for a span's `error.type`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Broker(_) => "broker_error",
            Self::Database(_) => "database",
            Self::Publish(err) => err.as_str(),
            Self::ConsumerEnded => "consumer_ended",
            Self::Refused(_) => "refused",
        }
    }
}
