//! The diff of wanted results (the plan) against recorded ones (the state), rendered the way
//! Terraform users read a plan, and saved plans that a later apply refuses once state moved on.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use console::style;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use similar::TextDiff;
use uuid::Uuid;

use crate::address::Address;
use crate::plan::{MachineSettings, MatrixOf, Plan, ProviderKind, RepeatOn, Test};
use crate::state::{Handover, State, Status, Step, TestRecord};
use crate::templates::{ArtifactMap, Inputs, Renderer, TemplateError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// No result yet (or the last attempt failed): run a new attempt.
    Run,
    /// An earlier apply stopped in the middle of this attempt: go on from its step, on the
    /// machine it holds.
    Resume { step: Step },
    /// A result exists but was made with another configuration (or `--replace` asked).
    Rerun,
    /// A machine no test will use may still be running: its test left the plan, or it was kept
    /// for a test that has nothing to run.
    Terminate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub address: Address,
    pub action: Action,
    pub reason: String,
    /// The hash the new result will carry; none for terminations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Unified diff of the recorded and planned settings and race command, for re-runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The matrix the test is a combination of, which `render` groups it under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<MatrixOf>,
    /// The machines of a test with a cluster ([`crate::plan::Settings::topology`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Why a re-run whose configuration is unchanged races again: its result is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired: Option<Expired>,
}

/// A completed result older than its test's `results_valid_for` at [`Options::now`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expired {
    /// When state recorded it completed (a variant: the oldest of its group); none when state
    /// kept no history, so the result cannot be shown to be fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// The window, as `plan` writes it: `"20h"`.
    pub results_valid_for: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    pub changes: Vec<Change>,
    pub unchanged: usize,
    /// How the machines will be shared, where tests will wait for one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Warm reuse: which tests hand their machine on to a test of a later suite.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handoffs: Vec<Handoff>,
}

/// Warm reuse (`reuse_instances`): `from` keeps its machine after its last race for `to`, a test
/// of a later suite that asks for the same machine, instead of giving it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub from: Address,
    pub to: Address,
    /// The machine `from` already keeps for `to`: an earlier apply stopped between the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
}

/// What to consider: `targets` limits the plan to some addresses, `replace` forces re-runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub targets: Vec<Address>,
    pub replace: Vec<Address>,
    /// The time results' ages are taken at (`results_valid_for`): the diff reads no clock, so
    /// the same state plans alike whenever a test runs it.
    pub now: Timestamp,
}

impl Default for Options {
    /// Everything, nothing replaced, at the clock's time.
    fn default() -> Self {
        Options {
            targets: vec![],
            replace: vec![],
            now: Timestamp::now(),
        }
    }
}

impl Changes {
    pub fn count(&self, action: Action) -> usize {
        self.changes.iter().filter(|c| c.action == action).count()
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn get(&self, address: &Address) -> Option<&Change> {
        self.changes.iter().find(|c| &c.address == address)
    }
}

/// The settings (pretty JSON) and race command as one text, the thing diffs compare.
fn comparable(settings: &str, race_command: &str) -> String {
    format!("{settings}\n\nrace command:\n  {race_command}\n")
}

/// A configuration as a diff reads it: its settings as pretty JSON, its race command, and the
/// sha256 of each file its config hash took in (none in a record from before they were kept).
pub struct Described<'a> {
    /// What the diff's header calls it.
    pub label: &'a str,
    pub settings: &'a str,
    pub race_command: &'a str,
    pub inputs: &'a Inputs,
}

/// What changed from `old` to `new`: the unified diff of their settings and race commands;
/// when those read alike, the files (templates, rally.ini, track files) whose content changed,
/// appeared or went, or a generic line when `old` has no record of its files.
pub fn config_diff(old: &Described<'_>, new: &Described<'_>) -> String {
    let (before, after) = (
        comparable(old.settings, old.race_command),
        comparable(new.settings, new.race_command),
    );
    let text = TextDiff::from_lines(&before, &after)
        .unified_diff()
        .context_radius(2)
        .header(old.label, new.label)
        .to_string();
    if !text.is_empty() {
        return text;
    }
    if old.inputs.is_empty() {
        return "(settings are unchanged; a template, the rally.ini or a track file changed)\n"
            .to_owned();
    }
    let mut changed = String::new();
    let names: std::collections::BTreeSet<&String> =
        old.inputs.keys().chain(new.inputs.keys()).collect();
    for name in names {
        let what = match (old.inputs.get(name), new.inputs.get(name)) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(_), Some(_)) => "changed",
            (Some(_), None) => "removed",
            (None, _) => "added",
        };
        let _ = writeln!(changed, "  {what}: {name}");
    }
    if changed.is_empty() {
        // The files and settings alike, yet another hash: what rallyctl renders changed.
        "(settings and files are unchanged; this rallyctl hashes the configuration differently)\n"
            .to_owned()
    } else {
        format!("(settings are unchanged; files changed)\n{changed}")
    }
}

/// Renders every test of the plan, on all cores: a nightly plan of thousands of tests is
/// mostly template rendering and hashing, and each test's is independent.
pub fn render_all(plan: &Plan, renderer: &Renderer) -> Result<ArtifactMap, TemplateError> {
    let tests: Vec<&crate::plan::Test> = plan.tests().collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = tests.len().div_ceil(threads).max(1);
    let render = |part: &[&crate::plan::Test]| {
        let mut session = renderer.session();
        part.iter()
            .map(|t| Ok((t.address.clone(), session.render(t)?)))
            .collect::<Result<Vec<_>, TemplateError>>()
    };
    std::thread::scope(|scope| {
        let mut parts = tests.chunks(chunk);
        let first = parts.next().unwrap_or_default();
        let workers: Vec<_> = parts
            .map(|part| scope.spawn(move || render(part)))
            .collect();
        // The calling thread renders the first part: a thread fewer, and what it makes takes
        // the memory the plan's syntax tree left free in its allocator arena, where a new
        // thread's arena would grow.
        let mut all = ArtifactMap::with_capacity_and_hasher(tests.len(), Default::default());
        all.extend(render(first)?);
        for worker in workers {
            all.extend(worker.join().expect("rendering does not panic")?);
        }
        Ok(all)
    })
}

