//! The statistics behind `results`: a summary of a test's repetitions, Welch's t on the log of
//! the values for a comparison, Holm's correction over all comparisons of one compare, and how
//! many repetitions would likely settle an inconclusive one.
//!
//! Why Welch's t on logs: a benchmark change is relative ("5 % slower"), and throughput and
//! latency are positive and skewed, so their logs are closer to normal and a difference of mean
//! logs is the log of a ratio (of geometric means). Welch does not assume both runs are equally
//! noisy (a new build on other instances rarely is), and its interval exists from two
//! repetitions per side. A rank test does not help at the repetition counts people pay for:
//! with three per side an exact Mann-Whitney U test cannot go below a two-sided p of 0.10.
//!
//! Student's t comes from `statrs` (its CDF through the regularized incomplete beta function);
//! only the quantile is sped up here, see [`t_quantile`].

use std::f64::consts::PI;

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};
use statrs::function::gamma::ln_gamma;

/// The confidence of every interval before correction, and `1 - ALPHA`.
pub const CONFIDENCE: f64 = 0.95;

/// The family-wise error rate Holm's correction keeps.
pub const ALPHA: f64 = 1.0 - CONFIDENCE;

/// Repetitions whose relative standard deviation exceeds this many percent are flagged noisy:
/// cloud instances of one type differ by a few percent, so ten means something else is off
/// (a noisy neighbour, a warm-up that was too short).
pub const NOISY_RSD_PCT: f64 = 10.0;

/// The most repetitions per side an estimate names; beyond it, more races are unlikely to be
/// the answer (the change sits on the min-effect boundary, or the runs are too noisy).
pub const MAX_REPETITIONS: u32 = 100;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("a test needs at least two values on each side, got {0} and {1}")]
    TooFew(usize, usize),
    #[error("{0} has no logarithm: only positive values compare as ratios")]
    NotPositive(f64),
    #[error("{0} is not a number a race can report")]
    NotFinite(f64),
    #[error("a confidence level is between 0 and 1, not {0}")]
    Level(f64),
    #[error("Student's t needs positive degrees of freedom, not {0}")]
    Freedom(f64),
}

/// The spread of a metric over a test's repetitions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub median: f64,
    /// Sample standard deviation (n - 1).
    pub sd: f64,
    /// `sd / mean` in percent, as OpenSearch Benchmark's `aggregate` reports it; none for a
    /// mean of zero.
    pub rsd_pct: Option<f64>,
    pub min: f64,
    pub max: f64,
    /// The 95 % confidence interval (Student's t) of the typical value, on [`Summary::scale`].
    pub ci_low: f64,
    pub ci_high: f64,
    pub scale: Scale,
    /// The relative standard deviation exceeds [`NOISY_RSD_PCT`].
    pub noisy: bool,
}

impl Summary {
    /// The summary of two or more values; a lone race has no spread.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let n = samples.len();
        if n < 2 {
            return None;
        }
        let (mean, var) = mean_var(samples.iter().copied());
        let sd = var.sqrt();
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        let t = summary_t(n - 1);
        let root_n = (n as f64).sqrt();
        // Rally's metrics are positive and skewed: an interval of the mean reaches below zero
        // for a noisy latency, one of the mean log never does, and it is the scale the
        // comparison tests on. A zero among the values has no log: its interval is the mean's,
        // cut at zero when no value is below it.
        let (ci_low, ci_high, scale) = if sorted[0] > 0.0 {
            let (mean_log, var_log) = mean_var(samples.iter().map(|v| v.ln()));
            let half = t * var_log.sqrt() / root_n;
            ((mean_log - half).exp(), (mean_log + half).exp(), Scale::Log)
        } else {
            let half = t * sd / root_n;
            let floor = if sorted[0] >= 0.0 {
                0.0
            } else {
                f64::NEG_INFINITY
            };
            ((mean - half).max(floor), mean + half, Scale::Linear)
        };
        let rsd_pct = (mean != 0.0).then(|| sd / mean.abs() * 100.0);
        Some(Summary {
            n,
            mean,
            median,
            sd,
            rsd_pct,
            min: sorted[0],
            max: sorted[n - 1],
            ci_low,
            ci_high,
            scale,
            noisy: rsd_pct.is_some_and(|r| r > NOISY_RSD_PCT),
        })
    }
}

