//! The report's PNG figures (plotters): learning curves per setting, success rate against
//! a swept key beside IBC's points, and a grid of evaluation trajectories.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

/// Tableau's ten colours (matplotlib's default cycle): each dark enough to read on white,
/// where plotters' `Palette99` has a pale yellow third (255, 225, 25) and a pale cyan seventh.
const SERIES_COLOURS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The colour of the `i`-th series (repeating after ten).
fn series_colour(i: usize) -> RGBAColor {
    let (r, g, b) = SERIES_COLOURS[i % SERIES_COLOURS.len()];
    RGBColor(r, g, b).to_rgba()
}

/// One seed's curves: (step, value) points.
#[derive(Debug, Clone, Default)]
pub struct SeedCurves {
    pub label: String,
    pub loss: Vec<(f64, f64)>,
    pub success: Vec<(f64, f64)>,
}

/// A line of points with 95% intervals: (x, rate, low, high), and the published rates of
/// the same method: (x, rate).
#[derive(Debug, Clone)]
pub struct RateSeries {
    pub label: String,
    pub points: Vec<(f64, f64, f64, f64)>,
    pub published: Vec<(f64, f64)>,
}

/// One evaluation episode to draw: positions (first two dimensions), the goals, outcome.
#[derive(Debug, Clone)]
pub struct TrajectoryPanel {
    pub title: String,
    pub positions: Vec<(f64, f64)>,
    pub first_goal: (f64, f64),
    pub second_goal: (f64, f64),
    pub success: bool,
}

type Fallible = Result<(), Box<dyn std::error::Error>>;

fn wrap(path: &Path, draw: impl FnOnce() -> Fallible) -> Result<()> {
    crate::plot::fonts();
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

/// Mean and standard deviation over seeds at the steps every seed logged.
fn mean_band(series: &[&[(f64, f64)]]) -> Vec<(f64, f64, f64)> {
    let mut at: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for points in series {
        for &(x, y) in points.iter() {
            at.entry(x as i64).or_default().push(y);
        }
    }
    at.into_iter()
        .filter(|(_, ys)| ys.len() == series.len())
        .map(|(x, ys)| {
            let n = ys.len() as f64;
            let mean = ys.iter().sum::<f64>() / n;
            let var = ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / n;
            (x as f64, mean, var.sqrt())
        })
        .collect()
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        (0.0, 1.0)
    } else if (hi - lo).abs() < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

/// Loss (left) and success rate (right) against step: one thin line per seed, the mean
/// over seeds in black with a +-1 std band.
pub fn learning_curves(path: &Path, title: &str, seeds: &[SeedCurves]) -> Result<()> {
    wrap(path, || {
        let root = BitMapBackend::new(path, (1100, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 20))?;
        let (left, right) = root.split_horizontally(550);
        let max_step = range(
            seeds
                .iter()
                .flat_map(|s| s.loss.iter().chain(&s.success).map(|p| p.0)),
        )
        .1
        .max(1.0);
        for (area, name, pick, log_y) in [
            (&left, "loss", 0, true),
            (&right, "success rate (evaluations)", 1, false),
        ] {
            let pick = |s: &SeedCurves| -> Vec<(f64, f64)> {
                let points = if pick == 0 { &s.loss } else { &s.success };
                points
                    .iter()
                    .filter(|p| !log_y || p.1 > 0.0)
                    .map(|&(x, y)| (x, if log_y { y.log10() } else { y }))
                    .collect()
            };
            let lines: Vec<Vec<(f64, f64)>> = seeds.iter().map(pick).collect();
            let (y_lo, y_hi) = if log_y {
                range(lines.iter().flatten().map(|p| p.1))
            } else {
                (0.0, 1.0)
            };
            let mut chart = ChartBuilder::on(area)
                .caption(name, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(32)
                .y_label_area_size(52)
                .build_cartesian_2d(0f64..max_step, y_lo..y_hi + 1e-9)?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc(if log_y { "log10 loss" } else { "success" })
                .draw()?;
            let refs: Vec<&[(f64, f64)]> = lines.iter().map(|l| l.as_slice()).collect();
            let band = mean_band(&refs);
            if band.len() > 1 && seeds.len() > 1 {
                let mut polygon: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.1 + b.2)).collect();
                polygon.extend(band.iter().rev().map(|b| (b.0, b.1 - b.2)));
                chart.draw_series(std::iter::once(Polygon::new(
                    polygon,
                    BLACK.mix(0.12).filled(),
                )))?;
            }
            for (i, (line, seed)) in lines.iter().zip(seeds).enumerate() {
                let color = series_colour(i);
                chart
                    .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(1)))?
                    .label(seed.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
                if !log_y {
                    chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
                }
            }
            if seeds.len() > 1 && !band.is_empty() {
                chart
                    .draw_series(LineSeries::new(
                        band.iter().map(|b| (b.0, b.1)),
                        BLACK.stroke_width(2),
                    ))?
                    .label("mean over seeds")
                    .legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()?;
        }
        root.present()?;
        Ok(())
    })
}

