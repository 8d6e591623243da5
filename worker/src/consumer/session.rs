//! One broker session: one connection, its consumer channel and the delivery tasks it started.
//! The session's own token ends them all: on shutdown after a graceful drain, and when the
//! connection is lost at once (the broker hands their deliveries out again), so a new session
//! never runs beside the tasks of an old one.

use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::Consumer;
use super::batch::{Ready, take_batch};
use super::outage::Outage;
use super::pipeline::Pipeline;
use super::settle::Settler;
use crate::broker;
use crate::topology::Topology;

/// How a session ended.
pub enum SessionEnd {
    Shutdown,
    Lost(String),
    /// The database stayed unavailable for `DATABASE_OUTAGE_PAUSE`: the deliveries went back
    /// to the queue; consume again once it answers.
    DatabaseDown,
}

/// A connected session, consuming.
pub struct Session {
    connection: Connection,
    /// The broker node connected to (host and port), for logs and `/readyz`.
    node: String,
    channel: Channel,
    deliveries: lapin::Consumer,
    /// Why the connection failed, as soon as it does (missed heartbeats included): noticed even
    /// while every concurrency slot is busy and nobody reads `deliveries`.
    lost: broker::ConnectionLost,
    /// The process's shutdown token (`stop` is its child).
    shutdown: CancellationToken,
    pipeline: Arc<Pipeline>,
    tasks: TaskTracker,
    /// Ends this session's tasks; a child of the process's shutdown token.
    stop: CancellationToken,
}

