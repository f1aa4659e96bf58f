//! Apply and destroy: walk the DAG with bounded parallelism and drive each test through its
//! lifecycle, writing every transition to state before the next step begins.
//!
//! Resume is apply again: a test recorded in progress (same configuration) continues from its
//! recorded step; an instance launched but not yet recorded is found by its tags and adopted;
//! a race still running is re-attached, never restarted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::address::{Address, slug};
use crate::graph::{Graph, Node};
use crate::plan::{Connect, Plan, Test};
use crate::planner::{Action, Changes};
use crate::provider::{
    InstanceInfo, InstanceState, LaunchRequest, Provider, TAG_ATTEMPT, TAG_LINEAGE, TAG_RUN,
    TAG_TEST, TAG_WORKSPACE,
};
use crate::remote::{EphemeralKey, RemoteError, Session, Target, tail};
use crate::state::{self, Instance, State, StateError, Status, Step, TestRecord};
use crate::templates::{ArtifactMap, Artifacts, METRICS_PASSWORD_ENV, Renderer, Secrets};
use crate::ui::Progress;

/// How long an instance may stay unreachable over SSH (after boot, or mid-race) before the
/// test is given up.
const UNREACHABLE_TIMEOUT: Duration = Duration::from_secs(600);
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1800);
/// One `race.sh wait` call blocks this long at most, well inside the one-hour limit of
/// connections through an Instance Connect Endpoint.
const WAIT_SLICE_SECS: u64 = 300;
const POLL_INTERVAL: Duration = Duration::from_secs(1);
const LOG_TAIL_LINES: usize = 40;

/// The state shared by all tests of an apply; every change is persisted before it returns.
#[derive(Clone)]
pub struct StateHandle {
    state: Arc<Mutex<State>>,
    path: Arc<PathBuf>,
}

impl StateHandle {
    pub fn new(state: State, path: PathBuf) -> Self {
        StateHandle {
            state: Arc::new(Mutex::new(state)),
            path: Arc::new(path),
        }
    }

    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.lock().expect("state lock"))
    }

    pub fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> Result<R, StateError> {
        let mut state = self.state.lock().expect("state lock");
        let r = f(&mut state);
        state::save(&self.path, &mut state)?;
        Ok(r)
    }

    fn record(&self, address: &Address, f: impl FnOnce(&mut TestRecord)) -> Result<(), StateError> {
        self.update(|s| {
            if let Some(r) = s.tests.get_mut(address) {
                f(r)
            }
        })
    }

    pub fn snapshot(&self) -> State {
        self.read(Clone::clone)
    }
}

/// A test that could not finish, and where.
#[derive(Debug)]
struct Failure {
    step: Step,
    error: String,
    log_tail: Option<String>,
}

/// Why a test stopped short of completion.
enum Stop {
    Failed(Failure),
    /// Ctrl-C: the test stays recorded at its step for a later apply to resume.
    Interrupted,
    /// Writing state failed: nothing more can be done safely.
    State(StateError),
}

impl From<StateError> for Stop {
    fn from(e: StateError) -> Self {
        Stop::State(e)
    }
}

fn failed(step: Step, error: impl ToString) -> Stop {
    Stop::Failed(Failure {
        step,
        error: error.to_string(),
        log_tail: None,
    })
}

/// Waits for instances to read `running` with one DescribeInstances per region per tick for
/// all of them, however many tests are booting.
struct Poller {
    waiting: Mutex<Vec<Waiter>>,
}

/// An instance someone waits on: region, id, and where to send it once running.
struct Waiter {
    region: String,
    id: String,
    reply: oneshot::Sender<Result<InstanceInfo, String>>,
}

impl Poller {
    async fn wait_running(&self, region: &str, id: &str) -> Result<InstanceInfo, String> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("poller lock").push(Waiter {
            region: region.to_owned(),
            id: id.to_owned(),
            reply: tx,
        });
        rx.await.map_err(|_| "apply is stopping".to_owned())?
    }

    async fn run<P: Provider>(&self, provider: &P) {
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let waiting = std::mem::take(&mut *self.waiting.lock().expect("poller lock"));
            if waiting.is_empty() {
                continue;
            }
            let mut by_region: BTreeMap<String, Vec<_>> = BTreeMap::new();
            for w in waiting {
                by_region.entry(w.region.clone()).or_default().push(w);
            }
            for (region, group) in by_region {
                let ids: Vec<String> = group.iter().map(|w| w.id.clone()).collect();
                let answer = provider.describe(&region, &ids).await;
                for Waiter {
                    region,
                    id,
                    reply: tx,
                } in group
                {
                    let found = answer
                        .as_ref()
                        .map(|infos| infos.iter().find(|i| i.id == id).cloned());
                    match found {
                        Ok(Some(info)) if info.state == InstanceState::Running => {
                            let _ = tx.send(Ok(info));
                        }
                        Ok(Some(info))
                            if !info.state.is_alive() || info.state == InstanceState::Stopped =>
                        {
                            let _ = tx.send(Err(format!(
                                "instance {id} is {:?} instead of running",
                                info.state
                            )));
                        }
                        Ok(None) => {
                            let _ = tx.send(Err(format!("instance {id} is not known to EC2")));
                        }
                        // Pending (or the call failed and was already retried): ask again next tick.
                        _ => self.waiting.lock().expect("poller lock").push(Waiter {
                            region,
                            id,
                            reply: tx,
                        }),
                    }
                }
            }
        }
    }
}

