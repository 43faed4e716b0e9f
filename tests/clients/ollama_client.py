"""The official `ollama` Python client, unmodified, against mlx-serve's Ollama API.

Usage: python ollama_client.py BASE_URL MODEL. Exits non-zero on any mismatch."""
import sys

import numpy as np
import ollama

from check import check

base, model = sys.argv[1], sys.argv[2]
client = ollama.Client(host=base)
resp = client.embed(model=model, input=["hello from ollama", "second input"])
check(len(resp.embeddings) == 2 and len(resp.embeddings[0]) == 384)
check(abs(np.linalg.norm(resp.embeddings[0]) - 1) < 1e-4)
single = client.embed(model=model, input="hello from ollama")
check(np.allclose(single.embeddings[0], resp.embeddings[0], atol=1e-5))
check(resp.prompt_eval_count and resp.prompt_eval_count > 0)
names = [m.model for m in client.list().models]
check(model in names, names)
try:
    client.embed(model="no-such-model", input="x")
    raise SystemExit("expected ResponseError")
except ollama.ResponseError as e:
    check(e.status_code == 404, e.status_code)
print("ollama client: embed (list and single), list, 404 OK")
