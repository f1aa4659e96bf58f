//! End-to-end test harness for rallyctl: real moto (EC2 + EC2 Instance Connect), one fake
//! "EC2 instance" per private IP (its own PID and network namespace, reached through a real
//! OpenSSH sshd that accepts only keys pushed with SendSSHPublicKey in the last 60 s, or keys a
//! test authorizes to use the instances as plain SSH hosts), and an Elasticsearch test double.
//! Needs root and `tests/setup-env.sh` (see that script).
//!
//! Layout of one harness (X = a subnet octet unique on this machine while the harness lives):
//! moto on 127.0.0.1:<port>, VPC 127.0.0.0/16, subnet 127.0.X.0/24 (moto hands out 127.0.X.4,
//! .5, ...), instance i listens for SSH on 127.0.X.(4+i):ssh_port, the ES double on
//! 127.0.0.1:<port>. Inside an instance 127.0.0.1:<es port> and 127.0.0.1:<moto port> lead to the
//! ES double and moto, and sessions get `https_proxy` for the package index.
#![allow(dead_code)] // every test binary uses a different part of the harness

pub mod cluster;
pub mod context;
pub mod fault_proxy;
pub mod providers;
pub mod run;
pub mod webhook;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// Region the harness's moto and clients use (not us-east-1, moto's fallback, so that a missing
/// region in rallyctl shows up as a failure).
pub const REGION: &str = "eu-west-1";
/// The price file every rallyctl the harness runs reads.
pub const PRICES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/prices/prices.toml"
);
/// The unprivileged user every instance lets in besides root, as the harness's keys and
/// Instance Connect say (`tests/setup-env.sh` creates it): `esrally start` and Elasticsearch
/// refuse to run as root. Its home is a directory of each instance's own ([`Harness::node_home`]).
pub const NODE_USER: &str = "rally";
/// Port of the HTTP CONNECT proxy inside every instance (sessions get `https_proxy` to it).
pub const INSTANCE_PROXY_PORT: u16 = 3128;
/// App name the harness's own SDK calls carry in their User-Agent (to tell them apart in moto's
/// recording).
pub const HARNESS_APP_NAME: &str = "rallyctl-e2e-harness";
const MOTO_START_TIMEOUT: Duration = Duration::from_secs(30);
const ES_START_TIMEOUT: Duration = Duration::from_secs(15);
const INSTANCE_START_TIMEOUT: Duration = Duration::from_secs(15);
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

static HARNESS_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One running test environment; everything it started is stopped on drop.
pub struct Harness {
    /// AWS region of moto's resources.
    pub region: String,
    /// moto's endpoint, e.g. `http://127.0.0.1:41234`.
    pub moto_url: String,
    /// VPC 127.0.0.0/16.
    pub vpc_id: String,
    /// Subnet 127.0.X.0/24 that instances must be launched into, in [`Harness::zone`].
    pub subnet_id: String,
    /// CIDR of `subnet_id`.
    pub subnet_cidr: String,
    /// Security group in the VPC (moto does not enforce it).
    pub security_group_id: String,
    /// An AMI id moto knows (an Amazon Linux 2023 x86_64 image when moto lists one).
    pub ami: String,
    /// TCP port every instance's sshd listens on (at its private IP).
    pub ssh_port: u16,
    /// OS user to log in as (the current user, root).
    pub ssh_user: String,
    /// [`NODE_USER`]'s home inside every instance (what /etc/passwd says, /home/rally): each
    /// instance shows a directory of its own there, owned by that user ([`Harness::host_path`]
    /// maps it), which outlives a restart of the instance like its `host_dir`.
    pub node_home: PathBuf,
    /// The ES double as `127.0.0.1:PORT` (same address inside the instances); = `es_addrs[0]`.
    pub es_addr: String,
    /// The ES double as `http://127.0.0.1:PORT`.
    pub es_url: String,
    /// One independent ES double cluster per instance (races running at the same time against
    /// one cluster share its indices: give parallel races different clusters).
    pub es_addrs: Vec<String>,
    /// The tiny offline Rally track (tests/fixtures/tracks/tiny).
    pub track_path: PathBuf,
    /// Directory instances use for installs and runs (shared by all harnesses: target/e2e/instances).
    pub remote_dir: PathBuf,
    /// A directory every instance sees as a disk of its own (target/e2e/host-disk, a bind mount
    /// of `host_path(ip, host_dir)` inside the instance; empty as seen from this machine): a
    /// `remote_dir` for plain SSH hosts, whose lease files and venvs must not be shared.
    pub host_dir: PathBuf,
    /// Private IPs that have an instance (sshd) waiting: 127.0.X.4 ..
    pub instance_ips: Vec<String>,
    /// Scratch directory of this harness: logs, sshd configs, host key, moto's recording.
    pub work: TempDir,
    name: String,
    octet: u8,
    node: NodeUser,
    _subnet_lock: File,
    moto: Option<Child>,
    es: Option<Child>,
    instances: Arc<Mutex<HashMap<String, Child>>>,
    /// The host bridge connecting the instances (`start_connected`), None when each has only `lo`.
    bridge: Option<String>,
    akc_dir: PathBuf,
    rt: Option<tokio::runtime::Runtime>,
    stop_watch: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

/// An instance as moto describes it.
#[derive(Debug, Clone)]
pub struct InstanceView {
    /// Instance id (`i-...`).
    pub id: String,
    /// State name: pending, running, shutting-down, terminated, stopping, stopped.
    pub state: String,
    /// Private IPv4 address (127.0.X.N).
    pub private_ip: Option<String>,
    /// Tags as key -> value.
    pub tags: HashMap<String, String>,
    /// Launch time.
    pub launch_time: Option<SystemTime>,
    /// Instance type as requested.
    pub instance_type: Option<String>,
    /// AMI id as requested.
    pub image_id: Option<String>,
    /// Subnet the instance is in.
    pub subnet_id: Option<String>,
    /// ClientToken of the RunInstances call (moto records it but does not honour it).
    pub client_token: Option<String>,
}

/// One SendSSHPublicKey call as moto's recorder saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPush {
    /// InstanceId of the call.
    pub instance_id: String,
    /// InstanceOSUser of the call.
    pub os_user: String,
    /// SSHPublicKey of the call (an authorized_keys line).
    pub public_key: String,
    /// Signing time of the request (SigV4 `X-Amz-Date`), None if unsigned.
    pub signed_at: Option<SystemTime>,
    /// Region of the request's credential scope.
    pub region: Option<String>,
}

/// One request moto's recorder saw.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    /// EC2 `Action` (query protocol) or the `X-Amz-Target` operation (JSON protocol), e.g.
    /// `RunInstances`, `SendSSHPublicKey`.
    pub action: String,
    /// All request parameters: form fields (EC2) or the JSON body's top-level fields.
    pub params: Vec<(String, String)>,
    /// True for calls the harness made itself (setup and its watcher).
    pub from_harness: bool,
    /// The access key id the request was signed with.
    pub access_key: Option<String>,
}

impl RecordedCall {
    /// RunInstances made by rallyctl that launches (not a plan's dry run).
    pub fn is_launch(&self) -> bool {
        self.action == "RunInstances"
            && !self.from_harness
            && !self
                .params
                .iter()
                .any(|(k, v)| k == "DryRun" && v == "true")
    }
}

impl Harness {
    /// Starts moto, the VPC/subnet/security group, `max_instances` instances and the ES double
    /// (one cluster per instance); panics (naming what failed and its log) if any does not come
    /// up in time. Its processes die with the calling thread: keep the harness in that thread.
    pub fn start(max_instances: usize) -> Harness {
        Harness::start_with(max_instances, false)
    }

