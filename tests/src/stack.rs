//! A database and a broker topology of the caller's own, and applications (in process, or as
//! `worker` processes) running on them.

use std::time::Duration;

use crate::TestDb;
use crate::app::TestApp;
use crate::broker::TestBroker;
use crate::process::WorkerProcess;

pub struct Stack {
    pub db: TestDb,
    pub broker: TestBroker,
}

impl Stack {
    pub async fn new() -> Self {
        Self {
            db: TestDb::migrated().await,
            broker: TestBroker::new().await,
        }
    }

    /// A worker's environment for this stack, plus `extra` (later entries win).
    pub fn env(&self, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut env = self.broker.env();
        env.push(("DATABASE_URL", self.db.settings.expose_url().to_owned()));
        // Tests run many workers at once against one server (max_connections 100): each opens
        // connections as it needs them rather than a warm minimum.
        env.push(("DATABASE_MIN_CONNECTIONS", "1".to_owned()));
        env.extend(extra.iter().map(|(key, value)| (*key, (*value).to_owned())));
        env
    }

    /// Starts `worker args...` in this process on this stack and waits until it is ready.
    pub async fn start(&self, args: &[&str], extra: &[(&'static str, &str)]) -> TestApp {
        let app = TestApp::spawn(args, &self.env(extra)).await;
        app.wait_ready(Duration::from_secs(60)).await;
        app
    }

    /// [`Self::start`] with the operator console on a port of its own, guarded by `token`;
    /// the application and the console's base URL.
    pub async fn start_with_console(&self, args: &[&str], token: &str) -> (TestApp, String) {
        let app = self
            .start(
                args,
                &[("CONSOLE_ADDR", "127.0.0.1:0"), ("CONSOLE_TOKEN", token)],
            )
            .await;
        let addr = app.console_addr.expect("the console listens");
        (app, format!("http://{addr}"))
    }

    /// Starts `bin args...` as a process on this stack and waits until `/readyz` says ready.
    pub async fn spawn(
        &self,
        bin: &str,
        args: &[&str],
        extra: &[(&'static str, &str)],
    ) -> WorkerProcess {
        let mut process = WorkerProcess::spawn(bin, args, &self.env(extra)).await;
        process.wait_ready(Duration::from_secs(60)).await;
        process
    }

    pub async fn workspaces(&self) -> i64 {
        self.db.scalar("SELECT count(*) FROM workspaces").await
    }

    pub async fn users(&self) -> i64 {
        self.db.scalar("SELECT count(*) FROM users").await
    }

    /// Messages ready in the main queue.
    pub async fn main_queue_ready(&self) -> u32 {
        self.broker.ready(&self.broker.topology.queue).await
    }

    /// Dead letters waiting for an operator: ready in the dead-letter queue, or open in the
    /// store.
    pub async fn dead_letters_ready(&self) -> u32 {
        crate::dead_letters::open(&self.broker, &self.db).await
    }

    /// Takes every dead letter, from the queue and the store (see [`crate::dead_letters`]).
    pub async fn take_dead_letters(&self) -> Vec<crate::broker::Message> {
        crate::dead_letters::take_all(&self.broker, &self.db).await
    }
}
