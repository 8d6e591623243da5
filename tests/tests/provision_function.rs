//! `provision_user` itself, called as SQL on a freshly migrated database: one table row per rule
//! the function implements (see `migration/src/sql/provision_user_v1.sql`), each with its setup,
//! the call, the answer it gives and the state it leaves. The worker only reads the answer; these
//! rules are the function's contract.
//!
//! Every case runs in a transaction of its own that is rolled back, so the cases share one
//! database without seeing each other. Times are seconds since the epoch on Clerk's clock.

use integration_tests::TestDb;
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, QueryResult, Statement,
    TransactionTrait, Value,
};
use serde_json::{Value as Json, json};

const ID: &str = "user_2fn";
const OTHER: &str = "user_2other";

/// The user, stored from an event at 1000, as if by an earlier call (`updated_at` long ago, so a
/// write shows).
const STORED: &str = "INSERT INTO users (id, email, username, first_name, last_name, avatar_url, \
     clerk_updated_at, updated_at) VALUES ('user_2fn', 'fn@example.com', 'fn_user', 'Ada', \
     'Lovelace', 'https://img.example/a.png', to_timestamp(1000), '2000-01-01')";
/// The stored user's workspace, named as the user named it.
const WORKSPACE: &str =
    "INSERT INTO workspaces (id, user_id, name) VALUES ('ws_1', 'user_2fn', 'Team')";
/// Someone else, who already holds the username `fn_user`.
const OTHER_HOLDS_FN_USER: &str = "INSERT INTO users (id, email, username, clerk_updated_at, \
     updated_at) VALUES ('user_2other', 'other@example.com', 'fn_user', to_timestamp(500), \
     '2000-01-01')";
const TOMBSTONE_AT_500: &str =
    "INSERT INTO user_tombstones (user_id, deleted_at) VALUES ('user_2fn', to_timestamp(500))";
const TOMBSTONE_AT_1000: &str =
    "INSERT INTO user_tombstones (user_id, deleted_at) VALUES ('user_2fn', to_timestamp(1000))";
const TOMBSTONE_AT_2000: &str =
    "INSERT INTO user_tombstones (user_id, deleted_at) VALUES ('user_2fn', to_timestamp(2000))";

const CALL: &str = "SELECT user_write, workspace_id, workspace_created FROM provision_user($1, \
     $2, $3, $4, $5, $6, $7, $8, to_timestamp($9::bigint), $10)";

/// Everything the function can change, as JSON: users (with whether `updated_at` moved past the
/// setup's), workspaces and tombstones.
const STATE: &str = r#"
SELECT jsonb_build_object(
    'users', COALESCE((SELECT jsonb_agg(jsonb_build_object(
        'id', id, 'email', email, 'username', username, 'first_name', first_name,
        'last_name', last_name, 'avatar_url', avatar_url,
        'clerk_updated_at', extract(epoch FROM clerk_updated_at)::bigint,
        'touched', updated_at > '2000-01-01') ORDER BY id) FROM users), '[]'),
    'workspaces', COALESCE((SELECT jsonb_agg(jsonb_build_object('user_id', user_id, 'name', name)
        ORDER BY user_id) FROM workspaces), '[]'),
    'tombstones', COALESCE((SELECT jsonb_agg(jsonb_build_object('user_id', user_id,
        'deleted_at', extract(epoch FROM deleted_at)::bigint) ORDER BY user_id)
        FROM user_tombstones), '[]')
) AS state
"#;

/// One call's parameters, in the function's order.
#[derive(Clone, Copy, Debug)]
struct Call {
    id: &'static str,
    email: &'static str,
    username: &'static str,
    fallback: Option<&'static str>,
    derived: bool,
    first_name: Option<&'static str>,
    last_name: Option<&'static str>,
    avatar_url: Option<&'static str>,
    updated_at: i64,
    workspace_name: &'static str,
}

/// The stored user's own event: same fields, same time.
const SIGN_UP: Call = Call {
    id: ID,
    email: "fn@example.com",
    username: "fn_user",
    fallback: None,
    derived: false,
    first_name: Some("Ada"),
    last_name: Some("Lovelace"),
    avatar_url: Some("https://img.example/a.png"),
    updated_at: 1000,
    workspace_name: "My Workspace",
};

