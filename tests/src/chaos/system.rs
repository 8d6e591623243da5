//! The system under faults: a private RabbitMQ cluster with a vhost of its own, a database of its
//! own, one `worker ingress` and `worker consume` processes, each worker reaching the broker and
//! the database through TCP proxies that faults can cut.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use worker::broker;
use worker::config::BrokerSettings;
use worker::topology::Topology;

use super::links::{Links, database_addr, through};
use super::service::Service;
use crate::TestDb;
use crate::proxy::CuttableProxy;
use crate::rabbit_nodes::RabbitNodes;
use crate::webhook::SECRET;

/// The vhost every connection of the system uses, so the broker can close them all at once.
pub(super) const VHOST: &str = "chaos";
/// How long a process gets to be ready when the system starts.
const READY: Duration = Duration::from_secs(60);

/// What to start.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The `worker` binary the processes run.
    pub binary: PathBuf,
    /// RabbitMQ nodes in the cluster.
    pub nodes: u16,
    /// `worker consume` processes. Each is given every node (`AMQP_URL`, through proxies of its
    /// own) listed from node `i % nodes + 1` with `AMQP_NODE_ORDER=listed`, so they start on
    /// different nodes; the ingress is given every node in random order.
    pub workers: usize,
    /// Settings for every process, after the system's own (later entries win), which are
    /// `DATABASE_MIN_CONNECTIONS=1` (many tests share the server), and
    /// `DATABASE_CONNECT_TIMEOUT=2s` and `RETRY_MAX_DELAY=2s` so recovery shows within the stream.
    pub env: Vec<(&'static str, String)>,
}

impl Setup {
    /// Three nodes, two workers.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            nodes: 3,
            workers: 2,
            env: Vec::new(),
        }
    }
}

/// Fields drop in order: processes first, then the proxies, the database and the nodes.
pub struct System {
    pub(super) ingress: Service,
    pub(super) workers: Vec<Service>,
    pub(super) links: Vec<Links>,
    pub db: TestDb,
    pub topology: Topology,
    pub(super) nodes: Arc<RabbitNodes>,
    /// Nodes a fault killed and no heal restarted yet.
    pub(super) down: BTreeSet<u16>,
    /// Times each node was killed.
    pub(super) kills: BTreeMap<u16, usize>,
    /// Where the ingress listens now (it moves when the ingress is started again).
    pub(super) ingress_addr: watch::Sender<SocketAddr>,
    run_id: String,
}

