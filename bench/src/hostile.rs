//! `hostile`: valid signed webhooks at a steady rate while attackers hit the same ingress, beside
//! the same valid traffic without them, measured in the same run. The attack is what the public
//! endpoint must shrug off: invalid signatures at a fixed rate (a signature header of thousands of
//! empty entries, a wrong signature over the largest body, a stale timestamp) and slow
//! connections that trickle a request head and never finish it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use integration_tests::webhook::{SECRET, Webhook};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::e2e::{Starts, commit_latencies, offer, start_service};
use crate::stack::{Build, wait_for_workspaces};
use crate::stats::{Latency, target_line};

/// Targets: the attacked valid rate at least this share of the unattacked one...
const RATE_TARGET: f64 = 0.8;
/// ...and the attacked p99 at most this.
const P99_TARGET_MS: f64 = 100.0;

/// Valid webhooks before each measurement, left out of the figures.
const WARM_UP_EVENTS: usize = 300;
/// How long the attack runs before the valid traffic starts, so it is measured at full strength.
const ATTACK_HEAD_START: Duration = Duration::from_secs(2);
/// A slow connection sends one more header line this often.
const TRICKLE_EVERY: Duration = Duration::from_secs(1);

/// What the attackers do.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Attack {
    /// Requests with invalid signatures per second, the three kinds in turn.
    pub invalid_per_s: f64,
    /// Connections kept open trickling an unfinished request head.
    pub slow_connections: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Hostile {
    pub events: usize,
    pub offered_per_s: f64,
    pub attack: Attack,
    pub baseline: Run,
    pub attacked: Run,
    /// Attacked valid rate over the baseline's.
    pub rate_ratio: f64,
    /// Invalid requests sent, by the status they got (0: no answer, the connection failed).
    pub attack_answers: BTreeMap<u16, usize>,
    /// Times a slow connection was closed by the server and opened again.
    pub slow_reconnects: usize,
    pub rate_holds: bool,
    pub p99_holds: bool,
}

/// The valid traffic's figures in one run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Run {
    /// Committed valid events per second, first POST to last commit.
    pub valid_per_s: f64,
    pub latency: Latency,
}

