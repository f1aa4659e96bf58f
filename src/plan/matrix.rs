//! Test matrices: a test's `matrix` table expanded into one test per combination of its axes,
//! with `include` and `exclude` as GitHub Actions reads them.
//!
//! Expansion works on the spanned tree, before validation: each combination is the test's own
//! table with the axes' values written into it (a table-valued axis merged over the test's
//! table), so it is read, checked and hashed exactly as the same test written out by hand, and
//! a problem in a value is reported where the value is written. A combination's name is the
//! test's and its values' (`index-m5.large-8.14.0-bulk_size-1000`), never its position, so a
//! value added to an axis leaves every other combination's address and hash as they were.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::ops::Range;

use super::MatrixOf;
use super::diag::{Diagnostic, Sink};
use super::source::{Entry, Kind, Node};
use crate::FastHash;
use crate::address;

/// The most tests one matrix makes: more is a typo in an axis, not a benchmark.
pub const MAX_COMBINATIONS: usize = 10_000;
/// The most combinations the axes may make before `exclude`: beyond this, telling what the
/// excludes leave would take longer than any plan should.
const MAX_PRODUCT: usize = 100 * MAX_COMBINATIONS;

/// One test of a suite as the loader reads it: a test as written, or one combination of a
/// test's matrix (its table without `matrix`, the combination's values written in).
pub struct Expanded<'t, 'n> {
    /// The test's index among the suite's tests as written.
    pub index: usize,
    pub node: Cow<'t, Node<'n>>,
    /// A combination's name, which the test's name alone would not be.
    pub name: Option<String>,
    pub matrix: Option<MatrixOf>,
}

/// The suite's tests (`field` is where they are, `suite[0].test`), each test with a matrix
/// expanded into its combinations; `settings` are the keys an axis may name.
pub fn expand<'t, 'n>(
    tests: &'t [Node<'n>],
    field: &dyn fmt::Display,
    settings: &[&str],
    sink: &mut Sink<'_>,
) -> Vec<Expanded<'t, 'n>> {
    let mut out = Vec::with_capacity(tests.len());
    for (index, node) in tests.iter().enumerate() {
        let with_matrix = match &node.kind {
            Kind::Table(entries) => {
                (entries.iter().position(|e| e.key == "matrix")).map(|at| (entries, at))
            }
            _ => None,
        };
        let Some((entries, at)) = with_matrix else {
            out.push(Expanded {
                index,
                node: Cow::Borrowed(node),
                name: None,
                matrix: None,
            });
            continue;
        };
        let field = Place(format!("{field}[{index}].matrix"), 0);
        let mut test = entries.clone();
        let matrix = test.remove(at);
        let base = match entries
            .iter()
            .find(|e| e.key == "name")
            .map(|e| &e.value.kind)
        {
            Some(Kind::String(name)) => Some(&**name),
            _ => None,
        };
        let reported = sink.diagnostics.len();
        let read = Matrix::read(&matrix.value, &field, settings, sink);
        let combinations = read
            .as_ref()
            .map(|m| m.combinations(&matrix.value, &field, sink));
        match combinations {
            Some(Some(combinations)) if !combinations.is_empty() => {
                let count = combinations.len();
                // Each name and the combination that has it, to say where a second one differs.
                let mut names = HashMap::with_capacity_and_hasher(count, FastHash::default());
                let (mut unnamed, mut twice) = (0, 0);
                for (k, c) in combinations.iter().enumerate() {
                    let suffix = c.suffix();
                    let name = base.map(|b| format!("{b}-{suffix}"));
                    if let Some(name) = &name
                        && let Err(e) = address::check_test_name(name)
                    {
                        unnamed += 1;
                        if unnamed == 1 {
                            sink.error(
                                &c.values[0].value.span,
                                &field,
                                format!(
                                    "`{}` (the test's name and a combination's values) cannot form an address: {e}",
                                    name.escape_debug()
                                ),
                            );
                        }
                        continue;
                    }
                    if let Some(&first) = names.get(&suffix) {
                        twice += 1;
                        if twice == 1 {
                            let first: &Combination<'_, '_> = &combinations[first];
                            sink.error_with_help(
                                c.differing(first).unwrap_or(&matrix.value.span),
                                &field,
                                format!(
                                    "two combinations are test `{}`",
                                    name.as_deref().unwrap_or(&suffix)
                                ),
                                "a combination's name is made of its values: make them differ",
                            );
                        }
                        continue;
                    }
                    out.push(Expanded {
                        index,
                        node: Cow::Owned(Node {
                            span: node.span.clone(),
                            kind: Kind::Table(c.written_over(&test)),
                        }),
                        name,
                        matrix: base.map(|b| MatrixOf {
                            test: b.to_owned(),
                            values: (c.values.iter())
                                .map(|v| (v.key.into(), inline(v.value)))
                                .collect(),
                            combinations: count,
                        }),
                    });
                    names.insert(suffix, k);
                }
                for (n, what) in [
                    (unnamed, "cannot form an address"),
                    (twice, "have the name of another"),
                ] {
                    if n > 1 {
                        sink.error(
                            &matrix.value.span,
                            &field,
                            format!("{} more combinations {what}", n - 1),
                        );
                    }
                }
            }
            Some(Some(_)) => {
                if sink.diagnostics.len() == reported {
                    sink.error_with_help(
                        &matrix.value.span,
                        &field,
                        "`exclude` leaves no combination: the matrix makes no test",
                        "exclude fewer, or remove the test",
                    );
                }
            }
            // Too many: the test is left out, the count said.
            Some(None) => {}
            // The matrix could not be read: the test's own keys are still checked.
            _ => out.push(Expanded {
                index,
                node: Cow::Owned(Node {
                    span: node.span.clone(),
                    kind: Kind::Table(test),
                }),
                name: None,
                matrix: None,
            }),
        }
    }
    out
}

