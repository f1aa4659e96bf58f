//! What the cost estimate asks of EC2 ([`crate::cost::Ec2`]): an image's root volume and an
//! instance type's spot price now, asked with as few attempts as the preflight's so that the
//! estimate does not hang on an unreachable API.

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::types::InstanceType;

use crate::cost::{DEFAULT_VOLUME_TYPE, RootVolume};
use crate::provider::ProviderError;
use crate::provider::aws::{err, id_filter};

/// What the cost estimate asks of EC2 ([`crate::cost::Ec2`]): an image's root volume, an
/// instance type's spot price now.
pub struct CostFacts {
    base: SdkConfig,
}

impl CostFacts {
    /// With the standard chain's credentials, and as few attempts as the preflight's.
    pub async fn from_env() -> CostFacts {
        CostFacts {
            base: aws_config::defaults(BehaviorVersion::latest())
                .retry_config(RetryConfig::standard().with_max_attempts(3))
                .load()
                .await,
        }
    }

    fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&self.base)
                .region(Region::new(region.to_owned()))
                .build(),
        )
    }
}

impl crate::cost::Ec2 for CostFacts {
    type Error = ProviderError;

    async fn root_volume(
        &self,
        region: &str,
        image: &str,
    ) -> Result<Option<RootVolume>, ProviderError> {
        let out = self
            .ec2(region)
            .describe_images()
            .filters(id_filter("image-id", &[image.to_owned()]))
            .include_deprecated(true)
            .send()
            .await
            .map_err(|e| err("DescribeImages", region, e))?;
        Ok(out.images().first().and_then(root_volume_of))
    }

    async fn spot_price(&self, key: &crate::cost::Key) -> Result<Option<f64>, ProviderError> {
        // From now: EC2 answers with the price in effect now in each zone.
        let mut pages = self
            .ec2(&key.region)
            .describe_spot_price_history()
            .instance_types(InstanceType::from(&*key.instance_type))
            .product_descriptions("Linux/UNIX")
            .start_time(aws_sdk_ec2::primitives::DateTime::from(
                std::time::SystemTime::now(),
            ))
            .into_paginator()
            .send();
        let mut cheapest: Option<f64> = None;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| err("DescribeSpotPriceHistory", &key.region, e))?;
            for price in page.spot_price_history() {
                if let Some(usd) = price.spot_price().and_then(|p| p.parse::<f64>().ok()) {
                    cheapest = Some(cheapest.map_or(usd, |c| c.min(usd)));
                }
            }
        }
        Ok(cheapest)
    }
}

/// The root device's EBS mapping of `image`: its size and type (gp3 where it names none).
fn root_volume_of(image: &aws_sdk_ec2::types::Image) -> Option<RootVolume> {
    let root = image.root_device_name()?;
    let ebs = (image.block_device_mappings().iter())
        .find(|m| m.device_name() == Some(root))?
        .ebs()?;
    Some(RootVolume {
        gib: u32::try_from(ebs.volume_size()?).ok()?,
        volume_type: ebs
            .volume_type()
            .map_or(DEFAULT_VOLUME_TYPE, |t| t.as_str())
            .to_owned(),
    })
}
