//! Running commands on a machine: the system's OpenSSH client for a machine over SSH, `bash`
//! for this one. Files go both ways as tar streams over stdin and stdout. Nothing here knows
//! where a machine came from: a provider says how to reach it ([`Endpoint`]).
//!
//! Every command to one SSH endpoint goes through one connection (OpenSSH's `ControlMaster`):
//! the first command opens it in the background, the others ride on it, and [`close`] ends it
//! when the machine is given back. A handshake costs a key exchange and a login, which on a
//! distant machine are several network round trips per command.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

use ssh_key::{Algorithm, LineEnding, PrivateKey};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const CONNECT_TIMEOUT_SECS: u32 = 10;

/// How long a machine's connection outlives its last command: enough to carry a kept machine
/// from one step or test to the next, short enough that the connections of a killed apply do
/// not linger (a race's wait holds its connection busy, so it is never idle that long).
const CONTROL_PERSIST_SECS: u32 = 120;

/// One key pair for one apply; the private half lives in a 0600 file removed on drop.
pub struct EphemeralKey {
    file: tempfile::NamedTempFile,
    pub public_openssh: String,
}

/// How to run commands on a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Ssh(SshEndpoint),
    /// This machine, in the user's home directory (where an SSH session would start).
    Local,
    /// A simulated machine (`tests/simulation.rs`), which answers in process.
    #[cfg(feature = "simulation")]
    Sim(crate::sim::Host),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshEndpoint {
    pub host: String,
    pub port: u16,
    /// None: OpenSSH's own choice (`~/.ssh/config`, else the local user name).
    pub user: Option<String>,
    /// None: the agent and `~/.ssh/config`.
    pub identity: Option<PathBuf>,
    pub host_keys: HostKeys,
}

/// How a machine's host key is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeys {
    /// Trusted on first use into `file`, filed under `alias`: for fresh cloud machines, whose
    /// addresses are reused by later machines with other keys.
    FirstUse { file: PathBuf, alias: String },
    /// Checked against `file` (OpenSSH's default known_hosts when None): an unknown or changed
    /// key is refused, never trusted.
    Strict { file: Option<PathBuf> },
}

