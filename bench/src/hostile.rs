//! `hostile`: valid signed webhooks at a steady rate while attackers hit the same ingress, beside
//! the same valid traffic without them, measured in the same run. Each phase is one attack on a
//! fresh stack, so one cannot tire the service for the next:
//! - `invalid+slow`: invalid signatures at a fixed rate (a signature header of thousands of
//!   empty entries, a wrong signature over the largest body, a stale timestamp) and slow
//!   connections that trickle a request head and never finish it;
//! - `head-only`: 256 connections (the default `INGRESS_MAX_CONCURRENCY`) each sending forged
//!   Svix headers declaring a body that never comes, opened again as soon as the server closes
//!   them (every 5 s, the body timeout);
//! - `never-reading`: as many clients as the connection limit (1,024) pipelining requests and
//!   never reading an answer, opened again when closed;
//! - `head-less`: the connection limit's worth of sockets that never send a byte, then ~200
//!   more a second.
//!
//! For each: the valid rate against the baseline's, the valid p99, what the attackers got, and
//! the worker's peak RSS.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use integration_tests::raw_http::{NeverReading, forged_head};
use integration_tests::webhook::{SECRET, Webhook};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::e2e::{Starts, commit_latencies, offer, start_service};
use crate::stack::{Build, peak_rss_mib, wait_for_workspaces};
use crate::stats::{Latency, target_line};

/// Targets in every phase: the attacked valid rate at least this share of the unattacked one...
const RATE_TARGET: f64 = 0.95;
/// ...and the attacked p99 at most this.
const P99_TARGET_MS: f64 = 1_000.0;

/// Valid webhooks before each measurement, left out of the figures.
const WARM_UP_EVENTS: usize = 300;
/// How long the attack runs before the valid traffic starts, so it is measured at full strength.
const ATTACK_HEAD_START: Duration = Duration::from_secs(2);
/// An attacking connection the server closed is opened again after this long: these attacks
/// try to hold slots, and on a machine that runs the attackers beside the service, a
/// reconnection storm would measure who gets the CPU (a flood of requests is `invalid+slow`).
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// A slow connection sends one more header line this often.
const TRICKLE_EVERY: Duration = Duration::from_secs(1);
/// The defaults the attacks are sized to: `INGRESS_MAX_CONCURRENCY` and
/// `INGRESS_MAX_CONNECTIONS`.
const MAX_CONCURRENCY: usize = 256;
const MAX_CONNECTIONS: usize = 1024;
/// Head-less sockets opened per second once the limit's worth is open.
const HEAD_LESS_PER_S: f64 = 200.0;

/// What the attackers do in one phase.
#[derive(Clone, Copy, Debug, Serialize)]
pub enum Attack {
    InvalidAndSlow {
        /// Requests with invalid signatures per second, the three kinds in turn.
        invalid_per_s: f64,
        /// Connections kept open trickling an unfinished request head.
        slow_connections: usize,
    },
    HeadOnly {
        connections: usize,
    },
    NeverReading {
        connections: usize,
    },
    HeadLess {
        held: usize,
        per_s: f64,
    },
}

impl Attack {
    /// The four phases, the first with the given invalid rate and slow connections.
    pub fn all(invalid_per_s: f64, slow_connections: usize) -> Vec<Self> {
        vec![
            Self::InvalidAndSlow {
                invalid_per_s,
                slow_connections,
            },
            Self::HeadOnly {
                connections: MAX_CONCURRENCY,
            },
            Self::NeverReading {
                connections: MAX_CONNECTIONS,
            },
            Self::HeadLess {
                held: MAX_CONNECTIONS,
                per_s: HEAD_LESS_PER_S,
            },
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            Self::InvalidAndSlow { .. } => "invalid+slow",
            Self::HeadOnly { .. } => "head-only",
            Self::NeverReading { .. } => "never-reading",
            Self::HeadLess { .. } => "head-less",
        }
    }

