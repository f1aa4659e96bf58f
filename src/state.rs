//! The state: what rallyctl knows of every test's result and instance.
//!
//! The model is here; `file` reads and writes it on disk, `lock` guards who may write it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::address::Address;
use crate::plan::{ProviderKind, Settings, VariantOf};

mod file;
mod lock;

pub use file::{
    DEFAULT_DIR, Written, backup_path, default_path, load, load_or_new, of_workspace, parse, save,
    save_with, to_json,
};
pub(crate) use lock::holder_gone;
pub use lock::{
    Lock, LockHolder, LockState, holder_alive_here, hostname, lock_path, lock_state, remove_lock,
};

/// The state format version this rallyctl writes and reads. Version 2 names a record's
/// machine `machine` and when it stopped holding it `released_at` (`instance`, `terminated_at`
/// in version 1, which is read as well): a rallyctl that reads only version 1 refuses it
/// rather than missing the machines it names.
pub const STATE_VERSION: u32 = 2;

/// A key this rallyctl does not know is refused, not dropped: writing the state back would lose
/// it. So is one inside a record, a machine or a result (`deny_unknown_fields` on each). Read
/// as a [`StateFile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "StateFile")]
pub struct State {
    pub version: u32,
    /// Fixed when the state is created; tags every instance, so instances of another state
    /// that happens to share the workspace name are told apart.
    pub lineage: Uuid,
    /// Bumped on every write; a saved plan records it to detect that state moved on.
    pub serial: u64,
    pub workspace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_run: Option<String>,
    pub tests: BTreeMap<Address, TestRecord>,
    /// Images `rallyctl bake` made, or is making, for the workspace's `ami = "baked"` tests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
}

/// A [`State`] as its file spells it, with its records in the file's order: [`load`] lets go
/// of the file's text (megabytes, for thousands of results) before it puts them in the map,
/// rather than holding both at once.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    lineage: Uuid,
    serial: u64,
    workspace: String,
    #[serde(default)]
    baseline_run: Option<String>,
    #[serde(deserialize_with = "records_in_order")]
    tests: Vec<(Address, TestRecord)>,
    #[serde(default)]
    images: Vec<Image>,
}

/// The records are built into the map at once: its nodes come out full, where inserting the
/// file's (sorted) records one by one leaves each about half empty, which for thousands of
/// tests is megabytes. Of two records with one address the last counts, as inserting does.
impl From<StateFile> for State {
    fn from(f: StateFile) -> State {
        State {
            version: f.version,
            lineage: f.lineage,
            serial: f.serial,
            workspace: f.workspace,
            baseline_run: f.baseline_run,
            tests: f.tests.into_iter().collect(),
            images: f.images,
        }
    }
}

/// A state's records as the file lists them.
fn records_in_order<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(Address, TestRecord)>, D::Error> {
    struct Records;
    impl<'de> serde::de::Visitor<'de> for Records {
        type Value = Vec<(Address, TestRecord)>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of test records by address")
        }

        fn visit_map<M: serde::de::MapAccess<'de>>(
            self,
            mut m: M,
        ) -> Result<Self::Value, M::Error> {
            let mut records = Vec::with_capacity(m.size_hint().unwrap_or(0));
            while let Some(record) = m.next_entry()? {
                records.push(record);
            }
            Ok(records)
        }
    }
    d.deserialize_map(Records)
}

/// What a baked image is for: tests whose settings give the same key launch from it. The
/// install script skips what the image has, so this is what makes that script's work.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BakeKey {
    /// The AMI it is baked from.
    pub base_ami: String,
    pub region: String,
    pub rally_version: String,
    pub needs_java: bool,
    pub remote_dir: String,
}

impl std::fmt::Display for BakeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}) with esrally {}{} in {}",
            self.base_ami,
            self.region,
            self.rally_version,
            if self.needs_java { " and a JDK" } else { "" },
            self.remote_dir
        )
    }
}

/// Where a bake is: each step is written before it runs, like a test's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BakeStep {
    Launching,
    Booting,
    Installing,
    Imaging,
    Terminating,
    /// The image is there for tests to launch from.
    Available,
    Failed,
    /// `destroy --images` deregistered it and deleted its snapshots.
    Deregistered,
}

impl BakeStep {
    pub fn name(self) -> &'static str {
        match self {
            BakeStep::Launching => "launching",
            BakeStep::Booting => "booting",
            BakeStep::Installing => "installing",
            BakeStep::Imaging => "imaging",
            BakeStep::Terminating => "terminating",
            BakeStep::Available => "available",
            BakeStep::Failed => "failed",
            BakeStep::Deregistered => "deregistered",
        }
    }
}

/// One bake: the instance it launched (terminated when the bake ends, whatever happened), the
/// image it made and that image's snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub baked_for: BakeKey,
    pub step: BakeStep,
    /// A failed bake is baked again in a new attempt, on a new instance with other tags.
    pub attempt: u32,
    /// The settings of the test the instance was launched like.
    pub settings: RecordedSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Machine>,
    /// The name given to CreateImage: one per attempt, so a killed bake finds its image again.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshot_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Transition>,
}

