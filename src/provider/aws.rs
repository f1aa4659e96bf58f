//! The `aws` provider: a fresh EC2 instance per attempt, reached over SSH with an ephemeral key
//! pushed through EC2 Instance Connect. The only module that knows EC2.
//!
//! - acquire: RunInstances with the workspace's tags, shutdown behaviour `terminate`, the
//!   watchdog in user data and a ClientToken derived from lineage, address and attempt; an
//!   instance of the same attempt is looked up by its tags first and adopted, so a crash
//!   between launch and record never launches twice (moto ignores ClientToken; EC2 honours it).
//! - reach: one batched DescribeInstances poll for every instance waiting to run ([`Poller`]),
//!   by `instance-id` filter so that an id EC2 does not know (too new to show, or purged an hour
//!   after termination) fails no batch; every wait ends ([`settle`]).
//! - before each connection: the key is pushed again when its 60 s are nearly over; refusals
//!   while the instance boots are retried ([`Aws::push_key_within_boot`]).
//! - before planning: [`preflight`] checks what the plan names against the account.
//!
//! Credentials and region come from the standard chain; `AWS_ENDPOINT_URL` points both clients
//! elsewhere (moto in tests).
//! Throttling (`RequestLimitExceeded`) and 5xx answers are retried by the SDK's standard retry
//! mode with exponential backoff and jitter, bounded by [`MAX_ATTEMPTS`].
//! `InsufficientInstanceCapacity` is retried by [`Ec2::launch`] itself, across the test's
//! subnets and then in rounds bounded by [`CAPACITY_ATTEMPTS`] (see there why).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::interceptors::InterceptorContext;
use aws_sdk_ec2::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::operation::run_instances::RunInstancesError;
use aws_sdk_ec2::types::{
    Filter, InstanceLifecycleType, InstanceMarketOptionsRequest, InstanceStateName, MarketType,
    ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions, Tag, TagSpecification,
};
use base64::Engine as _;
use rand_core::RngCore as _;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Acquire, AcquireError, Acquired, Gone, Provider, ProviderError, Reachable};
use crate::address::{Address, slug};
use crate::plan::{
    AwsSettings, Connect, MachineSettings, Market, MarketKind, ProviderKind, Settings,
};
use crate::remote::{self, Endpoint, EphemeralKey, HostKeys, SshEndpoint};
use crate::state::Machine;
use crate::templates::Artifacts;

mod preflight;
pub use preflight::{CostFacts, preflight};

/// Tag keys every instance carries; destroy finds leaked instances by the first.
pub const TAG_WORKSPACE: &str = "rallyctl:workspace";
pub const TAG_LINEAGE: &str = "rallyctl:lineage";
pub const TAG_TEST: &str = "rallyctl:test";
pub const TAG_RUN: &str = "rallyctl:run";
pub const TAG_ATTEMPT: &str = "rallyctl:attempt";

/// A fresh instance's sshd may take minutes to answer, and a race may lose its connection.
const PATIENCE: Duration = Duration::from_secs(600);
/// An Instance Connect key is honoured for 60 s; push again a little before that runs out.
const KEY_FRESH_FOR: Duration = Duration::from_secs(45);
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long release waits for EC2 to read an instance as on its way out.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a launched instance may take to read `running`, failed DescribeInstances included.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// For a while after RunInstances, EC2 may answer that the new instance does not exist (its API
/// is eventually consistent); an instance launched longer ago than this that EC2 does not know
/// is gone: terminated, then purged (EC2 forgets terminated instances after about an hour).
const NOT_FOUND_GRACE: Duration = Duration::from_secs(120);
/// EC2's error code for an instance id it does not know.
const NOT_FOUND: &str = "InvalidInstanceID.NotFound";
/// Values per DescribeInstances filter that EC2 accepts.
const FILTER_VALUES: usize = 200;

/// Attempts per API call, the first included.
pub const MAX_ATTEMPTS: u32 = 6;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
    Stopping,
    Stopped,
}

