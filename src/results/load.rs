//! Finding a workspace's results: the latest per test (as state records them), a past run read
//! back from `results/`, and the list of runs.
//!
//! A run directory holds only the tests that run re-ran (a no-op test keeps its older result),
//! so a past run is read "as of" that run: each test's newest result at or before it. That is
//! what the latest view would have shown right after the run, and what a baseline must be.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ResultsError;
use super::layout;
use super::metrics::{TaskMetrics, Value};
use super::parse::{self, Configuration, RaceInfo};
use crate::address::Address;
use crate::backend::{Backend, ResultsBase};
use crate::cost::bill::{self, Bill};
use crate::state::{self, State, Status, TestRecord};

/// A workspace's state (if any) and its `results/<workspace>/` directory.
pub struct Workspace {
    pub name: String,
    pub backend: Backend,
    pub state: Option<State>,
    /// `results/<workspace slug>` below [`ResultsBase::dir`], where the paths in state are
    /// relative to.
    pub root: PathBuf,
    base: ResultsBase,
}

/// One test's result in a view: where it came from, how the test went, and its metrics.
#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    pub address: Address,
    pub run_id: Option<String>,
    /// From state; unknown for a result state no longer records (a later run replaced it).
    pub status: Option<String>,
    /// The error state recorded for a failed test.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Where the failed race's logs were brought home to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<PathBuf>,
    pub instance_type: Option<String>,
    /// A cluster test's machines, as `plan` shows them (`3 × r6i.xlarge, 2 load drivers ×
    /// c5.large`), from the configuration it raced; none for a test of one machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<String>,
    /// The Availability Zone the instance ran in (EC2's hardware differs between zones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Some of its races ran on EC2 spot capacity, which can skew a benchmark.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub spot: bool,
    /// How many races count as samples: finished, with no failed requests.
    pub repetitions: usize,
    /// The plan test this is a variant of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<crate::plan::VariantOf>,
    pub race_duration_s: Option<u64>,
    /// The machine time it held in its run and what that cost; none on the user's own
    /// machines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<Bill>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub race: Option<RaceInfo>,
    pub tasks: Vec<TaskMetrics>,
    /// Collected files that could not be read, each naming the file and line.
    pub problems: Vec<String>,
    /// The configuration its races ran: state's record, else the `rallyctl.json` beside the
    /// races (none for races collected before rallyctl wrote it).
    #[serde(skip)]
    pub configuration: Option<Configuration>,
    /// Where each counted race ran, in order: what tells variants raced interleaved (on one
    /// machine, in one run) from variants raced apart.
    #[serde(skip)]
    pub raced_on: Vec<RacedOn>,
}

/// The run a race belongs to and the machine it ran on, when known.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RacedOn {
    pub run: Option<String>,
    pub machine: Option<String>,
}

impl std::fmt::Display for RacedOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {} on {}",
            self.run.as_deref().unwrap_or("(unknown)"),
            self.machine.as_deref().unwrap_or("a machine not recorded")
        )
    }
}

impl TestResult {
    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }
}

/// The results of every test as of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub workspace: String,
    /// The newest run the view's results come from.
    pub run: Option<String>,
    /// What that run cost, each machine counted once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<Bill>,
    pub tests: Vec<TestResult>,
}

/// A run found under `results/` or in state.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    /// When the apply that made the run started, from the run id.
    pub started: Option<jiff::Timestamp>,
    /// Tests with a results directory in this run.
    pub tests: usize,
    /// Tests whose current record in state is from this run.
    pub current: usize,
    /// How many tests failed in this run: [`RunSummary::failures`] counted.
    pub failed: usize,
    /// The tests that failed in this run, as state records them or, once state moved on, as
    /// the failure file beside their logs says.
    pub failures: Vec<RunFailure>,
    pub baseline: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<Bill>,
}

/// A test that failed in a run: at which step, and the error's first line.
#[derive(Debug, Clone, Serialize)]
pub struct RunFailure {
    pub address: Address,
    /// None when the failure file cannot be read (the error says why).
    pub step: Option<state::Step>,
    pub error: String,
}

