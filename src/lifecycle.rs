//! The lifecycle of one test, or of the variants of one sharing a machine (a single test is a
//! group of one), as one state machine with one function per step:
//!
//! `launching ▶ booting ▶ installing ▶ racing ▶ collecting ▶ terminating ▶ completed`
//!
//! ([`acquire`], [`reach`], [`install`], [`race`], [`collect`], [`release`]), or `failed` from
//! any step. A test that races more than once ([`Repeat`](crate::plan::Repeat)) goes round again after collecting:
//! to installing on the same machine (`repeat_on = "same"`), or through terminating to
//! launching a fresh one; each repetition opens with one state write ([`next_repetition`]).
//! Each step is written to state before it begins, so a killed apply resumes at the step it
//! was in: a machine already got is found again, a running race is re-attached, never
//! restarted. Whether to resume or start a new attempt is the planner's decision
//! ([`Action::Resume`]); the lifecycle carries it out.
//!
//! It speaks to machines only through the [`Provider`] trait and [`remote`]: it knows no cloud.

mod cluster;

use std::path::PathBuf;
use std::time::Duration;

// tokio's clock, not std's: the simulation (`tests/simulation.rs`) pauses it, and a retry's
// deadline must pass in its time.
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::address::{Address, slug};
use crate::backend::StateHandle;
use crate::plan::{Plan, RepeatOn, Settings, Test};
use crate::planner::{Action, Handoff};
use crate::provider::{Acquire, AcquireError, Provider, Reachable};
use crate::remote::{self, RemoteError, tail};
use crate::results::layout;
use crate::staging;
use crate::state::{
    Handover, Machine, RecordedSettings, Repetition, ResultFile, StateError, Status, Step, Taken,
    TestRecord,
};
use crate::templates::{ArtifactMap, Artifacts, METRICS_PASSWORD_ENV, Renderer};
use crate::ui::Progress;

const INSTALL_TIMEOUT: Duration = Duration::from_secs(1800);
/// One `race.sh wait` call blocks this long at most, well inside the one-hour limit of
/// connections through an EC2 Instance Connect Endpoint.
const WAIT_SLICE_SECS: u64 = 300;
const LOG_TAIL_LINES: usize = 40;
/// `timeout` exits 124 when the race ran out of time.
const TIMED_OUT: &str = "124";

/// A test that could not finish, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub step: Step,
    pub error: String,
    pub log_tail: Option<String>,
    /// The machine's provider took it back (an EC2 spot interruption): [`run`] races again
    /// on another machine; elsewhere it is a failure like any other.
    pub reclaimed: bool,
    /// Where the failed race's logs were brought home to.
    pub logs: Option<PathBuf>,
}

/// Why a test stopped short of completion.
#[derive(Debug)]
pub enum Stop {
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

fn failure(step: Step, error: impl ToString) -> Failure {
    Failure {
        step,
        error: error.to_string(),
        log_tail: None,
        reclaimed: false,
        logs: None,
    }
}

fn failed(step: Step, error: impl ToString) -> Stop {
    Stop::Failed(failure(step, error))
}

/// What every test of an apply shares.
pub struct Ctx<P: Provider> {
    pub provider: P,
    pub state: StateHandle,
    pub plan: Plan,
    pub artifacts: ArtifactMap,
    pub renderer: Renderer,
    pub run_id: String,
    pub results_root: PathBuf,
    pub progress: Progress,
    pub cancel: CancellationToken,
    /// Warm reuse, as the planner paired the tests.
    pub handoffs: Vec<Handoff>,
    /// The prices machines are recorded with, looked up before the apply began.
    pub prices: crate::cost::Prices,
}

/// A machine that answers: what a step after booting runs its commands on.
pub(crate) struct Conn {
    pub(crate) machine: Machine,
    pub(crate) reachable: Reachable,
}

/// Where a test of the plan starts, as the planner decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new attempt that keeps the races recorded for this configuration: they are samples
    /// of it, and the attempt races only the missing repetitions.
    NewAttempt,
    /// A new attempt whose races start over: the configuration changed, or a replacement was
    /// asked for.
    StartOver,
    Resume(Step),
}

impl Start {
    /// The start of a test the planner gave `action`; none for a test that left the plan.
    pub fn of(action: Action) -> Option<Start> {
        match action {
            Action::Run => Some(Start::NewAttempt),
            Action::Rerun => Some(Start::StartOver),
            Action::Resume { step } => Some(Start::Resume(step)),
            Action::Terminate => None,
        }
    }
}

/// Runs one test of the plan, or the variants of one, from the start the planner gave each
/// (`group`, in plan order): one state machine for both, a single test being a group of one.
/// The group shares one machine, got in its first member's name (or the one a resumed member
/// holds); round by round each member races once, A B A B, so that all see the same hardware
/// at nearly the same time, and the machine is given back once, when all are done (a single
/// test's may be kept for a later suite's instead). A member whose race fails drops out,
/// keeping its finished races; the others go on. A machine its provider reclaimed is given
/// back and the members that have races left go round again on a new one ([`race_again`]).
/// With `repeat_on = "fresh"` each round ends with the machine given back and the next one
/// races on a fresh machine. Each member is recorded completed or failed, or left at its
/// step when interrupted; returns each one's outcome.
pub async fn run<P: Provider>(
    ctx: &Ctx<P>,
    group: &[(&Test, Start)],
) -> Vec<(Address, Result<(), Stop>)> {
    let mut outcomes = Vec::new();
    let live = open_attempts(ctx, group, &mut outcomes).await;
    let mut racing = Vec::new();
    for test in live.iter().copied() {
        match record_of(ctx, &test.address) {
            // A member stopped between its last fresh machine and the next one.
            Ok(r)
                if r.status
                    == (Status::InProgress {
                        step: Step::Terminating,
                    }) =>
            {
                if r.repetition() < test.repeat.count.get() {
                    racing.extend(to_fresh(ctx, &live, &[test], &mut outcomes).await);
                }
            }
            Ok(_) => racing.push(test),
            Err(stop) => outcomes.push((test.address.clone(), Err(stop))),
        }
    }
    // Variants resumed at installing on their group's cluster may have started their nodes
    // before the apply stopped: the member that races first would find their ports taken.
    // They are ended once the cluster answers; each member's turn starts its own again.
    let mut waiting: Vec<&Test> = (group.iter())
        .filter(|(t, start)| {
            group.len() > 1
                && t.settings.cluster.is_some()
                && *start == Start::Resume(Step::Installing)
        })
        .map(|(t, _)| *t)
        .collect();
    while !racing.is_empty() {
        let rounds = match share_machine(ctx, &racing).await {
            Ok(reachable) => match stop_waiting(ctx, &mut waiting).await {
                Ok(()) => race_rounds(ctx, &racing, reachable, &mut outcomes).await,
                Err(stop) => Rounds::Lost(stop, racing.clone()),
            },
            Err(stop) => Rounds::Lost(stop, racing.clone()),
        };
        racing = match rounds {
            Rounds::Done => vec![],
            Rounds::Fresh(more) => to_fresh(ctx, &live, &more, &mut outcomes).await,
            Rounds::Lost(Stop::Failed(f), unfinished) => {
                let f = reclaimed_first(ctx, &unfinished, f).await;
                let again = match f.reclaimed {
                    true => race_again(ctx, &live, &unfinished, f).await,
                    false => Err(Stop::Failed(f)),
                };
                match again {
                    Ok(()) => unfinished,
                    Err(Stop::Failed(f)) => {
                        for test in unfinished {
                            let outcome = drop_out(ctx, test, f.clone()).await;
                            outcomes.push((test.address.clone(), Err(outcome)));
                        }
                        vec![]
                    }
                    Err(stop) => {
                        outcomes.push((unfinished[0].address.clone(), Err(stop)));
                        return outcomes;
                    }
                }
            }
            // Ctrl-C, or state that cannot be written: every member stays at its step.
            Rounds::Lost(stop, unfinished) => {
                outcomes.push((unfinished[0].address.clone(), Err(stop)));
                return outcomes;
            }
            Rounds::Stopped => return outcomes,
        };
    }
    let done: Vec<&Test> = live
        .iter()
        .copied()
        .filter(|t| at_step(ctx, t, Step::Terminating))
        .collect();
    let given_back = match give_back(ctx, &live, &done).await {
        Ok(()) => Ok(()),
        Err(Stop::Failed(f)) => Err(f),
        // State that cannot be written: every member stays at its step.
        Err(stop) => {
            if let Some(test) = live.first() {
                outcomes.push((test.address.clone(), Err(stop)));
            }
            return outcomes;
        }
    };
    for test in &done {
        let outcome = match &given_back {
            Ok(()) => ctx
                .state
                .record(&test.address, |r| r.set_status(Status::Completed))
                .map_err(Stop::State),
            Err(f) => Err(failed_as_recorded(ctx, &test.address, f.clone())),
        };
        outcomes.push((test.address.clone(), outcome));
    }
    if let (Err(f), true, Some(test)) = (&given_back, done.is_empty(), live.first()) {
        ctx.progress.println(&format!(
            "{}: {}; `rallyctl destroy` will release it",
            test.address, f.error
        ));
    }
    outcomes
}

