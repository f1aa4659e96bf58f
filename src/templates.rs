//! What an instance runs, rendered from `templates/` (compiled into the binary) and the test's
//! rally.ini from `conditional_install_items/`, with every plan value shell-quoted.
//!
//! Rendering also fixes a test's config hash: the merged settings plus everything rendered, so
//! that a changed template, rally.ini or track file means a re-run. Values that change from run
//! to run (run id, race id) are passed to the scripts as arguments instead, and secrets come from
//! the environment only when applying, never into the hash, a plan or state.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, UndefinedBehavior, context};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::FastHash;
use crate::plan::{
    Cluster, MachineSettings, RallyConfig, Settings, SortedMap, Test, Text, TrackSource,
};

mod node;

use node::{
    NODE_CLUSTER_NAME, NODE_LOG_TAIL_LINES, NODE_START_TIMEOUT, NodeContext, node_install_args,
    node_runtime_jdk,
};
pub use node::{NodeCommand, cluster_target_hosts};

/// Environment variables the metrics-store rally.ini reads at apply time.
pub const METRICS_PASSWORD_ENV: &str = "RALLYCTL_METRICS_PASSWORD";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot render {name}: {source:#}")]
    Render {
        name: String,
        source: minijinja::Error,
    },
    #[error("{0} cannot be passed to a shell (it holds a NUL byte)")]
    Unquotable(String),
}

/// Everything rendered for one test. Tests that render a part alike share one copy of it,
/// text and sha256: a plan's thousands of artifacts each hold four pointers to them.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifacts {
    /// In the order of [`RENDERED`].
    parts: [Arc<Part>; 4],
    pub config_hash: String,
    /// What only some tests have, behind one pointer that most leave empty.
    extra: Option<Arc<Extra>>,
}

/// A test's parts beyond [`RENDERED`]: a local track's files, a cluster's `node.sh`.
#[derive(Debug, PartialEq)]
struct Extra {
    track: Option<Arc<TrackFiles>>,
    node: Option<Arc<Part>>,
}

/// The rendered parts by the name they have in a run directory, in the order the config hash
/// takes them in.
const RENDERED: [&str; 4] = ["user_data.sh", "install.sh", "race.sh", "rally.ini"];

/// A local track directory: each file's path in it and the sha256 of its content, sorted by
/// path, and the digest over them that the config hash takes in.
#[derive(Debug, PartialEq)]
struct TrackFiles {
    files: Vec<(String, [u8; 32])>,
    digest: String,
}

impl Artifacts {
    pub fn user_data(&self) -> &str {
        &self.parts[0].text
    }

    pub fn install(&self) -> &str {
        &self.parts[1].text
    }

    pub fn race(&self) -> &str {
        &self.parts[2].text
    }

    /// The rally.ini with environment values shown as `${NAME}`; see [`Renderer::rally_ini`].
    pub fn rally_ini(&self) -> &str {
        &self.parts[3].text
    }

    /// `node.sh`, which manages one Elasticsearch node of the test's cluster (see
    /// [`NodeCommand`]); only a test with a cluster has one, and its bundle carries it.
    pub fn node(&self) -> Option<&str> {
        let node = self.extra.as_ref()?.node.as_ref()?;
        Some(&node.text)
    }

    /// The sha256 of the install script, as [`crate::state::Machine::installed`] records it.
    pub fn install_digest(&self) -> String {
        hex::encode(self.parts[1].digest)
    }

    /// Every file the config hash takes in besides the settings, each by its sha256, named as
    /// `plan` names a changed one: the rendered scripts, the rally.ini under the path of its
    /// source, and the local track's files under the track's path.
    pub fn inputs(&self, s: &Settings) -> Inputs {
        let mut inputs = Inputs::new();
        for (name, part) in RENDERED.iter().zip(&self.parts) {
            let digest = part.digest;
            let name = match *name {
                "rally.ini" => format!("rally.ini ({})", s.rally_config.path().display()),
                name => name.to_owned(),
            };
            inputs.insert(name, hex::encode(digest));
        }
        let extra = self.extra.as_deref();
        if let Some(node) = extra.and_then(|e| e.node.as_ref()) {
            inputs.insert("node.sh".to_owned(), hex::encode(node.digest));
        }
        if let (Some(track), TrackSource::Path(dir)) =
            (extra.and_then(|e| e.track.as_ref()), &s.track)
        {
            for (file, digest) in &track.files {
                let name = dir.recorded().join(file).display().to_string();
                inputs.insert(name, hex::encode(digest));
            }
        }
        inputs
    }
}

/// What [`Artifacts::inputs`] gives: file name to sha256 in hex.
pub type Inputs = BTreeMap<String, String>;

/// Every planned test's artifacts, looked up by address (never iterated, so no order is kept).
pub type ArtifactMap = HashMap<crate::address::Address, Artifacts, FastHash>;

