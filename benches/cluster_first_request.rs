//! What a test with a cluster of its own adds before its first request (issue 22): `apply` on
//! the end-to-end harness (moto, an sshd per instance, the real esrally, the ES double packaged
//! as Elasticsearch nodes), aws provider, one topology after another. Needs root and
//! `tests/setup-env.sh`.
//!
//!     cargo bench --bench cluster_first_request
//!
//! The baseline is a test of one machine racing a cluster that already runs
//! (`pipeline = "benchmark-only"`): what a cluster test adds is getting its other machines,
//! putting Rally on them, installing and starting its nodes and, with more than one load
//! driver, Rally's daemons. Per topology: seconds from apply's start to Rally's first task
//! (`Running index-append` in the race's log, polled every 50 ms: the first bulk follows at
//! once), the steps before it as state recorded them (launching, booting, installing), and
//! apply's wall time.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rallyctl::state::TestRecord;
use support::Harness;
use support::cluster::{ES_DOUBLE_TEAM, as_cluster_plan, one_client_per_driver};
use support::run::Run;

const ES_VERSION: &str = "8.15.0";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return;
    }
    println!(
        "cluster_first_request: apply to Rally's first task, aws on the harness (seconds)\n  {:<30} {:>13} {:>10} {:>8} {:>11} {:>7}",
        "topology", "first request", "launching", "booting", "installing", "wall"
    );
    let mut baseline = None;
    for (nodes, drivers) in [(0, 1), (1, 1), (3, 1), (3, 2)] {
        let m = measure(nodes, drivers);
        let added = baseline.map_or(String::new(), |b: f64| {
            format!("  (+{:.1} s)", m.first_request - b)
        });
        baseline.get_or_insert(m.first_request);
        let topology = match nodes {
            0 => "one machine, benchmark-only".to_owned(),
            _ => format!("{nodes} node(s), {drivers} load driver(s)"),
        };
        println!(
            "  {topology:<30} {:>13.1} {:>10.1} {:>8.1} {:>11.1} {:>7.1}{added}",
            m.first_request, m.launching, m.booting, m.installing, m.wall
        );
    }
}

struct Measured {
    first_request: f64,
    launching: f64,
    booting: f64,
    installing: f64,
    wall: f64,
}

fn measure(nodes: usize, drivers: usize) -> Measured {
    let run = Run {
        harness: Harness::start_connected(nodes + drivers),
        dir: tempfile::tempdir().unwrap(),
    };
    let h = &run.harness;
    let plan = if nodes == 0 {
        run.plan(&[("s", &[("t", "")])])
    } else {
        h.allow_cluster_ports();
        let remote = h.node_home.join("rallyctl");
        for ip in &h.instance_ips {
            h.put_es_double_distribution_in(ip, &remote.join("distributions"), ES_VERSION);
        }
        let test = format!(
            "cluster = {{ nodes = {nodes}, car = \"4gheap\", distribution_version = \"{ES_VERSION}\", \
             team_path = \"{ES_DOUBLE_TEAM}\" }}\nload_drivers = {drivers}"
        );
        let plan = run.plan(&[("s", &[("t", &test)])]);
        as_cluster_plan(&plan, &remote);
        one_client_per_driver(h, &plan, drivers);
        plan
    };
    let started = Instant::now();
    let mut apply = run.spawn(
        "apply",
        &["apply", plan.to_str().unwrap(), "--auto-approve"],
    );
    let mut race_log = None;
    let first_request = loop {
        if let Some(status) = apply.try_wait().unwrap() {
            panic!(
                "apply ended ({status}) before its race's first task: {:?}",
                run.printed("apply")
            );
        }
        if race_log.is_none() {
            race_log = racing_log(&run);
        }
        let began = race_log.as_ref().is_some_and(|log| {
            std::fs::read_to_string(log).is_ok_and(|text| text.contains("Running index-append"))
        });
        if began {
            break started.elapsed().as_secs_f64();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = apply.wait().unwrap();
    let wall = started.elapsed().as_secs_f64();
    assert!(status.success(), "{:?}", run.printed("apply"));
    let r = run.record("s.t");
    Measured {
        first_request,
        launching: step_secs(&r, "launching"),
        booting: step_secs(&r, "booting"),
        installing: step_secs(&r, "installing"),
        wall,
    }
}

/// The race log of `s.t`, as this machine sees its coordinator's disk, once state says it
/// races.
fn racing_log(run: &Run) -> Option<PathBuf> {
    let state = rallyctl::state::load(&run.dir.path().join("state/e2e.state.json")).ok()??;
    let r = state.tests.get(&"s.t".parse().unwrap())?;
    if r.status.label() != "racing" {
        return None;
    }
    let machine = r.machine.as_ref()?;
    let dir = PathBuf::from(machine.run_dir.as_deref()?);
    let ip = machine.address.as_deref()?;
    Some(run.harness.host_path(ip, &dir.join("race.log")))
}

/// Seconds from the first transition to `status` to the next one.
fn step_secs(record: &TestRecord, status: &str) -> f64 {
    let i = (record.history.iter())
        .position(|t| t.status == status)
        .unwrap_or_else(|| panic!("never {status}: {:?}", record.history));
    let next = &record.history[i + 1];
    next.at.duration_since(record.history[i].at).as_secs_f64()
}