/// Success rate with 95% intervals against `x_label`, one line per series, the published
/// points as stars in their series' colour; `log_x` for dimensions (2, 4, ..., 32). The
/// legend has a column of its own, right of the chart, so that it hides no point.
pub fn success_against(
    path: &Path,
    title: &str,
    x_label: &str,
    log_x: bool,
    series: &[RateSeries],
) -> Result<()> {
    wrap(path, || {
        let root = BitMapBackend::new(path, (1000, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let (plot, legend) = root.split_horizontally(700);
        let xs = series.iter().flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.0)
                .chain(s.published.iter().map(|p| p.0))
        });
        let (lo, hi) = range(xs);
        let mut builder = ChartBuilder::on(&plot);
        builder
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48);
        if log_x && lo > 0.0 {
            let chart = builder
                .build_cartesian_2d((lo / 1.25..hi * 1.25).log_scale().base(2.0), 0f64..1.05f64)?;
            draw_rates(chart, x_label, series)
        } else {
            let pad = (hi - lo).max(1.0) * 0.08;
            let chart = builder.build_cartesian_2d(lo - pad..hi + pad, 0f64..1.05f64)?;
            draw_rates(chart, x_label, series)
        }?;
        draw_rate_legend(&legend, series)?;
        root.present()?;
        Ok(())
    })
}

/// An axis value to at most two decimals, without trailing zeros: `2`, `2.4`, `0.25`.
fn axis_number(x: &f64) -> String {
    let text = format!("{x:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `text` in lines of at most `width` characters, broken at spaces (a longer word stays
/// whole on its own line).
fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

fn draw_rates<'a, X>(
    mut chart: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, RangedCoordf64>>,
    x_label: &str,
    series: &[RateSeries],
) -> Fallible
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x_label)
        .x_label_formatter(&axis_number)
        .y_desc("success rate")
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = series_colour(i);
        chart.draw_series(LineSeries::new(
            s.points.iter().map(|p| (p.0, p.1)),
            color.stroke_width(2),
        ))?;
        // The bar's own marker at the rate itself: a Wilson interval is not centred on it
        // (at 0 of 50 the interval's middle is 3.6%, a point where no result is).
        chart.draw_series(
            s.points
                .iter()
                .map(|&(x, y, l, h)| ErrorBar::new_vertical(x, l, y, h, color.stroke_width(2), 8)),
        )?;
        chart.draw_series(
            s.points
                .iter()
                .map(|&(x, y, _, _)| Circle::new((x, y), 4, color.filled())),
        )?;
        chart.draw_series(s.published.iter().map(|&(x, y)| {
            EmptyElement::at((x, y))
                + Polygon::new(star(), color.filled())
                + PathElement::new(closed(star()), BLACK.stroke_width(1))
        }))?;
    }
    Ok(())
}

/// The legend of [`success_against`] in its own area: a line per series, then the star's
/// meaning where any series has published points.
fn draw_rate_legend(area: &DrawingArea<BitMapBackend, Shift>, series: &[RateSeries]) -> Fallible {
    let font = ("sans-serif", 14).into_font();
    // About 7 px a character: labels wrap within the column's 300 px.
    const LINE: i32 = 17;
    let mut y = 60;
    for (i, s) in series.iter().enumerate() {
        let color = series_colour(i);
        area.draw(&PathElement::new(
            vec![(8, y), (36, y)],
            color.stroke_width(2),
        ))?;
        area.draw(&Circle::new((22, y), 4, color.filled()))?;
        for line in wrap_words(&s.label, 34) {
            area.draw(&Text::new(line, (44, y - 7), font.clone()))?;
            y += LINE;
        }
        y += 7;
    }
    if series.iter().any(|s| !s.published.is_empty()) {
        y += 8;
        area.draw(&(EmptyElement::at((22, y)) + Polygon::new(star(), BLACK.mix(0.6).filled())))?;
        area.draw(&Text::new(
            "IBC's published rate",
            (44, y - 7),
            font.clone(),
        ))?;
        area.draw(&Text::new("(same colour, same method)", (44, y + 9), font))?;
    }
    Ok(())
}

