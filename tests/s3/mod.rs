//! The S3 backend end to end: moto's S3 (conditional writes answered with 412, as S3 does),
//! the real binary in several working directories as several CI runners would be, and a real
//! apply on the harness's EC2.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use rallyctl::state::{State, Status, TestRecord};

use crate::support::Harness;
use crate::support::context::{text, wait_for_status};
use crate::support::fault_proxy::FaultProxy;
use crate::support::run::Run;

const BUCKET: &str = "perf-state";
const PREFIX: &str = "rallyctl/nightly";
const STATE_KEY: &str = "rallyctl/nightly/e2e.state.json";
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

fn s3(h: &Harness) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(h.region.clone()))
        .endpoint_url(&h.moto_url)
        .force_path_style(true)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "e2e"))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// The run's plan with `[backend]` in the harness's bucket, which it creates; the plan is
/// copied into each of `dirs`, working directories of other "runners".
fn plan_in_s3(run: &Run, tests: &[(&str, &str)], dirs: &[&Path]) -> PathBuf {
    let h = &run.harness;
    let client = s3(h);
    h.block_on(async {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        client
            .create_bucket()
            .bucket(BUCKET)
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(h.region.as_str()))
                    .build(),
            )
            .send()
            .await
    })
    .expect("CreateBucket");
    let plan = run.plan(&[("s", tests)]);
    let mut text = std::fs::read_to_string(&plan).unwrap();
    text.push_str(&format!(
        "\n[backend]\ns3 = {{ bucket = \"{BUCKET}\", prefix = \"{PREFIX}/\", region = \"{}\" }}\n",
        h.region
    ));
    std::fs::write(&plan, &text).unwrap();
    for dir in dirs {
        std::fs::write(dir.join("e2e.toml"), &text).unwrap();
    }
    plan
}

