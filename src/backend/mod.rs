//! Where a workspace's state and results live: files under `state/` and `results/` (the
//! default), or an S3 bucket shared by a team and its CI runners (`[backend] s3 = {...}` or
//! `--backend s3://bucket/prefix`).
//!
//! Every command reaches state through a [`Backend`]: load, save, lock, and the results
//! files. The S3 backend ([`remote`]) locks the way Terraform's S3 backend does since 1.10 (a
//! lock object created only if absent), writes state only over the version it read (so a
//! writer whose lock was broken cannot overwrite a newer serial), and keeps results in the
//! bucket beside it, read back through a local cache keyed by checksum ([`cache`]).

pub mod cache;
mod handle;
pub mod objects;
pub mod remote;
pub mod s3;

pub use handle::StateHandle;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::plan::S3Config;
use crate::state::{self, LockState, ResultFile, State, StateError};

/// A workspace's state and results, local or in S3.
pub enum Backend {
    /// The state file at this path; results under `results/` in the current directory.
    Local(PathBuf),
    S3(remote::Remote),
}

/// Held while a command may write state; gives the lock back when dropped.
pub enum Lock {
    Local(state::Lock),
    S3(remote::RemoteLock),
}

impl Lock {
    /// The holder of a stale lock this one replaced (local only: a remote lock is never taken
    /// over without `force-unlock`).
    pub fn replaced(&self) -> Option<&state::LockHolder> {
        match self {
            Lock::Local(l) => l.replaced.as_ref(),
            Lock::S3(_) => None,
        }
    }
}

impl Backend {
    /// The S3 backend of `workspace` at `config`; `named` is how a command line names this
    /// workspace (`PLAN`, or `--backend URL --workspace NAME`), for the hints in messages.
    pub fn s3(config: &S3Config, workspace: &str, named: String) -> Result<Backend, StateError> {
        let objects = s3::S3::connect(config).map_err(|e| StateError::Remote {
            location: config.url(),
            message: e.to_string(),
        })?;
        Ok(Backend::S3(remote::Remote::new(
            Arc::new(objects),
            &config.prefix,
            workspace,
            named,
        )))
    }

    /// Where the state is, for messages: a path, or `s3://bucket/key`.
    pub fn location(&self) -> String {
        match self {
            Backend::Local(path) => path.display().to_string(),
            Backend::S3(r) => r.state_url(),
        }
    }

    /// Where the workspace's results are, for messages: `results/<workspace>`, or its
    /// `s3://` address.
    pub fn results_location(&self, workspace: &str) -> String {
        let rel = crate::results::layout::workspace(Path::new(""), workspace);
        match self {
            Backend::Local(_) => rel.display().to_string(),
            Backend::S3(r) => r.url_of(&rel),
        }
    }

    /// The state file, when it is a local one.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            Backend::Local(path) => Some(path),
            Backend::S3(_) => None,
        }
    }

    /// Where per-workspace files of this machine go (EC2's ephemeral key and known hosts):
    /// beside a local state file, else `state/`.
    pub fn local_dir(&self) -> PathBuf {
        match self {
            Backend::Local(path) => state::dir_of(path).to_owned(),
            Backend::S3(_) => PathBuf::from(state::DEFAULT_DIR),
        }
    }

    /// The state; `None` when there is none yet.
    pub fn load(&self) -> Result<Option<State>, StateError> {
        match self {
            Backend::Local(path) => state::load(path),
            Backend::S3(r) => r.load(),
        }
    }

    /// Writes `state` with the next serial.
    pub fn save(&self, state: &mut State) -> Result<(), StateError> {
        self.save_with(state, &mut state::Written::default())
    }

    /// [`save`](Self::save) for a writer that saves the same state again and again: only the
    /// records that changed since `written` are serialized.
    pub fn save_with(
        &self,
        state: &mut State,
        written: &mut state::Written,
    ) -> Result<(), StateError> {
        match self {
            Backend::Local(path) => state::save_with(path, state, written),
            Backend::S3(r) => r.save_with(state, written),
        }
    }

    pub fn lock(&self, command: &str) -> Result<Lock, StateError> {
        match self {
            Backend::Local(path) => state::Lock::acquire(path, command).map(Lock::Local),
            Backend::S3(r) => r.lock(command).map(Lock::S3),
        }
    }

    pub fn lock_state(&self) -> Result<LockState, StateError> {
        match self {
            Backend::Local(path) => state::lock_state(path).map_err(|source| StateError::Read {
                path: state::lock_path(path),
                source,
            }),
            Backend::S3(r) => r.lock_state(),
        }
    }

    /// Removes the lock, whoever holds it: the caller checked that it is the one meant.
    pub fn remove_lock(&self) -> Result<(), StateError> {
        match self {
            Backend::Local(path) => state::remove_lock(path).map_err(|source| StateError::Write {
                path: state::lock_path(path),
                source,
            }),
            Backend::S3(r) => r.remove_lock(),
        }
    }

    /// Keeps collected files where every machine with access finds them: uploaded beside the
    /// state, each checked against its sha256 once stored. Local files stay where they are.
    pub fn publish(&self, files: &[ResultFile]) -> Result<(), StateError> {
        match self {
            Backend::Local(_) => Ok(()),
            Backend::S3(r) => r.publish(Path::new(""), files),
        }
    }

    /// The directory the paths of results in state are relative to, with the workspace's
    /// results under its `results/`: the current directory, or for S3 a tree of cached
    /// downloads made for this command (kept until the returned guard is dropped).
    pub fn results_base(&self, state: Option<&State>) -> Result<ResultsBase, StateError> {
        match self {
            Backend::Local(path) => Ok(ResultsBase {
                dir: local_results_base(path),
                _tree: None,
            }),
            Backend::S3(r) => r.results_base(state),
        }
    }
}