/// Ends what the `waiting` members left running on their cluster, once. Best effort: a node
/// that cannot be stopped is said, and makes the start of another on its machine fail (never
/// race it); Ctrl-C or state that cannot be written stops the group.
async fn stop_waiting<P: Provider>(ctx: &Ctx<P>, waiting: &mut Vec<&Test>) -> Result<(), Stop> {
    for test in waiting.drain(..) {
        match end_runs(ctx, &test.address).await {
            Ok(()) => {}
            Err(Stop::Failed(f)) => ctx.progress.println(&format!(
                "{}: the nodes it started before cannot be stopped: {}",
                test.address, f.error
            )),
            Err(stop) => return Err(stop),
        }
    }
    Ok(())
}

/// Opens the new attempts of `group` (a resumed member goes on with its own); the members
/// that go on, in order. A resumed member's machine is the group's: a new attempt of another
/// must not give it back, only stop holding it.
async fn open_attempts<'t, P: Provider>(
    ctx: &Ctx<P>,
    group: &[(&'t Test, Start)],
    outcomes: &mut Vec<(Address, Result<(), Stop>)>,
) -> Vec<&'t Test> {
    let group_machine = ctx.state.read(|s| {
        group
            .iter()
            .filter(|(_, start)| matches!(start, Start::Resume(_)))
            .find_map(|(t, _)| Some(s.tests.get(&t.address)?.live_machine()?.id.clone()))
    });
    let mut live = Vec::new();
    for (test, start) in group {
        let opened = match start {
            Start::Resume(step) => {
                ctx.progress.step(&test.address.to_string(), step.name());
                Ok(())
            }
            Start::NewAttempt | Start::StartOver => {
                match detach(ctx, test, group_machine.as_deref()).await {
                    Ok(()) => {
                        let artifacts = &ctx.artifacts[&test.address];
                        start_attempt(ctx, test, artifacts, *start == Start::NewAttempt).await
                    }
                    Err(stop) => Err(stop),
                }
            }
        };
        if admitted(ctx, test, opened, outcomes).await {
            live.push(*test);
        }
    }
    live
}

/// A member about to open a new attempt stops holding the group's machine (`group_machine`,
/// which a resumed member races on) without giving it back. What its earlier attempt may have
/// left running there is ended first: a race would run beside the group's next one, and a
/// cluster's nodes would hold the ports it needs; once let go of, no record would name them.
async fn detach<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    group_machine: Option<&str>,
) -> Result<(), Stop> {
    let shares = ctx.state.read(|s| {
        (s.tests.get(&test.address))
            .and_then(|r| r.live_machine())
            .is_some_and(|m| Some(m.id.as_str()) == group_machine)
    });
    if !shares {
        return Ok(());
    }
    end_runs(ctx, &test.address)
        .await
        .map_err(|stop| match stop {
            Stop::Failed(f) => failed(
                Step::Launching,
                format!(
                    "what its earlier attempt runs on the group's machines cannot be stopped: {}",
                    f.error
                ),
            ),
            other => other,
        })?;
    ctx.state.record(&test.address, TestRecord::mark_released)?;
    Ok(())
}

/// Ends every process the attempt of `address` runs on the machines its record holds (its
/// race; a cluster's nodes and daemons): each names its run directory there. The machines
/// are not given back.
async fn end_runs<P: Provider>(ctx: &Ctx<P>, address: &Address) -> Result<(), Stop> {
    let step = Step::Launching;
    let record = record_of(ctx, address)?;
    let settings = recorded(&record.settings, step).map_err(Stop::Failed)?;
    for (machine, role) in record.live_machines() {
        let Some(run_dir) = &machine.run_dir else {
            continue;
        };
        let settings = role.map_or_else(|| settings.clone(), |role| role.settings(&settings));
        let reachable = reachable(&ctx.provider, &ctx.cancel, machine, &settings).await?;
        let conn = Conn {
            machine: machine.clone(),
            reachable,
        };
        let command =
            remote::stop_run_command(run_dir, remote::STOP_WAIT).map_err(|e| failed(step, e))?;
        let timeout = remote::STOP_WAIT + Duration::from_secs(60);
        run_with(
            &ctx.provider,
            &ctx.cancel,
            &settings,
            &conn,
            &command,
            b"",
            timeout,
            step,
        )
        .await?;
    }
    Ok(())
}

/// Whether a member whose attempt or repetition was just `opened` goes on; one that cannot
/// has its outcome entered (a failure dropping it out of the group, as [`drop_out`] records).
async fn admitted<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    opened: Result<(), Stop>,
    outcomes: &mut Vec<(Address, Result<(), Stop>)>,
) -> bool {
    let stop = match opened {
        Ok(()) => return true,
        Err(Stop::Failed(f)) => drop_out(ctx, test, f).await,
        Err(stop) => stop,
    };
    outcomes.push((test.address.clone(), Err(stop)));
    false
}

/// How rounds on one machine ended.
enum Rounds<'t> {
    /// Every member raced its repetitions, or dropped out.
    Done,
    /// These members race their next repetition on a fresh machine (`repeat_on = "fresh"`).
    Fresh(Vec<&'t Test>),
    /// The machine failed the group (getting or reaching it, or a race on a machine that may
    /// have been reclaimed): these members had races left.
    Lost(Stop, Vec<&'t Test>),
    /// Ctrl-C, or state that cannot be written: the outcome says which.
    Stopped,
}

/// A member that cannot go on: a failed race's logs are brought home, and the failure is
/// recorded; its machine is given back with the group's. The stop to report.
async fn drop_out<P: Provider>(ctx: &Ctx<P>, test: &Test, mut f: Failure) -> Stop {
    match keep_failure(ctx, test, &f).await {
        Ok(logs) => {
            f.logs = logs;
            failed_as_recorded(ctx, &test.address, f)
        }
        Err(stop) => stop,
    }
}

/// Gives back the machine of the round just raced, and opens each of `more`'s next
/// repetition at launching (a new attempt's, so providers name the machine apart). The
/// members that go on.
async fn to_fresh<'t, P: Provider>(
    ctx: &Ctx<P>,
    live: &[&Test],
    more: &[&'t Test],
    outcomes: &mut Vec<(Address, Result<(), Stop>)>,
) -> Vec<&'t Test> {
    let released = release_shared(ctx, live).await;
    let mut going_on = Vec::new();
    for test in more {
        let opened = match &released {
            Ok(()) => next_repetition(ctx, test, Step::Launching).map(drop),
            Err(f) => Err(Stop::Failed(f.clone())),
        };
        if admitted(ctx, test, opened, outcomes).await {
            going_on.push(*test);
        }
    }
    going_on
}

/// A failed step may have failed because the provider took the machine back: the shutdown
/// kills the race (exit 143) or the install, and a machine reclaimed while booting never runs.
/// So the provider is asked about a spot machine first, and a reclaimed machine is raced again
/// as anywhere else; a provider that cannot tell leaves the failure as it was.
async fn reclaimed_first<P: Provider>(ctx: &Ctx<P>, group: &[&Test], f: Failure) -> Failure {
    if f.reclaimed {
        return f;
    }
    // A cluster's node too: the race on the test's machine fails when a node goes.
    let mut spot: Vec<Machine> = ctx.state.read(|s| {
        (group.iter().filter_map(|t| s.tests.get(&t.address)))
            .flat_map(|r| r.live_machines())
            .filter(|(m, _)| m.spot)
            .map(|(m, _)| m.clone())
            .collect()
    });
    // Variants share their machine: it is asked about once.
    spot.dedup_by(|a, b| a.id == b.id);
    for machine in spot {
        if let Ok(Some(gone)) = ctx.provider.gone(&machine).await
            && gone.reclaimed
        {
            return Failure {
                error: format!("{} ({} failed: {})", gone.reason, f.step.name(), f.error),
                reclaimed: true,
                ..f
            };
        }
    }
    f
}

