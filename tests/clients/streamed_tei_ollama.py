"""huggingface_hub's `InferenceClient.feature_extraction` (TEI's `/embed` route, posted to
`/`) and the `ollama` package's `Client.embed` (`/api/embed`), unmodified, each send one
request of many mixed-length texts to a server whose `limits.max_inputs_per_request` (the
size of a streamed piece) is far smaller: the streamed answer (docs/long-documents.md,
"Streamed requests") has every text's vector in order, each equal to the one of the same
text sent alone; Ollama's `prompt_eval_count` sums the lone requests' and `dimensions`
cuts every row.

Usage: python streamed_tei_ollama.py BASE_URL COUNT. The server has all-MiniLM-L6-v2 and no
embedding cache. Exits non-zero on any mismatch; prints the figures."""
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import huggingface_hub
import numpy as np
import ollama
from huggingface_hub import InferenceClient

from check import check

base, count = sys.argv[1], int(sys.argv[2])
MODEL = "all-MiniLM-L6-v2"
rng = random.Random(31)
words = ("copper meadow swiftly kernel archive autumn velvet doorway method bazaar ancient beacon orchard "
         "compiler summer harbor comet candle ledger canyon").split()
# 1 to 40 words, and every 89th text past the model's 256-token window (truncated).
texts = [" ".join(rng.choice(words) for _ in range(300 if i % 89 == 0 else rng.randint(1, 40))) + f" #{i}"
         for i in range(count)]

tei = InferenceClient(base_url=base)
olla = ollama.Client(host=base)


def cosines(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    check(got.shape == want.shape, got.shape, want.shape)
    return np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))


start = time.monotonic()
tei_all = tei.feature_extraction(texts)
tei_s = time.monotonic() - start
start = time.monotonic()
olla_all = olla.embed(model=MODEL, input=texts)
olla_s = time.monotonic() - start
cut = olla.embed(model=MODEL, input=texts, dimensions=64)


def alone(text):
    r = olla.embed(model=MODEL, input=[text])
    return r.embeddings[0], r.prompt_eval_count, tei.feature_extraction([text])[0]


with ThreadPoolExecutor(8) as pool:
    lone = list(pool.map(alone, texts))
worst = 1.0
for name, got, want in [("tei", tei_all, [t for _, _, t in lone]),
                        ("ollama", olla_all.embeddings, [v for v, _, _ in lone])]:
    check(len(got) == count, name, len(got))
    cos = cosines(got, want)
    worst = min(worst, float(cos.min()))
    check(cos.min() >= 0.99999, name, "input", int(cos.argmin()), "cosine", float(cos.min()))
tokens = sum(t for _, t, _ in lone)
check(olla_all.prompt_eval_count == tokens, olla_all.prompt_eval_count, tokens)
check(olla_all.model == MODEL, olla_all.model)
check(olla_all.total_duration > 0, olla_all.total_duration)
check(all(len(v) == 64 for v in cut.embeddings) and len(cut.embeddings) == count, "dimensions 64")
check(float(cosines([v[:64] for v in olla_all.embeddings], cut.embeddings).min()) >= 0.99999, "cut rows")
print(f"huggingface_hub {huggingface_hub.__version__} feature_extraction: {count} texts streamed ({tei_s:.1f} s); "
      f"ollama {ollama.__version__ if hasattr(ollama, '__version__') else ''} embed: {count} texts ({olla_s:.1f} s), "
      f"{tokens} tokens; lowest cosine to the lone vector {worst:.7f}")
