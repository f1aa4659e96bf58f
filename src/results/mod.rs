//! Results people can read, compare and gate on: Rally's collected reports under `results/`,
//! summarised per test and task, compared run against run, and drawn into an HTML report.
//!
//! Only the files under `results/` and the state file are read; never AWS. A test whose files
//! cannot be read is shown with its error, and never hides the other tests.

pub mod chart;
pub mod compare;
pub mod html;
pub mod junit;
pub mod layout;
pub mod load;
mod markup;
pub mod metrics;
pub mod parse;
pub mod render;
pub mod stats;

use std::path::{Path, PathBuf};

pub use compare::{Comparison, DEFAULT_MIN_EFFECT_PCT, Verdict, compare};
pub use load::{RunView, TestResult, Workspace};
pub use render::{Format, Output};

use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no state at {0}: nothing has been applied yet, or pass the plan or --state PATH")]
    NoState(String),
    #[error("no runs under {0} yet")]
    NoRuns(String),
    #[error("no run `{run}` in this workspace{}", known_runs(.known))]
    UnknownRun { run: String, known: Vec<String> },
    #[error("no baseline recorded: pass --compare RUN, or record one with --baseline RUN")]
    NoBaseline,
    #[error(
        "run `{0}` produced no result (no test's report.csv came home): it cannot be a baseline"
    )]
    NoResultsIn(String),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Chart(#[from] chart::ChartError),
    #[error("cannot compare tests that raced different workloads:{}", mismatches(.0))]
    DifferentWorkloads(Vec<compare::Mismatch>),
    #[error(
        "cannot compare tests that raced on different machines:{}\n\
         their numbers measure the change of cluster; pass --allow-topology-change to compare \
         them anyway",
        mismatches(.0)
    )]
    DifferentTopologies(Vec<compare::Mismatch>),
    #[error("cannot compute the statistics of a comparison: {0}")]
    Stats(#[from] stats::StatsError),
    #[error(
        "cannot compare variants whose races were not interleaved (on one machine, in one run):{}\n\
         race the test again with `--replace SUITE.TEST` (all its variants), or pass \
         --allow-unpaired to compare them anyway",
        lines(.0)
    )]
    Unpaired(Vec<String>),
    #[error(
        "--format junit writes a comparison's verdicts: pass --compare RUN (or --baseline, \
         --variants, --fail-on-regression)"
    )]
    JunitWithoutComparison,
    #[error("no test of this view has a variant `{name}`{}", known_variants(.known))]
    NoVariant { name: String, known: Vec<String> },
}

fn known_variants(known: &[String]) -> String {
    if known.is_empty() {
        " (it has no variants)".into()
    } else {
        format!("; its variants are {}", known.join(", "))
    }
}

fn mismatches(list: &[compare::Mismatch]) -> String {
    list.iter().map(|m| format!("\n  {m}")).collect()
}

fn lines(list: &[String]) -> String {
    list.iter().map(|l| format!("\n  {l}")).collect()
}

fn known_runs(known: &[String]) -> String {
    if known.is_empty() {
        " (it has no runs yet)".into()
    } else {
        format!(
            "; the latest are {} (`rallyctl results --runs` lists them all)",
            known.join(", ")
        )
    }
}

/// Which baseline to compare with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Baseline {
    /// The one recorded in state with `--baseline`; written `baseline`.
    Recorded,
    /// A run id, or `latest`.
    Run(String),
}

impl std::str::FromStr for Baseline {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Baseline, Self::Err> {
        Ok(match s {
            "baseline" => Baseline::Recorded,
            run => Baseline::Run(run.to_owned()),
        })
    }
}

/// What `rallyctl results` shows.
#[derive(Debug, Clone)]
pub struct Query {
    pub format: Output,
    /// Show the results as of this run rather than the latest.
    pub run: Option<String>,
    pub baseline: Option<Baseline>,
    /// The smallest relative change, in percent, that a verdict calls a change.
    pub min_effect_pct: f64,
    /// Gate on regressions (and missing metrics), and on inconclusive comparisons when nothing
    /// regressed, so a CI job can race again rather than fail. A gate compares with the
    /// recorded baseline when no other is named.
    pub fail_on_regression: bool,
    pub fail_on_inconclusive: bool,
    /// Compare the variants of each test in the view instead of two runs: this one against
    /// each other.
    pub variants: Option<String>,
    /// Compare variants whose races were not interleaved, saying so.
    pub allow_unpaired: bool,
    /// Compare tests whose cluster differs between the two runs.
    pub allow_topology_change: bool,
}

