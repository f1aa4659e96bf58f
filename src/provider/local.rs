//! The `local` provider: tests run on this machine, each in its own run directory with its own
//! `RALLY_HOME`. Two Rally races on one machine skew each other and share Rally's actor system
//! (port 1900), so the walk runs a suite's local tests one at a time unless the suite's
//! `parallelism` says otherwise.

use std::time::Duration;

use super::{Acquire, AcquireError, Acquired, Provider, ProviderError, Reachable};
use crate::plan::{ProviderKind, Settings};
use crate::remote::Endpoint;
use crate::state::Machine;

pub struct Local;

/// What state names this machine.
const ID: &str = "local";

impl Provider for Local {
    async fn acquire(&self, _req: &Acquire<'_>) -> Result<Acquired, AcquireError> {
        Ok(Acquired {
            machine: Machine::acquired(ProviderKind::Local, ID.into()),
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

    async fn release(&self, machine: &Machine, _settings: &Settings) -> Result<(), ProviderError> {
        super::stop_run(&Endpoint::Local, machine).await
    }
}
