//! `soak`: signed webhooks through `worker run` at a steady rate for minutes, the worker's
//! resident memory sampled against the events sent so far. Memory that grows with events is a
//! leak too slow for the short phases to show. Nothing scrapes `/metrics` unless asked: a scrape
//! is what drains the metrics recorder, and a worker nobody scrapes must stay flat too.
//!
//! With `--freeze-every`, the worker is also stopped (SIGSTOP) for `--freeze-for` now and then, as
//! a stalled host would be: webhooks pile up on new connections, and the run shows whether the
//! memory that backlog took comes back, and whether each backlog adds to the last.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use chrono::Utc;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use integration_tests::process::send_signal;

use crate::e2e::{Starts, commit_latencies, offer, start_service};
use crate::stack::{Build, rss_bytes, wait_for_workspaces};
use crate::stats::{Latency, target_line};

/// The offered rate when `--rate` is not given: about a sixth of `e2e` on a 2-core machine, a
/// steady load the worker keeps up with rather than a saturating one.
pub const DEFAULT_RATE: f64 = 1000.0;

/// Targets: RSS slope under this many bytes per event...
const SLOPE_TARGET_BYTES_PER_EVENT: f64 = 1.0;
/// ...and the last minute's p99 within this factor of the first minute's.
const P99_GROWTH_LIMIT: f64 = 2.0;

/// How long a commit may lag its POST at the end of a run before the run is an error.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(600);

/// What the soak is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub minutes: u64,
    pub per_second: f64,
    pub warm_up: Duration,
    pub rss_every: Duration,
    pub scrape_every: Option<Duration>,
    pub freezes: Option<Freezes>,
}

