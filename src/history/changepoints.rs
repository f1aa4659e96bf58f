//! Change points in a series of measurements in run order: where its level changed.
//!
//! This is Apache Otava's (formerly DataStax Hunter's) `compute_change_points`, version 0.8.0,
//! rewritten: E-Divisive means (Matteson and James) with a Student's t-test in place of the
//! permutation test (Fleming et al., ICPE 2023), so the same series always gives the same
//! answer. Two passes:
//!
//! 1. Split: windows of `window_len` points, each starting half a window after the one before
//!    (or at the last change found in it, if that lies further on). In each window E-Divisive
//!    bisects repeatedly: the candidate is the split that maximises the energy statistic Q over
//!    every segment, kept while the t-test between its two sides (within the segment it splits)
//!    has a p-value at most a relaxed threshold (ten times `max_pvalue` below 0.05). The union
//!    over the windows are the weak change points.
//! 2. Merge: over the whole series, each weak point is tested between its neighbours; the one
//!    with the largest p-value is dropped while it is not below `max_pvalue`, then the one with
//!    the smallest magnitude while that is not above `min_magnitude`, re-testing the two
//!    points after each point dropped (see [`merge`]).
//!
//! The arithmetic follows Otava's numpy expressions in their order (sums, cumulative sums,
//! coefficient products), because a series with exact ties between candidate splits (a ramp,
//! steps without noise) is decided by the last bit of Q; numpy's first-of-equals argmax, and
//! Python's first-of-equals `max`/`min`, decide ties here as there.
//!
//! Otava's quirks kept so that the answers agree: the standard deviations handed to the t-test
//! are population ones (ddof 0) where the pooled t-test expects sample ones; a p-value is NaN
//! (never significant) when both sides are constant with the same mean; and after a point is
//! dropped in the merge, the point before it keeps its test against the segment that ended at
//! the dropped point, so its `mean_after` may cover less than the points up to the next change.

use serde::Serialize;

use crate::results::stats::t_two_sided_p;

/// The settings of a search. [`Default`] is Otava's (window 50, no minimum magnitude) but for
/// `max_pvalue`: Otava's 0.001 finds a change in about 6.5 % of 100-point series of pure
/// Gaussian noise (26 of 400 measured on Otava itself), where a nightly history should raise
/// a false alarm in at most one of twenty; 0.0001 finds one in under 1 % and still finds a
/// step of 10 % under 3 % noise at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Points per window of the split pass (at least 2).
    pub window_len: usize,
    /// A change is kept when its t-test's p-value is below this (in (0, 1]) ...
    pub max_pvalue: f64,
    /// ... and its relative magnitude (the larger of after/before - 1 and before/after - 1, in
    /// absolute value) above this (a fraction, 0.05 for 5 %). Both, as Otava's code does,
    /// where its docstring says either.
    pub min_magnitude: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window_len: 50,
            max_pvalue: 0.0001,
            min_magnitude: 0.0,
        }
    }
}

/// A change in level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangePoint {
    /// The first point of the new level.
    pub index: usize,
    /// Mean of the points from the change point before (or the start) up to `index`.
    pub mean_before: f64,
    /// Mean of the points from `index` up to the next change point (or the end), or, as
    /// Otava leaves it, up to a weak change point dropped after this one was last tested.
    pub mean_after: f64,
    /// Population standard deviations (n, not n - 1) of the same two segments, as the test saw.
    pub sd_before: f64,
    pub sd_after: f64,
    /// `mean_after / mean_before - 1`; none when `mean_before` is 0.
    pub relative_change: Option<f64>,
    /// The two-sided p-value of Student's t-test between the two segments.
    pub p_value: f64,
}

impl ChangePoint {
    /// The magnitude `min_magnitude` is held against: the larger relative change of the two
    /// directions (a halving is a magnitude of 1, as a doubling is), a direction from a mean of
    /// 0 counting 0, as Otava counts it.
    pub fn magnitude(&self) -> f64 {
        magnitude(self.mean_before, self.mean_after)
    }
}

