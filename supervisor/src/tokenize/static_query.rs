//! The query side of an inference-free sparse encoder (opensearch's; protocol
//! `st_router.rs`), computed here rather than in a worker: it is a tokenizer and a table
//! lookup, no network, so a query never waits for a worker's queue or load. As
//! sentence-transformers' `SparseStaticEmbedding` computes it (6.2,
//! sparse_encoder/modules/sparse_static_embedding.py):
//!
//! - `preprocess`: the module's own tokenizer, `add_special_tokens=False` (no [CLS] or
//!   [SEP]; a special token written in the text is still that token), `truncation=True`
//!   at its `model_max_length`;
//! - `forward`: a 0/1 presence per vocabulary id (`scatter_` of the attention mask, so a
//!   repeated token counts once) times the module's `weight`.
//!
//! The answer is (id, weight) ascending by id, zero weights left out, as the sparse
//! outputs of the worker are. One difference, on purpose: in a padded batch torch's
//! `scatter_` also writes the pad positions' 0 into the pad token's column, so a text
//! that itself contains the pad token loses that weight when it is not the batch's
//! longest; here each text is computed as if alone (the pad token's weight kept).

use std::path::Path;

use mlx_serve_protocol::model_dir::ModelFacts;
use mlx_serve_protocol::st_router;

use super::{fail, ModelTokenizer, TokenizeError};

pub struct StaticQueryEncoder {
    /// The module's own tokenizer, truncating at its `model_max_length`.
    tokenizer: ModelTokenizer,
    /// One weight per vocabulary id.
    weights: Vec<f32>,
}

/// Per text its (id, weight) pairs, and the tokens counted for usage.
pub struct QueryWeights {
    pub sparse: Vec<Vec<(u32, f32)>>,
    pub tokens: usize,
}

impl StaticQueryEncoder {
    /// The query side of the model in `dir`, or `None` when it has none.
    pub fn load(dir: &Path, facts: &ModelFacts) -> Result<Option<StaticQueryEncoder>, TokenizeError> {
        let Some(spec) = &facts.static_query else { return Ok(None) };
        let weights =
            st_router::read_weights(dir, spec, facts.vocab_size).map_err(|e| TokenizeError::Load(e.to_string()))?;
        let mut own = facts.clone();
        own.max_tokens = spec.max_length;
        let tokenizer = ModelTokenizer::load(&dir.join(&spec.path), &own)?;
        Ok(Some(StaticQueryEncoder { tokenizer, weights }))
    }

    /// The weights of `texts` (see the module header); `truncate: false` refuses a text
    /// longer than the tokenizer's limit, and a text with no token is refused like `""`.
    pub fn encode(&self, texts: &[&str], truncate: bool) -> Result<QueryWeights, TokenizeError> {
        let mut sparse = Vec::with_capacity(texts.len());
        let mut tokens = 0;
        for (index, text) in texts.iter().enumerate() {
            let enc = self.tokenizer.tokenizer.encode_fast(self.tokenizer.head(text)?, false).map_err(fail)?;
            self.tokenizer.check(&enc, index, truncate)?;
            if enc.is_empty() {
                return Err(TokenizeError::Empty { index });
            }
            tokens += enc.len();
            let mut ids = enc.get_ids().to_vec();
            ids.sort_unstable();
            ids.dedup();
            let pairs =
                ids.into_iter()
                    .map(|id| {
                        let w = self.weights.get(id as usize).copied().ok_or_else(|| {
                            TokenizeError::Failed(format!("token id {id} is outside the query weights"))
                        })?;
                        Ok((id, w))
                    })
                    .filter(|p| !matches!(p, Ok((_, w)) if *w == 0.0))
                    .collect::<Result<Vec<_>, TokenizeError>>()?;
            sparse.push(pairs);
        }
        Ok(QueryWeights { sparse, tokens })
    }
}