/// The worker frozen for `length` every `every` of the measured run (none in its last minute,
/// whose p99 the target compares with the first).
#[derive(Clone, Copy, Debug)]
pub struct Freezes {
    pub every: Duration,
    pub length: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct Soak {
    pub minutes: u64,
    pub offered_per_s: f64,
    /// What the bench actually sent: measured events over the time sending them took.
    pub sent_per_s: f64,
    pub warm_up_s: f64,
    pub rss_interval_s: f64,
    /// `None`: nothing scraped `/metrics`.
    pub scrape_interval_s: Option<f64>,
    /// Successful scrapes of `/metrics`, the warm-up's included.
    pub scrapes: usize,
    /// Measured events (the warm-up's left out).
    pub events: usize,
    pub rss_start_mib: f64,
    pub rss_end_mib: f64,
    /// Least-squares slope of RSS on events sent; `None` with fewer than two samples.
    pub rss_bytes_per_event: Option<f64>,
    /// That slope at the offered rate.
    pub rss_mib_per_hour: Option<f64>,
    /// POST-to-commit latency by the minute its POST started in.
    pub per_minute: Vec<Minute>,
    pub slope_holds: bool,
    pub p99_holds: bool,
    /// Seconds into the measured run at which each freeze began.
    pub freezes_at_s: Vec<f64>,
    pub freeze_length_s: Option<f64>,
    pub rss_samples: Vec<RssSample>,
}

/// The worker's RSS at one moment, beside how many measured events had been sent by then.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RssSample {
    pub seconds: f64,
    pub events: usize,
    pub rss_bytes: u64,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Minute {
    /// From 1.
    pub minute: usize,
    pub events: usize,
    #[serde(flatten)]
    pub latency: Latency,
}

/// Runs the soak on a fresh stack: warm-up, then `minutes` at the rate, then the figures.
pub async fn measure(settings: Settings, extra: &[(&'static str, String)]) -> anyhow::Result<Soak> {
    if !(settings.per_second > 0.0 && settings.per_second.is_finite()) {
        bail!("the rate must be positive, not {}", settings.per_second);
    }
    let (stack, service) = start_service(&Build::working_tree()?, extra).await?;
    let scraper = settings
        .scrape_every
        .map(|every| stoppable(|stop| scrape(service.ops_addr(), every, stop)));
    let client = reqwest::Client::new();
    let addr = service.ingress_addr;

    let warm_up = (settings.warm_up.as_secs_f64() * settings.per_second).round() as usize;
    eprintln!("soak: warm-up, {warm_up} webhooks, left out of the figures");
    offer(&client, addr, "warm", warm_up, settings.per_second, None).await?;
    wait_for_workspaces(&stack, warm_up as i64, COMMIT_TIMEOUT).await?;

    let events = (settings.minutes as f64 * 60.0 * settings.per_second).round() as usize;
    eprintln!("soak: {events} webhooks over {} min", settings.minutes);
    let starts: Starts = Starts::default();
    let (pid, sampled, began) = (service.pid(), starts.clone(), Instant::now());
    let sampler = stoppable(|stop| sample_rss(pid, sampled, began, settings.rss_every, stop));
    let measured = Duration::from_secs(settings.minutes * 60);
    let freezer = settings
        .freezes
        .map(|freezes| stoppable(|stop| freeze(pid, freezes, began, measured, stop)));
    let first = Utc::now();
    offer(
        &client,
        addr,
        "soak",
        events,
        settings.per_second,
        Some(&starts),
    )
    .await?;
    let sent_in = (Utc::now() - first).as_seconds_f64();
    wait_for_workspaces(&stack, (warm_up + events) as i64, COMMIT_TIMEOUT).await?;
    let rss_samples = stop(sampler).await?;
    let freezes_at = match freezer {
        Some(freezer) => stop(freezer).await??,
        None => Vec::new(),
    };
    let scrapes = match scraper {
        Some(scraper) => stop(scraper).await?,
        None => 0,
    };

    let offsets: Vec<(f64, f64)> = commit_latencies(&stack, &starts)
        .await?
        .into_iter()
        .map(|(start, ms)| ((start - first).as_seconds_f64(), ms))
        .collect();
    let mut soak = figures(settings, events, sent_in, scrapes, rss_samples, &offsets)?;
    soak.freezes_at_s = freezes_at;
    Ok(soak)
}

/// The report from what the run gathered; `offsets` are (seconds from the first POST to this
/// one's start, its POST-to-commit milliseconds).
fn figures(
    settings: Settings,
    events: usize,
    sent_in: f64,
    scrapes: usize,
    rss_samples: Vec<RssSample>,
    offsets: &[(f64, f64)],
) -> anyhow::Result<Soak> {
    let mib = |sample: Option<&RssSample>| {
        sample
            .map(|s| s.rss_bytes as f64 / MIB)
            .ok_or_else(|| anyhow!("no RSS sample: did the worker exit?"))
    };
    let points: Vec<(f64, f64)> = rss_samples
        .iter()
        .map(|s| (s.events as f64, s.rss_bytes as f64))
        .collect();
    let slope = least_squares_slope(&points);
    let per_minute = per_minute(offsets, settings.minutes as usize);
    Ok(Soak {
        minutes: settings.minutes,
        offered_per_s: settings.per_second,
        sent_per_s: events as f64 / sent_in.max(1e-3),
        warm_up_s: settings.warm_up.as_secs_f64(),
        rss_interval_s: settings.rss_every.as_secs_f64(),
        scrape_interval_s: settings.scrape_every.map(|every| every.as_secs_f64()),
        scrapes,
        events,
        rss_start_mib: mib(rss_samples.first())?,
        rss_end_mib: mib(rss_samples.last())?,
        rss_bytes_per_event: slope,
        rss_mib_per_hour: slope.map(|s| s * settings.per_second * 3600.0 / MIB),
        slope_holds: slope.is_some_and(|s| s < SLOPE_TARGET_BYTES_PER_EVENT),
        p99_holds: p99_holds(&per_minute),
        per_minute,
        freezes_at_s: Vec::new(),
        freeze_length_s: settings.freezes.map(|f| f.length.as_secs_f64()),
        rss_samples,
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// A background task and the way to tell it to finish.
type Stoppable<T> = (oneshot::Sender<()>, JoinHandle<T>);

/// Spawns `task`, handing it the receiving end of its stop signal.
fn stoppable<T, F>(task: impl FnOnce(oneshot::Receiver<()>) -> F) -> Stoppable<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let (tell, stop) = oneshot::channel();
    (tell, tokio::spawn(task(stop)))
}

/// Tells the task to finish and waits for what it returns.
async fn stop<T>((tell, task): Stoppable<T>) -> anyhow::Result<T> {
    // An error only if the task already ended, which the join reports.
    let _ = tell.send(());
    task.await.context("a background task of the soak")
}

/// Samples the worker's RSS every `every`, and once more when stopped, beside the events sent
/// so far (the POSTs in `starts`). Prints one line a minute so a long run shows it is alive.
async fn sample_rss(
    pid: u32,
    starts: Starts,
    started: Instant,
    every: Duration,
    mut stop: oneshot::Receiver<()>,
) -> Vec<RssSample> {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut samples, mut next_report) = (Vec::new(), 60.0);
    loop {
        let stopped = tokio::select! {
            _ = &mut stop => true,
            _ = ticks.tick() => false,
        };
        let events = starts.lock().await.len();
        let seconds = started.elapsed().as_secs_f64();
        if let Some(rss_bytes) = rss_bytes(pid) {
            samples.push(RssSample {
                seconds,
                events,
                rss_bytes,
            });
            if seconds >= next_report {
                let mib = rss_bytes as f64 / MIB;
                eprintln!("soak: {seconds:.0} s, {events} webhooks, RSS {mib:.1} MiB");
                next_report += 60.0;
            }
        }
        if stopped {
            return samples;
        }
    }
}

/// Freezes the worker as [`Freezes`] says, counting from `started`, until stopped or until the
/// next freeze would fall in the last minute of `measured`; returns when each freeze began.
async fn freeze(
    pid: u32,
    freezes: Freezes,
    started: Instant,
    measured: Duration,
    mut stop: oneshot::Receiver<()>,
) -> anyhow::Result<Vec<f64>> {
    let mut began = Vec::new();
    let last_start = measured.saturating_sub(Duration::from_secs(60) + freezes.length);
    let mut next = freezes.every;
    while next <= last_start {
        tokio::select! {
            _ = &mut stop => return Ok(began),
            () = tokio::time::sleep_until((started + next).into()) => {}
        }
        eprintln!("soak: freezing the worker for {:?}", freezes.length);
        send_signal(pid, "STOP").map_err(anyhow::Error::msg)?;
        tokio::time::sleep(freezes.length).await;
        send_signal(pid, "CONT").map_err(anyhow::Error::msg)?;
        began.push(next.as_secs_f64());
        next += freezes.every;
    }
    let _ = stop.await;
    Ok(began)
}

/// GETs `/metrics` every `every` until stopped, as Prometheus would; the successful scrapes.
async fn scrape(addr: SocketAddr, every: Duration, mut stop: oneshot::Receiver<()>) -> usize {
    let client = reqwest::Client::new();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut scrapes = 0;
    loop {
        tokio::select! {
            _ = &mut stop => return scrapes,
            _ = ticks.tick() => {}
        }
        match scrape_once(&client, addr).await {
            Ok(()) => scrapes += 1,
            Err(err) => eprintln!("soak: scraping /metrics: {err:#}"),
        }
    }
}

/// One scrape, the whole page read (rendering it is what drains the recorder).
async fn scrape_once(client: &reqwest::Client, addr: SocketAddr) -> anyhow::Result<()> {
    let response = client
        .get(format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .error_for_status()?;
    response.bytes().await?;
    Ok(())
}

/// The least-squares slope of y on x; `None` without two distinct x.
pub fn least_squares_slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|(x, _)| x).sum::<f64>() / n;
    let mean_y = points.iter().map(|(_, y)| y).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    let sxy: f64 = points
        .iter()
        .map(|(x, y)| (x - mean_x) * (y - mean_y))
        .sum();
    (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
}

/// Latency percentiles by the minute each POST started in (`offsets` as in [`figures`]),
/// `minutes` of them; a POST sent late, past the last minute, counts in the last.
pub fn per_minute(offsets: &[(f64, f64)], minutes: usize) -> Vec<Minute> {
    let mut buckets = vec![Vec::new(); minutes.max(1)];
    let last = buckets.len() - 1;
    for &(seconds, ms) in offsets {
        let minute = ((seconds.max(0.0) / 60.0) as usize).min(last);
        if let Some(bucket) = buckets.get_mut(minute) {
            bucket.push(ms);
        }
    }
    buckets
        .into_iter()
        .enumerate()
        .map(|(i, mut ms)| Minute {
            minute: i + 1,
            events: ms.len(),
            latency: Latency::of(&mut ms),
        })
        .collect()
}

/// Whether the last minute's p99 is within [`P99_GROWTH_LIMIT`] of the first minute's.
fn p99_holds(minutes: &[Minute]) -> bool {
    match (minutes.first(), minutes.last()) {
        (Some(first), Some(last)) => last.latency.p99_ms <= P99_GROWTH_LIMIT * first.latency.p99_ms,
        _ => false,
    }
}

/// A duration as humantime reads it (`15s`, `500ms`, `2m`, `1h 30m`), or bare whole seconds
/// (`30`), as the bench has always taken.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    match text.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text).map_err(|err| format!("{text:?}: {err}")),
    }
}

/// A [`parse_duration`] that is not zero: a period between samples or scrapes.
pub fn parse_period(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("{text:?}: a period must be longer than zero")),
        period => Ok(period),
    }
}

