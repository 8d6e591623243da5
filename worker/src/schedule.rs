//! Background work on a fixed schedule (metrics upkeep, memory trim): one loop, so each such
//! task says only what it does.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `tick` now and then every `interval` until `shutdown`; a late tick delays the next ones
/// rather than bunching them.
pub async fn every<F, Fut>(interval: Duration, shutdown: CancellationToken, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        // A tick still running at shutdown is abandoned (a query on a silent database would
        // otherwise hold the stop past its grace period): each must be safe to drop halfway.
        tokio::select! {
            () = tick() => {}
            () = shutdown.cancelled() => return,
        }
    }
}
