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
//! driver, Rally's daemons. Per topology: seconds from apply's start to the first task's start
//! (a worker on the coordinator logs `executing tasks: ['index-append']`, with the time, in
//! the rally.log that comes home; its first bulk follows at once), the steps before it as
//! state recorded them (launching, booting, installing), and apply's wall time.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use rallyctl::state::TestRecord;
use support::Harness;
use support::cluster::{ES_DOUBLE_TEAM, as_cluster_plan, as_node_user_plan, one_client_per_driver};
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
    // Every topology installs Rally afresh, in the node user's home of each instance.
    let remote = h.node_home.join("rallyctl");
    let plan = if nodes == 0 {
        let plan = run.plan(&[("s", &[("t", "")])]);
        as_node_user_plan(&plan, &remote);
        plan
    } else {
        h.allow_cluster_ports();
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
    let started = jiff::Timestamp::now();
    let wall = Instant::now();
    let out = run.rallyctl(&["apply", plan.to_str().unwrap(), "--auto-approve"]);
    let wall = wall.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = run.record("s.t");
    let log = (r.results.iter())
        .find(|f| f.path.ends_with("rally.log"))
        .unwrap_or_else(|| panic!("no rally.log collected: {:?}", r.results));
    let log = std::fs::read_to_string(run.dir.path().join(&log.path)).unwrap();
    Measured {
        first_request: first_task_at(&log).duration_since(started).as_secs_f64(),
        launching: step_secs(&r, "launching"),
        booting: step_secs(&r, "booting"),
        installing: step_secs(&r, "installing"),
        wall,
    }
}

/// When a worker of the coordinator began the first task, as Rally's log says (its lines
/// begin with the time in UTC, `2026-12-07 00:22:33,849`): the first bulk is sent at once.
fn first_task_at(log: &str) -> jiff::Timestamp {
    let line = (log.lines())
        .find(|l| l.contains("executing tasks: ['index-append']"))
        .unwrap_or_else(|| panic!("no worker began index-append:\n{log}"));
    let mut words = line.split_whitespace();
    let (date, time) = (words.next().unwrap(), words.next().unwrap());
    // Milliseconds as Python's logging writes them, unpadded: `00:34:36,45` is 45 ms.
    let (hms, ms) = time.split_once(',').unwrap();
    let ms: u32 = ms.parse().unwrap();
    format!("{date}T{hms}.{ms:03}Z").parse().unwrap()
}

/// Seconds from the first transition to `status` to the next one.
fn step_secs(record: &TestRecord, status: &str) -> f64 {
    let i = (record.history.iter())
        .position(|t| t.status == status)
        .unwrap_or_else(|| panic!("never {status}: {:?}", record.history));
    let next = &record.history[i + 1];
    next.at.duration_since(record.history[i].at).as_secs_f64()
}
