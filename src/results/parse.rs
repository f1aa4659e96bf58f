//! Reading what Rally leaves behind: the CSV report (the metrics), race.json (what raced, and
//! how long each task ran) and the console log (how long the race took).
//!
//! Every problem names the file and, where there is one, the line, so a user can open the file
//! at the spot; a problem with one test's files never stops the others from being read.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Cursor, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::metrics::{Metric, TaskMetrics, Value};

/// A collected file that cannot be used, and where in it the trouble is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}{}: {reason}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct FileError {
    pub path: PathBuf,
    pub line: Option<u64>,
    pub reason: String,
}

impl FileError {
    fn new(path: &Path, line: Option<u64>, reason: impl Into<String>) -> FileError {
        FileError {
            path: path.to_owned(),
            line,
            reason: reason.into(),
        }
    }
}

const CSV_HEADER: [&str; 4] = ["Metric", "Task", "Value", "Unit"];

/// Reads a Rally CSV report (`--report-format=csv`) into its tasks' headline metrics, in the
/// order Rally ran the tasks.
pub fn report_csv(path: &Path) -> Result<Vec<TaskMetrics>, FileError> {
    let bytes =
        std::fs::read(path).map_err(|e| FileError::new(path, None, format!("cannot read: {e}")))?;
    parse_report_csv(path, &bytes)
}

fn parse_report_csv(path: &Path, bytes: &[u8]) -> Result<Vec<TaskMetrics>, FileError> {
    let err = |line: u64, reason: String| FileError::new(path, Some(line), reason);
    if bytes.is_empty() {
        return Err(FileError::new(path, None, "the file is empty"));
    }
    // Rally ends every row with a line break, so a last row without one was cut off, possibly
    // inside a number that would still parse (5.868044 cut to 5.86).
    if !bytes.ends_with(b"\n") {
        let last = bytes.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        return Err(err(
            last,
            "the file ends in the middle of this line: the report is truncated".into(),
        ));
    }
    CSV_READER.with_borrow_mut(|reader| {
        let data = reader.get_mut().get_mut();
        data.clear();
        data.extend_from_slice(bytes);
        // Back to a fresh reader's state: the start, line 1, no record read.
        reader
            .seek_raw(SeekFrom::Start(0), csv::Position::new())
            .map_err(|e| FileError::new(path, None, format!("cannot read: {e}")))?;
        let tasks = read_report_csv(path, bytes, reader);
        reader.get_mut().get_mut().clear();
        tasks
    })
}

thread_local! {
    /// A CSV reader per thread, handed each report in turn: making one builds its state
    /// machine, which took as long as reading a whole report (and `history` reads thousands).
    static CSV_READER: RefCell<csv::Reader<Cursor<Vec<u8>>>> = RefCell::new({
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(Cursor::new(Vec::new()));
        // Seeking reads the header row first: done here, on no data, so that it never
        // happens to a report.
        reader
            .seek_raw(SeekFrom::Start(0), csv::Position::new())
            .expect("an empty reader in memory seeks");
        reader
    });
}

/// Rally's CSV report `bytes`, which `reader` has just been given.
fn read_report_csv(
    path: &Path,
    bytes: &[u8],
    reader: &mut csv::Reader<Cursor<Vec<u8>>>,
) -> Result<Vec<TaskMetrics>, FileError> {
    let err = |line: u64, reason: String| FileError::new(path, Some(line), reason);
    let mut tasks: Vec<TaskMetrics> = Vec::new();
    // One record read into again and again: a report has a hundred rows, and a year of
    // nightly history thousands of reports.
    let mut record = csv::StringRecord::new();
    for i in 0usize.. {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e
                    .position()
                    .map_or(i as u64 + 1, |p| line_at(bytes, p.byte()));
                return Err(err(line, format!("not a CSV row: {e}")));
            }
        }
        // Counted only for an error: counting every row's line from the file's start made
        // reading a report quadratic in its rows.
        let line = || {
            record
                .position()
                .map_or(i as u64 + 1, |p| line_at(bytes, p.byte()))
        };
        if i == 0 {
            if record.iter().ne(CSV_HEADER) {
                return Err(err(
                    line(),
                    format!(
                        "expected the header `{}` of Rally's CSV report, found `{}`",
                        CSV_HEADER.join(","),
                        record.iter().collect::<Vec<_>>().join(",")
                    ),
                ));
            }
            continue;
        }
        if record.len() != CSV_HEADER.len() {
            return Err(err(
                line(),
                format!(
                    "expected 4 fields ({}), found {}",
                    CSV_HEADER.join(","),
                    record.len()
                ),
            ));
        }
        let (name, task, value, unit) = (&record[0], &record[1], &record[2], &record[3]);
        // Cluster-wide rows (GC, merges, store size) have no task and an empty value at times;
        // a value that is there must be a number in any row, or the file is damaged.
        if value.is_empty() {
            continue;
        }
        let number: f64 = value.parse().map_err(|_| {
            err(
                line(),
                format!("`{value}` is not a number (metric `{name}`, task `{task}`)"),
            )
        })?;
        let Some(metric) = Metric::from_csv_name(name).filter(|_| !task.is_empty()) else {
            continue;
        };
        let index = match tasks.iter().position(|t| t.task == task) {
            Some(index) => index,
            None => {
                tasks.push(TaskMetrics {
                    task: task.to_owned(),
                    duration_s: None,
                    metrics: BTreeMap::new(),
                });
                tasks.len() - 1
            }
        };
        tasks[index]
            .metrics
            .insert(metric, Value::new(number, unit.to_owned()));
    }
    if tasks.is_empty() {
        return Err(FileError::new(
            path,
            None,
            "no task metrics in the report (no row with a task name)",
        ));
    }
    Ok(tasks)
}

