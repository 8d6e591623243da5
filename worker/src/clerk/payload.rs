//! Clerk's webhook bodies as they arrive (serde shapes, nothing validated yet).
//!
//! Only the fields we use are declared; serde ignores the rest, so new Clerk fields never break
//! parsing. Everything Clerk documents as nullable is an `Option` with a default.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The envelope every Clerk webhook shares. `data` stays raw until `type` says what it holds.
#[derive(Debug, Deserialize)]
pub struct RawEnvelope<'a> {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub timestamp: Option<i64>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

/// `data` of `user.created` and `user.updated`.
#[derive(Debug, Deserialize)]
pub struct RawUser {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub primary_email_address_id: Option<String>,
    #[serde(default)]
    pub email_addresses: Vec<RawEmailAddress>,
    #[serde(default)]
    pub image_url: Option<String>,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub updated_at: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct RawEmailAddress {
    #[serde(default)]
    pub id: Option<String>,
    pub email_address: String,
}

/// `data` of `user.deleted`: only `object` and `deleted` are guaranteed.
#[derive(Debug, Deserialize)]
pub struct RawDeletedUser {
    #[serde(default)]
    pub id: Option<String>,
}
