//! `metrics.png`: what a training run did, readable without the CSVs: the loss per step (raw and
//! smoothed), held-out recall@1/5 both ways per epoch (and zero-shot accuracy with a labels
//! file), and the learning rate, on labelled axes with legends under a title naming the run.

use crate::draw::{Panel, Series, figure};
use plotters::style::RGBColor;
use std::path::Path;
use zoo_nn::{NnError, Result};

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);
const PURPLE: RGBColor = RGBColor(148, 103, 189);
const GREY: RGBColor = RGBColor(90, 90, 90);

/// The figure's size in pixels.
pub const SIZE: (u32, u32) = (1200, 800);

/// Held-out recall after one epoch (metrics.csv's row).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    /// The epoch (1-based).
    pub epoch: f64,
    /// Image-to-text recall@1, @5, @10.
    pub i2t: [f64; 3],
    /// Text-to-image recall@1, @5, @10.
    pub t2i: [f64; 3],
}

/// What the figure shows.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// The title: the run (arch, preset, data size).
    pub title: String,
    /// The loss of every step.
    pub losses: Vec<f64>,
    /// The learning rate of every step (may be empty).
    pub lrs: Vec<f64>,
    /// Held-out recall per epoch.
    pub epochs: Vec<EpochMetrics>,
    /// Zero-shot accuracy after the last epoch.
    pub zero_shot: Option<f64>,
}

fn csv_rows(path: &Path) -> Result<Vec<Vec<f64>>> {
    let text = std::fs::read_to_string(path).map_err(|e| NnError::io(path, e))?;
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            l.split(',')
                .map(|v| {
                    v.trim().parse::<f64>().map_err(|_| NnError::Load {
                        path: path.to_path_buf(),
                        reason: format!("line {}: '{v}' is not a number", i + 2),
                    })
                })
                .collect()
        })
        .collect()
}

impl Run {
    /// Reads a run's `losses.csv` (`step,loss[,lr]`) and `metrics.csv` (`epoch,step,loss,i2t_r1,
    /// i2t_r5,i2t_r10,t2i_r1,t2i_r5,t2i_r10`; optional) from `dir`.
    pub fn read(dir: &Path, title: &str) -> Result<Self> {
        let losses = csv_rows(&dir.join("losses.csv"))?;
        let metrics = dir.join("metrics.csv");
        let epochs = if metrics.is_file() { csv_rows(&metrics)? } else { Vec::new() };
        let short = |p: &Path, n: usize| NnError::Load {
            path: p.to_path_buf(),
            reason: format!("a row has fewer than {n} columns"),
        };
        Ok(Self {
            title: title.to_string(),
            losses: losses
                .iter()
                .map(|r| r.get(1).copied().ok_or_else(|| short(&dir.join("losses.csv"), 2)))
                .collect::<Result<_>>()?,
            lrs: losses.iter().filter_map(|r| r.get(2).copied()).collect(),
            epochs: epochs
                .iter()
                .map(|r| {
                    (r.len() >= 9)
                        .then(|| EpochMetrics {
                            epoch: r[0],
                            i2t: [r[3], r[4], r[5]],
                            t2i: [r[6], r[7], r[8]],
                        })
                        .ok_or_else(|| short(&metrics, 9))
                })
                .collect::<Result<_>>()?,
            zero_shot: None,
        })
    }

    /// Writes the figure to `path` (PNG, [`SIZE`]).
    pub fn plot(&self, path: &Path) -> Result<()> {
        let recall = recall_panel(&self.epochs, self.zero_shot);
        figure(path, &self.title, &[loss_panel(&self.losses), recall, lr_panel(&self.lrs)], SIZE)
    }
}

/// Held-out recall@1/5 both ways per epoch, and the zero-shot accuracy after the last epoch.
pub fn recall_panel(epochs: &[EpochMetrics], zero_shot: Option<f64>) -> Panel {
    let line =
        |name: &str, points, colour, faint, marks| Series { name: name.into(), points, colour, faint, marks };
    let per_epoch = |f: &dyn Fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        epochs.iter().map(|e| (e.epoch, f(e))).collect()
    };
    let mut recall_series = vec![
        line("image→text R@1", per_epoch(&|e| e.i2t[0]), ORANGE, false, true),
        line("image→text R@5", per_epoch(&|e| e.i2t[1]), RED, false, true),
        line("text→image R@1", per_epoch(&|e| e.t2i[0]), GREEN, false, true),
        line("text→image R@5", per_epoch(&|e| e.t2i[1]), PURPLE, false, true),
    ];
    if let (Some(acc), Some(last)) = (zero_shot, epochs.last()) {
        recall_series.push(line(
            &format!("zero-shot accuracy {acc:.2}"),
            vec![(last.epoch, acc)],
            GREY,
            false,
            true,
        ));
    }
    Panel {
        title: "Held-out retrieval".into(),
        x_label: "epoch".into(),
        y_label: "recall".into(),
        series: recall_series,
        y_range: Some((0.0, 1.0)),
        empty_note: "no held-out pairs (--val-fraction 0)".into(),
        x_integer: true,
    }
}

fn per_step(v: &[f64]) -> Vec<(f64, f64)> {
    v.iter().enumerate().map(|(i, &y)| ((i + 1) as f64, y)).collect()
}

