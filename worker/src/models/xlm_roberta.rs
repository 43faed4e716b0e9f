//! XLM-RoBERTa (bge-m3, multilingual-e5, bge-reranker-v2-m3): the BERT encoder of
//! `bert.rs` with RoBERTa's position ids.
//!
//! transformers' `create_position_ids_from_input_ids` (modeling_xlm_roberta.py):
//! `mask = ids != padding_idx; positions = cumsum(mask) * mask + padding_idx`, i.e. real
//! tokens count from `padding_idx + 1` and padding tokens sit at `padding_idx`. The
//! position table therefore has `padding_idx + 1` slots before the first usable position.
//! A packed batch has no padding, so this runs per sequence on the host; a pad id that a
//! client sent inside a sequence still gets `padding_idx`, as in transformers.

use anyhow::Result;
use mlx_rs::Array;
use serde::Deserialize;

use mlx_serve_protocol::model_dir::{ModelFacts, Pooling};
use mlx_serve_protocol::ModelKind;

use super::bert::{legacy_norm_names, Bert, BertConfig};
use super::{parse_config, strip_prefix, Architecture, Inputs, Kernels, Load, Loaded, Network};
use crate::heads::{check_single_label, CrossEncoder, Scorer};
use crate::weights::Weights;

pub const ARCHITECTURE: Architecture = Architecture { family: "xlm_roberta", check, sanitize, load };

fn check(facts: &ModelFacts) -> Result<()> {
    let config: XlmRobertaConfig = parse_config(&facts.config)?;
    config.bert.check()?;
    // A classifier keeps every label (TEI's /predict); a reranker scores with one.
    if facts.pooling == Pooling::CrossEncoder && facts.kind == ModelKind::Reranker {
        check_single_label(config.bert.num_labels())?;
    }
    Ok(())
}

fn load(l: &mut Load) -> Result<Loaded> {
    let config: XlmRobertaConfig = parse_config(&l.facts.config)?;
    let net = XlmRoberta::load(&config, l.weights, l.kernels)?;
    let scorer = match l.facts.pooling {
        Pooling::CrossEncoder => {
            Some(Scorer::CrossEncoder(CrossEncoder::load_xlmr(config.bert.num_labels(), l.weights, net.hidden_size())?))
        }
        _ => None,
    };
    Ok(Loaded { network: Box::new(net), scorer })
}

/// config.json of an XLM-RoBERTa model: BERT's fields plus the padding id.
#[derive(Debug, Clone, Deserialize)]
pub struct XlmRobertaConfig {
    #[serde(flatten)]
    pub bert: BertConfig,
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: u32,
}

fn default_pad_token_id() -> u32 {
    1
}

/// Checkpoint names → module names: a task head's `roberta.` prefix dropped, legacy
/// LayerNorm names renamed as for BERT.
pub fn sanitize(name: &str) -> String {
    legacy_norm_names(strip_prefix(name, &["roberta.", "xlm_roberta."]))
}

pub struct XlmRoberta {
    bert: Bert,
    padding_idx: u32,
}

impl XlmRoberta {
    pub fn load(config: &XlmRobertaConfig, w: &mut Weights, kernels: Kernels) -> Result<XlmRoberta> {
        Ok(XlmRoberta { bert: Bert::load(&config.bert, w, kernels)?, padding_idx: config.pad_token_id })
    }
}

/// RoBERTa position ids of one sequence.
pub fn position_ids(seq: &[u32], padding_idx: u32, out: &mut Vec<i32>) {
    let mut count = 0i32;
    for &t in seq {
        if t == padding_idx {
            out.push(padding_idx as i32);
        } else {
            count += 1;
            out.push(padding_idx as i32 + count);
        }
    }
}

impl Network for XlmRoberta {
    fn forward(&self, inputs: &Inputs) -> Result<Array> {
        self.bert.forward(inputs)
    }

    fn hidden_size(&self) -> i32 {
        self.bert.hidden_size()
    }

    fn position_ids(&self, seq: &[u32], out: &mut Vec<i32>) {
        position_ids(seq, self.padding_idx, out)
    }

    fn kernels(&self) -> Kernels {
        self.bert.kernels()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn positions_skip_padding() {
        let mut out = vec![7];
        super::position_ids(&[0, 5, 1, 2], 1, &mut out);
        assert_eq!(out, vec![7, 2, 3, 1, 4]);
    }

    #[test]
    fn names_and_config() {
        assert_eq!(
            super::sanitize("roberta.encoder.layer.1.output.LayerNorm.beta"),
            "encoder.layer.1.output.LayerNorm.bias"
        );
        assert_eq!(super::sanitize("classifier.out_proj.weight"), "classifier.out_proj.weight");
        let v = serde_json::json!({"hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
            "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 66, "type_vocab_size": 1});
        let c: super::XlmRobertaConfig = super::super::parse_config(&v).unwrap();
        assert_eq!((c.pad_token_id, c.bert.type_vocab_size, c.bert.max_position_embeddings), (1, 1, 66));
    }
}