/// The soak's lines of the printed report.
pub fn table(soak: &Soak) -> String {
    let scraping = soak
        .scrape_interval_s
        .map_or("nothing scraped /metrics".to_owned(), |s| {
            format!("/metrics scraped every {s} s ({} scrapes)", soak.scrapes)
        });
    let mut out = format!(
        "soak: {} webhooks over {} min at {:.0}/s offered ({:.0}/s sent), after {} s warm-up; {scraping}\n",
        soak.events, soak.minutes, soak.offered_per_s, soak.sent_per_s, soak.warm_up_s
    );
    out += &format!(
        "RSS: {:.1} MiB at the start, {:.1} MiB at the end ({} samples, every {} s)\n",
        soak.rss_start_mib,
        soak.rss_end_mib,
        soak.rss_samples.len(),
        soak.rss_interval_s
    );
    out += &match (soak.rss_bytes_per_event, soak.rss_mib_per_hour) {
        (Some(slope), Some(hourly)) => format!(
            "RSS slope: {slope:.2} bytes/event = {hourly:.1} MiB/hour at {:.0}/s\n",
            soak.offered_per_s
        ),
        _ => "RSS slope: - (fewer than two samples)\n".to_owned(),
    };
    out += &freeze_lines(soak);
    out += &format!(
        "\n{:<8} {:>10} {:>10} {:>10}\n",
        "minute", "events", "p50 ms", "p99 ms"
    );
    for m in &soak.per_minute {
        out += &format!(
            "{:<8} {:>10} {:>10.1} {:>10.1}\n",
            m.minute, m.events, m.latency.p50_ms, m.latency.p99_ms
        );
    }
    out += "\n";
    out += &target_line(
        &format!("RSS slope < {SLOPE_TARGET_BYTES_PER_EVENT} byte/event"),
        soak.slope_holds,
    );
    out += &target_line(
        &format!("last minute's p99 <= {P99_GROWTH_LIMIT}x the first's"),
        soak.p99_holds,
    );
    out
}

