//! How `dlq list` and `dlq replay` print: a table for people, JSON for scripts.

use std::fmt::Write;

use super::{DeadLetter, LetterView, Listing, ReplaySummary};

const DETAIL_WIDTH: usize = 60;

/// One row per dead letter, then counts by reason.
pub fn listing_table(listing: &Listing) -> String {
    let header = [
        "SVIX_ID",
        "TYPE",
        "USER_ID",
        "REASON",
        "ATTEMPTS",
        "FIRST_FAILED",
        "LAST_FAILED",
        "DETAIL",
        "STATUS",
    ];
    let rows: Vec<[String; 9]> = listing.dead_letters.iter().map(row).collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(&header.map(str::to_owned));
    for row in &rows {
        line(row);
    }
    let shown = listing.dead_letters.len();
    let _ = writeln!(
        out,
        "\n{} dead letter(s) match{}",
        listing.total,
        limited(shown, listing.total)
    );
    for (reason, count) in &listing.counts_by_reason {
        let _ = writeln!(out, "  {reason}: {count}");
    }
    out
}

fn limited(shown: usize, total: usize) -> String {
    if shown < total {
        format!(" ({shown} shown)")
    } else {
        String::new()
    }
}

fn row(letter: &DeadLetter) -> [String; 9] {
    let dash = || "-".to_owned();
    let detail: String = letter
        .detail
        .as_deref()
        .unwrap_or("-")
        .chars()
        .take(DETAIL_WIDTH)
        .collect();
    [
        letter.svix_id.clone().unwrap_or_else(dash),
        letter.event_type.clone(),
        letter.user_id.clone().unwrap_or_else(dash),
        letter.reason.clone(),
        letter.attempts.map_or_else(dash, |n| n.to_string()),
        letter.first_failed_at.clone().unwrap_or_else(dash),
        letter.last_failed_at.clone().unwrap_or_else(dash),
        detail.replace('\n', " "),
        status(letter),
    ]
}

/// The closing summary: `replayed N, skipped M`, with the breakdown.
pub fn summary_text(summary: &ReplaySummary) -> String {
    let mut out = String::new();
    let matched: usize = summary.by_reason.values().sum();
    if summary.dry_run {
        let _ = writeln!(
            out,
            "dry run: would replay {matched}, skip {}",
            summary.skipped
        );
        if let Some(no_ops) = summary.no_ops {
            let _ = writeln!(
                out,
                "  of which no longer needed (the database already reflects them): {no_ops}"
            );
        }
    } else {
        let _ = writeln!(
            out,
            "replayed {}, skipped {}",
            summary.replayed, summary.skipped
        );
    }
    for (reason, count) in &summary.by_reason {
        let _ = writeln!(out, "  reason {reason}: {count}");
    }
    for (event_type, count) in &summary.by_type {
        let _ = writeln!(out, "  type {event_type}: {count}");
    }
    if summary.interrupted {
        let _ = writeln!(out, "interrupted: the rest stays open");
    }
    out
}

/// A letter's status, with "no longer needed" when a replay would change nothing.
fn status(letter: &DeadLetter) -> String {
    match letter.no_longer_needed {
        true => format!("{}/no-longer-needed", letter.status),
        false => letter.status.clone(),
    }
}

/// `worker dlq show`: the letter, its payload and headers, and its history.
pub fn letter_text(view: &LetterView) -> String {
    let letter = &view.letter;
    let dash = "-".to_owned();
    let mut out = String::new();
    let fields = [
        (
            "svix id",
            letter.svix_id.clone().unwrap_or_else(|| dash.clone()),
        ),
        ("type", letter.event_type.clone()),
        (
            "user id",
            letter.user_id.clone().unwrap_or_else(|| dash.clone()),
        ),
        ("status", status(letter)),
        ("reason", letter.reason.clone()),
        (
            "detail",
            letter.detail.clone().unwrap_or_else(|| dash.clone()),
        ),
        (
            "attempts",
            letter.attempts.map_or(dash.clone(), |n| n.to_string()),
        ),
        (
            "first failed",
            letter
                .first_failed_at
                .clone()
                .unwrap_or_else(|| dash.clone()),
        ),
        (
            "last failed",
            letter
                .last_failed_at
                .clone()
                .unwrap_or_else(|| dash.clone()),
        ),
        ("replays", letter.replay_count.to_string()),
        ("arrived", view.arrived_at.clone()),
    ];
    for (name, value) in fields {
        let _ = writeln!(out, "{name:<13} {value}");
    }
    let pretty = |value: &serde_json::Value| {
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    };
    let body = match (&view.body, view.body_is_json) {
        (serde_json::Value::String(text), false) => text.clone(),
        (value, _) => pretty(value),
    };
    let _ = writeln!(out, "\nheaders:\n{}", pretty(&view.headers));
    let _ = writeln!(out, "\npayload:\n{body}");
    let _ = writeln!(out, "\nhistory:");
    for entry in &view.history {
        let who = match (&entry.actor, &entry.source) {
            (Some(actor), Some(source)) => format!(" by {actor} ({source})"),
            _ => String::new(),
        };
        let why = entry
            .reason
            .as_ref()
            .or(entry.note.as_ref())
            .map_or(String::new(), |why| format!(": {why}"));
        let _ = writeln!(
            out,
            "  {} {}{who}{why}",
            super::timestamp(entry.at),
            entry.event
        );
    }
    out
}
