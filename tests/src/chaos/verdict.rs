//! The verdict: every svix-id sent, judged against the database and the dead-letter queue.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use lapin::options::BasicGetOptions;
use serde::Serialize;

use super::fault::Journal;
use super::stream::Record;
use super::system::System;

/// Ids listed per class, at most.
const IDS_LISTED: usize = 20;
/// Svix-ids whose log lines are kept as evidence, at most.
const EVIDENCE_IDS: usize = 5;

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// Svix-ids sent (one sign-up each).
    pub sent: usize,
    /// Svix-ids that got a 2xx.
    pub acknowledged: usize,
    /// Acknowledged, yet no user with exactly one workspace: an event the product lost.
    pub lost: usize,
    /// Never acknowledged (every answer a failure), yet provisioned: the ingress published it
    /// but its answer did not arrive. Harmless: Svix would retry, and the repeat is absorbed.
    pub recovered: usize,
    /// Messages in the dead-letter queue.
    pub dead_lettered: usize,
    /// Users whose workspaces are not exactly one.
    pub duplicates: usize,
    /// Never acknowledged within the retry window (`recovered` ones included).
    pub unacknowledged: usize,
    /// Users with exactly one workspace.
    pub provisioned: usize,
    /// POSTs made, and what they got (0: no answer).
    pub attempts: usize,
    pub answers: BTreeMap<u16, usize>,
    /// When attempts failed: spans of seconds from the stream's start with the failed answers
    /// they got, e.g. `8-13 s: 503 x1865, 0 x10`.
    pub failures: Vec<String>,
    /// Whether the main, retry and delay queues emptied before the verdict was taken.
    pub drained: bool,
    pub lost_ids: Vec<String>,
    pub dead_lettered_ids: Vec<String>,
    pub duplicate_user_ids: Vec<String>,
    /// Faults injected.
    pub faults_injected: usize,
    /// What was injected and healed, when (seconds from the stream's start).
    pub faults: Vec<String>,
    /// For the first lost and dead-lettered svix-ids: every log line naming them.
    pub evidence: BTreeMap<String, Vec<String>>,
}

impl Verdict {
    /// Nothing acknowledged was lost, nothing was dead-lettered, nobody has two workspaces.
    pub fn is_ok(&self) -> bool {
        self.lost == 0 && self.dead_lettered == 0 && self.duplicates == 0
    }
}

/// One line: the figures that decide, then the rest.
impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: sent {}, acknowledged {}, lost {}, recovered {}, dead_lettered {}, duplicates {}; unacknowledged {}, provisioned {}; {} attempts {:?}; {} faults; drained {}",
            if self.is_ok() { "ok" } else { "NOT OK" },
            self.sent,
            self.acknowledged,
            self.lost,
            self.recovered,
            self.dead_lettered,
            self.duplicates,
            self.unacknowledged,
            self.provisioned,
            self.attempts,
            self.answers,
            self.faults_injected,
            self.drained,
        )
    }
}

