//! Converting the task heads shipped as `torch.save` files (`sparse_linear.pt`, ...; the
//! list is `mlx_serve_protocol::torch_heads`) into safetensors in the staging folder. The
//! tensors are read by `store::torch_pickle`, which runs no pickle code and refuses any
//! file that is more than tensors; a refused head fails the whole pull.

use std::collections::BTreeMap;
use std::path::Path;

use mlx_serve_protocol::torch_heads;
use serde_json::json;

use crate::store::metadata;
use crate::store::staging::io_problem;
use crate::store::torch_pickle::{self, Tensor};
use crate::store::StoreError;

/// Reads `from` (the repo file `file`) and writes its tensors as
/// `<partial>/heads/<stem>.safetensors`.
pub(super) async fn convert(from: &Path, partial: &Path, file: &str) -> Result<(), StoreError> {
    let (from, to, shown) = (from.to_path_buf(), partial.join(torch_heads::converted(file)), file.to_owned());
    let written = to.clone();
    tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
        let bytes =
            std::fs::read(&from).map_err(|e| StoreError::Failed(format!("cannot read {shown}: {}", io_problem(&e))))?;
        let tensors = torch_pickle::read_state_dict(&bytes)
            .map_err(|e| StoreError::Refused(format!("{shown} is refused: {e}")))?;
        if tensors.is_empty() {
            return Err(StoreError::Refused(format!("{shown} is refused: it holds no tensors")));
        }
        std::fs::create_dir_all(to.parent().unwrap())
            .and_then(|_| std::fs::write(&to, safetensors(&tensors)))
            .map_err(|e| StoreError::Failed(format!("cannot store {shown}: {}", io_problem(&e))))
    })
    .await
    .map_err(|e| StoreError::Failed(e.to_string()))??;
    metadata::check_safetensors(&written, &torch_heads::converted(file)).map(drop)
}

/// The safetensors file of `tensors` (format: 8-byte little-endian header length, a JSON
/// header of name → dtype, shape, data_offsets, then the data; huggingface/safetensors
/// README, "Format"). The header is padded with spaces to 8 bytes, as the reference
/// writer does, so the data stays aligned.
fn safetensors(tensors: &BTreeMap<String, Tensor>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut at = 0usize;
    for (name, t) in tensors {
        header
            .insert(name.clone(), json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [at, at + t.data.len()]}));
        at += t.data.len();
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + at);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    for t in tensors.values() {
        out.extend_from_slice(&t.data);
    }
    out
}
