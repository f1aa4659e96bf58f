//! A cluster node's `node.sh` (`templates/node.sh.j2`): what it is rendered from (the
//! `esrally install`/`start` arguments a cluster's keys fix, its fixed values), the command
//! lines that call it ([`NodeCommand`]), and the nodes' addresses a cluster test's race is given
//! ([`cluster_target_hosts`]).

use serde::Serialize;

use super::{TemplateError, VenvName, shell_quote};
use crate::plan::{Cluster, SortedMap};

#[derive(Serialize)]
pub(super) struct NodeContext<'a> {
    pub(super) remote_dir: &'a str,
    pub(super) venv_name: VenvName<'a>,
    /// `esrally install` arguments fixed by the plan.
    pub(super) install_args: &'a [String],
    /// `esrally start` arguments fixed by the plan.
    pub(super) start_args: &'a [String],
    pub(super) team_path: Option<&'a str>,
    pub(super) offline: bool,
    pub(super) needs_java: bool,
    pub(super) http_port: u16,
    pub(super) cluster_name: &'a str,
    pub(super) start_timeout: u64,
    pub(super) tail_lines: u32,
}

/// The name of every cluster `node.sh` makes: Rally's own default, so a node logs to
/// `rally-benchmark.log`.
pub(super) const NODE_CLUSTER_NAME: &str = "rally-benchmark";
/// How long `node.sh start` waits for a started node to answer HTTP.
pub(super) const NODE_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// The lines of the node's log a failed `node.sh start` ends its stderr with.
pub(super) const NODE_LOG_TAIL_LINES: u32 = 40;

/// The `esrally install` arguments a cluster's keys fix, each node's alike. Parameters go as
/// JSON, which Rally reads as such, with no comma-splitting in between.
pub(super) fn node_install_args(c: &Cluster) -> Vec<String> {
    let mut args = Vec::new();
    let optional = [
        ("--car", &c.car),
        ("--distribution-version", &c.distribution_version),
        ("--distribution-repository", &c.distribution_repository),
    ];
    for (flag, value) in optional {
        if let Some(v) = value {
            args.push(format!("{flag}={v}"));
        }
    }
    if !c.car_params.is_empty() {
        args.push(format!("--car-params={}", compact_json(&c.car_params)));
    }
    if !c.plugins.is_empty() {
        args.push(format!("--elasticsearch-plugins={}", c.plugins.join(",")));
    }
    if !c.plugin_params.is_empty() {
        args.push(format!(
            "--plugin-params={}",
            compact_json(&c.plugin_params)
        ));
    }
    args.extend(node_runtime_jdk(c));
    args.push(format!("--http-port={}", Cluster::HTTP_PORT));
    args.push(format!("--cluster-name={NODE_CLUSTER_NAME}"));
    args
}

/// `--runtime-jdk`, which both `esrally install` and `start` resolve a JDK by: the cluster's,
/// else the one its distribution bundles when rallyctl installs none (Rally would otherwise
/// look for one on the machine).
pub(super) fn node_runtime_jdk(c: &Cluster) -> Vec<String> {
    match (&c.runtime_jdk, c.needs_java()) {
        (Some(jdk), _) => vec![format!("--runtime-jdk={jdk}")],
        (None, false) => vec!["--runtime-jdk=bundled".to_owned()],
        (None, true) => Vec::new(),
    }
}

fn compact_json(params: &SortedMap<serde_json::Value>) -> String {
    serde_json::to_string(params).expect("JSON values serialize")
}