impl Image {
    pub fn set_step(&mut self, step: BakeStep) {
        self.step = step;
        self.history.push(Transition {
            status: step.name().to_owned(),
            at: Timestamp::now(),
        });
    }

    /// The bake's instance while it may still run.
    pub fn live_machine(&self) -> Option<&Machine> {
        self.instance.as_ref().filter(|m| m.released_at.is_none())
    }
}

impl State {
    /// The image tests of `key` launch from: the newest available one.
    pub fn image_for(&self, key: &BakeKey) -> Option<&Image> {
        self.images
            .iter()
            .rev()
            .find(|i| &i.baked_for == key && i.step == BakeStep::Available)
    }
}

/// The step a test is in, or was in when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Launching,
    Booting,
    Installing,
    Racing,
    Collecting,
    Terminating,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Launching,
        Step::Booting,
        Step::Installing,
        Step::Racing,
        Step::Collecting,
        Step::Terminating,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Launching => "launching",
            Step::Booting => "booting",
            Step::Installing => "installing",
            Step::Racing => "racing",
            Step::Collecting => "collecting",
            Step::Terminating => "terminating",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A test's lifecycle: `Pending ▶ InProgress(step) ▶ Completed`, or `Failed` from any step.
/// Read back through [`RecordFields`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Pending,
    InProgress {
        step: Step,
    },
    Completed,
    Failed {
        step: Step,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        log_tail: Option<String>,
        /// Where the failed race's logs were brought home to, under `results/`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logs: Option<PathBuf>,
    },
}

impl Status {
    pub fn label(&self) -> String {
        match self {
            Status::Pending => "pending".into(),
            Status::InProgress { step } => step.to_string(),
            Status::Completed => "completed".into(),
            Status::Failed { step, .. } => format!("failed ({step})"),
        }
    }
}

/// The machine an attempt holds, recorded before anything runs on it. Beyond the id and the
/// price, only its provider reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// States from before there were other providers hold EC2 instances.
    #[serde(default)]
    pub provider: ProviderKind,
    /// What the provider names it by: an EC2 instance id, a host of the pool, `local`.
    pub id: String,
    /// The EC2 region of an instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The subnet and Availability Zone an instance runs in: a result's hardware can differ
    /// from zone to zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The EC2 placement group it was launched into (`placement_group`): the last of a test's
    /// instances to be given back deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_group: Option<String>,
    /// The address rallyctl connects to, once the machine has one; a local cluster node's
    /// loopback address, where it listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The id of the lease that holds a host of a pool for this attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// The attempt's directory on the machine, where its race runs: what release stops on a
    /// machine that outlives the test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
    /// When it was launched or leased.
    pub launched_at: Timestamp,
    /// When the machine ends itself unless renewed first (EC2's watchdog, a lease's expiry),
    /// as its provider said at launch or at its last renewal; none where nothing ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// When this record stopped holding it: terminated, given back, or taken by another test.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "terminated_at"
    )]
    pub released_at: Option<Timestamp>,
    /// An EC2 spot instance: cheaper, may be reclaimed, and its results say so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spot: bool,
    /// Warm reuse: the test of an earlier suite this record took the machine from, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken: Option<Taken>,
    /// Warm reuse: the test of a later suite the machine went on to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
    /// Its on-demand price when it was got; none for the user's own machines and where no
    /// price was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_per_hour: Option<f64>,
    /// The sha256 of the install script that last ran to its end here (the one baked into
    /// its image, or a test's before it was kept): a test whose script is the same does not
    /// run it again, which on a kept machine or a baked image costs a second per test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taken {
    pub from: Address,
    pub at: Timestamp,
    /// The run directory of the test it was taken from: what stopping its leftovers looks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left: Option<String>,
}

/// A machine kept running after its test for a test of a later suite (warm reuse).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Handover {
    /// Kept for that test, idle until it starts: this record still holds it, so `destroy`
    /// and a later plan find it here.
    KeptFor(Address),
    /// That test took it and holds it now.
    TakenBy(Address),
}

/// Machine time a record held, from the machine's launch (or lease) to the moment the record
/// stopped holding it: what `results` bills.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spent {
    pub run_id: String,
    /// Only an `aws` machine is billed by the hour; the others are the user's own.
    #[serde(default)]
    pub provider: ProviderKind,
    /// The machine's id: records sharing one machine (variants) each hold it, and a run's
    /// cost counts it once.
    pub machine: String,
    pub from: Timestamp,
    pub to: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_per_hour: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultFile {
    /// Relative to the directory holding `results/`.
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

impl ResultFile {
    /// The record of a collected file at `path` holding `content`.
    pub fn of(path: PathBuf, content: &[u8]) -> ResultFile {
        ResultFile {
            path,
            sha256: sha256_hex(content),
            bytes: content.len() as u64,
        }
    }
}

/// The checksum state records a file by, and checks it against wherever it is kept.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The directory a state (or any) file lies in: `.` for a bare file name.
pub fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    pub status: String,
    pub at: Timestamp,
}

