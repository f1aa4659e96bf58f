//! validate + plan at scale: a generated plan of 10,000 tests in 100 suites against a state that
//! holds completed results for half of them, with the cost estimate from a price file (as
//! `--prices` reads it). Prints wall time and peak memory of the work alone (measured in a
//! fresh child process, so generating the inputs does not count).
//!
//!     cargo bench --bench plan_scale
//!
//! It also prints each phase's time and the memory in use after it, from a run of the phases
//! one after another.
//!
//! Target (issue 2): under 100 ms and under 50 MB on a 2-core machine; with the estimate
//! (issue 12), still under 100 ms; issue 21: under 50 ms and 40 MiB, written out and as
//! matrices (each suite one test with a matrix of a hundred combinations).

mod support;
use support::status_kib;

use std::path::Path;
use std::time::Instant;

use rallyctl::cost::{self, PriceFile, Prices};
use rallyctl::graph::Graph;
use rallyctl::plan::Plan;
use rallyctl::planner::{self, Options};
use rallyctl::state::{self, State, Status, TestRecord};
use rallyctl::templates::Renderer;

const SUITES: usize = 100;
const TESTS_PER_SUITE: usize = 100;
const RUNS: usize = 11;
/// The price file beside the plan.
const PRICES: &str = "prices.toml";

/// What `plan --prices` adds: the prices of the machines of the tests to run, and the estimate.
fn estimate(plan: &Plan, state: &State, changes: &planner::Changes) -> cost::estimate::Estimate {
    let file = PriceFile::load(Path::new(PRICES)).unwrap();
    let to_run: std::collections::HashSet<_> = changes.changes.iter().map(|c| &c.address).collect();
    let settings = plan.tests().filter(|t| to_run.contains(&t.address));
    let prices = Prices::from_file(settings.map(|t| &t.settings), &file);
    let e = cost::estimate::estimate(plan, state, changes, &prices).unwrap();
    assert!(e.total.worst_usd.is_some());
    e
}

/// The plan of 10,000 tests, each test written out, or (`matrix`) each suite's hundred tests as
/// one test with a matrix of a hundred combinations.
fn generate(dir: &Path, matrix: bool) -> (std::path::PathBuf, std::path::PathBuf) {
    let ini = Path::new(env!("CARGO_MANIFEST_DIR")).join("conditional_install_items/rally_csv.ini");
    let mut text = format!(
        "version = 1\nname = \"scale\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-1\"\ninstance_type = \"m5.large\"\nrally_config = \"{}\"\ntags = {{ team = \"perf\" }}\n",
        ini.display()
    );
    for s in 0..SUITES {
        text.push_str(&format!("\n[[suite]]\nname = \"suite-{s}\"\n"));
        if matrix {
            let sizes: Vec<String> = (0..TESTS_PER_SUITE)
                .map(|t| format!("{{ bulk_size = {} }}", 1000 + t))
                .collect();
            text.push_str(&format!(
                "\n[[suite.test]]\nname = \"test\"\ntrack = \"geonames\"\nchallenge = \"append-no-conflicts\"\ncar = \"4gheap\"\n[suite.test.matrix]\ntrack_params = [{}]\n",
                sizes.join(", ")
            ));
            continue;
        }
        for t in 0..TESTS_PER_SUITE {
            text.push_str(&format!(
                "\n[[suite.test]]\nname = \"test-{t}\"\ntrack = \"geonames\"\nchallenge = \"append-no-conflicts\"\ncar = \"{}gheap\"\ntrack_params = {{ bulk_size = {} }}\n",
                4 + t % 3,
                1000 + t
            ));
        }
    }
    let plan_path = dir.join("scale.toml");
    std::fs::write(&plan_path, text).unwrap();
    std::fs::write(
        dir.join(PRICES),
        "[[price]]\nregion = \"us-east-1\"\ninstance_type = \"m5.large\"\nusd_per_hour = 0.096\nas_of = 2026-11-30\n",
    )
    .unwrap();
    // From where the measured runs start: paths inside the current directory are recorded
    // relative to it, so the recorded results must be made from there too.
    std::env::set_current_dir(dir).unwrap();
    let plan = Plan::load(&plan_path).unwrap();
    let renderer = Renderer::new();
    let mut session = renderer.session();
    let mut st = State::new("scale");
    for test in plan.tests().step_by(2) {
        let a = session.render(test).unwrap();
        st.tests.insert(
            test.address.clone(),
            TestRecord {
                run_id: Some("run".into()),
                ..TestRecord::new(
                    a.config_hash,
                    (&test.settings).into(),
                    rallyctl::templates::race_command(&test.settings).unwrap(),
                    Status::Completed,
                )
            },
        );
    }
    // Where `rallyctl plan scale.toml` run in `dir` looks for it.
    let state_path = dir.join(state::default_path("scale"));
    state::save(&state_path, &mut st).unwrap();
    (plan_path, state_path)
}

/// What `rallyctl plan PLAN` does (validation included), in process: the CLI's own code path,
/// run from the plan's directory with the state at its default path.
fn validate_and_plan(plan_path: &Path) -> (usize, usize) {
    std::env::set_current_dir(plan_path.parent().unwrap()).unwrap();
    let global = rallyctl::cli::Global {
        state: None,
        workspace: None,
        backend: None,
        no_color: true,
        json: false,
        verbose: 0,
    };
    let plan_file = Path::new(plan_path.file_name().unwrap());
    let loaded = rallyctl::cli::load_file(plan_file, &global).unwrap();
    let changes = planner::diff(
        &loaded.plan,
        &loaded.state,
        &loaded.artifacts,
        &Options::default(),
    );
    let text = planner::render(&changes);
    std::hint::black_box(text);
    let e = estimate(&loaded.plan, &loaded.state, &changes);
    std::hint::black_box(cost::estimate::render(&e));
    (changes.changes.len(), changes.unchanged)
}