    /// [`Harness::start`] with instances that reach one another at their private IPs on any
    /// port, as instances of one subnet do (a host bridge, a veth pair per instance): for
    /// Elasticsearch nodes and Rally's load drivers on separate instances.
    pub fn start_connected(max_instances: usize) -> Harness {
        Harness::start_with(max_instances, true)
    }

    fn start_with(max_instances: usize, connected: bool) -> Harness {
        assert!(
            (1..=200).contains(&max_instances),
            "max_instances must be 1..=200"
        );
        require_root();
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let venv = moto_venv(&manifest);
        let n = HARNESS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("h{}-{}", std::process::id(), n);
        let work = tempfile::Builder::new()
            .prefix(&format!("rallyctl-e2e-{name}-"))
            .tempdir()
            .expect("create harness work dir");
        let wd = work.path().to_path_buf();
        let (octet, subnet_lock) = claim_subnet_octet(n);
        let node = NodeUser::get();
        let remote_dir = manifest.join("target/e2e/instances");
        fs::create_dir_all(&remote_dir).expect("create target/e2e/instances");
        let host_dir = host_disk_mount_point();
        fs::create_dir_all(&host_dir).expect("create target/e2e/host-disk");
        let track_path = manifest.join("tests/fixtures/tracks/tiny");
        let support = manifest.join("tests/support");

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");

        let mut h = Harness {
            region: REGION.to_string(),
            moto_url: String::new(),
            vpc_id: String::new(),
            subnet_id: String::new(),
            subnet_cidr: format!("127.0.{octet}.0/24"),
            security_group_id: String::new(),
            ami: String::new(),
            ssh_port: 0,
            ssh_user: current_user(),
            node_home: node.home.clone(),
            es_addr: String::new(),
            es_url: String::new(),
            es_addrs: Vec::new(),
            track_path,
            remote_dir,
            host_dir,
            instance_ips: (0..max_instances)
                .map(|i| format!("127.0.{octet}.{}", 4 + i))
                .collect(),
            work,
            name: name.clone(),
            octet,
            node,
            _subnet_lock: subnet_lock,
            moto: None,
            es: None,
            instances: Arc::new(Mutex::new(HashMap::new())),
            bridge: connected.then(|| format!("rcebr{octet}")),
            akc_dir: PathBuf::from("/run/rallyctl-e2e").join(&name),
            rt: Some(rt),
            stop_watch: Arc::new(AtomicBool::new(false)),
            watcher: None,
        };

        // moto
        let t = Instant::now();
        let moto_log = wd.join("moto.log");
        let moto = guarded(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("MOTO_ENABLE_RECORDING", "true")
            .env("MOTO_RECORDER_FILEPATH", wd.join("moto-recording.jsonl"))
            .current_dir(&wd)
            .stdin(Stdio::null())
            .stdout(log_file(&moto_log))
            .stderr(log_file(&moto_log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto_server from {}: {e}", venv.display()));
        h.moto = Some(moto);
        let moto_port = wait_for(MOTO_START_TIMEOUT, || {
            let text = fs::read_to_string(&moto_log).unwrap_or_default();
            text.split("Running on http://127.0.0.1:")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or_else(|| {
            panic!(
                "moto did not come up within {MOTO_START_TIMEOUT:?}; log: {}",
                moto_log.display()
            )
        });
        h.moto_url = format!("http://127.0.0.1:{moto_port}");
        wait_for(MOTO_START_TIMEOUT, || {
            http_request("GET", &h.moto_url, "/moto-api/", None).ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "moto does not answer on {}; log: {}",
                h.moto_url,
                moto_log.display()
            )
        });
        eprintln!(
            "[harness {name}] moto up on {} in {:?}",
            h.moto_url,
            t.elapsed()
        );

        // ES double
        let t = Instant::now();
        let es_log = wd.join("es-double.log");
        let es_port_file = wd.join("es.port");
        let es = guarded(python3())
            .arg(support.join("es_double.py"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--clusters",
                &max_instances.to_string(),
                "--port-file",
            ])
            .arg(&es_port_file)
            .stdin(Stdio::null())
            .stdout(log_file(&es_log))
            .stderr(log_file(&es_log))
            .spawn()
            .expect("cannot start es_double.py");
        h.es = Some(es);
        let es_ports =
            wait_for(ES_START_TIMEOUT, || read_ports(&es_port_file)).unwrap_or_else(|| {
                panic!(
                    "ES double did not come up within {ES_START_TIMEOUT:?}; log: {}",
                    es_log.display()
                )
            });
        h.es_addrs = es_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        h.es_addr = h.es_addrs[0].clone();
        h.es_url = format!("http://{}", h.es_addr);
        eprintln!(
            "[harness {name}] ES double up on {:?} in {:?}",
            h.es_addrs,
            t.elapsed()
        );

        // VPC, subnet, security group, AMI
        let t = Instant::now();
        let ec2 = h.harness_ec2_client();
        let cidr = h.subnet_cidr.clone();
        let zone = h.zone();
        let (vpc_id, subnet_id, sg_id, ami) = h.block_on(async move {
            let vpc = ec2
                .create_vpc()
                .cidr_block("127.0.0.0/16")
                .send()
                .await
                .expect("CreateVpc");
            let vpc_id = vpc
                .vpc()
                .and_then(|v| v.vpc_id())
                .expect("VpcId")
                .to_string();
            let subnet = ec2
                .create_subnet()
                .vpc_id(&vpc_id)
                .cidr_block(&cidr)
                .availability_zone(zone)
                .send()
                .await
                .expect("CreateSubnet");
            let subnet_id = subnet
                .subnet()
                .and_then(|s| s.subnet_id())
                .expect("SubnetId")
                .to_string();
            let sg = ec2
                .create_security_group()
                .group_name("rallyctl-e2e")
                .description("rallyctl e2e tests")
                .vpc_id(&vpc_id)
                .send()
                .await
                .expect("CreateSecurityGroup");
            let sg_id = sg.group_id().expect("GroupId").to_string();
            let images = ec2
                .describe_images()
                .owners("amazon")
                .filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("name")
                        .values("al2023-ami-2023*-x86_64")
                        .build(),
                )
                .send()
                .await
                .expect("DescribeImages");
            let mut names: Vec<(String, String)> = images
                .images()
                .iter()
                .filter_map(|i| Some((i.name()?.to_string(), i.image_id()?.to_string())))
                .collect();
            names.sort();
            let ami = names
                .pop()
                .map(|(_, id)| id)
                .unwrap_or_else(|| "ami-12c6146b".to_string());
            (vpc_id, subnet_id, sg_id, ami)
        });
        h.vpc_id = vpc_id;
        h.subnet_id = subnet_id;
        h.security_group_id = sg_id;
        h.ami = ami;
        eprintln!(
            "[harness {name}] VPC/subnet {} ({}) in {:?}",
            h.subnet_id,
            h.subnet_cidr,
            t.elapsed()
        );

        // sshd: host key, AuthorizedKeysCommand, one config and one instance per address
        let t = Instant::now();
        h.prepare_sshd(&support);
        if let Some(bridge) = &h.bridge {
            create_bridge(bridge);
        }
        h.start_instances();
        eprintln!(
            "[harness {name}] {} instance(s) on {}..{} port {} in {:?}",
            max_instances,
            h.instance_ips[0],
            h.instance_ips[max_instances - 1],
            h.ssh_port,
            t.elapsed()
        );

        h.start_watcher();
        h
    }

    /// Environment for rallyctl (or any AWS SDK/CLI) to talk to this harness's moto.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.moto_url.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", self.region.as_str()),
            ("AWS_DEFAULT_REGION", self.region.as_str()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            // moto has no Price List API: costs come from the fixture's prices.
            ("RALLYCTL_PRICES", PRICES),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Applies `env()` to a command and removes AWS variables that could point it elsewhere.
    pub fn apply_env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        for k in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_ENDPOINT_URL_EC2",
            "AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ] {
            cmd.env_remove(k);
        }
        cmd.envs(self.env())
    }

    /// The Availability Zone of `subnet_id`. Named, because moto puts a subnet made without
    /// one in a random zone of the region, and tests with subnets of their own need to know
    /// whether they share it.
    pub fn zone(&self) -> String {
        format!("{}a", self.region)
    }

    /// An EC2 client for this harness's moto (for tests; the harness's own calls use another app name).
    pub fn ec2_client(&self) -> aws_sdk_ec2::Client {
        ec2_client(&self.moto_url, &self.region, None)
    }

    /// An EC2 Instance Connect client for this harness's moto.
    pub fn eic_client(&self) -> aws_sdk_ec2instanceconnect::Client {
        use aws_sdk_ec2instanceconnect::config::{BehaviorVersion, Credentials, Region};
        let conf = aws_sdk_ec2instanceconnect::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.moto_url)
            .credentials_provider(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "rallyctl-e2e",
            ))
            .build();
        aws_sdk_ec2instanceconnect::Client::from_conf(conf)
    }

