//! Results, comparisons and run lists as text: a terminal table, CSV, JSON or Markdown (and a
//! comparison as JUnit XML, [`super::junit`]).
//!
//! The table and Markdown are for people and put a test's three latency percentiles in one
//! cell; CSV and JSON are for programs and keep one number per field, with units beside them.
//! A metric raced two or more times reads as its mean, the half-width of its 95 % interval,
//! the count and the relative standard deviation (`12.30 ±0.40 ms (n=5, rsd 2.1%)`); CSV and
//! JSON give every figure of its [`Summary`] a field of its own.

use super::compare::{Comparison, Method, Row, Side, Verdict};
use super::load::{RunSummary, RunView, TestResult};
use super::metrics::{Metric, TaskMetrics, Value, format_number};
use super::stats::{NOISY_RSD_PCT, Needed, Summary};
use crate::cost::bill::Bill;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    // `text` too: what `history` writes is lines, not a table.
    #[value(alias = "text")]
    Table,
    Csv,
    Json,
    Markdown,
}

/// What `results` writes: a [`Format`], or JUnit XML, which only a comparison has (its verdicts
/// pass or fail; a view or a list of runs has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text(Format),
    Junit,
}

impl clap::ValueEnum for Output {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: std::sync::LazyLock<Vec<Output>> = std::sync::LazyLock::new(|| {
            (Format::value_variants().iter().copied().map(Output::Text))
                .chain([Output::Junit])
                .collect()
        });
        &ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        match self {
            Output::Text(format) => format.to_possible_value(),
            Output::Junit => Some(clap::builder::PossibleValue::new("junit")),
        }
    }
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

