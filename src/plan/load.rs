//! Validation: the spanned tree of a plan file to a typed [`Plan`], every problem collected.
//!
//! A plan may hold ten thousand tests, so the hot path allocates only what the [`Plan`] keeps:
//! a value is made once where it is written (a default once for every test that inherits it),
//! and a problem's field path (`suite[3].test[7].track`) is only formatted when there is a
//! problem to report.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::diag::{PlanErrors, Sink};
use super::source::{Entry, Format, Kind, Node};
use super::{
    AwsSettings, Connect, LocalPath, MachineSettings, Market, MarketKind, PLAN_VERSION, Plan,
    ProviderKind, RallyConfig, Repeat, RepeatOn, Settings, SortedMap, SpotOptions, SshSettings,
    Subnets, Suite, Test, Text, TrackSource, VariantOf,
};
use crate::FastHash;
use crate::address::{self, Address};

/// The type each settings key takes; the same keys are valid in `[defaults]` and in a test.
#[derive(Clone, Copy, PartialEq)]
enum Ty {
    Str,
    Strs,
    Bool,
    Port,
    /// At least the given minimum, which the message explains.
    Duration(Duration, &'static str),
    Connect,
    /// `on_demand` or `spot`.
    Market,
    /// US dollars per hour: a positive decimal, as a string or a number.
    Price,
    Provider,
    /// How many times a test races: 1 to [`MAX_REPETITIONS`].
    Repetitions,
    RepeatOn,
    /// A pool of SSH hosts: at least one, none twice.
    Hosts,
    /// `host:port` each.
    HostPorts,
    /// An AWS region name: `us-east-1`.
    Region,
    /// An EC2 resource id with this prefix: `ami-0123abcd`.
    AwsId(&'static str),
    /// An AMI id, or `"baked"` (the image `rallyctl bake` made from `base_ami`).
    Ami,
    /// A list of them.
    AwsIds(&'static str),
    /// A version of a PyPI package: `2.13.0`, `2.14.0rc1`.
    Version,
    /// EC2 tags: a table of strings within EC2's limits, apart from rallyctl's own.
    Tags,
    JsonMap,
    File,
    TrackDir,
}

/// Every settings key, sorted by name so that a key is found by binary search.
const SETTINGS: [(&str, Ty); 39] = [
    ("ami", Ty::Ami),
    ("base_ami", Ty::AwsId("ami")),
    ("car", Ty::Str),
    ("car_params", Ty::JsonMap),
    ("challenge", Ty::Str),
    ("client_options", Ty::Str),
    ("connect", Ty::Connect),
    ("distribution_version", Ty::Str),
    ("hosts", Ty::Hosts),
    ("instance_type", Ty::Str),
    ("market", Ty::Market),
    ("max_price", Ty::Price),
    (
        "max_runtime",
        Ty::Duration(
            MIN_RUNTIME,
            "the 1 minute the shutdown watchdog can schedule",
        ),
    ),
    ("offline", Ty::Bool),
    ("on_interruption", Ty::Market),
    ("pipeline", Ty::Str),
    ("provider", Ty::Provider),
    ("rally_args", Ty::Strs),
    ("rally_config", Ty::File),
    ("rally_version", Ty::Version),
    ("region", Ty::Region),
    ("remote_dir", Ty::Str),
    ("repeat_on", Ty::RepeatOn),
    ("repetitions", Ty::Repetitions),
    ("reuse_instances", Ty::Bool),
    ("runtime_jdk", Ty::Str),
    ("security_group_ids", Ty::AwsIds("sg")),
    ("ssh_key", Ty::Str),
    ("ssh_known_hosts", Ty::Str),
    ("ssh_port", Ty::Port),
    ("ssh_user", Ty::Str),
    (
        "stall_timeout",
        Ty::Duration(Duration::from_secs(1), "a second"),
    ),
    ("subnet_id", Ty::AwsId("subnet")),
    ("subnet_ids", Ty::AwsIds("subnet")),
    ("tags", Ty::Tags),
    ("target_hosts", Ty::HostPorts),
    ("track", Ty::Str),
    ("track_params", Ty::JsonMap),
    ("track_path", Ty::TrackDir),
];

fn setting(key: &str) -> Option<usize> {
    SETTINGS.binary_search_by(|(k, _)| (*k).cmp(key)).ok()
}

/// The index of a settings key, resolved at compile time (`const { at("region") }`).
const fn at(name: &str) -> usize {
    let mut i = 0;
    while i < SETTINGS.len() {
        let (k, n) = (SETTINGS[i].0.as_bytes(), name.as_bytes());
        if k.len() == n.len() {
            let mut j = 0;
            while j < k.len() && k[j] == n[j] {
                j += 1;
            }
            if j == k.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("not a settings key")
}

const TOP_KEYS: &[&str] = &["version", "name", "defaults", "suite", "backend"];
const S3_KEYS: &[&str] = &[
    "bucket", "prefix", "region", "endpoint", "profile", "role_arn",
];
const SUITE_KEYS: &[&str] = &["name", "parallelism", "reuse_instances", "test"];
const SETTINGS_NAMES: [&str; SETTINGS.len()] = {
    let mut names = [""; SETTINGS.len()];
    let mut i = 0;
    while i < SETTINGS.len() {
        names[i] = SETTINGS[i].0;
        i += 1;
    }
    names
};
/// Settings only some providers read, by index into [`SETTINGS`]; every other setting is for
/// all of them.
const AWS_ONLY: [usize; 13] = [
    at("ami"),
    at("base_ami"),
    at("connect"),
    at("instance_type"),
    at("market"),
    at("max_price"),
    at("on_interruption"),
    at("region"),
    at("reuse_instances"),
    at("security_group_ids"),
    at("subnet_id"),
    at("subnet_ids"),
    at("tags"),
];
/// Settings that say one thing two ways: a table that sets either inherits neither.
const ALTERNATIVES: [[usize; 2]; 2] = [
    [at("track"), at("track_path")],
    [at("subnet_id"), at("subnet_ids")],
];
const SSH_ONLY: [usize; 3] = [at("hosts"), at("ssh_key"), at("ssh_known_hosts")];
/// Beside the settings only some providers read (which make or reach a machine), what bounds a
/// test's machine or says how often it races: none may differ between the variants of a test,
/// since they share the machine ([`shares_machine`]).
const PER_MACHINE: [usize; 5] = [
    at("max_runtime"),
    at("provider"),
    at("remote_dir"),
    at("repeat_on"),
    at("repetitions"),
];

/// Whether the setting at index `i` is the same for every variant of a test.
fn shares_machine(i: usize) -> bool {
    AWS_ONLY.contains(&i)
        || SSH_ONLY.contains(&i)
        || NOT_LOCAL.contains(&i)
        || PER_MACHINE.contains(&i)
}
const NOT_LOCAL: [usize; 2] = [at("ssh_port"), at("ssh_user")];

/// Whether `provider` reads the setting at index `i`.
fn applies(i: usize, provider: ProviderKind) -> bool {
    match provider {
        ProviderKind::Aws => !SSH_ONLY.contains(&i),
        ProviderKind::Ssh => !AWS_ONLY.contains(&i),
        ProviderKind::Local => {
            !AWS_ONLY.contains(&i) && !SSH_ONLY.contains(&i) && !NOT_LOCAL.contains(&i)
        }
    }
}

/// Settings a test of the provider must have, by index into [`SETTINGS`].
fn required(provider: ProviderKind) -> &'static [usize] {
    match provider {
        ProviderKind::Aws => &const { [at("region"), at("ami"), at("instance_type")] },
        ProviderKind::Ssh => &const { [at("hosts")] },
        ProviderKind::Local => &[],
    }
}

/// An EC2 id: `prefix-` and up to 17 lowercase hex digits (8 in older ids, 17 in newer).
fn is_aws_id(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| {
            (1..=17).contains(&hex.len())
                && hex
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        })
}

/// EC2 allows 50 tags per instance, and rallyctl sets six of its own (workspace, lineage, test,
/// run, attempt, Name).
const MAX_USER_TAGS: usize = 44;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;

/// Why EC2 would refuse the tag, or rallyctl would have to drop it.
fn tag_problem(key: &str, value: &str) -> Option<String> {
    if key.is_empty() || key.chars().count() > MAX_TAG_KEY {
        Some(format!("a tag key has 1 to {MAX_TAG_KEY} characters"))
    } else if value.chars().count() > MAX_TAG_VALUE {
        Some(format!(
            "a tag value has at most {MAX_TAG_VALUE} characters"
        ))
    } else if key.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("aws:")) {
        Some(format!(
            "`{key}`: EC2 reserves tag keys that start with `aws:`"
        ))
    } else if key.starts_with("rallyctl:") || key == "Name" {
        Some(format!("`{key}`: rallyctl sets this tag itself"))
    } else {
        None
    }
}

fn provider_of(raw: &Raw) -> ProviderKind {
    match raw[const { at("provider") }] {
        Some(Val::Provider(p)) => p,
        _ => ProviderKind::default(),
    }
}
/// Races of one test; more would be a typo (statistics settle long before).
const MAX_REPETITIONS: i64 = 100;
/// A suite's bound on tests at once; more would be a typo, not a fleet.
const MAX_PARALLELISM: i64 = 1000;
/// From this many tests on, suites are read on all cores.
const PARALLEL_FROM_TESTS: usize = 512;
/// `shutdown -h +N` counts whole minutes, so a shorter watchdog cannot be scheduled.
const MIN_RUNTIME: Duration = Duration::from_secs(60);

/// A setting as written, checked for its type. Cloning one is cheap: a default is made once
/// and shared by every test that inherits it.
#[derive(Debug, Clone)]
enum Val {
    Str(Text),
    Path(LocalPath),
    Strs(Arc<[Text]>),
    Bool(bool),
    Port(u16),
    Duration(Duration),
    Connect(Connect),
    Market(MarketKind),
    Provider(ProviderKind),
    Repetitions(NonZeroU32),
    RepeatOn(RepeatOn),
    /// Written, but wrong (and reported where it is written): the key is not missing, and the
    /// test it reaches cannot be built.
    Invalid,
    StrMap(SortedMap<Text>),
    JsonMap(SortedMap<serde_json::Value>),
}

/// One table's settings as written, indexed like [`SETTINGS`].
type Raw = [Option<Val>; SETTINGS.len()];

/// Where a value sits in the plan, e.g. `suite[0].test[1].track`: a chain on the stack,
/// formatted only when a problem is reported.
#[derive(Clone, Copy)]
struct Field<'p> {
    parent: Option<&'p Field<'p>>,
    part: Part<'p>,
}

#[derive(Clone, Copy)]
enum Part<'p> {
    Root,
    Key(&'p str),
    Index(usize),
}

impl<'p> Field<'p> {
    const ROOT: Field<'static> = Field {
        parent: None,
        part: Part::Root,
    };