    /// Runs a future on the harness's runtime from synchronous code (also from inside another runtime).
    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        let rt = self.rt.as_ref().expect("runtime");
        thread::scope(|s| {
            s.spawn(move || rt.block_on(fut))
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// All instances moto knows (every state), oldest launch first.
    pub fn instances(&self) -> Vec<InstanceView> {
        let ec2 = self.harness_ec2_client();
        let mut v = self.block_on(describe_all(ec2)).expect("DescribeInstances");
        v.sort_by_key(|i| i.launch_time);
        v
    }

    /// Instances whose state is `running`.
    pub fn running_instances(&self) -> Vec<InstanceView> {
        self.instances()
            .into_iter()
            .filter(|i| i.state == "running")
            .collect()
    }

    /// Every SendSSHPublicKey call moto recorded, in order.
    pub fn key_pushes(&self) -> Vec<KeyPush> {
        self.recording()
            .into_iter()
            .filter(|e| {
                header(e, "X-Amz-Target").as_deref()
                    == Some("AWSEC2InstanceConnectService.SendSSHPublicKey")
            })
            .filter_map(|e| {
                let body: serde_json::Value = serde_json::from_str(&body_text(&e)).ok()?;
                Some(KeyPush {
                    instance_id: body["InstanceId"].as_str()?.to_string(),
                    os_user: body["InstanceOSUser"].as_str()?.to_string(),
                    public_key: body["SSHPublicKey"].as_str()?.to_string(),
                    signed_at: header(&e, "X-Amz-Date").and_then(|d| parse_amz_date(&d)),
                    region: credential_region(&e),
                })
            })
            .collect()
    }

    /// Every AWS call moto recorded, in order (the harness's own are marked `from_harness`).
    pub fn recorded_calls(&self) -> Vec<RecordedCall> {
        self.recording()
            .into_iter()
            .filter_map(|e| {
                let from_harness =
                    header(&e, "User-Agent").is_some_and(|ua| ua.contains(HARNESS_APP_NAME));
                let body = body_text(&e);
                let access_key = header(&e, "Authorization").and_then(|a| {
                    let at = a.find("Credential=")? + "Credential=".len();
                    Some(a[at..].split('/').next()?.to_owned())
                });
                if let Some(target) = header(&e, "X-Amz-Target") {
                    let action = target.rsplit('.').next().unwrap_or(&target).to_string();
                    let params = match serde_json::from_str::<serde_json::Value>(&body) {
                        Ok(serde_json::Value::Object(m)) => m
                            .into_iter()
                            .map(|(k, v)| {
                                (
                                    k,
                                    v.as_str()
                                        .map(str::to_string)
                                        .unwrap_or_else(|| v.to_string()),
                                )
                            })
                            .collect(),
                        _ => Vec::new(),
                    };
                    return Some(RecordedCall {
                        action,
                        params,
                        from_harness,
                        access_key,
                    });
                }
                let params = parse_form(&body);
                let action = params.iter().find(|(k, _)| k == "Action")?.1.clone();
                Some(RecordedCall {
                    action,
                    params,
                    from_harness,
                    access_key,
                })
            })
            .collect()
    }

    /// Documents the ES double (`es_addr`) received, as a JSON object index -> count.
    pub fn es_docs(&self) -> serde_json::Value {
        self.es_get(&self.es_addr, "/_test/docs")
    }

    /// Requests the ES double (`es_addr`) received, as a JSON list of {method, path, status, unhandled}.
    pub fn es_requests(&self) -> serde_json::Value {
        self.es_get(&self.es_addr, "/_test/requests")
    }

    /// The watchdog shutdowns scheduled on the instance at `private_ip`, one line each:
    /// `UNIX_TIME ARGS`.
    pub fn watchdog_calls(&self, private_ip: &str) -> Vec<String> {
        fs::read_to_string(watchdog_log(self.work.path(), private_ip))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The watchdog deadlines (Unix times) the user data left in the private /var/lib/cloud
    /// of each start of the instance at `private_ip`: what a reboot schedules the shutdown for.
    pub fn watchdog_deadlines(&self, private_ip: &str) -> Vec<i64> {
        let prefix = format!("cloud-{private_ip}-");
        let mut found = Vec::new();
        for entry in fs::read_dir(boot_dir(self.work.path()))
            .into_iter()
            .flatten()
        {
            let dir = entry.unwrap().path();
            if !dir
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
            {
                continue;
            }
            let file = dir.join("instance/rallyctl-watchdog-deadline");
            if let Ok(text) = fs::read_to_string(file) {
                found.push(text.trim().parse().expect("a Unix time"));
            }
        }
        found
    }

    /// `es_docs` of the cluster at `es_addr` (one of `es_addrs`).
    pub fn es_docs_at(&self, es_addr: &str) -> serde_json::Value {
        self.es_get(es_addr, "/_test/docs")
    }

    /// `es_requests` of the cluster at `es_addr` (one of `es_addrs`).
    pub fn es_requests_at(&self, es_addr: &str) -> serde_json::Value {
        self.es_get(es_addr, "/_test/requests")
    }

    /// Waits until the cluster at `es_addr` (one of `es_addrs`) has been sent a request: a race
    /// against it is under way, and began before now (Rally takes its race timestamp before it
    /// sends anything). A fixed sleep after `race.pid` appears guesses at how fast Rally starts
    /// under load; this does not.
    pub fn wait_for_es_request(&self, es_addr: &str, timeout: Duration) {
        let sent = || {
            let requests = self.es_requests_at(es_addr);
            requests
                .as_array()
                .is_some_and(|r| !r.is_empty())
                .then_some(())
        };
        wait_for(timeout, sent).unwrap_or_else(|| {
            panic!("the ES double at {es_addr} was sent no request in {timeout:?}")
        });
    }

    /// From now on every search-type answer (`_search`, `_msearch`, `_count`) of the cluster at
    /// `es_addr` (one of `es_addrs`) comes `ms` milliseconds late; 0 turns that off. A slower
    /// search, and nothing else, as a regression in the code raced would show.
    pub fn set_search_latency(&self, es_addr: &str, ms: u64) {
        self.set_latency(es_addr, "search_ms", ms);
    }

    /// From now on every `_bulk` answer of the cluster at `es_addr` comes `ms` milliseconds late.
    /// A floor well above a loaded machine's scheduling jitter (about a millisecond) makes bulk
    /// latencies as steady between races as a real cluster's, whose bulks take tens of them.
    pub fn set_bulk_latency(&self, es_addr: &str, ms: u64) {
        self.set_latency(es_addr, "bulk_ms", ms);
    }

    fn set_latency(&self, es_addr: &str, which: &str, ms: u64) {
        let body = serde_json::json!({ which: ms }).to_string();
        let answer = self.es_post(es_addr, "/_test/latency", body.as_bytes());
        assert_eq!(answer[which], ms, "ES double at {es_addr}: {answer}");
    }

    /// Kills every process of the instance at `private_ip` (as a terminated EC2 instance would
    /// lose them) and starts a fresh, empty instance on that address, since moto reuses addresses.
    pub fn kill_instance_processes(&self, private_ip: &str) {
        let mut map = self.instances.lock().unwrap();
        let mut child = map.remove(private_ip).unwrap_or_else(|| {
            panic!("no instance at {private_ip} (have {:?})", self.instance_ips)
        });
        let _ = child.kill(); // SIGKILL: unshare ignores SIGTERM
        let _ = child.wait();
        let fresh = self.spawn_instance(private_ip);
        map.insert(private_ip.to_string(), fresh);
        drop(map);
        self.wait_instance_ready(private_ip);
    }

    /// `ssh` to the instance at `private_ip` with private key `key` (batch mode, no host key
    /// prompts, known hosts in the harness dir); append the remote command with `.arg(...)`.
    pub fn ssh_command(&self, key: &Path, private_ip: &str) -> Command {
        let known_hosts = self.work.path().join("known_hosts");
        self.ssh_as(&self.ssh_user, key, private_ip, "no", &known_hosts)
    }

    /// `ssh` to the host at `private_ip` as a careful SSH client would: key `key`, batch mode,
    /// and the host key checked strictly against [`Harness::known_hosts`]. For hosts reached
    /// with a key given to [`Harness::authorize_key`] (no Instance Connect push needed).
    pub fn ssh_checked(&self, key: &Path, private_ip: &str) -> Command {
        self.ssh_checked_as(&self.ssh_user, key, private_ip)
    }

    /// [`Harness::ssh_checked`] logging in as `user` (root or [`NODE_USER`]).
    pub fn ssh_checked_as(&self, user: &str, key: &Path, private_ip: &str) -> Command {
        self.ssh_as(user, key, private_ip, "yes", &self.known_hosts())
    }

    /// `ssh` as `user` in batch mode with `key` only, checking host keys in `known_hosts` as
    /// `StrictHostKeyChecking=strict` says.
    fn ssh_as(
        &self,
        user: &str,
        key: &Path,
        private_ip: &str,
        strict: &str,
        known_hosts: &Path,
    ) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(key)
            .args(["-p", &self.ssh_port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o"])
            .arg(format!("StrictHostKeyChecking={strict}"))
            .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .arg(format!("{user}@{private_ip}"))
            .stdin(Stdio::null());
        cmd
    }

    /// Makes every instance of this harness accept `public_key_line` (an authorized_keys line,
    /// e.g. the `.pub` of [`generate_key_pair`]) for `ssh_user` and [`NODE_USER`] from now on, without any
    /// Instance Connect push and whether or not moto has an instance there: the instances
    /// become plain SSH hosts for that key. Keys pushed through Instance Connect keep working.
    pub fn authorize_key(&self, public_key_line: &str) {
        let line = public_key_line.trim();
        assert!(
            !line.is_empty() && !line.contains('\n'),
            "one authorized_keys line expected, got {public_key_line:?}"
        );
        let mut f = OpenOptions::new()
            .append(true)
            .open(self.authorized_keys_file())
            .expect("open the harness's authorized_keys");
        writeln!(f, "{line}").expect("append to authorized_keys");
    }

    /// The authorized_keys file every instance's sshd reads (besides Instance Connect).
    pub fn authorized_keys_file(&self) -> PathBuf {
        self.akc_dir.join("authorized_keys")
    }

    /// The host key the instance at `private_ip` presents now (`ssh-ed25519 AAAA...`, without
    /// comment). Every start of an instance makes a new one (instance.py): the newest wins.
    pub fn host_key(&self, private_ip: &str) -> String {
        let dir = self.work.path().join("host-keys");
        let prefix = format!("ssh_host_ed25519_key-{private_ip}-");
        let newest = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().into_owned();
                let stamp: u128 = name
                    .strip_prefix(&prefix)?
                    .strip_suffix(".pub")?
                    .parse()
                    .ok()?;
                Some((stamp, name))
            })
            .max()
            .unwrap_or_else(|| panic!("no host key of {private_ip} in {}", dir.display()))
            .1;
        let text = fs::read_to_string(dir.join(&newest)).expect("read host key");
        let mut words = text.split_whitespace();
        match (words.next(), words.next()) {
            (Some(kind), Some(key)) => format!("{kind} {key}"),
            _ => panic!("{newest} is not a public key: {text:?}"),
        }
    }

    /// A known_hosts file naming every instance's current host key as `[IP]:PORT ssh-ed25519
    /// ...` (rewritten atomically on every call, so call it again after an instance restarted).
    pub fn known_hosts(&self) -> PathBuf {
        let path = self.work.path().join("known_hosts.strict");
        let text: String = self
            .instance_ips
            .iter()
            .map(|ip| format!("[{ip}]:{} {}\n", self.ssh_port, self.host_key(ip)))
            .collect();
        // Unique per call: two threads of a test may rewrite it at once.
        static WRITES: AtomicUsize = AtomicUsize::new(0);
        let tmp = self.work.path().join(format!(
            "known_hosts.strict.{}.tmp",
            WRITES.fetch_add(1, Ordering::SeqCst)
        ));
        fs::write(&tmp, text).expect("write known_hosts");
        fs::rename(&tmp, &path).expect("rename known_hosts");
        path
    }

    /// Where `path`, a path inside the instance at `private_ip`, is on this machine: below
    /// [`Harness::host_dir`] that is the instance's own disk; anything else is shared as is.
    /// So is [`Harness::node_home`], the node user's home there.
    pub fn host_path(&self, private_ip: &str, path: &Path) -> PathBuf {
        let wd = self.work.path();
        if let Ok(rest) = path.strip_prefix(&self.host_dir) {
            private_disk(wd, private_ip).join(rest)
        } else if let Ok(rest) = path.strip_prefix(&self.node_home) {
            node_home_disk(wd, private_ip).join(rest)
        } else {
            path.to_path_buf()
        }
    }

    /// Every process of the instance at `private_ip` (what `ps` inside it lists), as (pid as
    /// seen from this machine, command line with spaces between the arguments).
    pub fn instance_processes(&self, private_ip: &str) -> Vec<(u32, String)> {
        let Some(namespace) = self.instance_pid_namespace(private_ip) else {
            return Vec::new();
        };
        processes()
            .into_iter()
            .filter(|(pid, _)| {
                fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|ns| ns == namespace)
            })
            .collect()
    }

    /// Launches an instance into the harness's subnet carrying `tags`, as something other
    /// than rallyctl (or a crashed rallyctl) would; returns its id.
    pub fn launch_tagged(&self, tags: &[(&str, &str)]) -> String {
        let mut spec = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::Instance);
        for (k, v) in tags {
            spec = spec.tags(aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build());
        }
        let request = self
            .ec2_client()
            .run_instances()
            .image_id(&self.ami)
            .subnet_id(&self.subnet_id)
            .min_count(1)
            .max_count(1)
            .tag_specifications(spec.build());
        self.block_on(async { request.send().await })
            .expect("RunInstances")
            .instances()[0]
            .instance_id()
            .expect("an instance id")
            .to_owned()
    }

