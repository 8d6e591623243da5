//! Provisioning against the real database: whatever arrives, how often and in whatever order,
//! the database ends with one correct user row and one workspace for it.

use integration_tests::TestDb;
use integration_tests::clerk::{UserEvent, deleted_body, fixture, provision};
use worker::config::DatabaseSettings;
use worker::error::{FailureReason, ProvisionError};
use worker::outcome::Outcome;

const MARTA: &str = "user_39BL7AjFtiageEwS3wHL0KvAXLh";
const KENJI: &str = "user_3IUHw5u6kOqRgyTUEVE6dSQYtQE";

async fn outcome(db: &TestDb, body: &[u8]) -> Outcome {
    provision(&db.conn, body)
        .await
        .expect("provisioned")
        .outcome
}

async fn permanent_reason(db: &TestDb, body: &[u8]) -> FailureReason {
    match provision(&db.conn, body).await {
        Err(ProvisionError::Permanent(rejected)) => rejected.reason,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

/// A conflict: retried later (another user's event may free the value), never permanent.
async fn conflict_reason(db: &TestDb, body: &[u8]) -> FailureReason {
    match provision(&db.conn, body).await {
        Err(ProvisionError::Conflict(rejected)) => rejected.reason,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn user(db: &TestDb, id: &str) -> serde_json::Value {
    let rows = db
        .rows(&format!("SELECT * FROM users WHERE id = '{id}'"))
        .await;
    assert_eq!(rows.len(), 1, "one row for {id}");
    rows.into_iter().next().unwrap_or_default()
}

async fn workspaces_of(db: &TestDb, id: &str) -> Vec<serde_json::Value> {
    db.rows(&format!("SELECT * FROM workspaces WHERE user_id = '{id}'"))
        .await
}

async fn totals(db: &TestDb) -> (i64, i64) {
    let users = db.scalar("SELECT count(*) FROM users").await;
    let workspaces = db.scalar("SELECT count(*) FROM workspaces").await;
    (users, workspaces)
}

#[tokio::test]
async fn user_created_gives_the_user_and_one_my_workspace() {
    let db = TestDb::migrated().await;
    let provisioned = provision(&db.conn, &fixture("user_created.json"))
        .await
        .unwrap();
    assert_eq!(provisioned.outcome, Outcome::Created);

    let marta = user(&db, MARTA).await;
    assert_eq!(marta["email"], "marta.lopez@example.com");
    assert_eq!(marta["username"], "marta_lopez");
    assert_eq!(marta["first_name"], "Marta");
    assert_eq!(marta["last_name"], "Lopez");
    assert!(
        marta["avatar_url"]
            .as_str()
            .unwrap()
            .starts_with("https://img.clerk.com/")
    );
    assert_eq!(marta["subscription_tier"], "free");
    let workspaces = workspaces_of(&db, MARTA).await;
    assert_eq!(workspaces.len(), 1);
    assert_eq!(workspaces[0]["name"], "My Workspace");
    assert_eq!(
        Some(workspaces[0]["id"].as_str().unwrap().to_owned()),
        provisioned.workspace_id
    );
}

#[tokio::test]
async fn a_null_username_is_derived_from_the_primary_email_which_need_not_be_first() {
    let db = TestDb::migrated().await;
    let body = fixture("user_created_null_username_second_email_primary.json");
    assert_eq!(outcome(&db, &body).await, Outcome::Created);
    let kenji = user(&db, KENJI).await;
    assert_eq!(kenji["email"], "kenji+signup@example.org");
    assert_eq!(kenji["username"], "kenji_signup");
    assert_eq!(kenji["last_name"], serde_json::Value::Null);
    assert_eq!(workspaces_of(&db, KENJI).await.len(), 1);
}

#[tokio::test]
async fn a_phone_only_user_is_missing_email_and_nothing_is_written() {
    let db = TestDb::migrated().await;
    let reason = permanent_reason(&db, &fixture("user_created_phone_only.json")).await;
    assert_eq!(reason, FailureReason::MissingEmail);
    assert_eq!(reason.as_str(), "missing_email");
    assert_eq!(totals(&db).await, (0, 0));
}

#[tokio::test]
async fn user_updated_changes_the_user_and_keeps_one_workspace() {
    let db = TestDb::migrated().await;
    outcome(&db, &fixture("user_created.json")).await;
    let workspace_before = workspaces_of(&db, MARTA).await;
    assert_eq!(
        outcome(&db, &fixture("user_updated.json")).await,
        Outcome::Updated
    );

    let marta = user(&db, MARTA).await;
    assert_eq!(marta["last_name"], "López García");
    assert_eq!(marta["username"], "marta_lg");
    assert!(
        marta["clerk_updated_at"]
            .as_str()
            .unwrap()
            .starts_with("2025-11-28T03:20:05")
    );
    assert_eq!(workspaces_of(&db, MARTA).await, workspace_before);
}

#[tokio::test]
async fn user_deleted_removes_the_user_and_the_cascade_its_workspace() {
    let db = TestDb::migrated().await;
    outcome(&db, &fixture("user_created.json")).await;
    assert_eq!(
        outcome(&db, &fixture("user_deleted.json")).await,
        Outcome::Deleted
    );
    assert_eq!(totals(&db).await, (0, 0));
    assert_eq!(
        outcome(&db, &fixture("user_deleted.json")).await,
        Outcome::AlreadyDeleted
    );
}

#[tokio::test]
async fn update_before_create_ends_in_the_updated_state() {
    let db = TestDb::migrated().await;
    assert_eq!(
        outcome(&db, &fixture("user_updated.json")).await,
        Outcome::Created
    );
    assert_eq!(
        outcome(&db, &fixture("user_created.json")).await,
        Outcome::Stale
    );
    let marta = user(&db, MARTA).await;
    assert_eq!(marta["username"], "marta_lg");
    assert_eq!(marta["last_name"], "López García");
    assert_eq!(workspaces_of(&db, MARTA).await.len(), 1);
}

#[tokio::test]
async fn every_shared_example_is_covered_by_a_test() {
    let covered = [
        "user_created.json",
        "user_created_null_username_second_email_primary.json",
        "user_created_phone_only.json",
        "user_deleted.json",
        "user_updated.json",
    ];
    let dir = integration_tests::fixtures_dir().join("clerk");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".json") {
            assert!(
                covered.contains(&name.as_str()),
                "{name} has no test: add one"
            );
        }
    }
}

#[tokio::test]
async fn the_same_event_three_times_creates_once() {
    let db = TestDb::migrated().await;
    let body = fixture("user_created.json");
    let outcomes = [
        outcome(&db, &body).await,
        outcome(&db, &body).await,
        outcome(&db, &body).await,
    ];
    assert_eq!(
        outcomes,
        [
            Outcome::Created,
            Outcome::AlreadyExisted,
            Outcome::AlreadyExisted
        ]
    );
    assert_eq!(totals(&db).await, (1, 1));
}

#[tokio::test]
async fn a_duplicate_changes_nothing_not_even_updated_at() {
    let db = TestDb::migrated().await;
    let body = fixture("user_created.json");
    outcome(&db, &body).await;
    let before = (user(&db, MARTA).await, workspaces_of(&db, MARTA).await);
    outcome(&db, &body).await;
    assert_eq!(
        (user(&db, MARTA).await, workspaces_of(&db, MARTA).await),
        before
    );
}

#[tokio::test]
async fn fifty_concurrent_copies_give_one_user_one_workspace_and_no_error() {
    let db = TestDb::migrated().await;
    let body = fixture("user_created.json");
    let copies = (0..50).map(|_| provision(&db.conn, &body));
    let results = futures::future::join_all(copies).await;
    let outcomes: Vec<Outcome> = results
        .into_iter()
        .map(|r| r.expect("no error").outcome)
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Created).count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(totals(&db).await, (1, 1));
}

#[tokio::test]
async fn fifty_concurrent_derived_sign_ups_sharing_a_local_part_all_get_valid_distinct_names() {
    let db = TestDb::migrated().await;
    let bodies: Vec<Vec<u8>> = (0..50)
        .map(|i| {
            UserEvent::created(
                &format!("user_2sam{i:04}"),
                &format!("sam@host{i}.io"),
                None,
            )
            .body()
        })
        .collect();
    // All 50 race for "sam": the losers see a username conflict once and retry with their
    // fallback inside the same call, so nobody fails.
    let results = futures::future::join_all(bodies.iter().map(|b| provision(&db.conn, b))).await;
    let failures: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(totals(&db).await, (50, 50));
    assert_eq!(
        db.scalar("SELECT count(DISTINCT username) FROM users")
            .await,
        50
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM users WHERE username = 'sam'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_stale_update_is_ignored_and_is_a_success() {
    let db = TestDb::migrated().await;
    let created = UserEvent::created("user_2stale", "s@example.com", Some("stale_one"));
    let newer = UserEvent {
        last_name: Some("Newer".into()),
        ..created.updated(2_000)
    };
    let older = UserEvent {
        last_name: Some("Older".into()),
        ..created.updated(1_000)
    };
    outcome(&db, &created.body()).await;
    assert_eq!(outcome(&db, &newer.body()).await, Outcome::Updated);
    assert_eq!(outcome(&db, &older.body()).await, Outcome::Stale);
    assert_eq!(user(&db, "user_2stale").await["last_name"], "Newer");
}

#[tokio::test]
async fn a_deletion_deletes_whatever_clock_the_stored_row_has() {
    let db = TestDb::migrated().await;
    let created = UserEvent::created("user_2del", "d@example.com", Some("deleted_one"));
    outcome(&db, &created.updated(5_000).body()).await;
    let early_delete = deleted_body("user_2del", created.updated_at + 1_000);
    assert_eq!(outcome(&db, &early_delete).await, Outcome::Deleted);
    assert_eq!(totals(&db).await, (0, 0));
    assert_eq!(
        outcome(&db, &created.updated(9_000).body()).await,
        Outcome::Stale,
        "nothing brings a deleted user back"
    );
    assert_eq!(totals(&db).await, (0, 0));
}

#[tokio::test]
async fn a_derived_username_taken_by_someone_else_gets_the_id_suffix() {
    let db = TestDb::migrated().await;
    outcome(
        &db,
        &UserEvent::created("user_2first", "other@example.com", Some("kenji_signup")).body(),
    )
    .await;
    outcome(
        &db,
        &fixture("user_created_null_username_second_email_primary.json"),
    )
    .await;
    assert_eq!(user(&db, KENJI).await["username"], "kenji_signup_6dSQYtQE");
}

#[tokio::test]
async fn a_user_keeps_their_derived_username_across_retries_and_updates() {
    let db = TestDb::migrated().await;
    let body = fixture("user_created_null_username_second_email_primary.json");
    outcome(&db, &body).await;
    outcome(&db, &body).await;
    // A new email would derive another name; the stored one must not move.
    let later = UserEvent {
        updated_at: 1_764_400_000_000,
        ..UserEvent::created(KENJI, "kenji.new@example.org", None)
    };
    assert_eq!(outcome(&db, &later.body()).await, Outcome::Updated);
    let kenji = user(&db, KENJI).await;
    assert_eq!(kenji["username"], "kenji_signup");
    assert_eq!(kenji["email"], "kenji.new@example.org");
}

#[tokio::test]
async fn a_chosen_username_replaces_a_derived_one() {
    let db = TestDb::migrated().await;
    let created = UserEvent::created("user_2choose", "pick@example.com", None);
    outcome(&db, &created.body()).await;
    assert_eq!(user(&db, "user_2choose").await["username"], "pick");
    let chosen = UserEvent {
        username: Some("picked_name".into()),
        ..created.updated(1)
    };
    outcome(&db, &chosen.body()).await;
    assert_eq!(user(&db, "user_2choose").await["username"], "picked_name");
}

#[tokio::test]
async fn an_email_held_by_another_user_is_email_conflict_and_nothing_changes() {
    let db = TestDb::migrated().await;
    outcome(&db, &fixture("user_created.json")).await;
    let thief = UserEvent::created("user_2thief", "marta.lopez@example.com", Some("thief"));
    assert_eq!(
        conflict_reason(&db, &thief.body()).await,
        FailureReason::EmailConflict
    );
    assert_eq!(totals(&db).await, (1, 1));
}

#[tokio::test]
async fn a_chosen_username_held_by_another_user_is_username_conflict() {
    let db = TestDb::migrated().await;
    outcome(&db, &fixture("user_created.json")).await;
    let copycat = UserEvent::created("user_2copy", "copy@example.com", Some("marta_lopez"));
    assert_eq!(
        conflict_reason(&db, &copycat.body()).await,
        FailureReason::UsernameConflict
    );
    assert_eq!(totals(&db).await, (1, 1));
}

#[tokio::test]
async fn each_invalid_field_is_a_permanent_failure_naming_it() {
    let db = TestDb::migrated().await;
    let valid = UserEvent::created("user_2valid", "v@example.com", Some("valid_user"));
    let cases = [
        (
            UserEvent {
                email: Some("not-an-email".into()),
                ..valid.clone()
            }
            .body(),
            FailureReason::InvalidEmail,
        ),
        (
            UserEvent {
                email: None,
                ..valid.clone()
            }
            .body(),
            FailureReason::MissingEmail,
        ),
        (
            UserEvent {
                username: Some("no".into()),
                ..valid.clone()
            }
            .body(),
            FailureReason::InvalidUsername,
        ),
        (
            UserEvent {
                id: "user 2".into(),
                ..valid.clone()
            }
            .body(),
            FailureReason::InvalidUserId,
        ),
        (b"{not json".to_vec(), FailureReason::InvalidPayload),
        (
            br#"{"type":"user.created","data":{"id":"user_2x","email_addresses":"x"}}"#.to_vec(),
            FailureReason::InvalidPayload,
        ),
    ];
    for (body, reason) in cases {
        assert_eq!(
            permanent_reason(&db, &body).await,
            reason,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(totals(&db).await, (0, 0));
}

#[tokio::test]
async fn cosmetic_fields_are_repaired_not_refused() {
    let db = TestDb::migrated().await;
    let event = UserEvent {
        first_name: Some("Ñ".repeat(60)),
        image_url: Some("not a url".into()),
        ..UserEvent::created("user_2cosmetic", "c@example.com", Some("cosmetic"))
    };
    assert_eq!(outcome(&db, &event.body()).await, Outcome::Created);
    let row = user(&db, "user_2cosmetic").await;
    assert_eq!(row["first_name"], "Ñ".repeat(50));
    assert_eq!(row["avatar_url"], serde_json::Value::Null);
}

#[tokio::test]
async fn unsupported_event_types_provision_nothing() {
    let db = TestDb::migrated().await;
    let body = br#"{"type":"session.created","object":"event","data":{"id":"sess_1"}}"#;
    assert_eq!(outcome(&db, body).await, Outcome::Unsupported);
    assert_eq!(totals(&db).await, (0, 0));
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_not_permanent() {
    let mut settings = DatabaseSettings::for_url("postgres://postgres@127.0.0.1:1/nowhere");
    settings.connect_timeout = std::time::Duration::from_millis(500);
    let err = worker::db::connect(&settings)
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(
        ProvisionError::from_db(err),
        ProvisionError::Unavailable(_)
    ));
}

#[tokio::test]
async fn a_lock_timeout_is_transient() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let db = TestDb::migrated().await;
    let event = UserEvent::created("user_2locked", "l@example.com", Some("locked"));
    outcome(&db, &event.body()).await;
    db.execute(&format!(
        "ALTER DATABASE \"{}\" SET lock_timeout = '200ms'",
        db.name
    ))
    .await;
    let fresh = sea_orm::Database::connect(db.settings.expose_url())
        .await
        .unwrap();

    let holder = db.conn.begin().await.unwrap();
    holder
        .execute_unprepared("SELECT * FROM users WHERE id = 'user_2locked' FOR UPDATE")
        .await
        .unwrap();
    let result = provision(&fresh, &event.updated(1).body()).await;
    holder.rollback().await.unwrap();

    match result {
        Err(err @ ProvisionError::Transient(_)) => {
            assert!(err.to_string().contains("lock"), "{err}")
        }
        other => panic!("expected a transient lock timeout, got {other:?}"),
    }
    assert_eq!(
        outcome(&db, &event.updated(1).body()).await,
        Outcome::Updated
    );
}

#[tokio::test]
async fn a_database_missing_the_provisioning_function_is_unavailable() {
    let db = TestDb::migrated().await;
    db.execute("DROP FUNCTION provision_user").await;
    let event = UserEvent::created("user_2early", "early@example.com", Some("early"));
    let err = provision(&db.conn, &event.body())
        .await
        .expect_err("no function to call");
    assert!(matches!(err, ProvisionError::Unavailable(_)), "{err}");
}

#[tokio::test]
async fn an_answer_the_worker_does_not_know_is_an_error_not_an_outcome() {
    let db = TestDb::migrated().await;
    // A newer schema's function answering with something this worker has never heard of.
    db.execute(
        "CREATE OR REPLACE FUNCTION provision_user(p_id TEXT, p_email TEXT, p_username TEXT, \
         p_fallback TEXT, p_derived BOOLEAN, p_first_name TEXT, p_last_name TEXT, \
         p_avatar_url TEXT, p_updated_at TIMESTAMPTZ, p_event_at TIMESTAMPTZ, p_digest BYTEA, \
         p_workspace_name TEXT, OUT user_write TEXT, OUT workspace_id TEXT, \
         OUT workspace_created BOOLEAN, OUT reassigned_user_id TEXT, \
         OUT reassigned_username TEXT, OUT superseded BOOLEAN) \
         LANGUAGE sql AS $$ SELECT 'merged', 'w1', false, NULL, NULL, false $$",
    )
    .await;
    let event = UserEvent::created("user_2future", "future@example.com", Some("future"));
    let err = provision(&db.conn, &event.body())
        .await
        .expect_err("an unknown answer");
    assert!(matches!(err, ProvisionError::Transient(_)), "{err}");
    assert!(err.to_string().contains("merged"), "{err}");
}
