//! Reranker heads: how a (query, document) sequence becomes one relevance score in [0, 1].
//!
//! - Cross-encoders (`BertForSequenceClassification`, `XLMRobertaForSequenceClassification`)
//!   with one label: `sigmoid(logit)`, sentence-transformers' CrossEncoder default for
//!   `num_labels == 1`. BERT: `classifier(tanh(pooler.dense(h_cls)))`
//!   (BertPooler + classifier); XLM-R: `out_proj(tanh(dense(h_cls)))`
//!   (XLMRobertaClassificationHead). Dropout is identity at inference.
//! - Causal-LM judges (`protocol::architectures::Judge`): `sigmoid(logit_yes - logit_no)`
//!   at the last position, "yes"/"no" being the family's two tokens — Qwen3-Reranker's
//!   "yes"/"no" (its model card's `softmax([logit_no, logit_yes])[1]`), mxbai-rerank-v2's
//!   "1"/"0". Only the two lm_head rows are multiplied, never the whole vocabulary.
//! - Classifiers (several labels, TEI's `/predict`): the same BERT / XLM-R head with one
//!   output per label, every logit returned as it is ([`CrossEncoder::logits`]); the
//!   supervisor applies softmax or sigmoid as TEI does.
//! - A family's own classification head, computed in its model file ([`ScoringHead`]):
//!   ModernBERT's pooled `head.dense` + activation + `head.norm` + `classifier`.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use mlx_rs::{ops, Array};
use serde_json::Value;

use mlx_serve_protocol::architectures::Judge;

use crate::layers::{Embedding, Linear};
use crate::packing::Packing;
use crate::pooling;
use crate::weights::Weights;

/// `tanh(dense(h_cls))` → `out`: one logit per label (a reranker's sigmoid of its one).
pub struct CrossEncoder {
    dense: Linear,
    out: Linear,
}

/// Refuses a classification head with other than one label (checked at pull and load):
/// families whose multi-label head is not computed serve single-logit rerankers only.
pub fn check_single_label(labels: usize) -> Result<()> {
    if labels != 1 {
        bail!(
            "sequence-classification head with {labels} labels; this family is served as a single-logit \
             (num_labels = 1) reranker only (classification with several labels: bert, xlm_roberta)"
        );
    }
    Ok(())
}

impl CrossEncoder {
    /// BERT: BertPooler (`pooler.dense`) and `classifier`, `labels` outputs.
    pub fn load_bert(labels: usize, w: &mut Weights, hidden: i32) -> Result<CrossEncoder> {
        Ok(CrossEncoder {
            dense: w.linear("pooler.dense", hidden, hidden, true).context("BERT cross-encoder pooler")?,
            out: w.linear("classifier", hidden, labels as i32, true).context("BERT cross-encoder classifier")?,
        })
    }

    /// XLM-R: XLMRobertaClassificationHead (`classifier.dense`, `classifier.out_proj`).
    pub fn load_xlmr(labels: usize, w: &mut Weights, hidden: i32) -> Result<CrossEncoder> {
        Ok(CrossEncoder {
            dense: w.linear("classifier.dense", hidden, hidden, true)?,
            out: w.linear("classifier.out_proj", hidden, labels as i32, true)?,
        })
    }

    /// Logits `[batch, labels]` from final states `[total, hidden]`.
    pub fn logits(&self, hidden: &Array, packing: &Packing) -> Result<Array> {
        let cls = pooling::cls(hidden, packing)?;
        self.out.forward(&ops::tanh(self.dense.forward(&cls)?)?)
    }

    /// A single-logit head's scores `[batch]` from final states `[total, hidden]`.
    pub fn score(&self, hidden: &Array, packing: &Packing) -> Result<Array> {
        let logits = self.logits(hidden, packing)?;
        Ok(ops::sigmoid(&logits.reshape(&[packing.len() as i32])?)?)
    }
}

/// The lm_head rows of the judge's "yes" and "no" tokens (`[2, hidden]`, unquantized) and
/// their token ids (`[2]` int32), as a quantized copy of a causal-LM reranker stores them.
pub const YES_NO_ROWS: &str = "lm_head.yes_no.weight";
pub const YES_NO_IDS: &str = "lm_head.yes_no.token_ids";

/// A causal LM's P("yes") judge.
pub struct YesNo {
    /// `[hidden, 2]`: the lm_head rows of "yes" and "no", transposed for one small GEMM.
    rows_t: Array,
}

/// Id of `token` in tokenizer.json: the model vocabulary (BPE/WordPiece map, Unigram list)
/// or the added tokens.
pub fn token_id(tokenizer: &Value, token: &str) -> Option<u32> {
    let vocab = tokenizer.get("model")?.get("vocab")?;
    if let Some(id) = vocab.get(token).and_then(Value::as_u64) {
        return Some(id as u32);
    }
    if let Some(list) = vocab.as_array() {
        if let Some(i) = list.iter().position(|e| e.get(0).and_then(Value::as_str) == Some(token)) {
            return Some(i as u32);
        }
    }
    tokenizer
        .get("added_tokens")?
        .as_array()?
        .iter()
        .find_map(|t| (t.get("content")?.as_str()? == token).then(|| t.get("id")?.as_u64().map(|i| i as u32))?)
}