    /// Makes the instance at `private_ip` close every SSH connection at once for `how_long`
    /// from now, as an instance whose sshd has not started yet.
    pub fn refuse_ssh_for(&self, private_ip: &str, how_long: Duration) {
        let until = SystemTime::now() + how_long;
        let secs = until.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        fs::write(
            self.work.path().join(format!("refuse-ssh-{private_ip}")),
            secs.to_string(),
        )
        .expect("write the refuse file");
    }

    /// Drops every SSH connection into an instance (kills the `sshd` processes in its PID
    /// namespace) while what the instance runs keeps running, as a network blip would.
    /// Returns how many processes it killed.
    pub fn drop_ssh_connections(&self, private_ip: &str) -> usize {
        let Some(namespace) = self.instance_pid_namespace(private_ip) else {
            return 0;
        };
        let mut killed = 0;
        for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let in_instance =
                fs::read_link(entry.path().join("ns/pid")).is_ok_and(|ns| ns == namespace);
            // Session processes retitle themselves `sshd: root@notty` and the like.
            let is_sshd = fs::read(entry.path().join("cmdline"))
                .is_ok_and(|c| c.starts_with(b"sshd") || c.starts_with(b"/usr/sbin/sshd"));
            if in_instance && is_sshd {
                let status = Command::new("kill").args(["-9", &pid.to_string()]).status();
                if status.is_ok_and(|s| s.success()) {
                    killed += 1;
                }
            }
        }
        killed
    }

    /// Path of the sshd log of the instance at `private_ip`.
    pub fn sshd_log(&self, private_ip: &str) -> PathBuf {
        self.work.path().join(format!("sshd-{private_ip}.log"))
    }

    /// Path of the AuthorizedKeysCommand's decision log (accepted/refused keys, and why).
    pub fn authorized_keys_log(&self) -> PathBuf {
        self.work.path().join("authorized-keys.log")
    }

    /// Paths of every log this harness writes.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.work.path())
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log" || x == "jsonl"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    // ---- internals ------------------------------------------------------------------------

    /// The PID namespace of the instance at `private_ip` (None while it restarts).
    fn instance_pid_namespace(&self, private_ip: &str) -> Option<PathBuf> {
        let unshare = self.instances.lock().unwrap()[private_ip].id();
        fs::read_link(format!("/proc/{unshare}/ns/pid_for_children")).ok()
    }

    /// Host ports reachable at the same 127.0.0.1 port inside every instance: ES doubles, moto.
    fn forwarded_ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.es_addrs.iter().map(|a| port_of(a)).collect();
        v.push(port_of(&self.moto_url));
        v
    }

    fn harness_ec2_client(&self) -> aws_sdk_ec2::Client {
        ec2_client(&self.moto_url, &self.region, Some(HARNESS_APP_NAME))
    }

    fn es_get(&self, es_addr: &str, path: &str) -> serde_json::Value {
        let body = http_request("GET", es_addr, path, None)
            .unwrap_or_else(|e| panic!("ES double {path}: {e}"));
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("ES double {path}: bad JSON: {e}"))
    }

    fn es_post(&self, es_addr: &str, path: &str, body: &[u8]) -> serde_json::Value {
        let answer = http_request("POST", es_addr, path, Some(body))
            .unwrap_or_else(|e| panic!("ES double {path}: {e}"));
        serde_json::from_slice(&answer)
            .unwrap_or_else(|e| panic!("ES double {path}: bad JSON: {e}"))
    }

    fn recording(&self) -> Vec<serde_json::Value> {
        let raw = http_request(
            "GET",
            &self.moto_url,
            "/moto-api/recorder/download-recording",
            None,
        )
        .unwrap_or_else(|e| panic!("moto recording: {e}"));
        String::from_utf8_lossy(&raw)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn prepare_sshd(&mut self, support: &Path) {
        let wd = self.work.path().to_path_buf();
        // privilege separation directory (tmpfs: gone after reboot)
        fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        // Only for `sshd -t`: every instance start creates its own host key (instance.py).
        let key = wd.join("ssh_host_ed25519_key");
        fs::create_dir_all(wd.join("host-keys")).expect("create host-keys dir");
        run_ok(
            Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "rallyctl-e2e-host",
                    "-f",
                ])
                .arg(&key),
            "ssh-keygen (host key)",
        );
        // sshd insists that the AuthorizedKeysCommand and all its parent directories are
        // root-owned and not group/world writable: a directory of our own under /run.
        for dir in [Path::new("/run/rallyctl-e2e"), self.akc_dir.as_path()] {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod 755");
        }
        let akc = self.akc_dir.join("authorized_keys.py");
        fs::copy(support.join("authorized_keys.py"), &akc).expect("copy authorized_keys.py");
        fs::set_permissions(&akc, fs::Permissions::from_mode(0o755))
            .expect("chmod authorized_keys.py");
        // Keys for plain SSH hosts (`authorize_key`), of root and NODE_USER alike; empty, it
        // accepts nothing, and the Instance Connect command decides alone. Under the root-owned
        // 0755 directory, so that sshd's StrictModes accepts it; readable by all, since sshd
        // reads it as the user logging in.
        let akf = self.authorized_keys_file();
        fs::write(&akf, "").expect("create authorized_keys");
        fs::set_permissions(&akf, fs::Permissions::from_mode(0o644))
            .expect("chmod authorized_keys");
        let mirror = package_mirror();
        let pip = (mirror.iter().map(|(k, v)| (*k, v.as_str())))
            .chain([INSTANCE_PIP_NO_COMPILE])
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        for ip in &self.instance_ips {
            let conf = format!(
                "# rallyctl e2e instance {ip} (harness {name}); HostKey: see instance.py\n\
                 PidFile none\n\
                 UsePAM no\n\
                 PermitRootLogin prohibit-password\n\
                 AllowUsers {user} {node_user}\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 AuthorizedKeysFile {akf}\n\
                 AuthorizedKeysCommand {akc} --moto {moto} --region {region} --server-addr {ip} --log {akc_log} %u %t %k\n\
                 AuthorizedKeysCommandUser root\n\
                 Subsystem sftp internal-sftp\n\
                 SetEnv https_proxy=http://127.0.0.1:{proxy} HTTPS_PROXY=http://127.0.0.1:{proxy} no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost {pip}\n\
                 PrintMotd no\n\
                 PrintLastLog no\n\
                 UseDNS no\n\
                 X11Forwarding no\n\
                 LogLevel VERBOSE\n",
                name = self.name,
                user = self.ssh_user,
                node_user = NODE_USER,
                akc = akc.display(),
                akf = akf.display(),
                moto = self.moto_url,
                region = self.region,
                akc_log = self.authorized_keys_log().display(),
                proxy = INSTANCE_PROXY_PORT,
            );
            let path = wd.join(format!("sshd_config-{ip}"));
            fs::write(&path, conf).expect("write sshd_config");
            let out = Command::new("/usr/sbin/sshd")
                .arg("-t")
                .arg("-f")
                .arg(&path)
                .arg("-o")
                .arg(format!("HostKey={}", key.display()))
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => panic!(
                    "sshd -t rejects {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => panic!("cannot run /usr/sbin/sshd ({e}): run tests/setup-env.sh"),
            }
        }
    }

    fn start_instances(&mut self) {
        // One port for all addresses: bind the first address on an ephemeral port, the others
        // on the same port; retry with a new port if one is taken.
        let mut last_err = String::new();
        for _attempt in 0..10 {
            let first = match TcpListener::bind((self.instance_ips[0].as_str(), 0)) {
                Ok(l) => l,
                Err(e) => panic!("cannot bind {}: {e}", self.instance_ips[0]),
            };
            let port = first.local_addr().unwrap().port();
            let mut listeners = vec![first];
            for ip in &self.instance_ips[1..] {
                match TcpListener::bind((ip.as_str(), port)) {
                    Ok(l) => listeners.push(l),
                    Err(e) => {
                        last_err = format!("{ip}:{port}: {e}");
                        break;
                    }
                }
            }
            if listeners.len() != self.instance_ips.len() {
                continue;
            }
            self.ssh_port = port;
            let ips = self.instance_ips.clone();
            for (ip, l) in ips.iter().zip(listeners) {
                let child = self.spawn_instance_with(ip, l);
                self.instances.lock().unwrap().insert(ip.clone(), child);
            }
            for ip in &ips {
                self.wait_instance_ready(ip);
            }
            return;
        }
        panic!("cannot find one free port on all instance addresses: {last_err}");
    }

    fn spawn_instance(&self, ip: &str) -> Child {
        let listener = bind_retry(ip, self.ssh_port)
            .unwrap_or_else(|e| panic!("cannot re-bind {ip}:{}: {e}", self.ssh_port));
        self.spawn_instance_with(ip, listener)
    }

    fn spawn_instance_with(&self, ip: &str, listener: TcpListener) -> Child {
        let bridge = self.bridge.as_deref();
        spawn_instance_process(
            self.work.path(),
            ip,
            listener,
            &self.forwarded_ports(),
            bridge,
            &self.node,
        )
        .unwrap_or_else(|e| panic!("cannot start unshare for instance {ip}: {e}"))
    }

    fn wait_instance_ready(&self, ip: &str) {
        let wd = self.work.path();
        let ready = wd.join(format!("instance-{ip}.ready"));
        let log = wd.join(format!("instance-{ip}.log"));
        if wait_for(INSTANCE_START_TIMEOUT, || ready.exists().then_some(())).is_none() {
            panic!(
                "instance {ip} did not come up within {INSTANCE_START_TIMEOUT:?}; log: {}",
                log.display()
            );
        }
        // The SSH banner proves sshd -i starts with this config inside the namespaces.
        let addr = (ip, self.ssh_port)
            .to_socket_addrs()
            .unwrap()
            .next()
            .unwrap();
        let banner = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).and_then(|s| {
            s.set_read_timeout(Some(INSTANCE_START_TIMEOUT))?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line)?;
            Ok(line)
        });
        match banner {
            Ok(line) if line.starts_with("SSH-2.0-") => {}
            other => panic!(
                "sshd of instance {ip}:{} does not greet ({other:?}); logs: {} {}",
                self.ssh_port,
                log.display(),
                self.sshd_log(ip).display()
            ),
        }
    }

    /// Background thread: an instance that moto reports terminated (and no running or pending
    /// instance holds its address) loses all its processes, like a real terminated instance.
    fn start_watcher(&mut self) {
        let moto_url = self.moto_url.clone();
        let region = self.region.clone();
        let stop = self.stop_watch.clone();
        let instances = self.instances.clone();
        let handle = self.rt.as_ref().unwrap().handle().clone();
        let ssh_port = self.ssh_port;
        let forwards = self.forwarded_ports();
        let bridge = self.bridge.clone();
        let node = self.node.clone();
        let work = self.work.path().to_path_buf();
        let name = self.name.clone();
        let ips = self.instance_ips.clone();
        let watcher = thread::Builder::new()
            .name(format!("harness-watch-{name}"))
            .spawn(move || {
                let ec2 = ec2_client(&moto_url, &region, Some(HARNESS_APP_NAME));
                // instance id -> whether we already killed its processes
                let mut killed: HashMap<String, bool> = HashMap::new();
                while !stop.load(Ordering::SeqCst) {
                    thread::sleep(WATCH_INTERVAL);
                    let Ok(all) = handle.block_on(describe_all(ec2.clone())) else {
                        continue;
                    };
                    for inst in &all {
                        let dead = matches!(
                            inst.state.as_str(),
                            "shutting-down" | "terminated" | "stopping" | "stopped"
                        );
                        let Some(ip) = inst.private_ip.clone() else {
                            continue;
                        };
                        if !dead
                            || !ips.contains(&ip)
                            || killed.get(&inst.id).copied().unwrap_or(false)
                        {
                            continue;
                        }
                        killed.insert(inst.id.clone(), true);
                        let reused = all.iter().any(|o| {
                            o.id != inst.id
                                && o.private_ip.as_deref() == Some(ip.as_str())
                                && matches!(o.state.as_str(), "pending" | "running")
                                && o.launch_time > inst.launch_time
                        });
                        if reused {
                            // Terminated and its address relaunched within one poll: the new
                            // instance may be in use already, so leave its processes alone.
                            continue;
                        }
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let mut map = instances.lock().unwrap();
                        if let Some(mut child) = map.remove(&ip) {
                            let _ = child.kill();
                            let _ = child.wait();
                            eprintln!(
                                "[harness {name}] {} ({ip}) is {}: killed its processes",
                                inst.id, inst.state
                            );
                            let fresh = bind_retry(&ip, ssh_port).and_then(|l| {
                                spawn_instance_process(
                                    &work,
                                    &ip,
                                    l,
                                    &forwards,
                                    bridge.as_deref(),
                                    &node,
                                )
                            });
                            match fresh {
                                Ok(c) => {
                                    map.insert(ip.clone(), c);
                                }
                                Err(e) => eprintln!(
                                    "[harness {name}] could not restart instance {ip}: {e}"
                                ),
                            }
                        }
                    }
                }
            })
            .expect("spawn watcher");
        self.watcher = Some(watcher);
    }
}

