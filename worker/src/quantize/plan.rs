//! What happens to each tensor of a checkpoint when it is quantized: the recipe.
//!
//! Every matrix is quantized (linear layers and embedding tables alike), except:
//! - vectors (norms, biases) and non-float tensors: MLX quantizes matrices;
//! - matrices with fewer than 32 rows (a one-logit classifier, BERT's two token-type rows):
//!   negligible in size, and a classifier's error would go straight into the score;
//! - matrices whose row length is not a multiple of the group size (MLX needs whole groups);
//! - a Qwen3-Reranker's lm_head: it only ever reads the rows of "yes" and "no", so those
//!   two rows are stored unquantized as `lm_head.yes_no.weight` (exact scores), and an
//!   untied lm_head is not stored at all.
//!
//! Recipes: `uniform` gives every quantized matrix the same bits; `mixed` (the default for
//! 4 bits) gives the matrices that quantization error hurts most 8 bits and the rest 4, as
//! mlx-lm's mixed recipes do for LLMs (docs/models.md, "Quantization", has the choice and
//! its measurements).

use anyhow::{bail, Result};
use mlx_serve_protocol::model_dir::{Family, ModelFacts, Pooling};

use crate::weights::QuantSpec;

/// How bits are spread over the matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipe {
    Uniform,
    Mixed,
}

impl Recipe {
    pub fn parse(s: &str) -> Result<Recipe> {
        Ok(match s {
            "uniform" => Recipe::Uniform,
            "mixed" => Recipe::Mixed,
            other => bail!("unknown recipe {other:?} (uniform, mixed)"),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Recipe::Uniform => "uniform",
            Recipe::Mixed => "mixed",
        }
    }

    /// The recipe used when none is asked for: mixed at 4 bits (uniform 4-bit loses too
    /// much on small models), uniform at 8 (nothing to gain: 8 bits is the most there is).
    pub fn default_for(bits: i32) -> Recipe {
        if bits < 8 {
            Recipe::Mixed
        } else {
            Recipe::Uniform
        }
    }
}

/// `--bits-for PATTERN=BITS`: every tensor whose checkpoint name contains PATTERN gets
/// BITS (0: kept unquantized), ahead of the recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub pattern: String,
    pub bits: i32,
}

impl Override {
    pub fn parse(s: &str) -> Result<Override> {
        let Some((pattern, bits)) = s.rsplit_once('=') else { bail!("--bits-for wants PATTERN=BITS, got {s:?}") };
        let bits: i32 = bits.parse().map_err(|_| anyhow::anyhow!("--bits-for {s:?}: {bits:?} is not a number"))?;
        if pattern.is_empty() {
            bail!("--bits-for {s:?}: empty pattern");
        }
        if bits != 0 {
            QuantSpec { bits, group_size: 64 }.check()?;
        }
        Ok(Override { pattern: pattern.to_owned(), bits })
    }
}

/// What one tensor becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Quantize(QuantSpec),
    /// Stored as it is, for this reason.
    Keep(String),
    /// Not stored: a reranker's lm_head, replaced by its two rows.
    Drop,
}

/// The facts the recipe decides from.
pub struct Plan {
    pub base: QuantSpec,
    pub recipe: Recipe,
    pub overrides: Vec<Override>,
    /// `num_hidden_layers` of config.json.
    pub layers: usize,
    /// A Qwen3-Reranker (its lm_head's yes/no rows are kept exact).
    pub yes_no: bool,
}

/// A matrix's part in the network, from its checkpoint name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Embedding,
    AttentionValue,
    FeedForwardOut,
    LmHead,
    Other,
}

fn role(name: &str) -> Role {
    if name.contains("lm_head") {
        Role::LmHead
    } else if name.contains("embed") {
        Role::Embedding
    } else if name.contains("v_proj") || name.contains("attention.self.value") {
        Role::AttentionValue
    } else if name.contains("down_proj") || (name.contains("output.dense") && !name.contains("attention.output")) {
        Role::FeedForwardOut
    } else {
        Role::Other
    }
}

