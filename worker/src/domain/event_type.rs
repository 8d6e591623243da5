//! Clerk's event type names: the `type` of a webhook body, the routing key on the broker and the
//! `type` metric label. Clerk defines them and dashboards and the `dlq` tools match on them, so
//! each is spelled here and only here: the domain's [`Event`](super::Event), the Clerk parser
//! and the broker topology all read them.

/// A user signed up.
pub const USER_CREATED: &str = "user.created";
/// A user's profile changed.
pub const USER_UPDATED: &str = "user.updated";
/// A user was deleted.
pub const USER_DELETED: &str = "user.deleted";

/// Topic binding key matching every user event type above.
pub const ANY_USER_EVENT: &str = "user.*";
