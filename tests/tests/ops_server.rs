//! The ops server (`/metrics`, `/healthz`, `/readyz`) is reachable by whoever reaches its port:
//! a client that half-sends a request head is closed within the head timeout, one that asks
//! and never reads the answers is closed after the write deadline, and neither holds up the
//! process's stop.

use std::time::{Duration, Instant};

use integration_tests::ops::series;
use integration_tests::raw_http::read_until_closed;
use integration_tests::stack::Stack;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use worker::metrics;
use worker::ops::LIMITS;

async fn half_sent_head(stack_addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(stack_addr).await.expect("connected");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: ops\r\n")
        .await
        .expect("half a head written");
    stream
}

#[tokio::test]
async fn healthz_answers_ok() {
    let stack = Stack::new().await;
    let app = stack.start(&["consume"], &[]).await;
    assert_eq!(app.get("/healthz").await, Some((200, "ok".to_owned())));
}

#[tokio::test]
async fn a_half_sent_head_is_closed_within_the_head_timeout() {
    let stack = Stack::new().await;
    let app = stack.start(&["consume"], &[]).await;
    let mut stuck = half_sent_head(app.ops_addr()).await;
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        LIMITS.header_timeout + Duration::from_secs(3),
        stuck.read_to_end(&mut rest),
    )
    .await;
    assert!(read.is_ok(), "still open after {:?}", started.elapsed());
    assert!(started.elapsed() >= LIMITS.header_timeout - Duration::from_millis(500));
    // The server is still there for everyone else.
    assert_eq!(app.get("/healthz").await, Some((200, "ok".to_owned())));
}

#[tokio::test]
async fn a_half_sent_head_does_not_hold_up_the_stop() {
    let stack = Stack::new().await;
    let mut app = stack
        .start(&["consume"], &[("SHUTDOWN_GRACE_PERIOD", "2s")])
        .await;
    let _stuck = half_sent_head(app.ops_addr()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    app.terminate();
    app.wait_stopped(Duration::from_secs(2 + 5))
        .await
        .expect("a graceful stop");
    assert!(asked.elapsed() < Duration::from_secs(2 + 5));
}

#[tokio::test]
async fn a_scraper_that_never_reads_is_closed_after_the_write_deadline() {
    let stack = Stack::new().await;
    let app = stack.start(&["consume"], &[]).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small window");
    let mut scraper = socket.connect(app.ops_addr()).await.expect("connected");
    // More answers than the kernel will hold for a peer that reads nothing.
    let scrape = b"GET /metrics HTTP/1.1\r\nHost: ops\r\n\r\n".repeat(12);
    scraper.write_all(&scrape).await.expect("requests sent");
    tokio::time::sleep(LIMITS.write_timeout + Duration::from_secs(2)).await;
    // Open, it would hand over every answer and then wait for the next request.
    let answers = read_until_closed(&mut scraper, Duration::from_secs(5)).await;
    assert!(answers.is_some(), "still open after the write deadline");
    assert_eq!(app.get("/healthz").await, Some((200, "ok".to_owned())));
}

#[tokio::test]
async fn the_first_scrape_shows_every_counter_that_can_stay_at_zero() {
    let stack = Stack::new().await;
    let app = stack.start(&["consume"], &[]).await;
    let page = app.metrics().await;
    let mut expected = vec![
        format!("{} 0", metrics::WORKSPACE_CREATED),
        format!("{} 0", metrics::USERNAMES_REASSIGNED),
        format!("{} 0", metrics::WEBHOOK_CONNECTIONS_WAITED),
        metrics::CONSUMER_CONNECTED.to_owned(),
        format!("{} 0", metrics::DELIVERIES_IN_FLIGHT),
        format!("{} 0", metrics::WEBHOOK_CONNECTIONS_OPEN),
    ];
    for reason in worker::error::FailureReason::ALL {
        let failed = series(metrics::WORKSPACE_FAILED, &[("reason", reason.as_str())]);
        expected.push(format!("{failed} 0"));
    }
    for reason in worker::error::ProvisionError::RETRY_REASONS {
        let retried = series(metrics::EVENTS_RETRIED, &[("reason", reason.as_str())]);
        expected.push(format!("{retried} 0"));
    }
    for series in expected {
        assert!(
            page.lines().any(|line| line.starts_with(&series)),
            "{series} missing from the first scrape:\n{page}"
        );
    }
}
