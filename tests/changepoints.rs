//! rallyctl's change points against their peer, Apache Otava 0.8.0 (its venv comes from
//! `tests/setup-env.sh`): series of every kind a benchmark's history takes (steps up and down,
//! ramps, noise, two and more changes, short and constant series), made by
//! `tests/support/otava_changes.py` with Otava's answer, must give the same change points here
//! at the same settings.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use rallyctl::history::changepoints::{Settings, change_points};
use serde::Deserialize;
use serde_json::json;

/// A series as the script makes it: pieces of (points, from, to), linear from `from` to `to`,
/// each point times 1 + `noise` × a normal draw seeded by `seed`.
struct Spec {
    seed: u64,
    noise: f64,
    pieces: Vec<(usize, f64, f64)>,
}

fn levels(seed: u64, noise: f64, levels: &[(usize, f64)]) -> Spec {
    Spec {
        seed,
        noise,
        pieces: levels.iter().map(|&(n, l)| (n, l, l)).collect(),
    }
}

fn ramp(seed: u64, noise: f64, pieces: &[(usize, f64, f64)]) -> Spec {
    Spec {
        seed,
        noise,
        pieces: pieces.to_vec(),
    }
}

#[derive(Deserialize)]
struct Answer {
    series: Vec<u64>,
    change_points: Vec<OtavaChange>,
}

#[derive(Deserialize, Debug)]
struct OtavaChange {
    index: usize,
    mean_before: f64,
    mean_after: f64,
    pvalue: f64,
}