/// How many machines of one attempt may be reclaimed before the test fails: spot capacity
/// that keeps going away is no place to benchmark.
const MAX_RECLAIMED: u32 = 3;

/// After the group's machine was reclaimed mid-way: gives it back (a reclaimed spot request
/// may linger), and sends the members with races left (`unfinished`) round again from
/// launching, each race under way starting over on a new machine (a new attempt number, so a
/// new launch) while the finished repetitions stay.
async fn race_again<P: Provider>(
    ctx: &Ctx<P>,
    live: &[&Test],
    unfinished: &[&Test],
    f: Failure,
) -> Result<(), Stop> {
    let why = f.error;
    let reclaimed = ctx.state.read(|s| {
        unfinished
            .iter()
            .filter_map(|t| s.tests.get(&t.address))
            .map(|r| r.reclaimed)
            .max()
            .unwrap_or(0)
    }) + 1;
    if reclaimed > MAX_RECLAIMED {
        return Err(failed(
            f.step,
            format!(
                "{why}; that is {reclaimed} machines of this attempt reclaimed, so the test stops here"
            ),
        ));
    }
    release_shared(ctx, live).await.map_err(Stop::Failed)?;
    ctx.state.update(|s| {
        for test in unfinished {
            if let Some(r) = s.tests.get_mut(&test.address) {
                r.attempt += 1;
                r.reclaimed = reclaimed;
                r.race_id = Some(Uuid::new_v4());
                r.results.clear();
                r.machine = None;
                r.members.clear();
                r.set_status(Status::InProgress {
                    step: Step::Launching,
                });
            }
        }
    })?;
    ctx.progress.println(&format!(
        "{}: {why}; racing again on another machine ({reclaimed} of at most {MAX_RECLAIMED} reclaimed)",
        unfinished[0].address
    ));
    Ok(())
}

/// One race on a machine that answers, from `from` (installing, racing or collecting) until it
/// is collected, each step recorded before it runs. `renew`: the machine raced before, so its
/// bound starts again first.
async fn one_race<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    artifacts: &Artifacts,
    conn: &Conn,
    record: &TestRecord,
    from: Step,
    renew: bool,
) -> Result<(), Stop> {
    let mut step = from;
    loop {
        let next = match step {
            Step::Installing => {
                install(ctx, test, artifacts, conn, record, renew).await?;
                Step::Racing
            }
            Step::Racing => {
                race(ctx, test, conn, record).await?;
                Step::Collecting
            }
            // Collecting: callers start a race only at installing, racing or collecting.
            _ => return collect(ctx, test, conn, record).await,
        };
        checkpoint(ctx, &test.address, next)?;
        step = next;
    }
}

/// Records `f` as the test's status.
fn record_failure<P: Provider>(
    ctx: &Ctx<P>,
    address: &Address,
    f: &Failure,
) -> Result<(), StateError> {
    ctx.state.record(address, |r| {
        r.set_status(Status::Failed {
            step: f.step,
            error: f.error.clone(),
            log_tail: f.log_tail.clone(),
            logs: f.logs.clone(),
        })
    })
}

/// Records `f` as the test's status; the stop to report: the failure, or the state that could
/// not be written.
fn failed_as_recorded<P: Provider>(ctx: &Ctx<P>, address: &Address, f: Failure) -> Stop {
    match record_failure(ctx, address, &f) {
        Ok(()) => Stop::Failed(f),
        Err(e) => Stop::State(e),
    }
}

fn at_step<P: Provider>(ctx: &Ctx<P>, test: &Test, step: Step) -> bool {
    ctx.state.read(|s| {
        s.tests
            .get(&test.address)
            .is_some_and(|r| r.status == Status::InProgress { step })
    })
}

/// The record of a test this apply runs: a missing one is state changed behind rallyctl's back.
fn record_of<P: Provider>(ctx: &Ctx<P>, address: &Address) -> Result<TestRecord, Stop> {
    ctx.state.test(address).map_err(Stop::State)
}

fn missing(address: &Address) -> Stop {
    Stop::State(StateError::Missing {
        address: address.clone(),
    })
}

/// The group's machine: the one a member already holds past launching (or took from another
/// test), else one got in the first member's name; recorded in every member's record, each
/// with a run directory of its own, then reached, and scrubbed when it was taken. Every
/// member is then at installing, or further on its own race.
async fn share_machine<P: Provider>(ctx: &Ctx<P>, group: &[&Test]) -> Result<Reachable, Stop> {
    let held = ctx.state.read(|s| {
        group.iter().find_map(|t| {
            let r = s.tests.get(&t.address)?;
            let m = r.live_machine()?;
            // At launching, a machine not taken may be one the attempt got and found dead:
            // asking the provider again finds it, or says the attempt is spent.
            let past = r.status
                != Status::InProgress {
                    step: Step::Launching,
                };
            (past || m.taken.is_some()).then(|| (*t, m.clone()))
        })
    });
    let (owner, machine) = match held {
        Some(found) => found,
        None => {
            let owner = group[0];
            let record = record_of(ctx, &owner.address)?;
            // The attempt was recorded at launching when it opened; this is where it launches.
            ctx.progress
                .step(&owner.address.to_string(), Step::Launching.name());
            acquire(ctx, owner, &record).await?;
            cluster::acquire_members(ctx, owner).await?;
            checkpoint(ctx, &owner.address, Step::Booting)?;
            let machine = record_of(ctx, &owner.address)?
                .machine
                .ok_or_else(|| failed(Step::Launching, "state names no machine for this test"))?;
            (owner, machine)
        }
    };
    // A member may still hold another machine: one resumed at launching holds the machine
    // its group got before, in the name of a member that has since opened a new attempt. It
    // is given back before the group's machine is recorded in its place, or state would lose
    // it while it runs (found by tests/simulation.rs).
    let stale: Vec<&Test> = ctx.state.read(|s| {
        (group.iter().copied())
            .filter(|t| {
                (s.tests.get(&t.address).and_then(|r| r.live_machine()))
                    .is_some_and(|m| m.id != machine.id)
            })
            .collect()
    });
    release_shared(ctx, &stale).await.map_err(Stop::Failed)?;
    // A variant of the group left out of this apply (`--target`) may still run something on
    // its machines: its race, a cluster's nodes. Two races on one machine measure neither,
    // and its nodes hold the ports the group's need: what it runs is ended, and said.
    let outsiders: Vec<Address> = ctx.state.read(|s| {
        (s.tests.iter())
            .filter(|(address, r)| {
                !group.iter().any(|t| &t.address == *address)
                    && r.live_machine().is_some_and(|m| m.id == machine.id)
                    && matches!(
                        r.status,
                        Status::InProgress {
                            step: Step::Installing | Step::Racing | Step::Collecting
                        }
                    )
            })
            .map(|(address, _)| address.clone())
            .collect()
    });
    for address in outsiders {
        end_runs(ctx, &address).await?;
        ctx.progress.println(&format!(
            "{address}: what it ran on {} was ended: left out of this apply, it shares that machine with {}",
            machine.id, owner.address
        ));
    }
    let workspace = &ctx.plan.name;
    ctx.state.update(|s| {
        for test in group {
            let Some(r) = s.tests.get_mut(&test.address) else {
                continue;
            };
            if r.live_machine().is_none_or(|m| m.id != machine.id) {
                let mut own = machine.clone();
                own.run_dir = Some(run_dir(test, workspace, r));
                r.machine = Some(own);
            }
        }
        cluster::share_members(s, &owner.address, group);
    })?;
    let conn = connect(ctx, owner).await?;
    let booting = |t: &Test| {
        ctx.state.read(|s| {
            s.tests.get(&t.address).is_some_and(|r| {
                matches!(
                    r.status,
                    Status::InProgress {
                        step: Step::Launching | Step::Booting
                    }
                )
            })
        })
    };
    // One round trip, not two: a kept machine's scrub, safe to repeat and retried like the
    // probe, tells that the machine answers as well as the probe would.
    match &conn.machine.taken {
        Some(taken) if group.iter().any(|t| booting(t)) => scrub(ctx, owner, &conn, taken).await?,
        _ => answers(&ctx.provider, &ctx.cancel, &owner.settings, &conn).await?,
    }
    for test in group.iter().filter(|t| booting(t)) {
        cluster::boot_members(ctx, test).await?;
        checkpoint(ctx, &test.address, Step::Installing)?;
    }
    Ok(conn.reachable)
}