/// The tables of a test's matrix that hold settings' values (its axes, as arrays, and its
/// `include` entries), for problems found in the account to be placed where a value is written.
pub fn settings_tables<'t, 'n>(
    test: &'t [Entry<'n>],
    field: &str,
    tables: &mut Vec<(String, &'t [Entry<'n>])>,
) {
    let Some(Kind::Table(matrix)) = test
        .iter()
        .find(|e| e.key == "matrix")
        .map(|e| &e.value.kind)
    else {
        return;
    };
    tables.push((format!("{field}.matrix"), matrix));
    if let Some(Kind::Array(include)) = matrix
        .iter()
        .find(|e| e.key == "include")
        .map(|e| &e.value.kind)
    {
        for (k, entry) in include.iter().enumerate() {
            if let Kind::Table(entry) = &entry.kind {
                tables.push((format!("{field}.matrix.include[{k}]"), entry));
            }
        }
    }
}

/// Drops the diagnostics (or warnings) from `from` on that repeat one before them: each
/// combination of a matrix is read whole, so a mistake in the test's own table, or in a value
/// several combinations share, is found once per combination.
pub fn dedup(diagnostics: &mut Vec<Diagnostic>, from: usize) {
    let tail = diagnostics.split_off(from);
    let mut seen = HashSet::with_capacity(tail.len());
    for d in tail {
        if seen.insert((d.line, d.column, d.field.clone(), d.message.clone())) {
            diagnostics.push(d);
        }
    }
}

/// A field path formatted once, for the diagnostics of one matrix, and the index it ends with.
struct Place(String, usize);

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Place {
    fn key(&self, key: &str) -> Place {
        Place(format!("{}.{key}", self.0), 0)
    }

    fn index(&self, i: usize) -> Place {
        Place(format!("{}[{i}]", self.0), i)
    }
}

struct Axis<'a, 'n> {
    key: &'a str,
    key_span: &'a Range<usize>,
    values: &'a [Node<'n>],
}

/// An `include` or `exclude` entry: its keys and values; `on` is, for each key that is an
/// axis, the axis and the index of the equal value there (`None`: no value of the axis is).
struct Extra<'a, 'n> {
    entry: &'a Node<'n>,
    /// Its place in its list.
    index: usize,
    values: Vec<Value<'a, 'n>>,
    on: Vec<(usize, Option<usize>)>,
}

#[derive(Clone, Copy)]
struct Value<'a, 'n> {
    key: &'a str,
    key_span: &'a Range<usize>,
    value: &'a Node<'n>,
}

struct Matrix<'a, 'n> {
    axes: Vec<Axis<'a, 'n>>,
    include: Vec<Extra<'a, 'n>>,
    exclude: Vec<Extra<'a, 'n>>,
}

/// One combination: the values in its name (an original combination's axes, or all of an
/// include entry that made a new one), then those include entries added.
struct Combination<'a, 'n> {
    values: Vec<Value<'a, 'n>>,
    named: usize,
}

