//! The `local` provider: tests run on this machine, each in its own run directory with its own
//! `RALLY_HOME`. Two Rally races on one machine skew each other and share Rally's actor system
//! (port 1900), so the walk runs a suite's local tests one at a time unless the suite's
//! `parallelism` says otherwise.

use std::time::Duration;

use super::{Acquire, AcquireError, Acquired, Machines, ProviderError, Reachable, Spec};
use crate::plan::ProviderKind;
use crate::remote::Endpoint;
use crate::state::Machine;

pub struct Local;

/// What state names this machine.
const ID: &str = "local";

impl Machines for Local {
    /// This machine has no settings of its own.
    type Own = ();

    async fn acquire(&self, _req: &Acquire<'_, Spec<'_, ()>>) -> Result<Acquired, AcquireError> {
        Ok(Acquired {
            machine: Machine::acquired(ProviderKind::Local, ID.into()),
            adopted: false,
        })
    }

    async fn reach(
        &self,
        _machine: &Machine,
        _spec: Spec<'_, ()>,
    ) -> Result<Reachable, ProviderError> {
        Ok(Reachable {
            peer_address: Some("127.0.0.1".into()),
            endpoint: Endpoint::Local,
            patience: Duration::ZERO,
            refused_key_is_transient: false,
        })
    }

    async fn release(&self, machine: &Machine, _spec: Spec<'_, ()>) -> Result<(), ProviderError> {
        super::stop_run(&Endpoint::Local, machine).await
    }
}
