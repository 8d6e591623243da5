//! Refusing settings that make no sense before anything starts, rather than failing (or silently
//! doing something else) later. Every message names the setting and the reason, never a secret's
//! value; the binary exits with [`EXIT_CONFIG`] on any of them, as on clap's own usage errors.

use lapin::uri::AMQPUri;
use secrecy::ExposeSecret;

use super::urls::{self, PostgresTarget, UrlError};
use super::{BrokerSettings, DatabaseSettings, IngressSettings};
use crate::webhook_secret::{SecretError, WebhookSecret};

/// Exit status for settings refused at start: clap's own status for a usage error.
pub const EXIT_CONFIG: u8 = 2;

/// Settings the process refuses to start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// clap refused the command line or the environment (or was asked for help or the version).
    #[error(transparent)]
    CommandLine(#[from] clap::Error),
    #[error("{setting} {reason}")]
    Url {
        setting: &'static str,
        reason: UrlError,
    },
    #[error(
        "DATABASE_MIN_CONNECTIONS ({min}) is above DATABASE_MAX_CONNECTIONS ({max}): the pool \
         cannot keep more connections open than it may open"
    )]
    PoolBounds { min: u32, max: u32 },
    /// Its messages name CLERK_WEBHOOK_SECRET and never quote it.
    #[error(transparent)]
    WebhookSecret(#[from] SecretError),
    #[error("{setting} and {setting}_FILE are both set: give the secret one way")]
    SecretTwice { setting: &'static str },
    #[error(
        "CONSOLE_ADDR is not a loopback address and CONSOLE_TOKEN is not set: the operator \
         console replays and discards dead letters, so it needs a token beyond this machine"
    )]
    ConsoleWithoutToken,
    #[error("{setting}_FILE ({path}) cannot be read: {reason}")]
    SecretFile {
        setting: &'static str,
        path: String,
        reason: String,
    },
    /// A setting out of its range, or missing: which, and why.
    #[error("{setting} {reason}")]
    Refused {
        setting: &'static str,
        reason: &'static str,
    },
}

impl ConfigError {
    /// The process's exit status: clap's for its own errors (0 after `--help`), otherwise 2.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::CommandLine(err) => u8::try_from(err.exit_code()).unwrap_or(EXIT_CONFIG),
            _ => EXIT_CONFIG,
        }
    }

    /// Prints the error as clap prints its own (help and version to stdout, errors to stderr).
    pub fn print(&self) {
        match self {
            Self::CommandLine(err) => {
                let _ = err.print();
            }
            other => eprintln!("error: {other}"),
        }
    }
}

impl DatabaseSettings {
    /// The URL without its password, for sea-orm, and the password on its own.
    pub fn target(&self) -> Result<PostgresTarget, ConfigError> {
        urls::postgres(self.expose_url()).map_err(|reason| ConfigError::Url {
            setting: "DATABASE_URL (--database-url)",
            reason,
        })
    }

    /// A usable URL, and a pool minimum no larger than its maximum.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.target()?;
        if self.min_connections > self.max_connections {
            return Err(ConfigError::PoolBounds {
                min: self.min_connections,
                max: self.max_connections,
            });
        }
        Ok(())
    }
}

impl BrokerSettings {
    /// The nodes of AMQP_URL (one URL, or several separated by commas), parsed into the form
    /// lapin connects with, in the order given.
    pub fn amqp_nodes(&self) -> Result<Vec<BrokerNode>, ConfigError> {
        self.expose_url()
            .split(',')
            .map(|url| {
                let uri = urls::amqp(url.trim()).map_err(|reason| ConfigError::Url {
                    setting: "AMQP_URL (--amqp-url)",
                    reason,
                })?;
                let name = format!("{}:{}", uri.authority.host, uri.authority.port);
                Ok(BrokerNode { uri, name })
            })
            .collect()
    }

    /// Usable URLs.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.amqp_nodes().map(drop)
    }
}

/// One node of the broker: where to connect, and how logs and `/readyz` name it (host and
/// port; never the credentials).
#[derive(Clone, Debug)]
pub struct BrokerNode {
    pub uri: AMQPUri,
    pub name: String,
}

impl IngressSettings {
    /// The webhook signing secret(s), decoded: what the ingress verifies signatures with.
    pub fn webhook_secret(&self) -> Result<WebhookSecret, ConfigError> {
        Ok(WebhookSecret::parse(
            self.clerk_webhook_secret.expose_secret(),
        )?)
    }

    /// A signing secret is set and decodes, and the body memory can hold the largest body.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.ingress_max_body_memory < self.ingress_max_body {
            return Err(ConfigError::Refused {
                setting: "INGRESS_MAX_BODY_MEMORY",
                reason: "is below INGRESS_MAX_BODY: no body of the largest size could ever be read",
            });
        }
        self.webhook_secret().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_minimum_above_its_maximum_is_refused() {
        let mut settings = DatabaseSettings::for_url("postgres://h/db");
        settings.min_connections = 9;
        settings.max_connections = 4;
        let err = settings.check().unwrap_err();
        assert!(err.to_string().contains("DATABASE_MIN_CONNECTIONS (9)"));
        assert_eq!(err.exit_code(), EXIT_CONFIG);
        settings.min_connections = 4;
        assert!(settings.check().is_ok());
    }

    #[test]
    fn url_errors_name_the_setting_and_never_the_value() {
        let err = DatabaseSettings::for_url("postgres://u:pa/ssZq7Xk9@h/db")
            .check()
            .unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("DATABASE_URL (--database-url) is not a URL"));
        assert!(!message.contains("Zq7Xk9"), "{message}");
        let err = BrokerSettings::with_prefix("amqp:guest:Zq7Xk9@h:5672/%2f", "")
            .check()
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("AMQP_URL (--amqp-url) has no `//`")
        );
        assert!(!err.to_string().contains("Zq7Xk9"));
    }
}