pub struct ApplyOptions {
    pub parallelism: usize,
}

struct Ctx<P: Provider> {
    provider: P,
    key: EphemeralKey,
    state: StateHandle,
    plan: Plan,
    artifacts: ArtifactMap,
    renderer: Renderer,
    run_id: String,
    known_hosts: PathBuf,
    results_root: PathBuf,
    poller: Poller,
    progress: Progress,
    cancel: CancellationToken,
}

/// What an apply did, for the summary and the exit code.
pub struct ApplyReport {
    pub completed: Vec<Address>,
    pub failed: Vec<(Address, Step, String, Option<String>)>,
    pub interrupted: bool,
    pub still_running: Vec<(Address, String)>,
}

/// A run id sorts by time and stays unique across machines.
pub fn new_run_id() -> String {
    format!(
        "{}-{}",
        Timestamp::now().strftime("%Y%m%dT%H%M%SZ"),
        &Uuid::new_v4().simple().to_string()[..6]
    )
}

fn client_token(lineage: Uuid, address: &Address, attempt: u32) -> String {
    let digest = Sha256::digest(format!("{lineage}\n{address}\n{attempt}"));
    hex::encode(digest)[..64].to_owned()
}

#[allow(clippy::too_many_arguments)]
pub async fn apply<P: Provider>(
    provider: P,
    plan: Plan,
    artifacts: ArtifactMap,
    renderer: Renderer,
    changes: &Changes,
    state: StateHandle,
    options: &ApplyOptions,
    progress: Progress,
    cancel: CancellationToken,
) -> anyhow::Result<ApplyReport> {
    let state_dir = state
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    std::fs::create_dir_all(&state_dir)?;
    let known_hosts = state_dir.join(format!("{}.known_hosts", slug(&plan.name)));
    let key = EphemeralKey::generate(&state_dir)?;
    let ctx = Arc::new(Ctx {
        provider,
        key,
        state,
        results_root: PathBuf::from("results").join(slug(&plan.name)),
        plan,
        artifacts,
        renderer,
        run_id: new_run_id(),
        known_hosts,
        poller: Poller {
            waiting: Mutex::default(),
        },
        progress,
        cancel,
    });

    // Tests that left the plan go first: they cost money and produce nothing.
    for change in changes
        .changes
        .iter()
        .filter(|c| c.action == Action::Terminate)
    {
        terminate_departed(&ctx, &change.address).await?;
    }

    let poller = {
        let ctx = ctx.clone();
        tokio::spawn(async move { ctx.poller.run(&ctx.provider).await })
    };
    let to_run: HashSet<&Address> = changes
        .changes
        .iter()
        .filter(|c| c.action != Action::Terminate)
        .map(|c| &c.address)
        .collect();
    let graph = Graph::compile(&ctx.plan)?;
    let global = Arc::new(Semaphore::new(options.parallelism.max(1)));
    let suite_limits: Vec<Option<Arc<Semaphore>>> = ctx
        .plan
        .suites
        .iter()
        .map(|s| s.parallelism.map(|n| Arc::new(Semaphore::new(n.get()))))
        .collect();
    let mut announced = HashSet::new();
    let mut walk = graph.walk();
    let mut tasks = JoinSet::new();
    let mut report = ApplyReport {
        completed: vec![],
        failed: vec![],
        interrupted: false,
        still_running: vec![],
    };
    loop {
        let mut progressed = false;
        for node in walk.take_ready() {
            progressed = true;
            let address = match graph.node(node) {
                Node::Test(address) if to_run.contains(address) && !ctx.cancel.is_cancelled() => {
                    address.clone()
                }
                _ => {
                    walk.complete(node);
                    continue;
                }
            };
            let suite_index = graph
                .suite_index(node)
                .expect("test nodes belong to a suite");
            let suite = &ctx.plan.suites[suite_index];
            if announced.insert(suite_index) {
                let n = suite
                    .tests
                    .iter()
                    .filter(|t| to_run.contains(&t.address))
                    .count();
                ctx.progress.suite(&suite.name, n);
            }
            let ctx = ctx.clone();
            let global = global.clone();
            let local = suite_limits[suite_index].clone();
            tasks.spawn(async move {
                let _global = global.acquire_owned().await.expect("semaphore open");
                let _local = match local {
                    Some(s) => Some(s.acquire_owned().await.expect("semaphore open")),
                    None => None,
                };
                let outcome = if ctx.cancel.is_cancelled() {
                    Err(Stop::Interrupted)
                } else {
                    run_test(&ctx, &address).await
                };
                (node, address, outcome)
            });
        }
        if progressed {
            continue;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (node, address, outcome) = joined?;
        walk.complete(node);
        let suite = address.suite().to_owned();
        let shown = address.to_string();
        match outcome {
            Ok(()) => {
                ctx.progress.finished(&suite, &shown, "completed");
                report.completed.push(address);
            }
            Err(Stop::Failed(f)) => {
                ctx.progress
                    .finished(&suite, &shown, &format!("failed at {}", f.step));
                report.failed.push((address, f.step, f.error, f.log_tail));
            }
            Err(Stop::Interrupted) => {
                ctx.progress.finished(&suite, &shown, "interrupted");
                report.interrupted = true;
            }
            Err(Stop::State(e)) => {
                poller.abort();
                return Err(e.into());
            }
        }
    }
    poller.abort();
    report.interrupted |= ctx.cancel.is_cancelled();
    report.still_running = ctx.state.read(|s| {
        s.tests
            .iter()
            .filter_map(|(a, r)| r.live_instance().map(|i| (a.clone(), i.id.clone())))
            .collect()
    });
    Ok(report)
}

/// Terminates the test's instance if it may still run, and records that it did.
async fn retire_instance<P: Provider>(ctx: &Ctx<P>, address: &Address) -> Result<(), Stop> {
    let Some(instance) = ctx.state.read(|s| {
        s.tests
            .get(address)
            .and_then(|r| r.live_instance().cloned())
    }) else {
        return Ok(());
    };
    ctx.provider
        .terminate(&instance.region, std::slice::from_ref(&instance.id))
        .await
        .map_err(|e| {
            failed(
                Step::Terminating,
                format!("cannot terminate {}: {e}", instance.id),
            )
        })?;
    ctx.state.record(address, TestRecord::mark_terminated)?;
    Ok(())
}

/// Terminates the instance of a test that left the plan.
async fn terminate_departed<P: Provider>(ctx: &Ctx<P>, address: &Address) -> anyhow::Result<()> {
    ctx.progress.step(&address.to_string(), "terminating");
    match retire_instance(ctx, address).await {
        Ok(()) => {}
        Err(Stop::State(e)) => return Err(e.into()),
        Err(Stop::Failed(f)) => anyhow::bail!("{address}: {}", f.error),
        Err(Stop::Interrupted) => anyhow::bail!("{address}: interrupted"),
    }
    ctx.progress
        .finished(address.suite(), &address.to_string(), "terminated");
    Ok(())
}

async fn run_test<P: Provider>(ctx: &Ctx<P>, address: &Address) -> Result<(), Stop> {
    let test = ctx.plan.test(address).expect("changes name planned tests");
    let artifacts = &ctx.artifacts[address];
    let resume = ctx.state.read(|s| {
        s.tests.get(address).and_then(|r| match r.status {
            Status::InProgress { step } if r.config_hash == artifacts.config_hash => Some(step),
            _ => None,
        })
    });
    let start = match resume {
        Some(step) => step,
        None => {
            start_attempt(ctx, test, artifacts).await?;
            Step::Launching
        }
    };
    match steps(ctx, test, artifacts, start).await {
        Ok(()) => Ok(()),
        Err(Stop::Failed(f)) => {
            ctx.state.record(address, |r| {
                r.set_status(Status::Failed {
                    step: f.step,
                    error: f.error.clone(),
                    log_tail: f.log_tail.clone(),
                })
            })?;
            // A failed test must not keep its instance: terminate it now (the watchdog is
            // only the last resort).
            match retire_instance(ctx, address).await {
                Err(Stop::Failed(not_terminated)) => ctx.progress.println(&format!(
                    "{address}: {}; `rallyctl destroy` will terminate it",
                    not_terminated.error
                )),
                Err(Stop::State(e)) => return Err(Stop::State(e)),
                Ok(()) | Err(Stop::Interrupted) => {}
            }
            Err(Stop::Failed(f))
        }
        Err(other) => Err(other),
    }
}

/// Opens a new attempt: retires the previous one's instance and records the intent to launch.
async fn start_attempt<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    artifacts: &Artifacts,
) -> Result<(), Stop> {
    let address = &test.address;
    retire_instance(ctx, address)
        .await
        .map_err(|stop| match stop {
            Stop::Failed(f) => failed(
                Step::Launching,
                format!("cannot retire the previous instance: {}", f.error),
            ),
            other => other,
        })?;
    let settings = (&test.settings).into();
    let race_command =
        crate::templates::race_command(&test.settings).map_err(|e| failed(Step::Launching, e))?;
    ctx.state.update(|s| {
        let previous_attempt = s.tests.get(address).map_or(0, |r| r.attempt);
        let mut record = TestRecord {
            config_hash: artifacts.config_hash.clone(),
            settings,
            race_command,
            status: Status::Pending,
            attempt: previous_attempt + 1,
            run_id: Some(ctx.run_id.clone()),
            race_id: Some(Uuid::new_v4()),
            instance: None,
            results: vec![],
            history: vec![],
        };
        record.set_status(Status::InProgress {
            step: Step::Launching,
        });
        s.tests.insert(address.clone(), record);
    })?;
    Ok(())
}

