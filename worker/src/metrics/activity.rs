//! How fast events end and how many of them fail, over the last minute: the console's overview
//! shows it from the process itself, so an operator without Grafana still sees whether the
//! consumer moves and whether it is dead-lettering.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The span the rates cover (at least; up to one upkeep interval more).
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Running totals, and a sample of them at each metrics upkeep.
#[derive(Debug)]
pub struct Activity {
    ended: AtomicU64,
    dead_lettered: AtomicU64,
    retried: AtomicU64,
    samples: Mutex<VecDeque<Sample>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    ended: u64,
    dead_lettered: u64,
    retried: u64,
}

/// Rates over the last [`RATE_WINDOW`] (or since the process started, when younger).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecentRates {
    /// The span the rates cover.
    pub over: Duration,
    /// Events that ended (provisioned, skipped or dead-lettered) per second.
    pub events_per_second: f64,
    /// Events that ended in the dead-letter queue per second.
    pub dead_lettered_per_second: f64,
    /// Retries scheduled per second.
    pub retries_per_second: f64,
    /// Dead-lettered among the events that ended, 0 to 1; 0 when none ended.
    pub failed_share: f64,
}

impl Activity {
    /// Totals at zero, sampled at `now` (the start of the first window).
    pub fn new(now: Instant) -> Self {
        let activity = Self {
            ended: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            samples: Mutex::default(),
        };
        activity.sample(now);
        activity
    }

    /// An event ended: provisioned, skipped, or (through [`Self::dead_lettered`]) dead-lettered.
    pub fn ended(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
    }

    /// An event ended in the dead-letter queue.
    pub fn dead_lettered(&self) {
        self.ended();
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// A retry was scheduled.
    pub fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self, at: Instant) -> Sample {
        Sample {
            at,
            ended: self.ended.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
        }
    }

    /// Keeps the totals as of `now`, and drops samples the window no longer needs: the oldest
    /// kept is the newest at least [`RATE_WINDOW`] old.
    pub fn sample(&self, now: Instant) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.push_back(self.read(now));
        while samples
            .get(1)
            .is_some_and(|next| now.duration_since(next.at) >= RATE_WINDOW)
        {
            samples.pop_front();
        }
    }

    /// The rates from the oldest kept sample to the totals now.
    pub fn rates(&self, now: Instant) -> RecentRates {
        let since = self
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .front()
            .copied()
            .unwrap_or_else(|| self.read(now));
        let current = self.read(now);
        let over = now.duration_since(since.at);
        let per_second = |delta: u64| match over.as_secs_f64() {
            seconds if seconds > 0.0 => delta as f64 / seconds,
            _ => 0.0,
        };
        let ended = current.ended.saturating_sub(since.ended);
        // The totals are read one after the other: a dead letter counted in one may not be
        // counted as ended yet.
        let dead_lettered = current
            .dead_lettered
            .saturating_sub(since.dead_lettered)
            .min(ended);
        RecentRates {
            over,
            events_per_second: per_second(ended),
            dead_lettered_per_second: per_second(dead_lettered),
            retries_per_second: per_second(current.retried.saturating_sub(since.retried)),
            failed_share: if ended == 0 {
                0.0
            } else {
                dead_lettered as f64 / ended as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_cover_the_last_minute_not_the_whole_life() {
        let start = Instant::now();
        let activity = Activity::new(start);
        for _ in 0..600 {
            activity.ended();
        }
        for step in 1..=24 {
            activity.sample(start + Duration::from_secs(5 * step));
        }
        // 120 s in: the 600 early events are older than the window.
        for _ in 0..30 {
            activity.ended();
        }
        for _ in 0..10 {
            activity.dead_lettered();
        }
        activity.retried();
        let rates = activity.rates(start + Duration::from_secs(120));
        assert_eq!(rates.over, Duration::from_secs(60));
        assert!((rates.events_per_second - 40.0 / 60.0).abs() < 1e-9);
        assert!((rates.dead_lettered_per_second - 10.0 / 60.0).abs() < 1e-9);
        assert!((rates.retries_per_second - 1.0 / 60.0).abs() < 1e-9);
        assert!((rates.failed_share - 0.25).abs() < 1e-9);
    }

    #[test]
    fn a_young_process_counts_since_it_started() {
        let start = Instant::now();
        let activity = Activity::new(start);
        for _ in 0..20 {
            activity.ended();
        }
        let rates = activity.rates(start + Duration::from_secs(10));
        assert_eq!(rates.over, Duration::from_secs(10));
        assert!((rates.events_per_second - 2.0).abs() < 1e-9);
        assert_eq!(rates.failed_share, 0.0);
    }

    #[test]
    fn nothing_ended_is_no_failure() {
        let start = Instant::now();
        let rates = Activity::new(start).rates(start);
        assert_eq!(rates.events_per_second, 0.0);
        assert_eq!(rates.failed_share, 0.0);
    }
}
