//! A history as text: a line per series for people, a table in Markdown, one row per point in
//! CSV, the whole of it in JSON.

use super::news::NewChange;
use super::series::{Change, History, Series, Verdict};
use crate::results::junit::{self, Case, Outcome, Suite, Tag};
use crate::results::metrics::format_number;
use crate::results::render::{
    Format, csv_text, csv_writer, human_table, json, markdown_table, opt, pct, plain,
};

pub fn history(h: &History, format: Format) -> String {
    match format {
        Format::Json => json(h),
        Format::Csv => points_csv(h),
        Format::Markdown => {
            let rows = (h.series.iter())
                .map(|s| {
                    let changes: Vec<String> = (s.changes.iter())
                        .map(|c| format!("{}{}", change(c), elasticsearch(c)))
                        .collect();
                    vec![
                        plain(s.test.to_string()),
                        plain(&s.task),
                        plain(s.metric.label()),
                        plain(s.points.len().to_string()),
                        plain(last(s)),
                        plain(changes.join("; ")),
                    ]
                })
                .collect();
            let header = ["test", "task", "metric", "runs", "last", "changes"];
            format!("{}\n{}", heading(h), human_table(format, &header, rows))
        }
        Format::Table => {
            let mut out = heading(h);
            for s in &h.series {
                out.push_str(&format!(
                    "\n{} · {} · {}: {} run{}, last {}\n",
                    s.test,
                    s.task,
                    s.metric.label(),
                    s.points.len(),
                    if s.points.len() == 1 { "" } else { "s" },
                    last(s)
                ));
                for c in &s.changes {
                    let line = change(c);
                    let styled = match c.verdict {
                        Verdict::Regression => console::style(line).red(),
                        Verdict::Improvement => console::style(line).green(),
                    };
                    out.push_str(&format!("  {styled}\n"));
                    // On a line of its own: two versions with their commits fill one.
                    if let Some(e) = &c.elasticsearch_changed {
                        out.push_str(&format!(
                            "    with Elasticsearch {} → {}\n",
                            e.before, e.after
                        ));
                    }
                }
            }
            out
        }
    }
}

/// What was searched, and how much changed.
pub(crate) fn heading(h: &History) -> String {
    let changed = h.series.iter().filter(|s| !s.changes.is_empty()).count();
    let mut out = format!(
        "History of workspace `{}`: {} run{}, {} series, {changed} with a change \
         (p < {}, magnitude > {} %).\n",
        h.workspace,
        h.runs,
        if h.runs == 1 { "" } else { "s" },
        h.series_searched,
        h.max_pvalue,
        h.min_magnitude * 100.0
    );
    if h.series.len() < h.series_searched {
        out.push_str("Series without a change are left out: --all shows them.\n");
    }
    out
}

fn last(s: &Series) -> String {
    s.points.last().map_or_else(String::new, |p| {
        format!("{} {}", format_number(p.value), s.unit)
    })
}

/// `▲ +12.3 % improvement at run R (p=3.1e-9)`: the arrow says which way the value went.
fn change(c: &Change) -> String {
    let arrow = if c.mean_after > c.mean_before {
        "▲"
    } else {
        "▼"
    };
    let size = change_size(c);
    let verdict = c.verdict.label();
    let configuration = if c.configuration_changed {
        ", configuration changed"
    } else {
        ""
    };
    format!(
        "{arrow} {size} {verdict} at run {} (p={:.1e}){configuration}",
        c.first_after, c.p_value
    )
}

/// A change's relative size, `+12.3 %`, or `from 0`.
pub(crate) fn change_size(c: &Change) -> String {
    c.relative_change
        .map_or_else(|| "from 0".into(), |r| format!("{} %", pct(r * 100.0)))
}

/// One row per point of each series; the change columns filled at the first run after one.
fn points_csv(h: &History) -> String {
    let mut w = csv_writer();
    let header = [
        "test",
        "task",
        "metric",
        "unit",
        "run",
        "time",
        "value",
        "min",
        "max",
        "repetitions",
        "config_hash",
        "rally_version",
        "rally_revision",
        "elasticsearch_version",
        "elasticsearch_revision",
        "change",
        "relative_change",
        "p_value",
        "configuration_changed",
        "elasticsearch_changed",
    ];
    w.write_record(header).expect("writing to memory");
    for s in &h.series {
        for (i, p) in s.points.iter().enumerate() {
            let c = s.changes.iter().find(|c| c.index == i);
            w.write_record([
                s.test.to_string(),
                s.task.clone(),
                s.metric.id().to_owned(),
                s.unit.clone(),
                p.run.clone(),
                opt(p.time),
                p.value.to_string(),
                p.min.to_string(),
                p.max.to_string(),
                p.repetitions.to_string(),
                opt(p.config_hash.as_deref()),
                opt(p.versions.rally_version.as_deref()),
                opt(p.versions.rally_revision.as_deref()),
                opt(p.versions.elasticsearch_version.as_deref()),
                opt(p.versions.elasticsearch_revision.as_deref()),
                opt(c.map(|c| c.verdict.label())),
                opt(c.and_then(|c| c.relative_change)),
                opt(c.map(|c| c.p_value)),
                opt(c.map(|c| c.configuration_changed)),
                opt(c
                    .and_then(|c| c.elasticsearch_changed.as_ref())
                    .map(|e| format!("{} → {}", e.before, e.after))),
            ])
            .expect("writing to memory");
        }
    }
    csv_text(w)
}

