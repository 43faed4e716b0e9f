#!/usr/bin/env python3
"""mlx-serve under mixed-length traffic, beside sentence-transformers and Infinity, in one run.

Texts (bench/serving/texts.py): search queries of 3-12 words and, separately, RAG passages
of 6-120 words, generated from --seed with a Zipf-distributed vocabulary and shuffled.
Fixed-length sets only as extra rows (--fixed).

Load (bench/serving/load.py): C concurrent aiohttp clients (default 64) in this process, one
text per OpenAI /v1/embeddings request, base64, for a fixed time (--seconds) or number of
texts (--texts). Every answer is checked; a sample is compared with sentence-transformers'
vector of the same text (cosine >= 0.999), so a broken server cannot post a number.

Rows, in this order (sentence-transformers runs first and last; ratios use the mean, and
both passes are printed to show how much the shared machine drifted):
  1. sentence-transformers in-process, `model.encode(texts, batch_size=B)`, B its best for each
     set: each of --st-batch-sizes is probed for --probe-seconds first (`--st-batch-sizes 32`:
     32 alone, the library's default)
  2. mlx-serve, defaults (batching on): texts/s, /metrics batches, RSS peak and 10 s after, p50
  3. mlx-serve, `batch.max_batch_size: 1` (batching off)
  4. Infinity (`infinity-emb[server,torch]`, --engine torch --device cpu), same texts and load;
     skipped with a message when its venv is missing
  5. sentence-transformers again
The servers start with their real CLIs (mlx-serve: `pull FOLDER --name`, `start --foreground`
in a throwaway MLX_SERVE_HOME) and are stopped at the end, on error and on Ctrl-C.

Worker forward speed at 32 x 128 tokens is measured by bench/worker_vs_sentence_transformers.sh.

Usage (the reference Python has torch, sentence-transformers and aiohttp):
  .deps/ref-venv/bin/python bench/serve_mixed.py [--seed 1] [--clients 64]
      [--seconds 15 | --texts N] [--fixed] [--quick] [--json FILE]
Install Infinity once for its row (about 6 GB with torch's CUDA wheels):
  python3 -m venv ~/.cache/mlx-serve/infinity-venv
  ~/.cache/mlx-serve/infinity-venv/bin/pip install "infinity-emb[server,torch]"
"""
import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from serving import library, load, prom, report, rss, texts
from serving.servers import Infinity, MlxServe, ServerFailed

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"
AFTER_S = 10  # RSS is read this long after the passage load ends (issue 12)
CONFIG_ON = "# defaults: batching on\n"
CONFIG_OFF = "batch:\n  max_batch_size: 1\n"


def say(*a):
    print(*a, flush=True)


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    model = info.get("Model name", "?").strip()
    return f"{model}, {info.get('CPU(s)', '?').strip()} CPUs ({len(os.sched_getaffinity(0))} usable)"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def busy() -> bool:
    """More runnable work than CPUs (before the run starts: other jobs on the machine)."""
    return os.getloadavg()[0] > len(os.sched_getaffinity(0))


BUSY = ("WARNING: the machine was busy before the run (load average above its CPU count): every row "
        "is slowed unevenly, torch's multi-threaded rows most (its threads wait for each other), so "
        "the ratios and PASS/MISS {} are not evidence; rerun on a quiet machine")


def tree_state() -> str:
    """Commit of the tree measured, and a warning when the binaries are older than its sources."""
    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], check=False, capture_output=True, text=True).stdout.strip()
    state = git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if git("status", "--porcelain") else "")
    return f"{git('rev-parse', '--abbrev-ref', 'HEAD')} {state}"


def stale_binaries(bin_dir: Path):
    built = min((bin_dir / b).stat().st_mtime for b in ("mlx-serve", "mlx-serve-worker"))
    newest = max(p.stat().st_mtime for d in ("supervisor", "worker", "protocol") for p in (ROOT / d).rglob("*.rs"))
    return newest > built


def best_batch_sizes(st, sets, args) -> dict:
    """sentence-transformers' best `batch_size` per set: each candidate encodes the set's
    texts for --probe-seconds; the fastest is used for that set's rows."""
    sizes = [int(b) for b in args.st_batch_sizes.split(",")]
    best = {}
    for name, ts in sets.items():
        if len(sizes) == 1:
            best[name] = sizes[0]
            continue
        rates = {}
        for b in sizes:
            st.batch_size = b
            rates[b] = st.throughput(ts, seconds=args.probe_seconds)["rate"]
        best[name] = max(rates, key=rates.get)
        say(f"  sentence-transformers batch_size probe, {name}: "
            + ", ".join(f"{b}: {r:.1f}" for b, r in rates.items()) + f" texts/s -> {best[name]}")
    return best


def run_st(st, sets, args) -> dict:
    row = {"label": st.label}
    for name, ts in sets.items():
        st.batch_size = args.st_best[name]
        say(f"  sentence-transformers, {name} (batch_size {st.batch_size}) ...")
        row[name] = st.throughput(ts, seconds=args.seconds, count=args.texts)
    return row


