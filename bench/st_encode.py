"""sentence-transformers side of bench/worker_vs_sentence_transformers.sh.

Encodes BATCH texts that each tokenize to exactly SEQ tokens (max_seq_length = SEQ, texts
longer than that), or, with a fifth argument LENGTHS (comma-separated), one text of each
of those token counts, on torch's CPU backend, and prints one JSON line with tokens/s for
`encode()` (tokenization + forward + pooling + normalize, what a user calls) and for the
forward + pooling alone (the part the mlx-serve worker does; tokenization lives in the
supervisor).
"""

import json
import sys
import time

import torch
from sentence_transformers import SentenceTransformer

model_dir, batch, seq, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
want = [int(n) for n in sys.argv[5].split(",")] if len(sys.argv) > 5 else [seq] * batch
batch, seq = len(want), max(want)
st = SentenceTransformer(model_dir, device="cpu")
st.eval()
st.max_seq_length = seq

# Each of these words is one token, so a text of n - 2 words is n tokens with [CLS] and
# [SEP]; fixed-length texts are longer than SEQ and truncated, as before.
words = ("the server reads every query and ranks each document by relevance before it returns "
         "the best answer to the user who asked a question about the weather in the city").split()
n_words = [n - 2 for n in want] if len(sys.argv) > 5 else [seq * 2] * batch
texts = [" ".join(words[(i + j) % len(words)] for j in range(n)) for i, n in enumerate(n_words)]
features = st.preprocess(texts)
lengths = features["attention_mask"].sum(1).tolist()
assert lengths == want, f"texts must be {want} tokens, got {lengths}"
tokens = sum(want)


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

print(json.dumps({
    "torch": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "batch": batch,
    "seq": seq,
    "tokens": tokens,
    "encode_ms_per_batch": encode_s * 1e3,
    "encode_tokens_per_second": tokens / encode_s,
    "forward_ms_per_batch": forward_s * 1e3,
    "forward_tokens_per_second": tokens / forward_s,
    "encode_best_tokens_per_second": tokens / encode_best,
    "forward_best_tokens_per_second": tokens / forward_best,
}))
