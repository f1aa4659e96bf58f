//! Placement groups (`placement_group`): every machine of one attempt of a cluster test
//! launches into a group of its own, made before the first launch and deleted by whichever
//! release finds the group empty.
//!
//! The group's name follows from the attempt, so a resumed apply launches into the group it
//! made before; each machine records its group, so that releasing it (in `apply` or `destroy`)
//! knows what to delete. `destroy` also looks for the workspace's groups by their tags
//! ([`Aws::tagged_placement_groups`]): one made by an apply killed before its first launch holds
//! no machine that could delete it.

use std::collections::BTreeMap;
use std::time::Instant;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::create_placement_group::builders::CreatePlacementGroupFluentBuilder;
use aws_sdk_ec2::types::{Filter, PlacementStrategy, ResourceType};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::instances::InstanceState;
use super::{
    Aws, Ec2, POLL_INTERVAL, RELEASE_TIMEOUT, TAG_ATTEMPT, TAG_LINEAGE, TAG_TEST, TAG_WORKSPACE,
    err, id_filter, tag_spec,
};
use crate::address::Address;
use crate::plan::Placement;
use crate::provider::ProviderError;

const DUPLICATE: &str = "InvalidPlacementGroup.Duplicate";
const UNKNOWN: &str = "InvalidPlacementGroup.Unknown";
const IN_USE: &str = "InvalidPlacementGroup.InUse";

/// The group of one attempt of one test, the same for each of its machines. EC2 takes names
/// of up to 255 characters, unique in the account and region.
pub(super) fn group_name(lineage: Uuid, address: &Address, attempt: u32) -> String {
    let digest = Sha256::digest(format!("{lineage}\n{address}\n{attempt}\nplacement group"));
    format!("rallyctl-{}", &hex::encode(digest)[..32])
}

/// The tags of a test's group, each taken from its instances' ([`super::Aws`]'s launch).
pub(super) const GROUP_TAGS: [&str; 4] = [TAG_WORKSPACE, TAG_LINEAGE, TAG_TEST, TAG_ATTEMPT];

/// CreatePlacementGroup of `name`, as making the group and its dry run at plan time both ask
/// it.
pub(super) fn create_request(
    ec2: &aws_sdk_ec2::Client,
    name: &str,
    placement: Placement,
    tags: &BTreeMap<String, String>,
) -> CreatePlacementGroupFluentBuilder {
    ec2.create_placement_group()
        .group_name(name)
        .strategy(PlacementStrategy::from(placement.strategy()))
        .tag_specifications(tag_spec(
            ResourceType::PlacementGroup,
            (tags.iter()).map(|(k, v)| (k.as_str(), v.as_str())),
        ))
}

/// What the release of one of a group's instances does next, from the states of every
/// instance EC2 lists in the group (that one included).
#[derive(Debug, PartialEq)]
enum Next {
    /// Another instance still runs: its release deletes the group.
    Leave,
    /// Instances on their way out still hold the group: EC2 refuses to delete it until they
    /// read terminated.
    Wait,
    Delete,
}

fn next(states: &[InstanceState]) -> Next {
    if states.iter().any(|s| s.is_alive()) {
        Next::Leave
    } else if states.contains(&InstanceState::ShuttingDown) {
        Next::Wait
    } else {
        Next::Delete
    }
}

