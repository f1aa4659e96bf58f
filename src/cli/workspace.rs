//! Where a command's workspace is: its state file (`--state`, `--workspace`, a plan's name), the
//! state and plan loaded together for a diff, the lock, and the outputs that must not land on
//! any of them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{BackendArg, Global, UsageError};
use crate::backend::Backend;
use crate::ops::{Loaded, load_at};
use crate::plan::{Head, NotifyConfig, Plan, S3Config};
use crate::state::{self, State};

/// The backend of the workspace `workspace`: `--state` (a local file) or `--backend` on the
/// command line, else the plan's `[backend]` (`plan` is the plan file, named in hints), else
/// `state/<workspace>.state.json`. Every command finds its state through here; only `--state`
/// needs no workspace name.
pub(super) fn backend_of(
    g: &Global,
    workspace: Option<&str>,
    plan_backend: Option<&S3Config>,
    plan: Option<&Path>,
) -> Result<Backend> {
    let s3 = match (&g.state, &g.backend) {
        (Some(_), Some(BackendArg::S3(_))) => {
            return Err(UsageError(
                "--state names a local state file and --backend an S3 one: pass one of them".into(),
            )
            .into());
        }
        (Some(path), _) => return Ok(Backend::Local(path.clone())),
        (None, Some(BackendArg::Local)) => None,
        (None, Some(BackendArg::S3(config))) => Some((config, None)),
        (None, None) => plan_backend.map(|c| (c, plan)),
    };
    let Some(workspace) = workspace else {
        bail!(
            "name the plan file or pass --state PATH (or --workspace NAME) to say which state to use"
        );
    };
    match s3 {
        None => {
            let local = state::default_path(workspace);
            let remembered = std::fs::read_to_string(remembered_path(workspace)).ok();
            if let Some(url) = remembered.filter(|_| g.backend.is_none() && !local.exists()) {
                let url = url.trim();
                return Err(UsageError(format!(
                    "workspace `{workspace}` lives in {url} ({} remembers the backend it last used), but nothing here names it: pass --backend {url}, or --backend local to start a new workspace in this directory",
                    remembered_path(workspace).display()
                ))
                .into());
            }
            Ok(Backend::Local(local))
        }
        Some((config, plan)) => s3_backend(config, workspace, plan),
    }
}

/// Where this directory remembers the S3 backend a workspace used last, as `terraform init`
/// does: `state/<workspace>.backend`, its URL.
fn remembered_path(workspace: &str) -> PathBuf {
    Path::new(state::DEFAULT_DIR).join(format!("{}.backend", crate::address::slug(workspace)))
}

/// Remembers the S3 backend a command reached `workspace` in (`--backend`, else the plan's
/// `[backend]`; nothing for a local one), once it was read from, so that a command that names
/// no backend later is not silently given an empty local workspace. A directory that cannot
/// hold the note loses only the reminder, which is said.
pub(super) fn remember_backend(g: &Global, plan_backend: Option<&S3Config>, workspace: &str) {
    let config = match (&g.state, &g.backend) {
        (None, Some(BackendArg::S3(config))) => config,
        (None, None) => match plan_backend {
            Some(config) => config,
            None => return,
        },
        _ => return,
    };
    let path = remembered_path(workspace);
    let url = config.url();
    if std::fs::read_to_string(&path).is_ok_and(|known| known.trim() == url) {
        return;
    }
    let written = std::fs::create_dir_all(state::DEFAULT_DIR)
        .and_then(|()| std::fs::write(&path, format!("{url}\n")));
    if let Err(e) = written {
        crate::ui::warn(&format!(
            "cannot remember the workspace's backend in {}: {e}",
            path.display()
        ));
    }
}

/// The S3 backend at `config`, with hints that name it as the command line did: by the plan
/// file, else by `--backend` and `--workspace`.
pub(super) fn s3_backend(
    config: &S3Config,
    workspace: &str,
    plan: Option<&Path>,
) -> Result<Backend> {
    let named = match plan {
        Some(plan) => plan.display().to_string(),
        None => format!("--backend {} --workspace {workspace}", config.url()),
    };
    Ok(Backend::s3(config, workspace, named)?)
}

