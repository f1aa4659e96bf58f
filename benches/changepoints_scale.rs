//! Change points at the scale of a year of nightly history: 50 tests × 20 metrics, 365 runs
//! each, 1,000 series analysed one after another on one thread at the default settings. A third
//! of the series step by 8 % part-way, one in seven again later; the rest are noise.
//!
//!     cargo bench --bench changepoints_scale
//!
//! Target (issue 23): `history` reads and analyses them in under one second.

mod support;
use support::wobble;

use std::time::Instant;

use rallyctl::history::changepoints::{Settings, change_points};

const TESTS: usize = 50;
const METRICS: usize = 20;
const RUNS: usize = 365;
const ROUNDS: usize = 3;

fn series(k: usize) -> Vec<f64> {
    let base = 10.0 * (k % METRICS + 1) as f64;
    (0..RUNS)
        .map(|night| {
            let mut level = base;
            if k.is_multiple_of(3) && night >= 150 + k % 100 {
                level *= 1.08;
            }
            if k.is_multiple_of(7) && night >= 300 {
                level *= 0.92;
            }
            level * wobble(k * 1_000 + night)
        })
        .collect()
}

fn main() {
    let all: Vec<Vec<f64>> = (0..TESTS * METRICS).map(series).collect();
    let settings = Settings::default();
    for round in 1..=ROUNDS {
        let started = Instant::now();
        let mut found = 0;
        for s in &all {
            found += change_points(s, &settings).expect("valid series").len();
        }
        let took = started.elapsed();
        println!(
            "round {round}: {} series of {RUNS} points in {} ms ({:.0} µs a series), {found} change points",
            all.len(),
            took.as_millis(),
            took.as_secs_f64() * 1e6 / all.len() as f64,
        );
    }
}
