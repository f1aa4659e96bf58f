//! apply and destroy end to end on real parts: moto for EC2 and Instance Connect, OpenSSH sshd
//! per "instance", the real esrally installed by rallyctl's own template, and the Elasticsearch
//! test double. Each test has its own harness (own moto, own subnet), so they run in parallel.

mod s3;
mod support;

use support::context::text;
use support::run::{Run, at, sha256_hex};

#[test]
fn two_suites_complete_in_order_and_a_second_apply_does_nothing() {
    let run = Run::new(3);
    let plan = run.plan(&[
        ("ingest", &[("a", ""), ("b", "")]),
        ("search", &[("c", "")]),
    ]);
    // Secrets only this run knows, to look for everywhere afterwards.
    let aws_secret = format!("aws-secret-{}", uuid::Uuid::new_v4());
    let metrics_password = format!("metrics-password-{}", uuid::Uuid::new_v4());
    let args = ["apply", plan.to_str().unwrap(), "--auto-approve"];
    let out = run.output(
        run.command(&args)
            .env("AWS_SECRET_ACCESS_KEY", &aws_secret)
            .env("RALLYCTL_METRICS_PASSWORD", &metrics_password),
        &args,
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Apply complete: 3 completed, 0 failed."),
        "{stdout}"
    );
    // Priced from the harness's price file (moto has no Price List API): the estimate before,
    // the run's cost after, each instance once; the root volume moto's images name (15 GiB of
    // `standard`) at its GB-month price, by the hour.
    let hourly = 0.107 + 15.0 * 0.055 / 730.0;
    assert!(
        stdout.contains("$0.108/h")
            && stdout.contains("with its root volume, 15 GiB standard at $0.055/GB-month")
            && stdout.contains("machine-hours on 3 machines."),
        "{stdout}"
    );

    let state = run.state();
    let mut instance_ids = Vec::new();
    for address in ["ingest.a", "ingest.b", "search.c"] {
        let r = run.record(address);
        assert_eq!(r.status, rallyctl::state::Status::Completed, "{address}");
        let instance = r.machine.clone().unwrap();
        assert!(
            instance.released_at.is_some(),
            "{address} instance not recorded terminated"
        );
        // Its machine time, from launch to termination, at the price it was launched with.
        let [spent] = &r.spent[..] else {
            panic!("{address}: {:?}", r.spent)
        };
        assert_eq!(
            (spent.from, Some(spent.to), spent.usd_per_hour),
            (instance.launched_at, instance.released_at, Some(hourly))
        );
        instance_ids.push(instance.id.clone());
        // The results are on disk, intact, with Rally's throughput rows.
        let report = r
            .results
            .iter()
            .find(|f| f.path.ends_with("report.csv"))
            .expect("report.csv recorded");
        let bytes = std::fs::read(run.dir.path().join(&report.path)).unwrap();
        assert_eq!(report.sha256, sha256_hex(&bytes));
        let csv = String::from_utf8(bytes).unwrap();
        assert!(csv.starts_with("Metric,Task,Value,Unit"), "{csv}");
        assert!(
            csv.lines().any(|l| l.starts_with("Median Throughput,")),
            "{csv}"
        );
        assert!(
            r.results.iter().any(|f| f.path.ends_with("race.json")),
            "{:?}",
            r.results
        );
        assert!(
            report
                .path
                .starts_with(format!("results/e2e/{}", r.run_id.clone().unwrap()))
        );
    }
    // Suite barrier: search.c started only after both ingest tests finished.
    let c_started = at(&run.record("search.c"), "launching");
    for address in ["ingest.a", "ingest.b"] {
        assert!(
            at(&run.record(address), "completed") <= c_started,
            "{address} finished after search.c began"
        );
    }
    // Nothing left running; every instance got an Instance Connect key before SSH.
    let moto = run.harness.instances();
    assert_eq!(moto.len(), 3);
    for i in &moto {
        assert!(
            matches!(i.state.as_str(), "terminated" | "shutting-down"),
            "{} is {}",
            i.id,
            i.state
        );
        assert_eq!(
            i.tags.get("rallyctl:workspace").map(String::as_str),
            Some("e2e")
        );
        assert_eq!(i.tags.get("team").map(String::as_str), Some("e2e"));
    }
    let pushes = run.harness.key_pushes();
    for id in &instance_ids {
        assert!(
            pushes
                .iter()
                .any(|p| &p.instance_id == id && p.public_key.starts_with("ssh-ed25519 ")),
            "no key push for {id}"
        );
    }

    // Neither secret reached the output, state, results, known_hosts, or the instance's disk.
    let mut places = vec![
        ("stdout".to_owned(), out.stdout.clone()),
        ("stderr".to_owned(), out.stderr.clone()),
    ];
    let run_id = run.record("ingest.a").run_id.unwrap();
    for root in [
        run.dir.path().to_owned(),
        run.harness.remote_dir.join("runs/e2e").join(&run_id),
    ] {
        for file in files_under(&root) {
            places.push((file.display().to_string(), std::fs::read(&file).unwrap()));
        }
    }
    assert!(
        places.len() > 10,
        "too few places searched: {}",
        places.len()
    );
    for (place, bytes) in &places {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains(&aws_secret),
            "the AWS secret key is in {place}"
        );
        assert!(
            !text.contains(&metrics_password),
            "the metrics password is in {place}"
        );
    }

    // The watchdog: shutdown behaviour terminate, and user data that schedules the shutdown.
    let h = &run.harness;
    let (behaviour, user_data) = h.block_on(async {
        let ec2 = h.ec2_client();
        let attribute = |name: aws_sdk_ec2::types::InstanceAttributeName| {
            ec2.describe_instance_attribute()
                .instance_id(&instance_ids[0])
                .attribute(name)
                .send()
        };
        let behaviour =
            attribute(aws_sdk_ec2::types::InstanceAttributeName::InstanceInitiatedShutdownBehavior)
                .await
                .unwrap()
                .instance_initiated_shutdown_behavior()
                .and_then(|v| v.value())
                .map(str::to_owned);
        let user_data = attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .await
            .unwrap()
            .user_data()
            .and_then(|v| v.value())
            .map(str::to_owned);
        (behaviour, user_data)
    });
    assert_eq!(behaviour.as_deref(), Some("terminate"));
    use base64::Engine as _;
    let user_data = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(user_data.expect("user data"))
            .unwrap(),
    )
    .unwrap();
    assert!(user_data.starts_with("#!/bin/bash\n"), "{user_data}");
    assert!(
        user_data.contains("\nshutdown -h +30 "),
        "max_runtime = 30m: {user_data}"
    );

    let launches = run.launches();
    let again = run.rallyctl(&["apply", plan.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stdout).contains("No changes: 3 results already exist"));
    assert_eq!(
        run.launches(),
        launches,
        "the second apply launched an instance"
    );
    assert_eq!(
        run.state().serial,
        state.serial,
        "the second apply wrote state"
    );
}