impl Workspace {
    /// Opens the workspace of `state` (as `backend` gave it), or of `plan_name` when there
    /// is no state yet (its runs can still be listed from `results/`).
    pub fn open(
        backend: Backend,
        state: Option<State>,
        plan_name: Option<&str>,
    ) -> Result<Workspace, ResultsError> {
        let name = match (&state, plan_name) {
            (Some(state), _) => state.workspace.clone(),
            (None, Some(name)) => name.to_owned(),
            (None, None) => {
                return Err(ResultsError::NoState(backend.location()));
            }
        };
        let base = backend.results_base(state.as_ref())?;
        Ok(Workspace {
            root: layout::workspace(&base.dir, &name),
            name,
            backend,
            state,
            base,
        })
    }

    fn state(&self) -> Result<&State, ResultsError> {
        self.state
            .as_ref()
            .ok_or_else(|| ResultsError::NoState(self.backend.location()))
    }

    pub fn baseline(&self) -> Option<&str> {
        self.state.as_ref()?.baseline_run.as_deref()
    }

    /// Every test's latest result, as state records it.
    pub fn latest(&self) -> Result<RunView, ResultsError> {
        let state = self.state()?;
        let tests: Vec<TestResult> = state
            .tests
            .iter()
            .map(|(address, record)| read_recorded(address, record, &self.base.dir))
            .collect();
        let run = tests.iter().filter_map(|t| t.run_id.clone()).max();
        Ok(RunView {
            workspace: self.name.clone(),
            cost: run.as_deref().and_then(|r| bill::of_run(state, r)),
            run,
            tests,
        })
    }

    /// Every test's newest result at or before `run`, read from `results/`.
    pub fn as_of(&self, run: &str) -> Result<RunView, ResultsError> {
        let run = self.resolve(run)?;
        let mut seen = BTreeSet::new();
        let mut tests = Vec::new();
        for dir_run in self.run_dirs()?.iter().rev().filter(|r| **r <= run) {
            for (address, dir) in self.test_dirs(dir_run)? {
                if !seen.insert(address.clone()) {
                    continue;
                }
                tests.push(self.read_in(dir_run, &address, &dir)?);
            }
        }
        tests.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(RunView {
            workspace: self.name.clone(),
            cost: self.state.as_ref().and_then(|s| bill::of_run(s, &run)),
            run: Some(run),
            tests,
        })
    }

    /// A test's result in the run `dir_run`, whose directory `dir` holds its races: state's
    /// record when it is of that run, else what the directory holds.
    fn read_in(
        &self,
        dir_run: &str,
        address: &Address,
        dir: &Path,
    ) -> Result<TestResult, ResultsError> {
        let record = self
            .state
            .as_ref()
            .and_then(|s| s.tests.get(address))
            .filter(|r| r.run_id.as_deref() == Some(dir_run));
        // State knows every repetition of its current record, those of earlier runs too.
        if let Some(record) = record {
            return Ok(read_recorded(address, record, &self.base.dir));
        }
        let dirs = repetition_dirs(dir)?;
        let failure = failure_in(&dirs);
        let races = dirs
            .into_iter()
            .map(|d| Files {
                report: Some(d.join("report.csv")).filter(|p| p.exists()),
                race_json: Some(d.join("race.json")).filter(|p| p.exists()),
                race_log: Some(d.join("race.log")),
                configuration: Some(d.join(parse::CONFIGURATION_FILE)).filter(|p| p.exists()),
                raced_on: RacedOn {
                    run: Some(dir_run.to_owned()),
                    machine: None,
                },
            })
            .collect();
        let mut result = read_test(address, Some(dir_run.to_owned()), None, races);
        match failure {
            Some((Ok(failed), logs)) => {
                result.status = Some(format!("failed ({})", failed.step));
                result.failure = Some(failed.error);
                result.logs = logs;
            }
            Some((Err(e), _)) => result.problems.push(e.to_string()),
            None => {}
        }
        // State's record is of a later run, and still holds the machine time of this one.
        result.cost = (self.state.as_ref())
            .and_then(|s| s.tests.get(address))
            .and_then(|r| bill::of_test(r, dir_run));
        if result.tasks.is_empty() && result.problems.is_empty() && !result.failed() {
            result
                .problems
                .push(format!("{}: no report.csv was collected", dir.display()));
        }
        Ok(result)
    }