/// What a [`Summary`]'s interval is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    /// Of the geometric mean, computed on the logs: every value was positive.
    Log,
    /// Of the mean, not below zero unless a value is.
    Linear,
}

/// The two-sided [`CONFIDENCE`] quantile of Student's t at `df` >= 1 degrees of freedom, from a
/// table for the repetition counts people race (a compare summarises every metric twice).
fn summary_t(df: usize) -> f64 {
    const TABULATED: usize = 128;
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let quantile = |df: usize| {
        t_quantile(0.5 + CONFIDENCE / 2.0, df as f64).expect("a level in (0, 1), df >= 1")
    };
    match TABLE
        .get_or_init(|| (1..=TABULATED).map(quantile).collect())
        .get(df.wrapping_sub(1))
    {
        Some(&t) => t,
        None => quantile(df),
    }
}

/// Mean and sample variance (n - 1) in one pass (Welford's, which stays accurate for values
/// far from zero with a small spread, like throughputs in the thousands).
fn mean_var(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut n, mut mean, mut m2) = (0.0, 0.0, 0.0);
    for x in values {
        n += 1.0;
        let d = x - mean;
        mean += d / n;
        m2 += d * (x - mean);
    }
    (mean, if n > 1.0 { m2 / (n - 1.0) } else { 0.0 })
}

fn student(df: f64) -> Result<StudentsT, StatsError> {
    if !(df > 0.0 && df.is_finite()) {
        return Err(StatsError::Freedom(df));
    }
    StudentsT::new(0.0, 1.0, df).map_err(|_| StatsError::Freedom(df))
}

/// The `p` quantile of Student's t with `df` degrees of freedom.
///
/// statrs' own quantile inverts the incomplete beta function by many evaluations of it, which
/// made a compare of 200,000 metrics take seconds; so, as R's `qt` does: Hill's approximation
/// (ACM Algorithm 396, 1970) as the start, then Newton's steps on statrs' survival function
/// until they no longer move the result. Below one degree of freedom (never reached: Welch's
/// freedom is at least the smaller side's n - 1) and should Newton not settle, statrs' quantile.
pub fn t_quantile(p: f64, df: f64) -> Result<f64, StatsError> {
    if !(p > 0.0 && p < 1.0) {
        return Err(StatsError::Level(p));
    }
    let t = student(df)?;
    if p == 0.5 {
        return Ok(0.0);
    }
    if df < 1.0 {
        return Ok(t.inverse_cdf(p));
    }
    let tail = p.min(1.0 - p);
    // The density up to its constant factor, computed once.
    let log_norm = ln_gamma((df + 1.0) / 2.0) - ln_gamma(df / 2.0) - 0.5 * (df * PI).ln();
    let pdf = |x: f64| (log_norm - (df + 1.0) / 2.0 * (x * x / df).ln_1p()).exp();
    let mut x = hill(2.0 * tail, df);
    let mut settled = false;
    for _ in 0..8 {
        if !(x.is_finite() && x > 0.0) {
            break;
        }
        let step = (t.sf(x) - tail) / pdf(x);
        x += step;
        if step.abs() <= 1e-11 * x.abs() {
            settled = true;
            break;
        }
    }
    if !(settled && x.is_finite() && x > 0.0) {
        return Ok(t.inverse_cdf(p));
    }
    Ok(if p > 0.5 { x } else { -x })
}