impl InstanceState {
    /// Still costs money (or will again): anything not on its way out.
    fn is_alive(self) -> bool {
        !matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
}

#[derive(Debug, Clone)]
struct InstanceInfo {
    id: String,
    state: InstanceState,
    public_ip: Option<String>,
    private_ip: Option<String>,
    subnet: Option<String>,
    zone: Option<String>,
    spot: bool,
    /// EC2's code for the last state change, e.g. `Server.SpotInstanceTermination`.
    state_reason: Option<String>,
}

/// EC2's state reason for a spot instance it reclaimed (`Server.SpotInstanceTermination`,
/// `Server.SpotInstanceShutdown`).
const SPOT_RECLAIMED: &str = "Server.SpotInstance";

struct LaunchRequest {
    region: String,
    ami: String,
    instance_type: String,
    /// Tried in order while EC2 lacks capacity in their zone; `None` is the default subnet.
    subnets: Vec<Option<String>>,
    security_group_ids: Vec<String>,
    user_data: String,
    tags: BTreeMap<String, String>,
    /// Spot capacity, with the most to pay per hour (EC2's cap, the on-demand price, without).
    spot: Option<Option<String>>,
    /// When EC2 refuses spot capacity at launch (`SPOT_REFUSALS`), launch on demand instead,
    /// as `on_interruption = "on_demand"` says for a reclaimed one.
    on_demand_after_spot: bool,
    /// Makes a retried RunInstances idempotent on EC2 (at most 64 ASCII characters); one per
    /// subnet tried ([`subnet_token`]), since EC2 refuses a token reused with other parameters.
    client_token: String,
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

/// The EC2 API calls rallyctl makes, per region.
struct Ec2 {
    base: SdkConfig,
    clients: Mutex<HashMap<String, (aws_sdk_ec2::Client, aws_sdk_ec2instanceconnect::Client)>>,
}

pub struct Aws {
    ec2: Arc<Ec2>,
    key: EphemeralKey,
    known_hosts: PathBuf,
    poller: Arc<Poller>,
    polling: tokio::task::JoinHandle<()>,
    /// When the key was last pushed to each instance.
    pushed: Mutex<HashMap<String, Instant>>,
}

impl Drop for Aws {
    fn drop(&mut self) {
        self.polling.abort();
    }
}

/// One readable line: the service's code and message where it answered, else the first line of
/// what went wrong (a timeout, a refused connection); under `-v`, everything the SDK says.
fn err(
    operation: &'static str,
    region: &str,
    e: impl std::error::Error + ProvideErrorMetadata,
) -> ProviderError {
    let message = match (e.code(), e.message()) {
        _ if crate::ui::verbose() => DisplayErrorContext(&e).to_string(),
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => first_line(&DisplayErrorContext(&e).to_string()),
    };
    ProviderError {
        operation,
        target: region.to_owned(),
        message,
    }
}

/// Whether EC2 not knowing `machine` means it is gone for good rather than too new to show.
fn unknown_means_gone(machine_launched_at: jiff::Timestamp) -> bool {
    let age = jiff::Timestamp::now().duration_since(machine_launched_at);
    age.as_secs() >= NOT_FOUND_GRACE.as_secs() as i64
}

/// Why EC2 not knowing an instance means it is gone, for the user.
fn unknown_reason(id: &str) -> String {
    format!(
        "instance {id} is no longer known to EC2 (terminated and since purged, or launched under other credentials)"
    )
}

/// A ClientToken names one attempt of one test of one state, in at most 64 characters.
fn client_token(lineage: Uuid, address: &Address, attempt: u32) -> String {
    let digest = Sha256::digest(format!("{lineage}\n{address}\n{attempt}"));
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
fn watchdog_after(armed: jiff::Timestamp, settings: &Settings) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(settings.max_runtime)
        .ok()
        .and_then(|d| armed.checked_add(d).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

fn aws_settings(settings: &Settings) -> &AwsSettings {
    match &settings.machine {
        MachineSettings::Aws(a) => a,
        _ => unreachable!("the fleet routes only aws tests here"),
    }
}

fn region_of(machine: &Machine) -> Result<&str, ProviderError> {
    machine.region.as_deref().ok_or_else(|| ProviderError {
        operation: "DescribeInstances",
        target: machine.id.clone(),
        message: "state names no region for this instance".into(),
    })
}

/// Asks the standard chain for credentials once, before an apply writes or launches anything:
/// without them every launch would fail, slowly and many times over.
pub async fn check_credentials() -> Result<(), ProviderError> {
    use aws_sdk_ec2::config::ProvideCredentials as _;
    let fail = |message: String| ProviderError {
        operation: "load credentials",
        target: "the AWS credential chain (environment, profile, SSO, instance role)".into(),
        message,
    };
    let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let chain = config
        .credentials_provider()
        .ok_or_else(|| fail("no credentials are configured".into()))?;
    chain.provide_credentials().await.map(|_| ()).map_err(|e| {
        let full = DisplayErrorContext(e).to_string();
        fail(if crate::ui::verbose() {
            full
        } else {
            first_line(&full)
        })
    })
}

/// The first line of an SDK message, without the list of what it tried that follows.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    line.trim_end_matches("Attempted:").trim_end().to_owned()
}

impl Aws {
    /// Loads credentials and region from the standard chain; the ephemeral key and the known
    /// hosts file of the workspace live in `state_dir`.
    pub async fn from_env(state_dir: &Path, workspace: &str) -> Result<Aws, ProviderError> {
        let base = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .load()
            .await;
        let local = |message: String| ProviderError {
            operation: "ssh key",
            target: state_dir.display().to_string(),
            message,
        };
        std::fs::create_dir_all(state_dir).map_err(|e| local(e.to_string()))?;
        let key = EphemeralKey::generate(state_dir).map_err(|e| local(e.to_string()))?;
        let ec2 = Arc::new(Ec2 {
            base,
            clients: Mutex::default(),
        });
        let poller = Arc::new(Poller {
            waiting: Mutex::default(),
        });
        let polling = tokio::spawn({
            let (poller, ec2) = (poller.clone(), ec2.clone());
            async move { poller.run(&ec2).await }
        });
        Ok(Aws {
            ec2,
            key,
            known_hosts: state_dir.join(format!("{}.known_hosts", slug(workspace))),
            poller,
            polling,
            pushed: Mutex::default(),
        })
    }
}

impl Provider for Aws {
    async fn acquire(&self, req: &Acquire<'_>) -> Result<Acquired, AcquireError> {
        let s = aws_settings(req.settings);
        let ami = s.launch_ami().ok_or_else(|| ProviderError {
            operation: "RunInstances",
            target: s.region.to_string(),
            message: format!(
                "state records no image baked from {} for this test: run `rallyctl bake`",
                s.named_ami()
            ),
        })?;
        let address = req.address.to_string();
        let (lineage, attempt) = (req.lineage.to_string(), req.attempt.to_string());
        // moto ignores ClientToken and a crash can fall between RunInstances and recording its
        // answer, so an instance of this very attempt is looked up by its tags first.
        let found = self
            .ec2
            .find_by_tags(
                &s.region,
                &[
                    (TAG_WORKSPACE, req.workspace),
                    (TAG_LINEAGE, lineage.as_str()),
                    (TAG_TEST, address.as_str()),
                    (TAG_ATTEMPT, attempt.as_str()),
                ],
            )
            .await?;
        let adopted = !found.is_empty();
        let info = match found.into_iter().next() {
            Some(existing) => existing,
            None => {
                // Validation keeps user tags apart from these (plan::load's `tag_problem`).
                let mut tags: BTreeMap<String, String> = s
                    .tags
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_string()))
                    .collect();
                tags.insert(TAG_WORKSPACE.into(), req.workspace.to_owned());
                tags.insert(TAG_LINEAGE.into(), lineage.clone());
                tags.insert(TAG_TEST.into(), address.clone());
                tags.insert(TAG_RUN.into(), req.run_id.to_owned());
                tags.insert(TAG_ATTEMPT.into(), attempt.clone());
                tags.insert(
                    "Name".into(),
                    format!("rallyctl {} {address}", req.workspace)
                        .chars()
                        .take(256)
                        .collect(),
                );
                self.ec2
                    .launch(
                        &LaunchRequest {
                            region: s.region.to_string(),
                            ami: ami.to_owned(),
                            instance_type: s.instance_type.to_string(),
                            subnets: s
                                .subnets
                                .candidates()
                                .into_iter()
                                .map(|id| id.map(str::to_owned))
                                .collect(),
                            security_group_ids: s
                                .security_group_ids
                                .iter()
                                .map(|g| g.to_string())
                                .collect(),
                            user_data: req.artifacts.user_data.to_string(),
                            tags,
                            spot: match &s.market {
                                Market::Spot(o)
                                    if req.reclaimed == 0
                                        || o.on_interruption == MarketKind::Spot =>
                                {
                                    Some(o.max_price.as_ref().map(|p| p.to_string()))
                                }
                                _ => None,
                            },
                            on_demand_after_spot: matches!(
                                &s.market,
                                Market::Spot(o) if o.on_interruption == MarketKind::OnDemand
                            ),
                            client_token: client_token(req.lineage, req.address, req.attempt),
                        },
                        req.on_wait,
                    )
                    .await?
            }
        };
        // EC2 answers a launch repeated with a ClientToken (an apply killed before it recorded
        // the answer) with the instance it made then, even terminated.
        if !info.state.is_alive() {
            return Err(AcquireError::Spent(format!(
                "{} that this attempt launched before reads {:?}",
                info.id, info.state
            )));
        }
        let launched_at = jiff::Timestamp::now();
        Ok(Acquired {
            machine: Machine {
                // Armed at boot, which is after this: the watchdog fires no earlier.
                expires_at: Some(watchdog_after(launched_at, req.settings)),
                launched_at,
                region: Some(s.region.to_string()),
                subnet: info.subnet,
                zone: info.zone,
                spot: info.spot,
                ..Machine::acquired(ProviderKind::Aws, info.id)
            },
            adopted,
        })
    }

