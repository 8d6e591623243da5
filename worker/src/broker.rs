//! RabbitMQ: connecting, declaring the [`Topology`], and publishing with confirms. Shared by the
//! consumer, the ingress and the dead-letter tools, so every part of the product declares exactly
//! the same topology.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::{BrokerNode, BrokerSettings, NodeOrder};
use crate::topology::{DEAD_LETTER_BINDING_KEY, DelayQueue, Topology, argument};

/// Why a publish did not make it safely into a queue.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    NotConnected,
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for routing key {0:?}: the message was returned")]
    Unroutable(String),
    #[error("no confirm from the broker within {0:?}")]
    TimedOut(Duration),
    /// A channel without `confirm.select` acknowledges nothing: success would be a guess.
    #[error("the channel is not in confirm mode: the broker would not confirm the publish")]
    NotConfirmMode,
}

impl PublishError {
    /// A stable code for the failure, for a span's `error.type`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NotConnected => "not_connected",
            Self::Broker(_) => "broker_error",
            Self::Nacked => "nacked",
            Self::Unroutable(_) => "unroutable",
            Self::TimedOut(_) => "confirm_timeout",
            Self::NotConfirmMode => "not_confirm_mode",
        }
    }
}

/// Opens a connection named after this process, so operators can find it in the management UI.
/// The URL is parsed by our code: lapin's own parse errors quote the URL, password included.
pub async fn connect(settings: &BrokerSettings, role: &str) -> Result<Connection, lapin::Error> {
    connect_to_node(settings, role)
        .await
        .map(|(connection, _)| connection)
}

/// As [`connect`], trying the nodes of AMQP_URL in the configured order until one answers;
/// also says which node that is. A node that does not answer within [`NODE_CONNECT_TIMEOUT`]
/// is skipped, so a dead node costs one timeout, not the whole retry.
pub async fn connect_to_node(
    settings: &BrokerSettings,
    role: &str,
) -> Result<(Connection, String), lapin::Error> {
    connect_with_frames(settings, role, None).await
}

/// As [`connect`], for a connection that carries little (the dead-letter keeper, the `dlq`
/// commands): it asks for [`LIGHT_FRAME_MAX`]-byte frames, since lapin keeps rings of frames of
/// the negotiated size for each connection's life (2 x 32 x 128 KiB at RabbitMQ's default).
/// Larger messages still pass, in more frames.
pub async fn connect_light(
    settings: &BrokerSettings,
    role: &str,
) -> Result<Connection, lapin::Error> {
    connect_with_frames(settings, role, Some(LIGHT_FRAME_MAX))
        .await
        .map(|(connection, _)| connection)
}

/// The frame size [`connect_light`] asks for.
pub const LIGHT_FRAME_MAX: u32 = 16 * 1024;

async fn connect_with_frames(
    settings: &BrokerSettings,
    role: &str,
    frame_max: Option<u32>,
) -> Result<(Connection, String), lapin::Error> {
    let nodes = settings
        .amqp_nodes()
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    let name = format!("{role}@{}#{}", hostname(), std::process::id());
    let mut last_error = None;
    for mut node in in_order(nodes, settings.node_order) {
        if let Some(frame_max) = frame_max {
            node.uri.query.frame_max = Some(frame_max);
        }
        let properties = ConnectionProperties::default().with_connection_name(name.clone().into());
        let attempt = Connection::connect_uri(node.uri, properties);
        match tokio::time::timeout(NODE_CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(connection)) => {
                info!(node = %node.name, role, "connected to the broker");
                return Ok((connection, node.name));
            }
            Ok(Err(err)) => {
                warn!(node = %node.name, error = %err, "broker node unavailable; trying the next");
                last_error = Some(err);
            }
            Err(_) => {
                warn!(node = %node.name, timeout = ?NODE_CONNECT_TIMEOUT, "broker node did not answer; trying the next");
                let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, node.name);
                last_error = Some(timed_out.into());
            }
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "AMQP_URL names no node").into()
    }))
}

