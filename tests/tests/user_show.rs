//! `worker user show` as operators run it: a live, a deleted and an unknown user, by each key.

use std::process::{Command, Output};

use integration_tests::TestDb;
use integration_tests::clerk::{UserEvent, deleted_body, provision};
use serde_json::Value;

const LIVE: &str = "user_2showlive0001";
const GONE: &str = "user_2showgone0001";

fn show(db: &TestDb, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_worker-under-test"))
        .arg("user")
        .arg("show")
        .args(args)
        .env("DATABASE_URL", db.settings.expose_url())
        .env("RUST_LOG", "warn")
        .env_remove("LOG_FORMAT")
        .output()
        .expect("the worker binary runs")
}

fn json(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

async fn seeded() -> TestDb {
    let db = TestDb::migrated().await;
    let live = UserEvent::created(LIVE, "live@example.com", Some("live_one"));
    provision(&db.conn, &live.body()).await.expect("live user");
    let gone = UserEvent::created(GONE, "gone@example.com", Some("gone_one"));
    provision(&db.conn, &gone.body()).await.expect("user");
    provision(&db.conn, &deleted_body(GONE, gone.updated_at + 1000))
        .await
        .expect("deletion");
    db
}

#[tokio::test]
async fn a_live_user_is_found_by_id_email_and_username_with_the_workspace() {
    let db = seeded().await;
    for key in [
        vec![LIVE],
        vec!["--email", "live@example.com"],
        vec!["--username", "live_one"],
    ] {
        let output = show(&db, &[&key[..], &["--json"]].concat());
        assert_eq!(output.status.code(), Some(0), "{key:?}: {output:?}");
        let user = json(&output);
        assert_eq!(user["status"], "live");
        assert_eq!(user["id"], LIVE);
        assert_eq!(user["email"], "live@example.com");
        assert_eq!(user["username"], "live_one");
        assert_eq!(user["first_name"], "Test");
        assert_eq!(user["last_name"], "User");
        assert_eq!(user["avatar_url"], "https://img.clerk.com/test");
        assert_eq!(user["subscription_tier"], "free");
        assert_eq!(user["storage_used"], 0);
        assert_eq!(user["storage_limit"], 2_147_483_648_i64);
        assert!(
            user["clerk_updated_at"]
                .as_str()
                .is_some_and(|t| t.starts_with("2025-11-28")),
            "{user}"
        );
        assert_eq!(user["workspace"]["name"], "My Workspace");
        assert!(user["workspace"]["id"].is_string());
        assert!(user["workspace"]["created_at"].is_string());
    }
    let text = show(&db, &[LIVE]);
    assert_eq!(text.status.code(), Some(0));
    let text = String::from_utf8_lossy(&text.stdout);
    for part in [
        "live@example.com",
        "live_one",
        "My Workspace",
        "clerk_updated_at",
    ] {
        assert!(text.contains(part), "{part} missing from:\n{text}");
    }
}

#[tokio::test]
async fn a_deleted_user_is_found_by_id_only_with_the_deletion_time() {
    let db = seeded().await;
    let output = show(&db, &[GONE, "--json"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let user = json(&output);
    assert_eq!(user["status"], "deleted");
    assert_eq!(user["id"], GONE);
    assert!(user["deleted_at"].is_string());
    let text = show(&db, &[GONE]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("deleted"));
    for key in [["--email", "gone@example.com"], ["--username", "gone_one"]] {
        assert_eq!(show(&db, &key).status.code(), Some(67), "{key:?}");
    }
}

#[tokio::test]
async fn an_unknown_user_exits_67_by_each_key() {
    let db = seeded().await;
    for key in [
        vec!["user_2nobody"],
        vec!["--email", "nobody@example.com"],
        vec!["--username", "nobody"],
    ] {
        let output = show(&db, &[&key[..], &["--json"]].concat());
        assert_eq!(output.status.code(), Some(67), "{key:?}: {output:?}");
        assert!(output.stdout.is_empty());
    }
}

#[tokio::test]
async fn a_key_is_required() {
    let db = TestDb::migrated().await;
    assert_eq!(show(&db, &[]).status.code(), Some(2));
}
