//! Proves the harness's support for clusters (tests/support/cluster.rs): instances that reach one
//! another at their private IPs (`Harness::start_connected`), and the ES double packaged as a
//! distribution that the real esrally installs, starts as nodes of one cluster, races from a
//! load driver on another instance and stops, offline, as rallyctl will do it.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::cluster::{ES_DOUBLE_TEAM, as_node_user, thread_each};
use support::run::Run;
use support::{Harness, NODE_USER};

const ES_VERSION: &str = "8.15.0";
const HTTP_PORT: u16 = 39200;
/// Rally's provisioner puts the transport port 100 above the HTTP port.
const TRANSPORT_PORT: u16 = HTTP_PORT + 100;

/// Runs `script` with bash on the instance at `ip` (a plain SSH host for `key`), echoing what it
/// printed; panics when it fails.
fn on(h: &Harness, key: &Path, ip: &str, script: &str) -> String {
    on_as(h, &h.ssh_user, key, ip, script)
}

/// [`on`], logged in as `user`.
fn on_as(h: &Harness, user: &str, key: &Path, ip: &str, script: &str) -> String {
    let mut child = h
        .ssh_checked_as(user, key, ip)
        .arg("bash -s")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out: Output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let first_line = script.lines().next().unwrap_or_default();
    eprintln!("[{user}@{ip}] $ {first_line} ...\n{stdout}{stderr}");
    assert!(
        out.status.success(),
        "on {user}@{ip}: {script}\nfailed: {stderr}"
    );
    stdout.into_owned()
}

/// A key the instances accept as plain SSH hosts.
fn authorized_key(h: &Harness) -> PathBuf {
    let (key, public) = support::generate_key_pair(h.work.path(), "cluster-test");
    h.authorize_key(&public);
    key
}

/// The address the instance at `to` sees a TCP connection from `from` come from, on Rally's
/// actor-system port of its private address.
fn caller_seen_by(h: &Harness, key: &Path, from: &str, to: &str) -> String {
    on(
        h,
        key,
        to,
        &format!(
            "nohup python3 -c 'import socket; s = socket.create_server((\"{to}\", 1900)); \
             c, peer = s.accept(); c.sendall(peer[0].encode())' >/dev/null 2>&1 &\nsleep 0.5"
        ),
    );
    on(
        h,
        key,
        from,
        &format!(
            "python3 -c 'import socket; print(socket.create_connection((\"{to}\", 1900), 5).recv(64).decode())'"
        ),
    )
    .trim()
    .to_owned()
}

#[test]
fn connected_instances_reach_one_another_at_their_private_ips_on_any_port() {
    let h = Harness::start_connected(2);
    let key = authorized_key(&h);
    let (a, b) = (&h.instance_ips[0], &h.instance_ips[1]);
    assert_eq!(caller_seen_by(&h, &key, a, b), *a);
    // An instance started again at its address (a terminated one's successor) is on the
    // bridge again: its predecessor's veth pair gave way.
    h.kill_instance_processes(b);
    assert_eq!(caller_seen_by(&h, &key, a, b), *a);
    // What every instance had before is still there: the relay to the ES double on 127.0.0.1,
    // and no other instance's 1900 on 127.0.0.1 (each has its own loopback).
    let es = on(
        &h,
        &key,
        a,
        &format!(
            "python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://{}/\").status)'",
            h.es_addr
        ),
    );
    assert_eq!(es.trim(), "200");
    on(
        &h,
        &key,
        b,
        "! python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 1900), 2)' 2>/dev/null",
    );
}

/// A cluster of the ES double started with esrally on some of a harness's instances.
struct Cluster {
    nodes: Vec<String>,
    names: Vec<String>,
    homes: Vec<PathBuf>,
    ids: Vec<String>,
    /// Each node's HTTP address, as `--target-hosts` names them.
    targets: Vec<String>,
}

/// esrally as rallyctl installs it (its own install.sh for a test of this harness) on every
/// instance of `run`; returns the esrally executable.
fn install_esrally(run: &Run, key: &Path) -> PathBuf {
    let h = &run.harness;
    let install = install_script(run, "");
    for ip in &h.instance_ips {
        on(h, key, ip, &install);
    }
    h.remote_dir.join(VENV).join("bin/esrally")
}

/// The venv rallyctl's install.sh makes in `remote_dir`.
const VENV: &str = "rally-2.13.0";

/// rallyctl's install.sh for a test of `run`'s plan with the further settings `extra`.
fn install_script(run: &Run, extra: &str) -> String {
    let plan = rallyctl::plan::Plan::load(&run.plan(&[("s", &[("t", extra)])])).unwrap();
    let test = plan.tests().next().unwrap();
    let artifacts = rallyctl::templates::Renderer::new().render(test).unwrap();
    artifacts.install().to_owned()
}