/// One line a freeze: RSS just before it, the highest until the next, and the last before the
/// next (or the end): whether the memory a backlog took came back, and whether backlogs add up.
fn freeze_lines(soak: &Soak) -> String {
    let mib = |s: &RssSample| s.rss_bytes as f64 / MIB;
    let mut out = String::new();
    for (i, &at) in soak.freezes_at_s.iter().enumerate() {
        let until = soak
            .freezes_at_s
            .get(i + 1)
            .copied()
            .unwrap_or(f64::INFINITY);
        let before = soak.rss_samples.iter().rfind(|s| s.seconds < at);
        let after: Vec<&RssSample> = soak
            .rss_samples
            .iter()
            .filter(|s| s.seconds >= at && s.seconds < until)
            .collect();
        let peak = after.iter().map(|s| mib(s)).fold(f64::NAN, f64::max);
        if let (Some(before), Some(settled)) = (before, after.last()) {
            out += &format!(
                "freeze at {at:.0} s ({:.0} s long): RSS {:.1} MiB before, {peak:.1} MiB at most after, {:.1} MiB at {:.0} s\n",
                soak.freeze_length_s.unwrap_or_default(),
                mib(before),
                mib(settled),
                settled.seconds
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_is_its_gradient() {
        let points: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i) * 1000.0, 5e6 + 36.0 * f64::from(i) * 1000.0))
            .collect();
        let slope = least_squares_slope(&points).unwrap();
        assert!((slope - 36.0).abs() < 1e-9, "{slope}");
    }

    #[test]
    fn slope_of_noise_around_a_flat_line_is_near_zero() {
        let points = [(0.0, 10.0), (1.0, 12.0), (2.0, 8.0), (3.0, 10.0)];
        let slope = least_squares_slope(&points).unwrap();
        assert!(slope.abs() < 1.0, "{slope}");
    }

    #[test]
    fn no_slope_without_two_distinct_x() {
        assert_eq!(least_squares_slope(&[]), None);
        assert_eq!(least_squares_slope(&[(1.0, 2.0)]), None);
        assert_eq!(least_squares_slope(&[(1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn latencies_fall_in_the_minute_their_post_started() {
        let offsets = [(0.0, 1.0), (59.9, 3.0), (60.0, 10.0), (150.0, 20.0)];
        let minutes = per_minute(&offsets, 3);
        let counts: Vec<usize> = minutes.iter().map(|m| m.events).collect();
        assert_eq!(counts, [2, 1, 1]);
        assert_eq!(minutes[0].latency.p99_ms, 3.0);
        assert_eq!(minutes[1].latency.p50_ms, 10.0);
        assert_eq!(minutes[2].minute, 3);
    }

    #[test]
    fn a_late_post_counts_in_the_last_minute() {
        let minutes = per_minute(&[(10.0, 1.0), (61.0, 2.0), (125.0, 3.0)], 2);
        let counts: Vec<usize> = minutes.iter().map(|m| m.events).collect();
        assert_eq!(counts, [1, 2]);
    }

    #[test]
    fn p99_target_compares_the_last_minute_with_the_first() {
        let minute = |p99_ms| Minute {
            minute: 1,
            events: 1,
            latency: Latency {
                p99_ms,
                ..Latency::default()
            },
        };
        assert!(p99_holds(&[minute(10.0), minute(50.0), minute(20.0)]));
        assert!(!p99_holds(&[minute(10.0), minute(20.1)]));
        assert!(!p99_holds(&[]));
    }

    #[test]
    fn each_freeze_reports_rss_before_at_most_and_before_the_next() {
        let settings = Settings {
            minutes: 5,
            per_second: 1.0,
            warm_up: Duration::ZERO,
            rss_every: Duration::from_secs(10),
            scrape_every: None,
            freezes: Some(Freezes {
                every: Duration::from_secs(60),
                length: Duration::from_secs(5),
            }),
        };
        let mib = |m: u64| m << 20;
        let samples = [
            (50.0, 30),
            (70.0, 90),
            (110.0, 33),
            (130.0, 80),
            (170.0, 34),
        ]
        .map(|(seconds, m)| RssSample {
            seconds,
            events: seconds as usize,
            rss_bytes: mib(m),
        });
        let mut soak = figures(settings, 300, 300.0, 0, samples.to_vec(), &[]).unwrap();
        soak.freezes_at_s = vec![60.0, 120.0];
        assert_eq!(
            freeze_lines(&soak),
            "freeze at 60 s (5 s long): RSS 30.0 MiB before, 90.0 MiB at most after, 33.0 MiB at 110 s\n\
             freeze at 120 s (5 s long): RSS 33.0 MiB before, 80.0 MiB at most after, 34.0 MiB at 170 s\n"
        );
    }

    #[test]
    fn durations_with_a_unit_are_humantime_ones() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("15 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_period("0s").is_err());
    }

    #[test]
    fn a_bare_number_is_seconds() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(" 30 "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_period("0").is_err());
        assert!(parse_duration("-5").is_err());
    }
}