impl<'a, 'n> Matrix<'a, 'n> {
    /// The axes and entries of a matrix, each mistake reported where it is written; what is
    /// wrong is left out. `None` when nothing is left to expand.
    fn read(
        node: &'a Node<'n>,
        field: &Place,
        settings: &[&str],
        sink: &mut Sink<'_>,
    ) -> Option<Matrix<'a, 'n>> {
        let entries = sink.table(node, field)?;
        let mut matrix = Matrix {
            axes: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
        };
        let reported = sink.diagnostics.len();
        let mut seen = HashSet::new();
        let mut entry_lists = Vec::new();
        for e in entries {
            let f = field.key(&e.key);
            if !seen.insert(&*e.key) {
                sink.error(&e.key_span, &f, format!("duplicate key `{}`", e.key));
                continue;
            }
            if e.key == "include" || e.key == "exclude" {
                entry_lists.push(e);
                continue;
            }
            if !settings.contains(&&*e.key) {
                let help = match super::diag::closest(&e.key, settings) {
                    Some(k) => format!("an axis is a setting a test may set: did you mean `{k}`?"),
                    None => "an axis is a setting a test may set, e.g. `instance_type`".into(),
                };
                sink.error_with_help(
                    &e.key_span,
                    &f,
                    format!("`{}` is not a setting, so it cannot be an axis", e.key),
                    help,
                );
                continue;
            }
            match &e.value.kind {
                Kind::Array(values) if values.is_empty() => sink.error_with_help(
                    &e.value.span,
                    &f,
                    format!("the axis `{}` is empty: it would make no test", e.key),
                    "list at least one value, or remove the axis",
                ),
                Kind::Array(values) => matrix.axes.push(Axis {
                    key: &e.key,
                    key_span: &e.key_span,
                    values,
                }),
                other => sink.error_with_help(
                    &e.value.span,
                    &f,
                    format!("expected an array, found {}", other.describe()),
                    format!("an axis lists the values of `{}` to combine", e.key),
                ),
            }
        }
        for e in entry_lists {
            let f = field.key(&e.key);
            let exclude = e.key == "exclude";
            let Kind::Array(items) = &e.value.kind else {
                sink.error(
                    &e.value.span,
                    &f,
                    format!(
                        "expected an array of tables, found {}",
                        e.value.kind.describe()
                    ),
                );
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                if let Some(extra) = matrix.extra(item, &f.index(i), exclude, settings, sink) {
                    match exclude {
                        true => matrix.exclude.push(extra),
                        false => matrix.include.push(extra),
                    }
                }
            }
        }
        if matrix.axes.is_empty() && matrix.include.is_empty() {
            if sink.diagnostics.len() == reported {
                sink.error_with_help(
                    &node.span,
                    field,
                    "the matrix has no axes",
                    "name a setting and the values to combine, e.g. instance_type = [\"m5.large\", \"c5.large\"]",
                );
            }
            return None;
        }
        Some(matrix)
    }

    /// One `include` or `exclude` entry: a table of settings (of axes, for `exclude`).
    fn extra(
        &self,
        item: &'a Node<'n>,
        field: &Place,
        exclude: bool,
        settings: &[&str],
        sink: &mut Sink<'_>,
    ) -> Option<Extra<'a, 'n>> {
        let entries = sink.table(item, field)?;
        if entries.is_empty() {
            let what = match exclude {
                true => "an empty exclude entry would exclude every combination",
                false => "an empty include entry adds nothing",
            };
            sink.error(&item.span, field, what);
            return None;
        }
        let mut extra = Extra {
            entry: item,
            index: field.1,
            values: Vec::with_capacity(entries.len()),
            on: Vec::new(),
        };
        let mut ok = true;
        for e in entries {
            let axis = self.axes.iter().position(|a| a.key == e.key);
            if exclude && axis.is_none() {
                sink.error(
                    &e.key_span,
                    field.key(&e.key),
                    format!(
                        "`{}` is not an axis of this matrix, so no combination has it to exclude",
                        e.key
                    ),
                );
                ok = false;
                continue;
            }
            if !settings.contains(&&*e.key) {
                sink.error(
                    &e.key_span,
                    field.key(&e.key),
                    format!("`{}` is not a setting", e.key),
                );
                ok = false;
                continue;
            }
            if let Some(a) = axis {
                let found = self.axes[a].values.iter().position(|v| same(v, &e.value));
                extra.on.push((a, found));
            }
            extra.values.push(Value {
                key: &e.key,
                key_span: &e.key_span,
                value: &e.value,
            });
        }
        ok.then_some(extra)
    }

    /// Whether the original combination `picked` (a value index per axis) has the values of
    /// `extra` on every axis it names.
    fn matches(extra: &Extra<'_, '_>, picked: &[usize]) -> bool {
        extra.on.iter().all(|&(a, v)| v == Some(picked[a]))
    }