/// The numbers behind a change on one line, as a CI system shows a failure's message:
/// `around` is how many runs the levels before and after it rest on.
fn numbers(c: &Change, unit: &str, (before, after): (usize, usize)) -> String {
    let mut out = format!(
        "{} at run {} (last before: {}): mean {} {unit} over {before} run{} before, {} {unit} \
         over {after} run{} after, change {}, p={:.1e}",
        c.verdict.label(),
        c.first_after,
        c.last_before,
        format_number(c.mean_before),
        if before == 1 { "" } else { "s" },
        format_number(c.mean_after),
        if after == 1 { "" } else { "s" },
        change_size(c),
        c.p_value,
    );
    if c.configuration_changed {
        out.push_str(", configuration changed");
    }
    out.push_str(&elasticsearch(c));
    out
}

/// A new change point on one line of a chat message: its series, then its numbers.
pub fn new_change(n: &NewChange) -> String {
    format!(
        "{} · {} · {}: {}",
        n.test,
        n.task,
        n.metric.label(),
        numbers(&n.change, &n.unit, (n.runs_before, n.runs_after))
    )
}

/// `, Elasticsearch 8.15.0 → 8.16.0` when the change came with another Elasticsearch.
fn elasticsearch(c: &Change) -> String {
    c.elasticsearch_changed
        .as_ref()
        .map_or_else(String::new, |e| {
            format!(", Elasticsearch {} → {}", e.before, e.after)
        })
}

/// The history as JUnit XML: a test case per test, task and metric; a series with a
/// regression fails with its numbers, an improvement passes with its numbers said.
pub fn junit(h: &History) -> String {
    let cases = (h.series.iter())
        .map(|s| {
            let said = |verdict| {
                let lines: Vec<String> = (0..s.changes.len())
                    .filter(|&i| s.changes[i].verdict == verdict)
                    .map(|i| numbers(&s.changes[i], &s.unit, s.runs_around(i)))
                    .collect();
                Some(lines.join("\n")).filter(|l| !l.is_empty())
            };
            Case {
                classname: s.test.to_string(),
                name: format!("{} / {}", s.task, s.metric.label()),
                outcome: said(Verdict::Regression).map(|message| Outcome {
                    tag: Tag::Failure,
                    kind: Verdict::Regression.label().into(),
                    message,
                }),
                out: said(Verdict::Improvement),
            }
        })
        .collect();
    junit::document(&Suite {
        tool: "rallyctl history",
        name: heading(h).lines().next().unwrap_or_default().to_owned(),
        properties: vec![
            ("workspace", Some(h.workspace.clone())),
            ("runs", Some(h.runs.to_string())),
            ("max_pvalue", Some(h.max_pvalue.to_string())),
            ("min_magnitude", Some(h.min_magnitude.to_string())),
        ],
        cases,
        out: vec![],
    })
}

/// The history as a CI job's summary (GitHub's step summary) in Markdown: the regressions
/// first, then the improvements, then how many series did not change.
pub fn step_summary(h: &History) -> String {
    let mut out = format!("### rallyctl history: `{}`\n\n", h.workspace);
    out.push_str(heading(h).lines().next().unwrap_or_default());
    out.push('\n');
    for (title, verdict) in [
        ("Regressions", Verdict::Regression),
        ("Improvements", Verdict::Improvement),
    ] {
        let rows: Vec<Vec<String>> = (h.series.iter())
            .flat_map(|s| {
                (s.changes.iter())
                    .filter(move |c| c.verdict == verdict)
                    .map(move |c| {
                        vec![
                            s.test.to_string(),
                            s.task.clone(),
                            s.metric.label().to_owned(),
                            format!("{}{}", change(c), elasticsearch(c)),
                        ]
                    })
            })
            .collect();
        if !rows.is_empty() {
            let table = markdown_table(&["test", "task", "metric", "change"], rows);
            out.push_str(&format!("\n#### {title}\n\n{table}"));
        }
    }
    let changed = h.series.iter().filter(|s| !s.changes.is_empty()).count();
    let steady = h.series_searched - changed;
    out.push_str(&format!("\n{steady} series without a change.\n"));
    out
}
