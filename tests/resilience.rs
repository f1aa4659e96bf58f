//! Never lose a result, never leak an instance: apply killed at each step and run again,
//! Ctrl-C once and twice, two applies at once, a crash between launch and record. All on the
//! end-to-end harness (moto, sshd per instance, real esrally, the ES double).

mod support;

use std::time::Duration;

use rallyctl::state::{Status, Step};
use support::run::{Run, record_of, sha256_hex};

const STEP_TIMEOUT: Duration = Duration::from_secs(300);

fn signal(child: &std::process::Child, name: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} failed");
}

/// Kills apply with SIGKILL once state records `step`, applies again, and checks that the
/// test finished on the same instance and attempt, launched nothing more, and left nothing
/// running.
fn resume_after_sigkill_at(step: &str) {
    let run = Run::new(1);
    let plan = run.plan(&[("s", &[("t", "")])]);
    let plan = plan.to_str().unwrap();
    // `terminating` lasts only as long as TerminateInstances (milliseconds): the first apply's
    // AWS calls go through a proxy that holds that call unanswered, so apply is killed inside
    // it, before EC2 ever heard of it.
    let proxy = (step == "terminating").then(|| run.proxy(&["TerminateInstances:hang:1"]));
    let env: Vec<(&str, &str)> = proxy
        .iter()
        .map(|p| ("AWS_ENDPOINT_URL", p.url.as_str()))
        .collect();
    let mut first = run.spawn_with_env("first", &["apply", plan, "--auto-approve"], &env);
    run.wait_for_status("s.t", step, STEP_TIMEOUT);
    let mut race_pid = None;
    if step == "racing" {
        // Kill once Rally really runs on the instance (the harness's instances share this
        // filesystem), so resuming must find that race rather than start one.
        let pid_file = run.wait_for_race("s.t", STEP_TIMEOUT);
        run.harness
            .wait_for_es_request(&run.harness.es_addrs[0], STEP_TIMEOUT);
        race_pid = Some((
            pid_file.clone(),
            std::fs::read_to_string(&pid_file).unwrap(),
        ));
    }
    if let Some(proxy) = &proxy {
        proxy.wait_held("TerminateInstances", 1, Duration::from_secs(30));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let killed_at = jiff::Timestamp::now();
    let before = run.record("s.t");
    assert_eq!(
        before.status.label(),
        step,
        "apply moved on before SIGKILL landed"
    );
    if let Some(proxy) = &proxy {
        // Killed inside TerminateInstances: the call never reached EC2, the instance runs on.
        assert_eq!(proxy.injected("TerminateInstances"), 1);
        assert_eq!(proxy.forwarded("TerminateInstances"), 0);
        let id = &before.machine.as_ref().expect("instance recorded").id;
        let running = run.harness.running_instances();
        assert!(
            running.iter().any(|i| &i.id == id),
            "{id} is not running at the kill: {running:?}"
        );
    }

    let out = run.rallyctl(&["apply", plan, "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("s.t will be resumed at {step}")),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("took over the lock"),
        "the dead run's lock was not reported"
    );

    let after = run.record("s.t");
    assert_eq!(after.status, Status::Completed);
    assert_eq!(after.attempt, before.attempt);
    assert_eq!(after.race_id, before.race_id);
    if let Some(instance) = &before.machine {
        assert_eq!(
            after.machine.as_ref().unwrap().id,
            instance.id,
            "another instance was used"
        );
    }
    assert_eq!(run.launches(), 1, "a second instance was launched");
    assert!(
        run.harness.running_instances().is_empty(),
        "an instance was left running"
    );
    // Only the second apply reached EC2 with TerminateInstances (the first was killed before
    // it, or, at terminating, while the proxy held it).
    let terminations = run
        .harness
        .recorded_calls()
        .iter()
        .filter(|c| c.action == "TerminateInstances" && !c.from_harness)
        .count();
    assert_eq!(terminations, 1, "TerminateInstances calls that reached EC2");
    assert!(after.results.iter().any(|f| f.path.ends_with("report.csv")));
    for file in &after.results {
        let bytes = std::fs::read(run.dir.path().join(&file.path)).unwrap();
        assert_eq!(file.sha256, sha256_hex(&bytes), "{}", file.path.display());
    }
    if step == "racing" {
        // Re-attached, not restarted: the race Rally reported began before the kill.
        let race = run.race_json(&after);
        assert_eq!(race["race-id"], after.race_id.unwrap().to_string());
        // Rally writes UTC without an offset; give it one to read it as an instant.
        let stamp = format!("{}+0000", race["race-timestamp"].as_str().unwrap());
        let started = jiff::Timestamp::strptime("%Y%m%dT%H%M%SZ%z", &stamp).unwrap();
        let (pid_file, pid) = race_pid.unwrap();
        assert_eq!(
            std::fs::read_to_string(pid_file).unwrap(),
            pid,
            "the race was started again"
        );
        assert!(
            started < killed_at,
            "the race started at {started}, after the kill at {killed_at}"
        );
    }
}

#[test]
fn resume_after_sigkill_while_booting() {
    resume_after_sigkill_at("booting");
}

#[test]
fn resume_after_sigkill_while_installing() {
    resume_after_sigkill_at("installing");
}

#[test]
fn resume_after_sigkill_while_racing() {
    resume_after_sigkill_at("racing");
}

#[test]
fn resume_after_sigkill_while_collecting() {
    resume_after_sigkill_at("collecting");
}

#[test]
fn resume_after_sigkill_while_terminating() {
    resume_after_sigkill_at("terminating");
}

/// A crash between RunInstances and recording its answer leaves state at `launching` with no
/// instance, while EC2 has one with this attempt's tags: apply adopts it instead of launching.
#[test]
fn an_instance_launched_but_not_recorded_is_adopted() {
    let run = Run::new(1);
    let plan_path = run.plan(&[("s", &[("t", "")])]);
    let plan = rallyctl::plan::Plan::load(&plan_path).unwrap();
    let test = plan.tests().next().unwrap();
    let mut state = rallyctl::state::State::new("e2e");
    let launching = Status::InProgress {
        step: Step::Launching,
    };
    let record = record_of(test, launching, None);
    state.tests.insert(test.address.clone(), record);
    rallyctl::state::save(&run.dir.path().join("state/e2e.state.json"), &mut state).unwrap();

    let h = &run.harness;
    let lineage = state.lineage.to_string();
    let orphan = h.launch_tagged(&[
        ("rallyctl:workspace", "e2e"),
        ("rallyctl:lineage", &lineage),
        ("rallyctl:test", "s.t"),
        ("rallyctl:attempt", "1"),
    ]);
    let out = run.rallyctl(&["apply", plan_path.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("adopting {orphan}")));
    let after = run.record("s.t");
    assert_eq!(after.status, Status::Completed);
    assert_eq!(after.machine.unwrap().id, orphan);
    assert_eq!(
        run.launches(),
        1,
        "rallyctl launched an instance beside the orphan"
    );
    assert!(h.running_instances().is_empty());
}

/// Ctrl-C once: no new test starts, the running one stops at a recorded step, apply names what
/// still runs and how to clean it up, and exits 130. A second apply meanwhile is refused by the
/// lock; destroy then leaves nothing running.
#[test]
fn ctrl_c_once_stops_cleanly_and_names_what_still_runs() {
    let run = Run::new(2);
    let plan = run.plan(&[("first", &[("t", "")]), ("second", &[("u", "")])]);
    let plan = plan.to_str().unwrap();
    let mut apply = run.spawn("apply", &["apply", plan, "--auto-approve"]);
    run.wait_for_status("first.t", "racing", STEP_TIMEOUT);

    let second = run.rallyctl(&["apply", plan, "--auto-approve"]);
    assert_eq!(second.status.code(), Some(1));
    let refused = String::from_utf8_lossy(&second.stderr);
    assert!(
        refused.contains(&format!(
            "locked by `rallyctl apply {plan}` (pid {}",
            apply.id()
        )),
        "{refused}"
    );

    signal(&apply, "INT");
    let status = apply.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let (stdout, stderr) = run.printed("apply");
    assert!(
        stderr.contains("Interrupted: no new tests will start"),
        "{stderr}"
    );
    assert!(
        stdout.contains("Still running (and costing money):"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("rallyctl destroy {plan}")),
        "{stdout}"
    );
    let state = run.state();
    assert_eq!(
        run.record("first.t").status,
        Status::InProgress { step: Step::Racing }
    );
    assert!(
        !state.tests.contains_key(&"second.u".parse().unwrap()),
        "a new test started after Ctrl-C"
    );
    assert_eq!(run.harness.running_instances().len(), 1);

    let out = run.rallyctl(&["destroy", plan, "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(run.harness.running_instances().is_empty());
    let (_, error) = run.failure("first.t");
    assert!(
        error.contains("terminated by `rallyctl destroy`"),
        "{error}"
    );
}

/// Ctrl-C twice: apply exits at once, and the state it leaves is readable.
#[test]
fn ctrl_c_twice_exits_at_once_with_state_readable() {
    let run = Run::new(1);
    let plan = run.plan(&[("s", &[("t", "")])]);
    let plan = plan.to_str().unwrap();
    let mut apply = run.spawn("apply", &["apply", plan, "--auto-approve"]);
    run.wait_for_status("s.t", "installing", STEP_TIMEOUT);
    signal(&apply, "INT");
    std::thread::sleep(Duration::from_millis(200));
    signal(&apply, "INT");
    let started = std::time::Instant::now();
    let status = apply.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the second Ctrl-C did not exit at once"
    );
    let record = run.record("s.t");
    assert!(
        matches!(record.status, Status::InProgress { .. }),
        "{:?}",
        record.status
    );
    let out = run.rallyctl(&["destroy", plan, "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(run.harness.running_instances().is_empty());
}

/// SSH connections dropped mid-race: the race goes on, rallyctl reconnects and collects it.
#[test]
fn dropped_ssh_connections_mid_race_are_reattached() {
    let run = Run::new(1);
    let plan = run.plan(&[("s", &[("t", "")])]);
    let plan = plan.to_str().unwrap();
    let mut apply = run.spawn("apply", &["apply", plan, "--auto-approve"]);
    let pid_file = run.wait_for_race("s.t", STEP_TIMEOUT);
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let ip = run.record("s.t").machine.unwrap().address.unwrap();
    let mut dropped = 0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(4));
        dropped += run.harness.drop_ssh_connections(&ip);
    }
    assert!(dropped > 0, "no SSH connection was open to drop");
    assert_eq!(
        apply.wait().unwrap().code(),
        Some(0),
        "{:?}",
        run.printed("apply")
    );
    assert_eq!(run.record("s.t").status, Status::Completed);
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        pid,
        "the race was started again"
    );
    assert!(run.harness.running_instances().is_empty());
}

/// An instance terminated behind rallyctl's back mid-race: that test fails with the reason,
/// its sibling completes, and nothing is left running.
#[test]
fn an_instance_terminated_outside_rallyctl_fails_only_its_test() {
    let run = Run::new(2);
    let plan = run.plan(&[("s", &[("victim", ""), ("sibling", "")])]);
    let plan = plan.to_str().unwrap();
    let mut apply = run.spawn("apply", &["apply", plan, "--auto-approve"]);
    run.wait_for_race("s.victim", STEP_TIMEOUT);
    let victim = run.record("s.victim").machine.unwrap().id;
    let h = &run.harness;
    h.block_on(async {
        h.ec2_client()
            .terminate_instances()
            .instance_ids(&victim)
            .send()
            .await
            .unwrap()
    });
    assert_eq!(apply.wait().unwrap().code(), Some(1));
    let (stdout, _) = run.printed("apply");
    assert!(stdout.contains("s.victim failed at racing"), "{stdout}");
    let (step, error) = run.failure("s.victim");
    assert_eq!(step, Step::Racing);
    assert!(
        error.contains(&format!(
            "instance {victim} was terminated outside rallyctl"
        )),
        "{error}"
    );
    assert_eq!(run.record("s.sibling").status, Status::Completed);
    assert!(h.running_instances().is_empty());
}

/// An sshd that refuses connections for the first 90 s after boot is waited out, not failed.
#[test]
fn an_sshd_refusing_for_90_seconds_after_boot_is_waited_out() {
    let run = Run::new(1);
    let ip = run.harness.instance_ips[0].clone();
    run.harness.refuse_ssh_for(&ip, Duration::from_secs(90));
    let plan = run.plan(&[("s", &[("t", "")])]);
    let out = run.rallyctl(&["apply", plan.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0));
    let record = run.record("s.t");
    assert_eq!(record.status, Status::Completed);
    assert_eq!(
        record.machine.unwrap().address.as_deref(),
        Some(ip.as_str())
    );
    // The refusal really was in the way: booting lasted until sshd let connections in.
    let booting = support::run::at(&run.record("s.t"), "booting");
    let installing = support::run::at(&run.record("s.t"), "installing");
    let waited = installing.duration_since(booting).as_secs();
    assert!(
        waited >= 80,
        "booting took only {waited} s, so sshd never refused"
    );
}