/// One node as esrally manages it.
struct Node<'a> {
    esrally: &'a Path,
    home: &'a Path,
    ip: &'a str,
    name: &'a str,
    id: &'a str,
    /// What goes before `esrally` in the shell on the instance: `as_node_user(home)` in
    /// root's, nothing in the node user's own.
    runs_as: String,
}

impl Node<'_> {
    /// `esrally install` of the node (car 4gheap) in a cluster of the nodes named `masters`
    /// at the transport addresses `seeds` (both comma-separated), as its own user.
    fn install(&self, masters: &str, seeds: &str) -> String {
        format!(
            "{runs_as} {esrally} install --quiet --offline --distribution-version={ES_VERSION} \
             --team-path={ES_DOUBLE_TEAM} --car=4gheap --runtime-jdk=bundled \
             --node-name={name} --network-host={ip} --http-port={HTTP_PORT} \
             --master-nodes={masters} --seed-hosts={seeds} --cluster-name=bench \
             --installation-id={id}",
            runs_as = self.runs_as,
            esrally = self.esrally.display(),
            name = self.name,
            ip = self.ip,
            id = self.id,
        )
    }

    /// `esrally start` of the installed node.
    fn start(&self) -> String {
        format!(
            "{runs_as} {esrally} start --quiet --offline --installation-id={id} --race-id={race} \
             --runtime-jdk=bundled",
            runs_as = self.runs_as,
            esrally = self.esrally.display(),
            id = self.id,
            race = uuid::Uuid::new_v4(),
        )
    }

    /// `esrally stop` of the node.
    fn stop(&self) -> String {
        format!(
            "{runs_as} {esrally} stop --quiet --offline --installation-id={id}",
            runs_as = self.runs_as,
            esrally = self.esrally.display(),
            id = self.id,
        )
    }

    /// Where the node logs, on this machine.
    fn log_dir(&self, h: &Harness) -> PathBuf {
        let install = self.home.join(".rally/benchmarks/races").join(self.id);
        h.host_path(self.ip, &install.join(self.name).join("logs/server"))
    }
}

/// `esrally install` (car 4gheap) and `esrally start` of one node per instance of `nodes`,
/// all at once, as rallyctl will; returns once every node sees the whole cluster green.
fn start_cluster(h: &Harness, key: &Path, esrally: &Path, nodes: &[String]) -> Cluster {
    let names: Vec<String> = (0..nodes.len()).map(|i| format!("node-{i}")).collect();
    let seeds: Vec<String> = nodes
        .iter()
        .map(|ip| format!("{ip}:{TRANSPORT_PORT}"))
        .collect();
    let homes: Vec<PathBuf> = names.iter().map(|n| h.host_dir.join(n)).collect();
    let ids: Vec<String> = names
        .iter()
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    for (ip, home) in nodes.iter().zip(&homes) {
        h.put_es_double_distribution(ip, home, ES_VERSION);
    }
    thread_each(nodes, |i, ip| {
        let node = Node {
            esrally,
            home: &homes[i],
            ip,
            name: &names[i],
            id: &ids[i],
            runs_as: as_node_user(&homes[i]),
        };
        let install = node.install(&names.join(","), &seeds.join(","));
        on(h, key, ip, &format!("{install}\n{}", node.start()));
    });
    let targets: Vec<String> = nodes.iter().map(|ip| format!("{ip}:{HTTP_PORT}")).collect();
    // Like Elasticsearch's, the double's nodes find one another within moments of starting.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (ip, target) in nodes.iter().zip(&targets) {
        loop {
            let health = get_json(h, ip, target, "/_cluster/health");
            if health["status"] == "green" {
                assert_eq!(health["number_of_nodes"], nodes.len(), "{target}: {health}");
                assert_eq!(health["cluster_name"], "bench", "{target}: {health}");
                break;
            }
            assert!(Instant::now() < deadline, "{target} never green: {health}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Cluster {
        nodes: nodes.to_vec(),
        names,
        homes,
        ids,
        targets,
    }
}

/// `esrally stop` of every node by its installation id, all at once; then no process of a node
/// is left, and each node's log and GC log are in the log path Rally gave it.
fn stop_cluster(h: &Harness, key: &Path, esrally: &Path, c: &Cluster) {
    thread_each(&c.nodes, |i, ip| {
        let node = Node {
            esrally,
            home: &c.homes[i],
            ip,
            name: &c.names[i],
            id: &c.ids[i],
            runs_as: as_node_user(&c.homes[i]),
        };
        on(h, key, ip, &node.stop());
        assert_no_node_left(h, ip);
        let logs = node.log_dir(h);
        let found = find_files(&logs, &["bench.log", "gc.log"]);
        assert_eq!(
            found.len(),
            2,
            "{ip}: a node log and a GC log in {logs:?}: {found:?}"
        );
    });
}

/// No process of a node of the double is left on the instance at `ip`.
fn assert_no_node_left(h: &Harness, ip: &str) {
    let left = node_processes(h, ip);
    assert!(left.is_empty(), "{ip}: node processes left: {left:?}");
}

/// The processes of nodes of the double on the instance at `ip`.
fn node_processes(h: &Harness, ip: &str) -> Vec<(u32, String)> {
    h.instance_processes(ip)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("es_double.py"))
        .collect()
}

