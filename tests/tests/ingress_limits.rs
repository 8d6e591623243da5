//! The ingress under hostile traffic: every limit made to fail on purpose. Slow and partial
//! requests are written by hand on raw TCP; the application runs in this process with short
//! configured limits, or as a process where SIGTERM and the exit status are the point. Timing
//! bounds are generous (several times the configured limit): the machine is shared and noisy.

use std::time::{Duration, Instant};

use integration_tests::app::TestApp;
use integration_tests::broker::{TestBroker, amqp_url};
use integration_tests::clerk::UserEvent;
use integration_tests::eventually;
use integration_tests::process::WorkerProcess;
use integration_tests::webhook::{SECRET, Webhook};
use lapin::BasicProperties;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use worker::broker::{self, PublishError};
use worker::config::BrokerSettings;
use worker::topology::Topology;

const WORKER: &str = env!("CARGO_BIN_EXE_worker-under-test");

/// How long any closing or answering may take here, whatever the configured limit (1 s or 2 s).
const GENEROUS: Duration = Duration::from_secs(10);

fn env(broker: &TestBroker, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = broker.env();
    env.push(("CLERK_WEBHOOK_SECRET", SECRET.to_owned()));
    env.extend(extra.iter().map(|(key, value)| (*key, (*value).to_owned())));
    env
}

