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

    /// The value of one series on `/metrics` (name with labels as rendered, or a bare name for
    /// the sum over its labels); `None` when the page has no such series, so a test that a counter
    /// "stayed 0" asks for `Some(0.0)` and fails if the series was renamed or never registered.
    /// Fails at once for a name the service does not export (a typo, or a metric renamed in
    /// `worker::metrics` but not here): a test of such a name could never fail otherwise.
    /// Counters that can stay at 0 are registered at zero at start, so their series are there.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let family = series.split('{').next().unwrap_or(series);
        assert!(
            is_exported(family),
            "{family} is not in worker::metrics::ALL: nothing exports it"
        );
        metric_value(&self.metrics().await, series)
    }

    /// [`metric`](Self::metric) for a series that must be on the page: panics naming it when
    /// absent.
    pub async fn expect_metric(&self, series: &str) -> f64 {
        self.metric(series)
            .await
            .unwrap_or_else(|| panic!("{series} is not on /metrics of {}", self.addr))
    }
}

/// One series as `/metrics` renders it, from a `worker::metrics` name and its labels in the
/// order the service records them: `series(EVENTS_RETRIED, &[("reason", "transient")])` is
/// `events_retried_total{reason="transient"}`.
pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let labels: Vec<String> = labels
        .iter()
        .map(|(label, value)| format!("{label}=\"{value}\""))
        .collect();
    format!("{name}{{{}}}", labels.join(","))
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
/// labels adds up all its labelled series); `None` when no line does.
pub fn metric_value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(name, _)| {
            *name == series || (name.starts_with(series) && name[series.len()..].starts_with('{'))
        })
        .map(|(name, value)| {
            value
                .parse::<f64>()
                .unwrap_or_else(|err| panic!("{name} has the value {value:?}: {err}"))
        })
        .reduce(|sum, value| sum + value)
}

/// [`metric_value`] for a series that must be on the page: panics naming it when absent.
pub fn expect_metric_value(page: &str, series: &str) -> f64 {
    metric_value(page, series).unwrap_or_else(|| panic!("{series} is not on the page:\n{page}"))
}

#[cfg(test)]
mod tests {
    use super::{expect_metric_value, is_exported, metric_value, series};
    use worker::metrics::{EVENTS_PROCESSED, WEBHOOK_DURATION, WORKSPACE_CREATED};

    #[test]
    fn only_exported_names_are_exported() {
        assert!(is_exported(WORKSPACE_CREATED));
        assert!(is_exported(&format!("{WEBHOOK_DURATION}_count")));
        // Near misses of WORKSPACE_CREATED, which nothing exports.
        assert!(!is_exported("workspace_created_count"), "not a histogram");
        assert!(!is_exported("workspaces_created_total"), "a typo");
    }

    #[test]
    fn metric_values_are_read_and_summed_over_labels() {
        let page = format!(
            "# HELP x\n{WORKSPACE_CREATED} 3\n{EVENTS_PROCESSED}{{type=\"a\",outcome=\"created\"}} 2\n{EVENTS_PROCESSED}{{type=\"b\",outcome=\"stale\"}} 5\n{EVENTS_PROCESSED}_other 9\nzero_total 0\n"
        );
        assert_eq!(metric_value(&page, WORKSPACE_CREATED), Some(3.0));
        assert_eq!(metric_value(&page, EVENTS_PROCESSED), Some(7.0));
        assert_eq!(
            metric_value(
                &page,
                &format!("{EVENTS_PROCESSED}{{type=\"b\",outcome=\"stale\"}}")
            ),
            Some(5.0)
        );
        assert_eq!(
            metric_value(&page, &format!("{EVENTS_PROCESSED}{{type=\"c\"}}")),
            None
        );
        assert_eq!(metric_value(&page, "zero_total"), Some(0.0), "present at 0");
        assert_eq!(metric_value(&page, "missing_total"), None, "absent");
        assert_eq!(expect_metric_value(&page, WORKSPACE_CREATED), 3.0);
    }

    #[test]
    fn series_are_named_as_the_page_renders_them() {
        assert_eq!(series(WORKSPACE_CREATED, &[]), WORKSPACE_CREATED);
        let page = format!("{EVENTS_PROCESSED}{{type=\"user.created\",outcome=\"created\"}} 4\n");
        let created = series(
            EVENTS_PROCESSED,
            &[("type", "user.created"), ("outcome", "created")],
        );
        assert_eq!(metric_value(&page, &created), Some(4.0));
    }

    #[test]
    #[should_panic(expected = "missing_total is not on the page")]
    fn an_absent_series_expected_fails_naming_it() {
        expect_metric_value("present_total 1\n", "missing_total");
    }
}
