//! EC2 instances: RunInstances with tags, ClientToken, spot market options and capacity
//! retries across subnets; the batched DescribeInstances poller; Instance Connect key pushes;
//! TerminateInstances.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::types::{
    Filter, InstanceLifecycleType, InstanceMarketOptionsRequest, InstanceStateName, MarketType,
    Placement, ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions,
};
use base64::Engine as _;
use rand_core::RngCore as _;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{
    BOOT_TIMEOUT, Ec2, FILTER_VALUES, POLL_INTERVAL, err, preflight, tag_spec, unknown_means_gone,
    unknown_reason,
};
use crate::address::Address;
use crate::provider::{AcquireError, ProviderError};

/// RunInstances attempts on `InsufficientInstanceCapacity`, the first included.
pub const CAPACITY_ATTEMPTS: u32 = 4;
/// Delay before the first capacity retry; it doubles per retry up to [`CAPACITY_MAX_DELAY`],
/// and each delay is jittered down to half of it at random.
const CAPACITY_BASE_DELAY: Duration = Duration::from_secs(1);
const CAPACITY_MAX_DELAY: Duration = Duration::from_secs(8);
const INSUFFICIENT_CAPACITY: &str = "InsufficientInstanceCapacity";
/// EC2's answer when the instance type is not offered in the subnet's Availability Zone.
const UNSUPPORTED: &str = "Unsupported";
/// EC2's answer when the account's running On-Demand vCPUs of the type's family would exceed
/// its quota: it stays so until instances end or the quota is raised, so it is not retried.
const VCPU_LIMIT_EXCEEDED: &str = "VcpuLimitExceeded";

/// `VcpuLimitExceeded` with the quota named, which EC2's message does not.
fn vcpu_limit_exceeded(r: &LaunchRequest, e: ProviderError) -> ProviderError {
    let quota = if preflight::is_standard(&r.instance_type) {
        preflight::STANDARD_QUOTA_NAME.to_owned()
    } else {
        format!(
            "Running On-Demand vCPU quota of {}'s instance family (Service Quotas, service ec2)",
            r.instance_type
        )
    };
    ProviderError {
        message: format!(
            "{}; the account's {} in {} is used up: ask for more there, or run fewer tests at once (--parallelism; plan warns when the quota cannot hold them)",
            e.message, quota, r.region
        ),
        ..e
    }
}

/// EC2 answers `InsufficientInstanceCapacity` with HTTP 500, so the SDK's status-code classifier
/// would retry it within one call, back to back with throttling retries. Capacity comes back on
/// another time scale than a throttled API, so this forbids the SDK's retry for that code and
/// [`Ec2::launch`] retries it on its own, smaller bound.
#[derive(Debug)]
pub(super) struct NoSdkRetryOnCapacity;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
}

