#!/usr/bin/env python3
"""A random-weight model at a published model's sizes, for the speed benchmarks
(bench/worker_vs_sentence_transformers.sh MODEL_DIR, bench/serve_mixed.py): the network and
the sentence-transformers pipeline of the published model, with its config.json values;
weights from transformers' own initialisation (seeded), the tokenizer of the family's tiny
fixture (tests/fixtures/models), whose ids are all within the published vocabulary. Speed
does not depend on the weights' values or on which tokenizer made the ids.

Usage (from the repository root, with the reference venv):

    .deps/ref-venv/bin/python bench/real_size_shape.py SHAPE OUT_DIR

SHAPE: embeddinggemma-300m (gemma3_text), gte-qwen2-1.5b (qwen2).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from transformers import Gemma3TextConfig, Gemma3TextModel, Qwen2Config, Qwen2Model

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "models"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def embeddinggemma() -> tuple[torch.nn.Module, str, list, str]:
    # google/embeddinggemma-300m config.json.
    cfg = Gemma3TextConfig(
        vocab_size=262144, hidden_size=768, intermediate_size=1152, num_hidden_layers=24, num_attention_heads=3,
        num_key_value_heads=1, head_dim=256, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=2048,
        rms_norm_eps=1e-6, query_pre_attn_scalar=256, sliding_window=512, use_bidirectional_attention=True,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(24)],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        pad_token_id=0, eos_token_id=1, bos_token_id=2)
    cfg.architectures = ["Gemma3TextModel"]
    # Its modules: mean pooling, 2_Dense 768 -> 3072, 3_Dense 3072 -> 768 (no bias, Identity), Normalize.
    dense = [Dense(768, 3072, bias=False, activation_function=torch.nn.Identity()),
             Dense(3072, 768, bias=False, activation_function=torch.nn.Identity())]
    return Gemma3TextModel(cfg), "mean", dense, "tiny-gemma3_text-embed"


def gte_qwen2() -> tuple[torch.nn.Module, str, list, str]:
    # Alibaba-NLP/gte-Qwen2-1.5B-instruct config.json.
    cfg = Qwen2Config(
        vocab_size=151646, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, hidden_act="silu", max_position_embeddings=131072, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, use_sliding_window=False,
        sliding_window=131072, max_window_layers=21, tie_word_embeddings=False)
    cfg.architectures = ["Qwen2Model"]
    return Qwen2Model(cfg), "lasttoken", [], "tiny-qwen2-embed"


SHAPES = {"embeddinggemma-300m": embeddinggemma, "gte-qwen2-1.5b": gte_qwen2}


def main() -> None:
    shape, out = sys.argv[1], Path(sys.argv[2])
    torch.manual_seed(0)
    model, pooling, dense, fixture = SHAPES[shape]()
    body = out.with_name(out.name + ".transformer")
    for d in (out, body):
        if d.exists():
            shutil.rmtree(d)
    model.eval().save_pretrained(str(body))
    for f in TOKENIZER_FILES:
        if (FIXTURES / fixture / f).exists():
            shutil.copy(FIXTURES / fixture / f, body / f)
    t = Transformer(str(body), max_seq_length=512)
    st = SentenceTransformer(modules=[t, Pooling(t.get_embedding_dimension(), pooling_mode=pooling), *dense,
                                      Normalize()], device="cpu")
    st.save(str(out))
    shutil.rmtree(body)
    print(f"{shape}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters -> {out}")


if __name__ == "__main__":
    main()
