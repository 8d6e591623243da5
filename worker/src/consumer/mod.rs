//! The consumer: takes deliveries from the provisioning queue and provisions them, for as long
//! as the process runs, across broker and database outages.
//!
//! One [`session`] is one broker connection. When it is lost (connection or channel closed, or
//! the consumer cancelled by the broker, which simply ends the stream), the loop reconnects with
//! backoff, redeclares and resumes. Deliveries of the lost session were never acknowledged, so
//! the broker hands them out again; provisioning absorbs the repeat. Each delivery is taken to
//! its end by the [`pipeline`] (parse, attempt, decide, settle): [`batch`] cuts and splits
//! batches, [`crate::retry`] decides each delivery's fate, the [`settle`]r carries it out, and
//! [`delivery`] reads what a delivery says about itself.

mod batch;
mod delivery;
mod outage;
mod pipeline;
mod session;
mod settle;

use std::time::Duration;

use futures::future::OptionFuture;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{BrokerSettings, ConsumerSettings};
use crate::db::{self, Pool};
use crate::metrics::Metrics;
use crate::provision;
use crate::readiness::ReadyFlag;
use crate::retry::RetryPolicy;

use session::{Session, SessionEnd};

/// Everything the consumer needs, built once at start-up.
pub struct Consumer {
    pub broker: BrokerSettings,
    pub settings: ConsumerSettings,
    /// How long in-flight deliveries get to finish on shutdown (`SHUTDOWN_GRACE_PERIOD`).
    pub shutdown_grace_period: Duration,
    pub db: Pool,
    /// Set while a broker session is up.
    pub connected: ReadyFlag,
    pub metrics: Metrics,
}

impl Consumer {
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial_delay: self.settings.retry_initial_delay,
            max_delay: self.settings.retry_max_delay,
            max_attempts: self.settings.retry_max_attempts,
            conflict_window: self.settings.conflict_retry_window,
        }
    }

    /// Consumes until `shutdown` is cancelled, then lets in-flight deliveries finish within the
    /// grace period. Never returns early on broker or database trouble: it waits and reconnects.
    pub async fn run(&self, shutdown: CancellationToken) {
        let purge = self.settings.tombstone_retention.map(|retention| {
            warn!(
                ?retention,
                "TOMBSTONE_RETENTION is set: a replay of an event older than this could bring a deleted user back"
            );
            tokio::spawn(purge_tombstones_periodically(
                self.db.clone(),
                retention,
                self.settings.tombstone_purge_interval,
                shutdown.clone(),
            ))
        });
        let mut reconnect_delays = RetryPolicy::RECONNECT.delays();
        loop {
            match Session::open(self, &shutdown).await {
                Ok(session) => {
                    self.set_connected(Some(session.node()));
                    let end = session.run(self).await;
                    self.set_connected(None);
                    match end {
                        // The session let its deliveries finish and closed its connection.
                        SessionEnd::Shutdown => break,
                        SessionEnd::Lost(why) => {
                            warn!(reason = %why, "broker session lost; reconnecting");
                            reconnect_delays = RetryPolicy::RECONNECT.delays();
                        }
                        SessionEnd::DatabaseDown => {
                            warn!(
                                pause = ?self.settings.database_outage_pause,
                                "the database has been unavailable too long; deliveries handed back, consuming again once it answers"
                            );
                            if !self.wait_for_database(&shutdown).await {
                                break;
                            }
                            info!("the database answers again; consuming");
                            reconnect_delays = RetryPolicy::RECONNECT.delays();
                        }
                    }
                }
                Err(err) => warn!(error = %err, "broker unavailable; reconnecting"),
            }
            let delay = reconnect_delays
                .next()
                .unwrap_or(self.settings.retry_max_delay);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => break,
            }
        }
        // It heeds shutdown between purges; a purge stuck on a silent database is left behind.
        let purged = tokio::time::timeout(self.shutdown_grace_period, OptionFuture::from(purge));
        match purged.await {
            Ok(Some(Err(err))) => warn!(error = %err, "the tombstone purge task failed"),
            Ok(_) => {}
            Err(_) => warn!("the tombstone purge did not stop within the grace period"),
        }
    }

    /// Waits, with the reconnect backoff, until the database answers with every migration this
    /// binary knows applied (true), or shutdown (false). A bare ping is not enough: a database
    /// not migrated yet fails every event as unavailable too, and consuming again at once would
    /// hand the deliveries back again and again, each time adding to their delivery count.
    async fn wait_for_database(&self, shutdown: &CancellationToken) -> bool {
        let mut delays = RetryPolicy::RECONNECT.delays();
        loop {
            // A database that stopped answering would hold this query for ever.
            let check = tokio::time::timeout(
                self.settings.provision_attempt_timeout,
                db::unapplied_migrations(&self.db),
            );
            let ready = tokio::select! {
                checked = check => matches!(checked, Ok(Ok(missing)) if missing.is_empty()),
                () = shutdown.cancelled() => return false,
            };
            if ready {
                return true;
            }
            let delay = delays.next().unwrap_or(self.settings.retry_max_delay);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return false,
            }
        }
    }

    fn set_connected(&self, node: Option<&str>) {
        match node {
            Some(node) => self.connected.connected_to(node),
            None => self.connected.disconnected(),
        }
        self.metrics.set_consumer_connected(node.is_some());
    }
}

/// How long one purge may take: a database that stopped answering must not hold the task.
const PURGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Forgets deletions older than `retention`, at start-up and every `interval`, until `shutdown`.
/// Several workers may purge at once: the statement is idempotent.
async fn purge_tombstones_periodically(
    db: Pool,
    retention: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let Ok(retention) = chrono::TimeDelta::from_std(retention) else {
        warn!(
            ?retention,
            "TOMBSTONE_RETENTION is out of range; not purging"
        );
        return;
    };
    let stop = shutdown.clone();
    crate::schedule::every(interval, shutdown, || {
        purge_tombstones_once(&db, retention, &stop)
    })
    .await;
}

/// One purge of the tombstones older than `retention`, bounded by [`PURGE_TIMEOUT`].
async fn purge_tombstones_once(
    db: &Pool,
    retention: chrono::TimeDelta,
    shutdown: &CancellationToken,
) {
    let Some(before) = chrono::Utc::now().checked_sub_signed(retention) else {
        warn!(
            %retention,
            "TOMBSTONE_RETENTION reaches before the earliest representable time; not purging"
        );
        return;
    };
    let purge = tokio::time::timeout(PURGE_TIMEOUT, provision::purge_tombstones(db, before));
    let purged = tokio::select! {
        purged = purge => purged,
        () = shutdown.cancelled() => return,
    };
    match purged {
        Ok(Ok(0)) => {}
        Ok(Ok(purged)) => info!(purged, %before, "expired tombstones purged"),
        Ok(Err(err)) => warn!(error = %err, "purging tombstones failed; will try again"),
        Err(_) => {
            warn!(timeout = ?PURGE_TIMEOUT, "purging tombstones did not finish; will try again")
        }
    }
}
