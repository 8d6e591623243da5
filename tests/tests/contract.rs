//! The worker's one home for the database contract (`worker::provision::contract`) against the
//! migrated database: if a migration renames an argument or a constraint, this fails, not a
//! provisioning at 3 a.m.

use integration_tests::TestDb;
use worker::provision::contract::{self, ARGUMENT_PREFIX, ARGUMENTS, constraint};

#[tokio::test]
async fn provision_users_arguments_are_the_migrated_functions() {
    let db = TestDb::migrated().await;
    let declared = db
        .rows(&format!(
            "SELECT a.name, format_type(a.type, NULL) AS type \
             FROM pg_proc p, \
                 unnest(p.proargnames, p.proallargtypes, p.proargmodes) WITH ORDINALITY \
                 AS a(name, type, mode, n) \
             WHERE p.proname = '{}' AND a.mode = 'i' ORDER BY a.n",
            contract::FUNCTION
        ))
        .await;
    let declared: Vec<(String, String)> = declared
        .iter()
        .map(|row| {
            (
                row["name"].as_str().unwrap().to_owned(),
                row["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = ARGUMENTS
        .iter()
        .map(|(name, sql_type)| (format!("{ARGUMENT_PREFIX}{name}"), (*sql_type).to_owned()))
        .collect();
    let normalise = |pairs: Vec<(String, String)>| -> Vec<(String, String)> {
        pairs
            .into_iter()
            .map(|(name, sql_type)| {
                let sql_type = match sql_type.as_str() {
                    "timestamptz" => "timestamp with time zone".to_owned(),
                    _ => sql_type,
                };
                (name, sql_type)
            })
            .collect()
    };
    assert_eq!(normalise(declared), normalise(expected));
}

#[tokio::test]
async fn the_constraints_the_worker_reads_errors_by_exist() {
    let db = TestDb::migrated().await;
    for name in [
        constraint::USERS_EMAIL_KEY,
        constraint::USERS_USERNAME_KEY,
        constraint::VALID_EMAIL,
        constraint::VALID_USERNAME,
        constraint::UNIQUE_USER_WORKSPACE,
    ] {
        let count = db
            .scalar(&format!(
                "SELECT count(*) FROM pg_constraint WHERE conname = '{name}'"
            ))
            .await;
        assert_eq!(count, 1, "constraint {name}");
    }
}
