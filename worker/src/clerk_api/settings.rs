//! Where Clerk's Backend API is, the secret key, and how fast to call it.

use std::time::Duration;

use clap::Args;
use secrecy::SecretString;
use url::Url;

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
    #[arg(
        long = "clerk-secret-key",
        env = "CLERK_SECRET_KEY",
        hide_env_values = true
    )]
    pub secret_key: SecretString,

    /// Requests per second to Clerk's API: below its limits (production ~100/s, development
    /// 10/s) so a reconcile leaves room for the application's own calls.
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
            rate: 8.0,
            max_retries: 10,
            timeout: Duration::from_secs(30),
        }
    }
}

fn positive_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err("must be a number of requests per second above 0".to_owned()),
    }
}
