//! Validation: the spanned tree of a plan file to a typed [`Plan`], every problem collected.

use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::diag::{PlanErrors, Sink};
use super::source::{self, Entry, Format, Kind, Node};
use super::{Connect, PLAN_VERSION, Plan, Settings, Suite, Test, TrackSource};
use crate::address::{self, Address};

/// The type each settings key takes; the same keys are valid in `[defaults]` and in a test.
#[derive(Clone, Copy, PartialEq)]
enum Ty {
    Str,
    Strs,
    Bool,
    Port,
    Duration,
    Connect,
    StrMap,
    JsonMap,
    File,
    TrackDir,
}

const SETTINGS: &[(&str, Ty)] = &[
    ("region", Ty::Str),
    ("ami", Ty::Str),
    ("instance_type", Ty::Str),
    ("subnet_id", Ty::Str),
    ("security_group_ids", Ty::Strs),
    ("ssh_user", Ty::Str),
    ("connect", Ty::Connect),
    ("ssh_port", Ty::Port),
    ("rally_version", Ty::Str),
    ("rally_config", Ty::File),
    ("max_runtime", Ty::Duration),
    ("remote_dir", Ty::Str),
    ("tags", Ty::StrMap),
    ("track", Ty::Str),
    ("track_path", Ty::TrackDir),
    ("challenge", Ty::Str),
    ("car", Ty::Str),
    ("car_params", Ty::JsonMap),
    ("distribution_version", Ty::Str),
    ("track_params", Ty::JsonMap),
    ("pipeline", Ty::Str),
    ("target_hosts", Ty::Strs),
    ("offline", Ty::Bool),
    ("runtime_jdk", Ty::Str),
    ("client_options", Ty::Str),
    ("rally_args", Ty::Strs),
];

const TOP_KEYS: &[&str] = &["version", "name", "defaults", "suite"];
const SUITE_KEYS: &[&str] = &["name", "parallelism", "test"];
const DEFAULT_RALLY_CONFIG: &str = "conditional_install_items/rally_csv.ini";
const REQUIRED: &[&str] = &["region", "ami", "instance_type"];
/// `shutdown -h +N` counts whole minutes, so a shorter watchdog cannot be scheduled.
const MIN_RUNTIME: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
enum Val {
    Str(String),
    Strs(Vec<String>),
    Bool(bool),
    Port(u16),
    Duration(Duration),
    Connect(Connect),
    StrMap(BTreeMap<String, String>),
    JsonMap(BTreeMap<String, serde_json::Value>),
}

/// One table's settings as written, keyed by setting name.
type Raw = BTreeMap<&'static str, Val>;

