//! Moving dead letters from the dead-letter queue into the store, each acknowledged only once
//! its row is committed, so a letter is in the queue, in the table, or (after a crash between
//! the two) in both, which the store absorbs; never in neither. The worker runs a [`Keeper`]
//! beside its consumer; the `dlq` commands call [`move_waiting`] first, so they work with no
//! worker running. Either way a letter is taken from the queue once, and its delivery count
//! (which RabbitMQ 4.x quorum queues limit to 20 by default) never grows with looking.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use sea_orm::DbErr;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::letter::{Arrival, Filter};
use super::{DlqError, store};
use crate::broker;
use crate::config::BrokerSettings;
use crate::db::Pool;
use crate::error::ProvisionError;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;
use crate::topology::Topology;

/// Letters kept per transaction, and held unacknowledged at once.
const BATCH: u16 = 256;
/// Body bytes per transaction: a batch ends at the letter that reaches it, so large bodies never
/// make one statement of hundreds of megabytes.
const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// How long [`move_waiting`] waits for a letter before deciding the queue is empty (another
/// process may have taken the ones it counted).
const QUIET: Duration = Duration::from_secs(1);
/// How often the worker refreshes `dead_letters_open` from the store.
const GAUGE_INTERVAL: Duration = Duration::from_secs(15);
const GAUGE_MIN_GAP: Duration = Duration::from_secs(1);
/// How often the worker purges closed letters past their retention, and how many per statement.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);
const PURGE_BATCH: u64 = 10_000;

/// The dead-letter queue's side of a keeper: one connection, one channel consuming it.
struct Intake {
    connection: Connection,
    channel: Channel,
    deliveries: lapin::Consumer,
    queue: String,
    /// Letters ready in the queue just before consuming began.
    waiting: u32,
}

impl Intake {
    async fn open(settings: &BrokerSettings, role: &str) -> Result<Self, DlqError> {
        let topology = Topology::from_settings(settings);
        let connection = broker::connect_light(settings, role).await?;
        let channel = connection.create_channel().await?;
        broker::declare(&channel, &topology).await?;
        channel.basic_qos(BATCH, BasicQosOptions::default()).await?;
        // Counted before consuming: once it starts, the letters handed to it are no longer ready.
        let waiting = broker::ready_messages(&channel, &topology.dead_letter_queue).await?;
        let deliveries = channel
            .basic_consume(
                topology.dead_letter_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            connection,
            channel,
            deliveries,
            queue: topology.dead_letter_queue,
            waiting,
        })
    }

    /// The next batch: waits up to `wait` for a first letter (for ever when `None`), then takes
    /// what has already arrived, up to [`BATCH`]. Empty when nothing came.
    async fn next_batch(&mut self, wait: Option<Duration>) -> Result<Vec<Delivery>, DlqError> {
        let first = match wait {
            Some(wait) => match tokio::time::timeout(wait, self.deliveries.next()).await {
                Ok(next) => next,
                Err(_) => return Ok(Vec::new()),
            },
            None => self.deliveries.next().await,
        };
        let Some(first) = first else {
            return Err(DlqError::ConsumerEnded);
        };
        let mut batch = vec![first?];
        let mut bytes = batch[0].data.len();
        while batch.len() < usize::from(BATCH) && bytes < BATCH_BYTES {
            match self.deliveries.next().now_or_never() {
                Some(Some(delivery)) => {
                    let delivery = delivery?;
                    bytes += delivery.data.len();
                    batch.push(delivery);
                }
                _ => break,
            }
        }
        Ok(batch)
    }

    /// Acknowledges every letter of `batch` at once (`multiple`): they were taken in order on
    /// this one channel, and every earlier batch is acknowledged already.
    async fn ack(&self, batch: &[Delivery]) -> Result<(), DlqError> {
        if let Some(last) = batch.last() {
            last.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }

    async fn close(self) {
        let _ = self.channel.close(200, "dead letters kept".into()).await;
        let _ = self.connection.close(200, "dead letters kept".into()).await;
    }
}

