//! Settings from environment variables, each with a matching CLI flag (clap `env`).
//!
//! Defaults are the product's: they work against a local PostgreSQL. Secrets (the URLs may carry
//! a password; the webhook signing secret) are [`SecretString`]s: hidden from `--help`, redacted
//! by their `Debug`, and read only where they are used (`expose_*`). The URLs are parsed by our
//! code ([`urls`]), and settings that make no sense are refused at start ([`check`]).

mod check;
mod secret_files;
mod urls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Args, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

use crate::topology::{self, RetryRoute, Topology};

pub use check::{BrokerNode, ConfigError, EXIT_CONFIG};
pub use secret_files::Secret;
pub use urls::{PostgresTarget, UrlError};

/// A [`DefaultDuration`] of whole seconds: `seconds!(10)` is `"10s"` and 10 s.
macro_rules! seconds {
    ($secs:literal) => {
        DefaultDuration {
            text: concat!($secs, "s"),
            value: Duration::from_secs($secs),
        }
    };
}

/// A default duration in the two forms it is needed in: the text clap parses (and `--help`
/// shows), and the value code starts from. Written with `seconds!`, so both come from one number.
struct DefaultDuration {
    text: &'static str,
    value: Duration,
}

// The pool's defaults, written once: clap applies them, and `DatabaseSettings::for_url` starts
// from them.
const DEFAULT_MAX_CONNECTIONS: u32 = 20;
const DEFAULT_MIN_CONNECTIONS: u32 = 8;
const DEFAULT_CONNECT_TIMEOUT: DefaultDuration = seconds!(10);
const DEFAULT_IDLE_TIMEOUT: DefaultDuration = seconds!(30);
const DEFAULT_STATEMENT_TIMEOUT: DefaultDuration = seconds!(15);
const DEFAULT_LOCK_TIMEOUT: DefaultDuration = seconds!(5);
const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT: DefaultDuration = seconds!(30);

/// How the service reaches PostgreSQL. The pool numbers are the product's pool settings.
#[derive(Clone, Debug, Args)]
pub struct DatabaseSettings {
    /// PostgreSQL URL; `worker migrate` creates the named database if it does not exist.
    /// Percent-encode `/ ? # %` in the user name or password (a raw `@` in the password is
    /// fine: the last `@` ends it); `?password=` works too; parameters sqlx does not know are
    /// refused.
    #[arg(
        id = "database_url",
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/provisioning",
        hide_env_values = true,
        global = true
    )]
    pub url: SecretString,

    /// A file holding DATABASE_URL (a Docker or Kubernetes secret); refused beside it.
    #[arg(
        id = "database_url_file",
        long = "database-url-file",
        env = "DATABASE_URL_FILE",
        value_name = "PATH",
        global = true
    )]
    pub url_file: Option<PathBuf>,

    /// Most connections the pool opens (at least 1).
    #[arg(
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        value_name = "DATABASE_MAX_CONNECTIONS",
        default_value_t = DEFAULT_MAX_CONNECTIONS,
        value_parser = at_least_one::<u32>,
        global = true
    )]
    pub max_connections: u32,

    /// Connections the pool opens at start and keeps open while idle, so the first sign-ups
    /// after a start or a quiet spell do not each pay for a new connection. Refused above the
    /// maximum.
    #[arg(
        long = "database-min-connections",
        env = "DATABASE_MIN_CONNECTIONS",
        value_name = "DATABASE_MIN_CONNECTIONS",
        default_value_t = DEFAULT_MIN_CONNECTIONS,
        global = true
    )]
    pub min_connections: u32,

    /// How long to wait for a connection (opening one, or taking one from the pool).
    #[arg(
        long = "database-connect-timeout",
        env = "DATABASE_CONNECT_TIMEOUT",
        default_value = DEFAULT_CONNECT_TIMEOUT.text,
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub connect_timeout: Duration,

    /// How long an unused pooled connection stays open.
    #[arg(
        long = "database-idle-timeout",
        env = "DATABASE_IDLE_TIMEOUT",
        default_value = DEFAULT_IDLE_TIMEOUT.text,
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub idle_timeout: Duration,

    /// `DATABASE_URL` is a PgBouncer in transaction pooling mode: PgBouncer (1.18) hands each
    /// transaction whichever server connection is free, and keeps no prepared statement of a
    /// client from one transaction to the next. Every statement then runs inside a transaction
    /// of its own that first clears the statements other clients left on that server
    /// connection, and none is cached. Off: statements are prepared once per connection and
    /// reused, as PostgreSQL allows. Migrations ignore it: they need PostgreSQL's own address.
    #[arg(
        long = "database-pgbouncer",
        env = "DATABASE_PGBOUNCER",
        value_name = "BOOL",
        default_value_t = false,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    pub pgbouncer: bool,

    /// Longest a statement may run before PostgreSQL cancels it (`statement_timeout`; 0 = no
    /// limit). Applies to the service's connections, never to migrations.
    #[arg(
        long = "database-statement-timeout",
        env = "DATABASE_STATEMENT_TIMEOUT",
        default_value = DEFAULT_STATEMENT_TIMEOUT.text,
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub statement_timeout: Duration,

    /// Longest a statement waits for a lock, a user's row or the per-user lock, before
    /// PostgreSQL gives up (`lock_timeout`; 0 = no limit): the event is then retried with its
    /// budget, and other users' events keep flowing meanwhile.
    #[arg(
        long = "database-lock-timeout",
        env = "DATABASE_LOCK_TIMEOUT",
        default_value = DEFAULT_LOCK_TIMEOUT.text,
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub lock_timeout: Duration,

    /// A session idle inside an open transaction this long is ended by PostgreSQL
    /// (`idle_in_transaction_session_timeout`; 0 = no limit), so a worker that hangs mid-
    /// transaction cannot hold a user's locks for ever. Reconcile's read-only run is exempt.
    #[arg(
        long = "database-idle-in-transaction-timeout",
        env = "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
        default_value = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT.text,
        value_parser = humantime::parse_duration,
        global = true
    )]
    pub idle_in_transaction_timeout: Duration,
}

