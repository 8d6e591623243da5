//! The application in this process: the same command line and settings as the `worker` binary,
//! built with [`worker::service::Application`] on port 0 and run on the test's runtime. Stopping
//! it is what SIGTERM does to the binary; tests where the process itself is the point (signals,
//! SIGKILL, exit statuses, log lines) use [`crate::process::WorkerProcess`] instead.

use std::net::SocketAddr;
use std::ops::Deref;
use std::time::{Duration, Instant};

use clap::CommandFactory;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker::cli::Cli;
use worker::metrics::Metrics;
use worker::service::Application;

use crate::ops::OpsClient;

/// A running application; stopped (as by SIGTERM) when dropped.
pub struct TestApp {
    ops: OpsClient,
    /// Where `worker ingress` / `worker run` listen for webhooks (unspecified otherwise).
    pub ingress_addr: SocketAddr,
    /// Where the operator console answers, when CONSOLE_ADDR was given.
    pub console_addr: Option<SocketAddr>,
    /// The application's own metrics, readable without a scrape.
    pub metrics: Metrics,
    stop: CancellationToken,
    running: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Builds and starts `worker ARGS` configured by `env` (the binary's variable names; those
    /// the command does not know are ignored, as the binary ignores them). Fails as the binary
    /// would fail to start.
    pub async fn start(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut argv = vec!["worker".to_owned()];
        argv.extend(args.iter().map(|arg| (*arg).to_owned()));
        let listeners = [
            ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
            ("INGRESS_ADDR", "127.0.0.1:0".to_owned()),
        ];
        argv.extend(flags(args, listeners.iter().chain(env)));
        let cli = Cli::configure(&argv)?;
        let plan = cli
            .service_plan()
            .ok_or_else(|| anyhow::anyhow!("{args:?} is not a long-running command"))?;
        let app = Application::build(plan).await?;
        let stop = CancellationToken::new();
        Ok(Self {
            ops: OpsClient::new(app.ops_addr()),
            ingress_addr: app
                .ingress_addr()
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            console_addr: app.console_addr(),
            metrics: app.metrics(),
            running: Some(tokio::spawn(app.run_until_stopped(stop.clone()))),
            stop,
        })
    }

    /// [`Self::start`], failing the test if the application cannot start.
    pub async fn spawn(args: &[&str], env: &[(&str, String)]) -> Self {
        Self::start(args, env)
            .await
            .unwrap_or_else(|err| panic!("worker {args:?} did not start: {err:#}"))
    }

    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.addr
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let ready = self.ops.ready_before(Instant::now() + timeout).await;
        assert!(ready, "worker not ready within {timeout:?}");
    }

    /// The graceful stop, as SIGTERM starts it in the binary.
    pub fn terminate(&self) {
        self.stop.cancel();
    }

    /// Waits for the application to stop and returns how it ended.
    pub async fn wait_stopped(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let running = self.running.take().expect("the application was running");
        match tokio::time::timeout(timeout, running).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(join.into()),
            Err(_) => panic!("the application still runs after {timeout:?}"),
        }
    }

    /// Whether the application has stopped on its own (a failed part).
    pub fn stopped(&self) -> bool {
        self.running.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

/// `/readyz` and `/metrics` over HTTP, as for a process.
impl Deref for TestApp {
    type Target = OpsClient;

    fn deref(&self) -> &OpsClient {
        &self.ops
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `--flag=value` for each variable the command `args` knows (clap's `env` names), so a test's
/// environment list configures the in-process application exactly as it configures a process.
/// A variable listed twice takes its last value, as with `Command::env`.
fn flags<'a>(args: &[&str], env: impl Iterator<Item = &'a (&'a str, String)>) -> Vec<String> {
    let root = Cli::command();
    let mut command = &root;
    for arg in args {
        match command.find_subcommand(arg) {
            Some(sub) => command = sub,
            None => break,
        }
    }
    let known: Vec<&clap::Arg> = root
        .get_arguments()
        .chain(command.get_arguments())
        .collect();
    let mut values: Vec<(&str, &str)> = Vec::new();
    for (key, value) in env {
        values.retain(|(seen, _)| seen != key);
        values.push((key, value));
    }
    values
        .into_iter()
        .filter_map(|(key, value)| {
            let arg = known
                .iter()
                .find(|arg| arg.get_env().is_some_and(|name| name == key))?;
            Some(format!("--{}={value}", arg.get_long()?))
        })
        .collect()
}
