//! ARCHITECTURE.md's "may not" column and the project's stated rules, where reading the source
//! files can check them (as rust-analyzer's `tidy.rs` does). Each rule is a function of one
//! file that names every violation at file:line; each has a test feeding it a violation, so that
//! a rule that stopped seeing anything fails too.
//!
//! Modules are named by path prefix (`src/plan` is `src/plan.rs` and `src/plan/**`), so a
//! module split into files, or a file added to one, is held to its module's rules.

use std::path::{Path, PathBuf};

/// One source file: its path from the crate root (`/`-separated) and its text.
struct Source {
    path: String,
    text: String,
}

/// A place in a file that breaks a rule: what was found there, and why it may not be.
#[derive(Debug)]
struct Violation {
    path: String,
    line: usize,
    found: String,
    why: &'static str,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: `{}`: {}",
            self.path, self.line, self.found, self.why
        )
    }
}

type Rule = fn(&Source) -> Vec<Violation>;

const RULES: &[Rule] = &[
    ec2_only_in_the_aws_provider,
    price_list_only_in_price_list,
    providers_take_only_machine_from_state,
    plan_reads_no_state_and_no_network,
    walk_and_lifecycle_name_no_provider,
    templates_see_no_provider_types,
    remote_knows_no_provider,
    state_knows_not_where_it_is_kept,
    change_points_are_pure_computation,
    the_simulation_stays_in_its_seams,
    no_ignored_tests,
    no_dbg,
    tests_share_nothing_through_a_static_lock,
];

/// Today's violations, each with why it stands. The tidy test fails when one no longer occurs,
/// so that the list only shrinks.
const EXCEPTIONS: &[(&str, &str, &str)] = &[
    (
        "src/provider/ssh.rs",
        "crate::state",
        "a lease names its holder as the state lock does (`state::holder_gone`)",
    ),
    (
        "src/provider/ssh.rs",
        "crate::state::LockHolder",
        "a lease names its holder as the state lock does",
    ),
    (
        "src/provider/fake.rs",
        "crate::state::RecordedSettings",
        "the fake (tests only) refuses a release whose settings differ from those recorded",
    ),
];

/// Spelled in two pieces so that this file does not break the rules it states.
const DBG: &str = concat!("dbg", "!(");
const IGNORE: &str = concat!("#[", "ignore");

/// Whether `path` is in module `module` (`src/walk`: `src/walk.rs` or under `src/walk/`).
fn in_module(path: &str, module: &str) -> bool {
    path.strip_prefix(module)
        .is_some_and(|rest| rest == ".rs" || rest.starts_with('/'))
}

/// Each line's code with its `//` comment cut off (doc links name modules they do not use), by
/// line number from 1.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.split_once("//").map_or(line, |(code, _)| code)))
}

/// Whether a name starts at `at` in `code` (it is not the tail of a longer one).
fn starts_a_name(code: &str, at: usize) -> bool {
    !code[..at]
        .chars()
        .next_back()
        .is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// Where `token` occurs in code as a name of its own (not the tail of a longer one).
fn token_lines(src: &Source, token: &str) -> Vec<usize> {
    code_lines(&src.text)
        .filter(|(_, code)| {
            code.match_indices(token)
                .any(|(at, _)| starts_a_name(code, at))
        })
        .map(|(n, _)| n)
        .collect()
}

/// Every path the file names: each leaf of its `use` trees (`use a::{b, c::{self, d}}` is
/// `a::b`, `a::c`, `a::c::d`) and each `crate::` path written in code.
fn paths(src: &Source) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut statement: Option<(usize, String)> = None;
    for (n, code) in code_lines(&src.text) {
        let trimmed = code.trim_start();
        if statement.is_none() {
            let after_vis = trimmed
                .strip_prefix("pub ")
                .or_else(|| trimmed.strip_prefix("pub(crate) "))
                .or_else(|| trimmed.strip_prefix("pub(super) "))
                .unwrap_or(trimmed);
            if let Some(tree) = after_vis.strip_prefix("use ") {
                statement = Some((n, String::new()));
                let (_, text) = statement.as_mut().unwrap();
                text.push_str(tree);
            } else {
                found.extend(inline_crate_paths(code).map(|p| (n, p)));
                continue;
            }
        } else if let Some((_, text)) = statement.as_mut() {
            text.push(' ');
            text.push_str(trimmed);
        }
        if let Some((line, text)) = statement.take_if(|(_, t)| t.contains(';')) {
            let tree = text.split(';').next().unwrap_or_default();
            found.extend(flatten("", tree).into_iter().map(|p| (line, p)));
        }
    }
    found
}

