//! The lock on a workspace's state: a file beside the state's, `<file>.lock`, held while a
//! command may write state. It names its holder, so that a refusal can say who holds it and
//! how to clear it; the lock of a run on this host whose process is gone is taken over.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StateError;

pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Who holds a workspace's lock, written into the lock file so a refusal can name them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockHolder {
    /// What `force-unlock` must be given, so that only the lock one means is removed. Empty in
    /// lock files of rallyctl versions before it.
    #[serde(default)]
    pub id: String,
    pub pid: u32,
    pub host: String,
    pub since: Timestamp,
    pub command: String,
    /// Who ran it, and where: a lock in S3 may be held from any machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl LockHolder {
    /// This process, running `command`, with a new lock ID.
    pub fn new(command: &str) -> LockHolder {
        LockHolder {
            id: Uuid::new_v4().to_string(),
            pid: std::process::id(),
            host: hostname(),
            since: Timestamp::now(),
            command: command.to_owned(),
            user: std::env::var("USER").ok().filter(|u| !u.is_empty()),
            dir: std::env::current_dir().ok(),
        }
    }

    /// `` `rallyctl apply p.toml` (ann on host-1, pid 42, in /work, since ..., lock ID ...) ``
    pub fn describe(&self) -> String {
        let who = match &self.user {
            Some(user) => format!("{user} on {}", self.host),
            None => self.host.clone(),
        };
        let dir = self
            .dir
            .as_ref()
            .map_or(String::new(), |d| format!(", in {}", d.display()));
        format!(
            "`{}` ({who}, pid {}{dir}, since {}, lock ID {})",
            self.command,
            self.pid,
            self.since.strftime("%Y-%m-%d %H:%M:%S UTC"),
            self.id
        )
    }
}

/// Held while a command may write state; removes the lock file when dropped.
#[derive(Debug)]
pub struct Lock {
    path: PathBuf,
    /// The state directory, when taking the lock made it: a command that wrote no state then
    /// leaves no empty directory behind.
    made_dir: Option<PathBuf>,
    /// The holder of a stale lock this one replaced: a run on this host that died (killed,
    /// crashed, machine rebooted) without removing its lock.
    pub replaced: Option<LockHolder>,
}

/// A holder on this host whose process is gone cannot be writing state any more.
pub(crate) fn holder_gone(h: &LockHolder) -> bool {
    h.host == hostname() && !Path::new(&format!("/proc/{}", h.pid)).exists()
}

/// A holder on this host whose process still runs.
pub fn holder_alive_here(h: &LockHolder) -> bool {
    h.host == hostname() && Path::new(&format!("/proc/{}", h.pid)).exists()
}

fn read_holder(lock: &Path) -> Option<LockHolder> {
    fs::read(lock)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

impl Lock {
    pub fn acquire(state_path: &Path, command: &str) -> Result<Lock, StateError> {
        let path = lock_path(state_path);
        let mut made_dir = None;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                made_dir = Some(dir.to_owned());
            }
            fs::create_dir_all(dir).map_err(|source| StateError::Write {
                path: path.clone(),
                source,
            })?;
        }
        let holder = LockHolder::new(command);
        let mut replaced = None;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    let body = serde_json::to_vec_pretty(&holder).expect("lock serializes");
                    file.write_all(&body)
                        .and_then(|()| file.sync_all())
                        .map_err(|source| StateError::Write {
                            path: path.clone(),
                            source,
                        })?;
                    return Ok(Lock {
                        path,
                        made_dir,
                        replaced,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // Take over a dead holder's lock once; a live or foreign holder is named.
                    match read_holder(&path) {
                        Some(dead) if replaced.is_none() && holder_gone(&dead) => {
                            fs::remove_file(&path).map_err(|source| StateError::Write {
                                path: path.clone(),
                                source,
                            })?;
                            replaced = Some(dead);
                        }
                        _ => return Err(StateError::Locked(describe_lock(&path, state_path))),
                    }
                }
                Err(source) => return Err(StateError::Write { path, source }),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        if let Some(dir) = &self.made_dir {
            // Fails, as it should, once anything else was written there.
            let _ = fs::remove_dir(dir);
        }
    }
}

pub fn hostname() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

fn describe_lock(lock: &Path, state_path: &Path) -> String {
    match read_holder(lock) {
        Some(h) => {
            let gone = holder_gone(&h);
            let unlock = format!(
                "rallyctl force-unlock {} --state {}",
                h.id,
                state_path.display()
            );
            format!(
                "state {} is locked by `{}` (pid {} on {}, since {}, lock ID {}){}; if that run is gone, `{unlock}` clears the lock",
                state_path.display(),
                h.command,
                h.pid,
                h.host,
                h.since.strftime("%Y-%m-%d %H:%M:%S UTC"),
                h.id,
                if gone {
                    ", and that process is no longer running"
                } else {
                    ""
                },
            )
        }
        None => format!(
            "state {} is locked ({} exists but names no holder); if no rallyctl is running, `rallyctl force-unlock --force unreadable --state {}` clears the lock",
            state_path.display(),
            lock.display(),
            state_path.display()
        ),
    }
}

/// What holds a workspace's lock.
#[derive(Debug)]
pub enum LockState {
    Unlocked,
    Held(LockHolder),
    /// A lock file that names no holder (cut short, or written by hand).
    Unreadable,
}

pub fn lock_state(state_path: &Path) -> io::Result<LockState> {
    match fs::read(lock_path(state_path)) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes)
            .map(LockState::Held)
            .unwrap_or(LockState::Unreadable)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(LockState::Unlocked),
        Err(e) => Err(e),
    }
}

/// Removes a workspace's lock, whoever holds it: the caller checked that it is the one meant.
pub fn remove_lock(state_path: &Path) -> io::Result<()> {
    fs::remove_file(lock_path(state_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.state.json");
        let lock = Lock::acquire(&path, "rallyctl apply").unwrap();
        let err = Lock::acquire(&path, "rallyctl apply")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("rallyctl force-unlock"), "{err}");
        drop(lock);
        let lock = Lock::acquire(&path, "again").unwrap();
        std::mem::forget(lock);
        match lock_state(&path).unwrap() {
            LockState::Held(h) => assert!(h.command == "again" && holder_alive_here(&h)),
            other => panic!("{other:?}"),
        }
        remove_lock(&path).unwrap();
        assert!(matches!(lock_state(&path).unwrap(), LockState::Unlocked));
        Lock::acquire(&path, "after force-unlock").unwrap();
    }

    #[test]
    fn the_lock_of_a_dead_run_on_this_host_is_taken_over_and_a_foreign_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.state.json");
        let write_holder = |pid: u32, host: &str| {
            let h = LockHolder {
                id: "dead".into(),
                pid,
                host: host.into(),
                since: Timestamp::now(),
                command: "rallyctl apply (killed)".into(),
                user: None,
                dir: None,
            };
            fs::write(lock_path(&path), serde_json::to_vec(&h).unwrap()).unwrap();
        };
        // No Linux pid reaches u32::MAX - 1, so this holder is certainly gone.
        write_holder(u32::MAX - 1, &hostname());
        let lock = Lock::acquire(&path, "rallyctl apply").unwrap();
        assert_eq!(lock.replaced.as_ref().unwrap().pid, u32::MAX - 1);
        drop(lock);
        // The same dead pid on another machine may be alive there: refused.
        write_holder(u32::MAX - 1, "another-host");
        let err = Lock::acquire(&path, "rallyctl apply")
            .unwrap_err()
            .to_string();
        assert!(err.contains("on another-host"), "{err}");
    }
}
