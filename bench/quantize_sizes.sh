#!/usr/bin/env bash
# Sizes of `mlx-serve quantize` on a Qwen3-Embedding-0.6B-shaped checkpoint (docs/models.md,
# "Quantization"): random bfloat16 weights with the real model's config (28 layers, hidden
# 1024, vocab 151669, tied embeddings; the Hub's config.json), the tiny Qwen3 fixture's
# tokenizer. Sizes depend only on shapes and dtypes, so they are the real model's; the
# quality line it prints is random weights against themselves and means nothing. The
# quality check runs the 0.6B model twice on the CPU: many minutes; the 4-bit file's size
# is in the store's .quantizing-* folder as soon as it is written.
#
#   bash bench/quantize_sizes.sh            # needs target/release and ~4 GB free in /tmp
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$(cd "$(dirname "$0")/.." && pwd)/.deps/ref-venv/bin/python}
work=$(mktemp -d /tmp/mlx-serve-qsize.XXXXXX)
trap 'rm -rf "$work"' EXIT
src=$work/Qwen3-Embedding-0.6B-shape
mkdir -p "$src"
cp tests/fixtures/models/tiny-qwen3-embed/{tokenizer.json,tokenizer_config.json,special_tokens_map.json,modules.json,sentence_bert_config.json,config_sentence_transformers.json} "$src"/
cp -r tests/fixtures/models/tiny-qwen3-embed/1_Pooling "$src"/
"$PY" - "$src" <<'PY'
import json, sys, torch
from safetensors.torch import save_file
src = sys.argv[1]
# Qwen/Qwen3-Embedding-0.6B config.json (fields the worker reads).
cfg = {"architectures": ["Qwen3Model"], "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072,
       "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
       "vocab_size": 151669, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
       "tie_word_embeddings": True, "attention_bias": False, "hidden_act": "silu", "torch_dtype": "bfloat16"}
json.dump(cfg, open(f"{src}/config.json", "w"), indent=1)
g = torch.Generator().manual_seed(0)
def mat(*shape):
    return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)
t = {"embed_tokens.weight": mat(151669, 1024), "norm.weight": torch.ones(1024, dtype=torch.bfloat16)}
for i in range(28):
    p = f"layers.{i}."
    t |= {p + "self_attn.q_proj.weight": mat(2048, 1024), p + "self_attn.k_proj.weight": mat(1024, 1024),
          p + "self_attn.v_proj.weight": mat(1024, 1024), p + "self_attn.o_proj.weight": mat(1024, 2048),
          p + "self_attn.q_norm.weight": torch.ones(128, dtype=torch.bfloat16),
          p + "self_attn.k_norm.weight": torch.ones(128, dtype=torch.bfloat16),
          p + "mlp.gate_proj.weight": mat(3072, 1024), p + "mlp.up_proj.weight": mat(3072, 1024),
          p + "mlp.down_proj.weight": mat(1024, 3072),
          p + "input_layernorm.weight": torch.ones(1024, dtype=torch.bfloat16),
          p + "post_attention_layernorm.weight": torch.ones(1024, dtype=torch.bfloat16)}
save_file(t, f"{src}/model.safetensors", metadata={"format": "pt"})
PY
export MLX_SERVE_HOME=$work/home MLX_SERVE_WORKER_BIN=$PWD/target/release/mlx-serve-worker
unset MLX_SERVE_CONFIG
./target/release/mlx-serve pull "$src" --name Qwen3-Embedding-0.6B-shape | tail -1
for bits in 4 8; do
  ./target/release/mlx-serve quantize Qwen3-Embedding-0.6B-shape --bits "$bits" | grep installed
done
