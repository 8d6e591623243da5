//! Reading a webhook body within its limits: its size (`INGRESS_MAX_BODY`), its time
//! (`INGRESS_BODY_TIMEOUT`), and the memory all bodies being read may hold together
//! (`INGRESS_MAX_BODY_MEMORY`).
//!
//! A body must be read before its signature can be checked, so anyone can make the ingress
//! hold one; the connection limit times the body limit would be 256 MiB by default. Each chunk
//! therefore takes what it costs from one shared budget as it arrives (the buffer's growth, so
//! the budget is memory really held; a declared length takes nothing until bytes come), and
//! gives it back when the request is answered. A chunk that finds the budget spent is refused
//! at once (503 `body_memory_full`; Svix retries) rather than waiting: an unverified body gives
//! its memory back within the body timeout, a verified one within the request timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Refused;

/// The bytes every body being read may hold together.
pub struct BodyMemory {
    free: Arc<Semaphore>,
}

impl BodyMemory {
    pub fn new(bytes: usize) -> Self {
        Self {
            free: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Bytes not held by any body now.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.free.available_permits()
    }

    /// `len` more bytes for `held`, if the budget has them.
    fn take(&self, held: &mut Option<OwnedSemaphorePermit>, len: usize) -> Result<(), Refused> {
        let len = u32::try_from(len).map_err(|_| Refused::TooLarge)?;
        let permit = self
            .free
            .clone()
            .try_acquire_many_owned(len)
            .map_err(|_| Refused::BodyMemoryFull)?;
        match held {
            Some(held) => held.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }
}

/// The size and time limits of one body.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Largest body in bytes (larger: 413).
    pub max_body: usize,
    /// From the complete head to the whole body (longer: 408).
    pub body_timeout: Duration,
}

/// A whole body and its share of the budget, given back when this is dropped.
pub struct HeldBody {
    pub bytes: Bytes,
    _memory: Option<OwnedSemaphorePermit>,
}

/// The whole body, within `limits` and `memory`. A declared length over the limit is refused
/// before a byte of the body is read.
pub async fn read_body(
    body: Body,
    limits: BodyLimits,
    memory: &BodyMemory,
) -> Result<HeldBody, Refused> {
    let max = limits.max_body;
    if body.size_hint().lower() > u64::try_from(max).unwrap_or(u64::MAX) {
        return Err(Refused::TooLarge);
    }
    tokio::time::timeout(limits.body_timeout, collect(body, max, memory))
        .await
        .map_err(|_| Refused::BodyTimedOut(limits.body_timeout))?
}

/// Every data frame, each counted against `max` as it arrives, and the buffer's growth against
/// the budget before it grows.
async fn collect(mut body: Body, max: usize, memory: &BodyMemory) -> Result<HeldBody, Refused> {
    let mut bytes: Vec<u8> = Vec::new();
    let mut held = None;
    let mut taken = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| Refused::Unreadable(err.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let needed = bytes.len() + data.len();
        if needed > max {
            return Err(Refused::TooLarge);
        }
        if needed > taken {
            // Double as a Vec would, but never past the limit: the growth is what it costs.
            let capacity = needed.max(taken * 2).min(max);
            memory.take(&mut held, capacity - taken)?;
            bytes.reserve_exact(capacity - bytes.len());
            taken = capacity;
        }
        bytes.extend_from_slice(&data);
    }
    Ok(HeldBody {
        bytes: Bytes::from(bytes),
        _memory: held,
    })
}

#[cfg(test)]
mod tests {
    use futures::{StreamExt, stream};

    use super::*;

    const LIMITS: BodyLimits = BodyLimits {
        max_body: 16,
        body_timeout: Duration::from_millis(200),
    };

    fn plenty() -> BodyMemory {
        BodyMemory::new(1 << 20)
    }

    /// A body that sends `first` and then nothing, ever.
    fn stalled(first: &'static [u8]) -> Body {
        let chunks = stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(first))])
            .chain(stream::pending());
        Body::from_stream(chunks)
    }

    fn chunked(chunks: &[&'static [u8]]) -> Body {
        let chunks: Vec<_> = chunks
            .iter()
            .map(|chunk| Ok::<_, std::io::Error>(Bytes::from_static(chunk)))
            .collect();
        Body::from_stream(stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let body = read_body(Body::from("{\"type\":\"x\"}"), LIMITS, &plenty()).await;
        assert_eq!(body.unwrap().bytes, Bytes::from_static(b"{\"type\":\"x\"}"));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_too_large_declared_or_streamed() {
        let declared = Body::from(vec![b'a'; 17]);
        assert!(matches!(
            read_body(declared, LIMITS, &plenty()).await,
            Err(Refused::TooLarge)
        ));
        let streamed = chunked(&[b"0123456789", b"0123456789"]);
        assert!(matches!(
            read_body(streamed, LIMITS, &plenty()).await,
            Err(Refused::TooLarge)
        ));
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_a_body_timeout() {
        let read = read_body(stalled(b"{\"ty"), LIMITS, &plenty()).await;
        assert!(matches!(read, Err(Refused::BodyTimedOut(_))));
    }

    #[tokio::test]
    async fn bodies_hold_their_bytes_of_the_budget_until_dropped() {
        let memory = BodyMemory::new(20);
        let first = read_body(chunked(&[b"0123456789", b"01234"]), LIMITS, &memory)
            .await
            .expect("15 bytes, in a buffer grown to the 16-byte limit");
        assert_eq!(memory.available(), 4);
        let second = read_body(chunked(&[b"0123", b"56789"]), LIMITS, &memory).await;
        assert!(
            matches!(second, Err(Refused::BodyMemoryFull)),
            "the budget is spent"
        );
        assert_eq!(
            memory.available(),
            4,
            "a refused body gives back what it took"
        );
        drop(first);
        assert_eq!(memory.available(), 20);
        let third = read_body(chunked(&[b"0123", b"56789"]), LIMITS, &memory).await;
        assert_eq!(third.expect("read once freed").bytes.len(), 9);
    }

    #[tokio::test]
    async fn a_body_still_to_come_takes_nothing() {
        let memory = BodyMemory::new(20);
        let reading = read_body(stalled(b""), LIMITS, &memory);
        let check = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            memory.available()
        };
        let (read, available) = tokio::join!(reading, check);
        assert_eq!(available, 20);
        assert!(matches!(read, Err(Refused::BodyTimedOut(_))));
    }
}
