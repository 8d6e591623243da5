//! Connecting to PostgreSQL (the worker's [`Pool`], directly or through PgBouncer) and bringing
//! its schema up to date.

mod pool;

pub use pool::Pool;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};
use secrecy::ExposeSecret;
use tracing::{debug, info, warn};

use crate::config::{ConfigError, DatabaseSettings};

/// The worker's connections' `application_name`.
pub const APPLICATION_NAME: &str = "worker";

/// A pooled connection unused this long is pinged before it is handed out; busier ones are not.
const PING_IF_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// SQLSTATE of CREATE DATABASE when another process created it first.
const DUPLICATE_DATABASE: &str = "42P04";

/// A raw Postgres statement with positional values: how the product's hand-written SQL is sent.
pub fn statement<const N: usize>(sql: &str, values: [sea_orm::Value; N]) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Opens the pool with the product's settings, failing now if the database cannot be reached.
pub async fn connect(settings: &DatabaseSettings) -> Result<Pool, DbErr> {
    let conn = Database::connect(options(settings, Use::Service)?).await?;
    Ok(Pool::new(conn, settings))
}

/// A pool that does not wait for the database: long-running services start (and report not
/// ready) while it is down, and their queries fail as `database_unavailable` until it is up.
/// Its minimum connections open in the background.
pub async fn connect_lazy(settings: &DatabaseSettings) -> Result<Pool, DbErr> {
    settings.check().map_err(refused)?;
    let mut options = options(settings, Use::Service)?;
    options
        .connect_lazy(true)
        .min_connections(settings.min_connections);
    let conn = Database::connect(options).await?;
    tokio::spawn(open_min_connections(
        conn.get_postgres_connection_pool().clone(),
        settings.min_connections,
    ));
    Ok(Pool::new(conn, settings))
}

/// Opens `count` connections at once and returns them to the pool, which keeps them. A lazy pool
/// would otherwise open them one event at a time, each new backend's set-up in that event's
/// latency. Failure only means the pool connects on use, as it would anyway.
async fn open_min_connections(pool: sea_orm::sqlx::PgPool, count: u32) {
    let opened = futures::future::join_all((0..count).map(|_| pool.acquire())).await;
    if let Some(Err(err)) = opened.iter().find(|result| result.is_err()) {
        debug!(error = %err, "could not open the pool's minimum connections yet");
    }
}

/// What a pool is for: the service's work runs under the server-side timeouts; migrations
/// (which may rewrite a large table) do not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Service,
    Migrations,
}

/// The pool's options. sea-orm records its options, URL included, in a trace span, so its URL
/// has no password: the password goes straight into sqlx's options, which nothing logs.
///
/// The service's timeouts travel as start-up options (`-c statement_timeout=...`): set once per
/// connection, no round trip per event. PgBouncer (1.18) refuses that start-up parameter, so
/// through it [`Pool::begin`] sets them with `SET LOCAL` in each transaction instead.
fn options(settings: &DatabaseSettings, used_for: Use) -> Result<ConnectOptions, DbErr> {
    let target = settings.target().map_err(refused)?;
    let mut options = ConnectOptions::new(target.url);
    let pgbouncer = settings.pgbouncer;
    let startup_options = match used_for {
        Use::Service if !pgbouncer => Some(settings.server_timeouts()),
        _ => None,
    };
    let password = target.password;
    options.map_sqlx_postgres_opts(move |mut pg| {
        if let Some(password) = &password {
            pg = pg.password(password.expose_secret());
        }
        // A cached statement would be bound on a server connection that never saw it.
        if pgbouncer {
            pg = pg.statement_cache_capacity(0);
        }
        if let Some(timeouts) = startup_options {
            pg = pg.options(timeouts);
        }
        pg
    });
    options
        .max_connections(settings.max_connections)
        // Operators see whose connections these are in pg_stat_activity.
        .set_application_name(APPLICATION_NAME)
        .connect_timeout(settings.connect_timeout)
        .acquire_timeout(settings.connect_timeout)
        .idle_timeout(settings.idle_timeout)
        // sqlx pings every connection it hands out by default: one more round trip before each
        // event's statement. A connection in steady use has just proved itself; one idle this
        // long may have been dropped by the server or a proxy, and is still checked.
        .test_before_acquire_if_idle_for(PING_IF_IDLE_FOR)
        .sqlx_logging(false);
    Ok(options)
}

