//! Reaching an instance: an ephemeral ed25519 key, pushed with EC2 Instance Connect before each
//! connection that needs it, and the system's OpenSSH client for commands and file transfer
//! (tar streams over stdin and stdout).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ssh_key::{Algorithm, LineEnding, PrivateKey};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::provider::{Provider, ProviderError};

/// An Instance Connect key is honoured for 60 s; push again a little before that runs out.
const KEY_FRESH_FOR: Duration = Duration::from_secs(45);
const CONNECT_TIMEOUT_SECS: u32 = 10;

/// One key pair for one apply; the private half lives in a 0600 file removed on drop.
pub struct EphemeralKey {
    file: tempfile::NamedTempFile,
    pub public_openssh: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot create the SSH key: {0}")]
    Key(String),
    #[error(transparent)]
    Push(#[from] ProviderError),
    #[error("cannot run ssh: {0}")]
    Spawn(std::io::Error),
    #[error("`{command}` on {host} failed with exit code {code:?}: {stderr}")]
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

impl RemoteError {
    /// ssh exits 255 when the connection itself failed (refused, reset, auth): worth retrying.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            RemoteError::Failed {
                code: Some(255),
                ..
            } | RemoteError::Timeout { .. }
        )
    }
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

/// Where and as whom to connect to one instance.
#[derive(Debug, Clone)]
pub struct Target {
    pub region: String,
    pub instance_id: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub known_hosts: PathBuf,
}

/// A connection helper for one instance that keeps its pushed key fresh.
pub struct Session<'a, P: Provider> {
    provider: &'a P,
    key: &'a EphemeralKey,
    pub target: Target,
    pushed_at: Option<Instant>,
}

pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl<'a, P: Provider> Session<'a, P> {
    pub fn new(provider: &'a P, key: &'a EphemeralKey, target: Target) -> Self {
        Session {
            provider,
            key,
            target,
            pushed_at: None,
        }
    }

    async fn ensure_key(&mut self) -> Result<(), RemoteError> {
        if self.pushed_at.is_none_or(|t| t.elapsed() > KEY_FRESH_FOR) {
            let t = &self.target;
            self.provider
                .push_key(&t.region, &t.instance_id, &t.user, &self.key.public_openssh)
                .await?;
            self.pushed_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Forgets the push, so the next connection pushes again (after an authentication failure).
    pub fn expire_key(&mut self) {
        self.pushed_at = None;
    }

    fn command(&self, remote: &str) -> Command {
        let t = &self.target;
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(self.key.path())
            .args(["-p", &t.port.to_string()])
            .args(["-l", &t.user])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
            ])
            .args(["-o", &format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}")])
            .args([
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=4",
            ])
            // Trust on first use, per instance: addresses get reused by later instances, so the
            // host key is filed under the instance id, not the address.
            .args(["-o", "StrictHostKeyChecking=accept-new"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", t.known_hosts.display()))
            .args(["-o", &format!("HostKeyAlias={}", t.instance_id)])
            .arg(&t.host)
            .arg(remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `remote` (a shell command line) with `input` on its stdin.
    pub async fn exec(
        &mut self,
        remote: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<Output, RemoteError> {
        self.ensure_key().await?;
        let mut child = self.command(remote).spawn().map_err(RemoteError::Spawn)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            // A remote command that does not read its input closes the pipe early; that is fine.
            let _ = stdin.write_all(&input).await;
        });
        let waited = tokio::time::timeout(timeout, child.wait_with_output()).await;
        writer.abort();
        let host = self.target.host.clone();
        let out = match waited {
            Ok(out) => out.map_err(RemoteError::Spawn)?,
            Err(_) => {
                return Err(RemoteError::Timeout {
                    host,
                    command: remote.to_owned(),
                    seconds: timeout.as_secs(),
                });
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if out.status.success() {
            Ok(Output {
                stdout: out.stdout,
                stderr,
            })
        } else {
            if out.status.code() == Some(255) {
                self.expire_key();
            }
            Err(RemoteError::Failed {
                host,
                command: remote.to_owned(),
                code: out.status.code(),
                stderr: tail(&stderr, 20),
            })
        }
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
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
