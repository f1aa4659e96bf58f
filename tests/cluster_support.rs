//! Proves the harness's support for clusters (tests/support/cluster.rs): instances that reach one
//! another at their private IPs (`Harness::start_connected`), and the ES double packaged as a
//! distribution that the real esrally installs, starts as nodes of one cluster, races from a
//! load driver on another instance and stops, offline, as rallyctl will do it.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use support::Harness;
use support::cluster::{ES_DOUBLE_TEAM, as_node_user};
use support::run::Run;

const ES_VERSION: &str = "8.15.0";
const HTTP_PORT: u16 = 39200;
/// Rally's provisioner puts the transport port 100 above the HTTP port.
const TRANSPORT_PORT: u16 = HTTP_PORT + 100;

/// Runs `script` with bash on the instance at `ip` (a plain SSH host for `key`), echoing what it
/// printed; panics when it fails.
fn on(h: &Harness, key: &Path, ip: &str, script: &str) -> String {
    let mut child = h
        .ssh_checked(key, ip)
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
    eprintln!("[{ip}] $ {first_line} ...\n{stdout}{stderr}");
    assert!(out.status.success(), "on {ip}: {script}\nfailed: {stderr}");
    stdout.into_owned()
}

/// A key the instances accept as plain SSH hosts.
fn authorized_key(h: &Harness) -> PathBuf {
    let (key, public) = support::generate_key_pair(h.work.path(), "cluster-test");
    h.authorize_key(&public);
    key
}

