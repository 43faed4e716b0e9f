"""SPLADE vectors into qdrant-client's local mode (no Qdrant server), unmodified.

Usage: python qdrant_splade.py BASE_URL REFERENCE_JSON MODEL. MODEL is a SPLADE model whose
reference (tests/fixtures/reference/tiny-bert-splade.json, SparseEncoder.encode on the same
weights) holds the sparse vector of every text used here.

The reference texts are split into queries and a corpus. The corpus is stored twice, with
sparse vectors from mlx-serve (TEI's `/embed_sparse`, the queries embedded the same way) and
with the reference's; each query is a sparse search (dot product, SparseEncoder's similarity).
The served search must find what the reference search finds, in the same order, and both
must be the brute-force dot-product ranking (numpy, independent of Qdrant).
Exits non-zero on any mismatch."""
import json
import sys
from importlib.metadata import version

import httpx
from qdrant_client import QdrantClient, models

from check import check

base, ref_path, model = sys.argv[1:4]
ref = json.load(open(ref_path, encoding="utf-8"))
K = 3

texts, sparse = [], []
for case in ref["cases"]:
    for i, text in enumerate(case["texts"]):
        # Cases repeat texts (the long passage): each once, so no two points tie.
        if text not in texts:
            texts.append(text)
            sparse.append({int(k): v for k, v in case["sparse"][i].items()})
query_ids = [i for i, t in enumerate(texts) if t in ("hello world", "cats", "What is the capital of France?")]
corpus_ids = [i for i in range(len(texts)) if i not in query_ids]
check(len(query_ids) == 3 and len(corpus_ids) > K, (len(query_ids), len(corpus_ids)))

r = httpx.post(f"{base}/embed_sparse", json={"model": model, "inputs": texts}, timeout=120)
check(r.status_code == 200, r.status_code, r.text[:500])
served = [{p["index"]: p["value"] for p in item} for item in r.json()]
check(len(served) == len(texts), len(served))

db = QdrantClient(":memory:")


def vector(weights):
    ids = sorted(weights)
    return models.SparseVector(indices=ids, values=[weights[i] for i in ids])


def store(name, vectors):
    db.create_collection(name, vectors_config={}, sparse_vectors_config={"splade": models.SparseVectorParams()})
    db.upsert(name, [models.PointStruct(id=i, payload={"text": texts[i]}, vector={"splade": vector(vectors[i])})
                     for i in corpus_ids])


def search(name, query):
    return [h.id for h in db.query_points(name, query=vector(query), using="splade", limit=K).points]


def dot(a, b):
    return sum(w * b[t] for t, w in a.items() if t in b)


store("served", served)
store("reference", sparse)
for q in query_ids:
    want = search("reference", sparse[q])
    got = search("served", served[q])
    brute = sorted(corpus_ids, key=lambda i: -dot(sparse[q], sparse[i]))[:K]
    check(want == brute, ("reference search", texts[q], want, "brute force", brute))
    check(got == want, ("served search", texts[q], got, "reference", want))
print(f"qdrant-client {version('qdrant-client')}: {len(query_ids)} SPLADE sparse queries over "
      f"{len(corpus_ids)} texts, recall@{K} 1.00 in the reference's order OK")
