//! The export queue's bound, with every dropped span counted.
//!
//! The SDK's batch processor holds at most `OTEL_BSP_MAX_QUEUE_SIZE` spans and drops the rest
//! when the collector is slow or down, so provisioning never waits for it. It keeps that count to
//! itself (logged once, at shutdown), so the same bound is enforced here first and counted:
//! [`Gate`] admits a span only while fewer than the queue size are admitted and not yet exported,
//! and [`Counted`] gives their places back after each export, whatever its result. The processor's
//! own queue therefore never overflows, and `trace_spans_dropped_total` counts every span dropped
//! while the process runs. (The batch being exported still holds its places, so the queue is
//! up to one export batch smaller than `OTEL_BSP_MAX_QUEUE_SIZE`; spans still queued when the
//! 1 s of shutdown runs out are not counted.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

/// Why spans were dropped: the `reason` label of `trace_spans_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The export queue was full: the collector is slower than the spans come.
    QueueFull,
    /// The exporter gave up on a batch (collector down, refused, timed out).
    ExportFailed,
}

impl DropReason {
    /// Every reason: the label values exported from the start, at zero.
    pub const ALL: [Self; 2] = [Self::QueueFull, Self::ExportFailed];

    /// The `reason` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::ExportFailed => "export_failed",
        }
    }
}

static QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
static EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);

/// Spans this process dropped for `reason` since it started (traces are the process's, not one
/// application's: every [`crate::metrics::Metrics`] reports the same figure).
pub fn dropped(reason: DropReason) -> u64 {
    counter(reason).load(Ordering::Relaxed)
}

fn counter(reason: DropReason) -> &'static AtomicU64 {
    match reason {
        DropReason::QueueFull => &QUEUE_FULL,
        DropReason::ExportFailed => &EXPORT_FAILED,
    }
}

fn count_dropped(reason: DropReason, spans: usize) {
    counter(reason).fetch_add(spans as u64, Ordering::Relaxed);
}

/// Spans admitted and not yet exported, shared by the [`Gate`] and the [`Counted`] exporter.
#[derive(Clone, Debug, Default)]
pub(super) struct Admitted(Arc<AtomicUsize>);

/// A span processor that admits at most `capacity` spans into `inner` until they are exported,
/// and counts the others as dropped.
#[derive(Debug)]
pub(super) struct Gate<P> {
    inner: P,
    admitted: Admitted,
    capacity: usize,
}

impl<P> Gate<P> {
    /// Admits at most `capacity` spans into `inner` at once, counted in `admitted`.
    pub(super) fn new(inner: P, admitted: Admitted, capacity: usize) -> Self {
        Self {
            inner,
            admitted,
            capacity,
        }
    }
}

impl<P: SpanProcessor> SpanProcessor for Gate<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let capacity = self.capacity;
        let admitted =
            self.admitted
                .0
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                    (queued < capacity).then_some(queued + 1)
                });
        match admitted {
            Ok(_) => self.inner.on_end(span),
            Err(_) => count_dropped(DropReason::QueueFull, 1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// An exporter that gives the [`Gate`] its places back as batches leave, and counts the spans of
/// a batch it failed to export.
#[derive(Debug)]
pub(super) struct Counted<E> {
    inner: E,
    admitted: Admitted,
}

impl<E> Counted<E> {
    /// Gives `admitted` its places back as `inner` exports.
    pub(super) fn new(inner: E, admitted: Admitted) -> Self {
        Self { inner, admitted }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        let _ = self
            .admitted
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |admitted| {
                Some(admitted.saturating_sub(spans))
            });
        if result.is_err() {
            count_dropped(DropReason::ExportFailed, spans);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