/// What `rallyctl results` prints, and why a gate fails (if one does).
pub struct Shown {
    pub text: String,
    pub failed: Option<GateFailure>,
    /// The comparison shown, when there was one (for the CI step summary).
    pub comparison: Option<Comparison>,
}

/// A failed gate and the lines that explain it.
pub enum GateFailure {
    Regression(String),
    Inconclusive(String),
}

impl Workspace {
    /// Records `run` as the workspace's baseline; `_lock` is the state lock, which the caller
    /// takes (and reports on) like every other command that writes state.
    pub fn set_baseline(
        &mut self,
        run: &str,
        _lock: &crate::backend::Lock,
    ) -> Result<String, ResultsError> {
        let run = self.resolve(run)?;
        // A run whose every test failed before racing says nothing to compare with.
        let produced = self
            .test_dirs(&run)?
            .values()
            .any(|dir| dir.join("report.csv").is_file());
        if !produced {
            return Err(ResultsError::NoResultsIn(run));
        }
        // Read again under the lock: state may have moved on since the workspace was opened.
        let mut state =
            (self.backend.load()?).ok_or_else(|| ResultsError::NoState(self.backend.location()))?;
        state.baseline_run = Some(run.clone());
        self.backend.save(&mut state)?;
        self.state = Some(state);
        Ok(run)
    }

    /// The view a query shows: as of `run`, else the latest.
    fn view(&self, run: Option<&str>) -> Result<RunView, ResultsError> {
        match run {
            Some(run) => self.as_of(run),
            None => self.latest(),
        }
    }

    /// The view of `run` (or the latest) and, when there is a baseline to compare with, the
    /// baseline's view and the comparison.
    fn view_and_comparison(
        &self,
        run: Option<&str>,
        baseline: Option<&Baseline>,
        min_effect_pct: f64,
        allow: compare::Allow,
    ) -> Result<(RunView, Option<(RunView, Comparison)>), ResultsError> {
        let contender = self.view(run)?;
        let baseline_run = match baseline {
            None => return Ok((contender, None)),
            Some(Baseline::Run(run)) => run.as_str(),
            Some(Baseline::Recorded) => self.baseline().ok_or(ResultsError::NoBaseline)?,
        };
        let base = self.as_of(baseline_run)?;
        let comparison = compare::compare_runs(&base, &contender, min_effect_pct, allow)?;
        Ok((contender, Some((base, comparison))))
    }

    /// The results, or the comparison when the query has a baseline or names a variant to
    /// compare the others with, in the query's format.
    pub fn show(&self, q: &Query) -> Result<Shown, ResultsError> {
        if let Some(base) = &q.variants {
            let view = self.view(q.run.as_deref())?;
            let (baseline, contender) = variant_views(&view, base)?;
            let unpaired = unpaired(&baseline, &contender, base);
            if !unpaired.is_empty() && !q.allow_unpaired {
                return Err(ResultsError::Unpaired(unpaired));
            }
            let mut comparison =
                compare::compare_variants(&baseline, &contender, q.min_effect_pct)?;
            comparison.baseline_variant = Some(base.clone());
            comparison.unpaired = unpaired;
            return Ok(gate(comparison, q));
        }
        // The gate needs something to compare with: the recorded baseline unless one is named.
        let gated = q.fail_on_regression || q.fail_on_inconclusive;
        let baseline = q
            .baseline
            .clone()
            .or_else(|| gated.then_some(Baseline::Recorded));
        let allow = compare::Allow {
            topology_change: q.allow_topology_change,
        };
        let (contender, compared) =
            self.view_and_comparison(q.run.as_deref(), baseline.as_ref(), q.min_effect_pct, allow)?;
        let Some((_, comparison)) = compared else {
            let Output::Text(format) = q.format else {
                return Err(ResultsError::JunitWithoutComparison);
            };
            let mut text = render::results(&contender, format);
            if let (Format::Table, Some(b)) = (format, self.baseline()) {
                text.push_str(&format!(
                    "Baseline: {b} (compare with it: `--compare baseline`).\n"
                ));
            }
            return Ok(Shown {
                text,
                failed: None,
                comparison: None,
            });
        };
        Ok(gate(comparison, q))
    }

