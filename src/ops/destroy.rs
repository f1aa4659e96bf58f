//! `destroy`: what a workspace still holds, found ([`survey`]) and given back ([`give_back`])
//! once the user agreed.

use std::path::Path;

use anyhow::Result;
use tokio::runtime::Runtime;

use super::lock;
use crate::backend::StateHandle;
use crate::backend::{Backend, Lock};
use crate::destroy::{Gone, GroupTarget, ImageTarget, NotGivenBack, Target};
use crate::plan::Plan;
use crate::provider::Fleet;
use crate::state::State;

/// What `destroy` would give back, with the workspace's state locked.
pub struct Found {
    /// Machines to give back: state's, bake instances, leaked ones.
    pub targets: Vec<Target>,
    /// Baked images to deregister (`--images`).
    pub images: Vec<ImageTarget>,
    /// Baked images the workspace keeps (without `--images`).
    pub kept: usize,
    /// Placement groups to delete once the machines are given back.
    pub groups: Vec<GroupTarget>,
    /// Machines state names that are gone already, to be recorded as such.
    pub gone: Vec<Gone>,
    pub workspace: String,
    fleet: Fleet,
    handle: StateHandle,
    _lock: Lock,
}

impl Found {
    /// Nothing to give back (gone machines aside, which need no asking).
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.images.is_empty() && self.groups.is_empty()
    }
}

/// Locks `backend` and finds what the workspace `workspace` holds: what state names, and,
/// with a valid plan at `plan`, machines state never heard of in the plan's regions. `None`
/// when there is no state, and no valid plan to look for leaked machines with.
pub fn survey(
    rt: &Runtime,
    backend: Backend,
    workspace: Option<&str>,
    state: impl FnOnce(&Backend) -> Result<Option<State>>,
    plan: Option<&Path>,
    images: bool,
    command: &str,
) -> Result<Option<Found>> {
    let lock = lock(&backend, command)?;
    // A valid plan also says where to look for machines state never heard of; a broken one
    // must not keep the rest from being given back.
    let plan = match plan.map(Plan::load) {
        Some(Err(e)) => {
            eprintln!(
                "warning: the plan is not valid, so destroy looks only where state points:\n{e}"
            );
            None
        }
        Some(Ok(plan)) => Some(plan),
        None => None,
    };
    let settings: Vec<&crate::plan::Settings> = plan
        .iter()
        .flat_map(|p| p.tests().map(|t| &t.settings))
        .collect();
    let state = match (state(&backend)?, workspace) {
        (Some(state), _) => state,
        // No state, but a plan to look for leaked machines with.
        (None, Some(name)) if plan.is_some() => State::new(name),
        (None, _) => return Ok(None),
    };
    let fleet = Fleet::new(backend.local_dir(), &state.workspace);
    let places = crate::destroy::Places::of(&state, &settings)?;
    let (targets, gone) = rt.block_on(crate::destroy::targets(&fleet, &state, &places))?;
    let groups = rt.block_on(crate::destroy::placement_groups(&fleet, &state, &places))?;
    let (images, kept) = if images {
        let found = rt.block_on(crate::destroy::images(&fleet, &state, &settings))?;
        (found, 0)
    } else {
        (vec![], crate::destroy::kept(&state))
    };
    Ok(Some(Found {
        targets,
        images,
        kept,
        groups,
        gone,
        workspace: state.workspace.clone(),
        fleet,
        handle: StateHandle::new(state, backend),
        _lock: lock,
    }))
}

/// What `destroy` gave back.
pub struct DestroyReport {
    pub machines: usize,
    /// Images deregistered (snapshots without an image not counted).
    pub images: usize,
    /// Placement groups found and deleted.
    pub groups: usize,
    pub not_given_back: Vec<NotGivenBack>,
}

/// Records the gone machines as such, then gives back every target and image of `f`, then
/// deletes its placement groups (EC2 refuses while an instance in one runs).
pub fn give_back(rt: &Runtime, f: Found) -> Result<DestroyReport> {
    crate::destroy::forget(&f.handle, &f.gone)?;
    let mut not_given_back = Vec::new();
    if !f.targets.is_empty() {
        not_given_back = rt.block_on(crate::destroy::destroy(&f.fleet, &f.handle, &f.targets))?;
    }
    if !f.images.is_empty() {
        not_given_back
            .extend(rt.block_on(crate::destroy::deregister(&f.fleet, &f.handle, &f.images))?);
    }
    not_given_back.extend(rt.block_on(crate::destroy::delete_groups(&f.fleet, &f.groups)));
    Ok(DestroyReport {
        machines: f.targets.len(),
        images: f.images.iter().filter(|i| i.id.is_some()).count(),
        groups: f.groups.len(),
        not_given_back,
    })
}