/// Generates an ed25519 key pair without passphrase at `dir/name` (and `dir/name.pub`), as a
/// user's identity file for plain SSH hosts; returns the private key's path and the public key
/// line (for [`Harness::authorize_key`]).
pub fn generate_key_pair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key)
            .stdin(Stdio::null()),
        "ssh-keygen (identity)",
    );
    let public = fs::read_to_string(format!("{}.pub", key.display())).expect("read the public key");
    (key, public.trim().to_string())
}

/// Every process on this machine, all PID namespaces included, as (pid, command line with
/// spaces between the arguments); kernel threads (empty command lines) left out.
pub fn processes() -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (!args.is_empty()).then(|| (pid, args.join(" ")))
        })
        .collect();
    v.sort();
    v
}

/// Where an instance's private disk (its [`Harness::host_dir`]) lives on this machine.
fn private_disk(wd: &Path, ip: &str) -> PathBuf {
    wd.join("disks").join(ip)
}

/// Where the [`NODE_USER`]'s home inside the instance at `ip` lives on this machine.
fn node_home_disk(wd: &Path, ip: &str) -> PathBuf {
    wd.join("homes").join(ip)
}

/// [`NODE_USER`] as /etc/passwd has it, and the Python its sessions get.
#[derive(Clone)]
struct NodeUser {
    uid: u32,
    gid: u32,
    home: PathBuf,
    /// The directory of root's `python3`, first on the user's PATH.
    python_bin: PathBuf,
}

