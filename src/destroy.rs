//! Destroy: give back everything a workspace still holds, whatever state it is in. Machines
//! state knows are found from their records (settings included, so no plan is needed for
//! them); machines it never heard of (a run that died between getting and recording one) are
//! found by their providers where the plan and state point. Bake instances are machines
//! like any other; baked images are given back only when asked (`destroy --images`). Placement
//! groups are deleted after the machines: each machine's release deletes its group when it is
//! the last one out, and the workspace's tagged groups left then are deleted too (an apply
//! killed between making a group and launching into it).

use crate::address::Address;
use crate::backend::StateHandle;
use crate::plan::Settings;
use crate::provider::Provider;
use crate::state::{BakeStep, Machine, RecordedSettings, State, Status};

/// A machine destroy will give back.
pub struct Target {
    pub machine: Machine,
    /// The test it belongs to, when state knows it; none for a leaked machine.
    pub address: Option<Address>,
    /// The bake it belongs to (its image's name), for a bake instance state knows.
    pub bake: Option<String>,
    settings: Settings,
}

/// What destroy could not give back, and why.
#[derive(Debug)]
pub struct NotGivenBack {
    /// The machine's id, the image's, or (for snapshots without an image) the snapshots'.
    pub id: String,
    pub kind: Holding,
    pub error: String,
}

/// The kind of thing destroy gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    Machine,
    Image,
    PlacementGroup,
}

/// A machine state names that its provider says is already gone, with why.
pub struct Gone {
    pub address: Address,
    pub id: String,
    pub why: String,
}

/// Where the workspace may hold what state does not name, as the settings that point there:
/// the plan's; those of every attempt state records that may have got a machine it never
/// recorded (a test that left the plan, settings the plan no longer has, a run that died while
/// getting one); those of every test and bake with machines. A cluster's nodes were got with
/// settings of their own. Worked out once per `destroy`, for its machines and its groups.
pub struct Places(Vec<Settings>);

impl Places {
    /// The places of `state`, and of `plan`'s settings where there is a plan.
    pub fn of(state: &State, plan: &[&Settings]) -> anyhow::Result<Places> {
        let mut places: Vec<Settings> = Vec::new();
        let mut add = |settings: Settings| {
            if settings.cluster.is_some() {
                places.push(settings.for_nodes());
            }
            places.push(settings);
        };
        for settings in plan {
            add((*settings).clone());
        }
        for (address, record) in &state.tests {
            for asked in &record.asked_elsewhere {
                add(typed(address, asked)?);
            }
            if record.stopped_getting_a_machine()
                || record.live_machine().is_some()
                || !record.members.is_empty()
            {
                add(typed(address, &record.settings)?);
            }
        }
        for image in &state.images {
            if image.live_machine().is_some() {
                places.push(bake_settings(image)?);
            }
        }
        Ok(Places(places))
    }
}

fn typed(address: &Address, settings: &RecordedSettings) -> anyhow::Result<Settings> {
    settings
        .typed()
        .map_err(|e| anyhow::anyhow!("the recorded settings of {address} cannot be read: {e}"))
}

fn bake_settings(image: &crate::state::Image) -> anyhow::Result<Settings> {
    image.settings.typed().map_err(|e| {
        anyhow::anyhow!(
            "the recorded settings of bake {} cannot be read: {e}",
            image.name
        )
    })
}

/// What the workspace still holds: machines of state's records that are still there, and
/// leaked ones found by their providers at the workspace's [`Places`]; and the machines state
/// names that are gone already. A machine whose provider cannot tell whether it is still there
/// is a target: giving it back is safe, forgetting it may leave it costing money.
pub async fn targets<P: Provider>(
    provider: &P,
    state: &State,
    places: &Places,
) -> anyhow::Result<(Vec<Target>, Vec<Gone>)> {
    let mut targets: Vec<Target> = Vec::new();
    let mut gone = Vec::new();
    for (address, record) in &state.tests {
        if record.live_machine().is_none() && record.members.is_empty() {
            continue;
        }
        let settings = typed(address, &record.settings)?;
        for (machine, role) in record.live_machines() {
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
                    // A cluster's machines are given back as they were got.
                    settings: match role {
                        None => settings.clone(),
                        Some(role) => role.settings(&settings),
                    },
                }),
            }
        }
    }
    // A bake instance that is gone needs no giving back; releasing it again is harmless.
    for image in &state.images {
        let Some(machine) = image.live_machine() else {
            continue;
        };
        targets.push(Target {
            machine: machine.clone(),
            address: None,
            bake: Some(image.name.clone()),
            settings: bake_settings(image)?,
        });
    }
    let place_refs: Vec<&Settings> = places.0.iter().collect();
    for found in provider.leaked(&state.workspace, &place_refs).await? {
        if targets.iter().any(|t| t.machine.id == found.machine.id) {
            continue;
        }
        targets.push(Target {
            machine: found.machine,
            address: None,
            bake: None,
            settings: place_refs[found.found_by].clone(),
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
                record.mark_machine_released(&g.id);
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
            logs: None,
        });
    }
}