fn checkpoint<P: Provider>(ctx: &Ctx<P>, address: &Address, step: Step) -> Result<(), Stop> {
    if ctx.cancel.is_cancelled() {
        return Err(Stop::Interrupted);
    }
    ctx.state
        .record(address, |r| r.set_status(Status::InProgress { step }))?;
    ctx.progress.step(&address.to_string(), step.name());
    Ok(())
}

async fn steps<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    artifacts: &Artifacts,
    start: Step,
) -> Result<(), Stop> {
    let address = &test.address;
    let record = ctx.state.read(|st| st.tests[address].clone());
    let run_id = record.run_id.clone().unwrap_or_else(|| ctx.run_id.clone());
    ctx.progress.step(&address.to_string(), start.name());

    if start == Step::Launching {
        launch(ctx, test, artifacts, &record, &run_id).await?;
        checkpoint(ctx, address, Step::Booting)?;
    }
    let instance = ctx
        .state
        .read(|st| st.tests[address].instance.clone())
        .ok_or_else(|| failed(start, "state names no instance for this test"))?;
    // Resumed at terminating, the instance may be gone already: only terminating is left.
    if start < Step::Terminating {
        on_instance(ctx, test, artifacts, &record, &instance, &run_id, start).await?;
    }
    ctx.provider
        .terminate(&instance.region, std::slice::from_ref(&instance.id))
        .await
        .map_err(|e| failed(Step::Terminating, e))?;
    ctx.state.record(address, |r| {
        r.mark_terminated();
        r.set_status(Status::Completed);
    })?;
    Ok(())
}

