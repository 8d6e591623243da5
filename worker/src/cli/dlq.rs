//! `worker dlq list` and `worker dlq replay`: the dead-letter commands for on-call engineers.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerSettings, DatabaseSettings};
use crate::dead_letter::{self, Filter, ReplayPlan, report};
use crate::{db, service};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One row per dead letter (never removes any), then counts by reason.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Republish matching dead letters to the main exchange; each leaves the dead-letter queue
    /// only after the broker confirmed its copy.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only these svix ids (repeatable).
        #[arg(long = "id", value_name = "SVIX_ID")]
        ids: Vec<String>,
        /// Change nothing; print what a replay would do, asking the database which replays
        /// would be no-ops.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Only dead letters with this `x-failure-reason` (e.g. `email_conflict`).
    #[arg(long, value_name = "CODE")]
    reason: Option<String>,
    /// Only this Clerk event type (e.g. `user.created`).
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// At most this many dead letters.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

impl FilterArgs {
    fn into_filter(self, ids: Vec<String>) -> Filter {
        Filter {
            reason: self.reason,
            event_type: self.event_type,
            ids,
            limit: self.limit,
        }
    }
}

/// Runs one `dlq` subcommand and prints its result.
pub(super) async fn run(
    database: &DatabaseSettings,
    broker: &BrokerSettings,
    command: DlqCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List { filter, json } => list(broker, filter, json).await?,
        DlqCommand::Replay {
            filter,
            ids,
            dry_run,
            json,
        } => {
            let plan = ReplayPlan {
                filter: filter.into_filter(ids),
                dry_run,
            };
            replay(database, broker, &plan, json).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(broker: &BrokerSettings, filter: FilterArgs, json: bool) -> anyhow::Result<()> {
    let listing = dead_letter::list(broker, &filter.into_filter(Vec::new())).await?;
    if json {
        println!("{}", json!(listing));
    } else {
        print!("{}", report::listing_table(&listing));
    }
    Ok(())
}

/// Replays until done or SIGTERM/SIGINT; a dry run asks the database which replays are no-ops.
async fn replay(
    database: &DatabaseSettings,
    broker: &BrokerSettings,
    plan: &ReplayPlan,
    json: bool,
) -> anyhow::Result<()> {
    let db = match plan.dry_run {
        true => Some(
            db::connect(database)
                .await
                .with_context(|| format!("a dry run asks {}", database.redacted_url()))?,
        ),
        false => None,
    };
    let stop = CancellationToken::new();
    tokio::spawn(service::cancel_on_signal(stop.clone()));
    let summary = dead_letter::replay(broker, db.as_ref(), plan, &stop).await?;
    if json {
        println!("{}", json!(summary));
    } else {
        print!("{}", report::summary_text(&summary));
    }
    Ok(())
}
