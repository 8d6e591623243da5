//! Where Clerk's Backend API is, the secret key, and how fast to call it.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use url::{Host, Url};

use crate::config::ConfigError;

/// How the worker reaches Clerk's Backend API (`worker reconcile`).
#[derive(Clone, Debug, Args)]
pub struct ClerkApiSettings {
    /// Base URL of Clerk's Backend API.
    #[arg(
        long = "clerk-api-url",
        env = "CLERK_API_URL",
        default_value = "https://api.clerk.com"
    )]
    pub api_url: Url,

    /// The instance's secret key (`sk_live_...`); sent only as the bearer token, never printed.
    /// Required, here or as CLERK_SECRET_KEY_FILE.
    #[arg(
        long = "clerk-secret-key",
        env = "CLERK_SECRET_KEY",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub secret_key: SecretString,

    /// A file holding CLERK_SECRET_KEY (a Docker or Kubernetes secret); refused beside it.
    #[arg(
        long = "clerk-secret-key-file",
        env = "CLERK_SECRET_KEY_FILE",
        value_name = "PATH"
    )]
    pub secret_key_file: Option<PathBuf>,

    /// Requests per second to Clerk's API, at most 1000: below its limits (1,000 requests per
    /// 10 s in production, 100 in development, per key and shared with the application's own
    /// calls) so a reconcile leaves them room.
    #[arg(long = "clerk-api-rate", env = "CLERK_API_RATE", default_value_t = 8.0, value_parser = positive_rate)]
    pub rate: f64,

    /// Retries of one request after a 429, a 5xx or a network error before giving up.
    #[arg(
        long = "clerk-api-max-retries",
        env = "CLERK_API_MAX_RETRIES",
        default_value_t = 10
    )]
    pub max_retries: u32,

    /// Timeout of one request to Clerk's API.
    #[arg(
        long = "clerk-api-timeout",
        env = "CLERK_API_TIMEOUT",
        default_value = "30s",
        value_parser = humantime::parse_duration
    )]
    pub timeout: Duration,
}

impl ClerkApiSettings {
    /// The defaults pointed at `api_url` with `secret_key`: what tests start from.
    pub fn new(api_url: Url, secret_key: impl Into<String>) -> Self {
        Self {
            api_url,
            secret_key: SecretString::from(secret_key.into()),
            secret_key_file: None,
            rate: 8.0,
            max_retries: 10,
            timeout: Duration::from_secs(30),
        }
    }
}

impl ClerkApiSettings {
    /// A key is set, and it would never travel in clear: `http://` only to this machine.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.secret_key.expose_secret().is_empty() {
            return Err(ConfigError::Refused {
                setting: "CLERK_SECRET_KEY",
                reason: "is required (or CLERK_SECRET_KEY_FILE)",
            });
        }
        if self.api_url.scheme() != "https" && !is_loopback(&self.api_url) {
            return Err(ConfigError::Refused {
                setting: "CLERK_API_URL",
                reason: "must be https:// (http:// only to a loopback address): the secret key would travel in clear",
            });
        }
        Ok(())
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The most requests per second allowed: Clerk's production limit, 1,000 per 10 s, is 100/s,
/// so anything above this is a typo.
const MAX_RATE: f64 = 1000.0;

fn positive_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= MAX_RATE => Ok(rate),
        _ => Err(format!(
            "must be a number of requests per second above 0 and at most {MAX_RATE}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> ClerkApiSettings {
        ClerkApiSettings::new(url.parse().unwrap(), "sk_test_key")
    }

    #[test]
    fn http_is_refused_unless_the_api_is_on_this_machine() {
        assert!(settings("https://api.clerk.com").check().is_ok());
        for local in [
            "http://127.0.0.1:4000",
            "http://localhost:4000",
            "http://[::1]:4000",
        ] {
            assert!(settings(local).check().is_ok(), "{local}");
        }
        let err = settings("http://api.clerk.com").check().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("CLERK_API_URL must be https://")
        );
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn a_missing_key_is_refused() {
        let mut missing = settings("https://api.clerk.com");
        missing.secret_key = SecretString::from(String::new());
        let err = missing.check().unwrap_err();
        assert_eq!(
            err.to_string(),
            "CLERK_SECRET_KEY is required (or CLERK_SECRET_KEY_FILE)"
        );
    }

    #[test]
    fn the_rate_has_bounds() {
        assert_eq!(positive_rate("8"), Ok(8.0));
        assert_eq!(positive_rate("1000"), Ok(1000.0));
        for bad in ["0", "-1", "1001", "NaN", "inf", "fast"] {
            assert!(positive_rate(bad).is_err(), "{bad}");
        }
    }
}