/// How `env("NAME")` in a rally.ini renders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Secrets {
    /// As `${NAME}`: for hashes and plans, which must not depend on or show the values.
    Placeholders,
    /// The real value, for the file uploaded to the instance.
    FromEnv,
}

pub struct Renderer {
    env: Environment<'static>,
    /// Track directories, read once however many tests share a track.
    tracks: Mutex<HashMap<PathBuf, Arc<TrackFiles>>>,
}

/// Renders tests one after another, each distinct part (a script for one set of values, a
/// rally.ini) once, whatever the number of tests sharing it. One per thread: its parts and
/// buffers are its own, so threads rendering side by side share nothing they write.
pub struct Session<'r> {
    renderer: &'r Renderer,
    /// Rendered parts by template and context.
    parts: HashMap<Vec<u8>, Arc<Part>, FastHash>,
    /// Extras by the parts they point at, so that tests of one track share one.
    extras: HashMap<[usize; 2], Arc<Extra>, FastHash>,
    /// Reused buffers: the key of a part being looked up, the text being hashed, a context's
    /// JSON.
    key: Vec<u8>,
    text: Vec<u8>,
    context: Vec<u8>,
}

/// A rendered text and its sha256, which is what the config hash takes in.
#[derive(Debug, PartialEq)]
struct Part {
    text: Box<str>,
    digest: [u8; 32],
}

impl Part {
    fn new(text: String) -> Arc<Part> {
        Arc::new(Part {
            digest: Sha256::digest(text.as_bytes()).into(),
            text: text.into(),
        })
    }
}

const TEMPLATES: &[(&str, &str)] = &[
    ("user_data.sh", include_str!("../templates/user_data.sh.j2")),
    (
        "watchdog_reboot.sh",
        include_str!("../templates/watchdog_reboot.sh.j2"),
    ),
    ("install.sh", include_str!("../templates/install.sh.j2")),
    ("race.sh", include_str!("../templates/race.sh.j2")),
    ("node.sh", include_str!("../templates/node.sh.j2")),
];

pub fn shell_quote(value: &str) -> Result<String, TemplateError> {
    shlex::try_quote(value)
        .map(|q| q.into_owned())
        .map_err(|_| TemplateError::Unquotable(format!("{value:?}")))
}

fn sh_filter(value: String) -> Result<String, minijinja::Error> {
    shell_quote(&value)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
}

/// Scripts and ini files keep their last newline, and a misspelt variable is an error rather
/// than an empty string in a shell script.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_syntax(
        SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("default delimiters are valid"),
    );
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    pub fn new() -> Renderer {
        let mut env = environment();
        env.add_filter("sh", sh_filter);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .expect("built-in templates parse");
        }
        Renderer {
            env,
            tracks: Mutex::default(),
        }
    }

    pub fn session(&self) -> Session<'_> {
        Session {
            renderer: self,
            parts: HashMap::default(),
            extras: HashMap::default(),
            key: Vec::new(),
            text: Vec::new(),
            context: Vec::new(),
        }
    }

    /// Renders one test; see [`Session`] for many.
    pub fn render(&self, test: &Test) -> Result<Artifacts, TemplateError> {
        self.session().render(test)
    }

    /// The test's rally.ini. `env("NAME")` and `env("NAME", "default")` read the environment
    /// (metrics store host, port, user); a missing variable without a default is an error.
    pub fn rally_ini(&self, s: &Settings, secrets: Secrets) -> Result<String, TemplateError> {
        let source = match &s.rally_config {
            RallyConfig::BuiltIn => RallyConfig::BUILT_IN_TEXT.to_owned(),
            RallyConfig::File(path) => {
                std::fs::read_to_string(path.read()).map_err(|source| TemplateError::Read {
                    path: path.read().to_path_buf(),
                    source,
                })?
            }
        };
        let mut env = environment();
        env.add_function(
            "env",
            move |name: String, default: Option<String>| match secrets {
                Secrets::Placeholders => Ok(format!("${{{name}}}")),
                Secrets::FromEnv => std::env::var(&name).or_else(|_| {
                    default.ok_or_else(|| {
                        minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            format!("environment variable {name} is not set"),
                        )
                    })
                }),
            },
        );
        env.render_str(&source, context! {})
            .map_err(|source| TemplateError::Render {
                name: s.rally_config.path().display().to_string(),
                source,
            })
    }

    /// A track directory's files with their sha256, and the sha256 over their relative paths
    /// and contents in sorted order.
    fn track_files(&self, dir: &Path) -> Result<Arc<TrackFiles>, TemplateError> {
        let mut tracks = self.tracks.lock().expect("renderer cache lock");
        if let Some(t) = tracks.get(dir) {
            return Ok(t.clone());
        }
        let mut hash = Sha256::new();
        let mut files = Vec::new();
        for file in list_files(dir)? {
            let bytes = std::fs::read(dir.join(&file)).map_err(|source| TemplateError::Read {
                path: dir.join(&file),
                source,
            })?;
            let name = file.to_string_lossy();
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            hash.update(name.as_bytes());
            hash.update([0]);
            hash.update(digest);
            files.push((name.into_owned(), digest));
        }
        let track = Arc::new(TrackFiles {
            files,
            digest: hex::encode(hash.finalize()),
        });
        tracks.insert(dir.to_owned(), track.clone());
        Ok(track)
    }
}

