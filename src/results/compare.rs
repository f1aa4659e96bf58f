//! Comparing a contender run with a baseline run, metric by metric, knowing which way is better
//! and how sure the difference is.
//!
//! With two or more repetitions on each side a comparison is a test: Welch's t on the logs
//! gives the relative change and its confidence interval, Holm-corrected over every
//! comparison of the compare (see [`super::stats`]). The verdict reads the whole interval
//! against `min_effect` (the smallest change worth acting on: cloud instances of one type
//! differ by a few percent from launch to launch):
//!
//! - **regression** / **improvement**: the whole interval lies beyond the min effect in the
//!   metric's bad / good direction;
//! - **no change**: the whole interval lies within ±min effect;
//! - **inconclusive**: otherwise, with the repetitions per side that would likely settle it.
//!
//! With one race on a side there is no spread to test with: the point change is held against
//! the min effect (method `threshold`), as is any metric with a zero among its values (no
//! logarithm), so a rise of the error rate from zero is a regression whatever the repetitions.
//! A metric the baseline has and the contender lacks is **missing** and counts as a
//! regression: Rally leaves out the throughput of a task whose every request failed.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ResultsError;
use super::load::{RunView, TestResult};
use super::metrics::{Direction, Metric, TaskMetrics, Value};
use super::parse::{Configuration, RaceInfo};
use super::stats::{self, LogRatio, Needed, StatsError, Summary};
use crate::address::Address;

/// The default min effect, in percent.
pub const DEFAULT_MIN_EFFECT_PCT: f64 = 5.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Regression,
    Improvement,
    NoChange,
    Inconclusive,
    /// In the baseline, not in the contender.
    Missing,
    /// In the contender, not in the baseline.
    New,
}

impl Verdict {
    pub const ALL: [Verdict; 6] = [
        Verdict::Regression,
        Verdict::Improvement,
        Verdict::NoChange,
        Verdict::Inconclusive,
        Verdict::Missing,
        Verdict::New,
    ];

    /// The identifier in CSV output, the same as in JSON.
    pub fn id(self) -> &'static str {
        match self {
            Verdict::Regression => "regression",
            Verdict::Improvement => "improvement",
            Verdict::NoChange => "no_change",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Missing => "missing",
            Verdict::New => "new",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::NoChange => "no change",
            v => v.id(),
        }
    }

    /// What fails `--fail-on-regression`.
    pub fn fails_the_gate(self) -> bool {
        matches!(self, Verdict::Regression | Verdict::Missing)
    }
}

/// How a row's verdict was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Welch's t on the logs, Holm-corrected.
    WelchLog,
    /// The point change against the min effect: one race on a side, or a zero among the values.
    Threshold,
}

impl Method {
    pub fn id(self) -> &'static str {
        match self {
            Method::WelchLog => "welch_log",
            Method::Threshold => "threshold",
        }
    }
}

/// A metric's races on one side of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    pub n: usize,
    pub mean: f64,
    /// The spread, from two races on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
}

impl Side {
    fn of(value: &Value) -> Side {
        let races = value.races();
        Side {
            n: races.len(),
            mean: value.value,
            summary: Summary::of(races),
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
    pub baseline: Option<Side>,
    pub contender: Option<Side>,
    /// The relative change in percent: of the geometric means for `welch_log`, of the means
    /// for `threshold`; none from a baseline of zero.
    pub change_pct: Option<f64>,
    /// The interval of the change, at `confidence_pct` (`welch_log` only).
    pub ci_low_pct: Option<f64>,
    pub ci_high_pct: Option<f64>,
    /// The confidence of the interval after Holm's correction.
    pub confidence_pct: Option<f64>,
    /// Holm-adjusted, against "no change".
    pub p_value: Option<f64>,
    pub verdict: Verdict,
    /// None for a missing or new metric.
    pub method: Option<Method>,
    /// For an inconclusive comparison: repetitions per side that would likely settle it.
    pub repetitions_needed: Option<Needed>,
}

impl Row {
    /// One race on either side: the verdict is a threshold, not a test.
    pub fn single_race(&self) -> bool {
        self.method == Some(Method::Threshold)
            && [&self.baseline, &self.contender]
                .iter()
                .any(|s| s.as_ref().is_some_and(|s| s.n < 2))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub workspace: String,
    pub baseline_run: Option<String>,
    pub contender_run: Option<String>,
    /// Set when the variants of each test of one run are compared: the one the others are
    /// compared with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_variant: Option<String>,
    pub min_effect_pct: f64,
    /// The confidence of each interval before correction.
    pub confidence_pct: f64,
    /// `holm`, over the `tested` rows of method `welch_log`.
    pub correction: &'static str,
    pub tested: usize,
    pub rows: Vec<Row>,
    /// Tests whose two sides ran the same workload with another configuration, and what
    /// changed: the verdicts measure that change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub configuration_changes: Vec<ConfigurationChange>,
    /// Variants compared although their races were not interleaved (`--allow-unpaired`), each
    /// saying where the two raced.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unpaired: Vec<String>,
    /// Files of either run that could not be read, so the comparison is incomplete.
    pub problems: Vec<String>,
}

/// A test whose baseline and contender ran different configurations of one workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigurationChange {
    pub test: Address,
    /// As `plan` shows a re-run's: a unified diff of the settings and race command, or the
    /// files whose content changed.
    pub diff: String,
}

/// A test whose baseline and contender raced different workloads, and each way they differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub test: Address,
    pub differences: Vec<String>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.test, self.differences.join("; "))
    }
}

