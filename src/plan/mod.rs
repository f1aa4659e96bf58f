//! The plan file: its schema, TOML and JSON loading, defaults inheritance and validation.
//!
//! Loading is two passes over one spanned tree ([`source`]): each table's keys are read and
//! type-checked where they stand (so a bad default is reported once, not once per test), then
//! every test's settings are merged over `[defaults]` and the built-in defaults and checked as a
//! whole. All problems are collected and reported together ([`diag`]).

pub mod diag;
mod document;
mod json_doc;
mod load;
mod locate;
mod matrix;
mod merge;
pub mod settings;
pub mod source;
pub(crate) mod toml_doc;
mod values;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::address::Address;
pub use diag::{Diagnostic, PlanErrors};
pub use locate::Finding;

/// The plan format version this rallyctl reads.
pub const PLAN_VERSION: i64 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The workspace: names the state file, the results directory and the instance tags.
    pub name: String,
    pub source: PathBuf,
    /// The project root ([`project_root`]): where the recorded form of a [`LocalPath`] is
    /// relative to. Saved plans made before it was kept read their paths from the current
    /// directory, as they always did.
    #[serde(default)]
    pub root: PathBuf,
    pub suites: Vec<Suite>,
    /// `[backend]`: where the workspace's state and results live; local files when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<S3Config>,
    /// `[notify]`: which environment variable holds the webhook URL. Only its name is kept: a
    /// plan is committed and copied into saved plans, and the URL holds the webhook's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifyConfig>,
    /// What the plan allows but likely does not mean, for `validate` and `plan` to show.
    #[serde(skip)]
    pub warnings: Vec<Diagnostic>,
}

/// `[notify] url_env = "VAR"`: the environment variable the webhook URL is read from when the
/// command line gives none (the CLI decides which URL is used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyConfig {
    pub url_env: String,
}

/// What commands that need no valid plan read of one: its name, `[backend]` and `[notify]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub name: String,
    pub backend: Option<S3Config>,
    pub notify: Option<NotifyConfig>,
}

/// `[backend] s3 = {...}`: a bucket, and a prefix in it, holding a workspace's state and
/// results; its own region, endpoint (S3-compatible stores), profile or role when they differ
/// from the instances'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Config {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the bucket's top.
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

impl S3Config {
    /// `s3://bucket/prefix`, as `--backend` takes it; the rest from the standard chain.
    pub fn from_url(url: &str) -> Result<S3Config, String> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            format!("`{url}` is no backend: expected s3://BUCKET/PREFIX or local")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket)?;
        Ok(S3Config {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            region: None,
            endpoint: None,
            profile: None,
            role_arn: None,
        })
    }

    pub fn url(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3://{}", self.bucket),
            p => format!("s3://{}/{p}", self.bucket),
        }
    }
}

/// S3's rules for bucket names, as far as a typo would break them.
pub(crate) fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{bucket}` is no S3 bucket name: 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suite {
    pub name: String,
    /// At most this many of the suite's tests run at once, below the global `--parallelism`.
    pub parallelism: Option<NonZeroUsize>,
    pub tests: Vec<Test>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Test {
    pub address: Address,
    pub settings: Settings,
    /// Saved plans from before repetitions race once.
    #[serde(default)]
    pub repeat: Repeat,
    /// Set when the test is one variant of a plan's test: the variants of a test race
    /// interleaved on one machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<Box<VariantOf>>,
    /// Set when the test is one combination of a plan test's `matrix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<MatrixOf>,
    /// `reuse_instances`: the machine may come from a test of an earlier suite that asked for
    /// the same one, and may go on to a later one. Not a setting of the race: the config hash
    /// leaves it out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reuse: bool,
}

/// Which plan test a variant belongs to, and its name there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariantOf {
    pub test: String,
    pub name: String,
}

/// Which plan test's matrix made a test, and with what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixOf {
    /// The plan test's name, which selects all its combinations.
    pub test: String,
    /// Each setting the combination sets and its value as written (`"m5.large"`,
    /// `{ bulk_size = 1000 }`), in the matrix's order.
    pub values: Vec<(String, String)>,
    /// How many combinations the matrix has.
    pub combinations: usize,
}

/// How many times a test races, where, and how long its result holds. Not a setting of the
/// race: the config hash leaves it out, so raising `repetitions` keeps the races recorded and
/// adds the missing ones, and an old result is the same configuration, only stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repeat {
    pub count: NonZeroU32,
    pub on: RepeatOn,
    /// `results_valid_for`: a completed result older than this is raced again; none, never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_for: Option<Duration>,
}

impl Default for Repeat {
    fn default() -> Self {
        Repeat {
            count: NonZeroU32::MIN,
            on: RepeatOn::Same,
            valid_for: None,
        }
    }
}

/// Where a test's repetitions race.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepeatOn {
    /// Back to back on one machine: cheap, and measures race-to-race noise.
    Same,
    /// Each on a machine of its own: costs a machine per race, and measures machine-to-machine
    /// noise too.
    Fresh,
}

/// How rallyctl reaches an aws instance; by default its public address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connect {
    #[default]
    PublicIp,
    PrivateIp,
}

/// How EC2 places a cluster test's machines (`placement_group`): in a placement group of
/// their own, made for the test and deleted when its last machine is given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// EC2's `cluster` strategy: one Availability Zone, close together on the network, so that
    /// the network between nodes and load drivers is not what a benchmark measures.
    Cluster,
}

impl Placement {
    /// EC2's name of the strategy.
    pub fn strategy(self) -> &'static str {
        match self {
            Placement::Cluster => "cluster",
        }
    }
}

