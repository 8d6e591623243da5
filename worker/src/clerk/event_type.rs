//! Clerk's event type names: the `type` of a webhook body, the routing key on the broker and the
//! `type` metric label. Clerk defines them and dashboards and the `dlq` tools match on them, so
//! each is spelled here and only here.

pub const USER_CREATED: &str = "user.created";
pub const USER_UPDATED: &str = "user.updated";
pub const USER_DELETED: &str = "user.deleted";

/// Topic binding key matching every user event type above.
pub const ANY_USER_EVENT: &str = "user.*";
