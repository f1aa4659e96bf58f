//! The change points a history's newest run brought: those the history as of the run before
//! did not show. A nightly job is told of a change once, the first morning it can be seen
//! (at the newest run, or at an earlier one once enough runs after it make it significant),
//! and not again every morning after.

use serde::Serialize;

use super::series::{Change, Series};
use crate::address::Address;
use crate::results::metrics::Metric;

/// A change point the newest run brought, with the series it is in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewChange {
    pub test: Address,
    pub task: String,
    pub metric: Metric,
    pub unit: String,
    /// How many runs the level before the change rests on, and the level after it.
    pub runs_before: usize,
    pub runs_after: usize,
    #[serde(flatten)]
    pub change: Change,
}

/// The changes of `now` (every series of a history, its newest run `newest` included) that
/// `before` (the same series without that run) does not have at the same first run after.
pub fn news(now: &[Series], before: &[Series]) -> Vec<NewChange> {
    let mut found = Vec::new();
    for s in now {
        let known = (before.iter())
            .find(|b| b.test == s.test && b.task == s.task && b.metric == s.metric)
            .map_or(&[][..], |b| b.changes.as_slice());
        for (i, c) in s.changes.iter().enumerate() {
            if known.iter().any(|k| k.first_after == c.first_after) {
                continue;
            }
            let (runs_before, runs_after) = s.runs_around(i);
            found.push(NewChange {
                test: s.test.clone(),
                task: s.task.clone(),
                metric: s.metric,
                unit: s.unit.clone(),
                runs_before,
                runs_after,
                change: c.clone(),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::changepoints::Settings;
    use crate::history::series::{Filter, Raced, Versions, build};
    use crate::results::metrics::{TaskMetrics, Value};

    /// Nightly p50 latencies of one test's `search` task, one run each.
    fn nights(latencies: &[f64]) -> Vec<Raced> {
        (latencies.iter().enumerate())
            .map(|(i, &latency)| Raced {
                test: Address::new("s", "t").unwrap(),
                run: format!("run-{:02}", i + 1),
                time: None,
                config_hash: None,
                versions: Versions::default(),
                tasks: vec![TaskMetrics {
                    task: "search".into(),
                    duration_s: None,
                    metrics: [(Metric::LatencyP50, Value::new(latency, "ms".into()))].into(),
                }],
            })
            .collect()
    }

    /// The news of the history up to each night in turn.
    fn news_each_night(latencies: &[f64]) -> Vec<Vec<NewChange>> {
        let raced = nights(latencies);
        let series = |n: usize| build(&raced[..n], &Filter::default(), &Settings::default());
        (1..=raced.len())
            .map(|n| news(&series(n).unwrap(), &series(n - 1).unwrap()))
            .collect()
    }

    /// Searches 300 ms slower from night 6 on: the change is news on exactly one night,
    /// the one it is first found (here night 6 itself, one run after it), and it is a
    /// regression from run 5 to run 6 resting on five runs before and one after.
    #[test]
    fn a_change_is_news_once_the_first_night_it_is_found() {
        let mut latencies = vec![1.1, 0.9, 1.2, 1.0, 0.8];
        latencies.extend([301.0, 300.7, 301.3, 300.9, 301.2]);
        let news = news_each_night(&latencies);
        let told: Vec<(usize, &NewChange)> = (news.iter().enumerate())
            .flat_map(|(night, n)| n.iter().map(move |c| (night + 1, c)))
            .collect();
        let [(6, c)] = told.as_slice() else {
            panic!("{told:#?}")
        };
        assert_eq!(
            (c.change.last_before.as_str(), c.change.first_after.as_str()),
            ("run-05", "run-06")
        );
        assert_eq!(
            c.change.verdict,
            crate::history::series::Verdict::Regression
        );
        assert_eq!((c.runs_before, c.runs_after), (5, 1));
        assert_eq!((c.task.as_str(), c.metric), ("search", Metric::LatencyP50));
    }

    /// A change too small to tell from the noise on its first night is news on the night
    /// enough runs after it make it significant, still named at the run it came in.
    #[test]
    fn a_change_found_only_nights_later_is_news_then_at_its_own_run() {
        let latencies = [
            10.0, 10.4, 9.7, 10.2, 9.8, 12.1, 11.8, 12.3, 11.9, 12.2, 12.0,
        ];
        let news = news_each_night(&latencies);
        let told: Vec<(usize, &str)> = (news.iter().enumerate())
            .flat_map(|(night, n)| {
                n.iter()
                    .map(move |c| (night + 1, c.change.first_after.as_str()))
            })
            .collect();
        let [(night, "run-06")] = told.as_slice() else {
            panic!("{told:?}")
        };
        assert!(*night > 6, "{told:?}");
    }
}
