//! The ids Clerk listed in this run, and the orphans found, kept in temporary tables on one
//! dedicated connection: memory stays flat however many users there are, and the tables vanish
//! with the connection, even when the run is killed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, Value};

use crate::config::DatabaseSettings;
use crate::db;

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

/// The run's scratch tables, on a pool of exactly one connection that never idles out.
pub struct Seen {
    conn: DatabaseConnection,
}

impl Seen {
    /// Opens the dedicated connection and creates the tables.
    pub async fn open(settings: &DatabaseSettings) -> Result<Self, DbErr> {
        let mut settings = settings.clone();
        settings.max_connections = 1;
        settings.min_connections = 1;
        settings.idle_timeout = Duration::from_secs(7 * 24 * 3600);
        let conn = db::connect(&settings).await?;
        conn.execute_unprepared(CREATE).await?;
        Ok(Self { conn })
    }

    /// The database's clock now: rows created after it are not orphan candidates.
    pub async fn now(&self) -> Result<DateTime<Utc>, DbErr> {
        let row = self.conn.query_one_raw(statement(NOW, [])).await?;
        let row = row.ok_or_else(|| DbErr::RecordNotFound("SELECT now()".into()))?;
        row.try_get::<DateTime<Utc>>("", "now")
    }

    /// Records the ids of one Clerk page.
    pub async fn record(&self, ids: &[String]) -> Result<(), DbErr> {
        let ids = serde_json::Value::from(ids.to_vec());
        self.conn
            .execute_raw(statement(RECORD_SEEN, [ids.into()]))
            .await?;
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
        ids(&self.conn, statement(UNSEEN, values)).await
    }

    /// Remembers a confirmed orphan until deletion is decided.
    pub async fn record_orphan(&self, id: &str) -> Result<(), DbErr> {
        self.conn
            .execute_raw(statement(RECORD_ORPHAN, [id.into()]))
            .await?;
        Ok(())
    }

    /// Up to `limit` confirmed orphans after `after`, in id order.
    pub async fn orphans(&self, after: &str, limit: u64) -> Result<Vec<String>, DbErr> {
        let values = [after.into(), (limit as i64).into()];
        ids(&self.conn, statement(ORPHANS, values)).await
    }

    /// Closes the connection; the temporary tables go with it.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

async fn ids(conn: &DatabaseConnection, statement: Statement) -> Result<Vec<String>, DbErr> {
    let rows = conn.query_all_raw(statement).await?;
    rows.iter()
        .map(|row| row.try_get::<String>("", "id"))
        .collect()
}

fn statement<const N: usize>(sql: &str, values: [Value; N]) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}
