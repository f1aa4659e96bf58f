//! EC2 API faults through a fault-injecting HTTP proxy (tests/support/fault_proxy.py) in front of
//! the harness's moto: throttling (`RequestLimitExceeded`) and 5xx answers are retried with
//! backoff and jitter and the test goes on; `InsufficientInstanceCapacity` that never clears is
//! retried within a bound, then the test fails cleanly at `launching`.

mod support;

use std::time::Instant;

use rallyctl::state::{Status, Step};
use support::context::text;
use support::fault_proxy::FaultProxy;
use support::run::{Run, record_of};

/// `apply --auto-approve` of a one-test plan with rallyctl's AWS calls going through `proxy`.
fn apply_through(run: &Run, proxy: &FaultProxy) -> std::process::Output {
    let plan = run.plan(&[("s", &[("t", "")])]);
    let args = ["apply", plan.to_str().unwrap(), "--auto-approve"];
    let started = Instant::now();
    let out = run.through(proxy, &args);
    eprintln!("apply took {:?}", started.elapsed());
    out
}

#[test]
fn throttling_and_5xx_are_retried_and_the_test_completes() {
    let run = Run::new(1);
    let proxy = run.proxy(&[
        "RunInstances:RequestLimitExceeded:2",
        "DescribeInstances:500:3",
    ]);

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
    let proxy = run.proxy(&["RunInstances:InsufficientInstanceCapacity:always"]);

    let out = apply_through(&run, &proxy);
    assert_eq!(out.status.code(), Some(1), "apply did not fail cleanly");
    let (step, error) = run.failure("s.t");
    assert_eq!(step, Step::Launching);
    assert!(error.contains("InsufficientInstanceCapacity"), "{error}");
    assert!(error.contains("attempts"), "{error}");

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

/// EC2 answers for a while after RunInstances that the new instance does not exist: rallyctl
/// waits for it, and the test completes.
#[test]
fn a_new_instance_ec2_does_not_show_yet_is_waited_for() {
    let run = Run::new(1);
    let proxy = run.proxy_with(&[], &["--young-not-found", "6"]);
    let out = apply_through(&run, &proxy);
    assert_eq!(out.status.code(), Some(0), "apply failed");
    assert_eq!(run.record("s.t").status, Status::Completed);
    assert!(
        proxy.injected("DescribeInstances") >= 1,
        "EC2 never hid the new instance: the test proved nothing"
    );
    assert_eq!(run.launches(), 1);
    assert!(run.harness.running_instances().is_empty());
}

/// Writes the state of an apply that died last night while the plan's tests booted, the i-th
/// test on instance `ids[i]`; returns the state's path.
fn stopped_while_booting(
    run: &Run,
    plan_path: &std::path::Path,
    ids: &[&str],
) -> std::path::PathBuf {
    let plan = rallyctl::plan::Plan::load(plan_path).unwrap();
    let mut state = rallyctl::state::State::new("e2e");
    let yesterday = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(14);
    for (test, id) in plan.tests().zip(ids) {
        let mut machine =
            rallyctl::state::Machine::acquired(rallyctl::plan::ProviderKind::Aws, id.to_string());
        machine.region = Some(run.harness.region.clone());
        machine.launched_at = yesterday;
        let booting = Status::InProgress {
            step: Step::Booting,
        };
        state.tests.insert(
            test.address.clone(),
            record_of(test, booting, Some(machine)),
        );
    }
    let state_path = run.dir.path().join("state/e2e.state.json");
    rallyctl::state::save(&state_path, &mut state).unwrap();
    state_path
}

/// Instance Connect refuses keys for an instance that does not read running yet: refusals are
/// retried while it boots and the test completes; past the boot wait the test fails saying
/// what to check.
#[test]
fn instance_connect_refusals_are_retried_while_booting_then_explained() {
    let run = Run::new(2);
    let proxy = run.proxy(&["SendSSHPublicKey:EC2InstanceStateInvalidException:3"]);
    let out = apply_through(&run, &proxy);
    assert_eq!(out.status.code(), Some(0), "apply failed");
    assert_eq!(run.record("s.t").status, Status::Completed);
    assert_eq!(proxy.injected("SendSSHPublicKey"), 3);
    drop(proxy);

    // An instance launched last night that Instance Connect refuses is past its boot wait.
    let plan_path = run.plan(&[("later", &[("v", "")])]);
    let old = run.harness.launch_tagged(&[("night", "before")]);
    stopped_while_booting(&run, &plan_path, &[&old]);
    let proxy = run.proxy(&["SendSSHPublicKey:EC2InstanceStateInvalidException:always"]);
    let args = ["apply", plan_path.to_str().unwrap(), "--auto-approve"];
    let out = run.through(&proxy, &args);
    assert_eq!(out.status.code(), Some(1));
    let (step, error) = run.failure("later.v");
    assert_eq!(step, Step::Booting);
    for part in [
        old.as_str(),
        "EC2InstanceStateInvalidException",
        "security group",
    ] {
        assert!(error.contains(part), "{part}: {error}");
    }
    assert_eq!(
        proxy.injected("SendSSHPublicKey"),
        1,
        "retried past the boot wait"
    );
    assert!(run.harness.running_instances().is_empty());
}

/// A resume the morning after: state names an instance EC2 has purged since (terminated, then
/// forgotten), beside one still running. The purged id fails nothing else: apply fails that
/// test with why, in bounded time; destroy exits 0, records the purged one as gone and
/// terminates the other.
#[test]
fn a_purged_instance_in_state_neither_hangs_apply_nor_breaks_destroy() {
    let run = Run::new(2);
    let plan_path = run.plan(&[("s", &[("t", ""), ("u", "")])]);
    let h = &run.harness;
    let (purged, live) = (
        h.launch_tagged(&[("night", "before")]),
        h.launch_tagged(&[("night", "before")]),
    );
    h.block_on(
        h.ec2_client()
            .terminate_instances()
            .instance_ids(&purged)
            .send(),
    )
    .unwrap();
    let state_path = stopped_while_booting(&run, &plan_path, &[&purged, &live]);
    let proxy = run.proxy(&[]);
    proxy.purge(&[&purged]);

    // Apply with only the purged test to resume: it fails with why, and apply ends.
    let out = run.through(
        &proxy,
        &[
            "apply",
            plan_path.to_str().unwrap(),
            "--auto-approve",
            "--target",
            "s.t",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "the purged test did not fail");
    let (step, error) = run.failure("s.t");
    assert_eq!(step, Step::Booting);
    assert!(error.contains("no longer known to EC2"), "{error}");
    assert!(run.record("s.t").live_machine().is_none());

    // Destroy: the purged instance no longer counts, the live one is terminated.
    let out = run.through(
        &proxy,
        &["destroy", plan_path.to_str().unwrap(), "--auto-approve"],
    );
    assert_eq!(out.status.code(), Some(0), "destroy failed");
    assert!(run.record("s.u").live_machine().is_none());
    let running = h.running_instances();
    assert!(running.is_empty(), "left running: {running:?}");
    assert!(
        proxy.injected("TerminateInstances") + proxy.injected("DescribeInstances") >= 1,
        "EC2 never said it did not know the purged instance: the test proved nothing"
    );

    // The morning-after case for destroy alone: state still naming the purged instance.
    let mut again = rallyctl::state::load(&state_path).unwrap().unwrap();
    let record = again.tests.get_mut(&"s.t".parse().unwrap()).unwrap();
    record.machine.as_mut().unwrap().released_at = None;
    rallyctl::state::save(&state_path, &mut again).unwrap();
    let out = run.through(
        &proxy,
        &["destroy", plan_path.to_str().unwrap(), "--auto-approve"],
    );
    assert_eq!(out.status.code(), Some(0), "destroy failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&purged) && stdout.contains("no longer known to EC2"),
        "{stdout}"
    );
    assert!(run.record("s.t").live_machine().is_none());
}

/// A subnet of the harness's VPC in another zone than the harness's own, where no instance of
/// the harness can run: launches there are for the fault proxy to refuse.
fn second_subnet(h: &support::Harness) -> String {
    let other_zone = format!("{}b", h.region);
    assert_ne!(other_zone, h.zone());
    let cidr = if h.subnet_cidr == "127.0.250.0/24" {
        "127.0.251.0/24"
    } else {
        "127.0.250.0/24"
    };
    h.block_on(
        h.ec2_client()
            .create_subnet()
            .vpc_id(&h.vpc_id)
            .cidr_block(cidr)
            .availability_zone(other_zone)
            .send(),
    )
    .unwrap()
    .subnet()
    .and_then(|s| s.subnet_id())
    .unwrap()
    .to_owned()
}

/// An instance type no zone of the test's subnets offers (`Unsupported`) fails the test at
/// once, naming each subnet: every subnet is tried, but waiting would not help.
#[test]
fn an_instance_type_no_subnet_offers_fails_at_once_naming_each_subnet() {
    let run = Run::new(1);
    let h = &run.harness;
    let other = second_subnet(h);
    let proxy = run.proxy(&["RunInstances:Unsupported:always"]);
    let extra = format!("subnet_ids = [\"{other}\", \"{}\"]", h.subnet_id);
    let plan = run.plan(&[("s", &[("t", &extra)])]);
    let args = ["apply", plan.to_str().unwrap(), "--auto-approve"];
    let out = run.through(&proxy, &args);
    assert_eq!(out.status.code(), Some(1));
    let (step, error) = run.failure("s.t");
    assert_eq!(step, Step::Launching);
    for part in [other.as_str(), h.subnet_id.as_str(), "Unsupported"] {
        assert!(error.contains(part), "{part}: {error}");
    }
    assert!(!error.contains("gave up after"), "{error}");
    assert_eq!(
        proxy.injected("RunInstances"),
        2,
        "one round over both subnets"
    );
    assert_eq!(run.launches(), 0);
}

/// Capacity is per Availability Zone: with `subnet_ids`, a launch EC2 cannot place in the first
/// subnet's zone goes to the next subnet, and state records where the instance ran.
#[test]
fn a_launch_short_of_capacity_in_one_zone_tries_the_next_subnet() {
    let run = Run::new(1);
    let h = &run.harness;
    let full = second_subnet(h);
    let proxy = run.proxy(&[&format!(
        "RunInstances[SubnetId={full}]:InsufficientInstanceCapacity:always"
    )]);
    let extra = format!("subnet_ids = [\"{full}\", \"{}\"]", h.subnet_id);
    let plan = run.plan(&[("s", &[("t", &extra)])]);
    let args = ["apply", plan.to_str().unwrap(), "--auto-approve"];
    let out = run.through(&proxy, &args);
    assert_eq!(out.status.code(), Some(0), "apply failed");
    let record = run.record("s.t");
    assert_eq!(record.status, Status::Completed);
    assert_eq!(
        proxy.injected("RunInstances"),
        1,
        "the full zone was not tried first"
    );
    assert_eq!(proxy.forwarded("RunInstances"), 1);
    let machine = record.machine.unwrap();
    assert_eq!(machine.subnet.as_deref(), Some(h.subnet_id.as_str()));
    assert!(machine.zone.is_some_and(|z| z.starts_with(&h.region)));
    assert!(h.running_instances().is_empty());
}

/// `plan` checks what the plan names against the account before anything is launched, as
/// Terraform refreshes: a missing AMI, subnet or security group, an instance type the zone
/// does not offer, `connect = "public_ip"` on a subnet without public addresses. Each is
/// reported at the plan file's line and column; `apply` refuses the same plan without
/// launching; `--refresh=false` skips the check.
#[test]
fn plan_checks_the_plan_against_the_account_before_anything_is_launched() {
    let run = Run::new(1);
    let missing = "0123456789abcdef0";
    let plan = run.plan(&[(
        "s",
        &[
            ("fine", ""),
            ("ami", &format!("ami = \"ami-{missing}\"")),
            ("subnet", &format!("subnet_id = \"subnet-{missing}\"")),
            ("group", &format!("security_group_ids = [\"sg-{missing}\"]")),
            ("type", "instance_type = \"x9.huge\""),
            ("public", "connect = \"public_ip\""),
        ],
    )]);
    let plan = plan.to_str().unwrap();
    let text = std::fs::read_to_string(plan).unwrap();
    let line_of = |needle: &str| {
        1 + text
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in the plan"))
    };

    let out = run.rallyctl(&["plan", plan]);
    assert_eq!(out.status.code(), Some(1), "the account check passed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (needle, field, message) in [
        (
            "ami = \"ami-0123",
            "suite[0].test[1].ami",
            "does not exist in",
        ),
        (
            "subnet_id = \"subnet-0123",
            "suite[0].test[2].subnet_id",
            "does not exist in",
        ),
        (
            "sg-0123",
            "suite[0].test[3].security_group_ids[0]",
            "does not exist in",
        ),
        (
            "x9.huge",
            "suite[0].test[4].instance_type",
            "is not offered in",
        ),
        (
            "subnet_id = \"subnet",
            "defaults.subnet_id",
            "gives instances no public address",
        ),
    ] {
        let at = format!("e2e.toml:{}:", line_of(needle));
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(&at) && l.contains(field) && l.contains(message)),
            "{field}: {message} at {at}:\n{stderr}"
        );
    }
    assert_eq!(stderr.matches("e2e.toml:").count(), 5, "{stderr}");

    let out = run.rallyctl(&["plan", plan, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], false);
    assert_eq!(json["diagnostics"].as_array().unwrap().len(), 5);

    let out = run.rallyctl(&["apply", plan, "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        run.launches(),
        0,
        "apply launched despite the account check"
    );
    assert!(!run.dir.path().join("state").exists());

    let out = run.rallyctl(&["plan", plan, "--refresh=false"]);
    assert_eq!(out.status.code(), Some(0), "--refresh=false still checked");
}

/// `plan` of `plan` with rallyctl's AWS calls going through `proxy`.
fn plan_through(run: &Run, proxy: &FaultProxy, plan: &std::path::Path) -> std::process::Output {
    run.through(proxy, &["plan", plan.to_str().unwrap()])
}

/// The lines of `stderr` that place a problem in the plan file, with what differs per run
/// (ids, the run's directory) written as placeholders, for a snapshot.
fn placed(run: &Run, stderr: &[u8]) -> String {
    let h = &run.harness;
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains("e2e.toml:"))
        .map(|l| {
            l.replace(run.dir.path().to_str().unwrap(), "[dir]")
                .replace(&h.ami, "[ami]")
                .replace(&h.subnet_id, "[subnet]")
                .replace(&h.region, "[region]")
                .replace(&h.security_group_id, "[sg]")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Before anything is paid for, `plan` makes each distinct launch as a dry run (RunInstances
/// with `DryRun`): two tests that launch alike are one dry run; a launch this identity may not
/// make is reported at the AMI's line with the reason decoded through STS, or, where the
/// identity may not decode it either, with the command that does.
#[test]
fn plan_dry_runs_each_launch_and_says_why_ec2_would_refuse_it() {
    let run = Run::new(1);
    let plan = run.plan(&[("s", &[("a", ""), ("b", "")])]);

    let allowed = run.proxy(&[]);
    let out = plan_through(&run, &allowed, &plan);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a launch moto takes was refused"
    );
    assert_eq!(
        allowed.forwarded("RunInstances/DryRun"),
        1,
        "not one dry run for the two alike launches"
    );
    assert_eq!(run.launches(), 0, "the dry run launched");
    drop(allowed);

    let refused = run.proxy_with(
        &["RunInstances/DryRun:UnauthorizedOperation:always"],
        &["--decoded", &refusal("ec2:RunInstances", "instance/*")],
    );
    let out = plan_through(&run, &refused, &plan);
    assert_eq!(out.status.code(), Some(1), "the refused launch passed");
    assert_eq!(refused.injected("RunInstances/DryRun"), 1);
    assert_eq!(refused.injected("DecodeAuthorizationMessage"), 1);
    insta::assert_snapshot!("dry_run_refused_decoded", placed(&run, &out.stderr));
    drop(refused);

    // The same identity may not decode the reason either (moto has no DecodeAuthorizationMessage).
    let undecoded = run.proxy(&["RunInstances/DryRun:UnauthorizedOperation:always"]);
    let out = plan_through(&run, &undecoded, &plan);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("dry_run_refused_encoded", placed(&run, &out.stderr));

    let args = ["apply", plan.to_str().unwrap(), "--auto-approve"];
    assert_eq!(run.through(&undecoded, &args).status.code(), Some(1));
    assert_eq!(run.launches(), 0, "apply launched a refused launch");
    drop(undecoded);

    // A parameter EC2 refuses is said as EC2 says it.
    let invalid = run.proxy(&["RunInstances/DryRun:InvalidParameterCombination:always"]);
    let out = plan_through(&run, &invalid, &plan);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("dry_run_refused_parameter", placed(&run, &out.stderr));
}

/// STS's decoded authorization message for a user whom no policy allows `action` on
/// `resource` (in eu-west-1 of account 123456789012).
fn refusal(action: &str, resource: &str) -> String {
    serde_json::json!({
        "allowed": false,
        "explicitDeny": false,
        "matchedStatements": {"items": []},
        "failures": {"items": []},
        "context": {
            "principal": {"id": "AIDAEXAMPLE", "arn": "arn:aws:iam::123456789012:user/ci"},
            "action": action,
            "resource": format!("arn:aws:ec2:eu-west-1:123456789012:{resource}"),
            "conditions": {"items": []}
        }
    })
    .to_string()
}

/// A test's settings for a cluster of two nodes in a placement group.
fn placed_cluster() -> String {
    format!(
        "cluster = {{ nodes = 2, distribution_version = \"8.15.0\", team_path = \"{}\" }}\n\
         placement_group = \"cluster\"",
        support::cluster::ES_DOUBLE_TEAM
    )
}

/// A placement group lies in one Availability Zone: a placed test whose `subnet_ids` lie in
/// two is refused by `plan` at the subnet in the other zone (EC2 would refuse a member's
/// launch there, a launch retried there for capacity included); one zone passes.
#[test]
fn plan_refuses_a_placed_test_whose_subnets_lie_in_two_zones() {
    let run = Run::new(1);
    let h = &run.harness;
    h.allow_cluster_ports();
    let other = second_subnet(h);
    let proxy = run.proxy(&[]);
    let subnets = |ids: &[&str]| format!("{}\nsubnet_ids = {ids:?}", placed_cluster());
    let two_zones = run.plan(&[("s", &[("t", &subnets(&[&h.subnet_id, &other]))])]);
    support::cluster::as_cluster_plan(&two_zones, &h.node_home.join("rallyctl"));
    let out = plan_through(&run, &proxy, &two_zones);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    insta::assert_snapshot!(placed(&run, &out.stderr).replace(&other, "[other subnet]"));

    let one_zone = run.plan(&[("s", &[("t", &subnets(&[&h.subnet_id]))])]);
    support::cluster::as_cluster_plan(&one_zone, &h.node_home.join("rallyctl"));
    let out = plan_through(&run, &proxy, &one_zone);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// A placed cluster test's group is made before its first launch: `plan` dry-runs making it
/// (CreatePlacementGroup with DryRun, tagged as a test's group is), once per region and kind
/// of group, and says at `placement_group` why EC2 would refuse it; `apply` then launches
/// nothing. Taken, the dry run makes no group.
#[test]
fn plan_dry_runs_making_a_placement_group_and_says_why_ec2_would_refuse_it() {
    let run = Run::new(1);
    run.harness.allow_cluster_ports();
    let plan = run.plan(&[("s", &[("a", &placed_cluster()), ("b", &placed_cluster())])]);
    support::cluster::as_cluster_plan(&plan, &run.harness.node_home.join("rallyctl"));

    let allowed = run.proxy(&[]);
    let out = plan_through(&run, &allowed, &plan);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = allowed.report();
    assert_eq!(
        report["placement_groups"],
        serde_json::json!({}),
        "{report}"
    );
    drop(allowed);

    let refused = run.proxy_with(
        &["CreatePlacementGroup/DryRun:UnauthorizedOperation:always"],
        &[
            "--decoded",
            &refusal(
                "ec2:CreatePlacementGroup",
                "placement-group/rallyctl-dry-run",
            ),
        ],
    );
    let out = plan_through(&run, &refused, &plan);
    assert_eq!(out.status.code(), Some(1), "the refused group passed");
    assert_eq!(refused.injected("CreatePlacementGroup/DryRun"), 1);
    insta::assert_snapshot!("dry_run_group_refused", placed(&run, &out.stderr));

    let args = ["apply", plan.to_str().unwrap(), "--auto-approve"];
    assert_eq!(run.through(&refused, &args).status.code(), Some(1));
    assert_eq!(
        run.launches(),
        0,
        "apply launched a test whose group it may not make"
    );
}

/// An arm64 AMI on an x86_64 instance type fails at launch on EC2 (moto launches it), after
/// the suites before it were paid for: `plan` compares the AMI's architecture with what the
/// instance type runs and says so at the instance type's line; a matching pair passes.
#[test]
fn plan_refuses_an_ami_built_for_another_architecture_than_the_instance_type() {
    let run = Run::new(1);
    let arm = "ami-0e9271c829888680e"; // moto's al2022 arm64 image
    let plan = run.plan(&[(
        "s",
        &[
            ("x86", ""),
            (
                "graviton",
                &format!("ami = \"{arm}\"\ninstance_type = \"m6g.large\""),
            ),
            (
                "mixed",
                &format!("ami = \"{arm}\"\ninstance_type = \"c5.large\""),
            ),
        ],
    )]);
    let out = run.rallyctl(&["plan", plan.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the arm64 AMI on c5.large passed"
    );
    insta::assert_snapshot!(placed(&run, &out.stderr));
}

/// EC2 leaves a deprecated AMI out of DescribeImages unless asked with `IncludeDeprecated`,
/// yet launches it: a plan pinned to a deprecated public AMI is not refused as missing.
#[test]
fn a_pinned_deprecated_ami_is_not_refused_as_missing() {
    let run = Run::new(1);
    let proxy = run.proxy_with(&[], &["--deprecated", &run.harness.ami]);
    let plan = run.plan(&[("s", &[("t", "")])]);
    let out = plan_through(&run, &proxy, &plan);
    assert_eq!(out.status.code(), Some(0), "the deprecated AMI was refused");
    assert!(proxy.forwarded("DescribeImages") >= 1);
}

/// `plan` prices each machine's root volume from its image's root block device mapping (moto's
/// images: 15 GiB of `standard`, which the harness's price file prices at $0.055 a GB-month)
/// and a spot test at its spot price now (moto's stub: $0.00001), its cap kept as the worst;
/// where EC2 has no spot history of the instance type (the proxy answers as EC2 does) the test
/// is expected at its cap, and the plan says why.
#[test]
fn plan_prices_root_volumes_and_spot_prices_now_from_ec2() {
    let run = Run::new(1);
    let plan = run.plan(&[(
        "s",
        &[
            ("spot", "market = \"spot\"\nmax_price = \"0.05\""),
            ("od", ""),
        ],
    )]);
    let path = plan.to_str().unwrap();
    let out = run.rallyctl(&["plan", path, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let test = |name: &str| {
        json["cost"]["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["address"] == format!("s.{name}"))
            .unwrap_or_else(|| panic!("s.{name} not in {json}"))
            .clone()
    };
    let (spot, od) = (test("spot"), test("od"));
    assert_eq!(spot["hourly"]["spot_now_usd"], 0.00001, "{spot}");
    assert_eq!(spot["hourly"]["instance_usd"], 0.05, "{spot}");
    for t in [&spot, &od] {
        assert_eq!(t["root_volume"]["gib"], 15, "{t}");
        assert_eq!(t["root_volume"]["volume_type"], "standard", "{t}");
        assert_eq!(t["root_volume"]["usd_per_gb_month"], 0.055, "{t}");
        assert_eq!(t["hourly"]["root_volume_usd"], 15.0 * 0.055 / 730.0, "{t}");
    }

    let proxy = run.proxy_with(&[], &["--no-spot-history"]);
    let out = plan_through(&run, &proxy, &plan);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("its price now is not known: EC2 has no spot price history of it"),
        "{stdout}"
    );
    assert!(proxy.injected("DescribeSpotPriceHistory") >= 1);
}

/// `plan` compares the vCPUs a suite may run at once with what the account's running
/// On-Demand vCPU quota (Service Quotas L-1216C47A, served by the proxy: moto knows only VPC
/// quotas) leaves beside the instances already running, and warns with the `--parallelism`
/// that fits; under that parallelism it says nothing.
#[test]
fn plan_warns_when_the_vcpu_quota_cannot_hold_what_a_suite_runs_at_once() {
    let run = Run::new(1);
    let h = &run.harness;
    // Someone else's instance holds a vCPU of the quota (moto's default type, m1.small).
    h.launch_tagged(&[("owner", "someone-else")]);
    let proxy = run.proxy_with(&[], &["--quota", "ec2:L-1216C47A:6"]);
    // Four m5.large (2 vCPUs each) and a spot test, which counts against another quota.
    let plan = run.plan(&[(
        "s",
        &[
            ("a", ""),
            ("b", ""),
            ("c", ""),
            ("d", ""),
            ("spot", "market = \"spot\""),
        ],
    )]);
    let out = plan_through(&run, &proxy, &plan);
    assert_eq!(out.status.code(), Some(0), "a warning failed the plan");
    assert_eq!(proxy.injected("GetServiceQuota"), 1);
    let warnings: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .map(|l| l.replace(&h.region, "[region]"))
        .collect();
    insta::assert_snapshot!(warnings.join("\n"));

    let args = ["plan", plan.to_str().unwrap(), "--parallelism", "2"];
    let out = run.through(&proxy, &args);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning:"),
        "warned although --parallelism 2 fits"
    );

    // Without the quota (moto knows none of EC2's), the plan says it was not checked.
    let out = run.rallyctl(&["plan", plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("L-1216C47A) was not checked: GetServiceQuota"),
        "{stderr}"
    );
}

/// `VcpuLimitExceeded` at launch stays so until instances end or the quota is raised: the test
/// fails at once, naming the quota (EC2's message does not), without retrying.
#[test]
fn a_launch_over_the_vcpu_quota_fails_at_once_naming_the_quota() {
    let run = Run::new(1);
    let proxy = run.proxy(&["RunInstances:VcpuLimitExceeded:always"]);
    let out = apply_through(&run, &proxy);
    assert_eq!(out.status.code(), Some(1), "apply did not fail cleanly");
    let (step, error) = run.failure("s.t");
    assert_eq!(step, Step::Launching);
    insta::assert_snapshot!(error.replace(&run.harness.region, "[region]"));
    assert_eq!(
        proxy.injected("RunInstances"),
        1,
        "VcpuLimitExceeded was retried"
    );
    assert_eq!(run.launches(), 0);
}

/// A test that names no subnet launches into the region's default VPC: an account without one
/// is told at plan time, where the region is written.
#[test]
fn a_region_without_a_default_vpc_is_reported_for_tests_without_a_subnet() {
    let run = Run::new(1);
    let h = &run.harness;
    let with_subnet = run.plan(&[("s", &[("t", "")])]);
    let text = std::fs::read_to_string(&with_subnet).unwrap();
    let plan = run.dir.path().join("no-subnet.toml");
    let no_subnet: String = text
        .lines()
        .filter(|l| !l.starts_with("subnet_id") && !l.starts_with("security_group_ids"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&plan, &no_subnet).unwrap();
    let plan = plan.to_str().unwrap();
    let out = run.rallyctl(&["plan", plan]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "moto's default VPC was not found"
    );

    let ec2 = h.ec2_client();
    let is_default = aws_sdk_ec2::types::Filter::builder()
        .name("is-default")
        .values("true")
        .build();
    let vpc = h
        .block_on(ec2.describe_vpcs().filters(is_default).send())
        .unwrap()
        .vpcs()[0]
        .vpc_id()
        .unwrap()
        .to_owned();
    let in_vpc = |name: &str| {
        aws_sdk_ec2::types::Filter::builder()
            .name(name)
            .values(&vpc)
            .build()
    };
    let subnets = h
        .block_on(ec2.describe_subnets().filters(in_vpc("vpc-id")).send())
        .unwrap();
    for s in subnets.subnets() {
        h.block_on(ec2.delete_subnet().subnet_id(s.subnet_id().unwrap()).send())
            .unwrap();
    }
    let gateways = h
        .block_on(
            ec2.describe_internet_gateways()
                .filters(in_vpc("attachment.vpc-id"))
                .send(),
        )
        .unwrap();
    for g in gateways.internet_gateways() {
        let id = g.internet_gateway_id().unwrap();
        h.block_on(
            ec2.detach_internet_gateway()
                .internet_gateway_id(id)
                .vpc_id(&vpc)
                .send(),
        )
        .unwrap();
        h.block_on(ec2.delete_internet_gateway().internet_gateway_id(id).send())
            .unwrap();
    }
    h.block_on(ec2.delete_vpc().vpc_id(&vpc).send()).unwrap();

    let out = run.rallyctl(&["plan", plan]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a region without a default VPC passed"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = 1 + no_subnet
        .lines()
        .position(|l| l.starts_with("region"))
        .unwrap();
    assert!(
        stderr.contains(&format!("no-subnet.toml:{line}:"))
            && stderr.contains("defaults.region")
            && stderr.contains("has no default VPC"),
        "{stderr}"
    );
}

/// A spot test (`spot`: its settings) whose instance EC2 reclaims mid-race, as `reclaim` does
/// it: the test races again on an on-demand instance (the default `on_interruption`) and
/// completes; the result says which machine was spot. The run, for more checks.
fn a_reclaimed_spot_race_is_raced_again_on_demand(
    spot: &str,
    reclaim: impl FnOnce(&Run, &rallyctl::state::Machine),
) -> Run {
    let run = Run::new(2);
    let proxy = run.proxy(&[]);
    let plan = run.plan(&[("s", &[("t", spot)])]);
    let args = ["apply", plan.to_str().unwrap(), "--auto-approve"];
    let mut first = run.spawn_with_env("apply", &args, &[("AWS_ENDPOINT_URL", &proxy.url)]);
    run.wait_for_race("s.t", std::time::Duration::from_secs(300));
    let machine = run.record("s.t").machine.unwrap();
    assert!(machine.spot, "launched on demand: {machine:?}");
    proxy.reclaim(&[&machine.id]);
    reclaim(&run, &machine);
    let status = first.wait().unwrap();
    let (stdout, stderr) = run.printed("apply");
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("EC2 reclaimed spot instance {}", machine.id)),
        "{stdout}"
    );
    let r = run.record("s.t");
    assert_eq!((r.status.clone(), r.reclaimed), (Status::Completed, 1));
    let again = r.machine.clone().unwrap();
    assert_ne!(again.id, machine.id);
    assert!(!again.spot, "raced again on spot, not on demand");
    assert!(r.results.iter().any(|f| f.path.ends_with("report.csv")));
    assert_eq!(run.launches(), 2);
    assert!(
        run.harness.running_instances().is_empty(),
        "an instance was left running"
    );
    run
}

/// EC2 takes the instance back: terminated, with the spot state reason; the race is lost.
#[test]
fn a_spot_instance_reclaimed_mid_race_is_raced_again_on_demand_and_completes() {
    let run = a_reclaimed_spot_race_is_raced_again_on_demand(
        "market = \"spot\"\nmax_price = \"0.05\"",
        |run, spot| {
            let ec2 = run.harness.ec2_client();
            run.harness
                .block_on(ec2.terminate_instances().instance_ids(&spot.id).send())
                .unwrap();
        },
    );
    // The launch asked EC2 for spot capacity at the price cap.
    let spot_launches = run
        .harness
        .recorded_calls()
        .into_iter()
        .filter(|c| c.is_launch())
        .filter(|c| {
            let param = |k: &str| {
                c.params
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.as_str())
            };
            param("InstanceMarketOptions.MarketType") == Some("spot")
                && param("InstanceMarketOptions.SpotOptions.MaxPrice") == Some("0.05")
        })
        .count();
    assert_eq!(spot_launches, 1);
}

/// Killed after EC2 launched its instance but before it heard so, an apply leaves nothing in
/// state; the instance then dies (a user, EC2). The next apply launches again with the same
/// ClientToken, and EC2 answers with that instance, terminated (for a day after it ended):
/// that attempt is spent, and a new one launches and races.
#[test]
fn a_launch_whose_instance_died_before_any_apply_recorded_it_opens_a_new_attempt() {
    let run = Run::new(2);
    let proxy = run.proxy(&["RunInstances:lost:1"]);
    let plan = run.plan(&[("s", &[("t", "")])]);
    let args = ["apply", plan.to_str().unwrap(), "--auto-approve"];
    let mut first = run.spawn_with_env("first", &args, &[("AWS_ENDPOINT_URL", &proxy.url)]);
    proxy.wait_held("RunInstances", 1, std::time::Duration::from_secs(120));
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        run.record("s.t").machine.is_none(),
        "the launch was recorded"
    );
    let launched = run.harness.running_instances();
    assert_eq!(launched.len(), 1, "{launched:?}");
    let dead = &launched[0].id;
    let ec2 = run.harness.ec2_client();
    run.harness
        .block_on(ec2.terminate_instances().instance_ids(dead).send())
        .unwrap();

    let out = run.through(&proxy, &args);
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(0), "{printed}");
    assert!(
        printed.contains(&format!(
            "s.t: {dead} that this attempt launched before reads Terminated; launching again as attempt 2"
        )),
        "{printed}"
    );
    let r = run.record("s.t");
    assert_eq!((r.status.clone(), r.attempt), (Status::Completed, 2));
    assert_ne!(&r.machine.unwrap().id, dead);
    // The repeated launch was answered from its token (injected), not made again.
    assert_eq!(proxy.injected("RunInstances"), 2);
    assert_eq!(run.launches(), 2);
    assert!(
        run.harness.running_instances().is_empty(),
        "an instance was left running"
    );
}

/// EC2 refuses spot capacity at launch (`SpotMaxPriceTooLow`): a test whose
/// `on_interruption` is on demand launches on demand at once and completes; one that must stay
/// on spot fails at launching with EC2's words, and nothing is launched for it.
#[test]
fn a_spot_launch_refused_falls_back_on_demand_only_where_the_plan_says_so() {
    let run = Run::new(2);
    let proxy = run
        .proxy(&["RunInstances[InstanceMarketOptions.MarketType=spot]:SpotMaxPriceTooLow:always"]);
    let plan = run.plan(&[(
        "s",
        &[
            ("t", "market = \"spot\"\nmax_price = \"0.001\""),
            (
                "u",
                "market = \"spot\"\nmax_price = \"0.001\"\non_interruption = \"spot\"",
            ),
        ],
    )]);
    let args = ["apply", plan.to_str().unwrap(), "--auto-approve"];
    let out = run.through(&proxy, &args);
    let printed = text(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains("s.t: no spot capacity (SpotMaxPriceTooLow: "),
        "{printed}"
    );
    let t = run.record("s.t");
    assert_eq!(t.status, Status::Completed);
    assert!(!t.machine.unwrap().spot, "t raced on spot");
    let (step, error) = run.failure("s.u");
    assert_eq!(step, Step::Launching);
    assert!(error.contains("SpotMaxPriceTooLow"), "{error}");
    assert_eq!(proxy.injected("RunInstances"), 2);
    assert_eq!(run.launches(), 1, "only t's on-demand launch reached EC2");
    assert!(
        run.harness.running_instances().is_empty(),
        "an instance was left running"
    );
}

/// EC2 reclaims a spot instance while its race runs: the shutdown kills the race (SIGTERM,
/// exit 143) while the instance still answers, so the race fails as any race could. Asked
/// first, EC2 says it reclaimed the instance: the test races again on demand and completes.
#[test]
fn a_spot_race_killed_by_the_reclaim_shutdown_is_raced_again_on_demand() {
    a_reclaimed_spot_race_is_raced_again_on_demand("market = \"spot\"", |run, spot| {
        let ip = spot.address.clone().expect("the instance's address");
        let rally: Vec<u32> = run
            .harness
            .instance_processes(&ip)
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("esrally"))
            .map(|(pid, _)| pid)
            .collect();
        assert!(!rally.is_empty(), "no esrally on {ip}");
        for pid in rally {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    });
}

/// A cluster's machines reach one another through the test's security groups: `plan` checks
/// that they are let in on Elasticsearch's HTTP and transport ports and, with more than one
/// load driver, on Rally's actor ports, and names the rule to add where they are not. A test
/// of one machine is not checked: the harness's group has no inbound rule at all.
#[test]
fn plan_checks_that_a_clusters_security_groups_let_its_machines_reach_one_another() {
    let run = Run::new(1);
    let h = &run.harness;
    let written = run.plan(&[(
        "s",
        &[
            ("single", ""),
            (
                "cluster",
                "cluster = { nodes = 3, distribution_version = \"8.15.0\" }\nload_drivers = 2",
            ),
        ],
    )]);
    // A cluster races nodes of its own, not `target_hosts` with `benchmark-only`.
    let lines: String = std::fs::read_to_string(&written)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("target_hosts") && !l.starts_with("pipeline"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&written, lines).unwrap();
    let plan = written.to_str().unwrap();

    let out = run.rallyctl(&["plan", plan]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    insta::assert_snapshot!("cluster_security_group_closed", placed(&run, &out.stderr));

    let ec2 = h.ec2_client();
    let sg = &h.security_group_id;
    for (from, to) in [(1900, 1900), (9200, 9300), (32768, 60999)] {
        let rule = aws_sdk_ec2::types::IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(from)
            .to_port(to)
            .user_id_group_pairs(
                aws_sdk_ec2::types::UserIdGroupPair::builder()
                    .group_id(sg)
                    .build(),
            )
            .build();
        h.block_on(
            ec2.authorize_security_group_ingress()
                .group_id(sg)
                .ip_permissions(rule)
                .send(),
        )
        .unwrap();
    }
    let out = run.rallyctl(&["plan", plan]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
