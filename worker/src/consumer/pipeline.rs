//! The pipeline of one delivery, in the order it runs: parse, attempt, decide, settle.
//!
//! - **parse**: a batch's bodies are parsed once and [`split`] (distinct users' changes share
//!   one transaction; anything else goes one by one).
//! - **attempt**: provisioning within `PROVISION_ATTEMPT_TIMEOUT`; a failed batch transaction
//!   sends its deliveries one by one, so one bad event costs its batch-mates one retry at most.
//! - **decide**: the retry policy turns the result into a [`Fate`] (a pure function).
//! - **settle**: the [`Settler`] carries the fate out on the broker. A retry in this worker
//!   waits and attempts again; if the session ends meanwhile, the delivery is given back.

use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, info, warn};

use super::batch::split;
use super::delivery::{
    Context, earlier_attempts, failing_for, failing_since, is_first_delivery, lag_since_received,
    redeliveries,
};
use super::outage::Outage;
use super::settle::{Record, Settler};
use crate::db::Pool;
use crate::domain::{Event, UserProfile};
use crate::error::{ProvisionError, Rejected};
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::provision::{self, Provisioned};
use crate::retry::{Attempts, Fate, RetryPolicy};
use crate::traces::{
    self,
    spans::{self, Lineage},
};

/// Takes deliveries to their end; shared by every delivery task of one broker session.
pub struct Pipeline {
    pub db: Pool,
    pub policy: RetryPolicy,
    /// How long one attempt (one event or one batch) may take (`PROVISION_ATTEMPT_TIMEOUT`).
    pub attempt_timeout: Duration,
    pub settler: Settler,
    pub metrics: Metrics,
    /// How long the database has been unavailable, and the session's way to pause for it.
    pub outage: Outage,
    /// Cancelled when the session ends (shutdown, or the broker connection lost): a delivery
    /// waiting to retry is given back instead.
    pub stop: CancellationToken,
    /// The queue deliveries come from, naming their spans.
    pub queue: String,
}

impl Pipeline {
    /// Takes a batch of deliveries (one or more) to their end.
    pub async fn run(&self, deliveries: Vec<Delivery>) {
        // Each delivery's span is made once, whether it ends in a batch or on its own.
        let traced = deliveries.into_iter().map(|delivery| Traced {
            span: self.delivery_span(&delivery),
            delivery,
        });
        let batch = split(traced.collect(), |traced| &traced.delivery.data);
        let mut alone = batch.alone;
        if let Err(rest) = self.attempt_together(batch.together).await {
            let one_by_one = rest
                .into_iter()
                .map(|(traced, profile)| (traced, Ok(Event::UserChanged(profile))));
            alone.extend(one_by_one);
        }
        let each = alone
            .into_iter()
            .map(|(Traced { delivery, span }, parsed)| {
                self.run_one(delivery, parsed, span.clone())
                    .instrument(span)
            });
        futures::future::join_all(each).await;
    }

    /// One transaction for distinct users' changes, acknowledged together; when there are too
    /// few to share, or the transaction fails, the deliveries come back for one by one.
    async fn attempt_together(
        &self,
        together: Vec<(Traced, Box<UserProfile>)>,
    ) -> Result<(), Vec<(Traced, Box<UserProfile>)>> {
        if together.len() < 2 {
            return Err(together);
        }
        self.metrics.deliveries_in_flight(together.len() as f64);
        for (traced, profile) in &together {
            let user_id = Some(profile.id.as_ref());
            spans::record_event(&traced.span, profile.event_type(), user_id);
        }
        let delivery_spans: Vec<&Span> = together.iter().map(|(t, _)| &t.span).collect();
        let batch_span = spans::batch(&delivery_spans);
        let started = Instant::now();
        let profiles: Vec<&UserProfile> = together.iter().map(|(_, p)| p.as_ref()).collect();
        let batch = provision::provision_batch(&self.db, &profiles);
        let result = provision::within(&self.db, self.attempt_timeout, batch)
            .instrument(batch_span.clone())
            .await;
        let elapsed = started.elapsed();
        let results = match result {
            Ok(results) => results,
            Err(err) => {
                self.metrics.deliveries_in_flight(-(together.len() as f64));
                spans::record_error(&batch_span, err.as_str());
                debug!(size = together.len(), error = %err, "batch failed; one event at a time");
                return Err(together);
            }
        };
        self.outage.over();
        self.metrics.record_batch(together.len());
        let mut contexts = Vec::with_capacity(together.len());
        for (span, provisioned) in delivery_spans.iter().zip(&results) {
            spans::record_outcome(span, provisioned.outcome.as_str());
        }
        for ((Traced { delivery, .. }, profile), provisioned) in together.iter().zip(results) {
            let context = Context::named(delivery, profile.event_type(), Some(&profile.id));
            let attempts = Attempts {
                made: redeliveries(delivery) + 1,
                here: 1,
                ..Attempts::default()
            };
            self.record_success(delivery, &context, &provisioned, attempts, elapsed);
            contexts.push(context);
        }
        let deliveries: Vec<&Delivery> = together.iter().map(|(t, _)| &t.delivery).collect();
        if let Some(first) = contexts.first() {
            self.settler.ack(&deliveries, first).await;
        }
        contexts.iter().for_each(|context| self.settled(context));
        Ok(())
    }

