//! The `aws` provider: a fresh EC2 instance per attempt, reached over SSH with an ephemeral key
//! pushed through EC2 Instance Connect. The only module that knows EC2.
//!
//! - acquire: RunInstances with the workspace's tags, shutdown behaviour `terminate`, the
//!   watchdog in user data and a ClientToken derived from lineage, address and attempt; an
//!   instance of the same attempt is looked up by its tags first and adopted, so a crash
//!   between launch and record never launches twice (moto ignores ClientToken; EC2 honours it).
//! - reach: one batched DescribeInstances poll for every instance waiting to run
//!   ([`instances::Poller`]), by `instance-id` filter so that an id EC2 does not know (too new
//!   to show, or purged an hour after termination) fails no batch; every wait ends
//!   ([`instances::settle`]).
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
//!
//! By job: [`instances`] launches, polls, pushes keys to and terminates instances; [`images`]
//! makes, waits for and gives back baked images; [`preflight`] checks the account.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

use super::{
    Acquire, AcquireError, Acquired, Gone, Leaked, Machines, ProviderError, Reachable, Spec,
};
use crate::address::slug;
use crate::plan::{AwsSettings, Connect, Market, MarketKind, ProviderKind};
use crate::remote::{self, Endpoint, EphemeralKey, HostKeys, SshEndpoint};
use crate::state::Machine;
use crate::templates::Artifacts;

mod images;
mod instances;
mod placement;
mod preflight;
pub use images::{ImageInfo, ImageWait, TaggedImage};
pub use instances::CAPACITY_ATTEMPTS;
use instances::{
    KeyPush, LaunchRequest, NoSdkRetryOnCapacity, Poller, SPOT_RECLAIMED, client_token,
    watchdog_after,
};
pub use preflight::{Checked, CostFacts, preflight};

/// Tag keys every instance carries; destroy finds leaked instances by the first.
pub const TAG_WORKSPACE: &str = "rallyctl:workspace";
pub const TAG_LINEAGE: &str = "rallyctl:lineage";
pub const TAG_TEST: &str = "rallyctl:test";
pub const TAG_RUN: &str = "rallyctl:run";
pub const TAG_ATTEMPT: &str = "rallyctl:attempt";
/// A cluster's machine other than the one its test races from (`node-0`).
pub const TAG_MEMBER: &str = "rallyctl:member";

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
/// Values per DescribeInstances filter that EC2 accepts.
const FILTER_VALUES: usize = 200;

/// Attempts per API call, the first included.
pub const MAX_ATTEMPTS: u32 = 6;
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
    let line = crate::ui::without_debug_dump(text.lines().next().unwrap_or(""));
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
        let poller = Arc::new(Poller::default());
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

impl Machines for Aws {
    type Own = AwsSettings;

