//! `dead-letters`: the dead-letter store, measured. Moving letters from the dead-letter queue into
//! the store (letters per second, through `worker dlq list`, which moves what waits before it
//! reads), and the queries of one listing page at 100,000 letters (p50/p99): a page of 50 newest
//! first, the counts by reason and which of the page are no longer needed, unfiltered, filtered
//! by reason, by user, and a page deep into the keyset; then the same pages as the operator
//! console serves them over HTTP (queries, template and transfer).

use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::{DateTime, Utc};
use integration_tests::process::WorkerProcess;
use serde::Serialize;
use worker::db::Pool;
use worker::dead_letter::Filter;
use worker::dead_letter::store::{self, Order};

use crate::stack::{Build, Stack};
use crate::stats::Latency;

/// Letters per listing page, as the console shows them.
const PAGE: u64 = 50;
/// Samples of each listing query.
const SAMPLES: usize = 200;
/// Letters published at once.
const PUBLISHERS: usize = 64;

#[derive(Clone, Debug, Serialize)]
pub struct DeadLetters {
    pub moved: usize,
    pub moved_per_s: f64,
    pub rows: i64,
    /// One listing page (page, counts by reason, no-longer-needed), by filter.
    pub pages: Vec<(String, Latency)>,
    /// The same pages fetched from the console, by filter.
    pub console_pages: Vec<(String, Latency)>,
}

/// Moves `letters` from the queue, then fills the store to `rows` and times listing pages.
pub async fn measure(build: &Build, letters: usize, rows: usize) -> anyhow::Result<DeadLetters> {
    let stack = build.stack().await?;
    eprintln!("dead letters: publishing {letters} to the dead-letter queue");
    publish(&stack, letters).await;
    eprintln!("dead letters: moving them into the store (worker dlq list)");
    let moving = dlq_list(build, &stack).await?;
    let nothing = dlq_list(build, &stack).await?;
    let moved = stack.db.scalar("SELECT count(*) FROM dead_letters").await;
    if moved != letters as i64 {
        bail!("{moved} of {letters} letters reached the store");
    }
    let move_time = moving.saturating_sub(nothing).max(Duration::from_millis(1));

    eprintln!("dead letters: filling the store to {rows} and timing listing pages");
    fill(&stack, rows.saturating_sub(letters)).await;
    let pool = stack.db.pool();
    let deep = deep_page(&pool).await?;
    let pages = listing_pages(deep);
    let mut query_times = Vec::new();
    for page in &pages {
        let latency = time_page(&pool, &page.filter, page.after).await?;
        query_times.push((page.name.to_owned(), latency));
    }
    eprintln!("dead letters: timing the console's pages over HTTP");
    let console_pages = time_console(&stack, &pages).await?;
    Ok(DeadLetters {
        moved: letters,
        moved_per_s: letters as f64 / move_time.as_secs_f64(),
        rows: stack.db.scalar("SELECT count(*) FROM dead_letters").await,
        pages: query_times,
        console_pages,
    })
}

/// One listing page timed: by its queries, and as the console's address that shows it.
struct ListingPage {
    name: &'static str,
    filter: Filter,
    after: Option<(DateTime<Utc>, i64)>,
    console_path: String,
}

/// The pages timed: all open letters, one reason, one user, and page 1,000 (starting `deep`).
fn listing_pages(deep: (DateTime<Utc>, i64)) -> Vec<ListingPage> {
    let page = |name, filter, after, console_path: &str| ListingPage {
        name,
        filter,
        after,
        console_path: console_path.to_owned(),
    };
    vec![
        page("open, newest first", Filter::open(), None, "/dead-letters"),
        page(
            "reason email_conflict",
            Filter {
                reason: Some("email_conflict".into()),
                ..Filter::open()
            },
            None,
            "/dead-letters?reason=email_conflict",
        ),
        page(
            "one user",
            Filter {
                user_id: Some("user_bench77777".into()),
                ..Filter::open()
            },
            None,
            "/dead-letters?user=user_bench77777",
        ),
        page(
            "page 1,000 (keyset)",
            Filter::open(),
            Some(deep),
            &format!(
                "/dead-letters?after={}.{}",
                deep.0.timestamp_micros(),
                deep.1
            ),
        ),
    ]
}

/// The console's token in the bench's worker.
const CONSOLE_TOKEN: &str = "bench-console-token";

