//! No input makes the plan parser or the state loader panic: arbitrary bytes, and the example
//! plans with random bytes changed, inserted or cut (closer to real mistakes than pure noise).
//!
//! Each property runs 2000 cases (what CI runs); `PROPTEST_CASES=N` runs N instead, since
//! proptest (1.2 and later) lets its `PROPTEST_*` variables override the config given here. A
//! long run: `bench/fuzz.sh`.

use std::path::Path;

use proptest::prelude::*;

const EXAMPLE_TOML: &str = include_str!("../plans/example.toml");
const EXAMPLE_JSON: &str = include_str!("../plans/data_file.json");

fn parse_both(text: &str) {
    for name in ["fuzz.toml", "fuzz.json"] {
        if let Err(errors) = rallyctl::plan::Plan::parse(Path::new(name), text) {
            // Every error names a position inside the file.
            for d in &errors.diagnostics {
                assert!(d.line >= 1 && d.column >= 1, "{d}");
            }
            assert!(!errors.diagnostics.is_empty());
        }
    }
}

fn mutate(base: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut bytes = base.as_bytes().to_vec();
    for &(at, op, byte) in edits {
        if bytes.is_empty() {
            break;
        }
        let at = at % bytes.len();
        match op % 3 {
            0 => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            _ => bytes.truncate(at),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A value an axis, include or exclude entry may hold: right, of another type, or a table.
fn matrix_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "\"a\"",
            "\"b.c\"",
            "\"8.15.0\"",
            "\"\"",
            "\"x y\"",
            "\"\\n\""
        ])
        .prop_map(String::from),
        any::<i8>().prop_map(|n| n.to_string()),
        Just("true".to_owned()),
        Just("{ bulk_size = 1 }".to_owned()),
        Just("{ nodes = 2, hosts = [\"a\"] }".to_owned()),
        Just("{}".to_owned()),
        Just("[]".to_owned()),
    ]
}

/// A matrix of random axes (settings, not settings, `include`, `exclude`), values and entries.
fn matrix() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "car",
        "challenge",
        "track_params",
        "instance_type",
        "repetitions",
        "cluster",
        "load_drivers",
        "name",
        "variant",
        "carr",
    ]);
    let entry = || {
        prop::collection::vec((key.clone(), matrix_value()), 0..3).prop_map(|kv| {
            let pairs: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{{ {} }}", pairs.join(", "))
        })
    };
    let axis = (key.clone(), prop::collection::vec(matrix_value(), 0..4))
        .prop_map(|(k, vs)| format!("{k} = [{}]\n", vs.join(", ")));
    (
        prop::collection::vec(axis, 0..4),
        prop::collection::vec(entry(), 0..3),
        prop::collection::vec(entry(), 0..3),
    )
        .prop_map(|(axes, include, exclude)| {
            format!(
                "version = 1\nname = \"m\"\n[defaults]\nregion = \"us-east-1\"\nami = \"ami-0a\"\ninstance_type = \"t\"\ntrack = \"x\"\n\
                 [[suite]]\nname = \"s\"\n[[suite.test]]\nname = \"t\"\ntrack_params = {{ clients = 2 }}\n[suite.test.matrix]\n{}include = [{}]\nexclude = [{}]\n",
                axes.concat(),
                include.join(", "),
                exclude.join(", ")
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_matrices_never_panic(text in matrix()) {
        parse_both(&text);
    }

    #[test]
    fn arbitrary_text_never_panics_the_plan_parser(text in "\\PC{0,400}") {
        parse_both(&text);
    }

    #[test]
    fn mutated_example_plans_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        parse_both(&mutate(EXAMPLE_TOML, &edits));
        parse_both(&mutate(EXAMPLE_JSON, &edits));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_state_loader(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.state.json");
        std::fs::write(&path, &bytes).unwrap();
        let _ = rallyctl::state::load(&path);
        prop_assert_eq!(std::fs::read(&path).unwrap(), bytes, "the loader changed the file");
    }

    #[test]
    fn mutated_states_never_panic(edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.state.json");
        let mut state = rallyctl::state::State::new("w");
        rallyctl::state::save(&path, &mut state).unwrap();
        let good = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, mutate(&good, &edits)).unwrap();
        let _ = rallyctl::state::load(&path);
    }
}
