//! `mlx-serve.json`: what we know about a stored model that its Hugging Face files do not
//! say (where it came from, when, how it was quantized, how big it was before).
//!
//! `model_dir::inspect` reads its `type`, which overrides the detected kind (that is how
//! `pull --type` sticks). Which files are weights, and what a valid safetensors header is,
//! are the rules both binaries share (`mlx_serve_protocol::model_files`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use mlx_serve_protocol::model_files::{self, SafetensorsHeader};
use mlx_serve_protocol::quantization::{Quality, QuantizationDetails};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::matryoshka::Matryoshka;
use super::StoreError;

pub const FILE: &str = "mlx-serve.json";

/// `"4bit"` / `"8bit"`: the metadata's `quantization` value (its base bits; a mixed recipe's
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
    /// Whether the model declares Matryoshka training, found at pull time (absent: it
    /// does not, or it was pulled before this was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matryoshka: Option<Matryoshka>,
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

/// Total bytes of the model's safetensors weights in `dir` (which files those are:
/// `model_files::weight_files`, the rules the worker loads by); 0 when there are none.
pub fn weights_size(dir: &Path) -> u64 {
    model_files::weight_files(dir)
        .map(|files| files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// Checks the safetensors file at `path` as the worker will read it
/// (`model_files::read_header`), and that its tensors end exactly where the file ends (a
/// truncated or padded download fails here rather than in the worker). Errors name the
/// file as `shown`, not by its path.
pub fn check_safetensors(path: &Path, shown: &str) -> Result<SafetensorsHeader, StoreError> {
    let hide_path = |e: String| e.replace(&path.display().to_string(), shown);
    let header = model_files::read_header(path).map_err(|e| StoreError::Refused(hide_path(e.to_string())))?;
    if !header.is_exact() {
        let end = header.tensors.iter().map(|t| t.end).max().unwrap_or(0);
        return Err(StoreError::Refused(format!(
            "{shown}: safetensors data ends at byte {end} of its data section, which has {} bytes (incomplete download?)",
            header.data_len
        )));
    }
    Ok(header)
}

/// The float dtype (`float32`, `float16`, `bfloat16`) holding most bytes of the model's
/// weights in `dir`.
pub fn dominant_dtype(dir: &Path) -> Result<String, StoreError> {
    let refused = |e: model_files::ModelFilesError| StoreError::Refused(e.to_string());
    let mut by_dtype: BTreeMap<&'static str, u64> = BTreeMap::new();
    for file in model_files::weight_files(dir).map_err(refused)? {
        for t in model_files::read_header(&file).map_err(refused)?.tensors {
            if let Some(name) = model_files::float_dtype_name(&t.dtype) {
                *by_dtype.entry(name).or_default() += t.end - t.start;
            }
        }
    }
    Ok(by_dtype.iter().max_by_key(|(_, n)| **n).map(|(d, _)| (*d).to_owned()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of one tensor `dtype` of `n` elements (4-byte F32 or 2-byte BF16),
    /// with `extra` bytes past its data.
    fn write_st(path: &Path, dtype: &str, n: u64, extra: usize) {
        let size = if dtype == "F32" { 4 } else { 2 };
        let header = format!(r#"{{"w":{{"dtype":"{dtype}","shape":[{n}],"data_offsets":[0,{}]}}}}"#, n * size);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + (n * size) as usize + extra, 0);
        std::fs::write(path, bytes).unwrap();
    }

    /// A fresh folder under the temp dir, removed on drop.
    struct Tmp(std::path::PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p = std::env::temp_dir().join(format!("mlx-serve-metadata-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn weights_follow_the_shared_model_file_rules() {
        let dir = Tmp::new("shards");
        let d = dir.path();
        // A sharded checkpoint: only the shards its index names are weights, not a stray
        // safetensors file beside them.
        write_st(&d.join("a.safetensors"), "BF16", 100, 0);
        write_st(&d.join("b.safetensors"), "F32", 10, 0);
        write_st(&d.join("stray.safetensors"), "F32", 1000, 0);
        std::fs::write(
            d.join(model_files::SHARD_INDEX),
            r#"{"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}"#,
        )
        .unwrap();
        let file_len = |f: &str| std::fs::metadata(d.join(f)).unwrap().len();
        assert_eq!(weights_size(d), file_len("a.safetensors") + file_len("b.safetensors"));
        assert_eq!(dominant_dtype(d).unwrap(), "bfloat16");
        // Pickle only: no weights, and the dtype question is refused with the shared reason.
        let p = Tmp::new("pickle");
        std::fs::write(p.path().join("pytorch_model.bin"), b"x").unwrap();
        assert_eq!(weights_size(p.path()), 0);
        let StoreError::Refused(msg) = dominant_dtype(p.path()).unwrap_err() else { panic!() };
        assert!(msg.contains("only pickle weights (pytorch_model.bin)"), "{msg}");
    }

    #[test]
    fn a_safetensors_file_with_bytes_past_its_data_is_refused_without_its_path() {
        let dir = Tmp::new("exact");
        let path = dir.path().join("model.safetensors");
        write_st(&path, "F32", 8, 0);
        assert_eq!(check_safetensors(&path, "model.safetensors").unwrap().tensors.len(), 1);
        write_st(&path, "F32", 8, 3);
        let msg = check_safetensors(&path, "model.safetensors").unwrap_err().to_string();
        assert!(msg.contains("incomplete download") && !msg.contains(&dir.path().display().to_string()), "{msg}");
        std::fs::write(&path, [1u8, 0, 0]).unwrap();
        let msg = check_safetensors(&path, "model.safetensors").unwrap_err().to_string();
        assert!(msg.starts_with("model.safetensors is truncated"), "{msg}");
    }

    #[test]
    fn quantization_is_read_in_either_shape() {
        let m: super::ModelMetadata = serde_json::from_str(
            r#"{"source_type":"quantize","source":"m","repo":null,
            "revision":null,"type":"embedding","architecture":"BertModel","dtype":"float32",
            "quantization":{"bits":8,"group_size":64},"original_size":1,"quantized_size":1,"created":""}"#,
        )
        .unwrap();
        assert_eq!(m.quantization.as_deref(), Some("8bit"));
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["quantization"], "8bit");
        let back: super::ModelMetadata = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_028_800), "2025-11-25T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
