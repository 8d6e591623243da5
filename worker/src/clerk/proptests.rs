//! The parser on arbitrary input: queued bytes are untrusted, so no input may panic it, whether
//! random bytes or a real Clerk body with any JSON in any field.

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

use super::*;
use crate::error::FailureReason;

/// The shared example bodies (`tests/fixtures/clerk`), built in so the properties need no files.
const FIXTURES: [&[u8]; 5] = [
    include_bytes!("../../../tests/fixtures/clerk/user_created.json"),
    include_bytes!(
        "../../../tests/fixtures/clerk/user_created_null_username_second_email_primary.json"
    ),
    include_bytes!("../../../tests/fixtures/clerk/user_created_phone_only.json"),
    include_bytes!("../../../tests/fixtures/clerk/user_updated.json"),
    include_bytes!("../../../tests/fixtures/clerk/user_deleted.json"),
];

/// Fields of `data` the parser reads, a few it does not, and `email_addresses[0]`'s.
const DATA_FIELDS: [&str; 11] = [
    "id",
    "username",
    "first_name",
    "last_name",
    "primary_email_address_id",
    "email_addresses",
    "image_url",
    "updated_at",
    "external_id",
    "object",
    "deleted",
];
const EMAIL_FIELDS: [&str; 3] = ["id", "email_address", "verification"];
const ENVELOPE_FIELDS: [&str; 4] = ["type", "timestamp", "data", "object"];

/// Where one mutation lands.
#[derive(Clone, Debug)]
enum Field {
    Envelope(&'static str),
    Data(&'static str),
    FirstEmail(&'static str),
}

/// Strings the domain checks care about: empty, blank, ids, emails, URLs, long and any text.
fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[ \t\n]{1,3}",
        "user_[A-Za-z0-9]{0,40}",
        "idn_[A-Za-z0-9]{0,30}",
        "[a-z0-9.+_-]{0,20}@[a-z0-9.-]{0,20}",
        "(https?|ftp|javascript):(//)?.{0,40}",
        "user\\.(created|updated|deleted)|session\\.created",
        "\\PC{0,300}",
        any::<String>(),
    ]
}

/// Any JSON value, a few levels deep, with numbers at the edges of their types.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        select(vec![i64::MIN, -1, 0, 1, i64::MAX]).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        1 => select(ENVELOPE_FIELDS.to_vec()).prop_map(Field::Envelope),
        3 => select(DATA_FIELDS.to_vec()).prop_map(Field::Data),
        2 => select(EMAIL_FIELDS.to_vec()).prop_map(Field::FirstEmail),
    ]
}

/// A fixture with up to four fields set to any value, or removed (`None`).
fn mutated_fixture() -> impl Strategy<Value = Vec<u8>> {
    let mutation = (field(), proptest::option::weighted(0.9, json_value()));
    (
        select(FIXTURES.to_vec()),
        proptest::collection::vec(mutation, 1..5),
    )
        .prop_map(|(fixture, mutations)| {
            let mut body: Value = serde_json::from_slice(fixture).unwrap();
            for (field, value) in mutations {
                set(&mut body, &field, value);
            }
            serde_json::to_vec(&body).unwrap()
        })
}

/// Sets (or removes) `field` in `body`, where the objects on its way still exist.
fn set(body: &mut Value, field: &Field, value: Option<Value>) {
    let (object, name) = match field {
        Field::Envelope(name) => (body.as_object_mut(), name),
        Field::Data(name) => (body.get_mut("data").and_then(Value::as_object_mut), name),
        Field::FirstEmail(name) => (
            body.pointer_mut("/data/email_addresses/0")
                .and_then(Value::as_object_mut),
            name,
        ),
    };
    let Some(object) = object else { return };
    match value {
        Some(value) => object.insert((*name).to_owned(), value),
        None => object.remove(*name),
    };
}

/// What a parse came to, comparable.
fn outcome(body: &[u8]) -> Result<Event, FailureReason> {
    parse_event(body).map_err(|rejected| rejected.reason)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_event(&body);
    }

    #[test]
    fn json_ish_text_never_panics(text in r#"\{"type":"user\.(created|updated|deleted)","data":[\[\]{}":,0-9a-z._@ -]{0,200}"#) {
        let _ = parse_event(text.as_bytes());
    }

    #[test]
    fn a_fixture_with_any_json_in_its_fields_never_panics(body in mutated_fixture()) {
        let _ = parse_event(&body);
    }

    #[test]
    fn unknown_fields_with_any_value_change_nothing(
        fixture in select(FIXTURES.to_vec()),
        in_data in any::<bool>(),
        value in json_value(),
    ) {
        let mut body: Value = serde_json::from_slice(fixture).unwrap();
        let object = if in_data { body.get_mut("data") } else { Some(&mut body) };
        let Some(Value::Object(object)) = object else { unreachable!("fixtures are objects") };
        object.insert("a_field_clerk_adds_later".to_owned(), value);
        let extended = serde_json::to_vec(&body).unwrap();
        prop_assert_eq!(outcome(&extended), outcome(fixture));
    }
}
