//! Destroy: give back everything a workspace still holds, whatever state it is in. Machines
//! state knows are found from their records (settings included, so no plan is needed for
//! them); machines it never heard of (a run that died between getting and recording one) are
//! found by their providers where the plan and state point. Bake instances are machines
//! like any other; baked images are given back only when asked (`destroy --images`).

use crate::address::Address;
use crate::lifecycle::StateHandle;
use crate::plan::Settings;
use crate::provider::Provider;
use crate::state::{BakeStep, Machine, State, Status};

/// A machine destroy will give back.
pub struct Target {
    pub machine: Machine,
    /// The test it belongs to, when state knows it; none for a leaked machine.
    pub address: Option<Address>,
    /// The bake it belongs to (its image's name), for a bake instance state knows.
    pub bake: Option<String>,
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
                bake: None,
                settings: settings.clone(),
            }),
        }
        hints.push(settings);
    }
    // A bake instance that is gone needs no giving back; releasing it again is harmless.
    for image in &state.images {
        let Some(machine) = image.live_machine() else {
            continue;
        };
        let settings = image.settings.typed().map_err(|e| {
            anyhow::anyhow!(
                "the recorded settings of bake {} cannot be read: {e}",
                image.name
            )
        })?;
        targets.push(Target {
            machine: machine.clone(),
            address: None,
            bake: Some(image.name.clone()),
            settings: settings.clone(),
        });
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
            bake: None,
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
            if let Some(image) =
                (t.bake.as_ref()).and_then(|name| s.images.iter_mut().find(|i| &i.name == name))
            {
                if let Some(m) = &mut image.instance {
                    m.terminated_at = Some(jiff::Timestamp::now());
                }
                if image.step != BakeStep::Available {
                    image.error = Some("its instance was terminated by `rallyctl destroy`".into());
                    image.set_step(BakeStep::Failed);
                }
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

/// A baked image `destroy --images` gives back: its name in state, id, region and snapshots.
pub struct ImageTarget {
    pub name: String,
    pub id: String,
    pub region: String,
    pub snapshot_ids: Vec<String>,
}

/// The workspace's baked images that may still be registered: every image a bake made (a
/// failed bake's too), unless already deregistered.
pub fn images(state: &State) -> Vec<ImageTarget> {
    (state.images.iter())
        .filter(|i| i.step != BakeStep::Deregistered)
        .filter_map(|i| {
            Some(ImageTarget {
                name: i.name.clone(),
                id: i.image_id.clone()?,
                region: i.baked_for.region.clone(),
                snapshot_ids: i.snapshot_ids.clone(),
            })
        })
        .collect()
}

/// Deregisters each image and deletes its snapshots, recording each as it goes; returns the
/// ids of those that could not be, with why.
pub async fn deregister(
    fleet: &crate::provider::Fleet,
    state: &StateHandle,
    images: &[ImageTarget],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut not_given_back = Vec::new();
    for target in images {
        let given_back = match fleet.images().await {
            Ok(aws) => {
                aws.delete_image(&target.region, &target.id, &target.snapshot_ids)
                    .await
            }
            Err(e) => Err(e),
        };
        match given_back {
            Ok(()) => state.update(|s| {
                if let Some(i) = s.images.iter_mut().find(|i| i.name == target.name) {
                    i.set_step(BakeStep::Deregistered);
                }
            })?,
            Err(e) => not_given_back.push((target.id.clone(), e.to_string())),
        }
    }
    Ok(not_given_back)
}