/// The merged settings a result was made with, kept so `plan` can show what changed.
///
/// Held as the JSON text the state file has, not as a tree: a state of thousands of results
/// is loaded on every `plan`, and only a re-run's diff ever reads the settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecordedSettings(Box<RawValue>);

/// How deep a record's settings sit in the state file (`{ "tests": { ADDR: { "settings"`),
/// in the pretty printer's two-space steps.
const SETTINGS_INDENT: &str = "      ";

impl RecordedSettings {
    /// Pretty JSON indented to its place in the state file, so a written state reads exactly as
    /// if the whole file had been pretty-printed at once.
    fn pretty(value: &impl Serialize) -> RecordedSettings {
        let text = serde_json::to_string_pretty(value)
            .expect("settings serialize to JSON")
            .replace('\n', &format!("\n{SETTINGS_INDENT}"));
        RecordedSettings(RawValue::from_string(text).expect("serde_json writes valid JSON"))
    }

    /// The settings as a JSON tree.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).expect("state holds only valid JSON")
    }

    /// The settings as typed, for work that needs no plan (destroy); an error when they are
    /// not settings this rallyctl can read.
    pub fn typed(&self) -> Result<Settings, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl From<&Settings> for RecordedSettings {
    fn from(settings: &Settings) -> Self {
        RecordedSettings::pretty(settings)
    }
}

impl From<serde_json::Value> for RecordedSettings {
    fn from(value: serde_json::Value) -> Self {
        RecordedSettings::pretty(&value)
    }
}

impl PartialEq for RecordedSettings {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RecordFields")]
pub struct TestRecord {
    pub config_hash: String,
    pub settings: RecordedSettings,
    pub race_command: String,
    /// The sha256 of each file the config hash took in besides the settings
    /// ([`crate::templates::Artifacts::inputs`]), so that `plan` names the one that changed;
    /// empty in a record from before they were kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    #[serde(flatten)]
    pub status: Status,
    /// Counts attempts at this test; with the lineage it names the machine (EC2 tags and
    /// ClientToken, the lease on a host).
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub race_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "instance")]
    pub machine: Option<Machine>,
    /// A cluster test's other machines, each recorded with its role before anything runs on
    /// it; `machine` is the one it races from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<ResultFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Transition>,
    /// The repetitions of this configuration raced before the current one, oldest first: the
    /// current race is repetition `earlier.len() + 1`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<Repetition>,
    /// The plan test this is a variant of, for comparing the variants of a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<VariantOf>,
    /// How many machines of this attempt their provider reclaimed mid-way (EC2 spot
    /// interruptions): the race starts again on a new one, up to a bound.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reclaimed: u32,
    /// Every machine this test held, across attempts and runs, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spent: Vec<Spent>,
    /// Settings an earlier attempt of this test asked its provider for a machine with, where
    /// it stopped before state named what it got: a killed apply, then a plan that moved the
    /// test (another region) or dropped it. That machine may run there still, so `destroy`
    /// looks there too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub asked_elsewhere: Vec<RecordedSettings>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A finished race of a test's configuration, kept as a sample when the test races again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repetition {
    pub run_id: String,
    pub race_id: Uuid,
    /// The machine it raced on, and that machine's Availability Zone.
    pub machine: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Whether that machine was spot capacity.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spot: bool,
    pub results: Vec<ResultFile>,
}

/// A machine of a cluster test besides the one it races from, with its role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub role: Role,
    pub machine: Machine,
    /// Where the test's other machines reach it (EC2: its private address), once reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
}

/// What a machine of a cluster test is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Role {
    /// Elasticsearch node `index` of the test's cluster, installed by Rally under
    /// `installation_id`: chosen when the machine is recorded, so that a resumed apply finds
    /// the node it installed instead of installing another.
    Node { index: u32, installation_id: Uuid },
    /// Load driver `index` under Rally's daemon (`esrallyd`), from 1: the test's own machine,
    /// which coordinates the race, is the first.
    Driver { index: u32 },
}

impl Role {
    /// What node `index` of a cluster is called: on its machine, in results, and in what
    /// providers name its machine by.
    pub fn node_name(index: u32) -> String {
        format!("node-{index}")
    }

    /// What load driver `index` is called, as [`Role::node_name`].
    pub fn driver_name(index: u32) -> String {
        format!("driver-{index}")
    }

    pub fn name(&self) -> String {
        match *self {
            Role::Node { index, .. } => Role::node_name(index),
            Role::Driver { index } => Role::driver_name(index),
        }
    }

    /// The settings a machine of this role is got, reached and given back with, of those of
    /// its test: a node's are [`Settings::for_nodes`], a load driver's the test's own.
    pub fn settings(&self, test: &Settings) -> Settings {
        match self {
            Role::Node { .. } => test.for_nodes(),
            Role::Driver { .. } => test.clone(),
        }
    }
}

