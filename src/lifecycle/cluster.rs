//! A cluster test's machines besides the one it races from: its Elasticsearch nodes. Each is
//! got and recorded with its role at launching, reached at booting, installed and started
//! with Rally's own node management before each race (`node.sh start`: `esrally install`
//! under the installation id state recorded, then `esrally start`), stopped after it
//! (`esrally stop`, which writes the node's telemetry) with its logs brought home, and given
//! back with the test's own machine. The race itself runs on the test's machine against every
//! node (`race.sh start RACE_ID TARGET_HOSTS`).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use uuid::Uuid;

use super::{
    Conn, Ctx, Failure, Stop, answers, failed, failure, reachable, record_of, results_dir, run_with,
};
use crate::address::Address;
use crate::plan::{Cluster, Settings, Test};
use crate::provider::Provider;
use crate::remote::{self, RemoteError, tail};
use crate::state::{Member, ResultFile, Role, Step, TestRecord};
use crate::templates::{Artifacts, NodeCommand, cluster_target_hosts};

/// How long a node may take to be installed and started: `esrally install` may download the
/// distribution first.
const START_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long stopping a node and bringing its logs home may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(600);
const LOG_TAIL_LINES: usize = 40;

/// A node of the test's cluster that answers.
struct Node {
    index: u32,
    installation_id: Uuid,
    conn: Conn,
}

impl Node {
    fn name(&self) -> String {
        Role::node_name(self.index)
    }
}

/// Launching, once the machine the test races from is recorded: a machine for every node the
/// attempt does not hold yet, each recorded with its role as soon as it is got and before
/// anything runs on it. A node got before a crash is found again by its provider (the
/// member's name is part of what names the launch), never got twice.
pub(super) async fn acquire_nodes<P: Provider>(ctx: &Ctx<P>, test: &Test) -> Result<(), Stop> {
    let Some(cluster) = &test.settings.cluster else {
        return Ok(());
    };
    let settings = test.settings.for_nodes();
    for index in 0..cluster.nodes.get() {
        let record = record_of(ctx, &test.address)?;
        if node_member(&record, index).is_some() {
            continue;
        }
        let name = Role::node_name(index);
        let run_dir = (record.machine.as_ref())
            .and_then(|m| m.run_dir.as_deref())
            .ok_or_else(|| failed(Step::Launching, "state names no machine for this test"))?;
        let asked = super::ask(ctx, test, &record, &settings, Some(&name)).await;
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
        // The node's own directory: its Rally home, so that stopping the run there (a
        // released host of a pool) stops the Elasticsearch it launched.
        machine.run_dir = Some(format!("{run_dir}/{name}"));
        machine.usd_per_hour = ctx.prices.usd_per_hour(&settings, machine.spot);
        ctx.state.record(&test.address, |r| {
            r.members.push(Member {
                role: Role::Node {
                    index,
                    installation_id: Uuid::new_v4(),
                },
                machine,
                peer_address: None,
            })
        })?;
    }
    Ok(())
}

/// The record's member that is node `index`, if it holds one.
fn node_member(record: &TestRecord, index: u32) -> Option<&Member> {
    (record.members.iter())
        .filter(|m| m.machine.released_at.is_none())
        .find(|m| matches!(m.role, Role::Node { index: i, .. } if i == index))
}

