//! Comparing a contender run with a baseline run, metric by metric, knowing which way is better.
//!
//! Differences within the noise threshold are "same": cloud instances of one type differ by a
//! few percent from launch to launch, so smaller changes say nothing about the code raced.
//! A metric the baseline has and the contender lacks is "missing", and counts as a regression:
//! Rally leaves out the throughput of a task whose every request failed, so a vanished number
//! is as bad a sign as a worse one.

use serde::Serialize;

use super::load::{RunView, TestResult};
use super::metrics::{Direction, Metric, TaskMetrics};
use crate::address::Address;

/// The default noise threshold, in percent.
pub const DEFAULT_NOISE_PCT: f64 = 5.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Better,
    Worse,
    /// Changed by no more than the noise threshold.
    Same,
    /// In the baseline, not in the contender.
    Missing,
    /// In the contender, not in the baseline.
    New,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Better,
        Verdict::Worse,
        Verdict::Same,
        Verdict::Missing,
        Verdict::New,
    ];

    /// The identifier in CSV output, the same as in JSON.
    pub fn id(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::Same => "same",
            Verdict::Missing => "missing",
            Verdict::New => "new",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Better => "better",
            Verdict::Worse => "worse",
            Verdict::Same => "same within noise",
            Verdict::Missing => "missing",
            Verdict::New => "new",
        }
    }
}

/// One metric of one task of one test, in both runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub test: Address,
    pub task: String,
    pub metric: Metric,
    pub unit: String,
    pub baseline: Option<f64>,
    pub contender: Option<f64>,
    /// Contender minus baseline.
    pub diff: Option<f64>,
    /// The difference relative to the baseline, in percent; `None` from a baseline of zero.
    pub diff_pct: Option<f64>,
    pub verdict: Verdict,
    /// How much worse, in percent, whichever way the metric improves: positive is worse;
    /// infinite for a missing metric or a rise from zero (errors where there were none).
    #[serde(skip)]
    pub worsening_pct: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub workspace: String,
    pub baseline_run: Option<String>,
    pub contender_run: Option<String>,
    pub noise_pct: f64,
    pub rows: Vec<Row>,
    /// Files of either run that could not be read, so the comparison is incomplete.
    pub problems: Vec<String>,
}

/// Compares every metric of every task of every test of the two views.
pub fn compare<'a>(baseline: &'a RunView, contender: &'a RunView, noise_pct: f64) -> Comparison {
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut addresses: Vec<&Address> = contender
        .tests
        .iter()
        .chain(&baseline.tests)
        .map(|t| &t.address)
        .collect();
    addresses.sort();
    addresses.dedup();
    for address in addresses {
        let find = |tests: &'a [TestResult]| tests.iter().find(|t| &t.address == address);
        let (base, cont) = (find(&baseline.tests), find(&contender.tests));
        for (side, test) in [("baseline", base), ("contender", cont)] {
            for problem in test.iter().flat_map(|t| &t.problems) {
                problems.push(format!("{side} {address}: {problem}"));
            }
        }
        let no_tasks: &[TaskMetrics] = &[];
        let base_tasks = base.map_or(no_tasks, |t| &t.tasks);
        let cont_tasks = cont.map_or(no_tasks, |t| &t.tasks);
        // The contender's task order (Rally's schedule), then tasks only the baseline ran.
        let mut tasks: Vec<&str> = cont_tasks.iter().map(|t| t.task.as_str()).collect();
        for t in base_tasks {
            if !tasks.contains(&t.task.as_str()) {
                tasks.push(&t.task);
            }
        }
        for task in tasks {
            let find = |tasks: &[TaskMetrics]| tasks.iter().find(|t| t.task == task).cloned();
            let (b, c) = (find(base_tasks), find(cont_tasks));
            for metric in Metric::ALL {
                let bv = b.as_ref().and_then(|t| t.get(metric));
                let cv = c.as_ref().and_then(|t| t.get(metric));
                let Some(unit) = cv.or(bv).map(|v| v.unit.clone()) else {
                    continue;
                };
                rows.push(row(
                    address.clone(),
                    task.to_owned(),
                    metric,
                    unit,
                    bv.map(|v| v.value),
                    cv.map(|v| v.value),
                    noise_pct,
                ));
            }
        }
    }
    Comparison {
        workspace: contender.workspace.clone(),
        baseline_run: baseline.run.clone(),
        contender_run: contender.run.clone(),
        noise_pct,
        rows,
        problems,
    }
}