impl Session<'_> {
    /// The part cached under the key that `key` writes, or `make`'s result, cached. A plan of
    /// many tests mostly finds its parts, and finding one allocates nothing.
    fn cached(
        &mut self,
        key: impl FnOnce(&mut Vec<u8>),
        make: impl FnOnce(&Renderer) -> Result<String, TemplateError>,
    ) -> Result<Arc<Part>, TemplateError> {
        self.key.clear();
        key(&mut self.key);
        if let Some(part) = self.parts.get(&self.key[..]) {
            return Ok(part.clone());
        }
        let part = Part::new(make(self.renderer)?);
        self.parts.insert(self.key.clone(), part.clone());
        Ok(part)
    }

    /// The context's JSON, in the session's buffer, which the caller gives back
    /// (`self.context = json`) when done with it.
    fn context_json(&mut self, ctx: &impl Serialize) -> Vec<u8> {
        let mut json = std::mem::take(&mut self.context);
        json.clear();
        serde_json::to_writer(&mut json, ctx).expect("contexts serialize");
        json
    }

    /// Renders a built-in template; the context's JSON is its cache key.
    fn render_builtin(
        &mut self,
        name: &str,
        ctx: &impl Serialize,
    ) -> Result<Arc<Part>, TemplateError> {
        let json = self.context_json(ctx);
        let part = self.render_builtin_keyed(name, ctx, &json)?;
        self.context = json;
        Ok(part)
    }

    /// [`Session::render_builtin`] with the context's JSON written already, for a context
    /// that several parts of a test share.
    fn render_builtin_keyed(
        &mut self,
        name: &str,
        ctx: &impl Serialize,
        json: &[u8],
    ) -> Result<Arc<Part>, TemplateError> {
        self.cached(
            |buf| {
                buf.extend_from_slice(name.as_bytes());
                buf.push(0);
                buf.extend_from_slice(json);
            },
            |r| {
                r.env
                    .get_template(name)
                    .and_then(|t| t.render(minijinja::value::Serde(ctx)))
                    .map_err(|source| TemplateError::Render {
                        name: format!("templates/{name}.j2"),
                        source,
                    })
            },
        )
    }

    pub fn render(&mut self, test: &Test) -> Result<Artifacts, TemplateError> {
        let s = &test.settings;
        let watchdog_ctx = UserDataContext {
            max_runtime_minutes: s.max_runtime.as_secs().div_ceil(60),
            max_runtime: s.max_runtime,
        };
        // The user data is the watchdog as first written, which the config hash takes in, then
        // what makes it survive a reboot, which changes no result and so is left out of the
        // hash: adding it kept every recorded result current.
        // Its JSON keys three parts: written once (each is a duration's text and more).
        let json = self.context_json(&watchdog_ctx);
        let watchdog = self.render_builtin_keyed("user_data.sh", &watchdog_ctx, &json)?;
        let reboot = self.render_builtin_keyed("watchdog_reboot.sh", &watchdog_ctx, &json)?;
        let user_data = self.cached(
            |buf| {
                buf.extend_from_slice(b"user data\0");
                buf.extend_from_slice(&json);
            },
            |_| Ok(format!("{}{}", watchdog.text, reboot.text)),
        )?;
        // Kept for the next context (an error above only costs the buffer).
        self.context = json;
        let install = self.render_builtin(
            "install.sh",
            &InstallContext {
                remote_dir: &s.remote_dir,
                venv_name: VenvName(&s.rally_version),
                rally_version: &s.rally_version,
                needs_java: s.needs_java(),
                // Rally clones its track repository, and a cluster's nodes its team repository
                // unless the plan names a team directory.
                needs_git: !s.offline
                    && (matches!(s.track, TrackSource::Named(_))
                        || s.cluster.as_ref().is_some_and(|c| c.team_path.is_none())),
                baked: matches!(&s.machine, MachineSettings::Aws(a) if a.base_ami.is_some()),
            },
        )?;
        let args = esrally_args(s);
        let race = self.render_builtin(
            "race.sh",
            &RaceContext {
                remote_dir: &s.remote_dir,
                venv_name: VenvName(&s.rally_version),
                esrally_args: &args,
                track_path: matches!(s.track, TrackSource::Path(_)),
                // A cluster's load drivers race it over HTTP, with no JDK of their own.
                needs_java: s.needs_java() && s.cluster.is_none(),
                // EC2's watchdog bounds the whole instance; elsewhere the race bounds itself.
                race_timeout: match s.machine {
                    MachineSettings::Aws(_) => None,
                    _ => Some(s.max_runtime.as_secs()),
                },
                cluster: s.cluster.is_some(),
                load_drivers: s.several_load_drivers(),
            },
        )?;
        let node = match &s.cluster {
            Some(cluster) => Some(self.render_builtin(
                "node.sh",
                &NodeContext {
                    remote_dir: &s.remote_dir,
                    venv_name: VenvName(&s.rally_version),
                    install_args: &node_install_args(cluster),
                    start_args: &node_runtime_jdk(cluster),
                    team_path: cluster.team_path.as_deref(),
                    offline: s.offline,
                    needs_java: cluster.needs_java(),
                    http_port: Cluster::HTTP_PORT,
                    cluster_name: NODE_CLUSTER_NAME,
                    start_timeout: NODE_START_TIMEOUT.as_secs(),
                    tail_lines: NODE_LOG_TAIL_LINES,
                },
            )?),
            None => None,
        };
        let rally_ini = self.cached(
            |buf| {
                buf.extend_from_slice(b"rally.ini\0");
                match &s.rally_config {
                    RallyConfig::BuiltIn => buf.push(0),
                    RallyConfig::File(path) => {
                        buf.extend_from_slice(path.read().as_os_str().as_encoded_bytes())
                    }
                }
            },
            |r| r.rally_ini(s, Secrets::Placeholders),
        )?;
        let mut hash = Sha256::new();
        // The settings' canonical JSON and the parameter files as `params_json` writes them.
        hash_json(&mut hash, &mut self.text, s);
        hash_json(&mut hash, &mut self.text, &s.track_params);
        hash_json(&mut hash, &mut self.text, &s.car_params);
        for part in [&watchdog, &install, &race, &rally_ini] {
            hash.update(part.digest);
        }
        let track = match &s.track {
            TrackSource::Path(dir) => {
                let track = self.renderer.track_files(dir.read())?;
                hash.update(track.digest.as_bytes());
                Some(track)
            }
            TrackSource::Named(_) => None,
        };
        // After everything a test without a cluster hashes, so that its hash stays as it was.
        if let Some(node) = &node {
            hash.update(node.digest);
        }
        let extra = self.extra(track, node);
        let mut hex = [0; 64];
        hex::encode_to_slice(hash.finalize(), &mut hex).expect("64 digits hold a sha256");
        Ok(Artifacts {
            parts: [user_data, install, race, rally_ini],
            config_hash: String::from_utf8(hex.to_vec()).expect("hex digits are ASCII"),
            extra,
        })
    }

    /// The one [`Extra`] of these parts, or none when there are none.
    fn extra(
        &mut self,
        track: Option<Arc<TrackFiles>>,
        node: Option<Arc<Part>>,
    ) -> Option<Arc<Extra>> {
        if track.is_none() && node.is_none() {
            return None;
        }
        let key = [
            track.as_ref().map_or(0, |t| Arc::as_ptr(t) as usize),
            node.as_ref().map_or(0, |n| Arc::as_ptr(n) as usize),
        ];
        let extra = self
            .extras
            .entry(key)
            .or_insert_with(|| Arc::new(Extra { track, node }));
        Some(extra.clone())
    }
}

