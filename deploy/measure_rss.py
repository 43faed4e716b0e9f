#!/usr/bin/env python3
"""Resident memory of one mlx-serve replica (supervisor + worker), for sizing containers
and Kubernetes resources (docs/deploy.md, "Sizing"). Python standard library only.

  python3 deploy/measure_rss.py [--model-dir .deps/all-MiniLM-L6-v2] [--clients 8] [--seconds 15]

Starts target/release/mlx-serve on a private home with the model preloaded, then reads
each process's RSS from /proc (Linux):
  idle          after load and one request, once the worker's MLX cache was emptied (2 s idle)
  mixed load    peak (VmHWM) while C clients send 1-8 texts of 3-150 words per request
  largest batch peak while 2 clients send 32 texts longer than the model's limit per request,
                so every batch is max_batch_size x max_seq_length tokens (2 keep the worker
                busy without queueing requests past their timeout on a slow machine)
  idle again    5 s after the last batch finished
Peaks are the kernel's high-water marks (VmHWM, reset between phases through
/proc/PID/clear_refs), so no spike between samples is missed.
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the of and to in is for on with as by at from that this which model server vector "
         "search query document memory batch token latency river mountain city music science "
         "history language market energy system network data learning").split()


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def worker_pid(parent):
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if "(mlx-serve-worke" in stat and int(stat[stat.rfind(")") + 2:].split()[1]) == parent:
                return int(entry)
    raise SystemExit("no worker process")


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def post(url, texts):
    body = json.dumps({"model": "m", "input": texts}).encode()
    req = urllib.request.Request(url, body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()


def load(url, clients, seconds, make_texts):
    stop = time.monotonic() + seconds
    count = [0, 0]

    def run(seed):
        rng = random.Random(seed)
        while time.monotonic() < stop:
            texts = make_texts(rng)
            try:
                post(url, texts)
                count[0] += len(texts)
            except OSError:  # HTTPError (a 504 on an overloaded machine) or a socket error
                count[1] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count


def wait_idle(url):
    """Until the queue is empty and the worker is not busy (timed-out requests' batches may
    still be computing), from /metrics."""
    metrics = url.replace("/v1/embeddings", "/metrics")
    while True:
        text = urllib.request.urlopen(metrics, timeout=30).read().decode()
        queued = sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("mlx_serve_queue_depth{"))
        busy = any(l.startswith("mlx_serve_worker_state{") and 'state="busy"' in l and l.split()[-1] == "1"
                   for l in text.splitlines())
        if queued == 0 and not busy:
            return
        time.sleep(0.2)


def mixed(rng):
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 150) if rng.random() < 0.3 else rng.randint(3, 12)))
            for _ in range(rng.randint(1, 8))]


def longest(rng):
    # 400 words is past MiniLM's 256-token limit: every input is truncated to the maximum.
    return [" ".join(rng.choice(WORDS) for _ in range(400)) for _ in range(32)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=str(ROOT / ".deps" / "all-MiniLM-L6-v2"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15)
    args = ap.parse_args()

    home = tempfile.mkdtemp(prefix="mlx-serve-rss-")
    os.makedirs(f"{home}/models")
    os.symlink(os.path.realpath(args.model_dir), f"{home}/models/m")
    env = dict(os.environ, MLX_SERVE_HOME=home, RUST_LOG="warn,mlx_serve=info",
               MLX_SERVE_WORKER_BIN=str(ROOT / "target/release/mlx-serve-worker"))
    proc = subprocess.Popen([str(ROOT / "target/release/mlx-serve"), "start", "--foreground", "--port", "0",
                             "--preload", "m"], env=env, stderr=subprocess.PIPE, text=True)
    port = None
    for line in proc.stderr:
        m = re.search(r"listening on http://[^:]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    try:
        post(url, ["warm up"])
        worker = worker_pid(proc.pid)
        rows = []

        def current(name):
            rows.append((name, status_kib(proc.pid, "VmRSS"), status_kib(worker, "VmRSS")))

        def peak(name):
            rows.append((name, status_kib(proc.pid, "VmHWM"), status_kib(worker, "VmHWM")))

        time.sleep(3)  # the worker empties its MLX cache after 2 s idle
        current("idle (model loaded)")
        for name, make, clients in (("peak, mixed load", mixed, args.clients), ("peak, largest batches", longest, 2)):
            reset_peak(proc.pid)
            reset_peak(worker)
            texts, errors = load(url, clients, args.seconds, make)
            peak(f"{name} ({texts} texts{f', {errors} errors' if errors else ''})")
        wait_idle(url)
        time.sleep(5)  # past the worker's 2 s idle release
        current("idle again (5 s after the last batch)")
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    print(f"mlx-serve RSS, {Path(args.model_dir).name}, {args.seconds:.0f} s per load "
          f"({args.clients} clients mixed, 2 clients largest batches)")
    print(f"{'':48}{'supervisor':>12}{'worker':>10}{'total':>10}")
    for name, sup, wrk in rows:
        print(f"{name:48}{sup / 1024:>8.0f} MiB{wrk / 1024:>6.0f} MiB{(sup + wrk) / 1024:>6.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
