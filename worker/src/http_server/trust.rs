//! Which connection closes when the connection limit is reached: one that has never delivered a
//! verified request, the oldest first. Anyone can open a connection and send half a head, so
//! age or idleness says nothing about who is on the other end; a verified signature does. A
//! connection that delivered one (Svix keeping its connection alive) is never closed to make
//! room for a newcomer, who has proved nothing yet.
//!
//! Every connection starts untrusted, registered here; the handler marks it trusted (through
//! the [`Trust`] in each request's extensions) once a signature verifies, which takes it off
//! the register. Eviction cancels the oldest registered connection's token, and its task
//! closes it at once: nothing verified can be in flight on it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// The open connections that have not yet delivered a verified request, by the order they were
/// accepted.
#[derive(Default)]
pub struct Untrusted {
    open: Mutex<BTreeMap<u64, CancellationToken>>,
}

impl Untrusted {
    /// Registers connection `id` (ids grow with accept order).
    pub fn admit(self: &Arc<Self>, id: u64) -> Admission {
        let evicted = CancellationToken::new();
        self.lock().insert(id, evicted.clone());
        Admission {
            trust: Trust {
                id,
                untrusted: self.clone(),
                earned: Arc::default(),
            },
            evicted,
        }
    }

    /// Closes the oldest untrusted connection; false if every open connection is trusted.
    /// Cancelled under the lock, so [`Trust::earned`] sees either the connection still
    /// registered (and keeps it) or already evicted.
    pub fn evict_oldest(&self) -> bool {
        let mut open = self.lock();
        open.pop_first()
            .map(|(_, evicted)| evicted.cancel())
            .is_some()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Takes `id` off the register; false if it was evicted first.
    fn forget(&self, id: u64) -> bool {
        self.lock().remove(&id).is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection's place in the register, for as long as it is open.
pub struct Admission {
    trust: Trust,
    evicted: CancellationToken,
}

impl Admission {
    /// What the handler gets to mark this connection trusted.
    pub fn trust(&self) -> Trust {
        self.trust.clone()
    }

    /// Resolves when the connection was chosen to make room.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.trust.untrusted.forget(self.trust.id);
    }
}

/// Put in every request's extensions by the server; the ingress calls [`Trust::earned`] once
/// the request's signature verified.
#[derive(Clone)]
pub struct Trust {
    id: u64,
    untrusted: Arc<Untrusted>,
    /// Set once earned: later requests on the connection need not look again.
    earned: Arc<AtomicBool>,
}

impl Trust {
    /// This connection delivered a verified request: it is never evicted from now on. False
    /// if it was chosen for eviction just before, when it is about to close: the request must
    /// then not start anything it cannot finish.
    pub fn earned(&self) -> bool {
        if self.earned.load(Ordering::Acquire) {
            return true;
        }
        let kept = self.untrusted.forget(self.id);
        self.earned.store(kept, Ordering::Release);
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_untrusted_goes_first_and_trusted_ones_never() {
        let untrusted = Arc::new(Untrusted::default());
        let first = untrusted.admit(1);
        let second = untrusted.admit(2);
        let third = untrusted.admit(3);
        assert!(first.trust().earned());
        assert!(first.trust().earned(), "and stays earned");

        assert!(untrusted.evict_oldest());
        assert!(second.evicted.is_cancelled(), "the oldest untrusted");
        assert!(!first.evicted.is_cancelled() && !third.evicted.is_cancelled());
        assert!(untrusted.evict_oldest());
        assert!(third.evicted.is_cancelled());
        assert!(!untrusted.evict_oldest(), "only a trusted one is left");
        assert!(!first.evicted.is_cancelled());
    }

    #[test]
    fn a_connection_evicted_before_its_request_verified_does_not_earn_trust() {
        let untrusted = Arc::new(Untrusted::default());
        let admission = untrusted.admit(1);
        assert!(untrusted.evict_oldest());
        assert!(
            !admission.trust().earned(),
            "it is closing: refuse, do not publish"
        );
    }

    #[test]
    fn a_closed_connection_leaves_the_register() {
        let untrusted = Arc::new(Untrusted::default());
        let admission = untrusted.admit(1);
        assert_eq!(untrusted.len(), 1);
        drop(admission);
        assert_eq!(untrusted.len(), 0);
        assert!(!untrusted.evict_oldest());
    }
}
