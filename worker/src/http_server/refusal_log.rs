//! Warnings about refused requests, at most one line per interval: anyone can send requests
//! that are refused, as fast as they like, and a line for each would let them fill the disk
//! and bury everything else in the log. The first refusal after a quiet interval is logged at
//! once; the ones after it are counted by reason and reported together on the next line. The
//! exact figures are in `webhook_refused_total`. The handler keeps one (unverified requests
//! it refused) and each server one (431s), so at most one line per interval comes from each.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

/// How often a line about refused requests may be written.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Refusals not yet reported, by reason, and when the last line was written.
pub struct RefusalLog {
    every: Duration,
    state: Mutex<Unreported>,
}

#[derive(Default)]
struct Unreported {
    last_line: Option<Instant>,
    counts: BTreeMap<&'static str, u64>,
}

impl RefusalLog {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::default(),
        }
    }

    /// Counts a refusal; writes a line (with every reason counted since the last one, and this
    /// refusal's detail) if none was written for an interval. True if it wrote one.
    pub fn refused(&self, status: u16, reason: &'static str, detail: &dyn Display) -> bool {
        let counts = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            *state.counts.entry(reason).or_default() += 1;
            if state.last_line.is_some_and(|at| at.elapsed() < self.every) {
                return false;
            }
            state.last_line = Some(Instant::now());
            std::mem::take(&mut state.counts)
        };
        warn!(
            status,
            error = reason,
            %detail,
            refused = ?counts,
            every_s = self.every.as_secs(),
            "requests refused (counts by reason since the last such line; at most one line per interval)"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_writes_one_line_per_interval() {
        let log = RefusalLog::new(Duration::from_millis(200));
        assert!(
            log.refused(401, "signature_mismatch", &"first"),
            "the first at once"
        );
        let written = (0..10_000)
            .filter(|_| log.refused(401, "signature_mismatch", &"again"))
            .count();
        assert_eq!(written, 0, "none more within the interval");
        std::thread::sleep(Duration::from_millis(250));
        assert!(log.refused(408, "body_timeout", &"later"));
        let state = log.state.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(state.counts.is_empty(), "the counts went into that line");
    }
}
