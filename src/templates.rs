//! What an instance runs, rendered from `templates/` (compiled into the binary) and the test's
//! rally.ini from `conditional_install_items/`, with every plan value shell-quoted.
//!
//! Rendering also fixes a test's config hash: the merged settings plus everything rendered, so
//! that a changed template, rally.ini or track file means a re-run. Values that change from run
//! to run (run id, race id) are passed to the scripts as arguments instead, and secrets come from
//! the environment only when applying, never into the hash, a plan or state.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, UndefinedBehavior, context};
use sha2::{Digest, Sha256};

use crate::plan::{Settings, Test, TrackSource};

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

/// Everything rendered for one test. Tests that render a script alike share one copy of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifacts {
    pub user_data: Arc<str>,
    pub install: Arc<str>,
    pub race: Arc<str>,
    /// The rally.ini with environment values shown as `${NAME}`; see [`Renderer::rally_ini`].
    pub rally_ini: Arc<str>,
    pub track_params: String,
    pub car_params: String,
    /// `esrally race ...` as a person would read it, for plans and diffs.
    pub race_command: String,
    pub config_hash: String,
}

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
    /// Rendered parts by template and context: a plan of many tests renders each distinct
    /// script once, whatever the number of tests sharing it.
    parts: Mutex<HashMap<String, Part>>,
    /// Track directory digests, read once however many tests share a track.
    tracks: Mutex<HashMap<PathBuf, String>>,
}

/// A rendered text and its sha256, which is what the config hash takes in.
#[derive(Clone)]
struct Part {
    text: Arc<str>,
    digest: [u8; 32],
}

impl Part {
    fn new(text: String) -> Part {
        Part {
            digest: Sha256::digest(text.as_bytes()).into(),
            text: text.into(),
        }
    }
}

const TEMPLATES: &[(&str, &str)] = &[
    ("user_data.sh", include_str!("../templates/user_data.sh.j2")),
    ("install.sh", include_str!("../templates/install.sh.j2")),
    ("race.sh", include_str!("../templates/race.sh.j2")),
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
            parts: Mutex::default(),
            tracks: Mutex::default(),
        }
    }

    /// The part cached under `key`, or `make`'s result, cached.
    fn cached(
        &self,
        key: String,
        make: impl FnOnce() -> Result<String, TemplateError>,
    ) -> Result<Part, TemplateError> {
        if let Some(part) = self.parts.lock().expect("renderer cache lock").get(&key) {
            return Ok(part.clone());
        }
        let part = Part::new(make()?);
        self.parts
            .lock()
            .expect("renderer cache lock")
            .insert(key, part.clone());
        Ok(part)
    }

    fn render_builtin(&self, name: &str, ctx: serde_json::Value) -> Result<Part, TemplateError> {
        self.cached(format!("{name}\0{ctx}"), || {
            self.env
                .get_template(name)
                .and_then(|t| t.render(minijinja::value::Serde(&ctx)))
                .map_err(|source| TemplateError::Render {
                    name: format!("templates/{name}.j2"),
                    source,
                })
        })
    }

    pub fn render(&self, test: &Test) -> Result<Artifacts, TemplateError> {
        let s = &test.settings;
        let minutes = s.max_runtime.as_secs().div_ceil(60);
        let user_data = self.render_builtin(
            "user_data.sh",
            serde_json::json!({
                "max_runtime_minutes": minutes,
                "max_runtime": humantime::format_duration(s.max_runtime).to_string(),
            }),
        )?;
        let install = self.render_builtin(
            "install.sh",
            serde_json::json!({
                "remote_dir": &s.remote_dir,
                "venv_name": venv_name(s),
                "rally_version": &s.rally_version,
                "needs_java": s.needs_java(),
                "needs_git": matches!(s.track, TrackSource::Named(_)) && !s.offline,
            }),
        )?;
        let args = esrally_args(s);
        let race = self.render_builtin(
            "race.sh",
            serde_json::json!({
                "remote_dir": &s.remote_dir,
                "venv_name": venv_name(s),
                "esrally_args": &args,
                "track_path": matches!(s.track, TrackSource::Path(_)),
                "needs_java": s.needs_java(),
            }),
        )?;
        let rally_ini = self.cached(format!("rally.ini\0{}", s.rally_config.display()), || {
            self.rally_ini(s, Secrets::Placeholders)
        })?;
        let track_params = params_json(&s.track_params);
        let car_params = params_json(&s.car_params);
        let race_command = race_command(s, &args)?;

        let mut hash = Sha256::new();
        // Every part enters length-prefixed, so no two different sequences hash alike.
        for text in [s.canonical_json().as_str(), &track_params, &car_params] {
            hash.update((text.len() as u64).to_le_bytes());
            hash.update(text.as_bytes());
        }
        for part in [&user_data, &install, &race, &rally_ini] {
            hash.update(part.digest);
        }
        if let TrackSource::Path(dir) = &s.track {
            hash.update(self.track_digest(dir)?.as_bytes());
        }
        Ok(Artifacts {
            user_data: user_data.text,
            install: install.text,
            race: race.text,
            rally_ini: rally_ini.text,
            track_params,
            car_params,
            race_command,
            config_hash: hex::encode(hash.finalize()),
        })
    }

    /// The test's rally.ini. `env("NAME")` and `env("NAME", "default")` read the environment
    /// (metrics store host, port, user); a missing variable without a default is an error.
    pub fn rally_ini(&self, s: &Settings, secrets: Secrets) -> Result<String, TemplateError> {
        let source =
            std::fs::read_to_string(&s.rally_config).map_err(|source| TemplateError::Read {
                path: s.rally_config.clone(),
                source,
            })?;
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
                name: s.rally_config.display().to_string(),
                source,
            })
    }

    /// sha256 over a track directory's relative paths and contents, in sorted order.
    fn track_digest(&self, dir: &Path) -> Result<String, TemplateError> {
        let mut tracks = self.tracks.lock().expect("renderer cache lock");
        if let Some(d) = tracks.get(dir) {
            return Ok(d.clone());
        }
        let mut hash = Sha256::new();
        for file in list_files(dir)? {
            let bytes = std::fs::read(dir.join(&file)).map_err(|source| TemplateError::Read {
                path: dir.join(&file),
                source,
            })?;
            hash.update(file.to_string_lossy().as_bytes());
            hash.update([0]);
            hash.update(Sha256::digest(&bytes));
        }
        let digest = hex::encode(hash.finalize());
        tracks.insert(dir.to_owned(), digest.clone());
        Ok(digest)
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

fn venv_name(s: &Settings) -> String {
    let version = &s.rally_version;
    if version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        format!("rally-{version}")
    } else {
        format!("rally-{}", crate::address::slug(version))
    }
}