impl NodeUser {
    /// Panics naming the script that creates the user when there is none.
    fn get() -> NodeUser {
        let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        let fields = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() == 7 && f[0] == NODE_USER)
            .unwrap_or_else(|| {
                panic!("no user {NODE_USER} on this machine: run tests/setup-env.sh")
            });
        let id = |i: usize| -> u32 {
            fields[i]
                .parse()
                .unwrap_or_else(|_| panic!("/etc/passwd: {fields:?}"))
        };
        NodeUser {
            uid: id(2),
            gid: id(3),
            home: PathBuf::from(fields[5]),
            python_bin: root_python_bin(),
        }
    }

    /// Makes the home of the instance whose it is at `dir` on this machine, unless it exists
    /// (it outlives a restart of the instance), with a `.bashrc` that puts `python_bin` first on
    /// the PATH, as root's puts pyenv's there; ssh's commands run with it.
    fn make_home(&self, dir: &Path) -> std::io::Result<()> {
        if dir.exists() {
            return Ok(());
        }
        fs::create_dir_all(dir)?;
        let bashrc = dir.join(".bashrc");
        fs::write(
            &bashrc,
            format!(
                "# rallyctl e2e harness: root's Python for Rally\nexport PATH={}:\"$PATH\"\n",
                self.python_bin.display()
            ),
        )?;
        for path in [dir, &bashrc] {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))?;
        }
        Ok(())
    }
}

