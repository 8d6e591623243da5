//! Batch provisioning: several users' `user.created`/`user.updated` in one statement, hence one
//! transaction and one round trip, so the per-transaction cost (round trips, commit flush) is
//! shared.
//!
//! Each user goes through `provision_user`, the very function one event at a time uses, so the
//! rules are the same by construction. The caller falls back to one event per transaction when a
//! batch fails, so one bad event never costs its batch-mates more than that retry.

use std::collections::HashMap;

use sea_orm::{DbErr, FromQueryResult};

use super::answer::ProvisionUserRow;
use super::{Provisioned, in_transaction_span, sql, statement, traced, with_arguments};
use crate::db::Pool;
use crate::domain::UserProfile;
use crate::error::ProvisionError;

/// One user's answer within the batch: whose, and `provision_user`'s own row.
#[derive(FromQueryResult)]
struct BatchRow {
    id: String,
    #[sea_orm(nested)]
    answer: ProvisionUserRow,
}

/// Provisions distinct users' changes in one transaction; results come back in input order.
/// Any error rolls the whole batch back (and is classified as for one event).
pub async fn provision_batch(
    db: &Pool,
    profiles: &[&UserProfile],
) -> Result<Vec<Provisioned>, ProvisionError> {
    let call =
        BatchRow::find_by_statement(statement(&sql::PROVISION_USERS, [rows(profiles)?.into()]))
            .all(db);
    let rows = in_transaction_span(async {
        traced("SELECT", "SELECT provision_user", call)
            .await
            .map_err(ProvisionError::from_db)
    })
    .await?;
    let mut by_user = HashMap::with_capacity(rows.len());
    for row in rows {
        let provisioned = Provisioned::try_from(row.answer).map_err(ProvisionError::from_db)?;
        by_user.insert(row.id, provisioned);
    }
    profiles
        .iter()
        .map(|profile| {
            by_user.remove(profile.id.as_ref()).ok_or_else(|| {
                let missing = format!("no result for {} in its batch", profile.id);
                ProvisionError::Transient(DbErr::RecordNotFound(missing))
            })
        })
        .collect()
}

/// The batch as one JSON parameter: one statement whatever the batch size.
fn rows(profiles: &[&UserProfile]) -> Result<serde_json::Value, ProvisionError> {
    profiles
        .iter()
        .map(|profile| with_arguments(profile, |arguments| serde_json::to_value(arguments)))
        .collect::<Result<Vec<_>, _>>()
        .map(serde_json::Value::Array)
        .map_err(|err| ProvisionError::from_db(DbErr::Json(err.to_string())))
}