/// A later event that changes every field, the username chosen.
const NEWER: Call = Call {
    email: "ada@example.org",
    username: "countess",
    first_name: Some("Augusta"),
    last_name: None,
    avatar_url: None,
    updated_at: 2000,
    ..SIGN_UP
};

/// A sign-up without a username: `fn_user` derived from the email, and its fallback.
const DERIVED: Call = Call {
    fallback: Some("fn_user_2fn"),
    derived: true,
    ..SIGN_UP
};

/// One rule: the database before, the call, and what the function must answer and leave.
struct Case {
    rule: &'static str,
    setup: &'static [&'static str],
    call: Call,
    /// `user_write` and `workspace_created`, as the function answers them.
    answer: (&'static str, Option<bool>),
    /// [`STATE`] afterwards.
    state: Json,
}

/// The stored user's row, untouched.
fn stored() -> Json {
    written(&SIGN_UP, "fn_user", false)
}

/// The row `call` writes, with the username the function picks.
fn written(call: &Call, username: &str, touched: bool) -> Json {
    json!({
        "id": call.id, "email": call.email, "username": username,
        "first_name": call.first_name, "last_name": call.last_name,
        "avatar_url": call.avatar_url, "clerk_updated_at": call.updated_at, "touched": touched,
    })
}

fn other() -> Json {
    json!({
        "id": OTHER, "email": "other@example.com", "username": "fn_user", "first_name": null,
        "last_name": null, "avatar_url": null, "clerk_updated_at": 500, "touched": false,
    })
}

fn workspace(name: &str) -> Json {
    json!({"user_id": ID, "name": name})
}

fn tombstone(deleted_at: i64) -> Json {
    json!({"user_id": ID, "deleted_at": deleted_at})
}

