//! AMQP_URL as a list of nodes: a process connects to the first reachable one (in the order
//! given, with `AMQP_NODE_ORDER=listed`), names it in its logs and `/readyz`, and fails over to
//! the next one when its connection is lost. The nodes here are the shared RabbitMQ reached
//! directly and through a proxy the test can cut; tests/tests/chaos.rs runs a real cluster.

use std::time::Duration;

use integration_tests::app::TestApp;
use integration_tests::clerk::UserEvent;
use integration_tests::eventually;
use integration_tests::proxy::CuttableProxy;
use integration_tests::stack::Stack;

/// A port nothing listens on: a node that is down.
const DOWN: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

fn with_nodes(stack: &Stack, nodes: &[String]) -> Vec<(&'static str, String)> {
    let mut env = stack.env(&[("AMQP_NODE_ORDER", "listed")]);
    env.retain(|(key, _)| *key != "AMQP_URL");
    env.push(("AMQP_URL", nodes.join(",")));
    env
}

async fn broker_node(app: &TestApp, part: &str) -> Option<String> {
    let (_, body) = app.readyz().await;
    let body: serde_json::Value = serde_json::from_str(&body).ok()?;
    body["broker_nodes"][part].as_str().map(str::to_owned)
}

#[tokio::test]
async fn a_node_that_is_down_is_skipped_and_readyz_names_the_node_in_use() {
    let stack = Stack::new().await;
    let shared = integration_tests::broker::amqp_url();
    let worker = TestApp::spawn(&["consume"], &with_nodes(&stack, &[DOWN.into(), shared])).await;
    worker.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(
        broker_node(&worker, "consumer").await.as_deref(),
        Some("127.0.0.1:5672")
    );
    let event = UserEvent::created("user_2nodes", "nodes@example.com", Some("nodes"));
    stack
        .broker
        .publish("user.created", &event.body(), "msg_nodes")
        .await;
    eventually("provisioned", Duration::from_secs(20), || async {
        stack.workspaces().await == 1
    })
    .await;
}

#[tokio::test]
async fn a_lost_node_fails_over_to_the_next_one() {
    let stack = Stack::new().await;
    let proxy = CuttableProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let through_proxy = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let nodes = [through_proxy, integration_tests::broker::amqp_url()];
    let worker = TestApp::spawn(&["run"], &{
        let mut env = with_nodes(&stack, &nodes);
        env.push((
            "CLERK_WEBHOOK_SECRET",
            integration_tests::webhook::SECRET.into(),
        ));
        env
    })
    .await;
    worker.wait_ready(Duration::from_secs(30)).await;
    let first = proxy.addr.to_string();
    for part in ["consumer", "ingress"] {
        assert_eq!(
            broker_node(&worker, part).await,
            Some(first.clone()),
            "{part}"
        );
    }

    proxy.cut().await;
    for part in ["consumer", "ingress"] {
        eventually(
            &format!("the {part} on the next node"),
            Duration::from_secs(30),
            || async { broker_node(&worker, part).await.as_deref() == Some("127.0.0.1:5672") },
        )
        .await;
    }
    let event = UserEvent::created("user_2failover", "failover@example.com", Some("failover"));
    stack
        .broker
        .publish("user.created", &event.body(), "msg_failover")
        .await;
    eventually(
        "provisioned after the failover",
        Duration::from_secs(20),
        || async { stack.workspaces().await == 1 },
    )
    .await;
}
