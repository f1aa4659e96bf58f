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