/// The path every instance sees its private disk at (the same for all: each has its own mount
/// namespace).
fn host_disk_mount_point() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/e2e/host-disk")
}

/// A host bridge for connected instances (`ip link`), replacing one a killed harness that held
/// the same subnet octet left behind.
fn create_bridge(name: &str) {
    let _ = Command::new("ip")
        .args(["link", "del", name])
        .stderr(Stdio::null())
        .status();
    run_ok(
        Command::new("ip").args(["link", "add", name, "type", "bridge"]),
        "ip link add (bridge)",
    );
    run_ok(
        Command::new("ip").args(["link", "set", name, "up"]),
        "ip link set up (bridge)",
    );
}

/// Binds a listening socket, retrying for a few seconds (a killed instance's socket may linger).
fn bind_retry(ip: &str, port: u16) -> std::io::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind((ip, port)) {
            Ok(l) => return Ok(l),
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(e),
        }
    }
}

fn read_ports(path: &Path) -> Option<Vec<u16>> {
    let text = fs::read_to_string(path).ok()?;
    let ports: Vec<u16> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    (!ports.is_empty()).then_some(ports)
}

fn port_of(addr_or_url: &str) -> u16 {
    addr_or_url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("address with port")
}

/// Where instances keep their private /var/lib/cloud and hear of their boots (instance.py
/// `--boot-dir`, fault_proxy.py `--boot`).
pub fn boot_dir(wd: &Path) -> PathBuf {
    wd.join("boot")
}

/// Where `shutdown` inside the instance at `ip` records its calls (instance.py).
fn watchdog_log(wd: &Path, ip: &str) -> PathBuf {
    wd.join(format!("watchdog-{ip}.log"))
}

/// Starts one instance: `unshare --pid ... instance.py` with the listening socket as stdin.
/// Where pyenv is set up for root (as on this machine's image), every SSH session's login
/// shell runs `pyenv rehash`, which locks `shims/.pyenv-shim`. A session killed inside it (an
/// instance killed as a terminated EC2 instance would be) leaves the lock behind, and every
/// later session anywhere on the machine then waits 60 s per rehash: every e2e test hangs at
/// booting. So each instance gets a copy of the shims of its own, without the lock, as its
/// `shims` directory: a lock left there dies with the instance.
fn private_pyenv_shims(wd: &Path, ip: &str) -> std::io::Result<Option<(PathBuf, PathBuf)>> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")));
    let Some(shims) = root.map(|r| r.join("shims")).filter(|s| s.is_dir()) else {
        return Ok(None);
    };
    let copy = wd.join(format!("pyenv-shims-{ip}"));
    let _ = fs::remove_dir_all(&copy);
    fs::create_dir_all(&copy)?;
    for entry in fs::read_dir(&shims)? {
        let entry = entry?;
        if entry.file_name() != ".pyenv-shim" && entry.file_type()?.is_file() {
            fs::copy(entry.path(), copy.join(entry.file_name()))?;
        }
    }
    Ok(Some((copy, shims)))
}

fn spawn_instance_process(
    wd: &Path,
    ip: &str,
    listener: TcpListener,
    forwards: &[u16],
    bridge: Option<&str>,
    node: &NodeUser,
) -> std::io::Result<Child> {
    let support = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support");
    let home = node_home_disk(wd, ip);
    node.make_home(&home)?;
    let log = wd.join(format!("instance-{ip}.log"));
    let ready = wd.join(format!("instance-{ip}.ready"));
    let _ = fs::remove_file(&ready);
    let mut cmd = guarded("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc"])
        .arg(python3())
        .arg(support.join("instance.py"))
        .arg("--sshd-config")
        .arg(wd.join(format!("sshd_config-{ip}")))
        .arg("--sshd-log")
        .arg(wd.join(format!("sshd-{ip}.log")))
        .arg("--refuse-file")
        .arg(wd.join(format!("refuse-ssh-{ip}")))
        .arg("--host-key-dir")
        .arg(wd.join("host-keys"))
        .arg("--private-dir")
        .arg(private_disk(wd, ip))
        .arg(host_disk_mount_point())
        .arg("--private-dir")
        .arg(home)
        .arg(&node.home);
    if let Some((copy, shims)) = private_pyenv_shims(wd, ip)? {
        cmd.arg("--private-dir").arg(copy).arg(shims);
    }
    for p in forwards {
        cmd.arg("--forward").arg(p.to_string());
    }
    if let Some(bridge) = bridge {
        cmd.args(["--bridge", bridge]);
    }
    cmd.args(["--proxy-port", &INSTANCE_PROXY_PORT.to_string()])
        .arg("--watchdog-log")
        .arg(watchdog_log(wd, ip))
        .arg("--boot-dir")
        .arg(boot_dir(wd))
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(log_file(&log))
        .stderr(log_file(&log))
        .spawn()
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop_watch.store(true, Ordering::SeqCst);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        if let Ok(mut map) = self.instances.lock() {
            for (_, mut child) in map.drain() {
                let _ = child.kill(); // SIGKILL; --kill-child takes the namespace down with it
                let _ = child.wait();
            }
        }
        if let Some(bridge) = &self.bridge {
            // The instances' veth pairs went with their network namespaces.
            let _ = Command::new("ip").args(["link", "del", bridge]).status();
        }
        for child in [self.moto.take(), self.es.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        let _ = fs::remove_dir_all(&self.akc_dir);
        if thread::panicking() {
            self.work.disable_cleanup(true);
            eprintln!(
                "[harness {}] test failed; logs kept in {}:",
                self.name,
                self.work.path().display()
            );
            for p in self.log_paths() {
                eprintln!("  {}", p.display());
            }
        }
    }
}

// ---- helpers ----------------------------------------------------------------------------------

fn ec2_client(moto_url: &str, region: &str, app_name: Option<&str>) -> aws_sdk_ec2::Client {
    use aws_sdk_ec2::config::{AppName, BehaviorVersion, Credentials, Region};
    let mut b = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(moto_url)
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "rallyctl-e2e",
        ));
    if let Some(app) = app_name {
        b = b.app_name(AppName::new(app.to_string()).expect("app name"));
    }
    aws_sdk_ec2::Client::from_conf(b.build())
}

async fn describe_all(ec2: aws_sdk_ec2::Client) -> Result<Vec<InstanceView>, String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let resp = ec2
            .describe_instances()
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        for r in resp.reservations() {
            for i in r.instances() {
                out.push(InstanceView {
                    id: i.instance_id().unwrap_or_default().to_string(),
                    state: i
                        .state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_string())
                        .unwrap_or_default(),
                    private_ip: i.private_ip_address().map(str::to_string),
                    tags: i
                        .tags()
                        .iter()
                        .filter_map(|t| {
                            Some((
                                t.key()?.to_string(),
                                t.value().unwrap_or_default().to_string(),
                            ))
                        })
                        .collect(),
                    launch_time: i.launch_time().and_then(|t| SystemTime::try_from(*t).ok()),
                    instance_type: i.instance_type().map(|t| t.as_str().to_string()),
                    image_id: i.image_id().map(str::to_string),
                    subnet_id: i.subnet_id().map(str::to_string),
                    client_token: i.client_token().map(str::to_string),
                });
            }
        }
        token = resp.next_token().map(str::to_string);
        if token.as_deref().is_none_or(str::is_empty) {
            return Ok(out);
        }
    }
}

