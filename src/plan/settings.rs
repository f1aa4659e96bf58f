//! Every plan setting, declared once: its name, type, where it may be written, which providers
//! read it, its built-in default, whether the config hash takes it in, and its one-line doc.
//!
//! Reading and checking a value (by its [`Ty`]), which keys a provider reads, what a variant
//! may not change, what a test must have, and the README's table of settings all follow from
//! [`SETTINGS`]. What a setting does is the code that reads it from [`super::Settings`].

use std::time::Duration;

use super::ProviderKind;

/// The type each settings key takes; the same keys are valid in `[defaults]` and in a test.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Ty {
    Str,
    Strs,
    Bool,
    Port,
    /// At least the given minimum, which the message explains.
    Duration(Duration, &'static str),
    Connect,
    /// `on_demand` or `spot`.
    Market,
    /// Where a test races again after EC2 reclaimed its spot instance: `on_demand` or `spot`.
    Fallback,
    /// `cluster`: EC2's placement strategy for a cluster test's machines.
    Placement,
    /// US dollars per hour: a positive decimal, as a string or a number.
    Price,
    Provider,
    /// A count from 1 to the given maximum (`repetitions`, `load_drivers`, a cluster's `nodes`).
    Count(i64),
    /// `cluster`: a table of [`CLUSTER_KEYS`].
    Cluster,
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

/// Which providers read a setting; a setting written for a test of another provider is an
/// error where it is written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Readers {
    aws: bool,
    ssh: bool,
    local: bool,
}

impl Readers {
    pub(super) const ALL: Readers = Readers {
        aws: true,
        ssh: true,
        local: true,
    };
    pub(super) const AWS: Readers = Readers {
        aws: true,
        ssh: false,
        local: false,
    };
    pub(super) const SSH: Readers = Readers {
        aws: false,
        ssh: true,
        local: false,
    };
    /// The providers that log in to a machine.
    pub(super) const REMOTE: Readers = Readers {
        aws: true,
        ssh: true,
        local: false,
    };

    pub(super) fn reads(self, provider: ProviderKind) -> bool {
        match provider {
            ProviderKind::Aws => self.aws,
            ProviderKind::Ssh => self.ssh,
            ProviderKind::Local => self.local,
        }
    }
}

/// The tables a setting may be written in, beside `[defaults]` and a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    /// A variant too: the setting changes the race, not the machine.
    Anywhere,
    /// Not in a variant: the variants of a test share its machine and its repetitions.
    PerMachine,
    /// A suite too (its tests' default over `[defaults]`); not in a variant.
    SuiteToo,
}

