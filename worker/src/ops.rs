//! The ops HTTP server: `/metrics` for Prometheus, `/healthz` (the process is alive) and
//! `/readyz` (the database and the broker are reachable; 503 naming what is not).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::DatabaseConnection;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health;

/// Readiness probes must answer quickly even when the database hangs.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a component currently holds what it needs (a broker connection); `/readyz` reads it.
#[derive(Clone, Debug, Default)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the ops endpoints read.
#[derive(Clone)]
pub struct OpsState {
    pub metrics: PrometheusHandle,
    /// Checked by `/readyz` when this process uses the database.
    pub db: Option<DatabaseConnection>,
    /// Named flags of the broker-facing components (`consumer`, later `ingress`).
    pub broker: Vec<(&'static str, ReadyFlag)>,
}

pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled. The caller binds the listener (port 0 in tests).
pub async fn serve(
    listener: TcpListener,
    state: OpsState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    if let Some(db) = &state.db {
        let check = tokio::time::timeout(DATABASE_CHECK_TIMEOUT, health::check(db)).await;
        let database = check.is_ok_and(|report| report.healthy);
        checks.insert("database".into(), json!(database));
        ready &= database;
    }
    for (name, flag) in &state.broker {
        checks.insert(format!("broker_{name}"), json!(flag.get()));
        ready &= flag.get();
    }
    let failing: Vec<&String> = checks
        .iter()
        .filter(|(_, ok)| **ok == json!(false))
        .map(|(name, _)| name)
        .collect();
    let body = json!({"ready": ready, "checks": checks, "failing": failing});
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
