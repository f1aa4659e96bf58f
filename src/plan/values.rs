//! The settings values: each written value read and checked for its declared type ([`Ty`]).

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::load::{Field, Loader};
use super::settings::{CLUSTER_KEYS, CLUSTER_NAMES, SETTINGS, Ty};
use super::source::{Kind, Node};
use super::{Connect, LocalPath, MarketKind, Placement, ProviderKind, RepeatOn, SortedMap, Text};

/// An EC2 id: `prefix-` and up to 17 lowercase hex digits (8 in older ids, 17 in newer).
/// `to` as a path from `from`; both canonical.
fn relative(to: &Path, from: &Path) -> PathBuf {
    let common = (to.components().zip(from.components()))
        .take_while(|(a, b)| a == b)
        .count();
    let mut path = PathBuf::new();
    for _ in common..from.components().count() {
        path.push("..");
    }
    path.extend(to.components().skip(common));
    path
}

pub(super) fn is_aws_id(text: &str, prefix: &str) -> bool {
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
pub(super) const MAX_USER_TAGS: usize = 44;
const MAX_TAG_KEY: usize = 128;
const MAX_TAG_VALUE: usize = 256;

/// Why EC2 would refuse the tag, or rallyctl would have to drop it.
pub(super) fn tag_problem(key: &str, value: &str) -> Option<String> {
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

/// A setting as written, checked for its type. Cloning one is cheap: a default is made once
/// and shared by every test that inherits it.
#[derive(Debug, Clone)]
pub(super) enum Val {
    Str(Text),
    Path(LocalPath),
    Strs(Arc<[Text]>),
    Bool(bool),
    Port(u16),
    Duration(Duration),
    Connect(Connect),
    Placement(Placement),
    Market(MarketKind),
    Provider(ProviderKind),
    Count(NonZeroU32),
    /// A `cluster` table as written, indexed like [`CLUSTER_KEYS`]: a test's table merges
    /// over the one it inherits, so `nodes` may come from either.
    Cluster(Arc<ClusterRaw>),
    RepeatOn(RepeatOn),
    /// Written, but wrong (and reported where it is written): the key is not missing, and the
    /// test it reaches cannot be built.
    Invalid,
    StrMap(SortedMap<Text>),
    JsonMap(SortedMap<serde_json::Value>),
}

/// One table's settings as written, indexed like [`SETTINGS`].
pub(super) type Raw = [Option<Val>; SETTINGS.len()];

/// One `cluster` table's keys as written, indexed like [`CLUSTER_KEYS`].
pub(super) type ClusterRaw = [Option<Val>; CLUSTER_KEYS.len()];

impl<'n> Loader<'_, '_> {
    pub(super) fn value(&mut self, node: &'n Node<'n>, field: Field<'_>, ty: Ty) -> Option<Val> {
        let span = &node.span;
        match ty {
            Ty::Str => self.string(node, field).map(|s| Val::Str(s.into())),
            Ty::File => {
                let path = self.string(node, field)?;
                let file = |p: &Path| match std::fs::File::open(p).and_then(|f| f.metadata()) {
                    Ok(meta) if meta.is_file() => Ok(()),
                    Ok(_) => Err(format!("`{}` is not a file", p.display())),
                    Err(e) => Err(format!("cannot read `{}`: {e}", p.display())),
                };
                self.local_path(span, field, path, file, None)
                    .map(Val::Path)
            }
            Ty::TrackDir => {
                let path = self.string(node, field)?;
                let track = |p: &Path| {
                    let track_json = p.join("track.json");
                    std::fs::File::open(&track_json)
                        .map(drop)
                        .map_err(|e| format!("cannot read `{}`: {e}", track_json.display()))
                };
                let help = "track_path names a local Rally track directory holding track.json";
                self.local_path(span, field, path, track, Some(help))
                    .map(Val::Path)
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
                const HOW: &str = "write a duration as a string of numbers with their units, e.g. \"90m\", \"2h\" or \"1h30m\"";
                let number = match node.kind {
                    Kind::Integer(n) => Some(n.to_string()),
                    Kind::Float(f) => Some(f.to_string()),
                    _ => None,
                };
                if let Some(number) = number {
                    self.sink.error_with_help(
                        span,
                        field,
                        format!("{number} is not a duration: it has no unit"),
                        HOW,
                    );
                    return None;
                }
                let text = self.string(node, field)?;
                match humantime::parse_duration(text) {
                    Ok(d) if d >= min => Some(Val::Duration(d)),
                    Ok(_) => {
                        self.sink
                            .error(span, field, format!("`{text}` is shorter than {why}"));
                        None
                    }
                    Err(_) => {
                        self.sink.error_with_help(
                            span,
                            field,
                            format!("`{text}` is not a duration"),
                            HOW,
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
            Ty::Count(max) => match node.kind {
                Kind::Integer(n) => match u32::try_from(n).ok().and_then(NonZeroU32::new) {
                    Some(count) if n <= max => Some(Val::Count(count)),
                    _ => {
                        self.sink
                            .error(span, field, format!("must be from 1 to {max}, found {n}"));
                        None
                    }
                },
                ref other => self.expected(span, field, "an integer", other),
            },
            Ty::Cluster => {
                let entries = self.table(node, field)?;
                self.duplicate_keys(entries, field);
                let mut raw: ClusterRaw = std::array::from_fn(|_| None);
                let mut ok = true;
                for e in entries {
                    match CLUSTER_NAMES.iter().position(|k| *k == e.key) {
                        Some(i) => {
                            let (name, ty, _) = CLUSTER_KEYS[i];
                            raw[i] = self.value(&e.value, field.key(name), ty);
                            ok &= raw[i].is_some();
                        }
                        None => {
                            self.unknown_key(e, field, &CLUSTER_NAMES, &[]);
                            ok = false;
                        }
                    }
                }
                ok.then(|| Val::Cluster(Arc::new(raw)))
            }
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
            Ty::Fallback => {
                let text = self.string(node, field)?;
                match text {
                    "on_demand" => Some(Val::Market(MarketKind::OnDemand)),
                    "spot" => Some(Val::Market(MarketKind::Spot)),
                    // EC2's interruption behaviours: what EC2 does with the instance, not where
                    // the test goes.
                    "terminate" | "stop" | "hibernate" => {
                        self.sink.error_with_help(
                            span,
                            field,
                            format!("`{text}` is not a fallback: it is what EC2 does with a reclaimed instance, and rallyctl's one-time spot requests are always terminated"),
                            "say where the test races again after its spot instance is reclaimed: \"on_demand\" (on-demand capacity) or \"spot\" (a spot instance again)",
                        );
                        None
                    }
                    _ => {
                        self.sink.error(
                            span,
                            field,
                            format!(
                                "`{text}` is not a fallback; expected \"on_demand\" or \"spot\""
                            ),
                        );
                        None
                    }
                }
            }
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
            Ty::Placement => self.one_of(
                node,
                field,
                &[("cluster", Val::Placement(Placement::Cluster))],
                "a placement strategy",
                "\"cluster\" (EC2's cluster placement group)",
            ),
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

    /// A relative path a plan names is read beside the plan file. Plans written when paths
    /// were read from the current directory keep working: a path found only there is read
    /// from there, with a warning giving the spelling that works from the plan's directory.
    /// `check` says why a candidate will not do; an error names every place looked.
    fn local_path(
        &mut self,
        span: &Range<usize>,
        field: Field<'_>,
        spelled: &str,
        check: impl Fn(&Path) -> Result<(), String>,
        help: Option<&str>,
    ) -> Option<LocalPath> {
        let beside = self.dir.join(spelled);
        let problem = match check(&beside) {
            Ok(()) => return Some(LocalPath::in_project(&beside, self.root)),
            Err(problem) => problem,
        };
        let here = Path::new(".").canonicalize().ok();
        let elsewhere = Path::new(spelled).is_relative()
            && self.dir.canonicalize().ok() != here
            && !self.dir.as_os_str().is_empty();
        let message = if !elsewhere {
            problem
        } else if let Err(there) = check(Path::new(spelled)) {
            format!(
                "`{spelled}` is found neither beside the plan nor from the current directory: {problem}; {there}"
            )
        } else {
            let works = match (Path::new(spelled).canonicalize(), self.dir.canonicalize()) {
                (Ok(file), Ok(dir)) => relative(&file, &dir).display().to_string(),
                _ => spelled.to_owned(),
            };
            self.sink.warning(
                span,
                field,
                format!(
                    "`{spelled}` is found only from the current directory; relative paths are read from the plan's directory ({}): write \"{works}\", which works from any directory",
                    self.dir.display()
                ),
            );
            return Some(LocalPath::in_project(Path::new(spelled), self.root));
        };
        match help {
            Some(help) => self.sink.error_with_help(span, field, message, help),
            None => self.sink.error(span, field, message),
        }
        None
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
}
