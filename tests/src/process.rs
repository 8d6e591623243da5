//! A `worker` process under test, for tests where the process is the point (signals, SIGKILL,
//! exit statuses, log lines): spawned with the test's database and broker, its listeners on
//! port 0 (the addresses come from its log), its logs kept in a file (shown when a test fails),
//! and killed when dropped.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::ops::OpsClient;

/// How long a process gets to log its listeners' addresses.
const STARTUP: Duration = Duration::from_secs(30);

pub struct WorkerProcess {
    child: Child,
    ops: OpsClient,
    /// Where `worker ingress` / `worker run` listen for webhooks (unspecified otherwise).
    pub ingress_addr: SocketAddr,
    log_path: PathBuf,
}

impl WorkerProcess {
    /// Starts a long-running `bin args...` (see [`Self::start`]) and waits until it logged where
    /// its ops server listens, or exited (a process that refuses to start; see
    /// [`Self::wait_exit`]).
    pub async fn spawn(bin: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let mut process = Self::start(bin, args, env);
        process.read_addresses().await;
        process
    }

    /// Starts `bin args...` with `env` (plus JSON logs and port 0 for `METRICS_ADDR` and
    /// `INGRESS_ADDR`) without waiting for anything: for one-shot commands.
    pub fn start(bin: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let log_path = std::env::temp_dir().join(format!("worker-{}.log", uuid::Uuid::new_v4()));
        let log = std::fs::File::create(&log_path).expect("a log file");
        let mut command = Command::new(bin);
        command
            .args(args)
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("INGRESS_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("TEST_WORKER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("spawning {bin}: {err}"));
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            child,
            ops: OpsClient::new(unspecified),
            ingress_addr: unspecified,
            log_path,
        }
    }

    /// Reads the listeners' addresses from the log, until the ops server's appears or the
    /// process exits.
    async fn read_addresses(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            let logs = self.logs();
            if let Some(ingress) = logged_addr(&logs, "ingress listening") {
                self.ingress_addr = ingress;
            }
            if let Some(ops) = logged_addr(&logs, "ops server listening") {
                self.ops = OpsClient::new(ops);
                return;
            }
            if self.exited().is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker logged no ops address within {STARTUP:?}; logs:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                panic!(
                    "worker exited with {status} before it was ready; logs:\n{}",
                    self.logs()
                );
            }
            if self
                .ops
                .ready_before(Instant::now() + Duration::from_millis(200))
                .await
            {
                return;
            }
        }
        panic!(
            "worker not ready within {timeout:?}; logs:\n{}",
            self.logs()
        );
    }

    /// Sends SIGTERM: the graceful shutdown.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`TERM`, `INT`, ...).
    pub fn signal(&self, name: &str) {
        let sent = send_signal(self.pid(), name);
        assert!(sent.is_ok(), "{sent:?}");
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "worker still running after {timeout:?}; logs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `/readyz` and `/metrics` over HTTP.
impl Deref for WorkerProcess {
    type Target = OpsClient;

    fn deref(&self) -> &OpsClient {
        &self.ops
    }
}

/// The `addr` field of the JSON log line whose message is `message`.
fn logged_addr(logs: &str, message: &str) -> Option<SocketAddr> {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == message)
        .and_then(|line| line["addr"].as_str()?.parse().ok())
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            eprintln!("--- last worker log lines (pid {}) ---", self.pid());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// Sends the signal named `name` (`TERM`, `STOP`, ...) to process `pid`, with `kill`.
pub fn send_signal(pid: u32, name: &str) -> Result<(), String> {
    match Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("kill -{name} {pid}: {status}")),
        Err(err) => Err(format!("kill -{name} {pid}: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::logged_addr;

    #[test]
    fn listener_addresses_are_read_from_the_json_log() {
        let logs = "not json\n{\"message\":\"ingress listening\",\"addr\":\"127.0.0.1:4100\"}\n{\"message\":\"ops server listening\",\"addr\":\"127.0.0.1:4101\"}\n";
        assert_eq!(
            logged_addr(logs, "ops server listening"),
            Some(([127, 0, 0, 1], 4101).into())
        );
        assert_eq!(logged_addr(logs, "consuming"), None);
    }
}
