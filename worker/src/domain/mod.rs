//! Validated domain types. Their constructors enforce the schema's rules, so code past the Clerk
//! parsing boundary never re-checks a field; what they refuse is an [`Invalid`].

mod avatar_url;
mod clerk_time;
mod email;
mod event;
pub mod event_type;
mod invalid;
mod person_name;
mod user_id;
mod username;
mod workspace_name;

pub use avatar_url::AvatarUrl;
pub use clerk_time::ClerkTime;
pub use email::Email;
pub use event::{Event, UserDeletion, UserProfile, UsernameChoice};
pub use invalid::Invalid;
pub use person_name::{NameInput, PersonName};
pub use user_id::UserId;
pub use username::{DerivedUsername, Username};
pub use workspace_name::WorkspaceName;
