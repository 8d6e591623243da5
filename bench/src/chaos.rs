//! `chaos`: the tests' chaos checker on its own. A private three-node RabbitMQ cluster, a database
//! of its own, `worker ingress` and two `worker consume` (the release build beside us), signed
//! sign-ups at `--rate` for `--seconds`, and every kind of fault once meanwhile; then the verdict
//! on every svix-id sent.

use std::time::Duration;

use integration_tests::chaos::{Checker, Setup, System, Verdict, schedule};

use crate::stack::worker_binary;

/// Webhooks per second unless `--rate` says otherwise.
pub const DEFAULT_RATE: f64 = 100.0;

pub async fn check(
    rate: f64,
    seconds: u64,
    extra: &[(&'static str, String)],
) -> anyhow::Result<Verdict> {
    let mut setup = Setup::new(worker_binary()?);
    setup.env = extra.to_vec();
    eprintln!("chaos: starting 3 RabbitMQ nodes, an ingress and 2 workers");
    let mut system = System::start(setup).await;
    let stream = Duration::from_secs(seconds);
    eprintln!("chaos: {rate:.0} webhooks/s for at least {seconds} s, every fault once");
    let checker = Checker::new(rate, stream, schedule::every_fault(stream));
    Ok(checker.run(&mut system).await)
}

/// What happened when, then the verdict's line.
pub fn table(verdict: &Verdict) -> String {
    let mut out = String::from("chaos: what happened (seconds from the stream's start)\n");
    for line in &verdict.faults {
        out += &format!("  {line}\n");
    }
    if !verdict.failures.is_empty() {
        out += &format!("failed attempts: {}\n", verdict.failures.join("; "));
    }
    if !verdict.lost_ids.is_empty() {
        out += &format!("lost: {}\n", verdict.lost_ids.join(" "));
    }
    if !verdict.dead_lettered_ids.is_empty() {
        out += &format!("dead-lettered: {}\n", verdict.dead_lettered_ids.join(" "));
    }
    for (id, lines) in &verdict.evidence {
        out += &format!("log lines naming {id}:\n");
        for line in lines {
            out += &format!("  {line}\n");
        }
    }
    out + &format!("{verdict}\n")
}
