//! Validation: the spanned tree of a plan file to a typed [`Plan`], every problem collected.
//!
//! A plan may hold ten thousand tests, so the hot path allocates only what the [`Plan`] keeps:
//! a value is made once where it is written (a default once for every test that inherits it),
//! and a problem's field path (`suite[3].test[7].track`) is only formatted when there is a
//! problem to report.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::Path;

use super::diag::{PlanErrors, Sink};
use super::document::format_of;
use super::merge::{empty, overlay, provider_of, sets_timeouts};
use super::settings::{
    self, CLUSTER_KEYS, Decl, SETTINGS, Written, applies, at, setting, shares_machine,
};
use super::source::{Entry, Format, Kind, Node};
use super::values::{Raw, Val};
use super::{
    PLAN_VERSION, Plan, ProviderKind, Repeat, RepeatOn, Settings, Suite, Test, Text, VariantOf,
};
use crate::FastHash;
use crate::address::{self, Address};

const TOP_KEYS: &[&str] = &["version", "name", "defaults", "suite", "backend", "notify"];
const S3_KEYS: &[&str] = &[
    "bucket", "prefix", "region", "endpoint", "profile", "role_arn",
];

const NAME_THE_VARIABLE: &str = "name the environment variable that holds the URL instead";

/// Why `name` cannot name an environment variable (`[A-Za-z_][A-Za-z0-9_]*`); a URL put there
/// is not repeated, as it holds a secret.
fn env_var_problem(name: &str) -> Option<String> {
    let mut bytes = name.bytes();
    let valid = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        None
    } else if name.contains("://") {
        Some(format!(
            "this is a URL, not the name of an environment variable, and a plan is committed and copied into state: {NAME_THE_VARIABLE}"
        ))
    } else if name.is_empty() {
        Some("the environment variable's name is empty".to_owned())
    } else {
        Some(format!(
            "`{}` is no environment variable name: letters, digits and underscores, not starting with a digit",
            name.escape_debug()
        ))
    }
}

/// A suite's bound on tests at once; more would be a typo, not a fleet.
const MAX_PARALLELISM: i64 = 1000;
/// From this many tests on, suites are read on all cores.
const PARALLEL_FROM_TESTS: usize = 512;

/// Where a value sits in the plan, e.g. `suite[0].test[1].track`: a chain on the stack,
/// formatted only when a problem is reported.
#[derive(Clone, Copy)]
pub(super) struct Field<'p> {
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
    pub(super) const ROOT: Field<'static> = Field {
        parent: None,
        part: Part::Root,
    };

    pub(super) fn key<'c>(&'c self, key: &'c str) -> Field<'c> {
        Field {
            parent: Some(self),
            part: Part::Key(key),
        }
    }

    pub(super) fn index(&self, index: usize) -> Field<'_> {
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

