//! The commands a user runs without AWS, through the real binary, with snapshots of what they
//! read: validation messages, plans, the DOT graph, state commands.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use support::context::{BIN, command, prices, rallyctl, rallyctl_in, root, text};
use support::webhook::{Webhook, run_with_urls};

#[test]
fn validate_accepts_the_example_plans() {
    for plan in ["plans/example.toml", "plans/data_file.json"] {
        let out = rallyctl(&["validate", plan]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{plan} is valid: 2 suites, 6 tests, 6 EC2 instances.\n")
        );
    }
    let out = rallyctl(&["validate", "plans/local.toml"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "plans/local.toml is valid: 1 suite, 1 test, 0 EC2 instances.\n"
    );
}

#[test]
fn the_json_plan_is_the_same_plan_as_the_toml_one() {
    let toml = rallyctl::plan::Plan::load(&root().join("plans/example.toml")).unwrap();
    let json = rallyctl::plan::Plan::load(&root().join("plans/data_file.json")).unwrap();
    assert_eq!(toml.suites, json.suites);
}

#[test]
fn validate_reports_every_mistake_with_its_position() {
    let out = rallyctl(&["validate", "tests/fixtures/plans/every-mistake.toml"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(text(&out));
}

/// A duration without a unit, or in words, says what a duration looks like; EC2's interruption
/// behaviours written as `on_interruption` are told apart from a fallback.
#[test]
fn validate_says_what_a_duration_and_a_spot_fallback_look_like() {
    let out = rallyctl(&[
        "validate",
        "tests/fixtures/messages/duration-and-fallback-mistakes.toml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(text(&out));
}

/// Clusters written wrong: nodes and load drivers out of range, unknown cluster keys with the
/// closest one, a cluster beside what races an existing one, drivers without a cluster or on
/// this machine, keys of another provider, ssh pools too small for one test: all at once.
/// Nodes without a release to install (neither the cluster nor the test names one) are
/// reported at the cluster.
#[test]
fn validate_reports_cluster_mistakes_at_their_place() {
    let out = rallyctl(&["validate", "tests/fixtures/messages/cluster-mistakes.toml"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(text(&out));
    let out = rallyctl(&["validate", "tests/fixtures/messages/cluster-release.toml"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("cluster_without_a_release", text(&out));
    let out = rallyctl(&["validate", "tests/fixtures/plans/clusters.toml"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tests/fixtures/plans/clusters.toml is valid: 4 suites, 6 tests, 16 EC2 instances.\n",
        "{}",
        text(&out)
    );
}

/// A stall timeout the machine's time runs out before is a warning where the plan brings it
/// about, from `validate` and `plan` alike; the plan stays valid.
#[test]
fn a_stall_timeout_not_shorter_than_max_runtime_is_a_warning() {
    let plan = "tests/fixtures/messages/stall-outlasts-runtime.toml";
    let out = rallyctl(&["validate", plan]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    insta::assert_snapshot!(text(&out));
    let (_dir, state) = temp_state();
    let planned = rallyctl(&["plan", plan, "--state", state.to_str().unwrap()]);
    assert_eq!(planned.status.code(), Some(0), "{}", text(&planned));
    let stderr = String::from_utf8_lossy(&planned.stderr);
    assert_eq!(stderr, String::from_utf8_lossy(&out.stderr));
}

/// A local plan in `dir/sub/plan.toml` naming `rally_config` and `track_path` as given.
fn plan_in_sub(dir: &Path, rally_config: &str, track_path: &str) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("sub/plan.toml"),
        format!(
            "version = 1\nname = \"paths\"\n[defaults]\nprovider = \"local\"\noffline = true\n\
             pipeline = \"benchmark-only\"\ntarget_hosts = [\"127.0.0.1:9200\"]\n\
             rally_config = \"{rally_config}\"\ntrack_path = \"{track_path}\"\n\
             [[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"t\"\n"
        ),
    )
    .unwrap();
}

/// A rally.ini and a track directory at `dir/at`.
fn ini_and_track(dir: &Path) {
    std::fs::create_dir_all(dir.join("track")).unwrap();
    std::fs::write(dir.join("track/track.json"), "{}").unwrap();
    std::fs::write(dir.join("rally.ini"), "[meta]\n").unwrap();
}

/// Relative paths are read beside the plan file, whichever directory rallyctl runs in.
#[test]
fn relative_paths_in_a_plan_are_read_beside_it_from_another_directory() {
    let dir = tempfile::tempdir().unwrap();
    plan_in_sub(dir.path(), "rally.ini", "track");
    ini_and_track(&dir.path().join("sub"));
    let out = rallyctl_in(dir.path(), &["validate", "sub/plan.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// A plan written when paths were read from the current directory still reads them from
/// there, with a warning giving the spelling that works from the plan's directory; the
/// recorded paths, and so the config hashes, are those of the new spelling.
#[test]
fn a_path_found_only_from_the_current_directory_is_read_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    plan_in_sub(dir.path(), "rally.ini", "track");
    ini_and_track(dir.path());
    let (_state_dir, state) = temp_state();
    let saved = |out: &str| {
        let out = dir.path().join(out);
        let run = rallyctl_in(
            dir.path(),
            &[
                "plan",
                "sub/plan.toml",
                "--state",
                state.to_str().unwrap(),
                "-o",
            ]
            .into_iter()
            .chain([out.to_str().unwrap()])
            .collect::<Vec<_>>(),
        );
        assert_eq!(run.status.code(), Some(0), "{}", text(&run));
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        (String::from_utf8_lossy(&run.stderr).into_owned(), saved)
    };
    let (warnings, old) = saved("old.plan");
    insta::assert_snapshot!(warnings);
    plan_in_sub(dir.path(), "../rally.ini", "../track");
    let (none, new) = saved("new.plan");
    assert_eq!(none, "");
    assert_eq!(old["plan"]["suites"], new["plan"]["suites"]);
}

/// A path found nowhere is an error that names both places looked.
#[test]
fn a_path_found_nowhere_names_both_places_looked() {
    let dir = tempfile::tempdir().unwrap();
    plan_in_sub(dir.path(), "missing.ini", "no/track");
    let out = rallyctl_in(dir.path(), &["validate", "sub/plan.toml"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(text(&out));
}

#[test]
fn validate_reports_variants_that_cannot_share_a_machine_or_differ_in_nothing() {
    let out = rallyctl(&["validate", "tests/fixtures/plans/variant-mistakes.toml"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(text(&out));
}

#[test]
fn validate_reports_json_mistakes() {
    for plan in ["broken.json", "wrong-types.json", "syntax-error.json"] {
        let out = rallyctl(&["validate", &format!("tests/fixtures/plans/{plan}")]);
        assert_eq!(out.status.code(), Some(1));
        insta::assert_snapshot!(plan, text(&out));
    }
}

#[test]
fn validate_json_output_lists_diagnostics() {
    let out = rallyctl(&["validate", "--json", "tests/fixtures/plans/broken.json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert!(v["diagnostics"][0]["line"].as_u64().unwrap() > 0);
}

#[test]
fn an_unreadable_plan_file_is_named() {
    let out = rallyctl(&["validate", "plans/nope.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("plans/nope.toml:1:1: cannot read"));
}

#[test]
fn graph_prints_dot() {
    let out = rallyctl(&["graph", "plans/example.toml"]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stdout));
}

fn temp_state() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nightly.state.json");
    (dir, path)
}

#[test]
fn plan_against_an_empty_state_runs_everything_and_saves() {
    let (dir, state) = temp_state();
    let saved = dir.path().join("saved.plan");
    let out = rallyctl(&[
        "plan",
        "plans/example.toml",
        "--state",
        state.to_str().unwrap(),
        "--detailed-exitcode",
        "-o",
        saved.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).replace(saved.to_str().unwrap(), "SAVED");
    insta::assert_snapshot!(stdout);
    assert!(saved.is_file());
    assert!(!state.exists(), "plan never writes state");
}

/// A test's repetitions and variants, as `plan` announces them.
#[test]
fn plan_says_how_often_and_where_each_test_races() {
    let (_dir, state) = temp_state();
    let out = rallyctl(&[
        "plan",
        "tests/fixtures/plans/local-repeated.toml",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stdout));
}

#[test]
fn plan_json_output() {
    let (_dir, state) = temp_state();
    let out = rallyctl(&[
        "plan",
        "plans/example.toml",
        "--json",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["changes"].as_array().unwrap().len(), 6);
    assert_eq!(v["changes"][0]["action"], "run");
}

/// A record of `address` whose last attempt ran the given steps at the given minutes after
/// midnight: what the expected cost is read from.
fn ran(steps: &[(&str, i64)]) -> rallyctl::state::TestRecord {
    let mut record = completed(serde_json::json!({"car": "older"}));
    let midnight: jiff::Timestamp = "2026-11-30T00:00:00Z".parse().unwrap();
    record.history = steps
        .iter()
        .map(|(status, minute)| rallyctl::state::Transition {
            status: (*status).into(),
            at: midnight + jiff::SignedDuration::from_mins(*minute),
        })
        .collect();
    record
}

/// The estimate `plan` ends with, per test and in total, from the price file and the last
/// run state recorded, in text and JSON.
#[test]
fn plan_estimates_what_the_tests_to_run_cost() {
    let (_dir, state_path) = temp_state();
    let mut state = rallyctl::state::State::new("costs");
    // Two races in 55 minutes, machine time included: 27.5 minutes a race.
    state.tests.insert(
        "ingest.small".parse().unwrap(),
        ran(&[
            ("launching", 0),
            ("installing", 3),
            ("racing", 5),
            ("collecting", 25),
            ("installing", 26),
            ("racing", 30),
            ("collecting", 50),
            ("terminating", 55),
            ("completed", 56),
        ]),
    );
    // The variants shared a machine for 40 minutes: 20 minutes each.
    state.tests.insert(
        "ingest.heap-4g".parse().unwrap(),
        ran(&[("launching", 0), ("racing", 5), ("terminating", 40)]),
    );
    rallyctl::state::save(&state_path, &mut state).unwrap();
    let plan = |json: &[&str]| {
        let mut args = vec![
            "plan",
            "tests/fixtures/plans/costs.toml",
            "--state",
            state_path.to_str().unwrap(),
        ];
        args.extend(json);
        let out = rallyctl(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let shown = plan(&[]);
    let estimate = &shown[shown.find("Cost estimate").unwrap()..];
    insta::assert_snapshot!(estimate);
    let v: serde_json::Value = serde_json::from_str(&plan(&["--json"])).unwrap();
    insta::assert_json_snapshot!(v["cost"]);
}

/// `plan` shows the machines of each test with a cluster in its block, and prices them all:
/// nodes × their instance type and load drivers × the test's, each with its public IPv4
/// address; tests without a cluster read as before. (The fixture's `local.here`, which `plan`
/// refuses for now, is left out.)
#[test]
fn plan_shows_each_clusters_machines_and_prices_them_all() {
    let (_dir, state) = temp_state();
    let plan = |json: &[&str]| {
        let mut args = vec![
            "plan",
            "tests/fixtures/plans/clusters.toml",
            "--state",
            state.to_str().unwrap(),
        ];
        for test in [
            "aws.three",
            "aws.five",
            "aws.metal",
            "single.alone",
            "pool.leased",
        ] {
            args.extend(["--target", test]);
        }
        args.extend(json);
        let out = rallyctl(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    insta::assert_snapshot!(plan(&[]));
    let v: serde_json::Value = serde_json::from_str(&plan(&["--json"])).unwrap();
    let three = &v["cost"]["tests"][0];
    assert_eq!(three["address"], "aws.three");
    // 3 × m5.xlarge at $0.192 and 2 × m5.large at $0.096, each with a public IPv4 address
    // ($0.005), for the 2 hours of max_runtime.
    let hourly = 3.0 * (0.192 + 0.005) + 2.0 * (0.096 + 0.005);
    assert!(
        (three["worst_usd"].as_f64().unwrap() - hourly * 2.0).abs() < 1e-6,
        "{three}"
    );
    assert_eq!(
        three["cluster"],
        serde_json::json!({"nodes": 3, "node_instance_type": "m5.xlarge", "load_drivers": 2})
    );
    assert_eq!(
        v["changes"][0]["cluster"],
        "3 × m5.xlarge, 2 load drivers × m5.large"
    );
}

/// A price file with a mistake is a usage error, named at its line, before anything else.
#[test]
fn a_broken_price_file_is_refused_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.toml");
    std::fs::write(
        &prices,
        "[[price]]\nregion = \"us-east-1\"\ninstance_type = \"m5.large\"\nusd_per_hour = \"cheap\"\n",
    )
    .unwrap();
    for command in ["plan", "apply"] {
        let out = rallyctl(&[
            command,
            "plans/example.toml",
            "--prices",
            prices.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(64), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                "prices.toml:4:16: price[0].usd_per_hour: expected a number, found a string"
            ),
            "{err}"
        );
    }
    let out = rallyctl(&[
        "plan",
        "plans/example.toml",
        "--prices",
        "no/such/prices.toml",
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read the price file no/such/prices.toml"),
        "{}",
        text(&out)
    );
}

#[test]
fn plan_refuses_a_corrupt_state_and_leaves_it_alone() {
    let (_dir, state) = temp_state();
    std::fs::write(&state, "{\"version\": 1, \"lineage\": ").unwrap();
    let out = rallyctl(&[
        "plan",
        "plans/example.toml",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not valid"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        "{\"version\": 1, \"lineage\": "
    );
}

/// Variants race interleaved on one machine: the test's own name selects them all, for
/// `--target` and for `--replace`.
#[test]
fn the_name_of_a_test_with_variants_selects_all_its_variants() {
    let (_dir, state) = temp_state();
    for flag in ["--target", "--replace"] {
        let out = rallyctl(&[
            "plan",
            "tests/fixtures/plans/local-repeated.toml",
            "--state",
            state.to_str().unwrap(),
            flag,
            "s.heap",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("+ s.heap-4g") && stdout.contains("+ s.heap-8g"),
            "{flag}: {stdout}"
        );
        if flag == "--target" {
            assert!(!stdout.contains("s.five"), "{stdout}");
        }
    }
}

#[test]
fn an_unknown_target_is_refused() {
    let (_dir, state) = temp_state();
    let out = rallyctl(&[
        "plan",
        "plans/example.toml",
        "--state",
        state.to_str().unwrap(),
        "--target",
        "ingest.nope",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("ingest.nope is neither in the plan nor in state")
    );
}

#[test]
fn state_commands_and_force_unlock() {
    let (_dir, state) = temp_state();
    let s = state.to_str().unwrap();
    let out = rallyctl(&["state", "list", "--state", s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no state at"));

    let mut st = rallyctl::state::State::new("nightly");
    let plan = rallyctl::plan::Plan::load(&root().join("plans/example.toml")).unwrap();
    let test = plan.tests().next().unwrap();
    st.tests
        .insert(test.address.clone(), completed(serde_json::json!({})));
    rallyctl::state::save(&state, &mut st).unwrap();
    let out = rallyctl(&["state", "list", "--state", s]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ingest.geonames-4g  completed\n"
    );
    let out = rallyctl(&["state", "show", "ingest.geonames-4g", "--state", s]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"status\": \"completed\""));

    let lock = rallyctl::state::Lock::acquire(&state, "another apply").unwrap();
    let out = rallyctl(&["state", "rm", "ingest.geonames-4g", "--state", s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked by `another apply`"),
        "{}",
        text(&out)
    );
    std::mem::forget(lock);
    let lock_file = format!("{s}.lock");
    let id = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&lock_file).unwrap())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("force-unlock {id} --state")),
        "the refusal names the lock's ID: {}",
        text(&out)
    );
    // Only the lock meant: another ID is refused.
    let out = rallyctl(&["force-unlock", "not-the-id", "--state", s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the lock you meant"));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(&id),
        "a wrong ID is not answered with the right one: {}",
        text(&out)
    );
    // Its holder (this test) still runs here: refused without --force, and without a terminal
    // to confirm on, the command says how to proceed.
    let out = rallyctl(&["force-unlock", &id, "--state", s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still runs on this host"),
        "{}",
        text(&out)
    );
    assert!(std::path::Path::new(&lock_file).exists());
    let out = rallyctl(&["force-unlock", &id, "--state", s, "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("held by pid"),
        "{}",
        text(&out)
    );
    assert!(!std::path::Path::new(&lock_file).exists());
    let out = rallyctl(&["state", "rm", "ingest.geonames-4g", "--state", s]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = rallyctl(&["state", "list", "--state", s]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

/// `plan` without `--state` reads `state/<name>.state.json` below the current directory, the
/// name read from the plan (early from the top of a TOML plan, or after validating a JSON one),
/// and refuses a state of another workspace found there.
#[test]
fn plan_reads_the_state_named_after_the_plan_and_checks_its_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let ini = root().join("conditional_install_items/rally_csv.ini");
    let defaults = format!(
        "region = \"us-east-1\"\nami = \"ami-0a\"\ninstance_type = \"t\"\ntrack = \"x\"\nrally_config = {:?}",
        ini.to_str().unwrap()
    );
    std::fs::write(
        dir.path().join("p.toml"),
        format!("version = 1\nname = \"mine\"\n[defaults]\n{defaults}\n[[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"t\"\n"),
    )
    .unwrap();
    let json = serde_json::json!({
        "version": 1,
        "suite": [{"name": "s", "test": [{"name": "t"}]}],
        "defaults": {"region": "us-east-1", "ami": "ami-0a", "instance_type": "t", "track": "x", "rally_config": ini},
        "name": "mine",
    });
    std::fs::write(dir.path().join("p.json"), json.to_string()).unwrap();
    for plan in ["p.toml", "p.json"] {
        let out = rallyctl_in(dir.path(), &["plan", plan]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Plan: 1 to run"));
    }
    let state = dir.path().join("state/mine.state.json");
    let mut other = rallyctl::state::State::new("other");
    rallyctl::state::save(&state, &mut other).unwrap();
    for plan in ["p.toml", "p.json"] {
        let out = rallyctl_in(dir.path(), &["plan", plan]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("belongs to workspace `other`, not `mine`"),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn validate_accepts_ssh_and_local_plans() {
    for plan in [
        "tests/fixtures/plans/providers-valid.toml",
        "tests/fixtures/plans/local-valid.toml",
    ] {
        let out = rallyctl(&["validate", plan]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&format!("{plan} is valid: ")),
            "{}",
            text(&out)
        );
    }
}

/// EC2's settings (`ami`, `region`, `tags`, `instance_type`...) under `provider = "ssh"` or
/// `"local"` are mistakes, each named where it is written, with a hint.
#[test]
fn validate_refuses_aws_settings_under_ssh_and_local() {
    let out = rallyctl(&["validate", "tests/fixtures/plans/ssh-with-aws-keys.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["ami", "region", "tags", "instance_type"] {
        assert!(
            stderr.contains(&format!("`{key}`")) || stderr.contains(&format!(".{key}:")),
            "`{key}` not named: {stderr}"
        );
    }
    assert!(stderr.contains("help:"), "no hint: {stderr}");
    insta::assert_snapshot!(text(&out));
}

/// A pool of SSH hosts must exist, be non-empty and name no host twice.
#[test]
fn validate_refuses_missing_empty_and_repeating_ssh_pools() {
    let out = rallyctl(&["validate", "tests/fixtures/plans/ssh-pools.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("test[0]") && l.contains("`hosts`")),
        "a missing pool not named: {stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("test[1].hosts") && l.contains("empty")),
        "an empty pool not named: {stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("test[2].hosts") && l.contains("bench-1")),
        "a repeated host not named: {stderr}"
    );
    // A pool that is written but wrong is that mistake, not also a missing key.
    for test in ["test[1]", "test[2]"] {
        assert!(
            !stderr
                .lines()
                .any(|l| l.contains(&format!("{test}: missing required key `hosts`"))),
            "{test} has `hosts`, yet it is reported missing: {stderr}"
        );
    }
    insta::assert_snapshot!(text(&out));
}

/// A completed test's record, made with `settings`.
fn completed(settings: serde_json::Value) -> rallyctl::state::TestRecord {
    rallyctl::state::TestRecord::new(
        "h".into(),
        settings.into(),
        "esrally race".into(),
        rallyctl::state::Status::Completed,
    )
}

/// A directory holding `plan.toml`, a copy of the example plan, and the files it names: the
/// plan lies at the top, where `plans/example.toml` reaches up for them.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(root().join("plans/example.toml")).unwrap();
    std::fs::write(dir.path().join("plan.toml"), example.replace("\"../", "\"")).unwrap();
    std::fs::create_dir_all(dir.path().join("conditional_install_items")).unwrap();
    std::fs::copy(
        root().join("conditional_install_items/rally_csv.ini"),
        dir.path().join("conditional_install_items/rally_csv.ini"),
    )
    .unwrap();
    let tracks = dir.path().join("tests/fixtures/tracks");
    std::fs::create_dir_all(&tracks).unwrap();
    let copied = Command::new("cp")
        .arg("-r")
        .arg(root().join("tests/fixtures/tracks/tiny"))
        .arg(&tracks)
        .status()
        .unwrap();
    assert!(copied.success());
    dir
}

/// Usage errors have an exit code of their own, apart from `plan --detailed-exitcode`'s 2 for
/// "changes present", and `--help` lists every exit code.
#[test]
fn usage_errors_exit_64_and_help_lists_the_exit_codes() {
    let out = rallyctl(&["plan", "--no-such-flag", "plans/example.toml"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let out = rallyctl(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let out = rallyctl(&[
        "plan",
        "--detailed-exitcode",
        "plans/example.toml",
        "--state",
        "/nonexistent/x.json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = rallyctl(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for code in ["0 ", "1 ", "2 ", "3 ", "64 ", "130 "] {
        assert!(
            help.contains(&format!("\n  {code}")),
            "exit code {code}missing: {help}"
        );
    }
}

/// Terraform's one-dash long options mean what they mean to Terraform users: `-out=FILE` saves
/// to FILE, never to a file named `ut=FILE`.
#[test]
fn terraform_spellings_are_read_as_long_options() {
    let dir = workdir();
    let d = dir.path();
    let out = rallyctl_in(
        d,
        &[
            "plan",
            "plan.toml",
            "-out=night.plan",
            "-target=ingest.geonames-4g",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(d.join("night.plan").is_file());
    assert!(!d.join("ut=night.plan").exists());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Plan: 1 to run"),
        "-target was read: {stdout}"
    );
    let out = rallyctl_in(
        d,
        &[
            "plan",
            "plan.toml",
            "-out",
            "again.plan",
            "-detailed-exitcode",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(d.join("again.plan").is_file());
}

/// No output flag writes over the plan being read, a state file, its backup or lock, or
/// anything under the state directory; each refusal leaves the file as it was.
#[test]
fn output_flags_never_overwrite_inputs_or_state() {
    let dir = workdir();
    let d = dir.path();
    let out = rallyctl_in(d, &["plan", "plan.toml", "-o", "night.plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A state of this workspace, and one of another elsewhere.
    let mut st = rallyctl::state::State::new("nightly");
    rallyctl::state::save(&d.join("state/nightly.state.json"), &mut st).unwrap();
    rallyctl::state::save(&d.join("state/nightly.state.json"), &mut st).unwrap();
    let mut other = rallyctl::state::State::new("other");
    rallyctl::state::save(&d.join("other.json"), &mut other).unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> = [
        "plan.toml",
        "state/nightly.state.json",
        "state/nightly.state.json.backup",
        "other.json",
    ]
    .iter()
    .map(|p| (d.join(p), std::fs::read(d.join(p)).unwrap()))
    .collect();
    for (args, what) in [
        (
            vec!["plan", "plan.toml", "-o", "plan.toml"],
            "the plan file",
        ),
        (
            vec!["plan", "plan.toml", "-o", "./state/../plan.toml"],
            "the plan file",
        ),
        (
            vec!["plan", "plan.toml", "-o", "state/nightly.state.json"],
            "the state directory",
        ),
        (
            vec!["plan", "plan.toml", "-o", "state/new.plan"],
            "the state directory",
        ),
        (
            vec!["plan", "plan.toml", "-o", "other.json"],
            "a state file",
        ),
        (
            vec![
                "report",
                "plan.toml",
                "-o",
                "state/nightly.state.json.backup",
            ],
            "the state directory",
        ),
        (
            vec!["report", "plan.toml", "-o", "plan.toml"],
            "the plan file",
        ),
        (
            vec!["report", "plan.toml", "-o", "other.json"],
            "a state file",
        ),
    ] {
        let out = rallyctl_in(d, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("refusing to write") && stderr.contains(what),
            "{args:?}: {stderr}"
        );
    }
    for (path, bytes) in before {
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{} changed",
            path.display()
        );
    }
    assert!(!d.join("state/new.plan").exists());
}

/// An apply that is refused (no terminal to ask on) leaves nothing behind: no state, no empty
/// state directory.
#[test]
fn a_refused_apply_leaves_no_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(root().join("plans/local.toml"), d.join("local.toml")).unwrap();
    let out = rallyctl_in(d, &["apply", "local.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --auto-approve"),
        "{}",
        text(&out)
    );
    assert!(!d.join("state").exists(), "apply left a state directory");
}

/// A cluster whose nodes would run on this machine as root (Rally refuses to launch
/// Elasticsearch as root) is refused by `plan`, whose dry run would otherwise pass where
/// `apply` fails, and by `apply` before it acquires anything; `--target` leaves it out.
/// (`tests/cluster_nodes.rs` races one as another user.)
#[test]
fn plan_and_apply_refuse_local_nodes_to_root_before_acquiring_anything() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "the tests run as root, as .ci/run does");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("c.toml"),
        "version = 1\nname = \"c\"\n[defaults]\nprovider = \"local\"\ntrack = \"geonames\"\n\
         [[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"nodes\"\ncluster = { nodes = 2, distribution_version = \"8.15.0\" }\n\
         [[suite.test]]\nname = \"one\"\n",
    )
    .unwrap();
    let refused = "s.nodes: the nodes of its cluster would run on this machine as root, and Rally refuses to launch Elasticsearch as root; nothing was acquired. Run rallyctl as another user, race the test on aws or ssh, or leave it out with --target";
    let planned = rallyctl_in(d, &["plan", "c.toml"]);
    assert_eq!(planned.status.code(), Some(1), "{}", text(&planned));
    assert!(
        String::from_utf8_lossy(&planned.stderr).contains(refused),
        "{}",
        text(&planned)
    );
    let other = rallyctl_in(d, &["plan", "c.toml", "--target", "s.one"]);
    assert_eq!(other.status.code(), Some(0), "{}", text(&other));
    let out = rallyctl_in(d, &["apply", "c.toml", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(refused), "{stderr}");
    let state = rallyctl::state::load(&d.join("state/c.state.json")).unwrap();
    assert!(
        state.is_none_or(|s| s.tests.is_empty()),
        "apply recorded a test it refused"
    );
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap();
    assert!(
        !home.join("rallyctl/runs/c").exists(),
        "apply made a run directory"
    );
}

/// A lock whose holder died on this host needs its ID and a confirmation; without a terminal
/// to confirm on, the refusal says to pass --force.
#[test]
fn force_unlock_of_a_dead_holder_asks_first() {
    let (dir, state) = temp_state();
    let lock = dir.path().join("nightly.state.json.lock");
    let holder = serde_json::json!({
        "id": "1234", "pid": 999_999_999u32, "host": hostname(), "since": "2026-11-25T00:00:00Z",
        "command": "rallyctl apply gone.toml"
    });
    std::fs::write(&lock, holder.to_string()).unwrap();
    let s = state.to_str().unwrap();
    let out = rallyctl(&["force-unlock", "1234", "--state", s]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --force"),
        "{}",
        text(&out)
    );
    assert!(lock.exists());
    let out = rallyctl(&["force-unlock", "1234", "--state", s, "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!lock.exists());
}

fn hostname() -> String {
    String::from_utf8(Command::new("hostname").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned()
}

/// Cleaning up needs only the workspace: destroy, state and results work with a plan that is
/// broken elsewhere (an unreadable rally.ini, a missing track), from another directory, or with
/// `--workspace` and no plan at all; a state of another workspace is refused.
#[test]
fn cleaning_up_needs_only_the_workspace() {
    let dir = workdir();
    let d = dir.path();
    let mut st = rallyctl::state::State::new("nightly");
    st.tests.insert(
        "ingest.geonames-4g".parse().unwrap(),
        completed(serde_json::json!({"track": "geonames"})),
    );
    rallyctl::state::save(&d.join("state/nightly.state.json"), &mut st).unwrap();
    let plan = std::fs::read_to_string(d.join("plan.toml"))
        .unwrap()
        .replace(
            "rally_config = \"conditional_install_items/rally_csv.ini\"",
            "rally_config = \"missing.ini\"",
        );
    std::fs::write(d.join("broken.toml"), plan).unwrap();
    let out = rallyctl_in(d, &["validate", "broken.toml"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the plan is broken: {}",
        text(&out)
    );

    for args in [
        vec!["state", "list", "broken.toml"],
        vec!["state", "list", "--workspace", "nightly"],
        vec!["state", "show", "ingest.geonames-4g", "broken.toml"],
    ] {
        let out = rallyctl_in(d, &args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("completed"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let out = rallyctl_in(d, &["destroy", "broken.toml", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Nothing to destroy"),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.ini"),
        "the broken plan is named: {}",
        text(&out)
    );
    let out = rallyctl_in(d, &["destroy", "--workspace", "nightly", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = rallyctl_in(d, &["results", "broken.toml"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("missing.ini"),
        "{}",
        text(&out)
    );

    // From another directory, with the state named.
    let state = d.join("state/nightly.state.json");
    let out = rallyctl(&["state", "list", "--state", state.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A plan of another workspace does not get to edit this one's state.
    std::fs::write(d.join("other.toml"), "version = 1\nname = \"other\"\n").unwrap();
    let out = rallyctl_in(
        d,
        &[
            "state",
            "rm",
            "ingest.geonames-4g",
            "other.toml",
            "--state",
            "state/nightly.state.json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("belongs to workspace `nightly`, not `other`"),
        "{}",
        text(&out)
    );
    let after = rallyctl::state::load(&state).unwrap().unwrap();
    assert_eq!(after.tests.len(), 1, "the record is still there");
}

/// Without AWS credentials, an apply of aws tests says so in one line before it takes the lock
/// or launches anything: no state, no results, no run.
#[test]
fn no_credentials_no_launch() {
    let dir = workdir();
    let d = dir.path();
    let mut cmd = command(d, &["apply", "plan.toml", "--auto-approve"]);
    cmd
        // No credentials anywhere in the chain: no variables, no profile, no instance role.
        .env("HOME", d)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", d.join("no-aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", d.join("no-aws-credentials"));
    for (key, _) in
        std::env::vars().filter(|(k, _)| k.starts_with("AWS_") && k != "AWS_EC2_METADATA_DISABLED")
    {
        cmd.env_remove(key);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("needs AWS credentials") && stderr.contains("nothing was launched"),
        "{stderr}"
    );
    assert!(!d.join("state").exists() && !d.join("results").exists());
    // `-v` shows all the SDK says: what it tried.
    let out = cmd.arg("-v").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Attempted") && stderr.lines().count() > 1,
        "{stderr}"
    );
}

/// What EC2 or Rally would refuse at apply is refused by validate: EC2's tag limits and
/// rallyctl's own tags, versions, host:port, a bounded parallelism, control characters in names.
#[test]
fn validate_catches_what_apply_would_fail_on() {
    let out = rallyctl(&["validate", "tests/fixtures/plans/ec2-limits.toml"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(text(&out));
}

/// A JSON plan with a byte-order mark reads like one without; a file over the size limit is
/// refused before it is read whole (`/dev/zero` never ends); a saved plan given where a plan
/// file is expected says what it is.
#[test]
fn plan_files_are_read_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let bom = dir.path().join("bom.json");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    let json = std::fs::read_to_string(root().join("plans/data_file.json")).unwrap();
    // Its paths, spelled from plans/, are read from the current directory from here.
    bytes.extend(json.replace("\"../", "\"").bytes());
    std::fs::write(&bom, bytes).unwrap();
    let out = rallyctl(&["validate", bom.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = rallyctl(&["validate", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("larger than 64 MiB"),
        "{}",
        text(&out)
    );

    let saved = dir.path().join("night.plan");
    let state = dir.path().join("s.json");
    let out = rallyctl(&[
        "plan",
        "plans/example.toml",
        "-o",
        saved.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for cmd in ["validate", "graph"] {
        let out = rallyctl(&[cmd, saved.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("a saved plan"),
            "{cmd}: {}",
            text(&out)
        );
    }
    // A saved plan is applied as planned: selecting tests on it is refused, not ignored.
    for flag in ["--target", "--replace"] {
        let out = rallyctl(&[
            "apply",
            saved.to_str().unwrap(),
            flag,
            "ingest.geonames",
            "--state",
            state.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(64), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("belong on `rallyctl plan`"),
            "{}",
            text(&out)
        );
        assert!(!state.exists());
    }
}

/// `--json` is honoured or refused, never ignored: a broken plan under `plan --json` comes out
/// as `validate --json` gives it, and commands without JSON output refuse the flag.
#[test]
fn json_is_honoured_or_refused() {
    let out = rallyctl(&["plan", "--json", "tests/fixtures/plans/broken.json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = rallyctl(&["validate", "--json", "tests/fixtures/plans/broken.json"]);
    let validate: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan, validate);
    assert_eq!(plan["valid"], false);
    for args in [
        vec!["graph", "plans/example.toml", "--json"],
        vec!["apply", "plans/example.toml", "--json"],
        vec!["destroy", "plans/example.toml", "--json"],
        vec!["force-unlock", "x", "plans/example.toml", "--json"],
    ] {
        let out = rallyctl(&args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("has no JSON output"),
            "{}",
            text(&out)
        );
    }
}

/// `state show` indents a record's settings with the rest of it.
#[test]
fn state_show_indents_the_settings() {
    let (_dir, state) = temp_state();
    let mut st = rallyctl::state::State::new("nightly");
    st.tests.insert(
        "ingest.geonames-4g".parse().unwrap(),
        completed(serde_json::json!({"track": "geonames", "track_params": {"bulk_size": 5000}})),
    );
    rallyctl::state::save(&state, &mut st).unwrap();
    let out = rallyctl(&[
        "state",
        "show",
        "ingest.geonames-4g",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("\n  \"settings\": {\n    \"track\": \"geonames\",\n    \"track_params\": {\n      \"bulk_size\": 5000\n    }\n  },"), "{shown}");
}

/// Ctrl-C at the approval prompt cancels at once, without waiting for Enter: exit 130, nothing
/// written. (`script` gives rallyctl the terminal it needs to ask on.)
#[test]
fn ctrl_c_at_the_approval_prompt_cancels_at_once() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().canonicalize().unwrap();
    std::fs::copy(root().join("plans/local.toml"), d.join("local.toml")).unwrap();
    let command = format!("{BIN} apply local.toml");
    let mut child = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .current_dir(&d)
        .env("NO_COLOR", "1")
        // Stdin stays open and silent: nobody presses Enter.
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("Enter a value:") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "no prompt: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // The rallyctl below `script`: the process whose working directory is this test's.
    let rallyctl = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == d)
                && std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|exe| exe.ends_with("rallyctl"))
        })
        .expect("rallyctl is running");
    let sent = Command::new("kill")
        .args(["-INT", &rallyctl.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still waiting for Enter after Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    assert!(!d.join("state").exists(), "a cancelled apply wrote state");
}

/// Every file below `dir`, with its bytes.
fn snapshot_files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_owned();
                files.insert(rel, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    files
}

/// The words commands are made of: commands, flags with values, plan files good and bad, a
/// saved plan, a state file where a plan is expected, outputs aimed at inputs.
fn word() -> impl Strategy<Value = Vec<&'static str>> {
    prop::sample::select(vec![
        vec!["validate"],
        vec!["plan"],
        vec!["apply"],
        vec!["destroy"],
        vec!["graph"],
        vec!["state", "list"],
        vec!["state", "show", "ingest.geonames-4g"],
        vec!["state", "rm", "ingest.geonames-4g"],
        vec!["force-unlock", "some-id"],
        vec!["results"],
        vec!["report"],
        vec!["plan.toml"],
        vec!["broken.toml"],
        vec!["other.toml"],
        vec!["data.json"],
        vec!["saved.plan"],
        vec!["state/nightly.state.json"],
        vec!["missing.toml"],
        vec!["--json"],
        vec!["--auto-approve"],
        vec!["--force"],
        vec!["--detailed-exitcode"],
        vec!["-o", "plan.toml"],
        vec!["-o", "out.plan"],
        vec!["--out", "state/nightly.state.json"],
        vec!["-out=data.json"],
        vec!["-o", "other.json"],
        vec!["--state", "state/nightly.state.json"],
        vec!["--state", "other.json"],
        vec!["--workspace", "nightly"],
        vec!["--workspace", "other"],
        vec!["--target", "ingest.geonames-4g"],
        vec!["--replace", "search.http-logs"],
        vec!["--parallelism", "0"],
        vec!["--runs"],
        vec!["--baseline", "latest"],
        vec!["--compare", "latest"],
        vec!["--format", "csv"],
    ])
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    /// No command, whatever its arguments, writes or deletes a file outside `results/`,
    /// `state/` and the output it was given.
    #[test]
    fn no_command_writes_outside_results_state_and_its_output(
        words in prop::collection::vec(word(), 1..6)
    ) {
        let dir = workdir();
        let d = dir.path();
        let args: Vec<&str> = words.concat();
        std::fs::copy(root().join("plans/data_file.json"), d.join("data.json")).unwrap();
        std::fs::write(d.join("broken.toml"), "version = 1\nname = \"nightly\"\n[defaults]\nrally_config = \"missing.ini\"\n").unwrap();
        std::fs::write(d.join("other.toml"), "version = 1\nname = \"other\"\n").unwrap();
        let mut st = rallyctl::state::State::new("nightly");
        rallyctl::state::save(&d.join("state/nightly.state.json"), &mut st).unwrap();
        let mut other = rallyctl::state::State::new("other");
        rallyctl::state::save(&d.join("other.json"), &mut other).unwrap();
        let out = rallyctl_in(d, &["plan", "plan.toml", "-o", "saved.plan"]);
        prop_assert_eq!(out.status.code(), Some(0));
        let before = snapshot_files(d);

        let mut cmd = command(d, &args);
        cmd.env("RALLYCTL_PRICES", prices())
            .env("HOME", d.join("home"))
            .env("AWS_EC2_METADATA_DISABLED", "true");
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_") && k != "AWS_EC2_METADATA_DISABLED") {
            cmd.env_remove(key);
        }
        let out = cmd.output().unwrap();
        prop_assert!(out.status.code().is_some(), "killed by a signal: {:?}", args);

        // The outputs named on the command line.
        let mut named: Vec<PathBuf> = Vec::new();
        for (i, a) in args.iter().enumerate() {
            if let Some(v) = a.strip_prefix("-out=") {
                named.push(v.into());
            } else if (*a == "-o" || *a == "--out") && i + 1 < args.len() {
                named.push(args[i + 1].into());
            }
        }
        let after = snapshot_files(d);
        let allowed = |p: &Path| {
            p.starts_with("results") || p.starts_with("state") || named.iter().any(|n| n == p)
        };
        for (path, bytes) in &before {
            if !allowed(path) {
                prop_assert_eq!(after.get(path), Some(bytes), "{:?} changed {}: {}", args, path.display(), text(&out));
            }
        }
        for path in after.keys() {
            prop_assert!(allowed(path) || before.contains_key(path), "{:?} wrote {}: {}", args, path.display(), text(&out));
        }
    }
}

/// An error says the operating system's reason once, not once per layer that passed it on.
#[test]
fn errors_say_the_os_reason_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = rallyctl(&["state", "list", "--state", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("Is a directory").count(), 1, "{stderr}");
}

/// Colour only on a terminal that can show it: `TERM=dumb` gets none. (`script` gives rallyctl
/// a terminal.)
#[test]
fn a_dumb_terminal_gets_no_colour() {
    let plan = |term: &str| {
        let command =
            format!("TERM={term} {BIN} plan plans/example.toml --state /nonexistent/s.json");
        let out = Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .current_dir(root())
            .env_remove("NO_COLOR")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("script (util-linux) runs");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(plan("xterm").contains('\u{1b}'), "a terminal gets colour");
    assert!(!plan("dumb").contains('\u{1b}'), "TERM=dumb got colour");
}

/// Config hashes follow what a test runs, not where the checkout lies or where rallyctl runs
/// from: a path inside the project counts by its place in it, however the plan spells it.
#[test]
fn config_hashes_do_not_change_when_the_checkout_moves() {
    let hash = |cwd: &Path, plan: &Path, ini: &str, track: &str| {
        let plan_text = format!(
            "version = 1\nname = \"moved\"\n[defaults]\nprovider = \"local\"\n\
             rally_config = \"{ini}\"\n[[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"t\"\n\
             track_path = \"{track}\"\n"
        );
        std::fs::write(plan, plan_text).unwrap();
        let out = rallyctl_in(cwd, &["plan", plan.to_str().unwrap(), "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["changes"][0]["config_hash"].as_str().unwrap().to_owned()
    };
    let absolute = |d: &Path| {
        let p = |rel: &str| d.join(rel).display().to_string();
        hash(
            d,
            &d.join("moved.toml"),
            &p("conditional_install_items/rally_csv.ini"),
            &p("tests/fixtures/tracks/tiny"),
        )
    };
    let (a, b) = (workdir(), workdir());
    let first = absolute(a.path());
    assert_eq!(absolute(b.path()), first, "a moved checkout");
    let relative = hash(
        b.path(),
        &b.path().join("moved.toml"),
        "conditional_install_items/rally_csv.ini",
        "tests/fixtures/tracks/tiny",
    );
    assert_eq!(relative, first, "a relative spelling of the same files");
    let sub = b.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let elsewhere = hash(
        &sub,
        &b.path().join("moved.toml"),
        "../conditional_install_items/rally_csv.ini",
        "../tests/fixtures/tracks/tiny",
    );
    assert_eq!(
        elsewhere, first,
        "run from another directory of the project"
    );

    // In a git checkout the project is the checkout, wherever in it the plan lies.
    let c = workdir();
    std::fs::create_dir(c.path().join(".git")).unwrap();
    std::fs::create_dir(c.path().join("plans")).unwrap();
    let p = |rel: &str| c.path().join(rel).display().to_string();
    let in_checkout = hash(
        c.path(),
        &c.path().join("plans/moved.toml"),
        &p("conditional_install_items/rally_csv.ini"),
        &p("tests/fixtures/tracks/tiny"),
    );
    assert_eq!(in_checkout, first, "a plan in the checkout's plans/");

    // A path outside the project is recorded whole: it is not part of what moved.
    let outside = hash(
        c.path(),
        &c.path().join("plans/moved.toml"),
        &a.path()
            .join("conditional_install_items/rally_csv.ini")
            .display()
            .to_string(),
        &p("tests/fixtures/tracks/tiny"),
    );
    assert_ne!(outside, first, "a rally.ini outside the project");
}

/// A changed track file re-runs the tests of that track, and `plan` names the file (and any
/// other file whose content changed, appeared or went). A record from before rallyctl kept the
/// files' hashes says what it said before.
#[test]
fn plan_names_the_files_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    let track = dir.path().join("track");
    std::fs::create_dir_all(track.join("operations")).unwrap();
    std::fs::write(track.join("track.json"), r#"{"version": 2}"#).unwrap();
    std::fs::write(track.join("operations/default.json"), "[]").unwrap();
    std::fs::write(
        dir.path().join("tracked.toml"),
        format!(
            "version = 1\nname = \"tracked\"\n[defaults]\nprovider = \"local\"\n\
             track_path = \"{}\"\n[[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"new\"\n\
             [[suite.test]]\nname = \"old\"\n",
            track.display()
        ),
    )
    .unwrap();
    // State as an apply of this plan leaves it; `s.old` recorded before inputs were kept.
    let plan = rallyctl::plan::Plan::load(&dir.path().join("tracked.toml")).unwrap();
    let renderer = rallyctl::templates::Renderer::new();
    let artifacts = rallyctl::planner::render_all(&plan, &renderer).unwrap();
    let mut state = rallyctl::state::State::new("tracked");
    for test in plan.tests() {
        let made = &artifacts[&test.address];
        let mut record = rallyctl::state::TestRecord::new(
            made.config_hash.clone(),
            (&test.settings).into(),
            rallyctl::templates::race_command(&test.settings).unwrap(),
            rallyctl::state::Status::Completed,
        );
        if test.address.test() == "new" {
            record.inputs = made.inputs(&test.settings);
        }
        state.tests.insert(test.address.clone(), record);
    }
    let state_path = dir.path().join("tracked.state.json");
    rallyctl::state::save(&state_path, &mut state).unwrap();
    let out = rallyctl_in(
        dir.path(),
        &["plan", "tracked.toml", "--state", "tracked.state.json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No changes"),
        "{}",
        text(&out)
    );

    std::fs::write(track.join("operations/default.json"), "[{}]").unwrap();
    std::fs::write(track.join("challenges.json"), "[]").unwrap();
    let out = rallyctl_in(
        dir.path(),
        &["plan", "tracked.toml", "--state", "tracked.state.json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stdout));
}

/// A plan of two tests on an image baked from one AMI and one on an AMI id, in a directory of
/// its own; `extra` is appended (more tests).
fn baked_workdir(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("baked.toml"),
        format!(
            "version = 1\nname = \"baked\"\n\n[defaults]\nregion = \"us-east-1\"\ninstance_type = \"m5.large\"\n\
             ami = \"baked\"\nbase_ami = \"ami-0123abcd\"\ntrack = \"geonames\"\n\n\
             [[suite]]\nname = \"ingest\"\n\n[[suite.test]]\nname = \"a\"\n\n[[suite.test]]\nname = \"b\"\n\n\
             [[suite.test]]\nname = \"plain\"\nami = \"ami-0fedcba9\"\n{extra}"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn validate_refuses_a_base_ami_beside_an_ami_id_and_baked_without_one() {
    let dir = baked_workdir(
        "\n[[suite.test]]\nname = \"both\"\nami = \"ami-0fedcba9\"\nbase_ami = \"ami-0123abcd\"\n\
         \n[[suite.test]]\nname = \"typo\"\nami = \"bakd\"\n",
    );
    let out = rallyctl_in(dir.path(), &["validate", "baked.toml"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!(text(&out));
}

/// A test on a baked image that state does not have is refused before anything runs, at the
/// plan's `base_ami`, with the command that makes the image; `bake` shows what it would
/// launch and asks first.
#[test]
fn a_baked_image_state_does_not_have_is_refused_and_bake_says_what_it_makes() {
    let dir = baked_workdir("");
    let out = rallyctl_in(dir.path(), &["plan", "baked.toml", "--refresh=false"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("missing_baked_image", text(&out));
    let out = rallyctl_in(dir.path(), &["bake", "baked.toml"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("bake_asks", text(&out));
    assert!(
        !dir.path().join("state").exists(),
        "a refused bake wrote state"
    );
}

/// `plan` names the image each baked test launches from; the image id is state's, not the
/// configuration's.
#[test]
fn plan_shows_the_baked_image_each_test_launches_from() {
    let dir = baked_workdir("");
    let plan = rallyctl::plan::Plan::load(&dir.path().join("baked.toml")).unwrap();
    let settings = &plan.suites[0].tests[0].settings;
    let mut state = rallyctl::state::State::new("baked");
    let mut image = rallyctl::state::Image {
        baked_for: rallyctl::bake::key_of(settings).unwrap(),
        step: rallyctl::state::BakeStep::Launching,
        attempt: 1,
        settings: settings.into(),
        instance: None,
        name: "rallyctl-baked-0123456789ab-1".into(),
        image_id: Some("ami-0ba4ed0000000001".into()),
        snapshot_ids: vec!["snap-0123".into()],
        created_at: Some(jiff::Timestamp::now()),
        error: None,
        history: vec![],
    };
    image.set_step(rallyctl::state::BakeStep::Available);
    state.images.push(image);
    let path = dir.path().join("state/baked.state.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    rallyctl::state::save(&path, &mut state).unwrap();
    let out = rallyctl_in(dir.path(), &["plan", "baked.toml", "--refresh=false"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The price file is named by its absolute path, which is the checkout's.
    let checkout = format!("{}/", root().display());
    insta::with_settings!({filters => vec![(checkout.as_str(), "")]}, {
        insta::assert_snapshot!(text(&out));
    });
    let out = rallyctl_in(dir.path(), &["bake", "baked.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    insta::assert_snapshot!("bake_has_it", text(&out));

    // Once every test has its result, an image given back is no problem: nothing launches.
    for test in plan.tests() {
        let hash = rallyctl::templates::Renderer::new()
            .render(test)
            .unwrap()
            .config_hash;
        let record = rallyctl::state::TestRecord::new(
            hash,
            (&test.settings).into(),
            rallyctl::templates::race_command(&test.settings).unwrap(),
            rallyctl::state::Status::Completed,
        );
        state.tests.insert(test.address.clone(), record);
    }
    state.images[0].set_step(rallyctl::state::BakeStep::Deregistered);
    rallyctl::state::save(&path, &mut state).unwrap();
    let out = rallyctl_in(
        dir.path(),
        &[
            "plan",
            "baked.toml",
            "--refresh=false",
            "--detailed-exitcode",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Every mistake in a `[backend]` block, at its line; a `--backend` that is no URL, or one
/// beside `--state`, is a usage error.
#[test]
fn backend_mistakes_are_refused_at_their_place() {
    let dir = workdir();
    let plan = std::fs::read_to_string(dir.path().join("plan.toml")).unwrap();
    let broken = format!(
        "{plan}\n[backend]\ns3 = {{ bucket = \"Perf_State\", prefx = \"a\", endpoint = \"localhost:9000\", role_arn = \"admin\", region = \"\" }}\n"
    );
    std::fs::write(dir.path().join("plan.toml"), broken).unwrap();
    let out = rallyctl_in(dir.path(), &["validate", "plan.toml"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("backend_block_mistakes", text(&out));

    std::fs::write(
        dir.path().join("plan.toml"),
        format!("{plan}\n[backend]\nlocal = true\n"),
    )
    .unwrap();
    let out = rallyctl_in(dir.path(), &["validate", "plan.toml"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("backend_without_a_store", text(&out));

    std::fs::write(dir.path().join("plan.toml"), &plan).unwrap();
    for (args, says) in [
        (
            &["plan", "plan.toml", "--backend", "bucket/prefix"][..],
            "`bucket/prefix` is no backend: expected s3://BUCKET/PREFIX or local",
        ),
        (
            &["plan", "plan.toml", "--backend", "s3://A/b"],
            "`A` is no S3 bucket name",
        ),
        (
            &[
                "plan",
                "plan.toml",
                "--backend",
                "s3://perf/b",
                "--state",
                "s.json",
            ],
            "--state names a local state file and --backend an S3 one: pass one of them",
        ),
        (
            &["state", "push", "plan.toml", "--backend", "local"],
            "--backend local names no S3 backend",
        ),
    ] {
        let out = rallyctl_in(dir.path(), args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    let out = rallyctl_in(dir.path(), &["state", "pull", "plan.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(
            "has no S3 backend: pass --backend s3://BUCKET/PREFIX, or set [backend] in the plan"
        ),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join("state").exists());
}

/// Every mistake in a `[notify]` block, at its line, in TOML and JSON: a literal URL (which is
/// refused and never repeated: it holds the webhook's secret), an unknown key, a value that
/// names no environment variable, no variable at all. `results` and `history`, which read only
/// the plan's head, refuse it too.
#[test]
fn notify_block_mistakes_are_refused_at_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let validate = |file: &str| {
        let out = rallyctl_in(d, &["validate", file]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(!text(&out).contains("s3cr3t"), "{}", text(&out));
        text(&out)
    };
    let mut said = String::new();
    for extra in [
        "[notify]\nurl = \"https://hooks.example.com/T0/s3cr3t\"\nurl_env = \"TEAM-HOOK\"\nchannel = \"#perf\"\nurl_evn = \"X\"\n",
        "[notify]\nurl = \"https://hooks.example.com/T0/s3cr3t\"\n",
        "[notify]\n",
        "[notify]\nurl_env = \"\"\n",
        "[notify]\nurl_env = 7\n",
    ] {
        failing_local_plan(d, extra);
        said.push_str(&validate("plan.toml"));
    }
    let json = r#"{"version": 1, "name": "notified",
  "defaults": {"provider": "local", "rally_version": "2.13.0"},
  "suite": [{"name": "s", "test": [{"name": "a", "track": "geonames"}]}],
  "notify": {"url_env": "https://hooks.example.com/T0/s3cr3t", "url_env": "1HOOK"}
}
"#;
    std::fs::write(d.join("plan.json"), json).unwrap();
    said.push_str(&validate("plan.json"));
    insta::assert_snapshot!("notify_block_mistakes", said);

    for args in [&["results", "plan.json"][..], &["history", "plan.json"]] {
        let out = rallyctl_in(d, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("plan.json:4:25: notify.url_env: this is a URL"),
            "{args:?}: {}",
            text(&out)
        );
    }
}

/// A store that cannot be reached is named, with what went wrong, and nothing is written.
#[test]
fn an_unreachable_backend_is_named_and_nothing_is_written() {
    let dir = workdir();
    let out = command(
        dir.path(),
        &["plan", "plan.toml", "--backend", "s3://perf-state/nightly"],
    )
    .env("RALLYCTL_PRICES", prices())
    // A port nothing listens on: refused at once.
    .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    .env("AWS_ACCESS_KEY_ID", "testing")
    .env("AWS_SECRET_ACCESS_KEY", "testing")
    .env("AWS_REGION", "eu-west-1")
    .env("AWS_EC2_METADATA_DISABLED", "true")
    .env("AWS_MAX_ATTEMPTS", "1")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("error: cannot reach state s3://perf-state/nightly/nightly.state.json: "),
        "{shown}"
    );
    assert!(shown.contains("Connection refused"), "{shown}");
    assert!(!dir.path().join("state").exists());
}

/// A reader that goes away early (`rallyctl plan BIG.toml | head -1`) ends rallyctl quietly, as
/// it ends ripgrep: no panic, no message.
#[test]
fn a_closed_stdout_ends_plan_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let mut plan = "version = 1\nname = \"big\"\n[defaults]\nprovider = \"local\"\nrally_version = \"2.13.0\"\ndistribution_version = \"8.15.0\"\n\n[[suite]]\nname = \"s\"\n".to_owned();
    for t in 0..3000 {
        plan.push_str(&format!(
            "\n[[suite.test]]\nname = \"t{t}\"\ntrack = \"geonames\"\n"
        ));
    }
    std::fs::write(dir.path().join("big.toml"), plan).unwrap();
    let mut child = command(dir.path(), &["plan", "big.toml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(!first.is_empty(), "plan printed nothing");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// A workspace this directory knows to live in S3 (`state/<name>.backend`, written when a
/// command reached it there) is not silently started afresh here by a command that names no
/// backend; `--backend local` starts one on purpose.
#[test]
fn a_workspace_remembered_in_s3_is_not_started_afresh_here() {
    let dir = workdir();
    let d = dir.path();
    std::fs::create_dir_all(d.join("state")).unwrap();
    std::fs::write(
        d.join("state/nightly.backend"),
        "s3://perf-state/rallyctl\n",
    )
    .unwrap();
    let out = rallyctl_in(d, &["plan", "plan.toml", "--refresh=false"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    insta::assert_snapshot!(text(&out));
    let out = rallyctl_in(
        d,
        &["plan", "plan.toml", "--refresh=false", "--backend", "local"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// `plan` while a live run holds the workspace's lock says who holds it, rather than announcing
/// a resume of the tests that run is running.
#[test]
fn plan_says_who_holds_the_lock() {
    let dir = workdir();
    let d = dir.path();
    let state = d.join("state/nightly.state.json");
    std::fs::create_dir_all(d.join("state")).unwrap();
    let lock = rallyctl::state::Lock::acquire(&state, "rallyctl apply plan.toml").unwrap();
    let out = rallyctl_in(d, &["plan", "plan.toml", "--refresh=false"]);
    drop(lock);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    insta::with_settings!({filters => vec![
        (r"pid \d+ on [^,]+", "pid PID on HOST"),
        (r"since [0-9-]+ [0-9:]+ UTC", "since TIME"),
        (r"\S*state/nightly\.state\.json", "STATE"),
    ]}, {
        insta::assert_snapshot!(first);
    });
}

/// `--fail-on-regression 10`, where clap reads `10` as an argument of its own, suggests the
/// spelling that works, wherever the plan file is on the line.
#[test]
fn fail_on_regression_with_a_space_suggests_the_equals_sign() {
    for args in [
        &[
            "results",
            "--fail-on-regression",
            "10",
            "plans/example.toml",
        ][..],
        &[
            "results",
            "plans/example.toml",
            "--fail-on-regression",
            "10",
        ][..],
    ] {
        let out = rallyctl(args);
        assert_eq!(out.status.code(), Some(64), "{}", text(&out));
        insta::assert_snapshot!(String::from_utf8_lossy(&out.stderr));
    }
}

/// Each command's `--help` lists only the global flags it reads (no `--json` where it is
/// refused, no `--state` where no state is read) and describes every positional argument.
#[test]
fn each_commands_help_shows_what_it_takes() {
    let everywhere = ["--no-color", "--verbose", "--help"];
    let cases: &[(&[&str], &[&str])] = &[
        (&["validate"], &["--json"]),
        (&["plan"], &["--state", "--backend", "--json"]),
        (&["apply"], &["--state", "--backend"]),
        (&["bake"], &["--state", "--backend"]),
        (&["graph"], &[]),
        (&["destroy"], &["--state", "--workspace", "--backend"]),
        (
            &["results"],
            &["--state", "--workspace", "--backend", "--json"],
        ),
        (
            &["history"],
            &["--state", "--workspace", "--backend", "--json"],
        ),
        (&["report"], &["--state", "--workspace", "--backend"]),
        (&["force-unlock"], &["--state", "--workspace", "--backend"]),
        (
            &["state", "list"],
            &["--state", "--workspace", "--backend", "--json"],
        ),
        (
            &["state", "show"],
            &["--state", "--workspace", "--backend", "--json"],
        ),
        (&["state", "rm"], &["--state", "--workspace", "--backend"]),
        (&["state", "push"], &["--state", "--workspace", "--backend"]),
        (&["state", "pull"], &["--state", "--workspace", "--backend"]),
    ];
    // Every command is here: a new one is not forgotten.
    let top = String::from_utf8_lossy(&rallyctl(&["--help"]).stdout).into_owned();
    let commands = top.split_once("Commands:\n").unwrap().1;
    for line in commands.lines().take_while(|l| l.starts_with("  ")) {
        let name = line.split_whitespace().next().unwrap();
        assert!(
            name == "help" || cases.iter().any(|(c, _)| c[0] == name),
            "`{name}` has no case here"
        );
    }
    let global = ["--state", "--workspace", "--backend", "--json"];
    for (command, takes) in cases {
        let mut args = command.to_vec();
        args.push("--help");
        let out = rallyctl(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        let (arguments, options) = help.split_once("\nOptions:\n").unwrap();
        let shown: Vec<&str> = (options.lines())
            .filter_map(|l| {
                l.trim_start()
                    .split([' ', ','])
                    .find(|w| w.starts_with("--"))
            })
            .filter(|flag| global.contains(flag))
            .collect();
        let mut wanted: Vec<&str> = global.into_iter().filter(|f| takes.contains(f)).collect();
        let mut seen = shown.clone();
        seen.sort();
        wanted.sort();
        assert_eq!(seen, wanted, "rallyctl {}:\n{help}", command.join(" "));
        for flag in everywhere {
            assert!(options.contains(flag), "{flag} on {command:?}:\n{help}");
        }
        if let Some((_, positionals)) = arguments.split_once("\nArguments:\n") {
            for line in positionals
                .lines()
                .filter(|l| l.trim_start().starts_with(['<', '[']))
            {
                let described = line.trim().split_once("  ").map(|(_, d)| d.trim());
                assert!(
                    described.is_some_and(|d| !d.is_empty()),
                    "an argument without a description on {command:?}: {line}"
                );
            }
        }
    }
}

/// A test matrix: `validate` counts its combinations as tests, `plan` lists them under their
/// test with the values each sets.
#[test]
fn plan_groups_a_matrix_under_its_test() {
    let plan = "tests/fixtures/plans/matrix.toml";
    let out = rallyctl(&["validate", plan]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    insta::assert_snapshot!("matrix_validate", String::from_utf8_lossy(&out.stdout));
    let (_dir, state) = temp_state();
    let out = rallyctl(&[
        "plan",
        plan,
        "--state",
        state.to_str().unwrap(),
        "--refresh=false",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    insta::assert_snapshot!("matrix_plan", String::from_utf8_lossy(&out.stdout));
}

/// Each mistake a matrix can hold, at the file, line and column of what is wrong.
#[test]
fn validate_reports_matrix_mistakes_at_their_values() {
    let out = rallyctl(&["validate", "tests/fixtures/matrix/mistakes.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stderr));
}

/// A combination's address is pasted back as printed, with no quoting; the test's name
/// selects all its combinations, for `--target` and for `--replace`.
#[test]
fn the_name_of_a_test_with_a_matrix_selects_all_its_combinations() {
    let (_dir, state) = temp_state();
    let plan = |flag: &str, address: &str| {
        let out = rallyctl(&[
            "plan",
            "tests/fixtures/plans/matrix.toml",
            "--state",
            state.to_str().unwrap(),
            "--refresh=false",
            flag,
            address,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // An address that selects nothing is refused, so `--replace` taking it is the check.
    for flag in ["--target", "--replace"] {
        let stdout = plan(flag, "ingest.index");
        assert!(
            stdout.contains("+ ingest.index-r5.large-8.15.0"),
            "{flag}: {stdout}"
        );
    }
    let stdout = plan("--target", "ingest.index");
    assert!(
        stdout.contains("Plan: 7 to run") && !stdout.contains("ingest.search"),
        "{stdout}"
    );
    let one = plan("--target", "ingest.index-c5.large-8.15.0-bulk_size-5000");
    assert!(
        one.contains("+ ingest.index-c5.large-8.15.0-bulk_size-5000")
            && one.contains("Plan: 1 to run"),
        "{one}"
    );
}

/// `results_valid_for` written wrong, at the file, line and column of each value.
#[test]
fn validate_reports_results_valid_for_mistakes_at_their_values() {
    let out = rallyctl(&[
        "validate",
        "tests/fixtures/messages/results-valid-for-mistakes.toml",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    insta::assert_snapshot!(text(&out));
}

/// A result older than its test's `results_valid_for` is to be re-run, in text (a change for
/// `--detailed-exitcode`) and in JSON; one within its window, or of a test without the
/// setting, is current.
#[test]
fn plan_re_runs_a_result_older_than_results_valid_for() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("nightly.toml");
    std::fs::write(
        &plan,
        "version = 1\nname = \"nightly\"\n[defaults]\nprovider = \"local\"\ntrack = \"geonames\"\n\
         [[suite]]\nname = \"s\"\nresults_valid_for = \"20h\"\n[[suite.test]]\nname = \"stale\"\n\
         [[suite.test]]\nname = \"fresh\"\nresults_valid_for = \"1000years\"\n\
         [[suite]]\nname = \"kept\"\n[[suite.test]]\nname = \"forever\"\n",
    )
    .unwrap();
    let loaded = rallyctl::plan::Plan::load(&plan).unwrap();
    let artifacts =
        rallyctl::planner::render_all(&loaded, &rallyctl::templates::Renderer::new()).unwrap();
    let mut state = rallyctl::state::State::new("nightly");
    for test in loaded.tests() {
        let mut record = rallyctl::state::TestRecord::new(
            artifacts[&test.address].config_hash.clone(),
            (&test.settings).into(),
            rallyctl::templates::race_command(&test.settings).unwrap(),
            rallyctl::state::Status::Completed,
        );
        record.history = vec![rallyctl::state::Transition {
            status: "completed".into(),
            at: "2026-12-05T02:10:00Z".parse().unwrap(),
        }];
        state.tests.insert(test.address.clone(), record);
    }
    rallyctl::state::save(&dir.path().join("nightly.state.json"), &mut state).unwrap();
    let args = ["plan", "nightly.toml", "--state", "nightly.state.json"];
    let out = rallyctl_in(dir.path(), &[&args[..], &["--detailed-exitcode"]].concat());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    insta::assert_snapshot!(text(&out));
    let out = rallyctl_in(dir.path(), &[&args[..], &["--json"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{v}");
    assert_eq!(
        (
            &changes[0]["address"],
            &changes[0]["action"],
            &changes[0]["expired"]
        ),
        (
            &serde_json::json!("s.stale"),
            &serde_json::json!("rerun"),
            &serde_json::json!({"completed_at": "2026-12-05T02:10:00Z", "results_valid_for": "20h"})
        )
    );
}

/// With `GITHUB_STEP_SUMMARY` naming a file, `apply` appends its Markdown summary there after
/// what the job's earlier steps wrote: the counts and each failure with its step and reason
/// (here a local test whose `remote_dir` cannot exist, failing at installing at once).
#[test]
fn apply_appends_its_summary_to_the_github_step_summary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("plan.toml"),
        "version = 1\nname = \"summary\"\n[defaults]\nprovider = \"local\"\n\
         rally_version = \"2.13.0\"\nremote_dir = \"/dev/null/rallyctl\"\n\
         [[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"a\"\ntrack = \"geonames\"\n",
    )
    .unwrap();
    let summary = d.join("step-summary.md");
    std::fs::write(&summary, "## Earlier step\nkept").unwrap();
    let out = command(d, &["apply", "plan.toml", "--auto-approve"])
        .env("RALLYCTL_PRICES", prices())
        // mkdir's quotes in the reason are the locale's.
        .env("LC_ALL", "C")
        .env("GITHUB_STEP_SUMMARY", &summary)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let written = std::fs::read_to_string(&summary).unwrap();
    assert!(written.starts_with("## Earlier step\nkept\n"), "{written}");
    assert!(
        written.contains("0 completed, 1 failed.") && written.contains("| s.a  | installing |"),
        "{written}"
    );
    insta::with_settings!({filters => vec![(r"\d{8}T\d{6}Z-[0-9a-f]{6}", "RUN")]}, {
        insta::assert_snapshot!(written);
    });
}

/// An apply some test of which failed POSTs that to the `--notify` webhook (the URL from the
/// environment, as a CI secret): the workspace, the run, each failure with its step and reason,
/// in `text` and structured; the exit code is the failed apply's, the URL printed nowhere.
#[test]
fn a_failed_apply_is_posted_to_the_notify_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    failing_local_plan(d, "");
    let hook = Webhook::answering(&[200]);
    let out = command(d, &["apply", "plan.toml", "--auto-approve"])
        .env("RALLYCTL_PRICES", prices())
        .env("RALLYCTL_NOTIFY_URL", &hook.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!text(&out).contains("s3cr3t-t0ken"), "{}", text(&out));
    let received = hook.received();
    assert_eq!(received.len(), 1, "{}", text(&out));
    let body: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(body["kind"], "apply_failed");
    assert_eq!(body["workspace"], "notified");
    let run = body["run_id"].as_str().unwrap();
    let message = body["text"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "rallyctl apply of workspace `notified` (run {run}): 1 failed, 0 completed.\n• s.a failed at installing: "
        )),
        "{message}"
    );
    let failures = body["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["test"], "s.a");
    assert_eq!(failures[0]["step"], "installing");
    assert!(
        failures[0]["error"]
            .as_str()
            .unwrap()
            .contains("/dev/null/rallyctl")
    );
    assert!(body.get("verdicts").is_none(), "{body}");
}

/// `plan.toml` in `dir`: workspace `notified`, one local test that fails at once (its remote
/// directory cannot be made), and `extra` at the end.
fn failing_local_plan(dir: &Path, extra: &str) {
    std::fs::write(
        dir.join("plan.toml"),
        format!(
            "version = 1\nname = \"notified\"\n[defaults]\nprovider = \"local\"\n\
             rally_version = \"2.13.0\"\nremote_dir = \"/dev/null/rallyctl\"\n\
             [[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"a\"\ntrack = \"geonames\"\n{extra}"
        ),
    )
    .unwrap();
}

/// A plan's `[notify] url_env` names the variable the webhook URL is read from: a saved plan
/// keeps that name, never the URL; its apply POSTs to the URL the variable holds without any
/// `--notify`, but `RALLYCTL_NOTIFY_URL` wins over it. The variable unset or empty: a warning
/// naming it, nothing sent, the failed apply's exit code.
#[test]
fn an_apply_tells_the_webhook_whose_variable_the_plan_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    failing_local_plan(d, "[notify]\nurl_env = \"TEAM_HOOK\"\n");
    let run = |args: &[&str], team_hook: Option<&str>, notify_url: Option<&str>| {
        let mut cmd = command(d, args);
        cmd.env("RALLYCTL_PRICES", prices());
        let urls = [
            ("TEAM_HOOK", team_hook),
            ("RALLYCTL_NOTIFY_URL", notify_url),
        ];
        run_with_urls(cmd, &urls)
    };
    let hook = Webhook::answering(&[200]);
    let out = run(
        &["plan", "plan.toml", "--out", "saved.plan"],
        Some(&hook.url),
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let saved = std::fs::read_to_string(d.join("saved.plan")).unwrap();
    assert!(
        saved.contains("TEAM_HOOK") && !saved.contains("s3cr3t-t0ken"),
        "{saved}"
    );

    let out = run(&["apply", "saved.plan"], Some(&hook.url), None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let received = hook.received();
    assert_eq!(received.len(), 1, "{}", text(&out));
    let body: serde_json::Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(body["kind"], "apply_failed");
    assert_eq!(body["workspace"], "notified");

    let (named, given) = (Webhook::answering(&[200]), Webhook::answering(&[200]));
    let apply = ["apply", "plan.toml", "--auto-approve"];
    let out = run(&apply, Some(&named.url), Some(&given.url));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(given.received().len(), 1, "{}", text(&out));
    assert!(named.received().is_empty(), "{:?}", named.received());
    // CI expands a secret a fork cannot read to nothing: an empty RALLYCTL_NOTIFY_URL gives no
    // URL, and the plan's variable is used.
    let out = run(&apply, Some(&named.url), Some(""));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(named.received().len(), 1, "{}", text(&out));

    for team_hook in [None, Some("")] {
        let out = run(&apply, team_hook, None);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "warning: the plan's [notify] url_env names `TEAM_HOOK`, which is unset or empty: no webhook is told"
            ),
            "{}",
            text(&out)
        );
    }
    assert_eq!(named.received().len(), 1);
}