/// GET `path` of the node at `target` from the instance at `from`, as JSON.
fn get_json(h: &Harness, from: &str, target: &str, path: &str) -> serde_json::Value {
    let body = h
        .http_get_in(from, target, path)
        .unwrap_or_else(|e| panic!("{target}{path}: {e}"));
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{target}{path}: {e}"))
}

/// The requests each node of `c` served, as (method, path, client) per node.
fn served(h: &Harness, c: &Cluster) -> Vec<Vec<(String, String, String)>> {
    c.nodes
        .iter()
        .zip(&c.targets)
        .map(|(ip, target)| {
            let all = h.es_node_requests(ip, target);
            let all = all.as_array().unwrap();
            assert!(
                all.iter().all(|r| r["unhandled"] == false),
                "{target}: {all:?}"
            );
            all.iter()
                .map(|r| {
                    let field = |k: &str| r[k].as_str().unwrap().to_owned();
                    (field("method"), field("path"), field("client"))
                })
                .collect()
        })
        .collect()
}

/// Does `requests` hold a bulk and a search of the tiny track sent from `client`?
fn bulks_and_searches_from(requests: &[(String, String, String)], client: &str) -> bool {
    let from = |path: &str| requests.iter().any(|(_, p, c)| p == path && c == client);
    from("/_bulk") && from("/tiny/_search")
}

#[test]
fn esrally_installs_races_and_stops_a_three_node_cluster_of_the_double() {
    let started = Instant::now();
    let run = Run {
        harness: Harness::start_connected(4),
        dir: tempfile::tempdir().unwrap(),
    };
    let h = &run.harness;
    let key = authorized_key(h);
    let driver = &h.instance_ips[3];
    let esrally = install_esrally(&run, &key);
    eprintln!("esrally installed after {:?}", started.elapsed());
    let cluster = start_cluster(h, &key, &esrally, &h.instance_ips[..3]);
    eprintln!("3 nodes started after {:?}", started.elapsed());

    // Every node lists the whole cluster, and the car's heap.
    for target in &cluster.targets {
        let listed = get_json(h, driver, target, "/_nodes");
        let mut names: Vec<&str> = listed["nodes"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, cluster.names, "{target} lists every node");
        let heaps: Vec<&serde_json::Value> = listed["nodes"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| &n["jvm"]["mem"]["heap_max_in_bytes"])
            .collect();
        assert!(
            heaps.iter().all(|b| **b == 4u64 << 30),
            "the car 4gheap made every node's heap 4 GiB: {heaps:?}"
        );
        let cat = get_json(h, driver, target, "/_cat/nodes?format=json");
        let masters: Vec<&serde_json::Value> = cat
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["master"] == "*")
            .map(|n| &n["name"])
            .collect();
        assert_eq!(
            masters,
            ["node-0"],
            "{target}: one master, the first seed host: {cat}"
        );
        let me = get_json(h, driver, target, "/");
        assert_eq!(me["cluster_name"], "bench", "{target}: {me}");
        assert_eq!(me["version"]["number"], ES_VERSION, "{target}: {me}");
    }

    // The race, from the fourth instance, against all three nodes.
    let home = h.host_dir.join("driver");
    on(
        h,
        &key,
        driver,
        &format!(
            "RALLY_HOME={home} {esrally} race --pipeline=benchmark-only --offline \
             --target-hosts={targets} --track-path={track} --race-id={race} \
             --kill-running-processes --report-format=csv --report-file={home}/report.csv",
            home = home.display(),
            esrally = esrally.display(),
            targets = cluster.targets.join(","),
            track = h.tiny_track(1).display(),
            race = uuid::Uuid::new_v4(),
        ),
    );
    eprintln!("race done after {:?}", started.elapsed());
    for (requests, target) in served(h, &cluster).iter().zip(&cluster.targets) {
        assert!(
            bulks_and_searches_from(requests, driver),
            "{target} served bulks and searches from the driver {driver}: {requests:?}"
        );
    }
    // The data went to one cluster: the tiny track's 1,000 documents, once.
    let docs = get_json(h, driver, &cluster.targets[1], "/_test/docs");
    assert_eq!(docs["tiny"], 1000, "{docs}");

    stop_cluster(h, &key, &esrally, &cluster);
    eprintln!("all done after {:?}", started.elapsed());
}

