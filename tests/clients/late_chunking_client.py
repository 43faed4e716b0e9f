"""The official `openai` Python client, unmodified, asks mlx-serve for late chunking through
`extra_body` (docs/long-documents.md) and reads each chunk's vector and span back from the
item's extra fields, with float and with base64 output (the client's default, which it
decodes for `embedding` only: chunk vectors come as base64 strings of little-endian
float32 then). The chunk vectors are compared with POST /v1/late_chunking's.

Usage: python late_chunking_client.py BASE_URL. The server has all-MiniLM-L6-v2.
Exits non-zero on any mismatch."""
import base64
import json
import sys
import urllib.request

import numpy as np
import openai

from check import check

base = sys.argv[1]
MODEL = "all-MiniLM-L6-v2"
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
doc = ("The json module encodes and decodes JSON.\n\nIts dumps function returns a string.\n\n"
       "Its loads function parses one back.")

r = client.embeddings.create(model=MODEL, input=[doc, doc[:40]], encoding_format="float",
                             extra_body={"late_chunking": {"separator": "\n\n"}})
check(len(r.data) == 2, r.data)
chunks = r.data[0].model_extra["late_chunks"]
check([c["span"] for c in chunks] == [[0, 41], [43, 79], [81, 116]], [c["span"] for c in chunks])
check(len(r.data[1].model_extra["late_chunks"]) == 1)
check(r.model_extra["chunk_pooling"] == "mean", r.model_extra)
whole = np.asarray(r.data[0].embedding)
check(whole.shape == (384,) and abs(np.linalg.norm(whole) - 1) < 1e-5)

# The client's default: base64. It decodes `embedding`; chunk vectors are base64 too.
b = client.embeddings.create(model=MODEL, input=doc, extra_body={"late_chunking": {"separator": "\n\n"}})
check(np.allclose(b.data[0].embedding, whole, atol=1e-6))
decoded = [np.frombuffer(base64.b64decode(c["embedding"]), dtype="<f4") for c in b.data[0].model_extra["late_chunks"]]
floats = [np.asarray(c["embedding"]) for c in chunks]
check(all(np.allclose(d, f, atol=1e-6) for d, f in zip(decoded, floats)))

# The same chunks from the route of its own.
req = urllib.request.Request(base + "/v1/late_chunking", method="POST", headers={"content-type": "application/json"},
                             data=json.dumps({"model": MODEL, "input": doc, "separator": "\n\n"}).encode())
own = json.load(urllib.request.urlopen(req))
check(all(np.allclose(o["embedding"], f, atol=1e-6) for o, f in zip(own["data"], floats)))
# Chunks know their document: each differs from the chunk's text embedded alone.
alone = client.embeddings.create(model=MODEL, input=doc[43:79], encoding_format="float").data[0].embedding
check(float(np.dot(alone, floats[1])) < 0.999, np.dot(alone, floats[1]))
print(f"openai {openai.__version__}: {len(chunks)} chunks read back through extra_body (float and base64); "
      f"chunk 1 vs its text alone: cosine {float(np.dot(alone, floats[1])):.4f}")
