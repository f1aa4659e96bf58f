//! apply on the end-to-end harness (moto, sshd per instance, real esrally, ES double): a plan of
//! 8 tests in 2 suites. Prints apply's wall time, the median time of each step, and the
//! orchestration overhead = (wall − Σ over suites of the suite's slowest test, launch to
//! terminate) / wall. Needs root and `tests/setup-env.sh`.
//!
//!     cargo bench --bench apply_overhead
//!
//! Target (issue 3): overhead ≤ 5 %.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

const PER_SUITE: usize = 4;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let h = support::Harness::start(2 * PER_SUITE);
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!(
        "version = 1\nname = \"bench\"\n[defaults]\nregion = \"{}\"\nami = \"{}\"\ninstance_type = \"m5.large\"\nsubnet_id = \"{}\"\nssh_user = \"{}\"\nssh_port = {}\nconnect = \"private_ip\"\nremote_dir = \"{}\"\nrally_config = \"{}\"\ntrack_path = \"{}\"\noffline = true\npipeline = \"benchmark-only\"\n",
        h.region,
        h.ami,
        h.subnet_id,
        h.ssh_user,
        h.ssh_port,
        h.remote_dir.display(),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("conditional_install_items/rally_csv.ini")
            .display(),
        h.track_path.display()
    );
    for s in 0..2 {
        text.push_str(&format!("\n[[suite]]\nname = \"s{s}\"\n"));
        for t in 0..PER_SUITE {
            let es = &h.es_addrs[t % h.es_addrs.len()];
            text.push_str(&format!(
                "\n[[suite.test]]\nname = \"t{t}\"\ntarget_hosts = [\"{es}\"]\n"
            ));
        }
    }
    let plan = dir.path().join("bench.toml");
    std::fs::write(&plan, text).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rallyctl"));
    h.apply_env(&mut cmd);
    let start = Instant::now();
    let out = cmd
        .args(["apply", plan.to_str().unwrap(), "--auto-approve"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let wall = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let state = rallyctl::state::load(&dir.path().join("state/bench.state.json"))
        .unwrap()
        .unwrap();
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
        "apply of {} tests in 2 suites on the harness: wall {wall:.2} s",
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
