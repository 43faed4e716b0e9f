#!/usr/bin/env python3
"""What bge-m3's sparse and ColBERT outputs cost on top of the dense vector: the same texts
embedded dense alone, then dense + sparse + ColBERT in one request, side by side.

Texts (bench/serving/texts.py, --seed): search queries of 3-12 words and RAG passages of
6-120 words, mixed and in random order, words from --vocab (a WordPiece vocab.txt; MiniLM's
by default). Standard library only (threads, http.client); numpy with --flagembedding.

One `mlx-serve start --foreground` (bench/serving/servers.py) in a throwaway home, the
bge-m3-shaped model (--model-dir, default the tiny fixture) pulled with its heads and
preloaded, the embedding cache off (dense requests would otherwise be answered from it on
the second round, and requests for token outputs never are). --clients clients send
requests of --batch texts back to back until every text is embedded once; that is one
pass. Passes alternate between the two modes, --rounds of each, so drift on a shared
machine hits both alike; each mode's figure is its median pass. Both modes ask for base64
(what the OpenAI Python client asks for): the ColBERT answer is one vector per token, and
float JSON would measure the JSON encoder more than the model.

With --flagembedding PYTHON (a Python with FlagEmbedding: .deps/ref-venv-pylate/bin/python),
FlagEmbedding's `BGEM3FlagModel.encode` then runs the same texts in-process after the server
has stopped (bench/flag_encode.py: its best batch size probed, the two modes alternating), the
table gets its rows and the ratio of texts/s, and the first 8 texts' three outputs from the
server are compared with FlagEmbedding's (the same weights: the model folder it loads).

Usage:
  python3 bench/hybrid_cost.py [--rounds 5] [--clients 4] [--batch 32] [--texts 2000]
      [--model-dir tests/fixtures/models/tiny-bge-m3] [--flagembedding PYTHON]
  # the real model's shape (568M parameters, random weights): bench/real_size_shape.py bge-m3 DIR
"""
import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import texts  # noqa: E402
from serving.servers import MlxServe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "m3"
MODES = {
    "dense": {},
    "dense+sparse+colbert": {"return_sparse": True, "return_colbert_vecs": True},
}