/// A [`TestRecord`] as the file spells it, the status's keys among the others. serde's
/// `flatten`, which writes the status, cannot refuse unknown keys when reading; this can, and
/// it refuses a status with keys that do not belong to it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordFields {
    config_hash: String,
    settings: RecordedSettings,
    race_command: String,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    status: StatusName,
    #[serde(default)]
    step: Option<Step>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    log_tail: Option<String>,
    #[serde(default)]
    logs: Option<PathBuf>,
    attempt: u32,
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    race_id: Option<Uuid>,
    #[serde(default, alias = "instance")]
    machine: Option<Machine>,
    #[serde(default)]
    members: Vec<Member>,
    #[serde(default)]
    results: Vec<ResultFile>,
    #[serde(default)]
    history: Vec<Transition>,
    #[serde(default)]
    earlier: Vec<Repetition>,
    #[serde(default)]
    variant: Option<VariantOf>,
    #[serde(default)]
    reclaimed: u32,
    #[serde(default)]
    spent: Vec<Spent>,
    #[serde(default)]
    asked_elsewhere: Vec<RecordedSettings>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum StatusName {
    Pending,
    InProgress,
    Completed,
    Failed,
}

impl TryFrom<RecordFields> for TestRecord {
    type Error = String;

    fn try_from(r: RecordFields) -> Result<TestRecord, String> {
        let status = match (r.status, r.step, r.error, r.log_tail, r.logs) {
            (StatusName::Pending, None, None, None, None) => Status::Pending,
            (StatusName::Completed, None, None, None, None) => Status::Completed,
            (StatusName::InProgress, Some(step), None, None, None) => Status::InProgress { step },
            (StatusName::Failed, Some(step), Some(error), log_tail, logs) => Status::Failed {
                step,
                error,
                log_tail,
                logs,
            },
            (name, step, error, log_tail, logs) => {
                let wants = match name {
                    StatusName::Pending | StatusName::Completed => "no `step` or `error`",
                    StatusName::InProgress => "a `step` and no `error`",
                    StatusName::Failed => "a `step` and an `error`",
                };
                let has: Vec<_> = [
                    step.map(|_| "step"),
                    error.map(|_| "error"),
                    log_tail.map(|_| "log_tail"),
                    logs.map(|_| "logs"),
                ]
                .into_iter()
                .flatten()
                .collect();
                return Err(format!(
                    "a record's status takes {wants}, but this one has {}",
                    if has.is_empty() {
                        "none".to_owned()
                    } else {
                        has.join(", ")
                    }
                ));
            }
        };
        Ok(TestRecord {
            config_hash: r.config_hash,
            settings: r.settings,
            race_command: r.race_command,
            inputs: r.inputs,
            status,
            attempt: r.attempt,
            run_id: r.run_id,
            race_id: r.race_id,
            machine: r.machine,
            members: r.members,
            results: r.results,
            history: r.history,
            earlier: r.earlier,
            variant: r.variant,
            reclaimed: r.reclaimed,
            spent: r.spent,
            asked_elsewhere: r.asked_elsewhere,
        })
    }
}

impl Machine {
    /// A machine just got, known so far only by its provider and id.
    pub fn acquired(provider: ProviderKind, id: String) -> Machine {
        Machine {
            provider,
            id,
            region: None,
            subnet: None,
            zone: None,
            placement_group: None,
            address: None,
            lease: None,
            run_dir: None,
            launched_at: Timestamp::now(),
            expires_at: None,
            released_at: None,
            spot: false,
            taken: None,
            handover: None,
            usd_per_hour: None,
            installed: None,
        }
    }
}

impl TestRecord {
    /// Attempt 1 of a test at `status`, before it has a run, a race, a machine or results.
    pub fn new(
        config_hash: String,
        settings: RecordedSettings,
        race_command: String,
        status: Status,
    ) -> TestRecord {
        TestRecord {
            config_hash,
            settings,
            race_command,
            inputs: BTreeMap::new(),
            status,
            attempt: 1,
            run_id: None,
            race_id: None,
            machine: None,
            members: vec![],
            results: vec![],
            history: vec![],
            earlier: vec![],
            variant: None,
            reclaimed: 0,
            spent: vec![],
            asked_elsewhere: vec![],
        }
    }

    /// Whether its attempt stopped while getting a machine: its provider may have handed one
    /// out that state does not name. That is at launching, and at any step of an attempt
    /// that holds none: one whose machine was reclaimed gets the next before it records it
    /// (simulation seed 68390).
    pub fn stopped_getting_a_machine(&self) -> bool {
        match self.status {
            // A cluster's other machines are got at launching once the first is recorded.
            Status::InProgress {
                step: Step::Launching,
            } => true,
            Status::InProgress { .. } => self.live_machine().is_none(),
            Status::Failed {
                step: Step::Launching,
                ..
            } => true,
            Status::Pending | Status::Completed | Status::Failed { .. } => false,
        }
    }

    /// Keeps `settings`, which an attempt of this test got a machine with and which state may
    /// not name that machine by, for `destroy` to look where they point.
    pub fn asked_with(&mut self, settings: RecordedSettings) {
        if settings != self.settings && !self.asked_elsewhere.contains(&settings) {
            self.asked_elsewhere.push(settings);
        }
    }