impl Ec2 {
    /// Makes the group unless it exists: a resumed attempt, or another machine of the test
    /// that got there first.
    pub(super) async fn create_group(
        &self,
        region: &str,
        name: &str,
        placement: Placement,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        match create_request(&self.ec2(region), name, placement, tags)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(DUPLICATE) => Ok(()),
            Err(e) => Err(err("CreatePlacementGroup", region, e)),
        }
    }

    /// Deletes the group once none of its instances runs: the release of its last instance
    /// does, after EC2 reads every one terminated (it refuses while one is shutting down).
    /// One whose release comes before another's leaves the group to that one: false then.
    pub(super) async fn delete_group_when_empty(
        &self,
        region: &str,
        name: &str,
        deadline: Instant,
    ) -> Result<bool, ProviderError> {
        let in_group = Filter::builder()
            .name("placement-group-name")
            .values(name)
            .build();
        loop {
            let states: Vec<InstanceState> = (self
                .describe_filtered(region, vec![in_group.clone()]))
            .await?
            .iter()
            .map(|i| i.state)
            .collect();
            match next(&states) {
                Next::Leave => return Ok(false),
                Next::Wait => {}
                Next::Delete => match self
                    .ec2(region)
                    .delete_placement_group()
                    .group_name(name)
                    .send()
                    .await
                {
                    // Unknown: another release deleted it, or this one did before a crash.
                    Ok(_) => return Ok(true),
                    Err(e) if e.code() == Some(UNKNOWN) => return Ok(true),
                    // EC2's API lags the instances' states.
                    Err(e) if e.code() == Some(IN_USE) => {}
                    Err(e) => return Err(err("DeletePlacementGroup", region, e)),
                },
            }
            if Instant::now() > deadline {
                return Err(ProviderError {
                    operation: "DeletePlacementGroup",
                    target: region.to_owned(),
                    message: format!(
                        "placement group {name} still holds instances on their way out ({states:?}); `rallyctl destroy` deletes it once they are gone"
                    ),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Aws {
    /// The names of the placement groups tagged with `workspace` in `region`, whether state
    /// recorded them on a machine or not.
    pub async fn tagged_placement_groups(
        &self,
        region: &str,
        workspace: &str,
    ) -> Result<Vec<String>, ProviderError> {
        let out = (self.ec2.ec2(region))
            .describe_placement_groups()
            .filters(id_filter(
                &format!("tag:{TAG_WORKSPACE}"),
                &[workspace.to_owned()],
            ))
            .send()
            .await
            .map_err(|e| err("DescribePlacementGroups", region, e))?;
        Ok((out.placement_groups().iter())
            .filter_map(|g| g.group_name().map(str::to_owned))
            .collect())
    }

    /// Deletes the group, waiting for instances on their way out; an error while one of its
    /// instances still runs (it was not given back) or after [`RELEASE_TIMEOUT`].
    pub async fn delete_placement_group(
        &self,
        region: &str,
        name: &str,
    ) -> Result<(), ProviderError> {
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        if self
            .ec2
            .delete_group_when_empty(region, name, deadline)
            .await?
        {
            return Ok(());
        }
        Err(ProviderError {
            operation: "DeletePlacementGroup",
            target: region.to_owned(),
            message: format!("placement group {name} still holds a running instance"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_release_deletes_the_group_once_every_instance_is_terminated() {
        use InstanceState::*;
        assert_eq!(next(&[Terminated, Running]), Next::Leave);
        assert_eq!(next(&[ShuttingDown, Pending]), Next::Leave);
        assert_eq!(next(&[ShuttingDown, Stopped]), Next::Leave);
        assert_eq!(next(&[Terminated, ShuttingDown]), Next::Wait);
        assert_eq!(next(&[Terminated, Terminated]), Next::Delete);
        // EC2 lists nothing: the instances were purged, or the group never held one.
        assert_eq!(next(&[]), Next::Delete);
    }

    #[test]
    fn an_attempt_names_one_group_within_ec2s_limit() {
        let (lineage, address) = (Uuid::nil(), Address::new("s", "t").unwrap());
        let name = group_name(lineage, &address, 1);
        assert_eq!(name, group_name(lineage, &address, 1));
        assert_ne!(name, group_name(lineage, &address, 2));
        assert_ne!(name, group_name(Uuid::from_u128(1), &address, 1));
        assert!(name.len() <= 255 && name.starts_with("rallyctl-"), "{name}");
    }
}
