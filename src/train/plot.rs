//! A PNG plot of the training loss (blue, per step, left scale) and held-out image-to-text R@1
//! (orange, per epoch, 0..1) — no fonts needed.

use std::path::Path;
use zoo_nn::{NnError, Result};

fn line(img: &mut image::RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        for (ox, oy) in [(0, 0), (0, 1), (1, 0)] {
            let (px, py) = (x + ox, y + oy);
            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                img.put_pixel(px as u32, py as u32, image::Rgb(c));
            }
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Writes the plot to `path`.
pub fn plot(path: &Path, losses: &[f64], recall_at_1: &[f64]) -> Result<()> {
    let (w, h, m) = (720i64, 360i64, 30i64);
    let mut img = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([255, 255, 255]));
    line(&mut img, (m, h - m), (w - m, h - m), [0, 0, 0]);
    line(&mut img, (m, m), (m, h - m), [0, 0, 0]);
    let max = losses.iter().cloned().filter(|v| v.is_finite()).fold(1e-9, f64::max);
    let xy = |i: usize, n: usize, v: f64, top: f64| {
        let x = m + ((w - 2 * m) as f64 * i as f64 / (n.max(2) - 1) as f64) as i64;
        let y = h - m - ((h - 2 * m) as f64 * (v / top).clamp(0.0, 1.0)) as i64;
        (x, y)
    };
    for (i, pair) in losses.windows(2).enumerate() {
        line(
            &mut img,
            xy(i, losses.len(), pair[0], max),
            xy(i + 1, losses.len(), pair[1], max),
            [31, 119, 180],
        );
    }
    for (i, pair) in recall_at_1.windows(2).enumerate() {
        line(
            &mut img,
            xy(i, recall_at_1.len(), pair[0], 1.0),
            xy(i + 1, recall_at_1.len(), pair[1], 1.0),
            [255, 127, 14],
        );
    }
    img.save(path).map_err(|e| NnError::Save { path: path.to_path_buf(), reason: e.to_string() })
}
