#!/usr/bin/env python3
"""Interactive queries during a bulk ingest: their latency idle and under the ingest, and
what the ingest keeps of its speed alone; then the embedding cache on a re-ingest.

Texts (bench/serving/texts.py, --seed): queries of 3-12 words and RAG passages of 6-120
words, mixed lengths, in random order. Standard library only (threads, http.client).

Phases, each against a fresh `mlx-serve start --foreground` (bench/serving/servers.py) in a
throwaway home, MiniLM preloaded and warmed:
  1. idle: one-text queries at --rate per second, open loop (each sent on schedule in its
     own thread, whatever the earlier ones are doing), for --seconds: p50 / p99 latency;
  2. ingest alone: --bulk-clients clients each sending requests of --batch passages back to
     back, marked `X-Priority: 10`, for --seconds: passages/s;
  3. both at once: the same ingest and the same query stream (priority 0): query p50 / p99
     and the ingest's passages/s.
The same three phases run against --baseline-bin (the binaries of a build without the
scheduling, e.g. /work/main/target/release) when given, and both are printed side by side.
Cache: --cache-texts passages embedded twice in requests of --batch (the second time from
the embedding cache), end-to-end seconds and the speed-up, answers compared byte for byte.

Usage:
  python3 bench/priority_under_bulk.py [--seconds 20] [--rate 5] [--bulk-clients 16]
      [--batch 64] [--baseline-bin /work/main/target/release] [--cache-texts 2000]
      [--cache-only] [--max-batch-ms N] [--bulk-max-batch-ms N] [--json FILE]
      [--trace [--trace-keep FILE]] [--ingest-ids]
The load generator's CPU use and its own lag (a query's thread starting after its schedule)
are printed beside each result, to show it is not the limit; so is the CPU that other
processes on the machine used in each phase (a shared machine's other builds disturb it),
and the server's own metrics over each phase ("inside"): the queries' mean wait in the
model's queue, the worker's batches (rate, size, send to answer), so that the part of a
query's latency spent outside the queue (HTTP, tokenization, its own batch) shows.
--trace: every request carries a sampled `traceparent` and the server exports its spans to
a local OTLP receiver; the slowest queries' time is then split into client lag, HTTP,
tokenization, queue wait, batch and forward, with the batches they waited behind
(serving/query_traces.py). Tracing costs the server some CPU: time with it off.
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import query_traces, rss, texts  # noqa: E402
from serving.servers import MlxServe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"


def post(url, body, headers=None, timeout=600, parse=True, path="/v1/embeddings"):
    """POSTs to /v1/embeddings; the answer parsed unless `parse` is False (the ingest's
    answers are only counted: parsing them would make this client the bottleneck on a GPU)."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    data = json.dumps(body).encode()
    conn.request("POST", path, data, {"content-type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    if resp.status == 429 and not parse:
        # The queue is full (256 bulk clients x 64 passages is over limits.max_queue):
        # an ingest client waits as told and sends again, as real ones do.
        time.sleep(float(resp.getheader("retry-after") or 1))
        return post(url, body, headers, timeout, parse, path)
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {payload[:300]!r}")
    return json.loads(payload) if parse else None


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def queries(url, qs, rate, seconds, out, records=None):
    """Open loop: query i is sent at start + i / rate in its own thread. With `records`, each
    query's wall-clock times and trace id are kept too (its thread's start against its
    schedule is the load generator's own lag; `serving/query_traces.py`)."""
    start, wall = time.monotonic(), time.time()
    threads, i = [], 0
    while (t := start + i / rate) < start + seconds:
        time.sleep(max(0.0, t - time.monotonic()))
        text = qs[i % len(qs)]

        def one(text=text, scheduled=wall + (t - start)):
            header, trace_id = query_traces.traceparent()
            started, t0 = time.time(), time.monotonic()
            post(url, {"model": MODEL, "input": text, "encoding_format": "base64"}, {"traceparent": header})
            out.append(time.monotonic() - t0)
            if records is not None:
                records.append({"trace_id": trace_id, "scheduled": scheduled, "started": started,
                                "ended": started + out[-1]})

        th = threading.Thread(target=one)
        th.start()
        threads.append(th)
        i += 1
    for th in threads:
        th.join()


def ingest(url, passages, clients, batch, stop, counter):
    def client(c):
        k = c * batch
        while not stop.is_set():
            chunk = [passages[(k + j) % len(passages)] for j in range(batch)]
            k += clients * batch
            headers = {"X-Priority": "10", "traceparent": query_traces.traceparent()[0]}
            post(url, {"model": MODEL, "input": chunk, "encoding_format": "base64"}, headers, parse=False)
            if not stop.is_set():
                counter[c] += batch

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    return threads


def scrape(url):
    """The server's /metrics as {series: value} (histogram sums and counts included)."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def metric(m, name, **labels):
    """The sum of `name` over the series whose labels include `labels`."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for s, v in m.items() if s.split("{")[0] == name and all(w in s for w in want))


def breakdown(before, after, wall):
    """Where a query's time went, from the server's own metrics over a phase: its mean wait
    in the model's queue (priority 0) beside the bulk inputs' (priority 10), and the
    batches the worker ran (per second, mean size, mean time from send to answer and the
    worker's own forward time)."""
    d = {s: after.get(s, 0.0) - before.get(s, 0.0) for s in after}

    def mean(name, **labels):
        n = metric(d, name + "_count", **labels)
        return metric(d, name + "_sum", **labels) / n if n else float("nan")

    batches = metric(d, "mlx_serve_model_inference_seconds_count")
    return {"query_queue_wait_ms": 1e3 * mean("mlx_serve_queue_wait_seconds", priority="0"),
            "bulk_queue_wait_ms": 1e3 * mean("mlx_serve_queue_wait_seconds", priority="10"),
            "batches_per_s": batches / wall,
            "batch_inputs": mean("mlx_serve_batch_size", endpoint="embed"),
            "batch_send_to_answer_ms": 1e3 * mean("mlx_serve_model_inference_seconds"),
            "batch_forward_ms": 1e3 * mean("mlx_serve_worker_forward_seconds")}


def phases(url, sets, args, server_pid):
    qs, ps = sets["short"], sets["long"]
    if args.ingest_ids:
        # The passages as the server's own token ids (/v1/tokenize), sent as the complete
        # model input: the server tokenizes no bulk text, the one difference from text.
        ps = [d["token_ids"] for i in range(0, len(ps), args.batch)
              for d in post(url, {"model": MODEL, "input": ps[i:i + args.batch]}, path="/v1/tokenize")["data"]]
    post(url, {"model": MODEL, "input": ps[:args.batch]})  # warm up, learn the pace
    # Every query text once, so that the idle phase does not time first sight of a shape
    # (a GPU backend compiles kernels for new shapes) as the idle latency.
    for text in qs[:int(args.rate * args.seconds)]:
        post(url, {"model": MODEL, "input": text, "encoding_format": "base64"})
    idle, idle_q, m0, t0 = [], [], scrape(url), time.monotonic()
    others = {}
    other = other_cpus(server_pid)
    queries(url, qs, args.rate, args.seconds, idle, idle_q)
    others["idle"] = other()
    inside = {"idle": breakdown(m0, scrape(url), time.monotonic() - t0)}

    def run_ingest(with_queries):
        stop, counter, lat = threading.Event(), [0] * args.bulk_clients, []
        records[with_queries] = []
        threads = ingest(url, ps, args.bulk_clients, args.batch, stop, counter)
        time.sleep(2)  # the ingest fills the queue first
        m0, t0, cpu0, other = scrape(url), time.monotonic(), cpu_seconds(), other_cpus(server_pid)
        if with_queries:
            queries(url, qs, args.rate, args.seconds, lat, records[with_queries])
        else:
            time.sleep(args.seconds)
        # Passages the worker was sent in the window (the queries' one text each taken off).
        wall, m1 = time.monotonic() - t0, scrape(url)
        sent = metric(m1, "mlx_serve_batch_size_sum", endpoint="embed") - metric(m0, "mlx_serve_batch_size_sum",
                                                                                 endpoint="embed")
        rate = (sent - len(lat)) / wall
        inside["under" if with_queries else "alone"] = breakdown(m0, m1, wall)
        load[with_queries] = (cpu_seconds() - cpu0) / wall
        others["under" if with_queries else "alone"] = other()
        stop.set()
        for th in threads:
            th.join()
        return rate, lat

    load, records = {}, {}
    alone, _ = run_ingest(False)
    mixed, under = run_ingest(True)
    return {"idle": idle, "alone": alone, "mixed": mixed, "under": under, "records": {"idle": idle_q, "under": records[True]},
            "client_cpus": {"alone": load[False], "mixed": load[True]}, "inside": inside, "other_cpus": others}


def other_cpus(server_pid):
    """A phase's meter of the CPU that processes other than the server's (supervisor and
    worker) and this load generator used: other builds and benchmarks on a shared machine
    make a phase's numbers meaningless, and this says when. Call it at the phase's start;
    the function it returns gives the CPUs busy since (/proc/stat, proc(5))."""
    tick = os.sysconf("SC_CLK_TCK")

    def busy():
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        machine = sum(v) - v[3] - v[4]  # all but idle and iowait
        server = 0
        for pid in rss.tree(server_pid):
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                server += int(f[11]) + int(f[12])
            except (OSError, IndexError, ValueError):
                pass
        return machine / tick - server / tick - cpu_seconds(), time.monotonic()

    b0, t0 = busy()

    def since():
        b1, t1 = busy()
        return (b1 - b0) / (t1 - t0)

    return since


def cpu_seconds():
    """CPU time this load generator has used (user + system), to show it is not the limit."""
    t = os.times()
    return t.user + t.system


def measure(bin_dir, label, sets, args, config):
    receiver = query_traces.Receiver(args.trace_python) if args.trace else None
    server = MlxServe(Path(bin_dir), args.model_dir, MODEL)
    try:
        url = server.start(config + (receiver.config() if receiver else ""), label)
        r = phases(url, sets, args, server.pid)
    finally:
        server.cleanup()  # a stopping server exports the spans it still holds
    if receiver:
        r["spans"] = receiver.spans()
        receiver.stop()
        if args.trace_keep:
            keep = args.trace_keep.with_name(f"{args.trace_keep.stem}-{label}{args.trace_keep.suffix}")
            keep.write_text("".join(json.dumps(s) + "\n" for s in r["spans"]))
            Path(str(keep) + ".queries").write_text(json.dumps(r["records"]))
    return r


def report(label, r):
    i50, i99 = pct(r["idle"], 50) * 1e3, pct(r["idle"], 99) * 1e3
    u50, u99 = pct(r["under"], 50) * 1e3, pct(r["under"], 99) * 1e3
    print(f"{label}:")
    print(f"  queries idle        p50 {i50:8.1f} ms   p99 {i99:8.1f} ms   ({len(r['idle'])} queries)")
    print(f"  queries under bulk  p50 {u50:8.1f} ms   p99 {u99:8.1f} ms   ({len(r['under'])} queries)"
          f"   = {u50 / i50:.1f}x / {u99 / i99:.1f}x idle")
    print(f"  ingest alone {r['alone']:.1f} passages/s sent to the worker; with queries {r['mixed']:.1f}"
          f" ({100 * r['mixed'] / max(r['alone'], 1e-9):.0f}%)")
    for phase, recs in r["records"].items():
        lag = sorted(1e3 * (q["started"] - q["scheduled"]) for q in recs)
        if lag:
            print(f"  load generator's own lag, {phase}: a query's thread started p50 {pct(lag, 50):.1f} ms,"
                  f" p99 {pct(lag, 99):.1f} ms, max {lag[-1]:.1f} ms after its schedule")
    for phase, recs in r["records"].items():
        if "spans" in r:
            query_traces.report(phase, recs, r["spans"])
    if "spans" in r:
        query_traces.report_batches(r["spans"])
    c = r["client_cpus"]
    print(f"  load generator: {c['alone']:.2f} / {c['mixed']:.2f} CPUs busy (ingest alone / with queries)"
          f" of {len(os.sched_getaffinity(0))}", flush=True)
    o = r["other_cpus"]
    print(f"  other processes on the machine: {o['idle']:.2f} / {o['alone']:.2f} / {o['under']:.2f} CPUs busy"
          " (idle / ingest alone / with queries; over ~0.1 the phase's numbers are disturbed)", flush=True)
    for phase, b in r["inside"].items():
        print(f"  inside, {phase:5}: query queue wait {b['query_queue_wait_ms']:6.1f} ms, bulk"
              f" {b['bulk_queue_wait_ms']:7.1f} ms; {b['batches_per_s']:6.1f} batches/s of"
              f" {b['batch_inputs']:5.1f} inputs, send to answer {b['batch_send_to_answer_ms']:6.1f} ms"
              f" (forward {b.get('batch_forward_ms', float('nan')):6.1f} ms)", flush=True)


def summary(r):
    i50, i99, u50, u99 = (pct(r[k], q) * 1e3 for k, q in (("idle", 50), ("idle", 99), ("under", 50), ("under", 99)))
    return {"idle_p50_ms": i50, "idle_p99_ms": i99, "under_p50_ms": u50, "under_p99_ms": u99,
            "p50_ratio": u50 / i50, "p99_ratio": u99 / i99, "ingest_alone": r["alone"],
            "ingest_mixed": r["mixed"], "ingest_kept": r["mixed"] / max(r["alone"], 1e-9),
            "client_cpus": r["client_cpus"], "queries": len(r["under"]), "inside": r["inside"],
            "other_cpus": r["other_cpus"]}


def cache_run(args, sets):
    n = args.cache_texts
    passages = (sets["long"] * (n // len(sets["long"]) + 1))[:n]
    passages = [f"{i}: {p}" for i, p in enumerate(passages)]  # distinct texts
    server = MlxServe(args.bin_dir, args.model_dir, MODEL)
    try:
        url = server.start("# defaults\n", "cache")
        post(url, {"model": MODEL, "input": ["warm up"]})
        took, answers = [], []
        for _ in range(2):
            t0, got = time.monotonic(), []
            for k in range(0, n, args.batch):
                got.append(post(url, {"model": MODEL, "input": passages[k:k + args.batch],
                                      "encoding_format": "base64"})["data"])
            took.append(time.monotonic() - t0)
            answers.append(got)
        same = answers[0] == answers[1]
        print(f"cache: {n} passages, first pass {took[0]:.1f} s, second {took[1]:.3f} s: "
              f"{took[0] / took[1]:.0f}x faster; answers byte-identical: {same}", flush=True)
    finally:
        server.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rate", type=float, default=5)
    ap.add_argument("--bulk-clients", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release")
    ap.add_argument("--baseline-bin", type=Path)
    ap.add_argument("--model-dir", type=Path, default=ROOT / ".deps" / MODEL)
    ap.add_argument("--cache-texts", type=int, default=2000, help="0 skips the cache step")
    ap.add_argument("--max-batch-ms", type=int, help="scheduling.max_batch_ms for this build (default: its default)")
    ap.add_argument("--bulk-max-batch-ms", type=int,
                    help="scheduling.bulk_max_batch_ms, the bound on the ingest's batches (default: the build's)")
    ap.add_argument("--cache-only", action="store_true", help="only the embedding cache step")
    ap.add_argument("--ingest-ids", action="store_true",
                    help="the ingest sends its passages as token ids (from /v1/tokenize, before the phases),"
                         " so the server tokenizes only the queries: what bulk tokenization costs them")
    ap.add_argument("--trace", action="store_true",
                    help="trace every request (OTLP to tests/clients/otlp_receiver.py) and print where the"
                         " slowest queries' time went (serving/query_traces.py)")
    ap.add_argument("--trace-python", type=Path, default=ROOT / ".deps" / "venv" / "bin" / "python",
                    help="a Python with opentelemetry-proto, for the receiver")
    ap.add_argument("--trace-keep", type=Path, help="with --trace: also write the spans (JSON lines) to this"
                    " file, its name suffixed with the build's label, and the queries' times beside it")
    ap.add_argument("--json", type=Path, help="also write the latency results here")
    args = ap.parse_args()
    if args.trace:
        # Export every second, not every 5: the traced ingest makes ~250 spans/s and the
        # exporter's queue holds 2,048 (docs/tracing.md).
        os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "1000")
    args.model_dir = args.model_dir.resolve()
    vocab = texts.Vocabulary(args.model_dir / "vocab.txt")
    sets = texts.mixed_sets(vocab, args.seed, 500, 2000)
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}; "
          f"{len(os.sched_getaffinity(0))} CPUs usable", flush=True)
    # The embedding cache off in the latency phases: the ingest repeats its passages.
    config = "embedding_cache:\n  memory_mb: 0\n"
    sched = {"max_batch_ms": args.max_batch_ms, "bulk_max_batch_ms": args.bulk_max_batch_ms}
    sched = {k: v for k, v in sched.items() if v is not None}
    if sched:
        config += "scheduling:\n" + "".join(f"  {k}: {v}\n" for k, v in sched.items())
    if args.cache_only:
        cache_run(args, sets)
        return
    results = {"this build": measure(args.bin_dir, "this", sets, args, config)}
    report(f"this build ({config.strip().replace(chr(10), ' ')})", results["this build"])
    if args.baseline_bin:
        # A build without these sections refuses them: start it with its defaults.
        results["baseline"] = measure(args.baseline_bin, "baseline", sets, args, "# defaults\n")
        report(f"baseline ({args.baseline_bin})", results["baseline"])
    if args.json:
        out = {k: summary(v) for k, v in results.items()}
        out["config"] = config
        out["bulk_clients"], out["batch"], out["rate"] = args.bulk_clients, args.batch, args.rate
        args.json.write_text(json.dumps(out, indent=1))
    if args.cache_texts:
        cache_run(args, sets)


if __name__ == "__main__":
    main()