/// Rounds of one race per member until each has raced its repetitions, on the machine
/// `reachable` reaches. A race already under way on the machine (a resumed apply) goes first:
/// one machine runs one race at a time. Members that drop out have their outcome in
/// `outcomes`.
async fn race_rounds<'t, P: Provider>(
    ctx: &Ctx<P>,
    group: &[&'t Test],
    reachable: Reachable,
    outcomes: &mut Vec<(Address, Result<(), Stop>)>,
) -> Rounds<'t> {
    let mut round: Vec<&Test> = group.to_vec();
    round.sort_by_key(|t| !at_step(ctx, t, Step::Racing) && !at_step(ctx, t, Step::Collecting));
    let mut renew = raced_before(ctx, group);
    let mut fresh = Vec::new();
    while !round.is_empty() {
        let mut next_round = Vec::new();
        for (i, test) in round.iter().copied().enumerate() {
            let record = match record_of(ctx, &test.address) {
                Ok(r) => r,
                Err(stop) => {
                    outcomes.push((test.address.clone(), Err(stop)));
                    return Rounds::Stopped;
                }
            };
            let from = match record.status {
                Status::InProgress {
                    step: step @ (Step::Racing | Step::Collecting),
                } => step,
                _ => Step::Installing,
            };
            let Some(machine) = record.machine.clone() else {
                let f = failure(from, "state names no machine for this test");
                outcomes.push((test.address.clone(), Err(drop_out(ctx, test, f).await)));
                continue;
            };
            let conn = Conn {
                machine,
                reachable: reachable.clone(),
            };
            let artifacts = &ctx.artifacts[&test.address];
            let raced = one_race(ctx, test, artifacts, &conn, &record, from, renew).await;
            renew = true;
            let more = record.repetition() < test.repeat.count.get();
            let outcome = match raced {
                Ok(()) if more && test.repeat.on == RepeatOn::Same => {
                    match next_repetition(ctx, test, Step::Installing) {
                        Ok(_) => {
                            next_round.push(test);
                            continue;
                        }
                        Err(stop) => Err(stop),
                    }
                }
                Ok(()) => match checkpoint(ctx, &test.address, Step::Terminating) {
                    Ok(()) if more => {
                        fresh.push(test);
                        continue;
                    }
                    Ok(()) => continue,
                    Err(stop) => Err(stop),
                },
                Err(Stop::Failed(f)) => {
                    let f = reclaimed_first(ctx, &[test], f).await;
                    if f.reclaimed {
                        // The machine is gone for every member with races left.
                        let mut unfinished = vec![test];
                        unfinished.extend(&round[i + 1..]);
                        unfinished.extend(next_round);
                        unfinished.extend(fresh);
                        // In the group's order, as the next machine's rounds go.
                        unfinished
                            .sort_by_key(|u| group.iter().position(|g| g.address == u.address));
                        return Rounds::Lost(Stop::Failed(f), unfinished);
                    }
                    Err(drop_out(ctx, test, f).await)
                }
                Err(other) => Err(other),
            };
            let stop_all = matches!(outcome, Err(Stop::Interrupted | Stop::State(_)));
            outcomes.push((test.address.clone(), outcome));
            if stop_all {
                return Rounds::Stopped;
            }
        }
        round = next_round;
    }
    match fresh.is_empty() {
        true => Rounds::Done,
        false => Rounds::Fresh(fresh),
    }
}

/// Whether the group's machine raced before the first race of these rounds: it was taken from
/// another test, or a member's earlier race or finished one ran on it.
fn raced_before<P: Provider>(ctx: &Ctx<P>, group: &[&Test]) -> bool {
    ctx.state.read(|s| {
        group.iter().any(|t| {
            let Some(r) = s.tests.get(&t.address) else {
                return false;
            };
            let Some(m) = &r.machine else {
                return false;
            };
            m.taken.is_some()
                || r.earlier.last().is_some_and(|e| e.machine == m.id)
                || r.status
                    == Status::InProgress {
                        step: Step::Terminating,
                    }
        })
    })
}

/// After the last round: a single test whose machine a later suite's test takes keeps it for
/// that test (warm reuse); else the group's machine is given back once.
async fn give_back<P: Provider>(ctx: &Ctx<P>, live: &[&Test], done: &[&Test]) -> Result<(), Stop> {
    // The planner pairs no variant with another test: a group keeps its machine to itself.
    if let ([test], [_]) = (live, done)
        && let Some(h) = ctx.handoffs.iter().find(|h| h.from == test.address)
    {
        return keep(ctx, test, &h.to);
    }
    release_shared(ctx, live).await.map_err(Stop::Failed)
}

/// Gives the group's machine back once, when no member races on it any more, and records
/// that for every member that held it. Every machine a member still holds: a member resumed
/// past its races keeps the one the group had while a new attempt of another got its own
/// (`tests/simulation.rs` found one left running).
async fn release_shared<P: Provider>(ctx: &Ctx<P>, group: &[&Test]) -> Result<(), Failure> {
    for test in group {
        let settings = ctx.state.read(|s| {
            let r = s.tests.get(&test.address)?;
            (r.members.iter().any(|m| m.machine.released_at.is_none())).then(|| r.settings.clone())
        });
        if let Some(settings) = settings {
            let settings = recorded(&settings, Step::Terminating)?;
            cluster::release_members(ctx, &test.address, &settings).await?;
        }
    }
    loop {
        let held = ctx.state.read(|s| {
            group.iter().find_map(|t| {
                let r = s.tests.get(&t.address)?;
                Some((r.live_machine()?.clone(), r.settings.clone()))
            })
        });
        let Some((machine, settings)) = held else {
            return Ok(());
        };
        let fail = |error: String| failure(Step::Terminating, error);
        let settings = recorded(&settings, Step::Terminating)?;
        let mark_released = || {
            ctx.state
                .update(|s| {
                    for t in group {
                        if let Some(r) = s.tests.get_mut(&t.address)
                            && r.live_machine().is_some_and(|m| m.id == machine.id)
                        {
                            r.mark_released();
                        }
                    }
                })
                .map_err(|e| fail(e.to_string()))
        };
        // A deliberate bug the simulation must find (tests/simulation.rs): state says the
        // machine is given back before it is.
        let recorded_first = crate::sim::bug!(RecordReleaseFirst);
        if recorded_first {
            mark_released()?;
        }
        ctx.provider
            .release(&machine, &settings)
            .await
            .map_err(|e| not_released(&machine, e))?;
        if !recorded_first {
            mark_released()?;
        }
    }
}

/// Opens a new attempt: gives back the previous one's machine and records the intent to
/// acquire one, before anything is asked of a provider. With `keep`, the races the previous
/// attempts finished stay as samples (a failed race is none).
async fn start_attempt<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    artifacts: &Artifacts,
    keep: bool,
) -> Result<(), Stop> {
    let address = &test.address;
    release(ctx, &test.address)
        .await
        .map_err(|stop| match stop {
            Stop::Failed(f) => failed(
                Step::Launching,
                format!("cannot release the previous attempt's machine: {}", f.error),
            ),
            other => other,
        })?;
    let race_command =
        crate::templates::race_command(&test.settings).map_err(|e| failed(Step::Launching, e))?;
    let kept = ctx.state.read(|s| match s.tests.get(address) {
        Some(r) if keep && r.config_hash == artifacts.config_hash => r.finished(),
        _ => vec![],
    });
    let earlier = into_this_run(ctx, test, kept).await?;
    ctx.state.update(|s| {
        let previous = s.tests.get(address);
        let previous_attempt = previous.map_or(0, |r| r.attempt);
        let mut record = TestRecord {
            attempt: previous_attempt + 1,
            run_id: Some(ctx.run_id.clone()),
            race_id: Some(Uuid::new_v4()),
            earlier,
            variant: test.variant.as_deref().cloned(),
            // Machine time is billed whatever became of the attempt that held the machine.
            spent: previous.map(|r| r.spent.clone()).unwrap_or_default(),
            asked_elsewhere: previous
                .map(|r| r.asked_elsewhere.clone())
                .unwrap_or_default(),
            inputs: artifacts.inputs(&test.settings),
            ..TestRecord::new(
                artifacts.config_hash.clone(),
                (&test.settings).into(),
                race_command,
                Status::Pending,
            )
        };
        if let Some(previous) = previous.filter(|r| r.stopped_getting_a_machine()) {
            record.asked_with(previous.settings.clone());
        }
        record.set_status(Status::InProgress {
            step: Step::Launching,
        });
        s.tests.insert(address.clone(), record);
    })?;
    Ok(())
}