fn inline_crate_paths(code: &str) -> impl Iterator<Item = String> + '_ {
    code.match_indices("crate::").map(move |(at, _)| {
        code[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect::<String>()
            .trim_end_matches(':')
            .to_owned()
    })
}

/// The leaves of a `use` tree, under `prefix`.
fn flatten(prefix: &str, tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let join = |tail: &str| match (prefix, tail) {
        ("", t) => t.to_owned(),
        (p, "self") => p.to_owned(),
        (p, t) => format!("{p}::{t}"),
    };
    let Some(open) = tree.find('{') else {
        let name = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![join(name.trim_end_matches("::*"))];
    };
    let head = join(tree[..open].trim().trim_end_matches("::"));
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| flatten(&head, p))
        .collect()
}

/// Violations where a file in a module of `modules` names a path starting with one of
/// `forbidden` (a whole path segment: `crate::state` is not `crate::statement`).
fn forbidden_paths(
    src: &Source,
    modules: &[&str],
    forbidden: &[&str],
    why: &'static str,
) -> Vec<Violation> {
    if !modules.iter().any(|m| in_module(&src.path, m)) {
        return Vec::new();
    }
    paths(src)
        .into_iter()
        .filter(|(_, p)| {
            forbidden.iter().any(|f| {
                p.strip_prefix(f)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
        })
        .map(|(line, found)| Violation {
            path: src.path.clone(),
            line,
            found,
            why,
        })
        .collect()
}

/// Violations where `token` occurs in a file outside `allowed` modules.
fn token_outside(src: &Source, token: &str, allowed: &[&str], why: &'static str) -> Vec<Violation> {
    if !in_module(&src.path, "src") || allowed.iter().any(|m| in_module(&src.path, m)) {
        return Vec::new();
    }
    every_line_with(src, token, why)
}

fn ec2_only_in_the_aws_provider(src: &Source) -> Vec<Violation> {
    // `aws_sdk_ec2instanceconnect` starts with this too.
    token_outside(
        src,
        "aws_sdk_ec2",
        &["src/provider/aws"],
        "nothing outside src/provider/aws/ knows EC2 (ARCHITECTURE.md)",
    )
}

fn price_list_only_in_price_list(src: &Source) -> Vec<Violation> {
    token_outside(
        src,
        "aws_sdk_pricing",
        &["src/cost/price_list"],
        "nothing outside src/cost/price_list.rs knows the Price List API (ARCHITECTURE.md)",
    )
}

fn providers_take_only_machine_from_state(src: &Source) -> Vec<Violation> {
    forbidden_paths(
        src,
        &["src/provider"],
        &["crate::state"],
        "a provider may not touch state: it returns `Machine`s that the lifecycle records (ARCHITECTURE.md)",
    )
    .into_iter()
    .filter(|v| v.found != "crate::state::Machine")
    .collect()
}

fn plan_reads_no_state_and_no_network(src: &Source) -> Vec<Violation> {
    let why = "plan may not read state or touch the network (ARCHITECTURE.md)";
    let mut found = forbidden_paths(
        src,
        &["src/plan"],
        &[
            "crate::state",
            "crate::backend",
            "crate::provider",
            "crate::remote",
            "crate::cost::price_list",
            "aws_config",
            "std::net",
            "tokio::net",
        ],
        why,
    );
    if in_module(&src.path, "src/plan") {
        found.extend(every_line_with(src, "aws_sdk_", why));
    }
    found
}

fn walk_and_lifecycle_name_no_provider(src: &Source) -> Vec<Violation> {
    forbidden_paths(
        src,
        &["src/walk", "src/lifecycle"],
        &[
            "crate::provider::aws",
            "crate::provider::ssh",
            "crate::provider::local",
        ],
        "walk may not know any provider, nor the lifecycle EC2, SSH options or leases: they speak `Provider` (ARCHITECTURE.md)",
    )
}

fn templates_see_no_provider_types(src: &Source) -> Vec<Violation> {
    forbidden_paths(
        src,
        &["src/templates"],
        &["crate::provider"],
        "templates never see a provider's types (ARCHITECTURE.md)",
    )
}

fn state_knows_not_where_it_is_kept(src: &Source) -> Vec<Violation> {
    forbidden_paths(
        src,
        &["src/state"],
        &[
            "crate::backend",
            "crate::lifecycle",
            "crate::walk",
            "crate::ops",
        ],
        "state is the model the backends keep: it may not know them, nor who writes it (ARCHITECTURE.md)",
    )
}

fn remote_knows_no_provider(src: &Source) -> Vec<Violation> {
    forbidden_paths(
        src,
        &["src/remote"],
        &["crate::provider"],
        "remote may not know where a machine came from (ARCHITECTURE.md)",
    )
}

fn change_points_are_pure_computation(src: &Source) -> Vec<Violation> {
    forbidden_paths(
        src,
        &[
            "src/history/changepoints",
            "src/history/series",
            "src/history/render",
        ],
        &[
            "crate::state",
            "crate::backend",
            "crate::provider",
            "crate::remote",
            "crate::lifecycle",
            "crate::walk",
            "crate::ops",
            "crate::cli",
            "std::fs",
            "std::net",
            "std::process",
            "tokio",
        ],
        "change points are pure computation on a series: no state, provider, lifecycle, CLI or I/O (ARCHITECTURE.md)",
    )
}

/// How code outside the simulation's seams asks whether a deliberate bug is on: a plain
/// `false` in a build without the simulation.
const BUG_SITE: &str = "crate::sim::bug!(";

fn the_simulation_stays_in_its_seams(src: &Source) -> Vec<Violation> {
    const SIM: &str = "crate::sim";
    let seams = ["src/sim", "src/provider/fake", "src/remote", "src/state"];
    if !in_module(&src.path, "src") || seams.iter().any(|m| in_module(&src.path, m)) {
        return Vec::new();
    }
    code_lines(&src.text)
        .filter(|(_, code)| {
            code.match_indices(SIM)
                .any(|(at, _)| starts_a_name(code, at) && !code[at..].starts_with(BUG_SITE))
        })
        .map(|(line, _)| Violation {
            path: src.path.clone(),
            line,
            found: SIM.to_owned(),
            why: "the simulation is reached only by the fake provider, remote's one arm, state::save's crash point and `crate::sim::bug!(Name)` at a deliberate bug's site (ARCHITECTURE.md)",
        })
        .collect()
}

fn every_line_with(src: &Source, token: &str, why: &'static str) -> Vec<Violation> {
    token_lines(src, token)
        .into_iter()
        .map(|line| Violation {
            path: src.path.clone(),
            line,
            found: token.to_owned(),
            why,
        })
        .collect()
}

fn no_ignored_tests(src: &Source) -> Vec<Violation> {
    every_line_with(
        src,
        IGNORE,
        "no ignored tests: a test that cannot run here is said so, not skipped",
    )
}

fn no_dbg(src: &Source) -> Vec<Violation> {
    every_line_with(src, DBG, "debugging output left behind")
}

/// A lock in a static guards only the tests of one process; nextest runs each test in a process
/// of its own, all at once (ARCHITECTURE.md, Tests).
fn tests_share_nothing_through_a_static_lock(src: &Source) -> Vec<Violation> {
    if !src.path.starts_with("tests/") {
        return vec![];
    }
    code_lines(&src.text)
        .filter(|(_, code)| {
            let code = code.trim_start();
            code.starts_with("static ") && (code.contains("Mutex") || code.contains("RwLock"))
        })
        .map(|(line, code)| Violation {
            path: src.path.clone(),
            line,
            found: code.trim().to_owned(),
            why: "tests run in processes of their own, all at once: what they share is guarded by a file lock the kernel drops with its process, not a static of one binary",
        })
        .collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

fn sources() -> Vec<Source> {
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        rust_files(&root().join(dir), &mut files);
    }
    files
        .into_iter()
        .map(|file| Source {
            path: (file.strip_prefix(root()).unwrap().components())
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/"),
            text: std::fs::read_to_string(&file).unwrap(),
        })
        .collect()
}

#[test]
fn the_architecture_holds() {
    let sources = sources();
    assert!(
        sources.iter().any(|s| s.path == "src/provider/aws/mod.rs"),
        "the scan found no sources"
    );
    let mut used = vec![false; EXCEPTIONS.len()];
    let mut problems: Vec<String> = Vec::new();
    for src in &sources {
        for rule in RULES {
            for v in rule(src) {
                match EXCEPTIONS
                    .iter()
                    .position(|(path, found, _)| *path == v.path && *found == v.found)
                {
                    Some(i) => used[i] = true,
                    None => problems.push(v.to_string()),
                }
            }
        }
    }
    for ((path, found, _), used) in EXCEPTIONS.iter().zip(used) {
        if !used {
            problems.push(format!(
                "{path}: `{found}` no longer occurs: remove it from tests/tidy.rs's EXCEPTIONS"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

/// The violations `rule` finds in `text` as file `path`, as `line: found`.
fn check(rule: Rule, path: &str, text: &str) -> Vec<String> {
    let src = Source {
        path: path.into(),
        text: text.into(),
    };
    rule(&src)
        .into_iter()
        .map(|v| {
            assert!(v.to_string().starts_with(&format!("{path}:{}: ", v.line)));
            format!("{}: {}", v.line, v.found)
        })
        .collect()
}

#[test]
fn use_trees_are_flattened_to_their_leaves() {
    let src = Source {
        path: "src/x.rs".into(),
        text: "use crate::{\n    a::{self, B},\n    c::D as E,\n};\nfn f() { crate::g::h(); }\n"
            .into(),
    };
    let found: Vec<String> = paths(&src)
        .into_iter()
        .map(|(n, p)| format!("{n} {p}"))
        .collect();
    assert_eq!(
        found,
        [
            "1 crate::a",
            "1 crate::a::B",
            "1 crate::c::D",
            "5 crate::g::h"
        ]
    );
}

#[test]
fn ec2_outside_the_aws_provider_is_caught() {
    let text = "use aws_sdk_ec2::Client;\n// aws_sdk_ec2 in a comment\nuse aws_sdk_ec2instanceconnect as eic;\n";
    assert_eq!(
        check(ec2_only_in_the_aws_provider, "src/bake.rs", text),
        ["1: aws_sdk_ec2", "3: aws_sdk_ec2"]
    );
    assert!(
        check(
            ec2_only_in_the_aws_provider,
            "src/provider/aws/images.rs",
            text
        )
        .is_empty()
    );
    assert_eq!(
        check(ec2_only_in_the_aws_provider, "src/provider/awsome.rs", text).len(),
        2
    );
}

#[test]
fn the_price_list_outside_price_list_is_caught() {
    let text = "fn f() { aws_sdk_pricing::Client::new(); }\n";
    assert_eq!(
        check(price_list_only_in_price_list, "src/cost/estimate.rs", text),
        ["1: aws_sdk_pricing"]
    );
    assert!(
        check(
            price_list_only_in_price_list,
            "src/cost/price_list.rs",
            text
        )
        .is_empty()
    );
}

#[test]
fn a_provider_taking_more_than_machine_from_state_is_caught() {
    let text = "use crate::state::{self, LockHolder, Machine};\nuse crate::statement::X;\n";
    assert_eq!(
        check(
            providers_take_only_machine_from_state,
            "src/provider/ssh.rs",
            text
        ),
        ["1: crate::state", "1: crate::state::LockHolder"]
    );
    let text = "fn f(m: crate::state::Machine, s: &crate::state::State) {}\n";
    assert_eq!(
        check(
            providers_take_only_machine_from_state,
            "src/provider/aws/mod.rs",
            text
        ),
        ["1: crate::state::State"]
    );
}

#[test]
fn plan_reading_state_or_the_network_is_caught() {
    let text = "use crate::state::State;\nuse crate::address::Address;\nuse aws_sdk_s3::Client;\nuse std::net::TcpStream;\n";
    assert_eq!(
        check(
            plan_reads_no_state_and_no_network,
            "src/plan/matrix.rs",
            text
        ),
        [
            "1: crate::state::State",
            "4: std::net::TcpStream",
            "3: aws_sdk_"
        ]
    );
    assert!(check(plan_reads_no_state_and_no_network, "src/planner.rs", text).is_empty());
}

#[test]
fn walk_or_lifecycle_naming_a_provider_is_caught() {
    let text = "use crate::provider::{Provider, ssh::Pool};\nuse crate::provider::aws;\n";
    for path in ["src/walk.rs", "src/lifecycle/steps.rs"] {
        assert_eq!(
            check(walk_and_lifecycle_name_no_provider, path, text),
            ["1: crate::provider::ssh::Pool", "2: crate::provider::aws"]
        );
    }
    assert!(check(walk_and_lifecycle_name_no_provider, "src/bake.rs", text).is_empty());
}

#[test]
fn templates_or_remote_seeing_a_provider_is_caught() {
    let text = "fn f(a: &crate::provider::Acquired) {}\n";
    assert_eq!(
        check(templates_see_no_provider_types, "src/templates.rs", text),
        ["1: crate::provider::Acquired"]
    );
    assert_eq!(
        check(remote_knows_no_provider, "src/remote/mux.rs", text),
        ["1: crate::provider::Acquired"]
    );
}

#[test]
fn ignored_tests_and_dbg_are_caught() {
    let text = format!("{IGNORE}]\n#[test]\nfn t() {{ {DBG}1); }}\n");
    assert_eq!(
        check(no_ignored_tests, "tests/e2e.rs", &text),
        [format!("1: {IGNORE}")]
    );
    assert_eq!(check(no_dbg, "src/walk.rs", &text), [format!("3: {DBG}")]);
}

#[test]
fn a_static_lock_in_the_tests_is_caught() {
    let text = "use std::sync::Mutex;\nstatic LOCAL: Mutex<()> = Mutex::new(());\n    static N: AtomicUsize = AtomicUsize::new(0);\n";
    assert_eq!(
        check(
            tests_share_nothing_through_a_static_lock,
            "tests/support/providers.rs",
            text
        ),
        ["2: static LOCAL: Mutex<()> = Mutex::new(());"]
    );
    assert!(
        check(
            tests_share_nothing_through_a_static_lock,
            "src/walk.rs",
            text
        )
        .is_empty()
    );
}

#[test]
fn state_knowing_its_backend_is_caught() {
    let found = check(
        state_knows_not_where_it_is_kept,
        "src/state.rs",
        "use crate::address::Address;\nuse crate::backend::Backend;\n",
    );
    assert_eq!(found, ["2: crate::backend::Backend"]);
    assert!(
        check(
            state_knows_not_where_it_is_kept,
            "src/backend/handle.rs",
            "use crate::backend::Backend;\n"
        )
        .is_empty()
    );
}

#[test]
fn change_points_reaching_beyond_computation_are_caught() {
    let text = "use crate::results::stats::t_two_sided_p;\nuse crate::state::State;\nuse std::fs::File;\nfn f() { crate::cli::run(); }\n";
    assert_eq!(
        check(
            change_points_are_pure_computation,
            "src/history/changepoints.rs",
            text
        ),
        [
            "2: crate::state::State",
            "3: std::fs::File",
            "4: crate::cli::run"
        ]
    );
    assert!(
        check(
            change_points_are_pure_computation,
            "src/history/mod.rs",
            text
        )
        .is_empty()
    );
}

#[test]
fn the_simulation_reached_from_the_lifecycle_is_caught() {
    let text = format!(
        "fn f() {{ crate::sim::state_write(p); }}\nlet on = {BUG_SITE}IgnoreStalls);\nlet on = crate::sim::Bug::IgnoreStalls.is_on();\n"
    );
    let text = text.as_str();
    assert_eq!(
        check(the_simulation_stays_in_its_seams, "src/lifecycle.rs", text),
        ["1: crate::sim", "3: crate::sim"]
    );
    assert!(
        check(
            the_simulation_stays_in_its_seams,
            "src/provider/fake.rs",
            text
        )
        .is_empty()
    );
}
