"""sentence-transformers side of bench/worker_vs_sentence_transformers.sh.

Encodes BATCH texts on torch's CPU backend and prints one JSON line with tokens/s for
`encode()` (tokenization + forward + pooling + normalize, what a user calls) and for the
forward + pooling alone (the part the mlx-serve worker does; tokenization lives in the
supervisor). Throughput counts real tokens (special tokens included, padding not).

Texts: every one exactly SEQ tokens long (max_seq_length = SEQ), or with --mixed lengths
drawn uniformly from 8..SEQ in random order (fixed seed). --dump-ids PATH writes the
tokenizer's ids of those texts (a JSON list of lists) and exits, so the worker runs the
very same sequences (`mlx-serve-worker bench-forward --ids PATH`).
"""

import argparse
import json
import random
import time

import torch
from sentence_transformers import SentenceTransformer

parser = argparse.ArgumentParser()
parser.add_argument("model_dir")
parser.add_argument("batch", type=int)
parser.add_argument("seq", type=int)
parser.add_argument("iters", type=int)
parser.add_argument("--mixed", action="store_true")
parser.add_argument("--dump-ids")
args = parser.parse_args()
batch, seq, iters = args.batch, args.seq, args.iters

st = SentenceTransformer(args.model_dir, device="cpu")
st.eval()
st.max_seq_length = seq

# Common English words, each one WordPiece token, so a text of n - 2 words is n tokens
# (other vocabularies: see `fit` below).
words = ("the server reads every query and ranks each document by relevance before it returns "
         "the best answer to the user who asked a question about the weather in the city").split()
if args.mixed:
    rng = random.Random(20261201)
    want = [rng.randint(8, seq) for _ in range(batch)]
else:
    want = [seq] * batch
texts = [" ".join(words[(i + j) % len(words)] for j in range(n - 2)) for i, n in enumerate(want)]
features = st.preprocess(texts)
lengths = features["attention_mask"].sum(1).tolist()
if lengths != want:
    # Not a WordPiece vocabulary (a byte-level BPE splits some words): the most words whose
    # tokens (special tokens included) fit each wanted length, so lengths are as close as the
    # vocabulary allows and never longer.
    def fit(i: int, n: int) -> str:
        k = 1
        while len(st.tokenizer(" ".join(words[(i + j) % len(words)] for j in range(k + 1)))["input_ids"]) <= n:
            k += 1
        return " ".join(words[(i + j) % len(words)] for j in range(k))

    texts = [fit(i, n) for i, n in enumerate(want)]
    features = st.preprocess(texts)
    lengths = features["attention_mask"].sum(1).tolist()
    assert all(n - 2 <= got <= n for got, n in zip(lengths, want)), f"texts must be {want} tokens, got {lengths}"

if args.dump_ids:
    ids = [row[:n].tolist() for row, n in zip(features["input_ids"], lengths)]
    with open(args.dump_ids, "w") as f:
        json.dump(ids, f)
    raise SystemExit(0)


def timed(fn):
    """(mean, best) seconds per call; the best is steadier on a shared machine."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sum(times) / len(times), min(times)


with torch.inference_mode():
    (encode_s, encode_best) = timed(lambda: st.encode(texts, batch_size=batch, convert_to_numpy=True))
    (forward_s, forward_best) = timed(lambda: st.forward(dict(features)))

real = sum(lengths)
print(json.dumps({
    "torch": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "batch": batch,
    "seq": max(lengths),
    "tokens": real,
    "padded_tokens": batch * max(lengths),
    "encode_ms_per_batch": encode_s * 1e3,
    "encode_tokens_per_second": real / encode_s,
    "forward_ms_per_batch": forward_s * 1e3,
    "forward_tokens_per_second": real / forward_s,
    "encode_best_tokens_per_second": real / encode_best,
    "forward_best_tokens_per_second": real / forward_best,
}))
