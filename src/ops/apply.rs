//! `apply`: what a plan (or a saved plan) says to do, made: the account checked, state locked,
//! the changes found and priced ([`prepare`]), then walked ([`run`]) once the user agreed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokio::runtime::Runtime;

use super::plan::{
    PlanOptions, baked_images, check_account, prices_for, refuse_local_nodes_as_root, selection,
    warn_limits,
};
use super::{Loaded, load_at, lock};
use crate::address::Address;
use crate::backend::{Backend, Lock};
use crate::cost;
use crate::history::series::Filter;
use crate::notify::{self, Failure, Kind, Message};
use crate::plan::{Plan, ProviderKind};
use crate::planner::{self, Changes, SavedPlan};
use crate::state::{Machine, State, Step};
use crate::ui;

/// An apply ready to run: its changes and their estimate, shown before the user agrees, and
/// the state it holds locked until [`run`] ends.
pub struct Prepared {
    pub changes: Changes,
    pub estimate: Option<cost::estimate::Estimate>,
    loaded: Loaded,
    prices: cost::Prices,
    _lock: Lock,
}

impl Prepared {
    /// Where the workspace's state is.
    pub fn backend(&self) -> &Backend {
        &self.loaded.backend
    }
}

/// Checks credentials and the account, locks `backend`, and finds the changes: a saved plan's,
/// refused when state moved since it was made, or the diff of `plan` against state.
pub fn prepare(
    rt: &Runtime,
    path: &Path,
    plan: Plan,
    saved: Option<&SavedPlan>,
    backend: Backend,
    o: &PlanOptions<'_>,
) -> Result<Prepared> {
    if plan
        .tests()
        .any(|t| t.settings.provider() == ProviderKind::Aws)
    {
        rt.block_on(crate::provider::aws::check_credentials())
            .context(
                "apply needs AWS credentials for its aws tests; nothing was launched or written",
            )?;
    }
    // A saved plan was checked when it was made.
    let limits = match saved {
        None => check_account(rt, &plan, o.refresh)?.0,
        Some(_) => vec![],
    };
    let lock = lock(&backend, &format!("rallyctl apply {}", path.display()))?;
    let mut l = load_at(plan, backend, None)?;
    let resolved = crate::bake::resolve(&mut l.plan, &l.state);
    let changes = match saved {
        Some(s) => {
            s.check_fresh(path, &l.state, l.state_exists, &l.artifacts)?;
            s.changes.clone()
        }
        None => planner::diff(
            &l.plan,
            &l.state,
            &l.artifacts,
            &selection(o.target, o.replace, &l.plan, &l.state)?,
        ),
    };
    refuse_local_nodes_as_root(&l.plan, &changes)?;
    baked_images(&l.plan, resolved, &changes)?;
    warn_limits(&l.plan, &changes, &limits, o.parallelism);
    let (prices, estimate) = match changes.is_empty() {
        true => (cost::Prices::default(), None),
        false => {
            // Apply reaches EC2 whatever `--refresh` says: the price it records needs the
            // root volume.
            let prices = prices_for(rt, &l.plan, &changes, o.prices, Ok(()))?;
            let estimate = cost::estimate::estimate(&l.plan, &l.state, &changes, &prices);
            (prices, estimate)
        }
    };
    Ok(Prepared {
        changes,
        estimate,
        loaded: l,
        prices,
        _lock: lock,
    })
}

/// What an apply did.
pub struct ApplyReport {
    /// The run it made: what its results and machine time are filed under.
    pub run_id: String,
    /// State as the apply left it.
    pub state: State,
    /// The tests it was to change, in the plan's order.
    pub touched: Vec<Address>,
    /// What the run's machines cost, when it is known.
    pub bill: Option<cost::bill::Bill>,
    pub completed: Vec<Address>,
    pub failed: Vec<TestFailure>,
    /// Ctrl-C stopped it: tests that had not started were left for the next apply.
    pub interrupted: bool,
    /// After an interruption, tests whose machine may still run (and cost money, or hold a
    /// host).
    pub still_running: Vec<StillRunning>,
}

/// A test that failed, and where.
pub struct TestFailure {
    pub address: Address,
    /// The step it failed at: the kind of failure.
    pub step: Step,
    pub error: String,
    /// The end of the log of a race that failed.
    pub log_tail: Option<String>,
}

impl ApplyReport {
    /// The webhook's message about an apply some test of which failed; none when none did.
    pub fn notification(&self, workspace: &str) -> Option<Message> {
        if self.failed.is_empty() {
            return None;
        }
        let mut text = format!(
            "rallyctl apply of workspace `{workspace}` (run {}): {} failed, {} completed.",
            self.run_id,
            self.failed.len(),
            self.completed.len()
        );
        for f in self.failed.iter().take(notify::TEXT_ROWS) {
            text.push_str(&format!(
                "\n• {} failed at {}: {}",
                f.address, f.step, f.error
            ));
        }
        if self.failed.len() > notify::TEXT_ROWS {
            text.push_str(&format!(
                "\n… and {} more",
                self.failed.len() - notify::TEXT_ROWS
            ));
        }
        Some(Message {
            text,
            kind: Kind::ApplyFailed,
            workspace: workspace.to_string(),
            run_id: Some(self.run_id.clone()),
            verdicts: Vec::new(),
            failures: (self.failed.iter())
                .map(|f| Failure {
                    test: f.address.to_string(),
                    step: f.step.to_string(),
                    error: f.error.clone(),
                })
                .collect(),
            changes: Vec::new(),
        })
    }

