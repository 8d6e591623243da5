//! A Jepsen-style checker of the whole pipeline under faults: a steady stream of signed
//! `user.created` webhooks into a [`System`] (a private RabbitMQ cluster, `worker ingress`, `worker
//! consume` processes, a database of its own), a schedule of [`Fault`]s injected meanwhile, then,
//! once the queues drained, a [`Verdict`] on every svix-id sent.
//!
//! Each webhook is posted until it gets a 2xx or its retry window ends, as Svix does: the same
//! svix-id and body, signed again with a fresh timestamp. An event is `acknowledged` once any
//! answer was a 2xx, and provisioned when its user has a row and exactly one workspace. What
//! must never happen: an acknowledged event not provisioned (`lost`), an event in the
//! dead-letter queue (`dead_lettered`), a user without exactly one workspace (`duplicates`).
//!
//! Faults act only on what the system owns: its RabbitMQ nodes, its processes, the TCP proxies
//! between each worker and the broker and database, and connections in its own vhost. The shared
//! PostgreSQL and RabbitMQ are never stopped or reconfigured, so checks run beside other tests.
//!
//! ```no_run
//! # async fn example() {
//! use std::time::Duration;
//! use integration_tests::chaos::{Checker, Setup, System, schedule};
//!
//! let mut system = System::start(Setup::new("target/debug/worker")).await;
//! let stream = Duration::from_secs(30);
//! let checker = Checker::new(50.0, stream, schedule::every_fault(stream));
//! let verdict = checker.run(&mut system).await;
//! println!("{verdict}");
//! assert!(verdict.is_ok());
//! # }
//! ```

mod cluster;
mod fault;
mod links;
pub mod schedule;
mod service;
mod stream;
mod system;
mod verdict;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use fault::{Fault, FaultKind};
pub use stream::{Answer, Record};
pub use system::{Setup, System};
pub use verdict::Verdict;

/// The stream goes on this long after the last fault healed, so the system is seen recovered.
const TAIL: Duration = Duration::from_secs(3);

/// What to send, for how long, and which faults to inject meanwhile.
#[derive(Clone, Debug)]
pub struct Checker {
    /// New webhooks per second.
    pub rate: f64,
    /// The stream lasts at least this long, and until [`TAIL`] after the last fault healed, so
    /// every fault happens mid-stream.
    pub stream: Duration,
    /// Faults, one at a time: each is injected at its offset from the stream's start, or once
    /// the previous one healed and every process is ready again, whichever is later.
    pub schedule: Vec<Fault>,
    /// A webhook is posted again (after 0.25 s, doubling to 2 s) until it gets a 2xx or this
    /// long after its first attempt.
    pub retry_for: Duration,
    /// How long the queues get to drain once the last webhook got its last answer.
    pub drain_timeout: Duration,
}

impl Checker {
    pub fn new(rate: f64, stream: Duration, schedule: Vec<Fault>) -> Self {
        Self {
            rate,
            stream,
            schedule,
            retry_for: Duration::from_secs(90),
            drain_timeout: Duration::from_secs(120),
        }
    }

    /// Streams webhooks into `system` while injecting the schedule, heals whatever is still
    /// broken, waits for the queues to drain, and judges every svix-id sent.
    pub async fn run(&self, system: &mut System) -> Verdict {
        let started = Instant::now();
        let faults_done = CancellationToken::new();
        let sending = tokio::spawn(stream::send(
            stream::Settings {
                rate: self.rate,
                at_least: self.stream,
                retry_for: self.retry_for,
                run: system.run_id().to_owned(),
                started,
            },
            system.ingress_addr(),
            faults_done.clone(),
        ));
        let mut journal = fault::Journal::new(started);
        for fault in &self.schedule {
            tokio::time::sleep_until((started + fault.at).into()).await;
            system.inject(fault, &mut journal).await;
        }
        tokio::time::sleep(TAIL).await;
        faults_done.cancel();
        let records = sending.await.expect("the webhook stream does not panic");
        journal.note(format!("stream ended: {} webhooks", records.len()));
        system.heal_all(&mut journal).await;
        let drained = system.wait_drained(self.drain_timeout).await;
        journal.note(match drained {
            true => "queues drained".to_owned(),
            false => format!("queues not drained within {:?}", self.drain_timeout),
        });
        verdict::judge(records, system, journal, drained).await
    }
}