fn state(users: Vec<Json>, workspaces: Vec<Json>, tombstones: Vec<Json>) -> Json {
    json!({"users": users, "workspaces": workspaces, "tombstones": tombstones})
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            rule: "a new user is inserted with the event's fields and Clerk's time, and gets a workspace",
            setup: &[],
            call: SIGN_UP,
            answer: ("inserted", Some(true)),
            state: state(
                vec![written(&SIGN_UP, "fn_user", true)],
                vec![workspace("My Workspace")],
                vec![],
            ),
        },
        Case {
            rule: "the same event again changes nothing (a duplicate)",
            setup: &[STORED, WORKSPACE],
            call: SIGN_UP,
            answer: ("unchanged", Some(false)),
            state: state(vec![stored()], vec![workspace("Team")], vec![]),
        },
        Case {
            rule: "a newer event updates every field, a chosen username included",
            setup: &[STORED, WORKSPACE],
            call: NEWER,
            answer: ("updated", Some(false)),
            state: state(
                vec![written(&NEWER, "countess", true)],
                vec![workspace("Team")],
                vec![],
            ),
        },
        Case {
            rule: "an older event is stale and changes nothing",
            setup: &[STORED, WORKSPACE],
            call: Call {
                updated_at: 500,
                ..NEWER
            },
            answer: ("stale", Some(false)),
            state: state(vec![stored()], vec![workspace("Team")], vec![]),
        },
        Case {
            rule: "a tombstone newer than the event keeps the user deleted, without a workspace",
            setup: &[TOMBSTONE_AT_2000],
            call: SIGN_UP,
            answer: ("deleted", None),
            state: state(vec![], vec![], vec![tombstone(2000)]),
        },
        Case {
            rule: "a tombstone exactly as new as the event keeps the user deleted too",
            setup: &[TOMBSTONE_AT_1000],
            call: SIGN_UP,
            answer: ("deleted", None),
            state: state(vec![], vec![], vec![tombstone(1000)]),
        },
        Case {
            rule: "a tombstone older than the event does not stop it, and stays",
            setup: &[TOMBSTONE_AT_500],
            call: SIGN_UP,
            answer: ("inserted", Some(true)),
            state: state(
                vec![written(&SIGN_UP, "fn_user", true)],
                vec![workspace("My Workspace")],
                vec![tombstone(500)],
            ),
        },
        Case {
            rule: "a free derived username is taken as it is",
            setup: &[],
            call: DERIVED,
            answer: ("inserted", Some(true)),
            state: state(
                vec![written(&DERIVED, "fn_user", true)],
                vec![workspace("My Workspace")],
                vec![],
            ),
        },
        Case {
            rule: "a derived username another user holds yields to the fallback",
            setup: &[OTHER_HOLDS_FN_USER],
            call: DERIVED,
            answer: ("inserted", Some(true)),
            state: state(
                vec![written(&DERIVED, "fn_user_2fn", true), other()],
                vec![workspace("My Workspace")],
                vec![],
            ),
        },
        Case {
            rule: "a derived username never replaces a stored one",
            setup: &[STORED, WORKSPACE],
            call: Call {
                username: "ada",
                fallback: Some("ada_2fn"),
                derived: true,
                ..NEWER
            },
            answer: ("updated", Some(false)),
            state: state(
                vec![written(&NEWER, "fn_user", true)],
                vec![workspace("Team")],
                vec![],
            ),
        },
        Case {
            rule: "a lost workspace is created even by a duplicate",
            setup: &[STORED],
            call: SIGN_UP,
            answer: ("unchanged", Some(true)),
            state: state(vec![stored()], vec![workspace("My Workspace")], vec![]),
        },
        Case {
            rule: "a lost workspace is created even by a stale event",
            setup: &[STORED],
            call: Call {
                updated_at: 500,
                ..NEWER
            },
            answer: ("stale", Some(true)),
            state: state(vec![stored()], vec![workspace("My Workspace")], vec![]),
        },
        Case {
            rule: "a newer event for a user without a workspace updates the user and creates it",
            setup: &[STORED],
            call: NEWER,
            answer: ("updated", Some(true)),
            state: state(
                vec![written(&NEWER, "countess", true)],
                vec![workspace("My Workspace")],
                vec![],
            ),
        },
        Case {
            rule: "the workspace gets the name the caller passes",
            setup: &[],
            call: Call {
                workspace_name: "Ada's Space",
                ..SIGN_UP
            },
            answer: ("inserted", Some(true)),
            state: state(
                vec![written(&SIGN_UP, "fn_user", true)],
                vec![workspace("Ada's Space")],
                vec![],
            ),
        },
        Case {
            rule: "an existing workspace is never created again nor renamed",
            setup: &[STORED, WORKSPACE],
            call: Call {
                workspace_name: "Renamed",
                ..NEWER
            },
            answer: ("updated", Some(false)),
            state: state(
                vec![written(&NEWER, "countess", true)],
                vec![workspace("Team")],
                vec![],
            ),
        },
    ]
}

fn parameters(call: &Call) -> Vec<Value> {
    let text = |value: Option<&str>| Value::from(value.map(str::to_owned));
    vec![
        call.id.into(),
        call.email.into(),
        call.username.into(),
        text(call.fallback),
        call.derived.into(),
        text(call.first_name),
        text(call.last_name),
        text(call.avatar_url),
        call.updated_at.into(),
        call.workspace_name.into(),
    ]
}

async fn call(txn: &DatabaseTransaction, call: &Call) -> Result<QueryResult, DbErr> {
    let statement = Statement::from_sql_and_values(DbBackend::Postgres, CALL, parameters(call));
    let row = txn.query_one_raw(statement).await?;
    row.ok_or_else(|| DbErr::RecordNotFound("provision_user answered no row".into()))
}