    /// The results of the tests that raced in `run`, one per test with a directory in it: what
    /// a history takes from each run, where `as_of` also counts older runs' results.
    pub fn raced_in(&self, run: &str) -> Result<Vec<TestResult>, ResultsError> {
        (self.test_dirs(run)?.iter())
            .map(|(address, dir)| self.read_in(run, address, dir))
            .collect()
    }

    /// A run id as the user typed it, checked against the runs there are; `latest` is the
    /// newest.
    pub fn resolve(&self, run: &str) -> Result<String, ResultsError> {
        let known = self.run_ids()?;
        if run == "latest" {
            return known
                .last()
                .cloned()
                .ok_or_else(|| ResultsError::NoRuns(self.backend.results_location(&self.name)));
        }
        if known.iter().any(|r| r == run) {
            Ok(run.to_owned())
        } else {
            Err(ResultsError::UnknownRun {
                run: run.to_owned(),
                known: known.iter().rev().take(5).cloned().collect(),
            })
        }
    }

    /// Run ids found under `results/` or in state, oldest first (run ids sort by time).
    fn run_ids(&self) -> Result<Vec<String>, ResultsError> {
        let mut ids: BTreeSet<String> = self.run_dirs()?.into_iter().collect();
        if let Some(state) = &self.state {
            ids.extend(state.tests.values().filter_map(|r| r.run_id.clone()));
        }
        Ok(ids.into_iter().collect())
    }

    /// The runs, oldest first.
    pub fn runs(&self) -> Result<Vec<RunSummary>, ResultsError> {
        let records: Vec<&TestRecord> = self
            .state
            .as_ref()
            .map(|s| s.tests.values().collect())
            .unwrap_or_default();
        self.run_ids()?
            .into_iter()
            .map(|run_id| {
                let current: Vec<&&TestRecord> = records
                    .iter()
                    .filter(|r| r.run_id.as_deref() == Some(run_id.as_str()))
                    .collect();
                let mut failures: BTreeMap<Address, RunFailure> = BTreeMap::new();
                for (address, dir) in self.test_dirs(&run_id)? {
                    let (step, error) = match failure_in(&repetition_dirs(&dir)?) {
                        None => continue,
                        Some((Ok(f), _)) => (Some(f.step), f.error),
                        Some((Err(e), _)) => (None, e.to_string()),
                    };
                    failures.insert(
                        address.clone(),
                        RunFailure {
                            address,
                            step,
                            error,
                        },
                    );
                }
                // State's word on the tests it still records from this run comes last, and wins.
                let recorded = self.state.iter().flat_map(|s| &s.tests);
                for (address, record) in recorded {
                    if record.run_id.as_deref() != Some(run_id.as_str()) {
                        continue;
                    }
                    match &record.status {
                        Status::Failed { step, error, .. } => {
                            let error = error.clone();
                            failures.insert(
                                address.clone(),
                                RunFailure {
                                    address: address.clone(),
                                    step: Some(*step),
                                    error,
                                },
                            );
                        }
                        _ => {
                            failures.remove(address);
                        }
                    }
                }
                let mut failures: Vec<RunFailure> = failures.into_values().collect();
                for f in &mut failures {
                    f.error = f.error.lines().next().unwrap_or_default().to_owned();
                }
                Ok(RunSummary {
                    started: run_started(&run_id),
                    tests: self.test_dirs(&run_id)?.len(),
                    current: current.len(),
                    failed: failures.len(),
                    failures,
                    baseline: self.baseline() == Some(run_id.as_str()),
                    cost: self.state.as_ref().and_then(|s| bill::of_run(s, &run_id)),
                    run_id,
                })
            })
            .collect()
    }

    /// The run directories under the workspace's results, sorted.
    pub fn run_dirs(&self) -> Result<Vec<String>, ResultsError> {
        let mut runs = subdirectories(&self.root)?;
        // Other directories a user keeps beside the runs are not runs.
        runs.retain(|name| crate::state::is_run_id(name));
        runs.sort();
        Ok(runs)
    }

