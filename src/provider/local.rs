//! The `local` provider: tests run on this machine, each in its own run directory with its own
//! `RALLY_HOME`. Two Rally races on one machine skew each other and share Rally's actor system
//! (port 1900), so the walk runs a suite's local tests one at a time unless the suite's
//! `parallelism` says otherwise.
//!
//! A cluster's nodes are processes on this machine too, for trying a cluster out: node `i` is
//! a machine of its own in state (`local/node-<i>`, so each is recorded, reached and given back
//! apart) at the loopback address `127.0.0.<i + 2>`, which Linux routes to `lo` like the rest of
//! 127/8. Each node listens on its own address, so the nodes' HTTP and transport ports never
//! clash with one another's or with anything on 127.0.0.1. A further load driver would be this
//! machine again, with a second Rally daemon wanting port 1900: `plan::load` refuses it.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::{
    Acquire, AcquireError, Acquired, Machines, MemberSpec, ProviderError, Reachable, Spec,
};
use crate::plan::ProviderKind;
use crate::remote::Endpoint;
use crate::state::Machine;

pub struct Local;

/// What state names this machine.
const ID: &str = "local";

/// Where the test's own machine, the load driver, is reached by its nodes.
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The loopback address of node `index`: the first after 127.0.0.1, so that no node answers
/// where a user's own Elasticsearch on this machine usually does. A cluster has at most 100
/// nodes, far fewer than 127/8 has addresses.
fn node_address(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(LOOPBACK) + 1 + index)
}

impl Machines for Local {
    /// This machine has no settings of its own.
    type Own = ();

    async fn acquire(&self, req: &Acquire<'_, Spec<'_, ()>>) -> Result<Acquired, AcquireError> {
        let machine = match req.member {
            None => Machine::acquired(ProviderKind::Local, ID.into()),
            Some(MemberSpec {
                name,
                node: Some(index),
            }) => Machine {
                address: Some(node_address(index).to_string()),
                ..Machine::acquired(ProviderKind::Local, format!("{ID}/{name}"))
            },
            Some(MemberSpec { name, node: None }) => {
                return Err(AcquireError::Provider(ProviderError {
                    operation: "get a load driver",
                    target: ID.into(),
                    // plan::load refuses `load_drivers` above 1 on this provider.
                    message: format!("{name} would be this machine again"),
                }));
            }
        };
        Ok(Acquired {
            machine,
            adopted: false,
        })
    }

    async fn reach(
        &self,
        machine: &Machine,
        _spec: Spec<'_, ()>,
    ) -> Result<Reachable, ProviderError> {
        Ok(Reachable {
            peer_address: Some((machine.address.clone()).unwrap_or_else(|| LOOPBACK.to_string())),
            endpoint: Endpoint::Local,
            patience: Duration::ZERO,
            refused_key_is_transient: false,
        })
    }

    async fn release(&self, machine: &Machine, _spec: Spec<'_, ()>) -> Result<(), ProviderError> {
        super::stop_run(&Endpoint::Local, machine).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_has_a_loopback_address_of_its_own_after_the_load_drivers() {
        // The hundredth node, the most a cluster has, is node 99.
        let addresses: Vec<String> = [0, 1, 99].map(|i| node_address(i).to_string()).into();
        assert_eq!(addresses, ["127.0.0.2", "127.0.0.3", "127.0.0.101"]);
    }
}
