//! The results tree, written in this one place: the collector writes where these functions
//! say, and every reader (the `results` command, the backends' uploads and downloads) looks
//! there.
//!
//! `results/<workspace>/<run>/<suite>/<test>/[repetition-<k>/]`, below a base directory: the
//! directory rallyctl runs in, or the tree of cached downloads of a remote backend.

use std::path::{Path, PathBuf};

use crate::address::{Address, slug};

const ROOT: &str = "results";
const REPETITION_PREFIX: &str = "repetition-";

/// A workspace's results below `base`.
pub fn workspace(base: &Path, workspace: &str) -> PathBuf {
    base.join(ROOT).join(slug(workspace))
}

/// A run's directory in the workspace's results directory `workspace_dir`.
pub fn run(workspace_dir: &Path, run_id: &str) -> PathBuf {
    workspace_dir.join(slug(run_id))
}

/// A test's directory of a run.
pub fn test(workspace_dir: &Path, run_id: &str, address: &Address) -> PathBuf {
    run(workspace_dir, run_id).join(address.path())
}

/// The directory a test's race `repetition` keeps its files in, under the test's directory of
/// its run: the first race's files lie in the test's own directory, where a test that races
/// once always had them.
pub fn repetition(test_dir: &Path, repetition: u32) -> PathBuf {
    if repetition <= 1 {
        test_dir.to_owned()
    } else {
        test_dir.join(format!("{REPETITION_PREFIX}{repetition}"))
    }
}

/// The repetition a directory of a test's directory holds, if it is one of [`repetition`]'s.
pub fn repetition_of(name: &str) -> Option<u32> {
    name.strip_prefix(REPETITION_PREFIX)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_race_lies_in_its_workspace_run_test_and_repetition() {
        let address: Address = "s.t".parse().unwrap();
        let ws = workspace(Path::new("base"), "perf");
        let t = test(&ws, "20261202T100000Z-abcdef", &address);
        assert_eq!(
            (repetition(&t, 1), repetition(&t, 2)),
            (
                PathBuf::from("base/results/perf/20261202T100000Z-abcdef/s/t"),
                PathBuf::from("base/results/perf/20261202T100000Z-abcdef/s/t/repetition-2")
            )
        );
        assert_eq!(repetition_of("repetition-2"), Some(2));
        assert_eq!(repetition_of("logs"), None);
    }
}
