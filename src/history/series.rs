//! Each test's, task's and metric's series over the runs that raced it, and its change points
//! with a verdict for that metric.
//!
//! Plain data in, plain data out: the caller reads state and results and hands over what each
//! run raced ([`Raced`]), in run order.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Serialize;

use super::changepoints::{self, ChangePoint, ChangePointError, Settings};
use crate::address::Address;
use crate::results::metrics::{Direction, Metric, TaskMetrics};
use crate::results::stats::{LogRatio, Summary};

/// One test's result in one run.
pub struct Raced {
    pub test: Address,
    pub run: String,
    pub time: Option<jiff::Timestamp>,
    pub config_hash: Option<String>,
    pub versions: Versions,
    /// Each metric's value per counted repetition.
    pub tasks: Vec<TaskMetrics>,
}

/// Which series to build: empty lists take every one.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub tests: Vec<Address>,
    pub tasks: Vec<String>,
    pub metrics: Vec<Metric>,
}

impl Filter {
    fn takes(&self, test: &Address, task: &str, metric: Metric) -> bool {
        (self.tests.is_empty() || self.tests.contains(test))
            && (self.tasks.is_empty() || self.tasks.iter().any(|t| t == task))
            && (self.metrics.is_empty() || self.metrics.contains(&metric))
    }
}

/// What raced, as the run's race.json says: absent without one.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Versions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rally_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rally_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elasticsearch_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elasticsearch_revision: Option<String>,
}

impl Versions {
    /// Elasticsearch as a change names it: its version, and its commit when known, since
    /// nightly snapshot builds share a version.
    fn elasticsearch(&self) -> Option<String> {
        let version = self.elasticsearch_version.as_deref()?;
        Some(match &self.elasticsearch_revision {
            Some(r) => format!("{version} ({})", r.chars().take(12).collect::<String>()),
            None => version.to_owned(),
        })
    }
}

/// Elasticsearch before a change and after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionChange {
    pub before: String,
    pub after: String,
}

/// One run's point of a series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub run: String,
    /// When the run started.
    pub time: Option<jiff::Timestamp>,
    /// The median of the run's repetitions: one slow race does not move the series.
    pub value: f64,
    pub min: f64,
    pub max: f64,
    pub repetitions: usize,
    /// Each counted repetition's value, which the trends page draws; the other outputs give
    /// their count, min and max.
    #[serde(skip)]
    pub races: Vec<f64>,
    pub config_hash: Option<String>,
    #[serde(flatten)]
    pub versions: Versions,
}

/// Which way a change went for the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Regression,
    Improvement,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Regression => "regression",
            Verdict::Improvement => "improvement",
        }
    }
}

/// A change in level between two runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// The index in the series of the first point of the new level.
    pub index: usize,
    pub last_before: String,
    pub first_after: String,
    pub mean_before: f64,
    pub mean_after: f64,
    /// `mean_after / mean_before - 1`; none from a mean of 0.
    pub relative_change: Option<f64>,
    pub p_value: f64,
    pub verdict: Verdict,
    /// The first run after the change raced another configuration than the run before it:
    /// the change may be the configuration's, not the software's.
    pub configuration_changed: bool,
    /// The first run after the change raced another Elasticsearch than the run before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elasticsearch_changed: Option<VersionChange>,
}

/// A test's, task's and metric's values over the runs that raced it, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub test: Address,
    pub task: String,
    pub metric: Metric,
    pub unit: String,
    pub points: Vec<Point>,
    pub changes: Vec<Change>,
}

impl Series {
    /// The points the level before change `i` and the level after it rest on: from the change
    /// before (or the first run) to the change after (or the last run).
    pub fn levels(&self, i: usize) -> (Range<usize>, Range<usize>) {
        let c = &self.changes[i];
        let from = i.checked_sub(1).map_or(0, |p| self.changes[p].index);
        let to = (self.changes.get(i + 1)).map_or(self.points.len(), |n| n.index);
        (from..c.index, c.index..to)
    }

    /// How many runs the levels before and after change `i` rest on.
    pub fn runs_around(&self, i: usize) -> (usize, usize) {
        let (before, after) = self.levels(i);
        (before.len(), after.len())
    }

    /// The 95 % interval of change `i` in percent: Welch's t on the logs of the points of the
    /// two levels, as a comparison's interval is; none below two points a side or at a value
    /// of 0.
    pub fn interval_pct(&self, i: usize) -> Option<(f64, f64)> {
        let (before, after) = self.levels(i);
        let values =
            |r: Range<usize>| -> Vec<f64> { self.points[r].iter().map(|p| p.value).collect() };
        LogRatio::welch(&values(before), &values(after))
            .and_then(|r| r.interval_pct(0.95))
            .ok()
    }
}

/// A workspace's history as `rallyctl history` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub workspace: String,
    /// Runs with results in the workspace.
    pub runs: usize,
    pub max_pvalue: f64,
    pub min_magnitude: f64,
    /// How many series the filters took; `series` holds those shown (with a change, unless
    /// all were asked for).
    pub series_searched: usize,
    pub series: Vec<Series>,
}

/// The series `filter` takes from `raced` (in run order), each searched for change points.
pub fn build(
    raced: &[Raced],
    filter: &Filter,
    settings: &Settings,
) -> Result<Vec<Series>, ChangePointError> {
    let mut by_test: BTreeMap<&Address, Vec<&Raced>> = BTreeMap::new();
    for r in raced {
        by_test.entry(&r.test).or_default().push(r);
    }
    let tests: Vec<Vec<&Raced>> = by_test.into_values().collect();
    // A test's series are its own: each core builds and searches a share of the tests (a year
    // of nightly runs of 50 tests is hundreds of thousands of points).
    let built = crate::parallel::map(&tests, 1, |runs| test_series(runs, filter, settings));
    let mut series = Vec::new();
    for test in built {
        series.extend(test?);
    }
    Ok(series)
}

