//! A cluster test's machines besides the one it races from: its Elasticsearch nodes and its
//! other load drivers. Each is got and recorded with its role at launching and reached at
//! booting. Before each race every node is installed and started with Rally's own node
//! management (`node.sh start`: `esrally install` under the installation id state recorded,
//! then `esrally start`) while every other load driver gets Rally; with more than one load
//! driver, Rally's daemon (`esrallyd`) then starts on the test's machine, which coordinates,
//! and on each other driver. The race runs on the test's machine against every node
//! (`race.sh start RACE_ID TARGET_HOSTS [LOAD_DRIVER_HOSTS]`). After it each node is stopped
//! (`esrally stop`, which writes the node's telemetry) with its logs brought home, and the
//! daemons stop; everything is given back with the test's own machine. The variants of a
//! cluster test race on one cluster ([`share_members`]), each with nodes of its own.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use uuid::Uuid;

use super::{
    Conn, Ctx, Failure, Stop, answers, failed, failure, reachable, record_of, results_dir, run_with,
};
use crate::address::Address;
use crate::plan::{Settings, Test};
use crate::provider::{MemberSpec, Provider};
use crate::remote::{self, RemoteError, tail};
use crate::state::{Member, ResultFile, Role, State, Step, TestRecord};
use crate::templates::{Artifacts, NodeCommand, cluster_target_hosts, shell_quote};

/// How long a node may take to be installed and started: `esrally install` may download the
/// distribution first.
const START_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long stopping a node and bringing its logs home may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long Rally's daemon may take to start or stop.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(120);
const LOG_TAIL_LINES: usize = 40;

/// A machine a cluster test holds besides its own, named before it is got: node `i`, or load
/// driver `i` (from 1).
#[derive(Debug, Clone, Copy)]
enum Slot {
    Node(u32),
    Driver(u32),
}

impl Slot {
    fn name(self) -> String {
        match self {
            Slot::Node(index) => Role::node_name(index),
            Slot::Driver(index) => Role::driver_name(index),
        }
    }

    fn holds(self, role: &Role) -> bool {
        match (self, *role) {
            (Slot::Node(i), Role::Node { index, .. })
            | (Slot::Driver(i), Role::Driver { index }) => i == index,
            _ => false,
        }
    }

    /// The slot a machine of `role` fills.
    fn of(role: &Role) -> Slot {
        match *role {
            Role::Node { index, .. } => Slot::Node(index),
            Role::Driver { index } => Slot::Driver(index),
        }
    }

    /// Where the member in this slot runs, below the run directory of the record holding it:
    /// its Rally home, so that stopping the run there (a released host of a pool) stops the
    /// Elasticsearch or the daemon it started.
    fn run_dir(self, test_run_dir: &str) -> String {
        format!("{test_run_dir}/{}", self.name())
    }

    /// The role a machine got for this slot is recorded with: a node's installation id is
    /// chosen with it.
    fn role(self) -> Role {
        match self {
            Slot::Node(index) => Role::Node {
                index,
                installation_id: Uuid::new_v4(),
            },
            Slot::Driver(index) => Role::Driver { index },
        }
    }
}

/// The machines the test holds besides its own: its nodes, then its load drivers but the
/// first, the test's own machine.
fn slots(test: &Test) -> Vec<Slot> {
    let Some(cluster) = &test.settings.cluster else {
        return vec![];
    };
    let nodes = (0..cluster.nodes.get()).map(Slot::Node);
    let drivers = (1..test.settings.load_drivers.get()).map(Slot::Driver);
    nodes.chain(drivers).collect()
}

/// The record's member in `slot`, if it holds one.
fn member(record: &TestRecord, slot: Slot) -> Option<&Member> {
    (record.members.iter())
        .filter(|m| m.machine.released_at.is_none())
        .find(|m| slot.holds(&m.role))
}

/// A member of the test's cluster that answers.
pub(super) struct Held {
    role: Role,
    conn: Conn,
    /// What it was got with: [`Role::settings`].
    settings: Settings,
}

