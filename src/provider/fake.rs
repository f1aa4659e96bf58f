//! An in-process provider for the walk's and the lifecycle's unit tests: its machines are
//! directories of this machine (reached like `local`), and a test can make it fail.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use super::{Acquire, AcquireError, Acquired, Gone, Provider, ProviderError, Reachable};
use crate::address::Address;
use crate::plan::{MachineSettings, Settings};
use crate::remote::{Endpoint, HostKeys, SshEndpoint};
use crate::state::{Machine, RecordedSettings};

/// Clones share one record, so a test keeps a handle while apply owns the provider.
#[derive(Clone, Default)]
pub struct Fake(std::sync::Arc<Record>);

#[derive(Default)]
pub struct Record {
    /// What was asked, in order: `acquire ADDRESS#ATTEMPT -> ID`, `release ID`.
    pub calls: Mutex<Vec<String>>,
    /// Tests whose acquire fails.
    pub refuse: Mutex<HashSet<Address>>,
    /// Machines that are gone (terminated behind rallyctl's back): connections to them fail,
    /// and `gone` says so.
    pub gone: Mutex<HashSet<String>>,
    /// Machines their provider took back (spot interruptions): connections fail, and `gone`
    /// says they were reclaimed.
    pub reclaimed: Mutex<HashSet<String>>,
    /// Machines whose attempt finds what it launched before dead: acquiring them answers
    /// that the attempt is spent.
    pub spent: Mutex<HashSet<String>>,
    /// Machines got as spot capacity.
    pub spot: Mutex<HashSet<String>>,
    /// Machines their provider is taking back while they still answer (a spot interruption's
    /// shutdown under way, killing what runs): connections work, `gone` says reclaimed.
    pub being_reclaimed: Mutex<HashSet<String>>,
    /// Machines that connections fail to reach, and of which the provider cannot tell whether
    /// they are still there (its API fails).
    pub unknowable: Mutex<HashSet<String>>,
    /// Machines that never finish booting: reaching them waits for ever.
    pub boot_forever: Mutex<HashSet<String>>,
    /// Machines whose bound cannot be renewed for another race.
    pub refuse_extend: Mutex<HashSet<String>>,
    /// The machine of every connection the lifecycle made (each remote command is one), in
    /// order: what the round trips a test costs are counted by.
    pub connects: Mutex<Vec<String>>,
    /// Machines acquired and not yet released.
    pub held: Mutex<HashSet<String>>,
    /// What each machine was got with (its provider's settings and remote directory): it is
    /// given back with the same, whatever the plan says by then, or a real provider would
    /// release it in the wrong place. Tests that take or share it may differ in the rest.
    got_with: Mutex<HashMap<String, MachinePart>>,
}

impl std::ops::Deref for Fake {
    type Target = Record;

    fn deref(&self) -> &Record {
        &self.0
    }
}

impl Record {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn call(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

type MachinePart = (MachineSettings, crate::plan::Text);

/// Its machines end themselves `max_runtime` after they were got or renewed, as EC2's do.
fn watchdog(settings: &Settings) -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::try_from(settings.max_runtime).unwrap()
}

/// The settings that say where a machine is, as state records them.
fn machine_part(settings: &Settings) -> MachinePart {
    let recorded = RecordedSettings::from(settings)
        .typed()
        .expect("recorded settings read back");
    (recorded.machine, recorded.remote_dir)
}

impl Provider for Fake {
    async fn acquire(&self, req: &Acquire<'_>) -> Result<Acquired, AcquireError> {
        if self.refuse.lock().unwrap().contains(req.address) {
            self.call(format!("acquire {}#{} refused", req.address, req.attempt));
            return Err(ProviderError {
                operation: "acquire",
                target: "fake".into(),
                message: "no capacity".into(),
            }
            .into());
        }
        let id = format!("m-{}-{}", req.address.test(), req.attempt);
        if self.spent.lock().unwrap().contains(&id) {
            self.call(format!("acquire {}#{} spent", req.address, req.attempt));
            return Err(AcquireError::Spent(format!("{id} is dead")));
        }
        let after = match req.reclaimed {
            0 => String::new(),
            n => format!(" after {n} reclaimed"),
        };
        self.call(format!(
            "acquire {}#{}{after} -> {id}",
            req.address, req.attempt
        ));
        self.held.lock().unwrap().insert(id.clone());
        self.got_with
            .lock()
            .unwrap()
            .insert(id.clone(), machine_part(req.settings));
        Ok(Acquired {
            // Of the test's own kind, as the fleet's provider would record it.
            machine: Machine {
                spot: self.spot.lock().unwrap().contains(&id),
                expires_at: Some(watchdog(req.settings)),
                ..Machine::acquired(req.settings.provider(), id)
            },
            adopted: false,
        })
    }