/// Files under `dir`, relative to it, sorted; what a track upload sends.
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>, TemplateError> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), TemplateError> {
        let here = root.join(rel);
        let read_err = |source| TemplateError::Read {
            path: here.clone(),
            source,
        };
        let mut entries: Vec<_> = std::fs::read_dir(&here)
            .map_err(read_err)?
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = rel.join(entry.file_name());
            if entry.file_type().map_err(read_err)?.is_dir() {
                walk(root, &rel, out)?;
            } else {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out)?;
    Ok(out)
}

/// What the templates see. Each serializes to its cache key too, so everything a template reads
/// must be in its context.
#[derive(Serialize)]
struct UserDataContext {
    max_runtime_minutes: u64,
    #[serde(serialize_with = "humantime_text")]
    max_runtime: std::time::Duration,
}

#[derive(Serialize)]
struct InstallContext<'a> {
    remote_dir: &'a str,
    venv_name: VenvName<'a>,
    rally_version: &'a str,
    needs_java: bool,
    needs_git: bool,
    /// On a baked image the venv is there already: the script says so.
    baked: bool,
}

#[derive(Serialize)]
struct RaceContext<'a> {
    remote_dir: &'a str,
    venv_name: VenvName<'a>,
    esrally_args: &'a [String],
    track_path: bool,
    needs_java: bool,
    race_timeout: Option<u64>,
    /// The test races a cluster of its own, whose addresses `race.sh start` is given.
    cluster: bool,
    /// The race runs from more than one load driver, each under Rally's daemon.
    load_drivers: bool,
}

