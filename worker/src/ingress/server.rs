//! The ingress's HTTP/1.1 server: hyper's connection builder driven by hand, because
//! `axum::serve` cannot bound how long a request head may take, nor how big it may be.
//!
//! Svix gives a delivery 15 s and retries for about a day, so a refused or slow request loses
//! nothing; a server stalled by a few hostile connections loses everything. Hence:
//! - a head over `max_head` is answered 431 by hyper itself (counted here, where it is seen);
//! - a new connection must send a complete head within `header_timeout`, or it is closed;
//! - after a response, a kept-alive connection must send its next complete head within the
//!   larger of `idle_timeout` and `header_timeout`. Hyper 1.x starts its header-read timer as
//!   soon as a connection goes idle (`State::idle` in `proto/h1/conn.rs`), so one timer bounds
//!   the idle wait and the next head together; it is set to that larger value, and the first
//!   head's own, usually shorter, limit is enforced here.
//!
//! On shutdown the listener closes, connections that never sent a complete head close at once,
//! the others finish their request (hyper's graceful shutdown: no keep-alive, idle ones close at
//! once), and whatever is left after `grace_period` is closed. hyper-util's `GracefulShutdown`
//! can only do the middle part, so a [`TaskTracker`] and one `select!` per connection do it all.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// After an accept error that is not about one connection (out of file descriptors), wait this
/// long before accepting again rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The connection-level limits (`INGRESS_*` settings and `SHUTDOWN_GRACE_PERIOD`).
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Largest request head in bytes; larger is answered 431.
    pub max_head: usize,
    /// How long a new connection gets to send its first complete head.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next complete head.
    pub idle_timeout: Duration,
    /// On shutdown, how long requests in progress get before their connections are closed.
    pub grace_period: Duration,
}

/// What every connection task shares.
struct Shared {
    builder: http1::Builder,
    router: Router,
    metrics: Metrics,
    header_timeout: Duration,
    /// Cancelled when the server starts to stop.
    stopping: CancellationToken,
    /// Cancelled when the grace period is over: every connection left closes.
    force_close: CancellationToken,
}

/// Serves `router` on `listener` until `shutdown`, then drains as the module says.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        builder: builder(&limits),
        router,
        metrics,
        header_timeout: limits.header_timeout,
        stopping: shutdown,
        force_close: CancellationToken::new(),
    });
    let connections = TaskTracker::new();
    while let Some(stream) = accept(&listener, &shared.stopping).await {
        connections.spawn(serve_connection(stream, shared.clone()));
    }
    drop(listener);
    drain(&connections, limits.grace_period, &shared.force_close).await;
}

/// HTTP/1.1 with keep-alive, hyper's 431 over `max_head`, and its header-read timer.
fn builder(limits: &ServerLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_header_size(limits.max_head)
        .header_read_timeout(limits.idle_timeout.max(limits.header_timeout));
    builder
}

/// The next connection, or `None` once `stop` is cancelled. Accept errors are logged, never
/// fatal: a full file-descriptor table empties again.
async fn accept(listener: &TcpListener, stop: &CancellationToken) -> Option<TcpStream> {
    loop {
        let err = tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => return Some(stream),
                Err(err) => err,
            },
        };
        if is_connection_error(&err) {
            continue;
        }
        warn!(error = %err, "accepting an ingress connection failed; retrying");
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
        }
    }
}

/// Errors about the one connection being accepted, not about the listener.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Waits for the connections to finish, for at most `grace`; then closes the rest.
async fn drain(connections: &TaskTracker, grace: Duration, force_close: &CancellationToken) {
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        warn!(
            grace_ms = grace.as_millis() as u64,
            open = connections.len(),
            "grace period over; closing the ingress connections left"
        );
        force_close.cancel();
        connections.wait().await;
    }
}

/// One connection, from accept to close (dropping the hyper connection closes the socket).
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let accepted = Instant::now();
    // Small JSON answers: do not let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    let head_seen = Arc::new(AtomicBool::new(false));
    let service = marking_service(shared.router.clone(), head_seen.clone());
    let connection = shared
        .builder
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => return shared.ended(ended, accepted),
        () = first_head_overdue(shared.header_timeout, &head_seen) => {
            debug!("no complete request head in time; connection closed");
            return;
        }
        () = shared.stopping.cancelled() => {}
    }
    if !head_seen.load(Ordering::Acquire) {
        // Nothing was asked, so nothing is owed: close at once.
        return;
    }
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        ended = connection.as_mut() => shared.ended(ended, accepted),
        () = shared.force_close.cancelled() => {}
    }
}

/// The router, marking `head_seen` when hyper hands it a request (its head is complete).
fn marking_service(
    router: Router,
    head_seen: Arc<AtomicBool>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future: Send,
> {
    hyper::service::service_fn(move |request: Request<Incoming>| {
        head_seen.store(true, Ordering::Release);
        router.clone().oneshot(request.map(Body::new))
    })
}

/// Resolves when `timeout` has passed without a complete head; never once one came.
async fn first_head_overdue(timeout: Duration, head_seen: &AtomicBool) {
    tokio::time::sleep(timeout).await;
    if head_seen.load(Ordering::Acquire) {
        std::future::pending::<()>().await;
    }
}

impl Shared {
    /// How a connection ended: a 431 hyper answered is counted like any webhook answer.
    fn ended(&self, ended: hyper::Result<()>, accepted: Instant) {
        match ended {
            Ok(()) => {}
            Err(err) if err.is_parse_too_large() => {
                info!("request head too large; answered 431");
                self.metrics.record_webhook(431, None, accepted.elapsed());
            }
            Err(err) if err.is_timeout() => {
                debug!("request head not complete in time; connection closed");
            }
            Err(err) => debug!(error = %err, "ingress connection ended with an error"),
        }
    }
}