    /// Writes the HTML report of `run` (or the latest), against the given or recorded baseline
    /// when there is one, to `out` (default `results/<workspace>/report.html`).
    pub fn write_report(
        &self,
        run: Option<&str>,
        baseline: Option<&Baseline>,
        min_effect_pct: f64,
        allow: compare::Allow,
        out: Option<&Path>,
    ) -> Result<PathBuf, ResultsError> {
        // Without an explicit choice the report compares with the recorded baseline, if any.
        let baseline = baseline
            .cloned()
            .or_else(|| self.baseline().map(|_| Baseline::Recorded));
        let (contender, compared) =
            self.view_and_comparison(run, baseline.as_ref(), min_effect_pct, allow)?;
        let html = html::report(
            &contender,
            compared.as_ref().map(|(b, c)| (b, c)),
            jiff::Timestamp::now(),
        )?;
        let path = out
            .map(Path::to_owned)
            // Beside the workspace's results in this directory, also when they were read from
            // a remote backend's cache.
            .unwrap_or_else(|| layout::workspace(Path::new(""), &self.name).join("report.html"));
        write_page(&path, &html)?;
        Ok(path)
    }
}

/// Writes a page of the HTML report to `path`, making its directory.
pub fn write_page(path: &Path, html: &str) -> Result<(), ResultsError> {
    let failed = |source| ResultsError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    std::fs::write(path, html).map_err(failed)
}

/// A comparison as the query shows it, and whether its gate fails.
fn gate(comparison: Comparison, q: &Query) -> Shown {
    let regressions = comparison.regressions();
    let inconclusive = comparison.inconclusive();
    let failed = if q.fail_on_regression && !regressions.is_empty() {
        Some(GateFailure::Regression(render::regressions(
            &regressions,
            q.min_effect_pct,
        )))
    } else if q.fail_on_inconclusive && regressions.is_empty() && !inconclusive.is_empty() {
        // Only when nothing regressed: more repetitions cannot undo a regression.
        Some(GateFailure::Inconclusive(render::inconclusive(
            &inconclusive,
            q.min_effect_pct,
        )))
    } else {
        None
    };
    Shown {
        text: match q.format {
            Output::Text(format) => render::comparison(&comparison, format),
            Output::Junit => junit::comparison(&comparison),
        },
        failed,
        comparison: Some(comparison),
    }
}

/// A view split for comparing the variants of its tests: each variant other than `base` is a
/// contender, and the baseline holds `base`'s result under that contender's address, so that
/// rows pair by address and one correction covers every pair of the view.
fn variant_views(view: &RunView, base: &str) -> Result<(RunView, RunView), ResultsError> {
    let empty = || RunView {
        workspace: view.workspace.clone(),
        run: view.run.clone(),
        cost: view.cost,
        tests: vec![],
    };
    let (mut baseline, mut contender) = (empty(), empty());
    for test in &view.tests {
        let Some(variant) = test.variant.as_ref().filter(|v| v.name != base) else {
            continue;
        };
        let of_base = view.tests.iter().find(|t| {
            t.address.suite() == test.address.suite()
                && t.variant
                    .as_ref()
                    .is_some_and(|v| v.test == variant.test && v.name == base)
        });
        if let Some(of_base) = of_base {
            baseline.tests.push(TestResult {
                address: test.address.clone(),
                ..of_base.clone()
            });
            contender.tests.push(test.clone());
        }
    }
    if contender.tests.is_empty() {
        let mut known: Vec<String> = view
            .tests
            .iter()
            .filter_map(|t| Some(t.variant.as_ref()?.name.clone()))
            .collect();
        known.sort();
        known.dedup();
        return Err(ResultsError::NoVariant {
            name: base.to_owned(),
            known,
        });
    }
    Ok((baseline, contender))
}

/// The variant pairs of a variants comparison whose races were not interleaved, each saying
/// where the two raced. Variants are paired when each raced in the same runs on the same
/// machines as the one they are compared with: raced apart (one of them re-raced alone after a
/// failure, or replaced alone) they measure the machine and the hour as much as the change.
fn unpaired(baseline: &RunView, contender: &RunView, base: &str) -> Vec<String> {
    let places = |t: &TestResult| {
        let mut on = t.raced_on.clone();
        on.sort();
        on.dedup();
        on
    };
    let list = |on: &[load::RacedOn]| {
        on.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    baseline
        .tests
        .iter()
        .zip(&contender.tests)
        .filter_map(|(b, c)| {
            let (bo, co) = (places(b), places(c));
            (bo != co).then(|| {
                format!(
                    "{} raced in {}, variant `{base}` in {}",
                    c.address,
                    list(&co),
                    list(&bo)
                )
            })
        })
        .collect()
}