    /// Every combination, in order: the axes' product (the last axis varying fastest) less the
    /// excluded, extended by the include entries that add to them, then those that match
    /// none. `None` when there are too many.
    fn combinations(
        &self,
        node: &Node<'_>,
        field: &Place,
        sink: &mut Sink<'_>,
    ) -> Option<Vec<Combination<'a, 'n>>> {
        let product = self
            .axes
            .iter()
            .try_fold(1usize, |n, a| n.checked_mul(a.values.len()));
        let too_many = |sink: &mut Sink<'_>, what: String| {
            sink.error_with_help(
                &node.span,
                field,
                what,
                "split it into several tests, or exclude what you do not need",
            );
            None
        };
        let product = match product {
            Some(n) if n <= MAX_PRODUCT => n,
            _ => {
                return too_many(
                    sink,
                    format!(
                        "its axes make {} combinations; a matrix makes at most {MAX_COMBINATIONS} tests",
                        product.map_or("more than 2^64".into(), |n| n.to_string())
                    ),
                );
            }
        };
        let mut matched = vec![false; self.exclude.len()];
        let mut kept: Vec<Combination<'a, 'n>> = Vec::new();
        // Each original combination's value index per axis, which the includes match.
        let mut indices: Vec<Vec<usize>> = Vec::new();
        if !self.axes.is_empty() {
            let mut picked = vec![0; self.axes.len()];
            for _ in 0..product {
                let mut excluded = false;
                for (x, m) in self.exclude.iter().zip(&mut matched) {
                    if Self::matches(x, &picked) {
                        *m = true;
                        excluded = true;
                    }
                }
                if !excluded {
                    if kept.len() == MAX_COMBINATIONS {
                        return too_many(
                            sink,
                            format!(
                                "the matrix makes more than {MAX_COMBINATIONS} tests, the most one matrix may make"
                            ),
                        );
                    }
                    indices.push(picked.clone());
                    kept.push(Combination {
                        values: (self.axes.iter().zip(&picked))
                            .map(|(a, &v)| Value {
                                key: a.key,
                                key_span: a.key_span,
                                value: &a.values[v],
                            })
                            .collect(),
                        named: self.axes.len(),
                    });
                }
                // The odometer: the last axis turns fastest.
                for (a, p) in self.axes.iter().zip(&mut picked).rev() {
                    *p += 1;
                    if *p < a.values.len() {
                        break;
                    }
                    *p = 0;
                }
            }
        }
        for (x, m) in self.exclude.iter().zip(matched) {
            if !m {
                sink.error_with_help(
                    &x.entry.span,
                    field.key("exclude").index(x.index),
                    "this exclude entry matches no combination",
                    "each value it names must be one of its axis' values",
                );
            }
        }
        let originals = kept.len();
        for include in &self.include {
            let mut added = false;
            for (c, picked) in kept[..originals].iter_mut().zip(&indices) {
                if !Self::matches(include, picked) {
                    continue;
                }
                added = true;
                for v in &include.values {
                    match c.values.iter_mut().find(|w| w.key == v.key) {
                        // An axis value it matched, or a value an earlier include added.
                        Some(w) => *w = *v,
                        None => c.values.push(*v),
                    }
                }
            }
            if !added {
                if kept.len() == MAX_COMBINATIONS {
                    return too_many(
                        sink,
                        format!(
                            "the matrix makes more than {MAX_COMBINATIONS} tests, the most one matrix may make"
                        ),
                    );
                }
                // In the axes' order, as the other combinations name them.
                let mut values = include.values.clone();
                values.sort_by_key(|v| {
                    self.axes
                        .iter()
                        .position(|a| a.key == v.key)
                        .unwrap_or(usize::MAX)
                });
                kept.push(Combination {
                    named: values.len(),
                    values,
                });
            }
        }
        Some(kept)
    }
}

impl<'a, 'n> Combination<'a, 'n> {
    /// What the combination adds to the test's name: its named values, in order.
    fn suffix(&self) -> String {
        let mut out = String::new();
        for (i, v) in self.values[..self.named].iter().enumerate() {
            if i > 0 {
                out.push('-');
            }
            match &v.value.kind {
                Kind::String(_) | Kind::Table(_) => flat(v.value, &mut out),
                _ => {
                    out.push_str(v.key);
                    out.push('-');
                    flat(v.value, &mut out);
                }
            }
        }
        out
    }

