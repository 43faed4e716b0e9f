#!/usr/bin/env python3
"""FlagEmbedding's side of bench/hybrid_cost.py: the same texts through `BGEM3FlagModel.encode`
in-process on torch's CPU backend, dense alone and dense + sparse + ColBERT.

Run in a Python that has FlagEmbedding (the PyLate venv, tests/fixtures/requirements-pylate.txt):

    .deps/ref-venv-pylate/bin/python bench/flag_encode.py MODEL_DIR TEXTS_JSON \
        [--rounds 3] [--batch-sizes 8,16,32,64,128,256] [--max-length 512] [--sample 8]

It first finds FlagEmbedding's best batch size (one dense pass over the first quarter of the
texts per size; encode sorts its inputs by length itself, so padding stays small), then runs
--rounds passes of each mode over every text at that size, alternating the modes, and prints
one JSON line: the best batch size, each mode's pass times and median, and the outputs of the
first --sample texts (dense, lexical weights, ColBERT vectors) for the caller to compare.
"""

import argparse
import json
import os
import statistics
import time

import torch
from FlagEmbedding import BGEM3FlagModel

MODES = {
    "dense": {"return_dense": True, "return_sparse": False, "return_colbert_vecs": False},
    "dense+sparse+colbert": {"return_dense": True, "return_sparse": True, "return_colbert_vecs": True},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("texts_json")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-sizes", default="8,16,32,64,128,256")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--sample", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    texts = json.load(open(args.texts_json))
    model = BGEM3FlagModel(args.model_dir, use_fp16=False, devices="cpu", normalize_embeddings=True,
                           query_max_length=args.max_length, passage_max_length=args.max_length)

    def encode(batch, items, mode):
        return model.encode(items, batch_size=batch, max_length=args.max_length, **MODES[mode])

    encode(8, texts[:8], "dense+sparse+colbert")  # warm-up
    probe = texts[: max(len(texts) // 4, 1)]
    probes = {}
    for b in (int(x) for x in args.batch_sizes.split(",")):
        t0 = time.perf_counter()
        encode(b, probe, "dense")
        probes[b] = len(probe) / (time.perf_counter() - t0)
    best = max(probes, key=probes.get)
    seconds = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            t0 = time.perf_counter()
            encode(best, texts, mode)
            seconds[mode].append(time.perf_counter() - t0)
    out = encode(best, texts[: args.sample], "dense+sparse+colbert")
    print(json.dumps({
        "batch_probe_texts_per_s": probes, "batch": best,
        "seconds": seconds, "median": {m: statistics.median(v) for m, v in seconds.items()},
        "sample": {
            "dense": [v.tolist() for v in out["dense_vecs"]],
            "sparse": [{str(k): float(w) for k, w in lw.items()} for lw in out["lexical_weights"]],
            "colbert": [v.tolist() for v in out["colbert_vecs"]],
        },
    }))


if __name__ == "__main__":
    main()
