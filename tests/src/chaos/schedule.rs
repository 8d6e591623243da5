//! Ready-made schedules, spread over a stream of a given length, for a [`System`] of three nodes
//! and two workers ([`Setup::new`]).
//!
//! [`System`]: super::System
//! [`Setup::new`]: super::Setup::new

use std::time::Duration;

use super::{Fault, FaultKind};

/// How long a killed node stays down before it is started again (it then takes 5-30 s to boot
/// and rejoin on two busy cores).
const NODE_DOWN: Duration = Duration::from_secs(3);
const CUT: Duration = Duration::from_secs(5);

/// The queue leader's node killed a quarter into the stream and started again later, then a
/// follower's node two thirds in.
pub fn leader_then_follower(stream: Duration) -> Vec<Fault> {
    vec![
        Fault::new(stream / 4, FaultKind::KillLeader, NODE_DOWN),
        Fault::new(stream * 2 / 3, FaultKind::KillFollower, NODE_DOWN),
    ]
}

/// Every kind of fault once, evenly spaced: the leader's node, worker 0, the ingress, worker 1's
/// database link, a follower's node, worker 0's broker link, and the broker closing every
/// connection.
pub fn every_fault(stream: Duration) -> Vec<Fault> {
    let kinds = [
        (FaultKind::KillLeader, NODE_DOWN),
        (FaultKind::KillWorker(0), Duration::from_secs(2)),
        (FaultKind::KillIngress, Duration::from_secs(1)),
        (FaultKind::CutDatabase(1), CUT),
        (FaultKind::KillFollower, NODE_DOWN),
        (FaultKind::CutBroker(0), CUT),
        (FaultKind::CloseConnections, Duration::ZERO),
    ];
    let slots = kinds.len() as u32 + 1;
    kinds
        .into_iter()
        .zip(1..)
        .map(|((kind, lasts), k)| Fault::new(stream * k / slots, kind, lasts))
        .collect()
}
