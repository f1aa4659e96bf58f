//! The operations behind the commands, as cargo's `ops` are behind its `commands`: each takes
//! what the command line resolved (a plan, a backend, options, the process's one async
//! runtime) and returns a typed report; `cli` parses, calls and prints. Warnings and notes go
//! to stderr as they arise (`ui::warn`), so that they keep their order with the errors after
//! them; what a report holds is printed by the CLI.

pub mod apply;
pub mod bake;
pub mod destroy;
pub mod history;
pub mod plan;
pub mod results;

use std::path::Path;

use anyhow::Result;

use crate::backend::{Backend, Lock};
use crate::graph::Graph;
use crate::plan::Plan;
use crate::planner;
use crate::state::{self, State};
use crate::templates::Renderer;

/// A plan, its state (locked or not) and everything the diff needs.
pub struct Loaded {
    pub plan: Plan,
    pub backend: Backend,
    pub state: State,
    pub state_exists: bool,
    pub artifacts: crate::templates::ArtifactMap,
    pub renderer: Renderer,
}

/// Loads `plan` with the state of `backend`; `read` is what [`state::load`] gave for it, if it
/// was read already.
pub fn load_at(
    plan: Plan,
    backend: Backend,
    read: Option<Result<Option<State>, state::StateError>>,
) -> Result<Loaded> {
    let renderer = Renderer::new();
    // Reading state and rendering every test do not depend on each other, and for a plan of
    // thousands of tests each takes a while: they overlap.
    let (state, artifacts) = std::thread::scope(|scope| {
        let state = scope.spawn(|| {
            let loaded = read.unwrap_or_else(|| backend.load())?;
            state::of_workspace(loaded, Path::new(&backend.location()), &plan.name)
        });
        Graph::compile(&plan)?;
        let artifacts = planner::render_all(&plan, &renderer);
        let state = state.join().expect("loading state does not panic");
        anyhow::Ok((state?, artifacts?))
    })?;
    let (state, state_exists) = state;
    let here = state::default_path(&plan.name);
    if let (false, Backend::S3(remote), true) = (state_exists, &backend, here.is_file()) {
        eprintln!(
            "note: the workspace's state is {}, which holds none yet, while {} is here: `rallyctl state push {}` moves it there",
            backend.location(),
            here.display(),
            remote.named()
        );
    }
    Ok(Loaded {
        plan,
        backend,
        state,
        state_exists,
        artifacts,
        renderer,
    })
}

/// Locks the state for a command that writes it, saying so when a dead run's lock is replaced.
pub fn lock(backend: &Backend, command: &str) -> Result<Lock> {
    let lock = backend.lock(command)?;
    if let Some(dead) = lock.replaced() {
        eprintln!(
            "note: took over the lock of `{}` (pid {}, since {}), which is no longer running",
            dead.command,
            dead.pid,
            dead.since.strftime("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    Ok(lock)
}

/// The first Ctrl-C cancels (saying what that does), the second exits at once.
fn on_ctrl_c(
    cancel: &tokio_util::sync::CancellationToken,
    what: &'static str,
) -> tokio::task::JoinHandle<()> {
    let cancel = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nInterrupted: {what}. Ctrl-C again to quit at once.");
            cancel.cancel();
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            // 130, as shells report SIGINT (`cli::EXIT_INTERRUPTED`).
            std::process::exit(130);
        }
    })
}
