//! PNG plots of metrics.jsonl: a reward curve (reward/mean, raw and smoothed, with accuracy on
//! a second axis when logged) and one panel per metric. Drawn with plotters into an in-memory
//! RGB buffer and encoded with `image`; text uses a TTF compiled into the binary, so plots
//! render the same offline, in containers without fonts, and on CI.

use crate::{read_metrics, MetricRow, MetricsError};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Size of the reward curve image; other panels are PANEL_W × PANEL_H.
pub(crate) const REWARD_W: u32 = 1200;
pub(crate) const REWARD_H: u32 = 700;
pub(crate) const PANEL_W: u32 = 900;
pub(crate) const PANEL_H: u32 = 540;

/// Smoothed lines are drawn in these solid colors (tests look for them to tell a curve was drawn).
pub(crate) const MAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
pub(crate) const ACC_COLOR: RGBColor = RGBColor(230, 110, 0);
pub(crate) const VAL_COLOR: RGBColor = RGBColor(44, 160, 44);
/// The validation accuracy metric the trainers log (drawn into the reward curve when present).
const VAL_ACCURACY: &str = "val/accuracy";

/// TensorBoard's default smoothing is 0.6; reward curves from GRPO are noisier than most
/// (a handful of groups per step), so the reward curve smooths harder.
const REWARD_SMOOTHING: f64 = 0.8;
const PANEL_SMOOTHING: f64 = 0.6;

const FONT: &str = "sans-serif";

/// plotters' ab_glyph backend only knows fonts registered by name; register the embedded one
/// under the family names plotters' built-in styles ask for.
fn ensure_font() -> Result<(), DrawError> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let loaded = *LOADED.get_or_init(|| {
        ["sans-serif", "serif", "monospace"].into_iter().all(|family| {
            plotters::style::register_font(family, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
                .is_ok()
        })
    });
    if loaded {
        Ok(())
    } else {
        Err("the embedded Ubuntu font did not load".into())
    }
}

/// Why a chart could not be drawn: plotters' drawing and backend errors, image encoding.
pub type DrawError = Box<dyn std::error::Error + Send + Sync>;

