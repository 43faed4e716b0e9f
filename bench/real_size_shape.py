#!/usr/bin/env python3
"""A random-weight model at a published model's sizes, for the speed benchmarks
(bench/families.py, bench/worker_vs_sentence_transformers.sh MODEL_DIR): the network and the
sentence-transformers pipeline of the published model, with its config.json values; weights
from transformers' own initialisation (seeded). Speed does not depend on the weights' values.

The tokenizer is all-MiniLM-L6-v2's (BERT WordPiece, uncased, 30,522 ids, from .deps): its
ids fit every family's vocabulary, and English text gets about the token counts a real
tokenizer gives it (a tiny fixture's tokenizer splits words into many more pieces, which
would benchmark longer sequences than users send).

Usage (from the repository root, with the reference venv):

    .deps/ref-venv/bin/python bench/real_size_shape.py SHAPE OUT_DIR

It writes OUT_DIR (what sentence-transformers loads) and prints one JSON line
{"shape", "family", "parameters", "st_dir", "serve_dir"}: serve_dir is the folder
`mlx-serve pull` takes, in the layout the published repo has. The two differ only where the
Hub's layout is not transformers' (`new`: the Hub ships Alibaba-NLP/new-impl tensors, which
transformers reads through its conversion mapping; nomic-embed-text-v2-moe: the Hub's custom-code
layout of a model transformers cannot run, see MOE_REFERENCE; serve_dir is OUT_DIR.hub).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from transformers import (DistilBertConfig, DistilBertModel, Gemma3TextConfig, Gemma3TextModel, GteConfig, GteModel,
                          ModernBertConfig, ModernBertModel, MPNetConfig, MPNetModel, NomicBertConfig, NomicBertModel,
                          Qwen2Config, Qwen2Model, XLMRobertaConfig, XLMRobertaModel)

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / ".deps" / "all-MiniLM-L6-v2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def identity_dense(i: int, o: int) -> Dense:
    return Dense(i, o, bias=False, activation_function=torch.nn.Identity())


# Each shape: (family, transformers model, pooling mode, Dense modules, Normalize?, config.json
# edits that turn transformers' spelling into the published one). Sizes are the published
# config.json's (repo named in each).

def nomic_embed_text_v15():
    # nomic-ai/nomic-embed-text-v1.5: n_embd 768, n_layer 12, n_head 12, n_inner 3072 (SwiGLU,
    # no biases), vocab 30528, rotary_emb_base 1000, 2048 trained positions; mean pooling.
    cfg = NomicBertConfig(vocab_size=30528, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072, hidden_act="silu", layer_norm_eps=1e-12, type_vocab_size=2,
                          max_position_embeddings=2048, pad_token_id=0,
                          rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    return "nomic_bert", NomicBertModel(cfg), "mean", [], True, {}


def nomic_embed_text_v2_moe():
    # nomic-ai/nomic-embed-text-v2-moe (tests/fixtures/published): n_embd 768, n_layer 12, n_head 12,
    # n_inner 3072, gelu, biased q/k/v and MLP, vocab 250048, rotary_emb_base 10000, type_vocab_size 1,
    # layer_norm_epsilon 1e-5; 8 experts, top 2, in blocks 1, 3, ..., 11; mean pooling. The body built
    # here is transformers' NomicBertModel; main() puts v2-moe's blocks in (MOE_REFERENCE).
    cfg = NomicBertConfig(vocab_size=250048, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-5, type_vocab_size=1,
                          max_position_embeddings=2048, pad_token_id=1,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return "nomic_bert", NomicBertModel(cfg), "mean", [], True, {}


def gte_modernbert_base():
    # Alibaba-NLP/gte-modernbert-base: hidden 768, 22 layers, 12 heads, intermediate 1152 (GeGLU),
    # vocab 50368, every third layer global, local window 128, both thetas 160000; CLS pooling.
    cfg = ModernBertConfig(vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
                           num_attention_heads=12, hidden_activation="gelu", max_position_embeddings=8192,
                           norm_eps=1e-5, local_attention=128, global_attn_every_n_layers=3,
                           global_rope_theta=160000.0, local_rope_theta=160000.0, pad_token_id=0, cls_token_id=101,
                           bos_token_id=101, sep_token_id=102, eos_token_id=102)
    # Published in transformers 4.48's spelling (tests/fixtures/make_modernbert.py `hubify`).
    edits = {"set": {"global_attn_every_n_layers": 3, "global_rope_theta": 160000.0, "local_rope_theta": 160000.0,
                     "position_embedding_type": "absolute"}, "remove": ["layer_types", "rope_parameters"]}
    return "modernbert", ModernBertModel(cfg), "cls", [], True, edits


def gte_multilingual_base():
    # Alibaba-NLP/gte-multilingual-base: hidden 768, 12 layers, 12 heads, intermediate 3072,
    # vocab 250048, 8192 positions; CLS pooling, normalized. Its RoPE (theta 20000 with
    # new-impl's NTK factor 8) is left plain here: transformers' GteModel, which
    # sentence-transformers runs, has no NTK, and the angles cost the same either way.
    cfg = GteConfig(vocab_size=250048, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, hidden_act="gelu", max_position_embeddings=8192, type_vocab_size=1,
                    layer_norm_eps=1e-12, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                    rope_parameters={"rope_type": "default", "rope_theta": 160000.0})
    cfg.architectures = ["GteModel"]
    return "new", GteModel(cfg), "cls", [], True, {}


def all_mpnet_base_v2():
    # sentence-transformers/all-mpnet-base-v2: hidden 768, 12 layers, 12 heads, intermediate 3072,
    # vocab 30527, 514 positions, 32 relative buckets; mean pooling, Normalize.
    cfg = MPNetConfig(vocab_size=30527, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, hidden_act="gelu", max_position_embeddings=514, layer_norm_eps=1e-5,
                      relative_attention_num_buckets=32, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return "mpnet", MPNetModel(cfg), "mean", [], True, {}


def msmarco_distilbert_base_v4():
    # sentence-transformers/msmarco-distilbert-base-v4: dim 768, 6 layers, 12 heads, hidden_dim
    # 3072, vocab 30522, 512 positions; mean pooling.
    cfg = DistilBertConfig(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072,
                           max_position_embeddings=512, activation="gelu", pad_token_id=0)
    return "distilbert", DistilBertModel(cfg), "mean", [], False, {}


def embeddinggemma():
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
    return "gemma3_text", Gemma3TextModel(cfg), "mean", [identity_dense(768, 3072), identity_dense(3072, 768)], True, {}


def gte_qwen2():
    # Alibaba-NLP/gte-Qwen2-1.5B-instruct config.json; last-token pooling, normalized.
    cfg = Qwen2Config(
        vocab_size=151646, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, hidden_act="silu", max_position_embeddings=131072, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, use_sliding_window=False,
        sliding_window=131072, max_window_layers=21, tie_word_embeddings=False)
    cfg.architectures = ["Qwen2Model"]
    return "qwen2", Qwen2Model(cfg), "lasttoken", [], True, {}


def bge_m3():
    # BAAI/bge-m3 config.json: XLM-RoBERTa large (hidden 1024, 24 layers, 16 heads, intermediate
    # 4096, vocab 250002, 8194 positions); CLS pooling, normalized; plus its two heads
    # (bge_m3_heads): sparse_linear Linear(1024, 1) and colbert_linear Linear(1024, 1024).
    cfg = XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           intermediate_size=4096, hidden_act="gelu", max_position_embeddings=8194,
                           type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    cfg.architectures = ["XLMRobertaModel"]
    return "xlm_roberta", XLMRobertaModel(cfg, add_pooling_layer=False), "cls", [], True, {}


def bge_m3_heads(out: Path) -> None:
    """bge-m3's heads beside the weights, as it ships them: `torch.save` of each Linear's
    state_dict, the ColBERT head in float16 (as tests/fixtures/make_bge_m3.py writes them)."""
    sparse, colbert = torch.nn.Linear(1024, 1), torch.nn.Linear(1024, 1024)
    torch.save(sparse.state_dict(), out / "sparse_linear.pt")
    torch.save(colbert.half().state_dict(), out / "colbert_linear.pt")


SHAPES = {
    "nomic-embed-text-v1.5": nomic_embed_text_v15,
    "nomic-embed-text-v2-moe": nomic_embed_text_v2_moe,
    "gte-modernbert-base": gte_modernbert_base,
    "gte-multilingual-base": gte_multilingual_base,
    "all-mpnet-base-v2": all_mpnet_base_v2,
    "msmarco-distilbert-base-v4": msmarco_distilbert_base_v4,
    "embeddinggemma-300m": embeddinggemma,
    "gte-qwen2-1.5b": gte_qwen2,
    "bge-m3": bge_m3,
}


# nomic-embed-text-v2-moe: transformers has no MoE, so sentence-transformers runs NomicBertModel with
# the fixture generator's modules put in (tests/fixtures/nomic_moe_reference.py); OUT_DIR keeps their
# sizes and weights beside the plain body, and bench/serving/library.py puts them back in on load.
MOE_REFERENCE = {"every_n": 2, "experts": 8, "top_k": 2}
MOE_FILES = ("nomic_moe_reference.json", "nomic_moe_reference.safetensors")


def nomic_moe_folders(model, out: Path, hub: Path) -> None:
    """v2-moe's blocks in `model` (seeded init), their weights in OUT_DIR for sentence-transformers,
    and the Hub's layout in `hub` (the published config.json, the checkpoint's tensor names)."""
    from safetensors.torch import save_file  # noqa: PLC0415
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    import nomic_moe_reference as ref  # noqa: PLC0415  (torch modules only, no fixture environment)
    ref.apply_v2_moe(model, **MOE_REFERENCE)
    for m in ref.moe_modules(model):
        torch.nn.init.normal_(m.experts.mlp.w1, std=0.02)
        torch.nn.init.normal_(m.experts.mlp.w2, std=0.02)
    model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if "rotary" not in k}
    save_file(state, str(out / MOE_FILES[1]))
    (out / MOE_FILES[0]).write_text(json.dumps(MOE_REFERENCE) + "\n")
    shutil.copytree(out, hub, ignore=shutil.ignore_patterns("*.safetensors", "nomic_moe_reference.*"))
    save_file(ref.hub_state_dict(model), str(hub / "model.safetensors"), metadata={"format": "pt"})
    published = ROOT / "tests/fixtures/published/nomic-ai/nomic-embed-text-v2-moe/config.json"
    shutil.copy(published, hub / "config.json")


def edit_config(path: Path, edits: dict) -> None:
    cfg = json.loads(path.read_text())
    for k in edits.get("remove", []):
        cfg.pop(k, None)
    cfg.update(edits.get("set", {}))
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def main() -> None:
    shape, out = sys.argv[1], Path(sys.argv[2])
    torch.manual_seed(0)
    family, model, pooling, dense, normalize, edits = SHAPES[shape]()
    body = out.with_name(out.name + ".transformer")
    hub = out.with_name(out.name + ".hub")
    for d in (out, body, hub):
        if d.exists():
            shutil.rmtree(d)
    model.eval().save_pretrained(str(body))
    for f in TOKENIZER_FILES:
        shutil.copy(TOKENIZER / f, body / f)
    if edits:
        edit_config(body / "config.json", edits)
    t = Transformer(str(body), max_seq_length=512)
    modules = [t, Pooling(t.get_embedding_dimension(), pooling_mode=pooling), *dense]
    st = SentenceTransformer(modules=modules + ([Normalize()] if normalize else []), device="cpu")
    st.save(str(out))
    shutil.rmtree(body)
    serve = out
    if shape == "nomic-embed-text-v2-moe":
        nomic_moe_folders(model, out, hub)
        serve = hub
    if shape == "bge-m3":
        bge_m3_heads(out)
    if family == "new":
        # The Hub's layout, written and read back by the fixture generator's own code.
        sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
        import make_new  # noqa: PLC0415  (sets the fixture environment: only in this process)
        make_new.write_new_fixture(out, hub, "NewModel", "", GteModel)
        serve = hub
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"shape": shape, "family": family, "parameters": params, "st_dir": str(out),
                      "serve_dir": str(serve)}))


if __name__ == "__main__":
    main()
