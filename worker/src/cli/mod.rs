//! The `worker` command line: one subcommand per operator task, dispatched to the module of its
//! group. The binary's edge, so errors are `anyhow` here and typed everywhere below.
//!
//! Exit statuses: 0 done; 1 failed (or unhealthy); 2 refused settings ([`ConfigError`], clap's
//! usage errors included); 65 and 75 from `worker provision`; 67 from `worker user show`.

mod database;
mod dlq;
mod provision;
mod reconcile;
mod user;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use secrecy::SecretString;
use tracing::{error, warn};

use crate::clerk_api::ClerkApiSettings;
use crate::config::{
    BrokerSettings, ConfigError, ConsumerSettings, DatabaseSettings, EXIT_CONFIG, IngressSettings,
    LogFormat, OpsSettings, Secret, ShutdownSettings,
};
use crate::console::ConsoleSettings;
use crate::reconcile::settings::ScheduleSettings;
use crate::traces::Export;
use crate::{service, telemetry};

pub use dlq::{DlqCommand, FilterArgs};
pub use provision::{EXIT_PERMANENT, EXIT_TRANSIENT};
pub use reconcile::ReconcileArgs;
pub use user::{EXIT_NO_USER, ShowArgs, UserCommand};

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

    /// Said once logging is up: settings that work but should change.
    #[arg(skip)]
    pub warnings: Vec<String>,
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
        reconcile: Box<ScheduleSettings>,
        #[command(flatten)]
        console: Box<ConsoleSettings>,
        #[command(flatten)]
        ops: OpsSettings,
        #[command(flatten)]
        shutdown: ShutdownSettings,
    },
    /// Serve the Clerk webhook endpoint alone, publishing verified events to RabbitMQ.
    Ingress {
        #[command(flatten)]
        ingress: IngressSettings,
        #[command(flatten)]
        ops: OpsSettings,
        #[command(flatten)]
        shutdown: ShutdownSettings,
    },
    /// Serve the operator console alone (CONSOLE_ADDR, required here): dead letters can be
    /// read, replayed and discarded while no worker consumes.
    Console {
        #[command(flatten)]
        console: Box<ConsoleSettings>,
        #[command(flatten)]
        ops: OpsSettings,
        #[command(flatten)]
        shutdown: ShutdownSettings,
    },
    /// Inspect and replay dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Look users up.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Compare every Clerk user with the database; `--apply` repairs (dry run by default).
    Reconcile(Box<ReconcileArgs>),
    /// Everything in one process: migrate, then ingress, consumer and ops server.
    Run {
        #[command(flatten)]
        consumer: ConsumerSettings,
        #[command(flatten)]
        reconcile: Box<ScheduleSettings>,
        #[command(flatten)]
        console: Box<ConsoleSettings>,
        #[command(flatten)]
        ingress: IngressSettings,
        #[command(flatten)]
        ops: OpsSettings,
        #[command(flatten)]
        shutdown: ShutdownSettings,
    },
}

