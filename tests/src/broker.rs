//! A RabbitMQ topology of the test's own: every exchange and queue name carries a unique prefix,
//! and all of them are deleted when the value is dropped.

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use std::time::Duration;
use worker::broker;
use worker::config::BrokerSettings;
use worker::topology::{Topology, header};

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const START_RABBITMQ: &str = "start it with: rabbitmq-server -detached";

/// The broker tests use (`TEST_AMQP_URL`, default the local RabbitMQ).
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Where [`amqp_url`] points, for a proxy put in front of it.
pub fn amqp_addr() -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let uri: lapin::uri::AMQPUri = amqp_url().parse().expect("TEST_AMQP_URL is an AMQP URL");
    (uri.authority.host.as_str(), uri.authority.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .expect("TEST_AMQP_URL's host resolves")
}

/// A message as it sits in a queue.
#[derive(Debug)]
pub struct Message {
    pub body: Vec<u8>,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub headers: FieldTable,
    pub properties: BasicProperties,
}

impl Message {
    /// A header's value as text (strings) or number (integers), for assertions.
    pub fn header(&self, name: &str) -> Option<String> {
        match self.headers.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            AMQPValue::LongLongInt(n) => Some(n.to_string()),
            AMQPValue::LongInt(n) => Some(n.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

pub struct TestBroker {
    pub settings: BrokerSettings,
    pub topology: Topology,
    connection: Connection,
    channel: Channel,
}

impl TestBroker {
    /// Declares a fresh topology (as the worker will) so messages can be published before any
    /// worker runs.
    pub async fn new() -> Self {
        Self::with_delivery_limit(worker::topology::DEFAULT_DELIVERY_LIMIT).await
    }

    /// A topology whose main queue dead-letters a message returned more than `limit` times.
    /// Workers on it need `AMQP_DELIVERY_LIMIT` set to match ([`Self::env`] does it).
    pub async fn with_delivery_limit(limit: u32) -> Self {
        Self::on(&amqp_url(), limit).await
    }

    /// A topology on the broker at `url` (a private node, say) with the delivery limit given.
    pub async fn on(url: &str, limit: u32) -> Self {
        let prefix = format!("it-{}.", uuid::Uuid::new_v4().simple());
        let mut settings = BrokerSettings::with_prefix(url, prefix);
        settings.delivery_limit = limit;
        let topology = Topology::from_settings(&settings);
        let connection = broker::connect(&settings, "test")
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "RabbitMQ at {} is not reachable ({err}); {START_RABBITMQ}",
                    settings.redacted_url()
                )
            });
        let channel = broker::confirm_channel(&connection)
            .await
            .expect("a confirm channel");
        broker::declare(&channel, &topology)
            .await
            .expect("topology declared");
        Self {
            settings,
            topology,
            connection,
            channel,
        }
    }

