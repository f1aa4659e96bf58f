//! The plan file: its schema, TOML and JSON loading, defaults inheritance and validation.
//!
//! Loading is two passes over one spanned tree ([`source`]): each table's keys are read and
//! type-checked where they stand (so a bad default is reported once, not once per test), then
//! every test's settings are merged over `[defaults]` and the built-in defaults and checked as a
//! whole. All problems are collected and reported together ([`diag`]).

pub mod diag;
mod load;
pub mod source;
mod toml_doc;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::address::Address;
pub use diag::{Diagnostic, PlanErrors};

/// The plan format version this rallyctl reads.
pub const PLAN_VERSION: i64 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The workspace: names the state file, the results directory and the instance tags.
    pub name: String,
    pub source: PathBuf,
    pub suites: Vec<Suite>,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connect {
    PublicIp,
    PrivateIp,
}

/// Where the track comes from: Rally's track repository by name, or a local directory that
/// rallyctl uploads with the test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    Named(Text),
    Path(PathBuf),
}

/// Text a plan's tests share: what a test inherits from `[defaults]` is held once, however many
/// tests inherit it.
pub type Text = Arc<str>;

/// A test's fully merged settings. Its canonical JSON feeds the config hash and the diffs
/// `plan` shows, so every field that changes a result belongs here and nothing else.
///
/// The fields are in alphabetical order, and every map is sorted: the canonical JSON (sorted
/// keys, the form state has always recorded) is then simply this struct serialized, with no
/// intermediate tree per test. Text, lists and maps are shared, so that the ten thousand tests
/// of a large plan cost little more than what each sets itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub ami: Text,
    pub car: Option<Text>,
    pub car_params: SortedMap<serde_json::Value>,
    pub challenge: Option<Text>,
    pub client_options: Option<Text>,
    pub connect: Connect,
    pub distribution_version: Option<Text>,
    pub instance_type: Text,
    #[serde(with = "humantime_serde")]
    pub max_runtime: Duration,
    pub offline: bool,
    pub pipeline: Option<Text>,
    /// Extra `esrally race` arguments, passed through as they are (each one quoted).
    pub rally_args: Arc<[Text]>,
    pub rally_config: Arc<Path>,
    pub rally_version: Text,
    pub region: Text,
    /// Where on the instance rallyctl installs Rally and keeps its runs; relative to the SSH
    /// user's home unless absolute.
    pub remote_dir: Text,
    pub runtime_jdk: Option<Text>,
    pub security_group_ids: Arc<[Text]>,
    pub ssh_port: u16,
    pub ssh_user: Text,
    pub subnet_id: Option<Text>,
    pub tags: SortedMap<Text>,
    pub target_hosts: Arc<[Text]>,
    pub track: TrackSource,
    pub track_params: SortedMap<serde_json::Value>,
}

impl Settings {
    /// Rally needs a JDK on the instance only when it launches Elasticsearch itself and that
    /// Elasticsearch does not bring its own (bundled JDKs arrived with 7.0).
    pub fn needs_java(&self) -> bool {
        if self.pipeline.as_deref() == Some("benchmark-only") || !self.target_hosts.is_empty() {
            return false;
        }
        match self.runtime_jdk.as_deref() {
            Some("bundled") => false,
            Some(_) => true,
            None => self
                .distribution_version
                .as_deref()
                .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
                .is_some_and(|major| major < 7),
        }
    }

    /// The canonical form, pretty JSON with sorted keys: what the config hash covers, state
    /// records and diffs compare.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("settings serialize to JSON")
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
}

impl Plan {
    /// Reads and validates a plan file; the format follows the extension (`.json` is JSON,
    /// anything else TOML).
    pub fn load(path: &Path) -> Result<Plan, PlanErrors> {
        Plan::parse(path, &Plan::read(path)?)
    }

    /// A plan file's text, for [`Plan::parse`].
    pub fn read(path: &Path) -> Result<String, PlanErrors> {
        load::read(path)
    }

    /// The workspace name a TOML plan gives before its first table, read without parsing or
    /// validating the rest, so that work needing only the name (reading the workspace's state)
    /// can start while the plan is validated. `None` for JSON plans, or when the name is not
    /// a plain string there; [`Plan::parse`] has the last word either way.
    pub fn peek_name(path: &Path, text: &str) -> Option<String> {
        if load::format_of(path) != source::Format::Toml {
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

    /// Validates plan text as if read from `path` (which relative paths inside do not use).
    pub fn parse(path: &Path, text: &str) -> Result<Plan, PlanErrors> {
        load::parse(path, text)
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
}
