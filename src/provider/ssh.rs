//! The `ssh` provider: a pool of existing hosts, each leased by one test at a time.
//!
//! The lease is held on the host itself, as the file `lease` under `remote_dir`, created with
//! `noclobber` (atomic), so two rallyctl processes on different machines never race on one
//! host. A lease names its attempt (lineage, test, attempt) and its holder (rallyctl's host and
//! pid) and expires after the test's `max_runtime`: the holder's own resumed attempt adopts it,
//! and a lease whose holder died on this host, or that expired, is taken over, the way the
//! state lock is. Release stops every process of the run and removes the lease; it never powers
//! anything off. Host keys are checked strictly: an unknown or changed key fails the test.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Acquire, AcquireError, Acquired, Machines, ProviderError, Reachable, Spec};
use crate::plan::{ProviderKind, SshSettings};
use crate::remote::{self, Endpoint, HostKeys, SshEndpoint};
use crate::state::{self, LockHolder, Machine};
use crate::templates::shell_quote;

/// A host of the pool should answer at once; this covers a reboot or a network blip mid-race.
const PATIENCE: Duration = Duration::from_secs(300);
const LEASE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a test waiting for a host leased by another rallyctl asks again.
const WAIT_FOR_HOST: Duration = Duration::from_secs(5);
/// A lease outlives its race's `max_runtime` by this much before another run may take it.
const LEASE_GRACE: Duration = Duration::from_secs(600);

/// The pool as this apply sees it: the hosts its own tests hold.
#[derive(Default)]
pub struct Ssh {
    held: Mutex<HashSet<String>>,
    freed: tokio::sync::Notify,
}

/// The lease file's content.
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    /// Names the attempt: lineage, test and attempt, hashed.
    id: String,
    workspace: String,
    test: String,
    attempt: u32,
    holder: LockHolder,
    expires: Timestamp,
}

/// `host` of the pool without its port: `name`, `name:port`, a bracketed IPv6 address with a port.
fn split_port(host: &str) -> (&str, Option<u16>) {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') || name.ends_with(']') => {
            match port.parse::<u16>() {
                Ok(port) => (name.trim_matches(['[', ']']), Some(port)),
                Err(_) => (host, None),
            }
        }
        _ => (host, None),
    }
}

/// Where to reach `host` (`name` or `name:port`, a bracketed IPv6 address with a port).
fn endpoint(s: &SshSettings, host: &str) -> Endpoint {
    let (name, port) = split_port(host);
    Endpoint::Ssh(SshEndpoint {
        host: name.to_owned(),
        port: port.unwrap_or(s.ssh_port),
        user: s.ssh_user.as_deref().map(str::to_owned),
        identity: s.ssh_key.as_deref().map(Into::into),
        host_keys: HostKeys::Strict {
            file: s.ssh_known_hosts.as_deref().map(Into::into),
        },
    })
}

fn lease_path(spec: Spec<'_, SshSettings>) -> Result<String, ProviderError> {
    shell_quote(&format!("{}/lease", spec.remote_dir)).map_err(|e| ProviderError {
        operation: "lease",
        target: "remote_dir".into(),
        message: e.to_string(),
    })
}

/// What taking a lease found.
enum Taken {
    Ours { adopted: bool },
    Busy(String),
}

