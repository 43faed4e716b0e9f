#!/usr/bin/env python3
"""Every architecture family at a published model's size, served over HTTP beside
sentence-transformers at its best batch size, in one run (issue 25: >= 0.9x its texts/s on
the CPU).

Per family (bench/real_size_shape.py builds the random-weight model from the published
config.json values and sentence-transformers pipeline):
  1. sentence-transformers in-process, `encode(texts, batch_size=B)` in 256-text calls, for
     each B of --batch-sizes over --probe-seconds; the best B is its setting for the rest;
  2. sentence-transformers at that B for --seconds (pass 1);
  3. mlx-serve (defaults, `pull FOLDER`, `start --foreground`) under C concurrent HTTP
     clients for --seconds, every answer checked, a sample compared with
     sentence-transformers' vectors (cosine >= 0.999); the load generator's own CPU time
     is printed, so it can be seen not to be the bottleneck; RSS peak and 10 s after;
  4. sentence-transformers again (pass 2). The ratio uses the mean of the two passes.
Texts: mixed-length traffic in random order, search queries (3-12 words) and RAG passages
(6-120 words) shuffled together (bench/serving/texts.py), the same stream for both sides.

Usage (from the repository root, the reference venv has torch, sentence-transformers,
aiohttp; about 3 minutes per family on 2 cores, gte-qwen2-1.5b longer):
  .deps/ref-venv/bin/python bench/families.py [--shapes a,b] [--seconds 20] [--clients 32]
      [--batch-sizes 8,16,32,64,128] [--work DIR] [--json FILE]
Built models are kept in --work (default ~/.cache/mlx-serve-dev/real-size) for the next run.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from serving import library, load, prom, rss, texts
from serving.servers import MlxServe, ServerFailed

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ["msmarco-distilbert-base-v4", "all-mpnet-base-v2", "nomic-embed-text-v1.5", "gte-multilingual-base",
          "gte-modernbert-base", "embeddinggemma-300m", "gte-qwen2-1.5b", "nomic-embed-text-v2-moe"]
TARGET = 0.9
AFTER_S = 10


def say(*a):
    print(*a, flush=True)


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    return f"{info.get('Model name', '?').strip()}, {len(os.sched_getaffinity(0))} usable CPUs"


def build(shape: str, work: Path) -> dict:
    """The shape's folders, built once and kept (a JSON stamp says what is there)."""
    out = work / shape
    stamp = work / f"{shape}.json"
    if stamp.exists() and out.exists():
        return json.loads(stamp.read_text())
    say(f"  building {shape} (random weights at the published sizes) ...")
    work.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "real_size_shape.py"), shape, str(out)],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(f"real_size_shape.py {shape} failed:\n{run.stderr[-3000:]}")
    info = json.loads(run.stdout.strip().splitlines()[-1])
    stamp.write_text(json.dumps(info))
    return info


def traffic(seed: int) -> list:
    """Queries and passages, 1:1, in one shuffled stream."""
    vocab = texts.Vocabulary(ROOT / ".deps" / "all-MiniLM-L6-v2" / "vocab.txt")
    sets = texts.mixed_sets(vocab, seed, 2048, 2048)
    mixed = sets["short"] + sets["long"]
    random.Random(f"mlx-serve-bench/families/{seed}").shuffle(mixed)
    return mixed


def best_batch(st, stream, sizes, probe_s) -> tuple:
    rates = {}
    for b in sizes:
        st.batch_size = b
        rates[b] = st.throughput(stream, seconds=probe_s)["rate"]
        say(f"    sentence-transformers batch_size {b}: {rates[b]:.1f} texts/s")
    best = max(rates, key=rates.get)
    st.batch_size = best
    return best, rates


def serve(info, stream, st, args) -> dict:
    mlx = MlxServe(args.bin_dir, Path(info["serve_dir"]), info["shape"])
    try:
        mlx.start(args.config, "families")
        url = mlx.url
        load.throughput(url, info["shape"], stream[-512:], st.dims, args.clients, count=2 * args.clients)  # warm-up
        before = mlx.metrics_text()
        cpu0, t0 = time.process_time(), time.perf_counter()
        with rss.PeakSampler(mlx.pid) as sampler:
            res = load.throughput(url, info["shape"], stream, st.dims, args.clients, seconds=args.seconds)
        client_cpu = (time.process_time() - cpu0) / (time.perf_counter() - t0)
        batches = prom.batch_stats(before, mlx.metrics_text())
        min_cos = load.verify(res, stream, st.vectors)
        time.sleep(AFTER_S)
        return {"rate": res.rate, "done": res.done, "error": res.error, "min_cosine": min_cos,
                "client_cpu_cores": client_cpu, "peak_rss": sampler.peak, "rss_after": rss.tree_rss(mlx.pid),
                "batches": batches}
    except ServerFailed as e:
        return {"rate": None, "error": str(e)}
    finally:
        mlx.cleanup()


