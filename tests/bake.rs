//! Baked images end to end on the harness: `bake` makes an image in moto from an instance that
//! installed esrally, tests with `ami = "baked"` launch from it and skip installing, and
//! `destroy --images` gives it back. The instances install into a disk of their own
//! (`remote_dir` = the harness's `host_dir`) that the fault proxy empties at launch, or fills
//! with the disk of the instance the image was made from, so a skipped install proves the image
//! carried the venv.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use rallyctl::state::{BakeStep, Image, Status};
use support::context::text;
use support::fault_proxy::FaultProxy;
use support::run::{Run, at};

/// A one-suite plan of `tests` that each ask for an image baked from the harness's AMI.
fn baked_plan(run: &Run, tests: &[&str]) -> PathBuf {
    let h = &run.harness;
    let extra = format!(
        "ami = \"baked\"\nbase_ami = \"{}\"\nremote_dir = \"{}\"",
        h.ami,
        h.host_dir.display()
    );
    let tests: Vec<(&str, &str)> = tests.iter().map(|t| (*t, extra.as_str())).collect();
    run.plan(&[("s", &tests)])
}

/// Ctrl-C to a running bake: it exits 130 and leaves its image failed, which this returns.
fn interrupt(run: &Run, bake: &mut std::process::Child) -> Image {
    let pid = bake.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = bake.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{:?}", run.printed("bake"));
    let image = run.state().images[0].clone();
    assert_eq!(image.step, BakeStep::Failed);
    image
}

fn seconds(from: jiff::Timestamp, to: jiff::Timestamp) -> f64 {
    to.duration_since(from).as_secs_f64()
}