/// Hill's approximation of the upper quantile of Student's t for the two-sided probability
/// `two_sided`, `df` >= 1 (R's `qt`, the "usual case").
fn hill(two_sided: f64, df: f64) -> f64 {
    let p = two_sided;
    let a = 1.0 / (df - 0.5);
    let b = 48.0 / (a * a);
    let mut c = ((20700.0 * a / b - 98.0) * a - 16.0) * a + 96.36;
    let d = ((94.5 / (b + c) - 3.0) / b + 1.0) * (a * PI / 2.0).sqrt() * df;
    let mut y = (d * p).powf(2.0 / df);
    if (df < 2.1 && p > 0.5) || y > 0.05 + a {
        // The asymptotic inverse expansion about the normal.
        let x = Normal::standard().inverse_cdf(0.5 * p);
        y = x * x;
        if df < 5.0 {
            c += 0.3 * (df - 4.5) * (x + 0.6);
        }
        c += (((0.05 * d * x - 5.0) * x - 7.0) * x - 2.0) * x + b;
        y = (((((0.4 * y + 6.3) * y + 36.0) * y + 94.5) / c - y - 3.0) / b + 1.0) * x;
        y = (a * y * y).exp_m1();
    } else {
        y = ((1.0 / (((df + 6.0) / (df * y) - 0.089 * d - 0.822) * (df + 2.0) * 3.0)
            + 0.5 / (df + 4.0))
            * y
            - 1.0)
            * (df + 1.0)
            / (df + 2.0)
            + 1.0 / y;
    }
    (df * y).sqrt()
}

/// The two-sided p-value of a t statistic.
pub fn t_two_sided_p(t: f64, df: f64) -> Result<f64, StatsError> {
    Ok((2.0 * student(df)?.sf(t.abs())).min(1.0))
}

/// Welch's t on the logs of two sets of positive values: the contender relative to the
/// baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRatio {
    /// Mean log of the contender minus mean log of the baseline: the log of the ratio of their
    /// geometric means.
    pub log_diff: f64,
    /// Standard error of `log_diff`.
    pub se: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
    /// Two-sided, against "no change" (a ratio of 1), before any correction.
    pub p_value: f64,
    /// The pooled variance of the logs, for [`LogRatio::repetitions_needed`].
    pooled_var: f64,
    n: (usize, usize),
}

fn logs(values: &[f64]) -> Result<impl Iterator<Item = f64> + '_, StatsError> {
    if let Some(&bad) = values.iter().find(|v| !v.is_finite()) {
        return Err(StatsError::NotFinite(bad));
    }
    if let Some(&bad) = values.iter().find(|v| **v <= 0.0) {
        return Err(StatsError::NotPositive(bad));
    }
    Ok(values.iter().map(|v| v.ln()))
}

impl LogRatio {
    pub fn welch(baseline: &[f64], contender: &[f64]) -> Result<LogRatio, StatsError> {
        let (nb, nc) = (baseline.len(), contender.len());
        if nb < 2 || nc < 2 {
            return Err(StatsError::TooFew(nb, nc));
        }
        let (mb, vb) = mean_var(logs(baseline)?);
        let (mc, vc) = mean_var(logs(contender)?);
        let (nbf, ncf) = (nb as f64, nc as f64);
        let (wb, wc) = (vb / nbf, vc / ncf);
        let se = (wb + wc).sqrt();
        let log_diff = mc - mb;
        let pooled_var = (vb * (nbf - 1.0) + vc * (ncf - 1.0)) / (nbf + ncf - 2.0);
        // Identical repetitions on both sides (a metric Rally rounds, say) leave no spread:
        // the difference is then exact, and the freedom that of the pooled test.
        let (df, p_value) = if se == 0.0 {
            (nbf + ncf - 2.0, if log_diff == 0.0 { 1.0 } else { 0.0 })
        } else {
            let df = (wb + wc).powi(2) / (wb * wb / (nbf - 1.0) + wc * wc / (ncf - 1.0));
            (df, t_two_sided_p(log_diff / se, df)?)
        };
        Ok(LogRatio {
            log_diff,
            se,
            df,
            p_value,
            pooled_var,
            n: (nb, nc),
        })
    }

