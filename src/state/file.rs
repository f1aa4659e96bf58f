//! The state file on disk: where it is kept, reading it, and writing it.
//!
//! Every write is atomic (temp file, fsync, rename) and keeps the previous serial beside it as
//! `<file>.backup`, so a crash at any point leaves a readable state. A file that cannot be read
//! (corrupt, truncated, from a newer rallyctl) is refused and never overwritten. A writer that
//! saves the same state again and again keeps, in a [`Written`], what it wrote each record as,
//! so that only records that changed are serialized again.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{STATE_VERSION, State, StateError, StateFile, TestRecord, dir_of};
use crate::address::Address;

/// Where states are kept unless `--state` says otherwise, below the current directory.
pub const DEFAULT_DIR: &str = "state";

/// The default state path of a workspace.
pub fn default_path(workspace: &str) -> PathBuf {
    Path::new(DEFAULT_DIR).join(format!("{}.state.json", crate::address::slug(workspace)))
}

pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".backup");
    PathBuf::from(name)
}

/// Reads a state file; `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let hint = || {
        let backup = backup_path(path);
        if backup.is_file() {
            format!(
                " The previous serial is in {}: inspect both, and copy the backup over the state file to go back to it.",
                backup.display()
            )
        } else {
            String::new()
        }
    };
    match serde_json::from_slice::<StateFile>(&bytes) {
        Ok(file) => {
            drop(bytes);
            current(file.into(), path).map(Some)
        }
        // What is wrong is told as `parse` tells it.
        Err(_) => parse(&bytes, path, hint).map(Some),
    }
}

/// A state read as this version's model: refused if a newer version wrote it, else of this
/// version (an older one is read into this one's model, see STATE_VERSION, and written as it).
fn current(state: State, location: &Path) -> Result<State, StateError> {
    if state.version > STATE_VERSION {
        return Err(StateError::Newer {
            path: location.to_owned(),
            found: u64::from(state.version),
        });
    }
    Ok(State {
        version: STATE_VERSION,
        ..state
    })
}

/// A state as read from `location` (a file or an object); `backup_hint` says where the
/// previous serial is, for the message when it is not valid.
pub fn parse(
    bytes: &[u8],
    location: &Path,
    backup_hint: impl FnOnce() -> String,
) -> Result<State, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: location.to_owned(),
        reason,
        backup_hint: backup_hint(),
    };
    // A file that does not read as this version's schema may still be a newer version's,
    // which is named as such rather than reported as corrupt; reading only the version skips
    // everything else without building it.
    let version = |bytes: &[u8]| {
        #[derive(Deserialize)]
        struct Version {
            version: Option<serde_json::Value>,
        }
        serde_json::from_slice::<Version>(bytes)
            .ok()
            .and_then(|v| v.version?.as_u64())
    };
    let newer = |found: u64| StateError::Newer {
        path: location.to_owned(),
        found,
    };
    match serde_json::from_slice::<State>(bytes) {
        Ok(state) => current(state, location),
        Err(e) => match version(bytes) {
            Some(v) if v > u64::from(STATE_VERSION) => Err(newer(v)),
            Some(_) => Err(corrupt(e.to_string())),
            None if e.is_syntax() || e.is_eof() => Err(corrupt(e.to_string())),
            None => Err(corrupt("no `version` number".into())),
        },
    }
}

/// Loads the state of `workspace` at `path`, or a new empty one; says whether it existed.
pub fn load_or_new(path: &Path, workspace: &str) -> Result<(State, bool), StateError> {
    of_workspace(load(path)?, path, workspace)
}

/// What [`load`] read at `path`, checked to belong to `workspace`, or a new empty state; says
/// whether one existed.
pub fn of_workspace(
    loaded: Option<State>,
    path: &Path,
    workspace: &str,
) -> Result<(State, bool), StateError> {
    match loaded {
        Some(state) if state.workspace != workspace => Err(StateError::Workspace {
            path: path.to_owned(),
            found: state.workspace,
            expected: workspace.to_owned(),
        }),
        Some(state) => Ok((state, true)),
        None => Ok((State::new(workspace), false)),
    }
}

