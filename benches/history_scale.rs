//! `rallyctl history` at the scale of a year of nightly runs: 365 runs of 50 tests, each test
//! 20 metrics (two tasks with all of Rally's 8 headline metrics, and a short one with the 4
//! that Rally reports from a few samples). The workspace is written first, as apply leaves
//! it: every race's report.csv, race.json, console log and rallyctl.json under
//! `results/<workspace>/<run>/<suite>/<test>/`, state recording the last run (rally.log,
//! which `history` never opens, is left out). Every third test's index-append steps by 8 %
//! part-way, every seventh's term task again later; each nightly Elasticsearch build has a
//! revision of its own.
//!
//! Each measured run is a fresh child process that times `ops::history::history` at the
//! default settings (every run read back, every series searched), wall and CPU time, and
//! prints its peak memory. The files were just written, so they are read from the page cache:
//! a warm cache, as for a second `history` in a row. On a busy machine the wall time says
//! more about the other processes than about `history`; its CPU time much less so.
//!
//!     cargo bench --bench history_scale
//!
//! Target (issue 23): `history` reads and analyses them in under one second.

mod support;
use support::{status_kib, wobble};

use std::path::{Path, PathBuf};
use std::time::Instant;

use rallyctl::address::Address;
use rallyctl::backend::Backend;
use rallyctl::ops::history::{Query, history};
use rallyctl::results::Workspace;
use rallyctl::state::{self, ResultFile, State, Status, TestRecord};

const RUNS: usize = 365;
const TESTS: usize = 50;
const WORKSPACE: &str = "nightly";
const STATE: &str = "state/nightly.state.json";
const MEASURED: usize = 7;

/// A task of the track: its name, unit, base level and whether it ran long enough for
/// Rally's 90th and 99th percentiles.
struct Task {
    name: &'static str,
    unit: &'static str,
    level: f64,
    long: bool,
}

const TASKS: [Task; 3] = [
    Task {
        name: "index-append",
        unit: "docs/s",
        level: 5000.0,
        long: true,
    },
    Task {
        name: "term",
        unit: "ops/s",
        level: 700.0,
        long: true,
    },
    Task {
        name: "refresh",
        unit: "ops/s",
        level: 2.0,
        long: false,
    },
];

/// How much slower (above 1) test `t`'s task `k` is on `night`.
fn slowdown(t: usize, k: usize, night: usize) -> f64 {
    let mut s = 1.0;
    if k == 0 && t.is_multiple_of(3) && night >= 150 + t {
        s *= 1.08;
    }
    if k == 1 && t.is_multiple_of(7) && night >= 300 {
        s *= 1.08;
    }
    s
}

/// Rally's CSV report of one race: the cluster-wide rows of the real fixture, then each task's.
fn report(cluster_rows: &str, t: usize, night: usize) -> String {
    let mut out = String::from(cluster_rows);
    for (k, task) in TASKS.iter().enumerate() {
        let seed = (t * 1_000 + night) * 10 + k;
        let slow = slowdown(t, k, night);
        let throughput = task.level / slow * wobble(seed);
        for stat in ["Min", "Mean", "Median", "Max"] {
            out += &format!(
                "{stat} Throughput,{},{throughput},{}\r\n",
                task.name, task.unit
            );
        }
        let latency = 4.0 * (k + 1) as f64 * slow * wobble(seed + 7);
        let percentiles: &[(&str, f64)] = if task.long {
            &[("50th", 1.0), ("90th", 1.2), ("99th", 1.5), ("100th", 2.0)]
        } else {
            &[("50th", 1.0), ("100th", 2.0)]
        };
        for kind in ["latency", "service time"] {
            for (p, f) in percentiles {
                out += &format!("{p} percentile {kind},{},{},ms\r\n", task.name, latency * f);
            }
        }
        out += &format!("error rate,{},0.00,%\r\n", task.name);
    }
    out
}

/// race.json: the real fixture with this race's Elasticsearch build and tasks.
fn race_json(fixture: &serde_json::Value, night: usize) -> String {
    let mut race = fixture.clone();
    race["race-id"] = format!("00000000-0000-0000-0000-{night:012}").into();
    race["cluster"]["revision"] = format!("{:040x}", night * 2_654_435_761).into();
    race["cluster"]["distribution-version"] = "9.1.0-SNAPSHOT".into();
    let template = race["results"]["op_metrics"][0].clone();
    race["results"]["op_metrics"] = TASKS
        .iter()
        .map(|task| {
            let mut op = template.clone();
            op["task"] = task.name.into();
            op["operation"] = task.name.into();
            op["duration"] = (120.0 + night as f64 % 7.0).into();
            op
        })
        .collect();
    serde_json::to_string_pretty(&race).unwrap()
}

