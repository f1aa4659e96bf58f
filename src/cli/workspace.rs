//! Where a command's workspace is: its state file (`--state`, `--workspace`, a plan's name), the
//! state and plan loaded together for a diff, the lock, and the outputs that must not land on
//! any of them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::Global;
use crate::graph::Graph;
use crate::plan::Plan;
use crate::planner;
use crate::state::{self, State};
use crate::templates::Renderer;

/// The state file of a workspace: `--state`, else `state/<workspace>.state.json`. Every
/// command finds its state through here.
pub(super) fn workspace_state(g: &Global, workspace: &str) -> PathBuf {
    g.state
        .clone()
        .unwrap_or_else(|| state::default_path(workspace))
}

/// The workspace of a command that needs no valid plan (destroy, state, results, force-unlock)
/// and where its state is: `--state` and `--workspace` win; of a plan only the name is read.
pub(super) struct Target {
    pub(super) state_path: PathBuf,
    /// The workspace named (by `--workspace` or the plan), which the state must belong to.
    pub(super) workspace: Option<String>,
}

pub(super) fn target(g: &Global, plan: Option<&Path>) -> Result<Target> {
    let workspace = match (&g.workspace, plan) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(plan)) => Some(Plan::name_of(plan)?),
        (None, None) => None,
    };
    let state_path = match (&g.state, &workspace) {
        (Some(path), _) => path.clone(),
        (None, Some(name)) => state::default_path(name),
        (None, None) => bail!(
            "name the plan file or pass --state PATH (or --workspace NAME) to say which state to use"
        ),
    };
    Ok(Target {
        state_path,
        workspace,
    })
}

impl Target {
    /// The state, checked to belong to the workspace named; `None` when there is none.
    pub(super) fn load(&self) -> Result<Option<State>> {
        let loaded = state::load(&self.state_path)?;
        match (loaded, &self.workspace) {
            (Some(state), Some(name)) => Ok(Some(
                state::of_workspace(Some(state), &self.state_path, name)?.0,
            )),
            (loaded, _) => Ok(loaded),
        }
    }

    pub(super) fn load_existing(&self) -> Result<State> {
        self.load()?
            .with_context(|| format!("no state at {}", self.state_path.display()))
    }
}

/// A path as the file system would resolve it, also for a file that does not exist yet.
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match (parent.canonicalize(), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
    }
}

/// Refuses an output path that would overwrite what rallyctl reads or keeps: the plan file, a
/// state file, its backup or lock, anything in a `state/` directory.
pub(super) fn check_output(out: &Path, plan: Option<&Path>, state_path: &Path) -> Result<()> {
    let target = resolved(out);
    let refuse = |what: String| {
        anyhow::anyhow!(
            "refusing to write {} over {what}; choose another output file",
            out.display()
        )
    };
    if let Some(plan) = plan
        && resolved(plan) == target
    {
        return Err(refuse(format!("the plan file {}", plan.display())));
    }
    for dir in [state_dir(state_path), PathBuf::from(state::DEFAULT_DIR)] {
        let dir = resolved(&dir);
        if dir.file_name() == Some(std::ffi::OsStr::new(state::DEFAULT_DIR))
            && target.starts_with(&dir)
        {
            return Err(refuse(format!(
                "the state directory {}, which holds state files, their backups and locks",
                dir.display()
            )));
        }
    }
    for kept in [
        state_path.to_owned(),
        state::backup_path(state_path),
        state::lock_path(state_path),
    ] {
        if resolved(&kept) == target {
            return Err(refuse(format!("{}", kept.display())));
        }
    }
    if matches!(
        state::load(&target),
        Ok(Some(_)) | Err(state::StateError::Newer { .. })
    ) {
        return Err(refuse("a state file".into()));
    }
    Ok(())
}

/// The directory of the state file, where per-workspace files (EC2's ephemeral key and known
/// hosts) live beside it.
pub(super) fn state_dir(state_path: &Path) -> PathBuf {
    state_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// Locks the state for a command that writes it, saying so when a dead run's lock is replaced.
pub(super) fn lock(state_path: &Path, command: &str) -> Result<state::Lock> {
    let lock = state::Lock::acquire(state_path, command)?;
    if let Some(dead) = &lock.replaced {
        eprintln!(
            "note: took over the lock of `{}` (pid {}, since {}), which is no longer running",
            dead.command,
            dead.pid,
            dead.since.strftime("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    Ok(lock)
}

/// Loads a plan, its state (locked or not) and everything the diff needs.
pub struct Loaded {
    pub plan: Plan,
    pub state_path: PathBuf,
    pub state: State,
    pub state_exists: bool,
    pub artifacts: crate::templates::ArtifactMap,
    pub renderer: Renderer,
}

pub fn load(plan: Plan, g: &Global) -> Result<Loaded> {
    let state_path = workspace_state(g, &plan.name);
    load_at(plan, state_path, None)
}

/// [`load`] of the plan at `path`. State is read while the plan is validated when its path is
/// known first: from `--state`, or from the name at the top of a TOML plan.
pub fn load_file(path: &Path, g: &Global) -> Result<Loaded> {
    let text = Plan::read(path)?;
    let early = (g.state.clone())
        .or_else(|| Plan::peek_name(path, &text).map(|name| state::default_path(&name)));
    std::thread::scope(|scope| {
        let reading = (early.as_ref()).map(|p| (p, scope.spawn(move || state::load(p))));
        let plan = Plan::parse(path, &text)?;
        let state_path = workspace_state(g, &plan.name);
        let read = match reading {
            Some((p, read)) if *p == state_path => {
                Some(read.join().expect("reading state does not panic"))
            }
            _ => None,
        };
        load_at(plan, state_path, read)
    })
}

/// [`load`] with the state at `state_path`; `read` is what [`state::load`] gave for it, if it
/// was read already.
pub fn load_at(
    plan: Plan,
    state_path: PathBuf,
    read: Option<Result<Option<State>, state::StateError>>,
) -> Result<Loaded> {
    let renderer = Renderer::new();
    // Reading state and rendering every test do not depend on each other, and for a plan of
    // thousands of tests each takes a while: they overlap.
    let (state, artifacts) = std::thread::scope(|scope| {
        let state = scope.spawn(|| {
            let loaded = read.unwrap_or_else(|| state::load(&state_path))?;
            state::of_workspace(loaded, &state_path, &plan.name)
        });
        Graph::compile(&plan)?;
        let artifacts = planner::render_all(&plan, &renderer);
        let state = state.join().expect("loading state does not panic");
        anyhow::Ok((state?, artifacts?))
    })?;
    let (state, state_exists) = state;
    Ok(Loaded {
        plan,
        state_path,
        state,
        state_exists,
        artifacts,
        renderer,
    })
}