/// What a test raced: its track by name and content, its challenge and its track parameters.
/// From the configuration rallyctl recorded when a side has one, else from Rally's race.json
/// (which names every uploaded track `track`, so two local tracks tell apart only by the
/// former).
struct Workload {
    track: Option<String>,
    /// A local track's files by path in the track, each with its sha256; none for a track of
    /// Rally's repository or when unknown.
    track_files: Option<BTreeMap<String, String>>,
    challenge: Option<String>,
    /// An object, empty when there are none.
    track_params: serde_json::Value,
}

impl Workload {
    fn configured(c: &Configuration) -> Workload {
        let s = &c.settings;
        let track = &s["track"];
        let (name, path) = match (
            track.as_str(),
            track["named"].as_str(),
            track["path"].as_str(),
        ) {
            (Some(name), ..) | (_, Some(name), _) => (Some(name.to_owned()), None),
            (.., Some(path)) => (Some(path.to_owned()), Some(path)),
            _ => (None, None),
        };
        let track_files = path.filter(|_| !c.inputs.is_empty()).map(|path| {
            let prefix = format!("{path}/");
            c.inputs
                .iter()
                .filter_map(|(name, sha)| {
                    Some((name.strip_prefix(&prefix)?.to_owned(), sha.clone()))
                })
                .collect()
        });
        Workload {
            track: name,
            track_files,
            challenge: s["challenge"].as_str().map(str::to_owned),
            track_params: params(s.get("track_params")),
        }
    }

    fn raced(race: &RaceInfo) -> Workload {
        Workload {
            track: race.track.clone(),
            track_files: None,
            challenge: race.challenge.clone(),
            track_params: params(race.track_params.as_ref()),
        }
    }
}

/// Track parameters as an object, `{}` for none (Rally leaves them out of race.json then).
fn params(value: Option<&serde_json::Value>) -> serde_json::Value {
    match value {
        Some(v) if !v.is_null() => v.clone(),
        _ => serde_json::json!({}),
    }
}

/// How the workloads of a test's two sides differ. Both sides' recorded configurations are
/// compared in full; where either lacks one (results collected before rallyctl kept it), their
/// race.json files are, and a name only one of them gives is taken on trust.
fn workload_differences(base: &TestResult, cont: &TestResult) -> Vec<String> {
    let (b, c, recorded) = match (&base.configuration, &cont.configuration) {
        (Some(b), Some(c)) => (Workload::configured(b), Workload::configured(c), true),
        _ => match (&base.race, &cont.race) {
            (Some(b), Some(c)) => (Workload::raced(b), Workload::raced(c), false),
            _ => return vec![],
        },
    };
    let apart = |x: &Option<String>, y: &Option<String>| {
        if recorded {
            x != y
        } else {
            matches!((x, y), (Some(x), Some(y)) if x != y)
        }
    };
    let name = |x: &Option<String>, default: &str| x.clone().unwrap_or_else(|| default.into());
    let mut out = Vec::new();
    if apart(&b.track, &c.track) {
        out.push(format!(
            "the baseline raced track {}, the contender track {}",
            name(&b.track, "(unknown)"),
            name(&c.track, "(unknown)")
        ));
    } else if let (Some(bf), Some(cf)) = (&b.track_files, &c.track_files)
        && bf != cf
    {
        let files: std::collections::BTreeSet<&String> = bf.keys().chain(cf.keys()).collect();
        let differing: Vec<&str> = files
            .into_iter()
            .filter(|f| bf.get(*f) != cf.get(*f))
            .map(String::as_str)
            .collect();
        out.push(format!(
            "track {} has other content (files that differ: {})",
            name(&b.track, "(unknown)"),
            differing.join(", ")
        ));
    }
    if apart(&b.challenge, &c.challenge) {
        out.push(format!(
            "the baseline raced challenge {}, the contender challenge {}",
            name(&b.challenge, "(the track's default)"),
            name(&c.challenge, "(the track's default)")
        ));
    }
    if b.track_params != c.track_params {
        out.push(format!(
            "the baseline raced track params {}, the contender track params {}",
            b.track_params, c.track_params
        ));
    }
    out
}

