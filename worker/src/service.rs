//! The long-running application: some of ingress, consumer and ops server, sharing one metrics
//! recorder, one database pool and one stop signal. `worker consume`, `worker ingress` and
//! `worker run` are this with different parts switched on; tests start it in process.
//!
//! [`Application::build`] does everything that can fail at start (secrets, migrations, binding
//! every listener, port 0 allowed) and reports the addresses; [`Application::run_until_stopped`]
//! runs the parts until the caller's token is cancelled, or until one of them fails, which stops
//! the others and is returned as an error (the binary exits non-zero).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clerk_api::ClerkApi;
use crate::config::{
    BrokerSettings, ConsumerSettings, DatabaseSettings, IngressSettings, OpsSettings,
    ShutdownSettings,
};
use crate::console::{self, ConsoleSettings, ConsoleState};
use crate::consumer::Consumer;
use crate::db::{self, Pool};
use crate::dead_letter::Keeper;
use crate::http_server::refusal_log::{REFUSAL_LOG_EVERY, RefusalLog};
use crate::ingress::signature::Verifier;
use crate::ingress::{self, BodyLimits, BodyMemory, IngressState, Publisher, ServerLimits};
use crate::memory;
use crate::metrics::Metrics;
use crate::ops::{self, OpsState};
use crate::readiness::ReadyFlag;
use crate::reconcile::settings::ScheduleSettings;
use crate::reconcile::timer::Schedule;
use crate::retry::RetryPolicy;

/// Which parts this process runs, with their settings.
pub struct Plan {
    pub database: DatabaseSettings,
    pub broker: BrokerSettings,
    pub ops: OpsSettings,
    /// How long every part gets to finish on shutdown.
    pub shutdown: ShutdownSettings,
    /// Apply migrations first (`worker run`).
    pub migrate: bool,
    pub consumer: Option<ConsumerSettings>,
    pub ingress: Option<IngressSettings>,
    /// The reconcile schedule, run beside the consumer when it is on.
    pub reconcile: Option<ScheduleSettings>,
    /// The operator console, served beside the consumer when CONSOLE_ADDR is set.
    pub console: Option<ConsoleSettings>,
}

impl Plan {
    /// The plan with the reconcile schedule `settings` (on only when they say so).
    pub fn with_reconcile(mut self, settings: ScheduleSettings) -> Self {
        self.reconcile = Some(settings);
        self
    }

    /// The plan with the operator console's `settings` (on only when CONSOLE_ADDR is set).
    pub fn with_console(mut self, settings: ConsoleSettings) -> Self {
        self.console = Some(settings);
        self
    }
}

/// A built application: listeners bound, pool open, nothing running yet.
pub struct Application {
    metrics: Metrics,
    db: Option<Pool>,
    ingress: Option<Ingress>,
    consumer: Option<Consumer>,
    /// Moves dead letters into the store, beside the consumer.
    keeper: Option<Keeper>,
    reconcile: Option<Schedule>,
    /// The operator console, bound.
    console: Option<(TcpListener, ConsoleState)>,
    ops_listener: TcpListener,
    ops_state: OpsState,
    upkeep_interval: Duration,
    trim_interval: Duration,
    /// How long stopping waits for the database pool to close once the parts ended: the parts
    /// used the grace period already, and SIGTERM must end the process within it and a few
    /// seconds more.
    after_parts_timeout: Duration,
}

/// The operator console, bound, when CONSOLE_ADDR is set.
async fn console(
    settings: &ConsoleSettings,
    db: &Pool,
    broker: &BrokerSettings,
    metrics: &Metrics,
    consumes: bool,
) -> anyhow::Result<Option<(TcpListener, ConsoleState)>> {
    let Some(addr) = settings.console_addr else {
        return Ok(None);
    };
    if settings.token().is_none() {
        warn!(%addr, "CONSOLE_TOKEN is not set: anyone who can reach the console's port on this machine (a local user, a port-forward, a proxy) can replay and discard dead letters");
    }
    let listener = bind(addr, "CONSOLE_ADDR").await?;
    Ok(Some((
        listener,
        ConsoleState::new(
            settings,
            db.clone(),
            broker.clone(),
            metrics.clone(),
            consumes,
        ),
    )))
}

/// The most stopping waits for the pool to close once the parts ended.
const AFTER_PARTS_TIMEOUT: Duration = Duration::from_secs(2);