/// Keeps one batch in the store, then acknowledges it. A batch the store refuses for any reason
/// but being unavailable is kept letter by letter, so one odd letter never holds up the others.
async fn keep(intake: &Intake, db: &Pool, batch: &[Delivery]) -> Result<(), DlqError> {
    let arrivals: Vec<Arrival> = batch.iter().map(Arrival::from_delivery).collect();
    if let Err(refused) = refused_unless_unavailable(store::keep(db, &arrivals).await)? {
        warn!(error = %refused, letters = arrivals.len(), "the store refused a batch of dead letters; keeping them one by one");
        for arrival in arrivals {
            keep_one(db, arrival).await?;
        }
    }
    intake.ack(batch).await
}

/// Keeps one letter; one the store still refuses is kept without what it can refuse (headers,
/// properties, Clerk's time), with the refusal in its detail: the body, the id and the reason
/// are always kept, and a replay needs nothing more.
async fn keep_one(db: &Pool, arrival: Arrival) -> Result<(), DlqError> {
    let one = std::slice::from_ref(&arrival);
    let mut kept = refused_unless_unavailable(store::keep(db, one).await)?;
    if kept.is_err() {
        // Once more as it is: a passing conflict (a deadlock, a lock timeout) is not the data's.
        kept = refused_unless_unavailable(store::keep(db, one).await)?;
    }
    if let Err(refused) = kept {
        error!(svix_id = %arrival.svix_id, error = %refused, "the store refused a dead letter as received; keeping it without its headers");
        store::keep(db, &[arrival.stripped(&refused.to_string())]).await?;
    }
    Ok(())
}

/// `Ok(Ok(()))` kept; `Ok(Err(refusal))` refused by the store for this data; `Err` when the
/// database is unavailable (the caller waits; the letters stay in the queue meanwhile).
fn refused_unless_unavailable(
    kept: Result<(), DbErr>,
) -> Result<Result<(), ProvisionError>, DlqError> {
    match kept.map_err(ProvisionError::from_db) {
        Ok(()) => Ok(Ok(())),
        Err(ProvisionError::Unavailable(err)) => Err(DlqError::Database(err)),
        Err(refused) => Ok(Err(refused)),
    }
}

/// Moves every letter waiting in the dead-letter queue into the store; returns how many. For the
/// `dlq` commands, which read the store after it.
pub async fn move_waiting(settings: &BrokerSettings, db: &Pool) -> Result<u64, DlqError> {
    let mut intake = Intake::open(settings, "dlq").await?;
    let result = async {
        let mut moved = 0u64;
        while moved < u64::from(intake.waiting) {
            let batch = intake.next_batch(Some(QUIET)).await?;
            if batch.is_empty() {
                break;
            }
            keep(&intake, db, &batch).await?;
            moved += batch.len() as u64;
        }
        Ok(moved)
    }
    .await;
    intake.close().await;
    result
}

/// The worker's part that moves letters into the store as they arrive, refreshes the
/// `dead_letters_open` gauge and purges closed letters past their retention.
pub struct Keeper {
    pub broker: BrokerSettings,
    pub db: Pool,
    pub metrics: Metrics,
    /// `DEAD_LETTER_RETENTION`: how long replayed, resolved and discarded letters are kept.
    pub retention: Duration,
    /// Wakes the gauge after letters were kept.
    pub kept: Arc<Notify>,
}