/// What the lifecycle asks `node.sh` of a test's run directory (see `templates/node.sh.j2`).
/// Each is safe to repeat.
#[derive(Debug, Clone, Copy)]
pub enum NodeCommand<'a> {
    /// Installs (once per installation id) and starts the node `name` at `ip`, one of the
    /// cluster whose master-eligible nodes are `masters` (names) and whose nodes are at
    /// `seed_ips`; exits 0 once it answers HTTP, else not 0 with the node's log's tail last on
    /// stderr.
    Start {
        name: &'a str,
        ip: &'a str,
        masters: &'a [&'a str],
        seed_ips: &'a [&'a str],
        installation_id: &'a str,
        race_id: &'a str,
    },
    /// Stops it: exits 0 once no process of it is left, also when none ever ran.
    Stop { installation_id: &'a str },
    /// A tar stream on stdout: the node's `logs/` (its log, its GC log) and `telemetry/`.
    Collect {
        installation_id: &'a str,
        name: &'a str,
    },
    /// The last `lines` of the node's log.
    Tail {
        installation_id: &'a str,
        name: &'a str,
        lines: u32,
    },
}

impl NodeCommand<'_> {
    /// The command line that runs this in `run_dir`, every word shell-quoted.
    pub fn line(&self, run_dir: &str) -> Result<String, TemplateError> {
        let script = format!("{run_dir}/node.sh");
        let mut words: Vec<String> = vec!["bash".into(), script];
        match *self {
            NodeCommand::Start {
                name,
                ip,
                masters,
                seed_ips,
                installation_id,
                race_id,
            } => {
                let seeds: Vec<String> = seed_ips
                    .iter()
                    .map(|ip| host_port(ip, Cluster::TRANSPORT_PORT))
                    .collect();
                words.extend(
                    [
                        "start",
                        name,
                        ip,
                        &masters.join(","),
                        &seeds.join(","),
                        installation_id,
                        race_id,
                    ]
                    .map(str::to_owned),
                );
            }
            NodeCommand::Stop { installation_id } => {
                words.extend(["stop", installation_id].map(str::to_owned))
            }
            NodeCommand::Collect {
                installation_id,
                name,
            } => words.extend(["collect", installation_id, name].map(str::to_owned)),
            NodeCommand::Tail {
                installation_id,
                name,
                lines,
            } => {
                words.extend(["tail", installation_id, name, &lines.to_string()].map(str::to_owned))
            }
        }
        let quoted: Vec<String> = words
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Result<_, _>>()?;
        Ok(quoted.join(" "))
    }
}

/// The cluster's nodes as `race.sh start` takes them (its third argument): their HTTP
/// addresses, comma-separated.
pub fn cluster_target_hosts(ips: &[&str]) -> String {
    let hosts: Vec<String> = ips
        .iter()
        .map(|ip| host_port(ip, Cluster::HTTP_PORT))
        .collect();
    hosts.join(",")
}

/// `ip:port`, an IPv6 address in brackets.
fn host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_commands_are_quoted_for_the_shell() {
        let dir = "/home/ec2-user/rally run's";
        let start = NodeCommand::Start {
            name: "node-0",
            ip: "10.0.0.1",
            masters: &["node-0", "node-1"],
            seed_ips: &["10.0.0.1", "fd00::2"],
            installation_id: "i-1",
            race_id: "r $(x)",
        };
        assert_eq!(
            start.line(dir).unwrap(),
            "bash \"/home/ec2-user/rally run's/node.sh\" start node-0 10.0.0.1 'node-0,node-1' \
             '10.0.0.1:9300,[fd00::2]:9300' i-1 'r $(x)'"
        );
        assert_eq!(
            NodeCommand::Stop {
                installation_id: "i-1"
            }
            .line("/r")
            .unwrap(),
            "bash /r/node.sh stop i-1"
        );
        assert_eq!(
            NodeCommand::Collect {
                installation_id: "i-1",
                name: "node-0"
            }
            .line("/r")
            .unwrap(),
            "bash /r/node.sh collect i-1 node-0"
        );
        assert_eq!(
            NodeCommand::Tail {
                installation_id: "i-1",
                name: "node-0",
                lines: 40
            }
            .line("/r")
            .unwrap(),
            "bash /r/node.sh tail i-1 node-0 40"
        );
        assert!(
            NodeCommand::Stop {
                installation_id: "i\0"
            }
            .line("/r")
            .is_err()
        );
        assert_eq!(
            cluster_target_hosts(&["10.0.0.1", "10.0.0.2"]),
            "10.0.0.1:9200,10.0.0.2:9200"
        );
    }
}