    /// The relative change, contender over baseline, in percent.
    pub fn change_pct(&self) -> f64 {
        self.log_diff.exp_m1() * 100.0
    }

    /// The two-sided interval of the relative change in percent at `level` (0.95 for 95 %).
    pub fn interval_pct(&self, level: f64) -> Result<(f64, f64), StatsError> {
        if !(level > 0.0 && level < 1.0) {
            return Err(StatsError::Level(level));
        }
        let half = if self.se == 0.0 {
            0.0
        } else {
            t_quantile(0.5 + level / 2.0, self.df)? * self.se
        };
        Ok((
            (self.log_diff - half).exp_m1() * 100.0,
            (self.log_diff + half).exp_m1() * 100.0,
        ))
    }

    /// How many repetitions per side would likely narrow the interval at `level` enough to
    /// settle the comparison against ±`min_effect_pct`.
    ///
    /// It assumes the point estimate and the spread stay as observed: with `n` per side the
    /// half-width is about `t(level, 2n - 2) · s · √(2/n)` (`s²` the pooled variance of the
    /// logs), and it must fall below the distance from the point estimate to the nearest
    /// min-effect boundary, whichever side of it the truth lies. Never fewer than one more
    /// than the larger side has: the runs at hand did not settle it.
    pub fn repetitions_needed(
        &self,
        min_effect_pct: f64,
        level: f64,
        quantiles: &mut Quantiles,
    ) -> Result<Needed, StatsError> {
        let bounds = [
            (min_effect_pct / 100.0).ln_1p(),
            (-min_effect_pct / 100.0).ln_1p(),
        ];
        let distance = bounds
            .iter()
            .map(|b| (self.log_diff - b).abs())
            .fold(f64::INFINITY, f64::min);
        let s = self.pooled_var.sqrt();
        let at_least = (self.n.0.max(self.n.1) as u32 + 1).max(2);
        let mut settles = |n: u32| -> Result<bool, StatsError> {
            let half = quantiles.two_sided(level, 2 * n - 2)? * s * (2.0 / f64::from(n)).sqrt();
            Ok(half < distance)
        };
        // t exceeds the normal quantile z at every df, so n >= 2 (z s / distance)^2: the search
        // starts there, and past the cap it need not start at all. From there the half-width
        // shrinks as n grows, and t is close to z, so the first n that settles is a few away.
        let z = Normal::standard().inverse_cdf(0.5 + level / 2.0);
        let normal = (2.0 * (z * s / distance).powi(2)).ceil();
        let mut n = if normal.is_finite() && normal <= f64::from(MAX_REPETITIONS) {
            (normal as u32).max(at_least)
        } else {
            return Ok(Needed::MoreThan(MAX_REPETITIONS));
        };
        while n <= MAX_REPETITIONS {
            if settles(n)? {
                return Ok(Needed::PerSide(n));
            }
            n += 1;
        }
        Ok(Needed::MoreThan(MAX_REPETITIONS))
    }
}

/// Two-sided quantiles of Student's t at whole degrees of freedom, each computed once: a
/// compare estimates the repetitions of many rows at the one level where Holm stopped.
#[derive(Debug, Default)]
pub struct Quantiles(std::collections::HashMap<(u64, u32), f64>);

impl Quantiles {
    /// The quantile whose two-sided interval has confidence `level`.
    pub fn two_sided(&mut self, level: f64, df: u32) -> Result<f64, StatsError> {
        let key = (level.to_bits(), df);
        if let Some(&t) = self.0.get(&key) {
            return Ok(t);
        }
        let t = t_quantile(0.5 + level / 2.0, f64::from(df))?;
        self.0.insert(key, t);
        Ok(t)
    }
}

