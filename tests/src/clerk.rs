//! Clerk-shaped webhook bodies for tests, and a one-call "parse and provision".

use sea_orm::DatabaseConnection;
use serde_json::{Value, json};
use worker::domain::event_type::{USER_CREATED, USER_DELETED, USER_UPDATED};
use worker::error::ProvisionError;
use worker::provision::Provisioned;

/// A `user.created` / `user.updated` body with the fields provisioning reads; the rest of
/// Clerk's shape is filled in so the parser sees what Clerk really sends.
#[derive(Clone, Debug)]
pub struct UserEvent {
    pub event_type: &'static str,
    pub id: String,
    pub email: Option<String>,
    pub username: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub image_url: Option<String>,
    /// Clerk's `updated_at`, milliseconds.
    pub updated_at: i64,
}

impl UserEvent {
    pub fn created(id: &str, email: &str, username: Option<&str>) -> Self {
        Self {
            event_type: USER_CREATED,
            id: id.to_owned(),
            email: Some(email.to_owned()),
            username: username.map(str::to_owned),
            first_name: Some("Test".to_owned()),
            last_name: Some("User".to_owned()),
            image_url: Some("https://img.clerk.com/test".to_owned()),
            updated_at: 1_764_300_000_000,
        }
    }

    /// The same user, as a `user.updated` that is `later_ms` newer.
    pub fn updated(&self, later_ms: i64) -> Self {
        Self {
            event_type: USER_UPDATED,
            updated_at: self.updated_at + later_ms,
            ..self.clone()
        }
    }

    pub fn body(&self) -> Vec<u8> {
        self.body_at(self.updated_at + 50)
    }

    /// The body with the envelope `timestamp` given (when Svix sent it, on Clerk's clock).
    pub fn body_at(&self, timestamp: i64) -> Vec<u8> {
        envelope(self.event_type, timestamp, self.data())
    }

    /// The user object alone, as Clerk's Backend API lists it (a webhook's `data`).
    pub fn data(&self) -> Value {
        let emails = match &self.email {
            Some(email) => {
                json!([{"id": "idn_primary", "object": "email_address", "email_address": email,
                                   "verification": {"status": "verified"}, "linked_to": []}])
            }
            None => json!([]),
        };
        json!({
            "id": self.id, "object": "user", "external_id": null,
            "primary_email_address_id": self.email.as_ref().map(|_| "idn_primary"),
            "username": self.username, "first_name": self.first_name, "last_name": self.last_name,
            "image_url": self.image_url, "profile_image_url": self.image_url,
            "email_addresses": emails, "phone_numbers": [], "public_metadata": {},
            "created_at": 1_764_300_000_000_i64, "updated_at": self.updated_at,
        })
    }
}

/// A `user.deleted` body as Clerk sends it: only `object`, `deleted` and the id.
pub fn deleted_body(id: &str, timestamp: i64) -> Vec<u8> {
    envelope(
        USER_DELETED,
        timestamp,
        json!({"object": "user", "deleted": true, "id": id}),
    )
}

fn envelope(event_type: &str, timestamp: i64, data: Value) -> Vec<u8> {
    let body = json!({
        "data": data, "object": "event", "type": event_type, "timestamp": timestamp,
        "instance_id": "ins_test", "event_attributes": {"http_request": {"client_ip": null}},
    });
    serde_json::to_vec(&body).expect("a JSON value serialises")
}

/// One of the fixture bodies (`tests/fixtures/clerk/`), byte for byte.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = crate::fixtures_dir().join("clerk").join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Parses and provisions one body, as the worker will.
pub async fn provision(
    db: &DatabaseConnection,
    body: &[u8],
) -> Result<Provisioned, ProvisionError> {
    let event = worker::clerk::parse_event(body)?;
    worker::provision::provision(&db.clone().into(), &event).await
}
