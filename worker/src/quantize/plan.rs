//! What happens to each tensor of a checkpoint when it is quantized: the recipe.
//!
//! Every matrix is quantized (linear layers and embedding tables alike), except:
//! - vectors (norms, biases) and non-float tensors: MLX quantizes matrices;
//! - matrices with fewer than 32 rows (a one-logit classifier, BERT's two token-type rows):
//!   negligible in size, and a classifier's error would go straight into the score;
//! - matrices whose row length is not a multiple of the group size (MLX needs whole groups);
//! - a causal-LM reranker's lm_head (Qwen3-Reranker, mxbai-rerank-v2): it only ever reads
//!   the rows of its judge's two tokens ("yes"/"no", "1"/"0"), so those two rows are stored
//!   unquantized as `lm_head.yes_no.weight` (exact scores), and an
//!   untied lm_head is not stored at all.
//!
//! Recipes: `uniform` gives every quantized matrix the same bits. `mixed` (the default for
//! 4 bits) spends more bits where quantization error hurts most, in one of two ways chosen
//! by where the model's bytes are:
//! - embedding tables hold at least a third of the matrix weights (small encoders:
//!   all-MiniLM-L6-v2 52%, bge-m3 45%): the tables at 4 bits and the linear layers at 8.
//!   The size is in the tables, and they tolerate 4 bits; the error comes from the layers
//!   (measured on all-MiniLM-L6-v2, docs/quantization.md: uniform 4-bit mean
//!   cosine 0.964, this 0.998);
//! - otherwise (Qwen3-Embedding-0.6B: 26%), mlx-lm's `mixed_4_6`: the attention value and
//!   feed-forward output projections of the first and last eighth of the blocks and of
//!   every third block between at 6 bits, the rest at 4 (mlx_lm/convert.py,
//!   `mixed_quant_predicate_builder`, after llama.cpp's Q4_K_M), which keeps the model
//!   within 30% of its bfloat16 size.

use anyhow::{bail, Result};
use mlx_serve_protocol::model_dir::{config_u32, ModelFacts, Pooling};

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
    /// A causal-LM reranker (its lm_head's two judged rows are kept exact).
    pub yes_no: bool,
    /// Share of the matrix weights held by embedding tables (0..1).
    pub table_share: f64,
}

