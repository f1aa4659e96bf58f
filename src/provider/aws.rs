//! EC2 and EC2 Instance Connect through the AWS SDK for Rust. Credentials and region come
//! from the standard chain; `AWS_ENDPOINT_URL` points both clients elsewhere (moto in tests).
//! Throttling, capacity and 5xx answers are retried by the SDK's standard retry mode with
//! exponential backoff and jitter, bounded by [`MAX_ATTEMPTS`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{
    Filter, InstanceStateName, ResourceType, ShutdownBehavior, Tag, TagSpecification,
};
use base64::Engine as _;

use super::{InstanceInfo, InstanceState, LaunchRequest, Provider, ProviderError};

/// Attempts per API call, the first included.
pub const MAX_ATTEMPTS: u32 = 6;

pub struct Aws {
    base: SdkConfig,
    clients: Mutex<HashMap<String, (aws_sdk_ec2::Client, aws_sdk_ec2instanceconnect::Client)>>,
}

fn err(operation: &'static str, region: &str, e: impl std::error::Error) -> ProviderError {
    ProviderError {
        operation,
        region: region.to_owned(),
        message: DisplayErrorContext(e).to_string(),
    }
}

impl Aws {
    pub async fn from_env() -> Aws {
        let base = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .load()
            .await;
        Aws {
            base,
            clients: Mutex::default(),
        }
    }

    fn clients(&self, region: &str) -> (aws_sdk_ec2::Client, aws_sdk_ec2instanceconnect::Client) {
        let mut clients = self.clients.lock().expect("client cache lock");
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let ec2 = aws_sdk_ec2::config::Builder::from(&self.base)
                    .region(Region::new(region.to_owned()))
                    .build();
                let eic = aws_sdk_ec2instanceconnect::config::Builder::from(&self.base)
                    .region(Region::new(region.to_owned()))
                    .build();
                (
                    aws_sdk_ec2::Client::from_conf(ec2),
                    aws_sdk_ec2instanceconnect::Client::from_conf(eic),
                )
            })
            .clone()
    }

    fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        self.clients(region).0
    }
}

fn info(region: &str, i: &aws_sdk_ec2::types::Instance) -> InstanceInfo {
    let state = match i.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Running) => InstanceState::Running,
        Some(InstanceStateName::ShuttingDown) => InstanceState::ShuttingDown,
        Some(InstanceStateName::Terminated) => InstanceState::Terminated,
        Some(InstanceStateName::Stopping) => InstanceState::Stopping,
        Some(InstanceStateName::Stopped) => InstanceState::Stopped,
        _ => InstanceState::Pending,
    };
    InstanceInfo {
        id: i.instance_id().unwrap_or_default().to_owned(),
        region: region.to_owned(),
        state,
        public_ip: i.public_ip_address().map(str::to_owned),
        private_ip: i.private_ip_address().map(str::to_owned),
        tags: i
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect::<BTreeMap<_, _>>(),
    }
}

impl Provider for Aws {
    async fn launch(&self, r: &LaunchRequest) -> Result<InstanceInfo, ProviderError> {
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(
                r.tags
                    .iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .build();
        let out = self
            .ec2(&r.region)
            .run_instances()
            .image_id(&r.ami)
            .instance_type(r.instance_type.as_str().into())
            .set_subnet_id(r.subnet_id.clone())
            .set_security_group_ids(
                (!r.security_group_ids.is_empty()).then(|| r.security_group_ids.clone()),
            )
            .min_count(1)
            .max_count(1)
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .user_data(base64::engine::general_purpose::STANDARD.encode(&r.user_data))
            .tag_specifications(tags)
            .client_token(&r.client_token)
            .send()
            .await
            .map_err(|e| err("RunInstances", &r.region, e))?;
        out.instances()
            .first()
            .map(|i| info(&r.region, i))
            .ok_or_else(|| ProviderError {
                operation: "RunInstances",
                region: r.region.clone(),
                message: "the answer named no instance".into(),
            })
    }

    async fn describe(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<InstanceInfo>, ProviderError> {
        let out = self
            .ec2(region)
            .describe_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| err("DescribeInstances", region, e))?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| info(region, i))
            .collect())
    }

    async fn terminate(&self, region: &str, ids: &[String]) -> Result<(), ProviderError> {
        self.ec2(region)
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| err("TerminateInstances", region, e))?;
        Ok(())
    }

    async fn find_by_tags(
        &self,
        region: &str,
        tags: &[(&str, &str)],
    ) -> Result<Vec<InstanceInfo>, ProviderError> {
        let mut filters: Vec<Filter> = tags
            .iter()
            .map(|(k, v)| {
                Filter::builder()
                    .name(format!("tag:{k}"))
                    .values(*v)
                    .build()
            })
            .collect();
        filters.push(
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "stopping", "stopped"]
                        .map(String::from)
                        .to_vec(),
                ))
                .build(),
        );
        let mut pages = self
            .ec2(region)
            .describe_instances()
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| err("DescribeInstances", region, e))?;
            found.extend(
                page.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .map(|i| info(region, i)),
            );
        }
        Ok(found)
    }

    async fn push_key(
        &self,
        region: &str,
        instance_id: &str,
        os_user: &str,
        public_key: &str,
    ) -> Result<(), ProviderError> {
        let out = self
            .clients(region)
            .1
            .send_ssh_public_key()
            .instance_id(instance_id)
            .instance_os_user(os_user)
            .ssh_public_key(public_key)
            .send()
            .await
            .map_err(|e| err("SendSSHPublicKey", region, e))?;
        if out.success() {
            Ok(())
        } else {
            Err(ProviderError {
                operation: "SendSSHPublicKey",
                region: region.to_owned(),
                message: format!("not accepted for {instance_id}"),
            })
        }
    }
}
