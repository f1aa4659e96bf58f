//! Results, comparisons and run lists as text: a terminal table, CSV, JSON or Markdown.
//!
//! The table and Markdown are for people and put a test's three latency percentiles in one
//! cell; CSV and JSON are for programs and keep one number per field, with units beside them.

use comfy_table::{Cell, Color, Table, presets};

use super::compare::{Comparison, Row, Verdict};
use super::load::{RunSummary, RunView, TestResult};
use super::metrics::{Metric, TaskMetrics, format_number};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Markdown,
}

/// How a cell should stand out: coloured in a terminal, classed in HTML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Bad,
    Pending,
}

/// A cell of a human-readable table, whatever it is rendered into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub text: String,
    pub tone: Option<Tone>,
}

fn plain(text: impl Into<String>) -> Field {
    Field {
        text: text.into(),
        tone: None,
    }
}

fn toned(text: impl Into<String>, tone: Option<Tone>) -> Field {
    Field {
        text: text.into(),
        tone,
    }
}

/// A terminal or Markdown table. Colour only when console's switch is on (a terminal, and
/// neither NO_COLOR nor --no-color); Markdown never.
fn human_table(format: Format, header: &[&str], rows: Vec<Vec<Field>>) -> String {
    let mut t = Table::new();
    let colour = format == Format::Table && console::colors_enabled();
    if format == Format::Markdown {
        t.load_style(presets::ASCII_MARKDOWN);
    } else {
        t.load_style(presets::UTF8_FULL_CONDENSED);
    }
    if colour {
        t.enforce_styling();
    }
    t.set_header(header.iter().copied());
    for row in rows {
        t.add_row(row.into_iter().map(|f| {
            let text = if format == Format::Markdown {
                // A `|` would end a Markdown cell and a line break the row.
                f.text.replace('|', "\\|").replace('\n', " ")
            } else {
                f.text
            };
            match f.tone {
                Some(tone) if colour => Cell::new(text).fg(match tone {
                    Tone::Good => Color::Green,
                    Tone::Bad => Color::Red,
                    Tone::Pending => Color::Yellow,
                }),
                _ => Cell::new(text),
            }
        }));
    }
    let mut out = t.to_string();
    out.push('\n');
    out
}

fn csv_writer() -> csv::Writer<Vec<u8>> {
    csv::Writer::from_writer(Vec::new())
}

fn csv_text(w: csv::Writer<Vec<u8>>) -> String {
    String::from_utf8(w.into_inner().expect("writing to memory cannot fail"))
        .expect("CSV of UTF-8 strings is UTF-8")
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("results serialize to JSON") + "\n"
}

fn status_tone(t: &TestResult) -> Option<Tone> {
    match t.status.as_deref() {
        Some("completed") => Some(Tone::Good),
        Some(_) if t.failed() => Some(Tone::Bad),
        Some(_) => Some(Tone::Pending),
        None => None,
    }
}

fn duration(seconds: Option<u64>) -> String {
    seconds.map_or(String::new(), |s| format!("{}m{:02}s", s / 60, s % 60))
}

fn value_with_unit(task: &TaskMetrics, metric: Metric) -> String {
    task.get(metric).map_or("-".into(), |v| {
        format!("{} {}", format_number(v.value), v.unit)
    })
}

/// `p50 / p90 / p99 unit`, with `-` for a percentile Rally did not report.
fn percentiles(task: &TaskMetrics, metrics: [Metric; 3]) -> String {
    let values: Vec<String> = metrics
        .iter()
        .map(|m| task.get(*m).map_or("-".into(), |v| format_number(v.value)))
        .collect();
    match metrics.iter().find_map(|m| task.get(*m)) {
        Some(v) => format!("{} {}", values.join(" / "), v.unit),
        None => "-".into(),
    }
}

/// Why a test has no metrics to show, when it has none and no problem says why.
fn no_metrics_note(t: &TestResult) -> Option<String> {
    if !t.tasks.is_empty() || !t.problems.is_empty() {
        return None;
    }
    Some(match &t.failure {
        Some(error) => format!("failed: {}", error.lines().next().unwrap_or("")),
        None => "no results yet".into(),
    })
}

/// The results of a view.
pub fn results(view: &RunView, format: Format) -> String {
    match format {
        Format::Json => json(view),
        Format::Csv => results_csv(view),
        Format::Table | Format::Markdown => {
            let mut out = human_table(format, &RESULT_HEADER, result_rows(view));
            if view.tests.is_empty() {
                out.push_str("No tests in state yet.\n");
            }
            out
        }
    }
}

pub const RESULT_HEADER: [&str; 10] = [
    "test",
    "run",
    "status",
    "instance",
    "race",
    "task",
    "throughput (median)",
    "latency p50 / p90 / p99",
    "service time p50 / p90 / p99",
    "error rate",
];