/// Booting to collecting: everything done over SSH on a running instance.
async fn on_instance<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    artifacts: &Artifacts,
    record: &TestRecord,
    instance: &Instance,
    run_id: &str,
    start: Step,
) -> Result<(), Stop> {
    let address = &test.address;
    let s = &test.settings;
    let race_id = record.race_id.expect("attempts record a race id");
    // Booting (also on resume: the address and a working SSH connection are needed anyway).
    let info = ctx
        .poller
        .wait_running(&instance.region, &instance.id)
        .await
        .map_err(|e| failed(Step::Booting, e))?;
    let host = match s.connect {
        Connect::PublicIp => info.public_ip.clone(),
        Connect::PrivateIp => info.private_ip.clone(),
    }
    .ok_or_else(|| {
        failed(
            Step::Booting,
            format!(
                "instance {} has no {:?} address to connect to",
                instance.id, s.connect
            ),
        )
    })?;
    ctx.state.record(address, |r| {
        if let Some(i) = &mut r.instance {
            i.address = Some(host.clone());
        }
    })?;
    let mut session = Session::new(
        &ctx.provider,
        &ctx.key,
        Target {
            region: instance.region.clone(),
            instance_id: instance.id.clone(),
            host,
            port: s.ssh_port,
            user: s.ssh_user.to_string(),
            known_hosts: ctx.known_hosts.clone(),
        },
    );
    // The first connection pushes the key; sshd may take a while to answer after boot.
    retry_connection(
        ctx,
        &mut session,
        "true",
        b"",
        Duration::from_secs(30),
        Step::Booting,
    )
    .await?;

    let run_dir = shell_path(&format!(
        "{}/runs/{}/{}/{}/{}",
        s.remote_dir,
        slug(&ctx.plan.name),
        slug(run_id),
        address.path().display(),
        record.attempt
    ))?;
    let mut step = start.max(Step::Installing);
    if step == Step::Installing {
        checkpoint(ctx, address, Step::Installing)?;
        install(ctx, test, artifacts, &mut session, &run_dir, run_id).await?;
        step = Step::Racing;
        checkpoint(ctx, address, Step::Racing)?;
    }
    if step == Step::Racing {
        race(ctx, &mut session, &run_dir, race_id).await?;
        step = Step::Collecting;
        checkpoint(ctx, address, Step::Collecting)?;
    }
    if step == Step::Collecting {
        collect(ctx, address, &mut session, &run_dir, run_id).await?;
        checkpoint(ctx, address, Step::Terminating)?;
    }
    Ok(())
}