impl InstanceState {
    /// Still costs money (or will again): anything not on its way out.
    pub(super) fn is_alive(self) -> bool {
        !matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
}

#[derive(Debug, Clone)]
pub(super) struct InstanceInfo {
    pub(super) id: String,
    pub(super) state: InstanceState,
    pub(super) public_ip: Option<String>,
    pub(super) private_ip: Option<String>,
    pub(super) subnet: Option<String>,
    pub(super) zone: Option<String>,
    pub(super) spot: bool,
    /// EC2's code for the last state change, e.g. `Server.SpotInstanceTermination`.
    pub(super) state_reason: Option<String>,
    /// The cluster member it was launched as ([`super::TAG_MEMBER`]); none for the machine a
    /// test races from.
    pub(super) member: Option<String>,
}

/// EC2's state reason for a spot instance it reclaimed (`Server.SpotInstanceTermination`,
/// `Server.SpotInstanceShutdown`).
pub(super) const SPOT_RECLAIMED: &str = "Server.SpotInstance";

pub(super) struct LaunchRequest {
    pub(super) region: String,
    pub(super) ami: String,
    pub(super) instance_type: String,
    /// Tried in order while EC2 lacks capacity in their zone; `None` is the default subnet.
    pub(super) subnets: Vec<Option<String>>,
    pub(super) security_group_ids: Vec<String>,
    pub(super) user_data: String,
    /// The placement group to launch into, made before ([`super::placement`]).
    pub(super) placement_group: Option<String>,
    pub(super) tags: BTreeMap<String, String>,
    /// Spot capacity, with the most to pay per hour (EC2's cap, the on-demand price, without).
    pub(super) spot: Option<Option<String>>,
    /// When EC2 refuses spot capacity at launch (`SPOT_REFUSALS`), launch on demand instead,
    /// as `on_interruption = "on_demand"` says for a reclaimed one.
    pub(super) on_demand_after_spot: bool,
    /// Makes a retried RunInstances idempotent on EC2 (at most 64 ASCII characters); one per
    /// subnet tried ([`subnet_token`]), since EC2 refuses a token reused with other parameters.
    pub(super) client_token: String,
}

/// What EC2 answers a spot launch that gets no spot capacity: the price cap is below the spot
/// price, the account's spot limit is reached, or there is none in the zone.
const SPOT_REFUSALS: [&str; 3] = [
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    INSUFFICIENT_CAPACITY,
];
/// EC2's answer to a ClientToken used before with other parameters.
const TOKEN_MISMATCH: &str = "IdempotentParameterMismatch";
/// EC2's error code for an instance id it does not know.
const NOT_FOUND: &str = "InvalidInstanceID.NotFound";

/// A ClientToken names one attempt of one test of one state, in at most 64 characters.
pub(super) fn client_token(
    lineage: Uuid,
    address: &Address,
    attempt: u32,
    member: Option<&str>,
) -> String {
    let digest = match member {
        None => Sha256::digest(format!("{lineage}\n{address}\n{attempt}")),
        Some(member) => Sha256::digest(format!("{lineage}\n{address}\n{attempt}\n{member}")),
    };
    hex::encode(digest)[..64].to_owned()
}

/// The ClientToken of a launch into `subnet`: the attempt's own when there is one subnet to
/// try, else one per subnet.
fn subnet_token(token: &str, subnet: Option<&str>, subnets: &[Option<String>]) -> String {
    match (subnets.len(), subnet) {
        (2.., Some(subnet)) => {
            hex::encode(Sha256::digest(format!("{token}\n{subnet}")))[..64].to_owned()
        }
        _ => token.to_owned(),
    }
}

/// When the watchdog armed at `armed` shuts the instance down.
pub(super) fn watchdog_after(armed: jiff::Timestamp, max_runtime: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(max_runtime)
        .ok()
        .and_then(|d| armed.checked_add(d).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

/// Why a key push failed: refused for now (worth asking again while the instance boots), or
/// failed.
pub(super) enum KeyPush {
    Refused(String, ProviderError),
    Failed(ProviderError),
}

/// Instance Connect's answers that pass: the instance is not running yet, is briefly
/// unavailable, the API is throttled, or (just after launch) does not know the instance yet.
const KEY_REFUSALS: &[&str] = &[
    "EC2InstanceStateInvalidException",
    "EC2InstanceUnavailableException",
    "ThrottlingException",
    "EC2InstanceNotFoundException",
];

/// Waits for instances to read `running` with one DescribeInstances per region per tick for
/// all of them, however many tests are booting. Every wait ends: running, gone, or past
/// [`BOOT_TIMEOUT`]; a waiter that stopped waiting (Ctrl-C) is dropped. Idle, it asks as soon
/// as someone waits (after [`GATHER`]) rather than at its next tick: a kept machine, running
/// already, would otherwise spend up to a tick of its boot on that sleep alone.
#[derive(Default)]
pub(super) struct Poller {
    waiting: Mutex<Vec<Waiter>>,
    arrived: tokio::sync::Notify,
}

/// How long an idle poller waits for the waiters that come together (the tests of a suite
/// launched at once) to ask for them in one call.
const GATHER: Duration = Duration::from_millis(50);

/// An instance someone waits on: where it is, when it was launched, until when to wait, and
/// where to send it once running.
struct Waiter {
    region: String,
    id: String,
    launched_at: jiff::Timestamp,
    deadline: Instant,
    reply: oneshot::Sender<Result<InstanceInfo, String>>,
}

impl Poller {
    pub(super) async fn wait_running(
        &self,
        region: &str,
        id: &str,
        launched_at: jiff::Timestamp,
    ) -> Result<InstanceInfo, String> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("poller lock").push(Waiter {
            region: region.to_owned(),
            id: id.to_owned(),
            launched_at,
            deadline: Instant::now() + BOOT_TIMEOUT,
            reply: tx,
        });
        self.arrived.notify_one();
        rx.await.map_err(|_| "apply is stopping".to_owned())?
    }

    pub(super) async fn run(&self, ec2: &Ec2) {
        loop {
            let idle = self.waiting.lock().expect("poller lock").is_empty();
            if idle {
                // A waiter that came since holds a permit: this returns at once.
                self.arrived.notified().await;
                tokio::time::sleep(GATHER).await;
            } else {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            let waiting = std::mem::take(&mut *self.waiting.lock().expect("poller lock"));
            let mut by_region: BTreeMap<String, Vec<Waiter>> = BTreeMap::new();
            for w in waiting.into_iter().filter(|w| !w.reply.is_closed()) {
                by_region.entry(w.region.clone()).or_default().push(w);
            }
            for (region, group) in by_region {
                let ids: Vec<String> = group.iter().map(|w| w.id.clone()).collect();
                let answer = ec2.describe(&region, &ids).await;
                for w in group {
                    match settle(&w, &answer) {
                        Some(outcome) => {
                            let _ = w.reply.send(outcome);
                        }
                        None => self.waiting.lock().expect("poller lock").push(w),
                    }
                }
            }
        }
    }
}

/// What a DescribeInstances answer means for one waiter: running, failed, or (`None`) ask again.
fn settle(
    w: &Waiter,
    answer: &Result<Vec<InstanceInfo>, ProviderError>,
) -> Option<Result<InstanceInfo, String>> {
    let waited = BOOT_TIMEOUT.as_secs();
    let overdue = Instant::now() >= w.deadline;
    match answer
        .as_ref()
        .map(|infos| infos.iter().find(|i| i.id == w.id))
    {
        Ok(Some(info)) if info.state == InstanceState::Running => Some(Ok(info.clone())),
        Ok(Some(info)) if !info.state.is_alive() || info.state == InstanceState::Stopped => {
            Some(Err(format!(
                "instance {} is {:?} instead of running",
                w.id, info.state
            )))
        }
        Ok(None) if unknown_means_gone(w.launched_at) => Some(Err(unknown_reason(&w.id))),
        _ if !overdue => None,
        Ok(Some(info)) => Some(Err(format!(
            "instance {} still reads {:?} after {waited} s",
            w.id, info.state
        ))),
        Ok(None) => Some(Err(format!(
            "instance {} is still unknown to EC2 after {waited} s",
            w.id
        ))),
        Err(e) => Some(Err(format!(
            "{e} (DescribeInstances kept failing for {waited} s while {} booted)",
            w.id
        ))),
    }
}

fn info(i: &aws_sdk_ec2::types::Instance) -> InstanceInfo {
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
        state,
        public_ip: i.public_ip_address().map(str::to_owned),
        private_ip: i.private_ip_address().map(str::to_owned),
        subnet: i.subnet_id().map(str::to_owned),
        zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .map(str::to_owned),
        spot: i.instance_lifecycle() == Some(&InstanceLifecycleType::Spot),
        state_reason: i.state_reason().and_then(|r| r.code()).map(str::to_owned),
        member: (i.tags().iter())
            .find(|t| t.key() == Some(super::TAG_MEMBER))
            .and_then(|t| t.value())
            .map(str::to_owned),
    }
}

/// RunInstances of `r` into `subnet`, on spot capacity at `spot`'s price cap when given, as
/// launching and its dry run at plan time both ask it; the ClientToken is the launch's to add
/// ([`launch_token`]; a dry run must not spend it).
pub(super) fn run_request(
    ec2: &aws_sdk_ec2::Client,
    r: &LaunchRequest,
    subnet: &Option<String>,
    spot: Option<&Option<String>>,
) -> aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder {
    let tags = tag_spec(
        ResourceType::Instance,
        (r.tags.iter()).map(|(k, v)| (k.as_str(), v.as_str())),
    );
    ec2.run_instances()
        .image_id(&r.ami)
        .instance_type(r.instance_type.as_str().into())
        .set_subnet_id(subnet.clone())
        .set_security_group_ids(
            (!r.security_group_ids.is_empty()).then(|| r.security_group_ids.clone()),
        )
        .min_count(1)
        .max_count(1)
        .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
        .user_data(base64::engine::general_purpose::STANDARD.encode(&r.user_data))
        .set_placement(
            (r.placement_group.as_ref())
                .map(|group| Placement::builder().group_name(group).build()),
        )
        .tag_specifications(tags)
        .set_instance_market_options(spot.map(|max_price| {
            InstanceMarketOptionsRequest::builder()
                .market_type(MarketType::Spot)
                .spot_options(
                    SpotMarketOptions::builder()
                        .set_max_price(max_price.clone())
                        .spot_instance_type(SpotInstanceType::OneTime)
                        .build(),
                )
                .build()
        }))
}

/// The ClientToken of launching `r` into `subnet`; `on_demand_after_spot` when launching on
/// demand because EC2 refused the spot launch: another request, which EC2 must not take for a
/// repeat of that one.
fn launch_token(r: &LaunchRequest, subnet: &Option<String>, on_demand_after_spot: bool) -> String {
    let token = subnet_token(&r.client_token, subnet.as_deref(), &r.subnets);
    match on_demand_after_spot {
        true => hex::encode(Sha256::digest(format!("{token}\non-demand")))[..64].to_owned(),
        false => token,
    }
}

impl Ec2 {
    /// RunInstances in the first subnet with capacity. A round tries each subnet in order;
    /// when every one lacks capacity the round is repeated after a delay, up to
    /// [`CAPACITY_ATTEMPTS`] rounds. `Unsupported` (the instance type is not offered in that
    /// zone) moves on to the next subnet but is not worth a round of its own.
    pub(super) async fn launch(
        &self,
        r: &LaunchRequest,
        tell: &(dyn Fn(String) + Sync),
    ) -> Result<InstanceInfo, AcquireError> {
        let ec2 = self.ec2(&r.region);
        let mut refusals: Vec<String> = Vec::new();
        let mut spot = r.spot.clone();
        for round in 1..=CAPACITY_ATTEMPTS {
            refusals.clear();
            let mut any_capacity_shortage = false;
            for subnet in &r.subnets {
                let mut result = run_request(&ec2, r, subnet, spot.as_ref())
                    .client_token(launch_token(r, subnet, false))
                    .send()
                    .await;
                if let Err(e) = &result
                    && spot.is_some()
                    && r.on_demand_after_spot
                    && SPOT_REFUSALS.contains(&e.code().unwrap_or_default())
                {
                    tell(format!(
                        "no spot capacity ({}: {}); launching on demand",
                        e.code().unwrap_or_default(),
                        e.message().unwrap_or("no message")
                    ));
                    spot = None;
                    result = run_request(&ec2, r, subnet, None)
                        .client_token(launch_token(r, subnet, true))
                        .send()
                        .await;
                }
                let e = match result {
                    Ok(out) => {
                        return out.instances().first().map(info).ok_or_else(|| {
                            ProviderError {
                                operation: "RunInstances",
                                target: r.region.clone(),
                                message: "the answer named no instance".into(),
                            }
                            .into()
                        });
                    }
                    Err(e) => e,
                };
                let code = e.code().unwrap_or_default();
                if code == TOKEN_MISMATCH {
                    return Err(AcquireError::Spent(format!(
                        "this attempt launched before with other parameters ({code})"
                    )));
                }
                if code == VCPU_LIMIT_EXCEEDED {
                    return Err(vcpu_limit_exceeded(r, err("RunInstances", &r.region, e)).into());
                }
                if code != INSUFFICIENT_CAPACITY && code != UNSUPPORTED {
                    return Err(err("RunInstances", &r.region, e).into());
                }
                any_capacity_shortage |= code == INSUFFICIENT_CAPACITY;
                let why = format!("{code}: {}", e.message().unwrap_or("no message"));
                refusals.push(match subnet {
                    Some(id) if r.subnets.len() > 1 => format!("{id}: {why}"),
                    _ => why,
                });
            }
            if !any_capacity_shortage || round == CAPACITY_ATTEMPTS {
                let rounds = if any_capacity_shortage {
                    format!(" (gave up after {round} attempts)")
                } else {
                    String::new()
                };
                return Err(ProviderError {
                    operation: "RunInstances",
                    target: r.region.clone(),
                    message: format!("{}{rounds}", refusals.join("; ")),
                }
                .into());
            }
            tokio::time::sleep(capacity_delay(round)).await;
        }
        unreachable!("the last round returns")
    }

    /// The instances among `ids` that EC2 knows. Asked with an `instance-id` filter, not with
    /// `InstanceIds`: then a single id EC2 does not know (a new instance it does not show yet,
    /// one purged an hour after termination) would fail the whole call.
    pub(super) async fn describe(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<InstanceInfo>, ProviderError> {
        let mut found = Vec::new();
        for chunk in ids.chunks(FILTER_VALUES) {
            let filter = Filter::builder()
                .name("instance-id")
                .set_values(Some(chunk.to_vec()))
                .build();
            found.extend(self.describe_filtered(region, vec![filter]).await?);
        }
        Ok(found)
    }

    /// Terminates `ids`; false when EC2 does not know one of them (it names none then).
    pub(super) async fn terminate(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<bool, ProviderError> {
        match self
            .ec2(region)
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some(NOT_FOUND) => Ok(false),
            Err(e) => Err(err("TerminateInstances", region, e)),
        }
    }

    pub(super) async fn find_by_tags(
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
        self.describe_filtered(region, filters).await
    }

    pub(super) async fn describe_filtered(
        &self,
        region: &str,
        filters: Vec<Filter>,
    ) -> Result<Vec<InstanceInfo>, ProviderError> {
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
                    .map(info),
            );
        }
        Ok(found)
    }

    pub(super) async fn push_key(
        &self,
        region: &str,
        instance_id: &str,
        os_user: &str,
        public_key: &str,
    ) -> Result<(), KeyPush> {
        let out = self
            .clients(region)
            .1
            .send_ssh_public_key()
            .instance_id(instance_id)
            .instance_os_user(os_user)
            .ssh_public_key(public_key)
            .send()
            .await
            .map_err(|e| match e.code() {
                Some(code) if KEY_REFUSALS.contains(&code) => {
                    KeyPush::Refused(code.to_owned(), err("SendSSHPublicKey", region, e))
                }
                _ => KeyPush::Failed(err("SendSSHPublicKey", region, e)),
            })?;
        if out.success() {
            Ok(())
        } else {
            Err(KeyPush::Refused(
                "success=false".into(),
                ProviderError {
                    operation: "SendSSHPublicKey",
                    target: region.to_owned(),
                    message: format!("not accepted for {instance_id}"),
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::NOT_FOUND_GRACE;
    use super::*;

    /// A waiter for instance `i-1`, launched `age` ago, whose boot wait is over or not.
    fn waiter(age: Duration, overdue: bool) -> Waiter {
        let now = Instant::now();
        Waiter {
            region: "eu-west-1".into(),
            id: "i-1".into(),
            launched_at: jiff::Timestamp::now()
                - jiff::SignedDuration::from_secs(age.as_secs() as i64),
            deadline: if overdue {
                now - Duration::from_secs(1)
            } else {
                now + BOOT_TIMEOUT
            },
            reply: oneshot::channel().0,
        }
    }

    fn instance(state: InstanceState) -> InstanceInfo {
        InstanceInfo {
            id: "i-1".into(),
            state,
            public_ip: None,
            private_ip: Some("10.0.0.1".into()),
            subnet: None,
            zone: None,
            spot: false,
            state_reason: None,
            member: None,
        }
    }

    /// A waiter, what DescribeInstances answered, and what should come of it: `None` is "ask
    /// again", else what the reply says.
    type Case = (
        Waiter,
        Result<Vec<InstanceInfo>, ProviderError>,
        Option<&'static str>,
    );

    /// Every answer EC2 can give a booting instance ends the wait or asks again, and asking
    /// again ends at the boot deadline: unknown past the grace window is gone, unknown while
    /// young is asked again, failing calls are retried until the deadline and then reported.
    #[test]
    fn every_boot_wait_ends() {
        let young = Duration::from_secs(5);
        let old = NOT_FOUND_GRACE + Duration::from_secs(1);
        let api_down = || {
            Err(ProviderError {
                operation: "DescribeInstances",
                target: "eu-west-1".into(),
                message: "RequestLimitExceeded".into(),
            })
        };
        let cases: [Case; 9] = [
            (
                waiter(young, false),
                Ok(vec![instance(InstanceState::Running)]),
                Some("ok"),
            ),
            (
                waiter(young, false),
                Ok(vec![instance(InstanceState::Pending)]),
                None,
            ),
            (
                waiter(young, true),
                Ok(vec![instance(InstanceState::Pending)]),
                Some("still reads Pending"),
            ),
            (
                waiter(young, false),
                Ok(vec![instance(InstanceState::Terminated)]),
                Some("instead of running"),
            ),
            (waiter(young, false), Ok(vec![]), None),
            (
                waiter(young, true),
                Ok(vec![]),
                Some("still unknown to EC2"),
            ),
            (
                waiter(old, false),
                Ok(vec![]),
                Some("no longer known to EC2"),
            ),
            (waiter(young, false), api_down(), None),
            (waiter(young, true), api_down(), Some("kept failing")),
        ];
        for (w, answer, expected) in cases {
            let outcome = settle(&w, &answer).map(|r| match r {
                Ok(_) => "ok".to_owned(),
                Err(e) => e,
            });
            match (expected, outcome) {
                (None, None) => {}
                (Some(want), Some(got)) if got.contains(want) => {}
                (want, got) => panic!("{answer:?}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn client_tokens_are_64_characters_and_differ_per_attempt() {
        let a = Address::new("s", "t").unwrap();
        let l = Uuid::new_v4();
        let t1 = client_token(l, &a, 1, None);
        assert_eq!(t1.len(), 64);
        assert!(t1.is_ascii());
        assert_eq!(t1, client_token(l, &a, 1, None));
        assert_ne!(t1, client_token(l, &a, 2, None));
    }

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
