//! What both tiers of the embedding cache hold (`vector_cache.rs` in memory,
//! `disk_cache.rs` on disk): a vector under its content key.

use std::sync::Arc;

/// The SHA-256 content key (`vector_cache::key`).
pub type Key = [u8; 32];

/// A cached vector, the tokens its input had (for `usage`) and the windows it was
/// pooled from (1 unless chunked).
#[derive(Debug, Clone)]
pub struct Cached {
    pub row: Arc<[f32]>,
    pub tokens: u32,
    pub chunks: u32,
}
