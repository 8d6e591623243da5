//! `provision_user` itself, called as SQL on a freshly migrated database: one table row per rule
//! the function implements (see `migration/src/sql/provision_user_v3.sql`), each with its setup,
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
use worker::provision::contract::constraint;

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
/// The stored user, from an event with the same `updated_at` whose envelope said 2000.
const STORED_AT_1000_TIMESTAMP_2000: &str = "INSERT INTO users (id, email, username, first_name, \
     last_name, avatar_url, clerk_updated_at, clerk_event_at, updated_at) VALUES ('user_2fn', \
     'fn@example.com', 'fn_user', 'Ada', 'Lovelace', 'https://img.example/a.png', \
     to_timestamp(1000), to_timestamp(2000), '2000-01-01')";
/// The other user, holding `countess` derived, with `fn_user_2other` as fallback.
const OTHER_DERIVED_COUNTESS: &str = "INSERT INTO users (id, email, username, username_fallback, \
     clerk_updated_at, updated_at) VALUES ('user_2other', 'other@example.com', 'countess', \
     'fn_user_2other', to_timestamp(500), '2000-01-01')";

const CALL: &str = "SELECT user_write, workspace_id, workspace_created, reassigned_user_id, \
     reassigned_username FROM provision_user($1, $2, $3, $4, $5, $6, $7, $8, \
     to_timestamp($9::bigint), to_timestamp($10::bigint), decode($11, 'hex'), $12)";
/// Someone else, holding `other@example.com` and the chosen username `countess` as of Clerk time
/// 3000, later than any call here.
const OTHER_LATER: &str = "INSERT INTO users (id, email, username, clerk_updated_at, \
     updated_at) VALUES ('user_2other', 'other@example.com', 'countess', to_timestamp(3000), \
     '2000-01-01')";
/// Someone else, who holds the username `fn_user` only because it was derived for them.
const OTHER_DERIVED_FN_USER: &str = "INSERT INTO users (id, email, username, username_fallback, \
     clerk_updated_at, updated_at) VALUES ('user_2other', 'other@example.com', 'fn_user', \
     'fn_user_2other', to_timestamp(500), '2000-01-01')";

