//! `worker ingress` for the tests that push it to its limits: in this process (short limits,
//! metrics read directly) or as a child process (where SIGTERM and the exit status are the
//! point), signing with the tests' secret, with `extra` settings.

use std::time::Duration;

use crate::app::TestApp;
use crate::broker::TestBroker;
use crate::process::WorkerProcess;
use crate::webhook::SECRET;

/// The environment of an ingress on `broker`'s topology with `extra` settings.
pub fn env(broker: &TestBroker, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = broker.env();
    env.push(("CLERK_WEBHOOK_SECRET", SECRET.to_owned()));
    env.extend(extra.iter().map(|(key, value)| (*key, (*value).to_owned())));
    env
}

/// `worker ingress` in this process, ready.
pub async fn in_process(broker: &TestBroker, extra: &[(&'static str, &str)]) -> TestApp {
    let app = TestApp::spawn(&["ingress"], &env(broker, extra)).await;
    app.wait_ready(Duration::from_secs(30)).await;
    app
}

/// `worker ingress` as a process of `binary`, ready.
pub async fn as_process(
    binary: &str,
    broker: &TestBroker,
    extra: &[(&'static str, &str)],
) -> WorkerProcess {
    let mut process = WorkerProcess::spawn(binary, &["ingress"], &env(broker, extra)).await;
    process.wait_ready(Duration::from_secs(30)).await;
    process
}