pub fn load(path: &Path) -> Result<Plan, PlanErrors> {
    let text = std::fs::read(path).map_err(|e| single(path, format!("cannot read: {e}")))?;
    let text = String::from_utf8(text).map_err(|e| {
        single(
            path,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    parse(path, &text)
}

fn single(path: &Path, message: String) -> PlanErrors {
    let mut sink = Sink::new(path, "");
    sink.error(&(0..0), "", message);
    PlanErrors {
        file: path.to_owned(),
        diagnostics: sink.diagnostics,
    }
}

pub fn parse(path: &Path, text: &str) -> Result<Plan, PlanErrors> {
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
        _ => Format::Toml,
    };
    let mut sink = Sink::new(path, text);
    let plan = match source::parse(text, format) {
        Ok(root) => Loader { sink: &mut sink }.plan(path, &root),
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
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Loader<'_, '_> {
    fn plan(&mut self, path: &Path, root: &Node) -> Option<Plan> {
        let entries = self.table(root, "")?;
        self.unknown_keys(entries, "", TOP_KEYS);
        self.duplicate_keys(entries, "");

        let get = |key: &str| entries.iter().find(|e| e.key == key);
        match get("version") {
            None => self
                .sink
                .error(&(0..0), "version", format!("missing required key `version` (set `version = {PLAN_VERSION}`)")),
            Some(e) => match e.value.kind {
                Kind::Integer(PLAN_VERSION) => {}
                Kind::Integer(v) => self.sink.error(
                    &e.value.span,
                    "version",
                    format!("plan version {v} is not supported; this rallyctl reads version {PLAN_VERSION}"),
                ),
                ref other => {
                    self.expected::<()>(&e.value.span, "version", "an integer", other);
                }
            },
        }
        let name = match get("name") {
            None => {
                self.sink.error(
                    &(0..0),
                    "name",
                    "missing required key `name` (the workspace name)",
                );
                None
            }
            Some(e) => self.name(&e.value, "name"),
        };
        let defaults = match get("defaults") {
            Some(e) => self.settings_table(&e.value, "defaults", &[]),
            None => Raw::new(),
        };
        if !defaults.contains_key("rally_config") && !Path::new(DEFAULT_RALLY_CONFIG).is_file() {
            self.sink.error_with_help(
                &(0..0),
                "defaults.rally_config",
                format!("the built-in default `{DEFAULT_RALLY_CONFIG}` is not readable from the current directory"),
                "run rallyctl from the project root, or set `rally_config` in [defaults]",
            );
        }

        let mut suites = Vec::new();
        match get("suite") {
            None => self.sink.error_with_help(
                &(0..0),
                "suite",
                "the plan has no suites",
                "add at least one [[suite]] with a [[suite.test]]",
            ),
            Some(e) => {
                if let Some(items) = self.array(&e.value, "suite") {
                    let mut seen = HashSet::new();
                    for (i, node) in items.iter().enumerate() {
                        let field = format!("suite[{i}]");
                        if let Some(suite) = self.suite(node, &field, &defaults) {
                            if !seen.insert(suite.name.clone()) {
                                self.sink.error(
                                    &node.span,
                                    &join(&field, "name"),
                                    format!("duplicate suite name `{}`", suite.name),
                                );
                            }
                            suites.push(suite);
                        }
                    }
                }
            }
        }
        Some(Plan {
            name: name?,
            source: path.to_owned(),
            suites,
        })
    }

    fn suite(&mut self, node: &Node, field: &str, defaults: &Raw) -> Option<Suite> {
        let entries = self.table(node, field)?;
        self.unknown_keys(entries, field, SUITE_KEYS);
        self.duplicate_keys(entries, field);
        let get = |key: &str| entries.iter().find(|e| e.key == key);
        let name = match get("name") {
            Some(e) => self.name(&e.value, &join(field, "name")),
            None => {
                self.sink
                    .error(&node.span, field, "missing required key `name`");
                None
            }
        };
        let parallelism = get("parallelism").and_then(|e| {
            let f = join(field, "parallelism");
            match e.value.kind {
                Kind::Integer(n) if n >= 1 => NonZeroUsize::new(usize::try_from(n).ok()?),
                Kind::Integer(n) => {
                    self.sink
                        .error(&e.value.span, &f, format!("must be at least 1, found {n}"));
                    None
                }
                ref other => {
                    self.expected::<()>(&e.value.span, &f, "an integer", other);
                    None
                }
            }
        });
        let mut tests = Vec::new();
        let test_nodes = match get("test") {
            Some(e) => self
                .array(&e.value, &join(field, "test"))
                .unwrap_or_default(),
            None => &[][..],
        };
        if test_nodes.is_empty()
            && get("test").is_none_or(|e| matches!(e.value.kind, Kind::Array(_)))
        {
            self.sink.error_with_help(
                &node.span,
                field,
                "the suite has no tests",
                "add a [[suite.test]] below it, or remove the suite",
            );
        }
        let mut seen = HashSet::new();
        for (i, test_node) in test_nodes.iter().enumerate() {
            let test_field = format!("{field}.test[{i}]");
            let Some(entries) = self.table(test_node, &test_field) else {
                continue;
            };
            let test_name = match entries.iter().find(|e| e.key == "name") {
                Some(e) => self.name(&e.value, &join(&test_field, "name")),
                None => {
                    self.sink
                        .error(&test_node.span, &test_field, "missing required key `name`");
                    None
                }
            };
            let raw = self.settings_table(test_node, &test_field, &["name"]);
            if let Some(test_name) = &test_name
                && !seen.insert(test_name.clone())
            {
                self.sink.error(
                    &test_node.span,
                    &join(&test_field, "name"),
                    format!("duplicate test name `{test_name}` in this suite"),
                );
            }
            let settings = self.merge(defaults, raw, &test_node.span, &test_field);
            if let (Some(suite), Some(test), Some(settings)) = (&name, test_name, settings) {
                let address = Address::new(suite.clone(), test).expect("names were checked");
                tests.push(Test { address, settings });
            }
        }
        Some(Suite {
            name: name?,
            parallelism,
            tests,
        })
    }

    /// Reads the settings keys of one table; `extra` names keys the caller reads itself.
    fn settings_table(&mut self, node: &Node, field: &str, extra: &[&str]) -> Raw {
        let mut raw = Raw::new();
        let Some(entries) = self.table(node, field) else {
            return raw;
        };
        let allowed: Vec<&str> = SETTINGS
            .iter()
            .map(|(k, _)| *k)
            .chain(extra.iter().copied())
            .collect();
        self.unknown_keys(entries, field, &allowed);
        self.duplicate_keys(entries, field);
        for entry in entries {
            let Some(&(key, ty)) = SETTINGS.iter().find(|(k, _)| *k == entry.key) else {
                continue;
            };
            if let Some(val) = self.value(&entry.value, &join(field, key), ty) {
                raw.insert(key, val);
            }
        }
        raw
    }

    fn value(&mut self, node: &Node, field: &str, ty: Ty) -> Option<Val> {
        let span = &node.span;
        match ty {
            Ty::Str => self.string(node, field).map(Val::Str),
            Ty::File => {
                let path = self.string(node, field)?;
                match std::fs::File::open(&path).and_then(|f| f.metadata()) {
                    Ok(meta) if meta.is_file() => Some(Val::Str(path)),
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
                let track_json = Path::new(&path).join("track.json");
                match std::fs::File::open(&track_json) {
                    Ok(_) => Some(Val::Str(path)),
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
                let strings: Vec<_> = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, item)| self.string(item, &format!("{field}[{i}]")))
                    .collect();
                (strings.len() == items.len()).then_some(Val::Strs(strings))
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
            Ty::Duration => {
                let text = self.string(node, field)?;
                match humantime::parse_duration(&text) {
                    Ok(d) if d >= MIN_RUNTIME => Some(Val::Duration(d)),
                    Ok(_) => {
                        self.sink.error(span, field, format!("`{text}` is shorter than the 1 minute the shutdown watchdog can schedule"));
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
            Ty::Connect => {
                let text = self.string(node, field)?;
                match text.as_str() {
                    "public_ip" => Some(Val::Connect(Connect::PublicIp)),
                    "private_ip" => Some(Val::Connect(Connect::PrivateIp)),
                    _ => {
                        self.sink.error(
                            span,
                            field,
                            format!("`{text}` is not a connect mode; expected \"public_ip\" or \"private_ip\""),
                        );
                        None
                    }
                }
            }
            Ty::StrMap => {
                let entries = self.table(node, field)?;
                self.duplicate_keys(entries, field);
                let mut map = BTreeMap::new();
                let mut ok = true;
                for e in entries {
                    match self.string(&e.value, &join(field, &e.key)) {
                        Some(v) => {
                            map.insert(e.key.clone(), v);
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(Val::StrMap(map))
            }
            Ty::JsonMap => {
                let entries = self.table(node, field)?;
                self.duplicate_keys(entries, field);
                let mut map = BTreeMap::new();
                let mut ok = true;
                for e in entries {
                    match self.json(&e.value, &join(field, &e.key)) {
                        Some(v) => {
                            map.insert(e.key.clone(), v);
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(Val::JsonMap(map))
            }
        }
    }

    fn json(&mut self, node: &Node, field: &str) -> Option<serde_json::Value> {
        use serde_json::Value as J;
        Some(match &node.kind {
            Kind::String(s) => J::String(s.clone()),
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
                    .map(|(i, item)| self.json(item, &format!("{field}[{i}]")))
                    .collect::<Option<_>>()?,
            ),
            Kind::Table(entries) => J::Object(
                entries
                    .iter()
                    .map(|e| Some((e.key.clone(), self.json(&e.value, &join(field, &e.key))?)))
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
        field: &str,
    ) -> Option<Settings> {
        let mut merged = defaults.clone();
        for (key, val) in test {
            match (merged.get_mut(key), val) {
                // Maps merge key by key so a test can add one tag without repeating the rest.
                (Some(Val::StrMap(base)), Val::StrMap(over)) => base.extend(over),
                (Some(Val::JsonMap(base)), Val::JsonMap(over)) => base.extend(over),
                (_, val) => {
                    merged.insert(key, val);
                }
            }
        }
        let mut ok = true;
        for key in REQUIRED {
            if !merged.contains_key(key) {
                self.sink.error(
                    span,
                    field,
                    format!("missing required key `{key}` (set it in the test or in [defaults])"),
                );
                ok = false;
            }
        }
        let track = match (merged.remove("track"), merged.remove("track_path")) {
            (Some(Val::Str(name)), None) => Some(TrackSource::Named(name)),
            (None, Some(Val::Str(path))) => Some(TrackSource::Path(PathBuf::from(path))),
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
        if !ok {
            return None;
        }
        let mut m = merged;
        let s = |m: &mut Raw, k: &str| match m.remove(k) {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        };
        let strs = |m: &mut Raw, k: &str| match m.remove(k) {
            Some(Val::Strs(v)) => v,
            _ => Vec::new(),
        };
        let json_map = |m: &mut Raw, k: &str| match m.remove(k) {
            Some(Val::JsonMap(v)) => v,
            _ => BTreeMap::new(),
        };
        Some(Settings {
            region: s(&mut m, "region")?,
            ami: s(&mut m, "ami")?,
            instance_type: s(&mut m, "instance_type")?,
            subnet_id: s(&mut m, "subnet_id"),
            security_group_ids: strs(&mut m, "security_group_ids"),
            ssh_user: s(&mut m, "ssh_user").unwrap_or_else(|| "ec2-user".into()),
            connect: match m.remove("connect") {
                Some(Val::Connect(c)) => c,
                _ => Connect::PublicIp,
            },
            ssh_port: match m.remove("ssh_port") {
                Some(Val::Port(p)) => p,
                _ => 22,
            },
            rally_version: s(&mut m, "rally_version").unwrap_or_else(|| "2.13.0".into()),
            rally_config: s(&mut m, "rally_config")
                .unwrap_or_else(|| DEFAULT_RALLY_CONFIG.into())
                .into(),
            max_runtime: match m.remove("max_runtime") {
                Some(Val::Duration(d)) => d,
                _ => Duration::from_secs(3 * 3600),
            },
            remote_dir: s(&mut m, "remote_dir").unwrap_or_else(|| "rallyctl".into()),
            tags: match m.remove("tags") {
                Some(Val::StrMap(t)) => t,
                _ => BTreeMap::new(),
            },
            track: track?,
            challenge: s(&mut m, "challenge"),
            car: s(&mut m, "car"),
            car_params: json_map(&mut m, "car_params"),
            distribution_version: s(&mut m, "distribution_version"),
            track_params: json_map(&mut m, "track_params"),
            pipeline: s(&mut m, "pipeline"),
            target_hosts: strs(&mut m, "target_hosts"),
            offline: matches!(m.remove("offline"), Some(Val::Bool(true))),
            runtime_jdk: s(&mut m, "runtime_jdk"),
            client_options: s(&mut m, "client_options"),
            rally_args: strs(&mut m, "rally_args"),
        })
    }

    fn name(&mut self, node: &Node, field: &str) -> Option<String> {
        let name = self.string(node, field)?;
        match address::check_name(&name) {
            Ok(()) => Some(name),
            Err(e) => {
                self.sink.error(
                    &node.span,
                    field,
                    format!("`{name}` cannot form an address: {e}"),
                );
                None
            }
        }
    }

    fn string(&mut self, node: &Node, field: &str) -> Option<String> {
        match &node.kind {
            Kind::String(s) => Some(s.clone()),
            other => self.expected(&node.span, field, "a string", other),
        }
    }

    fn table<'n>(&mut self, node: &'n Node, field: &str) -> Option<&'n [Entry]> {
        match &node.kind {
            Kind::Table(entries) => Some(entries),
            other => self.expected(&node.span, field, "a table", other),
        }
    }

    fn array<'n>(&mut self, node: &'n Node, field: &str) -> Option<&'n [Node]> {
        match &node.kind {
            Kind::Array(items) => Some(items),
            other => self.expected(&node.span, field, "an array", other),
        }
    }

    fn expected<T>(
        &mut self,
        span: &Range<usize>,
        field: &str,
        want: &str,
        found: &Kind,
    ) -> Option<T> {
        self.sink.error(
            span,
            field,
            format!("expected {want}, found {}", found.describe()),
        );
        None
    }

    fn unknown_keys(&mut self, entries: &[Entry], field: &str, allowed: &[&str]) {
        for e in entries
            .iter()
            .filter(|e| !allowed.contains(&e.key.as_str()))
        {
            let suggestion = allowed
                .iter()
                .map(|k| (strsim::jaro_winkler(k, &e.key), *k))
                .filter(|(score, _)| *score > 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            let message = format!("unknown key `{}`", e.key);
            let f = join(field, &e.key);
            match suggestion {
                Some((_, k)) => self.sink.error_with_help(
                    &e.key_span,
                    &f,
                    message,
                    format!("did you mean `{k}`?"),
                ),
                None => self.sink.error(&e.key_span, &f, message),
            }
        }
    }

    /// TOML refuses duplicate keys itself; JSON parsers keep the last, which would hide a typo.
    fn duplicate_keys(&mut self, entries: &[Entry], field: &str) {
        let mut seen = HashSet::new();
        for e in entries {
            if !seen.insert(e.key.as_str()) {
                self.sink.error(
                    &e.key_span,
                    &join(field, &e.key),
                    format!("duplicate key `{}`", e.key),
                );
            }
        }
    }
}
