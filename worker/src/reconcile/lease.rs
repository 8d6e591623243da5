//! One reconcile at a time across every replica: a lease row in PostgreSQL (`job_leases`), taken
//! and renewed with one conditional `UPDATE` each, and an epoch that grows at every take.
//!
//! Not a session advisory lock: those do not survive PgBouncer's transaction mode, stack when
//! taken twice on one session, and are silently gone with a lost session while the holder goes
//! on. Here the database's clock decides expiry, and the epoch is a fencing token: every write of
//! a run first checks, inside its own transaction, that the lease still has that epoch and has
//! not expired ([`Lease::fence`]), holding the row shared until it commits, so the next holder's
//! take waits for that write and a stale holder's later writes find the epoch moved on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr, Statement};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::db::{Pool, statement};

/// The lease row of the reconcile.
pub const RECONCILE: &str = "reconcile";

/// Takes the lease ($1 job) for $2 holder for $3 milliseconds when it is free or expired (the
/// row is made on first use, should the migration's have gone).
const TAKE: &str = "INSERT INTO job_leases AS l (name, holder, epoch, expires_at) \
     VALUES ($1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond') \
     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, epoch = l.epoch + 1, \
       expires_at = EXCLUDED.expires_at \
     WHERE l.expires_at <= clock_timestamp() RETURNING epoch";

/// Extends the lease ($1 job) held with epoch $2 by $3 milliseconds, if it has not expired.
const RENEW: &str = "UPDATE job_leases SET expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
     WHERE name = $1 AND epoch = $2 AND expires_at > clock_timestamp() RETURNING epoch";
/// Lets the lease ($1 job) held with epoch $2 go at once.
const RELEASE: &str = "UPDATE job_leases SET expires_at = '-infinity' \
     WHERE name = $1 AND epoch = $2 AND expires_at > clock_timestamp()";
/// Who holds the lease ($1 job) and until when, if anyone.
const HOLDER: &str = "SELECT holder, expires_at FROM job_leases \
     WHERE name = $1 AND expires_at > clock_timestamp()";
/// A row only while the lease ($1 job) still has epoch $2 and has not expired; the row stays
/// locked (shared) until the transaction ends, so no one can take the lease meanwhile.
const FENCE: &str = "SELECT epoch FROM job_leases \
     WHERE name = $1 AND epoch = $2 AND expires_at > clock_timestamp() FOR SHARE";

/// Someone else holds the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldBy {
    pub holder: String,
    pub until: DateTime<Utc>,
}

/// This process's name in the lease and in the runs table: host, process id and a random tag,
/// so two workers in one container image never take each other for the same holder.
pub fn holder_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}#{}#{:04x}", std::process::id(), fastrand::u16(..))
}

/// A lease this process took, renewed in the background every third of its time to live until
/// released or lost.
pub struct Lease {
    job: &'static str,
    epoch: i64,
    held: Arc<AtomicBool>,
    renewer: JoinHandle<()>,
}

impl Lease {
    /// Takes the `job` lease for `ttl` when it is free or expired; otherwise says who has it.
    pub async fn take(
        db: &Pool,
        job: &'static str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Result<Lease, Option<HeldBy>>, DbErr> {
        let values = [job.into(), holder.into(), millis(ttl).into()];
        let Some(row) = db.query_one_raw(statement(TAKE, values)).await? else {
            return Ok(Err(held_by(db, job).await?));
        };
        let epoch: i64 = row.try_get("", "epoch")?;
        info!(job, holder, epoch, ttl = ?ttl, "lease taken");
        let held = Arc::new(AtomicBool::new(true));
        let renewer = tokio::spawn(renew(db.clone(), job, epoch, ttl, held.clone()));
        Ok(Ok(Lease {
            job,
            epoch,
            held,
            renewer,
        }))
    }

    /// The job whose lease this is.
    pub fn job(&self) -> &'static str {
        self.job
    }

    /// The fencing token: every write of the run carries it.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// False once a renewal found the lease gone (or could not reach the database for a whole
    /// time to live): the run stops before its next write.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// The statement a fenced write runs first in its transaction: it returns a row only while
    /// this lease is still ours, and keeps the row locked until the transaction ends.
    pub fn fence(&self) -> Statement {
        fence_statement(self.job, self.epoch)
    }

    /// Stops renewing and lets the lease go, so the next holder need not wait for its expiry.
    pub async fn release(self, db: &Pool) {
        self.renewer.abort();
        let values = [self.job.into(), self.epoch.into()];
        if let Err(err) = db.execute_raw(statement(RELEASE, values)).await {
            warn!(job = self.job, error = %err, "could not release the lease; it expires on its own");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// The fence of `job`'s lease at `epoch` (see [`Lease::fence`]); public so a test can play a
/// holder that lost its lease.
pub fn fence_statement(job: &str, epoch: i64) -> Statement {
    statement(FENCE, [job.into(), epoch.into()])
}

/// Who holds `job`'s lease now, if anyone.
pub async fn held_by(db: &Pool, job: &str) -> Result<Option<HeldBy>, DbErr> {
    let row = db.query_one_raw(statement(HOLDER, [job.into()])).await?;
    row.map(|row| {
        Ok(HeldBy {
            holder: row
                .try_get::<Option<String>>("", "holder")?
                .unwrap_or_default(),
            until: row.try_get("", "expires_at")?,
        })
    })
    .transpose()
}

/// Renews every third of `ttl`; marks the lease lost when the row says so, or when no renewal
/// got through for a whole `ttl` (the database's clock may already have expired it).
async fn renew(db: Pool, job: &'static str, epoch: i64, ttl: Duration, held: Arc<AtomicBool>) {
    let every = ttl / 3;
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let values = [job.into(), epoch.into(), millis(ttl).into()];
        match db.query_one_raw(statement(RENEW, values)).await {
            Ok(Some(_)) => last_renewed = tokio::time::Instant::now(),
            Ok(None) => {
                warn!(
                    job,
                    epoch, "lease lost: another holder has it or it expired"
                );
                break;
            }
            Err(err) if last_renewed.elapsed() >= ttl => {
                warn!(job, epoch, error = %err, "lease lost: no renewal got through for its whole time to live");
                break;
            }
            Err(err) => warn!(job, epoch, error = %err, "could not renew the lease; trying again"),
        }
    }
    held.store(false, Ordering::Release);
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