impl Held {
    fn name(&self) -> String {
        self.role.name()
    }
}

/// Launching, once the machine the test races from is recorded: a machine for every member
/// the attempt does not hold yet, each recorded with its role as soon as it is got and before
/// anything runs on it. A member got before a crash is found again by its provider (its name
/// is part of what names the launch), never got twice.
pub(super) async fn acquire_members<P: Provider>(ctx: &Ctx<P>, test: &Test) -> Result<(), Stop> {
    for slot in slots(test) {
        let record = record_of(ctx, &test.address)?;
        if member(&record, slot).is_some() {
            continue;
        }
        let name = slot.name();
        let run_dir = (record.machine.as_ref())
            .and_then(|m| m.run_dir.as_deref())
            .ok_or_else(|| failed(Step::Launching, "state names no machine for this test"))?;
        let role = slot.role();
        let settings = role.settings(&test.settings);
        let spec = MemberSpec {
            name: &name,
            node: match slot {
                Slot::Node(index) => Some(index),
                Slot::Driver(_) => None,
            },
        };
        let asked = super::ask(ctx, test, &record, &settings, Some(spec)).await;
        let acquired = match asked {
            Ok(acquired) => acquired,
            Err(_) if ctx.cancel.is_cancelled() => return Err(Stop::Interrupted),
            Err(e) => return Err(failed(Step::Launching, format!("{name}: {e}"))),
        };
        let mut machine = acquired.machine;
        if acquired.adopted {
            ctx.progress.println(&format!(
                "{}: adopting {} launched by an earlier apply as {name}",
                test.address, machine.id
            ));
        }
        machine.run_dir = Some(slot.run_dir(run_dir));
        machine.usd_per_hour = ctx.prices.usd_per_hour(&settings, machine.spot);
        ctx.state.record(&test.address, |r| {
            r.members.push(Member {
                role,
                machine,
                peer_address: None,
            })
        })?;
    }
    Ok(())
}

/// The variants of a cluster test race on one cluster, as on one machine: the members the
/// group's machine was got with, in `owner`'s record, are recorded in every other record of
/// `group` that does not hold its own yet, in the same update that records the group's
/// machine there. Each in a directory below that record's run directory, under a new
/// installation id: every variant installs and starts its own nodes, with its own car and
/// release, on the same machines.
pub(super) fn share_members(s: &mut State, owner: &Address, group: &[&Test]) {
    let Some(shared) = s.tests.get(owner).map(|r| {
        (r.members.iter())
            .filter(|m| m.machine.released_at.is_none())
            .cloned()
            .collect::<Vec<_>>()
    }) else {
        return;
    };
    for test in group.iter().filter(|t| &t.address != owner) {
        let Some(r) = s.tests.get_mut(&test.address) else {
            continue;
        };
        let Some(run_dir) = r.live_machine().and_then(|m| m.run_dir.clone()) else {
            continue;
        };
        for theirs in &shared {
            let slot = Slot::of(&theirs.role);
            if member(r, slot).is_some() {
                continue;
            }
            let mut machine = theirs.machine.clone();
            machine.run_dir = Some(slot.run_dir(&run_dir));
            r.members.push(Member {
                role: slot.role(),
                machine,
                peer_address: theirs.peer_address.clone(),
            });
        }
    }
}