fn row(
    test: Address,
    task: String,
    metric: Metric,
    unit: String,
    baseline: Option<f64>,
    contender: Option<f64>,
    noise_pct: f64,
) -> Row {
    let (diff, diff_pct, verdict, worsening_pct) = match (baseline, contender) {
        (Some(b), Some(c)) => {
            let diff = c - b;
            let diff_pct = if b != 0.0 {
                Some(diff / b.abs() * 100.0)
            } else if c == 0.0 {
                Some(0.0)
            } else {
                None
            };
            let sign = match metric.direction() {
                Direction::HigherIsBetter => -1.0,
                Direction::LowerIsBetter => 1.0,
            };
            let worsening = diff_pct.map_or(sign * diff.signum() * f64::INFINITY, |p| sign * p);
            let verdict = if worsening.abs() <= noise_pct {
                Verdict::Same
            } else if worsening > 0.0 {
                Verdict::Worse
            } else {
                Verdict::Better
            };
            (Some(diff), diff_pct, verdict, worsening)
        }
        (Some(_), None) => (None, None, Verdict::Missing, f64::INFINITY),
        _ => (None, None, Verdict::New, f64::NEG_INFINITY),
    };
    Row {
        test,
        task,
        metric,
        unit,
        baseline,
        contender,
        diff,
        diff_pct,
        verdict,
        worsening_pct,
    }
}

