//! `results` and `report`: the workspace whose results to read, and the baseline recorded in
//! its state.

use anyhow::Result;

use super::lock;
use crate::backend::Backend;
use crate::results::Workspace;
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