    /// The number of the race the record is on (1 for the first).
    pub fn repetition(&self) -> u32 {
        u32::try_from(self.earlier.len()).map_or(u32::MAX, |n| n.saturating_add(1))
    }

    /// How many races of the configuration finished: the earlier ones, and the current one
    /// once the test completed.
    pub fn finished_repetitions(&self) -> u32 {
        self.repetition() - u32::from(self.status != Status::Completed)
    }

    /// Every finished race of this configuration, the current one included once completed:
    /// what a new attempt keeps.
    pub fn finished(&self) -> Vec<Repetition> {
        let mut all = self.earlier.clone();
        if self.status == Status::Completed {
            all.push(self.current());
        }
        all
    }

    fn current(&self) -> Repetition {
        Repetition {
            run_id: self.run_id.clone().unwrap_or_default(),
            race_id: self.race_id.unwrap_or_else(Uuid::nil),
            machine: self
                .machine
                .as_ref()
                .map(|m| m.id.clone())
                .unwrap_or_default(),
            zone: self.machine.as_ref().and_then(|m| m.zone.clone()),
            spot: self.machine.as_ref().is_some_and(|m| m.spot),
            results: self.results.clone(),
        }
    }

    /// Ends the current race as a finished repetition and opens the next, with a new race id,
    /// in the same run, though a later apply resumed the attempt: the races of one result live
    /// in the run that records it. The machine stays where it is, for the caller to reuse or
    /// replace.
    pub fn next_repetition(&mut self) {
        self.earlier.push(self.current());
        self.results.clear();
        self.race_id = Some(Uuid::new_v4());
    }

    /// When the record last became completed: its result, every repetition raced. None for a
    /// record that is not completed, or whose history was not kept.
    pub fn completed_at(&self) -> Option<Timestamp> {
        if self.status != Status::Completed {
            return None;
        }
        let label = Status::Completed.label();
        (self.history.iter().rev())
            .find(|t| t.status == label)
            .map(|t| t.at)
    }

    /// A machine the test may still hold (an instance costing money, a leased host).
    pub fn live_machine(&self) -> Option<&Machine> {
        self.machine.as_ref().filter(|i| i.released_at.is_none())
    }

    /// Every machine the record holds: the one it races from (role none), then a cluster's
    /// others with their roles.
    pub fn live_machines(&self) -> impl Iterator<Item = (&Machine, Option<Role>)> {
        let members = (self.members.iter())
            .filter(|m| m.machine.released_at.is_none())
            .map(|m| (&m.machine, Some(m.role)));
        self.live_machine()
            .map(|m| (m, None))
            .into_iter()
            .chain(members)
    }

    /// Records that every machine the record holds was given back (or taken by another
    /// test), now, and the time each was held, from its launch or from when this record took
    /// it: the one place machine time is entered, so every way a record lets go of a machine
    /// bills it once. A machine kept for a later test is billed to the keeper until taken.
    pub fn mark_released(&mut self) {
        let ids: Vec<String> = self.live_machines().map(|(m, _)| m.id.clone()).collect();
        for id in ids {
            self.mark_machine_released(&id);
        }
    }

    /// [`TestRecord::mark_released`] of the one machine `id` of those the record holds.
    pub fn mark_machine_released(&mut self, id: &str) {
        let run_id = self.run_id.clone().unwrap_or_default();
        let spent = &mut self.spent;
        let primary = self.machine.iter_mut();
        let members = self.members.iter_mut().map(|m| &mut m.machine);
        // The live holding of `id`: a record may also name it released before (a variant
        // that let go of its group's cluster and was given it again).
        let Some(i) = (primary.chain(members)).find(|m| m.id == id && m.released_at.is_none())
        else {
            return;
        };
        let now = Timestamp::now();
        i.released_at = Some(now);
        let from = i.taken.as_ref().map_or(i.launched_at, |t| t.at);
        // The same holding let go of again: a variant given back its group's machine after it
        // saw that machine end, by a member whose record still named it (tests/simulation.rs
        // seed 490). Its time is the one span, to the last release, not two overlapping ones.
        let again =
            (spent.iter_mut()).find(|s| s.run_id == run_id && s.machine == i.id && s.from == from);
        // A deliberate bug the simulation must find (tests/simulation.rs): the span is
        // entered again beside the one there (with `next_repetition`'s site, at each race).
        if let Some(spent) = again.filter(|_| !crate::sim::bug!(EnterTimeTwice)) {
            spent.to = spent.to.max(now);
            return;
        }
        spent.push(Spent {
            run_id,
            provider: i.provider,
            machine: i.id.clone(),
            from,
            to: now,
            usd_per_hour: i.usd_per_hour,
        });
    }