    /// Where this combination's named values differ from `other`'s of the same name.
    fn differing(&self, other: &Combination<'_, '_>) -> Option<&'a Range<usize>> {
        let values = &self.values[..self.named];
        let theirs = &other.values[..other.named];
        values
            .iter()
            .rev()
            .find(|v| {
                !theirs
                    .iter()
                    .any(|w| w.key == v.key && std::ptr::eq(w.value, v.value))
            })
            .map(|v| &v.value.span)
    }

    /// The test's table with this combination's values written in: a table value merged over
    /// the test's own table of that key, any other value in its place.
    fn written_over(&self, test: &[Entry<'n>]) -> Vec<Entry<'n>> {
        let mut out = test.to_vec();
        for v in &self.values {
            let entry = Entry {
                key: Cow::Owned(v.key.to_owned()),
                key_span: v.key_span.clone(),
                value: v.value.clone(),
            };
            match out.iter_mut().find(|e| e.key == v.key) {
                Some(own) => {
                    let merged = match (&own.value.kind, &v.value.kind) {
                        (Kind::Table(base), Kind::Table(over)) => {
                            let mut table: Vec<Entry<'n>> = base
                                .iter()
                                .filter(|b| !over.iter().any(|o| o.key == b.key))
                                .cloned()
                                .collect();
                            table.extend(over.iter().cloned());
                            Some(Node {
                                span: v.value.span.clone(),
                                kind: Kind::Table(table),
                            })
                        }
                        _ => None,
                    };
                    *own = entry;
                    if let Some(merged) = merged {
                        own.value = merged;
                    }
                }
                None => out.push(entry),
            }
        }
        out
    }
}

/// Values alike whatever their position: tables compare key by key, in any order.
fn same(a: &Node<'_>, b: &Node<'_>) -> bool {
    match (&a.kind, &b.kind) {
        (Kind::String(x), Kind::String(y)) => x == y,
        (Kind::Integer(x), Kind::Integer(y)) => x == y,
        (Kind::Float(x), Kind::Float(y)) => x == y,
        (Kind::Bool(x), Kind::Bool(y)) => x == y,
        (Kind::Other(x), Kind::Other(y)) => x == y,
        (Kind::Array(x), Kind::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Kind::Table(x), Kind::Table(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|e| y.iter().any(|f| e.key == f.key && same(&e.value, &f.value)))
        }
        _ => false,
    }
}

/// A value as a name holds it: words joined by `-`, a table's keys before their values.
fn flat(node: &Node<'_>, out: &mut String) {
    match &node.kind {
        Kind::String(s) => out.push_str(s),
        Kind::Integer(n) => {
            let _ = write!(out, "{n}");
        }
        Kind::Float(f) => {
            let _ = write!(out, "{f}");
        }
        Kind::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Kind::Other(what) => out.push_str(what),
        Kind::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push('-');
                }
                flat(item, out);
            }
        }
        Kind::Table(entries) => {
            for (i, e) in entries.iter().enumerate() {
                if i > 0 {
                    out.push('-');
                }
                out.push_str(&e.key);
                out.push('-');
                flat(&e.value, out);
            }
        }
    }
}

/// A value as a TOML inline value, for `plan` to show what a combination sets.
fn inline(node: &Node<'_>) -> String {
    let mut out = String::new();
    write_inline(node, &mut out);
    out
}