#[test]
fn connected_instances_reach_one_another_at_their_private_ips_on_any_port() {
    let h = Harness::start_connected(2);
    let key = authorized_key(&h);
    let (a, b) = (&h.instance_ips[0], &h.instance_ips[1]);
    // A listener on b's private address, on Rally's actor-system port, that tells who called.
    on(
        &h,
        &key,
        b,
        &format!(
            "nohup python3 -c 'import socket; s = socket.create_server((\"{b}\", 1900)); \
             c, peer = s.accept(); c.sendall(peer[0].encode())' >/dev/null 2>&1 &\nsleep 0.5"
        ),
    );
    let seen = on(
        &h,
        &key,
        a,
        &format!(
            "python3 -c 'import socket; print(socket.create_connection((\"{b}\", 1900), 5).recv(64).decode())'"
        ),
    );
    assert_eq!(
        seen.trim(),
        a.as_str(),
        "b saw the call come from a's private IP"
    );
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

#[test]
fn esrally_installs_races_and_stops_a_three_node_cluster_of_the_double() {
    let started = Instant::now();
    let run = Run {
        harness: Harness::start_connected(4),
        dir: tempfile::tempdir().unwrap(),
    };
    let h = &run.harness;
    let key = authorized_key(h);
    let (nodes, driver) = (&h.instance_ips[..3], &h.instance_ips[3]);

    // esrally as rallyctl installs it: its own install.sh for a test of this harness.
    let plan = rallyctl::plan::Plan::load(&run.plan(&[("s", &[("t", "")])])).unwrap();
    let test = plan.tests().next().unwrap();
    let install = rallyctl::templates::Renderer::new()
        .render(test)
        .unwrap()
        .install;
    for ip in &h.instance_ips {
        on(h, &key, ip, &install);
    }
    let esrally = h.remote_dir.join("rally-2.13.0/bin/esrally");
    eprintln!("esrally installed after {:?}", started.elapsed());

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
        let user = as_node_user(&homes[i]);
        on(
            h,
            &key,
            ip,
            &format!(
                "{user} {esrally} install --quiet --offline --distribution-version={ES_VERSION} \
                 --team-path={ES_DOUBLE_TEAM} --car=4gheap --runtime-jdk=bundled \
                 --node-name={name} --network-host={ip} --http-port={HTTP_PORT} \
                 --master-nodes={masters} --seed-hosts={seeds} --cluster-name=bench \
                 --installation-id={id}\n\
                 {user} {esrally} start --quiet --offline --installation-id={id} \
                 --race-id={race} --runtime-jdk=bundled",
                esrally = esrally.display(),
                name = names[i],
                masters = names.join(","),
                seeds = seeds.join(","),
                id = ids[i],
                race = uuid::Uuid::new_v4(),
            ),
        );
    });
    eprintln!("3 nodes started after {:?}", started.elapsed());

    // Every node sees the whole cluster, from the driver's side of the network.
    let targets: Vec<String> = nodes.iter().map(|ip| format!("{ip}:{HTTP_PORT}")).collect();
    for target in &targets {
        let health: serde_json::Value =
            serde_json::from_slice(&h.http_get_in(driver, target, "/_cluster/health").unwrap())
                .unwrap();
        assert_eq!(health["number_of_nodes"], 3, "{target}: {health}");
        assert_eq!(health["status"], "green", "{target}: {health}");
        assert_eq!(health["cluster_name"], "bench", "{target}: {health}");
        let listed: serde_json::Value =
            serde_json::from_slice(&h.http_get_in(driver, target, "/_nodes").unwrap()).unwrap();
        let mut listed: Vec<&str> = listed["nodes"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        listed.sort();
        assert_eq!(listed, names, "{target} lists every node");
    }
    let info: serde_json::Value = serde_json::from_slice(
        &h.http_get_in(driver, &targets[0], "/_nodes/node-0")
            .unwrap(),
    )
    .unwrap();
    let heaps: Vec<u64> = info["nodes"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n["jvm"]["mem"]["heap_max_in_bytes"].as_u64().unwrap())
        .collect();
    assert!(
        heaps.iter().all(|b| *b == 4 << 30),
        "the car 4gheap made every node's heap 4 GiB: {heaps:?}"
    );

    // The race, from the fourth instance, against all three nodes.
    let driver_home = h.host_dir.join("driver");
    on(
        h,
        &key,
        driver,
        &format!(
            "RALLY_HOME={home} {esrally} race --pipeline=benchmark-only --offline \
             --target-hosts={targets} --track-path={track} --race-id={race} \
             --kill-running-processes --report-format=csv --report-file={home}/report.csv",
            home = driver_home.display(),
            esrally = esrally.display(),
            targets = targets.join(","),
            track = h.track_path.display(),
            race = uuid::Uuid::new_v4(),
        ),
    );
    eprintln!("race done after {:?}", started.elapsed());
    for (ip, target) in nodes.iter().zip(&targets) {
        let served = h.es_node_requests(ip, target);
        let served = served.as_array().unwrap();
        let from_driver = |path: &str| {
            served
                .iter()
                .filter(|r| r["client"] == driver.as_str() && r["path"] == path)
                .count()
        };
        assert!(
            from_driver("/_bulk") > 0 && from_driver("/tiny/_search") > 0,
            "{target} served bulks and searches from the driver {driver}: {served:?}"
        );
        assert!(
            served.iter().all(|r| r["unhandled"] == false),
            "{target}: {served:?}"
        );
    }
    // The data went to one cluster: the tiny track's 1,000 documents, once.
    let docs: serde_json::Value =
        serde_json::from_slice(&h.http_get_in(driver, &targets[0], "/_test/docs").unwrap())
            .unwrap();
    assert_eq!(docs["tiny"], 1000, "{docs}");

    // Stopped by installation id, nothing of a node is left, and its logs are in the log path
    // Rally gave it.
    thread_each(nodes, |i, ip| {
        on(
            h,
            &key,
            ip,
            &format!(
                "{} {} stop --quiet --offline --installation-id={}",
                as_node_user(&homes[i]),
                esrally.display(),
                ids[i]
            ),
        );
        let left: Vec<_> = h
            .instance_processes(ip)
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("es_double.py"))
            .collect();
        assert!(left.is_empty(), "{ip}: node processes left: {left:?}");
    });
    for (i, ip) in nodes.iter().enumerate() {
        let install = homes[i].join(".rally/benchmarks/races").join(&ids[i]);
        let logs = h.host_path(ip, &install.join(&names[i]).join("logs/server"));
        let found = find_files(&logs, &["bench.log", "gc.log"]);
        assert_eq!(
            found.len(),
            2,
            "{ip}: a node log and a GC log under {logs:?}: {found:?}"
        );
    }
    eprintln!("all done after {:?}", started.elapsed());
}

/// Runs `f(index, ip)` for every ip at once, each in its own thread.
fn thread_each(ips: &[String], f: impl Fn(usize, &String) + Sync) {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| s.spawn(move || f(i, ip)))
            .collect();
        for handle in handles {
            handle
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
    });
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
