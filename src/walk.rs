//! Scheduling an apply: the plan's DAG walked with bounded parallelism (`--parallelism`, each
//! suite's `parallelism`), every planned test handed to the [`lifecycle`], and Ctrl-C turned
//! into "start nothing new". It knows no provider: a suite's bound is the plan's to say
//! ([`crate::plan::Suite::bound`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::address::Address;
use crate::backend::StateHandle;
use crate::graph::{Graph, Node};
use crate::lifecycle::{self, Ctx, Start, Stop};
use crate::plan::{Plan, Test};
use crate::planner::{Action, Changes};
use crate::provider::Provider;
use crate::state::Step;
use crate::templates::{ArtifactMap, Renderer};
use crate::ui::Progress;

pub struct ApplyOptions {
    pub parallelism: usize,
    /// The directory whose `results/` tree results go into (see [`crate::results::layout`]).
    pub results_base: std::path::PathBuf,
    /// What the machines cost, recorded with each one got.
    pub prices: crate::cost::Prices,
}

/// What an apply did, for the summary and the exit code.
pub struct ApplyReport {
    pub completed: Vec<Address>,
    pub failed: Vec<(Address, Step, String, Option<String>)>,
    pub interrupted: bool,
    /// Tests whose machine may still run (and cost money, or hold a host).
    pub still_running: Vec<(Address, crate::state::Machine)>,
    /// The run this apply made: what its results and machine time are filed under.
    pub run_id: String,
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
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<ApplyReport> {
    let ctx = Arc::new(Ctx {
        provider,
        state,
        results_root: crate::results::layout::workspace(&options.results_base, &plan.name),
        plan,
        artifacts,
        renderer,
        run_id: crate::state::new_run_id(),
        progress,
        cancel,
        handoffs: changes.handoffs.clone(),
        prices: options.prices.clone(),
    });
    let mut report = ApplyReport {
        completed: vec![],
        failed: vec![],
        interrupted: false,
        still_running: vec![],
        run_id: ctx.run_id.clone(),
    };

    // Tests that left the plan go first: they cost money or hold hosts, and produce nothing.
    for change in changes
        .changes
        .iter()
        .filter(|c| c.action == Action::Terminate)
    {
        let shown = change.address.to_string();
        ctx.progress.step(&shown, "terminating");
        match lifecycle::release(&ctx, &change.address).await {
            Ok(()) => ctx
                .progress
                .finished(change.address.suite(), &shown, "terminated"),
            Err(Stop::State(e)) => return Err(e.into()),
            Err(Stop::Failed(f)) => anyhow::bail!("{shown}: {}", f.error),
            Err(Stop::Interrupted) => anyhow::bail!("{shown}: interrupted"),
        }
    }

    let starts: HashMap<&Address, Start> = changes
        .changes
        .iter()
        .filter_map(|c| Some((&c.address, Start::of(c.action)?)))
        .collect();
    let graph = Graph::compile(&ctx.plan)?;
    let global = Arc::new(Semaphore::new(options.parallelism.max(1)));
    let suite_limits: Vec<Option<Arc<Semaphore>>> = ctx
        .plan
        .suites
        .iter()
        .map(|s| s.bound().map(|n| Arc::new(Semaphore::new(n.get()))))
        .collect();
    let mut announced = HashSet::new();
    let mut walk = graph.walk();
    let mut tasks = JoinSet::new();
    loop {
        let mut progressed = false;
        for node in walk.take_ready() {
            progressed = true;
            // The node's tests with work to do, each with its start.
            let work: Vec<(Address, Start)> = match graph.node(node) {
                _ if ctx.cancel.is_cancelled() => vec![],
                Node::Test(address) => starts
                    .get(address)
                    .map(|s| (address.clone(), *s))
                    .into_iter()
                    .collect(),
                Node::Variants(addresses) => addresses
                    .iter()
                    .filter_map(|a| Some((a.clone(), *starts.get(a)?)))
                    .collect(),
                Node::Barrier(_) => vec![],
            };
            if work.is_empty() {
                walk.complete(node);
                continue;
            }
            let suite_index = graph
                .suite_index(node)
                .expect("test nodes belong to a suite");
            let suite = &ctx.plan.suites[suite_index];
            if announced.insert(suite_index) {
                let n = suite
                    .tests
                    .iter()
                    .filter(|t| starts.contains_key(&t.address))
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
                let tests: Vec<(&crate::plan::Test, Start)> = work
                    .iter()
                    .map(|(a, start)| {
                        (
                            ctx.plan.test(a).expect("changes name planned tests"),
                            *start,
                        )
                    })
                    .collect();
                let outcomes = if ctx.cancel.is_cancelled() {
                    work.iter()
                        .map(|(a, _)| (a.clone(), Err(Stop::Interrupted)))
                        .collect()
                } else {
                    lifecycle::run(&ctx, &tests).await
                };
                (node, outcomes)
            });
        }
        if progressed {
            continue;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (node, outcomes) = joined?;
        walk.complete(node);
        for (address, outcome) in outcomes {
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
                Err(Stop::State(e)) => return Err(e.into()),
            }
        }
    }
    report.interrupted |= ctx.cancel.is_cancelled();
    report.still_running = ctx.state.read(|s| {
        s.tests
            .iter()
            .flat_map(|(a, r)| r.live_machines().map(|(m, _)| (a.clone(), m.clone())))
            .collect()
    });
    Ok(report)
}

/// The most of something the walk may hold at once under `parallelism` (EC2's vCPUs, say),
/// each test holding `takes` of it while it runs, and the suite where that peak is: suites run
/// one after another, and within one at most `parallelism` (and the suite's bound) of its
/// nodes at once, the heaviest in the worst case; a test's variants share one machine, so
/// they are one node. `None` for a plan without suites.
pub fn peak(plan: &Plan, parallelism: usize, takes: impl Fn(&Test) -> u64) -> Option<(u64, &str)> {
    plan.suites
        .iter()
        .map(|suite| {
            let mut nodes: HashMap<String, u64> = HashMap::new();
            for t in &suite.tests {
                let node = match &t.variant {
                    Some(v) => format!("variants of {}", v.test),
                    None => format!("test {}", t.address),
                };
                let held = nodes.entry(node).or_default();
                *held = (*held).max(takes(t));
            }
            let mut held: Vec<u64> = nodes.into_values().collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            let at_once = suite
                .bound()
                .map_or(parallelism, |b| b.get().min(parallelism))
                .max(1);
            (held.iter().take(at_once).sum(), suite.name.as_str())
        })
        .max_by_key(|(held, _)| *held)
}

/// The largest `--parallelism` up to `parallelism` whose [`peak`] stays within `room`; `None`
/// when even one test at a time would not.
pub fn fitting_parallelism(
    plan: &Plan,
    parallelism: usize,
    room: u64,
    takes: impl Fn(&Test) -> u64,
) -> Option<usize> {
    let widest = plan.suites.iter().map(|s| s.tests.len()).max().unwrap_or(1);
    (1..=parallelism.min(widest))
        .rev()
        .find(|&p| peak(plan, p, &takes).is_none_or(|(held, _)| held <= room))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use std::num::NonZeroUsize;

    use super::*;
    use crate::planner::{self, Options};
    use crate::provider::fake::Fake;
    use crate::state::{Handover, State, Status};

    /// Stands in for esrally: writes a report, fails when asked with `--fail` (or
    /// `--fail-at=N`: in the N-th race it runs), hangs without a word with `--hang` (its pid in
    /// `hung.pid` beside the report). With `--linger` it leaves a process running that names
    /// its report, as Rally's own would, and a child of it that names nothing but is called
    /// `esrally`, both outside the race's session (their pids in `linger.pid`,
    /// `linger.child`); with `--no-leftovers` it fails while such a process of any race is
    /// still there, a zombie too, as Rally counts one.
    ///
    /// For a cluster's nodes (`node.sh`): `install` records the installation, noting in
    /// `node-overlaps` one that began while another ran (`--car=fails`:
    /// it fails; `--car=stranger`: a process named `stranger` beside it answers as the node
    /// first; `--car=slow`: its start takes two seconds), `start` runs a process naming the installation that answers HTTP on the
    /// node's address and port 9200 with its name, `stop` wipes the installation, as Rally's
    /// does (node.sh ends the process); each
    /// counted in `node-installs`, `node-starts` beside it. A race notes its target hosts;
    /// with `--until-released` it says it is `racing` beside it and runs until `released` is.
    const FAKE_ESRALLY: &str = r#"#!/bin/bash
here="$(dirname "$0")"
for a in "$@"; do
  case "$a" in
    --installation-id=*) id=${a#*=};;
    --node-name=*) name=${a#*=};;
    --network-host=*) ip=${a#*=};;
    --target-hosts=*) echo "${a#*=}" >> "$here/targets";;
    --load-driver-hosts=*) echo "${a#*=}" >> "$here/load-drivers";;
  esac
done
root="$RALLY_HOME/.rally/benchmarks/races/$id"
# Answers HTTP on IP:9200 with NAME, as a node does, in a process whose command line names TAG.
serve() {
  setsid nohup python3 -c '
import http.server, json, sys
tag, ip, name = sys.argv[1:]
class Node(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"name": name}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer((ip, 9200), Node).serve_forever()
' "$@" < /dev/null &
}
case "$1" in
  install)
    echo >> "$here/node-installs"
    for a in "$@"; do
      case "$a" in
        --car=fails) echo "boom: no such car" >&2; exit 64;;
        # A node that takes two seconds to answer HTTP once started.
        --car=slow) echo slow > "$root.slow";;
        # Another node answering where this one is to start, as one left running would.
        --car=stranger)
          serve "$here/stranger" "$ip" "$name" > /dev/null 2>&1
          until python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "http://$ip:9200/" 2>/dev/null; do sleep 0.05; done;;
      esac
    done
    # The nodes of one machine install in turn (every fake machine is this one): two at once
    # are noted in `node-overlaps`.
    mkdir "$here/installing" 2>/dev/null || echo "$name" >> "$here/node-overlaps"
    sleep 0.1
    rmdir "$here/installing" 2>/dev/null
    mkdir -p "$root/dist" "$root/$name/logs/server"
    printf '{"binary-path": "%s", "name": "%s", "ip": "%s"}' "$root/dist" "$name" "$ip" > "$root/node-config.json"
    exit 0;;
  start)
    echo >> "$here/node-starts"
    read -r name ip < <(python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); print(c["name"], c["ip"])' "$root/node-config.json")
    [ -e "$root.slow" ] && sleep 2
    serve "$root/" "$ip" "$name" >> "$root/$name/logs/server/bench.log" 2>&1
    touch "$root/node"
    exit 0;;
  stop)
    rm -rf "$root/node" "$root/dist"
    exit 0;;
esac
races="$(dirname "$0")/races"
[ "$1" = race ] && echo $(( $(cat "$races" 2>/dev/null || echo 0) + 1 )) > "$races"
for a in "$@"; do
  case "$a" in
    --version) echo >> "$(dirname "$0")/installs"; echo "esrally 2.13.0"; exit 0;;
    --report-file=*) report=${a#--report-file=};;
    --fail) echo "boom: the cluster said no"; exit 64;;
    --fail-at=*) [ "$(cat "$races")" = "${a#--fail-at=}" ] && { echo "boom"; exit 64; };;
    --challenge=*) echo "${a#--challenge=}" >> "$(dirname "$0")/challenges";;
    --hang) echo "connecting"; echo $$ > "$(dirname "$report")/hung.pid"; exec sleep 3600;;
    --until-released) touch "$here/racing"; until [ -e "$here/released" ]; do sleep 0.1; done;;
    --linger) linger=1;;
    --no-leftovers) for f in $(find "$(dirname "$0")/../.." -name 'linger.*'); do
        case "$(ps -o stat= -p "$(cat "$f")")" in "") ;; *) echo "left over: $(ps -o pid=,stat=,comm= -p "$(cat "$f")")"; exit 64;; esac
      done;;
  esac