fn params_json(params: &std::collections::BTreeMap<String, serde_json::Value>) -> String {
    serde_json::to_string_pretty(params).expect("JSON values serialize")
}

/// The `esrally race` arguments fixed by the settings. Track and car parameters go through
/// JSON files beside the script, so Rally receives them exactly as written, with no shell or
/// comma-splitting in between.
fn esrally_args(s: &Settings) -> Vec<String> {
    let mut args = Vec::new();
    if let TrackSource::Named(track) = &s.track {
        args.push(format!("--track={track}"));
    }
    let optional = [
        ("--challenge", &s.challenge),
        ("--car", &s.car),
        ("--distribution-version", &s.distribution_version),
        ("--pipeline", &s.pipeline),
        ("--runtime-jdk", &s.runtime_jdk),
        ("--client-options", &s.client_options),
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
    if !s.car_params.is_empty() {
        args.push("--car-params=car-params.json".into());
    }
    if s.offline {
        args.push("--offline".into());
    }
    args.extend(s.rally_args.iter().cloned());
    args
}

fn race_command(s: &Settings, args: &[String]) -> Result<String, TemplateError> {
    let mut words = vec!["esrally".to_owned(), "race".to_owned()];
    words.extend(args.iter().cloned());
    if matches!(s.track, TrackSource::Path(_)) {
        words.push("--track-path=<uploaded track>".into());
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
        insta::assert_snapshot!("user_data", a.user_data);
        insta::assert_snapshot!("install_with_java", a.install);
        insta::assert_snapshot!("race", a.race);
        insta::assert_snapshot!("race_command", a.race_command);
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
            let install = Renderer::new().render(&test).unwrap().install;
            assert_eq!(install.contains("installing a JDK"), java, "{extra}");
        }
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
            .race
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
        let params: serde_json::Value = serde_json::from_str(&a.track_params).unwrap();
        assert_eq!(params["p"], evil);
    }

    fn toml_str(s: &str) -> String {
        serde_json::to_string(s).unwrap()
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

    #[test]
    fn metrics_store_values_come_from_the_environment_only_when_applying() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("es.ini");
        std::fs::write(&ini, "host = {{ env(\"RALLYCTL_TEST_UNSET_HOST\") }}\nport = {{ env(\"RALLYCTL_TEST_UNSET_PORT\", \"9200\") }}\n").unwrap();
        let mut test = test_from("name = \"t\"\ntrack = \"x\"");
        test.settings.rally_config = ini;
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