/// Where the results of the local state at `path` are: beside its `state/` directory when
/// that holds a `results/` (a project's layout, so `results --state PATH` run from elsewhere
/// reads that workspace's results), else under the current directory, where apply writes them.
fn local_results_base(path: &Path) -> PathBuf {
    let dir = state::dir_of(path);
    match dir.parent() {
        Some(project)
            if dir.file_name() == Some(std::ffi::OsStr::new(state::DEFAULT_DIR))
                && !project.as_os_str().is_empty()
                && project.join("results").is_dir() =>
        {
            project.to_owned()
        }
        _ => PathBuf::new(),
    }
}

/// What [`copy`] moved.
#[derive(Debug)]
pub struct Copied {
    pub serial: u64,
    pub files: usize,
}

/// Copies a workspace's state and results from one backend to another (`state push` and
/// `state pull`). A state of another lineage at `to` is never replaced; one of a higher serial
/// only when `force`. Results go first, so the state copied never names a file `to` lacks.
pub fn copy(
    from: &Backend,
    to: &Backend,
    workspace: &str,
    force: bool,
) -> Result<Copied, StateError> {
    let of_workspace = |loaded, backend: &Backend| {
        state::of_workspace(loaded, Path::new(&backend.location()), workspace)
    };
    let (mut state, exists) = of_workspace(from.load()?, from)?;
    if !exists {
        return Err(StateError::NothingToCopy(from.location()));
    }
    let (there, there_exists) = of_workspace(to.load()?, to)?;
    if there_exists {
        if there.lineage != state.lineage {
            return Err(StateError::Damaged {
                location: to.location(),
                reason: format!(
                    "it holds a state of another lineage ({}, not {}): another history of workspace `{workspace}`, which a copy would lose",
                    there.lineage, state.lineage
                ),
            });
        }
        if there.serial > state.serial && !force {
            return Err(StateError::Damaged {
                location: to.location(),
                reason: format!(
                    "it holds serial {}, newer than the {} being copied: copy the other way first, or pass --force to replace it",
                    there.serial, state.serial
                ),
            });
        }
    }
    let base = from.results_base(Some(&state))?;
    let results = crate::results::layout::workspace(&base.dir, workspace);
    let mut files = Vec::new();
    for path in files_below(&results).map_err(|source| StateError::Read {
        path: results.clone(),
        source,
    })? {
        let bytes = std::fs::read(&path).map_err(|source| StateError::Read {
            path: path.clone(),
            source,
        })?;
        let rel = path.strip_prefix(&base.dir).expect("found below the base");
        files.push(ResultFile::of(rel.to_owned(), &bytes));
    }
    match to {
        Backend::S3(r) => r.publish(&base.dir, &files)?,
        Backend::Local(_) => receive(&base.dir, &files)?,
    }
    state.serial = state.serial.max(there.serial);
    to.save(&mut state)?;
    Ok(Copied {
        serial: state.serial,
        files: files.len(),
    })
}