impl DatabaseSettings {
    /// The settings with defaults, pointed at `url`: what tests and tools start from.
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            url_file: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            min_connections: DEFAULT_MIN_CONNECTIONS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT.value,
            idle_timeout: DEFAULT_IDLE_TIMEOUT.value,
            pgbouncer: false,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT.value,
            lock_timeout: DEFAULT_LOCK_TIMEOUT.value,
            idle_in_transaction_timeout: DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT.value,
        }
    }

    /// The session settings PostgreSQL enforces on the service's connections, by name, in
    /// milliseconds (0 = no limit).
    pub fn server_timeouts(&self) -> [(&'static str, u128); 3] {
        [
            ("statement_timeout", self.statement_timeout.as_millis()),
            ("lock_timeout", self.lock_timeout.as_millis()),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction_timeout.as_millis(),
            ),
        ]
    }

    /// The URL, password included: only for connecting.
    pub fn expose_url(&self) -> &str {
        self.url.expose_secret()
    }

    /// The URL with any password replaced, fit for logs and error messages.
    pub fn redacted_url(&self) -> String {
        redact(self.expose_url())
    }
}

/// Where the broker is and what the topology is called. Every name is configurable, and a
/// prefix lets tests (or several environments on one broker) keep their topologies apart.
#[derive(Clone, Debug, Args)]
pub struct BrokerSettings {
    /// RabbitMQ URL (`amqp://user:password@host:port/vhost`); credentials are encoded as in
    /// DATABASE_URL. Several URLs separated by commas are the nodes of one cluster: the process
    /// connects to one of them and fails over to the next on a lost connection.
    #[arg(
        id = "amqp_url",
        long = "amqp-url",
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        global = true
    )]
    pub url: SecretString,

    /// A file holding AMQP_URL (a Docker or Kubernetes secret); refused beside it.
    #[arg(
        id = "amqp_url_file",
        long = "amqp-url-file",
        env = "AMQP_URL_FILE",
        value_name = "PATH",
        global = true
    )]
    pub url_file: Option<PathBuf>,

    /// Which node of AMQP_URL to try first: `random` (connections spread over the cluster) or
    /// `listed` (the order given; tests and pinned deployments use it).
    #[arg(
        long = "amqp-node-order",
        env = "AMQP_NODE_ORDER",
        value_enum,
        default_value_t = NodeOrder::Random,
        global = true
    )]
    pub node_order: NodeOrder,

    /// `x-quorum-initial-group-size` of the queues, sent only when set. The broker compares it
    /// on every redeclaration (a different value is refused), and RabbitMQ already gives a new
    /// quorum queue up to 3 members (`quorum_cluster_size`), so leave it unset unless the
    /// queues were declared with it.
    #[arg(
        long = "amqp-quorum-initial-group-size",
        env = "AMQP_QUORUM_INITIAL_GROUP_SIZE",
        value_parser = clap::value_parser!(u16).range(1..),
        global = true
    )]
    pub quorum_initial_group_size: Option<u16>,

    /// Prepended to every exchange and queue name below.
    #[arg(
        long = "amqp-name-prefix",
        env = "AMQP_NAME_PREFIX",
        default_value = "",
        global = true
    )]
    pub name_prefix: String,

    /// Durable topic exchange Clerk events are published to (routing key = event type).
    #[arg(
        long = "amqp-exchange",
        env = "AMQP_EXCHANGE",
        default_value = topology::DEFAULT_EXCHANGE,
        global = true
    )]
    pub exchange: String,

    /// Quorum queue the worker consumes.
    #[arg(
        long = "amqp-queue",
        env = "AMQP_QUEUE",
        default_value = topology::DEFAULT_QUEUE,
        global = true
    )]
    pub queue: String,

    /// Binding of the queue to the exchange.
    #[arg(
        long = "amqp-binding-key",
        env = "AMQP_BINDING_KEY",
        default_value = topology::DEFAULT_BINDING_KEY,
        global = true
    )]
    pub binding_key: String,

    /// Exchange dead letters go to.
    #[arg(
        long = "amqp-dead-letter-exchange",
        env = "AMQP_DEAD_LETTER_EXCHANGE",
        default_value = topology::DEFAULT_DEAD_LETTER_EXCHANGE,
        global = true
    )]
    pub dead_letter_exchange: String,

    /// Quorum queue holding dead letters for operators.
    #[arg(
        long = "amqp-dead-letter-queue",
        env = "AMQP_DEAD_LETTER_QUEUE",
        default_value = topology::DEFAULT_DEAD_LETTER_QUEUE,
        global = true
    )]
    pub dead_letter_queue: String,

    /// Deliveries of one message before the broker dead-letters it (`x-delivery-limit`): the
    /// guard against a message that crashes the worker again and again.
    #[arg(
        long = "amqp-delivery-limit",
        env = "AMQP_DELIVERY_LIMIT",
        default_value_t = topology::DEFAULT_DELIVERY_LIMIT,
        global = true
    )]
    pub delivery_limit: u32,
}

