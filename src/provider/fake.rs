//! An in-process provider for the walk's and the lifecycle's unit tests: its machines are
//! directories of this machine (reached like `local`), and a test can make it fail.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use super::{Acquire, Acquired, Provider, ProviderError, Reachable};
use crate::address::Address;
use crate::plan::{ProviderKind, Settings};
use crate::remote::Endpoint;
use crate::state::Machine;

/// Clones share one record, so a test keeps a handle while apply owns the provider.
#[derive(Clone, Default)]
pub struct Fake(std::sync::Arc<Record>);

#[derive(Default)]
pub struct Record {
    /// What was asked, in order: `acquire ADDRESS#ATTEMPT -> ID`, `release ID`.
    pub calls: Mutex<Vec<String>>,
    /// Tests whose acquire fails.
    pub refuse: Mutex<HashSet<Address>>,
    /// Machines that are gone (terminated behind rallyctl's back).
    pub gone: Mutex<HashSet<String>>,
    /// Machines acquired and not yet released.
    pub held: Mutex<HashSet<String>>,
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

impl Provider for Fake {
    async fn acquire(&self, req: &Acquire<'_>) -> Result<Acquired, ProviderError> {
        if self.refuse.lock().unwrap().contains(req.address) {
            self.call(format!("acquire {}#{} refused", req.address, req.attempt));
            return Err(ProviderError {
                operation: "acquire",
                target: "fake".into(),
                message: "no capacity".into(),
            });
        }
        let id = format!("m-{}-{}", req.address.test(), req.attempt);
        self.call(format!("acquire {}#{} -> {id}", req.address, req.attempt));
        self.held.lock().unwrap().insert(id.clone());
        Ok(Acquired {
            machine: Machine::acquired(ProviderKind::Local, id),
            adopted: false,
        })
    }

    async fn reach(
        &self,
        _machine: &Machine,
        _settings: &Settings,
    ) -> Result<Reachable, ProviderError> {
        Ok(Reachable {
            endpoint: Endpoint::Local,
            patience: Duration::ZERO,
            refused_key_is_transient: false,
        })
    }

    async fn gone(&self, machine: &Machine) -> Option<String> {
        self.gone
            .lock()
            .unwrap()
            .contains(&machine.id)
            .then(|| format!("{} is gone", machine.id))
    }

    async fn release(&self, machine: &Machine, _settings: &Settings) -> Result<(), ProviderError> {
        self.call(format!("release {}", machine.id));
        super::stop_run(&Endpoint::Local, machine).await?;
        self.held.lock().unwrap().remove(&machine.id);
        Ok(())
    }
}
