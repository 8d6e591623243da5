//! The attacks a client without the signing key can make on the ingress's slots, each made to
//! happen against the real server: a flood of forged heads that never send their body, clients
//! that pipeline requests and never read the answers, sockets that never send a head, and
//! bodies that hold memory. Signed webhooks sent meanwhile must still get through, and a
//! connection that delivered verified webhooks must never be closed to make room.

use std::time::{Duration, Instant};

use integration_tests::broker::TestBroker;
use integration_tests::eventually;
use integration_tests::ingress::{self, in_process};
use integration_tests::ops::series;
use integration_tests::process::WorkerProcess;
use integration_tests::raw_http::{
    GENEROUS, NeverReading, error_code, exchange, forged_head, read_until_closed, read_whole,
    signed_request, status,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use worker::metrics;

const WORKER: &str = env!("CARGO_BIN_EXE_worker-under-test");

/// Sends a signed webhook on a new connection; its status and how long the answer took.
async fn deliver(addr: std::net::SocketAddr, user: &str) -> (u16, Duration) {
    let started = Instant::now();
    let response = exchange(addr, &signed_request(user)).await;
    (status(&response), started.elapsed())
}

/// Connections that each sent a forged head declaring a body, and no body.
async fn head_only(addr: std::net::SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.expect("connected");
        stream
            .write_all(forged_head(1_000).as_bytes())
            .await
            .expect("forged head sent");
        streams.push(stream);
    }
    streams
}

#[tokio::test]
async fn a_head_only_flood_does_not_keep_signed_webhooks_out() {
    let broker = TestBroker::new().await;
    // The defaults: 256 publishes in flight, 1,024 connections, a 5 s body timeout.
    let ingress = in_process(&broker, &[]).await;
    let addr = ingress.ingress_addr;
    let flood = head_only(addr, 256).await;
    assert_eq!(
        ingress
            .expect_metric(metrics::WEBHOOK_CONNECTIONS_OPEN)
            .await,
        256.0
    );

    for i in 0..5 {
        let (status, took) = deliver(addr, &format!("user_2flood{i}")).await;
        assert_eq!(status, 202, "a signed webhook during the flood");
        assert!(took < Duration::from_secs(1), "answered in {took:?}");
    }
    drop(flood);
    assert_eq!(broker.take_all(&broker.topology.queue).await.len(), 5);
}

