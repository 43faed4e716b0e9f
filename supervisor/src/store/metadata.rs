//! `mlx-serve.json`: what we know about a stored model that its Hugging Face files do not
//! say (where it came from, when, how it was quantized, how big it was before).
//!
//! `model_dir::inspect` reads its `type`, which overrides the detected kind (that is how
//! `pull --type` sticks).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use mlx_serve_protocol::quantization::{Quality, QuantizationDetails};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::StoreError;

pub const FILE: &str = "mlx-serve.json";

/// `"4bit"` / `"8bit"`: the plan's `quantization` value (its base bits; a mixed recipe's
/// other layers are in `quantization_details`).
pub fn quantization_label(bits: u8) -> String {
    format!("{bits}bit")
}

/// Reads `quantization` as written now (`"4bit"`) or by earlier versions
/// (`{"bits": 4, "group_size": 64}`).
fn de_quantization<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Object(o)) => o.get("bits").and_then(Value::as_u64).map(|b| quantization_label(b as u8)),
        _ => None,
    })
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// Store name (the folder's name when installed).
    #[serde(default)]
    pub name: String,
    /// `huggingface`, `folder` or `quantize`.
    pub source_type: String,
    /// Repo id, folder path, or (quantize) the store name it was made from.
    pub source: String,
    /// The Hugging Face repo the weights come from (kept through quantization).
    pub repo: Option<String>,
    /// Commit sha of the repo when pulled.
    pub revision: Option<String>,
    /// `embedding` or `reranker`.
    #[serde(rename = "type")]
    pub kind: String,
    pub architecture: String,
    /// Dtype of the stored float weights: float32, float16, bfloat16.
    pub dtype: String,
    /// `"4bit"`, `"8bit"`, or null when not quantized.
    #[serde(default, deserialize_with = "de_quantization")]
    pub quantization: Option<String>,
    /// Bytes of safetensors weights before quantization.
    pub original_size: u64,
    /// Bytes of safetensors weights after quantization (absent when not quantized).
    pub quantized_size: Option<u64>,
    /// Exactly what was quantized and how; what was kept in full precision and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_details: Option<QuantizationDetails>,
    /// The quantized model against the original on the built-in quality set, measured when
    /// it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
    /// RFC 3339 UTC.
    pub created: String,
}

impl ModelMetadata {
    pub fn read(dir: &Path) -> Option<ModelMetadata> {
        let text = std::fs::read_to_string(dir.join(FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("metadata serializes") + "\n";
        std::fs::write(dir.join(FILE), text)
    }
}

pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

/// RFC 3339 UTC time for Unix seconds (civil-from-days, H. Hinnant's algorithm).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Total bytes of the `*.safetensors` files at the top of `dir`.
pub fn weights_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The safetensors header: `u64` little-endian length, then that many bytes of JSON
/// (format: huggingface/safetensors README, "Format").
pub fn safetensors_header(path: &Path) -> Result<Value, StoreError> {
    let refused = StoreError::Refused;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| refused(format!("{}: {e}", path.display())))?;
    let total = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| refused(format!("{}: too short for safetensors: {e}", path.display())))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 || 8 + n > total {
        return Err(refused(format!("{}: not a safetensors file (header length {n})", path.display())));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(|e| refused(format!("{}: {e}", path.display())))?;
    let header: Value =
        serde_json::from_slice(&buf).map_err(|e| refused(format!("{}: bad safetensors header: {e}", path.display())))?;
    // The data offsets must end exactly at the end of the file: a truncated or padded
    // download fails here rather than in the worker.
    let end = header
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| *k != "__metadata__")
                .filter_map(|(_, t)| t["data_offsets"][1].as_u64())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    if 8 + n + end != total {
        return Err(refused(format!(
            "{}: safetensors data ends at byte {} but the file has {total} bytes (incomplete download?)",
            path.display(),
            8 + n + end
        )));
    }
    Ok(header)
}

/// The float dtype holding most parameters in the folder's safetensors files.
pub fn dominant_dtype(dir: &Path) -> Result<String, StoreError> {
    let mut by_dtype: std::collections::BTreeMap<String, u64> = Default::default();
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::Refused(format!("{}: {e}", dir.display())))?;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().ends_with(".safetensors") {
            continue;
        }
        let header = safetensors_header(&e.path())?;
        for (name, t) in header.as_object().into_iter().flatten() {
            if name == "__metadata__" {
                continue;
            }
            let bytes = t["data_offsets"][1].as_u64().unwrap_or(0) - t["data_offsets"][0].as_u64().unwrap_or(0);
            let dtype = t["dtype"].as_str().unwrap_or("");
            *by_dtype.entry(dtype.to_owned()).or_default() += bytes;
        }
    }
    let name = |d: &str| match d {
        "F32" => "float32",
        "F16" => "float16",
        "BF16" => "bfloat16",
        "F64" => "float64",
        _ => "",
    };
    Ok(by_dtype
        .iter()
        .filter(|(d, _)| !name(d).is_empty())
        .max_by_key(|(_, n)| **n)
        .map(|(d, _)| name(d).to_owned())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantization_is_read_in_either_shape() {
        let m: super::ModelMetadata = serde_json::from_str(r#"{"source_type":"quantize","source":"m","repo":null,
            "revision":null,"type":"embedding","architecture":"BertModel","dtype":"float32",
            "quantization":{"bits":8,"group_size":64},"original_size":1,"quantized_size":1,"created":""}"#)
        .unwrap();
        assert_eq!(m.quantization.as_deref(), Some("8bit"));
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["quantization"], "8bit");
        let back: super::ModelMetadata = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_764_028_800), "2025-11-25T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
