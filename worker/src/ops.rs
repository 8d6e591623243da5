//! The ops HTTP server: `/metrics` for Prometheus, `/healthz` (the process is alive) and
//! `/readyz` (the database, with every migration this binary knows, and the broker are
//! reachable; 503 naming what is not).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::db::{self, Pool};
use crate::health;
use crate::http_server::{self, ServerLimits};
use crate::metrics::Metrics;
use crate::readiness::ReadyFlag;

/// Readiness probes must answer quickly even when the database hangs.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one database verdict answers `/readyz`: probes at any rate cost the database at most
/// one check per this interval.
const DATABASE_VERDICT_TTL: Duration = Duration::from_secs(1);

/// What the ops endpoints read.
#[derive(Clone)]
pub struct OpsState {
    metrics: Metrics,
    /// Checked by `/readyz` when this process uses the database.
    db: Option<Pool>,
    /// Named flags of the broker-facing components (`consumer`, `ingress`).
    broker: Vec<(&'static str, ReadyFlag)>,
    /// The last database verdict; its lock makes concurrent probes share one check.
    database_verdict: Arc<Mutex<Option<DatabaseVerdict>>>,
}

/// What `/readyz` says about the database.
#[derive(Clone, Copy, Debug)]
struct DatabaseVerdict {
    /// Reachable, with its tables and constraints.
    reachable: bool,
    /// Every migration this binary knows is applied.
    migrated: bool,
    /// When the check ran: its age decides whether it still answers.
    checked: Instant,
    /// The same moment on the wall clock, which `/readyz` shows.
    checked_at: DateTime<Utc>,
}

impl OpsState {
    pub fn new(metrics: Metrics, db: Option<Pool>, broker: Vec<(&'static str, ReadyFlag)>) -> Self {
        Self {
            metrics,
            db,
            broker,
            database_verdict: Arc::default(),
        }
    }

    /// The database verdict at most [`DATABASE_VERDICT_TTL`] old; one check at a time.
    async fn database_verdict(&self, db: &Pool) -> DatabaseVerdict {
        let mut last = self.database_verdict.lock().await;
        if let Some(verdict) = *last
            && verdict.checked.elapsed() < DATABASE_VERDICT_TTL
        {
            return verdict;
        }
        let verdict = check_database(db).await;
        *last = Some(verdict);
        verdict
    }
}

/// The schema probe, then the migrations this binary expects, within one timeout.
async fn check_database(db: &Pool) -> DatabaseVerdict {
    let (checked, checked_at) = (Instant::now(), Utc::now());
    let check = async {
        let reachable = health::check(db).await.healthy;
        let migrated = match db::unapplied_migrations(db).await {
            Ok(unapplied) if unapplied.is_empty() => true,
            Ok(unapplied) => {
                debug!(?unapplied, "migrations not applied yet");
                false
            }
            Err(err) => {
                debug!(error = %err, "cannot read the applied migrations");
                false
            }
        };
        (reachable, migrated)
    };
    let (reachable, migrated) = tokio::time::timeout(DATABASE_CHECK_TIMEOUT, check)
        .await
        .unwrap_or((false, false));
    DatabaseVerdict {
        reachable,
        migrated,
        checked,
        checked_at,
    }
}

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled. The caller binds the listener (port 0 in tests).
/// Scrapers and probes send small requests on few connections; these bounds keep a client that
/// half-sends a head, or opens connections by the thousand, from holding the process.
pub async fn serve(
    listener: TcpListener,
    state: OpsState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    http_server::serve(listener, router(state), LIMITS, None, shutdown).await;
    Ok(())
}

/// The ops server's connection limits: a head within 5 s, each answer written within 5 s, at most 512 connections (about
/// 8 MiB; scrapers and probes keep few, and a burst of a few hundred probes must not find the
/// server crowded), and at most 2 s for requests in progress on shutdown.
pub const LIMITS: ServerLimits = ServerLimits {
    max_head: 16 * 1024,
    header_timeout: Duration::from_secs(5),
    idle_timeout: Duration::from_secs(75),
    write_timeout: Duration::from_secs(5),
    max_connections: 512,
    // Scrapers and probes never send a signed request: a cap would only close them.
    untrusted_requests: None,
    grace_period: Duration::from_secs(2),
};

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    let mut checked_at = None;
    if let Some(db) = &state.db {
        let verdict = state.database_verdict(db).await;
        checks.insert("database".into(), json!(verdict.reachable));
        checks.insert("database_migrations".into(), json!(verdict.migrated));
        ready &= verdict.reachable && verdict.migrated;
        checked_at = Some(verdict.checked_at);
    }
    let mut nodes = serde_json::Map::new();
    for (name, flag) in &state.broker {
        let node = flag.node();
        checks.insert(format!("broker_{name}"), json!(node.is_some()));
        ready &= node.is_some();
        nodes.insert((*name).to_owned(), json!(node));
    }
    let failing: Vec<&String> = checks
        .iter()
        .filter(|(_, ok)| **ok == json!(false))
        .map(|(name, _)| name)
        .collect();
    let mut body = json!({"ready": ready, "checks": checks, "failing": failing});
    if !nodes.is_empty() {
        body["broker_nodes"] = json!(nodes);
    }
    if let Some(at) = checked_at {
        body["database_checked_at"] =
            json!(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
