//! A fresh database and broker topology per phase (the test harness's `Stack`), and the `worker`
//! binary measured: the one built beside us, or a baseline commit's ([`crate::baseline`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use integration_tests::TestDb;
use integration_tests::broker::TestBroker;
use integration_tests::clerk::UserEvent;
use integration_tests::process::WorkerProcess;

pub use integration_tests::stack::Stack;

/// A `worker` binary to measure, and what the tables call it.
#[derive(Clone, Debug)]
pub struct Build {
    pub label: String,
    pub binary: PathBuf,
}

impl Build {
    /// The release build beside the bench: the working tree's.
    pub fn working_tree() -> anyhow::Result<Self> {
        Ok(Self {
            label: "working tree".into(),
            binary: worker_binary()?,
        })
    }

    /// A fresh stack whose database this build migrated itself: another commit's schema and
    /// `provision_user` may differ from the working tree's.
    pub async fn stack(&self) -> anyhow::Result<Stack> {
        let stack = Stack {
            db: TestDb::empty().await,
            broker: TestBroker::new().await,
        };
        let mut migrate = WorkerProcess::start(self.path()?, &["migrate"], &stack.env(&[]));
        let status = migrate.wait_exit(Duration::from_secs(120)).await;
        if !status.success() {
            bail!(
                "{} migrate exited with {status}:\n{}",
                self.label,
                migrate.logs()
            );
        }
        Ok(stack)
    }

    fn path(&self) -> anyhow::Result<&str> {
        self.binary.to_str().context("a UTF-8 path")
    }
}

/// Starts `worker ARGS` of `build` on `stack`, waiting until it is ready.
pub async fn spawn(
    build: &Build,
    stack: &Stack,
    args: &[&str],
    extra: &[(&'static str, String)],
) -> anyhow::Result<WorkerProcess> {
    // Logging as in production (a line per event is part of the cost being measured).
    let mut env: Vec<(&'static str, &str)> = vec![("RUST_LOG", "info"), ("LOG_FORMAT", "json")];
    env.extend(extra.iter().map(|(key, value)| (*key, value.as_str())));
    Ok(stack.spawn(build.path()?, args, &env).await)
}

/// Seconds between the first and the last commit, from the workspaces' `created_at`.
pub async fn commit_span_seconds(stack: &Stack) -> f64 {
    let sql = "SELECT (EXTRACT(EPOCH FROM max(created_at) - min(created_at)) * 1000000)::bigint FROM workspaces";
    stack.db.scalar(sql).await as f64 / 1e6
}

/// Waits until `n` workspaces exist.
pub async fn wait_for_workspaces(stack: &Stack, n: i64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while stack.workspaces().await < n {
        if std::time::Instant::now() > deadline {
            bail!(
                "only {} of {n} workspaces after {timeout:?}",
                stack.workspaces().await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A sign-up of a user nobody has seen: the bench's events, Clerk-shaped.
pub fn sign_up(run: &str, i: usize) -> UserEvent {
    UserEvent::created(
        &format!("user_2{run}{i:07}"),
        &format!("{run}{i}@bench.example.com"),
        None,
    )
}

/// `target/<profile>/worker`, built by `cargo build --release -p worker`.
pub fn worker_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let binary = me.with_file_name("worker");
    if !binary.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p worker` first",
            binary.display()
        );
    }
    Ok(binary)
}

/// Peak resident memory of a process (VmHWM), in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_kib(pid, "VmHWM:").map(|kib| kib as f64 / 1024.0)
}

/// Resident memory of a process now (VmRSS), in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

/// A `kB` field of `/proc/<pid>/status`, such as `VmRSS:`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
