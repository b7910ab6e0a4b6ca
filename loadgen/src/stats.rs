//! Latency summaries: nearest-rank percentiles over what was measured.

use std::time::Duration;

use serde::Serialize;

/// The distribution of one latency, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when nothing was measured.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(Summary {
            count: sorted.len(),
            p50_ms: millis(percentile(&sorted, 50.0)?),
            p99_ms: millis(percentile(&sorted, 99.0)?),
            max_ms: millis(*sorted.last()?),
        })
    }
}

/// The nearest-rank percentile `p` (0 < p <= 100) of ascending `sorted`:
/// the smallest sample with at least p% of the samples at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Milliseconds at microsecond resolution, which keeps the JSON short.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// `value` scaled to a fleet of 1,000 agents.
pub fn per_thousand(value: f64, agents: usize) -> f64 {
    if agents == 0 {
        return 0.0;
    }
    value * 1000.0 / agents as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let hundred: Vec<u64> = (1..=100).collect();
        for (samples, p, expected) in [
            (ms(&[7]), 50.0, 7),
            (ms(&[7]), 99.0, 7),
            (ms(&[1, 2]), 50.0, 1),
            (ms(&[1, 2]), 99.0, 2),
            (ms(&[1, 2, 3, 4]), 50.0, 2),
            (ms(&hundred), 50.0, 50),
            (ms(&hundred), 99.0, 99),
            (ms(&hundred), 100.0, 100),
            (ms(&hundred), 0.5, 1),
        ] {
            assert_eq!(
                percentile(&samples, p),
                Some(Duration::from_millis(expected)),
                "p{p} of {samples:?}"
            );
        }
    }

    #[test]
    fn no_percentile_of_nothing_or_out_of_range() {
        assert_eq!(percentile(&[], 50.0), None);
        for p in [0.0, -1.0, 100.1, f64::NAN] {
            assert_eq!(percentile(&ms(&[1, 2, 3]), p), None, "p{p}");
        }
    }

    #[test]
    fn summaries_sort_their_samples() {
        let summary = Summary::of(&ms(&[30, 10, 20])).unwrap();
        assert_eq!(
            summary,
            Summary {
                count: 3,
                p50_ms: 20.0,
                p99_ms: 30.0,
                max_ms: 30.0
            }
        );
        assert_eq!(Summary::of(&[]), None);
        let fine = Summary::of(&[Duration::from_micros(1_234_567)]).unwrap();
        assert_eq!(fine.max_ms, 1234.567);
    }

    #[test]
    fn scaling_to_a_thousand_agents() {
        assert_eq!(per_thousand(3.0, 3000), 1.0);
        assert_eq!(per_thousand(1.0, 500), 2.0);
        assert_eq!(per_thousand(1.0, 0), 0.0);
    }
}