/// Gives every target back and records it; returns those that could not be, with why. A test destroyed mid-step is recorded failed, for the next apply to run again.
pub async fn destroy<P: Provider>(
    provider: &P,
    state: &StateHandle,
    targets: &[Target],
) -> anyhow::Result<Vec<NotGivenBack>> {
    let mut not_released = Vec::new();
    let mut released = Vec::with_capacity(targets.len());
    for t in targets {
        released.push((t, provider.release(&t.machine, &t.settings).await));
    }
    state.update(|s| {
        for (t, result) in released {
            if let Err(e) = result {
                not_released.push(NotGivenBack {
                    id: t.machine.id.clone(),
                    kind: Holding::Machine,
                    error: e.to_string(),
                });
                continue;
            }
            if let Some(image) =
                (t.bake.as_ref()).and_then(|name| s.images.iter_mut().find(|i| &i.name == name))
            {
                if let Some(m) = &mut image.instance {
                    m.released_at = Some(jiff::Timestamp::now());
                }
                if image.step != BakeStep::Available {
                    image.error = Some("its instance was terminated by `rallyctl destroy`".into());
                    image.set_step(BakeStep::Failed);
                }
            }
            let Some(record) = t.address.as_ref().and_then(|a| s.tests.get_mut(a)) else {
                continue;
            };
            record.mark_machine_released(&t.machine.id);
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

/// A baked image `destroy --images` gives back, or snapshots whose image is gone already.
pub struct ImageTarget {
    /// Its bake's image name in state; none for what only the workspace tag names.
    pub name: Option<String>,
    /// None for snapshots alone.
    pub id: Option<String>,
    pub region: String,
    pub snapshot_ids: Vec<String>,
}

/// State's baked images that may still be registered: every image a bake made (a failed
/// bake's too), unless already deregistered.
fn recorded(state: &State) -> impl Iterator<Item = &crate::state::Image> {
    (state.images.iter()).filter(|i| i.step != BakeStep::Deregistered && i.image_id.is_some())
}

/// How many baked images state names that `destroy` without `--images` keeps.
pub fn kept(state: &State) -> usize {
    recorded(state).count()
}

/// Everything bakes made that may still cost money: state's images, and in each region that
/// state's images or the plan's aws tests point to, the images and snapshots tagged with the
/// workspace (a bake killed before it recorded them, a state lost). Tagged snapshots of no
/// image found are targets of their own.
pub async fn images(
    fleet: &crate::provider::Fleet,
    state: &State,
    plan: &[&Settings],
) -> anyhow::Result<Vec<ImageTarget>> {
    let mut targets: Vec<ImageTarget> = recorded(state)
        .map(|i| ImageTarget {
            name: Some(i.name.clone()),
            id: i.image_id.clone(),
            region: i.baked_for.region.clone(),
            snapshot_ids: i.snapshot_ids.clone(),
        })
        .collect();
    let mut regions: Vec<String> = (state.images.iter())
        .map(|i| i.baked_for.region.clone())
        .chain(plan.iter().filter_map(|s| match &s.machine {
            crate::plan::MachineSettings::Aws(a) => Some(a.region.to_string()),
            _ => None,
        }))
        .collect();
    regions.sort();
    regions.dedup();
    if regions.is_empty() {
        return Ok(targets);
    }
    let aws = fleet.aws_extras().await?;
    for region in regions {
        let (tagged, snapshots) = aws.tagged_images(&region, &state.workspace).await?;
        for image in tagged {
            let at = targets
                .iter()
                .position(|t| t.id.as_deref() == Some(&image.id) && t.region == region);
            let target = match at {
                Some(at) => &mut targets[at],
                None => {
                    let name = (state.images.iter())
                        .find(|i| i.name == image.name)
                        .map(|i| i.name.clone());
                    targets.push(ImageTarget {
                        name,
                        id: Some(image.id),
                        region: region.clone(),
                        snapshot_ids: vec![],
                    });
                    targets.last_mut().expect("just pushed")
                }
            };
            add_new(&mut target.snapshot_ids, image.snapshot_ids);
        }
        let orphans: Vec<String> = (snapshots.into_iter())
            .filter(|s| !(targets.iter()).any(|t| t.region == region && t.snapshot_ids.contains(s)))
            .collect();
        if !orphans.is_empty() {
            targets.push(ImageTarget {
                name: None,
                id: None,
                region,
                snapshot_ids: orphans,
            });
        }
    }
    Ok(targets)
}

fn add_new(to: &mut Vec<String>, ids: Vec<String>) {
    for id in ids {
        if !to.contains(&id) {
            to.push(id);
        }
    }
}

/// Deregisters each image and deletes its snapshots, recording each as it goes: the image's
/// snapshots as EC2 names them are recorded before it is deregistered (afterwards nothing
/// names them). Returns those that could not be given back, with why.
pub async fn deregister(
    fleet: &crate::provider::Fleet,
    state: &StateHandle,
    images: &[ImageTarget],
) -> anyhow::Result<Vec<NotGivenBack>> {
    let mut not_given_back = Vec::new();
    let failed = |id: &String, e: &dyn std::fmt::Display| NotGivenBack {
        id: id.clone(),
        kind: Holding::Image,
        error: e.to_string(),
    };
    for target in images {
        let shown = (target.id.clone()).unwrap_or_else(|| target.snapshot_ids.join(", "));
        let aws = match fleet.aws_extras().await {
            Ok(aws) => aws,
            Err(e) => {
                not_given_back.push(failed(&shown, &e));
                continue;
            }
        };
        let mut snapshots = target.snapshot_ids.clone();
        if let Some(id) = &target.id {
            match aws.image(&target.region, id).await {
                Ok(info) => add_new(
                    &mut snapshots,
                    info.map(|i| i.snapshot_ids).unwrap_or_default(),
                ),
                Err(e) => {
                    not_given_back.push(failed(&shown, &e));
                    continue;
                }
            }
        }
        let in_state = |s: &mut State| {
            let name = target.name.as_ref()?;
            s.images.iter_mut().position(|i| &i.name == name)
        };
        state.update(|s| {
            if let Some(at) = in_state(s) {
                add_new(&mut s.images[at].snapshot_ids, snapshots.clone());
            }
        })?;
        match aws
            .delete_image(&target.region, target.id.as_deref(), &snapshots)
            .await
        {
            Ok(()) => state.update(|s| {
                if let Some(at) = in_state(s) {
                    s.images[at].set_step(BakeStep::Deregistered);
                }
            })?,
            Err(e) => not_given_back.push(failed(&shown, &e)),
        }
    }
    Ok(not_given_back)
}

/// A placement group `destroy` deletes.
pub struct GroupTarget {
    pub name: String,
    pub region: String,
}

/// The placement groups tagged with the workspace in each region of its [`Places`] that
/// launch into one (`placement_group`). Free, but EC2 caps how many an account holds.
pub async fn placement_groups(
    fleet: &crate::provider::Fleet,
    state: &State,
    places: &Places,
) -> anyhow::Result<Vec<GroupTarget>> {
    let mut regions: Vec<String> = (places.0.iter())
        .filter_map(|s| match &s.machine {
            crate::plan::MachineSettings::Aws(a) if a.placement_group.is_some() => {
                Some(a.region.to_string())
            }
            _ => None,
        })
        .collect();
    regions.sort();
    regions.dedup();
    let mut found = Vec::new();
    if regions.is_empty() {
        return Ok(found);
    }
    let aws = fleet.aws_extras().await?;
    for region in regions {
        for name in aws
            .tagged_placement_groups(&region, &state.workspace)
            .await?
        {
            found.push(GroupTarget {
                name,
                region: region.clone(),
            });
        }
    }
    Ok(found)
}

/// Deletes each group, once the machines are given back (EC2 refuses while an instance in it
/// runs); a group the release of its last machine deleted already is given back. Returns those
/// that could not be, with why.
pub async fn delete_groups(
    fleet: &crate::provider::Fleet,
    groups: &[GroupTarget],
) -> Vec<NotGivenBack> {
    let mut not_given_back = Vec::new();
    for g in groups {
        let deleted = match fleet.aws_extras().await {
            Ok(aws) => aws.delete_placement_group(&g.region, &g.name).await,
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            not_given_back.push(NotGivenBack {
                id: g.name.clone(),
                kind: Holding::PlacementGroup,
                error: e.to_string(),
            });
        }
    }
    not_given_back
}
