#!/usr/bin/env python3
"""Served batches of new sizes against one batch served again and again (docs/cpu-backend.md,
"Fresh pages per batch"). Not a test: it prints numbers.

One real-size shape (bench/families.py builds it) behind mlx-serve with
`scheduling.max_batch_ms: 0`, so that each request of 30 texts is one batch. Eight requests
one after another: `same` sends the same 30 texts each time (one batch size, which MLX's
buffer cache and the C heap reuse), `vary` the next 30 of the traffic stream each time (a
new size every batch, as served traffic brings). Prints each request's seconds, then the
worker's CPU seconds, wall seconds and minor page faults over the eight.

  .deps/ref-venv/bin/python bench/batch_churn.py embeddinggemma-300m same|vary
"""
import json
import sys
import time
import urllib.request
from pathlib import Path

import families
from serving import rss
from serving.servers import MlxServe

ROOT = Path(__file__).resolve().parent.parent


def worker_counters(supervisor_pid: int) -> tuple:
    """(CPU seconds, minor faults) of the supervisor's worker child."""
    for pid in rss.children(supervisor_pid):
        if "mlx-serve-worker" in Path(f"/proc/{pid}/cmdline").read_text():
            minflt = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
            return rss.tree_cpu_seconds(pid), minflt
    raise SystemExit("no worker process found")


def main():
    shape, mode = sys.argv[1], sys.argv[2]
    info = families.build(shape, Path.home() / ".cache" / "mlx-serve-dev" / "real-size")
    stream = families.traffic(1)
    mlx = MlxServe(ROOT / "target" / "release", Path(info["serve_dir"]), shape)
    try:
        url = mlx.start("scheduling:\n  max_batch_ms: 0\n", "churn")

        def post(texts):
            body = json.dumps({"model": shape, "input": texts}).encode()
            req = urllib.request.Request(url + "/v1/embeddings", body, {"Content-Type": "application/json"})
            t = time.time()
            urllib.request.urlopen(req, timeout=600).read()
            return time.time() - t

        post(stream[500:530])  # warm-up
        cpu0, faults0 = worker_counters(mlx.pid)
        t0 = time.time()
        for i in range(8):
            texts = stream[:30] if mode == "same" else stream[30 * i:30 * i + 30]
            print(f"request {i}: {post(texts):.3f} s", flush=True)
        cpu1, faults1 = worker_counters(mlx.pid)
        wall = time.time() - t0
        print(f"{mode}: worker {cpu1 - cpu0:.1f} CPU-s in {wall:.1f} s wall, {faults1 - faults0} minor faults")
    finally:
        mlx.cleanup()


if __name__ == "__main__":
    main()
