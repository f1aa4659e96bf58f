//! Elasticsearch clusters of the ES double on connected instances ([`Harness::start_connected`]):
//! the double packaged as a distribution that `esrally install` takes offline, the team
//! directory with its cars, and a look at each node from inside the instances' network.

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, chown};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use super::{Harness, http_request, run_ok};

/// The team directory (`esrally install --team-path`) with the double's cars `defaults` and
/// `4gheap`; see its README.
pub const ES_DOUBLE_TEAM: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/es-double-team");

/// What goes before a command, in a shell on an instance, to run it as an unprivileged user
/// with `rally_home` as its home and Rally's: `esrally start` refuses to launch Elasticsearch
/// as root. The user (`nobody`) keeps root's access to files (`CAP_DAC_OVERRIDE`), because
/// the venvs here are made by root's Python, which lives under the 0700 `/root`; on a real
/// machine that user would own its venv.
pub fn as_node_user(rally_home: &Path) -> String {
    node_user_argv(rally_home).join(" ")
}

/// [`as_node_user`] as a program and its arguments, the command to run following them.
pub fn node_user_argv(rally_home: &Path) -> Vec<String> {
    let home = rally_home.display();
    [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+dac_override",
        "--ambient-caps=+dac_override",
        "env",
        &format!("HOME={home}"),
        &format!("RALLY_HOME={home}"),
    ]
    .map(str::to_owned)
    .into()
}