/// Repetitions per side that would likely settle an inconclusive comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Needed {
    PerSide(u32),
    /// More than this many ([`MAX_REPETITIONS`]).
    MoreThan(u32),
}

impl std::fmt::Display for Needed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Needed::PerSide(n) => write!(f, "{n}"),
            Needed::MoreThan(n) => write!(f, "> {n}"),
        }
    }
}

/// Holm's step-down correction of `p_values` at family-wise error rate `alpha`, with the
/// confidence level of each comparison's interval that agrees with it.
///
/// Holm over Benjamini–Hochberg: a regression verdict fails a CI job, so the guarantee wanted
/// is that no verdict at all is a false alarm with more than 5 % chance (family-wise error),
/// not that 5 % of the alarms are false (BH's false discovery rate); Holm gives that, is never
/// less powerful than Bonferroni and, unlike Hochberg, needs no assumption about dependence
/// between the metrics of one race.
///
/// The rule: rank the p-values ascending (ties keep their order), 1 to m; Holm rejects ranks
/// 1 to k - 1, where k is the first rank with `p > alpha / (m - k + 1)`. The adjusted p of rank
/// i is `max over j <= i of min(1, (m - j + 1) p_j)`. The interval of rank i has confidence
/// `1 - alpha / (m - min(i, k) + 1)`: Bonferroni-like per rank up to where Holm stops, and the
/// level of the rank it stopped at after that. So an interval excludes "no change" exactly when
/// the adjusted p is at most `alpha`, and a verdict read off the interval agrees with it.
pub fn holm(p_values: &[f64], alpha: f64) -> Vec<Adjusted> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut out = vec![
        Adjusted {
            p_value: 1.0,
            level: CONFIDENCE,
        };
        m
    ];
    let mut running = 0.0_f64;
    let mut stopped: Option<usize> = None;
    for (rank0, &i) in order.iter().enumerate() {
        let rank = rank0 + 1;
        let factor = (m - rank + 1) as f64;
        running = running.max((factor * p_values[i]).min(1.0));
        if stopped.is_none() && p_values[i] > alpha / factor {
            stopped = Some(rank);
        }
        let level_rank = stopped.unwrap_or(rank);
        out[i] = Adjusted {
            p_value: running,
            level: 1.0 - alpha / (m - level_rank + 1) as f64,
        };
    }
    out
}