/// The top-level `name` of a plan, checked as a workspace name, its `[backend]` and `[notify]`;
/// nothing else is read or checked (no template, track or other setting), so a plan broken
/// elsewhere still names its workspace, where it lives and whom it tells.
pub fn head(path: &Path, text: &str) -> Result<super::Head, PlanErrors> {
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
                dir: Path::new(""),
            };
            match &root.kind {
                Kind::Table(entries) => {
                    let backend = get(entries, "backend")
                        .and_then(|e| loader.backend(&e.value, Field::ROOT.key("backend")));
                    let notify = get(entries, "notify")
                        .and_then(|e| loader.notify(&e.value, Field::ROOT.key("notify")));
                    match get(entries, "name") {
                        Some(e) => loader
                            .name(&e.value, Field::ROOT.key("name"))
                            .map(|n| (n.to_owned(), backend, notify)),
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
        Some((name, backend, notify)) if sink.diagnostics.is_empty() => Ok(super::Head {
            name,
            backend,
            notify,
        }),
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
            dir: path.parent().unwrap_or(Path::new("")),
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
        Some(mut plan) if sink.diagnostics.is_empty() => {
            sink.warnings.sort_by_key(|d| (d.line, d.column));
            plan.warnings = sink.warnings;
            Ok(plan)
        }
        _ => Err(PlanErrors {
            file: path.to_owned(),
            diagnostics: sink.diagnostics,
        }),
    }
}

pub(super) struct Loader<'s, 'a> {
    pub(super) sink: &'s mut Sink<'a>,
    pub(super) format: Format,
    /// The project root paths are recorded relative to ([`LocalPath`]).
    pub(super) root: &'s Path,
    /// The plan file's directory, which relative paths in it are read from.
    pub(super) dir: &'s Path,
}

pub(super) fn get<'n>(entries: &'n [Entry<'n>], key: &str) -> Option<&'n Entry<'n>> {
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
        let defaults = match get(entries, "defaults") {
            Some(e) => {
                let defaults =
                    self.settings_table(&e.value, defaults_field, &[], ProviderKind::default());
                self.stall_check(&empty(), true, &defaults, &e.value.span, defaults_field);
                defaults
            }
            None => empty(),
        };

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
        // A broken `[notify]` is in the sink, which fails the plan.
        let notify = get(entries, "notify").and_then(|e| self.notify(&e.value, top.key("notify")));
        Some(Plan {
            name: name?.to_owned(),
            source: path.to_owned(),
            root: self.root.to_owned(),
            suites,
            backend,
            notify,
            warnings: Vec::new(),
        })
    }

    /// `[notify]`: `url_env = "VAR"`, the environment variable holding the webhook URL. The URL
    /// itself is refused, and never repeated in a message: it holds the webhook's secret token.
    fn notify(&mut self, node: &'n Node<'n>, field: Field<'_>) -> Option<super::NotifyConfig> {
        let entries = self.table(node, field)?;
        self.duplicate_keys(entries, field);
        for e in entries.iter().filter(|e| e.key != "url_env") {
            if e.key == "url" {
                self.sink.error_with_help(
                    &e.key_span,
                    field.key("url"),
                    format!("a webhook URL holds its secret token, and a plan is committed and copied into state: {NAME_THE_VARIABLE}"),
                    "set url_env = \"VAR\", and VAR to the URL where rallyctl runs (a CI secret)",
                );
            } else {
                self.unknown_key(e, field, &["url_env"], &[]);
            }
        }
        let Some(e) = get(entries, "url_env") else {
            // A `url` was told to be a variable's name instead.
            if get(entries, "url").is_none() {
                self.sink.error_with_help(
                    &node.span,
                    field,
                    "[notify] names no environment variable",
                    "set url_env = \"VAR\", VAR holding the webhook URL where rallyctl runs, or remove [notify]",
                );
            }
            return None;
        };
        let field = field.key("url_env");
        let name = self.string(&e.value, field)?;
        match env_var_problem(name) {
            Some(problem) => {
                self.sink.error(&e.value.span, field, problem);
                None
            }
            None => Some(super::NotifyConfig {
                url_env: name.to_owned(),
            }),
        }
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
        let (root, dir) = (self.root, self.dir);
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
                            dir,
                        };
                        let suites: Vec<_> = (part.iter().enumerate())
                            .map(|(i, node)| {
                                loader.suite(node, field.index(c * chunk + i), defaults)
                            })
                            .collect();
                        (suites, sink.diagnostics, sink.warnings)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("validation does not panic"))
                .collect()
        });
        let mut suites = Vec::with_capacity(items.len());
        for (part, diagnostics, warnings) in parts {
            suites.extend(part);
            self.sink.diagnostics.extend(diagnostics);
            self.sink.warnings.extend(warnings);
        }
        suites
    }

    fn suite(&mut self, node: &'n Node<'n>, field: Field<'_>, defaults: &Raw) -> Option<Suite> {
        let entries = self.table(node, field)?;
        self.unknown_keys(entries, field, &settings::suite_keys());
        self.duplicate_keys(entries, field);
        let name = match get(entries, "name") {
            Some(e) => self.name(&e.value, field.key("name")),
            None => {
                self.sink
                    .error(&node.span, field, "missing required key `name`");
                None
            }
        };
        // The suite's tests share its name in their addresses.
        let suite_name = name.map(Text::from);
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
        // The settings a suite sets are its tests' defaults, over [defaults]; a value written
        // wrong is reported here, once, and its tests inherit [defaults]'.
        let mut own = empty();
        for (i, d) in SETTINGS.iter().enumerate() {
            if d.written == Written::SuiteToo
                && let Some(e) = get(entries, d.name)
            {
                own[i] = self.value(&e.value, field.key(d.name), d.ty);
            }
        }
        let suite_defaults;
        let defaults = if own.iter().all(Option::is_none) {
            defaults
        } else {
            suite_defaults = overlay(defaults, own);
            &suite_defaults
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
        let (reported, warned) = (self.sink.diagnostics.len(), self.sink.warnings.len());
        let expanded = super::matrix::expand(test_nodes, &tests_field, &settings::NAMES, self.sink);
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
                let own = sets_timeouts(&raw);
                let parent = overlay(defaults, raw);
                self.stall_check(defaults, own, &parent, &test_node.span, test_field);
                let read = self.variants(&variants.value, test_node, test_field, &parent);
                if let (Some(suite), Some(test)) = (&suite_name, test_name) {
                    for (variant, settings, repeat) in read {
                        let full = format!("{test}-{variant}");
                        let Ok(address) = Address::new(suite.clone(), full.as_str()) else {
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
                            variant: Some(Box::new(VariantOf {
                                test: test.to_owned(),
                                name: variant,
                            })),
                            matrix: matrix.clone(),
                            reuse: false,
                        });
                    }
                }
                continue;
            }
            let merged = self.merge(defaults, raw, &test_node.span, entries, test_field);
            if let (Some(suite), Some(test), Some((settings, repeat, reuse))) =
                (&suite_name, test_name, merged)
            {
                // Warm reuse hands on one machine; a cluster's nodes and drivers are given
                // back with their test. Refused rather than ignored, so no plan reads as
                // reusing what it does not.
                if reuse && settings.cluster.is_some() {
                    let written = ["reuse_instances", "cluster"]
                        .into_iter()
                        .find_map(|key| get(entries, key).map(|e| &e.key_span));
                    self.sink.error_with_help(
                        written.unwrap_or(&test_node.span),
                        test_field.key("reuse_instances"),
                        "`reuse_instances = true` with `cluster`: warm reuse hands on a single machine, and a cluster's nodes and load drivers are given back when its test ends",
                        "set `reuse_instances = false` on this test or its suite, or leave out `cluster`",
                    );
                    continue;
                }
                let address = Address::new(suite.clone(), test).expect("names were checked");
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
        super::matrix::dedup(&mut self.sink.warnings, warned);
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
            let merged = self.merge(parent, raw, &item.span, entries, field);
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
                    let Decl { name, ty, .. } = SETTINGS[i];
                    raw[i] = Some(
                        self.value(&entry.value, field.key(name), ty)
                            .unwrap_or(Val::Invalid),
                    );
                    found.push((i, entry));
                }
                None if extra.contains(&key) => {}
                None => self.unknown_key(entry, field, &settings::NAMES, extra),
            }
        }
        let provider = match raw[const { at("provider") }] {
            Some(Val::Provider(p)) => p,
            _ => inherited,
        };
        for (i, entry) in found {
            if !applies(i, provider) {
                self.foreign_key(entry, i, provider, field);
            } else if i == const { at("cluster") }
                && let Kind::Table(keys) = &entry.value.kind
            {
                self.foreign_cluster_keys(keys, provider, field.key("cluster"));
            }
        }
        raw
    }

    /// Reports the keys of a `cluster` table that `provider` does not read, saying what its
    /// nodes are instead.
    fn foreign_cluster_keys(
        &mut self,
        keys: &[Entry<'_>],
        provider: ProviderKind,
        field: Field<'_>,
    ) {
        for e in keys {
            let Some(&(key, _, readers)) = CLUSTER_KEYS.iter().find(|k| k.0 == e.key) else {
                continue;
            };
            if readers.reads(provider) {
                continue;
            }
            let nodes = match provider {
                ProviderKind::Aws => "its nodes are EC2 instances of `cluster.instance_type`",
                ProviderKind::Ssh => {
                    "its nodes are hosts leased from `cluster.hosts`, else from `hosts`"
                }
                ProviderKind::Local => "its nodes are processes on this machine",
            };
            let owner = if readers.reads(ProviderKind::Aws) {
                "aws"
            } else {
                "ssh"
            };
            self.sink.error_with_help(
                &e.key_span,
                field.key(key),
                format!("`cluster.{key}` does not apply to provider = \"{provider}\": {nodes}"),
                format!("`cluster.{key}` is read by provider = \"{owner}\" only: remove it here, or set that provider"),
            );
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
        let key = SETTINGS[i].name;
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

    pub(super) fn string(&mut self, node: &'n Node<'n>, field: Field<'_>) -> Option<&'n str> {
        match &node.kind {
            Kind::String(s) => Some(s),
            other => self.expected(&node.span, field, "a string", other),
        }
    }

    pub(super) fn table(
        &mut self,
        node: &'n Node<'n>,
        field: Field<'_>,
    ) -> Option<&'n [Entry<'n>]> {
        self.sink.table(node, field)
    }

    pub(super) fn array(&mut self, node: &'n Node<'n>, field: Field<'_>) -> Option<&'n [Node<'n>]> {
        match &node.kind {
            Kind::Array(items) => Some(items),
            other => self.expected(&node.span, field, "an array", other),
        }
    }

    pub(super) fn expected<T>(
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
    pub(super) fn unknown_key(
        &mut self,
        e: &Entry<'_>,
        field: Field<'_>,
        allowed: &[&str],
        extra: &[&str],
    ) {
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
    pub(super) fn duplicate_keys(&mut self, entries: &[Entry<'_>], field: Field<'_>) {
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

#[cfg(test)]
mod tests {
    use super::super::Settings;
    use super::super::{MachineSettings, Market, MarketKind, SpotOptions, Subnets, TrackSource};
    use super::*;

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

    /// `results_valid_for` is inherited from the defaults and a suite, overridden by a test,
    /// shared by a test's variants, and may be a matrix axis; no test hashes it.
    #[test]
    fn results_valid_for_is_inherited_and_an_axis_and_not_hashed() {
        let plan = Plan::parse(
            Path::new("r.toml"),
            "version = 1\nname = \"r\"\n[defaults]\nprovider = \"local\"\ntrack = \"x\"\nresults_valid_for = \"7d\"\n\
             [[suite]]\nname = \"s\"\nresults_valid_for = \"20h\"\n[[suite.test]]\nname = \"suite\"\n\
             [[suite.test]]\nname = \"own\"\nresults_valid_for = \"90m\"\n\
             [[suite.test]]\nname = \"v\"\n[[suite.test.variant]]\nname = \"a\"\ncar = \"a\"\n[[suite.test.variant]]\nname = \"b\"\ncar = \"b\"\n\
             [[suite.test]]\nname = \"m\"\n[suite.test.matrix]\nresults_valid_for = [\"1h\", \"2h\"]\n\
             [[suite]]\nname = \"d\"\n[[suite.test]]\nname = \"defaults\"\n",
        )
        .unwrap();
        let read: Vec<(String, Option<u64>)> = plan
            .tests()
            .map(|t| {
                (
                    t.address.to_string(),
                    t.repeat.valid_for.map(|d| d.as_secs() / 60),
                )
            })
            .collect();
        let expected = [
            ("s.suite", 1200),
            ("s.own", 90),
            ("s.v-a", 1200),
            ("s.v-b", 1200),
            ("s.m-1h", 60),
            ("s.m-2h", 120),
            ("d.defaults", 7 * 1440),
        ]
        .map(|(a, minutes)| (a.to_owned(), Some(minutes)));
        assert_eq!(read, expected);
        let json = |name: &str| {
            let t = plan.test(&name.parse().unwrap()).unwrap();
            t.settings.canonical_json()
        };
        for name in ["s.own", "s.m-1h", "s.m-2h", "d.defaults"] {
            assert_eq!(json(name), json("s.suite"), "{name}");
        }
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

    /// Warm reuse of a cluster test is refused, not ignored: where the test writes
    /// `reuse_instances`, else its `cluster`, else at the test that inherits both; once per
    /// test of a matrix; its variants, which take no machine from another test, are not.
    #[test]
    fn warm_reuse_of_a_cluster_test_is_refused_where_it_is_written() {
        let text = "version = 1\nname = \"c\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-0a\"\n\
             instance_type = \"c5.large\"\ntrack = \"x\"\ndistribution_version = \"8.15.0\"\nreuse_instances = true\n\
             [[suite]]\nname = \"s\"\n\
             [[suite.test]]\nname = \"own\"\ncluster = { nodes = 2 }\nreuse_instances = true\n\
             [[suite.test]]\nname = \"inherits\"\ncluster = { nodes = 2 }\n\
             [[suite.test]]\nname = \"off\"\ncluster = { nodes = 2 }\nreuse_instances = false\n\
             [[suite.test]]\nname = \"single\"\n\
             [[suite.test]]\nname = \"m\"\nmatrix = { car = [\"a\", \"b\"] }\ncluster = { nodes = 2 }\n\
             [[suite.test]]\nname = \"v\"\ncluster = { nodes = 2 }\n\
             [[suite.test.variant]]\nname = \"a\"\ncar = \"a\"\n[[suite.test.variant]]\nname = \"b\"\ncar = \"b\"\n\
             [[suite]]\nname = \"whole\"\ncluster = { nodes = 2 }\n[[suite.test]]\nname = \"t\"\n";
        let errors = Plan::parse(Path::new("c.toml"), text).unwrap_err();
        let found: Vec<(&str, usize, usize)> = (errors.diagnostics.iter())
            .map(|d| (d.field.as_str(), d.line, d.column))
            .collect();
        assert_eq!(
            found,
            [
                ("suite[0].test[0].reuse_instances", 15, 1),
                ("suite[0].test[1].reuse_instances", 18, 1),
                ("suite[0].test[4].reuse_instances", 28, 1),
                ("suite[1].test[0].reuse_instances", 41, 1),
            ],
            "{errors}"
        );
        assert!(
            errors.diagnostics[0]
                .message
                .contains("warm reuse hands on a single machine"),
            "{errors}"
        );
        let without = text.replace("reuse_instances = true", "reuse_instances = false");
        let plan = Plan::parse(Path::new("c.toml"), &without).unwrap();
        assert!(plan.tests().all(|t| !t.reuse));
    }

    /// A cluster is a typed setting of `[defaults]`, a suite or a test, a test's table merged
    /// key by key over the one it inherits; its nodes' instance type is the test's unless it
    /// names one; it reaches the canonical JSON only when set, and `load_drivers = 1` hashes as
    /// if unset.
    #[test]
    fn a_cluster_is_inherited_key_by_key_and_hashed_only_when_set() {
        let plan = Plan::parse(
            Path::new("c.toml"),
            "version = 1\nname = \"c\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-0a\"\n\
             instance_type = \"c5.large\"\ntrack = \"x\"\ndistribution_version = \"8.15.0\"\ncluster = { nodes = 3, car = \"4gheap\", car_params = { heap = \"4g\" } }\n\
             [[suite]]\nname = \"s\"\nload_drivers = 2\ncluster = { instance_type = \"r6i.xlarge\" }\n\
             [[suite.test]]\nname = \"inherits\"\n\
             [[suite.test]]\nname = \"five\"\ncluster = { nodes = 5, car_params = { gc = \"g1\" } }\nload_drivers = 1\n\
             [[suite]]\nname = \"plain\"\n[[suite.test]]\nname = \"own\"\ncluster = { nodes = 1 }\n\
             [[suite.test]]\nname = \"one\"\ncluster = { nodes = 1 }\nload_drivers = 1\n",
        )
        .unwrap();
        let tests: Vec<&Test> = plan.tests().collect();
        let cluster = |i: usize| tests[i].settings.cluster.as_ref().unwrap();
        assert_eq!(cluster(0).nodes.get(), 3);
        assert_eq!(cluster(0).instance_type.as_deref(), Some("r6i.xlarge"));
        assert_eq!(tests[0].settings.load_drivers.get(), 2);
        assert_eq!(tests[0].settings.machines(), 5);
        assert_eq!(cluster(1).nodes.get(), 5);
        assert_eq!(cluster(1).car.as_deref(), Some("4gheap"));
        let params: Vec<&str> = cluster(1).car_params.iter().map(|(k, _)| k).collect();
        assert_eq!(params, ["gc", "heap"]);
        assert_eq!(tests[1].settings.load_drivers.get(), 1);
        // Without one of its own, the nodes are of the test's instance type.
        assert_eq!(cluster(2).instance_type.as_deref(), Some("c5.large"));
        let json = |i: usize| tests[i].settings.canonical_json();
        assert!(json(0).contains("\"load_drivers\": 2"), "{}", json(0));
        assert_eq!(json(2), json(3), "load_drivers = 1 hashes as unset");
        assert!(!json(2).contains("load_drivers"), "{}", json(2));
        // The canonical JSON reads back as the settings it was made from.
        let back: Settings = serde_json::from_str(&json(1)).unwrap();
        assert_eq!(back.cluster, tests[1].settings.cluster);
        assert_eq!(back.load_drivers, tests[1].settings.load_drivers);

        let without = Plan::parse(
            Path::new("c.toml"),
            "version = 1\nname = \"c\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-0a\"\n\
             instance_type = \"c5.large\"\ntrack = \"x\"\ndistribution_version = \"8.15.0\"\n[[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"t\"\nload_drivers = 1\n",
        )
        .unwrap();
        let plain = without.suites[0].tests[0].settings.canonical_json();
        assert!(
            !plain.contains("cluster") && !plain.contains("load_drivers"),
            "{plain}"
        );
        assert_ne!(plain, json(2));
    }

    /// `placement_group` is a suite's or a test's; it reaches the canonical JSON and the
    /// topology only when set, and reads back; a cluster test without it hashes as before.
    #[test]
    fn a_placement_group_is_inherited_and_hashed_only_when_set() {
        let plan = Plan::parse(
            Path::new("c.toml"),
            "version = 1\nname = \"c\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-0a\"\n\
             instance_type = \"c5.large\"\ntrack = \"x\"\ndistribution_version = \"8.15.0\"\ncluster = { nodes = 3 }\n\
             [[suite]]\nname = \"placed\"\nplacement_group = \"cluster\"\n[[suite.test]]\nname = \"t\"\n\
             [[suite]]\nname = \"plain\"\n[[suite.test]]\nname = \"t\"\n",
        )
        .unwrap();
        let tests: Vec<&Test> = plan.tests().collect();
        let aws = |i: usize| match &tests[i].settings.machine {
            MachineSettings::Aws(a) => a.placement_group,
            _ => panic!("an aws test"),
        };
        assert_eq!(aws(0), Some(super::super::Placement::Cluster));
        assert_eq!(aws(1), None);
        let json = |i: usize| tests[i].settings.canonical_json();
        assert!(
            json(0).contains("\"placement_group\": \"cluster\""),
            "{}",
            json(0)
        );
        assert!(!json(1).contains("placement"), "{}", json(1));
        let back: Settings = serde_json::from_str(&json(0)).unwrap();
        assert_eq!(back.machine, tests[0].settings.machine);
        assert_eq!(
            tests[0].settings.topology().as_deref(),
            Some("3 × c5.large, 1 load driver × c5.large, in a cluster placement group")
        );
        assert_eq!(
            tests[1].settings.topology().as_deref(),
            Some("3 × c5.large, 1 load driver × c5.large")
        );
    }

    /// A cluster's nodes are the test's Elasticsearch: the test's car, car parameters, release
    /// and JDK are theirs where the cluster names none, the cluster's own win where it does;
    /// so a release written once in `[defaults]` serves clusters too.
    #[test]
    fn a_cluster_takes_what_makes_elasticsearch_from_its_test_unless_it_says_its_own() {
        let plan = Plan::parse(
            Path::new("c.toml"),
            "version = 1\nname = \"c\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-0a\"\n\
             instance_type = \"c5.large\"\ntrack = \"x\"\ndistribution_version = \"8.14.0\"\n\
             car = \"8gheap\"\ncar_params = { heap = \"8g\" }\nruntime_jdk = \"17\"\n\
             [[suite]]\nname = \"s\"\n\
             [[suite.test]]\nname = \"inherits\"\ncluster = { nodes = 2 }\n\
             [[suite.test]]\nname = \"own\"\ncluster = { nodes = 2, car = \"4gheap\", \
             car_params = { gc = \"g1\" }, distribution_version = \"8.15.0\", runtime_jdk = \"bundled\" }\n",
        )
        .unwrap();
        let made = |i: usize| {
            let c = plan.suites[0].tests[i].settings.cluster.as_deref().unwrap();
            let params: Vec<&str> = c.car_params.iter().map(|(k, _)| k).collect();
            (
                c.car.as_deref().unwrap().to_owned(),
                params.join(","),
                c.distribution_version.as_deref().unwrap().to_owned(),
                c.runtime_jdk.as_deref().unwrap().to_owned(),
            )
        };
        let tuple = |car: &str, params: &str, version: &str, jdk: &str| {
            (car.into(), params.into(), version.into(), jdk.into())
        };
        assert_eq!(made(0), tuple("8gheap", "heap", "8.14.0", "17"));
        assert_eq!(made(1), tuple("4gheap", "gc", "8.15.0", "bundled"));
    }

    /// `cluster` and `load_drivers` are settings, so a matrix takes them as axes, a cluster
    /// axis merged over the test's table as any table-valued axis is.
    #[test]
    fn a_matrix_takes_clusters_and_load_drivers_as_axes() {
        let plan = Plan::parse(
            Path::new("m.toml"),
            "version = 1\nname = \"m\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-0a\"\n\
             instance_type = \"c5.large\"\ntrack = \"x\"\ndistribution_version = \"8.15.0\"\n[[suite]]\nname = \"s\"\n\
             [[suite.test]]\nname = \"t\"\ncluster = { nodes = 1, instance_type = \"r6i.xlarge\" }\n\
             [suite.test.matrix]\ncluster = [{ nodes = 1 }, { nodes = 3 }]\nload_drivers = [1, 2]\n",
        )
        .unwrap();
        let topologies: Vec<(u32, &str, u32)> = plan
            .tests()
            .map(|t| {
                let c = t.settings.cluster.as_ref().unwrap();
                (
                    c.nodes.get(),
                    c.instance_type.as_deref().unwrap(),
                    t.settings.load_drivers.get(),
                )
            })
            .collect();
        assert_eq!(
            topologies,
            [
                (1, "r6i.xlarge", 1),
                (1, "r6i.xlarge", 2),
                (3, "r6i.xlarge", 1),
                (3, "r6i.xlarge", 2)
            ]
        );
    }

    /// An ssh test's cluster takes its nodes from `cluster.hosts` and its drivers from `hosts`;
    /// what a test inherits for another provider is left out, not its mistake.
    #[test]
    fn an_ssh_cluster_leases_its_nodes_from_its_own_pool() {
        let plan = Plan::parse(
            Path::new("p.toml"),
            "version = 1\nname = \"p\"\n[defaults]\nprovider = \"ssh\"\nhosts = [\"d1\", \"d2\"]\ntrack = \"x\"\ndistribution_version = \"8.15.0\"\n\
             cluster = { nodes = 2, hosts = [\"n1\", \"n2\"] }\nload_drivers = 2\n[[suite]]\nname = \"s\"\n\
             [[suite.test]]\nname = \"leased\"\n\
             [[suite.test]]\nname = \"here\"\nprovider = \"local\"\nload_drivers = 1\n",
        )
        .unwrap();
        let [leased, here] = [0, 1].map(|i| &plan.suites[0].tests[i].settings);
        let hosts: Vec<&str> = (leased.cluster.as_ref().unwrap().hosts.iter())
            .map(|h| &**h)
            .collect();
        assert_eq!(hosts, ["n1", "n2"]);
        let local = here.cluster.as_ref().unwrap();
        assert!(local.hosts.is_empty() && local.instance_type.is_none());
        assert_eq!(here.machines(), 3);
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