    async fn reach(
        &self,
        machine: &Machine,
        _settings: &Settings,
    ) -> Result<Reachable, ProviderError> {
        if self.boot_forever.lock().unwrap().contains(&machine.id) {
            std::future::pending::<()>().await;
        }
        let lost = |set: &Mutex<HashSet<String>>| set.lock().unwrap().contains(&machine.id);
        if lost(&self.gone) || lost(&self.unknowable) || lost(&self.reclaimed) {
            // Nothing listens on port 1: every connection is refused, a transient failure.
            return Ok(Reachable {
                endpoint: Endpoint::Ssh(SshEndpoint {
                    host: "127.0.0.1".into(),
                    port: 1,
                    user: None,
                    identity: None,
                    host_keys: HostKeys::Strict {
                        file: Some("/dev/null".into()),
                    },
                }),
                patience: Duration::from_secs(60),
                refused_key_is_transient: false,
            });
        }
        Ok(Reachable {
            endpoint: Endpoint::Local,
            patience: Duration::ZERO,
            refused_key_is_transient: false,
        })
    }

    async fn before_connect(
        &self,
        machine: &Machine,
        _settings: &Settings,
        _after_failure: bool,
    ) -> Result<(), ProviderError> {
        self.connects.lock().unwrap().push(machine.id.clone());
        Ok(())
    }

    async fn gone(&self, machine: &Machine) -> Result<Option<Gone>, ProviderError> {
        if self.unknowable.lock().unwrap().contains(&machine.id) {
            return Err(ProviderError {
                operation: "describe",
                target: "fake".into(),
                message: "the API is down".into(),
            });
        }
        let reclaimed = |set: &Mutex<HashSet<String>>| set.lock().unwrap().contains(&machine.id);
        if reclaimed(&self.reclaimed) || reclaimed(&self.being_reclaimed) {
            return Ok(Some(Gone {
                reason: format!("{} was reclaimed", machine.id),
                reclaimed: true,
            }));
        }
        Ok(self
            .gone
            .lock()
            .unwrap()
            .contains(&machine.id)
            .then(|| Gone::vanished(format!("{} is gone", machine.id))))
    }

    async fn extend(
        &self,
        machine: &Machine,
        settings: &Settings,
        _artifacts: &crate::templates::Artifacts,
        _endpoint: &Endpoint,
    ) -> Result<Option<jiff::Timestamp>, ProviderError> {
        self.call(format!("extend {}", machine.id));
        if self.refuse_extend.lock().unwrap().contains(&machine.id) {
            return Err(ProviderError {
                operation: "extend",
                target: machine.id.clone(),
                message: "the watchdog cannot be re-armed".into(),
            });
        }
        Ok(Some(watchdog(settings)))
    }

    async fn release(&self, machine: &Machine, settings: &Settings) -> Result<(), ProviderError> {
        let got_with = self.got_with.lock().unwrap().get(&machine.id).cloned();
        if got_with.is_some_and(|got| got != machine_part(settings)) {
            self.call(format!("release {} with other settings", machine.id));
            return Err(ProviderError {
                operation: "release",
                target: machine.id.clone(),
                message: "asked with other settings than it was got with".into(),
            });
        }
        self.call(format!("release {}", machine.id));
        super::stop_run(&Endpoint::Local, machine).await?;
        self.held.lock().unwrap().remove(&machine.id);
        Ok(())
    }
}