/// A setting's built-in default, which applies when neither the test nor `[defaults]` sets it.
#[derive(Clone, Copy)]
pub(super) enum Default {
    /// Unset: the setting is optional, or required ([`Decl::required`]).
    None,
    /// The type's own empty or first value (`false`, no entries), as the README shows it.
    Shown(&'static str),
    Text(&'static str),
    Duration(Duration),
    Port(u16),
    /// For aws tests only; other providers leave it unset.
    Aws(&'static str),
}

/// One plan setting.
pub(super) struct Decl {
    pub name: &'static str,
    pub ty: Ty,
    pub readers: Readers,
    pub written: Written,
    /// Every test of a provider that reads it must have it.
    pub required: bool,
    pub default: Default,
    /// The config hash takes it in (as a key of the canonical JSON); those that are not say
    /// how often or where a test races, not what.
    pub hashed: bool,
    pub doc: &'static str,
}

/// esrally's version when a plan names none.
pub const RALLY_VERSION: &str = "2.13.0";
/// Where on the machine Rally is installed and runs, relative to the user's home.
pub const REMOTE_DIR: &str = "rallyctl";
/// How long a test's machine may live when a plan says nothing.
pub const MAX_RUNTIME: Duration = Duration::from_secs(3 * 3600);
/// How long a race's logs may stay silent before it counts as stalled (`stall_timeout`).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The SSH port of machines that name none.
pub const SSH_PORT: u16 = 22;
/// The login of EC2's Amazon Linux images.
pub const AWS_SSH_USER: &str = "ec2-user";

/// Races of one test; more would be a typo (statistics settle long before).
pub(super) const MAX_REPETITIONS: i64 = 100;
/// Machines of one role in one test (a cluster's nodes, its load drivers); more would be a typo.
pub(super) const MAX_MACHINES: i64 = 100;
/// `shutdown -h +N` counts whole minutes, so a shorter watchdog cannot be scheduled.
pub(super) const MIN_RUNTIME: Duration = Duration::from_secs(60);
/// Below a minute a result is stale by the next command that reads it: a slip for `m` or `h`.
pub(super) const MIN_VALID_FOR: Duration = Duration::from_secs(60);

const fn decl(name: &'static str, ty: Ty, doc: &'static str) -> Decl {
    Decl {
        name,
        ty,
        readers: Readers::ALL,
        written: Written::Anywhere,
        required: false,
        default: Default::None,
        hashed: true,
        doc,
    }
}

impl Decl {
    const fn read_by(mut self, readers: Readers) -> Decl {
        self.readers = readers;
        // What only some providers read makes or reaches the machine.
        self.written = Written::PerMachine;
        self
    }

    const fn per_machine(mut self) -> Decl {
        self.written = Written::PerMachine;
        self
    }

    const fn default(mut self, default: Default) -> Decl {
        self.default = default;
        self
    }

    const fn required(mut self) -> Decl {
        self.required = true;
        self
    }

    const fn not_hashed(mut self) -> Decl {
        self.hashed = false;
        self
    }
}

/// Every settings key, sorted by name so that a key is found by binary search.
pub(super) const SETTINGS: [Decl; 43] = [
    decl(
        "ami",
        Ty::Ami,
        "required; an AMI id, or `\"baked\"`: the image `rallyctl bake` made from `base_ami` (see \"Baked images\")",
    )
    .read_by(Readers::AWS)
    .required(),
    decl(
        "base_ami",
        Ty::AwsId("ami"),
        "with `ami = \"baked\"` (required then): the AMI the image is baked from. A test with an AMI id of its own ignores the one of `[defaults]`; writing both in one test is an error",
    )
    .read_by(Readers::AWS),
    decl(
        "car",
        Ty::Str,
        "passed to `esrally race`; with `cluster`, the nodes' unless the cluster names its own",
    ),
    decl(
        "car_params",
        Ty::JsonMap,
        "a table passed to Rally as a JSON file, exactly as written; merged key by key; with `cluster`, the nodes' unless the cluster has its own",
    ),
    decl("challenge", Ty::Str, "passed to `esrally race`"),
    decl("client_options", Ty::Str, "passed to `esrally race`"),
    Decl {
        written: Written::SuiteToo,
        ..decl(
            "cluster",
            Ty::Cluster,
            "Elasticsearch nodes of the test's own, apart from its load drivers (see \"Clusters\"): `nodes` (1 to 100, required), `instance_type` (`aws`: the nodes' type, else the test's), `car`, `car_params`, `distribution_version` and `runtime_jdk` (each the test's own where the cluster names none; a release is required), `plugins`, `plugin_params`, `distribution_repository`, `team_path` (a directory of Rally cars on the node machines, relative to the user's home unless absolute, for `esrally install --team-path`; else Rally's team repository, from the internet), `hosts` (`ssh`: the pool the nodes are leased from, else the test's `hosts`). A test's or suite's table is merged key by key over the one it inherits. Not with `target_hosts` or `pipeline = \"benchmark-only\"`. On `aws` and `ssh` its nodes and load drivers each on a machine of its own; on `local` its nodes are processes on this machine, each at a loopback address of its own (127.0.0.2 on), and rallyctl must not run as root (see \"Clusters\")",
        )
    },
    decl(
        "connect",
        Ty::Connect,
        "`private_ip` for instances without a public address",
    )
    .read_by(Readers::AWS)
    .default(Default::Shown("public_ip")),
    decl(
        "distribution_version",
        Ty::Str,
        "passed to `esrally race`; with `cluster`, the release its nodes install unless the cluster names its own (one of the two is required)",
    ),
    decl(
        "hosts",
        Ty::Hosts,
        "required: the pool, `\"host\"` or `\"host:port\"`, at least one, none twice; each test leases one host exclusively",
    )
    .read_by(Readers::SSH)
    .required(),
    decl("instance_type", Ty::Str, "required; the EC2 instance type")
        .read_by(Readers::AWS)
        .required(),
    Decl {
        written: Written::SuiteToo,
        ..decl(
            "load_drivers",
            Ty::Count(MAX_MACHINES),
            "with `cluster`: how many machines drive the load, 1 to 100, each of the test's own `instance_type`, more than one raced under Rally's daemon (`esrallyd`, port 1900) with `--load-driver-hosts`; `local`: 1 (this machine). `1` hashes as if unset",
        )
        .default(Default::Shown("1"))
    },
    decl(
        "market",
        Ty::Market,
        "`spot` launches spot instances (`InstanceMarketOptions`, one-time requests): cheaper, but EC2 may reclaim one mid-race. A spot test's `market`, `max_price` and `on_interruption` are part of its config hash (a spot result is one of its own); on-demand tests hash as before. `results` and the report mark tests that raced on spot (`, spot`; JSON `\"spot\": true`)",
    )
    .read_by(Readers::AWS)
    .default(Default::Shown("on_demand")),
    decl(
        "max_price",
        Ty::Price,
        "spot only: the most to pay per instance-hour in USD, e.g. `\"0.05\"`; without it EC2's cap, the on-demand price",
    )
    .read_by(Readers::AWS),
    decl(
        "max_runtime",
        Ty::Duration(
            MIN_RUNTIME,
            "the 1 minute the shutdown watchdog can schedule",
        ),
        "`aws`: the instance shuts itself down (and so terminates) after this, whatever happens; `ssh`/`local`: the race is stopped after this and a host's lease lapses 10 minutes later",
    )
    .per_machine()
    .default(Default::Duration(MAX_RUNTIME)),
    decl("offline", Ty::Bool, "`--offline`").default(Default::Shown("false")),
    decl(
        "on_interruption",
        Ty::Fallback,
        "spot only: where a test whose spot instance EC2 reclaimed races again: `on_demand` (a fallback to on-demand capacity) or `spot` (spot again, no fallback)",
    )
    .read_by(Readers::AWS)
    .default(Default::Shown("on_demand")),
    decl("pipeline", Ty::Str, "passed to `esrally race`"),
    Decl {
        written: Written::SuiteToo,
        ..decl(
            "placement_group",
            Ty::Placement,
            "with `cluster`: `\"cluster\"` launches the test's nodes and load drivers into an EC2 cluster placement group of their own (one Availability Zone, a low-latency network between them), made before the first launch and deleted when the last machine is given back. Part of the config hash and of the topology `results` shows",
        )
        .read_by(Readers::AWS)
    },
    decl(
        "provider",
        Ty::Provider,
        "where the test runs: `aws` (a fresh EC2 instance), `ssh` (a host leased from `hosts`), `local` (this machine)",
    )
    .per_machine()
    .default(Default::Shown("aws")),
    decl(
        "rally_args",
        Ty::Strs,
        "further `esrally race` arguments, each passed as one word",
    ),
    decl(
        "rally_config",
        Ty::File,
        "the rally.ini template; `rally_es.ini` sends metrics to an Elasticsearch metrics store",
    )
    .default(Default::Shown(
        "built in: conditional_install_items/rally_csv.ini",
    )),
    decl(
        "rally_version",
        Ty::Version,
        "esrally version installed on the machine",
    )
    .default(Default::Text(RALLY_VERSION)),
    decl("region", Ty::Region, "required; the AWS region")
        .read_by(Readers::AWS)
        .required(),
    decl(
        "remote_dir",
        Ty::Str,
        "where on the machine Rally is installed and runs live; relative to the user's home",
    )
    .per_machine()
    .default(Default::Text(REMOTE_DIR)),
    decl(
        "repeat_on",
        Ty::RepeatOn,
        "`same`: the repetitions race back to back on one machine (cheap; measures race-to-race noise); `fresh`: each on a machine of its own (a launch per race; measures machine-to-machine noise too)",
    )
    .per_machine()
    .default(Default::Shown("same"))
    .not_hashed(),
    decl(
        "repetitions",
        Ty::Count(MAX_REPETITIONS),
        "how many times the test races, 1 to 100: each race is a sample, and `results` shows their mean, spread and 95 % interval. Not part of the config hash: raising it keeps the races recorded and races the missing ones",
    )
    .per_machine()
    .default(Default::Shown("1"))
    .not_hashed(),
    Decl {
        written: Written::SuiteToo,
        ..decl(
            "results_valid_for",
            Ty::Duration(MIN_VALID_FOR, "a minute"),
            "a completed result older than this, counted from when state recorded it completed, is stale: `plan` shows the test as to re-run and `apply` races it again, all its repetitions (a test's variants expire together, from the oldest). E.g. `\"20h\"` for a nightly plan (see \"Nightly runs\"). Not part of the config hash: changing it re-runs only what the new value makes stale. Unset: a result stays current",
        )
        .not_hashed()
    },
    Decl {
        written: Written::SuiteToo,
        ..decl(
            "reuse_instances",
            Ty::Bool,
            "warm reuse: when the test finishes, its instance may go on to a test of a later suite that asks for the same machine (every aws setting alike: AMI, instance type, region, subnets, security groups, tags, SSH user and port) instead of being terminated and another launched. `plan` says which tests hand on to which. Not part of the config hash. Variants keep their group's machine; with a `cluster`, refused (a cluster's machines are given back with its test)",
        )
        .read_by(Readers::AWS)
        .default(Default::Shown("false"))
        .not_hashed()
    },
    decl(
        "runtime_jdk",
        Ty::Str,
        "passed to `esrally race`; with `cluster`, the nodes' unless the cluster names its own",
    ),
    decl(
        "security_group_ids",
        Ty::AwsIds("sg"),
        "the instance's security groups (the VPC's default when unset)",
    )
    .read_by(Readers::AWS),
    decl(
        "ssh_key",
        Ty::Str,
        "identity file (else the agent and `~/.ssh/config` apply)",
    )
    .read_by(Readers::SSH),
    decl(
        "ssh_known_hosts",
        Ty::Str,
        "host keys are checked strictly against this file (else `~/.ssh/known_hosts`): an unknown or changed key fails the test, naming the host",
    )
    .read_by(Readers::SSH),
    decl(
        "ssh_port",
        Ty::Port,
        "how rallyctl reaches the machine; a host of the pool may name its own port",
    )
    .read_by(Readers::REMOTE)
    .default(Default::Port(SSH_PORT)),
    decl(
        "ssh_user",
        Ty::Str,
        "how rallyctl logs in; `ssh` without one: OpenSSH's choice (`~/.ssh/config`, else the local user name)",
    )
    .read_by(Readers::REMOTE)
    .default(Default::Aws(AWS_SSH_USER)),
    decl(
        "stall_timeout",
        Ty::Duration(Duration::from_secs(1), "a second"),
        "a race whose console and Rally log both stay silent this long is stalled: stopped, failed with its log tail, its machine given back; one not shorter than `max_runtime` is warned about (the machine's time would run out first)",
    )
    .default(Default::Duration(STALL_TIMEOUT)),
    decl(
        "subnet_id",
        Ty::AwsId("subnet"),
        "where the instance goes (the default VPC's default subnet when unset)",
    )
    .read_by(Readers::AWS),
    decl(
        "subnet_ids",
        Ty::AwsIds("subnet"),
        "instead of `subnet_id`: several subnets, best in different Availability Zones; a launch short of capacity (or whose instance type the zone lacks) tries the next. State records each instance's subnet and zone",
    )
    .read_by(Readers::AWS),
    decl(
        "tags",
        Ty::Tags,
        "extra EC2 tags; merged key by key with the defaults",
    )
    .read_by(Readers::AWS),
    decl(
        "target_hosts",
        Ty::HostPorts,
        "an existing cluster to race against, `host:port` each",
    ),
    decl("track", Ty::Str, "a track name (or `track_path`)"),
    decl(
        "track_params",
        Ty::JsonMap,
        "a table passed to Rally as a JSON file, exactly as written; merged key by key",
    ),
    decl(
        "track_path",
        Ty::TrackDir,
        "a local track directory, uploaded with the test (or `track`)",
    ),
];

/// The keys of a `cluster` table, sorted, with their types and the providers that read them.
pub(super) const CLUSTER_KEYS: [(&str, Ty, Readers); 11] = [
    ("car", Ty::Str, Readers::ALL),
    ("car_params", Ty::JsonMap, Readers::ALL),
    ("distribution_repository", Ty::Str, Readers::ALL),
    ("distribution_version", Ty::Str, Readers::ALL),
    ("hosts", Ty::Hosts, Readers::SSH),
    ("instance_type", Ty::Str, Readers::AWS),
    ("nodes", Ty::Count(MAX_MACHINES), Readers::ALL),
    ("plugin_params", Ty::JsonMap, Readers::ALL),
    ("plugins", Ty::Strs, Readers::ALL),
    ("runtime_jdk", Ty::Str, Readers::ALL),
    ("team_path", Ty::Str, Readers::ALL),
];

/// The names of [`CLUSTER_KEYS`], for suggestions.
pub(super) const CLUSTER_NAMES: [&str; CLUSTER_KEYS.len()] = {
    let mut names = [""; CLUSTER_KEYS.len()];
    let mut i = 0;
    while i < CLUSTER_KEYS.len() {
        names[i] = CLUSTER_KEYS[i].0;
        i += 1;
    }
    names
};

/// The index of a cluster key, resolved at compile time.
pub(super) const fn cluster_at(name: &str) -> usize {
    let mut i = 0;
    while i < CLUSTER_KEYS.len() {
        if same(CLUSTER_KEYS[i].0, name) {
            return i;
        }
        i += 1;
    }
    panic!("not a cluster key")
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut j = 0;
    while j < a.len() && a[j] == b[j] {
        j += 1;
    }
    j == a.len()
}

/// Settings that say one thing two ways: a table that sets either inherits neither.
pub(super) const ALTERNATIVES: [[usize; 2]; 2] = [
    [at("track"), at("track_path")],
    [at("subnet_id"), at("subnet_ids")],
];

/// Every settings key, in [`SETTINGS`]' order, for suggestions.
pub(super) const NAMES: [&str; SETTINGS.len()] = {
    let mut names = [""; SETTINGS.len()];
    let mut i = 0;
    while i < SETTINGS.len() {
        names[i] = SETTINGS[i].name;
        i += 1;
    }
    names
};

/// The index of a settings key.
pub(super) fn setting(key: &str) -> Option<usize> {
    SETTINGS.binary_search_by(|d| d.name.cmp(key)).ok()
}

/// The index of a settings key, resolved at compile time (`const { at("region") }`).
pub(super) const fn at(name: &str) -> usize {
    let mut i = 0;
    while i < SETTINGS.len() {
        if same(SETTINGS[i].name, name) {
            return i;
        }
        i += 1;
    }
    panic!("not a settings key")
}

/// Whether the setting at index `i` is the same for every variant of a test.
pub(super) fn shares_machine(i: usize) -> bool {
    SETTINGS[i].written != Written::Anywhere
}

/// Whether `provider` reads the setting at index `i`.
pub(super) fn applies(i: usize, provider: ProviderKind) -> bool {
    SETTINGS[i].readers.reads(provider)
}

/// Settings a test of the provider must have, by index into [`SETTINGS`].
pub(super) fn required(provider: ProviderKind) -> impl Iterator<Item = usize> {
    (0..SETTINGS.len()).filter(move |&i| SETTINGS[i].required && applies(i, provider))
}

/// The keys a suite table may hold: its own, and the settings a suite may set.
pub(super) fn suite_keys() -> Vec<&'static str> {
    let settings = SETTINGS.iter().filter(|d| d.written == Written::SuiteToo);
    ["name", "parallelism", "test"]
        .into_iter()
        .chain(settings.map(|d| d.name))
        .collect()
}

/// The README's table of settings: those every provider reads, then each provider's own.
pub fn reference_table() -> String {
    let mut out = String::from("| setting (default) | where | meaning |\n| --- | --- | --- |\n");
    for (title, readers) in [
        (None, Readers::ALL),
        (Some("**`aws` only**"), Readers::AWS),
        (Some("**`aws` and `ssh`**"), Readers::REMOTE),
        (Some("**`ssh` only**"), Readers::SSH),
    ] {
        if let Some(title) = title {
            out.push_str(&format!("| {title} | | |\n"));
        }
        for d in SETTINGS.iter().filter(|d| d.readers == readers) {
            let default = match d.default {
                Default::None => String::new(),
                Default::Shown(text) | Default::Text(text) => format!(" (`{text}`)"),
                Default::Duration(t) => format!(" (`{}`)", humantime::format_duration(t)),
                Default::Port(port) => format!(" (`{port}`)"),
                Default::Aws(text) => format!(" (`aws`: `{text}`)"),
            };
            let written = match d.written {
                Written::Anywhere => "defaults, test or variant",
                Written::PerMachine => "defaults or test",
                Written::SuiteToo => "defaults, suite or test",
            };
            let hashed = if d.hashed { "" } else { " (not hashed)" };
            out.push_str(&format!(
                "| `{}`{default} | {written}{hashed} | {} |\n",
                d.name, d.doc
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    #[test]
    fn settings_keys_are_sorted_for_binary_search() {
        assert!(SETTINGS.windows(2).all(|w| w[0].name < w[1].name));
        assert!(CLUSTER_KEYS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(setting("region"), Some(at("region")));
        assert_eq!(setting("regio"), None);
    }

    /// What only some providers read makes or reaches the machine, which variants share; what
    /// a provider requires it reads.
    #[test]
    fn declarations_agree_with_themselves() {
        for d in &SETTINGS {
            if d.readers != Readers::ALL {
                assert_ne!(d.written, Written::Anywhere, "{}", d.name);
            }
            assert!(!d.doc.contains('\n') && !d.doc.contains('|'), "{}", d.name);
            if d.required {
                assert!(matches!(d.default, Default::None), "{}", d.name);
            }
        }
    }

    /// The defaults the README shows by name are those of the types the code falls back to.
    #[test]
    fn defaults_shown_by_name_are_the_types_own() {
        use super::super::{Connect, MarketKind, Repeat};
        let shown = |name: &str| match SETTINGS[setting(name).unwrap()].default {
            Default::Shown(text) => text,
            _ => panic!("{name} shows no default"),
        };
        let json = |v: serde_json::Value| v.as_str().map(str::to_owned).unwrap_or(v.to_string());
        for (name, default) in [
            ("connect", json(serde_json::json!(Connect::default()))),
            ("market", json(serde_json::json!(MarketKind::default()))),
            (
                "on_interruption",
                json(serde_json::json!(MarketKind::default())),
            ),
            ("provider", json(serde_json::json!(ProviderKind::default()))),
            ("repeat_on", json(serde_json::json!(Repeat::default().on))),
            ("repetitions", Repeat::default().count.to_string()),
            (
                "load_drivers",
                super::super::Settings::LOAD_DRIVERS.to_string(),
            ),
            ("offline", false.to_string()),
            ("reuse_instances", false.to_string()),
        ] {
            assert_eq!(shown(name), default, "{name}");
        }
    }

    /// The hashed settings are the keys of the canonical JSON (a track path is recorded under
    /// `track`), as a plan that sets every setting shows.
    #[test]
    fn the_hashed_settings_are_the_keys_of_the_canonical_json() {
        let plan = super::super::Plan::load(Path::new("tests/fixtures/plans/hash-corpus.toml"))
            .expect("the corpus plan is valid");
        let written: BTreeSet<String> = plan
            .tests()
            .flat_map(|t| {
                let json: serde_json::Value =
                    serde_json::from_str(&t.settings.canonical_json()).unwrap();
                json.as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        let declared: BTreeSet<String> = SETTINGS
            .iter()
            .filter(|d| d.hashed && d.name != "track_path")
            .map(|d| d.name.to_owned())
            .collect();
        assert_eq!(written, declared);
    }

    /// The README's table of settings is [`reference_table`]; this prints the table to paste.
    #[test]
    fn the_readme_lists_the_settings_as_declared() {
        let readme = std::fs::read_to_string("README.md").unwrap();
        let expected = reference_table();
        assert!(
            readme.contains(&expected),
            "README.md's table of settings differs from the declarations in src/plan/settings.rs; replace it with:\n\n{expected}"
        );
    }
}