/// A polygon's outline as a closed path.
fn closed(mut points: Vec<(i32, i32)>) -> Vec<(i32, i32)> {
    if let Some(&first) = points.first() {
        points.push(first);
    }
    points
}

/// A five-pointed star in pixel offsets.
fn star() -> Vec<(i32, i32)> {
    (0..10)
        .map(|k| {
            let r = if k % 2 == 0 { 8.0 } else { 3.5 };
            let a = std::f64::consts::PI * (k as f64 / 5.0 - 0.5);
            ((r * a.cos()) as i32, (r * a.sin()) as i32)
        })
        .collect()
}

/// Episodes in a grid, four to a row: path, both goals, a green (success) or red
/// (failure) frame.
pub fn trajectory_grid(
    path: &Path,
    title: &str,
    panels: &[TrajectoryPanel],
    radius: f64,
) -> Result<()> {
    wrap(path, || {
        let columns = 4;
        let rows = panels.len().div_ceil(columns).max(1);
        let root = BitMapBackend::new(path, (columns as u32 * 240, rows as u32 * 240 + 40))
            .into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 20))?;
        let cells = root.split_evenly((rows, columns));
        for (cell, panel) in cells.iter().zip(panels) {
            let frame = if panel.success {
                RGBColor(30, 150, 60)
            } else {
                RGBColor(210, 40, 40)
            };
            cell.draw(&Rectangle::new([(2, 2), (236, 236)], frame.stroke_width(3)))?;
            let mut chart = ChartBuilder::on(cell)
                .caption(&panel.title, ("sans-serif", 13))
                .margin(8)
                .build_cartesian_2d(-0.05f64..1.05f64, -0.05f64..1.05f64)?;
            for (goal, color) in [
                (panel.first_goal, RGBColor(34, 160, 60)),
                (panel.second_goal, RGBColor(40, 90, 220)),
            ] {
                let circle: Vec<(f64, f64)> = (0..=32)
                    .map(|k| {
                        let a = k as f64 / 32.0 * std::f64::consts::TAU;
                        (goal.0 + radius * a.cos(), goal.1 + radius * a.sin())
                    })
                    .collect();
                chart.draw_series(std::iter::once(Polygon::new(
                    circle,
                    color.mix(0.35).filled(),
                )))?;
            }
            chart.draw_series(LineSeries::new(
                panel.positions.iter().copied(),
                BLACK.stroke_width(2),
            ))?;
            if let Some(&start) = panel.positions.first() {
                chart.draw_series(std::iter::once(TriangleMarker::new(start, 5, RED.filled())))?;
            }
        }
        root.present()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_numbers_drop_trailing_zeros() {
        let shown: Vec<String> = [2.0, 2.4, 0.25, 32.0, 2.8284]
            .iter()
            .map(axis_number)
            .collect();
        assert_eq!(shown, ["2", "2.4", "0.25", "32", "2.83"]);
    }

    #[test]
    fn legend_labels_wrap_at_spaces_and_keep_every_word() {
        let label = "ebm (dfo negatives (16 of 64 refined), DFO inference)";
        let lines = wrap_words(label, 20);
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
        assert_eq!(lines.join(" "), label);
        assert_eq!(
            wrap_words("a-very-long-single-word", 5),
            ["a-very-long-single-word"]
        );
        assert_eq!(wrap_words("mse", 34), ["mse"]);
    }

    #[test]
    fn long_legend_labels_wrap_within_the_figure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rates.png");
        let line = |label: &str, rates: [f64; 3]| RateSeries {
            label: label.to_owned(),
            points: [2.0, 4.0, 8.0]
                .iter()
                .zip(rates)
                .map(|(&x, r)| (x, r, (r - 0.1).max(0.0), (r + 0.1).min(1.0)))
                .collect(),
            published: vec![(2.0, 0.96)],
        };
        let series = [
            line(
                "ebm (dfo negatives (16 of 64 refined), DFO inference)",
                [0.9, 0.7, 0.2],
            ),
            line("mse", [0.02, 0.0, 0.0]),
        ];
        success_against(&path, "t: success against N", "N", true, &series).unwrap();
        let image = image::open(&path).unwrap().to_rgb8();
        let (width, height) = image.dimensions();
        let inked = |xs: std::ops::Range<u32>| {
            xs.flat_map(|x| (0..height).map(move |y| (x, y)))
                .filter(|&(x, y)| image.get_pixel(x, y).0 != [255, 255, 255])
                .count()
        };
        // The legend is drawn in its column, and no label runs to the image's edge (the
        // long one, unwrapped, would reach past it).
        assert!(inked(720..width - 16) > 500, "no legend drawn");
        assert_eq!(inked(width - 16..width), 0, "a label runs off the image");
    }
}