def mib(x):
    return f"{x / 2**20:.0f} MiB" if x else "?"


def run_family(shape, stream, args) -> dict:
    say(f"\n## {shape}")
    info = build(shape, args.work)
    st = library.SentenceTransformers(info["st_dir"])
    say(f"  {info['family']}, {info['parameters'] / 1e6:.0f}M parameters, {st.dims} dims; {st.label}")
    say("  " + texts.describe(stream[:1024], st.model.tokenizer))
    best, probes = best_batch(st, stream, args.batch_sizes, args.probe_seconds)
    passes = [st.throughput(stream, seconds=args.seconds)["rate"]]
    say(f"  sentence-transformers at batch_size {best}: {passes[0]:.1f} texts/s; mlx-serve ...")
    server = serve(info, stream, st, args)
    passes.append(st.throughput(stream, seconds=args.seconds)["rate"])
    st_rate = sum(passes) / len(passes)
    row = {"shape": shape, "family": info["family"], "parameters": info["parameters"], "st_best_batch": best,
           "st_probes": probes, "st_passes": passes, "st_rate": st_rate, "server": server,
           "ratio": server["rate"] / st_rate if server.get("rate") else None}
    if server.get("error"):
        say(f"  mlx-serve FAILED: {server['error']}")
    else:
        b = server["batches"]
        say(f"  mlx-serve {server['rate']:.1f} texts/s = {row['ratio']:.2f}x (ST passes "
            f"{passes[0]:.1f} / {passes[1]:.1f}); min cosine {server['min_cosine']:.5f}; "
            f"{b['sequences_per_batch']:.1f} texts, {b['real_tokens_per_forward']:.0f} tokens, "
            f"{b['forward_ms'] or 0:.0f} ms per forward; load generator {server['client_cpu_cores']:.2f} "
            f"CPU cores; RSS peak {mib(server['peak_rss'])}, 10 s after {mib(server['rss_after'])}")
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of: {', '.join(SHAPES)}")
    ap.add_argument("--seconds", type=float, default=20, help="each measured load (default 20)")
    ap.add_argument("--probe-seconds", type=float, default=8, help="each batch-size probe (default 8)")
    ap.add_argument("--batch-sizes", default="8,16,32,64,128")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "mlx-serve-dev" / "real-size")
    ap.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release")
    ap.add_argument("--config", default="# defaults\n",
                    help="mlx-serve config.yaml for the server rows (default: the defaults)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    shapes = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown shapes {unknown}; known: {SHAPES}")

    say(f"# families at published sizes: mlx-serve over HTTP vs sentence-transformers, seed {args.seed}")
    say(f"machine: {machine()}; load average at start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if args.config.strip() != "# defaults":
        say(f"mlx-serve config.yaml: {args.config!r}")
    say(f"load: {args.clients} concurrent clients, one text per /v1/embeddings request (base64), "
        f"{args.seconds:g} s per measured load; ST batch sizes probed: {args.batch_sizes}")
    stream = traffic(args.seed)
    rows = [run_family(s, stream, args) for s in shapes]

    say(f"\n## Summary ({machine()}; target >= {TARGET}x)\n")
    say("| family | shape | params | ST best batch | ST texts/s | mlx-serve texts/s | ratio | min cos | "
        "load gen CPU | RSS 10 s after |")
    say("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["server"]
        ok = r["ratio"] is not None and r["ratio"] >= TARGET
        ratio = f"{r['ratio']:.2f}x {'PASS' if ok else 'MISS'}" if r["ratio"] else f"FAILED ({s.get('error')})"
        say(f"| {r['family']} | {r['shape']} | {r['parameters'] / 1e6:.0f}M | {r['st_best_batch']} | "
            f"{r['st_rate']:.1f} | {s['rate'] or 0:.1f} | {ratio} | {s.get('min_cosine') or 0:.5f} | "
            f"{s.get('client_cpu_cores', 0):.2f} | {mib(s.get('rss_after'))} |")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "machine": machine(), "rows": rows}, indent=1,
                                        default=str))


if __name__ == "__main__":
    main()