/// `remote_dir` may be relative to the SSH user's home; quote it for the remote shell.
fn shell_path(path: &str) -> Result<String, Stop> {
    crate::templates::shell_quote(path).map_err(|e| failed(Step::Installing, e))
}

async fn launch<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    artifacts: &Artifacts,
    record: &TestRecord,
    run_id: &str,
) -> Result<(), Stop> {
    let s = &test.settings;
    let address = test.address.to_string();
    let (workspace, lineage, attempt) = (
        ctx.plan.name.clone(),
        ctx.state.read(|st| st.lineage),
        record.attempt.to_string(),
    );
    // moto ignores ClientToken and a crash can fall between RunInstances and recording its
    // answer, so an instance of this very attempt is looked up by its tags first.
    let lineage_s = lineage.to_string();
    let found = ctx
        .provider
        .find_by_tags(
            &s.region,
            &[
                (TAG_WORKSPACE, workspace.as_str()),
                (TAG_LINEAGE, lineage_s.as_str()),
                (TAG_TEST, address.as_str()),
                (TAG_ATTEMPT, attempt.as_str()),
            ],
        )
        .await
        .map_err(|e| failed(Step::Launching, e))?;
    let info = match found.into_iter().next() {
        Some(existing) => {
            ctx.progress.println(&format!(
                "{address}: adopting {} launched by an earlier apply",
                existing.id
            ));
            existing
        }
        None => {
            let mut tags: BTreeMap<String, String> = s
                .tags
                .iter()
                .filter(|(k, _)| !k.starts_with("rallyctl:"))
                .map(|(k, v)| (k.to_owned(), v.to_string()))
                .collect();
            tags.insert(TAG_WORKSPACE.into(), workspace.clone());
            tags.insert(TAG_LINEAGE.into(), lineage_s.clone());
            tags.insert(TAG_TEST.into(), address.clone());
            tags.insert(TAG_RUN.into(), run_id.to_owned());
            tags.insert(TAG_ATTEMPT.into(), attempt.clone());
            tags.insert(
                "Name".into(),
                format!("rallyctl {workspace} {address}")
                    .chars()
                    .take(256)
                    .collect(),
            );
            ctx.provider
                .launch(&LaunchRequest {
                    region: s.region.to_string(),
                    ami: s.ami.to_string(),
                    instance_type: s.instance_type.to_string(),
                    subnet_id: s.subnet_id.as_deref().map(str::to_owned),
                    security_group_ids: s
                        .security_group_ids
                        .iter()
                        .map(|g| g.to_string())
                        .collect(),
                    user_data: artifacts.user_data.to_string(),
                    tags,
                    client_token: client_token(lineage, &test.address, record.attempt),
                })
                .await
                .map_err(|e| failed(Step::Launching, e))?
        }
    };
    ctx.state.record(&test.address, |r| {
        r.instance = Some(Instance {
            id: info.id.clone(),
            region: info.region.clone(),
            address: None,
            launched_at: Timestamp::now(),
            terminated_at: None,
        })
    })?;
    Ok(())
}