/// The most stopping waits for the ops server: its own grace period, and a second more.
const OPS_SERVER_STOP_TIMEOUT: Duration = ops::LIMITS
    .grace_period
    .saturating_add(Duration::from_secs(1));

/// The webhook endpoint, bound, with the publisher it stops after the last request.
struct Ingress {
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    stop_publisher: CancellationToken,
}

impl Application {
    /// Checks the settings, opens what the parts need and binds every listener. Fails before
    /// anything runs, so a bad secret or a taken port is an exit at start, not a warning later.
    pub async fn build(plan: Plan) -> anyhow::Result<Self> {
        // Refuse to start on a bad secret before touching anything else.
        let verifier = match &plan.ingress {
            Some(settings) => Some(Arc::new(Verifier::new(settings.webhook_secret()?))),
            None => None,
        };
        let metrics = Metrics::new().context("building the metrics recorder")?;
        // The consumer and the console need the database; an ingress-only process never
        // touches it.
        let db = match (&plan.consumer, &plan.console) {
            (None, None) => None,
            _ => Some(service_database(&plan).await?),
        };
        let mut readiness = Vec::new();

        let ingress = match (&plan.ingress, verifier) {
            (Some(settings), Some(verifier)) => {
                let listener = bind(settings.ingress_addr, "INGRESS_ADDR").await?;
                let stop_publisher = CancellationToken::new();
                let publisher = Publisher::spawn(
                    plan.broker.clone(),
                    RetryPolicy::RECONNECT,
                    stop_publisher.clone(),
                );
                readiness.push(("ingress", publisher.connected.clone()));
                let state = IngressState {
                    verifier,
                    publisher,
                    publish_timeout: settings.publish_timeout,
                    metrics: metrics.clone(),
                    body_limits: body_limits(settings),
                    request_timeout: settings.ingress_request_timeout,
                    body_memory: Arc::new(BodyMemory::new(settings.ingress_max_body_memory)),
                    publish_slots: Arc::new(Semaphore::new(settings.ingress_max_concurrency)),
                    refusal_log: Arc::new(RefusalLog::new(REFUSAL_LOG_EVERY)),
                    trust_traceparent: settings.ingress_trust_traceparent,
                };
                Some(Ingress {
                    listener,
                    router: ingress::router(state),
                    limits: server_limits(settings, &plan.shutdown),
                    stop_publisher,
                })
            }
            _ => None,
        };

        let keeper = match (&plan.consumer, &db) {
            (Some(settings), Some(db)) => Some(Keeper {
                broker: plan.broker.clone(),
                db: db.clone(),
                metrics: metrics.clone(),
                retention: settings.dead_letter_retention,
                kept: Arc::default(),
            }),
            _ => None,
        };

        let consumer = match (plan.consumer, &db) {
            (Some(settings), Some(db)) => {
                let consumer = Consumer {
                    broker: plan.broker.clone(),
                    settings,
                    shutdown_grace_period: plan.shutdown.shutdown_grace_period,
                    db: db.clone(),
                    connected: ReadyFlag::default(),
                    metrics: metrics.clone(),
                };
                readiness.push(("consumer", consumer.connected.clone()));
                Some(consumer)
            }
            _ => None,
        };

        let console = match (&plan.console, &db) {
            (Some(settings), Some(db)) => {
                console(settings, db, &plan.broker, &metrics, consumer.is_some()).await?
            }
            _ => None,
        };

        let reconcile = match (plan.reconcile, &db) {
            (Some(settings), Some(db)) => schedule(settings, db, &plan.database, &metrics)?,
            _ => None,
        };

        let ops_listener = bind(plan.ops.metrics_addr, "METRICS_ADDR").await?;
        let ops_state = OpsState::new(metrics.clone(), db.clone(), readiness);
        let app = Self {
            metrics,
            db,
            ingress,
            consumer,
            keeper,
            reconcile,
            console,
            ops_listener,
            ops_state,
            upkeep_interval: plan.ops.metrics_upkeep_interval,
            trim_interval: plan.ops.memory_trim_interval,
            after_parts_timeout: plan.shutdown.shutdown_grace_period.min(AFTER_PARTS_TIMEOUT),
        };
        app.log_addresses();
        Ok(app)
    }

    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    pub fn ops_addr(&self) -> SocketAddr {
        local_addr(&self.ops_listener)
    }

    /// Where `POST /webhooks/clerk` answers, when this application runs the ingress.
    pub fn ingress_addr(&self) -> Option<SocketAddr> {
        self.ingress
            .as_ref()
            .map(|ingress| local_addr(&ingress.listener))
    }