/// How an aws test's instance is bought.
#[derive(Debug, Clone, PartialEq)]
pub enum Market {
    OnDemand,
    /// Spot capacity: cheaper, and EC2 may reclaim it mid-race.
    Spot(SpotOptions),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpotOptions {
    /// The most to pay per hour, in USD; without one, EC2's cap (the on-demand price).
    pub max_price: Option<Text>,
    /// Where the test races again when EC2 reclaims its spot instance.
    pub on_interruption: MarketKind,
}

/// How an instance is bought, and where a reclaimed spot test races again; by default on demand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarketKind {
    #[default]
    OnDemand,
    Spot,
}

/// Where a test's machine comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// A fresh EC2 instance per test.
    #[default]
    Aws,
    /// A host leased from the plan's pool of SSH hosts.
    Ssh,
    /// This machine.
    Local,
}

impl ProviderKind {
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Aws => "aws",
            ProviderKind::Ssh => "ssh",
            ProviderKind::Local => "local",
        }
    }
}

impl ProviderKind {
    /// What giving a machine of this provider back does to it, as a past participle.
    pub fn released(self) -> &'static str {
        match self {
            ProviderKind::Aws => "terminated",
            ProviderKind::Ssh | ProviderKind::Local => "released",
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the track comes from: Rally's track repository by name, or a local directory that
/// rallyctl uploads with the test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    Named(Text),
    Path(LocalPath),
}

/// A file or directory a plan names (`rally_config`, `track_path`), held in two forms.
///
/// Files are read where the plan's spelling leads from the plan file's directory (or, for a
/// plan written when that was the rule, from the current directory). What the settings record, and so what the config hash takes in, is the path's place in the project:
/// relative to the project root when the path lies inside it, absolute otherwise. The project
/// is the git checkout holding the plan file, or the plan file's directory outside a checkout.
/// A checkout that moves, or a plan run from another directory, thus hashes its tests as before
/// (the contents are hashed separately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPath {
    read: Arc<Path>,
    recorded: Arc<Path>,
}

impl LocalPath {
    /// `spelled` as a plan under `root` names it; `spelled` must exist.
    pub fn in_project(spelled: &Path, root: &Path) -> LocalPath {
        let recorded = match std::fs::canonicalize(spelled) {
            Ok(abs) => match abs.strip_prefix(root) {
                Ok(inside) if !inside.as_os_str().is_empty() => inside.into(),
                _ => abs.into(),
            },
            Err(_) => spelled.into(),
        };
        LocalPath {
            read: spelled.into(),
            recorded,
        }
    }

    /// Where rallyctl reads the file.
    pub fn read(&self) -> &Path {
        &self.read
    }

    /// What settings record, state shows and the config hash takes in.
    pub fn recorded(&self) -> &Path {
        &self.recorded
    }

    /// A path read back from a saved plan: a relative recorded path lies under `root`.
    fn resolve(&mut self, root: &Path) {
        if self.recorded.is_relative() {
            self.read = root.join(&self.recorded).into();
        }
    }
}

impl Serialize for LocalPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.recorded.serialize(s)
    }
}

impl<'de> Deserialize<'de> for LocalPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let path: Arc<Path> = PathBuf::deserialize(d)?.into();
        Ok(LocalPath {
            read: path.clone(),
            recorded: path,
        })
    }
}

/// The project root of a plan file: the nearest enclosing directory holding `.git`, else the
/// plan file's own directory; canonical, so that it compares with canonical paths.
pub fn project_root(plan_file: &Path) -> PathBuf {
    let dir = match plan_file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|cwd| cwd.join(dir))
            .unwrap_or_else(|_| dir.to_owned())
    });
    dir.ancestors()
        .find(|d| d.join(".git").exists())
        .unwrap_or(&dir)
        .to_owned()
}

/// Text a plan's tests share: what a test inherits from `[defaults]` is held once, however many
/// tests inherit it.
pub type Text = Arc<str>;

/// The rally.ini template a test uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RallyConfig {
    /// The CSV-report rally.ini compiled into rallyctl, so a plan that names none works from
    /// any directory. Recorded under the path of its source in the repository, which is what
    /// plans named before it was built in: their config hashes stay as they were.
    BuiltIn,
    File(LocalPath),
}

impl RallyConfig {
    /// The path the built-in rally.ini is recorded under.
    pub const BUILT_IN_PATH: &str = "conditional_install_items/rally_csv.ini";
    pub const BUILT_IN_TEXT: &str = include_str!("../../conditional_install_items/rally_csv.ini");

    /// The path as a plan or state shows it.
    pub fn path(&self) -> &Path {
        match self {
            RallyConfig::BuiltIn => Path::new(Self::BUILT_IN_PATH),
            RallyConfig::File(path) => path.recorded(),
        }
    }
}

impl Serialize for RallyConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.path().serialize(s)
    }
}

/// A saved plan names its rally.ini by path; [`Plan::resolve_paths`] tells the built-in one
/// from a file.
impl<'de> Deserialize<'de> for RallyConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        LocalPath::deserialize(d).map(RallyConfig::File)
    }
}

