//! RabbitMQ nodes of the test's own (a cluster, or one node with its own configuration), run by
//! `deploy/rabbitmq-cluster.sh` beside the shared RabbitMQ; killed and removed when the value is
//! dropped, even when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The first AMQP port blocks start at; a node's other ports are +10000 (Prometheus, off here)
/// and +20000 (Erlang distribution), so every port stays below the kernel's ephemeral range
/// (32768 and up), where outgoing connections could take them.
const FIRST_PORT: u16 = 10_000;
/// Ports of one block: nodes per cluster at most.
const BLOCK: u16 = 8;
const BLOCKS: u16 = 330;

pub struct RabbitNodes {
    dir: PathBuf,
    base_port: u16,
    size: u16,
}

impl RabbitNodes {
    /// Starts `size` clustered nodes with `extra_conf` appended to each node's rabbitmq.conf,
    /// and returns once the cluster is formed; panics with the failing node's log otherwise.
    pub fn start(size: u16, extra_conf: &str) -> Self {
        Self::start_configured(size, extra_conf, "")
    }

    /// As [`Self::start`], with `advanced_config` (Erlang terms, for settings rabbitmq.conf
    /// does not know, e.g. `channel_tick_interval`) as every node's advanced.config, unless empty.
    pub fn start_configured(size: u16, extra_conf: &str, advanced_config: &str) -> Self {
        assert!((1..=BLOCK).contains(&size), "1 to {BLOCK} nodes");
        let (dir, base_port) = reserve_block(size);
        let nodes = Self {
            dir,
            base_port,
            size,
        };
        let extra = nodes.dir.join("extra.conf");
        std::fs::write(&extra, extra_conf).expect("extra.conf written");
        // Dropped (nodes killed, folder removed) if this panics.
        let mut script = nodes.script(&["start"]);
        script
            .env("RABBITMQ_CLUSTER_SIZE", size.to_string())
            .env("RABBITMQ_CLUSTER_EXTRA_CONF", &extra);
        if !advanced_config.is_empty() {
            let advanced = nodes.dir.join("advanced.config");
            std::fs::write(&advanced, advanced_config).expect("advanced.config written");
            script.env("RABBITMQ_CLUSTER_ADVANCED_CONFIG", &advanced);
        }
        let output = script.output().expect("deploy/rabbitmq-cluster.sh runs");
        check("start", &output);
        nodes
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` of node `n` (1-based).
    pub fn amqp_url(&self, n: u16) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port(n))
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/<vhost>` of node `n`, for a vhost of the test's own
    /// (a name that needs no percent-encoding).
    pub fn amqp_url_in(&self, n: u16, vhost: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", self.port(n))
    }

    /// Where node `n` takes AMQP connections: what a proxy in front of it forwards to.
    pub fn amqp_addr(&self, n: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port(n)))
    }

    /// How many nodes the cluster has.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// `<prefix><n>@localhost`, as rabbitmqctl and the queues' member lists name node `n`.
    pub fn node_name(&self, n: u16) -> String {
        format!("{}{n}@localhost", self.prefix())
    }

    /// SIGKILLs node `n`'s Erlang VM: a crash, nothing flushed or handed over.
    pub fn kill(&self, n: u16) {
        self.run(&["kill", &n.to_string()]);
    }

    /// Starts node `n` again and returns once it runs in the cluster with the other live nodes.
    pub fn restart(&self, n: u16) {
        self.run(&["restart", &n.to_string()]);
    }

    /// Stops node `n` gracefully.
    pub fn stop_node(&self, n: u16) {
        self.run(&["stop-node", &n.to_string()]);
    }

    /// `rabbitmqctl -q -n <node n> ARGS`; its standard output, or a panic with its errors.
    pub fn rabbitmqctl(&self, n: u16, args: &[&str]) -> String {
        let n = n.to_string();
        let args: Vec<&str> = ["ctl", n.as_str()].iter().chain(args).copied().collect();
        self.run(&args)
    }

    fn port(&self, n: u16) -> u16 {
        assert!((1..=self.size).contains(&n), "node {n} of {}", self.size);
        self.base_port + n - 1
    }

    /// Node names are unique on the machine (epmd), like the ports: both come from the block.
    fn prefix(&self) -> String {
        format!("rn{}n", self.base_port)
    }

    fn run(&self, args: &[&str]) -> String {
        let output = self
            .script(args)
            .output()
            .expect("deploy/rabbitmq-cluster.sh runs");
        check(&args.join(" "), &output);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(script_path())
            .args(args)
            .env("RABBITMQ_CLUSTER_DIR", &self.dir)
            .env("RABBITMQ_CLUSTER_AMQP_PORT", self.base_port.to_string())
            .env("RABBITMQ_CLUSTER_NODE_PREFIX", self.prefix())
            // Nothing scrapes these nodes; without plugins they start and stop faster.
            .env("RABBITMQ_CLUSTER_PLUGINS", "");
        command
    }
}

impl Drop for RabbitNodes {
    fn drop(&mut self) {
        // The data goes with the folder, so a crash is as good as a graceful stop, and faster.
        // No panics here: this may run while the test unwinds.
        for n in 1..=self.size {
            let killed = self.script(&["kill", &n.to_string()]).output();
            match killed {
                Ok(output) if output.status.success() => {}
                Ok(output) => eprintln!(
                    "warning: could not kill test RabbitMQ node {n}: {}",
                    String::from_utf8_lossy(&output.stderr)
                ),
                Err(err) => eprintln!("warning: could not kill test RabbitMQ node {n}: {err}"),
            }
        }
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: could not remove {}: {err}", self.dir.display());
        }
    }
}

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rabbitmq-cluster.sh")
}

/// Panics with the script's output unless it succeeded.
fn check(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "deploy/rabbitmq-cluster.sh {what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A folder and a block of ports no other test (in this process or another) holds: the folder,
/// named after the block, is the lock, and the block's ports must be free right now.
fn reserve_block(size: u16) -> (PathBuf, u16) {
    let root = std::env::temp_dir().join("rabbit-nodes");
    std::fs::create_dir_all(&root).expect("a folder for test RabbitMQ nodes");
    let start = (uuid::Uuid::new_v4().as_u128() % u128::from(BLOCKS)) as u16;
    for k in 0..BLOCKS {
        let base = FIRST_PORT + (start + k) % BLOCKS * BLOCK;
        let dir = root.join(base.to_string());
        if std::fs::create_dir(&dir).is_err() {
            continue;
        }
        let free = (base..base + size)
            .flat_map(|port| [port, port + 10_000, port + 20_000])
            .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return (dir, base);
        }
        let _ = std::fs::remove_dir(&dir);
    }
    panic!(
        "no free block of ports for RabbitMQ nodes in {}",
        root.display()
    );
}
