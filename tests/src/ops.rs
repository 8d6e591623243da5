//! Reading an application's ops server (`/readyz`, `/metrics`) over HTTP, the way probes and
//! Prometheus do, whether the application runs in this process or in a child process.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// An HTTP client for one ops server.
#[derive(Clone)]
pub struct OpsClient {
    pub addr: SocketAddr,
    http: reqwest::Client,
}

impl OpsClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            http: reqwest::Client::new(),
        }
    }

    /// `GET path` as (status, body); `None` while nothing answers.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// Whether `/readyz` answered 200 before `deadline`.
    pub async fn ready_before(&self, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if let Some((200, _)) = self.get("/readyz").await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// `/readyz` as (status, body).
    pub async fn readyz(&self) -> (u16, String) {
        self.get("/readyz").await.expect("/readyz answers")
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.expect("/metrics answers").1
    }

    /// The value of one series on `/metrics` (name with labels as rendered), 0 when absent.
    /// Fails at once for a name the service does not export (a typo, or a metric renamed in
    /// `worker::metrics` but not here): a test of such a name could never fail otherwise.
    /// Counters that can stay at 0 are registered at zero at start, so a test that one stayed 0
    /// reads the series itself.
    pub async fn metric(&self, series: &str) -> f64 {
        let family = series.split('{').next().unwrap_or(series);
        assert!(
            is_exported(family),
            "{family} is not in worker::metrics::ALL: nothing exports it"
        );
        metric_value(&self.metrics().await, series)
    }
}

/// Whether `family` is a series name the service exports (a histogram's as `_bucket`, `_sum`
/// and `_count`).
pub fn is_exported(family: &str) -> bool {
    worker::metrics::ALL.iter().any(|&(name, histogram)| {
        family == name
            || (histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| family.strip_suffix(suffix) == Some(name)))
    })
}

/// Sums every line of a Prometheus page whose series starts with `series` (so a name without
/// labels adds up all its labelled series).
pub fn metric_value(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(name, _)| {
            *name == series || (name.starts_with(series) && name[series.len()..].starts_with('{'))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn only_exported_names_are_exported() {
        use super::is_exported;
        assert!(is_exported("workspace_created_total"));
        assert!(is_exported("webhook_request_duration_seconds_count"));
        assert!(!is_exported("workspace_created_count"), "not a histogram");
        assert!(!is_exported("workspaces_created_total"), "a typo");
    }

    #[test]
    fn metric_values_are_read_and_summed_over_labels() {
        let page = "# HELP x\nworkspace_created_total 3\nevents_processed_total{type=\"a\",outcome=\"created\"} 2\nevents_processed_total{type=\"b\",outcome=\"stale\"} 5\nevents_processed_total_other 9\n";
        assert_eq!(metric_value(page, "workspace_created_total"), 3.0);
        assert_eq!(metric_value(page, "events_processed_total"), 7.0);
        assert_eq!(
            metric_value(page, "events_processed_total{type=\"b\",outcome=\"stale\"}"),
            5.0
        );
        assert_eq!(metric_value(page, "missing_total"), 0.0);
    }
}
