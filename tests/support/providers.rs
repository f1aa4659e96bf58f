//! Running rallyctl with the `ssh` and `local` providers on the harness: a plan for either, the
//! binary without any AWS variable, what state says, and what runs (or ran) on the machines.
//!
//! - `ssh`: the harness's instances as plain SSH hosts: a key pair of the workspace's own,
//!   authorized on every instance ([`Harness::authorize_key`]), host keys checked strictly
//!   against [`Harness::known_hosts`], and `remote_dir` = [`Harness::host_dir`], which every
//!   instance sees as a disk of its own (their lease files and venvs are not shared).
//! - `local`: this machine, `remote_dir` = `target/e2e/instances/local` (shared by the local
//!   tests, so the venv is installed once; runs are apart by workspace name); the ES doubles at
//!   `127.0.0.1:PORT` are reachable directly. rallyctl (and so every process it starts) runs in a
//!   PID namespace of the workspace's own ([`LocalMachine`]); filesystem, network, users and
//!   hostname are this machine's. Rally refuses to race while it sees any other Rally process
//!   ("There are other Rally processes running on this machine"), and from this machine's PID
//!   namespace it sees those inside every harness instance, this binary's and any other test
//!   run's alike: without a PID namespace of its own a local race fails whenever an ssh or aws
//!   test races at the same moment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rallyctl::address::Address;
use rallyctl::state::{State, Status, TestRecord};

use super::{Harness, context, generate_key_pair, guarded, processes, python3};

/// How long any one step of a test may take (an install of esrally into a fresh venv included).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a whole apply may take before the test gives up on it (and kills it).
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(900);

/// Held by a test racing on this machine (`local`): such races run one at a time, since
/// Rally's actor system needs 127.0.0.1:1900 of this machine's network namespace to itself.
/// (Races inside instances have network namespaces of their own.) An exclusive lock on a file,
/// not a mutex: a test runner may run the tests of one binary, or of several, in processes of
/// their own, all at once; the kernel lets go of it when the process dies.
pub fn local_races_one_at_a_time() -> std::fs::File {
    let path = std::env::temp_dir().join("rallyctl-e2e-local-races.lock");
    let file = super::lock_file(&path);
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    file
}

/// A PID namespace standing for "this machine" to one workspace's rallyctl: PID 1 a reaper
/// (the init of a machine), its own /proc (Rally lists processes through it), everything else
/// shared with this machine. Every rallyctl of the workspace enters it, so a resumed apply sees
/// the race and the lock holder of the apply it follows. Dropped (or the test gone), the
/// namespace is killed with everything still running in it.
pub struct LocalMachine {
    holder: Child,
    /// PID 1 of the namespace, as this machine numbers it.
    pub init: u32,
}

const REAPER: &str = "import os, time\n\
while True:\n    \
try:\n        os.waitpid(-1, 0)\n    \
except ChildProcessError:\n        time.sleep(0.2)\n";

impl LocalMachine {
    pub fn start() -> LocalMachine {
        let holder = guarded("unshare")
            .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg(python3())
            .args(["-c", REAPER])
            .stdin(Stdio::null())
            .spawn()
            .expect("start unshare");
        let mine = std::fs::read_link("/proc/self/ns/pid").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let init = loop {
            let init = children_of(holder.id()).into_iter().find(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|ns| ns != mine)
                    && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.contains("waitpid"))
            });
            if let Some(init) = init {
                break init;
            }
            assert!(
                Instant::now() < deadline,
                "the local machine's PID namespace did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        LocalMachine { holder, init }
    }

    /// `program` run inside the namespace, in `dir`.
    pub fn command(&self, dir: &Path, program: &Path) -> Command {
        let mut cmd = Command::new("nsenter");
        // `cd` inside: nsenter's --wd opens the directory before it enters the mount namespace,
        // and a working directory on a mount of another namespace makes every rename between
        // it and an absolute path fail with EXDEV (rallyctl's atomic state writes, say).
        cmd.args(["--target", &self.init.to_string(), "--pid", "--mount", "--"])
            .args(["/bin/sh", "-c", "cd \"$0\" && exec \"$@\""])
            .arg(dir)
            .arg(program)
            .envs(super::package_mirror());
        cmd
    }
}

