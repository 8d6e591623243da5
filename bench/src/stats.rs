//! Percentiles of a latency sample.

use serde::Serialize;

/// Latency figures in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples_ms` (which it sorts).
    pub fn of(samples_ms: &mut [f64]) -> Self {
        samples_ms.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if samples_ms.is_empty() {
                return 0.0;
            }
            let rank = ((p * samples_ms.len() as f64).ceil() as usize).clamp(1, samples_ms.len());
            samples_ms[rank - 1]
        };
        Self {
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: samples_ms.last().copied().unwrap_or_default(),
        }
    }
}

/// The middle value (the mean of the two middle ones for an even count); 0 for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// A target's line in a table: what it asks, and whether this run met it.
pub fn target_line(target: &str, holds: bool) -> String {
    let verdict = if holds { "holds" } else { "FAILS" };
    format!("target {target}: {verdict}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let latency = Latency::of(&mut samples);
        assert_eq!(
            (
                latency.p50_ms,
                latency.p95_ms,
                latency.p99_ms,
                latency.max_ms
            ),
            (50.0, 95.0, 99.0, 100.0)
        );
    }
}