/// A test's fully merged settings. Its canonical JSON feeds the config hash and the diffs
/// `plan` shows, so every field that changes a result belongs here and nothing else.
///
/// The canonical JSON is [`FlatSettings`]: one object with sorted keys, the form state has
/// always recorded. Keys of other providers are left out rather than written empty, so that
/// a new provider's keys never change an older test's hash. Text, lists and maps are shared, so
/// that the ten thousand tests of a large plan cost little more than what each sets itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub car: Option<Text>,
    pub car_params: SortedMap<serde_json::Value>,
    pub challenge: Option<Text>,
    pub client_options: Option<Text>,
    pub distribution_version: Option<Text>,
    /// Bounds a test's machine: EC2's watchdog shuts the instance down, elsewhere the race is
    /// stopped and the lease lapses.
    pub max_runtime: Duration,
    pub offline: bool,
    pub pipeline: Option<Text>,
    /// Extra `esrally race` arguments, passed through as they are (each one quoted).
    pub rally_args: Arc<[Text]>,
    pub rally_config: RallyConfig,
    pub rally_version: Text,
    /// Where on the machine rallyctl installs Rally and keeps its runs; relative to the user's
    /// home unless absolute.
    pub remote_dir: Text,
    pub runtime_jdk: Option<Text>,
    /// A race whose logs stay silent this long is stalled: stopped and failed.
    pub stall_timeout: Duration,
    pub target_hosts: Arc<[Text]>,
    pub track: TrackSource,
    pub track_params: SortedMap<serde_json::Value>,
    /// Elasticsearch nodes of the test's own, apart from its load drivers; none: the test is
    /// one machine, as before clusters existed.
    pub cluster: Option<Box<Cluster>>,
    /// With a cluster, the machines that drive the load (the test's own machine settings).
    pub load_drivers: NonZeroU32,
    /// Where the test runs, with the settings only that provider reads.
    pub machine: MachineSettings,
}

/// `cluster`: the Elasticsearch nodes rallyctl stands up for a test, with what `esrally
/// install` takes for each. Serialized with sorted keys and without what is unset, as a key
/// of the canonical JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub car: Option<Text>,
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    pub car_params: SortedMap<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution_repository: Option<Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution_version: Option<Text>,
    /// `ssh`: the pool the nodes are leased from; empty: the test's own `hosts`.
    #[serde(default, skip_serializing_if = "no_texts")]
    pub hosts: Arc<[Text]>,
    /// `aws`: the nodes' instance type (the test's own when the plan names none); none for
    /// other providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<Text>,
    pub nodes: NonZeroU32,
    #[serde(default, skip_serializing_if = "SortedMap::is_empty")]
    pub plugin_params: SortedMap<serde_json::Value>,
    #[serde(default, skip_serializing_if = "no_texts")]
    pub plugins: Arc<[Text]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_jdk: Option<Text>,
    /// A directory of Rally's cars on the node machines (`esrally install --team-path`),
    /// relative to the user's home unless absolute; none: Rally's team repository, which it
    /// clones from the internet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_path: Option<Text>,
}

/// The ports a cluster's machines reach one another on, in one place: what rallyctl passes to
/// `esrally install` and what `plan` asks of the test's security groups.
impl Cluster {
    /// Elasticsearch's HTTP port on each node (`esrally install --http-port`): the usual 9200,
    /// not Rally's default 39200, which only keeps clear of a node already on the machine; a
    /// node here has its machine to itself, and groups that allow Elasticsearch allow 9200.
    pub const HTTP_PORT: u16 = 9200;
    /// Rally makes a node's transport port its HTTP port + 100.
    pub const TRANSPORT_PORT: u16 = Cluster::HTTP_PORT + 100;
    /// Rally's actor system (`esrallyd`) on each load driver.
    pub const ACTOR_PORT: u16 = 1900;
    /// The actors `esrallyd` starts listen on ports the kernel hands out: Linux's default
    /// `ip_local_port_range`.
    pub const ACTOR_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;
}

impl Cluster {
    /// Whether the nodes need a JDK on their machines: one is named, or the distribution
    /// bundles none (before 7.0). Otherwise a node runs on the JDK its distribution bundles.
    pub fn needs_java(&self) -> bool {
        match self.runtime_jdk.as_deref() {
            Some("bundled") => false,
            Some(_) => true,
            None => bundles_no_jdk(self.distribution_version.as_deref()),
        }
    }
}

/// Whether an Elasticsearch of this version comes without a JDK: before 7.0.
fn bundles_no_jdk(version: Option<&str>) -> bool {
    version
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
        .is_some_and(|major| major < 7)
}

/// TCP ports a test's machines must reach one another on, with what listens there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    pub range: std::ops::RangeInclusive<u16>,
    pub what: &'static str,
}

fn no_texts(texts: &Arc<[Text]>) -> bool {
    texts.is_empty()
}

#[derive(Debug, Clone, PartialEq)]
pub enum MachineSettings {
    Aws(AwsSettings),
    Ssh(SshSettings),
    Local,
}

/// `ami = "baked"`: the test launches from the image `rallyctl bake` made for it.
pub const BAKED: &str = "baked";

#[derive(Debug, Clone, PartialEq)]
pub struct AwsSettings {
    /// An AMI id, or [`BAKED`]: the image `rallyctl bake` made from `base_ami`.
    pub ami: Text,
    /// `base_ami`: what a baked image is baked from; set only with `ami = "baked"`.
    pub base_ami: Option<Text>,
    /// The image to launch from when it is not `ami` itself: for `ami = "baked"` the image
    /// state records ([`crate::bake::resolve`]), for a bake instance its base AMI. Never
    /// recorded or hashed: a re-bake must not turn every result into a re-run.
    pub image: Option<LaunchImage>,
    pub connect: Connect,
    pub instance_type: Text,
    pub market: Market,
    /// With a cluster only: the placement group its nodes and load drivers launch into.
    pub placement_group: Option<Placement>,
    pub region: Text,
    pub security_group_ids: Arc<[Text]>,
    pub ssh_port: u16,
    pub ssh_user: Text,
    pub subnets: Subnets,
    pub tags: SortedMap<Text>,
}