/// The line a record starting at `byte` is on. csv's own line count is off by one after
/// every CRLF line end, and Rally writes CRLF; a record's start may also point at the line end
/// before it.
fn line_at(bytes: &[u8], byte: u64) -> u64 {
    let mut start = (byte as usize).min(bytes.len());
    while start < bytes.len() && matches!(bytes[start], b'\r' | b'\n') {
        start += 1;
    }
    1 + bytes[..start].iter().filter(|&&b| b == b'\n').count() as u64
}

/// What race.json says about the race: what raced and how long each task ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RaceInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rally_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub race_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge: Option<String>,
    /// Rally leaves them out when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_params: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub car: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution_version: Option<String>,
    /// Rally's and Elasticsearch's commits, which `history` shows per point; kept out of
    /// `results`' JSON, whose shape scripts read.
    #[serde(skip)]
    pub rally_revision: Option<String>,
    #[serde(skip)]
    pub distribution_revision: Option<String>,
    /// Seconds each task ran, by task name.
    #[serde(skip)]
    pub task_durations: BTreeMap<String, f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RaceJson {
    rally_version: Option<String>,
    rally_revision: Option<String>,
    race_id: Option<String>,
    track: Option<String>,
    challenge: Option<String>,
    track_params: Option<serde_json::Value>,
    /// A list of car names (`["4gheap", "ea"]`); older Rallies wrote one string.
    car: Option<serde_json::Value>,
    cluster: Option<Cluster>,
    results: Option<Results>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    distribution_version: Option<String>,
    revision: Option<String>,
}

#[derive(Deserialize)]
struct Results {
    #[serde(default)]
    op_metrics: Vec<OpMetric>,
}

#[derive(Deserialize)]
struct OpMetric {
    task: String,
    duration: Option<f64>,
}