/// The races a new attempt keeps, their files copied into this run's directory of the test,
/// each where its repetition goes: the races of one result live in the run that records it,
/// so that run shows the whole result once state has moved on. A race whose files cannot be
/// copied is listed where it raced, which is said.
async fn into_this_run<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    races: Vec<Repetition>,
) -> Result<Vec<Repetition>, Stop> {
    let test_dir = layout::test(&ctx.results_root, &ctx.run_id, &test.address);
    let mut kept = Vec::with_capacity(races.len());
    for (k, mut race) in (1..).zip(races) {
        if race.run_id != ctx.run_id {
            let dir = layout::repetition(&test_dir, k);
            match crate::collect::copy_race(&race.results, &dir) {
                Ok(files) => {
                    ctx.state
                        .publish(files.clone())
                        .await
                        .map_err(|e| failed(Step::Launching, e))?;
                    race.results = files;
                }
                Err(e) => ctx.progress.println(&format!(
                    "{}: repetition {k} stays in run {}, as its files cannot be copied into {}: {e}",
                    test.address,
                    race.run_id,
                    dir.display()
                )),
            }
        }
        kept.push(race);
    }
    Ok(kept)
}

/// Ends the race just collected as a repetition and opens the next, at `step`, in one state
/// write: on the same machine in a run directory of its own (installing), or on a fresh
/// machine that is a new attempt's, so providers name it apart (launching).
fn next_repetition<P: Provider>(ctx: &Ctx<P>, test: &Test, step: Step) -> Result<TestRecord, Stop> {
    if ctx.cancel.is_cancelled() {
        return Err(Stop::Interrupted);
    }
    let workspace = &ctx.plan.name;
    let record = ctx
        .state
        .update(|s| {
            let r = s.tests.get_mut(&test.address)?;
            r.next_repetition();
            if step == Step::Launching {
                r.attempt += 1;
                r.machine = None;
                r.members.clear();
            } else {
                // A deliberate bug the simulation must find (tests/simulation.rs): the
                // machine's time so far is entered as each repetition on it ends, and again
                // when it goes.
                if crate::sim::bug!(EnterTimeTwice) {
                    r.mark_released();
                    if let Some(m) = &mut r.machine {
                        m.released_at = None;
                    }
                }
                let dir = run_dir(test, workspace, r);
                if let Some(m) = &mut r.machine {
                    m.run_dir = Some(dir);
                }
            }
            r.set_status(Status::InProgress { step });
            Some(r.clone())
        })?
        .ok_or_else(|| missing(&test.address))?;
    ctx.progress.step(
        &test.address.to_string(),
        &format!(
            "{} (repetition {} of {})",
            step.name(),
            record.repetition(),
            test.repeat.count
        ),
    );
    Ok(record)
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

/// The race's directory on the machine: unique per workspace, run, test, attempt and
/// repetition, since machines (a host of a pool, this one) outlive tests.
fn run_dir(test: &Test, workspace: &str, record: &TestRecord) -> String {
    let race = match record.repetition() {
        1 => record.attempt.to_string(),
        n => format!("{}.{n}", record.attempt),
    };
    format!(
        "{}/runs/{}/{}/{}/{race}",
        test.settings.remote_dir,
        slug(workspace),
        slug(record.run_id.as_deref().unwrap_or("run")),
        test.address.path().display(),
    )
}

/// Launching: a machine for this attempt, recorded with its run directory.
async fn acquire<P: Provider>(ctx: &Ctx<P>, test: &Test, record: &TestRecord) -> Result<(), Stop> {
    if take(ctx, test, record).await? {
        return Ok(());
    }
    let mut record = record.clone();
    let mut spent = 0;
    let acquired = loop {
        match ask(ctx, test, &record, &test.settings, None).await {
            Ok(acquired) => break acquired,
            Err(_) if ctx.cancel.is_cancelled() => return Err(Stop::Interrupted),
            // Only a crash between asking and recording spends an attempt, so a second spent
            // one in a row means the provider keeps answering so: a failure, not a loop.
            Err(AcquireError::Spent(why)) if spent == 0 => {
                spent += 1;
                record = ctx
                    .state
                    .update(|s| {
                        let r = s.tests.get_mut(&test.address)?;
                        r.attempt += 1;
                        Some(r.clone())
                    })?
                    .ok_or_else(|| missing(&test.address))?;
                ctx.progress.println(&format!(
                    "{}: {why}; launching again as attempt {}",
                    test.address, record.attempt
                ));
            }
            Err(e) => return Err(failed(Step::Launching, e)),
        }
    };
    let mut machine = acquired.machine;
    if acquired.adopted {
        ctx.progress.println(&format!(
            "{}: adopting {} launched by an earlier apply",
            test.address, machine.id
        ));
    }
    machine.run_dir = Some(run_dir(test, &ctx.plan.name, &record));
    machine.usd_per_hour = ctx.prices.usd_per_hour(&test.settings, machine.spot);
    ctx.state
        .record(&test.address, |r| r.machine = Some(machine))?;
    Ok(())
}

/// Asks the provider for a machine of `record`'s attempt of `test`, of `settings`: the test's
/// own, or (`member`) one of its cluster's, which the provider names apart.
async fn ask<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    record: &TestRecord,
    settings: &Settings,
    member: Option<crate::provider::MemberSpec<'_>>,
) -> Result<crate::provider::Acquired, AcquireError> {
    let on_wait = |why: String| ctx.progress.println(&format!("{}: {why}", test.address));
    ctx.provider
        .acquire(&Acquire {
            workspace: &ctx.plan.name,
            lineage: ctx.state.read(|s| s.lineage),
            address: &test.address,
            attempt: record.attempt,
            run_id: record.run_id.as_deref().unwrap_or(&ctx.run_id),
            settings,
            artifacts: &ctx.artifacts[&test.address],
            reclaimed: record.reclaimed,
            cancel: &ctx.cancel,
            on_wait: &on_wait,
            member,
        })
        .await
}

/// Warm reuse, the giving side: the test's machine stays up for `to`, a test of a later suite.
/// The record goes on holding it until `to` takes it, so a killed apply, a later plan and
/// `destroy` all find it.
fn keep<P: Provider>(ctx: &Ctx<P>, test: &Test, to: &Address) -> Result<(), Stop> {
    let kept = ctx.state.update(|s| {
        let m = s.tests.get_mut(&test.address)?.machine.as_mut()?;
        m.released_at.is_none().then(|| {
            m.handover = Some(Handover::KeptFor(to.clone()));
            m.id.clone()
        })
    })?;
    if let Some(id) = kept {
        ctx.progress
            .println(&format!("{}: keeps {id} for {to}", test.address));
    }
    Ok(())
}

/// How long before a kept machine ends itself (EC2's watchdog) it is no longer taken: EC2
/// refuses logins five minutes before a scheduled shutdown, and the taker needs a few more to
/// reach it and renew that bound when it installs.
const TAKE_MARGIN: jiff::SignedDuration = jiff::SignedDuration::from_mins(15);

