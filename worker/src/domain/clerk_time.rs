use chrono::{DateTime, Utc};

use crate::error::{FailureReason, Rejected};

/// A point on Clerk's clock (milliseconds since the epoch in payloads): what event ordering is
/// decided by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClerkTime(DateTime<Utc>);

impl ClerkTime {
    pub fn from_millis(millis: i64) -> Result<Self, Rejected> {
        DateTime::from_timestamp_millis(millis)
            .filter(|t| t.timestamp() >= 0)
            .map(Self)
            .ok_or_else(|| {
                Rejected::new(
                    FailureReason::InvalidPayload,
                    format!("timestamp {millis} is not a time in milliseconds"),
                )
            })
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
        assert!(ClerkTime::from_millis(-1).is_err());
        assert!(ClerkTime::from_millis(i64::MAX).is_err());
    }
}