    async fn acquire(
        &self,
        req: &Acquire<'_, Spec<'_, AwsSettings>>,
    ) -> Result<Acquired, AcquireError> {
        let s = req.settings.own;
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
        let mut by = vec![
            (TAG_WORKSPACE, req.workspace),
            (TAG_LINEAGE, lineage.as_str()),
            (TAG_TEST, address.as_str()),
            (TAG_ATTEMPT, attempt.as_str()),
        ];
        let member = req.member.map(|m| m.name);
        by.extend(member.map(|m| (TAG_MEMBER, m)));
        // The machine a cluster test races from carries no member tag, which no filter can
        // ask for: its members are told apart here.
        let found: Vec<_> = (self.ec2.find_by_tags(&s.region, &by).await?.into_iter())
            .filter(|i| i.member.as_deref() == member)
            .collect();
        let adopted = !found.is_empty();
        let group = (s.placement_group).map(|p| {
            (
                p,
                placement::group_name(req.lineage, req.address, req.attempt),
            )
        });
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
                if let Some(member) = member {
                    tags.insert(TAG_MEMBER.into(), member.to_owned());
                }
                let named = member.map(|m| format!(" {m}")).unwrap_or_default();
                tags.insert(
                    "Name".into(),
                    format!("rallyctl {} {address}{named}", req.workspace)
                        .chars()
                        .take(256)
                        .collect(),
                );
                if let Some((placement, name)) = &group {
                    let group_tags = placement::GROUP_TAGS.map(|k| (k.to_owned(), tags[k].clone()));
                    (self.ec2)
                        .create_group(&s.region, name, *placement, &group_tags.into())
                        .await?;
                }
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
                            user_data: req.artifacts.user_data().to_owned(),
                            placement_group: group.as_ref().map(|(_, name)| name.clone()),
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
                            client_token: client_token(
                                req.lineage,
                                req.address,
                                req.attempt,
                                member,
                            ),
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
                expires_at: Some(watchdog_after(launched_at, req.settings.max_runtime)),
                launched_at,
                region: Some(s.region.to_string()),
                subnet: info.subnet,
                zone: info.zone,
                placement_group: group.map(|(_, name)| name),
                spot: info.spot,
                installed: (s.image.as_ref())
                    .and_then(|i| i.installed.as_deref())
                    .map(str::to_owned),
                ..Machine::acquired(ProviderKind::Aws, info.id)
            },
            adopted,
        })
    }

    async fn reach(
        &self,
        machine: &Machine,
        spec: Spec<'_, AwsSettings>,
    ) -> Result<Reachable, ProviderError> {
        let s = spec.own;
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
            Connect::PrivateIp => info.private_ip.clone(),
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
            peer_address: info.private_ip,
            endpoint: self.endpoint(machine, s, host),
            patience: PATIENCE,
            refused_key_is_transient: true,
        })
    }

    async fn before_connect(
        &self,
        machine: &Machine,
        spec: Spec<'_, AwsSettings>,
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
        // A command that rides on the open connection logs in no more: no key to push (one
        // API call per step of a long race otherwise). Should the connection end before the
        // command, the login is refused, and the retry comes back here after a failure.
        if let Some(host) = machine.address.as_ref().filter(|_| !after_failure) {
            let endpoint = self.endpoint(machine, spec.own, host.clone());
            if remote::multiplexed(&endpoint).await {
                return Ok(());
            }
        }
        let user = &spec.own.ssh_user;
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
        spec: Spec<'_, AwsSettings>,
        artifacts: &Artifacts,
        endpoint: &Endpoint,
    ) -> Result<Option<jiff::Timestamp>, ProviderError> {
        self.before_connect(machine, spec, false).await?;
        let expires = watchdog_after(jiff::Timestamp::now(), spec.max_runtime);
        let rearm = "if [ \"$(id -u)\" -eq 0 ]; then bash -s; else sudo -n bash -s; fi";
        remote::exec(
            endpoint,
            rearm,
            artifacts.user_data().as_bytes(),
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

    async fn release(
        &self,
        machine: &Machine,
        spec: Spec<'_, AwsSettings>,
    ) -> Result<(), ProviderError> {
        let region = region_of(machine)?;
        if let Some(host) = &machine.address {
            remote::close(&self.endpoint(machine, spec.own, host.clone())).await;
        }
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        self.terminate(machine, region, deadline).await?;
        if let Some(group) = &machine.placement_group {
            // Left to the release of the last instance in it.
            (self.ec2)
                .delete_group_when_empty(region, group, deadline)
                .await?;
        }
        Ok(())
    }

    async fn leaked(
        &self,
        workspace: &str,
        specs: &[Spec<'_, AwsSettings>],
    ) -> Result<Vec<Leaked>, ProviderError> {
        // One search per region, its finds given back with the first settings pointing there.
        let mut regions: Vec<(&str, usize)> = (specs.iter().enumerate())
            .map(|(i, s)| (&*s.own.region, i))
            .collect();
        regions.sort();
        regions.dedup_by_key(|(region, _)| *region);
        let mut found = Vec::new();
        for (region, found_by) in regions {
            for info in self
                .ec2
                .find_by_tags(region, &[(TAG_WORKSPACE, workspace)])
                .await?
            {
                found.push(Leaked {
                    machine: Machine {
                        region: Some(region.to_owned()),
                        ..Machine::acquired(ProviderKind::Aws, info.id)
                    },
                    found_by,
                });
            }
        }
        Ok(found)
    }
}

impl Aws {
    /// Terminates `machine` and waits until EC2 reads it on its way out: released means no
    /// longer costing money.
    async fn terminate(
        &self,
        machine: &Machine,
        region: &str,
        deadline: Instant,
    ) -> Result<(), ProviderError> {
        let ids = std::slice::from_ref(&machine.id);
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

/// The tags a resource of `kind` is made with, which IAM checks as `ec2:CreateTags` of the call
/// that makes it.
fn tag_spec<'a>(
    kind: ResourceType,
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> TagSpecification {
    let tags = (tags.into_iter())
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(tags))
        .build()
}

fn id_filter(name: &str, values: &[String]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.to_vec()))
        .build()
}
