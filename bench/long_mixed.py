#!/usr/bin/env python3
"""Short queries beside ~8k-token documents: does a long input hold up the short ones?

The check (docs/long-documents.md, "Long documents beside short queries"): with one 8k-token
document a second mixed into short-query traffic at 64 clients, the short queries' p50
stays within 1.5x of its value without the documents, and memory stays bounded.

One mlx-serve server (bench/serving/servers.py: the real CLI in a throwaway home, embedding
cache off), the model by folder (--model-dir, default all-MiniLM-L6-v2 from .deps) and store
name (--model). Phases, one after the other against the same server, in one run:
  A  --clients closed-loop clients (bench/serving/closed_loop.py), one short text a request
     (search queries of 3-12 words, mixed lengths in random order: bench/serving/texts.py),
     for --seconds;
  B  the same, plus an open-loop stream: one document of --doc-tokens tokens every
     --doc-interval seconds (each sent on schedule whatever the earlier ones are doing),
     each a different text (bench/serving/documents.py), to /v1/embeddings with
     `chunking: true` (docs/long-documents.md): one window where the model's window holds
     it, else as many windows as it takes;
  C  (--late) B with `late_chunking: {"separator": "\\n\\n"}` instead (one vector per paragraph).
Per phase: short-query p50/p90/p99 and texts/s; documents sent, completed during the phase,
after it, and their latency; the server's token rate (/metrics `mlx_serve_tokens_total`);
peak RSS of the server tree sampled every 50 ms during the phase (bench/serving/rss.py) and
its RSS 10 s after; CPU cores used by the server and by this load generator (all its
processes) over the phase. Then p50(B) / p50(A) against the target of 1.5.

Overload: when the documents' tokens come faster than the server computes them, they pile
up, the phase measures a growing backlog and its p50 is not comparable. A phase is marked
OVERLOADED when the documents' tokens per second exceed all the tokens per second the
server computed in the phase (/metrics), when a document failed, or when one sent early
enough to have had twice the fastest document's latency before the phase ended had not
finished by then. With fewer than 3 such documents the phase is too short to tell, and
says so. The offered document token rate is printed beside the server's computed rate.

Checked: every answer is HTTP 200 with one base64 vector of the model's dimension; every
8th short text's vector is compared with sentence-transformers' (cosine >= 0.999); every
document's vector is finite (and unit-length where the model normalizes), and its `usage`
holds at least the document's tokens (a truncated document fails); its window count
(`chunks`) is printed. The chunked vector's value itself is tested against a reference in
tests/long_documents.rs. A failed document prints the server log's lines about workers.

Usage (the reference Python: sentence-transformers, tokenizers, aiohttp):
  .deps/ref-venv/bin/python bench/long_mixed.py [--seconds 20] [--clients 64]
      [--doc-interval 1.0] [--doc-tokens 8000] [--late] [--model-dir DIR] [--model NAME]
      [--window 8192] [--compute-dtype float16] [--config SECTION.KEY=VALUE ...]
      [--procs N] [--json OUT] [--log-dir DIR] [--baseline-bin DIR] [--no-chunked]
With --baseline-bin, every phase runs first on that folder's binaries (a build of main),
then on --bin-dir's, and a table gives the short queries' p50 / p99 of each beside the other.
Real-size random-weight shape with an 8192-token window (one window per document; on a
CPU such a forward runs past the hung-worker watchdog and the request timeout, see
docs/long-documents.md):
  .deps/ref-venv/bin/python bench/real_size_shape.py nomic-embed-text-v1.5 DIR
  .deps/ref-venv/bin/python bench/long_mixed.py --model-dir DIR --window 8192 \
      --seconds 120 --doc-interval 120 [--config limits.hung_worker_seconds=0 \
      --config limits.request_timeout_seconds=900]
"""
import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from serving import closed_loop, load, prom, rss, texts
from serving.documents import Documents
from serving.servers import MlxServe

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"
AFTER_S = 10  # RSS is read this long after a phase's traffic ends
TARGET_RATIO = 1.5
MiB = 2 ** 20
LATE = {"separator": "\n\n"}
DOC_TIMEOUT_S = 1800  # the client gives up on a document after this (the server's own limit comes first)


