//! A workspace in an object store: the state at `<prefix><workspace>.state.json`, its lock at
//! `<state key>.lock`, the previous serial at `<state key>.backup`, collected files at
//! `<prefix>results/<workspace>/<run>/...`.
//!
//! Two rules make it safe for many machines:
//! - the lock is created only where none is (`If-None-Match: *`) and is never taken over:
//!   a held lock is refused naming its holder until `force-unlock ID` removes it;
//! - state is written only over the version this process read or wrote last (`If-Match`), so
//!   a writer whose lock was force-unlocked and taken by another cannot overwrite the newer
//!   state; it stops, saying so, before it does anything more.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ResultsBase;
use super::cache::Cache;
use super::objects::{Cond, ObjectError, Objects};
use crate::address::slug;
use crate::state::{
    self, LockHolder, LockState, ResultFile, State, StateError, Written, sha256_hex,
};

pub struct Remote {
    objects: Arc<dyn Objects>,
    /// Empty, or ending in `/`.
    prefix: String,
    workspace: String,
    state_key: String,
    /// How a command line names this workspace, for hints.
    named: String,
    /// Where downloaded results are kept ([`Cache`]).
    cache: PathBuf,
    /// The version (ETag) of the state object this process read or wrote last: the next write
    /// goes only over it. `None` before a read, or when there was no state.
    seen: Mutex<Option<String>>,
}

impl Remote {
    pub fn new(objects: Arc<dyn Objects>, prefix: &str, workspace: &str, named: String) -> Remote {
        let prefix = match prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Remote {
            state_key: format!("{prefix}{}.state.json", slug(workspace)),
            objects,
            prefix,
            workspace: workspace.to_owned(),
            named,
            cache: super::cache::user_dir(),
            seen: Mutex::new(None),
        }
    }

    /// This remote with its downloads cached in `dir`.
    #[cfg(test)]
    pub fn with_cache(self, dir: &Path) -> Remote {
        Remote {
            cache: dir.to_owned(),
            ..self
        }
    }

    /// How a command line names this workspace (`PLAN`, or `--backend URL --workspace NAME`),
    /// for hints.
    pub fn named(&self) -> &str {
        &self.named
    }

    pub fn state_url(&self) -> String {
        self.objects.url(&self.state_key)
    }

    fn lock_key(&self) -> String {
        format!("{}.lock", self.state_key)
    }

    fn remote_err(&self, key: &str, e: ObjectError) -> StateError {
        StateError::Remote {
            location: self.objects.url(key),
            message: e.to_string(),
        }
    }

    pub fn load(&self) -> Result<Option<State>, StateError> {
        let url = self.state_url();
        let Some(object) =
            (self.objects.get(&self.state_key)).map_err(|e| self.remote_err(&self.state_key, e))?
        else {
            *self.seen.lock().expect("seen") = None;
            return Ok(None);
        };
        let backup = self.objects.url(&format!("{}.backup", self.state_key));
        let state = state::parse(&object.bytes, Path::new(&url), || {
            format!(
                " The previous serial may be in {backup}: inspect both, and copy the backup over the state object to go back to it."
            )
        })?;
        *self.seen.lock().expect("seen") = Some(object.etag);
        Ok(Some(state))
    }

    /// [`save_with`](Self::save_with) for a state written whole: what the tests here write.
    #[cfg(test)]
    fn save(&self, state: &mut State) -> Result<(), StateError> {
        self.save_with(state, &mut Written::default())
    }

    /// Writes `state` over the version last seen, or where there is none, first keeping that
    /// version as the backup, serializing only the records that changed since `written`. The
    /// backup is copied inside the store, so a write uploads the state once; the copy is
    /// conditional too, so a state written by another since is found before anything is
    /// uploaded.
    pub fn save_with(&self, state: &mut State, written: &mut Written) -> Result<(), StateError> {
        let mut seen = self.seen.lock().expect("seen");
        let overwritten = || StateError::Overwritten {
            location: self.state_url(),
            serial: self.serial_now(),
        };
        if let Some(etag) = &*seen {
            let backup = format!("{}.backup", self.state_key);
            match self.objects.copy(&self.state_key, &backup, etag) {
                Ok(()) => {}
                Err(ObjectError::PreconditionFailed | ObjectError::Conflict) => {
                    return Err(overwritten());
                }
                // A missing backup costs only the way back to the serial before, which is
                // said rather than failing the command.
                Err(e) => eprintln!(
                    "warning: the state's backup {} was not kept: {e}",
                    self.objects.url(&backup)
                ),
            }
        }
        state.serial += 1;
        let json = state::to_json(state, written);
        let cond = match &*seen {
            Some(etag) => Cond::Matches(etag.clone()),
            None => Cond::Absent,
        };
        let sha = sha256_hex(&json);
        match self.objects.put(&self.state_key, json, &sha, cond) {
            Ok(etag) => *seen = Some(etag),
            Err(ObjectError::PreconditionFailed | ObjectError::Conflict) => {
                return Err(overwritten());
            }
            Err(e) => return Err(self.remote_err(&self.state_key, e)),
        }
        Ok(())
    }

