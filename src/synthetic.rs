//! Synthetic image-caption data: coloured shapes at positions, with captions such as
//! "a red circle at the top left". Used by the training example and `vlm-zoo demo`.

use std::path::{Path, PathBuf};
use zoo_nn::Rng;
use zoo_nn::{NnError, Result};

/// Colours and their RGB.
pub const COLOURS: [(&str, [u8; 3]); 5] = [
    ("red", [220, 40, 40]),
    ("green", [40, 180, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [230, 210, 40]),
    ("purple", [150, 60, 190]),
];
/// Shapes.
pub const SHAPES: [&str; 4] = ["circle", "square", "triangle", "cross"];
/// Positions (name, centre as fractions of the side).
pub const POSITIONS: [(&str, (f32, f32)); 5] = [
    ("top left", (0.28, 0.28)),
    ("top right", (0.72, 0.28)),
    ("bottom left", (0.28, 0.72)),
    ("bottom right", (0.72, 0.72)),
    ("center", (0.5, 0.5)),
];

/// One generated example's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scene {
    /// Index into [`COLOURS`].
    pub colour: usize,
    /// Index into [`SHAPES`].
    pub shape: usize,
    /// Index into [`POSITIONS`].
    pub position: usize,
}

impl Scene {
    /// "a red circle at the top left".
    pub fn caption(&self) -> String {
        let pos = POSITIONS[self.position].0;
        let at = if pos == "center" { "in the center".to_string() } else { format!("at the {pos}") };
        format!("a {} {} {at}", COLOURS[self.colour].0, SHAPES[self.shape])
    }

    /// Draws the scene on a `size` x `size` light background with a little jitter and noise.
    pub fn render(&self, size: u32, rng: &mut Rng) -> image::RgbImage {
        let s = size as f32;
        let bg = [
            235 + (rng.next_f64() * 15.0) as u8,
            235 + (rng.next_f64() * 15.0) as u8,
            230 + (rng.next_f64() * 20.0) as u8,
        ];
        let mut img = image::RgbImage::from_pixel(size, size, image::Rgb(bg));
        let (fx, fy) = POSITIONS[self.position].1;
        let jitter = |r: &mut Rng| (r.next_f64() as f32 - 0.5) * 0.08 * s;
        let (cx, cy) = (fx * s + jitter(rng), fy * s + jitter(rng));
        let radius = s * (0.16 + 0.04 * rng.next_f64() as f32);
        let colour = COLOURS[self.colour].1;
        for y in 0..size {
            for x in 0..size {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let inside = match SHAPES[self.shape] {
                    "circle" => dx * dx + dy * dy <= radius * radius,
                    "square" => dx.abs() <= radius * 0.85 && dy.abs() <= radius * 0.85,
                    "triangle" => dy <= radius * 0.8 && dy >= -radius && dx.abs() <= (dy + radius) * 0.6,
                    _ => {
                        (dx.abs() <= radius * 0.3 && dy.abs() <= radius)
                            || (dy.abs() <= radius * 0.3 && dx.abs() <= radius)
                    }
                };
                if inside {
                    let n =
                        |c: u8, r: &mut Rng| (c as f64 + (r.next_f64() - 0.5) * 30.0).clamp(0.0, 255.0) as u8;
                    img.put_pixel(
                        x,
                        y,
                        image::Rgb([n(colour[0], rng), n(colour[1], rng), n(colour[2], rng)]),
                    );
                }
            }
        }
        img
    }

    /// Every scene, in a fixed order.
    pub fn all() -> Vec<Scene> {
        let mut v = Vec::new();
        for colour in 0..COLOURS.len() {
            for shape in 0..SHAPES.len() {
                for position in 0..POSITIONS.len() {
                    v.push(Scene { colour, shape, position });
                }
            }
        }
        v
    }
}

/// Renders `scene` as `dir/imgNNNNN.png` (`i` numbers it); returns the file name.
fn save_scene(dir: &Path, i: usize, scene: &Scene, size: u32, rng: &mut Rng) -> Result<String> {
    let name = format!("img{i:05}.png");
    let path = dir.join(&name);
    scene
        .render(size, rng)
        .save(&path)
        .map_err(|e| NnError::Save { path: path.clone(), reason: e.to_string() })?;
    Ok(name)
}

/// Writes `n` random scenes as PNGs plus `captions.jsonl` into `dir`; returns the JSONL path.
pub fn write_dataset(dir: &Path, n: usize, size: u32, seed: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| NnError::io(dir, e))?;
    let scenes = Scene::all();
    let mut rng = Rng::new(seed);
    let mut lines = String::new();
    for i in 0..n {
        let scene = scenes[(rng.next_f64() * scenes.len() as f64) as usize % scenes.len()];
        let name = save_scene(dir, i, &scene, size, &mut rng)?;
        lines.push_str(&serde_json::json!({"image": name, "caption": scene.caption()}).to_string());
        lines.push('\n');
    }
    let jsonl = dir.join("captions.jsonl");
    std::fs::write(&jsonl, lines).map_err(|e| NnError::io(&jsonl, e))?;
    Ok(jsonl)
}

/// The `<loc>` box PaliGemma would answer for a shape at `position` (the nominal box, jitter
/// left out): `<locY1><locX1><locY2><locX2>`, each `round(v · 1024)` of the side.
pub fn detection_answer(position: usize) -> String {
    let (fx, fy) = POSITIONS[position].1;
    let r = 0.18f32;
    let loc = |v: f32| format!("<loc{:04}>", ((v * 1024.0).round() as i64).clamp(0, 1023));
    format!("{}{}{}{}", loc(fy - r), loc(fx - r), loc(fy + r), loc(fx + r))
}

/// A synthetic detection task for `vlm-zoo finetune`: `n` images of one shape in one of the four
/// corners, with rows `{"image", "prefix": "detect SHAPE", "suffix": "<loc>x4 SHAPE"}` in
/// `data.jsonl` (returned).
pub fn write_detection_dataset(dir: &Path, n: usize, size: u32, seed: u64) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| NnError::io(dir, e))?;
    let mut rng = Rng::new(seed);
    let pick = |rng: &mut Rng, k: usize| (rng.next_f64() * k as f64) as usize % k;
    let mut lines = String::new();
    for i in 0..n {
        let scene = Scene {
            colour: pick(&mut rng, COLOURS.len()),
            shape: pick(&mut rng, 2),
            position: pick(&mut rng, 4),
        };
        let name = save_scene(dir, i, &scene, size, &mut rng)?;
        let shape = SHAPES[scene.shape];
        let row = serde_json::json!({
            "image": name,
            "prefix": format!("detect {shape}"),
            "suffix": format!("{} {shape}", detection_answer(scene.position)),
        });
        lines.push_str(&row.to_string());
        lines.push('\n');
    }
    let jsonl = dir.join("data.jsonl");
    std::fs::write(&jsonl, lines).map_err(|e| NnError::io(&jsonl, e))?;
    Ok(jsonl)
}
