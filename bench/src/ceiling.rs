//! The database's own ceiling: pgbench driving exactly the provisioning statements (upsert a
//! user, insert its workspace on conflict do nothing, commit) with unique users, no broker and no
//! service in between, on a scratch database with the product's schema.

use std::process::Command;

use anyhow::{Context, bail};
use integration_tests::TestDb;
use serde::Serialize;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Ceiling {
    pub clients: usize,
    pub batch: usize,
    pub seconds: u64,
    pub events_per_s: f64,
    pub mean_latency_ms: f64,
}

/// One transaction of `batch` unique users, as pgbench script text.
fn script(batch: usize) -> String {
    let mut sql = String::new();
    for i in 1..=batch {
        sql += &format!("\\set r{i} random(1, 1000000000000000)\n");
    }
    let users: Vec<String> = (1..=batch)
        .map(|i| format!("('user_' || :r{i}, 'u' || :r{i} || '@example.com', 'u' || :r{i}, 'First', 'Last', 'https://img.clerk.com/a' || :r{i}, now())"))
        .collect();
    let workspaces: Vec<String> = (1..=batch)
        .map(|i| format!("('user_' || :r{i}, 'My Workspace')"))
        .collect();
    sql += "BEGIN;\n";
    sql += &format!(
        "INSERT INTO users (id, email, username, first_name, last_name, avatar_url, clerk_updated_at) VALUES {} \
         ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, username = EXCLUDED.username, \
         first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, avatar_url = EXCLUDED.avatar_url, \
         clerk_updated_at = EXCLUDED.clerk_updated_at, updated_at = now() RETURNING id;\n",
        users.join(", ")
    );
    sql += &format!(
        "INSERT INTO workspaces (user_id, name) VALUES {} ON CONFLICT DO NOTHING RETURNING id;\n",
        workspaces.join(", ")
    );
    sql += "COMMIT;\n";
    sql
}

pub async fn measure(clients: usize, seconds: u64, batch: usize) -> anyhow::Result<Ceiling> {
    let db = TestDb::migrated().await;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("txn.sql");
    std::fs::write(&path, script(batch))?;
    let url = url_parts(db.settings.expose_url())?;
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-j", "2"])
        .args(["-h", &url.0, "-p", &url.1, "-U", &url.2])
        .args(["-c", &clients.to_string(), "-T", &seconds.to_string()])
        .arg("-f")
        .arg(&path)
        .arg(&db.name)
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .output()
        .context("running pgbench (Debian: postgresql-client or postgresql)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let field = |prefix: &str| {
        text.lines()
            .filter_map(|line| line.strip_prefix(prefix))
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .next_back()
    };
    let tps = field("tps = ").context("pgbench printed no tps")?;
    Ok(Ceiling {
        clients,
        batch,
        seconds,
        events_per_s: tps * batch as f64,
        mean_latency_ms: field("latency average = ").unwrap_or_default(),
    })
}

/// Host, port and user of a `postgres://user@host:port/db` URL.
fn url_parts(url: &str) -> anyhow::Result<(String, String, String)> {
    let rest = url
        .strip_prefix("postgres://")
        .context("a postgres:// URL")?;
    let (authority, _) = rest.split_once('/').context("a database in the URL")?;
    let (user, host_port) = authority
        .rsplit_once('@')
        .unwrap_or(("postgres", authority));
    let user = user.split(':').next().unwrap_or("postgres");
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "5432"));
    Ok((host.to_owned(), port.to_owned(), user.to_owned()))
}