/// How long one node gets to accept a connection.
pub const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The nodes in the order to try them: as listed, or rotated to start at a random one.
fn in_order(mut nodes: Vec<BrokerNode>, order: NodeOrder) -> Vec<BrokerNode> {
    if order == NodeOrder::Random && !nodes.is_empty() {
        let start = fastrand::usize(..nodes.len());
        nodes.rotate_left(start);
    }
    nodes
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned())
}

/// Declares exchanges, queues and bindings. Idempotent: every process runs it at start-up and
/// after each reconnect, with the same arguments (a mismatch is a broker error worth seeing).
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), lapin::Error> {
    let topic = [&topology.exchange, &topology.dead_letter_exchange];
    declare_exchanges(channel, &topic, ExchangeKind::Topic).await?;
    let durable_queue = durable_queue();
    channel
        .queue_declare(
            topology.dead_letter_queue.as_str().into(),
            durable_queue,
            quorum_arguments(topology),
        )
        .await?;
    channel
        .queue_bind(
            topology.dead_letter_queue.as_str().into(),
            topology.dead_letter_exchange.as_str().into(),
            DEAD_LETTER_BINDING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            topology.queue.as_str().into(),
            durable_queue,
            main_queue_arguments(topology),
        )
        .await?;
    channel
        .queue_bind(
            topology.queue.as_str().into(),
            topology.exchange.as_str().into(),
            topology.binding_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    declare_retry_route(channel, topology).await
}

/// The delay queues and the retry queue of earlier deployments, each behind a fanout exchange of
/// its own name; all of them lead out, on expiry, through `retry.redeliver_exchange` into the
/// main queue, routing key kept. The retry queue keeps exactly the arguments it always had.
async fn declare_retry_route(channel: &Channel, topology: &Topology) -> Result<(), lapin::Error> {
    let route = &topology.retry;
    let redeliver = &route.redeliver_exchange;
    declare_exchanges(channel, &[redeliver], ExchangeKind::Fanout).await?;
    bind(channel, &topology.queue, redeliver).await?;
    let legacy = dead_lettering_arguments(topology, redeliver);
    declare_behind_fanout(channel, &route.queue, legacy).await?;
    for delay in &route.delays {
        declare_behind_fanout(channel, &delay.name, delay_queue_arguments(topology, delay)).await?;
    }
    Ok(())
}

/// A durable queue with `arguments` and a fanout exchange of the same name bound to it.
async fn declare_behind_fanout(
    channel: &Channel,
    name: &str,
    arguments: FieldTable,
) -> Result<(), lapin::Error> {
    let exchange = name.to_owned();
    declare_exchanges(channel, &[&exchange], ExchangeKind::Fanout).await?;
    channel
        .queue_declare(name.into(), durable_queue(), arguments)
        .await?;
    bind(channel, name, name).await
}

/// Binds `queue` to the fanout `exchange` (no routing key: fanout ignores it).
async fn bind(channel: &Channel, queue: &str, exchange: &str) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// A delay queue: dead-letters (at least once) into the redeliver exchange whatever has waited
/// its one per-queue TTL. No delivery limit: nothing consumes it.
fn delay_queue_arguments(topology: &Topology, delay: &DelayQueue) -> FieldTable {
    let mut arguments = dead_lettering_arguments(topology, &topology.retry.redeliver_exchange);
    let ttl_ms = i64::try_from(delay.wait.as_millis()).unwrap_or(i64::MAX);
    arguments.insert(argument::MESSAGE_TTL.into(), AMQPValue::LongLongInt(ttl_ms));
    arguments
}

/// Durable exchanges of one kind.
async fn declare_exchanges(
    channel: &Channel,
    names: &[&String],
    kind: ExchangeKind,
) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for name in names {
        channel
            .exchange_declare(
                name.as_str().into(),
                kind.clone(),
                durable,
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// A quorum queue, with `x-quorum-initial-group-size` only when the setting is given.
fn quorum_arguments(topology: &Topology) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(argument::QUEUE_TYPE.into(), long_string(argument::QUORUM));
    if let Some(size) = topology.quorum_initial_group_size {
        arguments.insert(
            argument::QUORUM_INITIAL_GROUP_SIZE.into(),
            AMQPValue::LongLongInt(i64::from(size)),
        );
    }
    arguments
}

/// Quorum queue that dead-letters, at least once, what exceeds the delivery limit. At-least-once
/// dead-lettering requires `reject-publish` overflow (RabbitMQ >= 3.10).
fn main_queue_arguments(topology: &Topology) -> FieldTable {
    let mut arguments = dead_lettering_arguments(topology, &topology.dead_letter_exchange);
    arguments.insert(
        argument::DELIVERY_LIMIT.into(),
        AMQPValue::LongLongInt(i64::from(topology.delivery_limit)),
    );
    arguments
}

/// A quorum queue that dead-letters to `exchange`, at least once.
fn dead_lettering_arguments(topology: &Topology, exchange: &str) -> FieldTable {
    let mut arguments = quorum_arguments(topology);
    arguments.insert(argument::DEAD_LETTER_EXCHANGE.into(), long_string(exchange));
    arguments.insert(
        argument::DEAD_LETTER_STRATEGY.into(),
        long_string(argument::AT_LEAST_ONCE),
    );
    arguments.insert(
        argument::OVERFLOW.into(),
        long_string(argument::REJECT_PUBLISH),
    );
    arguments
}

/// Messages ready (not delivered) in a queue that exists.
pub async fn ready_messages(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    Ok(queue_depth(channel, queue).await?.ready)
}

/// What the broker says of a queue: messages ready, and consumers attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    pub ready: u32,
    pub consumers: u32,
}

/// Asks the broker how deep `queue` is (a passive declare: it creates nothing).
pub async fn queue_depth(channel: &Channel, queue: &str) -> Result<QueueDepth, lapin::Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok(QueueDepth {
        ready: queue.message_count(),
        consumers: queue.consumer_count(),
    })
}

