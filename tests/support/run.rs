//! Running rallyctl against a harness: a plan written for it, the binary with its environment,
//! and what state says afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::fault_proxy::FaultProxy;
use super::{Harness, context};

pub struct Run {
    pub harness: Harness,
    pub dir: tempfile::TempDir,
}

impl Run {
    pub fn new(instances: usize) -> Run {
        Run {
            harness: Harness::start(instances),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes a plan whose suites are lists of (test name, extra TOML lines); test i races the
    /// i-th ES double so that parallel races do not share indices.
    pub fn plan(&self, suites: &[(&str, &[(&str, &str)])]) -> PathBuf {
        let h = &self.harness;
        let mut text = format!(
            r#"version = 1
name = "e2e"
[defaults]
region = "{region}"
ami = "{ami}"
instance_type = "m5.large"
subnet_id = "{subnet}"
security_group_ids = ["{sg}"]
ssh_user = "{user}"
ssh_port = {port}
connect = "private_ip"
remote_dir = "{remote}"
rally_config = "{ini}"
max_runtime = "30m"
track_path = "{track}"
offline = true
pipeline = "benchmark-only"
tags = {{ team = "e2e" }}
"#,
            region = h.region,
            ami = h.ami,
            subnet = h.subnet_id,
            sg = h.security_group_id,
            user = h.ssh_user,
            port = h.ssh_port,
            remote = h.remote_dir.display(),
            ini = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("conditional_install_items/rally_csv.ini")
                .display(),
            track = h.track_path.display(),
        );
        let mut i = 0;
        for (suite, tests) in suites {
            text.push_str(&format!("\n[[suite]]\nname = \"{suite}\"\n"));
            for (name, extra) in *tests {
                let es = &h.es_addrs[i % h.es_addrs.len()];
                i += 1;
                // JSON string escapes are TOML basic-string escapes: any name can be written.
                let name = serde_json::to_string(name).unwrap();
                text.push_str(&format!(
                    "\n[[suite.test]]\nname = {name}\ntarget_hosts = [\"{es}\"]\n{extra}\n"
                ));
            }
        }
        let path = self.dir.path().join("e2e.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The command for rallyctl with the harness's environment, run in this run's directory.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = context::command(self.dir.path(), args);
        self.harness.apply_env(&mut cmd);
        cmd
    }

    pub fn rallyctl(&self, args: &[&str]) -> Output {
        self.output(&mut self.command(args), args)
    }

    /// Runs a prepared command, echoing what it printed into the test's output.
    pub fn output(&self, cmd: &mut Command, args: &[&str]) -> Output {
        let out = cmd.output().unwrap();
        eprintln!(
            "$ rallyctl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A fault proxy in front of this run's moto with `--fault` rules `faults`, logging here.
    pub fn proxy(&self, faults: &[&str]) -> FaultProxy {
        self.proxy_with(faults, &[])
    }

    /// [`Run::proxy`] with further arguments of fault_proxy.py (`--young-not-found N`).
    pub fn proxy_with(&self, faults: &[&str], args: &[&str]) -> FaultProxy {
        FaultProxy::start_with(&self.harness.moto_url, faults, args, self.dir.path())
    }

    /// rallyctl with its AWS calls going through `proxy` (a fault proxy in front of moto).
    pub fn through(&self, proxy: &FaultProxy, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        cmd.env("AWS_ENDPOINT_URL", &proxy.url);
        self.output(&mut cmd, args)
    }

    /// The step the test at `address` failed at, and why; panics when it did not fail.
    pub fn failure(&self, address: &str) -> (rallyctl::state::Step, String) {
        match self.record(address).status {
            rallyctl::state::Status::Failed { step, error, .. } => (step, error),
            other => panic!("{address} is {other:?}, not failed"),
        }
    }

    /// Starts rallyctl in the background, its output going to `name.out` and `name.err`.
    pub fn spawn(&self, name: &str, args: &[&str]) -> std::process::Child {
        self.spawn_with_env(name, args, &[])
    }

    /// `spawn` with extra environment variables (set after the harness's, so they win: e.g.
    /// `AWS_ENDPOINT_URL` of a fault proxy).
    pub fn spawn_with_env(
        &self,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> std::process::Child {
        let out = std::fs::File::create(self.dir.path().join(format!("{name}.out"))).unwrap();
        let err = std::fs::File::create(self.dir.path().join(format!("{name}.err"))).unwrap();
        self.command(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap()
    }

    /// What a background run printed so far.
    pub fn printed(&self, name: &str) -> (String, String) {
        let read = |ext: &str| {
            std::fs::read_to_string(self.dir.path().join(format!("{name}.{ext}")))
                .unwrap_or_default()
        };
        (read("out"), read("err"))
    }

    /// Polls state until the test's status label is `status`; panics after `timeout`.
    pub fn wait_for_status(&self, address: &str, status: &str, timeout: std::time::Duration) {
        let path = self.dir.path().join("state/e2e.state.json");
        context::wait_for_status(
            &path.display().to_string(),
            address,
            status,
            timeout,
            std::time::Duration::from_millis(10),
            // A state file is replaced atomically, so every read sees a whole one.
            || rallyctl::state::load(&path).ok().flatten(),
        );
    }

    /// Polls until the race of `address` runs on its instance (the harness's instances share
    /// this filesystem) and returns its pid file.
    pub fn wait_for_race(&self, address: &str, timeout: std::time::Duration) -> PathBuf {
        self.wait_for_status(address, "racing", timeout);
        let r = self.record(address);
        let a: rallyctl::address::Address = address.parse().unwrap();
        let pid_file = self.harness.remote_dir.join(format!(
            "runs/e2e/{}/{}/{}/race.pid",
            r.run_id.unwrap(),
            a.path().display(),
            r.attempt
        ));
        let deadline = std::time::Instant::now() + timeout;
        while !pid_file.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} never appeared",
                pid_file.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        pid_file
    }

    /// The race.json collected for a test.
    pub fn race_json(&self, record: &rallyctl::state::TestRecord) -> serde_json::Value {
        context::race_json(self.dir.path(), record)
    }

    pub fn state(&self) -> rallyctl::state::State {
        rallyctl::state::load(&self.dir.path().join("state/e2e.state.json"))
            .unwrap()
            .unwrap()
    }

    pub fn record(&self, address: &str) -> rallyctl::state::TestRecord {
        self.state().tests[&address.parse().unwrap()].clone()
    }

    /// RunInstances calls rallyctl made to launch (its plan-time dry runs aside).
    pub fn launches(&self) -> usize {
        self.harness
            .recorded_calls()
            .iter()
            .filter(|c| c.is_launch())
            .count()
    }
}

/// The record an apply writes for `test` (config hash and settings as rallyctl computes them)
/// in attempt 1 of a run of last night, at `status`, holding `instance`: for states that an
/// apply left behind.
pub fn record_of(
    test: &rallyctl::plan::Test,
    status: rallyctl::state::Status,
    instance: Option<rallyctl::state::Machine>,
) -> rallyctl::state::TestRecord {
    let artifacts = rallyctl::templates::Renderer::new().render(test).unwrap();
    let mut record = rallyctl::state::TestRecord {
        run_id: Some("20261201T000000Z-night0".into()),
        race_id: Some(uuid::Uuid::new_v4()),
        machine: instance,
        ..rallyctl::state::TestRecord::new(
            artifacts.config_hash,
            (&test.settings).into(),
            rallyctl::templates::race_command(&test.settings).unwrap(),
            rallyctl::state::Status::Pending,
        )
    };
    record.set_status(status);
    record
}

pub fn at(record: &rallyctl::state::TestRecord, status: &str) -> jiff::Timestamp {
    record
        .history
        .iter()
        .find(|t| t.status == status)
        .unwrap_or_else(|| panic!("no {status} in {:?}", record.history))
        .at
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