impl Session {
    /// Connects, declares the topology and starts consuming.
    pub async fn open(
        consumer: &Consumer,
        shutdown: &CancellationToken,
    ) -> Result<Self, lapin::Error> {
        let topology = Topology::from_settings(&consumer.broker);
        let (connection, node) = broker::connect_to_node(&consumer.broker, "worker").await?;
        let channel = connection.create_channel().await?;
        broker::declare(&channel, &topology).await?;
        channel
            .basic_qos(consumer.settings.prefetch, BasicQosOptions::default())
            .await?;
        let stop = shutdown.child_token();
        let settler = Settler::new(
            channel.clone(),
            broker::confirm_channel(&connection).await?,
            topology.dead_letter_exchange.clone(),
            topology.retry.clone(),
            consumer.metrics.clone(),
        );
        let pipeline = Arc::new(Pipeline {
            db: consumer.db.clone(),
            policy: consumer.retry_policy(),
            attempt_timeout: consumer.settings.provision_attempt_timeout,
            settler,
            metrics: consumer.metrics.clone(),
            outage: Outage::new(consumer.settings.database_outage_pause),
            stop: stop.clone(),
            queue: topology.queue.clone(),
        });
        let deliveries = channel
            .basic_consume(
                topology.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        info!(queue = %topology.queue, prefetch = consumer.settings.prefetch, %node, "consuming");
        Ok(Self {
            lost: broker::watch_connection(&connection),
            shutdown: shutdown.clone(),
            node,
            connection,
            channel,
            deliveries,
            pipeline,
            tasks: TaskTracker::new(),
            stop,
        })
    }

    /// The broker node this session is connected to.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Consumes until shutdown or until the connection is lost, then ends its tasks: drained
    /// within the grace period on shutdown, stopped at once when lost.
    pub async fn run(mut self, consumer: &Consumer) -> SessionEnd {
        let end = self.consume(consumer).await;
        match &end {
            SessionEnd::Shutdown => {
                // No new deliveries; let those at work finish, then hand back what is buffered
                // but not started.
                let tag = self.deliveries.tag();
                if let Err(err) = self
                    .channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await
                {
                    warn!(error = %err, "could not cancel the consumer");
                }
                self.drain(consumer).await;
                self.pipeline.settler.give_back_all().await;
                self.close().await;
            }
            SessionEnd::DatabaseDown => {
                // Every delivery this session holds, buffered or at work, goes back at once,
                // without blame (on RabbitMQ 3.x it still counts one delivery, once per
                // outage), and is visible to other workers meanwhile. Work that still ends can
                // no longer settle anything (the broker has it back); provisioning absorbs the
                // repeat. Then let the tasks end, unless the process is stopping.
                self.stop.cancel();
                self.pipeline.settler.give_back_all().await;
                self.close().await;
                self.tasks.close();
                tokio::select! {
                    () = self.wait_for_tasks(consumer) => {}
                    () = self.shutdown.cancelled() => {}
                }
            }
            SessionEnd::Lost(_) => {
                // Nothing can be acknowledged on a lost connection: the broker already has
                // these deliveries back. Stop waiting retries, and let transactions end before
                // a new session takes deliveries, so no more than PREFETCH are in flight. A task
                // stuck on a silent database is waited for at most the grace period (its attempt
                // ends by PROVISION_ATTEMPT_TIMEOUT anyway); a new session may start beside it.
                self.stop.cancel();
                self.tasks.close();
                tokio::select! {
                    () = self.wait_for_tasks(consumer) => {}
                    () = self.shutdown.cancelled() => self.drain(consumer).await,
                }
            }
        }
        end
    }

    /// Hands each batch to a task of its own, never more than `MAX_CONCURRENCY` at once.
    async fn consume(&mut self, consumer: &Consumer) -> SessionEnd {
        let slots = Arc::new(Semaphore::new(consumer.settings.max_concurrency));
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot,
                why = &mut self.lost => return SessionEnd::Lost(why),
                () = self.pipeline.outage.paused.cancelled() => return SessionEnd::DatabaseDown,
                () = self.stop.cancelled() => return SessionEnd::Shutdown,
            };
            let Ok(slot) = slot else {
                return SessionEnd::Lost("concurrency limiter closed".into());
            };
            let next = tokio::select! {
                next = self.deliveries.next() => next,
                why = &mut self.lost => return SessionEnd::Lost(why),
                () = self.pipeline.outage.paused.cancelled() => return SessionEnd::DatabaseDown,
                () = self.stop.cancelled() => return SessionEnd::Shutdown,
            };
            let first = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(err)) => return SessionEnd::Lost(err.to_string()),
                None => return SessionEnd::Lost(CONSUMER_CANCELLED.into()),
            };
            let settler = &self.pipeline.settler;
            settler.taken(first.delivery_tag);
            let deliveries = &mut self.deliveries;
            let (batch, lost) =
                take_batch(first, consumer.settings.batch_size, || {
                    match deliveries.next().now_or_never() {
                        Some(Some(Ok(delivery))) => {
                            settler.taken(delivery.delivery_tag);
                            Ready::Item(delivery)
                        }
                        Some(Some(Err(err))) => Ready::Lost(err.to_string()),
                        Some(None) => Ready::Lost(CONSUMER_CANCELLED.into()),
                        None => Ready::Nothing,
                    }
                });
            let pipeline = self.pipeline.clone();
            self.tasks.spawn(async move {
                pipeline.run(batch).await;
                drop(slot);
            });
            if let Some(why) = lost {
                return SessionEnd::Lost(why);
            }
        }
    }

    /// Waits for the session's tasks for at most the grace period; then ends them.
    async fn drain(&self, consumer: &Consumer) {
        self.tasks.close();
        self.wait_for_tasks(consumer).await;
        self.stop.cancel();
    }

    /// Waits for the session's tasks, at most the grace period: a task stuck on a database that
    /// stopped answering must not hold up a new session or the process's exit. What it holds
    /// was never acknowledged, so the broker hands it out again.
    async fn wait_for_tasks(&self, consumer: &Consumer) {
        let grace = consumer.shutdown_grace_period;
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                grace_ms = grace.as_millis() as u64,
                unfinished = self.tasks.len(),
                "grace period over; unfinished deliveries stay in the queue"
            );
        }
    }

    /// Closes the channel before the connection: the broker answers a channel close only after
    /// handling every ack sent before it, so what this worker finished does not come back.
    async fn close(&self) {
        if let Err(err) = self.channel.close(200, "worker shutting down".into()).await {
            warn!(error = %err, "closing the consumer channel");
        }
        if let Err(err) = self
            .connection
            .close(200, "worker shutting down".into())
            .await
        {
            warn!(error = %err, "closing the broker connection");
        }
    }
}

/// A consumer stream that simply ends: the broker cancelled it (queue deleted, node lost).
const CONSUMER_CANCELLED: &str = "the broker cancelled the consumer";