/// Draws each metric (or a chosen list) against step into PNG files under out_dir and returns
/// the written paths. The first is `reward_curve.png` whenever `reward/mean` was logged
/// (whatever `names` says: it is the plot people look for): the raw reward, its smoothed line
/// and, when an accuracy metric exists (`reward/accuracy`, `accuracy`, or any name whose
/// last segment starts with `acc`), the accuracy on a right-hand axis. Then one
/// `<metric>.png` per metric, `/` in names turned into `_`.
pub fn plot_metrics(
    metrics_jsonl: &Path,
    out_dir: &Path,
    names: Option<&[String]>,
) -> Result<Vec<PathBuf>, MetricsError> {
    let rows = read_metrics(metrics_jsonl)?;
    let plot_err = |source: DrawError| MetricsError::Plot {
        path: metrics_jsonl.to_path_buf(),
        source,
    };
    if rows.is_empty() {
        return Err(MetricsError::NoRows {
            path: metrics_jsonl.to_path_buf(),
        });
    }
    ensure_font().map_err(plot_err)?;
    let present: BTreeSet<&str> = rows
        .iter()
        .flat_map(|(_, m)| m.keys().map(String::as_str))
        .collect();
    let chosen: Vec<&str> = match names {
        Some(ns) => {
            let mut v = Vec::new();
            for n in ns {
                if !present.contains(n.as_str()) {
                    let present = present.iter().copied().collect::<Vec<_>>().join(", ");
                    return Err(MetricsError::UnknownMetric {
                        path: metrics_jsonl.to_path_buf(),
                        name: n.clone(),
                        present,
                    });
                }
                v.push(n.as_str());
            }
            v
        }
        None => present.iter().copied().collect(),
    };
    std::fs::create_dir_all(out_dir).map_err(crate::io_err(out_dir))?;

    let mut written = Vec::new();
    if present.contains("reward/mean") {
        let acc_name = accuracy_name(&present);
        let path = out_dir.join("reward_curve.png");
        let reward = series(&rows, "reward/mean");
        let acc = acc_name.map(|n| (n, series(&rows, n)));
        // Held-out accuracy (logged every train.val_every steps) on the same axis as the
        // training accuracy: the rollouts' accuracy is sampled, this one is greedy.
        let val = present
            .contains(VAL_ACCURACY)
            .then(|| series(&rows, VAL_ACCURACY));
        render(&path, REWARD_W, REWARD_H, |root| {
            let title = format!(
                "Reward curve ({} step{})",
                rows.len(),
                if rows.len() == 1 { "" } else { "s" }
            );
            draw_panel(
                root,
                &title,
                ("reward/mean", &reward),
                acc.as_ref().map(|(n, s)| (*n, s.as_slice())),
                val.as_deref(),
                REWARD_SMOOTHING,
                30,
            )
        })
        .map_err(|source| MetricsError::Plot {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    let mut used = BTreeSet::new();
    for name in chosen {
        let mut stem = file_stem(name);
        // Two names can sanitize alike ("a/b" and "a_b"); never overwrite an earlier plot.
        let mut k = 1;
        while !used.insert(stem.clone()) {
            k += 1;
            stem = format!("{}_{k}", file_stem(name));
        }
        let path = out_dir.join(format!("{stem}.png"));
        let pts = series(&rows, name);
        render(&path, PANEL_W, PANEL_H, |root| {
            draw_panel(root, name, (name, &pts), None, None, PANEL_SMOOTHING, 24)
        })
        .map_err(|source| MetricsError::Plot {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

fn accuracy_name<'a>(present: &BTreeSet<&'a str>) -> Option<&'a str> {
    for exact in ["reward/accuracy", "accuracy"] {
        if let Some(n) = present.get(exact) {
            return Some(n);
        }
    }
    present
        .iter()
        .copied()
        .find(|n| n.rsplit('/').next().is_some_and(|last| last.starts_with("acc")))
}

fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("metric{s}")
    } else {
        s
    }
}

/// (step, value) for every row that has the metric; NaN where it was logged as null.
fn series(rows: &[MetricRow], name: &str) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|(s, m)| m.get(name).map(|&v| (*s as f64, v)))
        .collect()
}

/// TensorBoard's debiased exponential moving average: without the debiasing the line would
/// start near zero instead of at the first value. Non-finite points are skipped.
pub(crate) fn smooth(points: &[(f64, f64)], weight: f64) -> Vec<(f64, f64)> {
    let mut last = 0.0;
    let mut n = 0;
    let mut out = Vec::with_capacity(points.len());
    for &(x, y) in points.iter().filter(|p| p.1.is_finite()) {
        last = last * weight + (1.0 - weight) * y;
        n += 1;
        out.push((x, last / (1.0 - weight.powi(n))));
    }
    out
}

/// Runs of finite points: a NaN breaks the line instead of dragging it to an axis.
fn segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut segs = vec![Vec::new()];
    for &p in points {
        if p.1.is_finite() {
            segs.last_mut().unwrap().push(p);
        } else if !segs.last().unwrap().is_empty() {
            segs.push(Vec::new());
        }
    }
    segs.retain(|s| !s.is_empty());
    segs
}

/// Axis range over finite values with 5% padding; a flat or empty series still gets a range.
fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = vals
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let pad = if lo.abs() > 1e-12 { lo.abs() * 0.1 } else { 1.0 };
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

fn render(
    path: &Path,
    w: u32,
    h: u32,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), DrawError>,
) -> Result<(), DrawError> {
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or("bitmap buffer has the wrong size")?;
    Ok(img.save(path)?)
}