/// One comparison after Holm's correction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adjusted {
    pub p_value: f64,
    /// The confidence level of its interval.
    pub level: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    macro_rules! assert_close {
        ($a:expr, $b:expr, $tol:expr) => {
            let (a, b) = ($a, $b);
            assert!(close(a, b, $tol), "{a} is not {b} (±{})", $tol);
        };
    }

    /// References: scipy 1.17.1, `stats.t.ppf(0.975, 4)`, `stats.t.ppf(0.975, 1)`,
    /// `stats.t.ppf(0.995, 10)`, `stats.t.ppf(0.975, 2.5)`, `(0.025, 4)`, `(0.9999, 1.2)`,
    /// `(0.6, 3)`, `(0.99375, 37.7)`, `(0.975, 198)`, `stats.t.sf(2.0, 3)`; the first three
    /// agree with the printed t-table (2.776, 12.706, 3.169).
    #[test]
    fn student_t_matches_scipy_and_the_printed_table() {
        assert_close!(t_quantile(0.975, 4.0).unwrap(), 2.7764451051977934, 1e-9);
        assert_close!(t_quantile(0.975, 1.0).unwrap(), 12.706204736174694, 1e-8);
        assert_close!(t_quantile(0.995, 10.0).unwrap(), 3.16927267261695, 1e-9);
        assert_close!(t_quantile(0.975, 2.5).unwrap(), 3.5746548420036817, 1e-8);
        assert_close!(t_quantile(0.025, 4.0).unwrap(), -2.7764451051977934, 1e-9);
        assert_close!(t_quantile(0.9999, 1.2).unwrap(), 866.2006155333052, 1e-6);
        assert_close!(t_quantile(0.6, 3.0).unwrap(), 0.2766706623326898, 1e-12);
        assert_close!(t_quantile(0.99375, 37.7).unwrap(), 2.623235955861424, 1e-9);
        assert_close!(t_quantile(0.975, 198.0).unwrap(), 1.9720174778363146, 1e-9);
        assert_close!(
            t_two_sided_p(2.0, 3.0).unwrap(),
            2.0 * 0.06966298427942152,
            1e-12
        );
        assert_close!(
            t_two_sided_p(-2.0, 3.0).unwrap(),
            2.0 * 0.06966298427942152,
            1e-12
        );
        assert_eq!(t_quantile(1.0, 4.0), Err(StatsError::Level(1.0)));
        assert_eq!(t_quantile(0.5, 0.0), Err(StatsError::Freedom(0.0)));
        assert_eq!(t_quantile(f64::NAN, 3.0).map_err(|_| ()), Err(()));
    }

    /// Reference: scipy 1.17.1 on [10.1, 9.8, 10.4, 10.0, 9.7]: `x.std(ddof=1)`, and with
    /// `l = log(x)`, `exp(stats.t.interval(0.95, 4, loc=l.mean(), scale=stats.sem(l)))` =
    /// (9.66429, 10.34121).
    #[test]
    fn a_summary_matches_scipy() {
        let s = Summary::of(&[10.1, 9.8, 10.4, 10.0, 9.7]).unwrap();
        assert_eq!(s.n, 5);
        assert_close!(s.mean, 10.0, 1e-12);
        assert_close!(s.median, 10.0, 1e-12);
        assert_close!(s.sd, 0.2738612787525832, 1e-12);
        assert_close!(s.rsd_pct.unwrap(), 2.738612787525832, 1e-10);
        assert_close!(s.ci_low, 9.664287462933952, 1e-9);
        assert_close!(s.ci_high, 10.34120552906856, 1e-9);
        assert_eq!(s.scale, Scale::Log);
        assert_eq!((s.min, s.max), (9.7, 10.4));
        assert!(!s.noisy);
        // By hand: mean 2.5, median (2 + 3) / 2, sd of [1, 2, 3, 4] = √(5/3) = 1.29, rsd 51.6 %.
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_close!(s.median, 2.5, 1e-12);
        assert_close!(s.sd, (5.0_f64 / 3.0).sqrt(), 1e-12);
        assert!(s.noisy);
        assert_eq!(Summary::of(&[1.0]), None);
        let zeros = Summary::of(&[0.0, 0.0, 0.0]).unwrap();
        assert_eq!(
            (zeros.rsd_pct, zeros.noisy, zeros.ci_high),
            (None, false, 0.0)
        );
    }

    /// A noisy latency's interval of the mean reaches below zero (scipy 1.17.1 on
    /// [0.4, 2.9, 0.6]: (-2.15107, 4.75107)); on the logs it stays positive, as scipy gives
    /// it: `exp(stats.t.interval(0.95, 2, loc=l.mean(), scale=stats.sem(l)))` =
    /// (0.0658436, 11.9278).
    #[test]
    fn intervals_of_positive_values_stay_positive() {
        let s = Summary::of(&[0.4, 2.9, 0.6]).unwrap();
        assert_eq!(s.scale, Scale::Log);
        assert_close!(s.ci_low, 0.06584355254027141, 1e-9);
        assert_close!(s.ci_high, 11.927778662129809, 1e-7);
        // A zero has no log: the mean's interval (scipy: (-5.50442, 8.83775)), cut at zero,
        // which no value is below.
        let s = Summary::of(&[0.0, 0.0, 5.0]).unwrap();
        assert_eq!(s.scale, Scale::Linear);
        assert_eq!(s.ci_low, 0.0);
        assert_close!(s.ci_high, 8.837754549582437, 1e-9);
        let s = Summary::of(&[-1.0, 0.0, 1.0]).unwrap();
        assert!(s.ci_low < -1.0, "{s:?}");
    }

    /// Reference: scipy 1.17.1, `stats.ttest_ind(log(c), log(b), equal_var=False)` with
    /// b = [100, 104, 98, 101], c = [110, 113, 108]: t 5.03808, p 0.0048036, df 4.66960,
    /// `confidence_interval(0.95)` = (0.0435254, 0.1383163) in logs, and at 1 - 0.05/3.
    #[test]
    fn welch_on_logs_matches_scipy() {
        let r = LogRatio::welch(&[100.0, 104.0, 98.0, 101.0], &[110.0, 113.0, 108.0]).unwrap();
        assert_close!(r.log_diff / r.se, 5.038084952971408, 1e-9);
        assert_close!(r.p_value, 0.004803559488710558, 1e-10);
        assert_close!(r.df, 4.669595151882151, 1e-9);
        assert_close!(r.change_pct(), 9.518233681951639, 1e-9);
        let (lo, hi) = r.interval_pct(0.95).unwrap();
        assert_close!(lo, 4.448655713377114, 1e-7);
        assert_close!(hi, 14.833871502650853, 1e-7);
        let (lo, hi) = r.interval_pct(1.0 - 0.05 / 3.0).unwrap();
        assert_close!(lo, 2.5411608235571093, 1e-7);
        assert_close!(hi, 16.970038299577084, 1e-7);
        // Two per side is enough for an interval: scipy gives t 0.0855894, p 0.942491,
        // df 1.38331, (-27.5398 %, +39.1481 %) for [50, 52] against [49, 53.5].
        let r = LogRatio::welch(&[50.0, 52.0], &[49.0, 53.5]).unwrap();
        assert_close!(r.p_value, 0.9424910724989725, 1e-9);
        assert_close!(r.df, 1.3833134639686508, 1e-9);
        let (lo, hi) = r.interval_pct(0.95).unwrap();
        assert_close!(lo, -27.539830077193738, 1e-6);
        assert_close!(hi, 39.14806325231728, 1e-6);
    }

    #[test]
    fn welch_refuses_what_it_cannot_compute() {
        assert_eq!(
            LogRatio::welch(&[1.0], &[1.0, 2.0]),
            Err(StatsError::TooFew(1, 2))
        );
        assert_eq!(
            LogRatio::welch(&[1.0, 0.0], &[1.0, 2.0]),
            Err(StatsError::NotPositive(0.0))
        );
        assert!(matches!(
            LogRatio::welch(&[1.0, 2.0], &[1.0, f64::NAN]),
            Err(StatsError::NotFinite(v)) if v.is_nan()
        ));
        let r = LogRatio::welch(&[1.0, 2.0], &[1.0, 2.0]).unwrap();
        assert_eq!(r.interval_pct(1.0), Err(StatsError::Level(1.0)));
        // No spread at all: the change is exact.
        let r = LogRatio::welch(&[10.0, 10.0], &[11.0, 11.0]).unwrap();
        assert_eq!(r.p_value, 0.0);
        let (lo, hi) = r.interval_pct(0.95).unwrap();
        assert_close!(lo, 10.0, 1e-9);
        assert_close!(hi, 10.0, 1e-9);
    }

    /// By hand: p = [0.01, 0.04, 0.03, 0.2], m = 4. Ascending: 0.01 (×4 = 0.04, rejected at
    /// 0.05/4), 0.03 (×3 = 0.09 > 0.05: Holm stops at rank 2), 0.04 (×2 = 0.08, running max
    /// 0.09), 0.2 (×1). Levels: rank 1 at 1 - 0.05/4, every later rank at rank 2's 1 - 0.05/3.
    #[test]
    fn holm_by_hand() {
        let a = holm(&[0.01, 0.04, 0.03, 0.2], 0.05);
        let p: Vec<f64> = a.iter().map(|a| a.p_value).collect();
        for (got, want) in p.iter().zip([0.04, 0.09, 0.09, 0.2]) {
            assert_close!(*got, want, 1e-12);
        }
        let levels: Vec<f64> = a.iter().map(|a| a.level).collect();
        let (l4, l3) = (1.0 - 0.05 / 4.0, 1.0 - 0.05 / 3.0);
        for (got, want) in levels.iter().zip([l4, l3, l3, l3]) {
            assert_close!(*got, want, 1e-12);
        }
        // All rejected: Bonferroni-like per rank, the last at the plain level.
        let a = holm(&[0.001, 0.002], 0.05);
        assert_close!(a[0].level, 0.975, 1e-12);
        assert_close!(a[1].level, 0.95, 1e-12);
        assert_close!(a[1].p_value, 0.002, 1e-12);
        // Adjusted p is capped at 1.
        assert_eq!(holm(&[0.9, 0.8], 0.05)[0].p_value, 1.0);
        assert!(holm(&[], 0.05).is_empty());
    }

    /// The interval at each Holm level excludes a ratio of 1 exactly when the adjusted p is at
    /// most alpha.
    #[test]
    fn holm_intervals_agree_with_holm_p_values() {
        let sides: Vec<(Vec<f64>, Vec<f64>)> = (0..12)
            .map(|i| {
                let shift = 1.0 + 0.04 * i as f64;
                (
                    vec![100.0, 103.0, 98.0, 101.0],
                    vec![100.0 * shift, 104.0 * shift, 97.0 * shift],
                )
            })
            .collect();
        let ratios: Vec<LogRatio> = sides
            .iter()
            .map(|(b, c)| LogRatio::welch(b, c).unwrap())
            .collect();
        let p: Vec<f64> = ratios.iter().map(|r| r.p_value).collect();
        let adjusted = holm(&p, ALPHA);
        let mut rejected = 0;
        for (r, a) in ratios.iter().zip(&adjusted) {
            let (lo, hi) = r.interval_pct(a.level).unwrap();
            let excludes = lo > 0.0 || hi < 0.0;
            assert_eq!(excludes, a.p_value <= ALPHA, "{r:?} {a:?}");
            rejected += usize::from(excludes);
        }
        assert!(
            rejected > 0 && rejected < 12,
            "the case tests both outcomes"
        );
    }

    /// Reference: scipy 1.17.1, the smallest n with
    /// `stats.t.ppf(0.975, 2n - 2) * s * sqrt(2 / n) < delta` for [50, 52] against [49, 53.5]
    /// (s = 0.0481089 pooled over the logs, delta = 0.0446726 from the point estimate to
    /// log 1.05) is 11.
    #[test]
    fn repetitions_needed_matches_scipy() {
        let r = LogRatio::welch(&[50.0, 52.0], &[49.0, 53.5]).unwrap();
        let mut q = Quantiles::default();
        assert_eq!(
            r.repetitions_needed(5.0, 0.95, &mut q),
            Ok(Needed::PerSide(11))
        );
        // A stricter level needs more.
        let Ok(Needed::PerSide(n)) = r.repetitions_needed(5.0, 0.99, &mut q) else {
            panic!("estimable");
        };
        assert!(n > 11);
        // On the boundary itself, no number of repetitions settles it.
        let r = LogRatio::welch(&[100.0, 102.0], &[105.0, 107.1]).unwrap();
        assert_eq!(
            r.repetitions_needed(r.change_pct(), 0.95, &mut q),
            Ok(Needed::MoreThan(MAX_REPETITIONS))
        );
        assert_eq!(Needed::MoreThan(100).to_string(), "> 100");
    }
}
