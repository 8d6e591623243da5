//! Clerk's timestamps, which decide whether an event is older than what is stored.

use chrono::{DateTime, Utc};

use super::Invalid;

/// A point on Clerk's clock (milliseconds since the epoch in payloads): what event ordering is
/// decided by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClerkTime(DateTime<Utc>);

impl ClerkTime {
    pub fn from_millis(millis: i64) -> Result<Self, Invalid> {
        DateTime::from_timestamp_millis(millis)
            .filter(|t| t.timestamp() >= 0)
            .map(Self)
            .ok_or(Invalid::ClerkTime(millis))
    }

    pub fn as_datetime(self) -> DateTime<Utc> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_are_kept_exactly() {
        let t = ClerkTime::from_millis(1_764_300_005_000).unwrap();
        assert_eq!(t.as_datetime().timestamp_millis(), 1_764_300_005_000);
    }

    #[test]
    fn negative_and_absurd_times_are_rejected() {
        for millis in [-1, i64::MAX] {
            let err = ClerkTime::from_millis(millis).unwrap_err();
            assert_eq!(err, Invalid::ClerkTime(millis));
        }
    }
}