/// An image resolved from state for a launch.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchImage {
    pub id: Text,
    /// The sha256 of the install script that ran on the instance it was baked from, where
    /// state recorded it: see [`crate::state::Machine::installed`].
    pub installed: Option<Text>,
}

impl AwsSettings {
    /// The AMI the plan names: `ami`, or the `base_ami` a baked image is made from.
    pub fn named_ami(&self) -> &str {
        self.base_ami.as_deref().unwrap_or(&self.ami)
    }

    /// The image an instance launches from; none for `ami = "baked"` before state's image is
    /// resolved.
    pub fn launch_ami(&self) -> Option<&str> {
        match &self.image {
            Some(image) => Some(&image.id),
            None => (&*self.ami != BAKED).then_some(&*self.ami),
        }
    }
}

/// Where an aws test's instance launches.
#[derive(Debug, Clone, PartialEq)]
pub enum Subnets {
    /// The region's default subnet (`subnet_id` unset).
    Default,
    /// `subnet_id`.
    One(Text),
    /// `subnet_ids`: the first, in order, with capacity for the instance. Capacity is per
    /// Availability Zone, so subnets in different zones give a launch somewhere to go.
    FirstWithCapacity(Arc<[Text]>),
}

impl Subnets {
    /// The subnets to try, in order; `None` is the default subnet.
    pub fn candidates(&self) -> Vec<Option<&str>> {
        match self {
            Subnets::Default => vec![None],
            Subnets::One(id) => vec![Some(id)],
            Subnets::FirstWithCapacity(ids) => ids.iter().map(|id| Some(&**id)).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SshSettings {
    /// The pool: `host` or `host:port`, each leased by one test at a time.
    pub hosts: Arc<[Text]>,
    /// Identity file; without one, the agent and `~/.ssh/config` apply.
    pub ssh_key: Option<Text>,
    /// Where host keys are checked; `~/.ssh/known_hosts` (OpenSSH's default) without one.
    pub ssh_known_hosts: Option<Text>,
    /// The port of hosts that name none.
    pub ssh_port: u16,
    /// Without one, OpenSSH's own choice (`~/.ssh/config`, else the local user name).
    pub ssh_user: Option<Text>,
}

impl MachineSettings {
    pub fn kind(&self) -> ProviderKind {
        match self {
            MachineSettings::Aws(_) => ProviderKind::Aws,
            MachineSettings::Ssh(_) => ProviderKind::Ssh,
            MachineSettings::Local => ProviderKind::Local,
        }
    }
}

/// [`Settings`] as one flat object with sorted keys: the canonical JSON. Fields in alphabetical
/// order, so serializing this struct directly gives sorted keys with no tree in between.
///
/// Serializing borrows every field from the settings (`Cow::Borrowed`): hashing a plan's ten
/// thousand tests clones nothing; reading owns them (`Cow::Owned`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatSettings<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ami: Option<Cow<'a, Text>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base_ami: Option<Cow<'a, Text>>,
    car: Option<Cow<'a, Text>>,
    car_params: Cow<'a, SortedMap<serde_json::Value>>,
    challenge: Option<Cow<'a, Text>>,
    client_options: Option<Cow<'a, Text>>,
    /// Written only for a test with a cluster, so that tests without one hash as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<Cow<'a, Box<Cluster>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    connect: Option<Connect>,
    distribution_version: Option<Cow<'a, Text>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hosts: Option<Cow<'a, Arc<[Text]>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance_type: Option<Cow<'a, Text>>,
    /// Written only when not the default (1), so that `load_drivers = 1` hashes as unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    load_drivers: Option<NonZeroU32>,
    /// Written only for spot, so that on-demand tests hash as before it existed; a spot
    /// result is one of its own (spot capacity can skew a benchmark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    market: Option<MarketKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_price: Option<Cow<'a, Text>>,
    #[serde(with = "humantime_serde")]
    max_runtime: Duration,
    offline: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_interruption: Option<MarketKind>,
    pipeline: Option<Cow<'a, Text>>,
    /// Written only when set (with a cluster), so that other tests hash as before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    placement_group: Option<Placement>,
    #[serde(default, skip_serializing_if = "is_aws")]
    provider: ProviderKind,
    rally_args: Cow<'a, Arc<[Text]>>,
    rally_config: Cow<'a, RallyConfig>,
    rally_version: Cow<'a, Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    region: Option<Cow<'a, Text>>,
    remote_dir: Cow<'a, Text>,
    runtime_jdk: Option<Cow<'a, Text>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    security_group_ids: Option<Cow<'a, Arc<[Text]>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ssh_key: Option<Cow<'a, Text>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ssh_known_hosts: Option<Cow<'a, Text>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ssh_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ssh_user: Option<Cow<'a, Text>>,
    /// Written only when not the default, so that hashes from before it existed stay.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    stall_timeout: Option<Duration>,
    /// Written as `null` for an aws test without a subnet, as always; absent elsewhere.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    subnet_id: Option<Option<Cow<'a, Text>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subnet_ids: Option<Cow<'a, Arc<[Text]>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tags: Option<Cow<'a, SortedMap<Text>>>,
    target_hosts: Cow<'a, Arc<[Text]>>,
    track: Cow<'a, TrackSource>,
    track_params: Cow<'a, SortedMap<serde_json::Value>>,
}

fn is_aws(kind: &ProviderKind) -> bool {
    *kind == ProviderKind::Aws
}

/// A key that is there, even as `null`, is `Some`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A field borrowed for serializing.
fn lent<T: Clone>(value: &T) -> Cow<'_, T> {
    Cow::Borrowed(value)
}

/// An optional field borrowed for serializing.
fn lent_some<T: Clone>(value: &Option<T>) -> Option<Cow<'_, T>> {
    value.as_ref().map(Cow::Borrowed)
}

