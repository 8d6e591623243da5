//! The schema is the product's database design: constraints, defaults, indexes, and migrations
//! that go up, down and up again.

use integration_tests::TestDb;
use migration::{Migrator, MigratorTrait};
use sea_orm::ConnectionTrait;
use worker::provision::contract::constraint;

const INSERT_USER: &str = "INSERT INTO users (id, email, username) VALUES";

async fn table_count(db: &TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename IN ('users', 'workspaces')")
        .await
}

/// Runs `sql`, expecting the database to refuse it, and returns the error text.
async fn refused(db: &TestDb, sql: &str) -> String {
    match db.conn.execute_unprepared(sql).await {
        Ok(_) => panic!("the database accepted: {sql}"),
        Err(err) => err.to_string(),
    }
}

#[tokio::test]
async fn migrations_go_up_down_and_up_again() {
    let db = TestDb::empty().await;
    Migrator::up(&db.conn, None).await.unwrap();
    assert_eq!(table_count(&db).await, 2);
    assert_eq!(
        Migrator::get_pending_migrations(&db.conn)
            .await
            .unwrap()
            .len(),
        0
    );

    let functions = "SELECT count(*) FROM pg_proc WHERE proname = 'provision_user'";
    Migrator::down(&db.conn, Some(1)).await.unwrap();
    let store_tables = db
        .scalar(
            "SELECT count(*) FROM pg_tables WHERE tablename IN \
             ('dead_letters', 'dead_letter_actions', 'dead_letter_history')",
        )
        .await;
    assert_eq!(
        store_tables, 0,
        "the ninth migration's down drops its tables"
    );

    Migrator::down(&db.conn, Some(1)).await.unwrap();
    let reconcile_tables = db
        .scalar(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('job_leases', 'reconcile_runs')",
        )
        .await;
    assert_eq!(
        reconcile_tables, 0,
        "the eighth migration's down drops its tables"
    );

    Migrator::down(&db.conn, Some(1)).await.unwrap();
    let v2_signature = "SELECT count(*) FROM pg_proc WHERE proname = 'provision_user' \
         AND pronargs = 12 AND prosrc NOT LIKE '%email_held_later%'";
    assert_eq!(
        db.scalar(v2_signature).await,
        1,
        "the seventh migration's down brings provision_user v2 back"
    );

    Migrator::down(&db.conn, Some(1)).await.unwrap();
    assert_eq!(
        db.scalar(functions).await,
        0,
        "the sixth migration's down drops provision_user v2"
    );

    Migrator::down(&db.conn, Some(1)).await.unwrap();
    let churn_columns = db
        .scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name IN ('username_fallback', 'clerk_event_at', 'clerk_data_digest')")
        .await;
    assert_eq!(
        churn_columns, 0,
        "the fifth migration's down drops its columns"
    );
    assert_eq!(
        db.scalar(functions).await,
        1,
        "and brings provision_user v1 back"
    );

    Migrator::down(&db.conn, Some(1)).await.unwrap();
    assert_eq!(
        db.scalar(functions).await,
        0,
        "the fourth migration's down drops its function"
    );

    Migrator::down(&db.conn, Some(1)).await.unwrap();
    let tombstones = db
        .scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'user_tombstones'")
        .await;
    assert_eq!(tombstones, 0, "the third migration's down drops its table");

    Migrator::down(&db.conn, Some(1)).await.unwrap();
    let columns = db
        .scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'clerk_updated_at'")
        .await;
    assert_eq!(columns, 0, "the second migration's down drops its column");

    Migrator::down(&db.conn, None).await.unwrap();
    assert_eq!(table_count(&db).await, 0);

    Migrator::up(&db.conn, None).await.unwrap();
    assert_eq!(table_count(&db).await, 2);
}

#[tokio::test]
async fn defaults_are_the_products() {
    let db = TestDb::migrated().await;
    db.execute(&format!(
        "{INSERT_USER} ('user_1', 'a@example.com', 'alice')"
    ))
    .await;
    db.execute("INSERT INTO workspaces (user_id) VALUES ('user_1')")
        .await;
    let user = &db
        .rows("SELECT subscription_tier, storage_used, storage_limit FROM users")
        .await[0];
    assert_eq!(user["subscription_tier"], "free");
    assert_eq!(user["storage_used"], 0);
    assert_eq!(user["storage_limit"], 2_147_483_648_i64);
    let workspace = &db.rows("SELECT id, name FROM workspaces").await[0];
    assert_eq!(workspace["name"], "My Workspace");
    assert_eq!(
        workspace["id"].as_str().unwrap().len(),
        36,
        "a uuid as text"
    );
}

