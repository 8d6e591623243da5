//! How the `dlq` commands read the dead-letter queue without removing anything.

use lapin::message::BasicGetMessage;
use lapin::options::BasicGetOptions;
use lapin::{Channel, Connection};

use super::DlqError;
use crate::broker;
use crate::config::BrokerSettings;
use crate::topology::Topology;

/// The close reason the broker logs for the browser's channel and connection.
const CLOSE_REASON: &str = "dlq done";

/// A private view of the dead-letter queue: what it takes stays unacknowledged, and returns to
/// the queue when [`close`](Self::close) runs or the connection drops.
pub(super) struct Browser {
    pub connection: Connection,
    channel: Channel,
    queue: String,
    pub topology: Topology,
    /// Dead letters waiting when the browser opened: it looks at no more, so letters that
    /// arrive meanwhile (a replayed event failing again) are not taken in the same run.
    remaining: u32,
}

impl Browser {
    pub async fn open(settings: &BrokerSettings) -> Result<Self, DlqError> {
        let topology = Topology::from_settings(settings);
        let connection = broker::connect(settings, "dlq").await?;
        let channel = connection.create_channel().await?;
        broker::declare(&channel, &topology).await?;
        let remaining = broker::ready_messages(&channel, &topology.dead_letter_queue).await?;
        Ok(Self {
            connection,
            channel,
            queue: topology.dead_letter_queue.clone(),
            topology,
            remaining,
        })
    }

    /// The next dead letter not yet taken by this browser, if any.
    pub async fn next(&mut self) -> Result<Option<BasicGetMessage>, DlqError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.remaining -= 1;
        Ok(self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions::default())
            .await?)
    }

    /// Gives back everything taken and not acknowledged.
    pub async fn close(self) {
        let _ = self.channel.close(200, CLOSE_REASON.into()).await;
        let _ = self.connection.close(200, CLOSE_REASON.into()).await;
    }
}