/// How a test's two sides raced on different machines, when both configurations are known:
/// another cluster, or a cluster on one side only.
fn topology_change(base: &TestResult, cont: &TestResult) -> Option<String> {
    base.configuration.as_ref()?;
    cont.configuration.as_ref()?;
    if base.topology == cont.topology {
        return None;
    }
    let on = |t: &Option<String>| match t {
        Some(t) => format!("a cluster of {t}"),
        None => "one machine".to_owned(),
    };
    Some(format!(
        "the baseline raced on {}, the contender on {}",
        on(&base.topology),
        on(&cont.topology)
    ))
}

/// What changed between the configurations of a test's two sides, when both are known and
/// differ.
fn configuration_change(
    address: &Address,
    base: &TestResult,
    cont: &TestResult,
) -> Option<ConfigurationChange> {
    let (b, c) = (base.configuration.as_ref()?, cont.configuration.as_ref()?);
    if b.config_hash == c.config_hash {
        return None;
    }
    let pretty =
        |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("JSON values serialize");
    let (bs, cs) = (pretty(&b.settings), pretty(&c.settings));
    let diff = crate::planner::config_diff(
        &crate::planner::Described {
            label: "baseline",
            settings: &bs,
            race_command: &b.race_command,
            inputs: &b.inputs,
        },
        &crate::planner::Described {
            label: "contender",
            settings: &cs,
            race_command: &c.race_command,
            inputs: &c.inputs,
        },
    );
    Some(ConfigurationChange {
        test: address.clone(),
        diff,
    })
}

/// A row before the correction, with what its verdict still needs.
struct Pending {
    row: Row,
    test: Option<LogRatio>,
}

/// Compares every metric of every task of every test of the two views. Refuses, naming each
/// and how, tests whose two runs raced a different workload (track by name and content,
/// challenge, track params): their numbers measure different things. Tests whose
/// configuration changed otherwise are compared, and the comparison says what changed.
pub fn compare(
    baseline: &RunView,
    contender: &RunView,
    min_effect_pct: f64,
) -> Result<Comparison, ResultsError> {
    compare_runs(baseline, contender, min_effect_pct, Allow::default())
}

/// What a comparison of two runs lets through that it refuses otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allow {
    /// Tests whose cluster differs between the runs (its nodes, their type, the load
    /// drivers), or that raced on a cluster in one run and on one machine in the other: their
    /// numbers measure that change (`--allow-topology-change`).
    pub topology_change: bool,
}

/// [`compare`], letting through what `allow` says.
pub fn compare_runs(
    baseline: &RunView,
    contender: &RunView,
    min_effect_pct: f64,
    allow: Allow,
) -> Result<Comparison, ResultsError> {
    compare_views(baseline, contender, min_effect_pct, Some(allow))
}

/// [`compare`] for the variants of tests: they may differ in anything, their workload too,
/// since the plan says so; the comparison says how.
pub fn compare_variants(
    baseline: &RunView,
    contender: &RunView,
    min_effect_pct: f64,
) -> Result<Comparison, ResultsError> {
    compare_views(baseline, contender, min_effect_pct, None)
}