impl Drop for LocalMachine {
    fn drop(&mut self) {
        let _ = self.holder.kill(); // --kill-child: PID 1 and with it the namespace die
        let _ = self.holder.wait();
    }
}

/// The children of `pid` (as this machine numbers processes).
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid ...: comm may hold spaces and parentheses.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Rally processes on this machine (every PID namespace), optionally only those whose command
/// line contains `containing`: what Rally itself counts as one (`esrally` or `rally`, or Python
/// running esrally), plus the shell and `timeout` wrappers of race.sh.
pub fn rally_processes(containing: Option<&str>) -> Vec<(u32, String)> {
    processes()
        .into_iter()
        .filter(|(pid, cmdline)| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            is_rally(comm.trim(), cmdline)
                && containing.is_none_or(|needle| cmdline.contains(needle))
        })
        .collect()
}

fn is_rally(comm: &str, cmdline: &str) -> bool {
    comm == "esrally" || comm == "rally" || (cmdline.contains("bin/esrally") && comm != "ps")
}

/// The provider of a workspace's plan, and its machines.
pub enum Provider {
    /// `provider = "local"`: this machine.
    Local,
    /// `provider = "ssh"` with a pool of harness instances; `bare[i]` writes the i-th host
    /// without its port (the plan's `ssh_port` then applies).
    Ssh { ips: Vec<String>, bare: Vec<bool> },
}

/// One workspace of rallyctl on a harness: its own directory (rallyctl's current directory),
/// plan, state and, for ssh, identity file.
pub struct Workspace<'h> {
    pub harness: &'h Harness,
    /// The plan's `name`: unique per test (local runs share one remote_dir).
    pub name: String,
    pub dir: tempfile::TempDir,
    pub provider: Provider,
    /// ssh: the identity file (authorized on every instance of the harness).
    pub key: PathBuf,
    /// local: the PID namespace every rallyctl of the workspace runs in.
    pub machine: Option<LocalMachine>,
    /// The plan's `remote_dir` when a test writes a plan of its own with another one (as the
    /// machine sees it); else the harness's, as [`Workspace::plan`] writes it.
    pub remote: Option<PathBuf>,
    /// local: what runs rallyctl as the unprivileged node user ([`Workspace::as_node_user`]),
    /// as a local cluster's must; empty for root.
    as_node_user: Vec<String>,
}