fn humantime_text<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// The venv's directory name for a Rally version: `rally-2.13.0`, slugged when the version
/// holds characters a path should not.
struct VenvName<'a>(&'a str);

impl std::fmt::Display for VenvName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let version = self.0;
        if version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            write!(f, "rally-{version}")
        } else {
            write!(f, "rally-{}", crate::address::slug(version))
        }
    }
}

impl Serialize for VenvName<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A test's track or car parameters as the JSON file Rally reads.
pub fn params_json(params: &SortedMap<serde_json::Value>) -> String {
    serde_json::to_string_pretty(params).expect("JSON values serialize")
}

/// Feeds `value`'s pretty JSON (the bytes [`Settings::canonical_json`] and [`params_json`]
/// give) into `hash`, length-prefixed so that no two different sequences hash alike; `text` is
/// a reused buffer.
fn hash_json(hash: &mut Sha256, text: &mut Vec<u8>, value: &impl Serialize) {
    text.clear();
    serde_json::to_writer_pretty(&mut *text, value).expect("JSON values serialize");
    hash.update((text.len() as u64).to_le_bytes());
    hash.update(&text[..]);
}

/// The `esrally race` arguments fixed by the settings. Track and car parameters go through
/// JSON files beside the script, so Rally receives them exactly as written, with no shell or
/// comma-splitting in between.
///
/// A test with a cluster races it as one that already runs (`--pipeline=benchmark-only`,
/// its nodes' addresses given to `race.sh start`): what makes the nodes (car, distribution,
/// JDK) went to `node.sh` instead.
fn esrally_args(s: &Settings) -> Vec<String> {
    let mut args = Vec::new();
    if let TrackSource::Named(track) = &s.track {
        args.push(format!("--track={track}"));
    }
    let own_nodes = s.cluster.is_some();
    let node_side = |value: &Option<Text>| if own_nodes { None } else { value.clone() };
    let optional = [
        ("--challenge", s.challenge.clone()),
        ("--car", node_side(&s.car)),
        ("--distribution-version", node_side(&s.distribution_version)),
        (
            "--pipeline",
            if own_nodes {
                Some("benchmark-only".into())
            } else {
                s.pipeline.clone()
            },
        ),
        ("--runtime-jdk", node_side(&s.runtime_jdk)),
        ("--client-options", s.client_options.clone()),
    ];
    for (flag, value) in optional {
        if let Some(v) = value {
            args.push(format!("{flag}={v}"));
        }
    }
    if !s.target_hosts.is_empty() {
        args.push(format!("--target-hosts={}", s.target_hosts.join(",")));
    }
    if !s.track_params.is_empty() {
        args.push("--track-params=track-params.json".into());
    }
    if !s.car_params.is_empty() && !own_nodes {
        args.push("--car-params=car-params.json".into());
    }
    if s.offline {
        args.push("--offline".into());
    }
    args.extend(s.rally_args.iter().map(|a| a.to_string()));
    args
}

