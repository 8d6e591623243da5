//! The HTTP/1.1 server of the ingress and of the ops server: hyper's connection builder driven
//! by hand, because `axum::serve` cannot bound how long a request head may take, nor how big it
//! may be, nor how long writing an answer or its graceful shutdown may take.
//!
//! Svix gives a delivery 15 s and retries for about a day, so a refused or slow request loses
//! nothing; a server stalled by a few hostile connections loses everything. Hence:
//! - a head over `max_head` is answered 431 by hyper itself (counted here, where it is seen);
//! - a new connection must send a complete head within `header_timeout`, or it is closed;
//! - after a response, a kept-alive connection must send its next complete head within the
//!   larger of `idle_timeout` and `header_timeout`. Hyper 1.x starts its header-read timer as
//!   soon as a connection goes idle (`State::idle` in `proto/h1/conn.rs`), so one timer bounds
//!   the idle wait and the next head together; it is set to that larger value, and the first
//!   head's own, usually shorter, limit is enforced here;
//! - each answer must be written within `write_timeout` ([`write_deadline`]), and the kernel
//!   gives up on a peer that acknowledges nothing for as long (`TCP_USER_TIMEOUT`). hyper holds
//!   one request at a time and reads ahead at most a head's worth, and a connection that has
//!   not delivered a verified request is closed after answering `untrusted_requests` + 1
//!   ([`trust`]).
//!
//! At most `max_connections` are open at once: each holds hyper's buffers and a task (about
//! 16 KiB measured), so memory is bounded however many clients connect. When the limit is
//! reached and another arrives, the oldest connection that has never delivered a verified
//! request is closed to make room ([`trust`]); if every open connection has, the new one waits
//! for one to close, and those after it wait in the listen backlog.
//!
//! On shutdown the listener closes, connections that never sent a complete head close at once,
//! the others finish their request (hyper's graceful shutdown: no keep-alive, idle ones close at
//! once), and whatever is left after `grace_period` is closed. hyper-util's `GracefulShutdown`
//! can only do the middle part, so a [`TaskTracker`] and one `select!` per connection do it all.

pub mod refusal_log;
pub mod trust;
pub mod write_deadline;

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

pub use trust::Trust;

use crate::metrics::Metrics;
use refusal_log::{REFUSAL_LOG_EVERY, RefusalLog};
use trust::{Admission, Untrusted};
use write_deadline::WriteDeadline;

/// After an accept error that is not about one connection (out of file descriptors), wait this
/// long before accepting again rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// What hyper may buffer beyond the largest head (its minimum buffer is 8 KiB).
const READ_AHEAD: usize = 8 * 1024;

/// While the connection limit is reached, a warning at most this often.
const CROWDED_WARNING_EVERY: Duration = Duration::from_secs(10);

/// The code a 431 is counted under in `webhook_refused_total`.
const HEAD_TOO_LARGE: &str = "head_too_large";

/// The connection-level limits (`INGRESS_*` settings and `SHUTDOWN_GRACE_PERIOD`).
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Largest request head in bytes; larger is answered 431.
    pub max_head: usize,
    /// How long a new connection gets to send its first complete head.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next complete head.
    pub idle_timeout: Duration,
    /// How long writing one answer may wait for the peer to read; also `TCP_USER_TIMEOUT`.
    pub write_timeout: Duration,
    /// Connections open at once; at the limit an untrusted one is closed or new ones wait.
    pub max_connections: usize,
    /// Requests a connection that has not delivered a verified one may send before it is
    /// closed; `None` where nothing is ever verified (the ops server).
    pub untrusted_requests: Option<u32>,
    /// On shutdown, how long requests in progress get before their connections are closed.
    pub grace_period: Duration,
}

/// What every connection task shares.
struct Shared {
    builder: http1::Builder,
    router: Router,
    /// The ingress's connection and 431 figures; `None` for the ops server, which has none.
    metrics: Option<Metrics>,
    refusals: RefusalLog,
    header_timeout: Duration,
    write_timeout: Duration,
    untrusted_requests: Option<u32>,
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
    metrics: Option<Metrics>,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        builder: builder(&limits),
        router,
        metrics,
        refusals: RefusalLog::new(REFUSAL_LOG_EVERY),
        header_timeout: limits.header_timeout,
        write_timeout: limits.write_timeout,
        untrusted_requests: limits.untrusted_requests,
        stopping: shutdown,
        force_close: CancellationToken::new(),
    });
    let untrusted = Arc::new(Untrusted::default());
    let slots = Slots::new(limits.max_connections, shared.metrics.clone());
    let mut warned: Option<Instant> = None;
    let connections = TaskTracker::new();
    let mut accepted: u64 = 0;
    while let Some(stream) = accept(&listener, &shared.stopping).await {
        let taking = slots.take(&untrusted, &mut warned, &shared.stopping);
        let Some(slot) = taking.await else {
            break;
        };
        accepted += 1;
        let admission = untrusted.admit(accepted);
        connections.spawn(serve_connection(stream, slot, admission, shared.clone()));
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
        // Read ahead at most a head and a little more: hyper's default is ~400 KiB per
        // connection, which pipelined requests would fill.
        .max_buf_size(limits.max_head + READ_AHEAD)
        .header_read_timeout(limits.idle_timeout.max(limits.header_timeout));
    builder
}

/// The connection limit: one slot per open connection, held until it closes.
struct Slots {
    free: Arc<Semaphore>,
    max: usize,
    metrics: Option<Metrics>,
}