/// One chart: `main` raw (faint) and smoothed (solid), plus optionally a second metric on a
/// right-hand axis with its own scale (accuracy is a rate in [0, 1], reward is not), and the
/// validation accuracy (`val`, unsmoothed, with markers: it is logged every few steps) on that
/// same right-hand axis.
#[allow(clippy::too_many_arguments)]
fn draw_panel(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    main: (&str, &[(f64, f64)]),
    second: Option<(&str, &[(f64, f64)])>,
    val: Option<&[(f64, f64)]>,
    weight: f64,
    title_size: u32,
) -> Result<(), DrawError> {
    let (main_name, main_pts) = main;
    let all_x = main_pts
        .iter()
        .chain(second.iter().flat_map(|s| s.1.iter()))
        .map(|p| p.0);
    let (mut x0, mut x1) = all_x.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    } else if x1 - x0 < 1.0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let (y0, y1) = range(main_pts.iter().map(|p| p.1));
    let (s0, s1) = second.map_or((0.0, 1.0), |(_, pts)| {
        range(pts.iter().chain(val.unwrap_or_default()).map(|p| p.1))
    });
    let no_data = main_pts.iter().all(|p| !p.1.is_finite());
    let caption = if no_data {
        format!("{title} (no finite values)")
    } else {
        title.to_string()
    };

    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, title_size))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(95)
        .right_y_label_area_size(if second.is_some() { 95 } else { 0 })
        .build_cartesian_2d(x0..x1, y0..y1)?
        .set_secondary_coord(x0..x1, s0..s1);
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(main_name)
        // Steps are integers: on a short run, ask for no more ticks than steps so plotters does
        // not pick fractional ones (which would print as "0 0 1 1").
        .x_labels(((x1 - x0).round() as usize + 1).clamp(2, 10))
        .x_label_formatter(&|x| if (x - x.round()).abs() < 1e-6 { format!("{x:.0}") } else { format!("{x:.1}") })
        .y_label_formatter(&|y| fmt_value(*y))
        .label_style((FONT, 17))
        .axis_desc_style((FONT, 20))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        ?;

    let faint = MAIN_COLOR.mix(0.3).stroke_width(1);
    for (i, seg) in segments(main_pts).into_iter().enumerate() {
        let s = chart.draw_series(LineSeries::new(seg, faint))?;
        if i == 0 {
            s.label(format!("{main_name} (raw)"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], faint));
        }
    }
    let smoothed = smooth(main_pts, weight);
    if smoothed.len() == 1 {
        chart.draw_series(std::iter::once(Circle::new(smoothed[0], 5, MAIN_COLOR.filled())))?;
    }
    chart
        .draw_series(LineSeries::new(smoothed, MAIN_COLOR.stroke_width(3)))?
        .label(format!("{main_name} (smoothed {weight})"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], MAIN_COLOR.stroke_width(3)));

    if let Some((name, pts)) = second {
        chart
            .configure_secondary_axes()
            .y_desc(name)
            .y_label_formatter(&|y| fmt_value(*y))
            .label_style((FONT, 17))
            .axis_desc_style((FONT, 20))
            .draw()?;
        let faint = ACC_COLOR.mix(0.3).stroke_width(1);
        for seg in segments(pts) {
            chart.draw_secondary_series(LineSeries::new(seg, faint))?;
        }
        let sm = smooth(pts, weight);
        if sm.len() == 1 {
            chart.draw_secondary_series(std::iter::once(Circle::new(sm[0], 5, ACC_COLOR.filled())))?;
        }
        chart
            .draw_secondary_series(LineSeries::new(sm, ACC_COLOR.stroke_width(3)))?
            .label(format!("{name} (smoothed, right axis)"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], ACC_COLOR.stroke_width(3)));
        if let Some(vpts) = val {
            let finite: Vec<(f64, f64)> = vpts.iter().copied().filter(|p| p.1.is_finite()).collect();
            chart.draw_secondary_series(finite.iter().map(|&p| Circle::new(p, 5, VAL_COLOR.filled())))?;
            chart
                .draw_secondary_series(LineSeries::new(finite, VAL_COLOR.stroke_width(2)))?
                .label(format!("{VAL_ACCURACY} (held-out, greedy; right axis)"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], VAL_COLOR.stroke_width(2)));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font((FONT, 17))
        .draw()?;
    Ok(())
}

/// Tick labels: short and without float noise (0.30000000000000004), scientific when tiny/huge.
fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}
