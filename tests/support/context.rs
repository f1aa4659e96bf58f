//! What every test binary does with rallyctl: the one way to run it, what it printed as
//! snapshots and failure messages show it, and waiting for a test to reach a status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rallyctl::state::State;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_rallyctl");

/// The price file the commands run from the checkout read, as `--prices` would name it: a
/// plan's cost is estimated without the Price List API. Relative to the checkout, so snapshots
/// name it alike.
pub const PRICES: &str = "tests/fixtures/prices/prices.toml";

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// [`PRICES`] from anywhere.
pub fn prices() -> PathBuf {
    root().join(PRICES)
}

/// `cmd` (rallyctl, or what runs it elsewhere) with `args` in `dir`, without colours and at
/// the default table width whatever the terminal running the tests says (as snapshots read
/// it), without the CI job's step summary to append to, and with nothing to read on stdin.
pub fn run_as(mut cmd: Command, dir: &Path, args: &[&str]) -> Command {
    cmd.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("COLUMNS")
        .env_remove("GITHUB_STEP_SUMMARY")
        .stdin(Stdio::null());
    cmd
}

/// rallyctl with `args` in `dir`.
pub fn command(dir: &Path, args: &[&str]) -> Command {
    run_as(Command::new(BIN), dir, args)
}

/// rallyctl run from the checkout with the fixtures' prices: the commands a user runs without
/// AWS.
pub fn rallyctl(args: &[&str]) -> Output {
    command(root(), args)
        .env("RALLYCTL_PRICES", PRICES)
        .output()
        .expect("rallyctl runs")
}

/// rallyctl run in `dir` (plans and state relative to it) with the fixtures' prices.
pub fn rallyctl_in(dir: &Path, args: &[&str]) -> Output {
    command(dir, args)
        .env("RALLYCTL_PRICES", prices())
        .output()
        .expect("rallyctl runs")
}

/// Exit code, stdout and stderr, each named.
pub fn text(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `state` every `poll` (`None`: none to read yet) until the test at `address` reads
/// `status`; panics after `timeout`, naming `place` (where state is read) and the last status.
pub fn wait_for_status(
    place: &str,
    address: &str,
    status: &str,
    timeout: Duration,
    poll: Duration,
    state: impl Fn() -> Option<State>,
) {
    let deadline = Instant::now() + timeout;
    let address: rallyctl::address::Address = address.parse().unwrap();
    loop {
        let now = state().and_then(|s| s.tests.get(&address).map(|r| r.status.label()));
        if now.as_deref() == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{address} never reached {status} in {place} (last: {now:?})"
        );
        std::thread::sleep(poll);
    }
}

/// The race.json collected for a test, in the directory its results were collected under.
pub fn race_json(dir: &Path, record: &rallyctl::state::TestRecord) -> serde_json::Value {
    let file = record
        .results
        .iter()
        .find(|f| f.path.ends_with("race.json"))
        .expect("race.json recorded");
    serde_json::from_slice(&std::fs::read(dir.join(&file.path)).unwrap()).unwrap()
}
