//! The signature header limits through the real ingress (issue 12): each request's verification
//! is bounded whatever its headers hold, a refusal is 401 `invalid_header` (or
//! `timestamp_out_of_tolerance`), and nothing refused is published.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use integration_tests::app::TestApp;
use integration_tests::broker::TestBroker;
use integration_tests::clerk::fixture;
use integration_tests::webhook::{SECRET, Webhook};

/// The body limit's default (`INGRESS_MAX_BODY`): the largest body an attacker can send.
const MAX_BODY: usize = 256 * 1024;

/// The ingress's settings for every test here, in one place. The oversized-header tests send
/// heads of up to ~160 KiB; the server answers heads past `INGRESS_MAX_HEAD` (16 KiB by
/// default) 431 itself (tests/tests/ingress_limits.rs), so the limit is raised to its maximum
/// here for those requests to reach the signature check.
fn ingress_env(broker: &TestBroker) -> Vec<(&'static str, String)> {
    let mut env = broker.env();
    env.push(("CLERK_WEBHOOK_SECRET", SECRET.to_owned()));
    env.push(("INGRESS_MAX_HEAD", (256 * 1024).to_string()));
    env
}

async fn ingress(broker: &TestBroker) -> TestApp {
    let app = TestApp::spawn(&["ingress"], &ingress_env(broker)).await;
    app.wait_ready(Duration::from_secs(30)).await;
    app
}

/// A real event, signed now, with `header` set to `value` (replacing the signed one).
fn webhook_with(header: &str, value: String) -> Webhook {
    let mut webhook = Webhook::signed(SECRET, &fixture("user_created.json"));
    match header {
        "svix-id" => webhook.id = value,
        "svix-signature" => webhook.signature = value,
        other => panic!("no such header here: {other}"),
    }
    webhook
}

/// POSTs `body` with the three Svix headers as given, byte for byte (the timestamp too).
async fn post_raw(
    addr: SocketAddr,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/clerk"))
        .header("content-type", "application/json")
        .header("svix-id", id)
        .header("svix-timestamp", timestamp)
        .header("svix-signature", signature)
        .body(body)
        .send()
        .await
        .expect("the ingress answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

fn assert_refused((status, body): &(u16, serde_json::Value), code: &str, case: &str) {
    assert_eq!(*status, 401, "{case}: {body}");
    assert_eq!(body["error"], code, "{case}: {body}");
}

async fn assert_nothing_published(broker: &TestBroker) {
    let published = broker.take_all(&broker.topology.queue).await;
    assert!(published.is_empty(), "{} published", published.len());
}

/// A real event padded with JSON whitespace to exactly the body limit.
fn largest_body() -> Vec<u8> {
    let mut body = fixture("user_created.json");
    body.resize(MAX_BODY, b' ');
    body
}

#[tokio::test]
async fn forty_thousand_empty_signatures_on_the_largest_body_are_refused_promptly() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker).await;
    let signature = vec!["v1,"; 40_000].join(" ");
    let now = chrono::Utc::now().timestamp().to_string();

    let started = Instant::now();
    let answer = post_raw(
        ingress.ingress_addr,
        "msg_flood",
        &now,
        &signature,
        largest_body(),
    )
    .await;
    let elapsed = started.elapsed();
    eprintln!("answered after {elapsed:?}");

    assert_refused(&answer, "invalid_header", "40,000 entries");
    // Before issue 12 each entry cost an HMAC of the whole body: seconds of CPU, even optimised.
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
    assert_nothing_published(&broker).await;
}

#[tokio::test]
async fn sixteen_signatures_are_read_and_seventeen_are_refused() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker).await;

    let seventeen = webhook_with("svix-signature", vec!["v1,AAAA"; 17].join(" "));
    let answer = seventeen.post(ingress.ingress_addr).await;
    assert_refused(&answer, "invalid_header", "17 entries");
    assert_nothing_published(&broker).await;

    let mut sixteen = Webhook::signed(SECRET, &fixture("user_created.json"));
    sixteen.signature = format!("{} {}", vec!["v1,AAAA"; 15].join(" "), sixteen.signature);
    let (status, body) = sixteen.post(ingress.ingress_addr).await;
    assert_eq!(status, 202, "16 entries, the last one valid: {body}");
    assert_eq!(broker.take_all(&broker.topology.queue).await.len(), 1);
}

#[tokio::test]
async fn a_five_kib_id_is_refused() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker).await;
    let answer = webhook_with("svix-id", "m".repeat(5 * 1024))
        .post(ingress.ingress_addr)
        .await;
    assert_refused(&answer, "invalid_header", "5 KiB id");
    assert_nothing_published(&broker).await;
}

#[tokio::test]
async fn timestamps_that_are_not_one_to_ten_digits_are_refused_and_zero_is_out_of_tolerance() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker).await;
    let body = fixture("user_created.json");
    let now = chrono::Utc::now().timestamp();
    let cases = [
        ("+1614265330".to_owned(), "invalid_header"),
        (format!("+{now}"), "invalid_header"),
        ("16142653300000".to_owned(), "invalid_header"),
        ("abc".to_owned(), "invalid_header"),
        (" ".to_owned(), "invalid_header"),
        ("0".to_owned(), "timestamp_out_of_tolerance"),
    ];
    for (timestamp, code) in cases {
        let signature = lenient_signature(&timestamp, &body);
        let answer = post_raw(
            ingress.ingress_addr,
            "msg_timestamp",
            &timestamp,
            &signature,
            body.clone(),
        )
        .await;
        assert_refused(&answer, code, &format!("timestamp {timestamp:?}"));
    }
    assert_nothing_published(&broker).await;
}

/// The signature a lenient parser (trimming, taking a sign) would have checked, so that only the
/// timestamp's form can be what is refused: `+{now}` used to pass.
fn lenient_signature(timestamp: &str, body: &[u8]) -> String {
    let seconds = timestamp.trim().parse().unwrap_or_default();
    worker::ingress::signature::sign(SECRET, "msg_timestamp", seconds, body)
        .expect("a valid test secret")
}
