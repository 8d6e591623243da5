//! Dead letters: events that can never be provisioned, kept byte for byte with why they failed,
//! for operators to inspect and replay.
//!
//! The consumer writes them ([`publish`], with the [`Failure`] as headers); the `worker dlq`
//! commands operate on them: [`list`] what failed and why, preview a [`replay`] and replay exactly
//! the chosen events, safely, while the worker keeps running; [`report`] prints the results.
//!
//! Reading a dead letter never removes it: each is taken unacknowledged on a channel of our own
//! and goes back to the queue when that channel closes, even if this process is killed. A replayed
//! one is acknowledged (removed) only after the broker confirmed its republish, so an
//! interruption can at worst replay an event twice, which provisioning absorbs.

mod browser;
mod failure;
mod letter;
mod list;
mod replay;
pub mod report;

use crate::broker;

pub use failure::{Failure, publish, timestamp};
pub use letter::{DeadLetter, Filter};
pub use list::{Listing, list};
pub use replay::{ReplayPlan, ReplaySummary, replay};

/// Why a `dlq` command could not finish.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("republishing failed: {0}")]
    Publish(#[from] broker::PublishError),
}
