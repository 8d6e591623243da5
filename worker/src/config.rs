//! Settings from environment variables, each with a matching CLI flag (clap `env`).
//!
//! Defaults are the product's: they work against a local PostgreSQL. Secrets (the database URL
//! may carry a password) are hidden from `--help` and never logged unredacted.

use std::time::Duration;

use clap::{Args, ValueEnum};

/// How the service reaches PostgreSQL. The pool numbers are the product's pool settings.
#[derive(Clone, Args)]
pub struct DatabaseSettings {
    /// PostgreSQL URL; `worker migrate` creates the named database if it does not exist.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/provisioning",
        hide_env_values = true,
        global = true
    )]
    pub url: String,

    /// Most connections the pool opens.
    #[arg(
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 20,
        global = true
    )]
    pub max_connections: u32,

    /// How long to wait for a connection (opening one, or taking one from the pool).
    #[arg(
        long = "database-connect-timeout",
        env = "DATABASE_CONNECT_TIMEOUT",
        default_value = "10s",
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub connect_timeout: Duration,

    /// How long an unused pooled connection stays open.
    #[arg(
        long = "database-idle-timeout",
        env = "DATABASE_IDLE_TIMEOUT",
        default_value = "30s",
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub idle_timeout: Duration,
}

impl DatabaseSettings {
    /// The settings with defaults, pointed at `url`: what tests and tools start from.
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 20,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }

    /// The URL with any password replaced, fit for logs and error messages.
    pub fn redacted_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut parsed) if parsed.password().is_some() => {
                let _ = parsed.set_password(Some("***"));
                parsed.to_string()
            }
            Ok(parsed) => parsed.to_string(),
            Err(_) => "<unparseable DATABASE_URL>".to_owned(),
        }
    }
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.redacted_url())
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// How log lines are written (to stderr; stdout is for command output).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_appear_in_the_redacted_url() {
        let settings = DatabaseSettings::for_url("postgres://app:s3cret@db:5432/provisioning");
        assert_eq!(
            settings.redacted_url(),
            "postgres://app:***@db:5432/provisioning"
        );
        assert!(!format!("{settings:?}").contains("s3cret"));
    }
}
