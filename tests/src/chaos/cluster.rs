//! The cluster side: the queue's leader and followers, the connections in the system's vhost,
//! which node each process is on, node kills and restarts, and whether the queues drained.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::fault::Journal;
use super::system::{System, VHOST};

/// How long a restarted node's queue member gets to be online again before the next fault.
const MEMBER_ONLINE: Duration = Duration::from_secs(60);

impl System {
    /// The main queue's leader and its online followers, by node number, once it has a
    /// leader (none while the members elect one).
    pub(super) async fn queue_members(&self) -> (u16, Vec<u16>) {
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
    pub(super) async fn connections(&self) -> BTreeSet<String> {
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

    pub(super) async fn kill_node(&mut self, n: u16) {
        let nodes = self.nodes.clone();
        tokio::task::spawn_blocking(move || nodes.kill(n))
            .await
            .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
        self.down.insert(n);
        *self.kills.entry(n).or_default() += 1;
    }

    /// Starts node `n` again and waits until the queue's member on it is online.
    pub(super) async fn restart_node(&mut self, n: u16, journal: &mut Journal) {
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

    /// Which node each process is connected to, from its `/readyz`.
    pub(super) async fn placement(&self) -> String {
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

    /// Waits until the main, retry and delay queues hold no message, ready or unacknowledged, twice
    /// in a row a second apart; false if they still do after `timeout`.
    pub(super) async fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut empty_before = false;
        while Instant::now() < deadline {
            let empty = self.queued().await == 0;
            if empty && empty_before {
                return true;
            }
            empty_before = empty;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        false
    }

    /// Messages in the main, retry and delay queues, ready or delivered and not yet
    /// acknowledged.
    async fn queued(&self) -> u64 {
        let args = [
            "list_queues",
            "-p",
            VHOST,
            "name",
            "messages",
            "--formatter",
            "json",
        ];
        let json = self.ctl(&args).await;
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&json).unwrap_or_else(|err| panic!("list_queues: {err}: {json}"));
        let retry = &self.topology.retry;
        let delays = retry.delays.iter().map(|delay| &delay.name);
        let watched: Vec<&String> = [&self.topology.queue, &retry.queue]
            .into_iter()
            .chain(delays)
            .collect();
        rows.iter()
            .filter(|row| watched.iter().any(|queue| row["name"] == queue.as_str()))
            .map(|row| row["messages"].as_u64().unwrap_or(u64::MAX / 4))
            .sum()
    }
}
