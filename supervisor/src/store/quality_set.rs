//! The built-in set a quantized model is checked on (`quality_set.json`): 40 varied texts
//! (lengths from one word to a paragraph, 12 languages and scripts, code, numbers, logs,
//! emoji, typos) and a retrieval task of 20 queries × 60 documents (3 per topic, from a
//! direct answer to a tangent). Rerankers score the first 4 queries against the first 20
//! documents (which hold those queries' topics and others).
//!
//! The supervisor tokenizes it with the model's own tokenizer, exactly as requests are
//! tokenized (Qwen3-Embedding queries get the model card's query instruction, Qwen3-Reranker
//! pairs its prompt), and `mlx-serve-worker quantize --eval` runs it through the original
//! and the quantized model (worker/src/quantize/quality.rs).

use std::path::Path;

use mlx_serve_protocol::model_dir::ModelFacts;
use mlx_serve_protocol::quantization::{EvalSet, Sequence};
use mlx_serve_protocol::ModelKind;
use serde::Deserialize;

use crate::tokenize::{ModelTokenizer, Tokens};

/// `quality_set.json` (docs/quantization.md describes it).
const SET: &str = include_str!("quality_set.json");

#[derive(Deserialize)]
struct Texts {
    texts: Vec<String>,
    queries: Vec<String>,
    documents: Vec<String>,
    rerank_queries: usize,
    rerank_documents: usize,
}

/// The task instruction-tuned embedders' queries get: the default of the Qwen3-Embedding
/// and gte-Qwen2 model cards.
const RETRIEVAL_TASK: &str = "Given a web search query, retrieve relevant passages that answer the query";

fn texts() -> Texts {
    serde_json::from_str(SET).expect("quality_set.json is valid")
}

fn sequences(tokens: Vec<Tokens>) -> Vec<Sequence> {
    tokens.into_iter().map(|t| Sequence { ids: t.ids, type_ids: t.type_ids }).collect()
}

/// The set tokenized for the model in `dir`.
pub fn tokenized(dir: &Path, facts: &ModelFacts) -> Result<EvalSet, String> {
    let tokenizer = ModelTokenizer::load(dir, facts).map_err(|e| e.to_string())?;
    let set = texts();
    let encode = |texts: &[String]| -> Result<Vec<Sequence>, String> {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        tokenizer.encode_texts(&refs, true).map(sequences).map_err(|e| e.to_string())
    };
    Ok(match facts.kind {
        ModelKind::Embedding => {
            // Instruction-tuned embedders (Qwen3-Embedding) encode queries with an
            // instruction in their model card's format.
            let queries: Vec<String> = match facts.family.spec().instruction_format {
                Some(_) => set.queries.iter().map(|q| facts.family.instructed(RETRIEVAL_TASK, q)).collect(),
                None => set.queries.clone(),
            };
            EvalSet {
                texts: encode(&set.texts)?,
                queries: encode(&queries)?,
                documents: encode(&set.documents)?,
                pair_groups: Vec::new(),
            }
        }
        ModelKind::Reranker => {
            let docs: Vec<&str> = set.documents.iter().take(set.rerank_documents).map(String::as_str).collect();
            let groups = set.queries[..set.rerank_queries]
                .iter()
                .map(|q| tokenizer.encode_pairs(q, &docs, None, true).map(sequences).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            EvalSet { pair_groups: groups, ..EvalSet::default() }
        }
        // The quality check measures vectors and scores, not labels.
        ModelKind::Classifier => return Err("quantizing a classifier is not supported".into()),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_set_parses_and_is_consistent() {
        let set = super::texts();
        assert_eq!((set.texts.len(), set.queries.len(), set.documents.len()), (40, 20, 60));
        assert!(set.rerank_queries <= set.queries.len() && set.rerank_documents <= set.documents.len());
    }
}