def post(url, body, timeout=600):
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    conn.request("POST", "/v1/embeddings", json.dumps(body).encode(), {"content-type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {payload[:300]!r}")
    return payload


def compare(ours, theirs):
    """Min dense and ColBERT cosine, max sparse weight difference, sparse id sets that differ."""
    import numpy as np  # noqa: PLC0415  (only with --flagembedding, whose venv has it)

    def cos(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    dense, colbert, sparse, id_sets = 1.0, 1.0, 0.0, 0
    for k, item in enumerate(ours):
        dense = min(dense, cos(item["embedding"], theirs["dense"][k]))
        mine = dict(zip(map(str, item["sparse_embedding"]["indices"]), item["sparse_embedding"]["values"]))
        other = theirs["sparse"][k]
        id_sets += set(mine) != set(other)
        sparse = max([sparse] + [abs(mine[i] - other[i]) for i in set(mine) & set(other)])
        rows = item["colbert_embedding"]
        if len(rows) != len(theirs["colbert"][k]):
            colbert = float("nan")
        for a, b in zip(rows, theirs["colbert"][k]):
            colbert = min(colbert, cos(a, b))
    return dense, colbert, sparse, id_sets


def one_pass(url, batches, clients, extra):
    """Seconds to embed every batch, `clients` at a time; bytes received."""
    lock, next_batch, received, errors = threading.Lock(), [0], [0], []

    def client():
        while True:
            with lock:
                i = next_batch[0]
                next_batch[0] += 1
            if i >= len(batches):
                return
            try:
                got = post(url, {"model": MODEL, "input": batches[i], "encoding_format": "base64", **extra})
            except Exception as e:  # noqa: BLE001 - reported after the pass
                errors.append(e)
                return
            with lock:
                received[0] += len(got)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise SystemExit(f"a request failed: {errors[0]}")
    return time.monotonic() - t0, received[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--texts", type=int, default=2000, help="texts per pass, a quarter of them queries")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release")
    ap.add_argument("--model-dir", type=Path, default=ROOT / "tests" / "fixtures" / "models" / "tiny-bge-m3")
    ap.add_argument("--vocab", type=Path, default=ROOT / ".deps" / "all-MiniLM-L6-v2" / "vocab.txt")
    ap.add_argument("--flagembedding", help="a Python with FlagEmbedding: run it on the same texts")
    ap.add_argument("--flag-batch-sizes", default="8,16,32,64,128,256", help="FlagEmbedding's batch sizes to probe")
    args = ap.parse_args()

    sets = texts.mixed_sets(texts.Vocabulary(args.vocab), args.seed, args.texts // 4, args.texts - args.texts // 4)
    mixed = sets["short"] + sets["long"]
    random.Random(args.seed).shuffle(mixed)
    batches = [mixed[k:k + args.batch] for k in range(0, len(mixed), args.batch)]
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}; "
          f"{len(os.sched_getaffinity(0))} CPUs usable; {len(mixed)} texts in {len(batches)} requests "
          f"of {args.batch}, {args.clients} clients, {args.rounds} passes per mode", flush=True)

    server = MlxServe(args.bin_dir, args.model_dir.resolve(), MODEL)
    try:
        url = server.start("embedding_cache:\n  memory_mb: 0\n", "hybrid-cost")
        for extra in MODES.values():  # warm up both paths
            post(url, {"model": MODEL, "input": batches[0], **extra})
        seconds = {m: [] for m in MODES}
        size = {}
        for r in range(args.rounds):
            for mode, extra in MODES.items():
                took, size[mode] = one_pass(url, batches, args.clients, extra)
                seconds[mode].append(took)
                print(f"  pass {r + 1} {mode:22s} {took:7.2f} s", flush=True)
        sample = json.loads(post(url, {"model": MODEL, "input": mixed[:8], **MODES["dense+sparse+colbert"]}))["data"]
    finally:
        server.cleanup()

    flag = None
    if args.flagembedding:
        # sentence-transformers 6 writes no max_seq_length: FlagEmbedding's default then (these
        # texts are far shorter).
        st_config = json.loads((args.model_dir / "sentence_bert_config.json").read_text())
        max_len = st_config.get("max_seq_length", 512)
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(mixed, f)
            f.flush()
            run = subprocess.run([args.flagembedding, str(ROOT / "bench" / "flag_encode.py"), str(args.model_dir),
                                  f.name, "--rounds", str(args.rounds), "--max-length", str(max_len),
                                  "--batch-sizes", args.flag_batch_sizes],
                                 check=True, capture_output=True, text=True)
        flag = json.loads(run.stdout.strip().splitlines()[-1])
        for r in range(args.rounds):
            for mode in MODES:
                print(f"  FlagEmbedding pass {r + 1} {mode:22s} {flag['seconds'][mode][r]:7.2f} s", flush=True)

    dense = statistics.median(seconds["dense"])
    print(f"{'server':14s} {'mode':22s} {'median s':>9s} {'texts/s':>9s} {'MB received':>12s} {'vs dense':>9s}"
          + (f" {'vs FlagEmbedding':>17s}" if flag else ""))
    for mode in MODES:
        s = statistics.median(seconds[mode])
        vs = f" {flag['median'][mode] / s:16.2f}x" if flag else ""
        print(f"{'mlx-serve':14s} {mode:22s} {s:9.2f} {len(mixed) / s:9.1f} {size[mode] / 1e6:12.1f} {s / dense:8.2f}x{vs}")
    if flag:
        fdense = flag["median"]["dense"]
        for mode in MODES:
            s = flag["median"][mode]
            print(f"{'FlagEmbedding':14s} {mode:22s} {s:9.2f} {len(mixed) / s:9.1f} {'':>12s} {s / fdense:8.2f}x")
        d, c, sp, ids = compare(sample, flag["sample"])
        print(f"FlagEmbedding at its best batch size {flag['batch']} (texts/s per size on a quarter of the "
              f"texts: {', '.join(f'{b}: {v:.1f}' for b, v in flag['batch_probe_texts_per_s'].items())}); "
              f"first 8 texts against it: min dense cosine {d:.6f}, min ColBERT cosine {c:.6f}, "
              f"max sparse weight difference {sp:.1e}, texts whose sparse token ids differ: {ids}")


if __name__ == "__main__":
    main()