fn get(h: &Harness, key: &str) -> Option<Vec<u8>> {
    let client = s3(h);
    let key = key.to_owned();
    h.block_on(async move {
        match client.get_object().bucket(BUCKET).key(&key).send().await {
            Ok(out) => Some(out.body.collect().await.unwrap().into_bytes().to_vec()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => None,
            Err(e) => panic!("GetObject {key}: {e:?}"),
        }
    })
}

fn put(h: &Harness, key: &str, bytes: &[u8]) {
    let client = s3(h);
    let (key, bytes) = (key.to_owned(), bytes.to_vec());
    h.block_on(async move {
        client
            .put_object()
            .bucket(BUCKET)
            .key(&key)
            .body(ByteStream::from(bytes))
            .send()
            .await
    })
    .expect("PutObject");
}

fn keys(h: &Harness, prefix: &str) -> Vec<String> {
    let client = s3(h);
    let prefix = prefix.to_owned();
    h.block_on(async move {
        let out = client
            .list_objects_v2()
            .bucket(BUCKET)
            .prefix(&prefix)
            .send()
            .await
            .expect("ListObjectsV2");
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    })
}

fn remote_state(h: &Harness) -> Option<State> {
    let bytes = get(h, STATE_KEY)?;
    Some(rallyctl::state::parse(&bytes, Path::new(STATE_KEY), String::new).unwrap())
}

fn remote_record(h: &Harness, address: &str) -> Option<TestRecord> {
    remote_state(h)?
        .tests
        .get(&address.parse().unwrap())
        .cloned()
}

fn wait_for_remote_status(h: &Harness, address: &str, status: &str) {
    wait_for_status(
        "S3",
        address,
        status,
        STEP_TIMEOUT,
        Duration::from_millis(100),
        || remote_state(h),
    );
}

/// rallyctl in `dir` with the harness's environment.
fn rallyctl_in(run: &Run, dir: &Path, args: &[&str]) -> Output {
    run.output(run.command(args).current_dir(dir), args)
}

/// The lock ID a refusal names.
fn lock_id(refusal: &str) -> String {
    let at = refusal
        .find("lock ID ")
        .expect("the refusal names the lock ID")
        + 8;
    refusal[at..]
        .split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn two_working_directories_share_one_workspace_and_a_fresh_one_reads_its_results() {
    let run = Run::new(1);
    let h = &run.harness;
    let (b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    plan_in_s3(&run, &[("t", "")], &[b.path(), c.path()]);

    let mut first = run.spawn("first", &["apply", "e2e.toml", "--auto-approve"]);
    wait_for_remote_status(h, "s.t", "racing");
    // A second runner is refused while the first runs, told who holds the workspace.
    let second = rallyctl_in(&run, b.path(), &["apply", "e2e.toml", "--auto-approve"]);
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    let refusal = text(&second);
    assert!(
        refusal.contains(&format!(
            "state s3://{BUCKET}/{STATE_KEY} is locked by `rallyctl apply e2e.toml` ("
        )) && refusal.contains(&format!("in {}", run.dir.path().display()))
            && refusal.contains("`rallyctl force-unlock "),
        "{refusal}"
    );
    assert!(
        first.wait().unwrap().success(),
        "{:?}",
        run.printed("first")
    );
    assert_eq!(run.launches(), 1);
    // The first wrote no local state: its state is in S3 only.
    assert!(!run.dir.path().join("state/e2e.state.json").exists());
    let done = remote_record(h, "s.t").unwrap();
    assert_eq!(done.status, Status::Completed);
    // Every collected file is in S3 under the workspace's results, with the sha256 state has.
    for file in &done.results {
        let key = format!("{PREFIX}/{}", file.path.display());
        let bytes = get(h, &key).unwrap_or_else(|| panic!("{key} was not uploaded"));
        assert_eq!(
            crate::support::run::sha256_hex(&bytes),
            file.sha256,
            "{key}"
        );
    }
    assert!(get(h, &format!("{STATE_KEY}.lock")).is_none(), "lock left");
    assert!(get(h, &format!("{STATE_KEY}.backup")).is_some());

    // The other runner, and a fresh one, see the work done.
    for dir in [b.path(), c.path()] {
        let plan = rallyctl_in(&run, dir, &["plan", "e2e.toml", "--detailed-exitcode"]);
        assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    }
    // The fresh runner reads results and writes the report from what S3 holds.
    let results = rallyctl_in(&run, c.path(), &["results", "e2e.toml", "--format", "csv"]);
    assert_eq!(results.status.code(), Some(0), "{}", text(&results));
    let csv = String::from_utf8_lossy(&results.stdout);
    assert!(
        csv.lines()
            .any(|l| l.starts_with("s.t,") && l.contains(",completed,") && l.contains("docs/s")),
        "{csv}"
    );
    let report = rallyctl_in(&run, c.path(), &["report", "e2e.toml"]);
    assert_eq!(report.status.code(), Some(0), "{}", text(&report));
    let html = std::fs::read_to_string(c.path().join("results/e2e/report.html")).unwrap();
    assert!(html.contains("s.t"), "the report lacks the test");

    // state pull brings state and results to the fresh directory; a state of another
    // lineage is never pushed over the workspace's.
    let pull = rallyctl_in(&run, c.path(), &["state", "pull", "e2e.toml"]);
    assert_eq!(pull.status.code(), Some(0), "{}", text(&pull));
    let local = rallyctl::state::load(&c.path().join("state/e2e.state.json"))
        .unwrap()
        .unwrap();
    assert_eq!(local.lineage, remote_state(h).unwrap().lineage);
    for file in &done.results {
        assert!(
            c.path().join(&file.path).is_file(),
            "{}",
            file.path.display()
        );
    }
    let mut foreign = State::new("e2e");
    foreign.serial = 99;
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("state")).unwrap();
    std::fs::write(
        d.path().join("state/e2e.state.json"),
        serde_json::to_vec(&foreign).unwrap(),
    )
    .unwrap();
    std::fs::copy(c.path().join("e2e.toml"), d.path().join("e2e.toml")).unwrap();
    let before = get(h, STATE_KEY).unwrap();
    let push = rallyctl_in(&run, d.path(), &["state", "push", "e2e.toml", "--force"]);
    assert_eq!(push.status.code(), Some(1), "{}", text(&push));
    assert!(
        text(&push).contains("of another lineage"),
        "{}",
        text(&push)
    );
    assert_eq!(
        get(h, STATE_KEY).unwrap(),
        before,
        "the state was overwritten"
    );
}

#[test]
fn an_apply_killed_on_one_runner_resumes_on_another_after_force_unlock() {
    let run = Run::new(1);
    let h = &run.harness;
    let other = tempfile::tempdir().unwrap();
    plan_in_s3(&run, &[("t", "")], &[other.path()]);

    let mut first = run.spawn("first", &["apply", "e2e.toml", "--auto-approve"]);
    wait_for_remote_status(h, "s.t", "racing");
    std::thread::sleep(Duration::from_secs(2));
    first.kill().unwrap();
    first.wait().unwrap();
    let before = remote_record(h, "s.t").unwrap();
    assert_eq!(before.status.label(), "racing");

    // The killed run's lock stays: another machine cannot tell it is dead, so it is refused,
    // and told how to clear it.
    let refused = rallyctl_in(&run, other.path(), &["apply", "e2e.toml", "--auto-approve"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let id = lock_id(&text(&refused));
    let wrong = rallyctl_in(
        &run,
        other.path(),
        &["force-unlock", "0000", "e2e.toml", "--force"],
    );
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(get(h, &format!("{STATE_KEY}.lock")).is_some());
    let unlock = rallyctl_in(
        &run,
        other.path(),
        &["force-unlock", &id, "e2e.toml", "--force"],
    );
    assert_eq!(unlock.status.code(), Some(0), "{}", text(&unlock));

    let resumed = rallyctl_in(&run, other.path(), &["apply", "e2e.toml", "--auto-approve"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    assert!(
        String::from_utf8_lossy(&resumed.stdout).contains("s.t will be resumed at racing"),
        "{}",
        text(&resumed)
    );
    let after = remote_record(h, "s.t").unwrap();
    assert_eq!(after.status, Status::Completed);
    assert_eq!(
        (after.run_id.as_ref(), after.race_id.as_ref()),
        (before.run_id.as_ref(), before.race_id.as_ref())
    );
    assert_eq!(run.launches(), 1, "launched twice");
    assert!(
        h.running_instances().is_empty(),
        "an instance was left running"
    );
    // The results came home on the second runner and are in S3.
    for file in &after.results {
        assert!(get(h, &format!("{PREFIX}/{}", file.path.display())).is_some());
    }
}

#[test]
fn a_writer_whose_lock_was_force_unlocked_cannot_overwrite_the_newer_state() {
    let run = Run::new(1);
    let h = &run.harness;
    let other = tempfile::tempdir().unwrap();
    plan_in_s3(&run, &[("t", "")], &[other.path()]);

    let first = run.spawn("first", &["apply", "e2e.toml", "--auto-approve"]);
    wait_for_remote_status(h, "s.t", "racing");
    let held: rallyctl::state::LockHolder =
        serde_json::from_slice(&get(h, &format!("{STATE_KEY}.lock")).unwrap()).unwrap();
    let unlock = rallyctl_in(
        &run,
        other.path(),
        &["force-unlock", &held.id, "e2e.toml", "--force"],
    );
    assert_eq!(unlock.status.code(), Some(0), "{}", text(&unlock));
    // Someone else takes the workspace and writes it: here, by destroying what it holds.
    let destroy = rallyctl_in(
        &run,
        other.path(),
        &["destroy", "e2e.toml", "--auto-approve"],
    );
    assert_eq!(destroy.status.code(), Some(0), "{}", text(&destroy));
    let theirs = remote_state(h).unwrap();

    let status = crate::support::providers::wait_child(first, STEP_TIMEOUT, "first apply");
    let (out, err) = run.printed("first");
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains(&format!(
            "state s3://{BUCKET}/{STATE_KEY} was written by another rallyctl since this one read it (its serial is now {})",
            theirs.serial
        )),
        "{out}{err}"
    );
    assert_eq!(
        remote_state(h).unwrap(),
        theirs,
        "the newer state was overwritten"
    );
    assert!(
        h.running_instances().is_empty(),
        "an instance was left running"
    );
}

#[test]
fn damaged_or_foreign_objects_in_the_prefix_are_refused_and_left_alone() {
    let run = Run::new(1);
    let h = &run.harness;
    plan_in_s3(&run, &[("t", "")], &[]);

    put(h, STATE_KEY, b"{\"not\": \"a state\"}");
    for args in [
        &["plan", "e2e.toml"][..],
        &["apply", "e2e.toml", "--auto-approve"],
    ] {
        let out = rallyctl_in(&run, run.dir.path(), args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains(&format!(
                "state file s3://{BUCKET}/{STATE_KEY} is not valid (no `version` number); it was left untouched"
            )),
            "{}",
            text(&out)
        );
    }
    assert_eq!(get(h, STATE_KEY).unwrap(), b"{\"not\": \"a state\"}");
    assert!(get(h, &format!("{STATE_KEY}.lock")).is_none(), "lock left");

    put(
        h,
        STATE_KEY,
        &serde_json::to_vec(&State::new("other")).unwrap(),
    );
    let out = rallyctl_in(&run, run.dir.path(), &["plan", "e2e.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("belongs to workspace `other`, not `e2e`"),
        "{}",
        text(&out)
    );

    // A results object rallyctl did not upload (no sha256 with it) is not read as a result.
    put(
        h,
        STATE_KEY,
        &serde_json::to_vec(&State::new("e2e")).unwrap(),
    );
    let stray = format!("{PREFIX}/results/e2e/20261202T000000Z-abcdef/s/t/report.csv");
    put(h, &stray, b"Metric,Task,Value,Unit\n");
    let out = rallyctl_in(&run, run.dir.path(), &["results", "e2e.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "s3://{BUCKET}/{stray} is refused: it carries no sha256, so rallyctl did not upload it"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(run.launches(), 0);
    assert_eq!(
        keys(h, PREFIX).len(),
        2,
        "objects were added: {:?}",
        keys(h, PREFIX)
    );

    // A state left in this directory is not silently passed over for an empty one in S3.
    let client = s3(h);
    h.block_on(async move {
        client
            .delete_object()
            .bucket(BUCKET)
            .key(STATE_KEY)
            .send()
            .await
    })
    .expect("DeleteObject");
    std::fs::create_dir_all(run.dir.path().join("state")).unwrap();
    std::fs::write(
        run.dir.path().join("state/e2e.state.json"),
        serde_json::to_vec(&State::new("e2e")).unwrap(),
    )
    .unwrap();
    let out = rallyctl_in(
        &run,
        run.dir.path(),
        &["plan", "e2e.toml", "--refresh=false"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "note: the workspace's state is s3://{BUCKET}/{STATE_KEY}, which holds none yet, while state/e2e.state.json is here: `rallyctl state push e2e.toml` moves it there"
        )),
        "{}",
        text(&out)
    );
}

/// The backend may live in another account: its own profile, and a role assumed from it, sign
/// its requests, while the instances keep the standard chain.
#[test]
fn a_backend_in_another_account_is_reached_through_its_profile_and_role() {
    let run = Run::new(1);
    let h = &run.harness;
    let plan = plan_in_s3(&run, &[("t", "")], &[]);
    let role = "arn:aws:iam::123456789012:role/perf-state-writer";
    let text_of = std::fs::read_to_string(&plan).unwrap().replace(
        &format!("region = \"{}\" }}", h.region),
        &format!(
            "region = \"{}\", profile = \"state\", role_arn = \"{role}\" }}",
            h.region
        ),
    );
    std::fs::write(&plan, text_of).unwrap();
    let config = run.dir.path().join("aws-config");
    std::fs::write(
        &config,
        "[profile state]\naws_access_key_id = STATEPROFILEKEY\naws_secret_access_key = secret\n",
    )
    .unwrap();
    let args = ["plan", "e2e.toml"];
    let out = run.output(
        run.command(&args)
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", run.dir.path().join("none")),
        &args,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let calls: Vec<_> = h
        .recorded_calls()
        .into_iter()
        .filter(|c| !c.from_harness)
        .collect();
    let assumed: Vec<_> = calls.iter().filter(|c| c.action == "AssumeRole").collect();
    assert_eq!(assumed.len(), 1, "{calls:?}");
    assert!(
        assumed[0].params.contains(&("RoleArn".into(), role.into())),
        "{:?}",
        assumed[0]
    );
    assert_eq!(assumed[0].access_key.as_deref(), Some("STATEPROFILEKEY"));
    // The EC2 checks of the plan still go out with the standard chain's key.
    assert!(
        calls
            .iter()
            .filter(|c| c.action.starts_with("Describe"))
            .all(|c| c.access_key.as_deref() == Some("testing")),
        "{calls:?}"
    );

    // An S3-compatible store named in the block alone, without AWS_ENDPOINT_URL: reached
    // path-style (`perf-state.127.0.0.1` resolves nowhere, nor does AWS's S3 from here).
    let with_endpoint = std::fs::read_to_string(&plan).unwrap().replace(
        "profile = \"state\"",
        &format!("profile = \"state\", endpoint = \"{}\"", h.moto_url),
    );
    std::fs::write(&plan, with_endpoint).unwrap();
    let args = ["plan", "e2e.toml", "--refresh=false"];
    let out = run.output(
        run.command(&args)
            .env_remove("AWS_ENDPOINT_URL")
            // The role is assumed where the chain says STS is.
            .env("AWS_ENDPOINT_URL_STS", &h.moto_url)
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", run.dir.path().join("none")),
        &args,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let assumed = h
        .recorded_calls()
        .into_iter()
        .filter(|c| c.action == "AssumeRole")
        .count();
    assert_eq!(assumed, 2, "the role was not assumed through the endpoint");
}

/// The run's plan with its backend reached through a fault proxy in front of moto's S3 (as an
/// S3-compatible store: `endpoint` in the block), in `region`; a local state of the workspace
/// with one collected file, for `state push`.
fn behind_proxy(run: &Run, proxy_args: &[&str], region: &str) -> FaultProxy {
    let h = &run.harness;
    let plan = plan_in_s3(run, &[("t", "")], &[]);
    let proxy = FaultProxy::start_with(&h.moto_url, &[], proxy_args, h.work.path());
    let text = std::fs::read_to_string(&plan).unwrap().replace(
        &format!("region = \"{}\" }}", h.region),
        &format!("region = \"{region}\", endpoint = \"{}\" }}", proxy.url),
    );
    std::fs::write(&plan, text).unwrap();
    let dir = run.dir.path();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::write(
        dir.join("state/e2e.state.json"),
        serde_json::to_vec(&State::new("e2e")).unwrap(),
    )
    .unwrap();
    let report = dir.join("results/e2e/20261202T100000Z-abcdef/s/t/report.csv");
    std::fs::create_dir_all(report.parent().unwrap()).unwrap();
    std::fs::write(&report, "Metric,Task,Value,Unit\n").unwrap();
    proxy
}

/// rallyctl in the run's directory.
fn offline(run: &Run, args: &[&str]) -> Output {
    rallyctl_in(run, run.dir.path(), args)
}

/// Without s3:ListBucket, S3 answers 403 for a missing object: the first load of a workspace
/// names the permission instead of failing with S3's bare "Access Denied"; a state there that
/// the caller may not read names s3:GetObject.
#[test]
fn a_refused_read_names_the_permission_that_lacks() {
    let run = Run::new(1);
    let h = &run.harness;
    let proxy = behind_proxy(&run, &["--s3-without-list-bucket"], &h.region);
    let lacks_list =
        "the caller lacks s3:ListBucket on arn:aws:s3:::perf-state, which the S3 backend needs";
    for args in [
        &["plan", "e2e.toml", "--refresh=false"][..],
        &["state", "push", "e2e.toml"],
    ] {
        let out = offline(&run, args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("cannot reach state s3://{BUCKET}/{STATE_KEY}: "))
                && text(&out).contains(lacks_list),
            "{}",
            text(&out)
        );
    }
    assert!(proxy.injected("GetObject") >= 2, "{:?}", proxy.report());
    assert!(get(h, STATE_KEY).is_none());
    drop(proxy);

    // With s3:ListBucket, a state the caller may not read is named with s3:GetObject.
    put(
        h,
        STATE_KEY,
        &serde_json::to_vec(&State::new("e2e")).unwrap(),
    );
    let proxy = FaultProxy::start(
        &h.moto_url,
        &["GetObject:AccessDenied:always"],
        h.work.path(),
    );
    let plan = run.dir.path().join("e2e.toml");
    let old = std::fs::read_to_string(&plan).unwrap();
    let at = old.find("endpoint = \"").unwrap() + "endpoint = \"".len();
    let end = at + old[at..].find('"').unwrap();
    std::fs::write(&plan, format!("{}{}{}", &old[..at], proxy.url, &old[end..])).unwrap();
    let out = offline(&run, &["plan", "e2e.toml", "--refresh=false"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "AccessDenied: Access Denied: the caller lacks s3:GetObject on arn:aws:s3:::{BUCKET}/{STATE_KEY}"
        )),
        "{}",
        text(&out)
    );
}

/// A bucket in another region than the backend block says: S3 answers 301 with the bucket's
/// region, which the SDK does not follow; rallyctl does, once, and says so.
#[test]
fn a_bucket_in_another_region_is_found() {
    let run = Run::new(1);
    let h = &run.harness;
    let proxy = behind_proxy(&run, &["--s3-bucket-region", &h.region], "ap-southeast-2");
    let push = offline(&run, &["state", "push", "e2e.toml"]);
    assert_eq!(push.status.code(), Some(0), "{}", text(&push));
    assert!(
        text(&push).contains(&format!(
            "note: bucket {BUCKET} is in {}, not ap-southeast-2: reached there (`region = \"{}\"` in the backend block saves the detour)",
            h.region, h.region
        )),
        "{}",
        text(&push)
    );
    assert_eq!(
        text(&push).matches("note: bucket").count(),
        1,
        "{}",
        text(&push)
    );
    assert_eq!(proxy.injected("PutObject"), 1, "{:?}", proxy.report());
    assert_eq!(remote_state(h).unwrap().serial, 1);
}

/// An S3-compatible store that refuses S3's flexible checksums gets none it does not require;
/// what it keeps is still checked, by reading it back. The lock is given back only while it is
/// the version this command made (moto honours If-Match on DeleteObject, as S3 does).
#[test]
fn a_store_without_checksums_is_written_and_read_back_and_the_lock_released_conditionally() {
    let run = Run::new(1);
    let h = &run.harness;
    let proxy = behind_proxy(&run, &["--s3-refuse-checksums"], &h.region);
    let push = offline(&run, &["state", "push", "e2e.toml"]);
    assert_eq!(push.status.code(), Some(0), "{}", text(&push));
    assert_eq!(proxy.injected("PutObject"), 0, "{:?}", proxy.report());
    let report = format!("{PREFIX}/results/e2e/20261202T100000Z-abcdef/s/t/report.csv");
    assert_eq!(get(h, &report).unwrap(), b"Metric,Task,Value,Unit\n");
    let calls = proxy.s3_calls();
    let put = calls
        .iter()
        .position(|(op, key, _)| op == "PutObject" && *key == report);
    let read_back = calls
        .iter()
        .rposition(|(op, key, _)| op == "GetObject" && *key == report);
    assert!(put.is_some() && read_back > put, "{calls:?}");
    let lock = format!("{STATE_KEY}.lock");
    let releases: Vec<_> = calls
        .iter()
        .filter(|(op, key, _)| op == "DeleteObject" && *key == lock)
        .collect();
    assert!(
        !releases.is_empty() && releases.iter().all(|(_, _, if_match)| *if_match),
        "{calls:?}"
    );
    assert!(get(h, &lock).is_none(), "lock left");
    assert_eq!(remote_state(h).unwrap().serial, 1);
}

/// `plan` names the S3 state on its first line, and the directory remembers the backend: the
/// same plan without its `[backend]` is refused here, naming it, rather than started afresh as
/// an empty local workspace.
#[test]
fn plan_names_the_s3_backend_and_the_directory_remembers_it() {
    let run = Run::new(1);
    let plan = plan_in_s3(&run, &[("t", "")], &[]);
    let out = rallyctl_in(
        &run,
        run.dir.path(),
        &["plan", "e2e.toml", "--refresh=false"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().next(),
        Some(format!("Workspace state: s3://{BUCKET}/{STATE_KEY}").as_str()),
        "{}",
        text(&out)
    );
    let text_of_plan = std::fs::read_to_string(&plan).unwrap();
    let (without, _) = text_of_plan.split_once("\n[backend]").unwrap();
    std::fs::write(&plan, without).unwrap();
    let out = rallyctl_in(
        &run,
        run.dir.path(),
        &["plan", "e2e.toml", "--refresh=false"],
    );
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("workspace `e2e` lives in s3://{BUCKET}/")),
        "{}",
        text(&out)
    );
    assert!(!run.dir.path().join("state/e2e.state.json").exists());
}