/// The whole binary: parse and check the settings, set up logs, run the subcommand. Refused
/// settings exit with status 2 here, wherever they were found.
pub fn main() -> ExitCode {
    let cli = match Cli::configure(std::env::args_os()) {
        Ok(cli) => cli,
        Err(err) => {
            err.print();
            return ExitCode::from(err.exit_code());
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            telemetry::init(cli.log_format, None);
            error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    // The gRPC exporter's channel is made inside the runtime.
    let export = match runtime.block_on(async { Export::from_env() }) {
        Ok(export) => export,
        Err(err) => {
            telemetry::init(cli.log_format, None);
            error!(error = %err, "traces are misconfigured");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(cli.log_format, export.as_ref());
    let result = runtime.block_on(cli.run());
    if let Some(export) = export {
        export.shutdown(TRACE_SHUTDOWN_TIMEOUT);
    }
    match result {
        Ok(code) => code,
        Err(err) => {
            error!(error = format!("{err:#}"), "command failed");
            match err.downcast_ref::<ConfigError>() {
                Some(_) => ExitCode::from(EXIT_CONFIG),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// The most a stopping process waits for its last spans to reach the collector: SIGTERM's bound
/// is the grace period and a few seconds, and a collector that does not answer must not stretch
/// it.
const TRACE_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

impl Cli {
    /// Parses `args` and the environment, then refuses settings that make no sense for the
    /// command: what the binary and the in-process test application start from.
    pub fn configure<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        cli.read_secret_files(&matches)?;
        cli.check()?;
        Ok(cli)
    }

    /// Takes each secret from its `*_FILE` form when that is set (refusing both), and notes a
    /// secret given as a flag: the command line shows in `ps` to every user of the machine.
    fn read_secret_files(&mut self, matches: &ArgMatches) -> Result<(), ConfigError> {
        let Self {
            database,
            broker,
            command,
            warnings,
            ..
        } = self;
        Secret {
            setting: "DATABASE_URL",
            value: &mut database.url,
            source: source(matches, "database_url"),
            file: database.url_file.as_deref(),
        }
        .resolve()?;
        Secret {
            setting: "AMQP_URL",
            value: &mut broker.url,
            source: source(matches, "amqp_url"),
            file: broker.url_file.as_deref(),
        }
        .resolve()?;
        let secrets = match command {
            Command::Ingress { ingress, .. } => vec![webhook_secret(ingress)],
            Command::Run {
                ingress,
                reconcile,
                console,
                ..
            } => vec![
                webhook_secret(ingress),
                secret_key(&mut reconcile.clerk),
                console_token(console),
            ],
            Command::Consume {
                reconcile, console, ..
            } => vec![secret_key(&mut reconcile.clerk), console_token(console)],
            Command::Console { console, .. } => vec![console_token(console)],
            Command::Reconcile(args) => vec![secret_key(&mut args.clerk)],
            _ => Vec::new(),
        };
        for secret in secrets {
            let source = source(matches, secret.id);
            if source == Some(ValueSource::CommandLine) {
                warnings.push(format!(
                    "{flag} on the command line shows in `ps` to every user of this machine: use {setting} or {setting}_FILE",
                    flag = secret.flag,
                    setting = secret.setting,
                ));
            }
            Secret {
                setting: secret.setting,
                value: secret.value,
                source,
                file: secret.file.as_deref(),
            }
            .resolve()?;
        }
        Ok(())
    }

    /// Checks the settings the command uses (the global ones it ignores are not its business).
    fn check(&self) -> Result<(), ConfigError> {
        let (database, broker) = match &self.command {
            Command::Migrate
            | Command::Health
            | Command::Provision { .. }
            | Command::User { .. }
            | Command::Reconcile(_) => (true, false),
            Command::Ingress { .. } => (false, true),
            Command::Consume { .. }
            | Command::Run { .. }
            | Command::Console { .. }
            | Command::Dlq { .. } => (true, true),
        };
        if database {
            self.database.check()?;
        }
        if broker {
            self.broker.check()?;
        }
        match &self.command {
            Command::Ingress { ingress, .. } => ingress.check(),
            Command::Run {
                ingress,
                reconcile,
                console,
                ..
            } => ingress
                .check()
                .and_then(|()| reconcile.check())
                .and_then(|()| console.check()),
            Command::Consume {
                reconcile, console, ..
            } => reconcile.check().and_then(|()| console.check()),
            Command::Console { console, .. } => console.check_alone(),
            Command::Reconcile(args) if args.calls_clerk() => args.clerk.check(),
            _ => Ok(()),
        }
    }

    pub async fn run(self) -> anyhow::Result<ExitCode> {
        for warning in &self.warnings {
            warn!("{warning}");
        }
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
            Command::Migrate => database::migrate(&database).await,
            Command::Health => Ok(database::health(&database).await),
            Command::Provision { file } => provision::run(&database, &file).await,
            Command::Dlq { command } => dlq::run(&database, &broker, command).await,
            Command::User { command } => user::run(&database, command).await,
            Command::Reconcile(args) => reconcile::run(&database, *args).await,
            // Handled above, through their service plan.
            Command::Consume { .. }
            | Command::Ingress { .. }
            | Command::Run { .. }
            | Command::Console { .. } => Ok(ExitCode::SUCCESS),
        }
    }

    /// The parts a long-running command (`consume`, `ingress`, `run`, `console`) runs; `None`
    /// for the one-shot commands. Tests build an in-process application from it.
    pub fn service_plan(&self) -> Option<service::Plan> {
        let plan = |ops: &OpsSettings, shutdown: &ShutdownSettings, migrate, consumer, ingress| {
            service::Plan {
                database: self.database.clone(),
                broker: self.broker.clone(),
                ops: ops.clone(),
                shutdown: shutdown.clone(),
                migrate,
                consumer,
                ingress,
                reconcile: None,
                console: None,
            }
        };
        match &self.command {
            Command::Consume {
                consumer,
                reconcile,
                console,
                ops,
                shutdown,
            } => Some(
                plan(ops, shutdown, false, Some(consumer.clone()), None)
                    .with_reconcile(reconcile.as_ref().clone())
                    .with_console(console.as_ref().clone()),
            ),
            Command::Ingress {
                ingress,
                ops,
                shutdown,
            } => Some(plan(ops, shutdown, false, None, Some(ingress.clone()))),
            Command::Run {
                consumer,
                reconcile,
                console,
                ingress,
                ops,
                shutdown,
            } => Some(
                plan(
                    ops,
                    shutdown,
                    true,
                    Some(consumer.clone()),
                    Some(ingress.clone()),
                )
                .with_reconcile(reconcile.as_ref().clone())
                .with_console(console.as_ref().clone()),
            ),
            Command::Console {
                console,
                ops,
                shutdown,
            } => {
                Some(plan(ops, shutdown, false, None, None).with_console(console.as_ref().clone()))
            }
            Command::Migrate
            | Command::Health
            | Command::Provision { .. }
            | Command::Dlq { .. }
            | Command::User { .. }
            | Command::Reconcile(_) => None,
        }
    }
}

/// A secret of the subcommand, with the names that point at it in messages.
struct CommandSecret<'a> {
    setting: &'static str,
    flag: &'static str,
    id: &'static str,
    file: Option<PathBuf>,
    value: &'a mut SecretString,
}

/// The ingress's webhook signing secret.
fn webhook_secret(ingress: &mut IngressSettings) -> CommandSecret<'_> {
    CommandSecret {
        setting: "CLERK_WEBHOOK_SECRET",
        flag: "--clerk-webhook-secret",
        id: "clerk_webhook_secret",
        file: ingress.clerk_webhook_secret_file.clone(),
        value: &mut ingress.clerk_webhook_secret,
    }
}

/// The Clerk Backend API's secret key.
fn secret_key(clerk: &mut ClerkApiSettings) -> CommandSecret<'_> {
    CommandSecret {
        setting: "CLERK_SECRET_KEY",
        flag: "--clerk-secret-key",
        id: "secret_key",
        file: clerk.secret_key_file.clone(),
        value: &mut clerk.secret_key,
    }
}

/// The operator console's token.
fn console_token(console: &mut ConsoleSettings) -> CommandSecret<'_> {
    CommandSecret {
        setting: "CONSOLE_TOKEN",
        flag: "--console-token",
        id: "console_token",
        file: console.console_token_file.clone(),
        value: &mut console.console_token,
    }
}

/// Where clap found setting `id`: in the subcommand's matches (which hold the global settings
/// too), else the top level's; `None` where the command has no such setting.
fn source(matches: &ArgMatches, id: &str) -> Option<ValueSource> {
    let subcommand = matches.subcommand().map(|(_, sub)| sub);
    [subcommand, Some(matches)]
        .into_iter()
        .flatten()
        .filter(|m| m.try_get_raw(id).is_ok())
        .find_map(|m| m.value_source(id))
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
        let Command::Consume { consumer, ops, .. } = cli.command else {
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
        assert_eq!(
            consumer.conflict_retry_window,
            std::time::Duration::from_secs(3 * 3600)
        );
        assert_eq!(ops.metrics_addr.to_string(), "0.0.0.0:9000");
    }

    #[test]
    fn a_conflict_retry_window_of_zero_is_accepted() {
        for zero in ["0", "0s"] {
            let cli = Cli::try_parse_from(["worker", "consume", "--conflict-retry-window", zero]);
            let Ok(Cli {
                command: Command::Consume { consumer, .. },
                ..
            }) = cli
            else {
                panic!("{zero} refused");
            };
            assert_eq!(consumer.conflict_retry_window, std::time::Duration::ZERO);
        }
    }
}