    fn key<'c>(&'c self, key: &'c str) -> Field<'c> {
        Field {
            parent: Some(self),
            part: Part::Key(key),
        }
    }

    fn index(&self, index: usize) -> Field<'_> {
        Field {
            parent: Some(self),
            part: Part::Index(index),
        }
    }
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(parent) = self.parent else {
            return Ok(());
        };
        parent.fmt(f)?;
        let at_root = matches!(parent.part, Part::Root);
        match self.part {
            Part::Root => Ok(()),
            Part::Key(key) if at_root => f.write_str(key),
            Part::Key(key) => write!(f, ".{key}"),
            Part::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A plan larger than this is a mistake (a device, a log), not a fleet: a plan of 10,000
/// tests is about 1.3 MiB.
pub const MAX_PLAN_BYTES: u64 = 64 << 20;

/// A saved plan (`plan -out`) is JSON with a `format_version` near its start.
fn looks_saved(text: &str) -> bool {
    text.trim_start().starts_with('{')
        && text.contains("\"format_version\"")
        && serde_json::from_str::<serde_json::Value>(text)
            .is_ok_and(|v| v.get("format_version").is_some())
}

pub fn read(path: &Path) -> Result<String, PlanErrors> {
    let text = String::from_utf8(read_bytes(path)?).map_err(|e| {
        single(
            path,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    if looks_saved(&text) {
        return Err(single(
            path,
            "a saved plan (written by `rallyctl plan -out`), not a plan file: `rallyctl apply` takes it as it is".into(),
        ));
    }
    Ok(text)
}

/// A plan file's bytes, at most [`MAX_PLAN_BYTES`], without a byte-order mark.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, PlanErrors> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| single(path, format!("cannot read: {e}"));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut text = Vec::new();
    // Read at most one byte past the limit, so that `/dev/zero` is refused, not read forever.
    file.take(MAX_PLAN_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_PLAN_BYTES {
        return Err(single(
            path,
            format!("larger than {} MiB: not a plan file", MAX_PLAN_BYTES >> 20),
        ));
    }
    // A byte-order mark (editors on Windows write one) is no part of the plan.
    if text.starts_with(b"\xEF\xBB\xBF") {
        text.drain(..3);
    }
    Ok(text)
}

fn single(path: &Path, message: String) -> PlanErrors {
    let mut sink = Sink::new(path, "");
    sink.error(&(0..0), "", message);
    PlanErrors {
        file: path.to_owned(),
        diagnostics: sink.diagnostics,
    }
}

/// The format follows the extension: `.json` is JSON, anything else TOML.
pub fn format_of(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
        _ => Format::Toml,
    }
}

/// Something found wrong with a setting after the plan was read (its value does not exist in
/// the account): the keys it may be written under, the value, and what is wrong.
pub struct Finding<'a> {
    pub keys: &'a [&'a str],
    pub value: &'a str,
    pub message: &'a str,
}

/// Diagnostics for `findings`, each where the plan file writes its value under one of its keys
/// (in `[defaults]` or a test; every place it is written), so that a problem found in the
/// account reads like one found in the file. A value written nowhere (inherited from a
/// built-in default) is reported at the top of the file.
pub fn locate(path: &Path, text: &str, findings: &[Finding<'_>]) -> PlanErrors {
    let mut sink = Sink::new(path, text);
    let tree = match format_of(path) {
        Format::Toml => super::toml_doc::parse(text),
        Format::Json => super::json_doc::parse(text),
    };
    let mut tables: Vec<(String, &[Entry<'_>])> = Vec::new();
    if let Ok(Node {
        kind: Kind::Table(top),
        ..
    }) = &tree
    {
        if let Some(Kind::Table(d)) = get(top, "defaults").map(|e| &e.value.kind) {
            tables.push(("defaults".into(), d));
        }
        let suites = match get(top, "suite").map(|e| &e.value.kind) {
            Some(Kind::Array(suites)) => &suites[..],
            _ => &[],
        };
        for (i, suite) in suites.iter().enumerate() {
            let Kind::Table(suite) = &suite.kind else {
                continue;
            };
            let Some(Kind::Array(tests)) = get(suite, "test").map(|e| &e.value.kind) else {
                continue;
            };
            for (j, test) in tests.iter().enumerate() {
                if let Kind::Table(t) = &test.kind {
                    tables.push((format!("suite[{i}].test[{j}]"), t));
                    super::matrix::settings_tables(
                        t,
                        &format!("suite[{i}].test[{j}]"),
                        &mut tables,
                    );
                }
            }
        }
    }
    for f in findings {
        let mut found = false;
        for (table, entries) in &tables {
            for e in entries.iter().filter(|e| f.keys.contains(&&*e.key)) {
                let at = match &e.value.kind {
                    Kind::String(v) if v == f.value => Some((e.value.span.clone(), None)),
                    Kind::Array(items) => items.iter().enumerate().find_map(|(n, item)| {
                        matches!(&item.kind, Kind::String(v) if v == f.value)
                            .then(|| (item.span.clone(), Some(n)))
                    }),
                    _ => None,
                };
                if let Some((span, index)) = at {
                    let field = match index {
                        Some(n) => format!("{table}.{}[{n}]", e.key),
                        None => format!("{table}.{}", e.key),
                    };
                    sink.error(&span, field, f.message);
                    found = true;
                }
            }
        }
        if !found {
            sink.error(&(0..0), f.keys[0], f.message);
        }
    }
    sink.diagnostics.sort_by_key(|d| (d.line, d.column));
    PlanErrors {
        file: path.to_owned(),
        diagnostics: sink.diagnostics,
    }
}

/// The top-level `name` of a plan, checked as a workspace name, and its `[backend]`; nothing
/// else is read or checked (no template, track or other setting), so a plan broken elsewhere
/// still names its workspace and where it lives.
pub fn head(path: &Path, text: &str) -> Result<(String, Option<super::S3Config>), PlanErrors> {
    let mut sink = Sink::new(path, text);
    let tree = match format_of(path) {
        Format::Toml => super::toml_doc::parse(text),
        Format::Json => super::json_doc::parse(text),
    };
    let name = match tree {
        Ok(root) => {
            let mut loader = Loader {
                sink: &mut sink,
                format: format_of(path),
                root: Path::new(""),
            };
            match &root.kind {
                Kind::Table(entries) => {
                    let backend = get(entries, "backend")
                        .and_then(|e| loader.backend(&e.value, Field::ROOT.key("backend")));
                    match get(entries, "name") {
                        Some(e) => loader
                            .name(&e.value, Field::ROOT.key("name"))
                            .map(|n| (n.to_owned(), backend)),
                        None => {
                            loader.sink.error(
                                &(0..0),
                                "name",
                                "missing required key `name` (the workspace name)",
                            );
                            None
                        }
                    }
                }
                other => loader.expected(&root.span, Field::ROOT, "a table", other),
            }
        }
        Err(e) => {
            sink.error(&e.span, "", format!("syntax error: {}", e.message));
            None
        }
    };
    match name {
        Some(name) if sink.diagnostics.is_empty() => Ok(name),
        _ => Err(PlanErrors {
            file: path.to_owned(),
            diagnostics: sink.diagnostics,
        }),
    }
}

pub fn parse(path: &Path, text: &str) -> Result<Plan, PlanErrors> {
    let format = format_of(path);
    let mut sink = Sink::new(path, text);
    let tree = match format {
        Format::Toml => super::toml_doc::parse(text),
        Format::Json => super::json_doc::parse(text),
    };
    let root = super::project_root(path);
    let plan = match tree {
        Ok(tree) => Loader {
            sink: &mut sink,
            format,
            root: &root,
        }
        .plan(path, &tree),
        Err(e) => {
            sink.error(&e.span, "", format!("syntax error: {}", e.message));
            None
        }
    };
    // Position order reads like a compiler's output, whichever pass found each problem.
    sink.diagnostics.sort_by_key(|d| (d.line, d.column));
    match plan {
        Some(plan) if sink.diagnostics.is_empty() => Ok(plan),
        _ => Err(PlanErrors {
            file: path.to_owned(),
            diagnostics: sink.diagnostics,
        }),
    }
}

struct Loader<'s, 'a> {
    sink: &'s mut Sink<'a>,
    format: Format,
    /// The project root paths are recorded relative to ([`LocalPath`]).
    root: &'s Path,
}

fn get<'n>(entries: &'n [Entry<'n>], key: &str) -> Option<&'n Entry<'n>> {
    entries.iter().find(|e| e.key == key)
}

impl<'n> Loader<'_, '_> {
    fn plan(&mut self, path: &Path, root: &'n Node<'n>) -> Option<Plan> {
        let top = Field::ROOT;
        let entries = self.table(root, top)?;
        self.unknown_keys(entries, top, TOP_KEYS);
        self.duplicate_keys(entries, top);

        match get(entries, "version") {
            None => self.sink.error(
                &(0..0),
                "version",
                format!("missing required key `version` (set `version = {PLAN_VERSION}`)"),
            ),
            Some(e) => match e.value.kind {
                Kind::Integer(PLAN_VERSION) => {}
                Kind::Integer(v) => self.sink.error(
                    &e.value.span,
                    "version",
                    format!("plan version {v} is not supported; this rallyctl reads version {PLAN_VERSION}"),
                ),
                ref other => {
                    self.expected::<()>(&e.value.span, top.key("version"), "an integer", other);
                }
            },
        }
        let name = match get(entries, "name") {
            None => {
                self.sink.error(
                    &(0..0),
                    "name",
                    "missing required key `name` (the workspace name)",
                );
                None
            }
            Some(e) => self.name(&e.value, top.key("name")),
        };
        let defaults_field = top.key("defaults");
        let mut defaults = match get(entries, "defaults") {
            Some(e) => self.settings_table(&e.value, defaults_field, &[], ProviderKind::default()),
            None => empty(),
        };
        // The built-in defaults lie under `[defaults]`, made once like them. Those of one
        // provider (EC2's `ssh_user`, `connect`) are filled in where its settings are built.
        for (key, value) in [
            ("rally_version", Val::Str("2.13.0".into())),
            ("remote_dir", Val::Str("rallyctl".into())),
            ("max_runtime", Val::Duration(Duration::from_secs(3 * 3600))),
            ("stall_timeout", Val::Duration(super::DEFAULT_STALL_TIMEOUT)),
            ("ssh_port", Val::Port(22)),
        ] {
            defaults[at(key)].get_or_insert(value);
        }

        let mut suites = Vec::new();
        match get(entries, "suite") {
            None => self.sink.error_with_help(
                &(0..0),
                "suite",
                "the plan has no suites",
                "add at least one [[suite]] with a [[suite.test]]",
            ),
            Some(e) => {
                let suite_field = top.key("suite");
                if let Some(items) = self.array(&e.value, suite_field) {
                    let read = self.suites(items, suite_field, &defaults);
                    let mut seen = HashSet::new();
                    for (i, (node, suite)) in items.iter().zip(read).enumerate() {
                        let field = suite_field.index(i);
                        if let Some(suite) = suite {
                            if !seen.insert(suite.name.clone()) {
                                self.sink.error(
                                    &node.span,
                                    field.key("name"),
                                    format!("duplicate suite name `{}`", suite.name),
                                );
                            }
                            suites.push(suite);
                        }
                    }
                }
            }
        }
        let backend = match get(entries, "backend") {
            Some(e) => Some(self.backend(&e.value, top.key("backend"))?),
            None => None,
        };
        Some(Plan {
            name: name?.to_owned(),
            source: path.to_owned(),
            root: self.root.to_owned(),
            suites,
            backend,
        })
    }

    /// `[backend]`: `s3 = { bucket = ..., prefix = ..., ... }`, the only store there is.
    fn backend(&mut self, node: &'n Node<'n>, field: Field<'_>) -> Option<super::S3Config> {
        let entries = self.table(node, field)?;
        self.unknown_keys(entries, field, &["s3"]);
        self.duplicate_keys(entries, field);
        let Some(s3) = get(entries, "s3") else {
            self.sink.error_with_help(
                &node.span,
                field,
                "the backend names no store",
                "set s3 = { bucket = \"...\", prefix = \"...\" }, or remove [backend] to keep state and results in this directory",
            );
            return None;
        };
        let field = field.key("s3");
        let keys = self.table(&s3.value, field)?;
        self.unknown_keys(keys, field, S3_KEYS);
        self.duplicate_keys(keys, field);
        let value = |loader: &mut Self, key: &str| -> Option<(&'n str, Range<usize>)> {
            let e = get(keys, key)?;
            let text = loader.string(&e.value, field.key(key))?;
            Some((text, e.value.span.clone()))
        };
        let bucket = value(self, "bucket");
        let check = |loader: &mut Self, key: &str, problem: Option<String>, span| {
            if let Some(problem) = problem {
                loader.sink.error(&span, field.key(key), problem);
            }
        };
        let bucket = match bucket {
            Some((b, span)) => {
                check(self, "bucket", super::check_bucket(b).err(), span);
                b
            }
            None => {
                self.sink.error(
                    &s3.value.span,
                    field.key("bucket"),
                    "missing required key `bucket` (the S3 bucket state and results are kept in)",
                );
                ""
            }
        };
        let prefix = value(self, "prefix").map_or("", |(p, _)| p.trim_matches('/'));
        let optional = |loader: &mut Self, key: &str, rule: fn(&str) -> Option<String>| {
            let (text, span) = value(loader, key)?;
            match rule(text) {
                Some(problem) => {
                    check(loader, key, Some(problem), span);
                    None
                }
                None => Some(text.to_owned()),
            }
        };
        let region = optional(self, "region", |r| {
            r.is_empty().then(|| "the region is empty".to_owned())
        });
        let endpoint = optional(self, "endpoint", |e| {
            (!e.starts_with("http://") && !e.starts_with("https://"))
                .then(|| format!("`{e}` is no endpoint URL: expected http:// or https://"))
        });
        let profile = optional(self, "profile", |p| {
            p.is_empty().then(|| "the profile is empty".to_owned())
        });
        let role_arn = optional(self, "role_arn", |r| {
            (!r.starts_with("arn:"))
                .then(|| format!("`{r}` is no role ARN: expected arn:aws:iam::ACCOUNT:role/NAME"))
        });
        Some(super::S3Config {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            region,
            endpoint,
            profile,
            role_arn,
        })
    }

    /// Reads every suite. Suites do not depend on each other, and a large plan is mostly its
    /// tests, so a plan of many tests is read on all cores, each part with its own sink.
    fn suites(
        &mut self,
        items: &'n [Node<'n>],
        field: Field<'_>,
        defaults: &Raw,
    ) -> Vec<Option<Suite>> {
        let tests: usize = items
            .iter()
            .map(|suite| match &suite.kind {
                Kind::Table(entries) => get(entries, "test").map_or(0, |t| match &t.value.kind {
                    Kind::Array(tests) => tests.len(),
                    _ => 0,
                }),
                _ => 0,
            })
            .sum();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if tests < PARALLEL_FROM_TESTS || threads == 1 || items.len() == 1 {
            return (items.iter().enumerate())
                .map(|(i, node)| self.suite(node, field.index(i), defaults))
                .collect();
        }
        let chunk = items.len().div_ceil(threads);
        let format = self.format;
        let root = self.root;
        let sink = &*self.sink;
        let parts: Vec<_> = std::thread::scope(|scope| {
            let workers: Vec<_> = (items.chunks(chunk).enumerate())
                .map(|(c, part)| {
                    scope.spawn(move || {
                        let mut sink = sink.fork();
                        let mut loader = Loader {
                            sink: &mut sink,
                            format,
                            root,
                        };
                        let suites: Vec<_> = (part.iter().enumerate())
                            .map(|(i, node)| {
                                loader.suite(node, field.index(c * chunk + i), defaults)
                            })
                            .collect();
                        (suites, sink.diagnostics)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("validation does not panic"))
                .collect()
        });
        let mut suites = Vec::with_capacity(items.len());
        for (part, diagnostics) in parts {
            suites.extend(part);
            self.sink.diagnostics.extend(diagnostics);
        }
        suites
    }

    fn suite(&mut self, node: &'n Node<'n>, field: Field<'_>, defaults: &Raw) -> Option<Suite> {
        let entries = self.table(node, field)?;
        self.unknown_keys(entries, field, SUITE_KEYS);
        self.duplicate_keys(entries, field);
        let name = match get(entries, "name") {
            Some(e) => self.name(&e.value, field.key("name")),
            None => {
                self.sink
                    .error(&node.span, field, "missing required key `name`");
                None
            }
        };
        let parallelism = get(entries, "parallelism").and_then(|e| {
            let f = field.key("parallelism");
            match e.value.kind {
                Kind::Integer(n) if (1..=MAX_PARALLELISM).contains(&n) => {
                    NonZeroUsize::new(usize::try_from(n).ok()?)
                }
                Kind::Integer(n) => {
                    self.sink.error(
                        &e.value.span,
                        f,
                        format!("must be from 1 to {MAX_PARALLELISM}, found {n}"),
                    );
                    None
                }
                ref other => {
                    self.expected::<()>(&e.value.span, f, "an integer", other);
                    None
                }
            }
        });
        // A suite's `reuse_instances` is its tests' default, over [defaults].
        let suite_defaults;
        let defaults = match get(entries, "reuse_instances")
            .and_then(|e| self.value(&e.value, field.key("reuse_instances"), Ty::Bool))
        {
            Some(reuse @ Val::Bool(_)) => {
                let mut own = defaults.clone();
                own[const { at("reuse_instances") }] = Some(reuse);
                suite_defaults = own;
                &suite_defaults
            }
            _ => defaults,
        };
        let tests_field = field.key("test");
        let test_nodes = match get(entries, "test") {
            Some(e) => self.array(&e.value, tests_field).unwrap_or_default(),
            None => &[][..],
        };
        if test_nodes.is_empty()
            && get(entries, "test").is_none_or(|e| matches!(e.value.kind, Kind::Array(_)))
        {
            self.sink.error_with_help(
                &node.span,
                field,
                "the suite has no tests",
                "add a [[suite.test]] below it, or remove the suite",
            );
        }
        let mut tests = Vec::with_capacity(test_nodes.len());
        let reported = self.sink.diagnostics.len();
        let expanded = super::matrix::expand(test_nodes, &tests_field, &SETTINGS_NAMES, self.sink);
        let mut seen = HashSet::with_capacity_and_hasher(expanded.len(), FastHash::default());
        for expansion in &expanded {
            let (test_node, matrix) = (&*expansion.node, &expansion.matrix);
            let test_field = tests_field.index(expansion.index);
            let Some(entries) = self.table(test_node, test_field) else {
                continue;
            };
            let test_name = match get(entries, "name") {
                Some(e) => self.name(&e.value, test_field.key("name")),
                None => {
                    self.sink
                        .error(&test_node.span, test_field, "missing required key `name`");
                    None
                }
            }
            .map(|name| expansion.name.as_deref().unwrap_or(name));
            let raw = self.settings_table(
                test_node,
                test_field,
                &["name", "variant"],
                provider_of(defaults),
            );
            if let Some(test_name) = test_name
                && !seen.insert(Cow::Borrowed(test_name))
            {
                self.sink.error(
                    &test_node.span,
                    test_field.key("name"),
                    format!("duplicate test name `{test_name}` in this suite"),
                );
            }
            if let Some(variants) = get(entries, "variant") {
                let parent = overlay(defaults, raw);
                let read = self.variants(&variants.value, test_node, test_field, &parent);
                if let (Some(suite), Some(test)) = (&name, test_name) {
                    for (variant, settings, repeat) in read {
                        let full = format!("{test}-{variant}");
                        let Ok(address) = Address::new(*suite, full.as_str()) else {
                            self.sink.error(
                                &test_node.span,
                                test_field.key("name"),
                                format!("`{full}` (the test's name and a variant's) is longer than a name may be"),
                            );
                            continue;
                        };
                        if !seen.insert(Cow::Owned(full)) {
                            self.sink.error(
                                &variants.value.span,
                                test_field.key("variant"),
                                format!("variant `{variant}` is test `{test}-{variant}`, which the suite already has"),
                            );
                        }
                        tests.push(Test {
                            address,
                            settings,
                            repeat,
                            variant: Some(VariantOf {
                                test: test.to_owned(),
                                name: variant,
                            }),
                            matrix: matrix.clone(),
                            reuse: false,
                        });
                    }
                }
                continue;
            }
            let merged = self.merge(defaults, raw, &test_node.span, test_field);
            if let (Some(suite), Some(test), Some((settings, repeat, reuse))) =
                (&name, test_name, merged)
            {
                let address = Address::new(*suite, test).expect("names were checked");
                tests.push(Test {
                    address,
                    settings,
                    repeat,
                    variant: None,
                    matrix: matrix.clone(),
                    reuse,
                });
            }
        }
        super::matrix::dedup(&mut self.sink.diagnostics, reported);
        Some(Suite {
            name: name?.to_owned(),
            parallelism,
            tests,
        })
    }

    /// Reads a test's `[[suite.test.variant]]` tables, each a name and the settings it races
    /// with over the test's (`parent`, already over the defaults). Variants share the test's
    /// machine and race interleaved on it, so what makes the machine cannot differ; two
    /// variants that race alike are a mistake.
    fn variants(
        &mut self,
        node: &'n Node<'n>,
        test_node: &'n Node<'n>,
        test_field: Field<'_>,
        parent: &Raw,
    ) -> Vec<(String, Settings, Repeat)> {
        let field = test_field.key("variant");
        let Some(items) = self.array(node, field) else {
            return vec![];
        };
        if items.len() < 2 {
            self.sink.error_with_help(
                &node.span,
                field,
                format!(
                    "{} variant; variants are compared with each other",
                    items.len()
                ),
                "name at least two, or set the settings on the test itself",
            );
            return vec![];
        }
        let provider = provider_of(parent);
        let mut read: Vec<(String, Settings, Repeat)> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let field = field.index(i);
            let Some(entries) = self.table(item, field) else {
                continue;
            };
            let name_node = get(entries, "name").map(|e| &e.value);
            let name = match name_node {
                Some(node) => self.name(node, field.key("name")),
                None => {
                    self.sink
                        .error(&item.span, field, "missing required key `name`");
                    None
                }
            };
            let raw = self.settings_table(item, field, &["name"], provider);
            for entry in entries {
                if let Some(i) = setting(&entry.key)
                    && shares_machine(i)
                {
                    self.sink.error_with_help(
                        &entry.key_span,
                        field.key(&entry.key),
                        format!(
                            "`{}` cannot differ between variants: they race on one machine",
                            entry.key
                        ),
                        "set it on the test, for all its variants",
                    );
                }
            }
            let merged = self.merge(parent, raw, &item.span, field);
            // Variants keep the machine of their group: they take none from another test.
            let (Some(name), Some((settings, repeat, _))) = (name, merged) else {
                continue;
            };
            if repeat.on == RepeatOn::Fresh {
                let written = match &test_node.kind {
                    Kind::Table(entries) => get(entries, "repeat_on").map(|e| &e.value.span),
                    _ => None,
                };
                self.sink.error(
                    written.unwrap_or(&test_node.span),
                    test_field.key("repeat_on"),
                    "variants race interleaved on one machine; repeat_on = \"fresh\" cannot apply to them",
                );
                return vec![];
            }
            if let Some((other, ..)) = read.iter().find(|(n, ..)| n == name) {
                self.sink.error(
                    name_node.map_or(&item.span, |n| &n.span),
                    field.key("name"),
                    format!("duplicate variant name `{other}`"),
                );
                continue;
            }
            if let Some((other, ..)) = read.iter().find(|(_, s, _)| *s == settings) {
                self.sink.error(
                    &item.span,
                    field,
                    format!("variants `{other}` and `{name}` differ in nothing"),
                );
                continue;
            }
            read.push((name.to_owned(), settings, repeat));
        }
        read
    }

    /// Reads the settings keys of one table; `extra` names keys the caller reads itself. Keys
    /// that the table's provider (its own `provider`, else `inherited`) does not read are
    /// reported where they are written. What a test inherits from `[defaults]` for another
    /// provider is not its own mistake, and is left out.
    fn settings_table(
        &mut self,
        node: &'n Node<'n>,
        field: Field<'_>,
        extra: &[&str],
        inherited: ProviderKind,
    ) -> Raw {
        let mut raw = empty();
        let Some(entries) = self.table(node, field) else {
            return raw;
        };
        self.duplicate_keys(entries, field);
        let mut found = Vec::with_capacity(entries.len());
        for entry in entries {
            let key: &'n str = &entry.key;
            match setting(key) {
                Some(i) => {
                    let (name, ty) = SETTINGS[i];
                    raw[i] = Some(
                        self.value(&entry.value, field.key(name), ty)
                            .unwrap_or(Val::Invalid),
                    );
                    found.push((i, entry));
                }
                None if extra.contains(&key) => {}
                None => self.unknown_key(entry, field, &SETTINGS_NAMES, extra),
            }
        }
        let provider = match raw[const { at("provider") }] {
            Some(Val::Provider(p)) => p,
            _ => inherited,
        };
        for (i, entry) in found {
            if !applies(i, provider) {
                self.foreign_key(entry, i, provider, field);
            }
        }
        raw
    }

    fn value(&mut self, node: &'n Node<'n>, field: Field<'_>, ty: Ty) -> Option<Val> {
        let span = &node.span;
        match ty {
            Ty::Str => self.string(node, field).map(|s| Val::Str(s.into())),
            Ty::File => {
                let path = self.string(node, field)?;
                match std::fs::File::open(path).and_then(|f| f.metadata()) {
                    Ok(meta) if meta.is_file() => {
                        Some(Val::Path(LocalPath::in_project(Path::new(path), self.root)))
                    }
                    Ok(_) => {
                        self.sink
                            .error(span, field, format!("`{path}` is not a file"));
                        None
                    }
                    Err(e) => {
                        self.sink
                            .error(span, field, format!("cannot read `{path}`: {e}"));
                        None
                    }
                }
            }
            Ty::TrackDir => {
                let path = self.string(node, field)?;
                let track_json = Path::new(path).join("track.json");
                match std::fs::File::open(&track_json) {
                    Ok(_) => Some(Val::Path(LocalPath::in_project(Path::new(path), self.root))),
                    Err(e) => {
                        self.sink.error_with_help(
                            span,
                            field,
                            format!("cannot read `{}`: {e}", track_json.display()),
                            "track_path names a local Rally track directory holding track.json",
                        );
                        None
                    }
                }
            }
            Ty::Strs => {
                let items = self.array(node, field)?;
                let strings: Vec<Text> = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, item)| self.string(item, field.index(i)).map(Text::from))
                    .collect();
                (strings.len() == items.len()).then(|| Val::Strs(strings.into()))
            }
            Ty::Bool => match node.kind {
                Kind::Bool(b) => Some(Val::Bool(b)),
                ref other => self.expected(span, field, "a boolean", other),
            },
            Ty::Port => match node.kind {
                Kind::Integer(n) => match u16::try_from(n) {
                    Ok(port) if port > 0 => Some(Val::Port(port)),
                    _ => {
                        self.sink
                            .error(span, field, format!("{n} is not a TCP port (1-65535)"));
                        None
                    }
                },
                ref other => self.expected(span, field, "an integer", other),
            },
            Ty::Duration(min, why) => {
                let text = self.string(node, field)?;
                match humantime::parse_duration(text) {
                    Ok(d) if d >= min => Some(Val::Duration(d)),
                    Ok(_) => {
                        self.sink
                            .error(span, field, format!("`{text}` is shorter than {why}"));
                        None
                    }
                    Err(e) => {
                        self.sink.error_with_help(
                            span,
                            field,
                            format!("`{text}` is not a duration: {e}"),
                            "write durations like \"90m\", \"3h\" or \"1h 30m\"",
                        );
                        None
                    }
                }
            }
            Ty::Provider => self.one_of(
                node,
                field,
                &[
                    ("aws", Val::Provider(ProviderKind::Aws)),
                    ("ssh", Val::Provider(ProviderKind::Ssh)),
                    ("local", Val::Provider(ProviderKind::Local)),
                ],
                "a provider",
                "\"aws\", \"ssh\" or \"local\"",
            ),
            Ty::Hosts => {
                let Some(Val::Strs(hosts)) = self.value(node, field, Ty::Strs) else {
                    return None;
                };
                if hosts.is_empty() {
                    self.sink.error_with_help(
                        span,
                        field,
                        "the pool of hosts is empty",
                        "name at least one host, as \"host\" or \"host:port\"",
                    );
                    return None;
                }
                let mut seen = HashSet::with_capacity(hosts.len());
                for (i, host) in hosts.iter().enumerate() {
                    if host.trim().is_empty()
                        || host.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        self.sink.error(
                            span,
                            field.index(i),
                            format!("{host:?} is not a host name or address"),
                        );
                        return None;
                    }
                    if !seen.insert(host) {
                        self.sink.error(
                            span,
                            field.index(i),
                            format!(
                                "`{host}` is in the pool twice; a host runs one test at a time"
                            ),
                        );
                        return None;
                    }
                }
                Some(Val::Strs(hosts))
            }
            Ty::Repetitions => match node.kind {
                Kind::Integer(n) => match u32::try_from(n).ok().and_then(NonZeroU32::new) {
                    Some(count) if n <= MAX_REPETITIONS => Some(Val::Repetitions(count)),
                    _ => {
                        self.sink.error(
                            span,
                            field,
                            format!("must be from 1 to {MAX_REPETITIONS}, found {n}"),
                        );
                        None
                    }
                },
                ref other => self.expected(span, field, "an integer", other),
            },
            Ty::RepeatOn => self.one_of(
                node,
                field,
                &[
                    ("same", Val::RepeatOn(RepeatOn::Same)),
                    ("fresh", Val::RepeatOn(RepeatOn::Fresh)),
                ],
                "a place to repeat on",
                "\"same\" (one machine, back to back) or \"fresh\" (a new machine per race)",
            ),
            Ty::Market => self.one_of(
                node,
                field,
                &[
                    ("on_demand", Val::Market(MarketKind::OnDemand)),
                    ("spot", Val::Market(MarketKind::Spot)),
                ],
                "a market",
                "\"on_demand\" or \"spot\"",
            ),
            Ty::Price => {
                let text = match node.kind {
                    Kind::Float(f) => f.to_string(),
                    Kind::Integer(n) => n.to_string(),
                    _ => self.string(node, field)?.to_owned(),
                };
                match text.parse::<f64>() {
                    Ok(p) if p.is_finite() && p > 0.0 && !text.contains(['e', 'E']) => {
                        Some(Val::Str(text.as_str().into()))
                    }
                    _ => {
                        self.sink.error(
                            span,
                            field,
                            format!("`{text}` is not a price; expected US dollars per hour above 0, e.g. \"0.05\""),
                        );
                        None
                    }
                }
            }
            Ty::Connect => self.one_of(
                node,
                field,
                &[
                    ("public_ip", Val::Connect(Connect::PublicIp)),
                    ("private_ip", Val::Connect(Connect::PrivateIp)),
                ],
                "a connect mode",
                "\"public_ip\" or \"private_ip\"",
            ),
            Ty::Tags => {
                let entries = self.table(node, field)?;
                self.duplicate_keys(entries, field);
                let mut map = Vec::with_capacity(entries.len());
                let mut ok = true;
                for e in entries {
                    let f = field.key(&e.key);
                    let Some(v) = self.string(&e.value, f) else {
                        ok = false;
                        continue;
                    };
                    if let Some(problem) = tag_problem(&e.key, v) {
                        self.sink.error(&e.key_span, f, problem);
                        ok = false;
                    }
                    map.push((Text::from(&*e.key), Text::from(v)));
                }
                ok.then(|| Val::StrMap(map.into_iter().collect()))
            }
            Ty::HostPorts => {
                let Some(Val::Strs(hosts)) = self.value(node, field, Ty::Strs) else {
                    return None;
                };
                for (i, host) in hosts.iter().enumerate() {
                    let ok = host.rsplit_once(':').is_some_and(|(name, port)| {
                        !name.trim_matches(['[', ']']).is_empty()
                            && !name.contains(char::is_whitespace)
                            && port.parse::<u16>().is_ok_and(|p| p > 0)
                    });
                    if !ok {
                        self.sink.error_with_help(
                            span,
                            field.index(i),
                            format!("`{host}` is not host:port"),
                            "write each cluster node as \"host:port\", e.g. \"10.0.0.5:9200\"",
                        );
                        return None;
                    }
                }
                Some(Val::Strs(hosts))
            }
            Ty::Region => {
                let text = self.string(node, field)?;
                let parts: Vec<&str> = text.split('-').collect();
                let ok = parts.len() >= 3
                    && parts[0].len() == 2
                    && parts[..parts.len() - 1]
                        .iter()
                        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
                    && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
                    && !parts[parts.len() - 1].is_empty();
                if !ok {
                    self.sink.error_with_help(
                        span,
                        field,
                        format!("`{text}` is not an AWS region"),
                        "write a region name, e.g. \"us-east-1\" or \"eu-west-1\"",
                    );
                    return None;
                }
                Some(Val::Str(text.into()))
            }
            Ty::Ami if matches!(&node.kind, Kind::String(s) if *s == super::BAKED) => {
                Some(Val::Str(super::BAKED.into()))
            }
            Ty::Ami => {
                let text = self.string(node, field)?;
                if !is_aws_id(text, "ami") {
                    self.sink.error_with_help(
                        span,
                        field,
                        format!("`{text}` is neither an EC2 ami id nor \"{}\"", super::BAKED),
                        "write the id, `ami-` and its hex digits, e.g. \"ami-0123456789abcdef0\", or \"baked\" for the image `rallyctl bake` makes from `base_ami`",
                    );
                    return None;
                }
                Some(Val::Str(text.into()))
            }
            Ty::AwsId(prefix) => {
                let text = self.string(node, field)?;
                if !is_aws_id(text, prefix) {
                    self.aws_id_error(span, field, text, prefix);
                    return None;
                }
                Some(Val::Str(text.into()))
            }
            Ty::AwsIds(prefix) => {
                let Some(Val::Strs(ids)) = self.value(node, field, Ty::Strs) else {
                    return None;
                };
                for (i, id) in ids.iter().enumerate() {
                    if !is_aws_id(id, prefix) {
                        self.aws_id_error(span, field.index(i), id, prefix);
                        return None;
                    }
                }
                Some(Val::Strs(ids))
            }
            Ty::Version => {
                let text = self.string(node, field)?;
                let mut parts = text.split('.');
                let numeric = |p: Option<&str>| {
                    p.is_some_and(|p| !p.is_empty() && p.starts_with(|c: char| c.is_ascii_digit()))
                };
                let ok = numeric(parts.next())
                    && numeric(parts.next())
                    && text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".+-".contains(c));
                if !ok {
                    self.sink.error_with_help(
                        span,
                        field,
                        format!("`{text}` is not a version"),
                        "write esrally's version as PyPI does, e.g. \"2.13.0\"",
                    );
                    return None;
                }
                Some(Val::Str(text.into()))
            }
            Ty::JsonMap => {
                let entries = self.table(node, field)?;
                self.duplicate_keys(entries, field);
                let mut map = Vec::with_capacity(entries.len());
                let mut ok = true;
                for e in entries {
                    match self.json(&e.value, field.key(&e.key)) {
                        Some(v) => map.push((Text::from(&*e.key), v)),
                        None => ok = false,
                    }
                }
                ok.then(|| Val::JsonMap(map.into_iter().collect()))
            }
        }
    }

    fn aws_id_error(&mut self, span: &Range<usize>, field: Field<'_>, text: &str, prefix: &str) {
        self.sink.error_with_help(
            span,
            field,
            format!("`{text}` is not an EC2 {prefix} id"),
            format!(
                "write the id, `{prefix}-` and its hex digits, e.g. \"{prefix}-0123456789abcdef0\""
            ),
        );
    }

    fn json(&mut self, node: &'n Node<'n>, field: Field<'_>) -> Option<serde_json::Value> {
        use serde_json::Value as J;
        Some(match &node.kind {
            Kind::String(s) => J::String(s.to_string()),
            Kind::Integer(i) => J::from(*i),
            Kind::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => J::Number(n),
                None => {
                    self.sink.error(
                        &node.span,
                        field,
                        format!("{f} cannot be passed to Rally as JSON"),
                    );
                    return None;
                }
            },
            Kind::Bool(b) => J::Bool(*b),
            Kind::Array(items) => J::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.json(item, field.index(i)))
                    .collect::<Option<_>>()?,
            ),
            Kind::Table(entries) => J::Object(
                entries
                    .iter()
                    .map(|e| Some((e.key.to_string(), self.json(&e.value, field.key(&e.key))?)))
                    .collect::<Option<_>>()?,
            ),
            other @ Kind::Other(_) => {
                return self.expected(
                    &node.span,
                    field,
                    "a string, number, boolean, array or table",
                    other,
                );
            }
        })
    }

    /// Merges a test's settings over the defaults and built-ins and checks the result as a whole.
    fn merge(
        &mut self,
        defaults: &Raw,
        test: Raw,
        span: &Range<usize>,
        field: Field<'_>,
    ) -> Option<(Settings, Repeat, bool)> {
        let provider = match &test[const { at("provider") }] {
            Some(Val::Provider(p)) => *p,
            _ => provider_of(defaults),
        };
        // A test on an AMI id of its own ignores the base AMI of [defaults]' baked image; its
        // own `base_ami` is a mistake.
        let own_base = test[const { at("base_ami") }].is_some();
        let mut m = overlay(defaults, test);
        // A provider written wrong leaves no way to tell which keys the test needs.
        if matches!(m[const { at("provider") }], Some(Val::Invalid)) {
            return None;
        }
        let mut ok = true;
        for &i in required(provider) {
            if m[i].is_none() {
                let key = SETTINGS[i].0;
                self.sink.error(
                    span,
                    field,
                    format!("missing required key `{key}` for provider = \"{provider}\" (set it in the test or in [defaults])"),
                );
                ok = false;
            }
        }
        let track = match (
            m[const { at("track") }].take(),
            m[const { at("track_path") }].take(),
        ) {
            (Some(Val::Invalid), _) | (_, Some(Val::Invalid)) => None,
            (Some(Val::Str(name)), None) => Some(TrackSource::Named(name)),
            (None, Some(Val::Path(path))) => Some(TrackSource::Path(path)),
            (Some(_), Some(_)) => {
                self.sink.error(
                    span,
                    field,
                    "both `track` and `track_path` are set; a test races one track",
                );
                None
            }
            _ => {
                self.sink.error(
                    span,
                    field,
                    "missing `track` (a track name) or `track_path` (a local track directory)",
                );
                None
            }
        };
        if !ok || m.iter().any(|v| matches!(v, Some(Val::Invalid))) {
            return None;
        }
        let built_in = "built-in defaults are set";
        let ssh_port = match m[const { at("ssh_port") }] {
            Some(Val::Port(p)) => p,
            _ => unreachable!("{built_in}"),
        };
        let machine = match provider {
            ProviderKind::Aws => MachineSettings::Aws({
                let ami = text(&mut m, const { at("ami") })?;
                let base_ami = text(&mut m, const { at("base_ami") });
                let baked = &*ami == super::BAKED;
                let base_ami = base_ami.filter(|_| baked || own_base);
                match (baked, &base_ami) {
                    (true, None) => {
                        self.sink.error(
                            span,
                            field,
                            "`ami = \"baked\"` needs `base_ami`: the AMI `rallyctl bake` bakes the image from",
                        );
                        return None;
                    }
                    (false, Some(_)) => {
                        self.sink.error(
                            span,
                            field.key("base_ami"),
                            "`base_ami` is read only with `ami = \"baked\"`; with an AMI id, leave it out",
                        );
                        return None;
                    }
                    _ => {}
                }
                AwsSettings {
                    ami,
                    base_ami,
                    image: None,
                    connect: match m[const { at("connect") }] {
                        Some(Val::Connect(c)) => c,
                        _ => Connect::PublicIp,
                    },
                    instance_type: text(&mut m, const { at("instance_type") })?,
                    market: self.market(&mut m, span, field)?,
                    region: text(&mut m, const { at("region") })?,
                    security_group_ids: texts(&mut m, const { at("security_group_ids") }),
                    ssh_port,
                    ssh_user: text(&mut m, const { at("ssh_user") })
                        .unwrap_or_else(|| "ec2-user".into()),
                    subnets: match (
                        text(&mut m, const { at("subnet_id") }),
                        m[const { at("subnet_ids") }].take(),
                    ) {
                        (None, None) => Subnets::Default,
                        (Some(one), None) => Subnets::One(one),
                        (None, Some(Val::Strs(ids))) if ids.is_empty() => {
                            self.sink.error(
                            span,
                            field.key("subnet_ids"),
                            "`subnet_ids` is empty; name at least one subnet, or leave it out for the default subnet",
                        );
                            return None;
                        }
                        (None, Some(Val::Strs(ids))) => Subnets::FirstWithCapacity(ids),
                        (Some(_), Some(_)) => {
                            self.sink.error(
                            span,
                            field,
                            "both `subnet_id` and `subnet_ids` are set; use `subnet_ids` alone for several",
                        );
                            return None;
                        }
                        (None, Some(_)) => return None,
                    },
                    tags: match m[const { at("tags") }].take() {
                        Some(Val::StrMap(t)) if t.len() > MAX_USER_TAGS => {
                            self.sink.error(
                            span,
                            field.key("tags"),
                            format!(
                                "{} tags with those inherited from [defaults]; EC2 allows 50 per instance, of which rallyctl sets 6: at most {MAX_USER_TAGS}",
                                t.len()
                            ),
                        );
                            return None;
                        }
                        Some(Val::StrMap(t)) => t,
                        _ => SortedMap::default(),
                    },
                }
            }),
            ProviderKind::Ssh => MachineSettings::Ssh(SshSettings {
                hosts: texts(&mut m, const { at("hosts") }),
                ssh_key: text(&mut m, const { at("ssh_key") }),
                ssh_known_hosts: text(&mut m, const { at("ssh_known_hosts") }),
                ssh_port,
                ssh_user: text(&mut m, const { at("ssh_user") }),
            }),
            ProviderKind::Local => MachineSettings::Local,
        };
        let repeat = Repeat {
            count: match m[const { at("repetitions") }] {
                Some(Val::Repetitions(n)) => n,
                _ => NonZeroU32::MIN,
            },
            on: match m[const { at("repeat_on") }] {
                Some(Val::RepeatOn(on)) => on,
                _ => RepeatOn::Same,
            },
        };
        let settings = Settings {
            car: text(&mut m, const { at("car") }),
            car_params: json_map(&mut m, const { at("car_params") }),
            challenge: text(&mut m, const { at("challenge") }),
            client_options: text(&mut m, const { at("client_options") }),
            distribution_version: text(&mut m, const { at("distribution_version") }),
            max_runtime: match m[const { at("max_runtime") }] {
                Some(Val::Duration(d)) => d,
                _ => unreachable!("{built_in}"),
            },
            stall_timeout: match m[const { at("stall_timeout") }] {
                Some(Val::Duration(d)) => d,
                _ => unreachable!("{built_in}"),
            },
            offline: matches!(m[const { at("offline") }], Some(Val::Bool(true))),
            pipeline: text(&mut m, const { at("pipeline") }),
            rally_args: texts(&mut m, const { at("rally_args") }),
            rally_config: match m[const { at("rally_config") }].take() {
                Some(Val::Path(p)) => RallyConfig::File(p),
                _ => RallyConfig::BuiltIn,
            },
            rally_version: text(&mut m, const { at("rally_version") }).expect(built_in),
            remote_dir: text(&mut m, const { at("remote_dir") }).expect(built_in),
            runtime_jdk: text(&mut m, const { at("runtime_jdk") }),
            target_hosts: texts(&mut m, const { at("target_hosts") }),
            track: track?,
            track_params: json_map(&mut m, const { at("track_params") }),
            machine,
        };
        let reuse = matches!(m[const { at("reuse_instances") }], Some(Val::Bool(true)));
        Some((settings, repeat, reuse))
    }

    /// An aws test's market; `max_price` and `on_interruption` mean something only for spot.
    fn market(&mut self, m: &mut Raw, span: &Range<usize>, field: Field<'_>) -> Option<Market> {
        let max_price = text(m, const { at("max_price") });
        let on_interruption = match m[const { at("on_interruption") }].take() {
            Some(Val::Market(kind)) => Some(kind),
            _ => None,
        };
        match m[const { at("market") }].take() {
            Some(Val::Market(MarketKind::Spot)) => Some(Market::Spot(SpotOptions {
                max_price,
                on_interruption: on_interruption.unwrap_or(MarketKind::OnDemand),
            })),
            _ => {
                for (key, set) in [
                    ("max_price", max_price.is_some()),
                    ("on_interruption", on_interruption.is_some()),
                ] {
                    if set {
                        self.sink.error_with_help(
                            span,
                            field.key(key),
                            format!("`{key}` is only read for spot instances"),
                            "set market = \"spot\", or leave it out",
                        );
                    }
                }
                (max_price.is_none() && on_interruption.is_none()).then_some(Market::OnDemand)
            }
        }
    }

    /// Reports a setting (the `SETTINGS` index `i`) that `provider` does not read.
    fn foreign_key(
        &mut self,
        entry: &Entry<'_>,
        i: usize,
        provider: ProviderKind,
        field: Field<'_>,
    ) {
        let key = SETTINGS[i].0;
        let owners: Vec<&str> = [ProviderKind::Aws, ProviderKind::Ssh]
            .into_iter()
            .filter(|p| applies(i, *p))
            .map(ProviderKind::name)
            .collect();
        self.sink.error_with_help(
            &entry.key_span,
            field.key(key),
            format!("`{key}` does not apply to provider = \"{provider}\""),
            format!(
                "`{key}` is read by provider = \"{}\" only: remove it here, or set that provider",
                owners.join("\" or \"")
            ),
        );
    }

    fn name(&mut self, node: &'n Node<'n>, field: Field<'_>) -> Option<&'n str> {
        let name = self.string(node, field)?;
        match address::check_name(name) {
            Ok(()) => Some(name),
            Err(e) => {
                self.sink.error(
                    &node.span,
                    field,
                    format!("`{}` cannot form an address: {e}", name.escape_debug()),
                );
                None
            }
        }
    }

    /// A string naming one of `choices`; anything else is reported as not `what`, with the
    /// `expected` spellings.
    fn one_of(
        &mut self,
        node: &'n Node<'n>,
        field: Field<'_>,
        choices: &[(&str, Val)],
        what: &str,
        expected: &str,
    ) -> Option<Val> {
        let text = self.string(node, field)?;
        match choices.iter().find(|(name, _)| *name == text) {
            Some((_, val)) => Some(val.clone()),
            None => {
                self.sink.error(
                    &node.span,
                    field,
                    format!("`{text}` is not {what}; expected {expected}"),
                );
                None
            }
        }
    }

    fn string(&mut self, node: &'n Node<'n>, field: Field<'_>) -> Option<&'n str> {
        match &node.kind {
            Kind::String(s) => Some(s),
            other => self.expected(&node.span, field, "a string", other),
        }
    }

    fn table(&mut self, node: &'n Node<'n>, field: Field<'_>) -> Option<&'n [Entry<'n>]> {
        match &node.kind {
            Kind::Table(entries) => Some(entries),
            other => self.expected(&node.span, field, "a table", other),
        }
    }

    fn array(&mut self, node: &'n Node<'n>, field: Field<'_>) -> Option<&'n [Node<'n>]> {
        match &node.kind {
            Kind::Array(items) => Some(items),
            other => self.expected(&node.span, field, "an array", other),
        }
    }

    fn expected<T>(
        &mut self,
        span: &Range<usize>,
        field: Field<'_>,
        want: &str,
        found: &Kind<'_>,
    ) -> Option<T> {
        self.sink.error(
            span,
            field,
            format!("expected {want}, found {}", found.describe()),
        );
        None
    }

    fn unknown_keys(&mut self, entries: &[Entry<'_>], field: Field<'_>, allowed: &[&str]) {
        for e in entries.iter().filter(|e| !allowed.contains(&&*e.key)) {
            self.unknown_key(e, field, allowed, &[]);
        }
    }

    /// Reports a key that is none of `allowed` or `extra`, suggesting the closest.
    fn unknown_key(&mut self, e: &Entry<'_>, field: Field<'_>, allowed: &[&str], extra: &[&str]) {
        let candidates: Vec<&str> = allowed.iter().chain(extra).copied().collect();
        let suggestion = super::diag::closest(&e.key, &candidates);
        let message = format!("unknown key `{}`", e.key);
        let f = field.key(&e.key);
        match suggestion {
            Some(k) => {
                self.sink
                    .error_with_help(&e.key_span, f, message, format!("did you mean `{k}`?"))
            }
            None => self.sink.error(&e.key_span, f, message),
        }
    }

    /// TOML refuses duplicate keys itself; JSON parsers keep the last, which would hide a typo.
    fn duplicate_keys(&mut self, entries: &[Entry<'_>], field: Field<'_>) {
        if self.format != Format::Json {
            return;
        }
        let mut seen = HashSet::new();
        for e in entries {
            if !seen.insert(&*e.key) {
                self.sink.error(
                    &e.key_span,
                    field.key(&e.key),
                    format!("duplicate key `{}`", e.key),
                );
            }
        }
    }
}

fn empty() -> Raw {
    std::array::from_fn(|_| None)
}

/// `over`'s values, else `base`'s; maps merge key by key so that a test can add one tag without
/// repeating the rest (`over`'s entries come last and win). A table that sets one of
/// [`ALTERNATIVES`] inherits neither.
fn overlay(base: &Raw, mut over: Raw) -> Raw {
    let not_inherited: Vec<usize> = ALTERNATIVES
        .iter()
        .filter(|pair| pair.iter().any(|&i| over[i].is_some()))
        .flatten()
        .copied()
        .collect();
    std::array::from_fn(|i| match (over[i].take(), &base[i]) {
        (None, _) if not_inherited.contains(&i) => None,
        (Some(Val::StrMap(over)), Some(Val::StrMap(base))) => {
            Some(Val::StrMap(base.overlaid(&over)))
        }
        (Some(Val::JsonMap(over)), Some(Val::JsonMap(base))) => {
            Some(Val::JsonMap(base.overlaid(&over)))
        }
        (Some(val), _) => Some(val),
        (None, base) => base.clone(),
    })
}

fn text(m: &mut Raw, i: usize) -> Option<Text> {
    match m[i].take() {
        Some(Val::Str(s)) => Some(s),
        _ => None,
    }
}

fn texts(m: &mut Raw, i: usize) -> Arc<[Text]> {
    match m[i].take() {
        Some(Val::Strs(v)) => v,
        _ => Arc::new([]),
    }
}

fn json_map(m: &mut Raw, i: usize) -> SortedMap<serde_json::Value> {
    match m[i].take() {
        Some(Val::JsonMap(map)) => map,
        _ => SortedMap::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_keys_are_sorted_for_binary_search() {
        assert!(SETTINGS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(setting("region"), Some(at("region")));
        assert_eq!(setting("regio"), None);
    }

    /// Four suites of tests, enough to be read on all cores; with `mistakes`, a wrong type in
    /// suite 0, an unknown key in suite 2 and a fourth suite named like the first.
    fn large_plan(mistakes: bool) -> String {
        let mut text = String::from(
            "version = 1\nname = \"big\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-0a\"\ninstance_type = \"t\"\ntrack = \"x\"\nrally_config = \"Cargo.toml\"\n",
        );
        for suite in 0..4 {
            let name = if mistakes && suite == 3 { 0 } else { suite };
            text.push_str(&format!("[[suite]]\nname = \"s{name}\"\n"));
            for test in 0..(PARALLEL_FROM_TESTS / 2) {
                let extra = match (mistakes, suite, test) {
                    (true, 0, 5) => "car = 4\n",
                    (true, 2, 150) => "trak = \"y\"\n",
                    _ => "",
                };
                text.push_str(&format!("[[suite.test]]\nname = \"t{test}\"\n{extra}"));
            }
        }
        text
    }

    fn fields_and_messages(errors: &PlanErrors) -> Vec<(&str, &str)> {
        errors
            .diagnostics
            .iter()
            .map(|d| (d.field.as_str(), d.message.as_str()))
            .collect()
    }

    /// A plan large enough to be read on all cores reports what a small one would, in order.
    #[test]
    fn a_large_plan_read_on_all_cores_reports_every_problem_in_order() {
        let errors = Plan::parse(Path::new("big.toml"), &large_plan(true)).unwrap_err();
        let found = fields_and_messages(&errors);
        assert_eq!(
            found,
            [
                (
                    "suite[0].test[5].car",
                    "expected a string, found an integer"
                ),
                ("suite[2].test[150].trak", "unknown key `trak`"),
                ("suite[3].name", "duplicate suite name `s0`"),
            ]
        );
        let lines: Vec<usize> = errors.diagnostics.iter().map(|d| d.line).collect();
        assert!(lines.is_sorted(), "{lines:?}");

        let plan = Plan::parse(Path::new("big.toml"), &large_plan(false)).unwrap();
        let addresses: Vec<String> = plan.tests().map(|t| t.address.to_string()).collect();
        let per_suite = PARALLEL_FROM_TESTS / 2;
        assert_eq!(addresses.len(), 4 * per_suite);
        for (i, address) in addresses.iter().enumerate() {
            assert_eq!(address, &format!("s{}.t{}", i / per_suite, i % per_suite));
        }
    }

    /// `reuse_instances` is read from the defaults, a suite or a test, only for aws, and is
    /// no setting of the race: the config hash leaves it out.
    #[test]
    fn reuse_instances_is_inherited_by_suite_and_test_and_not_hashed() {
        let head = "version = 1\nname = \"r\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-0a\"\ninstance_type = \"t\"\ntrack = \"x\"\n";
        let plan = Plan::parse(
            Path::new("r.toml"),
            &format!("{head}[[suite]]\nname = \"s\"\nreuse_instances = true\n[[suite.test]]\nname = \"on\"\n[[suite.test]]\nname = \"off\"\nreuse_instances = false\n"),
        )
        .unwrap();
        let reuse: Vec<bool> = plan.tests().map(|t| t.reuse).collect();
        assert_eq!(reuse, [true, false]);
        let [on, off] = [0, 1].map(|i| plan.suites[0].tests[i].settings.canonical_json());
        assert_eq!(on, off);

        let errors = Plan::parse(
            Path::new("r.toml"),
            &format!("{head}[[suite]]\nname = \"s\"\nreuse_instances = \"yes\"\n[[suite.test]]\nname = \"t\"\n[[suite.test]]\nname = \"h\"\nprovider = \"ssh\"\nhosts = [\"b\"]\nreuse_instances = true\n"),
        )
        .unwrap_err();
        let found = fields_and_messages(&errors);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(
            found[0],
            (
                "suite[0].reuse_instances",
                "expected a boolean, found a string"
            )
        );
        assert_eq!(found[1].0, "suite[0].test[1].reuse_instances");
    }

    /// Spot is asked for with `market`; its price cap and fallback mean nothing without it.
    /// On-demand tests hash as before spot existed.
    #[test]
    fn spot_settings_are_read_only_with_market_spot() {
        let head = "version = 1\nname = \"r\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-0a\"\ninstance_type = \"t\"\ntrack = \"x\"\n[[suite]]\nname = \"s\"\n";
        let plan = Plan::parse(
            Path::new("r.toml"),
            &format!("{head}[[suite.test]]\nname = \"spot\"\nmarket = \"spot\"\nmax_price = 0.05\non_interruption = \"spot\"\n[[suite.test]]\nname = \"plain\"\n"),
        )
        .unwrap();
        let MachineSettings::Aws(spot) = &plan.suites[0].tests[0].settings.machine else {
            panic!("an aws test")
        };
        assert_eq!(
            spot.market,
            Market::Spot(SpotOptions {
                max_price: Some("0.05".into()),
                on_interruption: MarketKind::Spot
            })
        );
        let plain = plan.suites[0].tests[1].settings.canonical_json();
        assert!(!plain.contains("market"), "{plain}");

        let errors = Plan::parse(
            Path::new("r.toml"),
            &format!("{head}[[suite.test]]\nname = \"a\"\nmax_price = \"0.05\"\n[[suite.test]]\nname = \"b\"\nmarket = \"reserved\"\n[[suite.test]]\nname = \"c\"\nmarket = \"spot\"\nmax_price = \"-1\"\n"),
        )
        .unwrap_err();
        let found = fields_and_messages(&errors);
        assert_eq!(
            found,
            [
                (
                    "suite[0].test[0].max_price",
                    "`max_price` is only read for spot instances"
                ),
                (
                    "suite[0].test[1].market",
                    "`reserved` is not a market; expected \"on_demand\" or \"spot\""
                ),
                (
                    "suite[0].test[2].max_price",
                    "`-1` is not a price; expected US dollars per hour above 0, e.g. \"0.05\""
                ),
            ]
        );
    }

    /// A test may override any setting, the track too, in either of its spellings; a table
    /// that names both is still refused.
    #[test]
    fn a_test_names_its_own_track_over_the_defaults_either_way() {
        let plan = |defaults: &str, test: &str| {
            Plan::parse(
                Path::new("t.toml"),
                &format!(
                    "version = 1\nname = \"t\"\n[defaults]\nprovider = \"local\"\n{defaults}\n\
                     [[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"t\"\n{test}\n"
                ),
            )
            .map(|p| p.suites[0].tests[0].settings.track.clone())
        };
        let path = "track_path = \"tests/fixtures/tracks/tiny\"";
        assert!(matches!(
            plan("track = \"geonames\"", path),
            Ok(TrackSource::Path(p)) if p.recorded() == Path::new("tests/fixtures/tracks/tiny")
        ));
        assert!(matches!(
            plan(path, "track = \"geonames\""),
            Ok(TrackSource::Named(n)) if &*n == "geonames"
        ));
        let both = plan("", &format!("track = \"geonames\"\n{path}")).unwrap_err();
        assert!(
            both.to_string().contains("both `track` and `track_path`"),
            "{both}"
        );
    }

    /// `subnet_ids` names several subnets, `subnet_id` one: a test overrides either with the
    /// other; both in one table, or an empty list, are refused.
    #[test]
    fn subnets_are_one_or_several_and_a_test_overrides_either_way() {
        let plan = |defaults: &str, test: &str| {
            Plan::parse(
                Path::new("t.toml"),
                &format!(
                    "version = 1\nname = \"t\"\n[defaults]\nregion = \"us-east-1\"\n\
                     ami = \"ami-0123abcd\"\ninstance_type = \"m5.large\"\ntrack = \"x\"\n\
                     {defaults}\n[[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"t\"\n{test}\n"
                ),
            )
            .map(|p| match &p.suites[0].tests[0].settings.machine {
                MachineSettings::Aws(a) => a.subnets.clone(),
                other => panic!("{other:?}"),
            })
            .map_err(|e| e.to_string())
        };
        let (one, several) = (
            "subnet_id = \"subnet-0a0a0a0a\"",
            "subnet_ids = [\"subnet-0b0b0b0b\", \"subnet-0c0c0c0c\"]",
        );
        assert_eq!(plan("", ""), Ok(Subnets::Default));
        assert_eq!(plan(one, ""), Ok(Subnets::One("subnet-0a0a0a0a".into())));
        assert!(
            matches!(plan(one, several), Ok(Subnets::FirstWithCapacity(ids)) if ids.len() == 2)
        );
        assert_eq!(
            plan(several, one),
            Ok(Subnets::One("subnet-0a0a0a0a".into()))
        );
        for (test, problem) in [
            (
                format!("{one}\n{several}"),
                "both `subnet_id` and `subnet_ids`",
            ),
            ("subnet_ids = []".into(), "`subnet_ids` is empty"),
            ("subnet_ids = [\"sg-0a0a0a0a\"]".into(), "subnet-"),
        ] {
            let err = plan("", &test).unwrap_err();
            assert!(err.contains(problem), "{test}: {err}");
        }
    }

    #[test]
    fn field_paths_read_like_the_plan() {
        let root = Field::ROOT;
        let suite = root.key("suite");
        let (first, tests) = (suite.index(0), root.key("test"));
        let (test, params) = (first.key("test"), tests.key("track_params"));
        assert_eq!(test.index(2).key("x").to_string(), "suite[0].test[2].x");
        assert_eq!(params.index(1).to_string(), "test.track_params[1]");
        assert_eq!(root.key("version").to_string(), "version");
        assert_eq!(root.to_string(), "");
    }
}
