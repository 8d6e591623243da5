//! The `worker` command line: one subcommand per operator task. The binary's edge, so errors
//! are `anyhow` here and typed everywhere below.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::config::{
    BrokerSettings, ConsumerSettings, DatabaseSettings, IngressSettings, LogFormat, OpsSettings,
};
use crate::dlq::{self, Filter, ReplayPlan};
use crate::domain::Event;
use crate::error::ProvisionError;
use crate::provision::Provisioned;
use crate::{clerk, db, health, provision, service, telemetry};

/// Exit status of `worker provision` when the event can never be applied (sysexits EX_DATAERR).
pub const EXIT_PERMANENT: u8 = 65;
/// Exit status of `worker provision` when trying again later may work (sysexits EX_TEMPFAIL).
pub const EXIT_TRANSIENT: u8 = 75;

#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about = "Provisions users and workspaces from Clerk events"
)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t, global = true)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub database: DatabaseSettings,

    #[command(flatten)]
    pub broker: BrokerSettings,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if it is missing and apply pending migrations.
    Migrate,
    /// Print the database health check as JSON; exit status 1 when unhealthy.
    Health,
    /// Apply one Clerk event body without the broker and print the outcome as one JSON line.
    Provision {
        /// The webhook body: a file, or `-` for standard input.
        file: PathBuf,
    },
    /// Consume Clerk events from RabbitMQ and provision them until SIGTERM/SIGINT.
    Consume {
        #[command(flatten)]
        consumer: ConsumerSettings,
        #[command(flatten)]
        ops: OpsSettings,
    },
    /// Serve the Clerk webhook endpoint alone, publishing verified events to RabbitMQ.
    Ingress {
        #[command(flatten)]
        ingress: IngressSettings,
        #[command(flatten)]
        ops: OpsSettings,
    },
    /// Inspect and replay dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Everything in one process: migrate, then ingress, consumer and ops server.
    Run {
        #[command(flatten)]
        consumer: ConsumerSettings,
        #[command(flatten)]
        ingress: IngressSettings,
        #[command(flatten)]
        ops: OpsSettings,
    },
}

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

/// The whole binary: parse arguments, set up logs, run the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(code) => code,
        Err(err) => {
            error!(error = format!("{err:#}"), "command failed");
            ExitCode::FAILURE
        }
    }
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if let Some(plan) = self.service_plan() {
            service::run(plan).await?;
            return Ok(ExitCode::SUCCESS);
        }
        let Self {
            database,
            broker,
            command,
            ..
        } = self;
        match command {
            Command::Migrate => {
                db::migrate(&database)
                    .await
                    .with_context(|| format!("migrating {}", database.redacted_url()))?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Health => Ok(print_health(&database).await),
            Command::Provision { file } => provision_file(&database, &file).await,
            Command::Dlq { command } => dead_letters(&database, &broker, command).await,
            // Handled above, through their service plan.
            Command::Consume { .. } | Command::Ingress { .. } | Command::Run { .. } => {
                Ok(ExitCode::SUCCESS)
            }
        }
    }

    /// The parts a long-running command (`consume`, `ingress`, `run`) runs; `None` for the
    /// one-shot commands. Tests build an in-process application from it.
    pub fn service_plan(&self) -> Option<service::Plan> {
        let plan = |ops: &OpsSettings, migrate, consumer, ingress| service::Plan {
            database: self.database.clone(),
            broker: self.broker.clone(),
            ops: ops.clone(),
            migrate,
            consumer,
            ingress,
        };
        match &self.command {
            Command::Consume { consumer, ops } => {
                Some(plan(ops, false, Some(consumer.clone()), None))
            }
            Command::Ingress { ingress, ops } => {
                Some(plan(ops, false, None, Some(ingress.clone())))
            }
            Command::Run {
                consumer,
                ingress,
                ops,
            } => Some(plan(
                ops,
                true,
                Some(consumer.clone()),
                Some(ingress.clone()),
            )),
            Command::Migrate
            | Command::Health
            | Command::Provision { .. }
            | Command::Dlq { .. } => None,
        }
    }
}