    /// The tests with a directory in a run, each with its address: the one in state whose
    /// directory it is, else one made from the directory names (slugs are valid names).
    pub(super) fn test_dirs(&self, run: &str) -> Result<BTreeMap<Address, PathBuf>, ResultsError> {
        let known: BTreeMap<PathBuf, &Address> = self
            .state
            .as_ref()
            .map(|s| s.tests.keys().map(|a| (a.path(), a)).collect())
            .unwrap_or_default();
        let run_dir = layout::run(&self.root, run);
        let mut tests = BTreeMap::new();
        for suite in subdirectories(&run_dir)? {
            for test in subdirectories(&run_dir.join(&suite))? {
                let rel: PathBuf = [&suite, &test].iter().collect();
                let address = match known.get(&rel) {
                    Some(a) => (*a).clone(),
                    None => match Address::new(suite.as_str(), test.as_str()) {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                tests.insert(address, run_dir.join(rel));
            }
        }
        Ok(tests)
    }
}

fn subdirectories(dir: &Path) -> Result<Vec<String>, ResultsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(ResultsError::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ResultsError::Io {
            path: dir.to_owned(),
            source,
        })?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// A run id starts with the UTC time its apply started (`20261125T081500Z-ab12cd`).
pub fn run_started(run_id: &str) -> Option<jiff::Timestamp> {
    let stamp = run_id.get(..15)?;
    let civil = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%S", stamp).ok()?;
    jiff::tz::TimeZone::UTC.to_timestamp(civil).ok()
}

/// One race's files, and where it ran.
struct Files {
    report: Option<PathBuf>,
    race_json: Option<PathBuf>,
    race_log: Option<PathBuf>,
    configuration: Option<PathBuf>,
    raced_on: RacedOn,
}

impl Files {
    /// The files state records for one race, below `base`.
    fn recorded(results: &[state::ResultFile], base: &Path, raced_on: RacedOn) -> Files {
        let file = |name: &str| {
            results
                .iter()
                .find(|f| f.path.file_name().is_some_and(|n| n == name))
                .map(|f| base.join(&f.path))
        };
        Files {
            report: file("report.csv"),
            race_json: file("race.json"),
            race_log: file("race.log"),
            configuration: file(parse::CONFIGURATION_FILE),
            raced_on,
        }
    }
}

/// The directories of the races a test ran in one run, in repetition order.
fn repetition_dirs(test_dir: &Path) -> Result<Vec<PathBuf>, ResultsError> {
    let mut numbered: Vec<(u32, PathBuf)> = subdirectories(test_dir)?
        .into_iter()
        .filter_map(|name| {
            let n = layout::repetition_of(&name)?;
            Some((n, test_dir.join(name)))
        })
        .collect();
    numbered.sort();
    let first = test_dir.join("report.csv").exists() || numbered.is_empty();
    Ok(first
        .then(|| test_dir.to_owned())
        .into_iter()
        .chain(numbered.into_iter().map(|(_, d)| d))
        .collect())
}

/// The failure rallyctl wrote beside the last of a test's races in a run that has one, and
/// where its logs are when any were brought home.
#[allow(clippy::type_complexity)]
fn failure_in(
    dirs: &[PathBuf],
) -> Option<(
    Result<parse::RaceFailure, parse::FileError>,
    Option<PathBuf>,
)> {
    dirs.iter().rev().find_map(|d| {
        let path = d.join(parse::FAILURE_FILE);
        let failure = path.exists().then(|| parse::race_failure(&path))?;
        let logs = ["race.log", "rally.log"]
            .iter()
            .any(|f| d.join(f).exists())
            .then(|| d.clone());
        Some((failure, logs))
    })
}

/// A test's result as state records it: every finished repetition, or the files of the one
/// attempt there is when none finished (a failed race's report says what went wrong).
fn read_recorded(address: &Address, record: &TestRecord, base: &Path) -> TestResult {
    let current = RacedOn {
        run: record.run_id.clone(),
        machine: record.machine.as_ref().map(|m| m.id.clone()),
    };
    let mut races: Vec<Files> = record
        .earlier
        .iter()
        .map(|r| {
            let on = RacedOn {
                run: Some(r.run_id.clone()),
                machine: Some(r.machine.clone()),
            };
            Files::recorded(&r.results, base, on)
        })
        .collect();
    if record.status == Status::Completed || races.is_empty() {
        races.push(Files::recorded(&record.results, base, current));
    }
    let no_report = races.last().is_some_and(|f| f.report.is_none());
    let mut result = read_test(address, record.run_id.clone(), Some(record), races);
    if record.status == Status::Completed && no_report {
        result
            .problems
            .push("completed, but state records no report.csv".into());
    }
    result
}

/// Reads a test's races and sums them up: per task and metric the mean of the races whose
/// report is clean, each race's value kept as a sample. A report with failed requests is no
/// sample; it is shown only when no race is clean, for what it says about the failure.
fn read_test(
    address: &Address,
    run_id: Option<String>,
    record: Option<&TestRecord>,
    races: Vec<Files>,
) -> TestResult {
    let mut problems = Vec::new();
    let mut read: Vec<(Vec<TaskMetrics>, Option<RaceInfo>, Option<u64>)> = Vec::new();
    for files in &races {
        let mut tasks = match &files.report {
            Some(path) => parse::report_csv(path).unwrap_or_else(|e| {
                problems.push(e.to_string());
                vec![]
            }),
            None => vec![],
        };
        let race = files.race_json.as_deref().and_then(|path| {
            parse::race_json(path)
                .map_err(|e| problems.push(e.to_string()))
                .ok()
        });
        if let Some(race) = &race {
            for task in &mut tasks {
                task.duration_s = race.task_durations.get(&task.task).copied();
            }
        }
        let seconds = files.race_log.as_deref().and_then(parse::race_log_seconds);
        read.push((tasks, race, seconds));
    }
    let clean = |tasks: &[TaskMetrics]| {
        !tasks.is_empty() && tasks.iter().all(|t| t.failed_requests().is_none())
    };
    let counted: Vec<usize> = (0..read.len()).filter(|&i| clean(&read[i].0)).collect();
    let shown = if counted.is_empty() {
        read.iter()
            .position(|r| !r.0.is_empty())
            .into_iter()
            .collect()
    } else {
        counted.clone()
    };
    let tasks = combine(shown.iter().map(|&i| read[i].0.as_slice()));
    let last = shown.last().or(read.len().checked_sub(1).as_ref()).copied();
    let race = last.and_then(|i| read[i].1.clone());
    let configuration = match record {
        Some(r) => Some(Configuration::of(r)),
        None => last
            .and_then(|i| races[i].configuration.as_deref())
            .and_then(|path| {
                parse::configuration(path)
                    .map_err(|e| problems.push(e.to_string()))
                    .ok()
            }),
    };
    let topology = (configuration.as_ref())
        .and_then(|c| {
            topology(c)
                .map_err(|e| problems.push(format!("{address}: {e}")))
                .ok()
        })
        .flatten();
    let race_duration_s = last
        .and_then(|i| read[i].2)
        .or_else(|| record.and_then(racing_seconds));
    TestResult {
        address: address.clone(),
        cost: record.and_then(|r| bill::of_test(r, run_id.as_deref()?)),
        run_id,
        status: record.map(|r| r.status.label()),
        failure: record.and_then(|r| match &r.status {
            Status::Failed { error, .. } => Some(error.clone()),
            _ => None,
        }),
        logs: record.and_then(|r| match &r.status {
            Status::Failed { logs, .. } => logs.clone(),
            _ => None,
        }),
        instance_type: record.and_then(|r| {
            r.settings
                .value()
                .get("instance_type")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        }),
        topology,
        zone: record.and_then(|r| r.machine.as_ref()?.zone.clone()),
        spot: record.is_some_and(|r| {
            r.machine.as_ref().is_some_and(|m| m.spot) || r.earlier.iter().any(|e| e.spot)
        }),
        repetitions: counted.len(),
        raced_on: counted.iter().map(|&i| races[i].raced_on.clone()).collect(),
        configuration,
        variant: record.and_then(|r| r.variant.clone()),
        race_duration_s,
        race,
        tasks,
        problems,
    }
}

/// The cluster a configuration raced, as `plan` shows it; none for a test of one machine.
fn topology(c: &Configuration) -> Result<Option<String>, String> {
    if c.settings.get("cluster").is_none() {
        return Ok(None);
    }
    let settings = crate::plan::Settings::deserialize(&c.settings)
        .map_err(|e| format!("cannot read the cluster it raced: {e}"))?;
    Ok(settings.topology())
}

/// The tasks of several races of one test as one: the first race's task order (Rally's
/// schedule) then tasks only later races ran; each metric the mean of the races that report
/// it, with every race's value as a sample once there is more than one race.
fn combine<'a>(races: impl Iterator<Item = &'a [TaskMetrics]>) -> Vec<TaskMetrics> {
    let races: Vec<&[TaskMetrics]> = races.collect();
    if let [only] = races.as_slice() {
        return only.to_vec();
    }
    let mut tasks: Vec<TaskMetrics> = Vec::new();
    for race in &races {
        for task in *race {
            let combined = match tasks.iter_mut().find(|t| t.task == task.task) {
                Some(t) => t,
                None => {
                    tasks.push(TaskMetrics {
                        task: task.task.clone(),
                        duration_s: None,
                        metrics: Default::default(),
                    });
                    tasks.last_mut().expect("just pushed")
                }
            };
            for (metric, value) in &task.metrics {
                combined
                    .metrics
                    .entry(*metric)
                    .or_insert_with(|| Value::new(0.0, value.unit.clone()))
                    .samples
                    .push(value.value);
            }
            if let Some(d) = task.duration_s {
                combined.duration_s = Some(combined.duration_s.unwrap_or(0.0) + d);
            }
        }
    }
    for task in &mut tasks {
        let seen = races
            .iter()
            .filter(|r| {
                r.iter()
                    .any(|t| t.task == task.task && t.duration_s.is_some())
            })
            .count();
        task.duration_s = task.duration_s.map(|d| d / seen.max(1) as f64);
        for value in task.metrics.values_mut() {
            value.value = value.samples.iter().sum::<f64>() / value.samples.len() as f64;
        }
    }
    tasks
}

/// The time a test spent in the racing step, from its state history (for a race whose console
/// log has no duration, such as one that was cut short).
fn racing_seconds(record: &TestRecord) -> Option<u64> {
    let racing = record.history.iter().position(|t| t.status == "racing")?;
    let start = &record.history[racing];
    let end = record.history[racing + 1..]
        .iter()
        .find(|t| t.status != "racing")?;
    Some(end.at.duration_since(start.at).as_secs().max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::metrics::Metric;

    /// A past run's races of one test, read from its directories: a report with failed
    /// requests is no sample; the clean ones are, each metric their mean.
    #[test]
    fn a_race_with_failed_requests_is_no_sample() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rally");
        let dir = tempfile::tempdir().unwrap();
        let run = "20261201T081500Z-abcdef";
        let test_dir = dir.path().join(run).join("s/t");
        let success = std::fs::read_to_string(fixtures.join("success/report.csv")).unwrap();
        let faster = success.replace(
            "Median Throughput,index-append,5033.55",
            "Median Throughput,index-append,5233.55",
        );
        for (k, report) in [
            (1, success.clone()),
            (
                2,
                std::fs::read_to_string(fixtures.join("error-rate/report.csv")).unwrap(),
            ),
            (3, faster),
        ] {
            let race = layout::repetition(&test_dir, k);
            std::fs::create_dir_all(&race).unwrap();
            std::fs::write(race.join("report.csv"), report).unwrap();
        }
        let ws = Workspace {
            name: "w".into(),
            backend: Backend::Local(dir.path().join("w.state.json")),
            state: None,
            root: dir.path().to_owned(),
            base: Backend::Local(PathBuf::new()).results_base(None).unwrap(),
        };
        let view = ws.as_of(run).unwrap();
        let test = &view.tests[0];
        assert_eq!(test.repetitions, 2, "{test:?}");
        let index = test
            .tasks
            .iter()
            .find(|t| t.task == "index-append")
            .unwrap();
        let throughput = index.get(Metric::Throughput).unwrap();
        assert_eq!(throughput.samples, [5033.55, 5233.55]);
        assert!((throughput.value - 5133.55).abs() < 1e-9);
        // Both clean races ran the search task: its error rate is a sample of zeros.
        let search = test.tasks.iter().find(|t| t.task == "match-all").unwrap();
        assert_eq!(search.get(Metric::ErrorRate).unwrap().races(), [0.0, 0.0]);
    }
}