/// Writes the workspace into `dir`.
fn write_workspace(dir: &Path) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rally/success");
    let fixture_report = std::fs::read_to_string(fixtures.join("report.csv")).unwrap();
    // Rally writes its cluster-wide rows first, the tasks' after.
    let cluster_rows: String = fixture_report
        .lines()
        .take_while(|l| !l.contains("Throughput"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let fixture_race: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("race.json")).unwrap()).unwrap();
    let console = std::fs::read_to_string(fixtures.join("race-console.log")).unwrap();
    let mut state = State::new(WORKSPACE);
    let root = rallyctl::results::layout::workspace(dir, WORKSPACE);
    let start: jiff::Timestamp = "2025-12-01T02:00:00Z".parse().unwrap();
    for night in 0..RUNS {
        let time = start
            .checked_add(jiff::SignedDuration::from_hours(24 * night as i64))
            .unwrap();
        let run = format!("{}-n{night:05}", time.strftime("%Y%m%dT%H%M%SZ"));
        let race = race_json(&fixture_race, night);
        for t in 0..TESTS {
            let address = Address::new(format!("suite-{}", t / 10), format!("test-{t}")).unwrap();
            let test_dir = rallyctl::results::layout::test(&root, &run, &address);
            std::fs::create_dir_all(&test_dir).unwrap();
            let mut files = Vec::new();
            for (name, content) in [
                ("report.csv", report(&cluster_rows, t, night)),
                ("race.json", race.clone()),
                ("race.log", console.clone()),
            ] {
                let path = test_dir.join(name);
                std::fs::write(&path, &content).unwrap();
                files.push(ResultFile::of(relative(&path, dir), content.as_bytes()));
            }
            let record = TestRecord {
                run_id: Some(run.clone()),
                ..TestRecord::new(
                    format!("{:064x}", t),
                    serde_json::json!({"track": "geonames", "instance_type": "m5.xlarge"}).into(),
                    "esrally race".into(),
                    Status::Completed,
                )
            };
            rallyctl::collect::describe(&test_dir, &record, &mut files).unwrap();
            if night == RUNS - 1 {
                for f in &mut files {
                    f.path = relative(&f.path, dir);
                }
                state.tests.insert(
                    address,
                    TestRecord {
                        results: files,
                        ..record
                    },
                );
            }
        }
    }
    state::save(&dir.join(STATE), &mut state).unwrap();
}

fn relative(path: &Path, base: &Path) -> PathBuf {
    path.strip_prefix(base).unwrap_or(path).to_owned()
}

/// The CPU time this process used, user and system: on a loaded machine the figure the other
/// processes disturb least.
fn cpu_ms() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// One measured run in `dir`: prints `wall_ms cpu_ms peak_kib series_searched series_changed`.
fn child(dir: &Path) {
    let started = Instant::now();
    let backend = Backend::Local(dir.join(STATE));
    let state = backend.load().unwrap();
    let ws = Workspace::open(backend, state, None).unwrap();
    let h = history(&ws, &Query::default()).unwrap();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{ms:.1} {:.1} {} {} {}",
        cpu_ms(),
        status_kib("VmHWM:"),
        h.series_searched,
        h.series.len()
    );
}

fn main() {
    if let Some(dir) = std::env::var_os("HISTORY_SCALE_CHILD") {
        child(Path::new(&dir));
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let started = Instant::now();
    write_workspace(dir);
    println!(
        "wrote {RUNS} runs x {TESTS} tests in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (mut times, mut cpu) = (Vec::new(), Vec::new());
    let (mut peak, mut searched, mut changed) = (0, 0, 0);
    for _ in 0..MEASURED {
        let f = support::child_figures(&[("HISTORY_SCALE_CHILD", dir.as_os_str())]);
        times.push(f[0]);
        cpu.push(f[1]);
        peak = peak.max(f[2] as u64);
        (searched, changed) = (f[3] as usize, f[4] as usize);
    }
    println!(
        "history, {RUNS} runs x {TESTS} tests: {searched} series searched, {changed} with a change"
    );
    for (name, mut v) in [("read + analyse", times), ("its CPU time", cpu)] {
        v.sort_by(f64::total_cmp);
        println!(
            "  {name:<15} median {:>7.1} ms, min {:>7.1} ms, max {:>7.1} ms over {MEASURED} runs",
            v[MEASURED / 2],
            v[0],
            v[MEASURED - 1]
        );
    }
    println!("  memory: peak (VmHWM) {:.1} MiB", peak as f64 / 1024.0);
}
