//! XLM-RoBERTa (bge-m3, multilingual-e5, bge-reranker-v2-m3): the BERT encoder of
//! `bert.rs` with RoBERTa's position ids.
//!
//! transformers' `create_position_ids_from_input_ids` (modeling_xlm_roberta.py):
//! `mask = ids != padding_idx; positions = cumsum(mask) * mask + padding_idx`, i.e. real
//! tokens count from `padding_idx + 1` and padding tokens sit at `padding_idx`. The
//! position table therefore has `padding_idx + 1` slots before the first usable position.

use anyhow::Result;
use mlx_rs::Array;
use serde_json::Value;

use super::bert::Bert;
use super::{Inputs, Network};
use crate::weights::Weights;

pub struct XlmRoberta {
    bert: Bert,
    padding_idx: u32,
}

impl XlmRoberta {
    pub fn load(config: &Value, w: &mut Weights) -> Result<XlmRoberta> {
        let padding_idx = config.get("pad_token_id").and_then(Value::as_u64).unwrap_or(1) as u32;
        Ok(XlmRoberta { bert: Bert::load(config, w)?, padding_idx })
    }
}

/// RoBERTa position ids for `seq` right-padded to `len` with the padding token.
pub fn position_ids(seq: &[u32], len: usize, padding_idx: u32) -> Vec<i32> {
    let mut out = Vec::with_capacity(len);
    let mut count = 0i32;
    for &t in seq {
        if t == padding_idx {
            out.push(padding_idx as i32);
        } else {
            count += 1;
            out.push(padding_idx as i32 + count);
        }
    }
    out.resize(len, padding_idx as i32);
    out
}

impl Network for XlmRoberta {
    fn forward(&self, inputs: &Inputs) -> Result<Array> {
        let positions = inputs.positions.as_ref().ok_or_else(|| anyhow::anyhow!("XLM-R needs host position ids"))?;
        self.bert.encode(inputs, positions)
    }

    fn hidden_size(&self) -> i32 {
        self.bert.hidden_size()
    }

    fn position_ids(&self, seq: &[u32], len: usize) -> Option<Vec<i32>> {
        Some(position_ids(seq, len, self.padding_idx))
    }

    fn pad_id(&self) -> u32 {
        self.padding_idx
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn positions_skip_padding() {
        assert_eq!(super::position_ids(&[0, 5, 1, 2], 6, 1), vec![2, 3, 1, 4, 1, 1]);
    }
}
