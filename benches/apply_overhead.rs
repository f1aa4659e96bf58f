//! apply on the end-to-end harness (moto, sshd per instance, real esrally, ES double). Needs
//! root and `tests/setup-env.sh`.
//!
//!     cargo bench --bench apply_overhead              # both figures
//!     cargo bench --bench apply_overhead -- overhead  # or one of them
//!     cargo bench --bench apply_overhead -- billed
//!     cargo bench --bench apply_overhead -- billed baked  # one way of billed (fresh, reuse, baked)
//!
//! `overhead` (issue 3): 8 tests in 2 suites; apply's wall time, the median time of each step,
//! and the orchestration overhead = (wall − Σ over suites of the suite's slowest test, launch
//! to terminate) / wall. Target: ≤ 5 %.
//!
//! `billed` (issue 12): one plan of 3 tests in 2 suites, applied three ways: fresh instances,
//! warm reuse (`reuse_instances`), and warm reuse on a baked image (`rallyctl bake` first, not
//! counted). Each instance installs into a disk of its own that the fault proxy empties at
//! launch or fills from its image, so an install costs what it would on a fresh instance.
//! Prints per way the instances launched, billed instance-seconds per test (state's machine
//! time: each machine once, launch to termination) against the mean race, and apply's wall
//! time against Σ over suites of the slowest race, and what apply adds to those races,
//! (wall − Σ slowest race) / wall, with each test's steps and their seconds. Targets with a
//! baked image and reuse: billed per test ≤ race + 15 s, wall ≤ Σ slowest race + 15 s, and
//! (issue 21) at most 2 % added.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use rallyctl::state::{State, TestRecord};
use support::fault_proxy::FaultProxy;
use support::run::Run;

const PER_SUITE: usize = 4;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let only = |name: &str| {
        !args.iter().any(|a| a == "overhead" || a == "billed") || args.iter().any(|a| a == name)
    };
    if only("overhead") {
        overhead();
    }
    if only("billed") {
        let ways: Vec<&str> = ["fresh", "reuse", "baked + reuse"]
            .into_iter()
            .filter(|way| {
                let first = way.split(' ').next().unwrap();
                !args
                    .iter()
                    .any(|a| ["fresh", "reuse", "baked"].contains(&a.as_str()))
                    || args.iter().any(|a| a == first)
            })
            .collect();
        billed(&ways);
    }
}

/// Seconds from the transition to `status` to the next one; none if never there.
fn step_secs(record: &TestRecord, status: &str) -> Option<f64> {
    let i = record.history.iter().position(|t| t.status == status)?;
    let next = record.history.get(i + 1)?;
    Some(next.at.duration_since(record.history[i].at).as_secs_f64())
}

