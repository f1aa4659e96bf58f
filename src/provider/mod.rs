//! Where machines come from. The lifecycle speaks only the [`Provider`] trait, at its own level
//! (get a machine, reach it, is it gone, give it back, what does a workspace still hold), so
//! no provider's specifics leak into it: [`aws`] launches EC2 instances, [`ssh`] leases hosts
//! of a pool, [`local`] runs on this machine, and [`Fleet`] routes each test to its own.
//!
//! A machine is recorded in state as a [`Machine`] before anything runs on it; only its
//! provider reads what it holds beyond the id.

pub mod aws;
#[cfg(any(test, feature = "simulation"))]
pub mod fake;
pub mod local;
pub mod ssh;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::address::Address;
use crate::plan::{MachineSettings, ProviderKind, Settings};
use crate::remote::Endpoint;
use crate::state::Machine;
use crate::templates::Artifacts;

#[derive(Debug, thiserror::Error)]
#[error("{operation} ({target}): {message}")]
pub struct ProviderError {
    /// What was asked: `RunInstances`, `lease`, ...
    pub operation: &'static str,
    /// Where: a region, a host.
    pub target: String,
    pub message: String,
}

/// A setting that names something the provider's account or hosts do not have, found before
/// anything is launched: the plan file is searched for where `value` is written under one of
/// `keys`, so the user sees the line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub keys: &'static [&'static str],
    pub value: String,
    pub message: String,
}

/// What [`preflight`] found: problems that stop the plan, caps on what its machines may hold at
/// once, and checks that could not be made.
#[derive(Debug, Default)]
pub struct Preflight {
    pub problems: Vec<Problem>,
    pub limits: Vec<Limit>,
    /// What was not checked, and why: said to the user, never read as passed.
    pub unchecked: Vec<String>,
}

/// A cap on what machines hold at once in one place (EC2: a region's running On-Demand vCPU
/// quota), shared with whatever else runs there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// What is capped, for the user.
    pub name: String,
    /// What it counts, plural: `vCPUs`.
    pub unit: &'static str,
    pub quota: u64,
    /// Held already, by machines of the account that this plan did not start too.
    pub in_use: u64,
    /// What the machine of each of the settings [`preflight`] was given takes of it, in their
    /// order; 0 for those it does not cap.
    pub takes: Vec<u64>,
}

/// Checks the plan's tests against their providers' accounts: the aws tests against EC2
/// ([`aws::preflight`]); ssh and local have nothing to check before leasing.
pub async fn preflight(settings: &[&Settings]) -> Result<Preflight, ProviderError> {
    let (at, aws): (Vec<usize>, Vec<aws::Checked<'_>>) = settings
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match &s.machine {
            crate::plan::MachineSettings::Aws(a) => Some((
                i,
                aws::Checked {
                    settings: a,
                    ports: s.cluster_ports(),
                },
            )),
            _ => None,
        })
        .unzip();
    if aws.is_empty() {
        return Ok(Preflight::default());
    }
    let mut found = aws::preflight(&aws).await?;
    for limit in &mut found.limits {
        let mut takes = vec![0; settings.len()];
        for (&i, &t) in at.iter().zip(&limit.takes) {
            takes[i] = t;
        }
        limit.takes = takes;
    }
    Ok(found)
}

/// Why a machine is no longer there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    pub reason: String,
    /// Its provider took it back (an EC2 spot interruption): no fault of the test, whose race
    /// starts again on another machine.
    pub reclaimed: bool,
}

impl Gone {
    pub fn vanished(reason: String) -> Gone {
        Gone {
            reason,
            reclaimed: false,
        }
    }
}