impl Endpoint {
    /// The machine as messages name it.
    pub fn name(&self) -> String {
        match self {
            Endpoint::Ssh(e) => e.host.clone(),
            Endpoint::Local => "this machine".into(),
            #[cfg(feature = "simulation")]
            Endpoint::Sim(host) => host.name(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot create the SSH key: {0}")]
    Key(String),
    /// The directory of the connections' control sockets cannot be made private to this user.
    #[error("cannot use {} for SSH control sockets: {detail}", dir.display())]
    ControlDir { dir: PathBuf, detail: String },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The connection failed (refused, reset, timed out): the machine may answer later.
    #[error("cannot connect to {host}: {detail}")]
    Connection { host: String, detail: String },
    /// The machine refused the key.
    #[error("{host} refused the SSH key: {detail}")]
    RefusedKey { host: String, detail: String },
    /// The host key is unknown or changed: never retried, never trusted silently.
    #[error("the host key of {host} is not trusted: {detail}")]
    HostKey { host: String, detail: String },
    #[error("`{command}` on {host} failed with {}: {stderr}", exit_of(*code))]
    Failed {
        host: String,
        command: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("`{command}` on {host} timed out after {seconds} s")]
    Timeout {
        host: String,
        command: String,
        seconds: u64,
    },
}

impl EphemeralKey {
    pub fn generate(dir: &Path) -> Result<EphemeralKey, RemoteError> {
        let key = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519)
            .map_err(|e| RemoteError::Key(e.to_string()))?;
        let private = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| RemoteError::Key(e.to_string()))?;
        let public_openssh = key
            .public_key()
            .to_openssh()
            .map_err(|e| RemoteError::Key(e.to_string()))?;
        // tempfile creates the file 0600, which OpenSSH insists on for private keys.
        let mut file = tempfile::Builder::new()
            .prefix(".rallyctl-key-")
            .tempfile_in(dir)
            .map_err(|e| RemoteError::Key(e.to_string()))?;
        file.write_all(private.as_bytes())
            .map_err(|e| RemoteError::Key(e.to_string()))?;
        Ok(EphemeralKey {
            file,
            public_openssh,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// The directory of the control sockets: only this user may enter it (a socket there lets
/// anyone who reaches it run commands as the remote user), and its path is short, since a
/// socket's path must fit in about 104 bytes. `$XDG_RUNTIME_DIR/rallyctl` when that is short,
/// else `/tmp/rallyctl-<uid>`. One per user, not per apply: a resumed apply finds the sockets
/// a killed one left.
fn control_dir() -> Result<&'static Path, RemoteError> {
    static DIR: OnceLock<Result<PathBuf, (PathBuf, String)>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(|d| PathBuf::from(d).join("rallyctl"))
            .filter(|d| d.is_absolute() && d.as_os_str().len() <= 48)
            .unwrap_or_else(|| {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let uid = unsafe { libc::geteuid() };
                PathBuf::from(format!("/tmp/rallyctl-{uid}"))
            });
        private_dir(&dir)
            .map(|()| dir.clone())
            .map_err(|e| (dir, e))
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(|(dir, detail)| RemoteError::ControlDir {
        dir: dir.clone(),
        detail: detail.clone(),
    })
}

/// Makes `dir` (mode 0700) or checks that the one there is this user's alone: in /tmp another
/// user may have made it first.
fn private_dir(dir: &Path) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.to_string()),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "it must be a directory of user {uid} that no one else may enter (owner {}, mode {:o}); remove it",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The control socket of `e`'s connection: one per destination, login and key, so that a
/// machine that took over an address (host keys filed under another alias) or another
/// apply's key never rides on a connection made for something else.
pub fn control_path(e: &SshEndpoint) -> Result<PathBuf, RemoteError> {
    let digest = Sha256::digest(format!("{e:?}").as_bytes());
    Ok(control_dir()?.join(hex::encode(&digest[..8])))
}

fn ssh_command(e: &SshEndpoint, remote: &str) -> Result<Command, RemoteError> {
    let mut cmd = Command::new("ssh");
    // A socket left by a killed apply, with no master behind it, is removed by ssh, which
    // then opens a new master in its place.
    cmd.args(["-o", "ControlMaster=auto"])
        .arg("-o")
        .arg(format!("ControlPath={}", control_path(e)?.display()))
        .args(["-o", &format!("ControlPersist={CONTROL_PERSIST_SECS}")]);
    if let Some(identity) = &e.identity {
        cmd.arg("-i")
            .arg(identity)
            .args(["-o", "IdentitiesOnly=yes"]);
    }
    if let Some(user) = &e.user {
        cmd.args(["-l", user]);
    }
    cmd.args(["-p", &e.port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .args(["-o", &format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}")])
        .args([
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
        ]);
    match &e.host_keys {
        HostKeys::FirstUse { file, alias } => {
            cmd.args(["-o", "StrictHostKeyChecking=accept-new"])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", file.display()))
                .args(["-o", &format!("HostKeyAlias={alias}")]);
        }
        HostKeys::Strict { file } => {
            cmd.args(["-o", "StrictHostKeyChecking=yes"]);
            if let Some(file) = file {
                cmd.arg("-o")
                    .arg(format!("UserKnownHostsFile={}", file.display()));
            }
        }
    }
    // `--` keeps a host that starts with a dash from reading as an option.
    cmd.arg("--").arg(&e.host).arg(remote);
    Ok(cmd)
}

/// Asks the master of `endpoint`'s connection to do `op` (`ssh -O`); none where there is no
/// socket, so no master.
fn control(endpoint: &Endpoint, op: &str) -> Option<Command> {
    let Endpoint::Ssh(e) = endpoint else {
        return None;
    };
    let path = control_path(e).ok().filter(|p| p.exists())?;
    let mut cmd = Command::new("ssh");
    cmd.arg("-o")
        .arg(format!("ControlPath={}", path.display()))
        .args(["-o", "LogLevel=QUIET", "-O", op, "--"])
        .arg(&e.host)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    Some(cmd)
}

/// Whether a connection to `endpoint` is open, so that a command rides on it without logging
/// in again (and needs no fresh Instance Connect key).
pub async fn multiplexed(endpoint: &Endpoint) -> bool {
    let Some(mut check) = control(endpoint, "check") else {
        return false;
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), check.status()).await;
    matches!(answer, Ok(Ok(status)) if status.success())
}

/// Ends the connection to `endpoint`, if one is open: for when the machine is given back.
/// At worst (the master does not answer) it ends by itself after [`CONTROL_PERSIST_SECS`].
pub async fn close(endpoint: &Endpoint) {
    let Some(mut exit) = control(endpoint, "exit") else {
        return;
    };
    // Best effort by design: a master that does not answer ends by itself when idle.
    let _ = tokio::time::timeout(Duration::from_secs(10), exit.status()).await;
}

/// ssh exits 255 when the connection itself failed; its message says how.
fn connection_error(host: &str, stderr: &str) -> RemoteError {
    let detail = tail(stderr, 5);
    let host = host.to_owned();
    if stderr.contains("Host key verification failed")
        || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || stderr.contains("host key is known")
    {
        RemoteError::HostKey { host, detail }
    } else if stderr.contains("Permission denied") {
        RemoteError::RefusedKey { host, detail }
    } else {
        RemoteError::Connection { host, detail }
    }
}

/// Runs `remote` (a shell command line) on the machine with `input` on its stdin.
pub async fn exec(
    endpoint: &Endpoint,
    remote: &str,
    input: &[u8],
    timeout: Duration,
) -> Result<Output, RemoteError> {
    let (mut cmd, program) = match endpoint {
        Endpoint::Ssh(e) => (ssh_command(e, remote)?, "ssh".to_owned()),
        Endpoint::Local => {
            let mut cmd = Command::new("bash");
            cmd.arg("-c").arg(remote);
            let mut program = "bash".to_owned();
            if let Some(home) = std::env::var_os("HOME") {
                program = format!("bash in the home directory {}", home.to_string_lossy());
                cmd.current_dir(home);
            }
            (cmd, program)
        }
        #[cfg(feature = "simulation")]
        Endpoint::Sim(host) => return host.exec(remote, input, timeout).await,
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| RemoteError::Spawn {
        program: program.clone(),
        source,
    })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_vec();
    let writer = tokio::spawn(async move {
        // A remote command that does not read its input closes the pipe early; that is fine.
        let _ = stdin.write_all(&input).await;
    });
    let waited = tokio::time::timeout(timeout, child.wait_with_output()).await;
    writer.abort();
    let host = endpoint.name();
    let out = match waited {
        Ok(out) => out.map_err(|source| RemoteError::Spawn { program, source })?,
        Err(_) => {
            return Err(RemoteError::Timeout {
                host,
                command: remote.to_owned(),
                seconds: timeout.as_secs(),
            });
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    match out.status.code() {
        _ if out.status.success() => Ok(Output {
            stdout: out.stdout,
            stderr,
        }),
        Some(255) if matches!(endpoint, Endpoint::Ssh(_)) => Err(connection_error(&host, &stderr)),
        code => Err(RemoteError::Failed {
            host,
            command: remote.to_owned(),
            code,
            stderr: tail(&stderr, 20),
        }),
    }
}

/// A command that stops every process of the run in `run_dir` (relative to the home
/// directory unless absolute): the race's session, and whatever else names the run's report or
/// Rally home on its command line (an Elasticsearch that Rally launched, which leaves the
/// session). Safe to repeat, and a no-op where nothing ran.
/// What [`scrub_command`] prints when it dropped the page cache.
pub const CACHE_DROPPED: &str = "page cache dropped";

/// Readies a machine taken from another test: stops what that test's race left (its run
/// directory `previous`, when known), then drops the page cache if the user is root or may
/// sudo without a password, saying so with [`CACHE_DROPPED`].
///
/// No machine-wide `sync`: it waited for every dirty page of the machine (seconds on a busy
/// one), and nothing the scrub promises needs that. Stopping is done by `kill`, and the page
/// cache's clean pages (what the next race reads: the Rally install, the distribution, the
/// track's data) drop without a flush. Only the previous race's own files are flushed, as
/// their dirty pages would neither drop nor stay out of the next race's way, written back
/// while it runs. `sync FILE...` (coreutils 8.24) where it is there, else the old `sync`.
pub fn scrub_command(previous: Option<&str>) -> Result<String, crate::templates::TemplateError> {
    let stop = match previous {
        Some(dir) => format!(
            "(\n{}\n) || exit $?\nfind {} -xdev -type f -exec sync -- {{}} + 2>/dev/null\n",
            stop_run_command(dir, STOP_WAIT)?,
            crate::templates::shell_quote(dir)?
        ),
        None => String::new(),
    };
    Ok(format!(
        r#"{stop}if [ "$(id -u)" = 0 ]; then
  {{ echo 3 > /proc/sys/vm/drop_caches; }} 2>/dev/null && echo '{CACHE_DROPPED}'
elif sudo -n true 2>/dev/null; then
  echo 3 | sudo -n tee /proc/sys/vm/drop_caches >/dev/null 2>&1 && echo '{CACHE_DROPPED}'
fi
exit 0"#
    ))
}

/// Stops every process of the run in `run_dir`: the race's session, anything naming the run
/// directory (Rally's report, its `.rally` home: the actor system, the Elasticsearch it
/// launched), and every descendant of those, which may name nothing. All are found before any
/// is killed, since a killed parent's children move to init. It ends when they are gone, not
/// merely killed: until init reaps them they stay zombies, and Rally counts a zombie named
/// `esrally` as a Rally process still running, so the next race on the machine would refuse
/// to start. Those still there after `wait` (whole seconds) are named, and the command fails.
/// Without a process started per process of the machine (one `grep` reads every command
/// line; a parent is read with the shell's own `read`): on a busy machine that was seconds.
pub fn stop_run_command(
    run_dir: &str,
    wait: Duration,
) -> Result<String, crate::templates::TemplateError> {
    let quoted = crate::templates::shell_quote(run_dir)?;
    Ok(format!(
        r#"cd {quoted} 2>/dev/null || exit 0
run_dir=$(pwd)
stop=" "
if [ -s race.pid ]; then
  for pid in $(pgrep -s "$(cat race.pid)" 2>/dev/null); do stop="$stop$pid "; done
fi
# The patterns come on grep's stdin: on its command line they would find grep itself.
for f in $(printf '%s\n' "$run_dir/report.csv" "$run_dir/.rally/" | grep -lsaF -f - /proc/[0-9]*/cmdline); do
  pid=${{f#/proc/}}
  pid=${{pid%/cmdline}}
  [ "$pid" = "$$" ] && continue
  case "$stop" in *" $pid "*) continue;; esac
  stop="$stop$pid "
done
while [ "$stop" != " " ]; do
  more=" "
  for p in /proc/[0-9]*; do
    pid=${{p#/proc/}}
    case "$stop$more" in *" $pid "*) continue;; esac
    read -r stat 2>/dev/null < "$p/stat" || continue
    ppid=${{stat##*) }}
    ppid=${{ppid#* }}
    ppid=${{ppid%% *}}
    case "$stop" in *" $ppid "*) more="$more$pid ";; esac
  done
  [ "$more" = " " ] && break
  stop="$stop${{more# }}"
done
[ "$stop" = " " ] && exit 0
kill -KILL $stop 2>/dev/null
left=$stop
for _ in $(seq {tenths}); do
  left=$(for pid in $left; do [ -e "/proc/$pid" ] && echo "$pid"; done)
  [ -z "$left" ] && exit 0
  sleep 0.1
done
echo "processes of the race still there {secs} s after they were killed:" \
  $(for pid in $left; do echo "$pid ($(cat "/proc/$pid/comm" 2>/dev/null))"; done) >&2
exit 3"#,
        secs = wait.as_secs(),
        tenths = wait.as_secs() * 10
    ))
}

/// How long stopping a run waits for its killed processes to be gone.
pub const STOP_WAIT: Duration = Duration::from_secs(30);

/// How a command ended that did not succeed: its exit code, or the signal that killed it.
pub fn exit_of(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exit code {code}"),
        None => "a signal (no exit code)".into(),
    }
}

/// The last `lines` lines of a text.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process of the race (it names the report), called `esrally`, whose parent is no
    /// process of the race and never reaps it: killed, it stays a zombie, which Rally counts as
    /// a Rally process running. Its pid and its parent.
    fn unreaped_race_process(dir: &Path, run: &Path) -> (u32, std::process::Child) {
        let esrally = dir.join("esrally");
        std::os::unix::fs::symlink("/usr/bin/python3", &esrally).unwrap();
        let report = run.join("report.csv");
        let mut parent = std::process::Command::new("bash")
            .arg("-c")
            .arg(r#""$0" -c 'import time; time.sleep(600)' "$1" & exec sleep 600"#)
            .arg(&esrally)
            .arg(&report)
            .spawn()
            .unwrap();
        for _ in 0..100 {
            let child = std::fs::read_dir("/proc").unwrap().find_map(|e| {
                let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                // By its name too: until it execs, its parent's command line names the report.
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                (comm.trim() == "esrally"
                    && String::from_utf8_lossy(&cmd).contains(report.to_str().unwrap()))
                .then_some(pid)
            });
            if let Some(pid) = child {
                return (pid, parent);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = parent.kill();
        let _ = parent.wait();
        panic!("the race process did not start");
    }

    fn stop(run: &Path, wait: Duration) -> std::process::Output {
        let command = stop_run_command(run.to_str().unwrap(), wait).unwrap();
        std::process::Command::new("bash")
            .arg("-c")
            .arg(command)
            .output()
            .unwrap()
    }

    #[test]
    fn stopping_a_run_ends_when_its_processes_are_gone_and_names_those_that_stay() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let (pid, mut parent) = unreaped_race_process(dir.path(), &run);
        let out = stop(&run, Duration::from_secs(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert_eq!(
            stderr.trim(),
            format!(
                "processes of the race still there 1 s after they were killed: {pid} (esrally)"
            )
        );
        parent.kill().unwrap();
        parent.wait().unwrap();
        // Reaped a moment after it was killed: stopping waits for that rather than ending
        // while it is there.
        std::fs::remove_file(dir.path().join("esrally")).unwrap();
        let (pid, mut parent) = unreaped_race_process(dir.path(), &run);
        let reaper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            parent.kill().unwrap();
            parent.wait().unwrap();
        });
        let out = stop(&run, Duration::from_secs(20));
        reaper.join().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "stopping ended while {pid} was still there"
        );
    }

    #[test]
    fn ephemeral_keys_are_private_ed25519_files_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = EphemeralKey::generate(dir.path()).unwrap();
        assert!(key.public_openssh.starts_with("ssh-ed25519 "));
        assert!(
            key.public_openssh.len() >= 80,
            "Instance Connect rejects shorter keys"
        );
        let mode = std::fs::metadata(key.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let path = key.path().to_owned();
        drop(key);
        assert!(!path.exists());
    }

    #[test]
    fn ssh_failures_are_told_apart_by_what_ssh_says() {
        assert!(matches!(
            connection_error("h", "Host key verification failed."),
            RemoteError::HostKey { .. }
        ));
        assert!(matches!(
            connection_error("h", "root@h: Permission denied (publickey)."),
            RemoteError::RefusedKey { .. }
        ));
        assert!(matches!(
            connection_error("h", "ssh: connect to host h port 22: Connection refused"),
            RemoteError::Connection { .. }
        ));
    }

    #[tokio::test]
    async fn local_commands_run_in_the_home_directory_with_their_input() {
        let out = exec(
            &Endpoint::Local,
            "cat; pwd -P",
            b"in\n",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let home = std::env::var("HOME").unwrap();
        assert_eq!(
            text,
            format!(
                "in\n{}\n",
                Path::new(&home).canonicalize().unwrap().display()
            )
        );
        let failed = exec(
            &Endpoint::Local,
            "echo oops >&2; exit 255",
            b"",
            Duration::from_secs(10),
        )
        .await;
        assert!(
            matches!(&failed, Err(RemoteError::Failed { code: Some(255), stderr, .. }) if stderr == "oops"),
            "exit 255 of a local command is the command's, not a connection's: {failed:?}"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