/// Everything the function can change, as JSON: users (with whether `updated_at` moved past the
/// setup's), workspaces and tombstones.
const STATE: &str = r#"
SELECT jsonb_build_object(
    'users', COALESCE((SELECT jsonb_agg(jsonb_build_object(
        'id', id, 'email', email, 'username', username, 'first_name', first_name,
        'last_name', last_name, 'avatar_url', avatar_url,
        'username_fallback', username_fallback,
        'clerk_updated_at', extract(epoch FROM clerk_updated_at)::bigint,
        'clerk_event_at', extract(epoch FROM clerk_event_at)::bigint,
        'digest', encode(clerk_data_digest, 'hex'),
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
    /// The envelope `timestamp`: the first tie-break.
    event_at: i64,
    /// The content digest, in hex: the last tie-break.
    digest: &'static str,
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
    event_at: 0,
    digest: "",
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

/// [`NEWER`] after the user removed their username in Clerk: `ada` derived from the new email.
const NEWER_DERIVED: Call = Call {
    username: "ada",
    fallback: Some("ada_2fn"),
    derived: true,
    ..NEWER
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
    /// The user whose derived username the call took, and their username now.
    reassigned: Option<(&'static str, &'static str)>,
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
        "username_fallback": if call.derived { call.fallback } else { None },
        "first_name": call.first_name, "last_name": call.last_name,
        "avatar_url": call.avatar_url, "clerk_updated_at": call.updated_at,
        "clerk_event_at": call.event_at, "digest": call.digest, "touched": touched,
    })
}

fn other() -> Json {
    other_as("fn_user", None, false)
}

/// The other user as [`OTHER_DERIVED_FN_USER`] left them, with `username` now.
fn other_derived(username: &str, touched: bool) -> Json {
    other_as(username, Some("fn_user_2other"), touched)
}

/// `row` with `key` set to `value`.
fn patched(mut row: Json, key: &str, value: &str) -> Json {
    row[key] = json!(value);
    row
}

/// The other user as [`OTHER_LATER`] left them.
fn other_later() -> Json {
    json!({
        "id": OTHER, "email": "other@example.com", "username": "countess",
        "username_fallback": null, "first_name": null, "last_name": null,
        "avatar_url": null, "clerk_updated_at": 3000, "clerk_event_at": 0, "digest": "",
        "touched": false,
    })
}

fn other_as(username: &str, fallback: Option<&str>, touched: bool) -> Json {
    json!({
        "id": OTHER, "email": "other@example.com", "username": username,
        "username_fallback": fallback, "first_name": null, "last_name": null,
        "avatar_url": null, "clerk_updated_at": 500, "clerk_event_at": 0, "digest": "",
        "touched": touched,
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
            reassigned: None,
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
            reassigned: None,
            state: state(vec![stored()], vec![workspace("Team")], vec![]),
        },
        Case {
            rule: "a newer event updates every field, a chosen username included",
            setup: &[STORED, WORKSPACE],
            call: NEWER,
            answer: ("updated", Some(false)),
            reassigned: None,
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
            reassigned: None,
            state: state(vec![stored()], vec![workspace("Team")], vec![]),
        },
        Case {
            rule: "a tombstone keeps the user deleted, without a workspace",
            setup: &[TOMBSTONE_AT_500],
            call: SIGN_UP,
            answer: ("deleted", None),
            reassigned: None,
            state: state(vec![], vec![], vec![tombstone(500)]),
        },
        Case {
            rule: "deletion is final: an event newer than the tombstone keeps the user deleted too",
            setup: &[TOMBSTONE_AT_1000],
            call: NEWER,
            answer: ("deleted", None),
            reassigned: None,
            state: state(vec![], vec![], vec![tombstone(1000)]),
        },
        Case {
            rule: "with the same updated_at, the larger envelope timestamp wins",
            setup: &[STORED, WORKSPACE],
            call: Call {
                updated_at: 1000,
                event_at: 1001,
                ..NEWER
            },
            answer: ("updated", Some(false)),
            reassigned: None,
            state: state(
                vec![written(
                    &Call {
                        updated_at: 1000,
                        event_at: 1001,
                        ..NEWER
                    },
                    "countess",
                    true,
                )],
                vec![workspace("Team")],
                vec![],
            ),
        },
        Case {
            rule: "with the same clocks, the larger digest wins",
            setup: &[STORED, WORKSPACE],
            call: Call {
                updated_at: 1000,
                digest: "01",
                ..NEWER
            },
            answer: ("updated", Some(false)),
            reassigned: None,
            state: state(
                vec![written(
                    &Call {
                        updated_at: 1000,
                        digest: "01",
                        ..NEWER
                    },
                    "countess",
                    true,
                )],
                vec![workspace("Team")],
                vec![],
            ),
        },
        Case {
            rule: "with the same updated_at, a smaller envelope timestamp is stale",
            setup: &[STORED_AT_1000_TIMESTAMP_2000, WORKSPACE],
            call: Call {
                updated_at: 1000,
                event_at: 1500,
                ..NEWER
            },
            answer: ("stale", Some(false)),
            reassigned: None,
            state: state(
                vec![written(
                    &Call {
                        event_at: 2000,
                        ..SIGN_UP
                    },
                    "fn_user",
                    false,
                )],
                vec![workspace("Team")],
                vec![],
            ),
        },
        Case {
            rule: "an email another user holds as of a later time: the row takes a stand-in, the newer event will replace it",
            setup: &[OTHER_LATER],
            call: Call {
                email: "other@example.com",
                ..SIGN_UP
            },
            answer: ("inserted", Some(true)),
            reassigned: None,
            state: state(
                vec![
                    patched(
                        written(&SIGN_UP, "fn_user", true),
                        "email",
                        "user_2fn@superseded.invalid",
                    ),
                    other_later(),
                ],
                vec![workspace("My Workspace")],
                vec![],
            ),
        },
        Case {
            rule: "a chosen username another user holds as of a later time: the derived fallback stands in",
            setup: &[STORED, WORKSPACE, OTHER_LATER],
            call: Call {
                fallback: Some("ada_2fn"),
                ..NEWER
            },
            answer: ("updated", Some(false)),
            reassigned: None,
            state: state(
                vec![
                    patched(
                        written(&NEWER, "ada_2fn", true),
                        "username_fallback",
                        "ada_2fn",
                    ),
                    other_later(),
                ],
                vec![workspace("Team")],
                vec![],
            ),
        },
        Case {
            rule: "a chosen username takes a derived one from its holder, who moves to their fallback",
            setup: &[OTHER_DERIVED_FN_USER],
            call: SIGN_UP,
            answer: ("inserted", Some(true)),
            reassigned: Some((OTHER, "fn_user_2other")),
            state: state(
                vec![
                    written(&SIGN_UP, "fn_user", true),
                    other_derived("fn_user_2other", true),
                ],
                vec![workspace("My Workspace")],
                vec![],
            ),
        },
        Case {
            rule: "a user who sets a username in Clerk gets it, taking it from a derived holder",
            setup: &[STORED, WORKSPACE, OTHER_DERIVED_COUNTESS],
            call: NEWER,
            answer: ("updated", Some(false)),
            reassigned: Some((OTHER, "fn_user_2other")),
            state: state(
                vec![
                    written(&NEWER, "countess", true),
                    other_derived("fn_user_2other", true),
                ],
                vec![workspace("Team")],
                vec![],
            ),
        },
        Case {
            rule: "a free derived username is taken as it is",
            setup: &[],
            call: DERIVED,
            answer: ("inserted", Some(true)),
            reassigned: None,
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
            reassigned: None,
            state: state(
                vec![written(&DERIVED, "fn_user_2fn", true), other()],
                vec![workspace("My Workspace")],
                vec![],
            ),
        },
        Case {
            rule: "a derived username never replaces a stored one, which is then flagged as derived",
            setup: &[STORED, WORKSPACE],
            call: NEWER_DERIVED,
            answer: ("updated", Some(false)),
            reassigned: None,
            state: state(
                vec![written(&NEWER_DERIVED, "fn_user", true)],
                vec![workspace("Team")],
                vec![],
            ),
        },
        Case {
            rule: "a lost workspace is created even by a duplicate",
            setup: &[STORED],
            call: SIGN_UP,
            answer: ("unchanged", Some(true)),
            reassigned: None,
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
            reassigned: None,
            state: state(vec![stored()], vec![workspace("My Workspace")], vec![]),
        },
        Case {
            rule: "a newer event for a user without a workspace updates the user and creates it",
            setup: &[STORED],
            call: NEWER,
            answer: ("updated", Some(true)),
            reassigned: None,
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
            reassigned: None,
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
            reassigned: None,
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
        call.event_at.into(),
        call.digest.into(),
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
    let reassigned_user: Option<String> = answer.try_get("", "reassigned_user_id").unwrap();
    let reassigned_name: Option<String> = answer.try_get("", "reassigned_username").unwrap();
    assert_eq!(
        reassigned_user.as_deref().zip(reassigned_name.as_deref()),
        case.reassigned,
        "{rule}: the reassignment"
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
            constraint: constraint::USERS_USERNAME_KEY,
        },
        Refusal {
            rule: "a derived username whose fallback is taken too is refused",
            setup: &[
                OTHER_HOLDS_FN_USER,
                "INSERT INTO users (id, email, username) VALUES ('user_2third', \
                 'third@example.com', 'fn_user_2fn')",
            ],
            call: DERIVED,
            constraint: constraint::USERS_USERNAME_KEY,
        },
        Refusal {
            rule: "a chosen username a derived holder cannot give up (it is their fallback) is refused",
            setup: &[
                "INSERT INTO users (id, email, username, username_fallback) VALUES \
                 ('user_2other', 'other@example.com', 'fn_user', 'fn_user')",
            ],
            call: SIGN_UP,
            constraint: constraint::USERS_USERNAME_KEY,
        },
        Refusal {
            rule: "an email another user holds is refused",
            setup: &[OTHER_HOLDS_FN_USER],
            call: Call {
                email: "other@example.com",
                username: "fn_own",
                ..SIGN_UP
            },
            constraint: constraint::USERS_EMAIL_KEY,
        },
        Refusal {
            rule: "an email the schema's rule refuses is refused",
            setup: &[],
            call: Call {
                email: "not-an-email",
                ..SIGN_UP
            },
            constraint: constraint::VALID_EMAIL,
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