/// Writes `state` with the next serial: temp file, fsync, keep the old file as the backup,
/// rename over. A crash at any point leaves either the old or the new state in place.
pub fn save(path: &Path, state: &mut State) -> Result<(), StateError> {
    save_with(path, state, &mut Written::default())
}

/// [`save`], for a writer that saves the same state again and again (an apply, at every step):
/// `written` keeps what the records were written as, so that only records that changed since
/// are serialized again.
pub fn save_with(path: &Path, state: &mut State, written: &mut Written) -> Result<(), StateError> {
    let write_err = |source| StateError::Write {
        path: path.to_owned(),
        source,
    };
    #[cfg(feature = "simulation")]
    crate::sim::state_write(path)?;
    state.serial += 1;
    let dir = dir_of(path);
    fs::create_dir_all(dir).map_err(write_err)?;
    let json = to_json(state, written);
    let mut temp = tempfile::Builder::new()
        .prefix(".rallyctl-state-")
        .tempfile_in(dir)
        .map_err(write_err)?;
    temp.write_all(&json).map_err(write_err)?;
    temp.as_file().sync_all().map_err(write_err)?;
    if path.exists() {
        // A hard link keeps the old bytes under the backup name without copying them.
        let staged = dir.join(format!(".rallyctl-backup-{}", Uuid::new_v4()));
        fs::hard_link(path, &staged).map_err(write_err)?;
        fs::rename(&staged, backup_path(path)).map_err(write_err)?;
    }
    temp.persist(path).map_err(|e| write_err(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err)?;
    Ok(())
}

/// The records of a state as a state file last had them, each with its text: a record equal
/// to the one kept is written as the text kept. Pretty-printing a record costs far more than
/// comparing it, and a step of an apply changes one record of many.
#[derive(Default)]
pub struct Written(BTreeMap<Address, (TestRecord, Box<RawValue>)>);

/// The state file's bytes: `state` pretty-printed, and a newline. Byte for byte what
/// `serde_json::to_vec_pretty` writes, the records' text taken from `written` where they did
/// not change (and kept there for the next write).
pub fn to_json(state: &mut State, written: &mut Written) -> Vec<u8> {
    written
        .0
        .retain(|address, _| state.tests.contains_key(address));
    for (address, record) in &state.tests {
        if written
            .0
            .get(address)
            .is_none_or(|(kept, _)| kept != record)
        {
            let text = record_text(address, record);
            written.0.insert(address.clone(), (record.clone(), text));
        }
    }
    // The rest of the state, its records left out for the while: a map printed empty, `{}`.
    let tests = std::mem::take(&mut state.tests);
    let skeleton = serde_json::to_vec_pretty(&*state).expect("state serializes");
    state.tests = tests;
    // A line that starts with this is the top-level key: within strings, newlines are escaped.
    let at = b"\n  \"tests\": {}";
    let empty = (skeleton.windows(at.len()))
        .position(|w| w == at)
        .expect("a state's file has its tests")
        + at.len()
        - 2;
    let mut json = Vec::with_capacity(
        skeleton.len()
            + written
                .0
                .values()
                .map(|(_, t)| t.get().len() + 64)
                .sum::<usize>(),
    );
    json.extend_from_slice(&skeleton[..empty]);
    // As the pretty printer writes a map two levels down.
    json.push(b'{');
    for (i, (address, (_, text))) in written.0.iter().enumerate() {
        json.extend_from_slice(if i == 0 { b"\n    " } else { b",\n    " });
        serde_json::to_writer(&mut json, address).expect("an address serializes");
        json.extend_from_slice(b": ");
        json.extend_from_slice(text.get().as_bytes());
    }
    json.extend_from_slice(if written.0.is_empty() { b"}" } else { b"\n  }" });
    json.extend_from_slice(&skeleton[empty + 2..]);
    json.push(b'\n');
    json
}

/// A record's text as it stands in a state file: pretty-printed where the file's records are,
/// two levels down, which is where the pretty printer puts it in a map under `tests`.
fn record_text(address: &Address, record: &TestRecord) -> Box<RawValue> {
    #[derive(Serialize)]
    struct One<'a> {
        tests: BTreeMap<&'a Address, &'a TestRecord>,
    }
    let one = One {
        tests: BTreeMap::from([(address, record)]),
    };
    let text = serde_json::to_string_pretty(&one).expect("a record serializes");
    let key = serde_json::to_string(address).expect("an address serializes");
    let head = format!("{{\n  \"tests\": {{\n    {key}: ");
    let text = (text.strip_prefix(&head))
        .and_then(|t| t.strip_suffix("\n  }\n}"))
        .expect("one record under `tests`, as printed");
    RawValue::from_string(text.to_owned()).expect("serde_json writes valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::record;
    use crate::state::{BakeKey, BakeStep, Image, Status, Step};

    #[test]
    fn save_then_load_round_trips_and_bumps_the_serial() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/w.state.json");
        let mut state = State::new("w");
        state
            .tests
            .insert(Address::new("a", "b").unwrap(), record());
        save(&path, &mut state).unwrap();
        save(&path, &mut state).unwrap();
        assert_eq!(state.serial, 2);
        assert_eq!(load(&path).unwrap().unwrap(), state);
        let backup = load(&backup_path(&path)).unwrap().unwrap();
        assert_eq!(backup.serial, 1, "the backup holds the previous serial");
    }

    /// A state written through [`Written`] is byte for byte the pretty printer's whole file,
    /// write after write, as records change in place, come and go; each write is checked
    /// against a fresh print of the state as it is then.
    #[test]
    fn a_write_that_keeps_unchanged_records_text_is_the_whole_file_pretty_printed() {
        let pretty = |state: &State| {
            let mut json = serde_json::to_vec_pretty(state).unwrap();
            json.push(b'\n');
            String::from_utf8(json).unwrap()
        };
        let mut written = Written::default();
        let mut state = State::new("w");
        let mut check = |state: &mut State, step: &str| {
            let expected = pretty(state);
            let got = String::from_utf8(to_json(state, &mut written)).unwrap();
            assert_eq!(got, expected, "after {step}");
        };
        check(&mut state, "nothing");
        let a = Address::new("a", "b").unwrap();
        let c = Address::new("c", "d").unwrap();
        let e = Address::new("a", "e").unwrap();
        state.tests.insert(a.clone(), record());
        check(&mut state, "a record");
        let mut other = record();
        other.settings = serde_json::json!({"tags": {}, "track": "nyc_taxis"}).into();
        other.set_status(Status::Pending);
        state.tests.insert(c.clone(), other);
        state.tests.insert(e.clone(), record());
        state.baseline_run = Some("run \"1\"\n".into());
        check(&mut state, "two more records");
        // A change deep in one record, with what must be escaped.
        let r = state.tests.get_mut(&c).unwrap();
        r.set_status(Status::Failed {
            step: Step::Racing,
            error: "exit \"64\"\tno\u{1}\n\u{e9}t\u{e9}".into(),
            log_tail: Some("line 1\nline 2\\".into()),
            logs: None,
        });
        check(&mut state, "a record changed");
        state.tests.get_mut(&a).unwrap().attempt += 1;
        check(&mut state, "another changed");
        state.tests.remove(&e);
        check(&mut state, "a record gone");
        state.tests.insert(e.clone(), record());
        state.tests.get_mut(&e).unwrap().race_command = "esrally race --x".into();
        check(&mut state, "a record back, changed");
        state.serial += 1;
        state.images.push(Image {
            baked_for: BakeKey {
                base_ami: "ami-1".into(),
                region: "us-east-1".into(),
                rally_version: "2.13.0".into(),
                needs_java: true,
                remote_dir: "rallyctl".into(),
            },
            step: BakeStep::Launching,
            attempt: 1,
            settings: serde_json::json!({"track": "geonames"}).into(),
            instance: None,
            name: "rallyctl-bake \"tests\": {}".into(),
            image_id: None,
            snapshot_ids: vec![],
            created_at: None,
            error: None,
            history: vec![],
        });
        check(&mut state, "an image after the tests");
        state.tests.clear();
        check(&mut state, "every record gone");
    }

    /// A save killed at any point (mid-write, between the temp file and the rename, between
    /// the backup and the rename) leaves a state that loads, at the serial of the last save
    /// that finished or the one being written. The saves run in a child process (this test
    /// binary again, under `RALLYCTL_TEST_SAVE_FOREVER`) that is SIGKILLed at random moments;
    /// the state is large enough that a save takes a while, so a save that wrote in place would
    /// be caught half-written.
    #[test]
    fn a_save_killed_at_any_point_leaves_a_readable_state() {
        if let Ok(path) = std::env::var("RALLYCTL_TEST_SAVE_FOREVER") {
            let path = Path::new(&path);
            let mut state = load(path).unwrap().unwrap_or_else(|| State::new("w"));
            let record = TestRecord::new(
                "abc".repeat(20),
                serde_json::json!({"params": "x".repeat(20_000)}).into(),
                "esrally race".into(),
                Status::Completed,
            );
            for i in 0..500 {
                state
                    .tests
                    .insert(format!("s.t{i}").parse().unwrap(), record.clone());
            }
            loop {
                save(path, &mut state).unwrap();
                println!("saved");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.state.json");
        let mut last = 0;
        for round in 0..25u64 {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "state::file::tests::a_save_killed_at_any_point_leaves_a_readable_state",
                    "--exact",
                    "--nocapture",
                ])
                .env("RALLYCTL_TEST_SAVE_FOREVER", &path)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Saves follow one another once the first is done: kill at some moment among them.
            let mut lines =
                std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
            while lines.next().unwrap().unwrap() != "saved" {}
            std::thread::sleep(std::time::Duration::from_millis((round * 7) % 50));
            child.kill().unwrap();
            child.wait().unwrap();
            match load(&path) {
                Ok(Some(state)) => {
                    assert!(
                        state.serial >= last,
                        "serial went back: {last} then {}",
                        state.serial
                    );
                    last = state.serial;
                }
                Ok(None) => panic!("round {round}: the state vanished after serial {last}"),
                Err(e) => panic!("round {round}: {e}"),
            }
        }
    }

    #[test]
    fn corrupt_truncated_and_newer_files_are_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.state.json");
        let mut state = State::new("w");
        save(&path, &mut state).unwrap();
        save(&path, &mut state).unwrap();
        let good = fs::read_to_string(&path).unwrap();
        for (bytes, expect) in [
            (good[..good.len() / 2].to_owned(), "is not valid"),
            ("not json".to_owned(), "is not valid"),
            (
                good.replace("\"version\": 2", "\"version\": 9"),
                "newer rallyctl (state version 9",
            ),
            ("{\"serial\": 3}".to_owned(), "no `version`"),
        ] {
            fs::write(&path, &bytes).unwrap();
            let err = load_or_new(&path, "w").unwrap_err().to_string();
            assert!(err.contains(expect), "{err}");
            assert_eq!(
                fs::read_to_string(&path).unwrap(),
                bytes,
                "refused file was modified"
            );
            if expect == "is not valid" {
                assert!(
                    err.contains("w.state.json.backup"),
                    "backup not named: {err}"
                );
            }
        }
    }

    #[test]
    fn a_state_of_another_workspace_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        save(&path, &mut State::new("other")).unwrap();
        let err = load_or_new(&path, "mine").unwrap_err().to_string();
        assert!(err.contains("belongs to workspace `other`"), "{err}");
    }
}