pub(crate) fn plain(text: impl Into<String>) -> Field {
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
///
/// Laid out here rather than by comfy-table (which `ui` uses for small tables): comfy-table
/// measured and copied every cell several times, 0.8 s for a comparison of 200,000 rows. This
/// draws the same style, comfy-table's `UTF8_FULL_CONDENSED` and `ASCII_MARKDOWN`: a cell is
/// padded by a space each side, a line break in a cell starts a line of its own in the terminal
/// and is a space in Markdown.
pub(crate) fn human_table(format: Format, header: &[&str], rows: Vec<Vec<Field>>) -> String {
    let markdown = format == Format::Markdown;
    let colour = format == Format::Table && console::colors_enabled();
    let header: Vec<Field> = header.iter().map(|h| plain(*h)).collect();
    let mut rows: Vec<Vec<Field>> = std::iter::once(header).chain(rows).collect();
    if markdown {
        for f in rows.iter_mut().flatten() {
            // A `|` would end a Markdown cell and a line break the row.
            f.text = f.text.replace('|', "\\|").replace('\n', " ");
        }
    }
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = column_widths(&rows);
    if !markdown && let Some(limit) = terminal_width() {
        fit(&mut rows, &mut widths, limit);
    }
    let rule = |left: &str, fill: &str, mid: &str, right: &str| -> String {
        let parts: Vec<String> = widths.iter().map(|w| fill.repeat(w + 2)).collect();
        format!("{left}{}{right}\n", parts.join(mid))
    };
    let (outer, inner) = if markdown { ("|", "|") } else { ("│", "┆") };
    let line_bytes: usize = widths.iter().map(|w| w + 3).sum::<usize>() + 4;
    let mut out = String::with_capacity(line_bytes * (rows.len() + 4));
    if !markdown {
        out.push_str(&rule("┌", "─", "┬", "┐"));
    }
    let mut lines: Vec<std::str::Lines<'_>> = Vec::with_capacity(columns);
    for (i, row) in rows.iter().enumerate() {
        let height = row
            .iter()
            .map(|f| f.text.lines().count())
            .max()
            .unwrap_or(0)
            .max(1);
        lines.clear();
        lines.extend(row.iter().map(|f| f.text.lines()));
        for _ in 0..height {
            out.push_str(outer);
            for (c, w) in widths.iter().enumerate() {
                let line = lines.get_mut(c).and_then(Iterator::next).unwrap_or("");
                out.push(' ');
                match row.get(c).and_then(|f| f.tone) {
                    Some(tone) if colour && !line.is_empty() => {
                        let color = match tone {
                            Tone::Good => console::Color::Green,
                            Tone::Bad => console::Color::Red,
                            Tone::Pending => console::Color::Yellow,
                        };
                        let styled = console::style(line).fg(color).force_styling(true);
                        out.push_str(&styled.to_string());
                    }
                    _ => out.push_str(line),
                }
                out.extend(std::iter::repeat_n(' ', w - width(line) + 1));
                out.push_str(if c + 1 == columns { outer } else { inner });
            }
            out.push('\n');
        }
        if i == 0 {
            out.push_str(&if markdown {
                rule("|", "-", "|", "|")
            } else {
                rule("╞", "═", "╪", "╡")
            });
        }
    }
    if !markdown {
        out.push_str(&rule("└", "─", "┴", "┘"));
    }
    out
}

/// The widest line of each column's cells.
fn column_widths(rows: &[Vec<Field>]) -> Vec<usize> {
    let mut widths = vec![0; rows.iter().map(Vec::len).max().unwrap_or(0)];
    for row in rows {
        for (w, f) in widths.iter_mut().zip(row) {
            *w = (*w).max(f.text.lines().map(width).max().unwrap_or(0));
        }
    }
    widths
}

/// The columns a line of a terminal table of these rows takes: `│` + ` cell ┆` per column.
fn line_width(widths: &[usize]) -> usize {
    widths.iter().map(|w| w + 3).sum::<usize>() + 1
}

/// [`human_table`], in the narrow layout ([`folded`]) when the terminal is too narrow for the
/// table laid out whole.
fn narrowing_table(
    format: Format,
    header: &[&str],
    rows: Vec<Vec<Field>>,
    facts: std::ops::Range<usize>,
) -> String {
    match terminal_width() {
        Some(limit) if format == Format::Table && line_width(&column_widths(&rows)) > limit => {
            let (header, rows) = folded(header, rows, facts);
            let header: Vec<&str> = header.iter().map(String::as_str).collect();
            human_table(format, &header, rows)
        }
        _ => human_table(format, header, rows),
    }
}

/// The narrow layout: the cells of `facts` written under the first column's, one a line (empty
/// ones left out), so a table keeps its measurements side by side in fewer columns.
fn folded(
    header: &[&str],
    rows: Vec<Vec<Field>>,
    facts: std::ops::Range<usize>,
) -> (Vec<String>, Vec<Vec<Field>>) {
    let stack = |cells: Vec<&str>| {
        cells
            .into_iter()
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut head = vec![stack(
        std::iter::once(header[0])
            .chain(header[facts.clone()].iter().copied())
            .collect(),
    )];
    head.extend(header[facts.end..].iter().map(|h| (*h).to_owned()));
    let rows = rows
        .into_iter()
        .map(|mut row| {
            let rest = row.split_off(facts.end.min(row.len()));
            let facts: Vec<Field> = row.drain(facts.start.min(row.len())..).collect();
            let first = row.into_iter().next().unwrap_or_else(|| plain(""));
            let text = stack(
                std::iter::once(first.text.as_str())
                    .chain(facts.iter().map(|f| f.text.as_str()))
                    .collect(),
            );
            // The status's tone (failed, racing) is the one worth keeping on the stacked cell.
            let tone = first.tone.or(facts.iter().find_map(|f| f.tone));
            std::iter::once(toned(text, tone)).chain(rest).collect()
        })
        .collect();
    (head, rows)
}

/// The width a terminal table must fit in: the terminal's when stdout is one, else `COLUMNS`
/// when set (as `ls` reads it); none when written to a pipe or file without it, so programs
/// reading the table get whole cells.
fn terminal_width() -> Option<usize> {
    let term = console::Term::stdout();
    if term.is_term() {
        return Some(usize::from(term.size().1));
    }
    std::env::var("COLUMNS").ok()?.trim().parse().ok()
}

/// A column is never wrapped narrower than this: a table wider than its terminal even so is
/// better than one word a line.
const MIN_COLUMN: usize = 8;

/// Narrows the widest columns, wrapping their cells at spaces, until a table line fits in
/// `limit` columns: first no narrower than a column's longest word, then, if it must, down to
/// [`MIN_COLUMN`], cutting words.
fn fit(rows: &mut [Vec<Field>], widths: &mut [usize], limit: usize) {
    let natural = widths.to_vec();
    let mut words = vec![0; widths.len()];
    for row in rows.iter() {
        for (w, f) in words.iter_mut().zip(row) {
            *w = (*w).max(f.text.split([' ', '\n']).map(width).max().unwrap_or(0));
        }
    }
    for floor in [words, vec![MIN_COLUMN; widths.len()]] {
        while line_width(widths) > limit {
            let Some((widest, _)) = widths
                .iter()
                .enumerate()
                .filter(|(c, w)| **w > floor[*c].max(MIN_COLUMN))
                .max_by_key(|(c, w)| (**w, std::cmp::Reverse(*c)))
            else {
                break;
            };
            widths[widest] -= 1;
        }
    }
    for (c, (w, n)) in widths.iter().zip(&natural).enumerate() {
        if w < n {
            for row in rows.iter_mut() {
                if let Some(f) = row.get_mut(c) {
                    f.text = wrap(&f.text, *w);
                }
            }
        }
    }
}

/// `text`'s lines broken at spaces so that none is wider than `columns`.
fn wrap(text: &str, columns: usize) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for (i, line) in text.lines().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut used = 0;
        for word in line.split(' ') {
            let mut word = word;
            if used > 0 && used + 1 + width(word) <= columns {
                out.push(' ');
                used += 1;
            } else if used > 0 {
                out.push('\n');
                used = 0;
            }
            while width(word) > columns {
                let cut = word
                    .char_indices()
                    .map(|(at, _)| at)
                    .take_while(|at| width(&word[..*at]) <= columns)
                    .last()
                    .filter(|at| *at > 0)
                    .unwrap_or_else(|| word.chars().next().map_or(word.len(), char::len_utf8));
                out.push_str(&word[..cut]);
                out.push('\n');
                word = &word[cut..];
            }
            out.push_str(word);
            used += width(word);
        }
    }
    out
}

