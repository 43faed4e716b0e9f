#!/usr/bin/env python3
"""Server throughput benchmark: mlx-serve with batching on and off, beside
sentence-transformers encoding the same texts in-process, measured in one run.

Load shape (as in shared/notes/benchmarks.md): C concurrent HTTP clients (one aiohttp
process on the same machine), one text per request, OpenAI /v1/embeddings with base64.
Two text sets: short queries (~10 tokens) and long passages (~90 tokens).

Usage:
  REF_PYTHON=~/.cache/mlx-serve/ref-venv/bin/python  # torch + sentence-transformers + aiohttp
  $REF_PYTHON bench/serve_throughput.py [--clients 64] [--seconds 10] [--model-dir DIR]

Prints texts/s per setup and the ratios; numbers drift ±10% on a shared machine, so
compare ratios from one run, not absolute figures across runs.
"""
import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"
WORDS = ("the of and to in is for on with as by at from that this which model server "
         "vector search query document memory apple silicon metal batch token latency "
         "throughput river mountain city music science history language market energy "
         "system network data learning neural fast local private open source cloud").split()


def make_texts(n, words_per_text, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words_per_text)).capitalize() + "." for _ in range(n)]


def rss_of_tree(pid):
    """RSS (bytes) of a process and its children, from /proc."""
    total = 0
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
                ppid = int(stat[stat.rfind(")") + 2:].split()[1])
                if ppid == pid:
                    pids.append(int(entry))
            except OSError:
                pass
    for p in pids:
        try:
            total += int(open(f"/proc/{p}/statm").read().split()[1]) * 4096
        except OSError:
            pass
    return total


class Server:
    def __init__(self, model_dir, config_yaml):
        self.home = tempfile.TemporaryDirectory(prefix="mlx-serve-bench")
        home = Path(self.home.name)
        (home / "models").mkdir()
        (home / "models" / MODEL).symlink_to(model_dir)
        (home / "config.yaml").write_text(config_yaml)
        env = dict(os.environ, MLX_SERVE_HOME=str(home), RUST_LOG="warn,mlx_serve::server=info")
        env.pop("MLX_SERVE_CONFIG", None)
        self.proc = subprocess.Popen(
            [str(ROOT / "target/release/mlx-serve"), "start", "--foreground", "--port", "0"],
            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        for line in self.proc.stderr:
            m = re.search(r"listening on http://([\d.]+):(\d+)", line)
            if m:
                self.url = f"http://{m.group(1)}:{m.group(2)}"
                break
        else:
            raise SystemExit("mlx-serve did not start")
        # Keep draining stderr so the server never blocks on a full pipe.
        import threading
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.home.cleanup()


async def one_request(session, url, text):
    body = {"model": MODEL, "input": text, "encoding_format": "base64"}
    async with session.post(url + "/v1/embeddings", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
        await r.read()


async def load(url, texts, clients, seconds):
    """C clients, each sending one text per request back to back for `seconds`."""
    done = 0
    stop_at = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def client(i):
            nonlocal done
            k = i
            while time.perf_counter() < stop_at:
                await one_request(session, url, texts[k % len(texts)])
                done += 1
                k += clients
        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return done / (time.perf_counter() - start)


async def single_latency(url, texts, n=50):
    async with aiohttp.ClientSession() as session:
        for t in texts[:5]:
            await one_request(session, url, t)
        lat = []
        for t in texts[:n]:
            t0 = time.perf_counter()
            await one_request(session, url, t)
            lat.append(time.perf_counter() - t0)
    return statistics.median(lat) * 1e3


def bench_server(model_dir, config, sets, clients, seconds):
    server = Server(model_dir, config)
    try:
        results = {}
        for name, texts in sets.items():
            asyncio.run(load(server.url, texts, clients, 2))  # warm-up (loads the worker)
            rate = asyncio.run(load(server.url, texts, clients, seconds))
            results[name] = rate
        results["p50_ms"] = asyncio.run(single_latency(server.url, sets["short"]))
        results["rss_mib"] = rss_of_tree(server.proc.pid) / 2**20
        return results
    finally:
        server.stop()


def bench_library(model_dir, sets, seconds):
    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(os.cpu_count())
    model = SentenceTransformer(str(model_dir), device="cpu")
    out = {}
    for name, texts in sets.items():
        model.encode(texts[:64], batch_size=32)
        n, i, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            chunk = texts[i:i + 256]
            if not chunk:
                i = 0
                continue
            model.encode(chunk, batch_size=32)
            n += len(chunk)
            i += 256
        out[name] = n / (time.perf_counter() - start)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--model-dir", default=str(ROOT / ".deps" / MODEL))
    ap.add_argument("--skip-library", action="store_true")
    args = ap.parse_args()
    model_dir = Path(args.model_dir).resolve()
    sets = {"short": make_texts(4096, 7, 1), "long": make_texts(1024, 81, 2)}
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    for name, texts in sets.items():
        mean = statistics.mean(len(tok(t)["input_ids"]) for t in texts[:200])
        print(f"{name}: mean {mean:.1f} tokens per text")

    base = "batch:\n  max_batch_size: {bs}\n"  # other settings at their defaults
    on = bench_server(model_dir, base.format(bs=32), sets, args.clients, args.seconds)
    off = bench_server(model_dir, base.format(bs=1), sets, args.clients, args.seconds)
    lib = {} if args.skip_library else bench_library(model_dir, sets, args.seconds)

    print(f"\n{args.clients} concurrent clients, one text per request, {args.seconds:.0f}s per measurement")
    print(f"{'':34}{'short':>12}{'long':>12}")
    print(f"{'mlx-serve, batching on (32)':34}{on['short']:>10.0f}/s{on['long']:>10.0f}/s")
    print(f"{'mlx-serve, batching off (1)':34}{off['short']:>10.0f}/s{off['long']:>10.0f}/s")
    if lib:
        print(f"{'sentence-transformers, batch 32':34}{lib['short']:>10.0f}/s{lib['long']:>10.0f}/s")
    print(f"{'batching on / off':34}{on['short'] / off['short']:>11.2f}x{on['long'] / off['long']:>11.2f}x")
    if lib:
        print(f"{'mlx-serve / sentence-transformers':34}{on['short'] / lib['short']:>11.2f}x{on['long'] / lib['long']:>11.2f}x")
    print(f"single request p50: {on['p50_ms']:.2f} ms (batching on), {off['p50_ms']:.2f} ms (off)")
    print(f"RSS supervisor + worker: {on['rss_mib']:.0f} MiB")
    print(json.dumps({"on": on, "off": off, "library": lib}))


if __name__ == "__main__":
    main()
