//! Baked images (`rallyctl bake`): CreateImage found again by name, the wait for `available`,
//! DeregisterImage with the image's snapshots, and the images tagged with a workspace.

use std::time::{Duration, Instant};

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{ResourceType, TagSpecification};

use super::{Aws, TAG_WORKSPACE, err, id_filter, region_of, tag_spec};
use crate::provider::ProviderError;
use crate::state::Machine;

/// An image as EC2 has it.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub id: String,
    /// `pending`, `available`, `failed`, ...
    pub state: String,
    /// Why it is in that state, when EC2 says (e.g. `Client.InstanceTerminated: ...`).
    pub reason: Option<String>,
    pub snapshot_ids: Vec<String>,
}

/// An image tagged with the workspace, as `destroy --images` finds it without state.
#[derive(Debug, Clone)]
pub struct TaggedImage {
    pub id: String,
    pub name: String,
    pub snapshot_ids: Vec<String>,
}

/// What [`Aws::wait_image`] saw.
#[derive(Debug)]
pub enum ImageWait {
    /// The image names snapshots it did not before: they exist and cost money from now on.
    Snapshots(Vec<String>),
    Available(ImageInfo),
}

/// How long a new image may take to read `available`: EC2 snapshots the instance's volumes,
/// minutes for a small root volume.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(3600);
const IMAGE_POLL: Duration = Duration::from_secs(5);
/// A snapshot stays in use for a while after its image is deregistered (EC2 is eventually
/// consistent); DeleteSnapshot is asked again this often, this many times.
const SNAPSHOT_IN_USE_RETRY: Duration = Duration::from_secs(3);
const SNAPSHOT_IN_USE_ATTEMPTS: u32 = 20;

fn image_info(i: &aws_sdk_ec2::types::Image) -> Option<ImageInfo> {
    Some(ImageInfo {
        id: i.image_id()?.to_owned(),
        state: i.state().map_or("unknown", |s| s.as_str()).to_owned(),
        reason: i
            .state_reason()
            .and_then(|r| match (r.code(), r.message()) {
                (Some(c), Some(m)) => Some(format!("{c}: {m}")),
                (c, m) => c.or(m).map(str::to_owned),
            }),
        snapshot_ids: snapshots_of(i),
    })
}

fn snapshots_of(i: &aws_sdk_ec2::types::Image) -> Vec<String> {
    (i.block_device_mappings().iter())
        .filter_map(|b| b.ebs()?.snapshot_id())
        .map(str::to_owned)
        .collect()
}

fn workspace_tags(kind: ResourceType, workspace: &str, name: &str) -> TagSpecification {
    tag_spec(kind, [(TAG_WORKSPACE, workspace), ("Name", name)])
}

/// Baked images (`rallyctl bake`): made from a bake instance, found again by name, given back
/// with their snapshots. Only the bake and `destroy --images` ask for these.
impl Aws {
    /// CreateImage of `machine`, named `name` (unique per account and region, so a killed bake
    /// finds the image it asked for instead of making a second one); the image id. The image
    /// and its snapshots are tagged with the workspace as EC2 makes them, so `destroy --images`
    /// finds both whatever became of the bake. (moto refuses snapshot tags; the tests' fault
    /// proxy tags them as EC2 does.)
    pub async fn create_image(
        &self,
        machine: &Machine,
        name: &str,
        workspace: &str,
    ) -> Result<String, ProviderError> {
        let region = region_of(machine)?;
        let ec2 = self.ec2.ec2(region);
        let named = ec2
            .describe_images()
            .owners("self")
            .filters(id_filter("name", &[name.to_owned()]))
            .send()
            .await
            .map_err(|e| err("DescribeImages", region, e))?;
        if let Some(id) = named.images().iter().find_map(|i| i.image_id()) {
            return Ok(id.to_owned());
        }
        let out = ec2
            .create_image()
            .instance_id(&machine.id)
            .name(name)
            .description("rallyctl bake: Python and esrally installed for its tests")
            .tag_specifications(workspace_tags(ResourceType::Image, workspace, name))
            .tag_specifications(workspace_tags(ResourceType::Snapshot, workspace, name))
            .send()
            .await
            .map_err(|e| err("CreateImage", region, e))?;
        out.image_id()
            .map(str::to_owned)
            .ok_or_else(|| ProviderError {
                operation: "CreateImage",
                target: region.to_owned(),
                message: "the answer named no image".into(),
            })
    }