/// `worker ingress` in this process with `extra` settings, connected to the broker.
async fn ingress(broker: &TestBroker, extra: &[(&'static str, &str)]) -> TestApp {
    let app = TestApp::spawn(&["ingress"], &env(broker, extra)).await;
    app.wait_ready(Duration::from_secs(30)).await;
    app
}

/// `worker ingress` as a process with `extra` settings, connected to the broker.
async fn ingress_process(broker: &TestBroker, extra: &[(&'static str, &str)]) -> WorkerProcess {
    let mut process = WorkerProcess::spawn(WORKER, &["ingress"], &env(broker, extra)).await;
    process.wait_ready(Duration::from_secs(30)).await;
    process
}

fn user_created(id: &str) -> Vec<u8> {
    UserEvent::created(id, &format!("{id}@example.com"), None).body()
}

/// A request head for `POST /webhooks/clerk` declaring `content_length`, with the Svix headers
/// of `signed` when given.
fn head(signed: Option<&Webhook>, content_length: usize) -> String {
    let mut head = format!(
        "POST /webhooks/clerk HTTP/1.1\r\nhost: ingress\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n"
    );
    if let Some(webhook) = signed {
        head.push_str(&format!(
            "svix-id: {}\r\nsvix-timestamp: {}\r\nsvix-signature: {}\r\n",
            webhook.id, webhook.timestamp, webhook.signature
        ));
    }
    head.push_str("\r\n");
    head
}

/// A connection that has sent a signed head and the first half of the body, and stops there.
async fn half_sent(addr: std::net::SocketAddr, webhook: &Webhook) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connected");
    let half = webhook.body.len() / 2;
    stream
        .write_all(head(Some(webhook), webhook.body.len()).as_bytes())
        .await
        .expect("head sent");
    stream
        .write_all(&webhook.body[..half])
        .await
        .expect("half the body sent");
    stream
}

/// Everything the server sends until it closes the connection; `None` if it is still open
/// after `within`. A reset counts as closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let reading = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(within, reading).await.ok()?;
    Some(received)
}

/// The status, the body so far and the declared length of a response, once its head is in.
fn parse_response(bytes: &[u8]) -> Option<(u16, String, usize)> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    Some((status(bytes), body.to_owned(), length))
}

/// The status code of a raw response, 0 if there is none.
fn status(response: &[u8]) -> u16 {
    String::from_utf8_lossy(response)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The `error` code of a raw response's JSON body.
fn error_code(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str::<serde_json::Value>(body).map_or_else(
        |_| format!("<not JSON: {body}>"),
        |json| json["error"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The raw response on `stream`, read until it is whole (its declared length) or the server
/// closed the connection.
async fn read_whole(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while parse_response(&received).is_none_or(|(_, body, length)| body.len() < length) {
        let read = tokio::time::timeout(GENEROUS, stream.read(&mut buffer))
            .await
            .expect("an answer in time");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    received
}

/// Sends a request on a new connection and returns the raw response.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connected");
    stream.write_all(request).await.expect("request sent");
    read_whole(&mut stream).await
}

#[tokio::test]
async fn a_request_head_over_the_limit_is_431_from_the_server_and_counted() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, &[]).await;
    let webhook = Webhook::signed(SECRET, &user_created("user_2bighead"));
    // The default INGRESS_MAX_HEAD is 16 KiB; one header alone is 17 KiB here.
    let padding = "a".repeat(17 * 1024);
    let oversized = head(Some(&webhook), webhook.body.len()).replacen(
        "\r\n\r\n",
        &format!("\r\nx-padding: {padding}\r\n\r\n"),
        1,
    );
    let mut stream = TcpStream::connect(ingress.ingress_addr).await.unwrap();
    stream.write_all(oversized.as_bytes()).await.unwrap();
    let response = read_until_closed(&mut stream, GENEROUS)
        .await
        .expect("answered and closed");
    assert_eq!(status(&response), 431, "{response:?}");
    eventually("the 431 to be counted", GENEROUS, || async {
        ingress
            .metric(r#"webhook_requests_total{status="431",type="unknown"}"#)
            .await
            == 1.0
    })
    .await;
    assert!(broker.take_all(&broker.topology.queue).await.is_empty());
}

#[tokio::test]
async fn a_head_that_trickles_in_is_closed_after_the_header_timeout() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, &[("INGRESS_HEADER_TIMEOUT", "1s")]).await;
    let stream = TcpStream::connect(ingress.ingress_addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // Slowloris: a byte every 100 ms keeps the connection busy, never finishes the head.
    let trickle = tokio::spawn(async move {
        let mut sent = writer
            .write_all(b"POST /webhooks/clerk HTTP/1.1\r\nx-slow: ")
            .await;
        while sent.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sent = writer.write_all(b"a").await;
        }
    });
    let started = Instant::now();
    let closed = tokio::time::timeout(GENEROUS, async {
        let mut buffer = [0u8; 1024];
        while matches!(reader.read(&mut buffer).await, Ok(n) if n > 0) {}
    })
    .await;
    trickle.abort();
    assert!(
        closed.is_ok(),
        "a trickling head still open after {GENEROUS:?}"
    );
    eprintln!("closed after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_body_that_trickles_in_is_408_and_the_connection_closed() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, &[("INGRESS_BODY_TIMEOUT", "1s")]).await;
    let webhook = Webhook::signed(SECRET, &user_created("user_2slowbody"));
    let mut stream = half_sent(ingress.ingress_addr, &webhook).await;
    let response = read_until_closed(&mut stream, GENEROUS)
        .await
        .expect("closed in time");
    assert_eq!(status(&response), 408, "{response:?}");
    assert_eq!(error_code(&response), "body_timeout");
    assert!(broker.take_all(&broker.topology.queue).await.is_empty());
}

#[tokio::test]
async fn a_request_past_its_deadline_is_503_request_timeout() {
    let broker = TestBroker::new().await;
    let ingress = ingress(
        &broker,
        &[
            ("INGRESS_REQUEST_TIMEOUT", "1s"),
            ("INGRESS_BODY_TIMEOUT", "60s"),
        ],
    )
    .await;
    let webhook = Webhook::signed(SECRET, &user_created("user_2deadline"));
    let mut stream = half_sent(ingress.ingress_addr, &webhook).await;
    let response = read_until_closed(&mut stream, GENEROUS)
        .await
        .expect("closed in time");
    assert_eq!(status(&response), 503, "{response:?}");
    assert_eq!(error_code(&response), "request_timeout");
}

#[tokio::test]
async fn unsigned_stale_or_oversized_requests_are_refused_before_their_body_is_sent() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, &[]).await;
    let addr = ingress.ingress_addr;
    let declared = 10_000_000;
    let stale = Webhook::signed_at(
        SECRET,
        &user_created("user_2stale"),
        "msg_stale",
        chrono::Utc::now().timestamp() - 3600,
    );
    let signed = Webhook::signed(SECRET, &user_created("user_2huge"));
    let cases = [
        (head(None, declared), 401, "missing_header"),
        (
            head(Some(&stale), declared),
            401,
            "timestamp_out_of_tolerance",
        ),
        (head(Some(&signed), declared), 413, "body_too_large"),
    ];
    for (request, expected_status, expected_code) in cases {
        // Only the head is sent: an answer means the body was never waited for.
        let response = exchange(addr, request.as_bytes()).await;
        assert_eq!(status(&response), expected_status, "{response:?}");
        assert_eq!(error_code(&response), expected_code);
    }
}

#[tokio::test]
async fn requests_beyond_the_concurrency_limit_are_503_at_once_and_counted() {
    let broker = TestBroker::new().await;
    let ingress = ingress(
        &broker,
        &[
            ("INGRESS_MAX_CONCURRENCY", "2"),
            ("INGRESS_BODY_TIMEOUT", "60s"),
            ("INGRESS_REQUEST_TIMEOUT", "60s"),
        ],
    )
    .await;
    let addr = ingress.ingress_addr;
    let mut held = Vec::new();
    for i in 0..2 {
        let webhook = Webhook::signed(SECRET, &user_created(&format!("user_2held{i}")));
        held.push(half_sent(addr, &webhook).await);
    }
    // The one more: unsigned, so with a free slot it would be a quick 401.
    let probe = head(None, 0);
    eventually("a request beyond the limit to be 503", GENEROUS, || async {
        let response = exchange(addr, probe.as_bytes()).await;
        status(&response) == 503 && error_code(&response) == "overloaded"
    })
    .await;
    assert!(
        ingress
            .metric(r#"webhook_requests_total{status="503",type="unknown"}"#)
            .await
            >= 1.0
    );

    drop(held);
    eventually(
        "slots free once the held requests end",
        GENEROUS,
        || async { status(&exchange(addr, probe.as_bytes()).await) == 401 },
    )
    .await;
}

/// A connection kept alive after one answered request (405: nothing published).
async fn kept_alive(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connected");
    stream
        .write_all(b"GET /webhooks/clerk HTTP/1.1\r\nhost: ingress\r\n\r\n")
        .await
        .expect("request sent");
    assert_eq!(status(&read_whole(&mut stream).await), 405);
    stream
}

#[tokio::test]
async fn at_the_connection_limit_idle_connections_close_to_let_a_new_one_in() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, &[("INGRESS_MAX_CONNECTIONS", "2")]).await;
    let addr = ingress.ingress_addr;
    let mut idle = vec![kept_alive(addr).await, kept_alive(addr).await];
    assert_eq!(ingress.metric("webhook_connections_open").await, 2.0);

    let response = exchange(addr, head(None, 0).as_bytes()).await;
    assert_eq!(status(&response), 401, "the third connection is answered");
    for stream in &mut idle {
        let rest = read_until_closed(stream, GENEROUS).await;
        assert_eq!(rest.as_deref(), Some(&b""[..]), "an idle one was closed");
    }
    assert_eq!(
        ingress.metric("webhook_connections_waited_total").await,
        1.0
    );
    eventually("the open count to come down", GENEROUS, || async {
        ingress.metric("webhook_connections_open").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn at_the_connection_limit_a_new_one_waits_for_the_request_in_progress() {
    let broker = TestBroker::new().await;
    let ingress = ingress(
        &broker,
        &[
            ("INGRESS_MAX_CONNECTIONS", "1"),
            ("INGRESS_BODY_TIMEOUT", "60s"),
        ],
    )
    .await;
    let addr = ingress.ingress_addr;
    let webhook = Webhook::signed(SECRET, &user_created("user_2inprogress"));
    let mut in_progress = half_sent(addr, &webhook).await;

    let mut waiting = TcpStream::connect(addr).await.expect("connected");
    waiting
        .write_all(head(None, 0).as_bytes())
        .await
        .expect("request sent");
    let mut buffer = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_secs(1), waiting.read(&mut buffer)).await;
    assert!(
        early.is_err(),
        "answered while the limit was held: {early:?}"
    );

    let half = webhook.body.len() / 2;
    in_progress
        .write_all(&webhook.body[half..])
        .await
        .expect("the rest of the body sent");
    let answered = read_until_closed(&mut in_progress, GENEROUS)
        .await
        .expect("the request in progress is answered, then its connection closed");
    assert_eq!(status(&answered), 202);
    assert_eq!(status(&read_whole(&mut waiting).await), 401);
}

#[tokio::test]
async fn a_stop_while_a_connection_waits_for_a_slot_closes_it_and_drains_as_usual() {
    let broker = TestBroker::new().await;
    let mut ingress = ingress(
        &broker,
        &[
            ("INGRESS_MAX_CONNECTIONS", "1"),
            ("INGRESS_BODY_TIMEOUT", "60s"),
            ("SHUTDOWN_GRACE_PERIOD", "1s"),
        ],
    )
    .await;
    let addr = ingress.ingress_addr;
    let webhook = Webhook::signed(SECRET, &user_created("user_2holdsthelimit"));
    let _in_progress = half_sent(addr, &webhook).await;
    let mut waiting = TcpStream::connect(addr).await.expect("connected");
    waiting
        .write_all(head(None, 0).as_bytes())
        .await
        .expect("request sent");
    eventually(
        "the new connection to wait for a slot",
        GENEROUS,
        || async { ingress.metric("webhook_connections_waited_total").await == 1.0 },
    )
    .await;

    ingress.terminate();
    ingress
        .wait_stopped(GENEROUS)
        .await
        .expect("stopped cleanly within the grace period");
    let rest = read_until_closed(&mut waiting, GENEROUS).await;
    assert_eq!(rest.as_deref(), Some(&b""[..]), "closed without an answer");
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let broker = TestBroker::new().await;
    let ingress = ingress(
        &broker,
        &[
            ("INGRESS_IDLE_TIMEOUT", "1s"),
            ("INGRESS_HEADER_TIMEOUT", "1s"),
        ],
    )
    .await;
    let mut stream = TcpStream::connect(ingress.ingress_addr).await.unwrap();
    // Any complete request makes the connection a kept-alive one.
    stream
        .write_all(b"GET /webhooks/clerk HTTP/1.1\r\nhost: ingress\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status(&read_whole(&mut stream).await), 405);
    let rest = read_until_closed(&mut stream, GENEROUS).await;
    assert_eq!(
        rest.as_deref(),
        Some(&b""[..]),
        "closed without another word"
    );
}

#[tokio::test]
async fn on_stop_connections_without_a_complete_head_close_at_once() {
    let broker = TestBroker::new().await;
    // Grace and head timeout far beyond the bound below: only the stop itself can close these.
    let mut ingress = ingress(
        &broker,
        &[
            ("SHUTDOWN_GRACE_PERIOD", "120s"),
            ("INGRESS_HEADER_TIMEOUT", "120s"),
            ("INGRESS_IDLE_TIMEOUT", "120s"),
        ],
    )
    .await;
    let mut partial = TcpStream::connect(ingress.ingress_addr).await.unwrap();
    partial
        .write_all(b"POST /webhooks/clerk HTTP/1.1\r\nhost: ingr")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(ingress.ingress_addr).await.unwrap();
    let mut kept_alive = TcpStream::connect(ingress.ingress_addr).await.unwrap();
    kept_alive
        .write_all(b"GET /webhooks/clerk HTTP/1.1\r\nhost: ingress\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status(&read_whole(&mut kept_alive).await), 405);
    tokio::time::sleep(Duration::from_millis(200)).await;

    ingress.terminate();
    for (name, stream) in [
        ("partial head", &mut partial),
        ("nothing sent", &mut silent),
        ("kept alive", &mut kept_alive),
    ] {
        let rest = read_until_closed(stream, GENEROUS).await;
        assert!(rest.is_some(), "{name}: still open after {GENEROUS:?}");
    }
    let stopped = ingress.wait_stopped(GENEROUS).await;
    assert!(stopped.is_ok(), "{stopped:?}");
}

#[tokio::test]
async fn sigterm_with_a_half_open_connection_exits_zero_within_the_grace_period() {
    let broker = TestBroker::new().await;
    let mut ingress = ingress_process(
        &broker,
        &[
            ("SHUTDOWN_GRACE_PERIOD", "2s"),
            ("INGRESS_HEADER_TIMEOUT", "120s"),
        ],
    )
    .await;
    // Half-open: a head begun and never finished, and a connection that never said a word.
    let mut partial = TcpStream::connect(ingress.ingress_addr).await.unwrap();
    partial
        .write_all(b"POST /webhooks/clerk HTTP/1.1\r\nhost: ingr")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(ingress.ingress_addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    ingress.terminate();
    let status = ingress.wait_exit(GENEROUS).await;
    assert!(status.success(), "{status}");
    for stream in [&mut partial, &mut silent] {
        assert!(read_until_closed(stream, GENEROUS).await.is_some());
    }
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_and_closes_a_stalled_one_after_the_grace_period()
{
    let broker = TestBroker::new().await;
    let mut ingress = ingress_process(
        &broker,
        &[
            ("SHUTDOWN_GRACE_PERIOD", "2s"),
            ("INGRESS_BODY_TIMEOUT", "120s"),
            ("INGRESS_REQUEST_TIMEOUT", "120s"),
        ],
    )
    .await;
    let finishing = Webhook::signed(SECRET, &user_created("user_2finishing"));
    let stalled = Webhook::signed(SECRET, &user_created("user_2stalled"));
    let mut finishing_stream = half_sent(ingress.ingress_addr, &finishing).await;
    let mut stalled_stream = half_sent(ingress.ingress_addr, &stalled).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    ingress.terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let half = finishing.body.len() / 2;
    finishing_stream
        .write_all(&finishing.body[half..])
        .await
        .unwrap();
    let answered = read_until_closed(&mut finishing_stream, GENEROUS)
        .await
        .expect("answered and closed");
    assert_eq!(status(&answered), 202, "{answered:?}");

    let status = ingress.wait_exit(GENEROUS).await;
    assert!(status.success(), "{status}");
    let stalled_answer = read_until_closed(&mut stalled_stream, GENEROUS).await;
    assert!(stalled_answer.is_some(), "the stalled connection is closed");
    let queued = broker.take_all(&broker.topology.queue).await;
    assert_eq!(queued.len(), 1, "only the finished request was published");
    assert_eq!(queued[0].message_id.as_deref(), Some(finishing.id.as_str()));
}

#[tokio::test]
async fn a_channel_not_in_confirm_mode_is_a_publish_error_not_a_confirm() {
    let settings =
        BrokerSettings::with_prefix(amqp_url(), format!("it-{}.", uuid::Uuid::new_v4().simple()));
    let topology = Topology::from_settings(&settings);
    let connection = broker::connect(&settings, "test").await.expect("connected");
    let plain = connection.create_channel().await.expect("a channel");
    broker::declare(&plain, &topology).await.expect("declared");
    let published = broker::publish_confirmed(
        &plain,
        &topology.exchange,
        "user.created",
        b"{}",
        BasicProperties::default(),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        matches!(published, Err(PublishError::NotConfirmMode)),
        "{published:?}"
    );
    for queue in [&topology.queue, &topology.dead_letter_queue] {
        let _ = plain
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    for exchange in [&topology.exchange, &topology.dead_letter_exchange] {
        let _ = plain
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}
