//! Measurement summaries and their two renderings: a human table, and one JSON object per
//! line (`{"system", "scenario", "n", "p50_us", "p90_us", "p99_us", "ops_per_s"}`, fields that
//! do not apply omitted) for scripts.

use std::time::Duration;

/// One measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// "tenure", "sanlock" or "device".
    pub system: String,
    /// What was measured.
    pub scenario: String,
    /// Samples (latency) or operations (throughput).
    pub n: usize,
    /// Latency percentiles, when measured.
    pub percentiles_us: Option<(f64, f64, f64)>,
    /// Throughput, when measured.
    pub ops_per_s: Option<f64>,
}

/// p50/p90/p99 of `samples` in microseconds (nearest rank). `samples` must not be empty.
pub fn percentiles_us(samples: &mut [Duration]) -> (f64, f64, f64) {
    assert!(!samples.is_empty(), "no samples");
    samples.sort_unstable();
    let at = |p: f64| {
        let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1e6
    };
    (at(50.0), at(90.0), at(99.0))
}

impl Measurement {
    /// The JSON line.
    pub fn json(&self) -> String {
        let mut v =
            serde_json::json!({"system": self.system, "scenario": self.scenario, "n": self.n});
        if let Some((p50, p90, p99)) = self.percentiles_us {
            v["p50_us"] = serde_json::json!(round(p50));
            v["p90_us"] = serde_json::json!(round(p90));
            v["p99_us"] = serde_json::json!(round(p99));
        }
        if let Some(ops) = self.ops_per_s {
            v["ops_per_s"] = serde_json::json!(round(ops));
        }
        v.to_string()
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The human table.
pub fn table(rows: &[Measurement]) -> String {
    let mut out = format!(
        "{:<8} {:<44} {:>7} {:>10} {:>10} {:>10} {:>12}\n",
        "system", "scenario", "n", "p50_us", "p90_us", "p99_us", "ops/s"
    );
    for m in rows {
        let (p50, p90, p99) = m
            .percentiles_us
            .map_or(("-".into(), "-".into(), "-".into()), |(a, b, c)| {
                (format!("{a:.1}"), format!("{b:.1}"), format!("{c:.1}"))
            });
        let ops = m.ops_per_s.map_or("-".into(), |o| format!("{o:.0}"));
        out.push_str(&format!(
            "{:<8} {:<44} {:>7} {:>10} {:>10} {:>10} {:>12}\n",
            m.system, m.scenario, m.n, p50, p90, p99, ops
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentiles_us(&mut s), (50.0, 90.0, 99.0));
        let m = Measurement {
            system: "device".into(),
            scenario: "x".into(),
            n: 3,
            percentiles_us: None,
            ops_per_s: Some(12.34),
        };
        assert_eq!(
            m.json(),
            r#"{"n":3,"ops_per_s":12.3,"scenario":"x","system":"device"}"#
        );
    }
}