#[tokio::test]
async fn every_check_constraint_rejects_what_it_should() {
    let db = TestDb::migrated().await;
    let cases = [
        (constraint::VALID_EMAIL, format!("{INSERT_USER} ('u1', 'not-an-email', 'alice')")),
        (constraint::VALID_EMAIL, format!("{INSERT_USER} ('u1', 'a@b.c', 'alice')")),
        (constraint::VALID_USERNAME, format!("{INSERT_USER} ('u1', 'a@example.com', 'al')")),
        (constraint::VALID_USERNAME, format!("{INSERT_USER} ('u1', 'a@example.com', 'al-ice')")),
        (constraint::VALID_USERNAME, format!("{INSERT_USER} ('u1', 'a@example.com', '{}')", "x".repeat(31))),
        (
            "valid_storage_used",
            "INSERT INTO users (id, email, username, storage_used) VALUES ('u1', 'a@example.com', 'alice', -1)".to_owned(),
        ),
        (
            "valid_storage_limit",
            "INSERT INTO users (id, email, username, storage_limit) VALUES ('u1', 'a@example.com', 'alice', 0)".to_owned(),
        ),
    ];
    for (constraint, sql) in &cases {
        let err = refused(&db, sql).await;
        assert!(
            err.contains(constraint),
            "{sql}: expected {constraint}, got {err}"
        );
    }

    db.execute(&format!("{INSERT_USER} ('u1', 'a@example.com', 'alice')"))
        .await;
    for name in ["'   '", &format!("'{}'", "w".repeat(101))] {
        let sql = format!("INSERT INTO workspaces (user_id, name) VALUES ('u1', {name})");
        assert!(
            refused(&db, &sql).await.contains("valid_workspace_name"),
            "{sql}"
        );
    }
}

#[tokio::test]
async fn uniqueness_and_the_foreign_key_hold() {
    let db = TestDb::migrated().await;
    db.execute(&format!("{INSERT_USER} ('u1', 'a@example.com', 'alice')"))
        .await;
    let email = refused(
        &db,
        &format!("{INSERT_USER} ('u2', 'a@example.com', 'bob')"),
    )
    .await;
    assert!(email.contains(constraint::USERS_EMAIL_KEY), "{email}");
    let username = refused(
        &db,
        &format!("{INSERT_USER} ('u2', 'b@example.com', 'alice')"),
    )
    .await;
    assert!(
        username.contains(constraint::USERS_USERNAME_KEY),
        "{username}"
    );

    db.execute("INSERT INTO workspaces (user_id) VALUES ('u1')")
        .await;
    let second = refused(&db, "INSERT INTO workspaces (user_id) VALUES ('u1')").await;
    assert!(
        second.contains(constraint::UNIQUE_USER_WORKSPACE),
        "{second}"
    );
    let orphan = refused(&db, "INSERT INTO workspaces (user_id) VALUES ('nobody')").await;
    assert!(orphan.contains("foreign key"), "{orphan}");

    db.execute("DELETE FROM users WHERE id = 'u1'").await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM workspaces").await,
        0,
        "ON DELETE CASCADE"
    );
}

#[tokio::test]
async fn the_designed_indexes_exist() {
    let db = TestDb::migrated().await;
    for index in [
        "idx_users_email",
        "idx_users_username",
        "idx_users_created_at",
        "idx_workspaces_user_id",
        "idx_workspaces_created_at",
    ] {
        let sql = format!("SELECT count(*) FROM pg_indexes WHERE indexname = '{index}'");
        assert_eq!(db.scalar(&sql).await, 1, "{index}");
    }
}

#[tokio::test]
async fn entities_read_the_migrated_tables() {
    use sea_orm::{EntityTrait, ModelTrait};
    let db = TestDb::migrated().await;
    db.execute(&format!("{INSERT_USER} ('u1', 'a@example.com', 'alice')"))
        .await;
    db.execute("INSERT INTO workspaces (user_id) VALUES ('u1')")
        .await;
    let user = entity::users::Entity::find_by_id("u1")
        .one(&db.conn)
        .await
        .unwrap()
        .unwrap();
    let workspace = user
        .find_related(entity::workspaces::Entity)
        .one(&db.conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(workspace.user_id, "u1");
    assert_eq!(workspace.name, "My Workspace");
}
