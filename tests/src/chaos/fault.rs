//! The faults the checker injects, and how the [`System`] suffers and heals each one.

use std::fmt;
use std::time::{Duration, Instant};

use super::system::{System, VHOST};

/// One fault: injected at `at` from the stream's start (or once the previous fault healed and
/// every process is ready, if that is later), healed `lasts` later.
#[derive(Clone, Debug)]
pub struct Fault {
    pub at: Duration,
    pub kind: FaultKind,
    /// How long the fault lasts before it is healed (a node or process started again, a proxy
    /// restored); nothing for [`FaultKind::CloseConnections`], which heals itself.
    pub lasts: Duration,
}

impl Fault {
    pub fn new(at: Duration, kind: FaultKind, lasts: Duration) -> Self {
        Self { at, kind, lasts }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL the RabbitMQ node leading the main queue; start it again.
    KillLeader,
    /// SIGKILL a RabbitMQ node holding a follower of the main queue; start it again.
    KillFollower,
    /// SIGKILL `worker consume` number `i`; start it again with the same settings.
    KillWorker(usize),
    /// SIGKILL the ingress; start it again (on a new port, which the stream follows).
    KillIngress,
    /// Worker `i`'s connections to every broker node are dropped and new ones refused.
    CutBroker(usize),
    /// Worker `i`'s connections to the database are dropped and new ones refused.
    CutDatabase(usize),
    /// The broker closes every connection in the system's vhost (`rabbitmqctl
    /// close_all_connections`).
    CloseConnections,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KillLeader => write!(f, "SIGKILL the queue leader's node"),
            Self::KillFollower => write!(f, "SIGKILL a queue follower's node"),
            Self::KillWorker(i) => write!(f, "SIGKILL worker {i}"),
            Self::KillIngress => write!(f, "SIGKILL the ingress"),
            Self::CutBroker(i) => write!(f, "cut worker {i} <-> broker"),
            Self::CutDatabase(i) => write!(f, "cut worker {i} <-> database"),
            Self::CloseConnections => write!(f, "broker closes all connections in the vhost"),
        }
    }
}

/// What happened when, from the stream's start: part of the verdict.
pub(super) struct Journal {
    started: Instant,
    lines: Vec<String>,
    injected: usize,
}

impl Journal {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            lines: Vec::new(),
            injected: 0,
        }
    }

    pub fn note(&mut self, what: impl fmt::Display) {
        let at = self.started.elapsed().as_secs_f64();
        self.lines.push(format!("{at:6.1} s  {what}"));
    }

    /// Faults injected so far.
    pub fn injected(&self) -> usize {
        self.injected
    }

    pub fn into_lines(self) -> Vec<String> {
        self.lines
    }
}

/// How long a restarted process gets to be ready.
const READY: Duration = Duration::from_secs(30);

impl System {
    /// Once every process is ready (so each fault hits a system that recovered from the last),
    /// injects `fault`, waits `fault.lasts`, and heals it.
    pub(super) async fn inject(&mut self, fault: &Fault, journal: &mut Journal) {
        self.settle(journal).await;
        journal.injected += 1;
        match fault.kind {
            FaultKind::KillLeader | FaultKind::KillFollower => {
                let (leader, followers) = self.queue_members().await;
                // Of the followers, the node killed least so far: a second kill finds another.
                let n = match fault.kind {
                    FaultKind::KillLeader => leader,
                    _ => followers
                        .iter()
                        .copied()
                        .min_by_key(|n| self.kills.get(n).copied().unwrap_or(0))
                        .expect("a follower online"),
                };
                journal.note(format_args!("{} (node {n})", fault.kind));
                self.kill_node(n).await;
                tokio::time::sleep(fault.lasts).await;
                self.restart_node(n, journal).await;
            }
            FaultKind::KillWorker(i) => {
                journal.note(fault.kind);
                self.workers[i].kill();
                tokio::time::sleep(fault.lasts).await;
                self.start_worker(i, journal).await;
            }
            FaultKind::KillIngress => {
                journal.note(fault.kind);
                self.ingress.kill();
                tokio::time::sleep(fault.lasts).await;
                self.start_ingress(journal).await;
            }
            FaultKind::CutBroker(i) => {
                journal.note(fault.kind);
                for proxy in &self.links[i].broker {
                    proxy.cut().await;
                }
                tokio::time::sleep(fault.lasts).await;
                self.links[i].broker.iter().for_each(|p| p.restore());
                journal.note(format_args!("worker {i} <-> broker restored"));
            }
            FaultKind::CutDatabase(i) => {
                journal.note(fault.kind);
                self.links[i].database.cut().await;
                tokio::time::sleep(fault.lasts).await;
                self.links[i].database.restore();
                journal.note(format_args!("worker {i} <-> database restored"));
            }
            FaultKind::CloseConnections => {
                let before = self.connections().await;
                journal.note(format_args!("{} ({} open)", fault.kind, before.len()));
                let args = ["close_all_connections", "-p", VHOST, "chaos check"];
                self.ctl(&args).await;
                let after = self.connections().await;
                let closed = before.difference(&after).count();
                journal.note(format_args!(
                    "{closed} of them closed; {} open now",
                    after.len()
                ));
            }
        }
    }

    /// Waits until every running process answers `/readyz` with 200, for at most [`READY`];
    /// notes those that do not.
    async fn settle(&self, journal: &mut Journal) {
        let deadline = Instant::now() + READY;
        for service in std::iter::once(&self.ingress).chain(&self.workers) {
            let Some(process) = &service.running else {
                continue;
            };
            if !process.ready_before(deadline).await {
                journal.note(format_args!("{} not ready within {READY:?}", service.name));
            }
        }
        journal.note(self.placement().await);
    }

    /// Starts whatever is still down and restores every proxy (after a schedule that was cut
    /// short, say).
    pub(super) async fn heal_all(&mut self, journal: &mut Journal) {
        for n in self.down.clone() {
            self.restart_node(n, journal).await;
        }
        for links in &self.links {
            links.broker.iter().for_each(|p| p.restore());
            links.database.restore();
        }
        if self.ingress.running.is_none() {
            self.start_ingress(journal).await;
        }
        for i in 0..self.workers.len() {
            if self.workers[i].running.is_none() {
                self.start_worker(i, journal).await;
            }
        }
    }

    async fn start_worker(&mut self, i: usize, journal: &mut Journal) {
        let ready = self.workers[i].start(READY).await;
        journal.note(format_args!("worker {i} started again (ready: {ready})"));
    }

    async fn start_ingress(&mut self, journal: &mut Journal) {
        let ready = self.ingress.start(READY).await;
        if let Some(process) = &self.ingress.running {
            self.ingress_addr.send_replace(process.ingress_addr);
        }
        journal.note(format_args!("ingress started again (ready: {ready})"));
    }
}