pub fn diff(plan: &Plan, state: &State, artifacts: &ArtifactMap, options: &Options) -> Changes {
    let wanted = |a: &Address| options.targets.is_empty() || options.targets.contains(a);
    let mut changes = Changes::default();
    let groups = variant_completions(plan, state);
    for test in plan.tests().filter(|t| wanted(&t.address)) {
        let new = &artifacts[&test.address];
        let record = state.tests.get(&test.address);
        let replace = options.replace.contains(&test.address);
        let change = |action, reason: String, diff: Option<String>| Change {
            address: test.address.clone(),
            action,
            reason,
            config_hash: Some(new.config_hash.clone()),
            diff,
            instance: record
                .and_then(TestRecord::live_machine)
                .map(|i| i.id.clone()),
            matrix: test.matrix.clone(),
            cluster: test.settings.topology(),
            expired: None,
        };
        let Some(record) = record else {
            let reason = format!("will be run{}", races(test));
            changes.changes.push(change(Action::Run, reason, None));
            continue;
        };
        let wanted_races = test.repeat.count.get();
        let same = record.config_hash == new.config_hash;
        let diff_text = || {
            let recorded = serde_json::to_string_pretty(&record.settings.value())
                .expect("JSON values serialize");
            // Rendering the test succeeded, so its words quote; a failure still reads sensibly.
            let race_command =
                crate::templates::race_command(&test.settings).unwrap_or_else(|e| format!("({e})"));
            config_diff(
                &Described {
                    label: "recorded",
                    settings: &recorded,
                    race_command: &record.race_command,
                    inputs: &record.inputs,
                },
                &Described {
                    label: "planned",
                    settings: &test.settings.canonical_json(),
                    race_command: &race_command,
                    inputs: &new.inputs(&test.settings),
                },
            )
        };
        // A stale result races all its repetitions again: samples of one result are of an age.
        let mut stale = (record.status == Status::Completed && same)
            .then(|| expired(test, record, &groups, options.now))
            .flatten()
            .map(|expired| {
                let reason = match expired.completed_at {
                    Some(at) => format!(
                        "will be re-run: result of {} is older than results_valid_for = \"{}\"",
                        at.strftime("%Y-%m-%d %H:%M UTC"),
                        expired.results_valid_for
                    ),
                    None => format!(
                        "will be re-run: state holds no time its result completed at, so it cannot be newer than results_valid_for = \"{}\"",
                        expired.results_valid_for
                    ),
                };
                Change {
                    expired: Some(expired),
                    ..change(Action::Rerun, reason, None)
                }
            });
        // A deliberate bug the simulation must find (tests/simulation.rs): a test stopped under
        // a configuration changed since is resumed, its races of the old one.
        let same = same
            || (matches!(record.status, Status::InProgress { .. })
                && crate::sim::bug!(ResumeChangedConfig));
        let entry = match (&record.status, same) {
            (Status::Completed, true) if replace => Some(change(
                Action::Rerun,
                "will be re-run: replacement requested".into(),
                None,
            )),
            (Status::Completed, true) if stale.is_some() => stale.take(),
            (Status::Completed, true) if record.finished_repetitions() < wanted_races => {
                Some(change(
                    Action::Run,
                    format!(
                        "will race {}: {} of {wanted_races} recorded",
                        missing(record.finished_repetitions() + 1, wanted_races),
                        record.finished_repetitions(),
                    ),
                    None,
                ))
            }
            (Status::Completed, true) => None,
            (Status::Completed, false) => Some(change(
                Action::Rerun,
                "will be re-run: its configuration changed".into(),
                Some(diff_text()),
            )),
            (Status::InProgress { step }, true) if !replace => Some(change(
                Action::Resume { step: *step },
                match wanted_races.max(record.repetition()) {
                    1 => format!("will be resumed at {step} (an earlier apply stopped there)"),
                    n => format!(
                        "will be resumed at {step} of repetition {} of {n} (an earlier apply stopped there)",
                        record.repetition()
                    ),
                },
                None,
            )),
            (Status::InProgress { step }, true) => Some(change(
                Action::Rerun,
                format!(
                    "will be run as a new attempt: replacement requested (the last one stopped at {step})"
                ),
                None,
            )),
            (Status::Failed { step, error, .. }, true) => Some(change(
                Action::Run,
                format!(
                    "will be run again{}: the last attempt failed at {step}: {}",
                    match record.finished_repetitions() {
                        0 => races(test),
                        done => format!(
                            ", {} ({done} of {wanted_races} recorded)",
                            missing(done + 1, wanted_races)
                        ),
                    },
                    first_line(error)
                ),
                None,
            )),
            (_, false) => Some(change(
                Action::Rerun,
                "will be re-run: its configuration changed".into(),
                Some(diff_text()),
            )),
            (_, true) => Some(change(Action::Run, "will be run".into(), None)),
        };
        match entry {
            Some(c) => changes.changes.push(c),
            None => changes.unchanged += 1,
        }
    }
    // Every test of the plan was rendered, so the artifacts name exactly the planned tests.
    for (address, record) in &state.tests {
        if artifacts.contains_key(address) || !wanted(address) {
            continue;
        }
        if let Some(instance) = record.live_machine() {
            changes.changes.push(Change {
                address: address.clone(),
                action: Action::Terminate,
                reason: format!(
                    "will be terminated: the test left the plan (instance {})",
                    instance.id
                ),
                config_hash: None,
                diff: None,
                instance: Some(instance.id.clone()),
                matrix: None,
                cluster: None,
                expired: None,
            });
        }
    }
    let (handoffs, terminate) = handoffs(plan, state, &changes, &wanted);
    changes.handoffs = handoffs;
    changes.changes.extend(terminate);
    changes.notes = sharing_notes(plan, &changes);
    changes
}

/// When the results of each variant group completed, keyed by suite and plan test: the oldest
/// of its members' (none if one's time is not recorded). The variants of a test race
/// interleaved and are compared with each other, so they expire together.
type GroupCompletions<'a> = HashMap<(&'a str, &'a str), Option<Timestamp>, crate::FastHash>;