/// Compares two views: two runs when `runs` says what they may differ in besides the
/// configuration, variants of one run (which may differ in anything) when none.
fn compare_views(
    baseline: &RunView,
    contender: &RunView,
    min_effect_pct: f64,
    runs: Option<Allow>,
) -> Result<Comparison, ResultsError> {
    let index = |view: &'_ RunView| -> BTreeMap<Address, usize> {
        view.tests
            .iter()
            .enumerate()
            .map(|(i, t)| (t.address.clone(), i))
            .collect()
    };
    let (base_index, cont_index) = (index(baseline), index(contender));
    let mut addresses: Vec<&Address> = base_index.keys().chain(cont_index.keys()).collect();
    addresses.sort();
    addresses.dedup();

    let mut mismatches = Vec::new();
    let mut other_clusters = Vec::new();
    let mut configuration_changes = Vec::new();
    for address in &addresses {
        let base = base_index.get(*address).map(|&i| &baseline.tests[i]);
        let cont = cont_index.get(*address).map(|&i| &contender.tests[i]);
        let (Some(b), Some(c)) = (base, cont) else {
            continue;
        };
        let Some(allow) = runs else {
            configuration_changes.extend(configuration_change(address, b, c));
            continue;
        };
        let differences = workload_differences(b, c);
        if !differences.is_empty() {
            mismatches.push(Mismatch {
                test: (*address).clone(),
                differences,
            });
            continue;
        }
        match topology_change(b, c).filter(|_| !allow.topology_change) {
            Some(change) => other_clusters.push(Mismatch {
                test: (*address).clone(),
                differences: vec![change],
            }),
            None => configuration_changes.extend(configuration_change(address, b, c)),
        }
    }
    if !mismatches.is_empty() {
        return Err(ResultsError::DifferentWorkloads(mismatches));
    }
    if !other_clusters.is_empty() {
        return Err(ResultsError::DifferentTopologies(other_clusters));
    }

    // Rows are independent until Holm's correction, and independent again after it: each half
    // of the work runs on the cores there are (a compare of 10,000 tests takes a second alone).
    let built: Vec<Result<Share, StatsError>> =
        crate::parallel::shares(&addresses, PARALLEL_TESTS, |_, share| {
            let mut pending = Vec::new();
            let mut problems = Vec::new();
            for address in share {
                let base = base_index.get(*address).map(|&i| &baseline.tests[i]);
                let cont = cont_index.get(*address).map(|&i| &contender.tests[i]);
                test_rows(
                    address,
                    base,
                    cont,
                    min_effect_pct,
                    &mut pending,
                    &mut problems,
                )?;
            }
            Ok((pending, problems))
        });
    let mut pending = Vec::new();
    let mut problems = Vec::new();
    for share in built {
        let (rows, problem) = share?;
        pending.extend(rows);
        problems.extend(problem);
    }

    let tested: Vec<usize> = (0..pending.len())
        .filter(|&i| pending[i].test.is_some())
        .collect();
    let p_values: Vec<f64> = tested
        .iter()
        .filter_map(|&i| pending[i].test.as_ref().map(|t| t.p_value))
        .collect();
    let mut levels: Vec<Option<stats::Adjusted>> = vec![None; pending.len()];
    for (&i, adjusted) in tested.iter().zip(stats::holm(&p_values, stats::ALPHA)) {
        levels[i] = Some(adjusted);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = pending
        .len()
        .div_ceil(threads)
        .max(PARALLEL_TESTS * Metric::ALL.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = pending
            .chunks_mut(per_thread)
            .zip(levels.chunks(per_thread))
            .map(|(rows, levels)| {
                scope.spawn(move || {
                    let mut quantiles = stats::Quantiles::default();
                    for (Pending { row, test }, adjusted) in rows.iter_mut().zip(levels) {
                        if let (Some(test), Some(adjusted)) = (test, adjusted) {
                            decide(row, test, *adjusted, min_effect_pct, &mut quantiles)?;
                        }
                    }
                    Ok::<(), ResultsError>(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("deciding verdicts does not panic"))
    })?;
    Ok(Comparison {
        workspace: contender.workspace.clone(),
        baseline_run: baseline.run.clone(),
        contender_run: contender.run.clone(),
        baseline_variant: None,
        min_effect_pct,
        confidence_pct: stats::CONFIDENCE * 100.0,
        correction: "holm",
        tested: tested.len(),
        rows: pending.into_iter().map(|p| p.row).collect(),
        configuration_changes,
        unpaired: vec![],
        problems,
    })
}

/// The rows of a share of the tests, and their problems.
type Share = (Vec<Pending>, Vec<String>);

/// Below this many tests a thread of its own is not worth starting.
const PARALLEL_TESTS: usize = 1000;

/// The rows of one test, every metric of every task either run has, and its problems.
fn test_rows(
    address: &Address,
    base: Option<&TestResult>,
    cont: Option<&TestResult>,
    min_effect_pct: f64,
    pending: &mut Vec<Pending>,
    problems: &mut Vec<String>,
) -> Result<(), StatsError> {
    for (side, test) in [("baseline", base), ("contender", cont)] {
        for problem in test.iter().flat_map(|t| &t.problems) {
            problems.push(format!("{side} {address}: {problem}"));
        }
    }
    let base_tasks = base.map_or(&[][..], |t| &t.tasks);
    let cont_tasks = cont.map_or(&[][..], |t| &t.tasks);
    // The contender's task order (Rally's schedule), then tasks only the baseline ran.
    let mut tasks: Vec<&str> = cont_tasks.iter().map(|t| t.task.as_str()).collect();
    for t in base_tasks {
        if !tasks.contains(&t.task.as_str()) {
            tasks.push(&t.task);
        }
    }
    for task in tasks {
        let find = |tasks: &'_ [TaskMetrics]| tasks.iter().position(|t| t.task == task);
        let b = find(base_tasks).map(|i| &base_tasks[i]);
        let c = find(cont_tasks).map(|i| &cont_tasks[i]);
        for metric in Metric::ALL {
            let bv = b.and_then(|t| t.get(metric));
            let cv = c.and_then(|t| t.get(metric));
            if bv.is_none() && cv.is_none() {
                continue;
            }
            pending.push(row(address, task, metric, bv, cv, min_effect_pct)?);
        }
    }
    Ok(())
}

/// How much worse, in percent, whichever way the metric improves: positive is worse.
fn worsening(metric: Metric, change_pct: f64) -> f64 {
    match metric.direction() {
        Direction::HigherIsBetter => -change_pct,
        Direction::LowerIsBetter => change_pct,
    }
}

/// A row with its verdict when no test is needed; else the test still to be corrected.
fn row(
    test: &Address,
    task: &str,
    metric: Metric,
    baseline: Option<&Value>,
    contender: Option<&Value>,
    min_effect_pct: f64,
) -> Result<Pending, StatsError> {
    let mut row = Row {
        test: test.clone(),
        task: task.to_owned(),
        metric,
        unit: contender
            .or(baseline)
            .map_or(String::new(), |v| v.unit.clone()),
        baseline: baseline.map(Side::of),
        contender: contender.map(Side::of),
        change_pct: None,
        ci_low_pct: None,
        ci_high_pct: None,
        confidence_pct: None,
        p_value: None,
        verdict: Verdict::New,
        method: None,
        repetitions_needed: None,
    };
    let (b, c) = match (baseline, contender) {
        (Some(b), Some(c)) => (b, c),
        (Some(_), None) => {
            row.verdict = Verdict::Missing;
            return Ok(Pending { row, test: None });
        }
        _ => return Ok(Pending { row, test: None }),
    };
    // A test where it can be computed: two races a side, every value positive.
    match LogRatio::welch(b.races(), c.races()) {
        Ok(test) => {
            row.method = Some(Method::WelchLog);
            row.change_pct = Some(test.change_pct());
            return Ok(Pending {
                row,
                test: Some(test),
            });
        }
        Err(StatsError::TooFew(..) | StatsError::NotPositive(_)) => {}
        Err(e) => return Err(e),
    }
    row.method = Some(Method::Threshold);
    let (bm, cm) = (b.value, c.value);
    if let Some(bad) = [bm, cm].into_iter().find(|v| !v.is_finite()) {
        return Err(StatsError::NotFinite(bad));
    }
    let worse = if bm != 0.0 {
        let change = (cm - bm) / bm.abs() * 100.0;
        row.change_pct = Some(change);
        worsening(metric, change)
    } else if cm == 0.0 {
        row.change_pct = Some(0.0);
        0.0
    } else {
        // From zero, say errors where there were none: past any min effect.
        worsening(metric, cm.signum() * f64::INFINITY)
    };
    row.verdict = if worse > min_effect_pct {
        Verdict::Regression
    } else if worse < -min_effect_pct {
        Verdict::Improvement
    } else {
        Verdict::NoChange
    };
    Ok(Pending { row, test: None })
}

/// The verdict of a tested row from its interval at the Holm-adjusted level.
fn decide(
    row: &mut Row,
    test: &LogRatio,
    adjusted: stats::Adjusted,
    min_effect_pct: f64,
    quantiles: &mut stats::Quantiles,
) -> Result<(), ResultsError> {
    let (lo, hi) = test.interval_pct(adjusted.level)?;
    row.ci_low_pct = Some(lo);
    row.ci_high_pct = Some(hi);
    row.confidence_pct = Some(adjusted.level * 100.0);
    row.p_value = Some(adjusted.p_value);
    let (w_lo, w_hi) = {
        let (a, b) = (worsening(row.metric, lo), worsening(row.metric, hi));
        (a.min(b), a.max(b))
    };
    row.verdict = if w_lo > min_effect_pct {
        Verdict::Regression
    } else if w_hi < -min_effect_pct {
        Verdict::Improvement
    } else if w_lo >= -min_effect_pct && w_hi <= min_effect_pct {
        Verdict::NoChange
    } else {
        row.repetitions_needed =
            Some(test.repetitions_needed(min_effect_pct, adjusted.level, quantiles)?);
        Verdict::Inconclusive
    };
    Ok(())
}

impl Comparison {
    /// The rows that fail `--fail-on-regression`: regressions and missing metrics.
    pub fn regressions(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.verdict.fails_the_gate())
            .collect()
    }

    pub fn inconclusive(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Inconclusive)
            .collect()
    }

    /// How many rows have each verdict, in the order of [`Verdict::ALL`].
    pub fn counts(&self) -> Vec<(Verdict, usize)> {
        Verdict::ALL
            .into_iter()
            .map(|v| (v, self.rows.iter().filter(|r| r.verdict == v).count()))
            .collect()
    }

    /// How many rows held one race against a threshold.
    pub fn single_races(&self) -> usize {
        self.rows.iter().filter(|r| r.single_race()).count()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::results::parse::RaceInfo;

    /// Per task, per metric, the value of every race.
    type Races<'a> = [(&'a str, &'a [(Metric, &'a [f64])])];

    /// A view of one test `s.t`.
    fn view(run: &str, tasks: &Races<'_>) -> RunView {
        RunView {
            workspace: "w".into(),
            run: Some(run.into()),
            cost: None,
            tests: vec![TestResult {
                address: Address::new("s", "t").unwrap(),
                run_id: Some(run.into()),
                status: Some("completed".into()),
                failure: None,
                logs: None,
                instance_type: None,
                topology: None,
                zone: None,
                spot: false,
                repetitions: 1,
                variant: None,
                race_duration_s: None,
                cost: None,
                race: None,
                tasks: tasks
                    .iter()
                    .map(|(task, metrics)| TaskMetrics {
                        task: (*task).into(),
                        duration_s: None,
                        metrics: metrics
                            .iter()
                            .map(|(m, races)| {
                                let unit = if *m == Metric::ErrorRate { "%" } else { "ms" };
                                let mean = races.iter().sum::<f64>() / races.len() as f64;
                                let mut v = Value::new(mean, unit.into());
                                if races.len() > 1 {
                                    v.samples = races.to_vec();
                                }
                                (*m, v)
                            })
                            .collect::<BTreeMap<_, _>>(),
                    })
                    .collect(),
                problems: vec![],
                configuration: None,
                raced_on: vec![],
            }],
        }
    }

    fn verdicts(c: &Comparison) -> Vec<(Metric, Verdict, Option<Method>)> {
        c.rows
            .iter()
            .map(|r| (r.metric, r.verdict, r.method))
            .collect()
    }

    #[test]
    fn csv_verdicts_and_methods_are_the_json_ones() {
        for v in Verdict::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.id());
        }
        for m in [Method::WelchLog, Method::Threshold] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.id());
        }
    }

    #[test]
    fn one_race_a_side_is_a_threshold_in_the_metrics_direction() {
        let base = view(
            "r1",
            &[(
                "bulk",
                &[
                    (Metric::Throughput, &[1000.0]),
                    (Metric::LatencyP50, &[10.0]),
                    (Metric::LatencyP90, &[20.0]),
                    (Metric::ServiceTimeP50, &[10.0]),
                ],
            )],
        );
        let cont = view(
            "r2",
            &[(
                "bulk",
                &[
                    (Metric::Throughput, &[1100.0]),   // +10 %: higher is better
                    (Metric::LatencyP50, &[12.0]),     // +20 %: lower is better
                    (Metric::LatencyP90, &[19.5]),     // -2.5 %: within the min effect
                    (Metric::ServiceTimeP50, &[10.5]), // +5 % exactly: still within
                ],
            )],
        );
        let c = compare(&base, &cont, DEFAULT_MIN_EFFECT_PCT).unwrap();
        let t = Some(Method::Threshold);
        assert_eq!(
            verdicts(&c),
            vec![
                (Metric::Throughput, Verdict::Improvement, t),
                (Metric::LatencyP50, Verdict::Regression, t),
                (Metric::LatencyP90, Verdict::NoChange, t),
                (Metric::ServiceTimeP50, Verdict::NoChange, t),
            ]
        );
        assert_eq!(c.rows[1].change_pct, Some(20.0));
        assert_eq!((c.rows[1].p_value, c.rows[1].ci_low_pct), (None, None));
        assert_eq!((c.tested, c.single_races()), (0, 4));
        assert_eq!(c.regressions().len(), 1);
        // Lower throughput is a regression.
        let c = compare(&cont, &base, DEFAULT_MIN_EFFECT_PCT).unwrap();
        assert_eq!(c.rows[0].verdict, Verdict::Regression);
    }

    #[test]
    fn repetitions_are_tested_and_the_interval_decides() {
        let base = view(
            "r1",
            &[(
                "bulk",
                &[
                    (Metric::Throughput, &[1000.0, 1010.0, 990.0, 1005.0, 995.0]),
                    (Metric::LatencyP50, &[10.0, 10.1, 9.9, 10.05, 9.95]),
                    (Metric::LatencyP90, &[20.0, 20.2, 19.8, 20.1, 19.9]),
                    (Metric::LatencyP99, &[30.0, 36.0, 25.0, 33.0, 27.0]),
                    (Metric::ErrorRate, &[0.0, 0.0, 0.0, 0.0, 0.0]),
                ],
            )],
        );
        let cont = view(
            "r2",
            &[(
                "bulk",
                &[
                    // About +20 % throughput, tight: an improvement.
                    (
                        Metric::Throughput,
                        &[1200.0, 1210.0, 1190.0, 1205.0, 1195.0],
                    ),
                    // About +20 % latency, tight: a regression.
                    (Metric::LatencyP50, &[12.0, 12.1, 11.9, 12.05, 11.95]),
                    // Within 1 %, tight: no change.
                    (Metric::LatencyP90, &[20.1, 20.3, 19.9, 20.2, 20.0]),
                    // +5 % on noisy numbers: inconclusive.
                    (Metric::LatencyP99, &[31.5, 37.8, 26.2, 34.6, 28.4]),
                    // A rise from zero: a regression whatever the repetitions.
                    (Metric::ErrorRate, &[0.0, 0.0, 0.5, 0.0, 0.0]),
                ],
            )],
        );
        let c = compare(&base, &cont, DEFAULT_MIN_EFFECT_PCT).unwrap();
        let (w, t) = (Some(Method::WelchLog), Some(Method::Threshold));
        assert_eq!(
            verdicts(&c),
            vec![
                (Metric::Throughput, Verdict::Improvement, w),
                (Metric::LatencyP50, Verdict::Regression, w),
                (Metric::LatencyP90, Verdict::NoChange, w),
                (Metric::LatencyP99, Verdict::Inconclusive, w),
                (Metric::ErrorRate, Verdict::Regression, t),
            ]
        );
        assert_eq!(c.tested, 4);
        assert_eq!(c.single_races(), 0, "the error rate had five races a side");
        let p99 = &c.rows[3];
        assert!(
            matches!(p99.repetitions_needed, Some(Needed::PerSide(n) | Needed::MoreThan(n)) if n > 5)
        );
        assert!(p99.ci_low_pct.unwrap() < 0.0 && p99.ci_high_pct.unwrap() > 5.0);
        // Holm: the smallest p gets the strictest level, 1 - 0.05/4.
        let levels: Vec<f64> = c.rows[..4]
            .iter()
            .map(|r| r.confidence_pct.unwrap())
            .collect();
        assert!(
            levels.iter().any(|l| (l - 98.75).abs() < 1e-9),
            "{levels:?}"
        );
        assert!(c.rows[0].baseline.as_ref().unwrap().summary.is_some());
        assert_eq!(c.inconclusive().len(), 1);
        assert_eq!(c.regressions().len(), 2);
    }

    #[test]
    fn one_race_against_many_is_a_threshold() {
        let base = view("r1", &[("bulk", &[(Metric::LatencyP50, &[10.0])])]);
        let cont = view(
            "r2",
            &[("bulk", &[(Metric::LatencyP50, &[10.2, 10.4, 10.3])])],
        );
        let c = compare(&base, &cont, DEFAULT_MIN_EFFECT_PCT).unwrap();
        assert_eq!(c.rows[0].method, Some(Method::Threshold));
        assert_eq!(c.rows[0].verdict, Verdict::NoChange);
        assert!(c.rows[0].single_race());
    }

    #[test]
    fn missing_metrics_and_new_tasks() {
        let base = view(
            "r1",
            &[(
                "search",
                &[(Metric::Throughput, &[500.0]), (Metric::ErrorRate, &[0.0])],
            )],
        );
        let cont = view(
            "r2",
            &[
                ("search", &[(Metric::ErrorRate, &[0.0])]),
                ("scroll", &[(Metric::Throughput, &[20.0])]),
            ],
        );
        let c = compare(&base, &cont, DEFAULT_MIN_EFFECT_PCT).unwrap();
        assert_eq!(
            verdicts(&c),
            vec![
                (Metric::Throughput, Verdict::Missing, None),
                (
                    Metric::ErrorRate,
                    Verdict::NoChange,
                    Some(Method::Threshold)
                ),
                (Metric::Throughput, Verdict::New, None),
            ]
        );
        let regressions = c.regressions();
        assert_eq!(regressions.len(), 1, "only the missing metric regresses");
        assert_eq!(regressions[0].verdict, Verdict::Missing);
    }

    #[test]
    fn errors_where_there_were_none_are_a_regression() {
        let base = view("r1", &[("bulk", &[(Metric::ErrorRate, &[0.0])])]);
        let cont = view("r2", &[("bulk", &[(Metric::ErrorRate, &[0.01])])]);
        let c = compare(&base, &cont, DEFAULT_MIN_EFFECT_PCT).unwrap();
        assert_eq!(c.rows[0].verdict, Verdict::Regression);
        assert_eq!(c.rows[0].change_pct, None);
        let c = compare(&cont, &base, DEFAULT_MIN_EFFECT_PCT).unwrap();
        assert_eq!(c.rows[0].verdict, Verdict::Improvement);
        assert!(c.regressions().is_empty());
    }

    #[test]
    fn a_value_no_race_reports_is_an_error_not_a_verdict() {
        for races in [&[f64::NAN][..], &[10.0, f64::INFINITY]] {
            let base = view("r1", &[("bulk", &[(Metric::LatencyP50, &[10.0, 10.0])])]);
            let cont = view("r2", &[("bulk", &[(Metric::LatencyP50, races)])]);
            let err = compare(&base, &cont, DEFAULT_MIN_EFFECT_PCT).unwrap_err();
            assert!(
                matches!(err, ResultsError::Stats(StatsError::NotFinite(_))),
                "{err}"
            );
        }
    }

    #[test]
    fn different_tracks_or_challenges_are_refused() {
        let race = |track: &str, challenge: &str| RaceInfo {
            track: Some(track.into()),
            challenge: Some(challenge.into()),
            ..RaceInfo::default()
        };
        let mut base = view("r1", &[("bulk", &[(Metric::LatencyP50, &[10.0])])]);
        let mut cont = view("r2", &[("bulk", &[(Metric::LatencyP50, &[10.0])])]);
        base.tests[0].race = Some(race("geonames", "append-no-conflicts"));
        cont.tests[0].race = Some(race("nyc_taxis", "append-no-conflicts"));
        let err = compare(&base, &cont, DEFAULT_MIN_EFFECT_PCT).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot compare tests that raced different workloads:\n  s.t: the baseline raced \
             track geonames, the contender track nyc_taxis"
        );
        cont.tests[0].race = Some(race("geonames", "append-no-conflicts"));
        assert!(compare(&base, &cont, DEFAULT_MIN_EFFECT_PCT).is_ok());
        // A side without race.json names no workload: compared on trust.
        cont.tests[0].race = None;
        assert!(compare(&base, &cont, DEFAULT_MIN_EFFECT_PCT).is_ok());
    }
}
