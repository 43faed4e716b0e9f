#!/usr/bin/env python3
"""The supervisor's host CPU per request and per text (issue 28, "Speed"), from /proc.

On a GPU the supervisor's CPU, not the GPU, limited the server (docs/gpu-results.md,
2026-12-07: ~310 us of supervisor CPU per one-text request, ~1.5 ms per ingested passage).
Wall-clock throughput on a small shared CPU machine says little about that (the worker is
the limit there, and the machine's other jobs move it), but CPU time per request is work
done, and it stays put under noise. So this benchmark counts, over each load:

- the supervisor process's utime + stime (`/proc/PID/stat`: every thread it has or had),
- its workers' (its child processes'), and
- this load generator's own (`getrusage`),

and divides by the requests and texts answered. Two loads, mixed-length texts in random
order (bench/serving/texts.py, the same sets as bench/serve_mixed.py):

  short:  --short-clients (64) clients, one query of 3-12 words per request
  ingest: --ingest-clients (6) clients, --ingest-size (64) passages of 6-120 words per request

The real server (`mlx-serve start --foreground` in a throwaway home, the real MiniLM worker
from .deps, embedding cache off: servers.py) answers `/v1/embeddings` with
`encoding_format` --encoding (base64 by default, what the OpenAI client sends). With
`--baseline-bin DIR` a second build runs beside it (both servers up, each with its own
worker); loads alternate between the builds round by round (ABBA order), so the machine's
drift hits both alike, and the report gives each build's median and the ratio per round.
Every answer is checked (200, one vector of the model's width per text), and a sample of
vectors is compared between the two builds (cosine >= 0.99999): a build that answers
differently cannot post a number.

With `--perf DIR`, before the measured rounds, `perf record` samples the tested build's
supervisor under each load (DIR/<load>.data; read with `perf report -i`), in a pass of its
own (perf's sampling costs CPU and is not counted).

Usage (the reference Python has aiohttp and numpy):
  .deps/ref-venv/bin/python bench/host_cost.py [--bin-dir target/release]
      [--baseline-bin DIR] [--rounds 3] [--seconds 8] [--encoding base64|float]
      [--perf DIR] [--json FILE]
"""
import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

from serving import prom, rss, texts
from serving.servers import MlxServe, ServerFailed

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"
DIMS = 384
TICK = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY = 16  # every 16th text of a set's first pass is kept to compare builds
MIN_COSINE = 0.99999