def measure(server, label, sets, st, args, *, memory: bool) -> dict:
    """Loads on every set; with `memory`: RSS peaks, RSS 10 s after the passages, p50."""
    row = {"label": label}
    url, model = server.url, server.model
    for ts in sets.values():  # warm-up: first batches, buffer pools, the HTTP stack
        load.throughput(url, model, ts[len(ts) // 2:], st.dims, args.clients, count=args.clients)
    row["rss_warm"] = rss.tree_rss(server.pid)
    for name, ts in sets.items():
        say(f"  {label}, {name} ...")
        before = server.metrics_text() if hasattr(server, "metrics_text") else None
        cpu0 = (time.process_time(), rss.tree_cpu_seconds(server.pid), time.perf_counter())
        with rss.PeakSampler(server.pid) as sampler:
            res = load.throughput(url, model, ts, st.dims, args.clients, seconds=args.seconds, count=args.texts)
        wall = time.perf_counter() - cpu0[2]
        # CPU cores each side used over the load: the load generator (this process) must be
        # far from the machine's count for the rate to be the server's.
        cpu = {"client_cores": (time.process_time() - cpu0[0]) / wall,
               "server_cores": (rss.tree_cpu_seconds(server.pid) - cpu0[1]) / wall}
        after = server.metrics_text() if before is not None else None
        min_cos = load.verify(res, ts, st.vectors)
        row[name] = {"rate": res.rate, "done": res.done, "error": res.error, "min_cosine": min_cos,
                     "peak_rss": sampler.peak, "batches": prom.batch_stats(before, after) if before else None, **cpu}
        say(f"    {res.rate:.0f} texts/s; CPU cores used: server {cpu['server_cores']:.2f}, "
            f"load generator {cpu['client_cores']:.2f} (of {len(os.sched_getaffinity(0))})")
        if res.error:
            say(f"    FAILED: {res.error}")
        if name == "long" and memory:
            time.sleep(AFTER_S)  # the measurement itself: memory once the server has been idle 10 s
            row["rss_after"] = rss.tree_rss(server.pid)
    if memory:
        row["p50"] = load.latency(url, model, sets["short"], st.dims, n=args.latency_n)
    return row


def run_rows(args, sets, st, model_dir):
    """Every row, servers stopped whatever happens. Returns (rows, ST passes, ST one-text latency)."""
    rows, st_passes = [], []
    with contextlib.ExitStack() as stack:
        try:
            say("\n## Runs")
            args.st_best = best_batch_sizes(st, sets, args)
            st_passes.append(run_st(st, sets, args))
            st_p50 = load.percentiles(st.latency(sets["short"], n=args.latency_n))

            mlx = MlxServe(args.bin_dir, model_dir, MODEL)
            stack.callback(mlx.cleanup)
            say(f"  {mlx.version()}, home {mlx.home}")
            for label, log, config, memory, which in (
                    ("mlx-serve, batching on (defaults)", "on", CONFIG_ON, True, sets),
                    ("mlx-serve, batching off (max_batch_size 1)", "off", CONFIG_OFF, False,
                     {k: sets[k] for k in ("short", "long")})):
                try:
                    mlx.start(config, log)
                    rows.append(measure(mlx, label, which, st, args, memory=memory))
                except ServerFailed as e:
                    say(f"  {label}: {e}")
                    rows.append({"label": label, "skipped": "server failed (log above)"})
                finally:
                    mlx.stop()

            rows.append(run_infinity(args, sets, st, model_dir, stack))
            if not args.quick:
                st_passes.append(run_st(st, sets, args))
        except KeyboardInterrupt:
            sys.exit(130)
    return rows, st_passes, st_p50


def run_infinity(args, sets, st, model_dir, stack) -> dict:
    infinity = Infinity(args.infinity_venv, model_dir)
    why = "--no-infinity" if args.no_infinity else infinity.missing()
    if why:
        say(f"  Infinity row skipped: {why}")
        return {"label": "Infinity", "skipped": why}
    stack.callback(infinity.cleanup)
    label = infinity.version()
    say(f"  {label}: starting (torch import and warm-up take a while) ...")
    t0 = time.monotonic()
    try:
        infinity.start()
        say(f"  {label}: ready after {time.monotonic() - t0:.0f} s")
        return measure(infinity, label + ", torch CPU", sets, st, args, memory=True)
    except ServerFailed as e:
        say(f"  {label}: {e}")
        return {"label": label, "skipped": "server failed (log above)"}
    finally:
        infinity.cleanup()


def print_report(args, sets, rows, st_passes, st_p50):
    passes = "" if len(st_passes) == 1 else " (mean of 2 passes)"
    sizes = sorted(set(args.st_best.values()))
    best = "batch " + ("/".join(f"{args.st_best[n]} ({n})" for n in sets) if len(sizes) > 1 else str(sizes[0]))
    st_row = {"label": f"sentence-transformers in-process, {best}{passes}"}
    for name in sets:
        rates = [p[name]["rate"] for p in st_passes]
        st_row[name] = {"rate": sum(rates) / len(rates), "passes": rates}
    say("\n## Details")
    say("sentence-transformers passes (texts/s, first / last): " + "; ".join(
        f"{name} " + " / ".join(f"{r:.0f}" for r in st_row[name]["passes"]) for name in sets))
    say(f"sentence-transformers one text in-process: p50 {st_p50['p50_ms']:.2f} ms, p90 {st_p50['p90_ms']:.2f} ms")
    for row in rows:
        if not row.get("skipped"):
            p = row.get("p50")
            say(f"{row['label']}: RSS after warm-up {report.mib(row.get('rss_warm'))}"
                + (f", 10 s after passages {report.mib(row.get('rss_after'))}" if row.get("rss_after") else "")
                + (f"; one short request p50 {p['p50_ms']:.2f} ms, p90 {p['p90_ms']:.2f} ms" if p else ""))
    say("\n" + report.batches([r for r in rows if not r.get("skipped")]))
    per_load = f"{args.texts} texts" if args.texts else f"{args.seconds:g} s"
    say(f"\n## Summary (seed {args.seed}, {args.clients} clients, {per_load} per load; {machine()})\n")
    say(report.comparison(rows, st_row, sets, st_p50))
    say("\n" + report.targets(rows[0], rows[1], st_row, st_p50))
    if args.busy:
        say("\n" + BUSY.format("above"))
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "machine": machine(), "sentence_transformers": st_row,
                                         "st_batch_size": args.st_best,
                                         "st_one_text": st_p50, "rows": rows}, indent=1, default=str))