/// `pages` as the console serves them (a worker in this process, fetched with the token as
/// `Bearer`), [`SAMPLES`] times each.
async fn time_console(
    stack: &Stack,
    pages: &[ListingPage],
) -> anyhow::Result<Vec<(String, Latency)>> {
    let (_app, base) = stack.start_with_console(&["consume"], CONSOLE_TOKEN).await;
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    for page in pages {
        let path = &page.console_path;
        let url = format!("{base}{path}");
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let started = Instant::now();
            let answer = http.get(&url).bearer_auth(CONSOLE_TOKEN).send().await?;
            let status = answer.status();
            let html = answer.text().await?;
            if !status.is_success() || !html.contains("<table>") {
                bail!("{path}: {status}: {html}");
            }
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.push((page.name.to_owned(), Latency::of(&mut samples)));
    }
    Ok(times)
}

async fn publish(stack: &Stack, letters: usize) {
    let bodies: Vec<(String, Vec<u8>)> = (0..letters)
        .map(|i| {
            let user = crate::stack::sign_up("dlq", i);
            (format!("msg_dlq{i:07}"), user.body())
        })
        .collect();
    for chunk in bodies.chunks(PUBLISHERS) {
        futures::future::join_all(chunk.iter().map(|(id, body)| {
            stack
                .broker
                .publish_dead_letter("user.created", body, id, "email_conflict")
        }))
        .await;
    }
}

/// Runs `worker dlq list --limit 1`, returning how long it took.
async fn dlq_list(build: &Build, stack: &Stack) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let binary = build.binary.to_string_lossy().into_owned();
    let env = stack.env(&[("RUST_LOG", "warn")]);
    let mut list = WorkerProcess::start(&binary, &["dlq", "list", "--limit", "1"], &env);
    let status = list.wait_exit(Duration::from_secs(600)).await;
    if !status.success() {
        bail!("worker dlq list exited with {status}:\n{}", list.logs());
    }
    Ok(started.elapsed())
}

/// Adds `n` letters straight into the store: five reasons, three types, one a second apart, one
/// in ten replayed.
async fn fill(stack: &Stack, n: usize) {
    stack
        .db
        .execute(&format!(
            "INSERT INTO dead_letters (svix_id, event_type, user_id, body, headers, properties, \
               reason, detail, attempts, first_failed_at, last_failed_at, status) \
             SELECT 'msg_bench' || g, (ARRAY['user.created','user.updated','user.deleted'])[1 + g % 3], \
               'user_bench' || g, convert_to('{{\"data\":{{\"id\":\"user_bench' || g || '\"}}}}', 'UTF8'), \
               '{{\"x-failure-reason\":\"email_conflict\"}}', '{{}}', \
               (ARRAY['email_conflict','missing_email','invalid_payload','username_conflict','retries_exhausted'])[1 + g % 5], \
               'the detail of a failure', 1, now() - g * interval '1 second', now() - g * interval '1 second', \
               CASE WHEN g % 10 = 0 THEN 'replayed' ELSE 'open' END \
             FROM generate_series(1, {n}) g; ANALYZE dead_letters"
        ))
        .await;
}

/// Where page 1,000 of the open letters starts.
async fn deep_page(pool: &Pool) -> anyhow::Result<(DateTime<Utc>, i64)> {
    let mut page = None;
    for _ in 0..999 {
        let rows = store::list(pool, &Filter::open(), Order::NewestFirst, page, Some(PAGE)).await?;
        let Some(last) = rows.last() else { break };
        page = Some((last.last_failed_at.to_utc(), last.id));
    }
    page.ok_or_else(|| anyhow::anyhow!("no letters to page through"))
}

/// The listing page's queries, [`SAMPLES`] times.
async fn time_page(
    pool: &Pool,
    filter: &Filter,
    page: Option<(DateTime<Utc>, i64)>,
) -> anyhow::Result<Latency> {
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let rows = store::list(pool, filter, Order::NewestFirst, page, Some(PAGE)).await?;
        store::counts_by_reason(pool, filter).await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        store::no_longer_needed(pool, &ids).await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Latency::of(&mut samples))
}

/// The figures as lines of the bench's table.
pub fn table(figures: &DeadLetters) -> String {
    let mut out = format!(
        "dead letters: moved {} from the queue into the store at {:.0} letters/s\n\
         listing page ({PAGE} letters, counts by reason, no-longer-needed) at {} letters:\n",
        figures.moved, figures.moved_per_s, figures.rows
    );
    let lines = |out: &mut String, pages: &[(String, Latency)]| {
        for (name, latency) in pages {
            *out += &format!(
                "  {name:<24} p50 {:.1} ms  p99 {:.1} ms\n",
                latency.p50_ms, latency.p99_ms
            );
        }
    };
    lines(&mut out, &figures.pages);
    out += "the console's page over HTTP (the same, rendered and sent):\n";
    lines(&mut out, &figures.console_pages);
    out
}