#[test]
fn two_load_drivers_under_esrallyd_each_send_load_to_every_node() {
    let started = Instant::now();
    let run = Run {
        harness: Harness::start_connected(5),
        dir: tempfile::tempdir().unwrap(),
    };
    let h = &run.harness;
    let key = authorized_key(h);
    let drivers = &h.instance_ips[3..];
    let esrally = install_esrally(&run, &key);
    let cluster = start_cluster(h, &key, &esrally, &h.instance_ips[..3]);
    eprintln!("3 nodes started after {:?}", started.elapsed());

    // Two clients per task: Rally spreads clients evenly over the load driver hosts, so each
    // driver gets one.
    let track = h.tiny_track(2);

    // esrallyd on the coordinator first, then on the other driver; the race on the coordinator.
    let coordinator = &drivers[0];
    let esrallyd = esrally.with_file_name("esrallyd");
    let home = |ip: &str| h.host_dir.join(format!("driver-{ip}"));
    for ip in drivers {
        on(
            h,
            &key,
            ip,
            &format!(
                "RALLY_HOME={home} {esrallyd} start --node-ip={ip} --coordinator-ip={coordinator} \
                 >{home}.esrallyd.log 2>&1 </dev/null; status=$?; cat {home}.esrallyd.log; exit $status",
                home = home(ip).display(),
                esrallyd = esrallyd.display(),
            ),
        );
    }
    on(
        h,
        &key,
        coordinator,
        &format!(
            "RALLY_HOME={home} {esrally} race --pipeline=benchmark-only --offline \
             --target-hosts={targets} --load-driver-hosts={drivers} --track-path={track} \
             --race-id={race} --report-format=csv --report-file={home}/report.csv",
            home = home(coordinator).display(),
            esrally = esrally.display(),
            targets = cluster.targets.join(","),
            drivers = drivers.join(","),
            track = track.display(),
            race = uuid::Uuid::new_v4(),
        ),
    );
    eprintln!("race done after {:?}", started.elapsed());
    let served = served(h, &cluster);
    for driver in drivers {
        assert!(
            served
                .iter()
                .flatten()
                .any(|(_, p, c)| p == "/_bulk" && c == driver),
            "the driver {driver} sent bulks: {served:?}"
        );
    }
    for (requests, target) in served.iter().zip(&cluster.targets) {
        assert!(
            drivers.iter().any(|d| bulks_and_searches_from(requests, d)),
            "{target} served bulks and searches: {requests:?}"
        );
    }
    let docs = get_json(h, coordinator, &cluster.targets[0], "/_test/docs");
    assert_eq!(docs["tiny"], 1000, "{docs}");

    for ip in drivers {
        on(
            h,
            &key,
            ip,
            &format!(
                "RALLY_HOME={home} {esrallyd} stop",
                home = home(ip).display(),
                esrallyd = esrallyd.display()
            ),
        );
        let left: Vec<_> = h
            .instance_processes(ip)
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("esrally"))
            .collect();
        assert!(left.is_empty(), "{ip}: Rally processes left: {left:?}");
    }
    stop_cluster(h, &key, &esrally, &cluster);
    eprintln!("all done after {:?}", started.elapsed());
}

