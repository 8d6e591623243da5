//! `worker provision`: apply one Clerk event body without the broker and print the outcome as
//! one JSON line; the exit status tells a script whether trying again may help.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use crate::config::DatabaseSettings;
use crate::domain::Event;
use crate::error::ProvisionError;
use crate::outcome::NotProvisioned;
use crate::provision::Provisioned;
use crate::{clerk, db, provision};

/// Exit status of `worker provision` when the event can never be applied (sysexits EX_DATAERR).
pub const EXIT_PERMANENT: u8 = 65;
/// Exit status of `worker provision` when trying again later may work (sysexits EX_TEMPFAIL).
pub const EXIT_TRANSIENT: u8 = 75;

/// Parses and provisions the body in `file` (`-`: standard input), printing the outcome.
pub(super) async fn run(settings: &DatabaseSettings, file: &Path) -> anyhow::Result<ExitCode> {
    let body = read_body(file)?;
    let event = match clerk::parse_event(&body) {
        Ok(event) => event,
        Err(rejected) => return Ok(print_failure(None, &rejected.into())),
    };
    let result = match db::connect(settings).await {
        Ok(db) => provision::provision(&db, &event).await,
        Err(err) => Err(ProvisionError::from_db(err)),
    };
    Ok(match result {
        Ok(provisioned) => print_success(&event, &provisioned),
        Err(err) => print_failure(Some(&event), &err),
    })
}

fn read_body(file: &Path) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut body)
            .context("reading the event from standard input")?;
    } else {
        body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    }
    Ok(body)
}

fn print_success(event: &Event, provisioned: &Provisioned) -> ExitCode {
    let line = json!({
        "event_type": event.event_type(),
        "user_id": event.user_id().map(AsRef::<str>::as_ref),
        "outcome": provisioned.outcome,
        "workspace_id": provisioned.workspace_id,
        "reassigned": provisioned.reassigned,
    });
    println!("{line}");
    ExitCode::SUCCESS
}

fn print_failure(event: Option<&Event>, err: &ProvisionError) -> ExitCode {
    let line = json!({
        "event_type": event.map(Event::event_type),
        "user_id": event.and_then(Event::user_id).map(AsRef::<str>::as_ref),
        "outcome": NotProvisioned::Failed.as_str(),
        "reason": err.as_str(),
        "retryable": err.is_retryable(),
        "detail": err.to_string(),
    });
    println!("{line}");
    ExitCode::from(if err.is_retryable() {
        EXIT_TRANSIENT
    } else {
        EXIT_PERMANENT
    })
}