    async fn reach(
        &self,
        machine: &Machine,
        settings: &Settings,
    ) -> Result<Reachable, ProviderError> {
        let s = aws_settings(settings);
        let region = region_of(machine)?;
        let info = self
            .poller
            .wait_running(region, &machine.id, machine.launched_at)
            .await
            .map_err(|message| ProviderError {
                operation: "DescribeInstances",
                target: region.to_owned(),
                message,
            })?;
        let host = match s.connect {
            Connect::PublicIp => info.public_ip,
            Connect::PrivateIp => info.private_ip,
        }
        .ok_or_else(|| ProviderError {
            operation: "DescribeInstances",
            target: region.to_owned(),
            message: format!(
                "instance {} has no {:?} address to connect to",
                machine.id, s.connect
            ),
        })?;
        Ok(Reachable {
            endpoint: self.endpoint(machine, s, host),
            patience: PATIENCE,
            refused_key_is_transient: true,
        })
    }

    async fn before_connect(
        &self,
        machine: &Machine,
        settings: &Settings,
        after_failure: bool,
    ) -> Result<(), ProviderError> {
        let fresh = !after_failure
            && self
                .pushed
                .lock()
                .expect("key push lock")
                .get(&machine.id)
                .is_some_and(|t| t.elapsed() < KEY_FRESH_FOR);
        if fresh {
            return Ok(());
        }
        let user = &aws_settings(settings).ssh_user;
        self.push_key_within_boot(machine, user).await?;
        self.pushed
            .lock()
            .expect("key push lock")
            .insert(machine.id.clone(), Instant::now());
        Ok(())
    }

