//! The ingress's way into the broker: one confirm-mode channel kept alive in the background.
//!
//! The ingress must start and answer while the broker is down (503, so Svix retries), so the
//! connection is not a precondition: a background task connects, declares the topology, and
//! reconnects with backoff whenever the connection or channel is lost. Publishing while
//! disconnected fails at once instead of waiting.

use std::sync::Arc;
use std::time::Duration;

use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::{self, PublishError};
use crate::config::BrokerSettings;
use crate::readiness::ReadyFlag;
use crate::retry::RetryPolicy;
use crate::topology::Topology;

pub struct Publisher {
    channel: RwLock<Option<Channel>>,
    exchange: String,
    /// Set while a confirm channel is open; `/readyz` reads it.
    pub connected: ReadyFlag,
}

impl Publisher {
    /// Starts the background keeper; it stops (closing the connection) when `stop` is cancelled.
    pub fn spawn(
        settings: BrokerSettings,
        reconnect: RetryPolicy,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let publisher = Arc::new(Self {
            channel: RwLock::new(None),
            exchange: Topology::from_settings(&settings).exchange,
            connected: ReadyFlag::default(),
        });
        tokio::spawn(publisher.clone().keep_connected(settings, reconnect, stop));
        publisher
    }

    /// The exchange events are published to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Publishes `body` to the events exchange and waits for the broker's confirm.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        timeout: Duration,
    ) -> Result<(), PublishError> {
        let channel = self
            .channel
            .read()
            .await
            .clone()
            .ok_or(PublishError::NotConnected)?;
        broker::publish_confirmed(
            &channel,
            &self.exchange,
            routing_key,
            body,
            properties,
            timeout,
        )
        .await
    }

    async fn keep_connected(
        self: Arc<Self>,
        settings: BrokerSettings,
        reconnect: RetryPolicy,
        stop: CancellationToken,
    ) {
        let topology = Topology::from_settings(&settings);
        let mut delays = reconnect.delays();
        loop {
            match open(&settings, &topology).await {
                Ok((connection, channel, node)) => {
                    self.set(Some((channel.clone(), node.as_str()))).await;
                    info!(exchange = %topology.exchange, %node, "ingress connected to the broker");
                    delays = reconnect.delays();
                    // Watch first, then look: a channel error before the watch began raised
                    // no event, but shows in the channel's status.
                    let watch = broker::watch_connection(&connection);
                    let lost = if channel.status().connected() {
                        tokio::select! {
                            why = watch => Some(why),
                            () = stop.cancelled() => None,
                        }
                    } else {
                        Some("the publishing channel closed before it was watched".to_owned())
                    };
                    self.set(None).await;
                    match lost {
                        Some(why) => {
                            warn!(reason = %why, "ingress lost the broker connection; reconnecting");
                        }
                        None => {
                            let _ = connection.close(200, "ingress shutting down".into()).await;
                            return;
                        }
                    }
                }
                Err(err) => warn!(error = %err, "ingress cannot reach the broker; retrying"),
            }
            let delay = delays.next().unwrap_or(reconnect.max_delay);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn set(&self, connected: Option<(Channel, &str)>) {
        let channel = match connected {
            Some((channel, node)) => {
                self.connected.connected_to(node);
                Some(channel)
            }
            None => {
                self.connected.disconnected();
                None
            }
        };
        *self.channel.write().await = channel;
    }
}

/// A connection, its confirm channel with the topology declared, and the node's name.
async fn open(
    settings: &BrokerSettings,
    topology: &Topology,
) -> Result<(Connection, Channel, String), lapin::Error> {
    let (connection, node) = broker::connect_to_node(settings, "ingress").await?;
    let channel = broker::confirm_channel(&connection).await?;
    broker::declare(&channel, topology).await?;
    Ok((connection, channel, node))
}