#[test]
fn a_node_that_cannot_listen_fails_esrally_start_and_its_log_says_why() {
    let run = Run {
        harness: Harness::start(1),
        dir: tempfile::tempdir().unwrap(),
    };
    let h = &run.harness;
    let key = authorized_key(h);
    let esrally = install_esrally(&run, &key);
    let ip = &h.instance_ips[0];
    let home = h.host_dir.join("node-0");
    let id = uuid::Uuid::new_v4().to_string();
    let node = Node {
        esrally: &esrally,
        home: &home,
        ip,
        name: "node-0",
        id: &id,
        runs_as: as_node_user(&home),
    };
    h.put_es_double_distribution(ip, &home, ES_VERSION);
    let printed = on(
        h,
        &key,
        ip,
        &format!(
            "nohup python3 -c 'import socket, time; s = socket.create_server((\"{ip}\", {HTTP_PORT})); \
             time.sleep(600)' >/dev/null 2>&1 &\nsleep 0.5\n{install}\n\
             if {start}; then exit 1; else echo \"start failed: $?\"; fi",
            install = node.install("node-0", &format!("{ip}:{TRANSPORT_PORT}")),
            start = node.start(),
        ),
    );
    assert!(printed.contains("start failed: 64"), "{printed}");
    let log = std::fs::read_to_string(node.log_dir(h).join("bench.log")).unwrap();
    assert!(
        log.contains(&format!("node node-0 cannot listen on {ip}:{HTTP_PORT}"))
            && log.contains("Address already in use"),
        "{log}"
    );
    assert_no_node_left(h, ip);
}

/// Logged in as the node user with plain ssh, as rallyctl will log in to a node: rallyctl's
/// install.sh installs esrally into that user's own home, esrally installs and starts a node of
/// the double, which runs as that user and answers the other instance on the bridge, and stops
/// it; root's start of the same node is refused by Rally.
#[test]
fn the_node_user_runs_a_node_with_esrally_that_root_may_not_start() {
    let started = Instant::now();
    let run = Run {
        harness: Harness::start_connected(2),
        dir: tempfile::tempdir().unwrap(),
    };
    let h = &run.harness;
    let key = authorized_key(h);
    let (ip, other) = (&h.instance_ips[0], &h.instance_ips[1]);
    let home = &h.node_home;
    // esrally unpacks Elasticsearch with tarfile's extraction filter (Python >= 3.11.4).
    let me = on_as(
        h,
        NODE_USER,
        &key,
        ip,
        "id -un; echo \"$HOME\"; touch ~/mine; python3 -c 'import tarfile; tarfile.data_filter'",
    );
    assert_eq!(me, format!("{NODE_USER}\n{}\n", home.display()));
    assert!(h.host_path(ip, &home.join("mine")).exists());
    assert!(
        !h.host_path(other, &home.join("mine")).exists(),
        "each instance has a home of its own"
    );

    let install = install_script(
        &run,
        &format!("ssh_user = \"{NODE_USER}\"\nremote_dir = \"rallyctl\""),
    );
    on_as(h, NODE_USER, &key, ip, &install);
    let esrally = home.join("rallyctl").join(VENV).join("bin/esrally");
    eprintln!("esrally installed after {:?}", started.elapsed());

    h.put_es_double_distribution(ip, home, ES_VERSION);
    let id = uuid::Uuid::new_v4().to_string();
    let node = Node {
        esrally: &esrally,
        home,
        ip,
        name: "node-0",
        id: &id,
        runs_as: String::new(),
    };
    let seed = format!("{ip}:{TRANSPORT_PORT}");
    on_as(
        h,
        NODE_USER,
        &key,
        ip,
        &format!("{}\n{}", node.install("node-0", &seed), node.start()),
    );
    let uid = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace().nth(1).unwrap().to_owned()
    };
    let running = node_processes(h, ip);
    let node_uid = on_as(h, NODE_USER, &key, ip, "id -u");
    assert!(
        !running.is_empty() && running.iter().all(|(pid, _)| uid(*pid) == node_uid.trim()),
        "the node runs as {NODE_USER} (uid {node_uid}): {running:?}"
    );
    let answer = on_as(
        h,
        NODE_USER,
        &key,
        other,
        &format!(
            "python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://{ip}:{HTTP_PORT}/\").read().decode())'"
        ),
    );
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["name"], "node-0", "{answer}");
    assert_eq!(answer["version"]["number"], ES_VERSION, "{answer}");

    on_as(h, NODE_USER, &key, ip, &node.stop());
    assert_no_node_left(h, ip);

    let as_root = Node {
        runs_as: format!("env HOME={}", home.display()),
        ..node
    };
    let refused = on(
        h,
        &key,
        ip,
        &format!(
            "if {} 2>&1; then exit 1; else echo \"start failed: $?\"; fi",
            as_root.start()
        ),
    );
    assert!(
        refused.contains("Cannot launch Elasticsearch as root") && refused.contains("start failed"),
        "{refused}"
    );
    assert_no_node_left(h, ip);
    eprintln!("all done after {:?}", started.elapsed());
}

/// Files under `dir` named one of `names`.
fn find_files(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    let out = Command::new("find")
        .arg(dir)
        .arg("-type")
        .arg("f")
        .output()
        .expect("find");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.file_name().is_some_and(|n| names.iter().any(|w| n == *w)))
        .collect()
}