/// Uploads the rendered scripts, rally.ini, JSON parameters and track, then runs the install.
async fn install<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    artifacts: &Artifacts,
    session: &mut Session<'_, P>,
    run_dir: &str,
    run_id: &str,
) -> Result<(), Stop> {
    let fail = |e: &dyn std::fmt::Display| failed(Step::Installing, e);
    let rally_ini = ctx
        .renderer
        .rally_ini(&test.settings, Secrets::FromEnv)
        .map_err(|e| fail(&e))?;
    let user_tags = serde_json::to_string_pretty(&serde_json::json!({
        "rallyctl_workspace": ctx.plan.name,
        "rallyctl_run": run_id,
        "rallyctl_test": test.address.to_string(),
    }))
    .expect("JSON serializes");
    let mut files: Vec<(PathBuf, Vec<u8>, u32)> = vec![
        (
            "install.sh".into(),
            artifacts.install.as_bytes().to_vec(),
            0o755,
        ),
        ("race.sh".into(), artifacts.race.as_bytes().to_vec(), 0o755),
        ("rally.ini".into(), rally_ini.into_bytes(), 0o600),
        (
            "track-params.json".into(),
            crate::templates::params_json(&test.settings.track_params).into_bytes(),
            0o644,
        ),
        (
            "car-params.json".into(),
            crate::templates::params_json(&test.settings.car_params).into_bytes(),
            0o644,
        ),
        ("user-tags.json".into(), user_tags.into_bytes(), 0o644),
    ];
    if let crate::plan::TrackSource::Path(dir) = &test.settings.track {
        for rel in crate::templates::list_files(dir).map_err(|e| fail(&e))? {
            let bytes = std::fs::read(dir.join(&rel))
                .map_err(|e| fail(&format!("cannot read {}: {e}", dir.join(&rel).display())))?;
            files.push((Path::new("track").join(rel), bytes, 0o644));
        }
    }
    let bundle = tar_bundle(&files).map_err(|e| fail(&e))?;
    let upload = format!("mkdir -p {run_dir} && tar -C {run_dir} -xf -");
    retry_connection(
        ctx,
        session,
        &upload,
        &bundle,
        Duration::from_secs(300),
        Step::Installing,
    )
    .await?;
    match session
        .exec(&format!("bash {run_dir}/install.sh"), b"", INSTALL_TIMEOUT)
        .await
    {
        Ok(_) => Ok(()),
        Err(RemoteError::Failed { code, stderr, .. }) => Err(Stop::Failed(Failure {
            step: Step::Installing,
            error: format!("install.sh exited with {code:?}"),
            log_tail: Some(stderr),
        })),
        Err(e) => Err(fail(&e)),
    }
}

fn tar_bundle(files: &[(PathBuf, Vec<u8>, u32)]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, path, bytes.as_slice())?;
    }
    builder.into_inner()
}

/// Runs a command that is safe to repeat, retrying while the connection is the problem.
async fn retry_connection<P: Provider>(
    ctx: &Ctx<P>,
    session: &mut Session<'_, P>,
    command: &str,
    input: &[u8],
    timeout: Duration,
    step: Step,
) -> Result<Vec<u8>, Stop> {
    let deadline = Instant::now() + UNREACHABLE_TIMEOUT;
    let mut delay = Duration::from_millis(500);
    loop {
        match session.exec(command, input, timeout).await {
            Ok(out) => return Ok(out.stdout),
            Err(e) if e.is_connection() && Instant::now() < deadline => {
                // A connection that keeps failing may mean the instance is gone.
                if let Some(gone) = instance_gone(ctx, session).await {
                    return Err(failed(step, gone));
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.cancel.cancelled() => return Err(Stop::Interrupted),
                }
                delay = (delay * 2).min(Duration::from_secs(15));
            }
            Err(e) => {
                return Err(failed(
                    step,
                    format!("{e} (instance {})", session.target.instance_id),
                ));
            }
        }
    }
}

async fn instance_gone<P: Provider>(ctx: &Ctx<P>, session: &Session<'_, P>) -> Option<String> {
    let t = &session.target;
    match ctx
        .provider
        .describe(&t.region, std::slice::from_ref(&t.instance_id))
        .await
    {
        Ok(infos) => match infos.iter().find(|i| i.id == t.instance_id) {
            Some(i) if i.state.is_alive() => None,
            Some(i) => Some(format!(
                "instance {} was terminated outside rallyctl (it reads {:?})",
                t.instance_id, i.state
            )),
            None => Some(format!("instance {} no longer exists", t.instance_id)),
        },
        Err(_) => None,
    }
}