/// Booting (and before every later step that needs them): waits until each member runs and
/// answers, all at once, and records where the test's other machines reach it.
async fn reach_members<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    step: Step,
) -> Result<Vec<Held>, Stop> {
    let slots = slots(test);
    if slots.is_empty() {
        return Ok(vec![]);
    }
    let record = record_of(ctx, &test.address)?;
    let members: Vec<Member> = (slots.into_iter())
        .map(|slot| {
            member(&record, slot)
                .cloned()
                .ok_or_else(|| failed(step, format!("state names no machine for {}", slot.name())))
        })
        .collect::<Result<_, _>>()?;
    let reached = all(members.into_iter().map(|member| async move {
        let settings = member.role.settings(&test.settings);
        let reachable = reachable(&ctx.provider, &ctx.cancel, &member.machine, &settings).await?;
        let conn = Conn {
            machine: member.machine,
            reachable,
        };
        answers(&ctx.provider, &ctx.cancel, &settings, &conn).await?;
        Ok::<_, Stop>(Held {
            role: member.role,
            conn,
            settings,
        })
    }))
    .await;
    let held: Vec<Held> = reached.into_iter().collect::<Result<_, _>>()?;
    let peers: Vec<(String, Option<String>)> = (held.iter())
        .map(|h| {
            (
                h.conn.machine.id.clone(),
                h.conn.reachable.peer_address.clone(),
            )
        })
        .collect();
    ctx.state.record(&test.address, |r| {
        for (id, peer) in &peers {
            if let Some(m) = r.members.iter_mut().find(|m| &m.machine.id == id) {
                m.peer_address.clone_from(peer);
            }
        }
    })?;
    Ok(held)
}

/// Booting: the test's members run and answer, and state knows where they are reached.
pub(super) async fn boot_members<P: Provider>(ctx: &Ctx<P>, test: &Test) -> Result<(), Stop> {
    reach_members(ctx, test, Step::Booting).await.map(drop)
}

/// Where the test's other machines reach the members of one kind, in slot order.
fn peers(
    test: &Test,
    record: &TestRecord,
    kind: fn(&Slot) -> bool,
    step: Step,
) -> Result<Vec<String>, Stop> {
    (slots(test).into_iter().filter(kind))
        .map(|slot| {
            let peer = member(record, slot).and_then(|m| m.peer_address.clone());
            peer.ok_or_else(|| {
                failed(
                    step,
                    format!(
                        "state names no address the other machines reach {} at",
                        slot.name()
                    ),
                )
            })
        })
        .collect()
}

fn is_node(slot: &Slot) -> bool {
    matches!(slot, Slot::Node(_))
}

fn is_driver(slot: &Slot) -> bool {
    matches!(slot, Slot::Driver(_))
}

/// Where the other machines reach the test's own, which coordinates the load drivers.
fn coordinator_peer(conn: &Conn, step: Step) -> Result<&str, Stop> {
    (conn.reachable.peer_address.as_deref()).ok_or_else(|| {
        failed(
            step,
            format!(
                "the provider names no address the other machines reach {} at",
                conn.machine.id
            ),
        )
    })
}

/// What `race.sh start` takes after the race id: for a cluster test every node's HTTP
/// address, then with more than one load driver every driver's address, the test's own
/// machine (`conn`) first; nothing for a test of one machine. Shell-quoted, each after a space.
pub(super) fn race_args(test: &Test, record: &TestRecord, conn: &Conn) -> Result<String, Stop> {
    let step = Step::Racing;
    let mut args = Vec::new();
    if test.settings.cluster.is_some() {
        let nodes = peers(test, record, is_node, step)?;
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        args.push(cluster_target_hosts(&nodes));
    }
    if test.settings.several_load_drivers() {
        let mut drivers = vec![coordinator_peer(conn, step)?.to_owned()];
        drivers.extend(peers(test, record, is_driver, step)?);
        args.push(drivers.join(","));
    }
    let quoted: Vec<String> = (args.iter())
        .map(|a| shell_quote(a).map(|q| format!(" {q}")))
        .collect::<Result<_, _>>()
        .map_err(|e| failed(step, e))?;
    Ok(quoted.concat())
}

