//! `provision_user`'s answer, typed: the row it returns and what its `user_write` means. An
//! answer this worker does not know fails to decode, so it is an error, never an outcome.

use sea_orm::{DbErr, DeriveActiveEnum, EnumIter, FromQueryResult};

use super::{Provisioned, Reassigned};
use crate::outcome::Outcome;

/// What `provision_user` did to the user's row: its `user_write`, one of these strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum UserWrite {
    #[sea_orm(string_value = "inserted")]
    Inserted,
    #[sea_orm(string_value = "updated")]
    Updated,
    /// Nothing: the row already reflects this very event (a duplicate).
    #[sea_orm(string_value = "unchanged")]
    Unchanged,
    /// Nothing: the row reflects a newer event.
    #[sea_orm(string_value = "stale")]
    Stale,
    /// Nothing: the user was deleted, and deletion is final.
    #[sea_orm(string_value = "deleted")]
    Deleted,
}

/// One call's answer (the function's OUT parameters).
#[derive(Clone, Debug, FromQueryResult)]
pub struct ProvisionUserRow {
    pub user_write: UserWrite,
    /// The user's workspace; NULL only when the user stays deleted.
    pub workspace_id: Option<String>,
    /// Whether this call created the workspace; NULL only when the user stays deleted.
    pub workspace_created: Option<bool>,
    /// The user whose derived username this event's chosen one took, if any.
    pub reassigned_user_id: Option<String>,
    /// That user's username now (their fallback).
    pub reassigned_username: Option<String>,
    /// The row took a stand-in for a value another user holds as of a later Clerk time.
    pub superseded: bool,
}

impl TryFrom<ProvisionUserRow> for Provisioned {
    type Error = DbErr;

    fn try_from(row: ProvisionUserRow) -> Result<Self, DbErr> {
        let reassigned = match (row.reassigned_user_id, row.reassigned_username) {
            (Some(user_id), Some(username)) => Some(Reassigned { user_id, username }),
            _ => None,
        };
        if row.user_write == UserWrite::Deleted {
            return Ok(Self {
                outcome: Outcome::Stale,
                workspace_id: None,
                reassigned,
            });
        }
        let (Some(workspace_id), Some(created)) = (row.workspace_id, row.workspace_created) else {
            return Err(DbErr::Type(format!(
                "provision_user answered {:?} without its workspace",
                row.user_write
            )));
        };
        Ok(Self {
            outcome: match outcome_of(row.user_write, created) {
                Outcome::Updated | Outcome::AlreadyExisted if row.superseded => Outcome::Superseded,
                outcome => outcome,
            },
            workspace_id: Some(workspace_id),
            reassigned,
        })
    }
}

/// What a user upsert plus workspace step amounted to.
fn outcome_of(user_write: UserWrite, workspace_created: bool) -> Outcome {
    match user_write {
        UserWrite::Deleted => Outcome::Stale,
        _ if workspace_created => Outcome::Created,
        UserWrite::Updated => Outcome::Updated,
        UserWrite::Stale => Outcome::Stale,
        UserWrite::Inserted | UserWrite::Unchanged => Outcome::AlreadyExisted,
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::ActiveEnum;

    use super::*;

    fn answer(user_write: UserWrite, created: Option<bool>) -> ProvisionUserRow {
        ProvisionUserRow {
            user_write,
            workspace_id: created.map(|_| "w1".to_owned()),
            workspace_created: created,
            reassigned_user_id: None,
            reassigned_username: None,
            superseded: false,
        }
    }

    fn outcome(user_write: UserWrite, created: Option<bool>) -> Result<Outcome, DbErr> {
        Provisioned::try_from(answer(user_write, created)).map(|p| p.outcome)
    }

    #[test]
    fn every_answer_maps_to_its_outcome() {
        let cases = [
            (UserWrite::Inserted, Some(true), Outcome::Created),
            (UserWrite::Inserted, Some(false), Outcome::AlreadyExisted),
            (UserWrite::Updated, Some(true), Outcome::Created),
            (UserWrite::Updated, Some(false), Outcome::Updated),
            (UserWrite::Unchanged, Some(true), Outcome::Created),
            (UserWrite::Unchanged, Some(false), Outcome::AlreadyExisted),
            (UserWrite::Stale, Some(true), Outcome::Created),
            (UserWrite::Stale, Some(false), Outcome::Stale),
            (UserWrite::Deleted, None, Outcome::Stale),
        ];
        for (user_write, created, expected) in cases {
            let got = outcome(user_write, created);
            assert_eq!(got.ok(), Some(expected), "{user_write:?} {created:?}");
        }
    }

    #[test]
    fn a_stand_in_is_superseded_unless_the_workspace_was_created() {
        let superseded = |created| {
            let row = ProvisionUserRow {
                superseded: true,
                ..answer(UserWrite::Updated, Some(created))
            };
            Provisioned::try_from(row).map(|p| p.outcome).ok()
        };
        assert_eq!(superseded(false), Some(Outcome::Superseded));
        assert_eq!(superseded(true), Some(Outcome::Created));
    }

    #[test]
    fn a_kept_deletion_has_no_workspace() {
        let provisioned = Provisioned::try_from(answer(UserWrite::Deleted, None)).unwrap();
        assert_eq!(provisioned.workspace_id, None);
    }

    #[test]
    fn a_write_without_its_workspace_is_an_error() {
        assert!(outcome(UserWrite::Updated, None).is_err());
    }

    #[test]
    fn the_strings_are_the_functions() {
        let strings: Vec<String> = [
            UserWrite::Inserted,
            UserWrite::Updated,
            UserWrite::Unchanged,
            UserWrite::Stale,
            UserWrite::Deleted,
        ]
        .iter()
        .map(ActiveEnum::to_value)
        .collect();
        assert_eq!(
            strings,
            ["inserted", "updated", "unchanged", "stale", "deleted"]
        );
        let unknown = UserWrite::try_from_value(&"merged".to_owned()).unwrap_err();
        assert!(unknown.to_string().contains("merged"), "{unknown}");
    }
}