#[tokio::test]
async fn never_reading_clients_at_the_connection_limit_are_closed_and_a_new_one_is_answered() {
    let broker = TestBroker::new().await;
    let ingress = in_process(
        &broker,
        &[
            ("INGRESS_MAX_CONNECTIONS", "4"),
            // Neither timer can close them here: the cap on untrusted requests (or, as its backup, the
            // write deadline) must.
            ("INGRESS_HEADER_TIMEOUT", "600s"),
            ("INGRESS_IDLE_TIMEOUT", "600s"),
        ],
    )
    .await;
    let addr = ingress.ingress_addr;
    let started = Instant::now();
    let mut stuck = Vec::new();
    for _ in 0..4 {
        stuck.push(NeverReading::connect(addr).await.expect("connected"));
    }
    let (status, took) = deliver(addr, "user_2newcomer").await;
    assert_eq!(status, 202, "a new connection is answered");
    assert!(took < GENEROUS, "{took:?}");

    eventually(
        "every never-reading client closed well within the write deadline",
        GENEROUS,
        || async { stuck.iter().all(NeverReading::closed) },
    )
    .await;
    eprintln!("all closed after {:?}", started.elapsed());
    eventually("their slots back", GENEROUS, || async {
        ingress.metric(metrics::WEBHOOK_CONNECTIONS_OPEN).await == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn head_less_sockets_at_the_limit_never_close_a_connection_that_delivered_verified_webhooks()
{
    let broker = TestBroker::new().await;
    let ingress = in_process(&broker, &[("INGRESS_MAX_CONNECTIONS", "8")]).await;
    let addr = ingress.ingress_addr;
    let mut svix = TcpStream::connect(addr).await.expect("connected");
    svix.write_all(&signed_request("user_2keptalive0"))
        .await
        .expect("sent");
    assert_eq!(status(&read_whole(&mut svix).await), 202);

    // About 200 head-less sockets a second, far more than the limit.
    let mut head_less = Vec::new();
    for _ in 0..100 {
        head_less.push(TcpStream::connect(addr).await.expect("connected"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually("the head-less sockets to churn", GENEROUS, || async {
        ingress
            .expect_metric(metrics::WEBHOOK_CONNECTIONS_WAITED)
            .await
            >= 90.0
    })
    .await;

    for i in 1..4 {
        svix.write_all(&signed_request(&format!("user_2keptalive{i}")))
            .await
            .expect("the kept-alive connection is still open");
        assert_eq!(status(&read_whole(&mut svix).await), 202);
    }
    let mut oldest = head_less.remove(0);
    assert_eq!(
        read_until_closed(&mut oldest, GENEROUS).await.as_deref(),
        Some(&b""[..]),
        "the oldest head-less socket was closed to make room"
    );
}

#[tokio::test]
async fn bodies_beyond_the_memory_budget_are_503_until_it_frees() {
    let broker = TestBroker::new().await;
    let ingress = in_process(
        &broker,
        &[
            ("INGRESS_MAX_BODY", "4096"),
            ("INGRESS_MAX_BODY_MEMORY", "4096"),
            ("INGRESS_BODY_TIMEOUT", "2s"),
        ],
    )
    .await;
    let addr = ingress.ingress_addr;
    let mut holder = TcpStream::connect(addr).await.expect("connected");
    holder
        .write_all(forged_head(4_000).as_bytes())
        .await
        .expect("head sent");
    holder
        .write_all(&[b'a'; 3_900])
        .await
        .expect("most of the body sent");
    let request = signed_request("user_2budget");
    assert!(
        request.len() > 196 + 300,
        "the signed body needs more than is left"
    );

    eventually("a body beyond the budget to be 503", GENEROUS, || async {
        let response = exchange(addr, &request).await;
        status(&response) == 503 && error_code(&response) == "body_memory_full"
    })
    .await;
    let held = read_until_closed(&mut holder, GENEROUS)
        .await
        .expect("the holder's body timed out");
    assert_eq!(status(&held), 408);
    assert_eq!(status(&exchange(addr, &request).await), 202, "memory back");
    assert!(
        ingress
            .expect_metric(&series(
                metrics::WEBHOOK_REFUSED,
                &[("reason", "body_memory_full")]
            ))
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn sigterm_during_the_attacks_exits_within_the_grace_period() {
    let broker = TestBroker::new().await;
    let env = ingress::env(
        &broker,
        &[
            ("SHUTDOWN_GRACE_PERIOD", "2s"),
            ("INGRESS_MAX_CONNECTIONS", "64"),
            ("INGRESS_HEADER_TIMEOUT", "600s"),
            ("INGRESS_IDLE_TIMEOUT", "600s"),
            ("INGRESS_BODY_TIMEOUT", "600s"),
            ("INGRESS_REQUEST_TIMEOUT", "600s"),
            ("INGRESS_WRITE_TIMEOUT", "600s"),
        ],
    );
    let mut process = WorkerProcess::spawn(WORKER, &["ingress"], &env).await;
    process.wait_ready(Duration::from_secs(30)).await;
    let addr = process.ingress_addr;
    let _heads = head_only(addr, 30).await;
    let mut _stuck = Vec::new();
    for _ in 0..4 {
        _stuck.push(NeverReading::connect(addr).await.expect("connected"));
    }
    let mut _head_less = Vec::new();
    for _ in 0..30 {
        _head_less.push(TcpStream::connect(addr).await.expect("connected"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    process.terminate();
    let exit = process.wait_exit(Duration::from_secs(2 + 5)).await;
    assert!(exit.success(), "{exit}");
    eprintln!("exited {:?} after SIGTERM", started.elapsed());
}

/// How many answers `bytes` holds.
fn answers(bytes: &[u8]) -> usize {
    String::from_utf8_lossy(bytes).matches("HTTP/1.1 ").count()
}

#[tokio::test]
async fn a_connection_without_a_verified_request_is_closed_after_its_ninth_answer() {
    let broker = TestBroker::new().await;
    let ingress = in_process(&broker, &[]).await;
    let addr = ingress.ingress_addr;
    let unsigned = integration_tests::raw_http::head(None, 0);

    let mut stranger = TcpStream::connect(addr).await.expect("connected");
    stranger
        .write_all(unsigned.repeat(12).as_bytes())
        .await
        .expect("pipelined");
    let got = read_until_closed(&mut stranger, GENEROUS)
        .await
        .expect("closed after the cap");
    assert_eq!(answers(&got), 9, "8 allowed, the 9th answered, then closed");
    assert!(String::from_utf8_lossy(&got).contains("connection: close"));

    // One verified webhook first, and the same requests are all answered on a kept connection.
    let mut svix = TcpStream::connect(addr).await.expect("connected");
    svix.write_all(&signed_request("user_2trustedcap"))
        .await
        .expect("sent");
    assert_eq!(status(&read_whole(&mut svix).await), 202);
    svix.write_all(unsigned.repeat(12).as_bytes())
        .await
        .expect("pipelined");
    let mut got = Vec::new();
    while answers(&got) < 12 {
        let more = read_whole(&mut svix).await;
        assert!(!more.is_empty(), "closed after {} answers", answers(&got));
        got.extend(more);
    }
    assert!(
        read_until_closed(&mut svix, Duration::from_millis(500))
            .await
            .is_none(),
        "a trusted connection stays open"
    );
}
