//! The config hash of every test in every plan the repository holds (`plans/`,
//! `tests/fixtures/plans/`), pinned. A changed hash turns every recorded result of that test
//! into a re-run, so a refactor of how plans are read or rendered must leave this snapshot
//! alone; `hash-corpus.toml` sets every setting somewhere, on every provider.

use std::fmt::Write;
use std::path::Path;

use rallyctl::plan::Plan;
use rallyctl::templates::Renderer;

#[test]
fn no_test_of_any_plan_here_changes_its_config_hash() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = ["plans", "tests/fixtures/plans"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(root.join(dir)).unwrap())
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let renderer = Renderer::new();
    let mut out = String::new();
    for file in &files {
        let name = file.strip_prefix(root).unwrap().display();
        let Ok(plan) = Plan::load(file) else {
            writeln!(out, "{name}: does not load").unwrap();
            continue;
        };
        writeln!(out, "{name}:").unwrap();
        for test in plan.suites.iter().flat_map(|s| &s.tests) {
            let hash = renderer.render(test).unwrap().config_hash;
            writeln!(out, "  {} {hash}", test.address).unwrap();
        }
    }
    insta::assert_snapshot!(out);
}