/// Reads race.json (`$RALLY_HOME/.rally/benchmarks/races/<race-id>/race.json`).
pub fn race_json(path: &Path) -> Result<RaceInfo, FileError> {
    let bytes =
        std::fs::read(path).map_err(|e| FileError::new(path, None, format!("cannot read: {e}")))?;
    let race: RaceJson = serde_json::from_slice(&bytes).map_err(|e| {
        FileError::new(
            path,
            Some(e.line() as u64),
            format!("not a Rally race.json: {e}"),
        )
    })?;
    let car = race.car.and_then(|car| match car {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(serde_json::Value::as_str)
                .collect::<Vec<_>>()
                .join("+"),
        ),
        _ => None,
    });
    Ok(RaceInfo {
        rally_version: race.rally_version,
        race_id: race.race_id,
        track: race.track,
        challenge: race.challenge,
        track_params: race.track_params,
        car,
        rally_revision: race.rally_revision,
        distribution_version: race
            .cluster
            .as_ref()
            .and_then(|c| c.distribution_version.clone()),
        distribution_revision: race.cluster.and_then(|c| c.revision),
        task_durations: race
            .results
            .map(|r| {
                r.op_metrics
                    .into_iter()
                    .filter_map(|op| Some((op.task, op.duration?)))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// The name of the file rallyctl writes beside each race's files ([`Configuration`]).
pub const CONFIGURATION_FILE: &str = "rallyctl.json";

/// The configuration a race ran, as its test's record in state had it: kept beside the race's
/// files, because state forgets it once the test runs with another configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Configuration {
    pub config_hash: String,
    pub settings: serde_json::Value,
    pub race_command: String,
    /// What [`crate::state::TestRecord::inputs`] holds.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
}

impl Configuration {
    /// The configuration a test's record holds.
    pub fn of(record: &crate::state::TestRecord) -> Configuration {
        Configuration {
            config_hash: record.config_hash.clone(),
            settings: record.settings.value(),
            race_command: record.race_command.clone(),
            inputs: record.inputs.clone(),
        }
    }
}

/// Reads a race's [`CONFIGURATION_FILE`].
pub fn configuration(path: &Path) -> Result<Configuration, FileError> {
    written(path, "configuration")
}

/// A JSON file rallyctl wrote beside a race's files, read back; `what` names it in the error.
fn written<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, FileError> {
    let bytes =
        std::fs::read(path).map_err(|e| FileError::new(path, None, format!("cannot read: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        FileError::new(
            path,
            Some(e.line() as u64),
            format!("not a {what} rallyctl wrote: {e}"),
        )
    })
}

/// The file rallyctl writes beside a failed race's logs, under `results/`: why the race
/// failed, which a run's listing and a past run's view read once state has moved on.
pub const FAILURE_FILE: &str = "failure.json";

/// What [`FAILURE_FILE`] holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaceFailure {
    pub step: crate::state::Step,
    pub error: String,
}

/// Reads a race's [`FAILURE_FILE`].
pub fn race_failure(path: &Path) -> Result<RaceFailure, FileError> {
    written(path, "failure")
}

/// How long the race took by Rally's own count: the `[INFO] SUCCESS (took 37 seconds)` (or
/// `FAILURE`) line esrally ends its console output with. `None` when the log has no such line.
pub fn race_log_seconds(path: &Path) -> Option<u64> {
    let text = String::from_utf8_lossy(&std::fs::read(path).ok()?).into_owned();
    text.lines().rev().find_map(|line| {
        let rest = &line[line.rfind("(took ")? + "(took ".len()..];
        rest.strip_suffix(" seconds)")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<TaskMetrics>, String> {
        parse_report_csv(Path::new("r/report.csv"), text.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn headline_rows_are_read_per_task_and_the_rest_ignored() {
        let tasks = parse(
            "Metric,Task,Value,Unit\r\nTotal Young Gen GC time,,0.0,s\r\nMean Throughput,bulk,9,docs/s\r\n\
             Median Throughput,bulk,10.5,docs/s\r\n99th percentile latency,bulk,7,ms\r\n\
             error rate,bulk,0.00,%\r\nerror rate,search,100.00,%\r\n",
        )
        .unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].task, "bulk");
        assert_eq!(tasks[0].metrics.len(), 3);
        assert_eq!(tasks[0].get(Metric::Throughput).unwrap().value, 10.5);
        assert_eq!(tasks[0].get(Metric::LatencyP99).unwrap().unit, "ms");
        assert_eq!(tasks[1].get(Metric::ErrorRate).unwrap().value, 100.0);
        assert!(tasks[1].get(Metric::Throughput).is_none());
    }

    #[test]
    fn damage_is_named_by_file_and_line() {
        for (text, expect) in [
            ("", "r/report.csv: the file is empty"),
            (
                "Metric,Task,Value,Unit\nerror rate,bulk,0.00,%\n50th percentile latency,bu",
                "r/report.csv:3: the file ends in the middle of this line: the report is truncated",
            ),
            (
                "Metric,Task,Value,Unit\nerror rate,bulk,0.00\n",
                "r/report.csv:2: expected 4 fields (Metric,Task,Value,Unit), found 3",
            ),
            (
                "Metric,Task,Value,Unit\nerror rate,bulk,zero,%\n",
                "r/report.csv:2: `zero` is not a number (metric `error rate`, task `bulk`)",
            ),
            (
                "<html>\n",
                "r/report.csv:1: expected the header `Metric,Task,Value,Unit` of Rally's CSV report, found `<html>`",
            ),
            (
                "Metric,Task,Value,Unit\nDataset size,,0.1,GB\n",
                "r/report.csv: no task metrics in the report (no row with a task name)",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err(), expect, "{text:?}");
        }
    }

    /// One CSV reader serves every report its thread reads: a report whose damage stopped
    /// the reading part-way leaves nothing behind for the next one.
    #[test]
    fn a_damaged_report_leaves_nothing_for_the_next() {
        let path = Path::new("r/report.csv");
        for damaged in [
            &b"Metric,Task,Value,Unit\r\nerror rate,a\xff,0,%\r\nerror rate,b,0,%\r\n"[..],
            b"Metric,Task,Value,Unit\r\nerror rate,a,x,%\r\nerror rate,b,0,%\r\n",
        ] {
            assert_eq!(parse_report_csv(path, damaged).unwrap_err().line, Some(2));
            let tasks = parse("Metric,Task,Value,Unit\r\nMedian Throughput,c,5,ops/s\r\n").unwrap();
            assert_eq!(tasks.len(), 1);
            assert_eq!(tasks[0].task, "c");
            assert_eq!(tasks[0].get(Metric::Throughput).unwrap().value, 5.0);
            let err = parse("Metric,Task,Value,Unit\r\nerror rate,d,0,%\r\nerror rate,d,y,%\r\n")
                .unwrap_err();
            assert!(err.starts_with("r/report.csv:3: `y`"), "{err}");
        }
    }

    #[test]
    fn lines_are_counted_right_with_rallys_crlf_line_ends() {
        let err = parse("Metric,Task,Value,Unit\r\nerror rate,a,0,%\r\nerror rate,b,x,%\r\n")
            .unwrap_err();
        assert!(err.starts_with("r/report.csv:3: `x`"), "{err}");
    }

    #[test]
    fn invalid_utf8_is_named_by_line() {
        let err = parse_report_csv(
            Path::new("r.csv"),
            b"Metric,Task,Value,Unit\nerror rate,b\xff,0,%\n",
        )
        .unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
    }
}
