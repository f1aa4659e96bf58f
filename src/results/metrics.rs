//! The headline metrics rallyctl shows and compares, and which way is better for each.

use std::collections::BTreeMap;

use serde::Serialize;

/// One of Rally's per-task headline numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Throughput,
    LatencyP50,
    LatencyP90,
    LatencyP99,
    ServiceTimeP50,
    ServiceTimeP90,
    ServiceTimeP99,
    ErrorRate,
}

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    HigherIsBetter,
    LowerIsBetter,
}

impl Metric {
    /// In the order every table and chart shows them.
    pub const ALL: [Metric; 8] = [
        Metric::Throughput,
        Metric::LatencyP50,
        Metric::LatencyP90,
        Metric::LatencyP99,
        Metric::ServiceTimeP50,
        Metric::ServiceTimeP90,
        Metric::ServiceTimeP99,
        Metric::ErrorRate,
    ];

    pub const LATENCIES: [Metric; 3] = [Metric::LatencyP50, Metric::LatencyP90, Metric::LatencyP99];

    pub const SERVICE_TIMES: [Metric; 3] = [
        Metric::ServiceTimeP50,
        Metric::ServiceTimeP90,
        Metric::ServiceTimeP99,
    ];

    /// The `Metric` column of Rally's CSV report that holds this metric.
    pub fn from_csv_name(name: &str) -> Option<Metric> {
        Some(match name {
            "Median Throughput" => Metric::Throughput,
            "50th percentile latency" => Metric::LatencyP50,
            "90th percentile latency" => Metric::LatencyP90,
            "99th percentile latency" => Metric::LatencyP99,
            "50th percentile service time" => Metric::ServiceTimeP50,
            "90th percentile service time" => Metric::ServiceTimeP90,
            "99th percentile service time" => Metric::ServiceTimeP99,
            "error rate" => Metric::ErrorRate,
            _ => return None,
        })
    }

    /// The identifier in CSV output, the same as in JSON.
    pub fn id(self) -> &'static str {
        match self {
            Metric::Throughput => "throughput",
            Metric::LatencyP50 => "latency_p50",
            Metric::LatencyP90 => "latency_p90",
            Metric::LatencyP99 => "latency_p99",
            Metric::ServiceTimeP50 => "service_time_p50",
            Metric::ServiceTimeP90 => "service_time_p90",
            Metric::ServiceTimeP99 => "service_time_p99",
            Metric::ErrorRate => "error_rate",
        }
    }

    /// The name people read in tables.
    pub fn label(self) -> &'static str {
        match self {
            Metric::Throughput => "throughput (median)",
            Metric::LatencyP50 => "latency p50",
            Metric::LatencyP90 => "latency p90",
            Metric::LatencyP99 => "latency p99",
            Metric::ServiceTimeP50 => "service time p50",
            Metric::ServiceTimeP90 => "service time p90",
            Metric::ServiceTimeP99 => "service time p99",
            Metric::ErrorRate => "error rate",
        }
    }

    pub fn direction(self) -> Direction {
        match self {
            Metric::Throughput => Direction::HigherIsBetter,
            _ => Direction::LowerIsBetter,
        }
    }
}

/// A number with the unit Rally reported it in (`docs/s`, `ops/s`, `ms`, `%`): one race's, or
/// the mean of a test's repetitions, each of which is kept in `samples`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Value {
    pub value: f64,
    pub unit: String,
    /// One value per repetition that counts, in the order they raced; empty for a lone race.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<f64>,
}

impl Value {
    pub fn new(value: f64, unit: String) -> Value {
        Value {
            value,
            unit,
            samples: vec![],
        }
    }

    /// The values of every race: the samples, or the lone value.
    pub fn races(&self) -> &[f64] {
        if self.samples.is_empty() {
            std::slice::from_ref(&self.value)
        } else {
            &self.samples
        }
    }
}

/// The headline metrics of one task of a race.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskMetrics {
    pub task: String,
    /// Seconds the task ran, from race.json (absent without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// Only the metrics Rally reported: it leaves out the 99th percentile below 100 samples and
    /// the throughput of a task whose every request failed.
    pub metrics: BTreeMap<Metric, Value>,
}

impl TaskMetrics {
    pub fn get(&self, metric: Metric) -> Option<&Value> {
        self.metrics.get(&metric)
    }

    /// The task's error rate when it is anything but zero: requests failed, so the race is no
    /// clean result (Rally exits 0 under `--on-error=continue` however many did).
    pub fn failed_requests(&self) -> Option<f64> {
        self.get(Metric::ErrorRate)
            .map(|v| v.value)
            .filter(|rate| *rate != 0.0)
    }
}

/// A number for people: two decimals, or three significant digits below 1 so sub-millisecond
/// latencies keep their information.
pub fn format_number(v: f64) -> String {
    if v != 0.0 && v.abs() < 1.0 {
        let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 9) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_identifiers_are_the_json_ones() {
        for m in Metric::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.id());
        }
    }

    #[test]
    fn numbers_keep_three_significant_digits_below_one() {
        assert_eq!(format_number(5033.547), "5033.55");
        assert_eq!(format_number(3.4898045), "3.49");
        assert_eq!(format_number(0.602865), "0.603");
        assert_eq!(format_number(0.0123456), "0.0123");
        assert_eq!(format_number(0.0), "0.00");
        assert_eq!(format_number(-0.5), "-0.500");
    }
}