fn write_inline(node: &Node<'_>, out: &mut String) {
    let quoted = |s: &str| serde_json::to_string(s).expect("strings serialize");
    match &node.kind {
        Kind::String(s) => out.push_str(&quoted(s)),
        Kind::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_inline(item, out);
            }
            out.push(']');
        }
        Kind::Table(entries) => {
            out.push('{');
            for (i, e) in entries.iter().enumerate() {
                out.push_str(if i > 0 { ", " } else { " " });
                let bare = !e.key.is_empty()
                    && e.key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                match bare {
                    true => out.push_str(&e.key),
                    false => out.push_str(&quoted(&e.key)),
                }
                out.push_str(" = ");
                write_inline(&e.value, out);
            }
            out.push_str(if entries.is_empty() { "}" } else { " }" });
        }
        _ => flat(node, out),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::plan::{Plan, Test};
    use crate::templates::Renderer;

    const HEAD: &str = "version = 1\nname = \"m\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-0a\"\ninstance_type = \"t3.small\"\ntrack = \"geonames\"\n[[suite]]\nname = \"s\"\n";

    fn parse(tests: &str) -> Result<Plan, crate::plan::PlanErrors> {
        Plan::parse(Path::new("m.toml"), &format!("{HEAD}{tests}"))
    }

    fn addresses(plan: &Plan) -> Vec<String> {
        plan.tests().map(|t| t.address.to_string()).collect()
    }

    fn hashes(plan: &Plan) -> Vec<(String, String)> {
        let renderer = Renderer::new();
        plan.tests()
            .map(|t: &Test| {
                let hash = renderer.render(t).unwrap().config_hash;
                (t.address.test().to_owned(), hash)
            })
            .collect()
    }

    /// Line, column, field and message of each problem.
    fn problems(tests: &str) -> Vec<String> {
        parse(tests)
            .unwrap_err()
            .diagnostics
            .iter()
            .map(|d| format!("{}:{} {}: {}", d.line, d.column, d.field, d.message))
            .collect()
    }

    const ISSUE: &str = "[[suite.test]]\nname = \"index\"\ntrack_params = { clients = 8 }\n[suite.test.matrix]\ninstance_type = [\"m5.large\", \"c5.large\", \"r5.large\"]\ndistribution_version = [\"8.14.0\", \"8.15.0\"]\ntrack_params = [{ bulk_size = 1000 }, { bulk_size = 5000 }]\nexclude = [{ instance_type = \"c5.large\", distribution_version = \"8.14.0\" }]\n";

    /// One test per combination, the last axis turning fastest, minus the excluded; a
    /// table-valued axis merges over the test's own table.
    #[test]
    fn a_matrix_makes_one_test_per_combination_less_the_excluded() {
        let plan = parse(ISSUE).unwrap();
        let names = addresses(&plan);
        assert_eq!(names.len(), 10, "{names:?}");
        assert_eq!(
            names[..3],
            [
                "s.index-m5.large-8.14.0-bulk_size-1000",
                "s.index-m5.large-8.14.0-bulk_size-5000",
                "s.index-m5.large-8.15.0-bulk_size-1000",
            ]
        );
        assert!(!names.iter().any(|n| n.contains("c5.large-8.14.0")));
        let first = plan.tests().next().unwrap();
        let params = serde_json::to_string(&first.settings.track_params).unwrap();
        assert!(
            params.contains("\"bulk_size\":1000") && params.contains("\"clients\":8"),
            "{params}"
        );
        let of = first.matrix.as_ref().unwrap();
        assert_eq!(of.test, "index");
        assert_eq!(of.combinations, 10);
        assert_eq!(
            of.values,
            [
                ("instance_type".into(), "\"m5.large\"".into()),
                ("distribution_version".into(), "\"8.14.0\"".into()),
                ("track_params".into(), "{ bulk_size = 1000 }".into()),
            ]
        );
    }

    /// Each combination hashes as the same test written out by hand, so results recorded for
    /// hand-written tests stay current once they become a matrix (apart from the names).
    #[test]
    fn a_combination_hashes_as_the_test_written_out_by_hand() {
        let matrix = parse(ISSUE).unwrap();
        let mut by_hand = String::new();
        for instance in ["m5.large", "c5.large", "r5.large"] {
            for version in ["8.14.0", "8.15.0"] {
                for bulk in [1000, 5000] {
                    if instance == "c5.large" && version == "8.14.0" {
                        continue;
                    }
                    by_hand.push_str(&format!(
                        "[[suite.test]]\nname = \"by-hand-{}\"\n\
                         instance_type = \"{instance}\"\ndistribution_version = \"{version}\"\n\
                         track_params = {{ bulk_size = {bulk}, clients = 8 }}\n",
                        by_hand.len()
                    ));
                }
            }
        }
        let by_hand = parse(&by_hand).unwrap();
        let only_hashes =
            |p: &Plan| -> Vec<String> { hashes(p).into_iter().map(|(_, h)| h).collect() };
        assert_eq!(only_hashes(&matrix), only_hashes(&by_hand));
    }

    /// A value added to an axis leaves the other combinations' names and hashes alone.
    #[test]
    fn a_value_added_to_an_axis_keeps_every_other_combination() {
        let before = hashes(&parse(ISSUE).unwrap());
        let after =
            hashes(&parse(&ISSUE.replace("\"8.15.0\"]", "\"8.15.0\", \"8.16.0\"]")).unwrap());
        assert_eq!(after.len(), 16);
        for old in &before {
            assert!(after.contains(old), "{old:?} changed");
        }
    }

    /// GitHub's rules: an include entry adds its keys to every original combination whose
    /// axis values it does not contradict (later entries overwriting what earlier ones added),
    /// else it is a combination of its own; exclude goes first, so include can add one back.
    #[test]
    fn include_extends_matching_combinations_or_adds_its_own() {
        let plan = parse(
            "[[suite.test]]\nname = \"t\"\n[suite.test.matrix]\ninstance_type = [\"m5.large\", \"c5.large\"]\ncar = [\"4g\", \"8g\"]\n\
             exclude = [{ instance_type = \"c5.large\", car = \"8g\" }]\n\
             include = [{ challenge = \"green\" }, { challenge = \"pink\", car = \"4g\" }, { instance_type = \"m5.large\", pipeline = \"p\" }, { instance_type = \"r5.large\" }, { instance_type = \"r5.large\", car = \"4g\" }, { instance_type = \"c5.large\", car = \"8g\" }]\n",
        )
        .unwrap();
        let seen: Vec<(String, String, String)> = plan
            .tests()
            .map(|t| {
                let s = &t.settings;
                (
                    t.address.test().to_owned(),
                    s.challenge.as_deref().unwrap_or("-").to_owned(),
                    s.pipeline.as_deref().unwrap_or("-").to_owned(),
                )
            })
            .collect();
        let expected = [
            ("t-m5.large-4g", "pink", "p"),
            ("t-m5.large-8g", "green", "p"),
            ("t-c5.large-4g", "pink", "-"),
            ("t-r5.large", "-", "-"),
            ("t-r5.large-4g", "-", "-"),
            ("t-c5.large-8g", "-", "-"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(seen, expected);
        let r5 = plan.tests().nth(3).unwrap();
        let crate::plan::MachineSettings::Aws(aws) = &r5.settings.machine else {
            panic!("aws")
        };
        assert_eq!(&*aws.instance_type, "r5.large");
    }

    /// Variants race within each combination; the matrix and the variant each know their test.
    #[test]
    fn variants_and_repetitions_compose_with_a_matrix() {
        let plan = parse(
            "[[suite.test]]\nname = \"t\"\nrepetitions = 3\n[suite.test.matrix]\ndistribution_version = [\"8.14.0\", \"8.15.0\"]\n\
             [[suite.test.variant]]\nname = \"a\"\ncar = \"4g\"\n[[suite.test.variant]]\nname = \"b\"\ncar = \"8g\"\n",
        )
        .unwrap();
        assert_eq!(
            addresses(&plan),
            [
                "s.t-8.14.0-a",
                "s.t-8.14.0-b",
                "s.t-8.15.0-a",
                "s.t-8.15.0-b"
            ]
        );
        let last = plan.tests().last().unwrap();
        assert_eq!(last.variant.as_ref().unwrap().test, "t-8.15.0");
        assert_eq!(last.matrix.as_ref().unwrap().test, "t");
        assert_eq!(last.repeat.count.get(), 3);
    }

    /// A JSON plan writes a matrix the same way and gets the same tests.
    #[test]
    fn a_json_matrix_is_the_toml_one() {
        let json = r#"{"version": 1, "name": "m", "defaults": {"region": "us-east-1", "ami": "ami-0a", "instance_type": "t3.small", "track": "geonames"},
            "suite": [{"name": "s", "test": [{"name": "index", "track_params": {"clients": 8}, "matrix": {
                "instance_type": ["m5.large", "c5.large", "r5.large"], "distribution_version": ["8.14.0", "8.15.0"],
                "track_params": [{"bulk_size": 1000}, {"bulk_size": 5000}],
                "exclude": [{"instance_type": "c5.large", "distribution_version": "8.14.0"}]}}]}]}"#;
        let from_json = Plan::parse(Path::new("m.json"), json).unwrap();
        assert_eq!(hashes(&from_json), hashes(&parse(ISSUE).unwrap()));
        let errors = Plan::parse(
            Path::new("m.json"),
            &json.replace("\"r5.large\"]", "\"r5.large\"], \"instance_typ\": []"),
        )
        .unwrap_err();
        assert_eq!(errors.diagnostics.len(), 1, "{errors}");
        assert_eq!(
            (errors.diagnostics[0].line, errors.diagnostics[0].column),
            (3, 72)
        );
    }

    #[test]
    fn each_mistake_is_reported_at_its_value() {
        let t = "[[suite.test]]\nname = \"t\"\n[suite.test.matrix]\n";
        assert_eq!(
            problems(&format!(
                "{t}car = []\ndistribution_version = [\"8.14.0\"]\n"
            )),
            ["13:7 suite[0].test[0].matrix.car: the axis `car` is empty: it would make no test"]
        );
        assert_eq!(
            problems(&format!(
                "{t}instance_typ = [\"m5.large\"]\ncar = [\"x\"]\n"
            )),
            [
                "13:1 suite[0].test[0].matrix.instance_typ: `instance_typ` is not a setting, so it cannot be an axis"
            ]
        );
        assert_eq!(
            problems(&format!(
                "{t}car = [\"a\", \"b\"]\nexclude = [{{ car = \"c\" }}, {{ car = \"a\" }}, {{ name = \"a\" }}]\n"
            )),
            [
                "14:12 suite[0].test[0].matrix.exclude[0]: this exclude entry matches no combination",
                "14:44 suite[0].test[0].matrix.exclude[2].name: `name` is not an axis of this matrix, so no combination has it to exclude",
            ]
        );
        assert_eq!(
            problems(&format!("{t}car = [\"a\", \"b\", \"a\"]\n")),
            ["13:18 suite[0].test[0].matrix: two combinations are test `t-a`"]
        );
        assert_eq!(
            problems(&format!("{t}car = [\"a\", \"a.b\", \"\\n\"]\n")),
            [
                "13:20 suite[0].test[0].matrix: `t-\\n` (the test's name and a combination's values) cannot form an address: a name cannot contain the control character '\\n'"
            ]
        );
        let axis = |n: usize| {
            let values: Vec<String> = (0..n).map(|i| format!("\"v{i}\"")).collect();
            values.join(", ")
        };
        assert_eq!(
            problems(&format!(
                "{t}car = [{}]\nchallenge = [{}]\n",
                axis(101),
                axis(100)
            )),
            [
                "12:1 suite[0].test[0].matrix: the matrix makes more than 10000 tests, the most one matrix may make"
            ]
        );
        // A mistake every combination shares is reported once, and a matrix that cannot be
        // read still has its test checked.
        assert_eq!(
            problems(&format!("{t}car = [\"a\", \"b\"]\nchallenge = [1, 2]\n"))
                .iter()
                .filter(|p| p.contains("expected a string"))
                .count(),
            2
        );
        assert_eq!(
            problems("[[suite.test]]\nname = \"t\"\ncar = 4\nmatrix = 5\n"),
            [
                "12:7 suite[0].test[0].car: expected a string, found an integer",
                "13:10 suite[0].test[0].matrix: expected a table, found an integer",
            ]
        );
    }

    /// The other ways a matrix is written wrong, each said where it is.
    #[test]
    fn malformed_matrices_are_refused_where_written() {
        let t = "[[suite.test]]\nname = \"t\"\n[suite.test.matrix]\n";
        let many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
        for (matrix, problem) in [
            ("", "12:1 suite[0].test[0].matrix: the matrix has no axes"),
            (
                "exclude = []",
                "12:1 suite[0].test[0].matrix: the matrix has no axes",
            ),
            (
                "car = [\"a\"]\nexclude = [{ car = \"a\" }]",
                "12:1 suite[0].test[0].matrix: `exclude` leaves no combination: the matrix makes no test",
            ),
            (
                "car = \"a\"",
                "13:7 suite[0].test[0].matrix.car: expected an array, found a string",
            ),
            (
                "car = [\"a\"]\ninclude = 1",
                "14:11 suite[0].test[0].matrix.include: expected an array of tables, found an integer",
            ),
            (
                "car = [\"a\"]\ninclude = [1]",
                "14:12 suite[0].test[0].matrix.include[0]: expected a table, found an integer",
            ),
            (
                "car = [\"a\"]\ninclude = [{}]",
                "14:12 suite[0].test[0].matrix.include[0]: an empty include entry adds nothing",
            ),
            (
                "car = [\"a\"]\nexclude = [{}]",
                "14:12 suite[0].test[0].matrix.exclude[0]: an empty exclude entry would exclude every combination",
            ),
            (
                "car = [\"a\"]\ninclude = [{ cars = \"b\" }]",
                "14:14 suite[0].test[0].matrix.include[0].cars: `cars` is not a setting",
            ),
            (
                &format!(
                    "ssh_port = [{}]\nrepetitions = [{}]",
                    many.join(", "),
                    many.join(", ")
                ),
                "12:1 suite[0].test[0].matrix: its axes make 1002001 combinations; a matrix makes at most 10000 tests",
            ),
        ] {
            let found = problems(&format!("{t}{matrix}\n"));
            assert!(found.contains(&problem.to_owned()), "{matrix}: {found:?}");
        }
        let json = r#"{"version": 1, "name": "m", "defaults": {"track": "x", "provider": "local"}, "suite": [{"name": "s", "test": [{"name": "t", "matrix": {"car": ["a"], "car": ["b"]}}]}]}"#;
        let errors = Plan::parse(Path::new("m.json"), json).unwrap_err();
        assert!(
            errors
                .to_string()
                .contains("matrix.car: duplicate key `car`"),
            "{errors}"
        );
    }

    /// A value the account does not have (found by `plan`'s check) is placed in the matrix,
    /// in an axis or an include entry, as anywhere else in the plan.
    #[test]
    fn problems_found_in_the_account_are_placed_in_the_matrix() {
        let text = format!(
            "{HEAD}[[suite.test]]\nname = \"t\"\n[suite.test.matrix]\ninstance_type = [\"m5.large\", \"x9.huge\"]\ninclude = [{{ instance_type = \"x9.huge\", car = \"a\" }}]\n"
        );
        let findings = [crate::plan::Finding {
            keys: &["instance_type"],
            value: "x9.huge",
            message: "not offered",
        }];
        let errors = crate::plan::locate::locate(Path::new("m.toml"), &text, &findings);
        let found: Vec<String> = (errors.diagnostics.iter())
            .map(|d| format!("{}:{} {}", d.line, d.column, d.field))
            .collect();
        assert_eq!(
            found,
            [
                "13:30 suite[0].test[0].matrix.instance_type[1]",
                "14:30 suite[0].test[0].matrix.include[0].instance_type",
            ]
        );
    }

    /// What the test's own table brings about is said once, not once per combination.
    #[test]
    fn a_warning_of_the_test_is_said_once() {
        let plan = parse(
            "[[suite.test]]\nname = \"t\"\nmax_runtime = \"10m\"\nstall_timeout = \"1h\"\n[suite.test.matrix]\ncar = [\"a\", \"b\", \"c\"]\n",
        )
        .unwrap();
        assert_eq!(plan.tests().count(), 3);
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    }

    /// 10,000 combinations are read in about the time 10,000 tests written out are.
    #[test]
    fn ten_thousand_combinations_expand() {
        let values = |n: usize| {
            let v: Vec<String> = (0..n).map(|i| format!("\"v{i}\"")).collect();
            v.join(", ")
        };
        let plan = parse(&format!(
            "[[suite.test]]\nname = \"t\"\n[suite.test.matrix]\ncar = [{}]\nchallenge = [{}]\n",
            values(100),
            values(100)
        ))
        .unwrap();
        assert_eq!(plan.tests().count(), 10_000);
    }
}
