//! The fault-injecting HTTP proxy (`fault_proxy.py`) in front of a harness's moto: rallyctl's AWS
//! calls go through it when its command gets `AWS_ENDPOINT_URL` = [`FaultProxy::url`].

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const PROXY_START_TIMEOUT: Duration = Duration::from_secs(15);

/// The fault proxy, killed on drop.
pub struct FaultProxy {
    child: Child,
    /// The proxy's endpoint, e.g. `http://127.0.0.1:41234`.
    pub url: String,
}

impl FaultProxy {
    /// Starts the proxy in front of `upstream` with `--fault` rules (`ACTION:KIND:COUNT`, see
    /// fault_proxy.py), logging into `dir`.
    pub fn start(upstream: &str, faults: &[&str], dir: &Path) -> FaultProxy {
        FaultProxy::start_with(upstream, faults, &[], dir)
    }

    /// Like `start`, with further arguments of fault_proxy.py (`--young-not-found N`).
    pub fn start_with(upstream: &str, faults: &[&str], args: &[&str], dir: &Path) -> FaultProxy {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/fault_proxy.py");
        let port_file = dir.join("fault_proxy.port");
        // A proxy started earlier in `dir` left its port here: wait for this one's.
        let _ = std::fs::remove_file(&port_file);
        let log = dir.join("fault_proxy.log");
        let mut cmd = super::guarded(super::python3());
        cmd.arg(&script)
            .args(["--upstream", upstream, "--port-file"])
            .arg(&port_file);
        for f in faults {
            cmd.args(["--fault", f]);
        }
        cmd.args(args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(super::log_file(&log))
            .spawn()
            .expect("start fault_proxy.py");
        let mut proxy = FaultProxy {
            child,
            url: String::new(),
        };
        let deadline = Instant::now() + PROXY_START_TIMEOUT;
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
            {
                break p;
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("fault proxy exited ({status}); log: {}", log.display());
            }
            assert!(
                Instant::now() < deadline,
                "fault proxy did not come up; log: {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        proxy.url = format!("http://127.0.0.1:{port}");
        proxy
    }

    /// Like `start`, in front of `h`'s moto, with disks that follow images (`--disks`): each
    /// launched instance's disk (what it sees at `h.host_dir`) starts empty, or as a copy of
    /// the disk of the instance an image was made from. Tests whose `remote_dir` is
    /// `h.host_dir` so install into a disk of the instance's own, as on EC2.
    pub fn with_disks(h: &super::Harness, faults: &[&str]) -> FaultProxy {
        FaultProxy::with_disks_and(h, faults, &[])
    }

    /// Like `with_disks`, with further arguments of fault_proxy.py (`--image-state failed`).
    pub fn with_disks_and(h: &super::Harness, faults: &[&str], args: &[&str]) -> FaultProxy {
        let (disks, images) = (h.work.path().join("disks"), h.work.path().join("images"));
        let mut all = vec![
            "--disks",
            disks.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        FaultProxy::start_with(&h.moto_url, faults, &all, h.work.path())
    }

    /// Faults injected so far, per action (a `hang` counts once its hold begins).
    pub fn injected(&self, action: &str) -> u64 {
        self.count("injected", action)
    }

    /// Calls passed on to moto so far, per action.
    pub fn forwarded(&self, action: &str) -> u64 {
        self.count("forwarded", action)
    }

    /// Calls of `action` held by a `hang` fault right now (the client still waits for them).
    pub fn held(&self, action: &str) -> u64 {
        self.count("held", action)
    }

    /// Polls until `held(action)` is at least `n`; panics after `timeout`.
    pub fn wait_held(&self, action: &str, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let held = self.held(action);
            if held >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{action} held {held} time(s), never {n}, within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// From now on DescribeInstances says EC2 reclaimed these spot instances.
    pub fn reclaim(&self, ids: &[&str]) {
        let body = serde_json::json!({ "ids": ids }).to_string();
        super::http_request("POST", &self.url, "/_reclaim", Some(body.as_bytes())).unwrap();
    }

    /// From now on EC2 does not know these instances, as after it purged them.
    pub fn purge(&self, ids: &[&str]) {
        let body = serde_json::json!({ "ids": ids }).to_string();
        super::http_request("POST", &self.url, "/_purge", Some(body.as_bytes())).unwrap();
    }

    /// Every S3 call so far, in order: `(operation, key, whether it carried If-Match)`.
    pub fn s3_calls(&self) -> Vec<(String, String, bool)> {
        let report = self.report();
        let calls = report["s3"].as_array().cloned().unwrap_or_default();
        calls
            .iter()
            .map(|c| {
                (
                    c["action"].as_str().unwrap_or_default().to_owned(),
                    c["key"].as_str().unwrap_or_default().to_owned(),
                    c["if_match"].as_bool().unwrap_or_default(),
                )
            })
            .collect()
    }

    fn count(&self, kind: &str, action: &str) -> u64 {
        self.report()[kind][action].as_u64().unwrap_or(0)
    }

    /// The proxy's `/_faults` report.
    pub fn report(&self) -> serde_json::Value {
        let body = super::http_request("GET", &self.url, "/_faults", None).unwrap();
        serde_json::from_slice(&body).unwrap()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
