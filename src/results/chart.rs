//! SVG charts of one test, drawn with plotters' SVG backend (no fonts or system libraries:
//! the browser lays out the text).
//!
//! Each task gets its own panel: tasks differ by orders of magnitude and in unit (`docs/s`
//! against `ops/s`), so one shared axis would flatten most of them.
//!
//! A side raced more than once is drawn as what it is: a dot per repetition, its mean as a
//! line and its 95 % interval ([`Summary`]) as a whisker; a bar would hide the spread the verdict
//! rests on.

use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::{RangedCoordf64, RangedCoordi32};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::metrics::{Metric, TaskMetrics, Value, format_number};
use super::stats::Summary;
use crate::history::render::change_size;
use crate::history::series::{Series, Verdict};

const PANEL: (u32, u32) = (300, 230);
const COLUMNS: usize = 3;
pub const BASELINE: RGBColor = RGBColor(150, 150, 150);
pub const CONTENDER: RGBColor = RGBColor(31, 119, 180);

/// A task of a test in the baseline (when comparing) and in the run shown.
pub struct TaskPair<'a> {
    pub task: &'a str,
    pub baseline: Option<&'a TaskMetrics>,
    pub contender: Option<&'a TaskMetrics>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot draw a chart: {0}")]
pub struct ChartError(String);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The series drawn: the baseline only when there is one.
fn series(with_baseline: bool) -> Vec<(&'static str, RGBColor, bool)> {
    let mut s = vec![];
    if with_baseline {
        s.push(("baseline", BASELINE, true));
    }
    s.push(("this run", CONTENDER, false));
    s
}

fn side<'a>(pair: &TaskPair<'a>, baseline: bool) -> Option<&'a TaskMetrics> {
    if baseline {
        pair.baseline
    } else {
        pair.contender
    }
}

/// Draws one panel per task into an SVG document.
fn panels(
    pairs: &[TaskPair<'_>],
    draw: impl Fn(&Area<'_>, &TaskPair<'_>) -> Result<(), String>,
) -> Result<String, ChartError> {
    let columns = pairs.len().clamp(1, COLUMNS);
    let rows = pairs.len().div_ceil(columns).max(1);
    let mut svg = String::new();
    {
        let size = (PANEL.0 * columns as u32, PANEL.1 * rows as u32);
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| ChartError(e.to_string()))?;
        for (area, pair) in root.split_evenly((rows, columns)).iter().zip(pairs) {
            draw(area, pair).map_err(ChartError)?;
        }
        root.present().map_err(|e| ChartError(e.to_string()))?;
    }
    Ok(svg)
}

fn axis_label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format_number(v)
    }
}

fn caption_font() -> TextStyle<'static> {
    ("sans-serif", 15).into_font().into()
}

fn note(area: &Area<'_>, text: &str) -> Result<(), String> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        text.to_owned(),
        (w as i32 / 2, h as i32 / 2),
        ("sans-serif", 13)
            .into_font()
            .color(&RGBColor(120, 120, 120))
            .pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(|e| e.to_string())
}