/// A field read back, owned.
fn kept<T: Clone>(value: Option<Cow<'_, T>>) -> Option<T> {
    value.map(Cow::into_owned)
}

impl Serialize for Settings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FlatSettings::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Settings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Settings::try_from(FlatSettings::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl<'a> From<&'a Settings> for FlatSettings<'a> {
    fn from(s: &'a Settings) -> FlatSettings<'a> {
        let mut flat = FlatSettings {
            ami: None,
            base_ami: None,
            car: lent_some(&s.car),
            car_params: lent(&s.car_params),
            challenge: lent_some(&s.challenge),
            client_options: lent_some(&s.client_options),
            cluster: lent_some(&s.cluster),
            connect: None,
            distribution_version: lent_some(&s.distribution_version),
            hosts: None,
            instance_type: None,
            load_drivers: (s.load_drivers != Settings::LOAD_DRIVERS).then_some(s.load_drivers),
            market: None,
            max_price: None,
            max_runtime: s.max_runtime,
            offline: s.offline,
            on_interruption: None,
            pipeline: lent_some(&s.pipeline),
            placement_group: None,
            provider: s.machine.kind(),
            rally_args: lent(&s.rally_args),
            rally_config: lent(&s.rally_config),
            rally_version: lent(&s.rally_version),
            region: None,
            remote_dir: lent(&s.remote_dir),
            runtime_jdk: lent_some(&s.runtime_jdk),
            security_group_ids: None,
            ssh_key: None,
            ssh_known_hosts: None,
            ssh_port: None,
            ssh_user: None,
            stall_timeout: (s.stall_timeout != settings::STALL_TIMEOUT).then_some(s.stall_timeout),
            subnet_id: None,
            subnet_ids: None,
            tags: None,
            target_hosts: lent(&s.target_hosts),
            track: lent(&s.track),
            track_params: lent(&s.track_params),
        };
        match &s.machine {
            MachineSettings::Aws(a) => {
                flat.ami = Some(lent(&a.ami));
                flat.base_ami = lent_some(&a.base_ami);
                flat.connect = Some(a.connect);
                flat.instance_type = Some(lent(&a.instance_type));
                if let Market::Spot(spot) = &a.market {
                    flat.market = Some(MarketKind::Spot);
                    flat.max_price = lent_some(&spot.max_price);
                    flat.on_interruption = Some(spot.on_interruption);
                }
                flat.placement_group = a.placement_group;
                flat.region = Some(lent(&a.region));
                flat.security_group_ids = Some(lent(&a.security_group_ids));
                flat.ssh_port = Some(a.ssh_port);
                flat.ssh_user = Some(lent(&a.ssh_user));
                // Written as before `subnet_ids` existed, so that hashes stay as they were.
                match &a.subnets {
                    Subnets::Default => flat.subnet_id = Some(None),
                    Subnets::One(id) => flat.subnet_id = Some(Some(lent(id))),
                    Subnets::FirstWithCapacity(ids) => flat.subnet_ids = Some(lent(ids)),
                }
                flat.tags = Some(lent(&a.tags));
            }
            MachineSettings::Ssh(h) => {
                flat.hosts = Some(lent(&h.hosts));
                flat.ssh_key = lent_some(&h.ssh_key);
                flat.ssh_known_hosts = lent_some(&h.ssh_known_hosts);
                flat.ssh_port = Some(h.ssh_port);
                flat.ssh_user = lent_some(&h.ssh_user);
            }
            MachineSettings::Local => {}
        }
        flat
    }
}

impl TryFrom<FlatSettings<'_>> for Settings {
    type Error = String;

    fn try_from(f: FlatSettings<'_>) -> Result<Settings, String> {
        let missing = |key: &str| format!("provider {} needs `{key}`", f.provider);
        let machine = match f.provider {
            ProviderKind::Aws => MachineSettings::Aws(AwsSettings {
                ami: kept(f.ami).ok_or_else(|| missing("ami"))?,
                base_ami: kept(f.base_ami),
                image: None,
                connect: f.connect.unwrap_or_default(),
                instance_type: kept(f.instance_type).ok_or_else(|| missing("instance_type"))?,
                market: match f.market {
                    Some(MarketKind::Spot) => Market::Spot(SpotOptions {
                        max_price: kept(f.max_price),
                        on_interruption: f.on_interruption.unwrap_or_default(),
                    }),
                    _ => Market::OnDemand,
                },
                placement_group: f.placement_group,
                region: kept(f.region).ok_or_else(|| missing("region"))?,
                security_group_ids: kept(f.security_group_ids).unwrap_or_default(),
                ssh_port: f.ssh_port.unwrap_or(settings::SSH_PORT),
                ssh_user: kept(f.ssh_user).unwrap_or_else(|| settings::AWS_SSH_USER.into()),
                subnets: match (kept(f.subnet_ids), f.subnet_id.flatten()) {
                    (Some(ids), _) => Subnets::FirstWithCapacity(ids),
                    (None, Some(id)) => Subnets::One(id.into_owned()),
                    (None, None) => Subnets::Default,
                },
                tags: kept(f.tags).unwrap_or_default(),
            }),
            ProviderKind::Ssh => MachineSettings::Ssh(SshSettings {
                hosts: kept(f.hosts).ok_or_else(|| missing("hosts"))?,
                ssh_key: kept(f.ssh_key),
                ssh_known_hosts: kept(f.ssh_known_hosts),
                ssh_port: f.ssh_port.unwrap_or(settings::SSH_PORT),
                ssh_user: kept(f.ssh_user),
            }),
            ProviderKind::Local => MachineSettings::Local,
        };
        Ok(Settings {
            car: kept(f.car),
            car_params: f.car_params.into_owned(),
            challenge: kept(f.challenge),
            client_options: kept(f.client_options),
            distribution_version: kept(f.distribution_version),
            max_runtime: f.max_runtime,
            offline: f.offline,
            pipeline: kept(f.pipeline),
            rally_args: f.rally_args.into_owned(),
            rally_config: f.rally_config.into_owned(),
            rally_version: f.rally_version.into_owned(),
            remote_dir: f.remote_dir.into_owned(),
            runtime_jdk: kept(f.runtime_jdk),
            stall_timeout: f.stall_timeout.unwrap_or(settings::STALL_TIMEOUT),
            target_hosts: f.target_hosts.into_owned(),
            track: f.track.into_owned(),
            track_params: f.track_params.into_owned(),
            cluster: kept(f.cluster),
            load_drivers: f.load_drivers.unwrap_or(Settings::LOAD_DRIVERS),
            machine,
        })
    }
}