/// The ids of a judge's "yes" and "no" tokens in the model's tokenizer.json. Each is a
/// single token of the vocabulary: mxbai-rerank-v2 takes the first id of encoding "1" and
/// "0", which for Qwen2's byte-level BPE (digits split one by one) is that token.
pub fn judge_ids(dir: &Path, judge: &Judge) -> Result<[i32; 2]> {
    let text = std::fs::read_to_string(dir.join("tokenizer.json"))
        .context("the reranker needs tokenizer.json to find the ids of the tokens it scores")?;
    let tok: Value = serde_json::from_str(&text).context("tokenizer.json is not valid JSON")?;
    let find = |t: &str| {
        token_id(&tok, t)
            .map(|i| i as i32)
            .ok_or_else(|| anyhow!("tokenizer.json has no {t:?} token for the {} judge", judge.name))
    };
    Ok([find(judge.yes)?, find(judge.no)?])
}

impl YesNo {
    /// The judge of a causal LM: `vocab` × `hidden`, `embedding` its input table, which
    /// is the lm_head only when `tied` (config.json's `tie_word_embeddings`).
    pub fn load(
        dir: &Path,
        judge: &Judge,
        w: &mut Weights,
        (vocab, hidden): (i32, i32),
        embedding: &Embedding,
        tied: bool,
    ) -> Result<YesNo> {
        let ids = judge_ids(dir, judge)?;
        if ids.iter().any(|&i| i >= vocab) {
            bail!("the {} judge's token ids {ids:?} exceed vocab_size {vocab}", judge.name);
        }
        // A quantized copy stores the two rows unquantized (worker/src/quantize/plan.rs);
        // else an untied lm_head is its own tensor and a tied one is the input embeddings.
        let rows = if w.has(YES_NO_ROWS) {
            let stored = w.take_raw(YES_NO_IDS)?;
            let stored: Vec<i32> = stored.as_dtype(mlx_rs::Dtype::Int32)?.as_slice::<i32>().to_vec();
            if stored != ids {
                bail!("{YES_NO_ROWS} holds the rows of token ids {stored:?}, but the judge's tokens are {ids:?}");
            }
            w.take(YES_NO_ROWS, &[2, hidden])?
        } else if w.has("lm_head.weight") {
            w.rows("lm_head", vocab, hidden, &ids)?
        } else if tied {
            embedding.lookup(&Array::from_slice(&ids, &[2]))?
        } else {
            bail!("tie_word_embeddings is false but the checkpoint has no lm_head.weight to judge with");
        };
        let rows_t = rows.t();
        rows_t.eval()?;
        Ok(YesNo { rows_t })
    }

    /// Scores `[batch]` from final states `[total, hidden]`.
    pub fn score(&self, hidden: &Array, packing: &Packing) -> Result<Array> {
        let last = pooling::last_token(hidden, packing)?;
        let logits = last.matmul(&self.rows_t)?; // [batch, 2] = (yes, no)
        let parts = logits.split_at_indices(&[1], 1)?;
        let diff = parts[0].subtract(&parts[1])?.reshape(&[packing.len() as i32])?;
        Ok(ops::sigmoid(&diff)?)
    }
}

/// A classification head that only one family has, kept in that family's model file.
pub trait ScoringHead {
    /// Scores `[batch]` from final states `[total, hidden]`.
    fn score(&self, hidden: &Array, packing: &Packing) -> Result<Array>;
}

/// A reranker's scoring head: final hidden states → one score per sequence.
pub enum Scorer {
    CrossEncoder(CrossEncoder),
    YesNo(YesNo),
    Family(Box<dyn ScoringHead>),
}

impl Scorer {
    /// Scores `[batch]` (float32) from final states `[total, hidden]`.
    pub fn score(&self, hidden: &Array, packing: &Packing) -> Result<Array> {
        match self {
            Scorer::CrossEncoder(h) => Ok(h.score(hidden, packing)?.as_dtype(mlx_rs::Dtype::Float32)?),
            Scorer::YesNo(h) => h.score(&hidden.as_dtype(mlx_rs::Dtype::Float32)?, packing),
            Scorer::Family(h) => Ok(h.score(hidden, packing)?.as_dtype(mlx_rs::Dtype::Float32)?),
        }
    }

    /// Every label's logit `[batch, labels]` (float32): only the BERT / XLM-R head gives them.
    pub fn logits(&self, hidden: &Array, packing: &Packing) -> Result<Array> {
        match self {
            Scorer::CrossEncoder(h) => Ok(h.logits(hidden, packing)?.as_dtype(mlx_rs::Dtype::Float32)?),
            _ => bail!("this model's head gives one score, not a logit per label"),
        }
    }
}