fn variant_completions<'a>(plan: &'a Plan, state: &State) -> GroupCompletions<'a> {
    let mut groups = GroupCompletions::default();
    for test in plan.tests().filter(|t| t.repeat.valid_for.is_some()) {
        let (Some(variant), Some(record)) = (&test.variant, state.tests.get(&test.address)) else {
            continue;
        };
        if record.status != Status::Completed {
            continue;
        }
        let at = record.completed_at();
        groups
            .entry((test.address.suite(), variant.test.as_str()))
            .and_modify(|oldest| *oldest = oldest.zip(at).map(|(a, b)| a.min(b)))
            .or_insert(at);
    }
    groups
}

/// Why the completed result in `record` is stale, if it is older than the test's
/// `results_valid_for` at `now`: measured from when state recorded it completed, the time the
/// result came to exist (for a variant, its group's oldest).
fn expired(
    test: &Test,
    record: &TestRecord,
    groups: &GroupCompletions<'_>,
    now: Timestamp,
) -> Option<Expired> {
    let valid_for = test.repeat.valid_for?;
    let completed_at = match &test.variant {
        Some(v) => groups
            .get(&(test.address.suite(), v.test.as_str()))
            .copied()
            .flatten(),
        None => record.completed_at(),
    };
    let fresh = completed_at.is_some_and(|at| {
        // A window beyond what a signed duration holds never ends.
        (SignedDuration::try_from(valid_for).ok())
            .is_none_or(|window| now.duration_since(at) <= window)
    });
    (!fresh).then(|| Expired {
        completed_at,
        results_valid_for: humantime::format_duration(valid_for).to_string(),
    })
}

/// Warm reuse, decided here once: which test hands its machine to which. A machine an earlier
/// apply kept goes to its test if that test starts a new attempt now, else it is terminated
/// (unless its holder runs again: a new attempt gives back what the last one held). Then each
/// test that starts a new attempt takes the machine of a test of an earlier suite that will
/// finish on the same machine settings: from the latest such suite, so the machine idles
/// least, and its first such test, which under a `--parallelism` bound also starts first.
/// One donor per taker, and a taker passes the machine on in turn. Variants keep their
/// group's machine.
fn handoffs(
    plan: &Plan,
    state: &State,
    changes: &Changes,
    wanted: &dyn Fn(&Address) -> bool,
) -> (Vec<Handoff>, Vec<Change>) {
    // Looked up once per test: a scan of the changes per test is quadratic in a large plan.
    let actions: HashMap<&Address, Action, crate::FastHash> = changes
        .changes
        .iter()
        .map(|c| (&c.address, c.action))
        .collect();
    let new_attempt = |action: Option<&Action>| {
        matches!(
            action,
            Some(
                Action::Run
                    | Action::Rerun
                    | Action::Resume {
                        step: Step::Launching
                    }
            )
        )
    };
    let mut handoffs = Vec::new();
    let mut terminate = Vec::new();
    for (from, record) in &state.tests {
        let Some(machine) = record.live_machine() else {
            continue;
        };
        let Some(Handover::KeptFor(to)) = &machine.handover else {
            continue;
        };
        if !(wanted(from) || wanted(to)) || actions.contains_key(from) {
            continue;
        }
        if new_attempt(actions.get(to)) {
            handoffs.push(Handoff {
                from: from.clone(),
                to: to.clone(),
                kept: Some(machine.id.clone()),
            });
        } else {
            terminate.push(Change {
                address: from.clone(),
                action: Action::Terminate,
                reason: format!(
                    "will be terminated: instance {} was kept for `{to}`, which has nothing to run",
                    machine.id
                ),
                config_hash: None,
                diff: None,
                instance: Some(machine.id.clone()),
                matrix: None,
                cluster: None,
                expired: None,
            });
        }
    }
    let takes_kept: HashSet<Address, crate::FastHash> =
        handoffs.iter().map(|h| h.to.clone()).collect();
    // Tests that will finish with a machine to hand on, in plan order, one pool per machine
    // settings (a plan names few), each with its suite's index.
    let mut pools: Vec<(&MachineSettings, Vec<(usize, &Test)>)> = Vec::new();
    for (suite_index, suite) in plan.suites.iter().enumerate() {
        let mut finishing = Vec::new();
        for test in suite
            .tests
            .iter()
            .filter(|t| t.reuse && t.variant.is_none())
        {
            let Some(act) = actions.get(&test.address) else {
                continue;
            };
            if new_attempt(Some(act))
                && !takes_kept.contains(&test.address)
                && let Some((_, pool)) = pools
                    .iter_mut()
                    .find(|(machine, _)| **machine == test.settings.machine)
                && let Some(&(latest, _)) = pool.last()
            {
                let i = pool
                    .iter()
                    .position(|(suite, _)| *suite == latest)
                    .expect("the last donor is in its pool");
                handoffs.push(Handoff {
                    from: pool.remove(i).1.address.clone(),
                    to: test.address.clone(),
                    kept: None,
                });
            }
            if *act != Action::Terminate {
                finishing.push((suite_index, test));
            }
        }
        for (suite_index, test) in finishing {
            match pools
                .iter_mut()
                .find(|(machine, _)| **machine == test.settings.machine)
            {
                Some((_, pool)) => pool.push((suite_index, test)),
                None => pools.push((&test.settings.machine, vec![(suite_index, test)])),
            }
        }
    }
    (handoffs, terminate)
}