/// Installing, after the test's own machine: on every member at once, the bundle and Rally
/// (`install.sh`); on a node then `node.sh start`, which installs the node unless its
/// installation id is installed already and starts it unless it answers. `renew`: the
/// members raced before, so their bounds start again first, as the test's machine's did.
/// The members it readied, for the daemons to start on.
pub(super) async fn start_members<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    artifacts: &Artifacts,
    renew: bool,
) -> Result<Vec<Held>, Stop> {
    if test.settings.cluster.is_none() {
        return Ok(vec![]);
    }
    let step = Step::Installing;
    let held = reach_members(ctx, test, step).await?;
    let record = record_of(ctx, &test.address)?;
    let masters: Vec<String> = (slots(test).into_iter().filter(is_node))
        .map(Slot::name)
        .collect();
    let masters: Vec<&str> = masters.iter().map(String::as_str).collect();
    let seeds = peers(test, &record, is_node, step)?;
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    let race_id = record
        .race_id
        .ok_or_else(|| failed(step, "state names no race id for this attempt"))?
        .to_string();
    let origin = crate::staging::Origin {
        workspace: &ctx.plan.name,
        run_id: record.run_id.as_deref().unwrap_or(&ctx.run_id),
    };
    // Nodes on one machine (the local provider's) start in turn: a distribution `esrally
    // install` downloads goes into the machine's shared cache under one temporary name.
    let turns: HashMap<String, tokio::sync::Mutex<()>> = (held.iter())
        .map(|m| (m.conn.reachable.endpoint.name(), Default::default()))
        .collect();
    let started = all(held.iter().map(|member| {
        let (origin, masters, seeds, race_id) = (&origin, &masters, &seeds, &race_id);
        let turn = &turns[&member.conn.reachable.endpoint.name()];
        async move {
            if renew {
                let expires_at = ctx
                    .provider
                    .extend(
                        &member.conn.machine,
                        &member.settings,
                        artifacts,
                        &member.conn.reachable.endpoint,
                    )
                    .await
                    .map_err(|e| failed(step, format!("{}: {e}", member.name())))?;
                record_member(ctx, &test.address, &member.conn.machine.id, |m| {
                    m.machine.expires_at = expires_at
                })?;
            }
            super::install_on(
                &ctx.provider,
                &ctx.cancel,
                &ctx.renderer,
                test,
                artifacts,
                &member.conn,
                origin,
            )
            .await?;
            let digest = artifacts.install_digest();
            record_member(ctx, &test.address, &member.conn.machine.id, |m| {
                m.machine.installed = Some(digest)
            })?;
            let Role::Node {
                index,
                installation_id,
            } = member.role
            else {
                return Ok(());
            };
            let (name, id) = (member.name(), installation_id.to_string());
            let start = NodeCommand::Start {
                name: &name,
                ip: seeds[index as usize],
                masters,
                seed_ips: seeds,
                installation_id: &id,
                race_id,
            };
            let start = node_sh(member, start, step)?;
            let _turn = turn.lock().await;
            node_command(ctx, member, &start, START_TIMEOUT, step, "did not start").await
        }
    }))
    .await;
    started.into_iter().collect::<Result<(), Stop>>()?;
    Ok(held)
}

/// Installing, once every machine has Rally: with more than one load driver, Rally's daemon
/// on the test's own machine (`conn`), which coordinates, then on every other driver of
/// `members` at once, each unless it runs.
pub(super) async fn start_daemons<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    conn: &Conn,
    members: &[Held],
) -> Result<(), Stop> {
    if !test.settings.several_load_drivers() {
        return Ok(());
    }
    let step = Step::Installing;
    let coordinator = coordinator_peer(conn, step)?;
    let own = Daemon::Start {
        own: coordinator,
        coordinator,
    };
    daemon(ctx, &test.settings, conn, "the test's machine", own, step).await?;
    let drivers = (members.iter()).filter(|h| matches!(h.role, Role::Driver { .. }));
    let started = all(drivers.map(|driver| async {
        let start = Daemon::Start {
            own: coordinator_peer(&driver.conn, step)?,
            coordinator,
        };
        daemon(
            ctx,
            &driver.settings,
            &driver.conn,
            &driver.name(),
            start,
            step,
        )
        .await
    }))
    .await;
    started.into_iter().collect()
}

/// What `race.sh daemon` is asked of a load driver.
#[derive(Clone, Copy)]
enum Daemon<'a> {
    /// Start it unless it runs: the driver's own address and the coordinator's.
    Start { own: &'a str, coordinator: &'a str },
    /// Stop it unless it is stopped.
    Stop,
}

