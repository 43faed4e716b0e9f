"""The official `cohere` Python client, unmodified, reranking with a PyLate ColBERT model.

Usage: python cohere_colbert_rerank.py BASE_URL PYLATE_REFERENCE MODEL. The server has the tiny
PyLate fixture installed as MODEL; scores and order are compared with PyLate's own
`rank.rerank` (`rerank` of the reference, tests/fixtures/make_pylate.py). Exits non-zero on any
mismatch."""
import json
import sys

import cohere

from check import check

base, ref_path, model = sys.argv[1:4]
ref = json.load(open(ref_path, encoding="utf-8"))
v2 = cohere.ClientV2(api_key="unused", base_url=base)
v1 = cohere.Client(api_key="unused", base_url=base)
TOL = 1e-4  # float32 PyLate vs MLX float32

for query, ranked in zip(ref["queries"], ref["rerank"]):
    resp = v2.rerank(model=model, query=query, documents=ref["documents"])
    check([r.index for r in resp.results] == [r["index"] for r in ranked], (query, resp.results, ranked))
    for got, want in zip(resp.results, ranked):
        check(abs(got.relevance_score - want["score"]) <= TOL, (query, got, want))
    resp = v1.rerank(model=model, query=query, documents=ref["documents"], top_n=2)
    check([r.index for r in resp.results] == [r["index"] for r in ranked[:2]], (query, resp.results))
print(f"cohere {cohere.__version__}: v2 and v1 rerank by PyLate MaxSim ({len(ref['queries'])} queries) OK")