def say(*a):
    print(*a, flush=True)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] * 1e3 if xs else float("nan")


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable)"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def _send_doc(session, url, body, dims, normalized, doc_tokens):
    """One document of `doc_tokens` tokens; returns (seconds, windows, usage tokens, late
    chunks) or raises."""
    t0 = time.perf_counter()
    async with session.post(url + "/v1/embeddings", json=body) as r:
        payload = await r.read()
        status = r.status
    took = time.perf_counter() - t0
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {payload[:200]!r}")
    got = json.loads(payload)
    items = got["data"]
    if len(items) != 1:
        raise RuntimeError(f"expected one item, got {len(items)}")
    v = load.decode(items[0]["embedding"])
    norm2 = float((v * v).sum())
    if len(v) != dims or not math.isfinite(norm2) or (abs(norm2 - 1) > 1e-3 if normalized else norm2 == 0):
        raise RuntimeError(f"document vector: {len(v)} values, norm² {norm2:.4f} (want {dims}, unit: {normalized})")
    if got["usage"]["prompt_tokens"] < doc_tokens:  # truncated: the document was not computed whole
        raise RuntimeError(f"usage {got['usage']['prompt_tokens']} tokens, fewer than the document's {doc_tokens}")
    late = items[0].get("late_chunks")
    if "late_chunking" in body and not late:
        raise RuntimeError("late_chunking asked for, no late_chunks in the answer")
    return took, items[0].get("chunks", 1), got["usage"]["prompt_tokens"], len(late or [])


async def _warm_doc(url, model, doc, dims, mode, normalized, doc_tokens):
    import aiohttp
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DOC_TIMEOUT_S)) as session:
        body = {"model": model, "input": doc, "encoding_format": "base64", **mode}
        return await _send_doc(session, url, body, dims, normalized, doc_tokens)


async def _documents(url, model, docs, dims, mode, t0, args, clients, at_end):
    """The open-loop stream over the phase, then the wait for the short clients' results,
    `at_end()` (the server's metrics as the short traffic ends) and a bounded drain of the
    documents still running."""
    import aiohttp
    done, errors, tasks = [], [], []
    window_end = t0 + args.seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DOC_TIMEOUT_S)) as session:
        async def one(k):
            body = {"model": model, "input": docs[k], "encoding_format": "base64", **mode}
            sent = time.perf_counter()
            try:
                took, windows, tokens, chunks = await _send_doc(session, url, body, dims, args.normalized,
                                                                args.doc_tokens)
                done.append({"k": k, "sent_s": sent - t0, "seconds": took, "end": sent + took,
                             "windows": windows, "tokens": tokens, "late_chunks": chunks})
            except Exception as e:  # noqa: BLE001 - counted and printed
                errors.append(f"document {k}: {type(e).__name__}: {e}")

        k = 0
        while docs and (at := t0 + k * args.doc_interval) < window_end and k < len(docs):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(k)))
            k += 1
        short = await asyncio.get_running_loop().run_in_executor(None, clients.results)
        short["at_end"] = await asyncio.get_running_loop().run_in_executor(None, at_end)
        pending = [t for t in tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=args.drain_s)
            for t in still:
                t.cancel()
            await asyncio.gather(*still, return_exceptions=True)
    return short, {"sent": len(tasks), "done": done, "errors": errors, "running_at_end": len(pending),
                   "completed_in_phase": sum(1 for d in done if d["end"] <= window_end)}


def scrape(server):
    """/metrics, or None when it does not answer in 120 s (said, with how long it took)."""
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(server.url + "/metrics", timeout=120) as r:
            text = r.read().decode()
    except OSError as e:
        say(f"  /metrics did not answer: {e} after {time.perf_counter() - t0:.1f} s")
        return None
    if time.perf_counter() - t0 > 1:
        say(f"  /metrics took {time.perf_counter() - t0:.1f} s to answer")
    return text


