//! The client-side deadline of a provisioning attempt. The server's own timeouts cover a slow
//! statement or a held lock; only this covers a database that stops answering without closing
//! the connection (a host gone, a network that drops packets), where no error would ever come
//! back: neither sqlx nor sea-orm sets TCP keepalive.

use std::future::Future;
use std::time::Duration;

use crate::db::Pool;
use crate::error::ProvisionError;

/// How long the database gets to answer a ping after an attempt overran, to tell a slow event
/// from a database that answers no one.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `attempt`, giving up after `deadline`: then the attempt is `transient` if the database
/// still answers a ping, or `database_unavailable` if it does not (which counts toward the
/// outage pause, like a refused connection).
pub async fn within<T>(
    db: &Pool,
    deadline: Duration,
    attempt: impl Future<Output = Result<T, ProvisionError>>,
) -> Result<T, ProvisionError> {
    match tokio::time::timeout(deadline, attempt).await {
        Ok(result) => result,
        Err(_) => {
            let answers = matches!(
                tokio::time::timeout(PING_TIMEOUT.min(deadline), db.ping()).await,
                Ok(Ok(()))
            );
            Err(ProvisionError::overran(deadline, answers))
        }
    }
}
