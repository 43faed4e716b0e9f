"""huggingface_hub's InferenceClient, unmodified, against mlx-serve's TEI routes.

Usage: python hf_client.py BASE_URL REFERENCE_JSON. The server has one embedding model
installed (tiny-qwen3-embed), so requests name none, as with TEI. Every vector, and every
sentence_similarity cosine, is compared with the sentence-transformers reference (REFERENCE_JSON, tests/fixtures/reference/).
Exits non-zero on any mismatch."""
import json
import sys

import huggingface_hub
import numpy as np
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from check import check

base, ref_path = sys.argv[1], sys.argv[2]
ref = json.load(open(ref_path, encoding="utf-8"))
client = InferenceClient(base_url=base)


def close(got, want, what):
    got, want = np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32)
    check(got.shape == want.shape, (what, got.shape, want.shape))
    diff = float(np.max(np.abs(got - want)))
    check(diff <= 1e-4, (what, diff))


# Plain texts: the reference's own cases, each a batch (feature_extraction posts {"inputs": [...]} to /).
for case in ref["cases"]:
    texts = [t for t in case["texts"] if t]
    if len(texts) != len(case["texts"]):
        continue
    close(client.feature_extraction(texts), case["embeddings"], case["name"])
# One string gives one row.
single = client.feature_extraction(ref["cases"][0]["texts"][0])
close(single, ref["cases"][0]["embeddings"][:1], "single string")

# prompt_name selects the model's own prompt (config_sentence_transformers.json), exactly as
# SentenceTransformer.encode(texts, prompt_name=...) does.
for case in ref["prompt_cases"]:
    got = client.feature_extraction(case["texts"], prompt_name=case["prompt_name"])
    close(got, case["embeddings"], case["name"])
# normalize (default true) and truncate pass through; dimensions truncates and renormalizes.
q = ref["prompt_cases"][0]
got = client.feature_extraction(q["texts"], prompt_name="query", normalize=True, truncate=True, dimensions=16)
want = np.asarray(q["embeddings"], dtype=np.float32)[:, :16]
close(got, want / np.linalg.norm(want, axis=1, keepdims=True), "dimensions=16")

# sentence_similarity posts {"inputs": {"source_sentence", "sentences"}} to the root route:
# the cosine of each sentence's embedding to the source's, as sentence-transformers'
# util.cos_sim of the reference vectors.
def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


compared = 0
for case in ref["cases"]:
    texts = case["texts"]
    if len(texts) < 2 or not all(texts):
        continue
    got = client.sentence_similarity(texts[0], other_sentences=texts[1:])
    want = [cosine(case["embeddings"][0], e) for e in case["embeddings"][1:]]
    check(len(got) == len(want), (case["name"], got, want))
    diff = max(abs(g - w) for g, w in zip(got, want))
    check(diff <= 1e-4, ("sentence_similarity", case["name"], got, want, diff))
    compared += 1
check(compared > 0, "the reference has no case with two or more texts")

# A prompt the model does not have is an error that lists the ones it has.
try:
    client.feature_extraction("x", prompt_name="passage")
    raise SystemExit("expected an error for an unknown prompt_name")
except HfHubHTTPError as e:
    check(e.response.status_code == 400, e.response.status_code)
    body = e.response.json()
    check(body["error_type"] == "Validation", body)
    check("passage" in body["error"] and "document, query" in body["error"], body)

print(f"huggingface_hub {huggingface_hub.__version__}: feature_extraction (plain, prompt_name, dimensions, errors), sentence_similarity OK")