def say(*a):
    print(*a, flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def proc_cpu(pid: int) -> float:
    """utime + stime of one process, all its threads (exited ones included), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children_cpu(pid: int) -> float:
    """utime + stime of pid's descendants (its workers)."""
    total = 0.0
    for child in rss.tree(pid)[1:]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += proc_cpu(child)
    return total


def threads_cpu(pid: int) -> dict:
    """{thread name: (threads, CPU seconds)} over pid's live threads."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            n, s = out.get(name, (0, 0.0))
            out[name] = (n + 1, s + (int(fields[11]) + int(fields[12])) / TICK)
    return out


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Load:
    """One kind of traffic: `clients` clients, each request `per_request` consecutive texts
    of `pool` (a shared cursor, wrapping), answered as `encoding`."""

    def __init__(self, name, pool, clients, per_request, encoding):
        self.name, self.pool, self.clients, self.per_request, self.encoding = name, pool, clients, per_request, encoding

    def body(self, i):
        n = self.per_request
        picked = [self.pool[(i * n + k) % len(self.pool)] for k in range(n)]
        return {"model": MODEL, "input": picked[0] if n == 1 else picked, "encoding_format": self.encoding}

    def vectors(self, data):
        if len(data) != self.per_request:
            raise RuntimeError(f"{len(data)} embeddings for {self.per_request} texts")
        out = []
        for item in data:
            e = item["embedding"]
            v = np.frombuffer(base64.b64decode(e), dtype="<f4") if self.encoding == "base64" else np.asarray(e, "f4")
            if v.shape != (DIMS,):
                raise RuntimeError(f"an embedding of {v.shape} values, expected {DIMS}")
            out.append(v)
        return out


async def _drive(url, load, seconds, samples):
    """Runs `load` for `seconds`; returns (requests, texts, error or None)."""
    done, error = [0], [None]
    cursor = itertools.count()
    stop_at = time.perf_counter() + seconds
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=load.clients), timeout=timeout) as s:

        async def client():
            while error[0] is None and time.perf_counter() < stop_at:
                i = next(cursor)
                try:
                    async with s.post(url + "/v1/embeddings", json=load.body(i)) as r:
                        if r.status != 200:
                            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:200]}")
                        vs = load.vectors((await r.json())["data"])
                except Exception as e:  # noqa: BLE001 - any failure disqualifies the row
                    error[0] = error[0] or f"request #{i}: {e}"
                    return
                for k, v in enumerate(vs):
                    t = i * load.per_request + k
                    if t < len(load.pool) and t % SAMPLE_EVERY == 0:
                        samples[(load.name, t)] = v
                done[0] += 1

        await asyncio.gather(*(client() for _ in range(load.clients)))
    return done[0], done[0] * load.per_request, error[0]


def measure(server, load, seconds, samples) -> dict:
    pid = server.pid
    before_metrics = server.metrics_text()
    t0, sup0, wrk0, gen0, thr0 = time.perf_counter(), proc_cpu(pid), children_cpu(pid), self_cpu(), threads_cpu(pid)
    requests, n_texts, error = asyncio.run(_drive(server.url, load, seconds, samples))
    wall = time.perf_counter() - t0
    sup, wrk, gen, thr1 = proc_cpu(pid) - sup0, children_cpu(pid) - wrk0, self_cpu() - gen0, threads_cpu(pid)
    batches = prom.batch_stats(before_metrics, server.metrics_text())
    threads = {name: (n, s - thr0.get(name, (0, 0.0))[1]) for name, (n, s) in thr1.items()}
    return {"requests": requests, "texts": n_texts, "wall_s": wall, "error": error, "loadavg": loadavg(),
            "supervisor_s": sup, "worker_s": wrk, "loadgen_s": gen, "threads": threads,
            "sequences_per_batch": batches.get("sequences_per_batch")}


def per(x, n, scale=1e6):
    return x / n * scale if n else float("nan")


def row_line(build, load, m) -> str:
    return (f"  {build:<9} {load:<7} {m['requests'] / m['wall_s']:8.1f} req/s {m['texts'] / m['wall_s']:8.1f} texts/s | "
            f"supervisor {per(m['supervisor_s'], m['requests']):8.0f} us/req {per(m['supervisor_s'], m['texts']):7.0f} us/text"
            f" | worker {per(m['worker_s'], m['texts']):7.0f} us/text | load gen {per(m['loadgen_s'], m['requests']):6.0f}"
            f" us/req | batch {m['sequences_per_batch'] or 0:5.1f} | load avg {m['loadavg']}")


def perf_pass(server, loads, seconds, out_dir: Path, samples):
    out_dir.mkdir(parents=True, exist_ok=True)
    for load in loads:
        data = out_dir / f"{load.name}.data"
        say(f"  perf record: supervisor under {load.name} -> {data}")
        perf = subprocess.Popen(["perf", "record", "-F", "499", "--call-graph", "dwarf,32768", "-p", str(server.pid),
                                 "-o", str(data), "--", "sleep", str(seconds)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        asyncio.run(_drive(server.url, load, seconds - 1, samples))
        _, err = perf.communicate()
        if perf.returncode != 0:
            say(f"  perf failed: {err.decode(errors='replace')[-400:]}")


def compare_builds(samples: dict) -> str:
    a, b = samples.get("this", {}), samples.get("baseline", {})
    common = sorted(set(a) & set(b))
    if not common:
        return "builds compared: no common sampled texts"
    cos = [float(a[k] @ b[k] / np.linalg.norm(a[k]) / np.linalg.norm(b[k])) for k in common]
    worst = min(cos)
    verdict = "same vectors" if worst >= MIN_COSINE else f"DIFFERENT (< {MIN_COSINE})"
    return f"builds compared on {len(common)} sampled texts: lowest cosine {worst:.7f}: {verdict}"


def report(results: dict, loads, builds):
    say("\n## Result (medians over rounds; CPU time per request and per text)")
    summary = {}
    for load in loads:
        for build in builds:
            rounds = [m for m in results[build][load.name] if not m["error"]]
            if not rounds:
                say(f"  {build:<9} {load.name:<7} no complete round")
                continue
            med = {k: statistics.median(m[k] / m["requests"] for m in rounds) for k in
                   ("supervisor_s", "worker_s", "loadgen_s")}
            texts_per_req = load.per_request
            rate = statistics.median(m["texts"] / m["wall_s"] for m in rounds)
            summary[(build, load.name)] = med
            say(f"  {build:<9} {load.name:<7} supervisor {med['supervisor_s'] * 1e6:8.0f} us/req "
                f"{med['supervisor_s'] / texts_per_req * 1e6:7.0f} us/text | worker "
                f"{med['worker_s'] / texts_per_req * 1e6:7.0f} us/text | load gen {med['loadgen_s'] * 1e6:6.0f} us/req"
                f" | {rate:7.1f} texts/s ({len(rounds)} rounds)")
        if len(builds) == 2 and all((b, load.name) in summary for b in builds):
            this, base = (summary[(b, load.name)]["supervisor_s"] for b in builds)
            per_round = [t["supervisor_s"] / t["requests"] / (b["supervisor_s"] / b["requests"])
                         for t, b in zip(results["this"][load.name], results["baseline"][load.name])
                         if not t["error"] and not b["error"]]
            say(f"  -> {load.name}: supervisor CPU per request, this / baseline = {this / base:.2f} "
                f"(per round: {' '.join(f'{r:.2f}' for r in per_round)})")
    return summary


def interrupted(*_):
    if getattr(interrupted, "seen", False):
        return
    interrupted.seen = True
    say("\ninterrupted: stopping servers")
    raise KeyboardInterrupt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release", help="the build measured ('this')")
    ap.add_argument("--baseline-bin", type=Path, help="another build's folder (mlx-serve, mlx-serve-worker), run beside it")
    ap.add_argument("--model-dir", type=Path, default=ROOT / ".deps" / MODEL)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8, help="each load, each round (default 8)")
    ap.add_argument("--short-clients", type=int, default=64)
    ap.add_argument("--ingest-clients", type=int, default=6)
    ap.add_argument("--ingest-size", type=int, default=64, help="passages per ingest request (default 64)")
    ap.add_argument("--encoding", choices=("base64", "float"), default="base64")
    ap.add_argument("--only", choices=("short", "ingest"), help="one load only")
    ap.add_argument("--config", default="# defaults\n", help="config.yaml text for both servers")
    ap.add_argument("--threads", action="store_true", help="also print CPU by thread name (live threads)")
    ap.add_argument("--perf", type=Path, help="perf record the tested build's supervisor under each load into DIR")
    ap.add_argument("--perf-seconds", type=float, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)

    say(f"# supervisor host CPU per request; load average at start {loadavg()}; {os.cpu_count()} CPUs")
    vocab = texts.Vocabulary(args.model_dir / "vocab.txt")
    sets = texts.mixed_sets(vocab, args.seed, 8192, 4096)
    loads = [Load("short", sets["short"], args.short_clients, 1, args.encoding),
             Load("ingest", sets["long"], args.ingest_clients, args.ingest_size, args.encoding)]
    if args.only:
        loads = [l for l in loads if l.name == args.only]
    builds = {"this": args.bin_dir.resolve()}
    if args.baseline_bin:
        builds["baseline"] = args.baseline_bin.resolve()
    for name, d in builds.items():
        say(f"{name}: {d}")
    say("loads: " + "; ".join(f"{l.name}: {l.clients} clients x {l.per_request} text(s)" for l in loads)
        + f"; {args.seconds:g} s each, {args.rounds} rounds, {args.encoding}")

    results = {b: {l.name: [] for l in loads} for b in builds}
    samples = {b: {} for b in builds}
    with contextlib.ExitStack() as stack:
        try:
            servers = {}
            for name, d in builds.items():
                s = MlxServe(d, args.model_dir.resolve(), MODEL)
                stack.callback(s.cleanup)
                s.start(args.config, name)
                servers[name] = s
                say(f"  {name}: {s.version()} pid {s.pid} at {s.url}")
            for name, s in servers.items():  # warm-up: the worker's load, first batches, the HTTP stack
                for load in loads:
                    _, _, err = asyncio.run(_drive(s.url, load, 2, {}))
                    if err:
                        raise ServerFailed(f"{name} warm-up: {err}")
            if args.perf:
                perf_pass(servers["this"], loads, args.perf_seconds, args.perf, {})
            order = list(builds)
            for r in range(args.rounds):
                say(f"\n## Round {r + 1}")
                for name in order if r % 2 == 0 else order[::-1]:
                    for load in loads:
                        m = measure(servers[name], load, args.seconds, samples[name])
                        results[name][load.name].append(m)
                        say(row_line(name, load.name, m) + (f"  FAILED: {m['error']}" if m["error"] else ""))
                        if args.threads:
                            top = sorted(m["threads"].items(), key=lambda kv: -kv[1][1])
                            say("      threads: " + ", ".join(f"{k} x{n}: {s:.2f} s" for k, (n, s) in top if s > 0))
        except KeyboardInterrupt:
            sys.exit(130)
        except ServerFailed as e:
            say(f"server failed: {e}")
            sys.exit(1)
    report(results, loads, list(builds))
    if len(builds) == 2:
        say(compare_builds({b: {k: v for k, v in samples[b].items()} for b in builds}))
    say(f"load average at end: {loadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"builds": {k: str(v) for k, v in builds.items()}, "results": results},
                                        indent=1, default=str))


if __name__ == "__main__":
    main()
