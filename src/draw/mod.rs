//! Pictures: the charts and the text in every PNG vlm-zoo writes (training plots, `captions.png`,
//! `--draw` labels), through plotters with its ab_glyph rasteriser and DejaVu Sans embedded in the
//! binary (no system fonts; licence in assets/fonts/DejaVuSans-LICENSE.txt).

pub mod overlay;
pub mod plot;

use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use zoo_nn::{NnError, Result};

static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The font family every picture uses (registered as plotters' `sans-serif`).
pub const FONT: &str = "sans-serif";

/// Registers the embedded font with plotters, once per process.
pub fn fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font compiled into the binary; registering it cannot fail
        // for any input a user gives, and a failure would only leave text undrawn.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS);
    });
}

fn drawing_error(path: &Path, e: impl std::fmt::Display) -> NnError {
    NnError::Save { path: path.to_path_buf(), reason: format!("drawing: {e}") }
}

/// Writes `text` onto `img` with its top-left corner at `(x, y)`, `size` pixels high, on a
/// translucent white box so it stays readable over any image.
pub fn label(img: &mut image::RgbImage, x: i32, y: i32, text: &str, size: f64, colour: [u8; 3]) {
    fonts();
    let (w, h) = img.dimensions();
    let backend = BitMapBackend::with_buffer(img.as_mut(), (w, h));
    let area = backend.into_drawing_area();
    let rgb = RGBColor(colour[0], colour[1], colour[2]);
    let style = TextStyle::from((FONT, size).into_font()).color(&rgb);
    let (tw, th) = area.estimate_text_size(text, &style).unwrap_or((0, 0));
    let pad = 2;
    let _ = area.draw(&Rectangle::new(
        [(x - pad, y - pad), (x + tw as i32 + pad, y + th as i32 + pad)],
        WHITE.mix(0.7).filled(),
    ));
    let _ = area.draw_text(text, &style, (x, y));
    let _ = area.present();
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend entry.
    pub name: String,
    /// `(x, y)` points; non-finite ones are left out.
    pub points: Vec<(f64, f64)>,
    /// Its colour.
    pub colour: RGBColor,
    /// Drawn faint and thin (raw values under a smoothed line).
    pub faint: bool,
    /// Marks at each point (few points, e.g. one per epoch).
    pub marks: bool,
}

/// One chart of a figure.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Its title.
    pub title: String,
    /// The x axis label.
    pub x_label: String,
    /// The y axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
    /// A fixed y range (e.g. 0..1 for recall); else from the data.
    pub y_range: Option<(f64, f64)>,
    /// Shown in the middle when there is nothing to plot.
    pub empty_note: String,
    /// Ticks only at whole x values (epochs).
    pub x_integer: bool,
}

/// Writes a `width` x `height` PNG: `title` on top, `panels[0]` across the top half, the others
/// side by side below it.
pub fn figure(path: &Path, title: &str, panels: &[Panel], (width, height): (u32, u32)) -> Result<()> {
    fonts();
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| drawing_error(path, e))?;
        let root = root.titled(title, (FONT, 26)).map_err(|e| drawing_error(path, e))?;
        let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
        let n_bottom = panels.len().saturating_sub(1).max(1);
        let bottoms = bottom.split_evenly((1, n_bottom));
        for (i, panel) in panels.iter().enumerate() {
            let area = if i == 0 { &top } else { &bottoms[(i - 1).min(n_bottom - 1)] };
            chart(area, panel).map_err(|e| drawing_error(path, e))?;
        }
        root.present().map_err(|e| drawing_error(path, e))?;
    }
    let img = image::RgbImage::from_raw(width, height, buf).expect("buffer sized for the image");
    save_png(path, &img)
}

/// Encodes `img` as PNG and writes it atomically (a reader never sees half a file).
pub fn save_png(path: &Path, img: &image::RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| NnError::Save { path: path.to_path_buf(), reason: e.to_string() })?;
    crate::fs::write_atomic(path, &bytes)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn chart(area: &Area, panel: &Panel) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let pts: Vec<(f64, f64)> =
        panel.series.iter().flat_map(|s| s.points.iter().filter(finite).copied()).collect();
    let (mut x0, mut x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = panel
        .y_range
        .unwrap_or_else(|| pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1))));
    if pts.is_empty() {
        (x0, x1) = (0.0, 1.0);
        if panel.y_range.is_none() {
            (y0, y1) = (0.0, 1.0);
        }
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        let pad = y0.abs().max(1e-3) * 0.05;
        (y0, y1) = (y0 - pad, y1 + pad);
    } else if panel.y_range.is_none() {
        let pad = (y1 - y0) * 0.05;
        (y0, y1) = (y0 - pad, y1 + pad);
    }
    let mut c = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let whole = |v: &f64| if (v - v.round()).abs() < 1e-9 { format!("{}", v.round()) } else { String::new() };
    let x_fmt: &dyn Fn(&f64) -> String = if panel.x_integer { &whole } else { &|v| format_tick(*v) };
    let x_ticks = if panel.x_integer { ((x1 - x0).round() as usize + 1).clamp(2, 12) } else { 10 };
    c.configure_mesh()
        .x_labels(x_ticks)
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .y_label_formatter(&|v| format_tick(*v))
        .x_label_formatter(x_fmt)
        .draw()?;
    for s in &panel.series {
        let points: Vec<(f64, f64)> = s.points.iter().filter(finite).copied().collect();
        let style = if s.faint { s.colour.mix(0.35).stroke_width(1) } else { s.colour.stroke_width(2) };
        let colour = s.colour;
        let drawn = c.draw_series(LineSeries::new(points.clone(), style))?;
        drawn
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        if s.marks {
            c.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
        }
    }
    if pts.is_empty() {
        area.draw_text(
            &panel.empty_note,
            &TextStyle::from((FONT, 15).into_font()).color(&RGBColor(120, 120, 120)),
            (area.dim_in_pixel().0 as i32 / 4, area.dim_in_pixel().1 as i32 / 2),
        )?;
    } else if panel.series.iter().any(|s| !s.name.is_empty()) {
        c.configure_series_labels()
            // Rates (0..1) rise to the top as training goes: their legend sits low.
            .position(if panel.y_range.is_some() {
                SeriesLabelPosition::LowerRight
            } else {
                SeriesLabelPosition::UpperRight
            })
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font((FONT, 13))
            .draw()?;
    }
    Ok(())
}

/// Tick values people read: 0.25, 1.5e-4, 12k.
fn format_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_read_naturally() {
        assert_eq!(format_tick(0.25), "0.25");
        assert_eq!(format_tick(2.0), "2");
        assert_eq!(format_tick(1.5e-4), "1.5e-4");
        assert_eq!(format_tick(12000.0), "12k");
        assert_eq!(format_tick(0.0), "0");
    }

    #[test]
    fn labels_are_drawn_in_the_given_colour() {
        let mut img = image::RgbImage::from_pixel(120, 40, image::Rgb([0, 0, 0]));
        label(&mut img, 5, 5, "circle", 20.0, [230, 25, 75]);
        let red = img.pixels().filter(|p| p.0[0] > 150 && p.0[1] < 120).count();
        let light = img.pixels().filter(|p| p.0.iter().all(|&c| c > 150)).count();
        assert!(red > 20 && light > 100, "red {red} light {light}");
        // Pixels right of the text stay as they were.
        assert_eq!(img.get_pixel(119, 39).0, [0, 0, 0]);
    }
}
