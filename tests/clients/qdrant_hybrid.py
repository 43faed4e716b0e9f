"""A hybrid-search round trip into qdrant-client's local mode (no Qdrant server), unmodified.

Usage: python qdrant_hybrid.py BASE_URL REFERENCE_JSON MODEL. MODEL is a bge-m3-shaped model
whose reference (tests/fixtures/reference/tiny-bge-m3.json, BGEM3FlagModel's arithmetic on
the same weights) holds the dense and sparse vectors of every text used here.

The reference texts are split into queries and a corpus. The corpus is stored twice, with
dense + sparse vectors from mlx-serve (`/v1/embeddings` with `return_sparse`, the queries
embedded the same way) and with the reference's vectors; each query is a fused search
(prefetch dense and sparse, Reciprocal Rank Fusion), as docs/hybrid-search.md shows. The
served search must find what the reference search finds: recall@K 1.0, in the same order.
Exits non-zero on any mismatch."""
import json
import sys
from importlib.metadata import version

import httpx
import numpy as np
from qdrant_client import QdrantClient, models

from check import check

base, ref_path, model = sys.argv[1:4]
ref = json.load(open(ref_path, encoding="utf-8"))
K = 3

# Every reference text with its dense vector and sparse weights ({token id: weight}).
texts, dense, sparse = [], [], []
for case in ref["cases"]:
    for i, text in enumerate(case["texts"]):
        texts.append(text)
        dense.append(case["embeddings"][i])
        sparse.append({int(k): v for k, v in case["sparse"][i].items()})
# The short texts ask; the rest (longer ones among them) are searched.
query_ids = [i for i, t in enumerate(texts) if t in ("hello world", "cats", "What is the capital of France?")]
corpus_ids = [i for i in range(len(texts)) if i not in query_ids]
check(len(query_ids) == 3 and len(corpus_ids) > K, (len(query_ids), len(corpus_ids)))


def served(batch):
    """Dense and sparse vectors from mlx-serve for `batch`, in one request."""
    r = httpx.post(f"{base}/v1/embeddings", json={"model": model, "input": batch, "return_sparse": True}, timeout=120)
    check(r.status_code == 200, r.status_code, r.text[:500])
    data = r.json()["data"]
    out = []
    for item in data:
        sp = item["sparse_embedding"]
        check(sp["indices"] == sorted(sp["indices"]), "sparse indices ascending", sp["indices"])
        out.append((item["embedding"], dict(zip(sp["indices"], sp["values"]))))
    return out


served_vectors = served(texts)
dim = len(dense[0])
db = QdrantClient(":memory:")


def sparse_vector(weights):
    ids = sorted(weights)
    return models.SparseVector(indices=ids, values=[weights[i] for i in ids])


def store(name, vectors):
    db.create_collection(
        name,
        vectors_config={"dense": models.VectorParams(size=dim, distance=models.Distance.COSINE)},
        sparse_vectors_config={"sparse": models.SparseVectorParams()},
    )
    db.upsert(name, [
        models.PointStruct(id=i, payload={"text": texts[i]},
                           vector={"dense": vectors[i][0], "sparse": sparse_vector(vectors[i][1])})
        for i in corpus_ids
    ])


def hybrid(name, query):
    """The ids of the top K points of a dense + sparse search fused with RRF."""
    hits = db.query_points(
        name,
        prefetch=[
            models.Prefetch(query=query[0], using="dense", limit=K * 2),
            models.Prefetch(query=sparse_vector(query[1]), using="sparse", limit=K * 2),
        ],
        query=models.FusionQuery(fusion=models.Fusion.RRF),
        limit=K,
    ).points
    return [h.id for h in hits]


def dense_only(name, query):
    return [h.id for h in db.query_points(name, query=query[0], using="dense", limit=K).points]


reference_vectors = list(zip(dense, sparse))
store("served", served_vectors)
store("reference", reference_vectors)

recalls = []
for q in query_ids:
    want = hybrid("reference", reference_vectors[q])
    got = hybrid("served", served_vectors[q])
    check(len(want) == K, ("reference search", texts[q], want))
    recalls.append(len(set(got) & set(want)) / K)
    check(got == want, ("fused search", texts[q], "served", got, "reference", want))
    # The database did search: its dense ranking is the brute-force cosine ranking of the
    # reference vectors (numpy, independent of Qdrant).
    a = np.asarray([dense[i] for i in corpus_ids], dtype=np.float64)
    qv = np.asarray(dense[q], dtype=np.float64)
    cos = a @ qv / (np.linalg.norm(a, axis=1) * np.linalg.norm(qv))
    brute = [corpus_ids[j] for j in np.argsort(-cos, kind="stable")[:K]]
    check(dense_only("reference", reference_vectors[q]) == brute, ("dense ranking", texts[q], brute))
    check(dense_only("served", served_vectors[q]) == brute, ("served dense ranking", texts[q], brute))

recall = sum(recalls) / len(recalls)
check(recall == 1.0, ("recall", recalls))
print(f"qdrant-client {version('qdrant-client')}: "
      f"{len(query_ids)} fused dense+sparse queries over {len(corpus_ids)} texts, recall@{K} {recall:.2f} "
      f"against the reference vectors OK")
