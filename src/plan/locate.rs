//! Placing problems found outside the plan file (in a provider's account) where the file
//! writes the value, so that they read like problems found in the file.

use std::path::Path;

use super::diag::{PlanErrors, Sink};
use super::document::format_of;
use super::load::get;
use super::source::{Entry, Format, Kind, Node};

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
