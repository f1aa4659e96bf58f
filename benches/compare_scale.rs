//! `results --compare` at scale: 10,000 tests of 3 tasks with 7 metrics each (21 comparisons a
//! test, 210,000 in all), raced 10 times on each side. Times the comparison (statistics and
//! Holm's correction included) and its rendering as JSON and as a table, and prints peak
//! memory. Each run is a fresh child process that builds the two views in memory first (the
//! files are not read: that is `results`' loading, not the comparison), so the memory in use
//! before the work is printed beside the peak.
//!
//!     cargo bench --bench compare_scale
//!
//! Target (issue 10): compare + both renderings under one second on a 2-core machine.

mod support;
use support::{status_kib, wobble};

use std::collections::BTreeMap;
use std::time::Instant;

use rallyctl::address::Address;
use rallyctl::results::metrics::{Metric, TaskMetrics, Value};
use rallyctl::results::render::{self, Format};
use rallyctl::results::{RunView, TestResult, compare};

const TESTS: usize = 10_000;
const TASKS: [&str; 3] = ["index-append", "term", "range"];
/// Every metric but the error rate, which is zero in every race of a real benchmark.
const METRICS: &[Metric] = Metric::ALL.split_last().unwrap().1;
const REPETITIONS: usize = 10;
const RUNS: usize = 7;

fn view(run: &str, shift: f64) -> RunView {
    let tests = (0..TESTS)
        .map(|t| {
            let tasks = TASKS
                .iter()
                .enumerate()
                .map(|(k, task)| {
                    let metrics = METRICS
                        .iter()
                        .enumerate()
                        .map(|(m, metric)| {
                            // Every seventh test's metrics move by `shift`, the rest stay.
                            let base = 10.0 * (m + 1) as f64 * (k + 1) as f64;
                            let level = if t % 7 == 0 { base * shift } else { base };
                            let samples: Vec<f64> = (0..REPETITIONS)
                                .map(|r| {
                                    level * wobble(t * 1000 + k * 100 + m * 10 + r + run.len())
                                })
                                .collect();
                            let mean = samples.iter().sum::<f64>() / samples.len() as f64;
                            let mut v = Value::new(mean, "ms".into());
                            v.samples = samples;
                            (*metric, v)
                        })
                        .collect::<BTreeMap<_, _>>();
                    TaskMetrics {
                        task: (*task).into(),
                        duration_s: None,
                        metrics,
                    }
                })
                .collect();
            TestResult {
                address: Address::new(format!("suite-{}", t / 100), format!("test-{t}")).unwrap(),
                run_id: Some(run.into()),
                status: Some("completed".into()),
                failure: None,
                logs: None,
                instance_type: Some("m5.large".into()),
                topology: None,
                zone: None,
                spot: false,
                repetitions: REPETITIONS,
                variant: None,
                race_duration_s: Some(600),
                cost: None,
                race: None,
                tasks,
                problems: vec![],
                configuration: None,
                raced_on: vec![],
            }
        })
        .collect();
    RunView {
        workspace: "scale".into(),
        run: Some(run.into()),
        cost: None,
        tests,
    }
}

/// One measured run: prints `compare_ms json_ms table_ms rss_before_kib peak_kib rows`.
fn child() {
    let baseline = view("20261124T081500Z-aaaaaa", 1.0);
    let contender = view("20261125T081500Z-bbbbbb", 1.08);
    let before = status_kib("VmRSS:");
    let start = Instant::now();
    let c = compare(&baseline, &contender, 5.0).unwrap();
    let compared = start.elapsed().as_secs_f64() * 1000.0;
    let start = Instant::now();
    let json = render::comparison(&c, Format::Json);
    let json_ms = start.elapsed().as_secs_f64() * 1000.0;
    drop(json);
    let start = Instant::now();
    let table = render::comparison(&c, Format::Table);
    let table_ms = start.elapsed().as_secs_f64() * 1000.0;
    std::hint::black_box(&table);
    println!(
        "{compared:.1} {json_ms:.1} {table_ms:.1} {before} {} {}",
        status_kib("VmHWM:"),
        c.rows.len()
    );
}

fn main() {
    if std::env::var_os("COMPARE_SCALE_CHILD").is_some() {
        child();
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let mut runs: Vec<Vec<f64>> = Vec::new();
    let (mut before, mut peak, mut rows) = (0, 0, 0);
    for _ in 0..RUNS {
        let f = support::child_figures(&[("COMPARE_SCALE_CHILD", "1".as_ref())]);
        runs.push(f[..3].to_vec());
        before = before.max(f[3] as u64);
        peak = peak.max(f[4] as u64);
        rows = f[5] as usize;
    }
    println!(
        "results --compare, {TESTS} tests x {} tasks x {} metrics = {rows} comparisons, {REPETITIONS} repetitions a side:",
        TASKS.len(),
        METRICS.len()
    );
    let stat = |name: &str, pick: &dyn Fn(&Vec<f64>) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(pick).collect();
        v.sort_by(f64::total_cmp);
        println!(
            "  {name:<28} median {:>7.1} ms, min {:>7.1} ms, max {:>7.1} ms over {RUNS} runs",
            v[RUNS / 2],
            v[0],
            v[RUNS - 1]
        );
    };
    stat("compare", &|r| r[0]);
    stat("render json", &|r| r[1]);
    stat("render table", &|r| r[2]);
    stat("compare + json + table", &|r| r[0] + r[1] + r[2]);
    println!(
        "  memory: {:.1} MiB in use with both views built, peak (VmHWM) {:.1} MiB",
        before as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}
