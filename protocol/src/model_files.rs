//! Which files of a model folder are weights, and which of them mlx-serve will read.
//!
//! The rules, written once for both binaries (the supervisor when it pulls, lists and sizes
//! a model; the worker when it loads one):
//! - Only safetensors are loaded. Pickle-based checkpoints ([`PICKLE_EXTENSIONS`]) can run
//!   code when unpickled, so a folder that has nothing else is refused with a message that
//!   says why; other weight formats ([`OTHER_WEIGHT_EXTENSIONS`]) are ignored.
//! - A sharded checkpoint lists its shards in [`SHARD_INDEX`] (`weight_map`: tensor →
//!   file); then exactly those files are the weights, each a plain file name in the folder.
//!   Otherwise every top-level `*.safetensors` is.
//! - A safetensors file is `u64` little-endian header length, a JSON header
//!   `{name: {dtype, shape, data_offsets: [start, end]}}` and the data section
//!   (huggingface/safetensors README, "Format"). [`read_header`] checks every tensor's
//!   offsets against its dtype, shape and the file size before anything reads tensor data,
//!   so a truncated or corrupt file fails at once with a clear message (MLX reads tensor
//!   data lazily: without this it would fail mid-forward).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The index of a sharded safetensors checkpoint (transformers' `SAFE_WEIGHTS_INDEX_NAME`).
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// Extensions of checkpoint formats that unpickle Python objects when loaded: never
/// fetched, never loaded. `.bin` is transformers' `pytorch_model.bin`; `.pt`/`.pth`/`.ckpt`
/// are `torch.save` files; `.pkl`/`.pickle` plain pickles.
pub const PICKLE_EXTENSIONS: &[&str] = &["bin", "pt", "pth", "ckpt", "pkl", "pickle"];

/// Weight formats that are not pickle but that mlx-serve does not load either (TF/Keras,
/// Flax, ONNX, GGUF): not copied into quantized variants, not counted as weights.
pub const OTHER_WEIGHT_EXTENSIONS: &[&str] = &["h5", "msgpack", "onnx", "gguf"];

/// Largest safetensors header accepted (real headers are well under 1 MiB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelFilesError {
    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("no *.safetensors weights in {0}")]
    NoWeights(String),
    #[error(
        "{dir} has only pickle weights ({files}); mlx-serve loads safetensors only (pickle can run code when loaded). \
         Use a repository revision that ships model.safetensors, or convert the checkpoint to safetensors"
    )]
    PickleOnly { dir: String, files: String },
    #[error("{path} is not a valid shard index: {reason}")]
    BadIndex { path: String, reason: String },
    #[error("missing weight shard {0} (listed in model.safetensors.index.json)")]
    MissingShard(String),
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{path} is truncated: {reason}")]
    Truncated { path: String, reason: String },
}

fn extension(name: &str) -> &str {
    Path::new(name).extension().and_then(|e| e.to_str()).unwrap_or("")
}

/// True for a pickle-based checkpoint file name (see [`PICKLE_EXTENSIONS`]).
pub fn is_pickle(name: &str) -> bool {
    PICKLE_EXTENSIONS.contains(&extension(name))
}

/// True for any file that holds weights or indexes them, in any format: safetensors, the
/// shard index, pickles and the other formats. A quantized copy replaces all of them.
pub fn is_weight_file(name: &str) -> bool {
    let ext = extension(name);
    name == SHARD_INDEX || ext == "safetensors" || is_pickle(name) || OTHER_WEIGHT_EXTENSIONS.contains(&ext)
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> ModelFilesError {
    ModelFilesError::Io { path: path.display().to_string(), reason: e.to_string() }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The safetensors files of the model in `dir`, sorted: the shards named by
/// [`SHARD_INDEX`] when it exists, else every top-level `*.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelFilesError> {
    let index = dir.join(SHARD_INDEX);
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| io_err(&index, e))?;
        let bad = |reason: String| ModelFilesError::BadIndex { path: index.display().to_string(), reason };
        let parsed: ShardIndex = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut files: Vec<String> = parsed.weight_map.into_values().collect();
        files.sort();
        files.dedup();
        if files.is_empty() {
            return Err(bad("its weight_map is empty".into()));
        }
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            if f.contains('/') || f.contains('\\') || f == ".." || !f.ends_with(".safetensors") {
                return Err(bad(format!("shard name {f:?} is not a plain *.safetensors file name")));
            }
            let p = dir.join(&f);
            if !p.is_file() {
                return Err(ModelFilesError::MissingShard(f));
            }
            out.push(p);
        }
        return Ok(out);
    }
    let mut files = Vec::new();
    let mut pickles = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if extension(&name) == "safetensors" && path.is_file() {
            files.push(path);
        } else if is_pickle(&name) {
            pickles.push(name);
        }
    }
    files.sort();
    if files.is_empty() {
        let dir = dir.display().to_string();
        if pickles.is_empty() {
            return Err(ModelFilesError::NoWeights(dir));
        }
        pickles.sort();
        return Err(ModelFilesError::PickleOnly { dir, files: pickles.join(", ") });
    }
    Ok(files)
}