    async fn gone(&self, machine: &Machine) -> Result<Option<Gone>, ProviderError> {
        let region = region_of(machine)?;
        let infos = self
            .ec2
            .describe(region, std::slice::from_ref(&machine.id))
            .await?;
        Ok(match infos.iter().find(|i| i.id == machine.id) {
            Some(i) if i.state.is_alive() => None,
            Some(i) => match &i.state_reason {
                Some(code) if code.starts_with(SPOT_RECLAIMED) => Some(Gone {
                    reason: format!("EC2 reclaimed spot instance {} ({code})", machine.id),
                    reclaimed: true,
                }),
                _ => Some(Gone::vanished(format!(
                    "instance {} was terminated outside rallyctl (it reads {:?})",
                    machine.id, i.state
                ))),
            },
            None if unknown_means_gone(machine.launched_at) => {
                Some(Gone::vanished(unknown_reason(&machine.id)))
            }
            None => None,
        })
    }

    /// Runs the user data's watchdog again: `shutdown -h +N` replaces the shutdown it
    /// scheduled at boot and the deadline a reboot schedules it for again moves with it, so
    /// the instance lives `max_runtime` from now.
    async fn extend(
        &self,
        machine: &Machine,
        settings: &Settings,
        artifacts: &Artifacts,
        endpoint: &Endpoint,
    ) -> Result<Option<jiff::Timestamp>, ProviderError> {
        self.before_connect(machine, settings, false).await?;
        let expires = watchdog_after(jiff::Timestamp::now(), settings);
        let rearm = "if [ \"$(id -u)\" -eq 0 ]; then bash -s; else sudo -n bash -s; fi";
        remote::exec(
            endpoint,
            rearm,
            artifacts.user_data.as_bytes(),
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| ProviderError {
            operation: "re-arm the watchdog",
            target: machine.id.clone(),
            message: e.to_string(),
        })?;
        Ok(Some(expires))
    }

