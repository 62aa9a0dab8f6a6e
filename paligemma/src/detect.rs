//! Detection output: PaliGemma writes each box as four `<locYYYY>` tokens (y1, x1, y2, x2, each
//! `value / 1024` of the image side) followed by the class name; boxes are separated by ` ; `.

use regex::Regex;

/// One detected box.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Detection {
    /// The class name.
    pub label: String,
    /// `[x1, y1, x2, y2]` in pixels of the input image.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// Parses boxes from generated text for an image of `width` x `height`.
pub fn parse_detections(text: &str, width: u32, height: u32) -> Vec<Detection> {
    let re = Regex::new(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})>\s*([^;<]*)").expect("valid regex");
    re.captures_iter(text)
        .map(|c| {
            let v = |i: usize| c[i].parse::<f32>().unwrap_or(0.0).min(1024.0) / 1024.0;
            let (w, h) = (width as f32, height as f32);
            Detection { label: c[5].trim().to_string(), bbox: [v(2) * w, v(1) * h, v(4) * w, v(3) * h] }
        })
        .collect()
}

/// Whether a prompt asks for detection (`detect CLASS ; CLASS`).
pub fn is_detect_prompt(prompt: &str) -> bool {
    prompt.trim_start().starts_with("detect ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_boxes_in_pixels() {
        let text = "<loc0000><loc0256><loc0512><loc1023> cat ; <loc0100><loc0200><loc0300><loc0400> dog";
        let d = parse_detections(text, 200, 100);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].label, "cat");
        assert_eq!(d[0].bbox, [50.0, 0.0, 1023.0 / 1024.0 * 200.0, 50.0]);
        assert_eq!(d[1].label, "dog");
        assert!(parse_detections("a cat", 10, 10).is_empty());
        assert!(is_detect_prompt("detect cat ; dog") && !is_detect_prompt("caption en"));
    }
}
