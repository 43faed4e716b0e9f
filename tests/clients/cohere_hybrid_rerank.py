"""The official `cohere` Python client, unmodified, reranking with bge-m3's weighted scores.

Usage: python cohere_hybrid_rerank.py BASE_URL BGE_M3_REFERENCE MODEL. The server has the
tiny bge-m3 fixture installed as MODEL. The extension fields (`weights`, `return_scores`) go
in the client's documented `request_options={"additional_body_parameters": ...}`; scores are
compared with BGEM3FlagModel.compute_score's (`rerank_cases` of the reference), and the
extra `scores` of each result are read back through the client's response model. Exits
non-zero on any mismatch."""
import json
import sys

import cohere

from check import check

base, ref_path, model = sys.argv[1:4]
ref = json.load(open(ref_path, encoding="utf-8"))
v2 = cohere.ClientV2(api_key="unused", base_url=base)
v1 = cohere.Client(api_key="unused", base_url=base)
TOL = 1e-4  # float32 reference vs MLX float32
NAMES = ("dense", "sparse", "colbert")

for case in ref["rerank_cases"]:
    weights = case["weights"]
    extra = {"return_scores": True}
    if weights is not None:
        extra["weights"] = dict(zip(NAMES, weights))
    want = case["scores"]["colbert+sparse+dense"]
    order = sorted(range(len(want)), key=lambda i: (-want[i], i))
    resp = v2.rerank(model=model, query=case["query"], documents=case["documents"],
                     request_options={"additional_body_parameters": extra})
    check(resp.meta.api_version.version == "2", resp.meta)
    check([r.index for r in resp.results] == order, (weights, [r.index for r in resp.results], order))
    for r in resp.results:
        check(abs(r.relevance_score - want[r.index]) <= TOL, (weights, r, want[r.index]))
        parts = r.scores  # the extension, kept by the client's response model
        for name in NAMES:
            check(abs(parts[name] - case["scores"][name][r.index]) <= TOL, (weights, name, r.index, parts))
    # v1 with top_n: the best documents, in order.
    resp = v1.rerank(model=model, query=case["query"], documents=case["documents"], top_n=3,
                     request_options={"additional_body_parameters": extra})
    check([r.index for r in resp.results] == order[:3], (weights, resp.results))

# A weight on a head the model lacks is a typed 400 naming it.
try:
    v2.rerank(model="tiny-xlmr-embed", query="q", documents=["d"],
              request_options={"additional_body_parameters": {"weights": {"colbert": 1}}})
    raise SystemExit("expected BadRequestError")
except cohere.errors.BadRequestError as err:
    check("colbert_linear" in json.dumps(err.body), err.body)
print(f"cohere {cohere.__version__}: v2 and v1 rerank with bge-m3 weights ({len(ref['rerank_cases'])} cases) OK")
