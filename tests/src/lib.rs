//! The integration-test harness: every test gets its own PostgreSQL database, created fresh and
//! dropped when the test ends (even when it panics), and its own broker names, so tests run in
//! parallel and leave nothing. The application runs in the test's process ([`app::TestApp`]) or,
//! where the process is the point, as a child process ([`process::WorkerProcess`]). A test that
//! needs RabbitMQ nodes of its own (a cluster to crash, a broker setting) starts them with
//! [`rabbit_nodes::RabbitNodes`]; one that needs PgBouncer in front of PostgreSQL starts its
//! own with [`pgbouncer::PgBouncer`]. [`chaos`] checks the whole pipeline under a schedule of
//! faults.
//!
//! Tests talk to the real server at `TEST_DATABASE_SERVER` (default
//! `postgres://postgres@127.0.0.1:5432`) and RabbitMQ at `TEST_AMQP_URL`; if one is not reachable
//! they fail and say how to start it.

pub mod app;
pub mod broker;
pub mod browser;
pub mod chaos;
pub mod clerk;
pub mod clerk_api;
pub mod dead_letters;
pub mod ingress;
pub mod ops;
pub mod pgbouncer;
pub mod process;
pub mod proxy;
pub mod rabbit_nodes;
pub mod raw_http;
pub mod stack;
pub mod traces;
pub mod webhook;

use std::path::PathBuf;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use worker::config::DatabaseSettings;

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
const START_POSTGRES: &str =
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

/// The server tests create their databases on.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_SERVER").unwrap_or_else(|_| DEFAULT_SERVER.to_owned())
}

/// That server's address, for proxies and PgBouncer to forward to.
pub fn server_addr() -> std::net::SocketAddr {
    let url = server_url();
    let host_port = url.rsplit('@').next().unwrap_or("127.0.0.1:5432");
    host_port
        .parse()
        .expect("TEST_DATABASE_SERVER as postgres://user@host:port")
}

/// A database of this test's own. Dropped (with its connections) when the value is.
pub struct TestDb {
    pub name: String,
    pub settings: DatabaseSettings,
    pub conn: DatabaseConnection,
}

impl TestDb {
    /// A fresh database with every migration applied, through the product's own `migrate`.
    pub async fn migrated() -> Self {
        let settings = DatabaseSettings::for_url(format!("{}/{}", server_url(), unique_name()));
        let conn = worker::db::migrate(&settings).await.unwrap_or_else(|err| {
            panic!(
                "PostgreSQL at {} is not usable ({err}); {START_POSTGRES}",
                server_url()
            )
        });
        Self::from_parts(settings, conn)
    }

    /// A fresh, empty database: no migration applied.
    pub async fn empty() -> Self {
        let name = unique_name();
        admin_execute(&format!("CREATE DATABASE \"{name}\"")).await;
        let settings = DatabaseSettings::for_url(format!("{}/{name}", server_url()));
        let conn = Database::connect(settings.expose_url())
            .await
            .unwrap_or_else(|err| panic!("cannot connect to {name}: {err}"));
        Self::from_parts(settings, conn)
    }

    /// A name for a database that does not exist yet, dropped with this value's name.
    pub fn unused_name() -> String {
        unique_name()
    }

    fn from_parts(settings: DatabaseSettings, conn: DatabaseConnection) -> Self {
        let name = settings
            .expose_url()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        Self {
            name,
            settings,
            conn,
        }
    }

    /// The connection as the worker's functions take it: statements straight to the server.
    pub fn pool(&self) -> worker::db::Pool {
        self.conn.clone().into()
    }

    /// Runs SQL that returns nothing, panicking with the SQL on failure.
    pub async fn execute(&self, sql: &str) {
        self.conn
            .execute_unprepared(sql)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
    }

    /// The first column of the first row, as i64 (counts, mostly).
    pub async fn scalar(&self, sql: &str) -> i64 {
        let row = self
            .conn
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"))
            .unwrap_or_else(|| panic!("{sql}: no row"));
        row.try_get_by_index::<i64>(0)
            .unwrap_or_else(|err| panic!("{sql}: {err}"))
    }