    /// Moves to a new status and remembers when, for timings and the ordering checks.
    pub fn set_status(&mut self, status: Status) {
        self.history.push(Transition {
            status: status.label(),
            at: Timestamp::now(),
        });
        self.status = status;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("state file {path} is not valid ({reason}); it was left untouched.{backup_hint}")]
    Corrupt {
        path: PathBuf,
        reason: String,
        backup_hint: String,
    },
    #[error(
        "state file {path} was written by a newer rallyctl (state version {found}; this one reads {STATE_VERSION}); it was left untouched"
    )]
    Newer { path: PathBuf, found: u64 },
    #[error("state file {path} belongs to workspace `{found}`, not `{expected}`")]
    Workspace {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("cannot write state file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Locked(String),
    #[error(
        "state holds no record of test `{address}`, which this apply runs: was the state changed behind rallyctl's back?"
    )]
    Missing { address: Address },
    #[error("cannot reach state {location}: {message}")]
    Remote { location: String, message: String },
    #[error(
        "state {location} was written by another rallyctl since this one read it (its serial is now {}); this command wrote nothing more and stops. Was its lock force-unlocked? `rallyctl plan` shows where things stand",
        serial.map_or("unknown".to_owned(), |s| s.to_string())
    )]
    Overwritten {
        location: String,
        serial: Option<u64>,
    },
    #[error("{location} is refused: {reason}; it was left untouched")]
    Damaged { location: String, reason: String },
    #[error("no state at {0}: nothing to copy")]
    NothingToCopy(String),
}

impl State {
    pub fn new(workspace: &str) -> State {
        State {
            version: STATE_VERSION,
            lineage: Uuid::new_v4(),
            serial: 0,
            workspace: workspace.to_owned(),
            baseline_run: None,
            tests: BTreeMap::new(),
            images: vec![],
        }
    }
}

/// A run id sorts by time and stays unique across machines.
pub fn new_run_id() -> String {
    format!(
        "{}-{}",
        Timestamp::now().strftime("%Y%m%dT%H%M%SZ"),
        &Uuid::new_v4().simple().to_string()[..6]
    )
}