    /// Where the operator console answers, when CONSOLE_ADDR is set.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console
            .as_ref()
            .map(|(listener, _)| local_addr(listener))
    }

    /// The application's metrics, for tests to read without a scrape.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The addresses as log lines: a harness that starts the binary on port 0 reads them.
    fn log_addresses(&self) {
        if let Some(addr) = self.ingress_addr() {
            info!(addr = %addr, "ingress listening");
        }
        info!(addr = %self.ops_addr(), "ops server listening");
        if let Some(addr) = self.console_addr() {
            info!(addr = %addr, "console listening");
        }
    }

    /// Runs every part until `shutdown` is cancelled, then stops them in order: the ingress
    /// (then its publisher) and the consumer drain first, while the ops server still answers;
    /// then the ops server. A part that fails or ends on its own stops all of them, and the
    /// first such failure is the result.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let stop = shutdown.child_token();
        let mut parts: JoinSet<anyhow::Result<()>> = JoinSet::new();
        if let Some(Ingress {
            listener,
            router,
            limits,
            stop_publisher,
        }) = self.ingress
        {
            let (stop, metrics) = (stop.clone(), self.metrics.clone());
            parts.spawn(async move {
                ingress::serve(listener, router, limits, Some(metrics), stop).await;
                // In-flight requests have published; now the broker connection can go.
                stop_publisher.cancel();
                Ok(())
            });
        }
        if let Some(consumer) = self.consumer {
            let stop = stop.clone();
            parts.spawn(async move {
                consumer.run(stop).await;
                Ok(())
            });
        }

        if let Some((listener, state)) = self.console {
            let stop = stop.clone();
            parts.spawn(async move {
                console::serve(listener, state, stop).await;
                Ok(())
            });
        }

        if let Some(keeper) = self.keeper {
            let stop = stop.clone();
            parts.spawn(async move {
                keeper.run(stop).await;
                Ok(())
            });
        }

        if let Some(schedule) = self.reconcile {
            let stop = stop.clone();
            parts.spawn(async move {
                schedule.run(stop).await;
                Ok(())
            });
        }

        // The ops server and the metrics upkeep outlive the other parts, so /metrics and /readyz
        // answer during the drain.
        let stop_ops = CancellationToken::new();
        let mut ops_server = tokio::spawn(ops::serve(
            self.ops_listener,
            self.ops_state,
            stop_ops.clone(),
        ));
        let upkeep = tokio::spawn(
            self.metrics
                .clone()
                .run_upkeep(self.upkeep_interval, stop_ops.clone()),
        );
        let metrics = self.metrics.clone();
        let trim = tokio::spawn(memory::trim_periodically(
            self.trim_interval,
            stop_ops.clone(),
            move |usage| metrics.record_memory(usage),
        ));

        let failure = supervise(&mut parts, &mut ops_server, &stop, &stop_ops).await;
        if !stop_ops.is_cancelled() {
            stop_ops.cancel();
            match tokio::time::timeout(OPS_SERVER_STOP_TIMEOUT, &mut ops_server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(err))) => warn!(error = %err, "ops server failed while stopping"),
                Ok(Err(err)) => warn!(error = %err, "ops server task failed while stopping"),
                Err(_) => {
                    warn!("ops server connections still open; closing them");
                    ops_server.abort();
                }
            }
        }
        if let Err(err) = upkeep.await {
            warn!(error = %err, "metrics upkeep task failed");
        }
        if let Err(err) = trim.await {
            warn!(error = %err, "memory trim task failed");
        }
        if let Some(db) = self.db {
            match tokio::time::timeout(self.after_parts_timeout, db.close()).await {
                Ok(closed) => closed.context("closing the database pool")?,
                Err(_) => warn!("the database pool did not close in time; leaving it"),
            }
        }
        match failure {
            Some(err) => Err(err),
            None => {
                info!("stopped");
                Ok(())
            }
        }
    }
}