def phase(server, name, shorts, docs, mode, st, args) -> dict:
    clients = closed_loop.Clients(server.url, server.model, shorts, st.dims, args.clients, args.seconds, args.procs)
    m0, cpu0, srv0 = scrape(server), time.process_time(), rss.tree_cpu_seconds(server.pid)
    pids0 = set(rss.tree(server.pid))

    def at_end():  # the server's metrics and both sides' CPU as the short traffic ends
        wall, srv, cpu, pids = time.perf_counter() - t0, rss.tree_cpu_seconds(server.pid), time.process_time(), \
            set(rss.tree(server.pid))
        return (scrape(server), wall, srv, cpu, pids)

    with rss.PeakSampler(server.pid) as sampler:
        t0 = time.perf_counter()
        clients.go()
        short, d = asyncio.run(_documents(server.url, server.model, docs or [], st.dims, mode, t0, args, clients,
                                          at_end))
    m1, wall, srv1, cpu1, pids1 = short["at_end"]
    # A worker that exited in the phase takes its CPU seconds with it: then not measured.
    srv_cores = (srv1 - srv0) / wall if pids0 <= pids1 else None
    client_cores = (short["cpu_s"] + cpu1 - cpu0) / wall
    res = load.LoadResult()
    res.samples = {i: load.decode(b) for i, b in short["samples"].items()}
    res.error = short["error"]
    min_cos = load.verify(res, shorts, st.vectors)
    lat = short["latencies"]
    in_window = sum(1 for e in short["ends"] if e <= args.seconds)
    out = {"phase": name, "short": {"requests": len(lat), "texts_per_s": in_window / args.seconds,
                                    "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99),
                                    "max_ms": pct(lat, 100), "error": res.error, "min_cosine": min_cos},
           "batches": prom.batch_stats(m0, m1) if m0 and m1 else {}, "server_cores": srv_cores, "client_cores": client_cores,
           "client_procs": clients.procs, "wall_s": wall, "peak_rss": sampler.peak}
    out["server_tokens_per_s"] = (out["batches"].get("real_tokens") or 0) / wall
    if docs:
        secs = [x["seconds"] for x in d["done"]]
        # Documents that had twice the fastest one's time before the phase ended: each
        # should have finished in it; one that did not means the documents pile up.
        fastest = min(secs) if secs else float("inf")
        due = {k for k in range(d["sent"]) if k * args.doc_interval + 2 * fastest <= args.seconds}
        finished = {x["k"] for x in d["done"] if x["end"] <= t0 + args.seconds}
        out["documents"] = {
            "sent": d["sent"], "completed_in_phase": d["completed_in_phase"], "completed": len(d["done"]),
            "running_at_end": d["running_at_end"], "unfinished": d["sent"] - len(d["done"]) - len(d["errors"]),
            "errors": d["errors"], "p50_s": statistics.median(secs) if secs else None,
            "max_s": max(secs) if secs else None, "fastest_s": min(secs) if secs else None,
            "windows": sorted({x["windows"] for x in d["done"]}),
            "tokens": sorted({x["tokens"] for x in d["done"]}),
            "late_chunks": sorted({x["late_chunks"] for x in d["done"]}),
            "offered_tokens_per_s": args.doc_tokens / args.doc_interval,
            "due": len(due), "due_unfinished": len(due - finished),
            "overloaded": (bool(d["errors"]) or not secs or bool(due - finished) or len(secs) < d["sent"]
                           or args.doc_tokens / args.doc_interval > out["server_tokens_per_s"])}
    time.sleep(AFTER_S)  # memory once the server has been idle 10 s
    out["rss_after"] = rss.tree_rss(server.pid)
    return out