fn magnitude(before: f64, after: f64) -> f64 {
    let forward = relative(before, after).unwrap_or(0.0).abs();
    let backward = relative(after, before).unwrap_or(0.0).abs();
    // Python's max(a, b): b only when strictly larger.
    if backward > forward {
        backward
    } else {
        forward
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChangePointError {
    #[error("the window length must be at least 2 points, not {0}")]
    Window(usize),
    #[error("the maximum p-value must be above 0 and at most 1, not {0}")]
    PValue(f64),
    #[error("the minimum magnitude must be a fraction of 0 or more, not {0}")]
    Magnitude(f64),
    #[error("point {index} of the series is {value}, not a measurement")]
    NotFinite { index: usize, value: f64 },
}

/// The change points of `series`, in order of index.
pub fn change_points(
    series: &[f64],
    settings: &Settings,
) -> Result<Vec<ChangePoint>, ChangePointError> {
    let Settings {
        window_len,
        max_pvalue,
        min_magnitude,
    } = *settings;
    if window_len < 2 {
        return Err(ChangePointError::Window(window_len));
    }
    if !(max_pvalue > 0.0 && max_pvalue <= 1.0) {
        return Err(ChangePointError::PValue(max_pvalue));
    }
    if !(min_magnitude >= 0.0 && min_magnitude.is_finite()) {
        return Err(ChangePointError::Magnitude(min_magnitude));
    }
    if let Some((index, &value)) = series.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(ChangePointError::NotFinite { index, value });
    }
    // Otava's first-pass threshold: looser, so that the merge has candidates to weigh.
    let first_pass = if max_pvalue < 0.05 {
        max_pvalue * 10.0
    } else if max_pvalue < 0.5 {
        max_pvalue * 2.0
    } else {
        max_pvalue
    };
    let weak = split(series, window_len, first_pass);
    let (indices, tests) = merge(series, weak, max_pvalue, min_magnitude);
    Ok(indices
        .into_iter()
        .zip(tests)
        .map(|(index, t)| ChangePoint {
            index,
            mean_before: t.mean_before,
            mean_after: t.mean_after,
            sd_before: t.sd_before,
            sd_after: t.sd_after,
            relative_change: relative(t.mean_before, t.mean_after),
            p_value: t.p_value,
        })
        .collect())
}

fn relative(from: f64, to: f64) -> Option<f64> {
    (from != 0.0).then(|| to / from - 1.0)
}

/// The split pass: the weak change points, sorted and distinct.
fn split(series: &[f64], window_len: usize, max_pvalue: f64) -> Vec<usize> {
    let step = window_len / 2;
    let mut found: Vec<usize> = Vec::new();
    let mut start = 0;
    while start < series.len() {
        let end = (start + window_len).min(series.len());
        let local = bisect(&series[start..end], max_pvalue);
        let last = local.last().map_or(0, |i| i + start);
        for index in local.into_iter().map(|i| i + start) {
            if !found.contains(&index) {
                found.push(index);
            }
        }
        start = last.max(start + step);
    }
    found.sort_unstable();
    found
}

/// The merge pass over the weak change points: the survivors with their tests.
fn merge(
    series: &[f64],
    mut indices: Vec<usize>,
    max_pvalue: f64,
    min_magnitude: f64,
) -> (Vec<usize>, Vec<TTest>) {
    let between = |indices: &[usize], k: usize| {
        let from = if k == 0 { 0 } else { indices[k - 1] };
        let to = indices.get(k + 1).copied().unwrap_or(series.len());
        TTest::of(&series[from..indices[k]], &series[indices[k]..to])
    };
    let mut tests: Vec<TTest> = (0..indices.len()).map(|k| between(&indices, k)).collect();
    while !tests.is_empty() {
        let mut weakest = first_extreme(&tests, |t| t.p_value, |a, b| a > b);
        if tests[weakest].p_value < max_pvalue {
            weakest = first_extreme(&tests, TTest::magnitude, |a, b| a < b);
            if tests[weakest].magnitude() > min_magnitude {
                break;
            }
        }
        indices.remove(weakest);
        tests.remove(weakest);
        // Otava tests again the point after the one dropped and the one after that, not the
        // one before, whose test keeps ending at the dropped point; so does this, or the
        // decisions that follow (and the means reported) would differ from Otava's.
        for k in [weakest, weakest + 1] {
            if k < indices.len() {
                tests[k] = between(&indices, k);
            }
        }
    }
    (indices, tests)
}

/// Which item Python's `max` (with `better` as `>`) or `min` (`<`) picks: the first of equals,
/// and a NaN only where nothing compares better than it.
fn first_extreme<T>(
    items: &[T],
    key: impl Fn(&T) -> f64,
    better: impl Fn(f64, f64) -> bool,
) -> usize {
    let mut best = 0;
    for (k, item) in items.iter().enumerate().skip(1) {
        if better(key(item), key(&items[best])) {
            best = k;
        }
    }
    best
}

/// E-Divisive within one window: its change points (window indices, sorted), each kept while
/// its t-test's p-value is at most `max_pvalue`.
fn bisect(window: &[f64], max_pvalue: f64) -> Vec<usize> {
    let distances = Distances::new(window);
    let mut points: Vec<usize> = Vec::new();
    loop {
        let bounds: Vec<usize> = std::iter::once(0)
            .chain(points.iter().copied())
            .chain(std::iter::once(window.len()))
            .collect();
        let mut best: Option<(usize, f64, (usize, usize))> = None;
        for segment in bounds.windows(2) {
            let (from, to) = (segment[0], segment[1]);
            if to - from < 2 {
                continue;
            }
            let (index, q) = distances.candidate(from, to);
            if best.is_none_or(|(_, best_q, _)| q > best_q) {
                best = Some((index, q, (from, to)));
            }
        }
        let Some((index, _, (from, to))) = best else {
            break;
        };
        if TTest::of(&window[from..index], &window[index..to]).p_value <= max_pvalue {
            let at = points.partition_point(|&p| p < index);
            points.insert(at, index);
        } else {
            break;
        }
    }
    points
}

/// Otava's `PairDistanceCalculator` for one window: the absolute differences between its
/// points, `v[c]` (column `c + 1`'s sum above the diagonal) and `h[r][c]` (row `r`'s running
/// sum from the diagonal to column `c + 1`), summed in numpy's order.
struct Distances {
    n: usize,
    d: Vec<f64>,
    v: Vec<f64>,
    h: Vec<f64>,
}

impl Distances {
    fn new(window: &[f64]) -> Distances {
        let n = window.len();
        let d: Vec<f64> = window
            .iter()
            .flat_map(|a| window.iter().map(move |b| (a - b).abs()))
            .collect();
        let m = n.saturating_sub(1);
        let v = (0..m)
            .map(|c| (0..=c).fold(0.0, |acc, r| acc + d[r * n + c + 1]))
            .collect();
        let mut h = vec![0.0; m * m];
        for r in 0..m {
            let mut acc = 0.0;
            for c in r..m {
                acc += d[r * n + c + 1];
                h[r * m + c] = acc;
            }
        }
        Distances { n, d, v, h }
    }

    /// The best split of `from..to` (at least two points): the index of the first point of its
    /// second part and Q, the largest over every end of that second part. Q for a first part
    /// X of n points and a second Y of m is
    /// `2/(n+m) Σ|x-y| - 2m/((n+m)(n-1)) Σ|x-x'| - 2n/((n+m)(m-1)) Σ|y-y'|`.
    fn candidate(&self, from: usize, to: usize) -> (usize, f64) {
        let (n, m) = (self.n, to - from - 1);
        let stride = self.n - 1;
        let h = |a: usize, b: usize| self.h[(from + a) * stride + from + b];
        // Column sums over the rows before the segment, taken off `v` (numpy sums one column
        // pairwise, several row by row).
        let before: Vec<f64> = (0..m)
            .map(|k| {
                let column = (0..from).map(|r| self.d[r * n + from + 1 + k]);
                if m == 1 {
                    pairwise_sum(&column.collect::<Vec<_>>())
                } else {
                    column.fold(0.0, |acc, x| acc + x)
                }
            })
            .collect();
        let cv: Vec<f64> = (self.v[from..from + m].iter().zip(&before))
            .scan(0.0, |acc, (v, b)| {
                *acc += v - b;
                Some(*acc)
            })
            .collect();
        // within_after[i][j]: Σ h(a, j) for a from m - 1 down to i + 1 (bottom-up, as numpy's
        // flipped cumulative sum adds them).
        let mut within_after = vec![0.0; m * m];
        for j in 1..m {
            let mut acc = 0.0;
            for i in (0..m - 1).rev() {
                acc += h(i + 1, j);
                within_after[i * m + j] = acc;
            }
        }
        let mut running = vec![0.0; m];
        let mut best = (0, f64::NEG_INFINITY);
        for i in 0..m {
            for (j, r) in running.iter_mut().enumerate() {
                *r += h(i, j);
            }
            let previous = if i == 0 { 0.0 } else { cv[i - 1] };
            for j in i..m {
                let kappa = (j + 2) as f64;
                let a = (2.0 / kappa) * (running[j] - previous);
                let b = if i == 0 {
                    0.0
                } else {
                    (2.0 * (j - i + 1) as f64 / (kappa * i as f64)) * previous
                };
                let c = if j == i {
                    0.0
                } else {
                    (2.0 * (i + 1) as f64 / (kappa * (j - i) as f64)) * within_after[i * m + j]
                };
                let q = a - b - c;
                if q > best.1 {
                    best = (i, q);
                }
            }
        }
        (from + best.0 + 1, best.1)
    }
}

/// numpy's sum of a contiguous float64 array: pairwise, in blocks of eight accumulators.
fn pairwise_sum(values: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = values.len();
    if n < 8 {
        values.iter().fold(0.0, |acc, x| acc + x)
    } else if n <= BLOCK {
        let mut r = [0.0; 8];
        r.copy_from_slice(&values[..8]);
        let whole = n - n % 8;
        for chunk in values[8..whole].chunks_exact(8) {
            for (acc, x) in r.iter_mut().zip(chunk) {
                *acc += x;
            }
        }
        let head = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        values[whole..].iter().fold(head, |acc, x| acc + x)
    } else {
        let half = n / 2;
        let half = half - half % 8;
        pairwise_sum(&values[..half]) + pairwise_sum(&values[half..])
    }
}

/// numpy's mean and population standard deviation.
fn mean_sd(values: &[f64]) -> (f64, f64) {
    let count = values.len() as f64;
    let mean = pairwise_sum(values) / count;
    let squares: Vec<f64> = values.iter().map(|x| (x - mean) * (x - mean)).collect();
    (mean, (pairwise_sum(&squares) / count).sqrt())
}

/// Otava's `TTestSignificanceTester.compare`: Student's pooled t-test between two segments fed
/// their population standard deviations.
#[derive(Debug, Clone, Copy)]
struct TTest {
    mean_before: f64,
    mean_after: f64,
    sd_before: f64,
    sd_after: f64,
    p_value: f64,
}

impl TTest {
    fn of(before: &[f64], after: &[f64]) -> TTest {
        let side = |values: &[f64]| {
            let (mean, sd) = mean_sd(values);
            (mean, if values.len() >= 2 { sd } else { 0.0 })
        };
        let (mean_before, sd_before) = side(before);
        let (mean_after, sd_after) = side(after);
        let (n1, n2) = (before.len() as f64, after.len() as f64);
        let p_value = if before.len() + after.len() > 2 {
            // scipy's pooled variance; one point contributes no variance.
            let var = |sd: f64, n: f64| if n == 1.0 { 0.0 } else { sd * sd };
            let df = n1 + n2 - 2.0;
            let pooled = ((n1 - 1.0) * var(sd_before, n1) + (n2 - 1.0) * var(sd_after, n2)) / df;
            let t = (mean_before - mean_after) / (pooled * (1.0 / n1 + 1.0 / n2)).sqrt();
            if t.is_nan() {
                f64::NAN
            } else {
                t_two_sided_p(t, df).expect("three points or more leave a degree of freedom")
            }
        } else {
            1.0
        };
        TTest {
            mean_before,
            mean_after,
            sd_before,
            sd_after,
            p_value,
        }
    }

    fn magnitude(&self) -> f64 {
        magnitude(self.mean_before, self.mean_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64 and Box-Muller: seeded normal noise without a random crate.
    struct Noise(u64);

    impl Noise {
        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }

        fn normal(&mut self) -> f64 {
            let u = 1.0 - self.uniform();
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos()
        }

        /// `levels` as (points, level), each point the level times 1 ± `noise` (sd).
        fn series(&mut self, levels: &[(usize, f64)], noise: f64) -> Vec<f64> {
            levels
                .iter()
                .flat_map(|&(n, level)| std::iter::repeat_n(level, n))
                .map(|level| level * (1.0 + noise * self.normal()))
                .collect()
        }
    }

    fn indices(series: &[f64]) -> Vec<usize> {
        change_points(series, &Settings::default())
            .unwrap()
            .iter()
            .map(|c| c.index)
            .collect()
    }

    #[test]
    fn a_step_of_ten_percent_under_three_percent_noise_is_found_where_it_starts() {
        // E-Divisive places a step by energy, so the first point of the new level, drawn
        // among the old one's noise, moves it by one now and then (as it does in Otava: 336
        // of 400 such series exactly, 384 within one point, with seeds of Python's own).
        let (mut exact, mut within_one) = (0, 0);
        for seed in 0..100 {
            let series = Noise(seed).series(&[(60, 100.0), (40, 110.0)], 0.03);
            let found = change_points(&series, &Settings::default()).unwrap();
            if let [only] = &found[..] {
                // Otava's mean after a change may stop at a weak point the merge dropped.
                let change = only.relative_change.unwrap();
                assert!((0.05..0.15).contains(&change), "{only:?}");
                assert!(only.p_value < Settings::default().max_pvalue, "{only:?}");
                exact += usize::from(only.index == 60);
                within_one += usize::from(only.index.abs_diff(60) <= 1);
            }
        }
        assert!(
            exact >= 80 && within_one >= 95,
            "of 100: {exact} found the step alone at its first point, {within_one} within one"
        );
    }

    #[test]
    fn pure_noise_shows_no_change_in_at_least_95_of_100_seeds() {
        let quiet = (0..100)
            .filter(|&seed| indices(&Noise(seed).series(&[(100, 100.0)], 0.03)).is_empty())
            .count();
        assert!(quiet >= 95, "{quiet} of 100 noise series without a change");
    }

    #[test]
    fn two_changes_are_found_in_order() {
        let series = Noise(7).series(&[(50, 100.0), (50, 90.0), (50, 105.0)], 0.02);
        let found = change_points(&series, &Settings::default()).unwrap();
        assert_eq!(found.iter().map(|c| c.index).collect::<Vec<_>>(), [50, 100]);
        assert!(found[0].relative_change.unwrap() < 0.0);
        assert!(found[1].relative_change.unwrap() > 0.0);
        // Each is measured between its neighbours: the middle level is the segment between.
        assert_eq!(found[0].mean_after, found[1].mean_before);
    }

    #[test]
    fn the_same_series_gives_the_same_answer() {
        let series = Noise(3).series(&[(120, 5.0), (200, 4.5), (45, 5.2)], 0.04);
        let first = change_points(&series, &Settings::default()).unwrap();
        assert!(!first.is_empty());
        assert_eq!(first, change_points(&series, &Settings::default()).unwrap());
    }

    #[test]
    fn a_minimum_magnitude_drops_small_significant_changes() {
        let series = Noise(11).series(&[(80, 100.0), (80, 103.0), (80, 130.0)], 0.005);
        assert_eq!(indices(&series), [80, 160]);
        let settings = Settings {
            min_magnitude: 0.05,
            ..Settings::default()
        };
        let found = change_points(&series, &settings).unwrap();
        assert_eq!(found.iter().map(|c| c.index).collect::<Vec<_>>(), [160]);
        assert!(found[0].magnitude() > 0.05);
    }

    #[test]
    fn short_constant_and_empty_series_have_no_change() {
        for series in [vec![], vec![1.0], vec![1.0, 2.0], vec![3.0; 70]] {
            assert_eq!(indices(&series), Vec::<usize>::new(), "{series:?}");
        }
    }

    #[test]
    fn a_step_without_noise_is_certain() {
        let mut series = vec![1.0; 30];
        series.extend([2.0; 30]);
        let found = change_points(&series, &Settings::default()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].index, found[0].p_value), (30, 0.0));
        assert_eq!(found[0].relative_change, Some(1.0));
    }

    #[test]
    fn a_change_from_zero_has_no_relative_change_but_counts_its_other_direction() {
        let mut series = vec![0.0; 30];
        series.extend([2.0; 30]);
        let found = change_points(&series, &Settings::default()).unwrap();
        assert_eq!(found[0].relative_change, None);
        // after/before is undefined; before/after - 1 is -1.
        assert_eq!(found[0].magnitude(), 1.0);
    }

    #[test]
    fn bad_settings_and_values_are_refused() {
        let with = |window_len, max_pvalue, min_magnitude| Settings {
            window_len,
            max_pvalue,
            min_magnitude,
        };
        let cases = [
            (with(1, 0.0001, 0.0), ChangePointError::Window(1)),
            (with(50, 0.0, 0.0), ChangePointError::PValue(0.0)),
            (with(50, 1.5, 0.0), ChangePointError::PValue(1.5)),
            (with(50, 0.001, -0.1), ChangePointError::Magnitude(-0.1)),
        ];
        for (settings, error) in cases {
            assert_eq!(change_points(&[1.0, 2.0], &settings), Err(error));
        }
        assert!(matches!(
            change_points(&[1.0, 2.0], &with(50, f64::NAN, 0.0)),
            Err(ChangePointError::PValue(_))
        ));
        let error = change_points(&[1.0, f64::INFINITY], &Settings::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "point 1 of the series is inf, not a measurement"
        );
    }

    #[test]
    fn sums_follow_numpy() {
        // Values whose sum depends on the order of additions.
        let values: Vec<f64> = (0..300).map(|k| 1.0 / (k as f64 + 0.37)).collect();
        // Pairwise: 8 accumulators over whole blocks, then the rest, halves above 128.
        let mut r = [0.0; 8];
        for (k, x) in values[..96].iter().enumerate() {
            r[k % 8] += x;
        }
        let block = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        assert_eq!(
            pairwise_sum(&values[..100]),
            block + values[96] + values[97] + values[98] + values[99]
        );
        assert_eq!(
            pairwise_sum(&values),
            pairwise_sum(&values[..144]) + pairwise_sum(&values[144..])
        );
        assert_eq!(
            pairwise_sum(&values[..5]),
            values[..5].iter().fold(0.0, |a, x| a + x)
        );
    }
}
