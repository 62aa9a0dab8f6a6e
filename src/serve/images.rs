//! Images in request bodies: data URLs (`data:image/png;base64,...`) or bare base64, never a
//! path or a URL to fetch; the pixel count is read from the header and checked against
//! `--max-image-mp` before anything is decoded (a decompression bomb is refused with 413).

use super::errors::{ApiError, ApiResult};
use axum::http::StatusCode;
use base64::Engine;

/// An image from a data URL (`data:image/png;base64,...`) or bare base64; never a path or URL.
/// `what` names it in errors (`image`, `images[2]`).
pub(super) fn decode_image(s: &str, max_pixels: u64, what: &str) -> ApiResult<image::DynamicImage> {
    let b64 = if let Some(rest) = s.strip_prefix("data:") {
        rest.split_once(";base64,").map(|(_, b)| b).ok_or_else(|| {
            ApiError::bad(format!("{what}: a data URL must be base64 (data:image/...;base64,...)"))
        })?
    } else if s.starts_with("http://") || s.starts_with("https://") || s.starts_with("file:") {
        return Err(ApiError::bad(format!(
            "{what}: this server does not fetch URLs; send the image as a data URL or base64"
        )));
    } else {
        s
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| ApiError::bad(format!("{what}: not valid base64: {e}")))?;
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::bad(format!("{what}: {e}")))?;
    let (w, h) = reader.into_dimensions().map_err(|e| ApiError::bad(format!("{what}: not an image: {e}")))?;
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what}: {w}x{h} pixels is over this server's limit of {max_pixels} (--max-image-mp)"),
        ));
    }
    zoo_nn::data::image::decode_image(&bytes).map_err(|e| ApiError::bad(format!("{what}: not an image: {e}")))
}

/// A request's `images` list, each named `images[i]` in errors.
pub(super) fn decode_images(images: &[String], max_pixels: u64) -> ApiResult<Vec<image::DynamicImage>> {
    images.iter().enumerate().map(|(i, s)| decode_image(s, max_pixels, &format!("images[{i}]"))).collect()
}
