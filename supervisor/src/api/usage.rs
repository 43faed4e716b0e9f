//! `usage`: the tokens a request cost, in OpenAI's shape, which the other OpenAI-style
//! answers (rerank, score, tokenize, late chunking) share.

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(tokens: usize) -> Usage {
        Usage { prompt_tokens: tokens, total_tokens: tokens }
    }
}