/// Booting (and before every later step that needs them): waits until each node runs and
/// answers, all at once, and records where the test's other machines reach it.
async fn reach_nodes<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    step: Step,
) -> Result<Vec<Node>, Stop> {
    let Some(cluster) = &test.settings.cluster else {
        return Ok(vec![]);
    };
    let record = record_of(ctx, &test.address)?;
    let settings = test.settings.for_nodes();
    let mut members = Vec::new();
    for index in 0..cluster.nodes.get() {
        let member = node_member(&record, index).ok_or_else(|| {
            failed(
                step,
                format!("state names no machine for {}", Role::node_name(index)),
            )
        })?;
        members.push(member.clone());
    }
    let reached = all(members.into_iter().map(|member| {
        let settings = &settings;
        async move {
            let reachable =
                reachable(&ctx.provider, &ctx.cancel, &member.machine, settings).await?;
            let conn = Conn {
                machine: member.machine,
                reachable,
            };
            answers(&ctx.provider, &ctx.cancel, settings, &conn).await?;
            let Role::Node {
                index,
                installation_id,
            } = member.role;
            Ok::<_, Stop>(Node {
                index,
                installation_id,
                conn,
            })
        }
    }))
    .await;
    let nodes: Vec<Node> = reached.into_iter().collect::<Result<_, _>>()?;
    let peers: Vec<(String, Option<String>)> = (nodes.iter())
        .map(|n| {
            (
                n.conn.machine.id.clone(),
                n.conn.reachable.peer_address.clone(),
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
    Ok(nodes)
}

/// Booting: the test's nodes run and answer, and state knows where they are reached.
pub(super) async fn boot_nodes<P: Provider>(ctx: &Ctx<P>, test: &Test) -> Result<(), Stop> {
    reach_nodes(ctx, test, Step::Booting).await.map(drop)
}

/// Where the test's other machines reach each node, in node order.
fn peers(record: &TestRecord, cluster: &Cluster, step: Step) -> Result<Vec<String>, Stop> {
    (0..cluster.nodes.get())
        .map(|index| {
            let peer = node_member(record, index).and_then(|m| m.peer_address.clone());
            peer.ok_or_else(|| {
                failed(
                    step,
                    format!(
                        "state names no address the other machines reach {} at",
                        Role::node_name(index)
                    ),
                )
            })
        })
        .collect()
}

/// The third argument of `race.sh start` for a cluster test: every node's HTTP address; none
/// for a test of one machine.
pub(super) fn race_targets(test: &Test, record: &TestRecord) -> Result<Option<String>, Stop> {
    match &test.settings.cluster {
        None => Ok(None),
        Some(cluster) => {
            let peers = peers(record, cluster, Step::Racing)?;
            let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
            Ok(Some(cluster_target_hosts(&peers)))
        }
    }
}

/// Installing, after the test's own machine: on every node at once, the bundle and Rally
/// (`install.sh`), then `node.sh start`, which installs the node unless its installation id
/// is installed already and starts it unless it answers. `renew`: the nodes raced before, so
/// their bounds start again first, as the test's machine's did.
pub(super) async fn start_nodes<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    artifacts: &Artifacts,
    renew: bool,
) -> Result<(), Stop> {
    let Some(cluster) = &test.settings.cluster else {
        return Ok(());
    };
    let step = Step::Installing;
    let nodes = reach_nodes(ctx, test, step).await?;
    let record = record_of(ctx, &test.address)?;
    let names: Vec<String> = (0..cluster.nodes.get()).map(Role::node_name).collect();
    let masters: Vec<&str> = names.iter().map(String::as_str).collect();
    let peers = peers(&record, cluster, step)?;
    let seeds: Vec<&str> = peers.iter().map(String::as_str).collect();
    let race_id = record
        .race_id
        .ok_or_else(|| failed(step, "state names no race id for this attempt"))?
        .to_string();
    let settings = test.settings.for_nodes();
    let origin = crate::staging::Origin {
        workspace: &ctx.plan.name,
        run_id: record.run_id.as_deref().unwrap_or(&ctx.run_id),
    };
    let started = all(nodes.iter().map(|node| {
        let (settings, origin, masters, seeds, race_id) =
            (&settings, &origin, &masters, &seeds, &race_id);
        async move {
            if renew {
                let expires_at = ctx
                    .provider
                    .extend(
                        &node.conn.machine,
                        settings,
                        artifacts,
                        &node.conn.reachable.endpoint,
                    )
                    .await
                    .map_err(|e| failed(step, format!("{}: {e}", node.name())))?;
                record_member(ctx, &test.address, &node.conn.machine.id, |m| {
                    m.machine.expires_at = expires_at
                })?;
            }
            super::install_on(
                &ctx.provider,
                &ctx.cancel,
                &ctx.renderer,
                test,
                artifacts,
                &node.conn,
                origin,
            )
            .await?;
            let digest = artifacts.install_digest();
            record_member(ctx, &test.address, &node.conn.machine.id, |m| {
                m.machine.installed = Some(digest)
            })?;
            let (name, id) = (node.name(), node.installation_id.to_string());
            let start = NodeCommand::Start {
                name: &name,
                ip: seeds[node.index as usize],
                masters,
                seed_ips: seeds,
                installation_id: &id,
                race_id,
            };
            let start = node_sh(node, start, step)?;
            node_command(
                ctx,
                settings,
                node,
                &start,
                START_TIMEOUT,
                step,
                "did not start",
            )
            .await
        }
    }))
    .await;
    started.into_iter().collect()
}

/// Collecting, before the race's own files: stops every node at once (`esrally stop`, which
/// writes the node's telemetry) and brings its logs home into `nodes/<node>/` of the race's
/// results; their files, sha256 included.
pub(super) async fn stop_nodes<P: Provider>(
    ctx: &Ctx<P>,
    test: &Test,
    record: &TestRecord,
) -> Result<Vec<ResultFile>, Stop> {
    if test.settings.cluster.is_none() {
        return Ok(vec![]);
    }
    let step = Step::Collecting;
    let nodes = reach_nodes(ctx, test, step).await?;
    let settings = test.settings.for_nodes();
    let dir = results_dir(ctx, test, record).join("nodes");
    let collected = all(nodes.iter().map(|node| {
        let (settings, dir) = (&settings, &dir);
        async move {
            let (name, id) = (node.name(), node.installation_id.to_string());
            let stop = NodeCommand::Stop {
                installation_id: &id,
            };
            let stop = node_sh(node, stop, step)?;
            node_command(
                ctx,
                settings,
                node,
                &stop,
                STOP_TIMEOUT,
                step,
                "did not stop",
            )
            .await?;
            let collect = NodeCommand::Collect {
                installation_id: &id,
                name: &name,
            };
            let collect = node_sh(node, collect, step)?;
            let bytes = run_with(
                &ctx.provider,
                &ctx.cancel,
                settings,
                &node.conn,
                &collect,
                b"",
                STOP_TIMEOUT,
                step,
            )
            .await?;
            let into = dir.join(node.name());
            crate::collect::unpack(&bytes, &into).map_err(|e| {
                failed(
                    step,
                    format!(
                        "cannot store {}'s logs in {}: {e}",
                        node.name(),
                        into.display()
                    ),
                )
            })
        }
    }))
    .await;
    let mut files = Vec::new();
    for got in collected {
        files.extend(got?);
    }
    Ok(files)
}

/// The line that runs `command` on `node`, in its run directory.
fn node_sh(node: &Node, command: NodeCommand<'_>, step: Step) -> Result<String, Stop> {
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
    settings: &Settings,
    node: &Node,
    command: &str,
    timeout: Duration,
    step: Step,
    what: &str,
) -> Result<(), Stop> {
    let ran = super::attempt(
        &ctx.provider,
        &ctx.cancel,
        settings,
        &node.conn,
        command,
        b"",
        timeout,
        step,
    )
    .await;
    match ran {
        Ok(_) => Ok(()),
        Err(super::Attempt::Stop(stop)) => Err(stop),
        Err(super::Attempt::Refused(RemoteError::Failed { code, stderr, .. })) => {
            Err(Stop::Failed(Failure {
                log_tail: Some(tail(&stderr, LOG_TAIL_LINES)),
                ..failure(
                    step,
                    format!(
                        "{} {what} on {} ({}): node.sh exited with {}",
                        node.name(),
                        node.conn.reachable.endpoint.name(),
                        node.conn.machine.id,
                        remote::exit_of(code)
                    ),
                )
            }))
        }
        Err(super::Attempt::Refused(e)) => Err(super::refused(step, &node.conn, e)),
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

/// Gives back every node the record of `address` holds, each with the settings the record
/// was made with (of the nodes: [`Settings::for_nodes`]), recording each as it goes.
pub(super) async fn release_nodes<P: Provider>(
    ctx: &Ctx<P>,
    address: &Address,
    settings: &Settings,
) -> Result<(), Failure> {
    let held: Vec<_> = ctx.state.read(|s| {
        (s.tests.get(address).into_iter())
            .flat_map(|r| r.live_machines())
            .filter(|(_, role)| role.is_some())
            .map(|(m, _)| m.clone())
            .collect()
    });
    if held.is_empty() {
        return Ok(());
    }
    let settings = settings.for_nodes();
    for machine in held {
        ctx.provider
            .release(&machine, &settings)
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