/// Otava's answers for `specs` at `settings`, with the series they were found in.
fn otava(settings: &Settings, specs: &[Spec]) -> Vec<(Vec<f64>, Vec<OtavaChange>)> {
    let job = json!({
        "window_len": settings.window_len,
        "max_pvalue": settings.max_pvalue,
        "min_magnitude": settings.min_magnitude,
        "series": specs.iter().map(|s| json!({
            "seed": s.seed,
            "noise": s.noise,
            "pieces": s.pieces.iter().map(|&(n, a, b)| json!([n, a, b])).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/otava_changes.py"
    );
    let mut child = Command::new(support::otava_venv().join("bin/python"))
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the Otava venv's python runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "otava_changes.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Answer> = serde_json::from_slice(&out.stdout).unwrap();
    answers
        .into_iter()
        .map(|a| {
            let series = a.series.into_iter().map(f64::from_bits).collect();
            (series, a.change_points)
        })
        .collect()
}

fn close(a: f64, b: f64, relative: f64) -> bool {
    a == b || (a - b).abs() <= relative * a.abs().max(b.abs())
}

/// Every series of `specs` compared at `settings`: the disagreements, and how many series.
fn disagreements(settings: Settings, specs: &[Spec]) -> (Vec<String>, usize) {
    let mut found = Vec::new();
    let answers = otava(&settings, specs);
    for (k, (series, theirs)) in answers.iter().enumerate() {
        let ours = change_points(series, &settings).unwrap();
        let place = format!(
            "{settings:?}, series {k} (seed {}, pieces {:?}, noise {})",
            specs[k].seed, specs[k].pieces, specs[k].noise
        );
        let same = ours.len() == theirs.len()
            && ours.iter().zip(theirs).all(|(o, t)| {
                o.index == t.index
                    && close(o.mean_before, t.mean_before, 1e-12)
                    && close(o.mean_after, t.mean_after, 1e-12)
                    // scipy's Student's t is not statrs': a few digits may differ.
                    && close(o.p_value, t.pvalue, 1e-6)
            });
        if !same {
            found.push(format!(
                "{place}:\n  rallyctl {ours:?}\n  otava    {theirs:?}"
            ));
        }
    }
    (found, answers.len())
}

#[test]
fn change_points_are_the_ones_otava_finds() {
    let mut specs = Vec::new();
    // Steps of 10 % under 3 % noise, up and down, at the default settings.
    for seed in 0..8 {
        specs.push(levels(seed, 0.03, &[(60, 100.0), (40, 110.0)]));
        specs.push(levels(100 + seed, 0.03, &[(70, 100.0), (30, 90.0)]));
    }
    // Pure noise.
    for seed in 0..8 {
        specs.push(levels(200 + seed, 0.03, &[(100, 100.0)]));
    }
    // Two changes, and a year of nights with four.
    for seed in 0..5 {
        specs.push(levels(
            300 + seed,
            0.02,
            &[(50, 100.0), (50, 90.0), (50, 105.0)],
        ));
        specs.push(levels(
            400 + seed,
            0.03,
            &[(90, 50.0), (60, 56.0), (100, 52.0), (80, 60.0), (35, 45.0)],
        ));
    }
    // Ramps, with and without noise (a ramp has exact ties between splits).
    for seed in 0..4 {
        specs.push(ramp(500 + seed, 0.01, &[(100, 100.0, 150.0)]));
        specs.push(ramp(
            510 + seed,
            0.02,
            &[(40, 100.0, 100.0), (40, 100.0, 130.0), (40, 130.0, 130.0)],
        ));
    }
    specs.push(ramp(0, 0.0, &[(41, 1.0, 41.0)]));
    specs.push(ramp(0, 0.0, &[(120, 10.0, 20.0)]));
    // Short series, constant ones, steps without noise.
    for n in [0, 1, 2, 3, 5, 9] {
        specs.push(levels(
            600 + n as u64,
            0.01,
            &[(n / 2, 100.0), (n - n / 2, 130.0)],
        ));
    }
    specs.push(levels(0, 0.0, &[(70, 3.0)]));
    specs.push(levels(0, 0.0, &[(10, 0.0)]));
    specs.push(levels(0, 0.0, &[(30, 1.0), (30, 2.0)]));
    specs.push(levels(0, 0.0, &[(20, 1.0), (20, 2.0), (20, 1.0)]));
    specs.push(levels(0, 0.0, &[(30, 0.0), (30, 2.0)]));
    let (mut found, mut compared) = disagreements(Settings::default(), &specs);

    // Otava's own defaults, a shorter window with a looser threshold, a minimum magnitude.
    for settings in [
        Settings {
            max_pvalue: 0.001,
            ..Settings::default()
        },
        Settings {
            window_len: 30,
            max_pvalue: 0.01,
            min_magnitude: 0.0,
        },
    ] {
        let (more, n) = disagreements(settings, &specs);
        found.extend(more);
        compared += n;
    }
    let small_and_large: Vec<Spec> = (0..6)
        .map(|seed| levels(700 + seed, 0.005, &[(80, 100.0), (80, 103.0), (80, 130.0)]))
        .collect();
    let (more, n) = disagreements(
        Settings {
            min_magnitude: 0.05,
            ..Settings::default()
        },
        &small_and_large,
    );
    found.extend(more);
    compared += n;

    assert!(compared >= 100, "{compared} series compared");
    assert!(
        found.is_empty(),
        "{} of {compared} series disagree:\n{}",
        found.len(),
        found.join("\n")
    );
    println!("{compared} series compared with Otava, all agree");
}

/// Random series (1 to 5 pieces of up to 120 points, levels and ramps, 0 to 5 % noise) at
/// settings that take every branch of Otava's: windows from 5 to 80 points, thresholds whose
/// first pass is ten times, twice and once `max_pvalue`, minimum magnitudes.
#[test]
fn random_series_at_every_kind_of_setting_agree_with_otava() {
    // A 64-bit LCG (Knuth's MMIX constants): the specs only need to vary.
    let mut state: u64 = 12345;
    let mut below = |m: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % m
    };
    let (mut found, mut compared) = (Vec::new(), 0);
    for (window_len, max_pvalue, min_magnitude) in [
        (5, 0.1, 0.0),
        (10, 0.01, 0.0),
        (30, 0.001, 0.02),
        (80, 0.0001, 0.0),
        (50, 0.3, 0.0),
        (20, 0.6, 0.01),
    ] {
        let specs: Vec<Spec> = (0..40)
            .map(|_| {
                let pieces: Vec<_> = (0..1 + below(5))
                    .map(|_| {
                        let n = below(120) as usize;
                        let from = 50.0 + below(100) as f64;
                        let to = if below(3) == 0 {
                            50.0 + below(100) as f64
                        } else {
                            from
                        };
                        (n, from, to)
                    })
                    .collect();
                let noise = [0.0, 0.005, 0.02, 0.05][below(4) as usize];
                ramp(below(1_000_000), noise, &pieces)
            })
            .collect();
        let settings = Settings {
            window_len,
            max_pvalue,
            min_magnitude,
        };
        let (more, n) = disagreements(settings, &specs);
        found.extend(more);
        compared += n;
    }
    assert!(
        found.is_empty(),
        "{} of {compared} series disagree:\n{}",
        found.len(),
        found.join("\n")
    );
    println!("{compared} random series compared with Otava, all agree");
}