/// Median throughput per task: for the baseline and this run, a bar, or the repetitions.
pub fn throughput(pairs: &[TaskPair<'_>], with_baseline: bool) -> Result<String, ChartError> {
    panels(pairs, |area, pair| {
        let series = series(with_baseline);
        let values: Vec<Option<&Value>> = series
            .iter()
            .map(|(_, _, b)| side(pair, *b)?.get(Metric::Throughput))
            .collect();
        let unit = [pair.contender, pair.baseline]
            .iter()
            .find_map(|t| Some(t.as_ref()?.get(Metric::Throughput)?.unit.clone()))
            .unwrap_or_default();
        let max = values
            .iter()
            .flatten()
            .flat_map(|v| {
                let top = Summary::of(v.races()).map_or(v.value, |s| s.ci_high);
                v.races().iter().copied().chain([top])
            })
            .fold(0.0_f64, f64::max);
        let caption = match unit.as_str() {
            "" => pair.task.to_owned(),
            unit => format!("{} ({unit})", pair.task),
        };
        // One segment per side. Plotters cannot draw an axis of one segment, so a lone side
        // (no baseline) stands in the middle of three. Integer ranges include their end.
        let offset = i32::from(series.len() == 1);
        let last = series.len() as i32 - 1 + 2 * offset;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, caption_font())
            .margin(10)
            .x_label_area_size(22)
            .y_label_area_size(52)
            .build_cartesian_2d(
                (0..last).into_segmented(),
                0.0..if max > 0.0 { max * 1.2 } else { 1.0 },
            )
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => usize::try_from(i - offset)
                    .ok()
                    .and_then(|i| series.get(i))
                    .map_or(String::new(), |s| s.0.to_owned()),
                _ => String::new(),
            })
            .y_label_formatter(&|y| axis_label(*y))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, ((_, color, _), value)) in series.iter().zip(&values).enumerate() {
            let i = i as i32 + offset;
            let summary = value.and_then(|v| Summary::of(v.races()));
            let (label, top) = match (value, &summary) {
                (Some(v), Some(s)) => {
                    repetitions(&mut chart, i, v.races(), s, *color)?;
                    (
                        format!(
                            "{} [{}, {}] (n={})",
                            format_number(s.mean),
                            format_number(s.ci_low),
                            format_number(s.ci_high),
                            s.n
                        ),
                        s.ci_high.max(s.max),
                    )
                }
                (Some(v), None) => {
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(i), 0.0),
                            (SegmentValue::Exact(i + 1), v.value),
                        ],
                        color.filled(),
                    );
                    bar.set_margin(0, 0, 18, 18);
                    chart.draw_series([bar]).map_err(|e| e.to_string())?;
                    (format_number(v.value), v.value)
                }
                (None, _) => ("none".to_owned(), 0.0),
            };
            chart
                .draw_series([Text::new(
                    label,
                    (SegmentValue::CenterOf(i), top),
                    TextStyle::from(("sans-serif", 12).into_font())
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )])
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// The repetitions of one side at segment `i`: a dot per race, spread across the segment so
/// equal values stay apart, the mean as a line and its 95 % interval as a whisker, whole: on
/// the logs it never reaches below the axis.
fn repetitions<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<SegmentedCoord<RangedCoordi32>, RangedCoordf64>>,
    i: i32,
    races: &[f64],
    s: &Summary,
    color: RGBColor,
) -> Result<(), String> {
    let at = |y: f64| (SegmentValue::CenterOf(i), y);
    let spread = |k: usize| {
        if races.len() < 2 {
            0
        } else {
            (k as i32 * 36) / (races.len() as i32 - 1) - 18
        }
    };
    chart
        .draw_series(races.iter().enumerate().map(|(k, &y)| {
            EmptyElement::at(at(y)) + Circle::new((spread(k), 0), 3, color.mix(0.6).filled())
        }))
        .map_err(|e| e.to_string())?;
    let line = |y: f64, half: i32, width: u32| {
        EmptyElement::at(at(y))
            + PathElement::new(vec![(-half, 0), (half, 0)], color.stroke_width(width))
    };
    chart
        .draw_series([
            line(s.mean, 24, 3),
            line(s.ci_low, 7, 2),
            line(s.ci_high, 7, 2),
        ])
        .map_err(|e| e.to_string())?;
    chart
        .draw_series([PathElement::new(
            vec![at(s.ci_low), at(s.ci_high)],
            color.stroke_width(2),
        )])
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Latency percentiles per task: a line from p50 to p99 for the baseline and for this run,
/// through the means, with the repetitions at each percentile.
pub fn latency(pairs: &[TaskPair<'_>], with_baseline: bool) -> Result<String, ChartError> {
    panels(pairs, |area, pair| {
        let series = series(with_baseline);
        let points: Vec<Vec<(i32, f64)>> = series
            .iter()
            .map(|(_, _, b)| {
                Metric::LATENCIES
                    .iter()
                    .enumerate()
                    .filter_map(|(i, m)| Some((i as i32, side(pair, *b)?.get(*m)?.value)))
                    .collect()
            })
            .collect();
        let spread_max = series
            .iter()
            .filter_map(|(_, _, b)| side(pair, *b))
            .flat_map(|t| Metric::LATENCIES.iter().filter_map(|m| t.get(*m)))
            .filter_map(|v| {
                let s = Summary::of(v.races())?;
                Some(s.ci_high.max(s.max))
            })
            .fold(0.0_f64, f64::max);
        let max = points
            .iter()
            .flatten()
            .fold(spread_max, |a, &(_, v)| a.max(v));
        if points.iter().all(Vec::is_empty) {
            area.titled(pair.task, caption_font())
                .map_err(|e| e.to_string())?;
            return note(area, "no latency reported");
        }
        let unit = [pair.contender, pair.baseline]
            .iter()
            .find_map(|t| Some(t.as_ref()?.get(Metric::LatencyP50)?.unit.clone()))
            .unwrap_or_else(|| "ms".into());
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{} latency ({unit})", pair.task), caption_font())
            .margin(10)
            .x_label_area_size(22)
            .y_label_area_size(52)
            .build_cartesian_2d(
                // Integer ranges include their end: 0..2 is the three percentiles.
                (0..Metric::LATENCIES.len() as i32 - 1).into_segmented(),
                0.0..if max > 0.0 { max * 1.2 } else { 1.0 },
            )
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => ["p50", "p90", "p99"]
                    .get(*i as usize)
                    .map_or(String::new(), |s| (*s).to_owned()),
                _ => String::new(),
            })
            .y_label_formatter(&|y| axis_label(*y))
            .draw()
            .map_err(|e| e.to_string())?;
        for (_, color, baseline) in &series {
            let Some(task) = side(pair, *baseline) else {
                continue;
            };
            for (i, m) in Metric::LATENCIES.iter().enumerate() {
                if let Some(v) = task.get(*m)
                    && let Some(s) = Summary::of(v.races())
                {
                    repetitions(&mut chart, i as i32, v.races(), &s, *color)?;
                }
            }
        }
        for ((_, color, _), points) in series.iter().zip(&points) {
            let at = |(i, v): (i32, f64)| (SegmentValue::CenterOf(i), v);
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied().map(at),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new(at(*p), 4, color.filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

// Two side by side on a page 1200 pixels wide.
const TREND: (u32, u32) = (540, 280);
/// The HTML report's colours for a regression (`.bad`) and an improvement (`.good`).
pub const REGRESSION: RGBColor = RGBColor(198, 40, 40);
pub const IMPROVEMENT: RGBColor = RGBColor(26, 127, 55);
const LEVEL: RGBColor = RGBColor(120, 120, 120);

/// A series over its runs, oldest left: a line through each run's point (the median of its
/// repetitions), a dot per repetition, each level between changes as a dashed line at its
/// mean, and each change a vertical line between the last run before it and the first after,
/// labelled with its size and verdict in the verdict's colour.
pub fn trend(s: &Series) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, TREND).into_drawing_area();
        root.fill(&WHITE).map_err(|e| ChartError(e.to_string()))?;
        draw_trend(&root, s).map_err(ChartError)?;
        root.present().map_err(|e| ChartError(e.to_string()))?;
    }
    Ok(svg)
}

/// Where a run stands on the x axis: its start (UTC) when its id tells it, else its place;
/// nothing between runs.
fn run_label(s: &Series, x: f64) -> String {
    let i = x.round();
    if (x - i).abs() > 1e-9 || i < 0.0 {
        return String::new();
    }
    s.points
        .get(i as usize)
        .map_or(String::new(), |p| match p.time {
            Some(t) => t.strftime("%m-%d %H:%M").to_string(),
            None => format!("run {}", i as usize + 1),
        })
}

fn draw_trend(area: &Area<'_>, s: &Series) -> Result<(), String> {
    let caption = match s.unit.as_str() {
        "" => format!("{} · {}", s.task, s.metric.label()),
        unit => format!("{} · {}, {unit}", s.task, s.metric.label()),
    };
    let values = (s.points.iter()).flat_map(|p| p.races.iter().copied().chain([p.value]));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        area.titled(&caption, caption_font())
            .map_err(|e| e.to_string())?;
        return note(area, "no runs");
    }
    // The axis spans a tenth of the level at least, so that a percent of noise does not look
    // like a change; room above for the changes' labels.
    let level = hi.abs().max(lo.abs());
    let span = (hi - lo).max(level * 0.1);
    let span = if span > 0.0 { span } else { 1.0 };
    let pad = (span - (hi - lo)) / 2.0 + span * 0.1;
    let bottom = if lo >= 0.0 {
        (lo - pad).max(0.0)
    } else {
        lo - pad
    };
    let top = hi + pad + span * 0.25;
    let n = s.points.len();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, caption_font())
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.5..n as f64 - 0.5, bottom..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        // No more ticks than runs, so that they fall on runs (whole numbers), not between.
        .x_labels(n.clamp(1, 6))
        .x_label_formatter(&|x| run_label(s, *x))
        .x_desc("run start (UTC)")
        .y_label_formatter(&|y| axis_label(*y))
        .draw()
        .map_err(|e| e.to_string())?;
    let mut levels = vec![];
    if s.changes.is_empty() {
        levels.push((
            0..n,
            s.points.iter().map(|p| p.value).sum::<f64>() / n as f64,
        ));
    }
    for (i, c) in s.changes.iter().enumerate() {
        let (before, after) = s.levels(i);
        if i == 0 {
            levels.push((before, c.mean_before));
        }
        levels.push((after, c.mean_after));
    }
    for (runs, mean) in levels {
        chart
            .draw_series(DashedLineSeries::new(
                [
                    (runs.start as f64 - 0.3, mean),
                    (runs.end as f64 - 0.7, mean),
                ],
                6,
                4,
                LEVEL.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?;
    }
    chart
        .draw_series(LineSeries::new(
            (s.points.iter().enumerate()).map(|(i, p)| (i as f64, p.value)),
            CONTENDER.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(s.points.iter().enumerate().flat_map(|(i, p)| {
            (p.races.iter())
                .map(move |&y| Circle::new((i as f64, y), 3, CONTENDER.mix(0.5).filled()))
        }))
        .map_err(|e| e.to_string())?;
    for (i, c) in s.changes.iter().enumerate() {
        let color = match c.verdict {
            Verdict::Regression => REGRESSION,
            Verdict::Improvement => IMPROVEMENT,
        };
        let x = c.index as f64 - 0.5;
        chart
            .draw_series([PathElement::new(
                vec![(x, bottom), (x, top)],
                color.stroke_width(2),
            )])
            .map_err(|e| e.to_string())?;
        // Each label on its own line from the top, on the side with room for it.
        let right = c.index as f64 <= s.points.len() as f64 / 2.0;
        let (dx, h) = if right {
            (5, HPos::Left)
        } else {
            (-5, HPos::Right)
        };
        chart
            .draw_series([EmptyElement::at((x, top))
                + Text::new(
                    format!("{} {}", change_size(c), c.verdict.label()),
                    (dx, 4 + 16 * i as i32),
                    TextStyle::from(("sans-serif", 13).into_font())
                        .color(&color)
                        .pos(Pos::new(h, VPos::Top)),
                )])
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::results::metrics::Value;

    fn task(throughput: f64) -> TaskMetrics {
        TaskMetrics {
            task: "bulk".into(),
            duration_s: None,
            metrics: BTreeMap::from([(
                Metric::Throughput,
                Value::new(throughput, "docs/s".into()),
            )]),
        }
    }

    /// The filled bars of a colour, as `(x, width)`.
    fn bars(svg: &str, color: RGBColor) -> Vec<(u32, u32)> {
        let fill = format!("fill=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
        svg.split("<rect ")
            .filter(|r| r.split('>').next().unwrap().contains(&fill))
            .map(|r| {
                let attr = |name: &str| -> u32 {
                    let from = r.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                    r[from..].split('"').next().unwrap().parse().unwrap()
                };
                (attr("x"), attr("width"))
            })
            .collect()
    }

    /// The filled dots of a colour (drawn at 60 % opacity).
    fn dots(svg: &str, color: RGBColor) -> usize {
        let fill = format!("fill=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
        svg.split("<circle ")
            .skip(1)
            .filter(|c| c.split('>').next().unwrap().contains(&fill))
            .count()
    }

    #[test]
    fn repetitions_are_dots_with_their_interval_not_a_bar() {
        let mut base = task(900.0);
        let mut cont = task(1000.0);
        for (t, races) in [
            (&mut base, [880.0, 900.0, 920.0]),
            (&mut cont, [990.0, 1000.0, 1010.0]),
        ] {
            let v = t.metrics.get_mut(&Metric::Throughput).unwrap();
            v.samples = races.to_vec();
        }
        let svg = throughput(
            &[TaskPair {
                task: "bulk",
                baseline: Some(&base),
                contender: Some(&cont),
            }],
            true,
        )
        .unwrap();
        assert!(bars(&svg, CONTENDER).is_empty(), "{svg}");
        assert!(bars(&svg, BASELINE).is_empty(), "{svg}");
        assert_eq!(
            (dots(&svg, BASELINE), dots(&svg, CONTENDER)),
            (3, 3),
            "{svg}"
        );
        assert!(svg.contains("1000.00 [975.43, 1025.12] (n=3)"), "{svg}");
    }

    /// The `(x1, y1, x2, y2)` of the two-point lines of a colour: whiskers and their caps.
    fn lines(svg: &str, color: RGBColor) -> Vec<(i32, i32, i32, i32)> {
        let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
        svg.split("<polyline ")
            .skip(1)
            .filter(|l| l.split('>').next().unwrap().contains(&stroke))
            .filter_map(|l| {
                let from = l.find("points=\"").unwrap() + 8;
                let n: Vec<i32> = l[from..]
                    .split('"')
                    .next()
                    .unwrap()
                    .split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().unwrap())
                    .collect();
                (n.len() == 4).then(|| (n[0], n[1], n[2], n[3]))
            })
            .collect()
    }

    /// A noisy side whose interval of the mean reaches below zero: its interval on the logs
    /// does not, so the whisker is drawn whole, from cap to cap, above the zero line (it was
    /// cut off at zero). The label's interval is scipy 1.17.1's on the logs of the races,
    /// `exp(stats.t.interval(0.95, 2, loc=l.mean(), scale=stats.sem(l)))` = (2.5966, 109.586).
    #[test]
    fn a_noisy_sides_whisker_is_drawn_whole() {
        let mut cont = task(20.67);
        cont.metrics.get_mut(&Metric::Throughput).unwrap().samples = vec![10.0, 40.0, 12.0];
        let svg = throughput(
            &[TaskPair {
                task: "bulk",
                baseline: None,
                contender: Some(&cont),
            }],
            false,
        )
        .unwrap();
        let zero_line = svg
            .split("<line ")
            .skip(1)
            .filter(|l| l.contains("stroke=\"#000000\""))
            .map(|l| {
                let from = l.find(" y1=\"").unwrap() + 5;
                l[from..].split('"').next().unwrap().parse::<i32>().unwrap()
            })
            .max()
            .unwrap();
        let all = lines(&svg, CONTENDER);
        let whisker = all.iter().find(|l| l.0 == l.2).expect("a vertical whisker");
        let cap_at = |y: i32| all.iter().any(|l| l.0 != l.2 && l.1 == y && l.3 == y);
        let (bottom, top) = (whisker.1.max(whisker.3), whisker.1.min(whisker.3));
        assert!(cap_at(bottom) && cap_at(top), "{all:?}");
        assert!(
            bottom < zero_line,
            "{bottom} reaches the zero line {zero_line}: {svg}"
        );
        assert!(svg.contains("20.67 [2.60, 109.59] (n=3)"), "{svg}");
    }

    #[test]
    fn a_lone_bar_and_a_pair_of_bars_are_drawn() {
        let (base, cont) = (task(900.0), task(1000.0));
        let alone = throughput(
            &[TaskPair {
                task: "bulk",
                baseline: None,
                contender: Some(&cont),
            }],
            false,
        )
        .unwrap();
        assert_eq!(bars(&alone, CONTENDER).len(), 1);
        assert!(bars(&alone, CONTENDER)[0].1 > 10, "{alone}");
        assert!(bars(&alone, BASELINE).is_empty());
        let pair = throughput(
            &[TaskPair {
                task: "bulk",
                baseline: Some(&base),
                contender: Some(&cont),
            }],
            true,
        )
        .unwrap();
        let (b, c) = (bars(&pair, BASELINE), bars(&pair, CONTENDER));
        assert_eq!((b.len(), c.len()), (1, 1), "{pair}");
        assert!(
            b[0].0 + b[0].1 <= c[0].0,
            "baseline left of this run: {pair}"
        );
    }

    /// A series drops at night 7 of 12: a dot per repetition, the line through the nights, the
    /// two levels dashed, and the change a vertical line in the regression's colour between
    /// nights 6 and 7, labelled with its size.
    #[test]
    fn a_trend_marks_its_change_between_the_runs_around_it() {
        let h = crate::results::html::tests::history();
        let s = (h.series.iter())
            .find(|s| s.metric == Metric::Throughput)
            .unwrap();
        let [c] = s.changes.as_slice() else {
            panic!("{s:?}")
        };
        assert_eq!(c.index, 6);
        let svg = trend(s).unwrap();
        assert_eq!(dots(&svg, CONTENDER), 36, "{svg}");
        let marks: Vec<_> = (lines(&svg, REGRESSION).into_iter())
            .filter(|l| l.0 == l.2)
            .collect();
        let [(x, ..)] = marks.as_slice() else {
            panic!("one vertical line: {marks:?}")
        };
        // Halfway between the points of nights 6 and 7 (the line's 6th and 7th vertices).
        let line = svg
            .split("<polyline ")
            .skip(1)
            .find(|l| {
                l.split('>').next().unwrap().contains("stroke-width=\"2\"") && l.contains("#1F77B4")
            })
            .unwrap();
        let xs: Vec<i32> = line[line.find("points=\"").unwrap() + 8..]
            .split('"')
            .next()
            .unwrap()
            .split(' ')
            .filter(|p| !p.is_empty())
            .map(|p| p.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(xs.len(), 12);
        assert!(xs[5] < *x && *x < xs[6], "{x} between {xs:?}");
        assert!(
            (x - (xs[5] + xs[6]) / 2).abs() <= 1,
            "{x} halfway in {xs:?}"
        );
        assert!(svg.contains("-20.0 % regression"), "{svg}");
        // The two levels' means, dashed, each on its side of the change.
        let dashes = lines(&svg, LEVEL);
        let mut levels: Vec<i32> = dashes.iter().map(|l| l.1).collect();
        levels.dedup();
        let [before, after] = levels.as_slice() else {
            panic!("two levels: {dashes:?}")
        };
        assert!(before < after, "the level before is higher: {dashes:?}");
        for (x1, y, x2, _) in dashes {
            assert!(
                (y == *before) == (x2 < *x),
                "{x1}..{x2} at {y}, change at {x}"
            );
        }
        // The runs' start times under the axis.
        for night in ["11-01 02:00", "11-07 02:00", "11-11 02:00"] {
            assert!(svg.contains(night), "{night}: {svg}");
        }
    }

    /// A series with no point (none is built so, but the chart is handed plain data) says so
    /// rather than drawing an axis from infinity.
    #[test]
    fn a_trend_without_points_says_so() {
        let mut s = crate::results::html::tests::history().series.remove(0);
        s.points.clear();
        s.changes.clear();
        let svg = trend(&s).unwrap();
        assert!(svg.contains("no runs"), "{svg}");
    }
}
