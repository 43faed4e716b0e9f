"""The official `openai` Python client, unmodified, against mlx-serve's /v1/embeddings.

Usage: python openai_client.py BASE_URL MODEL. Exits non-zero on any mismatch."""
import json
import sys
import urllib.request

import numpy as np
import openai
from openai import OpenAI

from check import check

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key="not-needed", max_retries=0)
text = "Embeddings from MLX behind the OpenAI API."

# Default call: the client asks for base64 and decodes little-endian float32 itself.
default = client.embeddings.create(model=model, input=text)
v = np.array(default.data[0].embedding, dtype=np.float32)
check(v.shape == (384,), v.shape)
check(abs(np.linalg.norm(v) - 1) < 1e-4, np.linalg.norm(v))
check(default.usage.prompt_tokens > 0 and default.usage.total_tokens == default.usage.prompt_tokens)

# encoding_format="float" gives the same vector; a list keeps its order.
floats = client.embeddings.create(model=model, input=[text, "something else"], encoding_format="float")
check([d.index for d in floats.data] == [0, 1])
check(np.allclose(floats.data[0].embedding, v, atol=1e-6))
check(not np.allclose(floats.data[1].embedding, v, atol=1e-2))

# dimensions: truncate then L2-renormalize.
short = np.array(client.embeddings.create(model=model, input=text, dimensions=64).data[0].embedding)
check(short.shape == (64,))
check(np.allclose(short, v[:64] / np.linalg.norm(v[:64]), atol=1e-5))

# Token-id input: the ids /v1/tokenize returns embed to the same vector as the text.
req = urllib.request.Request(base + "/v1/tokenize", data=json.dumps({"model": model, "input": text}).encode(),
                             headers={"content-type": "application/json"})
ids = json.load(urllib.request.urlopen(req))["data"][0]["token_ids"]
by_ids = client.embeddings.create(model=model, input=[ids], encoding_format="float")
check(np.allclose(by_ids.data[0].embedding, v, atol=1e-5))

# Errors surface as the client's typed exceptions.
try:
    client.embeddings.create(model="no-such-model", input=text)
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError as e:
    check("does not exist" in str(e))
try:
    client.embeddings.create(model=model, input=text, dimensions=4096)
    raise SystemExit("expected BadRequestError")
except openai.BadRequestError:
    pass
print(f"openai {openai.__version__}: default(base64), float, dimensions, token ids, errors OK")
