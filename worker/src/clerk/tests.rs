//! The parser against Clerk-shaped bodies: what becomes which event, and what is refused why.

use serde_json::{Value, json};

use super::*;

fn user_body(event_type: &str, data: Value) -> Vec<u8> {
    let body = json!({"type": event_type, "object": "event", "timestamp": 1_764_300_000_120_i64, "data": data});
    serde_json::to_vec(&body).unwrap()
}

fn clerk_user() -> Value {
    json!({
        "id": "user_2abc",
        "object": "user",
        "username": null,
        "first_name": "Kenji",
        "last_name": null,
        "primary_email_address_id": "idn_2",
        "email_addresses": [
            {"id": "idn_1", "email_address": "k.work@corp.example"},
            {"id": "idn_2", "email_address": "kenji+signup@example.org", "verification": null}
        ],
        "image_url": "https://img.clerk.com/x",
        "updated_at": 1_764_300_001_000_i64,
        "some_future_field": {"nested": [1, 2, 3]}
    })
}

fn parse_profile(data: Value) -> Result<UserProfile, Rejected> {
    match parse_event(&user_body("user.created", data))? {
        Event::UserChanged(profile) => Ok(*profile),
        other => panic!("expected a user change, got {other:?}"),
    }
}

fn rejection(data: Value) -> FailureReason {
    parse_profile(data).unwrap_err().reason
}

#[test]
fn the_primary_email_is_the_entry_named_by_primary_email_address_id() {
    let profile = parse_profile(clerk_user()).unwrap();
    assert_eq!(profile.email.as_ref(), "kenji+signup@example.org");
}

#[test]
fn a_null_username_is_derived_from_the_primary_email() {
    let profile = parse_profile(clerk_user()).unwrap();
    let UsernameChoice::Derived(derived) = profile.username else {
        panic!("expected a derived username");
    };
    assert_eq!(derived.preferred.as_ref(), "kenji_signup");
}

#[test]
fn null_names_and_unknown_fields_are_fine() {
    let profile = parse_profile(clerk_user()).unwrap();
    assert_eq!(profile.first_name.unwrap().as_ref(), "Kenji");
    assert_eq!(profile.last_name, None);
    assert_eq!(
        profile.updated_at.as_datetime().timestamp_millis(),
        1_764_300_001_000
    );
    assert!(profile.is_creation);
}

#[test]
fn a_chosen_username_is_kept() {
    let mut data = clerk_user();
    data["username"] = json!("kenji_w");
    let profile = parse_profile(data).unwrap();
    assert_eq!(
        profile.username,
        UsernameChoice::Chosen(Username::parse("kenji_w").unwrap())
    );
}

#[test]
fn no_email_at_all_is_missing_email() {
    let mut data = clerk_user();
    data["email_addresses"] = json!([]);
    data["primary_email_address_id"] = Value::Null;
    assert_eq!(rejection(data), FailureReason::MissingEmail);
}

#[test]
fn an_unmatched_primary_id_falls_back_to_the_first_address() {
    let mut data = clerk_user();
    data["primary_email_address_id"] = Value::Null;
    assert_eq!(
        parse_profile(data).unwrap().email.as_ref(),
        "k.work@corp.example"
    );
}

#[test]
fn invalid_fields_that_matter_are_rejected_with_their_reason() {
    let cases = [
        ("id", Value::Null, FailureReason::InvalidUserId),
        ("id", json!("user 1"), FailureReason::InvalidUserId),
        ("username", json!("a.b"), FailureReason::InvalidUsername),
        ("updated_at", json!(-5), FailureReason::InvalidPayload),
        (
            "email_addresses",
            json!([{"id": "idn_2", "email_address": "nope"}]),
            FailureReason::InvalidEmail,
        ),
    ];
    for (field, value, reason) in cases {
        let mut data = clerk_user();
        data[field] = value;
        assert_eq!(rejection(data), reason, "{field}");
    }
}

#[test]
fn cosmetic_fields_never_reject_a_user() {
    let mut data = clerk_user();
    data["first_name"] = json!("N".repeat(80));
    data["image_url"] = json!("not a url");
    let profile = parse_profile(data).unwrap();
    assert_eq!(profile.first_name.unwrap().as_ref().chars().count(), 50);
    assert_eq!(profile.avatar_url, None);
}

#[test]
fn wrongly_typed_fields_are_invalid_payload() {
    let mut data = clerk_user();
    data["email_addresses"] = json!("kenji@example.org");
    assert_eq!(rejection(data), FailureReason::InvalidPayload);
}

#[test]
fn an_update_is_not_a_creation() {
    let Event::UserChanged(profile) =
        parse_event(&user_body("user.updated", clerk_user())).unwrap()
    else {
        panic!("expected a user change");
    };
    assert!(!profile.is_creation);
}

#[test]
fn a_deletion_needs_only_the_id_and_the_event_timestamp() {
    let body = user_body(
        "user.deleted",
        json!({"object": "user", "deleted": true, "id": "user_2abc"}),
    );
    let Event::UserDeleted(deletion) = parse_event(&body).unwrap() else {
        panic!("expected a deletion");
    };
    assert_eq!(deletion.id.as_ref(), "user_2abc");
    assert_eq!(
        deletion.deleted_at.as_datetime().timestamp_millis(),
        1_764_300_000_120
    );
}

#[test]
fn a_deletion_without_id_is_rejected() {
    let body = user_body("user.deleted", json!({"object": "user", "deleted": true}));
    assert_eq!(
        parse_event(&body).unwrap_err().reason,
        FailureReason::InvalidUserId
    );
}

#[test]
fn other_event_types_are_unsupported_not_errors() {
    let body = br#"{"type":"session.created","data":{"id":"sess_1","whatever":true}}"#;
    assert_eq!(
        parse_event(body).unwrap(),
        Event::Unsupported {
            event_type: "session.created".into()
        }
    );
}

#[test]
fn bodies_that_are_not_clerk_events_are_invalid_payload() {
    for body in [
        &b"not json"[..],
        b"",
        b"[]",
        b"{}",
        br#"{"type":7}"#,
        br#"{"type":"user.created"}"#,
    ] {
        let err = parse_event(body).unwrap_err();
        assert_eq!(
            err.reason,
            FailureReason::InvalidPayload,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn every_shared_example_parses_as_its_readme_says() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/clerk");
    let read = |name: &str| std::fs::read(format!("{dir}/{name}")).unwrap();
    assert!(matches!(
        parse_event(&read("user_created.json")),
        Ok(Event::UserChanged(_))
    ));
    assert!(matches!(
        parse_event(&read("user_updated.json")),
        Ok(Event::UserChanged(_))
    ));
    assert!(matches!(
        parse_event(&read("user_deleted.json")),
        Ok(Event::UserDeleted(_))
    ));
    let phone_only = parse_event(&read("user_created_phone_only.json")).unwrap_err();
    assert_eq!(phone_only.reason, FailureReason::MissingEmail);
    let Ok(Event::UserChanged(kenji)) = parse_event(&read(
        "user_created_null_username_second_email_primary.json",
    )) else {
        panic!("expected a user change");
    };
    assert_eq!(kenji.email.as_ref(), "kenji+signup@example.org");
}
