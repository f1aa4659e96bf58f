//! What the benches share.
#![allow(dead_code)] // each bench uses a part of it

/// A memory figure of this process from /proc/self/status, in KiB.
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A deterministic spread of about ±3 % around 1 (no random crate needed).
pub fn wobble(seed: usize) -> f64 {
    let x = (seed.wrapping_mul(2_654_435_761) % 10_007) as f64 / 10_007.0;
    0.97 + 0.06 * x
}

/// Runs this bench again as a child with `env` set (each measured run starts with a fresh
/// process, so one run's allocations never lower the next one's peak) and reads the figures
/// it prints on one line, whitespace-separated.
pub fn child_figures(env: &[(&str, &std::ffi::OsStr)]) -> Vec<f64> {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}