/// A row per task of each test, then one per problem; the test's own columns go on its first
/// row only, so its tasks read as a group.
pub fn result_rows(view: &RunView) -> Vec<Vec<Field>> {
    let mut rows = Vec::new();
    for test in &view.tests {
        let mut first = true;
        let mut lead = || {
            if std::mem::take(&mut first) {
                vec![
                    plain(test.address.to_string()),
                    plain(opt(test.run_id.as_deref())),
                    toned(
                        test.status.clone().unwrap_or_else(|| "-".into()),
                        status_tone(test),
                    ),
                    plain(match (&test.instance_type, &test.zone) {
                        (Some(t), Some(z)) => format!("{t} in {z}"),
                        (t, _) => opt(t.as_deref()),
                    }),
                    plain(duration(test.race_duration_s)),
                ]
            } else {
                (0..5).map(|_| plain("")).collect()
            }
        };
        for task in &test.tasks {
            let errors = task.get(Metric::ErrorRate).is_some_and(|v| v.value > 0.0);
            let mut row = lead();
            row.extend([
                plain(task.task.clone()),
                plain(value_with_unit(task, Metric::Throughput)),
                plain(percentiles(task, Metric::LATENCIES)),
                plain(percentiles(task, Metric::SERVICE_TIMES)),
                toned(
                    value_with_unit(task, Metric::ErrorRate),
                    errors.then_some(Tone::Bad),
                ),
            ]);
            rows.push(row);
        }
        let notes = no_metrics_note(test).into_iter().map(|n| (n, None)).chain(
            test.problems
                .iter()
                .map(|p| (format!("error: {p}"), Some(Tone::Bad))),
        );
        for (note, tone) in notes {
            let mut row = lead();
            row.push(toned(note, tone));
            row.extend((0..4).map(|_| plain("")));
            rows.push(row);
        }
    }
    rows
}

fn results_csv(view: &RunView) -> String {
    let mut w = csv_writer();
    let mut header = vec![
        "test",
        "run",
        "status",
        "instance_type",
        "race_duration_s",
        "task",
    ];
    for m in Metric::ALL {
        header.push(m.id());
        header.push(unit_column(m));
    }
    header.push("problem");
    w.write_record(&header).expect("in-memory CSV");
    for test in &view.tests {
        let lead = [
            test.address.to_string(),
            opt(test.run_id.as_deref()),
            opt(test.status.as_deref()),
            opt(test.instance_type.as_deref()),
            opt(test.race_duration_s),
        ];
        for task in &test.tasks {
            let mut rec: Vec<String> = lead.to_vec();
            rec.push(task.task.clone());
            for m in Metric::ALL {
                let v = task.get(m);
                rec.push(opt(v.map(|v| v.value)));
                rec.push(opt(v.map(|v| v.unit.as_str())));
            }
            rec.push(String::new());
            w.write_record(&rec).expect("in-memory CSV");
        }
        for problem in no_metrics_note(test).iter().chain(&test.problems) {
            let mut rec: Vec<String> = lead.to_vec();
            rec.extend((0..=Metric::ALL.len() * 2).map(|_| String::new()));
            rec.push(problem.clone());
            w.write_record(&rec).expect("in-memory CSV");
        }
    }
    csv_text(w)
}

fn unit_column(m: Metric) -> &'static str {
    match m {
        Metric::Throughput => "throughput_unit",
        Metric::LatencyP50 => "latency_p50_unit",
        Metric::LatencyP90 => "latency_p90_unit",
        Metric::LatencyP99 => "latency_p99_unit",
        Metric::ServiceTimeP50 => "service_time_p50_unit",
        Metric::ServiceTimeP90 => "service_time_p90_unit",
        Metric::ServiceTimeP99 => "service_time_p99_unit",
        Metric::ErrorRate => "error_rate_unit",
    }
}

/// The list of runs.
pub fn runs(workspace: &str, runs: &[RunSummary], format: Format) -> String {
    match format {
        Format::Json => json(&serde_json::json!({"workspace": workspace, "runs": runs})),
        Format::Csv => {
            let mut w = csv_writer();
            w.write_record(["run", "started", "tests", "current", "failed", "baseline"])
                .expect("in-memory CSV");
            for r in runs {
                w.write_record([
                    r.run_id.clone(),
                    r.started.map_or(String::new(), |t| t.to_string()),
                    r.tests.to_string(),
                    r.current.to_string(),
                    r.failed.to_string(),
                    r.baseline.to_string(),
                ])
                .expect("in-memory CSV");
            }
            csv_text(w)
        }
        Format::Table | Format::Markdown => {
            let rows = runs
                .iter()
                .map(|r| {
                    vec![
                        plain(r.run_id.clone()),
                        plain(r.started.map_or(String::new(), |t| {
                            t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
                        })),
                        plain(r.tests.to_string()),
                        plain(r.current.to_string()),
                        toned(r.failed.to_string(), (r.failed > 0).then_some(Tone::Bad)),
                        plain(if r.baseline { "yes" } else { "" }),
                    ]
                })
                .collect();
            let mut out = human_table(
                format,
                &[
                    "run",
                    "started",
                    "tests with results",
                    "current in state",
                    "failed",
                    "baseline",
                ],
                rows,
            );
            if runs.is_empty() {
                out.push_str(&format!("No runs of workspace `{workspace}` yet.\n"));
            }
            out
        }
    }
}

