//! The Clerk boundary: raw webhook bytes become a validated [`Event`], once.
//!
//! Bytes from the queue are untrusted input exactly like bytes from the network, so every failure
//! here is a [`Rejected`] with a stable reason (a domain constructor's
//! [`Invalid`](crate::domain::Invalid) converts into one), and nothing past this module re-checks
//! a field.

mod payload;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use tracing::warn;

use crate::domain::event_type::{USER_CREATED, USER_DELETED, USER_UPDATED};
use crate::domain::{
    AvatarUrl, ClerkTime, DerivedUsername, Email, Event, NameInput, PersonName, UserDeletion,
    UserId, UserProfile, Username, UsernameChoice,
};
use crate::error::{FailureReason, Rejected};
use payload::{RawDeletedUser, RawEmailAddress, RawEnvelope, RawUser};

/// The Clerk event types provisioning acts on; everything else is acknowledged and ignored.
pub const SUPPORTED_TYPES: [&str; 3] = [USER_CREATED, USER_UPDATED, USER_DELETED];

/// Whether provisioning acts on events of this type.
pub fn is_supported(event_type: &str) -> bool {
    SUPPORTED_TYPES.contains(&event_type)
}

/// Parses one Clerk webhook body. Event types other than `user.*` come back as
/// [`Event::Unsupported`], not as errors.
pub fn parse_event(body: &[u8]) -> Result<Event, Rejected> {
    let envelope: RawEnvelope = serde_json::from_slice(body).map_err(invalid_payload)?;
    match envelope.event_type.as_str() {
        USER_CREATED | USER_UPDATED => {
            let user: RawUser = parse_data(envelope.data)?;
            let is_creation = envelope.event_type == USER_CREATED;
            profile_from(user, is_creation, envelope.timestamp)
                .map(|profile| Event::UserChanged(Box::new(profile)))
        }
        USER_DELETED => {
            let user: RawDeletedUser = parse_data(envelope.data)?;
            deletion_from(user, envelope.timestamp).map(Event::UserDeleted)
        }
        _ => Ok(Event::Unsupported {
            event_type: envelope.event_type,
        }),
    }
}

/// Parses one bare Clerk user object (an element of the Backend API's `GET /v1/users` answer,
/// the same shape as a `user.updated` webhook's `data`) with the webhook rules, so a backfill
/// provisions exactly what the consumer would.
pub fn parse_user(data: &[u8]) -> Result<UserProfile, Rejected> {
    let user: RawUser = serde_json::from_slice(data).map_err(invalid_payload)?;
    profile_from(user, false, None)
}

fn invalid_payload(err: serde_json::Error) -> Rejected {
    Rejected::because(FailureReason::InvalidPayload, err)
}

fn parse_data<T: DeserializeOwned>(data: Option<&RawValue>) -> Result<T, Rejected> {
    let data = data.ok_or_else(|| Rejected::new(FailureReason::InvalidPayload, "no `data`"))?;
    serde_json::from_str(data.get()).map_err(invalid_payload)
}

fn user_id_from(raw: Option<&str>) -> Result<UserId, Rejected> {
    let raw = raw.ok_or_else(|| Rejected::new(FailureReason::InvalidUserId, "no user id"))?;
    Ok(UserId::parse(raw)?)
}

fn profile_from(
    user: RawUser,
    is_creation: bool,
    event_timestamp: Option<i64>,
) -> Result<UserProfile, Rejected> {
    let id = user_id_from(user.id.as_deref())?;
    let email = primary_email(&user)?;
    let username = match user.username.as_deref() {
        Some(chosen) => UsernameChoice::Chosen(Username::parse(chosen)?),
        None => UsernameChoice::Derived(DerivedUsername::derive(&email, &id)),
    };
    let updated_at = user
        .updated_at
        .or(event_timestamp)
        .ok_or_else(|| Rejected::new(FailureReason::InvalidPayload, "no `updated_at`"))?;
    let event_at = event_timestamp.map(ClerkTime::from_millis).transpose()?;
    Ok(UserProfile {
        first_name: name_from(&id, "first_name", user.first_name.as_deref()),
        last_name: name_from(&id, "last_name", user.last_name.as_deref()),
        avatar_url: avatar_from(&id, user.image_url.as_deref()),
        updated_at: ClerkTime::from_millis(updated_at)?,
        event_at,
        id,
        is_creation,
        email,
        username,
    })
}

/// The entry whose id is `primary_email_address_id`; Clerk does not promise it comes first.
fn primary_email(user: &RawUser) -> Result<Email, Rejected> {
    let is_primary = |entry: &&RawEmailAddress| {
        entry.id.is_some() && entry.id.as_deref() == user.primary_email_address_id.as_deref()
    };
    let entry = user
        .email_addresses
        .iter()
        .find(is_primary)
        .or_else(|| user.email_addresses.first())
        .ok_or_else(|| {
            Rejected::new(FailureReason::MissingEmail, "the user has no email address")
        })?;
    Ok(Email::parse(&entry.email_address)?)
}

fn name_from(id: &UserId, field: &'static str, raw: Option<&str>) -> Option<PersonName> {
    let input = PersonName::from_clerk(raw);
    if let NameInput::Truncated(_) = input {
        warn!(user_id = %id, field, max_chars = PersonName::MAX_CHARS, "name truncated");
    }
    input.into_option()
}

fn avatar_from(id: &UserId, raw: Option<&str>) -> Option<AvatarUrl> {
    let raw = raw.filter(|s| !s.trim().is_empty())?;
    let avatar = AvatarUrl::parse(raw);
    if avatar.is_none() {
        warn!(user_id = %id, "avatar url is not a valid http(s) url; stored as null");
    }
    avatar
}

fn deletion_from(user: RawDeletedUser, timestamp: Option<i64>) -> Result<UserDeletion, Rejected> {
    let id = user_id_from(user.id.as_deref())?;
    let timestamp =
        timestamp.ok_or_else(|| Rejected::new(FailureReason::InvalidPayload, "no `timestamp`"))?;
    Ok(UserDeletion {
        id,
        deleted_at: ClerkTime::from_millis(timestamp)?,
    })
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
