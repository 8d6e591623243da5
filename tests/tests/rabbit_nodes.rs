//! `deploy/rabbitmq-cluster.sh` through the test harness: a three-node cluster replicates the
//! product's quorum queue, keeps its messages when the leader's VM is killed, and takes the node
//! back; a single node gets the test's own configuration.

use std::time::{Duration, Instant};

use integration_tests::rabbit_nodes::RabbitNodes;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use worker::broker;
use worker::config::BrokerSettings;
use worker::topology::Topology;

const MESSAGES: usize = 20;

/// The product's main queue as `list_queues` reports it on node `n`: (leader, members, online).
fn queue_on(nodes: &RabbitNodes, n: u16, queue: &str) -> (String, Vec<String>, Vec<String>) {
    let args = ["list_queues", "name", "leader", "members", "online"];
    let json = nodes.rabbitmqctl(n, &[&args[..], &["--formatter", "json"]].concat());
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&json).unwrap_or_else(|err| panic!("list_queues: {err}: {json}"));
    let row = rows
        .iter()
        .find(|row| row["name"] == queue)
        .unwrap_or_else(|| panic!("{queue} on node {n}: {json}"));
    let names = |key: &str| -> Vec<String> {
        let mut names: Vec<String> = serde_json::from_value(row[key].clone()).unwrap_or_default();
        names.sort();
        names
    };
    let leader = row["leader"].as_str().unwrap_or_default().to_owned();
    (leader, names("members"), names("online"))
}

async fn connect(url: &str) -> lapin::Result<(Connection, Channel)> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

/// Takes (gets and acks) every message of `queue` through `url`, retrying until `expected` came
/// or the deadline passes: the queue has no leader until the survivors elect one.
async fn take_through(url: &str, queue: &str, expected: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut bodies = Vec::new();
    let mut last_error = None;
    while bodies.len() < expected && Instant::now() < deadline {
        let attempt =
            tokio::time::timeout(Duration::from_secs(5), take_some(url, queue, &mut bodies));
        match attempt.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => last_error = Some(err.to_string()),
            Err(_) => last_error = Some("no answer within 5 s".to_owned()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        bodies.len(),
        expected,
        "messages taken from {queue} (last error: {last_error:?})"
    );
    bodies
}

async fn take_some(url: &str, queue: &str, bodies: &mut Vec<Vec<u8>>) -> lapin::Result<()> {
    let (connection, channel) = connect(url).await?;
    while let Some(got) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await?
    {
        got.delivery.acker.ack(BasicAckOptions::default()).await?;
        bodies.push(got.delivery.data.clone());
    }
    connection.close(200, "taken".into()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quorum_queue_on_three_nodes_keeps_its_messages_when_the_leader_is_killed() {
    let started = Instant::now();
    let nodes = RabbitNodes::start(3, "");
    eprintln!("3-node cluster started in {:?}", started.elapsed());

    // The product's own topology, declared through node 1 once the cluster is formed.
    let settings = BrokerSettings::with_prefix(nodes.amqp_url(1), "");
    let topology = Topology::from_settings(&settings);
    let connection = broker::connect(&settings, "test").await.expect("node 1");
    let channel = broker::confirm_channel(&connection).await.expect("channel");
    broker::declare(&channel, &topology)
        .await
        .expect("topology");
    for i in 0..MESSAGES {
        let body = format!("{{\"type\":\"user.created\",\"n\":{i}}}");
        broker::publish_confirmed(
            &channel,
            &topology.exchange,
            "user.created",
            body.as_bytes(),
            BasicProperties::default(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|err| panic!("publishing message {i}: {err}"));
    }
    let _ = connection.close(200, "published".into()).await;

    let everyone: Vec<String> = (1..=3).map(|n| nodes.node_name(n)).collect();
    let (leader, members, online) = queue_on(&nodes, 1, &topology.queue);
    assert_eq!(leader, nodes.node_name(1), "declared through node 1");
    assert_eq!(members, everyone, "a member on every node");
    assert_eq!(online, everyone);

    nodes.kill(1);
    let bodies = take_through(&nodes.amqp_url(2), &topology.queue, MESSAGES).await;
    let expected: Vec<Vec<u8>> = (0..MESSAGES)
        .map(|i| format!("{{\"type\":\"user.created\",\"n\":{i}}}").into_bytes())
        .collect();
    assert_eq!(bodies, expected, "every message, in order, through node 2");

    let restarted = Instant::now();
    nodes.restart(1);
    eprintln!("node 1 back in {:?}", restarted.elapsed());
    let status = nodes.rabbitmqctl(1, &["cluster_status", "--formatter", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("cluster_status JSON");
    let mut running: Vec<String> =
        serde_json::from_value(status["running_nodes"].clone()).expect("running_nodes");
    running.sort();
    assert_eq!(running, everyone, "node 1 runs in the cluster again");
    integration_tests::eventually(
        "node 1's queue member online",
        Duration::from_secs(30),
        || {
            let online = queue_on(&nodes, 2, &topology.queue).2;
            let everyone = everyone.clone();
            async move { online == everyone }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_node_takes_the_extra_configuration() {
    let started = Instant::now();
    let nodes = RabbitNodes::start(1, "consumer_timeout = 5000\n");
    eprintln!("1 node started in {:?}", started.elapsed());

    let timeout = nodes.rabbitmqctl(
        1,
        &["eval", "application:get_env(rabbit, consumer_timeout)."],
    );
    assert_eq!(timeout.trim(), "{ok,5000}");
    let (connection, _channel) = connect(&nodes.amqp_url(1)).await.expect("guest logs in");
    let _ = connection.close(200, "done".into()).await;
}