/// Warm reuse, the taking side: takes the machine a test of an earlier suite kept for this
/// one, in one state write (the giver stops holding it, this test holds it with a run
/// directory of its own). A kept machine that is gone, or that the provider cannot tell about,
/// is given up and a new one launched. Whether a machine was taken.
async fn take<P: Provider>(ctx: &Ctx<P>, test: &Test, record: &TestRecord) -> Result<bool, Stop> {
    let to = &test.address;
    // Killed between taking the machine and recording the next step: it is already ours.
    if record.live_machine().is_some_and(|m| m.taken.is_some()) {
        return Ok(true);
    }
    // The giver is the planner's; it has kept the machine unless its test failed.
    let kept = ctx.handoffs.iter().find(|h| &h.to == to).and_then(|h| {
        ctx.state.read(|s| {
            let m = s.tests.get(&h.from)?.live_machine()?;
            (m.handover.as_ref() == Some(&Handover::KeptFor(to.clone())))
                .then(|| (h.from.clone(), m.clone()))
        })
    });
    let Some((from, machine)) = kept else {
        return Ok(false);
    };
    let give_up = async || {
        release(ctx, &from).await.map_err(|stop| match stop {
            Stop::Failed(f) => failed(
                Step::Launching,
                format!("cannot give up {}, kept by {from}: {}", machine.id, f.error),
            ),
            other => other,
        })
    };
    let soon = jiff::Timestamp::now() + TAKE_MARGIN;
    let unusable = match machine.expires_at.filter(|at| *at < soon) {
        Some(at) => {
            give_up().await?;
            Some(format!("it ends itself at {at}, too soon to race on it"))
        }
        None => match ctx.provider.gone(&machine).await {
            Ok(None) => None,
            Ok(Some(gone)) => {
                ctx.state.record(&from, TestRecord::mark_released)?;
                Some(gone.reason)
            }
            Err(e) => {
                give_up().await?;
                Some(format!("cannot tell whether it is still there: {e}"))
            }
        },
    };
    if let Some(why) = unusable {
        ctx.progress.println(&format!(
            "{to}: {} kept by {from} is not usable ({why}); launching another",
            machine.id
        ));
        return Ok(false);
    }
    let workspace = &ctx.plan.name;
    ctx.state.update(|s| {
        let mut at = jiff::Timestamp::now();
        if let Some(r) = s.tests.get_mut(&from) {
            r.mark_released();
            if let Some(m) = &mut r.machine {
                m.handover = Some(Handover::TakenBy(to.clone()));
                // One instant: the giver's machine time ends where the taker's begins.
                at = m.released_at.unwrap_or(at);
            }
        }
        if let Some(r) = s.tests.get_mut(to) {
            r.machine = Some(Machine {
                run_dir: Some(run_dir(test, workspace, record)),
                taken: Some(Taken {
                    from: from.clone(),
                    at,
                    left: machine.run_dir.clone(),
                }),
                handover: None,
                released_at: None,
                ..machine.clone()
            });
        }
    })?;
    ctx.progress
        .println(&format!("{to}: takes {} from {from}", machine.id));
    Ok(true)
}

/// A machine taken from another test starts clean: whatever that test's race left running is
/// stopped, and the page cache is dropped where the user may (root or passwordless sudo), so
/// the race does not start warm. Safe to repeat after a resume.
async fn scrub<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    conn: &Conn,
    taken: &Taken,
) -> Result<(), Stop> {
    let command =
        remote::scrub_command(taken.left.as_deref()).map_err(|e| failed(Step::Booting, e))?;
    let out = run_on(
        ctx,
        test,
        conn,
        &command,
        b"",
        Duration::from_secs(120),
        Step::Booting,
    )
    .await?;
    let cache = match String::from_utf8_lossy(&out).trim() {
        remote::CACHE_DROPPED => "page cache dropped",
        _ => "page cache kept: neither root nor passwordless sudo",
    };
    ctx.progress.println(&format!(
        "{}: stopped what {} left on {}; {cache}",
        test.address, taken.from, conn.machine.id
    ));
    Ok(())
}

/// Booting: waits until the machine runs and answers a command.
async fn reach<P: Provider>(ctx: &Ctx<P>, test: &Test) -> Result<Conn, Stop> {
    let conn = connect(ctx, test).await?;
    answers(&ctx.provider, &ctx.cancel, &test.settings, &conn).await?;
    Ok(conn)
}

/// Waits until the machine runs and records its address; what it answers is the caller's to
/// ask, by the first command it runs there.
async fn connect<P: Provider>(ctx: &Ctx<P>, test: &Test) -> Result<Conn, Stop> {
    let machine = record_of(ctx, &test.address)?
        .machine
        .ok_or_else(|| failed(Step::Booting, "state names no machine for this test"))?;
    let reachable = reachable(&ctx.provider, &ctx.cancel, &machine, &test.settings).await?;
    if let remote::Endpoint::Ssh(e) = &reachable.endpoint {
        let host = e.host.clone();
        ctx.state.record(&test.address, |r| {
            if let Some(m) = &mut r.machine {
                m.address = Some(host);
            }
        })?;
    }
    Ok(Conn { machine, reachable })
}

/// Waits until the machine runs; Ctrl-C ends the wait at once (booting can take minutes).
pub(crate) async fn reachable<P: Provider>(
    provider: &P,
    cancel: &CancellationToken,
    machine: &Machine,
    settings: &Settings,
) -> Result<Reachable, Stop> {
    tokio::select! {
        r = provider.reach(machine, settings) => r.map_err(|e| failed(Step::Booting, e)),
        _ = cancel.cancelled() => Err(Stop::Interrupted),
    }
}

/// Waits until the machine answers a command: sshd may take a while after boot.
pub(crate) async fn answers<P: Provider>(
    provider: &P,
    cancel: &CancellationToken,
    settings: &Settings,
    conn: &Conn,
) -> Result<(), Stop> {
    run_with(
        provider,
        cancel,
        settings,
        conn,
        "true",
        b"",
        Duration::from_secs(30),
        Step::Booting,
    )
    .await
    .map(drop)
}

fn quoted_run_dir(conn: &Conn, step: Step) -> Result<String, Stop> {
    let dir = conn
        .machine
        .run_dir
        .as_deref()
        .ok_or_else(|| failed(step, "state names no run directory for this test"))?;
    crate::templates::shell_quote(dir).map_err(|e| failed(step, e))
}

/// Installing: uploads the bundle and runs the install script.
async fn install<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    artifacts: &Artifacts,
    conn: &Conn,
    record: &TestRecord,
    renew: bool,
) -> Result<(), Stop> {
    // A machine that raced before starts its bound again (a resumed apply may do so twice,
    // which is harmless).
    if renew {
        let expires_at = ctx
            .provider
            .extend(
                &conn.machine,
                &test.settings,
                artifacts,
                &conn.reachable.endpoint,
            )
            .await
            .map_err(|e| failed(Step::Installing, e))?;
        ctx.state.record(&test.address, |r| {
            if let Some(m) = &mut r.machine {
                m.expires_at = expires_at;
            }
        })?;
    }
    let origin = staging::Origin {
        workspace: &ctx.plan.name,
        run_id: record.run_id.as_deref().unwrap_or(&ctx.run_id),
    };
    // A cluster's other machines are readied meanwhile: the first request comes sooner.
    let (said, members) = tokio::join!(
        install_on(
            &ctx.provider,
            &ctx.cancel,
            &ctx.renderer,
            test,
            artifacts,
            conn,
            &origin
        ),
        cluster::start_members(ctx, test, artifacts, renew)
    );
    let said = said?;
    let digest = artifacts.install_digest();
    if conn.machine.installed.as_ref() != Some(&digest) {
        ctx.state.record(&test.address, |r| {
            if let Some(m) = &mut r.machine {
                m.installed = Some(digest);
            }
        })?;
    }
    for line in said {
        ctx.progress.println(&format!("{}: {line}", test.address));
    }
    cluster::start_daemons(ctx, test, conn, &members?).await
}

/// Uploads the test's bundle into the machine's run directory and runs its install script
/// unless this very script ran to its end there already; what the script said it did (its
/// `rallyctl:` lines: installing, or finding a baked venv). The caller records the script as
/// run: a test's machine in its record, a bake's in its image.
pub(crate) async fn install_on<P: Provider>(
    provider: &P,
    cancel: &CancellationToken,
    renderer: &Renderer,
    test: &Test,
    artifacts: &Artifacts,
    conn: &Conn,
    origin: &staging::Origin<'_>,
) -> Result<Vec<String>, Stop> {
    let run_dir = quoted_run_dir(conn, Step::Installing)?;
    let bundle = staging::bundle(renderer, test, artifacts, origin)
        .map_err(|e| failed(Step::Installing, e))?;
    // One round trip for the upload and the script: both are safe to repeat (a resumed
    // apply does both again), and no state is written between them. A failed unpack says so
    // last, to be told from the script's own failure.
    let installed = conn.machine.installed.as_ref() == Some(&artifacts.install_digest());
    let script = if installed {
        String::new()
    } else {
        format!("\nbash {run_dir}/install.sh < /dev/null")
    };
    let install = format!(
        "{{ mkdir -p {run_dir} && tar -C {run_dir} -xf -; }} || {{ echo '{UNPACK_FAILED}' >&2; exit 1; }}{script}"
    );
    let step = Step::Installing;
    let ran = attempt(
        provider,
        cancel,
        &test.settings,
        conn,
        &install,
        &bundle,
        INSTALL_TIMEOUT,
        step,
    )
    .await;
    match ran {
        Ok(_) if installed => Ok(vec![format!(
            "rallyctl: this install.sh ran on {} already: nothing to install",
            conn.machine.id
        )]),
        Ok(out) => Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| l.starts_with("rallyctl: "))
            .map(str::to_owned)
            .collect()),
        Err(Attempt::Stop(stop)) => Err(stop),
        Err(Attempt::Refused(RemoteError::Failed { code, stderr, .. }))
            if stderr.lines().last() != Some(UNPACK_FAILED) =>
        {
            Err(Stop::Failed(Failure {
                log_tail: Some(stderr),
                ..failure(
                    Step::Installing,
                    format!(
                        "install.sh failed with {} on {}",
                        remote::exit_of(code),
                        conn.reachable.endpoint.name()
                    ),
                )
            }))
        }
        Err(Attempt::Refused(RemoteError::Failed { stderr, .. })) => {
            let why: Vec<&str> = stderr.lines().filter(|l| *l != UNPACK_FAILED).collect();
            Err(failed(
                step,
                format!(
                    "cannot unpack the bundle into {} on {} ({}): {}",
                    conn.machine.run_dir.as_deref().unwrap_or_default(),
                    conn.reachable.endpoint.name(),
                    conn.machine.id,
                    why.join("\n").trim()
                ),
            ))
        }
        Err(Attempt::Refused(e)) => Err(refused(step, conn, e)),
    }
}