impl Settings {
    /// `load_drivers` when a plan names none.
    pub const LOAD_DRIVERS: NonZeroU32 = NonZeroU32::MIN;

    /// Rally needs a JDK on the machine only when it launches Elasticsearch itself and that
    /// Elasticsearch does not bring its own (bundled JDKs arrived with 7.0).
    pub fn needs_java(&self) -> bool {
        // The load drivers of a cluster race it over HTTP: only its nodes run Elasticsearch.
        if let Some(cluster) = &self.cluster {
            return cluster.needs_java();
        }
        if self.pipeline.as_deref() == Some("benchmark-only") || !self.target_hosts.is_empty() {
            return false;
        }
        match self.runtime_jdk.as_deref() {
            Some("bundled") => false,
            Some(_) => true,
            None => bundles_no_jdk(self.distribution_version.as_deref()),
        }
    }

    /// The canonical form, pretty JSON with sorted keys: what the config hash covers, state
    /// records and diffs compare.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("settings serialize to JSON")
    }

    pub fn provider(&self) -> ProviderKind {
        self.machine.kind()
    }

    /// A test with a cluster's machines, as `plan` shows them: `3 × r6i.xlarge, 2 load
    /// drivers × c5.large` (`, in a cluster placement group` with one); none for a test of
    /// one machine.
    pub fn topology(&self) -> Option<String> {
        let c = self.cluster.as_ref()?;
        let (nodes, drivers) = (c.nodes.get(), self.load_drivers.get());
        let plural = |n: u32, what: &str| match n {
            1 => format!("1 {what}"),
            n => format!("{n} {what}s"),
        };
        Some(match &self.machine {
            MachineSettings::Aws(a) => format!(
                "{nodes} × {}, {} × {}{}",
                c.instance_type.as_deref().unwrap_or(&a.instance_type),
                plural(drivers, "load driver"),
                a.instance_type,
                match a.placement_group {
                    Some(p) => format!(", in a {} placement group", p.strategy()),
                    None => String::new(),
                }
            ),
            MachineSettings::Ssh(_) if c.hosts.is_empty() => format!(
                "{} and {}, a host each from `hosts`",
                plural(nodes, "node"),
                plural(drivers, "load driver")
            ),
            MachineSettings::Ssh(_) => format!(
                "{}, a host each from `cluster.hosts`, {} from `hosts`",
                plural(nodes, "node"),
                plural(drivers, "load driver")
            ),
            MachineSettings::Local => format!(
                "{}, processes on this machine, which drives the load",
                plural(nodes, "node")
            ),
        })
    }

    /// The aws settings a cluster's nodes launch with: the test's, of the nodes' instance
    /// type; none without a cluster, or off aws.
    pub fn node_aws(&self) -> Option<AwsSettings> {
        let (MachineSettings::Aws(aws), Some(cluster)) = (&self.machine, &self.cluster) else {
            return None;
        };
        Some(AwsSettings {
            instance_type: (cluster.instance_type.clone())
                .unwrap_or_else(|| aws.instance_type.clone()),
            ..aws.clone()
        })
    }

    /// Whether the test races from more than one load driver: its own machine and others,
    /// each under Rally's daemon.
    pub fn several_load_drivers(&self) -> bool {
        self.cluster.is_some() && self.load_drivers > Settings::LOAD_DRIVERS
    }

    /// The settings a cluster's nodes are got, reached and given back with: the test's, of
    /// the nodes' instance type (aws) or from the nodes' pool when `cluster.hosts` names one
    /// (ssh). The test's own without a cluster.
    pub fn for_nodes(&self) -> Settings {
        let machine = match (&self.machine, &self.cluster) {
            (MachineSettings::Aws(_), Some(_)) => self.node_aws().map(MachineSettings::Aws),
            (MachineSettings::Ssh(ssh), Some(c)) if !c.hosts.is_empty() => {
                Some(MachineSettings::Ssh(SshSettings {
                    hosts: c.hosts.clone(),
                    ..ssh.clone()
                }))
            }
            _ => None,
        };
        match machine {
            Some(machine) => Settings {
                machine,
                ..self.clone()
            },
            None => self.clone(),
        }
    }

    /// What a test's machines must reach one another on: a cluster's nodes serve HTTP to the
    /// load drivers and talk transport among themselves; more than one load driver adds
    /// Rally's actor system between the drivers. Nothing for a test of one machine.
    pub fn cluster_ports(&self) -> Vec<Ports> {
        if self.cluster.is_none() {
            return vec![];
        }
        let one = |port: u16, what| Ports {
            range: port..=port,
            what,
        };
        let mut ports = vec![
            one(Cluster::HTTP_PORT, "Elasticsearch HTTP"),
            one(Cluster::TRANSPORT_PORT, "Elasticsearch transport"),
        ];
        if self.load_drivers.get() > 1 {
            ports.push(one(Cluster::ACTOR_PORT, "Rally's actor system"));
            ports.push(Ports {
                range: Cluster::ACTOR_PORTS,
                what: "esrallyd's actors",
            });
        }
        ports
    }

    /// How many machines the test takes from its provider at once: its own, or its cluster's
    /// nodes and its load drivers.
    pub fn machines(&self) -> u32 {
        match &self.cluster {
            None => 1,
            Some(c) => c.nodes.get() + self.load_drivers.get(),
        }
    }
}

