"""Real clients, unmodified, send a 20,000-word document to a server whose config chunks by
default (models.chunking.enabled: true): langchain-openai's OpenAIEmbeddings with text input
(check_embedding_ctx_length=False, as docs/api.md asks) gets one unit vector per document
instead of an error or a truncated vector, equal to the one the `openai` client gets with
`chunking: true` sent explicitly; `chunks` and `usage` come back through the `openai` client.

Usage: python long_document_client.py BASE_URL. The server has all-MiniLM-L6-v2.
Exits non-zero on any mismatch."""
import random
import sys

import numpy as np
import openai
from langchain_openai import OpenAIEmbeddings

from check import check

base = sys.argv[1]
MODEL = "all-MiniLM-L6-v2"
random.seed(27)
words = ("the of and to in a is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there been one all we their has would when if so no will more").split()
doc = " ".join(random.choice(words) for _ in range(20000))

emb = OpenAIEmbeddings(model=MODEL, base_url=base + "/v1", api_key="unused", check_embedding_ctx_length=False)
got = np.asarray(emb.embed_documents([doc, "a short text"]), dtype=np.float64)
check(got.shape == (2, 384), got.shape)
check(np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5), np.linalg.norm(got, axis=1))

client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
r = client.embeddings.create(model=MODEL, input=[doc], extra_body={"chunking": True})
chunks = r.data[0].model_extra["chunks"]
check(chunks > 50, chunks)
check(r.usage.prompt_tokens > 20000, r.usage)
explicit = np.asarray(r.data[0].embedding, dtype=np.float64)
distance = 1.0 - float(explicit @ got[0] / np.linalg.norm(explicit))
check(distance < 1e-5, distance)
truncated = client.embeddings.create(model=MODEL, input=[doc], extra_body={"truncate": True})
check(truncated.data[0].model_extra.get("chunks") is None, truncated.data[0])
check(truncated.usage.prompt_tokens == 256, truncated.usage)
print(f"langchain-openai and openai {openai.__version__}: a 20,000-word document is {chunks} windows, "
      f"{r.usage.prompt_tokens} tokens, one vector (cosine distance {distance:.1e} to the explicit request)")