/// The reconcile schedule when it is on (a Clerk key, an interval); its metrics say so either way.
fn schedule(
    settings: ScheduleSettings,
    db: &Pool,
    database: &DatabaseSettings,
    metrics: &Metrics,
) -> anyhow::Result<Option<Schedule>> {
    let interval = settings.interval();
    metrics.set_reconcile_interval(interval);
    let Some(interval) = interval else {
        info!("reconcile schedule off (CLERK_SECRET_KEY unset or RECONCILE_INTERVAL=off)");
        return Ok(None);
    };
    let api = ClerkApi::new(&settings.clerk).context("setting up the Clerk API client")?;
    Ok(Some(Schedule {
        db: db.clone(),
        database: database.clone(),
        api: Arc::new(api),
        settings,
        interval,
        metrics: metrics.clone(),
    }))
}

/// Waits for every part to end; the first that fails (or the ops server ending at all) cancels
/// `stop`, so the others drain and end too. Returns that first failure.
async fn supervise(
    parts: &mut JoinSet<anyhow::Result<()>>,
    ops_server: &mut JoinHandle<std::io::Result<()>>,
    stop: &CancellationToken,
    stop_ops: &CancellationToken,
) -> Option<anyhow::Error> {
    let mut failure = None;
    loop {
        let err = tokio::select! {
            ended = parts.join_next() => match ended {
                None => return failure,
                Some(ended) => part_failure(ended, stop.is_cancelled()),
            },
            ended = &mut *ops_server, if !stop_ops.is_cancelled() => {
                stop_ops.cancel();
                Some(match ended {
                    Ok(Ok(())) => anyhow!("the ops server stopped on its own"),
                    Ok(Err(err)) => anyhow::Error::new(err).context("ops server"),
                    Err(err) => anyhow::Error::new(err).context("ops server task"),
                })
            }
        };
        if let Some(err) = err {
            error!(
                error = format!("{err:#}"),
                "a part of the service failed; stopping"
            );
            failure.get_or_insert(err);
            stop.cancel();
        }
    }
}

/// A part that ended: an error, a panic, or ending before it was asked to is a failure.
fn part_failure(
    ended: Result<anyhow::Result<()>, tokio::task::JoinError>,
    stopping: bool,
) -> Option<anyhow::Error> {
    match ended {
        Ok(Ok(())) if stopping => None,
        Ok(Ok(())) => Some(anyhow!("a part of the service stopped on its own")),
        Ok(Err(err)) => Some(err),
        Err(err) => Some(anyhow::Error::new(err).context("a service task crashed")),
    }
}

/// The per-body limits of the ingress settings.
fn body_limits(settings: &IngressSettings) -> BodyLimits {
    BodyLimits {
        max_body: settings.ingress_max_body,
        body_timeout: settings.ingress_body_timeout,
    }
}

/// Requests an ingress connection may send without delivering a verified webhook: a client with
/// the key verifies on its first, and one without has no reason to send more than a few.
const UNTRUSTED_REQUESTS: u32 = 8;

/// The connection-level limits of the ingress settings; the grace period is every part's.
fn server_limits(settings: &IngressSettings, shutdown: &ShutdownSettings) -> ServerLimits {
    ServerLimits {
        max_head: settings.ingress_max_head,
        header_timeout: settings.ingress_header_timeout,
        idle_timeout: settings.ingress_idle_timeout,
        write_timeout: settings.ingress_write_timeout,
        max_connections: settings.ingress_max_connections,
        untrusted_requests: Some(UNTRUSTED_REQUESTS),
        grace_period: shutdown.shutdown_grace_period,
    }
}

/// The consumer's pool; with `migrate`, only after the schema is up to date. Migrations need
/// PostgreSQL itself, so through PgBouncer they are left to `worker migrate`, and `/readyz`
/// waits for them.
async fn service_database(plan: &Plan) -> anyhow::Result<Pool> {
    let database = || format!("database {}", plan.database.redacted_url());
    if plan.migrate && plan.database.pgbouncer {
        warn!(
            "DATABASE_PGBOUNCER is set: not migrating; run `worker migrate` against PostgreSQL itself"
        );
    } else if plan.migrate {
        let migrated = db::migrate(&plan.database).await.with_context(database)?;
        migrated.close().await.with_context(database)?;
    }
    db::connect_lazy(&plan.database)
        .await
        .with_context(database)
}

async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {setting} {addr}"))
}

/// A bound listener's address; the unspecified address only if the OS cannot say.
fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Builds and runs `plan` until SIGTERM or SIGINT: what the binary does.
pub async fn run(plan: Plan) -> anyhow::Result<()> {
    let app = Application::build(plan).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    app.run_until_stopped(shutdown).await
}