/// One attempt of one test asking for a machine, with `settings` the test's: the plan's
/// [`Settings`] as the lifecycle has them, a [`Spec`] as [`Fleet`] hands them to a provider.
pub struct Acquire<'a, S = &'a Settings> {
    pub workspace: &'a str,
    pub lineage: Uuid,
    pub address: &'a Address,
    pub attempt: u32,
    pub run_id: &'a str,
    pub settings: S,
    pub artifacts: &'a Artifacts,
    /// How many machines of this attempt were reclaimed so far: after one, a provider may
    /// get the next elsewhere (aws: on-demand, when the plan says so).
    pub reclaimed: u32,
    /// Waiting for a machine (a free host, capacity) ends when this is cancelled.
    pub cancel: &'a CancellationToken,
    /// Told once why the attempt waits for a machine, when it does.
    pub on_wait: &'a (dyn Fn(String) + Sync),
    /// A cluster's machine other than the one the test races from: the attempt gets one
    /// machine per member, each named apart.
    pub member: Option<MemberSpec<'a>>,
}

impl<'a, S> Acquire<'a, S> {
    /// The same request, with the settings as `T`.
    fn with<T>(&self, settings: T) -> Acquire<'a, T> {
        Acquire {
            workspace: self.workspace,
            lineage: self.lineage,
            address: self.address,
            attempt: self.attempt,
            run_id: self.run_id,
            settings,
            artifacts: self.artifacts,
            reclaimed: self.reclaimed,
            cancel: self.cancel,
            on_wait: self.on_wait,
            member: self.member,
        }
    }
}

/// What one provider reads of the settings of the machine it is asked about: its own (`S`,
/// such as [`AwsSettings`](crate::plan::AwsSettings)), and what bounds and places a machine on
/// any provider.
#[derive(Debug)]
pub struct Spec<'a, S> {
    pub own: &'a S,
    /// How long a race may hold the machine: EC2's watchdog, a lease's expiry.
    pub max_runtime: Duration,
    /// Where on the machine rallyctl keeps its runs (and a host of a pool its lease).
    pub remote_dir: &'a str,
}

impl<S> Clone for Spec<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Spec<'_, S> {}

impl<'a, S> Spec<'a, S> {
    fn of(settings: &'a Settings, own: &'a S) -> Spec<'a, S> {
        Spec {
            own,
            max_runtime: settings.max_runtime,
            remote_dir: &settings.remote_dir,
        }
    }
}

/// Why [`Provider::acquire`] got no machine.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// What this attempt got before is no longer alive, and asking again under the attempt's
    /// name would only answer that (EC2 answers a repeated ClientToken with the instance it
    /// launched first, for at least a day after that one terminated): a new attempt must be
    /// opened. The reason, for the user.
    #[error("{0}")]
    Spent(String),
}

/// A cluster's machine besides the one its test races from, as a provider is asked for it.
#[derive(Debug, Clone, Copy)]
pub struct MemberSpec<'a> {
    /// What tells it apart from the test's other machines (`node-0`, `driver-1`): EC2's
    /// ClientToken and tags, a lease's id, a local machine's id.
    pub name: &'a str,
    /// A node's index, from 0 (a local node's loopback address); none for a load driver.
    pub node: Option<u32>,
}

/// What [`Provider::acquire`] got.
pub struct Acquired {
    pub machine: Machine,
    /// The machine was got by an earlier apply that died before recording it.
    pub adopted: bool,
}

/// How to reach a machine that answers, and how patient to be with it.
#[derive(Debug, Clone)]
pub struct Reachable {
    pub endpoint: Endpoint,
    /// Where the machines of the same test reach it (EC2: its private address; a host of a
    /// pool: its name; this machine: the loopback); none where its provider cannot say.
    pub peer_address: Option<String>,
    /// How long the machine may stay unreachable (after boot, or mid-race) before its test is
    /// given up: a fresh instance's sshd takes a while, an existing host should just answer.
    pub patience: Duration,
    /// Whether a refused key may be accepted later (a pushed key that ran out), rather than
    /// being a mistake to report at once.
    pub refused_key_is_transient: bool,
}