    /// One delivery, parsed once: attempted and decided until its fate is one the settler
    /// carries out. Never drops it silently.
    async fn run_one(&self, delivery: Delivery, parsed: Result<Event, Rejected>, span: Span) {
        self.metrics.deliveries_in_flight(1.0);
        let context = Context::of(&delivery, &parsed);
        spans::record_event(&span, &context.event_type, context.user_id.as_deref());
        let mut attempts = earlier_attempts(&delivery);
        let mut first_failed_at = None;
        loop {
            let started = Instant::now();
            let result = self.attempt(&parsed).await;
            let elapsed = started.elapsed();
            attempts = attempts.after(&result);
            self.outage.observe(&parsed, &result);
            match &result {
                Ok(provisioned) => {
                    self.record_success(&delivery, &context, provisioned, attempts, elapsed);
                }
                Err(_) => {
                    self.metrics.record_failed_attempt(elapsed);
                    // A deferred retry carries when the event first failed; read only on
                    // failure, off the happy path.
                    first_failed_at
                        .get_or_insert_with(|| failing_since(&delivery).unwrap_or_else(Utc::now));
                }
            }
            let failing = first_failed_at.map(failing_for).unwrap_or_default();
            let mut fate = self.policy.decide(&result, attempts, failing);
            if let (Fate::Retry { delay }, Err(err)) = (fate, &result) {
                if self.wait_to_retry(&context, err, attempts, delay).await {
                    continue;
                }
                fate = Fate::GiveBack;
            }
            trace_fate(&span, fate, attempts, &result);
            let record = Record {
                attempts,
                first_failed_at,
                error: result.as_ref().err(),
                elapsed,
            };
            self.settler
                .carry_out(&delivery, &context, fate, &record)
                .await;
            break;
        }
        self.settled(&context);
    }

    /// One attempt at a parsed event, within the attempt deadline.
    async fn attempt(
        &self,
        parsed: &Result<Event, Rejected>,
    ) -> Result<Provisioned, ProvisionError> {
        match parsed {
            Ok(event) => {
                let provisioning = provision::provision(&self.db, event);
                provision::within(&self.db, self.attempt_timeout, provisioning).await
            }
            Err(rejected) => Err(rejected.clone().into()),
        }
    }

    /// Sleeps before the next attempt; false when the session ended (or paused) meanwhile.
    async fn wait_to_retry(
        &self,
        context: &Context,
        err: &ProvisionError,
        attempts: Attempts,
        delay: Duration,
    ) -> bool {
        self.metrics.record_retry(err.as_str());
        warn!(
            user_id = context.user_id.as_deref(),
            event_id = %context.event_id,
            attempt = attempts.made,
            acquired = context.acquired,
            reason = err.as_str(),
            error = %err,
            retry_in_ms = delay.as_millis() as u64,
            "provisioning failed; retrying"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.stop.cancelled() => false,
            () = self.outage.paused.cancelled() => false,
        }
    }

    /// What a success leaves behind: its metrics and its log line.
    fn record_success(
        &self,
        delivery: &Delivery,
        context: &Context,
        provisioned: &Provisioned,
        attempts: Attempts,
        elapsed: Duration,
    ) {
        self.metrics
            .record_outcome(&context.event_type, provisioned.outcome, elapsed);
        if let Some(lag) = lag_since_received(delivery) {
            self.metrics.record_lag(lag);
        }
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        if let Some(reassigned) = &provisioned.reassigned {
            self.metrics.record_username_reassigned();
            info!(
                user_id = %reassigned.user_id,
                username = %reassigned.username,
                claimed_by = context.user_id.as_deref(),
                event_id = %context.event_id,
                "USERNAME_REASSIGNED: a derived username went to the user who chose it"
            );
        }
        if provisioned.outcome == Outcome::Created {
            info!(
                user_id = context.user_id.as_deref(),
                event_id = %context.event_id,
                workspace_id = provisioned.workspace_id.as_deref(),
                attempt = attempts.made,
                duration_ms,
                "WORKSPACE_CREATED"
            );
        } else {
            info!(
                user_id = context.user_id.as_deref(),
                event_id = %context.event_id,
                event_type = %context.event_type,
                outcome = provisioned.outcome.as_str(),
                attempt = attempts.made,
                acquired = context.acquired,
                duration_ms,
                "event processed"
            );
        }
    }

    /// The span of one delivery: under the span that published it on its first delivery, else
    /// a trace of its own linked to that one.
    fn delivery_span(&self, delivery: &Delivery) -> Span {
        if !traces::on() {
            return Span::none();
        }
        let lineage = match is_first_delivery(delivery) {
            true => Lineage::Child,
            false => Lineage::Linked,
        };
        let attempt = earlier_attempts(delivery).made + 1;
        spans::delivery(delivery, &self.queue, lineage, attempt)
    }

    /// The delivery's fate is carried out: count it as done.
    fn settled(&self, context: &Context) {
        if let Some(reason) = &context.replayed_after {
            self.metrics.record_replayed(reason);
        }
        self.metrics.deliveries_in_flight(-1.0);
    }
}

/// A delivery and its span, made once when the delivery is taken.
struct Traced {
    delivery: Delivery,
    span: Span,
}

/// What the delivery's span says of its fate: the outcome, or the reason it failed, and the
/// attempt it ended on (a retry in this worker keeps the delivery and its span).
fn trace_fate(
    span: &Span,
    fate: Fate,
    attempts: Attempts,
    result: &Result<Provisioned, ProvisionError>,
) {
    spans::record_attempt(span, attempts.made);
    match (fate, result) {
        (Fate::Ack, Ok(provisioned)) => spans::record_outcome(span, provisioned.outcome.as_str()),
        (Fate::DeadLetter(reason), _) => {
            spans::record_outcome(span, fate.as_str());
            spans::record_error(span, reason.as_str());
        }
        (_, Err(err)) => {
            spans::record_outcome(span, fate.as_str());
            spans::record_error(span, err.as_str());
        }
        (_, Ok(_)) => spans::record_outcome(span, fate.as_str()),
    }
}
