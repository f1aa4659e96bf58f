//! EC2 API faults through a fault-injecting HTTP proxy (tests/support/fault_proxy.py) in front of
//! the harness's moto: throttling (`RequestLimitExceeded`) and 5xx answers are retried with
//! backoff and jitter and the test goes on; `InsufficientInstanceCapacity` that never clears is
//! retried within a bound, then the test fails cleanly at `launching`.

mod support;

use std::time::Instant;

use rallyctl::state::{Status, Step};
use support::fault_proxy::FaultProxy;
use support::run::Run;

/// `apply --auto-approve` of a one-test plan with rallyctl's AWS calls going through `proxy`.
fn apply_through(run: &Run, proxy: &FaultProxy) -> std::process::Output {
    let plan = run.plan(&[("s", &[("t", "")])]);
    let args = ["apply", plan.to_str().unwrap(), "--auto-approve"];
    let mut cmd = run.command(&args);
    cmd.env("AWS_ENDPOINT_URL", &proxy.url);
    let started = Instant::now();
    let out = run.output(&mut cmd, &args);
    eprintln!("apply took {:?}", started.elapsed());
    out
}

#[test]
fn throttling_and_5xx_are_retried_and_the_test_completes() {
    let run = Run::new(1);
    let proxy = FaultProxy::start(
        &run.harness.moto_url,
        &[
            "RunInstances:RequestLimitExceeded:2",
            "DescribeInstances:500:3",
        ],
        run.dir.path(),
    );

    let out = apply_through(&run, &proxy);
    assert_eq!(out.status.code(), Some(0), "apply failed");
    let record = run.record("s.t");
    assert_eq!(record.status, Status::Completed, "{record:?}");

    // The faults really happened, and rallyctl went on past them.
    assert_eq!(proxy.injected("RunInstances"), 2);
    assert_eq!(proxy.injected("DescribeInstances"), 3);
    assert_eq!(proxy.forwarded("RunInstances"), 1);
    assert!(proxy.forwarded("DescribeInstances") >= 1);
    assert!(
        proxy.forwarded("SendSSHPublicKey") >= 1,
        "EC2 Instance Connect did not go through the proxy"
    );
    // Retrying the throttled RunInstances launched one instance, and it is gone.
    assert_eq!(run.launches(), 1);
    assert_eq!(run.harness.instances().len(), 1);
    let running = run.harness.running_instances();
    assert!(running.is_empty(), "left running: {running:?}");
}

#[test]
fn insufficient_capacity_is_retried_within_a_bound_then_the_test_fails() {
    let run = Run::new(1);
    let proxy = FaultProxy::start(
        &run.harness.moto_url,
        &["RunInstances:InsufficientInstanceCapacity:always"],
        run.dir.path(),
    );

    let out = apply_through(&run, &proxy);
    assert_eq!(out.status.code(), Some(1), "apply did not fail cleanly");
    match run.record("s.t").status {
        Status::Failed { step, error, .. } => {
            assert_eq!(step, Step::Launching);
            assert!(error.contains("InsufficientInstanceCapacity"), "{error}");
            assert!(error.contains("attempts"), "{error}");
        }
        other => panic!("s.t is {other:?}, not failed at launching"),
    }

    // Retried, within rallyctl's bound, and no call ever reached moto.
    let injected = proxy.injected("RunInstances");
    assert_eq!(
        injected,
        u64::from(rallyctl::provider::aws::CAPACITY_ATTEMPTS),
        "RunInstances attempts"
    );
    assert_eq!(proxy.forwarded("RunInstances"), 0);
    assert_eq!(run.launches(), 0);
    let instances = run.harness.instances();
    assert!(instances.is_empty(), "instances exist: {instances:?}");
}
