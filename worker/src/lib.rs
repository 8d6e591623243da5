//! Provisioning service for Clerk sign-ups.
//!
//! A Clerk webhook body, taken from RabbitMQ by [`consumer`], becomes a validated
//! [`domain::Event`] in [`clerk`]; [`provision`] applies it to PostgreSQL in one transaction;
//! [`error`] decides whether a failure is worth retrying.
//!
//! - [`config`]: settings from environment variables and flags.
//! - [`telemetry`]: log and trace set-up; [`traces`]: the spans of one sign-up's trace, their
//!   propagation through the broker, and their export by OTLP.
//! - [`clerk`]: Clerk's webhook shapes and their conversion into domain types.
//! - [`domain`]: validated types (user id, email, username, names, avatar, workspace name, event)
//!   and Clerk's event type names.
//! - [`provision`]: the provisioning transaction and the one database-error classifier;
//!   [`outcome`]: what became of an event, as metrics and `worker provision` label it.
//! - [`error`]: the transient/permanent taxonomy.
//! - [`db`]: the connection pool (directly to PostgreSQL, or through PgBouncer in transaction
//!   pooling mode) and migrations; [`health`]: the database health check.
//! - [`topology`]: the broker contract: exchange, queue, header and queue-argument names.
//! - [`broker`]: RabbitMQ connection, declaring the topology and confirmed publishing.
//! - [`consumer`]: the delivery loop with reconnection and graceful shutdown.
//! - [`retry`]: the pure retry policy (decide, backoff with full jitter).
//! - [`dead_letter`]: writing dead letters, and the `worker dlq` operations on them (list,
//!   replay, report).
//! - [`metrics`]: every metric name and its recording function; [`ops`]: `/metrics`, `/healthz`,
//!   `/readyz`; [`readiness`]: the flags `/readyz` reads; [`memory`]: giving freed heap back to the system, and the heap figures.
//! - [`schedule`]: running a task at a fixed interval until shutdown.
//! - [`webhook_secret`]: the webhook signing secret, decoded once for the settings check and the
//!   ingress.
//! - [`ingress`]: the Svix-verified webhook endpoint that publishes to the broker;
//!   [`http_server`]: the bounded HTTP/1.1 server it and the ops server run on.
//! - [`service`]: the long-running process (ingress, consumer, ops server) and its shutdown.
//! - [`users`]: reading a user and their workspace back for operators.
//! - [`clerk_api`]: the paced, retrying client of Clerk's Backend API; [`reconcile`]: comparing
//!   the Clerk instance with the database and repairing it.
//! - [`cli`]: the `worker` command line.

pub mod broker;
pub mod clerk;
pub mod clerk_api;
pub mod cli;
pub mod config;
pub mod console;
pub mod consumer;
pub mod db;
pub mod dead_letter;
pub mod domain;
pub mod error;
pub mod health;
pub mod http_server;
pub mod ingress;
pub mod memory;
pub mod metrics;
pub mod ops;
pub mod outcome;
pub mod provision;
pub mod readiness;
pub mod reconcile;
pub mod retry;
pub mod schedule;
pub mod service;
pub mod telemetry;
pub mod topology;
pub mod traces;
pub mod users;
pub mod webhook_secret;
