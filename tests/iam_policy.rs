//! The README's IAM policy grants exactly what the code calls: every AWS SDK operation called
//! in `src/` (`.run_instances()`, `.put_object()`, ...) is mapped to the IAM actions it needs,
//! and the policy must list those and no others. A new call without its permission, or a
//! permission left behind by a removed call, fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// IAM's service prefix of each AWS SDK crate rallyctl depends on.
const IAM_PREFIX: &[(&str, &str)] = &[
    ("aws-sdk-ec2", "ec2"),
    ("aws-sdk-ec2instanceconnect", "ec2-instance-connect"),
    ("aws-sdk-pricing", "pricing"),
    ("aws-sdk-s3", "s3"),
    ("aws-sdk-servicequotas", "servicequotas"),
    ("aws-sdk-sts", "sts"),
];

/// Operations whose IAM actions are not their own name (S3's), or more than it: IAM checks
/// `ec2:CreateTags` for the tags a launch, an image or a placement group is created with.
const ACTIONS: &[(&str, &[&str])] = &[
    ("s3:ListObjectsV2", &["s3:ListBucket"]),
    ("s3:HeadObject", &["s3:GetObject"]),
    ("s3:HeadBucket", &["s3:ListBucket"]),
    ("s3:CopyObject", &["s3:GetObject", "s3:PutObject"]),
    ("ec2:RunInstances", &["ec2:RunInstances", "ec2:CreateTags"]),
    ("ec2:CreateImage", &["ec2:CreateImage", "ec2:CreateTags"]),
    (
        "ec2:CreatePlacementGroup",
        &["ec2:CreatePlacementGroup", "ec2:CreateTags"],
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Operation (snake case, as the SDK's client method) to the crates that have it, read from
/// each SDK crate's `src/operation/` as `cargo metadata` locates it.
fn sdk_operations() -> BTreeMap<String, Vec<&'static str>> {
    // Only this platform's packages: a fresh machine's build fetched no others (Windows-only
    // crates of the lock file), and the check runs offline.
    let version = std::process::Command::new(env!("CARGO"))
        .arg("-vV")
        .output()
        .expect("cargo -vV");
    let version = String::from_utf8_lossy(&version.stdout);
    let host = (version.lines())
        .find_map(|l| l.strip_prefix("host: "))
        .expect("cargo -vV names the host");
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
            host,
            "--manifest-path",
        ])
        .arg(root().join("Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let rallyctl = packages.iter().find(|p| p["name"] == "rallyctl").unwrap();
    let mut ops: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for dep in rallyctl["dependencies"].as_array().unwrap() {
        let name = dep["name"].as_str().unwrap();
        if !name.starts_with("aws-sdk-") {
            continue;
        }
        let &(krate, _) = IAM_PREFIX
            .iter()
            .find(|(k, _)| *k == name)
            .unwrap_or_else(|| panic!("say in IAM_PREFIX which IAM service {name} is"));
        let manifest = packages
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["manifest_path"].as_str())
            .unwrap();
        let dir = Path::new(manifest).parent().unwrap().join("src/operation");
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                let op = entry.file_name().to_string_lossy().into_owned();
                ops.entry(op).or_default().push(krate);
            }
        }
    }
    ops
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The IAM actions the SDK calls in `src/` need, each with a file that makes the call.
fn needed() -> BTreeMap<String, String> {
    let ops = sdk_operations();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut needed = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // An SDK operation is a client method without arguments; rallyctl's own methods of the
        // same name (`Aws::create_image(machine, ..)`) take some.
        for (at, _) in text.match_indices("()") {
            let name: String = text[..at]
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if !text[..at - name.len()].ends_with('.') {
                continue;
            }
            let Some(crates) = ops.get(&name) else {
                continue;
            };
            assert_eq!(
                crates.len(),
                1,
                "{name} is an operation of {crates:?}: say which one {} calls",
                file.display()
            );
            let prefix = IAM_PREFIX.iter().find(|(k, _)| *k == crates[0]).unwrap().1;
            let pascal: String = name
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect();
            let operation = format!("{prefix}:{pascal}");
            let actions = ACTIONS.iter().find(|(op, _)| *op == operation).map_or_else(
                || vec![operation.clone()],
                |(_, a)| a.iter().map(|a| a.to_string()).collect(),
            );
            for action in actions {
                needed
                    .entry(action)
                    .or_insert_with(|| file.strip_prefix(root()).unwrap().display().to_string());
            }
        }
    }
    needed
}

/// The actions of the README's policy: the JSON block after the heading `### IAM policy`.
fn granted() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split_once("\n### IAM policy\n")
        .expect("README.md has a `### IAM policy` section")
        .1;
    let block = section
        .split_once("```json\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("the IAM policy section has a ```json block")
        .0;
    let policy: serde_json::Value =
        serde_json::from_str(block).unwrap_or_else(|e| panic!("the README's policy: {e}"));
    let mut actions = BTreeSet::new();
    for statement in policy["Statement"].as_array().expect("Statement") {
        assert_eq!(statement["Effect"], "Allow", "{statement}");
        match &statement["Action"] {
            serde_json::Value::String(a) => {
                actions.insert(a.clone());
            }
            serde_json::Value::Array(a) => {
                actions.extend(a.iter().map(|a| a.as_str().unwrap().to_owned()));
            }
            other => panic!("Action {other}"),
        }
    }
    actions
}

#[test]
fn the_readme_policy_grants_exactly_what_the_code_calls() {
    // IAM reads action names case-insensitively (`SendSSHPublicKey` is `send_ssh_public_key`).
    let needed: BTreeMap<String, String> = needed()
        .into_iter()
        .map(|(a, file)| (a.to_ascii_lowercase(), file))
        .collect();
    let granted: BTreeSet<String> = granted().iter().map(|a| a.to_ascii_lowercase()).collect();
    let missing: Vec<String> = needed
        .iter()
        .filter(|(a, _)| !granted.contains(*a))
        .map(|(a, file)| format!("{a} (called in {file})"))
        .collect();
    let unused: Vec<&String> = granted
        .iter()
        .filter(|a| !needed.contains_key(*a))
        .collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "README.md's IAM policy lacks {missing:?} and grants {unused:?}, which no call needs"
    );
    // The scan found the calls at all (a broken scan would pass an empty policy).
    assert!(needed.contains_key("ec2:runinstances"), "{needed:?}");
}