/// Bytes per element of a safetensors dtype name, for the dtypes a model can hold.
pub fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" => 1,
        _ => return None,
    })
}

/// The float dtype name mlx-serve reports (`float32`, ...) for a safetensors dtype.
pub fn float_dtype_name(dtype: &str) -> Option<&'static str> {
    Some(match dtype {
        "F32" => "float32",
        "F16" => "float16",
        "BF16" => "bfloat16",
        "F64" => "float64",
        _ => return None,
    })
}

/// One tensor of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// safetensors dtype name: `F32`, `BF16`, `U32`, ...
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Byte range inside the data section.
    pub start: u64,
    pub end: u64,
}

/// A checked safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// Tensors in name order (`__metadata__` left out).
    pub tensors: Vec<TensorInfo>,
    /// Bytes of the data section in the file (file size − 8 − header length).
    pub data_len: u64,
}

impl SafetensorsHeader {
    /// True when the tensors end exactly where the file ends: what a complete download is.
    /// (A loadable file may carry trailing bytes; a download that does is not the file
    /// the hub described.)
    pub fn is_exact(&self) -> bool {
        self.tensors.iter().map(|t| t.end).max().unwrap_or(0) == self.data_len
    }
}

#[derive(Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// Reads and checks the header of the safetensors file at `path` (see the module docs).
pub fn read_header(path: &Path) -> Result<SafetensorsHeader, ModelFilesError> {
    let name = path.display().to_string();
    let corrupt = |reason: String| ModelFilesError::Corrupt { path: name.clone(), reason };
    let truncated = |reason: String| ModelFilesError::Truncated { path: name.clone(), reason };
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let file_len = f.metadata().map_err(|e| io_err(path, e))?.len();
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8).map_err(|_| truncated("shorter than 8 bytes, not a safetensors file".into()))?;
    let header_len = u64::from_le_bytes(len8);
    if header_len > MAX_HEADER_BYTES || header_len + 8 > file_len {
        return Err(corrupt(format!("header length {header_len} does not fit a {file_len}-byte file")));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|e| io_err(path, e))?;
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| corrupt(format!("its safetensors header is not valid JSON ({e})")))?;
    let data_len = file_len - 8 - header_len;
    let mut tensors = Vec::with_capacity(map.len());
    for (tensor, value) in map {
        if tensor == "__metadata__" {
            continue;
        }
        let raw: RawTensor = serde_json::from_value(value).map_err(|e| corrupt(format!("tensor {tensor}: {e}")))?;
        let size = dtype_size(&raw.dtype)
            .ok_or_else(|| corrupt(format!("tensor {tensor} has unsupported dtype {}", raw.dtype)))?;
        let (start, end) = raw.data_offsets;
        let want = raw.shape.iter().try_fold(size as u64, |acc, &d| acc.checked_mul(d));
        if end < start || Some(end - start) != want {
            return Err(corrupt(format!(
                "tensor {tensor} ({} {:?}) has data_offsets [{start}, {end}]",
                raw.dtype, raw.shape
            )));
        }
        if end > data_len {
            return Err(truncated(format!(
                "tensor {tensor} ends at byte {end} of the data section, which has only {data_len} bytes"
            )));
        }
        tensors.push(TensorInfo { name: tensor, dtype: raw.dtype, shape: raw.shape, start, end });
    }
    Ok(SafetensorsHeader { tensors, data_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p = std::env::temp_dir().join(format!("mlx-serve-model-files-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A safetensors file with one F32 tensor of `n` elements, plus `extra` trailing bytes.
    fn write_st(path: &Path, n: u64, extra: usize) {
        let header = format!(
            r#"{{"__metadata__":{{"format":"pt"}},"w":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
            n * 4
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, n as usize * 4 + extra));
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn pickle_and_weight_names() {
        for name in ["pytorch_model.bin", "model.pt", "x.pth", "a.ckpt", "b.pkl", "c.pickle"] {
            assert!(is_pickle(name) && is_weight_file(name), "{name}");
        }
        for name in ["model.safetensors", SHARD_INDEX, "tf_model.h5", "flax_model.msgpack", "model.onnx", "m.gguf"] {
            assert!(!is_pickle(name) && is_weight_file(name), "{name}");
        }
        for name in ["config.json", "tokenizer.json", "vocab.txt", "binary"] {
            assert!(!is_weight_file(name), "{name}");
        }
    }

    #[test]
    fn top_level_safetensors_are_the_weights() {
        let t = Tmp::new("plain");
        write_st(&t.0.join("b.safetensors"), 2, 0);
        write_st(&t.0.join("a.safetensors"), 2, 0);
        std::fs::write(t.0.join("pytorch_model.bin"), b"x").unwrap();
        let files = weight_files(&t.0).unwrap();
        let names: Vec<_> = files.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["a.safetensors", "b.safetensors"]);
    }

    #[test]
    fn pickle_only_and_empty_folders_are_refused() {
        let t = Tmp::new("pickle");
        assert!(matches!(weight_files(&t.0), Err(ModelFilesError::NoWeights(_))));
        std::fs::write(t.0.join("pytorch_model.bin"), b"x").unwrap();
        std::fs::write(t.0.join("training_args.pickle"), b"x").unwrap();
        let err = weight_files(&t.0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pickle") && msg.contains("safetensors"), "{msg}");
        assert!(msg.contains("pytorch_model.bin, training_args.pickle"), "{msg}");
    }

    #[test]
    fn shard_index_names_the_files() {
        let t = Tmp::new("shards");
        write_st(&t.0.join("model-00001-of-00002.safetensors"), 2, 0);
        write_st(&t.0.join("model-00002-of-00002.safetensors"), 2, 0);
        write_st(&t.0.join("stray.safetensors"), 2, 0);
        let index = r#"{"metadata":{},"weight_map":{"a":"model-00002-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}"#;
        std::fs::write(t.0.join(SHARD_INDEX), index).unwrap();
        let files = weight_files(&t.0).unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files[0].ends_with("model-00001-of-00002.safetensors"));

        std::fs::write(t.0.join(SHARD_INDEX), r#"{"weight_map":{"a":"missing.safetensors"}}"#).unwrap();
        assert_eq!(weight_files(&t.0).unwrap_err(), ModelFilesError::MissingShard("missing.safetensors".into()));
        for bad in [
            r#"{"weight_map":{"a":"../x.safetensors"}}"#,
            r#"{"weight_map":{"a":"pytorch_model.bin"}}"#,
            r#"{"weight_map":{}}"#,
            "[]",
        ] {
            std::fs::write(t.0.join(SHARD_INDEX), bad).unwrap();
            assert!(matches!(weight_files(&t.0), Err(ModelFilesError::BadIndex { .. })), "{bad}");
        }
    }

    #[test]
    fn headers_are_checked_against_the_file() {
        let t = Tmp::new("header");
        let p = t.0.join("m.safetensors");
        write_st(&p, 4, 0);
        let h = read_header(&p).unwrap();
        assert_eq!(h.tensors.len(), 1);
        assert_eq!((h.tensors[0].dtype.as_str(), h.tensors[0].end), ("F32", 16));
        assert!(h.is_exact());

        write_st(&p, 4, 3);
        assert!(!read_header(&p).unwrap().is_exact());

        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() - 8]).unwrap();
        assert!(matches!(read_header(&p), Err(ModelFilesError::Truncated { .. })));
        std::fs::write(&p, &full[..5]).unwrap();
        assert!(matches!(read_header(&p), Err(ModelFilesError::Truncated { .. })));

        let mut scribbled = full.clone();
        scribbled[8..20].copy_from_slice(&[b'#'; 12]);
        std::fs::write(&p, &scribbled).unwrap();
        let err = read_header(&p).unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("m.safetensors"), "{err}");

        let mut huge = full;
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&p, &huge).unwrap();
        assert!(matches!(read_header(&p), Err(ModelFilesError::Corrupt { .. })));
    }

    #[test]
    fn wrong_offsets_are_corrupt() {
        let t = Tmp::new("offsets");
        let p = t.0.join("m.safetensors");
        let header = r#"{"w":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend([0u8; 8]);
        std::fs::write(&p, bytes).unwrap();
        assert!(matches!(read_header(&p), Err(ModelFilesError::Corrupt { .. })));
        assert_eq!(float_dtype_name("BF16"), Some("bfloat16"));
        assert_eq!(float_dtype_name("U32"), None);
    }
}
