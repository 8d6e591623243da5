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
//!
//! An untrusted connection is also closed, after answering the request in hand, when it sends
//! more requests than the server's cap ([`Trust::request_arrived`]): a client without the key has no reason to send
//! more than a few, and one that pipelines requests and never reads the answers would otherwise
//! be answered until Linux's send buffer (megabytes) filled. Measured before the cap: 200 such
//! clients kept both cores busy, each connection answering about 3,500 requests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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
                requests: Arc::default(),
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

    /// Whether connection `id` is still untrusted.
    fn holds(&self, id: u64) -> bool {
        self.lock().contains_key(&id)
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

    /// Resolves when the connection was chosen to make room: close it at once.
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
    /// Requests this connection has sent.
    requests: Arc<AtomicU32>,
}

impl Trust {
    /// Counts a request as its head arrives. True past `cap` requests on a connection that has
    /// not earned trust: this request's answer then closes the connection (a proxy in front
    /// may carry several clients' requests on one connection: none goes unanswered). `None`:
    /// no cap.
    pub fn request_arrived(&self, cap: Option<u32>) -> bool {
        let sent = self
            .requests
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        cap.is_some_and(|cap| sent > cap) && self.untrusted.holds(self.id)
    }

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
    fn an_untrusted_connection_past_the_request_cap_is_closed_and_a_trusted_one_never() {
        let untrusted = Arc::new(Untrusted::default());
        let stranger = untrusted.admit(1);
        let svix = untrusted.admit(2);
        assert!(svix.trust().earned());
        for _ in 0..3 {
            assert!(!stranger.trust().request_arrived(Some(3)), "up to the cap");
            assert!(!svix.trust().request_arrived(Some(3)));
        }
        assert!(
            stranger.trust().request_arrived(Some(3)),
            "one more closes it"
        );
        for _ in 0..100 {
            assert!(!svix.trust().request_arrived(Some(3)));
        }
        let ops = untrusted.admit(3);
        for _ in 0..100 {
            assert!(!ops.trust().request_arrived(None), "no cap, no closing");
        }
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