/// A small map kept as a slice sorted by key, serialized as a JSON object like a `BTreeMap`.
///
/// Every test of a plan has its tags and parameters, usually a handful of entries, mostly the
/// same ones: a `BTreeMap` allocates room for eleven entries per test, while this is shared by
/// every test that inherits it unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct SortedMap<V>(Arc<[(Text, V)]>);

impl<V> Default for SortedMap<V> {
    fn default() -> Self {
        SortedMap(Arc::new([]))
    }
}

impl<V> SortedMap<V> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &V)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }
}

impl<V: Clone> SortedMap<V> {
    /// This map with `over`'s entries set on top; shares this one when `over` is empty.
    pub fn overlaid(&self, over: &SortedMap<V>) -> SortedMap<V> {
        if over.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return over.clone();
        }
        self.0.iter().chain(over.0.iter()).cloned().collect()
    }
}

/// Entries in any order; of entries with the same key the last one counts.
impl<V> FromIterator<(Text, V)> for SortedMap<V> {
    fn from_iter<I: IntoIterator<Item = (Text, V)>>(iter: I) -> Self {
        let mut entries: Vec<(Text, V)> = iter.into_iter().collect();
        // A stable sort keeps equal keys in their given order; of each run the last value is
        // moved into the entry that stays.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        SortedMap(entries.into())
    }
}

impl<V: Serialize> Serialize for SortedMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SortedMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<Text, V>::deserialize(d)?.into_iter().collect())
    }
}

/// humantime's formats for durations in plan-derived files, so `3h` reads back as written.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    /// The same for a duration that may be absent.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

impl Suite {
    /// How many of the suite's tests may run at once, below `--parallelism`: its
    /// `parallelism`, else one at a time when any of them runs on this machine (two Rally
    /// races on one machine skew each other and share Rally's actor system), else no bound.
    pub fn bound(&self) -> Option<NonZeroUsize> {
        self.parallelism.or_else(|| {
            self.tests
                .iter()
                .any(|t| t.settings.provider() == ProviderKind::Local)
                .then_some(NonZeroUsize::MIN)
        })
    }
}

impl Plan {
    /// Reads and validates a plan file; the format follows the extension (`.json` is JSON,
    /// anything else TOML).
    pub fn load(path: &Path) -> Result<Plan, PlanErrors> {
        Plan::parse(path, &Plan::read(path)?)
    }

    /// A file's bytes as a plan file is read: bounded in size, without a byte-order mark.
    pub fn read_bytes(path: &Path) -> Result<Vec<u8>, PlanErrors> {
        document::read_bytes(path)
    }

    /// A plan file's text, for [`Plan::parse`]; a saved plan is refused as not being one.
    pub fn read(path: &Path) -> Result<String, PlanErrors> {
        document::read(path)
    }

