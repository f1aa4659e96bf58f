//! A comparison as JUnit XML, the report every CI system reads: a test case per test, task and
//! metric (class name the test's address, name `task / metric`). A regression, or a metric the
//! contender lost, is a failure whose message carries the numbers; an improvement or no change
//! passes; a metric that could not be judged (inconclusive, new) is skipped with why; a file
//! that could not be read is an error.

use super::compare::{Comparison, Method, Row, Side, Verdict};
use super::render::{change, p_value, with_spread};

/// `text` as XML character data or an attribute value. Line breaks and tabs are written as
/// references so that an attribute keeps them (a parser turns raw ones into spaces there); the
/// other control characters have no place in XML 1.0, not even as references, and become
/// U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if c.is_control() && c < '\u{80}' || matches!(c, '\u{FFFE}' | '\u{FFFF}') => {
                out.push('\u{FFFD}')
            }
            c => out.push(c),
        }
    }
    out
}

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
fn outcome(row: &Row, min_effect_pct: f64) -> Option<String> {
    let element = |tag: &str, message: String| {
        format!(
            "      <{tag} type=\"{}\" message=\"{}\"/>\n",
            row.verdict.id(),
            escape(&message)
        )
    };
    match row.verdict {
        Verdict::Improvement | Verdict::NoChange => None,
        Verdict::Regression => Some(element("failure", numbers(row, min_effect_pct))),
        Verdict::Missing => Some(element(
            "failure",
            format!(
                "missing: baseline {}, not in the contender (Rally leaves out the throughput of \
                 a task whose every request failed); counts as a regression",
                side(row.baseline.as_ref(), &row.unit)
            ),
        )),
        Verdict::Inconclusive => Some(element(
            "skipped",
            format!(
                "{}; neither beyond nor within the min effect{}",
                numbers(row, min_effect_pct),
                row.repetitions_needed.map_or(String::new(), |n| format!(
                    ": about {n} repetitions per side would settle it"
                ))
            ),
        )),
        Verdict::New => Some(element(
            "skipped",
            format!(
                "new: not in the baseline, nothing to compare with (contender {})",
                side(row.contender.as_ref(), &row.unit)
            ),
        )),
    }
}

/// The comparison as a JUnit XML document: one suite, the workspace's comparison.
pub fn comparison(c: &Comparison) -> String {
    let failures = c.regressions().len();
    let skipped = (c.rows.iter())
        .filter(|r| matches!(r.verdict, Verdict::Inconclusive | Verdict::New))
        .count();
    let errors = c.problems.len();
    let tests = c.rows.len() + errors;
    let name = escape(&format!(
        "{}: {}",
        c.workspace,
        super::render::comparison_summary(c)
    ));
    let counts = format!(
        "tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\""
    );
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <testsuites name=\"rallyctl results\" {counts}>\n  \
         <testsuite name=\"{name}\" {counts}>\n    <properties>\n"
    );
    let properties = [
        ("workspace", Some(c.workspace.clone())),
        ("baseline_run", c.baseline_run.clone()),
        ("contender_run", c.contender_run.clone()),
        ("baseline_variant", c.baseline_variant.clone()),
        ("min_effect_pct", Some(c.min_effect_pct.to_string())),
    ];
    for (key, value) in properties {
        if let Some(value) = value {
            out.push_str(&format!(
                "      <property name=\"{key}\" value=\"{}\"/>\n",
                escape(&value)
            ));
        }
    }
    out.push_str("    </properties>\n");
    for row in &c.rows {
        let open = format!(
            "    <testcase classname=\"{}\" name=\"{}\"",
            escape(&row.test.to_string()),
            escape(&format!("{} / {}", row.task, row.metric.label()))
        );
        match outcome(row, c.min_effect_pct) {
            None => out.push_str(&format!("{open}/>\n")),
            Some(inner) => out.push_str(&format!("{open}>\n{inner}    </testcase>\n")),
        }
    }
    for problem in &c.problems {
        out.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"reading results\">\n      \
             <error type=\"unreadable\" message=\"{}\"/>\n    </testcase>\n",
            escape(&c.workspace),
            escape(problem)
        ));
    }
    // What the table prints below its rows: what the verdicts rest on, and configuration
    // changes the verdicts measure.
    let mut said = super::render::comparison_notes(c);
    for (title, diff) in super::render::configuration_changes(c) {
        said.push(format!("{title}\n{diff}"));
    }
    if !said.is_empty() {
        out.push_str(&format!(
            "    <system-out>{}</system-out>\n",
            escape(&said.join("\n"))
        ));
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn markup_quotes_and_control_characters_are_escaped() {
        assert_eq!(
            escape("a<b>&\"c\"'d'"),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;"
        );
        assert_eq!(escape("x\ny\tz\r"), "x&#10;y&#9;z&#13;");
        // Not allowed in XML 1.0 even as references.
        assert_eq!(
            escape("\u{0}\u{1}\u{1b}[31m\u{7f}\u{FFFF}"),
            "\u{FFFD}\u{FFFD}\u{FFFD}[31m\u{FFFD}\u{FFFD}"
        );
        assert_eq!(escape("µs ±5 %"), "µs ±5 %");
    }
}