    /// The serial of the state object now, for the message of a refused write.
    fn serial_now(&self) -> Option<u64> {
        let object = self.objects.get(&self.state_key).ok()??;
        serde_json::from_slice::<serde_json::Value>(&object.bytes)
            .ok()?
            .get("serial")?
            .as_u64()
    }

    pub fn lock(&self, command: &str) -> Result<RemoteLock, StateError> {
        let key = self.lock_key();
        let holder = LockHolder::new(command);
        let body = serde_json::to_vec_pretty(&holder).expect("lock serializes");
        let sha = sha256_hex(&body);
        // 409: another rallyctl's create of the lock is under way; it wins or fails soon.
        for pause in [200, 800, 0] {
            match (self.objects).put(&key, body.clone(), &sha, Cond::Absent) {
                Ok(etag) => {
                    return Ok(RemoteLock {
                        objects: self.objects.clone(),
                        key,
                        id: holder.id,
                        etag,
                        named: self.named.clone(),
                    });
                }
                Err(ObjectError::PreconditionFailed) => {
                    return Err(StateError::Locked(self.describe_lock()));
                }
                Err(ObjectError::Conflict) if pause > 0 => {
                    std::thread::sleep(Duration::from_millis(pause));
                }
                Err(ObjectError::Conflict) => break,
                Err(e) => return Err(self.remote_err(&key, e)),
            }
        }
        Err(StateError::Locked(format!(
            "state {} is being locked by another rallyctl right now; try again",
            self.state_url()
        )))
    }

    fn describe_lock(&self) -> String {
        let url = self.state_url();
        match self.lock_state() {
            Ok(LockState::Held(h)) => format!(
                "state {url} is locked by {}; if that run is gone, `rallyctl force-unlock {} {}` clears the lock",
                h.describe(),
                h.id,
                self.named
            ),
            Ok(LockState::Unreadable) => format!(
                "state {url} is locked ({} names no holder); if no rallyctl is running on it, `rallyctl force-unlock --force unreadable {}` clears the lock",
                self.objects.url(&self.lock_key()),
                self.named
            ),
            // Given back between the refusal and the read.
            Ok(LockState::Unlocked) => format!("state {url} was locked; try again"),
            Err(e) => format!("state {url} is locked, and its lock cannot be read: {e}"),
        }
    }

    pub fn lock_state(&self) -> Result<LockState, StateError> {
        let key = self.lock_key();
        Ok(
            match self
                .objects
                .get(&key)
                .map_err(|e| self.remote_err(&key, e))?
            {
                None => LockState::Unlocked,
                Some(o) => serde_json::from_slice(&o.bytes)
                    .map(LockState::Held)
                    .unwrap_or(LockState::Unreadable),
            },
        )
    }

    pub fn remove_lock(&self) -> Result<(), StateError> {
        let key = self.lock_key();
        self.objects
            .delete(&key, None)
            .map_err(|e| self.remote_err(&key, e))
    }

    /// The address of `path` (relative, as in state) below the prefix.
    pub fn url_of(&self, path: &Path) -> String {
        self.objects.url(&self.result_key(path).unwrap_or_default())
    }

    /// The key of a collected file: its path in state (`results/...`) below the prefix.
    fn result_key(&self, path: &Path) -> Option<String> {
        let parts: Option<Vec<&str>> = path
            .components()
            .map(|c| match c {
                Component::Normal(p) => p.to_str(),
                _ => None,
            })
            .collect();
        Some(format!("{}{}", self.prefix, parts?.join("/")))
    }