impl Keeper {
    /// Runs until `stop`; broker and database trouble is waited out, never fatal. Letters held
    /// when it stops go back to the queue with the connection.
    pub async fn run(self, stop: CancellationToken) {
        let gauge = tokio::spawn(refresh_gauge(
            self.db.clone(),
            self.metrics.clone(),
            self.kept.clone(),
            stop.clone(),
        ));
        let purge = tokio::spawn(purge_closed(self.db.clone(), self.retention, stop.clone()));
        let mut reconnect_delays = RetryPolicy::RECONNECT.delays();
        while !stop.is_cancelled() {
            match Intake::open(&self.broker, "dead-letter-keeper").await {
                Ok(mut intake) => {
                    reconnect_delays = RetryPolicy::RECONNECT.delays();
                    if let Err(error) = self.take_until_stopped(&mut intake, &stop).await {
                        warn!(%error, "dead-letter keeper lost its broker session; reconnecting");
                    }
                    intake.close().await;
                }
                Err(error) => warn!(%error, "dead-letter keeper cannot reach the broker"),
            }
            let delay = reconnect_delays.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => {}
            }
        }
        let _ = tokio::join!(gauge, purge);
    }

    async fn take_until_stopped(
        &self,
        intake: &mut Intake,
        stop: &CancellationToken,
    ) -> Result<(), DlqError> {
        info!(queue = %intake.queue, "moving dead letters into the store");
        loop {
            let batch = tokio::select! {
                batch = intake.next_batch(None) => batch?,
                () = stop.cancelled() => return Ok(()),
            };
            self.keep_until_stored(intake, &batch, stop).await?;
            self.kept.notify_one();
        }
    }

    /// Keeps `batch`, waiting out a database that is down; on stop, leaves it to the broker.
    async fn keep_until_stored(
        &self,
        intake: &Intake,
        batch: &[Delivery],
        stop: &CancellationToken,
    ) -> Result<(), DlqError> {
        let mut delays = RetryPolicy::RECONNECT.delays();
        loop {
            // Abandoned at stop, on a silent database too: the batch is not acked, so the broker
            // hands it out again, and keeping a letter twice changes nothing.
            let kept = tokio::select! {
                kept = keep(intake, &self.db, batch) => kept,
                () = stop.cancelled() => return Ok(()),
            };
            match kept {
                Ok(()) => return Ok(()),
                Err(DlqError::Database(error)) => {
                    warn!(%error, letters = batch.len(), "cannot keep dead letters yet; they stay in the queue");
                }
                Err(other) => return Err(other),
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return Ok(()),
            }
        }
    }
}

/// Sets `dead_letters_open{reason}` from the store, every [`GAUGE_INTERVAL`] (operators' replays
/// and discards happen in other processes) and soon after letters were kept; a reason whose
/// letters are all closed goes back to 0.
async fn refresh_gauge(db: Pool, metrics: Metrics, kept: Arc<Notify>, stop: CancellationToken) {
    let mut shown: BTreeSet<String> = BTreeSet::new();
    let open_letters = Filter::open();
    loop {
        // Abandoned at stop: on a silent database the count would hold the stop past its grace.
        let counted = tokio::select! {
            counted = store::counts_by_reason(&db, &open_letters) => counted,
            () = stop.cancelled() => return,
        };
        match counted {
            Ok(open) => {
                for gone in shown.iter().filter(|reason| !open.contains_key(*reason)) {
                    metrics.set_dead_letters_open(gone, 0);
                }
                for (reason, count) in &open {
                    metrics.set_dead_letters_open(reason, *count);
                }
                shown = open.into_keys().collect();
            }
            Err(error) => warn!(%error, "cannot count open dead letters"),
        }
        tokio::select! {
            () = tokio::time::sleep(GAUGE_INTERVAL) => {}
            () = kept.notified() => {}
            () = stop.cancelled() => return,
        }
        // At most one count a second however fast letters arrive.
        tokio::select! {
            () = tokio::time::sleep(GAUGE_MIN_GAP) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Deletes replayed, resolved and discarded letters unchanged for `retention`; open ones never.
async fn purge_closed(db: Pool, retention: Duration, stop: CancellationToken) {
    crate::schedule::every(PURGE_INTERVAL, stop, || async {
        loop {
            match store::purge_closed(&db, retention, PURGE_BATCH).await {
                Ok(0) => break,
                Ok(purged) => info!(purged, "purged closed dead letters past their retention"),
                Err(error) => {
                    warn!(%error, "cannot purge closed dead letters");
                    break;
                }
            }
        }
    })
    .await;
}
