//! Reading the small JSON files of a model folder. Errors name the file as the folder
//! spells it (`1_Pooling/config.json`), never the server's path to it: these messages reach
//! API clients.

use std::path::Path;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("{file} is not valid JSON: {source}")]
    Invalid {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot read {file}: {source}")]
    Unreadable {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// `dir/file` parsed, or `None` when it does not exist.
pub fn read_json(dir: &Path, file: &str) -> Result<Option<Value>, JsonError> {
    match std::fs::read_to_string(dir.join(file)) {
        Ok(text) => {
            serde_json::from_str(&text).map(Some).map_err(|source| JsonError::Invalid { file: file.to_owned(), source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JsonError::Unreadable { file: file.to_owned(), source }),
    }
}

/// A non-negative integer field, saturated to `u32`.
pub fn get_u32(v: &Value, key: &str) -> Option<u32> {
    v.get(key).and_then(Value::as_u64).map(|n| n.min(u32::MAX as u64) as u32)
}
