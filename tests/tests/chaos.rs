//! The pipeline on a three-node RabbitMQ cluster under faults, judged by the chaos checker:
//! signed webhooks at a steady rate through `worker ingress` into two `worker consume` processes
//! connected to different nodes. Whatever the fault, nothing acknowledged is lost, nothing is
//! dead-lettered, and every user has exactly one workspace.

use std::time::{Duration, Instant};

use integration_tests::chaos::{Checker, Fault, Setup, System, schedule};

const RATE: f64 = 50.0;
const STREAM: Duration = Duration::from_secs(30);

async fn check(schedule: impl Fn(Duration) -> Vec<Fault>) {
    let started = Instant::now();
    let mut system = System::start(Setup::new(env!("CARGO_BIN_EXE_worker-under-test"))).await;
    eprintln!("system started in {:.1} s", started.elapsed().as_secs_f64());
    let verdict = Checker::new(RATE, STREAM, schedule(STREAM))
        .run(&mut system)
        .await;
    eprintln!("{}", verdict.faults.join("\n"));
    eprintln!("failed attempts: {}", verdict.failures.join("; "));
    eprintln!("{verdict}");
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        verdict.is_ok(),
        "{}",
        serde_json::to_string_pretty(&verdict).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_queue_leaders_node_then_a_followers_loses_no_acknowledged_event() {
    check(schedule::leader_then_follower).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_single_fault_in_one_schedule_loses_no_acknowledged_event() {
    check(schedule::every_fault).await;
}
