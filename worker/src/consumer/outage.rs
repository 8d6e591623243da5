//! A database outage as one broker session sees it, and the session's way to pause for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::Event;
use crate::error::{ProvisionError, Rejected};

/// When attempts began to find the database unavailable. Once that lasted `pause` without a
/// success, `paused` is cancelled and the session ends, its deliveries handed back, rather than
/// hold them for the whole outage (past the broker's `consumer_timeout`, every one would come
/// back with one more delivery count each time).
pub struct Outage {
    /// A number per outage, so a timer left from an outage that ended does nothing.
    current: Arc<Mutex<Option<u64>>>,
    started: AtomicU64,
    pause: Duration,
    pub paused: CancellationToken,
}

impl Outage {
    pub fn new(pause: Duration) -> Self {
        Self {
            current: Arc::default(),
            started: AtomicU64::new(0),
            pause,
            paused: CancellationToken::new(),
        }
    }

    /// What an attempt at `parsed` that ended in `result` says about the database.
    pub fn observe<T>(&self, parsed: &Result<Event, Rejected>, result: &Result<T, ProvisionError>) {
        match (parsed, result) {
            (_, Err(ProvisionError::Unavailable(_))) => self.unavailable(),
            // Only an answer from the database ends an outage: a rejected body or an event type
            // we ignore never asked it anything.
            (Ok(Event::UserChanged(_) | Event::UserDeleted(_)), _) => self.over(),
            _ => {}
        }
    }

    /// An attempt found the database unavailable: the first of an outage starts its timer.
    fn unavailable(&self) {
        let mut current = lock(&self.current);
        if current.is_some() {
            return;
        }
        let outage = self.started.fetch_add(1, Ordering::Relaxed);
        *current = Some(outage);
        let (still, paused, pause) = (self.current.clone(), self.paused.clone(), self.pause);
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            if *lock(&still) == Some(outage) {
                paused.cancel();
            }
        });
    }

    /// An attempt got an answer from the database: the outage, if any, is over.
    pub fn over(&self) {
        *lock(&self.current) = None;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // One assignment per update: the value is whole whatever panicked while holding it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