/// The transformer block a tensor belongs to: the number after `layer.` / `layers.`.
fn block_index(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == "layer" || p == "layers" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

impl Plan {
    pub fn new(facts: &ModelFacts, base: QuantSpec, recipe: Recipe, overrides: Vec<Override>) -> Plan {
        let layers = facts.config.get("num_hidden_layers").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        let yes_no = facts.family == Family::Qwen3 && facts.pooling == Pooling::YesNo;
        Plan { base, recipe, overrides, layers, yes_no }
    }

    /// What happens to the tensor `name` of `shape` (checkpoint name and shape).
    pub fn decide(&self, name: &str, shape: &[i32], is_float: bool) -> Decision {
        if self.yes_no && role(name) == Role::LmHead && name.ends_with(".weight") {
            return Decision::Drop;
        }
        if !is_float {
            return Decision::Keep("not floating point".into());
        }
        if shape.len() != 2 {
            return Decision::Keep("vectors (norms, biases): MLX quantizes matrices, and these are small".into());
        }
        let bits = match self.overrides.iter().find(|o| name.contains(&o.pattern)) {
            Some(o) if o.bits == 0 => return Decision::Keep(format!("--bits-for {}=0", o.pattern)),
            Some(o) => o.bits,
            None => self.recipe_bits(name),
        };
        if shape[0] < 32 {
            return Decision::Keep(
                "fewer than 32 rows (a one-logit classifier, token-type rows): negligible size, and a classifier's error goes straight into the score".into(),
            );
        }
        if shape[1] % self.base.group_size != 0 {
            return Decision::Keep(format!(
                "rows of {} values are not a whole number of groups of {}",
                shape[1], self.base.group_size
            ));
        }
        Decision::Quantize(QuantSpec { bits, group_size: self.base.group_size })
    }

    /// Bits for a matrix under the recipe.
    fn recipe_bits(&self, name: &str) -> i32 {
        if self.recipe == Recipe::Uniform || self.base.bits >= 8 {
            return self.base.bits;
        }
        if self.sensitive(name) {
            8
        } else {
            self.base.bits
        }
    }

    /// The mixed recipe's 8-bit matrices: the attention value and feed-forward output
    /// projections of the blocks mlx-lm's `mixed_quant_predicate_builder` gives more bits
    /// (mlx_lm/convert.py: the first and last eighth of the blocks, and every third one
    /// between), which follows llama.cpp's Q4_K_M.
    fn sensitive(&self, name: &str) -> bool {
        let n = self.layers;
        let more_bits = |i: usize| i < n / 8 || i >= 7 * n / 8 || (i >= n / 8 && (i - n / 8) % 3 == 2);
        match role(name) {
            Role::AttentionValue | Role::FeedForwardOut => block_index(name).is_some_and(more_bits),
            Role::LmHead => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_blocks() {
        assert_eq!(role("encoder.layer.3.output.dense.weight"), Role::FeedForwardOut);
        assert_eq!(role("encoder.layer.3.attention.output.dense.weight"), Role::Other);
        assert_eq!(role("model.layers.7.self_attn.v_proj.weight"), Role::AttentionValue);
        assert_eq!(role("embeddings.word_embeddings.weight"), Role::Embedding);
        assert_eq!(block_index("model.layers.17.mlp.down_proj.weight"), Some(17));
        assert_eq!(block_index("bert.encoder.layer.2.attention.self.value.weight"), Some(2));
        assert_eq!(block_index("embeddings.word_embeddings.weight"), None);
    }

    #[test]
    fn overrides_parse() {
        assert_eq!(Override::parse("embed=8").unwrap(), Override { pattern: "embed".into(), bits: 8 });
        assert_eq!(Override::parse("a=b=0").unwrap().pattern, "a=b");
        assert!(Override::parse("embed=7").is_err());
        assert!(Override::parse("=4").is_err());
        assert!(Override::parse("embed").is_err());
    }
}
