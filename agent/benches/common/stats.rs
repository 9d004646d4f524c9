//! Latency statistics shared by the agent's benches (included with `mod stats;`).

use std::time::Duration;

/// The `p` quantile (0..=1) of an ascending-sorted, non-empty sample.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
