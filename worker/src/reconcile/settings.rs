//! How reconcile repairs and holds its lease (`worker reconcile` and the schedule alike), and
//! when `worker run` / `worker consume` run it on their own.

use std::time::Duration;

use clap::Args;
use secrecy::ExposeSecret;

use crate::clerk_api::ClerkApiSettings;
use crate::config::ConfigError;

/// Shared by `worker reconcile` and the schedule.
#[derive(Clone, Debug, Args)]
pub struct RepairSettings {
    /// Most orphans deleted in one run, as a fraction of the users table.
    #[arg(long, env = "RECONCILE_MAX_DELETE_FRACTION", default_value_t = 0.01, value_parser = fraction)]
    pub max_delete_fraction: f64,
    /// Users provisioned at once while applying.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// How long the reconcile lease lasts without renewal (renewed every third of it): a holder
    /// killed mid-run is replaced within this, and a holder cut off from the database stops
    /// writing within it.
    #[arg(
        long,
        env = "RECONCILE_LEASE_TTL",
        default_value = "30s",
        value_parser = lease_ttl
    )]
    pub lease_ttl: Duration,
}

/// The reconcile schedule of `worker run` and `worker consume`: on when CLERK_SECRET_KEY is set
/// and RECONCILE_INTERVAL is not `off`.
#[derive(Clone, Debug, Args)]
pub struct ScheduleSettings {
    #[command(flatten)]
    pub clerk: ClerkApiSettings,
    #[command(flatten)]
    pub repair: RepairSettings,
    /// Time between reconcile runs across all replicas (each waits a further 0-10 % at random),
    /// or `off`. A missed webhook is repaired within one interval plus one run.
    #[arg(
        long = "reconcile-interval",
        env = "RECONCILE_INTERVAL",
        default_value = "1h",
        value_parser = interval
    )]
    pub interval: Interval,
    /// Let scheduled runs delete orphans (rows of users Clerk no longer has), under
    /// RECONCILE_MAX_DELETE_FRACTION; off by default: they are reported only.
    #[arg(
        long = "reconcile-delete-orphans",
        env = "RECONCILE_DELETE_ORPHANS",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub delete_orphans: bool,
}

/// RECONCILE_INTERVAL: a duration, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval(pub Option<Duration>);

impl ScheduleSettings {
    /// The interval when the schedule is on: a key is set and the interval is not `off`.
    pub fn interval(&self) -> Option<Duration> {
        match self.clerk.secret_key.expose_secret().is_empty() {
            true => None,
            false => self.interval.0,
        }
    }

    /// The Clerk settings are checked only when the schedule would use them.
    pub fn check(&self) -> Result<(), ConfigError> {
        match self.interval() {
            Some(_) => self.clerk.check(),
            None => Ok(()),
        }
    }
}

/// The shortest interval: a run every few seconds only makes sense in tests, and less would
/// busy-loop on the runs table.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

fn interval(raw: &str) -> Result<Interval, String> {
    if raw.trim().eq_ignore_ascii_case("off") {
        return Ok(Interval(None));
    }
    let duration = humantime::parse_duration(raw).map_err(|err| err.to_string())?;
    if duration < MIN_INTERVAL {
        return Err(format!("must be `off` or at least {MIN_INTERVAL:?}"));
    }
    Ok(Interval(Some(duration)))
}

/// The shortest lease: renewals go every third of it, and each is a database round trip.
const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

fn lease_ttl(raw: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(raw).map_err(|err| err.to_string())?;
    match duration >= MIN_LEASE_TTL {
        true => Ok(duration),
        false => Err(format!("must be at least {MIN_LEASE_TTL:?}")),
    }
}

/// A fraction: a number from 0 to 1 (`NaN`, `inf` and 2 are refused). Also the bench's parser.
pub fn fraction(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err("must be a number from 0 to 1".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_a_duration_or_off() {
        assert_eq!(
            interval("1h"),
            Ok(Interval(Some(Duration::from_secs(3600))))
        );
        assert_eq!(interval("off"), Ok(Interval(None)));
        assert_eq!(interval("OFF"), Ok(Interval(None)));
        assert!(interval("10ms").is_err());
        assert!(interval("hourly").is_err());
    }

    #[test]
    fn the_lease_lasts_at_least_a_second() {
        assert_eq!(lease_ttl("30s"), Ok(Duration::from_secs(30)));
        assert!(lease_ttl("100ms").is_err());
    }

    #[test]
    fn a_fraction_is_from_0_to_1() {
        assert_eq!(fraction("0.01"), Ok(0.01));
        for bad in ["NaN", "inf", "2", "-0.1", "much"] {
            assert!(fraction(bad).is_err(), "{bad}");
        }
    }
}
