//! Bringing a race's files home: unpacked under `results/`, each with its sha256 for state,
//! and checked the way `results` reads them (the same CSV reader): a race whose requests
//! failed is no clean result.

use std::path::Path;

use crate::results::parse;
use crate::state::{ResultFile, TestRecord};

/// Unpacks a tar stream of collected files into `dir`; entries that would land outside it
/// (`../`, absolute paths: a hostile machine) are skipped.
pub fn unpack(bytes: &[u8], dir: &Path) -> std::io::Result<Vec<ResultFile>> {
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(bytes);
    let mut files = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let rel = entry.path()?.into_owned();
        // unpack_in refuses paths that climb out of `dir`.
        if !entry.unpack_in(dir)? {
            continue;
        }
        let path = dir.join(&rel);
        let content = std::fs::read(&path)?;
        let path = path
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        files.push(ResultFile::of(path, &content));
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Writes `rallyctl.json` beside a race's files: the configuration the race ran (the
/// record's config hash, settings, race command and inputs), so that a comparison with this
/// run knows its workload and what changed once state has moved on to another configuration.
/// It takes the place of a file of that name the machine sent, in `files` too.
pub fn describe(
    dir: &Path,
    record: &TestRecord,
    files: &mut Vec<ResultFile>,
) -> std::io::Result<()> {
    write_beside(
        dir,
        parse::CONFIGURATION_FILE,
        &parse::Configuration::of(record),
        files,
    )
}

/// Writes [`parse::FAILURE_FILE`] beside a failed race's files (or where they would have been,
/// when none could be brought home): why it failed, for a look at the run once state has moved
/// on.
pub fn describe_failure(
    dir: &Path,
    failure: &parse::RaceFailure,
    files: &mut Vec<ResultFile>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_beside(dir, parse::FAILURE_FILE, failure, files)
}

/// Writes `value` as JSON to `dir/name`, taking the place of a file of that name the machine
/// sent, in `files` too.
fn write_beside(
    dir: &Path,
    name: &str,
    value: &impl serde::Serialize,
    files: &mut Vec<ResultFile>,
) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let path = dir.join(name);
    std::fs::write(&path, &bytes)?;
    let file = ResultFile::of(path, &bytes);
    files.retain(|f| f.path != file.path);
    files.push(file);
    Ok(())
}

/// Copies a finished race's files into `dir`, its directory in another run than the one it
/// raced in; a race's files lie side by side, so each keeps its name.
pub fn copy_race(files: &[ResultFile], dir: &Path) -> std::io::Result<Vec<ResultFile>> {
    std::fs::create_dir_all(dir)?;
    let mut copied = Vec::with_capacity(files.len());
    for file in files {
        let name = file.path.file_name().ok_or_else(|| {
            std::io::Error::other(format!("{} names no file", file.path.display()))
        })?;
        let content = std::fs::read(&file.path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", file.path.display())))?;
        let path = dir.join(name);
        std::fs::write(&path, &content)?;
        copied.push(ResultFile::of(path, &content));
    }
    Ok(copied)
}

/// The collected report, or why there is none.
pub fn report(files: &[ResultFile]) -> Result<&Path, String> {
    files
        .iter()
        .find(|f| f.path.ends_with("report.csv"))
        .map(|f| f.path.as_path())
        .ok_or_else(|| "the race left no report.csv".to_owned())
}

/// Why the report is no clean result: a task with an error rate above zero (Rally exits 0
/// under `--on-error=continue` however many requests failed), or a report that cannot be read.
pub fn problem(report: &Path) -> Option<String> {
    let tasks = match parse::report_csv(report) {
        Ok(tasks) => tasks,
        Err(e) => return Some(format!("the report cannot be read: {e}")),
    };
    let bad: Vec<String> = tasks
        .iter()
        .filter_map(|t| Some(format!("{} {}%", t.task, t.failed_requests()?)))
        .collect();
    (!bad.is_empty()).then(|| {
        format!(
            "requests failed during the race (error rate: {})",
            bad.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn unpacking_refuses_paths_outside_the_results_directory() {
        let files = vec![
            (
                PathBuf::from("report.csv"),
                b"Metric,Task,Value,Unit\n".to_vec(),
                0o644,
            ),
            (PathBuf::from("sub/race.log"), b"log".to_vec(), 0o644),
        ];
        let bundle = crate::staging::tar(&files).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = unpack(&bundle, dir.path()).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].sha256,
            crate::state::sha256_hex(b"Metric,Task,Value,Unit\n")
        );

        let mut evil = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        // Bypasses the builder's own path check, as a hostile machine could.
        header.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../escape.tx");
        header.set_cksum();
        evil.append(&header, &b"x"[..]).unwrap();
        let evil = evil.into_inner().unwrap();
        let inner = dir.path().join("inner");
        let out = unpack(&evil, &inner).unwrap();
        assert!(out.is_empty());
        assert!(!dir.path().join("escape.tx").exists());
    }

    /// The configuration beside a race's files is the record's, whatever the machine sent
    /// under that name.
    #[test]
    fn the_configuration_beside_the_files_is_the_records() {
        let sent = vec![
            (PathBuf::from("./report.csv"), b"x".to_vec(), 0o644),
            (PathBuf::from("./rallyctl.json"), b"{}".to_vec(), 0o644),
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut files = unpack(&crate::staging::tar(&sent).unwrap(), dir.path()).unwrap();
        let mut record = TestRecord::new(
            "abc".into(),
            serde_json::json!({"track": {"named": "geonames"}}).into(),
            "esrally race".into(),
            crate::state::Status::Completed,
        );
        record.inputs.insert("race.sh".into(), "00".into());
        describe(dir.path(), &record, &mut files).unwrap();
        let described: Vec<_> = files
            .iter()
            .filter(|f| f.path.ends_with(parse::CONFIGURATION_FILE))
            .collect();
        assert_eq!(described.len(), 1, "{files:?}");
        let read = parse::configuration(&described[0].path).unwrap();
        assert_eq!(read, parse::Configuration::of(&record));
        let bytes = std::fs::read(&described[0].path).unwrap();
        assert_eq!(described[0].sha256, crate::state::sha256_hex(&bytes));
    }

    #[test]
    fn an_error_rate_above_zero_is_a_problem_and_zero_is_not() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rally");
        assert_eq!(problem(&fixtures.join("success/report.csv")), None);
        let bad = problem(&fixtures.join("error-rate/report.csv")).unwrap();
        assert!(bad.starts_with("requests failed during the race"), "{bad}");
    }
}