    async fn release(&self, machine: &Machine, settings: &Settings) -> Result<(), ProviderError> {
        let region = region_of(machine)?;
        if let Some(host) = &machine.address {
            remote::close(&self.endpoint(machine, aws_settings(settings), host.clone())).await;
        }
        let ids = std::slice::from_ref(&machine.id);
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        let timed_out = |what: &str| ProviderError {
            operation: "TerminateInstances",
            target: region.to_owned(),
            message: format!(
                "{} {what} after {} s",
                machine.id,
                RELEASE_TIMEOUT.as_secs()
            ),
        };
        // An instance EC2 does not know yet is waited for: terminating it must not be skipped
        // because the API lags. One it no longer knows costs nothing.
        while !self.ec2.terminate(region, ids).await? {
            if unknown_means_gone(machine.launched_at) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(timed_out("is still unknown to EC2"));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        // Released means no longer costing money: wait until EC2 reads it on its way out.
        loop {
            let alive = self
                .ec2
                .describe(region, ids)
                .await?
                .iter()
                .any(|i| i.state.is_alive());
            if !alive {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(timed_out("still reads as running"));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn leaked(
        &self,
        workspace: &str,
        settings: &[&Settings],
    ) -> Result<Vec<Machine>, ProviderError> {
        let mut regions: Vec<&str> = settings.iter().map(|s| &*aws_settings(s).region).collect();
        regions.sort();
        regions.dedup();
        let mut found = Vec::new();
        for region in regions {
            for info in self
                .ec2
                .find_by_tags(region, &[(TAG_WORKSPACE, workspace)])
                .await?
            {
                found.push(Machine {
                    region: Some(region.to_owned()),
                    ..Machine::acquired(ProviderKind::Aws, info.id)
                });
            }
        }
        Ok(found)
    }
}

impl Aws {
    /// How to reach `machine` at `host`, its address.
    fn endpoint(&self, machine: &Machine, s: &AwsSettings, host: String) -> Endpoint {
        Endpoint::Ssh(SshEndpoint {
            host,
            port: s.ssh_port,
            user: Some(s.ssh_user.to_string()),
            identity: Some(self.key.path().to_owned()),
            // Addresses get reused by later instances, so the host key is filed under the
            // instance id, not the address.
            host_keys: HostKeys::FirstUse {
                file: self.known_hosts.clone(),
                alias: machine.id.clone(),
            },
        })
    }

    /// Pushes the key, retrying what Instance Connect refuses while an instance boots (it
    /// reads `running` a little before Instance Connect agrees) or under load (throttling),
    /// until [`BOOT_TIMEOUT`] after launch; then says what to check.
    async fn push_key_within_boot(
        &self,
        machine: &Machine,
        user: &str,
    ) -> Result<(), ProviderError> {
        let region = region_of(machine)?;
        let boot_ends =
            machine.launched_at + jiff::SignedDuration::from_secs(BOOT_TIMEOUT.as_secs() as i64);
        let mut delay = POLL_INTERVAL;
        loop {
            let refusal = match self
                .ec2
                .push_key(region, &machine.id, user, &self.key.public_openssh)
                .await
            {
                Ok(()) => return Ok(()),
                Err(KeyPush::Refused(code, e)) => (code, e),
                Err(KeyPush::Failed(e)) => return Err(e),
            };
            if jiff::Timestamp::now() >= boot_ends {
                let (code, e) = refusal;
                return Err(ProviderError {
                    message: format!(
                        "{}; EC2 Instance Connect still refuses the key for {} ({code}) {} s after launch: check that the instance runs, that its AMI has the Instance Connect agent (Amazon Linux 2023, Ubuntu 20.04 and later do), and that its security group lets SSH in from here",
                        e.message,
                        machine.id,
                        BOOT_TIMEOUT.as_secs()
                    ),
                    ..e
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(15));
        }
    }
}

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
    TagSpecification::builder()
        .resource_type(kind)
        .tags(Tag::builder().key(TAG_WORKSPACE).value(workspace).build())
        .tags(Tag::builder().key("Name").value(name).build())
        .build()
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

/// Why a key push failed: refused for now (worth asking again while the instance boots), or
/// failed.
enum KeyPush {
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
/// [`BOOT_TIMEOUT`]; a waiter that stopped waiting (Ctrl-C) is dropped.
struct Poller {
    waiting: Mutex<Vec<Waiter>>,
}

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
    async fn wait_running(
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
        rx.await.map_err(|_| "apply is stopping".to_owned())?
    }

    async fn run(&self, ec2: &Ec2) {
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
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

impl Ec2 {
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
    }
}

/// RunInstances of `r` into `subnet`, on spot capacity at `spot`'s price cap when given, as
/// launching and its dry run at plan time both ask it; the ClientToken is the launch's to add
/// ([`launch_token`]; a dry run must not spend it).
fn run_request(
    ec2: &aws_sdk_ec2::Client,
    r: &LaunchRequest,
    subnet: &Option<String>,
    spot: Option<&Option<String>>,
) -> aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder {
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .set_tags(Some(
            r.tags
                .iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .build();
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
    async fn launch(
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
    async fn describe(
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
    async fn terminate(&self, region: &str, ids: &[String]) -> Result<bool, ProviderError> {
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
        self.describe_filtered(region, filters).await
    }

    async fn describe_filtered(
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

    async fn push_key(
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

fn id_filter(name: &str, values: &[String]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.to_vec()))
        .build()
}

#[cfg(test)]
mod tests {
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
        let t1 = client_token(l, &a, 1);
        assert_eq!(t1.len(), 64);
        assert!(t1.is_ascii());
        assert_eq!(t1, client_token(l, &a, 1));
        assert_ne!(t1, client_token(l, &a, 2));
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