/// Where the tests to run will wait for a machine: a suite's tests on this machine run one at
/// a time, and a pool of hosts smaller than the tests of a suite makes some wait.
fn sharing_notes(plan: &Plan, changes: &Changes) -> Vec<String> {
    let changed: std::collections::HashSet<&Address, crate::FastHash> =
        changes.changes.iter().map(|c| &c.address).collect();
    let mut notes = Vec::new();
    for suite in &plan.suites {
        let to_run: Vec<&crate::plan::Test> = suite
            .tests
            .iter()
            .filter(|t| changed.contains(&t.address))
            .collect();
        let local = to_run
            .iter()
            .filter(|t| t.settings.provider() == ProviderKind::Local)
            .count();
        if local > 1 && suite.bound() == Some(std::num::NonZeroUsize::MIN) {
            notes.push(format!(
                "suite `{}`: its {local} tests on this machine run one at a time (two Rally races on one machine skew each other); set the suite's `parallelism` to run more at once",
                suite.name
            ));
        }
        let mut hosts: Vec<&str> = Vec::new();
        let mut ssh = 0;
        for t in &to_run {
            if let MachineSettings::Ssh(s) = &t.settings.machine {
                ssh += 1;
                hosts.extend(s.hosts.iter().map(|h| &**h));
            }
        }
        hosts.sort_unstable();
        hosts.dedup();
        let at_once = suite.parallelism.map_or(ssh, |p| p.get().min(ssh));
        if at_once > hosts.len() {
            notes.push(format!(
                "suite `{}`: {ssh} tests share a pool of {} host{}: some wait for a free host",
                suite.name,
                hosts.len(),
                if hosts.len() == 1 { "" } else { "s" }
            ));
        }
    }
    for h in &changes.handoffs {
        notes.push(match &h.kept {
            Some(id) => format!(
                "`{}` takes instance {id}, kept for it by `{}` (warm reuse)",
                h.to, h.from
            ),
            None => format!(
                "`{}` hands its instance on to `{}` (warm reuse: they ask for the same machine)",
                h.from, h.to
            ),
        });
    }
    notes
}

/// How a test with repetitions or variants races, for the reason of a change: nothing for one
/// race of its own.
fn races(test: &crate::plan::Test) -> String {
    let n = test.repeat.count.get();
    let races = if n == 1 {
        "1 race".to_owned()
    } else {
        format!("{n} races")
    };
    match (&test.variant, test.repeat.on) {
        (Some(v), _) => format!(
            " (variant `{}` of `{}`: {races}, interleaved with the other variants on one machine)",
            v.name, v.test
        ),
        (None, _) if n == 1 => String::new(),
        (None, RepeatOn::Same) => format!(" ({races} on one machine)"),
        (None, RepeatOn::Fresh) => format!(" ({races}, each on a fresh machine)"),
    }
}