    /// Uploads `files` (their paths below `base`).
    pub fn publish(&self, base: &Path, files: &[ResultFile]) -> Result<(), StateError> {
        let mut cache = Cache::open(&self.cache);
        for file in files {
            let local = base.join(&file.path);
            let failed = |message: String| StateError::Remote {
                location: file.path.display().to_string(),
                message,
            };
            let key = self
                .result_key(&file.path)
                .ok_or_else(|| failed("not a path below results/".into()))?;
            let url = self.objects.url(&key);
            let bytes = std::fs::read(&local).map_err(|e| failed(e.to_string()))?;
            if sha256_hex(&bytes) != file.sha256 {
                return Err(failed(format!(
                    "changed since it was collected (sha256 {} recorded); not uploaded",
                    file.sha256
                )));
            }
            let etag = (self.objects.put(&key, bytes, &file.sha256, Cond::Any))
                .map_err(|e| failed(format!("cannot upload it to {url}: {e}")))?;
            match self.objects.stored_sha256(&key) {
                Ok(Some(stored)) if stored == file.sha256 => {}
                Ok(found) => {
                    return Err(failed(format!(
                        "uploaded to {url}, which holds sha256 {} instead of {}",
                        found.as_deref().unwrap_or("nothing"),
                        file.sha256
                    )));
                }
                Err(e) => return Err(failed(format!("cannot check its upload {url}: {e}"))),
            }
            cache.keep_file(&url, &etag, &file.sha256, &local);
        }
        cache.save();
        Ok(())
    }

    /// Downloads what the cache lacks of the workspace's results and lays them out in a tree
    /// of their own, checking each against the sha256 it was uploaded with and the one state
    /// records for it.
    pub fn results_base(&self, state: Option<&State>) -> Result<ResultsBase, StateError> {
        let recorded: HashMap<PathBuf, &str> = state
            .iter()
            .flat_map(|s| s.tests.values())
            .flat_map(|r| r.earlier.iter().map(|e| &e.results).chain([&r.results]))
            .flatten()
            .map(|f| (f.path.clone(), f.sha256.as_str()))
            .collect();
        let workspace = crate::results::layout::workspace(Path::new(""), &self.workspace);
        let below = format!("{}/", self.result_key(&workspace).unwrap_or_default());
        let listed = (self.objects.list(&below)).map_err(|e| self.remote_err(&below, e))?;
        let mut cache = Cache::open(&self.cache);
        let tree = cache.tree().map_err(|source| StateError::Write {
            path: cache.dir().to_owned(),
            source,
        })?;
        for object in listed {
            let url = self.objects.url(&object.key);
            let refused = |reason: String| StateError::Damaged {
                location: url.clone(),
                reason,
            };
            let rel = PathBuf::from(&object.key[self.prefix.len()..]);
            if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(refused("its key is no path below the prefix".into()));
            }
            let sha = match cache.lookup(&url, &object.etag) {
                Some(sha) => sha,
                None => {
                    let Some(got) = (self.objects.get(&object.key))
                        .map_err(|e| self.remote_err(&object.key, e))?
                    else {
                        continue;
                    };
                    let Some(sha) = got.sha256 else {
                        return Err(refused(
                            "it carries no sha256, so rallyctl did not upload it: move it out of the workspace's results".into(),
                        ));
                    };
                    let actual = sha256_hex(&got.bytes);
                    if actual != sha {
                        return Err(refused(format!(
                            "it is damaged: its bytes hash to {actual}, not the sha256 {sha} it was uploaded with"
                        )));
                    }
                    cache.keep(&url, &got.etag, &sha, &got.bytes);
                    sha
                }
            };
            if let Some(want) = recorded.get(&rel)
                && *want != sha
            {
                return Err(refused(format!(
                    "it holds sha256 {sha}, but state records {want} for {}",
                    rel.display()
                )));
            }
            cache
                .link(&sha, &tree.path().join(&rel))
                .map_err(|source| StateError::Write {
                    path: tree.path().join(&rel),
                    source,
                })?;
        }
        cache.save();
        Ok(ResultsBase::tree(tree))
    }
}

/// The lock object of a workspace in S3, deleted when dropped if it is still this one's.
pub struct RemoteLock {
    objects: Arc<dyn Objects>,
    key: String,
    id: String,
    /// The version this command created: the delete goes only over it.
    etag: String,
    named: String,
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        if let Err(warning) = self.give_back() {
            eprintln!("warning: {warning}");
        }
    }
}

