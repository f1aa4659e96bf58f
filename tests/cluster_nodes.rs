//! rallyctl's own `node.sh` and `race.sh` of a test with a cluster, rendered from its templates
//! and run as the lifecycle runs them: on connected harness instances, with the real esrally
//! installing, starting and stopping the ES double as nodes of one cluster, offline; and
//! `rallyctl apply` of a cluster test on an ssh pool of such instances.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use rallyctl::plan::{Cluster, Plan};
use rallyctl::templates::{NodeCommand, Renderer, cluster_target_hosts};
use support::Harness;
use support::cluster::{
    ES_DOUBLE_TEAM, as_cluster_plan, as_node_user, one_client_per_driver, thread_each,
};
use support::fault_proxy::FaultProxy;

const ES_VERSION: &str = "8.15.0";

/// Runs `command` with bash on the instance at `ip` with `input` on its stdin.
fn run_on(h: &Harness, key: &Path, ip: &str, command: &str, input: &[u8]) -> Output {
    let mut child = h
        .ssh_checked(key, ip)
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// [`run_on`] that must succeed; returns its stdout.
fn on(h: &Harness, key: &Path, ip: &str, command: &str) -> String {
    let out = run_on(h, key, ip, command, b"");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("[{ip}] $ {command}\n{stdout}{stderr}");
    assert!(out.status.success(), "on {ip}: {command}\nfailed: {stderr}");
    stdout.into_owned()
}

/// One test with a cluster of `nodes` nodes, rendered for the harness: its instances' own disks
/// as `remote_dir` (the nodes' Rally home is per machine), the double's team, offline.
struct Rendered {
    bundle: Vec<u8>,
    remote_dir: PathBuf,
    run_dir: String,
}

fn render(h: &Harness, dir: &Path, nodes: u32) -> Rendered {
    let plan = dir.join("nodes.toml");
    std::fs::write(
        &plan,
        format!(
            r#"version = 1
name = "nodes"
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
cluster = {{ nodes = {nodes}, car = "4gheap", distribution_version = "{ES_VERSION}", team_path = "{team}" }}
[[suite]]
name = "s"
[[suite.test]]
name = "t"
"#,
            region = h.region,
            ami = h.ami,
            subnet = h.subnet_id,
            sg = h.security_group_id,
            user = h.ssh_user,
            port = h.ssh_port,
            remote = h.host_dir.display(),
            ini = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("conditional_install_items/rally_csv.ini")
                .display(),
            track = h.track_path.display(),
            team = ES_DOUBLE_TEAM,
        ),
    )
    .unwrap();
    let plan = Plan::load(&plan).unwrap();
    let test = plan.tests().next().unwrap();
    let renderer = Renderer::new();
    let artifacts = renderer.render(test).unwrap();
    assert!(artifacts.node().is_some(), "a cluster test has node.sh");
    let origin = rallyctl::staging::Origin {
        workspace: "nodes",
        run_id: "run-1",
    };
    let bundle = rallyctl::staging::bundle(&renderer, test, &artifacts, &origin).unwrap();
    Rendered {
        bundle,
        remote_dir: h.host_dir.clone(),
        run_dir: h.host_dir.join("runs/t-1").display().to_string(),
    }
}

/// What the lifecycle's installing does on each machine: the bundle into the run directory,
/// then install.sh.
fn install(h: &Harness, key: &Path, ip: &str, r: &Rendered) {
    let out = run_on(
        h,
        key,
        ip,
        &format!("mkdir -p {0} && tar -xf - -C {0}", r.run_dir),
        &r.bundle,
    );
    assert!(out.status.success(), "{out:?}");
    on(
        h,
        key,
        ip,
        &format!("bash {}/install.sh < /dev/null", r.run_dir),
    );
}

/// The node's Rally home on each machine, as node.sh makes it: its run directory.
fn nodes_home(r: &Rendered) -> PathBuf {
    PathBuf::from(&r.run_dir)
}

/// Where node.sh finds distributions on each machine: shared by its runs.
fn distributions(r: &Rendered) -> PathBuf {
    r.remote_dir.join("distributions")
}

/// `node.sh start` of node `i` of `ips`, as the node user (esrally refuses to start
/// Elasticsearch as root, and the harness logs in as root).
fn start_command(
    r: &Rendered,
    ips: &[String],
    names: &[String],
    ids: &[String],
    i: usize,
) -> String {
    let masters: Vec<&str> = names.iter().map(String::as_str).collect();
    let seeds: Vec<&str> = ips.iter().map(String::as_str).collect();
    let line = NodeCommand::Start {
        name: &names[i],
        ip: &ips[i],
        masters: &masters,
        seed_ips: &seeds,
        installation_id: &ids[i],
        race_id: "race-1",
    }
    .line(&r.run_dir)
    .unwrap();
    format!("{} {line}", as_node_user(&nodes_home(r)))
}

fn as_node(r: &Rendered, command: NodeCommand<'_>) -> String {
    format!(
        "{} {}",
        as_node_user(&nodes_home(r)),
        command.line(&r.run_dir).unwrap()
    )
}

/// The pids of the ES double nodes on the instance at `ip`.
fn node_pids(h: &Harness, ip: &str) -> Vec<u32> {
    h.instance_processes(ip)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("es_double.py"))
        .map(|(pid, _)| pid)
        .collect()
}

fn get_json(h: &Harness, from: &str, target: &str, path: &str) -> serde_json::Value {
    let body = h
        .http_get_in(from, target, path)
        .unwrap_or_else(|e| panic!("{target}{path}: {e}"));
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{target}{path}: {e}"))
}

