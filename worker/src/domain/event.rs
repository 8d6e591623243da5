//! The validated event: what one Clerk webhook asks provisioning to do.

use serde_json::json;
use sha2::{Digest, Sha256};

use super::event_type::{USER_CREATED, USER_DELETED, USER_UPDATED};
use super::{AvatarUrl, ClerkTime, DerivedUsername, Email, PersonName, UserId, Username};

/// A Clerk webhook, validated: what provisioning acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `user.created` or `user.updated`: make the row match the profile and ensure the workspace.
    UserChanged(Box<UserProfile>),
    /// `user.deleted`: remove the user; the cascade removes the workspace.
    UserDeleted(UserDeletion),
    /// Any other Clerk event type: recognised so callers can acknowledge and ignore it.
    Unsupported { event_type: String },
}

impl Event {
    /// Clerk's `type`, for logs and metric labels.
    pub fn event_type(&self) -> &str {
        match self {
            Self::UserChanged(profile) => profile.event_type(),
            Self::UserDeleted(_) => USER_DELETED,
            Self::Unsupported { event_type } => event_type,
        }
    }

    pub fn user_id(&self) -> Option<&UserId> {
        match self {
            Self::UserChanged(profile) => Some(&profile.id),
            Self::UserDeleted(deletion) => Some(&deletion.id),
            Self::Unsupported { .. } => None,
        }
    }
}

/// The user as Clerk last saw them, with every field already valid for the schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserProfile {
    pub id: UserId,
    pub is_creation: bool,
    pub email: Email,
    pub username: UsernameChoice,
    pub first_name: Option<PersonName>,
    pub last_name: Option<PersonName>,
    pub avatar_url: Option<AvatarUrl>,
    /// Clerk's `updated_at`: an event older than what the row reflects is stale.
    pub updated_at: ClerkTime,
    /// The envelope's `timestamp` (none for a user read from Clerk's API): breaks ties between
    /// events with the same `updated_at`.
    pub event_at: Option<ClerkTime>,
}

impl UserProfile {
    /// Clerk's `type` of the event this profile came in.
    pub fn event_type(&self) -> &'static str {
        if self.is_creation {
            USER_CREATED
        } else {
            USER_UPDATED
        }
    }

    /// A digest of what this event says about the user: the last tie-break of event order, so
    /// two events with the same clocks and different content converge in any delivery order.
    pub fn content_digest(&self) -> [u8; 32] {
        let username = match &self.username {
            UsernameChoice::Chosen(name) => json!(["chosen", name.as_ref()]),
            UsernameChoice::Derived(pair) => {
                json!(["derived", pair.preferred.as_ref(), pair.fallback.as_ref()])
            }
        };
        let content = json!([
            self.email.as_ref(),
            username,
            text(self.first_name.as_ref()),
            text(self.last_name.as_ref()),
            text(self.avatar_url.as_ref()),
        ]);
        Sha256::digest(content.to_string().as_bytes()).into()
    }
}

/// Where the username comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsernameChoice {
    /// The user picked it in Clerk; it replaces whatever is stored.
    Chosen(Username),
    /// Clerk has none: keep the stored one, or pick from the derived pair for a new user.
    Derived(DerivedUsername),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserDeletion {
    pub id: UserId,
    /// The event's `timestamp`: a deletion older than the stored state is stale.
    pub deleted_at: ClerkTime,
}

fn text<T: AsRef<str>>(value: Option<&T>) -> Option<&str> {
    value.map(AsRef::as_ref)
}
