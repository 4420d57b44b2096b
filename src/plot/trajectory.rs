//! One PNG per episode: the agent's path, the start, both goals with their success
//! radius, and the commanded setpoints (like the seed's `pic/` folder), from the task's
//! sketch of the episode. Episodes with more than two dimensions are drawn in their first
//! two; a 1-D episode against time.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::task::EpisodeSketch;

/// What to draw for one episode.
#[derive(Debug, Clone, Copy)]
pub struct EpisodePlot<'a> {
    pub title: &'a str,
    pub sketch: &'a EpisodeSketch,
    pub success: Option<bool>,
}

const FIRST_GOAL: RGBColor = RGBColor(34, 160, 60);
const SECOND_GOAL: RGBColor = RGBColor(40, 90, 220);
const PATH: RGBColor = RGBColor(20, 20, 20);
const SETPOINT: RGBColor = RGBColor(230, 120, 20);

/// The point of `v` drawn on the page: dimensions 0 and 1 (a 1-D episode against time).
fn xy(v: &[f32], t: usize, steps: usize) -> (f64, f64) {
    match v {
        [x] => (t as f64 / steps.max(1) as f64, *x as f64),
        [x, y, ..] => (*x as f64, *y as f64),
        [] => (0.0, 0.0),
    }
}

fn circle(center: (f64, f64), radius: f64) -> Vec<(f64, f64)> {
    (0..=64)
        .map(|k| {
            let a = k as f64 / 64.0 * std::f64::consts::TAU;
            (center.0 + radius * a.cos(), center.1 + radius * a.sin())
        })
        .collect()
}

/// Writes the picture of one episode to `path` (PNG, 560 x 690; the legend sits below the unit square).
pub fn plot_episode(path: &Path, episode: &EpisodePlot) -> Result<()> {
    let sketch = episode.sketch;
    super::fonts();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (560, 690)).into_drawing_area();
        root.fill(&WHITE)?;
        let n_dim = sketch.path.first().map_or(0, Vec::len);
        let steps = sketch.path.len().saturating_sub(1);
        let status = match episode.success {
            Some(true) => " - success",
            Some(false) => " - failure",
            None => "",
        };
        let caption = format!("{}{status}", episode.title);
        let (x_label, y_label) = match n_dim {
            1 => ("time (fraction of episode)", "x0"),
            2 => ("x0", "x1"),
            _ => ("x0 (first 2 of the dimensions)", "x1"),
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(-0.1f64..1.1f64, -0.42f64..1.1f64)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;

        let radius = sketch.goal_radius as f64;
        let styles = [(FIRST_GOAL, "first goal"), (SECOND_GOAL, "second goal")];
        for (goal, (color, label)) in sketch.goals.iter().zip(styles) {
            let center = if n_dim == 1 {
                (0.5, goal[0] as f64)
            } else {
                xy(goal, 0, 1)
            };
            chart
                .draw_series(std::iter::once(Polygon::new(
                    circle(center, radius),
                    color.mix(0.25).filled(),
                )))?
                .label(label)
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, color.filled()));
            chart.draw_series(LineSeries::new(circle(center, radius), color))?;
        }
        let setpoints: Vec<_> = sketch
            .setpoints
            .iter()
            .enumerate()
            .map(|(t, a)| xy(a, t + 1, steps))
            .collect();
        chart
            .draw_series(
                setpoints
                    .iter()
                    .map(|&p| Cross::new(p, 3, SETPOINT.stroke_width(1))),
            )?
            .label("setpoints")
            .legend(|(x, y)| Cross::new((x + 8, y), 3, SETPOINT));
        let path_points: Vec<_> = sketch
            .path
            .iter()
            .enumerate()
            .map(|(t, p)| xy(p, t, steps))
            .collect();
        chart
            .draw_series(LineSeries::new(
                path_points.iter().copied(),
                PATH.stroke_width(2),
            ))?
            .label("path")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], PATH.stroke_width(2)));
        chart.draw_series(
            path_points
                .iter()
                .map(|&p| Circle::new(p, 2, PATH.filled())),
        )?;
        if let Some(&start) = path_points.first() {
            chart
                .draw_series(std::iter::once(TriangleMarker::new(start, 7, RED.filled())))?
                .label("start")
                .legend(|(x, y)| TriangleMarker::new((x + 8, y), 5, RED.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}