impl BrokerSettings {
    /// The settings with defaults, pointed at `url` with `prefix`: what tests start from.
    pub fn with_prefix(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            url_file: None,
            name_prefix: prefix.into(),
            exchange: topology::DEFAULT_EXCHANGE.into(),
            queue: topology::DEFAULT_QUEUE.into(),
            binding_key: topology::DEFAULT_BINDING_KEY.into(),
            dead_letter_exchange: topology::DEFAULT_DEAD_LETTER_EXCHANGE.into(),
            dead_letter_queue: topology::DEFAULT_DEAD_LETTER_QUEUE.into(),
            delivery_limit: topology::DEFAULT_DELIVERY_LIMIT,
            node_order: NodeOrder::Listed,
            quorum_initial_group_size: None,
        }
    }

    /// The URL, password included: only for connecting.
    pub fn expose_url(&self) -> &str {
        self.url.expose_secret()
    }

    /// The URL (every node's) with any password replaced, fit for logs.
    pub fn redacted_url(&self) -> String {
        self.expose_url()
            .split(',')
            .map(|url| redact(url.trim()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Topology {
    /// The names `settings` give, with their prefix applied (the binding key excepted: it
    /// matches routing keys, which carry no prefix).
    pub fn from_settings(settings: &BrokerSettings) -> Self {
        let prefixed = |name: &str| format!("{}{name}", settings.name_prefix);
        let queue = prefixed(&settings.queue);
        Self {
            exchange: prefixed(&settings.exchange),
            retry: RetryRoute::for_queue(&queue),
            queue,
            binding_key: settings.binding_key.clone(),
            dead_letter_exchange: prefixed(&settings.dead_letter_exchange),
            dead_letter_queue: prefixed(&settings.dead_letter_queue),
            delivery_limit: settings.delivery_limit,
            quorum_initial_group_size: settings.quorum_initial_group_size,
        }
    }
}

/// The order in which a process tries the nodes of AMQP_URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NodeOrder {
    /// Start at a random node, then the next ones, wrapping around.
    Random,
    /// Always the first reachable node in the order given.
    Listed,
}

/// How the consumer takes and retries deliveries.
#[derive(Clone, Debug, Args)]
pub struct ConsumerSettings {
    /// Unacknowledged deliveries the broker sends ahead (`basic.qos`), at least 1: AMQP reads 0
    /// as no limit at all.
    #[arg(long, env = "PREFETCH", default_value_t = 64, value_parser = prefetch_count)]
    pub prefetch: u16,

    /// Provisionings (single events or batches) running at once (at least 1).
    #[arg(long, env = "MAX_CONCURRENCY", default_value_t = 16, value_parser = at_least_one::<usize>)]
    pub max_concurrency: usize,

    /// Most deliveries provisioned together in one transaction. Only deliveries the broker
    /// has already sent are grouped (nothing waits to fill a batch); 1 turns batching off.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256).map(usize::from))]
    pub batch_size: usize,

    /// First retry delay; each further retry doubles it (full jitter).
    #[arg(long, env = "RETRY_INITIAL_DELAY", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub retry_initial_delay: Duration,

    /// Longest retry delay. A conflict waits in the delay queue nearest its delay among those
    /// not above this one (100 ms up to 30 min, about 3x apart).
    #[arg(long, env = "RETRY_MAX_DELAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub retry_max_delay: Duration,

    /// A database unavailable this long, without a success in between, pauses consuming: the
    /// deliveries go back to the queue (visible to other workers, one added to their
    /// `x-delivery-count`) and the worker takes more only once the database answers. Keep it
    /// well below the broker's `consumer_timeout` (30 min by default).
    #[arg(long, env = "DATABASE_OUTAGE_PAUSE", default_value = "60s", value_parser = positive_duration)]
    pub database_outage_pause: Duration,

    /// How long one provisioning attempt (one event, or one batch) may take, from taking a
    /// connection to the commit, before the worker gives up on it: then it is `transient`
    /// (retried with the budget), or `database_unavailable` if the database does not answer a
    /// ping either, which counts toward DATABASE_OUTAGE_PAUSE. Keep it above
    /// DATABASE_STATEMENT_TIMEOUT, so the server's own limit usually speaks first.
    #[arg(long, env = "PROVISION_ATTEMPT_TIMEOUT", default_value = "20s", value_parser = positive_duration)]
    pub provision_attempt_timeout: Duration,

    /// Attempts for a transient error (deadlock, timeout) before the event is dead-lettered as
    /// `retries_exhausted`. Conflicts have CONFLICT_RETRY_WINDOW instead, and a database outage
    /// never uses up attempts.
    #[arg(long, env = "RETRY_MAX_ATTEMPTS", default_value_t = 8)]
    pub retry_max_attempts: u32,

    /// How long after its first failure an event whose email or username another user still
    /// holds is retried (from the delay queues, every RETRY_MAX_DELAY at most) before it is
    /// dead-lettered as `email_conflict` / `username_conflict`; `0` dead-letters at once. The
    /// event that frees the value may be a webhook Svix is still retrying: Svix tries again
    /// after 5 s, 5 min, 30 min and 2 h (about 2 h 35 min in all), then 5 h, 10 h and 10 h. The
    /// default of 3 h outlasts those first hours with room for a backlog; beyond them,
    /// reconciling against Clerk repairs what is still missing.
    #[arg(long, env = "CONFLICT_RETRY_WINDOW", default_value = "3h", value_parser = humantime::parse_duration)]
    pub conflict_retry_window: Duration,

    /// How long a deletion is remembered (its tombstone). Unset (the default): for ever, one
    /// small row per deleted user, and deletion is final. Set, a replay of an event older than
    /// this could bring a deleted user back, so setting it logs a warning.
    #[arg(long, env = "TOMBSTONE_RETENTION", value_parser = humantime::parse_duration)]
    pub tombstone_retention: Option<Duration>,

    /// How often expired tombstones are purged (only with TOMBSTONE_RETENTION set).
    #[arg(long, env = "TOMBSTONE_PURGE_INTERVAL", default_value = "1h", value_parser = positive_duration)]
    pub tombstone_purge_interval: Duration,

    /// How long replayed, resolved and discarded dead letters stay in the store after their last
    /// change; purged hourly after that. Open letters are never purged.
    #[arg(long, env = "DEAD_LETTER_RETENTION", default_value = "30days", value_parser = positive_duration)]
    pub dead_letter_retention: Duration,
}

/// How a long-running command stops. One struct flattened into each of `consume`, `ingress`
/// and `run`, so the one setting applies to every part and clap sees it once.
#[derive(Clone, Debug, Args)]
pub struct ShutdownSettings {
    /// On SIGTERM/SIGINT, how long in-flight deliveries and webhook requests get to finish.
    #[arg(long, env = "SHUTDOWN_GRACE_PERIOD", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace_period: Duration,
}

/// The webhook endpoint.
#[derive(Clone, Debug, Args)]
pub struct IngressSettings {
    /// Where `POST /webhooks/clerk` listens.
    #[arg(long, env = "INGRESS_ADDR", default_value = "0.0.0.0:8080")]
    pub ingress_addr: SocketAddr,

    /// Largest accepted body, in bytes (larger: 413).
    #[arg(long, env = "INGRESS_MAX_BODY", default_value_t = 256 * 1024)]
    pub ingress_max_body: usize,

    /// Largest request head (request line and headers), in bytes; larger is answered 431 by
    /// the HTTP server before any handler runs.
    #[arg(long, env = "INGRESS_MAX_HEAD", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(1024..=262_144).map(|n| n as usize))]
    pub ingress_max_head: usize,

    /// How long a new connection gets to send a complete request head; then it is closed.
    #[arg(long, env = "INGRESS_HEADER_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub ingress_header_timeout: Duration,

    /// How long a request's body gets to arrive once its head is in (then 408 and the
    /// connection is closed).
    #[arg(long, env = "INGRESS_BODY_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub ingress_body_timeout: Duration,

    /// From a complete head to the answer, at most this (then 503 `request_timeout`); below the
    /// 15 s Svix waits, so Svix hears our answer rather than its own timeout.
    #[arg(long, env = "INGRESS_REQUEST_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub ingress_request_timeout: Duration,

    /// How long a kept-alive connection may wait for its next complete request head (hyper
    /// times the idle wait and that head together; never shorter than the header timeout).
    #[arg(long, env = "INGRESS_IDLE_TIMEOUT", default_value = "75s", value_parser = positive_duration)]
    pub ingress_idle_timeout: Duration,

    /// How long writing one answer may wait for the client to read it; a client that does not
    /// read (pipelining requests it never collects) is then closed and its slot comes back.
    /// Also the TCP_USER_TIMEOUT of each connection: a peer that acknowledges nothing sent for
    /// as long is dropped by the kernel. Well under the 15 s Svix waits.
    #[arg(long, env = "INGRESS_WRITE_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub ingress_write_timeout: Duration,

    /// Ingress connections open at once (1-65536). Each holds about 16 KiB, so this bounds the
    /// ingress's connection memory. At the limit, the oldest connection that has never
    /// delivered a verified webhook is closed to make room; one that has is never closed for a
    /// newcomer, which then waits in the listen backlog until a connection closes.
    #[arg(long, env = "INGRESS_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65_536).map(|n| n as usize))]
    pub ingress_max_connections: usize,

    /// Publishes awaiting the broker's confirm at once; only requests whose signature verified
    /// take one, and a verified request beyond them is 503 `overloaded` at once (Svix
    /// retries). 256: where accepted throughput stopped growing when measured.
    #[arg(long, env = "INGRESS_MAX_CONCURRENCY", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536).map(|n| n as usize))]
    pub ingress_max_concurrency: usize,

    /// Bytes of request bodies the ingress holds at once, across all connections (default
    /// 64 MiB; at least INGRESS_MAX_BODY). Bodies take their bytes as they arrive; one that
    /// finds none left is 503 `body_memory_full` (Svix retries).
    #[arg(long, env = "INGRESS_MAX_BODY_MEMORY", default_value_t = 64 * 1024 * 1024)]
    pub ingress_max_body_memory: usize,

    /// Continue the trace a webhook request names in its own `traceparent` header (when traces
    /// are on). Off by default: Svix sends none, and anyone who can reach the endpoint could
    /// then choose our trace ids. Turn it on only behind a proxy of yours that sets it.
    #[arg(long, env = "INGRESS_TRUST_TRACEPARENT", default_value_t = false, action = clap::ArgAction::Set)]
    pub ingress_trust_traceparent: bool,

    /// How long to wait for the broker to confirm a publish before answering 503.
    #[arg(long, env = "PUBLISH_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,

    /// Svix signing secret(s) from Clerk's dashboard (`whsec_...`); several, separated by
    /// spaces, while rotating.
    #[arg(
        long,
        env = "CLERK_WEBHOOK_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub clerk_webhook_secret: SecretString,

    /// A file holding CLERK_WEBHOOK_SECRET (a Docker or Kubernetes secret); refused beside it.
    #[arg(long, env = "CLERK_WEBHOOK_SECRET_FILE", value_name = "PATH")]
    pub clerk_webhook_secret_file: Option<PathBuf>,
}

/// The ops HTTP server: `/metrics`, `/healthz`, `/readyz`.
#[derive(Clone, Debug, Args)]
pub struct OpsSettings {
    /// Where the ops server listens (port 0: any free port, logged at start).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9000")]
    pub metrics_addr: SocketAddr,

    /// How often histogram samples are folded into their buckets, so memory stays flat whether
    /// or not anything scrapes `/metrics`.
    #[arg(long, env = "METRICS_UPKEEP_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub metrics_upkeep_interval: Duration,

    /// How often memory the allocator holds free is given back to the operating system, so the
    /// resident set comes down after a burst instead of staying at its high-water mark.
    #[arg(long, env = "MEMORY_TRIM_INTERVAL", default_value = "10s", value_parser = positive_duration)]
    pub memory_trim_interval: Duration,
}

/// A duration for a period of something repeated: zero would be a busy loop (and a panic).
fn positive_duration(raw: &str) -> Result<Duration, String> {
    match humantime::parse_duration(raw) {
        Ok(duration) if duration.is_zero() => Err("must be longer than zero".to_owned()),
        Ok(duration) => Ok(duration),
        Err(err) => Err(err.to_string()),
    }
}

/// A count where zero would mean no work at all.
fn at_least_one<T>(raw: &str) -> Result<T, String>
where
    T: std::str::FromStr + Default + PartialEq,
    T::Err: std::fmt::Display,
{
    match raw.parse::<T>() {
        Ok(count) if count == T::default() => Err("must be at least 1".to_owned()),
        Ok(count) => Ok(count),
        Err(err) => Err(err.to_string()),
    }
}

/// A prefetch count: AMQP reads 0 as no limit, so the broker would send the whole queue.
fn prefetch_count(raw: &str) -> Result<u16, String> {
    match raw.parse::<u16>() {
        Ok(0) => {
            Err("must be at least 1: AMQP reads a prefetch of 0 as no limit at all".to_owned())
        }
        Ok(count) => Ok(count),
        Err(err) => Err(err.to_string()),
    }
}

/// Replaces every password in a URL, for logs and error messages; an unparsable URL becomes
/// `<invalid URL>` (it may hold a password where no parser can find it).
fn redact(raw: &str) -> String {
    urls::redact(raw)
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
    use clap::Parser;

    use super::*;

    #[test]
    fn periods_must_be_longer_than_zero() {
        assert!(positive_duration("0s").is_err());
        assert!(positive_duration("soon").is_err());
        assert_eq!(positive_duration("100ms"), Ok(Duration::from_millis(100)));
    }

    #[test]
    fn the_prefix_applies_to_every_name_but_not_the_binding() {
        let settings = BrokerSettings::with_prefix("amqp://h", "t1.");
        let topology = Topology::from_settings(&settings);
        assert_eq!(topology.exchange, "t1.clerk.events");
        assert_eq!(topology.queue, "t1.workspace.provisioning");
        assert_eq!(topology.dead_letter_exchange, "t1.clerk.events.dlx");
        assert_eq!(topology.dead_letter_queue, "t1.workspace.provisioning.dlq");
        assert_eq!(topology.binding_key, "user.*");
        assert_eq!(topology.retry.exchange, "t1.workspace.provisioning.retry");
        assert_eq!(topology.retry.queue, "t1.workspace.provisioning.retry");
        assert_eq!(
            topology.retry.redeliver_exchange,
            "t1.workspace.provisioning.redeliver"
        );
    }

    #[test]
    fn the_command_line_defaults_are_the_ones_for_url_starts_from() {
        let parsed = crate::cli::Cli::try_parse_from(["worker", "consume"]).unwrap();
        let parsed = parsed.database;
        let built = DatabaseSettings::for_url("postgres://h/db");
        assert_eq!(parsed.max_connections, built.max_connections);
        assert_eq!(parsed.min_connections, built.min_connections);
        assert_eq!(parsed.connect_timeout, Duration::from_secs(10));
        assert_eq!(
            parsed.server_timeouts(),
            [
                ("statement_timeout", 15_000),
                ("lock_timeout", 5_000),
                ("idle_in_transaction_session_timeout", 30_000)
            ]
        );
        assert_eq!(parsed.server_timeouts(), built.server_timeouts());
        assert_eq!(
            (parsed.connect_timeout, parsed.idle_timeout),
            (built.connect_timeout, built.idle_timeout)
        );
    }

    #[test]
    fn pgbouncer_mode_is_off_unless_asked_for() {
        let pgbouncer = |args: &[&str]| {
            let argv = ["worker"].iter().chain(args);
            crate::cli::Cli::try_parse_from(argv)
                .map(|cli| cli.database.pgbouncer)
                .map_err(|err| err.to_string())
        };
        assert_eq!(pgbouncer(&["consume"]), Ok(false));
        assert_eq!(pgbouncer(&["consume", "--database-pgbouncer"]), Ok(true));
        assert_eq!(pgbouncer(&["--database-pgbouncer", "consume"]), Ok(true));
        assert_eq!(
            pgbouncer(&["consume", "--database-pgbouncer=true"]),
            Ok(true)
        );
        assert_eq!(
            pgbouncer(&["consume", "--database-pgbouncer=false"]),
            Ok(false)
        );
        assert!(pgbouncer(&["consume", "--database-pgbouncer=maybe"]).is_err());
    }

    #[test]
    fn passwords_never_appear_in_the_redacted_url() {
        let settings = DatabaseSettings::for_url("postgres://app:s3cret@db:5432/provisioning");
        assert_eq!(
            settings.redacted_url(),
            "postgres://app:***@db:5432/provisioning"
        );
        assert!(!format!("{settings:?}").contains("s3cret"));
        let broker = BrokerSettings::with_prefix("amqp://app:s3cret@mq:5672/%2f", "");
        assert!(!format!("{broker:?}").contains("s3cret"));
        let cli = crate::cli::Cli::try_parse_from([
            "worker",
            "ingress",
            "--clerk-webhook-secret=whsec_s3cret",
        ])
        .unwrap();
        assert!(!format!("{cli:?}").contains("s3cret"));
    }
}