async fn dead_letters(
    database: &DatabaseSettings,
    broker: &BrokerSettings,
    command: DlqCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List { filter, json } => {
            let listing = dlq::list(broker, &filter.into_filter(Vec::new())).await?;
            if json {
                println!("{}", json!(listing));
            } else {
                print!("{}", dlq::report::listing_table(&listing));
            }
        }
        DlqCommand::Replay {
            filter,
            ids,
            dry_run,
            json,
        } => {
            let db = match dry_run {
                true => Some(
                    db::connect(database)
                        .await
                        .with_context(|| format!("a dry run asks {}", database.redacted_url()))?,
                ),
                false => None,
            };
            let stop = CancellationToken::new();
            tokio::spawn(service::cancel_on_signal(stop.clone()));
            let plan = ReplayPlan {
                filter: filter.into_filter(ids),
                dry_run,
            };
            let summary = dlq::replay(broker, db.as_ref(), &plan, &stop).await?;
            if json {
                println!("{}", json!(summary));
            } else {
                print!("{}", dlq::report::summary_text(&summary));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn print_health(settings: &DatabaseSettings) -> ExitCode {
    let report = match db::connect(settings).await {
        Ok(db) => health::check(&db).await,
        Err(err) => health::HealthReport::unreachable(err.to_string()),
    };
    println!("{}", json!(report));
    if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn provision_file(settings: &DatabaseSettings, file: &Path) -> anyhow::Result<ExitCode> {
    let body = read_body(file)?;
    let event = match clerk::parse_event(&body) {
        Ok(event) => event,
        Err(rejected) => return Ok(print_failure(None, &rejected.into())),
    };
    let result = match db::connect(settings).await {
        Ok(db) => provision::provision(&db, &event).await,
        Err(err) => Err(ProvisionError::from_db(err)),
    };
    Ok(match result {
        Ok(provisioned) => print_success(&event, &provisioned),
        Err(err) => print_failure(Some(&event), &err),
    })
}

fn read_body(file: &Path) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut body)
            .context("reading the event from standard input")?;
    } else {
        body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    }
    Ok(body)
}

fn print_success(event: &Event, provisioned: &Provisioned) -> ExitCode {
    let line = json!({
        "event_type": event.event_type(),
        "user_id": event.user_id().map(AsRef::<str>::as_ref),
        "outcome": provisioned.outcome,
        "workspace_id": provisioned.workspace_id,
    });
    println!("{line}");
    ExitCode::SUCCESS
}

fn print_failure(event: Option<&Event>, err: &ProvisionError) -> ExitCode {
    let line = json!({
        "event_type": event.map(Event::event_type),
        "user_id": event.and_then(Event::user_id).map(AsRef::<str>::as_ref),
        "outcome": "failed",
        "reason": err.reason_code(),
        "retryable": err.is_retryable(),
        "detail": err.to_string(),
    });
    println!("{line}");
    ExitCode::from(if err.is_retryable() {
        EXIT_TRANSIENT
    } else {
        EXIT_PERMANENT
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_the_products() {
        let cli = Cli::try_parse_from(["worker", "consume"]).unwrap();
        assert_eq!(
            cli.database.expose_url(),
            "postgres://postgres@127.0.0.1:5432/provisioning"
        );
        assert_eq!(
            cli.broker.expose_url(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(cli.broker.exchange, "clerk.events");
        assert_eq!(cli.broker.delivery_limit, 10);
        let Command::Consume { consumer, ops } = cli.command else {
            panic!("expected consume");
        };
        assert_eq!(consumer.prefetch, 64);
        assert_eq!(consumer.max_concurrency, 16);
        assert_eq!(consumer.retry_max_attempts, 8);
        assert_eq!(
            consumer.retry_initial_delay,
            std::time::Duration::from_millis(100)
        );
        assert_eq!(consumer.retry_max_delay, std::time::Duration::from_secs(30));
        assert_eq!(ops.metrics_addr.to_string(), "0.0.0.0:9000");
    }
}
