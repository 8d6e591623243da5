//! The worker's pool, and what it takes to run statements through PgBouncer in transaction
//! pooling mode.

use std::sync::Arc;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult,
    QueryResult, Statement, TransactionTrait,
};

use crate::config::DatabaseSettings;

/// Clears the prepared statements of the server connection a transaction runs on.
const DEALLOCATE_ALL: &str = "DEALLOCATE ALL";

/// What starts a clean transaction: clears the prepared statements, then sets the service's
/// timeouts for the transaction (through PgBouncer they cannot be start-up options), all in one
/// simple query, so one round trip.
fn clean_start(settings: &DatabaseSettings) -> String {
    let mut sql = DEALLOCATE_ALL.to_owned();
    for (name, millis) in settings.server_timeouts() {
        sql += &format!("; SET LOCAL {name} = {millis}");
    }
    sql
}

/// The worker's connection pool: statements go straight to it, unless it reaches PostgreSQL
/// through PgBouncer in transaction pooling mode
/// ([`DatabaseSettings::pgbouncer`](crate::config::DatabaseSettings::pgbouncer)).
///
/// PgBouncer then lends a server connection for one transaction at a time, while sqlx prepares
/// every statement under a name (`sqlx_s_1`, `sqlx_s_2`, ... counted per client connection,
/// even with its statement cache off) in one message exchange and binds it in the next. Outside
/// a transaction the two can reach different server connections (`prepared statement
/// "sqlx_s_1" does not exist`), and another client's statement of the same name can be waiting
/// on the one we get (`... already exists`). So through PgBouncer each statement runs in a
/// transaction of its own, which [`Pool::begin`] starts by deallocating whatever the server
/// connection holds (and by setting the service's timeouts), and nothing is cached past it.
#[derive(Clone, Debug)]
pub struct Pool {
    conn: DatabaseConnection,
    pgbouncer: bool,
    /// The simple query a clean transaction starts with ([`clean_start`]).
    clean_start: Arc<str>,
}

impl Pool {
    pub(super) fn new(conn: DatabaseConnection, settings: &DatabaseSettings) -> Self {
        Self {
            conn,
            pgbouncer: settings.pgbouncer,
            clean_start: clean_start(settings).into(),
        }
    }

    /// Starts a transaction. Through PgBouncer it first deallocates every prepared statement of
    /// the server connection it was lent (those of whoever used it before), so ours are the only
    /// ones there until it ends: one more round trip. Statements that fail leave theirs behind,
    /// which is why the clearing comes first rather than last.
    pub async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        match self.pgbouncer {
            true => self.begin_clean().await,
            false => self.conn.begin().await,
        }
    }

    /// A transaction whose server connection holds no prepared statement when it starts, and
    /// that runs under the service's timeouts, whatever the mode: for a caller that keeps one
    /// server connection through PgBouncer for a while, by holding the transaction.
    pub async fn begin_clean(&self) -> Result<DatabaseTransaction, DbErr> {
        let txn = self.conn.begin().await?;
        txn.execute_unprepared(&self.clean_start).await?;
        Ok(txn)
    }

    /// Whether a connection answers (through PgBouncer: whether PgBouncer finds a server one).
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.conn.ping().await
    }

    pub async fn close(self) -> Result<(), DbErr> {
        self.conn.close().await
    }
}

/// A pool used as it is, statements straight to the server (tests hand theirs to the worker).
impl From<DatabaseConnection> for Pool {
    fn from(conn: DatabaseConnection) -> Self {
        Self {
            conn,
            pgbouncer: false,
            clean_start: DEALLOCATE_ALL.into(),
        }
    }
}

/// One statement: as it is, or through PgBouncer in a transaction of its own.
#[async_trait::async_trait]
impl ConnectionTrait for Pool {
    fn get_database_backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        if !self.pgbouncer {
            return self.conn.execute_raw(stmt).await;
        }
        let txn = self.begin().await?;
        let result = txn.execute_raw(stmt).await;
        finish(txn, result).await
    }

    /// The simple query protocol: one message, no prepared statement, safe as it is.
    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.conn.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        if !self.pgbouncer {
            return self.conn.query_one_raw(stmt).await;
        }
        let txn = self.begin().await?;
        let result = txn.query_one_raw(stmt).await;
        finish(txn, result).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        if !self.pgbouncer {
            return self.conn.query_all_raw(stmt).await;
        }
        let txn = self.begin().await?;
        let result = txn.query_all_raw(stmt).await;
        finish(txn, result).await
    }
}

/// Commits a one-statement transaction that succeeded; rolls back one that failed and returns
/// the statement's error, the one worth reporting.
async fn finish<T>(txn: DatabaseTransaction, result: Result<T, DbErr>) -> Result<T, DbErr> {
    match result {
        Ok(value) => txn.commit().await.map(|()| value),
        Err(err) => {
            let _ = txn.rollback().await;
            Err(err)
        }
    }
}