/// The loss of every step, raw (faint) and smoothed.
pub fn loss_panel(losses: &[f64]) -> Panel {
    let line = |name: String, points, faint| Series { name, points, colour: BLUE, faint, marks: false };
    let window = (losses.len() / 25).max(1);
    Panel {
        title: "Training loss".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series: if window > 1 {
            vec![
                line("loss (per step)".into(), per_step(losses), true),
                line(format!("smoothed (mean of {window} steps)"), per_step(&smooth(losses, window)), false),
            ]
        } else {
            vec![line("loss (per step)".into(), per_step(losses), false)]
        },
        y_range: None,
        empty_note: "no steps".into(),
        x_integer: false,
    }
}

/// The learning rate of every step.
pub fn lr_panel(lrs: &[f64]) -> Panel {
    Panel {
        title: "Learning rate".into(),
        x_label: "step".into(),
        y_label: "learning rate".into(),
        series: vec![Series {
            name: String::new(),
            points: per_step(lrs),
            colour: GREY,
            faint: false,
            marks: false,
        }],
        y_range: None,
        empty_note: "not recorded".into(),
        x_integer: false,
    }
}

/// A 0..1 metric per epoch (exact match, accuracy), one line per `(name, points)`.
pub fn epoch_panel(title: &str, y_label: &str, lines: &[(&str, Vec<(f64, f64)>)], empty_note: &str) -> Panel {
    let colours = [ORANGE, GREEN, RED, PURPLE];
    Panel {
        title: title.into(),
        x_label: "epoch".into(),
        y_label: y_label.into(),
        series: lines
            .iter()
            .enumerate()
            .map(|(i, (name, points))| Series {
                name: name.to_string(),
                points: points.clone(),
                colour: colours[i % colours.len()],
                faint: false,
                marks: true,
            })
            .collect(),
        y_range: Some((0.0, 1.0)),
        empty_note: empty_note.into(),
        x_integer: true,
    }
}

/// A metric as metrics.csv writes it (4 decimals), so a figure shows what the file holds.
pub fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

/// Trailing mean over `window` values.
pub fn smooth(v: &[f64], window: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(v.len());
    let mut sum = 0.0;
    for i in 0..v.len() {
        sum += v[i];
        if i >= window {
            sum -= v[i - window];
        }
        out.push(sum / (i + 1).min(window) as f64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_a_trailing_mean() {
        assert_eq!(smooth(&[1.0, 3.0, 5.0, 7.0], 2), vec![1.0, 2.0, 4.0, 6.0]);
        assert_eq!(smooth(&[2.0], 5), vec![2.0]);
    }

    /// A plot rendered from small metrics files: decodes, has the expected size, and has ink where
    /// the title, the axes (tick labels) and the legends go.
    #[test]
    fn a_plot_from_metrics_files_has_axes_legends_and_a_title() {
        let tmp = tempfile::tempdir().unwrap();
        let losses: String = (1..=60)
            .map(|s| {
                format!(
                    "{s},{},{}\n",
                    3.0 / (s as f64).sqrt() + 0.1 * ((s * 7) % 5) as f64,
                    1e-3 * (1.0 - s as f64 / 60.0)
                )
            })
            .collect();
        std::fs::write(tmp.path().join("losses.csv"), format!("step,loss,lr\n{losses}")).unwrap();
        let metrics: String = (1..=3)
            .map(|e| {
                format!(
                    "{e},{},0.5,{},{},1.0,{},{},1.0\n",
                    e * 20,
                    0.2 * e as f64,
                    0.3 * e as f64,
                    0.15 * e as f64,
                    0.25 * e as f64
                )
            })
            .collect();
        std::fs::write(
            tmp.path().join("metrics.csv"),
            format!("epoch,step,loss,i2t_r1,i2t_r5,i2t_r10,t2i_r1,t2i_r5,t2i_r10\n{metrics}"),
        )
        .unwrap();
        let mut run = Run::read(tmp.path(), "siglip tiny, 40 pairs").unwrap();
        assert_eq!((run.losses.len(), run.lrs.len(), run.epochs.len()), (60, 60, 3));
        run.zero_shot = Some(0.75);
        let png = tmp.path().join("metrics.png");
        run.plot(&png).unwrap();
        let img = image::open(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), SIZE);
        let ink = |x0: u32, y0: u32, x1: u32, y1: u32| {
            (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 160))
                .count()
        };
        let (w, h) = SIZE;
        assert!(ink(w / 4, 0, 3 * w / 4, 40) > 100, "title");
        assert!(ink(0, 60, 90, h / 2) > 100, "loss panel: y tick labels and axis title");
        assert!(ink(90, h / 2 - 45, w, h / 2) > 100, "loss panel: x tick labels");
        assert!(ink(w / 2 - 300, 80, w - 20, 160) > 50, "loss legend, upper right");
        assert!(ink(0, h / 2 + 40, 90, h - 40) > 100, "recall panel: y labels");
        // The recall legend's coloured marks (orange, green) are drawn.
        let colour = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        assert!(colour([255, 127, 14]) > 20 && colour([44, 160, 44]) > 20);
        // Bad input: a row that is not numbers is named.
        std::fs::write(tmp.path().join("losses.csv"), "step,loss\n1,abc\n").unwrap();
        let e = Run::read(tmp.path(), "x").unwrap_err().to_string();
        assert!(e.contains("losses.csv") && e.contains("line 2") && e.contains("abc"), "{e}");
    }
}
