"""sentence-transformers side of bench/worker_vs_sentence_transformers.sh.

Encodes BATCH texts that each tokenize to exactly SEQ tokens (max_seq_length = SEQ, texts
longer than that), on torch's CPU backend, and prints one JSON line with tokens/s for
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
st = SentenceTransformer(model_dir, device="cpu")
st.eval()
st.max_seq_length = seq

words = ("the server reads every query and ranks each document by relevance before it returns "
         "the best answer to the user who asked a question about the weather in the city").split()
texts = [" ".join(words[(i + j) % len(words)] for j in range(seq * 2)) for i in range(batch)]
features = st.preprocess(texts)
lengths = features["attention_mask"].sum(1).tolist()
assert all(n == seq for n in lengths), f"texts must be {seq} tokens, got {lengths}"


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
    "encode_ms_per_batch": encode_s * 1e3,
    "encode_tokens_per_second": batch * seq / encode_s,
    "forward_ms_per_batch": forward_s * 1e3,
    "forward_tokens_per_second": batch * seq / forward_s,
    "encode_best_tokens_per_second": batch * seq / encode_best,
    "forward_best_tokens_per_second": batch * seq / forward_best,
}))
