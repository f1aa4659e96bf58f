//! The upload bundle: everything a test's run directory needs on the machine (the rendered
//! scripts, rally.ini, Rally's parameter files and tags, a local track), as one tar stream.

use std::path::{Path, PathBuf};

use crate::plan::{Test, TrackSource};
use crate::templates::{self, Artifacts, Renderer, Secrets, TemplateError};

/// One file of the bundle: its path in the run directory, its bytes and mode.
pub type File = (PathBuf, Vec<u8>, u32);

/// What a test's run tags its race with, so that a result names where it came from.
pub struct Origin<'a> {
    pub workspace: &'a str,
    pub run_id: &'a str,
}

/// The bundle of `test` for one run, as a tar stream. The rally.ini gets the environment's
/// values (a metrics store's host and user); secrets never reach it.
pub fn bundle(
    renderer: &Renderer,
    test: &Test,
    artifacts: &Artifacts,
    origin: &Origin<'_>,
) -> Result<Vec<u8>, TemplateError> {
    let rally_ini = renderer.rally_ini(&test.settings, Secrets::FromEnv)?;
    let user_tags = serde_json::to_string_pretty(&serde_json::json!({
        "rallyctl_workspace": origin.workspace,
        "rallyctl_run": origin.run_id,
        "rallyctl_test": test.address.to_string(),
    }))
    .expect("JSON serializes");
    let mut files: Vec<File> = vec![
        (
            "install.sh".into(),
            artifacts.install().as_bytes().to_vec(),
            0o755,
        ),
        (
            "race.sh".into(),
            artifacts.race().as_bytes().to_vec(),
            0o755,
        ),
        ("rally.ini".into(), rally_ini.into_bytes(), 0o600),
        (
            "track-params.json".into(),
            templates::params_json(&test.settings.track_params).into_bytes(),
            0o644,
        ),
        (
            "car-params.json".into(),
            templates::params_json(&test.settings.car_params).into_bytes(),
            0o644,
        ),
        ("user-tags.json".into(), user_tags.into_bytes(), 0o644),
    ];
    if let Some(node) = artifacts.node() {
        files.push(("node.sh".into(), node.as_bytes().to_vec(), 0o755));
    }
    if let TrackSource::Path(dir) = &test.settings.track {
        let dir = dir.read();
        for rel in templates::list_files(dir)? {
            let path = dir.join(&rel);
            let bytes =
                std::fs::read(&path).map_err(|source| TemplateError::Read { path, source })?;
            files.push((Path::new("track").join(rel), bytes, 0o644));
        }
    }
    tar(&files).map_err(|source| TemplateError::Read {
        path: "upload bundle".into(),
        source,
    })
}

/// Files as a tar stream, with fixed times so that equal files give equal bytes.
pub fn tar(files: &[File]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, path, bytes.as_slice())?;
    }
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    fn names(cluster: &str) -> Vec<(String, u32)> {
        let text = format!(
            "version = 1\nname = \"w\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-1\"\n\
             instance_type = \"m5.large\"\ntrack = \"x\"\ndistribution_version = \"8.15.0\"\n\
             [[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"t\"\n{cluster}\n"
        );
        let plan = Plan::parse(Path::new("t.toml"), &text).unwrap();
        let test = plan.tests().next().unwrap();
        let renderer = Renderer::new();
        let artifacts = renderer.render(test).unwrap();
        let origin = Origin {
            workspace: "w",
            run_id: "r",
        };
        let bundle = bundle(&renderer, test, &artifacts, &origin).unwrap();
        tar::Archive::new(&bundle[..])
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                (name, e.header().mode().unwrap())
            })
            .collect()
    }

    /// Every machine of a cluster test gets one bundle, node.sh in it; other tests' bundles
    /// are as they were.
    #[test]
    fn only_a_cluster_tests_bundle_carries_node_sh() {
        let with = names("cluster = { nodes = 2 }");
        assert!(with.contains(&("node.sh".to_owned(), 0o755)), "{with:?}");
        let without = names("");
        assert!(without.iter().all(|(n, _)| n != "node.sh"), "{without:?}");
        assert_eq!(with.len(), without.len() + 1);
    }
}