pub fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Resolves, with the reason, once `connection` is lost: closed by the broker, I/O failed, two
/// heartbeats missed, or one of its channels closed with an error. Its events are read by a task
/// of its own, so the loss is noticed whatever the caller is busy with, and nothing polls. The
/// one way the consumer and the ingress's publisher notice a lost connection.
pub fn watch_connection(connection: &Connection) -> ConnectionLost {
    let (mut report, lost) = oneshot::channel();
    // Listen first, then look: a loss before the listener existed shows in the status.
    let events = connection.events_listener();
    if connection.status().connected() {
        tokio::spawn(async move {
            tokio::select! {
                why = first_error(events) => {
                    let _ = report.send(why);
                }
                // Nobody waits for the answer any more (the connection was closed on purpose).
                () = report.closed() => {}
            }
        });
    } else {
        let _ = report.send(ALREADY_CLOSED.to_owned());
    }
    Box::pin(lost.map(|why| why.unwrap_or_else(|_| WATCH_ENDED.to_owned())))
}

/// What [`watch_connection`] returns: the reason, once the connection is lost. `Sync`, so a
/// value that holds it can be shared while it waits.
pub type ConnectionLost = Pin<Box<dyn Future<Output = String> + Send + Sync>>;

/// The first error among a connection's events; if they end without one, the connection is gone.
async fn first_error(events: impl Stream<Item = lapin::Event>) -> String {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        if let lapin::Event::Error(err) = event {
            return err.to_string();
        }
    }
    EVENTS_ENDED.to_owned()
}

/// The connection was no longer connected when the watch began.
const ALREADY_CLOSED: &str = "the connection was closed before it was watched";
/// The connection's event stream ended without an error: the connection is gone.
const EVENTS_ENDED: &str = "the connection's events ended";
/// The watching task ended without an answer (the runtime is shutting down).
const WATCH_ENDED: &str = "the connection watch ended";

/// A channel in confirm mode: every publish on it is acknowledged by the broker.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Publishes `body` as a persistent, mandatory message and waits for the broker's confirm.
/// Success means a queue holds the message: a nack, a return (unroutable, though still acked),
/// no answer within `timeout`, or a channel not in confirm mode (no answer will ever come) are
/// all failures.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    timeout: Duration,
) -> Result<(), PublishError> {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = async {
        channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                mandatory,
                body,
                properties.with_delivery_mode(2),
            )
            .await?
            .await
    };
    let confirmation = tokio::time::timeout(timeout, confirm)
        .await
        .map_err(|_| PublishError::TimedOut(timeout))??;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::NotRequested => Err(PublishError::NotConfirmMode),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable(routing_key.to_owned())),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
    }
}