#[test]
fn a_failing_race_is_reported_with_its_log_and_its_sibling_completes() {
    let run = Run::new(2);
    let plan = run.plan(&[(
        "s",
        &[("good", ""), ("bad", "challenge = \"no-such-challenge\"")],
    )]);
    let out = run.rallyctl(&["apply", plan.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 test failed: s.bad"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("s.bad failed at racing: esrally exited with 64"),
        "{stdout}"
    );

    assert_eq!(
        run.record("s.good").status,
        rallyctl::state::Status::Completed
    );
    match run.record("s.bad").status {
        rallyctl::state::Status::Failed {
            step,
            error,
            log_tail,
            logs,
        } => {
            assert_eq!(step, rallyctl::state::Step::Racing);
            assert!(error.contains("64"), "{error}");
            assert!(
                log_tail.unwrap().contains("no-such-challenge"),
                "the log tail does not show the cause"
            );
            // Its logs came home before the instance was terminated, why beside them.
            let logs = run.dir.path().join(logs.expect("state names the logs"));
            let race_log = std::fs::read_to_string(logs.join("race.log")).unwrap();
            assert!(race_log.contains("no-such-challenge"), "{race_log}");
            assert!(logs.join("failure.json").is_file());
        }
        other => panic!("s.bad is {other:?}"),
    }
    assert!(run.record("s.bad").machine.unwrap().released_at.is_some());
    assert!(
        run.harness.running_instances().is_empty(),
        "an instance was left running"
    );
}

#[test]
fn destroy_terminates_leaked_instances_found_by_tag() {
    let run = Run::new(1);
    let plan = run.plan(&[("s", &[("t", "")])]);
    let h = &run.harness;
    // An instance of this workspace that state does not know, as a crashed apply leaves one.
    let leaked = h.launch_tagged(&[("rallyctl:workspace", "e2e")]);
    let out = run.rallyctl(&["destroy", plan.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{leaked}  (leaked")), "{stdout}");
    let state = h
        .instances()
        .into_iter()
        .find(|i| i.id == leaked)
        .unwrap()
        .state;
    assert_eq!(state, "terminated");
    let again = run.rallyctl(&["destroy", plan.to_str().unwrap(), "--auto-approve"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("Nothing to destroy"));
}

/// With `rally_es.ini` the race sends its metrics to an Elasticsearch metrics store (here a
/// second ES double) whose address comes from the environment; the CSV is still collected, and
/// the metrics-store password never lands in state.
#[test]
fn metrics_reach_an_elasticsearch_metrics_store() {
    // Two instances' worth of ES doubles: the first is raced against, the second stores metrics.
    let run = Run::new(2);
    let store = run.harness.es_addrs[1].clone();
    let (host, port) = store.rsplit_once(':').unwrap();
    let ini = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conditional_install_items/rally_es.ini");
    let plan = run.plan(&[(
        "s",
        &[("t", &format!("rally_config = \"{}\"", ini.display()))],
    )]);
    let args = ["apply", plan.to_str().unwrap(), "--auto-approve"];
    let out = run.output(
        run.command(&args)
            .env("RALLYCTL_METRICS_HOST", host)
            .env("RALLYCTL_METRICS_PORT", port)
            .env("RALLYCTL_METRICS_PASSWORD", "not-checked-by-the-double"),
        &args,
    );
    assert_eq!(out.status.code(), Some(0));
    let docs = run.harness.es_docs_at(&store);
    let count = |prefix: &str| {
        docs.as_object()
            .unwrap()
            .iter()
            .filter(|(index, _)| index.starts_with(prefix))
            .map(|(_, n)| n.as_u64().unwrap())
            .sum::<u64>()
    };
    assert!(
        count("rally-metrics-") > 0,
        "no metric documents reached the store: {docs}"
    );
    assert!(
        count("rally-races-") > 0,
        "no race document reached the store: {docs}"
    );
    let record = run.record("s.t");
    assert!(
        record
            .results
            .iter()
            .any(|f| f.path.ends_with("report.csv"))
    );
    let state = std::fs::read_to_string(run.dir.path().join("state/e2e.state.json")).unwrap();
    assert!(!state.contains("not-checked-by-the-double"));
}

#[test]
fn apply_without_a_terminal_refuses_to_ask_and_launches_nothing() {
    let run = Run::new(1);
    let plan = run.plan(&[("s", &[("t", "")])]);
    let out = run.rallyctl(&["apply", plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --auto-approve"));
    assert_eq!(run.launches(), 0);
}

fn files_under(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Names and parameters holding quotes, `$(...)`, backticks, `;`, a newline and non-ASCII reach
/// EC2 and Rally literally, and nothing in them is run by a shell.
#[test]
fn hostile_names_and_parameters_arrive_literally() {
    let run = Run::new(1);
    // Names may not hold '.', so the marker path has none; it is removed at the end.
    let marker = format!(
        "/tmp/pwn-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let evil = format!("it's \"$(touch {marker})\" `touch {marker}`; touch {marker}\nlast é");
    let marker = std::path::PathBuf::from(marker);
    let param = serde_json::to_string(&evil).unwrap();
    // Names may not hold control characters either (a newline would forge a log line).
    let name = evil.replace('\n', " ");
    let plan = run.plan(&[(
        "s",
        &[(
            name.as_str(),
            &format!("track_params = {{ note = {param} }}"),
        )],
    )]);
    let out = run.rallyctl(&["apply", plan.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!marker.exists(), "a plan value was run by a shell");

    let address = rallyctl::address::Address::new("s", name.clone()).unwrap();
    let record = run.state().tests[&address].clone();
    assert_eq!(record.status, rallyctl::state::Status::Completed);
    let instance = run.harness.instances().into_iter().next().unwrap();
    assert_eq!(instance.tags["rallyctl:test"], address.to_string());
    assert!(instance.tags["Name"].contains(&address.to_string()));

    let race = run.race_json(&record);
    assert_eq!(
        race["user-tags"]["rallyctl_test"],
        address.to_string(),
        "{race}"
    );
    assert_eq!(race["track-params"]["note"], evil, "{race}");
    let _ = std::fs::remove_file(&marker);
}

/// `repetitions` on one instance: one launch, the races back to back each in a run directory
/// of its own, the watchdog scheduled again before the second race (so `max_runtime` bounds
/// each race, not both), and each race a sample in `results`.
#[test]
fn repetitions_race_back_to_back_on_one_instance_with_its_watchdog_rearmed() {
    let run = Run::new(1);
    let plan = run.plan(&[("s", &[("a", "repetitions = 2")])]);
    let plan = plan.to_str().unwrap();
    let out = run.rallyctl(&["apply", plan, "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(run.launches(), 1);
    let r = run.record("s.a");
    assert_eq!(r.status, rallyctl::state::Status::Completed);
    let instance = r.machine.clone().unwrap();
    assert!(instance.released_at.is_some());
    assert_eq!(r.earlier.len(), 1);
    assert_eq!(r.earlier[0].machine, instance.id);
    assert_ne!(Some(r.earlier[0].race_id), r.race_id);
    assert!(instance.run_dir.as_deref().unwrap().ends_with("/1.2"));
    let ip = instance.address.unwrap();
    let watchdog = run.harness.watchdog_calls(&ip);
    assert_eq!(watchdog.len(), 1, "{watchdog:?}");
    assert!(watchdog[0].contains("-h +30 "), "{watchdog:?}");
    // Re-armed, the deadline a reboot schedules the shutdown for moved with it.
    let rearmed: i64 = watchdog[0].split(' ').next().unwrap().parse().unwrap();
    let deadlines = run.harness.watchdog_deadlines(&ip);
    assert_eq!(deadlines.len(), 1, "{deadlines:?}");
    assert!(
        (rearmed + 30 * 60..=rearmed + 30 * 60 + 1).contains(&deadlines[0]),
        "re-armed at {rearmed}, deadline {deadlines:?}"
    );

    let out = run.rallyctl(&["results", plan, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let test = &view["tests"][0];
    assert_eq!(test["repetitions"], 2, "{test}");
    let throughput = &test["tasks"][0]["metrics"]["throughput"];
    assert_eq!(throughput["samples"].as_array().unwrap().len(), 2, "{test}");
}

/// Warm reuse: three tests over two suites launch two instances, the second suite's test on
/// the instance of the first suite's. apply is SIGKILLed while that instance waits between
/// the suites; the next apply hands it on: nothing launched twice, nothing left running.
#[test]
fn a_reused_instance_passes_to_the_next_suite_even_across_a_killed_apply() {
    let run = Run::new(2);
    let reuse = "reuse_instances = true";
    let plan = run.plan(&[
        ("ingest", &[("a", reuse), ("b", reuse)]),
        ("search", &[("c", reuse)]),
    ]);
    let plan = plan.to_str().unwrap();
    let out = run.rallyctl(&["plan", plan]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("`ingest.a` hands its instance on to `search.c`"),
        "{stdout}"
    );
    // One test at a time, so `ingest.b` races while the instance `ingest.a` kept waits.
    let mut first = run.spawn(
        "first",
        &["apply", plan, "--auto-approve", "--parallelism", "1"],
    );
    run.wait_for_status("ingest.a", "completed", std::time::Duration::from_secs(300));
    first.kill().unwrap();
    first.wait().unwrap();
    let kept = run.record("ingest.a").machine.unwrap();
    assert_eq!(
        kept.handover,
        Some(rallyctl::state::Handover::KeptFor(
            "search.c".parse().unwrap()
        ))
    );
    assert!(kept.released_at.is_none());
    assert!(
        run.harness
            .running_instances()
            .iter()
            .any(|i| i.id == kept.id),
        "the kept instance is not running"
    );
    // Something `ingest.a`'s race left running on the kept instance, as Rally's own would: a
    // process that names that race's run directory, and its child that names nothing. Without
    // `--norc`, bash started under sshd reads ~/.bashrc first, which on a loaded machine with
    // pyenv's init in it took over a minute to get to `sleep`.
    let ip = kept.address.clone().unwrap();
    let left = format!("{}/report.csv", kept.run_dir.clone().unwrap());
    let (key, public) = support::generate_key_pair(run.dir.path(), "leftover");
    run.harness.authorize_key(&public);
    let started = run
        .harness
        .ssh_command(&key, &ip)
        .arg(format!(
            "setsid nohup bash --norc -c 'sleep 600; :' {left} >/dev/null 2>&1 </dev/null &"
        ))
        .status()
        .unwrap();
    assert!(started.success());
    let leftovers = || {
        run.harness
            .instance_processes(&ip)
            .into_iter()
            .filter(|(_, cmd)| cmd.contains(&left) || cmd.trim() == "sleep 600")
            .count()
    };
    // A bound on the harness, not a figure: a loaded machine has taken over 10 s to show both.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while leftovers() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(leftovers(), 2, "{:?}", run.harness.instance_processes(&ip));

    let mut second = run.spawn("second", &["apply", plan, "--auto-approve"]);
    // Booting on the taken instance stops what the previous test left, before installing.
    run.wait_for_status(
        "search.c",
        "installing",
        std::time::Duration::from_secs(300),
    );
    assert_eq!(
        leftovers(),
        0,
        "a process of ingest.a's race survived into search.c's: {:?}",
        run.harness.instance_processes(&ip)
    );
    assert_eq!(second.wait().unwrap().code(), Some(0));
    let (stdout, _) = run.printed("second");
    assert!(
        stdout.contains(&format!(
            "`search.c` takes instance {}, kept for it by `ingest.a`",
            kept.id
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "search.c: stopped what ingest.a left on {}",
            kept.id
        )),
        "{stdout}"
    );
    assert_eq!(run.launches(), 2, "instances launched for three tests");
    let c = run.record("search.c");
    assert_eq!(c.status, rallyctl::state::Status::Completed);
    let machine = c.machine.unwrap();
    assert_eq!(machine.id, kept.id);
    assert_eq!(machine.taken.unwrap().from.to_string(), "ingest.a");
    assert!(c.results.iter().any(|f| f.path.ends_with("report.csv")));
    assert_eq!(
        run.record("ingest.b").status,
        rallyctl::state::Status::Completed
    );
    assert!(
        run.harness.running_instances().is_empty(),
        "an instance was left running"
    );
}

/// Warm reuse, the steady way: one instance for two suites' tests is driven over the one
/// connection its first key opened (the taker's steps come long after that key went stale),
/// and the taker does not run the install script its giver ran there.
#[test]
fn a_kept_instance_serves_its_taker_over_one_connection_without_installing_again() {
    let run = Run::new(1);
    let reuse = "reuse_instances = true";
    let plan = run.plan(&[("ingest", &[("a", reuse)]), ("search", &[("c", reuse)])]);
    let out = run.rallyctl(&["apply", plan.to_str().unwrap(), "--auto-approve"]);
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(0), "{printed}");
    assert_eq!(run.launches(), 1, "{printed}");
    let c = run.record("search.c").machine.unwrap();
    assert_eq!(
        c.installed,
        run.record("ingest.a").machine.unwrap().installed
    );
    assert!(
        printed.contains(&format!(
            "search.c: rallyctl: this install.sh ran on {} already: nothing to install",
            c.id
        )),
        "{printed}"
    );
    let pushes = run.harness.key_pushes();
    assert_eq!(
        pushes.iter().filter(|p| p.instance_id == c.id).count(),
        1,
        "{pushes:?}"
    );
}