fn require_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    assert_eq!(
        uid, "0",
        "the e2e harness needs root (PID/network namespaces, sshd); run as root"
    );
}

fn current_user() -> String {
    // root (require_root); kept as a function in case the harness ever runs sshd for another user
    "root".to_string()
}

fn moto_venv(manifest: &Path) -> PathBuf {
    tool_venv(
        manifest,
        "RALLYCTL_MOTO_VENV",
        "moto-venv",
        "bin/moto_server",
    )
}

/// Apache Otava's venv (the change-point peer): `RALLYCTL_OTAVA_VENV`, else where
/// `tests/setup-env.sh` makes it.
pub fn otava_venv() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    tool_venv(manifest, "RALLYCTL_OTAVA_VENV", "otava-venv", "bin/python")
}

/// A venv `tests/setup-env.sh` makes under `target/tools/<dir>`, or where `var` says, holding
/// `probe`.
fn tool_venv(manifest: &Path, var: &str, dir: &str, probe: &str) -> PathBuf {
    tool_dir(dir, var, manifest.join("target/tools").join(dir), probe)
}

/// What `tests/setup-env.sh` makes at `default`, or where `var` says, holding `probe`: `what`
/// names it when it is missing.
fn tool_dir(what: &str, var: &str, default: PathBuf, probe: &str) -> PathBuf {
    let dir = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    if !dir.join(probe).exists() {
        panic!(
            "{what} not found at {} (no {probe}): run tests/setup-env.sh",
            dir.display()
        );
    }
    dir
}

/// What makes pip on an instance (and on the local provider's machine) install from the wheels
/// `tests/setup-env.sh` builds, and from nothing else, as a machine behind a package mirror
/// would: esrally's real wheels, without resolving, downloading and building them for every
/// install (about half the CPU). `RALLYCTL_ESRALLY_WHEELS`, else where the script puts them.
pub fn package_mirror() -> [(&'static str, String); 2] {
    let wheels = tool_dir(
        "esrally's wheels",
        "RALLYCTL_ESRALLY_WHEELS",
        PathBuf::from("/var/cache/rallyctl-e2e/esrally-wheels"),
        &format!(
            "esrally-{}-py3-none-any.whl",
            rallyctl::plan::settings::RALLY_VERSION
        ),
    );
    let path = wheels.to_string_lossy().into_owned();
    assert!(
        !path.contains(char::is_whitespace),
        "esrally's wheels are at {path}, whose space sshd's SetEnv cannot carry"
    );
    [("PIP_FIND_LINKS", path), ("PIP_NO_INDEX", "1".to_owned())]
}

/// What an instance's pip has beside the mirror: no byte code compiled at install, a third of
/// the CPU left after the mirror (instances install anew in most e2e tests). Python compiles a
/// module when it is first imported and keeps the result, so only a venv's first Rally starts
/// slower, and no test may depend on how fast Rally starts (tests wait for what Rally does:
/// `Harness::wait_for_es_request`). pip reads the variable of a `--no-X` flag as the value of
/// X, so `0` is `--no-compile`. Not on the local provider's machine: its one venv outlives the
/// tests, and where the tests' environment has `PYTHONDONTWRITEBYTECODE` (as CI's may), every
/// Rally run there would compile all it imports again.
const INSTANCE_PIP_NO_COMPILE: (&str, &str) = ("PIP_NO_COMPILE", "0");

/// The directory of root's `python3`, which the node user's sessions put first on PATH: root's
/// sessions run pyenv's Python where root's shell sets it up, and esrally unpacks Elasticsearch
/// with tarfile's extraction filter (Python >= 3.11.4), which Debian 12's /usr/bin/python3
/// (3.11.2) lacks (tests/setup-env.sh lets the node user through /root).
pub fn root_python_bin() -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.dirname(sys.executable))",
        ])
        .output()
        .expect("run python3");
    assert!(out.status.success(), "python3: {out:?}");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Claims a subnet octet X (127.0.X.0/24) no other live harness on this machine holds, by an
/// exclusive lock on a file per octet (released by the kernel when the process dies).
fn claim_subnet_octet(n: usize) -> (u8, File) {
    let dir = std::env::temp_dir().join("rallyctl-e2e-subnets");
    fs::create_dir_all(&dir).expect("create subnet lock dir");
    let start = (std::process::id() as usize)
        .wrapping_mul(31)
        .wrapping_add(n * 7);
    for k in 0..254 {
        let octet = (1 + (start + k) % 254) as u8;
        let f = lock_file(&dir.join(format!("{octet}.lock")));
        if f.try_lock().is_ok() {
            return (octet, f);
        }
    }
    panic!("no free subnet octet in {}", dir.display());
}

/// A command for a long-lived child that gets SIGKILL when the thread that started it dies (so
/// that a test binary killed by Ctrl-C or a crash leaves no moto, ES double or instance behind).
/// Linux sends the parent-death signal when the spawning *thread* exits.
pub fn guarded(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if Path::new("/usr/bin/setpriv").exists() {
        let mut cmd = Command::new("/usr/bin/setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// A file that tests lock (`File::lock`, `try_lock`) to share something across processes: the
/// kernel lets go of the lock when the process holding it dies.
pub fn lock_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn log_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Minimal HTTP/1.1 client (Connection: close) for moto's and the ES double's test endpoints.
pub fn http_request(
    method: &str,
    base_url: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Vec<u8>, String> {
    let hostport = base_url.trim_start_matches("http://").trim_end_matches('/');
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("{hostport}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let body = body.unwrap_or(&[]);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "malformed HTTP response".to_string())?;
    let headers = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut payload = raw[split + 4..].to_vec();
    let status: u16 = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload);
    }
    if !(200..300).contains(&status) {
        return Err(format!(
            "{method} {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&payload)
        ));
    }
    Ok(payload)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = data.windows(2).position(|w| w == b"\r\n") {
        let size_str = String::from_utf8_lossy(&data[..pos]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 || data.len() < pos + 2 + size {
            break;
        }
        out.extend_from_slice(&data[pos + 2..pos + 2 + size]);
        data = &data[(pos + 4 + size).min(data.len())..];
    }
    out
}

fn header(entry: &serde_json::Value, name: &str) -> Option<String> {
    entry["headers"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str().map(str::to_string))
}

fn credential_region(entry: &serde_json::Value) -> Option<String> {
    let auth = header(entry, "Authorization")?;
    let scope = auth.split("Credential=").nth(1)?.split(',').next()?;
    scope.split('/').nth(2).map(str::to_string)
}

fn body_text(entry: &serde_json::Value) -> String {
    let body = entry["body"].as_str().unwrap_or_default();
    if entry["body_encoded"].as_bool().unwrap_or(false) {
        String::from_utf8_lossy(&base64_decode(body)).to_string()
    } else {
        body.to_string()
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        })
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn parse_form(body: &str) -> Vec<(String, String)> {
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                },
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).to_string()
    }
    body.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

/// Parses SigV4's `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`, UTC).
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    if s.len() != 16 || &s[8..9] != "T" || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    // days from civil (Howard Hinnant)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}