/// One test's series from the runs that raced it, in run order.
fn test_series(
    raced: &[&Raced],
    filter: &Filter,
    settings: &Settings,
) -> Result<Vec<Series>, ChangePointError> {
    let mut series: BTreeMap<(&str, Metric), Series> = BTreeMap::new();
    for r in raced {
        for task in &r.tasks {
            for (&metric, value) in &task.metrics {
                if !filter.takes(&r.test, &task.task, metric) {
                    continue;
                }
                let races = value.races();
                let (value_, min, max) = match Summary::of(races) {
                    Some(s) => (s.median, s.min, s.max),
                    None => (value.value, value.value, value.value),
                };
                let s = series
                    .entry((task.task.as_str(), metric))
                    .or_insert_with(|| Series {
                        test: r.test.clone(),
                        task: task.task.clone(),
                        metric,
                        unit: String::new(),
                        points: vec![],
                        changes: vec![],
                    });
                s.unit.clone_from(&value.unit);
                s.points.push(Point {
                    run: r.run.clone(),
                    time: r.time,
                    value: value_,
                    min,
                    max,
                    repetitions: races.len(),
                    races: races.to_vec(),
                    config_hash: r.config_hash.clone(),
                    versions: r.versions.clone(),
                });
            }
        }
    }
    let mut series: Vec<Series> = series.into_values().collect();
    for s in &mut series {
        let values: Vec<f64> = s.points.iter().map(|p| p.value).collect();
        s.changes = changepoints::change_points(&values, settings)?
            .iter()
            .map(|c| change(c, &s.points, s.metric))
            .collect();
    }
    Ok(series)
}

fn change(c: &ChangePoint, points: &[Point], metric: Metric) -> Change {
    let (before, after) = (&points[c.index - 1], &points[c.index]);
    let up = c.mean_after > c.mean_before;
    let verdict = match (metric.direction(), up) {
        (Direction::HigherIsBetter, true) | (Direction::LowerIsBetter, false) => {
            Verdict::Improvement
        }
        _ => Verdict::Regression,
    };
    Change {
        index: c.index,
        last_before: before.run.clone(),
        first_after: after.run.clone(),
        mean_before: c.mean_before,
        mean_after: c.mean_after,
        relative_change: c.relative_change,
        p_value: c.p_value,
        verdict,
        configuration_changed: matches!(
            (&before.config_hash, &after.config_hash),
            (Some(b), Some(a)) if a != b
        ),
        elasticsearch_changed: match (
            before.versions.elasticsearch(),
            after.versions.elasticsearch(),
        ) {
            (Some(before), Some(after)) if before != after => Some(VersionChange { before, after }),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::metrics::Value;

    fn raced(run: usize, hash: &str, throughput: &[f64], latency: f64) -> Raced {
        let mut throughput_value = Value::new(0.0, "docs/s".into());
        throughput_value.samples = throughput.to_vec();
        throughput_value.value = throughput.iter().sum::<f64>() / throughput.len() as f64;
        Raced {
            test: Address::new("s", "t").unwrap(),
            run: format!("run-{run:02}"),
            time: None,
            config_hash: Some(hash.into()),
            versions: Versions::default(),
            tasks: vec![TaskMetrics {
                task: "bulk".into(),
                duration_s: None,
                metrics: [
                    (Metric::Throughput, throughput_value),
                    (Metric::LatencyP50, Value::new(latency, "ms".into())),
                ]
                .into(),
            }],
        }
    }

    /// Throughput steps up (an improvement) and latency up (a regression) at run 10, where the
    /// configuration changed; each point is the median of its repetitions, min and max kept.
    #[test]
    fn a_step_is_found_at_its_run_with_the_metrics_verdict() {
        let runs: Vec<Raced> = (0..20)
            .map(|i| {
                let wiggle = [0.0, 3.0, -2.0, 1.0, -1.0][i % 5];
                let (level, hash) = if i < 10 { (100.0, "a") } else { (120.0, "b") };
                let t = level + wiggle;
                raced(
                    i,
                    hash,
                    &[t, t + 50.0, t - 1.0],
                    10.0 + (level - 100.0) / 2.0 + wiggle / 10.0,
                )
            })
            .collect();
        let series = build(&runs, &Filter::default(), &Settings::default()).unwrap();
        let [throughput, latency] = series.as_slice() else {
            panic!("{series:?}")
        };
        assert_eq!(throughput.metric, Metric::Throughput);
        assert_eq!(throughput.points[0].value, 100.0);
        assert_eq!(
            (throughput.points[0].min, throughput.points[0].max),
            (99.0, 150.0)
        );
        assert_eq!(throughput.points[0].repetitions, 3);
        for (s, verdict) in [
            (throughput, Verdict::Improvement),
            (latency, Verdict::Regression),
        ] {
            let [c] = s.changes.as_slice() else {
                panic!("{s:?}")
            };
            assert_eq!(
                (c.last_before.as_str(), c.first_after.as_str()),
                ("run-09", "run-10")
            );
            assert_eq!(c.verdict, verdict);
            assert!(c.configuration_changed);
        }
        let only = Filter {
            metrics: vec![Metric::LatencyP50],
            ..Filter::default()
        };
        let series = build(&runs, &only, &Settings::default()).unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].metric, Metric::LatencyP50);
    }
}