/// Lifecycle-level operations on machines. Every operation is safe to repeat: a resumed apply
/// repeats the one it was killed in.
pub trait Provider: Send + Sync + 'static {
    /// A machine for this attempt. A machine the attempt already got before a crash (launched
    /// or leased, but not yet recorded) is found and returned, never a second one.
    fn acquire(
        &self,
        req: &Acquire<'_>,
    ) -> impl Future<Output = Result<Acquired, AcquireError>> + Send;
    /// Waits until the machine runs, and says how to reach it.
    fn reach(
        &self,
        machine: &Machine,
        settings: &Settings,
    ) -> impl Future<Output = Result<Reachable, ProviderError>> + Send;
    /// Called before every connection (EC2 pushes the key that the connection uses);
    /// `after_failure` when the last connection failed. Nothing to do for most providers.
    fn before_connect(
        &self,
        _machine: &Machine,
        _settings: &Settings,
        _after_failure: bool,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send {
        async { Ok(()) }
    }
    /// Why the machine is no longer there, if it is not (asked when connections keep failing);
    /// an error when the provider cannot tell. A host of a pool, or this machine, is never gone
    /// for good: it is waited for.
    fn gone(
        &self,
        _machine: &Machine,
    ) -> impl Future<Output = Result<Option<Gone>, ProviderError>> + Send {
        async { Ok(None) }
    }
    /// The machine takes another race of its test (`repeat_on = "same"`): what bounds its life
    /// (EC2's watchdog, a lease's expiry) starts again from now, so that `max_runtime` bounds
    /// each race rather than all of them. Its new [`Machine::expires_at`]; nothing to do, and
    /// none, where each race bounds itself.
    fn extend(
        &self,
        _machine: &Machine,
        _settings: &Settings,
        _artifacts: &Artifacts,
        _endpoint: &Endpoint,
    ) -> impl Future<Output = Result<Option<jiff::Timestamp>, ProviderError>> + Send {
        async { Ok(None) }
    }
    /// Gives the machine back: terminates an instance; stops every process of the run on a
    /// host and ends its lease. Nothing of the run costs money or holds a host afterwards.
    fn release(
        &self,
        machine: &Machine,
        settings: &Settings,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Machines the workspace holds that state does not know (launched by a run that died
    /// before recording them), looked for where `settings` point. None for providers whose
    /// machines outlive their tests: a run directory and a lease are recorded before a race
    /// starts, and a lease taken by a run that died before recording it lapses, or is taken
    /// over once its holder is gone.
    fn leaked(
        &self,
        _workspace: &str,
        _settings: &[&Settings],
    ) -> impl Future<Output = Result<Vec<Leaked>, ProviderError>> + Send {
        async { Ok(vec![]) }
    }
}

/// A machine [`Provider::leaked`] found, with the settings (an index into those it was
/// given) that pointed where it was: it is given back with them, as a machine is released
/// with the settings it was got with.
#[derive(Debug)]
pub struct Leaked {
    pub machine: Machine,
    pub found_by: usize,
}

/// One provider's machines: [`Provider`]'s operations, each given the settings of the machine
/// it is asked about as this provider types them ([`Spec`] of `Own`); [`Fleet`] routes each
/// machine to its provider with its own.
pub trait Machines: Send + Sync + 'static {
    /// The settings only this provider reads.
    type Own: Sync;

    /// See [`Provider::acquire`].
    fn acquire(
        &self,
        req: &Acquire<'_, Spec<'_, Self::Own>>,
    ) -> impl Future<Output = Result<Acquired, AcquireError>> + Send;
    /// See [`Provider::reach`].
    fn reach(
        &self,
        machine: &Machine,
        spec: Spec<'_, Self::Own>,
    ) -> impl Future<Output = Result<Reachable, ProviderError>> + Send;
    /// See [`Provider::before_connect`].
    fn before_connect(
        &self,
        _machine: &Machine,
        _spec: Spec<'_, Self::Own>,
        _after_failure: bool,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send {
        async { Ok(()) }
    }
    /// See [`Provider::gone`].
    fn gone(
        &self,
        _machine: &Machine,
    ) -> impl Future<Output = Result<Option<Gone>, ProviderError>> + Send {
        async { Ok(None) }
    }
    /// See [`Provider::extend`].
    fn extend(
        &self,
        _machine: &Machine,
        _spec: Spec<'_, Self::Own>,
        _artifacts: &Artifacts,
        _endpoint: &Endpoint,
    ) -> impl Future<Output = Result<Option<jiff::Timestamp>, ProviderError>> + Send {
        async { Ok(None) }
    }
    /// See [`Provider::release`].
    fn release(
        &self,
        machine: &Machine,
        spec: Spec<'_, Self::Own>,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// See [`Provider::leaked`].
    fn leaked(
        &self,
        _workspace: &str,
        _specs: &[Spec<'_, Self::Own>],
    ) -> impl Future<Output = Result<Vec<Leaked>, ProviderError>> + Send {
        async { Ok(vec![]) }
    }
}

/// How long stopping a run's processes may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// Stops every process of the machine's run, for providers whose machines outlive the test.
async fn stop_run(endpoint: &Endpoint, machine: &Machine) -> Result<(), ProviderError> {
    let Some(run_dir) = &machine.run_dir else {
        return Ok(());
    };
    let fail = |message: String| ProviderError {
        operation: "stop the run",
        target: endpoint.name(),
        message,
    };
    let command = crate::remote::stop_run_command(run_dir, crate::remote::STOP_WAIT)
        .map_err(|e| fail(e.to_string()))?;
    crate::remote::exec(endpoint, &command, b"", STOP_TIMEOUT)
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// Every provider an apply may need, each made when a test first needs it: a plan without an
/// `aws` test never loads AWS credentials.
pub struct Fleet {
    state_dir: PathBuf,
    workspace: String,
    aws: OnceCell<aws::Aws>,
    ssh: ssh::Ssh,
    local: local::Local,
}

impl Fleet {
    /// `state_dir` holds the EC2 provider's ephemeral key and known hosts file.
    pub fn new(state_dir: PathBuf, workspace: &str) -> Fleet {
        Fleet {
            state_dir,
            workspace: workspace.to_owned(),
            aws: OnceCell::new(),
            ssh: ssh::Ssh::default(),
            local: local::Local,
        }
    }

    /// The EC2 provider, for what only it makes besides machines: baked images and placement
    /// groups.
    pub async fn aws_extras(&self) -> Result<&aws::Aws, ProviderError> {
        self.aws().await
    }

    async fn aws(&self) -> Result<&aws::Aws, ProviderError> {
        self.aws
            .get_or_try_init(|| aws::Aws::from_env(&self.state_dir, &self.workspace))
            .await
    }
}

/// Runs `$call` on the provider of `$kind`.
macro_rules! route {
    ($fleet:expr, $kind:expr, $p:ident => $call:expr) => {
        match $kind {
            ProviderKind::Aws => {
                let $p = $fleet.aws().await?;
                $call.await
            }
            ProviderKind::Ssh => {
                let $p = &$fleet.ssh;
                $call.await
            }
            ProviderKind::Local => {
                let $p = &$fleet.local;
                $call.await
            }
        }
    };
}

/// Runs `$call` on the provider `$settings` name, `$spec` being those settings as it types
/// them.
macro_rules! route_with {
    ($fleet:expr, $settings:expr, $p:ident, $spec:ident => $call:expr) => {
        match &$settings.machine {
            MachineSettings::Aws(own) => {
                let $p = $fleet.aws().await?;
                let $spec = Spec::of($settings, own);
                $call.await
            }
            MachineSettings::Ssh(own) => {
                let $p = &$fleet.ssh;
                let $spec = Spec::of($settings, own);
                $call.await
            }
            MachineSettings::Local => {
                let $p = &$fleet.local;
                let $spec = Spec::of($settings, &());
                $call.await
            }
        }
    };
}

/// A machine is asked about with the settings it was got with, which name its provider: a
/// record whose machine and settings disagree is refused rather than sent to the wrong one.
fn same_provider(machine: &Machine, settings: &Settings) -> Result<(), ProviderError> {
    let named = settings.provider();
    if machine.provider == named {
        return Ok(());
    }
    Err(ProviderError {
        operation: "route",
        target: machine.id.clone(),
        message: format!(
            "it is from provider `{}`, but it is asked about with settings for provider `{}`",
            machine.provider.name(),
            named.name()
        ),
    })
}

/// The machines `settings` name, for the provider whose own are `S`.
fn specs_of<'a, S>(
    settings: &[&'a Settings],
    own: impl Fn(&'a MachineSettings) -> Option<&'a S>,
) -> (Vec<Spec<'a, S>>, Vec<usize>) {
    settings
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((Spec::of(s, own(&s.machine)?), i)))
        .unzip()
}

impl Provider for Fleet {
    async fn acquire(&self, req: &Acquire<'_>) -> Result<Acquired, AcquireError> {
        route_with!(self, req.settings, p, spec => p.acquire(&req.with(spec)))
    }

    async fn reach(
        &self,
        machine: &Machine,
        settings: &Settings,
    ) -> Result<Reachable, ProviderError> {
        same_provider(machine, settings)?;
        route_with!(self, settings, p, spec => p.reach(machine, spec))
    }

    async fn before_connect(
        &self,
        machine: &Machine,
        settings: &Settings,
        after_failure: bool,
    ) -> Result<(), ProviderError> {
        same_provider(machine, settings)?;
        route_with!(self, settings, p, spec => p.before_connect(machine, spec, after_failure))
    }

    async fn gone(&self, machine: &Machine) -> Result<Option<Gone>, ProviderError> {
        route!(self, machine.provider, p => p.gone(machine))
    }

    async fn extend(
        &self,
        machine: &Machine,
        settings: &Settings,
        artifacts: &Artifacts,
        endpoint: &Endpoint,
    ) -> Result<Option<jiff::Timestamp>, ProviderError> {
        same_provider(machine, settings)?;
        route_with!(self, settings, p, spec => p.extend(machine, spec, artifacts, endpoint))
    }

    async fn release(&self, machine: &Machine, settings: &Settings) -> Result<(), ProviderError> {
        same_provider(machine, settings)?;
        route_with!(self, settings, p, spec => p.release(machine, spec))
    }

    async fn leaked(
        &self,
        workspace: &str,
        settings: &[&Settings],
    ) -> Result<Vec<Leaked>, ProviderError> {
        // Each provider's finds point into its own specs; `index` maps them back to `settings`.
        let back = |found: Vec<Leaked>, index: &[usize]| -> Vec<Leaked> {
            (found.into_iter())
                .map(|l| Leaked {
                    found_by: index[l.found_by],
                    ..l
                })
                .collect()
        };
        let mut found = Vec::new();
        let (aws, index) = specs_of(settings, |m| match m {
            MachineSettings::Aws(a) => Some(a),
            _ => None,
        });
        if !aws.is_empty() {
            found.extend(back(
                self.aws().await?.leaked(workspace, &aws).await?,
                &index,
            ));
        }
        let (ssh, index) = specs_of(settings, |m| match m {
            MachineSettings::Ssh(s) => Some(s),
            _ => None,
        });
        if !ssh.is_empty() {
            found.extend(back(self.ssh.leaked(workspace, &ssh).await?, &index));
        }
        let (local, index) = specs_of(settings, |m| {
            matches!(m, MachineSettings::Local).then_some(&())
        });
        if !local.is_empty() {
            found.extend(back(self.local.leaked(workspace, &local).await?, &index));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_asked_about_with_another_providers_settings_is_refused_not_routed() {
        let text = "version = 1\nname = \"w\"\n[defaults]\nprovider = \"local\"\ntrack = \"t\"\n\
                    [[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"t\"\n";
        let plan = crate::plan::Plan::parse(std::path::Path::new("w.toml"), text).unwrap();
        let local = &plan.suites[0].tests[0].settings;
        let dir = tempfile::tempdir().unwrap();
        let fleet = Fleet::new(dir.path().to_owned(), "w");
        let host = Machine::acquired(ProviderKind::Ssh, "h".into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = rt.block_on(fleet.release(&host, local)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "route (h): it is from provider `ssh`, but it is asked about with settings for provider `local`"
        );
    }
}