/// Starts the race unless it already runs, then waits for it, reconnecting as needed.
async fn race<P: Provider>(
    ctx: &Ctx<P>,
    session: &mut Session<'_, P>,
    run_dir: &str,
    race_id: Uuid,
) -> Result<(), Stop> {
    let password = std::env::var(METRICS_PASSWORD_ENV).unwrap_or_default();
    retry_connection(
        ctx,
        session,
        &format!("bash {run_dir}/race.sh start {race_id}"),
        format!("{password}\n").as_bytes(),
        Duration::from_secs(60),
        Step::Racing,
    )
    .await?;
    let wait_command = format!("bash {run_dir}/race.sh wait {WAIT_SLICE_SECS}");
    loop {
        let wait = retry_connection(
            ctx,
            session,
            &wait_command,
            b"",
            Duration::from_secs(WAIT_SLICE_SECS + 60),
            Step::Racing,
        );
        let out = tokio::select! {
            out = wait => out?,
            _ = ctx.cancel.cancelled() => return Err(Stop::Interrupted),
        };
        let answer = String::from_utf8_lossy(&out).trim().to_owned();
        match answer.strip_prefix("exited ") {
            Some("0") => return Ok(()),
            Some(code) => {
                return Err(Stop::Failed(Failure {
                    step: Step::Racing,
                    error: format!("esrally exited with {code}"),
                    log_tail: race_log_tail(session, run_dir).await,
                }));
            }
            None if answer == "running" => continue,
            None => {
                return Err(Stop::Failed(Failure {
                    step: Step::Racing,
                    error: format!(
                        "the race stopped without an exit code ({answer}): was the instance rebooted?"
                    ),
                    log_tail: race_log_tail(session, run_dir).await,
                }));
            }
        }
    }
}

async fn race_log_tail<P: Provider>(session: &mut Session<'_, P>, run_dir: &str) -> Option<String> {
    session
        .exec(
            &format!("bash {run_dir}/race.sh tail {LOG_TAIL_LINES}"),
            b"",
            Duration::from_secs(60),
        )
        .await
        .ok()
        .map(|o| tail(&String::from_utf8_lossy(&o.stdout), LOG_TAIL_LINES))
}

/// Brings the report, race.json and logs home and records their sha256.
async fn collect<P: Provider>(
    ctx: &Ctx<P>,
    address: &Address,
    session: &mut Session<'_, P>,
    run_dir: &str,
    run_id: &str,
) -> Result<(), Stop> {
    let bytes = retry_connection(
        ctx,
        session,
        &format!("bash {run_dir}/race.sh collect"),
        b"",
        Duration::from_secs(600),
        Step::Collecting,
    )
    .await?;
    let dir = ctx.results_root.join(slug(run_id)).join(address.path());
    let files = unpack(&bytes, &dir).map_err(|e| {
        failed(
            Step::Collecting,
            format!("cannot store results in {}: {e}", dir.display()),
        )
    })?;
    if !files.iter().any(|f| f.path.ends_with("report.csv")) {
        return Err(failed(Step::Collecting, "the race left no report.csv"));
    }
    ctx.state.record(address, |r| r.results = files)?;
    // An error rate above zero is no clean result, though the files are kept for a look.
    match error_rate_problem(ctx, address) {
        Some(problem) => Err(failed(Step::Racing, problem)),
        None => Ok(()),
    }
}

fn unpack(bytes: &[u8], dir: &Path) -> std::io::Result<Vec<state::ResultFile>> {
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(bytes);
    let mut files = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let rel = entry.path()?.into_owned();
        // unpack_in refuses paths that climb out of `dir`.
        if !entry.unpack_in(dir)? {
            continue;
        }
        let path = dir.join(&rel);
        let content = std::fs::read(&path)?;
        files.push(state::ResultFile {
            path: path
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect(),
            sha256: hex::encode(Sha256::digest(&content)),
            bytes: content.len() as u64,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Reads the collected CSV report's `error rate` rows.
fn error_rate_problem<P: Provider>(ctx: &Ctx<P>, address: &Address) -> Option<String> {
    let report = ctx.state.read(|s| {
        s.tests[address]
            .results
            .iter()
            .find(|f| f.path.ends_with("report.csv"))
            .map(|f| f.path.clone())
    })?;
    let text = std::fs::read_to_string(report).ok()?;
    let bad: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split(',').collect();
            match cols.as_slice() {
                ["error rate", task, value, ..] => {
                    let v: f64 = value.parse().ok()?;
                    (v > 0.0).then(|| format!("{task} {v}%"))
                }
                _ => None,
            }
        })
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "requests failed during the race (error rate: {})",
            bad.join(", ")
        )
    })
}

/// What destroy will terminate.
pub struct DestroyTarget {
    pub id: String,
    pub region: String,
    /// The test it belongs to, when state knows it; none for a leaked instance.
    pub address: Option<Address>,
}