/// The columns a line takes in a terminal.
fn width(line: &str) -> usize {
    if line.is_ascii() {
        line.len()
    } else {
        console::measure_text_width(line)
    }
}

pub(crate) fn csv_writer() -> csv::Writer<Vec<u8>> {
    csv::Writer::from_writer(Vec::new())
}

pub(crate) fn csv_text(w: csv::Writer<Vec<u8>>) -> String {
    String::from_utf8(w.into_inner().expect("writing to memory cannot fail"))
        .expect("CSV of UTF-8 strings is UTF-8")
}

pub(crate) fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

pub(crate) fn json<T: serde::Serialize>(value: &T) -> String {
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

/// The spread of a metric raced two or more times.
fn summary(v: &Value) -> Option<Summary> {
    Summary::of(v.races())
}

/// `mean [ci low, ci high] unit (n=N, rsd R%)`, flagged when noisy; a lone race as its value.
/// The interval, not a `±`: on the log scale it is not symmetric about the mean.
pub(super) fn with_spread(mean: f64, unit: &str, summary: Option<&Summary>) -> String {
    let Some(s) = summary else {
        return format!("{} {unit}", format_number(mean));
    };
    if s.sd == 0.0 {
        return format!("{} {unit} (n={}, all equal)", format_number(mean), s.n);
    }
    let rsd = s
        .rsd_pct
        .map_or(String::new(), |r| format!(", rsd {r:.1}%"));
    let noisy = if s.noisy { ", noisy" } else { "" };
    format!(
        "{} [{}, {}] {unit} (n={}{rsd}{noisy})",
        format_number(mean),
        format_number(s.ci_low),
        format_number(s.ci_high),
        s.n
    )
}

/// A metric's cell, and whether its repetitions are noisy.
fn value_with_unit(task: &TaskMetrics, metric: Metric) -> (String, bool) {
    task.get(metric).map_or(("-".into(), false), |v| {
        let s = summary(v);
        (
            with_spread(v.value, &v.unit, s.as_ref()),
            s.is_some_and(|s| s.noisy),
        )
    })
}

/// `p50 / p90 / p99 unit`, with `-` for a percentile Rally did not report; a line per
/// percentile once they were raced more than once. And whether any is noisy.
fn percentiles(task: &TaskMetrics, metrics: [Metric; 3]) -> (String, bool) {
    let Some(unit) = metrics.iter().find_map(|m| task.get(*m)).map(|v| &v.unit) else {
        return ("-".into(), false);
    };
    let repeated = metrics
        .iter()
        .any(|m| task.get(*m).is_some_and(|v| v.races().len() > 1));
    if !repeated {
        let values: Vec<String> = metrics
            .iter()
            .map(|m| task.get(*m).map_or("-".into(), |v| format_number(v.value)))
            .collect();
        return (format!("{} {unit}", values.join(" / ")), false);
    }
    let mut noisy = false;
    let lines: Vec<String> = metrics
        .iter()
        .zip(["p50", "p90", "p99"])
        .map(|(m, name)| match task.get(*m) {
            Some(v) => {
                let s = summary(v);
                noisy |= s.as_ref().is_some_and(|s| s.noisy);
                format!("{name} {}", with_spread(v.value, &v.unit, s.as_ref()))
            }
            None => format!("{name} -"),
        })
        .collect();
    (lines.join("\n"), noisy)
}

fn noisy_tone(noisy: bool) -> Option<Tone> {
    noisy.then_some(Tone::Pending)
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
        Format::Json => json(&with_summaries(view)),
        Format::Csv => results_csv(view),
        Format::Table | Format::Markdown => {
            let mut out = narrowing_table(format, &RESULT_HEADER, result_rows(view), TEST_FACTS);
            if view.tests.is_empty() {
                out.push_str("No tests in state yet.\n");
            }
            if let (Some(run), Some(bill)) = (&view.run, &view.cost) {
                out.push_str(&format!("Run {run} cost {bill}.\n"));
            }
            if view.tests.iter().any(|t| t.repetitions > 1) {
                out.push_str(&format!(
                    "±: half the 95 % confidence interval of the mean over the repetitions; \
                     noisy: rsd above {NOISY_RSD_PCT} %.\n"
                ));
            }
            out
        }
    }
}