/// A string header, whichever AMQP string type carries it.
pub fn text_header(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// `headers` without the header `name` (lapin's table has no remove).
pub fn without_header(headers: &FieldTable, name: &str) -> FieldTable {
    let mut fields = headers.inner().clone();
    fields.retain(|key, _| key.as_str() != name);
    FieldTable::from(fields)
}

/// `properties` without a per-message TTL (`expiration`), everything else kept (lapin's
/// properties have no way to unset one field).
pub fn without_expiration(properties: &BasicProperties) -> BasicProperties {
    type Set = fn(BasicProperties, ShortString) -> BasicProperties;
    let p = properties;
    let strings: [(Set, &Option<ShortString>); 9] = [
        (BasicProperties::with_content_type, p.content_type()),
        (BasicProperties::with_content_encoding, p.content_encoding()),
        (BasicProperties::with_correlation_id, p.correlation_id()),
        (BasicProperties::with_reply_to, p.reply_to()),
        (BasicProperties::with_message_id, p.message_id()),
        (BasicProperties::with_type, p.kind()),
        (BasicProperties::with_user_id, p.user_id()),
        (BasicProperties::with_app_id, p.app_id()),
        (BasicProperties::with_cluster_id, p.cluster_id()),
    ];
    let mut kept =
        strings.into_iter().fold(
            BasicProperties::default(),
            |kept, (set, value)| match value {
                Some(value) => set(kept, value.clone()),
                None => kept,
            },
        );
    if let Some(headers) = p.headers() {
        kept = kept.with_headers(headers.clone());
    }
    if let Some(mode) = *p.delivery_mode() {
        kept = kept.with_delivery_mode(mode);
    }
    if let Some(priority) = *p.priority() {
        kept = kept.with_priority(priority);
    }
    if let Some(timestamp) = *p.timestamp() {
        kept = kept.with_timestamp(timestamp);
    }
    kept
}

/// An integer header, whichever AMQP integer type carries it.
pub fn integer_header(headers: &FieldTable, name: &str) -> Option<i64> {
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// How long a republish waits for its confirm: the original stays where it is until then.
const REPUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes `delivery` again to `exchange`, byte for byte with its routing key and properties,
/// after `edit_headers` changed its headers; confirmed as [`publish_confirmed`]. Dead-lettering
/// and replay both move a message this way, and acknowledge the original only on success.
pub async fn republish(
    channel: &Channel,
    exchange: &str,
    delivery: &lapin::message::Delivery,
    edit_headers: impl FnOnce(&mut FieldTable),
) -> Result<(), PublishError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    edit_headers(&mut headers);
    republish_as(
        channel,
        exchange,
        delivery,
        delivery.properties.clone().with_headers(headers),
    )
    .await
}

/// Publishes `delivery`'s body again to `exchange` with its routing key and the given
/// `properties`; confirmed as [`publish_confirmed`].
pub async fn republish_as(
    channel: &Channel,
    exchange: &str,
    delivery: &lapin::message::Delivery,
    properties: BasicProperties,
) -> Result<(), PublishError> {
    publish_confirmed(
        channel,
        exchange,
        delivery.routing_key.as_str(),
        &delivery.data,
        properties,
        REPUBLISH_TIMEOUT,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_group_size_is_sent_only_when_set() {
        let mut settings = BrokerSettings::with_prefix("amqp://h", "");
        let unset = Topology::from_settings(&settings);
        let key = argument::QUORUM_INITIAL_GROUP_SIZE;
        assert!(!main_queue_arguments(&unset).contains_key(key));
        settings.quorum_initial_group_size = Some(3);
        let set = Topology::from_settings(&settings);
        for arguments in [main_queue_arguments(&set), quorum_arguments(&set)] {
            assert_eq!(arguments.inner().get(key), Some(&AMQPValue::LongLongInt(3)));
        }
    }

    #[test]
    fn nodes_are_tried_as_listed_or_from_a_random_one_in_turn() {
        let settings = BrokerSettings::with_prefix(
            "amqp://u:p@a:5681/%2f, amqp://u:p@b:5682/%2f,amqp://u:p@c:5683/%2f",
            "",
        );
        let names = |order| -> Vec<String> {
            let nodes = settings.amqp_nodes().expect("three nodes");
            in_order(nodes, order).into_iter().map(|n| n.name).collect()
        };
        assert_eq!(names(NodeOrder::Listed), ["a:5681", "b:5682", "c:5683"]);
        let rotations = [
            ["a:5681", "b:5682", "c:5683"],
            ["b:5682", "c:5683", "a:5681"],
            ["c:5683", "a:5681", "b:5682"],
        ];
        let mut starts = std::collections::HashSet::new();
        for _ in 0..100 {
            let random = names(NodeOrder::Random);
            assert!(rotations.iter().any(|r| random == r), "{random:?}");
            starts.insert(random[0].clone());
        }
        assert_eq!(starts.len(), 3, "every node is a first choice sometimes");
    }

    #[test]
    fn every_node_is_redacted_and_a_bad_one_names_the_setting() {
        let settings =
            BrokerSettings::with_prefix("amqp://u:s3cret@a:1/%2f,amqp://u:s3cret@b:2/%2f", "");
        assert_eq!(
            settings.redacted_url(),
            "amqp://u:***@a:1/%2f,amqp://u:***@b:2/%2f"
        );
        let bad = BrokerSettings::with_prefix("amqp://u:p@a:1/%2f,nonsense", "");
        let err = bad.amqp_nodes().expect_err("the second node is no URL");
        assert!(err.to_string().starts_with("AMQP_URL"), "{err}");
    }

    #[test]
    fn only_the_expiration_is_taken_off_the_properties() {
        let mut headers = FieldTable::default();
        headers.insert("x-received-at-ms".into(), AMQPValue::LongLongInt(7));
        let full = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(1)
            .with_correlation_id("c".into())
            .with_reply_to("r".into())
            .with_message_id("msg_1".into())
            .with_timestamp(1_764_300_000)
            .with_type("t".into())
            .with_user_id("guest".into())
            .with_app_id("a".into())
            .with_cluster_id("k".into());
        let expiring = full.clone().with_expiration("5000".into());
        assert_eq!(without_expiration(&expiring), full);
        assert_eq!(without_expiration(&full), full);
        assert_eq!(
            without_expiration(&BasicProperties::default()),
            BasicProperties::default()
        );
    }

    #[test]
    fn a_delay_queue_expires_into_the_main_queue_after_its_one_ttl() {
        let topology = Topology::from_settings(&BrokerSettings::with_prefix("amqp://h", ""));
        let thirty_seconds = &topology.retry.delays[5];
        let arguments = delay_queue_arguments(&topology, thirty_seconds);
        let get = |key: &str| arguments.inner().get(key).cloned();
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(30_000)));
        assert_eq!(
            get("x-dead-letter-exchange"),
            Some(long_string("workspace.provisioning.redeliver"))
        );
        assert_eq!(get("x-queue-type"), Some(long_string("quorum")));
        assert_eq!(
            get("x-dead-letter-strategy"),
            Some(long_string("at-least-once"))
        );
        assert_eq!(get("x-overflow"), Some(long_string("reject-publish")));
        assert_eq!(get("x-delivery-limit"), None);
        let legacy = dead_lettering_arguments(&topology, &topology.retry.redeliver_exchange);
        assert_eq!(
            legacy.inner().get("x-message-ttl"),
            None,
            "the old retry queue is declared as it always was"
        );
    }

    #[test]
    fn the_main_queue_is_a_quorum_queue_with_a_delivery_limit_and_dead_lettering() {
        let topology = Topology::from_settings(&BrokerSettings::with_prefix("amqp://h", ""));
        let arguments = main_queue_arguments(&topology);
        let get = |key: &str| arguments.inner().get(key).cloned();
        assert_eq!(get("x-queue-type"), Some(long_string("quorum")));
        assert_eq!(get("x-delivery-limit"), Some(AMQPValue::LongLongInt(10)));
        assert_eq!(
            get("x-dead-letter-exchange"),
            Some(long_string("clerk.events.dlx"))
        );
    }
}