fn verdict_tone(v: Verdict) -> Option<Tone> {
    match v {
        Verdict::Better => Some(Tone::Good),
        Verdict::Worse | Verdict::Missing => Some(Tone::Bad),
        Verdict::Same | Verdict::New => None,
    }
}

fn signed(v: f64) -> String {
    if v > 0.0 {
        format!("+{}", format_number(v))
    } else {
        format_number(v)
    }
}

/// The percent change for people: `+12.3 %`, or `n/a` from a baseline of zero.
fn percent(row: &Row) -> String {
    match (row.diff_pct, row.diff) {
        (Some(p), _) => format!("{}{p:.1} %", if p > 0.0 { "+" } else { "" }),
        (None, Some(_)) => "n/a (from 0)".into(),
        (None, None) => String::new(),
    }
}

pub const COMPARISON_HEADER: [&str; 8] = [
    "test",
    "task",
    "metric",
    "baseline",
    "contender",
    "diff",
    "diff %",
    "verdict",
];

/// A row per metric; test and task once per group, as in the results table.
pub fn comparison_rows<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Vec<Vec<Field>> {
    let mut last: Option<(&crate::address::Address, &str)> = None;
    rows.into_iter()
        .map(|r| {
            let test = match last {
                Some((test, _)) if test == &r.test => String::new(),
                _ => r.test.to_string(),
            };
            let task = match last {
                Some((test, task)) if test == &r.test && task == r.task => String::new(),
                _ => r.task.clone(),
            };
            last = Some((&r.test, &r.task));
            let with_unit = |v: Option<f64>| {
                v.map_or("-".into(), |v| format!("{} {}", format_number(v), r.unit))
            };
            vec![
                plain(test),
                plain(task),
                plain(r.metric.label()),
                plain(with_unit(r.baseline)),
                plain(with_unit(r.contender)),
                plain(r.diff.map_or(String::new(), signed)),
                plain(percent(r)),
                toned(r.verdict.label(), verdict_tone(r.verdict)),
            ]
        })
        .collect()
}

/// One line that sums a comparison up.
pub fn comparison_summary(c: &Comparison) -> String {
    let counts: Vec<String> = c
        .counts()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(v, n)| format!("{n} {}", v.label()))
        .collect();
    format!(
        "{} against baseline {} (noise threshold {} %): {}.",
        c.contender_run.as_deref().unwrap_or("(no run)"),
        c.baseline_run.as_deref().unwrap_or("(no run)"),
        c.noise_pct,
        if counts.is_empty() {
            "nothing to compare".into()
        } else {
            counts.join(", ")
        },
    )
}

/// A comparison, with its summary line and what could not be read.
pub fn comparison(c: &Comparison, format: Format) -> String {
    match format {
        Format::Json => json(c),
        Format::Csv => {
            let mut w = csv_writer();
            w.write_record([
                "test",
                "task",
                "metric",
                "unit",
                "baseline",
                "contender",
                "diff",
                "diff_pct",
                "verdict",
            ])
            .expect("in-memory CSV");
            for r in &c.rows {
                w.write_record([
                    r.test.to_string(),
                    r.task.clone(),
                    r.metric.id().to_owned(),
                    r.unit.clone(),
                    opt(r.baseline),
                    opt(r.contender),
                    opt(r.diff),
                    opt(r.diff_pct),
                    r.verdict.id().to_owned(),
                ])
                .expect("in-memory CSV");
            }
            csv_text(w)
        }
        Format::Table | Format::Markdown => {
            let mut out = human_table(format, &COMPARISON_HEADER, comparison_rows(&c.rows));
            out.push_str(&format!("\n{}\n", comparison_summary(c)));
            for p in &c.problems {
                out.push_str(&format!("error: {p}\n"));
            }
            out
        }
    }
}

/// The lines that explain a failed regression gate, one per regressed metric.
pub fn regressions(rows: &[&Row], threshold_pct: f64) -> String {
    let mut out = format!(
        "Regression: {} metric{} worse by more than {threshold_pct} %:\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    for r in rows {
        let how = match r.verdict {
            Verdict::Missing => "missing from the contender".to_owned(),
            _ => format!(
                "{} -> {} {} ({})",
                opt(r.baseline.map(format_number)),
                opt(r.contender.map(format_number)),
                r.unit,
                percent(r)
            ),
        };
        out.push_str(&format!(
            "  {} {} {}: {how}\n",
            r.test,
            r.task,
            r.metric.label()
        ));
    }
    out
}