pub(super) async fn judge(
    records: Vec<Record>,
    system: &System,
    journal: Journal,
    drained: bool,
) -> Verdict {
    let workspaces = workspaces_per_user(system).await;
    let provisioned = |record: &Record| workspaces.get(&record.user_id) == Some(&1);
    let lost: Vec<&Record> = records
        .iter()
        .filter(|r| r.acknowledged() && !provisioned(r))
        .collect();
    let mut duplicate_user_ids: Vec<String> = workspaces
        .iter()
        .filter(|(_, n)| **n != 1)
        .map(|(id, _)| id.clone())
        .collect();
    duplicate_user_ids.sort();
    let dead_lettered_ids = dead_letters(system).await;
    let mut answers = BTreeMap::new();
    for answer in records.iter().flat_map(|r| &r.answers) {
        *answers.entry(answer.status).or_default() += 1;
    }
    let mut evidence = BTreeMap::new();
    let suspects = lost.iter().map(|r| &r.svix_id).take(EVIDENCE_IDS);
    for id in suspects.chain(dead_lettered_ids.iter().take(EVIDENCE_IDS)) {
        evidence.insert(id.clone(), system.log_lines(id));
    }
    let listed = |ids: Vec<String>| ids.into_iter().take(IDS_LISTED).collect();
    Verdict {
        sent: records.len(),
        acknowledged: records.iter().filter(|r| r.acknowledged()).count(),
        lost: lost.len(),
        recovered: records
            .iter()
            .filter(|r| !r.acknowledged() && provisioned(r))
            .count(),
        dead_lettered: dead_lettered_ids.len(),
        duplicates: duplicate_user_ids.len(),
        unacknowledged: records.iter().filter(|r| !r.acknowledged()).count(),
        provisioned: workspaces.values().filter(|n| **n == 1).count(),
        attempts: records.iter().map(|r| r.answers.len()).sum(),
        answers,
        failures: failure_spans(&records),
        drained,
        lost_ids: listed(lost.iter().map(|r| r.svix_id.clone()).collect()),
        dead_lettered_ids: listed(dead_lettered_ids),
        duplicate_user_ids: listed(duplicate_user_ids),
        faults_injected: journal.injected(),
        faults: journal.into_lines(),
        evidence,
    }
}

/// Workspaces per user id, for every user in the system's database.
async fn workspaces_per_user(system: &System) -> HashMap<String, i64> {
    let sql = "SELECT u.id AS id, count(w.user_id) AS workspaces FROM users u \
               LEFT JOIN workspaces w ON w.user_id = u.id GROUP BY u.id";
    system
        .db
        .rows(sql)
        .await
        .into_iter()
        .map(|row| {
            let id = row["id"].as_str().unwrap_or_default().to_owned();
            (id, row["workspaces"].as_i64().unwrap_or_default())
        })
        .collect()
}

/// The message ids in the dead-letter queue, read without taking them: unacknowledged gets,
/// given back when the connection closes.
async fn dead_letters(system: &System) -> Vec<String> {
    let connection = lapin::Connection::connect(&system.live_url(), Default::default())
        .await
        .expect("a live node takes connections");
    let channel = connection.create_channel().await.expect("a channel");
    let mut ids = Vec::new();
    let queue = system.topology.dead_letter_queue.as_str();
    while let Some(got) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get on the dead-letter queue")
    {
        let id = got.delivery.properties.message_id().as_ref();
        ids.push(id.map_or_else(|| "(no message id)".to_owned(), |id| id.to_string()));
    }
    let _ = connection.close(200, "dead letters counted".into()).await;
    ids
}

/// Failed answers by the second their attempt started, consecutive seconds merged.
fn failure_spans(records: &[Record]) -> Vec<String> {
    let mut by_second: BTreeMap<u64, BTreeMap<u16, usize>> = BTreeMap::new();
    let failed = records
        .iter()
        .flat_map(|r| &r.answers)
        .filter(|a| !a.is_success());
    for answer in failed {
        let second = by_second.entry(answer.at.as_secs()).or_default();
        *second.entry(answer.status).or_default() += 1;
    }
    let mut spans: Vec<(u64, u64, BTreeMap<u16, usize>)> = Vec::new();
    for (second, statuses) in by_second {
        match spans.last_mut() {
            Some((_, last, total)) if *last + 1 == second => {
                *last = second;
                for (status, n) in statuses {
                    *total.entry(status).or_default() += n;
                }
            }
            _ => spans.push((second, second, statuses)),
        }
    }
    spans
        .into_iter()
        .map(|(first, last, statuses)| {
            let counts: Vec<String> = statuses
                .iter()
                .map(|(status, n)| format!("{status} x{n}"))
                .collect();
            format!("{first}-{} s: {}", last + 1, counts.join(", "))
        })
        .collect()
}