def describe_phase(r, base):
    s, b = r["short"], r["batches"]
    say(f"  short queries: {s['requests']} answered, {s['texts_per_s']:.0f} texts/s within the phase; latency p50 "
        f"{s['p50_ms']:.1f} ms, p90 {s['p90_ms']:.1f}, p99 {s['p99_ms']:.1f}, max {s['max_ms']:.0f}; lowest cosine vs "
        f"sentence-transformers {s['min_cosine'] if s['min_cosine'] is None else round(s['min_cosine'], 5)}")
    if s["error"]:
        say(f"  FAILED: {s['error']}")
    fwd = f"{b['forward_ms']:.1f} ms" if b.get("forward_ms") is not None else "?"
    say(f"  server computed {r['server_tokens_per_s']:.0f} tokens/s (/metrics), {b.get('forwards') or 0:.0f} forwards "
        f"(mean {b.get('sequences_per_batch') or 0:.1f} sequences, {b.get('real_tokens_per_forward') or 0:.0f} tokens, "
        f"worker forward {fwd})")
    srv = "not measured (a worker exited)" if r["server_cores"] is None else f"{r['server_cores']:.2f}"
    say(f"  CPU cores used: server {srv}, load generator {r['client_cores']:.2f} "
        f"({r['client_procs']} client processes + this one) of {len(os.sched_getaffinity(0))}")
    if r["client_cores"] > 0.8 * r["client_procs"]:
        say("  WARNING: the load generator is near its CPU limit: latencies include its own queueing (--procs)")
    say(f"  server tree RSS: peak {r['peak_rss'] / MiB:.0f} MiB during the phase, {r['rss_after'] / MiB:.0f} MiB "
        f"{AFTER_S} s after")
    d = r.get("documents")
    if not d:
        return
    p50 = f"{d['p50_s']:.2f} s" if d["p50_s"] is not None else "-"
    mx = f"{d['max_s']:.2f} s" if d["max_s"] is not None else "-"
    say(f"  documents: sent {d['sent']}, completed during the phase {d['completed_in_phase']} (of {d['due']} due "
        f"by then at twice the fastest one's latency), in all "
        f"{d['completed']}, running at its end {d['running_at_end']}, unfinished after the drain {d['unfinished']}, "
        f"failed {len(d['errors'])}; latency p50 {p50}, max {mx}; windows {d['windows']}, usage tokens "
        f"{d['tokens']}" + (f", late chunks {d['late_chunks']}" if any(d["late_chunks"]) else ""))
    for e in d["errors"][:3]:
        say(f"    {e}")
    frac = d["offered_tokens_per_s"] / base["server_tokens_per_s"] if base["server_tokens_per_s"] else float("nan")
    say(f"  document tokens offered {d['offered_tokens_per_s']:.0f} tokens/s = {100 * frac:.0f}% of the "
        f"{base['server_tokens_per_s']:.0f} tokens/s the server computed in phase A (in this phase: "
        f"{r['server_tokens_per_s']:.0f}, documents and short queries together)")
    if d["due"] < 3:
        say(f"  TOO SHORT: only {d['due']} documents could finish within the phase: lengthen --seconds")
    if d["overloaded"]:
        say("  OVERLOADED: the documents came faster than the server finished them (or failed): this phase "
            "measures a growing backlog and its p50 is not comparable with phase A's; use a longer --doc-interval")


def run(args):
    vocab_txt = args.model_dir / "vocab.txt"
    if not vocab_txt.is_file():  # the real-size shapes use MiniLM's tokenizer (bench/real_size_shape.py)
        vocab_txt = ROOT / ".deps" / MODEL / "vocab.txt"
    vocab = texts.Vocabulary(vocab_txt)
    shorts = texts.mixed_sets(vocab, args.seed, 8192, 0)["short"]
    docs = Documents(vocab, args.model_dir / "tokenizer.json", args.seed, args.doc_tokens)
    per_phase = int(math.ceil(args.seconds / args.doc_interval))
    texts_b = docs.make(per_phase + 2)
    texts_c = docs.make(2 * per_phase + 4)[per_phase + 2:] if args.late else []
    say(f"short texts: {texts.describe(shorts[:2048], _HfTokenizer(docs.tokenizer))}")
    say(f"documents: {docs.describe(texts_b + texts_c)}")

    from serving import library
    st = library.SentenceTransformers(args.model_dir)
    say(f"reference: {st.label}")
    server = MlxServe(args.bin_dir, args.model_dir, args.model)
    results, warm = {}, {}
    try:
        config = "# defaults\n" + "".join(f"{section}:\n" + "".join(f"  {kv}\n" for kv in kvs)
                                          for section, kvs in args.config.items())
        server.start(config, "long-mixed")
        say(f"{server.version()}, {server.url}; config: {config.strip().replace(chr(10), ' ')}")
        # Warm-up: the HTTP stack, buffer pools, and (on a GPU) the kernels of new shapes:
        # short traffic, then one document of each kind, not measured.
        load.throughput(server.url, server.model, shorts[-512:], st.dims, args.clients, count=4 * args.clients)
        for mode in [{"chunking": True}] + ([{"late_chunking": LATE}] if args.late else []):
            try:
                took, windows, tokens, _ = asyncio.run(_warm_doc(server.url, server.model, texts_b[-1], st.dims, mode,
                                                                 args.normalized, args.doc_tokens))
            except Exception as e:  # noqa: BLE001 - the run cannot go on: say why
                say(f"warm-up document alone ({next(iter(mode))}) FAILED: {type(e).__name__}: {e}\nserver log, lines about workers that "
                    f"failed:\n{failures(server.process.log_path)}")
                results["warm-up"] = {"error": str(e)}
                raise SystemExit(1) from None
            say(f"warm-up document alone ({next(iter(mode))}): {took:.2f} s, {windows} windows, {tokens} tokens")
            warm[next(iter(mode))] = {"seconds": took, "windows": windows, "tokens": tokens}
        say(f"warm-up done; RSS {rss.tree_rss(server.pid) / MiB:.0f} MiB; load average {loadavg()}")
        plan = [("A", "short queries only", None, None)]
        if not args.no_chunked:
            plan.append(("B", "+ documents, chunking", texts_b[:per_phase], {"chunking": True}))
        if args.late:
            plan.append(("C", "+ documents, late_chunking", texts_c[:per_phase], {"late_chunking": LATE}))
        for name, what, ds, mode in plan:
            say(f"\n## phase {name}: {args.clients} clients, {args.seconds:g} s, {what}"
                + (f", one {args.doc_tokens}-token document every {args.doc_interval:g} s" if ds else ""))
            results[name] = phase(server, name, shorts, ds, mode, st, args)
            describe_phase(results[name], results["A"])
    finally:
        if server.process:
            if any((r.get("documents") or {}).get("errors") or r["short"]["error"]
                   for n, r in results.items() if n != "warm-up"):
                say("\nserver log, lines about workers that failed:\n" + failures(server.process.log_path))
            if args.log_dir:
                args.log_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(server.process.log_path, args.log_dir / "server-long-mixed.log")
        server.cleanup()
    return results, warm


