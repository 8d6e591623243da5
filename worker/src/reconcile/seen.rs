//! The ids Clerk listed in this run, and the orphans found, kept in temporary tables on one
//! dedicated connection: memory stays flat however many users there are, and the tables vanish
//! with the connection, even when the run is killed.
//!
//! Through PgBouncer in transaction pooling mode a temporary table lives on one server connection
//! while the next transaction may get another, so the whole run is one transaction there: the
//! server connection stays ours until it ends, and rolling it back drops the tables.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, QueryResult, Statement};

use crate::config::DatabaseSettings;
use crate::db::{self, Pool, statement};

const CREATE: &str = "CREATE TEMPORARY TABLE reconcile_seen (id TEXT PRIMARY KEY); \
     CREATE TEMPORARY TABLE reconcile_orphans (id TEXT PRIMARY KEY)";
const RECORD_SEEN: &str = "INSERT INTO reconcile_seen SELECT jsonb_array_elements_text($1::jsonb) \
     ON CONFLICT DO NOTHING";
/// Rows older than the run whose id Clerk did not list, in id order after `$1`.
const UNSEEN: &str = "SELECT u.id FROM users u WHERE u.id > $1 AND u.created_at < $2 \
     AND NOT EXISTS (SELECT 1 FROM reconcile_seen s WHERE s.id = u.id) ORDER BY u.id LIMIT $3";
const RECORD_ORPHAN: &str = "INSERT INTO reconcile_orphans VALUES ($1) ON CONFLICT DO NOTHING";
const ORPHANS: &str = "SELECT id FROM reconcile_orphans WHERE id > $1 ORDER BY id LIMIT $2";
const NOW: &str = "SELECT now() AS now";

/// The run's scratch tables, on a pool of exactly one connection that never idles out; through
/// PgBouncer, in a transaction held for the run.
pub struct Seen {
    pool: Pool,
    pinned: Option<DatabaseTransaction>,
    started: DateTime<Utc>,
}

impl Seen {
    /// Opens the dedicated connection and creates the tables.
    pub async fn open(settings: &DatabaseSettings) -> Result<Self, DbErr> {
        let mut settings = settings.clone();
        settings.max_connections = 1;
        settings.min_connections = 1;
        settings.idle_timeout = Duration::from_secs(7 * 24 * 3600);
        // The run idles between paced requests to Clerk; through PgBouncer it does so inside
        // its one transaction, which the idle-in-transaction timeout would end.
        settings.idle_in_transaction_timeout = Duration::ZERO;
        // Its scans of the users table grow with the table, unlike the service's statements.
        settings.statement_timeout = Duration::ZERO;
        // Held for the run, the transaction keeps its server connection; through PgBouncer the
        // pool caches no statement and sends no start-up options, as PgBouncer needs.
        let through_pgbouncer = settings.pgbouncer;
        let pool = db::connect(&settings).await?;
        let pinned = match through_pgbouncer {
            true => Some(pool.begin_clean().await?),
            false => None,
        };
        let mut seen = Self {
            pool,
            pinned,
            started: DateTime::UNIX_EPOCH,
        };
        seen.execute_unprepared(CREATE).await?;
        seen.started = seen.now().await?;
        Ok(seen)
    }

    /// When the run started, by the database's clock: rows created after it are not orphan
    /// candidates.
    pub fn started(&self) -> DateTime<Utc> {
        self.started
    }

    async fn now(&self) -> Result<DateTime<Utc>, DbErr> {
        let row = self.query_one(statement(NOW, [])).await?;
        let row = row.ok_or_else(|| DbErr::RecordNotFound("SELECT now()".into()))?;
        row.try_get::<DateTime<Utc>>("", "now")
    }

    /// Records the ids of one Clerk page.
    pub async fn record(&self, ids: &[String]) -> Result<(), DbErr> {
        let ids = serde_json::Value::from(ids.to_vec());
        self.execute(statement(RECORD_SEEN, [ids.into()])).await?;
        Ok(())
    }

    /// Up to `limit` ids after `after` of rows created before `started` that Clerk did not list.
    pub async fn unseen(
        &self,
        after: &str,
        started: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<String>, DbErr> {
        let values = [after.into(), started.into(), (limit as i64).into()];
        self.ids(statement(UNSEEN, values)).await
    }

    /// Remembers a confirmed orphan until deletion is decided.
    pub async fn record_orphan(&self, id: &str) -> Result<(), DbErr> {
        self.execute(statement(RECORD_ORPHAN, [id.into()])).await?;
        Ok(())
    }

    /// Up to `limit` confirmed orphans after `after`, in id order.
    pub async fn orphans(&self, after: &str, limit: u64) -> Result<Vec<String>, DbErr> {
        let values = [after.into(), (limit as i64).into()];
        self.ids(statement(ORPHANS, values)).await
    }

    /// Closes the connection; the temporary tables go with it (or with the rolled back
    /// transaction, through PgBouncer).
    pub async fn close(self) {
        if let Some(txn) = self.pinned {
            let _ = txn.rollback().await;
        }
        let _ = self.pool.close().await;
    }

    async fn ids(&self, statement: Statement) -> Result<Vec<String>, DbErr> {
        let rows = match &self.pinned {
            Some(txn) => txn.query_all_raw(statement).await?,
            None => self.pool.query_all_raw(statement).await?,
        };
        rows.iter()
            .map(|row| row.try_get::<String>("", "id"))
            .collect()
    }

    async fn query_one(&self, statement: Statement) -> Result<Option<QueryResult>, DbErr> {
        match &self.pinned {
            Some(txn) => txn.query_one_raw(statement).await,
            None => self.pool.query_one_raw(statement).await,
        }
    }

    async fn execute(&self, statement: Statement) -> Result<(), DbErr> {
        match &self.pinned {
            Some(txn) => txn.execute_raw(statement).await.map(drop),
            None => self.pool.execute_raw(statement).await.map(drop),
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<(), DbErr> {
        match &self.pinned {
            Some(txn) => txn.execute_unprepared(sql).await.map(drop),
            None => self.pool.execute_unprepared(sql).await.map(drop),
        }
    }
}