/// Tables holding at least this share of the matrix weights make `mixed` keep the linear
/// layers at 8 bits (module docs).
const TABLE_HEAVY: f64 = 1.0 / 3.0;
/// mlx-lm `mixed_4_6`'s high bits.
const MIXED_HIGH_BITS: i32 = 6;

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
    } else if ["v_proj", "attention.self.value", "attention.attn.v.", "attention.v_lin"]
        .iter()
        .any(|v| name.contains(v))
    {
        // Qwen3 / BERT / MPNet / DistilBERT names.
        Role::AttentionValue
    } else if name.contains("down_proj")
        || name.contains("ffn.lin2")
        || (name.contains("output.dense") && !name.contains("attention.output"))
    {
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
    /// The plan for a checkpoint whose tensors have `shapes` (checkpoint name, shape).
    pub fn new<'a>(
        facts: &ModelFacts,
        base: QuantSpec,
        recipe: Recipe,
        overrides: Vec<Override>,
        shapes: impl IntoIterator<Item = (&'a str, &'a [i32])>,
    ) -> Plan {
        let layers = config_u32(&facts.config, "num_hidden_layers").unwrap_or(0) as usize;
        let yes_no = facts.pooling == Pooling::YesNo;
        Plan::for_shapes(base, recipe, overrides, layers, yes_no, shapes)
    }

    /// [`Plan::new`] from the facts it reads: blocks, whether a causal-LM reranker, shapes.
    fn for_shapes<'a>(
        base: QuantSpec,
        recipe: Recipe,
        overrides: Vec<Override>,
        layers: usize,
        yes_no: bool,
        shapes: impl IntoIterator<Item = (&'a str, &'a [i32])>,
    ) -> Plan {
        let (mut tables, mut all) = (0f64, 0f64);
        for (name, shape) in shapes {
            if shape.len() == 2 {
                let n = shape[0] as f64 * shape[1] as f64;
                all += n;
                if role(name) == Role::Embedding {
                    tables += n;
                }
            }
        }
        let table_share = if all > 0.0 { tables / all } else { 0.0 };
        Plan { base, recipe, overrides, layers, yes_no, table_share }
    }

    /// Whether `mixed` takes its small-encoder form (tables low, linear layers at 8 bits).
    fn tables_heavy(&self) -> bool {
        self.table_share >= TABLE_HEAVY
    }

    /// One line on what the recipe did for this model, for the metadata.
    pub fn note(&self) -> String {
        let share = 100.0 * self.table_share;
        if self.base.bits >= 8 || self.recipe == Recipe::Uniform {
            format!(
                "every quantized matrix at {} bits; embedding tables hold {share:.0}% of the matrix weights",
                self.base.bits
            )
        } else if self.tables_heavy() {
            format!(
                "embedding tables hold {share:.0}% of the matrix weights (at least a third): tables at {} bits, linear layers at 8",
                self.base.bits
            )
        } else {
            format!(
                "embedding tables hold {share:.0}% of the matrix weights (under a third): mlx-lm mixed_{}_{MIXED_HIGH_BITS}, value and feed-forward output projections of the first and last eighth of the blocks and every third block between at {MIXED_HIGH_BITS} bits, the rest at {}",
                self.base.bits, self.base.bits
            )
        }
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
        if self.tables_heavy() {
            return if role(name) == Role::Embedding { self.base.bits } else { 8 };
        }
        if self.sensitive(name) {
            MIXED_HIGH_BITS
        } else {
            self.base.bits
        }
    }

    /// `mixed_4_6`'s high-bit matrices: the attention value and feed-forward output
    /// projections of the blocks mlx-lm's `mixed_quant_predicate_builder` gives more bits
    /// (mlx_lm/convert.py: the first and last eighth of the blocks, and every third one
    /// between), and an lm_head.
    fn sensitive(&self, name: &str) -> bool {
        let n = self.layers;
        // `i - n / 8` only runs when `i >= n / 8` (short-circuit).
        let more_bits = |i: usize| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
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
        assert_eq!(role("mpnet.encoder.layer.0.attention.attn.v.weight"), Role::AttentionValue);
        assert_eq!(role("encoder.layer.0.attention.attn.o.weight"), Role::Other);
        assert_eq!(role("distilbert.transformer.layer.1.attention.v_lin.weight"), Role::AttentionValue);
        assert_eq!(role("transformer.layer.1.ffn.lin2.weight"), Role::FeedForwardOut);
        assert_eq!(role("transformer.layer.1.ffn.lin1.weight"), Role::Other);
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

    /// Tensor names and shapes of Qwen/Qwen3-Embedding-0.6B (its config.json: 28 blocks,
    /// hidden 1024, 16 query / 8 key-value heads of 128, intermediate 3072, vocab 151669,
    /// tied embeddings).
    fn qwen3_0_6b() -> Vec<(String, Vec<i32>)> {
        let mut t = vec![("embed_tokens.weight".to_string(), vec![151669, 1024]), ("norm.weight".into(), vec![1024])];
        for i in 0..28 {
            for (n, s) in [
                ("self_attn.q_proj.weight", vec![2048, 1024]),
                ("self_attn.k_proj.weight", vec![1024, 1024]),
                ("self_attn.v_proj.weight", vec![1024, 1024]),
                ("self_attn.o_proj.weight", vec![1024, 2048]),
                ("self_attn.q_norm.weight", vec![128]),
                ("self_attn.k_norm.weight", vec![128]),
                ("mlp.gate_proj.weight", vec![3072, 1024]),
                ("mlp.up_proj.weight", vec![3072, 1024]),
                ("mlp.down_proj.weight", vec![1024, 3072]),
                ("input_layernorm.weight", vec![1024]),
                ("post_attention_layernorm.weight", vec![1024]),
            ] {
                t.push((format!("layers.{i}.{n}"), s));
            }
        }
        t
    }

    /// Bytes of tensor data the plan stores for `tensors` held in `float_bytes`-byte floats:
    /// packed uint32 codes plus a scale and a bias per group (MLX `quantize`), or the tensor
    /// as it is.
    fn stored_bytes(plan: &Plan, tensors: &[(String, Vec<i32>)], float_bytes: u64) -> u64 {
        tensors
            .iter()
            .map(|(name, shape)| {
                let n: u64 = shape.iter().map(|&d| d as u64).product();
                match plan.decide(name, shape, true) {
                    Decision::Quantize(q) => {
                        let (rows, cols) = (shape[0] as u64, shape[1] as u64);
                        rows * cols * q.bits as u64 / 8 + 2 * rows * (cols / q.group_size as u64) * float_bytes
                    }
                    Decision::Keep(_) => n * float_bytes,
                    Decision::Drop => 0,
                }
            })
            .sum()
    }

    fn plan(tensors: &[(String, Vec<i32>)], bits: i32, recipe: Recipe, layers: usize) -> Plan {
        let shapes = tensors.iter().map(|(n, s)| (n.as_str(), s.as_slice()));
        Plan::for_shapes(QuantSpec { bits, group_size: 64 }, recipe, Vec::new(), layers, false, shapes)
    }

    #[test]
    fn qwen3_0_6b_at_4_bits_is_under_30_percent_of_bf16() {
        // At most 30% of the bf16 size (about 350 MB from 1.2 GB; docs/quantization.md).
        let t = qwen3_0_6b();
        let bf16: u64 = t.iter().map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>() * 2).sum();
        let mixed = plan(&t, 4, Recipe::Mixed, 28);
        assert!(!mixed.tables_heavy(), "{}", mixed.table_share);
        let q4 = stored_bytes(&mixed, &t, 2);
        let q8 = stored_bytes(&plan(&t, 8, Recipe::Uniform, 28), &t, 2);
        eprintln!(
            "Qwen3-Embedding-0.6B shape: bf16 {bf16}, mixed 4-bit {q4} ({:.1}%), 8-bit {q8} ({:.1}%)",
            100.0 * q4 as f64 / bf16 as f64,
            100.0 * q8 as f64 / bf16 as f64
        );
        assert!(q4 * 100 <= bf16 * 30, "{q4} of {bf16}");
        // 14 of 28 blocks have their value and down projections at 6 bits.
        let six = t
            .iter()
            .filter(|(n, s)| mixed.decide(n, s, true) == Decision::Quantize(QuantSpec { bits: 6, group_size: 64 }))
            .count();
        assert_eq!(six, 28);
    }

    #[test]
    fn small_encoders_keep_linear_layers_at_8_bits_under_mixed() {
        // all-MiniLM-L6-v2's matrices: the tables are over half of them.
        let mut t = vec![
            ("embeddings.word_embeddings.weight".to_string(), vec![30522, 384]),
            ("embeddings.position_embeddings.weight".into(), vec![512, 384]),
            ("embeddings.token_type_embeddings.weight".into(), vec![2, 384]),
        ];
        for i in 0..6 {
            for (n, s) in [
                ("attention.self.query.weight", vec![384, 384]),
                ("intermediate.dense.weight", vec![1536, 384]),
                ("output.dense.weight", vec![384, 1536]),
            ] {
                t.push((format!("encoder.layer.{i}.{n}"), s));
            }
        }
        let p = plan(&t, 4, Recipe::Mixed, 6);
        assert!(p.tables_heavy(), "{}", p.table_share);
        let bits = |name: &str| match p.decide(name, &t.iter().find(|x| x.0 == name).unwrap().1, true) {
            Decision::Quantize(q) => q.bits,
            _ => 0,
        };
        assert_eq!(bits("embeddings.word_embeddings.weight"), 4);
        assert_eq!(bits("encoder.layer.3.intermediate.dense.weight"), 8);
        assert_eq!(bits("embeddings.token_type_embeddings.weight"), 0, "two rows stay as they are");
    }
}