/// Runs `f(index, ip)` for every ip at once, each in its own thread.
pub fn thread_each(ips: &[String], f: impl Fn(usize, &String) + Sync) {
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

/// Makes a plan the harness wrote (`Run::plan`, `Workspace::plan`) one of cluster tests: no
/// `pipeline` or `target_hosts` (rallyctl stands the cluster up), logged in as the node user
/// ([`as_node_user_plan`]).
pub fn as_cluster_plan(plan: &Path, remote_dir: &Path) {
    as_node_user_plan(plan, remote_dir);
    edit_plan(plan, |key| {
        matches!(key, "target_hosts" | "pipeline").then(String::new)
    });
}

/// Makes a plan the harness wrote log in as the node user ([`super::NODE_USER`]:
/// Elasticsearch refuses root) with `remote_dir` in its home.
pub fn as_node_user_plan(plan: &Path, remote_dir: &Path) {
    edit_plan(plan, |key| match key {
        "ssh_user" => Some(format!("ssh_user = \"{}\"\n", super::NODE_USER)),
        "remote_dir" => Some(format!(
            "remote_dir = {:?}\n",
            remote_dir.display().to_string()
        )),
        _ => None,
    });
}

/// Rewrites the lines of a plan the harness wrote whose keys `replace` answers for.
pub fn edit_plan(plan: &Path, replace: impl Fn(&str) -> Option<String>) {
    let text = fs::read_to_string(plan).unwrap();
    let lines: String = (text.lines())
        .map(|l| {
            let key = l.split(" = ").next().unwrap_or_default();
            replace(key).unwrap_or_else(|| format!("{l}\n"))
        })
        .collect();
    fs::write(plan, lines).unwrap();
}

/// Races the plan's tests from a copy of the tiny track with a client per load driver.
pub fn one_client_per_driver(h: &Harness, plan: &Path, drivers: usize) {
    let track = h.tiny_track(drivers);
    edit_plan(plan, |key| {
        (key == "track_path").then(|| format!("track_path = {:?}\n", track.display().to_string()))
    });
}

impl Harness {
    /// Lets the machines of the harness's security group reach one another as a cluster
    /// test's must (what `plan` checks): Elasticsearch's HTTP and transport ports, and Rally's
    /// actor system between load drivers.
    pub fn allow_cluster_ports(&self) {
        use rallyctl::plan::Cluster;
        let within_group = |ports: std::ops::RangeInclusive<u16>| {
            aws_sdk_ec2::types::IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(i32::from(*ports.start()))
                .to_port(i32::from(*ports.end()))
                .user_id_group_pairs(
                    aws_sdk_ec2::types::UserIdGroupPair::builder()
                        .group_id(&self.security_group_id)
                        .build(),
                )
                .build()
        };
        let rules = [
            Cluster::HTTP_PORT..=Cluster::TRANSPORT_PORT,
            Cluster::ACTOR_PORT..=Cluster::ACTOR_PORT,
            Cluster::ACTOR_PORTS,
        ]
        .map(within_group);
        self.block_on(
            self.ec2_client()
                .authorize_security_group_ingress()
                .group_id(&self.security_group_id)
                .set_ip_permissions(Some(rules.into()))
                .send(),
        )
        .unwrap();
    }

    /// A copy of the tiny track with `clients` clients per task, in the harness's work
    /// directory: Rally spreads a task's clients over its load driver hosts, so with one per
    /// driver each sends load. Rally writes an offset file next to the corpus of the track it
    /// races, and in the fixture directory that file would change the config hash of every
    /// plan naming it.
    pub fn tiny_track(&self, clients: usize) -> PathBuf {
        let track = self.work.path().join(format!("tiny-{clients}-clients"));
        fs::create_dir_all(&track).unwrap();
        let spec = fs::read_to_string(self.track_path.join("track.json")).unwrap();
        assert_eq!(spec.matches("\"clients\": 1").count(), 2, "{spec}");
        let spec = spec.replace("\"clients\": 1", &format!("\"clients\": {clients}"));
        fs::write(track.join("track.json"), spec).unwrap();
        fs::copy(
            self.track_path.join("documents.json"),
            track.join("documents.json"),
        )
        .unwrap();
        track
    }

    /// Puts the ES double's distribution archive for `version` into Rally's distribution cache
    /// of the Rally home `rally_home` (a path inside the instance at `ip`, e.g. under
    /// [`Harness::host_dir`]), where `esrally install --distribution-version=<version>` with the
    /// [`ES_DOUBLE_TEAM`] finds it and downloads nothing. Returns the archive's path inside the
    /// instance. Its `bin/elasticsearch` starts the double as one node (es_double_node.sh).
    pub fn put_es_double_distribution(
        &self,
        ip: &str,
        rally_home: &Path,
        version: &str,
    ) -> PathBuf {
        let cache = rally_home.join(".rally/benchmarks/distributions");
        self.put_es_double_distribution_in(ip, &cache, version)
    }

    /// [`Harness::put_es_double_distribution`] into the distribution cache `cache` (a path
    /// inside the instance at `ip`), such as the one node.sh shares between the runs of a
    /// machine (`<remote_dir>/distributions`). What it creates belongs to whoever owns the
    /// deepest directory of the path that exists already: in [`Harness::node_home`] the node
    /// user, who must write beside it.
    pub fn put_es_double_distribution_in(&self, ip: &str, cache: &Path, version: &str) -> PathBuf {
        let file = self.put_es_double_distribution_here(&self.host_path(ip, cache), version);
        cache.join(file.file_name().expect("a file"))
    }

    /// [`Harness::put_es_double_distribution_in`] for this machine (the `local` provider's):
    /// into the distribution cache at `on_disk`. Returns the archive's path.
    pub fn put_es_double_distribution_here(&self, on_disk: &Path, version: &str) -> PathBuf {
        let name = format!("elasticsearch-{version}-linux-x86_64.tar.gz");
        let archive = self.work.path().join(&name);
        if !archive.exists() {
            self.pack_es_double(&archive, version);
        }
        let owner = on_disk
            .ancestors()
            .find_map(|dir| fs::metadata(dir).ok())
            .expect("/ exists");
        let (uid, gid) = (Some(owner.uid()), Some(owner.gid()));
        fs::create_dir_all(on_disk).unwrap_or_else(|e| panic!("{}: {e}", on_disk.display()));
        let existed = (owner.dev(), owner.ino());
        for dir in on_disk.ancestors() {
            let made = fs::metadata(dir).expect("just made");
            if (made.dev(), made.ino()) == existed {
                break;
            }
            chown(dir, uid, gid).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        let file = on_disk.join(&name);
        fs::copy(&archive, &file).expect("copy the distribution archive");
        chown(&file, uid, gid).expect("chown the distribution archive");
        file
    }

    fn pack_es_double(&self, archive: &Path, version: &str) {
        let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support");
        let staging = self.work.path().join(format!("es-double-dist-{version}"));
        let home = staging.join(format!("elasticsearch-{version}"));
        for dir in ["bin", "lib", "config"] {
            fs::create_dir_all(home.join(dir)).expect("create the distribution's directories");
        }
        // The distribution's own config, which Rally replaces with the car's.
        File::create(home.join("config/elasticsearch.yml")).expect("write config");
        fs::copy(
            support.join("es_double_node.sh"),
            home.join("bin/elasticsearch"),
        )
        .expect("copy bin/elasticsearch");
        fs::copy(support.join("es_double.py"), home.join("lib/es_double.py"))
            .expect("copy es_double.py");
        fs::write(home.join("lib/version"), version).expect("write the version");
        let tmp = archive.with_extension("tmp");
        run_ok(
            Command::new("tar")
                .arg("-czf")
                .arg(&tmp)
                .arg("-C")
                .arg(&staging)
                .arg(format!("elasticsearch-{version}")),
            "tar (ES double distribution)",
        );
        fs::rename(&tmp, archive).expect("rename the distribution archive");
    }

    /// GET `path` of `addr` (`IP:PORT`) from inside the network namespace of the instance at
    /// `ip`: an ES double node listens on its instance's private address there, which from
    /// this machine is its own loopback.
    pub fn http_get_in(&self, ip: &str, addr: &str, path: &str) -> Result<Vec<u8>, String> {
        let pid = self
            .instance_processes(ip)
            .into_iter()
            .find(|(_, cmd)| cmd.contains("instance.py"))
            .map(|(pid, _)| pid)
            .ok_or_else(|| format!("no instance at {ip}"))?;
        let netns = File::open(format!("/proc/{pid}/ns/net")).map_err(|e| e.to_string())?;
        thread::scope(|s| {
            s.spawn(|| {
                use std::os::fd::AsRawFd;
                // setns moves this thread only; it ends with the scope.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(format!("setns: {}", std::io::Error::last_os_error()));
                }
                http_request("GET", addr, path, None)
            })
            .join()
            .expect("the thread in the instance's network")
        })
    }

    /// Every request the ES double node at `addr` (`IP:PORT`, its HTTP port on the instance
    /// at `ip`) answered: method, path, status, unhandled and `client`, the address that sent
    /// it (a load driver's private IP).
    pub fn es_node_requests(&self, ip: &str, addr: &str) -> serde_json::Value {
        let body = self
            .http_get_in(ip, addr, "/_test/requests")
            .unwrap_or_else(|e| panic!("ES double node {addr}: {e}"));
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("ES double node {addr}: {e}"))
    }
}