impl Ssh {
    /// Tries to lease `host` for the attempt, over SSH.
    async fn try_lease(
        &self,
        req: &Acquire<'_, Spec<'_, SshSettings>>,
        host: &str,
        lease: &Lease,
    ) -> Result<Taken, ProviderError> {
        let at = endpoint(req.settings.own, host);
        let fail = |message: String| ProviderError {
            operation: "lease",
            target: host.to_owned(),
            message,
        };
        let path = lease_path(req.settings)?;
        let mine = serde_json::to_string(lease).expect("leases serialize");
        let take = format!(
            "mkdir -p \"$(dirname {path})\" && IFS= read -r mine && \
             if (set -o noclobber; printf '%s\\n' \"$mine\" > {path}) 2>/dev/null; \
             then echo taken; else echo held; cat {path}; fi"
        );
        let run = |command: String, input: Vec<u8>| {
            let at = at.clone();
            async move {
                remote::exec(&at, &command, &input, LEASE_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let mut input = mine.clone().into_bytes();
        input.push(b'\n');
        for _ in 0..2 {
            let out = run(take.clone(), input.clone()).await.map_err(fail)?;
            let text = String::from_utf8_lossy(&out.stdout);
            let (status, rest) = text.split_once('\n').unwrap_or((text.trim(), ""));
            if status == "taken" {
                return Ok(Taken::Ours { adopted: false });
            }
            let theirs: Option<Lease> = serde_json::from_str(rest.trim()).ok();
            let takeover = match &theirs {
                Some(l) if l.id == lease.id => {
                    // This very attempt leased the host before a crash: renew it as ours.
                    let renew = format!("IFS= read -r mine && printf '%s\\n' \"$mine\" > {path}");
                    run(renew, input.clone()).await.map_err(fail)?;
                    return Ok(Taken::Ours { adopted: true });
                }
                Some(l) => state::holder_gone(&l.holder) || l.expires < Timestamp::now(),
                // An unreadable lease (cut short by a crash mid-write) holds nothing.
                None => true,
            };
            if !takeover {
                let l = theirs.expect("a readable lease");
                return Ok(Taken::Busy(format!(
                    "{} of workspace `{}` (rallyctl pid {} on {}, until {})",
                    l.test,
                    l.workspace,
                    l.holder.pid,
                    l.holder.host,
                    l.expires.strftime("%H:%M:%S UTC")
                )));
            }
            run(format!("rm -f {path}"), vec![]).await.map_err(fail)?;
        }
        Err(fail(
            "another rallyctl took the lease at the same moment".into(),
        ))
    }

    fn unhold(&self, host: &str) {
        self.held.lock().expect("pool lock").remove(host);
        self.freed.notify_waiters();
    }
}

impl Machines for Ssh {
    type Own = SshSettings;

    async fn acquire(
        &self,
        req: &Acquire<'_, Spec<'_, SshSettings>>,
    ) -> Result<Acquired, AcquireError> {
        let s = req.settings.own;
        let member = req
            .member
            .map(|m| format!("\n{}", m.name))
            .unwrap_or_default();
        let id = hex::encode(Sha256::digest(format!(
            "{}\n{}\n{}{member}",
            req.lineage, req.address, req.attempt
        )));
        let lease = Lease {
            id: id[..32].to_owned(),
            workspace: req.workspace.to_owned(),
            test: req.address.to_string(),
            attempt: req.attempt,
            holder: LockHolder {
                id: id[..32].to_owned(),
                ..LockHolder::new("rallyctl apply")
            },
            expires: Timestamp::now()
                + SignedDuration::try_from(req.settings.max_runtime + LEASE_GRACE)
                    .unwrap_or(SignedDuration::MAX),
        };
        let mut told = false;
        loop {
            let freed = self.freed.notified();
            let mut busy = Vec::new();
            let candidates: Vec<String> = {
                let held = self.held.lock().expect("pool lock");
                s.hosts
                    .iter()
                    .filter(|h| !held.contains(&***h))
                    .map(|h| h.to_string())
                    .collect()
            };
            for host in candidates {
                if !self.held.lock().expect("pool lock").insert(host.clone()) {
                    continue;
                }
                match self.try_lease(req, &host, &lease).await {
                    Ok(Taken::Ours { adopted }) => {
                        return Ok(Acquired {
                            machine: Machine {
                                address: Some(host.clone()),
                                lease: Some(lease.id.clone()),
                                expires_at: Some(lease.expires),
                                ..Machine::acquired(ProviderKind::Ssh, host)
                            },
                            adopted,
                        });
                    }
                    Ok(Taken::Busy(holder)) => {
                        self.unhold(&host);
                        busy.push(format!("{host} is leased to {holder}"));
                    }
                    Err(e) => {
                        self.unhold(&host);
                        return Err(e.into());
                    }
                }
            }
            // Every host is held, by this apply or another: wait for one to be given back.
            if !told && !busy.is_empty() {
                (req.on_wait)(format!("waiting for a free host: {}", busy.join("; ")));
                told = true;
            }
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep(WAIT_FOR_HOST) => {}
                _ = req.cancel.cancelled() => {
                    return Err(ProviderError {
                        operation: "lease",
                        target: s.hosts.join(", "),
                        message: "interrupted while waiting for a free host".into(),
                    }
                    .into());
                }
            }
        }
    }

    async fn reach(
        &self,
        machine: &Machine,
        spec: Spec<'_, SshSettings>,
    ) -> Result<Reachable, ProviderError> {
        // A resumed apply holds the host again in this process, so no other test of it takes it.
        self.held
            .lock()
            .expect("pool lock")
            .insert(machine.id.clone());
        Ok(Reachable {
            peer_address: Some(split_port(&machine.id).0.to_owned()),
            endpoint: endpoint(spec.own, &machine.id),
            patience: PATIENCE,
            refused_key_is_transient: false,
        })
    }

    /// Renews this attempt's lease for another `max_runtime`; a lease that is no longer this
    /// attempt's (it lapsed and was taken over) is an error, never overwritten.
    async fn extend(
        &self,
        machine: &Machine,
        spec: Spec<'_, SshSettings>,
        _artifacts: &crate::templates::Artifacts,
        endpoint: &Endpoint,
    ) -> Result<Option<Timestamp>, ProviderError> {
        let Some(id) = &machine.lease else {
            return Ok(None);
        };
        let fail = |message: String| ProviderError {
            operation: "renew the lease",
            target: machine.id.clone(),
            message,
        };
        let path = lease_path(spec)?;
        let out = remote::exec(endpoint, &format!("cat {path}"), b"", LEASE_TIMEOUT)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut lease: Lease = serde_json::from_slice(&out.stdout)
            .map_err(|e| fail(format!("the lease file cannot be read: {e}")))?;
        if &lease.id != id {
            return Err(fail(format!(
                "the host is leased to {} of workspace `{}` now",
                lease.test, lease.workspace
            )));
        }
        lease.expires = Timestamp::now()
            + SignedDuration::try_from(spec.max_runtime + LEASE_GRACE)
                .unwrap_or(SignedDuration::MAX);
        let mut input = serde_json::to_vec(&lease).expect("leases serialize");
        input.push(b'\n');
        let write = format!("IFS= read -r mine && printf '%s\\n' \"$mine\" > {path}");
        remote::exec(endpoint, &write, &input, LEASE_TIMEOUT)
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(Some(lease.expires))
    }

    async fn release(
        &self,
        machine: &Machine,
        spec: Spec<'_, SshSettings>,
    ) -> Result<(), ProviderError> {
        let at = endpoint(spec.own, &machine.id);
        super::stop_run(&at, machine).await?;
        if let Some(id) = &machine.lease {
            let path = lease_path(spec)?;
            let id = shell_quote(&format!("\"id\":\"{id}\"")).expect("hex quotes");
            // Only this attempt's lease: the host may be another's by now.
            let command = format!("if grep -qF {id} {path} 2>/dev/null; then rm -f {path}; fi");
            remote::exec(&at, &command, b"", LEASE_TIMEOUT)
                .await
                .map_err(|e| ProviderError {
                    operation: "release the lease",
                    target: machine.id.clone(),
                    message: e.to_string(),
                })?;
        }
        remote::close(&at).await;
        self.unhold(&machine.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SshSettings {
        SshSettings {
            hosts: Default::default(),
            ssh_key: Some("/k".into()),
            ssh_known_hosts: None,
            ssh_port: 22,
            ssh_user: Some("rally".into()),
        }
    }

    /// The lease of a host that races again is renewed only while it is still this attempt's.
    #[test]
    fn a_lease_is_renewed_only_while_it_is_ours() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "version = 1\nname = \"w\"\n[defaults]\nprovider = \"ssh\"\nhosts = [\"h\"]\n\
             remote_dir = \"{}\"\ntrack = \"t\"\n[[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"t\"\n",
            dir.path().display()
        );
        let plan = crate::plan::Plan::parse(std::path::Path::new("w.toml"), &text).unwrap();
        let settings = &plan.suites[0].tests[0].settings;
        let crate::plan::MachineSettings::Ssh(own) = &settings.machine else {
            panic!("an ssh test has ssh settings");
        };
        let spec = Spec::of(settings, own);
        let artifacts = crate::templates::Renderer::new()
            .session()
            .render(&plan.suites[0].tests[0])
            .unwrap();
        let lease = |id: &str, expires: Timestamp| Lease {
            id: id.into(),
            workspace: "w".into(),
            test: "s.t".into(),
            attempt: 1,
            holder: LockHolder {
                id: id.into(),
                pid: 1,
                host: "here".into(),
                since: Timestamp::now(),
                command: "rallyctl apply".into(),
                user: None,
                dir: None,
            },
            expires,
        };
        let file = dir.path().join("lease");
        let write = |l: &Lease| std::fs::write(&file, serde_json::to_string(l).unwrap()).unwrap();
        let read = || -> Lease { serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap() };
        let machine = Machine {
            lease: Some("ours".into()),
            ..Machine::acquired(ProviderKind::Ssh, "h".into())
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let extend =
            || rt.block_on(Ssh::default().extend(&machine, spec, &artifacts, &Endpoint::Local));

        let soon = Timestamp::now() + SignedDuration::from_secs(5);
        write(&lease("ours", soon));
        extend().unwrap();
        let renewed = read();
        assert!(renewed.expires > soon + SignedDuration::from_secs(600));
        assert_eq!(renewed.id, "ours");

        write(&lease("theirs", soon));
        let e = extend().unwrap_err().to_string();
        assert!(e.contains("leased to s.t of workspace `w`"), "{e}");
        assert_eq!(read().id, "theirs", "another's lease is left alone");
    }

    #[test]
    fn hosts_name_their_port_or_take_the_default() {
        let s = settings();
        let at = |h| match endpoint(&s, h) {
            Endpoint::Ssh(e) => (e.host, e.port),
            _ => unreachable!(),
        };
        assert_eq!(at("bench-1.lab"), ("bench-1.lab".into(), 22));
        assert_eq!(at("10.0.0.7:2222"), ("10.0.0.7".into(), 2222));
        assert_eq!(at("[fe80::1]:2200"), ("fe80::1".into(), 2200));
        assert_eq!(at("fe80::1"), ("fe80::1".into(), 22));
    }
}
