//! Turning rows of f32 from the worker into what each API sends: `dimensions`
//! (truncate + renormalize), L2 normalization, base64 of little-endian f32, and the
//! quantized types Cohere's embed offers.
//!
//! Quantization is computed as sentence-transformers' `quantize_embeddings`
//! (sentence-transformers 6.2, `util/quantization.py`):
//! - `binary`: `np.packbits(embeddings > 0, axis=-1) - 128` as int8; `ubinary`: the packed
//!   bytes as uint8 (most significant bit first; a row of D dims gives ceil(D/8) bytes,
//!   the last padded with zero bits).
//! - `int8`/`uint8`: sentence-transformers takes per-dimension ranges from calibration
//!   embeddings (by default, the batch itself), which makes a vector depend on what else
//!   was in the request. We use one fixed range instead, [-1, 1] for every dimension — the
//!   exact bounds of a component of an L2-normalized vector — i.e. `quantize_embeddings(e,
//!   "uint8", ranges=[[-1]*D, [1]*D])`: `uint8 = clip(floor((x + 1) / (2/255)), 0, 255)`,
//!   `int8 = uint8 - 128`. Only offered for models whose output is normalized.

use base64::Engine;
use serde::Serialize;
use utoipa::ToSchema;

use super::inference::{self, Embedded};
use super::ApiError;

/// One embedding as floats or as base64 of little-endian float32.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

/// Checks a requested `dimensions` (`param` names it in the error).
pub fn check_dimensions(dims: Option<i64>, param: &str) -> Result<Option<usize>, ApiError> {
    match dims {
        Some(d) if d < 1 => Err(ApiError::invalid_param(param, format!("`{param}` must be a positive integer"))),
        Some(d) => Ok(Some(d as usize)),
        None => Ok(None),
    }
}

/// The rows at `dims` dimensions (truncated and renormalized), or as they are.
pub fn shorten(out: &Embedded, dims: Option<usize>, model: &str, param: &str) -> Result<(usize, Vec<f32>), ApiError> {
    match dims {
        Some(d) if d > out.dim => Err(ApiError::invalid_param(
            param,
            format!("model `{model}` makes {}-dimensional embeddings; `{param}` {d} is larger", out.dim),
        )),
        Some(d) if d < out.dim => Ok((d, inference::shorten_rows(&out.data, out.dim, d))),
        _ => Ok((out.dim, out.data.clone())),
    }
}

/// L2-normalizes each row in place (a zero row stays zero).
pub fn normalize_rows(data: &mut [f32], dim: usize) {
    for row in data.chunks_exact_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|x| *x /= norm);
        }
    }
}

/// Base64 of the row's little-endian float32 bytes.
pub fn base64_f32(row: &[f32]) -> String {
    let mut bytes = Vec::with_capacity(row.len() * 4);
    for x in row {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `np.packbits(row > 0)`: sign bits, most significant first, 8 per byte.
pub fn ubinary(row: &[f32]) -> Vec<u8> {
    row.chunks(8)
        .map(|bits| bits.iter().enumerate().fold(0u8, |b, (i, &x)| if x > 0.0 { b | (0x80 >> i) } else { b }))
        .collect()
}

/// `(np.packbits(row > 0) - 128).astype(np.int8)`.
pub fn binary(row: &[f32]) -> Vec<i8> {
    ubinary(row).into_iter().map(|b| (b as i16 - 128) as i8).collect()
}

/// `uint8` over the fixed range [-1, 1] (see the module header).
pub fn uint8(row: &[f32]) -> Vec<u8> {
    // Same float32 arithmetic as numpy: steps = (max - min) / 255, floor((x - min) / steps).
    let steps = 2.0f32 / 255.0;
    row.iter().map(|&x| ((x + 1.0) / steps).floor().clamp(0.0, 255.0) as u8).collect()
}

/// `int8` = `uint8` - 128.
pub fn int8(row: &[f32]) -> Vec<i8> {
    uint8(row).into_iter().map(|b| (b as i16 - 128) as i8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_matches_numpy_packbits() {
        // np.packbits([1,0,0,0,0,0,0,1, 1,1]) == [129, 192]
        let row = [0.5, -0.1, 0.0, -1.0, -2.0, -0.3, -0.4, 0.2, 1.0, 0.1];
        assert_eq!(ubinary(&row), vec![129, 192]);
        assert_eq!(binary(&row), vec![1, 64]);
        assert_eq!(binary(&[-1.0; 8]), vec![-128]);
        assert_eq!(binary(&[1.0; 8]), vec![127]);
    }

    #[test]
    fn scalar_quantization_spans_minus_one_to_one() {
        // quantize_embeddings(e, "uint8"/"int8", ranges=[[-1]*6, [1]*6]) in numpy float32
        // (1.0 lands on 254: 2 / float32(2/255) is just below 255).
        let e = [-1.0, 0.0, 1.0, -2.0, 0.5, -0.3];
        assert_eq!(uint8(&e), vec![0, 127, 254, 0, 191, 89]);
        assert_eq!(int8(&e), vec![-128, -1, 126, -128, 63, -39]);
    }

    #[test]
    fn base64_is_little_endian_f32() {
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
    }
}