/// Whether `name` is a run id as [`new_run_id`] makes them: `YYYYMMDDTHHMMSSZ-xxxxxx`.
pub fn is_run_id(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 23
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..].iter().all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    pub(super) fn record() -> TestRecord {
        TestRecord::new(
            "abc".into(),
            serde_json::json!({"track": "geonames"}).into(),
            "esrally race".into(),
            Status::Failed {
                step: Step::Racing,
                error: "race exited with 64".into(),
                log_tail: Some("boom".into()),
                logs: Some("results/w/run/b/a".into()),
            },
        )
    }

    #[test]
    fn records_read_at_once_keep_their_order_and_the_last_of_one_address() {
        let mut state = State::new("w");
        for i in 0..100 {
            let mut r = record();
            r.attempt = i;
            state
                .tests
                .insert(Address::new("s", format!("t{i}")).unwrap(), r);
        }
        let json = serde_json::to_string(&state).unwrap();
        let read = parse(json.as_bytes(), Path::new("w"), String::new).unwrap();
        assert_eq!(read, state);
        // The same address twice, as a hand-edited file may have it.
        let first = serde_json::to_string(&record()).unwrap();
        let json = json.replacen("\"tests\":{", &format!("\"tests\":{{\"s.t7\":{first},"), 1);
        let read = parse(json.as_bytes(), Path::new("w"), String::new).unwrap();
        assert_eq!(read.tests[&Address::new("s", "t7").unwrap()].attempt, 7);
        assert_eq!(read, state);
    }

    #[test]
    fn a_machine_recorded_again_after_its_release_is_billed_one_span() {
        let mut r = record();
        r.run_id = Some("run-1".into());
        let machine = Machine::acquired(ProviderKind::Aws, "i-1".into());
        r.machine = Some(machine.clone());
        r.mark_released();
        let first = r.spent[0].to;
        // A member of its variant group still names it live and shares it back.
        r.machine = Some(machine.clone());
        std::thread::sleep(std::time::Duration::from_millis(1));
        r.mark_released();
        let [spent] = &r.spent[..] else {
            panic!("billed twice: {:?}", r.spent)
        };
        assert_eq!(spent.from, machine.launched_at);
        assert!(spent.to > first, "{spent:?}");
        // Another machine, or the same one in another run, is a span of its own.
        r.machine = Some(Machine::acquired(ProviderKind::Aws, "i-2".into()));
        r.mark_released();
        r.run_id = Some("run-2".into());
        r.machine = Some(machine);
        r.mark_released();
        assert_eq!(r.spent.len(), 3, "{:?}", r.spent);
    }

    /// A variant that let go of its group's cluster and was given it again names a node twice:
    /// released once, held now. Giving it back releases the one it holds, billed as one span
    /// (simulation seed 4164 found it held after the group gave everything back).
    #[test]
    fn a_member_held_again_after_its_release_is_released_and_billed_once() {
        let mut r = record();
        r.run_id = Some("run-1".into());
        let machine = Machine::acquired(ProviderKind::Aws, "i-node".into());
        let node = |installation_id| Member {
            role: Role::Node {
                index: 0,
                installation_id,
            },
            machine: machine.clone(),
            peer_address: None,
        };
        r.members.push(node(Uuid::new_v4()));
        r.mark_released();
        r.members.push(node(Uuid::new_v4()));
        assert_eq!(r.live_machines().count(), 1);
        r.mark_machine_released("i-node");
        assert_eq!(r.live_machines().count(), 0, "{:?}", r.members);
        assert_eq!(r.spent.len(), 1, "{:?}", r.spent);
    }

    /// A cluster test's nodes are recorded with their roles beside the machine it races
    /// from; each is given back and billed on its own, and a state from before clusters reads.
    #[test]
    fn a_clusters_machines_are_recorded_with_their_roles_and_each_billed_once() {
        let mut r = record();
        r.run_id = Some("run-1".into());
        r.machine = Some(Machine::acquired(ProviderKind::Aws, "i-driver".into()));
        for index in 0..2 {
            r.members.push(Member {
                role: Role::Node {
                    index,
                    installation_id: Uuid::new_v4(),
                },
                machine: Machine::acquired(ProviderKind::Aws, format!("i-node-{index}")),
                peer_address: Some(format!("10.0.0.{index}")),
            });
        }
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            text.contains(r#""role":{"node":{"index":1,"installation_id":"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<TestRecord>(&text).unwrap(), r);
        let held = |r: &TestRecord| -> Vec<(String, Option<Role>)> {
            (r.live_machines().map(|(m, role)| (m.id.clone(), role))).collect()
        };
        assert_eq!(held(&r)[0], ("i-driver".into(), None));
        assert_eq!(held(&r)[2].1, Some(r.members[1].role));
        r.mark_machine_released("i-node-1");
        let ids: Vec<String> = held(&r).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["i-driver", "i-node-0"]);
        assert_eq!(r.spent.len(), 1, "{:?}", r.spent);
        r.mark_released();
        r.mark_released();
        assert!(held(&r).is_empty());
        let billed: Vec<&str> = r.spent.iter().map(|s| s.machine.as_str()).collect();
        assert_eq!(billed, ["i-node-1", "i-driver", "i-node-0"]);
        // A record of one machine is written, and read, as before clusters.
        let single = serde_json::to_string(&record()).unwrap();
        assert!(!single.contains("members"), "{single}");
        let read: TestRecord = serde_json::from_str(&single).unwrap();
        assert!(read.members.is_empty());
    }

    #[test]
    fn releasing_a_machine_bills_its_time_once() {
        let mut r = record();
        r.run_id = Some("run-1".into());
        r.mark_released();
        assert!(r.spent.is_empty(), "no machine, no time");
        r.machine = Some(Machine {
            usd_per_hour: Some(0.5),
            ..Machine::acquired(ProviderKind::Aws, "i-1".into())
        });
        r.mark_released();
        r.mark_released();
        let machine = r.machine.as_ref().unwrap();
        let [spent] = &r.spent[..] else {
            panic!("{:?}", r.spent)
        };
        assert_eq!(
            (
                spent.run_id.as_str(),
                spent.machine.as_str(),
                spent.usd_per_hour
            ),
            ("run-1", "i-1", Some(0.5))
        );
        assert_eq!(
            (spent.from, Some(spent.to)),
            (machine.launched_at, machine.released_at)
        );
        let written = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<TestRecord>(&written).unwrap(), r);
    }

    /// Seed 68390 of the simulation: an attempt whose machine was reclaimed asks for the next
    /// mid-step, before state names it; so does one at launching, and one that failed there.
    #[test]
    fn an_attempt_without_a_machine_at_any_step_may_have_got_one_unnamed() {
        let mut r = record();
        r.machine = Some(Machine::acquired(ProviderKind::Aws, "i-1".into()));
        for (status, live, may) in [
            (Status::InProgress { step: Step::Racing }, true, false),
            (Status::InProgress { step: Step::Racing }, false, true),
            (
                Status::InProgress {
                    step: Step::Launching,
                },
                false,
                true,
            ),
            // A cluster test gets its nodes at launching once its own machine is recorded.
            (
                Status::InProgress {
                    step: Step::Launching,
                },
                true,
                true,
            ),
            (Status::Completed, false, false),
            (Status::Pending, false, false),
        ] {
            r.status = status.clone();
            let m = r.machine.as_mut().unwrap();
            m.released_at = (!live).then(Timestamp::now);
            assert_eq!(
                r.stopped_getting_a_machine(),
                may,
                "{status:?}, live {live}"
            );
        }
        r.status = Status::Failed {
            step: Step::Launching,
            error: "no capacity".into(),
            log_tail: None,
            logs: None,
        };
        assert!(r.stopped_getting_a_machine());
        r.status = Status::Failed {
            step: Step::Racing,
            error: "esrally exited with 64".into(),
            log_tail: None,
            logs: None,
        };
        assert!(!r.stopped_getting_a_machine());
    }

    #[test]
    fn recorded_settings_read_as_part_of_the_pretty_printed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.state.json");
        let mut state = State::new("w");
        let mut r = record();
        r.settings = serde_json::json!({"tags": {"team": "perf"}, "track": "geonames"}).into();
        state.tests.insert(Address::new("a", "b").unwrap(), r);
        save(&path, &mut state).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let expected = r#"
      "settings": {
        "tags": {
          "team": "perf"
        },
        "track": "geonames"
      },