/// What the install command says last when the bundle could not be unpacked.
const UNPACK_FAILED: &str = "rallyctl: cannot unpack the bundle";

/// Racing: starts the race unless it already runs, then waits for it, reconnecting as needed.
async fn race<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    conn: &Conn,
    record: &TestRecord,
) -> Result<(), Stop> {
    let run_dir = quoted_run_dir(conn, Step::Racing)?;
    let race_id = record
        .race_id
        .ok_or_else(|| failed(Step::Racing, "state names no race id for this attempt"))?;
    // The metrics store's password reaches Rally through its environment, never a file.
    let password = std::env::var(METRICS_PASSWORD_ENV).unwrap_or_default();
    // Waits in slices short enough to notice a stall within a third of its timeout.
    let stall = test.settings.stall_timeout;
    let slice = (stall.as_secs() / 3).clamp(1, WAIT_SLICE_SECS);
    let wait_command = format!("bash {run_dir}/race.sh wait {slice}");
    // The start and the first wait in one round trip: starting is safe to repeat (a race that
    // runs is left alone), and nothing is recorded between the two. The wait's answer is the
    // last line.
    let targets = cluster::race_args(test, record, conn)?;
    let mut next = Some((
        format!("bash {run_dir}/race.sh start {race_id}{targets} && {wait_command}"),
        format!("{password}\n"),
        Duration::from_secs(60),
    ));
    loop {
        let (command, input, starting) = next
            .take()
            .unwrap_or_else(|| (wait_command.clone(), String::new(), Duration::ZERO));
        let wait = run_on(
            ctx,
            test,
            conn,
            &command,
            input.as_bytes(),
            Duration::from_secs(slice + 60) + starting,
            Step::Racing,
        );
        let out = tokio::select! {
            out = wait => out?,
            _ = ctx.cancel.cancelled() => return Err(Stop::Interrupted),
        };
        let answer = String::from_utf8_lossy(&out)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let error = match answer.strip_prefix("exited ") {
            Some("0") => return Ok(()),
            Some(TIMED_OUT) => format!(
                "the race ran past max_runtime ({}) and was stopped",
                humantime::format_duration(test.settings.max_runtime)
            ),
            Some(code) => format!("esrally exited with {code}"),
            None if answer == "running" => match silent_for(ctx, test, conn, &run_dir).await? {
                // A deliberate bug the simulation must find (tests/simulation.rs).
                Some(silent) if silent >= stall && !crate::sim::bug!(IgnoreStalls) => {
                    format!(
                        "the race stalled: neither its console nor Rally's log changed for {}, so it was stopped (stall_timeout)",
                        humantime::format_duration(Duration::from_secs(silent.as_secs()))
                    )
                }
                _ => continue,
            },
            None => format!(
                "the race stopped without an exit code ({answer}): was {} rebooted?",
                conn.reachable.endpoint.name()
            ),
        };
        return Err(Stop::Failed(Failure {
            log_tail: race_log_tail(&conn.reachable.endpoint, &run_dir).await,
            ..failure(Step::Racing, error)
        }));
    }
}

/// How long since the race last wrote to its console log or to Rally's log; `None` before
/// either exists. GNU `stat` on Linux, BSD `stat` on a macOS host. Asked by a command of its
/// own rather than by race.sh, whose text is part of every test's config hash.
async fn silent_for<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    conn: &Conn,
    run_dir: &str,
) -> Result<Option<Duration>, Stop> {
    let command = format!(
        "cd {run_dir} && newest=$(for f in race.log .rally/logs/rally.log; do [ -e \"$f\" ] && {{ stat -c %Y \"$f\" 2>/dev/null || stat -f %m \"$f\"; }}; done | sort -n | tail -n 1) && [ -n \"$newest\" ] && echo $(( $(date +%s) - newest )) || true"
    );
    let out = run_on(
        ctx,
        test,
        conn,
        &command,
        b"",
        Duration::from_secs(60),
        Step::Racing,
    )
    .await?;
    let text = String::from_utf8_lossy(&out);
    Ok(text
        .trim()
        .parse::<i64>()
        .ok()
        .map(|secs| Duration::from_secs(secs.max(0).unsigned_abs())))
}

async fn race_log_tail(endpoint: &remote::Endpoint, run_dir: &str) -> Option<String> {
    remote::exec(
        endpoint,
        &format!("bash {run_dir}/race.sh tail {LOG_TAIL_LINES}"),
        b"",
        Duration::from_secs(60),
    )
    .await
    .ok()
    .map(|o| tail(&String::from_utf8_lossy(&o.stdout), LOG_TAIL_LINES))
}

/// Collecting: brings the report, race.json and logs home and records their sha256.
async fn collect<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    conn: &Conn,
    record: &TestRecord,
) -> Result<(), Stop> {
    let nodes = cluster::stop_members(ctx, test, conn, record).await?;
    let mut files = bring_home(ctx, test, conn, record).await?;
    files.extend(nodes);
    let report = crate::collect::report(&files)
        .map_err(|e| failed(Step::Collecting, e))?
        .to_owned();
    // Published before state names them: results state records are where it says.
    ctx.state
        .publish(files.clone())
        .await
        .map_err(|e| failed(Step::Collecting, e))?;
    ctx.state.record(&test.address, |r| r.results = files)?;
    // An error rate above zero is no clean result, though the files are kept for a look.
    match crate::collect::problem(&report) {
        Some(problem) => Err(failed(Step::Racing, problem)),
        None => Ok(()),
    }
}

/// Where the race under way of `record` keeps its files: `<run>/<suite>/<test>/` under the
/// workspace's results, in a directory of its own from the second repetition on.
fn results_dir<P: Provider>(ctx: &Ctx<P>, test: &Test, record: &TestRecord) -> PathBuf {
    let run_id = record.run_id.as_deref().unwrap_or(&ctx.run_id);
    layout::repetition(
        &layout::test(&ctx.results_root, run_id, &test.address),
        record.repetition(),
    )
}

/// Brings the race's report, race.json and logs home into its [`results_dir`], its
/// configuration beside them.
async fn bring_home<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    conn: &Conn,
    record: &TestRecord,
) -> Result<Vec<ResultFile>, Stop> {
    let run_dir = quoted_run_dir(conn, Step::Collecting)?;
    let bytes = run_on(
        ctx,
        test,
        conn,
        &format!("bash {run_dir}/race.sh collect"),
        b"",
        Duration::from_secs(600),
        Step::Collecting,
    )
    .await?;
    let dir = results_dir(ctx, test, record);
    crate::collect::unpack(&bytes, &dir)
        .and_then(|mut files| {
            crate::collect::describe(&dir, record, &mut files)?;
            Ok(files)
        })
        .map_err(|e| {
            failed(
                Step::Collecting,
                format!("cannot store results in {}: {e}", dir.display()),
            )
        })
}

/// How long bringing a failed race's logs home may take before the machine is released
/// without them.
const FAILED_LOGS_TIMEOUT: Duration = Duration::from_secs(300);

