//! EC2 and EC2 Instance Connect through the AWS SDK for Rust. Credentials and region come
//! from the standard chain; `AWS_ENDPOINT_URL` points both clients elsewhere (moto in tests).
//! Throttling (`RequestLimitExceeded`) and 5xx answers are retried by the SDK's standard retry
//! mode with exponential backoff and jitter, bounded by [`MAX_ATTEMPTS`].
//! `InsufficientInstanceCapacity` is retried by [`Aws::launch`] itself, bounded by
//! [`CAPACITY_ATTEMPTS`] (see there why).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::types::{
    Filter, InstanceStateName, ResourceType, ShutdownBehavior, Tag, TagSpecification,
};
use base64::Engine as _;
use rand_core::RngCore as _;

use super::{InstanceInfo, InstanceState, LaunchRequest, Provider, ProviderError};

/// Attempts per API call, the first included.
pub const MAX_ATTEMPTS: u32 = 6;

/// RunInstances attempts on `InsufficientInstanceCapacity`, the first included.
pub const CAPACITY_ATTEMPTS: u32 = 4;
/// Delay before the first capacity retry; it doubles per retry up to [`CAPACITY_MAX_DELAY`],
/// and each delay is jittered down to half of it at random.
const CAPACITY_BASE_DELAY: Duration = Duration::from_secs(1);
const CAPACITY_MAX_DELAY: Duration = Duration::from_secs(8);
const INSUFFICIENT_CAPACITY: &str = "InsufficientInstanceCapacity";

/// EC2 answers `InsufficientInstanceCapacity` with HTTP 500, so the SDK's status-code classifier
/// would retry it within one call, back to back with throttling retries. Capacity comes back on
/// another time scale than a throttled API, so this forbids the SDK's retry for that code and
/// [`Aws::launch`] retries it on its own, smaller bound.
#[derive(Debug)]
struct NoSdkRetryOnCapacity;

impl ClassifyRetry for NoSdkRetryOnCapacity {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let code = match ctx.output_or_error() {
            Some(Err(e)) => e
                .as_operation_error()
                .and_then(|e| e.downcast_ref::<RunInstancesError>())
                .and_then(|e| e.code()),
            _ => None,
        };
        if code == Some(INSUFFICIENT_CAPACITY) {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "no SDK retry on InsufficientInstanceCapacity"
    }
}

/// The delay before capacity retry `retry` (1-based): base doubling, capped, jittered into
/// [half, whole] so that many tests short of capacity at once do not retry in lockstep.
fn capacity_delay(retry: u32) -> Duration {
    let full = CAPACITY_BASE_DELAY
        .saturating_mul(1 << (retry - 1).min(16))
        .min(CAPACITY_MAX_DELAY);
    let jitter = f64::from(rand_core::OsRng.next_u32()) / f64::from(u32::MAX);
    full.mul_f64(0.5 + 0.5 * jitter)
}

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
                    .retry_classifier(NoSdkRetryOnCapacity)
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
        // RunInstances carries a ClientToken, so a retry cannot launch a second instance.
        let ec2 = self.ec2(&r.region);
        let mut attempt = 1;
        let out = loop {
            let result = ec2
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
                .tag_specifications(tags.clone())
                .client_token(&r.client_token)
                .send()
                .await;
            match result {
                Ok(out) => break out,
                Err(e)
                    if e.code() == Some(INSUFFICIENT_CAPACITY) && attempt < CAPACITY_ATTEMPTS =>
                {
                    tokio::time::sleep(capacity_delay(attempt)).await;
                    attempt += 1;
                }
                Err(e) if e.code() == Some(INSUFFICIENT_CAPACITY) => {
                    return Err(ProviderError {
                        operation: "RunInstances",
                        region: r.region.clone(),
                        message: format!(
                            "{INSUFFICIENT_CAPACITY}: {} (gave up after {attempt} attempts)",
                            e.message().unwrap_or("no message")
                        ),
                    });
                }
                Err(e) => return Err(err("RunInstances", &r.region, e)),
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_delays_double_are_capped_and_jittered_down_to_half() {
        for retry in 1..=10 {
            let full = (CAPACITY_BASE_DELAY * 2u32.pow(retry - 1)).min(CAPACITY_MAX_DELAY);
            for _ in 0..50 {
                let d = capacity_delay(retry);
                assert!(
                    d >= full / 2 && d <= full,
                    "retry {retry}: {d:?} vs {full:?}"
                );
            }
        }
    }
}
