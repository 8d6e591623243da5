//! The faults the checker injects, and how the [`System`] suffers and heals each one.

use std::collections::BTreeSet;
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

/// How long a restarted node's queue member gets to be online again before the next fault.
const MEMBER_ONLINE: Duration = Duration::from_secs(60);
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

    /// Which node each process is connected to, from its `/readyz`.
    async fn placement(&self) -> String {
        let mut placed = Vec::new();
        for (i, service) in std::iter::once(&self.ingress)
            .chain(&self.workers)
            .enumerate()
        {
            let Some(process) = &service.running else {
                continue;
            };
            let body = process.get("/readyz").await.map(|(_, body)| body);
            let readyz: serde_json::Value = body
                .and_then(|body| serde_json::from_str(&body).ok())
                .unwrap_or_default();
            let addr = readyz["broker_nodes"]
                .as_object()
                .and_then(|nodes| nodes.values().find_map(|addr| addr.as_str()?.parse().ok()));
            // Workers reach node k + 1 through their proxy k.
            let proxies = i
                .checked_sub(1)
                .map_or(&[][..], |w| &self.links[w].broker[..]);
            let node = (1..=self.nodes.size()).find(|&n| {
                addr == Some(self.nodes.amqp_addr(n))
                    || proxies.get(usize::from(n) - 1).map(|p| p.addr) == addr
            });
            let node = node.map_or("no node".to_owned(), |n| format!("node {n}"));
            placed.push(format!("{} on {node}", service.name));
        }
        placed.join(", ")
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

    /// The main queue's leader and its online followers, by node number, once it has a
    /// leader (none while the members elect one).
    async fn queue_members(&self) -> (u16, Vec<u16>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (leader, online) = self.queue_state().await;
            let followers: Vec<u16> = online
                .iter()
                .copied()
                .filter(|&n| Some(n) != leader)
                .collect();
            match leader {
                Some(leader) if !followers.is_empty() => return (leader, followers),
                _ if Instant::now() > deadline => {
                    panic!("{} has no leader and follower online", self.topology.queue)
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// The main queue's leader and online members, by node number.
    async fn queue_state(&self) -> (Option<u16>, Vec<u16>) {
        let args = ["list_queues", "-p", VHOST, "name", "leader", "online"];
        let json = self
            .ctl(&[&args[..], &["--formatter", "json"]].concat())
            .await;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_default();
        let row = rows
            .iter()
            .find(|row| row["name"] == self.topology.queue.as_str());
        let number = |name: &serde_json::Value| {
            (1..=self.nodes.size()).find(|&n| name.as_str() == Some(&self.nodes.node_name(n)))
        };
        let Some(row) = row else {
            return (None, Vec::new());
        };
        let online = row["online"].as_array().cloned().unwrap_or_default();
        let mut online: Vec<u16> = online.iter().filter_map(number).collect();
        online.sort_unstable();
        (number(&row["leader"]), online)
    }

    /// The connections open in the system's vhost, on every node, by process id.
    async fn connections(&self) -> BTreeSet<String> {
        let args = [
            "list_connections",
            "-p",
            VHOST,
            "pid",
            "--formatter",
            "json",
        ];
        let json = self.ctl(&args).await;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_default();
        rows.iter()
            .filter_map(|row| row["pid"].as_str().map(str::to_owned))
            .collect()
    }

    async fn kill_node(&mut self, n: u16) {
        let nodes = self.nodes.clone();
        tokio::task::spawn_blocking(move || nodes.kill(n))
            .await
            .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
        self.down.insert(n);
        *self.kills.entry(n).or_default() += 1;
    }

    /// Starts node `n` again and waits until the queue's member on it is online.
    async fn restart_node(&mut self, n: u16, journal: &mut Journal) {
        let started = Instant::now();
        let nodes = self.nodes.clone();
        tokio::task::spawn_blocking(move || nodes.restart(n))
            .await
            .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
        self.down.remove(&n);
        let deadline = Instant::now() + MEMBER_ONLINE;
        while !self.queue_state().await.1.contains(&n) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (leader, online) = self.queue_state().await;
        journal.note(format_args!(
            "node {n} back after {:.1} s; leader node {}, online {online:?}",
            started.elapsed().as_secs_f64(),
            leader.map_or("none".to_owned(), |l| l.to_string()),
        ));
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
