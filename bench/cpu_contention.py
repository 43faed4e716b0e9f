#!/usr/bin/env python3
"""How much another process's CPU work slows the worker's forward, by its CPU priority.

One-text queries, one at a time (50 ms apart), against a fresh `mlx-serve` (MiniLM,
bench/serving/servers.py); meanwhile N spinning processes (pure Python loops) at one of:
`none` (no spinner), `idle` (the SCHED_IDLE policy, `chrt --idle 0`: sched(7)), `nice`
(nice 19) or `normal`. Each condition is named KIND+N, e.g. `idle1`, `normal2`; prints each
condition's latency percentiles. Found the queries' remaining tail under an ingest (docs/scheduling.md): the
worker's OpenBLAS threads wait with sched_yield, so even a SCHED_IDLE spinner takes their
core; environment variables given to this script (e.g. OPENBLAS_THREAD_TIMEOUT) reach the
worker.

Usage:
  python3 bench/cpu_contention.py [--bin-dir target/release] [--queries 150] none idle1 nice1 normal1
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import priority_under_bulk as pub  # noqa: E402
from serving import texts  # noqa: E402
from serving.servers import MlxServe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PREFIX = {"idle": ["chrt", "--idle", "0"], "nice": ["nice", "-n", "19"], "normal": []}


def spinners(condition):
    if condition == "none":
        return []
    kind, n = condition.rstrip("0123456789"), int(condition[len(condition.rstrip("0123456789")):] or 1)
    return [subprocess.Popen(PREFIX[kind] + [sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("conditions", nargs="+", help="none, or idle|nice|normal followed by a count")
    ap.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release")
    ap.add_argument("--model-dir", type=Path, default=ROOT / ".deps" / pub.MODEL)
    ap.add_argument("--queries", type=int, default=150)
    args = ap.parse_args()
    qs = texts.mixed_sets(texts.Vocabulary(args.model_dir / "vocab.txt"), 1, 500, 2000)["short"]
    server = MlxServe(args.bin_dir, args.model_dir.resolve(), pub.MODEL)
    try:
        url = server.start("# defaults\n", "contention")
        for text in qs[:args.queries]:  # every shape once (warm-up)
            pub.post(url, {"model": pub.MODEL, "input": text})
        for condition in args.conditions:
            procs = spinners(condition)
            time.sleep(0.5)
            lat = []
            try:
                for text in qs[:args.queries]:
                    t0 = time.monotonic()
                    pub.post(url, {"model": pub.MODEL, "input": text, "encoding_format": "base64"})
                    lat.append(1e3 * (time.monotonic() - t0))
                    time.sleep(0.05)
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
            print(f"{condition:8} p50 {pub.pct(lat, 50):6.1f} ms  p90 {pub.pct(lat, 90):6.1f}"
                  f"  p99 {pub.pct(lat, 99):6.1f}  max {max(lat):6.1f}", flush=True)
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
