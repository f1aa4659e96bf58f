//! A comparison as JUnit XML, the report every CI system reads: a test case per test, task and
//! metric (class name the test's address, name `task / metric`). A regression, or a metric the
//! contender lost, is a failure whose message carries the numbers; an improvement or no change
//! passes; a metric that could not be judged (inconclusive, new) is skipped with why; a file
//! that could not be read is an error. `history` writes its change points by the same
//! [`document`].

use super::compare::{Comparison, Method, Row, Side, Verdict};
use super::markup::escape;
use super::render::{change, p_value, with_spread};

fn side(s: Option<&Side>, unit: &str) -> String {
    s.map_or("-".into(), |s| {
        with_spread(s.mean, unit, s.summary.as_ref())
    })
}

/// How the verdict was reached, as the message names it.
fn method(row: &Row, min_effect_pct: f64) -> String {
    match (row.method, row.p_value) {
        (Some(Method::WelchLog), Some(p)) => {
            format!(
                "p {} (Welch's t on logs, Holm), min effect ±{min_effect_pct} %",
                p_value(p)
            )
        }
        (Some(Method::Threshold), _) => {
            format!("threshold ±{min_effect_pct} % (no statistical test)")
        }
        _ => format!("min effect ±{min_effect_pct} %"),
    }
}

/// The numbers behind a row's verdict on one line.
fn numbers(row: &Row, min_effect_pct: f64) -> String {
    format!(
        "{}: baseline {}, contender {}, change {}, {}",
        row.verdict.label(),
        side(row.baseline.as_ref(), &row.unit),
        side(row.contender.as_ref(), &row.unit),
        match change(row) {
            c if c.is_empty() => "-".into(),
            c => c,
        },
        method(row, min_effect_pct)
    )
}

/// What a test case holds: nothing when it passed.
fn outcome(row: &Row, min_effect_pct: f64) -> Option<Outcome> {
    let element = |tag, message| Outcome {
        tag,
        kind: row.verdict.id().to_owned(),
        message,
    };
    match row.verdict {
        Verdict::Improvement | Verdict::NoChange => None,
        Verdict::Regression => Some(element(Tag::Failure, numbers(row, min_effect_pct))),
        Verdict::Missing => Some(element(
            Tag::Failure,
            format!(
                "missing: baseline {}, not in the contender (Rally leaves out the throughput of \
                 a task whose every request failed); counts as a regression",
                side(row.baseline.as_ref(), &row.unit)
            ),
        )),
        Verdict::Inconclusive => Some(element(
            Tag::Skipped,
            format!(
                "{}; neither beyond nor within the min effect{}",
                numbers(row, min_effect_pct),
                row.repetitions_needed.map_or(String::new(), |n| format!(
                    ": about {n} repetitions per side would settle it"
                ))
            ),
        )),
        Verdict::New => Some(element(
            Tag::Skipped,
            format!(
                "new: not in the baseline, nothing to compare with (contender {})",
                side(row.contender.as_ref(), &row.unit)
            ),
        )),
    }
}

/// The comparison as a JUnit XML document: one suite, the workspace's comparison.
pub fn comparison(c: &Comparison) -> String {
    let mut cases: Vec<Case> = (c.rows.iter())
        .map(|row| Case {
            classname: row.test.to_string(),
            name: format!("{} / {}", row.task, row.metric.label()),
            outcome: outcome(row, c.min_effect_pct),
            out: None,
        })
        .collect();
    cases.extend(c.problems.iter().map(|problem| Case {
        classname: c.workspace.clone(),
        name: "reading results".into(),
        outcome: Some(Outcome {
            tag: Tag::Error,
            kind: "unreadable".into(),
            message: problem.clone(),
        }),
        out: None,
    }));
    // What the table prints below its rows: what the verdicts rest on, and configuration
    // changes the verdicts measure.
    let mut said = super::render::comparison_notes(c);
    for (title, diff) in super::render::configuration_changes(c) {
        said.push(format!("{title}\n{diff}"));
    }
    document(&Suite {
        tool: "rallyctl results",
        name: format!("{}: {}", c.workspace, super::render::comparison_summary(c)),
        properties: vec![
            ("workspace", Some(c.workspace.clone())),
            ("baseline_run", c.baseline_run.clone()),
            ("contender_run", c.contender_run.clone()),
            ("baseline_variant", c.baseline_variant.clone()),
            ("min_effect_pct", Some(c.min_effect_pct.to_string())),
        ],
        cases,
        out: said,
    })
}

/// What a test case that did not simply pass holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Failure,
    Error,
    Skipped,
}

impl Tag {
    fn name(self) -> &'static str {
        match self {
            Tag::Failure => "failure",
            Tag::Error => "error",
            Tag::Skipped => "skipped",
        }
    }
}

pub struct Outcome {
    pub tag: Tag,
    /// The `type` attribute: what kind of failure, error or skip.
    pub kind: String,
    /// The numbers behind it, on the `message` attribute, which every CI system shows.
    pub message: String,
}

pub struct Case {
    pub classname: String,
    pub name: String,
    /// None when it passed.
    pub outcome: Option<Outcome>,
    /// What the case has to say even when it passed (its `system-out`).
    pub out: Option<String>,
}

/// A document of one suite, whatever rallyctl command judged its cases.
pub struct Suite {
    /// The command, the `testsuites` name.
    pub tool: &'static str,
    pub name: String,
    /// Left out when none.
    pub properties: Vec<(&'static str, Option<String>)>,
    pub cases: Vec<Case>,
    /// The suite's `system-out`, a paragraph each; left out when empty.
    pub out: Vec<String>,
}

/// A suite as a JUnit XML document, its counts taken from its cases.
pub fn document(suite: &Suite) -> String {
    let count = |tag| {
        (suite.cases.iter())
            .filter(|c| c.outcome.as_ref().is_some_and(|o| o.tag == tag))
            .count()
    };
    let counts = format!(
        "tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\"",
        suite.cases.len(),
        count(Tag::Failure),
        count(Tag::Error),
        count(Tag::Skipped)
    );
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <testsuites name=\"{}\" {counts}>\n  \
         <testsuite name=\"{}\" {counts}>\n    <properties>\n",
        escape(suite.tool),
        escape(&suite.name)
    );
    for (key, value) in &suite.properties {
        if let Some(value) = value {
            out.push_str(&format!(
                "      <property name=\"{key}\" value=\"{}\"/>\n",
                escape(value)
            ));
        }
    }
    out.push_str("    </properties>\n");
    for case in &suite.cases {
        let open = format!(
            "    <testcase classname=\"{}\" name=\"{}\"",
            escape(&case.classname),
            escape(&case.name)
        );
        if case.outcome.is_none() && case.out.is_none() {
            out.push_str(&format!("{open}/>\n"));
            continue;
        }
        out.push_str(&format!("{open}>\n"));
        if let Some(o) = &case.outcome {
            out.push_str(&format!(
                "      <{} type=\"{}\" message=\"{}\"/>\n",
                o.tag.name(),
                escape(&o.kind),
                escape(&o.message)
            ));
        }
        if let Some(said) = &case.out {
            out.push_str(&format!(
                "      <system-out>{}</system-out>\n",
                escape(said)
            ));
        }
        out.push_str("    </testcase>\n");
    }
    if !suite.out.is_empty() {
        out.push_str(&format!(
            "    <system-out>{}</system-out>\n",
            escape(&suite.out.join("\n"))
        ));
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}