/// The workspace a command names (`--workspace`, else the plan's name), and the plan's head
/// (`[backend]`, `[notify]`); of a plan only these are read, so a plan broken elsewhere still
/// names them.
pub(super) fn named_workspace(
    g: &Global,
    plan: Option<&Path>,
) -> Result<(Option<String>, Option<Head>)> {
    let head = plan.map(Plan::head_of).transpose()?;
    let from_plan = head.as_ref().map(|h| h.name.clone());
    Ok((g.workspace.clone().or(from_plan), head))
}

/// The workspace of a command that needs no valid plan (destroy, state, results, force-unlock)
/// and where its state is: `--state`, `--backend` and `--workspace` win over the plan.
pub(super) struct Target {
    pub(super) backend: Backend,
    /// The workspace named (by `--workspace` or the plan), which the state must belong to.
    pub(super) workspace: Option<String>,
    /// The plan's `[notify]`, for the commands that tell a webhook.
    pub(super) notify: Option<NotifyConfig>,
}

pub(super) fn target(g: &Global, plan: Option<&Path>) -> Result<Target> {
    let (workspace, head) = named_workspace(g, plan)?;
    let (plan_backend, notify) = head.map_or((None, None), |h| (h.backend, h.notify));
    let backend = backend_of(g, workspace.as_deref(), plan_backend.as_ref(), plan)?;
    Ok(Target {
        backend,
        workspace,
        notify,
    })
}

/// The state of `backend`, checked to belong to `workspace` when one is named; `None` when
/// there is none.
pub(super) fn load_checked(backend: &Backend, workspace: Option<&str>) -> Result<Option<State>> {
    let loaded = backend.load()?;
    match (loaded, workspace) {
        (Some(state), Some(name)) => Ok(Some(
            state::of_workspace(Some(state), Path::new(&backend.location()), name)?.0,
        )),
        (loaded, _) => Ok(loaded),
    }
}

impl Target {
    /// The state, checked to belong to the workspace named; `None` when there is none.
    pub(super) fn load(&self) -> Result<Option<State>> {
        load_checked(&self.backend, self.workspace.as_deref())
    }

    pub(super) fn load_existing(&self) -> Result<State> {
        self.load()?
            .with_context(|| format!("no state at {}", self.backend.location()))
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
pub(super) fn check_output(out: &Path, plan: Option<&Path>, backend: &Backend) -> Result<()> {
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
    for dir in [backend.local_dir(), PathBuf::from(state::DEFAULT_DIR)] {
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
    let kept = (backend.local_path()).map(|state_path| {
        [
            state_path.to_owned(),
            state::backup_path(state_path),
            state::lock_path(state_path),
        ]
    });
    for kept in kept.into_iter().flatten() {
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

/// The backend of a valid plan's workspace.
pub fn plan_backend(plan: &Plan, g: &Global) -> Result<Backend> {
    backend_of(
        g,
        Some(&plan.name),
        plan.backend.as_ref(),
        Some(&plan.source),
    )
}

pub fn load(plan: Plan, g: &Global) -> Result<Loaded> {
    let backend = plan_backend(&plan, g)?;
    load_at(plan, backend, None)
}

/// [`load`] of the plan at `path`. A local state is read while the plan is validated when its
/// path is known first: from `--state`, or from the name at the top of a TOML plan.
pub fn load_file(path: &Path, g: &Global) -> Result<Loaded> {
    let text = Plan::read(path)?;
    let early = (g.state.clone()).or_else(|| {
        (g.backend.is_none())
            .then(|| Plan::peek_name(path, &text).map(|name| state::default_path(&name)))
            .flatten()
    });
    std::thread::scope(|scope| {
        let reading = (early.as_ref()).map(|p| (p, scope.spawn(move || state::load(p))));
        let plan = Plan::parse(path, &text)?;
        let backend = plan_backend(&plan, g)?;
        let read = match (reading, backend.local_path()) {
            (Some((p, read)), Some(local)) if p == local => {
                Some(read.join().expect("reading state does not panic"))
            }
            _ => None,
        };
        let loaded = load_at(plan, backend, read)?;
        remember_backend(g, loaded.plan.backend.as_ref(), &loaded.plan.name);
        Ok(loaded)
    })
}