impl RemoteLock {
    /// Deletes the lock only while it is the version this command created, so that a lock
    /// force-unlocked and taken by another since is left to its new holder. A store without
    /// conditional deletes gets a check instead: the lock is read and deleted if it names this
    /// command, with a window between the two (ARCHITECTURE.md, "The S3 backend").
    fn give_back(&self) -> Result<(), String> {
        let url = self.objects.url(&self.key);
        let failed = |e: ObjectError| {
            format!(
                "cannot give back the lock {url} ({e}); `rallyctl force-unlock {} {}` clears it",
                self.id, self.named
            )
        };
        let conditional = match self.objects.delete(&self.key, Some(&self.etag)) {
            Ok(()) => return Ok(()),
            Err(ObjectError::PreconditionFailed) => true,
            Err(ObjectError::NotImplemented(_)) => false,
            Err(e) => return Err(failed(e)),
        };
        let holder = match self.objects.get(&self.key).map_err(failed)? {
            // Force-unlocked, and taken by nobody since.
            None => return Ok(()),
            Some(o) => serde_json::from_slice::<LockHolder>(&o.bytes).ok(),
        };
        match holder {
            Some(h) if h.id == self.id && !conditional => {
                self.objects.delete(&self.key, None).map_err(failed)
            }
            Some(h) if h.id != self.id => Err(format!(
                "the lock {url} is no longer this command's (it was force-unlocked; now held by {}); left as it is",
                h.describe()
            )),
            Some(_) => Err(format!(
                "the lock {url} was rewritten since this command took it; left as it is"
            )),
            None => Err(format!("the lock {url} names no holder now; left as it is")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::objects::Memory;

    /// Two processes' views of one workspace in one store.
    fn two(store: &Arc<Memory>) -> (Remote, Remote) {
        let one = || Remote::new(store.clone(), "team/nightly/", "w", "plan.toml".into());
        (one(), one())
    }

    #[test]
    fn a_second_lock_is_refused_naming_its_holder_until_the_first_is_given_back() {
        let store = Arc::new(Memory::default());
        let (a, b) = two(&store);
        let held = a.lock("rallyctl apply plan.toml").unwrap();
        let Err(StateError::Locked(refusal)) = b.lock("rallyctl apply plan.toml") else {
            panic!("a held lock was taken");
        };
        assert!(
            refusal.starts_with(
                "state s3://test-bucket/team/nightly/w.state.json is locked by `rallyctl apply plan.toml` ("
            ),
            "{refusal}"
        );
        assert!(
            refusal.ends_with(&format!(
                "lock ID {}); if that run is gone, `rallyctl force-unlock {} plan.toml` clears the lock",
                held.id, held.id
            )),
            "{refusal}"
        );
        drop(held);
        assert_eq!(store.keys(), Vec::<String>::new());
        let _again = b.lock("rallyctl apply plan.toml").unwrap();
    }

    #[test]
    fn a_lock_under_way_elsewhere_is_waited_for_briefly_then_refused() {
        use std::sync::atomic::Ordering::Relaxed;
        let store = Arc::new(Memory::default());
        let (a, b) = two(&store);
        store.conflicts.store(1, Relaxed);
        drop(a.lock("one 409, then free").unwrap());
        store.conflicts.store(3, Relaxed);
        let Err(StateError::Locked(refusal)) = b.lock("409 every time") else {
            panic!("locked though every write conflicted");
        };
        assert!(
            refusal.ends_with("is being locked by another rallyctl right now; try again"),
            "{refusal}"
        );
    }

    #[test]
    fn a_state_write_that_meets_another_under_way_stops() {
        let store = Arc::new(Memory::default());
        let (a, _) = two(&store);
        let mut state = State::new("w");
        a.save(&mut state).unwrap();
        store
            .conflicts
            .store(1, std::sync::atomic::Ordering::Relaxed);
        let err = a.save(&mut state).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Overwritten {
                    serial: Some(1),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_lock_force_unlocked_and_taken_by_another_is_left_to_its_new_holder() {
        let store = Arc::new(Memory::default());
        let (a, b) = two(&store);
        let first = a.lock("first").unwrap();
        a.remove_lock().unwrap();
        let second = b.lock("second").unwrap();
        drop(first);
        let LockState::Held(h) = b.lock_state().unwrap() else {
            panic!("the second holder lost its lock");
        };
        assert_eq!(h.id, second.id);
    }

    /// Another rallyctl force-unlocks and takes the lock between this one's last look at it and
    /// its release: the release must leave the new holder's lock.
    #[test]
    fn a_lock_taken_by_another_just_before_the_release_is_left_to_it() {
        let store = Arc::new(Memory::default());
        let (a, b) = two(&store);
        let first = a.lock("first").unwrap();
        let theirs = serde_json::to_vec(&LockHolder::new("second")).unwrap();
        *store.before_delete.lock().unwrap() =
            Some(("team/nightly/w.state.json.lock".into(), theirs.clone()));
        drop(first);
        let kept = store.get("team/nightly/w.state.json.lock").unwrap();
        assert_eq!(kept.map(|o| o.bytes), Some(theirs));
        // Where the store refuses conditional deletes, the release checks the holder first.
        store
            .delete("team/nightly/w.state.json.lock", None)
            .unwrap();
        store
            .no_conditional_deletes
            .store(true, std::sync::atomic::Ordering::Relaxed);
        drop(b.lock("mine").unwrap());
        assert_eq!(store.keys(), Vec::<String>::new());
        let held = b.lock("mine").unwrap();
        a.remove_lock().unwrap();
        let second = a.lock("second").unwrap();
        drop(held);
        let LockState::Held(h) = a.lock_state().unwrap() else {
            panic!("the second holder lost its lock");
        };
        assert_eq!(h.id, second.id);
    }

    #[test]
    fn a_lock_object_naming_no_holder_is_refused_and_named() {
        let store = Arc::new(Memory::default());
        let (a, _) = two(&store);
        store.plant("team/nightly/w.state.json.lock", b"garbage");
        let Err(StateError::Locked(refusal)) = a.lock("apply") else {
            panic!("a garbage lock was taken over");
        };
        assert!(refusal.contains("names no holder"), "{refusal}");
        assert!(refusal.contains("force-unlock --force unreadable plan.toml"));
    }

    #[test]
    fn a_writer_whose_state_was_written_by_another_since_it_read_cannot_overwrite_it() {
        let store = Arc::new(Memory::default());
        let (a, b) = two(&store);
        assert!(a.load().unwrap().is_none());
        let mut state = State::new("w");
        a.save(&mut state).unwrap();
        // Both read serial 1; b writes serial 2 (as after a force-unlock); a's write is refused.
        let mut mine = a.load().unwrap().unwrap();
        let mut theirs = b.load().unwrap().unwrap();
        theirs.baseline_run = Some("theirs".into());
        b.save(&mut theirs).unwrap();
        mine.baseline_run = Some("mine".into());
        let err = a.save(&mut mine).unwrap_err();
        assert!(
            matches!(
                &err,
                StateError::Overwritten {
                    serial: Some(2),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("force-unlocked"), "{err}");
        let now = b.load().unwrap().unwrap();
        assert_eq!(
            (now.serial, now.baseline_run.as_deref()),
            (2, Some("theirs"))
        );
    }

    #[test]
    fn two_first_writers_cannot_both_create_the_state() {
        let store = Arc::new(Memory::default());
        let (a, b) = two(&store);
        assert!(a.load().unwrap().is_none() && b.load().unwrap().is_none());
        a.save(&mut State::new("w")).unwrap();
        let err = b.save(&mut State::new("w")).unwrap_err();
        assert!(matches!(err, StateError::Overwritten { .. }), "{err:?}");
    }

    #[test]
    fn each_write_keeps_the_serial_it_replaced_as_the_backup() {
        let store = Arc::new(Memory::default());
        let (a, _) = two(&store);
        let mut state = State::new("w");
        a.save(&mut state).unwrap();
        assert!(!store.keys().iter().any(|k| k.ends_with(".backup")));
        a.save(&mut state).unwrap();
        let backup = store
            .get("team/nightly/w.state.json.backup")
            .unwrap()
            .unwrap();
        let backup: State = serde_json::from_slice(&backup.bytes).unwrap();
        assert_eq!((backup.serial, state.serial), (1, 2));
    }

    #[test]
    fn a_backup_the_store_cannot_copy_does_not_stop_the_write() {
        let store = Arc::new(Memory::default());
        let (a, _) = two(&store);
        let mut state = State::new("w");
        a.save(&mut state).unwrap();
        store
            .no_copies
            .store(true, std::sync::atomic::Ordering::Relaxed);
        a.save(&mut state).unwrap();
        assert_eq!(a.load().unwrap().unwrap().serial, 2);
        assert!(!store.keys().iter().any(|k| k.ends_with(".backup")));
    }

    #[test]
    fn a_state_object_that_is_not_a_state_is_refused_and_left_alone() {
        let store = Arc::new(Memory::default());
        let (a, _) = two(&store);
        store.plant("team/nightly/w.state.json", b"{\"not\": \"a state\"}");
        let err = a.load().unwrap_err();
        assert!(
            err.to_string().starts_with(
                "state file s3://test-bucket/team/nightly/w.state.json is not valid (no `version` number); it was left untouched."
            ),
            "{err}"
        );
        let kept = store.get("team/nightly/w.state.json").unwrap().unwrap();
        assert_eq!(kept.bytes, b"{\"not\": \"a state\"}");
    }

    /// A collected file at `rel` below `base`, as state records it.
    fn collected(base: &Path, rel: &str, bytes: &[u8]) -> ResultFile {
        let path = base.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        ResultFile::of(rel.into(), bytes)
    }

    const REPORT: &str = "results/w/20261202T100000Z-abcdef/s/t/report.csv";

    #[test]
    fn results_published_on_one_machine_are_read_on_another_through_its_cache() {
        let store = Arc::new(Memory::default());
        let (here, there) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cache_here = here.path().join("cache");
        let cache_there = there.path().join("cache");
        let (a, b) = two(&store);
        let (a, b) = (a.with_cache(&cache_here), b.with_cache(&cache_there));
        let file = collected(here.path(), REPORT, b"Metric,Task,Value,Unit\n");
        a.publish(here.path(), std::slice::from_ref(&file)).unwrap();
        assert!(store.keys().contains(&format!("team/nightly/{REPORT}")));

        let mut state = State::new("w");
        let mut record = crate::state::TestRecord::new(
            "abc".into(),
            serde_json::json!({}).into(),
            "esrally race".into(),
            crate::state::Status::Completed,
        );
        record.results = vec![file.clone()];
        state
            .tests
            .insert(crate::address::Address::new("s", "t").unwrap(), record);
        let base = b.results_base(Some(&state)).unwrap();
        assert_eq!(
            std::fs::read(base.dir.join(REPORT)).unwrap(),
            b"Metric,Task,Value,Unit\n"
        );
        // The second read downloads nothing: the store's copy may even be gone.
        drop(base);
        let Some(blob) = std::fs::read_dir(cache_there.join("blobs")).unwrap().next() else {
            panic!("nothing cached");
        };
        assert_eq!(blob.unwrap().file_name().to_str(), Some(&*file.sha256));
        let base = b.results_base(Some(&state)).unwrap();
        assert!(base.dir.join(REPORT).is_file());

        // The other way round, state records other bytes than the store holds.
        state.tests.values_mut().next().unwrap().results[0].sha256 = "0".repeat(64);
        let Err(StateError::Damaged { reason, .. }) = b.results_base(Some(&state)) else {
            panic!("a file other than state records was used");
        };
        assert!(reason.contains("but state records 0000"), "{reason}");
    }

    #[test]
    fn damaged_or_foreign_results_objects_are_refused() {
        let store = Arc::new(Memory::default());
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = two(&store);
        let a = a.with_cache(&dir.path().join("cache"));
        let key = format!("team/nightly/{REPORT}");
        store
            .put(
                &key,
                b"tampered".to_vec(),
                &sha256_hex(b"original"),
                Cond::Any,
            )
            .unwrap();
        let Err(err) = a.results_base(None) else {
            panic!("a damaged file was used");
        };
        assert!(
            err.to_string().starts_with(&format!(
                "s3://test-bucket/{key} is refused: it is damaged: its bytes hash to {}",
                sha256_hex(b"tampered")
            )),
            "{err}"
        );
        store.plant(&key, b"put there by hand");
        let Err(err) = a.results_base(None) else {
            panic!("a foreign file was used");
        };
        assert!(err.to_string().contains("carries no sha256"), "{err}");
    }

    #[test]
    fn an_upload_that_arrives_damaged_is_an_error() {
        let store = Arc::new(Memory::default());
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = two(&store);
        let a = a.with_cache(&dir.path().join("cache"));
        let file = collected(dir.path(), REPORT, b"report");
        store
            .damage_next
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let err = a.publish(dir.path(), &[file]).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "uploaded to s3://test-bucket/team/nightly/{REPORT}, which holds sha256 {} instead of {}",
                sha256_hex(b"report!"),
                sha256_hex(b"report")
            )),
            "{err}"
        );
    }

    #[test]
    fn a_file_changed_since_it_was_collected_is_not_uploaded() {
        let store = Arc::new(Memory::default());
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = two(&store);
        let a = a.with_cache(&dir.path().join("cache"));
        let mut file = collected(dir.path(), REPORT, b"now");
        file.sha256 = sha256_hex(b"then");
        let err = a.publish(dir.path(), &[file]).unwrap_err();
        assert!(err.to_string().contains("changed since it was collected"));
        assert!(store.keys().is_empty());
    }
}
