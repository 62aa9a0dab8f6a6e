//! Pictures of results: PaliGemma's boxes and masks over the image, held-out images with the
//! captions a model gave them.

use std::path::{Path, PathBuf};
use zoo_nn::Result;

/// A PNG grid of held-out images with their generated captions: `(image, expected caption)`
/// pairs and what the model said of each (green: exact, red: not).
pub fn caption_grid(path: &Path, pairs: &[(PathBuf, String)], generated: &[String]) -> Result<()> {
    let (cols, rows, cell_w, cell_h) = (4u32, 5u32, 300u32, 112u32);
    let mut img = image::RgbImage::from_pixel(cols * cell_w, rows * cell_h, image::Rgb([255, 255, 255]));
    for (i, (p, g)) in pairs.iter().zip(generated).take((cols * rows) as usize).enumerate() {
        let (cx, cy) = ((i as u32 % cols) * cell_w, (i as u32 / cols) * cell_h);
        let pic = zoo_nn::open_image(&p.0)?.to_rgb8();
        let pic = image::imageops::resize(&pic, 96, 96, image::imageops::FilterType::Nearest);
        image::imageops::overlay(&mut img, &pic, (cx + 4) as i64, (cy + 4) as i64);
        let colour = if *g == p.1 { [20, 140, 40] } else { [200, 30, 30] };
        let mut y = cy as i32 + 8;
        for line in wrap(g, 18) {
            super::label(&mut img, cx as i32 + 106, y, &line, 17.0, colour);
            y += 21;
        }
    }
    super::save_png(path, &img)
}

/// Words joined into lines of at most `width` characters (a longer word gets its own line).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for w in text.split_whitespace() {
        let last = lines.last_mut().expect("one line at least");
        if !last.is_empty() && last.chars().count() + 1 + w.chars().count() > width {
            lines.push(w.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(w);
        }
    }
    lines
}

const COLOURS: [[u8; 3]; 5] = [[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180]];

/// Draws detection boxes and labels on the image and writes it to `out`.
pub fn draw_detections(image: &Path, detections: &[zoo_paligemma::Detection], out: &Path) -> Result<()> {
    let mut img = zoo_nn::open_image(image)?.to_rgb8();
    draw_boxes(&mut img, detections);
    super::save_png(out, &img)
}

/// Paints each mask translucently (half its colour) with its box and label, and writes the image
/// to `out`.
pub fn draw_masks(image: &Path, masks: &[zoo_paligemma::SegmentMask], out: &Path) -> Result<()> {
    let mut img = zoo_nn::open_image(image)?.to_rgb8();
    let w = img.width();
    for (i, m) in masks.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        if m.mask_rle.size != [img.height(), w] {
            continue;
        }
        for (j, inside) in m.mask_rle.decode().into_iter().enumerate() {
            if inside {
                let p = img.get_pixel_mut(j as u32 % w, j as u32 / w);
                p.0 = std::array::from_fn(|k| ((p.0[k] as u16 + c[k] as u16) / 2) as u8);
            }
        }
    }
    let boxes: Vec<zoo_paligemma::Detection> = masks
        .iter()
        .map(|m| zoo_paligemma::Detection { label: m.label.clone(), bbox: m.bbox.map(|v| v as f32) })
        .collect();
    draw_boxes(&mut img, &boxes);
    super::save_png(out, &img)
}

fn draw_boxes(img: &mut image::RgbImage, detections: &[zoo_paligemma::Detection]) {
    let (w, h) = img.dimensions();
    for (i, d) in detections.iter().enumerate() {
        let c = image::Rgb(COLOURS[i % COLOURS.len()]);
        let [x1, y1, x2, y2] = d.bbox.map(|v| v.max(0.0) as u32);
        let (x2, y2) = (x2.min(w.saturating_sub(1)), y2.min(h.saturating_sub(1)));
        for t in 0..2u32 {
            for x in x1..=x2 {
                for y in [y1 + t, y2.saturating_sub(t)] {
                    if y < h {
                        img.put_pixel(x, y, c);
                    }
                }
            }
            for y in y1..=y2 {
                for x in [x1 + t, x2.saturating_sub(t)] {
                    if x < w {
                        img.put_pixel(x, y, c);
                    }
                }
            }
        }
        let size = (w as f64 / 25.0).clamp(12.0, 40.0);
        super::label(img, x1 as i32 + 4, y1 as i32 + 4, &d.label, size, c.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_wrap_at_word_boundaries() {
        assert_eq!(wrap("a small red circle at the top", 12), vec!["a small red", "circle at", "the top"]);
        assert_eq!(wrap("", 12), vec![""]);
    }
}
