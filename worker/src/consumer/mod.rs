//! The consumer: takes deliveries from the provisioning queue and provisions them, for as long
//! as the process runs, across broker and database outages.
//!
//! One session is one broker connection. When it is lost (connection or channel closed, or the
//! consumer cancelled by the broker, which simply ends the stream), the loop reconnects with
//! backoff, redeclares and resumes. Deliveries of the lost session were never acknowledged, so
//! the broker hands them out again; provisioning absorbs the repeat.

mod delivery;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use sea_orm::DatabaseConnection;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::broker;
use crate::config::{BrokerSettings, ConsumerSettings};
use crate::metrics::Metrics;
use crate::ops::ReadyFlag;
use crate::provision;
use crate::retry::RetryPolicy;
use crate::topology::Topology;

pub use delivery::Processor;
use settle::Settlements;

/// Everything the consumer needs, built once at start-up.
pub struct Consumer {
    pub broker: BrokerSettings,
    pub settings: ConsumerSettings,
    pub db: DatabaseConnection,
    /// Set while a broker session is up.
    pub connected: ReadyFlag,
    pub metrics: Metrics,
}

/// How a session ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

impl Consumer {
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial_delay: self.settings.retry_initial_delay,
            max_delay: self.settings.retry_max_delay,
            max_attempts: self.settings.retry_max_attempts,
        }
    }

    /// Consumes until `shutdown` is cancelled, then lets in-flight deliveries finish within the
    /// grace period. Never returns early on broker or database trouble: it waits and reconnects.
    pub async fn run(&self, shutdown: CancellationToken) {
        let in_flight = TaskTracker::new();
        in_flight.spawn(purge_tombstones_periodically(
            self.db.clone(),
            self.settings.tombstone_retention,
            self.settings.tombstone_purge_interval,
            shutdown.clone(),
        ));
        let mut reconnect_delays = RetryPolicy::RECONNECT.delays();
        loop {
            let end = self.session(&in_flight, &shutdown).await;
            self.set_connected(false);
            match end {
                // The session already let its deliveries finish and closed its connection.
                Ok(SessionEnd::Shutdown) => return,
                Ok(SessionEnd::Lost(why)) => {
                    warn!(reason = %why, "broker session lost; reconnecting");
                    reconnect_delays = RetryPolicy::RECONNECT.delays();
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
        // Stopped while disconnected: deliveries of the lost session cannot be acknowledged any
        // more (the broker has them back), but let their transactions end cleanly.
        self.drain(&in_flight).await;
    }

    fn set_connected(&self, connected: bool) {
        self.connected.set(connected);
        self.metrics.set_consumer_connected(connected);
    }

    /// One broker connection: declare, consume, hand each delivery to its own task.
    async fn session(
        &self,
        in_flight: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, lapin::Error> {
        let topology = Topology::from_settings(&self.broker);
        let connection = broker::connect(&self.broker, "worker").await?;
        let channel = connection.create_channel().await?;
        broker::declare(&channel, &topology).await?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await?;
        let processor = Arc::new(Processor {
            db: self.db.clone(),
            policy: self.retry_policy(),
            dead_letters: broker::confirm_channel(&connection).await?,
            dead_letter_exchange: topology.dead_letter_exchange.clone(),
            shutdown: shutdown.clone(),
            settlements: Settlements::new(channel.clone()),
            metrics: self.metrics.clone(),
        });
        let mut deliveries = channel
            .basic_consume(
                topology.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.set_connected(true);
        info!(queue = %topology.queue, prefetch = self.settings.prefetch, "consuming");

        let slots = Arc::new(Semaphore::new(self.settings.max_concurrency));
        let end = loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot,
                () = shutdown.cancelled() => break SessionEnd::Shutdown,
            };
            let Ok(slot) = slot else {
                break SessionEnd::Lost("concurrency limiter closed".into());
            };
            let next = tokio::select! {
                next = deliveries.next() => next,
                () = shutdown.cancelled() => break SessionEnd::Shutdown,
            };
            let first = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(err)) => break SessionEnd::Lost(err.to_string()),
                None => break SessionEnd::Lost("the broker cancelled the consumer".into()),
            };
            // Whatever else the broker already sent joins the batch; nothing waits for more.
            processor.settlements.taken(first.delivery_tag);
            let mut batch = vec![first];
            let mut lost = None;
            while batch.len() < self.settings.batch_size {
                match deliveries.next().now_or_never() {
                    Some(Some(Ok(delivery))) => {
                        processor.settlements.taken(delivery.delivery_tag);
                        batch.push(delivery);
                    }
                    Some(Some(Err(err))) => lost = Some(err.to_string()),
                    Some(None) => lost = Some("the broker cancelled the consumer".into()),
                    None => break,
                }
                if lost.is_some() {
                    break;
                }
            }
            let processor = processor.clone();
            in_flight.spawn(async move {
                processor.process_batch(batch).await;
                drop(slot);
            });
            if let Some(why) = lost {
                break SessionEnd::Lost(why);
            }
        };
        if let SessionEnd::Shutdown = end {
            // No new deliveries; what is buffered but not started returns to the queue when the
            // channel closes.
            let tag = deliveries.tag();
            if let Err(err) = channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await
            {
                warn!(error = %err, "could not cancel the consumer");
            }
            self.drain_then_close(in_flight, &channel, &connection)
                .await;
        }
        Ok(end)
    }

    /// Waits for in-flight deliveries (they ack on `channel`), then closes the channel before the
    /// connection: the broker answers a channel close only after handling every ack sent before
    /// it, so what this worker finished does not come back to the queue.
    async fn drain_then_close(
        &self,
        in_flight: &TaskTracker,
        channel: &Channel,
        connection: &Connection,
    ) {
        self.drain(in_flight).await;
        if let Err(err) = channel.close(200, "worker shutting down".into()).await {
            warn!(error = %err, "closing the consumer channel");
        }
        if let Err(err) = connection.close(200, "worker shutting down".into()).await {
            warn!(error = %err, "closing the broker connection");
        }
    }

    async fn drain(&self, in_flight: &TaskTracker) {
        in_flight.close();
        let grace = self.settings.shutdown_grace_period;
        if tokio::time::timeout(grace, in_flight.wait()).await.is_err() {
            warn!(
                grace_ms = grace.as_millis() as u64,
                unfinished = in_flight.len(),
                "grace period over; unfinished deliveries stay in the queue"
            );
        }
    }
}

/// Forgets deletions older than `retention`, at start-up and every `interval`, until `shutdown`.
/// Several workers may purge at once: the statement is idempotent.
async fn purge_tombstones_periodically(
    db: DatabaseConnection,
    retention: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let Some(before) = chrono::TimeDelta::from_std(retention)
            .ok()
            .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
        else {
            warn!(
                ?retention,
                "TOMBSTONE_RETENTION is out of range; not purging"
            );
            return;
        };
        match provision::purge_tombstones(&db, before).await {
            Ok(0) => {}
            Ok(purged) => info!(purged, %before, "expired tombstones purged"),
            Err(err) => warn!(error = %err, "purging tombstones failed; will try again"),
        }
    }
}
