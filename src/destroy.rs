//! Destroy: give back everything a workspace still holds, whatever state it is in. Machines
//! state knows are found from their records (settings included, so no plan is needed for
//! them); machines it never heard of (a run that died between getting and recording one) are
//! found by their providers where the plan and state point.

use crate::address::Address;
use crate::lifecycle::StateHandle;
use crate::plan::Settings;
use crate::provider::Provider;
use crate::state::{Machine, State, Status};

/// A machine destroy will give back.
pub struct Target {
    pub machine: Machine,
    /// The test it belongs to, when state knows it; none for a leaked machine.
    pub address: Option<Address>,
    settings: Settings,
}

/// A machine state names that its provider says is already gone, with why.
pub struct Gone {
    pub address: Address,
    pub id: String,
    pub why: String,
}

/// What the workspace still holds: machines of state's records that are still there, and
/// leaked ones; and the machines state names that are gone already. `plan` is the plan's
/// settings, where there is a plan. A machine whose provider cannot tell whether it is still
/// there is a target: giving it back is safe, forgetting it may leave it costing money.
pub async fn targets<P: Provider>(
    provider: &P,
    state: &State,
    plan: &[&Settings],
) -> anyhow::Result<(Vec<Target>, Vec<Gone>)> {
    let mut targets: Vec<Target> = Vec::new();
    let mut gone = Vec::new();
    let mut hints: Vec<Settings> = plan.iter().map(|s| (*s).clone()).collect();
    for (address, record) in &state.tests {
        let Some(machine) = record.live_machine() else {
            continue;
        };
        let settings = record.settings.typed().map_err(|e| {
            anyhow::anyhow!("the recorded settings of {address} cannot be read: {e}")
        })?;
        match provider.gone(machine).await {
            Ok(Some(why)) => gone.push(Gone {
                address: address.clone(),
                id: machine.id.clone(),
                why: why.reason,
            }),
            Ok(None) | Err(_) => targets.push(Target {
                machine: machine.clone(),
                address: Some(address.clone()),
                settings: settings.clone(),
            }),
        }
        hints.push(settings);
    }
    let hint_refs: Vec<&Settings> = hints.iter().collect();
    for machine in provider.leaked(&state.workspace, &hint_refs).await? {
        if targets.iter().any(|t| t.machine.id == machine.id) {
            continue;
        }
        let settings = hints
            .iter()
            .find(|s| s.provider() == machine.provider)
            .expect("a provider finds machines only where settings point")
            .clone();
        targets.push(Target {
            machine,
            address: None,
            settings,
        });
    }
    Ok((targets, gone))
}

/// Records the machines that are gone as given back, so that state stops naming them.
pub fn forget(state: &StateHandle, gone: &[Gone]) -> anyhow::Result<()> {
    if gone.is_empty() {
        return Ok(());
    }
    state.update(|s| {
        for g in gone {
            if let Some(record) = s.tests.get_mut(&g.address) {
                record.mark_released();
                fail_in_progress(record, &g.why);
            }
        }
    })?;
    Ok(())
}

/// A test whose machine went mid-step is recorded failed, for the next apply to run again.
fn fail_in_progress(record: &mut crate::state::TestRecord, why: &str) {
    if let Status::InProgress { step } = record.status {
        record.set_status(Status::Failed {
            step,
            error: why.to_owned(),
            log_tail: None,
        });
    }
}

/// Gives every target back and records it; returns the ids of those that could not be, with
/// why. A test destroyed mid-step is recorded failed, for the next apply to run again.
pub async fn destroy<P: Provider>(
    provider: &P,
    state: &StateHandle,
    targets: &[Target],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut not_released = Vec::new();
    let mut released = Vec::with_capacity(targets.len());
    for t in targets {
        released.push((t, provider.release(&t.machine, &t.settings).await));
    }
    state.update(|s| {
        for (t, result) in released {
            if let Err(e) = result {
                not_released.push((t.machine.id.clone(), e.to_string()));
                continue;
            }
            let Some(record) = t.address.as_ref().and_then(|a| s.tests.get_mut(a)) else {
                continue;
            };
            record.mark_released();
            fail_in_progress(
                record,
                &format!(
                    "its machine was {} by `rallyctl destroy`",
                    t.machine.provider.released()
                ),
            );
        }
    })?;
    Ok(not_released)
}
