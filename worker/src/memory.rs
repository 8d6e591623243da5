//! Giving freed memory back to the operating system.
//!
//! glibc's allocator keeps what a burst of work freed inside its per-thread arenas: the resident
//! set ratchets up with every traffic spike and stays there, which over months of uneven traffic
//! looks like a leak. `malloc_trim` hands every whole free page back. Long-running commands run
//! [`trim_periodically`]; elsewhere (other allocators, other platforms) it does nothing.
//!
//! Each trim also reports what the process holds ([`MemoryUsage`]) to its caller, which exports
//! it as gauges, so a dashboard tells a leak (heap in use climbing) from memory the allocator
//! keeps free (free heap climbing).

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

/// What the process holds, in bytes; a figure this platform cannot tell is `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Resident set size: what the operating system counts against the process.
    pub resident: Option<u64>,
    /// Heap bytes handed out to the program and not yet freed.
    pub heap_in_use: Option<u64>,
    /// Heap bytes freed by the program but still held by the allocator.
    pub heap_free: Option<u64>,
}

/// Reads [`MemoryUsage`] now.
pub fn usage() -> MemoryUsage {
    let (heap_in_use, heap_free) = heap_usage().unzip();
    MemoryUsage {
        resident: resident_bytes(),
        heap_in_use,
        heap_free,
    }
}

/// glibc's own totals over every arena: (in use, free), mmapped blocks counting as in use.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_usage() -> Option<(u64, u64)> {
    // SAFETY: mallinfo2 takes no argument and only reads the allocator's own bookkeeping.
    let info = unsafe { libc::mallinfo2() };
    let in_use = info.uordblks.saturating_add(info.hblkhd);
    Some((in_use as u64, info.fordblks as u64))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_usage() -> Option<(u64, u64)> {
    None
}

/// The resident set from `/proc/self/statm` (its second field, in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size()?)
}

fn page_size() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads a system constant.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).ok().filter(|size| *size > 0)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Calls [`release_free_memory`] every `interval` until `shutdown`, off the async threads (a
/// trim walks the whole heap), and hands the [`usage`] that remains to `report` (the caller
/// exports it; this module knows nothing of metrics).
pub async fn trim_periodically(
    interval: Duration,
    shutdown: CancellationToken,
    report: impl Fn(MemoryUsage),
) {
    crate::schedule::every(interval, shutdown, || async {
        match tokio::task::spawn_blocking(|| (release_free_memory(), usage())).await {
            Ok((released, usage)) => {
                debug!(released, ?usage, "memory trimmed");
                report(usage);
            }
            Err(err) => debug!(error = %err, "memory trim task failed"),
        }
    })
    .await;
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// The allocator's figures are the whole process's: a test that frees 50 MB while another
    /// measures would make it see less than it allocated. These tests take turns.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn alone() -> std::sync::MutexGuard<'static, ()> {
        ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[test]
    fn pages_freed_by_a_burst_are_given_back() {
        let _alone = alone();
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

    #[test]
    fn usage_counts_a_live_allocation_as_heap_in_use() {
        let _alone = alone();
        let before = usage();
        let held = vec![1u8; 64 << 20];
        let during = usage();
        assert!(during.heap_in_use.unwrap() >= before.heap_in_use.unwrap() + (32 << 20));
        assert!(during.resident.unwrap() >= 64 << 20);
        assert!(during.heap_free.is_some());
        drop(held);
    }

    #[tokio::test]
    async fn each_trim_reports_what_the_process_holds() {
        let reports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let seen = reports.clone();
        let trim = tokio::spawn(trim_periodically(
            Duration::from_millis(50),
            stop.clone(),
            move |usage| seen.lock().unwrap().push(usage),
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
        trim.await.unwrap();
        let reports = reports.lock().unwrap();
        let last = reports.last().expect("at least one trim");
        assert!(last.resident.unwrap() > 0 && last.heap_in_use.unwrap() > 0);
        assert!(last.heap_free.is_some());
    }
}