/// Before a failed test's machine goes: brings a failed race's logs home (they say why it
/// failed), stops a cluster's nodes and daemons bringing the nodes' logs home too, and writes
/// why beside them, where the race's results would have been, for
/// `results` to show once state has moved on; returns where the logs are. Best effort: a
/// machine that is gone cannot give its logs, which is said, and neither that nor a file that
/// cannot be written stops the failure from being recorded or the machine from being released.
async fn keep_failure<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    f: &Failure,
) -> Result<Option<PathBuf>, Stop> {
    let address = &test.address;
    let Some(record) = ctx.state.read(|s| s.tests.get(address).cloned()) else {
        return Ok(None);
    };
    let mut files = Vec::new();
    let raced = matches!(f.step, Step::Racing | Step::Collecting);
    // A cluster's nodes and daemons may run from installing on. They are stopped, so that the
    // group's next variant finds their ports free (not one of them answering in its place),
    // and their logs come home with the race's.
    let members_run = test.settings.cluster.is_some() && f.step == Step::Installing;
    if (raced || members_run) && !ctx.cancel.is_cancelled() {
        const RACE: &str = "the failed race's logs cannot be brought home";
        const MEMBERS: &str = "the cluster's nodes cannot be stopped, nor their logs brought home";
        let fetched = async {
            let conn = reach(ctx, test).await?;
            let race = match raced {
                true => bring_home(ctx, test, &conn, &record).await,
                false => Ok(vec![]),
            };
            let members = cluster::stop_members(ctx, test, &conn, &record).await;
            Ok::<_, Stop>(vec![(RACE, race), (MEMBERS, members)])
        };
        let first = if raced { RACE } else { MEMBERS };
        let fetched = match tokio::time::timeout(FAILED_LOGS_TIMEOUT, fetched).await {
            Ok(Ok(each)) => each,
            Ok(Err(stop)) => vec![(first, Err(stop))],
            Err(_) => {
                let within = humantime::format_duration(FAILED_LOGS_TIMEOUT);
                let late = failed(f.step, format!("they did not come within {within}"));
                vec![(first, Err(late))]
            }
        };
        for (what, got) in fetched {
            let why = match got {
                Ok(got) => {
                    files.extend(got);
                    continue;
                }
                Err(Stop::State(e)) => return Err(Stop::State(e)),
                Err(Stop::Failed(not)) => not.error,
                Err(Stop::Interrupted) => "interrupted".to_owned(),
            };
            ctx.progress.println(&format!("{address}: {what}: {why}"));
        }
    }
    let brought = !files.is_empty();
    let dir = results_dir(ctx, test, &record);
    let failure = crate::results::parse::RaceFailure {
        step: f.step,
        error: f.error.clone(),
    };
    let kept = crate::collect::describe_failure(&dir, &failure, &mut files)
        .map_err(|e| format!("cannot write to {}: {e}", dir.display()));
    let published = match kept {
        Ok(()) => ctx
            .state
            .publish(files.clone())
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    if let Err(e) = published {
        ctx.progress
            .println(&format!("{address}: why it failed is not kept: {e}"));
        return Ok(brought.then_some(dir));
    }
    ctx.state.record(address, |r| r.results = files)?;
    if brought {
        ctx.progress.println(&format!(
            "{address}: the failed race's logs are in {}",
            dir.display()
        ));
    }
    Ok(brought.then_some(dir))
}

/// Gives back the machine a test's record holds, if it may still hold one, and records that.
/// Always with the settings the record was made with, which the machine was got with: the
/// plan may have changed since (another region, remote directory or provider), and a machine
/// is released where it is, not where the plan would now put it.
pub async fn release<P: Provider>(ctx: &Ctx<P>, address: &Address) -> Result<(), Stop> {
    let Some(settings) = ctx.state.read(|s| {
        let r = s.tests.get(address)?;
        r.live_machines().next()?;
        Some(r.settings.clone())
    }) else {
        return Ok(());
    };
    let mut settings = recorded(&settings, Step::Terminating).map_err(Stop::Failed)?;
    cluster::release_members(ctx, address, &settings)
        .await
        .map_err(Stop::Failed)?;
    let Some(machine) = ctx
        .state
        .read(|s| s.tests.get(address)?.live_machine().cloned())
    else {
        return Ok(());
    };
    // A deliberate bug the simulation must find (tests/simulation.rs): the machine is given
    // back where the plan now points, not where it was got.
    if crate::sim::bug!(ReleaseWherePlanned)
        && let Some(test) = ctx.plan.test(address)
    {
        settings = test.settings.clone();
    }
    ctx.provider
        .release(&machine, &settings)
        .await
        .map_err(|e| Stop::Failed(not_released(&machine, e)))?;
    ctx.state.record(address, TestRecord::mark_released)?;
    Ok(())
}

/// Why terminating failed: the provider did not give `machine` back.
fn not_released(machine: &Machine, e: crate::provider::ProviderError) -> Failure {
    failure(
        Step::Terminating,
        format!("cannot release {}: {e}", machine.id),
    )
}

/// The settings a record was made with, as typed.
fn recorded(settings: &RecordedSettings, step: Step) -> Result<Settings, Failure> {
    settings
        .typed()
        .map_err(|e| failure(step, format!("the recorded settings cannot be read: {e}")))
}

/// [`run_with`] for a test of the apply.
async fn run_on<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    conn: &Conn,
    command: &str,
    input: &[u8],
    timeout: Duration,
    step: Step,
) -> Result<Vec<u8>, Stop> {
    run_with(
        &ctx.provider,
        &ctx.cancel,
        &test.settings,
        conn,
        command,
        input,
        timeout,
        step,
    )
    .await
}

/// Runs a command that is safe to repeat, retrying while the connection is the problem, for
/// as long as the provider says the machine may stay unreachable. Not only a test's: a bake's
/// instance too, which has no record of its own in `state.tests`.
#[allow(clippy::too_many_arguments)]
async fn run_with<P: Provider>(
    provider: &P,
    cancel: &CancellationToken,
    settings: &Settings,
    conn: &Conn,
    command: &str,
    input: &[u8],
    timeout: Duration,
    step: Step,
) -> Result<Vec<u8>, Stop> {
    attempt(
        provider, cancel, settings, conn, command, input, timeout, step,
    )
    .await
    .map_err(|a| match a {
        Attempt::Stop(stop) => stop,
        Attempt::Refused(e) => refused(step, conn, e),
    })
}

/// How [`attempt`] ended short of an answer.
enum Attempt {
    Stop(Stop),
    /// The machine answered with an error that retrying would not change: the caller's to tell.
    Refused(RemoteError),
}

fn refused(step: Step, conn: &Conn, error: RemoteError) -> Stop {
    failed(step, format!("{error} ({})", conn.machine.id))
}

/// [`run_with`], with the error that ended the retries left to the caller.
#[allow(clippy::too_many_arguments)]
async fn attempt<P: Provider>(
    provider: &P,
    cancel: &CancellationToken,
    settings: &Settings,
    conn: &Conn,
    command: &str,
    input: &[u8],
    timeout: Duration,
    step: Step,
) -> Result<Vec<u8>, Attempt> {
    let stop = |s: Stop| Attempt::Stop(s);
    let deadline = Instant::now() + conn.reachable.patience;
    let mut delay = Duration::from_millis(500);
    let mut after_failure = false;
    loop {
        provider
            .before_connect(&conn.machine, settings, after_failure)
            .await
            .map_err(|e| stop(failed(step, e)))?;
        let error = match remote::exec(&conn.reachable.endpoint, command, input, timeout).await {
            Ok(out) => return Ok(out.stdout),
            Err(e) => e,
        };
        let transient = match &error {
            RemoteError::Connection { .. } | RemoteError::Timeout { .. } => true,
            RemoteError::RefusedKey { .. } => conn.reachable.refused_key_is_transient,
            _ => false,
        };
        if !transient || Instant::now() >= deadline {
            return Err(Attempt::Refused(error));
        }
        // A connection that keeps failing may mean the machine is gone; not being able to
        // tell is a failure of its own, never read as "still there".
        match provider.gone(&conn.machine).await {
            Ok(None) => {}
            Ok(Some(gone)) => {
                return Err(stop(Stop::Failed(Failure {
                    reclaimed: gone.reclaimed,
                    ..failure(step, gone.reason)
                })));
            }
            Err(e) => {
                return Err(stop(failed(
                    step,
                    format!(
                        "{error} ({}); whether it is still there cannot be told: {e}",
                        conn.machine.id
                    ),
                )));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return Err(stop(Stop::Interrupted)),
        }
        delay = (delay * 2).min(Duration::from_secs(15));
        after_failure = true;
    }
}