/// The columns of [`RESULT_HEADER`] that say what a test's race was rather than what it
/// measured: in a terminal too narrow for the table they move under the test's name.
const TEST_FACTS: std::ops::Range<usize> = 1..6;

pub const RESULT_HEADER: [&str; 11] = [
    "test",
    "run",
    "status",
    "instance",
    "race",
    "cost",
    "task",
    "throughput (median)",
    "latency p50 / p90 / p99",
    "service time p50 / p90 / p99",
    "error rate",
];

/// What a test's machine time cost: `-` where none was billed (the user's own machine, or a
/// state from before costs were recorded), `unknown` without a price.
fn cost_cell(bill: Option<&Bill>) -> String {
    bill.map_or("-".into(), Bill::usd_text)
}

/// The view as JSON, each metric raced more than once with its `summary`.
fn with_summaries(view: &RunView) -> serde_json::Value {
    let mut out = serde_json::to_value(view).expect("results serialize to JSON");
    let tests = out["tests"].as_array_mut().into_iter().flatten();
    for (test, json) in view.tests.iter().zip(tests) {
        let tasks = json["tasks"].as_array_mut().into_iter().flatten();
        for (task, json) in test.tasks.iter().zip(tasks) {
            for (metric, value) in &task.metrics {
                if let (Some(s), Some(obj)) =
                    (summary(value), json["metrics"][metric.id()].as_object_mut())
                {
                    obj.insert(
                        "summary".into(),
                        serde_json::to_value(s).expect("a summary serializes"),
                    );
                }
            }
        }
    }
    out
}

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
                    plain(format!(
                        "{}{}",
                        match (&test.topology, &test.instance_type, &test.zone) {
                            (Some(cluster), ..) => cluster.clone(),
                            (None, Some(t), Some(z)) => format!("{t} in {z}"),
                            (None, t, _) => opt(t.as_deref()),
                        },
                        if test.spot { ", spot" } else { "" }
                    )),
                    plain(duration(test.race_duration_s)),
                    plain(cost_cell(test.cost.as_ref())),
                ]
            } else {
                (0..6).map(|_| plain("")).collect()
            }
        };
        for task in &test.tasks {
            let errors = task.get(Metric::ErrorRate).is_some_and(|v| v.value > 0.0);
            let mut row = lead();
            let (throughput, noisy) = value_with_unit(task, Metric::Throughput);
            let (latency, latency_noisy) = percentiles(task, Metric::LATENCIES);
            let (service, service_noisy) = percentiles(task, Metric::SERVICE_TIMES);
            row.extend([
                plain(task.task.clone()),
                toned(throughput, noisy_tone(noisy)),
                toned(latency, noisy_tone(latency_noisy)),
                toned(service, noisy_tone(service_noisy)),
                toned(
                    value_with_unit(task, Metric::ErrorRate).0,
                    errors.then_some(Tone::Bad),
                ),
            ]);
            rows.push(row);
        }
        let logs = (test.logs.as_ref()).map(|l| (format!("logs: {}", l.display()), None));
        let notes = (no_metrics_note(test).into_iter().map(|n| (n, None)))
            .chain(logs)
            .chain(
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

/// The figures of a [`Summary`] beside a value in CSV, by column suffix.
const SUMMARY_COLUMNS: [&str; 9] = [
    "n", "median", "sd", "rsd_pct", "min", "max", "ci_low", "ci_high", "noisy",
];

/// The [`SUMMARY_COLUMNS`] of `n` races (empty past the count for a lone race).
fn summary_fields(n: usize, s: Option<&Summary>) -> [String; 9] {
    match s {
        Some(s) => [
            s.n.to_string(),
            s.median.to_string(),
            s.sd.to_string(),
            opt(s.rsd_pct),
            s.min.to_string(),
            s.max.to_string(),
            s.ci_low.to_string(),
            s.ci_high.to_string(),
            s.noisy.to_string(),
        ],
        None => [
            n.to_string(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ],
    }
}

fn results_csv(view: &RunView) -> String {
    let mut w = csv_writer();
    let mut header: Vec<String> = [
        "test",
        "run",
        "status",
        "instance_type",
        "topology",
        "race_duration_s",
        "repetitions",
        "machine_hours",
        "cost_usd",
        "task",
    ]
    .map(String::from)
    .to_vec();
    for m in Metric::ALL {
        header.push(m.id().into());
        header.push(unit_column(m).into());
        header.extend(SUMMARY_COLUMNS.map(|c| format!("{}_{c}", m.id())));
    }
    header.push("problem".into());
    w.write_record(&header).expect("in-memory CSV");
    for test in &view.tests {
        let lead = [
            test.address.to_string(),
            opt(test.run_id.as_deref()),
            opt(test.status.as_deref()),
            opt(test.instance_type.as_deref()),
            opt(test.topology.as_deref()),
            opt(test.race_duration_s),
            test.repetitions.to_string(),
            opt(test.cost.map(|b| b.machine_hours)),
            opt(test.cost.and_then(|b| b.usd)),
        ];
        for task in &test.tasks {
            let mut rec: Vec<String> = lead.to_vec();
            rec.push(task.task.clone());
            for m in Metric::ALL {
                let v = task.get(m);
                rec.push(opt(v.map(|v| v.value)));
                rec.push(opt(v.map(|v| v.unit.as_str())));
                match v {
                    Some(v) => rec.extend(summary_fields(v.races().len(), summary(v).as_ref())),
                    None => rec.extend((0..SUMMARY_COLUMNS.len()).map(|_| String::new())),
                }
            }
            rec.push(String::new());
            w.write_record(&rec).expect("in-memory CSV");
        }
        for problem in no_metrics_note(test).iter().chain(&test.problems) {
            let mut rec: Vec<String> = lead.to_vec();
            rec.extend(
                (0..=Metric::ALL.len() * (2 + SUMMARY_COLUMNS.len())).map(|_| String::new()),
            );
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
            w.write_record([
                "run",
                "started",
                "tests",
                "current",
                "failed",
                "baseline",
                "machine_hours",
                "cost_usd",
            ])
            .expect("in-memory CSV");
            for r in runs {
                w.write_record([
                    r.run_id.clone(),
                    r.started.map_or(String::new(), |t| t.to_string()),
                    r.tests.to_string(),
                    r.current.to_string(),
                    r.failed.to_string(),
                    r.baseline.to_string(),
                    opt(r.cost.map(|b| b.machine_hours)),
                    opt(r.cost.and_then(|b| b.usd)),
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
                        plain(cost_cell(r.cost.as_ref())),
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
                    "cost",
                ],
                rows,
            );
            if runs.is_empty() {
                out.push_str(&format!("No runs of workspace `{workspace}` yet.\n"));
            }
            for r in runs.iter().filter(|r| !r.failures.is_empty()) {
                out.push_str(&format!("Failed in {}:\n", r.run_id));
                for f in &r.failures {
                    let step = f.step.map_or("?".to_owned(), |s| s.to_string());
                    out.push_str(&format!("  {} at {step}: {}\n", f.address, f.error));
                }
            }
            out
        }
    }
}

fn verdict_tone(v: Verdict) -> Option<Tone> {
    match v {
        Verdict::Improvement => Some(Tone::Good),
        Verdict::Regression | Verdict::Missing => Some(Tone::Bad),
        Verdict::Inconclusive => Some(Tone::Pending),
        Verdict::NoChange | Verdict::New => None,
    }
}

pub(crate) fn pct(p: f64) -> String {
    format!("{}{p:.1}", if p > 0.0 { "+" } else { "" })
}

/// The change for people: `+9.5 % [+4.4, +14.8]` with its interval, `+20.0 %` for a threshold,
/// `n/a (from 0)` from a baseline of zero.
pub(super) fn change(row: &Row) -> String {
    match (row.change_pct, row.ci_low_pct, row.ci_high_pct) {
        (Some(p), Some(lo), Some(hi)) => format!("{} % [{}, {}]", pct(p), pct(lo), pct(hi)),
        (Some(p), _, _) => format!("{} %", pct(p)),
        (None, _, _) if row.baseline.is_some() && row.contender.is_some() => "n/a (from 0)".into(),
        _ => String::new(),
    }
}

pub(super) fn p_value(p: f64) -> String {
    if p < 0.001 {
        "<0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// The p column: the Holm-adjusted p of a test, or `threshold` where there was none.
fn p_cell(row: &Row) -> String {
    match (row.method, row.p_value) {
        (Some(Method::WelchLog), Some(p)) => p_value(p),
        (Some(Method::Threshold), _) => "threshold".into(),
        _ => String::new(),
    }
}

fn verdict_cell(row: &Row) -> String {
    match row.repetitions_needed {
        Some(n @ Needed::PerSide(_)) => format!("{} (~{n} repetitions)", row.verdict.label()),
        Some(n) => format!("{} ({n} repetitions)", row.verdict.label()),
        None => row.verdict.label().to_owned(),
    }
}

pub const COMPARISON_HEADER: [&str; 8] = [
    "test",
    "task",
    "metric",
    "baseline",
    "contender",
    "change [95 % CI, Holm]",
    "p (Holm)",
    "verdict",
];

/// A row per metric; test and task once per group, as in the results table.
pub fn comparison_rows<'a>(rows: impl IntoIterator<Item = &'a Row>) -> Vec<Vec<Field>> {
    rows_after(None, rows)
}

/// Below this many rows a thread of its own is not worth starting.
const PARALLEL_ROWS: usize = 20_000;

/// [`comparison_rows`] of every row, a share on each core: a comparison of 10,000 tests has
/// 200,000 rows to format.
fn all_comparison_rows(rows: &[Row]) -> Vec<Vec<Field>> {
    crate::parallel::shares(rows, PARALLEL_ROWS, |start, share| {
        rows_after(start.checked_sub(1).map(|i| &rows[i]), share)
    })
    .into_iter()
    .flatten()
    .collect()
}

/// The rows that follow `last`: its test and task are not repeated.
fn rows_after<'a>(
    mut last: Option<&'a Row>,
    rows: impl IntoIterator<Item = &'a Row>,
) -> Vec<Vec<Field>> {
    rows.into_iter()
        .map(|r| {
            let test = match last {
                Some(l) if l.test == r.test => String::new(),
                _ => r.test.to_string(),
            };
            let task = match last {
                Some(l) if l.test == r.test && l.task == r.task => String::new(),
                _ => r.task.clone(),
            };
            last = Some(r);
            let side = |s: &Option<Side>| match s {
                Some(s) => toned(
                    with_spread(s.mean, &r.unit, s.summary.as_ref()),
                    noisy_tone(s.summary.as_ref().is_some_and(|s| s.noisy)),
                ),
                None => plain("-"),
            };
            vec![
                plain(test),
                plain(task),
                plain(r.metric.label()),
                side(&r.baseline),
                side(&r.contender),
                plain(change(r)),
                plain(p_cell(r)),
                toned(verdict_cell(r), verdict_tone(r.verdict)),
            ]
        })
        .collect()
}

fn counted(n: usize, v: Verdict) -> String {
    let plural = n != 1 && matches!(v, Verdict::Regression | Verdict::Improvement);
    format!("{n} {}{}", v.label(), if plural { "s" } else { "" })
}

/// One line that sums a comparison up: each verdict counted.
pub fn comparison_summary(c: &Comparison) -> String {
    let counts: Vec<String> = c
        .counts()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(v, n)| counted(n, v))
        .collect();
    let against = match &c.baseline_variant {
        Some(variant) => format!(
            "{}: each variant against variant `{variant}`",
            c.contender_run.as_deref().unwrap_or("(no run)")
        ),
        None => format!(
            "{} against baseline {}",
            c.contender_run.as_deref().unwrap_or("(no run)"),
            c.baseline_run.as_deref().unwrap_or("(no run)")
        ),
    };
    format!(
        "{against} (min effect ±{} %): {}.",
        c.min_effect_pct,
        if counts.is_empty() {
            "nothing to compare".into()
        } else {
            counts.join(", ")
        },
    )
}

/// What the verdicts rest on, a line each: the test and its correction, the rows that are only
/// a threshold, what would settle the inconclusive ones.
pub fn comparison_notes(c: &Comparison) -> Vec<String> {
    let mut notes = Vec::new();
    if c.tested > 0 {
        notes.push(format!(
            "Tested: Welch's t on the log of the values, {} % intervals of the change, \
             Holm-corrected over {} comparison{}; a verdict needs the whole interval beyond \
             (or within) ±{} %.",
            c.confidence_pct,
            c.tested,
            if c.tested == 1 { "" } else { "s" },
            c.min_effect_pct
        ));
    }
    let single = c.single_races();
    if single > 0 {
        notes.push(format!(
            "n = 1: a threshold, not a statistical test: {single} comparison{} of a single race \
             held against ±{} % (race more repetitions for a test).",
            if single == 1 { "" } else { "s" },
            c.min_effect_pct
        ));
    }
    if c.rows.iter().any(|r| r.verdict == Verdict::Inconclusive) {
        notes.push(
            "Inconclusive: neither beyond nor within the min effect; the repetitions per side \
             shown would likely settle it (`repetitions` in the plan)."
                .into(),
        );
    }
    for unpaired in &c.unpaired {
        notes.push(format!(
            "Not interleaved, compared as --allow-unpaired asks: {unpaired}."
        ));
    }
    notes
}

/// Each test whose configuration changed between the two sides, with what changed: the
/// verdicts above measure that change.
pub fn configuration_changes(c: &Comparison) -> Vec<(String, String)> {
    c.configuration_changes
        .iter()
        .map(|change| {
            (
                format!(
                    "{}: the configuration changed between the two sides (the verdicts measure \
                     this change):",
                    change.test
                ),
                change.diff.clone(),
            )
        })
        .collect()
}

/// A Markdown table of plain cells, for summaries that are not a comparison's rows.
pub fn markdown_table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let rows = rows
        .into_iter()
        .map(|r| r.into_iter().map(plain).collect())
        .collect();
    human_table(Format::Markdown, header, rows)
}

/// A comparison as a CI job's summary (GitHub's step summary) in Markdown, verdicts first: the
/// regressions (missing metrics among them), then the improvements, then the rest counted.
pub fn step_summary(c: &Comparison) -> String {
    let mut out = format!("### rallyctl results: `{}`\n\n", c.workspace);
    out.push_str(&format!("{}\n", comparison_summary(c)));
    let sections = [
        ("Regressions", c.regressions()),
        (
            "Improvements",
            (c.rows.iter())
                .filter(|r| r.verdict == Verdict::Improvement)
                .collect(),
        ),
    ];
    for (title, rows) in sections {
        if !rows.is_empty() {
            let table = human_table(Format::Markdown, &COMPARISON_HEADER, comparison_rows(rows));
            out.push_str(&format!("\n#### {title}\n\n{table}"));
        }
    }
    let rest: Vec<String> = (c.counts().into_iter())
        .filter(|(v, n)| *n > 0 && !v.fails_the_gate() && *v != Verdict::Improvement)
        .map(|(v, n)| counted(n, v))
        .collect();
    if !rest.is_empty() {
        out.push_str(&format!("\nThe rest: {}.\n", rest.join(", ")));
    }
    for p in &c.problems {
        out.push_str(&format!("\n**error:** {p}\n"));
    }
    out
}

/// The comparison's fields of one side in CSV.
fn side_fields(side: Option<&Side>) -> Vec<String> {
    let mut out = vec![opt(side.map(|s| s.n)), opt(side.map(|s| s.mean))];
    match side {
        Some(s) => out.extend(summary_fields(s.n, s.summary.as_ref()).into_iter().skip(1)),
        None => out.extend((1..SUMMARY_COLUMNS.len()).map(|_| String::new())),
    }
    out
}

/// A comparison, with its summary line and what could not be read.
pub fn comparison(c: &Comparison, format: Format) -> String {
    match format {
        Format::Json => json(c),
        Format::Csv => {
            let mut w = csv_writer();
            let mut header: Vec<String> = ["test", "task", "metric", "unit"]
                .map(String::from)
                .to_vec();
            for side in ["baseline", "contender"] {
                header.push(format!("{side}_n"));
                header.push(format!("{side}_mean"));
                header.extend(SUMMARY_COLUMNS[1..].iter().map(|c| format!("{side}_{c}")));
            }
            header.extend(
                [
                    "change_pct",
                    "ci_low_pct",
                    "ci_high_pct",
                    "confidence_pct",
                    "p_value",
                    "verdict",
                    "method",
                    "repetitions_needed",
                ]
                .map(String::from),
            );
            w.write_record(&header).expect("in-memory CSV");
            for r in &c.rows {
                let mut rec = vec![
                    r.test.to_string(),
                    r.task.clone(),
                    r.metric.id().to_owned(),
                    r.unit.clone(),
                ];
                rec.extend(side_fields(r.baseline.as_ref()));
                rec.extend(side_fields(r.contender.as_ref()));
                rec.extend([
                    opt(r.change_pct),
                    opt(r.ci_low_pct),
                    opt(r.ci_high_pct),
                    opt(r.confidence_pct),
                    opt(r.p_value),
                    r.verdict.id().to_owned(),
                    opt(r.method.map(Method::id)),
                    opt(r.repetitions_needed),
                ]);
                w.write_record(&rec).expect("in-memory CSV");
            }
            csv_text(w)
        }
        Format::Table | Format::Markdown => {
            // Narrow: a task under its test.
            let rows = all_comparison_rows(&c.rows);
            let mut out = narrowing_table(format, &COMPARISON_HEADER, rows, 1..2);
            out.push_str(&format!("\n{}\n", comparison_summary(c)));
            for note in comparison_notes(c) {
                out.push_str(&note);
                out.push('\n');
            }
            for (title, diff) in configuration_changes(c) {
                out.push_str(&format!("\n{title}\n"));
                for line in diff.lines() {
                    out.push_str(&format!("  {line}\n"));
                }
            }
            for p in &c.problems {
                out.push_str(&format!("error: {p}\n"));
            }
            out
        }
    }
}

/// `test task metric: baseline -> contender unit (change)`.
fn explain(r: &Row) -> String {
    let mean = |s: &Option<Side>| s.as_ref().map_or(String::new(), |s| format_number(s.mean));
    format!(
        "  {} {} {}: {} -> {} {} ({}{})\n",
        r.test,
        r.task,
        r.metric.label(),
        mean(&r.baseline),
        mean(&r.contender),
        r.unit,
        change(r),
        r.p_value
            .map_or(String::new(), |p| format!(", p {}", p_value(p)))
    )
}

/// The lines that explain a failed regression gate, one per regressed or missing metric.
pub fn regressions(rows: &[&Row], min_effect_pct: f64) -> String {
    let mut out = format!(
        "Regression: {} metric{} worse by more than {min_effect_pct} %, or missing:\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    for r in rows {
        match r.verdict {
            Verdict::Missing => out.push_str(&format!(
                "  {} {} {}: missing from the contender\n",
                r.test,
                r.task,
                r.metric.label()
            )),
            _ => out.push_str(&explain(r)),
        }
    }
    out
}

/// The lines that explain a failed `--fail-on-inconclusive`: what to race again, how often.
pub fn inconclusive(rows: &[&Row], min_effect_pct: f64) -> String {
    let mut out = format!(
        "Inconclusive: {} comparison{} neither beyond nor within ±{min_effect_pct} %; race \
         again with more repetitions:\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    for r in rows {
        let line = explain(r);
        out.push_str(line.trim_end());
        if let Some(n) = r.repetitions_needed {
            out.push_str(&format!(", about {n} repetitions per side"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_breaks_at_spaces_and_cuts_only_words_wider_than_the_column() {
        assert_eq!(wrap("a bb ccc dddd", 6), "a bb\nccc\ndddd");
        assert_eq!(
            wrap("results/e2e/run/ingest/report.csv:5", 12),
            "results/e2e/\nrun/ingest/r\neport.csv:5"
        );
        assert_eq!(wrap("one\ntwo three", 9), "one\ntwo three");
        assert_eq!(wrap("µs µs µs", 5), "µs µs\nµs");
    }

    #[test]
    fn a_table_wider_than_its_terminal_wraps_its_widest_columns_to_fit() {
        let long = "error: results/e2e/20261124T081500Z-aaaaaa/ingest/garbled/report.csv:5: `1O00` is not a number";
        let rows = vec![vec![
            plain("ingest.garbled"),
            plain("completed"),
            plain(long),
        ]];
        let mut wrapped = rows.clone();
        let mut widths = vec![14, 9, width(long)];
        fit(&mut wrapped, &mut widths, 60);
        assert_eq!(widths.iter().map(|w| w + 3).sum::<usize>() + 1, 60);
        assert!(wrapped[0][2].text.lines().all(|l| width(l) <= widths[2]));
        assert_eq!(
            wrapped[0][0].text, "ingest.garbled",
            "a narrow column stays whole"
        );
        // Too narrow for every column's minimum: columns stop at MIN_COLUMN, cells stay readable.
        let mut widths = vec![14, 9, width(long)];
        let mut rows = rows;
        fit(&mut rows, &mut widths, 10);
        assert_eq!(widths, vec![MIN_COLUMN; 3]);
    }
}
