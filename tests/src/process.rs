//! A `worker` process under test: spawned with the test's database and broker, its logs kept in
//! a file (shown when a test fails), its ops server on a free port, and killed when dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct WorkerProcess {
    child: Child,
    pub ops_addr: SocketAddr,
    /// Where `worker ingress` / `worker run` listen for webhooks.
    pub ingress_addr: SocketAddr,
    log_path: PathBuf,
    http: reqwest::Client,
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

impl WorkerProcess {
    /// Starts `bin args...` with `env` (plus free `METRICS_ADDR` and `INGRESS_ADDR`, JSON logs).
    pub fn spawn(bin: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let ops_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let ingress_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log_path = std::env::temp_dir().join(format!("worker-{}.log", uuid::Uuid::new_v4()));
        let log = std::fs::File::create(&log_path).expect("a log file");
        let mut command = Command::new(bin);
        command
            .args(args)
            .env("METRICS_ADDR", ops_addr.to_string())
            .env("INGRESS_ADDR", ingress_addr.to_string())
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
        Self {
            child,
            ops_addr,
            ingress_addr,
            log_path,
            http: reqwest::Client::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://{}{path}", self.ops_addr);
        let response = self
            .http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "worker exited with {status} before it was ready; logs:\n{}",
                    self.logs()
                );
            }
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "worker not ready within {timeout:?}; logs:\n{}",
            self.logs()
        );
    }

    /// `/readyz` as (status, body).
    pub async fn readyz(&self) -> (u16, String) {
        self.get("/readyz").await.expect("/readyz answers")
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.expect("/metrics answers").1
    }

    /// The value of one series on `/metrics` (name with labels as rendered), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Sends SIGTERM: the graceful shutdown.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`TERM`, `INT`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name} failed");
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

/// Sums every line of a Prometheus page whose series starts with `series` (so a name without
/// labels adds up all its labelled series).
pub fn metric_value(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(name, _)| {
            *name == series || (name.starts_with(series) && name[series.len()..].starts_with('{'))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
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

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn metric_values_are_read_and_summed_over_labels() {
        let page = "# HELP x\nworkspace_created_total 3\nevents_processed_total{type=\"a\",outcome=\"created\"} 2\nevents_processed_total{type=\"b\",outcome=\"stale\"} 5\nevents_processed_total_other 9\n";
        assert_eq!(metric_value(page, "workspace_created_total"), 3.0);
        assert_eq!(metric_value(page, "events_processed_total"), 7.0);
        assert_eq!(
            metric_value(page, "events_processed_total{type=\"b\",outcome=\"stale\"}"),
            5.0
        );
        assert_eq!(metric_value(page, "missing_total"), 0.0);
    }
}