/// An open connection's slot; dropping it frees the slot.
struct Slot {
    /// Always `Some` until dropped: taken first so the open count excludes it.
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Slots>,
}

impl Slots {
    fn new(max: usize, metrics: Option<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            free: Arc::new(Semaphore::new(max)),
            max,
            metrics,
        })
    }

    /// A free slot; at the limit, closes the oldest untrusted connection and waits for a slot
    /// (if every connection is trusted, until one closes). `None` once `stop` is cancelled.
    async fn take(
        self: &Arc<Self>,
        untrusted: &Untrusted,
        warned: &mut Option<Instant>,
        stop: &CancellationToken,
    ) -> Option<Slot> {
        let permit = match self.free.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let evicted = untrusted.evict_oldest();
                if warned.is_none_or(|at| at.elapsed() >= CROWDED_WARNING_EVERY) {
                    warn!(
                        max_connections = self.max,
                        evicted,
                        "connection limit reached; closing the oldest connection that never \
                         delivered a verified request, or waiting if all have"
                    );
                    *warned = Some(Instant::now());
                }
                if let Some(metrics) = &self.metrics {
                    metrics.record_connection_waited();
                }
                tokio::select! {
                    () = stop.cancelled() => return None,
                    permit = self.free.clone().acquire_owned() => permit.ok()?,
                }
            }
        };
        self.report_open();
        Some(Slot {
            permit: Some(permit),
            slots: self.clone(),
        })
    }

    /// Sets the open-connections gauge from the slots taken.
    fn report_open(&self) {
        let open = self.max - self.free.available_permits();
        if let Some(metrics) = &self.metrics {
            metrics.set_connections_open(open);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.slots.report_open();
    }
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
        warn!(error = %err, "accepting a connection failed; retrying");
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
            "grace period over; closing the connections left"
        );
        force_close.cancel();
        connections.wait().await;
    }
}

/// One connection, from accept to close (dropping the hyper connection closes the socket,
/// dropping `_slot` lets the next one in, and dropping `admission` takes it off the register).
async fn serve_connection(
    stream: TcpStream,
    _slot: Slot,
    admission: Admission,
    shared: Arc<Shared>,
) {
    let accepted = Instant::now();
    tune(&stream, shared.write_timeout);
    let head_seen = Arc::new(AtomicBool::new(false));
    let service = marking_service(
        shared.router.clone(),
        head_seen.clone(),
        admission.trust(),
        shared.untrusted_requests,
    );
    let io = TokioIo::new(WriteDeadline::new(stream, shared.write_timeout));
    let connection = shared.builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => return shared.ended(ended, accepted),
        () = first_head_overdue(shared.header_timeout, &head_seen) => {
            debug!("no complete request head in time; connection closed");
            return;
        }
        () = admission.evicted() => {
            debug!("connection limit reached; this untrusted connection closed to make room");
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

/// Small JSON answers: no Nagle delay. A peer that acknowledges nothing of what was sent for
/// `write_timeout` is given up on by the kernel (`TCP_USER_TIMEOUT`; it applies while sent data
/// is unacknowledged, and the idle and head timers bound a vanished peer otherwise). Failing to
/// set either only costs latency or a backup of the write deadline, so it is logged, not fatal.
fn tune(stream: &TcpStream, write_timeout: Duration) {
    if let Err(err) = stream.set_nodelay(true) {
        debug!(error = %err, "TCP_NODELAY not set");
    }
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if let Err(err) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(write_timeout)) {
        debug!(error = %err, "TCP_USER_TIMEOUT not set");
    }
}

/// The router, marking `head_seen` when hyper hands it a request (its head is complete),
/// counting the request against the untrusted cap, and giving the handler the connection's
/// [`Trust`].
fn marking_service(
    router: Router,
    head_seen: Arc<AtomicBool>,
    trust: Trust,
    untrusted_requests: Option<u32>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future: Send,
> {
    hyper::service::service_fn(move |mut request: Request<Incoming>| {
        head_seen.store(true, Ordering::Release);
        let last = trust.request_arrived(untrusted_requests);
        request.extensions_mut().insert(trust.clone());
        let answering = router.clone().oneshot(request.map(Body::new));
        async move {
            let mut response = answering.await?;
            if last {
                // hyper closes the connection after this answer and reads nothing more.
                debug!("untrusted connection past its requests; closing once answered");
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        }
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
    /// How a connection ended: a 431 hyper answered is counted like any refused webhook.
    fn ended(&self, ended: hyper::Result<()>, accepted: Instant) {
        match ended {
            Ok(()) => {}
            Err(err) if err.is_parse_too_large() => {
                self.refusals.refused(431, HEAD_TOO_LARGE, &err);
                if let Some(metrics) = &self.metrics {
                    metrics.record_webhook(431, None, accepted.elapsed());
                    metrics.record_refused(HEAD_TOO_LARGE);
                }
            }
            Err(err) if err.is_timeout() => {
                debug!("request head not complete in time; connection closed");
            }
            Err(err) => debug!(error = %err, "connection ended with an error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_get_no_delay_and_the_user_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connecting = TcpStream::connect(listener.local_addr().unwrap());
        let (_client, accepted) = tokio::join!(connecting, listener.accept());
        let (stream, _) = accepted.unwrap();
        tune(&stream, Duration::from_millis(1500));
        assert!(stream.nodelay().unwrap());
        #[cfg(target_os = "linux")]
        assert_eq!(
            socket2::SockRef::from(&stream).tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(1500))
        );
    }
}