impl System {
    /// Starts the cluster (formed before anything declares a queue), declares the product's
    /// topology through node 1 (so node 1 leads the queue at first), then the ingress and
    /// workers, and waits until each is ready. Panics with the reason if something cannot start.
    pub async fn start(setup: Setup) -> Self {
        let size = setup.nodes;
        let nodes = tokio::task::spawn_blocking(move || RabbitNodes::start(size, ""))
            .await
            .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
        let nodes = Arc::new(nodes);
        ctl(&nodes, 1, &["add_vhost", VHOST]).await;
        ctl(
            &nodes,
            1,
            &["set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"],
        )
        .await;
        let settings = BrokerSettings::with_prefix(nodes.amqp_url_in(1, VHOST), "");
        let topology = Topology::from_settings(&settings);
        declare(&settings, &topology).await;
        let db = TestDb::migrated().await;

        let binary = setup.binary.to_str().expect("a UTF-8 path").to_owned();
        let common = |amqp_url: String, database_url: String| {
            let mut env = vec![
                ("AMQP_URL", amqp_url),
                ("DATABASE_URL", database_url),
                ("DATABASE_MIN_CONNECTIONS", "1".to_owned()),
                ("DATABASE_CONNECT_TIMEOUT", "2s".to_owned()),
                ("RETRY_MAX_DELAY", "2s".to_owned()),
            ];
            env.extend(setup.env.iter().cloned());
            env
        };
        // The ingress lists every node, in the production default's random order.
        let all_nodes: Vec<String> = (1..=size).map(|n| nodes.amqp_url_in(n, VHOST)).collect();
        let mut ingress_env = common(all_nodes.join(","), db.settings.expose_url().to_owned());
        ingress_env.insert(0, ("CLERK_WEBHOOK_SECRET", SECRET.to_owned()));
        let mut ingress = Service::new("ingress", &binary, "ingress", ingress_env);
        let mut links = Vec::new();
        let mut workers = Vec::new();
        let database = database_addr(db.settings.expose_url()).await;
        for i in 0..setup.workers {
            let mut broker = Vec::new();
            for n in 1..=size {
                broker.push(CuttableProxy::start(nodes.amqp_addr(n)).await);
            }
            // Every node through this worker's proxies, listed from a node of its own: the
            // workers start on different nodes and fail over to the next.
            let mut urls: Vec<String> = broker
                .iter()
                .map(|proxy| format!("amqp://guest:guest@{}/{VHOST}", proxy.addr))
                .collect();
            urls.rotate_left(i % usize::from(size));
            let database_proxy = CuttableProxy::start(database).await;
            let mut env = common(
                urls.join(","),
                through(db.settings.expose_url(), database_proxy.addr),
            );
            env.insert(0, ("AMQP_NODE_ORDER", "listed".to_owned()));
            links.push(Links {
                broker,
                database: database_proxy,
            });
            workers.push(Service::new(
                &format!("worker {i}"),
                &binary,
                "consume",
                env,
            ));
        }
        for service in std::iter::once(&mut ingress).chain(&mut workers) {
            assert!(
                service.start(READY).await,
                "{} not ready within {READY:?}; logs:\n{}",
                service.name,
                service.logs()
            );
        }
        let addr = ingress.running.as_ref().map(|p| p.ingress_addr);
        let (ingress_addr, _) = watch::channel(addr.expect("the ingress runs"));
        Self {
            ingress,
            workers,
            links,
            db,
            topology,
            nodes,
            down: BTreeSet::new(),
            kills: BTreeMap::new(),
            ingress_addr,
            run_id: uuid::Uuid::new_v4().simple().to_string()[..6].to_owned(),
        }
    }

    /// Where the ingress listens, following its restarts.
    pub fn ingress_addr(&self) -> watch::Receiver<SocketAddr> {
        self.ingress_addr.subscribe()
    }

    /// A short random name of this system, in every svix-id and user id it is sent.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The cluster, for checks of the test's own (`rabbitmqctl`, node names).
    pub fn nodes(&self) -> &RabbitNodes {
        &self.nodes
    }

    /// A node no fault has down.
    pub(super) fn live_node(&self) -> u16 {
        (1..=self.nodes.size())
            .find(|n| !self.down.contains(n))
            .expect("a node is up")
    }

    /// `rabbitmqctl ARGS` on a live node.
    pub(super) async fn ctl(&self, args: &[&str]) -> String {
        ctl(&self.nodes, self.live_node(), args).await
    }

    /// The URL of a live node, in the system's vhost.
    pub(super) fn live_url(&self) -> String {
        self.nodes.amqp_url_in(self.live_node(), VHOST)
    }

    /// Every log line of every process, current and past, that contains `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::iter::once(&self.ingress)
            .chain(&self.workers)
            .flat_map(|service| {
                service
                    .logs()
                    .lines()
                    .filter(|line| line.contains(needle))
                    .map(|line| format!("{}: {line}", service.name))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// `rabbitmqctl ARGS` on node `n`, off the async threads; panics with its errors.
pub(super) async fn ctl(nodes: &Arc<RabbitNodes>, n: u16, args: &[&str]) -> String {
    let nodes = nodes.clone();
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.rabbitmqctl(n, &args)
    })
    .await
    .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
}

/// Declares the topology once, so the queues exist (with a member on every node) before any
/// process starts.
async fn declare(settings: &BrokerSettings, topology: &Topology) {
    let connection = broker::connect(settings, "chaos")
        .await
        .expect("node 1 takes connections");
    let channel = connection.create_channel().await.expect("a channel");
    broker::declare(&channel, topology)
        .await
        .expect("the topology declared");
    let _ = connection.close(200, "declared".into()).await;
}
