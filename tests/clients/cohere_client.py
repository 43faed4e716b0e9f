"""The official `cohere` Python client, unmodified, against mlx-serve's Cohere routes.

Usage: python cohere_client.py BASE_URL EMBED_REFERENCE RERANK_REFERENCE. The server has
tiny-qwen3-embed and tiny-bert-rerank installed. Vectors are compared with
sentence-transformers' (the `prompt_cases` of the embedding reference: `encode(texts,
prompt_name=...)` and `quantize_embeddings` of those vectors); rerank scores with
CrossEncoder's. Exits non-zero on any mismatch."""
import json
import sys

import cohere
import numpy as np

from check import check

base, embed_ref_path, rerank_ref_path = sys.argv[1:4]
embed_ref = json.load(open(embed_ref_path, encoding="utf-8"))
rerank_ref = json.load(open(rerank_ref_path, encoding="utf-8"))
prompts = {c["prompt_name"]: c for c in embed_ref["prompt_cases"]}
v2 = cohere.ClientV2(api_key="unused", base_url=base)
v1 = cohere.Client(api_key="unused", base_url=base)
MODEL = "tiny-qwen3-embed"
TOL = 1e-4  # float32 reference vs MLX float32


def floats_close(got, want, what):
    got, want = np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32)
    check(got.shape == want.shape, (what, got.shape, want.shape))
    check(float(np.max(np.abs(got - want))) <= TOL, (what, float(np.max(np.abs(got - want)))))


def bits_match(got_packed, want_packed, ref_floats, dtype, what):
    """Packed sign bits equal, except where the reference component is within TOL of 0
    (where float32 rounding in two implementations may disagree on the sign)."""
    unpack = lambda a: np.unpackbits(np.asarray(a, dtype=dtype).view(np.uint8), axis=-1)
    got, want = unpack(got_packed), unpack(want_packed)
    check(got.shape == want.shape, (what, got.shape, want.shape))
    ref = np.asarray(ref_floats, dtype=np.float32)
    differ = got[:, : ref.shape[1]] != want[:, : ref.shape[1]]
    check(np.all(np.abs(ref[differ]) <= TOL), (what, ref[differ]))
    check(np.all(got[:, ref.shape[1]:] == 0), (what, "padding bits"))


def levels_match(got, want, ref_floats, what):
    """int8/uint8 levels over [-1, 1] equal, except by one level next to a bucket edge."""
    got, want = np.asarray(got, dtype=np.int64), np.asarray(want, dtype=np.int64)
    check(got.shape == want.shape, (what, got.shape, want.shape))
    differ = got != want
    check(np.all(np.abs(got - want) <= 1), what)
    ref = np.asarray(ref_floats, dtype=np.float32)[differ]
    edge = (ref + 1) / np.float32(2 / 255)
    check(np.all(np.abs(edge - np.round(edge)) * np.float32(2 / 255) <= TOL), (what, ref))


# v2 embed, every type at once; input_type search_query selects the model's `query` prompt.
case = prompts["query"]
resp = v2.embed(model=MODEL, texts=case["texts"], input_type="search_query",
                embedding_types=["float", "binary", "ubinary", "int8", "uint8", "base64"])
check(resp.id and resp.meta.api_version.version == "2" and resp.meta.billed_units.input_tokens > 0, resp)
check(resp.texts == case["texts"])
e = resp.embeddings
floats_close(e.float_, case["embeddings"], "v2 float search_query")
q = case["quantized"]
bits_match(e.binary, q["binary"], case["embeddings"], np.int8, "binary")
bits_match(e.ubinary, q["ubinary"], case["embeddings"], np.uint8, "ubinary")
levels_match(e.int8, q["int8"], case["embeddings"], "int8")
levels_match(e.uint8, q["uint8"], case["embeddings"], "uint8")
import base64
b64 = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in e.base64])
floats_close(b64, case["embeddings"], "base64")

# search_document: the model's `document` prompt (empty for Qwen3-Embedding).
doc = prompts["document"]
resp = v2.embed(model=MODEL, texts=doc["texts"], input_type="search_document", embedding_types=["float"])
floats_close(resp.embeddings.float_, doc["embeddings"], "v2 float search_document")
# Binary only: the packed bits of the same vectors.
resp = v2.embed(model=MODEL, texts=doc["texts"], input_type="search_document", embedding_types=["binary"])
check(resp.embeddings.float_ is None)
bits_match(resp.embeddings.binary, doc["quantized"]["binary"], doc["embeddings"], np.int8, "binary only")

# v1 embed without embedding_types: `embeddings_floats`, a plain list of vectors.
resp = v1.embed(model=MODEL, texts=case["texts"], input_type="search_query")
check(resp.response_type == "embeddings_floats", resp.response_type)
floats_close(resp.embeddings, case["embeddings"], "v1 floats")

# Errors are typed exceptions with Cohere's {"message"} body.
try:
    v2.embed(model=MODEL, texts=["x"], input_type="search_query", truncate="START")
    raise SystemExit("expected BadRequestError")
except cohere.errors.BadRequestError as err:
    check("START" in err.body["message"], err.body)

# v2 rerank: Cohere's id and meta, scores as CrossEncoder's.
rcase = rerank_ref["cases"][0]
resp = v2.rerank(model="tiny-bert-rerank", query=rcase["query"], documents=rcase["documents"])
check(resp.id and resp.meta.api_version.version == "2", resp)
check(len(resp.results) == len(rcase["documents"]))
for r in resp.results:
    check(abs(r.relevance_score - rcase["scores"][r.index]) <= TOL, (r, rcase["scores"][r.index]))
print(f"cohere {cohere.__version__}: v2 embed (float, binary, ubinary, int8, uint8, base64), v1 embed, errors, v2 rerank OK")
