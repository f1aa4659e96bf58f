//! `rallyctl results` and `rallyctl report` through the real binary, on state and result trees
//! written into a temporary directory: every table format and the JSON (insta snapshots),
//! comparisons and the regression gate on hand-made reports, the real Rally fixtures, damaged
//! reports, and the HTML report in headless Chromium when it is installed.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rallyctl::address::Address;
use rallyctl::plan::ProviderKind;
use rallyctl::results::parse;
use rallyctl::state::{
    self, Machine, Repetition, ResultFile, Spent, State, Status, Step, TestRecord, Transition,
};
use support::context::{command, text};
use support::webhook::{Webhook, run_with_urls, unreachable_url};

const RUN1: &str = "20261124T081500Z-aaaaaa";
const RUN2: &str = "20261125T081500Z-bbbbbb";
const STATE: &str = "state/e2e.state.json";

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/rally")
        .join(path)
}

fn at(time: &str) -> jiff::Timestamp {
    time.parse().unwrap()
}

/// A workspace `e2e` in a temporary directory: its state and its `results/` tree.
struct Tree {
    dir: tempfile::TempDir,
    state: State,
}

impl Tree {
    fn new() -> Tree {
        let mut state = State::new("e2e");
        // Fixed, so JSON snapshots do not change from run to run.
        state.lineage = uuid::Uuid::nil();
        Tree {
            dir: tempfile::tempdir().unwrap(),
            state,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a test's files into a run; returns them as state records them.
    fn files(&self, run: &str, address: &Address, files: &[(&str, Vec<u8>)]) -> Vec<ResultFile> {
        self.files_in(
            Path::new("results/e2e").join(run).join(address.path()),
            files,
        )
    }

    /// Writes the files of each repetition of a test into a run, the first in the test's
    /// directory and repetition k in `repetition-k/`; returns them as state records them.
    fn repetitions(
        &self,
        run: &str,
        address: &Address,
        reps: &[Vec<(&str, Vec<u8>)>],
    ) -> Vec<Vec<ResultFile>> {
        let dir = Path::new("results/e2e").join(run).join(address.path());
        reps.iter()
            .enumerate()
            .map(|(k, files)| {
                let rep = match k {
                    0 => dir.clone(),
                    k => dir.join(format!("repetition-{}", k + 1)),
                };
                self.files_in(rep, files)
            })
            .collect()
    }

    fn files_in(&self, dir: PathBuf, files: &[(&str, Vec<u8>)]) -> Vec<ResultFile> {
        std::fs::create_dir_all(self.path(dir.to_str().unwrap())).unwrap();
        files
            .iter()
            .map(|(name, bytes)| {
                let rel = dir.join(name);
                std::fs::write(self.dir.path().join(&rel), bytes).unwrap();
                ResultFile {
                    path: rel,
                    sha256: "0".repeat(64),
                    bytes: bytes.len() as u64,
                }
            })
            .collect()
    }

    /// Records a test of `run` in state, the way apply leaves it.
    fn record(&mut self, address: &Address, run: &str, status: Status, results: Vec<ResultFile>) {
        let history = ["launching", "booting", "installing", "racing", "collecting"]
            .iter()
            .enumerate()
            .map(|(i, s)| Transition {
                status: (*s).into(),
                at: at("2026-11-25T08:15:00Z")
                    .checked_add(jiff::SignedDuration::from_secs(60 * i as i64 + 60))
                    .unwrap(),
            })
            .collect();
        // A machine of its own, billed from launch to release once it was given back.
        let spent = (!matches!(status, Status::InProgress { .. }))
            .then(|| Spent {
                run_id: run.into(),
                provider: ProviderKind::Aws,
                machine: format!("i-{:04}", self.state.tests.len()),
                from: at("2026-11-25T08:15:00Z"),
                to: at("2026-11-25T08:25:00Z"),
                usd_per_hour: Some(0.192),
            })
            .into_iter()
            .collect();
        self.state.tests.insert(
            address.clone(),
            TestRecord {
                run_id: Some(run.into()),
                spent,
                machine: Some(Machine {
                    region: Some("us-east-1".into()),
                    zone: Some("us-east-1a".into()),
                    launched_at: at("2026-11-25T08:15:00Z"),
                    released_at: Some(at("2026-11-25T08:25:00Z")),
                    ..Machine::acquired(ProviderKind::Aws, "i-0123".into())
                }),
                results,
                history,
                ..TestRecord::new(
                    "h".into(),
                    serde_json::json!({"instance_type": "m5.xlarge", "track": "tiny"}).into(),
                    "esrally race".into(),
                    status,
                )
            },
        );
    }

    /// Records a test of `run` completed after the races `files` (from [`Tree::repetitions`]):
    /// the last the record's own, the others its earlier repetitions.
    fn record_repetitions(
        &mut self,
        address: &Address,
        run: &str,
        mut files: Vec<Vec<ResultFile>>,
    ) {
        let current = files.pop().unwrap();
        self.record(address, run, Status::Completed, current);
        self.state.tests.get_mut(address).unwrap().earlier = files
            .into_iter()
            .map(|results| Repetition {
                run_id: run.into(),
                race_id: uuid::Uuid::nil(),
                machine: "i-0123".into(),
                zone: Some("us-east-1a".into()),
                spot: false,
                results,
            })
            .collect();
    }

    fn save(&mut self) {
        state::save(&self.path(STATE), &mut self.state).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        command(self.dir.path(), args)
            .output()
            .expect("rallyctl runs")
    }

    /// `rallyctl results --state STATE ARGS…`, which must exit with `code`; its stdout.
    fn results(&self, args: &[&str], code: i32) -> String {
        let mut all = vec!["results", "--state", STATE];
        all.extend(args);
        let out = self.run(&all);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `results --compare RUN1` with `more`, which must refuse (exit 1, no rows) saying
    /// `said`.
    fn compare_refused(&self, more: &[&str], said: &str) {
        let mut all = vec!["results", "--state", STATE, "--compare", RUN1];
        all.extend(more);
        let out = self.run(&all);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert_eq!(out.stdout, b"", "no rows");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(said), "{stderr}");
    }
}

fn assert_every_row_has_every_column(csv_text: &str) {
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let width = reader.headers().unwrap().len();
    assert!(reader.records().all(|r| r.unwrap().len() == width));
}

fn addr(suite: &str, test: &str) -> Address {
    Address::new(suite, test).unwrap()
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// The files of a real Rally race, from the fixtures.
fn rally_files(case: &str) -> Vec<(&'static str, Vec<u8>)> {
    let mut files = vec![(
        "race.log",
        read(fixture(&format!("{case}/race-console.log"))),
    )];
    for name in ["report.csv", "race.json", "rally.log"] {
        let path = fixture(&format!("{case}/{name}"));
        if path.exists() {
            files.push((name, read(path)));
        }
    }
    files
}

/// A hand-made task of a Rally CSV report.
struct Task<'a> {
    name: &'a str,
    throughput: Option<(f64, &'a str)>,
    latency: [Option<f64>; 3],
    service_time: [Option<f64>; 3],
    error_rate: f64,
}

fn task(name: &str, throughput: f64, p50: f64, error_rate: f64) -> Task<'_> {
    Task {
        name,
        throughput: Some((throughput, "docs/s")),
        latency: [Some(p50), Some(p50 * 2.0), None],
        service_time: [Some(p50 * 0.9), Some(p50 * 1.8), None],
        error_rate,
    }
}

/// A report in Rally's CSV layout (CRLF line ends, cluster-wide rows first).
fn report(tasks: &[Task<'_>]) -> Vec<u8> {
    let mut rows = vec![
        "Metric,Task,Value,Unit".to_owned(),
        "Total Young Gen GC time,,0.0,s".to_owned(),
    ];
    for t in tasks {
        if let Some((v, unit)) = t.throughput {
            for stat in ["Min", "Mean", "Median", "Max"] {
                rows.push(format!("{stat} Throughput,{},{v},{unit}", t.name));
            }
        }
        for (kind, values) in [("latency", t.latency), ("service time", t.service_time)] {
            for (p, v) in ["50th", "90th", "99th"].iter().zip(values) {
                if let Some(v) = v {
                    rows.push(format!("{p} percentile {kind},{},{v},ms", t.name));
                }
            }
        }
        rows.push(format!("error rate,{},{:.2},%", t.name, t.error_rate));
    }
    (rows.join("\r\n") + "\r\n").into_bytes()
}

/// Tests of every kind across two runs: run 1 raced `ingest.a` and `ingest."b (8g)"`, run 2
/// re-raced `ingest.a` (the real success fixture), `search.errors` (the real error-rate one),
/// `search.down` (cluster down, no report) and started `search.slow`, still racing.
fn realistic() -> Tree {
    let mut t = Tree::new();
    let (a, b) = (addr("ingest", "a"), addr("ingest", "b (8g)"));
    t.files(
        RUN1,
        &a,
        &[(
            "report.csv",
            report(&[task("index-append", 4500.0, 4.0, 0.0)]),
        )],
    );
    let files = t.files(
        RUN1,
        &b,
        &[(
            "report.csv",
            report(&[task("index-append", 9000.0, 2.5, 0.0)]),
        )],
    );
    t.record(&b, RUN1, Status::Completed, files);
    let files = t.files(RUN2, &a, &rally_files("success"));
    t.record(&a, RUN2, Status::Completed, files);
    // Raced on spot capacity: every view says so.
    let spot = t.state.tests.get_mut(&a).unwrap().machine.as_mut().unwrap();
    spot.spot = true;
    let errors = addr("search", "errors");
    let files = t.files(RUN2, &errors, &rally_files("error-rate"));
    t.record(
        &errors,
        RUN2,
        Status::Failed {
            step: Step::Racing,
            error: "requests failed during the race (error rate: match-all 100%)".into(),
            log_tail: None,
            logs: None,
        },
        files,
    );
    let down = addr("search", "down");
    let files = t.files(RUN2, &down, &rally_files("cluster-down"));
    t.record(
        &down,
        RUN2,
        Status::Failed {
            step: Step::Racing,
            error: "the race exited with 64\nTraceback ...".into(),
            log_tail: None,
            logs: None,
        },
        files,
    );
    // Its price was not known when it was launched: its cost, and so its run's, is unknown.
    t.state.tests.get_mut(&down).unwrap().spent[0].usd_per_hour = None;
    let slow = addr("search", "slow");
    t.record(
        &slow,
        RUN2,
        Status::InProgress { step: Step::Racing },
        vec![],
    );
    t.save();
    t
}

#[test]
fn latest_results_as_a_table() {
    let t = realistic();
    insta::assert_snapshot!(t.results(&[], 0));
}

/// A 100-column terminal (`COLUMNS` stands in for one): the widest columns wrap, every line fits.
#[test]
fn results_and_comparisons_fit_a_100_column_terminal() {
    let t = realistic();
    for args in [
        &["results", "--state", STATE][..],
        &["results", "--state", STATE, "--baseline", RUN1],
        &["results", "--state", STATE, "--runs"],
    ] {
        let out = command(t.dir.path(), args)
            .env("COLUMNS", "100")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        for line in stdout
            .lines()
            .filter(|l| l.starts_with(['│', '┌', '╞', '└']))
        {
            assert!(
                line.chars().count() <= 100,
                "{args:?}: {} columns:\n{stdout}",
                line.chars().count()
            );
        }
        if args.len() == 3 {
            insta::assert_snapshot!(stdout);
        }
    }
}

#[test]
fn latest_results_as_markdown() {
    let t = realistic();
    insta::assert_snapshot!(t.results(&["--format", "markdown"], 0));
}

#[test]
fn latest_results_as_csv() {
    let t = realistic();
    let out = t.results(&["--format", "csv"], 0);
    assert_every_row_has_every_column(&out);
    insta::assert_snapshot!(out);
}

#[test]
fn latest_results_as_json() {
    let t = realistic();
    let out = t.results(&["--format", "json"], 0);
    assert_eq!(out, t.results(&["--json"], 0), "--json is --format json");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    insta::assert_json_snapshot!(v);
}

#[test]
fn a_past_run_is_read_as_of_that_run() {
    let t = realistic();
    let v: serde_json::Value =
        serde_json::from_str(&t.results(&["--run", RUN1, "--json"], 0)).unwrap();
    let tests: Vec<(&str, &str)> = v["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["address"].as_str().unwrap(),
                t["run_id"].as_str().unwrap(),
            )
        })
        .collect();
    // The quoted name is found through state, though its directory is a slug.
    assert_eq!(tests, vec![("ingest.a", RUN1), ("ingest.\"b (8g)\"", RUN1)]);
    // Run 1's `a` was replaced in state by run 2's: its status is no longer known.
    assert_eq!(v["tests"][0]["status"], serde_json::Value::Null);
    assert_eq!(v["tests"][1]["status"], "completed");
    assert_eq!(
        v["tests"][0]["tasks"][0]["metrics"]["throughput"]["value"],
        4500.0
    );
}

/// A failed race's logs are named wherever its failure is shown, and a run whose failed test
/// ran again later still lists that failure, read from beside the logs under `results/`.
#[test]
fn failed_runs_are_listed_with_their_failures_and_where_their_logs_are() {
    let mut t = Tree::new();
    let why = |step: &str, error: &str| {
        serde_json::to_vec(&serde_json::json!({"step": step, "error": error})).unwrap()
    };
    let a = addr("ingest", "a");
    // Run 1: `a` failed racing; the next run raced it again, so state forgot the failure.
    t.files(
        RUN1,
        &a,
        &[
            ("race.log", b"boom: the cluster said no\n".to_vec()),
            (
                "failure.json",
                why("racing", "esrally exited with 64\nTraceback"),
            ),
        ],
    );
    let files = t.files(RUN2, &a, &rally_files("success"));
    t.record(&a, RUN2, Status::Completed, files);
    // Run 2: `b` stalled; state names its logs.
    let b = addr("ingest", "b");
    let stalled = "the race stalled: neither its console nor Rally's log changed for 10m";
    let logs = t.files(
        RUN2,
        &b,
        &[
            ("race.log", b"connecting\n".to_vec()),
            ("failure.json", why("racing", stalled)),
        ],
    );
    t.record(
        &b,
        RUN2,
        Status::Failed {
            step: Step::Racing,
            error: stalled.into(),
            log_tail: None,
            logs: Some(Path::new("results/e2e").join(RUN2).join(b.path())),
        },
        logs,
    );
    t.save();
    insta::assert_snapshot!("runs_with_failures", t.results(&["--runs"], 0));
    insta::assert_snapshot!("a_failed_run", t.results(&["--run", RUN1], 0));
    insta::assert_snapshot!("latest_with_a_failure", t.results(&[], 0));
    let v: serde_json::Value = serde_json::from_str(&t.results(&["--runs", "--json"], 0)).unwrap();
    assert_eq!(v["runs"][0]["failed"], 1);
    assert_eq!(
        v["runs"][0]["failures"][0],
        serde_json::json!({"address": "ingest.a", "step": "racing", "error": "esrally exited with 64"})
    );
}

/// A test's cost in a past run comes from the machine time its record still holds for that
/// run, though the record is of a later one; the run's total counts each machine once.
#[test]
fn a_past_run_costs_what_its_machines_held() {
    let mut t = realistic();
    let a = addr("ingest", "a");
    let record = t.state.tests.get_mut(&a).unwrap();
    let mut earlier = record.spent[0].clone();
    earlier.run_id = RUN1.into();
    earlier.machine = "i-run1".into();
    // Half an hour at $0.192: $0.096.
    earlier.to = at("2026-11-25T08:45:00Z");
    record.spent.insert(0, earlier);
    t.save();
    let v: serde_json::Value =
        serde_json::from_str(&t.results(&["--run", RUN1, "--json"], 0)).unwrap();
    assert_eq!(v["tests"][0]["address"], "ingest.a");
    assert_eq!(v["tests"][0]["cost"]["usd"], 0.096);
    assert_eq!(v["tests"][0]["cost"]["machines"], 1);
    // With `b (8g)`'s ten minutes: two machines, $0.128.
    let run = &v["cost"];
    assert_eq!(run["machines"], 2);
    assert!((run["usd"].as_f64().unwrap() - 0.128).abs() < 1e-9, "{run}");
}

#[test]
fn runs_are_listed_with_their_time_and_tests() {
    let t = realistic();
    // Directories a user keeps beside the runs are not runs.
    std::fs::create_dir_all(t.path("results/e2e/old-stuff/s/t")).unwrap();
    insta::assert_snapshot!(t.results(&["--runs"], 0));
    let v: serde_json::Value = serde_json::from_str(&t.results(&["--runs", "--json"], 0)).unwrap();
    assert_eq!(v["runs"][1]["run_id"], RUN2);
    assert_eq!(v["runs"][1]["started"], "2026-11-25T08:15:00Z");
    assert_eq!(
        v["runs"][1]["tests"], 3,
        "the racing test has no directory yet"
    );
    assert_eq!(v["runs"][1]["current"], 4);
    assert_eq!(v["runs"][1]["failed"], 2);
}

#[test]
fn a_damaged_report_names_file_and_line_and_hides_no_other_test() {
    let mut t = Tree::new();
    let good = report(&[task("bulk", 1000.0, 10.0, 0.0)]);
    let truncated = good[..good.len() - 20].to_vec();
    let mut garbled = String::from_utf8(good.clone()).unwrap();
    garbled = garbled.replacen(
        "Median Throughput,bulk,1000",
        "Median Throughput,bulk,1O00",
        1,
    );
    for (name, bytes) in [
        ("good", good),
        ("truncated", truncated),
        ("garbled", garbled.into_bytes()),
    ] {
        let a = addr("ingest", name);
        let files = t.files(RUN1, &a, &[("report.csv", bytes)]);
        t.record(&a, RUN1, Status::Completed, files);
    }
    // A report state records but that is gone from disk.
    let gone = addr("ingest", "gone");
    let mut files = t.files(RUN1, &gone, &[("report.csv", vec![])]);
    std::fs::remove_file(t.dir.path().join(&files[0].path)).unwrap();
    files[0].bytes = 1;
    t.record(&gone, RUN1, Status::Completed, files);
    t.save();
    let out = t.results(&[], 0);
    insta::assert_snapshot!(out);
    let dir = format!("results/e2e/{RUN1}/ingest");
    for expect in [
        format!(
            "error: {dir}/truncated/report.csv:11: the file ends in the middle of this line: the report is truncated"
        ),
        format!(
            "error: {dir}/garbled/report.csv:5: `1O00` is not a number (metric `Median Throughput`, task `bulk`)"
        ),
        format!("error: {dir}/gone/report.csv: cannot read: No such file or directory"),
        "1000.00 docs/s".to_owned(),
    ] {
        assert!(out.contains(&expect), "{expect}\n{out}");
    }
}

/// Run 1 and run 2 of one test `ingest.a`, both in state's history of runs; state records run 2.
fn two_runs(base: &[Task<'_>], contender: &[Task<'_>]) -> Tree {
    let mut t = Tree::new();
    let a = addr("ingest", "a");
    t.files(RUN1, &a, &[("report.csv", report(base))]);
    let files = t.files(RUN2, &a, &[("report.csv", report(contender))]);
    t.record(&a, RUN2, Status::Completed, files);
    t.save();
    t
}

fn comparison_case() -> Tree {
    two_runs(
        &[
            task("bulk", 1000.0, 10.0, 0.0),
            Task {
                name: "search",
                throughput: Some((500.0, "ops/s")),
                latency: [Some(2.0), Some(3.0), Some(4.0)],
                service_time: [Some(2.0), Some(3.0), Some(4.0)],
                error_rate: 0.0,
            },
        ],
        &[
            // Throughput up 10 %: better. Latency up 20 %: worse. Service time within noise.
            Task {
                name: "bulk",
                throughput: Some((1100.0, "docs/s")),
                latency: [Some(12.0), Some(24.0), None],
                service_time: [Some(9.2), Some(18.5), None],
                error_rate: 0.0,
            },
            // Every request failed: Rally reports no throughput.
            Task {
                name: "search",
                throughput: None,
                latency: [Some(2.0), Some(3.0), Some(4.0)],
                service_time: [Some(2.0), Some(3.0), Some(4.0)],
                error_rate: 100.0,
            },
            task("scroll", 50.0, 100.0, 0.0),
        ],
    )
}

#[test]
fn comparison_as_a_table() {
    let t = comparison_case();
    insta::assert_snapshot!(t.results(&["--compare", RUN1], 0));
}

#[test]
fn comparison_as_markdown() {
    let t = comparison_case();
    insta::assert_snapshot!(t.results(&["--compare", RUN1, "--format", "markdown"], 0));
}

#[test]
fn comparison_as_csv() {
    let t = comparison_case();
    insta::assert_snapshot!(t.results(&["--compare", RUN1, "--format", "csv"], 0));
}

#[test]
fn comparison_as_json() {
    let t = comparison_case();
    let v: serde_json::Value =
        serde_json::from_str(&t.results(&["--compare", RUN1, "--json"], 0)).unwrap();
    insta::assert_json_snapshot!(v);
}

#[test]
fn the_regression_gate_exits_3_only_past_its_threshold() {
    let bulk = |throughput, p50| task("bulk", throughput, p50, 0.0);
    let gate = |base: Task<'_>, contender: Vec<Task<'_>>, pct: &str| {
        let t = two_runs(&[base], &contender);
        let out = t.run(&[
            "results",
            "--state",
            STATE,
            "--compare",
            RUN1,
            &format!("--fail-on-regression={pct}"),
        ]);
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    // Better everywhere.
    assert_eq!(gate(bulk(1000.0, 10.0), vec![bulk(1200.0, 8.0)], "1").0, 0);
    // Worse within noise, and within the gate's threshold.
    assert_eq!(gate(bulk(1000.0, 10.0), vec![bulk(980.0, 10.3)], "5").0, 0);
    // Worse by 20 %: fails a 10 % gate, passes a 25 % one.
    let (code, stderr) = gate(bulk(1000.0, 10.0), vec![bulk(1000.0, 12.0)], "10");
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("ingest.a bulk latency p50: 10.00 -> 12.00 ms (+20.0 %)"),
        "{stderr}"
    );
    assert_eq!(
        gate(bulk(1000.0, 10.0), vec![bulk(1000.0, 12.0)], "25").0,
        0
    );
    // A throughput that vanished.
    let mut failed = bulk(1000.0, 10.0);
    failed.throughput = None;
    let (code, stderr) = gate(bulk(1000.0, 10.0), vec![failed], "50");
    assert_eq!(code, 3);
    assert!(
        stderr.contains("ingest.a bulk throughput (median): missing from the contender"),
        "{stderr}"
    );
    // A new task is no regression.
    let (code, stderr) = gate(
        bulk(1000.0, 10.0),
        vec![bulk(1000.0, 10.0), task("new", 1.0, 1000.0, 50.0)],
        "1",
    );
    assert_eq!(code, 0, "{stderr}");
}

/// The races of test `ingest.a` in run 1 (the baseline, on disk) and run 2 (the contender,
/// recorded in state with its earlier repetitions): five a side. `bulk` improves its
/// throughput and regresses its latency and service time by 20 %, `search` keeps its latency
/// and races a noisy throughput (rsd about 15 %) up 15 %: inconclusive. `ingest.lone` raced
/// once a side.
fn repeated() -> Tree {
    repeated_with(&[1.0, 1.0, 1.0, 1.0, 1.0], &[1.2, 1.2, 1.2, 1.2, 1.2])
}

/// [`repeated`] with `bulk`'s latencies of each contender race scaled by a factor.
fn repeated_with(base_bulk: &[f64; 5], cont_bulk: &[f64; 5]) -> Tree {
    let mut t = Tree::new();
    let a = addr("ingest", "a");
    let wobble = [1.0, 1.01, 0.99, 1.005, 0.995];
    let search = [500.0, 620.0, 430.0, 560.0, 470.0];
    let reps = |throughput: f64, latency: &[f64; 5], search_up: f64| -> Vec<Vec<(&str, Vec<u8>)>> {
        (0..5)
            .map(|k| {
                let w = wobble[k];
                vec![(
                    "report.csv",
                    report(&[
                        task("bulk", throughput * w, 10.0 * w * latency[k], 0.0),
                        Task {
                            name: "search",
                            throughput: Some((search[k] * search_up, "ops/s")),
                            latency: [Some(2.0 * w), Some(3.0 * w), Some(4.0 * w)],
                            service_time: [Some(1.9 * w), Some(2.9 * w), Some(3.9 * w)],
                            error_rate: 0.0,
                        },
                    ]),
                )]
            })
            .collect()
    };
    t.repetitions(RUN1, &a, &reps(1000.0, base_bulk, 1.0));
    let files = t.repetitions(RUN2, &a, &reps(1100.0, cont_bulk, 1.15));
    t.record_repetitions(&a, RUN2, files);
    let lone = addr("ingest", "lone");
    t.files(
        RUN1,
        &lone,
        &[("report.csv", report(&[task("bulk", 1000.0, 10.0, 0.0)]))],
    );
    let files = t.files(
        RUN2,
        &lone,
        &[("report.csv", report(&[task("bulk", 1200.0, 10.1, 0.0)]))],
    );
    t.record(&lone, RUN2, Status::Completed, files);
    t.save();
    t
}

#[test]
fn repeated_results_as_a_table() {
    let t = repeated();
    let out = t.results(&[], 0);
    // The noisy throughput is flagged; the tight one is not.
    assert!(
        out.contains("593.40 [492.08, 703.73] ops/s (n=5, rsd 14.5%, noisy)"),
        "{out}"
    );
    assert!(
        out.contains("1100.00 [1089.23, 1110.82] docs/s (n=5, rsd 0.8%)"),
        "{out}"
    );
    insta::assert_snapshot!(out);
}

#[test]
fn repeated_results_as_markdown() {
    insta::assert_snapshot!(repeated().results(&["--format", "markdown"], 0));
}

#[test]
fn repeated_results_as_csv() {
    let out = repeated().results(&["--format", "csv"], 0);
    assert_every_row_has_every_column(&out);
    insta::assert_snapshot!(out);
}

#[test]
fn repeated_results_as_json() {
    let v: serde_json::Value = serde_json::from_str(&repeated().results(&["--json"], 0)).unwrap();
    let throughput = &v["tests"][0]["tasks"][1]["metrics"]["throughput"];
    assert_eq!(throughput["summary"]["n"], 5);
    assert_eq!(throughput["summary"]["noisy"], true);
    assert_eq!(throughput["samples"].as_array().unwrap().len(), 5);
    insta::assert_json_snapshot!(v);
}

#[test]
fn repeated_comparison_as_a_table() {
    let out = repeated().results(&["--compare", RUN1], 0);
    for expect in [
        "1 inconclusive",
        "n = 1: a threshold, not a statistical test",
        "Holm-corrected over 12 comparisons",
    ] {
        assert!(out.contains(expect), "{expect}\n{out}");
    }
    insta::assert_snapshot!(out);
}

#[test]
fn repeated_comparison_as_markdown() {
    insta::assert_snapshot!(repeated().results(&["--compare", RUN1, "--format", "markdown"], 0));
}

#[test]
fn repeated_comparison_as_csv() {
    let out = repeated().results(&["--compare", RUN1, "--format", "csv"], 0);
    assert_every_row_has_every_column(&out);
    insta::assert_snapshot!(out);
}

#[test]
fn repeated_comparison_as_json() {
    let v: serde_json::Value =
        serde_json::from_str(&repeated().results(&["--compare", RUN1, "--json"], 0)).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let verdict = |task: &str, metric: &str| {
        let row = rows
            .iter()
            .find(|r| r["test"] == "ingest.a" && r["task"] == task && r["metric"] == metric)
            .unwrap();
        (
            row["verdict"].as_str().unwrap().to_owned(),
            row["method"].as_str().unwrap().to_owned(),
        )
    };
    let welch = |v: &str| (v.to_owned(), "welch_log".to_owned());
    assert_eq!(verdict("bulk", "throughput"), welch("improvement"));
    assert_eq!(verdict("bulk", "latency_p50"), welch("regression"));
    assert_eq!(verdict("search", "latency_p50"), welch("no_change"));
    assert_eq!(verdict("search", "throughput"), welch("inconclusive"));
    // Five clean races a side: error rates of zero, held against the threshold.
    assert_eq!(
        verdict("bulk", "error_rate"),
        ("no_change".to_owned(), "threshold".to_owned())
    );
    let lone = rows.iter().find(|r| r["test"] == "ingest.lone").unwrap();
    assert_eq!(lone["method"], "threshold");
    assert_eq!(lone["p_value"], serde_json::Value::Null);
    assert_eq!(v["tested"], 12);
    insta::assert_json_snapshot!(v);
}

#[test]
fn the_min_effect_must_lie_between_0_and_100() {
    let t = repeated();
    for bad in ["0", "100", "-1", "abc"] {
        // `=`, so that `-1` is read as the flag's value.
        let flag = format!("--min-effect={bad}");
        let out = t.run(&["results", "--state", STATE, "--compare", RUN1, &flag]);
        assert_eq!(out.status.code(), Some(64), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--min-effect"), "{stderr}");
        assert!(stderr.contains("between 0 and 100"), "{stderr}");
    }
    let out = t.run(&["report", "--state", STATE, "--min-effect", "100"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    // `--noise` is the old name, still read.
    assert_eq!(
        t.results(&["--compare", RUN1, "--noise", "30"], 0),
        t.results(&["--compare", RUN1, "--min-effect", "30"], 0)
    );
    // Two min effects that disagree are a usage error.
    let out = t.run(&[
        "results",
        "--state",
        STATE,
        "--compare",
        RUN1,
        "--min-effect",
        "3",
        "--fail-on-regression=10",
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("name two min effects"));
    // The gate's PCT comes only after `=`: a plan file written after the flag is the plan.
    std::fs::write(
        t.path("e2e.toml"),
        "version = 1\nname = \"e2e\"\n[defaults]\nprovider = \"local\"\ntrack = \"tiny\"\n\
         [[suite]]\nname = \"ingest\"\n[[suite.test]]\nname = \"a\"\n",
    )
    .unwrap();
    let out = t.run(&[
        "results",
        "--compare",
        RUN1,
        "--fail-on-regression",
        "e2e.toml",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}

#[test]
fn a_regression_exits_3_and_an_inconclusive_comparison_exits_4_when_asked() {
    let t = repeated();
    let gate = |args: &[&str]| {
        let mut all = vec!["results", "--state", STATE, "--compare", RUN1];
        all.extend(args);
        let out = t.run(&all);
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, stderr) = gate(&["--fail-on-regression"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("ingest.a bulk latency p50: 10.00 -> 12.00 ms (+20.0 % ["),
        "{stderr}"
    );
    // A regression is no reason to race again: 3, not 4.
    assert_eq!(
        gate(&["--fail-on-regression", "--fail-on-inconclusive"]).0,
        3
    );
    assert_eq!(gate(&["--fail-on-inconclusive"]).0, 0);
    // Without the regressions, what is left is the inconclusive throughput.
    let t = repeated_with(&[1.0; 5], &[1.0; 5]);
    let out = t.run(&[
        "results",
        "--state",
        STATE,
        "--compare",
        RUN1,
        "--fail-on-regression",
        "--fail-on-inconclusive",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        stderr.contains("Inconclusive: 1 comparison neither beyond nor within ±5 %"),
        "{stderr}"
    );
    assert!(
        stderr.contains("ingest.a search throughput (median)"),
        "{stderr}"
    );
    assert!(stderr.contains("repetitions per side"), "{stderr}");
    let out = t.run(&[
        "results",
        "--state",
        STATE,
        "--compare",
        RUN1,
        "--fail-on-regression",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn tests_that_raced_different_tracks_are_not_compared() {
    let mut t = Tree::new();
    let a = addr("ingest", "a");
    let json = String::from_utf8(read(fixture("success/race.json"))).unwrap();
    let csv = read(fixture("success/report.csv"));
    t.files(
        RUN1,
        &a,
        &[
            ("report.csv", csv.clone()),
            ("race.json", json.clone().into_bytes()),
        ],
    );
    let other = json.replace("\"track\": \"track\"", "\"track\": \"geonames\"");
    assert_ne!(other, json);
    let files = t.files(
        RUN2,
        &a,
        &[("report.csv", csv), ("race.json", other.into_bytes())],
    );
    t.record(&a, RUN2, Status::Completed, files);
    t.save();
    t.compare_refused(
        &[],
        "cannot compare tests that raced different workloads:\n  ingest.a: the baseline raced \
         track track, the contender track geonames",
    );
}

/// A configuration as rallyctl records it, of a local track at `track` whose `track.json`
/// has the sha256 `content`, on `instance_type`.
fn configuration(track: &str, content: &str, instance_type: &str) -> parse::Configuration {
    parse::Configuration {
        config_hash: format!("{track}-{content}-{instance_type}"),
        settings: serde_json::json!({
            "instance_type": instance_type,
            "track": {"path": track},
            "track_params": {"bulk_size": 100},
        }),
        race_command: "esrally race --track-params=track-params.json --track-path=<uploaded track>"
            .into(),
        inputs: [
            ("race.sh".to_owned(), "1".repeat(64)),
            (format!("{track}/track.json"), content.to_owned()),
            (format!("{track}/documents.json"), "2".repeat(64)),
        ]
        .into(),
    }
}

/// `ingest.a` in run 1 with `base` beside its files, in run 2 recorded in state with
/// `contender`; both race.json name the uploaded track `track`, as Rally does, and run 2's
/// search latency is 20 % higher.
fn two_configurations(base: &parse::Configuration, contender: &parse::Configuration) -> Tree {
    let mut t = Tree::new();
    let a = addr("ingest", "a");
    let json = read(fixture("success/race.json"));
    let described = |c: &parse::Configuration| serde_json::to_vec_pretty(c).unwrap();
    t.files(
        RUN1,
        &a,
        &[
            ("report.csv", report(&[task("bulk", 1000.0, 10.0, 0.0)])),
            ("race.json", json.clone()),
            ("rallyctl.json", described(base)),
        ],
    );
    let files = t.files(
        RUN2,
        &a,
        &[
            ("report.csv", report(&[task("bulk", 1000.0, 12.0, 0.0)])),
            ("race.json", json),
            ("rallyctl.json", described(contender)),
        ],
    );
    t.record(&a, RUN2, Status::Completed, files);
    let record = t.state.tests.get_mut(&a).unwrap();
    record.config_hash = contender.config_hash.clone();
    record.settings = contender.settings.clone().into();
    record.race_command = contender.race_command.clone();
    record.inputs = contender.inputs.clone();
    t.save();
    t
}

/// Rally names every uploaded track `track`: two different local tracks, or one whose files
/// changed, compared as like-for-like ("regressions", exit 3). They are refused, naming what
/// differs.
#[test]
fn different_local_tracks_are_not_compared() {
    let (one, two) = ("a".repeat(64), "b".repeat(64));
    for (base, contender, expect) in [
        (
            configuration("tracks/small", &one, "m5.large"),
            configuration("tracks/large", &one, "m5.large"),
            "ingest.a: the baseline raced track tracks/small, the contender track tracks/large",
        ),
        (
            configuration("tracks/small", &one, "m5.large"),
            configuration("tracks/small", &two, "m5.large"),
            "ingest.a: track tracks/small has other content (files that differ: track.json)",
        ),
    ] {
        let t = two_configurations(&base, &contender);
        t.compare_refused(
            &["--fail-on-regression"],
            &format!("cannot compare tests that raced different workloads:\n  {expect}"),
        );
    }
    // Other track params are another workload too.
    let mut params = configuration("tracks/small", &one, "m5.large");
    params.settings["track_params"] = serde_json::json!({"bulk_size": 5000});
    let t = two_configurations(&configuration("tracks/small", &one, "m5.large"), &params);
    let out = t.run(&["results", "--state", STATE, "--compare", RUN1]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(
            r#"the baseline raced track params {"bulk_size":100}, the contender track params {"bulk_size":5000}"#
        ),
        "{}",
        text(&out)
    );
}

/// The same workload on another configuration is compared, and the comparison says what
/// changed beside its verdicts: the settings' diff, as `plan` shows it.
#[test]
fn a_comparison_across_a_configuration_change_says_what_changed() {
    let same = "a".repeat(64);
    let t = two_configurations(
        &configuration("tracks/small", &same, "m5.large"),
        &configuration("tracks/small", &same, "m5.xlarge"),
    );
    let out = t.results(&["--compare", RUN1], 0);
    assert!(out.contains("regression"), "{out}");
    insta::assert_snapshot!(out);
    let v: serde_json::Value =
        serde_json::from_str(&t.results(&["--compare", RUN1, "--json"], 0)).unwrap();
    let diff = v["configuration_changes"][0]["diff"].as_str().unwrap();
    assert!(
        diff.contains("-  \"instance_type\": \"m5.large\"")
            && diff.contains("+  \"instance_type\": \"m5.xlarge\""),
        "{diff}"
    );
}

/// The configuration rallyctl records for `ingest.a` of an aws plan with a cluster of
/// `nodes` nodes, as `apply` writes it beside the races.
fn cluster_configuration(nodes: u32) -> parse::Configuration {
    let text = format!(
        "version = 1\nname = \"e2e\"\n[defaults]\nprovider = \"aws\"\nregion = \"us-east-1\"\n\
         ami = \"ami-12345678\"\ninstance_type = \"c5.large\"\ntrack = \"tiny\"\n\
         [[suite]]\nname = \"ingest\"\n[[suite.test]]\nname = \"a\"\n\
         cluster = {{ nodes = {nodes}, instance_type = \"r6i.xlarge\", distribution_version = \"8.15.0\" }}\n\
         load_drivers = 2\n"
    );
    let plan = rallyctl::plan::Plan::parse(Path::new("e2e.toml"), &text).unwrap();
    let test = plan.tests().next().unwrap();
    parse::Configuration {
        config_hash: format!("cluster-of-{nodes}"),
        settings: serde_json::from_str(&test.settings.canonical_json()).unwrap(),
        race_command: "esrally race --pipeline=benchmark-only".into(),
        inputs: Default::default(),
    }
}

/// Results show the cluster a test raced on; runs on different clusters are not compared
/// unless asked (their numbers measure the change of machines), and then the comparison says
/// what changed.
#[test]
fn results_on_another_cluster_are_compared_only_when_asked() {
    let t = two_configurations(&cluster_configuration(3), &cluster_configuration(5));
    let out = t.results(&[], 0);
    assert!(
        out.contains("5 × r6i.xlarge, 2 load drivers × c5.large"),
        "{out}"
    );
    insta::assert_snapshot!("results_on_a_cluster", out);
    let csv = t.results(&["--format", "csv"], 0);
    assert!(
        csv.contains(",c5.large,\"5 × r6i.xlarge, 2 load drivers × c5.large\","),
        "{csv}"
    );
    t.compare_refused(
        &[],
        "cannot compare tests that raced on different machines:\n  ingest.a: the baseline raced \
         on a cluster of 3 × r6i.xlarge, 2 load drivers × c5.large, the contender on a cluster \
         of 5 × r6i.xlarge, 2 load drivers × c5.large\ntheir numbers measure the change of \
         cluster; pass --allow-topology-change to compare them anyway",
    );
    let out = t.results(&["--compare", RUN1, "--allow-topology-change"], 0);
    assert!(out.contains("regression"), "{out}");
    insta::assert_snapshot!("a_comparison_across_clusters", out);
    // The report compares as `results` does.
    let report = ["report", "--state", STATE, "--compare", RUN1];
    let out = t.run(&report);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("--allow-topology-change"),
        "{}",
        text(&out)
    );
    let out = t.run(&[&report[..], &["--allow-topology-change"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// A cluster its configuration names but rallyctl cannot read is a problem named with the
/// test, not a result shown as if on one machine.
#[test]
fn a_cluster_that_cannot_be_read_is_named() {
    let mut damaged = cluster_configuration(3);
    damaged.settings["cluster"] = serde_json::json!("three nodes");
    let t = two_configurations(&damaged, &cluster_configuration(3));
    let out = t.run(&["results", "--state", STATE, "--run", RUN1]);
    assert!(
        text(&out).contains("ingest.a: cannot read the cluster it raced:"),
        "{}",
        text(&out)
    );
}

/// A damaged `rallyctl.json` is named with its line, and the races are compared on what
/// race.json says, as before rallyctl kept it.
#[test]
fn a_damaged_configuration_is_named_and_race_json_decides() {
    let same = "a".repeat(64);
    let t = two_configurations(
        &configuration("tracks/small", &same, "m5.large"),
        &configuration("tracks/small", &same, "m5.large"),
    );
    let path = t.path(&format!("results/e2e/{RUN1}/ingest/a/rallyctl.json"));
    std::fs::write(&path, "{\n  \"config_hash\": 3\n}\n").unwrap();
    let out = t.results(&["--compare", RUN1], 0);
    assert!(
        out.contains(&format!(
            "error: baseline ingest.a: results/e2e/{RUN1}/ingest/a/rallyctl.json:2: not a \
             configuration rallyctl wrote"
        )),
        "{out}"
    );
    assert!(out.contains("regression"), "{out}");
}

#[test]
fn the_baseline_is_recorded_in_state_and_used_by_the_gate() {
    let t = comparison_case();
    // The older spelling, PCT after a space, is refused with the one that works.
    let out = t.run(&["results", "--state", STATE, "--fail-on-regression", "10"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("write --fail-on-regression=10"),
        "{}",
        text(&out)
    );
    let out = t.run(&["results", "--state", STATE, "--fail-on-regression=10"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no baseline recorded"),
        "{}",
        text(&out)
    );

    let out = t.run(&["results", "--state", STATE, "--baseline", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "no run `nope` in this workspace; the latest are {RUN2}, {RUN1}"
        )),
        "{}",
        text(&out)
    );

    let serial = state::load(&t.path(STATE)).unwrap().unwrap().serial;
    let out = t.run(&["results", "--state", STATE, "--baseline", RUN1]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("Recorded {RUN1} as the baseline"))
    );
    let saved = state::load(&t.path(STATE)).unwrap().unwrap();
    assert_eq!(saved.baseline_run.as_deref(), Some(RUN1));
    assert_eq!(saved.serial, serial + 1);
    assert!(
        !t.path("state/e2e.state.json.lock").exists(),
        "lock released"
    );

    // The recorded baseline is what `--compare baseline` and the gate compare with.
    assert_eq!(
        t.results(&["--compare", "baseline"], 0),
        t.results(&["--compare", RUN1], 0)
    );
    assert!(t.results(&[], 0).contains(&format!("Baseline: {RUN1}")));
    let out = t.run(&["results", "--state", STATE, "--fail-on-regression=10"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let runs = t.results(&["--runs", "--format", "csv"], 0);
    assert!(
        runs.contains(&format!("{RUN1},2026-11-24T08:15:00Z,1,0,0,true")),
        "{runs}"
    );

    // `latest` names the newest run.
    t.results(&["--baseline", "latest"], 0);
    let saved = state::load(&t.path(STATE)).unwrap().unwrap();
    assert_eq!(saved.baseline_run.as_deref(), Some(RUN2));
}

/// A run in which no test produced a result (every test failed before its race, say for want
/// of credentials) is never accepted as a baseline.
#[test]
fn a_run_without_results_is_no_baseline() {
    let mut t = comparison_case();
    let address: Address = "s.broken".parse().unwrap();
    let failed = Status::Failed {
        step: Step::Launching,
        error: "no capacity".into(),
        log_tail: None,
        logs: None,
    };
    t.record(&address, "20261126T081500Z-cccccc", failed, vec![]);
    t.save();
    for run in ["20261126T081500Z-cccccc", "latest"] {
        let out = t.run(&["results", "--state", STATE, "--baseline", run]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("produced no result"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(
        state::load(&t.path(STATE)).unwrap().unwrap().baseline_run,
        None
    );
}

#[test]
fn the_plan_names_the_state_and_the_workspace() {
    let t = comparison_case();
    std::fs::write(t.path("rally.ini"), "[meta]\n").unwrap();
    std::fs::write(
        t.path("e2e.toml"),
        "version = 1\nname = \"e2e\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-1\"\n\
         instance_type = \"m5.large\"\nrally_config = \"rally.ini\"\n\
         [[suite]]\nname = \"ingest\"\n[[suite.test]]\nname = \"a\"\ntrack = \"geonames\"\n",
    )
    .unwrap();
    let out = t.run(&["results", "e2e.toml", "--format", "csv"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(RUN2));
    // Without state, the runs on disk are still listed; results need state.
    std::fs::remove_file(t.path(STATE)).unwrap();
    let out = t.run(&["results", "e2e.toml", "--runs", "--format", "csv"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let out = t.run(&["results", "e2e.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no state at state/e2e.state.json"));
    let out = t.run(&["results"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("name the plan file or pass --state"));
}

#[test]
fn real_rally_reports_are_parsed() {
    let tasks = parse::report_csv(&fixture("success/report.csv")).unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t.task.as_str()).collect();
    assert_eq!(names, ["index-append", "match-all"]);
    use rallyctl::results::metrics::Metric;
    let append = &tasks[0];
    assert_eq!(append.get(Metric::Throughput).unwrap().value, 5033.55);
    assert_eq!(append.get(Metric::Throughput).unwrap().unit, "docs/s");
    assert_eq!(append.get(Metric::LatencyP90).unwrap().value, 4.0540742);
    assert_eq!(append.get(Metric::ServiceTimeP50).unwrap().unit, "ms");
    assert_eq!(append.get(Metric::ErrorRate).unwrap().value, 0.0);
    // Too few samples for a 99th percentile: Rally leaves it out, and so do we.
    assert!(append.get(Metric::LatencyP99).is_none());
    assert_eq!(tasks[1].get(Metric::Throughput).unwrap().unit, "ops/s");

    // CSV and race.json of one race agree.
    let race: serde_json::Value =
        serde_json::from_slice(&read(fixture("success/race.json"))).unwrap();
    for (task, op) in tasks
        .iter()
        .zip(race["results"]["op_metrics"].as_array().unwrap())
    {
        assert_eq!(task.task, op["task"]);
        let median = op["throughput"]["median"].as_f64().unwrap();
        assert!((task.get(Metric::Throughput).unwrap().value - median).abs() < 0.01);
        assert_eq!(
            task.get(Metric::LatencyP50).unwrap().value,
            op["latency"]["50_0"].as_f64().unwrap()
        );
    }

    let failed = parse::report_csv(&fixture("error-rate/report.csv")).unwrap();
    assert_eq!(failed[1].task, "match-all");
    assert_eq!(failed[1].get(Metric::ErrorRate).unwrap().value, 100.0);
    assert!(failed[1].get(Metric::Throughput).is_none());

    let store = parse::report_csv(&fixture("es-metrics-store-report.csv")).unwrap();
    assert_eq!(store[0].get(Metric::Throughput).unwrap().value, 10929.87);

    let info = parse::race_json(&fixture("success/race.json")).unwrap();
    assert_eq!(info.rally_version.as_deref(), Some("2.13.0"));
    assert_eq!(info.distribution_version.as_deref(), Some("8.15.0"));
    assert_eq!(info.car.as_deref(), Some("external"));
    assert_eq!(info.task_durations["index-append"], 140.633266);
    let info = parse::race_json(&fixture("error-rate/race.json")).unwrap();
    assert_eq!(info.task_durations["match-all"], 25.839552);

    assert_eq!(
        parse::race_log_seconds(&fixture("success/race-console.log")),
        Some(37)
    );
    assert_eq!(
        parse::race_log_seconds(&fixture("error-rate/race-console.log")),
        Some(55)
    );
    assert_eq!(
        parse::race_log_seconds(&fixture("cluster-down/race-console.log")),
        Some(4)
    );
    assert_eq!(
        parse::race_log_seconds(&fixture("cluster-down/rally.log")),
        None
    );
}

#[test]
fn a_damaged_race_json_is_named_by_line_and_the_metrics_still_show() {
    let mut t = Tree::new();
    let a = addr("ingest", "a");
    let json = read(fixture("success/race.json"));
    let files = t.files(
        RUN1,
        &a,
        &[
            ("report.csv", read(fixture("success/report.csv"))),
            ("race.json", json[..json.len() / 2].to_vec()),
        ],
    );
    t.record(&a, RUN1, Status::Completed, files);
    t.save();
    let out = t.results(&[], 0);
    assert!(out.contains("5033.55 docs/s"), "{out}");
    assert!(
        out.contains(&format!(
            "error: results/e2e/{RUN1}/ingest/a/race.json:84: not a Rally race.json: EOF while parsing"
        )),
        "{out}"
    );
}

/// Everything a page could fetch: none may be in a self-contained report.
fn external_references(html: &str) -> Vec<&str> {
    [
        "src=", "href=", "url(", "@import", "<script", "<link", "<iframe",
    ]
    .into_iter()
    .filter(|needle| html.contains(needle))
    .collect()
}

#[test]
fn the_html_report_is_self_contained_and_renders_in_chromium() {
    let t = realistic();
    let out = t.run(&["results", "--state", STATE, "--baseline", RUN1]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = t.run(&["report", "--state", STATE]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Wrote the report to results/e2e/report.html.\n\
         Wrote its trends over 2 runs to results/e2e/trends.html.\n"
    );
    let html = std::fs::read_to_string(t.path("results/e2e/report.html")).unwrap();
    assert_eq!(external_references(&html), Vec::<&str>::new());
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("compared with baseline 20261124T081500Z-aaaaaa"));
    assert!(
        html.contains("against baseline 20261124T081500Z-aaaaaa (min effect ±5 %): 4 improvements")
    );
    // Two charts per test with tasks (a, b (8g), errors), each a plotters SVG.
    assert_eq!(html.matches("<svg ").count(), 6, "{html}");
    assert!(
        html.contains("ingest.&quot;b (8g)&quot;"),
        "names are escaped"
    );
    assert!(html.contains("Failed: the race exited with 64"));
    assert!(html.contains("track track · car external · Elasticsearch 8.15.0 · Rally 2.13.0"));
    // What the run and each test cost; a test whose price was not known costs "unknown".
    assert!(
        html.contains(
            "Run 20261125T081500Z-bbbbbb cost unknown for 0.50 machine-hours on 3 machines"
        ),
        "{html}"
    );
    assert!(
        html.contains("<th>cost</th>") && html.contains("<td>$0.032</td>"),
        "{html}"
    );
    assert!(html.contains("<td>unknown</td>"), "{html}");

    // -o, and a report without a baseline.
    let out = t.run(&[
        "report",
        "--state",
        STATE,
        "--compare",
        RUN2,
        "-o",
        "out/r.html",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(t.path("out/r.html").is_file());

    screenshot(&t.path("results/e2e/report.html"), "report");
    // Two runs: no change yet, and a series of one point (a task raced in one run only).
    let trends = std::fs::read_to_string(t.path("results/e2e/trends.html")).unwrap();
    assert!(
        trends.contains("<p>No series changed its level.</p>"),
        "{trends}"
    );
    screenshot(&t.path("results/e2e/trends.html"), "trends-of-two-runs");
}

#[test]
fn the_html_report_draws_repetitions_and_verdicts() {
    let t = repeated();
    let out = t.run(&[
        "report",
        "--state",
        STATE,
        "--compare",
        RUN1,
        "-o",
        "r.html",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let html = std::fs::read_to_string(t.path("r.html")).unwrap();
    assert_eq!(external_references(&html), Vec::<&str>::new());
    // A dot per repetition, both sides, in the throughput and latency charts.
    assert!(html.matches("<circle ").count() > 5 * 2 * 2, "{html}");
    assert!(html.contains("1100.00 [1089.23, 1110.82] (n=5)"), "{html}");
    for expect in [
        "<th>verdict</th>",
        "inconclusive (~",
        "n = 1: a threshold, not a statistical test",
        "4 regressions, 2 improvements",
    ] {
        assert!(html.contains(expect), "{expect}");
    }
}

/// Renders a page of the report in headless Chromium (when installed): it must load without
/// console errors and paint a page. The page and its screenshot are kept in the target
/// directory for a look, as `name`.html and `name`.png.
fn screenshot(report: &Path, name: &str) {
    let html = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.html"));
    std::fs::copy(report, &html).unwrap();
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        // CI installs it (tests/setup-env.sh): there, a missing browser is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "/usr/bin/chromium is missing: run tests/setup-env.sh"
        );
        println!("skipped: /usr/bin/chromium is not installed (run tests/setup-env.sh)");
        return;
    }
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.png"));
    let _ = std::fs::remove_file(&png);
    let profile = tempfile::tempdir().unwrap();
    // Headless, on its own profile, in a 1200 × 1600 window, with what else it is asked.
    let browse = |page: &Path, asked: &[&str]| {
        Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                &format!("--user-data-dir={}", profile.path().display()),
                "--window-size=1200,1600",
            ])
            .args(asked)
            .arg(format!("file://{}", page.display()))
            .output()
            .expect("chromium runs")
    };
    let out = browse(
        &html,
        &[
            "--enable-logging=stderr",
            "--v=0",
            &format!("--screenshot={}", png.display()),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !stderr.contains("CONSOLE") && !stderr.contains("Uncaught"),
        "the page logged errors:\n{stderr}"
    );
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    assert!(bytes.len() > 20_000, "a blank page? {} bytes", bytes.len());
    println!("screenshot: {}", png.display());

    // Every table (if any) fits the page at the screenshot's width: a copy of the report with a
    // script that writes down each table's overflow, read back from the DOM Chromium dumps.
    let measured = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-measured.html"));
    let script = "<script>document.body.insertAdjacentHTML('beforeend', '<pre id=overflow>' + \
                  [...document.querySelectorAll('.wide')].map(e => e.scrollWidth - e.clientWidth).join(',') \
                  + '</pre>')</script>";
    let report = std::fs::read_to_string(&html).unwrap();
    std::fs::write(
        &measured,
        report.replace("</body>", &format!("{script}</body>")),
    )
    .unwrap();
    let out = browse(&measured, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout);
    let overflow = dom
        .split_once("<pre id=\"overflow\">")
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .unwrap_or_else(|| panic!("the script did not run: {}", text(&out)))
        .0;
    assert!(
        overflow
            .split(',')
            .filter(|px| !px.is_empty())
            .all(|px| px.parse::<i64>().unwrap() <= 0),
        "tables wider than a 1200-pixel page by {overflow} pixels"
    );
}

/// Beside the report of a workspace with more than one run, its trends page: the changes
/// first, in a table, then a chart per test, task and metric with its changes marked;
/// self-contained, it renders in Chromium with every table fitting the page. A report as of an
/// earlier run draws the runs up to it.
#[test]
fn the_trends_page_shows_the_changes_first_and_renders_in_chromium() {
    let t = nightly();
    let out = t.run(&["report", "--state", STATE]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Wrote the report to results/e2e/report.html.\n\
         Wrote its trends over 30 runs to results/e2e/trends.html.\n"
    );
    let html = std::fs::read_to_string(t.path("results/e2e/trends.html")).unwrap();
    assert_eq!(external_references(&html), Vec::<&str>::new());
    assert!(html.starts_with("<!DOCTYPE html>"));
    let table = html.find("<table>").expect("a table of the changes");
    assert!(
        table < html.find("<svg ").unwrap(),
        "the changes come first"
    );
    // The regression first, then the improvement, each between the runs around it.
    let rows: Vec<&str> = html[table..]
        .split("</table>")
        .next()
        .unwrap()
        .split("<tr>")
        .skip(2)
        .collect();
    assert_eq!(rows.len(), 2, "{html}");
    for (row, expect) in rows.iter().zip([
        [
            "<td>ingest.a</td><td>bulk</td><td>latency p50</td>",
            "<td>20261121T020000Z-n00021</td><td>20261122T020000Z-n00022</td>",
            "<td class=\"bad\">regression</td>",
            "configuration changed",
        ],
        [
            "<td>ingest.a</td><td>bulk</td><td>throughput (median)</td>",
            "<td>20261114T020000Z-n00014</td><td>20261115T020000Z-n00015</td>",
            "<td class=\"good\">improvement</td>",
            "<td>p=",
        ],
    ]) {
        for e in expect {
            assert!(row.contains(e), "{e} in {row}");
        }
    }
    assert!(rows[1].contains("<td>+20.0 % ["), "{}", rows[1]);
    // A chart per series: ingest.a's bulk and search.q's query, throughput, p50 and p90
    // latency, p50 and p90 service time and error rate each.
    let charts = html.matches("<svg ").count();
    assert_eq!(charts, 12, "{html}");
    assert!(html.contains("+20.0 % improvement") && html.contains("+30.1 % regression"));
    screenshot(&t.path("results/e2e/trends.html"), "trends");

    // The thresholds are history's: only the regression is over 25 %.
    let out = t.run(&["report", "--state", STATE, "--min-magnitude", "0.25"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let html = std::fs::read_to_string(t.path("results/e2e/trends.html")).unwrap();
    assert!(
        html.contains("+30.1 % regression") && !html.contains("+20.0 % improvement"),
        "{html}"
    );
    let out = t.run(&["report", "--state", STATE, "--max-pvalue", "2"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));

    let out = t.run(&[
        "report",
        "--state",
        STATE,
        "--run",
        "20261110T020000Z-n00010",
        "-o",
        "old/r.html",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("Wrote its trends over 10 runs to old/trends.html."));
    let html = std::fs::read_to_string(t.path("old/trends.html")).unwrap();
    assert!(
        html.contains("<p>No series changed its level.</p>"),
        "{html}"
    );
}

/// The trends page cannot be written (a directory stands at its place): the report is, the
/// error names the page's path and the command fails; a report named like the trends page
/// is refused before anything is written.
#[test]
fn an_unwritable_trends_page_is_an_error_naming_it() {
    let t = nightly();
    std::fs::create_dir_all(t.path("out/trends.html")).unwrap();
    let out = t.run(&["report", "--state", STATE, "-o", "out/r.html"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(t.path("out/r.html").is_file());
    assert!(
        text(&out).contains("error: cannot write out/trends.html: Is a directory"),
        "{}",
        text(&out)
    );
    let out = t.run(&["report", "--state", STATE, "-o", "elsewhere/trends.html"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        text(&out).contains("the report's trends page is written beside it as trends.html: name the report otherwise than elsewhere/trends.html"),
        "{}",
        text(&out)
    );
    assert!(!t.path("elsewhere").exists());
}

/// Two variants of `ingest.heap` raced interleaved in one run, five races each: `8g`'s bulk
/// latency 30 % above `4g`'s, its search the same.
fn variants() -> Tree {
    let mut t = Tree::new();
    let wobble = [1.0, 1.01, 0.99, 1.005, 0.995];
    for (name, bulk_latency) in [("4g", 10.0), ("8g", 13.0)] {
        let address = addr("ingest", &format!("heap-{name}"));
        let reps: Vec<Vec<(&str, Vec<u8>)>> = wobble
            .iter()
            .map(|w| {
                vec![(
                    "report.csv",
                    report(&[
                        task("bulk", 1000.0 * w, bulk_latency * w, 0.0),
                        task("search", 500.0 * w, 2.0 * w, 0.0),
                    ]),
                )]
            })
            .collect();
        let files = t.repetitions(RUN2, &address, &reps);
        t.record_repetitions(&address, RUN2, files);
        t.state.tests.get_mut(&address).unwrap().variant = Some(rallyctl::plan::VariantOf {
            test: "heap".into(),
            name: name.into(),
        });
    }
    t.save();
    t
}

#[test]
fn the_variants_of_a_run_are_compared_with_one_of_them() {
    let t = variants();
    let out = t.results(&["--variants", "4g"], 0);
    insta::assert_snapshot!(out);
    let v: serde_json::Value =
        serde_json::from_str(&t.results(&["--variants", "4g", "--json"], 0)).unwrap();
    assert_eq!(v["baseline_variant"], "4g");
    let verdict = |task: &str, metric: &str| {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["task"] == task && r["metric"] == metric)
            .map(|r| (r["test"].clone(), r["verdict"].clone()))
            .unwrap()
    };
    assert_eq!(
        verdict("bulk", "latency_p50"),
        (
            serde_json::json!("ingest.heap-8g"),
            serde_json::json!("regression")
        )
    );
    assert_eq!(verdict("search", "latency_p50").1, "no_change");
    // The gate reads the variants' comparison like a baseline's.
    t.results(&["--variants", "4g", "--fail-on-regression"], 3);
    // The other way round, 8g is the baseline and 4g improves.
    let other = t.results(&["--variants", "8g", "--format", "csv"], 0);
    assert!(other.contains("improvement"), "{other}");
}

#[test]
fn a_variant_no_test_has_is_refused_naming_those_there_are() {
    let t = variants();
    let out = t.run(&["results", "--state", STATE, "--variants", "16g"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no test of this view has a variant `16g`; its variants are 4g, 8g"),
        "{}",
        text(&out)
    );
}

/// The variants of `variants()`, but `8g` re-raced alone by a later apply (its race in
/// `4g`'s run had failed): in another run, on another machine.
fn variants_raced_apart() -> Tree {
    let mut t = variants();
    let record = t.state.tests.get_mut(&addr("ingest", "heap-8g")).unwrap();
    record.run_id = Some(RUN3.into());
    record.machine.as_mut().unwrap().id = "i-0999".into();
    for earlier in &mut record.earlier {
        earlier.run_id = RUN3.into();
        earlier.machine = "i-0999".into();
    }
    t.save();
    t
}

const RUN3: &str = "20261126T081500Z-cccccc";

/// Interleaving is the point of variants: variants raced apart are not compared, unless
/// `--allow-unpaired` says so, and then the output says which were not interleaved.
#[test]
fn variants_not_raced_interleaved_are_not_compared_unless_allowed() {
    let t = variants_raced_apart();
    let out = t.run(&["results", "--state", STATE, "--variants", "4g"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(out.stdout, b"", "no rows");
    assert!(
        text(&out).contains(
            "cannot compare variants whose races were not interleaved (on one machine, in one \
             run):\n  ingest.heap-8g raced in run 20261126T081500Z-cccccc on i-0999, variant \
             `4g` in run 20261125T081500Z-bbbbbb on i-0123"
        ),
        "{}",
        text(&out)
    );
    let out = t.results(&["--variants", "4g", "--allow-unpaired"], 0);
    assert!(
        out.contains(
            "Not interleaved, compared as --allow-unpaired asks: ingest.heap-8g raced in run"
        ),
        "{out}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&t.results(&["--variants", "4g", "--allow-unpaired", "--json"], 0))
            .unwrap();
    assert_eq!(v["unpaired"].as_array().unwrap().len(), 1, "{v}");
    // Without --variants the flag means nothing: refused.
    let out = t.run(&["results", "--state", STATE, "--allow-unpaired"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
}

/// `results --state PATH` reads the results of that state's workspace, wherever it is run
/// from: beside the state's `state/` directory.
#[test]
fn results_of_a_state_elsewhere_are_read_beside_it() {
    let t = realistic();
    let here = t.results(&["--runs"], 0);
    let elsewhere = tempfile::tempdir().unwrap();
    let state = t.path(STATE);
    let out = command(
        elsewhere.path(),
        &["results", "--runs", "--state", state.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), here);
}

/// Thirty nightly runs, 1 to 30 November, of `ingest.a` and `search.q`, with a little noise:
/// `ingest.a`'s bulk throughput steps up 20 % from night 15 and its p50 latency up 30 % from
/// night 22, the night its configuration changed; `search.q` holds steady. Each run's files
/// carry their configuration; state records the last run, as apply leaves it, where `ingest.a`
/// raced three times.
fn nightly() -> Tree {
    let mut t = Tree::new();
    let (a, q) = (addr("ingest", "a"), addr("search", "q"));
    let noise = [0.0, 1.5, -1.0, 0.5, -2.0, 1.0, -0.5];
    let describe = |hash: &str| {
        let c = parse::Configuration {
            config_hash: hash.into(),
            settings: serde_json::json!({"instance_type": "m5.xlarge", "track": "tiny"}),
            race_command: "esrally race".into(),
            inputs: Default::default(),
        };
        serde_json::to_vec_pretty(&c).unwrap()
    };
    let steady = |name, level: f64, w: f64| Task {
        name,
        throughput: Some((level * w, "docs/s")),
        latency: [Some(10.0 * w), Some(20.0 * w), None],
        service_time: [Some(9.0 * w), Some(18.0 * w), None],
        error_rate: 0.0,
    };
    for night in 1..=30 {
        let run = format!("202611{night:02}T020000Z-n{night:05}");
        let w = 1.0 + noise[night % noise.len()] / 100.0;
        let hash = if night < 22 { "h1" } else { "h2" };
        let bulk = |spread: f64| {
            let mut bulk = steady("bulk", if night < 15 { 1000.0 } else { 1200.0 }, w * spread);
            bulk.latency[0] = Some(if night < 22 { 10.0 } else { 13.0 } * w * spread);
            vec![
                ("report.csv", report(&[bulk])),
                ("rallyctl.json", describe(hash)),
            ]
        };
        // The last night raced three times: its point is their median, their spread kept.
        let reps: Vec<_> = match night {
            30 => [1.0, 1.05, 0.97].map(bulk).into(),
            _ => vec![bulk(1.0)],
        };
        let files = t.repetitions(&run, &a, &reps);
        let searched = t.files(
            &run,
            &q,
            &[
                ("report.csv", report(&[steady("query", 50.0, w)])),
                ("rallyctl.json", describe("q1")),
            ],
        );
        if night == 30 {
            t.record_repetitions(&a, &run, files);
            t.state.tests.get_mut(&a).unwrap().config_hash = hash.into();
            t.record(&q, &run, Status::Completed, searched);
            t.state.tests.get_mut(&q).unwrap().config_hash = "q1".into();
        }
    }
    t.save();
    t
}

impl Tree {
    /// `rallyctl history --state STATE ARGS…`, which must exit with `code`; its stdout.
    fn history(&self, args: &[&str], code: i32) -> String {
        let mut all = vec!["history", "--state", STATE];
        all.extend(args);
        let out = self.run(&all);
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The two steps are found at the nights they came in, the throughput's an improvement, the
/// latency's a regression that came with a configuration change; the steady series are left
/// out, and every line fits 100 columns.
#[test]
fn history_finds_each_step_at_its_run_with_its_verdict() {
    let t = nightly();
    let out = t.history(&[], 0);
    assert!(out.lines().all(|l| l.chars().count() <= 100), "{out}");
    insta::assert_snapshot!(out);
    let v: serde_json::Value = serde_json::from_str(&t.history(&["--json"], 0)).unwrap();
    let series = v["series"].as_array().unwrap();
    let changes: Vec<(&str, &str, &str, &str, bool)> = series
        .iter()
        .flat_map(|s| {
            s["changes"].as_array().unwrap().iter().map(move |c| {
                (
                    s["metric"].as_str().unwrap(),
                    c["last_before"].as_str().unwrap(),
                    c["first_after"].as_str().unwrap(),
                    c["verdict"].as_str().unwrap(),
                    c["configuration_changed"].as_bool().unwrap(),
                )
            })
        })
        .collect();
    assert_eq!(
        changes,
        [
            (
                "throughput",
                "20261114T020000Z-n00014",
                "20261115T020000Z-n00015",
                "improvement",
                false
            ),
            (
                "latency_p50",
                "20261121T020000Z-n00021",
                "20261122T020000Z-n00022",
                "regression",
                true
            ),
        ]
    );
    insta::assert_json_snapshot!(v);
}

/// `--test`, `--task` and `--metric` take exact names, repeated or comma-separated; `--all`
/// shows the series without a change; a test or task no run raced is refused, naming those
/// there are, and a metric rallyctl does not know is a usage error.
#[test]
fn history_filters_by_test_task_and_metric() {
    let t = nightly();
    let v: serde_json::Value = serde_json::from_str(&t.history(
        &[
            "--json",
            "--all",
            "--test",
            "ingest.a",
            "--metric",
            "throughput,latency_p90",
        ],
        0,
    ))
    .unwrap();
    let shown: Vec<(&str, &str)> = (v["series"].as_array().unwrap().iter())
        .map(|s| (s["test"].as_str().unwrap(), s["metric"].as_str().unwrap()))
        .collect();
    assert_eq!(
        shown,
        [("ingest.a", "throughput"), ("ingest.a", "latency_p90")]
    );
    assert_eq!(v["series"][0]["points"].as_array().unwrap().len(), 30);
    let out = t.history(&["--task", "query", "--metric", "latency_p50", "--all"], 0);
    assert!(
        out.contains("search.q · query · latency p50: 30 runs"),
        "{out}"
    );
    assert!(!out.contains("ingest.a"), "{out}");
    // Filtered to the steady test alone, nothing changed.
    let out = t.history(&["--test", "search.q"], 0);
    assert!(out.contains("30 runs, 6 series, 0 with a change"), "{out}");
    assert!(!out.contains('▲') && !out.contains('▼'), "{out}");
    let out = t.run(&["history", "--state", STATE, "--test", "ingest.b"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no run raced test `ingest.b` with results; the tests with a history are ingest.a, search.q"),
        "{}",
        text(&out)
    );
    let out = t.run(&["history", "--state", STATE, "--task", "bulk,nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no run raced task `nope`"),
        "{}",
        text(&out)
    );
    let out = t.run(&["history", "--state", STATE, "--metric", "speed"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        text(&out).contains("`speed` is no metric"),
        "{}",
        text(&out)
    );
    // A stricter p-value or a larger magnitude than the step finds nothing.
    let out = t.history(&["--min-magnitude", "0.5"], 0);
    assert!(out.contains("0 with a change"), "{out}");
    let out = t.run(&["history", "--state", STATE, "--max-pvalue", "0"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
}

/// The CSV has a row per point with the change at the first run after it; Markdown a row per
/// series.
#[test]
fn history_as_csv_and_markdown() {
    let t = nightly();
    let out = t.history(&["--format", "csv"], 0);
    assert_every_row_has_every_column(&out);
    assert_eq!(out.lines().count(), 1 + 2 * 30, "{out}");
    assert!(
        out.lines().any(|l| l
            .starts_with("ingest.a,bulk,throughput,docs/s,20261115T020000Z-n00015,")
            && l.contains(",improvement,")),
        "{out}"
    );
    insta::assert_snapshot!(t.history(&["--format", "markdown"], 0));
}

/// No state where `--state` points, and no plan to name the workspace: said plainly, exit 1.
/// A workspace with state but no run yet: said too.
#[test]
fn history_without_state_or_runs_says_so() {
    let t = Tree::new();
    let out = t.run(&["history", "--state", "state/none.state.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no state at state/none.state.json"),
        "{}",
        text(&out)
    );
    let mut t = Tree::new();
    t.save();
    let out = t.run(&["history", "--state", STATE]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no runs under results/e2e yet"),
        "{}",
        text(&out)
    );
}

/// A night whose race had failed requests measured nothing: no point. A night whose report is
/// damaged is no point either, and a warning names the file and line; the rest of the series,
/// and its change, still show.
#[test]
fn history_skips_failed_and_damaged_races_naming_the_damage() {
    let t = nightly();
    let night = |n: u32, test: &str| {
        t.path(&format!(
            "results/e2e/202611{n:02}T020000Z-n{n:05}/{test}/report.csv"
        ))
    };
    std::fs::write(
        night(5, "search/q"),
        report(&[task("query", 50.0, 10.0, 5.0)]),
    )
    .unwrap();
    std::fs::write(
        night(10, "ingest/a"),
        "Metric,Task,Value,Unit\r\nMedian Throughput,bulk,fast,docs/s\r\n",
    )
    .unwrap();
    let out = t.run(&["history", "--state", STATE, "--json", "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ingest.a in run 20261110T020000Z-n00010: ")
            && stderr.contains("20261110T020000Z-n00010/ingest/a/report.csv:2: `fast`"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for s in v["series"].as_array().unwrap() {
        let runs: Vec<&str> = (s["points"].as_array().unwrap().iter())
            .map(|p| p["run"].as_str().unwrap())
            .collect();
        assert_eq!(runs.len(), 29, "{s}");
        let skipped = match s["test"].as_str().unwrap() {
            "ingest.a" => "20261110T020000Z-n00010",
            _ => "20261105T020000Z-n00005",
        };
        assert!(!runs.contains(&skipped), "{s}");
    }
    let throughput = &v["series"][0];
    assert_eq!(throughput["metric"], "throughput");
    assert_eq!(
        throughput["changes"][0]["first_after"],
        "20261115T020000Z-n00015"
    );
}

/// A JUnit test case read back: class name, name, and the tag and message (the text of a
/// `system-out`) of what it holds first (none when it passed).
type JunitCase = (String, String, Option<(String, String)>);

/// `xml` read back by a strict XML parser (Python's expat), with its counts checked: its test
/// cases and its suite's `system-out`.
fn junit_cases(xml: &str) -> (Vec<JunitCase>, String) {
    use std::io::Write;
    let script = "import sys, json, xml.etree.ElementTree as E\n\
                  root = E.parse(sys.stdin.buffer).getroot()\n\
                  assert root.tag == 'testsuites', root.tag\n\
                  out = []\n\
                  for suite in root:\n\
                  \x20   assert suite.tag == 'testsuite', suite.tag\n\
                  \x20   for case in suite.iter('testcase'):\n\
                  \x20       inner = [[c.tag, c.text if c.tag == 'system-out' else c.get('message')] for c in case]\n\
                  \x20       out.append([case.get('classname'), case.get('name'), inner[0] if inner else None])\n\
                  \x20   for key in ['tests', 'failures', 'errors', 'skipped']:\n\
                  \x20       assert suite.get(key) == root.get(key), key\n\
                  \x20   assert int(suite.get('tests')) == len(out)\n\
                  said = root.find('testsuite/system-out')\n\
                  json.dump([out, '' if said is None else said.text], sys.stdout)\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not valid JUnit XML: {}\n{xml}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `--format junit`: a test case per test, task and metric that a strict XML parser reads
/// back, with a task name that needs escaping; a regression and a missing metric fail with
/// their numbers, improvements and no change pass, a new metric is skipped with why.
#[test]
fn comparison_as_junit() {
    let odd = "odd <&'>\u{1}";
    let failing = Task {
        name: "search",
        throughput: None,
        latency: [Some(2.0), Some(3.0), Some(4.0)],
        service_time: [Some(2.0), Some(3.0), Some(4.0)],
        error_rate: 100.0,
    };
    let t = two_runs(
        &[
            task("bulk", 1000.0, 10.0, 0.0),
            Task {
                throughput: Some((500.0, "ops/s")),
                error_rate: 0.0,
                ..failing
            },
            task(odd, 10.0, 1.0, 0.0),
        ],
        &[
            task("bulk", 1100.0, 20.0, 0.0),
            failing,
            task(odd, 10.0, 1.0, 0.0),
            task("scroll", 50.0, 100.0, 0.0),
        ],
    );
    let xml = t.results(&["--compare", RUN1, "--format", "junit"], 0);
    let (cases, said) = junit_cases(&xml);
    assert!(said.starts_with("n = 1: a threshold"), "{said}");
    let verdict = |name: &str| {
        cases
            .iter()
            .find(|(class, n, _)| class == "ingest.a" && n == name)
            .unwrap_or_else(|| panic!("no case {name}: {xml}"))
            .2
            .clone()
    };
    assert_eq!(
        verdict("bulk / throughput (median)"),
        None,
        "an improvement passes"
    );
    assert_eq!(
        verdict("bulk / latency p50"),
        Some((
            "failure".into(),
            "regression: baseline 10.00 ms, contender 20.00 ms, change +100.0 %, threshold ±5 % \
             (no statistical test)"
                .into()
        ))
    );
    assert_eq!(
        verdict("odd <&'>\u{fffd} / latency p50"),
        None,
        "the escaped name reads back"
    );
    let (tag, why) = verdict("scroll / throughput (median)").unwrap();
    assert_eq!(
        (tag.as_str(), why.starts_with("new: not in the baseline")),
        ("skipped", true)
    );
    insta::assert_snapshot!(xml);
    // Tested rows carry their interval and p; an inconclusive one is skipped with what would
    // settle it.
    let (cases, _) = junit_cases(&repeated().results(&["--compare", RUN1, "--format", "junit"], 0));
    let message = |name: &str| {
        let case = cases.iter().find(|(c, n, _)| c == "ingest.a" && n == name);
        case.and_then(|c| c.2.clone()).unwrap_or_default()
    };
    assert_eq!(
        message("bulk / latency p50"),
        (
            "failure".into(),
            "regression: baseline 10.00 [9.90, 10.10] ms (n=5, rsd 0.8%), contender 12.00 \
             [11.88, 12.12] ms (n=5, rsd 0.8%), change +20.0 % [+17.7, +22.4], p <0.001 \
             (Welch's t on logs, Holm), min effect ±5 %"
                .into()
        )
    );
    let (tag, why) = message("search / throughput (median)");
    assert!(
        tag == "skipped" && why.ends_with("about 39 repetitions per side would settle it"),
        "{tag}: {why}"
    );
    // A gate failing still writes the whole report.
    let gated = t.run(&[
        "results",
        "--state",
        STATE,
        "--fail-on-regression",
        "--compare",
        RUN1,
        "--format",
        "junit",
    ]);
    assert_eq!(gated.status.code(), Some(3), "{}", text(&gated));
    assert_eq!(String::from_utf8(gated.stdout).unwrap(), xml);
}

/// JUnit holds verdicts: without a comparison (results of a run, the list of runs) it is
/// refused as a usage error before anything is read.
#[test]
fn junit_without_a_comparison_is_refused() {
    let t = comparison_case();
    for args in [&["--format", "junit"][..], &["--runs", "--format", "junit"]] {
        let mut all = vec!["results", "--state", STATE];
        all.extend(args);
        let out = t.run(&all);
        assert_eq!(out.status.code(), Some(64), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("--format junit writes a comparison's verdicts: pass --compare RUN"),
            "{}",
            text(&out)
        );
    }
}

/// With `GITHUB_STEP_SUMMARY` naming a file, a comparison appends its Markdown summary there,
/// verdicts first, and keeps what the job's earlier steps wrote; a file that cannot be written
/// is warned about, naming it, and changes neither the output nor the exit code.
#[test]
fn a_comparison_appends_its_summary_to_the_github_step_summary() {
    let t = repeated();
    let summary = t.path("step-summary.md");
    std::fs::write(&summary, "## Earlier step\nkept").unwrap();
    let args = ["results", "--state", STATE, "--compare", RUN1];
    let quiet = t.run(&args);
    let out = command(t.dir.path(), &args)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(out.stdout, quiet.stdout, "stdout is the same");
    let written = std::fs::read_to_string(&summary).unwrap();
    assert!(written.starts_with("## Earlier step\nkept\n"), "{written}");
    insta::assert_snapshot!(written);
    // Appended again, not rewritten.
    command(t.dir.path(), &args)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .output()
        .unwrap();
    let twice = std::fs::read_to_string(&summary).unwrap();
    assert_eq!(
        twice,
        format!("{written}{}", &written["## Earlier step\nkept".len()..])
    );

    an_unwritable_step_summary_is_warned_about(t.dir.path(), &args, &quiet.stdout);
}

/// A comparison across a configuration change says so in its JUnit report too (the suite's
/// `system-out`), with the diff's quotes and line breaks read back intact.
#[test]
fn a_junit_comparison_across_a_configuration_change_says_what_changed() {
    let same = "a".repeat(64);
    let t = two_configurations(
        &configuration("tracks/small", &same, "m5.large"),
        &configuration("tracks/small", &same, "m5.xlarge"),
    );
    let (cases, said) = junit_cases(&t.results(&["--compare", RUN1, "--format", "junit"], 0));
    assert!(!cases.is_empty());
    assert!(
        said.contains("the configuration changed between the two sides")
            && said.contains("\n-  \"instance_type\": \"m5.large\"")
            && said.contains("\n+  \"instance_type\": \"m5.xlarge\""),
        "{said}"
    );
}

/// `rallyctl results ARGS --notify URL` against the webhook; its output.
fn notified(t: &Tree, args: &[&str], url: &str) -> Output {
    let mut all = vec!["results", "--state", STATE, "--compare", RUN1];
    all.extend(args);
    all.extend(["--notify", url]);
    let out = t.run(&all);
    let printed = text(&out);
    assert!(
        !printed.contains("s3cr3t-t0ken"),
        "the URL's secret is printed: {printed}"
    );
    out
}

/// A comparison that found a regression POSTs it to the `--notify` webhook: Slack's `text`
/// naming the workspace, the count and the top regressions with their numbers, and the
/// regressed rows as structured verdicts; the gate's failure is its own kind, the URL may come
/// from the environment, and it is printed nowhere. Nothing regressed: nothing is sent.
#[test]
fn a_regression_is_posted_to_the_notify_webhook_and_its_url_printed_nowhere() {
    let t = repeated();
    let quiet = t.run(&["results", "--state", STATE, "--compare", RUN1]);
    let hook = Webhook::answering(&[200]);
    let out = notified(&t, &[], &hook.url);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(out.stdout, quiet.stdout);
    assert!(out.stderr.is_empty(), "{}", text(&out));
    let received = hook.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].request_line,
        "POST /services/T000/B000/s3cr3t-t0ken HTTP/1.1"
    );
    assert_eq!(
        received[0].content_type.as_deref(),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(body["kind"], "regression");
    assert_eq!(body["workspace"], "e2e");
    assert_eq!(body["run_id"], RUN2);
    let message = body["text"].as_str().unwrap();
    assert!(
        message.starts_with("rallyctl regression in workspace `e2e`: ")
            && message.contains("\ningest.a bulk latency p50: 10.00 -> 12.00 ms (+20.0 %"),
        "{message}"
    );
    let verdicts = body["verdicts"].as_array().unwrap();
    assert!(!verdicts.is_empty());
    for v in verdicts {
        assert!(
            ["regression", "missing"].contains(&v["verdict"].as_str().unwrap()),
            "{v}"
        );
        assert!(v["test"].is_string() && v["task"].is_string() && v["metric"].is_string());
    }
    assert!(body.get("failures").is_none(), "{body}");

    let hook = Webhook::answering(&[200]);
    let out = command(
        t.dir.path(),
        &[
            "results",
            "--state",
            STATE,
            "--compare",
            RUN1,
            "--fail-on-regression",
        ],
    )
    .env("RALLYCTL_NOTIFY_URL", &hook.url)
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(!text(&out).contains("s3cr3t-t0ken"), "{}", text(&out));
    let body: serde_json::Value = serde_json::from_str(&hook.received()[0].body).unwrap();
    assert_eq!(body["kind"], "gate_failed");

    let better = |throughput, p50| task("bulk", throughput, p50, 0.0);
    let t = two_runs(&[better(1000.0, 10.0)], &[better(1200.0, 8.0)]);
    let hook = Webhook::answering(&[200]);
    assert_eq!(notified(&t, &[], &hook.url).status.code(), Some(0));
    assert!(hook.received().is_empty(), "{:?}", hook.received());
}

/// A webhook answering 500 is tried again after a backoff, and takes the message the third time.
#[test]
fn a_webhook_answering_500_is_retried_until_it_takes_the_message() {
    let t = repeated();
    let hook = Webhook::answering(&[500, 500, 200]);
    let out = notified(&t, &[], &hook.url);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
    let received = hook.received();
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|r| r.body == received[0].body));
}

/// A webhook refusing the message (400) is not tried again: a warning naming its host only,
/// and the exit code the comparison gives without it.
#[test]
fn a_webhook_refusing_the_message_is_warned_about_once_and_changes_no_exit_code() {
    let t = repeated();
    let hook = Webhook::answering(&[400]);
    let out = notified(&t, &["--fail-on-regression"], &hook.url);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(hook.received().len(), 1);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("warning: cannot notify the webhook: 127.0.0.1 answered HTTP 400"),
        "{}",
        text(&out)
    );
}

/// A webhook nobody listens at is tried three times and warned about, naming its host only;
/// the command's output and exit code are those it gives without `--notify`.
#[test]
fn an_unreachable_webhook_is_warned_about_and_changes_no_exit_code() {
    let t = repeated();
    let quiet = t.run(&["results", "--state", STATE, "--compare", RUN1]);
    let out = notified(&t, &[], &unreachable_url());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(out.stdout, quiet.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: cannot notify the webhook: cannot reach 127.0.0.1: "),
        "{stderr}"
    );
}

/// `history --notify`: the morning after night 22 (the history up to it) its latency step is
/// new and POSTed, in `text` naming test, task, metric, the runs before and after, the size
/// and the verdict, and structured; each later morning it is old news and nothing is sent,
/// nor for the throughput step of night 15. The output is that without `--notify`, and the
/// URL (also from the environment) is printed nowhere.
#[test]
fn a_new_change_point_is_posted_to_the_notify_webhook_once() {
    let t = nightly();
    let morning = |night: u32, url: &str| -> Output {
        let until = format!("2026-11-{night:02}");
        let out = command(
            t.dir.path(),
            &["history", "--state", STATE, "--until", &until],
        )
        .env("RALLYCTL_NOTIFY_URL", url)
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(!text(&out).contains("s3cr3t-t0ken"), "{}", text(&out));
        out
    };
    let hook = Webhook::answering(&[200]);
    let out = morning(22, &hook.url);
    assert!(out.stderr.is_empty(), "{}", text(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        t.history(&["--until", "2026-11-22"], 0)
    );
    let received = hook.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let body: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(body["kind"], "change_point");
    assert_eq!(body["workspace"], "e2e");
    assert_eq!(body["run_id"], "20261122T020000Z-n00022");
    let changes = body["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{body:#}");
    let c = &changes[0];
    for (field, value) in [
        ("test", "ingest.a"),
        ("task", "bulk"),
        ("metric", "latency_p50"),
        ("unit", "ms"),
        ("last_before", "20261121T020000Z-n00021"),
        ("first_after", "20261122T020000Z-n00022"),
        ("verdict", "regression"),
    ] {
        assert_eq!(c[field], value, "{field}: {c:#}");
    }
    assert_eq!(
        (c["runs_before"].as_u64(), c["runs_after"].as_u64()),
        (Some(21), Some(1))
    );
    assert_eq!(c["configuration_changed"], true);
    assert!(c["relative_change"].as_f64().unwrap() > 0.25, "{c:#}");
    assert!(c["p_value"].as_f64().unwrap() < 1e-4, "{c:#}");
    assert!(body.get("verdicts").is_none() && body.get("failures").is_none());
    insta::assert_snapshot!(body["text"].as_str().unwrap());

    for night in [23, 30] {
        let hook = Webhook::answering(&[200]);
        let out = morning(night, &hook.url);
        assert!(out.stderr.is_empty(), "{}", text(&out));
        assert!(
            hook.received().is_empty(),
            "night {night}: {:?}",
            hook.received()
        );
    }
}

/// `e2e.toml` in the tree: workspace `e2e`, its `[notify]` naming `TEAM_HOOK`; `results` and
/// `history` read only a plan's head, so it needs nothing else.
fn plan_naming_team_hook(t: &Tree) {
    std::fs::write(
        t.path("e2e.toml"),
        "version = 1\nname = \"e2e\"\n[notify]\nurl_env = \"TEAM_HOOK\"\n",
    )
    .unwrap();
}

/// `rallyctl ARGS` in the tree with `TEAM_HOOK` and `RALLYCTL_NOTIFY_URL` as given.
fn run_hooked(
    t: &Tree,
    args: &[&str],
    team_hook: Option<&str>,
    notify_url: Option<&str>,
) -> Output {
    let urls = [
        ("TEAM_HOOK", team_hook),
        ("RALLYCTL_NOTIFY_URL", notify_url),
    ];
    run_with_urls(command(t.dir.path(), args), &urls)
}

const TEAM_HOOK_UNSET: &str = "warning: the plan's [notify] url_env names `TEAM_HOOK`, which is unset or empty: no webhook is told\n";

/// `results --compare` of a plan whose `[notify] url_env` names `TEAM_HOOK` POSTs the
/// regression to the URL that variable holds, with no `--notify`; `--notify`, then
/// `RALLYCTL_NOTIFY_URL`, win over it. Unset or empty, it is warned about by name and nothing
/// is sent, the output and exit code those without a webhook; `results` without a comparison
/// tells nobody, so says nothing of it.
#[test]
fn a_comparison_tells_the_webhook_whose_variable_the_plan_names() {
    let t = repeated();
    plan_naming_team_hook(&t);
    let quiet = t.run(&["results", "--state", STATE, "--compare", RUN1]);
    let compare = |extra: &[&str], team_hook, notify_url| {
        let args = [
            &["results", "e2e.toml", "--state", STATE, "--compare", RUN1],
            extra,
        ]
        .concat();
        let out = run_hooked(&t, &args, team_hook, notify_url);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(out.stdout, quiet.stdout);
        out
    };
    let named = Webhook::answering(&[200]);
    let out = compare(&[], Some(&named.url), None);
    assert!(out.stderr.is_empty(), "{}", text(&out));
    let received = named.received();
    assert_eq!(received.len(), 1, "{}", text(&out));
    let body: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(
        (&body["kind"], &body["workspace"]),
        (&"regression".into(), &"e2e".into())
    );

    let hooks = [(); 3].map(|()| Webhook::answering(&[200]));
    let [named, from_env, given] = &hooks;
    compare(
        &["--notify", &given.url],
        Some(&named.url),
        Some(&from_env.url),
    );
    compare(&[], Some(&named.url), Some(&from_env.url));
    let counts = hooks.each_ref().map(|h| h.received().len());
    assert_eq!(
        counts,
        [0, 1, 1],
        "plan's variable, RALLYCTL_NOTIFY_URL, --notify"
    );

    for team_hook in [None, Some("")] {
        let out = compare(&[], team_hook, None);
        assert_eq!(String::from_utf8_lossy(&out.stderr), TEAM_HOOK_UNSET);
    }
    let out = run_hooked(&t, &["results", "e2e.toml", "--state", STATE], None, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
}

/// `history` of a plan whose `[notify] url_env` names `TEAM_HOOK` POSTs the morning's new
/// change point to the URL that variable holds, with no `--notify`; unset, it is warned about
/// by name and the output is the same.
#[test]
fn history_tells_the_webhook_whose_variable_the_plan_names() {
    let t = nightly();
    plan_naming_team_hook(&t);
    let args = [
        "history",
        "e2e.toml",
        "--state",
        STATE,
        "--until",
        "2026-11-22",
    ];
    let hook = Webhook::answering(&[200]);
    let out = run_hooked(&t, &args, Some(&hook.url), None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
    let received = hook.received();
    assert_eq!(received.len(), 1, "{}", text(&out));
    let body: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(body["kind"], "change_point");
    assert_eq!(body["run_id"], "20261122T020000Z-n00022");

    let unset = run_hooked(&t, &args, None, None);
    assert_eq!(unset.status.code(), Some(0), "{}", text(&unset));
    assert_eq!(unset.stdout, out.stdout);
    assert_eq!(String::from_utf8_lossy(&unset.stderr), TEAM_HOOK_UNSET);
}

/// A webhook down when `history` has a new change point to tell: a warning naming its host
/// only, and the output and exit code `history` gives without `--notify`.
#[test]
fn a_change_point_for_an_unreachable_webhook_is_warned_about_and_changes_no_exit_code() {
    let t = nightly();
    let args = ["history", "--state", STATE, "--until", "2026-11-22"];
    let quiet = t.run(&args);
    let out = t.run(&[&args[..], &["--notify", &unreachable_url()]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(out.stdout, quiet.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: cannot notify the webhook: cannot reach 127.0.0.1: "),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t-t0ken"), "{stderr}");
}

/// A `--notify` value that is no http(s) URL, or an https webhook on a machine without root
/// certificates, is a warning that names no secret; output and exit code stay those of the
/// command.
#[test]
fn a_webhook_that_cannot_be_used_is_warned_about_and_changes_no_exit_code() {
    let t = repeated();
    let out = notified(&t, &[], "ftp://127.0.0.1/s3cr3t-t0ken");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "warning: cannot notify the webhook: the notify URL is no http:// or https:// URL with a host"
        ),
        "{}",
        text(&out)
    );

    let hook = Webhook::answering(&[200]);
    let https = hook.url.replacen("http://", "https://", 1);
    let args = [
        "results",
        "--state",
        STATE,
        "--compare",
        RUN1,
        "--fail-on-regression",
    ];
    let out = command(t.dir.path(), &args)
        .env("RALLYCTL_NOTIFY_URL", &https)
        .env("SSL_CERT_FILE", "/dev/null")
        .env("SSL_CERT_DIR", t.path("no-certificates"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(!text(&out).contains("s3cr3t-t0ken"), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "warning: cannot notify the webhook: cannot load the system's root certificates for 127.0.0.1: "
        ),
        "{}",
        text(&out)
    );
    assert!(hook.received().is_empty());
}

/// A message names the first five regressions in `text` and counts the rest; `verdicts` holds
/// them all.
#[test]
fn a_webhook_message_names_the_top_regressions_and_counts_the_rest() {
    let slower = |name| Task {
        name,
        throughput: Some((1000.0, "docs/s")),
        latency: [Some(10.0), Some(20.0), Some(30.0)],
        service_time: [Some(10.0), Some(20.0), Some(30.0)],
        error_rate: 0.0,
    };
    let mut doubled = [slower("bulk"), slower("search")];
    for t in &mut doubled {
        t.latency = t.latency.map(|l| l.map(|v| v * 2.0));
        t.service_time = t.service_time.map(|l| l.map(|v| v * 2.0));
    }
    let t = two_runs(&[slower("bulk"), slower("search")], &doubled);
    let hook = Webhook::answering(&[200]);
    assert_eq!(notified(&t, &[], &hook.url).status.code(), Some(0));
    let body: serde_json::Value = serde_json::from_str(&hook.received()[0].body).unwrap();
    let regressed = body["verdicts"].as_array().unwrap().len();
    assert_eq!(regressed, 12);
    let message = body["text"].as_str().unwrap();
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 1 + 1 + 5 + 1, "{message}");
    assert!(
        lines[1].starts_with("Regression: 12 metrics worse"),
        "{message}"
    );
    assert_eq!(lines[7], "… and 7 more");
}

/// `history --format junit`: a test case per test, task and metric, every series listed; the
/// latency step is a failure with its numbers and the configuration change in its message,
/// the throughput step passes with its numbers said.
#[test]
fn history_as_junit() {
    let t = nightly();
    let xml = t.history(&["--format", "junit"], 0);
    let (cases, _) = junit_cases(&xml);
    assert_eq!(cases.len(), 2 * 6, "{xml}");
    let held = |classname: &str, name: &str| {
        (cases.iter())
            .find(|(c, n, _)| c == classname && n == name)
            .unwrap_or_else(|| panic!("no case {classname} {name} in {xml}"))
            .2
            .clone()
    };
    let (tag, message) = held("ingest.a", "bulk / latency p50").unwrap();
    assert_eq!(tag, "failure");
    assert!(
        message.starts_with(
            "regression at run 20261122T020000Z-n00022 (last before: 20261121T020000Z-n00021): "
        ) && message.contains("over 21 runs before")
            && message.contains("over 9 runs after")
            && message.ends_with(", configuration changed"),
        "{message}"
    );
    let (tag, said) = held("ingest.a", "bulk / throughput (median)").unwrap();
    assert_eq!(tag, "system-out");
    assert!(
        said.starts_with("improvement at run 20261115T020000Z-n00015") && said.contains("+20.0 %"),
        "{said}"
    );
    assert_eq!(held("search.q", "query / throughput (median)"), None);
    let failures = (cases.iter()).filter(|c| matches!(&c.2, Some((t, _)) if t == "failure"));
    assert_eq!(failures.count(), 1, "{xml}");
    insta::assert_snapshot!(xml);
}

/// With `GITHUB_STEP_SUMMARY` naming a file, `history` appends its Markdown summary there
/// (regressions, then improvements, then the series without a change counted) and keeps what
/// the job's earlier steps wrote; a file that cannot be written is warned about and changes
/// neither the output nor the exit code.
#[test]
fn history_appends_its_summary_to_the_github_step_summary() {
    let t = nightly();
    let summary = t.path("step-summary.md");
    std::fs::write(&summary, "## Earlier step\nkept").unwrap();
    let args = ["history", "--state", STATE];
    let quiet = t.run(&args);
    let out = command(t.dir.path(), &args)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(out.stdout, quiet.stdout, "stdout is the same");
    let written = std::fs::read_to_string(&summary).unwrap();
    assert!(written.starts_with("## Earlier step\nkept\n"), "{written}");
    let (regressions, improvements) = (
        written.find("#### Regressions").unwrap(),
        written.find("#### Improvements").unwrap(),
    );
    assert!(regressions < improvements, "{written}");
    assert!(
        written.ends_with("\n10 series without a change.\n"),
        "{written}"
    );
    insta::assert_snapshot!(written);

    an_unwritable_step_summary_is_warned_about(t.dir.path(), &args, &quiet.stdout);
}

/// `--since` and `--until` keep the runs that started in the window, both ends included: a
/// date from its start or through its end, an RFC 3339 date-time to the second, a span back
/// from now; a change outside the window is not found. A value that is none of these, or a
/// window that ends before it starts, is a usage error naming the flag; a window no run
/// started in says how many runs there are.
#[test]
fn history_keeps_the_runs_of_a_time_window() {
    let t = nightly();
    let runs = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--json", "--all", "--metric", "throughput"];
        all.extend(args);
        let v: serde_json::Value = serde_json::from_str(&t.history(&all, 0)).unwrap();
        (v["series"][0]["points"].as_array().unwrap().iter())
            .map(|p| p["run"].as_str().unwrap()[6..8].to_owned())
            .collect()
    };
    let nights =
        |from: u32, to: u32| -> Vec<String> { (from..=to).map(|n| format!("{n:02}")).collect() };
    assert_eq!(
        runs(&["--since", "2026-11-10", "--until", "2026-11-20"]),
        nights(10, 20)
    );
    assert_eq!(runs(&["--since", "2026-11-10T02:00:01Z"]), nights(11, 30));
    assert_eq!(
        runs(&["--until", "2026-11-20T03:00:00+01:00"]),
        nights(1, 20)
    );
    assert_eq!(runs(&["--since", "36500d"]), nights(1, 30));
    // From night 16 the throughput is level: only the latency's change is left.
    let out = t.history(&["--since", "2026-11-16"], 0);
    assert!(out.contains("15 runs, 12 series, 1 with a change"), "{out}");
    assert!(out.contains("at run 20261122T020000Z-n00022"), "{out}");

    for (flag, value) in [
        ("--since", "yesterday"),
        ("--until", "2026-11-31"),
        ("--since", "30x"),
    ] {
        let out = t.run(&["history", "--state", STATE, flag, value]);
        assert_eq!(out.status.code(), Some(64), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("invalid value '{value}' for '{flag} <DATE>'")),
            "{}",
            text(&out)
        );
    }
    let out = t.run(&[
        "history",
        "--state",
        STATE,
        "--since",
        "2026-11-20",
        "--until",
        "2026-11-10",
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        text(&out).contains(
            "--since 2026-11-20T00:00:00Z is after --until 2026-11-10T23:59:59.999999999Z"
        ),
        "{}",
        text(&out)
    );
    let out = t.run(&["history", "--state", STATE, "--since", "2026-12-01"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(
            "none of the 30 runs started between --since 2026-12-01T00:00:00Z and --until -"
        ),
        "{}",
        text(&out)
    );
}

/// Each point carries Rally's and Elasticsearch's version and revision from its run's
/// race.json (in JSON and CSV; absent without one), and a change whose first run raced another
/// Elasticsearch than the run before says which, as the throughput step of night 15 does here.
#[test]
fn history_points_carry_the_versions_race_json_names() {
    let t = nightly();
    let race: serde_json::Value =
        serde_json::from_slice(&read(fixture("success/race.json"))).unwrap();
    for night in 1..30 {
        let mut race = race.clone();
        let (version, revision) = if night < 15 {
            ("8.15.0", "a".repeat(40))
        } else {
            ("8.16.0", "b".repeat(40))
        };
        race["rally-revision"] = "c0ffee".into();
        race["cluster"]["distribution-version"] = version.into();
        race["cluster"]["revision"] = revision.into();
        std::fs::write(
            t.path(&format!(
                "results/e2e/202611{night:02}T020000Z-n{night:05}/ingest/a/race.json"
            )),
            serde_json::to_vec(&race).unwrap(),
        )
        .unwrap();
    }
    let v: serde_json::Value = serde_json::from_str(&t.history(
        &[
            "--json",
            "--test",
            "ingest.a",
            "--metric",
            "throughput,latency_p50",
        ],
        0,
    ))
    .unwrap();
    let [throughput, latency] = v["series"].as_array().unwrap().as_slice() else {
        panic!("{v}")
    };
    let point = &throughput["points"][0];
    assert_eq!(
        (
            &point["rally_version"],
            &point["rally_revision"],
            &point["elasticsearch_version"],
            &point["elasticsearch_revision"]
        ),
        (
            &"2.13.0".into(),
            &"c0ffee".into(),
            &"8.15.0".into(),
            &serde_json::Value::from("a".repeat(40))
        )
    );
    assert_eq!(throughput["points"][14]["elasticsearch_version"], "8.16.0");
    assert_eq!(
        throughput["changes"][0]["elasticsearch_changed"],
        serde_json::json!({"before": "8.15.0 (aaaaaaaaaaaa)", "after": "8.16.0 (bbbbbbbbbbbb)"})
    );
    assert!(
        latency["changes"][0].get("elasticsearch_changed").is_none(),
        "{latency}"
    );

    let csv = t.history(&["--format", "csv", "--test", "ingest.a"], 0);
    assert_every_row_has_every_column(&csv);
    assert!(
        csv.lines().next().unwrap().contains(
            ",config_hash,rally_version,rally_revision,elasticsearch_version,\
             elasticsearch_revision,"
        ),
        "{csv}"
    );
    assert!(
        csv.lines().any(|l| l
            .starts_with("ingest.a,bulk,throughput,docs/s,20261115T020000Z-n00015,")
            && l.contains(",2.13.0,c0ffee,8.16.0,")
            && l.ends_with(",8.15.0 (aaaaaaaaaaaa) → 8.16.0 (bbbbbbbbbbbb)")),
        "{csv}"
    );
    let (cases, _) = junit_cases(&t.history(&["--format", "junit"], 0));
    let said = (cases.iter())
        .find(|c| c.1 == "bulk / throughput (median)")
        .and_then(|c| c.2.clone())
        .unwrap()
        .1;
    assert!(
        said.ends_with(", Elasticsearch 8.15.0 (aaaaaaaaaaaa) → 8.16.0 (bbbbbbbbbbbb)"),
        "{said}"
    );
    let out = t.history(&["--test", "ingest.a"], 0);
    assert!(out.lines().all(|l| l.chars().count() <= 100), "{out}");
    insta::assert_snapshot!(out);
}

/// `args` run with a step summary that cannot be written: a warning naming it, and the same
/// output and exit code (0) as without one.
fn an_unwritable_step_summary_is_warned_about(dir: &Path, args: &[&str], quiet: &[u8]) {
    let out = command(dir, args)
        .env("GITHUB_STEP_SUMMARY", "/dev/null/summary.md")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(out.stdout, quiet);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "warning: cannot append the step summary to /dev/null/summary.md (GITHUB_STEP_SUMMARY)"
        ),
        "{}",
        text(&out)
    );
}