/// `esrally race ...` as a person would read it, for state, plans and diffs.
pub fn race_command(s: &Settings) -> Result<String, TemplateError> {
    let mut words = vec!["esrally".to_owned(), "race".to_owned()];
    words.extend(esrally_args(s));
    if matches!(s.track, TrackSource::Path(_)) {
        words.push("--track-path=<uploaded track>".into());
    }
    if s.cluster.is_some() {
        words.push("--target-hosts=<the cluster's nodes>".into());
    }
    if s.several_load_drivers() {
        words.push("--load-driver-hosts=<the load drivers>".into());
    }
    let quoted: Vec<String> = words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Result<_, _>>()?;
    Ok(quoted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    fn test_from(extra: &str) -> Test {
        let text = format!(
            r#"
version = 1
name = "w"
[defaults]
region = "us-east-1"
ami = "ami-1"
instance_type = "m5.large"
rally_config = "conditional_install_items/rally_csv.ini"
max_runtime = "90m"
[[suite]]
name = "s"
[[suite.test]]
{extra}
"#
        );
        Plan::parse(Path::new("t.toml"), &text)
            .unwrap()
            .suites
            .remove(0)
            .tests
            .remove(0)
    }

    #[test]
    fn rendered_templates() {
        let test = test_from(
            r#"name = "t"
track = "geonames"
challenge = "append-no-conflicts"
car = "4gheap"
distribution_version = "6.8.0"
track_params = { bulk_size = 5000 }"#,
        );
        let a = Renderer::new().render(&test).unwrap();
        insta::assert_snapshot!("user_data", a.user_data());
        insta::assert_snapshot!("install_with_java", a.install());
        insta::assert_snapshot!("race", a.race());
        insta::assert_snapshot!("race_command", race_command(&test.settings).unwrap());
    }

    #[test]
    fn java_is_installed_only_when_rally_provisions_an_es_without_a_bundled_jdk() {
        for (extra, java) in [
            (r#"distribution_version = "6.8.0""#, true),
            (r#"distribution_version = "8.15.0""#, false),
            (
                "pipeline = \"benchmark-only\"\ntarget_hosts = [\"h:9200\"]",
                false,
            ),
            (r#"runtime_jdk = "17""#, true),
        ] {
            let test = test_from(&format!("name = \"t\"\ntrack = \"x\"\n{extra}"));
            let artifacts = Renderer::new().render(&test).unwrap();
            assert_eq!(
                artifacts.install().contains("installing a JDK"),
                java,
                "{extra}"
            );
        }
    }

    /// A plan's map of artifacts holds one per test: the parts they share stay shared, text
    /// and sha256 behind one pointer each, so that an entry is a few words.
    #[test]
    fn artifacts_point_at_their_shared_parts() {
        assert!(std::mem::size_of::<Artifacts>() <= 64);
    }

    #[test]
    fn hostile_values_reach_the_race_command_literally() {
        let evil = "x'\"; $(touch /tmp/pwned) `id`\nnext";
        let test = test_from(&format!(
            "name = {name}\ntrack = {evil_t}\nchallenge = {evil_t}\ntrack_params = {{ p = {evil_t} }}",
            name = toml_str("t $(x)"),
            evil_t = toml_str(evil),
        ));
        let a = Renderer::new().render(&test).unwrap();
        // Run the rendered argument list through a real shell that only prints its arguments.
        let script = a
            .race()
            .split("args=(race")
            .nth(1)
            .unwrap()
            .split("\n  )")
            .next()
            .unwrap();
        let printed = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "run_dir=R; race_id=I; args=({script}\n); printf '%s\\0' \"${{args[@]}}\""
            ))
            .output()
            .unwrap();
        let args: Vec<String> = String::from_utf8(printed.stdout)
            .unwrap()
            .split('\0')
            .map(str::to_owned)
            .collect();
        assert!(args.contains(&format!("--track={evil}")), "{args:?}");
        assert!(args.contains(&format!("--challenge={evil}")), "{args:?}");
        assert!(!Path::new("/tmp/pwned").exists());
        let params: serde_json::Value =
            serde_json::from_str(&params_json(&test.settings.track_params)).unwrap();
        assert_eq!(params["p"], evil);
    }

    fn toml_str(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    /// A test with a cluster of its own: one of the hash corpus's keys, beside race settings
    /// that belong to the nodes.
    fn cluster_test(cluster: &str, extra: &str) -> Test {
        test_from(&format!(
            "name = \"t\"\ntrack = \"geonames\"\ncar = \"8gheap\"\ncar_params = {{ a = 1 }}\n\
             distribution_version = \"8.14.0\"\nruntime_jdk = \"17\"\n\
             cluster = {{ nodes = 3, car = \"4gheap\", car_params = {{ heap = \"4g\" }}, \
             plugins = [\"analysis-icu\", \"repository-s3\"], plugin_params = {{ icu = true }}, \
             distribution_version = \"8.15.0\", distribution_repository = \"release\", \
             runtime_jdk = \"bundled\"{cluster} }}\n{extra}"
        ))
    }

    /// A cluster's nodes get what makes Elasticsearch, the race gets the rest and the nodes'
    /// addresses as an argument; `race_command` says so.
    #[test]
    fn a_cluster_test_renders_node_sh_and_races_its_nodes() {
        let test = cluster_test(", team_path = \"rally-teams\"", "");
        let a = Renderer::new().render(&test).unwrap();
        insta::assert_snapshot!("node", a.node().unwrap());
        insta::assert_snapshot!("race_cluster", a.race());
        insta::assert_snapshot!(
            "race_command_cluster",
            race_command(&test.settings).unwrap()
        );
        assert!(a.inputs(&test.settings).contains_key("node.sh"));
        assert!(
            !a.install().contains("installing a JDK"),
            "the JDK is bundled"
        );
        // The node's plan values reach esrally as single words, whatever they hold.
        let start = a.node().unwrap().split("install=(install").nth(1).unwrap();
        let words = start.split("\n    )").next().unwrap();
        let printed = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "flags=(); name=N ip=I masters=M seeds=S id=D team_path=T\n\
                 args=({words}\n); printf '%s\\0' \"${{args[@]}}\""
            ))
            .output()
            .unwrap();
        let args: Vec<String> = String::from_utf8(printed.stdout)
            .unwrap()
            .split_terminator('\0')
            .map(str::to_owned)
            .collect();
        assert_eq!(
            args,
            [
                "--car=4gheap",
                "--distribution-version=8.15.0",
                "--distribution-repository=release",
                "--car-params={\"heap\":\"4g\"}",
                "--elasticsearch-plugins=analysis-icu,repository-s3",
                "--plugin-params={\"icu\":true}",
                "--runtime-jdk=bundled",
                "--http-port=9200",
                "--cluster-name=rally-benchmark",
                "--team-path=T",
                "--node-name=N",
                "--network-host=I",
                "--master-nodes=M",
                "--seed-hosts=S",
                "--installation-id=D",
            ]
        );
        // Without a team directory, Rally clones its team repository unless offline.
        let git = |cluster: &str, extra: &str| {
            let test = test_from(&format!(
                "name = \"t\"\ntrack_path = \"tests/fixtures/tracks/tiny\"\n\
                 cluster = {{ nodes = 1, distribution_version = \"8.15.0\"{cluster} }}\n{extra}"
            ));
            let a = Renderer::new().render(&test).unwrap();
            a.install().contains("installing git")
        };
        assert!(git("", ""));
        assert!(!git(", team_path = \"/teams\"", ""));
        assert!(!git("", "offline = true"));
        let offline = Renderer::new()
            .render(&cluster_test("", "offline = true"))
            .unwrap();
        assert!(
            offline
                .node()
                .unwrap()
                .contains("flags=(--quiet --offline)")
        );
    }

    /// A JDK is installed where a node needs one, and the node is pointed at it rather than
    /// at the one its distribution bundles.
    #[test]
    fn a_node_runs_on_the_bundled_jdk_unless_it_needs_another() {
        for (cluster, java, jdk) in [
            (
                r#"distribution_version = "8.15.0""#,
                false,
                "--runtime-jdk=bundled",
            ),
            (r#"distribution_version = "6.8.0""#, true, ""),
            (r#"runtime_jdk = "17""#, true, "--runtime-jdk=17"),
        ] {
            let test = test_from(&format!(
                "name = \"t\"\ntrack = \"x\"\ndistribution_version = \"8.15.0\"\n\
                 cluster = {{ nodes = 1, {cluster} }}"
            ));
            let a = Renderer::new().render(&test).unwrap();
            let node = a.node().unwrap();
            assert_eq!(a.install().contains("installing a JDK"), java, "{cluster}");
            assert_eq!(node.contains("export JAVA_HOME"), java, "{cluster}");
            assert!(
                !a.race().contains("JAVA_HOME"),
                "{cluster}: the driver needs none"
            );
            assert_eq!(node.contains("--runtime-jdk"), !jdk.is_empty(), "{cluster}");
            assert!(node.contains(jdk), "{cluster}");
        }
    }

    /// Only a test with a cluster has node.sh, and its hash takes node.sh in: a changed
    /// cluster key is a re-run.
    #[test]
    fn only_a_cluster_test_has_node_sh_and_hashes_it() {
        let r = Renderer::new();
        let mut r = r.session();
        let plain = r.render(&test_from("name = \"t\"\ntrack = \"x\"")).unwrap();
        assert!(plain.node().is_none());
        assert!(
            !plain
                .inputs(&test_from("name = \"t\"\ntrack = \"x\"").settings)
                .contains_key("node.sh")
        );
        let one = r.render(&cluster_test("", "")).unwrap();
        let mut other = cluster_test("", "");
        other.settings.cluster.as_mut().unwrap().car = Some("16gheap".into());
        let other = r.render(&other).unwrap();
        assert_ne!(one.node(), other.node());
        assert_ne!(one.config_hash, other.config_hash);
        assert_eq!(one.race(), other.race());
        // Two tests of one cluster share its node.sh.
        let again = r.render(&cluster_test("", "")).unwrap();
        assert!(Arc::ptr_eq(
            one.extra.as_ref().unwrap(),
            again.extra.as_ref().unwrap()
        ));
    }

    /// What node.sh does without esrally: refuse what it cannot use, and answer a stop, a
    /// collect and a tail of a node that was never installed as a resumed apply needs.
    #[test]
    fn node_sh_refuses_bad_arguments_and_stops_a_node_never_installed() {
        let home = tempfile::tempdir().unwrap();
        let remote = home.path().join("rally");
        std::fs::create_dir(&remote).unwrap();
        let mut test = cluster_test("", "");
        test.settings.remote_dir = remote.to_str().unwrap().into();
        let a = Renderer::new().render(&test).unwrap();
        let script = home.path().join("node.sh");
        std::fs::write(&script, a.node().unwrap()).unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("bash")
                .arg(&script)
                .args(args)
                .env("HOME", home.path())
                .output()
                .unwrap();
            (
                out.status.code(),
                out.stdout,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (code, _, err) = run(&["start", "n", "10.0.0.1"]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("usage: node.sh start NAME"), "{err}");
        let (code, _, err) = run(&["start", "../n", "ip", "m", "s", "id", "race"]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("node name '../n' cannot name a directory"),
            "{err}"
        );
        let (code, _, err) = run(&["stop", ".."]);
        assert_eq!(code, Some(2), "{err}");
        let (code, _, err) = run(&["bogus"]);
        assert_eq!(code, Some(2), "{err}");
        let (code, out, err) = run(&["stop", "never"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(String::from_utf8_lossy(&out).contains("never installed"));
        let (code, out, err) = run(&["collect", "never", "node-0"]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(tar::Archive::new(&out[..]).entries().unwrap().count(), 0);
        let (code, out, err) = run(&["tail", "never", "node-0", "5"]);
        assert_eq!((code, out.len()), (Some(0), 0), "{err}");
        // Its Rally home is its run directory, whose distributions are the machine's.
        let cache = home.path().join(".rally/benchmarks/distributions");
        assert_eq!(
            std::fs::read_link(&cache).unwrap(),
            remote.join("distributions")
        );
        assert!(cache.is_dir(), "{}", cache.display());
    }

    /// A cluster test's race needs its nodes' addresses.
    #[test]
    fn a_cluster_race_refuses_to_start_without_its_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let a = Renderer::new().render(&cluster_test("", "")).unwrap();
        let script = dir.path().join("race.sh");
        std::fs::write(&script, a.race()).unwrap();
        let out = std::process::Command::new("bash")
            .arg(&script)
            .args(["start", "race-1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("TARGET_HOSTS"));
        assert!(!dir.path().join("race.id").exists(), "nothing started");
    }

    #[test]
    fn the_hash_follows_settings_and_files_but_not_secrets() {
        let base = test_from("name = \"t\"\ntrack = \"x\"");
        let r = Renderer::new();
        let h = r.render(&base).unwrap().config_hash;
        assert_eq!(
            h,
            Renderer::new().render(&base).unwrap().config_hash,
            "stable"
        );
        let mut changed = base.clone();
        changed.settings.car = Some("8gheap".into());
        assert_ne!(h, r.render(&changed).unwrap().config_hash);
    }

    /// The config hash takes in the settings' canonical JSON, which state has always recorded
    /// with sorted keys: writing the struct straight out must give exactly that text, or every
    /// recorded result would read as changed.
    #[test]
    fn the_canonical_form_is_the_sorted_json_tree() {
        let plan = Plan::load(Path::new("plans/example.toml")).unwrap();
        let every_provider = [
            test_from(
                "name = \"t\"\ntrack = \"x\"\nprovider = \"ssh\"\nhosts = [\"h:2\"]\nssh_key = \"k\"\nssh_known_hosts = \"kh\"\nssh_user = \"u\"",
            ),
            test_from("name = \"t\"\ntrack = \"x\"\nprovider = \"local\""),
            test_from(
                "name = \"t\"\ntrack = \"x\"\nmarket = \"spot\"\nmax_price = \"0.1\"\non_interruption = \"spot\"",
            ),
        ];
        for test in plan.tests().chain(&every_provider) {
            let tree = serde_json::to_value(&test.settings).unwrap();
            assert_eq!(
                test.settings.canonical_json(),
                serde_json::to_string_pretty(&tree).unwrap(),
                "{}",
                test.address
            );
        }
    }

    /// Every recorded result carries its config hash; a rallyctl that hashed the same test
    /// differently would re-run them all. This hash may change only with a deliberate change
    /// of what a test runs (a template, the settings' meaning), never with a refactoring. (This
    /// value is also what rallyctl computed before settings were serialized straight from the
    /// struct.)
    #[test]
    fn the_config_hash_of_a_fixed_test_is_pinned() {
        let test = test_from(
            "name = \"t\"\ntrack = \"geonames\"\ncar = \"4gheap\"\ntags = { team = \"perf\" }\ntrack_params = { bulk_size = 5000, ids = [1, 2] }",
        );
        let hash = Renderer::new().render(&test).unwrap().config_hash;
        assert_eq!(
            hash,
            "b05034e035a1b587ae28357aaf35b7818fb9237a1f337da122ac9fc85a206f36"
        );
    }

    #[test]
    fn metrics_store_values_come_from_the_environment_only_when_applying() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("es.ini");
        std::fs::write(&ini, "host = {{ env(\"RALLYCTL_TEST_UNSET_HOST\") }}\nport = {{ env(\"RALLYCTL_TEST_UNSET_PORT\", \"9200\") }}\n").unwrap();
        let mut test = test_from("name = \"t\"\ntrack = \"x\"");
        test.settings.rally_config =
            crate::plan::RallyConfig::File(crate::plan::LocalPath::in_project(&ini, dir.path()));
        let r = Renderer::new();
        assert_eq!(
            r.rally_ini(&test.settings, Secrets::Placeholders).unwrap(),
            "host = ${RALLYCTL_TEST_UNSET_HOST}\nport = ${RALLYCTL_TEST_UNSET_PORT}\n"
        );
        let err = r
            .rally_ini(&test.settings, Secrets::FromEnv)
            .unwrap_err()
            .to_string();
        assert!(err.contains("RALLYCTL_TEST_UNSET_HOST is not set"), "{err}");
    }
}
