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
            },
            evicted,
        }
    }

    /// Closes the oldest untrusted connection; false if every open connection is trusted.
    pub fn evict_oldest(&self) -> bool {
        let oldest = self.lock().pop_first();
        oldest.map(|(_, evicted)| evicted.cancel()).is_some()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn forget(&self, id: u64) {
        self.lock().remove(&id);
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
}

impl Trust {
    /// This connection delivered a verified request: it is never evicted from now on.
    pub fn earned(&self) {
        self.untrusted.forget(self.id);
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
        first.trust().earned();

        assert!(untrusted.evict_oldest());
        assert!(second.evicted.is_cancelled(), "the oldest untrusted");
        assert!(!first.evicted.is_cancelled() && !third.evicted.is_cancelled());
        assert!(untrusted.evict_oldest());
        assert!(third.evicted.is_cancelled());
        assert!(!untrusted.evict_oldest(), "only a trusted one is left");
        assert!(!first.evicted.is_cancelled());
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