/// How long a bake's install took, from its history.
fn bake_install(image: &Image) -> f64 {
    let at = |name: &str| {
        image
            .history
            .iter()
            .find(|t| t.status == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", image.history))
            .at
    };
    seconds(at("installing"), at("imaging"))
}

#[test]
fn a_baked_image_is_made_then_its_tests_skip_installing_and_destroy_gives_it_back() {
    let run = Run::new(3);
    let proxy = FaultProxy::with_disks(&run.harness, &[]);
    let plan = baked_plan(&run, &["a", "b"]);
    let plan_arg = plan.to_str().unwrap();

    // Before the bake, apply refuses the tests, saying what to run.
    let out = run.through(&proxy, &["apply", plan_arg, "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let refusal = text(&out);
    assert!(
        refusal.contains("s.a asks for an image baked from"),
        "{refusal}"
    );
    assert!(
        refusal.contains(&format!("run `rallyctl bake {plan_arg}` first")),
        "{refusal}"
    );
    assert_eq!(run.launches(), 0);

    let out = run.through(&proxy, &["bake", plan_arg, "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0));
    let baked = text(&out);
    // The bake instance's disk started empty: it really installed.
    assert!(baked.contains("rallyctl: installing esrally"), "{baked}");
    // What a user reads of `bake`, ids, times and the harness's paths filtered.
    let filters = vec![
        (r"(?m)^.*: rallyctl: .*\n", ""),
        (r"\bi-[0-9a-f]+", "i-ID"),
        (r"\bami-[0-9a-f]+", "ami-ID"),
        (r"\bsnap-[0-9a-f]+", "snap-ID"),
        (r"\d\d:\d\d:\d\d ", "HH:MM:SS "),
        (r"\d+m\d\ds", "MmSSs"),
        (r"\d+(\.\d+)? ?s\b", "Ns"),
        (r"/[^ \n]*/", "PATH/"),
    ];
    insta::with_settings!({filters => filters}, {
        insta::assert_snapshot!("bake_output", String::from_utf8_lossy(&out.stdout));
    });
    let state = run.state();
    assert_eq!(state.images.len(), 1, "{:?}", state.images);
    let image = &state.images[0];
    assert_eq!(image.step, BakeStep::Available);
    let image_id = image.image_id.clone().unwrap();
    assert!(image.created_at.is_some());
    let bake_instance = image.instance.clone().unwrap();
    assert!(bake_instance.installed.is_some(), "{image:?}");
    assert!(bake_instance.released_at.is_some(), "{image:?}");
    assert_eq!(image.baked_for.base_ami, run.harness.ami);
    let h = &run.harness;
    let registered = h.block_on(async {
        h.ec2_client()
            .describe_images()
            .image_ids(&image_id)
            .send()
            .await
            .unwrap()
    });
    let registered = &registered.images()[0];
    assert_eq!(registered.state().unwrap().as_str(), "available");
    assert_eq!(
        image.snapshot_ids,
        registered
            .block_device_mappings()
            .iter()
            .filter_map(|b| b.ebs()?.snapshot_id().map(str::to_owned))
            .collect::<Vec<_>>()
    );
    assert!(!image.snapshot_ids.is_empty());
    let bake_in_moto = (h.instances().into_iter())
        .find(|i| i.id == bake_instance.id)
        .unwrap();
    assert!(
        matches!(bake_in_moto.state.as_str(), "terminated" | "shutting-down"),
        "{bake_in_moto:?}"
    );

    // plan shows the image each test launches from.
    let out = run.through(&proxy, &["plan", plan_arg]);
    assert_eq!(out.status.code(), Some(0));
    let planned = text(&out);
    assert!(
        planned.contains(&format!("s.a  {image_id}"))
            && planned.contains(&format!("s.b  {image_id}")),
        "{planned}"
    );

    let out = run.through(&proxy, &["apply", plan_arg, "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0));
    let applied = text(&out);
    assert!(!applied.contains("installing esrally"), "{applied}");
    let bake_took = bake_install(image);
    for address in ["s.a", "s.b"] {
        let r = run.record(address);
        assert_eq!(r.status, Status::Completed, "{address}");
        let instance = r.machine.clone().unwrap();
        // The image was baked with this very install script: it does not run again.
        assert_eq!(instance.installed, bake_instance.installed);
        assert!(
            applied.contains(&format!(
                "{address}: rallyctl: this install.sh ran on {} already: nothing to install",
                instance.id
            )),
            "{applied}"
        );
        let launched = (h.instances().into_iter())
            .find(|i| i.id == instance.id)
            .unwrap();
        assert_eq!(launched.image_id.as_deref(), Some(image_id.as_str()));
        let took = seconds(at(&r, "installing"), at(&r, "racing"));
        eprintln!("{address}: installing took {took:.1} s; the bake's install {bake_took:.1} s");
        assert!(
            took * 3.0 < bake_took,
            "{address} installed for {took:.1} s, the bake for {bake_took:.1} s"
        );
    }
    // The resolved image id is not part of the configuration: the results stay current.
    let out = run.through(&proxy, &["plan", plan_arg, "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Without --images the image stays, and destroy says so.
    let out = run.through(&proxy, &["destroy", plan_arg, "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out).contains("keeps 1 baked image: `rallyctl destroy --images` gives them back"),
        "{}",
        text(&out)
    );
    assert_eq!(run.state().images[0].step, BakeStep::Available);

    let out = run.through(&proxy, &["destroy", plan_arg, "--images", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out).contains("1 image deregistered"),
        "{}",
        text(&out)
    );
    let left = h.block_on(async {
        h.ec2_client()
            .describe_images()
            .owners("self")
            .send()
            .await
            .unwrap()
    });
    assert!(
        left.images()
            .iter()
            .all(|i| i.image_id() != Some(&image_id)),
        "{left:?}"
    );
    let snapshots = h.block_on(async {
        h.ec2_client()
            .describe_snapshots()
            .owner_ids("self")
            .send()
            .await
            .unwrap()
    });
    for id in &image.snapshot_ids {
        assert!(
            snapshots
                .snapshots()
                .iter()
                .all(|s| s.snapshot_id() != Some(id)),
            "{id} was not deleted"
        );
    }
    assert_eq!(run.state().images[0].step, BakeStep::Deregistered);
}

#[test]
fn a_bake_whose_create_image_fails_terminates_its_instance() {
    let run = Run::new(1);
    let proxy = FaultProxy::with_disks(&run.harness, &["CreateImage:InvalidParameterValue:1"]);
    let plan = baked_plan(&run, &["a"]);
    let out = run.through(&proxy, &["bake", plan.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("CreateImage"), "{}", text(&out));
    assert_eq!(proxy.injected("CreateImage"), 1);
    let image = run.state().images[0].clone();
    assert_eq!(image.step, BakeStep::Failed);
    assert!(image.error.unwrap().contains("InvalidParameterValue"));
    assert!(image.image_id.is_none());
    let instance = image.instance.unwrap();
    assert!(instance.released_at.is_some());
    let running = run.harness.running_instances();
    assert!(running.is_empty(), "left running: {running:?}");
}

/// A one-test bake on a harness of `instances`, SIGKILLed once it records its instance
/// installing: the run, its proxy, the plan and that instance.
fn killed_while_installing(
    instances: usize,
) -> (Run, FaultProxy, PathBuf, rallyctl::state::Machine) {
    let run = Run::new(instances);
    let proxy = FaultProxy::with_disks(&run.harness, &[]);
    let plan = baked_plan(&run, &["a"]);
    let (mut bake, instance) = bake_until_installing(&run, &proxy, &plan);
    bake.kill().unwrap();
    bake.wait().unwrap();
    (run, proxy, plan, instance)
}

/// Starts `bake` in the background and waits until it records its instance installing.
fn bake_until_installing(
    run: &Run,
    proxy: &FaultProxy,
    plan: &std::path::Path,
) -> (std::process::Child, rallyctl::state::Machine) {
    let mut bake = run.spawn_with_env(
        "bake",
        &["bake", plan.to_str().unwrap(), "--auto-approve"],
        &[("AWS_ENDPOINT_URL", &proxy.url)],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let installing = loop {
        let state = rallyctl::state::load(&run.dir.path().join("state/e2e.state.json"))
            .ok()
            .flatten();
        let installing = state.and_then(|s| {
            let i = s.images.first()?;
            (i.step == BakeStep::Installing).then(|| i.instance.clone())?
        });
        if installing.is_some() || std::time::Instant::now() >= deadline {
            break installing;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    match installing {
        Some(machine) => (bake, machine),
        None => {
            let _ = bake.kill();
            let _ = bake.wait();
            panic!(
                "the bake never got to installing: {:?}",
                run.printed("bake")
            )
        }
    }
}

#[test]
fn a_killed_bake_leaves_an_instance_that_destroy_finds_and_terminates() {
    let (run, proxy, plan, instance) = killed_while_installing(1);

    let out = run.through(
        &proxy,
        &["destroy", plan.to_str().unwrap(), "--auto-approve"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out).contains(&format!("{}  bake rallyctl-e2e-", instance.id)),
        "{}",
        text(&out)
    );
    let running = run.harness.running_instances();
    assert!(running.is_empty(), "left running: {running:?}");
    let image = run.state().images[0].clone();
    assert_eq!(image.step, BakeStep::Failed);
    assert!(image.instance.unwrap().released_at.is_some());
}

#[test]
fn a_killed_bake_run_again_goes_on_on_its_instance_without_launching_another() {
    let (run, proxy, plan, instance) = killed_while_installing(2);

    let out = run.through(&proxy, &["bake", plan.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out).contains("resumes at installing"),
        "{}",
        text(&out)
    );
    assert_eq!(run.launches(), 1, "a resumed bake launched again");
    let image = run.state().images[0].clone();
    assert_eq!(image.step, BakeStep::Available);
    assert_eq!(image.attempt, 1);
    let machine = image.instance.unwrap();
    assert_eq!(machine.id, instance.id);
    assert!(machine.released_at.is_some());
    let running = run.harness.running_instances();
    assert!(running.is_empty(), "left running: {running:?}");
}

#[test]
fn ctrl_c_stops_a_bake_and_terminates_its_instance() {
    let run = Run::new(1);
    let proxy = FaultProxy::with_disks(&run.harness, &[]);
    let plan = baked_plan(&run, &["a"]);
    let (mut bake, _) = bake_until_installing(&run, &proxy, &plan);
    let image = interrupt(&run, &mut bake);
    assert_eq!(image.error.as_deref(), Some("interrupted"));
    assert!(image.image_id.is_none());
    assert!(image.instance.unwrap().released_at.is_some());
    let running = run.harness.running_instances();
    assert!(running.is_empty(), "left running: {running:?}");
}

/// The snapshots EC2 (moto) names in `image_id`'s block device mappings.
fn snapshots_of(run: &Run, image_id: &str) -> Vec<String> {
    let h = &run.harness;
    let out = h.block_on(async {
        h.ec2_client()
            .describe_images()
            .image_ids(image_id)
            .send()
            .await
            .unwrap()
    });
    (out.images().iter())
        .flat_map(|i| i.block_device_mappings())
        .filter_map(|b| b.ebs()?.snapshot_id().map(str::to_owned))
        .collect()
}

/// The images and snapshots carrying the workspace's tag (`rallyctl:workspace = e2e`).
fn tagged(run: &Run) -> (Vec<String>, Vec<String>) {
    let h = &run.harness;
    h.block_on(async {
        let ec2 = h.ec2_client();
        let tag = aws_sdk_ec2::types::Filter::builder()
            .name("tag:rallyctl:workspace")
            .values("e2e")
            .build();
        let images = ec2
            .describe_images()
            .owners("self")
            .filters(tag.clone())
            .send()
            .await
            .unwrap();
        let snapshots = ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(tag)
            .send()
            .await
            .unwrap();
        (
            (images.images().iter())
                .filter_map(|i| i.image_id().map(str::to_owned))
                .collect(),
            (snapshots.snapshots().iter())
                .filter_map(|s| s.snapshot_id().map(str::to_owned))
                .collect(),
        )
    })
}

/// Nothing of `image_id` and `snapshots` is left in EC2 (moto).
fn assert_all_gone(run: &Run, image_id: &str, snapshots: &[String]) {
    let h = &run.harness;
    let (images, left) = h.block_on(async {
        let ec2 = h.ec2_client();
        let images = ec2.describe_images().owners("self").send().await.unwrap();
        let left = ec2
            .describe_snapshots()
            .owner_ids("self")
            .send()
            .await
            .unwrap();
        (images, left)
    });
    assert!(
        images
            .images()
            .iter()
            .all(|i| i.image_id() != Some(image_id)),
        "{image_id} is still registered"
    );
    for id in snapshots {
        assert!(
            left.snapshots()
                .iter()
                .all(|s| s.snapshot_id() != Some(id.as_str())),
            "{id} was not deleted"
        );
    }
    assert_eq!(tagged(run), (vec![], vec![]), "tagged leftovers");
}

/// EC2 fails an image whose instance is terminated while it is imaged: the bake records its
/// snapshots, already tagged, and `destroy --images` deletes them, asking again while EC2
/// still holds one in use by the image just deregistered.
#[test]
fn an_image_failed_as_its_instance_terminated_leaves_nothing_after_destroy_images() {
    let run = Run::new(1);
    let proxy = FaultProxy::with_disks_and(
        &run.harness,
        &["DeleteSnapshot:InvalidSnapshot.InUse:1"],
        &["--image-state", "failed:Client.InstanceTerminated"],
    );
    let plan = baked_plan(&run, &["a"]);
    let plan_arg = plan.to_str().unwrap();
    let out = run.through(&proxy, &["bake", plan_arg, "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("is failed instead of available (Client.InstanceTerminated"),
        "{}",
        text(&out)
    );
    let image = run.state().images[0].clone();
    assert_eq!(image.step, BakeStep::Failed);
    let image_id = image.image_id.clone().unwrap();
    let made = snapshots_of(&run, &image_id);
    assert!(!made.is_empty());
    assert_eq!(image.snapshot_ids, made);
    assert_eq!(tagged(&run), (vec![image_id.clone()], made.clone()));
    assert!(image.instance.unwrap().released_at.is_some());

    let out = run.through(&proxy, &["destroy", plan_arg, "--images", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("1 image deregistered"),
        "{}",
        text(&out)
    );
    assert_eq!(proxy.injected("DeleteSnapshot"), 1);
    assert_all_gone(&run, &image_id, &made);
    assert_eq!(run.state().images[0].step, BakeStep::Deregistered);
    let running = run.harness.running_instances();
    assert!(running.is_empty(), "left running: {running:?}");
}

/// Ctrl-C while the image is pending: the bake has recorded its snapshots by then. With the
/// state lost, `destroy --images` still finds the image and its snapshots by their tags, and
/// a snapshot it could not delete once its image was deregistered by the tag alone.
#[test]
fn ctrl_c_while_imaging_leaves_nothing_after_destroy_images_even_without_state() {
    let run = Run::new(1);
    let proxy = FaultProxy::with_disks_and(
        &run.harness,
        &["DeleteSnapshot:IncorrectState:1"],
        &["--image-state", "pending"],
    );
    let plan = baked_plan(&run, &["a"]);
    let plan_arg = plan.to_str().unwrap();
    let (mut bake, _) = bake_until_installing(&run, &proxy, &plan);
    // Imaging, with the image made; a few polls of the pending image later, Ctrl-C.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let image_id = loop {
        let state = rallyctl::state::load(&run.dir.path().join("state/e2e.state.json"))
            .ok()
            .flatten();
        if let Some(id) = state.and_then(|s| s.images.first()?.image_id.clone()) {
            break id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            run.printed("bake")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(8));
    let image = interrupt(&run, &mut bake);
    let made = snapshots_of(&run, &image_id);
    assert!(!made.is_empty());
    assert_eq!(image.snapshot_ids, made);

    // The state is lost: the plan alone says where to look.
    for entry in std::fs::read_dir(run.dir.path().join("state")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("e2e.state.json")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let destroy = ["destroy", plan_arg, "--images", "--auto-approve"];
    let out = run.through(&proxy, &destroy);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "{image_id}  (tagged with this workspace, unknown to state"
        )) && text(&out).contains("IncorrectState"),
        "{}",
        text(&out)
    );
    assert_eq!(tagged(&run), (vec![], made.clone()));
    let out = run.through(&proxy, &destroy);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "{}  (snapshots tagged with this workspace, of no image left)",
            made.join(", ")
        )),
        "{}",
        text(&out)
    );
    assert_all_gone(&run, &image_id, &made);
    let running = run.harness.running_instances();
    assert!(running.is_empty(), "left running: {running:?}");
}

/// CreateImage reboots the bake instance, and a reboot forgets the shutdown its user data
/// scheduled: the instance schedules it again at boot, for the same deadline.
#[test]
fn a_bake_instance_rebooted_for_its_image_keeps_its_watchdog_deadline() {
    let run = Run::new(1);
    let boot = support::boot_dir(run.harness.work.path());
    let proxy = FaultProxy::with_disks_and(&run.harness, &[], &["--boot", boot.to_str().unwrap()]);
    let plan = baked_plan(&run, &["a"]);
    let out = run.through(&proxy, &["bake", plan.to_str().unwrap(), "--auto-approve"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let image = run.state().images[0].clone();
    let id = image.instance.unwrap().id;
    let ip = (run.harness.instances().into_iter())
        .find(|i| i.id == id)
        .and_then(|i| i.private_ip)
        .unwrap();
    let imaging = (image.history.iter())
        .find(|t| t.status == "imaging")
        .unwrap()
        .at
        .as_second();
    // `UNIX_TIME -h +MINUTES message`, one line per `shutdown` the instance ran.
    let calls: Vec<(i64, i64)> = (run.harness.watchdog_calls(&ip).iter())
        .map(|line| {
            let mut words = line.split_whitespace();
            let at = words.next().unwrap().parse().unwrap();
            assert_eq!(words.next(), Some("-h"), "{line}");
            let minutes = words.next().unwrap().strip_prefix('+').unwrap();
            (at, minutes.parse().unwrap())
        })
        .collect();
    assert_eq!(
        calls.len(),
        2,
        "armed at first boot, again after the reboot: {calls:?}"
    );
    let (booted, minutes) = calls[0];
    assert_eq!(minutes, 30, "max_runtime = 30m");
    let deadline = booted + 30 * 60;
    let (rebooted, left) = calls[1];
    assert!(rebooted >= imaging, "{calls:?}, imaging at {imaging}");
    let fires = rebooted + left * 60;
    assert!(
        fires <= deadline + 2 && fires > deadline - 60,
        "after the reboot the shutdown is at {fires}, the deadline {deadline}"
    );
}