done
[ -n "$linger" ] && { d=$(dirname "$report"); ln -sf "$(command -v sleep)" "$d/esrally"; setsid bash -c '"$1" 3600 & echo $! > "$0"; wait' "$d/linger.child" "$d/esrally" "$report" >/dev/null 2>&1 & echo $! > "$d/linger.pid"; }
printf 'Metric,Task,Value,Unit\nMedian Throughput,index,100,docs/s\nerror rate,index,0.00,%%\n' > "$report"
"#;

    /// Rally's daemon as the benches have it (`esrallyd` beside the stand-in esrally): `start`
    /// notes its arguments in `daemons` beside it and leaves a process running under the name
    /// it was started by, as an actor system does (race.sh starts it through a link in the
    /// run's Rally home); `status` says whether that runs; `stop` ends it and notes so. While
    /// `daemon-fails` lies beside it, a daemon of a machine other than the coordinator does
    /// not start.
    const FAKE_ESRALLYD: &str = r#"#!/bin/bash
here="$(dirname "$(readlink -f "$0")")"
pid="$RALLY_HOME/.rally/daemon.pid"
running() { [ -s "$pid" ] && kill -0 "$(cat "$pid")" 2>/dev/null; }
case "$1" in
  status) if running; then echo Running; else echo Stopped; fi;;
  start)
    running && { echo "An actor system appears to be already running." >&2; exit 64; }
    if [ -e "$here/daemon-fails" ] && [ "${2#*=}" != "${3#*=}" ]; then
      echo "[ERROR] Cannot start actor system: [Errno 98] Address already in use"
      exit 64
    fi
    shift
    echo "start $*" >> "$here/daemons"
    mkdir -p "$RALLY_HOME/.rally/logs"
    echo "actor system started: $*" >> "$RALLY_HOME/.rally/logs/rally.log"
    setsid nohup "$0" serve < /dev/null > /dev/null 2>&1 &
    echo $! > "$pid";;
  serve) while sleep 1; do :; done;;
  stop)
    running || { echo "Actor system is not running." >&2; exit 1; }
    kill "$(cat "$pid")"
    rm -f "$pid"
    echo stop >> "$here/daemons";;
