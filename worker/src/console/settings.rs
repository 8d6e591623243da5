//! The operator console's settings: where it listens (off unless set), the shared token that
//! guards it, and whether it may act at all.

use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use crate::config::ConfigError;

/// `CONSOLE_*`: flattened into `worker run` and `worker consume`.
#[derive(Clone, Debug, clap::Args)]
pub struct ConsoleSettings {
    /// Where the operator console listens; off unless set. A non-loopback address needs
    /// CONSOLE_TOKEN, and belongs behind TLS (the session cookie is then `Secure`).
    #[arg(long, env = "CONSOLE_ADDR")]
    pub console_addr: Option<SocketAddr>,

    /// The token operators log in with (and scripts send as `Authorization: Bearer`); compared
    /// in constant time. Required on a non-loopback CONSOLE_ADDR; without it, a loopback console
    /// asks only for the operator's name.
    #[arg(
        long = "console-token",
        env = "CONSOLE_TOKEN",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub console_token: SecretString,

    /// A file holding CONSOLE_TOKEN (a Docker or Kubernetes secret); refused beside it.
    #[arg(long, env = "CONSOLE_TOKEN_FILE", value_name = "PATH")]
    pub console_token_file: Option<PathBuf>,

    /// Hide and refuse every action (replay, discard): a console to look with.
    #[arg(
        long,
        env = "CONSOLE_READ_ONLY",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub console_read_only: bool,
}

impl ConsoleSettings {
    /// The token, when one is set.
    pub fn token(&self) -> Option<&str> {
        Some(self.console_token.expose_secret()).filter(|token| !token.is_empty())
    }

    /// Whether the console listens beyond this machine.
    pub fn is_public(&self) -> bool {
        self.console_addr
            .is_some_and(|addr| !addr.ip().is_loopback())
    }

    /// Refuses a console reachable from other machines without a token. An empty
    /// CONSOLE_TOKEN_FILE is refused: a mounted secret that came out empty must not quietly
    /// turn the token off.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.console_token_file.is_some() && self.token().is_none() {
            return Err(ConfigError::Refused {
                setting: "CONSOLE_TOKEN_FILE",
                reason: "names an empty file: the console's token cannot be empty",
            });
        }
        if self.is_public() && self.token().is_none() {
            return Err(ConfigError::ConsoleWithoutToken);
        }
        Ok(())
    }

    /// [`Self::check`], for `worker console`, which serves nothing else: CONSOLE_ADDR is
    /// required.
    pub fn check_alone(&self) -> Result<(), ConfigError> {
        if self.console_addr.is_none() {
            return Err(ConfigError::Refused {
                setting: "CONSOLE_ADDR",
                reason: "is required: `worker console` serves the console and nothing else",
            });
        }
        self.check()
    }
}
