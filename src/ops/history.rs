//! `history`: every run's results read back, each test's, task's and metric's series over the
//! runs that raced it, and its change points.

use std::path::Path;

use anyhow::{Result, bail};

use crate::history::changepoints::Settings;
use crate::history::news::{self, NewChange};
use crate::history::render;
use crate::history::series::{self, Filter, History, Raced, Series, Versions};
use crate::notify::{self, Kind, Message};
use crate::results::load::run_started;
use crate::results::{ResultsError, Workspace, html, write_page};
use crate::ui;

/// What `rallyctl history` shows.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub filter: Filter,
    pub settings: Settings,
    /// Also the series without a change.
    pub all: bool,
    /// Only the runs that started in this window (both ends included).
    pub since: Option<jiff::Timestamp>,
    pub until: Option<jiff::Timestamp>,
}

pub fn history(ws: &Workspace, q: &Query) -> Result<History> {
    let (runs, raced) = read(ws, q)?;
    let series = series::build(&raced, &q.filter, &q.settings)?;
    Ok(shown(ws, q, runs.len(), series))
}

/// [`history`], and the change points its newest run brought ([`news`]): the series searched
/// again without that run.
pub fn history_and_news(ws: &Workspace, q: &Query) -> Result<(History, News)> {
    let (runs, raced) = read(ws, q)?;
    let series = series::build(&raced, &q.filter, &q.settings)?;
    let newest = runs.last().expect("read refuses a history without runs");
    // `raced` is in run order: the newest run's results come last.
    let before = raced.partition_point(|r| &r.run != newest);
    let earlier = series::build(&raced[..before], &q.filter, &q.settings)?;
    let news = News {
        run: newest.clone(),
        changes: news::news(&series, &earlier),
    };
    Ok((shown(ws, q, runs.len(), series), news))
}

/// The change points a history's newest run brought.
pub struct News {
    /// The newest run.
    pub run: String,
    pub changes: Vec<NewChange>,
}

/// The webhook's message about the change points `news` holds; none when it holds none.
pub fn notification(workspace: &str, news: &News) -> Option<Message> {
    let n = news.changes.len();
    if n == 0 {
        return None;
    }
    let mut text = format!(
        "rallyctl found {n} new change point{} in workspace `{workspace}` (run {}):",
        if n == 1 { "" } else { "s" },
        news.run
    );
    for c in news.changes.iter().take(notify::TEXT_ROWS) {
        text.push_str(&format!("\n• {}", render::new_change(c)));
    }
    if n > notify::TEXT_ROWS {
        text.push_str(&format!("\n… and {} more", n - notify::TEXT_ROWS));
    }
    Some(Message {
        text,
        kind: Kind::ChangePoint,
        workspace: workspace.to_owned(),
        run_id: Some(news.run.clone()),
        verdicts: Vec::new(),
        failures: Vec::new(),
        changes: news.changes.clone(),
    })
}

/// What each run raced, in run order, of the runs in `q`'s window.
fn read(ws: &Workspace, q: &Query) -> Result<(Vec<String>, Vec<Raced>)> {
    let mut runs = ws.run_dirs()?;
    if runs.is_empty() {
        return Err(ResultsError::NoRuns(ws.backend.results_location(&ws.name)).into());
    }
    let all_runs = runs.len();
    // A run whose start its id does not tell lies in no window.
    runs.retain(|run| {
        (q.since.is_none() && q.until.is_none())
            || run_started(run)
                .is_some_and(|t| q.since.is_none_or(|s| t >= s) && q.until.is_none_or(|u| t <= u))
    });
    if runs.is_empty() {
        let bound = |t: Option<jiff::Timestamp>| t.map_or("-".into(), |t| t.to_string());
        bail!(
            "none of the {all_runs} runs started between --since {} and --until {}",
            bound(q.since),
            bound(q.until)
        );
    }
    // A year of nightly runs is tens of thousands of files: the runs are read on every core,
    // then taken in run order.
    let read = crate::parallel::map(&runs, 1, |run| ws.raced_in(run));
    let mut raced = Vec::new();
    for (run, tests) in runs.iter().zip(read) {
        for test in tests? {
            for problem in &test.problems {
                ui::warn(&format!("{} in run {run}: {problem}", test.address));
            }
            // A failed race, or one with failed requests, measured nothing to put in a series.
            if test.repetitions == 0 {
                continue;
            }
            raced.push(Raced {
                time: run_started(run),
                run: run.clone(),
                config_hash: test.configuration.map(|c| c.config_hash),
                versions: test
                    .race
                    .map(|r| Versions {
                        rally_version: r.rally_version,
                        rally_revision: r.rally_revision,
                        elasticsearch_version: r.distribution_version,
                        elasticsearch_revision: r.distribution_revision,
                    })
                    .unwrap_or_default(),
                test: test.address,
                tasks: test.tasks,
            });
        }
    }
    unknown_filters(&raced, &q.filter)?;
    Ok((runs, raced))
}

/// The history of `runs` runs as `q` shows it: without the series that did not change, unless
/// all are asked for.
fn shown(ws: &Workspace, q: &Query, runs: usize, mut series: Vec<Series>) -> History {
    let series_searched = series.len();
    if !q.all {
        series.retain(|s| !s.changes.is_empty());
    }
    History {
        workspace: ws.name.clone(),
        runs,
        max_pvalue: q.settings.max_pvalue,
        min_magnitude: q.settings.min_magnitude,
        series_searched,
        series,
    }
}

/// Writes the trends page of every series over the runs up to `until` (all without) to
/// `path`, its change points found with `settings`, when there are two runs or more to draw;
/// how many there were.
pub fn write_trends(
    ws: &Workspace,
    until: Option<jiff::Timestamp>,
    settings: Settings,
    path: &Path,
) -> Result<usize> {
    let h = history(
        ws,
        &Query {
            all: true,
            until,
            settings,
            ..Query::default()
        },
    )?;
    if h.runs > 1 {
        write_page(path, &html::trends(&h, jiff::Timestamp::now())?)?;
    }
    Ok(h.runs)
}

/// A test or task the filters name that no run raced: a typo would otherwise show nothing.
fn unknown_filters(raced: &[Raced], filter: &Filter) -> Result<()> {
    let mut tests: Vec<String> = raced.iter().map(|r| r.test.to_string()).collect();
    let mut tasks: Vec<&str> = (raced.iter())
        .flat_map(|r| r.tasks.iter().map(|t| t.task.as_str()))
        .collect();
    tests.sort();
    tests.dedup();
    tasks.sort();
    tasks.dedup();
    if let Some(t) = filter
        .tests
        .iter()
        .find(|t| !tests.contains(&t.to_string()))
    {
        bail!(
            "no run raced test `{t}` with results; the tests with a history are {}",
            tests.join(", ")
        );
    }
    if let Some(t) = filter.tasks.iter().find(|t| !tasks.contains(&t.as_str())) {
        bail!(
            "no run raced task `{t}` with results; the tasks with a history are {}",
            tasks.join(", ")
        );
    }
    Ok(())
}