/// A refused setting as a database error; its message names the setting, never the value.
fn refused(err: ConfigError) -> DbErr {
    DbErr::Custom(err.to_string())
}

/// Creates the database named in the URL when it is missing, then applies pending migrations.
/// Safe to run from several processes at once. Talks to PostgreSQL itself, never through
/// PgBouncer (`CREATE DATABASE` cannot run in a transaction), so `DATABASE_PGBOUNCER` does not
/// apply.
pub async fn migrate(settings: &DatabaseSettings) -> Result<DatabaseConnection, DbErr> {
    if settings.pgbouncer {
        warn!(
            "DATABASE_PGBOUNCER does not apply to migrations: DATABASE_URL must be PostgreSQL's own address"
        );
    }
    let settings = &DatabaseSettings {
        pgbouncer: false,
        ..settings.clone()
    };
    create_database_if_missing(settings).await?;
    let db = Database::connect(options(settings, Use::Migrations)?).await?;
    Migrator::up(&db, None).await?;
    info!(database = %settings.redacted_url(), "migrations applied");
    Ok(db)
}

/// Connects to the server's `postgres` database to create ours; a no-op when it exists.
async fn create_database_if_missing(settings: &DatabaseSettings) -> Result<(), DbErr> {
    let (server_url, name) = split_database_url(settings.expose_url())?;
    let admin = Database::connect(options(
        &DatabaseSettings {
            url: server_url.into(),
            max_connections: 1,
            ..settings.clone()
        },
        Use::Migrations,
    )?)
    .await?;
    let exists = admin
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 FROM pg_database WHERE datname = $1",
            [name.clone().into()],
        ))
        .await?
        .is_some();
    if !exists {
        let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match admin.execute_unprepared(&create).await {
            Ok(_) => info!(database = %name, "database created"),
            Err(err) if sqlstate(&err).as_deref() == Some(DUPLICATE_DATABASE) => {}
            Err(err) => return Err(err),
        }
    }
    admin.close().await
}

/// Splits `postgres://host/name` into the maintenance database's URL and `name`.
fn split_database_url(raw: &str) -> Result<(String, String), DbErr> {
    let mut url = url::Url::parse(raw)
        .map_err(|e| DbErr::Custom(format!("DATABASE_URL is not a URL: {e}")))?;
    let name = percent_encoding::percent_decode_str(url.path().trim_start_matches('/'))
        .decode_utf8_lossy()
        .into_owned();
    if name.is_empty() {
        return Err(DbErr::Custom("DATABASE_URL names no database".into()));
    }
    url.set_path("/postgres");
    Ok((url.to_string(), name))
}

/// Migrations this binary knows that the database has not applied. Newer migrations the database
/// has (a later release ran first) do not count: they are the next binary's business.
pub async fn unapplied_migrations(db: &impl ConnectionTrait) -> Result<Vec<String>, DbErr> {
    let applied: std::collections::HashSet<String> = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT version FROM seaql_migrations",
        ))
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", "version"))
        .collect::<Result<_, _>>()?;
    Ok(Migrator::migrations()
        .iter()
        .map(|migration| migration.name().to_owned())
        .filter(|name| !applied.contains(name))
        .collect())
}

/// The SQLSTATE of a database error, if the server sent one.
pub fn sqlstate(err: &DbErr) -> Option<String> {
    match err {
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e)) => e
            .as_database_error()
            .and_then(|db| db.code())
            .map(|code| code.into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_is_split_from_the_server_url() {
        let (server, name) =
            split_database_url("postgres://u:p@h:5433/my_db?sslmode=disable").unwrap();
        assert_eq!(server, "postgres://u:p@h:5433/postgres?sslmode=disable");
        assert_eq!(name, "my_db");
    }

    #[test]
    fn percent_encoded_names_are_decoded() {
        let (_, name) = split_database_url("postgres://h/my%20db").unwrap();
        assert_eq!(name, "my db");
    }

    #[test]
    fn a_url_without_a_database_is_refused() {
        assert!(split_database_url("postgres://h").is_err());
        assert!(split_database_url("not a url").is_err());
    }
}
