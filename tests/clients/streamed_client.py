"""The official `openai` Python client, unmodified, sends one request of many mixed-length
inputs to a server whose `limits.max_inputs_per_request` (the size of a streamed piece) is
far smaller: the answer, streamed piece by piece (docs/long-documents.md, "Limits"), has
every input's vector in order, each equal to the one of the same text sent in a request
of its own, and usage summing theirs; asked as base64 (the package's default) and as float.

Usage: python streamed_client.py BASE_URL COUNT. The server has all-MiniLM-L6-v2 and no
embedding cache (so the lone requests compute their vectors again). Exits non-zero on any
mismatch; prints the figures."""
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai

from check import check

base, count = sys.argv[1], int(sys.argv[2])
MODEL = "all-MiniLM-L6-v2"
rng = random.Random(27)
words = ("river mountain quietly engine library harvest silver window theory market ancient signal garden "
         "protocol winter citizen orbit lantern measure forest").split()
# 1 to 40 words, and every 97th text past the model's 256-token window (truncated).
texts = [" ".join(rng.choice(words) for _ in range(300 if i % 97 == 0 else rng.randint(1, 40))) + f" #{i}"
         for i in range(count)]

client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
start = time.monotonic()
b64 = client.embeddings.create(model=MODEL, input=texts)  # the package asks base64 and decodes it
streamed_s = time.monotonic() - start
floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
for r in (b64, floats):
    check(len(r.data) == count, len(r.data))
    check([d.index for d in r.data] == list(range(count)), "indices out of order")
    check(r.model == MODEL, r.model)


def alone(text):
    r = client.embeddings.create(model=MODEL, input=text, encoding_format="float")
    return np.asarray(r.data[0].embedding, dtype=np.float64), r.usage.prompt_tokens


with ThreadPoolExecutor(8) as pool:
    lone = list(pool.map(alone, texts))
reference = np.stack([v for v, _ in lone])
tokens = sum(t for _, t in lone)
worst = 1.0
for r in (b64, floats):
    got = np.asarray([d.embedding for d in r.data], dtype=np.float64)
    check(got.shape == reference.shape, got.shape)
    cos = np.sum(got * reference, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    worst = min(worst, float(cos.min()))
    check(cos.min() >= 0.99999, "input", int(cos.argmin()), "cosine", float(cos.min()))
    check(r.usage.prompt_tokens == tokens and r.usage.total_tokens == tokens, r.usage, tokens)
print(f"openai {openai.__version__}: {count} inputs streamed ({streamed_s:.1f} s), base64 and float, "
      f"{tokens} tokens; lowest cosine to the lone vector {worst:.7f}")