/// Cancels `token` on SIGTERM or SIGINT: the start of a graceful shutdown.
pub async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => info!("SIGTERM received; shutting down"),
        result = tokio::signal::ctrl_c() => match result {
            Ok(()) => info!("SIGINT received; shutting down"),
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        },
    }
    token.cancel();
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn plan(args: &[&str]) -> Plan {
        let argv = ["worker"].iter().chain(args);
        Cli::try_parse_from(argv).unwrap().service_plan().unwrap()
    }

    #[test]
    fn the_ingress_limits_default_to_the_documented_values() {
        let plan = plan(&["ingress"]);
        let settings = plan.ingress.as_ref().unwrap();
        let (server, body) = (
            server_limits(settings, &plan.shutdown),
            body_limits(settings),
        );
        assert_eq!(server.max_head, 16 * 1024);
        assert_eq!(server.header_timeout, Duration::from_secs(5));
        assert_eq!(server.idle_timeout, Duration::from_secs(75));
        assert_eq!(server.write_timeout, Duration::from_secs(5));
        assert_eq!(server.max_connections, 1024);
        assert_eq!(server.untrusted_requests, Some(8));
        assert_eq!(server.grace_period, Duration::from_secs(30));
        assert_eq!(body.max_body, 256 * 1024);
        assert_eq!(body.body_timeout, Duration::from_secs(5));
        assert_eq!(settings.ingress_request_timeout, Duration::from_secs(10));
        assert_eq!(settings.ingress_max_concurrency, 256);
        assert_eq!(settings.ingress_max_body_memory, 64 * 1024 * 1024);
    }

    #[test]
    fn one_grace_period_for_every_long_running_command() {
        for command in ["consume", "ingress", "run"] {
            let plan = plan(&[command, "--shutdown-grace-period=2s"]);
            assert_eq!(plan.shutdown.shutdown_grace_period, Duration::from_secs(2));
        }
    }

    #[test]
    fn limits_of_zero_are_refused() {
        for flag in [
            "--ingress-header-timeout=0s",
            "--ingress-write-timeout=0s",
            "--ingress-max-concurrency=0",
            "--ingress-max-head=10",
        ] {
            assert!(
                Cli::try_parse_from(["worker", "ingress", flag]).is_err(),
                "{flag}"
            );
        }
    }

    /// Tokens, and a part that runs until told to stop, as a server does.
    fn running_part() -> (
        CancellationToken,
        CancellationToken,
        JoinSet<anyhow::Result<()>>,
    ) {
        let (stop, stop_ops) = (CancellationToken::new(), CancellationToken::new());
        let mut parts = JoinSet::new();
        let other = stop.clone();
        parts.spawn(async move {
            other.cancelled().await;
            Ok(())
        });
        (stop, stop_ops, parts)
    }

    fn pending_ops_server() -> JoinHandle<std::io::Result<()>> {
        tokio::spawn(std::future::pending())
    }

    #[tokio::test]
    async fn a_crashed_part_stops_the_others_and_is_the_result() {
        let (stop, stop_ops, mut parts) = running_part();
        parts.spawn(async { panic!("a server crashed") });
        let mut ops = pending_ops_server();
        let failure = supervise(&mut parts, &mut ops, &stop, &stop_ops).await;
        assert!(stop.is_cancelled(), "the other part was told to stop");
        assert!(format!("{:#}", failure.unwrap()).contains("crashed"));
    }

    #[tokio::test]
    async fn an_ops_server_that_fails_stops_everything() {
        let (stop, stop_ops, mut parts) = running_part();
        let mut ops = tokio::spawn(async { Err(std::io::Error::other("accept failed")) });
        let failure = supervise(&mut parts, &mut ops, &stop, &stop_ops).await;
        assert!(stop.is_cancelled() && stop_ops.is_cancelled());
        assert!(format!("{:#}", failure.unwrap()).contains("accept failed"));
    }

    #[tokio::test]
    async fn a_requested_stop_is_not_a_failure() {
        let (stop, stop_ops, mut parts) = running_part();
        stop.cancel();
        let mut ops = pending_ops_server();
        let failure = supervise(&mut parts, &mut ops, &stop, &stop_ops).await;
        assert!(failure.is_none());
    }

    #[test]
    fn a_part_that_ends_before_the_stop_is_a_failure() {
        assert!(part_failure(Ok(Ok(())), true).is_none());
        assert!(part_failure(Ok(Ok(())), false).is_some());
        assert!(part_failure(Ok(Err(anyhow!("bind"))), true).is_some());
    }
}
