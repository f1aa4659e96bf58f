//! `bake`: the images a plan's `ami = "baked"` tests launch from, found ([`prepare`]) and made
//! ([`run`]) once the user agreed.

use std::path::Path;

use anyhow::{Context, Result};
use tokio::runtime::Runtime;

use super::{Loaded, load_at, lock};
use crate::backend::{Backend, Lock};
use crate::bake::{Action, BakeError, Wanted};
use crate::plan::Plan;
use crate::state::{self, BakeKey};
use crate::ui;

/// A bake ready to run: what each wanted image needs, with the state locked.
pub struct Prepared {
    pub wanted: Vec<Wanted>,
    loaded: Loaded,
    _lock: Lock,
}

impl Prepared {
    /// Whether some image is still to be made (the others state has).
    pub fn to_bake(&self) -> bool {
        self.wanted
            .iter()
            .any(|w| !matches!(w.action, Action::Have(_)))
    }
}

pub fn prepare(path: &Path, plan: Plan, backend: Backend) -> Result<Prepared> {
    let lock = lock(&backend, &format!("rallyctl bake {}", path.display()))?;
    let loaded = load_at(plan, backend, None)?;
    Ok(Prepared {
        wanted: crate::bake::wanted(&loaded.plan, &loaded.state),
        loaded,
        _lock: lock,
    })
}

/// What one bake made: the image's id, or why not.
pub struct Baked {
    pub key: BakeKey,
    pub outcome: Result<String, BakeError>,
}

/// Bakes each image state does not have yet, one at a time; Ctrl-C stops the bake and
/// terminates its instance.
pub fn run(rt: &Runtime, p: Prepared) -> Result<Vec<Baked>> {
    rt.block_on(crate::provider::aws::check_credentials())
        .context("bake needs AWS credentials; nothing was launched or written")?;
    let l = p.loaded;
    let fleet = crate::provider::Fleet::new(l.backend.local_dir(), &l.plan.name);
    let handle = crate::backend::StateHandle::new(l.state, l.backend);
    let progress = ui::Progress::new(ui::stdout_is_tty());
    let run_id = state::new_run_id();
    Ok(rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let watcher = super::on_ctrl_c(&cancel, "the bake stops and terminates its instance");
        let ctx = crate::bake::Ctx {
            fleet: &fleet,
            state: &handle,
            plan: &l.plan,
            artifacts: &l.artifacts,
            renderer: &l.renderer,
            run_id: &run_id,
            progress: &progress,
            cancel: &cancel,
        };
        let mut baked = Vec::new();
        for w in (p.wanted.iter()).filter(|w| !matches!(w.action, Action::Have(_))) {
            baked.push(Baked {
                key: w.key.clone(),
                outcome: crate::bake::bake(&ctx, w).await,
            });
        }
        watcher.abort();
        baked
    }))
}