    fn describe(&self) -> String {
        match *self {
            Self::InvalidAndSlow {
                invalid_per_s,
                slow_connections,
            } => format!("{invalid_per_s:.0} invalid requests/s, {slow_connections} slow heads"),
            Self::HeadOnly { connections } => {
                format!("{connections} forged heads with no body, renewed when closed")
            }
            Self::NeverReading { connections } => {
                format!("{connections} clients pipelining and never reading")
            }
            Self::HeadLess { held, per_s } => {
                format!("{held} head-less sockets, then {per_s:.0} more a second")
            }
        }
    }

    /// Starts this attack's tasks on `attackers`.
    fn launch(
        self,
        addr: SocketAddr,
        tally: &Arc<Tally>,
        stop: &CancellationToken,
        attackers: &mut JoinSet<()>,
    ) {
        let (tally, stop) = (tally.clone(), stop.clone());
        match self {
            Self::InvalidAndSlow {
                invalid_per_s,
                slow_connections,
            } => {
                attackers.spawn(invalid_requests(
                    addr,
                    invalid_per_s,
                    tally.clone(),
                    stop.clone(),
                ));
                for _ in 0..slow_connections {
                    attackers.spawn(reopened(addr, tally.clone(), stop.clone(), trickle));
                }
            }
            Self::HeadOnly { connections } => {
                for _ in 0..connections {
                    attackers.spawn(reopened(addr, tally.clone(), stop.clone(), head_only));
                }
            }
            Self::NeverReading { connections } => {
                for _ in 0..connections {
                    attackers.spawn(reopened(addr, tally.clone(), stop.clone(), never_reading));
                }
            }
            Self::HeadLess { held, per_s } => {
                attackers.spawn(head_less(addr, held, per_s, tally, stop));
            }
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Hostile {
    pub events: usize,
    pub offered_per_s: f64,
    pub baseline: Run,
    pub phases: Vec<Phase>,
}

/// One attack's figures beside the baseline.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    pub attack: Attack,
    pub run: Run,
    /// Attacked valid rate over the baseline's.
    pub rate_ratio: f64,
    /// Attack requests sent, by the status they got (0: no answer, the connection failed).
    pub attack_answers: BTreeMap<u16, usize>,
    /// Times an attacking connection was closed by the server and opened again.
    pub reconnects: usize,
    pub rate_holds: bool,
    pub p99_holds: bool,
}

/// The valid traffic's figures in one run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Run {
    /// Committed valid events per second, first POST to last commit.
    pub valid_per_s: f64,
    pub latency: Latency,
    /// The service's peak resident memory (VmHWM) at the end of the run.
    pub peak_rss_mib: Option<f64>,
}

/// The baseline, then the same valid traffic under each attack, each on a fresh stack.
pub async fn measure(
    events: usize,
    per_second: f64,
    attacks: &[Attack],
    extra: &[(&'static str, String)],
) -> anyhow::Result<Hostile> {
    eprintln!("hostile: {events} valid webhooks at {per_second:.0}/s, no attack");
    let (baseline, _) = valid_run(events, per_second, None, extra).await?;
    let mut phases = Vec::new();
    for &attack in attacks {
        eprintln!("hostile: the same under attack: {}", attack.describe());
        let (run, tally) = valid_run(events, per_second, Some(attack), extra).await?;
        let rate_ratio = run.valid_per_s / baseline.valid_per_s;
        phases.push(Phase {
            attack,
            run,
            rate_ratio,
            attack_answers: tally.answers(),
            reconnects: tally.reconnects.load(Ordering::Relaxed),
            rate_holds: rate_ratio >= RATE_TARGET,
            p99_holds: run.latency.p99_ms <= P99_TARGET_MS,
        });
    }
    Ok(Hostile {
        events,
        offered_per_s: per_second,
        baseline,
        phases,
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
        attack.launch(addr, &tally, &stop, &mut attackers);
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
    let peak_rss_mib = peak_rss_mib(service.pid());
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
        peak_rss_mib,
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

/// Runs `attack` on a new connection until `stop`, opening another [`REOPEN_AFTER`] after the
/// server closes one (each counted).
async fn reopened<F, Fut>(addr: SocketAddr, tally: Arc<Tally>, stop: CancellationToken, attack: F)
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = std::io::Result<()>>,
{
    while !stop.is_cancelled() {
        // Ok or an error to write: either way the server closed it.
        tokio::select! {
            _ = attack(addr) => {}
            () = stop.cancelled() => return,
        }
        tally.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(REOPEN_AFTER).await;
    }
}

/// Sends the start of a request head, then one more header line a second, never finishing;
/// returns when the server closes the connection (an error to write).
async fn trickle(addr: SocketAddr) -> std::io::Result<()> {
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

/// Sends forged Svix headers declaring a body and no body; returns when the server closes.
async fn head_only(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(forged_head(1_000).as_bytes()).await?;
    until_closed(&mut stream).await
}

/// Pipelines requests and never reads; returns when the server closes the connection.
async fn never_reading(addr: SocketAddr) -> std::io::Result<()> {
    let client = NeverReading::connect(addr).await?;
    while !client.closed() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Reads (and drops) whatever comes until the server closes the connection.
async fn until_closed(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buffer = [0u8; 1024];
    while stream.read(&mut buffer).await? > 0 {}
    Ok(())
}

/// `held` sockets that never send a byte, then `per_s` more a second until `stop`; each waits
/// for the server to close it.
async fn head_less(
    addr: SocketAddr,
    held: usize,
    per_s: f64,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let mut sockets = JoinSet::new();
    let open = |sockets: &mut JoinSet<()>| {
        let tally = tally.clone();
        sockets.spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                tally.answered(0);
                return;
            };
            if until_closed(&mut stream).await.is_ok() {
                tally.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        });
    };
    for _ in 0..held {
        open(&mut sockets);
    }
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s));
    loop {
        tokio::select! {
            _ = ticks.tick() => open(&mut sockets),
            () = stop.cancelled() => break,
        }
        while sockets.try_join_next().is_some() {}
    }
    sockets.abort_all();
    while sockets.join_next().await.is_some() {}
}

/// The phases' lines of the table.
pub fn table(hostile: &Hostile) -> String {
    let run = |name: &str, run: &Run, ratio: Option<f64>| {
        let ratio = ratio.map_or_else(|| "1.00".to_owned(), |r| format!("{r:.2}"));
        let rss = run
            .peak_rss_mib
            .map_or_else(|| "-".to_owned(), |mib| format!("{mib:.0}"));
        format!(
            "{name:<14} {:>10.0} {ratio:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {rss:>9}\n",
            run.valid_per_s,
            run.latency.p50_ms,
            run.latency.p95_ms,
            run.latency.p99_ms,
            run.latency.max_ms,
        )
    };
    let mut out = format!(
        "\nhostile: {} valid webhooks at {:.0}/s in each phase, each on a fresh stack\n{:<14} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        hostile.events,
        hostile.offered_per_s,
        "phase",
        "valid/s",
        "ratio",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "peak MiB"
    );
    out += &run("none", &hostile.baseline, None);
    for phase in &hostile.phases {
        out += &run(phase.attack.name(), &phase.run, Some(phase.rate_ratio));
    }
    for phase in &hostile.phases {
        out += &format!(
            "{}: {}; attack answers {:?}; attacking connections closed by the server {} times\n",
            phase.attack.name(),
            phase.attack.describe(),
            phase.attack_answers,
            phase.reconnects
        );
    }
    for phase in &hostile.phases {
        out += &target_line(
            &format!(
                "{}: valid rate >= {RATE_TARGET} of the unattacked",
                phase.attack.name()
            ),
            phase.rate_holds,
        );
        out += &target_line(
            &format!("{}: valid p99 <= {P99_TARGET_MS} ms", phase.attack.name()),
            phase.p99_holds,
        );
    }
    out
}