def failures(log: Path, keep=12) -> str:
    """The log's last lines that say why a worker stopped (its last words, exit, signal)."""
    words = ("crash", "exited", "signal", "killed", "panic", "last words", "out of memory", "error")
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if any(w in ln.lower() for w in words)]
    return "\n".join("    " + ln[:400] for ln in lines[-keep:]) or "    (none)"


class _HfTokenizer:
    """texts.describe() calls a transformers tokenizer; this is the same tokenizer.json."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, batch, truncation=True, max_length=512):
        return {"input_ids": [e.ids[:max_length] for e in self.tok.encode_batch(batch, add_special_tokens=True)]}


def cores(x):
    return "-" if x is None else f"{x:.2f}"


def summary(args, results):
    a = results["A"]["short"]["p50_ms"]
    say(f"\n## Summary ({args.model}, {args.clients} clients, {args.seconds:g} s a phase, one "
        f"{args.doc_tokens}-token document every {args.doc_interval:g} s; {machine()})\n")
    say("| phase | short p50 / p90 / p99 ms | short texts/s | p50 ÷ phase A | documents sent / done in phase "
        "| document p50 / max s | peak RSS | RSS 10 s after | cores server / load gen |")
    say("|---|---|---|---|---|---|---|---|---|")
    verdicts = {}
    for name, r in results.items():
        s, d = r["short"], r.get("documents")
        ratio = s["p50_ms"] / a
        if d:
            ok = not d["overloaded"] and not s["error"] and ratio <= TARGET_RATIO
            verdicts[name] = ("OVERLOADED, not comparable" if d["overloaded"] else
                              "too short to tell" if d["due"] < 3 else "PASS" if ok else "MISS")
            r["p50_ratio"], r["verdict"] = ratio, verdicts[name]
        docs = f"{d['sent']} / {d['completed_in_phase']}" if d else "-"
        dl = f"{d['p50_s']:.2f} / {d['max_s']:.2f}" if d and d["p50_s"] is not None else "-"
        say(f"| {name} | {s['p50_ms']:.1f} / {s['p90_ms']:.1f} / {s['p99_ms']:.1f} | {s['texts_per_s']:.0f} | "
            f"{ratio:.2f}× | {docs} | {dl} | {r['peak_rss'] / MiB:.0f} MiB | {r['rss_after'] / MiB:.0f} MiB | "
            f"{cores(r['server_cores'])} / {r['client_cores']:.2f} |")
    say("")
    for name, v in verdicts.items():
        say(f"p50({name}) / p50(A) = {results[name]['p50_ratio']:.2f} (target <= {TARGET_RATIO}): {v}")
    peak = max(r["peak_rss"] for r in results.values())
    say(f"peak RSS of the server tree over the run: {peak / MiB:.0f} MiB")


def compare(base, new):
    """Short-query p50 / p99 per phase, this build beside the baseline (run one after the
    other in this process, same load generator and texts)."""
    say("\n## This build beside the baseline (short queries)\n")
    say("| phase | baseline p50 / p99 ms | this build p50 / p99 ms | p50 ratio | p99 ratio |")
    say("|---|---|---|---|---|")
    for name in base:
        if name not in new or "short" not in base[name]:
            continue
        b, n = base[name]["short"], new[name]["short"]
        say(f"| {name} | {b['p50_ms']:.1f} / {b['p99_ms']:.1f} | {n['p50_ms']:.1f} / {n['p99_ms']:.1f} | "
            f"{n['p50_ms'] / b['p50_ms']:.2f}× | {n['p99_ms'] / b['p99_ms']:.2f}× |")


def widen_window(src: Path, dst: Path, window: int) -> Path:
    """A folder serving `src` with a window of `window` tokens: links to its files, and
    config.json's `max_position_embeddings` and tokenizer_config.json's `model_max_length`
    set to `window`. For the random-weight shapes of bench/real_size_shape.py, whose
    MiniLM tokenizer says 512: nomic-embed-text-v1.5 is published for 8192 tokens (its
    model card: `model_max_length=8192`, rotary positions), and speed does not depend on
    the weights' values."""
    for f in src.iterdir():
        (dst / f.name).symlink_to(f)
    for name, key in (("config.json", "max_position_embeddings"), ("tokenizer_config.json", "model_max_length")):
        cfg = json.loads((src / name).read_text())
        cfg[key] = window
        (dst / name).unlink()
        (dst / name).write_text(json.dumps(cfg, indent=1))
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, help=f"the model's folder (default .deps/{MODEL})")
    ap.add_argument("--model", help=f"store name (default {MODEL}, or the folder's name with --model-dir)")
    ap.add_argument("--window", type=int, help="serve the model with this token window (a variant folder: see "
                                               "widen_window)")
    ap.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release")
    ap.add_argument("--baseline-bin", type=Path, help="also run every phase on the binaries in this folder first "
                                                      "(a build of main), and print this build's ÷ the baseline's")
    ap.add_argument("--no-chunked", action="store_true", help="skip phase B (chunked documents)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20, help="length of each phase (default 20)")
    ap.add_argument("--doc-interval", type=float, default=1.0, help="seconds between documents (default 1)")
    ap.add_argument("--doc-tokens", type=int, default=8000, help="tokens per document, special tokens aside")
    ap.add_argument("--late", action="store_true", help="phase C: the documents with late_chunking")
    ap.add_argument("--drain-s", type=float, default=120, help="wait this long for documents after a phase")
    ap.add_argument("--procs", type=int, default=max(1, (os.cpu_count() or 4) // 4),
                    help="load-generator processes for the short clients (default: a quarter of the CPUs)")
    ap.add_argument("--compute-dtype", help="models.compute_dtype (default: the server's, auto)")
    ap.add_argument("--config", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a config.yaml setting, e.g. limits.hung_worker_seconds=0 (repeatable)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write every number to this file")
    ap.add_argument("--log-dir", type=Path, help="keep the server's log here")
    args = ap.parse_args()
    args.model = args.model or (args.model_dir.name if args.model_dir else MODEL)
    args.model_dir = (args.model_dir or ROOT / ".deps" / MODEL).resolve()
    config = {}
    for item in args.config:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not (section and name and value):
            ap.error(f"--config {item}: want SECTION.KEY=VALUE")
        config.setdefault(section, []).append(f"{name}: {value}")
    if args.compute_dtype:
        config.setdefault("models", []).append(f"compute_dtype: {args.compute_dtype}")
    args.config = config
    modules = args.model_dir / "modules.json"
    args.normalized = modules.is_file() and "Normalize" in modules.read_text()
    say(f"# short queries beside long documents; machine: {machine()}; load average at start: {loadavg()}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="long-mixed-model-") as tmp:
        if args.window:
            args.model_dir = widen_window(args.model_dir, Path(tmp), args.window)
            say(f"model folder: {args.model_dir} (token window widened to {args.window})")
        builds = ([("baseline", args.baseline_bin)] if args.baseline_bin else []) + [("this build", args.bin_dir)]
        runs = {}
        for label, bin_dir in builds:
            say(f"\n# {label}: {bin_dir}; load average {loadavg()}")
            args.bin_dir = bin_dir
            results, warm = run(args)
            summary(args, results)
            runs[label] = results
    if args.baseline_bin:
        compare(runs["baseline"], runs["this build"])
    say(f"\nload average at end (this run's own included): {loadavg()}; total {time.monotonic() - started:.0f} s")
    if args.json:
        out = {"machine": machine(), "model": args.model, "model_dir": str(args.model_dir),
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "phases": results,
               "warm_up_document_alone": warm, "baseline_phases": runs.get("baseline")}
        args.json.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