    /// Rows of `sql` as JSON objects, for assertions on whole rows.
    pub async fn rows(&self, sql: &str) -> Vec<serde_json::Value> {
        let wrapped = format!("SELECT to_jsonb(t) AS row FROM ({sql}) t");
        self.conn
            .query_all_raw(Statement::from_string(DbBackend::Postgres, &wrapped))
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"))
            .into_iter()
            .map(|row| {
                row.try_get::<serde_json::Value>("", "row")
                    .expect("jsonb row")
            })
            .collect()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        drop_database(self.name.clone());
    }
}

/// Drops a database (closing its connections) from a thread of its own, since `Drop` cannot await.
pub fn drop_database(name: String) {
    let dropper = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let admin = Database::connect(format!("{}/postgres", server_url())).await?;
            let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            admin.execute_unprepared(&sql).await?;
            admin.close().await
        })?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });
    if let Ok(Err(err)) = dropper.join() {
        eprintln!("warning: could not drop a test database: {err}");
    }
}

async fn admin_execute(sql: &str) {
    let admin = Database::connect(format!("{}/postgres", server_url()))
        .await
        .unwrap_or_else(|err| {
            panic!(
                "PostgreSQL at {} is not reachable ({err}); {START_POSTGRES}",
                server_url()
            )
        });
    admin
        .execute_unprepared(sql)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
}

fn unique_name() -> String {
    format!("it_{}", uuid::Uuid::new_v4().simple())
}

/// The repository's test fixtures (`tests/fixtures/`): Clerk bodies with a README of what each
/// must produce.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A loopback port nothing listens on right now, for daemons a test starts itself (Prometheus);
/// the product's own listeners bind port 0 instead.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// Polls `check` until it holds, failing the test with `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: std::time::Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        within(timeout, check).await,
        "timed out after {timeout:?} waiting for: {what}"
    );
}

/// Whether `check` holds within `timeout`, polled every 100 ms; for tests that report the miss
/// themselves.
pub async fn within<F, Fut>(timeout: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    true
}

/// Checks `check` every 250 ms for the whole of `period`, failing the test with `what` at the
/// first check that does not hold: a test that something stays true (or never happens) fails
/// when it stops, not after the whole wait. The first check runs at once and the last at the end
/// of the period, so the period itself still elapses when everything holds.
pub async fn throughout<F, Fut>(what: &str, period: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = std::time::Instant::now();
    let end = started + period;
    loop {
        assert!(
            check().await,
            "no longer true after {:?} of {period:?}: {what}",
            started.elapsed()
        );
        let now = std::time::Instant::now();
        if now >= end {
            return;
        }
        tokio::time::sleep((end - now).min(std::time::Duration::from_millis(250))).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use super::throughout;

    #[tokio::test]
    async fn throughout_checks_for_the_whole_period() {
        let checks = AtomicU32::new(0);
        let started = Instant::now();
        throughout("always", Duration::from_millis(600), || async {
            checks.fetch_add(1, Ordering::Relaxed);
            true
        })
        .await;
        assert!(started.elapsed() >= Duration::from_millis(600));
        // At 0, 250, 500 and 600 ms.
        assert!(checks.load(Ordering::Relaxed) >= 4, "{checks:?}");
    }

    #[tokio::test]
    async fn throughout_fails_at_the_first_check_that_does_not_hold() {
        let started = Instant::now();
        let checks = AtomicU32::new(0);
        let failed = tokio::spawn(async move {
            throughout("the first two checks", Duration::from_secs(30), || async {
                checks.fetch_add(1, Ordering::Relaxed) < 2
            })
            .await;
        })
        .await
        .expect_err("the third check fails");
        assert!(failed.is_panic());
        assert!(started.elapsed() < Duration::from_secs(5), "failed early");
    }
}