    /// The webhook's message about the change points this apply's run brought to the series of
    /// the tests it completed; none when it brought none. `backend` is the workspace's.
    pub fn change_notification(
        &self,
        backend: Backend,
        workspace: &str,
    ) -> Result<Option<Message>> {
        if self.completed.is_empty() {
            return Ok(None);
        }
        let ws = super::results::open(backend, Some(self.state.clone()), Some(workspace))?;
        let q = super::history::Query {
            filter: Filter {
                tests: self.completed.clone(),
                ..Filter::default()
            },
            ..super::history::Query::default()
        };
        let (_, news) = super::history::history_and_news(&ws, &q)?;
        Ok(super::history::notification(workspace, &news))
    }
}

/// A test whose machine an interrupted apply left running.
pub struct StillRunning {
    pub address: Address,
    pub machine: Machine,
}

/// Walks the changes `p` holds; Ctrl-C starts nothing new.
pub fn run(rt: &Runtime, p: Prepared, parallelism: usize) -> Result<ApplyReport> {
    let Prepared {
        changes,
        loaded: l,
        prices,
        _lock,
        ..
    } = p;
    let state_dir = l.backend.local_dir();
    let handle = crate::backend::StateHandle::new(l.state, l.backend);
    let report = rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let watcher = super::on_ctrl_c(
            &cancel,
            "no new tests will start; running ones stop at their next recorded step",
        );
        let provider = crate::provider::Fleet::new(state_dir, &l.plan.name);
        let report = crate::walk::apply(
            provider,
            l.plan,
            l.artifacts,
            l.renderer,
            &changes,
            handle.clone(),
            &crate::walk::ApplyOptions {
                parallelism,
                results_base: PathBuf::new(),
                prices,
            },
            ui::Progress::new(ui::stdout_is_tty()),
            cancel,
        )
        .await;
        watcher.abort();
        report
    })?;
    let state = handle.snapshot();
    Ok(ApplyReport {
        bill: cost::bill::of_run(&state, &report.run_id),
        state,
        touched: changes.changes.iter().map(|c| c.address.clone()).collect(),
        run_id: report.run_id,
        completed: report.completed,
        failed: (report.failed.into_iter())
            .map(|(address, step, error, log_tail)| TestFailure {
                address,
                step,
                error,
                log_tail,
            })
            .collect(),
        interrupted: report.interrupted,
        still_running: (report.still_running.into_iter())
            .map(|(address, machine)| StillRunning { address, machine })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(failed: usize) -> ApplyReport {
        ApplyReport {
            run_id: "RUN".into(),
            state: State::new("w"),
            touched: Vec::new(),
            bill: None,
            completed: vec![Address::new("s", "ok").unwrap()],
            failed: (0..failed)
                .map(|i| TestFailure {
                    address: Address::new("s", format!("t{i}")).unwrap(),
                    step: Step::Installing,
                    error: format!("error {i}"),
                    log_tail: None,
                })
                .collect(),
            interrupted: false,
            still_running: Vec::new(),
        }
    }

    /// An apply without failures tells the webhook nothing; one with many names the first few in
    /// `text` and counts the rest, while `failures` holds them all.
    #[test]
    fn the_webhook_hears_of_failed_applies_only_and_in_a_few_lines() {
        assert!(report(0).notification("w").is_none());
        let m = report(notify::TEXT_ROWS + 2).notification("w").unwrap();
        assert_eq!(m.failures.len(), notify::TEXT_ROWS + 2);
        assert_eq!(
            m.text.lines().count(),
            1 + notify::TEXT_ROWS + 1,
            "{}",
            m.text
        );
        assert!(m.text.starts_with("rallyctl apply of workspace `w` (run RUN): 7 failed, 1 completed.\n• s.t0 failed at installing: error 0\n"), "{}", m.text);
        assert!(m.text.ends_with("\n… and 2 more"), "{}", m.text);
    }

    /// An apply that completed nothing reads no history; one whose history cannot be read
    /// (here: no run has results) is an error for the caller to warn about, never a message.
    #[test]
    fn change_points_are_looked_for_only_after_a_completed_test_and_a_history_failure_is_an_error()
    {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::create_dir_all(dir.path().join("results")).unwrap();
        let backend = || Backend::Local(dir.path().join("state/w.state.json"));
        let mut nothing = report(1);
        nothing.completed.clear();
        assert!(
            nothing
                .change_notification(backend(), "w")
                .unwrap()
                .is_none()
        );
        let e = report(0).change_notification(backend(), "w").unwrap_err();
        assert!(e.to_string().contains("results"), "{e:#}");
    }
}
