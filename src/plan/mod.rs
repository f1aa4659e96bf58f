//! The plan file: its schema, TOML and JSON loading, defaults inheritance and validation.
//!
//! Loading is two passes over one spanned tree ([`source`]): each table's keys are read and
//! type-checked where they stand (so a bad default is reported once, not once per test), then
//! every test's settings are merged over `[defaults]` and the built-in defaults and checked as a
//! whole. All problems are collected and reported together ([`diag`]).

pub mod diag;
mod load;
pub mod source;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
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
    Named(String),
    Path(PathBuf),
}

/// A test's fully merged settings. Its canonical JSON (sorted keys) feeds the config hash and
/// the diffs `plan` shows, so every field that changes a result belongs here and nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub region: String,
    pub ami: String,
    pub instance_type: String,
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub ssh_user: String,
    pub connect: Connect,
    pub ssh_port: u16,
    pub rally_version: String,
    pub rally_config: PathBuf,
    #[serde(with = "humantime_serde")]
    pub max_runtime: Duration,
    /// Where on the instance rallyctl installs Rally and keeps its runs; relative to the SSH
    /// user's home unless absolute.
    pub remote_dir: String,
    pub tags: BTreeMap<String, String>,
    pub track: TrackSource,
    pub challenge: Option<String>,
    pub car: Option<String>,
    pub car_params: BTreeMap<String, serde_json::Value>,
    pub distribution_version: Option<String>,
    pub track_params: BTreeMap<String, serde_json::Value>,
    pub pipeline: Option<String>,
    pub target_hosts: Vec<String>,
    pub offline: bool,
    pub runtime_jdk: Option<String>,
    pub client_options: Option<String>,
    /// Extra `esrally race` arguments, passed through as they are (each one quoted).
    pub rally_args: Vec<String>,
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

    /// The canonical form, with keys sorted: what state records and diffs compare.
    pub fn canonical_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("settings serialize to JSON")
    }

    /// [`Self::canonical_value`] as text: what the config hash covers.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string_pretty(&self.canonical_value()).expect("JSON values serialize")
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
        load::load(path)
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