/// Every file below `dir`, none when it does not exist.
fn files_below(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Copies `files` from below `base` to the same paths here; a file here with other bytes is
/// user data, never overwritten.
fn receive(base: &Path, files: &[ResultFile]) -> Result<(), StateError> {
    for file in files {
        let write = |source| StateError::Write {
            path: file.path.clone(),
            source,
        };
        match std::fs::read(&file.path) {
            Ok(bytes) if state::sha256_hex(&bytes) == file.sha256 => continue,
            Ok(_) => {
                return Err(StateError::Damaged {
                    location: file.path.display().to_string(),
                    reason: "a file of other bytes is already here".into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(write(source)),
        }
        if let Some(dir) = file.path.parent() {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        std::fs::copy(base.join(&file.path), &file.path).map_err(write)?;
    }
    Ok(())
}

/// See [`Backend::results_base`].
pub struct ResultsBase {
    pub dir: PathBuf,
    _tree: Option<tempfile::TempDir>,
}

impl ResultsBase {
    pub(crate) fn tree(tree: tempfile::TempDir) -> ResultsBase {
        ResultsBase {
            dir: tree.path().to_owned(),
            _tree: Some(tree),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::objects::{Memory, Objects};
    use super::*;

    fn s3(store: &Arc<Memory>, prefix: &str, cache: &Path) -> Backend {
        Backend::S3(
            remote::Remote::new(store.clone(), prefix, "w", "plan.toml".into()).with_cache(cache),
        )
    }

    /// A state in `at` of `lineage`'s history at `serial`, holding one collected file.
    fn seeded(at: &Backend, lineage: uuid::Uuid, serial: u64, dir: &Path) -> ResultFile {
        let rel = "results/w/20261202T100000Z-abcdef/s/t/report.csv";
        std::fs::create_dir_all(dir.join(rel).parent().unwrap()).unwrap();
        std::fs::write(dir.join(rel), b"Metric,Task,Value,Unit\n").unwrap();
        let file = ResultFile::of(rel.into(), b"Metric,Task,Value,Unit\n");
        let Backend::S3(r) = at else { unreachable!() };
        r.publish(dir, std::slice::from_ref(&file)).unwrap();
        let mut state = State::new("w");
        state.lineage = lineage;
        state.serial = serial - 1;
        assert!(at.load().unwrap().is_none());
        at.save(&mut state).unwrap();
        file
    }

    #[test]
    fn a_copy_brings_state_and_results_and_never_replaces_another_history() {
        let dir = tempfile::tempdir().unwrap();
        let (from_store, to_store) = (Arc::new(Memory::default()), Arc::new(Memory::default()));
        let from = s3(&from_store, "a", &dir.path().join("cache-a"));
        let to = s3(&to_store, "b", &dir.path().join("cache-b"));
        let lineage = uuid::Uuid::new_v4();
        let file = seeded(&from, lineage, 5, dir.path());

        let copied = copy(&from, &to, "w", false).unwrap();
        assert_eq!((copied.serial, copied.files), (6, 1));
        assert_eq!(to.load().unwrap().unwrap().lineage, lineage);
        let there = to_store.get(&format!("b/{}", file.path.display())).unwrap();
        assert_eq!(there.unwrap().sha256.as_deref(), Some(&*file.sha256));

        // The other end moved on: only --force replaces it, and never with another history.
        let mut newer = to.load().unwrap().unwrap();
        newer.serial = 41;
        to.save(&mut newer).unwrap();
        let err = copy(&from, &to, "w", false).unwrap_err().to_string();
        assert!(
            err.contains("it holds serial 42, newer than the 5 being copied"),
            "{err}"
        );
        assert_eq!(copy(&from, &to, "w", true).unwrap().serial, 43);

        let other = s3(
            &Arc::new(Memory::default()),
            "c",
            &dir.path().join("cache-c"),
        );
        seeded(&other, uuid::Uuid::new_v4(), 1, dir.path());
        let before = to.load().unwrap().unwrap();
        let err = copy(&other, &to, "w", true).unwrap_err().to_string();
        assert!(err.contains("of another lineage"), "{err}");
        assert_eq!(to.load().unwrap().unwrap(), before);
    }

    #[test]
    fn nothing_to_copy_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let from = s3(&Arc::new(Memory::default()), "a", dir.path());
        let to = s3(&Arc::new(Memory::default()), "b", dir.path());
        let err = copy(&from, &to, "w", false).unwrap_err().to_string();
        assert_eq!(
            err,
            "no state at s3://test-bucket/a/w.state.json: nothing to copy"
        );
    }
}
