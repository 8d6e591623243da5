//! Whether the broker-facing parts (consumer, ingress) hold a broker connection: they set a
//! [`ReadyFlag`], and the ops server's `/readyz` reads it. A module of its own so those parts do
//! not depend on the ops server, nor it on them.

use std::sync::Arc;

/// Whether a component currently holds what it needs (a broker connection), and to which
/// broker node; `/readyz` reads it.
#[derive(Clone, Debug, Default)]
pub struct ReadyFlag(Arc<std::sync::Mutex<Option<String>>>);

impl ReadyFlag {
    /// Connected, to the node named `node` (host and port).
    pub fn connected_to(&self, node: &str) {
        *self.lock() = Some(node.to_owned());
    }

    /// No longer connected: `/readyz` answers 503 until [`Self::connected_to`] again.
    pub fn disconnected(&self) {
        *self.lock() = None;
    }

    /// The node in use, while connected.
    pub fn node(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