/// `apply --auto-approve` of `plan` in `run`, with `env`; its wall time and the state after.
fn apply(run: &Run, plan: &Path, env: &[(&str, &str)], extra: &[&str]) -> (f64, State) {
    let mut args = vec!["apply", plan.to_str().unwrap(), "--auto-approve"];
    args.extend(extra);
    let mut cmd = run.command(&args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = run.output(&mut cmd, &args);
    let wall = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (wall, run.state())
}

fn overhead() {
    let run = Run::new(2 * PER_SUITE);
    let tests: Vec<(String, String)> = (0..PER_SUITE)
        .map(|t| (format!("t{t}"), String::new()))
        .collect();
    let tests: Vec<(&str, &str)> = tests
        .iter()
        .map(|(n, e)| (n.as_str(), e.as_str()))
        .collect();
    let plan = run.plan(&[("s0", &tests), ("s1", &tests)]);
    let (wall, state) = apply(&run, &plan, &[], &[]);
    let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut slowest: BTreeMap<String, f64> = BTreeMap::new();
    for (address, record) in &state.tests {
        for pair in record.history.windows(2) {
            let secs = pair[1].at.duration_since(pair[0].at).as_secs_f64();
            steps.entry(pair[0].status.clone()).or_default().push(secs);
        }
        let total = record
            .history
            .last()
            .unwrap()
            .at
            .duration_since(record.history[0].at)
            .as_secs_f64();
        let e = slowest.entry(address.suite().to_owned()).or_default();
        *e = e.max(total);
    }
    let busy: f64 = slowest.values().sum();
    println!(
        "overhead: apply of {} tests in 2 suites on the harness: wall {wall:.2} s",
        2 * PER_SUITE
    );
    for step in [
        "launching",
        "booting",
        "installing",
        "racing",
        "collecting",
        "terminating",
    ] {
        let mut v = steps.remove(step).unwrap_or_default();
        v.sort_by(|a, b| a.total_cmp(b));
        if !v.is_empty() {
            println!(
                "  {step:<12} median {:6.2} s  max {:6.2} s",
                v[v.len() / 2],
                v[v.len() - 1]
            );
        }
    }
    println!(
        "  Σ slowest test per suite {busy:.2} s; orchestration overhead {:.2} %",
        (wall - busy) / wall * 100.0
    );
}

fn billed(ways: &[&str]) {
    println!(
        "billed: 3 tests in 2 suites (ingest: a, b; search: c), each instance on a disk of its own"
    );
    println!(
        "  {:<16} {:>9} {:>10} {:>12} {:>10} {:>8} {:>14} {:>10}",
        "way",
        "launched",
        "install s",
        "billed s/test",
        "race s",
        "wall s",
        "Σ slowest race",
        "overhead"
    );
    for &way in ways {
        let run = Run::new(3);
        let proxy = FaultProxy::with_disks(&run.harness, &[]);
        let env = [("AWS_ENDPOINT_URL", proxy.url.as_str())];
        let h = &run.harness;
        let mut extra = format!("remote_dir = \"{}\"", h.host_dir.display());
        if way.contains("reuse") {
            extra.push_str("\nreuse_instances = true");
        }
        if way.contains("baked") {
            extra.push_str(&format!("\nami = \"baked\"\nbase_ami = \"{}\"", h.ami));
        }
        let plan = run.plan(&[
            ("ingest", &[("a", &extra), ("b", &extra)]),
            ("search", &[("c", &extra)]),
        ]);
        if way.contains("baked") {
            let args = ["bake", plan.to_str().unwrap(), "--auto-approve"];
            let mut cmd = run.command(&args);
            cmd.env("AWS_ENDPOINT_URL", &proxy.url);
            let out = run.output(&mut cmd, &args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let launched_before = run.launches();
        let (wall, state) = apply(&run, &plan, &env, &[]);
        let run_id = state.tests.values().find_map(|r| r.run_id.clone()).unwrap();
        let billed = rallyctl::cost::bill::of_run(&state, &run_id).expect("aws machines billed");
        let n = state.tests.len() as f64;
        let races: Vec<f64> = state
            .tests
            .values()
            .filter_map(|r| step_secs(r, "racing"))
            .collect();
        let installs: Vec<f64> = state
            .tests
            .values()
            .filter_map(|r| step_secs(r, "installing"))
            .collect();
        let mut slowest: BTreeMap<&str, f64> = BTreeMap::new();
        for (address, record) in &state.tests {
            let race = step_secs(record, "racing").unwrap_or_default();
            let e = slowest.entry(address.suite()).or_default();
            *e = e.max(race);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let busy = slowest.values().sum::<f64>();
        println!(
            "  {way:<16} {:>9} {:>10.1} {:>12.1} {:>10.1} {:>8.1} {:>14.1} {:>9.1}%",
            run.launches() - launched_before,
            mean(&installs),
            billed.machine_hours * 3600.0 / n,
            mean(&races),
            wall,
            busy,
            (wall - busy) / wall * 100.0
        );
        // Where the rest goes: each test's steps in order, and the seconds each took.
        for (address, record) in &state.tests {
            let steps: Vec<String> = record
                .history
                .windows(2)
                .map(|p| {
                    let secs = p[1].at.duration_since(p[0].at).as_secs_f64();
                    format!("{} {secs:.2}", p[0].status)
                })
                .collect();
            println!("    {address}: {}", steps.join(", "));
        }
    }
}
