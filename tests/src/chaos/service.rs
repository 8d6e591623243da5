//! A process of the system that faults kill and start again.

use std::time::{Duration, Instant};

use crate::process::WorkerProcess;

/// A process that faults kill and start again with the same command line and settings. The
/// processes it ran before are kept, with their logs, until the system is dropped.
pub struct Service {
    pub name: String,
    pub binary: String,
    pub args: Vec<&'static str>,
    pub env: Vec<(&'static str, String)>,
    pub running: Option<WorkerProcess>,
    pub ended: Vec<WorkerProcess>,
}

impl Service {
    /// Not started yet: `worker COMMAND` run by `binary` with `env`.
    pub fn new(
        name: &str,
        binary: &str,
        command: &'static str,
        env: Vec<(&'static str, String)>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            binary: binary.to_owned(),
            args: vec![command],
            env,
            running: None,
            ended: Vec::new(),
        }
    }

    /// Starts the process again; returns whether it got ready within `timeout`.
    pub async fn start(&mut self, timeout: Duration) -> bool {
        let process = WorkerProcess::spawn(&self.binary, &self.args, &self.env).await;
        let ready = process.ready_before(Instant::now() + timeout).await;
        self.running = Some(process);
        ready
    }

    /// SIGKILL; a no-op when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.running.take() {
            process.kill();
            self.ended.push(process);
        }
    }

    /// Everything every run of the process logged, oldest first.
    pub fn logs(&self) -> String {
        self.ended
            .iter()
            .chain(&self.running)
            .map(WorkerProcess::logs)
            .collect()
    }
}