/// The repetitions from `first` to `last`, as a reason names them.
fn missing(first: u32, last: u32) -> String {
    if first == last {
        format!("repetition {first}")
    } else {
        format!("repetitions {first} to {last}")
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// The Terraform-style text of a plan; colour follows `console`'s global setting.
pub fn render(changes: &Changes) -> String {
    let mut out = String::new();
    if changes.is_empty() {
        let _ = writeln!(
            out,
            "No changes: {} result{} already exist{} for this configuration.\n",
            changes.unchanged,
            if changes.unchanged == 1 { "" } else { "s" },
            if changes.unchanged == 1 { "s" } else { "" },
        );
    } else {
        out.push_str("rallyctl will perform the following actions:\n\n");
        // The matrix test whose combinations are being listed, under a line of its own.
        let mut group = None;
        for (k, c) in changes.changes.iter().enumerate() {
            let of = |c: &Change| {
                (c.matrix.as_ref()).map(|m| (c.address.suite().to_owned(), m.test.clone()))
            };
            let key = of(c);
            if let (Some((suite, test)), Some(m)) = (&key, &c.matrix)
                && key != group
            {
                let listed = (changes.changes[k..].iter())
                    .take_while(|d| of(d) == key)
                    .count();
                let test = Address::new(suite.as_str(), test.as_str())
                    .map_or_else(|_| format!("{suite}.{test}"), |a| a.to_string());
                let _ = writeln!(
                    out,
                    "  # {test}: a matrix of {} combination{}, {listed} test{} below\n",
                    m.combinations,
                    if m.combinations == 1 { "" } else { "s" },
                    if listed == 1 { "" } else { "s" },
                );
            }
            group = key;
            let indent = if c.matrix.is_some() { "    " } else { "" };
            let styled = match c.action {
                Action::Run => style("  +").green(),
                Action::Resume { .. } => style("  >").cyan(),
                Action::Rerun => style("-/+").yellow(),
                Action::Terminate => style("  -").red(),
            };
            let _ = writeln!(out, "{indent}  # {} {}", c.address, c.reason);
            if let Some(m) = &c.matrix {
                let values: Vec<String> = (m.values.iter())
                    .map(|(key, value)| format!("{key} = {value}"))
                    .collect();
                let _ = writeln!(out, "{indent}  #   {}", values.join(", "));
            }
            if let Some(cluster) = &c.cluster {
                let _ = writeln!(out, "{indent}  #   cluster: {cluster}");
            }
            let _ = writeln!(out, "{indent}{styled} {}", style(&c.address).bold());
            if let Some(diff) = &c.diff {
                for line in diff.lines() {
                    let line_styled = if line.starts_with('+') && !line.starts_with("+++") {
                        style(line).green()
                    } else if line.starts_with('-') && !line.starts_with("---") {
                        style(line).red()
                    } else {
                        style(line).dim()
                    };
                    let _ = writeln!(out, "{indent}      {line_styled}");
                }
            }
            out.push('\n');
        }
        for note in &changes.notes {
            let _ = writeln!(out, "Note: {note}");
        }
        if !changes.notes.is_empty() {
            out.push('\n');
        }
        if changes.unchanged > 0 {
            let _ = writeln!(
                out,
                "{} result{} already up to date.",
                changes.unchanged,
                if changes.unchanged == 1 {
                    " is"
                } else {
                    "s are"
                }
            );
        }
    }
    let resumes = changes
        .changes
        .iter()
        .filter(|c| matches!(c.action, Action::Resume { .. }))
        .count();
    let _ = write!(
        out,
        "Plan: {} to run, {}{} to re-run, {} to terminate.",
        changes.count(Action::Run),
        if resumes > 0 {
            format!("{resumes} to resume, ")
        } else {
            String::new()
        },
        changes.count(Action::Rerun),
        changes.count(Action::Terminate)
    );
    out
}

/// The format version of saved plan files.
pub const SAVED_PLAN_VERSION: u32 = 1;

/// A plan saved with `plan -out`, applied later only if state has not moved on since.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format_version: u32,
    pub plan: Plan,
    /// The state it was computed against: none when no state existed yet.
    pub state_lineage: Option<Uuid>,
    pub state_serial: u64,
    pub changes: Changes,
    /// What of the state the plan was computed from ([`state_digest`]): a write that changes
    /// nothing of it (recording a baseline) leaves the saved plan fresh. None in saved plans
    /// of rallyctl versions before it, which only the serial checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_digest: Option<String>,
}

/// The sha256 of the state as a plan is computed from it: everything but its serial and
/// recorded baseline, which no diff reads.
fn state_digest(state: &State) -> String {
    use sha2::Digest as _;
    let mut shown = serde_json::to_value(state).expect("states serialize");
    if let Some(fields) = shown.as_object_mut() {
        fields.remove("serial");
        fields.remove("baseline_run");
    }
    hex::encode(sha2::Sha256::digest(shown.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("cannot read saved plan {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a saved plan: {reason}")]
    Invalid { path: String, reason: String },
    #[error("saved plan {path} is stale: {reason}; run `rallyctl plan` again")]
    Stale { path: String, reason: String },
}

impl SavedPlan {
    pub fn new(plan: &Plan, state: &State, state_exists: bool, changes: &Changes) -> SavedPlan {
        SavedPlan {
            format_version: SAVED_PLAN_VERSION,
            plan: plan.clone(),
            state_lineage: state_exists.then_some(state.lineage),
            state_serial: if state_exists { state.serial } else { 0 },
            changes: changes.clone(),
            state_digest: state_exists.then(|| state_digest(state)),
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut json = serde_json::to_vec_pretty(self).expect("saved plans serialize");
        json.push(b'\n');
        std::fs::write(path, json)
    }

    pub fn read(path: &Path) -> Result<SavedPlan, SavedPlanError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| SavedPlanError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut saved: SavedPlan =
            serde_json::from_slice(&bytes).map_err(|e| SavedPlanError::Invalid {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        if saved.format_version != SAVED_PLAN_VERSION {
            return Err(SavedPlanError::Invalid {
                path: shown,
                reason: format!(
                    "format version {} (this rallyctl reads {SAVED_PLAN_VERSION})",
                    saved.format_version
                ),
            });
        }
        saved.plan.resolve_paths();
        Ok(saved)
    }

    /// Refuses the saved plan when the state or any rendered input changed since it was made.
    pub fn check_fresh(
        &self,
        path: &Path,
        state: &State,
        state_exists: bool,
        artifacts: &ArtifactMap,
    ) -> Result<(), SavedPlanError> {
        let stale = |reason: String| SavedPlanError::Stale {
            path: path.display().to_string(),
            reason,
        };
        let now = (
            state_exists.then_some(state.lineage),
            if state_exists { state.serial } else { 0 },
        );
        let unchanged = (self.state_digest.as_ref())
            .is_some_and(|d| self.state_lineage == now.0 && d == &state_digest(state));
        if now != (self.state_lineage, self.state_serial) && !unchanged {
            return Err(stale(format!(
                "the state changed since it was planned (serial {} then, {} now)",
                self.state_serial, now.1
            )));
        }
        for change in &self.changes.changes {
            if let (Some(hash), Some(a)) = (&change.config_hash, artifacts.get(&change.address))
                && hash != &a.config_hash
            {
                return Err(stale(format!(
                    "the inputs of {} (rally.ini or track files) changed since it was planned",
                    change.address
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ProviderKind, RallyConfig, TrackSource};
    use crate::state::{Handover, Machine, Step};

    const PLAN: &str = r#"
version = 1
name = "nightly"
[defaults]
region = "us-east-1"
ami = "ami-0123456789abcdef0"
instance_type = "m5.xlarge"
rally_config = "conditional_install_items/rally_csv.ini"
[[suite]]
name = "ingest"
[[suite.test]]
name = "geonames"
track = "geonames"
car = "4gheap"
[[suite.test]]
name = "nyc"
track = "nyc_taxis"
"#;

    fn plan(text: &str) -> Plan {
        Plan::parse(Path::new("plans/nightly.toml"), text).unwrap()
    }

    fn record_for(plan: &Plan, address: &str, status: Status) -> (Address, TestRecord) {
        let address: Address = address.parse().unwrap();
        let test = plan.test(&address).unwrap();
        let a = Renderer::new().render(test).unwrap();
        (
            address,
            TestRecord::new(
                a.config_hash,
                (&test.settings).into(),
                crate::templates::race_command(&test.settings).unwrap(),
                status,
            ),
        )
    }

    fn plan_text(p: &Plan, state: &State, options: &Options) -> String {
        let artifacts = render_all(p, &Renderer::new()).unwrap();
        render(&diff(p, state, &artifacts, options))
    }

    /// A value added to an axis adds combinations, each named by its values: the ones
    /// recorded keep their address and hash, so only the new ones run; `plan` lists them under
    /// their test.
    #[test]
    fn a_value_added_to_an_axis_runs_only_the_new_combinations() {
        console::set_colors_enabled(false);
        let matrix = |versions: &str| {
            plan(&format!(
                "version = 1\nname = \"nightly\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-0a\"\n\
                 instance_type = \"m5.large\"\ntrack = \"geonames\"\n[[suite]]\nname = \"s\"\n\
                 [[suite.test]]\nname = \"index\"\n[suite.test.matrix]\n\
                 instance_type = [\"m5.large\", \"c5.large\"]\ndistribution_version = [{versions}]\n"
            ))
        };
        let old = matrix("\"8.14.0\", \"8.15.0\"");
        let mut state = State::new("nightly");
        for test in old.tests() {
            let (a, r) = record_for(&old, &test.address.to_string(), Status::Completed);
            state.tests.insert(a, r);
        }
        let new = matrix("\"8.14.0\", \"8.15.0\", \"8.16.0\"");
        let artifacts = render_all(&new, &Renderer::new()).unwrap();
        let changes = diff(&new, &state, &artifacts, &Options::default());
        assert_eq!(changes.unchanged, 4);
        insta::assert_snapshot!(render(&changes));
    }

    #[test]
    fn plan_says_where_tests_will_wait_for_a_machine() {
        console::set_colors_enabled(false);
        let p = plan(
            r#"version = 1
name = "pools"
[defaults]
track = "geonames"
[[suite]]
name = "here"
[[suite.test]]
name = "a"
provider = "local"
[[suite.test]]
name = "b"
provider = "local"
[[suite]]
name = "lab"
[[suite.test]]
name = "c"
provider = "ssh"
hosts = ["bench-1", "bench-2:2222"]
[[suite.test]]
name = "d"
provider = "ssh"
hosts = ["bench-1", "bench-2:2222"]
[[suite.test]]
name = "e"
provider = "ssh"
hosts = ["bench-2:2222"]
[[suite]]
name = "bounded"
parallelism = 2
[[suite.test]]
name = "f"
provider = "local"
[[suite.test]]
name = "g"
provider = "local"
"#,
        );
        insta::assert_snapshot!(plan_text(&p, &State::new("pools"), &Options::default()));
    }

    const REUSE: &str = r#"
version = 1
name = "nightly"
[defaults]
region = "us-east-1"
ami = "ami-0123456789abcdef0"
instance_type = "m5.xlarge"
track = "geonames"
reuse_instances = true
[[suite]]
name = "ingest"
[[suite.test]]
name = "a"
[[suite.test]]
name = "b"
[[suite.test]]
name = "big"
instance_type = "m5.4xlarge"
[[suite]]
name = "search"
[[suite.test]]
name = "c"
[[suite.test]]
name = "own"
reuse_instances = false
[[suite.test]]
name = "big"
instance_type = "m5.4xlarge"
[[suite]]
name = "late"
reuse_instances = false
[[suite.test]]
name = "d"
"#;

    fn pairs(changes: &Changes) -> Vec<(String, String, Option<String>)> {
        changes
            .handoffs
            .iter()
            .map(|h| (h.from.to_string(), h.to.to_string(), h.kept.clone()))
            .collect()
    }

    #[test]
    fn a_test_takes_the_machine_of_an_earlier_suites_test_that_asks_for_the_same_one() {
        console::set_colors_enabled(false);
        let p = plan(REUSE);
        let artifacts = render_all(&p, &Renderer::new()).unwrap();
        let changes = diff(&p, &State::new("nightly"), &artifacts, &Options::default());
        // The first test of the latest suite, one taker each; another instance type pairs apart;
        // `own` and the suite that says no launch their own.
        let pair = |f: &str, t: &str| (f.to_owned(), t.to_owned(), None);
        assert_eq!(
            pairs(&changes),
            [
                pair("ingest.a", "search.c"),
                pair("ingest.big", "search.big")
            ]
        );
        insta::assert_snapshot!(render(&changes));
    }

    #[test]
    fn a_machine_kept_by_an_earlier_apply_goes_to_its_test_or_is_terminated() {
        console::set_colors_enabled(false);
        let p = plan(REUSE);
        let artifacts = render_all(&p, &Renderer::new()).unwrap();
        let mut state = State::new("nightly");
        for address in ["ingest.a", "ingest.b", "ingest.big"] {
            let (a, mut r) = record_for(&p, address, Status::Completed);
            if address == "ingest.b" {
                r.machine = Some(Machine {
                    handover: Some(Handover::KeptFor("search.c".parse().unwrap())),
                    ..Machine::acquired(ProviderKind::Aws, "i-0b".into())
                });
            }
            state.tests.insert(a, r);
        }
        let changes = diff(&p, &state, &artifacts, &Options::default());
        assert_eq!(
            pairs(&changes),
            [(
                "ingest.b".to_owned(),
                "search.c".to_owned(),
                Some("i-0b".to_owned())
            )]
        );
        assert!(
            render(&changes).contains(
                "Note: `search.c` takes instance i-0b, kept for it by `ingest.b` (warm reuse)"
            ),
            "{}",
            render(&changes)
        );
        // Once `search.c` has its result, nothing will take the machine: it is terminated.
        let (a, r) = record_for(&p, "search.c", Status::Completed);
        state.tests.insert(a, r);
        let changes = diff(&p, &state, &artifacts, &Options::default());
        assert!(pairs(&changes).iter().all(|(_, _, kept)| kept.is_none()));
        let terminate = changes.get(&"ingest.b".parse().unwrap()).unwrap();
        assert_eq!(
            (terminate.action, terminate.reason.as_str()),
            (
                Action::Terminate,
                "will be terminated: instance i-0b was kept for `search.c`, which has nothing to run"
            )
        );
    }

    #[test]
    fn everything_new_is_run() {
        console::set_colors_enabled(false);
        insta::assert_snapshot!(plan_text(
            &plan(PLAN),
            &State::new("nightly"),
            &Options::default()
        ));
    }

    #[test]
    fn changed_config_is_rerun_with_a_diff_and_departed_tests_terminated() {
        console::set_colors_enabled(false);
        let old = plan(PLAN);
        let mut state = State::new("nightly");
        let (a, r) = record_for(&old, "ingest.geonames", Status::Completed);
        state.tests.insert(a, r);
        let (a, r) = record_for(&old, "ingest.nyc", Status::Completed);
        state.tests.insert(a, r);
        let (a, mut r) = record_for(
            &old,
            "ingest.nyc",
            Status::InProgress { step: Step::Racing },
        );
        r.machine = Some(Machine {
            region: Some("us-east-1".into()),
            launched_at: "2026-11-25T00:00:00Z".parse().unwrap(),
            ..Machine::acquired(ProviderKind::Aws, "i-0abc".into())
        });
        state.tests.insert(Address::new("old", "gone").unwrap(), r);
        let _ = a;
        let new = plan(&PLAN.replace("car = \"4gheap\"", "car = \"8gheap\""));
        insta::assert_snapshot!(plan_text(&new, &state, &Options::default()));
    }

    #[test]
    fn nothing_to_do_is_a_no_op_that_is_counted() {
        console::set_colors_enabled(false);
        let p = plan(PLAN);
        let mut state = State::new("nightly");
        for addr in ["ingest.geonames", "ingest.nyc"] {
            let (a, r) = record_for(&p, addr, Status::Completed);
            state.tests.insert(a, r);
        }
        insta::assert_snapshot!(plan_text(&p, &state, &Options::default()));
        let replace = Options {
            replace: vec!["ingest.nyc".parse().unwrap()],
            ..Options::default()
        };
        assert!(
            plan_text(&p, &state, &replace)
                .ends_with("Plan: 0 to run, 1 to re-run, 0 to terminate.")
        );
    }

    #[test]
    fn failed_and_interrupted_tests_are_run_again_and_targets_filter() {
        console::set_colors_enabled(false);
        let p = plan(PLAN);
        let mut state = State::new("nightly");
        let (a, r) = record_for(
            &p,
            "ingest.geonames",
            Status::Failed {
                step: Step::Installing,
                error: "pip failed\nmore".into(),
                log_tail: None,
                logs: None,
            },
        );
        state.tests.insert(a, r);
        let (a, r) = record_for(&p, "ingest.nyc", Status::InProgress { step: Step::Racing });
        state.tests.insert(a, r);
        insta::assert_snapshot!(plan_text(&p, &state, &Options::default()));
        let only = Options {
            targets: vec!["ingest.nyc".parse().unwrap()],
            ..Options::default()
        };
        assert!(
            plan_text(&p, &state, &only)
                .ends_with("Plan: 0 to run, 1 to resume, 0 to re-run, 0 to terminate.")
        );
        // Replacing a test in progress is a new attempt, not a resume.
        let replace = Options {
            replace: vec!["ingest.nyc".parse().unwrap()],
            ..Options::default()
        };
        let changes = diff(
            &p,
            &state,
            &render_all(&p, &Renderer::new()).unwrap(),
            &replace,
        );
        assert_eq!(
            changes.get(&"ingest.nyc".parse().unwrap()).unwrap().action,
            Action::Rerun
        );
    }

    #[test]
    fn a_saved_plan_is_refused_once_state_moved_on() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(PLAN);
        let mut state = State::new("nightly");
        let artifacts = render_all(&p, &Renderer::new()).unwrap();
        let changes = diff(&p, &state, &artifacts, &Options::default());
        let path = dir.path().join("saved.json");
        SavedPlan::new(&p, &state, false, &changes)
            .write(&path)
            .unwrap();
        let saved = SavedPlan::read(&path).unwrap();
        saved.check_fresh(&path, &state, false, &artifacts).unwrap();
        crate::state::save(&dir.path().join("s.json"), &mut state).unwrap();
        let err = saved
            .check_fresh(&path, &state, true, &artifacts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is stale"), "{err}");
        std::fs::write(&path, "{}").unwrap();
        assert!(
            SavedPlan::read(&path)
                .unwrap_err()
                .to_string()
                .contains("is not a saved plan")
        );
    }

    /// A saved plan reads its files from the project it was made in, whatever the current
    /// directory when it is applied, and hashes its tests as the plan file does.
    #[test]
    fn a_saved_plan_reads_its_files_from_its_project() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan(&format!(
            "{PLAN}[[suite.test]]\nname = \"local\"\ntrack_path = \"tests/fixtures/tracks/tiny\"\n"
        ));
        let artifacts = render_all(&p, &Renderer::new()).unwrap();
        let path = dir.path().join("saved.json");
        SavedPlan::new(&p, &State::new("nightly"), false, &Default::default())
            .write(&path)
            .unwrap();
        let saved = SavedPlan::read(&path).unwrap();
        let test = saved.plan.test(&"ingest.local".parse().unwrap()).unwrap();
        let (TrackSource::Path(track), RallyConfig::File(ini)) =
            (&test.settings.track, &test.settings.rally_config)
        else {
            panic!("{:?}", test.settings);
        };
        for path in [track, ini] {
            assert!(path.read().is_absolute(), "{path:?}");
            assert!(path.recorded().is_relative(), "{path:?}");
        }
        assert_eq!(
            render_all(&saved.plan, &Renderer::new()).unwrap(),
            artifacts,
            "the saved plan hashes as the plan file does"
        );
    }

    /// `PLAN` with `results_valid_for` (when given) in its defaults, and a state where both
    /// tests completed at 2026-12-05 02:10 UTC.
    fn nightly(valid_for: Option<&str>) -> (Plan, State) {
        let line = valid_for.map_or(String::new(), |v| format!("results_valid_for = \"{v}\"\n"));
        let p = plan(&PLAN.replace("[defaults]\n", &format!("[defaults]\n{line}")));
        let mut state = State::new("nightly");
        for address in ["ingest.geonames", "ingest.nyc"] {
            let (a, mut r) = record_for(&p, address, Status::Completed);
            r.history = vec![crate::state::Transition {
                status: "completed".into(),
                at: "2026-12-05T02:10:00Z".parse().unwrap(),
            }];
            state.tests.insert(a, r);
        }
        (p, state)
    }

    fn at(now: &str) -> Options {
        Options {
            now: now.parse().unwrap(),
            ..Options::default()
        }
    }

    fn diff_at(p: &Plan, state: &State, now: &str) -> Changes {
        diff(
            p,
            state,
            &render_all(p, &Renderer::new()).unwrap(),
            &at(now),
        )
    }

    /// A result within its window is current; past it, the test is re-run with the reason, as
    /// every re-run is counted and rendered.
    #[test]
    fn a_result_older_than_results_valid_for_is_re_run() {
        console::set_colors_enabled(false);
        let (p, state) = nightly(Some("20h"));
        let fresh = diff_at(&p, &state, "2026-12-05T22:10:00Z");
        assert_eq!((fresh.is_empty(), fresh.unchanged), (true, 2));
        let stale = diff_at(&p, &state, "2026-12-05T22:11:00Z");
        let change = &stale.changes[0];
        assert_eq!(
            (
                change.action,
                change.reason.as_str(),
                change.diff.as_deref()
            ),
            (
                Action::Rerun,
                "will be re-run: result of 2026-12-05 02:10 UTC is older than results_valid_for = \"20h\"",
                None
            )
        );
        let json = serde_json::to_value(change).unwrap();
        assert_eq!(
            json["expired"],
            serde_json::json!({"completed_at": "2026-12-05T02:10:00Z", "results_valid_for": "20h"})
        );
        insta::assert_snapshot!(render(&stale));
    }

    /// Without the setting a result is current whenever the plan is made; the setting is no
    /// part of the config hash, so changing its value re-runs only what it makes stale.
    #[test]
    fn results_valid_for_changes_no_hash_and_unset_never_expires() {
        let (p, state) = nightly(None);
        let forever = diff_at(&p, &state, "2126-12-05T00:00:00Z");
        assert_eq!((forever.is_empty(), forever.unchanged), (true, 2));
        let hashes = |p: &Plan| {
            let a = render_all(p, &Renderer::new()).unwrap();
            let mut h: Vec<String> = a.values().map(|a| a.config_hash.clone()).collect();
            h.sort();
            h
        };
        for value in ["20h", "7d"] {
            let (q, _) = nightly(Some(value));
            assert_eq!(hashes(&q), hashes(&p), "{value}");
        }
        // Recorded under 20h, planned under 7d a day and a half later: still fresh.
        let (week, _) = nightly(Some("7d"));
        assert!(diff_at(&week, &state, "2026-12-06T14:00:00Z").is_empty());
        let (day, _) = nightly(Some("20h"));
        assert_eq!(
            diff_at(&day, &state, "2026-12-06T14:00:00Z").count(Action::Rerun),
            2
        );
    }

    /// A stale result races all its repetitions again rather than adding to old ones; a test
    /// replaced says so, not that it is stale; a record with no completion time cannot be
    /// shown fresh.
    #[test]
    fn a_stale_result_starts_its_repetitions_over() {
        let (mut p, mut state) = nightly(Some("1h"));
        p.suites[0].tests[0].repeat.count = std::num::NonZeroU32::new(3).unwrap();
        let c = diff_at(&p, &state, "2026-12-05T02:30:00Z");
        assert_eq!(
            (c.changes[0].action, c.changes[0].reason.as_str()),
            (Action::Run, "will race repetitions 2 to 3: 1 of 3 recorded")
        );
        let c = diff_at(&p, &state, "2026-12-05T03:30:00Z");
        assert_eq!(c.count(Action::Rerun), 2);
        assert!(c.changes[0].expired.is_some());
        let replace = Options {
            replace: vec!["ingest.nyc".parse().unwrap()],
            ..at("2026-12-05T03:30:00Z")
        };
        let c = diff(
            &p,
            &state,
            &render_all(&p, &Renderer::new()).unwrap(),
            &replace,
        );
        let nyc = c.get(&"ingest.nyc".parse().unwrap()).unwrap();
        assert_eq!(
            (nyc.reason.as_str(), &nyc.expired),
            ("will be re-run: replacement requested", &None)
        );
        state
            .tests
            .get_mut(&"ingest.nyc".parse().unwrap())
            .unwrap()
            .history
            .clear();
        let c = diff_at(&p, &state, "2026-12-05T02:30:00Z");
        let nyc = c.get(&"ingest.nyc".parse().unwrap()).unwrap();
        assert_eq!(
            (nyc.action, nyc.reason.as_str()),
            (
                Action::Rerun,
                "will be re-run: state holds no time its result completed at, so it cannot be newer than results_valid_for = \"1h\""
            )
        );
    }

    /// The variants of a test race interleaved and are compared with each other, so they
    /// expire together, from the oldest of their results.
    #[test]
    fn the_variants_of_a_test_expire_together() {
        let p = plan(&PLAN.replace(
            "car = \"4gheap\"\n",
            "results_valid_for = \"20h\"\n[[suite.test.variant]]\nname = \"a\"\ncar = \"4gheap\"\n[[suite.test.variant]]\nname = \"b\"\ncar = \"8gheap\"\n",
        ));
        let mut state = State::new("nightly");
        for (address, at) in [
            ("ingest.geonames-a", "2026-12-05T02:10:00Z"),
            ("ingest.geonames-b", "2026-12-05T02:40:00Z"),
        ] {
            let (a, mut r) = record_for(&p, address, Status::Completed);
            r.history = vec![crate::state::Transition {
                status: "completed".into(),
                at: at.parse().unwrap(),
            }];
            state.tests.insert(a, r);
        }
        let c = diff_at(&p, &state, "2026-12-05T22:20:00Z");
        let rerun: Vec<String> = (c.changes.iter())
            .filter(|c| c.action == Action::Rerun)
            .map(|c| format!("{} {}", c.address, c.reason))
            .collect();
        assert_eq!(
            rerun,
            [
                "ingest.geonames-a will be re-run: result of 2026-12-05 02:10 UTC is older than results_valid_for = \"20h\"",
                "ingest.geonames-b will be re-run: result of 2026-12-05 02:10 UTC is older than results_valid_for = \"20h\""
            ]
        );
    }

    /// Recording a baseline writes state (a new serial) but changes nothing a plan is computed
    /// from: a saved plan stays fresh; any change to a test's record makes it stale.
    #[test]
    fn recording_a_baseline_leaves_a_saved_plan_fresh() {
        let mut state = State::new("w");
        state.serial = 3;
        let plan: Plan = crate::plan::Plan::parse(
            Path::new("p.toml"),
            "version = 1\nname = \"w\"\n[defaults]\nprovider = \"local\"\n[[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"t\"\ntrack = \"geonames\"\n",
        )
        .unwrap();
        let changes = Changes::default();
        let saved = SavedPlan::new(&plan, &state, true, &changes);
        let artifacts = ArtifactMap::default();
        state.baseline_run = Some("run-1".into());
        state.serial += 1;
        saved
            .check_fresh(Path::new("saved"), &state, true, &artifacts)
            .unwrap();
        state.tests.insert(
            "s.t".parse().unwrap(),
            crate::state::TestRecord::new(
                "h".into(),
                serde_json::json!({}).into(),
                "esrally race".into(),
                crate::state::Status::Completed,
            ),
        );
        state.serial += 1;
        assert!(
            saved
                .check_fresh(Path::new("saved"), &state, true, &artifacts)
                .is_err()
        );
    }
}