    /// The environment a worker process needs to use this topology.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AMQP_URL", self.settings.expose_url().to_owned()),
            ("AMQP_NAME_PREFIX", self.settings.name_prefix.clone()),
            (
                "AMQP_DELIVERY_LIMIT",
                self.settings.delivery_limit.to_string(),
            ),
        ]
    }

    /// Publishes a Clerk body as the ingress does: routing key = event type, message id, and
    /// the received-at header; waits for the broker's confirm.
    pub async fn publish(&self, routing_key: &str, body: &[u8], message_id: &str) {
        let mut headers = FieldTable::default();
        let now = chrono::Utc::now().timestamp_millis();
        headers.insert(header::RECEIVED_AT_MS.into(), AMQPValue::LongLongInt(now));
        let exchange = self.topology.exchange.clone();
        self.publish_to(&exchange, routing_key, body, message_id, headers)
            .await;
    }

    /// A confirmed JSON publish with a message id and `headers`; panics with the id on failure.
    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
        headers: FieldTable,
    ) {
        let properties = BasicProperties::default()
            .with_message_id(message_id.into())
            .with_content_type("application/json".into())
            .with_headers(headers);
        self.publish_as(exchange, routing_key, body, properties)
            .await;
    }

    /// A confirmed publish of `body` to `exchange` with exactly the `properties` given (a
    /// deferred retry, or what an earlier release left in a queue).
    pub async fn publish_as(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        broker::publish_confirmed(
            &self.channel,
            exchange,
            routing_key,
            body,
            properties,
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|err| panic!("publishing to {exchange}: {err}"));
    }

    /// Declares the durable queue `name` with `arguments` on a channel of its own, as another
    /// release of the worker would: the broker refuses (406) arguments unlike the existing ones.
    pub async fn declare_queue(&self, name: &str, arguments: FieldTable) -> Result<(), String> {
        let channel = self.connection.create_channel().await.expect("a channel");
        let durable = lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(name.into(), durable, arguments)
            .await
            .map(|_| ())
            .map_err(|err| err.to_string());
        let _ = channel.close(200, "done".into()).await;
        declared
    }

    /// Publishes many events at once, waiting for all confirms at the end (for bulk loads).
    pub async fn publish_many(&self, events: &[(String, Vec<u8>, String)]) {
        use lapin::options::BasicPublishOptions;
        for (routing_key, body, message_id) in events {
            let properties = BasicProperties::default()
                .with_message_id(message_id.as_str().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let options = BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            };
            let confirm = self
                .channel
                .basic_publish(
                    self.topology.exchange.as_str().into(),
                    routing_key.as_str().into(),
                    options,
                    body,
                    properties,
                )
                .await
                .expect("publish");
            drop(confirm); // awaited together below
        }
        let returned = self.channel.wait_for_confirms().await.expect("confirms");
        assert!(
            returned.is_empty(),
            "{} events were unroutable",
            returned.len()
        );
    }

    /// Puts a message straight into the dead-letter queue, as the worker would have.
    pub async fn publish_dead_letter(
        &self,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
        reason: &str,
    ) {
        self.publish_dead_letter_with(routing_key, body, message_id, reason, &[])
            .await;
    }

    /// [`Self::publish_dead_letter`] with `extra` headers.
    pub async fn publish_dead_letter_with(
        &self,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
        reason: &str,
        extra: &[(&str, &str)],
    ) {
        let mut headers = FieldTable::default();
        for (name, value) in extra {
            headers.insert((*name).into(), AMQPValue::LongString((*value).into()));
        }
        headers.insert(
            header::FAILURE_REASON.into(),
            AMQPValue::LongString(reason.into()),
        );
        headers.insert(
            header::FAILURE_DETAIL.into(),
            AMQPValue::LongString("made by the test".into()),
        );
        headers.insert(header::ATTEMPTS.into(), AMQPValue::LongLongInt(1));
        let exchange = self.topology.dead_letter_exchange.clone();
        self.publish_to(&exchange, routing_key, body, message_id, headers)
            .await;
    }

    /// Messages ready in a queue (not counting those delivered and unacknowledged).
    pub async fn ready(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("a channel");
        let ready = broker::ready_messages(&channel, queue)
            .await
            .expect("queue exists");
        let _ = channel.close(200, "done".into()).await;
        ready
    }

    /// Gets one message from `queue` and gives it back (nack with requeue), as a crashing
    /// consumer would; false when the queue was empty.
    pub async fn get_and_requeue(&self, queue: &str) -> bool {
        let got = self
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get");
        let Some(got) = got else { return false };
        let requeue = BasicNackOptions {
            requeue: true,
            multiple: false,
        };
        got.delivery.acker.nack(requeue).await.expect("nack");
        true
    }

    /// Removes the main queue's binding, so events published to the exchange are unroutable.
    pub async fn unbind_main_queue(&self) {
        self.channel
            .queue_unbind(
                self.topology.queue.as_str().into(),
                self.topology.exchange.as_str().into(),
                self.topology.binding_key.as_str().into(),
                FieldTable::default(),
            )
            .await
            .expect("queue unbound");
    }

    /// Deletes the main queue under a running consumer (the broker then cancels it).
    pub async fn delete_main_queue(&self) {
        self.channel
            .queue_delete(
                self.topology.queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .expect("queue deleted");
    }

    /// Takes every message out of the dead-letter queue.
    pub async fn take_dead_letters(&self) -> Vec<Message> {
        self.take_all(&self.topology.dead_letter_queue).await
    }

    /// Takes (gets and acks) every ready message of `queue`.
    pub async fn take_all(&self, queue: &str) -> Vec<Message> {
        let mut messages = Vec::new();
        while let Some(got) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            let delivery = got.delivery;
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            messages.push(Message {
                body: delivery.data.clone(),
                routing_key: delivery.routing_key.as_str().to_owned(),
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned()),
                headers: delivery.properties.headers().clone().unwrap_or_default(),
                properties: delivery.properties.clone(),
            });
        }
        messages
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let topology = self.topology.clone();
        let url = self.settings.expose_url().to_owned();
        let cleaner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let connection = Connection::connect(&url, Default::default()).await?;
                let channel = connection.create_channel().await?;
                let delays = topology.retry.delays.iter().map(|delay| &delay.name);
                let queues = [
                    &topology.queue,
                    &topology.dead_letter_queue,
                    &topology.retry.queue,
                ];
                for queue in queues.into_iter().chain(delays.clone()) {
                    channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await?;
                }
                let exchanges = [
                    &topology.exchange,
                    &topology.dead_letter_exchange,
                    &topology.retry.exchange,
                    &topology.retry.redeliver_exchange,
                ];
                for exchange in exchanges.into_iter().chain(delays) {
                    channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await?;
                }
                connection.close(200, "cleaned up".into()).await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
        if let Ok(Err(err)) = cleaner.join() {
            eprintln!("warning: could not delete a test topology: {err}");
        }
    }
}