esac
"#;

    /// A workspace of local tests whose machine has a fake esrally installed.
    struct Bench {
        dir: tempfile::TempDir,
        plan: Plan,
        state: State,
        prices: crate::cost::Prices,
    }

    /// What the benches' aws tests cost.
    const PRICES: &str =
        "[[price]]\nregion = \"us-east-1\"\ninstance_type = \"m5.large\"\nusd_per_hour = 0.096\n";

    /// What the bench's tests race by default: a cluster that runs already.
    const BENCHMARK_ONLY: &str =
        "pipeline = \"benchmark-only\"\ntarget_hosts = [\"127.0.0.1:9\"]\n";

    impl Bench {
        fn new(suites: &str) -> Bench {
            Bench::with(BENCHMARK_ONLY, suites)
        }

        /// A bench whose `[defaults]` end with `defaults`.
        fn with(defaults: &str, suites: &str) -> Bench {
            let dir = tempfile::tempdir().unwrap();
            let remote = dir.path().join("remote");
            let venv = remote.join("rally-2.13.0");
            std::fs::create_dir_all(venv.join("bin")).unwrap();
            std::fs::write(venv.join(".rallyctl-installed"), "2.13.0").unwrap();
            for (name, script) in [("esrally", FAKE_ESRALLY), ("esrallyd", FAKE_ESRALLYD)] {
                let path = venv.join("bin").join(name);
                std::fs::write(&path, script).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            let plan = Bench::plan(&remote, defaults, suites);
            let file = crate::cost::PriceFile::parse(Path::new("prices.toml"), PRICES).unwrap();
            let root = crate::cost::Storage {
                volume: crate::cost::RootVolume {
                    gib: 8,
                    volume_type: "gp3".into(),
                },
                usd_per_gb_month: 0.08,
                source: crate::cost::Source::File {
                    file: Path::new("prices.toml").into(),
                },
                as_of: None,
            };
            Bench {
                prices: crate::cost::Prices::from_file(plan.tests().map(|t| &t.settings), &file)
                    .with_root_volume(plan.tests().map(|t| &t.settings), &root),
                dir,
                plan,
                state: State::new("unit"),
            }
        }

        fn plan(remote: &Path, defaults: &str, suites: &str) -> Plan {
            let text = format!(
                "version = 1\nname = \"unit\"\n[defaults]\nprovider = \"local\"\n\
                 remote_dir = \"{}\"\ntrack = \"tiny\"\noffline = true\n{defaults}{suites}",
                remote.display()
            );
            Plan::parse(Path::new("unit.toml"), &text).unwrap()
        }

        fn state_path(&self) -> PathBuf {
            self.dir.path().join("unit.state.json")
        }

        /// Plans against the bench's state and applies that plan with `fake`.
        fn apply(&mut self, fake: Fake, options: &Options) -> (ApplyReport, Fake) {
            self.apply_cancelled_after(fake, options, None)
        }

        /// Like `apply`, with Ctrl-C after `after` (when given).
        fn apply_cancelled_after(
            &mut self,
            fake: Fake,
            options: &Options,
            after: Option<std::time::Duration>,
        ) -> (ApplyReport, Fake) {
            let at = after.map(|after| std::time::Instant::now() + after);
            self.apply_cancelled_when(fake, options, move || {
                at.is_some_and(|at| std::time::Instant::now() >= at)
            })
        }

        /// Like `apply`, with Ctrl-C as soon as `when` says so (asked every 50 ms).
        fn apply_cancelled_when(
            &mut self,
            fake: Fake,
            options: &Options,
            when: impl Fn() -> bool + Send + 'static,
        ) -> (ApplyReport, Fake) {
            let changes = self.changes(options);
            let report = self
                .apply_changes(fake.clone(), &changes, Some(Box::new(when)))
                .unwrap();
            (report, fake)
        }

        fn changes(&self, options: &Options) -> planner::Changes {
            let artifacts = planner::render_all(&self.plan, &Renderer::new()).unwrap();
            planner::diff(&self.plan, &self.state, &artifacts, options)
        }

        /// Applies `changes` to the bench's state with `fake`, with Ctrl-C once `when` says so.
        #[allow(clippy::type_complexity)]
        fn apply_changes(
            &mut self,
            fake: Fake,
            changes: &planner::Changes,
            when: Option<Box<dyn Fn() -> bool + Send>>,
        ) -> anyhow::Result<ApplyReport> {
            let renderer = Renderer::new();
            let artifacts = planner::render_all(&self.plan, &renderer).unwrap();
            let handle = StateHandle::new(
                self.state.clone(),
                crate::backend::Backend::Local(self.state_path()),
            );
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            let apply_options = ApplyOptions {
                parallelism: 10,
                results_base: self.dir.path().to_owned(),
                prices: self.prices.clone(),
            };
            let cancel = tokio_util::sync::CancellationToken::new();
            if let Some(when) = when {
                let cancel = cancel.clone();
                rt.spawn(async move {
                    while !when() {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    cancel.cancel();
                });
            }
            let report = rt.block_on(apply(
                fake,
                self.plan.clone(),
                artifacts,
                renderer,
                changes,
                handle.clone(),
                &apply_options,
                Progress::hidden(),
                cancel,
            ));
            drop(rt);
            self.state = handle.snapshot();
            report
        }

        /// `rallyctl destroy` of the bench's workspace where its plan points, with `fake`;
        /// it must give everything back. State as it left it.
        fn destroy(&mut self, fake: &Fake) {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let settings: Vec<_> = self.plan.tests().map(|t| &t.settings).collect();
            let places = crate::destroy::Places::of(&self.state, &settings).unwrap();
            let (targets, _) = rt
                .block_on(crate::destroy::targets(fake, &self.state, &places))
                .unwrap();
            let handle = StateHandle::new(
                self.state.clone(),
                crate::backend::Backend::Local(self.state_path()),
            );
            let kept = rt
                .block_on(crate::destroy::destroy(fake, &handle, &targets))
                .unwrap();
            assert!(kept.is_empty(), "{kept:?}");
            self.state = handle.snapshot();
        }

        fn status(&self, address: &str) -> Status {
            self.state.tests[&address.parse().unwrap()].status.clone()
        }
    }

    const TWO_SUITES: &str = "[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t1\"\n\
        [[suite.test]]\nname = \"t2\"\n[[suite]]\nname = \"b\"\n[[suite.test]]\nname = \"t3\"\n";

    #[test]
    fn suites_run_in_order_local_tests_one_at_a_time_and_every_machine_is_given_back() {
        // The last test is an aws test (the fake serves it like the others), priced.
        let mut bench = Bench::new(&format!(
            "{TWO_SUITES}provider = \"aws\"\nregion = \"us-east-1\"\n\
             ami = \"ami-12345678\"\ninstance_type = \"m5.large\"\n"
        ));
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 3);
        assert!(report.failed.is_empty() && !report.interrupted);
        // Suite `a`'s tests one at a time, in either order (both are ready at once); then `b`.
        let calls = fake.calls();
        let one_at_a_time = |first: &str, second: &str| {
            [
                format!("acquire a.{first}#1 -> m-{first}-1"),
                format!("release m-{first}-1"),
                format!("acquire a.{second}#1 -> m-{second}-1"),
                format!("release m-{second}-1"),
            ]
        };
        assert!(
            calls[..4] == one_at_a_time("t1", "t2") || calls[..4] == one_at_a_time("t2", "t1"),
            "{calls:?}"
        );
        assert_eq!(calls[4..], ["acquire b.t3#1 -> m-t3-1", "release m-t3-1"]);
        assert!(fake.held.lock().unwrap().is_empty());
        for t in ["a.t1", "a.t2", "b.t3"] {
            assert_eq!(bench.status(t), Status::Completed);
            let record = &bench.state.tests[&t.parse().unwrap()];
            assert!(
                record.live_machine().is_none(),
                "{t} still holds its machine"
            );
            let collected = crate::collect::report(&record.results).unwrap();
            assert!(collected.starts_with(bench.dir.path().join("results/unit")));
            // The machine time it held is billed once, at the price it was got with.
            let [spent] = &record.spent[..] else {
                panic!("{t}: {:?}", record.spent)
            };
            let machine = record.machine.as_ref().unwrap();
            assert_eq!(Some(&spent.run_id), record.run_id.as_ref());
            assert_eq!(
                (&spent.machine, spent.from, Some(spent.to)),
                (&machine.id, machine.launched_at, machine.released_at)
            );
            // The instance, the public IPv4 address it is reached by, its root volume.
            let price = (t == "b.t3")
                .then_some(0.096 + crate::cost::PUBLIC_IPV4_USD_PER_HOUR + 8.0 * 0.08 / 730.0);
            assert_eq!((spent.usd_per_hour, machine.usd_per_hour), (price, price));
            assert_eq!(spent.run_id, report.run_id);
        }
        // Only the aws machine is billed.
        let bill = crate::cost::bill::of_run(&bench.state, &report.run_id).unwrap();
        assert_eq!((bill.machines, bill.usd.is_some()), (1, true));
        // Nothing left to do: a second apply plans no change.
        let (again, fake) = bench.apply(Fake::default(), &Options::default());
        assert!(again.completed.is_empty() && fake.calls().is_empty());
    }

    #[test]
    fn a_machine_refused_fails_only_its_test() {
        let mut bench = Bench::new(TWO_SUITES);
        let fake = Fake::default();
        fake.refuse.lock().unwrap().insert("a.t1".parse().unwrap());
        let (report, fake) = bench.apply(fake, &Options::default());
        assert_eq!(report.failed.len(), 1);
        let (address, step, error, _) = &report.failed[0];
        assert_eq!(
            (address.to_string().as_str(), *step),
            ("a.t1", Step::Launching)
        );
        assert!(error.contains("no capacity"), "{error}");
        assert_eq!(
            report.completed.len(),
            2,
            "the sibling and the next suite still run"
        );
        assert!(fake.held.lock().unwrap().is_empty());
    }

    /// The upload and install.sh run as one command; which of them failed is still told.
    #[test]
    fn a_bundle_that_cannot_be_unpacked_is_told_from_a_failing_install_script() {
        const ONE: &str = "[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t\"\n";
        // No run directory can be made under a file.
        let mut bench = Bench::new(ONE);
        std::fs::write(bench.dir.path().join("remote/runs"), "").unwrap();
        let (report, _) = bench.apply(Fake::default(), &Options::default());
        let (_, step, error, _) = &report.failed[0];
        assert_eq!(*step, Step::Installing);
        assert!(
            error.starts_with("cannot unpack the bundle into ")
                && error.contains(" on this machine (m-t-1): ")
                && error.contains("Not a directory"),
            "{error}"
        );
        // install.sh cannot open its lock.
        let mut bench = Bench::new(ONE);
        std::fs::create_dir(bench.dir.path().join("remote/install.lock")).unwrap();
        let (report, _) = bench.apply(Fake::default(), &Options::default());
        let (_, step, error, tail) = &report.failed[0];
        assert_eq!(*step, Step::Installing);
        assert_eq!(error, "install.sh failed with exit code 1 on this machine");
        assert!(
            tail.as_deref().unwrap_or("").contains("Is a directory"),
            "{tail:?}"
        );
    }

    #[test]
    fn a_failing_race_is_failed_with_its_log_tail_and_its_machine_given_back() {
        let mut bench = Bench::new(
            "[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t1\"\nrally_args = [\"--fail\"]\n",
        );
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        let (_, step, error, tail) = &report.failed[0];
        assert_eq!(*step, Step::Racing);
        assert_eq!(error, "esrally exited with 64");
        assert!(
            tail.as_deref()
                .unwrap_or("")
                .contains("boom: the cluster said no")
        );
        assert_eq!(fake.calls().last().unwrap(), "release m-t1-1");
        assert!(matches!(
            bench.status("a.t1"),
            Status::Failed {
                step: Step::Racing,
                ..
            }
        ));
        // The failed test runs again as a new attempt, which keeps the failed one's machine
        // time: it was spent all the same.
        let (_, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(fake.calls()[0], "acquire a.t1#2 -> m-t1-2");
        let spent: Vec<&str> = bench.state.tests[&"a.t1".parse().unwrap()]
            .spent
            .iter()
            .map(|s| s.machine.as_str())
            .collect();
        assert_eq!(spent, ["m-t1-1", "m-t1-2"]);
    }

    /// A failed race's logs are brought home under `results/` before its machine goes, why it
    /// failed beside them, and state's failure names where they are.
    #[test]
    fn a_failed_races_logs_are_brought_home_and_its_failure_names_them() {
        let mut bench = Bench::new(
            "[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t1\"\nrally_args = [\"--fail\"]\n",
        );
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(fake.calls().last().unwrap(), "release m-t1-1");
        let dir = (bench.dir.path().join("results/unit"))
            .join(&report.run_id)
            .join("a/t1");
        let Status::Failed { logs, .. } = bench.status("a.t1") else {
            panic!("{:?}", bench.status("a.t1"));
        };
        assert_eq!(logs.as_deref(), Some(dir.as_path()));
        let log = std::fs::read_to_string(dir.join("race.log")).unwrap();
        assert!(log.contains("boom: the cluster said no"), "{log}");
        let why = crate::results::parse::race_failure(&dir.join("failure.json")).unwrap();
        assert_eq!(
            (why.step, why.error.as_str()),
            (Step::Racing, "esrally exited with 64")
        );
        let kept: Vec<_> = (record(&bench, "a.t1").results.iter())
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            kept.iter().any(|f| f == "race.log") && kept.iter().any(|f| f == "failure.json"),
            "{kept:?}"
        );
    }

    /// A machine gone mid-race cannot give its logs: that is said, why the race failed is
    /// still kept under `results/`, and the machine is still given back.
    #[test]
    fn a_machine_gone_mid_race_gives_no_logs_and_is_given_back_all_the_same() {
        let mut bench = Bench::new(&format!("rally_args = [\"--hang\"]\n{ONE_TEST}"));
        let fake = Fake::default();
        // Once the race runs, its machine goes, and the race with it.
        let remote = bench.dir.path().join("remote");
        let goes = fake.clone();
        std::thread::spawn(move || {
            for _ in 0..600 {
                let hung = crate::templates::list_files(&remote)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|p| p.ends_with("hung.pid"));
                if let Some(pid) = hung.and_then(|p| std::fs::read_to_string(remote.join(p)).ok()) {
                    goes.gone.lock().unwrap().insert("m-t1-1".into());
                    let _ = std::process::Command::new("kill").arg(pid.trim()).status();
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        let (report, fake) = bench.apply(fake, &Options::default());
        assert_eq!(report.failed[0].1, Step::Racing, "{:?}", report.failed);
        assert_eq!(fake.calls().last().unwrap(), "release m-t1-1");
        let Status::Failed { logs, error, .. } = bench.status("a.t1") else {
            panic!("{:?}", bench.status("a.t1"));
        };
        assert_eq!(logs, None);
        let dir = (bench.dir.path().join("results/unit"))
            .join(&report.run_id)
            .join("a/t1");
        let why = crate::results::parse::race_failure(&dir.join("failure.json")).unwrap();
        assert_eq!(why.error, error);
        assert!(!dir.join("race.log").exists());
    }

    /// A machine that stops answering is asked after: gone fails the test with why; a provider
    /// that cannot tell fails it too, saying so, never taking "cannot tell" for "still there".
    #[test]
    fn a_machine_that_vanishes_or_cannot_be_asked_after_fails_its_test_with_why() {
        let mut bench = Bench::new(TWO_SUITES);
        let fake = Fake::default();
        fake.gone.lock().unwrap().insert("m-t1-1".into());
        fake.unknowable.lock().unwrap().insert("m-t2-1".into());
        let (report, fake) = bench.apply(fake, &Options::default());
        let error_of = |address: &str| {
            report
                .failed
                .iter()
                .find(|f| f.0.to_string() == address)
                .map(|f| (f.1, f.2.clone()))
                .unwrap()
        };
        assert_eq!(error_of("a.t1"), (Step::Booting, "m-t1-1 is gone".into()));
        let (step, error) = error_of("a.t2");
        assert_eq!(step, Step::Booting);
        assert!(
            error.contains("cannot be told") && error.contains("the API is down"),
            "{error}"
        );
        assert_eq!(report.completed.len(), 1, "the next suite still runs");
        assert!(fake.held.lock().unwrap().is_empty());
    }

    /// Ctrl-C while a machine boots ends the wait at once: the test stops at its recorded step,
    /// holding its machine for the next apply or destroy.
    #[test]
    fn ctrl_c_ends_the_wait_for_a_machine_that_never_boots() {
        let mut bench = Bench::new("[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t1\"\n");
        let fake = Fake::default();
        fake.boot_forever.lock().unwrap().insert("m-t1-1".into());
        let (report, fake) = bench.apply_cancelled_after(
            fake,
            &Options::default(),
            Some(std::time::Duration::from_millis(300)),
        );
        assert!(report.completed.is_empty() && report.failed.is_empty());
        assert_eq!(
            bench.status("a.t1"),
            Status::InProgress {
                step: Step::Booting
            }
        );
        assert!(fake.held.lock().unwrap().contains("m-t1-1"));
    }

    /// A race whose logs stay silent for `stall_timeout` is failed as stalled with its log
    /// tail, its processes are stopped and its machine given back, long before max_runtime
    /// (which would stop it after a minute with another error, should stall detection break).
    #[test]
    fn a_stalled_race_is_stopped_and_failed_with_its_log_tail() {
        let mut bench = Bench::new(
            "stall_timeout = \"2s\"\nmax_runtime = \"1m\"\n[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t1\"\n\
             rally_args = [\"--hang\"]\n",
        );
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        let (_, step, error, tail) = &report.failed[0];
        assert_eq!(*step, Step::Racing);
        assert!(error.contains("stalled"), "{error}");
        assert!(
            tail.as_deref().unwrap_or("").contains("connecting"),
            "{tail:?}"
        );
        assert_eq!(fake.calls().last().unwrap(), "release m-t1-1");
        let remote = bench.dir.path().join("remote");
        let pid_file = crate::templates::list_files(&remote)
            .unwrap()
            .into_iter()
            .find(|p| p.ends_with("hung.pid"))
            .expect("the stand-in esrally ran");
        let pid = std::fs::read_to_string(remote.join(pid_file)).unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
        // Gone, or a zombie nobody reaped: either way no longer running.
        assert!(
            stat.as_deref().map_or(true, |s| s.contains(") Z ")),
            "the hung race still runs: {stat:?}"
        );
    }

    /// The state of a test that an apply left at `step`, still holding its machine.
    fn stopped_at(bench: &mut Bench, address: &str, step: Step) {
        let record = bench
            .state
            .tests
            .get_mut(&address.parse().unwrap())
            .unwrap();
        record.status = Status::InProgress { step };
        record.results.clear();
        record.machine.as_mut().unwrap().released_at = None;
    }

    #[test]
    fn a_test_stopped_mid_way_resumes_at_its_step_on_the_machine_it_holds() {
        let mut bench = Bench::new("[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t1\"\n");
        bench.apply(Fake::default(), &Options::default());
        let race_id = bench.state.tests[&"a.t1".parse().unwrap()].race_id;
        stopped_at(&mut bench, "a.t1", Step::Collecting);
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 1);
        // No new machine, no new race: collected from the one it holds, then given back.
        assert_eq!(fake.calls(), ["release m-t1-1"]);
        let record = &bench.state.tests[&"a.t1".parse().unwrap()];
        assert_eq!((record.attempt, record.race_id), (1, race_id));
        assert_eq!(record.status, Status::Completed);
        assert!(!record.results.is_empty());
    }

    #[test]
    fn a_test_whose_record_left_state_behind_the_applys_back_is_an_error_naming_it() {
        let mut bench = Bench::new(ONE_TEST);
        bench.apply(Fake::default(), &Options::default());
        stopped_at(&mut bench, "a.t1", Step::Racing);
        let changes = bench.changes(&Options::default());
        bench.state.tests.remove(&"a.t1".parse().unwrap());
        let Err(error) = bench.apply_changes(Fake::default(), &changes, None) else {
            panic!("the apply went on without the record");
        };
        assert_eq!(
            error.to_string(),
            "state holds no record of test `a.t1`, which this apply runs: was the state changed behind rallyctl's back?"
        );
    }

    #[test]
    fn replacing_a_test_in_progress_starts_a_new_attempt_on_a_new_machine() {
        let mut bench = Bench::new("[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t1\"\n");
        bench.apply(Fake::default(), &Options::default());
        stopped_at(&mut bench, "a.t1", Step::Racing);
        let replace = Options {
            replace: vec!["a.t1".parse().unwrap()],
            ..Options::default()
        };
        let (report, fake) = bench.apply(Fake::default(), &replace);
        assert_eq!(report.completed.len(), 1);
        assert_eq!(
            fake.calls(),
            [
                "release m-t1-1",
                "acquire a.t1#2 -> m-t1-2",
                "release m-t1-2"
            ]
        );
        assert_eq!(bench.state.tests[&"a.t1".parse().unwrap()].attempt, 2);
    }

    /// Another `remote_dir` for the bench's plan (a new configuration), with its Rally.
    fn moved_rally(bench: &Bench) -> PathBuf {
        let moved = bench.dir.path().join("moved");
        std::fs::create_dir(&moved).unwrap();
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(bench.dir.path().join("remote/rally-2.13.0"))
            .arg(&moved)
            .status()
            .unwrap();
        assert!(copied.success());
        moved
    }

    #[test]
    fn a_machine_is_given_back_with_the_settings_it_was_got_with_after_the_plan_changed() {
        let mut bench = Bench::new(ONE_TEST);
        let (_, fake) = bench.apply(Fake::default(), &Options::default());
        stopped_at(&mut bench, "a.t1", Step::Racing);
        // Rally moves to another directory: a new attempt, which first gives back the machine
        // the one under way holds, where that one's race runs.
        bench.plan = Bench::plan(&moved_rally(&bench), BENCHMARK_ONLY, ONE_TEST);
        let (report, fake) = bench.apply(fake, &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(
            fake.calls()[2..],
            [
                "release m-t1-1",
                "acquire a.t1#2 -> m-t1-2",
                "release m-t1-2"
            ]
        );
    }

    /// Seed 143 of the simulation: an apply killed after its provider handed out a machine and
    /// before state named it, then a plan that runs the test elsewhere. Its new attempt asks
    /// there; `destroy` must still look where the first asked, and give that machine back with
    /// the settings it was got with.
    #[test]
    fn destroy_finds_a_machine_an_earlier_attempt_got_where_the_plan_no_longer_points() {
        let mut bench = Bench::new(ONE_TEST);
        let (_, fake) = bench.apply(Fake::default(), &Options::default());
        // As the dead apply left it: the machine held, state at launching without it.
        fake.held.lock().unwrap().insert("m-t1-1".into());
        let r = bench.state.tests.get_mut(&"a.t1".parse().unwrap()).unwrap();
        r.machine = None;
        r.results.clear();
        r.set_status(Status::InProgress {
            step: Step::Launching,
        });
        bench.plan = Bench::plan(&moved_rally(&bench), BENCHMARK_ONLY, ONE_TEST);
        let (report, fake) = bench.apply(fake, &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(record(&bench, "a.t1").asked_elsewhere.len(), 1);
        bench.destroy(&fake);
        assert_eq!(fake.calls().last().unwrap(), "release m-t1-1");
        assert!(fake.held.lock().unwrap().is_empty());
    }

    fn record<'b>(bench: &'b Bench, address: &str) -> &'b crate::state::TestRecord {
        &bench.state.tests[&address.parse().unwrap()]
    }

    /// The directories of a test's races on the machine, relative to the test's directory of
    /// its run, in the order they were made.
    fn race_dirs(bench: &Bench) -> Vec<String> {
        let mut dirs: Vec<String> = crate::templates::list_files(&bench.dir.path().join("remote"))
            .unwrap()
            .into_iter()
            .filter(|p| p.ends_with("exit_code"))
            .map(|p| {
                let dir = p.parent().unwrap();
                dir.file_name().unwrap().to_string_lossy().into_owned()
            })
            .collect();
        dirs.sort();
        dirs
    }

    const ONE_TEST: &str = "[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t1\"\n";

    #[test]
    fn repetitions_on_one_machine_race_back_to_back_each_in_a_directory_of_its_own() {
        let mut bench = Bench::new(&format!("repetitions = 3\n{ONE_TEST}"));
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        // One machine: its watchdog or lease renewed before each further race.
        assert_eq!(
            fake.calls(),
            [
                "acquire a.t1#1 -> m-t1-1",
                "extend m-t1-1",
                "extend m-t1-1",
                "release m-t1-1"
            ]
        );
        let r = record(&bench, "a.t1");
        assert_eq!(
            (r.status.clone(), r.finished_repetitions()),
            (Status::Completed, 3)
        );
        let mut race_ids: Vec<_> = r.earlier.iter().map(|e| e.race_id).collect();
        race_ids.push(r.race_id.unwrap());
        race_ids.dedup();
        assert_eq!(race_ids.len(), 3, "each race has its own id");
        assert_eq!(race_dirs(&bench), ["1", "1.2", "1.3"]);
        let test_dir = bench
            .dir
            .path()
            .join("results/unit")
            .join(r.run_id.as_deref().unwrap())
            .join("a/t1");
        for dir in ["", "repetition-2", "repetition-3"] {
            assert!(test_dir.join(dir).join("report.csv").is_file(), "{dir}");
        }
    }

    /// A machine whose bound cannot be renewed takes no further race: the test fails with why,
    /// keeps the race it finished, and gives the machine back.
    #[test]
    fn a_machine_that_cannot_be_extended_takes_no_further_race() {
        let mut bench = Bench::new(&format!("repetitions = 2\n{ONE_TEST}"));
        let fake = Fake::default();
        fake.refuse_extend.lock().unwrap().insert("m-t1-1".into());
        let (report, fake) = bench.apply(fake, &Options::default());
        let (_, step, error, _) = &report.failed[0];
        assert_eq!(*step, Step::Installing);
        assert!(error.contains("cannot be re-armed"), "{error}");
        assert_eq!(
            fake.calls(),
            [
                "acquire a.t1#1 -> m-t1-1",
                "extend m-t1-1",
                "release m-t1-1"
            ]
        );
        let r = record(&bench, "a.t1");
        assert_eq!(r.finished().len(), 1, "the finished race is kept");
        assert!(r.live_machine().is_none());
        // The next apply keeps it and races the second on a new machine.
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(fake.calls(), ["acquire a.t1#2 -> m-t1-2", "release m-t1-2"]);
        assert_eq!(record(&bench, "a.t1").finished_repetitions(), 2);
    }

    #[test]
    fn fresh_repetitions_each_race_on_a_machine_of_their_own() {
        let mut bench = Bench::new(&format!(
            "repetitions = 2\nrepeat_on = \"fresh\"\n{ONE_TEST}"
        ));
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(
            fake.calls(),
            [
                "acquire a.t1#1 -> m-t1-1",
                "release m-t1-1",
                "acquire a.t1#2 -> m-t1-2",
                "release m-t1-2"
            ]
        );
        let r = record(&bench, "a.t1");
        assert_eq!(r.earlier[0].machine, "m-t1-1");
        assert_eq!(r.machine.as_ref().unwrap().id, "m-t1-2");
        assert!(fake.held.lock().unwrap().is_empty());
    }

    /// Raising `repetitions` keeps the recorded races, whose configuration did not change, and
    /// races the missing ones; `--replace` starts the races over.
    #[test]
    fn raising_repetitions_races_only_the_missing_ones() {
        let mut bench = Bench::new(&format!("repetitions = 2\n{ONE_TEST}"));
        bench.apply(Fake::default(), &Options::default());
        let hash = record(&bench, "a.t1").config_hash.clone();
        // The record keeps the sha256 of what its hash took in, and each race's configuration
        // lies beside its files, for a comparison once state has moved on.
        let r = record(&bench, "a.t1");
        assert!(r.inputs.contains_key("race.sh"), "{:?}", r.inputs);
        let described: Vec<_> = (r.earlier.iter().map(|e| &e.results))
            .chain([&r.results])
            .filter_map(|files| files.iter().find(|f| f.path.ends_with("rallyctl.json")))
            .collect();
        assert_eq!(described.len(), 2, "one per race: {r:?}");
        let read = crate::results::parse::configuration(&described[1].path).unwrap();
        assert_eq!((&read.config_hash, &read.inputs), (&hash, &r.inputs));
        bench.plan.suites[0].tests[0].repeat.count = std::num::NonZeroU32::new(3).unwrap();
        let renderer = Renderer::new();
        let artifacts = planner::render_all(&bench.plan, &renderer).unwrap();
        let changes = planner::diff(&bench.plan, &bench.state, &artifacts, &Options::default());
        assert_eq!(changes.changes[0].action, Action::Run);
        assert_eq!(
            changes.changes[0].reason,
            "will race repetition 3: 2 of 3 recorded"
        );
        let (_, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(fake.calls(), ["acquire a.t1#2 -> m-t1-2", "release m-t1-2"]);
        let r = record(&bench, "a.t1");
        assert_eq!((r.finished_repetitions(), &r.config_hash), (3, &hash));
        let replace = Options {
            replace: vec!["a.t1".parse().unwrap()],
            ..Options::default()
        };
        bench.apply(Fake::default(), &replace);
        let r = record(&bench, "a.t1");
        assert_eq!((r.finished_repetitions(), r.attempt), (3, 3));
        assert!(r.earlier.iter().all(|e| e.machine == "m-t1-3"));
    }

    /// A nightly apply of an unchanged plan races a result older than `results_valid_for`
    /// again, as a new attempt in a new run with all its repetitions; a fresh one is left alone.
    #[test]
    fn a_stale_result_is_raced_again_as_a_new_attempt() {
        let mut bench = Bench::new(&format!(
            "results_valid_for = \"1h\"\nrepetitions = 2\n{ONE_TEST}"
        ));
        bench.apply(Fake::default(), &Options::default());
        let first = record(&bench, "a.t1").clone();
        let completed = first.completed_at().unwrap();
        let after = |minutes: i64| Options {
            now: completed + jiff::SignedDuration::from_mins(minutes),
            ..Options::default()
        };
        let (report, fake) = bench.apply(Fake::default(), &after(59));
        assert!(report.completed.is_empty(), "{:?}", report.completed);
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
        let (report, fake) = bench.apply(Fake::default(), &after(61));
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(fake.calls()[0], "acquire a.t1#2 -> m-t1-2");
        let r = record(&bench, "a.t1");
        assert_eq!((r.attempt, r.finished_repetitions()), (2, 2));
        assert!(r.earlier.iter().all(|e| e.machine == "m-t1-2"), "{r:?}");
        assert_ne!(r.run_id, first.run_id);
        assert!(r.completed_at().unwrap() > completed);
    }

    #[test]
    fn a_failed_repetition_is_no_sample_and_the_next_apply_races_it_again() {
        let mut bench = Bench::new(&format!(
            "repetitions = 3\nrally_args = [\"--fail-at=2\"]\n{ONE_TEST}"
        ));
        let (report, _) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.failed[0].1, Step::Racing);
        let r = record(&bench, "a.t1");
        assert_eq!((r.earlier.len(), r.finished_repetitions()), (1, 1));
        let renderer = Renderer::new();
        let artifacts = planner::render_all(&bench.plan, &renderer).unwrap();
        let changes = planner::diff(&bench.plan, &bench.state, &artifacts, &Options::default());
        assert!(
            changes.changes[0]
                .reason
                .starts_with("will be run again, repetitions 2 to 3 (1 of 3 recorded)"),
            "{}",
            changes.changes[0].reason
        );
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(fake.calls()[0], "acquire a.t1#2 -> m-t1-2");
        assert_eq!(record(&bench, "a.t1").finished_repetitions(), 3);
    }

    #[test]
    fn a_test_stopped_in_its_last_repetition_resumes_that_repetition_only() {
        let mut bench = Bench::new(&format!("repetitions = 3\n{ONE_TEST}"));
        bench.apply(Fake::default(), &Options::default());
        let race_id = record(&bench, "a.t1").race_id;
        stopped_at(&mut bench, "a.t1", Step::Racing);
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 1);
        assert_eq!(fake.calls(), ["release m-t1-1"]);
        let r = record(&bench, "a.t1");
        assert_eq!((r.finished_repetitions(), r.race_id), (3, race_id));
    }

    /// Every file of a test's result as state records it, relative to the workspace's
    /// results: each race's, earlier ones first.
    fn result_files(bench: &Bench, address: &str) -> Vec<PathBuf> {
        let r = record(bench, address);
        let root = crate::results::layout::workspace(bench.dir.path(), "unit");
        (r.earlier.iter().map(|e| &e.results))
            .chain([&r.results])
            .flatten()
            .map(|f| f.path.strip_prefix(&root).unwrap().to_owned())
            .collect()
    }

    /// A test stopped in its second race of three and resumed by a later apply: the races of
    /// its result all live in the run that began it, which records it.
    #[test]
    fn a_test_resumed_by_a_later_apply_keeps_its_races_in_the_run_that_began_them() {
        let mut bench = Bench::new(&format!("repetitions = 3\n{ONE_TEST}"));
        let (first, _) = bench.apply(Fake::default(), &Options::default());
        // Back to the second race under way, as the first apply left it when killed.
        let r = bench.state.tests.get_mut(&"a.t1".parse().unwrap()).unwrap();
        r.race_id = Some(r.earlier[1].race_id);
        r.earlier.truncate(1);
        let machine = r.machine.as_mut().unwrap();
        machine.run_dir = Some(machine.run_dir.as_ref().unwrap().replace("/1.3", "/1.2"));
        stopped_at(&mut bench, "a.t1", Step::Racing);
        let run_dir = bench.dir.path().join("results/unit").join(&first.run_id);
        for k in ["repetition-2", "repetition-3"] {
            std::fs::remove_dir_all(run_dir.join("a/t1").join(k)).unwrap();
        }
        let (second, _) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(second.completed.len(), 1, "{:?}", second.failed);
        let r = record(&bench, "a.t1");
        assert_eq!(r.finished_repetitions(), 3);
        assert_eq!(r.run_id.as_deref(), Some(first.run_id.as_str()));
        let files = result_files(&bench, "a.t1");
        assert!(
            files.iter().all(|f| f.starts_with(&first.run_id)),
            "{files:?}"
        );
        for k in ["", "repetition-2", "repetition-3"] {
            assert!(
                run_dir.join("a/t1").join(k).join("report.csv").is_file(),
                "{k}"
            );
        }
        let second_dir = bench.dir.path().join("results/unit").join(&second.run_id);
        assert!(
            !second_dir.exists(),
            "the resuming run holds none of its races"
        );
    }

    /// A test whose second race failed races it again in a later apply as a new attempt,
    /// keeping the first: that first race's files are copied into the later run, which
    /// records the result, so that run holds all its races; where it raced keeps them too.
    #[test]
    fn a_new_attempt_keeps_its_earlier_races_in_the_run_that_records_it() {
        let mut bench = Bench::new(&format!(
            "repetitions = 3\nrally_args = [\"--fail-at=2\"]\n{ONE_TEST}"
        ));
        let (first, _) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(first.failed.len(), 1);
        let (second, _) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(second.completed.len(), 1, "{:?}", second.failed);
        let r = record(&bench, "a.t1");
        assert_eq!(r.finished_repetitions(), 3);
        assert_eq!(r.run_id.as_deref(), Some(second.run_id.as_str()));
        assert_eq!(r.earlier[0].run_id, first.run_id, "where it raced");
        let files = result_files(&bench, "a.t1");
        assert!(
            files.iter().all(|f| f.starts_with(&second.run_id)),
            "{files:?}"
        );
        let results = bench.dir.path().join("results/unit");
        for k in ["", "repetition-2", "repetition-3"] {
            let report = results.join(&second.run_id).join("a/t1").join(k);
            assert!(report.join("report.csv").is_file(), "{k}");
        }
        let first_dir = results.join(&first.run_id).join("a/t1");
        assert!(first_dir.join("report.csv").is_file());
        let copied = &r.earlier[0].results;
        let original = std::fs::read(first_dir.join("report.csv")).unwrap();
        let report = copied
            .iter()
            .find(|f| f.path.ends_with("report.csv"))
            .unwrap();
        assert_eq!(report.sha256, crate::state::sha256_hex(&original));
    }

    const VARIANTS: &str = "[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t1\"\nrepetitions = 2\n\
        [[suite.test.variant]]\nname = \"x\"\nchallenge = \"cx\"\n\
        [[suite.test.variant]]\nname = \"y\"\nchallenge = \"cy\"\n";

    /// The challenges the stand-in esrally raced, in order.
    fn challenges(bench: &Bench) -> Vec<String> {
        let file = bench.dir.path().join("remote/rally-2.13.0/bin/challenges");
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn variants_race_interleaved_on_one_machine() {
        let mut bench = Bench::new(VARIANTS);
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 2, "{:?}", report.failed);
        assert_eq!(challenges(&bench), ["cx", "cy", "cx", "cy"]);
        // One machine, got in the first variant's name, renewed before each further race.
        assert_eq!(
            fake.calls(),
            [
                "acquire a.t1-x#1 -> m-t1-x-1",
                "extend m-t1-x-1",
                "extend m-t1-x-1",
                "extend m-t1-x-1",
                "release m-t1-x-1"
            ]
        );
        for (address, variant) in [("a.t1-x", "x"), ("a.t1-y", "y")] {
            let r = record(&bench, address);
            assert_eq!(
                (r.status.clone(), r.finished_repetitions()),
                (Status::Completed, 2)
            );
            assert_eq!(r.variant.as_ref().unwrap().name, variant);
            assert_eq!(r.earlier[0].machine, "m-t1-x-1");
            assert!(r.live_machine().is_none());
        }
        assert_eq!(race_dirs(&bench), ["1", "1", "1.2", "1.2"]);
        // Nothing left: a second apply plans nothing.
        let (again, fake) = bench.apply(Fake::default(), &Options::default());
        assert!(again.completed.is_empty() && fake.calls().is_empty());
    }

    #[test]
    fn a_variant_whose_race_fails_drops_out_and_the_others_go_on() {
        let mut bench = Bench::new(&VARIANTS.replace(
            "challenge = \"cy\"",
            "challenge = \"cy\"\nrally_args = [\"--fail-at=2\"]",
        ));
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 1);
        assert_eq!(report.failed[0].0.to_string(), "a.t1-y");
        assert_eq!(challenges(&bench), ["cx", "cy", "cx"]);
        assert_eq!(fake.calls().last().unwrap(), "release m-t1-x-1");
        assert!(fake.held.lock().unwrap().is_empty());
        assert!(record(&bench, "a.t1-y").live_machine().is_none());
        assert_eq!(record(&bench, "a.t1-x").finished_repetitions(), 2);
        // Its logs were brought home from the machine the others went on racing on.
        let Status::Failed {
            logs: Some(logs), ..
        } = bench.status("a.t1-y")
        else {
            panic!("{:?}", bench.status("a.t1-y"));
        };
        let log = std::fs::read_to_string(logs.join("race.log")).unwrap();
        assert!(log.contains("boom"), "{log}");
        // The next apply races y's two on a machine of its own.
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(fake.calls()[0], "acquire a.t1-y#2 -> m-t1-y-2");
        assert_eq!(record(&bench, "a.t1-y").finished_repetitions(), 2);
    }

    #[test]
    fn a_group_stopped_mid_way_resumes_the_race_under_way_and_gives_the_machine_back_once() {
        let mut bench = Bench::new(VARIANTS);
        bench.apply(Fake::default(), &Options::default());
        // y was collecting its last race; x had finished and waited for the machine.
        stopped_at(&mut bench, "a.t1-y", Step::Collecting);
        let x = bench
            .state
            .tests
            .get_mut(&"a.t1-x".parse().unwrap())
            .unwrap();
        x.status = Status::InProgress {
            step: Step::Terminating,
        };
        x.machine.as_mut().unwrap().released_at = None;
        let before = challenges(&bench).len();
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 2, "{:?}", report.failed);
        assert_eq!(challenges(&bench).len(), before, "no race again");
        assert_eq!(fake.calls(), ["release m-t1-x-1"]);
        for address in ["a.t1-x", "a.t1-y"] {
            let r = record(&bench, address);
            assert_eq!(
                (r.status.clone(), r.finished_repetitions()),
                (Status::Completed, 2)
            );
        }
    }

    #[test]
    fn a_group_whose_failed_member_races_again_gives_back_every_machine_its_members_hold() {
        // Found by the simulation (tests/simulation.rs, seed 336): x done, y failed, both
        // still holding the group's machine when the apply was killed; y's new attempt got a
        // machine of its own, and only the group's was given back.
        let mut bench = Bench::new(
            "[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t1\"\n\
             [[suite.test.variant]]\nname = \"x\"\nchallenge = \"cx\"\n\
             [[suite.test.variant]]\nname = \"y\"\nchallenge = \"cy\"\n\
             rally_args = [\"--fail-at=2\"]\n",
        );
        let (report, _) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.failed.len(), 1, "y's race is the second");
        for address in ["a.t1-x", "a.t1-y"] {
            let r = bench
                .state
                .tests
                .get_mut(&address.parse().unwrap())
                .unwrap();
            r.machine.as_mut().unwrap().released_at = None;
        }
        stopped_at(&mut bench, "a.t1-x", Step::Terminating);
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 2, "{:?}", report.failed);
        let mut calls = fake.calls();
        calls.sort();
        assert_eq!(
            calls,
            [
                "acquire a.t1-y#2 -> m-t1-y-2",
                "release m-t1-x-1",
                "release m-t1-y-2"
            ]
        );
        assert!(fake.held.lock().unwrap().is_empty());
        for address in ["a.t1-x", "a.t1-y"] {
            assert!(
                record(&bench, address).live_machine().is_none(),
                "{address}"
            );
        }
    }

    #[test]
    fn a_group_gives_back_the_machine_a_resumed_member_held_before_getting_another() {
        // Found by the simulation (tests/simulation.rs, seed 1469): x failed and y was at
        // launching, both holding the machine got in x's name, when the apply was killed; x's
        // new attempt got a machine of its own, recorded in y's place of the first.
        let mut bench = Bench::new(
            "[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t1\"\n\
             [[suite.test.variant]]\nname = \"x\"\nchallenge = \"cx\"\n\
             [[suite.test.variant]]\nname = \"y\"\nchallenge = \"cy\"\n",
        );
        bench.apply(Fake::default(), &Options::default());
        stopped_at(&mut bench, "a.t1-y", Step::Launching);
        let x = bench
            .state
            .tests
            .get_mut(&"a.t1-x".parse().unwrap())
            .unwrap();
        x.status = Status::Failed {
            step: Step::Racing,
            error: "boom".into(),
            log_tail: None,
            logs: None,
        };
        x.machine.as_mut().unwrap().released_at = None;
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 2, "{:?}", report.failed);
        assert_eq!(
            fake.calls(),
            [
                "acquire a.t1-x#2 -> m-t1-x-2",
                "release m-t1-x-1",
                "extend m-t1-x-2",
                "release m-t1-x-2"
            ]
        );
        for address in ["a.t1-x", "a.t1-y"] {
            assert!(
                record(&bench, address).live_machine().is_none(),
                "{address}"
            );
        }
    }

    /// Two suites, the second's test asking for the same machine as the first's (the fake
    /// provider's machines all alike); all of them reuse.
    fn reusing(suites: &str) -> Bench {
        let mut bench = Bench::new(suites);
        for suite in &mut bench.plan.suites {
            for test in &mut suite.tests {
                test.reuse = true;
            }
        }
        bench
    }

    const HANDOFF: &str = "[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t1\"\n\
        rally_args = [\"--linger\"]\n[[suite]]\nname = \"b\"\n[[suite.test]]\nname = \"t2\"\n\
        rally_args = [\"--no-leftovers\"]\n";

    #[test]
    fn a_machine_goes_on_to_a_later_suites_test_clean_and_is_given_back_once() {
        let mut bench = reusing(HANDOFF);
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 2, "{:?}", report.failed);
        // One machine for both; its bound renewed for the second test's race. `t2`'s stand-in
        // fails if `t1`'s lingering process were still there.
        assert_eq!(
            fake.calls(),
            [
                "acquire a.t1#1 -> m-t1-1",
                "extend m-t1-1",
                "release m-t1-1"
            ]
        );
        let t1 = record(&bench, "a.t1").machine.clone().unwrap();
        let t2 = record(&bench, "b.t2").machine.clone().unwrap();
        assert_eq!(
            t1.handover,
            Some(Handover::TakenBy("b.t2".parse().unwrap()))
        );
        assert!(t1.released_at.is_some(), "t1 no longer holds it");
        let taken = t2.taken.clone().unwrap();
        assert_eq!(
            (t2.id.as_str(), taken.from.to_string()),
            ("m-t1-1", "a.t1".into())
        );
        assert_eq!(taken.left, t1.run_dir);
        assert_ne!(
            t2.run_dir, t1.run_dir,
            "each test races in a directory of its own"
        );
        assert!(report.still_running.is_empty());
        // Machine time is billed once: to `t1` until the take, to `t2` from it.
        let spent = |a: &str| record(&bench, a).spent.clone();
        let (gave, took) = (spent("a.t1"), spent("b.t2"));
        assert_eq!((gave.len(), took.len()), (1, 1));
        assert_eq!((gave[0].from, gave[0].to), (t1.launched_at, taken.at));
        assert_eq!(took[0].from, taken.at);
    }

    /// As if apply was killed after `t1` kept its machine and before `t2` began.
    fn kept_for_t2(bench: &mut Bench) {
        let t1 = bench.state.tests.get_mut(&"a.t1".parse().unwrap()).unwrap();
        let m = t1.machine.as_mut().unwrap();
        m.released_at = None;
        m.handover = Some(Handover::KeptFor("b.t2".parse().unwrap()));
        bench.state.tests.remove(&"b.t2".parse().unwrap());
    }

    /// Each remote command is a round trip, which on a distant machine costs far more than
    /// the command: a test runs four on its machine, the bench's having Rally already there
    /// as a baked image has (a probe that it answers, the upload with install.sh, the race's
    /// start with its first wait, the collect). A kept machine's taker runs its scrub in place
    /// of the probe, and has its bound renewed (the provider's `extend`).
    #[test]
    fn a_test_costs_four_round_trips_on_its_machine_a_taker_too() {
        let mut bench = Bench::new("[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t\"\n");
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(*fake.connects.lock().unwrap(), ["m-t-1"; 4]);

        let mut bench = reusing(HANDOFF);
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 2, "{:?}", report.failed);
        assert_eq!(*fake.connects.lock().unwrap(), ["m-t1-1"; 4 + 4]);
        assert_eq!(
            fake.calls()
                .iter()
                .filter(|c| c.starts_with("extend"))
                .count(),
            1
        );
    }

    /// How often install.sh ran: it ends with `esrally --version`.
    fn installs(bench: &Bench) -> usize {
        let file = bench.dir.path().join("remote/rally-2.13.0/bin/installs");
        std::fs::read_to_string(file).map_or(0, |s| s.lines().count())
    }

    #[test]
    fn a_taker_whose_install_script_ran_on_the_kept_machine_does_not_run_it_again() {
        let mut bench = reusing(HANDOFF);
        let (report, _) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 2, "{:?}", report.failed);
        assert_eq!(installs(&bench), 1);
        let t1 = record(&bench, "a.t1").machine.clone().unwrap();
        let t2 = record(&bench, "b.t2").machine.clone().unwrap();
        assert_eq!(t2.id, t1.id);
        assert!(t2.installed.is_some());
        assert_eq!(t2.installed, t1.installed);

        // A script of its own (git checked for a track that is cloned): it runs.
        let mut bench = reusing(&HANDOFF.replace(
            "rally_args = [\"--no-leftovers\"]",
            "rally_args = [\"--no-leftovers\"]\noffline = false",
        ));
        let (report, _) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 2, "{:?}", report.failed);
        let t1 = record(&bench, "a.t1").machine.clone().unwrap();
        let t2 = record(&bench, "b.t2").machine.clone().unwrap();
        assert_eq!(t2.id, t1.id, "the machine is still taken");
        assert_eq!(installs(&bench), 2);
        assert_ne!(t2.installed, t1.installed);
    }

    #[test]
    fn a_machine_kept_when_an_apply_stopped_between_suites_is_taken_by_the_next() {
        let mut bench = reusing(HANDOFF);
        bench.apply(Fake::default(), &Options::default());
        kept_for_t2(&mut bench);
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        // Nothing launched: the kept machine is taken, renewed and given back once.
        assert_eq!(fake.calls(), ["extend m-t1-1", "release m-t1-1"]);
        assert_eq!(
            record(&bench, "b.t2").machine.as_ref().unwrap().id,
            "m-t1-1"
        );
    }

    #[test]
    fn a_test_killed_right_after_taking_a_machine_resumes_on_it() {
        let mut bench = reusing(HANDOFF);
        bench.apply(Fake::default(), &Options::default());
        // As if killed after the take was written and before booting was.
        stopped_at(&mut bench, "b.t2", Step::Launching);
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(fake.calls(), ["extend m-t1-1", "release m-t1-1"]);
    }

    #[test]
    fn a_kept_machine_too_near_its_watchdog_is_given_back_and_another_launched() {
        // Its watchdog ends it ten minutes after launch: too soon for the taker.
        let mut bench = reusing(&format!("max_runtime = \"10m\"\n{HANDOFF}"));
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 2, "{:?}", report.failed);
        assert_eq!(
            fake.calls(),
            [
                "acquire a.t1#1 -> m-t1-1",
                "release m-t1-1",
                "acquire b.t2#1 -> m-t2-1",
                "release m-t2-1"
            ]
        );
        assert!(report.still_running.is_empty());
    }

    #[test]
    fn a_kept_machine_that_is_gone_is_given_up_and_another_launched() {
        let mut bench = reusing(HANDOFF);
        bench.apply(Fake::default(), &Options::default());
        kept_for_t2(&mut bench);
        let fake = Fake::default();
        fake.gone.lock().unwrap().insert("m-t1-1".into());
        let (report, fake) = bench.apply(fake, &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(fake.calls(), ["acquire b.t2#1 -> m-t2-1", "release m-t2-1"]);
        assert!(record(&bench, "a.t1").live_machine().is_none());
    }

    #[test]
    fn a_failed_test_keeps_no_machine_and_the_later_one_launches_its_own() {
        let mut bench = reusing(&HANDOFF.replace("--linger", "--fail"));
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!((report.completed.len(), report.failed.len()), (1, 1));
        assert_eq!(
            fake.calls(),
            [
                "acquire a.t1#1 -> m-t1-1",
                "release m-t1-1",
                "acquire b.t2#1 -> m-t2-1",
                "release m-t2-1"
            ]
        );
    }

    #[test]
    fn a_reclaimed_machine_is_given_back_and_the_race_starts_again_on_another() {
        let mut bench = Bench::new(&format!(
            "repetitions = 2\nrepeat_on = \"fresh\"\n{ONE_TEST}"
        ));
        let fake = Fake::default();
        // The second repetition's machine: the first race's sample must stay.
        fake.reclaimed.lock().unwrap().insert("m-t1-2".into());
        let (report, fake) = bench.apply(fake, &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(
            fake.calls(),
            [
                "acquire a.t1#1 -> m-t1-1",
                "release m-t1-1",
                "acquire a.t1#2 -> m-t1-2",
                "release m-t1-2",
                "acquire a.t1#3 after 1 reclaimed -> m-t1-3",
                "release m-t1-3"
            ]
        );
        let r = record(&bench, "a.t1");
        assert_eq!(
            (r.finished_repetitions(), r.reclaimed, r.attempt),
            (2, 1, 3)
        );
        assert_eq!(
            race_dirs(&bench),
            ["1", "3.2"],
            "the reclaimed race ran nowhere"
        );
    }

    #[test]
    fn a_spot_machine_whose_race_fails_because_it_is_being_reclaimed_races_again() {
        let mut bench = Bench::new(&format!("rally_args = [\"--fail-at=1\"]\n{ONE_TEST}"));
        let fake = Fake::default();
        fake.spot.lock().unwrap().insert("m-t1-1".into());
        // The interruption's shutdown kills the race while the machine still answers.
        fake.being_reclaimed.lock().unwrap().insert("m-t1-1".into());
        let (report, fake) = bench.apply(fake, &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(
            fake.calls(),
            [
                "acquire a.t1#1 -> m-t1-1",
                "release m-t1-1",
                "acquire a.t1#2 after 1 reclaimed -> m-t1-2",
                "release m-t1-2"
            ]
        );
        assert_eq!(record(&bench, "a.t1").reclaimed, 1);
    }

    #[test]
    fn a_spot_variant_group_whose_machine_is_reclaimed_mid_round_finishes_on_a_new_one() {
        // y's first race (the second of the round) dies as the spot machine is reclaimed.
        let mut bench = Bench::new(&VARIANTS.replace(
            "challenge = \"cy\"",
            "challenge = \"cy\"\nrally_args = [\"--fail-at=2\"]",
        ));
        let fake = Fake::default();
        fake.spot.lock().unwrap().insert("m-t1-x-1".into());
        fake.being_reclaimed
            .lock()
            .unwrap()
            .insert("m-t1-x-1".into());
        let (report, fake) = bench.apply(fake, &Options::default());
        assert_eq!(report.completed.len(), 2, "{:?}", report.failed);
        // x keeps its first race; what was left of the group races on a new machine.
        assert_eq!(challenges(&bench), ["cx", "cy", "cx", "cy", "cy"]);
        assert_eq!(
            fake.calls(),
            [
                "acquire a.t1-x#1 -> m-t1-x-1",
                "extend m-t1-x-1",
                "release m-t1-x-1",
                "acquire a.t1-x#2 after 1 reclaimed -> m-t1-x-2",
                "extend m-t1-x-2",
                "extend m-t1-x-2",
                "release m-t1-x-2"
            ]
        );
        assert!(fake.held.lock().unwrap().is_empty());
        for address in ["a.t1-x", "a.t1-y"] {
            let r = record(&bench, address);
            assert_eq!(
                (r.status.clone(), r.finished_repetitions(), r.reclaimed),
                (Status::Completed, 2, 1)
            );
            assert!(r.live_machine().is_none());
        }
        let x = record(&bench, "a.t1-x");
        assert_eq!(
            x.earlier
                .iter()
                .map(|e| e.machine.as_str())
                .collect::<Vec<_>>(),
            ["m-t1-x-1"]
        );
    }

    #[test]
    fn an_on_demand_machine_whose_race_fails_is_not_asked_about_and_fails() {
        let mut bench = Bench::new(&format!("rally_args = [\"--fail-at=1\"]\n{ONE_TEST}"));
        let fake = Fake::default();
        fake.being_reclaimed.lock().unwrap().insert("m-t1-1".into());
        let (report, _) = bench.apply(fake, &Options::default());
        assert_eq!(report.failed.len(), 1);
        assert_eq!(record(&bench, "a.t1").reclaimed, 0);
    }

    #[test]
    fn a_launch_that_finds_its_attempts_machine_dead_launches_again_as_a_new_attempt() {
        let mut bench = Bench::new(ONE_TEST);
        let fake = Fake::default();
        fake.spent.lock().unwrap().insert("m-t1-1".into());
        let (report, fake) = bench.apply(fake, &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(
            fake.calls(),
            [
                "acquire a.t1#1 spent",
                "acquire a.t1#2 -> m-t1-2",
                "release m-t1-2"
            ]
        );
        assert_eq!(race_dirs(&bench), ["2"], "the race runs as attempt 2");
    }

    #[test]
    fn a_launch_spent_twice_in_a_row_fails_instead_of_launching_for_ever() {
        let mut bench = Bench::new(ONE_TEST);
        let fake = Fake::default();
        fake.spent
            .lock()
            .unwrap()
            .extend(["m-t1-1".into(), "m-t1-2".into()]);
        let (report, fake) = bench.apply(fake, &Options::default());
        let (_, step, error, _) = &report.failed[0];
        assert_eq!((*step, error.as_str()), (Step::Launching, "m-t1-2 is dead"));
        assert_eq!(
            fake.calls(),
            ["acquire a.t1#1 spent", "acquire a.t1#2 spent"]
        );
    }

    #[test]
    fn a_test_whose_machines_keep_being_reclaimed_fails_saying_so() {
        let mut bench = Bench::new(ONE_TEST);
        let fake = Fake::default();
        for attempt in 1..=4 {
            fake.reclaimed
                .lock()
                .unwrap()
                .insert(format!("m-t1-{attempt}"));
        }
        let (report, fake) = bench.apply(fake, &Options::default());
        let (_, step, error, _) = &report.failed[0];
        assert_eq!(*step, Step::Booting);
        assert!(
            error.ends_with("that is 4 machines of this attempt reclaimed, so the test stops here"),
            "{error}"
        );
        assert_eq!(
            fake.held.lock().unwrap().len(),
            0,
            "every machine given back"
        );
        assert_eq!(
            fake.calls()
                .iter()
                .filter(|c| c.starts_with("acquire"))
                .count(),
            4
        );
    }

    /// The peak is the heaviest tests a suite may run together (the suite's bound and
    /// `--parallelism` both count; variants are one machine), and the parallelism that fits
    /// is the largest whose peak stays within the room.
    #[test]
    fn the_peak_is_the_heaviest_tests_a_suite_runs_together() {
        let bench = Bench::new(
            "[[suite]]\nname = \"a\"\nparallelism = 3\n\
             [[suite.test]]\nname = \"t8\"\n[[suite.test]]\nname = \"t2\"\n\
             [[suite.test]]\nname = \"t4\"\n[[suite.test]]\nname = \"u2\"\n\
             [[suite]]\nname = \"b\"\nparallelism = 2\n\
             [[suite.test]]\nname = \"v4\"\n\
             [[suite.test.variant]]\nname = \"x\"\nchallenge = \"cx\"\n\
             [[suite.test.variant]]\nname = \"y\"\nchallenge = \"cy\"\n\
             [[suite.test]]\nname = \"w5\"\n",
        );
        let takes = |t: &crate::plan::Test| {
            let name = t
                .variant
                .as_ref()
                .map_or(t.address.test(), |v| v.test.as_str());
            name[1..].parse::<u64>().unwrap()
        };
        let plan = &bench.plan;
        assert_eq!(peak(plan, 10, takes), Some((14, "a")));
        assert_eq!(peak(plan, 2, takes), Some((12, "a")));
        assert_eq!(peak(plan, 1, takes), Some((8, "a")));
        assert_eq!(fitting_parallelism(plan, 10, 14, takes), Some(4));
        assert_eq!(fitting_parallelism(plan, 10, 13, takes), Some(2));
        assert_eq!(fitting_parallelism(plan, 10, 8, takes), Some(1));
        assert_eq!(fitting_parallelism(plan, 10, 7, takes), None);
    }

    #[test]
    fn local_suites_run_one_at_a_time_unless_the_suite_says_otherwise() {
        let bench = Bench::new(
            "[[suite]]\nname = \"a\"\n[[suite.test]]\nname = \"t1\"\n\
             [[suite]]\nname = \"b\"\nparallelism = 3\n[[suite.test]]\nname = \"t2\"\n",
        );
        assert_eq!(bench.plan.suites[0].bound(), NonZeroUsize::new(1));
        assert_eq!(bench.plan.suites[1].bound(), NonZeroUsize::new(3));
    }

    /// A cluster test as the fake serves it (as EC2 would: a machine per node, each named
    /// apart): two nodes of their own instance type, raced twice on the same machines.
    const CLUSTER: &str = "[[suite]]\nname = \"c\"\n[[suite.test]]\nname = \"t\"\n\
        repetitions = 2\ncluster = { nodes = 2, instance_type = \"r5.large\", \
        distribution_version = \"8.15.0\" }\n\
        provider = \"aws\"\nregion = \"us-east-1\"\nami = \"ami-12345678\"\n\
        instance_type = \"m5.large\"\n";

    /// The lines of what the stand-in esrally noted in `name` beside it.
    fn noted(bench: &Bench, name: &str) -> Vec<String> {
        let file = bench.dir.path().join("remote/rally-2.13.0/bin").join(name);
        let text = std::fs::read_to_string(file).unwrap_or_default();
        text.lines().map(str::to_owned).collect()
    }

    /// Processes of this machine whose command line names a path under `dir` and `marker`.
    fn processes_under(dir: &Path, marker: &str) -> Vec<String> {
        let needle = format!("{}/", dir.display());
        (std::fs::read_dir("/proc").unwrap().flatten())
            .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&needle) && c.contains(marker))
            .collect()
    }

    /// Processes of this machine naming an installation of a node under `dir`.
    fn node_processes(dir: &Path) -> Vec<String> {
        processes_under(dir, "benchmarks/races/")
    }

    /// Processes of this machine that Rally's daemon left under `dir`.
    fn daemon_processes(dir: &Path) -> Vec<String> {
        processes_under(dir, ".rally/esrallyd")
    }

    #[test]
    fn a_cluster_test_races_its_own_nodes_and_gives_every_machine_back() {
        let mut bench = Bench::with("", CLUSTER);
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        // Its own machine first, then one per node, each named apart; each renewed for the
        // second race; nodes given back first.
        assert_eq!(
            fake.calls(),
            [
                "acquire c.t#1 -> m-t-1",
                "acquire c.t#1 -> m-t-1-node-0",
                "acquire c.t#1 -> m-t-1-node-1",
                "extend m-t-1",
                "extend m-t-1-node-0",
                "extend m-t-1-node-1",
                "release m-t-1-node-0",
                "release m-t-1-node-1",
                "release m-t-1",
            ]
        );
        assert!(fake.held.lock().unwrap().is_empty());
        let r = record(&bench, "c.t");
        let roles: Vec<String> = (r.members.iter())
            .map(|m| format!("{} {}", m.role.name(), m.machine.id))
            .collect();
        assert_eq!(roles, ["node-0 m-t-1-node-0", "node-1 m-t-1-node-1"]);
        assert!(r.live_machines().next().is_none());
        let billed: Vec<&str> = r.spent.iter().map(|s| s.machine.as_str()).collect();
        assert_eq!(billed, ["m-t-1-node-0", "m-t-1-node-1", "m-t-1"]);
        // Both races went to every node, at the address each was reached at.
        let peers: Vec<String> = (r.members.iter())
            .map(|m| format!("{}:9200", m.peer_address.as_deref().unwrap()))
            .collect();
        assert_eq!(noted(&bench, "targets"), [peers.join(","), peers.join(",")]);
        // Each node installed and started for each race (Rally's stop wipes its installation),
        // stopped after it: nothing left.
        assert_eq!(noted(&bench, "node-installs").len(), 4);
        assert_eq!(noted(&bench, "node-starts").len(), 4);
        assert!(
            node_processes(bench.dir.path()).is_empty(),
            "{:?}",
            node_processes(bench.dir.path())
        );
        // Each race's results hold each node's log, with its sha256 in state.
        for race in r.finished() {
            for node in ["node-0", "node-1"] {
                let log = format!("nodes/{node}/logs/server/bench.log");
                assert!(
                    race.results.iter().any(|f| f.path.ends_with(&log)),
                    "{node}: {:?}",
                    race.results
                );
            }
        }
    }

    /// With three load drivers the test gets two machines more, which get Rally; before each
    /// race Rally's daemon starts on the test's own machine, which coordinates, then on the
    /// others; the race names all three; after it every daemon stops.
    #[test]
    fn a_cluster_test_races_from_every_load_driver_and_gives_every_machine_back() {
        let mut bench = Bench::with(
            "",
            &CLUSTER.replace("repetitions = 2\n", "repetitions = 2\nload_drivers = 3\n"),
        );
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(
            acquired(&fake),
            [
                "c.t#1 -> m-t-1",
                "c.t#1 -> m-t-1-node-0",
                "c.t#1 -> m-t-1-node-1",
                "c.t#1 -> m-t-1-driver-1",
                "c.t#1 -> m-t-1-driver-2"
            ]
        );
        assert!(fake.held.lock().unwrap().is_empty(), "{:?}", fake.calls());
        let r = record(&bench, "c.t");
        let billed: Vec<&str> = r.spent.iter().map(|s| s.machine.as_str()).collect();
        assert_eq!(billed.len(), 5, "{billed:?}");
        let peer = |name: &str| {
            let m = (r.members.iter()).find(|m| m.role.name() == name).unwrap();
            m.peer_address.clone().unwrap()
        };
        let daemons = noted(&bench, "daemons");
        assert_eq!(
            daemons.len(),
            12,
            "3 started and 3 stopped per race: {daemons:?}"
        );
        let mut hosts = Vec::new();
        for race in daemons.chunks(6) {
            // The coordinator's first, at its own address.
            let coordinator = (race[0].strip_prefix("start --node-ip="))
                .and_then(|rest| rest.split_once(" --coordinator-ip="))
                .filter(|(own, coordinator)| own == coordinator)
                .map(|(own, _)| own.to_owned())
                .unwrap_or_else(|| panic!("{daemons:?}"));
            let mut others: Vec<&str> = race[1..3].iter().map(String::as_str).collect();
            others.sort();
            let mut expected: Vec<String> = ["driver-1", "driver-2"]
                .map(|d| format!("start --node-ip={} --coordinator-ip={coordinator}", peer(d)))
                .into();
            expected.sort();
            assert_eq!(others, expected, "{daemons:?}");
            assert_eq!(race[3..], ["stop", "stop", "stop"], "{daemons:?}");
            hosts.push(format!(
                "{coordinator},{},{}",
                peer("driver-1"),
                peer("driver-2")
            ));
        }
        assert_eq!(noted(&bench, "load-drivers"), hosts);
        // Each race's results hold each further driver's Rally log, its own daemon's words.
        for race in r.finished() {
            for driver in ["driver-1", "driver-2"] {
                let log = format!("drivers/{driver}/rally.log");
                let file = (race.results.iter())
                    .find(|f| f.path.ends_with(&log))
                    .unwrap_or_else(|| panic!("{driver}: {:?}", race.results));
                let text = std::fs::read_to_string(&file.path).unwrap();
                let own = format!("--node-ip={} ", peer(driver));
                assert!(text.contains(&own), "{driver}: {text}");
            }
        }
        assert!(daemon_processes(bench.dir.path()).is_empty());
        assert!(node_processes(bench.dir.path()).is_empty());
        // The fake's machines are all this one, where nodes are installed one at a time.
        assert_eq!(noted(&bench, "node-overlaps"), Vec::<String>::new());
    }

    /// A load driver whose daemon does not start fails the test at installing with what the
    /// daemon said, and every machine is given back with nothing of Rally left running.
    #[test]
    fn a_daemon_that_does_not_start_fails_its_test_with_its_words_and_gives_everything_back() {
        let mut bench = Bench::with(
            "",
            &CLUSTER.replace("repetitions = 2\n", "load_drivers = 2\n"),
        );
        let bin = bench.dir.path().join("remote/rally-2.13.0/bin");
        std::fs::write(bin.join("daemon-fails"), "").unwrap();
        let (error, tail) = failed_at_installing(&mut bench);
        assert!(
            error.starts_with("Rally's daemon (esrallyd) of driver-1 did not start on ")
                && error.contains("(m-t-1-driver-1): race.sh exited with exit code 1"),
            "{error}"
        );
        assert!(tail.contains("Address already in use"), "{tail}");
    }

    #[test]
    fn a_node_that_does_not_start_fails_its_test_with_its_log_and_gives_everything_back() {
        let mut bench = Bench::with(
            "",
            &CLUSTER.replace("instance_type = \"r5.large\"", "car = \"fails\""),
        );
        let (error, tail) = failed_at_installing(&mut bench);
        assert!(
            error.contains("did not start on") && error.contains("m-t-1-node-"),
            "{error}"
        );
        assert!(tail.contains("boom: no such car"), "{tail}");
    }

    /// Applies the bench's cluster test, which must fail at installing; what it failed with
    /// (error, log tail), once every machine of it is checked given back with nothing of a
    /// node or a daemon left running.
    fn failed_at_installing(bench: &mut Bench) -> (String, String) {
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        let [(address, step, error, tail)] = &report.failed[..] else {
            panic!("{:?}", report.failed)
        };
        assert_eq!(
            (address.to_string().as_str(), *step),
            ("c.t", Step::Installing)
        );
        assert!(fake.held.lock().unwrap().is_empty(), "{:?}", fake.calls());
        assert!(record(bench, "c.t").live_machines().next().is_none());
        assert!(daemon_processes(bench.dir.path()).is_empty());
        assert!(node_processes(bench.dir.path()).is_empty());
        (error.clone(), tail.clone().unwrap_or_default())
    }

    /// The cluster test, with `extra` settings, applied until its race runs
    /// (`--until-released`), then Ctrl-C.
    fn cluster_stopped_mid_race(extra: &str) -> (Bench, ApplyReport, Fake) {
        let mut bench = Bench::with(
            "",
            &CLUSTER.replace(
                "repetitions = 2\n",
                &format!("rally_args = [\"--until-released\"]\n{extra}"),
            ),
        );
        let (report, fake) = until_racing(&mut bench);
        (bench, report, fake)
    }

    /// Applies the bench until a race of `--until-released` runs, then Ctrl-C.
    fn until_racing(bench: &mut Bench) -> (ApplyReport, Fake) {
        let racing = bench.dir.path().join("remote/rally-2.13.0/bin/racing");
        bench.apply_cancelled_when(Fake::default(), &Options::default(), move || {
            racing.exists()
        })
    }

    /// The machines the fake was asked for, each `<attempt> -> <machine>`.
    fn acquired(fake: &Fake) -> Vec<String> {
        (fake.calls().iter())
            .filter_map(|c| c.strip_prefix("acquire ").map(str::to_owned))
            .collect()
    }

    /// Lets a race of `--until-released` end.
    fn release_race(bench: &Bench) {
        let released = bench.dir.path().join("remote/rally-2.13.0/bin/released");
        std::fs::write(released, "").unwrap();
    }

    #[test]
    fn a_cluster_race_stopped_by_ctrl_c_resumes_on_the_nodes_it_started() {
        let (mut bench, report, fake) = cluster_stopped_mid_race("");
        assert!(report.interrupted, "{:?}", report.failed);
        assert_eq!(
            bench.status("c.t"),
            Status::InProgress { step: Step::Racing }
        );
        assert_eq!(noted(&bench, "node-starts").len(), 2);
        // The race runs on while nothing watches it, and ends.
        release_race(&bench);
        let (report, fake) = bench.apply(fake, &Options::default());
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        // The same machines, the nodes neither installed nor started again.
        assert_eq!(acquired(&fake).len(), 3, "{:?}", fake.calls());
        assert_eq!(noted(&bench, "node-installs").len(), 2);
        assert_eq!(noted(&bench, "node-starts").len(), 2);
        assert!(fake.held.lock().unwrap().is_empty());
        assert!(node_processes(bench.dir.path()).is_empty());
    }

    /// `destroy` mid-race gives back every machine of a cluster test, and giving a node or a
    /// load driver back ends the Elasticsearch or the daemon it runs (its Rally home is the
    /// run directory that releasing a host stops) though `esrally stop` or `esrallyd stop`
    /// never ran.
    #[test]
    fn destroy_mid_race_gives_back_every_machine_of_a_cluster_and_ends_its_nodes() {
        let (mut bench, _, fake) = cluster_stopped_mid_race("load_drivers = 2\n");
        assert_eq!(fake.held.lock().unwrap().len(), 4);
        assert_eq!(node_processes(bench.dir.path()).len(), 2);
        assert_eq!(daemon_processes(bench.dir.path()).len(), 2);
        bench.destroy(&fake);
        assert!(fake.held.lock().unwrap().is_empty(), "{:?}", fake.calls());
        assert!((bench.state.tests.values()).all(|r| r.live_machines().next().is_none()));
        assert!(
            node_processes(bench.dir.path()).is_empty(),
            "{:?}",
            node_processes(bench.dir.path())
        );
        assert!(
            daemon_processes(bench.dir.path()).is_empty(),
            "{:?}",
            daemon_processes(bench.dir.path())
        );
        release_race(&bench);
    }

    /// The cluster test with two variants, `a` and `b`, each with `a` and `b` after its name.
    fn cluster_variants(a: &str, b: &str) -> Bench {
        Bench::with(
            "",
            &format!(
                "{CLUSTER}[[suite.test.variant]]\nname = \"a\"\nchallenge = \"x\"\n{a}\
                 [[suite.test.variant]]\nname = \"b\"\nchallenge = \"y\"\n{b}"
            ),
        )
    }

    /// The variants of a cluster test race on one cluster, interleaved: its machines are got
    /// once, and each variant installs, starts and stops nodes of its own on them for each of
    /// its races.
    #[test]
    fn the_variants_of_a_cluster_test_race_on_one_cluster_with_nodes_of_their_own() {
        let mut bench = cluster_variants("", "");
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        assert_eq!(report.completed.len(), 2, "{:?}", report.failed);
        assert_eq!(
            acquired(&fake),
            [
                "c.t-a#1 -> m-t-a-1",
                "c.t-a#1 -> m-t-a-1-node-0",
                "c.t-a#1 -> m-t-a-1-node-1"
            ]
        );
        assert!(fake.held.lock().unwrap().is_empty(), "{:?}", fake.calls());
        assert_eq!(noted(&bench, "challenges"), ["x", "y", "x", "y"]);
        let (a, b) = (record(&bench, "c.t-a"), record(&bench, "c.t-b"));
        let machines = |r: &crate::state::TestRecord| -> Vec<String> {
            (r.members.iter())
                .map(|m| format!("{} {}", m.role.name(), m.machine.id))
                .collect()
        };
        assert_eq!(
            machines(a),
            ["node-0 m-t-a-1-node-0", "node-1 m-t-a-1-node-1"]
        );
        assert_eq!(machines(a), machines(b));
        for (ours, theirs) in a.members.iter().zip(&b.members) {
            assert_ne!(ours.machine.run_dir, theirs.machine.run_dir);
            assert_ne!(
                ours.role, theirs.role,
                "one installation id for two variants"
            );
            assert_eq!(ours.peer_address, theirs.peer_address);
        }
        // Every race went to both nodes, each installed and started for it and stopped after.
        let peers: Vec<String> = (a.members.iter())
            .map(|m| format!("{}:9200", m.peer_address.as_deref().unwrap()))
            .collect();
        assert_eq!(noted(&bench, "targets"), vec![peers.join(","); 4]);
        assert_eq!(noted(&bench, "node-installs").len(), 8);
        assert_eq!(noted(&bench, "node-starts").len(), 8);
        assert!(node_processes(bench.dir.path()).is_empty());
        // The run pays for each of the three machines once.
        let bill = crate::cost::bill::of_run(&bench.state, a.run_id.as_deref().unwrap()).unwrap();
        assert_eq!(bill.machines, 3);
    }

    /// A variant whose race fails has its nodes stopped, their logs kept with its failure,
    /// before the other starts its own on the same machines and races to the end.
    #[test]
    fn a_failed_cluster_variants_nodes_are_stopped_before_the_next_variant_starts_its_own() {
        let mut bench = cluster_variants("rally_args = [\"--fail\"]\n", "");
        let (report, fake) = bench.apply(Fake::default(), &Options::default());
        let failed: Vec<String> = (report.failed.iter())
            .map(|(address, step, ..)| format!("{address} {step:?}"))
            .collect();
        assert_eq!(failed, ["c.t-a Racing"]);
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert!(fake.held.lock().unwrap().is_empty(), "{:?}", fake.calls());
        assert!(node_processes(bench.dir.path()).is_empty());
        // a raced once, b twice; the nodes were started once per race.
        assert_eq!(noted(&bench, "node-starts").len(), 6);
        let kept = &record(&bench, "c.t-a").results;
        for node in ["node-0", "node-1"] {
            let log = format!("nodes/{node}/logs/server/bench.log");
            assert!(kept.iter().any(|f| f.path.ends_with(&log)), "{kept:?}");
        }
    }

    /// A variant left out of an apply by `--target` while its race ran on the group's cluster:
    /// the variant raced alone ends its race and its nodes first (they would hold the ports its
    /// own need, and two races on one machine measure neither), then races on the same machines.
    #[test]
    fn a_variant_raced_alone_ends_what_the_other_left_running_on_their_cluster() {
        let mut bench = cluster_variants("rally_args = [\"--until-released\"]\n", "");
        let (report, fake) = until_racing(&mut bench);
        assert!(report.interrupted, "{:?}", report.failed);
        assert_eq!(node_processes(bench.dir.path()).len(), 2);
        let alone = Options {
            targets: vec!["c.t-b".parse().unwrap()],
            ..Options::default()
        };
        let (report, fake) = bench.apply(fake, &alone);
        assert_eq!(report.completed.len(), 1, "{:?}", report.failed);
        assert_eq!(acquired(&fake).len(), 3, "{:?}", fake.calls());
        assert!(
            processes_under(bench.dir.path(), "--until-released").is_empty(),
            "the race of c.t-a runs on"
        );
        assert!(node_processes(bench.dir.path()).is_empty());
        assert_eq!(noted(&bench, "challenges"), ["x", "y", "y"]);
    }

    /// A variant whose configuration changed while its race ran on the group's cluster, the
    /// other variant resumed: its new attempt ends what the earlier one runs there (the race,
    /// its nodes) before the group races on, on the same machines.
    #[test]
    fn a_variant_starting_over_on_its_groups_cluster_ends_what_its_earlier_attempt_runs() {
        let mut bench = cluster_variants("rally_args = [\"--until-released\"]\n", "");
        let (report, fake) = until_racing(&mut bench);
        assert!(report.interrupted, "{:?}", report.failed);
        let remote = bench.dir.path().join("remote");
        bench.plan = Bench::plan(
            &remote,
            "",
            &format!(
                "{CLUSTER}[[suite.test.variant]]\nname = \"a\"\nchallenge = \"x2\"\n\
                 [[suite.test.variant]]\nname = \"b\"\nchallenge = \"y\"\n"
            ),
        );
        let (report, fake) = bench.apply(fake, &Options::default());
        assert_eq!(report.completed.len(), 2, "{:?}", report.failed);
        assert!(fake.held.lock().unwrap().is_empty(), "{:?}", fake.calls());
        assert!(
            processes_under(bench.dir.path(), "--until-released").is_empty(),
            "the earlier race of c.t-a runs on"
        );
        assert!(node_processes(bench.dir.path()).is_empty());
        assert_eq!(noted(&bench, "challenges"), ["x", "x2", "y", "x2", "y"]);
    }

    /// A variant resumed at installing whose nodes had started before Ctrl-C, and the other
    /// variant's turn first (its second race): the waiting variant's nodes are ended before the
    /// other starts its own, and each races its repetitions (simulation seed 141).
    #[test]
    fn a_resumed_cluster_variants_started_nodes_are_ended_before_the_other_starts_its_own() {
        let mut bench = cluster_variants("", "car = \"slow\"\n");
        let starts = bench.dir.path().join("remote/rally-2.13.0/bin/node-starts");
        // Once b's nodes started for its first race, while they are not answering yet.
        let (report, fake) =
            bench.apply_cancelled_when(Fake::default(), &Options::default(), move || {
                std::fs::read_to_string(&starts).is_ok_and(|s| s.lines().count() == 4)
            });
        assert!(report.interrupted, "{:?}", report.failed);
        assert_eq!(
            (bench.status("c.t-a"), bench.status("c.t-b")),
            (
                Status::InProgress {
                    step: Step::Installing
                },
                Status::InProgress {
                    step: Step::Installing
                }
            )
        );
        assert_eq!(node_processes(bench.dir.path()).len(), 2);
        let (report, fake) = bench.apply(fake, &Options::default());
        assert_eq!(report.completed.len(), 2, "{:?}", report.failed);
        assert!(fake.held.lock().unwrap().is_empty(), "{:?}", fake.calls());
        assert_eq!(noted(&bench, "challenges"), ["x", "x", "y", "y"]);
        assert!(node_processes(bench.dir.path()).is_empty());
    }

    /// A node answering where a node of the test is to start, but not of its installation
    /// (another variant's left running), fails the test: it is never raced against.
    #[test]
    fn a_node_of_another_installation_where_a_node_is_to_start_fails_the_test() {
        let mut bench = Bench::with(
            "",
            &CLUSTER.replace("instance_type = \"r5.large\"", "car = \"stranger\""),
        );
        let (report, _) = bench.apply(Fake::default(), &Options::default());
        let stranger = bench.dir.path().join("remote/rally-2.13.0/bin/stranger");
        let strangers = processes_under(bench.dir.path(), "/bin/stranger ");
        let _ = std::process::Command::new("pkill")
            .arg("-f")
            .arg(&stranger)
            .status();
        assert_eq!(strangers.len(), 2, "one per node: {strangers:?}");
        let [(_, step, error, tail)] = &report.failed[..] else {
            panic!("{:?}", report.failed)
        };
        assert_eq!(*step, Step::Installing);
        assert!(error.contains("did not start on"), "{error}");
        let tail = tail.as_deref().unwrap_or_default();
        assert!(tail.contains("that is not installation"), "{tail}");
        assert_eq!(noted(&bench, "node-starts"), Vec::<String>::new());
        assert!(noted(&bench, "targets").is_empty());
    }
}