/// Instances of the workspace still alive: from state, and leaked ones found by their tags.
pub async fn destroy_targets<P: Provider>(
    provider: &P,
    state: &State,
    regions: &HashSet<String>,
) -> anyhow::Result<Vec<DestroyTarget>> {
    let mut targets: Vec<DestroyTarget> = Vec::new();
    let mut by_region: HashMap<String, Vec<(Address, String)>> = HashMap::new();
    for (address, record) in &state.tests {
        if let Some(i) = record.live_instance() {
            by_region
                .entry(i.region.clone())
                .or_default()
                .push((address.clone(), i.id.clone()));
        }
    }
    let mut regions: Vec<String> = regions.iter().chain(by_region.keys()).cloned().collect();
    regions.sort();
    regions.dedup();
    for region in regions {
        let known = by_region.remove(&region).unwrap_or_default();
        let ids: Vec<String> = known.iter().map(|(_, id)| id.clone()).collect();
        let alive: HashSet<String> = if ids.is_empty() {
            HashSet::new()
        } else {
            provider
                .describe(&region, &ids)
                .await?
                .into_iter()
                .filter(|i| i.state.is_alive())
                .map(|i| i.id)
                .collect()
        };
        for (address, id) in known.into_iter().filter(|(_, id)| alive.contains(id)) {
            targets.push(DestroyTarget {
                id,
                region: region.clone(),
                address: Some(address),
            });
        }
        for leaked in provider
            .find_by_tags(&region, &[(TAG_WORKSPACE, &state.workspace)])
            .await?
        {
            if !targets.iter().any(|t| t.id == leaked.id) {
                targets.push(DestroyTarget {
                    id: leaked.id,
                    region: region.clone(),
                    address: None,
                });
            }
        }
    }
    Ok(targets)
}

/// Terminates the targets, waits until EC2 reads them terminated, and records it. Returns the
/// ids still not terminated when the wait ran out.
pub async fn destroy<P: Provider>(
    provider: &P,
    state: &StateHandle,
    targets: &[DestroyTarget],
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let mut by_region: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for t in targets {
        by_region.entry(&t.region).or_default().push(t.id.clone());
    }
    for (region, ids) in &by_region {
        provider.terminate(region, ids).await?;
    }
    let deadline = Instant::now() + timeout;
    let mut remaining: Vec<String> = targets.iter().map(|t| t.id.clone()).collect();
    while !remaining.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for (region, ids) in &by_region {
            let ids: Vec<String> = ids
                .iter()
                .filter(|i| remaining.contains(i))
                .cloned()
                .collect();
            if ids.is_empty() {
                continue;
            }
            for info in provider.describe(region, &ids).await? {
                if info.state != InstanceState::Terminated {
                    still.push(info.id);
                }
            }
        }
        remaining = still;
        if !remaining.is_empty() {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    state.update(|s| {
        for t in targets.iter().filter(|t| !remaining.contains(&t.id)) {
            let Some(record) = t.address.as_ref().and_then(|a| s.tests.get_mut(a)) else {
                continue;
            };
            record.mark_terminated();
            if let Status::InProgress { step } = record.status {
                record.set_status(Status::Failed {
                    step,
                    error: "its instance was terminated by `rallyctl destroy`".into(),
                    log_tail: None,
                });
            }
        }
    })?;
    Ok(remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_are_64_characters_and_differ_per_attempt() {
        let a = Address::new("s", "t").unwrap();
        let l = Uuid::new_v4();
        let t1 = client_token(l, &a, 1);
        assert_eq!(t1.len(), 64);
        assert!(t1.is_ascii());
        assert_eq!(t1, client_token(l, &a, 1));
        assert_ne!(t1, client_token(l, &a, 2));
    }

    #[test]
    fn unpacking_refuses_paths_outside_the_results_directory() {
        let files = vec![
            (
                PathBuf::from("report.csv"),
                b"Metric,Task,Value,Unit\n".to_vec(),
                0o644,
            ),
            (PathBuf::from("sub/race.log"), b"log".to_vec(), 0o644),
        ];
        let bundle = tar_bundle(&files).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = unpack(&bundle, dir.path()).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].sha256,
            hex::encode(Sha256::digest(b"Metric,Task,Value,Unit\n"))
        );

        let mut evil = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        // Bypasses the builder's own path check, as a hostile instance could.
        header.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../escape.tx");
        header.set_cksum();
        evil.append(&header, &b"x"[..]).unwrap();
        let evil = evil.into_inner().unwrap();
        let inner = dir.path().join("inner");
        let out = unpack(&evil, &inner).unwrap();
        assert!(out.is_empty());
        assert!(!dir.path().join("escape.tx").exists());
    }
}
