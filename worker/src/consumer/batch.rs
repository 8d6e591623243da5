//! Batches: what the broker already sent joins a batch ([`take_batch`], nothing waits for more),
//! and within a batch distinct users' changes share one transaction; anything else, and the
//! whole batch if its transaction fails, goes one by one.

use std::collections::HashSet;
use std::time::Instant;

use lapin::message::Delivery;
use tracing::debug;

use super::delivery::{Context, Processor, redeliveries};
use crate::clerk;
use crate::domain::{Event, UserProfile};
use crate::provision;
use crate::retry::Attempts;

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

impl Processor {
    /// Several deliveries at once: distinct users' changes share one transaction; anything else
    /// (and the whole batch, if its transaction fails) goes one by one, concurrently, so one bad
    /// event costs its batch-mates one retry at most.
    pub(super) async fn process_batch(&self, deliveries: Vec<Delivery>) {
        let mut together = Vec::new();
        let mut alone = Vec::new();
        let mut users = HashSet::new();
        for delivery in deliveries {
            match clerk::parse_event(&delivery.data) {
                Ok(Event::UserChanged(profile)) if users.insert(profile.id.clone()) => {
                    together.push((delivery, profile));
                }
                parsed => alone.push((delivery, parsed)),
            }
        }
        let one_by_one = if together.len() < 2 {
            Err(together)
        } else {
            self.provision_together(together).await
        };
        if let Err(rest) = one_by_one {
            alone.extend(
                rest.into_iter()
                    .map(|(delivery, profile)| (delivery, Ok(Event::UserChanged(profile)))),
            );
        }
        futures::future::join_all(
            alone
                .into_iter()
                .map(|(delivery, parsed)| self.process(delivery, parsed)),
        )
        .await;
    }

    /// One transaction for the batch; on failure, the deliveries back for one-by-one.
    async fn provision_together(
        &self,
        together: Vec<(Delivery, Box<UserProfile>)>,
    ) -> Result<(), Vec<(Delivery, Box<UserProfile>)>> {
        self.metrics.deliveries_in_flight(together.len() as f64);
        let started = Instant::now();
        let profiles: Vec<&UserProfile> = together.iter().map(|(_, p)| p.as_ref()).collect();
        let batch = provision::provision_batch(&self.db, &profiles);
        let result = provision::within(&self.db, self.attempt_timeout, batch).await;
        let elapsed = started.elapsed();
        let results = match result {
            Ok(results) => results,
            Err(err) => {
                self.metrics.deliveries_in_flight(-(together.len() as f64));
                debug!(size = together.len(), error = %err, "batch failed; one event at a time");
                return Err(together);
            }
        };
        self.metrics.record_batch(together.len());
        let mut contexts = Vec::with_capacity(together.len());
        for ((delivery, profile), provisioned) in together.iter().zip(results) {
            let context = Context::named(delivery, profile.event_type(), Some(&profile.id));
            let attempts = Attempts {
                made: redeliveries(delivery) + 1,
                budgeted: 0,
            };
            self.record_success(delivery, &context, &provisioned, attempts, elapsed);
            contexts.push(context);
        }
        let deliveries: Vec<&Delivery> = together.iter().map(|(delivery, _)| delivery).collect();
        if let Some(first) = contexts.first() {
            self.ack(&deliveries, first).await;
        }
        contexts.iter().for_each(|context| self.settled(context));
        Ok(())
    }
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
}
