//! `worker dlq list | show | replay | discard`: the dead-letter commands for on-call engineers.
//! Each first moves what waits in the dead-letter queue into the store, then reads the store.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerSettings, DatabaseSettings};
use crate::db::Pool;
use crate::dead_letter::store::{Actor, Source};
use crate::dead_letter::{self, DlqError, Filter, ReplayPlan, Status, report};
use crate::{db, service};

/// Exit status of `worker dlq show` when the store has no such letter (sysexits EX_NOINPUT).
pub const EXIT_NO_LETTER: u8 = 66;
/// Exit status of `worker dlq discard` given nothing to choose letters by (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One row per dead letter, newest failure first, then counts by reason.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Only letters with this status; `any` for all.
        #[arg(long, value_name = "STATUS", default_value = "open")]
        status: StatusArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter in full: payload, headers, history, and the user as the database holds
    /// it now. Exit status 66 when there is no such letter.
    Show {
        #[arg(value_name = "SVIX_ID")]
        svix_id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Republish matching open dead letters to the main exchange; each is marked replayed only
    /// after the broker confirmed its copy.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Change nothing; print what a replay would do, and how many replays the database
        /// says are no longer needed.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        actor: ActorArgs,
    },
    /// Close matching open dead letters for good, with a reason; audited. Refuses to run
    /// without --id, --reason, --type or --user (exit status 64).
    Discard {
        #[command(flatten)]
        filter: FilterArgs,
        /// Why they will never be replayed, recorded with the action.
        #[arg(long, value_name = "TEXT")]
        discard_reason: String,
        /// Change nothing; print how many would be discarded.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        actor: ActorArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Only these svix ids (repeatable).
    #[arg(long = "id", value_name = "SVIX_ID")]
    ids: Vec<String>,
    /// Only dead letters with this failure reason (e.g. `email_conflict`).
    #[arg(long, value_name = "CODE")]
    reason: Option<String>,
    /// Only this Clerk event type (e.g. `user.created`).
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// Only this Clerk user id.
    #[arg(long = "user", value_name = "USER_ID")]
    user_id: Option<String>,
    /// At most this many dead letters.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

/// `--status`: one status, or any.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusArg {
    Open,
    Replayed,
    Resolved,
    Discarded,
    Any,
}

impl StatusArg {
    fn status(self) -> Option<Status> {
        match self {
            StatusArg::Open => Some(Status::Open),
            StatusArg::Replayed => Some(Status::Replayed),
            StatusArg::Resolved => Some(Status::Resolved),
            StatusArg::Discarded => Some(Status::Discarded),
            StatusArg::Any => None,
        }
    }
}

impl FilterArgs {
    /// The letters with `status` (`None`: any) matching these flags.
    fn into_filter(self, status: Option<Status>) -> Filter {
        Filter {
            reason: self.reason,
            event_type: self.event_type,
            ids: self.ids,
            user_id: self.user_id,
            status,
            limit: self.limit,
            ..Filter::default()
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ActorArgs {
    /// Who is acting, for the audit record (default: the operating-system user).
    #[arg(long, value_name = "NAME")]
    actor: Option<String>,
}

impl ActorArgs {
    fn actor(self) -> Actor {
        let name = self
            .actor
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        Actor {
            name,
            source: Source::Cli,
        }
    }
}

/// Runs one `dlq` subcommand and prints its result.
pub(super) async fn run(
    database: &DatabaseSettings,
    broker: &BrokerSettings,
    command: DlqCommand,
) -> anyhow::Result<ExitCode> {
    let db = store_ready(database, broker).await?;
    match command {
        DlqCommand::List {
            filter,
            status,
            json,
        } => list(&db, filter.into_filter(status.status()), json).await,
        DlqCommand::Show { svix_id, json } => show(&db, &svix_id, json).await,
        DlqCommand::Replay {
            filter,
            dry_run,
            json,
            actor,
        } => {
            let plan = ReplayPlan {
                filter: filter.into_filter(Some(Status::Open)),
                dry_run,
                actor: actor.actor(),
            };
            replay(&db, broker, &plan, json).await
        }
        DlqCommand::Discard {
            filter,
            discard_reason,
            dry_run,
            json,
            actor,
        } => {
            let filter = filter.into_filter(Some(Status::Open));
            discard(&db, &filter, &actor.actor(), &discard_reason, dry_run, json).await
        }
    }
}

/// Connects to the store and moves into it whatever waits in the dead-letter queue. A broker
/// that cannot be reached is a warning, not a failure: the store still answers what it holds
/// (a replay then fails on its own, asking the broker to publish).
async fn store_ready(database: &DatabaseSettings, broker: &BrokerSettings) -> anyhow::Result<Pool> {
    let db = db::connect(database)
        .await
        .with_context(|| format!("the dead letters are kept in {}", database.redacted_url()))?;
    if let Err(error) = dead_letter::move_waiting(broker, &db).await {
        eprintln!(
            "warning: letters waiting in the dead-letter queue could not be moved into the store \
             ({error}); showing what the store holds"
        );
    }
    Ok(db)
}

async fn list(db: &Pool, filter: Filter, json: bool) -> anyhow::Result<ExitCode> {
    let listing = dead_letter::list(db, &filter).await?;
    if json {
        println!("{}", json!(listing));
    } else {
        print!("{}", report::listing_table(&listing));
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(db: &Pool, svix_id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let Some(view) = dead_letter::show(db, svix_id).await? else {
        eprintln!("no dead letter with svix id {svix_id}");
        return Ok(ExitCode::from(EXIT_NO_LETTER));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", report::letter_text(&view));
        if let Some(user) = &view.user {
            print!("\n{}", super::user::human(user));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Replays until done or SIGTERM/SIGINT.
async fn replay(
    db: &Pool,
    broker: &BrokerSettings,
    plan: &ReplayPlan,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let stop = CancellationToken::new();
    tokio::spawn(service::cancel_on_signal(stop.clone()));
    let summary = dead_letter::replay(broker, db, plan, &stop).await?;
    if json {
        println!("{}", json!(summary));
    } else {
        print!("{}", report::summary_text(&summary));
    }
    Ok(ExitCode::SUCCESS)
}

async fn discard(
    db: &Pool,
    filter: &Filter,
    actor: &Actor,
    note: &str,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let summary = match dead_letter::discard(db, filter, actor, note, dry_run).await {
        Err(DlqError::Refused(why)) => {
            eprintln!("{why}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        other => other?,
    };
    if json {
        println!("{}", json!(summary));
    } else if dry_run {
        println!("dry run: would discard {}", summary.chosen);
    } else {
        println!(
            "discarded {} of {} chosen",
            summary.discarded, summary.chosen
        );
    }
    Ok(ExitCode::SUCCESS)
}
