//! The database health check behind `worker health` and `/readyz`.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::Serialize;

use crate::db::Pool;
use crate::provision::contract::constraint;

/// The report operators and probes read: overall verdict, each check, and why a check failed.
#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub healthy: bool,
    pub checks: Checks,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub timestamp: DateTime<Utc>,
}

/// One flag per thing provisioning depends on.
#[derive(Debug, Default, Serialize)]
pub struct Checks {
    pub connection: bool,
    pub users_table: bool,
    pub workspaces_table: bool,
    /// [`constraint::UNIQUE_USER_WORKSPACE`] exists: without it "one workspace per user" is not enforced.
    pub constraints: bool,
}

const SCHEMA_PROBE: &str = "SELECT \
    to_regclass('users') IS NOT NULL AS users_table, \
    to_regclass('workspaces') IS NOT NULL AS workspaces_table, \
    EXISTS (SELECT 1 FROM pg_constraint \
            WHERE conname = $1 \
              AND conrelid = to_regclass('workspaces')) AS constraints";

impl HealthReport {
    /// A report for a database that could not even be reached.
    pub fn unreachable(error: String) -> Self {
        Self::from_checks(Checks::default(), Some(error))
    }

    fn from_checks(checks: Checks, error: Option<String>) -> Self {
        let healthy = checks.connection
            && checks.users_table
            && checks.workspaces_table
            && checks.constraints;
        Self {
            healthy,
            checks,
            error,
            timestamp: Utc::now(),
        }
    }
}

/// Runs every check over one round trip.
pub async fn check(db: &Pool) -> HealthReport {
    let probe = Statement::from_sql_and_values(
        DbBackend::Postgres,
        SCHEMA_PROBE,
        [constraint::UNIQUE_USER_WORKSPACE.into()],
    );
    let row = match db.query_one_raw(probe).await {
        Ok(Some(row)) => row,
        Ok(None) => return HealthReport::unreachable("the schema probe returned no row".into()),
        Err(err) => return HealthReport::unreachable(err.to_string()),
    };
    let flag = |column: &str| row.try_get::<bool>("", column).unwrap_or(false);
    let checks = Checks {
        connection: true,
        users_table: flag("users_table"),
        workspaces_table: flag("workspaces_table"),
        constraints: flag("constraints"),
    };
    let error = (!checks.users_table || !checks.workspaces_table || !checks.constraints)
        .then(|| "schema incomplete: run `worker migrate`".to_owned());
    HealthReport::from_checks(checks, error)
}
