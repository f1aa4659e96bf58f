//! `results` and `report`: the workspace whose results to read, and the baseline recorded in
//! its state.

use anyhow::Result;

use super::lock;
use crate::backend::Backend;
use crate::notify::{self, Kind, Message};
use crate::results::{self, Workspace, compare::Comparison};
use crate::state::State;

/// The workspace whose results to read: by its state, or by `workspace`'s name when there is
/// no state yet (its runs can still be listed from `results/`).
pub fn open(backend: Backend, state: Option<State>, workspace: Option<&str>) -> Result<Workspace> {
    Ok(Workspace::open(backend, state, workspace)?)
}

/// Records `run` (or `latest`) as the workspace's baseline, under the state's lock; the run it
/// named.
pub fn record_baseline(ws: &mut Workspace, run: &str) -> Result<String> {
    let lock = lock(&ws.backend, "rallyctl results --baseline")?;
    Ok(ws.set_baseline(run, &lock)?)
}

/// The webhook's message about a comparison: none when nothing regressed, a failed gate's when
/// `gate_failed`. Its `text` is the gate's own explanation, cut to the top regressions.
pub fn notification(c: &Comparison, gate_failed: bool) -> Option<Message> {
    let regressed = c.regressions();
    if regressed.is_empty() {
        return None;
    }
    let (kind, what) = if gate_failed {
        (Kind::GateFailed, "regression gate failed")
    } else {
        (Kind::Regression, "regression")
    };
    let explained = results::render::regressions(&regressed, c.min_effect_pct);
    let mut text = format!(
        "rallyctl {what} in workspace `{}`: {}",
        c.workspace,
        results::render::comparison_summary(c)
    );
    // The explanation's first line counts them all; the rest is one line per row.
    for line in explained.lines().take(1 + notify::TEXT_ROWS) {
        text.push_str(&format!("\n{}", line.trim_start()));
    }
    if regressed.len() > notify::TEXT_ROWS {
        text.push_str(&format!(
            "\n… and {} more",
            regressed.len() - notify::TEXT_ROWS
        ));
    }
    Some(Message {
        text,
        kind,
        workspace: c.workspace.clone(),
        run_id: c.contender_run.clone(),
        verdicts: regressed.into_iter().cloned().collect(),
        failures: Vec::new(),
        changes: Vec::new(),
    })
}
