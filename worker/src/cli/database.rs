//! `worker migrate` and `worker health`: the one-shot database commands.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use crate::config::DatabaseSettings;
use crate::{db, health};

/// Creates the database if it is missing and applies pending migrations.
pub(super) async fn migrate(database: &DatabaseSettings) -> anyhow::Result<ExitCode> {
    db::migrate(database)
        .await
        .with_context(|| format!("migrating {}", database.redacted_url()))?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the health report as JSON; failure when the database is unhealthy or unreachable.
pub(super) async fn health(settings: &DatabaseSettings) -> ExitCode {
    let report = match db::connect(settings).await {
        Ok(db) => health::check(&db).await,
        Err(err) => health::HealthReport::unreachable(err.to_string()),
    };
    println!("{}", json!(report));
    if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
