//! The command line as operators use it: real processes, real database.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use integration_tests::clerk::fixture;
use integration_tests::{TestDb, drop_database, server_url};
use serde_json::Value;

fn worker(database_url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_worker-under-test"));
    command
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .env_remove("LOG_FORMAT");
    command
}

fn run(mut command: Command) -> Output {
    command.output().expect("the worker binary runs")
}

/// The single JSON line a command printed on stdout.
fn json_line(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "one line expected, got: {stdout}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The body in a temporary file, removed when the value is dropped.
fn write_temp(body: &[u8]) -> tempfile::TempPath {
    let mut file = tempfile::NamedTempFile::new().expect("a temp file");
    file.write_all(body).expect("temp file written");
    file.into_temp_path()
}

fn path(temp: &tempfile::TempPath) -> &str {
    temp.to_str().expect("utf-8 temp path")
}

#[tokio::test]
async fn migrate_creates_the_database_when_missing_and_is_idempotent() {
    let name = TestDb::unused_name();
    let url = format!("{}/{name}", server_url());
    let first = run(worker(&url, &["migrate"]));
    let second = run(worker(&url, &["migrate"]));
    let health = run(worker(&url, &["health"]));
    drop_database(name);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(health.status.success());
    assert_eq!(json_line(&health)["healthy"], true);
}

#[tokio::test]
async fn health_reports_each_check_as_json() {
    let db = TestDb::migrated().await;
    let output = run(worker(db.settings.expose_url(), &["health"]));
    assert!(output.status.success());
    let report = json_line(&output);
    assert_eq!(report["healthy"], true);
    for check in [
        "connection",
        "users_table",
        "workspaces_table",
        "constraints",
    ] {
        assert_eq!(report["checks"][check], true, "{check}");
    }
    assert!(report["timestamp"].as_str().unwrap().contains('T'));
}

#[tokio::test]
async fn health_fails_on_an_unmigrated_database() {
    let db = TestDb::empty().await;
    let output = run(worker(db.settings.expose_url(), &["health"]));
    assert_eq!(output.status.code(), Some(1));
    let report = json_line(&output);
    assert_eq!(report["healthy"], false);
    assert_eq!(report["checks"]["connection"], true);
    assert_eq!(report["checks"]["users_table"], false);
    assert!(report["error"].as_str().unwrap().contains("worker migrate"));
}

#[tokio::test]
async fn health_fails_when_the_database_is_unreachable() {
    let mut command = worker("postgres://postgres@127.0.0.1:1/nowhere", &["health"]);
    command.env("DATABASE_CONNECT_TIMEOUT", "500ms");
    let output = run(command);
    assert_eq!(output.status.code(), Some(1));
    let report = json_line(&output);
    assert_eq!(report["healthy"], false);
    assert_eq!(report["checks"]["connection"], false);
}

#[tokio::test]
async fn provision_applies_a_file_and_prints_one_json_line() {
    let db = TestDb::migrated().await;
    let file = write_temp(&fixture("user_created.json"));
    let output = run(worker(
        db.settings.expose_url(),
        &["provision", path(&file)],
    ));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = json_line(&output);
    assert_eq!(line["outcome"], "created");
    assert_eq!(line["event_type"], "user.created");
    assert_eq!(line["user_id"], "user_39BL7AjFtiageEwS3wHL0KvAXLh");
    assert_eq!(db.scalar("SELECT count(*) FROM workspaces").await, 1);

    let again = run(worker(
        db.settings.expose_url(),
        &["provision", path(&file)],
    ));
    assert_eq!(json_line(&again)["outcome"], "already_existed");
}

#[tokio::test]
async fn provision_reads_standard_input_with_a_dash() {
    let db = TestDb::migrated().await;
    let mut command = worker(db.settings.expose_url(), &["provision", "-"]);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let body = fixture("user_created_null_username_second_email_primary.json");
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(json_line(&output)["outcome"], "created");
}

#[tokio::test]
async fn provision_exits_65_with_the_reason_on_a_permanent_failure() {
    let db = TestDb::migrated().await;
    let file = write_temp(&fixture("user_created_phone_only.json"));
    let output = run(worker(
        db.settings.expose_url(),
        &["provision", path(&file)],
    ));
    assert_eq!(output.status.code(), Some(65));
    let line = json_line(&output);
    assert_eq!(line["outcome"], "failed");
    assert_eq!(line["reason"], "missing_email");
    assert_eq!(line["retryable"], false);
    assert_eq!(line["user_id"], Value::Null);

    let garbage = write_temp(b"not json at all");
    let output = run(worker(
        db.settings.expose_url(),
        &["provision", path(&garbage)],
    ));
    assert_eq!(output.status.code(), Some(65));
    assert_eq!(json_line(&output)["reason"], "invalid_payload");
}

#[tokio::test]
async fn provision_exits_75_on_a_conflict_that_a_later_event_may_resolve() {
    let db = TestDb::migrated().await;
    db.execute("INSERT INTO users (id, email, username) VALUES ('user_2ana_old', 'marta.lopez@example.com', 'ana_old')").await;
    let file = write_temp(&fixture("user_created.json"));
    let output = run(worker(
        db.settings.expose_url(),
        &["provision", path(&file)],
    ));
    assert_eq!(output.status.code(), Some(75));
    let line = json_line(&output);
    assert_eq!(line["reason"], "email_conflict");
    assert_eq!(line["retryable"], true);

    // The old account's deletion frees the email: the same command now succeeds.
    let deletion = write_temp(&integration_tests::clerk::deleted_body("user_2ana_old", 1));
    let output = run(worker(
        db.settings.expose_url(),
        &["provision", path(&deletion)],
    ));
    assert_eq!(json_line(&output)["outcome"], "deleted");
    let output = run(worker(
        db.settings.expose_url(),
        &["provision", path(&file)],
    ));
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(json_line(&output)["outcome"], "created");
}

#[tokio::test]
async fn provision_exits_75_when_the_database_is_unreachable() {
    let file = write_temp(&fixture("user_created.json"));
    let mut command = worker(
        "postgres://postgres@127.0.0.1:1/nowhere",
        &["provision", path(&file)],
    );
    command.env("DATABASE_CONNECT_TIMEOUT", "500ms");
    let output = run(command);
    assert_eq!(output.status.code(), Some(75));
    let line = json_line(&output);
    assert_eq!(line["reason"], "database_unavailable");
    assert_eq!(line["retryable"], true);
}

#[tokio::test]
async fn provision_of_a_missing_file_fails_clearly() {
    let output = run(worker(
        "postgres://unused/x",
        &["provision", "/nonexistent/event.json"],
    ));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/event.json"), "{stderr}");
}

#[tokio::test]
async fn json_logs_are_json() {
    let db = TestDb::migrated().await;
    let mut command = worker(db.settings.expose_url(), &["migrate"]);
    command.env("LOG_FORMAT", "json").env("RUST_LOG", "info");
    let output = run(command);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = stderr.lines().next().expect("a log line");
    let line: Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(line["level"], "INFO");
}

#[tokio::test]
async fn the_migration_cli_goes_up_status_down_and_fresh() {
    let db = TestDb::empty().await;
    let migration = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_migration-under-test"))
            .args(args)
            .env("DATABASE_URL", db.settings.expose_url())
            .output()
            .expect("the migration binary runs");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    };
    migration(&["up"]);
    let status = migration(&["status"]);
    assert!(
        status.contains("m20261204_000009_create_dead_letters"),
        "{status}"
    );
    // The dead-letter store's down drops its three tables.
    migration(&["down", "-n", "1"]);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('dead_letters', 'dead_letter_actions', 'dead_letter_history')"
        )
        .await,
        0
    );
    // The reconcile tables' down drops them and the tombstones' column.
    migration(&["down", "-n", "1"]);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('job_leases', 'reconcile_runs')"
        )
        .await,
        0
    );
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'user_tombstones' AND column_name = 'reconcile_run'"
        )
        .await,
        0
    );
    // v3's down brings v2 back: the function is still there, with the same signature.
    migration(&["down", "-n", "1"]);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM pg_proc WHERE proname = 'provision_user' AND pronargs = 12 AND prosrc NOT LIKE '%email_held_later%'"
        )
        .await,
        1
    );
    migration(&["down", "-n", "6"]);
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_tables WHERE tablename IN ('users', 'workspaces')")
            .await,
        0
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_proc WHERE proname = 'provision_user'")
            .await,
        0
    );
    migration(&["fresh"]);
    assert_eq!(
        db.scalar("SELECT count(*) FROM pg_tables WHERE tablename IN ('users', 'workspaces')")
            .await,
        2
    );
}