/// The baseline, then the same valid traffic under attack, each on a fresh stack.
pub async fn measure(
    events: usize,
    per_second: f64,
    attack: Attack,
    extra: &[(&'static str, String)],
) -> anyhow::Result<Hostile> {
    eprintln!("hostile: {events} valid webhooks at {per_second:.0}/s, no attack");
    let (baseline, _) = valid_run(events, per_second, None, extra).await?;
    eprintln!(
        "hostile: the same under attack ({:.0} invalid/s, {} slow connections)",
        attack.invalid_per_s, attack.slow_connections
    );
    let (attacked, tally) = valid_run(events, per_second, Some(attack), extra).await?;
    let rate_ratio = attacked.valid_per_s / baseline.valid_per_s;
    Ok(Hostile {
        events,
        offered_per_s: per_second,
        attack,
        baseline,
        attacked,
        rate_ratio,
        attack_answers: tally.answers(),
        slow_reconnects: tally.reconnects.load(Ordering::Relaxed),
        rate_holds: rate_ratio >= RATE_TARGET,
        p99_holds: attacked.latency.p99_ms <= P99_TARGET_MS,
    })
}

/// One fresh service, warmed up, then `events` valid webhooks at `per_second`, with the attack
/// running beside them if there is one.
async fn valid_run(
    events: usize,
    per_second: f64,
    attack: Option<Attack>,
    extra: &[(&'static str, String)],
) -> anyhow::Result<(Run, Arc<Tally>)> {
    let (stack, service) = start_service(&Build::working_tree()?, extra).await?;
    let client = reqwest::Client::new();
    let addr = service.ingress_addr;
    offer(&client, addr, "warm", WARM_UP_EVENTS, per_second, None).await?;
    wait_for_workspaces(&stack, WARM_UP_EVENTS as i64, Duration::from_secs(600)).await?;

    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let mut attackers = JoinSet::new();
    if let Some(attack) = attack {
        attackers.spawn(invalid_requests(
            addr,
            attack.invalid_per_s,
            tally.clone(),
            stop.clone(),
        ));
        for _ in 0..attack.slow_connections {
            attackers.spawn(slow_connection(addr, tally.clone(), stop.clone()));
        }
        tokio::time::sleep(ATTACK_HEAD_START).await;
    }
    let starts: Starts = Arc::default();
    let first = chrono::Utc::now();
    let sent = offer(&client, addr, "valid", events, per_second, Some(&starts)).await;
    let total = (WARM_UP_EVENTS + events) as i64;
    let committed = match sent {
        Ok(()) => wait_for_workspaces(&stack, total, Duration::from_secs(600)).await,
        Err(err) => Err(err),
    };
    stop.cancel();
    while attackers.join_next().await.is_some() {}
    committed?;
    let latencies = commit_latencies(&stack, &starts).await?;
    let last = latencies
        .iter()
        .map(|(start, ms)| start.timestamp_micros() as f64 / 1000.0 + ms)
        .fold(f64::MIN, f64::max);
    let span_ms = last - first.timestamp_micros() as f64 / 1000.0;
    let mut samples: Vec<f64> = latencies.into_iter().map(|(_, ms)| ms).collect();
    let run = Run {
        valid_per_s: events as f64 / (span_ms / 1000.0),
        latency: Latency::of(&mut samples),
    };
    Ok((run, tally))
}

/// What the attackers saw.
#[derive(Default)]
struct Tally {
    answers: Mutex<BTreeMap<u16, usize>>,
    reconnects: AtomicUsize,
}

impl Tally {
    fn answered(&self, status: u16) {
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        *answers.entry(status).or_default() += 1;
    }

    fn answers(&self) -> BTreeMap<u16, usize> {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Invalid requests at `per_second` until `stop`, each on its own task (an attacker does not
/// wait for answers).
async fn invalid_requests(
    addr: std::net::SocketAddr,
    per_second: f64,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let client = reqwest::Client::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    let mut sends = JoinSet::new();
    for kind in (0..3).cycle() {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => break,
        }
        let (client, tally) = (client.clone(), tally.clone());
        sends.spawn(async move {
            // 0: no answer, the connection failed.
            let status: u16 = send(&client, addr, invalid_webhook(kind))
                .await
                .unwrap_or_default();
            tally.answered(status);
        });
        while sends.try_join_next().is_some() {}
    }
    while sends.join_next().await.is_some() {}
}

/// One invalid request of `kind`: 0, a signature header of thousands of empty entries (as
/// large as the default head limit allows); 1, a wrong signature over a 256 KiB body; 2, a
/// correct signature five minutes and more too old.
fn invalid_webhook(kind: usize) -> Webhook {
    let body = vec![b'a'; 256 * 1024];
    let mut webhook = Webhook::signed(SECRET, &body);
    match kind {
        0 => webhook.signature = ["v1,"; 3_500].join(" "),
        1 => webhook.signature = format!("v1,{}", "A".repeat(43) + "="),
        _ => webhook = Webhook::signed_at(SECRET, &body, "msg_stale", webhook.timestamp - 400),
    }
    webhook
}

/// POSTs `webhook` and returns the status it got.
async fn send(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    webhook: Webhook,
) -> anyhow::Result<u16> {
    let response = client
        .post(format!("http://{addr}/webhooks/clerk"))
        .header("svix-id", &webhook.id)
        .header("svix-timestamp", webhook.timestamp.to_string())
        .header("svix-signature", &webhook.signature)
        .body(webhook.body)
        .send()
        .await
        .context("an invalid request")?;
    Ok(response.status().as_u16())
}

/// A connection that sends the start of a request head, then one more header line a second,
/// never finishing; opened again whenever the server closes it.
async fn slow_connection(addr: std::net::SocketAddr, tally: Arc<Tally>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let trickled = tokio::select! {
            trickled = trickle(addr) => trickled,
            () = stop.cancelled() => return,
        };
        if trickled.is_err() {
            tally.reconnects.fetch_add(1, Ordering::Relaxed);
            // A refused connection must not become a busy loop.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Returns when the server closes the connection (an error to write).
async fn trickle(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"POST /webhooks/clerk HTTP/1.1\r\nHost: bench\r\n")
        .await?;
    for line in 0u64.. {
        tokio::time::sleep(TRICKLE_EVERY).await;
        stream
            .write_all(format!("x-slow-{line}: 1\r\n").as_bytes())
            .await?;
    }
    Ok(())
}

/// The phase's lines of the table.
pub fn table(hostile: &Hostile) -> String {
    let run = |name: &str, run: &Run| {
        format!(
            "{name:<10} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>10.1}\n",
            run.valid_per_s,
            run.latency.p50_ms,
            run.latency.p95_ms,
            run.latency.p99_ms,
            run.latency.max_ms
        )
    };
    let mut out = format!(
        "\nhostile: {} valid webhooks at {:.0}/s; attack: {:.0} invalid requests/s, {} slow connections\n",
        hostile.events,
        hostile.offered_per_s,
        hostile.attack.invalid_per_s,
        hostile.attack.slow_connections
    );
    out += &run("valid", &hostile.baseline);
    out += &run("attacked", &hostile.attacked);
    out += &format!(
        "attacked/valid rate = {:.2}; invalid requests answered {:?}; slow connections closed by the server {} times\n",
        hostile.rate_ratio, hostile.attack_answers, hostile.slow_reconnects
    );
    out += &target_line(
        &format!("attacked rate >= {RATE_TARGET} of the unattacked"),
        hostile.rate_holds,
    );
    out += &target_line(
        &format!("attacked p99 <= {P99_TARGET_MS} ms"),
        hostile.p99_holds,
    );
    out
}