impl<'h> Workspace<'h> {
    /// A workspace racing on this machine.
    pub fn local(harness: &'h Harness, name: &str) -> Workspace<'h> {
        Workspace::new(harness, name, Provider::Local)
    }

    /// A workspace racing on the pool `ips` (harness instance addresses), each written as
    /// `IP:PORT`.
    pub fn ssh(harness: &'h Harness, name: &str, ips: &[String]) -> Workspace<'h> {
        Workspace::ssh_with(harness, name, ips, &vec![false; ips.len()])
    }

    /// `ssh`, with `bare[i]` writing the i-th host as `IP` alone (the plan's `ssh_port` then
    /// applies to it).
    pub fn ssh_with(
        harness: &'h Harness,
        name: &str,
        ips: &[String],
        bare: &[bool],
    ) -> Workspace<'h> {
        assert_eq!(ips.len(), bare.len());
        Workspace::new(
            harness,
            name,
            Provider::Ssh {
                ips: ips.to_vec(),
                bare: bare.to_vec(),
            },
        )
    }

    fn new(harness: &'h Harness, name: &str, provider: Provider) -> Workspace<'h> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rallyctl-{name}-"))
            .tempdir()
            .unwrap();
        let mut key = PathBuf::new();
        if matches!(provider, Provider::Ssh { .. }) {
            let (private, public) = generate_key_pair(dir.path(), "id_ed25519");
            harness.authorize_key(&public);
            key = private;
        }
        let machine = matches!(provider, Provider::Local).then(LocalMachine::start);
        Workspace {
            harness,
            name: name.to_string(),
            dir,
            provider,
            key,
            machine,
            remote: None,
            as_node_user: Vec::new(),
        }
    }

    /// From now on rallyctl runs as the unprivileged user of [`super::cluster::as_node_user`],
    /// with a home of its own in the workspace and root's Python first on its PATH (as the
    /// instances give the node user): Rally refuses to launch Elasticsearch as root, and a
    /// local cluster's nodes are rallyctl's processes.
    pub fn as_node_user(&mut self) {
        let home = self.dir.path().join("node-user-home");
        std::fs::create_dir_all(&home).unwrap();
        let path = std::env::var("PATH").unwrap_or_default();
        let python = super::root_python_bin();
        self.as_node_user = super::cluster::node_user_argv(&home);
        (self.as_node_user).push(format!("PATH={}:{path}", python.display()));
    }

    /// `remote_dir` of the plan, as the machine sees it.
    pub fn remote_dir(&self) -> PathBuf {
        if let Some(remote) = &self.remote {
            return remote.clone();
        }
        match self.provider {
            Provider::Local => self.harness.remote_dir.join("local"),
            Provider::Ssh { .. } => self.harness.host_dir.clone(),
        }
    }

    /// The pool as the plan writes it.
    pub fn hosts(&self) -> Vec<String> {
        match &self.provider {
            Provider::Local => Vec::new(),
            Provider::Ssh { ips, bare } => ips
                .iter()
                .zip(bare)
                .map(|(ip, bare)| {
                    if *bare {
                        ip.clone()
                    } else {
                        format!("{ip}:{}", self.harness.ssh_port)
                    }
                })
                .collect(),
        }
    }

    /// Writes `<dir>/<name>.toml`: suites of (test name, extra TOML lines); test i races the
    /// i-th ES double cluster (so that races at the same time never share indices).
    pub fn plan(&self, suites: &[(&str, &[(&str, &str)])]) -> PathBuf {
        self.plan_with(suites, 0)
    }

    /// `plan`, its tests racing the ES doubles from the `first_es`-th on (two workspaces
    /// racing at once give different ones).
    pub fn plan_with(&self, suites: &[(&str, &[(&str, &str)])], first_es: usize) -> PathBuf {
        let h = self.harness;
        let toml_str = |s: &str| serde_json::to_string(s).unwrap();
        let toml_list = |v: &[String]| serde_json::to_string(v).unwrap();
        let mut text = format!(
            "version = 1\nname = {name}\n\n[defaults]\n",
            name = toml_str(&self.name)
        );
        match &self.provider {
            Provider::Local => text.push_str("provider = \"local\"\n"),
            Provider::Ssh { .. } => text.push_str(&format!(
                "provider = \"ssh\"\nhosts = {hosts}\nssh_user = {user}\nssh_port = {port}\n\
                 ssh_key = {key}\nssh_known_hosts = {known}\n",
                hosts = toml_list(&self.hosts()),
                user = toml_str(&h.ssh_user),
                port = h.ssh_port,
                key = toml_str(self.key.to_str().unwrap()),
                known = toml_str(h.known_hosts().to_str().unwrap()),
            )),
        }
        text.push_str(&format!(
            "remote_dir = {remote}\nrally_config = {ini}\nmax_runtime = \"30m\"\n\
             track_path = {track}\noffline = true\npipeline = \"benchmark-only\"\n",
            remote = toml_str(self.remote_dir().to_str().unwrap()),
            ini = toml_str(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("conditional_install_items/rally_csv.ini")
                    .to_str()
                    .unwrap()
            ),
            track = toml_str(h.track_path.to_str().unwrap()),
        ));
        let mut i = first_es;
        for (suite, tests) in suites {
            text.push_str(&format!("\n[[suite]]\nname = {}\n", toml_str(suite)));
            for (name, extra) in *tests {
                let es = &h.es_addrs[i % h.es_addrs.len()];
                i += 1;
                text.push_str(&format!(
                    "\n[[suite.test]]\nname = {}\ntarget_hosts = [\"{es}\"]\n{extra}\n",
                    toml_str(name)
                ));
            }
        }
        let path = self.dir.path().join(format!("{}.toml", self.name));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// rallyctl in this workspace's directory, without a single AWS variable in its
    /// environment (nothing of ssh or local may need one).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut argv = self.as_node_user.clone();
        argv.push(context::BIN.to_owned());
        let (program, rest) = argv.split_first().expect("a program");
        let mut cmd = match &self.machine {
            Some(machine) => machine.command(self.dir.path(), Path::new(program)),
            None => Command::new(program),
        };
        cmd.args(rest);
        let mut cmd = context::run_as(cmd, self.dir.path(), args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd
    }

    /// Runs rallyctl to the end (killed after [`APPLY_TIMEOUT`]), echoing what it printed.
    pub fn rallyctl(&self, args: &[&str]) -> Output {
        let tag = format!("run-{}", unique());
        let child = self.spawn(&tag, args);
        let status = wait_child(
            child,
            APPLY_TIMEOUT,
            &format!("rallyctl {}", args.join(" ")),
        );
        let (stdout, stderr) = self.printed(&tag);
        eprintln!(
            "[{}] $ rallyctl {}\n{stdout}{stderr}",
            self.name,
            args.join(" ")
        );
        Output {
            status,
            stdout: stdout.into_bytes(),
            stderr: stderr.into_bytes(),
        }
    }

    /// Starts rallyctl in the background, its output going to `tag.out` and `tag.err`.
    pub fn spawn(&self, tag: &str, args: &[&str]) -> Child {
        let out = std::fs::File::create(self.dir.path().join(format!("{tag}.out"))).unwrap();
        let err = std::fs::File::create(self.dir.path().join(format!("{tag}.err"))).unwrap();
        self.command(args).stdout(out).stderr(err).spawn().unwrap()
    }

    /// The pid of the rallyctl process `spawn` started (for local, nsenter's child).
    pub fn rallyctl_pid(&self, child: &Child) -> u32 {
        if self.machine.is_none() {
            return child.id();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = children_of(child.id()).into_iter().find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "rallyctl")
            });
            if let Some(pid) = found {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no rallyctl below nsenter {}",
                child.id()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the rallyctl that `spawn` started (not only nsenter) and reaps it.
    pub fn kill(&self, child: &mut Child) {
        let pid = self.rallyctl_pid(child);
        let ok = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -KILL {pid} failed");
        child.wait().unwrap();
    }

    /// What a background run printed so far.
    pub fn printed(&self, tag: &str) -> (String, String) {
        let read = |ext: &str| {
            std::fs::read_to_string(self.dir.path().join(format!("{tag}.{ext}")))
                .unwrap_or_default()
        };
        (read("out"), read("err"))
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("state/{}.state.json", self.name))
    }

    pub fn state(&self) -> State {
        rallyctl::state::load(&self.state_path())
            .unwrap()
            .unwrap_or_else(|| panic!("no state at {}", self.state_path().display()))
    }

    /// The state file as JSON (for fields the tests read by name: `instance.provider`).
    pub fn state_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.state_path()).unwrap()).unwrap()
    }

    pub fn record(&self, address: &str) -> TestRecord {
        self.state().tests[&address.parse::<Address>().unwrap()].clone()
    }

    /// Every (address, record) of state.
    pub fn records(&self) -> Vec<(String, TestRecord)> {
        self.state()
            .tests
            .into_iter()
            .map(|(a, r)| (a.to_string(), r))
            .collect()
    }

    /// Polls state until the test's status label is `status`; panics after `timeout`.
    pub fn wait_for_status(&self, address: &str, status: &str, timeout: Duration) {
        context::wait_for_status(
            &self.state_path().display().to_string(),
            address,
            status,
            timeout,
            Duration::from_millis(10),
            // A state file is replaced atomically, so every read sees a whole one.
            || rallyctl::state::load(&self.state_path()).ok().flatten(),
        );
    }

    /// The harness instance a test ran (runs) on: its `instance.id` is the host as the pool
    /// names it (`IP` or `IP:PORT`).
    pub fn ip_of(&self, record: &TestRecord) -> String {
        let machine = record.machine.as_ref().expect("a machine recorded");
        let ip = host_ip(&machine.id);
        assert!(
            self.harness.instance_ips.contains(&ip),
            "{} is not a host of the pool ({:?})",
            machine.id,
            self.hosts()
        );
        ip
    }

    /// The directory the test's race runs in, as this machine sees it:
    /// `{remote_dir}/runs/{workspace}/{run-id}/{suite}/{test}/{attempt}`.
    pub fn run_dir(&self, address: &str, record: &TestRecord) -> PathBuf {
        let a: Address = address.parse().unwrap();
        let on_machine = self.remote_dir().join(format!(
            "runs/{}/{}/{}/{}",
            self.name,
            record.run_id.as_deref().expect("a run id"),
            a.path().display(),
            record.attempt
        ));
        match self.provider {
            Provider::Local => on_machine,
            Provider::Ssh { .. } => self.harness.host_path(&self.ip_of(record), &on_machine),
        }
    }

    /// Waits until the test races (state says so and race.pid exists on its machine); returns
    /// race.pid's path on this machine.
    pub fn wait_for_race(&self, address: &str, timeout: Duration) -> PathBuf {
        self.wait_for_status(address, "racing", timeout);
        let pid_file = self
            .run_dir(address, &self.record(address))
            .join("race.pid");
        let deadline = Instant::now() + timeout;
        while !pid_file.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                pid_file.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pid_file
    }

    /// The lease file of the pool host at `ip`, as this machine sees it.
    pub fn lease(&self, ip: &str) -> PathBuf {
        self.harness.host_path(ip, &self.remote_dir().join("lease"))
    }

    /// What `ps` run over SSH on the host at `ip` lists (as the ssh provider reaches it: this
    /// workspace's key, host key checked): `PID ARGS` lines; only that host's processes.
    pub fn ps_on(&self, ip: &str) -> Vec<String> {
        let out = self
            .harness
            .ssh_checked(&self.key, ip)
            .arg("ps -eo pid=,args=")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ps on {ip}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Rally processes `ps` lists on the host at `ip`.
    pub fn rally_on(&self, ip: &str) -> Vec<String> {
        self.ps_on(ip)
            .into_iter()
            .filter(|l| l.contains("esrally") && !l.contains("ps -eo"))
            .collect()
    }

    /// Waits up to `timeout` until no Rally process is left on the host at `ip`; returns what
    /// is left at the deadline (empty when none).
    pub fn wait_no_rally_on(&self, ip: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.rally_on(ip);
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits up to `timeout` until no Rally process of this workspace's runs is left on this
    /// machine; returns what is left at the deadline.
    pub fn wait_no_local_rally(&self, timeout: Duration) -> Vec<(u32, String)> {
        let runs = self.remote_dir().join("runs").join(&self.name);
        let needle = runs.to_str().unwrap().to_string();
        let deadline = Instant::now() + timeout;
        loop {
            let left = rally_processes(Some(&needle));
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The collected race.json of a test.
    pub fn race_json(&self, record: &TestRecord) -> serde_json::Value {
        context::race_json(self.dir.path(), record)
    }

    /// Checks what every completed test must have: the collected files where the spec puts
    /// them (`results/<ws>/<run-id>/<suite>/<test>/`), intact (sha256 as recorded), a report
    /// with Rally's throughput rows, and race.json of this race.
    pub fn assert_collected(&self, address: &str) {
        let r = self.record(address);
        assert_eq!(r.status, Status::Completed, "[{}] {address}", self.name);
        let a: Address = address.parse().unwrap();
        let home = PathBuf::from("results")
            .join(&self.name)
            .join(r.run_id.as_deref().unwrap())
            .join(a.path());
        for name in ["report.csv", "race.json", "race.log", "rally.log"] {
            let file = r
                .results
                .iter()
                .find(|f| f.path.ends_with(name))
                .unwrap_or_else(|| panic!("{address}: {name} not recorded: {:?}", r.results));
            assert_eq!(file.path, home.join(name), "{address}");
            let bytes = std::fs::read(self.dir.path().join(&file.path))
                .unwrap_or_else(|e| panic!("{address}: {}: {e}", file.path.display()));
            assert_eq!(
                file.sha256,
                super::run::sha256_hex(&bytes),
                "{}",
                file.path.display()
            );
        }
        let csv = std::fs::read_to_string(self.dir.path().join(home.join("report.csv"))).unwrap();
        assert!(csv.starts_with("Metric,Task,Value,Unit"), "{csv}");
        assert!(
            csv.lines().any(|l| l.starts_with("Median Throughput,")),
            "{csv}"
        );
        let race = self.race_json(&r);
        assert_eq!(
            race["race-id"],
            r.race_id.expect("a race id").to_string(),
            "{address}"
        );
    }
}

/// `IP` of a host as a pool names it: `IP`, `IP:PORT` or `[IP]:PORT`.
pub fn host_ip(host: &str) -> String {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    match host.rsplit_once(':') {
        Some((ip, port)) if port.chars().all(|c| c.is_ascii_digit()) => ip.to_string(),
        _ => host.to_string(),
    }
}

/// When a race really ran, from its run directory: race.sh writes race.pid as it starts Rally
/// and exit_code once Rally exited (their modification times).
pub fn race_window(run_dir: &Path) -> (SystemTime, SystemTime) {
    let mtime = |name: &str| {
        std::fs::metadata(run_dir.join(name))
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("{}: {e}", run_dir.join(name).display()))
    };
    (mtime("race.pid"), mtime("exit_code"))
}

/// When a test held its machine, from state: from `booting` (the machine acquired) to
/// `terminating` (about to release it).
pub fn holding_window(record: &TestRecord) -> (jiff::Timestamp, jiff::Timestamp) {
    (
        super::run::at(record, "booting"),
        super::run::at(record, "terminating"),
    )
}

/// When a test raced, from state: `racing` to `collecting`.
pub fn racing_window(record: &TestRecord) -> (jiff::Timestamp, jiff::Timestamp) {
    (
        super::run::at(record, "racing"),
        super::run::at(record, "collecting"),
    )
}

/// Panics naming the pair if any two of `windows` (label, start, end) overlap.
pub fn assert_disjoint<T: PartialOrd + std::fmt::Debug + Copy>(
    what: &str,
    windows: &[(String, T, T)],
) {
    for (i, (a, a0, a1)) in windows.iter().enumerate() {
        assert!(
            a0 <= a1,
            "{what}: {a} ends ({a1:?}) before it starts ({a0:?})"
        );
        for (b, b0, b1) in &windows[i + 1..] {
            assert!(
                a1 <= b0 || b1 <= a0,
                "{what}: {a} ({a0:?} .. {a1:?}) overlaps {b} ({b0:?} .. {b1:?})"
            );
        }
    }
}

/// Waits for a child up to `timeout`; kills it and panics after that.
pub fn wait_child(mut child: Child, timeout: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The names of the AWS variables in a running process's environment.
pub fn aws_variables_of(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/environ: {e}"));
    raw.split(|b| *b == 0)
        .map(|kv| String::from_utf8_lossy(kv).into_owned())
        .filter(|kv| kv.starts_with("AWS_"))
        .map(|kv| kv.split('=').next().unwrap_or_default().to_string())
        .collect()
}

impl Drop for Workspace<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "[{}] test failed; rallyctl's directory (plan, state, results, output) kept in {}",
                self.name,
                self.dir.path().display()
            );
        }
    }
}

fn unique() -> usize {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}