    /// The image, if EC2 knows it.
    pub async fn image(&self, region: &str, id: &str) -> Result<Option<ImageInfo>, ProviderError> {
        let out = self
            .ec2
            .ec2(region)
            .describe_images()
            .filters(id_filter("image-id", &[id.to_owned()]))
            .send()
            .await
            .map_err(|e| err("DescribeImages", region, e))?;
        Ok(out
            .images()
            .iter()
            .filter(|i| i.image_id() == Some(id))
            .find_map(image_info))
    }

    /// Waits until the image is `available`, at most [`IMAGE_TIMEOUT`] from `since`; returns
    /// early when it names snapshots beyond `known`, so that the caller records them before
    /// anything (a failed image, a timeout, Ctrl-C) can end the wait.
    pub async fn wait_image(
        &self,
        region: &str,
        id: &str,
        known: &[String],
        since: Instant,
    ) -> Result<ImageWait, ProviderError> {
        loop {
            let fail = |message: String| ProviderError {
                operation: "DescribeImages",
                target: region.to_owned(),
                message,
            };
            let info = self.image(region, id).await?;
            if let Some(i) = &info
                && i.snapshot_ids.iter().any(|s| !known.contains(s))
            {
                return Ok(ImageWait::Snapshots(i.snapshot_ids.clone()));
            }
            match info {
                Some(i) if i.state == "available" => return Ok(ImageWait::Available(i)),
                Some(i) if i.state != "pending" => {
                    return Err(fail(format!(
                        "image {id} is {} instead of available{}",
                        i.state,
                        i.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    )));
                }
                _ if since.elapsed() >= IMAGE_TIMEOUT => {
                    return Err(fail(format!(
                        "image {id} is not available after {} s",
                        IMAGE_TIMEOUT.as_secs()
                    )));
                }
                _ => tokio::time::sleep(IMAGE_POLL).await,
            }
        }
    }

    /// The images and the snapshots tagged with `workspace` in `region`: what bakes made,
    /// whether state heard of them or not.
    pub async fn tagged_images(
        &self,
        region: &str,
        workspace: &str,
    ) -> Result<(Vec<TaggedImage>, Vec<String>), ProviderError> {
        let ec2 = self.ec2.ec2(region);
        let tag = id_filter(&format!("tag:{TAG_WORKSPACE}"), &[workspace.to_owned()]);
        let images = ec2
            .describe_images()
            .owners("self")
            .filters(tag.clone())
            .send()
            .await
            .map_err(|e| err("DescribeImages", region, e))?;
        let images = (images.images().iter())
            .filter_map(|i| {
                Some(TaggedImage {
                    id: i.image_id()?.to_owned(),
                    name: i.name().unwrap_or_default().to_owned(),
                    snapshot_ids: snapshots_of(i),
                })
            })
            .collect();
        let mut snapshots = Vec::new();
        let mut pages = ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(tag)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| err("DescribeSnapshots", region, e))?;
            snapshots.extend(
                (page.snapshots().iter())
                    .filter_map(|s| s.snapshot_id())
                    .map(str::to_owned),
            );
        }
        Ok((images, snapshots))
    }

    /// DeregisterImage (when `id` names one), then DeleteSnapshot of each of `snapshot_ids`
    /// (they outlive the image and cost money), asked again while EC2 still counts one as in
    /// use by the image just deregistered. An image or snapshot EC2 no longer knows is given
    /// back already. The caller finds the image's snapshots first ([`Aws::image`]): once it is
    /// deregistered, nothing names them.
    pub async fn delete_image(
        &self,
        region: &str,
        id: Option<&str>,
        snapshot_ids: &[String],
    ) -> Result<(), ProviderError> {
        let ec2 = self.ec2.ec2(region);
        if let Some(id) = id {
            match ec2.deregister_image().image_id(id).send().await {
                Ok(_) => {}
                Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidAMIID")) => {}
                Err(e) => return Err(err("DeregisterImage", region, e)),
            }
        }
        for snapshot in snapshot_ids {
            let mut attempt = 1;
            loop {
                match ec2.delete_snapshot().snapshot_id(snapshot).send().await {
                    Ok(_) => break,
                    Err(e) if e.code() == Some("InvalidSnapshot.NotFound") => break,
                    Err(e)
                        if e.code() == Some("InvalidSnapshot.InUse")
                            && attempt < SNAPSHOT_IN_USE_ATTEMPTS =>
                    {
                        attempt += 1;
                        tokio::time::sleep(SNAPSHOT_IN_USE_RETRY).await;
                    }
                    Err(e) => return Err(err("DeleteSnapshot", region, e)),
                }
            }
        }
        Ok(())
    }
}