async fn query_one(txn: &DatabaseTransaction, sql: &str) -> QueryResult {
    txn.query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

async fn setup(txn: &DatabaseTransaction, statements: &[&str]) {
    for sql in statements {
        txn.execute_unprepared(sql)
            .await
            .unwrap_or_else(|err| panic!("{sql}: {err}"));
    }
}

/// Runs one case in a transaction of its own, rolled back afterwards.
async fn check(db: &TestDb, case: &Case) {
    let rule = case.rule;
    let txn = db.conn.begin().await.unwrap();
    setup(&txn, case.setup).await;
    let answer = call(&txn, &case.call)
        .await
        .unwrap_or_else(|err| panic!("{rule}: {err}"));
    let user_write: String = answer.try_get("", "user_write").unwrap();
    let workspace_created: Option<bool> = answer.try_get("", "workspace_created").unwrap();
    let workspace_id: Option<String> = answer.try_get("", "workspace_id").unwrap();
    assert_eq!(
        (user_write.as_str(), workspace_created),
        case.answer,
        "{rule}"
    );

    let state: Json = query_one(&txn, STATE).await.try_get("", "state").unwrap();
    assert_eq!(state, case.state, "{rule}");
    let sql = format!("SELECT min(id) AS id FROM workspaces WHERE user_id = '{ID}'");
    let stored_id: Option<String> = query_one(&txn, &sql).await.try_get("", "id").unwrap();
    assert_eq!(
        workspace_id, stored_id,
        "{rule}: the answer names the workspace"
    );
    txn.rollback().await.unwrap();
}

#[tokio::test]
async fn every_rule_of_provision_user() {
    let db = TestDb::migrated().await;
    for case in cases() {
        check(&db, &case).await;
    }
}

#[tokio::test]
async fn a_second_call_finds_the_workspace_the_first_created() {
    let db = TestDb::migrated().await;
    let txn = db.conn.begin().await.unwrap();
    let first = call(&txn, &SIGN_UP).await.unwrap();
    let second = call(&txn, &NEWER).await.unwrap();
    let id = |row: &QueryResult| row.try_get::<String>("", "workspace_id").unwrap();
    let created = |row: &QueryResult| row.try_get::<bool>("", "workspace_created").unwrap();
    assert!(created(&first));
    assert!(!created(&second));
    assert_eq!(id(&first), id(&second));
    let count = query_one(&txn, "SELECT count(*)::int8 AS n FROM workspaces").await;
    assert_eq!(count.try_get::<i64>("", "n").unwrap(), 1);
    txn.rollback().await.unwrap();
}

/// What the function leaves to the schema: a row the schema refuses fails the call, and the
/// caller (the worker's classifier) decides what that costs.
struct Refusal {
    rule: &'static str,
    setup: &'static [&'static str],
    call: Call,
    /// The constraint the error names.
    constraint: &'static str,
}

fn refusals() -> Vec<Refusal> {
    vec![
        Refusal {
            rule: "a chosen username another user holds is never swapped for a fallback",
            setup: &[OTHER_HOLDS_FN_USER],
            call: SIGN_UP,
            constraint: "users_username_key",
        },
        Refusal {
            rule: "a derived username whose fallback is taken too is refused",
            setup: &[
                OTHER_HOLDS_FN_USER,
                "INSERT INTO users (id, email, username) VALUES ('user_2third', \
                 'third@example.com', 'fn_user_2fn')",
            ],
            call: DERIVED,
            constraint: "users_username_key",
        },
        Refusal {
            rule: "an email another user holds is refused",
            setup: &[OTHER_HOLDS_FN_USER],
            call: Call {
                email: "other@example.com",
                username: "fn_own",
                ..SIGN_UP
            },
            constraint: "users_email_key",
        },
        Refusal {
            rule: "an email the schema's rule refuses is refused",
            setup: &[],
            call: Call {
                email: "not-an-email",
                ..SIGN_UP
            },
            constraint: "valid_email",
        },
        Refusal {
            rule: "a blank workspace name is refused",
            setup: &[],
            call: Call {
                workspace_name: "  ",
                ..SIGN_UP
            },
            constraint: "valid_workspace_name",
        },
    ]
}

#[tokio::test]
async fn rows_the_schema_refuses_fail_the_call() {
    let db = TestDb::migrated().await;
    for refusal in refusals() {
        let txn = db.conn.begin().await.unwrap();
        setup(&txn, refusal.setup).await;
        let err = call(&txn, &refusal.call)
            .await
            .expect_err(refusal.rule)
            .to_string();
        assert!(err.contains(refusal.constraint), "{}: {err}", refusal.rule);
        txn.rollback().await.unwrap();
    }
}