def interrupted(*_):
    """Ctrl-C or SIGTERM: end the run; the servers are stopped on the way out. A second
    signal while they stop is ignored, so it cannot cut the stopping short."""
    if getattr(interrupted, "seen", False):
        return
    interrupted.seen = True
    say("\ninterrupted: stopping servers (a loaded server finishes its accepted requests first)")
    raise KeyboardInterrupt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1, help="text set (another seed: another set of the same shape)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=15, help="length of each load (default 15)")
    ap.add_argument("--texts", type=int, help="a fixed number of texts per load instead of --seconds")
    ap.add_argument("--fixed", action="store_true", help="extra rows: every text the same length")
    ap.add_argument("--quick", action="store_true", help="smoke check: 3 s loads, small sets, ST once")
    ap.add_argument("--no-infinity", action="store_true")
    ap.add_argument("--model-dir", type=Path, default=ROOT / ".deps" / MODEL)
    ap.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release")
    ap.add_argument("--infinity-venv", type=Path, default=Path.home() / ".cache/mlx-serve/infinity-venv")
    ap.add_argument("--st-batch-sizes", default="16,32,64,128",
                    help="sentence-transformers batch sizes probed per set; the best is its setting (default 16,32,64,128)")
    ap.add_argument("--probe-seconds", type=float, default=5, help="each batch-size probe (default 5)")
    ap.add_argument("--json", type=Path, help="also write every number to this file")
    args = ap.parse_args()
    if args.quick:
        args.seconds = 3
    if args.quick:
        args.probe_seconds = 1
    if args.texts:
        args.seconds = None
    args.latency_n = 30 if args.quick else 100
    model_dir = args.model_dir.resolve()

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    say(f"# mlx-serve mixed-length benchmark, seed {args.seed}")
    args.busy = busy()
    say(f"machine: {machine()}; load average at start: {loadavg()}")
    if args.busy:
        say(BUSY.format("below"))
    say(f"tree: {tree_state()}; binaries: {args.bin_dir}")
    if stale_binaries(args.bin_dir):
        say("WARNING: some .rs files are newer than the binaries: if they changed, rebuild "
            "(cargo build --release --locked --workspace) to measure this tree")
    per_load = f"{args.texts} texts" if args.texts else f"{args.seconds:g} s"
    say(f"load: {args.clients} concurrent clients, one text per request, /v1/embeddings base64, {per_load} per load")

    vocab = texts.Vocabulary(model_dir / "vocab.txt")
    n_short, n_long = (1024, 512) if args.quick else (8192, 4096)
    sets = texts.mixed_sets(vocab, args.seed, n_short, n_long)
    if args.fixed:
        sets.update(texts.fixed_sets(vocab, args.seed, n_short // 4, n_long // 4))
    st = library.SentenceTransformers(model_dir)
    say(f"library: {st.label}")
    for name, ts in sets.items():
        say(f"{name}: {texts.describe(ts, st.model.tokenizer)}")

    rows, st_passes, st_p50 = run_rows(args, sets, st, model_dir)
    print_report(args, sets, rows, st_passes, st_p50)
    say(f"\nload average at end (this run's own included): {loadavg()}; total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