"#;
        assert!(text.contains(expected), "{text}");
        // Read back, the settings are the same text and the same tree.
        let loaded = load(&path).unwrap().unwrap();
        assert_eq!(loaded, state);
        assert_eq!(
            loaded.tests.values().next().unwrap().settings.value()["tags"]["team"],
            "perf"
        );
    }

    #[test]
    fn run_ids_are_recognised_by_their_shape() {
        assert!(is_run_id(&new_run_id()));
        assert!(is_run_id("20261124T081500Z-aaaaaa"));
        for not in [
            "old",
            "20261124T081500Z",
            "20261124-081500Z-aaaaaa",
            "report.html",
        ] {
            assert!(!is_run_id(not), "{not}");
        }
    }

    #[test]
    fn a_version_1_state_names_its_machines_in_ec2_words_and_is_read_and_written_as_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.state.json");
        let old = r#"{"version": 1, "lineage": "7d8a5b6e-1c1e-4d4b-9a51-8a4c7a1f0f00", "serial": 3, "workspace": "w", "tests": {"s.t": {"config_hash": "abc", "settings": {}, "race_command": "esrally", "status": "completed", "attempt": 1, "instance": {"provider": "aws", "id": "i-1", "launched_at": "2026-12-01T00:00:00Z", "terminated_at": "2026-12-01T01:00:00Z"}}}}"#;
        fs::write(&path, old).unwrap();
        let mut state = load(&path).unwrap().expect("the state file is there");
        let machine = state.tests[&"s.t".parse().unwrap()]
            .machine
            .clone()
            .unwrap();
        assert_eq!(
            (machine.id.as_str(), machine.released_at),
            ("i-1", Some("2026-12-01T01:00:00Z".parse().unwrap()))
        );
        assert_eq!(state.version, STATE_VERSION);
        save(&path, &mut state).unwrap();
        let written = fs::read_to_string(&path).unwrap();
        assert!(
            written.contains("\"version\": 2")
                && written.contains("\"machine\"")
                && written.contains("\"released_at\"")
                && !written.contains("instance")
                && !written.contains("terminated_at"),
            "{written}"
        );
        assert_eq!(load(&path).unwrap().unwrap().tests, state.tests);
    }

    #[test]
    fn a_state_with_a_key_this_rallyctl_does_not_know_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.state.json");
        let record = |extra: &str, machine: &str| {
            format!(
                r#"{{"version": 1, "lineage": "7d8a5b6e-1c1e-4d4b-9a51-8a4c7a1f0f00", "serial": 3, "workspace": "w", "tests": {{"s.t": {{"config_hash": "abc", "settings": {{}}, "race_command": "esrally", "status": "completed", "attempt": 1, "instance": {{"provider": "aws", "id": "i-1", "launched_at": "2026-12-01T00:00:00Z"{machine}}}, "results": [{{"path": "r.csv", "sha256": "00", "bytes": 1}}]{extra}}}}}}}"#
            )
        };
        load_str(&path, &record("", "")).expect("the record as written is valid");
        for (text, key) in [
            (
                r#"{"version": 1, "lineage": "7d8a5b6e-1c1e-4d4b-9a51-8a4c7a1f0f00", "serial": 3, "workspace": "w", "tests": {}, "team_notes": "keep me"}"#.to_owned(),
                "team_notes",
            ),
            (record(r#", "spot_price": 0.1"#, ""), "spot_price"),
            (record("", r#", "owner": "perf-team""#), "owner"),
        ] {
            fs::write(&path, &text).unwrap();
            let err = load(&path).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("left untouched"), "{err}");
            assert_eq!(fs::read_to_string(&path).unwrap(), text);
        }
    }

    fn load_str(path: &Path, text: &str) -> Result<Option<State>, StateError> {
        fs::write(path, text).unwrap();
        load(path)
    }

    /// A record's status keys must make one status: a completed test with an error, or a
    /// failure without one, is damage, not something to guess at.
    #[test]
    fn a_record_whose_status_keys_do_not_fit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.state.json");
        for (status, wrong) in [
            (r#""status": "completed", "error": "boom""#, "has error"),
            (r#""status": "failed", "step": "racing""#, "has step"),
            (r#""status": "in_progress""#, "has none"),
            (r#""status": "pending", "log_tail": "x""#, "has log_tail"),
        ] {
            let text = format!(
                r#"{{"version": 1, "lineage": "7d8a5b6e-1c1e-4d4b-9a51-8a4c7a1f0f00", "serial": 3, "workspace": "w", "tests": {{"s.t": {{"config_hash": "abc", "settings": {{}}, "race_command": "esrally", {status}, "attempt": 1}}}}}}"#
            );
            let err = load_str(&path, &text).unwrap_err().to_string();
            assert!(
                err.contains(wrong) && err.contains("left untouched"),
                "{status}: {err}"
            );
        }
    }
}
