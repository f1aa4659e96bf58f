//! Inheritance: a test's settings over `[defaults]` (and a suite's), the built-in defaults
//! applied, and the typed [`Settings`] built and checked as a whole.

use std::num::NonZeroU32;
use std::ops::Range;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use super::load::{Field, Loader, get};
use super::settings::{self, ALTERNATIVES, SETTINGS, at, cluster_at, required};
use super::source::Entry;
use super::values::{MAX_USER_TAGS, Raw, Val};
use super::{
    AwsSettings, Cluster, Connect, MachineSettings, Market, MarketKind, ProviderKind, RallyConfig,
    Repeat, RepeatOn, Settings, SortedMap, SpotOptions, SshSettings, Subnets, Text, TrackSource,
};

pub(super) fn provider_of(raw: &Raw) -> ProviderKind {
    match raw[const { at("provider") }] {
        Some(Val::Provider(p)) => p,
        _ => ProviderKind::default(),
    }
}

impl Loader<'_, '_> {
    /// Merges a test's settings over the defaults and built-ins and checks the result as a whole.
    /// `span` is the test's table, `entries` its entries.
    pub(super) fn merge(
        &mut self,
        defaults: &Raw,
        test: Raw,
        span: &Range<usize>,
        entries: &[Entry<'_>],
        field: Field<'_>,
    ) -> Option<(Settings, Repeat, bool)> {
        let provider = match &test[const { at("provider") }] {
            Some(Val::Provider(p)) => *p,
            _ => provider_of(defaults),
        };
        // A test on an AMI id of its own ignores the base AMI of [defaults]' baked image; its
        // own `base_ami` is a mistake.
        let own_base = test[const { at("base_ami") }].is_some();
        let own = sets_timeouts(&test);
        let mut m = overlay(defaults, test);
        self.stall_check(defaults, own, &m, span, field);
        // A provider written wrong leaves no way to tell which keys the test needs.
        if matches!(m[const { at("provider") }], Some(Val::Invalid)) {
            return None;
        }
        let mut ok = true;
        for i in required(provider) {
            if m[i].is_none() {
                let key = SETTINGS[i].name;
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
        let cluster = self.cluster(&mut m, provider, span, entries, field);
        if !ok || m.iter().any(|v| matches!(v, Some(Val::Invalid))) {
            return None;
        }
        let (cluster, load_drivers) = cluster?;
        let ssh_port = match m[const { at("ssh_port") }] {
            Some(Val::Port(p)) => p,
            _ => settings::SSH_PORT,
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
                        _ => Connect::default(),
                    },
                    instance_type: text(&mut m, const { at("instance_type") })?,
                    market: self.market(&mut m, span, field)?,
                    placement_group: match m[const { at("placement_group") }] {
                        Some(Val::Placement(p)) => Some(p),
                        _ => None,
                    },
                    region: text(&mut m, const { at("region") })?,
                    security_group_ids: texts(&mut m, const { at("security_group_ids") }),
                    ssh_port,
                    ssh_user: text(&mut m, const { at("ssh_user") })
                        .unwrap_or_else(|| BUILT_IN.aws_ssh_user.clone()),
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
                Some(Val::Count(n)) => n,
                _ => NonZeroU32::MIN,
            },
            on: match m[const { at("repeat_on") }] {
                Some(Val::RepeatOn(on)) => on,
                _ => RepeatOn::Same,
            },
            valid_for: match m[const { at("results_valid_for") }] {
                Some(Val::Duration(d)) => Some(d),
                _ => None,
            },
        };
        let settings = Settings {
            car: text(&mut m, const { at("car") }),
            car_params: json_map(&mut m, const { at("car_params") }),
            challenge: text(&mut m, const { at("challenge") }),
            client_options: text(&mut m, const { at("client_options") }),
            distribution_version: text(&mut m, const { at("distribution_version") }),
            max_runtime: max_runtime(&m),
            stall_timeout: stall_timeout(&m),
            offline: matches!(m[const { at("offline") }], Some(Val::Bool(true))),
            pipeline: text(&mut m, const { at("pipeline") }),
            rally_args: texts(&mut m, const { at("rally_args") }),
            rally_config: match m[const { at("rally_config") }].take() {
                Some(Val::Path(p)) => RallyConfig::File(p),
                _ => RallyConfig::BuiltIn,
            },
            rally_version: text(&mut m, const { at("rally_version") })
                .unwrap_or_else(|| BUILT_IN.rally_version.clone()),
            remote_dir: text(&mut m, const { at("remote_dir") })
                .unwrap_or_else(|| BUILT_IN.remote_dir.clone()),
            runtime_jdk: text(&mut m, const { at("runtime_jdk") }),
            target_hosts: texts(&mut m, const { at("target_hosts") }),
            track: track?,
            track_params: json_map(&mut m, const { at("track_params") }),
            cluster: cluster.map(Box::new),
            load_drivers,
            machine,
        };
        let reuse = matches!(m[const { at("reuse_instances") }], Some(Val::Bool(true)));
        Some((settings, repeat, reuse))
    }

    /// A test's `cluster` and `load_drivers`, checked against what else it says; every
    /// problem is reported before none is returned, where the test writes the key it is
    /// about (else at the test, which inherits it).
    fn cluster(
        &mut self,
        m: &mut Raw,
        provider: ProviderKind,
        span: &Range<usize>,
        entries: &[Entry<'_>],
        field: Field<'_>,
    ) -> Option<(Option<Cluster>, NonZeroU32)> {
        let at_key = |key: &str| get(entries, key).map_or(span.clone(), |e| e.key_span.clone());
        let (cluster_span, drivers_span) = (at_key("cluster"), at_key("load_drivers"));
        let drivers = match m[const { at("load_drivers") }].take() {
            Some(Val::Count(n)) => n,
            _ => Settings::LOAD_DRIVERS,
        };
        let raw = match m[const { at("cluster") }].take() {
            Some(Val::Cluster(raw)) => raw,
            // Written wrong: reported where it is written.
            Some(_) => return None,
            None => {
                let mut ok = true;
                if drivers > Settings::LOAD_DRIVERS {
                    self.sink.error_with_help(
                        &drivers_span,
                        field.key("load_drivers"),
                        "`load_drivers` is read only with `cluster`: a test without one is one machine, which drives the load itself",
                        "set `cluster = { nodes = ... }`, or leave `load_drivers` out",
                    );
                    ok = false;
                }
                if provider == ProviderKind::Aws && m[const { at("placement_group") }].is_some() {
                    self.sink.error_with_help(
                        &at_key("placement_group"),
                        field.key("placement_group"),
                        "`placement_group` is read only with `cluster`: a test without one is one machine, which has no other to be placed near",
                        "set `cluster = { nodes = ... }`, or leave `placement_group` out",
                    );
                    ok = false;
                }
                return ok.then_some((None, drivers));
            }
        };
        let at_cluster = field.key("cluster");
        let mut ok = true;
        if matches!(&m[const { at("pipeline") }], Some(Val::Str(p)) if &**p == "benchmark-only") {
            self.sink.error_with_help(
                &cluster_span,
                at_cluster,
                "`cluster` with pipeline = \"benchmark-only\": rallyctl stands the cluster up itself, while benchmark-only races one that already runs",
                "leave out `pipeline`, or `cluster` to race a cluster of your own through `target_hosts`",
            );
            ok = false;
        }
        if matches!(&m[const { at("target_hosts") }], Some(Val::Strs(h)) if !h.is_empty()) {
            self.sink.error_with_help(
                &cluster_span,
                at_cluster,
                "`cluster` with `target_hosts`: rallyctl stands the cluster up and races its nodes, while `target_hosts` names a cluster that already runs",
                "leave out one of them",
            );
            ok = false;
        }
        if provider == ProviderKind::Local && drivers > Settings::LOAD_DRIVERS {
            self.sink.error_with_help(
                &drivers_span,
                field.key("load_drivers"),
                format!("provider = \"local\" has one load driver, this machine (its nodes run as processes beside it), not {drivers}"),
                "leave `load_drivers` out, or race on provider = \"aws\" or \"ssh\"",
            );
            ok = false;
        }
        let key = |i: usize| &raw[i];
        let text = |i: usize| match key(i) {
            Some(Val::Str(t)) => Some(t.clone()),
            _ => None,
        };
        let nodes = match key(const { cluster_at("nodes") }) {
            Some(Val::Count(n)) => *n,
            _ => {
                self.sink.error_with_help(
                    &cluster_span,
                    at_cluster.key("nodes"),
                    "`cluster` has no `nodes`",
                    "say how many Elasticsearch nodes to stand up, 1 to 100: cluster = { nodes = 3 }",
                );
                ok = false;
                NonZeroU32::MIN
            }
        };
        // What a table inherits for another provider is not its mistake: it is left out (its
        // own is reported where written).
        let hosts = match (provider, key(const { cluster_at("hosts") })) {
            (ProviderKind::Ssh, Some(Val::Strs(hosts))) => hosts.clone(),
            _ => NO_TEXTS.clone(),
        };
        // What the cluster names, else what the test does.
        let the_tests = |i: usize| match &m[i] {
            Some(Val::Str(t)) => Some(t.clone()),
            _ => None,
        };
        let own_or_the_tests = |own: usize, tests: usize| text(own).or_else(|| the_tests(tests));
        let instance_type = match provider {
            ProviderKind::Aws => own_or_the_tests(
                const { cluster_at("instance_type") },
                const { at("instance_type") },
            ),
            ProviderKind::Ssh | ProviderKind::Local => None,
        };
        if provider == ProviderKind::Ssh
            && let Some(Val::Strs(pool)) = &m[const { at("hosts") }]
        {
            ok &= self.pool_holds(pool, &hosts, nodes, drivers, &cluster_span, at_cluster);
        }
        let team_path = text(const { cluster_at("team_path") });
        if team_path.as_deref().is_some_and(|t| t.trim().is_empty()) {
            self.sink.error_with_help(
                &cluster_span,
                at_cluster.key("team_path"),
                "`team_path` is empty",
                "name the directory of Rally's cars on the node machines, or leave `team_path` out for Rally's team repository",
            );
            ok = false;
        }
        let map = |i: usize| match key(i) {
            Some(Val::JsonMap(map)) => map.clone(),
            _ => NO_JSON.clone(),
        };
        // The nodes are the test's Elasticsearch: what the test says of it (its car, the
        // car's parameters, the distribution, the JDK) is theirs where the cluster says nothing,
        // so that a version set once in `[defaults]` holds for clusters too.
        let distribution_version = own_or_the_tests(
            const { cluster_at("distribution_version") },
            const { at("distribution_version") },
        );
        if distribution_version.is_none() {
            self.sink.error_with_help(
                &cluster_span,
                at_cluster.key("distribution_version"),
                "`cluster` names no `distribution_version`, nor does the test: `esrally install` would build Elasticsearch from source, which its nodes are not set up for",
                "name the nodes' release: cluster = { nodes = 3, distribution_version = \"8.15.0\" }, or `distribution_version` for the test or in `[defaults]`",
            );
            ok = false;
        }
        let car_params = match (
            key(const { cluster_at("car_params") }),
            &m[const { at("car_params") }],
        ) {
            (Some(Val::JsonMap(own)), _) | (None, Some(Val::JsonMap(own))) => own.clone(),
            _ => NO_JSON.clone(),
        };
        let cluster = Cluster {
            car: own_or_the_tests(const { cluster_at("car") }, const { at("car") }),
            car_params,
            distribution_repository: text(const { cluster_at("distribution_repository") }),
            distribution_version,
            hosts,
            instance_type,
            nodes,
            plugin_params: map(const { cluster_at("plugin_params") }),
            plugins: match key(const { cluster_at("plugins") }) {
                Some(Val::Strs(p)) => p.clone(),
                _ => NO_TEXTS.clone(),
            },
            runtime_jdk: own_or_the_tests(
                const { cluster_at("runtime_jdk") },
                const { at("runtime_jdk") },
            ),
            team_path,
        };
        ok.then_some((Some(cluster), drivers))
    }

    /// Whether an ssh test's pools hold its nodes and load drivers at once, each on a host of
    /// its own: the nodes are leased from `cluster.hosts` (`nodes_pool`, else the test's
    /// `hosts`), the drivers from `hosts`. A pool too small for one test is an error, not a
    /// warning: the pool is what the plan names, so no wait would ever make room (a pool
    /// shared by tests that run at once only makes them wait, as a single-host test does).
    fn pool_holds(
        &mut self,
        hosts: &[Text],
        nodes_pool: &[Text],
        nodes: NonZeroU32,
        drivers: NonZeroU32,
        span: &Range<usize>,
        field: Field<'_>,
    ) -> bool {
        let (nodes, drivers) = (nodes.get() as usize, drivers.get() as usize);
        let (node_hosts, named) = match nodes_pool {
            [] => (hosts, "`hosts`"),
            own => (own, "`cluster.hosts`"),
        };
        let both: std::collections::HashSet<&Text> = hosts.iter().chain(node_hosts).collect();
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let short = if node_hosts.len() < nodes {
            Some(format!(
                "the cluster's {nodes} node{} need a host each, and {named} has {}",
                plural(nodes),
                node_hosts.len()
            ))
        } else if hosts.len() < drivers {
            Some(format!(
                "the test's {drivers} load driver{} need a host each, and `hosts` has {}",
                plural(drivers),
                hosts.len()
            ))
        } else if both.len() < nodes + drivers {
            Some(format!(
                "the test needs {} hosts at once ({nodes} node{} and {drivers} load driver{}, each on a host of its own), and its pool has {}",
                nodes + drivers,
                plural(nodes),
                plural(drivers),
                both.len()
            ))
        } else {
            None
        };
        if let Some(short) = &short {
            self.sink.error_with_help(
                span,
                field,
                format!("{short}: the test could never run"),
                "add hosts to the pool (`cluster.hosts` for the nodes, `hosts` for the load drivers), or ask for fewer nodes or load drivers",
            );
        }
        short.is_none()
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
                on_interruption: on_interruption.unwrap_or_default(),
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
}

fn max_runtime(raw: &Raw) -> Duration {
    match raw[const { at("max_runtime") }] {
        Some(Val::Duration(d)) => d,
        _ => settings::MAX_RUNTIME,
    }
}

fn stall_timeout(raw: &Raw) -> Duration {
    match raw[const { at("stall_timeout") }] {
        Some(Val::Duration(d)) => d,
        _ => settings::STALL_TIMEOUT,
    }
}

/// Whether a table sets `stall_timeout` or `max_runtime` itself.
pub(super) fn sets_timeouts(own: &Raw) -> bool {
    own[const { at("stall_timeout") }].is_some() || own[const { at("max_runtime") }].is_some()
}

impl Loader<'_, '_> {
    /// Warns when the settings of a table (`merged`, over `base`) let a race's machine run out
    /// before a silent race would count as stalled: where the table brings it about (it sets
    /// either itself, `own`), not again in every table that inherits it.
    pub(super) fn stall_check(
        &mut self,
        base: &Raw,
        own: bool,
        merged: &Raw,
        span: &Range<usize>,
        field: Field<'_>,
    ) {
        let outlasts = |raw: &Raw| stall_timeout(raw) >= max_runtime(raw);
        if outlasts(merged) && (own || !outlasts(base)) {
            self.sink.warning(
                span,
                field,
                format!(
                    "`stall_timeout` ({}) is not shorter than `max_runtime` ({}): a race that falls silent runs until its machine's time is up, and is never stopped as stalled",
                    humantime::format_duration(stall_timeout(merged)),
                    humantime::format_duration(max_runtime(merged)),
                ),
            );
        }
    }
}

/// The built-in defaults that are text, made once: every test that takes one shares it.
struct BuiltIn {
    rally_version: Text,
    remote_dir: Text,
    aws_ssh_user: Text,
}

static BUILT_IN: LazyLock<BuiltIn> = LazyLock::new(|| BuiltIn {
    rally_version: settings::RALLY_VERSION.into(),
    remote_dir: settings::REMOTE_DIR.into(),
    aws_ssh_user: settings::AWS_SSH_USER.into(),
});

pub(super) fn empty() -> Raw {
    std::array::from_fn(|_| None)
}

/// `over`'s values, else `base`'s; maps merge key by key so that a test can add one tag without
/// repeating the rest (`over`'s entries come last and win). A table that sets one of
/// [`ALTERNATIVES`] inherits neither.
pub(super) fn overlay(base: &Raw, mut over: Raw) -> Raw {
    let not_inherited: Vec<usize> = ALTERNATIVES
        .iter()
        .filter(|pair| pair.iter().any(|&i| over[i].is_some()))
        .flatten()
        .copied()
        .collect();
    std::array::from_fn(|i| match over[i].take() {
        None if not_inherited.contains(&i) => None,
        over => overlaid(&base[i], over),
    })
}

/// One value over another: maps and clusters key by key, anything else in its place.
fn overlaid(base: &Option<Val>, over: Option<Val>) -> Option<Val> {
    match (over, base) {
        (Some(Val::StrMap(over)), Some(Val::StrMap(base))) => {
            Some(Val::StrMap(base.overlaid(&over)))
        }
        (Some(Val::JsonMap(over)), Some(Val::JsonMap(base))) => {
            Some(Val::JsonMap(base.overlaid(&over)))
        }
        (Some(Val::Cluster(over)), Some(Val::Cluster(base))) => {
            let mut over = Arc::unwrap_or_clone(over);
            Some(Val::Cluster(Arc::new(std::array::from_fn(|i| {
                overlaid(&base[i], over[i].take())
            }))))
        }
        (Some(val), _) => Some(val),
        (None, base) => base.clone(),
    }
}

fn text(m: &mut Raw, i: usize) -> Option<Text> {
    match m[i].take() {
        Some(Val::Str(s)) => Some(s),
        _ => None,
    }
}

/// The empty list and map most tests have, shared: each test of a large plan allocating its own
/// was a third of the allocations of merging.
static NO_TEXTS: LazyLock<Arc<[Text]>> = LazyLock::new(|| Arc::new([]));
static NO_JSON: LazyLock<SortedMap<serde_json::Value>> = LazyLock::new(SortedMap::default);

fn texts(m: &mut Raw, i: usize) -> Arc<[Text]> {
    match m[i].take() {
        Some(Val::Strs(v)) => v,
        _ => NO_TEXTS.clone(),
    }
}

fn json_map(m: &mut Raw, i: usize) -> SortedMap<serde_json::Value> {
    match m[i].take() {
        Some(Val::JsonMap(map)) => map,
        _ => NO_JSON.clone(),
    }
}
