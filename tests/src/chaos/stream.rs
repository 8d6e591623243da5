//! The steady stream of sign-ups, each posted as Svix would: until it gets a 2xx or its retry
//! window ends, with the same svix-id and body, signed again at every attempt.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clerk::UserEvent;
use crate::webhook::{SECRET, Webhook};

/// Svix gives an endpoint 15 s to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LONGEST_RETRY: Duration = Duration::from_secs(2);

pub(super) struct Settings {
    pub rate: f64,
    /// The stream lasts at least this long, and until `faults_done`.
    pub at_least: Duration,
    pub retry_for: Duration,
    /// In every svix-id and user id, so runs never collide.
    pub run: String,
    /// When the stream started: answers are timed from here, as the faults are.
    pub started: Instant,
}

/// One svix-id: the user it signs up and every answer it got, in order.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub svix_id: String,
    pub user_id: String,
    pub answers: Vec<Answer>,
}

/// One attempt's answer.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Answer {
    /// When the attempt started, from the stream's start.
    pub at: Duration,
    /// The HTTP status; 0 when no answer came (the connection failed or timed out).
    pub status: u16,
}

impl Record {
    pub fn acknowledged(&self) -> bool {
        self.answers.iter().any(Answer::is_success)
    }
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends `settings.rate` new webhooks a second until the stream is long enough and the faults
/// are done, then waits for every webhook's last answer.
pub(super) async fn send(
    settings: Settings,
    ingress: watch::Receiver<SocketAddr>,
    faults_done: CancellationToken,
) -> Vec<Record> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let started = settings.started;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.rate));
    let mut sending = JoinSet::new();
    let mut records = Vec::new();
    for i in 0.. {
        ticks.tick().await;
        if started.elapsed() >= settings.at_least && faults_done.is_cancelled() {
            break;
        }
        let event = UserEvent::created(
            &format!("user_2chaos{}{i:07}", settings.run),
            &format!("chaos{}{i}@chaos.example.com", settings.run),
            Some(&format!("chaos_{}_{i}", settings.run)),
        );
        let svix_id = format!("msg_chaos{}{i:07}", settings.run);
        sending.spawn(deliver(
            client.clone(),
            ingress.clone(),
            svix_id,
            event,
            settings.retry_for,
            started,
        ));
        while let Some(done) = sending.try_join_next() {
            records.push(done.expect("a delivery does not panic"));
        }
    }
    while let Some(done) = sending.join_next().await {
        records.push(done.expect("a delivery does not panic"));
    }
    records.sort_by(|a, b| a.svix_id.cmp(&b.svix_id));
    records
}

/// Posts one event until a 2xx or until `retry_for` after the first attempt.
async fn deliver(
    client: reqwest::Client,
    ingress: watch::Receiver<SocketAddr>,
    svix_id: String,
    event: UserEvent,
    retry_for: Duration,
    started: Instant,
) -> Record {
    let body = event.body();
    let first = Instant::now();
    let mut delay = FIRST_RETRY;
    let mut answers = Vec::new();
    loop {
        let webhook = Webhook::signed_at(SECRET, &body, &svix_id, chrono::Utc::now().timestamp());
        let addr = *ingress.borrow();
        let at = started.elapsed();
        let answer = Answer {
            at,
            status: post(&client, addr, webhook).await,
        };
        answers.push(answer);
        if answer.is_success() || first.elapsed() >= retry_for {
            break;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(LONGEST_RETRY);
    }
    Record {
        svix_id,
        user_id: event.id,
        answers,
    }
}

/// The status of one POST; 0 when no answer came.
async fn post(client: &reqwest::Client, addr: SocketAddr, webhook: Webhook) -> u16 {
    let sent = client
        .post(format!("http://{addr}/webhooks/clerk"))
        .header("content-type", "application/json")
        .header("svix-id", &webhook.id)
        .header("svix-timestamp", webhook.timestamp.to_string())
        .header("svix-signature", &webhook.signature)
        .body(webhook.body)
        .send()
        .await;
    sent.map_or(0, |response| response.status().as_u16())
}
