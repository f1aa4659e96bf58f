//! The state of an apply, shared by its tests and written through the workspace's backend at
//! every change. It lives here, above `state` (the model) and beside the backends it writes
//! through, so that `state` never knows where it is kept.

use std::sync::{Arc, Mutex};

use super::Backend;
use crate::address::Address;
use crate::state::{ResultFile, State, StateError, TestRecord, Written};

/// The state shared by all tests of an apply; every change is persisted before it returns.
#[derive(Clone)]
pub struct StateHandle {
    /// With what its last write wrote, so that a step's write serializes only what it changed.
    state: Arc<Mutex<(State, Written)>>,
    backend: Arc<Backend>,
}

impl StateHandle {
    pub fn new(state: State, backend: Backend) -> Self {
        StateHandle {
            state: Arc::new(Mutex::new((state, Written::default()))),
            backend: Arc::new(backend),
        }
    }

    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.lock().expect("state lock").0)
    }

    pub fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> Result<R, StateError> {
        let (state, written) = &mut *self.state.lock().expect("state lock");
        let r = f(state);
        self.backend.save_with(state, written)?;
        Ok(r)
    }

    /// Keeps collected files where the backend keeps results (see [`Backend::publish`]).
    pub async fn publish(&self, files: Vec<ResultFile>) -> Result<(), StateError> {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || backend.publish(&files))
            .await
            .expect("publishing does not panic")
    }

    pub fn record(
        &self,
        address: &Address,
        f: impl FnOnce(&mut TestRecord),
    ) -> Result<(), StateError> {
        self.update(|s| s.tests.get_mut(address).map(f))?
            .ok_or_else(|| StateError::Missing {
                address: address.clone(),
            })
    }

    /// The record of a test, which the caller knows state holds.
    pub fn test(&self, address: &Address) -> Result<TestRecord, StateError> {
        self.read(|s| s.tests.get(address).cloned())
            .ok_or_else(|| StateError::Missing {
                address: address.clone(),
            })
    }

    pub fn snapshot(&self) -> State {
        self.read(Clone::clone)
    }
}
