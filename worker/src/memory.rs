//! Giving freed memory back to the operating system.
//!
//! glibc's allocator keeps what a burst of work freed inside its per-thread arenas: the resident
//! set ratchets up with every traffic spike and stays there, which over months of uneven traffic
//! looks like a leak. `malloc_trim` hands every whole free page back. Long-running commands run
//! [`trim_periodically`]; elsewhere (other allocators, other platforms) it does nothing.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Returns free heap pages to the operating system; true when some were returned.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointer
        // from us and is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Calls [`release_free_memory`] every `interval` until `shutdown`, off the async threads (a
/// trim walks the whole heap).
pub async fn trim_periodically(interval: Duration, shutdown: CancellationToken) {
    crate::schedule::every(interval, shutdown, || async {
        match tokio::task::spawn_blocking(release_free_memory).await {
            Ok(released) => debug!(released, "memory trimmed"),
            Err(err) => debug!(error = %err, "memory trim task failed"),
        }
    })
    .await;
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn pages_freed_by_a_burst_are_given_back() {
        // Many small allocations (below the mmap threshold) from another thread's arena, freed:
        // glibc keeps them until trimmed.
        std::thread::spawn(|| {
            let burst: Vec<Vec<u8>> = (0..100_000).map(|i| vec![i as u8; 512]).collect();
            drop(burst);
        })
        .join()
        .unwrap();
        assert!(release_free_memory());
    }
}