fn authorized_key(h: &Harness) -> PathBuf {
    let (key, public) = support::generate_key_pair(h.work.path(), "cluster-nodes");
    h.authorize_key(&public);
    key
}

/// The names in a tar stream.
fn tar_names(bytes: &[u8]) -> Vec<String> {
    tar::Archive::new(bytes)
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn node_sh_stands_up_a_three_node_cluster_that_race_sh_races_and_stops_it() {
    let started = Instant::now();
    let h = Harness::start_connected(4);
    let dir = tempfile::tempdir().unwrap();
    let key = authorized_key(&h);
    let r = render(&h, dir.path(), 3);
    let (nodes, driver) = (&h.instance_ips[..3], &h.instance_ips[3]);
    thread_each(&h.instance_ips, |_, ip| install(&h, &key, ip, &r));
    eprintln!("installed after {:?}", started.elapsed());
    for ip in nodes {
        h.put_es_double_distribution_in(ip, &distributions(&r), ES_VERSION);
    }
    let names: Vec<String> = (0..3).map(|i| format!("node-{i}")).collect();
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    thread_each(nodes, |i, ip| {
        let printed = on(&h, &key, ip, &start_command(&r, nodes, &names, &ids, i));
        assert!(
            printed.contains(&format!("node {} started", names[i])),
            "{printed}"
        );
    });
    eprintln!("3 nodes started after {:?}", started.elapsed());
    let ips: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let targets = cluster_target_hosts(&ips);
    let deadline = Instant::now() + Duration::from_secs(10);
    for (ip, target) in nodes.iter().zip(targets.split(',')) {
        loop {
            let health = get_json(&h, driver, target, "/_cluster/health");
            if health["status"] == "green" {
                assert_eq!(health["number_of_nodes"], 3, "{target}: {health}");
                assert_eq!(health["cluster_name"], "rally-benchmark", "{ip}: {health}");
                break;
            }
            assert!(Instant::now() < deadline, "{target} never green: {health}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let me = get_json(&h, driver, target, "/_nodes");
        let heaps: Vec<&serde_json::Value> = me["nodes"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| &n["jvm"]["mem"]["heap_max_in_bytes"])
            .collect();
        assert!(
            heaps.iter().all(|b| **b == 4u64 << 30),
            "car 4gheap: {heaps:?}"
        );
    }

    // Started again (a resumed apply): neither installed nor started twice.
    let install_record = h.host_path(
        &nodes[0],
        &nodes_home(&r)
            .join(".rally/benchmarks/races")
            .join(&ids[0])
            .join("node-config.json"),
    );
    let installed_at = std::fs::metadata(&install_record)
        .unwrap()
        .modified()
        .unwrap();
    let pids = node_pids(&h, &nodes[0]);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let again = on(
        &h,
        &key,
        &nodes[0],
        &start_command(&r, nodes, &names, &ids, 0),
    );
    assert!(again.contains("is installed already"), "{again}");
    assert!(again.contains("answers on"), "{again}");
    assert_eq!(
        std::fs::metadata(&install_record)
            .unwrap()
            .modified()
            .unwrap(),
        installed_at
    );
    assert_eq!(node_pids(&h, &nodes[0]), pids, "the same node runs");

    // The race, from the driver, against the three nodes given to race.sh.
    let race = run_on(
        &h,
        &key,
        driver,
        &format!(
            "bash {run}/race.sh start race-1 {targets} && bash {run}/race.sh wait 300",
            run = r.run_dir
        ),
        b"\n",
    );
    let printed = String::from_utf8_lossy(&race.stdout);
    if !printed.contains("exited 0") {
        let log = on(
            &h,
            &key,
            driver,
            &format!("bash {}/race.sh tail 60", r.run_dir),
        );
        panic!(
            "the race: {printed} {}\n{log}",
            String::from_utf8_lossy(&race.stderr)
        );
    }
    eprintln!("raced after {:?}", started.elapsed());
    for (ip, target) in nodes.iter().zip(targets.split(',')) {
        let requests = h.es_node_requests(ip, target);
        let bulks_from_driver = requests
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["path"] == "/_bulk" && q["client"] == driver.as_str());
        assert!(
            bulks_from_driver,
            "{target} served the driver's bulks: {requests}"
        );
    }
    let docs = get_json(
        &h,
        driver,
        &format!("{}:{}", nodes[1], Cluster::HTTP_PORT),
        "/_test/docs",
    );
    assert_eq!(docs["tiny"], 1000, "{docs}");

    thread_each(nodes, |i, ip| {
        let stop = as_node(
            &r,
            NodeCommand::Stop {
                installation_id: &ids[i],
            },
        );
        on(&h, &key, ip, &stop);
        assert!(node_pids(&h, ip).is_empty(), "{ip}: a node process is left");
        // Stopped again (a resumed apply): nothing to do, and no failure.
        let printed = on(&h, &key, ip, &stop);
        assert!(printed.contains("stopped"), "{printed}");
        let collect = NodeCommand::Collect {
            installation_id: &ids[i],
            name: &names[i],
        };
        let out = run_on(&h, &key, ip, &collect.line(&r.run_dir).unwrap(), b"");
        assert!(out.status.success(), "{out:?}");
        let files = tar_names(&out.stdout);
        for log in ["logs/server/rally-benchmark.log", "logs/server/gc.log"] {
            assert!(
                files.iter().any(|f| f.trim_start_matches("./") == log),
                "{ip}: {log} in {files:?}"
            );
        }
    });
    eprintln!("all done after {:?}", started.elapsed());
}

#[test]
fn a_node_that_cannot_start_fails_node_sh_start_with_its_log_last_on_stderr() {
    let h = Harness::start_connected(1);
    let dir = tempfile::tempdir().unwrap();
    let key = authorized_key(&h);
    let r = render(&h, dir.path(), 1);
    let ip = &h.instance_ips[0];
    install(&h, &key, ip, &r);
    h.put_es_double_distribution_in(ip, &distributions(&r), ES_VERSION);
    let port = Cluster::HTTP_PORT;
    on(
        &h,
        &key,
        ip,
        &format!(
            "nohup python3 -c 'import socket, time; s = socket.create_server((\"{ip}\", {port})); \
             time.sleep(600)' >/dev/null 2>&1 & sleep 0.5"
        ),
    );
    let names = ["node-0".to_owned()];
    let ids = [uuid::Uuid::new_v4().to_string()];
    let out = run_on(
        &h,
        &key,
        ip,
        &start_command(&r, &h.instance_ips, &names, &ids, 0),
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        stderr.contains("rallyctl: esrally start failed with exit code 64; the node's log ends:"),
        "{stderr}"
    );
    assert!(
        last.contains(&format!("node node-0 cannot listen on {ip}:{port}"))
            && last.contains("Address already in use"),
        "the node's log last: {stderr}"
    );
    assert!(node_pids(&h, ip).is_empty(), "no node process is left");
    let tail = NodeCommand::Tail {
        installation_id: &ids[0],
        name: "node-0",
        lines: 5,
    };
    let printed = on(&h, &key, ip, &tail.line(&r.run_dir).unwrap());
    assert!(printed.contains("Address already in use"), "{printed}");
    // Nothing runs: stopping is a success that does nothing.
    on(
        &h,
        &key,
        ip,
        &as_node(
            &r,
            NodeCommand::Stop {
                installation_id: &ids[0],
            },
        ),
    );
}

/// Signals the node processes of the instance at `ip` (pids as this machine sees them).
fn signal_nodes(h: &Harness, ip: &str, signal: &str) {
    for pid in node_pids(h, ip) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

/// Waits until a `node.sh start` on the instance at `ip` waits for its node to answer: a
/// `sleep 1` of its waiting loop runs, so it is past its checks of what an earlier start left
/// behind (on a loaded machine, ssh and those checks alone can take seconds).
fn wait_for_node_sh_waiting(h: &Harness, ip: &str) {
    let parent = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name, in parentheses, may hold spaces: the fields after it are plain.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let processes = h.instance_processes(ip);
        let node_sh = |pid: u32| {
            (processes.iter()).any(|(p, cmd)| *p == pid && cmd.contains("node.sh start"))
        };
        if (processes.iter())
            .any(|(pid, cmd)| cmd == "sleep 1" && parent(*pid).is_some_and(node_sh))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node.sh start never waited for its node: {processes:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a killed apply, a dead node or a broken `esrally stop` leaves behind, `node.sh` gets
/// past when asked again: an install that found no distribution fails with Rally's log last;
/// a node that died is started again; a node left running with no record of its start (a
/// killed `esrally start`) and not answering is ended and started again; a stop whose
/// `esrally stop` fails still leaves no process.
#[test]
fn node_sh_start_and_stop_get_past_what_a_failure_left_behind() {
    let h = Harness::start_connected(1);
    let dir = tempfile::tempdir().unwrap();
    let key = authorized_key(&h);
    let r = render(&h, dir.path(), 1);
    let ip = &h.instance_ips[0];
    install(&h, &key, ip, &r);
    let names = ["node-0".to_owned()];
    let ids = [uuid::Uuid::new_v4().to_string()];
    let start = start_command(&r, &h.instance_ips, &names, &ids, 0);
    let root = h.host_path(
        ip,
        &nodes_home(&r).join(".rally/benchmarks/races").join(&ids[0]),
    );

    // Offline, with no distribution in Rally's cache: the install fails, Rally's log says why.
    let out = run_on(&h, &key, ip, &start, b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("rallyctl: esrally install failed with exit code"),
        "{stderr}"
    );
    let tail = &stderr[stderr.find("the node's log ends:").unwrap()..];
    assert!(
        tail.contains(&format!("elasticsearch-{ES_VERSION}")),
        "Rally's log names the distribution it missed: {tail}"
    );

    h.put_es_double_distribution_in(ip, &distributions(&r), ES_VERSION);
    on(&h, &key, ip, &start);
    let first = node_pids(&h, ip);
    assert_eq!(first.len(), 1);

    // The node died: started again, under the same installation.
    signal_nodes(&h, ip, "KILL");
    assert!(
        root.join("node").exists(),
        "esrally's record of the start is left"
    );
    let printed = on(&h, &key, ip, &start);
    assert!(printed.contains("is installed already"), "{printed}");
    assert!(printed.contains("node node-0 started"), "{printed}");
    let second = node_pids(&h, ip);
    assert!(second.len() == 1 && second != first, "{first:?} {second:?}");

    // Running, not answering, and no record of its start: ended, and a node started again.
    std::fs::remove_file(root.join("node")).unwrap();
    signal_nodes(&h, ip, "STOP");
    let printed = on(&h, &key, ip, &start);
    assert!(printed.contains("node node-0 started"), "{printed}");
    let third = node_pids(&h, ip);
    assert!(
        third.len() == 1 && !third.contains(&second[0]),
        "{second:?} {third:?}"
    );

    // Started, running, and never answering: a failure once the wait is over, the node's
    // log last.
    signal_nodes(&h, ip, "STOP");
    let out = run_on(
        &h,
        &key,
        ip,
        &format!("RALLYCTL_NODE_START_TIMEOUT=3 {start}"),
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "rallyctl: node node-0 answering on {ip}:{} within 3s failed",
            Cluster::HTTP_PORT
        )),
        "{stderr}"
    );
    let tail = &stderr[stderr.find("the node's log ends:").unwrap()..];
    assert!(
        tail.contains("node node-0 of cluster rally-benchmark"),
        "the node's log last: {stderr}"
    );
    // A node that dies while `node.sh start` waits for it fails the start at once.
    let waiting = h
        .ssh_checked(&key, ip)
        .arg(&start)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_node_sh_waiting(&h, ip);
    signal_nodes(&h, ip, "KILL");
    let out = waiting.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("rallyctl: node node-0 failed"), "{stderr}");
    on(&h, &key, ip, &start);
    let third = node_pids(&h, ip);

    // esrally stop cannot read its record: the node is ended all the same, and again.
    std::fs::write(root.join("node"), b"not a pickle").unwrap();
    let stop = as_node(
        &r,
        NodeCommand::Stop {
            installation_id: &ids[0],
        },
    );
    assert_eq!(third.len(), 1);
    for _ in 0..2 {
        let out = run_on(&h, &key, ip, &stop, b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("esrally stop failed"), "{stderr}");
        assert!(node_pids(&h, ip).is_empty(), "no node process is left");
    }
}

/// Whether a command line is a node's (it runs from its installation in a Rally home) or
/// Rally's; not the harness's own ES double, which an instance may list too.
fn is_node_or_rally(cmd: &str) -> bool {
    cmd.contains("/.rally/benchmarks/races/")
        || cmd.contains("bin/esrally")
        || cmd.contains(".rally/esrallyd")
}

/// What an apply again of the killed cluster test `s.c` printed: it resumed the test at racing
/// and completed it.
fn assert_resumed_at_racing_and_completed(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("s.c will be resumed at racing"), "{stdout}");
    assert!(
        stdout.contains("Apply complete: 1 completed, 0 failed."),
        "{stdout}"
    );
}

/// Nothing of a race or a cluster runs on any instance of `h`, and none is leased in `ws`.
fn assert_nothing_left(h: &Harness, ws: &support::providers::Workspace) {
    for ip in &h.instance_ips {
        let left: Vec<_> = (h.instance_processes(ip).into_iter())
            .filter(|(_, cmd)| is_node_or_rally(cmd))
            .collect();
        assert!(left.is_empty(), "{ip}: left running: {left:?}");
        assert!(!ws.lease(ip).exists(), "{ip} is still leased");
    }
}

/// The log of node `i` that came home with the record `r` of a test of `ws`.
fn node_log(ws: &support::providers::Workspace, r: &rallyctl::state::TestRecord, i: u32) -> String {
    let log = format!("nodes/node-{i}/logs/server/rally-benchmark.log");
    let file = (r.results.iter())
        .find(|f| f.path.ends_with(&log))
        .unwrap_or_else(|| panic!("{log} not recorded: {:?}", r.results));
    std::fs::read_to_string(ws.dir.path().join(&file.path)).unwrap()
}

/// `rallyctl apply` of a test with a cluster of three nodes and two load drivers on ssh pools,
/// logged in as the unprivileged [`support::NODE_USER`] (Elasticsearch refuses root): it
/// leases both drivers and one host per node, stands the cluster up with the real esrally,
/// starts Rally's daemon on both drivers and races the cluster from both; killed (SIGKILL)
/// mid-race, the next apply re-attaches to that race on those machines, brings each node's
/// logs home and gives every host back with nothing left running.
#[test]
fn a_cluster_of_three_nodes_and_two_drivers_on_ssh_pools_races_resumes_after_a_kill_and_is_given_back()
 {
    use support::providers::Workspace;

    let h = Harness::start_connected(5);
    let (nodes, drivers) = (&h.instance_ips[..3], &h.instance_ips[3..]);
    let mut ws = Workspace::ssh(&h, "cluster-ssh", drivers);
    // In the node user's home, which is each instance's own.
    let remote = h.node_home.join("rallyctl");
    ws.remote = Some(remote.clone());
    for ip in nodes {
        h.put_es_double_distribution_in(ip, &remote.join("distributions"), ES_VERSION);
    }
    let hosts: Vec<String> = (nodes.iter())
        .map(|ip| format!("{ip}:{}", h.ssh_port))
        .collect();
    let cluster = format!(
        "cluster = {{ nodes = 3, car = \"4gheap\", distribution_version = \"{ES_VERSION}\", \
         team_path = \"{ES_DOUBLE_TEAM}\", hosts = {} }}",
        serde_json::to_string(&hosts).unwrap()
    );
    let test = format!("{cluster}\nload_drivers = 2");
    let plan = ws.plan(&[("s", &[("c", &test)])]);
    as_cluster_plan(&plan, &remote);
    one_client_per_driver(&h, &plan, 2);
    let plan = plan.to_str().unwrap();

    // Killed mid-race: the nodes, the daemons and the race run on without rallyctl.
    let started = Instant::now();
    let mut first = ws.spawn("first", &["apply", plan, "--auto-approve"]);
    let pid_file = ws.wait_for_race("s.c", Duration::from_secs(900));
    eprintln!("the race began {:?} after apply did", started.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    ws.kill(&mut first);
    let before = ws.record("s.c");
    assert_eq!(
        before.status.label(),
        "racing",
        "apply moved on before SIGKILL landed"
    );
    assert_eq!(before.members.len(), 4, "{before:?}");
    for ip in nodes {
        let running = h
            .instance_processes(ip)
            .into_iter()
            .any(|(_, c)| c.contains("/.rally/benchmarks/races/"));
        assert!(running, "{ip}: the node died with rallyctl");
    }
    for ip in drivers {
        let running =
            (h.instance_processes(ip).into_iter()).any(|(_, c)| c.contains(".rally/esrallyd"));
        assert!(running, "{ip}: Rally's daemon died with rallyctl");
    }

    assert_resumed_at_racing_and_completed(&ws.rallyctl(&["apply", plan, "--auto-approve"]));
    ws.assert_collected("s.c");
    let after = ws.record("s.c");
    // The same race on the same machines and nodes: re-attached, not started again.
    assert_eq!(after.race_id, before.race_id);
    assert_eq!(
        after
            .members
            .iter()
            .map(|m| (&m.role, &m.machine.id))
            .collect::<Vec<_>>(),
        before
            .members
            .iter()
            .map(|m| (&m.role, &m.machine.id))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        pid,
        "the race was started again"
    );

    let r = ws.record("s.c");
    // Both drivers from `hosts`, a node from each host of `cluster.hosts`: 5 machines.
    let mut leased: Vec<String> = (r.machine.iter().chain(r.members.iter().map(|m| &m.machine)))
        .map(|m| support::providers::host_ip(&m.id))
        .collect();
    leased.sort();
    let mut every = h.instance_ips.clone();
    every.sort();
    assert_eq!(leased, every, "{r:?}");
    assert!(drivers.contains(&ws.ip_of(&r)));
    assert!(r.live_machines().next().is_none(), "{r:?}");
    assert_eq!(r.spent.len(), 5, "every host billed: {:?}", r.spent);

    // Each node's log came home, and says it served bulks and searches; each driver sent
    // load.
    let mut senders = std::collections::BTreeSet::new();
    for i in 0..3 {
        let text = node_log(&ws, &r, i);
        for request in [" /_bulk ", " /tiny/_search "] {
            let from: Vec<&str> = (text.lines())
                .filter(|l| l.contains(request))
                .filter_map(|l| l.split(" - ").next())
                .filter(|ip| drivers.iter().any(|d| d == ip))
                .collect();
            assert!(
                !from.is_empty(),
                "node-{i} logged no {request} from a driver:\n{text}"
            );
            senders.extend(from.into_iter().map(str::to_owned));
        }
        let gc = format!("nodes/node-{i}/logs/server/gc.log");
        assert!(r.results.iter().any(|f| f.path.ends_with(&gc)), "{gc}");
    }
    assert_eq!(
        senders.into_iter().collect::<Vec<_>>(),
        drivers,
        "each driver sent load"
    );
    // The further driver's Rally log came home: what its share of the race did.
    let log = "drivers/driver-1/rally.log";
    assert!(
        r.results.iter().any(|f| f.path.ends_with(log)),
        "{log} not recorded: {:?}",
        r.results
    );

    assert_nothing_left(&h, &ws);

    // Raced again and destroyed mid-race: giving the hosts back to their pools ends the
    // nodes, the daemons and the race, though no `esrally stop` or `esrallyd stop` ran.
    let mut again = ws.spawn(
        "again",
        &["apply", plan, "--replace", "s.c", "--auto-approve"],
    );
    ws.wait_for_race("s.c", Duration::from_secs(900));
    ws.kill(&mut again);
    for ip in drivers {
        let running =
            (h.instance_processes(ip).into_iter()).any(|(_, c)| c.contains(".rally/esrallyd"));
        assert!(running, "{ip}: no daemon of the second race");
    }
    let out = ws.rallyctl(&["destroy", plan, "--auto-approve"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = ws.record("s.c");
    assert!(r.live_machines().next().is_none(), "{r:?}");
    assert_eq!(r.members.len(), 4, "{r:?}");
    assert_nothing_left(&h, &ws);
}

/// The variants of a cluster test on ssh pools race on one cluster, its node host and its
/// load driver leased once: each variant installs a node of its own on that host with the real
/// esrally (its own car, installation and Rally home), races it, and stops it before the
/// next starts its own; each variant's node log comes home with its results, and nothing is
/// left running or leased.
#[test]
fn the_variants_of_a_cluster_test_on_ssh_race_in_turn_on_one_cluster_with_nodes_of_their_own() {
    use support::providers::Workspace;

    let h = Harness::start_connected(2);
    let (node, driver) = (&h.instance_ips[0], &h.instance_ips[1]);
    let mut ws = Workspace::ssh(&h, "cluster-variants", std::slice::from_ref(driver));
    let remote = h.node_home.join("rallyctl");
    ws.remote = Some(remote.clone());
    h.put_es_double_distribution_in(node, &remote.join("distributions"), ES_VERSION);
    let test = format!(
        "cluster = {{ nodes = 1, distribution_version = \"{ES_VERSION}\", \
         team_path = \"{ES_DOUBLE_TEAM}\", hosts = [\"{node}:{}\"] }}\n\
         [[suite.test.variant]]\nname = \"a\"\ncar = \"defaults\"\n\
         [[suite.test.variant]]\nname = \"b\"\ncar = \"4gheap\"",
        h.ssh_port
    );
    let plan = ws.plan(&[("s", &[("c", &test)])]);
    as_cluster_plan(&plan, &remote);
    let plan = plan.to_str().unwrap();

    let out = ws.rallyctl(&["apply", plan, "--auto-approve"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("Apply complete: 2 completed, 0 failed."),
        "{stdout}"
    );
    let (a, b) = (ws.record("s.c-a"), ws.record("s.c-b"));
    for (name, r) in [("a", &a), ("b", &b)] {
        ws.assert_collected(&format!("s.c-{name}"));
        let [member] = &r.members[..] else {
            panic!("{name}: {:?}", r.members)
        };
        assert_eq!(support::providers::host_ip(&member.machine.id), *node);
        assert_eq!(ws.ip_of(r), *driver);
        let log = "nodes/node-0/logs/server/rally-benchmark.log";
        let file = (r.results.iter())
            .find(|f| f.path.ends_with(log))
            .unwrap_or_else(|| panic!("{name}: {log} not recorded: {:?}", r.results));
        let text = std::fs::read_to_string(ws.dir.path().join(&file.path)).unwrap();
        assert!(
            text.contains(" /_bulk "),
            "{name}'s node served no bulk:\n{text}"
        );
    }
    // One cluster, two installations on it, one after the other.
    assert_eq!(
        a.machine.as_ref().unwrap().id,
        b.machine.as_ref().unwrap().id
    );
    assert_ne!(a.members[0].role, b.members[0].role);
    assert_ne!(a.members[0].machine.run_dir, b.members[0].machine.run_dir);
    let race_times = |r: &rallyctl::state::TestRecord| {
        let file = (r.results.iter()).find(|f| f.path.ends_with("race.json"));
        let text = std::fs::read_to_string(ws.dir.path().join(&file.unwrap().path)).unwrap();
        let race: serde_json::Value = serde_json::from_str(&text).unwrap();
        race["race-timestamp"].as_str().unwrap().to_owned()
    };
    assert!(race_times(&a) < race_times(&b), "a raced after b");
    assert_nothing_left(&h, &ws);
}

/// Processes on this machine (every PID namespace) whose command line names `dir`.
fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    let dir = dir.display().to_string();
    (support::processes().into_iter())
        .filter(|(_, cmd)| cmd.contains(&dir))
        .collect()
}

/// `rallyctl apply` of a test with a cluster of two nodes on the local provider, rallyctl run
/// as an unprivileged user (Rally refuses to launch Elasticsearch as root, and a local node is
/// rallyctl's process): each node is a machine of its own in state at a loopback address of its
/// own, installed and started by the real esrally, raced from this machine and stopped, its
/// logs brought home; raced again and destroyed mid-race, nothing of either race is left
/// running.
#[test]
fn a_cluster_of_two_nodes_on_the_local_provider_races_as_another_user_and_is_given_back() {
    use support::cluster::edit_plan;
    use support::providers::{STEP_TIMEOUT, Workspace, local_races_one_at_a_time};

    let _turn = local_races_one_at_a_time();
    let h = Harness::start(1);
    let mut ws = Workspace::local(&h, "cluster-local");
    ws.as_node_user();
    h.put_es_double_distribution_here(&ws.remote_dir().join("distributions"), ES_VERSION);
    let cluster = format!(
        "cluster = {{ nodes = 2, car = \"4gheap\", distribution_version = \"{ES_VERSION}\", \
         team_path = \"{ES_DOUBLE_TEAM}\" }}"
    );
    let plan = ws.plan(&[("s", &[("c", &cluster)])]);
    edit_plan(&plan, |key| {
        matches!(key, "target_hosts" | "pipeline").then(String::new)
    });
    let plan = plan.to_str().unwrap();
    let runs = ws.remote_dir().join("runs").join(&ws.name);

    let out = ws.rallyctl(&["apply", plan, "--auto-approve"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    ws.assert_collected("s.c");
    let r = ws.record("s.c");
    let members: Vec<(&str, Option<&str>)> = (r.members.iter())
        .map(|m| (&*m.machine.id, m.peer_address.as_deref()))
        .collect();
    assert_eq!(
        members,
        [
            ("local/node-0", Some("127.0.0.2")),
            ("local/node-1", Some("127.0.0.3"))
        ]
    );
    assert!(r.live_machines().next().is_none(), "{r:?}");
    assert_eq!(r.spent.len(), 3, "every machine billed: {:?}", r.spent);
    // Each node's log came home, and says this machine sent it bulks and searches.
    for i in 0..2 {
        let text = node_log(&ws, &r, i);
        for request in [" /_bulk ", " /tiny/_search "] {
            assert!(
                (text.lines()).any(|l| l.contains(request) && l.starts_with("127.0.0.1 - ")),
                "node-{i} logged no {request} from this machine:\n{text}"
            );
        }
    }
    let left = processes_naming(&runs);
    assert!(left.is_empty(), "left running: {left:?}");

    // Raced again and destroyed mid-race: giving the nodes back ends them, though no
    // `esrally stop` ran.
    let mut again = ws.spawn(
        "again",
        &["apply", plan, "--replace", "s.c", "--auto-approve"],
    );
    ws.wait_for_race("s.c", STEP_TIMEOUT);
    ws.kill(&mut again);
    let nodes = (processes_naming(&runs).into_iter())
        .filter(|(_, cmd)| cmd.contains("/.rally/benchmarks/races/"))
        .count();
    assert!(nodes >= 2, "the nodes died with rallyctl");
    let out = ws.rallyctl(&["destroy", plan, "--auto-approve"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let r = ws.record("s.c");
    assert!(r.live_machines().next().is_none(), "{r:?}");
    let left = processes_naming(&runs);
    assert!(left.is_empty(), "destroy left running: {left:?}");
}

/// A cluster of three nodes and two drivers in a placement group, on aws (moto has no
/// placement groups: every call goes through a fault proxy with `faults`, which answers them
/// as EC2 does), killed mid-race; the run, the plan and the proxy.
fn aws_cluster_killed_mid_race(faults: &[&str]) -> (support::run::Run, String, FaultProxy) {
    let run = support::run::Run {
        harness: Harness::start_connected(5),
        dir: tempfile::tempdir().unwrap(),
    };
    let proxy = run.proxy(faults);
    let h = &run.harness;
    h.allow_cluster_ports();
    // Which instance becomes which is EC2's to say: every one has the distribution.
    let remote = h.node_home.join("rallyctl");
    for ip in &h.instance_ips {
        h.put_es_double_distribution_in(ip, &remote.join("distributions"), ES_VERSION);
    }
    let cluster = format!(
        "cluster = {{ nodes = 3, instance_type = \"r5.large\", car = \"4gheap\", \
         distribution_version = \"{ES_VERSION}\", team_path = \"{ES_DOUBLE_TEAM}\" }}\n\
         load_drivers = 2\nplacement_group = \"cluster\""
    );
    let plan = run.plan(&[("s", &[("c", &cluster)])]);
    as_cluster_plan(&plan, &remote);
    one_client_per_driver(h, &plan, 2);
    let plan = plan.to_str().unwrap().to_owned();
    let started = Instant::now();
    let mut apply = run.spawn_with_env(
        "apply",
        &["apply", &plan, "--auto-approve"],
        &[("AWS_ENDPOINT_URL", &proxy.url)],
    );
    run.wait_for_status("s.c", "racing", Duration::from_secs(900));
    let racing = |ip: &String| {
        (h.instance_processes(ip).into_iter()).any(|(_, c)| c.contains("bin/esrally race"))
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while !h.instance_ips.iter().any(racing) {
        assert!(
            Instant::now() < deadline,
            "no race began: {:?}",
            run.printed("apply")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("the race began {:?} after apply did", started.elapsed());
    apply.kill().unwrap();
    apply.wait().unwrap();
    let r = run.record("s.c");
    assert_eq!(r.status.label(), "racing", "{r:?}");
    assert_eq!(r.members.len(), 4, "{r:?}");
    let daemons = (h.instance_ips.iter())
        .filter(|ip| {
            (h.instance_processes(ip).into_iter()).any(|(_, c)| c.contains(".rally/esrallyd"))
        })
        .count();
    assert_eq!(daemons, 2, "a daemon on each driver");
    (run, plan, proxy)
}

/// Five instances launched: the drivers, and a node each of the nodes' type, each member
/// tagged with its role, all five in the test's placement group; all terminated, each billed,
/// each reached by the others at its private address; the group deleted.
fn assert_five_given_back(run: &support::run::Run, proxy: &FaultProxy) {
    let h = &run.harness;
    let instances = h.instances();
    let report = proxy.report();
    let deleted = report["deleted_placement_groups"].as_array().unwrap();
    assert_eq!(deleted.len(), 1, "{report}");
    assert_eq!(
        report["placement_groups"],
        serde_json::json!({}),
        "{report}"
    );
    let group = deleted[0]["name"].as_str().unwrap();
    let mut ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    ids.sort();
    assert_eq!(deleted[0]["instances"], serde_json::json!(ids), "{report}");
    let r = run.record("s.c");
    let recorded: Vec<_> = (r.machine.iter().chain(r.members.iter().map(|m| &m.machine)))
        .map(|m| m.placement_group.as_deref())
        .collect();
    assert_eq!(recorded, [Some(group); 5], "{r:?}");
    assert_eq!(instances.len(), 5, "{instances:?}");
    assert_eq!(run.launches(), 5);
    let mut members: Vec<(Option<&str>, Option<&str>)> = (instances.iter())
        .map(|i| {
            let member = i.tags.get("rallyctl:member").map(String::as_str);
            (member, i.instance_type.as_deref())
        })
        .collect();
    members.sort();
    assert_eq!(
        members,
        [
            (None, Some("m5.large")),
            (Some("driver-1"), Some("m5.large")),
            (Some("node-0"), Some("r5.large")),
            (Some("node-1"), Some("r5.large")),
            (Some("node-2"), Some("r5.large")),
        ]
    );
    assert!(
        instances.iter().all(|i| i.state == "terminated"),
        "{instances:?}"
    );
    assert!(r.live_machines().next().is_none(), "{r:?}");
    assert_eq!(r.spent.len(), 5, "every instance billed: {:?}", r.spent);
    for m in &r.members {
        let peer = m.peer_address.as_deref().unwrap_or_default();
        assert!(h.instance_ips.iter().any(|ip| ip == peer), "{m:?}");
    }
    // A terminated instance's processes end with it (the harness ends them when it sees the
    // termination, as EC2 would at once).
    let deadline = Instant::now() + Duration::from_secs(30);
    for ip in &h.instance_ips {
        loop {
            let left: Vec<_> = (h.instance_processes(ip).into_iter())
                .filter(|(_, cmd)| is_node_or_rally(cmd))
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{ip}: left running: {left:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// On aws, killed mid-race, then `destroy`: all five instances terminated and billed, nothing
/// left running, the placement group deleted though EC2 first answered that it was in use.
#[test]
fn a_cluster_of_three_nodes_and_two_drivers_on_aws_killed_mid_race_is_destroyed_whole() {
    let (run, plan, proxy) =
        aws_cluster_killed_mid_race(&["DeletePlacementGroup:InvalidPlacementGroup.InUse:2"]);
    let out = run.through(&proxy, &["destroy", &plan, "--auto-approve"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(proxy.injected("DeletePlacementGroup"), 2);
    assert_five_given_back(&run, &proxy);
}

/// On aws, an apply of a cluster test in a placement group killed while its first launch is
/// under way (`fault`, the proxy's rule for that RunInstances), then `destroy`: the group (and
/// the instance, if EC2 made it) deleted, though state recorded neither. Returns the ids of
/// the instances launched.
fn killed_at_the_first_launch_then_destroyed(fault: &str) -> Vec<String> {
    let run = support::run::Run {
        harness: Harness::start_connected(1),
        dir: tempfile::tempdir().unwrap(),
    };
    let proxy = run.proxy(&[fault]);
    let h = &run.harness;
    h.allow_cluster_ports();
    let cluster = format!(
        "cluster = {{ nodes = 3, instance_type = \"r5.large\", car = \"4gheap\", \
         distribution_version = \"{ES_VERSION}\", team_path = \"{ES_DOUBLE_TEAM}\" }}\n\
         load_drivers = 2\nplacement_group = \"cluster\""
    );
    let plan = run.plan(&[("s", &[("c", &cluster)])]);
    as_cluster_plan(&plan, &h.node_home.join("rallyctl"));
    let plan = plan.to_str().unwrap().to_owned();
    let mut apply = run.spawn_with_env(
        "apply",
        &["apply", &plan, "--auto-approve"],
        &[("AWS_ENDPOINT_URL", &proxy.url)],
    );
    proxy.wait_held("RunInstances", 1, Duration::from_secs(120));
    apply.kill().unwrap();
    apply.wait().unwrap();
    let r = run.record("s.c");
    assert!(r.machine.is_none() && r.members.is_empty(), "{r:?}");
    let launched: Vec<String> = (h.running_instances().into_iter()).map(|i| i.id).collect();
    let made = proxy.report()["placement_groups"].clone();
    let groups: Vec<&String> = made.as_object().unwrap().keys().collect();
    assert_eq!(groups.len(), 1, "{made}");

    let out = run.through(&proxy, &["destroy", &plan, "--auto-approve"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("- {}  ({})", groups[0], h.region)),
        "the group is not listed: {stdout}"
    );
    assert!(stdout.contains("1 placement group deleted"), "{stdout}");
    let report = proxy.report();
    assert_eq!(
        report["placement_groups"],
        serde_json::json!({}),
        "{report}"
    );
    assert_eq!(
        report["deleted_placement_groups"],
        serde_json::json!([{ "name": groups[0], "instances": launched }]),
        "{report}"
    );
    assert!(
        h.running_instances().is_empty(),
        "an instance was left running"
    );
    launched
}

/// Killed after EC2 made the group, before it launched into it: nothing but the group to give
/// back, and no machine's release to delete it.
#[test]
fn a_placement_group_no_instance_was_launched_into_is_destroyed() {
    let launched = killed_at_the_first_launch_then_destroyed("RunInstances:hang:1");
    assert_eq!(launched, Vec::<String>::new());
}

/// Killed after EC2 launched the instance but before its answer came: `destroy` finds the
/// instance by its tags, terminates it, then deletes the group it was in.
#[test]
fn a_placement_group_whose_instance_state_never_recorded_is_destroyed_with_it() {
    let launched = killed_at_the_first_launch_then_destroyed("RunInstances:lost:1");
    assert_eq!(launched.len(), 1, "{launched:?}");
}

/// On aws, killed mid-race, then `apply` again: the same race on the same five instances,
/// re-attached rather than started again (its pid file untouched, no instance launched), the
/// nodes' logs and the further driver's Rally log brought home, and all five given back with
/// nothing left running.
#[test]
fn a_cluster_of_three_nodes_and_two_drivers_on_aws_killed_mid_race_resumes_on_its_instances() {
    let (run, plan, proxy) = aws_cluster_killed_mid_race(&[]);
    let h = &run.harness;
    let before = run.record("s.c");
    let run_dir = PathBuf::from(before.machine.as_ref().unwrap().run_dir.clone().unwrap());
    let pid_file = (h.instance_ips.iter())
        .map(|ip| h.host_path(ip, &run_dir.join("race.pid")))
        .find(|p| p.exists())
        .expect("no instance holds the race's pid file");
    let pid = std::fs::read_to_string(&pid_file).unwrap();

    assert_resumed_at_racing_and_completed(
        &run.through(&proxy, &["apply", &plan, "--auto-approve"]),
    );
    let after = run.record("s.c");
    assert_eq!(after.race_id, before.race_id);
    let machines = |r: &rallyctl::state::TestRecord| {
        (r.machine.iter().chain(r.members.iter().map(|m| &m.machine)))
            .map(|m| m.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(machines(&after), machines(&before));
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        pid,
        "the race was started again"
    );
    for log in [
        "nodes/node-0/logs/server/rally-benchmark.log",
        "nodes/node-1/logs/server/rally-benchmark.log",
        "nodes/node-2/logs/server/rally-benchmark.log",
        "drivers/driver-1/rally.log",
    ] {
        assert!(
            after.results.iter().any(|f| f.path.ends_with(log)),
            "{log} not recorded: {:?}",
            after.results
        );
    }
    assert_five_given_back(&run, &proxy);
}
