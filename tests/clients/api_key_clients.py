"""The official clients, unmodified, against a server that requires an API key: each one's
own way to pass a key works, a wrong or missing key is the client's authentication error.

Usage: python api_key_clients.py BASE_URL KEY EMBED_MODEL RERANK_MODEL. Exits non-zero on
any mismatch. Without the cohere package the last line does not list cohere, and
tests/access.rs fails unless MLX_SERVE_TEST_ALLOW_MISSING names it (tests/common/tools.rs)."""
import sys

import ollama
import openai
from openai import OpenAI

from check import check

base, key, model, reranker = sys.argv[1:5]

# openai: api_key= becomes `Authorization: Bearer <key>`.
good = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
check(len(good.embeddings.create(model=model, input="hello").data[0].embedding) > 0)
try:
    OpenAI(base_url=base + "/v1", api_key="wrong-key", max_retries=0).embeddings.create(model=model, input="hello")
    raise SystemExit("openai: a wrong key was accepted")
except openai.AuthenticationError as e:
    check(e.status_code == 401 and e.code == "invalid_api_key", (e.status_code, e.code))

# ollama: no api_key argument; headers= is how its docs pass credentials.
authed = ollama.Client(host=base, headers={"Authorization": f"Bearer {key}"})
check(len(authed.embed(model=model, input="hello").embeddings) == 1)
try:
    ollama.Client(host=base).embed(model=model, input="hello")
    raise SystemExit("ollama: a request without the key was accepted")
except ollama.ResponseError as e:
    check(e.status_code == 401, e.status_code)

checked = ["openai", "ollama"]
try:
    import cohere
except ImportError:
    cohere = None
if cohere is not None:
    # cohere: ClientV2(api_key=...) sends the bearer key to POST /v2/rerank.
    co = cohere.ClientV2(api_key=key, base_url=base)
    res = co.rerank(model=reranker, query="what is mlx?", documents=["MLX is an array framework", "bananas"])
    check(sorted(r.index for r in res.results) == [0, 1], res)
    try:
        cohere.ClientV2(api_key="wrong-key", base_url=base).rerank(model=reranker, query="q", documents=["d"])
        raise SystemExit("cohere: a wrong key was accepted")
    except cohere.errors.UnauthorizedError:
        pass
    checked.append("cohere")
print("api key:", ", ".join(checked), "OK")
