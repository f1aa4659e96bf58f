//! Proves the e2e harness (tests/support): moto + EC2 Instance Connect semantics + one sshd
//! "instance" per private IP in its own PID namespace.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};

fn keygen(path: &Path) -> String {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "harness-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    std::fs::read_to_string(path.with_extension("pub")).unwrap()
}

/// PIDs of processes (seen from the host) whose command line is exactly `argv`.
fn pids_with_cmdline(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn instance_connect_push_gates_ssh_into_an_isolated_instance() {
    let t0 = Instant::now();
    let h = support::Harness::start(2);
    eprintln!("harness up in {:?}", t0.elapsed());

    // Launch one instance into the harness subnet: moto gives it the first instance address.
    let ec2 = h.ec2_client();
    let (id, ip) = h.block_on(async {
        let out = ec2
            .run_instances()
            .image_id(&h.ami)
            .instance_type(InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .subnet_id(&h.subnet_id)
            .security_group_ids(&h.security_group_id)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(Tag::builder().key("rallyctl:test").value("harness").build())
                    .build(),
            )
            .send()
            .await
            .expect("RunInstances");
        let i = &out.instances()[0];
        (
            i.instance_id().unwrap().to_string(),
            i.private_ip_address().unwrap().to_string(),
        )
    });
    assert_eq!(ip, h.instance_ips[0]);
    wait_until("instance running", Duration::from_secs(10), || {
        h.instances()
            .iter()
            .any(|i| i.id == id && i.state == "running")
    });
    let view = h.instances().into_iter().find(|i| i.id == id).unwrap();
    assert_eq!(
        view.tags.get("rallyctl:test").map(String::as_str),
        Some("harness")
    );
    assert_eq!(view.subnet_id.as_deref(), Some(h.subnet_id.as_str()));

    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("pushed");
    let other = keys.path().join("not-pushed");
    let pub_key = keygen(&key);
    keygen(&other);

    // Before the push, even the right key is refused.
    let st = h.ssh_command(&key, &ip).arg("true").output().unwrap();
    assert!(!st.status.success(), "key accepted before any push");

    let pushed = h.block_on(async {
        h.eic_client()
            .send_ssh_public_key()
            .instance_id(&id)
            .instance_os_user(&h.ssh_user)
            .ssh_public_key(pub_key.trim())
            .send()
            .await
            .expect("SendSSHPublicKey")
            .success()
    });
    assert!(pushed);
    let pushes = h.key_pushes();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(pushes[0].instance_id, id);
    assert_eq!(pushes[0].os_user, h.ssh_user);
    assert_eq!(pushes[0].public_key, pub_key.trim());
    let age = SystemTime::now()
        .duration_since(pushes[0].signed_at.unwrap())
        .unwrap_or_default();
    assert!(age < Duration::from_secs(30), "push signed {age:?} ago");

    // The pushed key gets in; the instance sees only its own processes and reaches the ES double.
    let t = Instant::now();
    let es_check = format!(
        "python3 -c \"import urllib.request as u; print(u.urlopen('http://{}/').headers['X-Elastic-Product'])\"",
        h.es_addr
    );
    let out = h
        .ssh_command(&key, &ip)
        .arg(format!("echo ok; ls /proc | grep -c '^[0-9]'; {es_check}"))
        .output()
        .unwrap();
    eprintln!("ssh round trip {:?}", t.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssh with the pushed key failed: {}\n{}\nAuthorizedKeysCommand log: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(h.authorized_keys_log()).unwrap_or_default(),
        h.sshd_log(&ip).display()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "ok");
    let pids: usize = lines[1].trim().parse().unwrap();
    assert!(
        pids < 10,
        "instance sees {pids} processes: not its own PID namespace"
    );
    assert_eq!(lines[2], "Elasticsearch");

    // A key that was not pushed is refused, and so is the pushed key at an address without an instance.
    let out = h.ssh_command(&other, &ip).arg("true").output().unwrap();
    assert!(!out.status.success(), "un-pushed key accepted");
    let out = h
        .ssh_command(&key, &h.instance_ips[1])
        .arg("true")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "key accepted at an address where no instance runs"
    );

    // A detached process outlives the session, and dies when moto terminates the instance.
    let marker = format!("{}", 100_000 + std::process::id() % 800_000);
    let out = h
        .ssh_command(&key, &ip)
        .arg(format!(
            "setsid nohup sleep {marker} >/dev/null 2>&1 < /dev/null &"
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_until("detached sleep visible", Duration::from_secs(5), || {
        !pids_with_cmdline(&["sleep", &marker]).is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !pids_with_cmdline(&["sleep", &marker]).is_empty(),
        "detached process died with the session"
    );
    h.block_on(async {
        ec2.terminate_instances()
            .instance_ids(&id)
            .send()
            .await
            .expect("TerminateInstances")
    });
    wait_until(
        "processes of the terminated instance gone",
        Duration::from_secs(10),
        || pids_with_cmdline(&["sleep", &marker]).is_empty(),
    );

    let own_calls: Vec<String> = h
        .recorded_calls()
        .into_iter()
        .filter(|c| !c.from_harness)
        .map(|c| c.action)
        .collect();
    assert_eq!(
        own_calls,
        ["RunInstances", "SendSSHPublicKey", "TerminateInstances"]
    );
    eprintln!("test done in {:?}", t0.elapsed());
}

/// Plain SSH hosts: a key given to `authorize_key` gets into every instance without any Instance
/// Connect push, host keys match `known_hosts()` strictly (and follow a restart), each instance
/// has a disk of its own at `host_dir`, and `instance_processes` sees only the instance's own.
#[test]
fn instances_serve_as_plain_ssh_hosts_with_known_host_keys_and_own_disks() {
    let h = support::Harness::start(2);
    let (a, b) = (h.instance_ips[0].clone(), h.instance_ips[1].clone());
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = support::generate_key_pair(keys.path(), "id_ed25519");
    let (other, _) = support::generate_key_pair(keys.path(), "other");
    assert!(public.starts_with("ssh-ed25519 "), "{public}");

    // Not yet authorized, and moto has no instance there: refused.
    let out = h.ssh_checked(&key, &a).arg("true").output().unwrap();
    assert!(!out.status.success(), "key accepted before authorize_key");
    h.authorize_key(&public);
    for ip in [&a, &b] {
        let out = h
            .ssh_checked(&key, ip)
            .arg(format!(
                "echo {ip} > {}/who; cat {}/who",
                h.host_dir.display(),
                h.host_dir.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "authorized key refused at {ip}: {}\nsshd log: {}",
            String::from_utf8_lossy(&out.stderr),
            h.sshd_log(ip).display()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ip.as_str());
    }
    let out = h.ssh_checked(&other, &a).arg("true").output().unwrap();
    assert!(!out.status.success(), "a key never authorized got in");

    // Each instance wrote its own `who` at the same path; this machine sees neither there.
    for ip in [&a, &b] {
        let who = h.host_path(ip, &h.host_dir.join("who"));
        assert_eq!(std::fs::read_to_string(&who).unwrap().trim(), ip.as_str());
    }
    assert!(
        !h.host_dir.join("who").exists(),
        "the private disk leaked to the host"
    );

    // Strict host key checking: the file names each instance's key; swapped keys are refused.
    let known = std::fs::read_to_string(h.known_hosts()).unwrap();
    assert_eq!(known.lines().count(), 2, "{known}");
    assert!(
        known.contains(&format!("[{a}]:{} {}", h.ssh_port, h.host_key(&a))),
        "{known}"
    );
    let swapped = keys.path().join("swapped");
    std::fs::write(
        &swapped,
        format!(
            "[{a}]:{port} {kb}\n[{b}]:{port} {ka}\n",
            port = h.ssh_port,
            ka = h.host_key(&a),
            kb = h.host_key(&b)
        ),
    )
    .unwrap();
    let out = Command::new("ssh")
        .args(["-i", key.to_str().unwrap(), "-p", &h.ssh_port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args(["-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", swapped.display()))
        .arg(format!("{}@{a}", h.ssh_user))
        .arg("true")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wrong host key was accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A detached process shows in its own instance only, and inside only the instance's own.
    let marker = format!("{}", 200_000 + std::process::id() % 700_000);
    let out = h
        .ssh_checked(&key, &a)
        .arg(format!(
            "setsid nohup sleep {marker} >/dev/null 2>&1 < /dev/null &"
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_until("the sleep in instance a", Duration::from_secs(5), || {
        h.instance_processes(&a)
            .iter()
            .any(|(_, c)| c == &format!("sleep {marker}"))
    });
    assert!(
        !h.instance_processes(&b)
            .iter()
            .any(|(_, c)| c.contains(&marker)),
        "instance b lists a's process"
    );
    let out = h
        .ssh_checked(&key, &b)
        .arg("ps -eo args=")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&marker));

    // A restart: new host key (known_hosts follows), same disk, the process gone.
    let before = h.host_key(&a);
    h.kill_instance_processes(&a);
    assert_ne!(
        h.host_key(&a),
        before,
        "a restarted instance kept its host key"
    );
    let out = h
        .ssh_checked(&key, &a)
        .arg(format!("cat {}/who", h.host_dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "after a restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), a.as_str());
    assert!(
        !h.instance_processes(&a)
            .iter()
            .any(|(_, c)| c.contains(&marker))
    );
}

/// Every command to one machine rides on one SSH connection (a ControlMaster), which `close`
/// ends; a master killed with its socket left behind (a killed apply) breaks no command.
#[test]
fn remote_commands_to_one_machine_share_one_ssh_connection() {
    use rallyctl::remote::{self, Endpoint, HostKeys, SshEndpoint};
    let h = support::Harness::start(1);
    let ip = h.instance_ips[0].clone();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = support::generate_key_pair(keys.path(), "id_ed25519");
    h.authorize_key(&public);
    let endpoint = Endpoint::Ssh(SshEndpoint {
        host: ip.clone(),
        port: h.ssh_port,
        user: Some(h.ssh_user.clone()),
        identity: Some(key.clone()),
        host_keys: HostKeys::Strict {
            file: Some(h.known_hosts()),
        },
    });
    // sshd runs once per connection (inetd mode) and logs each login.
    let logins = || {
        std::fs::read_to_string(h.sshd_log(&ip))
            .unwrap_or_default()
            .matches("Accepted publickey")
            .count()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run = |n: usize| {
        rt.block_on(async {
            for i in 0..n {
                let out = remote::exec(
                    &endpoint,
                    "cat",
                    i.to_string().as_bytes(),
                    Duration::from_secs(30),
                )
                .await
                .unwrap_or_else(|e| panic!("{e}\nsshd log: {}", h.sshd_log(&ip).display()));
                assert_eq!(String::from_utf8_lossy(&out.stdout), i.to_string());
            }
        })
    };
    let before = logins();
    run(5);
    assert_eq!(logins() - before, 1, "5 commands, one connection");

    // Killed, the master leaves its socket: the next command opens a new connection in its place.
    let Endpoint::Ssh(ssh) = &endpoint else {
        unreachable!()
    };
    let socket = remote::control_path(ssh).unwrap();
    assert!(socket.exists());
    // The master names itself by its socket (`ssh: PATH [mux]`).
    let masters = || {
        let key = socket.to_str().unwrap();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let state =
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                String::from_utf8_lossy(&cmd).contains(key) && !state.contains(") Z ")
            })
            .collect::<Vec<_>>()
    };
    let master = masters();
    assert_eq!(master.len(), 1, "one master: {master:?}");
    let st = Command::new("kill")
        .args(["-KILL", &master[0].to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_until("the master to die", Duration::from_secs(10), || {
        masters().is_empty()
    });
    assert!(socket.exists(), "a killed master leaves its socket");
    run(3);
    assert_eq!(
        logins() - before,
        2,
        "a new connection after the stale socket"
    );

    // Closed when the machine is given back: nothing of it is left running.
    rt.block_on(remote::close(&endpoint));
    wait_until("the master to exit", Duration::from_secs(10), || {
        masters().is_empty() && !socket.exists()
    });
}

/// The node user (`NODE_USER`: `esrally start` refuses root) gets into an instance with a key
/// pushed for it through Instance Connect, into a home of the instance's own, as root does with
/// a key pushed for root; the push lets in no other user.
#[test]
fn instance_connect_lets_in_the_node_user_with_a_key_pushed_for_it() {
    let h = support::Harness::start(1);
    let id = h.launch_tagged(&[("rallyctl:test", "node-user")]);
    wait_until("instance running", Duration::from_secs(10), || {
        h.running_instances().iter().any(|i| i.id == id)
    });
    let ip = h.instance_ips[0].clone();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("pushed");
    let public = keygen(&key);
    h.block_on(async {
        h.eic_client()
            .send_ssh_public_key()
            .instance_id(&id)
            .instance_os_user(support::NODE_USER)
            .ssh_public_key(public.trim())
            .send()
            .await
            .expect("SendSSHPublicKey")
    });
    let login = |user: &str| {
        h.ssh_checked_as(user, &key, &ip)
            .arg("id -un; echo \"$HOME\"")
            .output()
            .unwrap()
    };
    let node = login(support::NODE_USER);
    assert!(
        node.status.success(),
        "{}\nAuthorizedKeysCommand log: {}",
        String::from_utf8_lossy(&node.stderr),
        std::fs::read_to_string(h.authorized_keys_log()).unwrap_or_default()
    );
    assert_eq!(
        String::from_utf8_lossy(&node.stdout),
        format!("{}\n{}\n", support::NODE_USER, h.node_home.display())
    );
    assert!(
        !login(&h.ssh_user).status.success(),
        "a key pushed for {} let in {}",
        support::NODE_USER,
        h.ssh_user
    );
}