impl Comparison {
    /// The rows that got worse by more than `threshold_pct` percent (missing ones included).
    pub fn regressions(&self, threshold_pct: f64) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.worsening_pct > threshold_pct)
            .collect()
    }

    /// How many rows have each verdict, in the order of [`Verdict::ALL`].
    pub fn counts(&self) -> Vec<(Verdict, usize)> {
        Verdict::ALL
            .into_iter()
            .map(|v| (v, self.rows.iter().filter(|r| r.verdict == v).count()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::results::metrics::Value;

    fn view(run: &str, tasks: &[(&str, &[(Metric, f64)])]) -> RunView {
        RunView {
            workspace: "w".into(),
            run: Some(run.into()),
            tests: vec![TestResult {
                address: Address::new("s", "t").unwrap(),
                run_id: Some(run.into()),
                status: Some("completed".into()),
                failure: None,
                instance_type: None,
                zone: None,
                repetitions: 1,
                variant: None,
                race_duration_s: None,
                race: None,
                tasks: tasks
                    .iter()
                    .map(|(task, metrics)| TaskMetrics {
                        task: (*task).into(),
                        duration_s: None,
                        metrics: metrics
                            .iter()
                            .map(|(m, v)| {
                                let unit = if *m == Metric::ErrorRate { "%" } else { "ms" };
                                (*m, Value::new(*v, unit.into()))
                            })
                            .collect::<BTreeMap<_, _>>(),
                    })
                    .collect(),
                problems: vec![],
            }],
        }
    }

    fn verdicts(c: &Comparison) -> Vec<(String, Metric, Verdict)> {
        c.rows
            .iter()
            .map(|r| (r.task.clone(), r.metric, r.verdict))
            .collect()
    }

    #[test]
    fn csv_verdicts_are_the_json_ones() {
        for v in Verdict::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.id());
        }
    }

    #[test]
    fn direction_decides_better_and_worse_and_noise_decides_same() {
        let base = view(
            "r1",
            &[(
                "bulk",
                &[
                    (Metric::Throughput, 1000.0),
                    (Metric::LatencyP50, 10.0),
                    (Metric::LatencyP90, 20.0),
                    (Metric::ServiceTimeP50, 10.0),
                ],
            )],
        );
        let cont = view(
            "r2",
            &[(
                "bulk",
                &[
                    (Metric::Throughput, 1100.0),   // +10 %: higher is better
                    (Metric::LatencyP50, 12.0),     // +20 %: lower is better
                    (Metric::LatencyP90, 19.5),     // -2.5 %: noise
                    (Metric::ServiceTimeP50, 10.5), // +5 % exactly: still noise
                ],
            )],
        );
        let c = compare(&base, &cont, DEFAULT_NOISE_PCT);
        assert_eq!(
            verdicts(&c),
            vec![
                ("bulk".into(), Metric::Throughput, Verdict::Better),
                ("bulk".into(), Metric::LatencyP50, Verdict::Worse),
                ("bulk".into(), Metric::LatencyP90, Verdict::Same),
                ("bulk".into(), Metric::ServiceTimeP50, Verdict::Same),
            ]
        );
        assert_eq!(c.rows[1].diff, Some(2.0));
        assert_eq!(c.rows[1].diff_pct, Some(20.0));
        let worse = |pct| {
            c.regressions(pct)
                .iter()
                .map(|r| r.metric)
                .collect::<Vec<_>>()
        };
        assert_eq!(worse(15.0), vec![Metric::LatencyP50]);
        assert_eq!(worse(25.0), vec![]);
        // The gate does not care about the noise threshold: 5 % worse fails a 4 % gate.
        assert_eq!(worse(4.0), vec![Metric::LatencyP50, Metric::ServiceTimeP50]);
        // A lower throughput is worse.
        let c = compare(&cont, &base, DEFAULT_NOISE_PCT);
        assert_eq!(c.rows[0].verdict, Verdict::Worse);
        assert!((c.rows[0].worsening_pct - 9.0909).abs() < 1e-3);
    }

    #[test]
    fn missing_metrics_and_new_tasks() {
        let base = view(
            "r1",
            &[(
                "search",
                &[(Metric::Throughput, 500.0), (Metric::ErrorRate, 0.0)],
            )],
        );
        let cont = view(
            "r2",
            &[
                ("search", &[(Metric::ErrorRate, 0.0)]),
                ("scroll", &[(Metric::Throughput, 20.0)]),
            ],
        );
        let c = compare(&base, &cont, DEFAULT_NOISE_PCT);
        assert_eq!(
            verdicts(&c),
            vec![
                ("search".into(), Metric::Throughput, Verdict::Missing),
                ("search".into(), Metric::ErrorRate, Verdict::Same),
                ("scroll".into(), Metric::Throughput, Verdict::New),
            ]
        );
        let regressions = c.regressions(50.0);
        assert_eq!(regressions.len(), 1, "only the missing metric regresses");
        assert_eq!(regressions[0].verdict, Verdict::Missing);
    }

    #[test]
    fn errors_where_there_were_none_are_worse_past_any_threshold() {
        let base = view("r1", &[("bulk", &[(Metric::ErrorRate, 0.0)])]);
        let cont = view("r2", &[("bulk", &[(Metric::ErrorRate, 0.01)])]);
        let c = compare(&base, &cont, DEFAULT_NOISE_PCT);
        assert_eq!(c.rows[0].verdict, Verdict::Worse);
        assert_eq!(c.rows[0].diff_pct, None);
        assert_eq!(c.regressions(1000.0).len(), 1);
        let c = compare(&cont, &base, DEFAULT_NOISE_PCT);
        assert_eq!(c.rows[0].verdict, Verdict::Better);
        assert!(c.regressions(0.0).is_empty());
    }
}