/// The same work one phase at a time, each timed on its own (so without the overlap of state
/// loading and rendering that the CLI has), with the memory in use after it: where the time
/// and the memory go.
fn phases(plan_path: &Path, state_path: &Path) -> Vec<(&'static str, f64, u64)> {
    let mut out = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |name, out: &mut Vec<(&'static str, f64, u64)>| {
        let ms = clock.elapsed().as_secs_f64() * 1000.0;
        out.push((name, ms, status_kib("VmRSS:")));
        clock = Instant::now();
    };
    let plan = Plan::load(plan_path).unwrap();
    lap("parse and validate the plan", &mut out);
    Graph::compile(&plan).unwrap();
    lap("compile the graph", &mut out);
    let state = state::load(state_path).unwrap().unwrap();
    lap("load the state", &mut out);
    let artifacts = planner::render_all(&plan, &Renderer::new()).unwrap();
    lap("render and hash every test", &mut out);
    let changes = planner::diff(&plan, &state, &artifacts, &Options::default());
    lap("diff", &mut out);
    std::hint::black_box(planner::render(&changes));
    lap("print the plan", &mut out);
    let e = estimate(&plan, &state, &changes);
    lap("estimate the cost (prices from a file)", &mut out);
    std::hint::black_box(cost::estimate::render(&e));
    lap("print the estimate", &mut out);
    out
}

fn main() {
    // The inputs alone, for measurements of other kinds (bench/s3_backend.sh).
    if let Some(dir) = std::env::var_os("SCALE_WRITE_TO") {
        let (plan, state) = generate(Path::new(&dir), false);
        println!("{} {}", plan.display(), state.display());
        return;
    }
    if let (Ok(plan), Ok(state)) = (std::env::var("SCALE_PLAN"), std::env::var("SCALE_STATE")) {
        let (plan, state) = (Path::new(&plan), Path::new(&state));
        if std::env::var_os("SCALE_PHASES").is_some() {
            for (name, ms, rss) in phases(plan, state) {
                println!("{ms:.1} {rss} {name}");
            }
            return;
        }
        let start = Instant::now();
        let (changes, unchanged) = validate_and_plan(plan);
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        println!("{ms:.1} {} {changes} {unchanged}", status_kib("VmHWM:"));
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    for matrix in [false, true] {
        measure(matrix);
    }
}

/// Times `plan` of the generated plan in fresh processes and prints the figures.
fn measure(matrix: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (plan, state) = generate(dir.path(), matrix);
    if let Some(keep) = std::env::var_os("SCALE_KEEP") {
        // For profiling: `SCALE_KEEP=DIR` keeps the inputs (the matrices' in `DIR/matrix`), to
        // run one phase under perf with
        // `SCALE_PLAN=DIR/scale.toml SCALE_STATE=DIR/state/scale.state.json SCALE_PHASES=1`,
        // which read the price file beside the plan.
        let keep = Path::new(&keep).join(if matrix { "matrix" } else { "" });
        let keep = keep.as_path();
        std::fs::create_dir_all(keep).unwrap();
        std::fs::copy(&plan, keep.join("scale.toml")).unwrap();
        std::fs::copy(dir.path().join(PRICES), keep.join(PRICES)).unwrap();
        std::fs::create_dir_all(keep.join("state")).unwrap();
        std::fs::copy(&state, keep.join(state::default_path("scale"))).unwrap();
    }
    let mut times = Vec::new();
    let mut peaks = Vec::new();
    for _ in 0..RUNS {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env("SCALE_PLAN", &plan)
            .env("SCALE_STATE", &state)
            .output()
            .unwrap();
        let line = String::from_utf8(out.stdout).unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        times.push(f[0].parse::<f64>().unwrap());
        peaks.push(f[1].parse::<u64>().unwrap());
        assert_eq!(f[2], (SUITES * TESTS_PER_SUITE / 2).to_string(), "changes");
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let plan_bytes = std::fs::metadata(&plan).unwrap().len();
    let state_bytes = std::fs::metadata(&state).unwrap().len();
    println!(
        "validate + plan, {} tests {} in {SUITES} suites ({} KiB plan), state with {} results ({} KiB):",
        SUITES * TESTS_PER_SUITE,
        if matrix { "as matrices" } else { "written out" },
        plan_bytes / 1024,
        SUITES * TESTS_PER_SUITE / 2,
        state_bytes / 1024
    );
    println!(
        "  wall time: median {:.1} ms, min {:.1} ms, max {:.1} ms over {RUNS} runs",
        times[RUNS / 2],
        times[0],
        times[RUNS - 1]
    );
    println!(
        "  peak memory (VmHWM): {:.1} MiB",
        *peaks.iter().max().unwrap() as f64 / 1024.0
    );
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("SCALE_PLAN", &plan)
        .env("SCALE_STATE", &state)
        .env("SCALE_PHASES", "1")
        .output()
        .unwrap();
    println!("  one phase at a time (one run, no overlap; memory in use after each):");
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let mut f = line.splitn(3, ' ');
        let (ms, rss, name) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let mib = rss.parse::<f64>().unwrap() / 1024.0;
        println!("    {ms:>7} ms  {mib:>6.1} MiB  {name}");
    }
}
