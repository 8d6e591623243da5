//! The ingress under hostile traffic: every limit made to fail on purpose. Slow and partial
//! requests are written by hand on raw TCP; the application runs in this process with short
//! configured limits, or as a process where SIGTERM and the exit status are the point. Timing
//! bounds are generous (several times the configured limit): the machine is shared and noisy.

use std::time::{Duration, Instant};

use integration_tests::app::TestApp;
use integration_tests::broker::{TestBroker, amqp_url};
use integration_tests::clerk::UserEvent;
use integration_tests::eventually;
use integration_tests::ops::series;
use integration_tests::process::WorkerProcess;
use integration_tests::proxy::CuttableProxy;
use integration_tests::raw_http::{
    GENEROUS, error_code, exchange, half_sent, head, read_until_closed, read_whole, signed_request,
    status,
};
use integration_tests::webhook::{SECRET, Webhook};
use lapin::BasicProperties;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use worker::broker::{self, PublishError};
use worker::config::BrokerSettings;
use worker::metrics;
use worker::topology::Topology;

const WORKER: &str = env!("CARGO_BIN_EXE_worker-under-test");

async fn ingress(broker: &TestBroker, extra: &[(&'static str, &str)]) -> TestApp {
    integration_tests::ingress::in_process(broker, extra).await
}

async fn ingress_process(broker: &TestBroker, extra: &[(&'static str, &str)]) -> WorkerProcess {
    integration_tests::ingress::as_process(WORKER, broker, extra).await
}

fn user_created(id: &str) -> Vec<u8> {
    UserEvent::created(id, &format!("{id}@example.com"), None).body()
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
            .metric(&series(
                metrics::WEBHOOK_REQUESTS,
                &[("status", "431"), ("type", "unknown")],
            ))
            .await
            == Some(1.0)
    })
    .await;
    assert_eq!(
        ingress
            .expect_metric(&series(
                metrics::WEBHOOK_REFUSED,
                &[("reason", "head_too_large")]
            ))
            .await,
        1.0
    );
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
        let counted = series(metrics::WEBHOOK_REFUSED, &[("reason", expected_code)]);
        assert_eq!(ingress.expect_metric(&counted).await, 1.0, "{counted}");
    }
}

/// `worker ingress` reaching the broker through `proxy`, which the test can stall so that
/// publishes wait for confirms that do not come.
async fn ingress_through(
    proxy: &CuttableProxy,
    broker: &TestBroker,
    extra: &[(&'static str, &str)],
) -> TestApp {
    let mut env = integration_tests::ingress::env(broker, extra);
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    env.retain(|(key, _)| *key != "AMQP_URL");
    env.push(("AMQP_URL", url));
    let app = TestApp::spawn(&["ingress"], &env).await;
    app.wait_ready(Duration::from_secs(30)).await;
    app
}

#[tokio::test]
async fn publishes_beyond_the_concurrency_limit_are_503_at_once_and_only_verified_requests_take_one()
 {
    let broker = TestBroker::new().await;
    let proxy = CuttableProxy::start(integration_tests::broker::amqp_addr()).await;
    let ingress = ingress_through(
        &proxy,
        &broker,
        &[
            ("INGRESS_MAX_CONCURRENCY", "1"),
            ("PUBLISH_TIMEOUT", "60s"),
            ("INGRESS_REQUEST_TIMEOUT", "60s"),
            ("INGRESS_BODY_TIMEOUT", "60s"),
        ],
    )
    .await;
    let addr = ingress.ingress_addr;
    // Unverified requests in progress hold no publish slot: two half-sent bodies...
    let held = [
        half_sent(addr, &Webhook::signed(SECRET, &user_created("user_2held0"))).await,
        half_sent(addr, &Webhook::signed(SECRET, &user_created("user_2held1"))).await,
    ];
    // ...and a verified one whose confirm does not come holds the only one.
    proxy.stall();
    let first = signed_request("user_2first");
    let waiting = tokio::spawn(async move { exchange(addr, &first).await });
    let second_request = signed_request("user_2second");
    // No figure shows the first one's publish in flight; it only needs to be verified and sent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let response = exchange(addr, &second_request).await;
    assert_eq!(
        status(&response),
        503,
        "a verified request beyond the limit"
    );
    assert_eq!(error_code(&response), "overloaded");
    let unsigned = exchange(addr, head(None, 0).as_bytes()).await;
    assert_eq!(
        status(&unsigned),
        401,
        "an unverified request needs no slot"
    );
    assert!(
        ingress
            .expect_metric(&series(
                metrics::WEBHOOK_REFUSED,
                &[("reason", "overloaded")]
            ))
            .await
            >= 1.0
    );

    proxy.resume();
    let answered = tokio::time::timeout(GENEROUS, waiting)
        .await
        .expect("the stalled publish confirmed once the broker answers")
        .expect("joined");
    assert_eq!(status(&answered), 202);
    assert_eq!(
        status(&exchange(addr, &second_request).await),
        202,
        "the slot is back"
    );
    drop(held);
}

/// A connection kept alive after one answered request (405: nothing published, nothing
/// verified).
async fn kept_alive(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connected");
    stream
        .write_all(b"GET /webhooks/clerk HTTP/1.1\r\nhost: ingress\r\n\r\n")
        .await
        .expect("request sent");
    assert_eq!(status(&read_whole(&mut stream).await), 405);
    stream
}

/// A connection kept alive after delivering a verified webhook (202): a trusted one.
async fn trusted(addr: std::net::SocketAddr, user: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connected");
    deliver(&mut stream, user).await;
    stream
}

/// Sends a signed webhook for `user` on `stream` and expects 202.
async fn deliver(stream: &mut TcpStream, user: &str) {
    stream
        .write_all(&signed_request(user))
        .await
        .expect("request sent");
    assert_eq!(status(&read_whole(stream).await), 202);
}

#[tokio::test]
async fn at_the_connection_limit_the_oldest_untrusted_connection_closes_to_let_a_new_one_in() {
    let broker = TestBroker::new().await;
    let ingress = ingress(&broker, &[("INGRESS_MAX_CONNECTIONS", "2")]).await;
    let addr = ingress.ingress_addr;
    let mut oldest = kept_alive(addr).await;
    let mut younger = kept_alive(addr).await;
    assert_eq!(
        ingress
            .expect_metric(metrics::WEBHOOK_CONNECTIONS_OPEN)
            .await,
        2.0
    );

    let response = exchange(addr, head(None, 0).as_bytes()).await;
    assert_eq!(status(&response), 401, "the third connection is answered");
    let rest = read_until_closed(&mut oldest, GENEROUS).await;
    assert_eq!(rest.as_deref(), Some(&b""[..]), "the oldest was closed");
    assert!(
        read_until_closed(&mut younger, Duration::from_millis(500))
            .await
            .is_none(),
        "one eviction per newcomer: the younger one stays"
    );
    assert_eq!(
        ingress
            .expect_metric(metrics::WEBHOOK_CONNECTIONS_WAITED)
            .await,
        1.0
    );
}

#[tokio::test]
async fn at_the_connection_limit_a_trusted_connection_is_never_closed_for_a_newcomer() {
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
    let mut svix = trusted(addr, "user_2trusted0").await;
    let webhook = Webhook::signed(SECRET, &user_created("user_2trusted1"));
    let half = webhook.body.len() / 2;
    svix.write_all(head(Some(&webhook), webhook.body.len()).as_bytes())
        .await
        .expect("head sent");
    svix.write_all(&webhook.body[..half])
        .await
        .expect("half sent");

    let mut newcomer = TcpStream::connect(addr).await.expect("connected");
    newcomer
        .write_all(head(None, 0).as_bytes())
        .await
        .expect("request sent");
    let mut buffer = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_secs(1), newcomer.read(&mut buffer)).await;
    assert!(
        early.is_err(),
        "answered while the limit was held: {early:?}"
    );

    svix.write_all(&webhook.body[half..])
        .await
        .expect("rest sent");
    assert_eq!(status(&read_whole(&mut svix).await), 202);
    deliver(&mut svix, "user_2trusted2").await;
    let early = tokio::time::timeout(Duration::from_secs(1), newcomer.read(&mut buffer)).await;
    assert!(
        early.is_err(),
        "the trusted connection stays open: {early:?}"
    );

    drop(svix);
    assert_eq!(
        status(&read_whole(&mut newcomer).await),
        401,
        "in once it closed"
    );
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
    let mut holder = trusted(addr, "user_2holdsthelimit").await;
    let webhook = Webhook::signed(SECRET, &user_created("user_2holdsthelimit"));
    holder
        .write_all(head(Some(&webhook), webhook.body.len()).as_bytes())
        .await
        .expect("a second request's head sent");
    let mut waiting = TcpStream::connect(addr).await.expect("connected");
    waiting
        .write_all(head(None, 0).as_bytes())
        .await
        .expect("request sent");
    eventually(
        "the new connection to wait for a slot",
        GENEROUS,
        || async {
            ingress
                .expect_metric(metrics::WEBHOOK_CONNECTIONS_WAITED)
                .await
                == 1.0
        },
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
