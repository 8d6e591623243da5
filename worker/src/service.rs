//! The long-running process: some of ingress, consumer and ops server, sharing one metrics
//! recorder, one database pool and one shutdown signal. `worker consume`, `worker ingress` and
//! `worker run` are this with different parts switched on.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{
    BrokerSettings, ConsumerSettings, DatabaseSettings, IngressSettings, OpsSettings,
};
use crate::consumer::Consumer;
use crate::ingress::signature::Verifier;
use crate::ingress::{self, IngressState, Publisher};
use crate::ops::{self, OpsState, ReadyFlag};
use crate::retry::RetryPolicy;
use crate::{db, metrics};

/// Which parts this process runs, with their settings.
pub struct Plan {
    pub database: DatabaseSettings,
    pub broker: BrokerSettings,
    pub ops: OpsSettings,
    /// Apply migrations first (`worker run`).
    pub migrate: bool,
    pub consumer: Option<ConsumerSettings>,
    pub ingress: Option<IngressSettings>,
}

/// The consumer's pool; with `migrate`, only after the schema is up to date.
async fn service_database(plan: &Plan) -> anyhow::Result<sea_orm::DatabaseConnection> {
    let database = || format!("database {}", plan.database.redacted_url());
    if plan.migrate {
        let migrated = db::migrate(&plan.database).await.with_context(database)?;
        migrated.close().await.with_context(database)?;
    }
    db::connect_lazy(&plan.database)
        .await
        .with_context(database)
}

/// Runs the plan until SIGTERM/SIGINT, then stops each part gracefully.
pub async fn run(plan: Plan) -> anyhow::Result<()> {
    // Refuse to start on a bad secret before touching anything else.
    let verifier = match &plan.ingress {
        Some(settings) => Some(Arc::new(
            Verifier::from_secrets(&settings.clerk_webhook_secret)
                .context("CLERK_WEBHOOK_SECRET")?,
        )),
        None => None,
    };
    let metrics = metrics::install().context("installing the metrics recorder")?;
    // Only the consumer needs the database; an ingress-only process never touches it.
    let db = match &plan.consumer {
        None => None,
        Some(_) => Some(service_database(&plan).await?),
    };

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let parts = TaskTracker::new();
    let mut readiness = Vec::new();

    if let (Some(settings), Some(verifier)) = (&plan.ingress, verifier) {
        let listener = bind(settings.ingress_addr, "INGRESS_ADDR").await?;
        info!(addr = %listener.local_addr()?, "ingress listening");
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
        };
        let router = ingress::router(state, settings.ingress_max_body);
        let shutdown = shutdown.clone();
        parts.spawn(async move {
            if let Err(err) = ingress::serve(listener, router, shutdown).await {
                warn!(error = %err, "ingress server failed");
            }
            // In-flight requests have published; now the broker connection can go.
            stop_publisher.cancel();
        });
    }

    if let (Some(settings), Some(db)) = (plan.consumer, &db) {
        let consumer = Consumer {
            broker: plan.broker.clone(),
            settings,
            db: db.clone(),
            connected: ReadyFlag::default(),
        };
        readiness.push(("consumer", consumer.connected.clone()));
        let shutdown = shutdown.clone();
        parts.spawn(async move { consumer.run(shutdown).await });
    }

    let ops_listener = bind(plan.ops.metrics_addr, "METRICS_ADDR").await?;
    info!(addr = %ops_listener.local_addr()?, "ops server listening");
    let ops_state = OpsState {
        metrics,
        db: db.clone(),
        broker: readiness,
    };
    // The ops server outlives the other parts so /metrics and /readyz answer during the drain.
    let stop_ops = CancellationToken::new();
    let ops_server = tokio::spawn(ops::serve(ops_listener, ops_state, stop_ops.clone()));

    parts.close();
    parts.wait().await;
    stop_ops.cancel();
    match ops_server.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(error = %err, "ops server failed"),
        Err(err) => warn!(error = %err, "ops server task failed"),
    }
    if let Some(db) = db {
        db.close().await.context("closing the database pool")?;
    }
    info!("stopped");
    Ok(())
}

async fn bind(addr: std::net::SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {setting} {addr}"))
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
