//! Batches, as plain values: what the broker already sent joins a batch ([`take_batch`], nothing
//! waits for more), and a batch [`split`]s into distinct users' changes, which share one
//! transaction, and the rest, which goes one by one.

use std::collections::HashSet;

use crate::clerk;
use crate::domain::{Event, UserProfile};
use crate::error::Rejected;

/// What the delivery stream has ready right now.
pub enum Ready<T> {
    /// A delivery, already received.
    Item(T),
    /// Nothing received yet: the batch is what there is.
    Nothing,
    /// The stream ended or failed: the session is lost, for this reason.
    Lost(String),
}

/// The batch that starts with `first`: up to `max` deliveries, taken from `next_ready` only while
/// it has them ready, and why the session is lost if the stream ended meanwhile.
pub fn take_batch<T>(
    first: T,
    max: usize,
    mut next_ready: impl FnMut() -> Ready<T>,
) -> (Vec<T>, Option<String>) {
    let mut batch = vec![first];
    while batch.len() < max {
        match next_ready() {
            Ready::Item(item) => batch.push(item),
            Ready::Nothing => break,
            Ready::Lost(why) => return (batch, Some(why)),
        }
    }
    (batch, None)
}

/// A batch, parsed and split: distinct users' changes that can share one transaction, and the
/// rest, which goes one by one.
pub struct Split<T> {
    pub together: Vec<(T, Box<UserProfile>)>,
    pub alone: Vec<(T, Result<Event, Rejected>)>,
}

/// Parses each delivery's body once, and splits the batch: a user's first change joins
/// `together`; a second change of the same user, a deletion, an event we ignore or a body that
/// does not parse goes `alone` (in order, so one user's events never share a transaction).
pub fn split<T>(deliveries: Vec<T>, body: impl Fn(&T) -> &[u8]) -> Split<T> {
    let mut split = Split {
        together: Vec::new(),
        alone: Vec::new(),
    };
    let mut users = HashSet::new();
    for delivery in deliveries {
        match clerk::parse_event(body(&delivery)) {
            Ok(Event::UserChanged(profile)) if users.insert(profile.id.clone()) => {
                split.together.push((delivery, profile));
            }
            parsed => split.alone.push((delivery, parsed)),
        }
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(items: Vec<Ready<u32>>) -> impl FnMut() -> Ready<u32> {
        let mut items = items.into_iter();
        move || items.next().unwrap_or(Ready::Nothing)
    }

    #[test]
    fn a_batch_takes_what_is_ready_and_never_waits() {
        let next = ready(vec![
            Ready::Item(2),
            Ready::Item(3),
            Ready::Nothing,
            Ready::Item(4),
        ]);
        assert_eq!(take_batch(1, 10, next), (vec![1, 2, 3], None));
    }

    #[test]
    fn a_batch_stops_at_its_size() {
        let next = ready((2..10).map(Ready::Item).collect());
        assert_eq!(take_batch(1, 3, next), (vec![1, 2, 3], None));
    }

    #[test]
    fn a_size_of_one_takes_nothing_more() {
        let mut asked = false;
        let (batch, lost) = take_batch(1, 1, || {
            asked = true;
            Ready::Item(2)
        });
        assert_eq!((batch, lost), (vec![1], None));
        assert!(!asked);
    }

    #[test]
    fn a_stream_lost_mid_batch_keeps_what_was_taken_and_says_why() {
        let next = ready(vec![Ready::Item(2), Ready::Lost("cancelled".into())]);
        assert_eq!(
            take_batch(1, 10, next),
            (vec![1, 2], Some("cancelled".to_owned()))
        );
    }

    fn user_event(event_type: &str, id: &str) -> Vec<u8> {
        serde_json::json!({
            "type": event_type,
            "timestamp": 1_700_000_000_000_i64,
            "data": {
                "id": id,
                "email_addresses": [{"id": "idn_1", "email_address": format!("{id}@example.com")}],
                "primary_email_address_id": "idn_1",
                "username": null,
                "first_name": null,
                "last_name": null,
                "image_url": null,
                "created_at": 1_700_000_000_000_i64,
                "updated_at": 1_700_000_000_000_i64,
            },
        })
        .to_string()
        .into_bytes()
    }

    fn deleted(id: &str) -> Vec<u8> {
        serde_json::json!({
            "type": "user.deleted",
            "timestamp": 1_700_000_000_000_i64,
            "data": {"id": id, "deleted": true, "object": "user"},
        })
        .to_string()
        .into_bytes()
    }

    fn tags<T>(items: &[(lapin::message::Delivery, T)]) -> Vec<u64> {
        items.iter().map(|(d, _)| d.delivery_tag).collect()
    }

    fn split_bodies(bodies: Vec<Vec<u8>>) -> Split<lapin::message::Delivery> {
        let deliveries = (1..)
            .zip(bodies)
            .map(|(tag, body)| {
                lapin::message::Delivery::mock(
                    tag,
                    "clerk.events".into(),
                    "user".into(),
                    false,
                    body,
                )
            })
            .collect();
        split(deliveries, |d| &d.data)
    }

    #[test]
    fn distinct_users_changes_share_a_transaction_and_the_rest_goes_alone_in_order() {
        let split = split_bodies(vec![
            user_event("user.created", "user_a"),
            user_event("user.updated", "user_b"),
            user_event("user.updated", "user_a"),
            deleted("user_c"),
            b"not json".to_vec(),
            user_event("session.created", "user_d"),
            user_event("user.updated", "user_e"),
        ]);
        assert_eq!(tags(&split.together), [1, 2, 7]);
        assert_eq!(tags(&split.alone), [3, 4, 5, 6]);
        let alone: Vec<_> = split.alone.iter().map(|(_, parsed)| parsed).collect();
        assert!(matches!(alone[0], Ok(Event::UserChanged(p)) if p.id.as_ref() == "user_a"));
        assert!(matches!(alone[1], Ok(Event::UserDeleted(_))));
        assert!(
            alone[2].is_err(),
            "a body that is not JSON is rejected, not dropped"
        );
    }
}