/// Runs `race.sh daemon ...` on a load driver (`who`); a failure names the driver and ends
/// with what the daemon said.
async fn daemon<P: Provider>(
    ctx: &Ctx<P>,
    settings: &Settings,
    conn: &Conn,
    who: &str,
    asked: Daemon<'_>,
    step: Step,
) -> Result<(), Stop> {
    let run_dir = super::quoted_run_dir(conn, step)?;
    let (args, what) = match asked {
        Daemon::Start { own, coordinator } => {
            let own = shell_quote(own).map_err(|e| failed(step, e))?;
            let coordinator = shell_quote(coordinator).map_err(|e| failed(step, e))?;
            (format!("start {own} {coordinator}"), "did not start")
        }
        Daemon::Stop => ("stop".to_owned(), "did not stop"),
    };
    let command = format!("bash {run_dir}/race.sh daemon {args}");
    let ran = super::attempt(
        &ctx.provider,
        &ctx.cancel,
        settings,
        conn,
        &command,
        b"",
        DAEMON_TIMEOUT,
        step,
    )
    .await;
    let what = format!("Rally's daemon (esrallyd) of {who} {what}");
    refused_with_tail(ran, step, conn, &what, "race.sh")
}

/// Collecting, before the race's own files: at once, stops every node (`esrally stop`, which
/// writes the node's telemetry) and brings its logs home into `nodes/<node>/` of the race's
/// results, and stops every other load driver's daemon and brings its Rally log home into
/// `drivers/<driver>/`; then the daemon of the test's own machine (`conn`), which coordinated
/// them. The members' files, sha256 included.
pub(super) async fn stop_members<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    conn: &Conn,
    record: &TestRecord,
) -> Result<Vec<ResultFile>, Stop> {
    if test.settings.cluster.is_none() {
        return Ok(vec![]);
    }
    let step = Step::Collecting;
    let held = reach_members(ctx, test, step).await?;
    let results = &results_dir(ctx, test, record);
    let collected = all(held.iter().map(|member| async move {
        let name = member.name();
        let (collect, into) = match member.role {
            Role::Node {
                installation_id, ..
            } => {
                let id = installation_id.to_string();
                let stop = NodeCommand::Stop {
                    installation_id: &id,
                };
                let stop = node_sh(member, stop, step)?;
                node_command(ctx, member, &stop, STOP_TIMEOUT, step, "did not stop").await?;
                let collect = NodeCommand::Collect {
                    installation_id: &id,
                    name: &name,
                };
                (node_sh(member, collect, step)?, results.join("nodes"))
            }
            // A driver's Rally log says what its share of the race did; its own race.sh
            // collects it, as the coordinator's does the race's.
            Role::Driver { .. } => {
                daemon(
                    ctx,
                    &member.settings,
                    &member.conn,
                    &name,
                    Daemon::Stop,
                    step,
                )
                .await?;
                let run_dir = super::quoted_run_dir(&member.conn, step)?;
                let collect = format!("bash {run_dir}/race.sh collect");
                (collect, results.join("drivers"))
            }
        };
        let bytes = run_with(
            &ctx.provider,
            &ctx.cancel,
            &member.settings,
            &member.conn,
            &collect,
            b"",
            STOP_TIMEOUT,
            step,
        )
        .await?;
        let into = into.join(&name);
        crate::collect::unpack(&bytes, &into).map_err(|e| {
            failed(
                step,
                format!("cannot store {name}'s logs in {}: {e}", into.display()),
            )
        })
    }))
    .await;
    let mut files = Vec::new();
    for got in collected {
        files.extend(got?);
    }
    if test.settings.several_load_drivers() {
        daemon(
            ctx,
            &test.settings,
            conn,
            "the test's machine",
            Daemon::Stop,
            step,
        )
        .await?;
    }
    Ok(files)
}