    /// The workspace name a TOML plan gives before its first table, read without parsing or
    /// validating the rest, so that work needing only the name (reading the workspace's state)
    /// can start while the plan is validated. `None` for JSON plans, or when the name is not
    /// a plain string there; [`Plan::parse`] has the last word either way.
    pub fn peek_name(path: &Path, text: &str) -> Option<String> {
        if document::format_of(path) != source::Format::Toml {
            return None;
        }
        match toml_doc::parse_head(text).ok()?.kind {
            source::Kind::Table(entries) => {
                match &entries.iter().find(|e| e.key == "name")?.value.kind {
                    source::Kind::String(name) => Some(name.to_string()),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The workspace the plan at `path` names, read without validating the rest: commands that
    /// need only the workspace (destroy, state, results) work with a plan that is broken
    /// elsewhere, or from another directory.
    pub fn name_of(path: &Path) -> Result<String, PlanErrors> {
        Ok(Plan::head_of(path)?.name)
    }

    /// A plan's name, `[backend]` and `[notify]`, read as [`Plan::name_of`] reads the name.
    pub fn head_of(path: &Path) -> Result<Head, PlanErrors> {
        load::head(path, &Plan::read(path)?)
    }

    /// Validates plan text as if read from `path`: relative paths inside are read beside it.
    pub fn parse(path: &Path, text: &str) -> Result<Plan, PlanErrors> {
        load::parse(path, text)
    }

    /// Problems found outside the plan file (in a provider's account), as diagnostics where
    /// the file writes each value ([`locate::locate`]).
    pub fn locate(&self, findings: &[Finding<'_>]) -> Result<PlanErrors, PlanErrors> {
        let text = Plan::read(&self.source)?;
        Ok(locate::locate(&self.source, &text, findings))
    }

    /// Makes the paths of a plan read back from a saved plan readable from here: relative ones
    /// lie under the project root. The built-in rally.ini's path reads back as the file when
    /// the project has one (the plan was made in a checkout), else as the built-in.
    pub fn resolve_paths(&mut self) {
        let root = self.root.clone();
        for test in self.suites.iter_mut().flat_map(|s| s.tests.iter_mut()) {
            let s = &mut test.settings;
            if let TrackSource::Path(path) = &mut s.track {
                path.resolve(&root);
            }
            if let RallyConfig::File(path) = &mut s.rally_config {
                path.resolve(&root);
                if path.recorded() == Path::new(RallyConfig::BUILT_IN_PATH)
                    && !path.read().is_file()
                {
                    s.rally_config = RallyConfig::BuiltIn;
                }
            }
        }
    }

    pub fn tests(&self) -> impl Iterator<Item = &Test> {
        self.suites.iter().flat_map(|s| s.tests.iter())
    }

    pub fn test(&self, address: &Address) -> Option<&Test> {
        self.tests().find(|t| &t.address == address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Repetitions and variants read alike from TOML and from the older JSON shape.
    /// A plan holds thousands of tests, moved and cloned while it loads and dropped at the
    /// end: what few tests set (a cluster, a variant) is boxed, so that it costs every other
    /// test a pointer, not its room. A field that grows a test past this is boxed too, or the
    /// bound is raised with `plan_scale`'s figures before and after.
    #[test]
    fn a_test_keeps_what_few_tests_set_in_a_box() {
        assert!(std::mem::size_of::<Settings>() <= 504);
        assert!(std::mem::size_of::<Test>() <= 632);
    }

    #[test]
    fn repetitions_and_variants_read_alike_from_toml_and_json() {
        let toml = r#"
version = 1
name = "w"
[defaults]
provider = "local"
track = "geonames"
repetitions = 3
[[suite]]
name = "s"
[[suite.test]]
name = "heap"
[[suite.test.variant]]
name = "4g"
car = "4gheap"
[[suite.test.variant]]
name = "8g"
car = "8gheap"
"#;
        let json = r#"{"version": 1, "name": "w",
            "defaults": {"provider": "local", "track": "geonames", "repetitions": 3},
            "suite": [{"name": "s", "test": [{"name": "heap", "variant": [
                {"name": "4g", "car": "4gheap"}, {"name": "8g", "car": "8gheap"}]}]}]}"#;
        let toml = Plan::parse(Path::new("w.toml"), toml).unwrap();
        let json = Plan::parse(Path::new("w.json"), json).unwrap();
        assert_eq!(toml.suites, json.suites);
        let tests: Vec<(String, u32, Option<&str>)> = toml
            .tests()
            .map(|t| {
                (
                    t.address.to_string(),
                    t.repeat.count.get(),
                    t.settings.car.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            tests,
            [
                ("s.heap-4g".into(), 3, Some("4gheap")),
                ("s.heap-8g".into(), 3, Some("8gheap"))
            ]
        );
    }

    #[test]
    fn sorted_maps_keep_the_last_value_of_a_key_and_serialize_like_btree_maps() {
        let map: SortedMap<i64> = [("b", 1), ("a", 2), ("b", 3)]
            .into_iter()
            .map(|(k, v)| (Text::from(k), v))
            .collect();
        assert_eq!(map.iter().collect::<Vec<_>>(), [("a", &2), ("b", &3)]);
        let tree: BTreeMap<&str, i64> = [("a", 2), ("b", 3)].into();
        for (ours, theirs) in [
            (
                serde_json::to_string_pretty(&map),
                serde_json::to_string_pretty(&tree),
            ),
            (
                serde_json::to_string_pretty(&SortedMap::<i64>::default()),
                serde_json::to_string_pretty(&BTreeMap::<String, i64>::new()),
            ),
        ] {
            assert_eq!(ours.unwrap(), theirs.unwrap());
        }
        let back: SortedMap<i64> = serde_json::from_str(r#"{"b": 3, "a": 2}"#).unwrap();
        assert_eq!(back, map);
        let over: SortedMap<i64> = [(Text::from("b"), 4), (Text::from("c"), 5)]
            .into_iter()
            .collect();
        assert_eq!(
            map.overlaid(&over).iter().collect::<Vec<_>>(),
            [("a", &2), ("b", &4), ("c", &5)]
        );
    }

    /// A cluster's nodes are reached on HTTP and transport; Rally's actor ports join them only
    /// with several load drivers; a test of one machine needs none.
    #[test]
    fn a_clusters_machines_reach_one_another_on_its_ports() {
        let plan = Plan::parse(
            Path::new("p.toml"),
            "version = 1\nname = \"p\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-0a\"\n\
             instance_type = \"c5.large\"\ntrack = \"x\"\ndistribution_version = \"8.15.0\"\n[[suite]]\nname = \"s\"\n\
             [[suite.test]]\nname = \"one\"\n\
             [[suite.test]]\nname = \"driver\"\ncluster = { nodes = 3 }\n\
             [[suite.test]]\nname = \"drivers\"\ncluster = { nodes = 3 }\nload_drivers = 2\n",
        )
        .unwrap();
        let ports: Vec<Vec<(u16, u16)>> = (plan.tests())
            .map(|t| {
                (t.settings.cluster_ports().iter())
                    .map(|p| (*p.range.start(), *p.range.end()))
                    .collect()
            })
            .collect();
        assert_eq!(
            ports,
            [
                vec![],
                vec![(9200, 9200), (9300, 9300)],
                vec![(9200, 9200), (9300, 9300), (1900, 1900), (32768, 60999)],
            ]
        );
    }
}
