//! The `worker` command line: one subcommand per operator task. The binary's edge, so errors
//! are `anyhow` here and typed everywhere below.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use tracing::error;

use crate::config::{
    BrokerSettings, ConsumerSettings, DatabaseSettings, IngressSettings, LogFormat, OpsSettings,
};
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
        let Self {
            database,
            broker,
            command,
            ..
        } = self;
        let plan = |ops, migrate, consumer, ingress| service::Plan {
            database: database.clone(),
            broker: broker.clone(),
            ops,
            migrate,
            consumer,
            ingress,
        };
        let plan = match command {
            Command::Migrate => {
                db::migrate(&database)
                    .await
                    .with_context(|| format!("migrating {}", database.redacted_url()))?;
                return Ok(ExitCode::SUCCESS);
            }
            Command::Health => return Ok(print_health(&database).await),
            Command::Provision { file } => return provision_file(&database, &file).await,
            Command::Consume { consumer, ops } => plan(ops, false, Some(consumer), None),
            Command::Ingress { ingress, ops } => plan(ops, false, None, Some(ingress)),
            Command::Run {
                consumer,
                ingress,
                ops,
            } => plan(ops, true, Some(consumer), Some(ingress)),
        };
        service::run(plan).await?;
        Ok(ExitCode::SUCCESS)
    }
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
            cli.database.url,
            "postgres://postgres@127.0.0.1:5432/provisioning"
        );
        assert_eq!(cli.broker.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
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