/// The line that runs `command` on `node`, in its run directory.
fn node_sh(node: &Held, command: NodeCommand<'_>, step: Step) -> Result<String, Stop> {
    let run_dir = (node.conn.machine.run_dir.as_deref()).ok_or_else(|| {
        failed(
            step,
            format!("state names no run directory for {}", node.name()),
        )
    })?;
    command.line(run_dir).map_err(|e| failed(step, e))
}

/// Runs one of `node.sh`'s commands on `node`; a failure names the node and carries the
/// tail of what the script said (it ends with the node's log).
async fn node_command<P: Provider>(
    ctx: &Ctx<P>,
    node: &Held,
    command: &str,
    timeout: Duration,
    step: Step,
    what: &str,
) -> Result<(), Stop> {
    let ran = super::attempt(
        &ctx.provider,
        &ctx.cancel,
        &node.settings,
        &node.conn,
        command,
        b"",
        timeout,
        step,
    )
    .await;
    let what = format!("{} {what}", node.name());
    refused_with_tail(ran, step, &node.conn, &what, "node.sh")
}

/// A script's outcome as the lifecycle takes it: a `script` that failed is named with what
/// went wrong (`what`) and the machine, and its failure ends with the tail of what the script
/// said on stderr.
fn refused_with_tail(
    ran: Result<Vec<u8>, super::Attempt>,
    step: Step,
    conn: &Conn,
    what: &str,
    script: &str,
) -> Result<(), Stop> {
    match ran {
        Ok(_) => Ok(()),
        Err(super::Attempt::Stop(stop)) => Err(stop),
        Err(super::Attempt::Refused(RemoteError::Failed { code, stderr, .. })) => {
            Err(Stop::Failed(Failure {
                log_tail: Some(tail(&stderr, LOG_TAIL_LINES)),
                ..failure(
                    step,
                    format!(
                        "{what} on {} ({}): {script} exited with {}",
                        conn.reachable.endpoint.name(),
                        conn.machine.id,
                        remote::exit_of(code)
                    ),
                )
            }))
        }
        Err(super::Attempt::Refused(e)) => Err(super::refused(step, conn, e)),
    }
}

/// Changes the member of the record of `address` whose machine is `id`.
fn record_member<P: Provider>(
    ctx: &Ctx<P>,
    address: &Address,
    id: &str,
    f: impl FnOnce(&mut Member),
) -> Result<(), Stop> {
    ctx.state.record(address, |r| {
        if let Some(m) = r.members.iter_mut().find(|m| m.machine.id == id) {
            f(m);
        }
    })?;
    Ok(())
}

/// Gives back every member the record of `address` holds, each with the settings it was
/// got with ([`Role::settings`] of the test's recorded `settings`), recording each as it goes.
pub(super) async fn release_members<P: Provider>(
    ctx: &Ctx<P>,
    address: &Address,
    settings: &Settings,
) -> Result<(), Failure> {
    let held: Vec<_> = ctx.state.read(|s| {
        (s.tests.get(address).into_iter())
            .flat_map(|r| r.live_machines())
            .filter_map(|(m, role)| Some((m.clone(), role?)))
            .collect()
    });
    for (machine, role) in held {
        ctx.provider
            .release(&machine, &role.settings(settings))
            .await
            .map_err(|e| super::not_released(&machine, e))?;
        ctx.state
            .record(address, |r| r.mark_machine_released(&machine.id))
            .map_err(|e| failure(Step::Terminating, e))?;
    }
    Ok(())
}

/// Drives `futures` at once on this task; their outputs in order. futures-util's `join_all`
/// would do, but needs that crate's `alloc` feature, which rebuilds the AWS SDK built on it.
async fn all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(out) => *output = Some(out),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn all_drives_its_futures_at_once_and_answers_in_their_order() {
        let started = tokio::time::Instant::now();
        let out = all((1..=3u64).rev().map(|n| async move {
            tokio::time::sleep(Duration::from_secs(n)).await;
            n
        }))
        .await;
        assert_eq!(out, [3, 2, 1]);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(3),
            "not one after another"
        );
    }
}
